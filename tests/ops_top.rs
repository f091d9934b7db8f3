//! `rtchanctl top` against a running `rtchand` (in-memory link, a loopback channel with a
//! built-in source): under tmux (a real terminal) the full screen shows the channel's row and
//! its rate after a refresh, and `q` quits (exit 0, the terminal restored); with stdout not a
//! terminal it falls back to `stats --watch` (the stats table, repeatedly).
//!
//! Needs `tmux` for the terminal half (prints SKIPPED without it, fails in CI).

#[path = "common/ops_daemon.rs"]
mod ops_daemon;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use control::protocol::{ChannelInfo, Reply};
use ops_daemon::{ctl, Daemon, CTL, STEP};

fn start(name: &str) -> (Daemon, u32) {
    let dir = std::env::temp_dir().join(format!("rtchan-top-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("rtchand.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = \"{}/ctl.sock\"\n[policy]\nidle = \"sleep\"\nidle_sleep = \"200us\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let d = Daemon::spawn(dir, &cfg);
    let out = ctl(
        &d.socket,
        &[
            "--json",
            "channel",
            "open",
            "--mmax",
            "100",
            "--imin",
            "1ms",
            "--bmax",
            "2",
            "--deadline",
            "5ms",
            "--dst",
            "local",
            "--source",
            "periodic",
        ],
    );
    let r: Reply = serde_json::from_slice(&out.stdout).unwrap();
    let ch: ChannelInfo = r.into_result().unwrap();
    (d, ch.id)
}

/// A tmux server on a socket of the test's own (`tmux -L`), so the test never touches
/// anyone else's sessions; dropping it kills that server and its session, pass or fail.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_channels_live_and_q_quits() {
    if Command::new("tmux").arg("-V").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("tmux not available in CI");
        }
        eprintln!("SKIPPED rtchanctl top under tmux: tmux not found");
        return;
    }
    let (d, id) = start("tty");
    let session = format!("rtchan-top-{}", std::process::id());
    let tmux = Tmux {
        socket: session.clone(),
    };
    let done = d.dir.join("exit-status");
    // The shell records top's exit status once it ends, then the session closes.
    let cmd = format!(
        "{CTL} --socket {} top; echo $? > {}",
        d.socket.display(),
        done.display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(started.status.success(), "{started:?}");
    // Two refreshes: the second has a rate.
    let t = Instant::now();
    let screen = loop {
        std::thread::sleep(Duration::from_millis(300));
        let pane = tmux.run(&["capture-pane", "-p", "-t", &session]);
        let text = String::from_utf8_lossy(&pane.stdout).into_owned();
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
            .map(str::to_string);
        if let Some(r) = &row {
            if r.contains("/s") {
                break text;
            }
        }
        if t.elapsed() > STEP {
            panic!("top never showed channel {id} with a rate:\n{text}");
        }
    };
    assert!(screen.contains("rtchan top: 1 channel(s)"), "{screen}");
    // The cores' line: each core's busy share over the refresh and its longest stretch.
    assert!(
        screen.contains("cores: tx0 busy") && screen.contains("rx0 busy"),
        "{screen}"
    );
    assert!(
        screen.contains("p99") && screen.contains("misses"),
        "{screen}"
    );
    tmux.run(&["send-keys", "-t", &session, "q"]);
    let t = Instant::now();
    while !done.exists() {
        if t.elapsed() > STEP {
            panic!("top did not quit on q");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&done).unwrap().trim(), "0");
}

#[test]
fn top_without_a_terminal_is_stats_watch() {
    let (d, id) = start("pipe");
    let mut child = Command::new(CTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(["top", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or_default().to_string();
    assert!(!header.is_empty(), "no output: {text}");
    assert!(
        text.matches(&header).count() >= 2,
        "not refreshed like stats --watch:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(&id.to_string())),
        "{text}"
    );
    assert!(
        !text.contains("\u{1b}["),
        "terminal escapes on a pipe:\n{text}"
    );
}
