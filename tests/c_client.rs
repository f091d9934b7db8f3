//! The C API end to end: `include/rtchan.h` and `librtchan` (built here with
//! `cargo build -p rtchan-capi` into this test's target directory), the C examples and a C
//! program of bad calls compiled with `cc`, run as separate processes against a real `rtchand`
//! on the in-memory link.
//!
//! What is checked: the header declares exactly the functions the library exports (`nm -D`);
//! `examples/c/sender.c` (linked statically) and `examples/c/receiver.c` (dynamically) deliver
//! every message byte for byte, in order, without a deadline miss (a miss is excused only by
//! OS preemption of the daemon's polling threads measured by `rtchan::preemption` during that
//! message's life; the C sender's thread is not credited, so a preemption inside its
//! `rtchan_send` is not excused); bad calls, closed channels and a killed
//! daemon return the documented negative codes and `rtchan_strerror` sentences. The C programs
//! only print what the library returned; the expectations are here.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rtchan::preemption::{MissLog, PreemptionProbe};

const DAEMON: &str = env!("CARGO_BIN_EXE_rtchand");
const CTL: &str = env!("CARGO_BIN_EXE_rtchanctl");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// How long a C program may take to print its next line before the test gives up on it (a
/// hang is a failure, not a wait; generous for a loaded 2-core machine).
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding librtchan.so / librtchan.a, built once per test run.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This binary is <target>/<profile>/deps/c_client-HASH.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "rtchan-capi", "--manifest-path"])
            .arg(Path::new(ROOT).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo runs");
        assert!(st.success(), "cargo build -p rtchan-capi failed");
        for f in ["librtchan.so", "librtchan.a"] {
            assert!(
                profile_dir.join(f).exists(),
                "{f} not in {}",
                profile_dir.display()
            );
        }
        profile_dir
    })
}

/// Compiles C `src` (relative to the repository) into `dir`, against the dynamic or the
/// static library.
fn compile(src: &str, dir: &Path, static_link: bool) -> PathBuf {
    let lib = lib_dir();
    let name = Path::new(src).file_stem().unwrap().to_str().unwrap();
    let out = dir.join(if static_link {
        format!("{name}-static")
    } else {
        name.to_string()
    });
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(Path::new(ROOT).join("include"))
        .arg("-o")
        .arg(&out)
        .arg(Path::new(ROOT).join(src));
    if static_link {
        cc.arg(lib.join("librtchan.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    } else {
        cc.arg("-L")
            .arg(lib)
            .arg("-lrtchan")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let o = cc.output().expect("cc runs");
    assert!(
        o.status.success(),
        "cc {src}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A daemon on the in-memory link with its own directory and socket.
struct Daemon {
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rtchan-c-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ctl.sock");
        let config = dir.join("rtchand.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{}\"\nstate_file = \"{}\"\n[policy]\nidle = \"sleep\"\n\
                 idle_sleep = \"200us\"\n[cost]\nper_message_ns = 2000\nper_packet_ns = 1000\nbest_effort_run_ns = 6000\n\
                 link_rate_bps = 1000000000\n",
                socket.display(),
                dir.join("channels.json").display()
            ),
        )
        .unwrap();
        let mut d = Self {
            dir,
            socket,
            config,
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts the daemon process and waits until it answers.
    fn spawn(&mut self) {
        self.child = Some(
            Command::new(DAEMON)
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        while self.ctl(&["channel", "list"]).status.code() == Some(3) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(CTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A C program with its output read line by line on a thread (so a hang times out).
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The next line, or a failure naming what was expected.
    fn line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(l) => {
                self.seen.push(l.clone());
                l
            }
            Err(e) => {
                let _ = self.child.kill();
                let err = self
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                panic!(
                    "waiting for {what}: {e}; output so far {:?}; stderr {err}",
                    self.seen
                )
            }
        }
    }

    /// Reads lines until one starts with `prefix`.
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line(prefix);
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    fn say(&mut self, s: &str) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(s.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    /// Waits for exit; returns the status code, every line printed and stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        self.stdin.take();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > LINE_TIMEOUT {
                let _ = self.child.kill();
                panic!("the C program did not exit; output {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF.
        while let Ok(l) = self.lines.recv_timeout(LINE_TIMEOUT) {
            self.seen.push(l);
        }
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (
            status.code().unwrap_or(-1),
            std::mem::take(&mut self.seen),
            err,
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-cbin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The function names declared in rtchan.h (comments stripped).
fn header_functions() -> BTreeSet<String> {
    let h = std::fs::read_to_string(Path::new(ROOT).join("include/rtchan.h")).unwrap();
    let mut text = String::new();
    let mut rest = h.as_str();
    while let Some(i) = rest.find("/*") {
        text.push_str(&rest[..i]);
        let j = rest[i..].find("*/").expect("closed comment");
        rest = &rest[i + j + 2..];
    }
    text.push_str(rest);
    let b = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(k) = text[i..].find("rtchan_") {
        let s = i + k;
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_') {
            e += 1;
        }
        let mut p = e;
        while p < b.len() && b[p] == b' ' {
            p += 1;
        }
        let word_start = s == 0 || !(b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_');
        if word_start && p < b.len() && b[p] == b'(' {
            names.insert(text[s..e].to_string());
        }
        i = e;
    }
    names
}

#[test]
fn the_header_declares_exactly_what_the_library_exports() {
    let so = lib_dir().join("librtchan.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T" && name.starts_with("rtchan_")).then(|| name.to_string())
        })
        .collect();
    let declared = header_functions();
    assert!(
        declared.len() >= 25,
        "parsed too few declarations: {declared:?}"
    );
    let missing: Vec<_> = declared.difference(&exported).collect();
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    assert!(
        missing.is_empty() && undeclared.is_empty(),
        "declared but not exported: {missing:?}; exported but not declared: {undeclared:?}"
    );
}

/// Parses `NAME RC|STRERROR|DETAIL` lines.
fn results(lines: &[String]) -> HashMap<String, (i64, String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let mut p = rest.splitn(3, '|');
            let rc = p.next()?.parse().ok()?;
            Some((
                name.to_string(),
                (rc, p.next()?.to_string(), p.next()?.to_string()),
            ))
        })
        .collect()
}

fn get<'a>(r: &'a HashMap<String, (i64, String, String)>, name: &str) -> &'a (i64, String, String) {
    r.get(name)
        .unwrap_or_else(|| panic!("no result for {name} in {r:?}"))
}

/// `name` returned `code` with its documented sentence, and its detail contains `detail`.
fn expect(r: &HashMap<String, (i64, String, String)>, name: &str, code: i32, detail: &str) {
    let (rc, text, d) = get(r, name);
    assert_eq!(*rc, i64::from(code), "{name}: {text}: {d}");
    let sentence = match -code {
        0 => "success",
        libc::EINVAL => "invalid argument (a NULL pointer, a bad length or a bad spec field)",
        libc::EAGAIN => "would block: the channel's buffer is full (send) or empty (receive)",
        libc::EMSGSIZE => {
            "message too long: longer than the channel's mmax (send) or the buffer (receive)"
        }
        libc::EPIPE => "channel closed",
        libc::ECONNRESET => "the daemon is gone (it died, stopped or hung up)",
        libc::ETIMEDOUT => "no message within the timeout",
        libc::ENOENT => "no such channel, or no daemon socket at that path",
        libc::EBUSY => {
            "refused: admission refused the channel, or its end is taken by another client"
        }
        _ => "",
    };
    if code <= 0 {
        assert_eq!(text, sentence, "{name}");
    }
    assert!(d.contains(detail), "{name}: detail {d:?} lacks {detail:?}");
}

#[test]
fn bad_calls_return_the_documented_codes_and_texts() {
    let dir = temp("bad");
    let bin = compile("capi/tests/c/bad_calls.c", &dir, false);
    let d = Daemon::start("bad");
    let mut p = Proc::spawn(Command::new(&bin).arg(&d.socket).arg("calls"));
    let b = p.until("B ");
    let id = b.strip_prefix("B ").unwrap().trim().to_string();
    let o = d.ctl(&["channel", "close", &id]);
    assert!(o.status.success(), "rtchanctl channel close {id}: {o:?}");
    p.say("\n");
    let (code, lines, err) = p.finish();
    assert_eq!(code, 0, "{lines:?} {err}");
    assert_eq!(lines.last().map(String::as_str), Some("end"), "{lines:?}");
    let r = results(&lines);
    let (einval, emsgsize, epipe, enoent) =
        (-libc::EINVAL, -libc::EMSGSIZE, -libc::EPIPE, -libc::ENOENT);
    expect(&r, "strerror_0", 0, "");
    expect(
        &r,
        "connect_null_out",
        einval,
        "rtchan_connect: out is NULL",
    );
    // The daemon's refusal names the field.
    expect(&r, "open_bmax_0", einval, "bmax");
    expect(&r, "open_bmax_0_out_is_null", 0, "");
    expect(&r, "open_overload", -libc::EBUSY, "utilisation");
    expect(&r, "open_policy_9", einval, "spec->policy is 9");
    expect(
        &r,
        "open_unknown_dst",
        get(&r, "open_unknown_dst").0 as i32,
        "no-such-peer",
    );
    assert!(get(&r, "open_unknown_dst").0 < 0);
    expect(&r, "sender_mmax", 16, "");
    expect(
        &r,
        "send_null_msg",
        einval,
        "rtchan_send: msg is NULL with a length of 5",
    );
    expect(
        &r,
        "send_17_of_16",
        emsgsize,
        "message of 17 bytes exceeds the channel's mmax of 16 bytes",
    );
    expect(&r, "send_16", 0, "");
    expect(&r, "send_many_stops_at_too_long", 1, "");
    expect(&r, "send_many_first_too_long", emsgsize, "17 bytes");
    expect(&r, "send_many_null_base", einval, "msgs[1].base is NULL");
    expect(&r, "send_many_zero", 0, "");
    expect(&r, "attach_receiver_99999", enoent, "99999");
    expect(&r, "attach_sender_99999", enoent, "99999");
    expect(&r, "stats", 0, "");
    // One from send_16 and one from the batch: nothing else was taken.
    assert!(
        lines.iter().any(|l| l == "stats_tx has_tx 1 submitted 2"),
        "{lines:?}"
    );
    expect(&r, "stats_null_out", einval, "out is NULL");
    expect(&r, "stats_99999", enoent, "99999");
    expect(&r, "close_channel_99999", enoent, "99999");
    expect(&r, "close_sender", 0, "");
    expect(
        &r,
        "send_after_close",
        epipe,
        "closed with rtchan_close_sender",
    );
    expect(&r, "close_sender_again", epipe, "closed");
    expect(&r, "sender_stats_after_close", epipe, "closed");
    expect(&r, "sender_id_after_close", 0, "");
    expect(&r, "stats_of_closed", enoent, "");
    expect(
        &r,
        "send_after_daemon_close",
        epipe,
        "channel closed by the daemon",
    );
}

#[test]
fn a_killed_daemon_is_reported_as_gone() {
    let dir = temp("gone");
    let bin = compile("capi/tests/c/bad_calls.c", &dir, false);
    let mut d = Daemon::start("gone");
    let mut p = Proc::spawn(Command::new(&bin).arg(&d.socket).arg("gone-recv"));
    p.until("ready");
    d.kill9();
    p.say("\n");
    let (code, lines, err) = p.finish();
    assert_eq!(code, 0, "{lines:?} {err}");
    let r = results(&lines);
    let gone = -libc::ECONNRESET;
    expect(&r, "send_after_kill", gone, "the daemon is gone");
    expect(&r, "stats_after_kill", gone, "");
    expect(&r, "recv_after_kill", gone, "the daemon is gone");
    expect(&r, "close_after_kill", gone, "");
    expect(&r, "connect_after_kill", gone, "");
}

#[test]
fn receive_edge_cases_return_the_documented_codes() {
    let dir = temp("recv");
    let bin = compile("capi/tests/c/bad_calls.c", &dir, false);
    let d = Daemon::start("recv");
    let p = Proc::spawn(Command::new(&bin).arg(&d.socket).arg("recv"));
    let (code, lines, err) = p.finish();
    assert_eq!(code, 0, "{lines:?} {err}");
    let r = results(&lines);
    let einval = -libc::EINVAL;
    expect(&r, "receiver_mmax", 16, "");
    expect(&r, "try_recv_empty", -libc::EAGAIN, "no message yet");
    expect(
        &r,
        "recv_timeout_empty_20ms",
        -libc::ETIMEDOUT,
        "within the timeout",
    );
    expect(&r, "recv_null_msg", einval, "msg is NULL");
    expect(
        &r,
        "recv_null_buf",
        einval,
        "buf is NULL with a length of 8",
    );
    // Too small a buffer: the length needed comes back and the message stays queued.
    expect(
        &r,
        "recv_cap_4",
        -libc::EMSGSIZE,
        "message of 10 bytes does not fit a 4-byte buffer",
    );
    assert!(lines.iter().any(|l| l == "recv_cap_4_len 10"), "{lines:?}");
    expect(&r, "recv_cap_64", 0, "");
    assert!(
        lines.iter().any(|l| l == "recv_cap_64_msg len 10 equal 1"),
        "{lines:?}"
    );
    expect(&r, "close_receiver", 0, "");
    expect(
        &r,
        "try_recv_after_close",
        -libc::EPIPE,
        "closed with rtchan_close_receiver",
    );
}

#[test]
fn a_sender_reattaches_after_a_daemon_restart() {
    let dir = temp("reattach");
    let bin = compile("capi/tests/c/bad_calls.c", &dir, false);
    let mut d = Daemon::start("reattach");
    let mut p = Proc::spawn(Command::new(&bin).arg(&d.socket).arg("reattach"));
    let id = p
        .until("ready ")
        .strip_prefix("ready ")
        .unwrap()
        .to_string();
    d.kill9();
    d.spawn();
    // The restarted daemon restored the channel from its state file, no sender attached.
    let o = d.ctl(&["channel", "show", &id]);
    assert!(o.status.success(), "channel {id} not restored: {o:?}");
    p.say("\n");
    let (code, lines, err) = p.finish();
    assert_eq!(code, 0, "{lines:?} {err}");
    let r = results(&lines);
    // The old handle's connection died with the old daemon.
    expect(&r, "send_after_restart_old_handle", -libc::ECONNRESET, "");
    expect(&r, "attach_sender_after_restart", 0, "");
    expect(&r, "attached_id", 0, "");
    expect(&r, "send_after_reattach", 0, "");
    // One sender per channel.
    expect(
        &r,
        "attach_sender_twice",
        -libc::EBUSY,
        "already has a sending client",
    );
}

/// `sent I LEN HEX` lines of the sender and `recv SEQ LEN LATENCY HEX` of the receiver.
fn payloads(lines: &[String], tag: &str, hex_field: usize) -> Vec<(usize, String)> {
    lines
        .iter()
        .filter(|l| l.starts_with(tag))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[2].parse().unwrap(), f[hex_field].to_string())
        })
        .collect()
}

/// A `NAME a b c ...` line's value after `key`.
fn field(lines: &[String], tag: &str, key: &str) -> u64 {
    let l = lines
        .iter()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line in {lines:?}"));
    let f: Vec<&str> = l.split(' ').collect();
    let i = f.iter().position(|w| *w == key).expect("key");
    f[i + 1].parse().unwrap()
}

#[test]
fn c_sender_and_receiver_deliver_every_byte_in_time() {
    const N: usize = 300;
    let dir = temp("e2e");
    // The sender against librtchan.a, the receiver against librtchan.so: both link forms work.
    let sender = compile("examples/c/sender.c", &dir, true);
    let receiver = compile("examples/c/receiver.c", &dir, false);
    let d = Daemon::start("e2e");
    // 2 ms period (= imin), 4-message buffer, D = 20 ms.
    let mut tx = Proc::spawn(
        Command::new(&sender)
            .arg("-s")
            .arg(&d.socket)
            .args([
                "-w",
                "-n",
                &N.to_string(),
                "-p",
                "2000",
                "-m",
                "64",
                "-b",
                "4",
            ])
            .args(["-d", "20000", "-l", "50"]),
    );
    let ch = tx.until("channel ");
    let id: u32 = ch.split(' ').nth(1).unwrap().parse().unwrap();
    let mut rx = Proc::spawn(Command::new(&receiver).arg("-s").arg(&d.socket).args([
        "-c",
        &id.to_string(),
        "-n",
        &N.to_string(),
        "-t",
        "10000",
    ]));
    rx.until("attached ");
    let probe = PreemptionProbe::start().unwrap();
    let cores = probe.watch_threads_of(d.pid(), "rtchan-core").unwrap();
    assert!(cores > 0, "no rtchan-core thread in the daemon");
    tx.say("go\n");
    let (rcode, rlines, rerr) = rx.finish();
    tx.say("done\n");
    let (tcode, tlines, terr) = tx.finish();
    let preemptions = probe.finish();
    assert_eq!(tcode, 0, "sender: {terr}");
    assert_eq!(rcode, 0, "receiver: {rerr}; {rlines:?}");

    // Byte-exact and in order: the k-th message received is the k-th sent.
    let sent = payloads(&tlines, "sent ", 3);
    let recv = payloads(&rlines, "recv ", 4);
    assert_eq!(sent.len(), N);
    assert_eq!(recv.len(), N, "received {} of {N}", recv.len());
    for (k, (s, r)) in sent.iter().zip(&recv).enumerate() {
        assert_eq!(s.1, r.1, "message {k}: sent {} received {}", s.1, r.1);
        assert_eq!(s.1.len() / 2, r.0, "message {k}: length field");
    }
    let seqs: Vec<u32> = rlines
        .iter()
        .filter(|l| l.starts_with("recv "))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "sequence numbers not consecutive: {seqs:?}"
    );
    assert_eq!(field(&rlines, "received ", "received"), N as u64);

    // Misses: each must be covered by measured preemption within its own life.
    let mut log = MissLog::with_capacity(N);
    for l in rlines.iter().filter(|l| l.starts_with("miss ")) {
        let f: Vec<u64> = l.split(' ').filter_map(|w| w.parse().ok()).collect();
        // seq, submit, deadline, delivered
        log.record(f[1], f[2], f[3]);
    }
    assert_eq!(log.count(), field(&rlines, "received ", "misses"));
    let v = preemptions.verdict(&log);
    println!(
        "C client: {N} messages, {}; {preemptions}",
        rlines.iter().find(|l| l.starts_with("latency_ns")).unwrap()
    );
    println!("misses: {v}");
    println!(
        "sender: {}",
        tlines
            .iter()
            .find(|l| l.starts_with("send_call_ns"))
            .unwrap()
    );
    assert_eq!(
        v.unexcused, 0,
        "unexcused deadline misses: {v}; {preemptions}"
    );
    assert_eq!(field(&tlines, "stats ", "submitted"), N as u64);
    assert_eq!(field(&tlines, "stats ", "dropped"), 0);
}

#[test]
fn the_readme_c_program_compiles_and_runs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let from_c = readme.find("### From C").expect("README has a C section");
    let start = readme[from_c..].find("```c\n").expect("a C block") + from_c + 5;
    let end = readme[start..].find("```").unwrap() + start;
    let dir = temp("readme");
    std::fs::write(dir.join("readme.c"), &readme[start..end]).unwrap();
    let lib = lib_dir();
    let exe = dir.join("readme");
    let o = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(Path::new(ROOT).join("include"))
        .arg(dir.join("readme.c"))
        .arg("-L")
        .arg(lib)
        .arg("-lrtchan")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = Daemon::start("readme");
    let p = Proc::spawn(Command::new(&exe).env("RTCHAN_SOCKET", &d.socket));
    let (code, lines, err) = p.finish();
    assert_eq!(code, 0, "{lines:?} {err}");
    assert!(
        lines.len() == 1 && lines[0].starts_with("hello in ") && lines[0].ends_with(" ns"),
        "{lines:?}"
    );
}

#[test]
fn the_header_works_from_cpp() {
    let dir = temp("cpp");
    let src = dir.join("use.cpp");
    std::fs::write(
        &src,
        r#"#include <cstdio>
#include <cerrno>
#include "rtchan.h"
int main() {
    rtchan_spec s;
    if (rtchan_spec_init(&s, 64, 1000000, 4, 5000000) != 0) return 1;
    rtchan_client *c = nullptr;
    int rc = rtchan_connect("/nonexistent/rtchan.sock", &c);
    std::printf("%d %s|%s\n", rc == -ENOENT, rtchan_strerror(rc), rtchan_last_error_message());
    return c == nullptr ? 0 : 1;
}
"#,
    )
    .unwrap();
    let exe = dir.join("use");
    let lib = lib_dir();
    let o = Command::new("c++")
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-I",
        ])
        .arg(Path::new(ROOT).join("include"))
        .arg(&src)
        .arg("-L")
        .arg(lib)
        .arg("-lrtchan")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("c++ runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let out = String::from_utf8(run.stdout).unwrap();
    assert!(
        out.starts_with("1 no such channel, or no daemon socket at that path|rtchan_connect: ")
            && out.contains("/nonexistent/rtchan.sock"),
        "{out}"
    );
}
