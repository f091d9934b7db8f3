//! An in-memory link between two ports, with the timing of a real one.
//!
//! [`MemLink::pair`] returns two [`MemPort`]s joined by two one-way wires. A wire models a NIC:
//! a transmit FIFO of `fifo_packets` descriptors that drains at `rate_bps` (each frame arrives
//! at the peer when its last bit would have: serialisation of the frames before it plus its
//! own, preamble, FCS and gap included). So a best-effort flood really saturates it, and the
//! link scheduler's in-flight limit has something to keep short. With `rate_bps == 0` frames
//! arrive at once. Buffers come from a preallocated pool shared by both ends and return to it
//! when dropped, so the loop allocates nothing after start.

use crate::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats};
use crate::time::{ByteTime, Clock, Nanos};
use crate::wire::wire_bytes;
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A pool of equal-sized heap buffers.
#[derive(Debug)]
pub struct BufPool {
    free: ArrayQueue<Box<[u8]>>,
    size: usize,
}

impl BufPool {
    /// `count` buffers of `size` bytes, allocated now.
    pub fn new(count: usize, size: usize) -> Arc<Self> {
        let free = ArrayQueue::new(count.max(1));
        for _ in 0..count {
            let _ = free.push(crate::mem::prefaulted_bytes(size));
        }
        Arc::new(Self { free, size })
    }
    /// A buffer, or `None` when all are in use.
    #[inline]
    pub fn alloc(self: &Arc<Self>) -> Option<HeapBuf> {
        self.free.pop().map(|b| HeapBuf {
            data: Some(b),
            len: 0,
            pool: self.clone(),
        })
    }
    /// Buffers not in use.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

/// A pooled heap buffer; dropping it returns it to its pool.
#[derive(Debug)]
pub struct HeapBuf {
    data: Option<Box<[u8]>>,
    len: usize,
    pool: Arc<BufPool>,
}

impl PacketBuf for HeapBuf {
    #[inline]
    fn data(&self) -> &[u8] {
        &self.data.as_ref().expect("live buffer")[..self.len]
    }
    #[inline]
    fn buf_mut(&mut self) -> &mut [u8] {
        self.data.as_mut().expect("live buffer")
    }
    #[inline]
    fn set_len(&mut self, len: usize) {
        assert!(len <= self.pool.size, "length {len} beyond buffer");
        self.len = len;
    }
    #[inline]
    fn capacity(&self) -> usize {
        self.pool.size
    }
}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        if let Some(b) = self.data.take() {
            // Cannot fail: the pool's capacity is the number of buffers it made.
            let _ = self.pool.free.push(b);
        }
    }
}

/// Configuration of an in-memory link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemLinkConfig {
    /// Link rate in bits per second (0: infinitely fast).
    pub rate_bps: u64,
    /// Transmit FIFO of each end, packets (a NIC's TX ring).
    pub fifo_packets: usize,
    /// Buffers in the shared pool.
    pub pool_buffers: usize,
    /// Largest frame, bytes (FCS excluded).
    pub max_frame: usize,
    /// TX queues each end reports (all share the one wire, like queues of one NIC).
    pub tx_queues: u16,
}

impl Default for MemLinkConfig {
    fn default() -> Self {
        Self {
            rate_bps: 10_000_000_000,
            fifo_packets: 512,
            pool_buffers: 16_384,
            max_frame: 1514,
            tx_queues: 1,
        }
    }
}

#[derive(Debug)]
struct Wire {
    fifo: ArrayQueue<(Nanos, HeapBuf)>,
    /// When the last queued frame finishes arriving (written by the sending end only).
    busy_until: AtomicU64,
}

/// One end of an in-memory link.
pub struct MemPort {
    name: String,
    cfg: MemLinkConfig,
    pool: Arc<BufPool>,
    tx: Arc<Wire>,
    rx: Arc<Wire>,
    held: Option<(Nanos, HeapBuf)>,
    byte_time: ByteTime,
    clock: Arc<dyn Clock>,
    stats: PortStats,
}

impl std::fmt::Debug for MemPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPort")
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Builds in-memory links.
#[derive(Debug)]
pub struct MemLink;

impl MemLink {
    /// Two ports joined back to back, timed by `clock`.
    pub fn pair(cfg: MemLinkConfig, clock: Arc<dyn Clock>) -> (MemPort, MemPort) {
        let pool = BufPool::new(cfg.pool_buffers, cfg.max_frame);
        let a_to_b = Arc::new(Wire {
            fifo: ArrayQueue::new(cfg.fifo_packets.max(1)),
            busy_until: AtomicU64::new(0),
        });
        let b_to_a = Arc::new(Wire {
            fifo: ArrayQueue::new(cfg.fifo_packets.max(1)),
            busy_until: AtomicU64::new(0),
        });
        let end = |name: &str, tx: &Arc<Wire>, rx: &Arc<Wire>| MemPort {
            name: name.to_string(),
            cfg,
            pool: pool.clone(),
            tx: tx.clone(),
            rx: rx.clone(),
            held: None,
            byte_time: ByteTime::new(cfg.rate_bps),
            clock: clock.clone(),
            stats: PortStats::default(),
        };
        (
            end("memlink0.a", &a_to_b, &b_to_a),
            end("memlink0.b", &b_to_a, &a_to_b),
        )
    }
}

impl MemPort {
    /// The buffer pool (to watch for leaks in tests).
    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }
}

impl Port for MemPort {
    type Buf = HeapBuf;

    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            name: self.name.clone(),
            max_frame: self.cfg.max_frame,
            tx_queues: self.cfg.tx_queues,
            rx_queues: 1,
            link_rate_bps: self.cfg.rate_bps,
            reports_tx_completion: true,
        }
    }

    #[inline]
    fn alloc_tx(&mut self) -> Option<HeapBuf> {
        let b = self.pool.alloc();
        if b.is_none() {
            self.stats.alloc_failures += 1;
        }
        b
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        if queue >= self.cfg.tx_queues {
            return Err(PortError::NoSuchQueue(queue));
        }
        let now = self.clock.now();
        let mut busy = self.tx.busy_until.load(Ordering::Relaxed);
        let room = self.tx.fifo.capacity() - self.tx.fifo.len();
        let sent = batch.len().min(room);
        for buf in batch.drain(..sent) {
            let wire = wire_bytes(buf.len());
            busy = busy.max(now) + self.byte_time.ns(wire);
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += buf.len() as u64;
            // Cannot fail: only this end pushes, and it checked the room above.
            let _ = self.tx.fifo.push((busy, buf));
        }
        self.tx.busy_until.store(busy, Ordering::Relaxed);
        Ok(sent)
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        if queue != 0 {
            return Err(PortError::NoSuchQueue(queue));
        }
        let now = self.clock.now();
        let mut n = 0;
        while !batch.is_full() {
            let next = self.held.take().or_else(|| self.rx.fifo.pop());
            match next {
                Some((arrival, buf)) if arrival <= now => {
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += buf.len() as u64;
                    batch.push(buf);
                    n += 1;
                }
                Some(pending) => {
                    self.held = Some(pending);
                    break;
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn tx_in_flight_bytes(&self, _queue: u16) -> Option<u64> {
        let backlog = self
            .tx
            .busy_until
            .load(Ordering::Relaxed)
            .saturating_sub(self.clock.now());
        if self.cfg.rate_bps == 0 {
            return Some(0);
        }
        Some(self.byte_time.bytes(backlog))
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// A port that accepts every packet and discards it: for benchmarks of everything before TX.
#[derive(Debug)]
pub struct NullPort {
    pool: Arc<BufPool>,
    max_frame: usize,
    stats: PortStats,
}

impl NullPort {
    /// A null port with `buffers` buffers of `max_frame` bytes.
    pub fn new(buffers: usize, max_frame: usize) -> Self {
        Self {
            pool: BufPool::new(buffers, max_frame),
            max_frame,
            stats: PortStats::default(),
        }
    }
}

impl Port for NullPort {
    type Buf = HeapBuf;
    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            name: "null".into(),
            max_frame: self.max_frame,
            tx_queues: 1,
            rx_queues: 1,
            link_rate_bps: 0,
            reports_tx_completion: true,
        }
    }
    #[inline]
    fn alloc_tx(&mut self) -> Option<HeapBuf> {
        let b = self.pool.alloc();
        if b.is_none() {
            self.stats.alloc_failures += 1;
        }
        b
    }
    #[inline]
    fn tx_burst(&mut self, _queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        let n = batch.len();
        self.stats.tx_packets += n as u64;
        batch.clear();
        Ok(n)
    }
    fn rx_burst(&mut self, _queue: u16, _batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        Ok(0)
    }
    fn tx_in_flight_bytes(&self, _queue: u16) -> Option<u64> {
        Some(0)
    }
    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    #[test]
    fn frames_arrive_after_their_serialisation_time() {
        let clock = ManualClock::new(0);
        let (mut a, mut b) = MemLink::pair(
            MemLinkConfig {
                rate_bps: 1_000_000_000,
                fifo_packets: 4,
                pool_buffers: 16,
                ..MemLinkConfig::default()
            },
            Arc::new(clock.clone()),
        );
        let mut batch = Batch::new();
        for _ in 0..6 {
            let mut p = a.alloc_tx().unwrap();
            p.set_len(100); // 124 bytes on the wire: 992 ns
            batch.push(p);
        }
        assert_eq!(a.tx_burst(0, &mut batch).unwrap(), 4, "FIFO holds 4");
        assert_eq!(batch.len(), 2);
        assert_eq!(a.tx_in_flight_bytes(0), Some(4 * 124));
        let mut rx = Batch::new();
        assert_eq!(b.rx_burst(0, &mut rx).unwrap(), 0);
        clock.set(992);
        assert_eq!(b.rx_burst(0, &mut rx).unwrap(), 1);
        clock.set(4 * 992);
        assert_eq!(b.rx_burst(0, &mut rx).unwrap(), 3);
        drop(rx);
        drop(batch);
        assert_eq!(a.pool().available(), 16);
    }
}
