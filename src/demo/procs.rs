//! The daemon bed's application processes as its parent sees them ([`App`]: spawned, told
//! lines on stdin, read line by line on stdout), and the few control-socket calls the bed
//! makes of the daemons.

use super::DemoError;
use crate::daemon::client::Client as Ctl;
use control::protocol::Request;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// One application process: its stdin (held open until it should end) and its stdout lines.
pub(super) struct App {
    what: String,
    child: Child,
    out: BufReader<ChildStdout>,
}

impl App {
    pub(super) fn spawn(exe: &Path, what: String, args: &[String]) -> Result<Self, DemoError> {
        let mut child = Command::new(exe)
            .arg("demo-app")
            .args(args)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DemoError::App(format!("{what}: cannot run {}: {e}", exe.display())))?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self { what, child, out })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its next line; if it ends instead, why (its stderr).
    pub(super) fn line(&mut self, waiting_for: &str) -> Result<String, DemoError> {
        let mut l = String::new();
        match self.out.read_line(&mut l) {
            Ok(n) if n > 0 => Ok(l.trim_end().to_string()),
            _ => {
                let status = self.child.wait().ok();
                let err = self.stderr();
                Err(DemoError::App(format!(
                    "{} ended before {waiting_for} ({}): {err}",
                    self.what,
                    status.map_or("status unknown".into(), |s| s.to_string()),
                )))
            }
        }
    }

    pub(super) fn tell(&mut self, line: &str) -> Result<(), DemoError> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{line}")
            .map_err(|e| DemoError::App(format!("{}: writing to its stdin: {e}", self.what)))
    }

    /// Ends its stdin (the signal to finish).
    pub(super) fn end_input(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for it to exit; an error unless it succeeded.
    pub(super) fn finish(mut self) -> Result<(), DemoError> {
        self.end_input();
        let status = self
            .child
            .wait()
            .map_err(|e| DemoError::App(format!("{}: {e}", self.what)))?;
        if status.success() {
            return Ok(());
        }
        let err = self.stderr();
        Err(DemoError::App(format!(
            "{} failed ({status}): {err}",
            self.what
        )))
    }

    /// What it wrote to stderr (its error), once it has exited.
    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        err.trim().to_string()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Only a process still running here is one an error left behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The daemon's polling threads' name prefix.
pub(super) const POLLING: &str = "rtchan-core";

/// How many threads of process `pid` are named as polling threads.
pub(super) fn polling_threads(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with(POLLING))
        })
        .count()
}

/// One control-socket call, its result decoded.
pub(super) fn call<T: serde::de::DeserializeOwned>(
    c: &mut Ctl,
    req: &Request,
) -> Result<T, DemoError> {
    c.call(req)
        .map_err(|e| DemoError::Daemon(e.to_string()))?
        .into_result()
        .map_err(|e| DemoError::Daemon(e.message))
}

/// A receiving side's counters (delivered, deadline misses, bytes).
pub(super) fn rx_counters(ctl: &mut Ctl, id: u32) -> Result<(u64, u64, u64), DemoError> {
    let s: Vec<crate::client::ChannelStats> = call(
        ctl,
        &Request::Stats(control::protocol::StatsArgs { id: Some(id) }),
    )?;
    Ok(s.into_iter()
        .filter(|s| s.id == id)
        .find_map(|s| s.rx)
        .map_or((0, 0, 0), |r| (r.delivered, r.deadline_misses, r.bytes)))
}
