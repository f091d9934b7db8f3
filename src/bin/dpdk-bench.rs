//! `dpdk-bench`: rtchan's full dataplane path against QoS off, DPDK's own QoS scheduler and
//! DPDK's testpmd, on one polling core transmitting into DPDK's `net_null` vdev.
//!
//! Throughput (1,000 greedy channels, one packet per message, every channel's ring kept full):
//! - **full**: a [`Core`] with EDF CPU and link scheduling, enforcement and pacing;
//! - **fifo**: the same core with [`CoreConfig::fifo_baseline`] (QoS off);
//! - **rte_sched**: the same frames written with the same header template, scheduled by
//!   `librte_sched` with one pipe per channel, then `rte_eth_tx_burst`;
//! - **testpmd**: `dpdk-testpmd --forward-mode=txonly` on a `net_null` vdev with its
//!   forwarding lcore on the same CPU (a subprocess; built by `scripts/build-testpmd.sh`).
//!
//! The producer refills the channels' rings on the polling thread between polls, and only the
//! time inside `Core::poll` counts: the figure is the core's capacity, independent of how fast
//! one producer thread can feed 1,000 rings (with a separate producer on a shared 2-CPU
//! machine, the producer would be what is measured). The rte_sched loop counts everything it
//! does per packet (mbuf allocation, frame writing, classify, enqueue, dequeue, tx_burst),
//! which is what a poll does per packet.
//!
//! Delay (submit → the link scheduler's release to `tx_burst`, the channels' own histogram) is
//! measured with a producer thread on another CPU submitting periodic messages, paced by the
//! dataplane's `Periodic` source and spread round-robin over the channels, at 50% and 90% load:
//! shares of the core's capacity *for this traffic*, measured first (a calibration run at a
//! light load times the polling core's busy iterations per message; a periodic message finds
//! its handler idle and costs a wake-up a greedy one does not, so the greedy figures above
//! would overstate it). `docs/benchmarks-dpdk.md` explains every figure.
//!
//! `--ablation` (after the throughput figures, instead of the delay measurements): the full
//! path with one stage removed, isolated or resized at a time ([`ablation_rows`]), every row a
//! core of its own measured like the full path, in rounds so that a disturbance of a shared
//! machine hits one round rather than one row; per row the median ns/packet, its ratio to the
//! full path of the same round, packets per `tx_burst` and why bursts closed below
//! [`dataplane::port::MAX_BURST`] (the core's `CoreStats::bursts`). Its 16 pools need
//! `--memory-mb 2048` without hugepages. `docs/benchmarks.md` has a table and what each row
//! removes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use dataplane::channel::{Sender, SubmitError};
use dataplane::core::{BurstCloses, Command, Core, CoreConfig, CoreStats};
use dataplane::link::LinkConfig;
use dataplane::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats, MAX_BURST};
use dataplane::source::{Pattern, Source};
use dataplane::spec::{ChannelConfig, ChannelSpec, Endpoint};
use dataplane::stats::new_histogram;
use dataplane::time::Nanos;
use dataplane::time::{monotonic_now, read_tsc, MonotonicClock, TscMeter};
use dataplane::wire::{HeaderTemplate, RtHeader, FRAME_OVERHEAD};
use dataplane::wire::{ETH_LEN, IPV4_LEN, UDP_LEN};
use hdrhistogram::Histogram;
use rtchan::ports::dpdk::{
    DpdkPort, Eal, EthConfig, EthPort, Mbuf, Mempool, MempoolConfig, SchedConfig, SchedPort,
};
use rtchan::preemption::{MissLog, MissVerdict, PreemptionProbe};

/// Link rate the link scheduler paces at: 100 Gb/s, far above what one core sends, so
/// pacing never limits (its bookkeeping is still on the path).
const LINK_RATE_BPS: u64 = 100_000_000_000;
/// Messages each channel's ring holds (Bmax).
const BMAX: u32 = 8;
/// Refill the greedy channels every this many polls (a poll sends at most 64 packets, so the
/// 8,000 queued messages never run low).
const REFILL_EVERY: u64 = 4;
/// Warm-up before each measurement.
const WARMUP: Duration = Duration::from_millis(300);

#[derive(Parser, Debug)]
#[command(
    name = "dpdk-bench",
    about = "rtchan's dataplane vs QoS off, librte_sched and dpdk-testpmd on net_null"
)]
struct Args {
    /// Seconds per throughput measurement (full, fifo, rte_sched, testpmd).
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Seconds per delay measurement (50% and 90% load).
    #[arg(long, default_value_t = 8.0)]
    latency_duration: f64,
    /// Channels (pipes for rte_sched).
    #[arg(long, default_value_t = 1000)]
    channels: u32,
    /// Message size, bytes (one packet each: frame = message + 82 bytes of headers).
    #[arg(long, default_value_t = 64)]
    message_size: u32,
    /// CPU of the polling core (default: the last CPU this process may use).
    #[arg(long)]
    cpu: Option<usize>,
    /// CPU of the producer thread and testpmd's main lcore (default: another allowed CPU).
    #[arg(long)]
    aux_cpu: Option<usize>,
    /// Path of dpdk-testpmd (default: $RTCHAN_TESTPMD, then `dpdk-testpmd` on PATH, then
    /// target/testpmd/dpdk-testpmd as scripts/build-testpmd.sh writes it).
    #[arg(long)]
    testpmd: Option<PathBuf>,
    /// Loads of the delay measurements, percent of the core's capacity for periodic channels
    /// (measured by a calibration run first).
    #[arg(long, value_delimiter = ',', default_values_t = [50.0, 90.0])]
    loads: Vec<f64>,
    /// Skip the testpmd comparison.
    #[arg(long)]
    no_testpmd: bool,
    /// Only the single-thread throughput figures (full path, QoS off, librte_sched, testpmd):
    /// short runs for A/B comparisons on a shared machine.
    #[arg(long)]
    throughput_only: bool,
    /// After the throughput figures, the ablation: the full path with one stage removed,
    /// isolated or resized at a time, side by side (ns/packet and the ratio to the full path),
    /// with how its `tx_burst` calls closed. Then stops (no delay measurements). Needs
    /// `--memory-mb 2048` without `--huge` (a mempool per row).
    #[arg(long)]
    ablation: bool,
    /// Rounds of the ablation (every row once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Use hugepages (default: `--no-huge`, plain memory, like the tests and CI).
    #[arg(long)]
    huge: bool,
    /// EAL memory, MiB (with `--no-huge`).
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("dpdk-bench: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(args: &Args) -> Result<(), BoxError> {
    if args.channels == 0 || args.message_size == 0 {
        return Err("--channels and --message-size must be positive".into());
    }
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cpu = args
        .cpu
        .or_else(|| cpus.last().copied())
        .ok_or("cannot list the CPUs this process may use; pass --cpu")?;
    let aux = args
        .aux_cpu
        .or_else(|| cpus.iter().copied().find(|&c| c != cpu));
    let frame_len = FRAME_OVERHEAD + args.message_size as usize;
    let dur = Duration::from_secs_f64(args.duration);

    println!(
        "dpdk-bench: {} channels, {}-byte messages ({frame_len}-byte frames), net_null TX, \
         polling core on CPU {cpu}, producer/testpmd main lcore on CPU {}",
        args.channels,
        args.message_size,
        aux.map_or("-".to_string(), |c| c.to_string())
    );

    // (b) testpmd first, as a separate process, before this process takes its DPDK memory.
    let testpmd = if args.no_testpmd {
        Err("skipped (--no-testpmd)".to_string())
    } else {
        run_testpmd(args, cpu, aux, frame_len, dur)
    };

    let mut eal_args = vec![
        "-l".to_string(),
        cpu.to_string(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "--no-telemetry".into(),
        "--file-prefix".into(),
        "rtchan-bench".into(),
        "--log-level=lib.eal:error".into(),
    ];
    if !args.huge {
        eal_args.extend(["--no-huge".into(), "-m".into(), args.memory_mb.to_string()]);
    }
    for i in 0..5 + args.loads.len() + ABLATION_ROWS {
        // no-rx: net_null would otherwise "receive" 64-byte zero frames as fast as polled,
        // and the core would parse (and reject) 128 of them per iteration.
        eal_args.push(format!("--vdev=net_null{i},no-rx=1"));
    }
    let eal = Eal::init(&eal_args).map_err(|e| format!("EAL init {eal_args:?}: {e}"))?;
    let tsc_hz = tsc_hz();
    let core_cfg = CoreConfig {
        max_channels: args.channels,
        link: LinkConfig {
            link_rate_bps: LINK_RATE_BPS,
            // ≈ 5 µs of the link: room for a full burst between two polls.
            in_flight_limit: 64 * 1024,
            capacity: 4096,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };

    let full = greedy(&eal, 0, core_cfg, args, dur, tsc_hz)?;
    print_tput("full path (EDF, enforcement, pacing)", &full);
    let fifo = greedy(&eal, 1, core_cfg.fifo_baseline(), args, dur, tsc_hz)?;
    print_tput("QoS off (CoreConfig::fifo_baseline)", &fifo);
    let sched = rte_sched(&eal, 2, args, dur, tsc_hz)?;
    print_tput("librte_sched, one pipe per channel", &sched);
    match &testpmd {
        Ok(mpps) => println!("  {:<40} {mpps:>7.2} Mpps", "dpdk-testpmd txonly"),
        Err(why) => println!(
            "  {:<40}     n/a  unavailable: {why}",
            "dpdk-testpmd txonly"
        ),
    }
    let ratio =
        |other: Option<f64>| other.map_or("n/a".to_string(), |o| format!("{:.3}", full.mpps() / o));
    println!(
        "ratios: full/testpmd {}, full/fifo {}, full/rte_sched {}",
        ratio(testpmd.as_ref().ok().copied()),
        ratio(Some(fifo.mpps())),
        ratio(Some(sched.mpps()))
    );
    if args.ablation {
        return ablation(
            &eal,
            5 + args.loads.len() as u32,
            core_cfg,
            args,
            aux,
            dur,
            tsc_hz,
        );
    }
    if args.throughput_only {
        return Ok(());
    }

    let threaded = greedy_threaded(&eal, 3, core_cfg, args, aux, dur)?;
    print_tput("full path, producer thread on another CPU", &threaded);
    // Calibration: a light periodic load (a fifth of the greedy producer-thread figure); the
    // core's busy time per message gives its capacity for periodic channels.
    let cal_rate = threaded.mpps() * 1e6 * 0.2;
    let cal = latency(&eal, 4, core_cfg, args, cal_rate, aux, tsc_hz)?;
    let per_msg = cal.busy_secs / cal.sent.max(1) as f64;
    let capacity = 1.0 / per_msg;
    println!(
        "capacity for periodic channels: {:.2} Mpps ({:.0} ns of polling-core time per message, \
         from busy iterations at {:.2} Mpps offered)",
        capacity / 1e6,
        per_msg * 1e9,
        cal_rate / 1e6
    );
    println!(
        "delay added by the dataplane (submit -> release to tx_burst), {} periodic channels, \
         producer thread on CPU {}, load relative to that capacity:",
        args.channels,
        aux.map_or("(same CPU)".to_string(), |c| c.to_string()),
    );
    for (i, pct) in args.loads.iter().enumerate() {
        let (vdev, share) = (5 + i as u32, pct / 100.0);
        let rate = capacity * share;
        let l = latency(&eal, vdev, core_cfg, args, rate, aux, tsc_hz)?;
        let q = |p: f64| l.hist.value_at_quantile(p) as f64 / 1e3;
        println!(
            "  at {:>3.0}% ({:.2} Mpps offered, {:.2} Mpps submitted): p50 {:.1} µs, p99 {:.1} µs, \
             p99.9 {:.1} µs, max {:.1} µs over {} messages; {} refused (ring full), {} late \
             on the link; {} iterations over 500 µs took {:.0}% of the time; the producer was \
             off its CPU {} times for over 100 µs ({:.1}% of the time, each followed by a burst)",
            share * 100.0,
            rate / 1e6,
            l.submitted as f64 / l.secs / 1e6,
            q(0.5),
            q(0.99),
            q(0.999),
            l.hist.max() as f64 / 1e3,
            l.hist.len(),
            l.blocked,
            l.late,
            l.gaps,
            100.0 * l.gap_secs / l.secs,
            l.producer_gaps,
            100.0 * l.producer_gap_secs / l.secs
        );
        println!(
            "      late packets matched with the measured preemption of the polling and producer threads \
             (/proc schedstat): {} of {} late at tx_burst ({:.3}% of packets) had a wait of those \
             threads covering their lateness within their own life, {} did not (worst \
             unmatched {:.1} µs late); they waited {:.1} ms for a CPU \
             ({:.2}% of the run; the larger of the two per 1 ms sample)",
            l.verdict.excused,
            l.late_at_tx,
            100.0 * l.late_at_tx as f64 / l.sent.max(1) as f64,
            l.verdict.unexcused,
            l.verdict.worst_unexcused as f64 / 1e3,
            l.polling_waited as f64 / 1e6,
            100.0 * l.polling_waited as f64 / 1e9 / l.secs
        );
        let [a, b, c, d] = l.unmatched_by_lateness;
        println!(
            "      unmatched late packets by lateness: {a} under 10 µs, {b} 10-100 µs, {c} \
             0.1-1 ms, {d} over 1 ms; {} of them may have met a wait as long as their lateness \
             (a wait placed where it overlaps most: not a match), the other {} cannot have \
             (queueing in the core: behind a burst, or its own work); {} late packets were not logged (log full)",
            l.unmatched_possibly_preempted,
            (a + b + c + d).saturating_sub(l.unmatched_possibly_preempted),
            l.verdict.unexcused.saturating_sub(a + b + c + d)
        );
        println!(
            "      late packets came in {} runs (late packets submitted under 1 ms apart); the \
             largest: {} packets submitted over {:.2} ms; {} were submitted in a burst after a \
             producer gap (the messages that fell due while it was off its CPU, at once); {} \
             lived through a poll over 500 µs (the loop's own view); the hypervisor took {} of \
             the CPUs' time meanwhile (/proc/stat steal, 10 ms ticks), which no thread's \
             schedstat shows",
            l.late_runs.0,
            l.late_runs.1,
            l.late_runs.2 as f64 / 1e6,
            l.late_in_burst,
            l.late_in_long_iteration,
            l.steal
                .map_or("(unknown)".into(), |n| format!("{:.0} ms", n as f64 / 1e6))
        );
        // The calibration is an estimate (a busier core batches more per iteration): if a
        // load still overloaded the core, say so rather than report queueing as added delay.
        if l.late * 2 > l.hist.len() {
            println!(
                "      overloaded: over half the messages left after their link deadline; the \
                 delays above are queueing in an overloaded core, not added delay"
            );
        }
    }
    Ok(())
}

/// TSC ticks per second, measured against CLOCK_MONOTONIC over 100 ms.
fn tsc_hz() -> f64 {
    let (c0, t0) = (read_tsc(), monotonic_now());
    std::thread::sleep(Duration::from_millis(100));
    let (c1, t1) = (read_tsc(), monotonic_now());
    (c1 - c0) as f64 * 1e9 / (t1 - t0) as f64
}

fn open_port(eal: &Eal, vdev: u32) -> Result<DpdkPort, BoxError> {
    let pool = Mempool::create(
        eal,
        &MempoolConfig {
            cache_size: 256,
            ..MempoolConfig::new(format!("bench_pool{vdev}"), 16383)
        },
    )?;
    let id = eal.port_by_name(&format!("net_null{vdev}"))?;
    let eth = EthPort::configure(eal, id, &EthConfig::default(), &pool)?;
    Ok(DpdkPort::new(eth, pool)?)
}

/// A port that counts `tx_burst` calls (to report packets per burst), and for the ablation
/// can allocate per packet or stand in for the driver.
struct Counted {
    inner: DpdkPort,
    bursts: u64,
    /// `alloc_bulk` as one `rte_pktmbuf_alloc` per buffer (the trait's default), not one
    /// `rte_pktmbuf_alloc_bulk`.
    per_packet_alloc: bool,
    /// `tx_burst` frees the batch to the pool (`rte_pktmbuf_free_bulk`) instead of calling
    /// `rte_eth_tx_burst` (net_null's transmit frees them too, one by one).
    no_driver: bool,
    /// For the delay runs: each packet handed to `tx_burst` is checked against its link
    /// deadline `ℓ + d` (the header carries `submit_ts` and `ℓ + D`; every bench channel has
    /// the same `d` and `D`) and the late ones are logged with their times, so each can be
    /// matched with the polling and producer threads' measured preemption. One clock read per
    /// burst; the log is allocated before the run.
    late: Option<MissLog>,
}

impl Counted {
    fn new(inner: DpdkPort) -> Self {
        Self {
            inner,
            bursts: 0,
            per_packet_alloc: false,
            no_driver: false,
            late: None,
        }
    }

    /// The late packets logged (empty when not watching).
    fn late_log(&self) -> &MissLog {
        static NONE: MissLog = MissLog {
            misses: Vec::new(),
            unrecorded: 0,
        };
        self.late.as_ref().unwrap_or(&NONE)
    }
}

impl Port for Counted {
    type Buf = Mbuf;
    fn capabilities(&self) -> PortCapabilities {
        self.inner.capabilities()
    }
    #[inline]
    fn alloc_tx(&mut self) -> Option<Mbuf> {
        self.inner.alloc_tx()
    }
    #[inline]
    fn alloc_bulk(&mut self, batch: &mut Batch<Mbuf>, n: usize) -> usize {
        if self.per_packet_alloc {
            let want = n.min(batch.remaining_capacity());
            let mut got = 0;
            while got < want {
                let Some(b) = self.inner.alloc_tx() else {
                    break;
                };
                batch.push(b);
                got += 1;
            }
            return got;
        }
        self.inner.alloc_bulk(batch, n)
    }
    #[inline]
    fn free_bulk(&mut self, batch: &mut Batch<Mbuf>) {
        self.inner.free_bulk(batch)
    }
    #[inline]
    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.bursts += 1;
        if self.no_driver {
            let n = batch.len();
            self.inner.free_bulk(batch);
            return Ok(n);
        }
        let Some(log) = self.late.as_mut() else {
            return self.inner.tx_burst(queue, batch);
        };
        let mut times = [(0, 0); MAX_BURST];
        for (t, m) in times.iter_mut().zip(batch.iter()) {
            if let Some(b) = m.data().get(ETH_LEN + IPV4_LEN + UDP_LEN..) {
                if let Ok(h) = RtHeader::read(b) {
                    *t = (h.submit_ts, h.deadline.saturating_sub(LINK_BEFORE_E2E));
                }
            }
        }
        let sent = self.inner.tx_burst(queue, batch)?;
        let now = monotonic_now();
        for &(submit, deadline) in &times[..sent] {
            log.record(submit, deadline, now);
        }
        Ok(sent)
    }
    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Mbuf>) -> Result<usize, PortError> {
        self.inner.rx_burst(queue, batch)
    }
    fn stats(&self) -> PortStats {
        self.inner.stats()
    }
}

/// Capacity of the delay runs' late-packet log: far above the late packets of any run that
/// is not overloaded (those past it are counted, and unexcused).
const LATE_LOG: usize = 1 << 20;

/// How much earlier than the end-to-end deadline in the header a packet's link deadline is.
const LINK_BEFORE_E2E: Nanos = BENCH_END_TO_END - BENCH_LINK_DEADLINE;

/// The bench channels' link deadline `d` (200 µs).
const BENCH_LINK_DEADLINE: Nanos = 200_000;
/// The bench channels' end-to-end deadline `D` (1 ms).
const BENCH_END_TO_END: Nanos = 1_000_000;

/// The channels' spec: Imin of 1 µs (1,000 channels may send 10^9 messages/s in total, so
/// enforcement never holds a greedy channel back: every message is current when taken),
/// deadlines of 100 µs (CPU), 200 µs (link), 1 ms (end to end).
fn bench_channel(id: u32, mmax: u32) -> ChannelConfig {
    let spec = ChannelSpec {
        mmax,
        imin: 1_000,
        bmax: BMAX,
        cpu_deadline: 100_000,
        link_deadline: BENCH_LINK_DEADLINE,
        end_to_end_deadline: BENCH_END_TO_END,
    };
    ChannelConfig {
        endpoint: endpoint(id),
        ..ChannelConfig::real_time(id, spec)
    }
}

fn endpoint(id: u32) -> Endpoint {
    Endpoint {
        src_port: 10_000 + (id % 50_000) as u16,
        ..Endpoint::default()
    }
}

fn message(id: u32, len: u32) -> Vec<u8> {
    (0..len).map(|i| (i ^ id) as u8).collect()
}

/// A throughput measurement.
struct Tput {
    packets: u64,
    busy_secs: f64,
    wall_secs: f64,
    bursts: u64,
    note: String,
    /// Handler runs per poll (0 for librte_sched), and runs cut short without an mbuf.
    runs_per_poll: f64,
    alloc_failures: u64,
}

impl Tput {
    fn mpps(&self) -> f64 {
        self.packets as f64 / self.busy_secs / 1e6
    }
}

fn print_tput(name: &str, t: &Tput) {
    println!(
        "  {name:<40} {:>7.2} Mpps  ({:.0} ns/packet, {:.1} packets per tx_burst, {:.0}% of \
         {:.1} s wall in the measured loop){}",
        t.mpps(),
        1e9 / (t.mpps() * 1e6),
        t.packets as f64 / t.bursts.max(1) as f64,
        100.0 * t.busy_secs / t.wall_secs,
        t.wall_secs,
        t.note
    );
}

fn refill(senders: &mut [Sender], msgs: &[Vec<u8>]) {
    for (s, m) in senders.iter_mut().zip(msgs) {
        while s.shared().queued() < BMAX as usize {
            match s.submit(m) {
                Ok(_) => {}
                Err(SubmitError::WouldBlock) => break,
                Err(e) => panic!("submit: {e}"),
            }
        }
    }
}

/// The dataplane with `args.channels` greedy channels; only time inside `Core::poll` counts.
fn greedy(
    eal: &Eal,
    vdev: u32,
    cfg: CoreConfig,
    args: &Args,
    dur: Duration,
    tsc_hz: f64,
) -> Result<Tput, BoxError> {
    greedy_with(eal, vdev, cfg, args, dur, tsc_hz, Knobs::default()).map(|(t, _)| t)
}

/// What an ablation row changes besides the core's configuration.
#[derive(Clone, Copy, Debug, Default)]
struct Knobs {
    /// See [`Counted::per_packet_alloc`].
    per_packet_alloc: bool,
    /// See [`Counted::no_driver`].
    no_driver: bool,
    /// No delay samples ([`Core::set_delay_samples`]).
    no_delay_samples: bool,
    /// The sample rings are folded into the histograms between polls, outside the timed
    /// loop (as a running core's companion thread does), not at the end of each poll.
    fold_untimed: bool,
    /// The sample rings are folded by a companion thread on the other CPU every
    /// `dataplane::stats::FOLD_INTERVAL`, as a `RunningCore`'s is (the daemon's cores).
    fold_thread: Option<usize>,
    /// Channels, if not `--channels` (the state a poll touches: 10 channels' rings, handlers
    /// and histograms stay in cache).
    channels: Option<u32>,
}

/// [`greedy`] with `knobs`; also returns how the bursts of the measurement closed.
fn greedy_with(
    eal: &Eal,
    vdev: u32,
    cfg: CoreConfig,
    args: &Args,
    dur: Duration,
    tsc_hz: f64,
    knobs: Knobs,
) -> Result<(Tput, BurstCloses), BoxError> {
    Ok(Greedy::new(eal, vdev, cfg, args, knobs)?.measure(dur, tsc_hz))
}

/// A core with greedy channels that can be measured several times (the ablation's rounds
/// keep every row's core, since a closed `net_null` port cannot be opened again).
struct Greedy {
    core: Core<Counted>,
    senders: Vec<Sender>,
    msgs: Vec<Vec<u8>>,
    knobs: Knobs,
    polls: u64,
}

impl Greedy {
    fn new(
        eal: &Eal,
        vdev: u32,
        cfg: CoreConfig,
        args: &Args,
        knobs: Knobs,
    ) -> Result<Self, BoxError> {
        let (mut core, senders, msgs) = greedy_core(eal, vdev, cfg, args, knobs)?;
        core.set_delay_samples(!knobs.no_delay_samples);
        core.set_fold_on_poll(!knobs.fold_untimed && knobs.fold_thread.is_none());
        Ok(Self {
            core,
            senders,
            msgs,
            knobs,
            polls: 0,
        })
    }

    /// One poll, and the refill every [`REFILL_EVERY`] polls; returns the cycles inside
    /// `Core::poll`.
    #[inline]
    fn step(&mut self, clock: &MonotonicClock, meter: &mut TscMeter) -> u64 {
        let c0 = read_tsc();
        self.core.poll(clock, meter);
        let busy = read_tsc() - c0;
        self.polls += 1;
        if self.knobs.fold_untimed {
            self.core.sink().fold(false);
        }
        // Few channels hold fewer messages than a poll sends: refill them after every poll.
        if self.polls % REFILL_EVERY == 0 || self.knobs.channels.is_some() {
            refill(&mut self.senders, &self.msgs);
        }
        busy
    }

    /// Warm-up, then `dur` of polling; only time inside `Core::poll` counts.
    fn measure(&mut self, dur: Duration, tsc_hz: f64) -> (Tput, BurstCloses) {
        let clock = MonotonicClock;
        let mut meter = TscMeter;
        refill(&mut self.senders, &self.msgs);
        let warm_end = Instant::now() + WARMUP;
        while Instant::now() < warm_end {
            self.step(&clock, &mut meter);
        }
        let core = &self.core;
        let (p0, b0, s0) = (core.stats().tx_packets, core.port().bursts, core.stats());
        let stop = &AtomicBool::new(false);
        let sink = &self.core.sink().clone();
        let (busy, wall) = std::thread::scope(|scope| {
            if let Some(cpu) = self.knobs.fold_thread {
                scope.spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    while !stop.load(Ordering::Relaxed) {
                        sink.fold(false);
                        std::thread::sleep(dataplane::stats::FOLD_INTERVAL);
                    }
                });
            }
            let start = Instant::now();
            let mut busy = 0u64;
            while start.elapsed() < dur {
                busy += self.step(&clock, &mut meter);
            }
            let wall = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            (busy, wall)
        });
        let closes = closes_since(&s0.bursts, &self.core.stats().bursts);
        (
            tput(&self.core, (p0, b0, &s0), busy as f64 / tsc_hz, wall),
            closes,
        )
    }
}

/// A core on `vdev` with `args.channels` greedy channels opened, and each channel's message.
#[allow(clippy::type_complexity)]
fn greedy_core(
    eal: &Eal,
    vdev: u32,
    cfg: CoreConfig,
    args: &Args,
    knobs: Knobs,
) -> Result<(Core<Counted>, Vec<Sender>, Vec<Vec<u8>>), BoxError> {
    let port = Counted {
        per_packet_alloc: knobs.per_packet_alloc,
        no_driver: knobs.no_driver,
        ..Counted::new(open_port(eal, vdev)?)
    };
    let mut core = Core::new(cfg, port)?;
    let channels = knobs.channels.unwrap_or(args.channels);
    let mut senders = Vec::with_capacity(channels as usize);
    for id in 0..channels {
        senders.push(core.open(bench_channel(id, args.message_size))?);
    }
    let msgs = (0..channels)
        .map(|id| message(id, args.message_size))
        .collect();
    Ok((core, senders, msgs))
}

/// The throughput since `start` (packets, bursts and stats when measuring began).
fn tput(core: &Core<Counted>, start: (u64, u64, &CoreStats), busy: f64, wall: f64) -> Tput {
    let (p0, b0, s0) = start;
    let s1 = core.stats();
    let link = core.link_stats();
    Tput {
        packets: s1.tx_packets - p0,
        busy_secs: busy,
        wall_secs: wall,
        bursts: core.port().bursts - b0,
        note: core_note(s0, &s1, link.late, link.released),
        runs_per_poll: (s1.runs - s0.runs) as f64 / (s1.iterations - s0.iterations).max(1) as f64,
        alloc_failures: s1.alloc_failures - s0.alloc_failures,
    }
}

/// The dataplane with `args.channels` greedy channels fed by a producer thread on `aux`
/// (every message crosses CPUs, as with a real application); the core's packets over wall
/// time. This is the load the delay measurements are relative to.
fn greedy_threaded(
    eal: &Eal,
    vdev: u32,
    cfg: CoreConfig,
    args: &Args,
    aux: Option<usize>,
    dur: Duration,
) -> Result<Tput, BoxError> {
    let (mut core, mut senders, msgs) = greedy_core(eal, vdev, cfg, args, Knobs::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || {
                if let Some(c) = aux {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                while !stop.load(Ordering::Relaxed) {
                    refill(&mut senders, &msgs);
                }
                senders
            })?
    };
    let clock = MonotonicClock;
    let mut meter = TscMeter;
    let warm_end = Instant::now() + WARMUP;
    while Instant::now() < warm_end {
        core.poll(&clock, &mut meter);
    }
    let (p0, b0, s0) = (core.stats().tx_packets, core.port().bursts, core.stats());
    let start = Instant::now();
    while start.elapsed() < dur {
        core.poll(&clock, &mut meter);
    }
    let wall = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _senders = producer.join().expect("producer thread");
    Ok(tput(&core, (p0, b0, &s0), wall, wall))
}

fn core_note(s0: &CoreStats, s1: &CoreStats, late: u64, released: u64) -> String {
    let runs = s1.runs - s0.runs;
    let mut note = format!(
        "; {:.1} runs/poll",
        runs as f64 / (s1.iterations - s0.iterations).max(1) as f64
    );
    if s1.alloc_failures > s0.alloc_failures {
        note += &format!(
            "; {} mbuf alloc failures",
            s1.alloc_failures - s0.alloc_failures
        );
    }
    if late > 0 {
        note += &format!(
            "; {:.0}% of packets past their link deadline (overload)",
            100.0 * late as f64 / released.max(1) as f64
        );
    }
    note
}

/// Rows of the ablation (each opens its own `net_null` vdev).
const ABLATION_ROWS: usize = 16;

/// The ablation's rows: a name, what the row removes or changes against the full path, the
/// core's configuration and the knobs.
fn ablation_rows(
    full: CoreConfig,
    aux: Option<usize>,
) -> [(&'static str, &'static str, CoreConfig, Knobs); ABLATION_ROWS] {
    let none = Knobs::default();
    let window = |ns| CoreConfig {
        tx_window: ns,
        ..full
    };
    let mut cpu_fifo = full;
    cpu_fifo.sched.fifo = true;
    let mut link_fifo = full;
    link_fifo.link.fifo = true;
    let lean = Knobs {
        no_delay_samples: true,
        fold_untimed: true,
        ..none
    };
    [
        ("full path", "nothing", full, none),
        ("CPU sched FIFO", "EDF pick and enforcement on the CPU (sched.fifo)", cpu_fifo, none),
        ("link sched FIFO", "EDF order on the link (link.fifo)", link_fifo, none),
        ("QoS off", "both EDF schedulers and enforcement (fifo_baseline)", full.fifo_baseline(), none),
        (
            "no delay samples",
            "the delay sample per message (ring push) and its fold",
            full,
            Knobs {
                no_delay_samples: true,
                ..none
            },
        ),
        (
            "fold untimed",
            "the fold of the sample ring into HdrHistograms at each poll's end (done between polls, untimed)",
            full,
            Knobs {
                fold_untimed: true,
                ..none
            },
        ),
        (
            "per-packet alloc",
            "(adds) one rte_pktmbuf_alloc per packet instead of one alloc_bulk per 32",
            full,
            Knobs {
                per_packet_alloc: true,
                ..none
            },
        ),
        (
            "no driver",
            "rte_eth_tx_burst into net_null (the batch is freed in bulk instead)",
            full,
            Knobs {
                no_driver: true,
                ..none
            },
        ),
        (
            "fold thread",
            "the fold at each poll's end (a companion thread on the other CPU folds every 1 ms, as the daemon's cores do)",
            full,
            Knobs {
                fold_thread: aux.or(Some(0)),
                ..none
            },
        ),
        ("tx_window 1 us", "(changes) the TX window 4 -> 1 us", window(1_000), none),
        ("tx_window 8 us", "(changes) the TX window 4 -> 8 us", window(8_000), none),
        ("tx_window 16 us", "(changes) the TX window 4 -> 16 us", window(16_000), none),
        ("tx_window 64 us", "(changes) the TX window 4 -> 64 us", window(64_000), none),
        (
            "lean",
            "QoS, delay samples and fold at once, TX window 64 us: what is left",
            CoreConfig {
                tx_window: 64_000,
                ..full.fifo_baseline()
            },
            lean,
        ),
        (
            "10 channels",
            "(changes) 1,000 channels -> 10: their state stays in cache",
            full,
            Knobs {
                channels: Some(10),
                ..none
            },
        ),
        ("full path again", "nothing (drift over the run)", full, none),
    ]
}

/// The bursts counted in `b` since `a`.
fn closes_since(a: &BurstCloses, b: &BurstCloses) -> BurstCloses {
    BurstCloses {
        full: b.full - a.full,
        window: b.window - a.window,
        iteration_end: b.iteration_end - a.iteration_end,
        in_flight_limit: b.in_flight_limit - a.in_flight_limit,
        pacing: b.pacing - a.pacing,
        held_early: b.held_early - a.held_early,
        other: b.other - a.other,
    }
}

/// The ablation: every row measured the same way as the full path, in `args.rounds` rounds
/// (each round measures every row once, so a disturbance of the shared machine hits one
/// round's rows, not one row's rounds; round r starts at row r, so no row always runs first
/// or last). Per row: the median ns/packet, the median of its
/// ratio to the full path's figure *of the same round*, and how the bursts closed (percent of
/// `tx_burst` calls over all rounds: full, or short because the window expired, the iteration
/// ended, the in-flight limit or pacing stopped the release, or only early packets were left).
fn ablation(
    eal: &Eal,
    first_vdev: u32,
    full: CoreConfig,
    args: &Args,
    aux: Option<usize>,
    dur: Duration,
    tsc_hz: f64,
) -> Result<(), BoxError> {
    let rows = ablation_rows(full, aux);
    let mut cores = Vec::with_capacity(rows.len());
    for (i, (_, _, cfg, knobs)) in rows.iter().enumerate() {
        cores.push(Greedy::new(eal, first_vdev + i as u32, *cfg, args, *knobs)?);
    }
    let rounds = args.rounds.max(1);
    // Per row and round: ns/packet; per row: totals over the rounds.
    let mut ns = vec![Vec::with_capacity(rounds); rows.len()];
    let mut closes = vec![BurstCloses::default(); rows.len()];
    let (mut packets, mut bursts, mut runs, mut failures) = (
        vec![0u64; rows.len()],
        vec![0u64; rows.len()],
        vec![0f64; rows.len()],
        vec![0u64; rows.len()],
    );
    let n = cores.len();
    for round in 0..rounds {
        // Each round starts one row later: a row's place in the round (what ran just before
        // it, how long the run has gone) moves, rather than biasing one row every round.
        for i in (0..n).map(|j| (j + round) % n) {
            let (t, c) = cores[i].measure(dur, tsc_hz);
            ns[i].push(1e3 / t.mpps());
            closes[i] = add_closes(&closes[i], &c);
            packets[i] += t.packets;
            bursts[i] += t.bursts;
            runs[i] += t.runs_per_poll / rounds as f64;
            failures[i] += t.alloc_failures;
        }
    }
    println!(
        "ablation ({rounds} rounds of {:.1} s per row; ns/pk = median ns/packet, min = the \
         least; ratio = median over rounds of row ns/packet / full path ns/packet in the same \
         round; bursts closed, % of tx_burst calls: full = {} packets, else short because: \
         win = TX window expired, end = iteration end (nothing to run or link scheduler full), \
         infl = in-flight limit, pace = link pacing, held = only early packets left, \
         oth = other):",
        dur.as_secs_f64(),
        dataplane::port::MAX_BURST
    );
    println!(
        "  {:<17} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} | removes",
        "row", "ns/pk", "min", "ratio", "pk/tx", "runs/p", "full", "win", "end", "infl", "pace",
        "held", "oth"
    );
    for (i, (name, what, _, _)) in rows.iter().enumerate() {
        let ratios: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(r, f)| r / f).collect();
        let total = bursts[i].max(1) as f64;
        let pct = |n: u64| 100.0 * n as f64 / total;
        let c = &closes[i];
        println!(
            "  {name:<17} {:>6.0} {:>6.0} {:>6.3} {:>6.1} {:>6.1} | {:>5.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1} | {what}{}",
            median(&ns[i]),
            ns[i].iter().copied().fold(f64::INFINITY, f64::min),
            median(&ratios),
            packets[i] as f64 / total,
            runs[i],
            pct(c.full),
            pct(c.window),
            pct(c.iteration_end),
            pct(c.in_flight_limit),
            pct(c.pacing),
            pct(c.held_early),
            pct(c.other),
            if failures[i] > 0 {
                format!(" [{} mbuf alloc failures]", failures[i])
            } else {
                String::new()
            },
        );
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn add_closes(a: &BurstCloses, b: &BurstCloses) -> BurstCloses {
    BurstCloses {
        full: a.full + b.full,
        window: a.window + b.window,
        iteration_end: a.iteration_end + b.iteration_end,
        in_flight_limit: a.in_flight_limit + b.in_flight_limit,
        pacing: a.pacing + b.pacing,
        held_early: a.held_early + b.held_early,
        other: a.other + b.other,
    }
}

/// The same frames through librte_sched: one pipe per channel, traffic class 0.
fn rte_sched(
    eal: &Eal,
    vdev: u32,
    args: &Args,
    dur: Duration,
    tsc_hz: f64,
) -> Result<Tput, BoxError> {
    let mut port = open_port(eal, vdev)?;
    let pool = port.tx_pool().clone();
    let n = args.channels;
    let mut sched = SchedPort::new(eal, &SchedConfig::new("bench_sched", n, LINK_RATE_BPS / 8))?;
    let templates: Vec<HeaderTemplate> = (0..n)
        .map(|id| HeaderTemplate::new(&endpoint(id)))
        .collect();
    let msgs: Vec<Vec<u8>> = (0..n).map(|id| message(id, args.message_size)).collect();
    let mut seqs = vec![0u32; n as usize];
    let mut next_pipe = 0u32;
    let mut ip_id = 0u16;
    let mut dropped = 0u64;

    // Builds and enqueues one burst of 32 packets for the next 32 pipes, round-robin.
    let mut produce = |sched: &mut SchedPort, dropped: &mut u64| {
        let mut batch: Batch<Mbuf> = Batch::new();
        if !pool.alloc_bulk(&mut batch, dataplane::port::MAX_BURST) {
            return;
        }
        let now = monotonic_now();
        for m in batch.iter_mut() {
            let p = next_pipe as usize;
            let msg = &msgs[p];
            let h = RtHeader {
                flags: 0,
                frag_index: 0,
                frag_count: 1,
                frag_len: msg.len() as u16,
                channel: next_pipe,
                msg_seq: seqs[p],
                msg_len: msg.len() as u32,
                frag_offset: 0,
                submit_ts: now,
                deadline: now + 1_000_000,
            };
            let len = templates[p].write_frame(m.buf_mut(), ip_id, &h, msg);
            m.set_len(len);
            sched.classify(m, next_pipe);
            seqs[p] = seqs[p].wrapping_add(1);
            ip_id = ip_id.wrapping_add(1);
            next_pipe = (next_pipe + 1) % n;
        }
        let offered = batch.len();
        *dropped += (offered - sched.enqueue(&mut batch)) as u64;
    };
    // Prefill: Bmax packets per pipe, like the channels' full rings.
    for _ in 0..(n * BMAX).div_ceil(32) {
        produce(&mut sched, &mut dropped);
    }
    let mut step =
        |sched: &mut SchedPort, port: &mut DpdkPort, dropped: &mut u64| -> (usize, u64) {
            produce(sched, dropped);
            let mut out: Batch<Mbuf> = Batch::new();
            let got = sched.dequeue(&mut out);
            let mut bursts = 0;
            while !out.is_empty() {
                port.tx_burst(0, &mut out).expect("tx_burst");
                bursts += 1;
            }
            (got, bursts)
        };
    let warm_end = Instant::now() + WARMUP;
    while Instant::now() < warm_end {
        step(&mut sched, &mut port, &mut dropped);
    }
    let dropped0 = dropped;
    let (mut packets, mut bursts, mut busy) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < dur {
        let c0 = read_tsc();
        let (got, b) = step(&mut sched, &mut port, &mut dropped);
        busy += read_tsc() - c0;
        packets += got as u64;
        bursts += b;
    }
    let wall = start.elapsed().as_secs_f64();
    let note = if dropped > dropped0 {
        format!("; {} tail drops", dropped - dropped0)
    } else {
        String::new()
    };
    drop(sched); // frees the mbufs still queued, before the pool's last handle goes
    Ok(Tput {
        packets,
        busy_secs: busy as f64 / tsc_hz,
        wall_secs: wall,
        bursts,
        note,
        runs_per_poll: 0.0,
        alloc_failures: 0,
    })
}

/// A delay measurement.
struct Latency {
    hist: Histogram<u64>,
    submitted: u64,
    blocked: u64,
    late: u64,
    secs: f64,
    /// Iterations longer than 500 µs, and their total time.
    gaps: u64,
    gap_secs: f64,
    /// The producer's gaps between loop turns longer than [`PRODUCER_GAP_NS`], and their total
    /// time: after each, the messages that fell due meanwhile are submitted in one burst.
    producer_gaps: u64,
    producer_gap_secs: f64,
    /// Time in polls that did work, and packets the core sent, while the producer submitted.
    busy_secs: f64,
    sent: u64,
    /// Packets past their link deadline when handed to `tx_burst` ([`Counted::late`]).
    late_at_tx: u64,
    /// Those matched (excused) or not with the polling and producer threads' preemption.
    verdict: MissVerdict,
    /// The unmatched late packets by lateness, from each [`LATENESS_BUCKETS`] bound to the next.
    unmatched_by_lateness: [u64; LATENESS_BUCKETS.len()],
    /// Of the unmatched, those a wait may have covered (placed where it overlaps most).
    unmatched_possibly_preempted: u64,
    /// Runs of late packets (submitted less than 1 ms apart): how many, and the largest run's
    /// packets and span of submit times, ns.
    late_runs: (u64, u64, Nanos),
    /// Late packets whose life overlapped a poll over 500 µs (the loop's own view).
    late_in_long_iteration: u64,
    /// Late packets submitted in a burst after a producer gap over [`PRODUCER_GAP_NS`].
    late_in_burst: u64,
    /// CPU time the hypervisor took from this VM's CPUs during the run (`/proc/stat` steal),
    /// ns; `None` where it cannot be read.
    steal: Option<Nanos>,
    /// The polling and producer threads' run-queue wait (the larger per sample), ns.
    polling_waited: Nanos,
}

/// Long polls recorded per delay run, at most (allocated before the run).
const LONG_ITERATION_LOG: usize = 1 << 16;

/// The steal time of all CPUs so far (`/proc/stat`, the 8th value of the `cpu` line, in
/// USER_HZ ticks: 10 ms on Linux), ns.
fn steal_ns() -> Option<Nanos> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Nanos = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks * 10_000_000)
}

/// Lower bounds of the lateness classes the unmatched late packets are counted in, ns.
const LATENESS_BUCKETS: [Nanos; 4] = [0, 10_000, 100_000, 1_000_000];

/// A producer loop turn longer than this (100 µs: a thousand times a turn's cost) means the
/// producer thread was off its CPU.
const PRODUCER_GAP_NS: u64 = 100_000;

/// The dataplane with periodic channels fed by a producer thread at `rate` messages/s.
fn latency(
    eal: &Eal,
    vdev: u32,
    cfg: CoreConfig,
    args: &Args,
    rate: f64,
    aux: Option<usize>,
    tsc_hz: f64,
) -> Result<Latency, BoxError> {
    let port = Counted {
        late: Some(MissLog::with_capacity(LATE_LOG)),
        ..Counted::new(open_port(eal, vdev)?)
    };
    let mut core = Core::new(cfg, port)?;
    // The polling thread's run-queue wait, read by a probe thread from schedstat: what may
    // explain a late packet, measured apart from the dataplane.
    // The producer's too: a message it stamped and was then preempted before publishing
    // reaches the core already late.
    let probe = PreemptionProbe::start()?;
    probe.watch_current_thread()?;
    let watcher = probe.watcher();
    let mut senders = Vec::with_capacity(args.channels as usize);
    for id in 0..args.channels {
        senders.push(core.open(bench_channel(id, args.message_size))?);
    }
    let msgs: Vec<Vec<u8>> = (0..args.channels)
        .map(|id| message(id, args.message_size))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let interval = (1e9 / rate).round().max(1.0) as u64;
    let producer = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || {
                if let Some(c) = aux {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                if let Err(e) = watcher.watch_current_thread() {
                    eprintln!("dpdk-bench: the producer's preemption is not measured: {e}");
                }
                let start = monotonic_now();
                let mut src = Source::new(Pattern::Periodic { interval }, start, 0);
                let (mut i, mut submitted, mut blocked) = (0usize, 0u64, 0u64);
                let (mut last, mut gaps, mut gap_ns) = (start, 0u64, 0u64);
                // The bursts that follow the gaps: [first, last submit] of each.
                let mut bursts: Vec<(Nanos, Nanos)> = Vec::with_capacity(LONG_ITERATION_LOG);
                while !stop.load(Ordering::Relaxed) {
                    let now = monotonic_now();
                    let after_gap = now - last > PRODUCER_GAP_NS;
                    if after_gap {
                        gaps += 1;
                        gap_ns += now - last;
                    }
                    last = now;
                    let due = src.due(now);
                    if after_gap && due > 1 && bursts.len() < bursts.capacity() {
                        bursts.push((now, Nanos::MAX)); // closed below
                    }
                    for _ in 0..due {
                        match senders[i].submit(&msgs[i]) {
                            Ok(_) => submitted += 1,
                            Err(SubmitError::WouldBlock) => blocked += 1,
                            Err(e) => panic!("submit: {e}"),
                        }
                        i = (i + 1) % senders.len();
                    }
                    if let Some(b) = bursts.last_mut().filter(|b| b.1 == Nanos::MAX) {
                        b.1 = monotonic_now();
                    }
                    std::hint::spin_loop();
                }
                let secs = (monotonic_now() - start) as f64 / 1e9;
                (
                    senders,
                    submitted,
                    blocked,
                    secs,
                    (gaps, gap_ns as f64 / 1e9),
                    bursts,
                )
            })?
    };
    let clock = MonotonicClock;
    let mut meter = TscMeter;
    let end = Instant::now() + Duration::from_secs_f64(args.latency_duration);
    // Gaps between polls longer than 500 µs: the polling thread was off its CPU (a full
    // iteration of 64 runs takes tens of µs). On a shared machine this dominates the tail.
    let gap_limit = (tsc_hz * 500e-6) as u64;
    let (mut gaps, mut gap_cycles, mut busy_cycles) = (0u64, 0u64, 0u64);
    // Where those long iterations lay (CLOCK_MONOTONIC), to tell which late packets lived
    // through one: the loop's own view, a diagnosis and never an excuse.
    let mut long_iterations: Vec<(Nanos, Nanos)> = Vec::with_capacity(LONG_ITERATION_LOG);
    let steal0 = steal_ns();
    let sent0 = core.stats().tx_packets;
    let mut last = read_tsc();
    while Instant::now() < end {
        let c0 = read_tsc();
        let progress = core.poll(&clock, &mut meter);
        let t = read_tsc();
        if !progress.is_idle() {
            busy_cycles += t - c0;
        }
        if t - last > gap_limit {
            gaps += 1;
            gap_cycles += t - last;
            if long_iterations.len() < long_iterations.capacity() {
                let now = monotonic_now();
                let took = ((t - last) as f64 / tsc_hz * 1e9) as Nanos;
                long_iterations.push((now.saturating_sub(took), now));
            }
        }
        last = t;
    }
    let steal = steal_ns().zip(steal0).map(|(b, a)| b.saturating_sub(a));
    let sent = core.stats().tx_packets - sent0;
    stop.store(true, Ordering::Relaxed);
    let (senders, submitted, blocked, secs, (producer_gaps, producer_gap_secs), bursts) =
        producer.join().expect("producer thread");
    // Drain what is queued, then close every channel: closing publishes its delay histogram.
    let give_up = Instant::now() + Duration::from_secs(5);
    while (senders.iter().any(|s| s.shared().queued() > 0) || core.link_backlog() > 0)
        && Instant::now() < give_up
    {
        core.poll(&clock, &mut meter);
    }
    let late = core.link_stats().late;
    let preemptions = probe.finish();
    let verdict = preemptions.verdict(core.port().late_log());
    // How late the unmatched ones were: a few µs past `d` is queueing near saturation, a
    // millisecond is a stall.
    // And whether a wait may have covered them at all (each wait placed where it overlaps
    // most, at the probe's 1 ms resolution): if not, the cause is not these threads'
    // preemption in the packet's life but queueing in the core.
    // Late packets come in runs: one stall delays every message queued behind it. A run ends
    // where the next late packet was submitted more than a millisecond later.
    let mut late_runs = (0u64, 0u64, 0 as Nanos); // runs, largest run's packets, its span
    let mut run = (0u64, 0 as Nanos, 0 as Nanos); // packets, first and last submit
    for m in &core.port().late_log().misses {
        if run.0 > 0 && m.submit > run.2 + 1_000_000 {
            late_runs.0 += 1;
            if run.0 > late_runs.1 {
                late_runs = (late_runs.0, run.0, run.2 - run.1);
            }
            run.0 = 0;
        }
        if run.0 == 0 {
            run.1 = m.submit;
        }
        run = (run.0 + 1, run.1, m.submit.max(run.2));
    }
    if run.0 > 0 {
        late_runs.0 += 1;
        if run.0 > late_runs.1 {
            late_runs = (late_runs.0, run.0, run.2 - run.1);
        }
    }
    let mut unmatched_by_lateness = [0u64; LATENESS_BUCKETS.len()];
    let mut unmatched_possibly_preempted = 0u64;
    let mut late_in_long_iteration = 0u64;
    let mut late_in_burst = 0u64;
    for m in &core.port().late_log().misses {
        let i = bursts.partition_point(|&(_, end)| end < m.submit);
        if bursts.get(i).is_some_and(|&(start, _)| start <= m.submit) {
            late_in_burst += 1;
        }
        let i = long_iterations.partition_point(|&(_, end)| end < m.submit);
        if long_iterations
            .get(i)
            .is_some_and(|&(start, _)| start <= m.delivered)
        {
            late_in_long_iteration += 1;
        }
        if !preemptions.excuses(m) {
            let i = LATENESS_BUCKETS.partition_point(|&b| m.lateness() >= b);
            unmatched_by_lateness[i.saturating_sub(1)] += 1;
            if preemptions.may_have_waited(m.submit, m.delivered) >= m.lateness() {
                unmatched_possibly_preempted += 1;
            }
        }
    }
    let late_at_tx = core.port().late_log().count();
    let control = core.control().clone();
    let mut acked = 0;
    let mut next = 0u32;
    while acked < args.channels && Instant::now() < give_up {
        while next < args.channels {
            match control.post(Command::Close {
                id: next,
                drain: false,
            }) {
                Ok(_) => next += 1,
                Err(_) => break, // ring full: let the core apply some first
            }
        }
        core.poll(&clock, &mut meter);
        while let Some((_, r)) = control.take_ack() {
            r?;
            acked += 1;
        }
    }
    if acked < args.channels {
        return Err(format!("only {acked} of {} channels closed", args.channels).into());
    }
    let mut hist = new_histogram();
    for s in &senders {
        hist.add(s.stats().delay_snapshot())?;
    }
    Ok(Latency {
        hist,
        submitted,
        blocked,
        late,
        secs,
        gaps,
        gap_secs: gap_cycles as f64 / tsc_hz,
        producer_gaps,
        producer_gap_secs,
        busy_secs: busy_cycles as f64 / tsc_hz,
        sent,
        late_at_tx,
        verdict,
        unmatched_by_lateness,
        unmatched_possibly_preempted,
        late_runs,
        late_in_long_iteration,
        late_in_burst,
        steal,
        polling_waited: preemptions.total(),
    })
}

/// Where dpdk-testpmd is, if anywhere.
fn find_testpmd(args: &Args) -> Option<PathBuf> {
    if let Some(p) = &args.testpmd {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("RTCHAN_TESTPMD") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("dpdk-testpmd"))
                .collect()
        })
        .unwrap_or_default();
    // Next to the target directory this binary was built in, and in ./target.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            candidates.push(target.join("testpmd/dpdk-testpmd"));
        }
    }
    candidates.push(PathBuf::from("target/testpmd/dpdk-testpmd"));
    candidates.into_iter().find(|p| p.is_file())
}

/// Runs dpdk-testpmd in txonly mode on a net_null vdev, its forwarding lcore on `cpu`, and
/// returns its TX rate in Mpps (median of its per-second reports, the first one left out).
fn run_testpmd(
    args: &Args,
    cpu: usize,
    aux: Option<usize>,
    frame_len: usize,
    dur: Duration,
) -> Result<f64, String> {
    let path = find_testpmd(args).ok_or(
        "dpdk-testpmd not found (Debian 12 does not package it: run scripts/build-testpmd.sh, \
         or pass --testpmd)",
    )?;
    let aux = aux.ok_or("testpmd needs a second CPU for its main lcore")?;
    let mut cmd = Process::new(&path);
    cmd.args([
        "-l",
        &format!("{aux},{cpu}"),
        "--main-lcore",
        &aux.to_string(),
    ])
    .args(["--no-pci", "--no-shconf", "--no-telemetry"])
    .args([
        "--file-prefix",
        "rtchan-bench-testpmd",
        "--log-level=lib.eal:error",
    ])
    .arg("--vdev=net_null0,no-rx=1");
    if !args.huge {
        cmd.args(["--no-huge", "-m", "512"]);
    }
    cmd.args([
        "--",
        "--forward-mode=txonly",
        &format!("--txpkts={frame_len}"),
        "--burst=32",
        "--nb-cores=1",
        "--rxq=1",
        "--txq=1",
        "--total-num-mbufs=16383",
        "--stats-period=1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    // Startup (EAL init, port start) takes about a second; then `dur` of forwarding.
    let deadline = Instant::now() + dur + Duration::from_millis(1500);
    let mut early_exit = None;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            early_exit = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if early_exit.is_none() {
        // testpmd stops forwarding, prints its totals and closes its ports on SIGINT (and
        // flushes its piped stdout, which SIGKILL would lose). kill(1) keeps this crate's
        // unsafe code inside src/ports/dpdk.
        let _ = Process::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let stop_by = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > stop_by {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let mut pps: Vec<f64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Tx-pps:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    if pps.len() < 2 {
        let tail: Vec<&str> = err.lines().chain(out.lines()).rev().take(5).collect();
        return Err(format!(
            "{} gave no TX rate (exit {:?}); last output: {}",
            path.display(),
            early_exit,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    pps.remove(0); // the first report covers start-up
    pps.sort_by(f64::total_cmp);
    Ok(pps[pps.len() / 2] / 1e6)
}
