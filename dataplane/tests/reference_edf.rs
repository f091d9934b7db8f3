//! Property test: on random workloads the core's processing order equals a plain reference
//! simulation of the three-class cooperative EDF policy, written here from the brief.

mod common;

use common::*;
use dataplane::sched::{Class, SchedPolicy};
use dataplane::spec::ChannelConfig;
use dataplane::time::Nanos;
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
struct ChanSpec {
    best_effort: bool,
    imin: Nanos,
    deadline: Nanos,
    /// (submit time, fragments)
    messages: Vec<(Nanos, u16)>,
}

fn chan() -> impl Strategy<Value = ChanSpec> {
    (
        prop::bool::weighted(0.25),
        // Small ranges on purpose: ties in deadline and ℓ between channels are common.
        1u64..20,
        1u64..40,
        prop::collection::vec((0u64..100, 1u16..5), 0..7),
    )
        .prop_map(|(be, imin, d, mut msgs)| {
            msgs.sort();
            ChanSpec {
                best_effort: be,
                imin: imin * PACKET_COST,
                deadline: d * PACKET_COST,
                messages: msgs
                    .into_iter()
                    .map(|(t, f)| (t * PACKET_COST, f))
                    .collect(),
            }
        })
}

/// (channel, seq, fragment, run start, class is best-effort)
type Event = (u32, u32, u16, Nanos);

/// The reference: at every preemption point, current real-time by (deadline, channel), then
/// best-effort round-robin, then (work-conserving) early real-time by (ℓ, channel); a run is at
/// most k packets of one message.
fn reference(chans: &[ChanSpec], k: u32, wc: bool) -> Vec<Event> {
    struct Msg {
        logical: Nanos,
        frags: u16,
        seq: u32,
        next: u16,
    }
    let mut queues: Vec<VecDeque<Msg>> = chans
        .iter()
        .map(|c| {
            let mut last: Option<Nanos> = None;
            c.messages
                .iter()
                .enumerate()
                .map(|(i, &(t, f))| {
                    let l = if c.best_effort {
                        t
                    } else {
                        last.map_or(t, |p| (p + c.imin).max(t))
                    };
                    last = Some(l);
                    Msg {
                        logical: l,
                        frags: f,
                        seq: i as u32,
                        next: 0,
                    }
                })
                .collect()
        })
        .collect();
    let mut be: VecDeque<usize> = (0..chans.len())
        .filter(|&i| chans[i].best_effort && !queues[i].is_empty())
        .collect();
    let mut now = 0;
    let mut out = Vec::new();
    loop {
        let rt_heads = || {
            (0..chans.len()).filter_map(|i| {
                let q = &queues[i];
                (!chans[i].best_effort)
                    .then(|| {
                        q.front()
                            .map(|m| (i, m.logical, m.logical + chans[i].deadline))
                    })
                    .flatten()
            })
        };
        let current = rt_heads()
            .filter(|&(_, l, _)| l <= now)
            .min_by_key(|&(i, _, d)| (d, i));
        let pick = if let Some((i, _, _)) = current {
            Some(i)
        } else if let Some(i) = be.pop_front() {
            Some(i)
        } else if wc {
            rt_heads()
                .min_by_key(|&(i, l, _)| (l, i))
                .map(|(i, _, _)| i)
        } else {
            match rt_heads().map(|(_, l, _)| l).min() {
                Some(l) => {
                    now = l;
                    continue;
                }
                None => None,
            }
        };
        let Some(i) = pick else { break };
        let start = now;
        let q = &mut queues[i];
        let m = q.front_mut().unwrap();
        let mut n = 0;
        while n < k && m.next < m.frags {
            out.push((i as u32, m.seq, m.next, start));
            m.next += 1;
            n += 1;
            now += PACKET_COST;
        }
        if m.next == m.frags {
            q.pop_front();
        }
        if chans[i].best_effort && !q.is_empty() {
            be.push_back(i);
        }
    }
    out
}

fn run_core(chans: &[ChanSpec], k: u32, wc: bool) -> Vec<Event> {
    let mut v = virtual_core(
        SchedPolicy {
            granularity: k,
            work_conserving: wc,
            best_effort_reserve_ppm: 0,
            run_budget_cycles: u64::MAX / 2,
            fifo: false,
        },
        chans.len() as u32,
    );
    let mut senders = Vec::new();
    for (i, c) in chans.iter().enumerate() {
        let n = c.messages.len().max(1) as u32;
        let cfg = if c.best_effort {
            ChannelConfig::best_effort(i as u32, (4 * PAYLOAD) as u32, n)
        } else {
            rt(i as u32, c.imin, n, c.deadline, (4 * PAYLOAD) as u32)
        };
        senders.push(v.core.open(cfg).unwrap());
    }
    let total: usize = chans
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.1 as usize))
        .sum();
    for (c, tx) in chans.iter().zip(senders.iter_mut()) {
        for &(t, frags) in &c.messages {
            let len = frags as usize * PAYLOAD - PAYLOAD / 2;
            tx.submit_at(&vec![0xab; len], t).unwrap();
        }
    }
    v.core.enable_trace(total);
    v.run_until(total, 100_000);
    assert_eq!(v.core.trace().len(), total, "core wrote every packet");
    v.core
        .trace()
        .iter()
        .map(|e| {
            assert_eq!(
                e.class == Class::BestEffort,
                chans[e.channel as usize].best_effort
            );
            (e.channel, e.seq, e.frag, e.run_start)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn core_order_matches_reference_edf(
        chans in prop::collection::vec(chan(), 1..6),
        k in 1u32..5,
        wc in any::<bool>(),
    ) {
        let want = reference(&chans, k, wc);
        let got = run_core(&chans, k, wc);
        prop_assert_eq!(got, want);
    }
}
