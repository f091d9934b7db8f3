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
//!
//! Written once for every [`Bed`], at the bed's scale (`Scale`). On veth every time is 100
//! times longer and the link 100 times slower (10 Gb/s → 100 Mb/s): the sending core is made
//! CPU-bound by 200 µs of emulated processing per packet, spun on the real CPU; admission is
//! told 10 µs more per packet for the real code around it, and its bound d gets the machine's
//! allowance (10 ms on the host, 40 ms more end to end) for the run. There the host side is
//! checked against admission's own bound through the tight channel's *median* host delay (a
//! largest one measures the machine's stalls), every channel must keep its bounds (no miss
//! measured OS preemption does not excuse), and the median must grow with k.

use super::bed::{Bed, Profile};
use super::bounds::{self, RtReq};
use super::out::{f, Chart, Series};
use super::world::{self, ChanDef, Load, Scenario};
use super::{bed_table, Link, Opts, Report, MS, US};
use dataplane::spec::ChannelSpec;
use dataplane::time::{tsc_per_us, Nanos};

/// The virtual-time link: 10 Gb/s.
const LINK: u64 = 10_000_000_000;
/// Protocol processing per packet in virtual time, ns.
const PER_PACKET: u64 = 2_000;
/// The virtual clock's step between idle polls, ns.
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

/// Emulated protocol processing per packet on veth: the virtual-time 2 µs, with every time
/// 100 times longer and the link 100 times slower (10 Gb/s → 100 Mb/s), so a full frame takes
/// 0.6 of it on the wire, as there.
pub const VETH_PER_PACKET: Nanos = 200 * US;
/// The per-packet cost admission is told on veth: the emulated processing plus 10 µs for the
/// real code around it (writing the frame, the AF_XDP kick; a few µs in a release build).
const VETH_MODEL_PER_PACKET: Nanos = VETH_PER_PACKET + 10 * US;
/// The longest background chunk admission is told on veth: the 1 µs step, times 100 (an idle
/// poll's 20 µs sleep overshoots to about this).
const VETH_STEP: Nanos = 100 * US;
/// The loop's service interval and TX window on veth, scaled like every other time (100 times
/// the cores' 20 µs and 4 µs): the service phase admission is told ([`VETH_STEP`]) must fit in
/// the interval, and the cores run at the intervals admission charges.
const VETH_SERVICE_INTERVAL: Nanos = 100 * dataplane::core::SERVICE_INTERVAL_NS;
const VETH_TX_WINDOW: Nanos = 100 * dataplane::core::TX_WINDOW_NS;
/// The machine's allowance on the host bound on veth (the veth runs' d = 10 ms).
pub const MACHINE_HOST: Nanos = 10 * MS;
/// The machine's further allowance end to end on veth (the veth runs' D − d = 40 ms).
pub const MACHINE_E2E: Nanos = 40 * MS;

/// The large channels on veth: the virtual-time ones, every time 100 times longer.
fn veth_others() -> Vec<(&'static str, RtReq)> {
    let big = RtReq {
        mmax: 64_000,
        imin: 50 * MS,
        bmax: 2,
        d: 200 * MS,
    };
    vec![
        ("big-a", big),
        ("big-b", big),
        (
            "mid",
            RtReq {
                mmax: 16_000,
                imin: 10 * MS,
                bmax: 2,
                d: 100 * MS,
            },
        ),
    ]
}

/// The tight channel on veth: one 64-byte message every 2 ms (ten times the scaled rate, for
/// enough samples per run); its d is admission's tightest.
const VETH_TIGHT: RtReq = RtReq {
    mmax: 64,
    imin: 2 * MS,
    bmax: 1,
    d: 0,
};

/// The experiment at one bed's scale.
struct Scale {
    link_bps: u64,
    /// The CPU's cost per packet (virtual, or spun on veth).
    per_packet: Nanos,
    /// What admission is told a packet costs.
    model_per_packet: Nanos,
    /// The longest background chunk admission is told (the virtual clock's step).
    step: Nanos,
    /// Service interval and TX window when scaled (veth), else the cores' own.
    intervals: Option<(Nanos, Nanos)>,
    others: Vec<(&'static str, RtReq)>,
    tight: RtReq,
    /// The machine's allowance added to admission's host and end-to-end bounds.
    machine: (Nanos, Nanos),
    duration: Nanos,
    ks: Vec<u32>,
}

impl Scale {
    fn of(bed: &Profile, quick: bool) -> Self {
        let ks = |q: Vec<u32>| if quick { q } else { vec![1, 2, 4, 8, 16] };
        match bed.link {
            Link::Mem => Self {
                link_bps: LINK,
                per_packet: PER_PACKET,
                model_per_packet: PER_PACKET,
                step: STEP,
                intervals: None,
                others: others(),
                tight: TIGHT,
                machine: (0, 0),
                duration: if quick { 20 * MS } else { 300 * MS },
                ks: ks(vec![1, 4, 16]),
            },
            Link::Veth | Link::Dpdk | Link::Daemons => Self {
                link_bps: bed.link_bps,
                per_packet: VETH_PER_PACKET,
                model_per_packet: VETH_MODEL_PER_PACKET,
                step: VETH_STEP,
                intervals: Some((VETH_SERVICE_INTERVAL, VETH_TX_WINDOW)),
                others: veth_others(),
                tight: VETH_TIGHT,
                machine: (MACHINE_HOST, MACHINE_E2E),
                duration: if quick { 500 * MS } else { 2000 * MS },
                ks: ks(vec![1, 16]),
            },
        }
    }
}

/// Runs experiment 4 on `bed`.
pub fn run(opts: &Opts, bed: &mut dyn Bed) -> Result<Report, String> {
    let mut rep = Report::new("granularity");
    let prof = bed.profile().clone();
    let (u, un, tag) = (prof.unit, prof.unit.name(), prof.tag());
    let sc_ = Scale::of(&prof, opts.quick);
    let duration = sc_.duration;
    // Packets per second over the time the core sent (on veth the drain too).
    let sent_over = duration
        + if prof.real_time() {
            super::veth::DRAIN
        } else {
            0
        };
    let mut t = bed_table(
        &prof,
        &[
            "backend",
            "k",
            "in_flight_frames",
            "admission_d_{u}",
            "host_bound_{u}",
            "e2e_bound_D_{u}",
            "tight_host_p50_{u}",
            "tight_host_p90_{u}",
            "tight_host_p99_{u}",
            "tight_host_max_{u}",
            "tight_within_admission_d",
            "tight_e2e_p50_{u}",
            "tight_e2e_p99_{u}",
            "tight_e2e_max_{u}",
            "tight_messages",
            "tight_deadline_misses",
            "tight_late_packets",
            "others_misses",
            "others_late_packets",
            "packets_per_s",
            "runs_per_packet",
            "switches_per_packet",
            "cpu_busy",
        ],
    );
    let (mut s_p50, mut s_p90, mut s_max, mut s_e2e) = (vec![], vec![], vec![], vec![]);
    let (mut s_adm, mut s_host, mut s_runs, mut s_sw, mut s_kpps) =
        (vec![], vec![], vec![], vec![], vec![]);
    // (k, admission's d, the tight channel's largest e2e delay, its median host delay, runs
    // per packet)
    let mut rows: Vec<(u32, Nanos, Nanos, Nanos, f64)> = Vec::new();
    let mut mode = String::new();
    // The k values, plus (full runs in virtual time) k = 16 with a NIC too shallow for its
    // runs, to show why the in-flight limit must cover a run: (k, frames in flight, part of
    // the main series).
    let mut cases: Vec<(u32, u64, bool)> = sc_
        .ks
        .iter()
        .map(|&k| (k, in_flight_frames(k), true))
        .collect();
    if !opts.quick && !prof.real_time() {
        cases.push((16, 2, false));
    }
    for &(k, frames, main) in &cases {
        let mut model = bounds::model(sc_.link_bps, sc_.model_per_packet, k, sc_.step, false, 0);
        let mut cfg = world::core_config(k, false, 0);
        cfg.link.link_rate_bps = sc_.link_bps;
        if let Some((interval, window)) = sc_.intervals {
            model.service_interval_ns = interval;
            model.tx_window_ns = window;
            cfg.service_interval = interval;
            cfg.tx_window = window;
            cfg.link.capacity = 512;
            // A run of k packets takes k x 200 µs: the budget must not cut it short.
            cfg.sched.run_budget_cycles = 100 * MS / 1000 * tsc_per_us();
        }
        // The link scheduler is served at preemption points only: the NIC must hold enough
        // to stay busy through the longest handler run (k packets), or the link idles during
        // runs. Its depth adds to the end-to-end allowance, not to the host bound.
        cfg.link.in_flight_limit = frames * 1538;
        let allowance = world::network_allowance(&cfg, sc_.link_bps, sc_.step);
        let before: Vec<RtReq> = sc_.others.iter().map(|o| o.1).collect();
        let d = bounds::tightest(&model, &before, &sc_.tight)
            .ok_or_else(|| format!("k={k}: admission grants the tight channel no bound"))?;
        let mut reqs = before.clone();
        reqs.push(RtReq { d, ..sc_.tight });
        let (host, e2e) = sc_.machine;
        let specs: Vec<ChannelSpec> = bounds::admit_all(&model, &reqs, allowance)?
            .into_iter()
            .map(|s| ChannelSpec {
                link_deadline: s.link_deadline + host,
                end_to_end_deadline: s.end_to_end_deadline + host + e2e,
                ..s
            })
            .collect();
        let mut sc = Scenario::new(cfg, sc_.link_bps, sc_.per_packet, duration);
        sc.step = sc_.step;
        let names: Vec<&str> = sc_
            .others
            .iter()
            .map(|o| o.0)
            .chain(std::iter::once("tight"))
            .collect();
        for (i, (name, s)) in names.iter().zip(&specs).enumerate() {
            sc.channels.push(ChanDef::real_time(
                name,
                i as u32 + 1,
                *s,
                prof.well_behaved(s),
            ));
        }
        sc.channels
            .push(ChanDef::best_effort("best-effort", 100, 8000, Load::Flood));
        let p = bed.run(&sc)?;
        mode = p.mode().to_string();
        let r = p.run();
        if std::env::var_os("RTCHAN_EVAL_DEBUG").is_some() {
            eprintln!("k={k} core {:?} link {:?}", r.core, r.link);
            for c in &r.chans {
                eprintln!("  {c:?}");
            }
        }
        let ti = names.len() - 1;
        let tight = r.chan("tight");
        let tspec = specs[ti];
        let hd = &r.host_delay[ti];
        let (p50, p90, p99) = (
            hd.value_at_quantile(0.5),
            hd.value_at_quantile(0.9),
            hd.value_at_quantile(0.99),
        );
        let within = if !hd.is_empty() {
            hd.count_between(0, d) as f64 / hd.len() as f64
        } else {
            0.0
        };
        let e2e_p50 = r.latency[ti].value_at_quantile(0.5);
        let others_misses: u64 = r.chans[..ti].iter().map(|c| c.misses).sum();
        let others_late: u64 = r.chans[..ti].iter().map(|c| c.late_packets).sum();
        let pps = r.core.packets as f64 * 1e9 / sent_over as f64;
        let runs_pp = r.core.runs as f64 / r.core.packets.max(1) as f64;
        let sw_pp = r.core.switches as f64 / r.core.packets.max(1) as f64;
        let busy = r.core.packets as f64 * sc_.per_packet as f64 / sent_over as f64;
        let mut row = vec![
            prof.backend.to_string(),
            k.to_string(),
            (cfg.link.in_flight_limit / 1538).to_string(),
        ];
        for x in [
            d,
            tspec.link_deadline,
            tspec.end_to_end_deadline,
            p50,
            p90,
            p99,
            tight.max_host_delay,
        ] {
            row.push(f(u.of(x), 3));
        }
        row.push(f(within, 4));
        for x in [e2e_p50, tight.p99_latency, tight.max_latency] {
            row.push(f(u.of(x), 3));
        }
        row.extend([
            tight.delivered.to_string(),
            tight.misses.to_string(),
            tight.late_packets.to_string(),
            others_misses.to_string(),
            others_late.to_string(),
            f(pps, 0),
            f(runs_pp, 4),
            f(sw_pp, 4),
            f(busy, 4),
        ]);
        row.extend(p.noise_cells(None));
        t.row(row);
        if !main {
            rep.note(format!(
                "k={k} with only {frames} frames in flight (the link idles during runs): \
                 tight channel max host delay {:.1} {un} vs d {:.1} {un}, {} late packets, \
                 large channels {} misses + late packets, {:.0} kpkt/s",
                u.of(tight.max_host_delay),
                u.of(d),
                tight.late_packets,
                others_misses + others_late,
                pps / 1e3
            ));
            continue;
        }
        rep.note(format!(
            "[{}] k={k}: admission's d {:.2} {un} (run with d {:.2} {un}, D {:.2} {un}); tight \
             host delay p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} {un}, {:.1}% within \
             admission's d; e2e p50 {:.2} max {:.2} {un}; {:.3} runs and {:.3} switches per \
             packet, {:.2} kpkt/s, CPU {:.0}% busy{}",
            prof.backend,
            u.of(d),
            u.of(tspec.link_deadline),
            u.of(tspec.end_to_end_deadline),
            u.of(p50),
            u.of(p90),
            u.of(p99),
            u.of(tight.max_host_delay),
            within * 100.0,
            u.of(e2e_p50),
            u.of(tight.max_latency),
            runs_pp,
            sw_pp,
            pps / 1e3,
            busy * 100.0,
            p.noise_note()
        ));
        match prof.link {
            // Exact: the tight channel within admission's bound at every message, and the
            // large channels miss nothing.
            Link::Mem => {
                rep.check(
                    tight.misses == 0
                        && tight.late_packets == 0
                        && tight.max_latency <= tspec.end_to_end_deadline,
                    format!(
                        "k={k}: tight channel within admission's bound: host {:.1} us (late \
                         packets {}) vs d {:.1} us; end to end {:.1} us vs {:.1} us, {} misses",
                        u.of(tight.max_host_delay),
                        tight.late_packets,
                        u.of(d),
                        u.of(tight.max_latency),
                        u.of(tspec.end_to_end_deadline),
                        tight.misses
                    ),
                );
                rep.check(
                    others_misses + others_late == 0,
                    format!(
                        "k={k}: the large channels miss nothing ({} misses + late packets)",
                        others_misses + others_late
                    ),
                );
            }
            // Real time: the median host delay within admission's own bound (no machine
            // allowance), and every channel within the run's bounds.
            Link::Veth | Link::Dpdk | Link::Daemons => {
                rep.check(
                    tight.delivered > 0 && p50 <= d,
                    format!(
                        "{tag}k={k}: the tight channel's median host delay {:.3} ms is within \
                         admission's bound d {:.3} ms (no machine allowance; {} messages)",
                        u.of(p50),
                        u.of(d),
                        tight.delivered
                    ),
                );
                for (i, name) in names.iter().enumerate() {
                    let c = r.chan(name);
                    let (ok, w) = p.within_bounds(i, &specs[i], u);
                    rep.check(
                        ok && c.delivered == c.accepted && c.lost == 0,
                        format!(
                            "{tag}k={k}: {name}: {w}; delivered {} of {}, {} lost",
                            c.delivered, c.accepted, c.lost
                        ),
                    );
                }
            }
        }
        if let Some((ok, w)) = p.port_check(&format!("{tag}k={k}")) {
            rep.check(ok, w);
        }
        s_p50.push((k as f64, u.of(p50)));
        s_p90.push((k as f64, u.of(p90)));
        s_max.push((k as f64, u.of(tight.max_host_delay)));
        s_e2e.push((k as f64, u.of(tight.max_latency)));
        s_adm.push((k as f64, u.of(d)));
        s_host.push((k as f64, u.of(tspec.link_deadline)));
        s_runs.push((k as f64, runs_pp));
        s_sw.push((k as f64, sw_pp));
        s_kpps.push((k as f64, pps / 1e3));
        rows.push((k, d, tight.max_latency, p50, runs_pp));
    }
    if !mode.is_empty() {
        rep.note(format!("ports: {mode}"));
    }
    rep.csv(opts, &prof.file("granularity", "csv"), &t)?;
    let mut series = vec![
        Series::measured("measured: median, submit to release of the packet", s_p50),
        Series::measured("measured: 90th percentile", s_p90),
        Series::measured("measured: largest, submit to release", s_max),
        Series::measured("measured: largest end to end", s_e2e),
        Series::reference("admission's bound d for this k", s_adm),
    ];
    if prof.real_time() {
        series.push(Series::reference(
            "d + 10 ms machine allowance: the run's host bound",
            s_host,
        ));
    }
    rep.plot(
        opts,
        &prof.file("granularity", "svg"),
        &Chart {
            title: format!(
                "Preemption granularity{}: the tight channel's delay vs admission's bound",
                prof.title_tag()
            ),
            x: "granularity k, packets per handler run (log)".into(),
            y: format!("delay, {un}"),
            log_x: true,
            log_y: prof.real_time(),
        },
        &series,
    )?;
    rep.plot(
        opts,
        &prof.file("granularity-overhead", "svg"),
        &Chart {
            title: format!(
                "Preemption granularity{}: preemption points, switches, throughput",
                prof.title_tag()
            ),
            x: "granularity k, packets per handler run (log)".into(),
            y: "per packet / kpkt/s".into(),
            log_x: true,
            log_y: false,
        },
        &[
            Series::measured("handler runs (preemption points) / packet", s_runs),
            Series::measured("switches to another handler / packet", s_sw),
            Series::measured("packets written, kpkt/s", s_kpps),
        ],
    )?;
    // Trends: coarser granularity, looser bound, larger delay, fewer switches.
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    rep.check(
        rows.windows(2).all(|w| w[1].1 >= w[0].1) && last.1 > first.1,
        format!(
            "{tag}admission's bound grows with k: {:.2} {un} at k={} to {:.2} {un} at k={}",
            u.of(first.1),
            first.0,
            u.of(last.1),
            last.0
        ),
    );
    match prof.link {
        Link::Mem => rep.check(
            last.2 > first.2,
            format!(
                "the measured largest delay grows with k: {:.1} us at k={} to {:.1} us at k={}",
                u.of(first.2),
                first.0,
                u.of(last.2),
                last.0
            ),
        ),
        // The largest delay on veth is the machine's; the median is the core's.
        Link::Veth | Link::Dpdk | Link::Daemons => rep.check(
            last.3 > 2 * first.3,
            format!(
                "{tag}the tight channel's median host delay grows with k: {:.3} ms at k={} \
                 to {:.3} ms at k={} (more than twice)",
                u.of(first.3),
                first.0,
                u.of(last.3),
                last.0
            ),
        ),
    }
    rep.check(
        last.4 < first.4,
        format!(
            "{tag}preemption points per packet fall with k: {:.3} at k={} to {:.3} at k={}",
            first.4, first.0, last.4, last.0
        ),
    );
    Ok(rep)
}
