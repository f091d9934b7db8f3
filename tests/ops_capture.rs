//! `rtchanctl capture` against a running `rtchand` (in-memory link, loopback channels):
//! - the frames a client sends on one channel, while another channel's source runs, are all in
//!   the pcapng file once as sent (interface `tx0`, outbound) and once as received (`rx0`,
//!   inbound), and `tshark` with the project's dissector reads every header field and payload
//!   byte back as sent; the other channel's frames are filtered out;
//! - the traffic is not disturbed: every message delivered, none lost, and any deadline miss
//!   is excused only by measured OS preemption of the daemon's polling threads during it;
//! - a ring too small for the traffic counts dropped copies, while every message still
//!   arrives, and every copy the cores made is in the file;
//! - bad input gets a clear error and disturbs nothing: an unwritable file, `--count 0`, an
//!   unknown channel, a daemon with captures off.
//!
//! Needs `tshark` (Debian package `tshark`); prints SKIPPED when it is missing outside CI.

#[path = "common/ops_daemon.rs"]
mod ops_daemon;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::protocol::{ChannelInfo, ChannelStatsInfo};
use ops_daemon::{ctl, ctl_json, Daemon, CTL, STEP};
use rtchan::client::{Client, OpenSpec};
use rtchan::preemption::{MissLog, PreemptionProbe};

const DISSECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/wireshark/rtchan.lua");
/// Payload bytes per packet at the default 1500-byte MTU (IPv4, UDP and rtchan headers out).
const PER_PACKET: usize = 1500 - 20 - 8 - 40;

fn start(name: &str, capture: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("rtchan-cap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("rtchand.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"socket = "{}/ctl.sock"
[policy]
idle = "sleep"
idle_sleep = "200us"
# The capture copies make the service phase 3 + 32 x 0.4 us longer (docs/admission.md §10):
# a core that admits channels beside it runs the phase less often than every 20 us.
service_interval = "100us"
[cost]
per_message_ns = 2000
per_packet_ns = 1000
best_effort_run_ns = 6000
link_rate_bps = 1000000000
{capture}
"#,
            dir.display()
        ),
    )
    .unwrap();
    Daemon::spawn(dir, &cfg)
}

fn stats(socket: &Path, id: u32) -> ChannelStatsInfo {
    let v: Vec<ChannelStatsInfo> = ctl_json(socket, &["stats", &id.to_string()]);
    v.into_iter().next().unwrap()
}

/// Starts `rtchanctl capture ARGS` and waits until it says the cores are armed.
fn capture(socket: &Path, args: &[&str]) -> Child {
    let mut c = Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .arg("capture")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("capturing on"), "rtchanctl capture: {line}");
    c
}

/// Waits for `c` to exit (at most STEP); its exit status and stdout.
fn finish(mut c: Child) -> (i32, String) {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut out).unwrap();
            return (st.code().unwrap_or(-1), out);
        }
        assert!(t.elapsed() < STEP, "rtchanctl capture did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tshark(capture: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-X")
        .arg(format!("lua_script:{DISSECTOR}"))
        .arg("-r")
        .arg(capture)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("Lua: Error"),
        "tshark failed ({}): {err}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

fn have_tshark() -> bool {
    if Command::new("tshark").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tshark not available in CI: install the Debian package tshark"
    );
    eprintln!("SKIPPED capture test: tshark not found (Debian package tshark)");
    false
}

/// Message `seq`'s bytes: its length and contents follow from `seq` alone.
fn message(seq: u32) -> Vec<u8> {
    let len = 200 + (seq as usize * 677) % 3200;
    (0..len)
        .map(|i| (i as u32 ^ seq.wrapping_mul(31)) as u8)
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends `n` messages on a new local channel through the client library, spaced by `gap`.
fn send(socket: &Path, n: u32, gap: Duration) -> (Client, u32) {
    let c = Client::connect(socket).unwrap();
    let mut s = c
        .open(&OpenSpec::new(
            4096,
            Duration::from_millis(2),
            4,
            Duration::from_millis(50),
        ))
        .unwrap();
    let id = s.id();
    for seq in 0..n {
        s.send_timeout(&message(seq), STEP).unwrap();
        std::thread::sleep(gap);
    }
    std::mem::forget(s); // keep the channel open until the daemon stops
    (c, id)
}

#[test]
fn frames_sent_and_received_are_captured_as_sent_without_disturbing_traffic() {
    if !have_tshark() {
        return;
    }
    let d = start("frames", "[capture]\nenabled = true\n");
    let probe = PreemptionProbe::start().unwrap();
    let pid = d.child.as_ref().unwrap().id();
    probe.watch_threads_of(pid, "rtchan-core").unwrap();
    // Another channel's traffic runs meanwhile; the filter keeps it out of the file.
    let other: ChannelInfo = ctl_json(
        &d.socket,
        &[
            "channel",
            "open",
            "--mmax",
            "1000",
            "--imin",
            "1ms",
            "--bmax",
            "2",
            "--deadline",
            "50ms",
            "--dst",
            "local",
            "--source",
            "periodic",
        ],
    );
    let c = Client::connect(&d.socket).unwrap();
    let mut s = c
        .open(&OpenSpec::new(
            4096,
            Duration::from_millis(2),
            4,
            Duration::from_millis(50),
        ))
        .unwrap();
    let id = s.id();
    const N: u32 = 30;
    let frames: u32 = (0..N)
        .map(|q| message(q).len().div_ceil(PER_PACKET) as u32)
        .sum();
    let file = d.dir.join("cap.pcapng");
    let count = (2 * frames).to_string();
    let cap = capture(
        &d.socket,
        &[
            "--channel",
            &id.to_string(),
            "--count",
            &count,
            "--duration",
            "15s",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    for seq in 0..N {
        s.send_timeout(&message(seq), STEP).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let (code, out) = finish(cap);
    assert_eq!(code, 0, "rtchanctl capture: {out}");
    assert!(out.starts_with(&format!("{count} frames written")), "{out}");

    let rows = tshark(
        &file,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "rtchan.channel",
            "rtchan.seq",
            "rtchan.frag_index",
            "rtchan.frag_count",
            "rtchan.msg_len",
            "rtchan.frag_offset",
            "rtchan.payload",
        ],
    );
    assert_eq!(rows.len(), 2 * frames as usize);
    // (interface, seq, fragment) -> times seen.
    let mut seen: BTreeMap<(String, u32, u32), u32> = BTreeMap::new();
    for r in &rows {
        let (iface, dir) = (&r[0], &r[1]);
        let want_dir = if iface == "tx0" { "0x2" } else { "0x1" };
        assert!(iface == "tx0" || iface == "rx0", "{r:?}");
        assert!(dir.ends_with(&want_dir[2..]), "direction of {r:?}");
        assert_eq!(r[2], id.to_string(), "only the filtered channel: {r:?}");
        let seq: u32 = r[3].parse().unwrap();
        let frag: u32 = r[4].parse().unwrap();
        let msg = message(seq);
        assert_eq!(
            r[5].parse::<usize>().unwrap(),
            msg.len().div_ceil(PER_PACKET)
        );
        assert_eq!(r[6].parse::<usize>().unwrap(), msg.len());
        let off: usize = r[7].parse().unwrap();
        assert_eq!(off, frag as usize * PER_PACKET);
        let end = (off + PER_PACKET).min(msg.len());
        assert_eq!(
            r[8].replace(':', ""),
            hex(&msg[off..end]),
            "payload of message {seq} fragment {frag} on {iface}"
        );
        *seen.entry((iface.clone(), seq, frag)).or_default() += 1;
    }
    for iface in ["tx0", "rx0"] {
        for seq in 0..N {
            for frag in 0..message(seq).len().div_ceil(PER_PACKET) as u32 {
                assert_eq!(
                    seen.get(&(iface.to_string(), seq, frag)),
                    Some(&1),
                    "message {seq} fragment {frag} once on {iface}"
                );
            }
        }
    }

    // The traffic went on as if nothing was captured.
    let t = Instant::now();
    let rx = loop {
        let rx = stats(&d.socket, id).rx.unwrap();
        if rx.delivered == u64::from(N) || t.elapsed() > STEP {
            break rx;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((rx.delivered, rx.lost), (u64::from(N), 0));
    let other_rx = stats(&d.socket, other.id).rx.unwrap();
    assert!(other_rx.delivered > 0);
    assert_eq!(other_rx.lost, 0);
    let mut log = MissLog::with_capacity(4096);
    for m in rx.recent_misses.iter().chain(&other_rx.recent_misses) {
        log.record(m.submit, m.deadline, m.delivered);
    }
    log.unrecorded = rx.older_misses + other_rx.older_misses;
    let verdict = probe.finish().verdict(&log);
    println!(
        "{} + {} deadline misses: {verdict}",
        rx.deadline_misses, other_rx.deadline_misses
    );
    assert_eq!(verdict.unexcused, 0, "{verdict}");
    drop(c);
}

#[test]
fn a_full_ring_counts_dropped_copies_and_the_traffic_goes_on() {
    let d = start("drops", "[capture]\nenabled = true\nslots = 4\n");
    let file = d.dir.join("drops.pcapng");
    let cap = capture(
        &d.socket,
        &[
            "--duration",
            "2s",
            "--json",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    // 40 messages of 3 frames each in quick bursts: far more than 4 slots between two takes.
    let (_c, id) = send(&d.socket, 40, Duration::from_micros(100));
    let (code, out) = finish(cap);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (frames, copied, dropped) = (
        v["frames"].as_u64().unwrap(),
        v["copied"].as_u64().unwrap(),
        v["dropped"].as_u64().unwrap(),
    );
    println!("capture with 4 slots: {frames} frames written, {copied} copied, {dropped} dropped");
    assert!(dropped > 0, "a 4-slot ring under bursts must drop copies");
    assert_eq!(frames, copied, "every copy the cores made is in the file");
    let t = Instant::now();
    let rx = loop {
        let rx = stats(&d.socket, id).rx.unwrap();
        if rx.delivered == 40 || t.elapsed() > STEP {
            break rx;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (rx.delivered, rx.lost),
        (40, 0),
        "dropped copies, never traffic"
    );
}

#[test]
fn bad_input_is_named_and_disturbs_nothing() {
    let d = start("bad", "[capture]\nenabled = true\n");
    let (_c, id) = send(&d.socket, 1, Duration::ZERO);
    let run = |args: &[&str]| {
        let mut a = vec!["capture"];
        a.extend_from_slice(args);
        let o = ctl(&d.socket, &a);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let ok_file = d.dir.join("x.pcapng");
    let ok = ok_file.to_str().unwrap();
    let (code, err) = run(&["--out", "/nonexistent-dir/x.pcapng", "--count", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot write the capture file /nonexistent-dir/x.pcapng"),
        "{err}"
    );
    let (code, err) = run(&["--out", ok, "--count", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--count 0"), "{err}");
    let (code, err) = run(&["--out", ok, "--count", "1", "--channel", "999"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("999"), "{err}");
    assert!(!ok_file.exists(), "a refused capture leaves no file behind");
    // Nothing else was disturbed: the daemon answers and the channel is there and intact.
    let rx = stats(&d.socket, id).rx.unwrap();
    assert_eq!((rx.delivered, rx.lost), (1, 0));
    // A capture after all that works (no capture was left armed).
    let cap = capture(&d.socket, &["--duration", "200ms", "--out", ok]);
    assert_eq!(finish(cap).0, 0);

    let off = start("off", "");
    let o = ctl(&off.socket, &["capture", "--count", "1", "--out", ok]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("capture.enabled") || err.contains("captures are off"),
        "{err}"
    );
}
