//! Processor-demand analysis for EDF with non-preemptive chunks, one resource at a time.
//!
//! A resource (a core's CPU or a TX queue's share of the link) runs sporadic [`Task`]s under
//! EDF. Work is non-preemptive in chunks, so a job may wait for one chunk of work with a
//! later deadline: the [`Blocking`] function `B(t)`. The set is schedulable iff `U < 1` and
//! `dbf(t) + B(t) <= t` at every absolute deadline `t` up to the bound `L` past which the
//! inequality holds on its own.
//!
//! [`check`] finds the answer with Quick Processor-demand Analysis (Zhang & Burns 2009),
//! run once per interval on which `B` is constant (`B` only steps down, at channel
//! deadlines, so `dbf + B` is non-decreasing inside each interval, which QPA needs).
//! All arithmetic is integer: utilisation is fixed point with 64 fraction bits, each term
//! rounded up, so the test can only err on the safe side and by at most 2^-64 per task.

use super::model::Nanos;

/// One sporadic task on one resource: every `period` at most one job of `cost`, due
/// `deadline` after its (logical) arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    /// Worst-case cost of one job on this resource.
    pub cost: Nanos,
    /// Minimum separation of arrivals (`Imin`), > 0.
    pub period: Nanos,
    /// Relative deadline, > 0.
    pub deadline: Nanos,
}

impl Task {
    /// Demand of this task's jobs that arrive and are due within any window of length `t`.
    pub fn dbf(&self, t: Nanos) -> u128 {
        if t < self.deadline {
            0
        } else {
            (u128::from((t - self.deadline) / self.period) + 1) * u128::from(self.cost)
        }
    }

    /// Utilisation in fixed point with 64 fraction bits, rounded up.
    pub fn utilisation_fp(&self) -> u128 {
        (u128::from(self.cost) << 64).div_ceil(u128::from(self.period))
    }
}

/// The longest non-preemptive chunk that can delay work due within `t`:
/// `B(t) = max(floor, max { chunk : (deadline, chunk) registered, deadline > t })`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Blocking {
    floor: Nanos,
    /// `(deadline, chunk)` with deadline ascending and chunk strictly descending, all chunks
    /// above `floor`: `B(t)` is the chunk of the first step whose deadline exceeds `t`.
    steps: Vec<(Nanos, Nanos)>,
}

impl Blocking {
    /// A blocking term that is the same for every `t` (the link: one maximum-size packet).
    pub fn constant(floor: Nanos) -> Self {
        Self {
            floor,
            steps: Vec::new(),
        }
    }

    /// `floor` for work without deadlines plus one `(relative deadline, chunk)` per task.
    pub fn with_chunks(floor: Nanos, chunks: impl IntoIterator<Item = (Nanos, Nanos)>) -> Self {
        let mut b = Self::constant(floor);
        b.add(chunks);
        b
    }

    /// Adds more `(relative deadline, chunk)` pairs.
    pub fn add(&mut self, chunks: impl IntoIterator<Item = (Nanos, Nanos)>) {
        let mut all: Vec<(Nanos, Nanos)> = chunks
            .into_iter()
            .filter(|&(_, c)| c > self.floor)
            .chain(self.steps.iter().copied())
            .collect();
        // Sweep deadlines downwards keeping the chunks that raise the running maximum.
        all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut steps = Vec::new();
        let mut best = self.floor;
        for (d, c) in all {
            if c > best {
                steps.push((d, c));
                best = c;
            }
        }
        steps.reverse();
        self.steps = steps;
    }

    /// `B(t)`.
    pub fn at(&self, t: Nanos) -> Nanos {
        let i = self.steps.partition_point(|&(d, _)| d <= t);
        self.steps.get(i).map_or(self.floor, |&(_, c)| c)
    }

    /// The least `t' > t` with `B(t') != B(t)`, or `None` if `B` is constant after `t`.
    pub fn next_change_after(&self, t: Nanos) -> Option<Nanos> {
        let i = self.steps.partition_point(|&(d, _)| d <= t);
        self.steps.get(i).map(|&(d, _)| d)
    }

    /// `B(0)`, the largest value.
    pub fn max(&self) -> Nanos {
        self.at(0)
    }

    /// Intervals `[start, end)` on which `B` is constant, highest first.
    fn segments(&self) -> Vec<(Nanos, Nanos, Nanos)> {
        let mut out = Vec::with_capacity(self.steps.len() + 1);
        let mut end = Nanos::MAX;
        let mut value = self.floor;
        for &(d, c) in self.steps.iter().rev() {
            if d < end {
                out.push((d, end, value));
            }
            end = d;
            value = c;
        }
        out.push((0, end, value));
        out
    }
}

/// Why a task set is not schedulable on one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unschedulable {
    /// `U >= 1`: the busy period is unbounded (callers test the reserve before this).
    Overloaded,
    /// `dbf(t) + B(t) > t` at the absolute deadline `t`.
    Demand {
        /// The check point.
        t: Nanos,
        /// `dbf(t)`, saturated to `u64`.
        demand: Nanos,
        /// `B(t)`.
        blocking: Nanos,
    },
}

/// A task set: tasks sorted by deadline (the resource's admitted channels) plus a few
/// extra tasks in any order (the candidate being tested).
#[derive(Clone, Copy, Debug)]
pub struct TaskSet<'a> {
    sorted: &'a [Task],
    extra: &'a [Task],
    interference: &'a [Task],
}

impl<'a> TaskSet<'a> {
    /// `sorted` must be sorted by ascending deadline (checked in debug builds).
    pub fn new(sorted: &'a [Task], extra: &'a [Task]) -> Self {
        debug_assert!(sorted.windows(2).all(|w| w[0].deadline <= w[1].deadline));
        Self {
            sorted,
            extra,
            interference: &[],
        }
    }

    /// Adds work without deadlines of its own that the resource runs at most as often as
    /// these sporadic tasks (the polling loop's service phase and TX stages): it counts in
    /// `dbf` and `U`, but its "deadlines" are not check points (nothing is due there).
    pub fn with_interference(mut self, interference: &'a [Task]) -> Self {
        self.interference = interference;
        self
    }

    fn iter(&self) -> impl Iterator<Item = &'a Task> + 'a {
        self.sorted
            .iter()
            .chain(self.extra.iter())
            .chain(self.interference.iter())
    }

    /// `dbf(t)` and the largest absolute deadline `<= t`, in one pass.
    fn eval(&self, t: Nanos) -> (u128, Option<Nanos>) {
        let n = self.sorted.partition_point(|k| k.deadline <= t);
        let mut demand = 0u128;
        let mut last: Option<Nanos> = None;
        for k in self.sorted[..n]
            .iter()
            .chain(self.extra.iter().filter(|k| k.deadline <= t))
        {
            let jobs = (t - k.deadline) / k.period;
            demand += u128::from(jobs + 1) * u128::from(k.cost);
            let d = k.deadline + jobs * k.period;
            last = Some(last.map_or(d, |l| l.max(d)));
        }
        for k in self.interference.iter().filter(|k| k.deadline <= t) {
            demand += u128::from((t - k.deadline) / k.period + 1) * u128::from(k.cost);
        }
        (demand, last)
    }

    /// Total utilisation, fixed point with 64 fraction bits, each term rounded up.
    pub fn utilisation_fp(&self) -> u128 {
        self.iter().map(Task::utilisation_fp).sum()
    }

    /// `dbf(t)` of the whole set.
    pub fn dbf(&self, t: Nanos) -> u128 {
        self.eval(t).0
    }

    /// An upper bound past which `dbf(t) + B(0) <= t` always holds (`L_a` of
    /// Zhang & Burns with the blocking term added), or `None` when `U >= 1`.
    pub fn demand_bound(&self, blocking_max: Nanos) -> Option<Nanos> {
        let u = self.utilisation_fp();
        let one = 1u128 << 64;
        if u >= one {
            return None;
        }
        // dbf(t) <= U t + sum (T - D) U  for t >= max(D - T): bound the constant from above.
        let mut lin: i128 = i128::from(blocking_max);
        let mut floor_t: Nanos = 0;
        for k in self.iter() {
            let (c, p, d) = (
                u128::from(k.cost),
                u128::from(k.period),
                u128::from(k.deadline),
            );
            if p >= d {
                lin += ((p - d) * c).div_ceil(p) as i128;
            } else {
                lin -= ((d - p) * c / p) as i128;
                floor_t = floor_t.max(k.deadline - k.period);
            }
        }
        if lin <= 0 {
            return Some(floor_t);
        }
        // 1 - U >= (2^64 - u) / 2^64, so lin / (1 - U) <= lin * 2^64 / (2^64 - u).
        let bound = (lin as u128)
            .checked_mul(one)
            .map_or(u128::MAX, |x| x.div_ceil(one - u));
        Some(floor_t.max(u64::try_from(bound).unwrap_or(Nanos::MAX)))
    }
}

/// Decides whether `set` is schedulable by EDF with non-preemptive chunks `blocking`.
///
/// Exact for the model: returns `Ok` iff `U < 1` and `dbf(t) + B(t) <= t` at every
/// absolute deadline `t`. On failure the reported `t` is an absolute deadline where the
/// inequality fails (not necessarily the first).
pub fn check(set: &TaskSet<'_>, blocking: &Blocking) -> Result<(), Unschedulable> {
    check_from(set, blocking, 0)
}

/// [`check`] restricted to check points `t >= from`.
///
/// Admission uses it when the set minus its extra tasks is known to be schedulable (it
/// was admitted) and the extra tasks neither have a deadline below `from` nor raise
/// `B(t)` below `from`: `dbf + B` is then unchanged below `from`, and so is the verdict.
pub fn check_from(
    set: &TaskSet<'_>,
    blocking: &Blocking,
    from: Nanos,
) -> Result<(), Unschedulable> {
    let limit = set
        .demand_bound(blocking.max())
        .ok_or(Unschedulable::Overloaded)?;
    for (start, end, beta) in blocking.segments() {
        let start = start.max(from);
        if start > limit || start >= end {
            continue;
        }
        let beta128 = u128::from(beta);
        let mut t = limit.min(end - 1);
        // QPA inside [start, end): if h(p) < p then no deadline in [h(p), p] can fail,
        // because h = dbf + beta is non-decreasing here; jump straight to h(p).
        loop {
            let (demand, last) = set.eval(t);
            let Some(p) = last.filter(|&p| p >= start) else {
                break;
            };
            // Interference may step up between the check point and t: take it at p.
            let demand = if set.interference.is_empty() || p == t {
                demand
            } else {
                set.eval(p).0
            };
            let h = demand + beta128;
            let p128 = u128::from(p);
            if h > p128 {
                return Err(Unschedulable::Demand {
                    t: p,
                    demand: u64::try_from(demand).unwrap_or(Nanos::MAX),
                    blocking: beta,
                });
            }
            if h < p128 {
                t = h as Nanos;
            } else if p == 0 {
                break;
            } else {
                t = p - 1;
            }
        }
    }
    Ok(())
}

/// The least value `v >= lo` for which `pass(v)` holds, assuming `pass` is monotone
/// (false below some threshold, true from it on); `None` if even [`SEARCH_LIMIT`] fails.
pub fn least_passing(lo: Nanos, mut pass: impl FnMut(Nanos) -> bool) -> Option<Nanos> {
    let lo = lo.max(1);
    if pass(lo) {
        return Some(lo);
    }
    if lo >= SEARCH_LIMIT || !pass(SEARCH_LIMIT) {
        return None;
    }
    // Gallop up from lo, then bisect: cheap when the answer is close to lo.
    let (mut bad, mut good) = (lo, SEARCH_LIMIT);
    let mut step = lo;
    while bad.saturating_add(step) < good {
        let probe = bad + step;
        if pass(probe) {
            good = probe;
            break;
        }
        bad = probe;
        step = step.saturating_mul(2);
    }
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if pass(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// The largest deadline the searches consider (about 146 years): "infinite".
pub const SEARCH_LIMIT: Nanos = 1 << 62;
