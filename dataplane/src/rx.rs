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
//! A channel whose receiving application is another process ([`RxShared::with_app`]) is
//! delivered into that application's shared-memory ring ([`crate::shm`], the core produces)
//! instead of the in-process queue: the message is copied from its reassembly buffer into a
//! ring buffer, published, and the application's eventfd is signalled only when it said it
//! sleeps (at most one `write` per sleep).

use crate::shm::{DeliverDesc, Producer, Region, DELIVER_LATE};
use crate::spec::ChannelId;
use crate::stats::{new_histogram, Counter, SampleBuffer};
use crate::time::Nanos;
use crate::wire::{parse_frame, ParseError, RtHeader};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// How long an incomplete message may wait for its fragments by default: 100 ms.
pub const DEFAULT_REASSEMBLY_TIMEOUT: Nanos = 100_000_000;

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
    /// Latency samples lost because a reader held the histogram while the batch was full.
    pub latency_samples_dropped: Counter,
    latency: Mutex<Histogram<u64>>,
}

impl Default for RxStats {
    fn default() -> Self {
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
            latency: Mutex::new(new_histogram()),
        }
    }
}

impl RxStats {
    /// A copy of the end-to-end latency histogram (control path).
    pub fn latency_snapshot(&self) -> Histogram<u64> {
        match self.latency.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }
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
    /// The receiving application's ring, when it is another process.
    app: Option<AppRing>,
    /// Counters and latency.
    pub stats: RxStats,
}

/// A receive side's state apart from its buffers and rings (counters, the latency histogram,
/// the `Arc`, the receive path's slot headers), rounded up; `tests/reservation_bytes.rs`
/// measures it.
pub const RX_FIXED_BYTES: u64 = 64 * 1024;

/// The heap bytes a channel's receive side allocates ([`RxShared::new`] with `ring` and
/// `reassembly`, and its slots in [`RxPath::open`]) for messages of up to `mmax` bytes,
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

/// A client's delivery ring and the eventfd that wakes it.
#[derive(Debug)]
struct AppRing {
    region: Arc<Region>,
    wake: OwnedFd,
}

impl RxShared {
    /// Receive state for channel `id`: `ring` delivered messages may wait for the application;
    /// `reassembly` messages may be incomplete at once.
    pub fn new(id: ChannelId, mmax: u32, ring: u32, reassembly: u32) -> Arc<Self> {
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
            app: None,
            stats: RxStats::default(),
        })
    }

    /// Receive state whose messages go to a client process's delivery ring `region`
    /// (signalled through `wake`); `reassembly` messages may be incomplete at once.
    pub fn with_app(
        id: ChannelId,
        mmax: u32,
        reassembly: u32,
        region: Arc<Region>,
        wake: OwnedFd,
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
            deliver: ArrayQueue::new(1),
            free,
            app: Some(AppRing { region, wake }),
            stats: RxStats::default(),
        })
    }

    /// The client's delivery ring, if the application is another process.
    pub fn app_region(&self) -> Option<&Arc<Region>> {
        self.app.as_ref().map(|a| &a.region)
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
    pending_latency: SampleBuffer,
    /// The producing end of the client's delivery ring.
    app: Option<Producer<DeliverDesc>>,
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
    channels: Vec<Option<RxChannel>>,
    by_id: HashMap<ChannelId, u32>,
    timeout: Nanos,
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
    /// A receive path for frames to `udp_port`.
    pub fn new(udp_port: u16, timeout: Nanos) -> Self {
        Self {
            udp_port,
            channels: Vec::new(),
            by_id: HashMap::new(),
            timeout,
            stats: RxPathStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RxPathStats {
        self.stats
    }

    /// Opens receive for a channel with `reassembly` slots (control path: allocates).
    pub fn open(&mut self, shared: Arc<RxShared>, reassembly: u32) {
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
        let ch = RxChannel {
            shared: shared.clone(),
            slots,
            next_expected: 0,
            started: false,
            recent: 0,
            pending_latency: SampleBuffer::default(),
            app: shared
                .app
                .as_ref()
                .and_then(|a| Producer::new(a.region.clone()).ok()),
        };
        let idx = match self.channels.iter().position(Option::is_none) {
            Some(i) => {
                self.channels[i] = Some(ch);
                i
            }
            None => {
                self.channels.push(Some(ch));
                self.channels.len() - 1
            }
        };
        self.by_id.insert(shared.id, idx as u32);
    }

    /// Closes receive for a channel; returns whether it was open.
    pub fn close(&mut self, id: ChannelId) -> bool {
        match self.by_id.remove(&id) {
            Some(i) => {
                if let Some(mut ch) = self.channels[i as usize].take() {
                    ch.publish(true);
                }
                true
            }
            None => false,
        }
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
        let ch = self.channels[idx as usize]
            .as_mut()
            .expect("indexed channel");
        if h.msg_len > ch.shared.mmax {
            self.stats.rejected[ParseError::LengthMismatch.index()] += 1;
            return;
        }
        ch.fragment(&h, parsed.payload, now);
    }

    /// Publishes every channel's pending latency samples, waiting for readers (control path).
    pub fn flush(&mut self) {
        for ch in self.channels.iter_mut().flatten() {
            ch.publish(true);
        }
    }

    /// Frees timed-out reassembly slots and publishes latency samples (call every ms or so).
    pub fn maintain(&mut self, now: Nanos) {
        for ch in self.channels.iter_mut().flatten() {
            for s in ch.slots.iter_mut() {
                if s.active && now.saturating_sub(s.first_seen) > self.timeout {
                    ch.shared.stats.incomplete.inc();
                    s.active = false;
                    if let Some(b) = s.buf.take() {
                        let _ = ch.shared.free.push(b);
                    }
                }
            }
            ch.publish(false);
        }
    }
}

impl RxChannel {
    fn publish(&mut self, wait: bool) {
        self.pending_latency.flush(&self.shared.stats.latency, wait);
    }

    #[inline]
    fn fragment(&mut self, h: &RtHeader, payload: &[u8], now: Nanos) {
        if h.frag_count == 1 {
            if h.frag_len as u32 != h.msg_len {
                return;
            }
            let Some(mut buf) = self.shared.free.pop() else {
                self.shared.stats.ring_full.inc();
                return;
            };
            buf[..payload.len()].copy_from_slice(payload);
            self.complete(h, buf, now);
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
            self.complete(&header, buf, now);
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

    fn complete(&mut self, h: &RtHeader, buf: Box<[u8]>, now: Nanos) {
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
        if let Some(p) = self.app.as_mut() {
            let ok = deliver_to_app(p, &buf[..h.msg_len as usize], &d);
            let _ = self.shared.free.push(buf);
            if !ok {
                st.ring_full.inc();
                return;
            }
            if p.publish_and_check_wake() {
                if let Some(a) = &self.shared.app {
                    crate::shm::signal(a.wake.as_fd());
                }
            }
        } else if let Err((buf, _)) = self.shared.deliver.push((buf, d)) {
            st.ring_full.inc();
            let _ = self.shared.free.push(buf);
            return;
        }
        st.delivered.inc();
        st.bytes.add(h.msg_len as u64);
        if h.deadline != 0 && now > h.deadline {
            st.deadline_misses.inc();
        }
        self.pending_latency.record(
            now.saturating_sub(h.submit_ts),
            &self.shared.stats.latency,
            &self.shared.stats.latency_samples_dropped,
        );
    }
}

/// Copies a delivered message into the client's ring (not yet published); false when the ring
/// or its buffers are full.
#[inline]
fn deliver_to_app(p: &mut Producer<DeliverDesc>, msg: &[u8], d: &Delivery) -> bool {
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
        let mut rx = RxPath::new(RTCHAN_UDP_PORT, 1000);
        let sh = RxShared::new(9, 100, 8, 2);
        rx.open(sh.clone(), 2);
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
