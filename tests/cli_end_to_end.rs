//! `rtchanctl` end to end against a real `rtchand` process on the in-memory link: every
//! command, table and JSON output, exit codes 0/1/2/3, SIGTERM (drain, final statistics,
//! exit 0) and a restart that re-establishes the persisted channels.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CTL: &str = env!("CARGO_BIN_EXE_rtchanctl");
const DAEMON: &str = env!("CARGO_BIN_EXE_rtchand");

struct Env {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    state: PathBuf,
}

impl Env {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rtchan-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ctl.sock");
        let state = dir.join("channels.json");
        let config = dir.join("rtchand.toml");
        std::fs::write(
            &config,
            format!(
                r#"socket = "{}"
state_file = "{}"
[policy]
idle = "sleep"
idle_sleep = "200us"
[cost]
per_message_ns = 2000
per_packet_ns = 1000
best_effort_run_ns = 6000
link_rate_bps = 1000000000
"#,
                socket.display(),
                state.display()
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            socket,
            state,
        }
    }

    fn start(&self) -> Child {
        let child = Command::new(DAEMON)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while self.ctl(&["channel", "list"]).status.code() == Some(3) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(&a);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }
}

fn stop(mut child: Child) -> (i32, String) {
    // SAFETY-free: `kill` the process we spawned, by its pid.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    loop {
        if let Some(_s) = child.try_wait().unwrap() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const OPEN: &[&str] = &[
    "channel",
    "open",
    "--mmax",
    "1500",
    "--imin",
    "1ms",
    "--bmax",
    "2",
    "--deadline",
    "5ms",
    "--dst",
    "local",
];

#[test]
fn cli_against_a_daemon_and_restart() {
    let env = Env::new("e2e");
    let daemon = env.start();

    // Open with a built-in source; the table shows the split of D.
    let mut args = OPEN.to_vec();
    args.extend(["--source", "periodic", "--policy", "drop-oldest"]);
    let out = env.ctl(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("channel 0") && t.contains("deadline D") && t.contains("receiver"),
        "{t}"
    );

    // A dry run reserves nothing; JSON on every command.
    let mut dry = OPEN.to_vec();
    dry.push("--dry-run");
    let v = env.json(&dry);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"]["state"], "dry_run");
    let l = env.json(&["channel", "list"]);
    assert_eq!(l["result"]["channels"].as_array().unwrap().len(), 1, "{l}");
    let ch = &l["result"]["channels"][0];
    assert_eq!(ch["policy"], "drop-oldest");
    assert_eq!(ch["deadline"], 5_000_000);
    let d_s = ch["sender"]["link_deadline"].as_u64().unwrap();
    let d_r = ch["receiver"]["deadline"].as_u64().unwrap();
    let net = ch["network_bound"].as_u64().unwrap();
    assert_eq!(d_s + net + d_r, 5_000_000, "D = d_s + network + d_r");

    // Tables.
    let out = env.ctl(&["channel", "list"]);
    assert!(text(&out).contains("D_SEND"), "{}", text(&out));
    let out = env.ctl(&["channel", "show", "0"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).contains("CPU deadline"), "{}", text(&out));
    let out = env.ctl(&["policy", "show"]);
    assert!(text(&out).contains("granularity"), "{}", text(&out));

    // Traffic flows and is delivered in-process (memlink loopback).
    let t0 = Instant::now();
    loop {
        let s = env.json(&["stats", "0"]);
        let delivered = s["result"][0]["rx"]["delivered"].as_u64().unwrap_or(0);
        if delivered >= 20 {
            assert!(s["result"][0]["tx"]["sent"].as_u64().unwrap() >= delivered);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no delivery: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.ctl(&["stats", "--watch", "--interval", "100ms", "--count", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out).matches("DELIVER").count(), 2, "{}", text(&out));

    // Exit codes: refused 1, bad input 2 (clap and the daemon), unknown id 2.
    let out = env.ctl(&[
        "channel",
        "open",
        "--mmax",
        "64KiB",
        "--imin",
        "100us",
        "--bmax",
        "1",
        "--deadline",
        "10ms",
        "--dst",
        "local",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refuses"), "{}", text(&out));
    let out = env.ctl(&[
        "channel",
        "open",
        "--mmax",
        "1500",
        "--imin",
        "0ms",
        "--bmax",
        "1",
        "--deadline",
        "1ms",
        "--dst",
        "local",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = env.ctl(&[
        "channel",
        "open",
        "--mmax",
        "1500",
        "--imin",
        "1ms",
        "--bmax",
        "1",
        "--deadline",
        "1ms",
        "--dst",
        "nowhere",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nowhere"));
    let out = env.ctl(&["channel", "close", "77"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = env.ctl(&["channel", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    // Policy: a change of what admission assumed is refused while channels are open.
    let out = env.ctl(&["policy", "set", "--granularity", "8"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = env.ctl(&["policy", "set", "--overflow", "drop-newest"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("drop-newest"));

    // A second channel, closed again: the table and the state file follow.
    let out = env.ctl(OPEN);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = env.ctl(&["channel", "close", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = std::fs::read_to_string(&env.state).unwrap();
    assert!(
        state.contains("\"id\": 0") && !state.contains("\"id\": 1"),
        "{state}"
    );

    // SIGTERM: stop, drain, final statistics, exit 0; the table stays persisted.
    let (code, stdout) = stop(daemon);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("final statistics"), "{stdout}");
    assert!(!env.socket.exists(), "the socket is removed");
    let out = env.ctl(&["channel", "list"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "daemon unreachable: {}",
        text(&out)
    );

    // Restart: channel 0 comes back with its id, policy and source, and carries traffic again.
    let daemon = env.start();
    let l = env.json(&["channel", "list"]);
    let chans = l["result"]["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 1, "{l}");
    assert_eq!(chans[0]["id"], 0);
    assert_eq!(chans[0]["policy"], "drop-oldest");
    assert_eq!(chans[0]["source"], "periodic");
    let t0 = Instant::now();
    while env.json(&["stats", "0"])["result"][0]["rx"]["delivered"]
        .as_u64()
        .unwrap_or(0)
        < 5
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no traffic after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new channel does not reuse a persisted id.
    let v = env.json(OPEN);
    assert_eq!(v["result"]["id"], 1, "{v}");
    let (code, _) = stop(daemon);
    assert_eq!(code, 0);
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn admission_check_runs_offline() {
    let dir = std::env::temp_dir().join(format!("rtchan-cli-adm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/admission-check.json");
    let out = Command::new(CTL)
        .args(["--socket", "/nonexistent/sock", "admission", "check"])
        .arg(&example)
        .output()
        .unwrap();
    // The example has refused and invalid requests: printed, and exit 1.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("admitted") && t.contains("rejected") && t.contains("invalid"),
        "{t}"
    );
    let ok = dir.join("ok.json");
    std::fs::write(
        &ok,
        r#"{"requests":[{"mmax":1000,"imin":1000000,"bmax":1,"deadline":100000}]}"#,
    )
    .unwrap();
    let out = Command::new(CTL)
        .args(["--json", "admission", "check"])
        .arg(&ok)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["outcome"], "admitted");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"requests":[{"mmax":1000,"bogus":1}]}"#).unwrap();
    let out = Command::new(CTL)
        .args(["admission", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bogus"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_daemon_is_exit_3_and_a_bad_config_is_refused() {
    let out = Command::new(CTL)
        .args(["--socket", "/nonexistent/rtchan.sock", "channel", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let dir = std::env::temp_dir().join(format!("rtchan-cli-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[port]\nkind = \"dpdk\"\n").unwrap();
    let out = Command::new(DAEMON)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("port.device"), "{}", text(&out));
    std::fs::write(&cfg, "[policy]\ngranularty = 2\n").unwrap();
    let out = Command::new(DAEMON)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("granularty"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
