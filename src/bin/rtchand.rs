//! `rtchand`: the rtchan daemon, and its `demo` subcommand.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "rtchand",
    version,
    about = "rtchan daemon: real-time channels over a kernel-bypass dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show real-time channels holding their deadlines under a best-effort flood (no NIC needed).
    Demo(rtchan::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => match rtchan::demo::run(&args) {
            Ok(report) if report.passed() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("rtchand demo: {e}");
                ExitCode::from(2)
            }
        },
    }
}
