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

/// The scheduling path alone, N channels always backlogged.
pub struct SchedPath {
    /// Per channel, together as in a handler: enforcement state and the relative deadline.
    channels: Vec<(Enforcer, Nanos)>,
    cpu: CpuScheduler,
    link: LinkScheduler<u32>,
    template: HeaderTemplate,
    frame: Vec<u8>,
    now: Nanos,
    ip_id: u16,
}

/// Packets the link scheduler holds in steady state.
pub const LINK_BACKLOG: usize = 512;
/// The link scheduler's in-flight limit in the scheduling-path bench.
pub const LINK_LIMIT: u64 = 1_000_000;
/// Virtual time per packet: the core's clock advances as it works.
pub const STEP_NS: Nanos = 100;
/// Every message's Imin: channels are always current in steady state.
pub const IMIN: Nanos = 1;

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
        let policy = SchedPolicy {
            fifo,
            ..SchedPolicy::default()
        };
        let mut p = Self {
            channels: (0..n)
                .map(|i| (Enforcer::default(), 10_000 + (i as u64 * 7919) % 10_000_000))
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
        };
        for i in 0..n {
            let (enforcer, d) = &mut p.channels[i];
            let l = enforcer.logical_arrival(0, IMIN);
            p.cpu.enqueue_real_time(i as u32, l, l + *d, 0);
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
        let (slot, _) = self
            .cpu
            .pick(now, true, true)
            .expect("all channels are backlogged");
        let (enforcer, rel) = &mut self.channels[slot as usize];
        let rel = *rel;
        let l = enforcer.logical_arrival(now, IMIN);
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
        let _ = self.link.enqueue(slot, meta, now);
        // The channel's next message.
        let next_l = self.channels[slot as usize].0.logical_arrival(now, IMIN);
        self.cpu.enqueue_real_time(slot, next_l, next_l + rel, now);
        if release {
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
