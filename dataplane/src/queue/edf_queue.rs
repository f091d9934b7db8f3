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
//! `base`. A three-level bitmap (64 × 64 × 64 bits) finds the next non-empty bucket with at
//! most three `trailing_zeros` (plus one wrap-around). Each bucket is an intrusive singly linked
//! list with a tail. A queue for few ids keeps every bucket sorted by `(key, tie)`; a *lazy*
//! queue, for more than [`LAZY_MIN_IDS`] ids, keeps only bucket `base`, the one the minimum comes
//! from, sorted, and sorts a bucket once, when `base` reaches it. Keys past the
//! window wait in an overflow heap and move in as the window advances. Keys before `base` (a
//! late deadline) go into `base`'s own bucket in sorted order, so the queue stays exact even
//! for keys in the past.
//!
//! # Lazy queues
//! With many ids the nodes do not fit in the core's cache, and an insert lands in a random
//! bucket. Keeping every bucket sorted makes each insert read the bucket's tail and often walk
//! through its other nodes, each a likely cache miss, and its cost grows with the bucket's
//! occupancy. In a lazy queue an insert into a bucket after `base`'s touches only that
//! bucket's head and its own node (it becomes the new head). The bucket's elements are read
//! together when `base` reaches it: gathered, sorted and relinked, after which the pops of
//! that bucket meet nodes the sort brought into the cache; meanwhile each pop follows the
//! *next* bucket's list one step, prefetching it (`ahead`), so its sort finds it cached.
//! Sorting is O(k log k) for a bucket of k, once, instead of O(k) per insert into it — all of
//! it in the one pop that reaches the bucket: 0.5–1.4 ms for 100,000 elements in one bucket
//! (identical deadlines to the microsecond) on the development VM. The sorted-insert queue was
//! not bounded per operation for such a bucket either (a walk of up to k per insert). While
//! the nodes fit in the cache, sorted inserts are cheaper than sorting (their walks meet cached
//! nodes, and inserts mostly land after the tail), so queues for few ids keep every bucket
//! sorted. Lists are singly linked: removing an element that is not its bucket's head walks
//! the bucket, which only closing a channel does (a control command the core applies between
//! runs); the packet path removes minimums.
//!
//! # The sorted run
//! Sorting bucket `base` leaves its elements in order in one contiguous array (the sort's
//! scratch), which the queue keeps as a *run* while the bucket only loses its minimums: the
//! run's next entries are the ids the next pops will return, so [`EdfQueue::upcoming`] names
//! the element several pops ahead with one load, where the list yields one step per pop. The
//! caller prefetches that element's state (the CPU scheduler's channel, `bench_path`'s
//! lookahead), so at 100,000 channels the miss on it overlaps the picks before it. Any other
//! change to bucket `base` (an insert into it, a removal) ends the run; the lists stay the
//! queue's truth, so a stale run could only waste a prefetch.
//!
//! `base` is kept at the first non-empty bucket whenever the queue is not empty (invariant 3):
//! the minimum is always the head of bucket `base`, so [`EdfQueue::peek`] is two loads, and the
//! bitmap is searched only when an operation empties bucket `base`, starting with the rest of
//! that bucket's level-0 word. Bucket `base` has no bitmap bit (invariant 4): a queue that goes
//! between empty and one element, as an early-class queue often does, never touches the bitmap.
//!
//! # Invariants
//! 1. A window element lives in bucket slot `at = max(k >> shift, b) % SLOTS`, where `k` is its
//!    key and `b` was `base` when it entered the window; `at` is stored in its node. Because of
//!    3, the slot's absolute bucket is `max(k >> shift, base)` for the current `base`.
//! 2. Every window element has `k >> shift < base + SLOTS`; every live overflow element has
//!    `k >> shift >= base + SLOTS` (see `beyond`). So the window's minimum is the queue's
//!    minimum when the window is not empty.
//! 3. While the queue is not empty, bucket `base` is non-empty, and no element's bucket is
//!    before it: `base` moves only forward and only to the first non-empty bucket (an insert
//!    into an empty queue restarts it anywhere). When bucket `base` empties, `base` advances at
//!    once to the next non-empty bucket, pulling in overflow entries the advance brings inside
//!    the window, or, if the window is then empty, jumps to the earliest live overflow entry.
//! 4. Bitmap bit `s` of level 0 is set iff bucket `s` is non-empty and not `base`'s (the
//!    minimum needs no search, so a queue of one bucket, such as one element, touches no
//!    bitmap); a level-1 (level-2) bit is set iff its level-0 word (level-1 word) is non-zero.
//! 5. A bucket is empty iff its head is `NIL`; its list, through `next`, holds exactly the
//!    elements whose `at` is its slot.
//! 6. Bucket `base`'s list is sorted by `(key, tie)` and its tail is its last element, so the
//!    minimum is its head. The other buckets are sorted with correct tails too unless the queue
//!    is lazy; then their order and tails are unspecified.
//! 7. The overflow heap may hold stale entries (removed or moved ids); an entry is live iff its
//!    node's `at == OVERFLOW` and its key and tie are the id's current ones. Stale entries are
//!    purged in place (with duplicates) before the heap would grow, and all of them when the
//!    queue empties.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Buckets in the window: 64³, so the three-level bitmap is exactly full.
pub const SLOTS: usize = 1 << 18;
const MASK: u64 = SLOTS as u64 - 1;
/// `MASK` as an index mask.
const SLOT_MASK: usize = SLOTS - 1;
/// Level-0 words, and the mask of a level-0 word index.
const WORDS: usize = SLOTS / 64;
const WORD_MASK: usize = WORDS - 1;
/// No id: the end of a bucket list, or an empty bucket's head.
const NIL: u32 = u32::MAX;
/// `Node::at` of an id that is not queued.
const ABSENT: u32 = u32::MAX;
/// `Node::at` of an id waiting in the overflow heap.
const OVERFLOW: u32 = u32::MAX - 1;

/// Ids above which a queue is lazy (see the module docs): 16,384 nodes of 16 bytes are 256 KiB
/// (384 KiB with FIFO ties), at most a fifth of a 2 MiB L2 cache, so below it a sorted insert's
/// walk meets cached nodes.
pub const LAZY_MIN_IDS: usize = 16_384;

/// Buckets up to this many elements are sorted by insertion; larger ones by the standard
/// library's unstable sort (O(k log k), in place).
const SMALL_SORT: usize = 16;

/// Default bucket width: 2^10 ns ≈ 1 µs, for a window of ≈ 268 ms. Deadlines are rarely closer
/// than a microsecond apart within one bucket, and few are further out than the window.
pub const DEFAULT_SHIFT: u32 = 10;

/// Per-id state, 16 bytes, so no node straddles two cache lines: an operation on an id, and a
/// prefetch of its node when reading a list ahead, touch one line. (At 24 bytes, with the tie,
/// one node in four had `next` in the line after the one prefetched.) The tie is the id, or
/// with FIFO ties kept apart (`EdfQueue::ties`).
#[derive(Clone, Copy, Debug)]
struct Node {
    key: u64,
    next: u32,
    /// The bucket slot (`< SLOTS`) of a window element, [`OVERFLOW`] or [`ABSENT`].
    at: u32,
}

const VACANT: Node = Node {
    key: 0,
    next: NIL,
    at: ABSENT,
};

/// `(key, tie)` as one integer with the same order: one compare.
#[inline(always)]
fn ord(key: u64, tie: u64) -> u128 {
    ((key as u128) << 64) | tie as u128
}

/// The tie of queued `id`: its insertion number with FIFO ties, else the id.
#[inline(always)]
fn tie_of(fifo_ties: bool, ties: &[u64], id: u32) -> u64 {
    if fifo_ties {
        ties[id as usize]
    } else {
        u64::from(id)
    }
}

/// True when bucket `abs` lies past the window that starts at `base` (invariant 2); buckets
/// before `base` belong to the window (they are placed in `base`'s bucket).
#[inline(always)]
fn beyond(abs: u64, base: u64) -> bool {
    abs.saturating_sub(base) >= SLOTS as u64
}

/// Sorts `v` in descending order. A bucket's list is in reverse insertion order and keys
/// mostly arrive in order, so a small bucket is then nearly sorted, which insertion sort does
/// in linear time (the caller links it from the back).
#[inline(always)]
fn sort_descending<T: Copy + Ord>(v: &mut [T]) {
    if v.len() <= SMALL_SORT {
        for i in 1..v.len() {
            let x = v[i];
            let mut j = i;
            while j > 0 && v[j - 1] < x {
                v[j] = v[j - 1];
                j -= 1;
            }
            v[j] = x;
        }
    } else {
        v.sort_unstable_by(|a, b| b.cmp(a));
    }
}

/// The queue. See the module docs for its structure and invariants.
pub struct EdfQueue {
    shift: u32,
    fifo_ties: bool,
    /// The window's first bucket, absolute: the first non-empty one (invariant 3).
    base: u64,
    /// Only bucket `base` is kept sorted (invariant 6).
    lazy: bool,
    len: usize,
    seq: u64,
    /// Per-id state in one array, so an operation on an id touches one cache line.
    nodes: Vec<Node>,
    /// With FIFO ties, each queued id's insertion number (its tie); empty otherwise.
    ties: Vec<u64>,
    /// Bucket heads and tails (invariants 5 and 6), together so a bucket is one cache line.
    buckets: Box<[[u32; 2]; SLOTS]>,
    l0: Box<[u64; WORDS]>,
    l1: [u64; 64],
    l2: u64,
    overflow: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Where a bucket is sorted when `base` reaches it: room for every id, so it never grows.
    scratch: Vec<(u128, u32)>,
    /// The same for queues with ties by id (see `sort_narrow`).
    scratch_narrow: Vec<u64>,
    /// Read-ahead: an element of the next bucket to be sorted whose node was prefetched; each
    /// pop follows it one step and prefetches the next, so that bucket's list is cached when
    /// `base` reaches it. A hint only: any id or `NIL`, never relied on for correctness.
    ahead: u32,
    /// The sorted run: after a lazy queue sorts bucket `base` (`sort_narrow`), its elements
    /// in order, as a contiguous copy (`scratch_narrow`, descending: the next pop is the last
    /// of the first `run_left`). Each pop of the run's next element shortens it by one; any
    /// other change to bucket `base` ends it. A hint for [`EdfQueue::upcoming`] only: the
    /// lists stay the queue's truth.
    run_left: usize,
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
            fifo_ties,
            base: 0,
            lazy: false,
            len: 0,
            seq: 0,
            nodes: Vec::new(),
            ties: Vec::new(),
            // Fixed-size arrays: indices masked to the window need no bounds check. Filling
            // the buckets with `NIL` maps them now, not on first use by the packet path.
            buckets: vec![[NIL; 2]; SLOTS]
                .into_boxed_slice()
                .try_into()
                .expect("SLOTS buckets"),
            l0: vec![0; WORDS]
                .into_boxed_slice()
                .try_into()
                .expect("SLOTS / 64 words"),
            l1: [0; 64],
            l2: 0,
            overflow: BinaryHeap::new(),
            scratch: Vec::new(),
            scratch_narrow: Vec::new(),
            ahead: NIL,
            run_left: 0,
        };
        // Mapped now, not on first use by the packet path (see `crate::mem`).
        crate::mem::prefault(&mut q.l0[..]);
        q.reserve_ids(capacity);
        q
    }

    /// Makes room for ids `0..capacity`. Control path only: this allocates.
    pub fn reserve_ids(&mut self, capacity: usize) {
        if capacity > self.nodes.len() {
            self.nodes.resize(capacity, VACANT);
            if self.fifo_ties {
                self.ties.resize(capacity, 0);
            }
            let want = 2 * capacity + 16;
            if self.overflow.capacity() < want {
                self.overflow.reserve(want - self.overflow.len());
            }
            // Every bucket is already sorted (invariant 6), which a lazy queue allows.
            self.lazy = capacity > LAZY_MIN_IDS;
            if self.lazy {
                // A bucket holds at most every id.
                if self.fifo_ties || self.shift > 32 {
                    self.scratch.reserve(capacity - self.scratch.len());
                    crate::mem::prefault(self.scratch.spare_capacity_mut());
                } else {
                    self.scratch_narrow
                        .reserve(capacity - self.scratch_narrow.len());
                    crate::mem::prefault(self.scratch_narrow.spare_capacity_mut());
                }
            }
        }
    }

    /// Number of elements.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `id` is queued.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.nodes.get(id as usize).is_some_and(|n| n.at != ABSENT)
    }

    /// The key `id` is queued with.
    #[inline]
    pub fn key_of(&self, id: u32) -> Option<u64> {
        self.nodes
            .get(id as usize)
            .filter(|n| n.at != ABSENT)
            .map(|n| n.key)
    }

    /// Queues `id` with `key`. Panics if `id` is already queued or out of range (caller bugs).
    #[inline(always)]
    pub fn insert(&mut self, id: u32, key: u64) {
        let i = id as usize;
        assert!(self.nodes[i].at == ABSENT, "id {id} queued twice");
        let tie = if self.fifo_ties {
            self.seq += 1;
            self.ties[i] = self.seq;
            self.seq
        } else {
            id as u64
        };
        let abs = key >> self.shift;
        if self.len == 0 {
            // Empty: restart the window here (invariant 3). The bitmap is all clear, and stays
            // so: bucket `base` has no bit (invariant 4).
            self.base = abs;
            self.len = 1;
            let slot = (abs & MASK) as usize;
            self.buckets[slot] = [id, id];
            self.nodes[i] = Node {
                key,
                next: NIL,
                at: slot as u32,
            };
            return;
        }
        self.len += 1;
        if beyond(abs, self.base) {
            self.push_overflow(id, key, tie);
        } else if self.lazy && abs > self.base {
            self.push_front(id, key, (abs & MASK) as usize);
        } else {
            self.run_left = 0; // bucket `base` changes: the run no longer matches it
            self.link_sorted(id, key, tie, true, (abs.max(self.base) & MASK) as usize);
        }
    }

    /// Puts `id` at the head of bucket `slot`, not `base`'s, of a lazy queue (invariant 6).
    #[inline(always)]
    fn push_front(&mut self, id: u32, key: u64, slot: usize) {
        let slot = slot & SLOT_MASK;
        let head = self.buckets[slot][0];
        self.buckets[slot][0] = id;
        self.nodes[id as usize] = Node {
            key,
            next: head,
            at: slot as u32,
        };
        if head == NIL {
            self.set_bit(slot);
        }
    }

    /// Links `id` into bucket `slot`, sorted (invariant 6): after the tail, the common case,
    /// before the head, or else by a walk from the head. An empty bucket gets its bitmap bit
    /// (never `base`'s: it is not empty while the queue is not, invariant 3). `fresh`: `id` was
    /// just inserted, so with FIFO ties its tie is the largest and a node with an equal key is
    /// before it: keys alone decide, without loading ties.
    #[inline(always)]
    fn link_sorted(&mut self, id: u32, key: u64, tie: u64, fresh: bool, slot: usize) {
        let slot = slot & SLOT_MASK;
        let me = ord(key, tie);
        let [head, tail] = self.buckets[slot];
        let at = slot as u32;
        if head == NIL {
            self.buckets[slot][1] = id;
            self.set_bit(slot);
        }
        let (fifo, ties) = (self.fifo_ties, &self.ties[..]);
        // Whether node `n` with key `k` goes before `id`.
        let before = |n: u32, k: u64| {
            if fifo && fresh {
                k <= key
            } else {
                ord(k, tie_of(fifo, ties, n)) < me
            }
        };
        let nodes = &mut self.nodes[..];
        let (prev, next) = if head == NIL {
            (NIL, NIL)
        } else if before(tail, nodes[tail as usize].key) {
            self.buckets[slot][1] = id;
            (tail, NIL)
        } else if !before(head, nodes[head as usize].key) {
            (NIL, head)
        } else {
            // Head < me < tail: the walk ends before the tail.
            let mut p = head;
            loop {
                let n = nodes[p as usize].next;
                if !before(n, nodes[n as usize].key) {
                    break (p, n);
                }
                p = n;
            }
        };
        if prev == NIL {
            self.buckets[slot][0] = id;
        } else {
            nodes[prev as usize].next = id;
        }
        nodes[id as usize] = Node { key, next, at };
    }

    /// Removes `id`; returns whether it was queued. Removing an element other than its
    /// bucket's head walks the bucket to find its predecessor: meant for closing a channel (a
    /// control command, which the polling core applies between runs), while the packet path
    /// removes minimums.
    #[inline(always)]
    pub fn remove(&mut self, id: u32) -> bool {
        let Some(node) = self.nodes.get_mut(id as usize) else {
            return false;
        };
        let at = node.at;
        if at == ABSENT {
            return false;
        }
        node.at = ABSENT;
        let next = node.next;
        self.len -= 1;
        self.run_left = 0; // the run may hold it
        if at == OVERFLOW {
            if self.len == 0 {
                // The queue is empty: every heap entry is stale now (invariant 7).
                self.overflow.clear();
            }
            // Otherwise its heap entry just goes stale (invariant 7).
            return true;
        }
        let slot = at as usize & SLOT_MASK;
        let head = self.buckets[slot][0];
        if head == id {
            self.buckets[slot][0] = next;
            if next == NIL {
                if slot == (self.base & MASK) as usize {
                    self.advance();
                } else {
                    self.clear_bit(slot);
                }
            }
        } else {
            let mut p = head;
            while self.nodes[p as usize].next != id {
                p = self.nodes[p as usize].next;
            }
            self.nodes[p as usize].next = next;
            // (In a lazy queue's other buckets the tail is unspecified: writing it is harmless.)
            if self.buckets[slot][1] == id {
                self.buckets[slot][1] = p;
            }
        }
        true
    }

    /// The minimum `(key, id)` without removing it.
    #[inline(always)]
    pub fn peek(&mut self) -> Option<(u64, u32)> {
        let id = self.peek_id()?;
        Some((self.nodes[id as usize].key, id))
    }

    /// The id of the minimum without removing it: [`EdfQueue::peek`]'s id, without loading its
    /// key (one load when the queue is not empty). Takes `&self`: nothing needs advancing.
    #[inline(always)]
    pub fn peek_id(&self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        Some(self.buckets[(self.base & MASK) as usize][0])
    }

    /// Prefetches the node of the element after the minimum in its bucket, which the pop after
    /// next reads (usually cached already: sorting the bucket touched it).
    #[inline(always)]
    pub fn prefetch_second(&self) {
        if let Some(head) = self.peek_id() {
            let next = self.nodes[head as usize].next;
            if next != NIL {
                crate::mem::prefetch(&self.nodes[next as usize]);
            }
        }
    }

    /// The id `d` places after the minimum (`d = 0`: the minimum), when the sorted run of a
    /// lazy queue's bucket `base` still holds it: lets the caller prefetch the state of the
    /// elements it will pop several pops ahead, which a linked list only yields one step at a
    /// time. A hint: `None` past the run, in small queues, and after the bucket changed.
    #[inline(always)]
    pub fn upcoming(&self, d: usize) -> Option<u32> {
        if d < self.run_left {
            Some(self.scratch_narrow[self.run_left - 1 - d] as u32)
        } else {
            None
        }
    }

    /// Removes and returns the minimum `(key, id)`.
    #[inline(always)]
    pub fn pop(&mut self) -> Option<(u64, u32)> {
        let id = self.peek_id()?;
        Some(self.pop_head(id))
    }

    /// Removes and returns the minimum if its key is at most `limit`.
    #[inline(always)]
    pub fn pop_if_at_most(&mut self, limit: u64) -> Option<(u64, u32)> {
        let id = self.peek_id()?;
        if self.nodes[id as usize].key > limit {
            return None;
        }
        Some(self.pop_head(id))
    }

    /// Removes `id`, the head of bucket `base` (the minimum).
    #[inline(always)]
    fn pop_head(&mut self, id: u32) -> (u64, u32) {
        let slot = (self.base & MASK) as usize;
        let node = &mut self.nodes[id as usize];
        node.at = ABSENT;
        let (key, next) = (node.key, node.next);
        self.len -= 1;
        self.buckets[slot][0] = next;
        if self.run_left > 0 {
            let expected = self.scratch_narrow[self.run_left - 1] as u32;
            self.run_left = if expected == id { self.run_left - 1 } else { 0 };
        }
        if next == NIL {
            self.advance();
        } else if self.ahead != NIL {
            // Read ahead one step (see `ahead`).
            let a = self.nodes[self.ahead as usize].next;
            if a != NIL {
                crate::mem::prefetch(&self.nodes[a as usize]);
            }
            self.ahead = a;
        }
        (key, id)
    }

    #[inline(always)]
    fn set_bit(&mut self, s: usize) {
        let w0 = (s >> 6) & WORD_MASK;
        let old = self.l0[w0];
        self.l0[w0] = old | 1 << (s & 63);
        if old == 0 {
            self.l1[w0 >> 6] |= 1 << (w0 & 63);
            self.l2 |= 1 << (w0 >> 6);
        }
    }

    /// Clears bucket `s`'s bit.
    #[inline(always)]
    fn clear_bit(&mut self, s: usize) {
        let w0 = (s >> 6) & WORD_MASK;
        let word = self.l0[w0] & !(1 << (s & 63));
        self.l0[w0] = word;
        if word == 0 {
            self.clear_upper(w0);
        }
    }

    /// Level-0 word `w0` became zero.
    #[inline(always)]
    fn clear_upper(&mut self, w0: usize) {
        let w1 = (w0 >> 6) & 63;
        let word = self.l1[w1] & !(1 << (w0 & 63));
        self.l1[w1] = word;
        if word == 0 {
            self.l2 &= !(1 << w1);
        }
    }

    /// Bucket `base` has just emptied: advances `base` to the next non-empty bucket, clears
    /// that bucket's bit and sorts it (invariants 3, 4 and 6), looking first in the rest of the
    /// same level-0 word. An empty queue needs nothing: its bitmap is all clear already.
    #[inline(always)]
    fn advance(&mut self) {
        self.run_left = 0; // a new bucket `base`: only its sort starts a run
        if self.len == 0 {
            // Everything left in the heap is stale (invariant 7).
            self.overflow.clear();
            return;
        }
        let p = (self.base & MASK) as usize;
        let w0 = (p >> 6) & WORD_MASK;
        let word = self.l0[w0];
        // Bit `p` is clear (invariant 4), so these are the buckets after `p` in its word.
        let later = word & (!0u64 << (p & 63));
        if later != 0 {
            let b = later.trailing_zeros();
            // Never wraps: the same word, a later bit.
            self.base += u64::from(b) - (p & 63) as u64;
            let word = word & !(1 << b);
            self.l0[w0] = word;
            if word == 0 {
                self.clear_upper(w0);
            }
            self.migrate_if_due();
        } else {
            self.advance_far();
        }
        if self.lazy {
            self.sort_base();
        }
    }

    /// Sorts bucket `base` of a lazy queue, just reached (invariant 6). One or two elements,
    /// the common cases when buckets are sparse, are done here.
    #[inline(always)]
    fn sort_base(&mut self) {
        let slot = (self.base & MASK) as usize;
        let head = self.buckets[slot][0];
        let nodes = &mut self.nodes[..];
        let h = nodes[head as usize];
        if h.next == NIL {
            self.buckets[slot][1] = head;
            return;
        }
        let second = h.next;
        let s = nodes[second as usize];
        if s.next == NIL {
            let (fifo, ties) = (self.fifo_ties, &self.ties[..]);
            if ord(s.key, tie_of(fifo, ties, second)) < ord(h.key, tie_of(fifo, ties, head)) {
                nodes[second as usize].next = head;
                nodes[head as usize].next = NIL;
                self.buckets[slot] = [second, head];
            } else {
                self.buckets[slot][1] = second;
            }
            return;
        }
        self.sort_bucket(slot);
    }

    /// Sorts bucket `base` (at `slot`) of three or more elements: gathers them, sorts them
    /// and relinks them in order, then starts reading the next bucket ahead.
    #[inline(never)]
    fn sort_bucket(&mut self, slot: usize) {
        let (first, last) = if !self.fifo_ties && self.shift <= 32 {
            self.sort_narrow(slot)
        } else {
            self.sort_wide(slot)
        };
        self.buckets[slot] = [first, last];
        // A bucket this full suggests the next one is too: start reading it ahead.
        self.ahead = match self.find_from((slot + 1) & SLOT_MASK) {
            Some(s) => {
                let head = self.buckets[s][0];
                crate::mem::prefetch(&self.nodes[head as usize]);
                head
            }
            None => NIL,
        };
    }

    /// [`EdfQueue::sort_bucket`] with ties by id and buckets at most 2^32 ns wide: every key in
    /// bucket `base` is `base << shift` plus less than 2^32 (invariant 1: only bucket `base`
    /// holds keys before it, and it is sorted already), so `(key, id)` sorts as one `u64`, the
    /// offset in the bucket above the id. Returns the new head and tail.
    fn sort_narrow(&mut self, slot: usize) -> (u32, u32) {
        let low = (1u64 << self.shift) - 1;
        let scratch = &mut self.scratch_narrow;
        scratch.clear();
        let mut id = self.buckets[slot][0];
        while id != NIL {
            let n = &self.nodes[id as usize];
            debug_assert_eq!(n.key >> self.shift, self.base);
            // Never grows: a bucket holds at most every id (`reserve_ids`).
            scratch.push((n.key & low) << 32 | u64::from(id));
            id = n.next;
        }
        sort_descending(scratch);
        let nodes = &mut self.nodes[..];
        for w in scratch.windows(2) {
            nodes[w[1] as u32 as usize].next = w[0] as u32;
        }
        let (first, last) = (scratch[scratch.len() - 1] as u32, scratch[0] as u32);
        nodes[last as usize].next = NIL;
        self.run_left = scratch.len();
        (first, last)
    }

    /// [`EdfQueue::sort_bucket`] for any queue: sorts `((key, tie), id)`.
    fn sort_wide(&mut self, slot: usize) -> (u32, u32) {
        let scratch = &mut self.scratch;
        scratch.clear();
        let mut id = self.buckets[slot][0];
        while id != NIL {
            let n = &self.nodes[id as usize];
            // Never grows: a bucket holds at most every id (`reserve_ids`).
            scratch.push((ord(n.key, tie_of(self.fifo_ties, &self.ties, id)), id));
            id = n.next;
        }
        sort_descending(scratch);
        let nodes = &mut self.nodes[..];
        for w in scratch.windows(2) {
            nodes[w[1].1 as usize].next = w[0].1;
        }
        let (first, last) = (scratch[scratch.len() - 1].1, scratch[0].1);
        nodes[last as usize].next = NIL;
        (first, last)
    }

    /// After `base` advanced: moves in overflow entries now inside the window (invariant 2).
    /// The heap's top may be stale; the slow path then purges it.
    #[inline(always)]
    fn migrate_if_due(&mut self) {
        if let Some(&Reverse((k, _, _))) = self.overflow.peek() {
            if !beyond(k >> self.shift, self.base) {
                self.migrate_overflow();
            }
        }
    }

    /// `advance` beyond the base's level-0 word: searches the rest of the bitmap, wrapping
    /// around, or jumps to the overflow's minimum when the window is empty.
    #[inline(never)]
    fn advance_far(&mut self) {
        let p = (self.base & MASK) as usize;
        match self.find_from(p).or_else(|| self.find_from(0)) {
            Some(s) => {
                self.base += (s.wrapping_sub(p) & SLOT_MASK) as u64;
                self.clear_bit(s);
                self.migrate_if_due();
            }
            None => {
                // Window empty: jump to the earliest live overflow entry.
                let (k, _) = self
                    .live_overflow_min()
                    .expect("a non-empty queue with an empty window has live overflow entries");
                self.base = k >> self.shift;
                self.migrate_overflow();
                // Migration found bucket `base` empty and set its bit.
                let s = (self.base & MASK) as usize;
                debug_assert!(self.buckets[s][0] != NIL);
                self.clear_bit(s);
            }
        }
    }

    #[inline(always)]
    fn is_live(&self, k: u64, t: u64, id: u32) -> bool {
        let n = &self.nodes[id as usize];
        n.at == OVERFLOW && n.key == k && tie_of(self.fifo_ties, &self.ties, id) == t
    }

    fn live_overflow_min(&mut self) -> Option<(u64, u32)> {
        while let Some(&Reverse((k, t, id))) = self.overflow.peek() {
            if self.is_live(k, t, id) {
                return Some((k, id));
            }
            self.overflow.pop();
        }
        None
    }

    /// Moves overflow entries now inside the window into their buckets (in a lazy queue
    /// unsorted: every one is at or after the new `base`, as they were past the old window,
    /// and `advance` sorts bucket `base` after this).
    #[cold]
    #[inline(never)]
    fn migrate_overflow(&mut self) {
        while let Some(&Reverse((k, t, id))) = self.overflow.peek() {
            if self.is_live(k, t, id) {
                let abs = k >> self.shift;
                if beyond(abs, self.base) {
                    break;
                }
                debug_assert!(abs >= self.base);
                if self.lazy {
                    self.push_front(id, k, (abs & MASK) as usize);
                } else {
                    self.link_sorted(id, k, t, false, (abs & MASK) as usize);
                }
            }
            self.overflow.pop();
        }
    }

    #[cold]
    #[inline(never)]
    fn push_overflow(&mut self, id: u32, key: u64, tie: u64) {
        // (The tie, if stored, was written by `insert`.)
        let node = &mut self.nodes[id as usize];
        node.key = key;
        node.at = OVERFLOW;
        if self.overflow.len() == self.overflow.capacity() {
            // Purge stale entries in place rather than grow (invariant 7). Without FIFO ties
            // an id removed and queued again with the same key makes its old entry look live
            // again: such duplicates go too (sorting and `from` reuse the buffer).
            let mut v = std::mem::take(&mut self.overflow).into_vec();
            v.retain(|&Reverse((k, t, i))| self.is_live(k, t, i));
            v.sort_unstable();
            v.dedup();
            self.overflow = BinaryHeap::from(v);
        }
        self.overflow.push(Reverse((key, tie, id)));
    }

    /// First set bucket at or after `p`, without wrapping.
    #[inline(always)]
    fn find_from(&self, p: usize) -> Option<usize> {
        let w0 = (p >> 6) & WORD_MASK;
        let m0 = self.l0[w0] & (!0u64 << (p & 63));
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
            return Some((w0n << 6) | self.l0[w0n & WORD_MASK].trailing_zeros() as usize);
        }
        let m2 = if w1 == 63 {
            0
        } else {
            self.l2 & (!0u64 << (w1 + 1))
        };
        if m2 != 0 {
            let w1n = m2.trailing_zeros() as usize;
            let w0n = (w1n << 6) | self.l1[w1n & 63].trailing_zeros() as usize;
            return Some((w0n << 6) | self.l0[w0n & WORD_MASK].trailing_zeros() as usize);
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

    impl EdfQueue {
        /// Makes a queue for few ids lazy, as `reserve_ids` does when it grows past
        /// [`LAZY_MIN_IDS`], also while the queue is not empty.
        fn make_lazy(&mut self) {
            self.lazy = true;
            self.scratch.reserve(self.nodes.len());
            self.scratch_narrow.reserve(self.nodes.len());
        }

        /// Checks invariants 1 to 7.
        fn check(&self) {
            self.check_with(true);
        }

        /// `check`; `full` also scans every bucket and level-0 word (slow in a debug build).
        fn check_with(&self, full: bool) {
            let base_slot = (self.base & MASK) as usize;
            let mut live = 0;
            let mut slots = BTreeSet::new();
            for (id, n) in self.nodes.iter().enumerate() {
                match n.at {
                    ABSENT => {}
                    OVERFLOW => {
                        live += 1;
                        assert!(beyond(n.key >> self.shift, self.base), "inv 2, id {id}");
                        assert!(
                            self.overflow.iter().any(|e| e.0
                                == (
                                    n.key,
                                    tie_of(self.fifo_ties, &self.ties, id as u32),
                                    id as u32
                                )),
                            "overflow id {id} has a heap entry"
                        );
                    }
                    at => {
                        live += 1;
                        let abs = n.key >> self.shift;
                        assert!(!beyond(abs, self.base), "inv 2, id {id}");
                        assert_eq!(at as u64, abs.max(self.base) & MASK, "inv 1, id {id}");
                        slots.insert(at as usize);
                    }
                }
            }
            assert_eq!(live, self.len);
            if self.len > 0 {
                assert_ne!(self.buckets[base_slot][0], NIL, "inv 3");
            }
            // The bitmap, walked from the top: exactly the non-empty buckets but `base`'s.
            let mut bits = BTreeSet::new();
            for w1 in 0..64 {
                assert_eq!(
                    self.l2 >> w1 & 1 == 1,
                    self.l1[w1] != 0,
                    "inv 4, l1 word {w1}"
                );
                for b1 in 0..64 {
                    let w0 = w1 << 6 | b1;
                    if self.l1[w1] >> b1 & 1 == 1 {
                        assert_ne!(self.l0[w0], 0, "inv 4, l0 word {w0}");
                        for b0 in 0..64 {
                            if self.l0[w0] >> b0 & 1 == 1 {
                                bits.insert(w0 << 6 | b0);
                            }
                        }
                    } else if full {
                        assert_eq!(self.l0[w0], 0, "inv 4, l0 word {w0}");
                    }
                }
            }
            let mut want = slots.clone();
            want.remove(&base_slot);
            assert_eq!(bits, want, "inv 4");
            if full {
                for s in 0..SLOTS {
                    assert_eq!(self.buckets[s][0] != NIL, slots.contains(&s), "inv 5, {s}");
                }
            } else if !slots.contains(&base_slot) {
                assert_eq!(self.buckets[base_slot][0], NIL, "inv 5");
            }
            for &s in &slots {
                // Walk the bucket: every element in slot `s`, and the base's sorted (inv 5, 6).
                let (mut id, mut prev, mut n) = (self.buckets[s][0], NIL, 0);
                let sorted = s == base_slot || !self.lazy;
                while id != NIL {
                    let node = &self.nodes[id as usize];
                    assert_eq!(node.at as usize, s, "inv 5");
                    if sorted && prev != NIL {
                        let p = &self.nodes[prev as usize];
                        let tie = |i| tie_of(self.fifo_ties, &self.ties, i);
                        assert!(ord(p.key, tie(prev)) < ord(node.key, tie(id)), "inv 6");
                    }
                    (prev, id) = (id, node.next);
                    n += 1;
                }
                assert_eq!(n, self.nodes.iter().filter(|x| x.at as usize == s).count());
                if sorted {
                    assert_eq!(self.buckets[s][1], prev, "inv 6, tail of slot {s}");
                }
            }
        }
    }

    /// Pops everything, checking order and invariants.
    fn drain(q: &mut EdfQueue) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while let Some(e) = q.pop() {
            q.check();
            out.push(e);
        }
        assert!(q.is_empty());
        assert_eq!(q.peek(), None);
        assert_eq!(q.peek_id(), None);
        out
    }

    #[test]
    fn one_element_queue_touches_no_bitmap() {
        let mut q = EdfQueue::new(4, 4);
        for k in [500u64, 3, 1 << 40, 7, u64::MAX, 0] {
            q.insert(2, k);
            assert_eq!(q.peek(), Some((k, 2)));
            assert_eq!(q.peek_id(), Some(2));
            assert_eq!((q.l2, q.l1.iter().any(|&w| w != 0)), (0, false));
            q.check();
            assert_eq!(
                q.pop_if_at_most(k.saturating_sub(1)),
                if k == 0 { Some((0, 2)) } else { None }
            );
            if k != 0 {
                assert_eq!(q.pop(), Some((k, 2)));
            }
            q.check();
        }
        // Remove as the way out, too.
        q.insert(1, 99);
        assert!(q.remove(1));
        assert!(!q.remove(1));
        assert!(q.is_empty());
        q.check();
    }

    #[test]
    fn bucket_inserts_at_tail_head_and_between() {
        // One bucket (shift 10): keys land after the tail, before the head, and in between,
        // nearer either end, with equal keys ordered by id.
        let mut q = EdfQueue::new(16, 10);
        let keys = [500u64, 600, 100, 550, 120, 590, 500, 500, 100, 1000, 0, 599];
        for (id, &k) in keys.iter().enumerate() {
            q.insert(id as u32, k);
            q.check();
        }
        let mut want: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();
        want.sort();
        assert_eq!(drain(&mut q), want);
    }

    #[test]
    fn fifo_ties_between_head_and_tail() {
        let mut q = EdfQueue::with_fifo_ties(16, 10);
        for (id, k) in [
            (0u32, 100u64),
            (1, 900),
            (2, 500),
            (3, 500),
            (4, 100),
            (5, 900),
            (6, 500),
        ] {
            q.insert(id, k);
            q.check();
        }
        let order: Vec<_> = drain(&mut q).into_iter().map(|(_, id)| id).collect();
        assert_eq!(order, vec![0, 4, 2, 3, 6, 1, 5]);
    }

    #[test]
    fn removing_the_head_advances_like_pop() {
        let mut q = EdfQueue::with_fifo_ties(8, 0);
        for (id, k) in [(0u32, 10u64), (1, 11), (2, 70), (3, 5000), (4, 10)] {
            q.insert(id, k);
        }
        q.check();
        // Head of the base bucket, then the rest of the bucket, then a bucket in another word.
        assert_eq!(q.peek_id(), Some(0));
        assert!(q.remove(0));
        q.check();
        assert_eq!(q.peek(), Some((10, 4)));
        assert!(q.remove(4));
        q.check();
        assert_eq!(q.peek(), Some((11, 1)));
        // A non-base bucket emptied by remove clears its bit.
        assert!(q.remove(2));
        q.check();
        assert!(q.remove(1));
        q.check();
        assert_eq!(q.peek(), Some((5000, 3)));
        assert!(q.remove(3));
        q.check();
        assert!(q.is_empty());
    }

    #[test]
    fn advance_crosses_words_and_wraps_the_window() {
        // shift 0: bucket = key. Keys spread over the whole window, so the base advances
        // within a word, across words, across level-1 words, and its slot wraps to 0.
        let mut q = EdfQueue::new(8, 0);
        let start = 3 * SLOTS as u64 - 100;
        let keys = [
            start,
            start + 1,
            start + 64,
            start + 99,
            start + 100, // slot 0 again
            start + 5000,
            start + SLOTS as u64 - 1, // the window's last bucket
        ];
        for (id, &k) in keys.iter().enumerate() {
            q.insert(id as u32, k);
        }
        q.check();
        let got: Vec<_> = drain(&mut q).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, keys);
    }

    #[test]
    fn advance_migrates_overflow_into_the_window() {
        let mut q = EdfQueue::new(8, 0);
        let s = SLOTS as u64;
        q.insert(0, 0);
        q.insert(1, s + 5); // overflow
        q.insert(2, s + 3); // overflow
        q.insert(3, 10);
        q.insert(4, 3 * s); // overflow, stays there after the first advance
        q.check();
        assert_eq!(q.nodes[1].at, OVERFLOW);
        assert_eq!(q.pop(), Some((0, 0))); // base 0 → 10: s + 3 and s + 5 now fit
        q.check();
        assert_ne!(q.nodes[1].at, OVERFLOW);
        assert_eq!(q.nodes[4].at, OVERFLOW);
        assert_eq!(
            drain(&mut q),
            vec![(10, 3), (s + 3, 2), (s + 5, 1), (3 * s, 4)]
        );
    }

    #[test]
    fn empty_window_jumps_to_live_overflow() {
        let mut q = EdfQueue::with_fifo_ties(8, 2);
        let far = 1u64 << 40;
        q.insert(0, 1);
        q.insert(1, far + 8);
        q.insert(2, far);
        q.insert(3, far); // equal keys in overflow: insertion order
        q.insert(4, far * 2);
        assert!(q.remove(2)); // a stale entry at the heap's top
        q.check();
        assert_eq!(q.pop(), Some((1, 0))); // window empties: jump past the stale entry
        q.check();
        assert_eq!(q.peek(), Some((far, 3)));
        // A key far in the past now goes before everything.
        q.insert(5, 0);
        q.check();
        assert_eq!(
            drain(&mut q),
            vec![(0, 5), (far, 3), (far + 8, 1), (far * 2, 4)]
        );
    }

    #[test]
    fn removing_the_last_overflow_element_empties_the_queue() {
        let mut q = EdfQueue::new(4, 0);
        q.insert(0, 5);
        q.insert(1, 1 << 30);
        assert!(q.remove(0)); // window empties: base jumps to the overflow element
        q.check();
        assert!(q.remove(1));
        q.check();
        assert!(q.is_empty());
        assert_eq!(q.overflow.len(), 0);
        q.insert(1, 1 << 30);
        assert_eq!(q.pop(), Some((1 << 30, 1)));
    }

    #[test]
    fn duplicate_stale_entries_do_not_grow_the_heap() {
        // Without FIFO ties a re-queued id with the same key makes its old entries look live.
        let mut q = EdfQueue::new(4, 0);
        q.insert(0, 0);
        let cap = q.overflow.capacity();
        for _ in 0..10 * cap {
            q.insert(1, 4 * SLOTS as u64);
            assert!(q.remove(1));
        }
        q.insert(1, 4 * SLOTS as u64);
        assert_eq!(q.overflow.capacity(), cap);
        q.check();
        assert_eq!(drain(&mut q), vec![(0, 0), (4 * SLOTS as u64, 1)]);
    }

    #[test]
    fn extreme_keys() {
        let mut q = EdfQueue::new(4, 0);
        q.insert(0, u64::MAX);
        q.insert(1, u64::MAX - 1);
        q.insert(2, 0); // before base: into base's bucket
        q.insert(3, u64::MAX - SLOTS as u64 + 1);
        q.check();
        assert_eq!(
            drain(&mut q),
            vec![
                (0, 2),
                (u64::MAX - SLOTS as u64 + 1, 3),
                (u64::MAX - 1, 1),
                (u64::MAX, 0)
            ]
        );
        let mut q = EdfQueue::new(4, 0);
        q.insert(0, 0);
        q.insert(1, u64::MAX); // overflow
        q.check();
        assert_eq!(drain(&mut q), vec![(0, 0), (u64::MAX, 1)]);
    }

    #[test]
    fn lazy_queue_sorts_buckets_when_reached() {
        // Large buckets (insertion sort and the library sort), keys arriving in and out of
        // order, equal keys, removal from an unsorted bucket, and a queue big enough to be lazy
        // by itself.
        for fifo in [false, true] {
            let n = LAZY_MIN_IDS + 1;
            let mut q = if fifo {
                EdfQueue::with_fifo_ties(n, 10)
            } else {
                EdfQueue::new(n, 10)
            };
            assert!(q.lazy);
            // 2000 keys over ~40 buckets of 1024 ns, in a scrambled order, equal keys among them
            // (ties by id, or by insertion: `id` is the insertion order here).
            let mut want = vec![(0u64, 0u32)];
            q.insert(0, 0);
            for id in 1..2000u32 {
                let k = 1024 + (u64::from(id) * 7919) % 40_000 / 4 * 4;
                q.insert(id, k);
                want.push((k, id));
            }
            q.check();
            for id in (5..2000u32).step_by(97) {
                assert!(q.remove(id));
                want.retain(|e| e.1 != id);
            }
            q.check();
            want.sort();
            // `drain`'s full check per pop is slow at this size in a debug build.
            let mut got = Vec::new();
            while let Some(e) = q.pop() {
                q.check_with(false);
                got.push(e);
            }
            q.check();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn upcoming_names_the_ids_popped_next_until_the_base_bucket_changes() {
        let n = LAZY_MIN_IDS + 1;
        let mut q = EdfQueue::new(n, 10);
        // ~25 ids per 1024-ns bucket, scrambled; every 7th pop re-inserts, some into bucket
        // `base` itself (which ends the run) and some later.
        for id in 0..5000u32 {
            q.insert(id, 1024 + (u64::from(id) * 7919) % 200_000);
        }
        let mut hints: Vec<(usize, usize, u32)> = Vec::new(); // (made at pop #, d, id)
        let mut popped = Vec::new();
        let mut changed_at = 0; // pop # after the last change to bucket `base` by an insert
        let mut named = 0;
        while let Some((k, id)) = q.pop() {
            let t = popped.len();
            popped.push(id);
            if t % 7 == 3 && t < 20_000 {
                let again = if t % 2 == 0 { k } else { k + 50_000 };
                q.insert(id, again);
                changed_at = t + 1;
            }
            for d in 0..8 {
                if let Some(x) = q.upcoming(d) {
                    hints.push((t + 1, d, x));
                    named += 1;
                }
            }
            hints.retain(|&(at, d, x)| {
                if at < changed_at {
                    return false; // made before a change: no promise
                }
                match popped.get(at + d) {
                    Some(&got) => {
                        assert_eq!(got, x, "hint made before pop {at}, {d} ahead");
                        false
                    }
                    None => true,
                }
            });
        }
        assert!(named > 5_000, "the run names ids ahead: {named}");
        assert_eq!(q.upcoming(0), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64),
        Remove(u32),
        Pop,
        PopAtMost(u64),
        /// Turn lazy now, as `reserve_ids` does when it grows past `LAZY_MIN_IDS`.
        GoLazy,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Keys cluster near a moving point, repeat (equal keys), sit near the window's edge
        // (2^18 buckets of 2^shift ns) and jump far out, to exercise window, overflow, keys
        // before base and every insert position in a bucket; now and then the queue turns lazy
        // while holding elements.
        prop_oneof![
            10 => (0u32..16, 0u64..5_000).prop_map(|(i, k)| Op::Insert(i, k)),
            10 => (0u32..16, 0u64..40).prop_map(|(i, k)| Op::Insert(i, k)),
            10 => (0u32..16, 0u64..(1u64 << 30)).prop_map(|(i, k)| Op::Insert(i, k)),
            10 => (0u32..16, 0u64..(1u64 << 31)).prop_map(|(i, k)| Op::Insert(i, k)),
            10 => (0u32..16).prop_map(Op::Remove),
            10 => Just(Op::Pop),
            10 => (0u64..(1u64 << 30)).prop_map(Op::PopAtMost),
            1 => Just(Op::GoLazy),
        ]
    }

    proptest! {
        /// The queue behaves exactly like an ordered set of (key, tie, id), with ties by id or
        /// by insertion, and keeps its invariants after every operation.
        #[test]
        fn matches_ordered_set(
            ops in proptest::collection::vec(op(), 1..400),
            shift in 0u32..12,
            fifo in any::<bool>(),
            lazy in any::<bool>(),
        ) {
            let mut q = if fifo { EdfQueue::with_fifo_ties(16, shift) } else { EdfQueue::new(16, shift) };
            if lazy {
                q.make_lazy();
            }
            let mut model: BTreeSet<(u64, u64, u32)> = BTreeSet::new();
            let mut held = [None::<(u64, u64)>; 16];
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Insert(i, k) => {
                        if held[i as usize].is_none() {
                            q.insert(i, k);
                            seq += 1;
                            let tie = if fifo { seq } else { u64::from(i) };
                            model.insert((k, tie, i));
                            held[i as usize] = Some((k, tie));
                        }
                    }
                    Op::Remove(i) => {
                        let had = held[i as usize].take();
                        prop_assert_eq!(q.remove(i), had.is_some());
                        if let Some((k, t)) = had { model.remove(&(k, t, i)); }
                    }
                    Op::Pop => {
                        let want = model.pop_first();
                        prop_assert_eq!(q.pop(), want.map(|(k, _, i)| (k, i)));
                        if let Some((_, _, i)) = want { held[i as usize] = None; }
                    }
                    Op::GoLazy => q.make_lazy(),
                    Op::PopAtMost(l) => {
                        let want = model.first().copied().filter(|(k, _, _)| *k <= l);
                        prop_assert_eq!(q.pop_if_at_most(l), want.map(|(k, _, i)| (k, i)));
                        if let Some(w) = want { model.remove(&w); held[w.2 as usize] = None; }
                    }
                }
                q.check_with(false);
                let first = model.first().map(|&(k, _, i)| (k, i));
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.peek(), first);
                prop_assert_eq!(q.peek_id(), first.map(|(_, i)| i));
                for i in 0..16u32 {
                    prop_assert_eq!(q.key_of(i), held[i as usize].map(|(k, _)| k));
                    prop_assert_eq!(q.contains(i), held[i as usize].is_some());
                }
            }
            q.check();
        }
    }
}
