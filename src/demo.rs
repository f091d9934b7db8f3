//! The demo: real-time channels keeping their deadlines under a best-effort flood, on one
//! machine with no NIC.
//!
//! Two dataplanes (a sending host and a receiving host) are joined by the in-memory link, timed
//! like a real 1 Gb/s Ethernet link (serialisation, a NIC FIFO). Channels with different specs
//! are admitted through the admission test and opened on the running core through its control
//! ring; one of them then sends at ten times its spec, and a best-effort channel floods the link
//! far beyond its capacity. A live progress line runs meanwhile; at the end a table shows, per
//! channel, the spec, the admitted bound, what was delivered, the latency percentiles and the
//! deadline misses, plus the best-effort throughput.
//!
//! Each miss is held against the OS preemption of the threads on the messages' path, measured
//! independently of them ([`crate::preemption`]: a probe thread reads the polling thread's and
//! the application thread's run-queue wait from `/proc/self/task/TID/schedstat`; the
//! application thread stamps a message at submit and enqueues it after): a miss is excused
//! only when that wait during the message's own life covers its lateness. The table reports excused and unexcused misses
//! apart; an unexcused miss is the dataplane's (or the machine's in a way not measured).
//!
//! With `RTCHAN_DEMO_DEBUG` set, the sending core records a trace of the first 200,000 packets
//! and prints its counters, the link scheduler's counters and packets per (channel, class) at
//! the end: how the scheduler divided the core.
//!
//! Each host's polling core has a thread of its own, as on two hosts: the sender's is pinned to
//! the last CPU, the receiver's shares the first with the application thread (which sleeps
//! between submissions). Idle loops sleep 20 µs, so the demo leaves room on a two-core laptop;
//! on a server each core would be isolated and spin.

use crate::preemption::{MissLog, MissVerdict, PreemptionProbe, Preemptions, SlowSubmits, Watcher};
use control::admission::{Admission, AdmitError, ChannelRequest, CostModel, ResourceModel};
use dataplane::channel::{Sender, Submit, SubmitError};
use dataplane::core::{Core, CoreConfig, PollStalls};
use dataplane::handle::CoreHandle;
use dataplane::link::LinkConfig;
use dataplane::memlink::{MemLink, MemLinkConfig};
use dataplane::port::Port;
use dataplane::rx::Receiver;
use dataplane::sched::SchedPolicy;
use dataplane::source::{Pattern, Source};
use dataplane::spec::{ChannelConfig, ChannelSpec, OverflowPolicy};
use dataplane::time::{Clock, MonotonicClock, Nanos, TscMeter};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Extra end-to-end allowance past the sending host's bound: the network (serialisation of one
/// frame on the emulated wire plus its FIFO) and the receiving host's polling, with room for an
/// unisolated laptop core being descheduled briefly.
pub const NETWORK_AND_RECEIVE_BOUND: Nanos = 2_000_000;

/// Options of `rtchand demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long traffic runs (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Link rate in Mb/s of the emulated link.
    #[arg(long, default_value_t = 1000)]
    pub link_mbps: u64,
    /// How many times its spec's rate the violating channel sends.
    #[arg(long, default_value_t = 10)]
    pub violation: u32,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Run without the best-effort flood (to compare).
    #[arg(long)]
    pub no_flood: bool,
    /// The link: `auto` (a veth pair between two network namespaces over af_packet when this
    /// process may create them, i.e. as root, else the in-memory link), `veth`, `memlink`.
    #[arg(long, value_enum, default_value_t = LinkChoice::Auto)]
    pub link: LinkChoice,
}

/// Which link joins the two dataplanes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChoice {
    /// veth when possible, else the in-memory link.
    Auto,
    /// A veth pair between two network namespaces, af_packet on each end (needs root).
    Veth,
    /// The in-memory link.
    Memlink,
}

/// The veth variant's share of D for the network and the receiving host: the receive ring
/// hands a block up when it fills or its retire timer fires (1 ms, up to a scheduler tick
/// later), and the kernel's softirq work for veth shares this machine's CPUs.
pub const VETH_NETWORK_AND_RECEIVE_BOUND: Nanos = 10_000_000;

/// Parses `500us`, `2ms`, `1s`, `1m` or plain nanoseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 500us, 2ms, 1s)"))?;
    let ns = match unit {
        "ns" | "" => v,
        "us" | "µs" => v * 1e3,
        "ms" => v * 1e6,
        "s" => v * 1e9,
        "m" => v * 60e9,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}' (ns, us, ms, s, m)"
            ))
        }
    };
    if ns.is_nan() || ns < 1.0 || !ns.is_finite() {
        return Err(format!("duration '{s}' must be positive"));
    }
    Ok(Duration::from_nanos(ns as u64))
}

/// What the demo can fail on before traffic starts.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The resource model is inconsistent.
    #[error("resource model: {0}")]
    Model(String),
    /// A core could not be built or a channel opened.
    #[error("dataplane: {0}")]
    Core(#[from] dataplane::core::CoreError),
    /// A demo channel that must be admitted was refused.
    #[error("admission refused demo channel {0}: {1}")]
    Refused(&'static str, String),
    /// The veth link was asked for and could not be set up.
    #[error("--link veth: {0}")]
    Veth(String),
    /// Link rate out of range.
    #[error("--link-mbps must be between 10 and 100000, got {0}")]
    LinkRate(u64),
    /// The polling thread's OS preemption cannot be measured.
    #[error("measuring OS preemption: {0}")]
    Probe(String),
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    /// Channel name.
    pub name: &'static str,
    /// The spec it was admitted with.
    pub spec: ChannelSpec,
    /// Messages submitted and accepted.
    pub submitted: u64,
    /// Submits refused or dropped by the overload policy.
    pub refused: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Latency percentiles, ns (p50, p99, max).
    pub latency: (u64, u64, u64),
    /// Deadline misses at the receiver.
    pub misses: u64,
    /// The misses divided by the measured OS preemption of the polling thread.
    pub verdict: MissVerdict,
    /// Messages lost.
    pub lost: u64,
    /// Sends at a multiple of its spec.
    pub violator: bool,
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Per real-time channel.
    pub channels: Vec<ChannelRow>,
    /// Best-effort goodput, bits per second.
    pub best_effort_bps: f64,
    /// Link rate, bits per second.
    pub link_bps: u64,
    /// How long traffic ran.
    pub elapsed: Duration,
    /// The sending core's polling thread's longest gaps between polls (they include the
    /// dataplane's own work, so they are reported only).
    pub stalls: PollStalls,
    /// The same for the receiving core's thread.
    pub rx_stalls: PollStalls,
    /// The polling and application threads' run-queue wait over the run, measured by a probe
    /// thread.
    pub preempted: Preemptions,
    /// How many times its spec the violator sent.
    pub violation: u32,
}

impl DemoReport {
    /// True when every admitted channel met every deadline and lost nothing.
    pub fn passed(&self) -> bool {
        self.channels.iter().all(|c| c.misses == 0 && c.lost == 0)
    }

    /// Misses the measured OS preemption does not explain, over all channels.
    pub fn unexcused_misses(&self) -> u64 {
        self.channels.iter().map(|c| c.verdict.unexcused).sum()
    }
}

struct DemoChannel {
    name: &'static str,
    mmax: u32,
    imin: Nanos,
    bmax: u32,
    host_deadline: Nanos,
    pattern: fn(Nanos, u32) -> Pattern,
    violator: bool,
}

const CHANNELS: [DemoChannel; 5] = [
    DemoChannel {
        name: "control-loop",
        mmax: 200,
        imin: 1_000_000,
        bmax: 1,
        host_deadline: 500_000,
        pattern: |imin, _| Pattern::Periodic { interval: imin },
        violator: false,
    },
    DemoChannel {
        name: "sensor-fusion",
        mmax: 64,
        imin: 200_000,
        bmax: 4,
        host_deadline: 1_000_000,
        pattern: |imin, _| Pattern::Poisson { mean: imin * 2 },
        violator: false,
    },
    DemoChannel {
        name: "video-slice",
        mmax: 8_000,
        imin: 2_000_000,
        bmax: 2,
        host_deadline: 3_000_000,
        pattern: |imin, _| Pattern::Periodic { interval: imin },
        violator: false,
    },
    DemoChannel {
        name: "telemetry-burst",
        mmax: 1_400,
        imin: 1_000_000,
        bmax: 8,
        host_deadline: 4_000_000,
        pattern: |imin, _| Pattern::Bursts {
            size: 8,
            every: imin * 8,
        },
        violator: false,
    },
    DemoChannel {
        name: "misbehaving",
        mmax: 1_000,
        imin: 1_000_000,
        bmax: 4,
        host_deadline: 2_000_000,
        pattern: |imin, x| Pattern::Greedy { imin, multiple: x },
        violator: true,
    },
];

/// The link the two hosts use, and what it adds to the end-to-end bound.
struct LinkInfo {
    /// For the header line.
    desc: String,
    /// The network's and the receiving host's share of D.
    network_bound: Nanos,
    /// Sleep this long when idle (veth: spinning would starve the kernel's softirq work the
    /// veth pair needs); `None`: yield.
    idle_sleep: Option<Duration>,
}

/// Runs the demo and prints its progress and result table.
pub fn run(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    if !(10..=100_000).contains(&args.link_mbps) {
        return Err(DemoError::LinkRate(args.link_mbps));
    }
    let link_bps = args.link_mbps * 1_000_000;
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
    if args.link != LinkChoice::Memlink {
        match veth::ports(link_bps) {
            Ok((a, b, _namespaces)) => {
                let info = LinkInfo {
                    desc: format!(
                        "a veth pair between two network namespaces (af_packet, paced at {} Mb/s)",
                        args.link_mbps
                    ),
                    network_bound: VETH_NETWORK_AND_RECEIVE_BOUND,
                    idle_sleep: Some(Duration::from_micros(20)),
                };
                // `_namespaces` lives until the ports are closed (end of this arm).
                return run_on(args, clock, a, b, &info);
            }
            Err(reason) if args.link == LinkChoice::Veth => return Err(DemoError::Veth(reason)),
            Err(reason) => println!("note: using the in-memory link ({reason})"),
        }
    }
    let (a, b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: link_bps,
            fifo_packets: 256,
            pool_buffers: 16_384,
            ..MemLinkConfig::default()
        },
        clock.clone(),
    );
    let info = LinkInfo {
        desc: format!(
            "an in-memory link timed like {} Mb/s Ethernet",
            args.link_mbps
        ),
        network_bound: NETWORK_AND_RECEIVE_BOUND,
        idle_sleep: Some(Duration::from_micros(20)),
    };
    run_on(args, clock, a, b, &info)
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
    // A request the link cannot carry, to show what a refusal says.
    let refusal = admission.check(&ChannelRequest {
        mmax: 60_000,
        imin: 200_000,
        bmax: 1,
        deadline: 1_000_000,
        core: None,
        txq: None,
    });
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

    println!(
        "rtchan demo: {} real-time channels and a best-effort flood over {} for {:?}",
        CHANNELS.len(),
        link.desc,
        args.duration
    );
    for (ch, s) in CHANNELS.iter().zip(&specs) {
        println!(
            "  admitted {:<16} Mmax {:>5} B  Imin {:>7}  Bmax {}  host bound {:>7} (cpu {}, link {}){}",
            ch.name,
            ch.mmax,
            fmt_ns(ch.imin),
            ch.bmax,
            fmt_ns(ch.host_deadline),
            fmt_ns(s.cpu_deadline),
            fmt_ns(s.link_deadline),
            if ch.violator {
                format!("  <- will send at {}x its rate", args.violation)
            } else {
                String::new()
            }
        );
    }
    if let Err(AdmitError::Rejected(r)) = &refusal {
        println!("  refused  60 kB every 200 us within 1 ms: {r}");
    }

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
    let tty = std::io::stdout().is_terminal();
    let mut last_progress = Instant::now();
    let mut be_bytes_prev = 0;
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
        if !args.quiet
            && last_progress.elapsed() >= Duration::from_millis(if tty { 250 } else { 2000 })
        {
            let dt = last_progress.elapsed().as_secs_f64();
            last_progress = Instant::now();
            let be_bytes = be_rx.stats().bytes.get();
            let be_mbps = (be_bytes - be_bytes_prev) as f64 * 8.0 / dt / 1e6;
            be_bytes_prev = be_bytes;
            let delivered: u64 = receivers.iter().map(|r| r.stats().delivered.get()).sum();
            let misses: u64 = receivers
                .iter()
                .map(|r| r.stats().deadline_misses.get())
                .sum();
            let line = format!(
                "[{:>5.1}s / {:.0}s] real-time delivered {:>7}  misses {}  best-effort {:>6.1} Mb/s",
                started.elapsed().as_secs_f64(),
                args.duration.as_secs_f64(),
                delivered,
                misses,
                be_mbps
            );
            if tty {
                print!("\r{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
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
    if tty && !args.quiet {
        println!();
    }
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
        stalls,
        rx_stalls,
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
    }
}

/// How long the cores run before traffic starts.
const WARM_UP: Duration = Duration::from_millis(200);

/// The application thread's name in the preemption probe.
const APP_THREAD: &str = "demo-application";

/// Misses (and slow submit calls) recorded per channel with their times (past this they are counted, and unexcused):
/// a 10 s run of the 200 µs channel is 50,000 messages.
const MISS_LOG: usize = 65_536;

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

/// Formats nanoseconds with a unit people read.
pub fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

fn print_report(r: &DemoReport) {
    println!();
    println!(
        "{:<16} {:>6} {:>8} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>5}",
        "channel",
        "Mmax",
        "Imin",
        "Bmax",
        "bound D",
        "submitted",
        "delivered",
        "p50",
        "p99",
        "max",
        "misses",
        "unexcused",
        "lost"
    );
    for c in &r.channels {
        println!(
            "{:<16} {:>6} {:>8} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>5}{}",
            c.name,
            c.spec.mmax,
            fmt_ns(c.spec.imin),
            c.spec.bmax,
            fmt_ns(c.spec.end_to_end_deadline),
            c.submitted,
            c.delivered,
            fmt_ns(c.latency.0),
            fmt_ns(c.latency.1),
            fmt_ns(c.latency.2),
            c.misses,
            c.verdict.unexcused,
            c.lost,
            if c.violator {
                format!(
                    "  (sent {}x its spec; {} over-spec messages dropped at its own buffer)",
                    r.violation, c.refused
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "best-effort flood: {:.1} Mb/s delivered on a {} Mb/s link ({:.0}%)",
        r.best_effort_bps / 1e6,
        r.link_bps / 1_000_000,
        100.0 * r.best_effort_bps / r.link_bps as f64
    );
    println!("{}", r.preempted);
    let excused: u64 = r.channels.iter().map(|c| c.verdict.excused).sum();
    let unexcused = r.unexcused_misses();
    if excused + unexcused > 0 {
        for c in r.channels.iter().filter(|c| c.misses > 0) {
            println!("  {:<16} {}", c.name, c.verdict);
        }
    }
    let lost: u64 = r.channels.iter().map(|c| c.lost).sum();
    if r.passed() {
        println!("result: every admitted channel met every deadline, nothing lost");
    } else if unexcused == 0 && lost == 0 {
        println!(
            "result: {excused} deadline misses, each while the OS kept the polling thread off \
             its CPU for at least its lateness (the guarantees assume a polling core of its own: \
             docs/deploy.md, core isolation); nothing lost"
        );
    } else {
        println!(
            "result: {unexcused} DEADLINE MISSES NOT EXPLAINED BY MEASURED OS PREEMPTION, {lost} \
             lost (see the table)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").is_err());
    }
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
