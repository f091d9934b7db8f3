//! Admission latency on a crowded core: the time to admit (and release again) the 1,000th
//! and the 10,000th channel on one core and one TX queue, whose 999 / 9,999 predecessors
//! have varied sizes, rates and deadlines (no two alike, so nothing can be aggregated).
//! Targets: 1 ms and 20 ms. Also timed: a rejection (which searches for the tightest
//! deadline) and, separately, admission on a queue whose demand is near saturation, where
//! QPA needs many small steps.
//!
//! Run: `cargo bench -p control --bench admission` (prints a plain summary at the end).

use std::hint::black_box;
use std::time::{Duration, Instant};

use control::admission::{Admission, AdmitError, ChannelRequest, ResourceModel};
use criterion::{criterion_group, criterion_main, Criterion};

/// Deterministic xorshift so every run measures the same channel set.
struct Rng(u64);
impl Rng {
    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

/// Channel specs: `(imin range, deadline range)` in ns.
#[derive(Clone, Copy)]
struct Mix {
    imin: (u64, u64),
    deadline: (u64, u64),
}

/// 2-20 Hz streams with 1-50 ms host bounds: 10,000 fit on one core and one 10 Gb/s queue.
const TYPICAL: Mix = Mix {
    imin: (50_000_000, 500_000_000),
    deadline: (1_000_000, 50_000_000),
};
/// 5-50 Hz with 0.2-20 ms bounds: the queue's demand saturates near 5,200 channels.
const DENSE: Mix = Mix {
    imin: (20_000_000, 200_000_000),
    deadline: (200_000, 20_000_000),
};

fn request(rng: &mut Rng, mix: Mix) -> ChannelRequest {
    ChannelRequest {
        mmax: rng.next(64, 4_000) as u32,
        imin: rng.next(mix.imin.0, mix.imin.1),
        bmax: rng.next(1, 8) as u32,
        deadline: rng.next(mix.deadline.0, mix.deadline.1),
        core: Some(0),
        txq: Some(0),
    }
}

/// Admits requests of `mix` on core 0 / txq 0 until `done(admitted, rejected)`.
fn crowded(mix: Mix, mut done: impl FnMut(usize, usize) -> bool) -> (Admission, Rng) {
    let mut adm = Admission::new(ResourceModel::default()).expect("default model is valid");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut admitted, mut rejected) = (0, 0);
    while !done(admitted, rejected) {
        match adm.admit(&request(&mut rng, mix)) {
            Ok(_) => admitted += 1,
            Err(_) => rejected += 1,
        }
    }
    (adm, rng)
}

/// Median of `runs` timings of `f` (the machine is shared: medians resist preemption).
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[runs / 2]
}

struct Figure {
    label: String,
    channels: usize,
    target_ms: Option<f64>,
    accept: Duration,
    reject: Option<Duration>,
}

fn measure(c: &mut Criterion, label: &str, mut adm: Admission, mut rng: Rng, mix: Mix) -> Figure {
    let channels = adm.channels().count() + 1;
    let probe = loop {
        let r = request(&mut rng, mix);
        if adm.check(&r).is_ok() {
            break r;
        }
    };
    let mut g = c.benchmark_group("admission");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.bench_function(format!("admit_release_{label}"), |b| {
        b.iter(|| {
            let a = adm.admit(black_box(&probe)).expect("probe fits");
            adm.release(a.id).expect("just admitted");
        })
    });
    g.finish();
    let accept = median(21, || {
        let a = adm.admit(&probe).expect("probe fits");
        adm.release(a.id).expect("just admitted");
    });
    // The same channel with a deadline it cannot have: the rejection searches the tightest.
    let mut reject = None;
    for deadline in [20_000, 50_000, 100_000, 200_000] {
        let tight = ChannelRequest { deadline, ..probe };
        if let Err(AdmitError::Rejected(_)) = adm.check(&tight) {
            reject = Some(median(5, || {
                let _ = black_box(adm.check(&tight));
            }));
            break;
        }
    }
    Figure {
        label: label.to_owned(),
        channels,
        target_ms: None,
        accept,
        reject,
    }
}

fn bench(c: &mut Criterion) {
    let mut figures = Vec::new();
    for (n, target) in [(1_000usize, 1.0), (10_000, 20.0)] {
        let (adm, rng) = crowded(TYPICAL, |a, _| a == n - 1);
        let mut f = measure(c, &format!("{n}th"), adm, rng, TYPICAL);
        f.target_ms = Some(target);
        figures.push(f);
    }
    // Keep admitting dense channels until 20 have been refused: the queue is then full.
    let (adm, rng) = crowded(DENSE, |_, r| r == 20);
    figures.push(measure(c, "near_saturation", adm, rng, DENSE));

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("admission summary (median of repeated admit+release on core 0 / txq 0):");
    for f in figures {
        println!(
            "  {:<16} channel #{:<6} admit+release {:>8.3} ms{}{}",
            f.label,
            f.channels,
            ms(f.accept),
            f.target_ms
                .map_or(String::new(), |t| format!(" (target <= {t} ms)")),
            f.reject.map_or(String::new(), |r| format!(
                "; rejection with tightest-deadline search {:.3} ms",
                ms(r)
            )),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
