//! A steady sending loop to profile (`perf record target/release/examples/profile_loop`):
//! N channels (first argument, default 10) of single-packet messages into a null port.

use dataplane::core::{Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::memlink::NullPort;
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{MonotonicClock, TscMeter};
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let secs: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let cfg = CoreConfig {
        max_channels: n as u32,
        link: LinkConfig {
            link_rate_bps: 400_000_000_000,
            in_flight_limit: u64::MAX / 4,
            capacity: 1024,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg, NullPort::new(4096, 1514)).unwrap();
    let mut senders: Vec<_> = (0..n)
        .map(|i| {
            let d = 10_000 + (i as u64 * 7919) % 10_000_000;
            let spec = ChannelSpec {
                mmax: 64,
                imin: 1,
                bmax: 8,
                cpu_deadline: d,
                link_deadline: d,
                end_to_end_deadline: d,
            };
            core.open(ChannelConfig::real_time(i as u32, spec)).unwrap()
        })
        .collect();
    let msg = [0u8; 64];
    let (clock, mut tsc) = (MonotonicClock, TscMeter);
    let start = Instant::now();
    let mut in_core = Duration::ZERO;
    let mut next = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..32 {
            let _ = senders[next].submit(&msg);
            next = (next + 1) % n;
        }
        let t = Instant::now();
        core.poll(&clock, &mut tsc);
        core.poll(&clock, &mut tsc);
        in_core += t.elapsed();
    }
    let pkts = core.stats().tx_packets;
    println!(
        "{n} channels: {pkts} packets, {:.1} ns/packet in the core",
        in_core.as_nanos() as f64 / pkts as f64
    );
}
