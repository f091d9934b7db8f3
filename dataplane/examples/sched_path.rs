//! The scheduling path alone (enforcement, CPU EDF, header write, link EDF) for N channels
//! (first argument, default 10) and P packets (second, default 1,000,000): a target for
//! `valgrind --tool=callgrind`, whose instruction counts do not depend on machine load.

use dataplane::bench_path::SchedPath;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let packets: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut p = SchedPath::new(n);
    let t = std::time::Instant::now();
    for _ in 0..packets {
        p.packet(true);
    }
    println!(
        "{n} channels: {:.1} ns/packet",
        t.elapsed().as_nanos() as f64 / packets as f64
    );
}
