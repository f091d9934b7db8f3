//! `rtchan-eval`: runs the evaluation's experiments (see `docs/evaluation.md`).
//!
//! ```text
//! rtchan-eval NAME|all [--quick] [--out DIR] [--link mem|veth]
//! ```
//! Each experiment writes CSV tables and SVG plots into DIR (default `docs/eval`), prints its
//! key numbers and checks its qualitative result. Exit codes: 0 every check held, 1 a check
//! failed, 2 bad usage or an experiment could not run. Build with `--release`: the overheads
//! experiment measures real time. `--link veth` runs every experiment in real time over a veth
//! pair between two network namespaces (needs root, else it prints SKIPPED and exits 0; AF_XDP
//! when built with `--features af_xdp`, else af_packet) and writes `*-veth.csv` /
//! `*-veth.svg`: `qos`, `overload`, `fairness`, `granularity` and `baselines` with the real
//! dataplane on a 100 Mb/s paced link, `overheads` with the port TX stage and the whole loop
//! timed on the kernel ports beside the `NullPort`.
use clap::Parser;
use rtchan_eval::{self as eval, Link, Opts, EXPERIMENTS};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "rtchan-eval",
    version,
    about = "Run rtchan's evaluation experiments",
    after_help = "Experiments: qos, overload, fairness, granularity, overheads, baselines, all"
)]
struct Cli {
    /// Experiment to run, or `all`.
    name: String,
    /// Shortened runs that still check the qualitative results (CI).
    #[arg(long)]
    quick: bool,
    /// Output directory for CSV and SVG files.
    #[arg(long, default_value = "docs/eval")]
    out: PathBuf,
    /// The link: `mem` (in-memory, virtual time), `veth` (real time over a veth pair between
    /// two network namespaces, needs root; every experiment, `*-veth` files) or `dpdk` (the
    /// same veth bed with DPDK ports, a build with `--features dpdk`; `*-dpdk` files).
    #[arg(long, default_value = "mem", value_parser = ["mem", "veth", "dpdk"])]
    link: String,
    /// Print every check, not only failures.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let link = match cli.link.as_str() {
        "veth" => Link::Veth,
        "dpdk" => Link::Dpdk,
        _ => Link::Mem,
    };
    let names: Vec<&str> = if cli.name == "all" {
        EXPERIMENTS.to_vec()
    } else {
        vec![cli.name.as_str()]
    };
    let opts = Opts {
        quick: cli.quick,
        out: cli.out.clone(),
    };
    let mut failed = false;
    for name in names {
        let t0 = Instant::now();
        let rep = match eval::run_on(name, &opts, link) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("rtchan-eval: {name}: {e}");
                return ExitCode::from(2);
            }
        };
        let tag = match link {
            Link::Mem => "",
            Link::Veth => " on veth",
            Link::Dpdk => " on veth with DPDK ports",
            Link::Daemons => " on daemons",
        };
        println!(
            "== {name}{tag} ({:.1} s, {} checks passed, {} failed)",
            t0.elapsed().as_secs_f64(),
            rep.passed.len(),
            rep.failed.len()
        );
        for line in &rep.summary {
            println!("  {line}");
        }
        if cli.verbose {
            for c in &rep.passed {
                println!("  ok   {c}");
            }
        }
        for c in &rep.failed {
            println!("  FAIL {c}");
        }
        for file in &rep.files {
            println!("  wrote {}", file.display());
        }
        failed |= !rep.failed.is_empty();
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
