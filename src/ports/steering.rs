//! Receive steering between the polling cores that share one device: [`Steering`], the
//! channel → core table and the software hand-off rings, used by every multi-queue port
//! (dpdk's [`QueuePort`](super::dpdk::QueuePort)s, af_packet's fanout sockets, AF_XDP's
//! per-queue sockets).
//!
//! A frame must reach the core whose receive path holds its channel's receiver (admission
//! placed it there). Where the device (or the kernel) cannot be told, frames land on whatever
//! queue it picks, and the core that reads them hands each rtchan frame whose channel lives
//! elsewhere to the owner's hand-off ring: a bounded lock-free ring per core. The owner drains
//! its ring before its own queue, in the same bounded RX step ([`Steering::take_handed`]).
//! Frames of unknown channels and non-rtchan frames stay where they arrived (the receive path
//! counts them). A full hand-off ring drops the frame and counts it (`handoff_dropped`), never
//! blocks: a real-time core never waits for another core's frames.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use dataplane::port::{Batch, PacketBuf, PortStats, MAX_BURST};
use dataplane::spec::ChannelId;
use dataplane::wire::{ETH_LEN, UDP_LEN};

/// Frames one core's hand-off ring holds: eight full bursts, so a core that misses a few
/// iterations (preempted) loses nothing at line rate bursts of other queues.
pub const HANDOFF_RING: usize = 8 * MAX_BURST;

/// Slots of the channel → core table: a power of two, at least twice the most channels the
/// daemon can hold, so linear probing stays short.
fn table_slots(max_channels: usize) -> usize {
    (max_channels.max(16) * 2).next_power_of_two()
}

const EMPTY: u64 = 0;
/// A removed entry: probing goes on past it.
const TOMBSTONE: u64 = u64::MAX;

/// Where received frames go: channel → owning core, and each core's hand-off ring of buffers
/// `B`.
///
/// The control thread is the only writer of the table ([`Steering::place`],
/// [`Steering::remove`]); polling cores only read it. An entry is `(channel + 1) << 16 | core`
/// in one atomic word, so a reader sees a whole entry or none.
pub struct Steering<B> {
    slots: Box<[AtomicU64]>,
    rings: Box<[ArrayQueue<B>]>,
    handed: Box<[AtomicU64]>,
    dropped: Box<[AtomicU64]>,
}

impl<B> std::fmt::Debug for Steering<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("cores", &self.rings.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<B: PacketBuf> Steering<B> {
    /// A table for `cores` cores holding up to `max_channels` receivers in all.
    pub fn new(cores: usize, max_channels: usize) -> Arc<Self> {
        let n = table_slots(max_channels);
        Arc::new(Self {
            slots: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            rings: (0..cores).map(|_| ArrayQueue::new(HANDOFF_RING)).collect(),
            handed: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            dropped: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// How many cores share the device.
    pub fn cores(&self) -> usize {
        self.rings.len()
    }

    fn key(id: ChannelId) -> u64 {
        (u64::from(id) + 1) << 16
    }

    fn start(&self, id: ChannelId) -> usize {
        // Fibonacci hashing: channel ids are often consecutive.
        (u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (self.slots.len() - 1)
    }

    /// Frames of channel `id` go to core `core` from now on (control thread only).
    pub fn place(&self, id: ChannelId, core: u16) {
        self.remove(id);
        let mask = self.slots.len() - 1;
        let mut i = self.start(id);
        for _ in 0..self.slots.len() {
            let v = self.slots[i].load(Ordering::Relaxed);
            if v == EMPTY || v == TOMBSTONE {
                self.slots[i].store(Self::key(id) | u64::from(core), Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
        // Unreachable while receivers stay within max_channels (the table is twice that).
    }

    /// Frames of channel `id` stay wherever they arrive (control thread only).
    pub fn remove(&self, id: ChannelId) {
        let mask = self.slots.len() - 1;
        let mut i = self.start(id);
        for _ in 0..self.slots.len() {
            let v = self.slots[i].load(Ordering::Relaxed);
            if v == EMPTY {
                return;
            }
            if v != TOMBSTONE && v & !0xffff == Self::key(id) {
                self.slots[i].store(TOMBSTONE, Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// The core that owns channel `id`, if a receiver is placed.
    #[inline]
    pub fn owner(&self, id: ChannelId) -> Option<u16> {
        let mask = self.slots.len() - 1;
        let key = Self::key(id);
        let mut i = self.start(id);
        // Bounded by the table size; with the table at most half full the probe is short.
        for _ in 0..self.slots.len() {
            let v = self.slots[i].load(Ordering::Acquire);
            if v == EMPTY {
                return None;
            }
            if v != TOMBSTONE && v & !0xffff == key {
                return Some((v & 0xffff) as u16);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Moves frames other cores handed to core `me` into `batch` (as many as fit): called
    /// first in `me`'s RX step, since they arrived before what its own queue holds now.
    #[inline]
    pub fn take_handed(&self, me: usize, batch: &mut Batch<B>) {
        let Some(ring) = self.rings.get(me) else {
            return;
        };
        while batch.remaining_capacity() > 0 {
            let Some(b) = ring.pop() else { break };
            batch.push(b);
        }
    }

    /// Routes frame `b`, read from core `me`'s queue: `Some(b)` when it stays with `me`
    /// (its channel is `me`'s, unknown, or it is no rtchan frame to UDP port `udp_port`),
    /// `None` when it was handed to its owner (or dropped, counted, because the owner's ring
    /// was full).
    #[inline]
    pub fn route(&self, me: usize, b: B, udp_port: u16) -> Option<B> {
        let Some(owner) = peek_channel(b.data(), udp_port).and_then(|c| self.owner(c)) else {
            return Some(b);
        };
        let owner = usize::from(owner);
        if owner == me || owner >= self.rings.len() {
            return Some(b);
        }
        match self.rings[owner].push(b) {
            Ok(()) => self.handed[owner].fetch_add(1, Ordering::Relaxed),
            Err(b) => {
                drop(b);
                self.dropped[owner].fetch_add(1, Ordering::Relaxed)
            }
        };
        None
    }

    /// Frames handed to core `core` by other cores, and frames dropped because its ring was
    /// full.
    pub fn counters(&self, core: usize) -> (u64, u64) {
        (
            self.handed[core].load(Ordering::Relaxed),
            self.dropped[core].load(Ordering::Relaxed),
        )
    }
}

impl<B> Steering<B> {
    /// Per core: its queue's `counters` (index = core) and the hand-off's.
    pub fn report(&self, counters: &[Arc<QueueCounters>]) -> Vec<QueueReport> {
        counters
            .iter()
            .enumerate()
            .map(|(i, c)| QueueReport {
                queue: i as u16,
                rx_packets: c.rx_packets.load(Ordering::Relaxed),
                rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
                tx_packets: c.tx_packets.load(Ordering::Relaxed),
                tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
                handed_in: self.handed.get(i).map_or(0, |a| a.load(Ordering::Relaxed)),
                handoff_dropped: self.dropped.get(i).map_or(0, |a| a.load(Ordering::Relaxed)),
            })
            .collect()
    }
}

/// One queue's (socket's) counters, written by its core (relaxed stores of its own totals)
/// and read by the control thread for `stats --port`.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct QueueCounters {
    /// Frames this queue received (before any hand-off).
    pub rx_packets: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    /// Frames sent on this queue.
    pub tx_packets: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
}

/// One queue's figures, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueReport {
    /// Queue (socket) index = polling core.
    pub queue: u16,
    /// Frames received on this queue.
    pub rx_packets: u64,
    /// Bytes received on this queue.
    pub rx_bytes: u64,
    /// Frames sent on this queue.
    pub tx_packets: u64,
    /// Bytes sent on this queue.
    pub tx_bytes: u64,
    /// Frames other queues' cores handed to this core.
    pub handed_in: u64,
    /// Frames for this core dropped because its hand-off ring was full.
    pub handoff_dropped: u64,
}

/// What the port of one core of a shared device keeps: its index (= core), the shared table,
/// its counters.
pub struct Member<B> {
    index: usize,
    steering: Arc<Steering<B>>,
    counters: Arc<QueueCounters>,
    udp_port: u16,
}

impl<B> std::fmt::Debug for Member<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("index", &self.index)
            .finish()
    }
}

impl<B: PacketBuf> Member<B> {
    /// Core `index` of `steering`, counting into `counters`, rtchan frames to `udp_port`.
    pub fn new(
        index: usize,
        steering: Arc<Steering<B>>,
        counters: Arc<QueueCounters>,
        udp_port: u16,
    ) -> Self {
        Self {
            index,
            steering,
            counters,
            udp_port,
        }
    }

    /// [`Steering::take_handed`] for this core.
    #[inline]
    pub fn take_handed(&self, batch: &mut Batch<B>) {
        self.steering.take_handed(self.index, batch);
    }

    /// [`Steering::route`] from this core.
    #[inline]
    pub fn route(&self, b: B) -> Option<B> {
        self.steering.route(self.index, b, self.udp_port)
    }

    /// Publishes the port's receive totals.
    #[inline]
    pub fn publish_rx(&self, s: &PortStats) {
        self.counters
            .rx_packets
            .store(s.rx_packets, Ordering::Relaxed);
        self.counters.rx_bytes.store(s.rx_bytes, Ordering::Relaxed);
    }

    /// Publishes the port's transmit totals.
    #[inline]
    pub fn publish_tx(&self, s: &PortStats) {
        self.counters
            .tx_packets
            .store(s.tx_packets, Ordering::Relaxed);
        self.counters.tx_bytes.store(s.tx_bytes, Ordering::Relaxed);
    }
}

/// The control side of a port whose cores share one device (af_packet's fanout group, AF_XDP's
/// per-queue sockets): what the daemon's control thread calls.
pub trait SharedDevice: Send + Sync {
    /// Frames of channel `id` go to core `core` from now on (`None`: nowhere in particular).
    /// An error leaves the software hand-off steering (the kernel's part failed).
    fn steer(&self, id: ChannelId, core: Option<u16>) -> std::io::Result<()>;
    /// Per queue (= core): counters and the hand-off's.
    fn report(&self) -> Vec<QueueReport>;
    /// How frames reach their core: `kernel` (the kernel steers, the hand-off behind it) or
    /// `software` (the hand-off alone).
    fn steering_name(&self) -> &'static str;
}

/// Where the rtchan channel id sits in a frame whose IPv4 header has no options: the fixed
/// offset the kernel-side steering programs read (Ethernet, IPv4, UDP, then the channel field,
/// 8 bytes into the rtchan header; see docs/wire.md).
pub const CHANNEL_OFFSET_NO_IP_OPTIONS: usize = ETH_LEN + 20 + UDP_LEN + 8;

/// The rtchan channel id of a frame to UDP port `udp_port`, read at its fixed offsets without
/// verifying anything (the owner's receive path verifies).
#[inline]
pub fn peek_channel(f: &[u8], udp_port: u16) -> Option<ChannelId> {
    if f.len() < ETH_LEN + 20 || f[12..14] != [0x08, 0x00] || f[ETH_LEN] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    let l4 = ETH_LEN + ihl;
    if ihl < 20 || f[ETH_LEN + 9] != 17 || f.len() < l4 + UDP_LEN + 12 {
        return None;
    }
    if u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]) != udp_port {
        return None;
    }
    let h = l4 + UDP_LEN + 8; // the channel field of the rtchan header
    Some(u32::from_be_bytes([f[h], f[h + 1], f[h + 2], f[h + 3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::memlink::{BufPool, HeapBuf};

    #[test]
    fn steering_table_places_moves_and_removes() {
        let s = Steering::<HeapBuf>::new(4, 100);
        assert_eq!(s.owner(7), None);
        for id in 0..150 {
            s.place(id, (id % 4) as u16);
        }
        for id in 0..150 {
            assert_eq!(s.owner(id), Some((id % 4) as u16), "{id}");
        }
        s.place(7, 2);
        assert_eq!(s.owner(7), Some(2));
        for id in (0..150).step_by(2) {
            s.remove(id);
        }
        for id in 0..150 {
            let want = (id % 2 == 1).then_some(if id == 7 { 2 } else { (id % 4) as u16 });
            assert_eq!(s.owner(id), want, "{id}");
        }
    }

    fn frame(pool: &std::sync::Arc<BufPool>, channel: u32) -> HeapBuf {
        use dataplane::spec::Endpoint;
        use dataplane::wire::{HeaderTemplate, RtHeader};
        let rt = RtHeader {
            channel,
            frag_count: 1,
            frag_len: 5,
            msg_len: 5,
            ..RtHeader::default()
        };
        let mut b = pool.alloc().unwrap();
        let n =
            HeaderTemplate::new(&Endpoint::default()).write_frame(b.buf_mut(), 1, &rt, b"hi!!!");
        b.set_len(n);
        b
    }

    #[test]
    fn frames_of_other_cores_are_handed_over_and_the_rest_stay() {
        let port = dataplane::spec::Endpoint::default().dst_port;
        let pool = BufPool::new(8, 256);
        let s = Steering::<HeapBuf>::new(2, 16);
        s.place(5, 1);
        s.place(6, 0);
        assert!(
            s.route(0, frame(&pool, 5), port).is_none(),
            "handed to core 1"
        );
        assert!(s.route(0, frame(&pool, 6), port).is_some(), "core 0's own");
        assert!(
            s.route(0, frame(&pool, 9), port).is_some(),
            "unknown channel"
        );
        assert!(
            s.route(1, frame(&pool, 5), port).is_some(),
            "already on its core"
        );
        assert_eq!(s.counters(1), (1, 0));
        let mut batch = Batch::new();
        s.take_handed(1, &mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            peek_channel(batch.iter().next().unwrap().data(), port),
            Some(5)
        );
        s.take_handed(0, &mut batch);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn peek_finds_the_channel_of_rtchan_frames_only() {
        use dataplane::spec::Endpoint;
        use dataplane::wire::{parse_frame, HeaderTemplate, RtHeader};
        let t = HeaderTemplate::new(&Endpoint::default());
        let rt = RtHeader {
            channel: 0x0102_0304,
            frag_count: 1,
            frag_len: 5,
            msg_len: 5,
            ..RtHeader::default()
        };
        let mut f = vec![0u8; 200];
        let n = t.write_frame(&mut f, 1, &rt, b"hello");
        let f = &f[..n];
        let port = Endpoint::default().dst_port;
        assert_eq!(
            parse_frame(f, port).map(|p| p.header.channel),
            Ok(0x0102_0304)
        );
        assert_eq!(peek_channel(f, port), Some(0x0102_0304));
        let o = CHANNEL_OFFSET_NO_IP_OPTIONS;
        assert_eq!(
            u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]),
            0x0102_0304
        );
        assert_eq!(peek_channel(f, port.wrapping_add(1)), None);
        let mut tcp = f.to_vec();
        tcp[ETH_LEN + 9] = 6;
        assert_eq!(peek_channel(&tcp, port), None);
        assert_eq!(peek_channel(&f[..30], port), None);
    }
}
