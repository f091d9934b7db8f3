//! Per-channel statistics, written by one thread and read by any without locks on the hot path.
//!
//! # Counters
//! Counters are atomics. Each has exactly one writer (the polling core, or the channel's single
//! sender for the submit-side counters), so a plain load + store with `Relaxed` ordering is
//! enough and avoids a locked instruction per packet; readers see a value at most one update
//! old. Counters are grouped by writer, each group on its own cache lines
//! ([`ChannelStats`] is `repr(C, align(64))` with a pad after the sender's group), so the sender
//! and the core never write the same line.
//!
//! # Delay samples: core → sample ring → control thread → histogram
//! ```text
//! polling core ── SampleProducer::push(key, ns) ──▶ SampleRing (per core, SPSC, fixed) ──▶
//!   SampleSink::fold (control thread, companion thread, or any reader) ──▶ HdrHistogram[key]
//! ```
//! The core never touches a histogram, a mutex or the allocator for a sample: it stores one
//! `u64` (key and value packed) into a preallocated ring slot and publishes the head; a full
//! ring drops the sample and the core counts it in the channel's `*_samples_dropped` counter.
//! Histograms live on the control side, one per channel, registered in the core's
//! [`SampleSink`] under a key when the channel's shared state is built (control thread) and
//! unregistered when its last reference goes (control thread: the core hands closed channels
//! back, see `core::Command`). Every reading ([`SharedHistogram::snapshot`]) folds the rings
//! first, so it holds every sample the core pushed before the read; between reads the
//! running core's companion thread folds every [`FOLD_INTERVAL`], so the ring overflows only
//! if the folder is kept off the CPU for the time the ring holds at full rate (about 10 ms at
//! 3 M messages/s).

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the counter's one writer may call this (see the module docs).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Subtracts `n`, stopping at zero. Single writer, like [`Counter::add`].
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).saturating_sub(n),
            Ordering::Relaxed,
        );
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Highest delay a histogram records, ns (60 s); larger values are clamped and counted.
pub const HIST_MAX_NS: u64 = 60_000_000_000;
/// Significant figures the histograms keep (1% resolution: enough for percentiles of delay).
pub const HIST_SIGFIG: u8 = 2;

/// A fresh delay histogram: 1 ns to [`HIST_MAX_NS`], [`HIST_SIGFIG`] significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, HIST_SIGFIG).expect("static bounds are valid")
}

/// Records `v` into `h`, clamping into range (a clamp is still a recorded sample).
#[inline]
pub fn record_clamped(h: &mut Histogram<u64>, v: u64) {
    h.saturating_record(v.clamp(1, HIST_MAX_NS));
}

/// Samples one [`SampleRing`] holds (a power of two): 32,768 × 8 bytes = 256 KiB per ring,
/// about 10 ms of one-packet messages at 3 M messages/s, ten times [`FOLD_INTERVAL`].
pub const SAMPLE_RING_CAPACITY: usize = 1 << 15;
/// How often a running core's companion thread folds its sample rings into the histograms.
pub const FOLD_INTERVAL: Duration = Duration::from_millis(1);
/// Bits of a packed sample that hold the value (ns): 2^36 ns ≈ 68.7 s > [`HIST_MAX_NS`].
const VALUE_BITS: u32 = 36;
/// Most histograms one sink can key (the rest of the packed sample's bits).
pub const MAX_SAMPLE_KEYS: u32 = 1 << (64 - VALUE_BITS);

/// A value on its own cache line(s): two writers' data never share a line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A single-producer single-consumer ring of packed samples, allocated and pre-faulted once.
/// The producer (the polling core, through its [`SampleProducer`]) writes slots and publishes
/// `head`; the consumer (whoever holds the sink's fold lock) reads up to `head` and publishes
/// `tail`. Slots are atomics stored `Relaxed`: the `Release` head store / `Acquire` load pair
/// orders them, and the same pair on `tail` keeps the producer off slots still being read.
#[derive(Debug)]
pub struct SampleRing {
    slots: Box<[AtomicU64]>,
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    taken: AtomicBool,
}

impl SampleRing {
    fn new() -> Self {
        let slots: Box<[AtomicU64]> = (0..SAMPLE_RING_CAPACITY)
            .map(|_| AtomicU64::new(0))
            .collect();
        // Touch every page now (control path), not on the core's first lap.
        for s in slots.iter().step_by(512) {
            s.store(0, Ordering::Relaxed);
        }
        Self {
            slots,
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            taken: AtomicBool::new(false),
        }
    }

    /// Samples waiting to be folded.
    pub fn len(&self) -> usize {
        self.head
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    /// True when no sample waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which of a sink's two rings (each has its own single producer on the core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleSource {
    /// Submit-to-release delays, pushed by the core's link release.
    Delay = 0,
    /// End-to-end latencies, pushed by the core's receive path.
    Latency = 1,
}

#[derive(Debug, Default)]
struct FoldTable {
    hists: Vec<Option<Arc<Mutex<Histogram<u64>>>>>,
    free: Vec<u32>,
    /// Samples whose key had no histogram (cannot happen while keys are freed only after a
    /// fold; counted so that it would show).
    orphans: u64,
}

/// One core's sample rings and the histograms their samples are folded into.
#[derive(Debug)]
pub struct SampleSink {
    rings: [SampleRing; 2],
    table: Mutex<FoldTable>,
}

impl SampleSink {
    /// A sink with both rings allocated (control path).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            rings: [SampleRing::new(), SampleRing::new()],
            table: Mutex::new(FoldTable::default()),
        })
    }

    /// The producer of ring `source`: one per ring, taken once (by the core when built).
    ///
    /// # Panics
    /// If that ring's producer was already taken (two producers would break the SPSC ring).
    pub fn producer(self: &Arc<Self>, source: SampleSource) -> SampleProducer {
        let ring = &self.rings[source as usize];
        assert!(
            !ring.taken.swap(true, Ordering::AcqRel),
            "the {source:?} sample ring already has its producer"
        );
        SampleProducer {
            sink: self.clone(),
            ring: source as usize,
            head: ring.head.load(Ordering::Relaxed),
            tail_cache: ring.tail.load(Ordering::Acquire),
        }
    }

    /// Samples waiting in both rings.
    pub fn pending(&self) -> usize {
        self.rings.iter().map(SampleRing::len).sum()
    }

    /// Samples folded so far whose key had no histogram (should stay 0).
    pub fn orphans(&self) -> u64 {
        self.lock_table().orphans
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, FoldTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a fresh histogram and returns its handle (control path: allocates).
    ///
    /// # Panics
    /// When [`MAX_SAMPLE_KEYS`] histograms are registered at once (far beyond memory).
    pub fn register(self: &Arc<Self>) -> SharedHistogram {
        let hist = Arc::new(Mutex::new(new_histogram()));
        let mut t = self.lock_table();
        let key = match t.free.pop() {
            Some(k) => {
                t.hists[k as usize] = Some(hist.clone());
                k
            }
            None => {
                let k = t.hists.len() as u32;
                assert!(
                    k < MAX_SAMPLE_KEYS,
                    "more than {MAX_SAMPLE_KEYS} histograms on one core"
                );
                t.hists.push(Some(hist.clone()));
                k
            }
        };
        SharedHistogram {
            hist,
            sink: self.clone(),
            key,
        }
    }

    /// Moves every waiting sample into its histogram; returns how many. With `wait == false`
    /// it gives up (leaving the rest in the ring) instead of waiting for the fold lock or for
    /// a histogram a reader holds.
    pub fn fold(&self, wait: bool) -> usize {
        if self.pending() == 0 {
            return 0;
        }
        let mut t = if wait {
            self.lock_table()
        } else {
            match self.table.try_lock() {
                Ok(t) => t,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return 0,
            }
        };
        let mut n = 0;
        let mut orphans = 0;
        for ring in &self.rings {
            let head = ring.head.load(Ordering::Acquire);
            let mut tail = ring.tail.load(Ordering::Relaxed);
            // Consecutive samples of one key share one lock of its histogram.
            let mut cur: Option<(u32, std::sync::MutexGuard<'_, Histogram<u64>>)> = None;
            while tail != head {
                let packed = ring.slots[tail % SAMPLE_RING_CAPACITY].load(Ordering::Relaxed);
                let key = (packed >> VALUE_BITS) as u32;
                let v = packed & ((1 << VALUE_BITS) - 1);
                if cur.as_ref().map(|c| c.0) != Some(key) {
                    cur = None;
                    let Some(h) = t.hists.get(key as usize).and_then(Option::as_ref) else {
                        orphans += 1;
                        tail = tail.wrapping_add(1);
                        continue;
                    };
                    let g = if wait {
                        h.lock().unwrap_or_else(|p| p.into_inner())
                    } else {
                        match h.try_lock() {
                            Ok(g) => g,
                            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                            Err(std::sync::TryLockError::WouldBlock) => break,
                        }
                    };
                    cur = Some((key, g));
                }
                if let Some((_, g)) = cur.as_mut() {
                    record_clamped(g, v);
                }
                tail = tail.wrapping_add(1);
                n += 1;
            }
            drop(cur);
            ring.tail.store(tail, Ordering::Release);
        }
        t.orphans += orphans;
        n
    }

    fn unregister(&self, key: u32) {
        // Samples of this key still in the rings go to its histogram first, so none is
        // counted under the next channel that reuses the key.
        self.fold(true);
        let mut t = self.lock_table();
        t.hists[key as usize] = None;
        t.free.push(key);
    }
}

/// The core's end of one [`SampleRing`]: owns the head, caches the tail.
#[derive(Debug)]
pub struct SampleProducer {
    sink: Arc<SampleSink>,
    ring: usize,
    head: usize,
    tail_cache: usize,
}

impl SampleProducer {
    /// Pushes sample `v` (ns, clamped to [`HIST_MAX_NS`]) for histogram `key`; returns false
    /// (nothing written, nothing waited for) when the ring is full.
    #[inline]
    pub fn push(&mut self, key: u32, v: u64) -> bool {
        let ring = &self.sink.rings[self.ring];
        if self.head.wrapping_sub(self.tail_cache) >= SAMPLE_RING_CAPACITY {
            self.tail_cache = ring.tail.load(Ordering::Acquire);
            if self.head.wrapping_sub(self.tail_cache) >= SAMPLE_RING_CAPACITY {
                return false;
            }
        }
        let packed = ((key as u64) << VALUE_BITS) | v.min(HIST_MAX_NS);
        ring.slots[self.head % SAMPLE_RING_CAPACITY].store(packed, Ordering::Relaxed);
        self.head = self.head.wrapping_add(1);
        ring.head.store(self.head, Ordering::Release);
        true
    }

    /// The sink this producer feeds.
    pub fn sink(&self) -> &Arc<SampleSink> {
        &self.sink
    }
}

/// A histogram registered in a core's [`SampleSink`]: the core pushes samples under
/// [`SharedHistogram::key`]; readers take [`SharedHistogram::snapshot`]s. Dropping it folds
/// what is pending and frees the key (control side: the core never drops one).
#[derive(Debug)]
pub struct SharedHistogram {
    hist: Arc<Mutex<Histogram<u64>>>,
    sink: Arc<SampleSink>,
    key: u32,
}

impl SharedHistogram {
    /// The key the core pushes this histogram's samples under.
    pub fn key(&self) -> u32 {
        self.key
    }

    /// The sink it is registered in.
    pub fn sink(&self) -> &Arc<SampleSink> {
        &self.sink
    }

    /// Folds the sink's pending samples, then copies the histogram (control path: allocates).
    /// The copy holds every sample the core pushed before the call.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.sink.fold(true);
        self.lock().clone()
    }

    /// Locks the histogram as it is (no fold): what a reader holding it looks like to the
    /// folder, which then leaves samples in the ring rather than wait (or waits, for a
    /// blocking fold).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.hist.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SharedHistogram {
    fn drop(&mut self) {
        self.sink.unregister(self.key);
    }
}

/// Statistics of one channel. `repr(C, align(64))`: the sender's counters fill the first
/// line (padded), the core's follow on lines of their own, so the two writers never share a
/// line (see the module docs).
#[derive(Debug)]
#[repr(C, align(64))]
pub struct ChannelStats {
    /// Messages accepted by submit (sender).
    pub submitted: Counter,
    /// Submits refused with `WouldBlock` (block policy; sender).
    pub would_block: Counter,
    /// New messages dropped because the buffer was full (drop-newest; sender).
    pub dropped_newest: Counter,
    /// Queued messages dropped to make room (drop-oldest; sender).
    pub dropped_oldest: Counter,
    _sender_end: [u64; 4],
    /// Messages discarded when the channel closed without draining (core).
    pub dropped_on_close: Counter,
    /// Messages whose every packet was released to the port (core).
    pub messages_sent: Counter,
    /// Packets released to the port (core).
    pub packets: Counter,
    /// Frame bytes released to the port (core).
    pub bytes: Counter,
    /// Packets released after their link deadline (core).
    pub late_packets: Counter,
    /// Packets dropped at the link for being late (drop policy; core).
    pub late_dropped: Counter,
    /// Handler runs that exceeded the cycle budget (core).
    pub budget_overruns: Counter,
    /// Cycles beyond the budget, summed over overruns (charged to this channel; core).
    pub overrun_cycles: Counter,
    /// Cycles spent in this channel's handler runs (core).
    pub handler_cycles: Counter,
    /// Delay samples lost because the core's sample ring was full (core).
    pub delay_samples_dropped: Counter,
    /// Descriptors a client wrote into its shared-memory ring that failed validation
    /// (refused, not sent; see `shm`; core).
    pub invalid_descriptors: Counter,
    /// Client-fed messages whose stamp was outside the admitted window
    /// [take − release jitter, take] and was clamped to it for their deadlines (core).
    pub restamped: Counter,
    /// Delay from submit to the release of the message's last packet (read-only after open).
    pub(crate) delay: SharedHistogram,
}

impl ChannelStats {
    /// Zeroed counters and a delay histogram registered in `sink` (control path).
    pub fn new(sink: &Arc<SampleSink>) -> Self {
        Self {
            submitted: Counter::default(),
            would_block: Counter::default(),
            dropped_newest: Counter::default(),
            dropped_oldest: Counter::default(),
            _sender_end: [0; 4],
            dropped_on_close: Counter::default(),
            messages_sent: Counter::default(),
            packets: Counter::default(),
            bytes: Counter::default(),
            late_packets: Counter::default(),
            late_dropped: Counter::default(),
            budget_overruns: Counter::default(),
            overrun_cycles: Counter::default(),
            handler_cycles: Counter::default(),
            delay_samples_dropped: Counter::default(),
            invalid_descriptors: Counter::default(),
            restamped: Counter::default(),
            delay: sink.register(),
        }
    }

    /// A copy of the delay histogram, with every sample the core pushed before the call
    /// (control path: folds the core's sample rings, allocates).
    pub fn delay_snapshot(&self) -> Histogram<u64> {
        self.delay.snapshot()
    }

    /// The delay histogram's key in the core's sample sink.
    pub fn delay_key(&self) -> u32 {
        self.delay.key()
    }

    /// The delay histogram itself (tests hold its lock to play a stalled reader).
    pub fn delay_histogram(&self) -> &SharedHistogram {
        &self.delay
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            submitted: self.submitted.get(),
            would_block: self.would_block.get(),
            dropped_newest: self.dropped_newest.get(),
            dropped_oldest: self.dropped_oldest.get(),
            dropped_on_close: self.dropped_on_close.get(),
            messages_sent: self.messages_sent.get(),
            packets: self.packets.get(),
            bytes: self.bytes.get(),
            late_packets: self.late_packets.get(),
            late_dropped: self.late_dropped.get(),
            budget_overruns: self.budget_overruns.get(),
            overrun_cycles: self.overrun_cycles.get(),
            handler_cycles: self.handler_cycles.get(),
            delay_samples_dropped: self.delay_samples_dropped.get(),
            invalid_descriptors: self.invalid_descriptors.get(),
            restamped: self.restamped.get(),
        }
    }
}

/// A point-in-time copy of a channel's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ChannelStats::submitted`].
    pub submitted: u64,
    /// See [`ChannelStats::would_block`].
    pub would_block: u64,
    /// See [`ChannelStats::dropped_newest`].
    pub dropped_newest: u64,
    /// See [`ChannelStats::dropped_oldest`].
    pub dropped_oldest: u64,
    /// See [`ChannelStats::dropped_on_close`].
    pub dropped_on_close: u64,
    /// See [`ChannelStats::messages_sent`].
    pub messages_sent: u64,
    /// See [`ChannelStats::packets`].
    pub packets: u64,
    /// See [`ChannelStats::bytes`].
    pub bytes: u64,
    /// See [`ChannelStats::late_packets`].
    pub late_packets: u64,
    /// See [`ChannelStats::late_dropped`].
    pub late_dropped: u64,
    /// See [`ChannelStats::budget_overruns`].
    pub budget_overruns: u64,
    /// See [`ChannelStats::overrun_cycles`].
    pub overrun_cycles: u64,
    /// See [`ChannelStats::handler_cycles`].
    pub handler_cycles: u64,
    /// See [`ChannelStats::delay_samples_dropped`].
    pub delay_samples_dropped: u64,
    /// See [`ChannelStats::invalid_descriptors`].
    pub invalid_descriptors: u64,
    /// See [`ChannelStats::restamped`].
    pub restamped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_reach_their_histogram_only_when_folded() {
        let sink = SampleSink::new();
        let mut p = sink.producer(SampleSource::Delay);
        let a = ChannelStats::new(&sink);
        let b = ChannelStats::new(&sink);
        for v in 1..=10 {
            assert!(p.push(a.delay_key(), v * 1000));
        }
        assert!(p.push(b.delay_key(), 7));
        assert_eq!(sink.pending(), 11);
        assert_eq!(
            a.delay.lock().len(),
            0,
            "the core never touches a histogram"
        );
        let h = a.delay_snapshot();
        assert_eq!((h.len(), h.max()), (10, h.highest_equivalent(10_000)));
        assert_eq!(b.delay_snapshot().len(), 1);
        assert_eq!(sink.pending(), 0);
        assert_eq!(sink.orphans(), 0);
    }

    #[test]
    fn a_full_ring_refuses_without_waiting_and_a_held_histogram_is_left_for_later() {
        let sink = SampleSink::new();
        let mut p = sink.producer(SampleSource::Latency);
        let a = ChannelStats::new(&sink);
        for _ in 0..SAMPLE_RING_CAPACITY {
            assert!(p.push(a.delay_key(), 5));
        }
        assert!(!p.push(a.delay_key(), 5), "full: refused, not overwritten");
        {
            let _reader = a.delay.lock();
            assert_eq!(sink.fold(false), 0, "a held histogram is not waited for");
        }
        assert_eq!(sink.fold(false), SAMPLE_RING_CAPACITY);
        assert!(p.push(a.delay_key(), 5), "room again once folded");
        assert_eq!(a.delay_snapshot().len(), SAMPLE_RING_CAPACITY as u64 + 1);
    }

    #[test]
    fn a_freed_key_is_reused_only_after_its_samples_are_folded() {
        let sink = SampleSink::new();
        let mut p = sink.producer(SampleSource::Delay);
        let old = ChannelStats::new(&sink);
        let key = old.delay_key();
        let kept = old.delay.hist.clone();
        p.push(key, 42);
        drop(old);
        let new = ChannelStats::new(&sink);
        assert_eq!(new.delay_key(), key);
        assert_eq!(
            kept.lock().unwrap().len(),
            1,
            "folded into the old channel's histogram"
        );
        assert_eq!(new.delay_snapshot().len(), 0);
    }

    #[test]
    #[should_panic(expected = "already has its producer")]
    fn one_producer_per_ring() {
        let sink = SampleSink::new();
        let _a = sink.producer(SampleSource::Delay);
        let _b = sink.producer(SampleSource::Delay);
    }

    #[test]
    fn sender_and_core_counters_share_no_cache_line() {
        use std::mem::offset_of;
        let sender_last = offset_of!(ChannelStats, dropped_oldest);
        let core_first = offset_of!(ChannelStats, dropped_on_close);
        assert_eq!(std::mem::align_of::<ChannelStats>(), 64);
        assert!(
            sender_last / 64 < core_first / 64,
            "{sender_last} vs {core_first}"
        );
    }

    #[test]
    fn counters_add() {
        let c = Counter::default();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
    }
}

/// What a polling core publishes about itself while it runs, for the control side's `stats`,
/// `top` and metrics: written by the core only (plain `Relaxed` stores at the end of each
/// iteration, on a line of its own), read by anyone without a lock.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct CoreGauges {
    iterations: AtomicU64,
    busy_ns: AtomicU64,
    longest_stretch_ns: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// One reading of a core's [`CoreGauges`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreGaugesSnapshot {
    /// Loop iterations.
    pub iterations: u64,
    /// Time spent in iterations that did something (received, wrote, sent or applied a
    /// command), ns of the core's clock.
    pub busy_ns: u64,
    /// Longest stretch without a preemption point measured (a service phase, a handler run
    /// with the TX stage before it, or the last TX stage of an iteration), ns; it includes any
    /// time the OS took the thread off its CPU meanwhile.
    pub longest_stretch_ns: u64,
    /// The core's clock at its first and at its latest iteration.
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
}

impl CoreGaugesSnapshot {
    /// Share of the time between the first and the latest iteration the core was busy.
    pub fn busy_share(&self) -> f64 {
        let span = self.last_ns.saturating_sub(self.first_ns);
        if span == 0 {
            0.0
        } else {
            (self.busy_ns as f64 / span as f64).min(1.0)
        }
    }
}

impl CoreGauges {
    /// Publishes one iteration that ran from `start` to `end` (busy or not) whose longest
    /// stretch was `stretch`; the core's only writer calls it.
    #[inline]
    pub fn publish(&self, iterations: u64, start: u64, end: u64, busy: bool, stretch: u64) {
        let r = Ordering::Relaxed;
        if self.first_ns.load(r) == 0 {
            self.first_ns.store(start.max(1), r);
        }
        self.iterations.store(iterations, r);
        if busy {
            self.busy_ns.store(
                self.busy_ns.load(r).wrapping_add(end.saturating_sub(start)),
                r,
            );
        }
        if stretch > self.longest_stretch_ns.load(r) {
            self.longest_stretch_ns.store(stretch, r);
        }
        self.last_ns.store(end, r);
    }

    /// The current values.
    pub fn snapshot(&self) -> CoreGaugesSnapshot {
        let r = Ordering::Relaxed;
        CoreGaugesSnapshot {
            iterations: self.iterations.load(r),
            busy_ns: self.busy_ns.load(r),
            longest_stretch_ns: self.longest_stretch_ns.load(r),
            first_ns: self.first_ns.load(r),
            last_ns: self.last_ns.load(r),
        }
    }
}
