//! Experiment 4, preemption granularity: k = 1, 2, 4, 8, 16 packets per handler run on a
//! CPU-bound core (2 µs of protocol processing per packet, e.g. encryption, in front of a
//! 10 Gb/s link that needs 1.23 µs per full frame).
//!
//! Three large-message channels (64 000 and 16 000 bytes: 45 and 12 packets per message, 60 % of
//! the CPU together) and a best-effort flood of 8000-byte messages run beside the *tight*
//! channel (one 64-byte packet every 200 µs). For each k, admission (with
//! `ResourceModel.granularity = k`) first admits the large channels, then says the smallest host
//! bound d it could grant the tight channel: the bound it predicts. The tight channel then runs
//! with exactly that bound. Measured: its largest delay (host: submit to the release of its
//! packet, and end to end), packets late at the link, and the core's overhead counters (handler
//! runs and switches per packet). The virtual CPU charges per packet only, so throughput is the
//! same for every k here; what a switch costs in real time is experiment 5's.

use super::bounds::{self, RtReq};
use super::out::{f, Chart, Csv, Series};
use super::world::{self, ChanDef, Load, Scenario};
use super::{Opts, Report, MS, US};
use dataplane::source::Pattern;

const LINK: u64 = 10_000_000_000;
const PER_PACKET: u64 = 2_000;
const STEP: u64 = 1_000;

/// The large channels: name and request.
fn others() -> Vec<(&'static str, RtReq)> {
    vec![
        (
            "big-a",
            RtReq {
                mmax: 64_000,
                imin: 500 * US,
                bmax: 2,
                d: 2 * MS,
            },
        ),
        (
            "big-b",
            RtReq {
                mmax: 64_000,
                imin: 500 * US,
                bmax: 2,
                d: 2 * MS,
            },
        ),
        (
            "mid",
            RtReq {
                mmax: 16_000,
                imin: 100 * US,
                bmax: 2,
                d: MS,
            },
        ),
    ]
}

/// The tight channel (its d is replaced by admission's tightest bound).
const TIGHT: RtReq = RtReq {
    mmax: 64,
    imin: 200 * US,
    bmax: 1,
    d: 0,
};

/// Frames the NIC may hold at granularity `k`: a run's wire time (k packets of CPU at 2 µs,
/// 1.23 µs per frame on the wire) and two more.
fn in_flight_frames(k: u32) -> u64 {
    2 * u64::from(k) + 2
}

/// Runs experiment 4.
pub fn run(opts: &Opts) -> Result<Report, String> {
    let mut rep = Report::new("granularity");
    let duration = if opts.quick { 20 * MS } else { 300 * MS };
    let ks: Vec<u32> = if opts.quick {
        vec![1, 4, 16]
    } else {
        vec![1, 2, 4, 8, 16]
    };
    let mut t = Csv::new(&[
        "k",
        "in_flight_frames",
        "predicted_host_bound_us",
        "tight_max_host_delay_us",
        "tight_max_e2e_delay_us",
        "predicted_e2e_bound_us",
        "tight_p99_e2e_us",
        "tight_deadline_misses",
        "tight_late_packets",
        "others_misses",
        "packets_per_s",
        "runs_per_packet",
        "switches_per_packet",
        "cpu_busy",
    ]);
    let mut measured = Vec::new();
    let mut measured_e2e = Vec::new();
    let mut predicted = Vec::new();
    let mut switches = Vec::new();
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    // The k values, plus (full runs) k = 16 with a NIC too shallow for its runs, to show why
    // the in-flight limit must cover a run: (k, frames in flight, part of the main series).
    let mut cases: Vec<(u32, u64, bool)> =
        ks.iter().map(|&k| (k, in_flight_frames(k), true)).collect();
    if !opts.quick {
        cases.push((16, 2, false));
    }
    for &(k, frames, main) in &cases {
        let model = bounds::model(LINK, PER_PACKET, k, STEP, false, 0);
        let mut cfg = world::core_config(k, false, 0);
        cfg.link.link_rate_bps = LINK;
        // The link scheduler is served at preemption points only: the NIC must hold enough
        // to stay busy through the longest handler run (k packets), or the link idles during
        // runs. Its depth adds to the end-to-end allowance, not to the host bound.
        cfg.link.in_flight_limit = frames * 1538;
        let allowance = world::network_allowance(&cfg, LINK, STEP);
        let before: Vec<RtReq> = others().iter().map(|o| o.1).collect();
        let d = bounds::tightest(&model, &before, &TIGHT)
            .ok_or_else(|| format!("k={k}: admission grants the tight channel no bound"))?;
        let mut reqs = before.clone();
        reqs.push(RtReq { d, ..TIGHT });
        let specs = bounds::admit_all(&model, &reqs, allowance)?;
        let mut sc = Scenario::new(cfg, LINK, PER_PACKET, duration);
        sc.step = STEP;
        let names: Vec<&str> = others()
            .iter()
            .map(|o| o.0)
            .chain(std::iter::once("tight"))
            .collect();
        for (i, (name, s)) in names.iter().zip(&specs).enumerate() {
            sc.channels.push(ChanDef::real_time(
                name,
                i as u32 + 1,
                *s,
                Load::Pattern(Pattern::Periodic { interval: s.imin }),
            ));
        }
        sc.channels
            .push(ChanDef::best_effort("best-effort", 100, 8000, Load::Flood));
        let r = world::run(&sc);
        if std::env::var_os("RTCHAN_EVAL_DEBUG").is_some() {
            eprintln!("k={k} core {:?} link {:?}", r.core, r.link);
            for c in &r.chans {
                eprintln!("  {c:?}");
            }
        }
        let tight = r.chan("tight");
        let tspec = specs.last().copied().expect("tight spec");
        let others_misses: u64 = r
            .chans
            .iter()
            .filter(|c| c.spec.is_some() && c.name != "tight")
            .map(|c| c.misses + c.late_packets)
            .sum();
        let pps = r.core.packets as f64 * 1e9 / duration as f64;
        let runs_pp = r.core.runs as f64 / r.core.packets.max(1) as f64;
        let sw_pp = r.core.switches as f64 / r.core.packets.max(1) as f64;
        let busy = r.core.packets as f64 * PER_PACKET as f64 / duration as f64;
        t.row(vec![
            k.to_string(),
            (cfg.link.in_flight_limit / 1538).to_string(),
            f(d as f64 / 1e3, 3),
            f(tight.max_host_delay as f64 / 1e3, 3),
            f(tight.max_latency as f64 / 1e3, 3),
            f(tspec.end_to_end_deadline as f64 / 1e3, 3),
            f(tight.p99_latency as f64 / 1e3, 3),
            tight.misses.to_string(),
            tight.late_packets.to_string(),
            others_misses.to_string(),
            f(pps, 0),
            f(runs_pp, 4),
            f(sw_pp, 4),
            f(busy, 4),
        ]);
        if !main {
            rep.note(format!(
                "k={k} with only {frames} frames in flight (the link idles during runs): \
                 tight channel max host delay {:.1} us vs d {:.1} us, {} late packets, large \
                 channels {others_misses} misses + late packets, {:.0} kpkt/s",
                tight.max_host_delay as f64 / 1e3,
                d as f64 / 1e3,
                tight.late_packets,
                pps / 1e3
            ));
            continue;
        }
        measured.push((k as f64, tight.max_host_delay as f64 / 1e3));
        measured_e2e.push((k as f64, tight.max_latency as f64 / 1e3));
        predicted.push((k as f64, d as f64 / 1e3));
        switches.push((k as f64, sw_pp));
        runs.push((k as f64, runs_pp));
        rep.check(
            tight.misses == 0
                && tight.late_packets == 0
                && tight.max_latency <= tspec.end_to_end_deadline,
            format!(
                "k={k}: tight channel within admission's bound: host {:.1} us (late packets {}) \
                 vs d {:.1} us; end to end {:.1} us vs {:.1} us, {} misses",
                tight.max_host_delay as f64 / 1e3,
                tight.late_packets,
                d as f64 / 1e3,
                tight.max_latency as f64 / 1e3,
                tspec.end_to_end_deadline as f64 / 1e3,
                tight.misses
            ),
        );
        rep.check(
            others_misses == 0,
            format!("k={k}: the large channels miss nothing ({others_misses})"),
        );
        rep.note(format!(
            "k={k}: predicted d {:.1} us, measured max host delay {:.1} us, e2e {:.1} us; \
             {:.3} switches and {:.3} runs per packet, {:.0} kpkt/s, CPU {:.0}% busy",
            d as f64 / 1e3,
            tight.max_host_delay as f64 / 1e3,
            tight.max_latency as f64 / 1e3,
            sw_pp,
            runs_pp,
            pps / 1e3,
            busy * 100.0
        ));
        rows.push((k, d, tight.max_latency, runs_pp));
    }
    rep.csv(opts, "granularity.csv", &t)?;
    rep.plot(
        opts,
        "granularity.svg",
        &Chart {
            title: "Preemption granularity: the tight channel's largest delay vs admission's bound"
                .into(),
            x: "granularity k, packets per handler run (log)".into(),
            y: "delay, us".into(),
            log_x: true,
            log_y: false,
        },
        &[
            Series::measured("measured: submit to release of the packet", measured),
            Series::measured("measured: end to end", measured_e2e),
            Series::reference("admission's bound d for this k", predicted),
        ],
    )?;
    rep.plot(
        opts,
        "granularity-overhead.svg",
        &Chart {
            title: "Preemption granularity: preemption points and switches per packet".into(),
            x: "granularity k, packets per handler run (log)".into(),
            y: "per packet".into(),
            log_x: true,
            log_y: false,
        },
        &[
            Series::measured("handler runs (preemption points) / packet", runs),
            Series::measured("switches to another handler / packet", switches),
        ],
    )?;
    // Trends: coarser granularity, looser bound, larger delay, fewer switches.
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    rep.check(
        rows.windows(2).all(|w| w[1].1 >= w[0].1) && last.1 > first.1,
        format!(
            "admission's bound grows with k: {:.1} us at k={} to {:.1} us at k={}",
            first.1 as f64 / 1e3,
            first.0,
            last.1 as f64 / 1e3,
            last.0
        ),
    );
    rep.check(
        last.2 > first.2,
        format!(
            "the measured largest delay grows with k: {:.1} us at k={} to {:.1} us at k={}",
            first.2 as f64 / 1e3,
            first.0,
            last.2 as f64 / 1e3,
            last.0
        ),
    );
    rep.check(
        last.3 < first.3,
        format!(
            "preemption points per packet fall with k: {:.3} at k={} to {:.3} at k={}",
            first.3, first.0, last.3, last.0
        ),
    );
    Ok(rep)
}
