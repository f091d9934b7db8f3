//! The memory figures admission charges a channel ([`reservation_bytes`] of the sending and
//! the receiving side) against what building the channel really allocates, measured with a
//! counting allocator: never less, and more only by the fixed part and the per-allocation
//! overhead the figures assume.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use dataplane::channel::{reservation_bytes, ChannelShared, ALLOC_OVERHEAD, CHANNEL_FIXED_BYTES};
use dataplane::rx::{self, RxPath, RxShared, RX_FIXED_BYTES};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::stats::{SampleSink, SampleSource};

/// Counts live bytes and allocations made by this thread (the measuring test's own).
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are
// const-initialised thread locals (no allocation, `try_with` tolerates thread teardown).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as i64));
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as i64));
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as i64));
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc_zeroed(l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Bytes and allocations `f` leaves live on this thread, and its result.
fn measure<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (b0, a0) = (LIVE.get(), ALLOCS.get());
    let v = f();
    let (b1, a1) = (LIVE.get(), ALLOCS.get());
    (v, (b1 - b0).max(0) as u64, a1 - a0)
}

fn check(what: &str, figure: u64, live: u64, allocs: u64, fixed: u64) {
    println!("{what}: figure {figure} bytes, allocated {live} bytes in {allocs} allocations");
    assert!(live <= figure, "{what}: allocated {live} > figure {figure}");
    assert!(
        figure - live <= fixed + allocs * ALLOC_OVERHEAD,
        "{what}: figure {figure} overstates {live} by more than the fixed part and overheads"
    );
}

#[test]
fn sending_and_receiving_figures_cover_what_is_allocated() {
    let doorbell = Arc::new(ArrayQueue::new(4));
    // The core's sample sink is the core's, not the channel's: built outside the measure.
    let sink = SampleSink::new();
    for (mmax, bmax) in [(1500u32, 1000u32), (64, 5000), (9000, 3), (65_536, 40)] {
        let spec = ChannelSpec {
            mmax,
            imin: 1_000_000,
            bmax,
            cpu_deadline: 1_000,
            link_deadline: 2_000,
            end_to_end_deadline: 3_000,
        };
        let cfg = ChannelConfig::real_time(1, spec);
        let (shared, live, allocs) =
            measure(|| ChannelShared::new(cfg, 0, doorbell.clone(), &sink));
        check(
            &format!("sending mmax {mmax} bmax {bmax}"),
            reservation_bytes(bmax, mmax),
            live,
            allocs,
            CHANNEL_FIXED_BYTES,
        );
        drop(shared);
    }
    for (mmax, ring, reassembly) in [(1500u32, 1024u32, 64u32), (65_536, 16, 16), (10, 1, 1)] {
        let rx_sink = SampleSink::new();
        let mut path = RxPath::new(7447, 1_000_000, rx_sink.producer(SampleSource::Latency));
        let (shared, live, allocs) = measure(|| {
            let s = RxShared::new(3, mmax, ring, reassembly, &rx_sink);
            path.open(RxPath::prepare(s.clone(), reassembly))
                .expect("a fresh receive path has room");
            s
        });
        check(
            &format!("receiving mmax {mmax} ring {ring}"),
            rx::reservation_bytes(mmax, ring, reassembly),
            live,
            allocs,
            RX_FIXED_BYTES,
        );
        drop((shared, path));
    }
}
