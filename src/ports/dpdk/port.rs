//! [`DpdkPort`]: the DPDK backend of the dataplane's [`Port`] trait.
//!
//! TX buffers are mbufs from a TX pool; a handler writes the frame straight into the mbuf
//! (zero copy) and the link scheduler hands batches to `rte_eth_tx_burst`. Mbufs the PMD
//! accepted belong to it (it frees them once sent); the ones it did not take stay at the front
//! of the batch, in order. RX wraps the mbufs `rte_eth_rx_burst` returns; dropping one frees
//! it back to the RX pool.

use dataplane::port::{Batch, Port, PortCapabilities, PortError, PortStats};

use super::burst::{self, TxPool};
use super::error::Result;
use super::ethdev::EthPort;
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// A started DPDK ethdev port with a TX pool, usable as a dataplane [`Port`].
#[derive(Debug)]
pub struct DpdkPort {
    eth: EthPort,
    tx_pool: TxPool,
}

impl DpdkPort {
    /// Wraps a configured port, starting it if it is not started yet. TX buffers come from
    /// `tx_pool` (it may be the port's RX pool).
    pub fn new(mut eth: EthPort, tx_pool: Mempool) -> Result<DpdkPort> {
        eth.start()?;
        Ok(DpdkPort {
            eth,
            tx_pool: TxPool::new(tx_pool),
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
        self.tx_pool.pool()
    }

    /// Takes the port and the TX pool back.
    pub fn into_parts(self) -> (EthPort, Mempool) {
        (self.eth, self.tx_pool.into_pool())
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
        burst::capabilities(
            &self.eth,
            self.tx_pool.pool(),
            format!("dpdk:{}", self.eth.name()),
            self.eth.tx_queues(),
            self.eth.rx_queues(),
        )
    }

    #[inline]
    fn alloc_tx(&mut self) -> Option<Mbuf> {
        self.tx_pool.alloc()
    }

    #[inline]
    fn alloc_bulk(&mut self, batch: &mut Batch<Mbuf>, n: usize) -> usize {
        self.tx_pool.alloc_bulk(batch, n)
    }

    #[inline]
    fn free_bulk(&mut self, batch: &mut Batch<Mbuf>) {
        burst::free_bulk(batch);
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check_queue(queue, self.eth.tx_queues())?;
        // SAFETY: the port is started and owned by self (`&mut`: no other burst runs on it),
        // and queue < nb_tx_queues (checked).
        Ok(unsafe { burst::tx_burst(self.eth.id(), queue, batch) })
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check_queue(queue, self.eth.rx_queues())?;
        let room = batch.remaining_capacity();
        // SAFETY: the port is started and owned by self (`&mut`: no other burst runs on it),
        // and queue < nb_rx_queues (checked).
        Ok(unsafe { burst::rx_burst(self.eth.id(), queue, room, |m| batch.push(m)) })
    }

    fn stats(&self) -> PortStats {
        burst::port_stats(&self.eth, self.tx_pool.alloc_failures())
    }
}
