//! Two dataplanes over AF_XDP on a veth pair between two network namespaces: real-time
//! channels (one of them multi-packet) under a best-effort flood that would saturate the
//! (paced) link, byte-exact payloads, zero losses and zero deadline misses.
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns, CAP_BPF to load libxdp's redirect
//! program, CAP_NET_RAW) and a kernel with CONFIG_XDP_SOCKETS; skips with the reason
//! otherwise. `RTCHAN_XDP_ATTACH=native|skb|auto` picks the XDP attach mode (default auto:
//! native, else SKB). The namespaces are removed on every exit path, failures included.
//!
//! The dataplane scenario and its checks are shared with `afpacket_veth`
//! (`common/veth_scenario.rs`) and run on the veth test bed the evaluation uses
//! (`rtchan::bed::VethBed` over AF_XDP, copy mode, `report_completions: false`); this file picks
//! the port, and tests the port on its own.

#![cfg(all(target_os = "linux", feature = "af_xdp"))]

#[path = "common/veth_scenario.rs"]
mod veth_scenario;

use dataplane::port::Port;
use dataplane::time::monotonic_now;
use rtchan::bed::veth::Backend;
use rtchan::ports::afxdp::{AfXdpConfig, AfXdpPort, XdpAttach};
use rtchan::ports::netns::{enter_netns, netns_path, Namespaces};
use std::sync::{mpsc, MutexGuard};
use std::time::Duration;

const MAC_A: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x00, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x00, 0x0b];

fn skip_reason() -> Option<String> {
    veth_scenario::skip_reason("network namespaces, veth, AF_XDP, BPF").or_else(|| {
        rtchan::ports::afxdp::probe()
            .err()
            .map(|why| format!("AF_XDP is not available here: {why}"))
    })
}

/// The tests of this file run one at a time: the timing test needs both CPUs.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What each test of this file does first: takes [`SERIAL`] (held while the guard lives) and,
/// when the test cannot run here, says so and returns `None`.
fn start() -> Option<MutexGuard<'static, ()>> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED afxdp_veth: {why}");
        return None;
    }
    // libxdp reports on stderr that it attaches its program without the dispatcher when no
    // bpffs is mounted; that is expected here.
    rtchan::ports::afxdp::set_library_logging(false);
    Some(serial)
}

#[test]
fn real_time_channels_meet_their_bounds_over_af_xdp_on_veth() {
    let Some(_serial) = start() else { return };
    veth_scenario::run(Backend::AfXdp);
}

/// An EtherType from the IEEE's local-experimental range, so the receiver can tell the test's
/// frames from the IPv6 neighbour discovery the kernel sends on a fresh link.
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// Frame `i` of the raw test: Ethernet header, then bytes depending on `i` and the position.
fn raw_frame(i: usize) -> Vec<u8> {
    let len = 60 + (i * 97) % (1514 - 60);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&TEST_ETHERTYPE);
    f.extend((14..len).map(|j| (i as u32 * 131 + j as u32 * 7) as u8));
    f
}

/// Below the dataplane: zero-copy is refused on veth with an error naming the interface and
/// the mode, `ZeroCopyOrCopy` falls back to copy mode, frames cross byte-exact and in order,
/// and every TX frame comes back through the completion ring.
#[test]
fn zero_copy_falls_back_to_copy_and_frames_cross_byte_exact() {
    use dataplane::port::{Batch, PacketBuf};
    use rtchan::ports::afxdp::XskBind;
    const FRAMES: usize = 200;

    let Some(_serial) = start() else { return };
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("rtchan-za-{pid}"), format!("rtchan-zb-{pid}"));
    let (if_a, if_b) = (format!("rza{pid}"), format!("rzb{pid}"));
    // Held for its Drop: deletes the namespaces (and the pair) on every exit path.
    let mut namespaces = Namespaces::default();
    namespaces
        .veth_pair((&ns_a, &if_a, MAC_A), (&ns_b, &if_b, MAC_B))
        .unwrap_or_else(|e| panic!("running as root but the veth/netns set-up failed ({e})"));
    let deadline = monotonic_now() + 10_000_000_000;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();

    let rx = {
        let (ns, ifname) = (ns_b.clone(), if_b.clone());
        std::thread::spawn(move || -> Result<(String, Vec<Vec<u8>>), String> {
            enter_netns(&netns_path(&ns)).map_err(|e| format!("setns into {ns}: {e}"))?;
            let zc_only = AfXdpConfig {
                attach: XdpAttach::Native,
                bind: XskBind::ZeroCopy,
                ..AfXdpConfig::default()
            };
            let refused = match AfXdpPort::open(&ifname, zc_only) {
                Ok(_) => return Err("veth accepted a zero-copy bind".into()),
                Err(e) => e.to_string(),
            };
            let cfg = AfXdpConfig {
                attach: XdpAttach::Native,
                bind: XskBind::ZeroCopyOrCopy,
                ..AfXdpConfig::default()
            };
            let mut port = AfXdpPort::open(&ifname, cfg).map_err(|e| e.to_string())?;
            if port.zero_copy() {
                return Err("veth bound in zero-copy mode".into());
            }
            let note = format!("{refused} | fallback notes: {:?}", port.notes());
            let _ = ready_tx.send(());
            let mut got = Vec::new();
            while got.len() < FRAMES && monotonic_now() < deadline {
                let mut batch = Batch::new();
                port.rx_burst(0, &mut batch).map_err(|e| e.to_string())?;
                got.extend(
                    batch
                        .iter()
                        .filter(|f| f.data().get(12..14) == Some(&TEST_ETHERTYPE[..]))
                        .map(|f| f.data().to_vec()),
                );
                drop(batch);
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok((note, got))
        })
    };
    let tx = {
        let (ns, ifname) = (ns_a.clone(), if_a.clone());
        std::thread::spawn(move || -> Result<(usize, usize), String> {
            enter_netns(&netns_path(&ns)).map_err(|e| format!("setns into {ns}: {e}"))?;
            let mut port =
                AfXdpPort::open(&ifname, AfXdpConfig::default()).map_err(|e| e.to_string())?;
            let total = port.pool().tx_available();
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "the receiver did not get ready".to_string())?;
            let mut next = 0;
            let mut batch = Batch::new();
            while (next < FRAMES || !batch.is_empty()) && monotonic_now() < deadline {
                while next < FRAMES && !batch.is_full() {
                    let Some(mut f) = port.alloc_tx() else { break };
                    let bytes = raw_frame(next);
                    f.buf_mut()[..bytes.len()].copy_from_slice(&bytes);
                    f.set_len(bytes.len());
                    batch.push(f);
                    next += 1;
                }
                port.tx_burst(0, &mut batch).map_err(|e| e.to_string())?;
                // Slow enough that the receiver's RX ring never fills.
                std::thread::sleep(Duration::from_micros(200));
            }
            // Every sent frame comes back through the completion ring (reaped on each burst).
            while port.pool().tx_available() < total && monotonic_now() < deadline {
                port.rx_burst(0, &mut Batch::new())
                    .map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((total, port.pool().tx_available()))
        })
    };
    let tx = tx.join().expect("sender thread panicked");
    let rx = rx.join().expect("receiver thread panicked");
    let ((total, free), (note, got)) = match (tx, rx) {
        (Ok(t), Ok(r)) => (t, r),
        (t, r) => panic!(
            "a port failed: sender {:?}, receiver {:?}",
            t.err(),
            r.err()
        ),
    };
    eprintln!("af_xdp zero-copy on veth: {note}");
    assert!(
        note.contains(&if_b) && note.contains("zero-copy"),
        "the refusal names the interface and the mode: {note}"
    );
    assert_eq!(free, total, "TX frames not returned by the completion ring");
    assert_eq!(got.len(), FRAMES, "frames lost");
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f, &raw_frame(i), "frame {i} differs or is out of order");
    }
    drop(namespaces);
}
