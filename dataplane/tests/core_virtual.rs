//! The polling core in virtual time: enforcement, class order, EDF, granularity, the
//! best-effort reserve, overload policies, and the cycle budget.

mod common;

use common::*;
use dataplane::channel::{Submit, SubmitError};
use dataplane::core::TraceEntry;
use dataplane::sched::{Class, SchedPolicy};
use dataplane::spec::{ChannelConfig, OverflowPolicy};

fn policy(k: u32, wc: bool) -> SchedPolicy {
    SchedPolicy {
        granularity: k,
        work_conserving: wc,
        best_effort_reserve_ppm: 0,
        run_budget_cycles: u64::MAX / 2,
        fifo: false,
    }
}

fn order(t: &[TraceEntry]) -> Vec<(u32, u32, u16)> {
    t.iter().map(|e| (e.channel, e.seq, e.frag)).collect()
}

#[test]
fn a_burst_is_spread_to_its_logical_arrival_times() {
    let mut v = virtual_core(policy(1, false), 4);
    let imin = 10_000;
    let mut tx = v.core.open(rt(1, imin, 4, 50_000, 64)).unwrap();
    for _ in 0..4 {
        tx.submit_at(b"x", 0).unwrap();
    }
    v.core.enable_trace(4);
    v.run_until(4, 100);
    let starts: Vec<_> = v.core.trace().iter().map(|e| e.run_start).collect();
    assert_eq!(starts, vec![0, imin, 2 * imin, 3 * imin]);
}

#[test]
fn a_violator_only_pushes_its_own_messages_into_the_future() {
    let mut v = virtual_core(policy(1, false), 4);
    let mut good = v.core.open(rt(1, 10_000, 2, 20_000, 64)).unwrap();
    let mut bad = v.core.open(rt(2, 10_000, 64, 20_000, 64)).unwrap();
    // The violator submits 20 messages at once (20x its rate over this window).
    for _ in 0..20 {
        bad.submit_at(b"b", 0).unwrap();
    }
    good.submit_at(b"g", 5_000).unwrap();
    v.core.enable_trace(21);
    v.run_until(21, 1000);
    let t = v.core.trace();
    let g = t.iter().find(|e| e.channel == 1).unwrap();
    // The good channel's message runs as soon as it is current, between the violator's.
    assert!(g.run_start <= 10_000, "good ran at {}", g.run_start);
    let bad_starts: Vec<_> = t
        .iter()
        .filter(|e| e.channel == 2)
        .map(|e| e.run_start)
        .collect();
    for (k, s) in bad_starts.iter().enumerate() {
        assert!(
            *s >= k as u64 * 10_000,
            "violator message {k} ran early at {s}"
        );
    }
}

#[test]
fn three_classes_run_in_order() {
    let mut v = virtual_core(policy(1, true), 4);
    let mut early = v.core.open(rt(1, 1_000, 2, 5_000, 64)).unwrap();
    let mut be = v.core.open(ChannelConfig::best_effort(2, 64, 4)).unwrap();
    let mut cur = v.core.open(rt(3, 1_000, 2, 90_000, 64)).unwrap();
    early.submit_at(b"e", 50_000).unwrap(); // ℓ in the future: early
    be.submit_at(b"b", 0).unwrap();
    cur.submit_at(b"c", 0).unwrap();
    v.core.enable_trace(3);
    v.run_until(3, 10);
    let classes: Vec<_> = v
        .core
        .trace()
        .iter()
        .map(|e| (e.channel, e.class))
        .collect();
    assert_eq!(
        classes,
        vec![
            (3, Class::Current),
            (2, Class::BestEffort),
            (1, Class::Early)
        ]
    );
}

#[test]
fn current_work_is_earliest_deadline_first() {
    let mut v = virtual_core(policy(1, false), 8);
    let deadlines = [70_000u64, 10_000, 50_000, 30_000];
    let mut txs: Vec<_> = deadlines
        .iter()
        .enumerate()
        .map(|(i, d)| v.core.open(rt(i as u32, 1_000, 2, *d, 64)).unwrap())
        .collect();
    for tx in &mut txs {
        tx.submit_at(b"m", 0).unwrap();
    }
    v.core.enable_trace(4);
    v.run_until(4, 10);
    let chans: Vec<_> = v.core.trace().iter().map(|e| e.channel).collect();
    assert_eq!(chans, vec![1, 3, 2, 0]);
}

#[test]
fn preemption_happens_at_exactly_the_granularity() {
    for k in [1u32, 2, 4] {
        let mut v = virtual_core(policy(k, false), 4);
        // A: a 10-packet message with a late deadline, from t = 0.
        let mut a = v
            .core
            .open(rt(1, 1_000, 1, 1_000_000, (10 * PAYLOAD) as u32))
            .unwrap();
        a.submit_at(&vec![1; 10 * PAYLOAD], 0).unwrap();
        // B: one packet with an early deadline, submitted (stamped) at 150 ns: it becomes
        // current during A's second packet.
        let mut b = v.core.open(rt(2, 1_000, 1, 10_000, 64)).unwrap();
        b.submit_at(b"b", 150).unwrap();
        v.core.enable_trace(11);
        v.run_until(11, 100);
        let t = order(v.core.trace());
        // B is current from 150 ns; the first preemption point at or after that is after
        // packet 2 of A (at 200 ns) rounded up to a multiple of k.
        let a_before = 2u32.div_ceil(k) * k;
        let pos = t.iter().position(|e| e.0 == 2).unwrap() as u32;
        assert_eq!(pos, a_before, "k = {k}: {t:?}");
    }
}

#[test]
fn best_effort_reserve_delays_current_work_by_one_run_per_busy_window() {
    let mut v = virtual_core(
        SchedPolicy {
            best_effort_reserve_ppm: 300_000,
            ..policy(1, false)
        },
        4,
    );
    // Real-time work at 80% of the core: a packet every 125 ns against a 100 ns cost, in
    // bursts of 8 separated by an idle gap, so busy windows end.
    let mut rtc = v.core.open(rt(1, 100, 2000, 1_000_000, 64)).unwrap();
    let mut be = v
        .core
        .open(ChannelConfig::best_effort(2, 64, 2000))
        .unwrap();
    for i in 0..1000u64 {
        rtc.submit_at(b"r", (i / 8) * 1_000 + (i % 8) * 100)
            .unwrap();
        be.submit_at(b"b", 0).unwrap();
    }
    v.core.enable_trace(2000);
    v.run_until(2000, 20_000);
    let t = v.core.trace();
    // Between two best-effort runs that displaced current work there is a moment with no
    // current work: never two lifted runs inside one stretch of real-time runs.
    let mut lifted_in_stretch = 0;
    let mut lifted = 0;
    for e in t {
        match e.class {
            Class::BestEffortReserved => {
                lifted += 1;
                lifted_in_stretch += 1;
                assert!(
                    lifted_in_stretch <= 1,
                    "two lifts in one busy window: {e:?}"
                );
            }
            Class::BestEffort => lifted_in_stretch = 0,
            _ => {}
        }
    }
    assert!(lifted > 0, "the reserve never lifted best-effort");
    // Without the reserve best-effort gets nothing while real-time work is current.
    let mut v = virtual_core(policy(1, false), 4);
    let mut rtc = v.core.open(rt(1, 100, 2000, 1_000_000, 64)).unwrap();
    let mut be = v
        .core
        .open(ChannelConfig::best_effort(2, 64, 2000))
        .unwrap();
    for i in 0..1000u64 {
        rtc.submit_at(b"r", 0).unwrap();
        be.submit_at(b"b", i).unwrap();
    }
    v.core.enable_trace(1000);
    v.run_until(1000, 10_000);
    let first_be = v.core.trace().iter().position(|e| e.channel == 2);
    assert_eq!(first_be, None);
}

#[test]
fn overflow_policies_through_the_core() {
    for (policy_kind, expect) in [
        (OverflowPolicy::Block, "block"),
        (OverflowPolicy::DropNewest, "newest"),
        (OverflowPolicy::DropOldest, "oldest"),
    ] {
        let mut v = virtual_core(policy(1, false), 4);
        let mut cfg = rt(1, 10_000, 2, 20_000, 64);
        cfg.overflow = policy_kind;
        let mut tx = v.core.open(cfg).unwrap();
        let mut results = Vec::new();
        for i in 0..5u8 {
            results.push(tx.submit_at(&[i], 0));
        }
        let s = tx.stats().snapshot();
        match expect {
            "block" => {
                assert_eq!(results[3], Err(SubmitError::WouldBlock));
                assert_eq!(s.would_block, 3);
            }
            "newest" => {
                assert_eq!(results[3], Ok(Submit::DroppedNewest));
                assert_eq!(s.dropped_newest, 3);
            }
            _ => {
                assert_eq!(results[3], Ok(Submit::QueuedDroppedOldest));
                assert_eq!(s.dropped_oldest, 3);
            }
        }
        // Whatever was accepted is sent, and nothing else.
        v.core.enable_trace(10);
        v.run_until(10, 100);
        let sent = v.core.trace().len() as u64;
        assert_eq!(sent, s.submitted - s.dropped_oldest, "{expect}");
    }
}

#[test]
fn a_message_longer_than_mmax_is_refused_whole() {
    let mut v = virtual_core(policy(1, false), 4);
    let mut tx = v.core.open(rt(1, 1_000, 2, 10_000, 100)).unwrap();
    assert_eq!(
        tx.submit_at(&[0; 101], 0),
        Err(SubmitError::TooLong {
            len: 101,
            mmax: 100
        })
    );
    v.core.enable_trace(1);
    v.run_until(1, 10);
    assert!(v.core.trace().is_empty());
}

#[test]
fn runs_over_the_cycle_budget_stop_early_and_are_counted() {
    let mut v = virtual_core(
        SchedPolicy {
            granularity: 8,
            run_budget_cycles: 250, // 2.5 packets' worth
            ..policy(8, false)
        },
        4,
    );
    let mut tx = v
        .core
        .open(rt(1, 1_000, 1, 1_000_000, (8 * PAYLOAD) as u32))
        .unwrap();
    tx.submit_at(&vec![0; 8 * PAYLOAD], 0).unwrap();
    v.core.enable_trace(8);
    v.run_until(8, 100);
    // Runs stop at the first preemption point past the budget: 3 packets (300 cycles).
    let runs: Vec<_> = v.core.trace().iter().map(|e| e.run_start).collect();
    assert_eq!(runs, vec![0, 0, 0, 300, 300, 300, 600, 600]);
    let s = tx.stats().snapshot();
    assert_eq!(s.budget_overruns, 2, "two runs of 300 over a 250 budget");
    assert_eq!(s.overrun_cycles, 100);
}

#[test]
fn packet_headers_carry_the_deadlines_and_fragments() {
    use dataplane::core::{Core, CoreConfig};
    use dataplane::memlink::{MemLink, MemLinkConfig};
    use dataplane::port::{Batch, PacketBuf, Port};
    use dataplane::time::{ManualClock, VirtualCpu};
    use dataplane::wire::{parse_frame, RTCHAN_UDP_PORT};
    use std::sync::Arc;

    let clock = ManualClock::new(1_000);
    let (a, mut b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: 0,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let mut core = Core::new(CoreConfig::default(), a).unwrap();
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 10,
    };
    let spec = rt(7, 5_000, 1, 40_000, 3000);
    let mut tx = core.open(spec).unwrap();
    tx.submit_at(&vec![9u8; 3000], 1_000).unwrap();
    for _ in 0..4 {
        core.poll(&clock, &mut cpu);
    }
    let mut batch = Batch::new();
    b.rx_burst(0, &mut batch).unwrap();
    let frames: Vec<_> = batch
        .iter()
        .map(|f| parse_frame(f.data(), RTCHAN_UDP_PORT).unwrap().header)
        .collect();
    let per = core.payload_per_packet();
    assert_eq!(frames.len(), 3000usize.div_ceil(per as usize));
    for (i, h) in frames.iter().enumerate() {
        assert_eq!(h.channel, 7);
        assert_eq!(h.frag_index as usize, i);
        assert_eq!(h.frag_count as usize, frames.len());
        assert_eq!(h.msg_len, 3000);
        assert_eq!(h.frag_offset, i as u32 * per);
        assert_eq!(h.submit_ts, 1_000);
        assert_eq!(h.deadline, 1_000 + 40_000);
    }
}

#[test]
fn a_refused_open_leaves_its_slot_free() {
    let mut v = virtual_core(policy(4, true), 1);
    // A zero deadline is refused after the slot was picked.
    let bad = rt(1, 1_000_000, 1, 0, 100);
    assert!(v.core.open(bad).is_err());
    let ok = rt(2, 1_000_000, 1, 1_000_000, 100);
    v.core.open(ok).expect("the only slot is still free");
    let e = v
        .core
        .open(rt(3, 1_000_000, 1, 1_000_000, 100))
        .unwrap_err();
    assert!(e.to_string().contains("full"), "{e}");
}

#[test]
fn the_core_publishes_its_busy_time_iterations_and_longest_stretch() {
    let mut v = virtual_core(policy(4, true), 2);
    v.clock.set(10_000);
    let per = v.core.payload_per_packet() as usize;
    let mut tx = v
        .core
        .open(rt(1, 1_000_000, 1, 1_000_000, 10 * per as u32))
        .unwrap();
    let gauges = v.core.gauges().clone();
    // Nothing published before the first iteration.
    assert_eq!(gauges.snapshot().iterations, 0);
    tx.submit_at(&vec![7u8; 10 * per], 10_000).unwrap();
    v.core.enable_trace(10);
    v.run_until(10, 100);
    // Idle for 1 ms of virtual time, then one more (idle) iteration.
    v.clock.set(v.clock_now() + 1_000_000);
    v.core.poll(&v.clock, &mut v.cpu);
    let g = gauges.snapshot();
    assert_eq!(g.iterations, v.core.stats().iterations);
    // Ten packets at PACKET_COST each, in busy iterations only; the longest stretch is one run
    // of k = 4 packets (stages and the service phase cost nothing on this virtual CPU).
    assert_eq!(g.busy_ns, 10 * PACKET_COST);
    assert_eq!(g.longest_stretch_ns, 4 * PACKET_COST);
    assert_eq!(g.first_ns, 10_000);
    assert_eq!(g.last_ns, v.clock_now());
    let share = g.busy_share();
    let want = (10 * PACKET_COST) as f64 / (v.clock_now() - 10_000) as f64;
    assert!((share - want).abs() < 1e-12, "{share} vs {want}");
}
