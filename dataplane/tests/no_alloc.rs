//! The hot path allocates nothing after warm-up: submit, wake-up, enforcement, scheduling,
//! fragmentation, link scheduling, TX, RX, reassembly and delivery, counted by a global
//! allocator that tallies this thread's allocations.

use dataplane::channel::Submit;
use dataplane::core::{Core, CoreConfig};
use dataplane::memlink::{MemLink, MemLinkConfig};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{Clock, ManualClock, VirtualCpu};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-locals may be gone while a thread exits.
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        });
        // SAFETY: forwarding to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        });
        // SAFETY: as for alloc/dealloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn hot_path_allocates_nothing_after_warm_up() {
    let clock = ManualClock::new(0);
    let (a, b) = MemLink::pair(MemLinkConfig::default(), Arc::new(clock.clone()));
    let mut tx_core = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx_core = Core::new(CoreConfig::default(), b).unwrap();
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 50,
    };
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..8u32 {
        let spec = ChannelSpec {
            mmax: 4000,
            imin: 20_000,
            bmax: 4,
            cpu_deadline: 100_000,
            link_deadline: 200_000,
            end_to_end_deadline: 400_000,
        };
        senders.push(tx_core.open(ChannelConfig::real_time(i, spec)).unwrap());
        receivers.push(rx_core.open_receiver(i, 4000, 16));
    }
    let mut be = tx_core
        .open(ChannelConfig::best_effort(99, 1400, 64))
        .unwrap();
    let be_rx = rx_core.open_receiver(99, 1400, 64);
    let msg = vec![1u8; 4000];
    let mut step = |n: u64| {
        for round in 0..n {
            let now = clock.now();
            for (i, tx) in senders.iter_mut().enumerate() {
                // Sizes from 1 to 3 packets.
                let len = 100 + (round as usize * 997 + i * 131) % 3900;
                let _ = tx.submit_at(&msg[..len], now);
            }
            while be.submit_at(&msg[..1400], now) == Ok(Submit::Queued) {}
            tx_core.poll(&clock, &mut cpu);
            rx_core.poll(&clock, &mut cpu);
            for r in receivers.iter().chain([&be_rx]) {
                while r.recv_with(|m, _| m.len()).is_some() {}
            }
            clock.advance(5_000);
        }
    };
    // Warm-up: let every table, histogram and lazily mapped page settle.
    step(20_000);
    COUNTING.with(|c| c.set(true));
    step(20_000);
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(|a| a.get());
    let delivered: u64 = receivers.iter().map(|r| r.stats().delivered.get()).sum();
    assert!(delivered > 20_000, "the loop did real work: {delivered}");
    assert_eq!(allocs, 0, "allocations on the hot path after warm-up");
}
