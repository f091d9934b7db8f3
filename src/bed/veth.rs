//! The real-time test bed's I/O: the experiments' scenarios over a veth pair between two network
//! namespaces, in real time (behind [`super::VethBed`]).
//!
//! Two namespaces joined by a veth pair (made with `ip`, deleted by a [`Namespaces`] guard on
//! every exit path, failures included). A sending thread enters the first, opens a port on its
//! end and runs a sending [`Core`]; a receiving thread does the same in the second. The port is
//! AF_XDP in copy mode (`report_completions: false`, the link scheduler pacing at the
//! experiment's link rate) when the binary is built with `--features af_xdp` and the kernel
//! allows it, else af_packet (TPACKET_V3, qdisc bypass); [`Backend`] says which, and so do the
//! output and the CSV. Clocks are real: [`MonotonicClock`] and [`TscMeter`]; an idle poll
//! sleeps 20 µs (spinning at nice -20 would starve the softirq that moves veth's frames).
//!
//! Real time differs from the virtual-time bed ([`super::world`]) in three ways that the
//! results show: the host's scheduler delays either thread by up to ~10 ms on this VM (so the
//! bounds carry a 50 ms end-to-end share for it, as in the veth tests); a well-behaved
//! application whose message met a full buffer after such a stall *retries* it (as the veth
//! tests do; the retries are counted), while the violator's refused messages are simply
//! counted, as in the memlink runs; and a well-behaved application sends 10 % under its spec,
//! so that the backlog a stall leaves drains instead of persisting.
//!
//! Experiment 4 needs a CPU-bound sending core: a scenario with `per_packet` set makes one
//! ([`Pair::run`]) by spinning that long after each packet a handler writes, with the
//! applications submitting between packets and stamping messages with their due time, as the
//! virtual CPU does. Beside each channel's counters the bed records what the checks need to
//! tell the dataplane from the machine: each miss with its times and the OS preemption of both
//! polling threads, measured independently of them ([`crate::preemption`]: a miss is excused
//! only when the threads' run-queue wait during that message's own life covers its lateness;
//! [`VethOut::verdict`]), the time the sender spent in gaps over [`STALL_GAP`] (throughput per
//! running second), each thread's longest gap between polls (reported only: it includes the
//! dataplane's own work), the host and end-to-end delay histograms, and what was delivered
//! while the applications were still submitting (throughput without the drain's backlog).

use super::world::{
    payload_checked, payload_matches, submit_filled, ChanDef, ChanOut, Load, RunOut, Scenario,
};
use crate::ports::afpacket::{AfPacketConfig, AfPacketPort};
use crate::ports::netns::enter_netns;
use crate::ports::netns::{is_root, netns_path, Namespaces};
use crate::preemption::{MissLog, MissVerdict, PreemptionProbe, Preemptions, Watcher};
use dataplane::channel::{Submit, SubmitError};
use dataplane::core::{raise_priority, Core, CoreConfig, CoreStats, PollStalls};
use dataplane::link::LinkStats;
use dataplane::port::Port;
use dataplane::source::Source;
use dataplane::spec::Endpoint;
use dataplane::time::{
    monotonic_now, read_tsc, tsc_per_us, Clock, CycleMeter, MonotonicClock, Nanos, TscMeter,
};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// After the run the sender keeps polling (no new messages) so everything queued leaves.
pub const DRAIN: Nanos = 300_000_000;
/// The receiver keeps polling this long after the sender stopped.
const RX_TAIL: Nanos = 300_000_000;
/// A gap between the sending thread's polls longer than this counts towards
/// [`VethOut::tx_stalled`]: about what two frames in flight last at 100 Mb/s.
pub const STALL_GAP: Nanos = 250_000;
/// Hard cap on one point beyond its run, whatever happens.
const HARD_CAP: Nanos = 15_000_000_000;

const MAC_A: [u8; 6] = [0x02, 0x72, 0x65, 0x00, 0x00, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x72, 0x65, 0x00, 0x00, 0x0b];

/// Opens a port on an interface at a link rate; returns it and how it was opened.
type OpenPort<P> = fn(&str, u64) -> Result<(P, String), String>;

/// Which port the bed uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AF_XDP in copy mode (built with `--features af_xdp`).
    AfXdp,
    /// DPDK (built with `--features dpdk`): the `net_af_packet` vdev on each veth end, probed
    /// in that end's namespace, under one EAL for the process ([`dpdk_eal`]).
    Dpdk,
    /// af_packet (TPACKET_V3).
    AfPacket,
}

impl Backend {
    /// The label in output and CSV.
    pub fn label(self) -> &'static str {
        match self {
            Backend::AfXdp => "af_xdp-copy",
            Backend::Dpdk => "dpdk-net_af_packet",
            Backend::AfPacket => "af_packet",
        }
    }
}

/// Two namespaces and a veth pair between them, deleted when it drops.
pub struct Pair {
    ns_a: String,
    ns_b: String,
    if_a: String,
    if_b: String,
    /// Which port the points run on.
    pub backend: Backend,
    /// What the bed noted while setting up (fallbacks).
    pub notes: Vec<String>,
    _guard: Namespaces,
}

/// Why the bed cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some(
            "needs root (network namespaces, a veth pair, raw sockets / AF_XDP); run as root"
                .into(),
        );
    }
    if std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        return Some("RTCHAN_SKIP_NETNS is set".into());
    }
    None
}

impl Pair {
    /// Makes the namespaces and the veth pair (`tag` keeps names of concurrent runs apart).
    pub fn new(tag: &str) -> Result<Self, String> {
        Self::make(tag, None)
    }

    /// The same with the port chosen by the caller: an error when it cannot run here (AF_XDP
    /// without `--features af_xdp`, or refused by the kernel).
    pub fn with_backend(tag: &str, backend: Backend) -> Result<Self, String> {
        Self::make(tag, Some(backend))
    }

    fn make(tag: &str, backend: Option<Backend>) -> Result<Self, String> {
        match backend {
            Some(Backend::AfXdp) => afxdp_available()?,
            Some(Backend::Dpdk) => dpdk_available()?,
            _ => {}
        }
        let pid = std::process::id();
        let (ns_a, ns_b) = (format!("rtev-{tag}a-{pid}"), format!("rtev-{tag}b-{pid}"));
        let (if_a, if_b) = (format!("rea{pid}"), format!("reb{pid}"));
        let mut guard = Namespaces::default();
        guard.veth_pair((&ns_a, &if_a, MAC_A), (&ns_b, &if_b, MAC_B))?;
        let mut notes = Vec::new();
        let backend = backend.unwrap_or_else(|| pick_backend(&mut notes));
        Ok(Self {
            ns_a,
            ns_b,
            if_a,
            if_b,
            backend,
            notes,
            _guard: guard,
        })
    }

    /// Runs `f` on a thread inside the sending namespace, with the name of its veth end (for
    /// measurements that open a port themselves, e.g. the overheads on veth).
    pub fn in_sender_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce(&str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let (ns, ifname) = (self.ns_a.clone(), self.if_a.clone());
        std::thread::Builder::new()
            .name("bed-veth-ns".into())
            .spawn(move || {
                enter_netns(&netns_path(&ns)).map_err(|e| format!("setns into {ns}: {e}"))?;
                prioritise();
                f(&ifname)
            })
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "the measuring thread panicked".to_string())?
    }

    /// Runs one point of an experiment: `sc`'s channels for `sc.duration` of real time on a
    /// link paced at `sc.link_bps`. If `sc.per_packet` is not zero, the sending core is made
    /// CPU-bound the way the virtual CPU is: each packet a handler writes is followed by
    /// `sc.per_packet` ns of spinning (emulated protocol processing, e.g. encryption), the
    /// application submits after every packet as well as between polls (so the core sees a
    /// message at its next preemption point, as with an application thread), and messages are
    /// stamped with their due time, as in the memlink runs. A channel's application retries a
    /// message refused by a full buffer when its [`ChanDef::retry_when_full`] says so
    /// (well-behaved) or counts it and moves on (violator, flood).
    pub fn run(&self, sc: &Scenario) -> Result<VethOut, String> {
        let retry: Vec<bool> = sc.channels.iter().map(|c| c.retry_when_full).collect();
        let retry = &retry[..];
        match self.backend {
            #[cfg(feature = "af_xdp")]
            Backend::AfXdp => self.run_on(sc, retry, open_afxdp),
            #[cfg(feature = "dpdk")]
            Backend::Dpdk => self.run_on(sc, retry, |ifname, _| open_dpdk(ifname)),
            Backend::AfPacket => self.run_on(sc, retry, open_afpacket),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "the {} port is not in this build (Pair::with_backend refuses it)",
                other.label()
            )),
        }
    }

    fn run_on<P: Port + 'static>(
        &self,
        sc: &Scenario,
        retry: &[bool],
        open: OpenPort<P>,
    ) -> Result<VethOut, String> {
        let hard = monotonic_now() + sc.duration + HARD_CAP;
        let done = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let probe = PreemptionProbe::start()?;
        let rx = {
            let (ns, ifname, done, sc, started, w) = (
                self.ns_b.clone(),
                self.if_b.clone(),
                done.clone(),
                sc.clone(),
                started.clone(),
                probe.watcher(),
            );
            std::thread::Builder::new()
                .name("bed-veth-rx".into())
                .spawn(move || receiver(open, ns, ifname, sc, ready_tx, done, started, hard, w))
                .map_err(|e| e.to_string())?
        };
        let tx = {
            let (ns, ifname, done, sc, retry, started, w) = (
                self.ns_a.clone(),
                self.if_a.clone(),
                done.clone(),
                sc.clone(),
                retry.to_vec(),
                started.clone(),
                probe.watcher(),
            );
            std::thread::Builder::new()
                .name("bed-veth-tx".into())
                .spawn(move || {
                    sender(
                        open, ns, ifname, sc, retry, ready_rx, done, started, hard, w,
                    )
                })
                .map_err(|e| e.to_string())?
        };
        let tx = tx
            .join()
            .map_err(|_| "sender thread panicked".to_string())?;
        let rx = rx
            .join()
            .map_err(|_| "receiver thread panicked".to_string())?;
        let preempted = probe.finish();
        let (tx, rx) = match (tx, rx) {
            (Ok(t), Ok(r)) => (t, r),
            (t, r) => {
                return Err(format!(
                    "a dataplane failed: sender {:?}, receiver {:?}",
                    t.err(),
                    r.err()
                ))
            }
        };
        let chans = sc
            .channels
            .iter()
            .zip(tx.chans.iter().zip(&rx.chans))
            .map(|(def, (t, r))| {
                let mut c = r.clone();
                c.name = def.name.clone();
                c.id = def.config.id;
                c.spec = def.spec();
                c.offered = t.offered;
                c.accepted = t.accepted;
                c.blocked = t.blocked;
                c.dropped_newest = t.dropped_newest;
                c.dropped_oldest = t.dropped_oldest;
                c.late_packets = t.late_packets;
                c.max_host_delay = t.max_host_delay;
                c
            })
            .collect();
        let link_ns = dataplane::time::wire_time(tx.link.wire_bytes, sc.link_bps);
        Ok(VethOut {
            run: RunOut {
                chans,
                core: tx.core,
                link: tx.link,
                duration: sc.duration,
                link_utilisation: link_ns as f64 / (sc.duration + DRAIN) as f64,
                host_delay: tx.host_delay,
                latency: rx.hists,
            },
            retries: tx.retries,
            overrun: rx.overrun,
            miss_logs: rx.miss_logs,
            preempted,
            window: rx.window,
            tx_stalled: tx.stalled,
            tx_stalls: tx.stalls,
            rx_stalls: rx.stalls,
            tx_errors: tx.core_tx_errors,
            rx_dropped: rx.port_rx_dropped,
            mode: format!("sender {}, receiver {}", tx.mode, rx.mode),
        })
    }
}

/// What a point produced.
#[derive(Clone, Debug)]
pub struct VethOut {
    /// Per channel as in the memlink runs (`duration` is the submitting time; the link's
    /// utilisation is over the submitting time plus the drain).
    pub run: RunOut,
    /// Per channel: submits retried after a full buffer (well-behaved channels only).
    pub retries: Vec<u64>,
    /// Per channel: the largest lateness of a delivery past its deadline ℓ + D (0: no miss).
    pub overrun: Vec<Nanos>,
    /// Per channel: each miss with its times.
    pub miss_logs: Vec<MissLog>,
    /// The OS preemption of both polling threads over the point, measured by a probe thread.
    pub preempted: Preemptions,
    /// Per channel: messages and payload bytes delivered while the applications were
    /// submitting (`run.duration` from the sender's start): steady-state throughput, without
    /// the backlog the drain delivers afterwards.
    pub window: Vec<(u64, u64)>,
    /// Time the sending thread spent in gaps between polls longer than [`STALL_GAP`] while the
    /// applications were submitting: time the link could not be fed (the link scheduler keeps
    /// only about two frames in flight).
    pub tx_stalled: Nanos,
    /// The sending thread's longest gap between polls (reported only: it includes the
    /// dataplane's own work, so it cannot excuse a miss).
    pub tx_stalls: PollStalls,
    /// The receiving thread's longest gap between polls (reported only).
    pub rx_stalls: PollStalls,
    /// Port TX errors.
    pub tx_errors: u64,
    /// Frames the receiving port dropped (ring full).
    pub rx_dropped: u64,
    /// How the ports were opened.
    pub mode: String,
}

impl VethOut {
    /// Channel `i`'s misses divided into those the measured OS preemption of the polling
    /// threads excuses (its run-queue wait during the message's own life at least its
    /// lateness, [`Preemptions::excuses`]) and the rest, which are the dataplane's unless the
    /// machine did something the probe cannot see (host steal, deferred softirqs).
    pub fn verdict(&self, i: usize) -> MissVerdict {
        self.preempted.verdict(&self.miss_logs[i])
    }
}

/// Misses recorded per channel with their times; past this they are counted (and unexcused).
const MISS_LOG: usize = 8192;

fn watch(watcher: &Watcher) -> Result<(), String> {
    watcher
        .watch_current_thread()
        .map_err(|e| format!("cannot measure this thread's OS preemption: {e}"))
}

/// Whether AF_XDP can run here (built with it, and the kernel lets it).
fn afxdp_available() -> Result<(), String> {
    #[cfg(feature = "af_xdp")]
    {
        crate::ports::afxdp::set_library_logging(false);
        crate::ports::afxdp::probe().map_err(|e| format!("AF_XDP is not available here: {e}"))
    }
    #[cfg(not(feature = "af_xdp"))]
    Err("AF_XDP needs a build with --features af_xdp".into())
}

/// Whether the DPDK backend can run here: built with it, and EAL starts ([`dpdk_eal`]).
fn dpdk_available() -> Result<(), String> {
    #[cfg(feature = "dpdk")]
    {
        dpdk_eal().map(|_| ())
    }
    #[cfg(not(feature = "dpdk"))]
    Err("the DPDK port needs a build with --features dpdk".into())
}

/// The process's one EAL for the DPDK backend, started on first use: no hugepages (512 MB of
/// ordinary memory), no PCI devices, no shared config, the calling thread's CPU affinity kept
/// (EAL would pin it to its main lcore). Vdevs are probed per point ([`open_dpdk`]). An EAL that
/// failed to start stays failed (DPDK does not let a process try twice).
#[cfg(feature = "dpdk")]
pub fn dpdk_eal() -> Result<&'static crate::ports::dpdk::Eal, String> {
    use crate::ports::dpdk::Eal;
    static EAL: std::sync::OnceLock<Result<Eal, String>> = std::sync::OnceLock::new();
    EAL.get_or_init(|| {
        let cpu = core_affinity::get_core_ids()
            .and_then(|ids| ids.first().map(|c| c.id))
            .unwrap_or(0);
        let args = [
            "-l".to_string(),
            cpu.to_string(),
            "--no-huge".into(),
            "-m".into(),
            "512".into(),
            "--no-pci".into(),
            "--no-shconf".into(),
            "--no-telemetry".into(),
            "--log-level=lib.eal:error".into(),
        ];
        Eal::init_keep_affinity(&args).map_err(|e| format!("EAL init with {args:?}: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Opens the DPDK port of one veth end: probes a fresh `net_af_packet` vdev on `ifname` from
/// the calling thread (so its socket opens in this thread's namespace), configures and starts
/// it. A vdev is released for good when its port closes, hence a new name each time; DPDK's
/// control path is not for concurrent callers, hence the lock. Every port of the process draws
/// its mbufs from one pool ([`DPDK_POOL_MBUFS`]; DPDK's pools are safe to share between
/// threads), made on first use: a pool per port would not come back to EAL's fixed memory
/// when its port closes with mbufs outstanding, and a run of many points would run out.
#[cfg(feature = "dpdk")]
pub fn open_dpdk(ifname: &str) -> Result<(crate::ports::dpdk::DpdkPort, String), String> {
    use crate::ports::dpdk::{DpdkPort, EthConfig, EthPort, Mempool};
    use std::sync::Mutex;
    static CONTROL: Mutex<(u32, Option<Mempool>)> = Mutex::new((0, None));
    let eal = dpdk_eal()?;
    let mut control = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
    let (next, pool) = &mut *control;
    *next += 1;
    let name = format!("net_af_packet{next}");
    let pool = match pool {
        Some(p) => p.clone(),
        None => pool
            .insert(
                Mempool::pktmbuf(eal, "bed_pool", DPDK_POOL_MBUFS)
                    .map_err(|e| format!("the bed's mbuf pool: {e}"))?,
            )
            .clone(),
    };
    let in_use = pool.in_use();
    eal.probe_device(&format!("{name},iface={ifname}"))
        .map_err(|e| format!("probe {name} on {ifname}: {e}"))?;
    let id = eal.port_by_name(&name).map_err(|e| e.to_string())?;
    let eth = EthPort::configure(eal, id, &EthConfig::default(), &pool)
        .map_err(|e| format!("{name}: configure: {e}"))?;
    let port = DpdkPort::new(eth, pool).map_err(|e| format!("{name}: start: {e}"))?;
    Ok((
        port,
        format!(
            "DPDK {name} (net_af_packet on {ifname}; {in_use} of the shared pool's \
             {DPDK_POOL_MBUFS} mbufs in use when it opened)"
        ),
    ))
}

/// Mbufs in the DPDK bed's one pool: both cores' link queues (512 frames each), what the
/// kernel ports' rings and bursts hold, and room to spare.
#[cfg(feature = "dpdk")]
pub const DPDK_POOL_MBUFS: u32 = 16383;

#[cfg(feature = "af_xdp")]
fn pick_backend(notes: &mut Vec<String>) -> Backend {
    // libxdp reports on stderr that it attaches without the dispatcher when no bpffs is
    // mounted; expected here.
    crate::ports::afxdp::set_library_logging(false);
    match crate::ports::afxdp::probe() {
        Ok(()) => Backend::AfXdp,
        Err(e) => {
            notes.push(format!(
                "AF_XDP is not available here ({e}); using af_packet instead"
            ));
            Backend::AfPacket
        }
    }
}

#[cfg(not(feature = "af_xdp"))]
fn pick_backend(notes: &mut Vec<String>) -> Backend {
    notes.push("built without --features af_xdp: using af_packet".into());
    Backend::AfPacket
}

#[cfg(feature = "af_xdp")]
fn open_afxdp(ifname: &str, rate: u64) -> Result<(crate::ports::afxdp::AfXdpPort, String), String> {
    use crate::ports::afxdp::XdpAttach;
    let cfg = crate::ports::afxdp::AfXdpConfig {
        // RTCHAN_XDP_ATTACH=native|skb forces the XDP attach mode (default: what works).
        attach: match std::env::var("RTCHAN_XDP_ATTACH").as_deref() {
            Ok("native") => XdpAttach::Native,
            Ok("skb") => XdpAttach::Skb,
            _ => XdpAttach::Auto,
        },
        link_rate_bps: rate,
        // veth has no wire: a frame completes once the kernel copied it, so the link scheduler
        // paces at `rate` instead.
        report_completions: false,
        ..crate::ports::afxdp::AfXdpConfig::default()
    };
    let port = crate::ports::afxdp::AfXdpPort::open(ifname, cfg).map_err(|e| e.to_string())?;
    let mode = format!(
        "AF_XDP {} mode, {}",
        port.attach_mode(),
        if port.zero_copy() {
            "zero-copy"
        } else {
            "copy"
        }
    );
    Ok((port, mode))
}

fn open_afpacket(ifname: &str, rate: u64) -> Result<(AfPacketPort, String), String> {
    let cfg = AfPacketConfig {
        // One page per block: under load a block reaches user space after about two frames.
        rx_block_size: 4096,
        rx_blocks: 512,
        frame_size: 2048,
        tx_batch: 32,
        pool_buffers: 2048,
        qdisc_bypass: true,
        link_rate_bps: rate,
        rx_block_timeout_ms: 1,
    };
    let port = AfPacketPort::open(ifname, cfg).map_err(|e| e.to_string())?;
    let mode = format!(
        "af_packet TPACKET_V3, qdisc bypass {}",
        if port.qdisc_bypass() { "on" } else { "off" }
    );
    Ok((port, mode))
}

fn endpoint() -> Endpoint {
    Endpoint {
        src_mac: MAC_A,
        dst_mac: MAC_B,
        src_ip: [10, 73, 0, 1],
        dst_ip: [10, 73, 0, 2],
        ..Endpoint::default()
    }
}

fn prioritise() {
    if let Err(e) = raise_priority() {
        eprintln!("warning: could not raise the polling thread's priority: {e}");
    }
}

fn idle() {
    std::thread::sleep(Duration::from_micros(20));
}

/// The receiving side's configuration: the sender's without the FIFO baselines.
fn rx_config(c: CoreConfig) -> CoreConfig {
    let mut c = c;
    c.sched.fifo = false;
    c.link.fifo = false;
    c
}

struct RxOut {
    chans: Vec<ChanOut>,
    hists: Vec<Histogram<u64>>,
    overrun: Vec<Nanos>,
    miss_logs: Vec<MissLog>,
    window: Vec<(u64, u64)>,
    stalls: PollStalls,
    port_rx_dropped: u64,
    mode: String,
}

#[allow(clippy::too_many_arguments)]
fn receiver<P: Port>(
    open: OpenPort<P>,
    ns: String,
    ifname: String,
    sc: Scenario,
    ready: mpsc::Sender<()>,
    done: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    hard: Nanos,
    watcher: Watcher,
) -> Result<RxOut, String> {
    enter_netns(&netns_path(&ns)).map_err(|e| format!("setns into {ns}: {e}"))?;
    prioritise();
    watch(&watcher)?;
    let (port, mode) = open(&ifname, sc.link_bps)?;
    let mut core = Core::new(rx_config(sc.core), port).map_err(|e| e.to_string())?;
    let rxs: Vec<_> = sc
        .channels
        .iter()
        .map(|c| {
            let ring = if c.spec().is_some() { 256 } else { 1024 };
            core.open_receiver(c.config.id, c.config.mmax(), ring)
        })
        .collect();
    let n = rxs.len();
    let checks: Vec<(u32, bool)> = sc
        .channels
        .iter()
        .map(|c| (c.config.id, payload_checked(c)))
        .collect();
    let mut out: Vec<ChanOut> = vec![ChanOut::default(); n];
    let mut sums = vec![0u128; n];
    let mut overrun: Vec<Nanos> = vec![0; n];
    let mut miss_logs: Vec<MissLog> = (0..n).map(|_| MissLog::with_capacity(MISS_LOG)).collect();
    let mut window: Vec<(u64, u64)> = vec![(0, 0); n];
    let mut hists: Vec<Histogram<u64>> = (0..n)
        .map(|_| Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"))
        .collect();
    let _ = ready.send(());
    let clock = MonotonicClock;
    let mut meter = TscMeter;
    let mut stop_at: Option<Nanos> = None;
    let mut stalls = PollStalls::default();
    loop {
        let now = clock.now();
        stalls.tick(now);
        if now >= hard || stop_at.is_some_and(|t| now >= t) {
            break;
        }
        if stop_at.is_none() && done.load(Ordering::Acquire) {
            stop_at = Some(now + RX_TAIL);
        }
        let p = core.poll(&clock, &mut meter);
        let start = started.load(Ordering::Acquire);
        let window_end = if start == 0 { 0 } else { start + sc.duration };
        for (i, r) in rxs.iter().enumerate() {
            let (id, check) = checks[i];
            while let Some((lat, late, len, over, at)) = r.recv_with(|m, d| {
                miss_logs[i].record(d.submit_ts, d.deadline, d.delivered_ts);
                if check && (d.len as usize != m.len() || !payload_matches(id, d.seq, m)) {
                    out[i].mismatched += 1;
                }
                (
                    d.delivered_ts.saturating_sub(d.submit_ts),
                    d.deadline != 0 && d.delivered_ts > d.deadline,
                    d.len,
                    if d.deadline != 0 {
                        d.delivered_ts.saturating_sub(d.deadline)
                    } else {
                        0
                    },
                    d.delivered_ts,
                )
            }) {
                overrun[i] = overrun[i].max(over);
                if at <= window_end {
                    window[i].0 += 1;
                    window[i].1 += len as u64;
                }
                let c = &mut out[i];
                c.delivered += 1;
                c.bytes += len as u64;
                c.max_latency = c.max_latency.max(lat);
                c.misses += late as u64;
                sums[i] += lat as u128;
                let _ = hists[i].record(lat.max(1));
            }
        }
        if p.is_idle() {
            idle();
        }
    }
    core.flush_stats();
    for (i, c) in out.iter_mut().enumerate() {
        let st = rxs[i].stats();
        c.lost = st.lost.get();
        c.duplicates = st.duplicates.get();
        c.reordered = st.reordered.get();
        c.incomplete = st.incomplete.get();
        if c.delivered > 0 {
            c.p99_latency = hists[i].value_at_quantile(0.99);
            c.mean_latency = sums[i] as f64 / c.delivered as f64;
        }
    }
    Ok(RxOut {
        chans: out,
        hists,
        overrun,
        miss_logs,
        window,
        stalls,
        port_rx_dropped: core.port().stats().rx_dropped,
        mode,
    })
}

struct TxOut {
    chans: Vec<ChanOut>,
    retries: Vec<u64>,
    host_delay: Vec<Histogram<u64>>,
    stalled: Nanos,
    core: CoreStats,
    link: LinkStats,
    core_tx_errors: u64,
    stalls: PollStalls,
    mode: String,
}

struct Feed {
    sender: dataplane::channel::Sender,
    source: Option<Source>,
    flood: bool,
    retry: bool,
    len: usize,
    id: u32,
    /// Messages accepted so far: the next one's sequence number.
    seq: u32,
    /// Messages due but not yet accepted, with their stamps (0: stamp at submission).
    pending: VecDeque<Nanos>,
    offered: u64,
    retries: u64,
}

/// The applications of one point, run by the sending thread.
struct App {
    feeds: Vec<Feed>,
    payload: Vec<u8>,
    start: Nanos,
    duration: Nanos,
    /// Stamp messages with their due time instead of the submit call's time.
    stamp_due: bool,
    error: Option<String>,
    /// Gaps between the sending thread's ticks (each poll, and before and after each
    /// packet's emulated processing).
    stalls: PollStalls,
    /// Sum of gaps over [`STALL_GAP`] while the applications submit.
    stalled: Nanos,
    last: Nanos,
}

impl App {
    /// Records that the sending thread runs at `now`.
    fn tick(&mut self, now: Nanos) {
        self.stalls.tick(now);
        let end = self.start + self.duration;
        if now - self.last > STALL_GAP && self.last < end {
            self.stalled += now.min(end) - self.last;
        }
        self.last = now;
    }

    /// Submits what fell due by `now` (during the submitting time only).
    fn service(&mut self, now: Nanos) {
        if now.saturating_sub(self.start) >= self.duration || self.error.is_some() {
            return;
        }
        for f in &mut self.feeds {
            if f.flood {
                loop {
                    f.offered += 1;
                    let buf = &mut self.payload[..f.len];
                    if submit_filled(&mut f.sender, (f.id, &mut f.seq), buf, None)
                        != Ok(Submit::Queued)
                    {
                        break;
                    }
                }
                continue;
            }
            let Some(src) = f.source.as_mut() else {
                continue;
            };
            if self.stamp_due {
                while src.next_at() <= now {
                    let at = src.next_at();
                    let n = src.due(at);
                    f.offered += n;
                    f.pending.extend(std::iter::repeat_n(at, n as usize));
                }
            } else {
                let n = src.due(now);
                f.offered += n;
                f.pending.extend(std::iter::repeat_n(0, n as usize));
            }
            while let Some(&at) = f.pending.front() {
                let buf = &mut self.payload[..f.len];
                let stamp = (at != 0).then_some(at);
                let r = submit_filled(&mut f.sender, (f.id, &mut f.seq), buf, stamp);
                match r {
                    Ok(_) => {
                        f.pending.pop_front();
                    }
                    Err(SubmitError::WouldBlock) if f.retry => {
                        f.retries += 1;
                        break;
                    }
                    // Counted by the channel's statistics (would-block).
                    Err(SubmitError::WouldBlock) => {
                        f.pending.pop_front();
                    }
                    Err(e) => {
                        self.error = Some(e.to_string());
                        return;
                    }
                }
            }
        }
    }
}

/// The sending core's meter: the TSC, plus (when `spin` is set) emulated per-packet processing
/// and the applications' submissions after every packet, as the virtual CPU does.
struct AppMeter<'a> {
    app: &'a mut App,
    clock: MonotonicClock,
    /// TSC cycles to spin after each packet (0: none).
    spin: u64,
}

impl CycleMeter for AppMeter<'_> {
    #[inline]
    fn cycles(&mut self) -> u64 {
        read_tsc()
    }
    fn on_packet(&mut self) {
        if self.spin == 0 {
            return;
        }
        self.app.tick(self.clock.now());
        let c0 = read_tsc();
        while read_tsc().wrapping_sub(c0) < self.spin {
            std::hint::spin_loop();
        }
        let now = self.clock.now();
        self.app.tick(now);
        self.app.service(now);
    }
    fn cycles_to_ns(&self, cycles: u64) -> Nanos {
        TscMeter.cycles_to_ns(cycles)
    }
}

#[allow(clippy::too_many_arguments)]
fn sender<P: Port>(
    open: OpenPort<P>,
    ns: String,
    ifname: String,
    sc: Scenario,
    retry: Vec<bool>,
    ready: mpsc::Receiver<()>,
    done: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    hard: Nanos,
    watcher: Watcher,
) -> Result<TxOut, String> {
    let finish = |r| {
        done.store(true, Ordering::Release);
        r
    };
    enter_netns(&netns_path(&ns)).map_err(|e| finish(format!("setns into {ns}: {e}")))?;
    prioritise();
    watch(&watcher).map_err(finish)?;
    let (port, mode) = open(&ifname, sc.link_bps).map_err(finish)?;
    let mut core = Core::new(sc.core, port).map_err(|e| finish(e.to_string()))?;
    let mut feeds = Vec::new();
    let mut max_len = 1;
    for (i, ch) in sc.channels.iter().enumerate() {
        let mut cfg = ch.config;
        cfg.endpoint = endpoint();
        let sender = core.open(cfg).map_err(|e| finish(e.to_string()))?;
        max_len = max_len.max(ch.msg_len as usize);
        feeds.push((ch.clone(), i, sender));
    }
    ready
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| finish("the receiver did not get ready".to_string()))?;
    let clock = MonotonicClock;
    let start = clock.now();
    started.store(start, Ordering::Release);
    let feeds: Vec<Feed> = feeds
        .into_iter()
        .map(|(ch, i, sender): (ChanDef, usize, _)| {
            let (source, flood) = match ch.load {
                Load::Pattern(p) => (Some(Source::new(p, start, 0x5eed + i as u64)), false),
                Load::Flood => (None, true),
                Load::Idle => (None, false),
            };
            Feed {
                sender,
                source,
                flood,
                retry: retry.get(i).copied().unwrap_or(false),
                len: ch.msg_len as usize,
                id: ch.config.id,
                seq: 0,
                pending: VecDeque::new(),
                offered: 0,
                retries: 0,
            }
        })
        .collect();
    let spin = sc.per_packet * tsc_per_us() / 1000;
    let mut app = App {
        feeds,
        payload: vec![0x5au8; max_len],
        start,
        duration: sc.duration,
        stamp_due: sc.per_packet > 0,
        error: None,
        stalls: PollStalls::default(),
        stalled: 0,
        last: start,
    };
    loop {
        let now = clock.now();
        app.tick(now);
        let t = now - start;
        if t >= sc.duration + DRAIN || now >= hard {
            break;
        }
        app.service(now);
        if let Some(e) = app.error.take() {
            return Err(finish(e));
        }
        let mut meter = AppMeter {
            app: &mut app,
            clock,
            spin,
        };
        let p = core.poll(&clock, &mut meter);
        if p.is_idle() {
            idle();
        }
    }
    done.store(true, Ordering::Release);
    if let Some(e) = app.error.take() {
        return Err(e);
    }
    core.flush_stats();
    let feeds = &app.feeds;
    let chans = feeds
        .iter()
        .map(|f| {
            let st = f.sender.stats().snapshot();
            ChanOut {
                offered: f.offered,
                accepted: st.submitted,
                blocked: st.would_block,
                dropped_newest: st.dropped_newest,
                dropped_oldest: st.dropped_oldest,
                late_packets: st.late_packets,
                max_host_delay: f.sender.stats().delay_snapshot().max(),
                ..ChanOut::default()
            }
        })
        .collect();
    let stats = core.stats();
    Ok(TxOut {
        chans,
        retries: feeds.iter().map(|f| f.retries).collect(),
        host_delay: feeds
            .iter()
            .map(|f| f.sender.stats().delay_snapshot())
            .collect(),
        stalled: app.stalled,
        core_tx_errors: stats.tx_errors,
        core: stats,
        link: core.link_stats(),
        stalls: app.stalls,
        mode,
    })
}
