//! The scheduling path alone (enforcement, CPU EDF, header write, link EDF) for N channels
//! (first argument, default 10) and P packets (second, default 1,000,000), optionally with an
//! ablation (third: `cpu-fifo`, `no-channel-memory`, `no-link`, `neither` or `no-lookahead`; see
//! `bench_path::Ablation`): a target for `valgrind --tool=callgrind`, whose instruction counts
//! do not depend on machine load.

use dataplane::bench_path::{Ablation, SchedPath};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let packets: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let ablation = match args.next().as_deref() {
        None | Some("whole") => Ablation::default(),
        Some("cpu-fifo") => Ablation {
            cpu_fifo: true,
            ..Ablation::default()
        },
        Some("no-channel-memory") => Ablation {
            no_channel_memory: true,
            ..Ablation::default()
        },
        Some("no-link") => Ablation {
            no_link: true,
            ..Ablation::default()
        },
        Some("no-lookahead") => Ablation {
            no_lookahead: true,
            ..Ablation::default()
        },
        Some("neither") => Ablation {
            no_channel_memory: true,
            no_link: true,
            ..Ablation::default()
        },
        Some(other) => {
            eprintln!(
                "unknown ablation {other:?}: expected whole, cpu-fifo, no-channel-memory, no-link, \
                 neither or no-lookahead"
            );
            std::process::exit(2);
        }
    };
    let mut p = SchedPath::with_ablation(n, ablation);
    let t = std::time::Instant::now();
    for _ in 0..packets {
        p.packet(true);
    }
    println!(
        "{n} channels: {:.1} ns/packet",
        t.elapsed().as_nanos() as f64 / packets as f64
    );
}
