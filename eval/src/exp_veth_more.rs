//! Experiments 3 (fairness), 4 (granularity), 5 (overheads) and 6 (baselines) on veth, in real
//! time ([`super::veth`]): `rtchan-eval fairness|granularity|overheads|baselines --link veth`.
//!
//! The shapes of the memlink runs ([`super::exp_fairness`], [`super::exp_granularity`],
//! [`super::exp_overheads`], [`super::exp_baselines`]) scaled to the 100 Mb/s paced link the way
//! [`super::exp_veth`] scales experiments 1 and 2, with its bounds: every real-time channel has
//! a machine allowance for this VM's scheduler (d = 10 ms on the host, D = 50 ms end to end, or
//! for experiment 4 admission's bound plus 10 ms and 50 ms). A deadline miss fails a check
//! unless the polling threads' OS preemption, measured independently of them
//! ([`rtchan::preemption`]), covers its lateness within that message's own life (the rule the
//! veth tests use); excused and unexcused misses are reported separately. Packets released
//! after ℓ + d are reported, not checked, as in [`super::exp_veth`]; experiment 4 checks the
//! host side against admission's own bound instead, through the median host delay.

use super::bounds::{self, RtReq};
use super::exp_fairness;
use super::exp_overheads::{core_loop_on, ns, port_tx_on};
use super::exp_veth::{
    core_config, noise_note, probe, skipped, spec, well_behaved, BE_LEN, RATE_BPS,
};
use super::out::{bar_chart, f, Chart, Csv, Series};
use super::veth::{Backend, Bed, VethOut, DRAIN};
use super::world::{self, ChanDef, ChanOut, Load, Scenario};
use super::{Opts, Report, MS, US};
use dataplane::memlink::NullPort;
use dataplane::source::Pattern;
use dataplane::spec::ChannelSpec;
use dataplane::time::{tsc_per_us, Nanos};

/// Whether channel `i` has no deadline miss the measured OS preemption of the polling threads
/// does not excuse ([`VethOut::verdict`]), and the numbers in words. Packets released after
/// ℓ + d are reported, not checked, as in [`super::exp_veth`]: after a stall the backlog it left
/// takes time to drain, so a late packet can be late by more than the stall, and for an
/// application that submits ahead of its spec the host delay (counted from submission) also
/// holds the wait for its logical arrival.
fn within_bounds(o: &VethOut, i: usize, c: &ChanOut, s: &ChannelSpec) -> (bool, String) {
    let v = o.verdict(i);
    let mut w = format!(
        "{} misses (max delay {:.2} ms vs D {:.1} ms); {} packets after l + d (host delay {:.2} \
         ms vs d {:.2} ms, reported)",
        c.misses,
        c.max_latency as f64 / 1e6,
        s.end_to_end_deadline as f64 / 1e6,
        c.late_packets,
        c.max_host_delay as f64 / 1e6,
        s.link_deadline as f64 / 1e6
    );
    if c.misses > 0 {
        w.push_str(&format!(": {v}"));
    }
    (v.unexcused == 0, w)
}

fn ms(x: Nanos) -> f64 {
    x as f64 / 1e6
}

/// Channel `i`'s goodput while the applications submitted, Mb/s (the drain's backlog excluded).
fn window_mbps(o: &VethOut, i: usize) -> f64 {
    o.window[i].1 as f64 * 8e3 / o.run.duration as f64
}

/// The same per second the sending thread was running (its stalls over 250 µs, during which
/// the link cannot be fed, taken out): what the order gives, with the machine's share removed.
fn running_mbps(o: &VethOut, i: usize) -> f64 {
    let run = o.run.duration.saturating_sub(o.tx_stalled).max(1);
    o.window[i].1 as f64 * 8e3 / run as f64
}

// ---------------------------------------------------------------------------------------------
// Experiment 3: fairness.

/// Experiment 3 on veth: three real-time channels of one 1400-byte message per ms each (about
/// 36 % of the link together) submitting at 1x–8x their rate beside a best-effort flood, under
/// the orders of the memlink run.
pub fn run_fairness(opts: &Opts) -> Result<Report, String> {
    if let Some(r) = skipped("fairness") {
        return Ok(r);
    }
    let mut rep = Report::new("fairness");
    let backend = probe(&mut rep, "f")?;
    let dur = if opts.quick { 500 * MS } else { 1000 * MS };
    let (multiples, policies) = exp_fairness::sweep(opts.quick);
    let rt = spec(1400, MS, 4);
    let mut t = Csv::new(&[
        "backend",
        "policy",
        "rt_multiple",
        "be_goodput_mbps",
        "be_goodput_per_running_s_mbps",
        "be_goodput_with_drain_mbps",
        "rt_rate_vs_spec",
        "rt_max_delay_ms",
        "rt_deadline_misses",
        "rt_unexcused_misses",
        "os_preemption_ms",
        "rt_late_packets",
        "rt_largest_lateness_ms",
        "tx_stalled_ms",
        "tx_longest_stall_ms",
        "rx_longest_stall_ms",
    ]);
    let mut plot = Vec::new();
    let mut plot_run = Vec::new();
    // (windowed, per running second) best-effort goodput, [policy][multiple]
    let mut goodput = vec![vec![(0.0f64, 0.0f64); multiples.len()]; policies.len()];
    let mut mode = String::new();
    for (pi, p) in policies.iter().enumerate() {
        let mut cfg = core_config(p.work_conserving);
        cfg.sched.best_effort_reserve_ppm = p.reserve_ppm;
        cfg.link.best_effort_reserve_ppm = p.reserve_ppm;
        if p.fifo {
            cfg = cfg.fifo_baseline();
        }
        let mut pts = Vec::new();
        let mut pts_run = Vec::new();
        for (mi, &m) in multiples.iter().enumerate() {
            let mut sc = Scenario::new(cfg, RATE_BPS, 0, dur);
            for i in 0..3 {
                let mut s = rt;
                if p.rt_first {
                    s.imin = 1;
                }
                sc.channels.push(ChanDef::real_time(
                    &format!("rt{i}"),
                    i + 1,
                    s,
                    Load::Pattern(Pattern::Greedy {
                        imin: rt.imin,
                        multiple: m,
                    }),
                ));
            }
            sc.channels.push(ChanDef::best_effort(
                "best-effort",
                100,
                BE_LEN,
                Load::Flood,
            ));
            // Every application here counts a refused message and moves on (the memlink runs').
            let o = Bed::new("p")?.run(&sc)?;
            mode = o.mode.clone();
            let r = &o.run;
            let be = window_mbps(&o, 3);
            let be_run = running_mbps(&o, 3);
            let be_all = r.chan("best-effort").goodput_mbps(dur);
            let rts: Vec<&ChanOut> = r.chans.iter().take(3).collect();
            let rt_rate = (0..3)
                .map(|i| o.window[i].0 as f64 / (dur as f64 / rt.imin as f64))
                .sum::<f64>()
                / 3.0;
            let rt_max = rts.iter().map(|c| c.max_latency).max().unwrap_or(0);
            let rt_miss: u64 = rts.iter().map(|c| c.misses).sum();
            let rt_unexcused: u64 = (0..3).map(|i| o.verdict(i).unexcused).sum();
            let rt_late: u64 = rts.iter().map(|c| c.late_packets).sum();
            let over = o.overrun.iter().take(3).copied().max().unwrap_or(0);
            goodput[pi][mi] = (be, be_run);
            pts.push((m as f64, be));
            pts_run.push((m as f64, be_run));
            t.row(vec![
                backend.to_string(),
                p.label.to_string(),
                m.to_string(),
                f(be, 2),
                f(be_run, 2),
                f(be_all, 2),
                f(rt_rate, 3),
                f(ms(rt_max), 3),
                rt_miss.to_string(),
                rt_unexcused.to_string(),
                f(ms(o.preempted.total()), 2),
                rt_late.to_string(),
                f(ms(over), 3),
                f(ms(o.tx_stalled), 1),
                f(ms(o.tx_stalls.longest), 2),
                f(ms(o.rx_stalls.longest), 2),
            ]);
            rep.note(format!(
                "[{backend}] {} at {m}x: best-effort {be:.1} Mb/s ({be_run:.1} per running \
                 second; sender stalled {:.0} ms), real-time {rt_rate:.2}x spec, RT max delay \
                 {:.2} ms, {rt_miss} RT misses, {rt_late} late packets; {}",
                p.label,
                ms(o.tx_stalled),
                ms(rt_max),
                noise_note(&o)
            ));
            if !p.rt_first && !p.fifo {
                for (i, c) in rts.iter().enumerate() {
                    let (ok, w) = within_bounds(&o, i, c, &rt);
                    rep.check(ok, format!("veth {} {m}x: {}: {w}", p.label, c.name));
                }
                let most = if p.work_conserving { f64::MAX } else { 1.05 };
                // Per second the sender ran: a stall longer than Bmax x Imin = 4 ms costs
                // messages (refused, not queued).
                let running = dur.saturating_sub(o.tx_stalled).max(1) as f64 / dur as f64;
                let rt_running = rt_rate / running;
                rep.check(
                    rt_running >= 0.85 && rt_rate <= most,
                    format!(
                        "veth {} {m}x: the real-time channels get their spec{}: {rt_rate:.3}x, \
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
            rep.check(
                o.tx_errors == 0 && o.rx_dropped == 0,
                format!(
                    "veth {} {m}x: {} port TX errors, {} frames dropped by the RX ring",
                    p.label, o.tx_errors, o.rx_dropped
                ),
            );
        }
        plot.push(Series::measured(p.label, pts));
        plot_run.push(Series::measured(p.label, pts_run));
    }
    rep.note(format!("ports: {mode}"));
    rep.csv(opts, "fairness-veth.csv", &t)?;
    rep.plot(
        opts,
        "fairness-veth.svg",
        &Chart {
            title: format!(
                "Fairness on veth ({backend}, real time): best-effort goodput while real-time \
                 senders exceed their specs"
            ),
            x: "real-time submission rate, multiple of spec (3 channels, 36% of the 100 Mb/s \
                link at 1x)"
                .into(),
            y: "best-effort goodput while submitting, Mb/s".into(),
            log_x: false,
            log_y: false,
        },
        &plot,
    )?;
    rep.plot(
        opts,
        "fairness-running-veth.svg",
        &Chart {
            title: format!(
                "Fairness on veth ({backend}): best-effort goodput per second the sender ran"
            ),
            x: "real-time submission rate, multiple of spec".into(),
            y: "best-effort goodput, Mb/s (sender's stalls > 250 us taken out)".into(),
            log_x: false,
            log_y: false,
        },
        &plot_run,
    )?;
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
        rep.check(
            three.1 >= 30.0 && three.1 >= 0.8 * three1.1,
            format!(
                "veth {m}x: three-class keeps best-effort at {:.1} Mb/s, {:.1} per running second \
                 (>= 30, and >= 80% of its {:.1} at 1x)",
                three.0, three.1, three1.1
            ),
        );
        rep.check(
            first.0 <= 0.1 * three.0,
            format!(
                "veth {m}x: real-time first starves best-effort: {:.1} Mb/s (<= 10% of \
                 three-class's {:.1})",
                first.0, three.0
            ),
        );
        if let Some(first_res) = g("real-time first + 10% reserve", last) {
            // As in the in-memory experiment (exp_fairness): the reserve lifts best-effort at
            // most once per busy window, and an unenforced overload never ends its window.
            rep.check(
                first_res.0 <= 0.1 * three.0,
                format!(
                    "veth {m}x: the 10% reserve lifts best-effort once per busy window, which \
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
        rep.check(
            wc.1 >= 0.8 * three.1,
            format!(
                "veth {m}x: work-conserving runs early work after best-effort: {:.1} Mb/s vs \
                 {:.1} per running second (>= 80%)",
                wc.1, three.1
            ),
        );
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------------
// Experiment 4: preemption granularity.

/// Emulated protocol processing per packet: experiment 4's 2 µs, with every time 100 times
/// longer and the link 100 times slower (10 Gb/s → 100 Mb/s), so a full frame takes 0.6 of it
/// on the wire, as there.
pub const GRAN_PER_PACKET: Nanos = 200 * US;
/// The per-packet cost admission is told: the emulated processing plus 10 µs for the real code
/// around it (writing the frame, the AF_XDP kick; a few µs in a release build).
const GRAN_MODEL_PER_PACKET: Nanos = GRAN_PER_PACKET + 10 * US;
/// The longest background chunk admission is told: experiment 4's 1 µs step, times 100 (an
/// idle poll's 20 µs sleep overshoots to about this).
const GRAN_STEP: Nanos = 100 * US;
/// The loop's service interval and TX window, scaled like every other time (100 times the
/// cores' 20 µs and 4 µs): the service phase admission is told ([`GRAN_STEP`]) must fit in the
/// interval, and the cores run at the intervals admission charges.
const GRAN_SERVICE_INTERVAL: Nanos = 100 * dataplane::core::SERVICE_INTERVAL_NS;
const GRAN_TX_WINDOW: Nanos = 100 * dataplane::core::TX_WINDOW_NS;
/// The machine's allowance on the host bound (the veth runs' d = 10 ms).
pub const MACHINE_HOST: Nanos = 10 * MS;
/// The machine's further allowance end to end (the veth runs' D − d = 40 ms).
pub const MACHINE_E2E: Nanos = 40 * MS;

/// The large channels: experiment 4's, every time 100 times longer.
fn gran_others() -> Vec<(&'static str, RtReq)> {
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

/// The tight channel: one 64-byte message every 2 ms (ten times experiment 4's rate after
/// scaling, for enough samples per run); its d is admission's tightest.
const GRAN_TIGHT: RtReq = RtReq {
    mmax: 64,
    imin: 2 * MS,
    bmax: 1,
    d: 0,
};

/// Experiment 4 on veth: k = 1, 2, 4, 8, 16 on a sending core made CPU-bound by emulated
/// per-packet processing ([`GRAN_PER_PACKET`], spun on the real CPU).
pub fn run_granularity(opts: &Opts) -> Result<Report, String> {
    if let Some(r) = skipped("granularity") {
        return Ok(r);
    }
    let mut rep = Report::new("granularity");
    let backend = probe(&mut rep, "g")?;
    let dur = if opts.quick { 500 * MS } else { 2000 * MS };
    let ks: Vec<u32> = if opts.quick {
        vec![1, 16]
    } else {
        vec![1, 2, 4, 8, 16]
    };
    let mut t = Csv::new(&[
        "backend",
        "k",
        "in_flight_frames",
        "admission_d_ms",
        "host_bound_ms",
        "e2e_bound_D_ms",
        "tight_host_p50_ms",
        "tight_host_p90_ms",
        "tight_host_p99_ms",
        "tight_host_max_ms",
        "tight_within_admission_d",
        "tight_e2e_p50_ms",
        "tight_e2e_max_ms",
        "tight_messages",
        "tight_deadline_misses",
        "tight_late_packets",
        "others_misses",
        "others_late_packets",
        "packets_per_s",
        "runs_per_packet",
        "switches_per_packet",
        "tx_longest_stall_ms",
        "rx_longest_stall_ms",
    ]);
    let mut s_p50 = Vec::new();
    let mut s_p90 = Vec::new();
    let mut s_max = Vec::new();
    let mut s_e2e = Vec::new();
    let mut s_adm = Vec::new();
    let mut s_host = Vec::new();
    let mut s_runs = Vec::new();
    let mut s_sw = Vec::new();
    let mut s_kpps = Vec::new();
    // (k, admission's d, tight p50 host delay, runs per packet)
    let mut rows: Vec<(u32, Nanos, u64, f64)> = Vec::new();
    let mut mode = String::new();
    for &k in &ks {
        let model = control::admission::ResourceModel {
            service_interval_ns: GRAN_SERVICE_INTERVAL,
            tx_window_ns: GRAN_TX_WINDOW,
            ..bounds::model(RATE_BPS, GRAN_MODEL_PER_PACKET, k, GRAN_STEP, false, 0)
        };
        let mut cfg = core_config(false);
        cfg.service_interval = GRAN_SERVICE_INTERVAL;
        cfg.tx_window = GRAN_TX_WINDOW;
        cfg.sched.granularity = k;
        // A run of k packets takes k x 200 µs: the budget must not cut it short.
        cfg.sched.run_budget_cycles = 100 * MS / 1000 * tsc_per_us();
        // As in experiment 4: the NIC holds what the link drains during one run.
        cfg.link.in_flight_limit = (2 * u64::from(k) + 2) * 1538;
        let allowance = world::network_allowance(&cfg, RATE_BPS, GRAN_STEP);
        let before: Vec<RtReq> = gran_others().iter().map(|o| o.1).collect();
        let d = bounds::tightest(&model, &before, &GRAN_TIGHT)
            .ok_or_else(|| format!("k={k}: admission grants the tight channel no bound"))?;
        let mut reqs = before.clone();
        reqs.push(RtReq { d, ..GRAN_TIGHT });
        let specs: Vec<ChannelSpec> = bounds::admit_all(&model, &reqs, allowance)?
            .into_iter()
            .map(|s| ChannelSpec {
                link_deadline: s.link_deadline + MACHINE_HOST,
                end_to_end_deadline: s.end_to_end_deadline + MACHINE_HOST + MACHINE_E2E,
                ..s
            })
            .collect();
        let mut sc = Scenario::new(cfg, RATE_BPS, GRAN_PER_PACKET, dur);
        let names: Vec<&str> = gran_others()
            .iter()
            .map(|o| o.0)
            .chain(std::iter::once("tight"))
            .collect();
        for (i, (name, s)) in names.iter().zip(&specs).enumerate() {
            sc.channels
                .push(ChanDef::real_time(name, i as u32 + 1, *s, well_behaved(s)));
        }
        sc.channels
            .push(ChanDef::best_effort("best-effort", 100, 8000, Load::Flood));
        let o = Bed::new("p")?.run(&sc)?;
        mode = o.mode.clone();
        let r = &o.run;
        let ti = 3;
        let tight = r.chan("tight");
        let tspec = specs[ti];
        let hd = &o.host_delay[ti];
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
        let e2e_p50 = o.latency[ti].value_at_quantile(0.5);
        let others_misses: u64 = r.chans[..3].iter().map(|c| c.misses).sum();
        let others_late: u64 = r.chans[..3].iter().map(|c| c.late_packets).sum();
        let pps = r.core.packets as f64 * 1e9 / (dur + DRAIN) as f64;
        let runs_pp = r.core.runs as f64 / r.core.packets.max(1) as f64;
        let sw_pp = r.core.switches as f64 / r.core.packets.max(1) as f64;
        t.row(vec![
            backend.to_string(),
            k.to_string(),
            (2 * k + 2).to_string(),
            f(ms(d), 3),
            f(ms(tspec.link_deadline), 3),
            f(ms(tspec.end_to_end_deadline), 3),
            f(ms(p50), 3),
            f(ms(p90), 3),
            f(ms(p99), 3),
            f(ms(tight.max_host_delay), 3),
            f(within, 4),
            f(ms(e2e_p50), 3),
            f(ms(tight.max_latency), 3),
            tight.delivered.to_string(),
            tight.misses.to_string(),
            tight.late_packets.to_string(),
            others_misses.to_string(),
            others_late.to_string(),
            f(pps, 0),
            f(runs_pp, 4),
            f(sw_pp, 4),
            f(ms(o.tx_stalls.longest), 2),
            f(ms(o.rx_stalls.longest), 2),
        ]);
        rep.note(format!(
            "[{backend}] k={k}: admission's d {:.2} ms (run with d {:.2} ms, D {:.1} ms); tight \
             host delay p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms, {:.1}% within \
             admission's d; e2e p50 {:.2} max {:.2} ms; {:.3} runs and {:.3} switches per \
             packet, {:.2} kpkt/s; {}",
            ms(d),
            ms(tspec.link_deadline),
            ms(tspec.end_to_end_deadline),
            ms(p50),
            ms(p90),
            ms(p99),
            ms(tight.max_host_delay),
            within * 100.0,
            ms(e2e_p50),
            ms(tight.max_latency),
            runs_pp,
            sw_pp,
            pps / 1e3,
            noise_note(&o)
        ));
        rep.check(
            tight.delivered > 0 && p50 <= d,
            format!(
                "veth k={k}: the tight channel's median host delay {:.3} ms is within \
                 admission's bound d {:.3} ms (no machine allowance; {} messages)",
                ms(p50),
                ms(d),
                tight.delivered
            ),
        );
        for (i, name) in names.iter().enumerate() {
            let c = r.chan(name);
            let (ok, w) = within_bounds(&o, i, c, &specs[i]);
            rep.check(
                ok && c.delivered == c.accepted && c.lost == 0,
                format!(
                    "veth k={k}: {name}: {w}; delivered {} of {}, {} lost",
                    c.delivered, c.accepted, c.lost
                ),
            );
        }
        rep.check(
            o.tx_errors == 0 && o.rx_dropped == 0,
            format!(
                "veth k={k}: {} port TX errors, {} frames dropped by the RX ring",
                o.tx_errors, o.rx_dropped
            ),
        );
        s_p50.push((k as f64, ms(p50)));
        s_p90.push((k as f64, ms(p90)));
        s_max.push((k as f64, ms(tight.max_host_delay)));
        s_e2e.push((k as f64, ms(e2e_p50)));
        s_adm.push((k as f64, ms(d)));
        s_host.push((k as f64, ms(tspec.link_deadline)));
        s_runs.push((k as f64, runs_pp));
        s_sw.push((k as f64, sw_pp));
        s_kpps.push((k as f64, pps / 1e3));
        rows.push((k, d, p50, runs_pp));
    }
    rep.note(format!("ports: {mode}"));
    rep.csv(opts, "granularity-veth.csv", &t)?;
    rep.plot(
        opts,
        "granularity-veth.svg",
        &Chart {
            title: format!(
                "Granularity on veth ({backend}, real time, 200 us/packet): tight channel's \
                 delay vs admission's bound"
            ),
            x: "granularity k, packets per handler run (log)".into(),
            y: "host delay, ms (log)".into(),
            log_x: true,
            log_y: true,
        },
        &[
            Series::measured("measured: median, submit to release", s_p50),
            Series::measured("measured: 90th percentile", s_p90),
            Series::measured("measured: largest (host stalls)", s_max),
            Series::measured("measured: median end to end", s_e2e),
            Series::reference("admission's bound d for this k", s_adm),
            Series::reference("d + 10 ms machine allowance: the run's host bound", s_host),
        ],
    )?;
    rep.plot(
        opts,
        "granularity-overhead-veth.svg",
        &Chart {
            title: format!(
                "Granularity on veth ({backend}): preemption points, switches, throughput"
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
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    rep.check(
        rows.windows(2).all(|w| w[1].1 >= w[0].1) && last.1 > first.1,
        format!(
            "admission's bound grows with k: {:.2} ms at k={} to {:.2} ms at k={}",
            ms(first.1),
            first.0,
            ms(last.1),
            last.0
        ),
    );
    rep.check(
        last.2 > 2 * first.2,
        format!(
            "the tight channel's median host delay grows with k: {:.3} ms at k={} to {:.3} ms \
             at k={} (more than twice)",
            ms(first.2),
            first.0,
            ms(last.2),
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

// ---------------------------------------------------------------------------------------------
// Experiment 5: overheads.

/// Experiment 5 on veth: the port TX stage and the whole loop per packet measured on the real
/// kernel ports on a veth end (AF_XDP copy mode when built with it, and af_packet), beside the
/// same measurements on the `NullPort`, in the same process.
pub fn run_overheads(opts: &Opts) -> Result<Report, String> {
    if let Some(r) = skipped("overheads") {
        return Ok(r);
    }
    let mut rep = Report::new("overheads");
    let bed = Bed::new("h")?;
    for n in &bed.notes {
        rep.note(n.clone());
    }
    let n: u64 = if opts.quick { 20_000 } else { 1_000_000 };
    let rounds: u64 = if opts.quick { 200 } else { 10_000 };
    // (stage, port, cycles per packet)
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    rows.push((
        "port TX, bursts of 32".into(),
        "NullPort".into(),
        port_tx_on(&mut NullPort::new(256, 1514), n)?,
    ));
    rows.push((
        "whole loop per packet (64 B, 1000 RT channels)".into(),
        "NullPort".into(),
        core_loop_on(NullPort::new(4096, 1514), rounds, 1, 1_000, 64, true).0,
    ));
    let mut sent_ok: Vec<(&str, u64)> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    if bed.backend == Backend::AfXdp {
        #[cfg(feature = "af_xdp")]
        {
            let (tx, whole, sent, mode) = bed.in_sender_ns(move |ifname| {
                rtchan::ports::afxdp::set_library_logging(false);
                let cfg = rtchan::ports::afxdp::AfXdpConfig {
                    // No pacing: the port takes frames as fast as the kernel copies them.
                    report_completions: false,
                    ..rtchan::ports::afxdp::AfXdpConfig::default()
                };
                let mut p = rtchan::ports::afxdp::AfXdpPort::open(ifname, cfg)
                    .map_err(|e| e.to_string())?;
                let mode = format!(
                    "AF_XDP {} mode, {}",
                    p.attach_mode(),
                    if p.zero_copy() { "zero-copy" } else { "copy" }
                );
                let tx = port_tx_on(&mut p, n)?;
                let sent = dataplane::port::Port::stats(&p).tx_packets;
                // The same port (a queue stays busy for a moment after its socket closes).
                let whole = core_loop_on(p, rounds, 1, 1_000, 64, true).0;
                Ok((tx, whole, sent, mode))
            })?;
            rows.push((
                "port TX, bursts of 32".into(),
                "AF_XDP copy, veth".into(),
                tx,
            ));
            rows.push((
                "whole loop per packet (64 B, 1000 RT channels)".into(),
                "AF_XDP copy, veth".into(),
                whole,
            ));
            sent_ok.push(("AF_XDP", sent));
            ports.push(mode);
        }
    }
    {
        let (tx, whole, sent) = bed.in_sender_ns(move |ifname| {
            let cfg = rtchan::ports::afpacket::AfPacketConfig {
                tx_batch: 32,
                qdisc_bypass: true,
                ..rtchan::ports::afpacket::AfPacketConfig::default()
            };
            let mut p = rtchan::ports::afpacket::AfPacketPort::open(ifname, cfg)
                .map_err(|e| e.to_string())?;
            let tx = port_tx_on(&mut p, n)?;
            let sent = dataplane::port::Port::stats(&p).tx_packets;
            let whole = core_loop_on(p, rounds, 1, 1_000, 64, true).0;
            Ok((tx, whole, sent))
        })?;
        rows.push(("port TX, bursts of 32".into(), "af_packet, veth".into(), tx));
        rows.push((
            "whole loop per packet (64 B, 1000 RT channels)".into(),
            "af_packet, veth".into(),
            whole,
        ));
        sent_ok.push(("af_packet", sent));
        ports.push("af_packet TPACKET_V3, qdisc bypass".into());
    }
    let mut t = Csv::new(&["stage", "port", "ns_per_packet", "cycles_per_packet"]);
    let mut bars = Vec::new();
    for (stage, port, cyc) in &rows {
        t.row(vec![
            stage.clone(),
            port.clone(),
            f(ns(*cyc), 2),
            f(*cyc, 1),
        ]);
        bars.push((format!("{stage} [{port}]"), ns(*cyc)));
        rep.note(format!(
            "{stage} [{port}]: {:.1} ns ({cyc:.0} cycles)",
            ns(*cyc)
        ));
        rep.check(
            cyc.is_finite() && *cyc > 0.0,
            format!("{stage} [{port}]: measured {:.1} ns", ns(*cyc)),
        );
    }
    rep.note(format!(
        "TSC {} cycles/us; {} build; ports: {}",
        tsc_per_us(),
        if cfg!(debug_assertions) {
            "DEBUG (numbers not meaningful)"
        } else {
            "release"
        },
        ports.join("; ")
    ));
    let rounds32 = (n / 32).max(1);
    let expect = (rounds32 + rounds32 / 10) * 32;
    for (port, sent) in &sent_ok {
        rep.check(
            *sent == expect,
            format!("{port}: the port took every frame offered: {sent} of {expect}"),
        );
    }
    if !cfg!(debug_assertions) {
        let null_tx = rows[0].2;
        for (stage, port, cyc) in rows.iter().skip(2) {
            if stage.starts_with("port TX") {
                rep.check(
                    *cyc > null_tx,
                    format!(
                        "{port}: a kernel port's TX costs more than the NullPort's ({:.0} vs \
                         {:.0} ns per packet: a syscall per burst and the kernel's copy)",
                        ns(*cyc),
                        ns(null_tx)
                    ),
                );
            }
        }
    }
    rep.csv(opts, "overheads-veth.csv", &t)?;
    let p = opts.out.join("overheads-veth.svg");
    bar_chart(
        &p,
        "Overheads on veth: port TX and whole loop per packet (real time, TSC)",
        "ns per packet",
        &bars,
    )?;
    rep.files.push(p);
    Ok(rep)
}
