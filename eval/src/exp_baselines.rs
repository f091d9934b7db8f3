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
//!
//! Written once for every [`Bed`]. On veth the channels are experiment 1's veth set with a
//! NIC-ring-sized link queue (at 100 Mb/s its 1024 frames are 121 ms, longer than D, so a FIFO
//! backlog can make messages late); a baseline there must miss at least half its messages'
//! deadlines, and rtchan none that measured OS preemption does not excuse.

use super::bed::Bed;
use super::exp_overload::{scenario, VIOLATOR};
use super::exp_qos::setup;
use super::out::f;
use super::world::LINK_CAPACITY;
use super::{bed_table, per_bed, Link, Opts, Report, MS};
use dataplane::spec::{OverflowPolicy, TrafficClass};

/// The dataplane a baseline run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Rtchan,
    Fifo,
    NoEnforcement,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Rtchan => "rtchan",
            Mode::Fifo => "FIFO, no QoS",
            Mode::NoEnforcement => "priority, no enforcement",
        }
    }
}

/// Runs experiment 6 on `bed`.
pub fn run(opts: &Opts, bed: &mut dyn Bed) -> Result<Report, String> {
    let mut rep = Report::new("baselines");
    let prof = bed.profile().clone();
    let (u, un, tag) = (prof.unit, prof.unit.name(), prof.tag());
    let duration = per_bed(&prof, opts.quick, (20, 200), (500, 1500)) * MS;
    let mut t = bed_table(
        &prof,
        &[
            "backend",
            "run",
            "dataplane",
            "channel",
            "offered",
            "delivered",
            "rate_vs_spec",
            "deadline_misses",
            "miss_pct",
            "late_packets",
            "max_delay_{u}",
            "max_host_delay_{u}",
            "bound_D_{u}",
            "largest_lateness_{u}",
            "be_goodput_mbps",
        ],
    );
    let mut bars = Vec::new();
    let mut mode_s = String::new();
    let mut be_rtchan = [0.0f64; 2];
    for (ri, run) in ["flood", "violator"].into_iter().enumerate() {
        let violator = (run == "violator").then_some(VIOLATOR);
        let (mut cfg, specs, per_packet) = setup(&prof, false, violator)?;
        if prof.real_time() {
            cfg.link.capacity = LINK_CAPACITY;
        }
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
            let mut sc = scenario(
                &prof,
                &specs,
                (c, per_packet),
                mult,
                OverflowPolicy::Block,
                be,
                duration,
            );
            if mode == Mode::NoEnforcement {
                for ch in &mut sc.channels {
                    if let TrafficClass::RealTime(s) = &mut ch.config.class {
                        s.imin = 1;
                    }
                }
            }
            let p = bed.run(&sc)?;
            mode_s = p.mode().to_string();
            let r = p.run();
            // While the applications submitted (on veth the drain's backlog left out).
            let be_mbps = p.window_mbps(specs.len());
            if mode == Mode::Rtchan {
                be_rtchan[ri] = be_mbps;
            }
            let (mut misses, mut delivered) = (0u64, 0u64);
            let mut explained = true;
            let mut words = Vec::new();
            for (i, (name, s)) in specs.iter().enumerate() {
                let ch = r.chan(name);
                let pct = 100.0 * ch.misses as f64 / ch.delivered.max(1) as f64;
                let mut row = vec![
                    prof.backend.to_string(),
                    run.to_string(),
                    mode.label().to_string(),
                    name.to_string(),
                    ch.offered.to_string(),
                    ch.delivered.to_string(),
                    f(p.window(i).0 as f64 / (duration as f64 / s.imin as f64), 4),
                    ch.misses.to_string(),
                    f(pct, 2),
                    ch.late_packets.to_string(),
                ];
                for x in [
                    ch.max_latency,
                    ch.max_host_delay,
                    s.end_to_end_deadline,
                    p.overrun(i),
                ] {
                    row.push(f(u.of(x), u.prec()));
                }
                row.push(f(be_mbps, 2));
                row.extend(p.noise_cells(Some(i)));
                t.row(row);
                if *name != "violator" {
                    misses += ch.misses;
                    delivered += ch.delivered;
                    let (ok, w) = p.within_bounds(i, s, u);
                    explained &= ok;
                    words.push(format!("{name}: {w}"));
                }
            }
            let pct = 100.0 * misses as f64 / delivered.max(1) as f64;
            bars.push((format!("{run}: {}", mode.label()), pct));
            rep.note(format!(
                "[{}] {run}, {}: well-behaved channels missed {misses} of {delivered} \
                 ({pct:.1}%), largest delay/D {}; best-effort {be_mbps:.1} Mb/s{}",
                prof.backend,
                mode.label(),
                specs
                    .iter()
                    .filter(|(n, _)| *n != "violator")
                    .map(|(n, s)| format!(
                        "{n} {:.1}/{:.1} {un}",
                        u.of(r.chan(n).max_latency),
                        u.of(s.end_to_end_deadline)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.noise_note()
            ));
            let breaks = matches!(
                (mode, run),
                (Mode::Fifo, _) | (Mode::NoEnforcement, "violator")
            );
            match (breaks, prof.link) {
                // Virtual time: a baseline misses, rtchan misses nothing.
                (true, Link::Mem) => rep.check(
                    misses > 0,
                    format!(
                        "{run}, {}: well-behaved channels miss deadlines ({misses} misses)",
                        mode.label()
                    ),
                ),
                // Real time: a baseline's misses must stand far above the machine's.
                (true, _) => rep.check(
                    pct >= 50.0,
                    format!(
                        "{tag}{run}, {}: the well-behaved channels miss deadlines: {misses} of \
                         {delivered} ({pct:.1}% >= 50%)",
                        mode.label()
                    ),
                ),
                (false, _) => rep.check(
                    explained,
                    format!(
                        "{tag}{run}, {}: the well-behaved channels miss nothing measured \
                         preemption does not excuse: {}",
                        mode.label(),
                        words.join("; ")
                    ),
                ),
            }
            if mode == Mode::NoEnforcement && run == "violator" {
                rep.check(
                    be_mbps <= 0.1 * be_rtchan[ri],
                    format!(
                        "{tag}violator, priority without enforcement starves best-effort: \
                         {be_mbps:.1} Mb/s (<= 10% of rtchan's {:.1})",
                        be_rtchan[ri]
                    ),
                );
            }
            // Reported, not checked (the veth baselines never were): the baselines' own
            // overload may overflow a ring.
            if let Some((_, w)) = p.port_check(&format!("{tag}{run}, {}", mode.label())) {
                rep.note(w);
            }
        }
    }
    if !mode_s.is_empty() {
        rep.note(format!("ports: {mode_s}"));
    }
    rep.csv(opts, &prof.file("baselines", "csv"), &t)?;
    rep.bars(
        opts,
        &prof.file("baselines", "svg"),
        (
            &format!(
                "Baselines{}: deadline misses of the well-behaved real-time channels",
                prof.title_tag()
            ),
            "% of delivered messages past their deadline",
        ),
        &bars,
    )?;
    Ok(rep)
}
