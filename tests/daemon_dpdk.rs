//! `rtchand` on `[port] kind = "dpdk"` (feature `dpdk`): every bad `[port]` value is refused
//! with an error naming its key before the daemon serves anything (so before any channel is
//! admitted), and a good one brings up one TX/RX queue pair per `[[cores]]` entry.
//!
//! Each case is its own `rtchand` process: DPDK's EAL can be initialised once per process.
//! The vdevs (`net_null`, `net_pcap`) need no NIC, no hugepages (`no_huge`) and no root.
#![cfg(feature = "dpdk")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const DAEMON: &str = env!("CARGO_BIN_EXE_rtchand");
const CTL: &str = env!("CARGO_BIN_EXE_rtchanctl");

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-daemon-dpdk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config for a DPDK daemon on `device` with one `[[cores]]` entry per share, `extra` keys
/// appended to `[port]`.
fn config(dir: &Path, device: &str, extra: &str, shares: &[u32]) -> String {
    let mut s = format!(
        "socket = \"{}\"\nstate_file = \"{}\"\n[port]\nkind = \"dpdk\"\ndevice = \"{device}\"\n\
         ip = \"10.9.0.1\"\nno_huge = true\nlink_rate_bps = 100000000\n{extra}\n",
        dir.join("sock").display(),
        dir.join("state.json").display()
    );
    if !extra.contains("eal_args") {
        s.push_str("eal_args = [\"-m\", \"256\"]\n");
    }
    for sh in shares {
        s.push_str(&format!("[[cores]]\ntx_share_ppm = {sh}\n"));
    }
    s
}

/// Runs `rtchand --config` on `text` until it exits (at most 30 s), returning its output.
fn run_daemon(dir: &Path, name: &str, text: &str) -> Output {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The daemon must refuse `text` with exit status 2 and a message starting with `key`,
/// without ever creating its control socket.
fn refused(dir: &Path, name: &str, text: &str, key: &str, words: &str) {
    let out = run_daemon(dir, name, text);
    let err = String::from_utf8_lossy(&out.stderr);
    // The line may carry a timestamp and level before "rtchand: ".
    let line = err
        .lines()
        .find_map(|l| l.split_once("rtchand: ").map(|(_, m)| m))
        .unwrap_or_else(|| panic!("{name}: no rtchand error line in:\n{err}"));
    assert_eq!(out.status.code(), Some(2), "{name}: {line}");
    let msg = line.trim_start_matches("configuration: ");
    assert!(
        msg.starts_with(key),
        "{name}: wanted key {key}, got: {line}"
    );
    assert!(msg.contains(words), "{name}: wanted '{words}' in: {line}");
    assert!(
        !dir.join("sock").exists(),
        "{name}: the daemon served its socket before refusing"
    );
}

#[test]
fn bad_port_values_are_refused_naming_the_key() {
    let dir = tmpdir("bad");
    let shares = [500_000, 400_000];
    refused(
        &dir,
        "unknown-device",
        &config(&dir, "net_bogus0", "", &shares),
        "port.device",
        "net_bogus0",
    );
    refused(
        &dir,
        "bad-vdev-args",
        &config(&dir, "net_pcap0,rx_pcap=/nonexistent/x.pcap", "", &shares),
        "port.device",
        "net_pcap0",
    );
    refused(
        &dir,
        "pci-not-bound",
        &config(&dir, "0000:ff:1f.7", "", &shares),
        "port.device",
        "vfio-pci",
    );
    refused(
        &dir,
        "eal-failure",
        &config(
            &dir,
            "net_null0",
            "eal_args = [\"-m\", \"256\", \"--bogus\"]",
            &shares,
        ),
        "port.eal_args",
        "--bogus",
    );
    refused(
        &dir,
        "eal-out-of-memory",
        &config(&dir, "net_null0", "eal_args = [\"-m\", \"8\"]", &shares),
        "port.eal_args",
        "mbuf pool",
    );
    let pcap = dir.join("one.pcap");
    refused(
        &dir,
        "too-many-queues",
        &config(
            &dir,
            &format!("net_pcap0,tx_pcap={}", pcap.display()),
            "",
            &shares,
        ),
        "cores",
        "at most 1 TX",
    );
    refused(
        &dir,
        "share-sum",
        &config(&dir, "net_null0", "", &[600_000, 500_000]),
        "cores[].tx_share_ppm",
        "110.0 %",
    );
    refused(
        &dir,
        "no-device",
        &config(&dir, "", "", &shares),
        "port.device",
        "required",
    );
    refused(
        &dir,
        "rtchand-owned-eal-arg",
        &config(&dir, "net_null0", "eal_args = [\"--in-memory\"]", &shares),
        "port.eal_args[0]",
        "port.file_prefix",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn good_port_brings_up_one_queue_pair_per_core() {
    let dir = tmpdir("good");
    let path = dir.join("good.toml");
    std::fs::write(
        &path,
        config(&dir, "net_null0", "", &[500_000, 300_000, 100_000]),
    )
    .unwrap();
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.join("sock");
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(20) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("rtchand exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let policy = ctl(&sock, &["--json", "policy", "show"]);
    let port = ctl(&sock, &["--json", "stats", "--port"]);
    let table = ctl(&sock, &["stats", "--port"]);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(policy.status.success(), "policy show: {policy:?}\n{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    // EAL's runtime directory of the daemon's own prefix is gone with it.
    let runtime = rtchan::ports::dpdk::runtime_root().join(format!("rtchan-{pid}"));
    assert!(
        !runtime.exists(),
        "{} left behind\n{err}",
        runtime.display()
    );
    assert!(
        err.contains("net_null0 (net_null): 3 TX/RX queue pair(s)"),
        "{err}"
    );
    let port: serde_json::Value = serde_json::from_slice(&port.stdout).unwrap();
    let d = &port["result"]["dpdk"];
    assert_eq!(port["result"]["kind"], "dpdk", "{port}");
    assert_eq!(d["driver"], "net_null", "{port}");
    assert_eq!(d["name"], "net_null0", "{port}");
    let queues = d["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 3, "{port}");
    for (i, q) in queues.iter().enumerate() {
        assert_eq!(q["queue"], i, "{port}");
        assert_eq!(q["handoff_dropped"], 0, "{port}");
    }
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("port dpdk net_null0 (net_null)"), "{table}");
    let report = String::from_utf8_lossy(&out.stdout);
    for c in 0..3 {
        assert!(report.contains(&format!("core {c}:")), "{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon killed before EAL cleanup leaves `rtchan-<pid>`; the next daemon removes such
/// directories of processes that are gone, and nothing else.
#[test]
fn stale_runtime_directories_of_dead_daemons_are_removed() {
    let root = tmpdir("runtime-root");
    let dead = (4_000_000u32..)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let mine = std::process::id();
    for name in [
        format!("rtchan-{dead}"),
        format!("rtchan-{mine}"),
        "rtchan-abc".to_owned(),
        format!("other-{dead}"),
    ] {
        std::fs::create_dir_all(root.join(&name)).unwrap();
    }
    std::fs::write(root.join(format!("rtchan-{dead}/dpdk_telemetry.v2")), b"").unwrap();
    assert_eq!(rtchan::ports::dpdk::remove_stale_runtime_dirs(&root), 1);
    assert!(!root.join(format!("rtchan-{dead}")).exists());
    for kept in [
        format!("rtchan-{mine}"),
        "rtchan-abc".to_owned(),
        format!("other-{dead}"),
    ] {
        assert!(root.join(&kept).exists(), "{kept} was removed");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[path = "common/dpdk_daemon.rs"]
mod dpdk_daemon;

/// The telemetry endpoints answer over DPDK's telemetry socket with the channel table: a
/// daemon on `net_null` (file prefix of its own) sending on core 1 to a memlink peer; the
/// socket is queried the way `dpdk-telemetry.py` does (SOCK_SEQPACKET: greeting, command,
/// reply), with python3.
#[test]
fn telemetry_endpoints_answer_with_the_channel_table() {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root || Command::new("python3").arg("-V").output().is_err() {
        eprintln!("SKIPPED telemetry test: needs root (/var/run/dpdk) and python3");
        return;
    }
    let dir = tmpdir("tel");
    let pid = std::process::id();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pa, pb) = (free(), free());
    let b_cfg = format!(
        "socket = \"{}\"\n[peering]\nname = \"b\"\nlisten = \"127.0.0.1:{pb}\"\n[[peers]]\n\
         name = \"a\"\naddress = \"127.0.0.1:{pa}\"\nnetwork_bound = \"1ms\"\n",
        dir.join("b.sock").display()
    );
    let prefix = format!("rtchan-tel-{pid}");
    let a_cfg = format!(
        "socket = \"{}\"\n[port]\nkind = \"dpdk\"\ndevice = \"net_null0\"\nip = \"10.9.0.1\"\n\
         no_huge = true\nfile_prefix = \"{prefix}\"\neal_args = [\"-m\", \"256\"]\n\
         link_rate_bps = 100000000\n[policy]\nidle = \"sleep\"\n[peering]\nname = \"a\"\n\
         listen = \"127.0.0.1:{pa}\"\n[[peers]]\nname = \"b\"\naddress = \"127.0.0.1:{pb}\"\n\
         network_bound = \"1ms\"\nmac = \"02:00:00:00:00:0b\"\n[[cores]]\ntx_share_ppm = 500000\n\
         [[cores]]\ntx_share_ppm = 400000\n",
        dir.join("a.sock").display()
    );
    let mut b = dpdk_daemon::DaemonProc::start("b", &[], &dir, &b_cfg).unwrap();
    let mut a = dpdk_daemon::DaemonProc::start("a", &[], &dir, &a_cfg).unwrap();
    let opened = dpdk_daemon::ctl_json(
        &a.socket,
        &[
            "channel",
            "open",
            "--mmax",
            "1000",
            "--imin",
            "2ms",
            "--bmax",
            "4",
            "--deadline",
            "20ms",
            "--dst",
            "b",
            "--core",
            "1",
            "--source",
            "periodic",
        ],
    )
    .unwrap();
    let id = opened["id"].as_u64().unwrap();
    // Two publication periods and some traffic.
    std::thread::sleep(Duration::from_millis(700));
    let sock = format!("/var/run/dpdk/{prefix}/dpdk_telemetry.v2");
    let script = format!(
        "import socket, json, sys\n\
         out = {{}}\n\
         for cmd in ['/rtchan/channels', '/rtchan/channel,{id}', '/rtchan/cores', '/rtchan/channel,999999']:\n\
         \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
         \x20   s.connect('{sock}')\n\
         \x20   json.loads(s.recv(4096))\n\
         \x20   s.send(cmd.encode())\n\
         \x20   out[cmd] = json.loads(s.recv(1 << 20))\n\
         \x20   s.close()\n\
         print(json.dumps(out))\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let _ = a.stop();
    let _ = b.stop();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t = &v["/rtchan/channels"]["/rtchan/channels"];
    assert_eq!(t["channels"], 1, "{v}");
    assert_eq!(t["id"], serde_json::json!([id]), "{v}");
    assert_eq!(t["direction"], serde_json::json!(["out"]), "{v}");
    assert_eq!(t["peer"], serde_json::json!(["b"]), "{v}");
    assert!(t["sent"][0].as_u64().unwrap() > 0, "{v}");
    let c = &v[format!("/rtchan/channel,{id}").as_str()]["/rtchan/channel"];
    assert_eq!(c["id"], id, "{v}");
    assert!(
        c["submitted"].as_u64().unwrap() >= c["sent"].as_u64().unwrap(),
        "{v}"
    );
    let cores = &v["/rtchan/cores"]["/rtchan/cores"];
    assert_eq!(cores["core"], serde_json::json!([0, 1]), "{v}");
    // Core 1 sends the channel: its TX queue counted packets, core 0's none.
    assert_eq!(cores["tx_packets"][0], 0, "{v}");
    assert!(cores["tx_packets"][1].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["/rtchan/channel,999999"]["/rtchan/channel"].is_null(),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
}
