//! The link scheduler of one NIC TX queue: packets in deadline order, paced into the port.
//!
//! Handlers hand it written packets ([`LinkScheduler::enqueue`]); the polling core asks it for
//! the next batch to give the port ([`LinkScheduler::release`]). Semantics follow Linux's
//! `sch_etf`: configuration is validated once with readable errors, the clock is injected (`now`
//! is an argument), and a packet past its deadline is counted, never hidden.
//!
//! # Order
//! The same three classes as the CPU: packets of current messages (ℓ ≤ now) by link deadline,
//! then best-effort packets in arrival order, then packets of early messages by ℓ (only when
//! work-conserving; otherwise they wait until current). A best-effort reserve lifts best-effort
//! ahead while it has byte credit, at most one packet while current packets wait without a
//! break (as on the CPU, [`crate::sched`]): admission charges that one packet as blocking. A
//! released packet belongs to the port: it is never preempted.
//!
//! # Pacing and the in-flight limit
//! EDF order means nothing once packets sit in the NIC's FIFO, so the scheduler keeps that FIFO
//! short, like byte queue limits: it releases a packet only while the bytes the port has not yet
//! put on the wire stay within `in_flight_limit`. When the port reports completions it says how
//! many that is; otherwise the scheduler models the queue draining at its share of the link rate
//! (`busy_until`), which is also what paces the queue to that share.

use crate::edf_queue::{EdfQueue, DEFAULT_SHIFT};
use crate::port::{Batch, MAX_BURST};
use crate::sched::{Reserve, PPM};
use crate::time::{ByteTime, Nanos};
use crate::wire::wire_bytes;

/// What a late packet does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Send it anyway (counted late).
    #[default]
    Send,
    /// Drop it (counted late and dropped).
    Drop,
}

/// A TX queue's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The link's rate, bits per second.
    pub link_rate_bps: u64,
    /// This queue's share of the link, ppm (1,000,000 = the whole link).
    pub share_ppm: u32,
    /// Most bytes the port may hold unsent (at least one maximum frame).
    pub in_flight_limit: u64,
    /// Packets the scheduler can hold (its preallocated slots).
    pub capacity: u32,
    /// Late packets: send or drop.
    pub late: LatePolicy,
    /// Release early packets when nothing else waits.
    pub work_conserving: bool,
    /// Best-effort reserve of this queue's bytes, ppm.
    pub best_effort_reserve_ppm: u32,
    /// QoS off: every packet in one FIFO, in the order handlers wrote them (the baseline).
    pub fifo: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            link_rate_bps: 10_000_000_000,
            share_ppm: PPM as u32,
            in_flight_limit: 2 * 1538,
            capacity: 4096,
            late: LatePolicy::Send,
            work_conserving: false,
            best_effort_reserve_ppm: 0,
            fifo: false,
        }
    }
}

/// A rejected link configuration, with what is wrong in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkConfigError {
    /// Zero rate.
    #[error("link_rate_bps must be greater than zero")]
    ZeroRate,
    /// Share out of range.
    #[error("share_ppm {0} must be in 1..=1000000")]
    BadShare(u32),
    /// Limit below one frame: nothing could ever be sent.
    #[error(
        "in_flight_limit {limit} bytes is below one maximum frame on the wire ({frame} bytes)"
    )]
    LimitBelowFrame {
        /// Configured limit.
        limit: u64,
        /// Wire bytes of one maximum frame.
        frame: u64,
    },
    /// No slots.
    #[error("capacity must be at least {MAX_BURST} packets")]
    CapacityTooSmall,
    /// Reserve out of range.
    #[error("best_effort_reserve_ppm {0} must be below 1000000")]
    BadReserve(u32),
}

impl LinkConfig {
    /// Checks the configuration against the port's largest frame.
    pub fn validate(&self, max_frame: usize) -> Result<(), LinkConfigError> {
        if self.link_rate_bps == 0 {
            return Err(LinkConfigError::ZeroRate);
        }
        if self.share_ppm == 0 || self.share_ppm as u64 > PPM {
            return Err(LinkConfigError::BadShare(self.share_ppm));
        }
        let frame = wire_bytes(max_frame);
        if self.in_flight_limit < frame {
            return Err(LinkConfigError::LimitBelowFrame {
                limit: self.in_flight_limit,
                frame,
            });
        }
        if (self.capacity as usize) < MAX_BURST {
            return Err(LinkConfigError::CapacityTooSmall);
        }
        if self.best_effort_reserve_ppm as u64 >= PPM {
            return Err(LinkConfigError::BadReserve(self.best_effort_reserve_ppm));
        }
        Ok(())
    }

    /// This queue's rate, bits per second.
    pub fn queue_rate_bps(&self) -> u64 {
        (self.link_rate_bps as u128 * self.share_ppm as u128 / PPM as u128) as u64
    }
}

/// What the scheduler knows of a packet besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// Handler slot of the channel (for statistics).
    pub slot: u32,
    /// Generation of that slot, so stats of a closed channel's stragglers go nowhere.
    pub generation: u32,
    /// Logical arrival time of the packet's message (when it becomes eligible).
    pub eligible: Nanos,
    /// Absolute link deadline.
    pub deadline: Nanos,
    /// Submit time of the message.
    pub submit_ts: Nanos,
    /// Frame length handed to the port.
    pub frame_len: u32,
    /// Last packet of its message.
    pub last_of_message: bool,
    /// Best-effort packet.
    pub best_effort: bool,
}

/// What happened to a packet the scheduler let go of, for the core's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The packet.
    pub meta: PacketMeta,
    /// It was past its deadline.
    pub late: bool,
    /// It was dropped (late-drop policy) rather than put in the batch.
    pub dropped: bool,
}

/// Counters of one TX queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets released.
    pub released: u64,
    /// Wire bytes released.
    pub wire_bytes: u64,
    /// Packets released or dropped past their deadline.
    pub late: u64,
    /// Late packets dropped.
    pub late_dropped: u64,
    /// Enqueues refused because every slot was full.
    pub full: u64,
    /// Best-effort packets released on the reserve ahead of real-time ones.
    pub reserved_releases: u64,
}

/// Why the last [`LinkScheduler::release`] stopped: the core counts it for every burst that
/// went out below [`crate::port::MAX_BURST`] (benchmarks' "why a burst closes" figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReleaseStop {
    /// The batch was full.
    #[default]
    BatchFull,
    /// Nothing was queued (or only packets dropped late).
    Empty,
    /// The port's reported in-flight bytes reached the in-flight limit.
    InFlightLimit,
    /// The modelled link (busy until the queued wire time drains at the link rate) was full:
    /// pacing at the link rate.
    Pacing,
    /// Only early packets were queued (not work-conserving): held until they become current.
    HeldEarly,
}

const NIL: u32 = u32::MAX;

/// The EDF link scheduler of one TX queue, holding port buffers of type `B`.
pub struct LinkScheduler<B> {
    cfg: LinkConfig,
    byte_time: ByteTime,
    /// The in-flight limit as time on the wire, for the modelled case.
    limit_ns: Nanos,
    slots: Vec<Option<B>>,
    meta: Vec<PacketMeta>,
    free: Vec<u32>,
    current: EdfQueue,
    early: EdfQueue,
    be_next: Vec<u32>,
    be_head: u32,
    be_tail: u32,
    be_len: usize,
    busy_until: Nanos,
    reserve: Reserve,
    /// The last packet taken was best-effort.
    last_was_best_effort: bool,
    /// A best-effort packet went ahead of (or was sent while becoming ahead of) current
    /// packets since the current queue was last seen empty: no lift until it empties.
    lifted_in_window: bool,
    stats: LinkStats,
    last_stop: ReleaseStop,
}

impl<B> std::fmt::Debug for LinkScheduler<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkScheduler")
            .field("cfg", &self.cfg)
            .field("queued", &self.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<B> LinkScheduler<B> {
    /// A scheduler with `cfg`, which must have passed [`LinkConfig::validate`].
    pub fn new(cfg: LinkConfig) -> Self {
        let cap = cfg.capacity as usize;
        let rate_bps = cfg.queue_rate_bps().max(1);
        let byte_time = ByteTime::new(rate_bps);
        Self {
            cfg,
            byte_time,
            limit_ns: byte_time.ns(cfg.in_flight_limit),
            slots: (0..cap).map(|_| None).collect(),
            meta: vec![PacketMeta::default(); cap],
            free: (0..cap as u32).rev().collect(),
            // Equal deadlines (one message's fragments) leave in the order written.
            current: EdfQueue::with_fifo_ties(cap, DEFAULT_SHIFT),
            early: EdfQueue::with_fifo_ties(cap, DEFAULT_SHIFT),
            be_next: vec![NIL; cap],
            be_head: NIL,
            be_tail: NIL,
            be_len: 0,
            busy_until: 0,
            // Credit in wire bytes, capped at eight maximum frames.
            reserve: Reserve::new(cfg.best_effort_reserve_ppm, 8 * 1538),
            last_was_best_effort: false,
            lifted_in_window: false,
            stats: LinkStats::default(),
            last_stop: ReleaseStop::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True when no packet is held.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Free slots left.
    pub fn room(&self) -> usize {
        self.free.len()
    }

    /// Slots best-effort packets may still take: best-effort may hold at most half the
    /// scheduler, so a best-effort backlog can never keep real-time packets from being written.
    pub fn best_effort_room(&self) -> usize {
        (self.slots.len() / 2).saturating_sub(self.be_len)
    }

    /// Slots packets of early messages may still take (work-conserving policy): also at most
    /// half, so a violator's early packets cannot crowd out current real-time work either.
    pub fn early_room(&self) -> usize {
        (self.slots.len() / 2).saturating_sub(self.early.len())
    }

    /// Takes a packet; gives it back if every slot is full.
    #[inline]
    pub fn enqueue(&mut self, buf: B, meta: PacketMeta, now: Nanos) -> Result<(), B> {
        let Some(i) = self.free.pop() else {
            self.stats.full += 1;
            return Err(buf);
        };
        self.slots[i as usize] = Some(buf);
        self.meta[i as usize] = meta;
        if meta.best_effort || self.cfg.fifo {
            self.be_next[i as usize] = NIL;
            if self.be_tail == NIL {
                self.be_head = i;
            } else {
                self.be_next[self.be_tail as usize] = i;
            }
            self.be_tail = i;
            self.be_len += 1;
        } else if meta.eligible <= now {
            // Promote first, so packets that became eligible earlier keep their place ahead of
            // this one among equal deadlines.
            self.promote(now);
            self.current.insert(i, meta.deadline);
        } else {
            self.early.insert(i, meta.eligible);
        }
        Ok(())
    }

    #[inline(always)]
    fn promote(&mut self, now: Nanos) {
        if self.early.is_empty() {
            return;
        }
        while let Some((_, i)) = self.early.pop_if_at_most(now) {
            self.current.insert(i, self.meta[i as usize].deadline);
        }
    }

    fn pop_be(&mut self) -> Option<u32> {
        let i = self.be_head;
        if i == NIL {
            return None;
        }
        self.be_head = self.be_next[i as usize];
        if self.be_head == NIL {
            self.be_tail = NIL;
        }
        self.be_len -= 1;
        Some(i)
    }

    /// When the modelled queue drains enough for another frame, if it is what holds packets
    /// back (the core may wait until then).
    pub fn busy_until(&self) -> Nanos {
        self.busy_until
    }

    /// Why the last [`Self::release`] stopped.
    pub fn last_stop(&self) -> ReleaseStop {
        self.last_stop
    }

    /// The next packet to release, by class order, without taking it.
    #[inline]
    fn choose(&mut self, now: Nanos) -> Option<(u32, bool)> {
        if self.cfg.fifo {
            return (self.be_len > 0).then_some((self.be_head, false));
        }
        self.promote(now);
        if self.be_len == 0 {
            self.reserve.idle();
        }
        if let Some((_, i)) = self.current.peek() {
            self.lifted_in_window |= self.last_was_best_effort;
            if self.be_len > 0 && self.reserve.has_credit() && !self.lifted_in_window {
                self.lifted_in_window = true;
                return Some((self.be_head, true));
            }
            return Some((i, false));
        }
        self.lifted_in_window = false;
        if self.be_len > 0 {
            return Some((self.be_head, false));
        }
        if self.cfg.work_conserving {
            return self.early.peek().map(|(_, i)| (i, false));
        }
        None
    }

    /// Moves packets into `batch` in scheduling order until the batch is full, the in-flight
    /// limit is reached, or nothing is eligible. `port_in_flight` is the port's own count when
    /// it reports completions. Calls `on_release` for every packet let go (sent or dropped).
    #[inline]
    pub fn release(
        &mut self,
        now: Nanos,
        port_in_flight: Option<u64>,
        batch: &mut Batch<B>,
        mut on_release: impl FnMut(Released),
    ) -> usize {
        let mut n = 0;
        let mut reported = port_in_flight;
        let min_wire = wire_bytes(0);
        // Why the loop ends (a full batch unless a break below says otherwise).
        let why_full = |reported: Option<u64>| {
            if reported.is_some() {
                ReleaseStop::InFlightLimit
            } else {
                ReleaseStop::Pacing
            }
        };
        self.last_stop = ReleaseStop::BatchFull;
        while !batch.is_full() {
            // Not even the smallest frame fits: stop before choosing one.
            let room = match reported {
                Some(bytes) => bytes + min_wire <= self.cfg.in_flight_limit,
                None => {
                    self.busy_until.saturating_sub(now) + self.byte_time.ns(min_wire)
                        <= self.limit_ns
                }
            };
            if !room {
                self.last_stop = why_full(reported);
                break;
            }
            let Some((i, reserved)) = self.choose(now) else {
                self.last_stop = if self.is_empty() {
                    ReleaseStop::Empty
                } else {
                    ReleaseStop::HeldEarly
                };
                break;
            };
            let meta = self.meta[i as usize];
            let wire = wire_bytes(meta.frame_len as usize);
            let tx_ns = self.byte_time.ns(wire);
            let fits = match reported {
                Some(bytes) => bytes + wire <= self.cfg.in_flight_limit,
                // Modelled: compare as time on the wire (a multiply, no division).
                None => self.busy_until.saturating_sub(now) + tx_ns <= self.limit_ns,
            };
            if !fits {
                self.last_stop = why_full(reported);
                break;
            }
            // Take it out of its queue.
            self.last_was_best_effort = meta.best_effort;
            if meta.best_effort || self.cfg.fifo {
                self.pop_be();
                if reserved {
                    self.reserve.charge(wire);
                    self.stats.reserved_releases += 1;
                }
            } else {
                if self.be_len > 0 {
                    self.reserve.grant(wire);
                }
                if !self.current.remove(i) {
                    self.early.remove(i);
                }
            }
            let buf = self.slots[i as usize]
                .take()
                .expect("queued slot holds a packet");
            self.free.push(i);
            let late = !meta.best_effort && now > meta.deadline;
            let dropped = late && self.cfg.late == LatePolicy::Drop;
            if late {
                self.stats.late += 1;
            }
            if dropped {
                self.stats.late_dropped += 1;
                drop(buf);
            } else {
                self.busy_until = self.busy_until.max(now) + tx_ns;
                if let Some(r) = reported.as_mut() {
                    *r += wire;
                }
                self.stats.released += 1;
                self.stats.wire_bytes += wire;
                batch.push(buf);
                n += 1;
            }
            on_release(Released {
                meta,
                late,
                dropped,
            });
        }
        n
    }

    /// Drops every held packet (port closing).
    pub fn clear(&mut self) {
        while let Some((_, i)) = self.current.pop() {
            self.slots[i as usize] = None;
            self.free.push(i);
        }
        while let Some((_, i)) = self.early.pop() {
            self.slots[i as usize] = None;
            self.free.push(i);
        }
        while let Some(i) = self.pop_be() {
            self.slots[i as usize] = None;
            self.free.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(deadline: Nanos, eligible: Nanos, len: u32) -> PacketMeta {
        PacketMeta {
            deadline,
            eligible,
            frame_len: len,
            ..PacketMeta::default()
        }
    }

    fn cfg() -> LinkConfig {
        LinkConfig {
            link_rate_bps: 1_000_000_000, // 1 Gb/s: 1 byte = 8 ns
            in_flight_limit: 10_000,
            capacity: 64,
            ..LinkConfig::default()
        }
    }

    fn drain(l: &mut LinkScheduler<u32>, now: Nanos) -> Vec<u32> {
        let mut b = Batch::new();
        l.release(now, None, &mut b, |_| {});
        b.into_iter().collect()
    }

    #[test]
    fn releases_in_deadline_order() {
        let mut l = LinkScheduler::new(cfg());
        for (tag, d) in [(1u32, 300), (2, 100), (3, 200)] {
            l.enqueue(tag, meta(d, 0, 100), 0).unwrap();
        }
        assert_eq!(drain(&mut l, 0), vec![2, 3, 1]);
    }

    #[test]
    fn early_packets_wait_unless_work_conserving() {
        let mut l = LinkScheduler::new(cfg());
        l.enqueue(1, meta(900, 500, 100), 0).unwrap();
        let mut be = meta(0, 0, 100);
        be.best_effort = true;
        l.enqueue(2, be, 0).unwrap();
        assert_eq!(drain(&mut l, 0), vec![2]);
        assert_eq!(drain(&mut l, 499), Vec::<u32>::new());
        assert_eq!(drain(&mut l, 500), vec![1]);

        let mut l = LinkScheduler::new(LinkConfig {
            work_conserving: true,
            ..cfg()
        });
        l.enqueue(1, meta(900, 500, 100), 0).unwrap();
        l.enqueue(2, be, 0).unwrap();
        assert_eq!(drain(&mut l, 0), vec![2, 1]);
    }

    #[test]
    fn in_flight_limit_paces_at_the_share() {
        // Half of 1 Gb/s: a 1000-byte frame (1024 on the wire) takes 16,384 ns.
        let mut l = LinkScheduler::new(LinkConfig {
            share_ppm: 500_000,
            in_flight_limit: 1024,
            ..cfg()
        });
        for i in 0..4 {
            l.enqueue(i, meta(1_000_000, 0, 1000), 0).unwrap();
        }
        assert_eq!(drain(&mut l, 0), vec![0]);
        assert_eq!(drain(&mut l, 16_383), Vec::<u32>::new());
        assert_eq!(drain(&mut l, 16_384), vec![1]);
        assert_eq!(l.busy_until(), 2 * 16_384);
        // Reported in-flight bytes take precedence over the model.
        let mut b = Batch::new();
        assert_eq!(l.release(16_384, Some(0), &mut b, |_| {}), 1);
        assert_eq!(b[0], 2);
    }

    #[test]
    fn late_packets_are_counted_and_dropped_by_policy() {
        let mut l = LinkScheduler::new(LinkConfig {
            late: LatePolicy::Drop,
            ..cfg()
        });
        l.enqueue(1, meta(100, 0, 100), 0).unwrap();
        l.enqueue(2, meta(1000, 0, 100), 0).unwrap();
        let mut seen = Vec::new();
        let mut b = Batch::new();
        l.release(500, None, &mut b, |r| {
            seen.push((r.meta.deadline, r.late, r.dropped))
        });
        assert_eq!(b.as_slice(), &[2]);
        assert_eq!(seen, vec![(100, true, true), (1000, false, false)]);
        assert_eq!(l.stats().late, 1);
        assert_eq!(l.stats().late_dropped, 1);
    }

    #[test]
    fn full_scheduler_gives_the_packet_back() {
        let mut l = LinkScheduler::new(LinkConfig {
            capacity: MAX_BURST as u32,
            ..cfg()
        });
        for i in 0..MAX_BURST as u32 {
            l.enqueue(i, meta(10, 0, 60), 0).unwrap();
        }
        assert_eq!(l.enqueue(99, meta(10, 0, 60), 0), Err(99));
        assert_eq!(l.stats().full, 1);
    }

    #[test]
    fn config_errors_are_readable() {
        let c = LinkConfig {
            in_flight_limit: 100,
            ..LinkConfig::default()
        };
        let e = c.validate(1514).unwrap_err();
        assert!(e.to_string().contains("in_flight_limit 100"), "{e}");
        assert!(LinkConfig {
            share_ppm: 0,
            ..LinkConfig::default()
        }
        .validate(1514)
        .is_err());
    }

    #[test]
    fn best_effort_reserve_gets_its_share_of_bytes() {
        // One 1000-byte frame (1024 on the wire, 8,192 ns at 1 Gb/s) in flight at a time;
        // real-time packets in three of every four frame times (75%, within 1 − reserve), so
        // busy windows end and best-effort gets the rest; lifts at most once per window.
        let mut l = LinkScheduler::new(LinkConfig {
            best_effort_reserve_ppm: 200_000,
            in_flight_limit: 1024,
            capacity: 4096,
            ..cfg()
        });
        let mut be = meta(0, 0, 1000);
        be.best_effort = true;
        let (mut n_be, mut n_rt) = (0, 0);
        let mut now = 0;
        for i in 0..2000u32 {
            if i % 4 != 3 {
                l.enqueue(i, meta(u64::MAX / 2, 0, 1000), now).unwrap();
            }
            l.enqueue(100_000 + i, be, now).unwrap();
            for t in drain(&mut l, now) {
                if t >= 100_000 {
                    n_be += 1
                } else {
                    n_rt += 1
                }
            }
            now += 8192;
        }
        let share = n_be as f64 / (n_be + n_rt) as f64;
        assert!((0.2..=0.3).contains(&share), "best-effort got {share}");
        let lifted = l.stats().reserved_releases;
        assert!(
            lifted > 0 && lifted <= 501,
            "{lifted} lifts in 500 busy windows"
        );
    }
}
