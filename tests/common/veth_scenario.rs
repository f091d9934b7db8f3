//! The scenario both veth tests run (`tests/afpacket_veth.rs`, `tests/afxdp_veth.rs`), generic
//! over the port: two dataplanes on a veth pair between two network namespaces, real-time
//! channels (one of them multi-packet) under a best-effort flood that would saturate the (paced)
//! link; zero losses, byte-exact payloads, no deadline miss that measured OS preemption of the
//! polling threads does not explain (`rtchan::preemption`: each miss against the run-queue wait
//! during that message's own life), and best-effort's share of the link. Each test supplies the port ([`ScenarioPort`]): how to open
//! it inside a namespace, its name in messages, its notes.
//!
//! Included by each test file with `#[path = "common/veth_scenario.rs"] mod veth_scenario;`
//! (each `tests/*.rs` is a crate of its own; this file is not a test target).

use dataplane::channel::{Submit, SubmitError};
use dataplane::core::{raise_priority, Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::port::Port;
use dataplane::rx::Receiver;
use dataplane::sched::SchedPolicy;
use dataplane::source::{Pattern, Source};
use dataplane::spec::{ChannelConfig, ChannelSpec, Endpoint};
use dataplane::time::{monotonic_now, Clock, MonotonicClock, Nanos, TscMeter};
use dataplane::wire::{wire_bytes, FRAME_OVERHEAD};
use rtchan::ports::netns::enter_netns;
use rtchan::ports::netns::{is_root, netns_path, Namespaces};
use rtchan::preemption::{MissLog, PreemptionProbe, Watcher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// The per-test part of the scenario: the port under test.
pub trait ScenarioPort: Port + Sized {
    /// The port's name in the printed notes ("af_packet").
    const NAME: &'static str;
    /// The namespaces are `{NS_PREFIX}a-{pid}` and `{NS_PREFIX}b-{pid}`.
    const NS_PREFIX: &'static str;
    /// The veth ends are `{IF_PREFIX}a{pid}` and `{IF_PREFIX}b{pid}` (at most 15 bytes).
    const IF_PREFIX: &'static str;
    /// The polling threads are `{THREAD_PREFIX}-tx` and `{THREAD_PREFIX}-rx`.
    const THREAD_PREFIX: &'static str;

    /// Opens the port, configured for the scenario, on `ifname` in the calling thread's network
    /// namespace.
    fn open_on(ifname: &str) -> Result<Self, String>;
    /// What to print about the sender's port after the run (one line each).
    fn sender_notes(&self) -> Vec<String>;
    /// What to print about the receiver's port after the run (one line each).
    fn receiver_notes(&self) -> Vec<String>;
}

/// The paced link rate: slow enough that the flood saturates it and pacing decides who goes.
pub const RATE_BPS: u64 = 100_000_000;
/// How long the channels submit.
const RUN: Nanos = 2_000_000_000;
/// After RUN the sender keeps polling (no new messages) so everything queued leaves.
const DRAIN: Nanos = 300_000_000;
/// The receiver keeps polling this long after the sender stopped.
const RX_TAIL: Nanos = 300_000_000;
/// Hard cap on the whole run, whatever happens.
const HARD_CAP: Nanos = 15_000_000_000;
/// Best-effort must get at least this fraction of the link (wire bytes). Real-time channels
/// use about 12 % and the best-effort reserve is 10 %, so on a quiet machine best-effort gets
/// 85-90 %. But the link scheduler models the paced link and does not bank link time the
/// sender thread lost while descheduled, so every stall (see `spec`) costs best-effort
/// throughput; on a loaded 2-vCPU runner 45-75 % was seen. Hence the margin.
const BE_MIN_FRACTION: f64 = 0.3;

pub const MAC_A: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x00, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x00, 0x0b];
const BE_ID: u32 = 100;
const BE_MMAX: u32 = 1400;

/// The bounds are generous (10 ms on the sending host, 50 ms end to end) because what they
/// measure here is mostly the machine, not rtchan: veth runs on the same two shared CPUs as
/// both polling threads (its receive softirq on the sender's CPU, or in ksoftirqd when the
/// kernel defers it), and on a loaded 2-vCPU CI VM a thread that sleeps 20 µs was measured
/// waking up to 10 ms late, several times a second, even under SCHED_FIFO (host-level
/// preemption). A message can meet a stall of the sender, of the softirq and of the receiver.
/// The port may add its own batching delay (see each test's [`ScenarioPort`] impl). On a quiet
/// machine the median is a fraction of a ms; the report prints p50/p99/max and the measured
/// OS preemption of both polling threads.
fn spec(mmax: u32, imin: Nanos, bmax: u32) -> ChannelSpec {
    ChannelSpec {
        mmax,
        imin,
        bmax,
        cpu_deadline: 5_000_000,
        link_deadline: 10_000_000,
        end_to_end_deadline: 50_000_000,
    }
}

/// (channel id, spec): three real-time channels, the second needing three packets per message.
fn channels() -> Vec<(u32, ChannelSpec)> {
    vec![
        (1, spec(200, 1_000_000, 4)),
        (2, spec(4000, 5_000_000, 2)),
        (3, spec(64, 500_000, 4)),
    ]
}

/// The payload of message `seq` on channel `ch`: every byte depends on both and its position.
fn fill(ch: u32, seq: u32, out: &mut [u8]) {
    for (j, b) in out.iter_mut().enumerate() {
        *b = (ch.wrapping_mul(97) ^ seq.wrapping_mul(31) ^ (j as u32).wrapping_mul(7)) as u8;
    }
}

fn endpoint() -> Endpoint {
    Endpoint {
        src_mac: MAC_A,
        dst_mac: MAC_B,
        src_ip: [10, 72, 0, 1],
        dst_ip: [10, 72, 0, 2],
        ..Endpoint::default()
    }
}

fn core_config() -> CoreConfig {
    CoreConfig {
        link: LinkConfig {
            link_rate_bps: RATE_BPS,
            in_flight_limit: 2 * 1538,
            capacity: 512,
            best_effort_reserve_ppm: 100_000,
            ..LinkConfig::default()
        },
        sched: SchedPolicy {
            granularity: 2,
            ..SchedPolicy::default()
        },
        ..CoreConfig::default()
    }
}

/// What the receiving thread saw of one real-time channel.
#[derive(Debug, Default)]
struct RxChannel {
    id: u32,
    delivered: u64,
    misses: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    incomplete: u64,
    /// Messages whose bytes or length differ from what the sender wrote.
    mismatches: u64,
    /// The misses, each with its times, to hold against the measured preemption.
    miss_log: MissLog,
    /// End-to-end latency (submit to delivery), ns.
    p50: Nanos,
    p99: Nanos,
    max: Nanos,
}

/// What the receiving thread saw.
#[derive(Debug, Default)]
struct RxReport {
    channels: Vec<RxChannel>,
    be_messages: u64,
    be_wire_bytes: u64,
    rejected_frames: u64,
    port_rx_dropped: u64,
    /// Port notes to print (`ScenarioPort::receiver_notes`).
    notes: Vec<String>,
}

/// What the sending thread did.
#[derive(Debug, Default)]
struct TxReport {
    /// Per real-time channel: (id, submitted, would_block, sent, late packets).
    channels: Vec<(u32, u64, u64, u64, u64)>,
    be_submitted: u64,
    tx_errors: u64,
    notes: Vec<String>,
}

/// Both polling threads run at nice -20 (we are root): on a shared runner, other processes
/// otherwise take the CPU for whole scheduler slices (tens of ms were seen), longer than any
/// bound worth testing. This is what `raise_priority` is for on machines that are not isolated.
fn prioritise() {
    if let Err(e) = raise_priority() {
        eprintln!("warning: could not raise the polling thread's priority: {e}");
    }
}

/// Adds the calling polling thread to the preemption probe's watched threads.
fn watch(watcher: &Watcher) -> Result<(), String> {
    watcher
        .watch_current_thread()
        .map_err(|e| format!("cannot measure this thread's OS preemption: {e}"))
}

/// Misses recorded per channel with their times; past this they are counted (and unexcused).
const MISS_LOG: usize = 8192;

/// What a polling thread does after an iteration that did nothing: sleep briefly. Spinning (or
/// yielding) at nice -20 would starve ksoftirqd, which runs veth's receive softirq once the
/// kernel defers it, and delay frames by tens of ms; at 100 Mb/s a frame takes 123 µs, so a
/// short sleep costs the link little.
fn idle() {
    std::thread::sleep(Duration::from_micros(20));
}

fn receiver_thread<P: ScenarioPort>(
    ns: String,
    ifname: String,
    ready: mpsc::Sender<()>,
    tx_done: Arc<AtomicBool>,
    hard_deadline: Nanos,
    watcher: Watcher,
) -> Result<RxReport, String> {
    enter_netns(&netns_path(&ns)).map_err(|e| format!("setns into {ns}: {e}"))?;
    prioritise();
    watch(&watcher)?;
    let port = P::open_on(&ifname)?;
    let notes = port.receiver_notes();
    let mut core = Core::new(core_config(), port).map_err(|e| e.to_string())?;
    let rt: Vec<(u32, ChannelSpec, Receiver)> = channels()
        .into_iter()
        .map(|(id, s)| (id, s, core.open_receiver(id, s.mmax, 256)))
        .collect();
    let be = core.open_receiver(BE_ID, BE_MMAX, 1024);
    let _ = ready.send(());
    let clock = MonotonicClock;
    let mut meter = TscMeter;
    let mut mismatches = vec![0u64; rt.len()];
    let mut max_latency = vec![0 as Nanos; rt.len()];
    let mut miss_logs: Vec<MissLog> = rt
        .iter()
        .map(|_| MissLog::with_capacity(MISS_LOG))
        .collect();
    let mut expect = vec![0u8; 4096];
    let (mut be_messages, mut be_wire_bytes) = (0u64, 0u64);
    let mut stop_at: Option<Nanos> = None;
    loop {
        let now = clock.now();
        if now >= hard_deadline || stop_at.is_some_and(|t| now >= t) {
            break;
        }
        if stop_at.is_none() && tx_done.load(Ordering::Acquire) {
            stop_at = Some(now + RX_TAIL);
        }
        let p = core.poll(&clock, &mut meter);
        for (i, (id, _, r)) in rt.iter().enumerate() {
            while r
                .recv_with(|m, d| {
                    let e = &mut expect[..m.len()];
                    fill(*id, d.seq, e);
                    if m != e || d.len as usize != m.len() {
                        mismatches[i] += 1;
                    }
                    max_latency[i] = max_latency[i].max(d.delivered_ts.saturating_sub(d.submit_ts));
                    miss_logs[i].record(d.submit_ts, d.deadline, d.delivered_ts);
                })
                .is_some()
            {}
        }
        while be
            .recv_with(|m, _| wire_bytes(m.len() + FRAME_OVERHEAD))
            .map(|w| {
                be_messages += 1;
                be_wire_bytes += w;
            })
            .is_some()
        {}
        if p.is_idle() {
            idle();
        }
    }
    core.flush_stats();
    let channels = rt
        .iter()
        .zip(miss_logs)
        .enumerate()
        .map(|(i, ((id, _, r), miss_log))| {
            let s = r.stats();
            let h = s.latency_snapshot();
            RxChannel {
                id: *id,
                delivered: s.delivered.get(),
                misses: s.deadline_misses.get(),
                lost: s.lost.get(),
                duplicates: s.duplicates.get(),
                reordered: s.reordered.get(),
                incomplete: s.incomplete.get(),
                mismatches: mismatches[i],
                miss_log,
                p50: h.value_at_quantile(0.5),
                p99: h.value_at_quantile(0.99),
                max: max_latency[i],
            }
        })
        .collect();
    let rx_stats = core.rx_stats();
    Ok(RxReport {
        channels,
        be_messages,
        be_wire_bytes,
        rejected_frames: rx_stats.rejected.iter().sum(),
        port_rx_dropped: core.port().stats().rx_dropped,
        notes,
    })
}

fn sender_thread<P: ScenarioPort>(
    ns: String,
    ifname: String,
    ready: mpsc::Receiver<()>,
    tx_done: Arc<AtomicBool>,
    hard_deadline: Nanos,
    watcher: Watcher,
) -> Result<TxReport, String> {
    let finish = |r| {
        tx_done.store(true, Ordering::Release);
        r
    };
    enter_netns(&netns_path(&ns)).map_err(|e| finish(format!("setns into {ns}: {e}")))?;
    prioritise();
    watch(&watcher).map_err(finish)?;
    let port = P::open_on(&ifname).map_err(finish)?;
    let notes = port.sender_notes();
    let mut core = Core::new(core_config(), port).map_err(|e| finish(e.to_string()))?;
    let mut rt = Vec::new();
    for (id, s) in channels() {
        let mut cfg = ChannelConfig::real_time(id, s);
        cfg.endpoint = endpoint();
        let tx = core.open(cfg).map_err(|e| finish(e.to_string()))?;
        rt.push((id, s, tx, 0u64 /* pending */, 0u32 /* next seq */));
    }
    let mut be_cfg = ChannelConfig::best_effort(BE_ID, BE_MMAX, 256);
    be_cfg.endpoint = endpoint();
    let mut flood = core.open(be_cfg).map_err(|e| finish(e.to_string()))?;
    ready
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| finish("the receiver did not get ready".to_string()))?;

    let clock = MonotonicClock;
    let mut meter = TscMeter;
    let start = clock.now();
    let mut sources: Vec<Source> = rt
        .iter()
        .map(|(id, s, ..)| {
            // 10 % under the spec's rate, so that a backlog left by a CPU stall (the channel
            // buffer full: would-block, retried) drains instead of persisting.
            let interval = s.imin + s.imin / 10;
            Source::new(Pattern::Periodic { interval }, start, *id as u64)
        })
        .collect();
    let mut msg = vec![0u8; 4096];
    let be_payload = vec![0xbeu8; BE_MMAX as usize];
    let mut be_submitted = 0u64;
    loop {
        let now = clock.now();
        let t = now - start;
        if t >= RUN + DRAIN || now >= hard_deadline {
            break;
        }
        if t < RUN {
            for ((id, s, tx, pending, seq), src) in rt.iter_mut().zip(sources.iter_mut()) {
                *pending += src.due(now);
                while *pending > 0 {
                    let m = &mut msg[..s.mmax as usize];
                    fill(*id, *seq, m);
                    match tx.submit(m) {
                        Ok(_) => {
                            *pending -= 1;
                            *seq += 1;
                        }
                        Err(SubmitError::WouldBlock) => break, // retried next iteration
                        Err(e) => return Err(finish(format!("channel {id}: {e}"))),
                    }
                }
            }
            // The flood keeps its buffer full.
            while flood.submit(&be_payload) == Ok(Submit::Queued) {
                be_submitted += 1;
            }
        }
        let p = core.poll(&clock, &mut meter);
        if p.is_idle() {
            idle();
        }
    }
    tx_done.store(true, Ordering::Release);
    core.flush_stats();
    let channels = rt
        .iter()
        .map(|(id, _, tx, _, _)| {
            let s = tx.stats().snapshot();
            (
                *id,
                s.submitted,
                s.would_block,
                s.messages_sent,
                s.late_packets,
            )
        })
        .collect();
    Ok(TxReport {
        channels,
        be_submitted,
        tx_errors: core.stats().tx_errors,
        notes,
    })
}

/// Why the veth tests cannot run here, if they cannot: not root (the message says the test
/// `needs` these), or RTCHAN_SKIP_NETNS set. A port may add its own reasons after these.
pub fn skip_reason(needs: &str) -> Option<String> {
    if !is_root() {
        return Some(format!("needs root ({needs}); run as root"));
    }
    if std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        return Some("RTCHAN_SKIP_NETNS is set".into());
    }
    None
}

/// Two network namespaces joined by a veth pair, and the guard that deletes them.
pub struct VethPair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    /// Held for its `Drop`: deletes the namespaces (and so the pair).
    _namespaces: Namespaces,
}

/// Namespaces `{ns_prefix}a-{pid}`, `{ns_prefix}b-{pid}` joined by a veth pair
/// `{if_prefix}a{pid}`–`{if_prefix}b{pid}` (MACs A and B), both links up. On failure, what was
/// made is deleted before returning.
pub fn veth_pair(ns_prefix: &str, if_prefix: &str) -> Result<VethPair, String> {
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("{ns_prefix}a-{pid}"), format!("{ns_prefix}b-{pid}"));
    let (if_a, if_b) = (format!("{if_prefix}a{pid}"), format!("{if_prefix}b{pid}"));
    let mut namespaces = Namespaces::default();
    namespaces.veth_pair((&ns_a, &if_a, MAC_A), (&ns_b, &if_b, MAC_B))?;
    Ok(VethPair {
        ns_a,
        ns_b,
        if_a,
        if_b,
        _namespaces: namespaces,
    })
}

/// Joins the sender and then the receiver thread; panics naming `what` ("dataplane", "port")
/// when either returned an error.
pub fn join_both<T, R>(
    tx: JoinHandle<Result<T, String>>,
    rx: JoinHandle<Result<R, String>>,
    what: &str,
) -> (T, R) {
    let tx = tx.join().expect("sender thread panicked");
    let rx = rx.join().expect("receiver thread panicked");
    match (tx, rx) {
        (Ok(t), Ok(r)) => (t, r),
        (t, r) => panic!(
            "a {what} failed: sender {:?}, receiver {:?}",
            t.err(),
            r.err()
        ),
    }
}

/// The scenario over port `P`: sets up the namespaces, runs the sender and the receiver, prints
/// the report and checks it. The caller has checked [`skip_reason`] (and its own).
pub fn run<P: ScenarioPort>() {
    // Declared first, dropped last: after the threads (which hold the namespaces) are joined.
    let veth = veth_pair(P::NS_PREFIX, P::IF_PREFIX).unwrap_or_else(|e| {
        panic!(
            "running as root but the veth/netns set-up failed ({e}); set RTCHAN_SKIP_NETNS=1 to \
             skip where namespaces are not allowed"
        )
    });

    let hard_deadline = monotonic_now() + HARD_CAP;
    let probe = PreemptionProbe::start().unwrap_or_else(|e| panic!("{e}"));
    let tx_done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let rx_thread = {
        let (ns, ifname, done) = (veth.ns_b.clone(), veth.if_b.clone(), tx_done.clone());
        let w = probe.watcher();
        std::thread::Builder::new()
            .name(format!("{}-rx", P::THREAD_PREFIX))
            .spawn(move || receiver_thread::<P>(ns, ifname, ready_tx, done, hard_deadline, w))
            .unwrap()
    };
    let tx_thread = {
        let (ns, ifname, done) = (veth.ns_a.clone(), veth.if_a.clone(), tx_done.clone());
        let w = probe.watcher();
        std::thread::Builder::new()
            .name(format!("{}-tx", P::THREAD_PREFIX))
            .spawn(move || sender_thread::<P>(ns, ifname, ready_rx, done, hard_deadline, w))
            .unwrap()
    };
    let (tx, rx) = join_both(tx_thread, rx_thread, "dataplane");
    let preempted = probe.finish();
    for n in tx.notes.iter().chain(&rx.notes) {
        eprintln!("{} note: {n}", P::NAME);
    }

    eprintln!("{preempted}");
    assert_eq!(tx.tx_errors, 0, "port TX errors");
    for (spec_i, (id, spec)) in channels().iter().enumerate() {
        let (tid, submitted, would_block, sent, late) = tx.channels[spec_i];
        let r = &rx.channels[spec_i];
        assert_eq!((tid, r.id), (*id, *id));
        let delivered = r.delivered;
        // The source offers RUN / Imin messages; a few may still be waiting (would-block
        // after a CPU stall on a busy machine) when submission stops at RUN.
        let offered = RUN / (spec.imin + spec.imin / 10);
        assert!(
            submitted * 10 >= offered * 9,
            "channel {id}: only {submitted} of {offered} messages submitted"
        );
        eprintln!(
            "channel {id}: submitted {submitted} (would-block retries {would_block}), sent {sent}, \
             late packets {late}, delivered {delivered}, latency p50 {:.3} p99 {:.3} max {:.3} ms",
            r.p50 as f64 / 1e6,
            r.p99 as f64 / 1e6,
            r.max as f64 / 1e6
        );
        // Submission stopped DRAIN + RX_TAIL before the end: far more than a deadline, so every
        // admitted message must have arrived.
        assert_eq!(delivered, submitted, "channel {id}: messages lost");
        assert_eq!(r.lost, 0, "channel {id}: sequence gaps");
        // A miss is a failure unless the OS kept the polling threads waiting for a CPU, during
        // that message's own life, at least as long as it was late.
        assert_eq!(
            r.miss_log.count(),
            r.misses,
            "channel {id}: misses seen vs counted"
        );
        let v = preempted.verdict(&r.miss_log);
        eprintln!("channel {id}: {v}");
        assert_eq!(
            v.unexcused, 0,
            "channel {id}: {} deadline misses not explained by measured OS preemption of the \
             polling threads ({v}; bound {} ns)",
            v.unexcused, spec.end_to_end_deadline
        );
        assert_eq!(r.mismatches, 0, "channel {id}: payloads differ");
        assert_eq!(
            (r.duplicates, r.reordered, r.incomplete),
            (0, 0, 0),
            "channel {id}: duplicates, reordering, incomplete"
        );
    }
    // Frames that were not rtchan's (IPv6 neighbour discovery on the fresh link) are rejected
    // by the parser and counted; the ring must not have dropped anything.
    eprintln!(
        "receiver: {} frames rejected by the parser, {} dropped by the port",
        rx.rejected_frames, rx.port_rx_dropped
    );
    assert_eq!(rx.port_rx_dropped, 0, "the RX ring overflowed");
    let be_fraction = rx.be_wire_bytes as f64 * 8.0 / (RATE_BPS as f64 * RUN as f64 / 1e9);
    eprintln!(
        "best-effort: {} of {} messages delivered, {:.1} % of the link",
        rx.be_messages,
        tx.be_submitted,
        be_fraction * 100.0
    );
    assert!(
        be_fraction >= BE_MIN_FRACTION,
        "best-effort got {:.1} % of the link, expected at least {:.0} %",
        be_fraction * 100.0,
        BE_MIN_FRACTION * 100.0
    );
    drop(veth);
}
