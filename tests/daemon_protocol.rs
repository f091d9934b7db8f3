//! The control protocol against an in-process daemon on the in-memory link: a valid open,
//! then every kind of malformed or unauthorised request, each answered with a clear error
//! that leaves the daemon and its channels exactly as they were.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use control::config::DaemonConfig;
use control::protocol::{ChannelList, ErrorKind, Reply};
use rtchan::daemon::client::Client;
use rtchan::daemon::Daemon;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &Path, extra: &str) -> DaemonConfig {
    DaemonConfig::parse(&format!(
        r#"
socket = "{dir}/ctl.sock"
socket_mode = "0666"
read_group = "nogroup"
max_message = 65536
{extra}
[policy]
idle = "sleep"
idle_sleep = "200us"
[cost]
per_message_ns = 2000
per_packet_ns = 1000
best_effort_run_ns = 6000
link_rate_bps = 1000000000
"#,
        dir = dir.display()
    ))
    .unwrap()
}

fn raw(sock: &Path, line: &str) -> Reply {
    Client::connect(sock).unwrap().call_raw(line).unwrap()
}

fn list(sock: &Path) -> ChannelList {
    raw(sock, "{\"version\":1,\"request\":\"list\"}\n")
        .into_result()
        .unwrap()
}

const OPEN: &str = r#"{"version":1,"request":{"open":{"mmax":"1500","imin":"1ms","bmax":2,"deadline":"5ms","dst":"local"}}}"#;

/// Each malformed request, the error kind and a word its message must contain.
fn malformed() -> Vec<(&'static str, String, ErrorKind, &'static str)> {
    let open = |body: &str| format!(r#"{{"version":1,"request":{{"open":{{{body}}}}}}}"#);
    vec![
        (
            "unknown field",
            open(
                r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","colour":"red""#,
            ),
            ErrorKind::Invalid,
            "colour",
        ),
        (
            "unknown envelope field",
            r#"{"version":1,"request":"list","user":"x"}"#.into(),
            ErrorKind::Invalid,
            "user",
        ),
        (
            "unknown request",
            r#"{"version":1,"request":"frobnicate"}"#.into(),
            ErrorKind::Invalid,
            "frobnicate",
        ),
        (
            "wrong type",
            open(r#""mmax":1500,"imin":"1ms","bmax":"two","deadline":"5ms","dst":"local""#),
            ErrorKind::Invalid,
            "bmax",
        ),
        (
            "zero duration",
            open(r#""mmax":1500,"imin":0,"bmax":2,"deadline":"5ms","dst":"local""#),
            ErrorKind::Invalid,
            "imin",
        ),
        (
            "zero duration with unit",
            open(r#""mmax":1500,"imin":"0ms","bmax":2,"deadline":"5ms","dst":"local""#),
            ErrorKind::Invalid,
            "imin",
        ),
        (
            "negative duration",
            open(r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":-5,"dst":"local""#),
            ErrorKind::Invalid,
            "deadline",
        ),
        (
            "zero bmax",
            open(r#""mmax":1500,"imin":"1ms","bmax":0,"deadline":"5ms","dst":"local""#),
            ErrorKind::Invalid,
            "bmax",
        ),
        (
            "mmax beyond the maximum",
            open(r#""mmax":"1MiB","imin":"1ms","bmax":1,"deadline":"50ms","dst":"local""#),
            ErrorKind::Invalid,
            "mmax",
        ),
        (
            "deadline below an idle host",
            open(r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"25us","dst":"local""#),
            ErrorKind::Invalid,
            "deadline",
        ),
        (
            "deadline within the network bound",
            open(r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"10us","dst":"local""#),
            ErrorKind::Invalid,
            "network bound",
        ),
        (
            "unknown destination",
            open(r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"mars""#),
            ErrorKind::Invalid,
            "mars",
        ),
        (
            "unknown core",
            open(r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","core":7"#),
            ErrorKind::Invalid,
            "core",
        ),
        (
            "unknown policy",
            open(
                r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","policy":"drop-all""#,
            ),
            ErrorKind::Invalid,
            "drop-all",
        ),
        (
            "unknown source",
            open(
                r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","source":"flood""#,
            ),
            ErrorKind::Invalid,
            "flood",
        ),
        (
            "unknown channel id (close)",
            r#"{"version":1,"request":{"close":{"id":999}}}"#.into(),
            ErrorKind::NotFound,
            "999",
        ),
        (
            "unknown channel id (show)",
            r#"{"version":1,"request":{"show":{"id":999}}}"#.into(),
            ErrorKind::NotFound,
            "999",
        ),
        (
            "unknown channel id (stats)",
            r#"{"version":1,"request":{"stats":{"id":999}}}"#.into(),
            ErrorKind::NotFound,
            "999",
        ),
        (
            "unsupported version",
            r#"{"version":2,"request":"list"}"#.into(),
            ErrorKind::Invalid,
            "version",
        ),
        (
            "missing version",
            r#"{"request":"list"}"#.into(),
            ErrorKind::Invalid,
            "version",
        ),
        (
            "not JSON",
            "{\"version\":1,\"request\":".into(),
            ErrorKind::Protocol,
            "JSON",
        ),
        (
            "duplicate dry_run (the last one must not win)",
            open(
                r#""mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","dry_run":true,"dry_run":false"#,
            ),
            ErrorKind::Protocol,
            "duplicate key \"dry_run\"",
        ),
        (
            "two request keys",
            r#"{"version":1,"request":"list","request":{"close":{"id":0}}}"#.into(),
            ErrorKind::Protocol,
            "duplicate key \"request\"",
        ),
        (
            "not an object",
            "[1,2,3]".into(),
            ErrorKind::Protocol,
            "object",
        ),
        (
            "bad policy value",
            r#"{"version":1,"request":{"policy_set":{"granularity":0}}}"#.into(),
            ErrorKind::Invalid,
            "granularity",
        ),
    ]
}

#[test]
fn every_malformed_request_gets_a_clear_error_and_changes_nothing() {
    let dir = temp_dir("proto");
    let d = Daemon::start(config(&dir, "")).unwrap();
    let sock = d.socket.clone();
    let opened = raw(&sock, &format!("{OPEN}\n"));
    assert!(opened.ok, "{opened:?}");
    let before = list(&sock);
    assert_eq!(before.channels.len(), 1);
    let policy_before = raw(&sock, "{\"version\":1,\"request\":\"policy_show\"}\n");

    for (what, line, kind, word) in malformed() {
        let r = raw(&sock, &format!("{line}\n"));
        let e = r
            .error
            .unwrap_or_else(|| panic!("{what}: accepted: {line}"));
        assert_eq!(e.kind, kind, "{what}: {e:?}");
        assert!(
            e.message.contains(word),
            "{what}: message '{}' does not mention '{word}'",
            e.message
        );
        assert_eq!(list(&sock), before, "{what} changed the channel table");
    }
    assert_eq!(
        raw(&sock, "{\"version\":1,\"request\":\"policy_show\"}\n"),
        policy_before
    );

    // An oversized line is answered and discarded; the same connection still works.
    let mut c = Client::connect(&sock).unwrap();
    let big = format!(
        "{{\"version\":1,\"request\":\"list\",\"pad\":\"{}\"}}\n",
        "x".repeat(70 * 1024)
    );
    let e = c
        .call_raw(&big)
        .unwrap()
        .error
        .expect("oversized line refused");
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("exceeds"), "{}", e.message);
    let l: ChannelList = c
        .call_raw("{\"version\":1,\"request\":\"list\"}\n")
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(l, before);

    // A truncated line (the stream ends before its newline) is answered and not acted on.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(OPEN.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let r: Reply = serde_json::from_str(answer.trim()).unwrap();
    let e = r.error.expect("truncated line refused");
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("truncated"), "{}", e.message);
    assert_eq!(list(&sock), before, "a truncated open must open nothing");

    // Permissions: run the real CLI as nobody (in the read group nogroup): it may list, not open.
    if unsafe_free_is_root() {
        let ctl = env!("CARGO_BIN_EXE_rtchanctl");
        let as_nobody = |args: &[&str]| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", ctl])
                .arg("--socket")
                .arg(&sock)
                .args(args)
                .output()
                .expect("setpriv runs")
        };
        let out = as_nobody(&["channel", "list"]);
        assert!(out.status.success(), "{out:?}");
        let out = as_nobody(&[
            "channel",
            "open",
            "--mmax",
            "1500",
            "--imin",
            "1ms",
            "--bmax",
            "1",
            "--deadline",
            "5ms",
            "--dst",
            "local",
        ]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
        let out = as_nobody(&["channel", "close", "0"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(
            list(&sock),
            before,
            "an unauthorised caller changed the table"
        );
        // Not even in the read group: nothing at all.
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65533", "--clear-groups", ctl])
            .arg("--socket")
            .arg(&sock)
            .args(["channel", "list"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    } else {
        println!("skipping the permission checks: they need root to run a client as another uid");
    }

    // The daemon still works: the channel closes and the reservation is freed.
    let closed = raw(
        &sock,
        "{\"version\":1,\"request\":{\"close\":{\"id\":0}}}\n",
    );
    assert!(closed.ok, "{closed:?}");
    assert!(list(&sock).channels.is_empty());
    let again = raw(&sock, &format!("{OPEN}\n"));
    assert!(again.ok, "the freed reservation is usable again: {again:?}");
    d.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn refusals_say_which_resource_and_the_tightest_deadline() {
    let dir = temp_dir("refuse");
    let d = Daemon::start(config(&dir, "")).unwrap();
    let sock = d.socket.clone();
    // Fill the link: 60 kB every 1 ms is about half the 1 Gb/s link.
    let heavy = r#"{"version":1,"request":{"open":{"mmax":"60000","imin":"1ms","bmax":1,"deadline":"20ms","dst":"local"}}}"#;
    assert!(raw(&sock, &format!("{heavy}\n")).ok);
    let r = raw(&sock, &format!("{heavy}\n"));
    let e = r.error.expect("the second heavy channel does not fit");
    assert_eq!(e.kind, ErrorKind::Refused, "{e:?}");
    let refusal = e.refusal.expect("refusal details");
    assert_eq!(refusal.side, "sender");
    assert!(
        e.message.contains("link") || e.message.contains("CPU"),
        "{}",
        e.message
    );
    println!("refusal: {}", e.message);
    // Tight deadlines (just above what the idle hosts need) on a loading host: refused at some
    // point, with the tightest deadline that would have been admitted.
    let tight = r#"{"version":1,"request":{"open":{"mmax":"8000","imin":"1ms","bmax":1,"deadline":"600us","dst":"local"}}}"#;
    let mut refused = None;
    for _ in 0..40 {
        let r = raw(&sock, &format!("{tight}\n"));
        if let Some(e) = r.error {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("refused under load");
    assert_eq!(e.kind, ErrorKind::Refused, "{e:?}");
    println!("refusal: {}", e.message);
    let t = e
        .refusal
        .and_then(|r| r.tightest_deadline)
        .expect("tightest deadline");
    assert!(t > 600_000, "{t}");
    let open_now = list(&sock).channels.len();
    // The dry run at that deadline is admissible and reserves nothing.
    let dry = format!(
        r#"{{"version":1,"request":{{"open":{{"mmax":"8000","imin":"1ms","bmax":1,"deadline":{t},"dst":"local","dry_run":true}}}}}}"#
    );
    let r = raw(&sock, &format!("{dry}\n"));
    assert!(r.ok, "{r:?}");
    assert_eq!(
        list(&sock).channels.len(),
        open_now,
        "a dry run reserves nothing"
    );
    let real = dry.replace(",\"dry_run\":true", "");
    assert!(
        raw(&sock, &format!("{real}\n")).ok,
        "admitted at the tightest deadline"
    );
    d.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_configurations_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            DaemonConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "examples/*.toml");
}
