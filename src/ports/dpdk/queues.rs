//! One ethdev port shared by several polling cores: [`QueuePort`], the [`Port`] of one TX/RX
//! queue pair, and [`Steering`], the software hand-off of received frames between cores.
//!
//! The daemon opens one [`EthPort`] with N TX and N RX queues (N = `[[cores]]` entries) and
//! gives core `i` the [`QueuePort`] of queue pair `i`: its link scheduler's bursts go to TX
//! queue `i`, its receive path reads RX queue `i`. DPDK allows bursts on different queues of
//! one port from different threads at once, so the cores share nothing on the fast path but
//! the port id and the RX pool (multi-producer/multi-consumer). Each core has its own TX pool.
//!
//! Receive steering. A frame must reach the core whose receive path holds its channel's
//! receiver (admission placed it there). Where the NIC cannot be told (vdevs, NICs without
//! `rte_flow`), frames land on whatever RX queue the device picks (queue 0, or a flow hash),
//! and the core that reads them hands each rtchan frame whose channel lives elsewhere to the
//! owner's hand-off ring ([`Steering`]: a channel → core table the control thread writes, and
//! one bounded lock-free ring per core). The owner drains its ring before its own RX queue,
//! in the same bounded RX step. Frames of unknown channels and non-rtchan frames stay where
//! they arrived (the receive path counts them). A full hand-off ring drops the frame and
//! counts it (`handoff_dropped`), never blocks.
//!
//! Where the device takes `rte_flow` rules ([`super::flow`]), the NIC does the steering: core
//! `i` reads RX queue `i + 1` ([`QueuePort::with_rx_queues`]), and the best-effort queue 0
//! is read by the last core only with the room its own queue left in the burst, at most
//! [`BE_BURST`] frames a burst. The hand-off stays on as the safety net (frames that arrive
//! while a rule is being replaced, best-effort channels' frames, channels whose rule the
//! device refused).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use dataplane::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats, MAX_BURST};
use dataplane::spec::ChannelId;
use dataplane::wire::{ETH_LEN, UDP_LEN};

use super::ethdev::EthPort;
use super::ffi;
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// Frames one core's hand-off ring holds: eight full bursts, so a core that misses a few
/// iterations (preempted) loses nothing at line rate bursts of other queues.
pub const HANDOFF_RING: usize = 8 * MAX_BURST;

/// Frames the best-effort queue gives the core that reads it, at most, per burst: the cost it
/// adds to that core's RX step stays small and bounded, whatever the best-effort load.
pub const BE_BURST: usize = 8;

/// Slots of the channel → core table: a power of two, at least twice the most channels the
/// daemon can hold, so linear probing stays short.
fn table_slots(max_channels: usize) -> usize {
    (max_channels.max(16) * 2).next_power_of_two()
}

const EMPTY: u64 = 0;
/// A removed entry: probing goes on past it.
const TOMBSTONE: u64 = u64::MAX;

/// Where received frames go: channel → owning core, and each core's hand-off ring.
///
/// The control thread is the only writer of the table ([`Steering::place`],
/// [`Steering::remove`]); polling cores only read it. An entry is `(channel + 1) << 16 | core`
/// in one atomic word, so a reader sees a whole entry or none.
pub struct Steering {
    slots: Box<[AtomicU64]>,
    rings: Box<[ArrayQueue<Mbuf>]>,
    handed: Box<[AtomicU64]>,
    dropped: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("cores", &self.rings.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Steering {
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

    /// Frames handed to core `core` by other cores, and frames dropped because its ring was
    /// full.
    pub fn counters(&self, core: usize) -> (u64, u64) {
        (
            self.handed[core].load(Ordering::Relaxed),
            self.dropped[core].load(Ordering::Relaxed),
        )
    }
}

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

/// The [`Port`] of queue pair `queue` of a shared [`EthPort`]: TX queue `queue` (from this
/// core's own TX pool) and RX queue `queue`. The core sees one TX and one RX queue, index 0.
pub struct QueuePort {
    eth: Arc<EthPort>,
    queue: u16,
    rx_queue: u16,
    be_queue: Option<u16>,
    tx_pool: Mempool,
    steering: Option<Arc<Steering>>,
    udp_port: u16,
    alloc_failures: u64,
}

impl std::fmt::Debug for QueuePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePort")
            .field("port", &self.eth.name())
            .field("queue", &self.queue)
            .finish()
    }
}

impl QueuePort {
    /// Queue pair `queue` of the started port `eth`; TX buffers from `tx_pool`. With
    /// `steering`, received rtchan frames of channels placed on another core are handed to it.
    pub fn new(
        eth: Arc<EthPort>,
        queue: u16,
        tx_pool: Mempool,
        steering: Option<Arc<Steering>>,
        udp_port: u16,
    ) -> Self {
        Self {
            eth,
            queue,
            rx_queue: queue,
            be_queue: None,
            tx_pool,
            steering,
            udp_port,
            alloc_failures: 0,
        }
    }

    /// Reads RX queue `rx_queue` (not the TX queue's index), and after it, with the room left
    /// and at most `BE_BURST` (8) frames, the best-effort queue `be_queue` (NIC steering).
    pub fn with_rx_queues(mut self, rx_queue: u16, be_queue: Option<u16>) -> Self {
        self.rx_queue = rx_queue;
        self.be_queue = be_queue;
        self
    }

    /// The queue pair's index on the port (its TX queue, and the core's index).
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The RX queue this core reads, and the best-effort queue it reads too.
    pub fn rx_queues(&self) -> (u16, Option<u16>) {
        (self.rx_queue, self.be_queue)
    }

    /// Reads up to `room` frames from RX queue `q` into `batch`, handing frames of channels
    /// placed on other cores to their owners.
    fn read_queue(&self, q: u16, room: usize, batch: &mut Batch<Mbuf>) {
        let room = room.min(batch.remaining_capacity());
        if room == 0 {
            return;
        }
        let me = usize::from(self.queue);
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        // SAFETY: the port is started and outlives self; q < nb_rx_queues (the daemon set up
        // this core's queue and the best-effort queue) and only this QueuePort reads it; ptrs
        // has room for `room` <= MAX_BURST pointers.
        let got = unsafe {
            ffi::rte_eth_rx_burst(self.eth.id().raw(), q, ptrs.as_mut_ptr(), room as u16)
        };
        let got = usize::from(got).min(room);
        for &p in &ptrs[..got] {
            // SAFETY: each returned pointer is a non-NULL single-segment mbuf the PMD handed
            // over (no scatter RX is configured).
            let m = unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) };
            if let Some(s) = &self.steering {
                if let Some(owner) = peek_channel(m.data(), self.udp_port).and_then(|c| s.owner(c))
                {
                    let owner = usize::from(owner);
                    if owner != me && owner < s.rings.len() {
                        match s.rings[owner].push(m) {
                            Ok(()) => s.handed[owner].fetch_add(1, Ordering::Relaxed),
                            Err(m) => {
                                drop(m);
                                s.dropped[owner].fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        continue;
                    }
                }
            }
            batch.push(m);
        }
    }

    fn check(&self, queue: u16) -> Result<(), PortError> {
        if queue != 0 {
            return Err(PortError::NoSuchQueue(queue));
        }
        if !self.eth.is_started() {
            return Err(PortError::LinkDown);
        }
        Ok(())
    }
}

impl Port for QueuePort {
    type Buf = Mbuf;

    fn capabilities(&self) -> PortCapabilities {
        let frame = self
            .eth
            .mtu()
            .map_or(ffi::RTE_ETHER_MTU as usize, usize::from)
            + ffi::RTE_ETHER_HDR_LEN as usize;
        let link_rate_bps = self
            .eth
            .link()
            .ok()
            .and_then(|l| l.speed_mbps)
            .map_or(0, |mbps| u64::from(mbps) * 1_000_000);
        PortCapabilities {
            name: format!("dpdk:{}/q{}", self.eth.name(), self.queue),
            max_frame: frame.min(self.tx_pool.buf_capacity()),
            tx_queues: 1,
            rx_queues: 1,
            link_rate_bps,
            reports_tx_completion: false,
        }
    }

    #[inline]
    fn alloc_tx(&mut self) -> Option<Mbuf> {
        let m = self.tx_pool.alloc();
        if m.is_none() {
            self.alloc_failures += 1;
        }
        m
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check(queue)?;
        let n = batch.len();
        if n == 0 {
            return Ok(0);
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        for (slot, m) in ptrs.iter_mut().zip(batch.iter()) {
            *slot = m.as_ptr();
        }
        // SAFETY: the port is started and outlives self (the Arc); self.queue < nb_tx_queues
        // (the builder made one queue pair per QueuePort) and only this QueuePort bursts on it;
        // ptrs[..n] are valid mbufs owned by the batch. The PMD takes the first `sent`.
        let sent = unsafe {
            ffi::rte_eth_tx_burst(self.eth.id().raw(), self.queue, ptrs.as_mut_ptr(), n as u16)
        };
        let sent = usize::from(sent).min(n);
        for m in batch.drain(..sent) {
            let _ = m.into_raw(); // the PMD owns it now
        }
        Ok(sent)
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check(queue)?;
        let before = batch.len();
        let me = usize::from(self.queue);
        if let Some(s) = &self.steering {
            // Frames other cores handed over first: they arrived earlier.
            while batch.remaining_capacity() > 0 {
                let Some(m) = s.rings[me].pop() else { break };
                batch.push(m);
            }
        }
        self.read_queue(self.rx_queue, MAX_BURST, batch);
        if let Some(be) = self.be_queue {
            // Only the room the real-time queue left, and a bounded share of it.
            self.read_queue(be, BE_BURST, batch);
        }
        Ok(batch.len() - before)
    }

    fn stats(&self) -> PortStats {
        // The port's counters are the whole device's; per-queue counters are in the
        // daemon's port report.
        let s = self.eth.stats().unwrap_or_default();
        PortStats {
            tx_packets: s.opackets,
            tx_bytes: s.obytes,
            rx_packets: s.ipackets,
            rx_bytes: s.ibytes,
            rx_dropped: s.imissed + s.rx_nombuf,
            alloc_failures: self.alloc_failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_table_places_moves_and_removes() {
        let s = Steering::new(4, 100);
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
        assert_eq!(peek_channel(f, port.wrapping_add(1)), None);
        let mut tcp = f.to_vec();
        tcp[ETH_LEN + 9] = 6;
        assert_eq!(peek_channel(&tcp, port), None);
        assert_eq!(peek_channel(&f[..30], port), None);
    }
}
