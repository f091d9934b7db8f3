//! A benchmark harness for the scheduling path alone — enforcement, the CPU scheduler, the
//! header write and the link scheduler — used by `benches/per_packet.rs` and by
//! `examples/sched_path.rs` (a target for callgrind). Not part of the dataplane proper.

use crate::link::{LinkConfig, LinkScheduler, PacketMeta};
use crate::port::Batch;
use crate::sched::{CpuScheduler, SchedPolicy};
use crate::spec::Endpoint;
use crate::time::Nanos;
use crate::wire::{HeaderTemplate, RtHeader};
use crate::Enforcer;

/// What the scheduling path leaves out: ablations that show where its cost goes when the
/// channels do not fit in the cache. [`Ablation::default`] is the whole path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ablation {
    /// The CPU scheduler in FIFO order (QoS off): the same work, with the channels visited in
    /// sequence instead of in deadline order.
    pub cpu_fifo: bool,
    /// The per-channel state (enforcement's last ℓ, the relative deadline) recomputed from
    /// the channel's index instead of loaded: the same keys and order, no per-channel memory.
    pub no_channel_memory: bool,
    /// No link scheduler: enforcement, the CPU scheduler and the header write only.
    pub no_link: bool,
    /// No prefetch of the channel [`LOOKAHEAD`] picks ahead (the path before the sorted run).
    pub no_lookahead: bool,
}

/// Picks ahead whose channel state the path prefetches, from the CPU queue's sorted run
/// ([`crate::edf_queue::EdfQueue::upcoming`]): one pick (≈ 35–65 ns) is shorter than a load
/// from the last-level cache or memory, so the line must be asked for a few picks before it
/// is read; 3 and 4 measured alike, 2 slower, 8 slower again (lines evicted before use).
pub const LOOKAHEAD: usize = 4;

/// One channel's state, together as in a handler.
struct BenchChannel {
    enforcer: Enforcer,
    /// The relative deadline.
    rel: Nanos,
    /// ℓ of the message queued on the CPU: computed once, when the message was taken.
    queued_l: Nanos,
}

/// The scheduling path alone, N channels always backlogged.
pub struct SchedPath {
    channels: Vec<BenchChannel>,
    cpu: CpuScheduler,
    link: LinkScheduler<u32>,
    template: HeaderTemplate,
    frame: Vec<u8>,
    now: Nanos,
    ip_id: u16,
    ablation: Ablation,
}

/// Packets the link scheduler holds in steady state.
pub const LINK_BACKLOG: usize = 512;
/// The link scheduler's in-flight limit in the scheduling-path bench.
pub const LINK_LIMIT: u64 = 1_000_000;
/// Virtual time per packet: the core's clock advances as it works.
pub const STEP_NS: Nanos = 100;
/// Every message's Imin: channels are always current in steady state.
pub const IMIN: Nanos = 1;

/// Channel `i`'s relative deadline: spread over 10 ms, so the EDF queues hold many distinct
/// keys in an order unrelated to the channels' indices.
#[inline(always)]
pub fn relative_deadline(i: usize) -> Nanos {
    10_000 + (i as u64 * 7919) % 10_000_000
}

impl SchedPath {
    /// N channels, all backlogged, and a standing link backlog.
    pub fn new(n: usize) -> Self {
        Self::with_cpu_order(n, false)
    }

    /// Like [`SchedPath::new`]; with `fifo` the CPU scheduler runs the channels in FIFO order
    /// (QoS off) instead of by deadline: the same work, with channels visited in sequence
    /// rather than in deadline order, which separates the cost of the EDF order's scattered
    /// memory accesses from the rest.
    pub fn with_cpu_order(n: usize, fifo: bool) -> Self {
        Self::with_ablation(
            n,
            Ablation {
                cpu_fifo: fifo,
                ..Ablation::default()
            },
        )
    }

    /// Like [`SchedPath::new`], leaving out what `ablation` says.
    pub fn with_ablation(n: usize, ablation: Ablation) -> Self {
        let policy = SchedPolicy {
            fifo: ablation.cpu_fifo,
            ..SchedPolicy::default()
        };
        let mut p = Self {
            channels: (0..n)
                .map(|i| BenchChannel {
                    enforcer: Enforcer::default(),
                    rel: relative_deadline(i),
                    queued_l: 0,
                })
                .collect(),
            cpu: CpuScheduler::new(n, policy),
            link: LinkScheduler::new(LinkConfig {
                link_rate_bps: 400_000_000_000,
                in_flight_limit: LINK_LIMIT,
                capacity: 2 * LINK_BACKLOG as u32,
                ..LinkConfig::default()
            }),
            template: HeaderTemplate::new(&Endpoint::default()),
            frame: vec![0; 2048],
            now: 0,
            ip_id: 0,
            ablation,
        };
        for (i, c) in p.channels.iter_mut().enumerate() {
            c.queued_l = c.enforcer.logical_arrival(0, IMIN);
            p.cpu
                .enqueue_real_time(i as u32, c.queued_l, c.queued_l + c.rel, 0);
        }
        for _ in 0..LINK_BACKLOG {
            p.packet(false);
        }
        p
    }

    /// One packet: pick, write, link enqueue, re-queue the channel; release one when `release`.
    #[inline]
    pub fn packet(&mut self, release: bool) {
        let now = self.now;
        // Without channel memory, ℓ comes back from the CPU queue's key (ℓ + d).
        let key = if self.ablation.no_channel_memory {
            self.cpu.current_deadline()
        } else {
            None
        };
        let (slot, _) = self
            .cpu
            .pick(now, true, true)
            .expect("all channels are backlogged");
        if !self.ablation.no_lookahead {
            // The channel picked LOOKAHEAD picks from now (the one after `slot` is 0 ahead).
            if let Some(x) = self.cpu.upcoming_current(LOOKAHEAD - 1) {
                if let Some(c) = self.channels.get(x as usize) {
                    crate::mem::prefetch(c);
                }
            }
        }
        let (l, rel) = if let Some(key) = key {
            let rel = relative_deadline(slot as usize);
            (key - rel, rel)
        } else {
            let c = &self.channels[slot as usize];
            (c.queued_l, c.rel)
        };
        let d = l + rel;
        let rt = RtHeader {
            channel: slot,
            msg_len: 64,
            frag_len: 64,
            frag_count: 1,
            submit_ts: now,
            deadline: d,
            ..RtHeader::default()
        };
        let len = self
            .template
            .write_frame(&mut self.frame, self.ip_id, &rt, &[0xab; 64]);
        self.ip_id = self.ip_id.wrapping_add(1);
        let meta = PacketMeta {
            slot,
            eligible: l,
            deadline: d,
            submit_ts: now,
            frame_len: len as u32,
            last_of_message: true,
            ..PacketMeta::default()
        };
        if !self.ablation.no_link {
            let _ = self.link.enqueue(slot, meta, now);
        }
        // The channel's next message, submitted long ago: its ℓ = max(ℓ + Imin, t) is `now`,
        // as the channel's last message was taken at least one packet (`STEP_NS` ≥ `IMIN`) ago.
        let next_l = if self.ablation.no_channel_memory {
            now
        } else {
            let c = &mut self.channels[slot as usize];
            c.queued_l = c.enforcer.logical_arrival(now, IMIN);
            c.queued_l
        };
        self.cpu.enqueue_real_time(slot, next_l, next_l + rel, now);
        if release && !self.ablation.no_link {
            // One packet out per packet in keeps the backlog standing: the port reports just
            // enough room for one frame.
            let mut batch: Batch<u32> = Batch::new();
            let room_for_one = LINK_LIMIT - crate::wire::wire_bytes(len);
            self.link
                .release(now, Some(room_for_one), &mut batch, |_| {});
            debug_assert_eq!(batch.len(), 1);
        }
        self.now += STEP_NS;
    }
}
