//! Receive steering of the DPDK daemon's port (feature `dpdk`): which core's RX queue a
//! received rtchan frame reaches, by `rte_flow` rules where the device takes them, by the
//! software hand-off between cores where it does not.
//!
//! In both tests the receiving daemon `b` (DPDK, two cores) gets its receivers from a
//! memlink peer `a` that opens real-time channels to it over the control protocol (the frames
//! `a` sends go to its own memory link); the frames `b` receives are made by the test, carrying
//! the ids of those channels:
//! - `net_pcap`, no rte_flow: every channel's frames on both RX queues (`rx_pcap` files
//!   replayed with `infinite_rx`), so whichever core holds a receiver, the other core hands it
//!   that channel's frames: the port reports `software` steering with net_pcap's refusal, and
//!   the owner's hand-off counter grows. No root needed.
//! - `net_tap` (root, a network namespace the test makes): the kernel sends the frames as UDP
//!   datagrams through the tap interface. Where the kernel has what net_tap's rte_flow needs
//!   (tc `multiq` qdisc, `flower` classifier, `skbedit` action: probed first), the port must
//!   steer with rules: every rtchan frame on the RX queue of the core holding the real-time
//!   receivers, none handed off, other UDP on the best-effort queue. Where it has not, the
//!   port must say `software` with the refusal, and some frames are handed between the cores
//!   (the kernel spreads the datagrams over the tap's queues by flow hash). Either way, every
//!   frame of a channel must reach the receive path of the core holding its receiver, once
//!   (counted there as delivered or rejected: the kernel's source port is not the peer's).
#![cfg(feature = "dpdk")]

#[path = "common/dpdk_daemon.rs"]
mod dpdk_daemon;
use dpdk_daemon::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::spec::Endpoint;
use dataplane::wire::{HeaderTemplate, RtHeader, ETH_LEN, RTCHAN_UDP_PORT, UDP_LEN};

/// Real-time channels `a` opens to `b`.
const CHANNELS: usize = 2;
/// Frames the test makes per channel.
const FRAMES: usize = 20;

/// The memlink daemon `a`, the sending end of the channels.
fn peer_config(dir: &Path, port_a: u16, port_b: u16) -> String {
    format!(
        r#"socket = "{sock}"
[port]
link_rate_bps = 100000000
[policy]
idle = "sleep"
{peering}[[cores]]
tx_share_ppm = 500000
"#,
        peering = loopback_peering("a", port_a, "b", port_b),
        sock = dir.join("a.sock").display(),
    )
}

/// The DPDK daemon `b` on `device`, two cores.
fn dpdk_config(dir: &Path, device: &str, ip: &str, port_a: u16, port_b: u16) -> String {
    format!(
        r#"socket = "{sock}"
[port]
kind = "dpdk"
device = "{device}"
ip = "{ip}"
no_huge = true
eal_args = ["-m", "256"]
link_rate_bps = 100000000
[policy]
idle = "sleep"
{peering}[[cores]]
tx_share_ppm = 500000
[[cores]]
tx_share_ppm = 400000
"#,
        peering = loopback_peering("b", port_b, "a", port_a),
        sock = dir.join("b.sock").display(),
    )
}

/// A valid rtchan frame of `channel` (one fragment), addressed to UDP port 7447.
fn rtchan_frame(channel: u32, seq: u32) -> Vec<u8> {
    let t = HeaderTemplate::new(&Endpoint::default());
    let rt = RtHeader {
        channel,
        msg_seq: seq,
        frag_count: 1,
        frag_len: 4,
        msg_len: 4,
        ..RtHeader::default()
    };
    let mut f = vec![0u8; 128];
    let n = t.write_frame(&mut f, seq as u16, &rt, &seq.to_be_bytes());
    f.truncate(n);
    f
}

/// A classic pcap file (microsecond stamps, Ethernet) of `frames`.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for w in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for w in [1u32, i as u32, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

/// Opens the real-time channels from `a` to `b`: their ids and receiving cores on `b`.
fn open_channels(a: &DaemonProc) -> Result<Vec<(u32, u64)>, String> {
    (0..CHANNELS)
        .map(|_| {
            let r = ctl_json(
                &a.socket,
                &[
                    "channel",
                    "open",
                    "--mmax",
                    "64",
                    "--imin",
                    "10ms",
                    "--bmax",
                    "1",
                    "--deadline",
                    "50ms",
                    "--dst",
                    "b",
                ],
            )?;
            let id = r["id"].as_u64().ok_or(format!("no id in {r}"))?;
            let core = r["receiver"]["admitted"]["core"]
                .as_u64()
                .ok_or(format!("no receiver core in {r}"))?;
            Ok((id as u32, core))
        })
        .collect()
}

/// `b`'s port report, polled until `done` holds on it (at most 10 s); the last one.
fn port_until(
    b: &DaemonProc,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let t = Instant::now();
    loop {
        let p = ctl_json(&b.socket, &["stats", "--port"])?["dpdk"].clone();
        if done(&p) || t.elapsed() > Duration::from_secs(10) {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn queue(p: &serde_json::Value, core: u64) -> serde_json::Value {
    p["queues"][core as usize].clone()
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn pcap_port_refuses_rte_flow_and_hands_frames_to_the_owning_core() {
    let dir = tmpdir("dpdk-steer-pcap");
    let (port_a, port_b) = free_ports();
    // The channels' ids are the sender's first ones (a fresh daemon counts from 0); frames of
    // a few more ids than it opens keep the test independent of that detail up to a point,
    // and it checks below that the ids it got are among them.
    let ids: Vec<u32> = (0..4).collect();
    let frames: Vec<Vec<u8>> = (0..FRAMES as u32)
        .flat_map(|s| ids.iter().map(move |&c| rtchan_frame(c, s)))
        .collect();
    // Three queue pairs, one more than cores: the daemon tries rte_flow (net_pcap refuses
    // it) and goes back to two.
    let mut device = "net_pcap0,infinite_rx=1".to_owned();
    for q in 0..3 {
        let rx = dir.join(format!("rx{q}.pcap"));
        write_pcap(&rx, &frames);
        let tx = dir.join(format!("tx{q}.pcap"));
        device.push_str(&format!(
            ",rx_pcap={},tx_pcap={}",
            rx.display(),
            tx.display()
        ));
    }
    let mut b = DaemonProc::start(
        "b",
        &[],
        &dir,
        &dpdk_config(&dir, &device, "127.0.0.1", port_a, port_b),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut a = DaemonProc::start("a", &[], &dir, &peer_config(&dir, port_a, port_b))
        .unwrap_or_else(|e| panic!("{e}"));
    let run = (|| -> Result<(), String> {
        let chans = open_channels(&a)?;
        for &(id, _) in &chans {
            if !ids.contains(&id) {
                return Err(format!("channel id {id} is not among the frames' {ids:?}"));
            }
        }
        let owners: Vec<u64> = chans.iter().map(|c| c.1).collect();
        let p = port_until(&b, |p| {
            owners.iter().all(|&c| n(&queue(p, c)["handed_in"]) > 0)
        })?;
        eprintln!("channels (id, receiving core): {chans:?}\nport: {p}");
        if p["steering"] != "software" {
            return Err(format!("steering {}, not software", p["steering"]));
        }
        let detail = p["steering_detail"].as_str().unwrap_or_default();
        if !detail.contains("rte_flow_validate failed") {
            return Err(format!("no rte_flow refusal in '{detail}'"));
        }
        if !p["be_queue"].is_null() {
            return Err(format!("a best-effort queue without rules: {p}"));
        }
        for (core, q) in p["queues"]
            .as_array()
            .ok_or("no queues")?
            .iter()
            .enumerate()
        {
            if n(&q["rx_queue"]) != core as u64 {
                return Err(format!("core {core} reads RX queue {}", q["rx_queue"]));
            }
        }
        for &c in &owners {
            if n(&queue(&p, c)["handed_in"]) == 0 {
                return Err(format!("core {c} holds a receiver but was handed no frame"));
            }
        }
        let table = ctl(&b.socket, &["stats", "--port"])?;
        let table = String::from_utf8_lossy(&table.stdout);
        if !table.contains("receive steering [software]: software hand-off between cores") {
            return Err(format!("no steering line in:\n{table}"));
        }
        Ok(())
    })();
    let (sa, sb) = (a.stop(), b.stop());
    let log = b.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    run.unwrap_or_else(|e| panic!("{e}\n--- b ---\n{log}"));
    assert_eq!(sa, Ok(0));
    assert_eq!(sb, Ok(0), "{log}");
    assert!(
        log.contains("receive steering: software hand-off between cores (rte_flow refused: "),
        "{log}"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command; its stderr on failure.
fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

/// Whether the kernel has what net_tap's rte_flow is built on (its `tap_flow.c`): a `multiq`
/// root qdisc, the `flower` classifier and the `skbedit` action, tried on a tap of `ns`.
fn kernel_has_tap_flow(ns: &str) -> Result<(), String> {
    let dev = "rtprobe0";
    run(&["ip", "-n", ns, "tuntap", "add", "dev", dev, "mode", "tap"])?;
    let r = (|| {
        let tc = |args: &[&str]| {
            let mut c = vec!["ip", "netns", "exec", ns, "tc"];
            c.extend_from_slice(args);
            run(&c)
        };
        tc(&["qdisc", "add", "dev", dev, "root", "handle", "1:", "multiq"])?;
        tc(&["qdisc", "add", "dev", dev, "ingress"])?;
        tc(&[
            "filter",
            "add",
            "dev",
            dev,
            "parent",
            "ffff:",
            "protocol",
            "ip",
            "flower",
            "ip_proto",
            "udp",
            "dst_port",
            "7447",
            "action",
            "skbedit",
            "queue_mapping",
            "1",
        ])
    })();
    let _ = run(&["ip", "-n", ns, "link", "del", dev]);
    r
}

/// Sends each of `payloads` as one UDP datagram from the kernel of `ns` to `to:port`: bash's
/// `/dev/udp` with `cat` of a file holding the payload (one `write`, one datagram; `printf`
/// splits some payloads over two writes).
fn kernel_send(
    ns: &str,
    dir: &Path,
    to: &str,
    port: u16,
    payloads: &[Vec<u8>],
) -> Result<(), String> {
    let mut script = String::new();
    for (i, p) in payloads.iter().enumerate() {
        let f = dir.join(format!("dgram-{port}-{i}"));
        std::fs::write(&f, p).map_err(|e| e.to_string())?;
        script.push_str(&format!("cat '{}' > /dev/udp/{to}/{port}\n", f.display()));
    }
    run(&["ip", "netns", "exec", ns, "bash", "-c", &script])
}

#[test]
fn tap_port_steers_by_rte_flow_where_the_kernel_can_and_falls_back_where_not() {
    let test = "tap_port_steers";
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (a network namespace, a tap interface)");
        return;
    }
    if std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED {test}: RTCHAN_SKIP_NETNS is set");
        return;
    }
    let pid = std::process::id();
    let ns = Netns(format!("rtchan-steer-{pid}"));
    run(&["ip", "netns", "add", &ns.0]).unwrap_or_else(|e| panic!("{e}"));
    run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{e}"));
    let kernel = kernel_has_tap_flow(&ns.0);
    eprintln!("kernel support for net_tap's rte_flow: {kernel:?}");

    let dir = tmpdir("dpdk-steer-tap");
    let (port_a, port_b) = free_ports();
    let iface = format!("rst{}", pid % 100_000);
    let mac = "02:72:74:00:03:0b";
    let (ip_b, ip_k) = ("10.77.0.1", "10.77.0.2");
    let device = format!("net_tap0,iface={iface},mac={mac}");
    let exec = ["ip", "netns", "exec", ns.0.as_str()];
    let mut b = DaemonProc::start(
        "b",
        &exec,
        &dir,
        &dpdk_config(&dir, &device, ip_b, port_a, port_b),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut a = DaemonProc::start("a", &exec, &dir, &peer_config(&dir, port_a, port_b))
        .unwrap_or_else(|e| panic!("{e}"));
    let result = (|| -> Result<(), String> {
        // The kernel's side of the tap: an address, and the daemon's MAC for its address.
        run(&[
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{ip_k}/24"),
            "dev",
            &iface,
        ])?;
        run(&["ip", "-n", &ns.0, "link", "set", &iface, "up"])?;
        run(&[
            "ip", "-n", &ns.0, "neigh", "replace", ip_b, "lladdr", mac, "dev", &iface,
        ])?;
        let chans = open_channels(&a)?;
        let owners: std::collections::BTreeSet<u64> = chans.iter().map(|c| c.1).collect();
        let before = ctl_json(&b.socket, &["stats", "--port"])?["dpdk"].clone();
        // The UDP payload of an rtchan frame: what follows its UDP header.
        let l4 = ETH_LEN + 20 + UDP_LEN;
        let rtchan: Vec<Vec<u8>> = (0..FRAMES as u32)
            .flat_map(|s| {
                chans
                    .iter()
                    .map(move |c| rtchan_frame(c.0, s + 1)[l4..].to_vec())
            })
            .collect();
        let other: Vec<Vec<u8>> = (0..FRAMES).map(|i| vec![i as u8; 32]).collect();
        kernel_send(&ns.0, &dir, ip_b, 9, &other)?;
        kernel_send(&ns.0, &dir, ip_b, RTCHAN_UDP_PORT, &rtchan)?;
        let sent = rtchan.len() as u64;
        let rx = |p: &serde_json::Value, q: u64| -> u64 {
            p["queues"].as_array().map_or(0, |v| {
                v.iter()
                    .filter(|x| n(&x["rx_queue"]) == q)
                    .map(|x| n(&x["rx_packets"]))
                    .sum()
            })
        };
        eprintln!("channels (id, receiving core): {chans:?}");
        match kernel {
            Ok(()) => {
                // Rules steer: net_tap matches the UDP port, not the channel (no RAW item).
                let owner = *owners.iter().next().ok_or("no channel")?;
                if owners.len() != 1 {
                    // Admission spread two small channels over both cores: the port rule
                    // follows the first core with most, the other's frames are handed off.
                    eprintln!("receivers on cores {owners:?}");
                }
                let p = port_until(&b, |p| {
                    rx(p, owner + 1) - rx(&before, owner + 1) >= sent
                        && n(&p["be_rx_packets"]) >= FRAMES as u64
                })?;
                eprintln!("port: {p}");
                if p["steering"] != "flow-port" {
                    return Err(format!("steering {}, not flow-port: {p}", p["steering"]));
                }
                if p["be_queue"] != 0 {
                    return Err(format!("best-effort queue {}, not 0", p["be_queue"]));
                }
                let got = rx(&p, owner + 1) - rx(&before, owner + 1);
                if got < sent {
                    return Err(format!(
                        "core {owner}'s RX queue {} received {got} of {sent} rtchan frames",
                        owner + 1
                    ));
                }
                if owners.len() == 1 {
                    for q in p["queues"].as_array().ok_or("no queues")? {
                        if n(&q["handed_in"]) != 0 {
                            return Err(format!("frames handed off with rules steering: {q}"));
                        }
                    }
                }
                if n(&p["be_rx_packets"]) < FRAMES as u64 {
                    return Err(format!(
                        "best-effort queue received {} of the {FRAMES} other datagrams",
                        p["be_rx_packets"]
                    ));
                }
            }
            Err(why) => {
                eprintln!("no rte_flow in this kernel ({why}): the fallback is checked");
                let p = port_until(&b, |p| {
                    rx(p, 0) + rx(p, 1) - rx(&before, 0) - rx(&before, 1) >= sent
                })?;
                eprintln!("port: {p}");
                if p["steering"] != "software" {
                    return Err(format!("steering {}, not software: {p}", p["steering"]));
                }
                let detail = p["steering_detail"].as_str().unwrap_or_default();
                if !detail.contains("rte_flow") {
                    return Err(format!("no rte_flow refusal in '{detail}'"));
                }
                let got = rx(&p, 0) + rx(&p, 1) - rx(&before, 0) - rx(&before, 1);
                if got < sent {
                    return Err(format!("the port received {got} of {sent} rtchan frames"));
                }
                // The kernel picks a tap queue by flow hash, and every datagram comes from
                // its own source port: with receivers on both cores some frames land on the
                // other core's queue (all 40 on the right ones: odds 2^-40) and are handed.
                let handed: u64 = (0..2).map(|c| n(&queue(&p, c)["handed_in"])).sum();
                if owners.len() == 2 && handed == 0 {
                    return Err(format!("no frame handed between the cores: {p}"));
                }
            }
        }
        // Whatever steered them, every frame of a channel reached the receive path of the
        // core holding its receiver (only that core sees the channel): delivered, or rejected
        // for its source (the kernel's ephemeral UDP port and address are not the peer's).
        let t = Instant::now();
        loop {
            let st = ctl_json(&b.socket, &["stats"])?;
            let seen = |id: u32| -> u64 {
                let Some(c) = st.as_array().and_then(|v| v.iter().find(|c| c["id"] == id)) else {
                    return 0;
                };
                let rx = &c["rx"];
                let rejected: u64 = rx["rejected"].as_object().map_or(0, |m| {
                    m.values().filter_map(serde_json::Value::as_u64).sum()
                });
                rx["delivered"].as_u64().unwrap_or(0) + rejected
            };
            let counts: Vec<u64> = chans.iter().map(|c| seen(c.0)).collect();
            if counts.iter().all(|&c| c >= FRAMES as u64) {
                if counts.iter().any(|&c| c != FRAMES as u64) {
                    return Err(format!(
                        "receivers saw {counts:?} frames, sent {FRAMES} each"
                    ));
                }
                eprintln!("each receiver's core saw its channel's {FRAMES} frames: {st}");
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let list = ctl_json(&b.socket, &["channel", "list"])?;
                return Err(format!(
                    "receivers saw {counts:?} of their {FRAMES} frames each: {st}; rejected \
                     by the receive paths: {}",
                    list["receive_rejected"]
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    let (sa, sb) = (a.stop(), b.stop());
    let log = b.log_text();
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|e| panic!("{e}\n--- b ---\n{log}"));
    assert_eq!(sa, Ok(0));
    assert_eq!(sb, Ok(0), "{log}");
}
