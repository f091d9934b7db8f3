//! One ledger per polling core (feature `dpdk`): a DPDK daemon's core both sends and receives,
//! so the channels it sends on that core leave its receive side only what is left of the
//! core, and closing them gives it back (`src/daemon/controller/ledger.rs`,
//! docs/admission.md §4 "One core, one ledger").
//!
//! Daemon `b` runs one core on a `net_null` vdev with CPU costs that make the core the only
//! resource that binds (every channel one packet per 2 ms at 200 µs of CPU on each side, the
//! link far from full). Daemon `a` (memlink) is its peer. The test counts how many channels
//! `a` can open to `b` before `b`'s receiving side refuses: with `b` sending nothing, then
//! with `b` sending four channels of its own to `a` on that core, then with those closed
//! again. No frame needs to arrive: this is what admission books.
#![cfg(feature = "dpdk")]

#[path = "common/dpdk_daemon.rs"]
mod dpdk_daemon;
use dpdk_daemon::*;

use std::path::Path;

/// Channels `b` sends to `a` in the middle phase.
const B_SENDS: usize = 4;
/// More than the core could ever hold: the count stops at the first refusal.
const MOST: usize = 20;

/// The memlink daemon `a`.
fn a_config(dir: &Path, port_a: u16, port_b: u16) -> String {
    format!(
        r#"socket = "{sock}"
[port]
link_rate_bps = 1000000000
[policy]
idle = "sleep"
[peering]
name = "a"
listen = "127.0.0.1:{port_a}"
[[peers]]
name = "b"
address = "127.0.0.1:{port_b}"
network_bound = "1ms"
[[cores]]
"#,
        sock = dir.join("a.sock").display(),
    )
}

/// The DPDK daemon `b`: one core that sends and receives, 200 µs of CPU per one-packet
/// message on either side (per message and per packet 100 µs each). The RX burst covers 32
/// frames at those receive costs (6.4 ms), so the service phase needs a long interval:
/// 64 ms charges it as 10 % of the core, the default TX stages (0.5 µs every 4 µs) 12.5 %;
/// the 5 % reserve leaves 72.5 % for channels at 10 % each.
fn b_config(dir: &Path, port_a: u16, port_b: u16) -> String {
    format!(
        r#"socket = "{sock}"
[port]
kind = "dpdk"
device = "net_null0"
ip = "10.9.0.2"
no_huge = true
eal_args = ["-m", "256"]
link_rate_bps = 1000000000
[policy]
idle = "sleep"
service_interval = "64ms"
[cost]
per_message_ns = 100000
per_packet_ns = 100000
best_effort_run_ns = 500000
rx_burst_ns = 6400000
[rx_cost]
per_message_ns = 100000
per_packet_ns = 100000
[peering]
name = "b"
listen = "127.0.0.1:{port_b}"
[[peers]]
name = "a"
address = "127.0.0.1:{port_a}"
network_bound = "1ms"
mac = "02:00:00:00:00:0a"
data_ip = "10.9.0.1"
[[cores]]
"#,
        sock = dir.join("b.sock").display(),
    )
}

/// Opens a one-packet real-time channel from `from` to `dst`; its id, or the refusal.
fn open(from: &DaemonProc, dst: &str) -> Result<u32, String> {
    let r = ctl_json(
        &from.socket,
        &[
            "channel",
            "open",
            "--mmax",
            "1000",
            "--imin",
            "2ms",
            "--bmax",
            "1",
            "--deadline",
            "1s",
            "--dst",
            dst,
        ],
    )?;
    r["id"]
        .as_u64()
        .map(|id| id as u32)
        .ok_or_else(|| format!("no id in {r}"))
}

fn close(from: &DaemonProc, id: u32) {
    ctl_json(&from.socket, &["channel", "close", &id.to_string()])
        .unwrap_or_else(|e| panic!("close {id}: {e}"));
}

/// Opens channels `a` → `b` until `b` refuses; their ids, and the refusal's text.
fn fill(a: &DaemonProc) -> (Vec<u32>, String) {
    let mut ids = Vec::new();
    for _ in 0..MOST {
        match open(a, "b") {
            Ok(id) => ids.push(id),
            Err(e) => return (ids, e),
        }
    }
    panic!("{MOST} channels fitted: the core does not bind");
}

#[test]
fn a_core_that_sends_and_receives_is_booked_once() {
    let dir = tmpdir("one-ledger");
    let (port_a, port_b) = free_ports();
    let b = DaemonProc::start("b", &[], &dir, &b_config(&dir, port_a, port_b))
        .unwrap_or_else(|e| panic!("{e}"));
    let a = DaemonProc::start("a", &[], &dir, &a_config(&dir, port_a, port_b))
        .unwrap_or_else(|e| panic!("{e}"));

    // b sends nothing: its receiving side takes what the core holds.
    let (alone, why) = fill(&a);
    assert!(
        why.contains("receiving host 'b'") && why.contains("CPU"),
        "the receiver's core refuses: {why}"
    );
    assert!(
        alone.len() > B_SENDS,
        "{} channels fitted alone",
        alone.len()
    );
    for &id in &alone {
        close(&a, id);
    }

    // b sends B_SENDS channels on the same core: its receive side has that much less.
    let sent: Vec<u32> = (0..B_SENDS)
        .map(|_| open(&b, "a").unwrap_or_else(|e| panic!("b's own channel: {e}")))
        .collect();
    let (shared, why) = fill(&a);
    assert!(why.contains("receiving host 'b'"), "{why}");
    assert_eq!(
        shared.len(),
        alone.len() - B_SENDS,
        "each channel b sends takes one receiving channel's share of the core \
         ({} alone, {} beside b's {B_SENDS})",
        alone.len(),
        shared.len()
    );
    for &id in &shared {
        close(&a, id);
    }

    // Closed, b's channels leave the core to its receive side again.
    for &id in &sent {
        close(&b, id);
    }
    let (again, _) = fill(&a);
    assert_eq!(
        again.len(),
        alone.len(),
        "the shared bookings were taken back"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
