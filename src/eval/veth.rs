//! The real-time test bed: experiments 1 and 2 over a veth pair between two network
//! namespaces, in real time.
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

use super::world::{ChanDef, ChanOut, Load, RunOut, Scenario};
use crate::afpacket::{enter_netns, AfPacketConfig, AfPacketPort};
use crate::netns::{is_root, netns_path, Namespaces};
use dataplane::channel::{Submit, SubmitError};
use dataplane::core::{raise_priority, Core, CoreConfig, CoreStats, PollStalls};
use dataplane::link::LinkStats;
use dataplane::port::Port;
use dataplane::source::Source;
use dataplane::spec::Endpoint;
use dataplane::time::{monotonic_now, Clock, MonotonicClock, Nanos, TscMeter};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// After the run the sender keeps polling (no new messages) so everything queued leaves.
const DRAIN: Nanos = 300_000_000;
/// The receiver keeps polling this long after the sender stopped.
const RX_TAIL: Nanos = 300_000_000;
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
    /// af_packet (TPACKET_V3).
    AfPacket,
}

impl Backend {
    /// The label in output and CSV.
    pub fn label(self) -> &'static str {
        match self {
            Backend::AfXdp => "af_xdp-copy",
            Backend::AfPacket => "af_packet",
        }
    }
}

/// The bed: two namespaces and a veth pair, deleted when it drops.
pub struct Bed {
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

impl Bed {
    /// Makes the namespaces and the veth pair (`tag` keeps names of concurrent runs apart).
    pub fn new(tag: &str) -> Result<Self, String> {
        let pid = std::process::id();
        let (ns_a, ns_b) = (format!("rtev-{tag}a-{pid}"), format!("rtev-{tag}b-{pid}"));
        let (if_a, if_b) = (format!("rea{pid}"), format!("reb{pid}"));
        let mut guard = Namespaces::default();
        guard.veth_pair((&ns_a, &if_a, MAC_A), (&ns_b, &if_b, MAC_B))?;
        let mut notes = Vec::new();
        let backend = pick_backend(&mut notes);
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

    /// Runs one point of an experiment: `sc`'s channels for `sc.duration` of real time on a
    /// link paced at `sc.link_bps`. `retry[i]` says whether channel `i`'s application retries a
    /// message refused by a full buffer (well-behaved) or counts it and moves on (violator).
    pub fn run(&self, sc: &Scenario, retry: &[bool]) -> Result<VethOut, String> {
        match self.backend {
            #[cfg(feature = "af_xdp")]
            Backend::AfXdp => self.run_on(sc, retry, open_afxdp),
            _ => self.run_on(sc, retry, open_afpacket),
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
        let (ready_tx, ready_rx) = mpsc::channel();
        let rx = {
            let (ns, ifname, done, sc) = (
                self.ns_b.clone(),
                self.if_b.clone(),
                done.clone(),
                sc.clone(),
            );
            std::thread::Builder::new()
                .name("eval-veth-rx".into())
                .spawn(move || receiver(open, ns, ifname, sc, ready_tx, done, hard))
                .map_err(|e| e.to_string())?
        };
        let tx = {
            let (ns, ifname, done, sc, retry) = (
                self.ns_a.clone(),
                self.if_a.clone(),
                done.clone(),
                sc.clone(),
                retry.to_vec(),
            );
            std::thread::Builder::new()
                .name("eval-veth-tx".into())
                .spawn(move || sender(open, ns, ifname, sc, retry, ready_rx, done, hard))
                .map_err(|e| e.to_string())?
        };
        let tx = tx
            .join()
            .map_err(|_| "sender thread panicked".to_string())?;
        let rx = rx
            .join()
            .map_err(|_| "receiver thread panicked".to_string())?;
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
            },
            retries: tx.retries,
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
    /// The sending thread's longest gap between polls.
    pub tx_stalls: PollStalls,
    /// The receiving thread's longest gap between polls.
    pub rx_stalls: PollStalls,
    /// Port TX errors.
    pub tx_errors: u64,
    /// Frames the receiving port dropped (ring full).
    pub rx_dropped: u64,
    /// How the ports were opened.
    pub mode: String,
}

#[cfg(feature = "af_xdp")]
fn pick_backend(notes: &mut Vec<String>) -> Backend {
    // libxdp reports on stderr that it attaches without the dispatcher when no bpffs is
    // mounted; expected here.
    crate::afxdp::set_library_logging(false);
    match crate::afxdp::probe() {
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
fn open_afxdp(ifname: &str, rate: u64) -> Result<(crate::afxdp::AfXdpPort, String), String> {
    let cfg = crate::afxdp::AfXdpConfig {
        link_rate_bps: rate,
        // veth has no wire: a frame completes once the kernel copied it, so the link scheduler
        // paces at `rate` instead.
        report_completions: false,
        ..crate::afxdp::AfXdpConfig::default()
    };
    let port = crate::afxdp::AfXdpPort::open(ifname, cfg).map_err(|e| e.to_string())?;
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
    stalls: PollStalls,
    port_rx_dropped: u64,
    mode: String,
}

fn receiver<P: Port>(
    open: OpenPort<P>,
    ns: String,
    ifname: String,
    sc: Scenario,
    ready: mpsc::Sender<()>,
    done: Arc<AtomicBool>,
    hard: Nanos,
) -> Result<RxOut, String> {
    enter_netns(&netns_path(&ns)).map_err(|e| format!("setns into {ns}: {e}"))?;
    prioritise();
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
    let mut out: Vec<ChanOut> = vec![ChanOut::default(); n];
    let mut sums = vec![0u128; n];
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
        for (i, r) in rxs.iter().enumerate() {
            while let Some((lat, late, len)) = r.recv_with(|_, d| {
                (
                    d.delivered_ts.saturating_sub(d.submit_ts),
                    d.deadline != 0 && d.delivered_ts > d.deadline,
                    d.len,
                )
            }) {
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
        c.lost = rxs[i].stats().lost.get();
        if c.delivered > 0 {
            c.p99_latency = hists[i].value_at_quantile(0.99);
            c.mean_latency = sums[i] as f64 / c.delivered as f64;
        }
    }
    Ok(RxOut {
        chans: out,
        stalls,
        port_rx_dropped: core.port().stats().rx_dropped,
        mode,
    })
}

struct TxOut {
    chans: Vec<ChanOut>,
    retries: Vec<u64>,
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
    pending: u64,
    offered: u64,
    retries: u64,
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
    hard: Nanos,
) -> Result<TxOut, String> {
    let finish = |r| {
        done.store(true, Ordering::Release);
        r
    };
    enter_netns(&netns_path(&ns)).map_err(|e| finish(format!("setns into {ns}: {e}")))?;
    prioritise();
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
    let mut meter = TscMeter;
    let start = clock.now();
    let mut feeds: Vec<Feed> = feeds
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
                pending: 0,
                offered: 0,
                retries: 0,
            }
        })
        .collect();
    let payload = vec![0x5au8; max_len];
    let mut stalls = PollStalls::default();
    loop {
        let now = clock.now();
        stalls.tick(now);
        let t = now - start;
        if t >= sc.duration + DRAIN || now >= hard {
            break;
        }
        if t < sc.duration {
            for f in &mut feeds {
                if f.flood {
                    loop {
                        f.offered += 1;
                        if f.sender.submit(&payload[..f.len]) != Ok(Submit::Queued) {
                            break;
                        }
                    }
                    continue;
                }
                let Some(src) = f.source.as_mut() else {
                    continue;
                };
                let n = src.due(now);
                f.offered += n;
                f.pending += n;
                while f.pending > 0 {
                    match f.sender.submit(&payload[..f.len]) {
                        Ok(_) => f.pending -= 1,
                        Err(SubmitError::WouldBlock) if f.retry => {
                            f.retries += 1;
                            break;
                        }
                        // Counted by the channel's statistics (would-block).
                        Err(SubmitError::WouldBlock) => f.pending -= 1,
                        Err(e) => return Err(finish(e.to_string())),
                    }
                }
            }
        }
        let p = core.poll(&clock, &mut meter);
        if p.is_idle() {
            idle();
        }
    }
    done.store(true, Ordering::Release);
    core.flush_stats();
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
        core_tx_errors: stats.tx_errors,
        core: stats,
        link: core.link_stats(),
        stalls,
        mode,
    })
}
