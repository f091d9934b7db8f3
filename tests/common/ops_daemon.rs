//! The daemon of the `ops_*` tests (`tests/ops_capture.rs`, `ops_metrics.rs`, `ops_top.rs`;
//! `ops_service.rs` takes its `rtchanctl` call); included
//! with `#[path]`, not a test target: an `rtchand` started on a configuration file and killed
//! (its directory removed) on drop, and `rtchanctl` calls that panic on a failed reply.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use control::protocol::Reply;

pub const CTL: &str = env!("CARGO_BIN_EXE_rtchanctl");
pub const DAEMON: &str = env!("CARGO_BIN_EXE_rtchand");
/// How long the daemon may take to answer, and any other step of a test.
pub const STEP: Duration = Duration::from_secs(20);

/// A daemon this test started; killed on drop, its directory removed.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
}

impl Daemon {
    /// `rtchand --config CFG` (its control socket `dir/ctl.sock`); waits until it answers.
    pub fn spawn(dir: PathBuf, cfg: &Path) -> Self {
        let child = Command::new(DAEMON)
            .arg("--config")
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            socket: dir.join("ctl.sock"),
            dir,
            child: Some(child),
        };
        let t = Instant::now();
        while ctl(&d.socket, &["channel", "list"]).status.code() != Some(0) {
            assert!(t.elapsed() < STEP, "rtchand did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rtchanctl --socket S ARGS`.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// `rtchanctl --json ARGS`: the reply's result as `T`; panics on an error reply.
pub fn ctl_json<T: serde::de::DeserializeOwned>(socket: &Path, args: &[&str]) -> T {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = ctl(socket, &a);
    let r: Reply = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    r.into_result().unwrap()
}
