//! A steady sending loop to profile, shaped like `dpdk-bench`'s *full path*: N greedy channels
//! (first argument, default 1,000) of single-packet 64-byte messages, every ring refilled to
//! Bmax between polls, into a null port whose in-flight bytes the link scheduler models (as
//! with DPDK, which reports no TX completions).
//!
//! - `profile_loop [channels] [secs]`: runs for `secs` (default 5) and prints ns/packet
//!   (`perf record target/release/examples/profile_loop`).
//! - `profile_loop [channels] 0 [polls]`: exactly `polls` polls after a fixed warm-up, for
//!   instruction counts. Count only `Core::poll` and take the difference of two poll counts
//!   per packet, so set-up and refills cancel:
//!   `valgrind --tool=callgrind --toggle-collect='*Core*poll*' profile_loop 1000 0 2000`.

use dataplane::channel::Sender;
use dataplane::core::{Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::memlink::{HeapBuf, NullPort};
use dataplane::port::{Batch, Port, PortCapabilities, PortError, PortStats};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{MonotonicClock, TscMeter};
use std::time::{Duration, Instant};

/// Messages each channel's ring holds (Bmax), as in `dpdk-bench`.
const BMAX: u32 = 8;
/// Refill every this many polls, as in `dpdk-bench` (a poll sends at most 64 packets).
const REFILL_EVERY: u64 = 4;
/// Port buffers: a mempool's per-core cache reuses a few hundred recently freed mbufs, so
/// frames are written into warm memory; a pool cycling through thousands would measure cache
/// misses on the buffers instead of the core's path.
const POOL: usize = 512;
/// Polls before a fixed-count run starts (every channel touched, histograms allocated).
const WARMUP_POLLS: u64 = 200;

/// A null port that reports no TX completions, so the link scheduler models in-flight bytes
/// (as with `DpdkPort`).
struct Modelled(NullPort);

impl Port for Modelled {
    type Buf = HeapBuf;
    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            reports_tx_completion: false,
            ..self.0.capabilities()
        }
    }
    #[inline]
    fn alloc_tx(&mut self) -> Option<HeapBuf> {
        self.0.alloc_tx()
    }
    #[inline]
    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        self.0.tx_burst(queue, batch)
    }
    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        self.0.rx_burst(queue, batch)
    }
    fn stats(&self) -> PortStats {
        self.0.stats()
    }
}

fn refill(senders: &mut [Sender], msg: &[u8]) {
    for s in senders.iter_mut() {
        while s.shared().queued() < BMAX as usize {
            if s.submit(msg).is_err() {
                break;
            }
        }
    }
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i).and_then(|a| a.parse::<u64>().ok());
    let n = arg(1).unwrap_or(1000) as usize;
    let secs = arg(2).unwrap_or(5);
    let polls = arg(3).unwrap_or(0);
    let cfg = CoreConfig {
        max_channels: n as u32,
        link: LinkConfig {
            link_rate_bps: 100_000_000_000,
            in_flight_limit: 64 * 1024,
            capacity: 4096,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg, Modelled(NullPort::new(POOL, 1514))).unwrap();
    let mut senders: Vec<_> = (0..n)
        .map(|i| {
            let spec = ChannelSpec {
                mmax: 64,
                imin: 1_000,
                bmax: BMAX,
                cpu_deadline: 100_000,
                link_deadline: 200_000,
                end_to_end_deadline: 1_000_000,
            };
            core.open(ChannelConfig::real_time(i as u32, spec)).unwrap()
        })
        .collect();
    let msg = [0u8; 64];
    let (clock, mut tsc) = (MonotonicClock, TscMeter);
    let mut count = 0u64;
    let mut step = |core: &mut Core<Modelled>, senders: &mut [Sender]| {
        if count % REFILL_EVERY == 0 {
            refill(senders, &msg);
        }
        count += 1;
        core.poll(&clock, &mut tsc);
    };
    if secs == 0 {
        for _ in 0..WARMUP_POLLS + polls {
            step(&mut core, &mut senders);
        }
        println!(
            "{n} channels: {} polls, {} packets",
            polls,
            core.stats().tx_packets
        );
        return;
    }
    let start = Instant::now();
    let mut in_core = Duration::ZERO;
    let p0 = core.stats().tx_packets;
    while start.elapsed() < Duration::from_secs(secs) {
        if count % REFILL_EVERY == 0 {
            refill(&mut senders, &msg);
        }
        count += 1;
        let t = Instant::now();
        core.poll(&clock, &mut tsc);
        in_core += t.elapsed();
    }
    let pkts = core.stats().tx_packets - p0;
    println!(
        "{n} channels: {pkts} packets, {:.1} ns/packet in the core",
        in_core.as_nanos() as f64 / pkts as f64
    );
}
