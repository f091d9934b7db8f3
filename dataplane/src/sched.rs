//! The per-core cooperative scheduler: which handler runs next, in three classes.
//!
//! Pure logic over handler slots, with `now` passed in; the polling core ([`crate::core`]) runs
//! the chosen handler and comes back at the next preemption point.
//!
//! # Order
//! 1. *Current* real-time work (logical arrival time ℓ ≤ now), earliest CPU deadline first.
//! 2. *Best-effort* work, round-robin over best-effort channels, one run each.
//! 3. *Early* real-time work (ℓ > now), earliest ℓ first, only when the policy is
//!    work-conserving; otherwise it waits until it becomes current.
//!
//! A best-effort *reserve* lifts class 2 above class 1 while best-effort has credit: credit
//! accrues at the reserved share of elapsed time (capped at [`RESERVE_BURST_NS`]) and a
//! best-effort run that displaced current real-time work pays its cost from it. So over any
//! interval best-effort receives at least its share when it has work.
//!
//! Every preemption point re-queues the running handler with its new key and picks again; the
//! queues are [`EdfQueue`]s, so a pick costs the same at 10 or 100,000 handlers.

use crate::edf_queue::{EdfQueue, DEFAULT_SHIFT};
use crate::time::Nanos;

/// Largest credit the best-effort reserve banks, ns of CPU time. One millisecond: long enough
/// for a best-effort run to finish, short enough that an idle best-effort class cannot bank a
/// burst that swamps real-time work later (admission counts this burst as blocking).
pub const RESERVE_BURST_NS: Nanos = 1_000_000;

/// Parts per million.
pub const PPM: u64 = 1_000_000;

/// The scheduling policy of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedPolicy {
    /// Packets per handler run before a preemption point (the granularity k ≥ 1).
    pub granularity: u32,
    /// Run early real-time work when nothing else waits.
    pub work_conserving: bool,
    /// Share of the core reserved for best-effort, parts per million.
    pub best_effort_reserve_ppm: u32,
    /// Cycle budget of one handler run; a run stops at the first preemption point past it and
    /// a run that ends over it is counted as an overrun.
    pub run_budget_cycles: u64,
    /// QoS off: one FIFO of handlers in arrival order, no enforcement (ℓ = submit time). The
    /// baseline the benchmarks and the evaluation compare against.
    pub fifo: bool,
}

impl Default for SchedPolicy {
    fn default() -> Self {
        Self {
            granularity: 1,
            work_conserving: false,
            best_effort_reserve_ppm: 0,
            run_budget_cycles: 200_000,
            fifo: false,
        }
    }
}

/// A bad policy value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Granularity must be at least one packet.
    #[error("granularity must be at least 1 packet")]
    ZeroGranularity,
    /// The reserve is a share of the core: at most 1,000,000 ppm, and some must be left.
    #[error("best_effort_reserve_ppm {0} must be below 1000000")]
    ReserveTooLarge(u32),
    /// The FIFO baseline is chosen when a core starts, not switched on a running one.
    #[error("fifo mode cannot change on a running core")]
    FifoChange,
    /// A zero budget would stop every run before its first packet.
    #[error("run_budget_cycles must be greater than zero")]
    ZeroBudget,
}

impl SchedPolicy {
    /// Checks the policy once, on the control path.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.granularity == 0 {
            return Err(PolicyError::ZeroGranularity);
        }
        if self.best_effort_reserve_ppm as u64 >= PPM {
            return Err(PolicyError::ReserveTooLarge(self.best_effort_reserve_ppm));
        }
        if self.run_budget_cycles == 0 {
            return Err(PolicyError::ZeroBudget);
        }
        Ok(())
    }
}

/// The class a handler was picked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Current real-time work.
    Current,
    /// Best-effort work.
    BestEffort,
    /// Best-effort work running on its reserve ahead of current real-time work.
    BestEffortReserved,
    /// Early real-time work (work-conserving policy).
    Early,
    /// Any work under the FIFO baseline (QoS off).
    Fifo,
}

/// Credit for a reserved share of a resource. Units are the resource's (ns of CPU, bytes of
/// link); credit accrues at `share` of elapsed time.
#[derive(Clone, Copy, Debug)]
pub struct Reserve {
    share_ppm: u64,
    /// Accrued credit × PPM (kept scaled to avoid rounding drift).
    credit_scaled: i128,
    cap_scaled: i128,
    last: Nanos,
    per_ns: u64,
}

impl Reserve {
    /// A reserve of `share_ppm` of a resource serving `per_ns` units per ns (scaled by 1000 for
    /// sub-unit rates: bytes per µs for a link), capped at `cap` units.
    pub fn new(share_ppm: u32, per_us: u64, cap: u64) -> Self {
        Self {
            share_ppm: share_ppm as u64,
            credit_scaled: 0,
            cap_scaled: cap as i128 * PPM as i128,
            last: 0,
            per_ns: per_us,
        }
    }
    /// Accrues credit up to `now`.
    #[inline]
    pub fn update(&mut self, now: Nanos) {
        if now > self.last {
            if self.share_ppm != 0 {
                let dt = (now - self.last) as i128;
                // units = dt ns × per_us / 1000; × share_ppm.
                self.credit_scaled += dt * self.per_ns as i128 * self.share_ppm as i128 / 1000;
                if self.credit_scaled > self.cap_scaled {
                    self.credit_scaled = self.cap_scaled;
                }
            }
            self.last = now;
        }
    }
    /// True when the reserved class may run ahead of real-time work.
    #[inline]
    pub fn has_credit(&self) -> bool {
        self.share_ppm != 0 && self.credit_scaled > 0
    }
    /// Pays `units` of service out of the credit.
    #[inline]
    pub fn charge(&mut self, units: u64) {
        self.credit_scaled -= units as i128 * PPM as i128;
        // Debt is bounded too: one overlong run cannot starve the class for long.
        if self.credit_scaled < -self.cap_scaled {
            self.credit_scaled = -self.cap_scaled;
        }
    }
    /// Drops all credit and restarts accrual at `now` (when the reserved class has no work:
    /// idle time does not bank a burst).
    #[inline]
    pub fn idle(&mut self, now: Nanos) {
        self.credit_scaled = self.credit_scaled.min(0);
        self.last = self.last.max(now);
    }
}

/// An intrusive FIFO of slots (the best-effort round-robin).
#[derive(Debug)]
struct Fifo {
    next: Vec<u32>,
    queued: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

const NIL: u32 = u32::MAX;

impl Fifo {
    fn new(cap: usize) -> Self {
        Self {
            next: vec![NIL; cap],
            queued: vec![false; cap],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
    fn reserve(&mut self, cap: usize) {
        if cap > self.next.len() {
            self.next.resize(cap, NIL);
            self.queued.resize(cap, false);
        }
    }
    fn push(&mut self, id: u32) {
        assert!(!self.queued[id as usize], "slot {id} queued twice");
        self.queued[id as usize] = true;
        self.next[id as usize] = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.next[self.tail as usize] = id;
        }
        self.tail = id;
        self.len += 1;
    }
    fn pop(&mut self) -> Option<u32> {
        if self.head == NIL {
            return None;
        }
        let id = self.head;
        self.head = self.next[id as usize];
        if self.head == NIL {
            self.tail = NIL;
        }
        self.queued[id as usize] = false;
        self.len -= 1;
        Some(id)
    }
    fn remove(&mut self, id: u32) -> bool {
        if !self.queued.get(id as usize).copied().unwrap_or(false) {
            return false;
        }
        // Rare (closing a channel): walk the list.
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != id {
            prev = cur;
            cur = self.next[cur as usize];
        }
        let nxt = self.next[id as usize];
        if prev == NIL {
            self.head = nxt;
        } else {
            self.next[prev as usize] = nxt;
        }
        if self.tail == id {
            self.tail = prev;
        }
        self.queued[id as usize] = false;
        self.len -= 1;
        true
    }
}

/// The three-class scheduler of one core.
#[derive(Debug)]
pub struct CpuScheduler {
    policy: SchedPolicy,
    current: EdfQueue,
    early: EdfQueue,
    best_effort: Fifo,
    deadline: Vec<Nanos>,
    reserve: Reserve,
}

impl CpuScheduler {
    /// A scheduler for slots `0..capacity`.
    pub fn new(capacity: usize, policy: SchedPolicy) -> Self {
        Self {
            policy,
            current: EdfQueue::new(capacity, DEFAULT_SHIFT),
            early: EdfQueue::new(capacity, DEFAULT_SHIFT),
            best_effort: Fifo::new(capacity),
            deadline: vec![0; capacity],
            reserve: Reserve::new(policy.best_effort_reserve_ppm, 1000, RESERVE_BURST_NS),
        }
    }

    /// Makes room for slots `0..capacity` (control path).
    pub fn reserve_slots(&mut self, capacity: usize) {
        self.current.reserve_ids(capacity);
        self.early.reserve_ids(capacity);
        self.best_effort.reserve(capacity);
        if capacity > self.deadline.len() {
            self.deadline.resize(capacity, 0);
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &SchedPolicy {
        &self.policy
    }

    /// Replaces the policy (applied by the core at a preemption point).
    pub fn set_policy(&mut self, policy: SchedPolicy) {
        let mut r = Reserve::new(policy.best_effort_reserve_ppm, 1000, RESERVE_BURST_NS);
        r.last = self.reserve.last;
        self.reserve = r;
        self.policy = policy;
    }

    /// Queues a real-time handler whose head message has logical arrival `logical` and
    /// absolute CPU deadline `deadline`.
    #[inline]
    pub fn enqueue_real_time(&mut self, slot: u32, logical: Nanos, deadline: Nanos, now: Nanos) {
        if self.policy.fifo {
            self.best_effort.push(slot);
            return;
        }
        self.deadline[slot as usize] = deadline;
        if logical <= now {
            self.current.insert(slot, deadline);
        } else {
            self.early.insert(slot, logical);
        }
    }

    /// Queues a best-effort handler at the back of the round-robin.
    #[inline]
    pub fn enqueue_best_effort(&mut self, slot: u32) {
        self.best_effort.push(slot);
    }

    /// Removes a slot from whichever queue holds it.
    pub fn remove(&mut self, slot: u32) -> bool {
        self.current.remove(slot) || self.early.remove(slot) || self.best_effort.remove(slot)
    }

    /// True when `slot` is queued in any class.
    pub fn is_queued(&self, slot: u32) -> bool {
        self.current.contains(slot)
            || self.early.contains(slot)
            || self
                .best_effort
                .queued
                .get(slot as usize)
                .copied()
                .unwrap_or(false)
    }

    /// Moves early handlers whose logical arrival has come into the current class.
    #[inline]
    fn promote(&mut self, now: Nanos) {
        while let Some((_, slot)) = self.early.pop_if_at_most(now) {
            self.current.insert(slot, self.deadline[slot as usize]);
        }
    }

    /// Removes and returns the handler to run next, with the class it runs in.
    #[inline]
    pub fn pick(&mut self, now: Nanos) -> Option<(u32, Class)> {
        if self.policy.fifo {
            return self.best_effort.pop().map(|s| (s, Class::Fifo));
        }
        self.promote(now);
        self.reserve.update(now);
        let be_waiting = self.best_effort.len > 0;
        if !be_waiting {
            self.reserve.idle(now);
        }
        if !self.current.is_empty() {
            if be_waiting && self.reserve.has_credit() {
                return self
                    .best_effort
                    .pop()
                    .map(|s| (s, Class::BestEffortReserved));
            }
            return self.current.pop().map(|(_, s)| (s, Class::Current));
        }
        if let Some(s) = self.best_effort.pop() {
            return Some((s, Class::BestEffort));
        }
        if self.policy.work_conserving {
            return self.early.pop().map(|(_, s)| (s, Class::Early));
        }
        None
    }

    /// Charges a finished run of `cost_ns` in `class` (the reserve pays for reserved runs).
    #[inline]
    pub fn account(&mut self, class: Class, cost_ns: Nanos) {
        if class == Class::BestEffortReserved {
            self.reserve.charge(cost_ns);
        }
    }

    /// When the earliest early handler becomes current, if any (the core may sleep until then).
    pub fn next_release(&mut self) -> Option<Nanos> {
        self.early.peek().map(|(l, _)| l)
    }

    /// Handlers queued in each class: (current, best-effort, early).
    pub fn queued(&self) -> (usize, usize, usize) {
        (self.current.len(), self.best_effort.len, self.early.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_classes_in_order() {
        let mut s = CpuScheduler::new(
            8,
            SchedPolicy {
                work_conserving: true,
                ..SchedPolicy::default()
            },
        );
        s.enqueue_real_time(0, 500, 900, 100); // early
        s.enqueue_best_effort(1);
        s.enqueue_real_time(2, 50, 700, 100); // current
        s.enqueue_real_time(3, 60, 600, 100); // current, earlier deadline
        assert_eq!(s.pick(100), Some((3, Class::Current)));
        assert_eq!(s.pick(100), Some((2, Class::Current)));
        assert_eq!(s.pick(100), Some((1, Class::BestEffort)));
        assert_eq!(s.pick(100), Some((0, Class::Early)));
        assert_eq!(s.pick(100), None);
    }

    #[test]
    fn non_work_conserving_holds_early_work() {
        let mut s = CpuScheduler::new(4, SchedPolicy::default());
        s.enqueue_real_time(0, 500, 900, 100);
        assert_eq!(s.pick(499), None);
        assert_eq!(s.next_release(), Some(500));
        assert_eq!(s.pick(500), Some((0, Class::Current)));
    }

    #[test]
    fn reserve_lets_best_effort_ahead_at_its_share() {
        // 25% reserve; each run costs 1 µs; real-time always has current work.
        let mut s = CpuScheduler::new(
            4,
            SchedPolicy {
                best_effort_reserve_ppm: 250_000,
                ..SchedPolicy::default()
            },
        );
        let mut now = 0;
        let (mut rt, mut be) = (0u32, 0u32);
        s.enqueue_best_effort(1);
        s.enqueue_real_time(0, 0, 10, 0);
        for _ in 0..10_000 {
            let (slot, class) = s.pick(now).unwrap();
            now += 1000;
            s.account(class, 1000);
            match class {
                Class::Current => {
                    rt += 1;
                    s.enqueue_real_time(slot, 0, now + 10, now);
                }
                Class::BestEffortReserved => {
                    be += 1;
                    s.enqueue_best_effort(slot);
                }
                other => panic!("unexpected class {other:?}"),
            }
        }
        let share = be as f64 / (rt + be) as f64;
        assert!((0.24..=0.26).contains(&share), "best-effort share {share}");
    }

    #[test]
    fn best_effort_without_reserve_waits_for_current_work() {
        let mut s = CpuScheduler::new(4, SchedPolicy::default());
        s.enqueue_best_effort(1);
        s.enqueue_real_time(0, 0, 10, 0);
        assert_eq!(s.pick(0), Some((0, Class::Current)));
        assert_eq!(s.pick(0), Some((1, Class::BestEffort)));
    }

    #[test]
    fn remove_from_any_class() {
        let mut s = CpuScheduler::new(4, SchedPolicy::default());
        s.enqueue_best_effort(1);
        s.enqueue_best_effort(2);
        s.enqueue_real_time(0, 0, 10, 0);
        assert!(s.remove(1));
        assert!(s.remove(0));
        assert!(!s.remove(0));
        assert_eq!(s.pick(0), Some((2, Class::BestEffort)));
    }

    #[test]
    fn policy_validation_names_the_problem() {
        let p = SchedPolicy {
            granularity: 0,
            ..SchedPolicy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::ZeroGranularity));
        let p = SchedPolicy {
            best_effort_reserve_ppm: 1_000_000,
            ..SchedPolicy::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("best_effort_reserve_ppm"));
    }
}
