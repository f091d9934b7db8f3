//! Two `rtchand`s on `[port] kind = "dpdk"`, joined by DPDK's `net_af_packet` vdev over a veth
//! pair between two network namespaces this test makes (feature `dpdk`, root). Each daemon has
//! two cores, so its port has two TX/RX queue pairs (`qpairs=2`: two AF_PACKET sockets, the
//! receive side fanned out by flow hash, so frames reach whichever queue the kernel picks and
//! the software hand-off takes them to the core of their receiver). Driven by `rtchanctl` only:
//! two real-time channels on each sending core and a best-effort flood on each, at once. Then:
//! - the receiver's `stats --json`: no loss, no duplicate or reordering, everything sent 300 ms
//!   before the snapshot delivered, and no deadline miss that the measured OS preemption of
//!   both daemons' polling threads does not explain (`rtchan::preemption`);
//! - a capture of the sender's veth (tcpdump, nanosecond stamps; the vdev sends through the
//!   qdisc, `qdisc_bypass=0`, so the kernel's taps see its frames), split by channel into the
//!   two TX queues: each queue paced at its share (the busy-until replay of
//!   tests/daemon_dpdk_pcap.rs) and within it over the run;
//! - both daemons, sent SIGTERM together, stop with exit status 0 (within 30 s).
//!
//! Prints SKIPPED when not root, when `RTCHAN_SKIP_NETNS` is set, or without tcpdump. The
//! namespaces (and the veth pair with them) are deleted and the daemons killed on every exit
//! path.
#![cfg(feature = "dpdk")]

#[path = "common/dpdk_daemon.rs"]
mod dpdk_daemon;
use dpdk_daemon::*;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use control::config::DaemonConfig;
use control::protocol::{ChannelInfo, PortStatsInfo};
use dataplane::time::Nanos;
use rtchan::ports::netns::{ip, is_root, Namespaces};
use rtchan::preemption::PreemptionProbe;

const RATE_BPS: u64 = 100_000_000;
const SHARES: [u32; 2] = [500_000, 400_000];
const DEADLINE: &str = "50ms";
const NETWORK_BOUND: &str = "10ms";
const PEER_PORT: u16 = 7412;
const MAC_S: &str = "02:72:74:00:02:0a";
const MAC_R: &str = "02:72:74:00:02:0b";
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(2);
/// Everything the sender had sent this long before the receiver's snapshot must have arrived.
const SETTLE: Duration = Duration::from_millis(300);
/// What a captured frame's stamp may lag behind its release without OS preemption: the rest
/// of its burst through the PMD's TX ring and one `sendto`, in a debug build.
const STAMP_SLACK: Nanos = 300_000;
const PREEMPT_WINDOW: Nanos = 20_000_000;
const PROBE_SLACK: Nanos = 2_000_000;
const ALIGN_WINDOW: Nanos = 300_000_000;
/// How far the clock map's anchors may be off; the throughput bound allows this much more.
const ALIGN_ERROR: Nanos = 2_000_000;

/// Real-time channels: (core, mmax, imin, bmax, source).
const REAL_TIME: &[(&str, &str, &str, &str, &str)] = &[
    ("0", "1000", "2ms", "4", "periodic"),
    ("0", "4000", "5ms", "2", "periodic"),
    ("1", "200", "1ms", "4", "poisson"),
    ("1", "3000", "4ms", "2", "bursts"),
];

/// tcpdump in a namespace, stopped (SIGINT, so it flushes) by [`Capture::stop`], killed on drop.
struct Capture(Option<Child>);

impl Capture {
    fn start(ns: &str, dev: &str, file: &Path) -> Result<Self, String> {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "nice", "-n", "-20", "tcpdump", "-i", dev, "-Q", "out", "-n",
                "-U",
            ])
            .args(["--time-stamp-precision=nano", "-B", "16384", "-w"])
            .arg(file)
            .args(["udp", "port", "7447"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tcpdump: {e}"))?;
        // tcpdump opens the interface before it writes the file header.
        let t = std::time::Instant::now();
        while t.elapsed() < STEP_TIMEOUT {
            if file.exists() {
                return Ok(Self(Some(child)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(Self(Some(child)));
        Err("tcpdump did not start".into())
    }

    fn stop(&mut self) -> String {
        let Some(c) = self.0.take() else {
            return String::new();
        };
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        c.wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn two_daemons_over_dpdk_vdevs_two_queues_each() {
    let test = "daemon_dpdk_netns";
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (network namespaces, veth, AF_PACKET)");
        return;
    }
    if std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED {test}: RTCHAN_SKIP_NETNS is set");
        return;
    }
    if Command::new("tcpdump").arg("--version").output().is_err() {
        eprintln!("SKIPPED {test}: tcpdump is not installed (scripts/test.sh installs it)");
        return;
    }
    let pid = std::process::id();
    let (ns_s, ns_r) = (format!("rtchan-qs-{pid}"), format!("rtchan-qr-{pid}"));
    let (if_s, if_r) = (format!("rqs{pid}"), format!("rqr{pid}"));
    let net = format!("10.205.{}", pid % 256);
    let (ip_s, ip_r) = (format!("{net}.1"), format!("{net}.2"));
    let dir = tmpdir("daemon-dpdk-netns");

    let mut namespaces = Namespaces::default();
    let setup: Result<(), String> = (|| {
        for n in [&ns_s, &ns_r] {
            namespaces.add(n)?;
        }
        ip(&[
            "link", "add", &if_s, "netns", &ns_s, "address", MAC_S, "type", "veth", "peer", "name",
            &if_r, "netns", &ns_r, "address", MAC_R,
        ])?;
        for (ns, dev, addr) in [(&ns_s, &if_s, &ip_s), (&ns_r, &if_r, &ip_r)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    })();
    if let Err(e) = setup {
        panic!("running as root but the veth/netns set-up failed ({e}); RTCHAN_SKIP_NETNS=1 skips");
    }

    let config =
        |name: &str, dev: &str, me: &str, mac: &str, peer: &str, peer_ip: &str, peer_mac: &str| {
            format!(
                r#"socket = "{dir}/{name}.sock"
[port]
kind = "dpdk"
# framecnt: each queue's kernel ring holds 4096 frames (default 512), so a receiving core the
# OS preempts for ~100 ms does not fill it: the vdev's fanout rolls a full socket's frames
# over to the other queue, and the hand-off then delivers them out of order (seen beside a
# CPU hog: 227 frames on the minor queue, 22 reordered on one channel).
device = "net_af_packet0,iface={dev},qpairs=2,qdisc_bypass=0,framecnt=4096"
ip = "{me}"
mac = "{mac}"
no_huge = true
eal_args = ["-m", "256"]
link_rate_bps = {RATE_BPS}
[policy]
idle = "sleep"
idle_sleep = "20us"
granularity = 2
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
[peering]
name = "{name}"
listen = "{me}:{PEER_PORT}"
[[peers]]
name = "{peer}"
address = "{peer_ip}:{PEER_PORT}"
network_bound = "{NETWORK_BOUND}"
mac = "{peer_mac}"
[[cores]]
tx_share_ppm = {s0}
[[cores]]
tx_share_ppm = {s1}
"#,
                dir = dir.display(),
                s0 = SHARES[0],
                s1 = SHARES[1],
            )
        };
    let recv_cfg = config("recv", &if_r, &ip_r, MAC_R, "send", &ip_s, MAC_S);
    let send_cfg = config("send", &if_s, &ip_s, MAC_S, "recv", &ip_r, MAC_R);
    let model = DaemonConfig::parse(&send_cfg).unwrap().tx_model();
    // The capture starts before the daemons: beside their polling threads (nice -20, busy in a
    // debug build) and a CPU hog, tcpdump took over 5 s to open the interface (2 runs of 5).
    let pcap = dir.join("send.pcap");
    let mut capture = Capture::start(&ns_s, &if_s, &pcap).unwrap_or_else(|e| panic!("{e}"));
    let mut receiver = DaemonProc::start("recv", &["ip", "netns", "exec", &ns_r], &dir, &recv_cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sender = DaemonProc::start("send", &["ip", "netns", "exec", &ns_s], &dir, &send_cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    // Raised to nice -20 only once both answer: the polling threads of a daemon at nice -20
    // starve the RCU grace-period kthread (nice 0) beside a CPU hog, and the other daemon's
    // start waits for grace periods (`ip netns exec` remounting /sys, the AF_PACKET rings):
    // started after a nice -20 receiver, the sender did not answer in 30 s (2 runs of 4).
    for d in [&receiver, &sender] {
        renice_threads(d.pid(), -20).unwrap_or_else(|e| panic!("{e}"));
    }
    let run = scenario(&sender, &receiver, &pcap, &mut capture, &model);
    let mut problems = Vec::new();
    // Together: one daemon's AF_PACKET sockets close slowly while the other still polls (see
    // `stop_all`).
    for (who, r) in ["sender", "receiver"]
        .into_iter()
        .zip(stop_all(&mut [&mut sender, &mut receiver]))
    {
        match r {
            Ok(0) => {}
            Ok(c) => problems.push(format!("{who} exit status {c}")),
            Err(e) => problems.push(e),
        }
    }
    eprintln!("--- sender daemon ---\n{}", sender.log_text());
    eprintln!("--- receiver daemon ---\n{}", receiver.log_text());
    drop(capture);
    drop(sender);
    drop(receiver);
    drop(namespaces);
    match run {
        Ok(p) => problems.extend(p),
        Err(e) => problems.push(e),
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(problems.is_empty(), "{test}:\n  {}", problems.join("\n  "));
}

fn scenario(
    sender: &DaemonProc,
    receiver: &DaemonProc,
    pcap: &Path,
    capture: &mut Capture,
    model: &control::admission::ResourceModel,
) -> Result<Vec<String>, String> {
    let (send, recv) = (sender.socket.as_path(), receiver.socket.as_path());
    let probe = PreemptionProbe::start()?;
    let steal_from = steal_ms();
    for d in [sender, receiver] {
        let n = probe.watch_threads_of(d.pid(), "rtchan-core")?;
        if n != 2 {
            return Err(format!("daemon {}: {n} rtchan-core threads, not 2", d.name));
        }
    }
    let mut rt: Vec<(ChannelInfo, &str)> = Vec::new();
    for &(core, mmax, imin, bmax, source) in REAL_TIME {
        let ch: ChannelInfo = typed(
            send,
            &[
                "channel",
                "open",
                "--mmax",
                mmax,
                "--imin",
                imin,
                "--bmax",
                bmax,
                "--deadline",
                DEADLINE,
                "--dst",
                "recv",
                "--core",
                core,
                "--source",
                source,
            ],
        )?;
        eprintln!(
            "opened channel {} on core {} (txq {}): mmax {mmax} imin {imin} ({source}); \
             receiver core {}",
            ch.id, ch.sender.core, ch.sender.txq, ch.receiver.admitted.core
        );
        rt.push((ch, source));
    }
    let mut be = Vec::new();
    for core in ["0", "1"] {
        let ch: ChannelInfo = typed(
            send,
            &[
                "channel",
                "open",
                "--best-effort",
                "--mmax",
                "1400",
                "--bmax",
                "256",
                "--imin",
                "100us",
                "--dst",
                "recv",
                "--core",
                core,
                "--source",
                "greedy:10",
            ],
        )?;
        be.push(ch);
    }
    let cores: std::collections::BTreeSet<u16> = rt.iter().map(|(c, _)| c.sender.txq).collect();
    let rx_cores: std::collections::BTreeSet<u16> =
        rt.iter().map(|(c, _)| c.receiver.admitted.core).collect();
    let mut problems = Vec::new();
    if cores.len() != 2 {
        problems.push(format!(
            "real-time channels on TX queues {cores:?}, not both"
        ));
    }
    eprintln!("receiving cores of the real-time channels: {rx_cores:?}");

    std::thread::sleep(WARMUP);
    let judge_from = dataplane::time::monotonic_now();
    std::thread::sleep(WINDOW);
    let s1 = stats(send)?;
    std::thread::sleep(SETTLE);
    let r_b = stats(recv)?;
    let s2 = stats(send)?;
    let judge_to = dataplane::time::monotonic_now();
    let send_port: PortStatsInfo = typed(send, &["stats", "--port"])?;
    let recv_port: PortStatsInfo = typed(recv, &["stats", "--port"])?;
    let tcpdump = capture.stop();
    let preempted = probe.finish();
    eprintln!("{preempted}");
    if let Some(ms) = steal_from.zip(steal_ms()).map(|(a, b)| b - a) {
        eprintln!(
            "host steal time over the run (not seen by the probe): {ms} ms, summed over CPUs"
        );
    }

    // Each real-time channel's misses, to place them on the capture below.
    let mut misses: Vec<(u32, control::protocol::MissTimes)> = Vec::new();
    for (ch, source) in &rt {
        let id = ch.id;
        let tx1 = find(&s1, id)?.tx.clone().ok_or("no tx counters")?;
        let tx2 = find(&s2, id)?.tx.clone().ok_or("no tx counters")?;
        let inc = find(&r_b, id)?;
        let rx = inc.rx.clone().ok_or(format!("channel {id}: no receiver"))?;
        eprintln!(
            "{}",
            channel_line(
                &format!("channel {id} ({source}, txq {})", ch.sender.txq),
                &tx1,
                &tx2,
                &rx
            )
        );
        misses.extend(rx.recent_misses.iter().map(|m| (id, *m)));
        judge_receiver(
            &format!("channel {id} ({source})"),
            tx1.sent,
            &rx,
            &preempted,
            &mut problems,
        );
    }
    for ch in &be {
        let rx = find(&r_b, ch.id)?
            .rx
            .clone()
            .ok_or("best-effort: no receiver")?;
        eprintln!(
            "best-effort channel {} (txq {}): delivered {}",
            ch.id, ch.sender.txq, rx.delivered
        );
        if rx.delivered == 0 {
            problems.push(format!("best-effort channel {}: nothing delivered", ch.id));
        }
    }

    // Both daemons' ports: the sender sent on both TX queues, the receiver's hand-off between
    // its cores lost nothing.
    for (who, p) in [("sender", &send_port), ("receiver", &recv_port)] {
        let d = p
            .dpdk
            .as_ref()
            .ok_or(format!("{who}: no DPDK port counters"))?;
        eprintln!(
            "{who} port {} ({}): link up {}; per queue (rx, tx, handed in, hand-off drops): {:?}",
            d.name,
            d.driver,
            d.link_up,
            d.queues
                .iter()
                .map(|q| (q.rx_packets, q.tx_packets, q.handed_in, q.handoff_dropped))
                .collect::<Vec<_>>()
        );
        if d.queues.len() != 2 {
            problems.push(format!("{who}: {} queue pairs, not 2", d.queues.len()));
        }
        for q in &d.queues {
            if q.handoff_dropped != 0 {
                problems.push(format!(
                    "{who}: queue {} dropped {} handed-off frames",
                    q.queue, q.handoff_dropped
                ));
            }
            if who == "sender" && q.tx_packets == 0 {
                problems.push(format!("sender: nothing sent on TX queue {}", q.queue));
            }
        }
    }

    // The capture, split into the two TX queues by channel.
    let frames = read_pcap_ns(pcap).map_err(|e| format!("{e} (tcpdump: {tcpdump})"))?;
    let pkts = parse_capture(&frames)?;
    let queue_of: HashMap<u32, u16> = rt
        .iter()
        .map(|(c, _)| (c.id, c.sender.txq))
        .chain(be.iter().map(|c| (c.id, c.sender.txq)))
        .collect();
    let mut marks: Vec<(Nanos, i128)> = pkts
        .iter()
        .map(|p| (p.ts, p.ts as i128 - p.header.submit_ts as i128))
        .collect();
    marks.sort_unstable();
    if marks.len() < 1000 {
        return Err(format!("only {} frames captured ({tcpdump})", marks.len()));
    }
    // The capture clock (CLOCK_REALTIME) mapped to the header clock (see `clock_map`).
    let to_mono = clock_map(&marks, judge_from, judge_to, ALIGN_WINDOW);
    // Where each miss lost its time: before its frames reached the sender's veth (the
    // sending daemon) or after (the kernel's veth path, the receiving daemon).
    for (id, m) in misses.iter().take(10) {
        let wire: Vec<String> = pkts
            .iter()
            .filter(|p| p.header.channel == *id && p.header.submit_ts == m.submit)
            .map(|p| {
                format!(
                    "frame {} on the wire {:.3} ms after submit",
                    p.header.frag_index,
                    to_mono(p.ts).saturating_sub(m.submit) as f64 / 1e6
                )
            })
            .collect();
        eprintln!(
            "channel {id}: a miss delivered {:.3} ms after submit ({:.3} ms late; polling \
             threads waited {:.3} ms meanwhile): {}",
            (m.delivered - m.submit) as f64 / 1e6,
            (m.delivered - m.deadline) as f64 / 1e6,
            preempted.waited(m.submit, m.delivered) as f64 / 1e6,
            if wire.is_empty() {
                "no frame of it captured".to_owned()
            } else {
                wire.join(", ")
            }
        );
    }
    let limit_bytes = model.link_in_flight_bytes();
    for q in 0..2u16 {
        let mine: Vec<Pkt> = pkts
            .iter()
            .filter(|p| queue_of.get(&p.header.channel) == Some(&q))
            .map(|p| Pkt {
                ts: to_mono(p.ts),
                ..*p
            })
            .filter(|p| p.ts >= judge_from && p.ts < judge_to)
            .collect();
        if mine.len() < 100 {
            problems.push(format!("queue {q}: only {} frames captured", mine.len()));
            continue;
        }
        let rate = RATE_BPS * u64::from(SHARES[usize::from(q)]) / 1_000_000;
        let limit_ns =
            (u128::from(limit_bytes) * 8 * 1_000_000_000).div_ceil(u128::from(rate)) as Nanos;
        let slack = |t: Nanos| {
            STAMP_SLACK + preempted.waited(t.saturating_sub(PREEMPT_WINDOW), t + PROBE_SLACK)
        };
        let pv = pacing_violations(&mine, rate, limit_ns, slack);
        let span = mine.last().unwrap().ts - mine[0].ts;
        let bytes: u64 = mine[1..].iter().map(|p| p.wire).sum();
        let used = bytes as f64 * 8.0 / (span as f64 / 1e9) / RATE_BPS as f64;
        eprintln!(
            "queue {q}: {} frames captured in {:.2} s, {:.1} % of the link (share {:.1} %), \
             pacing violations {}",
            mine.len(),
            span as f64 / 1e9,
            used * 100.0,
            f64::from(SHARES[usize::from(q)]) / 1e4,
            pv.len()
        );
        problems.extend(pv.into_iter().take(10).map(|v| format!("queue {q}: {v}")));
        let share = f64::from(SHARES[usize::from(q)]) / 1e6;
        let cap = share * (1.0 + (limit_ns + STAMP_SLACK + ALIGN_ERROR) as f64 / span as f64);
        if used > cap {
            problems.push(format!(
                "queue {q}: {:.2} % of the link, more than its share allows ({:.2} %)",
                used * 100.0,
                cap * 100.0
            ));
        }
    }
    Ok(problems)
}
