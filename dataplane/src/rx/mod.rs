//! The receive path: parse, demultiplex to the channel, reassemble, deliver, measure.
//!
//! The polling core hands every received frame to [`RxPath::handle`]. A frame that fails
//! [`parse_frame`] or names no open channel is counted by reason and dropped. A single-fragment
//! message is delivered at once; a longer one is reassembled in one of the channel's
//! preallocated slots (bounded memory: a slot per message the channel may have in flight), and a
//! slot left incomplete past the timeout is freed and counted. Each delivered message records
//! its end-to-end latency (submit stamp to delivery; one CLOCK_MONOTONIC on one host, PTP-synced
//! clocks across hosts), a deadline miss when delivered after the header's deadline, and
//! losses, duplicates and reordering from the message sequence numbers.
//!
//! Nothing here allocates, locks or frees on the core: a receiver's state (its reassembly slots
//! and their bitmaps) is built on the control thread ([`RxPath::prepare`]) and moved in by a
//! command; a closed receiver's state goes back to the control thread to be dropped
//! ([`RxPath::close`] returns it); latency samples go to the core's sample ring
//! ([`crate::stats`]); timed-out slots are swept a bounded step at a time
//! ([`MAINTAIN_SLOTS_PER_STEP`]).
//!
//! Every receiver's messages are delivered through one ring type, [`crate::shm`]'s delivery
//! ring (the core produces): a one-fragment message is copied from the frame straight into a
//! ring buffer, a longer one from its reassembly buffer; the descriptor is published at once.
//! An in-process receiver ([`RxShared::new`], [`Receiver`]) consumes a ring in this process's
//! memory; a receiving application in another process ([`RxShared::with_app`]) consumes its
//! sealed memfd ring, and it is woken (a `FUTEX_WAKE` on the ring's wake word, which never
//! blocks) only when it said it sleeps, at most once per sleep.

use crate::shm::{Consumer, DeliverDesc, Params, Producer, Region, ShmError, DELIVER_LATE};
use crate::spec::ChannelId;
use crate::stats::{Counter, SampleProducer, SampleSink, SharedHistogram};
use crate::time::Nanos;
use crate::wire::{parse_frame, ParseError, RtHeader, SourceCheck};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long an incomplete message may wait for its fragments by default: 100 ms.
pub const DEFAULT_REASSEMBLY_TIMEOUT: Nanos = 100_000_000;
/// How often a sweep over every reassembly slot starts, ns.
pub const MAINTAIN_INTERVAL: Nanos = 1_000_000;
/// Reassembly slots one maintenance step examines (whole channels: it may run over by a
/// channel's slots, at most 63). A slot check is a couple of loads, a cache miss at worst
/// (≈ 100 ns), so a step stays within a few microseconds however many receivers the core has
/// (1,000 receivers swept at once took 0.25–0.29 ms); a sweep of 100,000 receivers × 16 slots
/// takes 6,250 steps, one per iteration, so a slot is freed within the timeout plus a few ms.
pub const MAINTAIN_SLOTS_PER_STEP: usize = 256;
/// Receivers a receive path serves unless told otherwise ([`RxPath::with_capacity`]).
pub const DEFAULT_MAX_RECEIVERS: usize = 1024;

/// How far ahead of the next expected sequence number a message may be: a longer gap is taken
/// as forged (or as a sender that restarted), rejected and counted, not added to `lost`.
/// 65,536 messages is over a minute of loss at 1 kHz.
pub const SEQ_WINDOW_AHEAD: u32 = 1 << 16;
/// How far behind a message may be: the 64 sequence numbers the duplicate bitmap covers.
pub const SEQ_WINDOW_BEHIND: u32 = 64;
/// Consecutive in-order messages outside the window after which the receiver follows them
/// (a sender restarted, or an outage longer than the window), counted as a resync, not as
/// loss; the messages before are rejected. A forger who can send that many in-order frames
/// with the channel's addresses could also just send in the window.
pub const SEQ_RESYNC_RUN: u8 = 4;
/// How far in the future a submit timestamp may be: clocks synchronised by PTP agree within
/// microseconds; 10 ms also covers NTP.
pub const TS_FUTURE_SKEW: Nanos = 10_000_000;
/// How old a message may be at delivery for its latency to be recorded: the histograms' range.
pub const TS_MAX_AGE: Nanos = crate::stats::HIST_MAX_NS;

/// A delivered message's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Message sequence number.
    pub seq: u32,
    /// Submit time at the sender.
    pub submit_ts: Nanos,
    /// Delivery time here.
    pub delivered_ts: Nanos,
    /// Absolute end-to-end deadline from the header (0 for best-effort).
    pub deadline: Nanos,
    /// Message length.
    pub len: u32,
}

/// Receive-side statistics of a channel.
#[derive(Debug)]
pub struct RxStats {
    /// Messages delivered to the application ring.
    pub delivered: Counter,
    /// Payload bytes delivered.
    pub bytes: Counter,
    /// Messages delivered after their deadline.
    pub deadline_misses: Counter,
    /// Messages never seen (sequence gaps; a late arrival takes its count back).
    pub lost: Counter,
    /// Messages or fragments received twice.
    pub duplicates: Counter,
    /// Messages that arrived after a later one.
    pub reordered: Counter,
    /// Incomplete messages freed by timeout or for lack of a slot.
    pub incomplete: Counter,
    /// Messages dropped because the application's ring was full.
    pub ring_full: Counter,
    /// Latency samples lost because the core's sample ring was full.
    pub latency_samples_dropped: Counter,
    /// Frames naming this channel that were rejected, by [`ParseError::index`] (source,
    /// destination, fragment layout, sequence window).
    pub rejected: [Counter; ParseError::COUNT],
    /// Messages delivered whose submit timestamp was implausible (in the future beyond
    /// [`TS_FUTURE_SKEW`] or older than [`TS_MAX_AGE`]): kept out of the latency histogram
    /// and the deadline-miss count.
    pub implausible_timestamps: Counter,
    /// Times the receiver followed a sender's sequence numbers out of the window
    /// ([`SEQ_RESYNC_RUN`]).
    pub resyncs: Counter,
    latency: SharedHistogram,
}

impl RxStats {
    /// Zeroed counters and a latency histogram registered in `sink` (control path).
    pub fn new(sink: &Arc<SampleSink>) -> Self {
        Self {
            delivered: Counter::default(),
            bytes: Counter::default(),
            deadline_misses: Counter::default(),
            lost: Counter::default(),
            duplicates: Counter::default(),
            reordered: Counter::default(),
            incomplete: Counter::default(),
            ring_full: Counter::default(),
            latency_samples_dropped: Counter::default(),
            rejected: std::array::from_fn(|_| Counter::default()),
            implausible_timestamps: Counter::default(),
            resyncs: Counter::default(),
            latency: sink.register(),
        }
    }

    /// A copy of the end-to-end latency histogram with every sample the core pushed before
    /// the call (control path: folds the core's sample rings, allocates).
    pub fn latency_snapshot(&self) -> Histogram<u64> {
        self.latency.snapshot()
    }

    /// The latency histogram itself (tests hold its lock to play a stalled reader).
    pub fn latency_histogram(&self) -> &SharedHistogram {
        &self.latency
    }
}

/// A channel's receive side, shared by the core (writer) and the application (reader).
#[derive(Debug)]
pub struct RxShared {
    /// The channel.
    pub id: ChannelId,
    /// Largest message.
    pub mmax: u32,
    /// Messages that may be incomplete at once (the receive path's reassembly slots).
    pub reassembly: u32,
    /// The addresses its frames must carry; `None` accepts any (tests, benches).
    pub source: Option<SourceCheck>,
    /// Reassembly buffers (the core's; a slot holds one while its message is incomplete).
    free: ArrayQueue<Box<[u8]>>,
    /// The delivery ring the core produces into.
    ring: DeliveryRing,
    /// Counters and latency.
    pub stats: RxStats,
}

/// A receive side's state apart from its buffers and rings (counters, the latency histogram,
/// the `Arc`, the receive path's slot headers), rounded up; `tests/reservation_bytes.rs`
/// measures it.
pub const RX_FIXED_BYTES: u64 = 64 * 1024;

/// The heap bytes a channel's receive side allocates ([`RxShared::new`] with `ring` and
/// `reassembly`, and its slots in [`RxPath::prepare`]) for messages of up to `mmax` bytes,
/// saturating (`u64::MAX` for a ring too large to build); computed without allocating.
pub fn reservation_bytes(mmax: u32, ring: u32, reassembly: u32) -> u64 {
    use crate::channel::{queue_slot_bytes, ALLOC_OVERHEAD};
    let Ok(region) = Region::bytes_for::<DeliverDesc>(&ring_params(0, mmax, ring)) else {
        return u64::MAX;
    };
    // The in-process consumer's bitmap of held buffers (ring + 1 of them).
    let held = (u64::from(ring.max(1)) + 1).div_ceil(64) * 8 + ALLOC_OVERHEAD;
    let buffers = u64::from(reassembly) + 1;
    let bufs = buffers.saturating_mul(u64::from(mmax) + ALLOC_OVERHEAD);
    let free = buffers.saturating_mul(queue_slot_bytes::<Box<[u8]>>()) + ALLOC_OVERHEAD;
    let words = (mmax as u64).min(1 << 16).div_ceil(64).max(1);
    let slots = u64::from(reassembly.max(1))
        .saturating_mul(words * 8 + ALLOC_OVERHEAD + std::mem::size_of::<Slot>() as u64);
    region
        .saturating_add(ALLOC_OVERHEAD)
        .saturating_add(held)
        .saturating_add(bufs)
        .saturating_add(free)
        .saturating_add(slots)
        .saturating_add(RX_FIXED_BYTES)
}

/// The delivery ring of `ring` messages of up to `mmax` bytes for channel `id`.
fn ring_params(id: ChannelId, mmax: u32, ring: u32) -> Params {
    Params {
        mmax: mmax.max(1),
        capacity: ring.max(1),
        drop_oldest: false,
        channel: id,
    }
}

/// Where a receiver's messages go: its delivery ring, consumed in this process (the
/// in-process [`Receiver`]) or by a client process woken through the ring's wake word.
#[derive(Debug)]
struct DeliveryRing {
    region: Arc<Region>,
    /// Consumed by a client process, woken through the ring's wake word when it sleeps.
    client: bool,
    /// The consuming end, for an in-process receiver. Behind a mutex because [`Receiver`] is
    /// `Clone`: the ring has one consumer at a time (an uncontended `try_lock` per take).
    local: Option<Mutex<Consumer<DeliverDesc>>>,
}

impl RxShared {
    /// Receive state for channel `id`: `ring` delivered messages may wait for the application;
    /// `reassembly` messages may be incomplete at once; the latency histogram is registered in
    /// the receiving core's `sink` (control path: allocates).
    pub fn new(
        id: ChannelId,
        mmax: u32,
        ring: u32,
        reassembly: u32,
        sink: &Arc<SampleSink>,
    ) -> Arc<Self> {
        Self::with_source(id, mmax, ring, reassembly, sink, None)
    }

    /// [`RxShared::new`] for frames that must carry `source`'s addresses.
    ///
    /// # Panics
    /// If the delivery ring cannot be laid out (`ring` near 2^20 messages, or `ring × mmax`
    /// beyond 2^46 bytes): far above what the daemon's memory budget admits.
    pub fn with_source(
        id: ChannelId,
        mmax: u32,
        ring: u32,
        reassembly: u32,
        sink: &Arc<SampleSink>,
        source: Option<SourceCheck>,
    ) -> Arc<Self> {
        let region = Region::heap::<DeliverDesc>(&ring_params(id, mmax, ring))
            .unwrap_or_else(|e| panic!("receiver {id}'s delivery ring: {e}"));
        let local = Consumer::new(region.clone()).expect("a new ring's consuming end");
        Self::assemble(
            id,
            mmax,
            reassembly,
            source,
            DeliveryRing {
                region,
                client: false,
                local: Some(Mutex::new(local)),
            },
            sink,
        )
    }

    fn assemble(
        id: ChannelId,
        mmax: u32,
        reassembly: u32,
        source: Option<SourceCheck>,
        ring: DeliveryRing,
        sink: &Arc<SampleSink>,
    ) -> Arc<Self> {
        let buffers = reassembly as usize + 1;
        let free = ArrayQueue::new(buffers);
        for _ in 0..buffers {
            let _ = free.push(crate::mem::prefaulted_bytes(mmax as usize));
        }
        Arc::new(Self {
            id,
            mmax,
            reassembly,
            source,
            free,
            ring,
            stats: RxStats::new(sink),
        })
    }

    /// Receive state whose messages go to a client process's delivery ring `region` (woken
    /// through the ring's wake word when it sleeps); `reassembly` messages may be incomplete
    /// at once.
    pub fn with_app(
        id: ChannelId,
        mmax: u32,
        reassembly: u32,
        region: Arc<Region>,
        sink: &Arc<SampleSink>,
        source: Option<SourceCheck>,
    ) -> Arc<Self> {
        Self::assemble(
            id,
            mmax,
            reassembly,
            source,
            DeliveryRing {
                region,
                client: true,
                local: None,
            },
            sink,
        )
    }

    /// The client's delivery ring, if the application is another process.
    pub fn app_region(&self) -> Option<&Arc<Region>> {
        self.ring.client.then_some(&self.ring.region)
    }
}

/// The application's handle for receiving a channel's messages.
#[derive(Debug, Clone)]
pub struct Receiver {
    shared: Arc<RxShared>,
}

impl Receiver {
    /// Wraps the shared state.
    pub fn new(shared: Arc<RxShared>) -> Self {
        Self { shared }
    }
    /// Calls `f` with the next delivered message, if any, then gives its ring buffer back.
    /// `None` also while a clone of this receiver is taking a message (one consumer at a
    /// time), and for a receiver whose application is another process.
    pub fn recv_with<R>(&self, f: impl FnOnce(&[u8], &Delivery) -> R) -> Option<R> {
        // A callback that panicked poisoned the lock; the ring is intact (the guard below gave
        // the buffer back while unwinding), so go on.
        let c = match self.shared.ring.local.as_ref()?.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let t = c.take(|_| {})?;
        let d = Delivery {
            seq: t.desc.seq,
            submit_ts: t.desc.submit_ts,
            delivered_ts: t.desc.delivered_ts,
            deadline: t.desc.deadline,
            len: t.desc.len,
        };
        // The buffer goes back even if `f` panics (the guard releases it while unwinding).
        struct Release<'a>(
            &'a Consumer<DeliverDesc>,
            Option<crate::shm::Taken<DeliverDesc>>,
        );
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                if let Some(t) = self.1.take() {
                    self.0.release(t);
                }
            }
        }
        let guard = Release(&c, Some(t));
        let r = f(c.bytes(guard.1.as_ref().expect("taken")), &d);
        drop(guard);
        Some(r)
    }
    /// Statistics.
    pub fn stats(&self) -> &RxStats {
        &self.shared.stats
    }
    /// The shared state.
    pub fn shared(&self) -> &Arc<RxShared> {
        &self.shared
    }
}

struct Slot {
    active: bool,
    header: RtHeader,
    buf: Option<Box<[u8]>>,
    got: Vec<u64>,
    received: u16,
    first_seen: Nanos,
    /// Payload bytes of every fragment but the last (from the first fragment seen).
    frag_size: u32,
}

struct RxChannel {
    shared: Arc<RxShared>,
    slots: Vec<Slot>,
    /// One past the highest sequence delivered.
    next_expected: u32,
    started: bool,
    /// Bit i: sequence `next_expected - 1 - i` was delivered.
    recent: u64,
    /// Out-of-window messages in a row, each the one after the last ([`SEQ_RESYNC_RUN`]).
    oow_run: u8,
    /// The sequence number that would continue that run.
    oow_next: u32,
    /// `shared.stats`' latency histogram key in the core's sample sink.
    latency_key: u32,
    /// The producing end of the delivery ring.
    ring: Producer<DeliverDesc>,
}

/// The receive path's reject counters, readable by the control thread while the core runs.
#[derive(Debug)]
pub struct RxRejects {
    /// Frames rejected, by [`ParseError::index`], whether or not they named a channel.
    pub rejected: [Counter; ParseError::COUNT],
}

impl Default for RxRejects {
    fn default() -> Self {
        Self {
            rejected: std::array::from_fn(|_| Counter::default()),
        }
    }
}

/// A receiver's core-side state, built on the control thread ([`RxPath::prepare`]) and moved
/// to the core by `Command::OpenReceiver`; the core hands it back when the receiver closes so
/// that it is dropped (1,000-odd frees) on the control thread, not on the core.
pub struct ReceiverState(Box<RxChannel>);

impl std::fmt::Debug for ReceiverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverState")
            .field("id", &self.0.shared.id)
            .field("slots", &self.0.slots.len())
            .finish()
    }
}

impl ReceiverState {
    /// The channel.
    pub fn id(&self) -> ChannelId {
        self.0.shared.id
    }
}

/// Why a receive path refused a receiver (the state comes back to be dropped by the caller).
#[derive(Debug)]
pub enum RxOpenError {
    /// The channel already has a receiver here.
    Duplicate(ReceiverState),
    /// Every receiver slot is in use.
    Full(ReceiverState, usize),
}

/// Counters of the receive path as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxPathStats {
    /// Frames handled.
    pub frames: u64,
    /// Frames rejected, by [`ParseError::index`].
    pub rejected: [u64; ParseError::COUNT],
}

/// The receive path of one core.
pub struct RxPath {
    udp_port: u16,
    channels: Vec<Option<ReceiverState>>,
    by_id: HashMap<ChannelId, u32>,
    timeout: Nanos,
    samples: SampleProducer,
    /// Next channel the maintenance sweep examines; `None` between sweeps.
    sweep: Option<usize>,
    last_sweep: Nanos,
    stats: RxPathStats,
    rejects: Arc<RxRejects>,
}

impl std::fmt::Debug for RxPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxPath")
            .field("channels", &self.by_id.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl RxPath {
    /// A receive path for frames to `udp_port` serving up to [`DEFAULT_MAX_RECEIVERS`]
    /// receivers, pushing latency samples through `samples`.
    pub fn new(udp_port: u16, timeout: Nanos, samples: SampleProducer) -> Self {
        Self::with_capacity(udp_port, timeout, DEFAULT_MAX_RECEIVERS, samples)
    }

    /// [`RxPath::new`] for up to `max_receivers` receivers: every table is sized now, so no
    /// open on the core allocates.
    pub fn with_capacity(
        udp_port: u16,
        timeout: Nanos,
        max_receivers: usize,
        samples: SampleProducer,
    ) -> Self {
        Self {
            udp_port,
            channels: (0..max_receivers).map(|_| None).collect(),
            // Twice the entries it will hold: inserts after removals rehash in place, never
            // into a new allocation.
            by_id: HashMap::with_capacity(2 * max_receivers + 2),
            timeout,
            samples,
            sweep: None,
            last_sweep: 0,
            stats: RxPathStats::default(),
            rejects: Arc::new(RxRejects::default()),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RxPathStats {
        self.stats
    }

    /// The reject counters the control thread reads.
    pub fn rejects(&self) -> &Arc<RxRejects> {
        &self.rejects
    }

    #[inline]
    fn reject(&mut self, e: ParseError) {
        self.stats.rejected[e.index()] += 1;
        self.rejects.rejected[e.index()].inc();
    }

    /// The sample sink latency samples go to.
    pub fn sink(&self) -> &Arc<SampleSink> {
        self.samples.sink()
    }

    /// Builds a receiver's core-side state with `reassembly` slots and the producing end of
    /// its delivery ring (control path: allocates).
    ///
    /// # Panics
    /// If `shared` was prepared before (its ring's producing end is taken): use
    /// [`RxPath::prepare_app`], which says why, where that can happen.
    pub fn prepare(shared: Arc<RxShared>, reassembly: u32) -> ReceiverState {
        Self::prepare_app(shared, reassembly)
            .unwrap_or_else(|e| panic!("a receive side is prepared once: {e}"))
    }

    /// [`RxPath::prepare`], or why the delivery ring's producing end cannot be taken (taken
    /// already, a region of another kind): a client's ring is refused, not opened with
    /// nowhere to deliver.
    pub fn prepare_app(shared: Arc<RxShared>, reassembly: u32) -> Result<ReceiverState, ShmError> {
        let ring = Producer::new(shared.ring.region.clone())?;
        Ok(Self::prepare_with(shared, reassembly, ring))
    }

    fn prepare_with(
        shared: Arc<RxShared>,
        reassembly: u32,
        ring: Producer<DeliverDesc>,
    ) -> ReceiverState {
        // Every fragment but a lone empty one carries at least a byte, and counts are 16-bit.
        let words = (shared.mmax as usize).min(1 << 16).div_ceil(64).max(1);
        let slots = (0..reassembly.max(1))
            .map(|_| Slot {
                active: false,
                header: RtHeader::default(),
                buf: None,
                got: vec![0; words],
                received: 0,
                first_seen: 0,
                frag_size: 0,
            })
            .collect();
        ReceiverState(Box::new(RxChannel {
            latency_key: shared.stats.latency.key(),
            ring,
            shared,
            slots,
            next_expected: 0,
            started: false,
            recent: 0,
            oow_run: 0,
            oow_next: 0,
        }))
    }

    /// Starts serving a prepared receiver. Moves it into a preallocated slot: no allocation.
    pub fn open(&mut self, state: ReceiverState) -> Result<(), RxOpenError> {
        let id = state.id();
        if self.by_id.contains_key(&id) {
            return Err(RxOpenError::Duplicate(state));
        }
        let Some(idx) = self.channels.iter().position(Option::is_none) else {
            return Err(RxOpenError::Full(state, self.channels.len()));
        };
        self.channels[idx] = Some(state);
        self.by_id.insert(id, idx as u32);
        Ok(())
    }

    /// Stops serving a channel; returns its state for the caller to drop off the core.
    pub fn close(&mut self, id: ChannelId) -> Option<ReceiverState> {
        let i = self.by_id.remove(&id)?;
        self.channels[i as usize].take()
    }

    /// Handles one received frame at `now`.
    #[inline]
    pub fn handle(&mut self, frame: &[u8], now: Nanos) {
        self.stats.frames += 1;
        let parsed = match parse_frame(frame, self.udp_port) {
            Ok(p) => p,
            Err(e) => return self.reject(e),
        };
        let h = parsed.header;
        let Some(&idx) = self.by_id.get(&h.channel) else {
            return self.reject(ParseError::UnknownChannel);
        };
        let ch = &mut self.channels[idx as usize]
            .as_mut()
            .expect("indexed channel")
            .0;
        let verdict = match ch.shared.source.as_ref().map(|s| s.check(&parsed.addr)) {
            Some(Err(e)) => Err(e),
            _ if h.msg_len > ch.shared.mmax => Err(ParseError::LengthMismatch),
            _ => ch.fragment(&h, parsed.payload, now, &mut self.samples),
        };
        if let Err(e) = verdict {
            ch.shared.stats.rejected[e.index()].inc();
            self.reject(e);
        }
    }

    /// True when a maintenance step has work at `now`: a sweep is under way, or
    /// [`MAINTAIN_INTERVAL`] has passed since the last one started.
    #[inline]
    pub fn maintenance_due(&self, now: Nanos) -> bool {
        self.sweep.is_some() || now.saturating_sub(self.last_sweep) >= MAINTAIN_INTERVAL
    }

    /// One bounded step of the sweep that frees timed-out reassembly slots: at most
    /// [`MAINTAIN_SLOTS_PER_STEP`] slots (rounded up to whole channels). Returns true when the
    /// sweep is complete.
    pub fn maintain_step(&mut self, now: Nanos) -> bool {
        let mut i = match self.sweep {
            Some(i) => i,
            None => {
                self.last_sweep = now;
                0
            }
        };
        let mut examined = 0;
        while i < self.channels.len() && examined < MAINTAIN_SLOTS_PER_STEP {
            if let Some(ReceiverState(ch)) = self.channels[i].as_mut() {
                examined += ch.slots.len();
                for s in ch.slots.iter_mut() {
                    if s.active && now.saturating_sub(s.first_seen) > self.timeout {
                        ch.shared.stats.incomplete.inc();
                        s.active = false;
                        if let Some(b) = s.buf.take() {
                            let _ = ch.shared.free.push(b);
                        }
                    }
                }
            } else {
                examined += 1; // an empty slot of the table costs a load too
            }
            i += 1;
        }
        let done = i >= self.channels.len();
        self.sweep = (!done).then_some(i);
        done
    }

    /// A whole sweep at once (control path and tests; the core takes it step by step).
    pub fn maintain(&mut self, now: Nanos) {
        self.sweep = None;
        while !self.maintain_step(now) {}
    }
}

impl RxChannel {
    /// The payload size of every fragment but the last that `h`'s offset and length imply,
    /// or why `h` cannot be a fragment of a message cut into equal pieces (the sender's
    /// layout: fragment `i` at `i * size`, the last ending the message).
    #[inline]
    fn frag_size(h: &RtHeader) -> Result<u32, ParseError> {
        let (i, n) = (u32::from(h.frag_index), u32::from(h.frag_count));
        let (off, len) = (h.frag_offset, u32::from(h.frag_len));
        if i + 1 < n {
            // Not the last: offset is index times its own length.
            if len == 0 || u64::from(off) != u64::from(i) * u64::from(len) {
                return Err(ParseError::BadFragment);
            }
            Ok(len)
        } else {
            // The last: ends the message, starts at (n - 1) pieces, is at most one piece.
            if u64::from(off) + u64::from(len) != u64::from(h.msg_len) {
                return Err(ParseError::BadFragment);
            }
            if n == 1 {
                return if off == 0 {
                    Ok(len)
                } else {
                    Err(ParseError::BadFragment)
                };
            }
            if off % (n - 1) != 0 || len == 0 || len > off / (n - 1) {
                return Err(ParseError::BadFragment);
            }
            Ok(off / (n - 1))
        }
    }

    /// Whether a new message `seq` is inside the window (or completes a resync run).
    #[inline]
    fn in_window(&mut self, seq: u32) -> Result<(), ParseError> {
        if !self.started {
            return Ok(());
        }
        let ahead = seq.wrapping_sub(self.next_expected);
        let behind = self.next_expected.wrapping_sub(seq);
        if ahead <= SEQ_WINDOW_AHEAD || behind <= SEQ_WINDOW_BEHIND {
            self.oow_run = 0;
            return Ok(());
        }
        if self.oow_run > 0 && seq == self.oow_next.wrapping_sub(1) {
            // Another fragment of the message just rejected.
            return Err(ParseError::SeqOutOfWindow);
        }
        self.oow_run = if self.oow_run > 0 && seq == self.oow_next {
            self.oow_run + 1
        } else {
            1
        };
        self.oow_next = seq.wrapping_add(1);
        if self.oow_run >= SEQ_RESYNC_RUN {
            self.oow_run = 0;
            self.started = false;
            self.recent = 0;
            self.shared.stats.resyncs.inc();
            return Ok(());
        }
        Err(ParseError::SeqOutOfWindow)
    }

    #[inline]
    fn fragment(
        &mut self,
        h: &RtHeader,
        payload: &[u8],
        now: Nanos,
        samples: &mut SampleProducer,
    ) -> Result<(), ParseError> {
        let size = Self::frag_size(h)?;
        if h.frag_count == 1 {
            if !self.is_new(h.msg_seq) {
                self.shared.stats.duplicates.inc();
                return Ok(());
            }
            self.in_window(h.msg_seq)?;
            // Straight from the frame into the delivery ring: no reassembly buffer.
            self.complete(h, payload, now, samples);
            return Ok(());
        }
        // Find the slot for this message, or a free one, or evict the oldest.
        let mut free = None;
        let mut oldest = 0;
        let mut found = None;
        for (i, s) in self.slots.iter().enumerate() {
            if s.active && s.header.msg_seq == h.msg_seq {
                found = Some(i);
                break;
            }
            if !s.active {
                free.get_or_insert(i);
            } else if s.first_seen < self.slots[oldest].first_seen || !self.slots[oldest].active {
                oldest = i;
            }
        }
        let i = match found {
            Some(i) => {
                let s = &self.slots[i];
                if s.header.msg_len != h.msg_len
                    || s.header.frag_count != h.frag_count
                    || s.frag_size != size
                {
                    // Inconsistent with the fragments already held: not the same message.
                    return Err(ParseError::BadFragment);
                }
                i
            }
            None => {
                if !self.is_new(h.msg_seq) {
                    self.shared.stats.duplicates.inc();
                    return Ok(());
                }
                self.in_window(h.msg_seq)?;
                let i = match free {
                    Some(i) => i,
                    None => {
                        self.shared.stats.incomplete.inc();
                        let s = &mut self.slots[oldest];
                        s.active = false;
                        if let Some(b) = s.buf.take() {
                            let _ = self.shared.free.push(b);
                        }
                        oldest
                    }
                };
                let Some(buf) = self.shared.free.pop() else {
                    self.shared.stats.ring_full.inc();
                    return Ok(());
                };
                let s = &mut self.slots[i];
                s.active = true;
                s.header = *h;
                s.buf = Some(buf);
                s.got.iter_mut().for_each(|w| *w = 0);
                s.received = 0;
                s.first_seen = now;
                s.frag_size = size;
                i
            }
        };
        let s = &mut self.slots[i];
        let (w, b) = (h.frag_index as usize / 64, h.frag_index as usize % 64);
        if w >= s.got.len() {
            return Err(ParseError::BadFragment);
        }
        if s.got[w] & (1 << b) != 0 {
            self.shared.stats.duplicates.inc();
            return Ok(());
        }
        s.got[w] |= 1 << b;
        s.received += 1;
        // Index, offset and size agree, so the fragments tile the message: no hole once all
        // `frag_count` indices are in, no overlap.
        let off = h.frag_offset as usize;
        s.buf.as_mut().expect("active slot has a buffer")[off..off + payload.len()]
            .copy_from_slice(payload);
        if s.received == s.header.frag_count {
            s.active = false;
            let buf = s.buf.take().expect("active slot has a buffer");
            let header = s.header;
            self.complete(&header, &buf[..header.msg_len as usize], now, samples);
            let _ = self.shared.free.push(buf);
        }
        Ok(())
    }

    /// Whether `seq` has not been delivered yet (sequence numbers wrap at 2^32).
    fn is_new(&self, seq: u32) -> bool {
        if !self.started {
            return true;
        }
        let behind = self.next_expected.wrapping_sub(seq);
        if behind == 0 || behind > u32::MAX / 2 {
            return true; // at or ahead of the next expected
        }
        behind > 64 || self.recent & (1 << (behind - 1)) == 0
    }

    /// Delivers the whole message `msg` (its `h.msg_len` bytes) unless it is a duplicate.
    fn complete(&mut self, h: &RtHeader, msg: &[u8], now: Nanos, samples: &mut SampleProducer) {
        let st = &self.shared.stats;
        let seq = h.msg_seq;
        let ahead = seq.wrapping_sub(self.next_expected);
        if !self.started || ahead <= u32::MAX / 2 {
            // In order, or after a gap.
            if self.started {
                st.lost.add(ahead as u64);
                self.recent = if ahead + 1 >= 64 {
                    0
                } else {
                    self.recent << (ahead + 1)
                };
            }
            self.recent |= 1;
            self.started = true;
            self.next_expected = seq.wrapping_add(1);
        } else {
            let behind = self.next_expected.wrapping_sub(seq); // ≥ 1
            if behind <= 64 && self.recent & (1 << (behind - 1)) != 0 {
                st.duplicates.inc();
                return;
            }
            if behind <= 64 {
                self.recent |= 1 << (behind - 1);
            }
            st.reordered.inc();
            // It was counted lost when the gap opened.
            st.lost.sub(1);
        }
        let d = Delivery {
            seq,
            submit_ts: h.submit_ts,
            delivered_ts: now,
            deadline: h.deadline,
            len: h.msg_len,
        };
        if !deliver_to_ring(&mut self.ring, msg, &d) {
            st.ring_full.inc();
            return;
        }
        if self.shared.ring.client {
            if self.ring.publish_and_check_wake() {
                self.ring.wake_consumer();
            }
        } else {
            self.ring.publish();
        }
        st.delivered.inc();
        st.bytes.add(h.msg_len as u64);
        let plausible = h.submit_ts <= now.saturating_add(TS_FUTURE_SKEW)
            && now.saturating_sub(h.submit_ts) <= TS_MAX_AGE
            && (h.deadline == 0 || h.deadline >= h.submit_ts);
        // A miss is a miss whatever the stamps say: only the latency sample needs them.
        if h.deadline != 0 && now > h.deadline {
            st.deadline_misses.inc();
        }
        if !plausible {
            st.implausible_timestamps.inc();
            return;
        }
        if !samples.push(self.latency_key, now.saturating_sub(h.submit_ts)) {
            st.latency_samples_dropped.inc();
        }
    }
}

/// Copies a delivered message into the delivery ring (not yet published); false when the
/// ring or its buffers are full.
#[inline]
fn deliver_to_ring(p: &mut Producer<DeliverDesc>, msg: &[u8], d: &Delivery) -> bool {
    if p.room() == 0 {
        return false;
    }
    // Bad free-ring entries are the client's own doing: skipped, its messages lost.
    let Some(b) = p.grant(|_| {}) else {
        return false;
    };
    p.buffer_mut(b)[..msg.len()].copy_from_slice(msg);
    p.push(DeliverDesc {
        buf: b,
        len: msg.len() as u32,
        seq: d.seq,
        flags: if d.deadline != 0 && d.delivered_ts > d.deadline {
            DELIVER_LATE
        } else {
            0
        },
        submit_ts: d.submit_ts,
        delivered_ts: d.delivered_ts,
        deadline: d.deadline,
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Endpoint;
    use crate::wire::{HeaderTemplate, RTCHAN_UDP_PORT};

    fn frames(seq: u32, msg: &[u8], per: usize) -> Vec<Vec<u8>> {
        let t = HeaderTemplate::new(&Endpoint::default());
        let count = msg.len().div_ceil(per).max(1);
        (0..count)
            .map(|i| {
                let off = i * per;
                let end = (off + per).min(msg.len());
                let h = RtHeader {
                    flags: 0,
                    frag_index: i as u16,
                    frag_count: count as u16,
                    frag_len: (end - off) as u16,
                    channel: 9,
                    msg_seq: seq,
                    msg_len: msg.len() as u32,
                    frag_offset: off as u32,
                    submit_ts: 100,
                    deadline: 1000,
                };
                let mut b = vec![0; 2048];
                let n = t.write_frame(&mut b, 0, &h, &msg[off..end]);
                b.truncate(n);
                b
            })
            .collect()
    }

    fn setup() -> (RxPath, Receiver) {
        let sink = SampleSink::new();
        let mut rx = RxPath::new(
            RTCHAN_UDP_PORT,
            1000,
            sink.producer(crate::stats::SampleSource::Latency),
        );
        let sh = RxShared::new(9, 100, 8, 2, &sink);
        rx.open(RxPath::prepare(sh.clone(), 2)).unwrap();
        (rx, Receiver::new(sh))
    }

    #[test]
    fn reassembles_out_of_order_fragments() {
        let (mut rx, r) = setup();
        let msg: Vec<u8> = (0..50).collect();
        let mut f = frames(0, &msg, 16);
        f.reverse();
        for fr in &f {
            rx.handle(fr, 500);
        }
        let got = r.recv_with(|b, d| (b.to_vec(), d.seq)).unwrap();
        assert_eq!(got, (msg, 0));
        assert_eq!(r.stats().delivered.get(), 1);
        assert_eq!(r.stats().deadline_misses.get(), 0);
    }

    #[test]
    fn counts_loss_duplicates_reordering_and_misses() {
        let (mut rx, r) = setup();
        rx.handle(&frames(0, b"a", 16)[0], 500);
        rx.handle(&frames(2, b"c", 16)[0], 500); // 1 lost so far
        assert_eq!(r.stats().lost.get(), 1);
        rx.handle(&frames(1, b"b", 16)[0], 1500); // late: reordered, not lost; and a miss
        rx.handle(&frames(1, b"b", 16)[0], 500); // duplicate
        let s = r.stats();
        assert_eq!(
            (
                s.lost.get(),
                s.reordered.get(),
                s.duplicates.get(),
                s.deadline_misses.get()
            ),
            (0, 1, 1, 1)
        );
        assert_eq!(s.delivered.get(), 3);
    }

    #[test]
    fn incomplete_messages_time_out_and_free_their_buffer() {
        let (mut rx, r) = setup();
        let f = frames(0, &[7u8; 40], 16);
        rx.handle(&f[0], 0);
        rx.maintain(2000);
        assert_eq!(r.stats().incomplete.get(), 1);
        // Every reassembly buffer (2 slots + 1) is back.
        assert_eq!(r.shared().free.len(), 2 + 1);
    }

    #[test]
    fn maintenance_runs_a_bounded_step_per_call() {
        let sink = SampleSink::new();
        let mut rx = RxPath::with_capacity(
            RTCHAN_UDP_PORT,
            1000,
            100,
            sink.producer(crate::stats::SampleSource::Latency),
        );
        let mut last = None;
        for id in 0..100 {
            let sh = RxShared::new(id, 100, 16, 16, &sink);
            rx.open(RxPath::prepare(sh.clone(), 16)).unwrap();
            last = Some(Receiver::new(sh));
        }
        let last = last.unwrap();
        // An incomplete message on the last receiver (channel 99).
        let mut f = frames(0, &[7u8; 40], 16).remove(0);
        f[42 + 8..42 + 12].copy_from_slice(&99u32.to_be_bytes());
        f[40] = 0;
        f[41] = 0;
        rx.handle(&f, 0);
        let t = MAINTAIN_INTERVAL + 5000;
        assert!(rx.maintenance_due(t));
        let mut steps = 1;
        while !rx.maintain_step(t) {
            assert_eq!(last.stats().incomplete.get(), 0, "freed before its step");
            steps += 1;
        }
        assert_eq!(last.stats().incomplete.get(), 1);
        // 1,600 slots, at most MAINTAIN_SLOTS_PER_STEP + 15 per step.
        assert!(
            steps >= 1600 / (MAINTAIN_SLOTS_PER_STEP + 15),
            "{steps} steps"
        );
        assert!(!rx.maintenance_due(t + MAINTAIN_INTERVAL - 1));
        assert!(rx.maintenance_due(t + MAINTAIN_INTERVAL));
    }

    #[test]
    fn duplicate_and_excess_receivers_are_refused_and_handed_back() {
        let sink = SampleSink::new();
        let mut rx = RxPath::with_capacity(
            RTCHAN_UDP_PORT,
            1000,
            1,
            sink.producer(crate::stats::SampleSource::Latency),
        );
        rx.open(RxPath::prepare(RxShared::new(1, 10, 2, 2, &sink), 2))
            .unwrap();
        match rx.open(RxPath::prepare(RxShared::new(1, 10, 2, 2, &sink), 2)) {
            Err(RxOpenError::Duplicate(s)) => assert_eq!(s.id(), 1),
            other => panic!("{other:?}"),
        }
        match rx.open(RxPath::prepare(RxShared::new(2, 10, 2, 2, &sink), 2)) {
            Err(RxOpenError::Full(s, 1)) => assert_eq!(s.id(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.close(1).map(|s| s.id()), Some(1));
        assert!(rx.close(1).is_none());
    }

    #[test]
    fn latency_samples_reach_the_histogram_when_folded() {
        let (mut rx, r) = setup();
        rx.handle(&frames(0, b"a", 16)[0], 600);
        assert_eq!(r.stats().latency_histogram().lock().len(), 0);
        let h = r.stats().latency_snapshot();
        assert_eq!((h.len(), h.max()), (1, h.highest_equivalent(500)));
    }

    #[test]
    fn unknown_channel_and_garbage_are_counted() {
        let (mut rx, _r) = setup();
        let mut f = frames(0, b"x", 16).remove(0);
        f[42 + 8..42 + 12].copy_from_slice(&77u32.to_be_bytes());
        // Fix the UDP checksum by zeroing it (allowed in IPv4).
        f[40] = 0;
        f[41] = 0;
        rx.handle(&f, 0);
        rx.handle(&[1, 2, 3], 0);
        let s = rx.stats();
        assert_eq!(s.rejected[ParseError::UnknownChannel.index()], 1);
        assert_eq!(s.rejected[ParseError::Short.index()], 1);
    }

    fn raw_frame(ep: &Endpoint, h: &RtHeader, payload: &[u8]) -> Vec<u8> {
        let t = HeaderTemplate::new(ep);
        let mut b = vec![0; 2048];
        let n = t.write_frame(&mut b, 0, h, payload);
        b.truncate(n);
        b
    }

    fn hdr(seq: u32, index: u16, count: u16, len: u16, offset: u32, msg_len: u32) -> RtHeader {
        RtHeader {
            flags: 0,
            frag_index: index,
            frag_count: count,
            frag_len: len,
            channel: 9,
            msg_seq: seq,
            msg_len,
            frag_offset: offset,
            submit_ts: 100,
            deadline: 1000,
        }
    }

    fn checked_setup(mmax: u32) -> (RxPath, Receiver) {
        let sink = SampleSink::new();
        let mut rx = RxPath::new(
            RTCHAN_UDP_PORT,
            1000,
            sink.producer(crate::stats::SampleSource::Latency),
        );
        let check = SourceCheck::exact(&Endpoint::default());
        let sh = RxShared::with_source(9, mmax, 8, 2, &sink, Some(check));
        rx.open(RxPath::prepare(sh.clone(), 2)).unwrap();
        (rx, Receiver::new(sh))
    }

    fn rejected(r: &Receiver, e: ParseError) -> u64 {
        r.stats().rejected[e.index()].get()
    }

    #[test]
    fn fragments_that_do_not_tile_the_message_are_rejected_not_delivered() {
        let (mut rx, r) = checked_setup(5000);
        let ep = Endpoint::default();
        // The input: two 200-byte fragments, both at offset 0, count 2, length 4000.
        rx.handle(&raw_frame(&ep, &hdr(0, 0, 2, 200, 0, 4000), &[1; 200]), 10);
        rx.handle(&raw_frame(&ep, &hdr(0, 1, 2, 200, 0, 4000), &[2; 200]), 10);
        assert_eq!(r.stats().delivered.get(), 0);
        assert_eq!(rejected(&r, ParseError::BadFragment), 1);
        // A hole: the last fragment does not start where the pieces end.
        rx.handle(&raw_frame(&ep, &hdr(1, 0, 2, 200, 0, 400), &[1; 200]), 10);
        rx.handle(&raw_frame(&ep, &hdr(1, 1, 2, 100, 300, 400), &[2; 100]), 10);
        // An overlap: a second piece at an offset that is not its index times the size.
        rx.handle(&raw_frame(&ep, &hdr(2, 1, 3, 200, 100, 500), &[2; 200]), 10);
        // A lone fragment shorter than its message.
        rx.handle(&raw_frame(&ep, &hdr(3, 0, 1, 10, 0, 20), &[2; 10]), 10);
        assert_eq!(r.stats().delivered.get(), 0);
        assert_eq!(rejected(&r, ParseError::BadFragment), 4);
        assert_eq!(rx.stats().rejected[ParseError::BadFragment.index()], 4);
        assert_eq!(
            rx.rejects().rejected[ParseError::BadFragment.index()].get(),
            4
        );
        // The real layout still reassembles.
        rx.handle(&raw_frame(&ep, &hdr(1, 1, 2, 200, 200, 400), &[2; 200]), 10);
        let got = r.recv_with(|b, _| b.to_vec()).unwrap();
        assert_eq!(got.len(), 400);
        assert!(got[..200].iter().all(|&b| b == 1) && got[200..].iter().all(|&b| b == 2));
    }

    #[test]
    fn frames_from_another_source_or_to_another_host_are_rejected() {
        let (mut rx, r) = checked_setup(100);
        let good = Endpoint::default();
        let h = hdr(0, 0, 1, 1, 0, 1);
        let cases = [
            (
                Endpoint {
                    src_mac: [0x02, 9, 9, 9, 9, 9],
                    ..good
                },
                ParseError::WrongSource,
            ),
            (
                Endpoint {
                    src_ip: [10, 0, 0, 66],
                    ..good
                },
                ParseError::WrongSource,
            ),
            (
                Endpoint {
                    src_port: 9999,
                    ..good
                },
                ParseError::WrongSource,
            ),
            (
                Endpoint {
                    dst_mac: [0xff; 6],
                    ..good
                },
                ParseError::WrongDestination,
            ),
            (
                Endpoint {
                    dst_ip: [10, 0, 0, 77],
                    ..good
                },
                ParseError::WrongDestination,
            ),
        ];
        for (ep, want) in cases {
            rx.handle(&raw_frame(&ep, &h, b"x"), 10);
            assert!(rejected(&r, want) >= 1, "{ep:?}");
        }
        assert_eq!(r.stats().delivered.get(), 0);
        assert_eq!(rejected(&r, ParseError::WrongSource), 3);
        assert_eq!(rejected(&r, ParseError::WrongDestination), 2);
        rx.handle(&raw_frame(&good, &h, b"x"), 10);
        assert_eq!(r.stats().delivered.get(), 1);
    }

    #[test]
    fn a_sequence_number_far_ahead_is_rejected_not_counted_as_loss() {
        let (mut rx, r) = checked_setup(100);
        let ep = Endpoint::default();
        for seq in 0..3 {
            rx.handle(&raw_frame(&ep, &hdr(seq, 0, 1, 1, 0, 1), b"x"), 10);
        }
        // The input: one spoofed frame 2^31 ahead.
        rx.handle(
            &raw_frame(&ep, &hdr(3 + (1 << 31), 0, 1, 1, 0, 1), b"x"),
            10,
        );
        // Far behind the bitmap too.
        rx.handle(
            &raw_frame(&ep, &hdr(3u32.wrapping_sub(1000), 0, 1, 1, 0, 1), b"x"),
            10,
        );
        for seq in 3..6 {
            rx.handle(&raw_frame(&ep, &hdr(seq, 0, 1, 1, 0, 1), b"x"), 10);
        }
        let s = r.stats();
        assert_eq!(rejected(&r, ParseError::SeqOutOfWindow), 2);
        assert_eq!((s.lost.get(), s.reordered.get()), (0, 0));
        assert_eq!(s.delivered.get(), 6);
        // A gap inside the window is loss.
        rx.handle(&raw_frame(&ep, &hdr(6 + 100, 0, 1, 1, 0, 1), b"x"), 10);
        assert_eq!(r.stats().lost.get(), 100);
    }

    #[test]
    fn a_sender_that_jumped_is_followed_after_a_run_of_in_order_messages() {
        let (mut rx, r) = checked_setup(100);
        let ep = Endpoint::default();
        rx.handle(&raw_frame(&ep, &hdr(0, 0, 1, 1, 0, 1), b"x"), 10);
        let base = 1u32 << 30;
        for k in 0..u32::from(SEQ_RESYNC_RUN) + 2 {
            rx.handle(&raw_frame(&ep, &hdr(base + k, 0, 1, 1, 0, 1), b"x"), 10);
            while r.recv_with(|_, _| ()).is_some() {}
        }
        let s = r.stats();
        assert_eq!(s.resyncs.get(), 1);
        let run = u64::from(SEQ_RESYNC_RUN);
        assert_eq!(rejected(&r, ParseError::SeqOutOfWindow), run - 1);
        assert_eq!(s.delivered.get(), 1 + 3);
        assert_eq!(s.lost.get(), 0);
    }

    #[test]
    fn implausible_timestamps_are_counted_and_kept_out_of_the_histogram() {
        let (mut rx, r) = checked_setup(100);
        let ep = Endpoint::default();
        let now = 100 * 1_000_000_000;
        let mut zero = hdr(0, 0, 1, 1, 0, 1);
        zero.submit_ts = 0; // the input
        zero.deadline = 0;
        let mut future = hdr(1, 0, 1, 1, 0, 1);
        future.submit_ts = now + 1_000_000_000;
        future.deadline = future.submit_ts + 1;
        let mut fine = hdr(2, 0, 1, 1, 0, 1);
        fine.submit_ts = now - 5_000;
        fine.deadline = now + 1_000;
        // Stamped 100 s ago with a deadline long past: implausible, and still a miss.
        let mut old = hdr(3, 0, 1, 1, 0, 1);
        old.submit_ts = 1;
        old.deadline = 1_000;
        for h in [zero, future, fine, old] {
            rx.handle(&raw_frame(&ep, &h, b"x"), now);
        }
        let s = r.stats();
        assert_eq!(s.delivered.get(), 4);
        assert_eq!(s.implausible_timestamps.get(), 3);
        assert_eq!(
            s.deadline_misses.get(),
            1,
            "a miss counts whatever its stamps"
        );
        let hist = s.latency_snapshot();
        assert_eq!(hist.len(), 1);
        assert!(hist.max() < 10_000);
    }

    #[test]
    fn fuzzed_headers_cannot_inflate_the_loss_count() {
        let (mut rx, r) = checked_setup(4000);
        let ep = Endpoint::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..100_000 {
            let v = next();
            let count = (v % 4 + 1) as u16;
            let index = ((v >> 8) % u64::from(count)) as u16;
            let len = ((v >> 16) % 300) as u16;
            let msg_len = ((v >> 28) % 4000) as u32;
            let offset = ((v >> 40) as u32 % 4000).min(msg_len.saturating_sub(u32::from(len)));
            let mut h = hdr(
                next() as u32,
                index,
                count,
                len,
                offset,
                msg_len.max(u32::from(len)),
            );
            h.submit_ts = next();
            h.deadline = next();
            rx.handle(&raw_frame(&ep, &h, &vec![0; usize::from(len)]), 1 << 40);
            while r.recv_with(|_, _| ()).is_some() {}
            rx.maintain(0);
        }
        let s = r.stats();
        let accepted_messages = s.delivered.get() + s.incomplete.get() + 64;
        println!(
            "100,000 fuzzed frames: delivered {}, lost {}, rejected {:?}",
            s.delivered.get(),
            s.lost.get(),
            rx.stats().rejected
        );
        assert!(
            s.lost.get() <= accepted_messages * u64::from(SEQ_WINDOW_AHEAD),
            "lost {}",
            s.lost.get()
        );
        assert!(s.lost.get() < 10 * u64::from(SEQ_WINDOW_AHEAD));
    }

    /// A delivery ring whose producing end cannot be taken is refused with the reason, not
    /// opened with nowhere to deliver.
    #[test]
    fn a_delivery_ring_that_cannot_be_produced_into_is_refused() {
        let sink = SampleSink::new();
        let region = Region::heap::<DeliverDesc>(&crate::shm::Params {
            mmax: 10,
            capacity: 2,
            drop_oldest: false,
            channel: 1,
        })
        .unwrap();
        let _taken = Producer::<DeliverDesc>::new(region.clone()).unwrap();
        let shared = RxShared::with_app(1, 10, 2, region, &sink, None);
        match RxPath::prepare_app(shared, 2) {
            Err(ShmError::EndTaken("producer")) => {}
            other => panic!("expected the producer end to be refused, got {other:?}"),
        }
    }
}
