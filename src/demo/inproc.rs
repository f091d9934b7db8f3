//! The demo in one process, over veth: two dataplane cores of this process (a sending host
//! and a receiving host) joined by a veth pair between two network namespaces, af_packet on
//! each end; channels admitted by the sending host's admission controller and opened through
//! the core's control ring; an application thread of this process submits on them and drains
//! the receivers.
//!
//! Preemption: a probe thread watches both polling threads (the combined curve) and the
//! application thread apart (its waits count only within a message's own timed submit call).

use super::{
    print_header, print_report, refusal_text, ChannelRow, DemoArgs, DemoChannel, DemoError,
    DemoReport, LinkInfo, Progress, CHANNELS, MISS_LOG, REFUSED, VETH_NETWORK_AND_RECEIVE_BOUND,
    WARM_UP,
};
use crate::preemption::{MissLog, MissVerdict, PreemptionProbe, SlowSubmits, Watcher};
use control::admission::{Admission, ChannelRequest, CostModel, ResourceModel};
use dataplane::channel::{Sender, Submit, SubmitError};
use dataplane::core::{Core, CoreConfig, PollStalls};
use dataplane::handle::CoreHandle;
use dataplane::link::LinkConfig;
use dataplane::port::Port;
use dataplane::rx::Receiver;
use dataplane::sched::SchedPolicy;
use dataplane::source::Source;
use dataplane::spec::{ChannelConfig, ChannelSpec, OverflowPolicy};
use dataplane::time::{Clock, MonotonicClock, TscMeter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the demo over a fresh veth pair; [`DemoError::Veth`] when one cannot be made.
pub(super) fn run_veth(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    let link_bps = args.link_mbps * 1_000_000;
    let (a, b, _namespaces) = veth::ports(link_bps).map_err(DemoError::Veth)?;
    let info = LinkInfo {
        desc: format!(
            "a veth pair between two network namespaces (af_packet, paced at {} Mb/s)",
            args.link_mbps
        ),
        network_bound: VETH_NETWORK_AND_RECEIVE_BOUND,
        idle_sleep: Some(Duration::from_micros(20)),
    };
    // `_namespaces` lives until the ports are closed (the end of `run_on`).
    run_on(args, Arc::new(MonotonicClock), a, b, &info)
}

fn run_on<P: Port + 'static>(
    args: &DemoArgs,
    clock: Arc<dyn Clock>,
    a: P,
    b: P,
    link: &LinkInfo,
) -> Result<DemoReport, DemoError>
where
    P::Buf: 'static,
{
    let link_bps = args.link_mbps * 1_000_000;
    let policy = SchedPolicy {
        granularity: 4,
        best_effort_reserve_ppm: 50_000,
        ..SchedPolicy::default()
    };
    // Admission: the sending host's model (costs are conservative figures for a laptop core).
    let model = ResourceModel {
        cost: CostModel {
            link_rate_bps: link_bps,
            per_message_ns: 2_000,
            per_packet_ns: 1_000,
            ..CostModel::default()
        },
        granularity: policy.granularity,
        best_effort_reserve_ppm: policy.best_effort_reserve_ppm,
        ..ResourceModel::default()
    };
    let core_cfg = CoreConfig {
        sched: policy,
        link: LinkConfig {
            link_rate_bps: link_bps,
            in_flight_limit: model.link_in_flight_bytes(),
            best_effort_reserve_ppm: 50_000,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let mut tx_core = Core::new(core_cfg, a)?;
    if std::env::var_os("RTCHAN_DEMO_DEBUG").is_some() {
        tx_core.enable_trace(200_000);
    }
    let mut rx_core = Core::new(core_cfg, b)?;
    let mut handle = CoreHandle::new(&tx_core);

    let mut admission = Admission::new(model).map_err(|e| DemoError::Model(e.to_string()))?;

    let mut receivers = Vec::new();
    let mut specs = Vec::new();
    for (i, ch) in CHANNELS.iter().enumerate() {
        let req = ChannelRequest {
            mmax: ch.mmax,
            imin: ch.imin,
            bmax: ch.bmax,
            deadline: ch.host_deadline,
            core: None,
            txq: None,
        };
        let adm = admission
            .admit(&req)
            .map_err(|e| DemoError::Refused(ch.name, e.to_string()))?;
        let spec = ChannelSpec {
            mmax: ch.mmax,
            imin: ch.imin,
            bmax: ch.bmax,
            cpu_deadline: adm.cpu_deadline,
            link_deadline: adm.link_deadline,
            end_to_end_deadline: adm.link_deadline + link.network_bound,
        };
        specs.push(spec);
        receivers.push(rx_core.open_receiver(i as u32, ch.mmax, 256));
    }
    let (mmax, imin, bmax, deadline) = REFUSED;
    let refusal = refusal_text(admission.check(&ChannelRequest {
        mmax,
        imin,
        bmax,
        deadline,
        core: None,
        txq: None,
    }));
    let be_rx = rx_core.open_receiver(1000, 1400, 4096);

    // Start the two hosts' polling loops, one thread each as on two hosts, then open the
    // channels through the control ring. The probe measures both polling threads' OS
    // preemption from their first iteration.
    let probe = PreemptionProbe::start().map_err(DemoError::Probe)?;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(AtomicBool::new(false));
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    // The sender's core gets the last CPU to itself; the receiver's shares the first with the
    // application thread (which sleeps between submissions).
    let placement = [cpus.last().copied(), cpus.first().copied()];
    let spawn = |name: &str, core: Core<P>, cpu: Option<core_affinity::CoreId>| {
        let (watched_tx, watched_rx) = std::sync::mpsc::channel();
        let stop = stop.clone();
        let traffic = traffic.clone();
        let clock = clock.clone();
        let idle_sleep = link.idle_sleep;
        let watcher: Watcher = probe.watcher();
        let pin = cpu.filter(|_| cpus.len() > 1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // A polling core of its own, at the highest ordinary priority when allowed.
                // (Not SCHED_FIFO: the kernel's real-time throttling stalls such threads for
                // tens of milliseconds every second unless it is turned off system-wide.)
                if let Some(c) = pin {
                    core_affinity::set_for_current(c);
                }
                let rt = dataplane::core::raise_priority();
                let _ = watched_tx.send(watcher.watch_current_thread());
                poll_loop(core, &*clock, &stop, &traffic, rt, idle_sleep)
            })
            .expect("spawn polling thread");
        let watched = watched_rx
            .recv()
            .unwrap_or_else(|_| Err("the polling thread ended at start".into()));
        (thread, watched)
    };
    let (tx_poller, tx_watched) = spawn("rtchan-core-a", tx_core, placement[0]);
    let (rx_poller, rx_watched) = spawn("rtchan-core-b", rx_core, placement[1]);
    let pollers = [tx_poller, rx_poller];
    let stop_all = |pollers: [std::thread::JoinHandle<Polled<P>>; 2], e: String| {
        stop.store(true, Ordering::Relaxed);
        for p in pollers {
            let _ = p.join();
        }
        DemoError::Probe(e)
    };
    if let Err(e) = tx_watched.and(rx_watched) {
        return Err(stop_all(pollers, e));
    }
    // The application thread stays off the sender's CPU.
    if let Some(c) = placement[1].filter(|_| cpus.len() > 1) {
        core_affinity::set_for_current(c);
    }
    // It is watched too, apart: a message's life starts at its submit stamp, and a preemption
    // between the stamp and the enqueue delays it as much as one of the polling thread; its
    // waits count only within that message's own (timed) submit call.
    if let Err(e) = probe.watch_current_thread_apart(APP_THREAD) {
        return Err(stop_all(pollers, e));
    }
    let mut senders: Vec<Sender> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut cfg = ChannelConfig::real_time(i as u32, *spec);
        cfg.overflow = if CHANNELS[i].violator {
            OverflowPolicy::DropNewest
        } else {
            OverflowPolicy::Block
        };
        senders.push(handle.open(cfg)?);
    }
    let mut flood = handle.open(ChannelConfig::best_effort(1000, 1400, 512))?;
    // Let the cores settle (first touches of their tables, the threads' placement) before
    // traffic starts; stalls are counted from then on.
    std::thread::sleep(WARM_UP);
    traffic.store(true, Ordering::Relaxed);

    let admitted: Vec<(ChannelSpec, u64)> = CHANNELS
        .iter()
        .zip(&specs)
        .map(|(ch, s)| (*s, ch.host_deadline))
        .collect();
    print_header(args, link, &admitted, refusal);

    // The applications: sources submit on schedule, the flood keeps its buffer full, the
    // receivers are drained.
    let start_ns = clock.now();
    let mut sources: Vec<Source> = CHANNELS
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            Source::new(
                (ch.pattern)(ch.imin, args.violation),
                start_ns,
                i as u64 + 1,
            )
        })
        .collect();
    let payload = vec![0xa5u8; 8_000];
    let mut refused = vec![0u64; CHANNELS.len()];
    let mut miss_logs: Vec<MissLog> = CHANNELS
        .iter()
        .map(|_| MissLog::with_capacity(MISS_LOG))
        .collect();
    let mut slow_submits: Vec<SlowSubmits> = CHANNELS
        .iter()
        .map(|_| SlowSubmits::with_capacity(MISS_LOG))
        .collect();
    let started = Instant::now();
    let mut progress = Progress::start(args, 0);
    while started.elapsed() < args.duration {
        let now = clock.now();
        for (i, src) in sources.iter_mut().enumerate() {
            for _ in 0..src.due(now) {
                let called = clock.now();
                match senders[i].submit(&payload[..CHANNELS[i].mmax as usize]) {
                    Ok(Submit::Queued) => slow_submits[i].record(called, clock.now()),
                    Ok(_) | Err(SubmitError::WouldBlock) => refused[i] += 1,
                    Err(e) => panic!("submit on {}: {e}", CHANNELS[i].name),
                }
            }
        }
        for _ in 0..if args.no_flood { 0 } else { 64 } {
            if flood.submit(&payload[..1400]) != Ok(Submit::Queued) {
                break;
            }
        }
        drain(&receivers, &be_rx, &mut miss_logs);
        if progress.due() {
            let delivered: u64 = receivers.iter().map(|r| r.stats().delivered.get()).sum();
            let misses: u64 = receivers
                .iter()
                .map(|r| r.stats().deadline_misses.get())
                .sum();
            progress.show(delivered, misses, be_rx.stats().bytes.get());
        }
        // Sleep until the next message is due (the flood's 512-message buffer lasts ms).
        let next = sources
            .iter()
            .map(Source::next_at)
            .min()
            .unwrap_or(now + 100_000);
        let wait = next.saturating_sub(clock.now()).clamp(20_000, 200_000);
        std::thread::sleep(Duration::from_nanos(wait));
    }
    let elapsed = started.elapsed();
    progress.end();
    // Let the last messages arrive (well past every bound), then stop the hosts.
    let drain_until = Instant::now() + Duration::from_millis(50);
    while Instant::now() < drain_until {
        drain(&receivers, &be_rx, &mut miss_logs);
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let [tx_poller, rx_poller] = pollers;
    let (mut tx_core, realtime, stalls) = tx_poller.join().expect("polling thread panicked");
    let (mut rx_core, rx_realtime, rx_stalls) = rx_poller.join().expect("polling thread panicked");
    let realtime = realtime.and(rx_realtime);
    let preempted = probe.finish();
    if let Err(e) = realtime {
        println!(
            "note: the polling thread ran at normal priority ({e}); under other load its \
             deadlines depend on the OS scheduler"
        );
    }
    tx_core.flush_stats();
    if std::env::var_os("RTCHAN_DEMO_DEBUG").is_some() {
        eprintln!("sender core: {:?}", tx_core.stats());
        eprintln!("sender link: {:?}", tx_core.link_stats());
        eprintln!(
            "queued (current, best-effort, early): {:?}",
            tx_core.queued()
        );
        let mut by: std::collections::BTreeMap<(u32, String), u64> = Default::default();
        for e in tx_core.trace() {
            *by.entry((e.channel, format!("{:?}", e.class))).or_default() += 1;
        }
        eprintln!("trace (channel, class) -> packets: {by:?}");
    }
    rx_core.flush_stats();

    let rows: Vec<ChannelRow> = CHANNELS
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            let mut r = row(ch, specs[i], &senders[i], &receivers[i], refused[i]);
            r.verdict = preempted.verdict_submitted(&miss_logs[i], APP_THREAD, &slow_submits[i]);
            r
        })
        .collect();
    let report = DemoReport {
        channels: rows,
        best_effort_bps: be_rx.stats().bytes.get() as f64 * 8.0 / elapsed.as_secs_f64(),
        link_bps,
        elapsed,
        stalls: Some(stalls),
        rx_stalls: Some(rx_stalls),
        preempted,
        violation: args.violation,
    };
    print_report(&report);
    Ok(report)
}

fn row(
    ch: &DemoChannel,
    spec: ChannelSpec,
    tx: &Sender,
    rx: &Receiver,
    refused: u64,
) -> ChannelRow {
    let s = tx.stats().snapshot();
    let h = rx.stats().latency_snapshot();
    ChannelRow {
        name: ch.name,
        spec,
        submitted: s.submitted,
        refused,
        delivered: rx.stats().delivered.get(),
        latency: (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()),
        misses: rx.stats().deadline_misses.get(),
        verdict: MissVerdict::default(),
        lost: rx.stats().lost.get(),
        violator: ch.violator,
        client_fed: false,
        apps: None,
    }
}

/// The application thread's name in the preemption probe.
const APP_THREAD: &str = "demo-application";

/// Empties every receiver, recording each real-time miss with its times.
fn drain(receivers: &[Receiver], be: &Receiver, logs: &mut [MissLog]) {
    for (r, log) in receivers.iter().zip(logs.iter_mut()) {
        while r
            .recv_with(|_, d| log.record(d.submit_ts, d.deadline, d.delivered_ts))
            .is_some()
        {}
    }
    while be.recv_with(|_, _| ()).is_some() {}
}

type Polled<P> = (Core<P>, std::io::Result<()>, PollStalls);

/// One host's polling loop, until `stop`.
fn poll_loop<P: Port>(
    mut core: Core<P>,
    clock: &dyn Clock,
    stop: &AtomicBool,
    traffic: &AtomicBool,
    realtime: std::io::Result<()>,
    idle_sleep: Option<Duration>,
) -> Polled<P> {
    let mut tsc = TscMeter;
    let mut stalls = PollStalls::default();
    while !stop.load(Ordering::Relaxed) {
        // Counted from the start of traffic.
        if traffic.load(Ordering::Relaxed) {
            stalls.tick(clock.now());
        }
        if core.poll(clock, &mut tsc).is_idle() {
            match idle_sleep {
                Some(d) => std::thread::sleep(d),
                None => std::thread::yield_now(),
            }
        }
    }
    (core, realtime, stalls)
}

/// The veth link: two network namespaces joined by a veth pair, an af_packet port on each end.
mod veth {
    use crate::ports::afpacket::{AfPacketConfig, AfPacketPort};
    use crate::ports::netns::enter_netns;
    use crate::ports::netns::{is_root, netns_path, Namespaces};
    use dataplane::spec::Endpoint;

    /// Opens an af_packet port on `ifname` from a thread inside namespace `ns` (the socket
    /// belongs to the namespace it was made in, whichever thread uses it later).
    fn open_in(ns: &str, ifname: &str, link_bps: u64) -> Result<AfPacketPort, String> {
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        std::thread::spawn(move || {
            enter_netns(&netns_path(&ns)).map_err(|e| format!("entering namespace {ns}: {e}"))?;
            AfPacketPort::open(
                &ifname,
                AfPacketConfig {
                    rx_block_size: 4096,
                    rx_blocks: 1024,
                    frame_size: 2048,
                    pool_buffers: 16_384,
                    link_rate_bps: link_bps,
                    rx_block_timeout_ms: 1,
                    ..AfPacketConfig::default()
                },
            )
            .map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the thread opening the port panicked".to_string())?
    }

    /// Two ports joined by a fresh veth pair, with the namespaces' guard.
    pub fn ports(link_bps: u64) -> Result<(AfPacketPort, AfPacketPort, Namespaces), String> {
        if !is_root() {
            return Err("network namespaces need root".into());
        }
        let pid = std::process::id();
        let (ns_a, ns_b) = (
            format!("rtchan-demo-a-{pid}"),
            format!("rtchan-demo-b-{pid}"),
        );
        let (if_a, if_b) = (format!("rdemoa{pid}"), format!("rdemob{pid}"));
        let mut guard = Namespaces::default();
        // The channels' headers use Endpoint::default()'s MACs: give the veth ends those.
        let ep = Endpoint::default();
        guard.veth_pair((&ns_a, &if_a, ep.src_mac), (&ns_b, &if_b, ep.dst_mac))?;
        let a = open_in(&ns_a, &if_a, link_bps)?;
        let b = open_in(&ns_b, &if_b, link_bps)?;
        Ok((a, b, guard))
    }
}
