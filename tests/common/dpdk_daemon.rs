//! Helpers of the DPDK daemon tests (`tests/daemon_dpdk*.rs`) and of the multi-queue
//! af_packet one (`tests/daemon_multiqueue.rs`); included with `#[path]`, not a test target: a
//! daemon process killed on drop (stopped by SIGTERM, several together, with every thread's stack
//! when one does not stop), `rtchanctl` calls bounded in time, the checks of a real-time
//! channel's receiver, a nanosecond pcap reader, and the capture checks (pacing per queue, EDF
//! order per queue).

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dataplane::time::Nanos;
use dataplane::wire::{parse_frame, wire_bytes, RtHeader, FLAG_BEST_EFFORT, RTCHAN_UDP_PORT};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_rtchand");
pub const CTL: &str = env!("CARGO_BIN_EXE_rtchanctl");
/// How long one step (start, one rtchanctl call, stop) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh directory for one test.
/// Two free TCP ports on 127.0.0.1 (the two daemons' peering listeners).
pub fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A daemon this test started; killed (SIGKILL, by its pid) on drop if still running.
pub struct DaemonProc {
    pub name: String,
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
    /// When [`DaemonProc::terminate`] sent SIGTERM.
    terminated: Option<Instant>,
}

impl DaemonProc {
    /// `[prefix...] rtchand --config dir/NAME.toml` with `config`, output to `dir/NAME.log`;
    /// waits until its control socket (`dir/NAME.sock`, which `config` must name) answers.
    pub fn start(name: &str, prefix: &[&str], dir: &Path, config: &str) -> Result<Self, String> {
        let cfg_path = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg_path, config).map_err(|e| e.to_string())?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(DAEMON);
                c
            }
            None => Command::new(DAEMON),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut d = Self {
            name: name.into(),
            child: Some(child),
            socket: dir.join(format!("{name}.sock")),
            log,
            terminated: None,
        };
        let t = Instant::now();
        loop {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!(
                    "daemon {name} exited at start ({st}):\n{}",
                    d.log_text()
                ));
            }
            match ctl(&d.socket, &["channel", "list"]) {
                Ok(o) if o.status.code() != Some(3) => return Ok(d),
                _ => {}
            }
            if t.elapsed() > STEP_TIMEOUT {
                let where_ = threads_of(d.pid());
                return Err(format!(
                    "daemon {name} did not answer:\n{}\nits threads:\n{where_}",
                    d.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's pid (the `rtchand` process itself when the prefix commands exec).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(&mut self) -> Result<i32, String> {
        self.terminate();
        self.wait_stopped()
    }

    /// Sends SIGTERM (once the daemon is running; [`DaemonProc::wait_stopped`] collects it).
    pub fn terminate(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            self.terminated = Some(Instant::now());
        }
    }

    /// After [`DaemonProc::terminate`]: waits (bounded) for the exit status.
    pub fn wait_stopped(&mut self) -> Result<i32, String> {
        let Some(mut child) = self.child.take() else {
            return Err("already stopped".into());
        };
        let t = self.terminated.unwrap_or_else(Instant::now);
        loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                eprintln!(
                    "daemon {} stopped {:.3} s after SIGTERM",
                    self.name,
                    t.elapsed().as_secs_f64()
                );
                return Ok(st.code().unwrap_or(-1));
            }
            if t.elapsed() > STEP_TIMEOUT {
                // Where each thread is stuck, before the kill erases it: a hang is a daemon
                // bug to diagnose, not a timeout to raise.
                let where_ = threads_of(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "daemon {} did not stop on SIGTERM; its threads:\n{where_}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stops `daemons` together: SIGTERM to each, then each exit status (bounded), in order.
///
/// Why together: closing an AF_PACKET socket (what DPDK's `net_af_packet` does in
/// `rte_eth_dev_close`) waits in the kernel for RCU grace periods (`synchronize_net` in
/// `packet_release`/`packet_set_ring`, several per socket), and the grace-period kthread
/// (`rcu_preempt`, nice 0) gets little CPU beside another daemon's polling threads at nice -20
/// and a CPU hog. Stopped one after the other, the first daemon's close ran while the second's
/// cores still polled: its control thread sat in `synchronize_rcu_normal` (D state) for 4 to
/// over 30 s, and dmesg reported "rcu_preempt kthread starved". Stopped together, every
/// polling thread has ended before the sockets close.
pub fn stop_all(daemons: &mut [&mut DaemonProc]) -> Vec<Result<i32, String>> {
    for d in daemons.iter_mut() {
        d.terminate();
    }
    daemons.iter_mut().map(|d| d.wait_stopped()).collect()
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sets every thread of process `pid` to nice `n` (a Linux nice value is per thread; threads
/// started later inherit their creator's).
pub fn renice_threads(pid: u32, n: i32) -> Result<(), String> {
    let dir = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(&dir).map_err(|e| format!("cannot list {dir}: {e}"))? {
        let tid = t.map_err(|e| e.to_string())?.file_name();
        let tid = tid.to_string_lossy();
        let st = Command::new("renice")
            .args(["--priority", &n.to_string(), "-p", &tid])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run renice: {e}"))?;
        if !st.success() {
            return Err(format!("renice --priority {n} -p {tid} failed ({st})"));
        }
    }
    Ok(())
}

/// Every thread of process `pid`: its name, kernel wait channel, state and kernel stack, then
/// (when gdb is installed and attaches within 30 s) every thread's user-space backtrace.
pub fn threads_of(pid: u32) -> String {
    let mut out = String::new();
    let task = format!("/proc/{pid}/task");
    if let Ok(dir) = std::fs::read_dir(&task) {
        for t in dir.flatten() {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            out += &format!(
                "tid {} {} wchan {} state {}\n{}",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim(),
                read("stat").split_whitespace().nth(2).unwrap_or("?"),
                read("stack")
            );
        }
    }
    if let Ok(o) = Command::new("timeout")
        .args(["30", "gdb", "-p", &pid.to_string(), "-batch", "-ex"])
        .arg("thread apply all bt")
        .stdin(Stdio::null())
        .output()
    {
        out += &String::from_utf8_lossy(&o.stdout);
    }
    out
}

/// The machine's steal time so far, ms summed over its CPUs (`/proc/stat`, in USER_HZ = 100
/// ticks): time the hypervisor ran something else on a virtual CPU that had work. The
/// preemption probe cannot see it (a thread whose vCPU is held is not waiting on a run
/// queue), so a run prints it beside the probe's figure: an unexcused miss or EDF violation
/// in a run with much steal points there.
pub fn steal_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = cpu.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks * 10)
}

/// Runs `rtchanctl --socket S ARGS`, bounded in time.
pub fn ctl(socket: &Path, args: &[&str]) -> Result<Output, String> {
    let mut child = Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rtchanctl: {e}"))?;
    // Drained while it runs: a reply larger than a pipe's buffer (64 KiB; `stats` after many
    // misses lists them) would otherwise block rtchanctl in write(2) until the timeout.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(Output {
                status,
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
            });
        }
        if t.elapsed() > STEP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("rtchanctl {args:?} did not finish"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `rtchanctl --json ARGS`: the reply's `result`, or the error text.
pub fn ctl_json(socket: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(socket, &all)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "rtchanctl {args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["ok"] != serde_json::Value::Bool(true) {
        return Err(format!("rtchanctl {args:?}: {v}"));
    }
    Ok(v["result"].clone())
}

/// [`ctl_json`]'s result as `T`.
pub fn typed<T: serde::de::DeserializeOwned>(socket: &Path, args: &[&str]) -> Result<T, String> {
    let v = ctl_json(socket, args)?;
    serde_json::from_value(v.clone()).map_err(|e| format!("rtchanctl {args:?}: {e}: {v}"))
}

/// `stats`: every channel's statistics.
pub fn stats(socket: &Path) -> Result<Vec<control::protocol::ChannelStatsInfo>, String> {
    typed(socket, &["stats"])
}

/// Channel `id`'s entry of `v`.
pub fn find(
    v: &[control::protocol::ChannelStatsInfo],
    id: u32,
) -> Result<&control::protocol::ChannelStatsInfo, String> {
    v.iter()
        .find(|s| s.id == id)
        .ok_or_else(|| format!("channel {id} missing from the statistics"))
}

/// One line of what a real-time channel did: `label`, the sender's counters (`tx1` at the
/// measurement, `tx2` a settling time later) and the receiver's.
pub fn channel_line(
    label: &str,
    tx1: &control::protocol::TxCounters,
    tx2: &control::protocol::TxCounters,
    rx: &control::protocol::RxCounters,
) -> String {
    format!(
        "{label}: submitted {}, sent {} (late packets {}), delivered {}; latency p50 {:.3} p99 \
         {:.3} max {:.3} ms; misses {} lost {}",
        tx2.submitted,
        tx1.sent,
        tx2.late_packets,
        rx.delivered,
        rx.latency.p50 as f64 / 1e6,
        rx.latency.p99 as f64 / 1e6,
        rx.latency.max as f64 / 1e6,
        rx.deadline_misses,
        rx.lost
    )
}

/// The checks of one real-time channel's receiver after a run, each failure pushed to
/// `problems` under `label`: no deadline miss that the polling threads' measured OS preemption
/// (`preempted`) does not explain (each listed miss against the wait during its own life), no
/// loss, duplicate or reordering, and everything the sender had sent (`sent_before`, read a
/// settling time before the receiver's snapshot `rx`) delivered.
pub fn judge_receiver(
    label: &str,
    sent_before: u64,
    rx: &control::protocol::RxCounters,
    preempted: &rtchan::preemption::Preemptions,
    problems: &mut Vec<String>,
) {
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{label}: {what}"));
        }
    };
    let mut log = rtchan::preemption::MissLog::with_capacity(rx.recent_misses.len());
    for m in &rx.recent_misses {
        log.record(m.submit, m.deadline, m.delivered);
    }
    log.unrecorded = rx.older_misses;
    let verdict = preempted.verdict(&log);
    if rx.deadline_misses > 0 {
        eprintln!("{label}: {verdict}");
    }
    check(
        verdict.unexcused == 0,
        format!(
            "{} of {} deadline misses not explained by measured OS preemption ({verdict})",
            verdict.unexcused, rx.deadline_misses
        ),
    );
    check(rx.lost == 0, format!("{} messages lost", rx.lost));
    check(
        rx.duplicates == 0 && rx.reordered == 0,
        format!("{} duplicates, {} reordered", rx.duplicates, rx.reordered),
    );
    check(
        rx.delivered >= sent_before && sent_before > 0,
        format!(
            "delivered {} < {sent_before} sent a settling time earlier",
            rx.delivered
        ),
    );
}

/// One captured frame: its pcap timestamp (ns) and bytes.
pub struct Captured {
    pub ts: Nanos,
    pub frame: Vec<u8>,
}

/// Reads a nanosecond pcap file (what net_pcap writes).
pub fn read_pcap_ns(path: &Path) -> Result<Vec<Captured>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 24 {
        return Err(format!("{}: shorter than a pcap header", path.display()));
    }
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_3c4d => true,
        m if m.swap_bytes() == 0xa1b2_3c4d => false,
        m => {
            return Err(format!(
                "{}: not a nanosecond pcap ({m:#x})",
                path.display()
            ))
        }
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = data[off..off + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let ts = u64::from(u32_at(off)) * 1_000_000_000 + u64::from(u32_at(off + 4));
        let incl = u32_at(off + 8) as usize;
        if incl != u32_at(off + 12) as usize {
            return Err(format!("{}: a frame was truncated", path.display()));
        }
        off += 16;
        if off + incl > data.len() {
            return Err(format!("{}: truncated record", path.display()));
        }
        frames.push(Captured {
            ts,
            frame: data[off..off + incl].to_vec(),
        });
        off += incl;
    }
    if off != data.len() {
        return Err(format!("{}: trailing bytes", path.display()));
    }
    Ok(frames)
}

/// A parsed captured packet.
#[derive(Clone, Copy, Debug)]
pub struct Pkt {
    /// pcap timestamp, ns (the capture's own clock).
    pub ts: Nanos,
    /// Bytes on the wire (padding, FCS, preamble, gap included).
    pub wire: u64,
    pub header: RtHeader,
}

impl Pkt {
    pub fn best_effort(&self) -> bool {
        self.header.flags & FLAG_BEST_EFFORT != 0
    }
}

/// Parses every captured frame as rtchan; errors name the first frame that is not.
pub fn parse_capture(frames: &[Captured]) -> Result<Vec<Pkt>, String> {
    frames
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = parse_frame(&c.frame, RTCHAN_UDP_PORT)
                .map_err(|e| format!("frame {i} is not a valid rtchan frame: {e}"))?;
            Ok(Pkt {
                ts: c.ts,
                wire: wire_bytes(c.frame.len()),
                header: p.header,
            })
        })
        .collect()
}

/// The pacing check: replaying the link scheduler's model (`busy_until`) at `rate_bps` on the
/// capture's timestamps, the wire time queued ahead of a packet (its own included) may not
/// exceed `limit_ns` (the in-flight limit) plus `slack(ts)`: what the packet's stamp may lag
/// behind its release. Returns one line per violation.
pub fn pacing_violations(
    pkts: &[Pkt],
    rate_bps: u64,
    limit_ns: Nanos,
    slack: impl Fn(Nanos) -> Nanos,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut busy: Nanos = 0;
    for (i, p) in pkts.iter().enumerate() {
        let tx = (p.wire as u128 * 8 * 1_000_000_000).div_ceil(u128::from(rate_bps)) as Nanos;
        busy = busy.max(p.ts) + tx;
        let backlog = busy - p.ts;
        let allowed = limit_ns + slack(p.ts);
        if backlog > allowed {
            out.push(format!(
                "packet {i}: {backlog} ns of wire time queued at {rate_bps} b/s, more than the \
                 in-flight limit {limit_ns} ns + slack {} ns",
                allowed - limit_ns
            ));
        }
    }
    out
}

/// What the EDF check needs to know of a real-time channel.
#[derive(Clone, Copy, Debug)]
pub struct RtChannel {
    /// End-to-end bound D: the header deadline is ℓ + D.
    pub deadline: Nanos,
    /// Admitted relative CPU deadline: every packet of a message is written by ℓ + this.
    pub cpu_deadline: Nanos,
    /// Admitted relative link deadline: the link scheduler's key is ℓ + this.
    pub link_deadline: Nanos,
}

/// The EDF check on one queue's capture, with `to_mono` mapping capture times to the clock of
/// the headers. For packets k before j on the wire, both real-time: if j's message was
/// certainly written before k was released (ℓ_j + cpu_deadline_j + `stamp_slack` < t_k) and
/// j's link deadline is earlier than k's, the link scheduler broke EDF — unless `excused(from,
/// to)` (the polling threads' measured OS preemption over `[ℓ_j, t_k]`) covers the time by
/// which the certainty margin was exceeded (the handler may have written j late because the OS
/// took its CPU). Best-effort packets are not compared: the best-effort reserve lifts them
/// ahead while it has credit. Returns one line per violation.
pub fn edf_violations(
    pkts: &[Pkt],
    channels: &std::collections::HashMap<u32, RtChannel>,
    to_mono: impl Fn(Nanos) -> Nanos,
    stamp_slack: Nanos,
    excused: impl Fn(Nanos, Nanos) -> Nanos,
) -> Vec<String> {
    struct Rt {
        idx: usize,
        t: Nanos,
        written_by: Nanos,
        ell: Nanos,
        link_deadline: Nanos,
    }
    let rt: Vec<Rt> = pkts
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.best_effort())
        .filter_map(|(i, p)| {
            let c = channels.get(&p.header.channel)?;
            let ell = p.header.deadline.saturating_sub(c.deadline);
            Some(Rt {
                idx: i,
                t: to_mono(p.ts),
                written_by: ell + c.cpu_deadline,
                ell,
                link_deadline: ell + c.link_deadline,
            })
        })
        .collect();
    let mut out = Vec::new();
    for (a, k) in rt.iter().enumerate() {
        for j in &rt[a + 1..] {
            if j.link_deadline >= k.link_deadline || j.written_by + stamp_slack >= k.t {
                continue;
            }
            let over = k.t - (j.written_by + stamp_slack);
            if excused(j.ell, k.t) >= over {
                continue;
            }
            let (pk, pj) = (&pkts[k.idx].header, &pkts[j.idx].header);
            out.push(format!(
                "packet {} (ch {} seq {}) left {} ns after packet {} (ch {} seq {}, link deadline \
                 {} ns earlier) must have been written",
                k.idx,
                pk.channel,
                pk.msg_seq,
                over,
                j.idx,
                pj.channel,
                pj.msg_seq,
                k.link_deadline - j.link_deadline
            ));
            if out.len() >= 20 {
                return out;
            }
        }
    }
    out
}

/// A map from a capture's clock to the headers' clock (CLOCK_MONOTONIC), from `marks`:
/// (capture stamp, stamp − submit) of every captured packet. The capture clock may run at a
/// slightly different rate (net_pcap's TSC-frequency estimate: ~0.1 %), so the map is the line
/// through two anchors, each the packet with the smallest (stamp − submit) in a window of
/// `window` at either end of `[from, to]` (header clock), inside the steady part of the run.
/// Every packet was stamped after its submit, so at both anchors the offset is estimated at
/// least as large as the true one, by that packet's submit-to-wire time; with both clocks
/// linear so is the line in between: mapped times come out early by at most the larger of the
/// two anchors' submit-to-wire times (which only makes an EDF check more lenient) and the
/// rate is off by at most their difference over the anchors' distance.
pub fn clock_map(
    marks: &[(Nanos, i128)],
    from: Nanos,
    to: Nanos,
    window: Nanos,
) -> impl Fn(Nanos) -> Nanos {
    let c = marks.iter().map(|m| m.1).min().unwrap_or(0);
    let pcap = |t: Nanos| (t as i128 + c) as Nanos;
    let anchor = |lo: Nanos, hi: Nanos| {
        marks
            .iter()
            .filter(|m| m.0 >= lo && m.0 <= hi)
            .min_by_key(|m| m.1)
            .copied()
            .unwrap_or((lo, c))
    };
    let a0 = anchor(pcap(from), pcap(from + window));
    let a1 = anchor(pcap(to.saturating_sub(window)), pcap(to));
    move |ts: Nanos| {
        let span = (a1.0 as i128 - a0.0 as i128).max(1);
        let off = a0.1 + (a1.1 - a0.1) * (ts as i128 - a0.0 as i128) / span;
        (ts as i128 - off) as Nanos
    }
}

/// The `[peering]` and `[[peers]]` tables of host `name` listening on 127.0.0.1:`port`, with
/// its one peer `peer` at 127.0.0.1:`peer_port` and a 1 ms network bound.
pub fn loopback_peering(name: &str, port: u16, peer: &str, peer_port: u16) -> String {
    format!(
        "[peering]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n[[peers]]\n\
         name = \"{peer}\"\naddress = \"127.0.0.1:{peer_port}\"\nnetwork_bound = \"1ms\"\n"
    )
}
