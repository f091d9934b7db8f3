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
//!
//! Written once for every [`Bed`]. On veth the three channels send one 1400-byte message per
//! ms each (about 36 % of the 100 Mb/s link) with the machine's bounds; best-effort goodput is
//! taken while the applications submit, and also per second the sending thread ran (its stalls
//! over 250 µs, when the link cannot be fed, taken out), which is what the trends are checked
//! on there. On both beds every real-time channel under the three-class order must keep its
//! bounds (on veth: no miss measured OS preemption does not excuse) and get its spec.

use super::bed::Bed;
use super::bounds::RtReq;
use super::exp_qos::veth_spec;
use super::out::{f, Chart, Series};
use super::world::{self, ChanDef, Load, Scenario};
use super::{bed_table, bounds, per_bed, Link, Opts, Report, MS, US};
use dataplane::source::Pattern;

/// Virtual CPU cost of a packet, ns (virtual time).
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

/// The real-time submission multiples and the policies experiment 3 runs (fewer with `quick`).
fn sweep(quick: bool) -> (Vec<u32>, Vec<Policy>) {
    if quick {
        (vec![1, 4], vec![POLICIES[0], POLICIES[3], POLICIES[4]])
    } else {
        (vec![1, 2, 4, 8], POLICIES.to_vec())
    }
}

/// Runs experiment 3 on `bed`.
pub fn run(opts: &Opts, bed: &mut dyn Bed) -> Result<Report, String> {
    let mut rep = Report::new("fairness");
    let prof = bed.profile().clone();
    let (u, un, tag) = (prof.unit, prof.unit.name(), prof.tag());
    let duration = per_bed(&prof, opts.quick, (20, 200), (500, 1000)) * MS;
    let (multiples, policies) = sweep(opts.quick);
    let mut t = bed_table(
        &prof,
        &[
            "backend",
            "policy",
            "rt_multiple",
            "be_goodput_mbps",
            "be_goodput_per_running_s_mbps",
            "be_goodput_with_drain_mbps",
            "be_share_of_link",
            "rt_rate_vs_spec",
            "rt_max_delay_{u}",
            "rt_deadline_misses",
            "rt_late_packets",
            "rt_largest_lateness_{u}",
            "link_utilisation",
            "link_backpressure_events",
        ],
    );
    let mut plot = Vec::new();
    let mut plot_run = Vec::new();
    // (while submitting, per running second) best-effort goodput, [policy][multiple]
    let mut goodput = vec![vec![(0.0f64, 0.0f64); multiples.len()]; policies.len()];
    let mut mode = String::new();
    for (pi, p) in policies.iter().enumerate() {
        let mut cfg = prof.core_config(K, p.work_conserving, p.reserve_ppm);
        if p.fifo {
            cfg = cfg.fifo_baseline();
        }
        // The channels: admitted in virtual time; on veth ten times slower with the machine's
        // bounds.
        let (specs, per_packet) = match prof.link {
            Link::Mem => {
                let model = bounds::model(
                    prof.link_bps,
                    PER_PACKET,
                    K,
                    1_000,
                    p.work_conserving,
                    p.reserve_ppm,
                );
                let allowance = world::network_allowance(&cfg, prof.link_bps, 1_000);
                (
                    bounds::admit_all(&model, &[RT, RT, RT], allowance)?,
                    PER_PACKET,
                )
            }
            Link::Veth | Link::Dpdk | Link::Daemons => (vec![veth_spec(1400, MS, 4); 3], 0),
        };
        let mut pts = Vec::new();
        let mut pts_run = Vec::new();
        for (mi, &m) in multiples.iter().enumerate() {
            let mut sc = Scenario::new(cfg, prof.link_bps, per_packet, duration);
            for (i, s) in specs.iter().enumerate() {
                let mut spec = *s;
                if p.rt_first {
                    spec.imin = 1;
                }
                // Greedy: every application counts a refused message and moves on.
                sc.channels.push(ChanDef::real_time(
                    &format!("rt{i}"),
                    i as u32 + 1,
                    spec,
                    Load::Pattern(Pattern::Greedy {
                        imin: s.imin,
                        multiple: m,
                    }),
                ));
            }
            sc.channels
                .push(ChanDef::best_effort("best-effort", 100, 1400, Load::Flood));
            let pt = bed.run(&sc)?;
            mode = pt.mode().to_string();
            let r = pt.run();
            let n = specs.len();
            let be = pt.window_mbps(n);
            let be_run = pt.running_mbps(n);
            let be_all = r.chan("best-effort").goodput_mbps(duration);
            let rt_rate = (0..n)
                .map(|i| pt.window(i).0 as f64 / (duration as f64 / specs[i].imin as f64))
                .sum::<f64>()
                / n as f64;
            let rts = &r.chans[..n];
            let rt_max = rts.iter().map(|c| c.max_latency).max().unwrap_or(0);
            let rt_miss: u64 = rts.iter().map(|c| c.misses).sum();
            let rt_late: u64 = rts.iter().map(|c| c.late_packets).sum();
            let over = (0..n).map(|i| pt.overrun(i)).max().unwrap_or(0);
            goodput[pi][mi] = (be, be_run);
            pts.push((m as f64, be));
            pts_run.push((m as f64, be_run));
            let mut row = vec![
                prof.backend.to_string(),
                p.label.to_string(),
                m.to_string(),
                f(be, 2),
                f(be_run, 2),
                f(be_all, 2),
                f(be / (prof.link_bps as f64 / 1e6), 4),
                f(rt_rate, 3),
                f(u.of(rt_max), u.prec()),
                rt_miss.to_string(),
                rt_late.to_string(),
                f(u.of(over), u.prec()),
                f(r.link_utilisation, 4),
                r.core.link_backpressure.to_string(),
            ];
            row.extend(pt.noise_cells(None));
            t.row(row);
            rep.note(format!(
                "[{}] {} at {m}x: best-effort {be:.1} Mb/s ({be_run:.1} per running second; \
                 sender stalled {:.0} ms), real-time {rt_rate:.2}x spec, RT max delay {:.2} \
                 {un}, {rt_miss} RT misses, {rt_late} late packets{}",
                prof.backend,
                p.label,
                pt.tx_stalled() as f64 / 1e6,
                u.of(rt_max),
                pt.noise_note()
            ));
            if !p.rt_first && !p.fifo {
                for (i, c) in rts.iter().enumerate() {
                    let (ok, w) = pt.within_bounds(i, &specs[i], u);
                    rep.check(ok, format!("{tag}{} {m}x: {}: {w}", p.label, c.name));
                }
                let most = if p.work_conserving { f64::MAX } else { 1.05 };
                // Per second the sender ran: on veth a stall longer than Bmax x Imin = 4 ms
                // costs messages (refused, not queued).
                let running =
                    duration.saturating_sub(pt.tx_stalled()).max(1) as f64 / duration as f64;
                let rt_running = rt_rate / running;
                rep.check(
                    rt_running >= 0.85 && rt_rate <= most,
                    format!(
                        "{tag}{} {m}x: the real-time channels get their spec{}: {rt_rate:.3}x, \
                         {rt_running:.3}x per running second (>= 0.85)",
                        p.label,
                        if p.work_conserving {
                            ""
                        } else {
                            " and no more (<= 1.05)"
                        }
                    ),
                );
            }
            if let Some((ok, w)) = pt.port_check(&format!("{tag}{} {m}x", p.label)) {
                rep.check(ok, w);
            }
        }
        plot.push(Series::measured(p.label, pts));
        plot_run.push(Series::measured(p.label, pts_run));
    }
    if !mode.is_empty() {
        rep.note(format!("ports: {mode}"));
    }
    rep.csv(opts, &prof.file("fairness", "csv"), &t)?;
    rep.plot(
        opts,
        &prof.file("fairness", "svg"),
        &Chart {
            title: format!(
                "Fairness{}: best-effort goodput while real-time senders exceed their specs",
                prof.title_tag()
            ),
            x: format!(
                "real-time submission rate, multiple of spec (3 channels, {} of {} at 1x)",
                if prof.real_time() { "36%" } else { "37%" },
                prof.link_words()
            ),
            y: "best-effort goodput while submitting, Mb/s".into(),
            log_x: false,
            log_y: false,
        },
        &plot,
    )?;
    if prof.real_time() {
        rep.plot(
            opts,
            &prof.file("fairness-running", "svg"),
            &Chart {
                title: format!(
                    "Fairness{}: best-effort goodput per second the sender ran",
                    prof.title_tag()
                ),
                x: "real-time submission rate, multiple of spec".into(),
                y: "best-effort goodput, Mb/s (sender's stalls > 250 us taken out)".into(),
                log_x: false,
                log_y: false,
            },
            &plot_run,
        )?;
    }
    // Trends, at the largest multiple (real-time offered beyond the link). In virtual time
    // on the goodput itself; on veth per second the sender ran, with a floor for the machine.
    let last = multiples.len() - 1;
    let m = multiples[last];
    let g = |label: &str, mi: usize| {
        policies
            .iter()
            .position(|p| p.label == label)
            .map(|i| goodput[i][mi])
    };
    if let (Some(three), Some(three1), Some(first)) = (
        g("three-class", last),
        g("three-class", 0),
        g("real-time first", last),
    ) {
        match prof.link {
            Link::Mem => rep.check(
                three.0 >= 500.0,
                format!(
                    "{m}x: three-class keeps best-effort at {:.0} Mb/s (>= 500)",
                    three.0
                ),
            ),
            Link::Veth | Link::Dpdk | Link::Daemons => rep.check(
                three.1 >= 30.0 && three.1 >= 0.8 * three1.1,
                format!(
                    "{tag}{m}x: three-class keeps best-effort at {:.1} Mb/s, {:.1} per running \
                     second (>= 30, and >= 80% of its {:.1} at 1x)",
                    three.0, three.1, three1.1
                ),
            ),
        }
        rep.check(
            first.0 <= 0.1 * three.0,
            format!(
                "{tag}{m}x: real-time first starves best-effort: {:.1} Mb/s (<= 10% of \
                 three-class's {:.1})",
                first.0, three.0
            ),
        );
        if let Some(first_res) = g("real-time first + 10% reserve", last) {
            rep.check(
                first_res.0 <= 0.1 * three.0,
                format!(
                    "{tag}{m}x: the 10% reserve lifts best-effort once per busy window, which \
                     an unenforced overload never ends: {:.1} Mb/s, {:.1} per running second \
                     (<= 10% of three-class's {:.1})",
                    first_res.0, first_res.1, three.0
                ),
            );
        }
    }
    if let (Some(three), Some(wc)) = (
        g("three-class", last),
        g("three-class, work-conserving", last),
    ) {
        let share = if prof.real_time() { 0.8 } else { 0.9 };
        rep.check(
            wc.1 >= share * three.1,
            format!(
                "{tag}{m}x: work-conserving runs early work after best-effort: {:.1} Mb/s vs \
                 {:.1} per running second (>= {:.0}%)",
                wc.1,
                three.1,
                share * 100.0
            ),
        );
    }
    Ok(rep)
}
