//! An exact earliest-deadline-first priority queue whose cost does not grow with its size.
//!
//! Used for every EDF decision in the dataplane: handlers by deadline and by logical arrival
//! time on a core, packets by deadline and eligibility on a TX queue. Elements are small integer
//! ids (a handler's or packet slot's index) with a `u64` key in nanoseconds; order is by
//! `(key, tie)`, so it is total and deterministic. The tie is the id ([`EdfQueue::new`]: handlers
//! of equal deadline run in slot order) or the insertion order ([`EdfQueue::with_fifo_ties`]:
//! packets of equal deadline, such as one message's fragments, leave in the order written).
//!
//! # Structure
//! A calendar queue: a window of [`SLOTS`] buckets, each `2^shift` ns wide, starting at bucket
//! `base`. A three-level bitmap (64 × 64 × 64 bits) finds the first non-empty bucket with three
//! `trailing_zeros`. Each bucket is an intrusive doubly linked list kept sorted by `(key, id)`;
//! inserts walk from the tail, which is O(1) when keys in one bucket arrive nearly in order (a
//! bucket is ~1 µs wide by default). Keys past the window wait in an overflow heap and move in
//! as the window advances. Keys before `base` (a late deadline) go into `base`'s own bucket in
//! sorted order, so the queue stays exact even for keys in the past.
//!
//! # Invariants
//! 1. A window element with key `k` lives in bucket slot `max(k >> shift, base) % SLOTS`.
//! 2. Every window element has `k >> shift < base + SLOTS`; every overflow element has
//!    `k >> shift >= base + SLOTS`. So the window's minimum is the queue's minimum when the
//!    window is not empty.
//! 3. `base` only advances to the first non-empty bucket (everything between was empty), which
//!    keeps 1 true for elements placed in `base`'s bucket with an earlier key.
//! 4. Bitmap bit `s` of level 0 is set iff bucket `s` is non-empty; a level-1 (level-2) bit is
//!    set iff its level-0 word (level-1 word) is non-zero.
//! 6. `first == Some(a)` means bucket `a` (absolute) is non-empty and no window bucket before
//!    it is: inserts before it move it, emptying it clears it. Repeated peeks cost nothing.
//! 5. The overflow heap may hold stale entries (removed or moved ids); an entry is live iff
//!    `loc[id] == Overflow` and its key and tie are the id's current ones. It is purged in
//!    place before it would grow.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Buckets in the window: 64³, so the three-level bitmap is exactly full.
pub const SLOTS: usize = 1 << 18;
const MASK: u64 = SLOTS as u64 - 1;
const NIL: u32 = u32::MAX;
/// `MASK` as an index mask.
const SLOT_MASK: usize = SLOTS - 1;

/// Default bucket width: 2^10 ns ≈ 1 µs, for a window of ≈ 268 ms. Deadlines are rarely closer
/// than a microsecond apart within one bucket, and few are further out than the window.
pub const DEFAULT_SHIFT: u32 = 10;

#[derive(Clone, Copy, Debug)]
struct Node {
    key: u64,
    tie: u64,
    next: u32,
    prev: u32,
    loc: Loc,
}

const VACANT: Node = Node {
    key: 0,
    tie: 0,
    next: NIL,
    prev: NIL,
    loc: Loc::Absent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Absent,
    Window,
    Overflow,
}

/// The queue. See the module docs for its structure and invariants.
pub struct EdfQueue {
    shift: u32,
    base: u64,
    len: usize,
    /// Per-id state in one array, so an operation on an id touches one cache line.
    nodes: Vec<Node>,
    fifo_ties: bool,
    seq: u64,
    /// Bucket head and tail ids, stored as id + 1 so a zeroed (lazily mapped) array is empty;
    /// together, so a bucket touches one cache line.
    buckets: Box<[[u32; 2]; SLOTS]>,
    l0: Box<[u64; SLOTS / 64]>,
    l1: [u64; 64],
    l2: u64,
    overflow: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// The first non-empty bucket, absolute, when known (invariant 6).
    first: Option<u64>,
}

impl std::fmt::Debug for EdfQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdfQueue")
            .field("len", &self.len)
            .field("base", &self.base)
            .field("shift", &self.shift)
            .finish()
    }
}

impl EdfQueue {
    /// A queue for ids `0..capacity` with buckets `2^shift` ns wide; equal keys in id order.
    pub fn new(capacity: usize, shift: u32) -> Self {
        Self::build(capacity, shift, false)
    }

    /// Like [`EdfQueue::new`], but equal keys leave in insertion order.
    pub fn with_fifo_ties(capacity: usize, shift: u32) -> Self {
        Self::build(capacity, shift, true)
    }

    fn build(capacity: usize, shift: u32, fifo_ties: bool) -> Self {
        assert!(shift < 40, "bucket width 2^{shift} ns is not sensible");
        let mut q = Self {
            shift,
            base: 0,
            len: 0,
            nodes: Vec::new(),
            fifo_ties,
            seq: 0,
            // Fixed-size arrays: indices masked to the window need no bounds check.
            buckets: vec![[0; 2]; SLOTS]
                .into_boxed_slice()
                .try_into()
                .expect("SLOTS buckets"),
            l0: vec![0; SLOTS / 64]
                .into_boxed_slice()
                .try_into()
                .expect("SLOTS / 64 words"),
            l1: [0; 64],
            l2: 0,
            overflow: BinaryHeap::new(),
            first: None,
        };
        // Mapped now, not on first use by the packet path (see `crate::mem`).
        crate::mem::prefault(&mut q.buckets[..]);
        crate::mem::prefault(&mut q.l0[..]);
        q.reserve_ids(capacity);
        q
    }

    /// Makes room for ids `0..capacity`. Control path only: this allocates.
    pub fn reserve_ids(&mut self, capacity: usize) {
        if capacity > self.nodes.len() {
            self.nodes.resize(capacity, VACANT);
            let want = 2 * capacity + 16;
            if self.overflow.capacity() < want {
                self.overflow.reserve(want - self.overflow.len());
            }
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `id` is queued.
    pub fn contains(&self, id: u32) -> bool {
        self.nodes
            .get(id as usize)
            .is_some_and(|n| n.loc != Loc::Absent)
    }

    /// The key `id` is queued with.
    pub fn key_of(&self, id: u32) -> Option<u64> {
        self.contains(id).then(|| self.nodes[id as usize].key)
    }

    /// Queues `id` with `key`. Panics if `id` is already queued or out of range (caller bugs).
    #[inline(always)]
    pub fn insert(&mut self, id: u32, key: u64) {
        let i = id as usize;
        assert_eq!(self.nodes[i].loc, Loc::Absent, "id {id} queued twice");
        self.nodes[i].key = key;
        self.nodes[i].tie = if self.fifo_ties {
            self.seq += 1;
            self.seq
        } else {
            id as u64
        };
        let abs = key >> self.shift;
        if self.len == 0 {
            // Empty: restart the window here so the insert is not sent to overflow.
            self.base = abs;
            self.first = None;
        }
        self.len += 1;
        if abs >= self.base + SLOTS as u64 {
            self.push_overflow(id);
        } else {
            self.link_sorted(id, key, abs.max(self.base));
        }
    }

    /// Removes `id`; returns whether it was queued.
    #[inline(always)]
    pub fn remove(&mut self, id: u32) -> bool {
        let i = id as usize;
        match self.nodes.get(i).map(|n| n.loc) {
            Some(Loc::Window) => {
                let abs = (self.nodes[i].key >> self.shift).max(self.base);
                self.unlink(id, (abs & MASK) as usize);
                self.len -= 1;
                true
            }
            Some(Loc::Overflow) => {
                // The heap entry goes stale (invariant 5).
                self.nodes[i].loc = Loc::Absent;
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    /// The minimum `(key, id)` without removing it.
    #[inline(always)]
    pub fn peek(&mut self) -> Option<(u64, u32)> {
        let slot = self.first_slot()?;
        let id = self.buckets[slot & SLOT_MASK][0] - 1;
        Some((self.nodes[id as usize].key, id))
    }

    /// Removes and returns the minimum `(key, id)`.
    #[inline(always)]
    pub fn pop(&mut self) -> Option<(u64, u32)> {
        let slot = self.first_slot()?;
        let id = self.buckets[slot & SLOT_MASK][0] - 1;
        self.unlink(id, slot);
        self.len -= 1;
        Some((self.nodes[id as usize].key, id))
    }

    /// Removes and returns the minimum if its key is at most `limit`.
    #[inline]
    pub fn pop_if_at_most(&mut self, limit: u64) -> Option<(u64, u32)> {
        match self.peek() {
            Some((k, _)) if k <= limit => self.pop(),
            _ => None,
        }
    }

    /// Finds the first non-empty bucket, advancing `base` to it (invariant 3) and pulling in
    /// overflow entries the advance brings inside the window.
    #[inline(always)]
    fn first_slot(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        if let Some(a) = self.first {
            return Some((a & MASK) as usize);
        }
        let s = self.find_first()?;
        self.first = Some(self.base);
        Some(s)
    }

    /// Searches the bitmap for the first non-empty bucket and moves `base` to it.
    #[inline(always)]
    fn find_first(&mut self) -> Option<usize> {
        let p = (self.base & MASK) as usize;
        let found = self.find_from(p).or_else(|| self.find_from(0));
        match found {
            Some(s) => {
                let abs = if s >= p {
                    self.base + (s - p) as u64
                } else {
                    self.base + (SLOTS - p + s) as u64
                };
                if abs != self.base {
                    self.base = abs;
                    self.migrate_overflow();
                }
                Some(s)
            }
            None => {
                // Window empty: jump to the earliest live overflow entry.
                let (k, _) = self.live_overflow_min()?;
                self.base = k >> self.shift;
                self.migrate_overflow();
                let s = (self.base & MASK) as usize;
                debug_assert!(self.buckets[s & SLOT_MASK][0] != 0);
                Some(s)
            }
        }
    }

    fn live_overflow_min(&mut self) -> Option<(u64, u32)> {
        while let Some(&Reverse((k, t, id))) = self.overflow.peek() {
            let i = id as usize;
            if self.nodes[i].loc == Loc::Overflow
                && self.nodes[i].key == k
                && self.nodes[i].tie == t
            {
                return Some((k, id));
            }
            self.overflow.pop();
        }
        None
    }

    fn migrate_overflow(&mut self) {
        let end = self.base + SLOTS as u64;
        while let Some((k, id)) = self.live_overflow_min() {
            if k >> self.shift >= end {
                break;
            }
            self.overflow.pop();
            self.nodes[id as usize].loc = Loc::Absent;
            self.link_sorted(id, k, (k >> self.shift).max(self.base));
        }
    }

    fn push_overflow(&mut self, id: u32) {
        let (key, tie) = (self.nodes[id as usize].key, self.nodes[id as usize].tie);
        if self.overflow.len() == self.overflow.capacity() {
            // Purge stale entries in place rather than grow (invariant 5).
            let nodes = &self.nodes;
            self.overflow.retain(|Reverse((k, t, i))| {
                let i = *i as usize;
                let n = &nodes[i];
                n.loc == Loc::Overflow && n.key == *k && n.tie == *t
            });
        }
        self.overflow.push(Reverse((key, tie, id)));
        self.nodes[id as usize].loc = Loc::Overflow;
    }

    #[inline(always)]
    fn link_sorted(&mut self, id: u32, key: u64, abs: u64) {
        let slot = (abs & MASK) as usize;
        let i = id as usize;
        self.nodes[i].loc = Loc::Window;
        if let Some(f) = self.first {
            if abs < f {
                self.first = Some(abs);
            }
        }
        // Walk back from the tail to the last element ordered before (key, tie).
        let tie = self.nodes[i].tie;
        let mut after = if self.buckets[slot & SLOT_MASK][1] == 0 {
            NIL
        } else {
            self.buckets[slot & SLOT_MASK][1] - 1
        };
        while after != NIL
            && (
                self.nodes[after as usize].key,
                self.nodes[after as usize].tie,
            ) > (key, tie)
        {
            after = self.nodes[after as usize].prev;
        }
        if after == NIL {
            let old_head = if self.buckets[slot & SLOT_MASK][0] == 0 {
                NIL
            } else {
                self.buckets[slot & SLOT_MASK][0] - 1
            };
            self.nodes[i].prev = NIL;
            self.nodes[i].next = old_head;
            if old_head == NIL {
                self.buckets[slot & SLOT_MASK][1] = id + 1;
                self.set_bit(slot);
            } else {
                self.nodes[old_head as usize].prev = id;
            }
            self.buckets[slot & SLOT_MASK][0] = id + 1;
        } else {
            let nxt = self.nodes[after as usize].next;
            self.nodes[i].prev = after;
            self.nodes[i].next = nxt;
            self.nodes[after as usize].next = id;
            if nxt == NIL {
                self.buckets[slot & SLOT_MASK][1] = id + 1;
            } else {
                self.nodes[nxt as usize].prev = id;
            }
        }
    }

    #[inline(always)]
    fn unlink(&mut self, id: u32, slot: usize) {
        let i = id as usize;
        let (p, n) = (self.nodes[i].prev, self.nodes[i].next);
        if p == NIL {
            self.buckets[slot & SLOT_MASK][0] = if n == NIL { 0 } else { n + 1 };
        } else {
            self.nodes[p as usize].next = n;
        }
        if n == NIL {
            self.buckets[slot & SLOT_MASK][1] = if p == NIL { 0 } else { p + 1 };
        } else {
            self.nodes[n as usize].prev = p;
        }
        if self.buckets[slot & SLOT_MASK][0] == 0 {
            self.clear_bit(slot);
            if self.first.is_some_and(|f| (f & MASK) as usize == slot) {
                self.first = None;
            }
        }
        self.nodes[i].loc = Loc::Absent;
    }

    #[inline(always)]
    fn set_bit(&mut self, s: usize) {
        let w0 = s >> 6;
        self.l0[w0 & (SLOTS / 64 - 1)] |= 1 << (s & 63);
        self.l1[w0 >> 6] |= 1 << (w0 & 63);
        self.l2 |= 1 << (w0 >> 6);
    }

    #[inline(always)]
    fn clear_bit(&mut self, s: usize) {
        let w0 = s >> 6;
        self.l0[w0 & (SLOTS / 64 - 1)] &= !(1 << (s & 63));
        if self.l0[w0 & (SLOTS / 64 - 1)] == 0 {
            let w1 = w0 >> 6;
            self.l1[w1] &= !(1 << (w0 & 63));
            if self.l1[w1] == 0 {
                self.l2 &= !(1 << w1);
            }
        }
    }

    /// First set bucket at or after `p`, without wrapping.
    #[inline(always)]
    fn find_from(&self, p: usize) -> Option<usize> {
        let w0 = p >> 6;
        let m0 = self.l0[w0 & (SLOTS / 64 - 1)] & (!0u64 << (p & 63));
        if m0 != 0 {
            return Some((w0 << 6) | m0.trailing_zeros() as usize);
        }
        let w1 = w0 >> 6;
        let b1 = w0 & 63;
        let m1 = if b1 == 63 {
            0
        } else {
            self.l1[w1] & (!0u64 << (b1 + 1))
        };
        if m1 != 0 {
            let w0n = (w1 << 6) | m1.trailing_zeros() as usize;
            return Some((w0n << 6) | self.l0[w0n & (SLOTS / 64 - 1)].trailing_zeros() as usize);
        }
        let m2 = if w1 == 63 {
            0
        } else {
            self.l2 & (!0u64 << (w1 + 1))
        };
        if m2 != 0 {
            let w1n = m2.trailing_zeros() as usize;
            let w0n = (w1n << 6) | self.l1[w1n].trailing_zeros() as usize;
            return Some((w0n << 6) | self.l0[w0n & (SLOTS / 64 - 1)].trailing_zeros() as usize);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn empty_queue() {
        let mut q = EdfQueue::new(4, DEFAULT_SHIFT);
        assert!(q.is_empty());
        assert_eq!(q.peek(), None);
        assert_eq!(q.pop(), None);
        assert!(!q.remove(2));
    }

    #[test]
    fn orders_by_key_then_id() {
        let mut q = EdfQueue::new(8, 4);
        q.insert(3, 100);
        q.insert(1, 100);
        q.insert(2, 50);
        q.insert(0, 1 << 40); // overflow
        assert_eq!(q.pop(), Some((50, 2)));
        assert_eq!(q.pop(), Some((100, 1)));
        assert_eq!(q.pop(), Some((100, 3)));
        assert_eq!(q.pop(), Some((1 << 40, 0)));
        assert!(q.is_empty());
    }

    #[test]
    fn fifo_ties_keep_insertion_order() {
        let mut q = EdfQueue::with_fifo_ties(8, 4);
        for id in [5u32, 2, 7, 1] {
            q.insert(id, 100);
        }
        q.insert(3, 1 << 40); // overflow, equal keys there too
        q.insert(0, 1 << 40);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(_, id)| id).collect();
        assert_eq!(order, vec![5, 2, 7, 1, 3, 0]);
    }

    #[test]
    fn keys_before_base_stay_exact() {
        let mut q = EdfQueue::new(8, 4);
        q.insert(0, 10_000);
        assert_eq!(q.peek(), Some((10_000, 0))); // base advances to 10_000 >> 4
        q.insert(1, 5); // far in the past
        q.insert(2, 3);
        q.insert(3, 9_999);
        assert_eq!(q.pop(), Some((3, 2)));
        assert_eq!(q.pop(), Some((5, 1)));
        assert_eq!(q.pop(), Some((9_999, 3)));
        assert_eq!(q.pop(), Some((10_000, 0)));
    }

    #[test]
    fn window_wraps_around_many_times() {
        let mut q = EdfQueue::new(2, 0);
        let mut k = 0u64;
        for round in 0..5 * SLOTS as u64 / 1000 {
            q.insert((round % 2) as u32, k);
            k += 997;
            assert_eq!(q.pop(), Some((k - 997, (round % 2) as u32)));
        }
    }

    #[test]
    fn overflow_stale_entries_are_purged_without_growth() {
        let mut q = EdfQueue::new(4, 0);
        let cap = q.overflow.capacity();
        for i in 0..10 * cap as u64 {
            q.insert(1, (SLOTS as u64) * 4 + i);
            assert!(q.remove(1));
        }
        assert_eq!(q.overflow.capacity(), cap);
        q.insert(1, 7 * SLOTS as u64);
        assert_eq!(q.pop(), Some((7 * SLOTS as u64, 1)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64),
        Remove(u32),
        Pop,
        PopAtMost(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Keys cluster near a moving point and jump far out, to exercise window, overflow and
        // keys before base.
        prop_oneof![
            (0u32..16, 0u64..5_000).prop_map(|(i, k)| Op::Insert(i, k)),
            (0u32..16, 0u64..(1u64 << 30)).prop_map(|(i, k)| Op::Insert(i, k)),
            (0u32..16).prop_map(Op::Remove),
            Just(Op::Pop),
            (0u64..(1u64 << 30)).prop_map(Op::PopAtMost),
        ]
    }

    proptest! {
        /// The queue behaves exactly like an ordered set of (key, id).
        #[test]
        fn matches_ordered_set(ops in proptest::collection::vec(op(), 1..400), shift in 0u32..12) {
            let mut q = EdfQueue::new(16, shift);
            let mut model: BTreeSet<(u64, u32)> = BTreeSet::new();
            let mut keys = [None::<u64>; 16];
            for op in ops {
                match op {
                    Op::Insert(i, k) => {
                        if keys[i as usize].is_none() {
                            q.insert(i, k);
                            model.insert((k, i));
                            keys[i as usize] = Some(k);
                        }
                    }
                    Op::Remove(i) => {
                        let had = keys[i as usize].take();
                        prop_assert_eq!(q.remove(i), had.is_some());
                        if let Some(k) = had { model.remove(&(k, i)); }
                    }
                    Op::Pop => {
                        let want = model.pop_first();
                        prop_assert_eq!(q.pop(), want);
                        if let Some((_, i)) = want { keys[i as usize] = None; }
                    }
                    Op::PopAtMost(l) => {
                        let want = model.first().copied().filter(|(k, _)| *k <= l);
                        prop_assert_eq!(q.pop_if_at_most(l), want);
                        if let Some(w) = want { model.remove(&w); keys[w.1 as usize] = None; }
                    }
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.peek(), model.first().copied());
            }
        }
    }
}
