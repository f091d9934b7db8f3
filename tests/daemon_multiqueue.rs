//! Two `rtchand`s with two cores each on `[port] kind = "af_packet"`, joined by a veth pair made
//! with two RX and two TX queues between two network namespaces this test makes (root). Each
//! daemon's port is two af_packet sockets in one `PACKET_FANOUT_CBPF` group: each core sends on
//! its own socket, and the kernel steers each received frame to the socket of the core holding
//! its channel's receiver (the software hand-off behind it). Driven by `rtchanctl` only: two
//! real-time channels on each sending core and a best-effort flood on each, at once. Then:
//! - the receiver's `stats --json`: for every real-time channel no loss, no duplicate or
//!   reordering, everything sent 300 ms before the snapshot delivered, and no deadline miss
//!   that the measured OS preemption of both daemons' polling threads does not explain
//!   (`rtchan::preemption`); best-effort delivered on both cores;
//! - both daemons' `stats --port`: every socket carried traffic (the sender's sent, the
//!   receiver's received), the real-time channels' receivers sit on both receiving cores, no
//!   hand-off dropped a frame, and with kernel steering none needed the hand-off at all;
//! - both daemons stop on SIGTERM with exit status 0.
//!
//! A second test: three cores on a two-queue veth are refused at start, naming `cores`.
//!
//! The AF_XDP half (feature `af_xdp`) runs the same scenario with `kind = "af_xdp"`: core `i`'s
//! socket on queue `i` (copy mode, libxdp's default program, `report_completions = false` as
//! in tests/daemon_netns.rs). On veth a frame arrives on the queue its sender sent it on, not
//! the one of its channel's receiver, so there the software hand-off carries every frame whose
//! sending and receiving cores differ; the test then asks that it did so without a drop. The
//! program takes every frame of the bound queues away from the kernel, so these daemons peer
//! over a second veth pair and address data frames with `[[peers]] data_ip`. Prints SKIPPED
//! when `socket(AF_XDP)` is refused.
//!
//! Prints SKIPPED when not root or when `RTCHAN_SKIP_NETNS` is set. The namespaces (and the
//! veth pair with them) are deleted and the daemons killed on every exit path.

#![cfg(target_os = "linux")]

#[path = "common/dpdk_daemon.rs"]
mod dpdk_daemon;
use dpdk_daemon::*;

use std::collections::BTreeSet;
use std::time::Duration;

use control::protocol::{ChannelInfo, PortStatsInfo};
use rtchan::ports::netns::{is_root, mac_string, Namespaces};
use rtchan::preemption::PreemptionProbe;

const RATE_BPS: u64 = 100_000_000;
/// Each sending core's TX queue share of the link.
const SHARES: [u32; 2] = [500_000, 400_000];
/// Loose bounds for a debug build on a loaded 2-core machine (see tests/daemon_netns.rs).
const DEADLINE: &str = "50ms";
const NETWORK_BOUND: &str = "10ms";
const PEER_PORT: u16 = 7413;
const MAC_S: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x04, 0x0a];
const MAC_R: [u8; 6] = [0x02, 0x72, 0x74, 0x00, 0x04, 0x0b];
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(2);
/// Everything the sender had sent this long before the receiver's snapshot must have arrived.
const SETTLE: Duration = Duration::from_millis(300);

/// Real-time channels: (sending core, mmax, imin, bmax, source).
const REAL_TIME: &[(&str, &str, &str, &str, &str)] = &[
    ("0", "200", "1ms", "4", "periodic"),
    ("0", "4000", "5ms", "2", "periodic"),
    ("1", "64", "500us", "4", "periodic"),
    ("1", "1000", "2ms", "2", "poisson"),
];

/// Why the test cannot run here, if it cannot.
fn skip() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root (network namespaces, veth, AF_PACKET)");
    }
    if std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        return Some("RTCHAN_SKIP_NETNS is set");
    }
    None
}

/// The port backend a daemon runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    AfPacket,
    #[cfg(feature = "af_xdp")]
    AfXdp,
}

impl Backend {
    fn port_table(self, dev: &str) -> String {
        let kind = match self {
            Self::AfPacket => {
                "kind = \"af_packet\"\nrx_block_size = 4096\nrx_blocks = 512\n\
                               rx_block_timeout_ms = 1\n"
            }
            #[cfg(feature = "af_xdp")]
            Self::AfXdp => {
                "kind = \"af_xdp\"\nqueue = 0\nbind = \"copy\"\nrx_frames = 2048\n\
                            report_completions = false\n"
            }
        };
        format!("[port]\n{kind}device = \"{dev}\"\nlink_rate_bps = {RATE_BPS}\nbuffers = 8192\n")
    }

    /// The port takes every frame of its queues away from the kernel: peering needs a link
    /// of its own.
    fn needs_control_link(self) -> bool {
        self != Self::AfPacket
    }
}

/// Two namespaces joined by a veth pair with two queues per end and a /30 on it (and, for a
/// backend that needs it, a second pair for the peering): the guard, the namespaces, the
/// interfaces and the addresses (sender first).
struct Bed {
    backend: Backend,
    /// Deletes the namespaces (and the veth with them) on drop.
    _ns: Namespaces,
    ns_s: String,
    ns_r: String,
    if_s: String,
    if_r: String,
    ip_s: String,
    ip_r: String,
    /// The peering addresses (the data link's without a control link).
    cip_s: String,
    cip_r: String,
}

impl Bed {
    fn new(tag: &str, backend: Backend) -> Self {
        let pid = std::process::id();
        let (ns_s, ns_r) = (
            format!("rtchan-m{tag}s-{pid}"),
            format!("rtchan-m{tag}r-{pid}"),
        );
        let (if_s, if_r) = (format!("rm{tag}s{pid}"), format!("rm{tag}r{pid}"));
        let net = format!("10.206.{}", pid % 256);
        let (ip_s, ip_r) = (format!("{net}.1"), format!("{net}.2"));
        let control = backend.needs_control_link();
        let (cip_s, cip_r) = if control {
            let cnet = format!("10.207.{}", pid % 256);
            (format!("{cnet}.1"), format!("{cnet}.2"))
        } else {
            (ip_s.clone(), ip_r.clone())
        };
        let (cif_s, cif_r) = (format!("rc{tag}s{pid}"), format!("rc{tag}r{pid}"));
        let mut ns = Namespaces::default();
        let setup = ns
            .veth_pair_with_queues((&ns_s, &if_s, MAC_S), (&ns_r, &if_r, MAC_R), 2)
            .and_then(|()| {
                use rtchan::ports::netns::ip;
                if control {
                    ip(&[
                        "link", "add", &cif_s, "netns", &ns_s, "type", "veth", "peer", "name",
                        &cif_r, "netns", &ns_r,
                    ])?;
                }
                let mut addrs = vec![(&ns_s, &if_s, &ip_s), (&ns_r, &if_r, &ip_r)];
                if control {
                    addrs.extend([(&ns_s, &cif_s, &cip_s), (&ns_r, &cif_r, &cip_r)]);
                }
                for (n, dev, addr) in addrs {
                    ip(&["-n", n, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
                    ip(&["-n", n, "link", "set", dev, "up"])?;
                }
                Ok(())
            });
        if let Err(e) = setup {
            panic!(
                "running as root but the veth/netns set-up failed ({e}); RTCHAN_SKIP_NETNS=1 skips"
            );
        }
        Self {
            backend,
            cip_s,
            cip_r,
            _ns: ns,
            ns_s,
            ns_r,
            if_s,
            if_r,
            ip_s,
            ip_r,
        }
    }

    /// A daemon's configuration: `cores` cores, the sender or the receiver side.
    fn config(&self, dir: &std::path::Path, sender: bool, cores: usize) -> String {
        let (name, dev, me, peer, peer_ip, peer_data_ip, peer_mac) = if sender {
            let r = &self.cip_r;
            (
                "send",
                &self.if_s,
                &self.cip_s,
                "recv",
                r,
                &self.ip_r,
                MAC_R,
            )
        } else {
            let s = &self.cip_s;
            (
                "recv",
                &self.if_r,
                &self.cip_r,
                "send",
                s,
                &self.ip_s,
                MAC_S,
            )
        };
        let mut cfg = format!(
            r#"socket = "{dir}/{name}.sock"
{port}
[policy]
idle = "sleep"
idle_sleep = "20us"
granularity = 2
best_effort_reserve_ppm = 100000
[peering]
name = "{name}"
listen = "{me}:{PEER_PORT}"
[[peers]]
name = "{peer}"
address = "{peer_ip}:{PEER_PORT}"
network_bound = "{NETWORK_BOUND}"
mac = "{mac}"
data_ip = "{peer_data_ip}"
"#,
            dir = dir.display(),
            port = self.backend.port_table(dev),
            mac = mac_string(peer_mac),
        );
        for i in 0..cores {
            let share = SHARES.get(i).copied().unwrap_or(50_000);
            cfg.push_str(&format!("[[cores]]\ntx_share_ppm = {share}\n"));
        }
        cfg
    }

    /// Starts a daemon in its namespace at nice -20 (the polling threads must not wait behind
    /// other processes for whole scheduler slices; their idle loop sleeps, so softirqs run).
    fn start(
        &self,
        dir: &std::path::Path,
        sender: bool,
        cores: usize,
    ) -> Result<DaemonProc, String> {
        let (name, ns) = if sender {
            ("send", &self.ns_s)
        } else {
            ("recv", &self.ns_r)
        };
        DaemonProc::start(
            name,
            &["ip", "netns", "exec", ns, "nice", "-n", "-20"],
            dir,
            &self.config(dir, sender, cores),
        )
    }
}

#[test]
fn two_daemons_with_two_af_packet_cores_each() {
    two_daemons(Backend::AfPacket);
}

#[cfg(feature = "af_xdp")]
#[test]
fn two_daemons_with_two_af_xdp_cores_each() {
    if let Err(e) = rtchan::ports::afxdp::probe() {
        eprintln!("SKIPPED daemon_multiqueue (af_xdp): AF_XDP is not available here: {e}");
        return;
    }
    two_daemons(Backend::AfXdp);
}

/// One scenario at a time: two of them at once are eight polling threads at nice -20 on a
/// 2-CPU machine, and the test's own `rtchanctl` calls then wait for a CPU for tens of
/// seconds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn two_daemons(backend: Backend) {
    if let Some(why) = skip() {
        eprintln!("SKIPPED daemon_multiqueue: {why}");
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tag = match backend {
        Backend::AfPacket => "p",
        #[cfg(feature = "af_xdp")]
        Backend::AfXdp => "x",
    };
    let bed = Bed::new(tag, backend);
    let dir = tmpdir(&format!("daemon-multiqueue-{tag}"));
    let mut receiver = bed.start(&dir, false, 2).unwrap_or_else(|e| panic!("{e}"));
    let mut sender = bed.start(&dir, true, 2).unwrap_or_else(|e| panic!("{e}"));
    let run = scenario(&sender, &receiver);
    let mut problems = Vec::new();
    for (who, d) in [("sender", &mut sender), ("receiver", &mut receiver)] {
        match d.stop() {
            Ok(0) => {}
            Ok(c) => problems.push(format!("{who} exit status {c}")),
            Err(e) => problems.push(e),
        }
    }
    eprintln!("--- sender daemon ---\n{}", sender.log_text());
    eprintln!("--- receiver daemon ---\n{}", receiver.log_text());
    drop(sender);
    drop(receiver);
    drop(bed);
    match run {
        Ok(p) => problems.extend(p),
        Err(e) => problems.push(e),
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        problems.is_empty(),
        "daemon_multiqueue:\n  {}",
        problems.join("\n  ")
    );
}

/// Opens a channel with `rtchanctl channel open ARGS --dst recv`.
fn open(send: &std::path::Path, args: &[&str]) -> Result<ChannelInfo, String> {
    let mut a = vec!["channel", "open", "--dst", "recv"];
    a.extend_from_slice(args);
    typed(send, &a)
}

fn scenario(sender: &DaemonProc, receiver: &DaemonProc) -> Result<Vec<String>, String> {
    let (send, recv) = (sender.socket.as_path(), receiver.socket.as_path());
    let probe = PreemptionProbe::start()?;
    for d in [sender, receiver] {
        let n = probe.watch_threads_of(d.pid(), "rtchan-core")?;
        if n != 2 {
            return Err(format!("daemon {}: {n} rtchan-core threads, not 2", d.name));
        }
    }
    let mut rt = Vec::new();
    for &(core, mmax, imin, bmax, source) in REAL_TIME {
        let ch = open(
            send,
            &[
                "--mmax",
                mmax,
                "--imin",
                imin,
                "--bmax",
                bmax,
                "--deadline",
                DEADLINE,
                "--core",
                core,
                "--source",
                source,
            ],
        )?;
        eprintln!(
            "opened channel {} on sending core {}: mmax {mmax} imin {imin} ({source}); \
             receiving core {}",
            ch.id, ch.sender.core, ch.receiver.admitted.core
        );
        rt.push((ch, source));
    }
    let mut be = Vec::new();
    for core in ["0", "1"] {
        let ch = open(
            send,
            &[
                "--best-effort",
                "--mmax",
                "1400",
                "--bmax",
                "256",
                "--imin",
                "100us",
                "--core",
                core,
                "--source",
                "greedy:10",
            ],
        )?;
        eprintln!(
            "opened best-effort channel {} on sending core {}; receiving core {}",
            ch.id, ch.sender.core, ch.receiver.admitted.core
        );
        be.push(ch);
    }
    let mut problems = Vec::new();
    let tx_cores: BTreeSet<u16> = rt.iter().map(|(c, _)| c.sender.core).collect();
    let rx_cores: BTreeSet<u16> = rt.iter().map(|(c, _)| c.receiver.admitted.core).collect();
    if tx_cores.len() != 2 || rx_cores.len() != 2 {
        problems.push(format!(
            "real-time channels on sending cores {tx_cores:?} and receiving cores {rx_cores:?}, \
             not both of each"
        ));
    }

    std::thread::sleep(WARMUP + WINDOW);
    let s1 = stats(send)?;
    std::thread::sleep(SETTLE);
    let r = stats(recv)?;
    let s2 = stats(send)?;
    let send_port: PortStatsInfo = typed(send, &["stats", "--port"])?;
    let recv_port: PortStatsInfo = typed(recv, &["stats", "--port"])?;
    let port_text = ctl(recv, &["stats", "--port"])?;
    let port_text = String::from_utf8_lossy(&port_text.stdout).into_owned();
    eprintln!("receiver `stats --port`:\n{port_text}");
    let preempted = probe.finish();
    eprintln!("{preempted}");

    for (ch, source) in &rt {
        let id = ch.id;
        let tx1 = find(&s1, id)?.tx.clone().ok_or("no tx counters")?;
        let tx2 = find(&s2, id)?.tx.clone().ok_or("no tx counters")?;
        let rx = find(&r, id)?
            .rx
            .clone()
            .ok_or(format!("channel {id}: no receiver"))?;
        let label = format!(
            "channel {id} ({source}, cores {} → {})",
            ch.sender.core, ch.receiver.admitted.core
        );
        eprintln!("{}", channel_line(&label, &tx1, &tx2, &rx));
        judge_receiver(&label, tx1.sent, &rx, &preempted, &mut problems);
    }
    for ch in &be {
        let rx = find(&r, ch.id)?
            .rx
            .clone()
            .ok_or("best-effort: no receiver")?;
        eprintln!(
            "best-effort channel {} (cores {} → {}): delivered {}",
            ch.id, ch.sender.core, ch.receiver.admitted.core, rx.delivered
        );
        if rx.delivered == 0 {
            problems.push(format!("best-effort channel {}: nothing delivered", ch.id));
        }
    }

    // Per socket (= core): the sender sent on both, the receiver received on both, the
    // hand-off lost nothing, and kernel steering left it nothing to do; software steering
    // (frames arrive on their sender's queue) carried the channels whose cores differ.
    let want = format!("2 sockets, one per core, {} steering", {
        recv_port.steering.as_deref().unwrap_or("-")
    });
    if !port_text.contains(&want) || port_text.lines().count() != 4 {
        problems.push(format!(
            "receiver `stats --port` lacks \"{want}\" and a line per socket:\n{port_text}"
        ));
    }
    let crossing = rt
        .iter()
        .any(|(c, _)| c.sender.core != c.receiver.admitted.core);
    let handed: u64 = recv_port.queues.iter().map(|q| q.handed_in).sum();
    if recv_port.steering.as_deref() == Some("software") && crossing && handed == 0 {
        problems.push(
            "receiver: software steering, channels crossing cores, but nothing handed over".into(),
        );
    }
    for (who, p) in [("sender", &send_port), ("receiver", &recv_port)] {
        eprintln!(
            "{who} port {} steering {:?}; per socket (rx, tx, handed in, hand-off drops): {:?}",
            p.kind,
            p.steering,
            p.queues
                .iter()
                .map(|q| (q.rx_packets, q.tx_packets, q.handed_in, q.handoff_dropped))
                .collect::<Vec<_>>()
        );
        if p.queues.len() != 2 {
            problems.push(format!("{who}: {} sockets, not 2", p.queues.len()));
        }
        for q in &p.queues {
            let carried = if who == "sender" {
                q.tx_packets
            } else {
                q.rx_packets
            };
            if carried == 0 {
                problems.push(format!("{who}: socket {} carried no traffic", q.queue));
            }
            if q.handoff_dropped != 0 {
                problems.push(format!(
                    "{who}: socket {} dropped {} handed-off frames",
                    q.queue, q.handoff_dropped
                ));
            }
            if who == "receiver" && p.steering.as_deref() == Some("kernel") && q.handed_in != 0 {
                problems.push(format!(
                    "receiver: {} frames handed to core {} in software although the kernel \
                     steers",
                    q.handed_in, q.queue
                ));
            }
        }
    }
    Ok(problems)
}

#[test]
fn more_cores_than_the_device_has_queues_are_refused() {
    if let Some(why) = skip() {
        eprintln!("SKIPPED daemon_multiqueue: {why}");
        return;
    }
    let bed = Bed::new("r", Backend::AfPacket);
    let dir = tmpdir("daemon-multiqueue-refused");
    let e = match bed.start(&dir, false, 3) {
        Ok(mut d) => {
            let _ = d.stop();
            panic!("three cores on a two-queue veth were accepted");
        }
        Err(e) => e,
    };
    drop(bed);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.contains("cores: 3 [[cores]] entries need 3 RX and 3 TX queues")
            && e.contains("which has 2 RX and 2 TX queues"),
        "{e}"
    );
}
