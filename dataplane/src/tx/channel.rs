//! The application side of a channel: the sender handle, its submit ring, and the doorbell
//! that wakes the channel's handler on its polling core.
//!
//! # Data flow
//! Every channel's messages travel through one ring type, [`crate::shm`]'s single-producer
//! single-consumer submit ring with its buffers (`messages + 1` of `mmax` bytes, the channel's
//! buffer reservation). The producer writes a message straight into one of the ring's buffers,
//! pushes a descriptor (buffer, length, submit stamp) and publishes it; the polling core takes
//! the descriptor, fragments the message from the buffer and gives the buffer back on the
//! ring's free list when its last packet is written. Nothing allocates after open, and the
//! core never copies a message before its packets.
//!
//! * **In-process** ([`ChannelShared::new`], [`Sender`]): the ring is in this process's memory
//!   (a heap region); [`Sender::submit`] produces, and rings the core's doorbell with the
//!   handler's slot when the handler was idle. A drop-oldest channel evicts the oldest queued
//!   message itself when the ring is full (`shm` invariant 9), so a submit never waits.
//! * **Client-fed** ([`ChannelShared::new_client`]): the ring is a sealed memfd region mapped
//!   by another process, which produces; the core validates every descriptor and counts bad
//!   ones in [`ChannelStats::invalid_descriptors`]. A client cannot ring the doorbell: the
//!   core looks at client-fed channels' tails in its client scan instead (`Core`). The core
//!   leaves a memfd ring alone until the client has mapped it and the daemon sealed it against
//!   hole punching ([`ChannelShared::client_mapped`]): from then on no page of it can vanish
//!   under the core. Drop-oldest rings carry one descriptor and one buffer of slack, trimmed by
//!   the core (`shm` invariant 6), since the client cannot take messages away from the core.
//!
//! # Wake-up protocol (numbered invariants)
//! 1. `armed == true` means the core will look at the submit ring again without another
//!    doorbell: the slot is in the doorbell, or the handler is active (holds a message or is
//!    queued in the scheduler).
//! 2. The sender publishes the message, then a `SeqCst` fence, then `armed.swap(true)`; only
//!    the swap that turns `false` into `true` pushes the doorbell, so a slot is in the doorbell
//!    at most once and the doorbell (sized to the core's channel count) never overflows.
//! 3. The core disarms only when the handler is idle: `armed.store(false)`, a `SeqCst` fence,
//!    then it re-reads the ring; a message found there is taken by re-arming with a swap. The
//!    two fences order each side's write before its read (a Dekker pair), so a message pushed
//!    concurrently is seen by one side or the other: none is stranded.

use crate::shm::{Consumer, Event, Params, Producer, Region, ShmError, SubmitDesc, Taken};
use crate::spec::{ChannelConfig, OverflowPolicy};
use crate::stats::{ChannelStats, SampleSink};
use crate::time::{monotonic_now, Nanos};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// A message on its way from the producer to the handler: its descriptor, taken from the
/// submit ring (the bytes stay in the ring's buffer, read through the channel).
#[derive(Debug)]
pub struct Submitted {
    /// The descriptor, validated; its buffer is the core's until the message is recycled.
    pub taken: Taken<SubmitDesc>,
    /// Message length.
    pub len: u32,
    /// Submit time (CLOCK_MONOTONIC ns).
    pub submit_ts: Nanos,
}

/// Rounds a submit tries for a buffer (a free one, or the oldest evicted) before it answers
/// would-block: each failed round means the core is handing a buffer back right then.
const SUBMIT_ROUNDS: usize = 4;

/// A core's doorbell: slots of handlers that have new messages.
pub type Doorbell = ArrayQueue<u32>;

/// State shared between a channel's producer and its handler.
#[derive(Debug)]
pub struct ChannelShared {
    /// The validated configuration.
    pub config: ChannelConfig,
    /// Handler slot on the core (the doorbell's payload).
    pub slot: u32,
    /// The consuming end of the submit ring (the core's).
    ring: Consumer<SubmitDesc>,
    /// The ring's producer is another process (a client); in-process otherwise.
    client: bool,
    armed: AtomicBool,
    closed: AtomicBool,
    /// Messages the core may still take from a closed client-fed ring (`u32::MAX` while
    /// open): at most what the ring held at the close, so a client that goes on publishing
    /// after it cannot keep a drain or a discard running on the core.
    close_budget: AtomicU32,
    doorbell: Arc<Doorbell>,
    /// The core may read the ring: a client's memfd ring once the client mapped it and the
    /// daemon sealed it against hole punching ([`ChannelShared::client_mapped`]); a heap ring
    /// from the start. Before, the core does not touch the ring.
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

/// A channel's shared state apart from its ring (counters, the delay histogram, the `Arc`),
/// rounded up; `tests/reservation_bytes.rs` measures it.
pub const CHANNEL_FIXED_BYTES: u64 = 64 * 1024;

/// Bytes of one slot of an `ArrayQueue<T>` (the value and its stamp).
pub(crate) fn queue_slot_bytes<T>() -> u64 {
    std::mem::size_of::<(usize, T)>() as u64
}

/// The in-process submit ring of `messages` buffered messages of up to `bytes_per_message`.
fn in_process_params(messages: u32, bytes_per_message: u32, channel: u32) -> Params {
    Params {
        mmax: bytes_per_message.max(1),
        capacity: messages.max(1),
        // Drop-oldest evicts in the producer (shm invariant 9): no slack.
        drop_oldest: false,
        channel,
    }
}

/// The heap bytes [`ChannelShared::new`] allocates for a channel of `messages` buffered
/// messages of `bytes_per_message` (its buffer reservation: the submit ring with its
/// buffers, descriptors and free list, and the core's bitmap of held buffers), saturating
/// (`u64::MAX` for a ring too large to build); computed without allocating, so admission can
/// refuse before anything is allocated.
pub fn reservation_bytes(messages: u32, bytes_per_message: u32) -> u64 {
    let p = in_process_params(messages, bytes_per_message, 0);
    let Ok(region) = Region::bytes_for::<SubmitDesc>(&p) else {
        return u64::MAX;
    };
    // The consumer's bitmap: one bit per buffer (capacity + 1), in 64-bit words.
    let held = (u64::from(p.capacity) + 1).div_ceil(64) * 8 + ALLOC_OVERHEAD;
    region
        .saturating_add(ALLOC_OVERHEAD)
        .saturating_add(held)
        .saturating_add(CHANNEL_FIXED_BYTES)
}

impl ChannelShared {
    /// Creates the shared state of an in-process channel and its submit ring in this
    /// process's memory, with its delay histogram registered in the core's `sink` (control
    /// path; the ring's pages are faulted in now). Fails only for a ring too large to build.
    pub fn new(
        config: ChannelConfig,
        slot: u32,
        doorbell: Arc<Doorbell>,
        sink: &Arc<SampleSink>,
    ) -> Result<Arc<Self>, ShmError> {
        let p = in_process_params(
            config.reservation.messages,
            config.reservation.bytes_per_message.max(config.mmax()),
            config.id,
        );
        let region = Region::heap::<SubmitDesc>(&p)?;
        // Only a drop-oldest sender evicts; the others keep the consumer's head single-writer
        // (a plain store per take instead of a compare-and-swap).
        let ring = if config.overflow == OverflowPolicy::DropOldest {
            Consumer::new_evictable(region)?
        } else {
            Consumer::new(region)?
        };
        Ok(Self::assemble(config, slot, doorbell, sink, ring, false, 0))
    }

    fn assemble(
        config: ChannelConfig,
        slot: u32,
        doorbell: Arc<Doorbell>,
        sink: &Arc<SampleSink>,
        ring: Consumer<SubmitDesc>,
        client: bool,
        release_jitter: Nanos,
    ) -> Arc<Self> {
        // A memfd ring waits for the client's `mapped` (and the seal); a heap ring is ours.
        let ready = ring.region().fd().is_none();
        Arc::new(Self {
            config,
            slot,
            ring,
            client,
            armed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            close_budget: AtomicU32::new(u32::MAX),
            doorbell,
            ring_ready: AtomicBool::new(ready),
            release_jitter,
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
        let ring = Consumer::new(region)?;
        Ok(Self::assemble(
            config,
            slot,
            doorbell,
            sink,
            ring,
            true,
            release_jitter,
        ))
    }

    /// The submit ring's region of a client-fed channel (its fd goes to the client); `None`
    /// for an in-process channel, whose ring only this process sees.
    pub fn region(&self) -> Option<&Arc<Region>> {
        self.client.then(|| self.ring.region())
    }

    /// Whether the channel's messages come from a client's shared-memory ring.
    #[inline]
    pub fn is_client(&self) -> bool {
        self.client
    }

    /// The client has mapped the ring: seal it against new writers and hole punching
    /// ([`Region::seal_writers`]), then let the core read it (control path; idempotent). An
    /// in-process channel's ring is ready from the start: `Ok`.
    pub fn client_mapped(&self) -> Result<(), ShmError> {
        if self.ring_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.ring.region().seal_writers()?;
        self.ring_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the core reads the ring yet (see [`ChannelShared::client_mapped`]).
    pub fn ring_ready(&self) -> bool {
        self.ring_ready.load(Ordering::Acquire)
    }

    /// A client-fed channel has messages the handler has not taken (one shared load).
    #[inline]
    pub(crate) fn client_has_new(&self) -> bool {
        self.client && self.ring_ready.load(Ordering::Acquire) && self.ring.has_new()
    }

    /// The core takes the next submitted message, if any: a validated descriptor (bad ones,
    /// only a client can write, are counted and skipped).
    #[inline]
    pub(crate) fn take(&self) -> Option<Submitted> {
        if !self.ring_ready.load(Ordering::Acquire) {
            return None;
        }
        let budget = if self.client {
            self.close_budget.load(Ordering::Acquire)
        } else {
            u32::MAX
        };
        if budget == 0 {
            return None;
        }
        let st = &self.stats;
        let t = self.ring.take(|e| match e {
            Event::Invalid(_) => st.invalid_descriptors.inc(),
            Event::DroppedOldest => st.dropped_oldest.inc(),
        })?;
        if budget != u32::MAX {
            // Only the core takes: a plain store counts the budget down.
            self.close_budget.store(budget - 1, Ordering::Relaxed);
        }
        if self.client {
            // The daemon counts what it accepted from the client's ring.
            st.submitted.inc();
        }
        Some(Submitted {
            len: t.desc.len,
            submit_ts: t.desc.submit_ts,
            taken: t,
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
        if !self.client {
            return msg.submit_ts;
        }
        let floor = now.saturating_sub(self.release_jitter);
        let t = msg.submit_ts.clamp(floor, now);
        if t != msg.submit_ts {
            self.stats.restamped.inc();
        }
        t
    }

    /// The bytes of a message this channel's handler holds (in the ring's buffer).
    #[inline]
    pub(crate) fn message<'a>(&'a self, msg: &'a Submitted) -> &'a [u8] {
        self.ring.bytes(&msg.taken)
    }

    /// Prefetches what the core touches when this channel's handler runs next: the ring's
    /// indices and the counters it bumps per packet.
    #[inline(always)]
    pub(crate) fn prefetch_hot(&self) {
        use crate::mem::prefetch;
        prefetch(&self.ring);
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

    /// The core gives a message's buffer back once the message is fully written.
    #[inline]
    pub(crate) fn recycle(&self, msg: Submitted) {
        self.ring.release(msg.taken);
    }

    /// The core found the handler idle: disarm, then take a message that raced in (invariant 3).
    #[inline]
    pub(crate) fn disarm_or_take(&self) -> Option<Submitted> {
        if self.client {
            // No doorbell: the core's client scan finds later messages.
            return None;
        }
        // A take can come back empty after `has_new` said otherwise: a drop-oldest sender
        // evicted the message meanwhile (shm invariant 9) and, seeing `armed`, rang no
        // doorbell for the one it pushed. So an empty take disarms again and looks again;
        // each round needs an eviction the sender completed (lock-free, one per submit).
        loop {
            self.armed.store(false, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !self.ring.has_new() || self.armed.swap(true, Ordering::AcqRel) {
                // Empty, or the sender re-armed and rang the doorbell itself.
                return None;
            }
            if let Some(m) = self.take() {
                return Some(m);
            }
        }
    }

    /// Marks the handler as active (used when the core starts it without a doorbell).
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Messages waiting in the submit ring.
    pub fn queued(&self) -> usize {
        self.ring.region().queued() as usize
    }

    /// Marks the channel closed: later submits fail with `Closed` (a client sees the flag in
    /// its ring).
    pub fn close(&self) {
        if self.client && !self.closed.load(Ordering::Acquire) {
            // The ring holds at most capacity + 1 messages (drop-oldest's slack).
            let p = self.ring.region().params();
            self.close_budget
                .store(p.capacity.saturating_add(1), Ordering::Release);
        }
        self.closed.store(true, Ordering::Release);
        self.ring.region().close();
    }

    /// True once closed (for a client-fed channel also when its ring was poisoned).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.ring.is_closed()
    }
}

/// The application's handle for submitting messages on an in-process channel: the producing
/// end of its submit ring. One per channel (the ring is single-producer); it is `Send`, so it
/// can move to the thread that produces.
#[derive(Debug)]
pub struct Sender {
    shared: Arc<ChannelShared>,
    ring: Producer<SubmitDesc>,
    capacity: u64,
}

impl Sender {
    /// Takes the producing end of an in-process channel's ring (the dataplane hands these out
    /// when a channel opens). Refused for a client-fed channel (its producer is the client)
    /// and for a second sender of one channel.
    pub fn new(shared: Arc<ChannelShared>) -> Result<Self, ShmError> {
        if shared.client {
            return Err(ShmError::EndTaken(
                "producer (a client-fed channel's client)",
            ));
        }
        let ring = Producer::new(shared.ring.region().clone())?;
        Ok(Self {
            capacity: u64::from(ring.capacity()),
            shared,
            ring,
        })
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
        // With `messages + 1` buffers a buffer is free whenever the ring has room (the core
        // holds at most one), and the oldest can be evicted whenever it is full. A round fails
        // only while the core is between taking a message and handing its buffer back, a few
        // instructions: a few rounds, then the answer is "try again".
        let mut outcome = Submit::Queued;
        let mut buf = None;
        for _ in 0..SUBMIT_ROUNDS {
            if self.ring.queued() < self.capacity {
                buf = self.ring.grant(|_| {});
                if buf.is_some() {
                    break;
                }
            }
            if policy != OverflowPolicy::DropOldest {
                return s.refuse(policy);
            }
            if let Some(b) = self.ring.evict_oldest(&s.ring) {
                s.stats.dropped_oldest.inc();
                outcome = Submit::QueuedDroppedOldest;
                buf = Some(b);
                break;
            }
            std::hint::spin_loop();
        }
        let Some(b) = buf else {
            return s.refuse(OverflowPolicy::Block);
        };
        self.ring.buffer_mut(b)[..data.len()].copy_from_slice(data);
        self.ring.push(SubmitDesc {
            buf: b,
            len: data.len() as u32,
            submit_ts: now,
        });
        self.ring.publish();
        Ok(self.wake(outcome))
    }

    /// Counts a queued message and wakes the handler if it was idle.
    #[inline]
    fn wake(&self, outcome: Submit) -> Submit {
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

    /// A message of one cache line's buffer, and one of several.
    const MMAX: [u32; 2] = [8, 65];

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
            ChannelShared::new(c, 3, bell.clone(), &SampleSink::new()).unwrap(),
            bell,
        )
    }

    #[test]
    fn too_long_is_rejected_not_truncated() {
        let (s, bell) = shared(OverflowPolicy::Block, 2);
        let mut tx = Sender::new(s.clone()).unwrap();
        assert_eq!(
            tx.submit_at(&[0; 9], 0),
            Err(SubmitError::TooLong { len: 9, mmax: 8 })
        );
        assert_eq!(s.queued(), 0);
        assert!(bell.is_empty());
    }

    #[test]
    fn doorbell_rings_once_until_disarmed() {
        let (s, bell) = shared(OverflowPolicy::Block, 4);
        let mut tx = Sender::new(s.clone()).unwrap();
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
            let mut tx = Sender::new(s.clone()).unwrap();
            tx.submit_at(b"a", 0).unwrap();
            bell.pop();
            // The handler is active (armed) when the sender submits again: no doorbell.
            tx.submit_at(b"b", 0).unwrap();
            assert!(bell.is_empty());
            assert!(s.take().is_some());
            // The core now goes idle: it must find "b" instead of stranding it.
            let m = s.disarm_or_take().expect("raced message is taken");
            assert_eq!(&s.message(&m)[..1], b"b");
        }
    }

    #[test]
    fn block_policy_answers_would_block_when_full() {
        for mmax in MMAX {
            let (s, _bell) = shared_with(OverflowPolicy::Block, 2, mmax);
            let mut tx = Sender::new(s.clone()).unwrap();
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
            let mut tx = Sender::new(s.clone()).unwrap();
            tx.submit_at(b"1", 0).unwrap();
            tx.submit_at(b"2", 0).unwrap();
            assert_eq!(tx.submit_at(b"3", 0), Ok(Submit::DroppedNewest));
            assert_eq!(
                &{
                    let m = s.take().unwrap();
                    s.message(&m)[..1].to_vec()
                }[..],
                b"1"
            );
            assert_eq!(
                &{
                    let m = s.take().unwrap();
                    s.message(&m)[..1].to_vec()
                }[..],
                b"2"
            );
            assert_eq!(s.stats.dropped_newest.get(), 1);
        }
    }

    #[test]
    fn drop_oldest_replaces_the_head() {
        for mmax in MMAX {
            let (s, _bell) = shared_with(OverflowPolicy::DropOldest, 2, mmax);
            let mut tx = Sender::new(s.clone()).unwrap();
            tx.submit_at(b"1", 0).unwrap();
            tx.submit_at(b"2", 0).unwrap();
            assert_eq!(tx.submit_at(b"3", 0), Ok(Submit::QueuedDroppedOldest));
            let held = s.take().unwrap(); // handler holds "2"
            assert_eq!(&s.message(&held)[..1], b"2");
            tx.submit_at(b"4", 0).unwrap();
            assert_eq!(tx.submit_at(b"5", 0), Ok(Submit::QueuedDroppedOldest));
            assert_eq!(
                &{
                    let m = s.take().unwrap();
                    s.message(&m)[..1].to_vec()
                }[..],
                b"4"
            );
            assert_eq!(
                &{
                    let m = s.take().unwrap();
                    s.message(&m)[..1].to_vec()
                }[..],
                b"5"
            );
            assert_eq!(s.stats.dropped_oldest.get(), 2);
        }
    }

    #[test]
    fn closed_channel_refuses() {
        let (s, _bell) = shared(OverflowPolicy::Block, 2);
        let mut tx = Sender::new(s.clone()).unwrap();
        s.close();
        assert_eq!(tx.submit_at(b"1", 0), Err(SubmitError::Closed));
    }

    /// A client that goes on publishing into a closed channel's ring gets at most what the
    /// ring held at the close taken by the core (review H2: a discard or drain loop on the
    /// core must end however fast the client refills).
    #[test]
    fn a_closed_client_ring_yields_at_most_what_it_held() {
        let spec = crate::spec::ChannelSpec {
            mmax: 8,
            imin: 1000,
            bmax: 4,
            cpu_deadline: 100,
            link_deadline: 200,
            end_to_end_deadline: 300,
        };
        let c = ChannelConfig::real_time(5, spec);
        let region = Region::heap::<SubmitDesc>(&ChannelShared::ring_params(&c)).unwrap();
        let bell = Arc::new(Doorbell::new(4));
        let s =
            ChannelShared::with_ring(c, 3, bell, &SampleSink::new(), region.clone(), 0).unwrap();
        let mut p = Producer::<SubmitDesc>::new(region).unwrap();
        let fill = |p: &mut Producer<SubmitDesc>| {
            while p.room() > 0 {
                let Some(b) = p.grant(|_| {}) else { break };
                p.push(SubmitDesc {
                    buf: b,
                    len: 1,
                    submit_ts: 0,
                });
            }
            p.publish();
        };
        fill(&mut p);
        s.close();
        let mut taken = 0;
        for _ in 0..100 {
            fill(&mut p); // the client ignores the closed flag
            while let Some(m) = s.take() {
                s.recycle(m);
                taken += 1;
            }
        }
        assert_eq!(
            taken,
            4 + 1,
            "the capacity and the slack, nothing published after"
        );
    }

    /// Review H1: a drop-oldest sender of capacity 1 evicting while the core disarms must not
    /// strand its last message (the core's take comes back empty after `has_new` said
    /// otherwise; the sender, seeing `armed`, rang no doorbell). Whatever the interleaving,
    /// the last message submitted is taken once the sender stops.
    #[test]
    fn the_last_message_of_an_evicting_sender_is_never_stranded() {
        for round in 0..20u32 {
            let (s, bell) = shared_with(OverflowPolicy::DropOldest, 1, 8);
            let mut tx = Sender::new(s.clone()).unwrap();
            let n = 2_000u32;
            let done = Arc::new(AtomicBool::new(false));
            let done2 = done.clone();
            let sender = std::thread::spawn(move || {
                for i in 0..n {
                    // Would-block only while the core hands a buffer back: try again.
                    while tx.submit_at(&i.to_le_bytes(), 0).is_err() {
                        std::thread::yield_now();
                    }
                    if i % 64 == round % 64 {
                        std::thread::yield_now();
                    }
                }
                done2.store(true, Ordering::Release);
            });
            let (mut active, mut last) = (false, None);
            loop {
                let finished = done.load(Ordering::Acquire);
                if bell.pop().is_some() {
                    active = true;
                }
                if active {
                    while let Some(m) = s.take() {
                        last = Some(u32::from_le_bytes(s.message(&m)[..4].try_into().unwrap()));
                        s.recycle(m);
                    }
                    match s.disarm_or_take() {
                        Some(m) => {
                            last = Some(u32::from_le_bytes(s.message(&m)[..4].try_into().unwrap()));
                            s.recycle(m);
                        }
                        None => active = false,
                    }
                } else if finished && bell.is_empty() {
                    break;
                }
            }
            sender.join().unwrap();
            assert_eq!(
                last,
                Some(n - 1),
                "round {round}: the last message was stranded"
            );
        }
    }
}
