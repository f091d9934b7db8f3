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
//! accrues at the reserved share of real-time service (capped at [`RESERVE_BURST_NS`]) and a
//! best-effort run that displaced current real-time work pays its cost from it. It lifts at
//! most one best-effort run while current real-time work waits without a break: once a
//! best-effort run (lifted, or one that was running when real-time work became current) has
//! delayed current work, the next lift waits until the current class has been empty at a
//! pick. So current real-time work is delayed by at most one best-effort run in any busy
//! window, which is what admission charges; best-effort still gets its share over time,
//! since admission keeps real-time demand within `1 − reserve`.
//!
//! Every preemption point re-queues the running handler with its new key and picks again; the
//! queues are [`EdfQueue`]s, so a pick costs the same at 10 or 100,000 handlers.

use crate::edf_queue::{EdfQueue, DEFAULT_SHIFT};
use crate::time::Nanos;

/// Largest credit the best-effort reserve banks, ns of CPU time: 100 µs, several best-effort
/// runs; it bounds how long best-effort can run ahead of real-time work in one go.
pub const RESERVE_BURST_NS: Nanos = 100_000;

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

/// Credit for a reserved share of a resource, earned by service, not by time.
///
/// Every unit of service real-time work receives (ns of CPU, bytes of link) while best-effort
/// waits earns best-effort `share / (1 − share)` units of credit; best-effort service given
/// ahead of real-time work on that credit pays it back. So whenever both classes want the
/// resource, best-effort gets at least `share` of what is served — whether the resource is
/// saturated or throttled by something else (a full link queue). Credit is only kept while
/// best-effort waits (idle best-effort banks nothing) and is capped. Admission treats the
/// reserve as a utilisation cap and one best-effort run as blocking; the credit cap bounds how
/// far best-effort can run ahead beyond that (one run's share in practice, since credit is
/// spent as soon as it turns positive).
#[derive(Clone, Copy, Debug)]
pub struct Reserve {
    share_ppm: u64,
    /// Credit in units × (PPM − share), so grants are exact integers.
    credit: i128,
    cap: i128,
}

impl Reserve {
    /// A reserve of `share_ppm` (< 1,000,000) with credit capped at `cap` units.
    pub fn new(share_ppm: u32, cap: u64) -> Self {
        let share = (share_ppm as u64).min(PPM - 1);
        Self {
            share_ppm: share,
            credit: 0,
            cap: cap as i128 * (PPM - share) as i128,
        }
    }
    /// Real-time work received `units` of service while best-effort waited.
    #[inline]
    pub fn grant(&mut self, units: u64) {
        if self.share_ppm != 0 {
            self.credit = (self.credit + units as i128 * self.share_ppm as i128).min(self.cap);
        }
    }
    /// True when best-effort may go ahead of real-time work.
    #[inline]
    pub fn has_credit(&self) -> bool {
        self.share_ppm != 0 && self.credit > 0
    }
    /// Best-effort received `units` ahead of real-time work.
    #[inline]
    pub fn charge(&mut self, units: u64) {
        self.credit = (self.credit - units as i128 * (PPM - self.share_ppm) as i128).max(-self.cap);
    }
    /// Best-effort has no work: it banks nothing.
    #[inline]
    pub fn idle(&mut self) {
        self.credit = self.credit.min(0);
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
    /// Best-effort had work it could use at the last pick.
    best_effort_waited: bool,
    /// The last pick ran best-effort.
    last_was_best_effort: bool,
    /// A best-effort run has delayed current real-time work since the current class was last
    /// seen empty: no lift until it empties again.
    lifted_in_window: bool,
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
            reserve: Reserve::new(policy.best_effort_reserve_ppm, RESERVE_BURST_NS),
            best_effort_waited: false,
            last_was_best_effort: false,
            lifted_in_window: false,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &SchedPolicy {
        &self.policy
    }

    /// Replaces the policy (applied by the core at a preemption point).
    pub fn set_policy(&mut self, policy: SchedPolicy) {
        self.reserve = Reserve::new(policy.best_effort_reserve_ppm, RESERVE_BURST_NS);
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
        if logical <= now {
            self.current.insert(slot, deadline);
        } else {
            // Kept for the promotion to current; a current handler's key is its deadline.
            self.deadline[slot as usize] = deadline;
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
    #[inline(always)]
    fn promote(&mut self, now: Nanos) {
        if self.early.is_empty() {
            return;
        }
        while let Some((_, slot)) = self.early.pop_if_at_most(now) {
            self.current.insert(slot, self.deadline[slot as usize]);
        }
    }

    /// Removes and returns the handler to run next, with the class it runs in.
    /// `allow_best_effort` (`allow_early`) is false while best-effort (early) work cannot use
    /// what a run would produce, its share of the link queue being full: that class is then
    /// skipped, and best-effort earns no credit meanwhile.
    #[inline]
    pub fn pick(
        &mut self,
        now: Nanos,
        allow_best_effort: bool,
        allow_early: bool,
    ) -> Option<(u32, Class)> {
        if self.policy.fifo {
            return self.best_effort.pop().map(|s| (s, Class::Fifo));
        }
        self.promote(now);
        if self.best_effort.len == 0 {
            self.reserve.idle();
        }
        let be_waiting = allow_best_effort && self.best_effort.len > 0;
        self.best_effort_waited = be_waiting;
        let was_be = std::mem::replace(&mut self.last_was_best_effort, false);
        if !self.current.is_empty() {
            // A best-effort run just ended with current work waiting: it was this busy
            // window's one best-effort run.
            self.lifted_in_window |= was_be;
            if be_waiting && self.reserve.has_credit() && !self.lifted_in_window {
                self.lifted_in_window = true;
                self.last_was_best_effort = true;
                return self
                    .best_effort
                    .pop()
                    .map(|s| (s, Class::BestEffortReserved));
            }
            return self.current.pop().map(|(_, s)| (s, Class::Current));
        }
        self.lifted_in_window = false;
        if be_waiting {
            self.last_was_best_effort = true;
            return self.best_effort.pop().map(|s| (s, Class::BestEffort));
        }
        if self.policy.work_conserving && allow_early {
            return self.early.pop().map(|(_, s)| (s, Class::Early));
        }
        None
    }

    /// The current handler that would run next if nothing changed, without taking it: the core
    /// prefetches its state while the chosen one runs.
    #[inline]
    pub fn peek_current(&mut self) -> Option<u32> {
        if self.policy.fifo {
            return (self.best_effort.head != NIL).then_some(self.best_effort.head);
        }
        self.current.prefetch_second();
        self.current.peek_id()
    }

    /// The current handler `d` picks after the next one, when the current queue's sorted run
    /// knows it ([`crate::edf_queue::EdfQueue::upcoming`]): a prefetch hint several picks
    /// ahead. `None` when unknown (small queues, the end of a bucket, FIFO).
    #[inline(always)]
    pub fn upcoming_current(&self, d: usize) -> Option<u32> {
        if self.policy.fifo {
            return None;
        }
        self.current.upcoming(d)
    }

    /// The key (the CPU deadline) of the current handler [`CpuScheduler::peek_current`] names.
    #[inline]
    pub fn current_deadline(&self) -> Option<Nanos> {
        self.current
            .peek_id()
            .and_then(|id| self.current.key_of(id))
    }

    /// Accounts a finished run of `cost_ns` in `class`: a reserved best-effort run pays from
    /// the reserve; a real-time run while best-effort waited earns it credit.
    #[inline]
    pub fn account(&mut self, class: Class, cost_ns: Nanos) {
        match class {
            Class::BestEffortReserved => self.reserve.charge(cost_ns),
            Class::Current | Class::Early if self.best_effort_waited => self.reserve.grant(cost_ns),
            _ => {}
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
        assert_eq!(s.pick(100, true, true), Some((3, Class::Current)));
        assert_eq!(s.pick(100, true, true), Some((2, Class::Current)));
        assert_eq!(s.pick(100, true, true), Some((1, Class::BestEffort)));
        assert_eq!(s.pick(100, true, true), Some((0, Class::Early)));
        assert_eq!(s.pick(100, true, true), None);
    }

    #[test]
    fn non_work_conserving_holds_early_work() {
        let mut s = CpuScheduler::new(4, SchedPolicy::default());
        s.enqueue_real_time(0, 500, 900, 100);
        assert_eq!(s.pick(499, true, true), None);
        assert_eq!(s.next_release(), Some(500));
        assert_eq!(s.pick(500, true, true), Some((0, Class::Current)));
    }

    #[test]
    fn reserve_lifts_best_effort_once_per_busy_window() {
        // 25% reserve; each run costs 1 µs. Real-time work is current except after every 8th
        // run, where its handler is away for one pick (the current class is empty: the window
        // ends) while best-effort cannot run either (its link share is full).
        let mut s = CpuScheduler::new(
            4,
            SchedPolicy {
                best_effort_reserve_ppm: 250_000,
                ..SchedPolicy::default()
            },
        );
        let mut now = 0;
        let (mut lifted, mut windows, mut since_break) = (0u32, 1u32, 0u32);
        let mut lifted_this_window = 0u32;
        s.enqueue_best_effort(1);
        s.enqueue_real_time(0, 0, 10, 0);
        for i in 0..10_000u32 {
            let (slot, class) = s.pick(now, true, true).unwrap();
            now += 1000;
            s.account(class, 1000);
            match class {
                Class::Current => {
                    since_break += 1;
                    if since_break % 8 == 0 {
                        assert_eq!(s.pick(now, false, true), None, "pick {i}");
                        now += 1000;
                        windows += 1;
                        lifted_this_window = 0;
                    }
                    s.enqueue_real_time(slot, 0, now + 10, now);
                }
                Class::BestEffortReserved => {
                    lifted += 1;
                    lifted_this_window += 1;
                    assert_eq!(lifted_this_window, 1, "two lifts in one window at pick {i}");
                    s.enqueue_best_effort(slot);
                }
                other => panic!("unexpected class {other:?}"),
            }
        }
        // Credit accrues at 1/3 µs per real-time µs: every window long enough lifts once.
        assert!(lifted * 2 > windows, "{lifted} lifts in {windows} windows");
    }

    #[test]
    fn reserve_never_lifts_twice_while_current_work_waits() {
        let mut s = CpuScheduler::new(
            4,
            SchedPolicy {
                best_effort_reserve_ppm: 400_000,
                ..SchedPolicy::default()
            },
        );
        let mut now = 0;
        let mut lifted = 0;
        s.enqueue_best_effort(1);
        s.enqueue_real_time(0, 0, 10, 0);
        for _ in 0..10_000 {
            let (slot, class) = s.pick(now, true, true).unwrap();
            now += 1000;
            s.account(class, 1000);
            if class == Class::BestEffortReserved {
                lifted += 1;
                s.enqueue_best_effort(slot);
            } else {
                s.enqueue_real_time(slot, 0, now + 10, now);
            }
        }
        assert_eq!(lifted, 1, "current work never left: one lift in the window");
    }

    #[test]
    fn best_effort_without_reserve_waits_for_current_work() {
        let mut s = CpuScheduler::new(4, SchedPolicy::default());
        s.enqueue_best_effort(1);
        s.enqueue_real_time(0, 0, 10, 0);
        assert_eq!(s.pick(0, true, true), Some((0, Class::Current)));
        assert_eq!(s.pick(0, true, true), Some((1, Class::BestEffort)));
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
        assert_eq!(s.pick(0, true, true), Some((2, Class::BestEffort)));
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
