//! The QPA-based demand test against a brute-force processor-demand check written here
//! independently: every absolute deadline up to max(D) + hyperperiod, exact rational
//! utilisation.

use control::admission::demand::{check, least_passing, Blocking, Task, TaskSet, Unschedulable};
use proptest::prelude::*;

/// Divisors of 240: hyperperiods stay small enough to enumerate.
const PERIODS: [u64; 14] = [2, 3, 4, 5, 6, 8, 10, 12, 15, 16, 20, 24, 30, 40];

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[derive(Debug, Clone)]
struct Case {
    tasks: Vec<(Task, u64)>, // task and its non-preemptive chunk
    floor: u64,
    split: usize, // tasks[..split] go in the sorted slice, the rest are "extra"
}

fn case() -> impl Strategy<Value = Case> {
    let task = (0..PERIODS.len(), 1u64..=10, 1u64..=70, 1u64..=10).prop_map(|(p, c, d, q)| {
        (
            Task {
                cost: c,
                period: PERIODS[p],
                deadline: d,
            },
            q.min(c),
        )
    });
    (prop::collection::vec(task, 1..6), 0u64..=12, 0usize..6).prop_map(|(tasks, floor, s)| {
        let split = s.min(tasks.len());
        Case {
            tasks,
            floor,
            split,
        }
    })
}

/// B(t) as the definition reads.
fn brute_blocking(c: &Case, t: u64) -> u64 {
    c.tasks
        .iter()
        .filter(|(k, _)| k.deadline > t)
        .map(|&(_, q)| q)
        .fold(c.floor, u64::max)
}

fn brute_dbf(c: &Case, t: u64) -> u64 {
    c.tasks
        .iter()
        .map(|(k, _)| {
            if t < k.deadline {
                0
            } else {
                ((t - k.deadline) / k.period + 1) * k.cost
            }
        })
        .sum()
}

/// `Err(true)` = overloaded, `Err(false)` = a deadline fails, `Ok` = schedulable.
fn brute(c: &Case) -> Result<(), bool> {
    let h = c
        .tasks
        .iter()
        .fold(1, |h, (k, _)| h / gcd(h, k.period) * k.period);
    let demand_per_h: u64 = c.tasks.iter().map(|(k, _)| k.cost * (h / k.period)).sum();
    if demand_per_h >= h {
        return Err(true);
    }
    let horizon = c.tasks.iter().map(|(k, _)| k.deadline).max().unwrap() + h;
    for t in 1..=horizon {
        let is_deadline = c
            .tasks
            .iter()
            .any(|(k, _)| t >= k.deadline && (t - k.deadline) % k.period == 0);
        if is_deadline && brute_dbf(c, t) + brute_blocking(c, t) > t {
            return Err(false);
        }
    }
    Ok(())
}

fn run_qpa(c: &Case) -> Result<(), Unschedulable> {
    let mut sorted: Vec<Task> = c.tasks[..c.split].iter().map(|&(k, _)| k).collect();
    sorted.sort_by_key(|k| k.deadline);
    let extra: Vec<Task> = c.tasks[c.split..].iter().map(|&(k, _)| k).collect();
    let blocking = Blocking::with_chunks(c.floor, c.tasks.iter().map(|&(k, q)| (k.deadline, q)));
    check(&TaskSet::new(&sorted, &extra), &blocking)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn qpa_agrees_with_brute_force(c in case()) {
        let fast = run_qpa(&c);
        let slow = brute(&c);
        match (fast, slow) {
            (Ok(()), Ok(())) | (Err(Unschedulable::Overloaded), Err(true)) => {}
            (Err(Unschedulable::Demand { t, demand, blocking }), Err(false)) => {
                // The reported point is a genuine failing absolute deadline.
                prop_assert!(c.tasks.iter().any(|(k, _)| t >= k.deadline && (t - k.deadline) % k.period == 0));
                prop_assert_eq!(demand, brute_dbf(&c, t));
                prop_assert_eq!(blocking, brute_blocking(&c, t));
                prop_assert!(demand + blocking > t);
            }
            (f, s) => prop_assert!(false, "qpa {:?} vs brute force {:?}", f, s),
        }
    }

    #[test]
    fn blocking_matches_definition(c in case(), t in 0u64..80) {
        let b = Blocking::with_chunks(c.floor, c.tasks.iter().map(|&(k, q)| (k.deadline, q)));
        prop_assert_eq!(b.at(t), brute_blocking(&c, t));
    }

    #[test]
    fn least_passing_finds_the_threshold(threshold in 1u64..1_000_000, lo in 0u64..2_000_000) {
        let got = least_passing(lo, |v| v >= threshold);
        prop_assert_eq!(got, Some(threshold.max(lo).max(1)));
    }
}

#[test]
fn least_passing_reports_none_when_nothing_passes() {
    assert_eq!(least_passing(5, |_| false), None);
}

#[test]
fn overloaded_set_is_reported() {
    let tasks = [Task {
        cost: 3,
        period: 3,
        deadline: 3,
    }];
    assert_eq!(
        check(&TaskSet::new(&tasks, &[]), &Blocking::constant(0)),
        Err(Unschedulable::Overloaded)
    );
}
