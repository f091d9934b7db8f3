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
    let (sec, nsec) = crate::sys::os::clock_monotonic();
    sec * NANOS_PER_SEC + nsec
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
    /// Called after an RX burst of `frames` frames was parsed (virtual CPUs charge it).
    #[inline]
    fn on_rx_burst(&mut self, _frames: usize) {}
    /// Called after a control command was applied (virtual CPUs charge it).
    #[inline]
    fn on_command(&mut self) {}
    /// Called after a TX stage released `packets` and handed them to the port.
    #[inline]
    fn on_tx_stage(&mut self, _packets: usize) {}
    /// Called after the service phase's reassembly-maintenance check (and its step, when one
    /// was due), which follows the RX bursts (`rtchand calibrate` times the phase's parts).
    #[inline]
    fn on_maintain(&mut self) {}
    /// Called after the service phase's client scan looked at `rings` client-fed channels.
    #[inline]
    fn on_client_scan(&mut self, _rings: usize) {}
    /// Converts a cycle count to nanoseconds.
    fn cycles_to_ns(&self, cycles: u64) -> Nanos;
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
    fn cycles_to_ns(&self, cycles: u64) -> Nanos {
        cycles
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
    #[inline]
    fn cycles_to_ns(&self, cycles: u64) -> Nanos {
        // A multiply and a shift: the core converts at every preemption point, and a 128-bit
        // division costs more than the rest of the conversion.
        ((cycles as u128 * ns_per_cycle_q32() as u128) >> 32) as Nanos
    }
}

/// Nanoseconds per TSC cycle × 2^32, from [`tsc_per_us`], computed once. Inlined: after the
/// first call it is one load and a check, twice per handler run.
#[inline]
fn ns_per_cycle_q32() -> u64 {
    static Q32: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *Q32.get_or_init(|| ((1000u128 << 32) / tsc_per_us().max(1) as u128) as u64)
}

/// The TSC's rate in cycles per microsecond, measured once per process (5 ms).
pub fn tsc_per_us() -> u64 {
    static RATE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        if cfg!(target_arch = "x86_64") {
            TscMeter::calibrate(5_000_000)
        } else {
            1000 // read_tsc() falls back to nanoseconds
        }
    })
}

/// Reads the TSC (x86_64), or monotonic nanoseconds elsewhere.
#[inline]
pub fn read_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        crate::sys::cpu::rdtsc()
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
    fn cycles_to_ns(&self, cycles: u64) -> Nanos {
        cycles
    }
}

/// Serialisation time at a fixed rate, with the division done once: the hot path multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteTime {
    /// Femtoseconds per byte, rounded up (so paced time never runs short).
    fs_per_byte: u64,
    /// Bytes per nanosecond × 2^32, for the inverse.
    bytes_per_ns_q32: u64,
}

impl ByteTime {
    /// For a link of `rate_bps` bits per second (0: infinitely fast).
    pub fn new(rate_bps: u64) -> Self {
        if rate_bps == 0 {
            return Self {
                fs_per_byte: 0,
                bytes_per_ns_q32: u64::MAX,
            };
        }
        Self {
            fs_per_byte: (8_000_000_000_000_000u128.div_ceil(rate_bps as u128)) as u64,
            bytes_per_ns_q32: ((rate_bps as u128) << 32).div_ceil(8_000_000_000) as u64,
        }
    }
    /// Nanoseconds `bytes` take on the wire, rounded up.
    #[inline]
    pub fn ns(&self, bytes: u64) -> Nanos {
        bytes.saturating_mul(self.fs_per_byte).div_ceil(1_000_000)
    }
    /// Bytes the wire carries in `ns`, rounded up (a frame partly sent still counts).
    #[inline]
    pub fn bytes(&self, ns: Nanos) -> u64 {
        let q = ns as u128 * self.bytes_per_ns_q32 as u128;
        ((q + (1 << 32) - 1) >> 32).min(u64::MAX as u128) as u64
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
    fn byte_time_matches_the_division() {
        for rate in [
            1_000_000u64,
            1_000_000_000,
            3_000_000_000,
            10_000_000_000,
            400_000_000_000,
        ] {
            let bt = ByteTime::new(rate);
            for bytes in [1u64, 64, 84, 1538, 9000, 65_536] {
                let exact = wire_time(bytes, rate);
                let fast = bt.ns(bytes);
                // Never shorter, and at most a nanosecond longer (rounding of fs/byte).
                assert!(
                    fast >= exact && fast <= exact + 1,
                    "{rate} {bytes}: {fast} vs {exact}"
                );
                let back = bt.bytes(exact);
                assert!(
                    back >= bytes && back <= bytes + 1 + rate / 8_000_000_000,
                    "{rate} {bytes}: {back}"
                );
            }
        }
    }

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
