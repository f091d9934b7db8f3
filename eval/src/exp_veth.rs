//! Experiments 1 (QoS maintenance) and 2 (overload protection) on veth, in real time
//! ([`super::veth`]): `rtchan-eval qos --link veth`, `rtchan-eval overload --link veth`.
//!
//! The same shapes as the memlink runs, scaled to what a real, noisy host can time: a 100 Mb/s
//! paced link (a 1400-byte frame takes 118 µs), channels ten times slower than in the memlink
//! runs, and bounds with a generous share for the machine: d = 10 ms on the sending host and
//! D = 50 ms end to end for every real-time channel, as in the veth tests, because this VM's
//! scheduler delays a polling thread by up to ~10 ms several times a second and a message can
//! meet a stall of the sender, of veth's softirq and of the receiver. What the bounds measure
//! here is mostly the machine. A miss fails a check unless the polling threads' OS preemption,
//! measured independently of them ([`rtchan::preemption`]), covers its lateness within that
//! message's own life; the CSV carries excused and unexcused misses separately, the measured
//! preemption, and (for information) each thread's longest gap between polls. Each point runs 1.5 s (0.5 s with `--quick`) plus a 0.6 s drain.

use super::out::{f, Chart, Csv, Series};
use super::veth::{skip_reason, Bed, VethOut};
use super::world::{self, ChanDef, Load, Scenario};
use super::{Opts, Report, MS};
use dataplane::source::Pattern;
use dataplane::spec::{ChannelSpec, OverflowPolicy};
use dataplane::time::Nanos;

/// The paced link rate.
pub const RATE_BPS: u64 = 100_000_000;
/// Best-effort message size, bytes.
pub const BE_LEN: u32 = 1400;

/// A real-time spec with the veth bounds: d = 10 ms on the host, D = 50 ms end to end.
pub(crate) fn spec(mmax: u32, imin: Nanos, bmax: u32) -> ChannelSpec {
    ChannelSpec {
        mmax,
        imin,
        bmax,
        cpu_deadline: 5 * MS,
        link_deadline: 10 * MS,
        end_to_end_deadline: 50 * MS,
    }
}

/// The real-time channels: experiment 1's four, ten times slower (about 15 % of the link).
pub fn channels() -> Vec<(&'static str, ChannelSpec)> {
    vec![
        ("sensor", spec(64, 500_000, 4)),
        ("control", spec(200, MS, 4)),
        ("video", spec(4000, 5 * MS, 4)),
        ("bulk", spec(8000, 20 * MS, 2)),
    ]
}

/// The violator of experiment 2: 4000 bytes every 2 ms (about 17 % of the link).
pub fn violator() -> ChannelSpec {
    spec(4000, 2 * MS, 4)
}

/// The veth runs' core: k = 2, the 100 Mb/s paced link, 512 link scheduler slots.
pub(crate) fn core_config(work_conserving: bool) -> dataplane::core::CoreConfig {
    let mut c = world::core_config(2, work_conserving, 0);
    c.link.link_rate_bps = RATE_BPS;
    c.link.capacity = 512;
    c
}

/// Periodic best-effort load of `pct` percent of the link.
pub(crate) fn be_load(pct: u32) -> Load {
    if pct == 0 {
        return Load::Idle;
    }
    let wire = world::message_wire_ns(BE_LEN, RATE_BPS);
    Load::Pattern(Pattern::Periodic {
        interval: (wire * 100 / pct as u64).max(1),
    })
}

/// A well-behaved application: periodic, 10 % under its spec (see [`super::veth`]).
pub(crate) fn well_behaved(s: &ChannelSpec) -> Load {
    Load::Pattern(Pattern::Periodic {
        interval: s.imin + s.imin / 10,
    })
}

fn duration(opts: &Opts) -> Nanos {
    if opts.quick {
        500 * MS
    } else {
        1500 * MS
    }
}

/// A report that says why the veth bed cannot run here, if it cannot.
pub(crate) fn skipped(name: &str) -> Option<Report> {
    let why = skip_reason()?;
    let mut rep = Report::new(name);
    rep.note(format!("SKIPPED (veth): {why}"));
    Some(rep)
}

/// The measured OS preemption and each thread's longest gap between polls, in words.
pub(crate) fn noise_note(o: &VethOut) -> String {
    format!(
        "{}; gaps between polls (the dataplane's own work included, not an excuse): sender \
         longest {:.1} ms ({} over 1 ms), receiver longest {:.1} ms ({} over 1 ms)",
        o.preempted,
        o.tx_stalls.longest as f64 / 1e6,
        o.tx_stalls.over_1ms,
        o.rx_stalls.longest as f64 / 1e6,
        o.rx_stalls.over_1ms
    )
}

/// The backend a run will use, with its notes added to `rep`. The probe's bed is dropped at
/// once: each point makes a fresh pair of namespaces, because an AF_XDP socket's queue stays
/// busy for a moment after the socket closes.
pub(super) fn probe(rep: &mut Report, tag: &str) -> Result<&'static str, String> {
    let b = Bed::new(tag)?;
    for n in &b.notes {
        rep.note(n.clone());
    }
    Ok(b.backend.label())
}

/// Experiment 1 on veth.
pub fn run_qos(opts: &Opts) -> Result<Report, String> {
    if let Some(r) = skipped("qos") {
        return Ok(r);
    }
    let mut rep = Report::new("qos");
    let backend = probe(&mut rep, "q")?;
    let dur = duration(opts);
    let loads: Vec<u32> = if opts.quick {
        vec![0, 150]
    } else {
        vec![0, 50, 100, 150]
    };
    let specs = channels();
    let mut t = Csv::new(&[
        "backend",
        "be_load_pct",
        "channel",
        "imin_us",
        "spec_rate_per_s",
        "offered_rate_per_s",
        "delivered_rate_per_s",
        "rate_vs_spec",
        "rate_vs_offered",
        "max_delay_ms",
        "p99_delay_ms",
        "mean_delay_ms",
        "bound_D_ms",
        "host_bound_d_ms",
        "max_host_delay_ms",
        "deadline_misses",
        "excused_misses",
        "unexcused_misses",
        "late_packets",
        "lost",
        "retries",
        "be_goodput_mbps",
        "link_utilisation",
        "os_preemption_ms",
        "tx_longest_stall_ms",
        "tx_stalls_over_1ms",
        "rx_longest_stall_ms",
        "rx_stalls_over_1ms",
    ]);
    let mut delay_series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
    let mut p99_series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
    let mut rate_series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
    let mut be_series = Vec::new();
    let mut mode = String::new();
    for &pct in &loads {
        let mut sc = Scenario::new(core_config(false), RATE_BPS, 0, dur);
        for (i, (name, s)) in specs.iter().enumerate() {
            sc.channels
                .push(ChanDef::real_time(name, i as u32 + 1, *s, well_behaved(s)));
        }
        sc.channels.push(ChanDef::best_effort(
            "best-effort",
            100,
            BE_LEN,
            be_load(pct),
        ));
        let mut retry = vec![true; specs.len()];
        retry.push(false);
        let o = Bed::new("p")?.run(&sc, &retry)?;
        mode = o.mode.clone();
        let r = &o.run;
        let be_mbps = r.chan("best-effort").goodput_mbps(dur);
        be_series.push((pct as f64, be_mbps));
        for (i, (name, s)) in specs.iter().enumerate() {
            let c = r.chan(name);
            let v = o.verdict(i);
            let ratio = c.rate_vs_spec(dur).unwrap_or(0.0);
            let vs_offered = c.delivered as f64 / c.offered.max(1) as f64;
            t.row(vec![
                backend.to_string(),
                pct.to_string(),
                name.to_string(),
                f(s.imin as f64 / 1e3, 0),
                f(1e9 / s.imin as f64, 1),
                f(c.offered as f64 * 1e9 / dur as f64, 1),
                f(c.rate(dur), 1),
                f(ratio, 4),
                f(vs_offered, 4),
                f(c.max_latency as f64 / 1e6, 3),
                f(c.p99_latency as f64 / 1e6, 3),
                f(c.mean_latency / 1e6, 3),
                f(s.end_to_end_deadline as f64 / 1e6, 1),
                f(s.link_deadline as f64 / 1e6, 1),
                f(c.max_host_delay as f64 / 1e6, 3),
                c.misses.to_string(),
                v.excused.to_string(),
                v.unexcused.to_string(),
                c.late_packets.to_string(),
                c.lost.to_string(),
                o.retries[i].to_string(),
                f(be_mbps, 1),
                f(r.link_utilisation, 4),
                f(o.preempted.total() as f64 / 1e6, 2),
                f(o.tx_stalls.longest as f64 / 1e6, 2),
                o.tx_stalls.over_1ms.to_string(),
                f(o.rx_stalls.longest as f64 / 1e6, 2),
                o.rx_stalls.over_1ms.to_string(),
            ]);
            delay_series[i].push((pct as f64, c.max_latency as f64 / 1e6));
            p99_series[i].push((pct as f64, c.p99_latency as f64 / 1e6));
            rate_series[i].push((pct as f64, vs_offered * 100.0));
            rep.check(
                v.unexcused == 0
                    && c.lost == 0
                    && c.delivered == c.accepted
                    && c.accepted * 100 >= c.offered * 98,
                format!(
                    "veth BE {pct}%: {name}: {} misses (max delay {:.2} ms vs D {:.0} ms; {v}), \
                     {} lost, delivered {} of {} submitted ({} offered)",
                    c.misses,
                    c.max_latency as f64 / 1e6,
                    s.end_to_end_deadline as f64 / 1e6,
                    c.lost,
                    c.delivered,
                    c.accepted,
                    c.offered
                ),
            );
        }
        rep.check(
            o.tx_errors == 0 && o.rx_dropped == 0,
            format!(
                "veth BE {pct}%: {} port TX errors, {} frames dropped by the RX ring",
                o.tx_errors, o.rx_dropped
            ),
        );
        rep.note(format!(
            "[{backend}] BE {pct}% offered: BE goodput {be_mbps:.1} Mb/s, link {:.1}% busy; RT \
             max/p99 delay (D 50 ms): {}; {}",
            r.link_utilisation * 100.0,
            specs
                .iter()
                .map(|(n, _)| {
                    let c = r.chan(n);
                    format!(
                        "{n} {:.2}/{:.2} ms",
                        c.max_latency as f64 / 1e6,
                        c.p99_latency as f64 / 1e6
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            noise_note(&o)
        ));
    }
    rep.note(format!("ports: {mode}"));
    rep.csv(opts, "qos-veth.csv", &t)?;
    let mut series = Vec::new();
    for (i, (name, _)) in specs.iter().enumerate() {
        series.push(Series::measured(
            format!("{name}: max delay"),
            delay_series[i].clone(),
        ));
        series.push(Series::measured(
            format!("{name}: p99 delay"),
            p99_series[i].clone(),
        ));
    }
    series.push(Series::reference(
        "bound D (all channels)",
        loads.iter().map(|&p| (p as f64, 50.0)).collect(),
    ));
    rep.plot(
        opts,
        "qos-veth.svg",
        &Chart {
            title: format!("QoS maintenance on veth ({backend}, real time): end-to-end delay"),
            x: "best-effort load offered, % of the 100 Mb/s paced link".into(),
            y: "delay, ms (log)".into(),
            log_x: false,
            log_y: true,
        },
        &series,
    )?;
    let mut rs: Vec<Series> = specs
        .iter()
        .enumerate()
        .map(|(i, (n, _))| {
            Series::measured(
                format!("{n}: delivered, % of offered"),
                rate_series[i].clone(),
            )
        })
        .collect();
    rs.push(Series::measured("best-effort goodput, Mb/s", be_series));
    rep.plot(
        opts,
        "qos-throughput-veth.svg",
        &Chart {
            title: format!("QoS maintenance on veth ({backend}): rates and best-effort goodput"),
            x: "best-effort load offered, % of the 100 Mb/s paced link".into(),
            y: "% of offered (real-time) / Mb/s (best-effort)".into(),
            log_x: false,
            log_y: false,
        },
        &rs,
    )?;
    Ok(rep)
}

/// Experiment 2 on veth: the violator at 1x, 2x, 5x, 10x, block policy, held and
/// work-conserving, 50 % best-effort beside.
pub fn run_overload(opts: &Opts) -> Result<Report, String> {
    if let Some(r) = skipped("overload") {
        return Ok(r);
    }
    let mut rep = Report::new("overload");
    let backend = probe(&mut rep, "o")?;
    let dur = duration(opts);
    let multiples: Vec<u32> = if opts.quick {
        vec![1, 5]
    } else {
        vec![1, 2, 5, 10]
    };
    let variants: Vec<(&str, bool)> = if opts.quick {
        vec![("block", false)]
    } else {
        vec![("block", false), ("block, work-conserving", true)]
    };
    let mut specs = channels();
    specs.push(("violator", violator()));
    let mut t = Csv::new(&[
        "backend",
        "variant",
        "multiple",
        "channel",
        "offered",
        "accepted",
        "blocked",
        "delivered",
        "rate_vs_spec",
        "max_delay_ms",
        "p99_delay_ms",
        "bound_D_ms",
        "deadline_misses",
        "excused_misses",
        "unexcused_misses",
        "late_packets",
        "lost",
        "retries",
        "be_goodput_mbps",
        "os_preemption_ms",
        "tx_longest_stall_ms",
        "rx_longest_stall_ms",
    ]);
    let mut delay_plot = Vec::new();
    let mut rate_plot = Vec::new();
    let mut mode = String::new();
    for &(label, wc) in &variants {
        let mut delays: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
        let mut vrate = Vec::new();
        for &m in &multiples {
            let mut sc = Scenario::new(core_config(wc), RATE_BPS, 0, dur);
            let mut retry = Vec::new();
            for (i, (name, s)) in specs.iter().enumerate() {
                let violates = *name == "violator";
                let load = if violates {
                    Load::Pattern(Pattern::Greedy {
                        imin: s.imin,
                        multiple: m,
                    })
                } else {
                    well_behaved(s)
                };
                let ch = ChanDef::real_time(name, i as u32 + 1, *s, load);
                sc.channels.push(ch.with_overflow(OverflowPolicy::Block));
                retry.push(!violates);
            }
            sc.channels.push(ChanDef::best_effort(
                "best-effort",
                100,
                BE_LEN,
                be_load(50),
            ));
            retry.push(false);
            let o = Bed::new("p")?.run(&sc, &retry)?;
            mode = o.mode.clone();
            let r = &o.run;
            let be = r.chan("best-effort").goodput_mbps(dur);
            for (i, (name, s)) in specs.iter().enumerate() {
                let c = r.chan(name);
                let v = o.verdict(i);
                let ratio = c.rate_vs_spec(dur).unwrap_or(0.0);
                t.row(vec![
                    backend.to_string(),
                    label.to_string(),
                    m.to_string(),
                    name.to_string(),
                    c.offered.to_string(),
                    c.accepted.to_string(),
                    c.blocked.to_string(),
                    c.delivered.to_string(),
                    f(ratio, 4),
                    f(c.max_latency as f64 / 1e6, 3),
                    f(c.p99_latency as f64 / 1e6, 3),
                    f(s.end_to_end_deadline as f64 / 1e6, 1),
                    c.misses.to_string(),
                    v.excused.to_string(),
                    v.unexcused.to_string(),
                    c.late_packets.to_string(),
                    c.lost.to_string(),
                    o.retries[i].to_string(),
                    f(be, 1),
                    f(o.preempted.total() as f64 / 1e6, 2),
                    f(o.tx_stalls.longest as f64 / 1e6, 2),
                    f(o.rx_stalls.longest as f64 / 1e6, 2),
                ]);
                delays[i].push((m as f64, c.max_latency as f64 / 1e6));
                if *name == "violator" {
                    vrate.push((m as f64, ratio));
                    rep.check(
                        c.accepted + c.blocked == c.offered && (m == 1 || wc || c.blocked > 0),
                        format!(
                            "veth {label} {m}x: violator's excess counted: offered {} = \
                             accepted {} + blocked {}",
                            c.offered, c.accepted, c.blocked
                        ),
                    );
                    if wc && m >= 2 {
                        rep.check(
                            ratio > 1.2,
                            format!(
                                "veth {label} {m}x: violator gets more than its spec from the \
                                 slack ({ratio:.2}x)"
                            ),
                        );
                    } else {
                        rep.check(
                            (0.85..=1.05).contains(&ratio),
                            format!("veth {label} {m}x: violator gets its spec ({ratio:.3}x)"),
                        );
                    }
                } else {
                    rep.check(
                        v.unexcused == 0 && c.lost == 0 && c.delivered == c.accepted,
                        format!(
                            "veth {label} {m}x: {name}: {} misses (max delay {:.2} ms vs D {:.0} \
                             ms; {v}), {} lost, delivered {} of {}",
                            c.misses,
                            c.max_latency as f64 / 1e6,
                            s.end_to_end_deadline as f64 / 1e6,
                            c.lost,
                            c.delivered,
                            c.accepted
                        ),
                    );
                }
            }
            let vc = r.chan("violator");
            rep.note(format!(
                "[{backend}] {label} {m}x: violator {:.2}x spec, {} blocked; BE {be:.1} Mb/s; \
                 well-behaved max delays {}; {}",
                vc.rate_vs_spec(dur).unwrap_or(0.0),
                vc.blocked,
                specs
                    .iter()
                    .filter(|(n, _)| *n != "violator")
                    .map(|(n, _)| format!("{n} {:.2} ms", r.chan(n).max_latency as f64 / 1e6))
                    .collect::<Vec<_>>()
                    .join(", "),
                noise_note(&o)
            ));
        }
        if !wc {
            for (i, (name, _)) in specs.iter().enumerate() {
                if *name != "violator" {
                    delay_plot.push(Series::measured(
                        format!("{name}: max delay"),
                        delays[i].clone(),
                    ));
                }
            }
            delay_plot.push(Series::reference(
                "bound D (all channels)",
                multiples.iter().map(|&m| (m as f64, 50.0)).collect(),
            ));
        }
        rate_plot.push(Series::measured(
            format!("violator rate / spec ({label})"),
            vrate,
        ));
    }
    rep.note(format!("ports: {mode}"));
    rep.csv(opts, "overload-veth.csv", &t)?;
    rep.plot(
        opts,
        "overload-veth.svg",
        &Chart {
            title: format!(
                "Overload protection on veth ({backend}, real time): well-behaved max delay"
            ),
            x: "violator's submission rate, multiple of its spec".into(),
            y: "largest delay, ms (log)".into(),
            log_x: false,
            log_y: true,
        },
        &delay_plot,
    )?;
    rep.plot(
        opts,
        "overload-violator-veth.svg",
        &Chart {
            title: format!("Overload protection on veth ({backend}): what the violator gets"),
            x: "violator's submission rate, multiple of its spec".into(),
            y: "delivered rate / spec rate".into(),
            log_x: false,
            log_y: false,
        },
        &rate_plot,
    )?;
    Ok(rep)
}
