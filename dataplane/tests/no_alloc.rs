//! The hot path allocates nothing after warm-up: submit, wake-up, enforcement, scheduling,
//! fragmentation, link scheduling, TX, RX, reassembly and delivery, counted by a global
//! allocator that tallies this thread's allocations. And the polling core neither allocates
//! nor frees while it applies control commands (opens and closes of channels and receivers,
//! policy changes) with a histogram reader holding its lock: everything is built on the
//! control side and what a command takes off the core comes back on its ack.

use dataplane::channel::{Sender, Submit};
use dataplane::core::{Command, Core, CoreConfig};
use dataplane::memlink::{MemLink, MemLinkConfig, MemPort};
use dataplane::rx::{RxPath, RxShared};
use dataplane::sched::SchedPolicy;
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{Clock, ManualClock, VirtualCpu};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
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
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = FREES.try_with(|a| a.set(a.get() + 1));
            }
        });
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

/// Runs `f` with this thread's allocations and frees counted; returns (allocs, frees).
fn counted(f: impl FnOnce()) -> (u64, u64) {
    let before = (ALLOCS.with(|a| a.get()), FREES.with(|a| a.get()));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    (
        ALLOCS.with(|a| a.get()) - before.0,
        FREES.with(|a| a.get()) - before.1,
    )
}

#[test]
fn control_commands_allocate_and_free_nothing_on_the_core() {
    let clock = ManualClock::new(0);
    let (a, b) = MemLink::pair(MemLinkConfig::default(), Arc::new(clock.clone()));
    let mut tx_core = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx_core = Core::new(CoreConfig::default(), b).unwrap();
    // Folding is the control side's work here, outside the counted polls.
    tx_core.set_fold_on_poll(false);
    rx_core.set_fold_on_poll(false);
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 50,
    };
    let spec = ChannelSpec {
        mmax: 4000,
        imin: 20_000,
        bmax: 4,
        cpu_deadline: 100_000,
        link_deadline: 200_000,
        end_to_end_deadline: 400_000,
    };
    // A long-lived channel whose histograms a reader holds throughout.
    let mut steady = tx_core.open(ChannelConfig::real_time(0, spec)).unwrap();
    let steady_rx = rx_core.open_receiver(0, 4000, 16);
    let msg = vec![3u8; 4000];
    let (tx_ctl, rx_ctl) = (tx_core.control().clone(), rx_core.control().clone());
    let mut pollers = |tx_core: &mut Core<MemPort>, rx_core: &mut Core<MemPort>, n: usize| {
        let mut rx_frames = 0;
        for _ in 0..n {
            tx_core.poll(&clock, &mut cpu);
            rx_frames += rx_core.poll(&clock, &mut cpu).rx;
            clock.advance(5_000);
        }
        rx_frames
    };
    let (mut allocs, mut frees, mut applied, mut received) = (0, 0, 0usize, 0usize);
    let mut policy = SchedPolicy::default();
    const ROUNDS: u32 = 40;
    const PER_ROUND: u32 = 6;
    for round in 0..ROUNDS {
        // Control side: build the channels and receivers, post the opens.
        let ids: Vec<u32> = (0..PER_ROUND).map(|i| 1 + round * PER_ROUND + i).collect();
        let mut senders: Vec<Sender> = Vec::new();
        let mut receivers = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let shared = tx_core
                .prepare(ChannelConfig::real_time(id, spec), 10 + i as u32)
                .unwrap();
            tx_ctl.post(Command::Open(shared.clone())).unwrap();
            senders.push(Sender::new(shared).unwrap());
            let rs = RxShared::new(id, 4000, 16, 16, rx_core.sink());
            rx_ctl
                .post(Command::OpenReceiver(RxPath::prepare(rs.clone(), 16)))
                .unwrap();
            receivers.push(dataplane::rx::Receiver::new(rs));
        }
        // A duplicate of each is refused on the core and handed back.
        let dup = tx_core
            .prepare(ChannelConfig::real_time(ids[0], spec), 30)
            .unwrap();
        tx_ctl.post(Command::Open(dup)).unwrap();
        let rs = RxShared::new(ids[0], 4000, 16, 16, rx_core.sink());
        rx_ctl
            .post(Command::OpenReceiver(RxPath::prepare(rs, 16)))
            .unwrap();
        policy.granularity = 1 + round % 4;
        tx_ctl.post(Command::SetPolicy(policy)).unwrap();
        let now = clock.now();
        for tx in senders.iter_mut().chain([&mut steady]) {
            let _ = tx.submit_at(&msg[..1000 + (round as usize * 311) % 3000], now);
        }
        let reader = steady.stats().delay_histogram().lock();
        let reader_rx = steady_rx.stats().latency_histogram().lock();
        let (a, f) = counted(|| received += pollers(&mut tx_core, &mut rx_core, 20));
        drop((reader, reader_rx));
        allocs += a;
        frees += f;
        let mut acks = Vec::new();
        while let Some((_, r)) = tx_ctl.take_ack() {
            acks.push(r.is_ok());
        }
        while let Some((_, r)) = rx_ctl.take_ack() {
            acks.push(r.is_ok());
        }
        let ok = acks.iter().filter(|&&x| x).count();
        assert_eq!(
            (ok, acks.len()),
            (2 * PER_ROUND as usize + 1, 2 * PER_ROUND as usize + 3),
            "round {round}: every open and the policy applied, both duplicates refused"
        );
        applied += acks.len();
        for r in &receivers {
            while r.recv_with(|m, _| m.len()).is_some() {}
        }
        // Close them again: half draining with messages queued, half discarding.
        let now = clock.now();
        for tx in senders.iter_mut() {
            let _ = tx.submit_at(&msg[..2000], now);
        }
        for (i, &id) in ids.iter().enumerate() {
            tx_ctl
                .post(Command::Close {
                    id,
                    drain: i % 2 == 0,
                })
                .unwrap();
            rx_ctl.post(Command::CloseReceiver(id)).unwrap();
        }
        rx_ctl.post(Command::CloseReceiver(9_999)).unwrap(); // not open: refused
        drop(senders);
        drop(receivers);
        let reader = steady.stats().delay_histogram().lock();
        let (a, f) = counted(|| received += pollers(&mut tx_core, &mut rx_core, 20));
        drop(reader);
        allocs += a;
        frees += f;
        let mut n = 0;
        while let Some((_, r)) = tx_ctl.take_ack() {
            r.unwrap();
            n += 1;
        }
        while rx_ctl.take_ack().is_some() {
            n += 1;
        }
        assert_eq!(
            n,
            2 * PER_ROUND as usize + 1,
            "round {round}: every close acknowledged"
        );
        applied += n;
        while steady_rx.recv_with(|m, _| m.len()).is_some() {}
        // The control side folds the samples the core pushed meanwhile.
        tx_core.flush_stats();
        rx_core.flush_stats();
    }
    assert!(
        received > 500,
        "traffic flowed meanwhile: {received} frames"
    );
    assert!(
        steady_rx.stats().delivered.get() >= ROUNDS as u64,
        "the steady channel delivered every round"
    );
    assert_eq!(applied, (ROUNDS * (4 * PER_ROUND + 4)) as usize);
    assert!(!steady.stats().delay_snapshot().is_empty());
    assert_eq!(
        (allocs, frees),
        (0, 0),
        "allocations and frees on the polling core"
    );
}
