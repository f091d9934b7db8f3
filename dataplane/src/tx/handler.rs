//! The handler of one channel: a state machine that turns submitted messages into packets.
//!
//! It takes the next message off the channel's submit ring, stamps it with its logical arrival
//! time ℓ (traffic enforcement), and writes one frame per fragment straight into a port buffer:
//! Ethernet/IPv4/UDP from the channel's template, then the rtchan header, then that slice of the
//! message. The polling core decides when it runs; the handler only knows how to make progress.

use crate::channel::{ChannelShared, Submitted};
use crate::link::PacketMeta;
use crate::port::PacketBuf;
use crate::spec::{ChannelSpec, TrafficClass};
use crate::stats::SampleProducer;
use crate::time::Nanos;
use crate::wire::{HeaderTemplate, RtHeader, FLAG_BEST_EFFORT, FRAME_OVERHEAD};
use std::sync::Arc;

/// Logical arrival times of one channel: ℓ(m0) = t0, ℓ(mk) = max(ℓ(mk−1) + Imin, tk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforcer {
    last: Option<Nanos>,
}

impl Enforcer {
    /// The logical arrival time of a message submitted at `t`, with minimum interval `imin`.
    #[inline]
    pub fn logical_arrival(&mut self, t: Nanos, imin: Nanos) -> Nanos {
        let l = match self.last {
            Some(prev) => prev.saturating_add(imin).max(t),
            None => t,
        };
        self.last = Some(l);
        l
    }
}

/// The message a handler is working on.
#[derive(Debug)]
pub(crate) struct InProgress {
    pub msg: Submitted,
    pub seq: u32,
    /// Logical arrival time ℓ.
    pub logical: Nanos,
    /// Absolute CPU deadline (the handler's EDF key while current).
    pub cpu_deadline: Nanos,
    /// Absolute link deadline of every packet.
    pub link_deadline: Nanos,
    /// Absolute end-to-end deadline (in the header).
    pub e2e_deadline: Nanos,
    pub next_frag: u16,
    pub frag_count: u16,
}

/// Result of writing one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub meta: PacketMeta,
    pub seq: u32,
    pub frag_index: u16,
    /// The message is now fully written (its buffer went back to the sender).
    pub message_done: bool,
}

/// Cache lines of a [`Handler`], all of which a packet may read or write: what the core
/// prefetches for the handler that runs next.
pub(crate) const HOT_LINES: usize = 5;

/// One channel's handler on a core. `repr(C)`, line-aligned, [`HOT_LINES`] lines in all (delay
/// samples go to the core's sample ring, not into the handler).
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Handler {
    pub current: Option<InProgress>,
    pub spec: Option<ChannelSpec>,
    enforcer: Enforcer,
    template: HeaderTemplate,
    pub shared: Arc<ChannelShared>,
    /// `shared.config.id` and `shared.slot`, copied: read per packet, and the handler's own
    /// cache lines are the ones already loaded.
    id: u32,
    slot: u32,
    pub generation: u32,
    payload_per_packet: u32,
    next_seq: u32,
    ip_id: u16,
    /// Traffic enforcement on (off only for the FIFO baseline).
    pub enforce: bool,
    /// Closing: finish what is queued, then go.
    pub draining: bool,
    /// `shared.stats`' delay histogram key in the core's sample sink, copied like `id`.
    delay_key: u32,
}

impl Handler {
    pub fn new(shared: Arc<ChannelShared>, generation: u32, payload_per_packet: u32) -> Self {
        let spec = match shared.config.class {
            TrafficClass::RealTime(s) => Some(s),
            TrafficClass::BestEffort { .. } => None,
        };
        let shared_key = shared.stats.delay_key();
        Self {
            template: HeaderTemplate::new(&shared.config.endpoint),
            id: shared.config.id,
            slot: shared.slot,
            shared,
            spec,
            generation,
            enforce: true,
            payload_per_packet,
            enforcer: Enforcer::default(),
            next_seq: 0,
            ip_id: 0,
            current: None,
            delay_key: shared_key,
            draining: false,
        }
    }

    /// Prefetches what the next run of this handler touches outside its own hot lines: the
    /// submit ring's head and the channel's counters (see [`ChannelShared::prefetch_hot`]).
    #[inline(always)]
    pub fn prefetch_shared(&self) {
        self.shared.prefetch_hot();
    }

    /// Starts on `msg`: assigns its sequence number, logical arrival time and deadlines.
    #[inline]
    /// `now` is the take time: a client-fed message's stamp is held to the admitted window
    /// before it (`ChannelShared::arrival_stamp`).
    pub fn start(&mut self, msg: Submitted, now: Nanos) {
        let t = self.shared.arrival_stamp(&msg, now);
        let (logical, cpu, link, e2e) = match &self.spec {
            Some(s) if !self.enforce => (
                t,
                t.saturating_add(s.cpu_deadline),
                t.saturating_add(s.link_deadline),
                t.saturating_add(s.end_to_end_deadline),
            ),
            Some(s) => {
                let l = self.enforcer.logical_arrival(t, s.imin);
                (
                    l,
                    l.saturating_add(s.cpu_deadline),
                    l.saturating_add(s.link_deadline),
                    l.saturating_add(s.end_to_end_deadline),
                )
            }
            None => (t, 0, 0, 0),
        };
        // Most messages are one packet: skip the division then.
        let frag_count = if msg.len <= self.payload_per_packet {
            1
        } else {
            msg.len.div_ceil(self.payload_per_packet) as u16
        };
        self.current = Some(InProgress {
            msg,
            seq: self.next_seq,
            logical,
            cpu_deadline: cpu,
            link_deadline: link,
            e2e_deadline: e2e,
            next_frag: 0,
            frag_count,
        });
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// Takes the next message from the ring if the handler has none. Returns whether it has
    /// work; when it has none it disarms (see the wake-up protocol in [`crate::channel`]).
    #[inline]
    pub fn fetch(&mut self, now: Nanos) -> bool {
        if self.current.is_some() {
            return true;
        }
        if let Some(m) = self.shared.take() {
            self.start(m, now);
            return true;
        }
        match self.shared.disarm_or_take() {
            Some(m) => {
                self.start(m, now);
                true
            }
            None => false,
        }
    }

    /// Writes the next fragment of the current message into `buf`. The caller guarantees a
    /// current message and a buffer of at least `FRAME_OVERHEAD + payload_per_packet` bytes.
    #[inline]
    pub fn write_packet<B: PacketBuf>(&mut self, buf: &mut B) -> Written {
        let cur = self
            .current
            .as_mut()
            .expect("write_packet without a message");
        let off = cur.next_frag as u32 * self.payload_per_packet;
        let end = (off + self.payload_per_packet).min(cur.msg.len);
        let rt = RtHeader {
            flags: if self.spec.is_none() {
                FLAG_BEST_EFFORT
            } else {
                0
            },
            frag_index: cur.next_frag,
            frag_count: cur.frag_count,
            frag_len: (end - off) as u16,
            channel: self.id,
            msg_seq: cur.seq,
            msg_len: cur.msg.len,
            frag_offset: off,
            submit_ts: cur.msg.submit_ts,
            deadline: cur.e2e_deadline,
        };
        let len = self.template.write_frame(
            buf.buf_mut(),
            self.ip_id,
            &rt,
            &self.shared.message(&cur.msg)[off as usize..end as usize],
        );
        buf.set_len(len);
        self.ip_id = self.ip_id.wrapping_add(1);
        cur.next_frag += 1;
        let done = cur.next_frag == cur.frag_count;
        let meta = PacketMeta {
            slot: self.slot,
            generation: self.generation,
            eligible: cur.logical,
            deadline: cur.link_deadline,
            submit_ts: cur.msg.submit_ts,
            frame_len: len as u32,
            last_of_message: done,
            best_effort: self.spec.is_none(),
        };
        if done {
            let finished = self.current.take().expect("checked above");
            self.shared.recycle(finished.msg);
        }
        Written {
            meta,
            seq: rt.msg_seq,
            frag_index: rt.frag_index,
            message_done: done,
        }
    }

    /// Discards everything queued (closing without drain); returns how many messages.
    pub fn discard(&mut self) -> u64 {
        let mut n = 0;
        if let Some(cur) = self.current.take() {
            self.shared.recycle(cur.msg);
            n += 1;
        }
        while let Some(m) = self.shared.take() {
            self.shared.recycle(m);
            n += 1;
        }
        n
    }

    /// Records the delay of a message whose last packet was released at `now`: one slot of
    /// the core's sample ring, or a counted drop when the ring is full (never a wait).
    #[inline]
    pub fn record_delay(&self, samples: &mut SampleProducer, submit_ts: Nanos, now: Nanos) {
        if !samples.push(self.delay_key, now.saturating_sub(submit_ts)) {
            self.shared.stats.delay_samples_dropped.inc();
        }
    }

    /// Smallest buffer a packet of this handler needs.
    pub fn frame_room(&self) -> usize {
        FRAME_OVERHEAD + self.payload_per_packet as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_fields_fit_the_prefetched_lines() {
        use std::mem::align_of;
        assert_eq!(align_of::<Handler>(), 64);
        let size = std::mem::size_of::<Handler>();
        assert!(size <= HOT_LINES * 64, "a handler takes {size} bytes");
    }

    #[test]
    fn enforcement_pushes_bursts_into_the_future() {
        let mut e = Enforcer::default();
        // A burst of 4 at t = 100 with Imin = 10.
        let ls: Vec<_> = (0..4).map(|_| e.logical_arrival(100, 10)).collect();
        assert_eq!(ls, vec![100, 110, 120, 130]);
        // A late message resets to its own submit time.
        assert_eq!(e.logical_arrival(500, 10), 500);
        // A violator at 3x its rate drifts further into the future with every message.
        let mut e = Enforcer::default();
        let ls: Vec<_> = (0..5).map(|k| e.logical_arrival(k * 10, 30)).collect();
        assert_eq!(ls, vec![0, 30, 60, 90, 120]);
    }
}
