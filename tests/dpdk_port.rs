//! DPDK port tests over virtual devices (no NIC, no hugepages): `net_null` (TX/RX bursts,
//! counters), `net_pcap` with `tx_pcap=` (frames written to a file, read back and compared
//! byte for byte) and with `rx_pcap=` (a crafted capture received through `rx_burst`),
//! `net_ring`; and, as root, the vdevs on kernel interfaces — `net_af_packet`, `net_af_xdp`
//! and `net_pcap` with `iface=` — over a veth pair inside a network namespace the test makes.
//!
//! EAL can be initialised once per process, so every test shares one EAL, set up on first use
//! with all the vdevs the tests need. Tests take a process-wide lock, because DPDK's control
//! path (configure, queue setup, pool creation) is not meant to run from several threads at
//! once; `cargo test` needs no `--test-threads=1`.
#![cfg(feature = "dpdk")]

#[path = "common/pcap_file.rs"]
mod pcap_file;
use pcap_file::write_pcap;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use dataplane::port::{Batch, PacketBuf, Port, PortError};
use rtchan::ports::dpdk::{DpdkPort, Eal, Error, EthConfig, EthPort, Mempool, MempoolConfig};

struct TestEnv {
    eal: Eal,
    dir: PathBuf,
    tx_pcap: PathBuf,
    rx_frames: Vec<Vec<u8>>,
}

// Closing a port releases a vdev for good, so each test that opens a port has its own.
const NULL_TX_PORT: &str = "net_null0";
const NULL_RX_PORT: &str = "net_null1";
const NULL_ERR_PORT: &str = "net_null2";
/// Never opened: for the tests that only look ports up.
const NULL_IDLE_PORT: &str = "net_null3";
const PCAP_TX_PORT: &str = "net_pcap0";
const PCAP_RX_PORT: &str = "net_pcap1";
/// net_ring without arguments: TX queue i and RX queue i share one ring (a loopback).
const RING_PORT: &str = "net_ring0";

static ENV: OnceLock<TestEnv> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// The shared EAL (initialised on first use) and the lock serialising the tests.
fn env() -> (&'static TestEnv, MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = ENV.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rtchan-dpdk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let tx_pcap = dir.join("tx.pcap");
        let rx_pcap = dir.join("rx.pcap");
        // net_pcap opens rx_pcap files when the device is probed (at EAL init).
        let rx_frames = vec![frame(1, 60), frame(2, 61), frame(3, 128), frame(4, 1514)];
        write_pcap(&rx_pcap, &rx_frames);
        let args = eal_args(&tx_pcap, &rx_pcap);
        let eal = Eal::init(&args).unwrap_or_else(|e| panic!("EAL init with {args:?}: {e}"));
        TestEnv {
            eal,
            dir,
            tx_pcap,
            rx_frames,
        }
    });
    (env, guard)
}

fn eal_args(tx_pcap: &Path, rx_pcap: &Path) -> Vec<String> {
    // One lcore, on a CPU this process may run on (CI containers may not have CPU 0).
    let cpu = core_affinity::get_core_ids()
        .and_then(|ids| ids.first().map(|c| c.id))
        .unwrap_or(0);
    vec![
        "-l".into(),
        cpu.to_string(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "--no-telemetry".into(),
        "--log-level=lib.eal:error".into(),
        format!("--vdev={NULL_TX_PORT}"),
        format!("--vdev={NULL_RX_PORT},size=64"),
        format!("--vdev={NULL_ERR_PORT}"),
        format!("--vdev={NULL_IDLE_PORT}"),
        format!("--vdev={PCAP_TX_PORT},tx_pcap={}", tx_pcap.display()),
        format!("--vdev={PCAP_RX_PORT},rx_pcap={}", rx_pcap.display()),
        format!("--vdev={RING_PORT}"),
    ]
}

/// An Ethernet frame of `len` bytes: broadcast destination, locally administered source,
/// the IEEE local experimental EtherType 0x88b5, then a pattern derived from `seed`.
fn frame(seed: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, seed]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// A parsed pcap file.
struct Pcap {
    /// Timestamps are in nanoseconds (magic 0xa1b23c4d), not microseconds.
    nanosecond: bool,
    linktype: u32,
    frames: Vec<Vec<u8>>,
}

/// Parses a pcap file (either byte order, micro- or nanosecond magic).
fn read_pcap(path: &Path) -> Pcap {
    let data = std::fs::read(path).expect("read pcap");
    assert!(data.len() >= 24, "pcap shorter than its global header");
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let nanosecond = magic == 0xa1b2_3c4d || magic.swap_bytes() == 0xa1b2_3c4d;
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        _ if magic.swap_bytes() == 0xa1b2_c3d4 || magic.swap_bytes() == 0xa1b2_3c4d => false,
        _ => panic!("not a pcap file: magic {magic:#x}"),
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = data[off..off + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20);
    let mut frames = Vec::new();
    let mut off = 24;
    while off < data.len() {
        assert!(off + 16 <= data.len(), "truncated pcap record header");
        let incl = u32_at(off + 8) as usize;
        let orig = u32_at(off + 12) as usize;
        assert_eq!(incl, orig, "frame was truncated by the snap length");
        off += 16;
        assert!(off + incl <= data.len(), "truncated pcap record");
        frames.push(data[off..off + incl].to_vec());
        off += incl;
    }
    Pcap {
        nanosecond,
        linktype,
        frames,
    }
}

fn open_port(env: &TestEnv, name: &str, pool_name: &str, count: u32) -> DpdkPort {
    let pool = Mempool::pktmbuf(&env.eal, pool_name, count).expect("create pool");
    let id = env.eal.port_by_name(name).expect("port by name");
    let eth = EthPort::configure(&env.eal, id, &EthConfig::default(), &pool).expect("configure");
    DpdkPort::new(eth, pool).expect("start")
}

/// Receives until `n` packets arrived or 2 s passed.
fn rx_n(port: &mut DpdkPort, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < n && Instant::now() < deadline {
        let mut batch = Batch::new();
        port.rx_burst(0, &mut batch).expect("rx_burst");
        got.extend(batch.iter().map(|m| m.data().to_vec()));
    }
    got
}

/// Hands `batch` to queue 0 until it is empty or 2 s have passed; returns the frames taken.
fn send_batch(port: &mut DpdkPort, batch: &mut Batch<<DpdkPort as Port>::Buf>) -> usize {
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !batch.is_empty() && Instant::now() < deadline {
        sent += port.tx_burst(0, batch).expect("tx_burst");
    }
    sent
}

/// Copies `frames` into mbufs of `port` and sends them ([`send_batch`]).
fn send_frames(port: &mut DpdkPort, frames: &[Vec<u8>]) -> usize {
    let mut batch = Batch::new();
    for f in frames {
        let mut m = port.alloc_tx().expect("alloc");
        m.buf_mut()[..f.len()].copy_from_slice(f);
        m.set_len(f.len());
        batch.push(m);
    }
    send_batch(port, &mut batch)
}

#[test]
fn second_eal_init_fails_cleanly() {
    let (env, _g) = env();
    let err = Eal::init(["--no-huge", "--no-pci"]).expect_err("second init must fail");
    assert_eq!(err, Error::AlreadyInitialised);
    // The first EAL is unaffected.
    assert!(env.eal.port_by_name(NULL_IDLE_PORT).is_ok());
    assert!(matches!(
        env.eal.port_by_name("net_nonexistent9"),
        Err(Error::NoSuchPort(_))
    ));
}

#[test]
fn eal_lists_the_vdevs() {
    let (env, _g) = env();
    let ports = env.eal.ports();
    for name in [NULL_IDLE_PORT, PCAP_RX_PORT] {
        let id = env.eal.port_by_name(name).expect(name);
        assert!(ports.contains(&id), "{name} ({id}) not in {ports:?}");
    }
}

#[test]
fn hotplugged_vdev_is_usable() {
    let (env, _g) = env();
    env.eal.probe_device("net_null9").expect("rte_dev_probe");
    let mut port = open_port(env, "net_null9", "hotplug_pool", 255);
    let mut batch = Batch::new();
    let mut m = port.alloc_tx().expect("alloc");
    m.set_len(60);
    batch.push(m);
    assert_eq!(port.tx_burst(0, &mut batch), Ok(1));
    assert!(env.eal.probe_device("bad\0name").is_err());
}

#[test]
fn registered_thread_gets_an_lcore() {
    let (env, _g) = env();
    let pool = Mempool::pktmbuf(&env.eal, "thread_pool", 255).expect("pool");
    let eal = env.eal.clone();
    std::thread::spawn(move || {
        assert_eq!(eal.lcore_id(), None, "a plain thread has no lcore");
        let id = eal.register_thread().expect("register");
        assert_eq!(eal.lcore_id(), Some(id));
        assert_eq!(eal.register_thread().expect("again"), id);
        let m = pool.alloc().expect("alloc through the lcore cache");
        drop(m);
        eal.unregister_thread();
        assert_eq!(eal.lcore_id(), None);
    })
    .join()
    .expect("thread");
}

#[test]
fn net_null_tx_burst_and_stats() {
    let (env, _g) = env();
    let mut port = open_port(env, NULL_TX_PORT, "null_pool", 1023);
    let caps = port.capabilities();
    assert_eq!(caps.name, format!("dpdk:{NULL_TX_PORT}"));
    assert_eq!((caps.tx_queues, caps.rx_queues), (1, 1));
    assert_eq!(caps.max_frame, 1514);
    assert_eq!(port.eth().driver(), "net_null");
    assert!(port.eth().link().expect("link").up);

    let before = port.stats();
    let mut batch = Batch::new();
    for i in 0..32u8 {
        let mut m = port.alloc_tx().expect("alloc");
        assert_eq!(m.len(), 0);
        assert!(m.capacity() >= 2048);
        m.buf_mut()[..100].fill(i);
        m.set_len(100);
        assert_eq!(m.data(), &[i; 100][..]);
        batch.push(m);
    }
    let sent = send_batch(&mut port, &mut batch);
    assert_eq!(sent, 32);
    assert!(batch.is_empty());
    let after = port.stats();
    assert_eq!(after.tx_packets - before.tx_packets, 32);
    // (net_null counts packets only; byte counters are checked on net_pcap.)
    // net_null frees what it "sent": every mbuf is back.
    assert_eq!(port.tx_pool().in_use(), 0);
}

#[test]
fn net_null_rx_burst_wraps_mbufs() {
    let (env, _g) = env();
    let mut port = open_port(env, NULL_RX_PORT, "null_rx_pool", 1023);
    let mut batch = Batch::new();
    let n = port.rx_burst(0, &mut batch).expect("rx_burst");
    assert_eq!(n, batch.len());
    assert!(n > 0, "net_null always has packets");
    assert!(batch.iter().all(|m| m.len() == 64));
    assert!(port.stats().rx_packets >= n as u64);
    drop(batch);
    assert_eq!(
        port.eth().rx_pool().in_use(),
        0,
        "dropped mbufs go back to the pool"
    );
}

#[test]
fn bad_queue_and_double_open_are_errors() {
    let (env, _g) = env();
    let mut port = open_port(env, NULL_ERR_PORT, "null2_pool", 255);
    let mut batch = Batch::new();
    assert_eq!(port.tx_burst(1, &mut batch), Err(PortError::NoSuchQueue(1)));
    assert_eq!(port.rx_burst(7, &mut batch), Err(PortError::NoSuchQueue(7)));
    let pool = Mempool::pktmbuf(&env.eal, "null2_pool_b", 255).expect("pool");
    let id = port.eth().id();
    let err = EthPort::configure(&env.eal, id, &EthConfig::default(), &pool).unwrap_err();
    assert_eq!(err, Error::PortInUse(id.raw()));
    // A duplicate pool name is a DPDK error carrying rte_errno (EEXIST).
    let err = Mempool::pktmbuf(&env.eal, "null2_pool_b", 255).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");

    // Stopped port: bursts report the link down.
    port.eth_mut().stop().expect("stop");
    assert_eq!(port.tx_burst(0, &mut batch), Err(PortError::LinkDown));
    port.eth_mut().start().expect("restart");
    assert_eq!(port.tx_burst(0, &mut batch), Ok(0));
}

#[test]
fn pool_exhaustion_counts_alloc_failures() {
    let (env, _g) = env();
    let pool = Mempool::create(
        &env.eal,
        &MempoolConfig {
            cache_size: 0,
            ..MempoolConfig::new("tiny_pool", 4)
        },
    )
    .expect("pool");
    assert_eq!(pool.size(), 4);
    let mut batch = Batch::new();
    assert!(pool.alloc_bulk(&mut batch, 4));
    assert!(pool.alloc().is_none());
    assert!(!pool.alloc_bulk(&mut batch, 1));
    assert_eq!(pool.in_use(), 4);
    batch.clear();
    assert_eq!(pool.available(), 4);

    let mut m = pool.alloc().expect("alloc");
    let cap = m.capacity();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.set_len(cap + 1)));
    assert!(result.is_err(), "set_len beyond capacity panics");
}

#[test]
fn net_ring_loops_frames_back_zero_copy() {
    let (env, _g) = env();
    let mut port = open_port(env, RING_PORT, "ring_pool", 255);
    let frames = [frame(0x20, 60), frame(0x21, 200)];
    let mut batch = Batch::new();
    let mut addrs = Vec::new();
    for f in &frames {
        let mut m = port.alloc_tx().expect("alloc");
        m.buf_mut()[..f.len()].copy_from_slice(f);
        m.set_len(f.len());
        addrs.push(m.data().as_ptr());
        batch.push(m);
    }
    assert_eq!(port.tx_burst(0, &mut batch), Ok(2));
    let mut rx = Batch::new();
    assert_eq!(port.rx_burst(0, &mut rx), Ok(2));
    let got: Vec<Vec<u8>> = rx.iter().map(|m| m.data().to_vec()).collect();
    assert_eq!(got, frames);
    // The very same buffers came back: nothing was copied on the way.
    let back: Vec<*const u8> = rx.iter().map(|m| m.data().as_ptr()).collect();
    assert_eq!(back, addrs);
}

#[test]
fn net_pcap_tx_writes_exact_frames() {
    let (env, _g) = env();
    let mut port = open_port(env, PCAP_TX_PORT, "pcap_tx_pool", 511);
    let frames: Vec<Vec<u8>> = vec![frame(0x10, 60), frame(0x11, 99), frame(0x12, 1514)];
    let sent = send_frames(&mut port, &frames);
    assert_eq!(sent, frames.len());
    let stats = port.stats();
    assert_eq!(stats.tx_packets, frames.len() as u64);
    assert_eq!(
        stats.tx_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    // With tx_pcap only, RX has nothing.
    let mut rx = Batch::new();
    assert_eq!(port.rx_burst(0, &mut rx), Ok(0));
    // Stop and close the port: the PMD flushes and closes the dump file.
    let (eth, _pool) = port.into_parts();
    eth.close().expect("close");

    let pcap = read_pcap(&env.tx_pcap);
    assert_eq!(pcap.linktype, 1, "Ethernet link type");
    assert!(pcap.nanosecond, "net_pcap writes nanosecond timestamps");
    assert_eq!(pcap.frames, frames);
    let _ = std::fs::remove_file(&env.tx_pcap);
    let _ = std::fs::remove_dir(&env.dir); // once both pcap tests removed their file
}

#[test]
fn net_pcap_rx_reads_crafted_capture() {
    let (env, _g) = env();
    let mut port = open_port(env, PCAP_RX_PORT, "pcap_rx_pool", 511);
    let got = rx_n(&mut port, env.rx_frames.len());
    assert_eq!(got, env.rx_frames);
    let stats = port.stats();
    assert_eq!(stats.rx_packets, env.rx_frames.len() as u64);
    assert_eq!(
        stats.rx_bytes,
        env.rx_frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    // End of file: nothing more arrives.
    let mut batch = Batch::new();
    assert_eq!(port.rx_burst(0, &mut batch), Ok(0));
    // With rx_pcap only, TX accepts and drops.
    let mut m = port.alloc_tx().expect("alloc");
    m.set_len(60);
    batch.push(m);
    assert_eq!(port.tx_burst(0, &mut batch), Ok(1));
    let _ = std::fs::remove_file(env.dir.join("rx.pcap"));
    let _ = std::fs::remove_dir(&env.dir); // once both pcap tests removed their file
}

/// Frames with the local experimental EtherType that `port` receives within 2 s, until `n`
/// (anything else on the link, such as IPv6 neighbour discovery, is left out).
fn rx_ours(port: &mut DpdkPort, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < n && Instant::now() < deadline {
        let mut batch = Batch::new();
        port.rx_burst(0, &mut batch).expect("rx_burst");
        got.extend(
            batch
                .iter()
                .map(|m| m.data().to_vec())
                .filter(|f| f.len() >= 14 && f[12..14] == [0x88, 0xb5]),
        );
    }
    got
}

/// Sends `frames` through `tx` and checks that `rx` receives exactly them, in order.
fn carries(tx: &mut DpdkPort, rx: &mut DpdkPort, frames: &[Vec<u8>], what: &str) {
    let sent = send_frames(tx, frames);
    assert_eq!(sent, frames.len(), "{what}: frames taken by tx_burst");
    let got = rx_ours(rx, frames.len());
    assert_eq!(got.len(), frames.len(), "{what}: frames received");
    assert!(
        got == frames,
        "{what}: received frames differ from those sent"
    );
}

/// `net_af_packet`, `net_af_xdp` and `net_pcap` with `iface=` on the two ends of a veth pair
/// inside a network namespace this test makes (root only): frames sent through one vdev
/// arrive through another, byte for byte. The test thread enters the namespace, so the vdevs
/// it probes open their sockets there.
#[test]
fn kernel_interface_vdevs_over_veth() {
    use rtchan::ports::netns::enter_netns;
    use rtchan::ports::netns::{ip, is_root, netns_path, Namespaces};
    if !is_root() {
        eprintln!("SKIPPED kernel_interface_vdevs_over_veth: needs root (network namespace, veth)");
        return;
    }
    if std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED kernel_interface_vdevs_over_veth: RTCHAN_SKIP_NETNS is set");
        return;
    }
    let (env, _g) = env();
    let pid = std::process::id();
    let ns = format!("rtchan-dpdk-{pid}");
    let (va, vb) = (format!("rdpa{pid}"), format!("rdpb{pid}"));
    // Declared before the ports: dropped after them (closing a port detaches it first).
    let mut namespaces = Namespaces::default();
    let setup = (|| {
        namespaces.add(&ns)?;
        ip(&[
            "-n", &ns, "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ])?;
        ip(&["-n", &ns, "link", "set", &va, "up"])?;
        ip(&["-n", &ns, "link", "set", &vb, "up"])
    })();
    if let Err(e) = setup {
        panic!(
            "running as root but the veth/netns set-up failed ({e}); set RTCHAN_SKIP_NETNS=1 to \
             skip where namespaces are not allowed"
        );
    }
    enter_netns(&netns_path(&ns)).expect("enter the test's network namespace");

    // net_pcap on the receiving end: libpcap on a kernel interface.
    env.eal
        .probe_device(&format!("net_pcap9,iface={vb}"))
        .expect("probe net_pcap with iface=");
    let mut rx = open_port(env, "net_pcap9", "pcap_iface_pool", 1023);

    let frames: Vec<Vec<u8>> = (0..16u8)
        .map(|i| frame(0x40 + i, 60 + 90 * i as usize))
        .collect();
    env.eal
        .probe_device(&format!("net_af_packet0,iface={va}"))
        .expect("probe net_af_packet");
    let mut afp = open_port(env, "net_af_packet0", "af_packet_pool", 1023);
    carries(
        &mut afp,
        &mut rx,
        &frames,
        "net_af_packet -> net_pcap iface",
    );
    drop(afp);

    env.eal
        .probe_device(&format!(
            "net_af_xdp0,iface={va},start_queue=0,queue_count=1"
        ))
        .expect("probe net_af_xdp");
    let mut xdp = open_port(env, "net_af_xdp0", "af_xdp_pool", 4095);
    let frames: Vec<Vec<u8>> = (0..16u8)
        .map(|i| frame(0x60 + i, 1514 - 80 * i as usize))
        .collect();
    carries(&mut xdp, &mut rx, &frames, "net_af_xdp -> net_pcap iface");
    drop(xdp);
    drop(rx);
}
