//! [`DpdkPort`]: the DPDK backend of the dataplane's [`Port`] trait.
//!
//! TX buffers are mbufs from a TX pool; a handler writes the frame straight into the mbuf
//! (zero copy) and the link scheduler hands batches to `rte_eth_tx_burst`. Mbufs the PMD
//! accepted belong to it (it frees them once sent); the ones it did not take stay at the front
//! of the batch, in order. RX wraps the mbufs `rte_eth_rx_burst` returns; dropping one frees
//! it back to the RX pool.

use std::ptr::NonNull;

use dataplane::port::{Batch, Port, PortCapabilities, PortError, PortStats, MAX_BURST};

use super::error::Result;
use super::ethdev::EthPort;
use super::ffi;
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// A started DPDK ethdev port with a TX pool, usable as a dataplane [`Port`].
#[derive(Debug)]
pub struct DpdkPort {
    eth: EthPort,
    tx_pool: Mempool,
    alloc_failures: u64,
}

impl DpdkPort {
    /// Wraps a configured port, starting it if it is not started yet. TX buffers come from
    /// `tx_pool` (it may be the port's RX pool).
    pub fn new(mut eth: EthPort, tx_pool: Mempool) -> Result<DpdkPort> {
        eth.start()?;
        Ok(DpdkPort {
            eth,
            tx_pool,
            alloc_failures: 0,
        })
    }

    /// The underlying port (link state, full counters).
    pub fn eth(&self) -> &EthPort {
        &self.eth
    }

    /// The underlying port, mutably (stop/start, reset counters).
    pub fn eth_mut(&mut self) -> &mut EthPort {
        &mut self.eth
    }

    /// The TX pool.
    pub fn tx_pool(&self) -> &Mempool {
        &self.tx_pool
    }

    /// Takes the port and the TX pool back.
    pub fn into_parts(self) -> (EthPort, Mempool) {
        (self.eth, self.tx_pool)
    }

    fn check_queue(&self, queue: u16, queues: u16) -> Result<(), PortError> {
        if queue >= queues {
            return Err(PortError::NoSuchQueue(queue));
        }
        if !self.eth.is_started() {
            return Err(PortError::LinkDown);
        }
        Ok(())
    }
}

impl Port for DpdkPort {
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
            name: format!("dpdk:{}", self.eth.name()),
            max_frame: frame.min(self.tx_pool.buf_capacity()),
            tx_queues: self.eth.tx_queues(),
            rx_queues: self.eth.rx_queues(),
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

    /// All or nothing underneath (`rte_pktmbuf_alloc_bulk`): when the pool cannot give `n`,
    /// one buffer is tried alone so a nearly empty pool still serves single packets.
    #[inline]
    fn alloc_bulk(&mut self, batch: &mut Batch<Mbuf>, n: usize) -> usize {
        let n = n.min(batch.remaining_capacity());
        if n == 0 {
            return 0;
        }
        if self.tx_pool.alloc_bulk(batch, n) {
            return n;
        }
        match self.alloc_tx() {
            Some(m) => {
                batch.push(m);
                1
            }
            None => 0,
        }
    }

    #[inline]
    fn free_bulk(&mut self, batch: &mut Batch<Mbuf>) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        for (slot, m) in ptrs.iter_mut().zip(batch.drain(..)) {
            *slot = m.into_raw().as_ptr();
        }
        // SAFETY: ptrs[..n] are mbufs this port owned (taken out of the batch with
        // `into_raw`, so nothing else frees them); rte_pktmbuf_free_bulk frees each once.
        unsafe { ffi::rte_pktmbuf_free_bulk(ptrs.as_mut_ptr(), n as u32) };
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check_queue(queue, self.eth.tx_queues())?;
        let n = batch.len();
        if n == 0 {
            return Ok(0);
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        for (slot, m) in ptrs.iter_mut().zip(batch.iter()) {
            *slot = m.as_ptr();
        }
        // SAFETY: the port is started and owned by self, queue < nb_tx_queues (checked), and
        // ptrs[..n] are valid mbufs owned by the batch. The PMD takes ownership of the first
        // `sent` of them and leaves the rest untouched.
        let sent = unsafe {
            ffi::rte_eth_tx_burst(self.eth.id().raw(), queue, ptrs.as_mut_ptr(), n as u16)
        };
        let sent = usize::from(sent).min(n);
        // The PMD owns the sent mbufs now: remove them without freeing; the unsent ones move
        // to the front, in order.
        for m in batch.drain(..sent) {
            let _ = m.into_raw();
        }
        Ok(sent)
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check_queue(queue, self.eth.rx_queues())?;
        let room = batch.remaining_capacity();
        if room == 0 {
            return Ok(0);
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        // SAFETY: the port is started and owned by self, queue < nb_rx_queues (checked), and
        // ptrs has room for `room` <= MAX_BURST pointers.
        let got = unsafe {
            ffi::rte_eth_rx_burst(self.eth.id().raw(), queue, ptrs.as_mut_ptr(), room as u16)
        };
        let got = usize::from(got).min(room);
        for &p in &ptrs[..got] {
            // SAFETY: each returned pointer is a non-NULL mbuf the PMD handed over to us;
            // ports are configured without scatter RX, so it is a single segment.
            batch.push(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) });
        }
        Ok(got)
    }

    fn stats(&self) -> PortStats {
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
