//! The daemon bed: a [`Scenario`] run as in production, by rtchan daemons and application
//! processes of their own, behind the same [`Bed`] trait as the beds of cores
//! ([`crate::bed`]). The demo is one scenario on it.
//!
//! Each [`DaemonBed::run_scenario`] starts fresh hosts (`hosts.rs`: one daemon in this
//! process on the in-memory link, or two daemon processes in two network namespaces joined by
//! a veth pair), whose `[policy]` is the scenario's (granularity, early work, best-effort
//! reserve) and link rate the bed's, then for each channel in order:
//! - a real-time channel of spec `s` on [`Load::Pattern`] `p`: a sender process
//!   (`rtchand demo-app send`, [`super::app`]) opens it through [`crate::client`] asking for
//!   the host bound `s.link_deadline` plus the bed's network and receiving-host share
//!   ([`DaemonBed::net_and_rx`]); admission on both hosts splits that bound itself, and the
//!   admitted spec is the one reported. A receiver process attaches its receiving end. The
//!   sender submits `msg_len`-byte messages on `p` with the channel's overflow policy,
//!   retrying a refused one when `retry_when_full`;
//! - then (after both daemons' cores have run 200 ms) a best-effort channel on a pattern:
//!   the sending daemon's built-in source (`source`), drained by the receiving daemon's sink.
//!
//! Every sender is told `go` at once; after `sc.duration` (or a Ctrl-C) their reports are
//! collected, the last messages drain, the receivers report (latency, every miss with its
//! times, sequence gaps), and the channels close. Each miss is judged against the OS
//! preemption of the threads on its path measured independently of them
//! ([`crate::preemption`]: the daemons' polling threads, and the channel's sending process
//! only inside its own slow submit calls), with the backlog rule over the path admission
//! charged (`path_bound`).
//!
//! What the bed does not offer: a channel fed by `Load::Flood` or `Load::Idle` (a process
//! sends on a pattern; the daemon's sources are patterns too), the cores' own counters in
//! [`RunOut::core`] and [`RunOut::link`] (the daemons' are in [`DaemonOut::cores`]), host-delay
//! histograms (each channel's largest host delay and late packets are the sending daemon's
//! counters), the payload check of the other beds (the client API does not return a message's
//! sequence number), and a sending thread's poll gaps.
//!
//! Whose run-queue wait excuses a miss: the daemons' polling threads (`rtchan-core*`, in the
//! combined curve) and the channel's own sending process (watched apart: only within that
//! message's own slow submit call, which the process times and reports). The receiving
//! processes are not on a message's timed path: the receiving core stamps a message when it
//! delivers it into the process's ring, so their waits never excuse a miss (a receiver too slow
//! for its ring shows up as sequence gaps: lost).

use super::app::{pattern_arg, ReceiverReport, SenderReport};
use super::hosts::{self, Hosts};
use super::procs::{call, polling_threads, rx_counters, App, POLLING};
use super::{DemoError, Progress, WARM_UP};
use crate::bed::world::{ChanOut, Load, RunOut, Scenario};
use crate::bed::{Bed, Link, Point, Profile, Unit};
use crate::daemon::client::Client as Ctl;
use crate::preemption::{BusyBound, MissVerdict, PreemptionProbe, Preemptions, SlowSubmits};
use control::admission::ResourceModel;
use control::protocol::{
    ChannelInfo, ChannelList, CloseArgs, CoreStatsInfo, OpenArgs, Request, StatsArgs, TxCounters,
};
use dataplane::source::Pattern;
use dataplane::spec::{ChannelSpec, OverflowPolicy, TrafficClass};
use dataplane::time::Nanos;
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which link joins the bed's two hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostLink {
    /// One daemon in this process: its sending core and its loopback receiving core are the
    /// two hosts, over the in-memory link.
    Memlink,
    /// Two daemon processes in two network namespaces joined by a veth pair, af_packet on
    /// each end, peered over TCP (needs root).
    Veth,
}

/// Prints a run's header once admission has answered: each channel's admitted spec (`None`:
/// best effort), and what the sending host said to [`Show::dry_run`].
pub type Header = Box<dyn Fn(&[Option<ChannelSpec>], Option<String>)>;

/// What a run shows as it goes (the demo's header and live progress line).
pub struct Show {
    /// The header.
    pub header: Header,
    /// A request tried with `dry_run` (nothing reserved) to show what a refusal says: Mmax,
    /// Imin, Bmax and the host bound (the bed adds its network's share).
    pub dry_run: Option<(u32, Nanos, u32, Nanos)>,
    /// No live progress line.
    pub quiet: bool,
}

/// The daemon bed.
pub struct DaemonBed {
    profile: Profile,
    hosts: HostLink,
    exe: PathBuf,
    /// What a run prints as it goes; nothing when `None`.
    pub show: Option<Show>,
}

/// What a point produced on the daemon bed, per channel in the scenario's order.
#[derive(Debug)]
pub struct DaemonOut {
    /// The channels' counters as on the other beds (`duration`: how long traffic ran).
    /// Real-time channels' come from their application processes' reports, best-effort
    /// channels' from the daemons' counters over the traffic's window; late packets and the
    /// largest host delay from the sending daemon. `core` and `link` are not this process's
    /// cores: left at zero (see `cores`); `host_delay` histograms are empty.
    pub run: RunOut,
    /// The misses by verdict: excused by measured OS preemption, or not.
    pub verdicts: Vec<MissVerdict>,
    /// Submits a full buffer refused and the sender retried.
    pub retries: Vec<u64>,
    /// The largest lateness of a delivery past its deadline (0: no miss).
    pub overrun: Vec<Nanos>,
    /// Median end-to-end latency.
    pub p50: Vec<Nanos>,
    /// The sending daemon lists the channel as client-fed (its messages come from a process
    /// through [`crate::client`]).
    pub client_fed: Vec<bool>,
    /// The application processes' pids (sender, receiver); `None` for a daemon's source.
    pub apps: Vec<Option<(u32, u32)>>,
    /// The watched threads' run-queue wait over the run.
    pub preempted: Preemptions,
    /// The sending daemon's polling cores, as they published themselves at the end.
    pub cores: Vec<CoreStatsInfo>,
    /// The first few unexcused misses of each channel in words, for a reader.
    pub unexcused: Vec<String>,
    /// How the ports were opened.
    pub backend: &'static str,
}

/// Unexcused misses shown one by one per channel.
const UNEXCUSED_SHOWN: usize = 3;

impl DaemonBed {
    /// The bed on `hosts` at `link_bps`; the application processes and (over veth) the
    /// daemons run `exe` (`rtchand`).
    pub fn new(hosts: HostLink, link_bps: u64, exe: PathBuf) -> Self {
        Self {
            profile: Profile {
                link: Link::Daemons,
                backend: match hosts {
                    HostLink::Memlink => "memlink",
                    HostLink::Veth => "af_packet",
                },
                link_bps,
                unit: Unit::Ms,
            },
            hosts,
            exe,
            show: None,
        }
    }

    /// The share of a channel's end-to-end bound the bed adds to its host bound: the network
    /// and the receiving host.
    pub fn net_and_rx(&self) -> Nanos {
        match self.hosts {
            HostLink::Memlink => super::NETWORK_AND_RECEIVE_BOUND,
            HostLink::Veth => super::VETH_NETWORK_AND_RECEIVE_BOUND,
        }
    }

    /// Runs `sc` on fresh hosts; [`DemoError::Veth`] when the veth hosts cannot be made.
    pub fn run_scenario(&mut self, sc: &Scenario) -> Result<DaemonOut, DemoError> {
        let plan = plan(sc)?;
        let cpus: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id)
            .collect();
        // Ctrl-C or SIGTERM ends the traffic early; the bed still stops its applications and
        // daemons and deletes its namespaces. (The children are in process groups of their
        // own, so a Ctrl-C at the terminal reaches this process only.)
        let interrupted = Arc::new(AtomicBool::new(false));
        let mut handlers = Vec::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal exits at once (registered first: it sees the flag before it is
            // set).
            let first =
                signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
            let id = first
                .and_then(|a| Ok([a, signal_hook::flag::register(sig, interrupted.clone())?]))
                .map_err(|e| DemoError::App(format!("cannot handle signals: {e}")))?;
            handlers.extend(id);
        }
        let policy = hosts::Policy::of(&sc.core);
        let link_bps = self.profile.link_bps;
        let started = match self.hosts {
            HostLink::Memlink => hosts::memlink(link_bps, &cpus, &policy),
            HostLink::Veth => hosts::veth(&self.exe, link_bps, &cpus, &policy),
        };
        let result = started.and_then(|hosts| {
            let result = self.drive(sc, &plan, &hosts, &cpus, &interrupted);
            let stopped = hosts.stop();
            let out = result?;
            stopped.map(|()| out)
        });
        for id in handlers {
            signal_hook::low_level::unregister(id);
        }
        result
    }

    fn drive(
        &self,
        sc: &Scenario,
        plan: &[Feed],
        hosts: &Hosts,
        cpus: &[usize],
        interrupted: &AtomicBool,
    ) -> Result<DaemonOut, DemoError> {
        // The applications share the receiving core's CPU, off the sending core's.
        let app_cpu: Vec<String> = match cpus {
            [first, _, ..] => vec!["--cpu".into(), first.to_string()],
            _ => Vec::new(),
        };
        let probe = watch_polling(hosts)?;
        let connect = |p: &Path| Ctl::connect(p).map_err(|e| DemoError::Daemon(e.to_string()));
        // The sending host's control connection, and the receiving host's (its counters).
        let (mut ctl, mut rx_ctl) = (connect(&hosts.send)?, connect(&hosts.recv)?);
        let n = sc.channels.len();
        let mut senders: Vec<Option<App>> = Vec::new();
        let mut receivers: Vec<Option<App>> = Vec::new();
        let mut ids: Vec<Option<u32>> = vec![None; n];
        for (i, (ch, feed)) in sc.channels.iter().zip(plan).enumerate() {
            let Feed::Process { spec, pattern } = feed else {
                senders.push(None);
                receivers.push(None);
                continue;
            };
            let deadline = spec.link_deadline + hosts.net_and_rx;
            let mut a: Vec<String> = [
                "send",
                "--socket",
                &hosts.send.display().to_string(),
                "--dst",
                &hosts.dst,
                "--name",
                &ch.name,
                "--mmax",
                &spec.mmax.to_string(),
                "--imin",
                &format!("{}ns", spec.imin),
                "--bmax",
                &spec.bmax.to_string(),
                "--deadline",
                &format!("{deadline}ns"),
                "--len",
                &ch.msg_len.to_string(),
                "--pattern",
                &pattern_arg(pattern),
                "--policy",
                ch.config.overflow.name(),
                "--seed",
                &(i + 1).to_string(),
                "--duration",
                &format!("{}ns", sc.duration),
            ]
            .map(String::from)
            .to_vec();
            if ch.retry_when_full {
                a.push("--retry".into());
            }
            a.extend_from_slice(&app_cpu);
            let mut tx = App::spawn(&self.exe, format!("the sender of {}", ch.name), &a)?;
            let l = tx.line("opening its channel")?;
            let id: u32 = l
                .strip_prefix("open ")
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| DemoError::App(format!("the sender of {}: '{l}'", ch.name)))?;
            // Its sending thread (the main thread: tid = pid) counts only inside its own slow
            // submit calls.
            probe
                .watch_apart(tx.pid(), tx.pid(), &ch.name)
                .map_err(DemoError::Probe)?;
            let mut a = vec![
                "recv".to_string(),
                "--socket".into(),
                hosts.recv.display().to_string(),
                "--id".into(),
                id.to_string(),
            ];
            a.extend_from_slice(&app_cpu);
            let mut rx = App::spawn(&self.exe, format!("the receiver of {}", ch.name), &a)?;
            let l = rx.line("attaching")?;
            if l != "ready" {
                return Err(DemoError::App(format!(
                    "the receiver of {}: '{l}'",
                    ch.name
                )));
            }
            senders.push(Some(tx));
            receivers.push(Some(rx));
            ids[i] = Some(id);
        }
        // What the daemon admitted, as it lists it (client-fed: `attach`).
        let list: ChannelList = call(&mut ctl, &Request::List)?;
        let infos: Vec<Option<ChannelInfo>> = ids
            .iter()
            .map(|id| {
                id.map(|id| {
                    list.channels
                        .iter()
                        .find(|c| c.id == id)
                        .cloned()
                        .ok_or_else(|| DemoError::Daemon(format!("channel {id} is not listed")))
                })
                .transpose()
            })
            .collect::<Result<_, _>>()?;
        let specs: Vec<Option<ChannelSpec>> = infos
            .iter()
            .map(|i| {
                i.as_ref().map(|i| ChannelSpec {
                    mmax: i.sender.request.mmax,
                    imin: i.sender.request.imin,
                    bmax: i.sender.request.bmax,
                    cpu_deadline: i.sender.cpu_deadline,
                    link_deadline: i.sender.link_deadline,
                    end_to_end_deadline: i.deadline,
                })
            })
            .collect();
        if let Some(show) = &self.show {
            let refusal = match show.dry_run {
                None => None,
                Some((mmax, imin, bmax, d)) => {
                    let mut r = OpenArgs::new(
                        u64::from(mmax),
                        imin,
                        bmax,
                        d + hosts.net_and_rx,
                        &hosts.dst,
                    );
                    r.dry_run = true;
                    match call::<ChannelInfo>(&mut ctl, &Request::Open(r)) {
                        Err(DemoError::Daemon(m)) => Some(m),
                        _ => None,
                    }
                }
            };
            (show.header)(&specs, refusal);
        }

        std::thread::sleep(WARM_UP);
        for (i, feed) in plan.iter().enumerate() {
            let Feed::Source {
                source,
                imin,
                queue,
            } = feed
            else {
                continue;
            };
            let ch = &sc.channels[i];
            let TrafficClass::BestEffort { mmax, .. } = ch.config.class else {
                continue;
            };
            // A best-effort channel has no bound (the request's deadline is ignored).
            let mut f = OpenArgs::new(u64::from(mmax), *imin, *queue, 1_000_000, &hosts.dst);
            f.best_effort = true;
            f.source = Some(source.clone());
            f.message_size = Some(control::units::Size(u64::from(ch.msg_len)));
            f.policy = Some(ch.config.overflow.name().into());
            ids[i] = Some(call::<ChannelInfo>(&mut ctl, &Request::Open(f))?.id);
        }
        // The best-effort channels' counters at the start and the end of the traffic.
        let sourced: Vec<(usize, u32)> = plan
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f, Feed::Source { .. }))
            .filter_map(|(i, _)| ids[i].map(|id| (i, id)))
            .collect();
        let be_counters = |ctl: &mut Ctl| -> Result<Vec<(u64, u64, u64)>, DemoError> {
            sourced
                .iter()
                .map(|&(_, id)| rx_counters(ctl, id))
                .collect()
        };
        let be_start = be_counters(&mut rx_ctl)?;
        let be_bytes = |c: &[(u64, u64, u64)]| c.iter().map(|x| x.2).sum::<u64>();
        let show_progress = self.show.as_ref().is_some_and(|s| !s.quiet);
        let mut progress = Progress::start(!show_progress, sc_duration(sc), be_bytes(&be_start));
        for s in senders.iter_mut().flatten() {
            s.tell("go")?;
        }
        let started = Instant::now();
        while started.elapsed() < sc_duration(sc) {
            if interrupted.load(Ordering::Relaxed) {
                progress.end();
                println!(
                    "interrupted after {:.1}s: ending the traffic",
                    started.elapsed().as_secs_f64()
                );
                for s in senders.iter_mut().flatten() {
                    s.tell("stop")?;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20).min(sc_duration(sc)));
            if progress.due() {
                let (mut delivered, mut misses) = (0, 0);
                for (i, id) in ids.iter().enumerate() {
                    if let (Some(id), Feed::Process { .. }) = (id, &plan[i]) {
                        let (d, m, _) = rx_counters(&mut rx_ctl, *id)?;
                        delivered += d;
                        misses += m;
                    }
                }
                progress.show(delivered, misses, be_bytes(&be_counters(&mut rx_ctl)?));
            }
        }
        let sent = read_reports(&mut senders, SenderReport::parse)?;
        let elapsed = started.elapsed();
        let be_end = be_counters(&mut rx_ctl)?;
        progress.end();
        // Let the last messages arrive (well past every bound), then stop the receivers.
        std::thread::sleep(Duration::from_millis(50));
        let tx_stats: Vec<Option<TxCounters>> = ids
            .iter()
            .map(|id| id.map(|id| tx_counters(&mut ctl, id)).transpose())
            .collect::<Result<_, _>>()?;
        let cores: Vec<CoreStatsInfo> = call(&mut ctl, &Request::CoreStats)?;
        // The receiving side's counters while the receivers are still attached.
        if std::env::var_os("RTCHAN_DEMO_DEBUG").is_some() {
            debug_stats(&mut ctl, &mut rx_ctl, &ids)?;
        }
        for r in receivers.iter_mut().flatten() {
            r.end_input();
        }
        let got = read_reports(&mut receivers, ReceiverReport::parse)?;
        let apps: Vec<Option<(u32, u32)>> = senders
            .iter()
            .zip(&receivers)
            .map(|(s, r)| s.as_ref().zip(r.as_ref()).map(|(s, r)| (s.pid(), r.pid())))
            .collect();
        // The receivers first: each detaches its end before exiting, and a sender closes its
        // channel when it exits; the other way round a loaded machine could let a close come
        // before a detach, which then finds no channel.
        for a in receivers.into_iter().chain(senders).flatten() {
            a.finish()?;
        }
        for &(_, id) in &sourced {
            call::<ChannelInfo>(&mut ctl, &Request::Close(CloseArgs { id, discard: true }))?;
        }
        // Misses are judged with the backlog rule over the path the admitted load takes.
        let admitted: Vec<ChannelInfo> = infos.iter().flatten().cloned().collect();
        let preempted = match path_bound(&hosts.models, &admitted) {
            Some(b) => probe.finish().with_backlog(b),
            None => probe.finish(),
        };

        let mut out = DaemonOut {
            run: RunOut {
                chans: Vec::with_capacity(n),
                core: Default::default(),
                link: Default::default(),
                duration: elapsed.as_nanos() as Nanos,
                link_utilisation: 0.0,
                host_delay: Vec::with_capacity(n),
                latency: Vec::with_capacity(n),
            },
            verdicts: Vec::with_capacity(n),
            retries: Vec::with_capacity(n),
            overrun: Vec::with_capacity(n),
            p50: Vec::with_capacity(n),
            client_fed: infos
                .iter()
                .map(|i| i.as_ref().is_some_and(|i| i.attach))
                .collect(),
            apps,
            preempted,
            cores,
            unexcused: Vec::new(),
            backend: self.profile.backend,
        };
        let mut wire_bytes = 0u64;
        for (i, ch) in sc.channels.iter().enumerate() {
            let tx = tx_stats[i].clone().unwrap_or_default();
            wire_bytes += tx.bytes;
            let mut c = ChanOut {
                name: ch.name.clone(),
                id: ids[i].unwrap_or(0),
                spec: specs[i],
                late_packets: tx.late_packets,
                max_host_delay: tx.delay.max,
                ..ChanOut::default()
            };
            let mut latency = empty_histogram();
            match (&sent[i], &got[i]) {
                (Some(s), Some(r)) => {
                    let log = r.miss_log();
                    let mut slow = SlowSubmits::with_capacity(s.slow.len());
                    for &(a, b) in &s.slow {
                        slow.record(a, b);
                    }
                    let verdict = out.preempted.verdict_submitted(&log, &ch.name, &slow);
                    let sub = out.preempted.thread(&ch.name);
                    let shown = log
                        .misses
                        .iter()
                        .filter(|m| {
                            !out.preempted
                                .excuses_submitted(m, sub, slow.containing(m.submit))
                        })
                        .take(UNEXCUSED_SHOWN)
                        .map(|m| {
                            format!(
                                "  unexcused miss on {}: {}",
                                ch.name,
                                out.preempted.explain(m)
                            )
                        })
                        .collect::<Vec<_>>();
                    out.unexcused.extend(shown);
                    c.offered = s.submitted + s.refused;
                    c.accepted = s.submitted;
                    match ch.config.overflow {
                        OverflowPolicy::Block => c.blocked = s.refused,
                        OverflowPolicy::DropNewest => c.dropped_newest = s.refused,
                        // Drop-oldest accepts every message and evicts queued ones.
                        OverflowPolicy::DropOldest => c.dropped_oldest = tx.dropped,
                    }
                    c.delivered = r.delivered;
                    c.bytes = r.bytes;
                    c.max_latency = r.latency.2;
                    c.p99_latency = r.latency.1;
                    c.mean_latency = r.mean as f64;
                    c.misses = log.count();
                    c.lost = r.lost;
                    c.reordered = r.behind;
                    latency = r.latency_histogram();
                    out.verdicts.push(verdict);
                    out.retries.push(s.retries);
                    out.overrun
                        .push(log.misses.iter().map(|m| m.lateness()).max().unwrap_or(0));
                    out.p50.push(r.latency.0);
                }
                _ => {
                    let k = sourced.iter().position(|&(j, _)| j == i);
                    let window = |v: &[(u64, u64, u64)]| k.map_or((0, 0, 0), |k| v[k]);
                    let (d0, m0, b0) = window(&be_start);
                    let (d1, m1, b1) = window(&be_end);
                    c.offered = tx.submitted + tx.would_block;
                    c.accepted = tx.submitted;
                    c.blocked = tx.would_block;
                    c.dropped_newest = tx.dropped;
                    c.delivered = d1.saturating_sub(d0);
                    c.bytes = b1.saturating_sub(b0);
                    c.misses = m1.saturating_sub(m0);
                    out.verdicts.push(MissVerdict::default());
                    out.retries.push(0);
                    out.overrun.push(0);
                    out.p50.push(0);
                }
            }
            out.run.chans.push(c);
            out.run.host_delay.push(empty_histogram());
            out.run.latency.push(latency);
        }
        out.run.link_utilisation = wire_bytes as f64 * 8e9
            / (self.profile.link_bps as f64 * out.run.duration.max(1) as f64);
        Ok(out)
    }
}

impl Bed for DaemonBed {
    fn profile(&self) -> &Profile {
        &self.profile
    }
    fn run(&mut self, sc: &Scenario) -> Result<Point, String> {
        self.run_scenario(sc)
            .map(|o| Point::Daemons(Box::new(o)))
            .map_err(|e| e.to_string())
    }
}

/// How the bed feeds one channel.
enum Feed {
    /// A sender process on `pattern`, with the channel's spec.
    Process { spec: ChannelSpec, pattern: Pattern },
    /// The sending daemon's built-in source: its `source` text, the Imin that paces it and the
    /// channel's queue.
    Source {
        source: String,
        imin: Nanos,
        queue: u32,
    },
}

/// How each of `sc`'s channels is fed, or which one the bed cannot feed and why.
fn plan(sc: &Scenario) -> Result<Vec<Feed>, DemoError> {
    sc.channels
        .iter()
        .map(|ch| {
            let no = |why: &str| DemoError::App(format!("channel {}: {why}", ch.name));
            let Load::Pattern(pattern) = ch.load else {
                return Err(no(&format!(
                    "the daemon bed feeds a channel on a pattern (a process or a daemon's \
                     source), not {:?}",
                    ch.load
                )));
            };
            match ch.config.class {
                TrafficClass::RealTime(spec) => Ok(Feed::Process { spec, pattern }),
                TrafficClass::BestEffort { queue, .. } => {
                    let (source, imin) = match pattern {
                        Pattern::Periodic { interval } => ("periodic".to_string(), interval),
                        Pattern::Poisson { mean } => ("poisson".to_string(), mean),
                        Pattern::Greedy { imin, multiple } => (format!("greedy:{multiple}"), imin),
                        Pattern::Bursts { size, every } if size == queue => {
                            ("bursts".to_string(), every / u64::from(size))
                        }
                        Pattern::Bursts { size, .. } => {
                            return Err(no(&format!(
                                "a daemon's `bursts` source sends the channel's queue ({queue}) \
                                 at once, not {size}"
                            )))
                        }
                    };
                    Ok(Feed::Source {
                        source,
                        imin,
                        queue,
                    })
                }
            }
        })
        .collect()
}

/// Each application's report line, read with `parse` (`None` where a channel has none).
fn read_reports<T>(
    apps: &mut [Option<App>],
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<Option<T>>, DemoError> {
    apps.iter_mut()
        .map(|a| {
            a.as_mut()
                .map(|a| {
                    a.line("its report")
                        .and_then(|l| parse(&l).map_err(DemoError::App))
                })
                .transpose()
        })
        .collect()
}

/// The scenario's traffic time.
fn sc_duration(sc: &Scenario) -> Duration {
    Duration::from_nanos(sc.duration)
}

/// A histogram of nothing, for what the bed does not see.
fn empty_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits")
}

/// Starts the preemption probe on the hosts' polling threads (once each has named itself).
fn watch_polling(hosts: &Hosts) -> Result<PreemptionProbe, DemoError> {
    let probe = PreemptionProbe::start().map_err(DemoError::Probe)?;
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
    Ok(probe)
}

/// A sending side's counters.
fn tx_counters(ctl: &mut Ctl, id: u32) -> Result<TxCounters, DemoError> {
    let s: Vec<crate::client::ChannelStats> =
        call(ctl, &Request::Stats(StatsArgs { id: Some(id) }))?;
    Ok(s.into_iter()
        .filter(|s| s.id == id)
        .find_map(|s| s.tx)
        .unwrap_or_default())
}

/// Both hosts' statistics of every channel and core, on stderr (`RTCHAN_DEMO_DEBUG`).
fn debug_stats(ctl: &mut Ctl, rx_ctl: &mut Ctl, ids: &[Option<u32>]) -> Result<(), DemoError> {
    for (host, c) in [("sending", ctl), ("receiving", rx_ctl)] {
        for id in ids.iter().flatten() {
            let s: serde_json::Value = call(c, &Request::Stats(StatsArgs { id: Some(*id) }))?;
            eprintln!("{host} host, channel {id}: {s}");
        }
        let cores: serde_json::Value = call(c, &Request::CoreStats)?;
        eprintln!("{host} host, cores: {cores}");
    }
    Ok(())
}

/// The admitted load on the real-time messages' path, as admission charged it (the hosts'
/// resource models and what `list` reports of every channel), for the backlog rule
/// ([`crate::preemption`], "Backlog"): the sending core (the channels' CPU cost per `Imin`,
/// released up to the client release jitter late, and the loop's service phase and TX stages),
/// the link (their wire time, released up to their CPU deadline late) and the receiving core
/// (their receive cost, released up to the sending host's bound plus the network's late). The
/// best-effort channels are in each stage's blocking, as admission charges them. `None` when a
/// stage is over-loaded (admission never admits that).
fn path_bound(models: &(ResourceModel, ResourceModel), infos: &[ChannelInfo]) -> Option<BusyBound> {
    use crate::preemption::{Load as Work, Stage};
    let (tx, rx) = models;
    let core = |m: &ResourceModel, name: &str, loads: Vec<Work>, chunks: Vec<u64>| {
        let mut loads = loads;
        loads.extend(m.cpu_overheads().iter().map(|t| Work {
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
            .map(|i| Work {
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
            .map(|i| Work {
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
            .map(|i| Work {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bed::world::{core_config, ChanDef};

    fn spec() -> ChannelSpec {
        ChannelSpec {
            mmax: 100,
            imin: 1_000_000,
            bmax: 1,
            cpu_deadline: 500_000,
            link_deadline: 500_000,
            end_to_end_deadline: 500_000,
        }
    }

    fn scenario(channels: Vec<ChanDef>) -> Scenario {
        let mut sc = Scenario::new(core_config(4, false, 50_000), 1_000_000_000, 0, 1_000_000);
        sc.channels = channels;
        sc
    }

    #[test]
    fn each_channel_is_fed_by_a_process_or_a_daemon_source() {
        let periodic = Load::Pattern(Pattern::Periodic {
            interval: 1_000_000,
        });
        let sc = scenario(vec![
            ChanDef::real_time("rt", 1, spec(), periodic),
            ChanDef::best_effort(
                "be",
                2,
                1400,
                Load::Pattern(Pattern::Greedy {
                    imin: 10_000,
                    multiple: 10,
                }),
            ),
            ChanDef::best_effort(
                "bursty",
                3,
                1400,
                Load::Pattern(Pattern::Bursts {
                    size: 256,
                    every: 2_560_000,
                }),
            ),
        ]);
        let p = plan(&sc).unwrap();
        assert!(matches!(p[0], Feed::Process { spec: s, .. } if s == spec()));
        assert!(
            matches!(&p[1], Feed::Source { source, imin: 10_000, queue: 256 } if source == "greedy:10")
        );
        assert!(
            matches!(&p[2], Feed::Source { source, imin: 10_000, queue: 256 } if source == "bursts")
        );
    }

    #[test]
    fn a_channel_the_bed_cannot_feed_is_named_with_why() {
        let err = |c: ChanDef| plan(&scenario(vec![c])).err().unwrap().to_string();
        let e = err(ChanDef::best_effort("flood", 1, 1400, Load::Flood));
        assert!(
            e.contains("channel flood:") && e.contains("not Flood"),
            "{e}"
        );
        let e = err(ChanDef::real_time("quiet", 1, spec(), Load::Idle));
        assert!(
            e.contains("channel quiet:") && e.contains("not Idle"),
            "{e}"
        );
        let e = err(ChanDef::best_effort(
            "bursty",
            1,
            1400,
            Load::Pattern(Pattern::Bursts {
                size: 8,
                every: 8_000_000,
            }),
        ));
        assert!(e.contains("queue (256) at once, not 8"), "{e}");
    }
}
