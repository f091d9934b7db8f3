//! How the core's `tx_burst` calls close (`CoreStats::bursts`), in virtual time over the
//! in-memory link: full bursts when a batch is written within the TX window, short ones when
//! the window expires first, when the port's in-flight limit stops the release, and at the end
//! of an iteration with nothing left to run. Every burst is counted under exactly one reason.

use dataplane::channel::Sender;
use dataplane::core::{BurstCloses, Core, CoreConfig, CoreStats};
use dataplane::link::LinkConfig;
use dataplane::memlink::{MemLink, MemLinkConfig, MemPort};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{Clock, ManualClock, Nanos, VirtualCpu};
use std::sync::Arc;

const CHANNELS: u32 = 64;
const PER_CHANNEL: usize = 8;

/// A core sending on a link of `rate_bps` with `in_flight_limit`, every packet costing
/// `per_packet` ns of virtual CPU, `CHANNELS × PER_CHANNEL` one-packet messages queued; polled
/// until everything is sent. Returns the core's counters.
fn run(rate_bps: u64, in_flight_limit: u64, per_packet: Nanos) -> CoreStats {
    let clock = ManualClock::new(1_000_000);
    let (a, _b) = MemLink::pair(
        MemLinkConfig {
            rate_bps,
            fifo_packets: 4096,
            pool_buffers: 4096,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let cfg = CoreConfig {
        link: LinkConfig {
            link_rate_bps: rate_bps,
            in_flight_limit,
            capacity: 4096,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let mut core: Core<MemPort> = Core::new(cfg, a).unwrap();
    let spec = ChannelSpec {
        mmax: 64,
        imin: 1_000,
        bmax: PER_CHANNEL as u32,
        cpu_deadline: 1_000_000,
        link_deadline: 2_000_000,
        end_to_end_deadline: 3_000_000,
    };
    let mut senders: Vec<Sender> = (0..CHANNELS)
        .map(|id| core.open(ChannelConfig::real_time(id, spec)).unwrap())
        .collect();
    for s in &mut senders {
        for _ in 0..PER_CHANNEL {
            s.submit_at(&[7u8; 64], clock.now()).unwrap();
        }
    }
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet,
    };
    let total = u64::from(CHANNELS) * PER_CHANNEL as u64;
    for _ in 0..100_000 {
        if core.stats().tx_packets >= total {
            break;
        }
        core.poll(&clock, &mut cpu);
        clock.advance(100); // the loop's own time between polls
    }
    let stats = core.stats();
    assert_eq!(stats.tx_packets, total, "every packet was sent");
    stats
}

fn sum(c: &BurstCloses) -> u64 {
    c.full + c.window + c.iteration_end + c.in_flight_limit + c.pacing + c.held_early + c.other
}

#[test]
fn a_batch_written_within_the_window_goes_out_full() {
    // 32 packets at 50 ns take 1.6 µs, within the 4 µs window.
    let s = run(100_000_000_000, 1 << 20, 50);
    assert_eq!(sum(&s.bursts), s.tx_bursts, "{:?}", s.bursts);
    // At most the first stage: a new core's last stage is at time 0, so the window has
    // passed at its second point.
    assert!(s.bursts.window <= 1, "{:?}", s.bursts);
    assert!(s.bursts.full >= 15, "{:?}", s.bursts);
}

#[test]
fn a_slow_core_closes_bursts_at_the_window() {
    // 500 ns per packet: 8 packets per 4 µs window.
    let s = run(100_000_000_000, 1 << 20, 500);
    assert_eq!(sum(&s.bursts), s.tx_bursts, "{:?}", s.bursts);
    assert_eq!(s.bursts.full, 0, "{:?}", s.bursts);
    assert!(s.bursts.window >= 50, "{:?}", s.bursts);
    assert!(
        s.bursts.iteration_end >= 1,
        "the last stage, with nothing left to run"
    );
}

#[test]
fn the_in_flight_limit_cuts_bursts_short() {
    // 1 Gb/s with two frames in flight: a 146-byte frame takes 1.3 µs on the wire, against
    // 50 ns to write it.
    let s = run(1_000_000_000, 2 * 1538, 50);
    assert_eq!(sum(&s.bursts), s.tx_bursts, "{:?}", s.bursts);
    assert_eq!(s.bursts.full, 0, "{:?}", s.bursts);
    assert!(
        s.bursts.in_flight_limit > s.tx_bursts / 2,
        "{:?} of {}",
        s.bursts,
        s.tx_bursts
    );
}
