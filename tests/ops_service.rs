//! Running rtchand as a service: `contrib/systemd/rtchand.service` passes
//! `systemd-analyze verify` (with `ExecStart` pointed at this build's `rtchand`; a unit with a
//! bad value is shown to fail the same check), and SIGHUP re-reads the configuration file,
//! applies its run-time policy, names what needs a restart, and changes nothing when the file
//! no longer loads.
//!
//! Needs `systemd-analyze` (Debian package systemd) for the unit check: prints SKIPPED without
//! it, fails when `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::protocol::{PolicyInfo, Reply};

#[path = "common/ops_daemon.rs"]
mod ops_daemon;
use ops_daemon::{ctl, DAEMON};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/systemd/rtchand.service"
);
const STEP: Duration = Duration::from_secs(20);

/// A scratch directory, removed when the test ends, whether it passed or not.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("rtchan-svc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// `systemd-analyze verify FILE`: (success, everything it printed).
fn verify(unit: &Path) -> Option<(bool, String)> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .ok()?;
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let d = dir("unit");
    let text = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/local/bin/rtchand", DAEMON);
    assert!(
        text.contains(&format!("ExecStart={DAEMON} --config")),
        "{text}"
    );
    for needed in [
        "After=network-online.target",
        "RuntimeDirectory=rtchan",
        "LimitMEMLOCK=infinity",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "isolcpus=",
        "CPUAffinity=",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    let unit = d.join("rtchand.service");
    std::fs::write(&unit, &text).unwrap();
    let Some((ok, said)) = verify(&unit) else {
        if std::env::var_os("CI").is_some() {
            panic!("systemd-analyze not available in CI: install the Debian package systemd");
        }
        eprintln!(
            "SKIPPED (NOT VERIFIED): systemd-analyze is not installed here, so \
             contrib/systemd/rtchand.service was not checked"
        );
        return;
    };
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The same check catches a bad value (it only warns, so the test reads what it says).
    let bad = d.join("bad.service");
    std::fs::write(
        &bad,
        text.replace("LimitMEMLOCK=infinity", "LimitMEMLOCK=lots"),
    )
    .unwrap();
    let (_, said) = verify(&bad).unwrap();
    assert!(said.contains("lots"), "a bad value went unnoticed: {said}");
}

fn config(dir: &Path, granularity: u32, socket_mode: &str) -> String {
    format!(
        r#"socket = "{}/ctl.sock"
socket_mode = "{socket_mode}"
[policy]
idle = "sleep"
idle_sleep = "200us"
granularity = {granularity}
"#,
        dir.display()
    )
}

fn policy(socket: &Path) -> PolicyInfo {
    let out = ctl(socket, &["--json", "policy", "show"]);
    let r: Reply = serde_json::from_slice(&out.stdout).unwrap();
    r.into_result().unwrap()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hup(pid: u32) {
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Waits until the daemon's log (stderr, in `log`) holds `n` lines containing `what`.
fn wait_log(log: &Path, what: &str, n: usize) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= n {
            return text;
        }
        assert!(t.elapsed() < STEP, "no '{what}' in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_run_time_policy() {
    let d = dir("hup");
    let cfg = d.join("rtchand.toml");
    let log = d.join("rtchand.log");
    let socket = d.join("ctl.sock");
    std::fs::write(&cfg, config(&d, 4, "0600")).unwrap();
    let err = std::fs::File::create(&log).unwrap();
    let child = Command::new(DAEMON)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap();
    let pid = child.id();
    let _running = Running(child);
    wait_log(&log, "rtchand: serving", 1);
    assert_eq!(policy(&socket).granularity, 4);

    // A run-time change and a restart-only one.
    std::fs::write(&cfg, config(&d, 2, "0660")).unwrap();
    hup(pid);
    wait_log(&log, "SIGHUP: policy reloaded", 1);
    // The daemon logs the restart-only keys on the line after; wait for it too.
    let text = wait_log(&log, "not applied until a restart: socket_mode", 1);
    assert_eq!(policy(&socket).granularity, 2, "{text}");

    // A file that no longer loads changes nothing.
    std::fs::write(&cfg, "[policy]\ngranularity = \"many\"\n").unwrap();
    hup(pid);
    let text = wait_log(&log, "nothing changed", 1);
    assert_eq!(policy(&socket).granularity, 2, "{text}");
    // Logs: one line per event, with its level (journald filters on it).
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no '{what}' line in:\n{text}"))
            .to_string()
    };
    assert!(line("policy reloaded").contains(" INFO "), "{text}");
    let bad = line("TOML parse error");
    assert!(
        bad.contains(" WARN ") && bad.contains("nothing changed"),
        "{text}"
    );

    // A policy the daemon refuses (no granularity 0) is reported, the old one kept.
    std::fs::write(&cfg, config(&d, 0, "0600")).unwrap();
    hup(pid);
    let text = wait_log(&log, "SIGHUP: ", 4);
    assert!(
        text.contains("policy not changed") || text.matches("nothing changed").count() == 2,
        "{text}"
    );
    assert_eq!(policy(&socket).granularity, 2, "{text}");
    eprintln!("{text}");
}
