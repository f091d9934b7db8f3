//! The af_packet fanout group of a multi-core daemon, at the port level: two sockets on one end
//! of a veth pair made with two queues (between two network namespaces this test makes), a
//! plain af_packet socket on the other end writing frames of placed, unplaced and non-rtchan
//! kinds. Each frame of a placed channel must reach exactly the socket of its core, and when
//! the kernel took the steering (`PACKET_FANOUT_CBPF`) without any software hand-off; a
//! channel moved to the other core follows; unplaced rtchan frames reach socket 0; frames that
//! are not rtchan's never reach a ring (the socket filter). Then the device's queue count as
//! the daemon reads it.
//!
//! Needs root (namespaces, veth, AF_PACKET); prints SKIPPED otherwise or when
//! `RTCHAN_SKIP_NETNS` is set. The namespaces (and the veth with them) are deleted on every
//! exit path.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use dataplane::port::{Batch, PacketBuf, Port};
use dataplane::spec::Endpoint;
use dataplane::wire::{HeaderTemplate, RtHeader, RTCHAN_UDP_PORT};
use rtchan::ports::afpacket::{
    device_queues, open_group, AfPacketConfig, AfPacketPort, FanoutGroup, FanoutMode,
};
use rtchan::ports::netns::{enter_netns, is_root, netns_path, Namespaces};
use rtchan::ports::steering::{peek_channel, SharedDevice};

const MAC_A: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x03, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x03, 0x0b];

fn endpoint() -> Endpoint {
    Endpoint {
        src_mac: MAC_A,
        dst_mac: MAC_B,
        src_ip: [10, 73, 0, 1],
        dst_ip: [10, 73, 0, 2],
        ..Endpoint::default()
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it opens belong there).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        enter_netns(&path).map_err(|e| format!("enter {}: {e}", path.display()))?;
        f()
    })
    .join()
    .map_err(|_| "thread panicked".to_string())?
}

/// Writes `count` frames of each kind in `kinds` from a socket on `ifname` in `ns`: `Some(ch)`
/// an rtchan frame of channel `ch`, `None` a UDP frame to another port.
fn send(ns: &str, ifname: &str, kinds: Vec<(Option<u32>, usize)>) -> Result<(), String> {
    let ifname = ifname.to_owned();
    in_ns(ns, move || {
        let mut port =
            AfPacketPort::open(&ifname, AfPacketConfig::default()).map_err(|e| e.to_string())?;
        for (kind, count) in kinds {
            let ep = match kind {
                Some(_) => endpoint(),
                None => Endpoint {
                    dst_port: 9999,
                    ..endpoint()
                },
            };
            for seq in 0..count {
                let mut b = port.alloc_tx().ok_or("no TX buffer")?;
                let h = RtHeader {
                    channel: kind.unwrap_or(1),
                    msg_seq: seq as u32,
                    frag_count: 1,
                    frag_len: 16,
                    msg_len: 16,
                    ..RtHeader::default()
                };
                let n = HeaderTemplate::new(&ep).write_frame(b.buf_mut(), 1, &h, &[7; 16]);
                b.set_len(n);
                let mut batch = Batch::new();
                batch.push(b);
                while !batch.is_empty() {
                    port.tx_burst(0, &mut batch).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    })
}

/// Polls both sockets until `want` frames arrived or a second passed; the channel of every
/// frame each socket's core got (`None`: not rtchan).
fn receive(ports: &mut [AfPacketPort], want: usize) -> Vec<Vec<Option<u32>>> {
    let mut got = vec![Vec::new(); ports.len()];
    let t = Instant::now();
    // Past `want`, a little longer: a frame that should not have come would show.
    let mut extra = None;
    while t.elapsed() < Duration::from_secs(1) {
        for (i, p) in ports.iter_mut().enumerate() {
            let mut batch = Batch::new();
            let _ = p.rx_burst(0, &mut batch);
            for b in batch.drain(..) {
                got[i].push(peek_channel(b.data(), RTCHAN_UDP_PORT));
            }
        }
        if got.iter().map(Vec::len).sum::<usize>() >= want && extra.is_none() {
            extra = Some(Instant::now());
        }
        if extra.is_some_and(|e| e.elapsed() > Duration::from_millis(50)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

fn count(v: &[Option<u32>], ch: Option<u32>) -> usize {
    v.iter().filter(|&&c| c == ch).count()
}

#[test]
fn each_channel_reaches_the_socket_of_its_core() {
    if !is_root() || std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED afpacket_fanout: needs root (namespaces, veth, AF_PACKET), and RTCHAN_SKIP_NETNS unset");
        return;
    }
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("rtchan-fa-{pid}"), format!("rtchan-fb-{pid}"));
    let (if_a, if_b) = (format!("rfa{pid}"), format!("rfb{pid}"));
    let mut ns = Namespaces::default();
    ns.veth_pair_with_queues((&ns_a, &if_a, MAC_A), (&ns_b, &if_b, MAC_B), 2)
        .unwrap_or_else(|e| panic!("veth/netns set-up failed ({e}); RTCHAN_SKIP_NETNS=1 skips"));

    let ifb = if_b.clone();
    let queues = in_ns(&ns_b, move || {
        device_queues(&ifb).map_err(|e| e.to_string())
    });
    assert_eq!(queues, Ok((2, 2)), "RX/TX queues of a veth made with 2");

    let ifb = if_b.clone();
    let (mut ports, group): (Vec<AfPacketPort>, FanoutGroup) = in_ns(&ns_b, move || {
        let cfg = AfPacketConfig {
            qdisc_bypass: false,
            ..AfPacketConfig::default()
        };
        open_group(&ifb, cfg, 2, RTCHAN_UDP_PORT, 1024).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "fanout group {} in {:?} mode; notes {:?}",
        group.id(),
        group.mode(),
        group.notes()
    );
    group.steer(1, Some(1)).unwrap();
    group.steer(2, Some(0)).unwrap();
    // Grow the program into a search tree with long jumps (left halves over 255
    // instructions) with channels that send nothing: the kernel takes every version of it,
    // and the two live ones still steer.
    const IDLE: u32 = 300;
    let t = Instant::now();
    for id in 1000..1000 + IDLE {
        group.steer(id, Some((id % 2) as u16)).unwrap();
    }
    eprintln!(
        "{IDLE} placements (the program rebuilt and replaced each time) in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Channel 1 on core 1, 2 on core 0, 3 unplaced, and UDP to another port.
    send(
        &ns_a,
        &if_a,
        vec![(Some(1), 20), (Some(2), 20), (Some(3), 5), (None, 5)],
    )
    .unwrap();
    let got = receive(&mut ports, 45);
    let report = group.report();
    eprintln!("received per socket: {got:?}\nreport {report:?}");
    assert_eq!(count(&got[1], Some(1)), 20, "channel 1 on core 1: {got:?}");
    assert_eq!(count(&got[0], Some(2)), 20, "channel 2 on core 0: {got:?}");
    assert_eq!(count(&got[0], Some(3)), 5, "unplaced channel 3 on core 0");
    assert_eq!(got[0].len() + got[1].len(), 45, "nothing else: {got:?}");
    if group.mode() == FanoutMode::Kernel {
        // The kernel steered; nothing needed the hand-off, and the non-rtchan frames never
        // reached a ring.
        assert_eq!((report[0].handed_in, report[1].handed_in), (0, 0));
        assert_eq!(report[0].rx_packets + report[1].rx_packets, 45);
    }

    // A frame the group itself sends (through the qdisc, which the kernel's taps see) does
    // not come back to any of its sockets.
    let mut b = ports[1].alloc_tx().unwrap();
    let h = RtHeader {
        channel: 2,
        frag_count: 1,
        frag_len: 16,
        msg_len: 16,
        ..RtHeader::default()
    };
    let n = HeaderTemplate::new(&endpoint()).write_frame(b.buf_mut(), 1, &h, &[7; 16]);
    b.set_len(n);
    let mut batch = Batch::new();
    batch.push(b);
    assert_eq!(ports[1].tx_burst(0, &mut batch), Ok(1));
    let got = receive(&mut ports, 1);
    assert!(
        got.iter().all(Vec::is_empty),
        "own frame came back: {got:?}"
    );

    // Channel 1 moves to core 0.
    group.steer(1, Some(0)).unwrap();
    send(&ns_a, &if_a, vec![(Some(1), 10)]).unwrap();
    let got = receive(&mut ports, 10);
    assert_eq!(
        count(&got[0], Some(1)),
        10,
        "channel 1 followed to core 0: {got:?}"
    );
    assert!(got[1].is_empty(), "{got:?}");
    drop(ports);
    drop(group);
    drop(ns);
}
