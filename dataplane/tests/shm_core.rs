//! A client-fed channel on the real core loop, in virtual time: messages written into the
//! channel's shared-memory ring (as a client process would) are found by the core's client
//! scan, sent byte-exact, and bad descriptors are refused and counted while an in-process
//! channel on the same core keeps its deadlines.

use dataplane::core::{Core, CoreConfig};
use dataplane::memlink::{MemLink, MemLinkConfig};
use dataplane::shm::{Params, Producer, Region, SubmitDesc};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{Clock, ManualClock, Nanos, VirtualCpu};
use std::sync::Arc;

/// The release jitter the client-fed channels are opened with.
const JITTER: Nanos = 50_000;

fn spec(mmax: u32, imin: Nanos, d: Nanos) -> ChannelSpec {
    ChannelSpec {
        mmax,
        imin,
        bmax: 4,
        cpu_deadline: d / 2,
        link_deadline: d,
        end_to_end_deadline: d + 50_000,
    }
}

fn send(p: &mut Producer<SubmitDesc>, msg: &[u8], ts: Nanos) -> bool {
    if p.room() == 0 {
        return false;
    }
    let Some(b) = p.grant(|_| {}) else {
        return false;
    };
    p.buffer_mut(b)[..msg.len()].copy_from_slice(msg);
    p.push(SubmitDesc {
        buf: b,
        len: msg.len() as u32,
        submit_ts: ts,
    });
    p.publish();
    true
}

#[test]
fn client_ring_messages_arrive_byte_exact_and_garbage_is_counted() {
    let clock = ManualClock::new(1_000);
    let (a, b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: 1_000_000_000,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let mut tx = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx = Core::new(CoreConfig::default(), b).unwrap();
    let s = spec(3000, 100_000, 400_000);
    let cfg = ChannelConfig::real_time(1, s);
    let region =
        Region::heap::<SubmitDesc>(&dataplane::channel::ChannelShared::ring_params(&cfg)).unwrap();
    let shared = tx.open_ring(cfg, region.clone(), JITTER).unwrap();
    let mut prod = Producer::<SubmitDesc>::new(region.clone()).unwrap();
    let r1 = rx.open_receiver(1, s.mmax, 64);
    // An in-process channel beside it.
    let mut other = tx
        .open(ChannelConfig::real_time(2, spec(100, 100_000, 400_000)))
        .unwrap();
    let r2 = rx.open_receiver(2, 100, 64);
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 200,
    };
    let mut sent = Vec::new();
    let (mut got, mut n2) = (Vec::new(), 0);
    for k in 0..200u32 {
        let now = clock.now();
        // Multi-fragment messages with a pattern that depends on k.
        let msg: Vec<u8> = (0..(100 + k * 13) as usize)
            .map(|i| (i as u32 ^ k) as u8)
            .collect();
        assert!(send(&mut prod, &msg, now), "room: the core keeps up");
        sent.push(msg);
        other.submit_at(&k.to_le_bytes(), now).unwrap();
        if k % 50 == 7 {
            // Garbage, as a hostile client could write: a buffer index out of range.
            assert!(prod.room() > 0);
            prod.push(SubmitDesc {
                buf: 9999,
                len: 1,
                submit_ts: now,
            });
            prod.publish();
        }
        let end = now + 100_000;
        while clock.now() < end {
            tx.poll(&clock, &mut cpu);
            rx.poll(&clock, &mut cpu);
            clock.advance(1_000);
        }
        while let Some(m) = r1.recv_with(|b, _| b.to_vec()) {
            got.push(m);
        }
        while r2.recv_with(|_, _| ()).is_some() {
            n2 += 1;
        }
    }
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "byte-exact, in order");
    assert_eq!(shared.stats.invalid_descriptors.get(), 4);
    assert_eq!(region.invalid(), 4);
    assert_eq!(r1.stats().deadline_misses.get(), 0);
    assert_eq!(n2, 200);
    assert_eq!(r2.stats().deadline_misses.get(), 0);
    assert_eq!(other.stats().late_packets.get(), 0);
    assert_eq!(shared.stats.late_packets.get(), 0);
}

#[test]
fn a_poisoned_ring_closes_only_its_channel() {
    let clock = ManualClock::new(1_000);
    let (a, b) = MemLink::pair(MemLinkConfig::default(), Arc::new(clock.clone()));
    let mut tx = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx = Core::new(CoreConfig::default(), b).unwrap();
    let cfg = ChannelConfig::real_time(1, spec(100, 100_000, 400_000));
    let region = Region::heap::<SubmitDesc>(&Params {
        mmax: 100,
        capacity: 4,
        drop_oldest: false,
        channel: 1,
    })
    .unwrap();
    let shared = tx.open_ring(cfg, region.clone(), JITTER).unwrap();
    let mut other = tx
        .open(ChannelConfig::real_time(2, spec(100, 100_000, 400_000)))
        .unwrap();
    let r2 = rx.open_receiver(2, 100, 64);
    let (prod_line, ..) = region.offsets();
    // SAFETY: the core is polled on this thread only, after the write.
    unsafe { region.scribble(prod_line, &u64::MAX.to_le_bytes()) };
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 200,
    };
    other.submit_at(b"still here", clock.now()).unwrap();
    for _ in 0..100 {
        tx.poll(&clock, &mut cpu);
        rx.poll(&clock, &mut cpu);
        clock.advance(1_000);
    }
    assert!(region.is_closed() && shared.is_closed());
    assert_eq!(shared.stats.invalid_descriptors.get(), 1);
    assert_eq!(r2.recv_with(|b, _| b.to_vec()).unwrap(), b"still here");
}

/// A client that stamps its messages far in the past (0) or near `u64::MAX` is held to the
/// admitted window before the take: its channel still runs at its rate, the stamps are counted
/// as restamped, no deadline overflows, and an honest channel on the same core keeps its
/// deadlines. Without the clamp the stamps of 0 keep the channel's logical arrivals a second
/// in the past, so it sends as fast as it can refill its ring, ahead of everyone under EDF.
#[test]
fn client_stamps_are_held_to_the_admitted_window() {
    let clock = ManualClock::new(1_000_000_000);
    let (a, b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: 1_000_000_000,
            ..MemLinkConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let mut tx = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx = Core::new(CoreConfig::default(), b).unwrap();
    let imin = 100_000;
    let s = spec(200, imin, 400_000);
    let cfg = ChannelConfig::real_time(1, s);
    let region =
        Region::heap::<SubmitDesc>(&dataplane::channel::ChannelShared::ring_params(&cfg)).unwrap();
    let shared = tx.open_ring(cfg, region.clone(), JITTER).unwrap();
    let mut prod = Producer::<SubmitDesc>::new(region.clone()).unwrap();
    let _r1 = rx.open_receiver(1, s.mmax, 64);
    let mut other = tx
        .open(ChannelConfig::real_time(2, spec(100, imin, 400_000)))
        .unwrap();
    let r2 = rx.open_receiver(2, 100, 64);
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 200,
    };
    let start = clock.now();
    let mut n2 = 0;
    for k in 0..200u32 {
        let now = clock.now();
        other.submit_at(&k.to_le_bytes(), now).unwrap();
        let end = now + imin;
        while clock.now() < end {
            // The hostile client refills its ring with lying stamps whenever there is room.
            let ts = if k < 150 { 0 } else { u64::MAX - 5 };
            send(&mut prod, &[0xAB; 200], ts);
            tx.poll(&clock, &mut cpu);
            rx.poll(&clock, &mut cpu);
            clock.advance(1_000);
        }
        while r2.recv_with(|_, _| ()).is_some() {
            n2 += 1;
        }
    }
    let elapsed = clock.now() - start;
    let sent = shared.stats.messages_sent.get();
    // Held to its rate: one message per Imin from the first logical arrival, plus the burst.
    let allowed = elapsed / imin + u64::from(s.bmax) + 1;
    assert!(
        sent <= allowed,
        "the lying client sent {sent} messages in {elapsed} ns; its rate allows {allowed}"
    );
    assert!(sent > 0, "the client's messages still go out");
    assert!(shared.stats.restamped.get() >= sent);
    assert_eq!(n2, 200, "the honest channel's messages all arrive");
    assert_eq!(r2.stats().deadline_misses.get(), 0);
    assert_eq!(other.stats().late_packets.get(), 0);
}

/// A core serves at most `CLIENT_SCAN_PER_ITERATION` client-fed channels, the number its client
/// scan checks each service phase (the release jitter they are admitted with assumes it); the
/// next one is refused with the reason, and in-process channels still open.
#[test]
fn a_core_refuses_more_client_fed_channels_than_one_scan_checks() {
    use dataplane::core::{CoreError, CLIENT_SCAN_PER_ITERATION};
    let clock = ManualClock::new(1_000);
    let (a, _b) = MemLink::pair(MemLinkConfig::default(), Arc::new(clock.clone()));
    let mut tx = Core::new(CoreConfig::default(), a).unwrap();
    let ring = |id: u32| {
        Region::heap::<SubmitDesc>(&Params {
            mmax: 100,
            capacity: 4,
            drop_oldest: false,
            channel: id,
        })
        .unwrap()
    };
    let n = CLIENT_SCAN_PER_ITERATION as u32;
    for id in 1..=n {
        let cfg = ChannelConfig::real_time(id, spec(100, 100_000, 400_000));
        tx.open_ring(cfg, ring(id), JITTER).unwrap();
    }
    let cfg = ChannelConfig::real_time(n + 1, spec(100, 100_000, 400_000));
    match tx.open_ring(cfg, ring(n + 1), JITTER) {
        Err(e @ CoreError::ClientsFull(max)) => {
            assert_eq!(max, CLIENT_SCAN_PER_ITERATION);
            assert!(e.to_string().contains("client-fed"), "{e}");
        }
        other => panic!("the 65th client-fed channel was not refused: {other:?}"),
    }
    tx.open(ChannelConfig::real_time(n + 2, spec(100, 100_000, 400_000)))
        .unwrap();
}

/// The core does not read a client's memfd ring before the client said it mapped it (and the
/// ring was sealed against hole punching): what is published before waits, then goes.
#[test]
fn a_memfd_ring_is_read_only_once_mapped_and_sealed() {
    let clock = ManualClock::new(1_000);
    let (a, b) = MemLink::pair(MemLinkConfig::default(), Arc::new(clock.clone()));
    let mut tx = Core::new(CoreConfig::default(), a).unwrap();
    let mut rx = Core::new(CoreConfig::default(), b).unwrap();
    let cfg = ChannelConfig::real_time(1, spec(100, 100_000, 400_000));
    let region = Region::memfd::<SubmitDesc>(
        &dataplane::channel::ChannelShared::ring_params(&cfg),
        "rtchan-test",
    )
    .unwrap();
    let theirs =
        Region::from_fd::<SubmitDesc>(region.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
    let shared = tx.open_ring(cfg, region.clone(), JITTER).unwrap();
    let r = rx.open_receiver(1, 100, 64);
    let mut p = Producer::<SubmitDesc>::new(theirs).unwrap();
    let mut cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: 200,
    };
    assert!(send(&mut p, b"early", clock.now()));
    for _ in 0..50 {
        tx.poll(&clock, &mut cpu);
        rx.poll(&clock, &mut cpu);
        clock.advance(1_000);
    }
    assert!(!shared.ring_ready());
    assert_eq!(
        shared.stats.submitted.get(),
        0,
        "the unsealed ring was read"
    );
    assert!(r.recv_with(|b, _| b.to_vec()).is_none());
    shared.client_mapped().unwrap();
    assert!(shared.ring_ready());
    shared.client_mapped().unwrap(); // idempotent
    for _ in 0..50 {
        tx.poll(&clock, &mut cpu);
        rx.poll(&clock, &mut cpu);
        clock.advance(1_000);
    }
    assert_eq!(r.recv_with(|b, _| b.to_vec()).unwrap(), b"early");
}
