//! The demo's run: the hosts' daemons ([`super::hosts`]), each real-time channel fed by an
//! application process through [`crate::client`] and drained by another ([`super::app`]).
//!
//! Sequence: start the daemons and the preemption probe (it watches their polling threads);
//! per channel spawn `rtchand demo-app send` (it opens the channel on the sending host:
//! admission on both hosts) and, once it names its channel, `rtchand demo-app recv` (it
//! attaches the receiving end on the receiving host); print what was admitted; open the
//! best-effort flood (the sending daemon's built-in greedy source, drained by the receiving
//! daemon's sink); say `go` to every sender; show progress from the receiving daemon's
//! counters until the duration is up (or a Ctrl-C); collect each sender's report (messages,
//! refusals, slow submit calls), let the last messages arrive, stop the receivers and collect
//! theirs (latency, every miss with its times, sequence gaps); let the receivers detach and
//! exit, then the senders close their channels and exit; close the flood; judge each miss
//! (with the backlog rule over the admitted path, [`path_bound`]).
//!
//! Whose run-queue wait excuses a miss: the daemons' polling threads (`rtchan-core*`, in the
//! combined curve) and the channel's own sending process (watched apart: only within that
//! message's own slow submit call, which the process times and reports). The receiving
//! processes are not on a message's timed path: the receiving core stamps a message when it
//! delivers it into the process's ring, so their waits never excuse a miss (a receiver too slow
//! for its ring shows up as sequence gaps: lost).

use super::app::{ReceiverReport, SenderReport};
use super::hosts::Hosts;
use super::{
    print_header, print_report, ChannelRow, DemoArgs, DemoError, DemoReport, LinkInfo, Progress,
    CHANNELS, REFUSED, WARM_UP,
};
use crate::daemon::client::Client as Ctl;
use crate::preemption::{BusyBound, Load, PreemptionProbe, SlowSubmits, Stage};
use control::admission::ResourceModel;
use control::protocol::{ChannelInfo, ChannelList, CloseArgs, OpenArgs, Request};
use dataplane::spec::ChannelSpec;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The best-effort flood: 1400-byte messages from the daemon's greedy source at ten times one
/// every 10 µs (about 11 Gb/s asked of a 1 Gb/s link), a 512-message queue.
const FLOOD: (u64, u64, u32, &str) = (1400, 10_000, 512, "greedy:10");

/// One application process: its stdin (held open until it should end) and its stdout lines.
struct App {
    what: String,
    child: Child,
    out: BufReader<ChildStdout>,
}

impl App {
    fn spawn(exe: &Path, what: String, args: &[String]) -> Result<Self, DemoError> {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its next line; if it ends instead, why (its stderr).
    fn line(&mut self, waiting_for: &str) -> Result<String, DemoError> {
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

    fn tell(&mut self, line: &str) -> Result<(), DemoError> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{line}")
            .map_err(|e| DemoError::App(format!("{}: writing to its stdin: {e}", self.what)))
    }

    /// Ends its stdin (the signal to finish).
    fn end_input(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for it to exit; an error unless it succeeded.
    fn finish(mut self) -> Result<(), DemoError> {
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

/// Unexcused misses shown one by one per channel.
const UNEXCUSED_SHOWN: usize = 3;

/// The daemon's polling threads' name prefix.
const POLLING: &str = "rtchan-core";

/// How many threads of process `pid` are named as polling threads.
fn polling_threads(pid: u32) -> usize {
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
fn call<T: serde::de::DeserializeOwned>(c: &mut Ctl, req: &Request) -> Result<T, DemoError> {
    c.call(req)
        .map_err(|e| DemoError::Daemon(e.to_string()))?
        .into_result()
        .map_err(|e| DemoError::Daemon(e.message))
}

/// A receiving side's counters (delivered, deadline misses, bytes).
fn rx_counters(ctl: &mut Ctl, id: u32) -> Result<(u64, u64, u64), DemoError> {
    let s: Vec<crate::client::ChannelStats> = call(
        ctl,
        &Request::Stats(control::protocol::StatsArgs { id: Some(id) }),
    )?;
    Ok(s.into_iter()
        .filter(|s| s.id == id)
        .find_map(|s| s.rx)
        .map_or((0, 0, 0), |r| (r.delivered, r.deadline_misses, r.bytes)))
}

/// Runs the demo over the daemons `start` starts (given this program and the CPUs), with
/// application processes.
pub(super) fn run(
    args: &DemoArgs,
    link: &LinkInfo,
    start: impl FnOnce(&Path, &[usize]) -> Result<Hosts, DemoError>,
) -> Result<DemoReport, DemoError> {
    let exe = match &args.app_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| DemoError::App(format!("cannot find this program: {e}")))?,
    };
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    // The applications share the receiving core's CPU, off the sending core's.
    let app_cpu: Vec<String> = match cpus[..] {
        [first, _, ..] => vec!["--cpu".into(), first.to_string()],
        _ => Vec::new(),
    };
    // Ctrl-C or SIGTERM ends the traffic early; the demo still stops its applications and
    // daemons, deletes its namespaces and prints what ran. (The children are in process
    // groups of their own, so a Ctrl-C at the terminal reaches this process only.)
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut handlers = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once (registered first: it sees the flag before it is set).
        let first = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        let id = first
            .and_then(|a| Ok([a, signal_hook::flag::register(sig, interrupted.clone())?]))
            .map_err(|e| DemoError::App(format!("cannot handle signals: {e}")))?;
        handlers.extend(id);
    }
    let result = start(&exe, &cpus).and_then(|hosts| {
        let result = drive(args, link, &exe, &hosts, &app_cpu, &interrupted);
        let stopped = hosts.stop();
        let report = result?;
        stopped.map(|()| report)
    });
    for id in handlers {
        signal_hook::low_level::unregister(id);
    }
    result
}

fn drive(
    args: &DemoArgs,
    link: &LinkInfo,
    exe: &Path,
    hosts: &Hosts,
    app_cpu: &[String],
    interrupted: &AtomicBool,
) -> Result<DemoReport, DemoError> {
    let link_bps = args.link_mbps * 1_000_000;
    let probe = PreemptionProbe::start().map_err(DemoError::Probe)?;
    // A new thread names itself once it runs: wait for the polling threads' names.
    let until = Instant::now() + Duration::from_secs(5);
    for &(pid, n) in &hosts.polling {
        while polling_threads(pid) < n {
            if Instant::now() > until {
                return Err(DemoError::Probe(format!(
                    "found {} of the {n} polling threads (rtchan-core*) of process {pid}",
                    polling_threads(pid)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        probe
            .watch_threads_of(pid, POLLING)
            .map_err(DemoError::Probe)?;
    }
    let connect = |p: &Path| Ctl::connect(p).map_err(|e| DemoError::Daemon(e.to_string()));
    // The sending host's control connection, and the receiving host's (its counters).
    let (mut ctl, mut rx_ctl) = (connect(&hosts.send)?, connect(&hosts.recv)?);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut ids = Vec::new();
    for ch in &CHANNELS {
        let mut a = vec![
            "send".to_string(),
            "--socket".into(),
            hosts.send.display().to_string(),
            "--dst".into(),
            hosts.dst.clone(),
            "--net-and-rx".into(),
            format!("{}ns", hosts.net_and_rx),
            "--channel".into(),
            ch.name.into(),
            "--violation".into(),
            args.violation.to_string(),
            "--duration".into(),
            format!("{}ns", args.duration.as_nanos()),
        ];
        a.extend_from_slice(app_cpu);
        let mut tx = App::spawn(exe, format!("the sender of {}", ch.name), &a)?;
        let l = tx.line("opening its channel")?;
        let id: u32 = l
            .strip_prefix("open ")
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| DemoError::App(format!("the sender of {}: '{l}'", ch.name)))?;
        // Its sending thread (the main thread: tid = pid) counts only inside its own slow
        // submit calls.
        probe
            .watch_apart(tx.pid(), tx.pid(), ch.name)
            .map_err(DemoError::Probe)?;
        let mut a = vec![
            "recv".to_string(),
            "--socket".into(),
            hosts.recv.display().to_string(),
            "--id".into(),
            id.to_string(),
        ];
        a.extend_from_slice(app_cpu);
        let mut rx = App::spawn(exe, format!("the receiver of {}", ch.name), &a)?;
        let l = rx.line("attaching")?;
        if l != "ready" {
            return Err(DemoError::App(format!(
                "the receiver of {}: '{l}'",
                ch.name
            )));
        }
        senders.push(tx);
        receivers.push(rx);
        ids.push(id);
    }
    // What the daemon admitted, as it lists it (client-fed: `attach`).
    let list: ChannelList = call(&mut ctl, &Request::List)?;
    let infos: Vec<ChannelInfo> = ids
        .iter()
        .map(|id| {
            list.channels
                .iter()
                .find(|c| c.id == *id)
                .cloned()
                .ok_or_else(|| DemoError::Daemon(format!("channel {id} is not listed")))
        })
        .collect::<Result<_, _>>()?;
    let specs: Vec<(ChannelSpec, u64)> = infos
        .iter()
        .map(|i| {
            (
                ChannelSpec {
                    mmax: i.sender.request.mmax,
                    imin: i.sender.request.imin,
                    bmax: i.sender.request.bmax,
                    cpu_deadline: i.sender.cpu_deadline,
                    link_deadline: i.sender.link_deadline,
                    end_to_end_deadline: i.deadline,
                },
                i.sender.request.deadline,
            )
        })
        .collect();
    let (mmax, imin, bmax, d) = REFUSED;
    let mut refused = OpenArgs::new(
        u64::from(mmax),
        imin,
        bmax,
        d + hosts.net_and_rx,
        &hosts.dst,
    );
    refused.dry_run = true;
    let refusal = match call::<ChannelInfo>(&mut ctl, &Request::Open(refused)) {
        Err(DemoError::Daemon(m)) => Some(m),
        _ => None,
    };
    print_header(args, link, &specs, refusal);

    std::thread::sleep(WARM_UP);
    let flood = if args.no_flood {
        None
    } else {
        let (mmax, imin, bmax, source) = FLOOD;
        // A best-effort channel has no bound (the request's deadline is ignored).
        let mut f = OpenArgs::new(mmax, imin, bmax, 1_000_000, &hosts.dst);
        f.best_effort = true;
        f.source = Some(source.into());
        Some(call::<ChannelInfo>(&mut ctl, &Request::Open(f))?.id)
    };
    let be_bytes = |ctl: &mut Ctl| -> Result<u64, DemoError> {
        flood.map_or(Ok(0), |id| rx_counters(ctl, id).map(|c| c.2))
    };
    let be_start = be_bytes(&mut rx_ctl)?;
    let mut progress = Progress::start(args, be_start);
    for s in &mut senders {
        s.tell("go")?;
    }
    let started = Instant::now();
    while started.elapsed() < args.duration {
        if interrupted.load(Ordering::Relaxed) {
            progress.end();
            println!(
                "interrupted after {:.1}s: ending the traffic",
                started.elapsed().as_secs_f64()
            );
            for s in &mut senders {
                s.tell("stop")?;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20).min(args.duration));
        if progress.due() {
            let (mut delivered, mut misses) = (0, 0);
            for id in &ids {
                let (d, m, _) = rx_counters(&mut rx_ctl, *id)?;
                delivered += d;
                misses += m;
            }
            progress.show(delivered, misses, be_bytes(&mut rx_ctl)?);
        }
    }
    let sent: Vec<SenderReport> = senders
        .iter_mut()
        .map(|s| {
            s.line("its report")
                .and_then(|l| SenderReport::parse(&l).map_err(DemoError::App))
        })
        .collect::<Result<_, _>>()?;
    let elapsed = started.elapsed();
    let be_end = be_bytes(&mut rx_ctl)?;
    progress.end();
    // Let the last messages arrive (well past every bound), then stop the receivers.
    std::thread::sleep(Duration::from_millis(50));
    // The receiving side's counters while the receivers are still attached.
    if std::env::var_os("RTCHAN_DEMO_DEBUG").is_some() {
        for (host, c) in [("sending", &mut ctl), ("receiving", &mut rx_ctl)] {
            for id in &ids {
                let s: serde_json::Value = call(
                    c,
                    &Request::Stats(control::protocol::StatsArgs { id: Some(*id) }),
                )?;
                eprintln!("{host} host, channel {id}: {s}");
            }
            let cores: serde_json::Value = call(c, &Request::CoreStats)?;
            eprintln!("{host} host, cores: {cores}");
        }
    }
    for r in &mut receivers {
        r.end_input();
    }
    let got: Vec<ReceiverReport> = receivers
        .iter_mut()
        .map(|r| {
            r.line("its report")
                .and_then(|l| ReceiverReport::parse(&l).map_err(DemoError::App))
        })
        .collect::<Result<_, _>>()?;
    let pids: Vec<(u32, u32)> = senders
        .iter()
        .zip(&receivers)
        .map(|(s, r)| (s.pid(), r.pid()))
        .collect();
    // The receivers first: each detaches its end before exiting, and a sender closes its
    // channel when it exits; the other way round a loaded machine could let a close come
    // before a detach, which then finds no channel.
    for a in receivers.into_iter().chain(senders) {
        a.finish()?;
    }
    if let Some(id) = flood {
        call::<ChannelInfo>(&mut ctl, &Request::Close(CloseArgs { id, discard: true }))?;
    }
    // Misses are judged with the backlog rule over the path the admitted load takes.
    let preempted = match path_bound(&hosts.models, &infos) {
        Some(b) => probe.finish().with_backlog(b),
        None => probe.finish(),
    };

    let rows: Vec<ChannelRow> = CHANNELS
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            let log = got[i].miss_log();
            let mut slow = SlowSubmits::with_capacity(sent[i].slow.len());
            for &(a, b) in &sent[i].slow {
                slow.record(a, b);
            }
            ChannelRow {
                name: ch.name,
                spec: specs[i].0,
                submitted: sent[i].submitted,
                refused: sent[i].refused,
                delivered: got[i].delivered,
                latency: got[i].latency,
                misses: log.count(),
                verdict: preempted.verdict_submitted(&log, ch.name, &slow),
                lost: got[i].lost,
                violator: ch.violator,
                client_fed: infos[i].attach,
                apps: pids[i],
            }
        })
        .collect();
    // The unexcused misses one by one (the first few of each channel), for the reader to see
    // what the rule saw; printed after the table.
    let mut shown = Vec::new();
    for (i, ch) in CHANNELS.iter().enumerate() {
        let log = got[i].miss_log();
        let mut slow = SlowSubmits::with_capacity(sent[i].slow.len());
        for &(a, b) in &sent[i].slow {
            slow.record(a, b);
        }
        let sub = preempted.thread(ch.name);
        let unexcused = log
            .misses
            .iter()
            .filter(|m| !preempted.excuses_submitted(m, sub, slow.containing(m.submit)));
        for m in unexcused.take(UNEXCUSED_SHOWN) {
            shown.push(format!(
                "  unexcused miss on {}: {}",
                ch.name,
                preempted.explain(m)
            ));
        }
    }
    let report = DemoReport {
        channels: rows,
        best_effort_bps: be_end.saturating_sub(be_start) as f64 * 8.0 / elapsed.as_secs_f64(),
        link_bps,
        elapsed,
        preempted,
        violation: args.violation,
    };
    print_report(&report);
    for l in shown {
        println!("{l}");
    }
    Ok(report)
}

/// The admitted load on the real-time messages' path, as admission charged it (the hosts'
/// resource models and what `list` reports of every channel), for the backlog rule
/// ([`crate::preemption`], "Backlog"): the sending core (the channels' CPU cost per `Imin`,
/// released up to the client release jitter late, and the loop's service phase and TX stages),
/// the link (their wire time, released up to their CPU deadline late) and the receiving core
/// (their receive cost, released up to the sending host's bound plus the network's late). The
/// best-effort flood is in each stage's blocking, as admission charges it. `None` when a stage
/// is over-loaded (admission never admits that).
fn path_bound(models: &(ResourceModel, ResourceModel), infos: &[ChannelInfo]) -> Option<BusyBound> {
    let (tx, rx) = models;
    let core = |m: &ResourceModel, name: &str, loads: Vec<Load>, chunks: Vec<u64>| {
        let mut loads = loads;
        loads.extend(m.cpu_overheads().iter().map(|t| Load {
            cost: t.cost,
            period: t.period,
            jitter: 0,
        }));
        let chunk = chunks.into_iter().fold(m.cost.background_chunk(), u64::max);
        Stage {
            name: name.into(),
            blocking: chunk + m.cpu_blocking_extra(),
            loads,
        }
    };
    let k = tx.granularity;
    let sending = core(
        tx,
        "sending core",
        infos
            .iter()
            .map(|i| Load {
                cost: i.sender.cpu_cost,
                period: i.sender.request.imin,
                jitter: if i.attach {
                    tx.client_release_jitter()
                } else {
                    0
                },
            })
            .collect(),
        infos
            .iter()
            .map(|i| tx.cost.handler_chunk(i.sender.packets, k))
            .collect(),
    );
    let link = Stage {
        name: "link".into(),
        blocking: tx.link_blocking(infos.first().map_or(0, |i| i.sender.txq)),
        loads: infos
            .iter()
            .map(|i| Load {
                cost: i.sender.link_cost,
                period: i.sender.request.imin,
                jitter: i.sender.cpu_deadline,
            })
            .collect(),
    };
    let receiving = core(
        rx,
        "receiving core",
        infos
            .iter()
            .map(|i| Load {
                cost: i.receiver.admitted.cpu_cost,
                period: i.sender.request.imin,
                jitter: i.sender.link_deadline + i.network_bound,
            })
            .collect(),
        infos
            .iter()
            .map(|i| {
                rx.cost
                    .handler_chunk(i.receiver.admitted.packets, rx.granularity)
            })
            .collect(),
    );
    BusyBound::new(vec![sending, link, receiving])
}
