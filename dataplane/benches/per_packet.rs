//! Per-packet cost of the sending path — enforcement, wake-up, CPU scheduling, header write,
//! link scheduling and release to a null port — at 10, 1,000 and 100,000 channels.
//!
//! Each message is a single 64-byte packet and consecutive messages go to different channels
//! (round-robin over all of them), so at 100,000 channels every packet touches cold channel
//! state: the worst case for the caches, which is what the 1.5x target is about. Deadlines are
//! spread over 10 ms so the EDF queues hold many distinct keys.
//!
//! Two scopes are measured:
//! - `sched_path`: exactly the scope — enforcement (ℓ), the CPU scheduler (re-queue the
//!   channel with its next message and pick the earliest deadline), the header write (full
//!   Ethernet/IPv4/UDP/rtchan frame with both checksums) and the link scheduler (enqueue and
//!   release one packet), in steady state with every channel backlogged, so the CPU queue holds
//!   all N channels and the link queue a standing backlog;
//! - `core_loop`: the whole polling loop on a null port — submit rings, doorbell wake-ups,
//!   buffer pools, statistics, batching — for the same packets.
//!
//! Criterion measures each size; the plain table at the end measures all sizes side by side in
//! one run and prints the ratios (run-to-run noise on a shared machine cancels out there), with
//! the ablations of `bench_path::Ablation` at 10 and 100,000 channels: each leaves one part out
//! (the CPU's EDF order, the channel memory, the link scheduler, both, or the prefetch of the
//! channel `bench_path::LOOKAHEAD` picks ahead), and the ratio of the two says where the growth
//! goes.

use criterion::{BenchmarkId, Criterion, Throughput};
use dataplane::bench_path::{Ablation, SchedPath};
use dataplane::channel::Sender;
use dataplane::core::{Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::memlink::NullPort;
use dataplane::sched::SchedPolicy;
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{MonotonicClock, TscMeter};
use std::time::{Duration, Instant};

/// Messages submitted between polls: one poll's worth of work (≤ the core's run bound).
const BATCH: usize = 32;

struct Setup {
    core: Core<NullPort>,
    senders: Vec<Sender>,
    next: usize,
    clock: MonotonicClock,
    tsc: TscMeter,
}

fn setup(channels: usize, fifo: bool) -> Setup {
    let mut cfg = CoreConfig {
        max_channels: channels as u32,
        sched: SchedPolicy {
            granularity: 1,
            ..SchedPolicy::default()
        },
        link: LinkConfig {
            link_rate_bps: 400_000_000_000,
            in_flight_limit: u64::MAX / 4,
            capacity: 1024,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    if fifo {
        cfg = cfg.fifo_baseline();
    }
    let mut core = Core::new(cfg, NullPort::new(4096, 1514)).unwrap();
    let senders = (0..channels)
        .map(|i| {
            let d = 10_000 + (i as u64 * 7919) % 10_000_000;
            let spec = ChannelSpec {
                mmax: 64,
                imin: 1, // greedy within spec: every message is current at once
                bmax: 8, // ≥ BATCH / 10: the 10-channel case gets several per batch
                cpu_deadline: d,
                link_deadline: d,
                end_to_end_deadline: d,
            };
            core.open(ChannelConfig::real_time(i as u32, spec)).unwrap()
        })
        .collect();
    Setup {
        core,
        senders,
        next: 0,
        clock: MonotonicClock,
        tsc: TscMeter,
    }
}

impl Setup {
    /// Submits a batch and polls until it is all handed to the port; returns the time spent in
    /// the core (submission excluded) for `BATCH` packets.
    fn round(&mut self, msg: &[u8]) -> Duration {
        let n = self.senders.len();
        let mut accepted = 0;
        for _ in 0..BATCH {
            if self.senders[self.next].submit(msg).is_ok() {
                accepted += 1;
            }
            self.next = (self.next + 1) % n;
        }
        assert_eq!(accepted, BATCH, "every submit fits in the channel buffers");
        let target = self.core.stats().tx_packets + BATCH as u64;
        let t0 = Instant::now();
        while self.core.stats().tx_packets < target {
            self.core.poll(&self.clock, &mut self.tsc);
        }
        t0.elapsed()
    }
}

fn sched_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    for &n in &[10usize, 1_000, 100_000] {
        let mut p = SchedPath::new(n);
        group.bench_with_input(BenchmarkId::new("edf", n), &n, |b, _| {
            b.iter(|| p.packet(true))
        });
    }
    group.finish();
}

fn per_packet(c: &mut Criterion) {
    let msg = [0xabu8; 64];
    let mut group = c.benchmark_group("core_loop");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    for &n in &[10usize, 1_000, 100_000] {
        let mut s = setup(n, false);
        group.bench_with_input(BenchmarkId::new("edf", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| s.round(&msg)).sum())
        });
    }
    group.finish();
}

fn side_by_side() {
    // The scheduling path: all sizes and ablations interleaved in slices. The whole path at
    // each size, then, at 10 and 100,000 channels, each ablation: its own ratio says how much
    // of the growth the part it leaves out accounts for.
    let whole = Ablation::default();
    let ablations = [
        (
            "cpu fifo",
            Ablation {
                cpu_fifo: true,
                ..whole
            },
        ),
        (
            "no chan mem",
            Ablation {
                no_channel_memory: true,
                ..whole
            },
        ),
        (
            "no link",
            Ablation {
                no_link: true,
                ..whole
            },
        ),
        (
            "neither",
            Ablation {
                no_channel_memory: true,
                no_link: true,
                ..whole
            },
        ),
        (
            "no lookahead",
            Ablation {
                no_lookahead: true,
                ..whole
            },
        ),
    ];
    // One group at a time, so that only one 100,000-channel path (~10 MB of state) is alive:
    // several would evict each other from the last-level cache between slices, which a core
    // running one dataplane does not see.
    let mut groups: Vec<Vec<(usize, &str, Ablation)>> = vec![[10usize, 1_000, 100_000]
        .iter()
        .map(|&n| (n, "whole", whole))
        .collect()];
    for &(label, a) in &ablations {
        groups.push(vec![(10, label, a), (100_000, label, a)]);
    }
    let mut rows: Vec<(usize, &str, f64)> = Vec::new();
    for group in &groups {
        let ns = interleaved_sched_path(group);
        rows.extend(
            group
                .iter()
                .zip(ns)
                .map(|(&(n, label, _), t)| (n, label, t)),
        );
    }
    let sns = |i: usize| rows[i].2;
    println!();
    println!("scheduling path (enforcement + CPU EDF + header write + link EDF), per packet");
    println!("{:>10}  {:>12}  {:>12}", "channels", "path", "ns/packet");
    for &(n, label, t) in &rows {
        println!("{:>10}  {:>12}  {:>12.1}", n, label, t);
    }
    println!(
        "ratio 100,000 / 10 channels: {:.2}x (target <= 1.5x); 10 channels: {:.1} ns (target <= 40 ns)",
        sns(2) / sns(0),
        sns(0)
    );
    for (k, (label, _)) in ablations.iter().enumerate() {
        let (at10, at100k) = (3 + 2 * k, 4 + 2 * k);
        println!(
            "  {label:>12}: 100,000 / 10 = {:.2}x; at 100,000 it saves {:.1} ns of the {:.1} \
             the whole path adds over 10 channels",
            sns(at100k) / sns(at10),
            sns(2) - sns(at100k),
            sns(2) - sns(0),
        );
    }

    let msg = [0xabu8; 64];
    let sizes = [10usize, 1_000, 100_000];
    let mut setups: Vec<(usize, bool, Setup)> = Vec::new();
    for &n in &sizes {
        setups.push((n, false, setup(n, false)));
    }
    setups.push((1_000, true, setup(1_000, true)));
    // Interleave the configurations in short slices so machine noise hits all alike.
    let mut totals = vec![(Duration::ZERO, 0u64); setups.len()];
    for (_, _, s) in setups.iter_mut() {
        for _ in 0..2000 {
            s.round(&msg); // warm-up: every channel touched at least once
        }
    }
    for _ in 0..40 {
        for (i, (_, _, s)) in setups.iter_mut().enumerate() {
            for _ in 0..500 {
                totals[i].0 += s.round(&msg);
                totals[i].1 += BATCH as u64;
            }
        }
    }
    let ns = |i: usize| totals[i].0.as_nanos() as f64 / totals[i].1 as f64;
    println!();
    println!(
        "per-packet cost of the sending path (enforcement + scheduler + link + header + release)"
    );
    println!("{:>10}  {:>6}  {:>12}", "channels", "mode", "ns/packet");
    for (i, (n, fifo, _)) in setups.iter().enumerate() {
        println!(
            "{:>10}  {:>6}  {:>12.1}",
            n,
            if *fifo { "fifo" } else { "edf" },
            ns(i)
        );
    }
    println!("ratio 100,000 / 10 channels: {:.2}x", ns(2) / ns(0));
    println!(
        "ratio EDF / FIFO baseline at 1,000 channels: {:.2}x",
        ns(1) / ns(3)
    );
}

/// Runs the scheduling paths of `configs` in interleaved slices (machine noise hits all
/// alike) and returns each one's ns per packet.
fn interleaved_sched_path(configs: &[(usize, &str, Ablation)]) -> Vec<f64> {
    let mut paths: Vec<SchedPath> = configs
        .iter()
        .map(|&(n, _, a)| SchedPath::with_ablation(n, a))
        .collect();
    for p in paths.iter_mut() {
        for _ in 0..200_000 {
            p.packet(true);
        }
    }
    let mut total = vec![(Duration::ZERO, 0u64); paths.len()];
    for _ in 0..40 {
        for (i, p) in paths.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..20_000 {
                p.packet(true);
            }
            total[i].0 += t.elapsed();
            total[i].1 += 20_000;
        }
    }
    total
        .iter()
        .map(|&(t, n)| t.as_nanos() as f64 / n as f64)
        .collect()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    sched_path(&mut c);
    per_packet(&mut c);
    c.final_summary();
    // Profiling one benchmark (`--profile-time`) or listing: skip the side-by-side table.
    if !std::env::args().any(|a| a == "--profile-time" || a == "--list") {
        side_by_side();
    }
}
