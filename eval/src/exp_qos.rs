//! Experiment 1, QoS maintenance: four real-time channels with different specs and deadlines,
//! admitted by the admission test, while best-effort load rises from nothing to twice the link.
//!
//! Each channel's delivered rate should stay at its spec (1/Imin), its largest end-to-end delay
//! under its bound D = d + the network allowance, no packet should leave after its link
//! deadline, and best-effort should take the rest of the link.

use super::bounds::{self, RtReq};
use super::out::{f, Chart, Csv, Series};
use super::world::{self, ChanDef, Load, Scenario, GBPS};
use super::{Opts, Report, MS, US};
use dataplane::core::CoreConfig;
use dataplane::source::Pattern;
use dataplane::spec::ChannelSpec;
use dataplane::time::Nanos;

/// Virtual CPU cost of a packet, ns.
pub const PER_PACKET: Nanos = 100;
/// Granularity of the experiment's core.
pub const K: u32 = 2;
/// Best-effort message size, bytes.
pub const BE_LEN: u32 = 1400;

/// The real-time channels of experiments 1, 2 and 6: name and request.
pub fn channels() -> Vec<(&'static str, RtReq)> {
    vec![
        (
            "sensor",
            RtReq {
                mmax: 64,
                imin: 50 * US,
                bmax: 4,
                d: 150 * US,
            },
        ),
        (
            "control",
            RtReq {
                mmax: 200,
                imin: 100 * US,
                bmax: 4,
                d: 300 * US,
            },
        ),
        (
            "video",
            RtReq {
                mmax: 4000,
                imin: 500 * US,
                bmax: 4,
                d: MS,
            },
        ),
        (
            "bulk",
            RtReq {
                mmax: 8000,
                imin: 2 * MS,
                bmax: 2,
                d: 2 * MS,
            },
        ),
    ]
}

/// Channel names with their admitted dataplane specs.
pub type NamedSpecs = Vec<(&'static str, ChannelSpec)>;

/// The core configuration and admitted specs shared with experiments 2 and 6: the channels of
/// [`channels`] plus `extra`, admitted in that order on a 1 Gb/s link.
pub fn setup(
    reserve_ppm: u32,
    work_conserving: bool,
    extra: &[(&'static str, RtReq)],
) -> Result<(CoreConfig, NamedSpecs), String> {
    let core = world::core_config(K, work_conserving, reserve_ppm);
    let mut cfg = core;
    cfg.link.link_rate_bps = GBPS;
    let allowance = world::network_allowance(&cfg, GBPS, 1_000);
    let model = bounds::model(GBPS, PER_PACKET, K, 1_000, work_conserving, reserve_ppm);
    let all: Vec<_> = channels()
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let reqs: Vec<RtReq> = all.iter().map(|c| c.1).collect();
    let specs = bounds::admit_all(&model, &reqs, allowance)?;
    Ok((cfg, all.iter().map(|c| c.0).zip(specs).collect()))
}

/// Periodic best-effort load of `pct` percent of a 1 Gb/s link in `BE_LEN`-byte messages.
pub fn be_load(pct: u32) -> Load {
    if pct == 0 {
        return Load::Idle;
    }
    let wire = world::message_wire_ns(BE_LEN, GBPS);
    Load::Pattern(Pattern::Periodic {
        interval: (wire * 100 / pct as u64).max(1),
    })
}

/// Runs experiment 1.
pub fn run(opts: &Opts) -> Result<Report, String> {
    let mut rep = Report::new("qos");
    let duration = if opts.quick { 20 * MS } else { 300 * MS };
    let loads: Vec<u32> = if opts.quick {
        vec![0, 50, 150]
    } else {
        vec![0, 25, 50, 75, 100, 150, 200]
    };
    let (cfg, specs) = setup(0, false, &[])?;
    let mut t = Csv::new(&[
        "be_load_pct",
        "channel",
        "imin_us",
        "spec_rate_per_s",
        "delivered_rate_per_s",
        "rate_vs_spec",
        "max_delay_us",
        "p99_delay_us",
        "bound_D_us",
        "host_bound_d_us",
        "max_host_delay_us",
        "deadline_misses",
        "late_packets",
        "lost",
        "be_goodput_mbps",
        "link_utilisation",
    ]);
    let mut delay_series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
    let mut rate_series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); specs.len()];
    let mut be_series = Vec::new();
    for &pct in &loads {
        let mut sc = Scenario::new(cfg, GBPS, PER_PACKET, duration);
        for (i, (name, s)) in specs.iter().enumerate() {
            sc.channels.push(ChanDef::real_time(
                name,
                i as u32 + 1,
                *s,
                Load::Pattern(Pattern::Periodic { interval: s.imin }),
            ));
        }
        sc.channels.push(ChanDef::best_effort(
            "best-effort",
            100,
            BE_LEN,
            be_load(pct),
        ));
        let r = world::run(&sc);
        let be = r.chan("best-effort");
        let be_mbps = be.goodput_mbps(duration);
        be_series.push((pct as f64, be_mbps));
        for (i, (name, s)) in specs.iter().enumerate() {
            let c = r.chan(name);
            let ratio = c.rate_vs_spec(duration).unwrap_or(0.0);
            t.row(vec![
                pct.to_string(),
                name.to_string(),
                f(s.imin as f64 / 1e3, 0),
                f(1e9 / s.imin as f64, 1),
                f(c.rate(duration), 1),
                f(ratio, 4),
                f(c.max_latency as f64 / 1e3, 2),
                f(c.p99_latency as f64 / 1e3, 2),
                f(s.end_to_end_deadline as f64 / 1e3, 2),
                f(s.link_deadline as f64 / 1e3, 2),
                f(c.max_host_delay as f64 / 1e3, 2),
                c.misses.to_string(),
                c.late_packets.to_string(),
                c.lost.to_string(),
                f(be_mbps, 1),
                f(r.link_utilisation, 4),
            ]);
            delay_series[i].push((pct as f64, c.max_latency as f64 / 1e3));
            rate_series[i].push((pct as f64, ratio * 100.0));
            // Everything submitted a bound before the end must have arrived.
            let expected = duration / s.imin - s.end_to_end_deadline.div_ceil(s.imin) - 1;
            rep.check(
                c.misses == 0
                    && c.late_packets == 0
                    && c.lost == 0
                    && c.max_latency <= s.end_to_end_deadline
                    && c.delivered >= expected,
                format!(
                    "BE {pct}%: {name}: {} misses, {} late packets, {} lost, max delay {:.1} us \
                     <= D {:.1} us, delivered {} >= {expected}",
                    c.misses,
                    c.late_packets,
                    c.lost,
                    c.max_latency as f64 / 1e3,
                    s.end_to_end_deadline as f64 / 1e3,
                    c.delivered
                ),
            );
        }
        if pct >= 100 {
            rep.check(
                r.link_utilisation >= 0.9,
                format!(
                    "BE {pct}%: the link is kept busy ({:.1}% utilised)",
                    r.link_utilisation * 100.0
                ),
            );
        }
        rep.note(format!(
            "BE {pct}% offered: BE goodput {be_mbps:.0} Mb/s, link {:.1}% busy, RT max delay/D: {}",
            r.link_utilisation * 100.0,
            specs
                .iter()
                .map(|(n, s)| format!(
                    "{n} {:.0}/{:.0} us",
                    r.chan(n).max_latency as f64 / 1e3,
                    s.end_to_end_deadline as f64 / 1e3
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    rep.csv(opts, "qos.csv", &t)?;
    let mut series = Vec::new();
    for (i, (name, s)) in specs.iter().enumerate() {
        series.push(Series::measured(
            format!("{name}: max delay"),
            delay_series[i].clone(),
        ));
        let d = s.end_to_end_deadline as f64 / 1e3;
        series.push(Series::reference(
            format!("{name}: bound D"),
            loads.iter().map(|&p| (p as f64, d)).collect(),
        ));
    }
    rep.plot(
        opts,
        "qos.svg",
        &Chart {
            title: "QoS maintenance: largest end-to-end delay vs best-effort load".into(),
            x: "best-effort load offered, % of the 1 Gb/s link".into(),
            y: "largest delay, us (log)".into(),
            log_x: false,
            log_y: true,
        },
        &series,
    )?;
    let mut rs: Vec<Series> = specs
        .iter()
        .enumerate()
        .map(|(i, (n, _))| {
            Series::measured(format!("{n}: rate, % of spec"), rate_series[i].clone())
        })
        .collect();
    rs.push(Series::measured(
        "best-effort goodput, Mb/s",
        be_series.clone(),
    ));
    rep.plot(
        opts,
        "qos-throughput.svg",
        &Chart {
            title: "QoS maintenance: real-time rates and best-effort goodput".into(),
            x: "best-effort load offered, % of the 1 Gb/s link".into(),
            y: "% of spec rate (real-time) / Mb/s (best-effort)".into(),
            log_x: false,
            log_y: false,
        },
        &rs,
    )?;
    Ok(rep)
}
