//! Shared by the tests that run `examples/rt_sender.rs` and `examples/rt_receiver.rs` as
//! processes against a daemon on the in-memory link: the daemon's configuration, the example
//! binaries (built on first use: `cargo test --test NAME` builds that test only, not the
//! examples), and reading the examples' output lines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use control::config::DaemonConfig;
use control::protocol::{ChannelList, Request};
use rtchan::daemon::client::Client as Ctl;
use rtchan::preemption::MissLog;

/// A fresh directory for one test's socket and state file.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon's configuration text: the in-memory link, a state file, sleeping when idle (the
/// machine's CPUs are shared), costs well above what a debug build needs.
pub fn config_text(dir: &Path) -> String {
    format!(
        r#"
socket = "{dir}/ctl.sock"
socket_mode = "0600"
state_file = "{dir}/state.json"
[policy]
idle = "sleep"
idle_sleep = "50us"
[cost]
per_message_ns = 2000
per_packet_ns = 1000
best_effort_run_ns = 6000
link_rate_bps = 1000000000
"#,
        dir = dir.display()
    )
}

/// [`config_text`] parsed.
pub fn config(dir: &Path) -> DaemonConfig {
    DaemonConfig::parse(&config_text(dir)).unwrap()
}

/// The daemon's channel table.
pub fn list(sock: &Path) -> ChannelList {
    Ctl::connect(sock)
        .unwrap()
        .call(&Request::List)
        .unwrap()
        .into_result()
        .unwrap()
}

/// The path of example `name`, built (once per test binary) with the profile this test was
/// built with, into the same target directory: `target/<profile>/examples/<name>`, next to
/// this binary's `target/<profile>/deps/`.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()).unwrap() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        // Cargo does not hold its build lock while tests run, so this does not wait on the
        // `cargo test` that started us; it is a no-op when `cargo test` built the examples.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let st = Command::new(cargo)
            .args(["build", "--quiet", "--profile", &profile])
            .args(["--example", "rt_sender", "--example", "rt_receiver"])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo to build the examples");
        assert!(st.success(), "cargo build of the examples failed");
        profile_dir.join("examples")
    });
    let p = dir.join(name);
    assert!(p.is_file(), "{} is not there", p.display());
    p
}

/// An example process with piped stdin and stdout (stderr goes to the test's output).
pub struct Proc {
    pub child: Child,
    pub out: BufReader<ChildStdout>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String]) -> Self {
        let mut child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, out }
    }

    /// The next output line (panics if the process ended).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(
            self.out.read_line(&mut l).unwrap() > 0,
            "the example exited early: {:?}",
            self.child.wait()
        );
        l.trim_end().to_string()
    }

    /// The next line starting with `prefix`, skipping others (returned with them).
    pub fn line_starting(&mut self, prefix: &str) -> (String, Vec<String>) {
        let mut skipped = Vec::new();
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return (l, skipped);
            }
            skipped.push(l);
        }
    }

    /// A newline on its stdin (`rt_sender --wait-stdin` goes on).
    pub fn go(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
    }

    /// Waits for the exit; true when it succeeded.
    pub fn success(mut self) -> bool {
        drop(self.child.stdin.take());
        self.child.wait().unwrap().success()
    }
}

/// `key=value` fields of a summary line.
/// A child process's line to its parent test, on the real stdout (the test harness captures
/// `println!`), marked `@@ `.
pub fn say(s: &str) {
    let mut o = std::io::stdout().lock();
    writeln!(o, "@@ {s}").unwrap();
    o.flush().unwrap();
}

/// A child process waits for its parent's go: a line on stdin (or its end).
pub fn wait_stdin() {
    let mut l = String::new();
    let _ = std::io::stdin().read_line(&mut l);
}

/// `rt_receiver --check` attached to channel `id` through `sock`, running until the channel
/// closes (so the daemon's receiving counters are its ring's while the test reads them).
pub fn checking_receiver(sock: &str, id: u32) -> Proc {
    let args: Vec<String> = [
        "--socket",
        sock,
        "--channel",
        &id.to_string(),
        "--check",
        "--timeout",
        "10s",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let mut rx = Proc::spawn("rt_receiver", &args);
    assert_eq!(rx.line(), format!("rt_receiver: channel {id} attached"));
    rx
}

pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// `field` as a number.
pub fn num(line: &str, key: &str) -> u64 {
    field(line, key).parse().unwrap()
}

/// The id in `rt_sender: channel <id> open ...`.
pub fn sender_channel(line: &str) -> u32 {
    line.strip_prefix("rt_sender: channel ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not the sender's channel line: {line}"))
}

/// `(bytes, digest)` from `rt_sender: sent <n> messages, <bytes> bytes ... digest <hex>`.
pub fn sender_sent(line: &str) -> (u64, String) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&w[..2], ["rt_sender:", "sent"], "{line}");
    let bytes = w[4].parse().unwrap();
    (bytes, w.last().unwrap().to_string())
}

/// The receiver's `late seq=.. submit=.. deadline=.. delivered=..` lines as a miss log.
pub fn misses(lines: &[String]) -> MissLog {
    let mut log = MissLog::with_capacity(lines.len());
    for l in lines.iter().filter(|l| l.starts_with("late ")) {
        log.record(num(l, "submit"), num(l, "deadline"), num(l, "delivered"));
    }
    log
}

/// Channel `id`'s statistics once `n` messages were delivered (waited for as an event; the
/// 10 s bound only keeps a broken run from hanging).
pub fn stats_once_delivered(
    client: &rtchan::client::Client,
    id: u32,
    n: u64,
) -> rtchan::client::ChannelStats {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = client.stats(id).unwrap();
        if st.rx.as_ref().is_some_and(|r| r.delivered >= n) || std::time::Instant::now() > until {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Tells sender `tx` to close its channel (it must exit with success), then reads checking
/// receiver `rx`'s summary (it must succeed too) and judges its misses by `probe`'s measured
/// preemption; prints the last report line and the summary. The summary and the verdict.
pub fn close_and_judge(
    mut tx: Proc,
    mut rx: Proc,
    probe: rtchan::preemption::PreemptionProbe,
) -> (String, rtchan::preemption::MissVerdict) {
    tx.go();
    assert!(tx.success(), "the sender failed");
    let (summary, lines) = rx.line_starting("rt_receiver: channel=");
    assert!(rx.success(), "the receiver failed: {summary}");
    let verdict = probe.finish().verdict(&misses(&lines));
    println!("{}", lines.last().map(String::as_str).unwrap_or(""));
    println!("{summary}");
    (summary, verdict)
}
