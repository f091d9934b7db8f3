//! The one batch-oriented port trait every backend implements.
//!
//! A port moves packet buffers to and from a link in bursts. The polling core allocates a TX
//! buffer from the port ([`Port::alloc_tx`]), a channel handler writes the packet into it in
//! place (headers included: zero copy), the link scheduler holds it in deadline order, and
//! [`Port::tx_burst`] hands a batch to the link. Receive is the mirror: [`Port::rx_burst`]
//! fills a batch that the RX path parses and then returns with [`Port::free_bulk`] (dropping
//! a buffer also returns it to the port's pool). TX buffers come in bulk too
//! ([`Port::alloc_bulk`]): the core keeps a small stash refilled a burst at a time.
//!
//! Backends: the in-memory link ([`crate::memlink`]), DPDK (root crate, `dpdk` feature),
//! af_packet and AF_XDP (socket backends), and wrappers (pcap writer, fault injector) that
//! wrap another port. The trait is shaped after smoltcp's `phy::Device` and Demikernel's
//! `PhysicalLayer`: the capabilities struct tells the core what the backend can do.

use arrayvec::ArrayVec;

/// Largest number of packets one `tx_burst` or `rx_burst` moves.
///
/// 32 is DPDK's customary burst: large enough to amortise the per-call cost of a NIC doorbell,
/// small enough that one burst of maximum-size packets (32 × 1518 B ≈ 3.9 µs at 100 Gb/s,
/// 39 µs at 10 Gb/s) stays well inside the non-preemptive section admission accounts for.
pub const MAX_BURST: usize = 32;

/// A fixed-capacity batch of packet buffers; lives on the stack, never allocates.
pub type Batch<B> = ArrayVec<B, MAX_BURST>;

/// A packet buffer owned by a port's pool. Dropping it returns it to that pool.
pub trait PacketBuf: Send {
    /// The packet's bytes, `len()` of them.
    fn data(&self) -> &[u8];
    /// The whole writable area, `capacity()` bytes; call [`PacketBuf::set_len`] after writing.
    fn buf_mut(&mut self) -> &mut [u8];
    /// Sets the packet length. Panics if `len > capacity()` (a caller bug, not input).
    fn set_len(&mut self, len: usize);
    /// Bytes of packet currently held.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True when the buffer holds no packet bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Largest packet the buffer holds.
    fn capacity(&self) -> usize;
}

/// What a port can do, read once when the core starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortCapabilities {
    /// Human-readable name ("memlink0", "dpdk:net_pcap0", "af_xdp:veth0/q0").
    pub name: String,
    /// Largest frame the port sends, in bytes, Ethernet header included, FCS excluded.
    pub max_frame: usize,
    /// Number of TX queues (one link scheduler each).
    pub tx_queues: u16,
    /// Number of RX queues.
    pub rx_queues: u16,
    /// Nominal link rate in bits per second (0 when unknown).
    pub link_rate_bps: u64,
    /// The port reports TX completions, so in-flight bytes can be read rather than modelled.
    pub reports_tx_completion: bool,
}

/// Why a burst failed. Zero-sized-ish and `Copy`: it is returned on the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The queue index is not one the port has.
    #[error("queue {0} does not exist on this port")]
    NoSuchQueue(u16),
    /// The link or device is down.
    #[error("link is down")]
    LinkDown,
    /// The backend reported an OS or driver error (errno-style code).
    #[error("backend error {0}")]
    Backend(i32),
}

/// Port counters, cumulative since the port was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets handed to the link.
    pub tx_packets: u64,
    /// Bytes handed to the link.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets the port dropped on receive (ring full, no buffers).
    pub rx_dropped: u64,
    /// TX buffers requested when the pool was empty.
    pub alloc_failures: u64,
}

/// A batch-oriented network port.
pub trait Port: Send {
    /// The backend's packet buffer (an mbuf, a UMEM frame, a pooled heap buffer).
    type Buf: PacketBuf;

    /// What the port can do.
    fn capabilities(&self) -> PortCapabilities;

    /// A TX buffer from the port's pool, or `None` when the pool is empty (counted).
    fn alloc_tx(&mut self) -> Option<Self::Buf>;

    /// Appends up to `n` TX buffers to `batch` (never past its capacity); returns how many.
    /// The core refills its buffer stash with this once per stash, not once per packet;
    /// backends with a bulk allocator (DPDK's `rte_pktmbuf_alloc_bulk`) override it.
    fn alloc_bulk(&mut self, batch: &mut Batch<Self::Buf>, n: usize) -> usize {
        let want = n.min(batch.remaining_capacity());
        let mut got = 0;
        while got < want {
            let Some(b) = self.alloc_tx() else { break };
            batch.push(b);
            got += 1;
        }
        got
    }

    /// Returns every buffer of `batch` to its pool (received packets once parsed). The
    /// default drops them one by one; DPDK overrides it with `rte_pktmbuf_free_bulk`.
    fn free_bulk(&mut self, batch: &mut Batch<Self::Buf>) {
        batch.clear();
    }

    /// Sends packets from the front of `batch` on `queue`; sent buffers are removed from the
    /// batch, the rest stay (in order) for the caller to retry. Returns how many were sent.
    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Self::Buf>) -> Result<usize, PortError>;

    /// Appends up to `batch.remaining_capacity()` received packets; returns how many.
    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Self::Buf>) -> Result<usize, PortError>;

    /// Bytes handed to `queue` that the link has not finished sending, when the port
    /// reports TX completions (`None` otherwise: the link scheduler then models it).
    fn tx_in_flight_bytes(&self, _queue: u16) -> Option<u64> {
        None
    }

    /// Cumulative counters.
    fn stats(&self) -> PortStats;
}
