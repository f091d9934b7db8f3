//! Experiment 2, overload protection: the four channels of experiment 1 plus a violator, an
//! admitted channel (4000-byte messages every 200 µs, 17 % of the link) whose application
//! submits at 1x, 2x, 5x and 10x its rate, with 50 % best-effort load beside.
//!
//! Enforcement turns the violator's excess into logical arrival times in its own future, so
//! the well-behaved channels' delays should not change and they should miss nothing; the
//! violator should get its spec's rate (more when work-conserving: the idle link's slack), and
//! its excess should be refused (block) or dropped (drop-newest, drop-oldest), counted.

use super::bounds::RtReq;
use super::exp_qos::{be_load, setup, BE_LEN, PER_PACKET};
use super::out::{f, Chart, Csv, Series};
use super::world::{self, ChanDef, Load, RunOut, Scenario, GBPS};
use super::{Opts, Report, MS, US};
use dataplane::source::Pattern;
use dataplane::spec::{ChannelSpec, OverflowPolicy};

/// The violator's request.
pub const VIOLATOR: RtReq = RtReq {
    mmax: 4000,
    imin: 200 * US,
    bmax: 4,
    d: 600 * US,
};

/// A policy variant of the experiment.
#[derive(Clone, Copy, Debug)]
struct Variant {
    label: &'static str,
    work_conserving: bool,
    overflow: OverflowPolicy,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        label: "block",
        work_conserving: false,
        overflow: OverflowPolicy::Block,
    },
    Variant {
        label: "drop-newest",
        work_conserving: false,
        overflow: OverflowPolicy::DropNewest,
    },
    Variant {
        label: "drop-oldest",
        work_conserving: false,
        overflow: OverflowPolicy::DropOldest,
    },
    Variant {
        label: "block, work-conserving",
        work_conserving: true,
        overflow: OverflowPolicy::Block,
    },
];

/// The scenario: well-behaved channels periodic at spec, the violator greedy at `multiple`,
/// best-effort at `be_pct` percent of the link.
pub fn scenario(
    specs: &[(&'static str, ChannelSpec)],
    cfg: dataplane::core::CoreConfig,
    multiple: u32,
    overflow: OverflowPolicy,
    be_pct: u32,
    duration: u64,
) -> Scenario {
    let mut sc = Scenario::new(cfg, GBPS, PER_PACKET, duration);
    for (i, (name, s)) in specs.iter().enumerate() {
        let load = if *name == "violator" {
            Load::Pattern(Pattern::Greedy {
                imin: s.imin,
                multiple,
            })
        } else {
            Load::Pattern(Pattern::Periodic { interval: s.imin })
        };
        let mut ch = ChanDef::real_time(name, i as u32 + 1, *s, load);
        if *name == "violator" {
            ch = ch.with_overflow(overflow);
        }
        sc.channels.push(ch);
    }
    sc.channels.push(ChanDef::best_effort(
        "best-effort",
        100,
        BE_LEN,
        be_load(be_pct),
    ));
    sc
}

/// Runs experiment 2.
pub fn run(opts: &Opts) -> Result<Report, String> {
    let mut rep = Report::new("overload");
    let duration = if opts.quick { 20 * MS } else { 300 * MS };
    let multiples: Vec<u32> = if opts.quick {
        vec![1, 5]
    } else {
        vec![1, 2, 5, 10]
    };
    let variants: Vec<Variant> = if opts.quick {
        vec![VARIANTS[0], VARIANTS[3]]
    } else {
        VARIANTS.to_vec()
    };
    let mut t = Csv::new(&[
        "variant",
        "multiple",
        "channel",
        "offered",
        "accepted",
        "blocked",
        "dropped_newest",
        "dropped_oldest",
        "delivered",
        "rate_vs_spec",
        "max_delay_us",
        "max_delay_change_vs_1x_us",
        "bound_D_us",
        "deadline_misses",
        "late_packets",
        "be_goodput_mbps",
        "link_backpressure_events",
    ]);
    let mut delay_plot: Vec<Series> = Vec::new();
    let mut rate_plot: Vec<Series> = Vec::new();
    for v in &variants {
        let (cfg, specs) = setup(0, v.work_conserving, &[("violator", VIOLATOR)])?;
        let mut base: Option<RunOut> = None;
        let mut delays: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
        let mut vrate = Vec::new();
        for &m in &multiples {
            let r = world::run(&scenario(&specs, cfg, m, v.overflow, 50, duration));
            let be = r.chan("best-effort").goodput_mbps(duration);
            for (i, (name, s)) in specs.iter().enumerate() {
                let c = r.chan(name);
                let change = base.as_ref().map_or(0.0, |b| {
                    (c.max_latency as f64 - b.chan(name).max_latency as f64) / 1e3
                });
                let ratio = c.rate_vs_spec(duration).unwrap_or(0.0);
                t.row(vec![
                    v.label.to_string(),
                    m.to_string(),
                    name.to_string(),
                    c.offered.to_string(),
                    c.accepted.to_string(),
                    c.blocked.to_string(),
                    c.dropped_newest.to_string(),
                    c.dropped_oldest.to_string(),
                    c.delivered.to_string(),
                    f(ratio, 4),
                    f(c.max_latency as f64 / 1e3, 2),
                    f(change, 2),
                    f(s.end_to_end_deadline as f64 / 1e3, 2),
                    c.misses.to_string(),
                    c.late_packets.to_string(),
                    f(be, 1),
                    r.core.link_backpressure.to_string(),
                ]);
                delays[i].push((m as f64, c.max_latency as f64 / 1e3));
                if *name == "violator" {
                    vrate.push((m as f64, ratio));
                    let excess = c.blocked + c.dropped_newest + c.dropped_oldest;
                    rep.check(
                        c.accepted + c.blocked + c.dropped_newest == c.offered
                            && (m == 1 || v.work_conserving || excess > 0),
                        format!(
                            "{} {m}x: violator's excess counted: offered {} = accepted {} + \
                             blocked {} + dropped-newest {} (dropped-oldest {})",
                            v.label,
                            c.offered,
                            c.accepted,
                            c.blocked,
                            c.dropped_newest,
                            c.dropped_oldest
                        ),
                    );
                    if v.work_conserving && m >= 2 {
                        rep.check(
                            ratio > 1.2,
                            format!(
                                "{} {m}x: violator gets more than its spec from the slack \
                                 ({ratio:.2}x)",
                                v.label
                            ),
                        );
                    } else {
                        rep.check(
                            (0.95..=1.02).contains(&ratio),
                            format!("{} {m}x: violator gets its spec ({ratio:.3}x)", v.label),
                        );
                    }
                    rep.check(
                        c.misses == 0 && c.late_packets == 0,
                        format!(
                            "{} {m}x: violator's own messages meet their deadlines from ℓ \
                             ({} misses, {} late packets)",
                            v.label, c.misses, c.late_packets
                        ),
                    );
                } else {
                    rep.check(
                        c.misses == 0
                            && c.late_packets == 0
                            && c.lost == 0
                            && c.max_latency <= s.end_to_end_deadline,
                        format!(
                            "{} {m}x: {name}: {} misses, {} late, max delay {:.1} us <= D \
                             {:.1} us (change vs 1x {change:+.1} us)",
                            v.label,
                            c.misses,
                            c.late_packets,
                            c.max_latency as f64 / 1e3,
                            s.end_to_end_deadline as f64 / 1e3
                        ),
                    );
                }
            }
            let vc = r.chan("violator");
            rep.note(format!(
                "{} {m}x: violator {:.2}x spec, excess blocked {} / dropped-newest {} / \
                 dropped-oldest {}; {} link-backpressure stalls; well-behaved max delays {}",
                v.label,
                vc.rate_vs_spec(duration).unwrap_or(0.0),
                vc.blocked,
                vc.dropped_newest,
                vc.dropped_oldest,
                r.core.link_backpressure,
                specs
                    .iter()
                    .filter(|(n, _)| *n != "violator")
                    .map(|(n, _)| format!("{n} {:.0} us", r.chan(n).max_latency as f64 / 1e3))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if base.is_none() {
                base = Some(r);
            }
        }
        if v.label == "block" {
            for (i, (name, s)) in specs.iter().enumerate() {
                if *name == "violator" {
                    continue;
                }
                delay_plot.push(Series::measured(
                    format!("{name}: max delay"),
                    delays[i].clone(),
                ));
                let d = s.end_to_end_deadline as f64 / 1e3;
                delay_plot.push(Series::reference(
                    format!("{name}: bound D"),
                    multiples.iter().map(|&m| (m as f64, d)).collect(),
                ));
            }
        }
        rate_plot.push(Series::measured(
            format!("violator rate / spec ({})", v.label),
            vrate,
        ));
    }
    rep.csv(opts, "overload.csv", &t)?;
    rep.plot(
        opts,
        "overload.svg",
        &Chart {
            title: "Overload protection: well-behaved channels' largest delay".into(),
            x: "violator's submission rate, multiple of its spec".into(),
            y: "largest delay, us (log)".into(),
            log_x: false,
            log_y: true,
        },
        &delay_plot,
    )?;
    rep.plot(
        opts,
        "overload-violator.svg",
        &Chart {
            title: "Overload protection: what the violator gets".into(),
            x: "violator's submission rate, multiple of its spec".into(),
            y: "delivered rate / spec rate".into(),
            log_x: false,
            log_y: false,
        },
        &rate_plot,
    )?;
    Ok(rep)
}
