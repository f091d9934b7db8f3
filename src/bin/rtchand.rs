//! `rtchand`: the rtchan daemon (`rtchand --config FILE`), its `calibrate` and `demo`
//! subcommands (and `demo-app`, hidden: the demo's application processes).
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "rtchand",
    version,
    about = "rtchan daemon: real-time channels over a kernel-bypass dataplane",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run the daemon with this configuration file (TOML; see docs/config.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start with no channels if the state file is unreadable (it is kept aside, renamed
    /// with a timestamp); without it the daemon refuses to start on such a file.
    #[arg(long)]
    discard_state: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the same as `rtchand --config FILE`).
    Run {
        /// Configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Start with no channels if the state file is unreadable (kept aside).
        #[arg(long)]
        discard_state: bool,
    },
    /// Measure every CPU cost admission charges, through the real loop, and print a
    /// `[cost]`/`[rx_cost]` fragment.
    Calibrate(CalibrateArgs),
    /// Show real-time channels holding their deadlines under a best-effort flood (no NIC needed).
    Demo(rtchan::demo::DemoArgs),
    /// One of the demo's application processes (run by `demo`).
    #[command(hide = true)]
    DemoApp(rtchan::demo::app::AppArgs),
}

#[derive(clap::Args, Debug)]
struct CalibrateArgs {
    /// Samples per measured stretch (at least 1000).
    #[arg(long, default_value_t = 20_000)]
    samples: u32,
    /// Packets of the multi-packet message.
    #[arg(long, default_value_t = 8)]
    packets: u32,
    /// Preemption granularity of the measured core (use the daemon's).
    #[arg(long, default_value_t = 4)]
    granularity: u32,
    /// IP MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Also write the fragment to this file.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the measurements as JSON.
    #[arg(long)]
    json: bool,
}

/// Logs of the daemon: one line per event on stderr, with its level; `RTCHAN_LOG` (error,
/// warn, info, debug, trace) sets the least level shown, info by default.
fn init_logs() {
    use std::io::IsTerminal;
    let asked = std::env::var("RTCHAN_LOG").ok();
    let level = asked.as_deref().map(str::parse::<tracing::Level>);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(match level {
            Some(Ok(l)) => l,
            _ => tracing::Level::INFO,
        })
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if let (Some(v), Some(Err(_))) = (asked, level) {
        tracing::warn!(
            "rtchand: RTCHAN_LOG={v:?} is not a level (error, warn, info, debug, trace); \
             logging at info"
        );
    }
}

fn daemon(path: &std::path::Path, discard_state: bool) -> ExitCode {
    init_logs();
    match rtchan::daemon::run(path, rtchan::daemon::StartOptions { discard_state }) {
        Ok(report) => {
            print!(
                "{}",
                rtchan::daemon::client::final_report(&report.channels, &report.cores)
            );
            match report.state_save_failed {
                None => ExitCode::SUCCESS,
                Some(f) => {
                    // Stopped cleanly, but the next start would restore an older table.
                    tracing::error!(
                        "rtchand: the state file {} was not saved at shutdown either ({}; \
                         failing since {} UTC, {} attempts): the next start restores the \
                         table saved before",
                        f.path,
                        f.error,
                        f.since,
                        f.attempts
                    );
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            tracing::error!("rtchand: {}", rtchan::daemon::one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn calibrate(a: &CalibrateArgs) -> ExitCode {
    use rtchan::daemon::calibrate::{run, CalibrateOptions};
    let opts = CalibrateOptions {
        samples: a.samples,
        packets: a.packets,
        granularity: a.granularity,
        mtu: a.mtu,
    };
    let c = match run(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rtchand calibrate: {e}");
            return ExitCode::from(2);
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c).expect("serialises"));
    } else {
        println!(
            "{:<42} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "stretch", "samples", "mean", "p50", "p99", "p99.9", "max"
        );
        for d in &c.distributions {
            println!(
                "{:<42} {:>8} {:>8.0}ns {:>6}ns {:>6}ns {:>6}ns {:>6}ns",
                d.what, d.samples, d.mean, d.p50, d.p99, d.p999, d.max
            );
        }
        println!();
        print!("{}", c.toml_fragment());
    }
    if let Some(path) = &a.output {
        if let Err(e) = std::fs::write(path, c.toml_fragment()) {
            eprintln!("rtchand calibrate: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::Demo(args)), _) => match rtchan::demo::run(&args) {
            Ok(report) if report.passed() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("rtchand demo: {e}");
                ExitCode::from(2)
            }
        },
        (Some(Command::DemoApp(a)), _) => match rtchan::demo::app::run(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rtchand demo-app: {e}");
                ExitCode::from(1)
            }
        },
        (Some(Command::Calibrate(a)), _) => calibrate(&a),
        (
            Some(Command::Run {
                config,
                discard_state,
            }),
            _,
        ) => daemon(&config, discard_state),
        (None, Some(config)) => daemon(&config, cli.discard_state),
        (None, None) => {
            eprintln!(
                "rtchand: give --config FILE to run the daemon, or a subcommand (see --help)"
            );
            ExitCode::from(2)
        }
    }
}
