//! Experiment 6, baselines on the same runs: what breaks without each mechanism.
//!
//! Two runs from experiments 1 and 2, each under three dataplanes:
//! - **flood**: the four channels of experiment 1 at their specs, best-effort at 150 % of the
//!   link;
//! - **violator**: the same plus the violator of experiment 2 at 10x its rate (1.7 times the link
//!   on its own), best-effort at 50 %.
//!
//! Dataplanes:
//! - **rtchan**: three classes, EDF, traffic enforcement;
//! - **FIFO, no QoS**: `CoreConfig::fifo_baseline()`: one FIFO of handlers on the CPU, one FIFO
//!   of packets at the link, no enforcement (logical arrival = submission);
//! - **priority, no enforcement**: the dataplane has no such mode, so it is emulated by opening
//!   the real-time channels with Imin = 1 ns (deadlines and admission unchanged): logical arrival
//!   then equals submission, every real-time message is current at once and runs by EDF ahead of
//!   best-effort; nothing limits a channel to its spec.
//!
//! Expected: FIFO misses under the flood (real-time waits behind best-effort) and under the
//! violator; priority without enforcement survives the flood but not the violator, whose
//! excess takes the link from the well-behaved channels; rtchan misses nothing in either.

use super::exp_overload::{scenario, VIOLATOR};
use super::exp_qos::setup;
use super::out::{bar_chart, f, Csv};
use super::world;
use super::{Opts, Report, MS};
use dataplane::spec::{OverflowPolicy, TrafficClass};

/// The dataplane a baseline run uses (shared with the veth variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Rtchan,
    Fifo,
    NoEnforcement,
}

impl Mode {
    pub(super) fn label(self) -> &'static str {
        match self {
            Mode::Rtchan => "rtchan",
            Mode::Fifo => "FIFO, no QoS",
            Mode::NoEnforcement => "priority, no enforcement",
        }
    }
}

/// Runs experiment 6.
pub fn run(opts: &Opts) -> Result<Report, String> {
    let mut rep = Report::new("baselines");
    let duration = if opts.quick { 20 * MS } else { 200 * MS };
    let mut t = Csv::new(&[
        "run",
        "dataplane",
        "channel",
        "delivered",
        "rate_vs_spec",
        "deadline_misses",
        "miss_pct",
        "max_delay_us",
        "bound_D_us",
        "be_goodput_mbps",
    ]);
    let mut bars = Vec::new();
    for run in ["flood", "violator"] {
        let extra = if run == "violator" {
            vec![("violator", VIOLATOR)]
        } else {
            Vec::new()
        };
        let (cfg, specs) = setup(0, false, &extra)?;
        for mode in [Mode::Rtchan, Mode::Fifo, Mode::NoEnforcement] {
            let mut c = cfg;
            if mode == Mode::Fifo {
                c = c.fifo_baseline();
            }
            let (mult, be) = if run == "violator" {
                (10, 50)
            } else {
                (1, 150)
            };
            let mut sc = scenario(&specs, c, mult, OverflowPolicy::Block, be, duration);
            if mode == Mode::NoEnforcement {
                for ch in &mut sc.channels {
                    if let TrafficClass::RealTime(s) = &mut ch.config.class {
                        s.imin = 1;
                    }
                }
            }
            let r = world::run(&sc);
            let be_mbps = r.chan("best-effort").goodput_mbps(duration);
            let (mut misses, mut delivered) = (0u64, 0u64);
            for (name, s) in &specs {
                let ch = r.chan(name);
                let pct = 100.0 * ch.misses as f64 / ch.delivered.max(1) as f64;
                t.row(vec![
                    run.to_string(),
                    mode.label().to_string(),
                    name.to_string(),
                    ch.delivered.to_string(),
                    f(ch.delivered as f64 / (duration as f64 / s.imin as f64), 4),
                    ch.misses.to_string(),
                    f(pct, 2),
                    f(ch.max_latency as f64 / 1e3, 1),
                    f(s.end_to_end_deadline as f64 / 1e3, 1),
                    f(be_mbps, 1),
                ]);
                if *name != "violator" {
                    misses += ch.misses;
                    delivered += ch.delivered;
                }
            }
            let pct = 100.0 * misses as f64 / delivered.max(1) as f64;
            bars.push((format!("{run}: {}", mode.label()), pct));
            rep.note(format!(
                "{run}, {}: well-behaved channels missed {misses} of {delivered} ({pct:.1}%), \
                 largest delay/D {}; best-effort {be_mbps:.0} Mb/s",
                mode.label(),
                specs
                    .iter()
                    .filter(|(n, _)| *n != "violator")
                    .map(|(n, s)| format!(
                        "{n} {:.0}/{:.0} us",
                        r.chan(n).max_latency as f64 / 1e3,
                        s.end_to_end_deadline as f64 / 1e3
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            let expect_misses = match (mode, run) {
                (Mode::Rtchan, _) => false,
                (Mode::Fifo, _) => true,
                (Mode::NoEnforcement, "violator") => true,
                (Mode::NoEnforcement, _) => false,
            };
            rep.check(
                (misses > 0) == expect_misses,
                format!(
                    "{run}, {}: well-behaved channels {} ({misses} misses)",
                    mode.label(),
                    if expect_misses {
                        "miss deadlines"
                    } else {
                        "miss nothing"
                    }
                ),
            );
        }
    }
    rep.csv(opts, "baselines.csv", &t)?;
    let p = opts.out.join("baselines.svg");
    bar_chart(
        &p,
        "Baselines: deadline misses of the well-behaved real-time channels",
        "% of delivered messages past their deadline",
        &bars,
    )?;
    rep.files.push(p);
    Ok(rep)
}
