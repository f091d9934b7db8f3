//! Experiment 2, overload protection: the four channels of experiment 1 plus a violator, an
//! admitted channel (4000-byte messages every 200 µs, 17 % of the link) whose application
//! submits at 1x, 2x, 5x and 10x its rate, with 50 % best-effort load beside.
//!
//! Enforcement turns the violator's excess into logical arrival times in its own future, so
//! the well-behaved channels' delays should not change and they should miss nothing; the
//! violator should get its spec's rate (more when work-conserving: the idle link's slack), and
//! its excess should be refused (block) or dropped (drop-newest, drop-oldest), counted.
//!
//! Written once for every [`Bed`]: on veth the channels of experiment 1's veth run plus a
//! violator of 4000 bytes every 2 ms ([`super::exp_qos::setup`]), the block policy held and
//! work-conserving, with the real-time bed's checks (a miss only where measured OS preemption
//! covers it, everything accepted delivered, the violator's rate within 0.85–1.05 of its spec).

use super::bed::{Bed, Profile};
use super::bounds::RtReq;
use super::exp_qos::{setup, BE_LEN};
use super::out::{f, Chart, Series};
use super::world::{ChanDef, Load, RunOut, Scenario};
use super::{bed_table, per_bed, Link, Opts, Report, MS, US};
use dataplane::source::Pattern;
use dataplane::spec::{ChannelSpec, OverflowPolicy};
use dataplane::time::Nanos;

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

/// The scenario on `bed`: well-behaved channels periodic at spec (on veth 10 % under it), the
/// violator greedy at `multiple` with `overflow`, best-effort at `be_pct` percent of the link.
pub fn scenario(
    bed: &Profile,
    specs: &[(&'static str, ChannelSpec)],
    (cfg, per_packet): (dataplane::core::CoreConfig, Nanos),
    multiple: u32,
    overflow: OverflowPolicy,
    be_pct: u32,
    duration: u64,
) -> Scenario {
    let mut sc = Scenario::new(cfg, bed.link_bps, per_packet, duration);
    for (i, (name, s)) in specs.iter().enumerate() {
        let load = if *name == "violator" {
            Load::Pattern(Pattern::Greedy {
                imin: s.imin,
                multiple,
            })
        } else {
            bed.well_behaved(s)
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
        bed.be_load(be_pct, BE_LEN),
    ));
    sc
}

/// Runs experiment 2 on `bed`.
pub fn run(opts: &Opts, bed: &mut dyn Bed) -> Result<Report, String> {
    let mut rep = Report::new("overload");
    let prof = bed.profile().clone();
    let (u, un, tag) = (prof.unit, prof.unit.name(), prof.tag());
    let duration = per_bed(&prof, opts.quick, (20, 300), (500, 1500)) * MS;
    let multiples: Vec<u32> = if opts.quick {
        vec![1, 5]
    } else {
        vec![1, 2, 5, 10]
    };
    // Virtual time runs every policy; veth the block policy, held and work-conserving.
    let variants: Vec<Variant> = per_bed(
        &prof,
        opts.quick,
        (vec![VARIANTS[0], VARIANTS[3]], VARIANTS.to_vec()),
        (vec![VARIANTS[0]], vec![VARIANTS[0], VARIANTS[3]]),
    );
    // What the violator gets when enforcement holds it to its spec: exact in virtual time; on
    // veth its application's own stalls and the drain move it.
    let spec_rate = match prof.link {
        Link::Mem => 0.95..=1.02,
        Link::Veth | Link::Dpdk | Link::Daemons => 0.85..=1.05,
    };
    let mut t = bed_table(
        &prof,
        &[
            "backend",
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
            "max_delay_{u}",
            "p99_delay_{u}",
            "max_delay_change_vs_1x_{u}",
            "bound_D_{u}",
            "deadline_misses",
            "late_packets",
            "lost",
            "be_goodput_mbps",
            "link_backpressure_events",
        ],
    );
    let mut delay_plot: Vec<Series> = Vec::new();
    let mut rate_plot: Vec<Series> = Vec::new();
    let mut mode = String::new();
    for v in &variants {
        let (cfg, specs, per_packet) = setup(&prof, v.work_conserving, Some(VIOLATOR))?;
        let mut base: Option<RunOut> = None;
        let mut delays: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
        let mut vrate = Vec::new();
        for &m in &multiples {
            let sc = scenario(
                &prof,
                &specs,
                (cfg, per_packet),
                m,
                v.overflow,
                50,
                duration,
            );
            let p = bed.run(&sc)?;
            mode = p.mode().to_string();
            let r = p.run();
            let be = r.chan("best-effort").goodput_mbps(duration);
            for (i, (name, s)) in specs.iter().enumerate() {
                let c = r.chan(name);
                let verdict = p.verdict(i);
                let change = base.as_ref().map_or(0.0, |b| {
                    u.of_f(c.max_latency as f64 - b.chan(name).max_latency as f64)
                });
                let ratio = c.rate_vs_spec(duration).unwrap_or(0.0);
                let mut row = vec![
                    prof.backend.to_string(),
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
                    f(u.of(c.max_latency), u.prec()),
                    f(u.of(c.p99_latency), u.prec()),
                    f(change, u.prec()),
                    f(u.of(s.end_to_end_deadline), u.prec()),
                    c.misses.to_string(),
                    c.late_packets.to_string(),
                    c.lost.to_string(),
                    f(be, 1),
                    r.core.link_backpressure.to_string(),
                ];
                row.extend(p.noise_cells(Some(i)));
                t.row(row);
                delays[i].push((m as f64, u.of(c.max_latency)));
                if *name == "violator" {
                    vrate.push((m as f64, ratio));
                    let excess = c.blocked + c.dropped_newest + c.dropped_oldest;
                    rep.check(
                        c.accepted + c.blocked + c.dropped_newest == c.offered
                            && (m == 1 || v.work_conserving || excess > 0),
                        format!(
                            "{tag}{} {m}x: violator's excess counted: offered {} = accepted {} \
                             + blocked {} + dropped-newest {} (dropped-oldest {})",
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
                                "{tag}{} {m}x: violator gets more than its spec from the slack \
                                 ({ratio:.2}x)",
                                v.label
                            ),
                        );
                    } else {
                        rep.check(
                            spec_rate.contains(&ratio),
                            format!(
                                "{tag}{} {m}x: violator gets its spec ({ratio:.3}x, within \
                                 {:.2}-{:.2})",
                                v.label,
                                spec_rate.start(),
                                spec_rate.end()
                            ),
                        );
                    }
                    // Exact in virtual time only: on veth the violator's own backlog after a
                    // machine's stall is its own business.
                    if !prof.real_time() {
                        rep.check(
                            c.misses == 0 && c.late_packets == 0,
                            format!(
                                "{} {m}x: violator's own messages meet their deadlines from ℓ \
                                 ({} misses, {} late packets)",
                                v.label, c.misses, c.late_packets
                            ),
                        );
                    }
                } else {
                    let words = format!(
                        "{tag}{} {m}x: {name}: {} misses ({verdict}), {} late, {} lost, max \
                         delay {:.2} {un} vs D {:.1} {un} (change vs 1x {change:+.2} {un}), \
                         delivered {} of {}",
                        v.label,
                        c.misses,
                        c.late_packets,
                        c.lost,
                        u.of(c.max_latency),
                        u.of(s.end_to_end_deadline),
                        c.delivered,
                        c.accepted
                    );
                    let ok = match prof.link {
                        Link::Mem => {
                            c.misses == 0
                                && c.late_packets == 0
                                && c.lost == 0
                                && c.max_latency <= s.end_to_end_deadline
                        }
                        Link::Veth | Link::Dpdk | Link::Daemons => {
                            verdict.unexcused == 0 && c.lost == 0 && c.delivered == c.accepted
                        }
                    };
                    rep.check(ok, words);
                }
            }
            if let Some((ok, w)) = p.port_check(&format!("{tag}{} {m}x", v.label)) {
                rep.check(ok, w);
            }
            let vc = r.chan("violator");
            rep.note(format!(
                "[{}] {} {m}x: violator {:.2}x spec, excess blocked {} / dropped-newest {} / \
                 dropped-oldest {}; {} link-backpressure stalls; BE {be:.1} Mb/s; well-behaved \
                 max delays {}{}",
                prof.backend,
                v.label,
                vc.rate_vs_spec(duration).unwrap_or(0.0),
                vc.blocked,
                vc.dropped_newest,
                vc.dropped_oldest,
                r.core.link_backpressure,
                specs
                    .iter()
                    .filter(|(n, _)| *n != "violator")
                    .map(|(n, _)| format!("{n} {:.2} {un}", u.of(r.chan(n).max_latency)))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.noise_note()
            ));
            if base.is_none() {
                base = Some(r.clone());
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
                let d = u.of(s.end_to_end_deadline);
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
    if !mode.is_empty() {
        rep.note(format!("ports: {mode}"));
    }
    rep.csv(opts, &prof.file("overload", "csv"), &t)?;
    rep.plot(
        opts,
        &prof.file("overload", "svg"),
        &Chart {
            title: format!(
                "Overload protection{}: well-behaved channels' largest delay",
                prof.title_tag()
            ),
            x: "violator's submission rate, multiple of its spec".into(),
            y: format!("largest delay, {un} (log)"),
            log_x: false,
            log_y: true,
        },
        &delay_plot,
    )?;
    rep.plot(
        opts,
        &prof.file("overload-violator", "svg"),
        &Chart {
            title: format!(
                "Overload protection{}: what the violator gets",
                prof.title_tag()
            ),
            x: "violator's submission rate, multiple of its spec".into(),
            y: "delivered rate / spec rate".into(),
            log_x: false,
            log_y: false,
        },
        &rate_plot,
    )?;
    Ok(rep)
}
