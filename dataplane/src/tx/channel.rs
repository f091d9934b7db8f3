//! The application side of a channel: the sender handle, its submit ring and buffer pool, and
//! the doorbell that wakes the channel's handler on its polling core.
//!
//! # Data flow
//! The application calls [`Sender::submit`]: the message is copied into one of the channel's
//! preallocated buffers (its buffer reservation: `messages + 1` buffers of `mmax` bytes) and the
//! buffer is pushed onto the channel's submit ring (crossbeam `ArrayQueue`, used single-producer
//! single-consumer). If the channel's handler was idle, the sender rings the core's doorbell
//! with the handler's slot. The core pops the ring, fragments the message, and returns the
//! buffer to the free list when its last packet is written. Nothing allocates after open.
//!
//! A channel whose Mmax is at most [`INLINE_MAX`] bytes has no free list: each message travels
//! inside its ring slot, so the reservation is the ring (`messages` slots) plus the message the
//! handler holds, `messages + 1` as with buffers, and a submit finds the buffer full exactly
//! when the ring is full, as with buffers. The ring's element is sized for the inline case, so
//! every channel's ring slot is 96 bytes (40 before), pooled channels' included: a memory cost
//! of 56 bytes per reserved message, accepted to keep one ring type.
//!
//! # Client-fed channels
//! A channel whose messages come from another process ([`ChannelShared::new_client`]) has no
//! [`Sender`] here: the client writes into the channel's shared-memory submit ring
//! ([`crate::shm`], a sealed memfd) and the handler takes from that ring, validating every
//! descriptor and counting bad ones in [`ChannelStats::invalid_descriptors`]. The buffers
//! are the ring's (`messages + 1`, one more for drop-oldest), so a message is never copied
//! between the client's write and its packets. A client cannot ring the doorbell: the core
//! looks at client-fed channels' tails once per iteration instead (`Core`'s client scan).
//! The core leaves a memfd ring alone until the client has mapped it and the daemon sealed it
//! against hole punching ([`ChannelShared::client_mapped`]): from then on no page of it can
//! vanish under the core.
//!
//! # Wake-up protocol (numbered invariants)
//! 1. `armed == true` means the core will look at the submit ring again without another
//!    doorbell: the slot is in the doorbell, or the handler is active (holds a message or is
//!    queued in the scheduler).
//! 2. The sender pushes the message, then a `SeqCst` fence, then `armed.swap(true)`; only the
//!    swap that turns `false` into `true` pushes the doorbell, so a slot is in the doorbell at
//!    most once and the doorbell (sized to the core's channel count) never overflows.
//! 3. The core disarms only when the handler is idle: `armed.store(false)`, a `SeqCst` fence,
//!    then it re-reads the ring; a message found there is taken by re-arming with a swap. The
//!    two fences order each side's write before its read (a Dekker pair), so a message pushed
//!    concurrently is seen by one side or the other: none is stranded.

use crate::shm::{Consumer, Event, Params, Region, ShmError, SubmitDesc, Taken};
use crate::spec::{ChannelConfig, OverflowPolicy};
use crate::stats::{ChannelStats, SampleSink};
use crate::time::{monotonic_now, Nanos};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

/// Messages of at most this many bytes (one cache line) travel inside the submit ring's slot:
/// copying them costs less than a free-list round trip per message (a locked instruction on
/// each side and two more cache lines shared between the sender and the core).
pub const INLINE_MAX: usize = 64;

/// Where a submitted message's bytes are.
#[derive(Debug)]
pub enum Payload {
    /// In the ring slot (channels with Mmax ≤ [`INLINE_MAX`]).
    Inline([u8; INLINE_MAX]),
    /// In a buffer from the channel's free list (capacity `mmax`).
    Pooled(Box<[u8]>),
    /// In a buffer of a client-fed channel's shared-memory ring (read through the channel:
    /// `ChannelShared::message`).
    Shm(Taken<SubmitDesc>),
}

/// A message on its way from the sender to the handler.
#[derive(Debug)]
pub struct Submitted {
    /// The message bytes (the first `len` of them).
    pub payload: Payload,
    /// Message length.
    pub len: u32,
    /// Submit time (CLOCK_MONOTONIC ns).
    pub submit_ts: Nanos,
}

impl Submitted {
    /// The message of an in-process channel (empty for a client-fed one: see
    /// `ChannelShared::message`).
    #[inline]
    pub fn data(&self) -> &[u8] {
        match &self.payload {
            Payload::Inline(a) => &a[..self.len as usize],
            Payload::Pooled(b) => &b[..self.len as usize],
            Payload::Shm(_) => &[],
        }
    }
}

/// A core's doorbell: slots of handlers that have new messages.
pub type Doorbell = ArrayQueue<u32>;

/// State shared between a channel's sender and its handler.
#[derive(Debug)]
pub struct ChannelShared {
    /// The validated configuration.
    pub config: ChannelConfig,
    /// Handler slot on the core (the doorbell's payload).
    pub slot: u32,
    pub(crate) submit: ArrayQueue<Submitted>,
    pub(crate) free: ArrayQueue<Box<[u8]>>,
    /// Messages travel in the ring slot ([`INLINE_MAX`]); the free list is empty.
    inline: bool,
    armed: AtomicBool,
    closed: AtomicBool,
    doorbell: Arc<Doorbell>,
    /// The shared-memory submit ring of a client-fed channel.
    client: Option<Consumer<SubmitDesc>>,
    /// The core may read the client's ring: set once the client mapped it and the daemon
    /// sealed it against hole punching ([`ChannelShared::client_mapped`]); heap rings from the
    /// start. Before, the core does not touch the ring.
    ring_ready: AtomicBool,
    /// How long after its stamp a client-fed message may be taken (the release jitter it was
    /// admitted with; 0 in-process). A stamp is never trusted beyond it.
    release_jitter: Nanos,
    /// Counters and the delay histogram.
    pub stats: ChannelStats,
}

/// Why a submit did not queue the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The message is longer than the channel's Mmax; it was not truncated, nothing was sent.
    #[error("message of {len} bytes exceeds the channel's mmax of {mmax} bytes")]
    TooLong {
        /// The message length.
        len: usize,
        /// The channel's Mmax.
        mmax: u32,
    },
    /// The channel buffer is full and the policy is `block`: try again later.
    #[error("channel buffer full; try again")]
    WouldBlock,
    /// The channel is closed.
    #[error("channel closed")]
    Closed,
}

/// What a successful submit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submit {
    /// The message is queued.
    Queued,
    /// The buffer was full and the message was dropped (drop-newest), counted.
    DroppedNewest,
    /// The message is queued; the oldest queued one was dropped to make room, counted.
    QueuedDroppedOldest,
}

/// Heap bytes one allocation costs beyond what it asks for (the allocator's chunk header and
/// rounding), so a memory budget counts what the process really holds.
pub const ALLOC_OVERHEAD: u64 = 16;

/// A channel's shared state apart from its buffers and rings (counters, the delay histogram,
/// the `Arc`), rounded up; `tests/reservation_bytes.rs` measures it.
pub const CHANNEL_FIXED_BYTES: u64 = 64 * 1024;

/// Bytes of one slot of an `ArrayQueue<T>` (the value and its stamp).
pub(crate) fn queue_slot_bytes<T>() -> u64 {
    std::mem::size_of::<(usize, T)>() as u64
}

/// The heap bytes [`ChannelShared::new`] allocates for a channel of `messages` buffered
/// messages of `bytes_per_message` (its buffer reservation, rings and free list included),
/// saturating; computed without allocating, so admission can refuse before anything is
/// allocated.
pub fn reservation_bytes(messages: u32, bytes_per_message: u32) -> u64 {
    let m = u64::from(messages);
    let inline = bytes_per_message as usize <= INLINE_MAX;
    let submit = m.saturating_mul(queue_slot_bytes::<Submitted>()) + ALLOC_OVERHEAD;
    let (free, buffers) = if inline {
        (queue_slot_bytes::<Box<[u8]>>() + ALLOC_OVERHEAD, 0)
    } else {
        let n = m + 1;
        (
            n.saturating_mul(queue_slot_bytes::<Box<[u8]>>()) + ALLOC_OVERHEAD,
            n.saturating_mul(u64::from(bytes_per_message) + ALLOC_OVERHEAD),
        )
    };
    submit
        .saturating_add(free)
        .saturating_add(buffers)
        .saturating_add(CHANNEL_FIXED_BYTES)
}

impl ChannelShared {
    /// Creates the shared state and preallocates the channel's buffers, with its delay
    /// histogram registered in the core's `sink` (control path).
    pub fn new(
        config: ChannelConfig,
        slot: u32,
        doorbell: Arc<Doorbell>,
        sink: &Arc<SampleSink>,
    ) -> Arc<Self> {
        let messages = config.reservation.messages as usize;
        let inline = config.mmax() as usize <= INLINE_MAX;
        let free = ArrayQueue::new(if inline { 1 } else { messages + 1 });
        if !inline {
            for _ in 0..=messages {
                let _ = free.push(crate::mem::prefaulted_bytes(
                    config.reservation.bytes_per_message as usize,
                ));
            }
        }
        Arc::new(Self {
            config,
            slot,
            submit: ArrayQueue::new(messages),
            free,
            inline,
            armed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            doorbell,
            client: None,
            ring_ready: AtomicBool::new(false),
            release_jitter: 0,
            stats: ChannelStats::new(sink),
        })
    }

    /// Creates the shared state of a client-fed channel: its submit ring is a sealed memfd
    /// region (`messages` descriptors, their buffers of `mmax` bytes) to hand to the client.
    /// `release_jitter` is the wait between a client's stamp and the core's take that the
    /// channel was admitted with (see `ChannelShared::arrival_stamp`).
    pub fn new_client(
        config: ChannelConfig,
        slot: u32,
        doorbell: Arc<Doorbell>,
        sink: &Arc<SampleSink>,
        release_jitter: Nanos,
    ) -> Result<Arc<Self>, ShmError> {
        let p = Self::ring_params(&config);
        let region = Region::memfd::<SubmitDesc>(&p, &format!("rtchan-submit-{}", config.id))?;
        Self::with_ring(config, slot, doorbell, sink, region, release_jitter)
    }

    /// The ring a client-fed channel needs.
    pub fn ring_params(config: &ChannelConfig) -> Params {
        Params {
            mmax: config.mmax(),
            capacity: config.reservation.messages.max(1),
            drop_oldest: config.overflow == OverflowPolicy::DropOldest,
            channel: config.id,
        }
    }

    /// A client-fed channel over an existing region (heap regions in tests).
    pub fn with_ring(
        config: ChannelConfig,
        slot: u32,
        doorbell: Arc<Doorbell>,
        sink: &Arc<SampleSink>,
        region: Arc<Region>,
        release_jitter: Nanos,
    ) -> Result<Arc<Self>, ShmError> {
        // A memfd ring waits for the client's `mapped` (and the seal); a heap ring is ours.
        let ready = region.fd().is_none();
        let consumer = Consumer::new(region)?;
        Ok(Arc::new(Self {
            config,
            slot,
            submit: ArrayQueue::new(1),
            free: ArrayQueue::new(1),
            inline: false,
            armed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            doorbell,
            client: Some(consumer),
            ring_ready: AtomicBool::new(ready),
            release_jitter,
            stats: ChannelStats::new(sink),
        }))
    }

    /// The submit ring's region of a client-fed channel (its fd goes to the client).
    pub fn region(&self) -> Option<&Arc<Region>> {
        self.client.as_ref().map(|c| c.region())
    }

    /// Whether the channel's messages come from a client's shared-memory ring.
    #[inline]
    pub fn is_client(&self) -> bool {
        self.client.is_some()
    }

    /// The client has mapped the ring: seal it against new writers and hole punching
    /// ([`Region::seal_writers`]), then let the core read it (control path; idempotent). An
    /// in-process channel has no ring to map: `Ok`.
    pub fn client_mapped(&self) -> Result<(), ShmError> {
        let Some(c) = &self.client else {
            return Ok(());
        };
        if self.ring_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        c.region().seal_writers()?;
        self.ring_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the core reads the client's ring yet (see [`ChannelShared::client_mapped`]).
    pub fn ring_ready(&self) -> bool {
        self.client.is_none() || self.ring_ready.load(Ordering::Acquire)
    }

    /// A client-fed channel has messages the handler has not taken (one shared load).
    #[inline]
    pub(crate) fn client_has_new(&self) -> bool {
        self.client
            .as_ref()
            .is_some_and(|c| self.ring_ready.load(Ordering::Acquire) && c.has_new())
    }

    /// The core takes the next submitted message, if any.
    #[inline]
    pub(crate) fn take(&self) -> Option<Submitted> {
        match &self.client {
            None => self.submit.pop(),
            Some(c) => self.take_client(c),
        }
    }

    /// A validated message from the client's ring; bad descriptors are counted and skipped.
    #[inline]
    fn take_client(&self, c: &Consumer<SubmitDesc>) -> Option<Submitted> {
        if !self.ring_ready.load(Ordering::Acquire) {
            return None;
        }
        let st = &self.stats;
        let t = c.take(|e| match e {
            Event::Invalid(_) => st.invalid_descriptors.inc(),
            Event::DroppedOldest => st.dropped_oldest.inc(),
        })?;
        // The daemon counts what it accepted from the client's ring.
        st.submitted.inc();
        Some(Submitted {
            len: t.desc.len,
            submit_ts: t.desc.submit_ts,
            payload: Payload::Shm(t),
        })
    }

    /// The time a message taken at `now` arrived, for its logical arrival and deadlines.
    /// In-process messages: their stamp (the core's own clock wrote it). Client-fed ones: the
    /// client's stamp held to [`now` − release jitter, `now`], the window admission allows
    /// between a submit and its take; a stamp outside it is counted in
    /// [`ChannelStats::restamped`]. Without the floor a client stamping old times would keep
    /// its logical arrivals in the past and run ahead of every channel under EDF; without
    /// the ceiling a stamp near `u64::MAX` would overflow the deadlines.
    #[inline]
    pub(crate) fn arrival_stamp(&self, msg: &Submitted, now: Nanos) -> Nanos {
        if self.client.is_none() {
            return msg.submit_ts;
        }
        let floor = now.saturating_sub(self.release_jitter);
        let t = msg.submit_ts.clamp(floor, now);
        if t != msg.submit_ts {
            self.stats.restamped.inc();
        }
        t
    }

    /// The bytes of a message this channel's handler holds.
    #[inline]
    pub(crate) fn message<'a>(&'a self, msg: &'a Submitted) -> &'a [u8] {
        match (&msg.payload, &self.client) {
            (Payload::Shm(t), Some(c)) => c.bytes(t),
            _ => msg.data(),
        }
    }

    /// Prefetches what the core touches when this channel's handler runs next: the submit
    /// ring's head, the free list when `pooled`, the counters it bumps per packet.
    #[inline(always)]
    pub(crate) fn prefetch_hot(&self, pooled: bool) {
        use crate::mem::prefetch;
        prefetch(&self.submit);
        if pooled {
            prefetch(&self.free);
        }
        prefetch(&self.stats.packets);
        prefetch(&self.stats.handler_cycles);
    }

    /// A full buffer under the block or drop-newest policy: counted, and the submit's answer.
    fn refuse(&self, policy: OverflowPolicy) -> Result<Submit, SubmitError> {
        if policy == OverflowPolicy::DropNewest {
            self.stats.dropped_newest.inc();
            Ok(Submit::DroppedNewest)
        } else {
            self.stats.would_block.inc();
            Err(SubmitError::WouldBlock)
        }
    }

    /// Messages travel in the ring's slots ([`INLINE_MAX`]).
    pub(crate) fn is_inline(&self) -> bool {
        self.inline
    }

    /// The core gives a message's buffer back once the message is fully written.
    #[inline]
    pub(crate) fn recycle(&self, msg: Submitted) {
        match msg.payload {
            // Cannot fail: there are exactly `messages + 1` buffers and the list holds that many.
            Payload::Pooled(buf) => {
                let _ = self.free.push(buf);
            }
            Payload::Shm(t) => {
                if let Some(c) = &self.client {
                    c.release(t);
                }
            }
            Payload::Inline(_) => {}
        }
    }

    /// The core found the handler idle: disarm, then take a message that raced in (invariant 3).
    #[inline]
    pub(crate) fn disarm_or_take(&self) -> Option<Submitted> {
        if self.client.is_some() {
            // No doorbell: the core's client scan finds later messages.
            return None;
        }
        self.armed.store(false, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.submit.is_empty() || self.armed.swap(true, Ordering::AcqRel) {
            // Empty, or the sender re-armed and rang the doorbell itself.
            return None;
        }
        match self.submit.pop() {
            Some(m) => Some(m),
            None => {
                self.armed.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Marks the handler as active (used when the core starts it without a doorbell).
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Messages waiting in the submit ring.
    pub fn queued(&self) -> usize {
        match &self.client {
            None => self.submit.len(),
            Some(c) => c.region().queued() as usize,
        }
    }

    /// Marks the channel closed: later submits fail with `Closed` (a client sees the flag in
    /// its ring).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(c) = &self.client {
            c.region().close();
        }
    }

    /// True once closed (for a client-fed channel also when its ring was poisoned).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.client.as_ref().is_some_and(|c| c.is_closed())
    }
}

/// The application's handle for submitting messages on a channel. One per channel (the submit
/// ring is single-producer); it is `Send`, so it can move to the thread that produces.
#[derive(Debug)]
pub struct Sender {
    shared: Arc<ChannelShared>,
}

impl Sender {
    /// Wraps the shared state (the dataplane hands these out when a channel opens).
    pub fn new(shared: Arc<ChannelShared>) -> Self {
        Self { shared }
    }

    /// The channel's configuration.
    pub fn config(&self) -> &ChannelConfig {
        &self.shared.config
    }

    /// The channel's statistics.
    pub fn stats(&self) -> &ChannelStats {
        &self.shared.stats
    }

    /// The shared state, for the dataplane's own bookkeeping.
    pub fn shared(&self) -> &Arc<ChannelShared> {
        &self.shared
    }

    /// Submits `data`, stamped with the current CLOCK_MONOTONIC time.
    pub fn submit(&mut self, data: &[u8]) -> Result<Submit, SubmitError> {
        self.submit_at(data, monotonic_now())
    }

    /// Submits `data` stamped `now` (virtual-time tests and replay).
    pub fn submit_at(&mut self, data: &[u8], now: Nanos) -> Result<Submit, SubmitError> {
        let s = &*self.shared;
        let mmax = s.config.mmax();
        if data.len() > mmax as usize {
            return Err(SubmitError::TooLong {
                len: data.len(),
                mmax,
            });
        }
        if s.is_closed() {
            return Err(SubmitError::Closed);
        }
        let policy = s.config.overflow;
        if s.inline {
            let mut a = [0u8; INLINE_MAX];
            a[..data.len()].copy_from_slice(data);
            let msg = Submitted {
                payload: Payload::Inline(a),
                len: data.len() as u32,
                submit_ts: now,
            };
            // Ring full: the buffer is full (the handler may hold one more).
            let outcome = match s.submit.push(msg) {
                Ok(()) => Submit::Queued,
                Err(msg) if policy == OverflowPolicy::DropOldest => {
                    match s.submit.force_push(msg) {
                        Some(_old) => {
                            s.stats.dropped_oldest.inc();
                            Submit::QueuedDroppedOldest
                        }
                        None => Submit::Queued, // the core took one meanwhile
                    }
                }
                Err(_) => return s.refuse(policy),
            };
            return Ok(self.publish(outcome));
        }
        // With messages + 1 buffers, the free list is empty only when the ring is full and the
        // handler holds one: the buffer is full.
        let mut outcome = Submit::Queued;
        let mut buf = match s.free.pop() {
            Some(b) => b,
            None if policy != OverflowPolicy::DropOldest => return s.refuse(policy),
            None => match s.submit.pop() {
                Some(old) => {
                    s.stats.dropped_oldest.inc();
                    outcome = Submit::QueuedDroppedOldest;
                    match old.payload {
                        Payload::Pooled(b) => b,
                        Payload::Inline(_) | Payload::Shm(_) => unreachable!("pooled channel"),
                    }
                }
                // The core took the last one between our two pops.
                None => match s.free.pop() {
                    Some(b) => b,
                    None => return s.refuse(OverflowPolicy::Block),
                },
            },
        };
        buf[..data.len()].copy_from_slice(data);
        let msg = Submitted {
            payload: Payload::Pooled(buf),
            len: data.len() as u32,
            submit_ts: now,
        };
        if let Err(msg) = s.submit.push(msg) {
            // Ring full while one buffer was still free (the handler holds none right now).
            if policy != OverflowPolicy::DropOldest {
                s.recycle(msg);
                return s.refuse(policy);
            }
            if let Some(old) = s.submit.force_push(msg) {
                s.recycle(old);
                s.stats.dropped_oldest.inc();
                outcome = Submit::QueuedDroppedOldest;
            }
        }
        Ok(self.publish(outcome))
    }

    /// Counts a queued message and wakes the handler if it was idle.
    #[inline]
    fn publish(&self, outcome: Submit) -> Submit {
        let s = &*self.shared;
        s.stats.submitted.inc();
        // Invariant 2: publish the message before arming.
        fence(Ordering::SeqCst);
        if !s.armed.swap(true, Ordering::AcqRel) {
            // Cannot fail: the doorbell holds every slot of the core at most once.
            let _ = s.doorbell.push(s.slot);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ChannelSpec;

    /// Both kinds of channel: messages in the ring slot, and in buffers from the free list.
    const MMAX: [u32; 2] = [8, INLINE_MAX as u32 + 1];

    fn shared(policy: OverflowPolicy, bmax: u32) -> (Arc<ChannelShared>, Arc<Doorbell>) {
        shared_with(policy, bmax, 8)
    }

    fn shared_with(
        policy: OverflowPolicy,
        bmax: u32,
        mmax: u32,
    ) -> (Arc<ChannelShared>, Arc<Doorbell>) {
        let spec = ChannelSpec {
            mmax,
            imin: 1000,
            bmax,
            cpu_deadline: 100,
            link_deadline: 200,
            end_to_end_deadline: 300,
        };
        let mut c = ChannelConfig::real_time(5, spec);
        c.overflow = policy;
        let bell = Arc::new(Doorbell::new(4));
        (
            ChannelShared::new(c, 3, bell.clone(), &SampleSink::new()),
            bell,
        )
    }

    #[test]
    fn too_long_is_rejected_not_truncated() {
        let (s, bell) = shared(OverflowPolicy::Block, 2);
        let mut tx = Sender::new(s.clone());
        assert_eq!(
            tx.submit_at(&[0; 9], 0),
            Err(SubmitError::TooLong { len: 9, mmax: 8 })
        );
        assert!(s.submit.is_empty());
        assert!(bell.is_empty());
    }

    #[test]
    fn doorbell_rings_once_until_disarmed() {
        let (s, bell) = shared(OverflowPolicy::Block, 4);
        let mut tx = Sender::new(s.clone());
        tx.submit_at(b"a", 0).unwrap();
        tx.submit_at(b"b", 0).unwrap();
        assert_eq!(bell.len(), 1);
        assert_eq!(bell.pop(), Some(3));
        // Core drains both, then disarms; the next submit rings again.
        assert!(s.take().is_some());
        assert!(s.take().is_some());
        assert!(s.disarm_or_take().is_none());
        tx.submit_at(b"c", 0).unwrap();
        assert_eq!(bell.pop(), Some(3));
    }

    #[test]
    fn disarm_takes_a_message_that_raced_in() {
        for mmax in MMAX {
            let (s, bell) = shared_with(OverflowPolicy::Block, 4, mmax);
            let mut tx = Sender::new(s.clone());
            tx.submit_at(b"a", 0).unwrap();
            bell.pop();
            // The handler is active (armed) when the sender submits again: no doorbell.
            tx.submit_at(b"b", 0).unwrap();
            assert!(bell.is_empty());
            assert!(s.take().is_some());
            // The core now goes idle: it must find "b" instead of stranding it.
            let m = s.disarm_or_take().expect("raced message is taken");
            assert_eq!(&m.data()[..1], b"b");
        }
    }

    #[test]
    fn block_policy_answers_would_block_when_full() {
        for mmax in MMAX {
            let (s, _bell) = shared_with(OverflowPolicy::Block, 2, mmax);
            let mut tx = Sender::new(s.clone());
            tx.submit_at(b"1", 0).unwrap();
            tx.submit_at(b"2", 0).unwrap();
            assert_eq!(tx.submit_at(b"3", 0), Err(SubmitError::WouldBlock));
            // The handler takes one: the ring has room but the free list still has one buffer.
            let m = s.take().unwrap();
            tx.submit_at(b"3", 0).unwrap();
            assert_eq!(tx.submit_at(b"4", 0), Err(SubmitError::WouldBlock));
            s.recycle(m);
            assert_eq!(s.stats.would_block.get(), 2);
            assert_eq!(s.stats.submitted.get(), 3);
        }
    }

    #[test]
    fn drop_newest_keeps_the_queue() {
        for mmax in MMAX {
            let (s, _bell) = shared_with(OverflowPolicy::DropNewest, 2, mmax);
            let mut tx = Sender::new(s.clone());
            tx.submit_at(b"1", 0).unwrap();
            tx.submit_at(b"2", 0).unwrap();
            assert_eq!(tx.submit_at(b"3", 0), Ok(Submit::DroppedNewest));
            assert_eq!(&s.take().unwrap().data()[..1], b"1");
            assert_eq!(&s.take().unwrap().data()[..1], b"2");
            assert_eq!(s.stats.dropped_newest.get(), 1);
        }
    }

    #[test]
    fn drop_oldest_replaces_the_head() {
        for mmax in MMAX {
            let (s, _bell) = shared_with(OverflowPolicy::DropOldest, 2, mmax);
            let mut tx = Sender::new(s.clone());
            tx.submit_at(b"1", 0).unwrap();
            tx.submit_at(b"2", 0).unwrap();
            assert_eq!(tx.submit_at(b"3", 0), Ok(Submit::QueuedDroppedOldest));
            let held = s.take().unwrap(); // handler holds "2"
            assert_eq!(&held.data()[..1], b"2");
            tx.submit_at(b"4", 0).unwrap();
            assert_eq!(tx.submit_at(b"5", 0), Ok(Submit::QueuedDroppedOldest));
            assert_eq!(&s.take().unwrap().data()[..1], b"4");
            assert_eq!(&s.take().unwrap().data()[..1], b"5");
            assert_eq!(s.stats.dropped_oldest.get(), 2);
        }
    }

    #[test]
    fn closed_channel_refuses() {
        let (s, _bell) = shared(OverflowPolicy::Block, 2);
        let mut tx = Sender::new(s.clone());
        s.close();
        assert_eq!(tx.submit_at(b"1", 0), Err(SubmitError::Closed));
    }
}
