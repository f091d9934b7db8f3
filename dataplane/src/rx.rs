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

use crate::spec::ChannelId;
use crate::stats::{Counter, SampleProducer, SampleSink, SharedHistogram};
use crate::time::Nanos;
use crate::wire::{parse_frame, ParseError, RtHeader};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::Arc;

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
    deliver: ArrayQueue<(Box<[u8]>, Delivery)>,
    free: ArrayQueue<Box<[u8]>>,
    /// Counters and latency.
    pub stats: RxStats,
}

/// A receive side's state apart from its buffers and rings (counters, the latency histogram,
/// the `Arc`, the receive path's slot headers), rounded up; `tests/reservation_bytes.rs`
/// measures it.
pub const RX_FIXED_BYTES: u64 = 64 * 1024;

/// The heap bytes a channel's receive side allocates ([`RxShared::new`] with `ring` and
/// `reassembly`, and its slots in [`RxPath::prepare`]) for messages of up to `mmax` bytes,
/// saturating; computed without allocating.
pub fn reservation_bytes(mmax: u32, ring: u32, reassembly: u32) -> u64 {
    use crate::channel::{queue_slot_bytes, ALLOC_OVERHEAD};
    let buffers = u64::from(ring) + u64::from(reassembly) + 1;
    let bufs = buffers.saturating_mul(u64::from(mmax) + ALLOC_OVERHEAD);
    let free = buffers.saturating_mul(queue_slot_bytes::<Box<[u8]>>()) + ALLOC_OVERHEAD;
    let deliver = u64::from(ring.max(1))
        .saturating_mul(queue_slot_bytes::<(Box<[u8]>, Delivery)>())
        + ALLOC_OVERHEAD;
    let words = (mmax as u64).min(1 << 16).div_ceil(64).max(1);
    let slots = u64::from(reassembly.max(1))
        .saturating_mul(words * 8 + ALLOC_OVERHEAD + std::mem::size_of::<Slot>() as u64);
    bufs.saturating_add(free)
        .saturating_add(deliver)
        .saturating_add(slots)
        .saturating_add(RX_FIXED_BYTES)
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
        let buffers = ring as usize + reassembly as usize + 1;
        let free = ArrayQueue::new(buffers);
        for _ in 0..buffers {
            let _ = free.push(crate::mem::prefaulted_bytes(mmax as usize));
        }
        Arc::new(Self {
            id,
            mmax,
            reassembly,
            deliver: ArrayQueue::new(ring.max(1) as usize),
            free,
            stats: RxStats::new(sink),
        })
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
    /// Calls `f` with the next delivered message, if any, then recycles its buffer.
    pub fn recv_with<R>(&self, f: impl FnOnce(&[u8], &Delivery) -> R) -> Option<R> {
        let (buf, d) = self.shared.deliver.pop()?;
        let r = f(&buf[..d.len as usize], &d);
        let _ = self.shared.free.push(buf);
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
}

struct RxChannel {
    shared: Arc<RxShared>,
    slots: Vec<Slot>,
    /// One past the highest sequence delivered.
    next_expected: u32,
    started: bool,
    /// Bit i: sequence `next_expected - 1 - i` was delivered.
    recent: u64,
    /// `shared.stats`' latency histogram key in the core's sample sink.
    latency_key: u32,
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
        }
    }

    /// Counters.
    pub fn stats(&self) -> RxPathStats {
        self.stats
    }

    /// The sample sink latency samples go to.
    pub fn sink(&self) -> &Arc<SampleSink> {
        self.samples.sink()
    }

    /// Builds a receiver's core-side state with `reassembly` slots (control path: allocates).
    pub fn prepare(shared: Arc<RxShared>, reassembly: u32) -> ReceiverState {
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
            })
            .collect();
        ReceiverState(Box::new(RxChannel {
            latency_key: shared.stats.latency.key(),
            shared,
            slots,
            next_expected: 0,
            started: false,
            recent: 0,
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
            Err(e) => {
                self.stats.rejected[e.index()] += 1;
                return;
            }
        };
        let h = parsed.header;
        let Some(&idx) = self.by_id.get(&h.channel) else {
            self.stats.rejected[ParseError::UnknownChannel.index()] += 1;
            return;
        };
        let ch = &mut self.channels[idx as usize]
            .as_mut()
            .expect("indexed channel")
            .0;
        if h.msg_len > ch.shared.mmax {
            self.stats.rejected[ParseError::LengthMismatch.index()] += 1;
            return;
        }
        ch.fragment(&h, parsed.payload, now, &mut self.samples);
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
    #[inline]
    fn fragment(&mut self, h: &RtHeader, payload: &[u8], now: Nanos, samples: &mut SampleProducer) {
        if h.frag_count == 1 {
            if h.frag_len as u32 != h.msg_len {
                return;
            }
            let Some(mut buf) = self.shared.free.pop() else {
                self.shared.stats.ring_full.inc();
                return;
            };
            buf[..payload.len()].copy_from_slice(payload);
            self.complete(h, buf, now, samples);
            return;
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
                if s.header.msg_len != h.msg_len || s.header.frag_count != h.frag_count {
                    // Inconsistent with the fragments already held: not the same message.
                    return;
                }
                i
            }
            None => {
                if !self.is_new(h.msg_seq) {
                    self.shared.stats.duplicates.inc();
                    return;
                }
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
                    return;
                };
                let s = &mut self.slots[i];
                s.active = true;
                s.header = *h;
                s.buf = Some(buf);
                s.got.iter_mut().for_each(|w| *w = 0);
                s.received = 0;
                s.first_seen = now;
                i
            }
        };
        let s = &mut self.slots[i];
        let (w, b) = (h.frag_index as usize / 64, h.frag_index as usize % 64);
        if w >= s.got.len() {
            return;
        }
        if s.got[w] & (1 << b) != 0 {
            self.shared.stats.duplicates.inc();
            return;
        }
        s.got[w] |= 1 << b;
        s.received += 1;
        let off = h.frag_offset as usize;
        s.buf.as_mut().expect("active slot has a buffer")[off..off + payload.len()]
            .copy_from_slice(payload);
        if s.received == s.header.frag_count {
            s.active = false;
            let buf = s.buf.take().expect("active slot has a buffer");
            let header = s.header;
            self.complete(&header, buf, now, samples);
        }
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

    fn complete(&mut self, h: &RtHeader, buf: Box<[u8]>, now: Nanos, samples: &mut SampleProducer) {
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
                let _ = self.shared.free.push(buf);
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
        if let Err((buf, _)) = self.shared.deliver.push((buf, d)) {
            st.ring_full.inc();
            let _ = self.shared.free.push(buf);
            return;
        }
        st.delivered.inc();
        st.bytes.add(h.msg_len as u64);
        if h.deadline != 0 && now > h.deadline {
            st.deadline_misses.inc();
        }
        if !samples.push(self.latency_key, now.saturating_sub(h.submit_ts)) {
            st.latency_samples_dropped.inc();
        }
    }
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
        assert_eq!(r.shared().free.len(), 8 + 2 + 1);
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
}
