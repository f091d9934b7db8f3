//! Time and cycle counting, injected so the scheduling logic runs in virtual time.
//!
//! Everything in the core takes `now: Nanos` as an argument. The polling core reads a
//! [`Clock`] once per loop iteration; tests drive a [`ManualClock`]. Handler runs are bounded by
//! a cycle budget read from a [`CycleMeter`]: the TSC on real cores ([`TscMeter`]), a counter the
//! test advances in virtual time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Nanoseconds. Absolute times are `CLOCK_MONOTONIC` on real cores (shared by every process on
/// the host, so a sender's submit stamp is comparable with a receiver's delivery time).
pub type Nanos = u64;

/// Nanoseconds per second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time in nanoseconds.
    fn now(&self) -> Nanos;
}

/// `CLOCK_MONOTONIC` read through the vDSO (no syscall).
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        monotonic_now()
    }
}

/// Reads `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_now() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * NANOS_PER_SEC + ts.tv_nsec as u64
}

/// A clock that only moves when told to; shared between the test and the code under test.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Nanos) -> Self {
        Self(Arc::new(AtomicU64::new(start)))
    }
    /// Sets the time (never backwards: monotonic like the real one).
    pub fn set(&self, t: Nanos) {
        self.0.fetch_max(t, Ordering::Relaxed);
    }
    /// Advances the time by `d`.
    pub fn advance(&self, d: Nanos) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts cycles for the handler-run budget.
pub trait CycleMeter {
    /// A monotonically increasing cycle count.
    fn cycles(&mut self) -> u64;
    /// Called after each packet a handler writes. Real meters ignore it; a virtual CPU
    /// advances its clock by the packet's cost here.
    #[inline]
    fn on_packet(&mut self) {}
}

/// A virtual CPU for tests: every packet costs `per_packet` ns of the shared [`ManualClock`],
/// and a cycle is a nanosecond.
#[derive(Clone, Debug)]
pub struct VirtualCpu {
    /// The clock the test and the core share.
    pub clock: ManualClock,
    /// Cost of one packet, ns.
    pub per_packet: Nanos,
}

impl CycleMeter for VirtualCpu {
    fn cycles(&mut self) -> u64 {
        self.clock.now()
    }
    fn on_packet(&mut self) {
        self.clock.advance(self.per_packet);
    }
}

/// The time-stamp counter. Invariant TSC (constant rate, all cores in sync) is assumed, as on
/// every x86 server since Nehalem; [`TscMeter::calibrate`] measures its rate against the clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct TscMeter;

impl CycleMeter for TscMeter {
    #[inline]
    fn cycles(&mut self) -> u64 {
        read_tsc()
    }
}

/// Reads the TSC (x86_64), or monotonic nanoseconds elsewhere.
#[inline]
pub fn read_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64; it only reads a counter.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        monotonic_now()
    }
}

impl TscMeter {
    /// Cycles per microsecond, measured over `window` nanoseconds of wall time.
    pub fn calibrate(window: Nanos) -> u64 {
        let (c0, t0) = (read_tsc(), monotonic_now());
        while monotonic_now() - t0 < window {
            std::hint::spin_loop();
        }
        let (c1, t1) = (read_tsc(), monotonic_now());
        (((c1 - c0) as u128 * 1000) / (t1 - t0).max(1) as u128).max(1) as u64
    }
}

/// A cycle meter driven by the test: each read returns the value the test set.
#[derive(Clone, Debug, Default)]
pub struct ManualCycles(Arc<AtomicU64>);

impl ManualCycles {
    /// Advances the counter by `c` cycles.
    pub fn advance(&self, c: u64) {
        self.0.fetch_add(c, Ordering::Relaxed);
    }
}

impl CycleMeter for ManualCycles {
    fn cycles(&mut self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Transmission time in nanoseconds of `bytes` at `rate_bps`, rounded up.
#[inline]
pub fn wire_time(bytes: u64, rate_bps: u64) -> Nanos {
    if rate_bps == 0 {
        return 0;
    }
    ((bytes as u128 * 8 * NANOS_PER_SEC as u128).div_ceil(rate_bps as u128)) as Nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_time_rounds_up() {
        assert_eq!(wire_time(125, 1_000_000_000), 1000);
        assert_eq!(wire_time(1, 3_000_000_000), 3); // 8/3 ns rounds up
        assert_eq!(wire_time(10, 0), 0);
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let c = ManualClock::new(10);
        c.set(5);
        assert_eq!(c.now(), 10);
        c.advance(7);
        assert_eq!(c.now(), 17);
    }

    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a);
    }
}
