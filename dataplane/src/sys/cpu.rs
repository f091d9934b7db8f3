//! CPU instructions the packet path uses: a cache prefetch hint and the time-stamp counter.

/// Asks the CPU to bring the cache line holding `p` into its caches ahead of use: the packet
/// path prefetches the next handler's state while the current one runs, so at 100,000
/// channels the miss overlaps useful work instead of stalling it. A hint only.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint: it never faults, whatever the address, and neither reads
    // into nor writes program state; SSE, which it needs, is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Reads the TSC (x86_64 only; `time::read_tsc` falls back to nanoseconds elsewhere).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64; it only reads a counter.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}
