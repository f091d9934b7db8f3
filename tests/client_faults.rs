//! Client processes that misbehave, and a daemon that dies under its clients.
//!
//! * A client writing garbage into its own submit ring (bad buffer indices and lengths, wild
//!   stamps, the read-only header, the daemon's line, finally a tail outside the ring) has
//!   every bad descriptor refused and counted by the daemon, and its ring closed when poisoned,
//!   while another client's channel on the same core (`rt_sender`/`rt_receiver` processes)
//!   delivers byte-exact with no deadline miss unexcused by measured OS preemption.
//! * A daemon killed with SIGKILL or stopped with SIGTERM under an attached sender and
//!   receiver: their next calls get typed errors (no hang, no panic); the restarted daemon
//!   restores the channel from its state file, and a client re-attaches both ends by id and
//!   sends again, byte-exact.
//!
//! The garbage client is this test binary run again with `RTCHAN_FAULT_CHILD` set: the
//! `child_entry` test is its entry point (without the variable it returns at once). It talks
//! to the parent over stdout lines starting with `@@ `.

#[path = "common/client_examples.rs"]
mod client_examples;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use client_examples::{
    checking_receiver, close_and_judge, config, config_text, field, list, num, say, sender_channel,
    sender_sent, stats_once_delivered, temp_dir, wait_stdin, Proc,
};
use control::protocol::{AttachArgs, AttachRole, ChannelInfo, OpenArgs, Request, TxCounters};
use dataplane::shm::{Producer, Region, SubmitDesc, LINE};
use dataplane::time::monotonic_now;
use rtchan::client::{Client, Error, OpenSpec, RecvError, SendError, LIVENESS_INTERVAL};
use rtchan::daemon::client::Client as Ctl;
use rtchan::daemon::Daemon;
use rtchan::preemption::PreemptionProbe;

const DAEMON: &str = env!("CARGO_BIN_EXE_rtchand");

/// The good channel's messages (1 kHz: 0.4 s).
const GOOD: u64 = 400;
/// The garbage client's rounds, one every 2 ms (its channel's imin is 1 ms).
const ROUNDS: u32 = 150;
/// Its channel's Mmax and Bmax.
const G_MMAX: u32 = 256;
const G_BMAX: u32 = 4;

// ---------------------------------------------------------------------------------------
// The garbage client (a child process).

/// Pushes `d` once there is room (the core takes descriptors within a loop iteration; the
/// bound only keeps a broken run from hanging). One at a time: the producer reloads the
/// consumer's head only when its cached view says full, so waiting for room for several
/// could wait on a stale head.
fn push(p: &mut Producer<SubmitDesc>, d: SubmitDesc) {
    let until = Instant::now() + Duration::from_secs(5);
    while p.room() == 0 {
        assert!(Instant::now() < until, "the core stopped taking");
        std::thread::sleep(Duration::from_micros(100));
    }
    p.push(d);
}

/// Opens a client-fed channel on core 0 over the raw protocol and writes garbage into its
/// ring: the library's `Sender` would never write what this does.
fn garbage(sock: &str) {
    let mut ctl = Ctl::connect(Path::new(sock)).unwrap();
    let (reply, fds) = ctl
        .call_with_fds(&Request::Open(OpenArgs {
            core: Some(0),
            attach: true,
            ..OpenArgs::new(u64::from(G_MMAX), 1_000_000, G_BMAX, 20_000_000, "local")
        }))
        .unwrap();
    let info: ChannelInfo = reply.into_result().unwrap();
    let region = Region::from_fd::<SubmitDesc>(fds.into_iter().next().unwrap()).unwrap();
    let (producer_line, _, _, _, _) = region.offsets();
    let nbufs = region.params().capacity + 1; // not drop-oldest: capacity + 1 buffers
    let mut p = Producer::<SubmitDesc>::new(region.clone()).unwrap();
    // Mapped: the daemon seals the ring and starts reading it.
    ctl.call(&Request::Mapped(AttachArgs {
        id: info.id,
        role: AttachRole::Send,
    }))
    .unwrap()
    .into_result::<serde_json::Value>()
    .unwrap();
    say(&format!("id {} core {}", info.id, info.sender.core));
    wait_stdin();
    // The read-only header, past the magic: the daemon keeps its own copy of the sizes, so
    // claiming more buffers or a larger Mmax here admits nothing.
    // SAFETY: this process's only thread using the ring is this one, between its pushes.
    unsafe { region.scribble(8, &[0xff; LINE - 8]) };
    let (mut good, mut bad, mut wild) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for r in 0..ROUNDS {
        let due = start + Duration::from_millis(2 * u64::from(r));
        while Instant::now() < due {
            std::thread::sleep(Duration::from_micros(100));
        }
        let now = monotonic_now();
        // A buffer index past the buffers (the first one past, or far past).
        let buf = if r % 2 == 0 { nbufs } else { u32::MAX - r };
        push(
            &mut p,
            SubmitDesc {
                buf,
                len: 8,
                submit_ts: now,
            },
        );
        // A length past Mmax (just past, or far past), in a real buffer.
        let len = if r % 2 == 0 { G_MMAX + 1 } else { u32::MAX };
        push(
            &mut p,
            SubmitDesc {
                buf: 0,
                len,
                submit_ts: now,
            },
        );
        bad += 2;
        // A good message; every fifth with a stamp far in the past or the future.
        let b = p.grant(|_| {}).expect("a free buffer");
        let msg = (r as u8).wrapping_add(1);
        p.buffer_mut(b)[..16].fill(msg);
        let submit_ts = match r % 10 {
            0 => 1,
            5 => u64::MAX - 1,
            _ => now,
        };
        wild += u64::from(r % 5 == 0);
        push(
            &mut p,
            SubmitDesc {
                buf: b,
                len: 16,
                submit_ts,
            },
        );
        good += 1;
        p.publish();
    }
    say(&format!("pushed good {good} bad {bad} wild {wild}"));
    wait_stdin();
    // The daemon's line: its count of invalid descriptors is for the client's information
    // only; the channel statistics come from the daemon's own counter.
    // SAFETY: as above.
    unsafe { region.scribble(3 * LINE + 8, &(u64::MAX / 3).to_le_bytes()) };
    // A tail far beyond head + capacity: the ring is poisoned and closed.
    // SAFETY: as above.
    unsafe { region.scribble(producer_line, &(u64::MAX / 2).to_le_bytes()) };
    let until = Instant::now() + Duration::from_secs(5);
    while !p.is_closed() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    say(if p.is_closed() {
        "closed"
    } else {
        "not closed"
    });
    wait_stdin();
    drop(ctl);
}

/// Child entry point: does nothing unless run as a child by the tests below.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("RTCHAN_FAULT_CHILD") else {
        return;
    };
    let sock = std::env::var("RTCHAN_FAULT_SOCKET").unwrap();
    match role.as_str() {
        "garbage" => garbage(&sock),
        other => panic!("unknown child role {other}"),
    }
}

struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Kid {
    fn spawn(role: &str, sock: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env("RTCHAN_FAULT_CHILD", role)
            .env("RTCHAN_FAULT_SOCKET", sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, out }
    }

    /// The next `@@ ` line (panics if the child exits first).
    fn line(&mut self) -> String {
        let mut l = String::new();
        loop {
            l.clear();
            assert!(
                self.out.read_line(&mut l).unwrap() > 0,
                "child exited early"
            );
            // The harness may have started the line ("test child_entry ... ").
            if let Some(i) = l.find("@@ ") {
                return l[i + 3..].trim_end().to_string();
            }
        }
    }

    fn go(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
    }
}

/// The `n`-th whitespace-separated word of `l`, parsed.
fn word(l: &str, n: usize) -> u64 {
    l.split_whitespace().nth(n).unwrap().parse().unwrap()
}

/// Polls channel `id`'s sending counters until `done` says so (an event; the bound only keeps
/// a broken run from hanging) and returns the last ones read.
fn tx_until(c: &Client, id: u32, done: impl Fn(&TxCounters) -> bool) -> TxCounters {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let t = c.stats(id).unwrap().tx.unwrap();
        if done(&t) || Instant::now() > until {
            return t;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn garbage_in_a_clients_ring_is_refused_and_counted_while_a_channel_on_its_core_keeps_deadlines() {
    client_examples::example("rt_sender"); // built before the daemon's cores start
    let dir = temp_dir("client-garbage");
    let d = Daemon::start(config(&dir)).unwrap();
    let probe = PreemptionProbe::start().unwrap();
    probe
        .watch_threads_of(std::process::id(), "rtchan-core")
        .unwrap();
    let sock = d.socket.display().to_string();
    let client = Client::connect(&d.socket).unwrap();

    let mut g = Kid::spawn("garbage", &d.socket);
    let l = g.line();
    let gid = word(&l, 1) as u32;
    assert_eq!(word(&l, 3), 0, "{l}");

    let count = GOOD.to_string();
    let mut tx = Proc::spawn(
        "rt_sender",
        &s(&[
            "--socket",
            &sock,
            "--core",
            "0",
            "--imin",
            "1ms",
            "--bmax",
            "4",
            "--deadline",
            "20ms",
            "--rate",
            "1000",
            "--count",
            &count,
            "--size",
            "4..1500",
            "--wait-stdin",
        ]),
    );
    let id = sender_channel(&tx.line());
    let cores: Vec<(u32, u16)> = list(&d.socket)
        .channels
        .iter()
        .map(|c| (c.id, c.sender.core))
        .collect();
    assert_eq!(cores.len(), 2, "{cores:?}");
    assert!(cores.iter().all(|c| c.1 == 0), "both on core 0: {cores:?}");
    probe.watch_threads_of(tx.child.id(), "").unwrap();
    let rx = checking_receiver(&sock, id);
    probe.watch_threads_of(rx.child.id(), "").unwrap();

    // Both at once: the good channel's 400 ms overlap the garbage client's 300 ms.
    tx.go();
    g.go();
    let l = g.line();
    let (good, bad, wild) = (word(&l, 2), word(&l, 4), word(&l, 6));
    assert_eq!(
        (good, bad),
        (u64::from(ROUNDS), 2 * u64::from(ROUNDS)),
        "{l}"
    );
    // Every bad descriptor refused and counted, every good one taken and sent.
    let t = tx_until(&client, gid, |t| t.sent >= good && t.invalid >= bad);
    println!("garbage channel {gid}: {t:?}");
    assert_eq!((t.submitted, t.sent, t.invalid), (good, good, bad), "{t:?}");
    assert!(t.restamped >= wild, "{t:?}");
    let grx = client.stats(gid).unwrap().rx.unwrap();
    assert_eq!(grx.delivered, good, "{grx:?}");

    // The poisoned ring: counted once more and closed, seen by the client.
    g.go();
    assert_eq!(g.line(), "closed");
    // The channel stays in the table (closed) until its client's connection ends.
    let t = client.stats(gid).unwrap().tx.unwrap();
    println!("garbage channel {gid} after the poison: {t:?}");
    assert_eq!((t.submitted, t.invalid), (good, bad + 1), "{t:?}");

    // The good channel: all there, byte-exact, its deadlines kept.
    let (sent_bytes, sent_digest) = sender_sent(&tx.line());
    let stats = stats_once_delivered(&client, id, GOOD);
    let (summary, verdict) = close_and_judge(tx, rx, probe);
    println!(
        "good channel: {} deadline misses: {verdict}",
        num(&summary, "late")
    );
    assert_eq!(num(&summary, "received"), GOOD, "{summary}");
    assert_eq!(num(&summary, "bad"), 0, "{summary}");
    assert_eq!(num(&summary, "bytes"), sent_bytes, "{summary}");
    assert_eq!(field(&summary, "digest"), sent_digest, "{summary}");
    let txc = stats.tx.unwrap();
    assert_eq!(
        (txc.submitted, txc.sent, txc.invalid),
        (GOOD, GOOD, 0),
        "{txc:?}"
    );
    assert_eq!(stats.rx.unwrap().deadline_misses, num(&summary, "late"));
    assert_eq!(verdict.unexcused, 0, "{verdict}");

    // The garbage client's end frees what it held.
    g.go();
    assert!(g.child.wait().unwrap().success());
    let until = Instant::now() + Duration::from_secs(10);
    while !list(&d.socket).channels.is_empty() {
        assert!(Instant::now() < until, "{:?}", list(&d.socket));
        std::thread::sleep(Duration::from_millis(20));
    }
    d.shutdown();
}

// ---------------------------------------------------------------------------------------
// The daemon dies under its clients.

/// An `rtchand` process on `dir`'s configuration, its socket answering.
fn start_daemon(dir: &Path) -> Running {
    let cfg = dir.join("rtchand.toml");
    std::fs::write(&cfg, config_text(dir)).unwrap();
    let child = Command::new(DAEMON)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while Ctl::connect(&dir.join("ctl.sock")).is_err() {
        assert!(Instant::now() < until, "rtchand did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running(child)
}

/// Message `k` of the restart test (1..=300 bytes, content depending on `k`).
fn message(k: u32) -> Vec<u8> {
    let len = 1 + (k as usize * 97) % 300;
    (0..len)
        .map(|i| (i as u32).wrapping_mul(13).wrapping_add(k) as u8)
        .collect()
}

/// Sends messages `ks` one per 1.5 ms (the channel's imin is 1 ms) and receives each,
/// byte-exact and in order.
fn exchange(
    tx: &mut rtchan::client::Sender,
    rx: &mut rtchan::client::Receiver,
    ks: std::ops::Range<u32>,
) {
    let mut buf = vec![0u8; 512];
    let mut last_seq = None;
    for k in ks {
        tx.send_timeout(&message(k), Duration::from_secs(1))
            .unwrap();
        let m = rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
        assert!(buf[..m.len] == message(k)[..], "message {k} byte-exact");
        if let Some(s) = last_seq {
            assert_eq!(m.seq, s + 1, "message {k} in order");
        }
        last_seq = Some(m.seq);
        std::thread::sleep(Duration::from_micros(1500));
    }
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
}

/// Kills the daemon if a test fails before it did.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Open and attach, the daemon dies by `sig`, the calls' errors; then a restart and a
/// re-attach.
fn daemon_dies_under_attached_clients(name: &str, sig: i32) {
    let dir = temp_dir(name);
    let sock = dir.join("ctl.sock");
    let mut daemon = start_daemon(&dir);
    let client = Client::connect(&sock).unwrap();
    let spec = OpenSpec::new(512, Duration::from_millis(1), 8, Duration::from_millis(20));
    let mut tx = client.open(&spec).unwrap();
    let id = tx.id();
    let mut rx = client.attach_receiver(id).unwrap();
    exchange(&mut tx, &mut rx, 0..20);

    signal(&daemon.0, sig);
    let status = daemon.0.wait().unwrap();
    println!("rtchand ended by signal {sig}: {status}");
    // Past the liveness interval every call checks the socket: a typed error, at once.
    std::thread::sleep(Duration::from_nanos(LIVENESS_INTERVAL) + Duration::from_millis(2));
    // A killed daemon closed nothing: only the socket tells. A stopping one closes the
    // rings first, so either error may come first.
    let killed = sig == libc::SIGKILL;
    let gone = |e: SendError| e == SendError::DaemonGone || (!killed && e == SendError::Closed);
    let e = tx.send(&message(20)).unwrap_err();
    assert!(gone(e), "send: {e:?}");
    let e = tx
        .send_timeout(&message(20), Duration::from_secs(5))
        .unwrap_err();
    assert!(gone(e), "send_timeout: {e:?}");
    let e = tx
        .send_many([&message(20)[..], &message(21)[..]])
        .unwrap_err();
    assert!(gone(e), "send_many: {e:?}");
    let mut buf = vec![0u8; 512];
    let rgone = |e: RecvError| e == RecvError::DaemonGone || (!killed && e == RecvError::Closed);
    let e = rx.try_recv(&mut buf).unwrap_err();
    assert!(rgone(e), "try_recv: {e:?}");
    // Not a timeout: the hang-up is noticed while it waits.
    let e = rx
        .recv_timeout(&mut buf, Duration::from_secs(5))
        .unwrap_err();
    assert!(rgone(e), "recv_timeout: {e:?}");
    assert!(!client.daemon_alive());
    assert!(
        matches!(client.stats(id), Err(Error::DaemonGone(_))),
        "{:?}",
        client.stats(id)
    );
    assert!(matches!(Client::connect(&sock), Err(Error::DaemonGone(_))));
    let e = tx.close().unwrap_err();
    assert!(matches!(e, Error::DaemonGone(_)), "close: {e:?}");
    let e = rx.close().unwrap_err();
    assert!(matches!(e, Error::DaemonGone(_)), "detach: {e:?}");
    drop(client);
    if sig == libc::SIGTERM {
        assert!(status.success(), "{status}");
    }

    // The restarted daemon has the channel again; a new client attaches both ends by id.
    let mut daemon = start_daemon(&dir);
    let l = list(&sock);
    assert_eq!(l.channels.len(), 1, "{l:?}");
    assert_eq!(
        (l.channels[0].id, l.channels[0].attach),
        (id, true),
        "{l:?}"
    );
    let client = Client::connect(&sock).unwrap();
    let mut rx = client.attach_receiver(id).unwrap();
    let mut tx = client.attach_sender(id).unwrap();
    // A ring belongs to one client at a time.
    let other = Client::connect(&sock).unwrap();
    assert!(matches!(other.attach_sender(id), Err(Error::Api(_))));
    exchange(&mut tx, &mut rx, 100..120);
    let t = client.stats(id).unwrap().tx.unwrap();
    assert_eq!((t.submitted, t.sent, t.invalid), (20, 20, 0), "{t:?}");
    rx.close().unwrap();
    tx.close().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !list(&sock).channels.is_empty() {
        assert!(Instant::now() < until, "{:?}", list(&sock));
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&daemon.0, libc::SIGTERM);
    assert!(daemon.0.wait().unwrap().success());
}

#[test]
fn a_daemon_killed_under_attached_clients_gives_typed_errors_and_they_reattach() {
    daemon_dies_under_attached_clients("client-daemon-kill", libc::SIGKILL);
}

/// A stop (SIGTERM): the same typed errors, and the stopped daemon's table keeps the
/// client-fed channel (its connections ending at the stop are not their clients going away),
/// so the restarted daemon has it for a re-attach.
#[test]
fn a_daemon_stopped_under_attached_clients_gives_typed_errors_and_they_reattach() {
    daemon_dies_under_attached_clients("client-daemon-term", libc::SIGTERM);
}
