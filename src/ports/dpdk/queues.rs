//! One ethdev port shared by several polling cores: [`QueuePort`], the [`Port`] of one TX/RX
//! queue pair, steered between cores by the shared [`Steering`].
//!
//! The daemon opens one [`EthPort`] with N TX and N RX queues (N = `[[cores]]` entries) and
//! gives core `i` the [`QueuePort`] of queue pair `i`: its link scheduler's bursts go to TX
//! queue `i`, its receive path reads RX queue `i`. DPDK allows bursts on different queues of
//! one port from different threads at once, so the cores share nothing on the fast path but
//! the port id and the RX pool (multi-producer/multi-consumer). Each core has its own TX pool.
//!
//! Receive steering. Where the NIC cannot be told where a channel's frames go (vdevs, NICs
//! without `rte_flow`), frames land on whatever RX queue the device picks (queue 0, or a flow
//! hash), and the core that reads them hands each rtchan frame whose channel lives elsewhere
//! to its owner through the shared [`Steering`] (see [`crate::ports::steering`]).
//!
//! Where the device takes `rte_flow` rules ([`super::flow`]), the NIC does the steering: core
//! `i` reads RX queue `i + 1` ([`QueuePort::with_rx_queues`]), and the best-effort queue 0
//! is read by the last core only with the room its own queue left in the burst, at most
//! [`BE_BURST`] frames a burst. The hand-off stays on as the safety net (frames that arrive
//! while a rule is being replaced, best-effort channels' frames, channels whose rule the
//! device refused).

use std::sync::Arc;

use dataplane::port::{Batch, Port, PortCapabilities, PortError, PortStats, MAX_BURST};

use crate::ports::steering::Steering;

use super::burst::{self, TxPool};
use super::ethdev::EthPort;
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// Frames the best-effort queue gives the core that reads it, at most, per burst: the cost it
/// adds to that core's RX step stays small and bounded, whatever the best-effort load.
pub const BE_BURST: usize = 8;

/// The [`Port`] of queue pair `queue` of a shared [`EthPort`]: TX queue `queue` (from this
/// core's own TX pool) and RX queue `queue`. The core sees one TX and one RX queue, index 0.
pub struct QueuePort {
    eth: Arc<EthPort>,
    queue: u16,
    rx_queue: u16,
    be_queue: Option<u16>,
    tx_pool: TxPool,
    steering: Option<Arc<Steering<Mbuf>>>,
    udp_port: u16,
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
        steering: Option<Arc<Steering<Mbuf>>>,
        udp_port: u16,
    ) -> Self {
        Self {
            eth,
            queue,
            rx_queue: queue,
            be_queue: None,
            tx_pool: TxPool::new(tx_pool),
            steering,
            udp_port,
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
        // SAFETY: the port is started and outlives self; q < nb_rx_queues (the daemon set up
        // this core's queue and the best-effort queue) and only this QueuePort reads it.
        unsafe {
            burst::rx_burst(self.eth.id(), q, room, |m| match &self.steering {
                Some(s) => {
                    if let Some(m) = s.route(me, m, self.udp_port) {
                        batch.push(m);
                    } // else handed to its owner
                }
                None => batch.push(m),
            })
        };
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
        burst::capabilities(
            &self.eth,
            self.tx_pool.pool(),
            format!("dpdk:{}/q{}", self.eth.name(), self.queue),
            1,
            1,
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
        self.check(queue)?;
        // SAFETY: the port is started and outlives self (the Arc); self.queue < nb_tx_queues
        // (the builder made one queue pair per QueuePort) and only this QueuePort bursts on it.
        Ok(unsafe { burst::tx_burst(self.eth.id(), self.queue, batch) })
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.check(queue)?;
        let before = batch.len();
        let me = usize::from(self.queue);
        if let Some(s) = &self.steering {
            // Frames other cores handed over first: they arrived earlier.
            s.take_handed(me, batch);
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
        burst::port_stats(&self.eth, self.tx_pool.alloc_failures())
    }
}
