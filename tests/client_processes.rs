//! The client library across processes, against a daemon on the in-memory link: a sender
//! process and a receiver process exchange messages byte-exact with no unexcused deadline
//! miss; a client killed with SIGKILL leaves nothing reserved.
//!
//! The child processes are this test binary run again with `RTCHAN_CLIENT_CHILD` set: the
//! `child_entry` test is their entry point (without the variable it returns at once). Children
//! talk to the parent over stdout lines starting with `@@ `.

#[path = "common/client_examples.rs"]
mod client_examples;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use client_examples::{config, say, temp_dir, wait_stdin};
use control::protocol::{ChannelList, Request};
use rtchan::client::{Client, OpenSpec, RecvError};
use rtchan::daemon::client::Client as Ctl;
use rtchan::daemon::Daemon;
use rtchan::preemption::{MissLog, PreemptionProbe};

const MESSAGES: u32 = 400;
const MMAX: u32 = 3000;

/// Message `k`: a length and content that depend on `k` (1..=MMAX bytes).
fn message(k: u32) -> Vec<u8> {
    let len = 1 + (k as usize * 997) % MMAX as usize;
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(k) as u8)
        .collect()
}

fn spawn(role: &str, args: &[String]) -> (Child, BufReader<ChildStdout>) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("RTCHAN_CLIENT_CHILD", role)
        .env("RTCHAN_CLIENT_ARGS", args.join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    (c, out)
}

/// The next `@@ ` line of a child (panics if it exits first).
fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    loop {
        l.clear();
        assert!(out.read_line(&mut l).unwrap() > 0, "child exited early");
        // The harness may have started the line ("test child_entry ... ").
        if let Some(i) = l.find("@@ ") {
            return l[i + 3..].trim_end().to_string();
        }
    }
}

/// Child entry point: does nothing unless run as a child by the tests below.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("RTCHAN_CLIENT_CHILD") else {
        return;
    };
    let args: Vec<String> = std::env::var("RTCHAN_CLIENT_ARGS")
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    let client = Client::connect(&args[0]).unwrap();
    match role.as_str() {
        "send" => {
            let spec = OpenSpec::new(MMAX, Duration::from_millis(1), 4, Duration::from_millis(20));
            let mut tx = client.open(&spec).unwrap();
            say(&format!("id {}", tx.id()));
            wait_stdin(); // the receiver is attached
            let start = Instant::now();
            for k in 0..MESSAGES {
                let due = start + Duration::from_millis(u64::from(k));
                while Instant::now() < due {
                    std::thread::sleep(Duration::from_micros(100));
                }
                tx.send_timeout(&message(k), Duration::from_secs(1))
                    .unwrap();
            }
            say("sent");
            wait_stdin();
            tx.close().unwrap();
        }
        "recv" => {
            let id: u32 = args[1].parse().unwrap();
            let mut rx = client.attach_receiver(id).unwrap();
            say("ready");
            let mut buf = vec![0u8; MMAX as usize];
            let mut misses = Vec::new();
            for k in 0..MESSAGES {
                let m = rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
                assert_eq!(m.seq, k, "in order, none lost");
                assert!(buf[..m.len] == message(k)[..], "message {k} byte-exact");
                if m.late {
                    misses.push(format!("{},{},{}", m.submit_ts, m.deadline, m.delivered_ts));
                }
            }
            assert_eq!(
                rx.try_recv(&mut buf),
                Err(RecvError::WouldBlock),
                "nothing more"
            );
            say(&format!("got {MESSAGES} misses {}", misses.join(" ")));
            wait_stdin();
        }
        "hold" => {
            let spec = OpenSpec::new(MMAX, Duration::from_millis(1), 4, Duration::from_millis(20));
            let tx = client.open(&spec).unwrap();
            say(&format!("id {}", tx.id()));
            wait_stdin();
        }
        other => panic!("unknown child role {other}"),
    }
}

fn list(sock: &Path) -> ChannelList {
    Ctl::connect(sock)
        .unwrap()
        .call(&Request::List)
        .unwrap()
        .into_result()
        .unwrap()
}

#[test]
fn sender_and_receiver_processes_byte_exact_without_misses() {
    let dir = temp_dir("client-procs");
    let d = Daemon::start(config(&dir)).unwrap();
    let probe = PreemptionProbe::start().unwrap();
    probe
        .watch_threads_of(std::process::id(), "rtchan-core")
        .unwrap();
    let sock = d.socket.display().to_string();
    let (mut tx, mut tx_out) = spawn("send", std::slice::from_ref(&sock));
    let id: u32 = line(&mut tx_out)
        .strip_prefix("id ")
        .unwrap()
        .parse()
        .unwrap();
    probe.watch_threads_of(tx.id(), "").unwrap();
    let (mut rx, mut rx_out) = spawn("recv", &[sock.clone(), id.to_string()]);
    assert_eq!(line(&mut rx_out), "ready");
    probe.watch_threads_of(rx.id(), "").unwrap();
    writeln!(tx.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(line(&mut tx_out), "sent");
    let got = line(&mut rx_out);
    let rest = got
        .strip_prefix(&format!("got {MESSAGES} misses"))
        .unwrap_or_else(|| panic!("receiver: {got}"));
    let mut log = MissLog::with_capacity(MESSAGES as usize);
    for m in rest.split_whitespace() {
        let v: Vec<u64> = m.split(',').map(|x| x.parse().unwrap()).collect();
        log.record(v[0], v[1], v[2]);
    }
    // The daemon's own counters agree: every message sent once, none refused.
    let stats = Client::connect(&d.socket).unwrap().stats(id).unwrap();
    let txc = stats.tx.unwrap();
    assert_eq!(
        (txc.submitted, txc.sent, txc.invalid),
        (u64::from(MESSAGES), u64::from(MESSAGES), 0)
    );
    let verdict = probe.finish().verdict(&log);
    println!("{} deadline misses: {verdict}", log.count());
    assert_eq!(verdict.unexcused, 0, "{verdict}");
    for c in [&mut tx, &mut rx] {
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success());
    }
    // The sender closed its channel: nothing is left open.
    let l = list(&d.socket);
    assert!(l.channels.is_empty(), "{l:?}");
    d.shutdown();
}

#[test]
fn a_client_killed_with_sigkill_leaves_nothing_reserved() {
    let dir = temp_dir("client-kill");
    let d = Daemon::start(config(&dir)).unwrap();
    let sock = d.socket.display().to_string();
    let (mut c, mut out) = spawn("hold", std::slice::from_ref(&sock));
    let id: u32 = line(&mut out).strip_prefix("id ").unwrap().parse().unwrap();
    let l = list(&d.socket);
    assert_eq!(l.channels.len(), 1);
    let first = l.channels[0].sender.core_utilisation_ppm;
    assert!(first > 0);
    assert!(l.channels[0].attach);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGKILL) }, 0);
    c.wait().unwrap();
    // The daemon sees the connection end and closes the channel: wait for that event.
    let until = Instant::now() + Duration::from_secs(10);
    while !list(&d.socket).channels.is_empty() {
        assert!(
            Instant::now() < until,
            "channel {id} still open after the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(list(&d.socket).incoming.is_empty());
    // Its reservation is gone: the same channel again is admitted at the same utilisation.
    let (mut c2, mut out2) = spawn("hold", std::slice::from_ref(&sock));
    line(&mut out2);
    let l = list(&d.socket);
    assert_eq!(l.channels.len(), 1);
    assert_eq!(l.channels[0].sender.core_utilisation_ppm, first);
    drop(c2.stdin.take());
    c2.wait().unwrap();
    d.shutdown();
}
