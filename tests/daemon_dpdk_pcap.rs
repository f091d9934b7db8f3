//! A daemon on DPDK's `net_pcap` vdev with two TX queues, each written to its own capture
//! (feature `dpdk`): `rtchanctl` opens real-time channels and a best-effort flood on each of
//! the two cores (core i sends on TX queue i), the daemon is stopped, and each queue's capture
//! is read back and checked:
//! 1. every frame is a valid rtchan frame of a channel placed on that queue's core;
//! 2. per channel, messages in order, every fragment once, nothing missing;
//! 3. paced at the queue's share: replaying the link scheduler's model at `share × rate` on the
//!    capture's timestamps, the wire time queued ahead of a packet never exceeds the in-flight
//!    limit admission uses, plus a small stamp slack and the polling threads' measured OS
//!    preemption just before it (`rtchan::preemption`); and the queue's throughput stays
//!    within its share;
//! 4. EDF order: no real-time packet leaves while a packet with an earlier link deadline,
//!    certainly written by then (its admitted CPU deadline passed), still waits — unless the
//!    measured preemption of the polling threads covers the margin.
//!
//! The checks are shown to fail on captures that break them (the unit tests at the end).
//! The receiving peer is a memlink daemon (it admits the receive side; the frames go to the
//! captures, not to it). Everything runs on 127.0.0.1 and in a temporary directory.
#![cfg(feature = "dpdk")]

#[path = "common/dpdk_daemon.rs"]
mod dpdk_daemon;
use dpdk_daemon::*;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use control::config::DaemonConfig;
use dataplane::time::Nanos;
use rtchan::preemption::PreemptionProbe;

const RATE_BPS: u64 = 100_000_000;
const SHARES: [u32; 2] = [600_000, 300_000];
/// What a packet's pcap stamp may lag behind the poll that released it without any OS
/// preemption: the rest of that poll's burst (32 packets through net_pcap's dumper) in a
/// debug build.
const STAMP_SLACK: Nanos = 300_000;
/// How far back measured preemption may excuse a pacing excess (the packets queued ahead).
const PREEMPT_WINDOW: Nanos = 20_000_000;
const RUN: Duration = Duration::from_secs(2);
/// How far the measured preemption's window is widened on each side: the probe samples every
/// ms and spreads a wait over its sample interval, and the capture clock is aligned to tens of
/// µs.
const PROBE_SLACK: Nanos = 2_000_000;
/// Packets are judged from this long after the last channel opened: while channels open, the
/// control thread's commands and the sources' first submits take the cores.
const SETTLE: Nanos = 200_000_000;
/// The windows at both ends of the judged run the capture clock is aligned over.
const ALIGN_WINDOW: Nanos = 300_000_000;
/// How far the anchors of the clock map may be off (their packets' submit-to-wire times):
/// the throughput bound allows this much wire time more.
const ALIGN_ERROR: Nanos = 2_000_000;

fn sender_config(dir: &std::path::Path, port_b: u16, port_a: u16) -> String {
    let q0 = dir.join("q0.pcap");
    let q1 = dir.join("q1.pcap");
    format!(
        r#"socket = "{sock}"
[port]
kind = "dpdk"
device = "net_pcap0,tx_pcap={q0},tx_pcap={q1}"
ip = "10.9.0.1"
no_huge = true
eal_args = ["-m", "256"]
link_rate_bps = {RATE_BPS}
[policy]
idle = "sleep"
best_effort_reserve_ppm = 100000
# The loop's intervals stretched to fit the debug-build costs below (the service phase and a
# TX stage must each fit in their interval); admission charges them at these intervals.
service_interval = "4ms"
tx_window = "1ms"
# A debug build on a shared 2-core machine: costs two orders of magnitude above a release
# build, so the CPU deadlines admission gives hold there too.
[cost]
per_message_ns = 100000
per_packet_ns = 100000
best_effort_run_ns = 500000
rx_burst_ns = 300000
control_poll_ns = 100000
tx_stage_ns = 100000
client_scan_ns = 20000
{peering}mac = "02:00:00:00:00:0b"
data_ip = "10.9.0.2"
[[cores]]
tx_share_ppm = {s0}
[[cores]]
tx_share_ppm = {s1}
"#,
        peering = loopback_peering("a", port_a, "b", port_b),
        sock = dir.join("a.sock").display(),
        q0 = q0.display(),
        q1 = q1.display(),
        s0 = SHARES[0],
        s1 = SHARES[1],
    )
}

fn receiver_config(dir: &std::path::Path, port_b: u16, port_a: u16) -> String {
    format!(
        r#"socket = "{sock}"
[port]
link_rate_bps = {RATE_BPS}
[policy]
idle = "sleep"
best_effort_reserve_ppm = 100000
{peering}[[cores]]
tx_share_ppm = 500000
[[cores]]
tx_share_ppm = 500000
"#,
        peering = loopback_peering("b", port_b, "a", port_a),
        sock = dir.join("b.sock").display(),
    )
}

struct Opened {
    id: u32,
    txq: u16,
    rt: Option<RtChannel>,
}

fn open(sock: &std::path::Path, args: &[&str]) -> Opened {
    let mut all = vec!["channel", "open"];
    all.extend_from_slice(args);
    let r = ctl_json(sock, &all).unwrap_or_else(|e| panic!("{e}"));
    let s = &r["sender"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));
    Opened {
        id: n(&r["id"]) as u32,
        txq: n(&s["txq"]) as u16,
        rt: (!r["best_effort"].as_bool().unwrap_or(false)).then(|| RtChannel {
            deadline: n(&r["deadline"]),
            cpu_deadline: n(&s["cpu_deadline"]),
            link_deadline: n(&s["link_deadline"]),
        }),
    }
}

#[test]
#[ignore = "flaky, issue 11/14: on 2026-12-03 3 of 49 runs had EDF-order violations of 2-10 ms, \
            all in one five-minute spell of host load (two while /proc/stat counted 6.8 s of \
            steal in 50 s, which the preemption probe cannot see); the 25 runs beside 1-3 CPU \
            hogs and the 14 with under 10 ms of steal passed; run with --ignored"]
fn two_tx_queues_each_edf_ordered_and_paced_at_its_share() {
    // In memory (/dev/shm where there is one): net_pcap stamps each frame just before writing
    // it, and a write that waits for a disk would delay the stamps of the rest of its burst.
    let dir = match Path::new("/dev/shm").is_dir() {
        true => {
            let d = Path::new("/dev/shm")
                .join(format!("rtchan-daemon-dpdk-pcap-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
        false => tmpdir("daemon-dpdk-pcap"),
    };
    let (port_a, port_b) = free_ports();
    let mut b = DaemonProc::start("b", &[], &dir, &receiver_config(&dir, port_b, port_a))
        .unwrap_or_else(|e| panic!("{e}"));
    let a_cfg = sender_config(&dir, port_b, port_a);
    let model = DaemonConfig::parse(&a_cfg).unwrap().tx_model();
    let mut a = DaemonProc::start("a", &[], &dir, &a_cfg).unwrap_or_else(|e| panic!("{e}"));
    let probe = PreemptionProbe::start().unwrap();
    let steal_from = steal_ms();
    let watched = probe.watch_threads_of(a.pid(), "rtchan-core").unwrap();
    assert_eq!(watched, 2, "the sender's two polling threads");

    // Per core: two real-time channels of different deadlines and a best-effort flood.
    let chans = [
        open(
            &a.socket,
            &[
                "--mmax",
                "1400",
                "--imin",
                "2ms",
                "--bmax",
                "4",
                "--deadline",
                "20ms",
                "--dst",
                "b",
                "--core",
                "0",
                "--source",
                "periodic",
            ],
        ),
        open(
            &a.socket,
            &[
                "--mmax",
                "4000",
                "--imin",
                "10ms",
                "--bmax",
                "4",
                "--deadline",
                "40ms",
                "--dst",
                "b",
                "--core",
                "0",
                "--source",
                "bursts",
            ],
        ),
        open(
            &a.socket,
            &[
                "--best-effort",
                "--mmax",
                "1400",
                "--dst",
                "b",
                "--core",
                "0",
                "--source",
                "greedy:10",
                "--imin",
                "50us",
            ],
        ),
        open(
            &a.socket,
            &[
                "--mmax",
                "1400",
                "--imin",
                "3ms",
                "--bmax",
                "4",
                "--deadline",
                "15ms",
                "--dst",
                "b",
                "--core",
                "1",
                "--source",
                "poisson",
            ],
        ),
        open(
            &a.socket,
            &[
                "--mmax",
                "3000",
                "--imin",
                "8ms",
                "--bmax",
                "4",
                "--deadline",
                "50ms",
                "--dst",
                "b",
                "--core",
                "1",
                "--source",
                "bursts",
            ],
        ),
        open(
            &a.socket,
            &[
                "--best-effort",
                "--mmax",
                "1400",
                "--dst",
                "b",
                "--core",
                "1",
                "--source",
                "greedy:10",
                "--imin",
                "50us",
            ],
        ),
    ];
    let judge_from = dataplane::time::monotonic_now() + SETTLE;
    std::thread::sleep(RUN);
    let stopped_at = dataplane::time::monotonic_now();
    let code = a.stop().unwrap_or_else(|e| panic!("{e}"));
    let log = a.log_text();
    assert_eq!(code, 0, "sender exit status:\n{log}");
    let _ = b.stop();
    let pre = probe.finish();
    let steal = steal_from.zip(steal_ms()).map(|(a, b)| b - a);

    let limit_bytes = model.link_in_flight_bytes();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut captures = Vec::new();
    for q in 0..2u16 {
        let frames = read_pcap_ns(&dir.join(format!("q{q}.pcap"))).unwrap();
        let pkts = parse_capture(&frames).unwrap_or_else(|e| panic!("queue {q}: {e}"));
        assert!(pkts.len() > 100, "queue {q}: only {} frames", pkts.len());
        captures.push(pkts);
    }
    // Capture clock → header clock: net_pcap stamps from the TSC at DPDK's estimate of its
    // frequency, ~0.1 % off CLOCK_MONOTONIC (ms over the run); see `clock_map`.
    let mut marks: Vec<(Nanos, i128)> = captures
        .iter()
        .flatten()
        .map(|p| (p.ts, p.ts as i128 - p.header.submit_ts as i128))
        .collect();
    marks.sort_unstable();
    let to_mono = clock_map(&marks, judge_from, stopped_at, ALIGN_WINDOW);
    let (p0, p1) = (marks[0].0, marks[marks.len() - 1].0);
    println!(
        "capture clock vs CLOCK_MONOTONIC: {:+.4} % over {:.2} s",
        ((p1 - p0) as f64 / (to_mono(p1) - to_mono(p0)) as f64 - 1.0) * 100.0,
        (p1 - p0) as f64 / 1e9
    );
    // From here on every time is on the header clock.
    let captures: Vec<Vec<Pkt>> = captures
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|p| Pkt {
                    ts: to_mono(p.ts),
                    ..p
                })
                .collect()
        })
        .collect();
    let to_mono = |ts: Nanos| ts;
    // Packets stamped before the channels settled or after the stop began (the shutdown
    // drains closed channels) are not judged.
    let captures: Vec<Vec<Pkt>> = captures
        .into_iter()
        .map(|v| {
            let start = v
                .iter()
                .position(|p| to_mono(p.ts) >= judge_from)
                .unwrap_or(v.len());
            let end = v
                .iter()
                .position(|p| to_mono(p.ts) >= stopped_at)
                .unwrap_or(v.len());
            v[start..end.max(start)].to_vec()
        })
        .collect();

    for (q, pkts) in captures.iter().enumerate() {
        let mine: HashMap<u32, Option<RtChannel>> = chans
            .iter()
            .filter(|c| usize::from(c.txq) == q)
            .map(|c| (c.id, c.rt))
            .collect();
        assert_eq!(
            mine.len(),
            3,
            "queue {q}: three channels placed on core {q}"
        );
        // 1. Channels of this queue only.
        for (i, p) in pkts.iter().enumerate() {
            if !mine.contains_key(&p.header.channel) {
                failures.push(format!(
                    "queue {q}: packet {i} of channel {} (not a channel of core {q})",
                    p.header.channel
                ));
            }
        }
        // 2. Per channel: messages in order, fragments complete (the last message may be cut
        //    by the stop).
        let mut per: BTreeMap<u32, Vec<(u32, u16, u16)>> = BTreeMap::new();
        for p in pkts {
            per.entry(p.header.channel).or_default().push((
                p.header.msg_seq,
                p.header.frag_index,
                p.header.frag_count,
            ));
        }
        for (ch, v) in &per {
            // The judged part may start inside a message: from the first message start on.
            let first = v.iter().position(|e| e.1 == 0).unwrap_or(v.len());
            let Some(&(seq0, _, _)) = v.get(first) else {
                continue;
            };
            let mut expect = (seq0, 0u16);
            for &(seq, idx, count) in &v[first..] {
                if (seq, idx) != expect {
                    failures.push(format!(
                        "queue {q} ch {ch}: got msg {seq} fragment {idx}, expected msg {} \
                         fragment {}",
                        expect.0, expect.1
                    ));
                    break;
                }
                expect = if idx + 1 == count {
                    (seq + 1, 0)
                } else {
                    (seq, idx + 1)
                };
            }
        }
        // 3. Pacing at the share.
        let rate = RATE_BPS * u64::from(SHARES[q]) / 1_000_000;
        let limit_ns =
            (u128::from(limit_bytes) * 8 * 1_000_000_000).div_ceil(u128::from(rate)) as Nanos;
        let slack = |ts: Nanos| {
            let t = to_mono(ts);
            STAMP_SLACK + pre.waited(t.saturating_sub(PREEMPT_WINDOW), t + PROBE_SLACK)
        };
        let pv = pacing_violations(pkts, rate, limit_ns, slack);
        let span = pkts.last().unwrap().ts - pkts[0].ts;
        let bytes: u64 = pkts[1..].iter().map(|p| p.wire).sum();
        let used = bytes as f64 * 8.0 / (span as f64 / 1e9) / RATE_BPS as f64;
        report.push(format!(
            "queue {q}: {} packets ({} real-time), {:.1} % of the link used over {:.2} s \
             (share {:.1} %); pacing violations {}",
            pkts.len(),
            pkts.iter().filter(|p| !p.best_effort()).count(),
            used * 100.0,
            span as f64 / 1e9,
            f64::from(SHARES[q]) / 1e4,
            pv.len()
        ));
        failures.extend(pv.into_iter().take(10).map(|v| format!("queue {q}: {v}")));
        // Within the share over the whole run (the in-flight limit is a few frames).
        let cap = f64::from(SHARES[q]) / 1e6
            * (1.0 + (limit_ns + STAMP_SLACK + ALIGN_ERROR) as f64 / span as f64);
        if used > cap {
            failures.push(format!(
                "queue {q}: used {:.2} % of the link, more than its share allows ({:.2} %)",
                used * 100.0,
                cap * 100.0
            ));
        }
        // The flood kept the queue busy, so pacing (not idleness) is what was measured.
        if used < f64::from(SHARES[q]) / 1e6 * 0.25 {
            failures.push(format!(
                "queue {q}: only {:.1} % of the link used: the flood did not load the queue",
                used * 100.0
            ));
        }
        // 4. EDF.
        let rt: HashMap<u32, RtChannel> = mine
            .iter()
            .filter_map(|(&id, c)| c.map(|c| (id, c)))
            .collect();
        let ev = edf_violations(pkts, &rt, to_mono, STAMP_SLACK, |a, b| {
            pre.waited(a.saturating_sub(PROBE_SLACK), b + PROBE_SLACK)
        });
        failures.extend(ev.into_iter().map(|v| format!("queue {q}: EDF: {v}")));
    }
    report.push(format!(
        "polling threads' measured OS preemption: {} ns in all",
        pre.total()
    ));
    if let Some(ms) = steal {
        report.push(format!(
            "host steal time over the run (not seen by the probe): {ms} ms, summed over CPUs"
        ));
    }
    for r in &report {
        println!("{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        report.join("\n")
    );
}

/// The checks catch what they are for: a capture paced at twice the rate, and a swap of two
/// real-time packets of different link deadlines.
#[test]
fn the_capture_checks_catch_a_fast_link_and_a_swap() {
    use dataplane::wire::RtHeader;
    let rate = 10_000_000u64;
    let frame_wire = 1538u64;
    let tx = frame_wire * 8 * 1_000_000_000 / rate; // 1.23 ms per frame
    let pkt = |ts: Nanos, ch: u32, seq: u32, deadline: Nanos| Pkt {
        ts,
        wire: frame_wire,
        header: RtHeader {
            channel: ch,
            msg_seq: seq,
            frag_count: 1,
            deadline,
            ..RtHeader::default()
        },
    };
    let paced: Vec<Pkt> = (0..200).map(|i| pkt(i * tx, 1, i as u32, 0)).collect();
    assert!(pacing_violations(&paced, rate, 2 * tx, |_| 0).is_empty());
    let fast: Vec<Pkt> = (0..200).map(|i| pkt(i * tx / 2, 1, i as u32, 0)).collect();
    assert!(!pacing_violations(&fast, rate, 2 * tx, |_| 0).is_empty());

    let mut chans = HashMap::new();
    let c = RtChannel {
        deadline: 10_000_000,
        cpu_deadline: 100_000,
        link_deadline: 5_000_000,
    };
    chans.insert(1, c);
    chans.insert(
        2,
        RtChannel {
            link_deadline: 1_000_000,
            ..c
        },
    );
    // Channel 2's packet (ℓ = 0, link deadline 1 ms) leaves 3 ms after channel 1's (ℓ = 0,
    // link deadline 5 ms) although it was written by 0.1 ms.
    let swapped = [
        pkt(2_000_000, 1, 0, 10_000_000),
        pkt(3_000_000, 2, 0, 10_000_000),
    ];
    assert_eq!(
        edf_violations(&swapped, &chans, |t| t, 0, |_, _| 0).len(),
        1
    );
    // The same order is fine when k left before j was certainly written...
    let early = [
        pkt(50_000, 1, 0, 10_000_000),
        pkt(3_000_000, 2, 0, 10_000_000),
    ];
    assert!(edf_violations(&early, &chans, |t| t, 0, |_, _| 0).is_empty());
    // ... or when measured preemption covers the margin.
    assert!(edf_violations(&swapped, &chans, |t| t, 0, |_, _| 2_000_000).is_empty());
    let in_order = [
        pkt(2_000_000, 2, 0, 10_000_000),
        pkt(3_000_000, 1, 0, 10_000_000),
    ];
    assert!(edf_violations(&in_order, &chans, |t| t, 0, |_, _| 0).is_empty());
}
