//! The demo: real-time channels keeping their deadlines under a best-effort flood, on one
//! machine with no NIC, run as in production: rtchan daemons, and applications in processes of
//! their own that send and receive through [`crate::client`].
//!
//! The demo is one [`Scenario`] ([`scenario`]: five real-time channels, one of which sends at
//! ten times its spec, and a best-effort channel fed by the sending daemon's built-in greedy
//! source, far beyond the link's capacity) run on the daemon bed ([`bed::DaemonBed`], behind
//! the same [`crate::bed::Bed`] trait as the evaluation's beds of cores). The bed's two hosts
//! (`hosts.rs`): over the in-memory link (`--link memlink`, timed like a real 1 Gb/s Ethernet
//! link: serialisation, a NIC FIFO) one daemon ([`crate::daemon::Daemon`]) in this process,
//! whose sending core and loopback receiving core are the two hosts; over veth (`--link veth`,
//! or `auto` as root) two daemon processes in two network namespaces joined by a veth pair,
//! af_packet on each end, peered over TCP. Its applications ([`app`], this binary run again as
//! `rtchand demo-app`): for each real-time channel one process opens the channel (admission on
//! both hosts) and sends on the channel's pattern, one attaches its receiving end and reports
//! every message's times (`procs.rs` runs them).
//!
//! A live progress line (from the daemons' counters) runs meanwhile; at the end a table shows,
//! per channel, the spec, the admitted bound, what was delivered, the latency percentiles and
//! the deadline misses, plus the best-effort throughput.
//!
//! Each miss is held against the OS preemption of the threads on the messages' path, measured
//! independently of them ([`crate::preemption`]: a probe thread reads the daemons' polling
//! threads' and the sending processes' run-queue wait from `/proc/PID/task/TID/schedstat`): a
//! miss is excused only when that wait covers its lateness, counted over the message's own
//! life and back to the earliest start of a busy period the admitted load on its path can keep
//! running until its submit (the backlog rule; the path's model is admission's, from the
//! hosts' resource models and what `list` reports). A sending process stamps a message inside
//! its submit call; its waits count only within that message's own (timed) call. The table reports excused and unexcused misses apart; an
//! unexcused miss is the dataplane's (or the machine's in a way not measured).
//!
//! With `RTCHAN_DEMO_DEBUG` set, both hosts' statistics of every channel and core are printed
//! (stderr) at the end of the traffic.
//!
//! Each host's polling core has a thread of its own, as on two hosts, at nice −20 when
//! allowed: the sender's is pinned to the last CPU, the receiver's shares the first with the
//! applications (which sleep between messages). Idle loops sleep 20 µs, so the demo leaves
//! room on a two-core laptop; on a server each core would be isolated and spin.

pub mod app;
pub mod bed;
mod hosts;
mod procs;

use crate::bed::world::{core_config, ChanDef, Load, Scenario};
use crate::preemption::{MissVerdict, Preemptions};
use bed::{DaemonBed, DaemonOut, HostLink, Show};
use dataplane::source::Pattern;
use dataplane::spec::{ChannelConfig, ChannelSpec, OverflowPolicy};
use dataplane::time::Nanos;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Extra end-to-end allowance past the sending host's bound: the network (serialisation of one
/// frame on the emulated wire plus its FIFO) and the receiving host's polling, with room for an
/// unisolated laptop core being descheduled briefly.
pub const NETWORK_AND_RECEIVE_BOUND: Nanos = 2_000_000;

/// Options of `rtchand demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long traffic runs (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Link rate in Mb/s of the emulated link.
    #[arg(long, default_value_t = 1000)]
    pub link_mbps: u64,
    /// How many times its spec's rate the violating channel sends.
    #[arg(long, default_value_t = 10)]
    pub violation: u32,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Run without the best-effort flood (to compare).
    #[arg(long)]
    pub no_flood: bool,
    /// The link: `auto` (a veth pair between two network namespaces over af_packet when this
    /// process may create them, i.e. as root, else the in-memory link), `veth`, `memlink`.
    #[arg(long, value_enum, default_value_t = LinkChoice::Auto)]
    pub link: LinkChoice,
    /// The `rtchand` the application processes (`rtchand demo-app ...`) and, over veth, the
    /// daemons run; this process's own executable when `None` (a test binary sets it).
    #[arg(skip)]
    pub app_exe: Option<PathBuf>,
}

/// Which link joins the two dataplanes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChoice {
    /// veth when possible, else the in-memory link.
    Auto,
    /// A veth pair between two network namespaces, af_packet on each end (needs root).
    Veth,
    /// The in-memory link.
    Memlink,
}

/// The veth variant's share of D for the network and the receiving host: the receive ring
/// hands a block up when it fills or its retire timer fires (1 ms, up to a scheduler tick
/// later), and the kernel's softirq work for veth shares this machine's CPUs.
pub const VETH_NETWORK_AND_RECEIVE_BOUND: Nanos = 10_000_000;

/// Parses `500us`, `2ms`, `1s`, `1m` or plain nanoseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 500us, 2ms, 1s)"))?;
    let ns = match unit {
        "ns" | "" => v,
        "us" | "µs" => v * 1e3,
        "ms" => v * 1e6,
        "s" => v * 1e9,
        "m" => v * 60e9,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}' (ns, us, ms, s, m)"
            ))
        }
    };
    if ns.is_nan() || ns < 1.0 || !ns.is_finite() {
        return Err(format!("duration '{s}' must be positive"));
    }
    Ok(Duration::from_nanos(ns as u64))
}

/// What the demo can fail on before traffic starts.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The veth link was asked for and could not be set up.
    #[error("--link veth: {0}")]
    Veth(String),
    /// Link rate out of range.
    #[error("--link-mbps must be between 10 and 100000, got {0}")]
    LinkRate(u64),
    /// The polling threads' OS preemption cannot be measured.
    #[error("measuring OS preemption: {0}")]
    Probe(String),
    /// The daemon did not start or answer.
    #[error("daemon: {0}")]
    Daemon(String),
    /// An application process could not be started or failed.
    #[error("application process: {0}")]
    App(String),
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    /// Channel name.
    pub name: &'static str,
    /// The spec it was admitted with.
    pub spec: ChannelSpec,
    /// Messages submitted and accepted.
    pub submitted: u64,
    /// Submits refused or dropped by the overload policy.
    pub refused: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Latency percentiles, ns (p50, p99, max).
    pub latency: (u64, u64, u64),
    /// Deadline misses at the receiver.
    pub misses: u64,
    /// The misses divided by the measured OS preemption of the threads on their path.
    pub verdict: MissVerdict,
    /// Messages lost.
    pub lost: u64,
    /// Sends at a multiple of its spec.
    pub violator: bool,
    /// The sending daemon lists the channel as client-fed (its messages come from a process
    /// through [`crate::client`], not from a source of its own).
    pub client_fed: bool,
    /// The application processes' pids (sender, receiver).
    pub apps: (u32, u32),
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Per real-time channel.
    pub channels: Vec<ChannelRow>,
    /// Best-effort goodput, bits per second.
    pub best_effort_bps: f64,
    /// Link rate, bits per second.
    pub link_bps: u64,
    /// How long traffic ran.
    pub elapsed: Duration,
    /// The polling and submitting threads' run-queue wait over the run, measured by a probe
    /// thread.
    pub preempted: Preemptions,
    /// How many times its spec the violator sent.
    pub violation: u32,
}

impl DemoReport {
    /// True when every admitted channel met every deadline and lost nothing.
    pub fn passed(&self) -> bool {
        self.channels.iter().all(|c| c.misses == 0 && c.lost == 0)
    }

    /// Misses the measured OS preemption does not explain, over all channels.
    pub fn unexcused_misses(&self) -> u64 {
        self.channels.iter().map(|c| c.verdict.unexcused).sum()
    }
}

/// One of the demo's real-time channels: its spec, the sending host's bound it asks for, and
/// how its application sends.
struct DemoChannel {
    name: &'static str,
    mmax: u32,
    imin: Nanos,
    bmax: u32,
    /// The sending host's share of the end-to-end bound.
    host_deadline: Nanos,
    /// The send pattern, from Imin and the violation factor.
    pattern: fn(Nanos, u32) -> Pattern,
    /// Sends at `--violation` times its spec (and drops its own excess: drop-newest).
    violator: bool,
}

impl DemoChannel {
    /// The channel as a scenario's: its spec with the sending host's bound as `d` (the daemon
    /// bed asks for it plus its network's share, and admission splits it), its pattern, and
    /// what a full buffer does (the violator drops its own excess: drop-newest; the others
    /// block and count the refusal).
    fn chan_def(&self, id: u32, violation: u32) -> ChanDef {
        let spec = ChannelSpec {
            mmax: self.mmax,
            imin: self.imin,
            bmax: self.bmax,
            cpu_deadline: self.host_deadline,
            link_deadline: self.host_deadline,
            end_to_end_deadline: self.host_deadline,
        };
        let mut c = ChanDef::real_time(
            self.name,
            id,
            spec,
            Load::Pattern((self.pattern)(self.imin, violation)),
        );
        c.config.overflow = if self.violator {
            OverflowPolicy::DropNewest
        } else {
            OverflowPolicy::Block
        };
        c.retry_when_full = false;
        c
    }
}

const CHANNELS: [DemoChannel; 5] = [
    DemoChannel {
        name: "control-loop",
        mmax: 200,
        imin: 1_000_000,
        bmax: 1,
        host_deadline: 500_000,
        pattern: |imin, _| Pattern::Periodic { interval: imin },
        violator: false,
    },
    DemoChannel {
        name: "sensor-fusion",
        mmax: 64,
        imin: 200_000,
        bmax: 4,
        host_deadline: 1_000_000,
        pattern: |imin, _| Pattern::Poisson { mean: imin * 2 },
        violator: false,
    },
    DemoChannel {
        name: "video-slice",
        mmax: 8_000,
        imin: 2_000_000,
        bmax: 2,
        host_deadline: 3_000_000,
        pattern: |imin, _| Pattern::Periodic { interval: imin },
        violator: false,
    },
    DemoChannel {
        name: "telemetry-burst",
        mmax: 1_400,
        imin: 1_000_000,
        bmax: 8,
        host_deadline: 4_000_000,
        pattern: |imin, _| Pattern::Bursts {
            size: 8,
            every: imin * 8,
        },
        violator: false,
    },
    DemoChannel {
        name: "misbehaving",
        mmax: 1_000,
        imin: 1_000_000,
        bmax: 4,
        host_deadline: 2_000_000,
        pattern: |imin, x| Pattern::Greedy { imin, multiple: x },
        violator: true,
    },
];

/// The best-effort flood: 1400-byte messages from the sending daemon's greedy source at ten
/// times one every 10 µs (about 11 Gb/s asked of a 1 Gb/s link), a 512-message queue.
fn flood(id: u32) -> ChanDef {
    ChanDef {
        name: "best-effort flood".into(),
        config: ChannelConfig::best_effort(id, 1400, 512),
        msg_len: 1400,
        load: Load::Pattern(Pattern::Greedy {
            imin: 10_000,
            multiple: 10,
        }),
        retry_when_full: false,
    }
}

/// The demo's scenario: the five real-time channels, then (unless `--no-flood`) the flood,
/// for `--duration` on the daemons' default policy (granularity 4, early work held, a 5 %
/// best-effort reserve).
pub fn scenario(args: &DemoArgs) -> Scenario {
    let link_bps = args.link_mbps * 1_000_000;
    let mut sc = Scenario::new(
        core_config(4, false, 50_000),
        link_bps,
        0,
        args.duration.as_nanos() as Nanos,
    );
    sc.channels = CHANNELS
        .iter()
        .enumerate()
        .map(|(i, c)| c.chan_def(i as u32 + 1, args.violation))
        .collect();
    if !args.no_flood {
        sc.channels.push(flood(CHANNELS.len() as u32 + 1));
    }
    sc
}

/// Runs the demo and prints its progress and result table.
pub fn run(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    if !(10..=100_000).contains(&args.link_mbps) {
        return Err(DemoError::LinkRate(args.link_mbps));
    }
    let exe = match &args.app_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| DemoError::App(format!("cannot find this program: {e}")))?,
    };
    let sc = scenario(args);
    if args.link != LinkChoice::Memlink {
        let desc = format!(
            "a veth pair between two network namespaces (two daemons, af_packet, paced at {} \
             Mb/s)",
            args.link_mbps
        );
        match run_on(args, &sc, HostLink::Veth, &exe, desc) {
            Err(DemoError::Veth(reason)) if args.link == LinkChoice::Auto => {
                println!("note: using the in-memory link ({reason})")
            }
            r => return r,
        }
    }
    let desc = format!(
        "an in-memory link timed like {} Mb/s Ethernet",
        args.link_mbps
    );
    run_on(args, &sc, HostLink::Memlink, &exe, desc)
}

/// Runs the demo's scenario on the daemon bed over `link` (in words: `desc`), then prints the
/// table.
fn run_on(
    args: &DemoArgs,
    sc: &Scenario,
    link: HostLink,
    exe: &std::path::Path,
    desc: String,
) -> Result<DemoReport, DemoError> {
    let mut bed = DaemonBed::new(link, sc.link_bps, exe.to_path_buf());
    let (duration, violation) = (args.duration, args.violation);
    bed.show = Some(Show {
        header: Box::new(move |admitted, refusal| {
            print_header(&desc, duration, violation, admitted, refusal)
        }),
        dry_run: Some(REFUSED),
        quiet: args.quiet,
    });
    let out = bed.run_scenario(sc)?;
    let report = DemoReport::of(&out, args);
    print_report(&report);
    for l in &out.unexcused {
        println!("{l}");
    }
    Ok(report)
}

impl DemoReport {
    /// The demo's rows from what the daemon bed measured (the real-time channels are the first
    /// [`CHANNELS`]; the rest is the flood).
    fn of(o: &DaemonOut, args: &DemoArgs) -> Self {
        let chans = &o.run.chans;
        let channels = CHANNELS
            .iter()
            .enumerate()
            .map(|(i, ch)| {
                let c = &chans[i];
                ChannelRow {
                    name: ch.name,
                    spec: c.spec.expect("a real-time channel"),
                    submitted: c.accepted,
                    refused: c.blocked + c.dropped_newest,
                    delivered: c.delivered,
                    latency: (o.p50[i], c.p99_latency, c.max_latency),
                    misses: c.misses,
                    verdict: o.verdicts[i],
                    lost: c.lost,
                    violator: ch.violator,
                    client_fed: o.client_fed[i],
                    apps: o.apps[i].unwrap_or_default(),
                }
            })
            .collect();
        let be_bytes: u64 = chans[CHANNELS.len()..].iter().map(|c| c.bytes).sum();
        let elapsed = Duration::from_nanos(o.run.duration);
        Self {
            channels,
            best_effort_bps: be_bytes as f64 * 8.0 / elapsed.as_secs_f64(),
            link_bps: args.link_mbps * 1_000_000,
            elapsed,
            preempted: o.preempted.clone(),
            violation: args.violation,
        }
    }
}

/// Prints what traffic will run and what admission granted: per channel, its spec, the
/// sending host's bound and the deadlines it was admitted with; `refusal`, what admission
/// said to a request the link cannot carry.
fn print_header(
    link: &str,
    duration: Duration,
    violation: u32,
    admitted: &[Option<ChannelSpec>],
    refusal: Option<String>,
) {
    println!(
        "rtchan demo: {} real-time channels and a best-effort flood over {link} for {duration:?}",
        CHANNELS.len(),
    );
    for (ch, s) in CHANNELS.iter().zip(admitted) {
        let Some(s) = s else { continue };
        println!(
            "  admitted {:<16} Mmax {:>5} B  Imin {:>7}  Bmax {}  host bound {:>7} (cpu {}, link {}){}",
            ch.name,
            ch.mmax,
            fmt_ns(ch.imin),
            ch.bmax,
            fmt_ns(ch.host_deadline),
            fmt_ns(s.cpu_deadline),
            fmt_ns(s.link_deadline),
            if ch.violator {
                format!("  <- will send at {violation}x its rate")
            } else {
                String::new()
            }
        );
    }
    if let Some(r) = refusal {
        println!("  refused  60 kB every 200 us within 1 ms: {r}");
    }
}

/// The request a 1 Gb/s link cannot carry, to show what a refusal says: 60 kB every 200 µs
/// within 1 ms on the sending host (plus the network's and the receiver's share).
const REFUSED: (u32, Nanos, u32, Nanos) = (60_000, 200_000, 1, 1_000_000);

/// The live progress line: every 250 ms on a terminal (rewritten in place), else every 2 s.
struct Progress {
    tty: bool,
    quiet: bool,
    started: Instant,
    last: Instant,
    duration: Duration,
    be_bytes_prev: u64,
}

impl Progress {
    fn start(quiet: bool, duration: Duration, be_bytes: u64) -> Self {
        let now = Instant::now();
        Self {
            tty: std::io::stdout().is_terminal(),
            quiet,
            started: now,
            last: now,
            duration,
            be_bytes_prev: be_bytes,
        }
    }

    /// Whether a line is due now (the caller then gathers the figures for [`Progress::show`]).
    fn due(&self) -> bool {
        !self.quiet
            && self.last.elapsed() >= Duration::from_millis(if self.tty { 250 } else { 2000 })
    }

    /// Prints the line: real-time messages delivered and missed so far, best-effort bytes
    /// delivered so far.
    fn show(&mut self, delivered: u64, misses: u64, be_bytes: u64) {
        let dt = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let be_mbps = be_bytes.saturating_sub(self.be_bytes_prev) as f64 * 8.0 / dt / 1e6;
        self.be_bytes_prev = be_bytes;
        let line = format!(
            "[{:>5.1}s / {:.0}s] real-time delivered {:>7}  misses {}  best-effort {:>6.1} Mb/s",
            self.started.elapsed().as_secs_f64(),
            self.duration.as_secs_f64(),
            delivered,
            misses,
            be_mbps
        );
        if self.tty {
            print!("\r{line}");
        } else {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
    }

    /// Ends a line rewritten in place (once).
    fn end(&mut self) {
        if self.tty && !self.quiet {
            println!();
        }
        self.quiet = true;
    }
}

/// How long the cores run before traffic starts.
const WARM_UP: Duration = Duration::from_millis(200);

/// Misses (and slow submit calls) recorded per channel with their times (past this they are counted, and unexcused):
/// a 10 s run of the 200 µs channel is 50,000 messages.
const MISS_LOG: usize = 65_536;

/// Formats nanoseconds with a unit people read.
pub fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else {
        format!("{ns}ns")
    }
}

fn print_report(r: &DemoReport) {
    println!();
    println!(
        "{:<16} {:>6} {:>8} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>5}",
        "channel",
        "Mmax",
        "Imin",
        "Bmax",
        "bound D",
        "submitted",
        "delivered",
        "p50",
        "p99",
        "max",
        "misses",
        "unexcused",
        "lost"
    );
    for c in &r.channels {
        println!(
            "{:<16} {:>6} {:>8} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>5}{}",
            c.name,
            c.spec.mmax,
            fmt_ns(c.spec.imin),
            c.spec.bmax,
            fmt_ns(c.spec.end_to_end_deadline),
            c.submitted,
            c.delivered,
            fmt_ns(c.latency.0),
            fmt_ns(c.latency.1),
            fmt_ns(c.latency.2),
            c.misses,
            c.verdict.unexcused,
            c.lost,
            if c.violator {
                format!(
                    "  (sent {}x its spec; {} over-spec messages dropped at its own buffer)",
                    r.violation, c.refused
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "best-effort flood: {:.1} Mb/s delivered on a {} Mb/s link ({:.0}%)",
        r.best_effort_bps / 1e6,
        r.link_bps / 1_000_000,
        100.0 * r.best_effort_bps / r.link_bps as f64
    );
    let apps: Vec<String> = r
        .channels
        .iter()
        .map(|c| format!("{} {}/{}", c.name, c.apps.0, c.apps.1))
        .collect();
    println!(
        "real-time traffic from application processes through rtchan::client, sender/receiver \
         pid per channel: {}",
        apps.join(", ")
    );
    println!("{}", r.preempted);
    let excused: u64 = r.channels.iter().map(|c| c.verdict.excused).sum();
    let unexcused = r.unexcused_misses();
    if excused + unexcused > 0 {
        for c in r.channels.iter().filter(|c| c.misses > 0) {
            println!("  {:<16} {}", c.name, c.verdict);
        }
    }
    let lost: u64 = r.channels.iter().map(|c| c.lost).sum();
    // One line for scripts and tests: the misses by verdict, excused and unexcused apart.
    println!("verdict: {excused} excused, {unexcused} unexcused, {lost} lost");
    if r.passed() {
        println!("result: every admitted channel met every deadline, nothing lost");
    } else if unexcused == 0 && lost == 0 {
        println!(
            "result: {excused} deadline misses, each while the OS kept a thread on its path (a \
             polling core, its sending thread) off its CPU for at least its lateness (the guarantees assume a polling core of its own: \
             docs/deploy.md, core isolation); nothing lost"
        );
    } else {
        println!(
            "result: {unexcused} DEADLINE MISSES NOT EXPLAINED BY MEASURED OS PREEMPTION, {lost} \
             lost (see the table)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").is_err());
    }
}
