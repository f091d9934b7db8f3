//! Per-channel statistics, written by one thread and read by any without locks on the hot path.
//!
//! Counters are atomics. Each has exactly one writer (the polling core, or the channel's single
//! sender for the submit-side counters), so a plain load + store with `Relaxed` ordering is
//! enough and avoids a locked instruction per packet; readers see a value at most one update
//! old. Delay histograms live once per channel, behind a mutex the core only ever `try_lock`s:
//! the core collects samples in a small [`SampleBuffer`] and moves a batch into the histogram
//! when the buffer fills or every few milliseconds, so the lock costs a few atomics per
//! [`SAMPLE_BATCH`] messages and the core never waits. (One histogram per channel, not two: at
//! 100,000 channels the histograms are most of the memory.)

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// Samples the core collects before moving them into a histogram in one locked step.
pub const SAMPLE_BATCH: usize = 32;

/// A fixed batch of samples waiting for their histogram. `repr(C)`, count first: it sits
/// next to the fields an owner reads anyway, and the samples follow.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct SampleBuffer {
    n: usize,
    v: [u64; SAMPLE_BATCH],
}

impl Default for SampleBuffer {
    fn default() -> Self {
        Self {
            v: [0; SAMPLE_BATCH],
            n: 0,
        }
    }
}

impl SampleBuffer {
    /// True when no sample waits.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Prefetches the slot the next sample goes to.
    #[inline(always)]
    pub fn prefetch_next(&self) {
        crate::mem::prefetch(self.v.as_ptr().wrapping_add(self.n % SAMPLE_BATCH));
    }

    /// Adds a sample; when the buffer is full it first tries to move the batch into
    /// `target`, and if a reader holds it the sample is counted in `dropped` instead.
    #[inline]
    pub fn record(&mut self, v: u64, target: &Mutex<Histogram<u64>>, dropped: &Counter) {
        if self.n == SAMPLE_BATCH && !self.flush(target, false) {
            dropped.inc();
            return;
        }
        self.v[self.n] = v;
        self.n += 1;
        if self.n == SAMPLE_BATCH {
            self.flush(target, false);
        }
    }

    /// Moves the samples into `target`; with `wait == false` only if the lock is free now.
    /// Returns whether the buffer is empty afterwards.
    pub fn flush(&mut self, target: &Mutex<Histogram<u64>>, wait: bool) -> bool {
        if self.n == 0 {
            return true;
        }
        let guard = if wait {
            Some(target.lock().unwrap_or_else(|p| p.into_inner()))
        } else {
            target.try_lock().ok()
        };
        match guard {
            Some(mut h) => {
                for &v in &self.v[..self.n] {
                    record_clamped(&mut h, v);
                }
                self.n = 0;
                true
            }
            None => false,
        }
    }
}

/// Sender-side statistics of one channel.
#[derive(Debug)]
pub struct ChannelStats {
    /// Messages accepted by submit.
    pub submitted: Counter,
    /// Submits refused with `WouldBlock` (block policy).
    pub would_block: Counter,
    /// New messages dropped because the buffer was full (drop-newest).
    pub dropped_newest: Counter,
    /// Queued messages dropped to make room (drop-oldest).
    pub dropped_oldest: Counter,
    /// Messages discarded when the channel closed without draining.
    pub dropped_on_close: Counter,
    /// Messages whose every packet was released to the port.
    pub messages_sent: Counter,
    /// Packets released to the port.
    pub packets: Counter,
    /// Frame bytes released to the port.
    pub bytes: Counter,
    /// Packets released after their link deadline.
    pub late_packets: Counter,
    /// Packets dropped at the link for being late (drop policy).
    pub late_dropped: Counter,
    /// Handler runs that exceeded the cycle budget.
    pub budget_overruns: Counter,
    /// Cycles beyond the budget, summed over overruns (charged to this channel).
    pub overrun_cycles: Counter,
    /// Cycles spent in this channel's handler runs.
    pub handler_cycles: Counter,
    /// Delay samples lost because a reader held the histogram while the batch was full.
    pub delay_samples_dropped: Counter,
    /// Descriptors a client wrote into its shared-memory ring that failed validation
    /// (refused, not sent; see `shm`).
    pub invalid_descriptors: Counter,
    /// Delay from submit to the release of the message's last packet.
    pub(crate) delay: Mutex<Histogram<u64>>,
}

impl Default for ChannelStats {
    fn default() -> Self {
        Self {
            submitted: Counter::default(),
            would_block: Counter::default(),
            dropped_newest: Counter::default(),
            dropped_oldest: Counter::default(),
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
            delay: Mutex::new(new_histogram()),
        }
    }
}

impl ChannelStats {
    /// A copy of the published delay histogram (control path: allocates).
    pub fn delay_snapshot(&self) -> Histogram<u64> {
        match self.delay.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_move_in_batches_and_never_wait() {
        let s = ChannelStats::default();
        let mut buf = SampleBuffer::default();
        for v in 0..(SAMPLE_BATCH as u64 - 1) {
            buf.record(v, &s.delay, &s.delay_samples_dropped);
        }
        assert_eq!(s.delay_snapshot().len(), 0, "not yet a full batch");
        buf.record(7, &s.delay, &s.delay_samples_dropped);
        assert_eq!(s.delay_snapshot().len(), SAMPLE_BATCH as u64);
        {
            let _reader = s.delay.lock().unwrap();
            for v in 0..(SAMPLE_BATCH as u64 + 3) {
                buf.record(v, &s.delay, &s.delay_samples_dropped);
            }
        }
        assert_eq!(s.delay_samples_dropped.get(), 3, "counted, not hidden");
        assert!(buf.flush(&s.delay, false));
        assert_eq!(s.delay_snapshot().len(), 2 * SAMPLE_BATCH as u64);
    }

    #[test]
    fn counters_add() {
        let c = Counter::default();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
    }
}
