//! Channel slots: which of a core's `max_channels` handler slots holds which channel.
//!
//! The core keeps one table (each slot with its handler) and the control side's
//! [`CoreHandle`](crate::handle::CoreHandle) another (with nothing in it): the handle picks the
//! slot of a channel it opens, the core checks and applies it, and both pick the lowest free
//! slot the same way. Everything is sized up front, so insertions and removals allocate
//! nothing (the core's loop relies on it).

use crate::spec::ChannelId;
use std::collections::HashMap;

/// Slots `0..capacity`, each free or holding one channel and a `T`.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    items: Vec<Option<T>>,
    /// The channel in each used slot (meaningless where `items` is `None`).
    ids: Vec<ChannelId>,
    slot_of: HashMap<ChannelId, u32>,
    /// Every slot below it is in use: the search for a free slot starts here.
    cursor: u32,
}

impl<T> Slots<T> {
    /// `capacity` free slots.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: (0..capacity).map(|_| None).collect(),
            ids: vec![0; capacity],
            // Twice the entries it holds: inserts after removals rehash in place, never into a
            // new allocation.
            slot_of: HashMap::with_capacity(2 * capacity + 2),
            cursor: 0,
        }
    }

    /// How many slots there are.
    pub(crate) fn capacity(&self) -> u32 {
        self.items.len() as u32
    }

    /// The slot holding channel `id`.
    pub(crate) fn slot_of(&self, id: ChannelId) -> Option<u32> {
        self.slot_of.get(&id).copied()
    }

    /// Whether channel `id` holds a slot.
    pub(crate) fn contains(&self, id: ChannelId) -> bool {
        self.slot_of.contains_key(&id)
    }

    /// The lowest free slot (not taken until [`Slots::insert`]). A run of opens scans each
    /// slot once.
    pub(crate) fn free_slot(&self) -> Option<u32> {
        let from = self.cursor as usize;
        let i = from + self.items[from..].iter().position(Option::is_none)?;
        Some(i as u32)
    }

    /// Whether `slot` exists and is free.
    pub(crate) fn is_free(&self, slot: u32) -> bool {
        matches!(self.items.get(slot as usize), Some(None))
    }

    /// Puts channel `id` with `item` into `slot`, which must be free (see [`Slots::is_free`]),
    /// `id` holding no slot yet (see [`Slots::contains`]).
    pub(crate) fn insert(&mut self, id: ChannelId, slot: u32, item: T) {
        debug_assert!(self.is_free(slot) && !self.contains(id));
        self.items[slot as usize] = Some(item);
        self.ids[slot as usize] = id;
        self.slot_of.insert(id, slot);
        if slot == self.cursor {
            self.cursor += 1;
        }
    }

    /// Frees `slot`, returning what it held.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<T> {
        let item = self.items.get_mut(slot as usize)?.take()?;
        self.slot_of.remove(&self.ids[slot as usize]);
        self.cursor = self.cursor.min(slot);
        Some(item)
    }

    /// What `slot` holds.
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }

    /// What `slot` holds, to change it.
    #[inline]
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }

    /// The entry of `slot`, free or not (to prefetch it).
    #[inline]
    pub(crate) fn entry(&self, slot: u32) -> Option<&Option<T>> {
        self.items.get(slot as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_slot_first_and_reused_after_removal() {
        let mut s = Slots::<()>::new(3);
        assert_eq!(s.capacity(), 3);
        for (id, want) in [(10, 0), (11, 1), (12, 2)] {
            let slot = s.free_slot().unwrap();
            assert_eq!(slot, want);
            s.insert(id, slot, ());
        }
        assert_eq!(s.free_slot(), None);
        assert_eq!(s.remove(1), Some(()));
        assert!(!s.contains(11) && s.slot_of(12) == Some(2));
        assert!(s.is_free(1) && !s.is_free(0) && !s.is_free(3));
        assert_eq!(s.free_slot(), Some(1));
        assert_eq!(s.remove(1), None);
    }

    #[test]
    fn a_slot_picked_but_not_taken_stays_free() {
        let mut s = Slots::<u8>::new(1);
        assert_eq!(s.free_slot(), Some(0));
        // The open that picked it failed: the next one still finds it.
        assert_eq!(s.free_slot(), Some(0));
        s.insert(7, 0, 1);
        *s.get_mut(0).unwrap() += 1;
        assert_eq!(s.get(0), Some(&2));
        assert_eq!(s.free_slot(), None);
    }

    #[test]
    fn insert_out_of_order_keeps_the_lowest_free() {
        let mut s = Slots::<()>::new(4);
        s.insert(1, 2, ());
        assert_eq!(s.free_slot(), Some(0));
        s.insert(2, 0, ());
        assert_eq!(s.free_slot(), Some(1));
        s.insert(3, 1, ());
        assert_eq!(s.free_slot(), Some(3));
    }
}
