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
    /// Messages delivered twice.
    pub duplicates: u64,
    /// Messages delivered out of sequence order.
    pub reordered: u64,
    /// Messages dropped at the receiver with fragments missing.
    pub incomplete: u64,
    /// Messages whose bytes or length differ from what the application wrote
    /// ([`payload_matches`]; not checked on drop-oldest channels, whose evictions shift the
    /// sequence numbers the pattern is keyed on).
    pub mismatched: u64,
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
    id: u32,
    /// Messages accepted so far: the next one's sequence number.
    seq: u32,
}

/// Submits the `*seq`-th message of channel `id`, its payload written into `buf` (all of it),
/// stamped `at` (or at the call), and counts it when accepted.
pub(crate) fn submit_filled(
    sender: &mut Sender,
    (id, seq): (u32, &mut u32),
    buf: &mut [u8],
    at: Option<Nanos>,
) -> Result<Submit, SubmitError> {
    fill_payload(id, *seq, buf);
    let r = match at {
        Some(at) => sender.submit_at(buf, at),
        None => sender.submit(buf),
    };
    if matches!(r, Ok(Submit::Queued) | Ok(Submit::QueuedDroppedOldest)) {
        *seq = seq.wrapping_add(1);
    }
    r
}

struct Sink {
    receiver: Receiver,
    id: u32,
    check: bool,
    mismatched: u64,
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
                    let buf = &mut self.payload[..f.len];
                    if submit_filled(&mut f.sender, (f.id, &mut f.seq), buf, Some(now))
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
            while src.next_at() <= now {
                let t = src.next_at();
                for _ in 0..src.due(t) {
                    f.offered += 1;
                    // Outcomes are counted by the channel's own statistics.
                    let buf = &mut self.payload[..f.len];
                    let r = submit_filled(&mut f.sender, (f.id, &mut f.seq), buf, Some(t));
                    debug_assert!(!matches!(r, Err(SubmitError::TooLong { .. })));
                }
            }
        }
        self.rx_core.poll(&self.clock, &mut self.rx_cpu);
        for s in &mut self.sinks {
            let (id, check) = (s.id, s.check);
            while let Some((lat, late, len, bad)) = s.receiver.recv_with(|m, d| {
                (
                    d.delivered_ts.saturating_sub(d.submit_ts),
                    d.deadline != 0 && d.delivered_ts > d.deadline,
                    d.len,
                    check && (d.len as usize != m.len() || !payload_matches(id, d.seq, m)),
                )
            }) {
                s.mismatched += bad as u64;
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
            id: ch.config.id,
            seq: 0,
        });
        sinks.push(Sink {
            receiver,
            id: ch.config.id,
            check: payload_checked(ch),
            mismatched: 0,
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
                duplicates: rx.duplicates.get(),
                reordered: rx.reordered.get(),
                incomplete: rx.incomplete.get(),
                mismatched: s.mismatched,
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

/// A 256-byte permutation (`i * 167 mod 256`), twice, so any 256-byte window of it is a slice.
const PATTERN: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = ((i % 256) * 167 % 256) as u8;
        i += 1;
    }
    t
};

/// Where message `seq` of channel `id` starts in [`PATTERN`].
fn pattern_offset(id: u32, seq: u32) -> usize {
    ((id.wrapping_mul(97) ^ seq.wrapping_mul(31)) & 255) as usize
}

/// A payload's first bytes: `id` and `seq`, little-endian.
fn payload_head(id: u32, seq: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&id.to_le_bytes());
    h[4..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// The payload of the `seq`-th message a channel `id` accepted: its first bytes are `id` and
/// `seq` (little-endian, as many as fit), the rest a window of a 256-byte permutation that starts where
/// both put it, so every byte depends on the message and its position and a receiver can check
/// each message byte for byte. Written and compared by slices (memcpy and memcmp speed, which
/// matters in debug builds of the tests).
pub fn fill_payload(id: u32, seq: u32, out: &mut [u8]) {
    let head = payload_head(id, seq);
    let h = out.len().min(head.len());
    out[..h].copy_from_slice(&head[..h]);
    let off = pattern_offset(id, seq);
    for chunk in out[h..].chunks_mut(256) {
        chunk.copy_from_slice(&PATTERN[off..off + chunk.len()]);
    }
}

/// Whether `data` is what [`fill_payload`] wrote for message `seq` of channel `id`.
pub fn payload_matches(id: u32, seq: u32, data: &[u8]) -> bool {
    let head = payload_head(id, seq);
    let h = data.len().min(head.len());
    let off = pattern_offset(id, seq);
    data[..h] == head[..h]
        && data[h..]
            .chunks(256)
            .all(|chunk| chunk == &PATTERN[off..off + chunk.len()])
}

/// Whether a channel's payloads can be checked: its sequence numbers count the messages it
/// accepted, which a drop-oldest channel's evictions break.
pub fn payload_checked(def: &ChanDef) -> bool {
    def.config.overflow != OverflowPolicy::DropOldest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_matches_only_its_own_channel_and_sequence() {
        let mut m = vec![0u8; 300];
        fill_payload(7, 41, &mut m);
        assert!(payload_matches(7, 41, &m));
        assert!(!payload_matches(7, 42, &m), "another sequence number");
        assert!(!payload_matches(8, 41, &m), "another channel");
        for at in [0, 5, 100, 299] {
            let mut bad = m.clone();
            bad[at] ^= 1;
            assert!(!payload_matches(7, 41, &bad), "byte {at} flipped");
        }
    }

    /// The virtual-time bed checks every delivered message's bytes: a short run of a
    /// multi-packet real-time channel and a best-effort flood delivers byte-exact, in order.
    #[test]
    fn the_virtual_time_bed_delivers_byte_exact() {
        let spec = ChannelSpec {
            mmax: 4000,
            imin: 100_000,
            bmax: 4,
            cpu_deadline: 200_000,
            link_deadline: 400_000,
            end_to_end_deadline: 500_000,
        };
        let mut sc = Scenario::new(core_config(2, false, 0), GBPS, 100, 5_000_000);
        sc.channels.push(ChanDef::real_time(
            "rt",
            1,
            spec,
            Load::Pattern(Pattern::Periodic {
                interval: spec.imin,
            }),
        ));
        sc.channels
            .push(ChanDef::best_effort("be", 2, 1400, Load::Flood));
        let r = run(&sc);
        for c in &r.chans {
            assert!(c.delivered > 10, "{}: {} delivered", c.name, c.delivered);
            assert_eq!(
                (
                    c.mismatched,
                    c.duplicates,
                    c.reordered,
                    c.incomplete,
                    c.lost
                ),
                (0, 0, 0, 0, 0),
                "{c:?}"
            );
        }
    }
}
