//! Experiment 5, overheads, in **real time**: what each stage of the sending path costs per
//! packet, in nanoseconds and TSC cycles, what a preemption point and a switch between handlers
//! cost, and how long admission takes as channels accumulate.
//!
//! Virtual time cannot answer this, so the stages are timed with the TSC in whatever build runs
//! them (use `--release`; the debug numbers of `--quick` only show that the code runs).
//! Microbenchmarks drive the dataplane's public pieces the way the core does (as
//! `dataplane/benches/per_packet.rs` does):
//! - **enforcement**: `Enforcer::logical_arrival`;
//! - **header write**: `HeaderTemplate::write_frame` (Ethernet, IPv4, UDP, rtchan header, payload,
//!   both checksums) for 64- and 1400-byte payloads;
//! - **EDF pick**: `CpuScheduler::pick` plus re-queueing the picked handler with its next
//!   deadline, with 10, 1,000 and 100,000 handlers queued;
//! - **link scheduler**: `LinkScheduler::enqueue` plus `release` of one packet, 512 packets queued;
//! - **port TX**: `alloc_tx` and `tx_burst` on the `NullPort`, bursts of 32;
//! - **whole loop**: `Core::poll` on a `NullPort` per packet (submission excluded), 64-byte
//!   messages over 1,000 real-time channels;
//! - **preemption point, switch**: `Core::poll` per handler run on best-effort channels of
//!   16-packet messages: one channel at k = 16 (no preemption points inside a message) and k = 1
//!   (one per packet, always the same handler), and 16 channels at k = 1 (every run a switch to
//!   another handler, round-robin);
//! - **admission**: `Admission::admit` of the n-th channel, n = 100, 1,000, 10,000.
//!
//! Written once for every [`Bed`]: on veth the port TX stage and the whole loop are also timed
//! on the real kernel ports on a veth end in the sending namespace (AF_XDP copy mode when built
//! with it, and af_packet), beside the `NullPort`, in the same process; each kernel port must
//! take every frame offered and (release build) cost more per packet than the `NullPort`.

use super::bed::Bed;
use super::out::{f, Chart, Csv, Series};
use super::veth::{self, Backend};
use super::{Opts, Report};
use control::admission::{Admission, ChannelRequest, ResourceModel};
use dataplane::channel::Sender;
use dataplane::core::{Core, CoreConfig};
use dataplane::link::{LinkConfig, LinkScheduler, PacketMeta};
use dataplane::memlink::NullPort;
use dataplane::port::{Batch, PacketBuf, Port};
use dataplane::sched::{CpuScheduler, SchedPolicy};
use dataplane::spec::{ChannelConfig, ChannelSpec, Endpoint};
use dataplane::time::{read_tsc, tsc_per_us, MonotonicClock, Nanos, TscMeter};
use dataplane::wire::{HeaderTemplate, RtHeader};
use dataplane::Enforcer;
use std::hint::black_box;

/// Cycles to nanoseconds at the calibrated TSC rate.
pub(crate) fn ns(cycles: f64) -> f64 {
    cycles * 1000.0 / tsc_per_us() as f64
}

/// Cycles per call of `op`, over `n` calls after `n / 10` warm-up calls.
fn time_op(n: u64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..n / 10 {
        op(i);
    }
    let c0 = read_tsc();
    for i in 0..n {
        op(i);
    }
    (read_tsc() - c0) as f64 / n as f64
}

fn enforcement(n: u64) -> f64 {
    let mut e = Enforcer::default();
    time_op(n, |i| {
        black_box(e.logical_arrival(black_box(i * 100), black_box(150)));
    })
}

fn header(n: u64, len: usize) -> f64 {
    let t = HeaderTemplate::new(&Endpoint::default());
    let mut frame = vec![0u8; 2048];
    let payload = vec![0xabu8; len];
    let rt = RtHeader {
        channel: 7,
        msg_len: len as u32,
        frag_len: len as u16,
        frag_count: 1,
        ..RtHeader::default()
    };
    time_op(n, |i| {
        black_box(t.write_frame(black_box(&mut frame), i as u16, &rt, black_box(&payload)));
    })
}

fn edf_pick(n: u64, channels: usize) -> f64 {
    let mut s = CpuScheduler::new(channels, SchedPolicy::default());
    let d = |slot: u64, round: u64| 10_000 + (slot * 7919) % 10_000_000 + round * 100;
    for slot in 0..channels as u64 {
        s.enqueue_real_time(slot as u32, 0, d(slot, 0), 0);
    }
    let mut now = 0;
    time_op(n, |i| {
        let (slot, _) = s.pick(now, true, true).expect("backlogged");
        s.enqueue_real_time(slot, now, d(slot as u64, i + 1) + now, now);
        now += 100;
    })
}

fn link_sched(n: u64) -> f64 {
    let limit = 1_000_000u64;
    let mut l: LinkScheduler<u32> = LinkScheduler::new(LinkConfig {
        link_rate_bps: 400_000_000_000,
        in_flight_limit: limit,
        capacity: 1024,
        ..LinkConfig::default()
    });
    let meta = |i: u64, now: Nanos| PacketMeta {
        slot: (i % 1000) as u32,
        eligible: now,
        deadline: now + 10_000 + (i * 7919) % 1_000_000,
        submit_ts: now,
        frame_len: 146,
        last_of_message: true,
        ..PacketMeta::default()
    };
    for i in 0..512 {
        let _ = l.enqueue(i as u32, meta(i, 0), 0);
    }
    let mut now = 0;
    let room = limit - dataplane::wire::wire_bytes(146);
    time_op(n, |i| {
        let _ = l.enqueue(i as u32, meta(i, now), now);
        let mut batch: Batch<u32> = Batch::new();
        l.release(now, Some(room), &mut batch, |_| {});
        black_box(&batch);
        now += 100;
    })
}

fn port_tx(n: u64) -> f64 {
    port_tx_on(&mut NullPort::new(256, 1514), n).expect("null port")
}

/// Cycles per packet of `alloc_tx` and `tx_burst` on `p` in bursts of 32 146-byte frames,
/// over about `n` packets; a burst the port takes only in part is offered again until it is
/// out (a kernel port's ring may be full for a moment). `Err` if the port fails.
pub(crate) fn port_tx_on<P: Port>(p: &mut P, n: u64) -> Result<f64, String> {
    let rounds = (n / 32).max(1);
    let mut err = None;
    let c = time_op(rounds, |_| {
        let mut batch = Batch::new();
        for _ in 0..32 {
            let Some(mut b) = p.alloc_tx() else {
                break;
            };
            b.set_len(146);
            batch.push(b);
        }
        let mut tries = 0u32;
        while !batch.is_empty() && err.is_none() {
            match p.tx_burst(0, &mut batch) {
                Ok(_) => {}
                Err(e) => err = Some(e.to_string()),
            }
            tries += 1;
            if tries > 1_000_000 {
                err = Some("the port took no frame for 1,000,000 tries".into());
            }
        }
        black_box(&batch);
    });
    match err {
        Some(e) => Err(e),
        None => Ok(c / 32.0),
    }
}

fn core_on<P: Port>(
    port: P,
    k: u32,
    channels: usize,
    mmax: u32,
    real_time: bool,
) -> (Core<P>, Vec<Sender>) {
    let cfg = CoreConfig {
        max_channels: channels as u32,
        sched: SchedPolicy {
            granularity: k,
            ..SchedPolicy::default()
        },
        link: LinkConfig {
            link_rate_bps: 400_000_000_000,
            in_flight_limit: u64::MAX / 4,
            capacity: 1024,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg, port).expect("core on the measured port");
    let senders = (0..channels)
        .map(|i| {
            let c = if real_time {
                let d = 10_000 + (i as u64 * 7919) % 10_000_000;
                ChannelConfig::real_time(
                    i as u32,
                    ChannelSpec {
                        mmax,
                        imin: 1,
                        bmax: 8,
                        cpu_deadline: d,
                        link_deadline: d,
                        end_to_end_deadline: d,
                    },
                )
            } else {
                ChannelConfig::best_effort(i as u32, mmax, 8)
            };
            core.open(c).expect("open")
        })
        .collect();
    (core, senders)
}

/// Cycles per packet and per handler run of the whole loop: `rounds` rounds of one message per
/// channel (for up to 32 channels) submitted, then polled until all its packets are out.
fn core_loop(rounds: u64, k: u32, channels: usize, mmax: u32, real_time: bool) -> (f64, f64) {
    core_loop_on(
        NullPort::new(4096, 1514),
        rounds,
        k,
        channels,
        mmax,
        real_time,
    )
}

/// [`core_loop`] on `port` (the overheads on veth use it on a kernel port).
pub(crate) fn core_loop_on<P: Port>(
    port: P,
    rounds: u64,
    k: u32,
    channels: usize,
    mmax: u32,
    real_time: bool,
) -> (f64, f64) {
    let (mut core, mut senders) = core_on(port, k, channels, mmax, real_time);
    let msg = vec![0xabu8; mmax as usize];
    let per_round = channels.min(32);
    let mut next = 0;
    let (mut cycles, mut packets, mut runs) = (0u64, 0u64, 0u64);
    let clock = MonotonicClock;
    let mut tsc = TscMeter;
    for r in 0..rounds + rounds / 10 {
        for _ in 0..per_round {
            assert!(
                senders[next].submit(&msg).is_ok(),
                "the buffers were drained"
            );
            next = (next + 1) % channels;
        }
        let (p0, r0) = (core.stats().tx_packets, core.stats().runs);
        let c0 = read_tsc();
        let target = p0 + (per_round as u64) * u64::from(mmax.div_ceil(1432));
        let mut polls = 0u32;
        while core.stats().tx_packets < target {
            core.poll(&clock, &mut tsc);
            polls = polls.wrapping_add(1);
            // A kernel port that stops sending must not hang the run (checked rarely, so the
            // null port's loop is timed as before).
            assert!(
                polls % 4096 != 0 || read_tsc() - c0 < 5_000_000 * tsc_per_us(),
                "the port sent nothing for 5 s"
            );
        }
        let c = read_tsc() - c0;
        if r >= rounds / 10 {
            cycles += c;
            packets += core.stats().tx_packets - p0;
            runs += core.stats().runs - r0;
        }
    }
    (
        cycles as f64 / packets.max(1) as f64,
        cycles as f64 / runs.max(1) as f64,
    )
}

/// Microseconds to admit the n-th channel, for each n in `at` (mean of 10 admissions there).
fn admission(at: &[usize]) -> Vec<(usize, f64)> {
    let model = ResourceModel {
        granularity: 4,
        ..ResourceModel::default()
    };
    let mut adm = Admission::new(model).expect("default model");
    let mut out = Vec::new();
    let max = at.iter().copied().max().unwrap_or(0);
    let mut i = 0usize;
    while i < max {
        let req = |i: usize| ChannelRequest {
            mmax: 64 + (i % 8) as u32 * 200,
            imin: 100_000_000,
            bmax: 2,
            deadline: 1_000_000 + (i as u64 * 7919) % 99_000_000,
            core: None,
            txq: None,
        };
        if at.contains(&(i + 10)) {
            let t0 = std::time::Instant::now();
            for j in i..i + 10 {
                if adm.admit(&req(j)).is_err() {
                    return out; // the host is full: report what was measured
                }
            }
            out.push((i + 10, t0.elapsed().as_secs_f64() * 1e6 / 10.0));
            i += 10;
        } else {
            if adm.admit(&req(i)).is_err() {
                return out;
            }
            i += 1;
        }
    }
    out
}

/// The port TX stage and the whole loop on the kernel ports of a veth end (in the sending
/// namespace of a fresh pair): rows of (stage, channels, port, cycles per packet), and per
/// port the frames it took, with how the ports were opened.
type PortRows = (Vec<Stage>, Vec<(&'static str, u64)>, Vec<String>);

/// A timed stage: name, channels (or "-"), port (or "-"), cycles per operation.
type Stage = (String, String, String, f64);

fn kernel_ports(rep: &mut Report, n: u64, rounds: u64, dpdk: bool) -> Result<PortRows, String> {
    if dpdk {
        return dpdk_port(n, rounds);
    }
    let bed = veth::Pair::new("h")?;
    let mut rows: Vec<Stage> = Vec::new();
    let mut sent_ok: Vec<(&'static str, u64)> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    let tx_stage = "port TX, bursts of 32";
    let loop_stage = "whole loop per packet (64 B, real-time)";
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
            let port = "AF_XDP copy, veth".to_string();
            rows.push((tx_stage.into(), "-".into(), port.clone(), tx));
            rows.push((loop_stage.into(), "1000".into(), port, whole));
            sent_ok.push(("AF_XDP", sent));
            ports.push(mode);
        }
    }
    let (tx, whole, sent) = bed.in_sender_ns(move |ifname| {
        let cfg = rtchan::ports::afpacket::AfPacketConfig {
            tx_batch: 32,
            qdisc_bypass: true,
            ..rtchan::ports::afpacket::AfPacketConfig::default()
        };
        let mut p =
            rtchan::ports::afpacket::AfPacketPort::open(ifname, cfg).map_err(|e| e.to_string())?;
        let tx = port_tx_on(&mut p, n)?;
        let sent = dataplane::port::Port::stats(&p).tx_packets;
        let whole = core_loop_on(p, rounds, 1, 1_000, 64, true).0;
        Ok((tx, whole, sent))
    })?;
    let port = "af_packet, veth".to_string();
    rows.push((tx_stage.into(), "-".into(), port.clone(), tx));
    rows.push((loop_stage.into(), "1000".into(), port, whole));
    sent_ok.push(("af_packet", sent));
    ports.push("af_packet TPACKET_V3, qdisc bypass".into());
    for note in &bed.notes {
        rep.note(note.clone());
    }
    Ok((rows, sent_ok, ports))
}

/// The port stages on the DPDK bed's port: the `net_af_packet` vdev on a veth end.
#[cfg(feature = "dpdk")]
fn dpdk_port(n: u64, rounds: u64) -> Result<PortRows, String> {
    let bed = veth::Pair::with_backend("h", Backend::Dpdk)?;
    let (tx, whole, sent, mode) = bed.in_sender_ns(move |ifname| {
        let (mut p, mode) = veth::open_dpdk(ifname)?;
        let tx = port_tx_on(&mut p, n)?;
        let sent = dataplane::port::Port::stats(&p).tx_packets;
        let whole = core_loop_on(p, rounds, 1, 1_000, 64, true).0;
        Ok((tx, whole, sent, mode))
    })?;
    let port = "DPDK net_af_packet, veth".to_string();
    Ok((
        vec![
            ("port TX, bursts of 32".into(), "-".into(), port.clone(), tx),
            (
                "whole loop per packet (64 B, real-time)".into(),
                "1000".into(),
                port,
                whole,
            ),
        ],
        vec![("DPDK net_af_packet", sent)],
        vec![mode],
    ))
}

#[cfg(not(feature = "dpdk"))]
fn dpdk_port(_n: u64, _rounds: u64) -> Result<PortRows, String> {
    Err("the DPDK bed needs a build with --features dpdk".into())
}

/// Runs experiment 5 on `bed`.
pub fn run(opts: &Opts, bed: &mut dyn Bed) -> Result<Report, String> {
    let mut rep = Report::new("overheads");
    let prof = bed.profile().clone();
    let n: u64 = if opts.quick { 20_000 } else { 2_000_000 };
    let rounds: u64 = if opts.quick { 200 } else { 20_000 };
    let none = || "-".to_string();
    let mut stages: Vec<Stage> = vec![
        (
            "enforcement (logical arrival)".into(),
            none(),
            none(),
            enforcement(n),
        ),
        (
            "header write, 64 B payload".into(),
            none(),
            none(),
            header(n, 64),
        ),
        (
            "header write, 1400 B payload".into(),
            none(),
            none(),
            header(n, 1400),
        ),
    ];
    for ch in [10usize, 1_000, 100_000] {
        stages.push((
            "EDF pick + re-queue".into(),
            ch.to_string(),
            none(),
            edf_pick(n, ch),
        ));
    }
    stages.push((
        "link scheduler enqueue + release".into(),
        "512 queued".into(),
        none(),
        link_sched(n),
    ));
    stages.push((
        "port TX, bursts of 32".into(),
        none(),
        "NullPort".into(),
        port_tx(n),
    ));
    let (whole, _) = core_loop(rounds, 1, 1_000, 64, true);
    stages.push((
        "whole loop per packet (64 B, real-time)".into(),
        "1000".into(),
        "NullPort".into(),
        whole,
    ));
    // Preemption points and switches: per handler run, 16-packet best-effort messages.
    let big = 16 * 1432;
    let (_, run16) = core_loop(rounds / 4, 16, 1, big, false);
    let (pp1, run1) = core_loop(rounds / 4, 1, 1, big, false);
    let (pp16ch, run16ch) = core_loop(rounds / 4, 1, 16, big, false);
    // k = 16: one run per message does 16 packets; k = 1: 16 runs. The difference per extra
    // run is the cost of a preemption point (re-queue, wake-up check, pick, link release).
    let point = (16.0 * run1 - run16) / 15.0;
    let switch = run16ch - run1;
    stages.push((
        "preemption point (same handler)".into(),
        "1".into(),
        none(),
        point,
    ));
    stages.push((
        "switch to another handler (extra per run)".into(),
        "16".into(),
        none(),
        switch,
    ));
    // On a real-time bed, the same port stages on its kernel ports.
    let null_tx = port_tx_cycles(&stages);
    let (kernel_rows, sent_ok, ports) = if prof.real_time() {
        let (kn, kr) = if opts.quick {
            (20_000, 200)
        } else {
            (1_000_000, 10_000)
        };
        let k = kernel_ports(&mut rep, kn, kr, prof.link == super::Link::Dpdk)?;
        (k.0, k.1, k.2)
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    stages.extend(kernel_rows.iter().cloned());
    let mut t = Csv::new(&["stage", "channels", "port", "ns_per_op", "cycles_per_op"]);
    let mut bars = Vec::new();
    for (stage, ch, port, cyc) in &stages {
        t.row(vec![
            stage.clone(),
            ch.clone(),
            port.clone(),
            f(ns(*cyc), 2),
            f(*cyc, 1),
        ]);
        let label = match (ch.as_str(), port.as_str()) {
            ("-", "-") => stage.clone(),
            (c, "-") => format!("{stage} [{c}]"),
            (_, p) => format!("{stage} [{p}]"),
        };
        bars.push((label.clone(), ns(*cyc)));
        rep.check(
            cyc.is_finite(),
            format!("{label}: {:.1} ns, {cyc:.0} cycles", ns(*cyc)),
        );
    }
    rep.note(format!(
        "TSC {} cycles/us; {} build{}",
        tsc_per_us(),
        if cfg!(debug_assertions) {
            "DEBUG (numbers not meaningful)"
        } else {
            "release"
        },
        if ports.is_empty() {
            String::new()
        } else {
            format!("; ports: {}", ports.join("; "))
        }
    ));
    for (stage, ch, port, cyc) in &stages {
        rep.note(format!(
            "{stage} [{ch}, {port}]: {:.1} ns ({cyc:.0} cycles)",
            ns(*cyc)
        ));
    }
    rep.note(format!(
        "whole loop per packet with 16-packet best-effort messages: {:.1} ns at k=1 with one \
         channel, {:.1} ns with 16 channels round-robin",
        ns(pp1),
        ns(pp16ch)
    ));
    // A kernel port takes every frame offered, and costs more than the NullPort.
    let rounds32 = (if opts.quick { 20_000u64 } else { 1_000_000 } / 32).max(1);
    let expect = (rounds32 + rounds32 / 10) * 32;
    for (port, sent) in &sent_ok {
        rep.check(
            *sent == expect,
            format!("{port}: the port took every frame offered: {sent} of {expect}"),
        );
    }
    if !cfg!(debug_assertions) {
        for (stage, _, port, cyc) in &kernel_rows {
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
    rep.csv(opts, &prof.file("overheads", "csv"), &t)?;
    rep.bars(
        opts,
        &prof.file("overheads", "svg"),
        (
            &format!(
                "Overheads{}: cost per operation (real time, TSC)",
                prof.title_tag()
            ),
            "ns per operation",
        ),
        &bars,
    )?;

    let at: Vec<usize> = if opts.quick {
        vec![100, 1_000]
    } else {
        vec![100, 300, 1_000, 3_000, 10_000]
    };
    let adm = admission(&at);
    let mut ta = Csv::new(&["channels", "admit_us"]);
    for (c, us) in &adm {
        ta.row(vec![c.to_string(), f(*us, 2)]);
        rep.note(format!("admission of the {c}th channel: {us:.1} us"));
    }
    rep.csv(opts, &prof.file("overheads-admission", "csv"), &ta)?;
    rep.plot(
        opts,
        &prof.file("overheads-admission", "svg"),
        &Chart {
            title: "Admission time against channel count (one core, one 10 Gb/s queue)".into(),
            x: "channels already admitted (log)".into(),
            y: "time to admit one more, us (log)".into(),
            log_x: true,
            log_y: true,
        },
        &[Series::measured(
            "Admission::admit",
            adm.iter().map(|&(c, us)| (c as f64, us)).collect(),
        )],
    )?;
    if let Some(&(c, us)) = adm.last() {
        if !cfg!(debug_assertions) && c >= 10_000 {
            rep.check(
                us < 20_000.0,
                format!("admitting the {c}th channel takes {us:.0} us (< 20 ms)"),
            );
        }
    }
    Ok(rep)
}

/// The NullPort's port TX cycles per packet among `stages`.
fn port_tx_cycles(stages: &[Stage]) -> f64 {
    stages
        .iter()
        .find(|s| s.0.starts_with("port TX") && s.2 == "NullPort")
        .map_or(0.0, |s| s.3)
}
