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
    let line = err
        .lines()
        .find(|l| l.starts_with("rtchand: "))
        .unwrap_or_else(|| panic!("{name}: no rtchand error line in:\n{err}"));
    assert_eq!(out.status.code(), Some(2), "{name}: {line}");
    let msg = line
        .trim_start_matches("rtchand: ")
        .trim_start_matches("configuration: ");
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
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(policy.status.success(), "policy show: {policy:?}\n{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
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
