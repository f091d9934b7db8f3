//! The virtual-time test bed every dataplane experiment runs on.
//!
//! A sending [`Core`] and a receiving [`Core`] joined by an in-memory link that times frames
//! like a real one ([`MemLink`]), one [`ManualClock`] for both, and a virtual CPU: each packet
//! a handler writes costs `per_packet` ns of that clock. Nothing depends on the host's speed, so
//! every run is deterministic and a second of traffic takes well under a second to simulate.
//!
//! # How time moves
//! The sending core's cycle meter is the `World` itself. After every packet a handler writes
//! it advances the clock by `per_packet`, submits every message that fell due meanwhile
//! (stamped with its exact due time), polls the receiving core and drains the receivers. So a
//! message becomes visible to the sending core at its next preemption point, exactly as with a
//! real application thread, and deliveries are timed to within one packet's cost. Between
//! polls that did no CPU work the clock jumps by `step` ns (the virtual core "spins"); a poll
//! that did work is followed at once by the next, so a busy core never idles. The admission
//! model of an experiment accounts for that step as one non-preemptive background chunk
//! (`rx_burst_ns = step`), which is what it is: a message that arrives just after an idle poll
//! waits up to one step.
//!
//! # What is measured
//! Per channel, at the receiver and exactly (from every [`dataplane::rx::Delivery`], not a histogram): messages
//! and bytes delivered, the largest and 99th-percentile end-to-end latency (submit stamp to
//! delivery), deadline misses against the header's deadline (ℓ + D), losses. At the sender:
//! messages accepted, refused (block), dropped (drop-newest, drop-oldest), packets released after
//! their link deadline (`late_packets`, exact) and the largest host delay (submit to release of
//! the last packet, from the channel's delay histogram: 2 significant digits).

use dataplane::channel::{Sender, Submit, SubmitError};
use dataplane::core::{Core, CoreConfig, CoreStats};
use dataplane::link::LinkStats;
use dataplane::memlink::{MemLink, MemLinkConfig, MemPort};
use dataplane::rx::Receiver;
use dataplane::source::{Pattern, Source};
use dataplane::spec::{ChannelConfig, ChannelSpec, OverflowPolicy};
use dataplane::time::{Clock, CycleMeter, ManualClock, Nanos, VirtualCpu};
use dataplane::wire::wire_bytes;
use hdrhistogram::Histogram;
use std::sync::Arc;

/// One gigabit per second.
pub const GBPS: u64 = 1_000_000_000;

/// What one channel's application does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Submits on this pattern (sources from `dataplane::source`).
    Pattern(Pattern),
    /// Keeps its buffer full at every opportunity (a best-effort flood).
    Flood,
    /// Submits nothing.
    Idle,
}

/// A channel of an experiment.
#[derive(Clone, Debug)]
pub struct ChanDef {
    /// Label in CSV files and plots.
    pub name: String,
    /// The configuration the sending core opens (spec, reservation, overflow policy).
    pub config: ChannelConfig,
    /// Length of every message (≤ Mmax).
    pub msg_len: u32,
    /// The application's submissions.
    pub load: Load,
    /// On a real-time bed, whether the application retries a message a full buffer refused
    /// (a well-behaved application after the machine stalled the core) instead of counting it
    /// and moving on (a violator, a flood). In virtual time nothing stalls, so a well-behaved
    /// application never meets a full buffer and the field changes nothing.
    pub retry_when_full: bool,
}

impl ChanDef {
    /// A real-time channel with `spec`, submitting on `load` at Mmax; a periodic application
    /// retries a refused message, any other counts it.
    pub fn real_time(name: &str, id: u32, spec: ChannelSpec, load: Load) -> Self {
        Self {
            name: name.to_string(),
            config: ChannelConfig::real_time(id, spec),
            msg_len: spec.mmax,
            load,
            retry_when_full: matches!(load, Load::Pattern(Pattern::Periodic { .. })),
        }
    }
    /// A best-effort channel of `msg_len`-byte messages with a 256-message queue (drop-newest).
    pub fn best_effort(name: &str, id: u32, msg_len: u32, load: Load) -> Self {
        Self {
            name: name.to_string(),
            config: ChannelConfig::best_effort(id, msg_len, 256),
            msg_len,
            load,
            retry_when_full: false,
        }
    }
    /// The same channel with another overflow policy.
    pub fn with_overflow(mut self, p: OverflowPolicy) -> Self {
        self.config.overflow = p;
        self
    }
    /// The channel's spec, if real-time.
    pub fn spec(&self) -> Option<ChannelSpec> {
        self.config.spec().copied()
    }
}

/// A whole run: the test bed's parameters and its channels.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The sending (and receiving) core's configuration: policy and link scheduler.
    pub core: CoreConfig,
    /// Link rate of the in-memory wire, b/s (also the link scheduler's rate).
    pub link_bps: u64,
    /// Virtual CPU cost of one packet, ns.
    pub per_packet: Nanos,
    /// Clock step between idle polls, ns.
    pub step: Nanos,
    /// Virtual duration of the run, ns.
    pub duration: Nanos,
    /// The channels.
    pub channels: Vec<ChanDef>,
}

/// Default link scheduler slots: a NIC-ring-sized queue (the FIFO baseline's worst case).
pub const LINK_CAPACITY: u32 = 1024;

impl Scenario {
    /// A scenario on a link of `link_bps` with the given core configuration (whose link rate is
    /// set to match), virtual packet cost and duration, and no channels yet.
    pub fn new(mut core: CoreConfig, link_bps: u64, per_packet: Nanos, duration: Nanos) -> Self {
        core.link.link_rate_bps = link_bps;
        Self {
            core,
            link_bps,
            per_packet,
            step: 1_000,
            duration,
            channels: Vec::new(),
        }
    }
}

/// The core configuration the experiments share: granularity `k`, early work run or held, a
/// best-effort reserve (CPU and link alike), a link scheduler of [`LINK_CAPACITY`] slots that
/// keeps at most two full frames in the NIC's FIFO.
pub fn core_config(k: u32, work_conserving: bool, reserve_ppm: u32) -> CoreConfig {
    let mut c = CoreConfig::default();
    c.sched.granularity = k;
    c.sched.work_conserving = work_conserving;
    c.sched.best_effort_reserve_ppm = reserve_ppm;
    c.link.work_conserving = work_conserving;
    c.link.best_effort_reserve_ppm = reserve_ppm;
    c.link.in_flight_limit = 2 * 1538;
    c.link.capacity = LINK_CAPACITY;
    c
}

/// The slack a receiver-side bound adds to the host bound d: the bytes the link scheduler lets
/// sit in the NIC's FIFO ahead of a released packet, at the link rate, plus two clock steps
/// (the receiving core's poll and the tick in which the last bit arrives).
pub fn network_allowance(cfg: &CoreConfig, link_bps: u64, step: Nanos) -> Nanos {
    dataplane::time::wire_time(cfg.link.in_flight_limit, link_bps) + 2 * step
}

/// What one channel saw.
#[derive(Clone, Debug, Default)]
pub struct ChanOut {
    /// Label.
    pub name: String,
    /// Channel id.
    pub id: u32,
    /// Spec (real-time channels).
    pub spec: Option<ChannelSpec>,
    /// Messages the application tried to submit.
    pub offered: u64,
    /// Messages queued.
    pub accepted: u64,
    /// Submits refused (block policy).
    pub blocked: u64,
    /// New messages dropped (drop-newest).
    pub dropped_newest: u64,
    /// Queued messages dropped for new ones (drop-oldest).
    pub dropped_oldest: u64,
    /// Messages delivered at the receiver.
    pub delivered: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Largest end-to-end latency, ns (exact).
    pub max_latency: Nanos,
    /// 99th percentile end-to-end latency, ns.
    pub p99_latency: Nanos,
    /// Mean end-to-end latency, ns.
    pub mean_latency: f64,
    /// Deliveries after the header's deadline (ℓ + D).
    pub misses: u64,
    /// Messages the receiver never saw (sequence gaps).
    pub lost: u64,
    /// Packets released after their link deadline (ℓ + d).
    pub late_packets: u64,
    /// Largest host delay (submit to release of the last packet), ns, 2 significant digits.
    pub max_host_delay: Nanos,
}

impl ChanOut {
    /// Delivered messages per second of the run.
    pub fn rate(&self, duration: Nanos) -> f64 {
        self.delivered as f64 * 1e9 / duration as f64
    }
    /// Delivered payload, Mb/s.
    pub fn goodput_mbps(&self, duration: Nanos) -> f64 {
        self.bytes as f64 * 8.0 * 1e3 / duration as f64
    }
    /// Delivered rate as a fraction of the spec's 1/Imin.
    pub fn rate_vs_spec(&self, duration: Nanos) -> Option<f64> {
        self.spec
            .map(|s| self.delivered as f64 / (duration as f64 / s.imin as f64))
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOut {
    /// Per channel, in the scenario's order.
    pub chans: Vec<ChanOut>,
    /// The sending core's counters.
    pub core: CoreStats,
    /// The sending core's link scheduler counters.
    pub link: LinkStats,
    /// Virtual duration, ns.
    pub duration: Nanos,
    /// Wire bytes released by the sending core per second of link time, as a share of the link.
    pub link_utilisation: f64,
    /// Per channel: the sender's host delay histogram (submit to release of the last packet).
    pub host_delay: Vec<Histogram<u64>>,
    /// Per channel: the receiver's end-to-end latency histogram (submit to delivery).
    pub latency: Vec<Histogram<u64>>,
}

impl RunOut {
    /// The channel named `name`.
    pub fn chan(&self, name: &str) -> &ChanOut {
        self.chans
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no channel {name}"))
    }
}

struct Feed {
    sender: Sender,
    source: Option<Source>,
    flood: bool,
    len: usize,
    offered: u64,
}

struct Sink {
    receiver: Receiver,
    delivered: u64,
    bytes: u64,
    max_latency: Nanos,
    misses: u64,
    sum_latency: u128,
    hist: Histogram<u64>,
}

/// The sending core's cycle meter: the virtual CPU plus everything that happens while it works.
struct World {
    clock: ManualClock,
    per_packet: Nanos,
    feeds: Vec<Feed>,
    payload: Vec<u8>,
    rx_core: Core<MemPort>,
    rx_cpu: VirtualCpu,
    sinks: Vec<Sink>,
}

impl World {
    /// Submits what fell due, lets the receiver poll, drains the receivers.
    fn service(&mut self) {
        let now = self.clock.now();
        for f in &mut self.feeds {
            if f.flood {
                loop {
                    f.offered += 1;
                    if f.sender.submit_at(&self.payload[..f.len], now) != Ok(Submit::Queued) {
                        break;
                    }
                }
                continue;
            }
            let Some(src) = f.source.as_mut() else {
                continue;
            };
            while src.next_at() <= now {
                let t = src.next_at();
                for _ in 0..src.due(t) {
                    f.offered += 1;
                    // Outcomes are counted by the channel's own statistics.
                    let r: Result<Submit, SubmitError> =
                        f.sender.submit_at(&self.payload[..f.len], t);
                    debug_assert!(!matches!(r, Err(SubmitError::TooLong { .. })));
                }
            }
        }
        self.rx_core.poll(&self.clock, &mut self.rx_cpu);
        for s in &mut self.sinks {
            while let Some((lat, late, len)) = s.receiver.recv_with(|_, d| {
                (
                    d.delivered_ts.saturating_sub(d.submit_ts),
                    d.deadline != 0 && d.delivered_ts > d.deadline,
                    d.len,
                )
            }) {
                s.delivered += 1;
                s.bytes += len as u64;
                s.max_latency = s.max_latency.max(lat);
                s.sum_latency += lat as u128;
                s.misses += late as u64;
                let _ = s.hist.record(lat.max(1));
            }
        }
    }
}

impl CycleMeter for World {
    fn cycles(&mut self) -> u64 {
        self.clock.now()
    }
    fn cycles_to_ns(&self, cycles: u64) -> Nanos {
        cycles
    }
    fn on_packet(&mut self) {
        self.clock.advance(self.per_packet);
        self.service();
    }
}

/// Runs `sc` and returns what every channel saw.
pub fn run(sc: &Scenario) -> RunOut {
    let clock = ManualClock::new(0);
    let (a, b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: sc.link_bps,
            fifo_packets: 256,
            pool_buffers: 2 * LINK_CAPACITY as usize + 2048,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let mut tx = Core::new(sc.core, a).expect("valid sending core");
    let mut rx_cfg = sc.core;
    rx_cfg.sched.fifo = false;
    rx_cfg.link.fifo = false;
    let mut rx_core = Core::new(rx_cfg, b).expect("valid receiving core");
    let mut feeds = Vec::new();
    let mut sinks = Vec::new();
    let mut max_len = 1;
    for (i, ch) in sc.channels.iter().enumerate() {
        let sender = tx.open(ch.config).expect("channel opens");
        let ring = if ch.spec().is_some() { 256 } else { 1024 };
        let receiver = rx_core.open_receiver(ch.config.id, ch.config.mmax(), ring);
        max_len = max_len.max(ch.msg_len as usize);
        let (source, flood) = match ch.load {
            Load::Pattern(p) => (Some(Source::new(p, 0, 0x5eed + i as u64)), false),
            Load::Flood => (None, true),
            Load::Idle => (None, false),
        };
        feeds.push(Feed {
            sender,
            source,
            flood,
            len: ch.msg_len as usize,
            offered: 0,
        });
        sinks.push(Sink {
            receiver,
            delivered: 0,
            bytes: 0,
            max_latency: 0,
            misses: 0,
            sum_latency: 0,
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
        });
    }
    let mut world = World {
        clock: clock.clone(),
        per_packet: sc.per_packet,
        feeds,
        payload: vec![0x5a; max_len],
        rx_core,
        rx_cpu: VirtualCpu {
            clock: clock.clone(),
            per_packet: 0,
        },
        sinks,
    };
    while clock.now() < sc.duration {
        let t0 = clock.now();
        world.service();
        tx.poll(&clock, &mut world);
        if clock.now() == t0 {
            clock.advance(sc.step);
        }
    }
    // Statistics published by the cores on their own schedule: publish the rest now.
    tx.flush_stats();
    world.rx_core.flush_stats();
    let link = tx.link_stats();
    let chans = sc
        .channels
        .iter()
        .zip(world.feeds.iter().zip(&world.sinks))
        .map(|(def, (f, s))| {
            let st = f.sender.stats().snapshot();
            let rx = s.receiver.stats();
            ChanOut {
                name: def.name.clone(),
                id: def.config.id,
                spec: def.spec(),
                offered: f.offered,
                accepted: st.submitted,
                blocked: st.would_block,
                dropped_newest: st.dropped_newest,
                dropped_oldest: st.dropped_oldest,
                delivered: s.delivered,
                bytes: s.bytes,
                max_latency: s.max_latency,
                p99_latency: if s.delivered > 0 {
                    s.hist.value_at_quantile(0.99)
                } else {
                    0
                },
                mean_latency: if s.delivered > 0 {
                    s.sum_latency as f64 / s.delivered as f64
                } else {
                    0.0
                },
                misses: s.misses,
                lost: rx.lost.get(),
                late_packets: st.late_packets,
                max_host_delay: f.sender.stats().delay_snapshot().max(),
            }
        })
        .collect();
    let link_ns = dataplane::time::wire_time(link.wire_bytes, sc.link_bps);
    RunOut {
        chans,
        core: tx.stats(),
        link,
        duration: sc.duration,
        link_utilisation: link_ns as f64 / sc.duration as f64,
        host_delay: world
            .feeds
            .iter()
            .map(|f| f.sender.stats().delay_snapshot())
            .collect(),
        latency: world.sinks.iter().map(|s| s.hist.clone()).collect(),
    }
}

/// Wire time of one message of `len` bytes on a link of `link_bps`, ns (1432-byte payloads).
pub fn message_wire_ns(len: u32, link_bps: u64) -> Nanos {
    let ppp = 1514 - dataplane::wire::FRAME_OVERHEAD as u32;
    let mut left = len;
    let mut bytes = 0;
    loop {
        let p = left.min(ppp);
        bytes += wire_bytes(dataplane::wire::FRAME_OVERHEAD + p as usize);
        left -= p;
        if left == 0 {
            break;
        }
    }
    dataplane::time::wire_time(bytes, link_bps)
}
