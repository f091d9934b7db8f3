//! A fault-injecting port wrapper for tests: drops, corrupts or delays packets of another port.
//!
//! [`FaultInjector`] wraps any [`Port`] and applies, independently per packet and per
//! direction, a drop probability, a corruption probability (one byte flipped at a random
//! offset past the Ethernet header, so the receive path's checksums catch it) and a fixed extra
//! delay on receive (packets are held back in a bounded queue until `now + delay`). Decisions
//! come from a seeded SplitMix64 generator, so a failing test replays exactly.

use crate::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats, MAX_BURST};
use crate::time::{Clock, Nanos};
use std::collections::VecDeque;
use std::sync::Arc;

/// What to do to packets in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability a packet is dropped, 0–1.
    pub drop: f64,
    /// Probability a packet has one byte flipped, 0–1.
    pub corrupt: f64,
}

/// The injector's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Faults on transmit (before the inner port sends).
    pub tx: Faults,
    /// Faults on receive (after the inner port received).
    pub rx: Faults,
    /// Extra delay on receive, ns (0: none).
    pub rx_delay: Nanos,
    /// Seed of the generator.
    pub seed: u64,
}

/// Counts of what the injector did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
    /// Packets corrupted on transmit.
    pub tx_corrupted: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets corrupted on receive.
    pub rx_corrupted: u64,
    /// Packets delayed on receive.
    pub rx_delayed: u64,
}

/// Most packets held back for delay; while it is full the wrapper stops reading the inner port
/// (the inner port's own ring then fills and counts its drops), so memory stays bounded.
pub const MAX_DELAYED: usize = 4096;

/// A port wrapper that injects faults.
pub struct FaultInjector<P: Port> {
    inner: P,
    cfg: FaultConfig,
    rng: u64,
    clock: Arc<dyn Clock>,
    delayed: VecDeque<(Nanos, P::Buf)>,
    stats: FaultStats,
}

impl<P: Port> std::fmt::Debug for FaultInjector<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjector")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<P: Port> FaultInjector<P> {
    /// Wraps `inner`; `clock` times the receive delay.
    pub fn new(inner: P, cfg: FaultConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            rng: cfg.seed ^ 0x9E37_79B9_7F4A_7C15,
            cfg,
            clock,
            delayed: VecDeque::with_capacity(MAX_DELAYED),
            stats: FaultStats::default(),
        }
    }

    /// What the injector did so far.
    pub fn fault_stats(&self) -> FaultStats {
        self.stats
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn corrupt(&mut self, buf: &mut P::Buf) {
        let len = buf.len();
        if len > 14 {
            let at = 14 + (self.next_u64() as usize % (len - 14));
            buf.buf_mut()[at] ^= 0xff;
        }
    }
}

impl<P: Port> Port for FaultInjector<P> {
    type Buf = P::Buf;

    fn capabilities(&self) -> PortCapabilities {
        let mut c = self.inner.capabilities();
        c.name = format!("fault:{}", c.name);
        c
    }

    fn alloc_tx(&mut self) -> Option<Self::Buf> {
        self.inner.alloc_tx()
    }

    fn alloc_bulk(&mut self, batch: &mut Batch<Self::Buf>, n: usize) -> usize {
        self.inner.alloc_bulk(batch, n)
    }

    fn free_bulk(&mut self, batch: &mut Batch<Self::Buf>) {
        self.inner.free_bulk(batch)
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Self::Buf>) -> Result<usize, PortError> {
        // Decide the fate of each packet once; dropped ones count as sent (the wire lost them).
        let mut keep: Batch<Self::Buf> = Batch::new();
        let mut dropped = 0;
        for mut b in batch.drain(..) {
            if self.chance(self.cfg.tx.drop) {
                self.stats.tx_dropped += 1;
                dropped += 1;
                continue;
            }
            if self.chance(self.cfg.tx.corrupt) {
                self.stats.tx_corrupted += 1;
                self.corrupt(&mut b);
            }
            keep.push(b);
        }
        let sent = self.inner.tx_burst(queue, &mut keep)?;
        // Unsent packets go back to the caller, in order.
        for b in keep.drain(..) {
            batch.push(b);
        }
        Ok(sent + dropped)
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Self::Buf>) -> Result<usize, PortError> {
        let now = self.clock.now();
        let before = batch.len();
        // Everything received waits in `delayed` until due (now, without a delay), which also
        // holds what does not fit the caller's batch this time.
        if self.delayed.len() + MAX_BURST <= MAX_DELAYED {
            let mut fresh: Batch<Self::Buf> = Batch::new();
            self.inner.rx_burst(queue, &mut fresh)?;
            for mut b in fresh.drain(..) {
                if self.chance(self.cfg.rx.drop) {
                    self.stats.rx_dropped += 1;
                    continue;
                }
                if self.chance(self.cfg.rx.corrupt) {
                    self.stats.rx_corrupted += 1;
                    self.corrupt(&mut b);
                }
                if self.cfg.rx_delay > 0 {
                    self.stats.rx_delayed += 1;
                }
                self.delayed.push_back((now + self.cfg.rx_delay, b));
            }
        }
        while !batch.is_full() {
            match self.delayed.front() {
                Some((due, _)) if *due <= now => {
                    let (_, b) = self.delayed.pop_front().expect("front exists");
                    batch.push(b);
                }
                _ => break,
            }
        }
        Ok(batch.len() - before)
    }

    fn tx_in_flight_bytes(&self, queue: u16) -> Option<u64> {
        self.inner.tx_in_flight_bytes(queue)
    }

    fn stats(&self) -> PortStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memlink::{MemLink, MemLinkConfig};
    use crate::time::ManualClock;

    fn pair(
        cfg: FaultConfig,
    ) -> (
        FaultInjector<crate::memlink::MemPort>,
        crate::memlink::MemPort,
        ManualClock,
    ) {
        let clock = ManualClock::new(0);
        let (a, b) = MemLink::pair(
            MemLinkConfig {
                rate_bps: 0,
                ..MemLinkConfig::default()
            },
            Arc::new(clock.clone()),
        );
        (
            FaultInjector::new(a, cfg, Arc::new(clock.clone())),
            b,
            clock,
        )
    }

    fn send(port: &mut impl Port, n: usize) {
        for i in 0..n {
            let mut batch = Batch::new();
            let mut p = port.alloc_tx().unwrap();
            p.buf_mut()[..64].fill(i as u8);
            p.set_len(64);
            batch.push(p);
            port.tx_burst(0, &mut batch).unwrap();
        }
    }

    #[test]
    fn drops_about_the_configured_share_and_counts_them() {
        let (mut a, mut b, _) = pair(FaultConfig {
            tx: Faults {
                drop: 0.25,
                corrupt: 0.0,
            },
            seed: 7,
            ..FaultConfig::default()
        });
        let mut got = 0;
        let mut batch = Batch::new();
        for _ in 0..4000 {
            send(&mut a, 1);
            while b.rx_burst(0, &mut batch).unwrap() > 0 {
                got += batch.len();
                batch.clear();
            }
        }
        let dropped = a.fault_stats().tx_dropped as usize;
        assert_eq!(
            got + dropped,
            4000,
            "every packet delivered or counted dropped"
        );
        assert!(
            (800..1200).contains(&dropped),
            "dropped {dropped} of 4000 at 25%"
        );
    }

    #[test]
    fn corruption_changes_one_byte_past_ethernet() {
        let (mut a, mut b, _) = pair(FaultConfig {
            tx: Faults {
                drop: 0.0,
                corrupt: 1.0,
            },
            seed: 1,
            ..FaultConfig::default()
        });
        send(&mut a, 1);
        let mut batch = Batch::new();
        b.rx_burst(0, &mut batch).unwrap();
        let diff: Vec<_> = batch[0]
            .data()
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(diff.len(), 1);
        assert!(diff[0] >= 14);
    }

    #[test]
    fn receive_delay_holds_packets_until_due() {
        let clock = ManualClock::new(0);
        let (a, b) = MemLink::pair(
            MemLinkConfig {
                rate_bps: 0,
                ..MemLinkConfig::default()
            },
            Arc::new(clock.clone()),
        );
        let mut a = a;
        let mut rx = FaultInjector::new(
            b,
            FaultConfig {
                rx_delay: 1_000,
                ..FaultConfig::default()
            },
            Arc::new(clock.clone()),
        );
        send(&mut a, 3);
        let mut batch = Batch::new();
        assert_eq!(rx.rx_burst(0, &mut batch).unwrap(), 0);
        clock.set(999);
        assert_eq!(rx.rx_burst(0, &mut batch).unwrap(), 0);
        clock.set(1_000);
        assert_eq!(rx.rx_burst(0, &mut batch).unwrap(), 3);
        assert_eq!(rx.fault_stats().rx_delayed, 3);
    }
}
