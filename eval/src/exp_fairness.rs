//! Experiment 3, fairness to best-effort: three admitted real-time channels (one 1400-byte
//! packet every 100 µs each, 37 % of a 1 Gb/s link together) whose applications submit at 1x,
//! 2x, 4x and 8x their rate, so that much of their traffic is *early* (logical arrival in the
//! future), beside a best-effort flood.
//!
//! Compared orders:
//! - **three-class** (rtchan): current real-time, then best-effort, then early real-time held
//!   (non-work-conserving) or run last (work-conserving);
//! - **real-time first**: early real-time work ahead of best-effort. The dataplane has no such
//!   policy; it is emulated honestly by opening the same channels with Imin = 1 ns in the
//!   dataplane (admission and the offered traffic unchanged): logical arrival then equals
//!   submission, no message is ever early, and every real-time message runs by EDF ahead of
//!   best-effort — exactly an order that serves early real-time work before best-effort;
//! - each of these with and without a 10 % best-effort reserve (CPU and link);
//! - the FIFO baseline (no QoS) for reference.
//!
//! Expected: under the three-class order best-effort keeps everything real-time traffic is not
//! entitled to; under real-time first it starves as soon as real-time senders exceed the link,
//! reserve or not: the reserve lifts best-effort ahead of current real-time work at most once
//! per busy window (so that admission can charge it as one run), and an unenforced real-time
//! overload never ends its busy window. Best-effort's share is protected by enforcement and
//! admission (the three-class order), not by the reserve.

use super::bounds::RtReq;
use super::out::{f, Chart, Csv, Series};
use super::world::{self, ChanDef, Load, Scenario, GBPS};
use super::{bounds, Opts, Report, MS, US};
use dataplane::source::Pattern;

const PER_PACKET: u64 = 100;
const K: u32 = 2;
const RESERVE: u32 = 100_000;

/// An order (and reserve) compared.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) label: &'static str,
    pub(crate) work_conserving: bool,
    pub(crate) reserve_ppm: u32,
    /// Emulated real-time-first order (Imin = 1 ns in the dataplane).
    pub(crate) rt_first: bool,
    pub(crate) fifo: bool,
}

/// The orders compared, in the order of the table.
pub(crate) const POLICIES: [Policy; 6] = [
    Policy {
        label: "three-class",
        work_conserving: false,
        reserve_ppm: 0,
        rt_first: false,
        fifo: false,
    },
    Policy {
        label: "three-class, work-conserving",
        work_conserving: true,
        reserve_ppm: 0,
        rt_first: false,
        fifo: false,
    },
    Policy {
        label: "three-class + 10% reserve",
        work_conserving: false,
        reserve_ppm: RESERVE,
        rt_first: false,
        fifo: false,
    },
    Policy {
        label: "real-time first",
        work_conserving: false,
        reserve_ppm: 0,
        rt_first: true,
        fifo: false,
    },
    Policy {
        label: "real-time first + 10% reserve",
        work_conserving: false,
        reserve_ppm: RESERVE,
        rt_first: true,
        fifo: false,
    },
    Policy {
        label: "FIFO (no QoS)",
        work_conserving: false,
        reserve_ppm: 0,
        rt_first: false,
        fifo: true,
    },
];

/// The real-time channels' request.
pub const RT: RtReq = RtReq {
    mmax: 1400,
    imin: 100 * US,
    bmax: 4,
    d: MS,
};

/// The real-time submission multiples and the policies experiment 3 runs (fewer with `quick`);
/// the veth run uses the same.
pub(crate) fn sweep(quick: bool) -> (Vec<u32>, Vec<Policy>) {
    if quick {
        (vec![1, 4], vec![POLICIES[0], POLICIES[3], POLICIES[4]])
    } else {
        (vec![1, 2, 4, 8], POLICIES.to_vec())
    }
}

/// Runs experiment 3.
pub fn run(opts: &Opts) -> Result<Report, String> {
    let mut rep = Report::new("fairness");
    let duration = if opts.quick { 20 * MS } else { 200 * MS };
    let (multiples, policies) = sweep(opts.quick);
    let mut t = Csv::new(&[
        "policy",
        "rt_multiple",
        "be_goodput_mbps",
        "be_share_of_link",
        "rt_rate_vs_spec",
        "rt_max_delay_us",
        "rt_deadline_misses",
        "link_utilisation",
        "link_backpressure_events",
    ]);
    let mut plot = Vec::new();
    // goodput[policy][multiple]
    let mut goodput = vec![vec![0.0f64; multiples.len()]; policies.len()];
    for (pi, p) in policies.iter().enumerate() {
        let mut cfg = world::core_config(K, p.work_conserving, p.reserve_ppm);
        if p.fifo {
            cfg = cfg.fifo_baseline();
        }
        cfg.link.link_rate_bps = GBPS;
        let model = bounds::model(GBPS, PER_PACKET, K, 1_000, p.work_conserving, p.reserve_ppm);
        let allowance = world::network_allowance(&cfg, GBPS, 1_000);
        let specs = bounds::admit_all(&model, &[RT, RT, RT], allowance)?;
        let mut pts = Vec::new();
        for (mi, &m) in multiples.iter().enumerate() {
            let mut sc = Scenario::new(cfg, GBPS, PER_PACKET, duration);
            for (i, s) in specs.iter().enumerate() {
                let mut spec = *s;
                if p.rt_first {
                    spec.imin = 1;
                }
                let ch = ChanDef::real_time(
                    &format!("rt{i}"),
                    i as u32 + 1,
                    spec,
                    Load::Pattern(Pattern::Greedy {
                        imin: RT.imin,
                        multiple: m,
                    }),
                );
                sc.channels.push(ch);
            }
            sc.channels
                .push(ChanDef::best_effort("best-effort", 100, 1400, Load::Flood));
            let r = world::run(&sc);
            let be = r.chan("best-effort").goodput_mbps(duration);
            let rts: Vec<_> = r.chans.iter().filter(|c| c.name != "best-effort").collect();
            let rt_rate = rts
                .iter()
                .map(|c| c.delivered as f64 / (duration as f64 / RT.imin as f64))
                .sum::<f64>()
                / rts.len() as f64;
            let rt_max = rts.iter().map(|c| c.max_latency).max().unwrap_or(0);
            let rt_miss: u64 = rts.iter().map(|c| c.misses).sum();
            goodput[pi][mi] = be;
            pts.push((m as f64, be));
            t.row(vec![
                p.label.to_string(),
                m.to_string(),
                f(be, 1),
                f(be / 1e3, 4),
                f(rt_rate, 3),
                f(rt_max as f64 / 1e3, 1),
                rt_miss.to_string(),
                f(r.link_utilisation, 4),
                r.core.link_backpressure.to_string(),
            ]);
            rep.note(format!(
                "{} at {m}x: best-effort {be:.0} Mb/s, real-time {rt_rate:.2}x spec, RT max \
                 delay {:.0} us, {rt_miss} RT misses",
                p.label,
                rt_max as f64 / 1e3
            ));
        }
        plot.push(Series::measured(p.label, pts));
    }
    rep.csv(opts, "fairness.csv", &t)?;
    rep.plot(
        opts,
        "fairness.svg",
        &Chart {
            title: "Fairness: best-effort goodput while real-time senders exceed their specs"
                .into(),
            x: "real-time submission rate, multiple of spec (3 channels, 37% of link at 1x)".into(),
            y: "best-effort goodput, Mb/s".into(),
            log_x: false,
            log_y: false,
        },
        &plot,
    )?;
    // Trends, at the largest multiple (real-time offered beyond the link).
    let last = multiples.len() - 1;
    let m = multiples[last];
    let g = |label: &str| {
        policies
            .iter()
            .position(|p| p.label == label)
            .map(|i| goodput[i][last])
    };
    if let (Some(three), Some(first)) = (g("three-class"), g("real-time first")) {
        rep.check(
            three >= 500.0,
            format!("{m}x: three-class keeps best-effort at {three:.0} Mb/s (>= 500)"),
        );
        rep.check(
            first <= 0.1 * three,
            format!(
                "{m}x: real-time first starves best-effort: {first:.0} Mb/s (<= 10% of \
                 three-class's {three:.0})"
            ),
        );
        if let Some(first_res) = g("real-time first + 10% reserve") {
            rep.check(
                first_res <= 0.1 * three,
                format!(
                    "{m}x: the 10% reserve lifts best-effort once per busy window, which an \
                     unenforced overload never ends: {first_res:.0} Mb/s (<= 10% of \
                     three-class's {three:.0})"
                ),
            );
        }
    }
    if let (Some(three), Some(wc)) = (g("three-class"), g("three-class, work-conserving")) {
        rep.check(
            wc >= 0.9 * three,
            format!(
                "{m}x: work-conserving runs early work after best-effort: {wc:.0} Mb/s vs \
                 {three:.0}"
            ),
        );
    }
    Ok(rep)
}
