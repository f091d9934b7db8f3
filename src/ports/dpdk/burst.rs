//! The fast path both DPDK [`Port`](dataplane::port::Port)s share ([`DpdkPort`](super::DpdkPort),
//! a whole port; [`QueuePort`](super::QueuePort), one queue pair of a shared one): a TX pool
//! that allocates a burst at a time, bulk free, one `rte_eth_tx_burst`/`rte_eth_rx_burst` per
//! call, and the capabilities and counters read from the [`EthPort`].
//!
//! Bursts are `unsafe fn`s because DPDK's per-queue functions are not thread-safe on one
//! queue: the caller owns the queue (one port, or one core's queue pair) and says so.

use std::ptr::NonNull;

use dataplane::port::{Batch, PortCapabilities, PortStats, MAX_BURST};

use super::ethdev::{EthPort, PortId};
use super::ffi;
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// A port's TX pool and the count of allocations it could not serve.
#[derive(Debug)]
pub(super) struct TxPool {
    pool: Mempool,
    alloc_failures: u64,
}

impl TxPool {
    pub(super) fn new(pool: Mempool) -> Self {
        Self {
            pool,
            alloc_failures: 0,
        }
    }

    pub(super) fn pool(&self) -> &Mempool {
        &self.pool
    }

    pub(super) fn into_pool(self) -> Mempool {
        self.pool
    }

    pub(super) fn alloc_failures(&self) -> u64 {
        self.alloc_failures
    }

    /// One mbuf; a failure is counted.
    #[inline]
    pub(super) fn alloc(&mut self) -> Option<Mbuf> {
        let m = self.pool.alloc();
        if m.is_none() {
            self.alloc_failures += 1;
        }
        m
    }

    /// Up to `n` mbufs appended to `batch`: all at once (`rte_pktmbuf_alloc_bulk`, all or
    /// nothing underneath), or, when the pool cannot give `n`, one alone so a nearly empty pool
    /// still serves single packets. Returns how many were appended.
    #[inline]
    pub(super) fn alloc_bulk(&mut self, batch: &mut Batch<Mbuf>, n: usize) -> usize {
        let n = n.min(batch.remaining_capacity());
        if n == 0 {
            return 0;
        }
        if self.pool.alloc_bulk(batch, n) {
            return n;
        }
        match self.alloc() {
            Some(m) => {
                batch.push(m);
                1
            }
            None => 0,
        }
    }
}

/// Frees every mbuf of `batch` with one `rte_pktmbuf_free_bulk`.
#[inline]
pub(super) fn free_bulk(batch: &mut Batch<Mbuf>) {
    let n = batch.len();
    if n == 0 {
        return;
    }
    let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
    for (slot, m) in ptrs.iter_mut().zip(batch.drain(..)) {
        *slot = m.into_raw().as_ptr();
    }
    // SAFETY: ptrs[..n] are mbufs the batch owned (taken out with `into_raw`, so nothing else
    // frees them); rte_pktmbuf_free_bulk frees each once.
    unsafe { ffi::rte_pktmbuf_free_bulk(ptrs.as_mut_ptr(), n as u32) };
}

/// Hands `batch` to TX queue `queue` of `port`. The PMD takes the first `sent` mbufs (they
/// leave the batch without being freed); the rest stay at the front, in order. Returns `sent`.
///
/// # Safety
/// `port` is started, `queue` < its TX queue count, and no other thread bursts on that queue
/// during the call.
#[inline]
pub(super) unsafe fn tx_burst(port: PortId, queue: u16, batch: &mut Batch<Mbuf>) -> usize {
    let n = batch.len();
    if n == 0 {
        return 0;
    }
    let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
    for (slot, m) in ptrs.iter_mut().zip(batch.iter()) {
        *slot = m.as_ptr();
    }
    // SAFETY: the caller's contract covers the port and the queue; ptrs[..n] are valid mbufs
    // owned by the batch, and the PMD leaves the ones it does not take untouched.
    let sent = unsafe { ffi::rte_eth_tx_burst(port.raw(), queue, ptrs.as_mut_ptr(), n as u16) };
    let sent = usize::from(sent).min(n);
    for m in batch.drain(..sent) {
        let _ = m.into_raw(); // the PMD owns it now
    }
    sent
}

/// Reads up to `room` (at most [`MAX_BURST`]) frames from RX queue `queue` of `port` and
/// gives each to `each`, in arrival order. Returns how many were read.
///
/// # Safety
/// `port` is started, `queue` < its RX queue count, and no other thread bursts on that queue
/// during the call.
#[inline]
pub(super) unsafe fn rx_burst(
    port: PortId,
    queue: u16,
    room: usize,
    mut each: impl FnMut(Mbuf),
) -> usize {
    let room = room.min(MAX_BURST);
    if room == 0 {
        return 0;
    }
    let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
    // SAFETY: the caller's contract covers the port and the queue; ptrs has room for `room`
    // pointers.
    let got = unsafe { ffi::rte_eth_rx_burst(port.raw(), queue, ptrs.as_mut_ptr(), room as u16) };
    let got = usize::from(got).min(room);
    for &p in &ptrs[..got] {
        // SAFETY: each returned pointer is a non-NULL mbuf the PMD handed over to us; ports
        // are configured without scatter RX, so it is a single segment.
        each(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) });
    }
    got
}

/// What a port over `eth` with buffers from `tx_pool` can do: frames up to the MTU plus the
/// Ethernet header (and what a buffer holds), the link's rate when it reports one.
pub(super) fn capabilities(
    eth: &EthPort,
    tx_pool: &Mempool,
    name: String,
    tx_queues: u16,
    rx_queues: u16,
) -> PortCapabilities {
    let frame = eth.mtu().map_or(ffi::RTE_ETHER_MTU as usize, usize::from)
        + ffi::RTE_ETHER_HDR_LEN as usize;
    let link_rate_bps = eth
        .link()
        .ok()
        .and_then(|l| l.speed_mbps)
        .map_or(0, |mbps| u64::from(mbps) * 1_000_000);
    PortCapabilities {
        name,
        max_frame: frame.min(tx_pool.buf_capacity()),
        tx_queues,
        rx_queues,
        link_rate_bps,
        reports_tx_completion: false,
    }
}

/// The device's counters (the whole port's, whichever queue asks) and a port's own
/// allocation failures.
pub(super) fn port_stats(eth: &EthPort, alloc_failures: u64) -> PortStats {
    let s = eth.stats().unwrap_or_default();
    PortStats {
        tx_packets: s.opackets,
        tx_bytes: s.obytes,
        rx_packets: s.ipackets,
        rx_bytes: s.ibytes,
        rx_dropped: s.imissed + s.rx_nombuf,
        alloc_failures,
    }
}
