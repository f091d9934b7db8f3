//! The whole loop over the in-memory link: a sending core and a receiving core, real-time
//! channels under a best-effort flood that saturates the link, in virtual time; then the same on
//! real threads through the control ring.

use dataplane::channel::Submit;
use dataplane::core::{Core, CoreConfig, IdlePolicy, RunningCore};
use dataplane::handle::CoreHandle;
use dataplane::link::LinkConfig;
use dataplane::memlink::{MemLink, MemLinkConfig};
use dataplane::port::{Batch, Port};
use dataplane::sched::SchedPolicy;
use dataplane::source::{Pattern, Source};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{Clock, ManualClock, MonotonicClock, Nanos, VirtualCpu};
use std::sync::Arc;

const GBPS: u64 = 1_000_000_000;

fn spec(mmax: u32, imin: Nanos, d: Nanos) -> ChannelSpec {
    ChannelSpec {
        mmax,
        imin,
        bmax: 4,
        cpu_deadline: d / 2,
        link_deadline: d,
        end_to_end_deadline: d + 50_000, // + network and receive polling
    }
}

#[test]
fn real_time_channels_meet_deadlines_under_a_best_effort_flood() {
    let clock = ManualClock::new(0);
    let (a, b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: GBPS,
            fifo_packets: 256,
            pool_buffers: 8192,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let link = LinkConfig {
        link_rate_bps: GBPS,
        in_flight_limit: 2 * 1538,
        best_effort_reserve_ppm: 100_000,
        ..LinkConfig::default()
    };
    let cfg = CoreConfig {
        link,
        sched: SchedPolicy {
            granularity: 2,
            ..SchedPolicy::default()
        },
        ..CoreConfig::default()
    };
    let mut tx_core = Core::new(cfg, a).unwrap();
    let mut rx_core = Core::new(cfg, b).unwrap();
    let specs = [
        spec(200, 100_000, 300_000),
        spec(4000, 500_000, 1_000_000),
        spec(64, 50_000, 150_000),
    ];
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut sources = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        senders.push(
            tx_core
                .open(ChannelConfig::real_time(i as u32, *s))
                .unwrap(),
        );
        receivers.push(rx_core.open_receiver(i as u32, s.mmax, 64));
        sources.push(Source::new(
            Pattern::Periodic { interval: s.imin },
            0,
            i as u64,
        ));
    }
    // A violator at 5x its rate (its excess waits in its own buffer: block policy).
    let vspec = spec(500, 200_000, 600_000);
    let mut violator = tx_core.open(ChannelConfig::real_time(9, vspec)).unwrap();
    let vrx = rx_core.open_receiver(9, 500, 64);
    let mut vsrc = Source::new(
        Pattern::Greedy {
            imin: 200_000,
            multiple: 5,
        },
        0,
        9,
    );
    let mut flood = tx_core
        .open(ChannelConfig::best_effort(100, 1400, 256))
        .unwrap();
    let flood_rx = rx_core.open_receiver(100, 1400, 1024);

    let mut cpu_a = VirtualCpu {
        clock: clock.clone(),
        per_packet: 100,
    };
    let mut cpu_b = cpu_a.clone();
    let duration: Nanos = 50_000_000;
    let payload = vec![0x5au8; 4000];
    while clock.now() < duration {
        let now = clock.now();
        for ((src, tx), s) in sources.iter_mut().zip(senders.iter_mut()).zip(specs.iter()) {
            for _ in 0..src.due(now) {
                tx.submit_at(&payload[..s.mmax as usize], now).unwrap();
            }
        }
        for _ in 0..vsrc.due(now) {
            let _ = violator.submit_at(&payload[..500], now);
        }
        // The flood keeps its buffer full.
        while flood.submit_at(&payload[..1400], now) == Ok(Submit::Queued) {}
        tx_core.poll(&clock, &mut cpu_a);
        rx_core.poll(&clock, &mut cpu_b);
        for r in receivers.iter().chain([&vrx, &flood_rx]) {
            while r.recv_with(|_, _| ()).is_some() {}
        }
        clock.advance(1_000);
    }
    for (i, r) in receivers.iter().enumerate() {
        let st = r.stats();
        let sent = senders[i].stats().snapshot();
        assert_eq!(st.deadline_misses.get(), 0, "channel {i} missed deadlines");
        assert_eq!(st.lost.get(), 0, "channel {i} lost messages");
        // Everything submitted more than a deadline before the end arrived.
        let expected = duration / specs[i].imin - 2;
        assert!(
            st.delivered.get() >= expected,
            "channel {i}: delivered {} of {} submitted",
            st.delivered.get(),
            sent.submitted
        );
        assert_eq!(sent.late_packets, 0, "channel {i} late at the link");
    }
    // The violator gets its spec's rate, not more, and still meets its deadlines.
    let v = vrx.stats();
    assert_eq!(v.deadline_misses.get(), 0);
    let vrate = v.delivered.get() as f64 / (duration as f64 / 200_000.0);
    assert!(
        (0.9..=1.05).contains(&vrate),
        "violator got {vrate}x its rate"
    );
    assert!(violator.stats().snapshot().would_block > 0);
    // Best-effort takes most of the remaining link.
    let be_bps = flood_rx.stats().bytes.get() as f64 * 8.0 / (duration as f64 / 1e9);
    assert!(be_bps > 0.6e9, "best-effort got {be_bps} b/s");
}

#[test]
fn channels_open_and_close_on_a_running_core() {
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
    let (a, b) = MemLink::pair(MemLinkConfig::default(), clock.clone());
    let mut tx_core = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx_core = Core::new(CoreConfig::default(), b).unwrap();
    let mut tx_handle = CoreHandle::new(&tx_core);
    let rx = rx_core.open_receiver(1, 3000, 256);
    let _ = &mut tx_core;
    let idle = IdlePolicy::Sleep(20_000);
    let running_tx = RunningCore::spawn(tx_core, None, clock.clone(), idle).unwrap();
    let running_rx = RunningCore::spawn(rx_core, None, clock.clone(), idle).unwrap();

    let cfg = ChannelConfig::real_time(1, spec(3000, 100_000, 5_000_000));
    let mut tx = tx_handle.open(cfg).unwrap();
    assert!(
        tx_handle.open(cfg).is_err(),
        "the same channel id cannot open twice"
    );
    let mut sent = 0;
    let start = std::time::Instant::now();
    while sent < 100 && start.elapsed() < std::time::Duration::from_secs(10) {
        if tx.submit(&vec![sent as u8; 2500]).is_ok() {
            sent += 1;
        } else {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    let mut got = Vec::new();
    while got.len() < 100 && start.elapsed() < std::time::Duration::from_secs(10) {
        if rx
            .recv_with(|m, d| got.push((m[0], d.seq, m.len())))
            .is_none()
        {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    tx_handle.close(1, true).unwrap();
    assert_eq!(
        tx.submit(b"late"),
        Err(dataplane::channel::SubmitError::Closed)
    );
    let tx_core = running_tx.stop();
    let _rx_core = running_rx.stop();
    assert_eq!(got.len(), 100);
    for (i, (byte, seq, len)) in got.iter().enumerate() {
        assert_eq!((*byte as usize, *seq as usize, *len), (i % 256, i, 2500));
    }
    assert_eq!(tx.stats().snapshot().messages_sent, 100);
    assert!(
        tx.stats().delay_snapshot().len() == 100,
        "delay histogram published on close"
    );
    assert_eq!(tx_core.stats().tx_errors, 0);
}

/// When the link, not the CPU, is the bottleneck (the link queue is full and runs wait for
/// room), best-effort gets the link real-time work leaves (admission keeps real-time demand
/// within `1 − reserve`), and the reserves (CPU and link, 10% each) lift it ahead of current
/// real-time work at most once per busy window: credit is earned by service, not by the
/// passing of time while the core waits, and never buys a second lift in one window.
#[test]
fn best_effort_gets_the_rest_of_the_link_under_backpressure() {
    let clock = ManualClock::new(0);
    let (a, mut b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: GBPS,
            fifo_packets: 64,
            pool_buffers: 4096,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let cfg = CoreConfig {
        link: LinkConfig {
            link_rate_bps: GBPS,
            in_flight_limit: 2 * 1538,
            capacity: 64,
            best_effort_reserve_ppm: 100_000,
            ..LinkConfig::default()
        },
        sched: SchedPolicy {
            granularity: 1,
            best_effort_reserve_ppm: 100_000,
            ..SchedPolicy::default()
        },
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg, a).unwrap();
    // A real-time channel at 70% of the link: 1400-byte messages (1,504 bytes, 12.0 µs on
    // the wire at 1 Gb/s) every 17.2 µs, submitted greedily (enforcement spaces them).
    let mut rt = core
        .open(ChannelConfig::real_time(1, spec(1400, 17_200, 10_000_000)))
        .unwrap();
    let mut be = core.open(ChannelConfig::best_effort(2, 1400, 256)).unwrap();
    let payload = [0u8; 1400];
    core.enable_trace(100_000);
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 100,
    };
    while clock.now() < 20_000_000 {
        while rt.submit_at(&payload, clock.now()) == Ok(Submit::Queued) {}
        while be.submit_at(&payload, clock.now()) == Ok(Submit::Queued) {}
        core.poll(&clock, &mut cpu);
        let mut arrived: Batch<_> = Batch::new();
        while b.rx_burst(0, &mut arrived).unwrap() > 0 {
            arrived.clear();
        }
        clock.advance(1_000);
    }
    let t = core.trace();
    let be_runs = t.iter().filter(|e| e.channel == 2).count() as f64;
    let share = be_runs / t.len() as f64;
    assert!(
        t.len() > 1000,
        "the link carried traffic: {} packets",
        t.len()
    );
    assert!(
        (0.2..=0.4).contains(&share),
        "best-effort took {share:.3} of the packets, 30% of the link being left"
    );
    let lifted = t
        .iter()
        .filter(|e| e.class == dataplane::sched::Class::BestEffortReserved)
        .count();
    let windows = t
        .windows(2)
        .filter(|w| w[0].class == dataplane::sched::Class::BestEffort && w[1].channel == 1)
        .count();
    assert!(
        lifted <= windows + 1,
        "{lifted} lifted runs in {windows} busy windows"
    );
}
