//! `rtchanctl`: the rtchan control-plane CLI. Talks to `rtchand` over its Unix socket
//! (versioned line-delimited JSON; see docs/cli.md), except `admission check FILE`, which runs
//! the admission test offline.
//!
//! Exit codes: 0 success, 1 refused by admission or a limit (or a peer lost during setup),
//! 2 bad usage, bad input or permission denied (also by the socket's mode), 3 daemon
//! unreachable.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use control::admission::offline::{run_json, Decision};
use control::protocol::{
    ChannelList, ChannelStatsInfo, CloseArgs, IdArgs, OpenArgs, PolicyUpdate, RecordArgs, Reply,
    Request, StatsArgs,
};
use control::units::{self, fmt_ns};
use rtchan::daemon::client::{self, Client};

const EXIT_REFUSED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
/// `--imin` of a best-effort channel opened without one (paces its built-in source), ns.
const BEST_EFFORT_IMIN: u64 = 100_000;
/// `--bmax` (the queue) of a best-effort channel opened without one.
const BEST_EFFORT_QUEUE: u32 = 256;

#[derive(Parser, Debug)]
#[command(
    name = "rtchanctl",
    version,
    about = "Control rtchan's real-time channels"
)]
struct Cli {
    /// The daemon's control socket [default: $RTCHAN_SOCKET, else /run/rtchan/rtchand.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the daemon's reply as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open, close, list and inspect channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Per-channel statistics (throughput, latency percentiles, deadline misses, drops).
    Stats(StatsCmd),
    /// A live full-screen view of every channel (rate, p99, misses, drops), refreshed each
    /// second; q quits. Falls back to `stats --watch` when stdout is not a terminal.
    Top(TopCmd),
    /// Capture frames sent and received by the running daemon's polling cores into a pcapng
    /// file, without stopping traffic (needs `[capture] enabled = true` in the daemon).
    Capture(CaptureCmd),
    /// Show or change the scheduling policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Offline admission checks (no daemon needed).
    #[command(subcommand)]
    Admission(AdmissionCmd),
}

fn duration(s: &str) -> Result<units::Duration, String> {
    units::parse_duration(s)
        .map(units::Duration)
        .map_err(|e| e.to_string())
}

fn size(s: &str) -> Result<units::Size, String> {
    units::parse_size(s)
        .map(units::Size)
        .map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
enum ChannelCmd {
    /// Open a real-time channel (admission on both hosts, then the dataplane), or with
    /// --best-effort a best-effort one (no admission, no bound).
    Open(OpenCmd),
    /// Close a channel (drains or discards per the daemon's close mode).
    Close {
        /// Channel id.
        id: u32,
        /// Discard queued messages instead of draining them.
        #[arg(long)]
        discard: bool,
    },
    /// Discard a record of the state file that was not re-established at start-up (shown
    /// by `channel list` under "not re-established"), by its record number. `close` never
    /// discards such records.
    DiscardUnrestored {
        /// The record number `channel list` shows (`record N`).
        record: usize,
    },
    /// List channels.
    List,
    /// One channel with its admission numbers.
    Show {
        /// Channel id.
        id: u32,
    },
}

#[derive(Args, Debug)]
struct OpenCmd {
    /// Largest message (1500, 4KiB).
    #[arg(long, value_parser = size)]
    mmax: units::Size,
    /// Smallest interval between messages (500us, 2ms, 1s); with --best-effort, the pace of
    /// the built-in source only [default there: 100us].
    #[arg(long, value_parser = duration, required_unless_present = "best_effort")]
    imin: Option<units::Duration>,
    /// Largest burst, messages; with --best-effort, the channel's queue [default there: 256].
    #[arg(long, required_unless_present = "best_effort")]
    bmax: Option<u32>,
    /// End-to-end delay bound D (submit at the sender to delivery at the receiver).
    #[arg(
        long,
        value_parser = duration,
        required_unless_present = "best_effort",
        conflicts_with = "best_effort"
    )]
    deadline: Option<units::Duration>,
    /// A best-effort channel: no admission and no delay bound; it shares what real-time
    /// channels leave, and at least the policy's best-effort reserve.
    #[arg(long)]
    best_effort: bool,
    /// Destination: `local` or a configured peer.
    #[arg(long)]
    dst: String,
    /// Core to run on (core i sends on TX queue i).
    #[arg(long)]
    core: Option<u16>,
    /// TX queue to send on.
    #[arg(long)]
    txq: Option<u16>,
    /// Overflow policy: block, drop-newest, drop-oldest.
    #[arg(long)]
    policy: Option<String>,
    /// Decide only: reserve nothing on either host.
    #[arg(long)]
    dry_run: bool,
    /// Built-in traffic: periodic, poisson, greedy or greedy:N, bursts.
    #[arg(long)]
    source: Option<String>,
    /// Message size of the built-in traffic (default mmax).
    #[arg(long, value_parser = size)]
    message_size: Option<units::Size>,
}

#[derive(Args, Debug)]
struct StatsCmd {
    /// One channel (all when absent).
    id: Option<u32>,
    /// Refresh until interrupted.
    #[arg(long)]
    watch: bool,
    /// Refresh period of --watch.
    #[arg(long, default_value = "1s", value_parser = duration)]
    interval: units::Duration,
    /// Stop --watch after this many refreshes.
    #[arg(long)]
    count: Option<u64>,
    /// The port instead: link state, port and per-queue counters, xstats (dpdk).
    #[arg(long, conflicts_with = "id")]
    port: bool,
    /// The polling cores instead: busy share, iterations, longest stretch without a
    /// preemption point.
    #[arg(long, conflicts_with_all = ["id", "port"])]
    cores: bool,
}

#[derive(Args, Debug)]
struct CaptureCmd {
    /// Only frames of this channel.
    #[arg(long)]
    channel: Option<u32>,
    /// Stop after this many frames (until interrupted, or --duration, when absent).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = duration)]
    duration: Option<units::Duration>,
    /// The pcapng file to write (created or truncated).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct TopCmd {
    /// Refresh period.
    #[arg(long, default_value = "1s", value_parser = duration)]
    interval: units::Duration,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Show the policy.
    Show,
    /// Change the policy.
    Set(PolicySetCmd),
}

#[derive(Args, Debug)]
struct PolicySetCmd {
    /// Packets a handler writes between preemption points.
    #[arg(long)]
    granularity: Option<u32>,
    /// Process early messages when idle (true/false).
    #[arg(long)]
    work_conserving: Option<bool>,
    /// Best-effort reserve, millionths of each core and queue.
    #[arg(long)]
    best_effort_reserve_ppm: Option<u32>,
    /// Cycle budget of one handler run.
    #[arg(long)]
    run_budget_cycles: Option<u64>,
    /// Default overflow policy of new channels.
    #[arg(long)]
    overflow: Option<String>,
    /// Close mode: drain or discard.
    #[arg(long)]
    close: Option<String>,
}

#[derive(Subcommand, Debug)]
enum AdmissionCmd {
    /// Decide a JSON file of requests against a resource model, in order (offline).
    Check {
        /// `{ "model": {..}, "requests": [..] }` (docs/admission.md).
        file: PathBuf,
    },
}

/// The daemon's reply to one request, or how to exit.
/// `stats [--watch]`.
fn stats_cmd(cli: &Cli, s: &StatsCmd) -> ExitCode {
    let req = if s.port {
        Request::PortStats
    } else if s.cores {
        Request::CoreStats
    } else {
        Request::Stats(StatsArgs { id: s.id })
    };
    let mut n = 0u64;
    loop {
        let code = match call(cli, &req) {
            Ok(r) => {
                let failed = r.error.is_some();
                let unsaved = r.state_save_failed.is_some();
                let code = if s.port {
                    show(cli, r, client::port_table)
                } else if s.cores {
                    show(cli, r, |v: &Vec<control::protocol::CoreStatsInfo>| {
                        client::cores_table(v)
                    })
                } else {
                    show(cli, r, |v: &Vec<ChannelStatsInfo>| client::stats_table(v))
                };
                if failed {
                    return code;
                }
                if unsaved && code == ExitCode::SUCCESS {
                    // The figures are right, but the table is not what a restart restores.
                    ExitCode::from(EXIT_REFUSED)
                } else {
                    code
                }
            }
            Err(code) => return code,
        };
        n += 1;
        if !s.watch || s.count.is_some_and(|c| n >= c) {
            return code;
        }
        std::thread::sleep(Duration::from_nanos(s.interval.0));
        if !cli.json {
            println!();
        }
    }
}

fn call(cli: &Cli, req: &Request) -> Result<Reply, ExitCode> {
    let mut c = connect(cli)?;
    c.call(req).map_err(|e| {
        eprintln!("rtchanctl: {e}");
        ExitCode::from(EXIT_UNREACHABLE)
    })
}

/// A connection to the daemon, or how to exit.
fn connect(cli: &Cli) -> Result<Client, ExitCode> {
    let path = cli.socket.clone().unwrap_or_else(|| {
        std::env::var_os("RTCHAN_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(control::config::DEFAULT_SOCKET))
    });
    Client::connect(&path).map_err(|e| {
        if e.permission_denied() {
            // The socket's mode refused us: a permission error, as docs/cli.md says (exit 2).
            eprintln!("rtchanctl: permission denied: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        } else {
            eprintln!("rtchanctl: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    })
}

/// Says on stderr (text mode; `--json` has `state_save_failed`) that the daemon's last save
/// of its state file failed; whether it did.
fn save_warning(cli: &Cli, reply: &Reply) -> bool {
    let Some(f) = &reply.state_save_failed else {
        return false;
    };
    if !cli.json {
        eprintln!(
            "rtchanctl: the daemon could not save its state file {} since {} UTC ({} failed \
             attempt(s), the first after {}, the last at {}): {}; the channels above are open \
             but a restart would not restore them as they are",
            f.path, f.since, f.attempts, f.after, f.last, f.error
        );
    }
    true
}

/// `capture`: arms the daemon's capture for this connection, takes frames every
/// 20 ms into the pcapng file until the count, the duration or a signal, then
/// disarms (closing the connection disarms too, whatever happens here).
fn capture_cmd(cli: &Cli, c: &CaptureCmd) -> ExitCode {
    use control::protocol::{CaptureArgs, CaptureChunk, CaptureStarted};
    use rtchan::pcapng::PcapngWriter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const CAPTURE_POLL: Duration = Duration::from_millis(20);
    let bad = |m: String| {
        eprintln!("rtchanctl: {m}");
        ExitCode::from(EXIT_BAD_INPUT)
    };
    if c.count == Some(0) {
        return bad("--count 0 captures nothing: give at least 1".into());
    }
    if c.duration.is_some_and(|d| d.0 == 0) {
        return bad("--duration 0 captures nothing: give a positive duration".into());
    }
    let out = c.out.display().to_string();
    // The file first: one that cannot be written stops here, before the daemon is asked.
    let file = match std::fs::File::create(&c.out) {
        Ok(f) => f,
        Err(e) => return bad(format!("cannot write the capture file {out}: {e}")),
    };
    let mut w = match PcapngWriter::new(std::io::BufWriter::new(file)) {
        Ok(w) => w,
        Err(e) => return bad(format!("cannot write the capture file {out}: {e}")),
    };
    let mut conn = match connect(cli) {
        Ok(conn) => conn,
        Err(code) => {
            let _ = std::fs::remove_file(&c.out);
            return code;
        }
    };
    let mut ask = |req: &Request| -> Result<Reply, ExitCode> {
        conn.call(req).map_err(|e| {
            eprintln!("rtchanctl: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        })
    };
    let started = ask(&Request::CaptureStart(CaptureArgs {
        channel: c.channel,
        count: c.count,
    }))
    .and_then(|r| {
        r.into_result::<CaptureStarted>().map_err(|e| {
            eprintln!("rtchanctl: {}", e.message);
            ExitCode::from(e.kind.exit_code())
        })
    });
    let started = match started {
        Ok(s) => s,
        Err(code) => {
            let _ = std::fs::remove_file(&c.out);
            return code;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let t0 = std::time::Instant::now();
    let mut frames = 0u64;
    let mut last = CaptureChunk::default();
    let mut failure: Option<(String, u8)> = None;
    for name in &started.interfaces {
        if let Err(e) = w.add_interface(name, started.snaplen) {
            failure = Some((
                format!("cannot write the capture file {out}: {e}"),
                EXIT_REFUSED,
            ));
            break;
        }
    }
    if failure.is_none() {
        // Armed: said on stderr, so a caller knows from when frames are captured.
        eprintln!(
            "rtchanctl: capturing on {} into {out}",
            started.interfaces.join(", ")
        );
    }
    let mut stop_sent = false;
    while failure.is_none() {
        let ending = stop.load(Ordering::Relaxed)
            || c.duration
                .is_some_and(|d| t0.elapsed() >= Duration::from_nanos(d.0));
        // After the stop the cores are disarmed, and takes hand out what the rings still hold.
        let req = if ending && !stop_sent {
            stop_sent = true;
            Request::CaptureStop
        } else {
            Request::CaptureTake
        };
        let chunk = match ask(&req) {
            Ok(r) => match r.into_result::<CaptureChunk>() {
                Ok(ch) => ch,
                Err(e) => {
                    failure = Some((e.message, e.kind.exit_code()));
                    break;
                }
            },
            Err(code) => return code,
        };
        let full = chunk.frames.len() >= 64;
        for f in &chunk.frames {
            let data = match unhex(&f.data) {
                Some(d) => d,
                None => {
                    failure = Some(("the daemon sent a frame that is not hex".into(), 1));
                    break;
                }
            };
            if let Err(e) = w.write_packet(u32::from(f.iface), f.ts, f.inbound, f.orig_len, &data) {
                failure = Some((format!("cannot write the capture file {out}: {e}"), 1));
                break;
            }
            frames += 1;
        }
        let done = chunk.done;
        last = chunk;
        if done {
            break;
        }
        if !full {
            std::thread::sleep(CAPTURE_POLL);
        }
    }
    if let Err(e) = w.flush() {
        failure.get_or_insert((format!("cannot write the capture file {out}: {e}"), 1));
    }
    if let Some((m, code)) = failure {
        // Disarm now rather than when the connection closes.
        let _ = ask(&Request::CaptureStop);
        eprintln!("rtchanctl: {m}");
        return ExitCode::from(code);
    }
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "file": out, "frames": frames, "copied": last.copied, "dropped": last.dropped,
            })
        );
    } else {
        println!(
            "{frames} frames written to {out}; the cores copied {} and dropped {} copies              (ring full; the traffic itself is never dropped)",
            last.copied, last.dropped
        );
    }
    ExitCode::SUCCESS
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Prints a reply: JSON, or `table` of its typed result; the exit code.
fn show<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    reply: Reply,
    table: impl Fn(&T) -> String,
) -> ExitCode {
    save_warning(cli, &reply);
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("serialises")
        );
        return match &reply.error {
            Some(e) => ExitCode::from(e.kind.exit_code()),
            None => ExitCode::SUCCESS,
        };
    }
    match reply.into_result::<T>() {
        Ok(v) => {
            print!("{}", table(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtchanctl: {}", e.message);
            if let Some(r) = &e.refusal {
                if let Some(t) = r.tightest_deadline {
                    eprintln!(
                        "rtchanctl: tightest end-to-end deadline that would be admitted: {}",
                        fmt_ns(t)
                    );
                }
            }
            ExitCode::from(e.kind.exit_code())
        }
    }
}

fn run(cli: &Cli) -> ExitCode {
    match &cli.command {
        Command::Channel(ChannelCmd::Open(o)) => {
            let req = Request::Open(OpenArgs {
                mmax: o.mmax,
                imin: o.imin.unwrap_or(units::Duration(BEST_EFFORT_IMIN)),
                bmax: o.bmax.unwrap_or(BEST_EFFORT_QUEUE),
                // Ignored for best-effort channels (the protocol field is not optional).
                deadline: o.deadline.unwrap_or(units::Duration(1_000_000_000)),
                dst: o.dst.clone(),
                core: o.core,
                txq: o.txq,
                policy: o.policy.clone(),
                dry_run: o.dry_run,
                source: o.source.clone(),
                message_size: o.message_size,
                best_effort: o.best_effort,
                attach: false,
            });
            match call(cli, &req) {
                Ok(r) => show(cli, r, client::channel_detail),
                Err(code) => code,
            }
        }
        Command::Channel(ChannelCmd::Close { id, discard }) => {
            match call(
                cli,
                &Request::Close(CloseArgs {
                    id: *id,
                    discard: *discard,
                }),
            ) {
                Ok(r) => show(cli, r, |c: &serde_json::Value| {
                    format!("closed channel {}\n", c["id"])
                }),
                Err(code) => code,
            }
        }
        Command::Channel(ChannelCmd::DiscardUnrestored { record }) => {
            match call(
                cli,
                &Request::DiscardUnrestored(RecordArgs { record: *record }),
            ) {
                Ok(r) => show(cli, r, |c: &serde_json::Value| {
                    let id = c["id"]
                        .as_u64()
                        .map_or("no readable id".to_string(), |i| format!("id {i}"));
                    format!(
                        "discarded record {} of the state file ({id}), which was not \
                         re-established: {}\n",
                        c["record"],
                        c["error"].as_str().unwrap_or("")
                    )
                }),
                Err(code) => code,
            }
        }
        Command::Channel(ChannelCmd::List) => match call(cli, &Request::List) {
            Ok(r) => {
                let unrestored = r
                    .result
                    .as_ref()
                    .and_then(|v| v.get("unrestored"))
                    .and_then(|u| u.as_array())
                    .map_or(0, Vec::len);
                let unsaved = r.state_save_failed.is_some();
                let code = show(cli, r, client::list_table);
                if unsaved && unrestored == 0 && code == ExitCode::SUCCESS {
                    // Listed, but a restart would not restore this table: say so (exit 1).
                    return ExitCode::from(EXIT_REFUSED);
                }
                if unrestored > 0 && code == ExitCode::SUCCESS {
                    // Listed, but the table is not what was persisted: say so in the exit code.
                    eprintln!(
                        "rtchanctl: {unrestored} channel(s) of the state file were not \
                         re-established (see above; `channel discard-unrestored RECORD` discards one)"
                    );
                    return ExitCode::from(EXIT_REFUSED);
                }
                code
            }
            Err(code) => code,
        },
        Command::Channel(ChannelCmd::Show { id }) => {
            match call(cli, &Request::Show(IdArgs { id: *id })) {
                Ok(r) => show(cli, r, |l: &ChannelList| {
                    let mut s: String = l.channels.iter().map(client::channel_detail).collect();
                    if !l.incoming.is_empty() {
                        s.push_str(&client::list_table(&ChannelList {
                            incoming: l.incoming.clone(),
                            ..ChannelList::default()
                        }));
                    }
                    if !l.unrestored.is_empty() || !l.receive_rejected.is_empty() {
                        s.push_str(&client::list_table(&ChannelList {
                            unrestored: l.unrestored.clone(),
                            receive_rejected: l.receive_rejected.clone(),
                            ..ChannelList::default()
                        }));
                    }
                    s
                }),
                Err(code) => code,
            }
        }
        Command::Top(t) => {
            use std::io::IsTerminal;
            if !std::io::stdout().is_terminal() {
                return stats_cmd(
                    cli,
                    &StatsCmd {
                        id: None,
                        watch: true,
                        interval: t.interval,
                        count: None,
                        port: false,
                        cores: false,
                    },
                );
            }
            top::run(t.interval, || {
                let channels = match call(cli, &Request::Stats(StatsArgs { id: None })) {
                    Ok(r) => r
                        .into_result::<Vec<ChannelStatsInfo>>()
                        .map_err(|e| e.message)?,
                    Err(_) => return Err("the daemon does not answer".into()),
                };
                let cores = match call(cli, &Request::CoreStats) {
                    Ok(r) => r
                        .into_result::<Vec<control::protocol::CoreStatsInfo>>()
                        .map_err(|e| e.message)?,
                    Err(_) => return Err("the daemon does not answer".into()),
                };
                Ok((channels, cores))
            })
        }
        Command::Stats(s) => stats_cmd(cli, s),
        Command::Capture(c) => capture_cmd(cli, c),
        Command::Policy(PolicyCmd::Show) => match call(cli, &Request::PolicyShow) {
            Ok(r) => show(cli, r, client::policy_table),
            Err(code) => code,
        },
        Command::Policy(PolicyCmd::Set(p)) => {
            let u = PolicyUpdate {
                granularity: p.granularity,
                work_conserving: p.work_conserving,
                best_effort_reserve_ppm: p.best_effort_reserve_ppm,
                run_budget_cycles: p.run_budget_cycles,
                overflow: p.overflow.clone(),
                close: p.close.clone(),
            };
            if u == PolicyUpdate::default() {
                eprintln!("rtchanctl: policy set: give at least one field to change (see --help)");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            match call(cli, &Request::PolicySet(u)) {
                Ok(r) => show(cli, r, client::policy_table),
                Err(code) => code,
            }
        }
        Command::Admission(AdmissionCmd::Check { file }) => admission_check(cli, file),
    }
}

fn admission_check(cli: &Cli, file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rtchanctl: {}: {e}", file.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let decisions = match run_json(&text) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rtchanctl: {}: {e}", file.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let all_admitted = decisions.iter().all(|d| matches!(d, Decision::Admitted(_)));
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&decisions).expect("serialises")
        );
    } else {
        println!(
            "{:>3}  {:<8} {:>4} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8}  DETAIL",
            "#", "OUTCOME", "CORE", "TXQ", "D", "D_CPU", "C_CPU", "U_CORE", "U_TXQ"
        );
        for (i, d) in decisions.iter().enumerate() {
            match d {
                Decision::Admitted(a) => println!(
                    "{:>3}  {:<8} {:>4} {:>4} {:>9} {:>9} {:>9} {:>7.2}% {:>7.2}%  id {} packets {} buffer {} B",
                    i,
                    "admitted",
                    a.core,
                    a.txq,
                    fmt_ns(a.link_deadline),
                    fmt_ns(a.cpu_deadline),
                    fmt_ns(a.cpu_cost),
                    f64::from(a.core_utilisation_ppm) / 1e4,
                    f64::from(a.txq_utilisation_ppm) / 1e4,
                    a.id,
                    a.packets,
                    a.buffer_bytes
                ),
                Decision::Rejected(r) => println!(
                    "{:>3}  {:<8} {:>4} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8}  {}",
                    i, "rejected", r.core, r.txq, "-", "-", "-", "-", "-", r
                ),
                Decision::Invalid { message, .. } => println!(
                    "{:>3}  {:<8} {:>4} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8}  {}",
                    i, "invalid", "-", "-", "-", "-", "-", "-", "-", message
                ),
            }
        }
    }
    if all_admitted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REFUSED)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run(&cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn units_parse_in_arguments() {
        let cli = Cli::try_parse_from([
            "rtchanctl",
            "channel",
            "open",
            "--mmax",
            "4KiB",
            "--imin",
            "500us",
            "--bmax",
            "2",
            "--deadline",
            "2ms",
            "--dst",
            "local",
        ])
        .unwrap();
        let Command::Channel(ChannelCmd::Open(o)) = cli.command else {
            panic!("open");
        };
        assert_eq!(o.mmax, units::Size(4096));
        assert_eq!(o.imin, Some(units::Duration(500_000)));
        let cli = Cli::try_parse_from([
            "rtchanctl",
            "channel",
            "open",
            "--best-effort",
            "--mmax",
            "1400",
            "--dst",
            "b",
        ])
        .unwrap();
        let Command::Channel(ChannelCmd::Open(o)) = cli.command else {
            panic!("open");
        };
        assert!(o.best_effort && o.imin.is_none() && o.deadline.is_none());
        assert!(Cli::try_parse_from([
            "rtchanctl",
            "channel",
            "open",
            "--mmax",
            "1400",
            "--dst",
            "b",
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "rtchanctl",
            "channel",
            "open",
            "--mmax",
            "1",
            "--imin",
            "0ms",
            "--bmax",
            "1",
            "--deadline",
            "1ms",
            "--dst",
            "x",
        ])
        .is_err());
    }
}

/// `rtchanctl top`: the full-screen loop (crossterm: raw mode, the alternate screen, key
/// events), restored on every exit path.
mod top {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use control::protocol::{ChannelStatsInfo, CoreStatsInfo};
    use control::units;
    use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};
    use crossterm::{cursor, execute, queue, terminal};
    use rtchan::daemon::client::top_screen_with_cores;
    use std::process::ExitCode;

    /// Leaves raw mode and the alternate screen when dropped.
    struct Screen;

    impl Screen {
        fn enter() -> std::io::Result<Self> {
            terminal::enable_raw_mode()?;
            let s = Screen;
            execute!(
                std::io::stdout(),
                terminal::EnterAlternateScreen,
                cursor::Hide
            )?;
            Ok(s)
        }
    }

    impl Drop for Screen {
        fn drop(&mut self) {
            let _ = execute!(
                std::io::stdout(),
                cursor::Show,
                terminal::LeaveAlternateScreen
            );
            let _ = terminal::disable_raw_mode();
        }
    }

    fn quits(k: &KeyEvent) -> bool {
        matches!(
            k.code,
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
        ) || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
    }

    pub fn run(
        interval: units::Duration,
        mut fetch: impl FnMut() -> Result<(Vec<ChannelStatsInfo>, Vec<CoreStatsInfo>), String>,
    ) -> ExitCode {
        let period = Duration::from_nanos(interval.0.max(100_000_000));
        let screen = match Screen::enter() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rtchanctl top: cannot use the terminal: {e}");
                return ExitCode::from(1);
            }
        };
        let mut before: (Vec<ChannelStatsInfo>, Vec<CoreStatsInfo>) = Default::default();
        let mut last = Instant::now();
        loop {
            let (now, note) = match fetch() {
                Ok(v) => (v, None),
                Err(e) => (before.clone(), Some(e)),
            };
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            let (_, rows) = terminal::size().unwrap_or((80, 24));
            let mut lines =
                top_screen_with_cores(&now.0, &before.0, &now.1, &before.1, dt, rows as usize);
            if let Some(n) = note {
                lines.insert(1, format!("(stale: {n})"));
            }
            let mut out = std::io::stdout();
            let _ = queue!(
                out,
                terminal::Clear(terminal::ClearType::All),
                cursor::MoveTo(0, 0)
            );
            for l in &lines {
                let _ = write!(out, "{l}\r\n");
            }
            let _ = out.flush();
            before = now;
            // Wait for the next refresh, quitting on q.
            let until = Instant::now() + period;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match event::poll(left) {
                    Ok(true) => {
                        if let Ok(Event::Key(k)) = event::read() {
                            if quits(&k) {
                                drop(screen);
                                return ExitCode::SUCCESS;
                            }
                        }
                    }
                    Ok(false) => break,
                    Err(_) => {
                        drop(screen);
                        return ExitCode::from(1);
                    }
                }
            }
        }
    }
}
