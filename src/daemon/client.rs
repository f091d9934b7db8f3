//! The control socket's client side and the human-readable tables of `rtchanctl`.
//!
//! [`Client`] sends one request line and reads its reply line; the table functions turn
//! replies into aligned text (every command also has `--json`, which prints the reply's
//! result as it came).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use control::protocol::{
    encode_request, ChannelInfo, ChannelList, ChannelStatsInfo, PolicyInfo, Reply, Request,
    MAX_LINE,
};
use control::units::{fmt_ns, fmt_size};
use dataplane::core::CoreStats;

use crate::sys::unix::{recv_with_fds, send_all};

/// Longest reply line read (a `list` of many channels is long; requests are capped at
/// [`MAX_LINE`]).
const MAX_REPLY: usize = MAX_LINE * 16;

/// A connection to the daemon.
pub struct Client {
    stream: UnixStream,
    /// Bytes received and not yet returned as a reply.
    buf: Vec<u8>,
    /// Descriptors received with those bytes.
    fds: Vec<OwnedFd>,
    path: String,
}

/// The daemon could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("daemon at {path}: {message}")]
pub struct Unreachable {
    /// The socket.
    pub path: String,
    /// What happened.
    pub message: String,
    /// The I/O error's kind (`PermissionDenied` when the socket's mode refused the caller).
    pub kind: io::ErrorKind,
}

impl Unreachable {
    /// Whether the socket's permissions refused the caller (EACCES/EPERM on connect).
    pub fn permission_denied(&self) -> bool {
        self.kind == io::ErrorKind::PermissionDenied
    }
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, Unreachable> {
        let stream = UnixStream::connect(path).map_err(|e| Unreachable {
            path: path.display().to_string(),
            message: e.to_string(),
            kind: e.kind(),
        })?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
            path: path.display().to_string(),
        })
    }

    fn unreachable(&self, message: String, kind: io::ErrorKind) -> Unreachable {
        Unreachable {
            path: self.path.clone(),
            message,
            kind,
        }
    }

    /// Sends `req` and reads the reply.
    pub fn call(&mut self, req: &Request) -> Result<Reply, Unreachable> {
        self.call_raw(&encode_request(req))
    }

    /// Sends `req` and reads the reply with the file descriptors that came with it.
    pub fn call_with_fds(&mut self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), Unreachable> {
        self.call_raw_with_fds(&encode_request(req))
    }

    /// Sends a raw line (newline included) and reads the reply (tests use this for malformed
    /// requests).
    pub fn call_raw(&mut self, line: &str) -> Result<Reply, Unreachable> {
        self.call_raw_with_fds(line).map(|(r, _)| r)
    }

    /// [`Client::call_raw`], with the descriptors the reply carried.
    pub fn call_raw_with_fds(&mut self, line: &str) -> Result<(Reply, Vec<OwnedFd>), Unreachable> {
        // A daemon that refuses the connection at accept (permission, connection caps)
        // answers one line and closes: the write may fail, the answer is still there to read.
        let written = send_all(self.stream.as_raw_fd(), line.as_bytes());
        match self.read_reply() {
            Ok(r) => Ok(r),
            Err(e) => match written {
                Err(w) => Err(self.unreachable(w.to_string(), w.kind())),
                Ok(()) => Err(e),
            },
        }
    }

    /// Reads one reply line and the descriptors received with it.
    pub fn read_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>), Unreachable> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let reply = serde_json::from_slice(&line[..i]).map_err(|e| {
                    self.unreachable(format!("bad reply: {e}"), io::ErrorKind::InvalidData)
                })?;
                return Ok((reply, std::mem::take(&mut self.fds)));
            }
            if self.buf.len() > MAX_REPLY {
                return Err(self.unreachable(
                    format!("reply longer than {MAX_REPLY} bytes"),
                    io::ErrorKind::InvalidData,
                ));
            }
            match recv_with_fds(self.stream.as_raw_fd(), &mut chunk, &mut self.fds) {
                Ok(0) => {
                    return Err(self.unreachable(
                        "the daemon closed the connection".into(),
                        io::ErrorKind::UnexpectedEof,
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.unreachable(e.to_string(), e.kind())),
            }
        }
    }

    /// The socket (e.g. to poll it for the daemon closing the connection).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

fn pct(ppm: u32) -> String {
    format!("{:.2}%", f64::from(ppm) / 1e4)
}

/// `channel list`.
pub fn list_table(l: &ChannelList) -> String {
    let mut s = String::new();
    if l.channels.is_empty() && l.incoming.is_empty() && l.unrestored.is_empty() {
        let mut s = String::from("no channels\n");
        if !l.receive_rejected.is_empty() {
            s.push_str(&format!(
                "receive path rejected: {}\n",
                reasons(&l.receive_rejected)
            ));
        }
        return s;
    }
    if !l.channels.is_empty() {
        s.push_str(&format!(
            "{:>5}  {:<10} {:>8} {:>9} {:>5} {:>9} {:>9} {:>9} {:>9} {:>4}  {:<11} {}\n",
            "ID",
            "DST",
            "MMAX",
            "IMIN",
            "BMAX",
            "D",
            "D_SEND",
            "NET",
            "D_RECV",
            "CORE",
            "POLICY",
            "SOURCE"
        ));
        for c in &l.channels {
            s.push_str(&format!(
                "{:>5}  {:<10} {:>8} {:>9} {:>5} {:>9} {:>9} {:>9} {:>9} {:>4}  {:<11} {}\n",
                c.id,
                c.dst,
                fmt_size(u64::from(c.sender.request.mmax)),
                fmt_ns(c.sender.request.imin),
                c.sender.request.bmax,
                if c.best_effort {
                    "best-eff".to_string()
                } else {
                    fmt_ns(c.deadline)
                },
                fmt_ns(c.sender.link_deadline),
                fmt_ns(c.network_bound),
                fmt_ns(c.receiver.deadline),
                c.sender.core,
                c.policy,
                c.source.as_deref().unwrap_or("-")
            ));
        }
    }
    if !l.incoming.is_empty() {
        if !l.channels.is_empty() {
            s.push('\n');
        }
        s.push_str(&format!(
            "{:>5}  {:<10} {:>8} {:>9} {:>9} {:>9} {:>4} {}\n",
            "IN", "FROM", "MMAX", "IMIN", "D", "D_RECV", "CORE", "STATE"
        ));
        for i in &l.incoming {
            s.push_str(&format!(
                "{:>5}  {:<10} {:>8} {:>9} {:>9} {:>9} {:>4} {}\n",
                i.id,
                i.from,
                fmt_size(u64::from(i.admitted.request.mmax)),
                fmt_ns(i.admitted.request.imin),
                fmt_ns(i.end_to_end),
                fmt_ns(i.deadline),
                i.admitted.core,
                if i.committed {
                    "established"
                } else {
                    "setting up"
                }
            ));
        }
    }
    if !l.receive_rejected.is_empty() {
        s.push_str(&format!(
            "receive path rejected: {}\n",
            reasons(&l.receive_rejected)
        ));
    }
    if !l.unrestored.is_empty() {
        if !l.channels.is_empty() || !l.incoming.is_empty() {
            s.push('\n');
        }
        s.push_str(
            "not re-established from the state file (kept in it until discarded with \
             `channel discard-unrestored RECORD`):\n",
        );
        for r in &l.unrestored {
            let id = r.id.map_or("?".to_string(), |i| i.to_string());
            s.push_str(&format!("{id:>5}  record {}: {}\n", r.index, r.error));
        }
    }
    s
}

/// `channel show` and `channel open`: one channel with its admission numbers.
pub fn channel_detail(c: &ChannelInfo) -> String {
    let a = &c.sender;
    let r = &c.receiver.admitted;
    let mut s = String::new();
    let state = if c.state == "dry_run" {
        "admissible (dry run: nothing reserved)"
    } else {
        "open"
    };
    s.push_str(&format!("channel {}  {}  → {}\n", c.id, state, c.dst));
    s.push_str(&format!(
        "  spec            mmax {}  imin {}  bmax {}  policy {}{}\n",
        fmt_size(u64::from(a.request.mmax)),
        fmt_ns(a.request.imin),
        a.request.bmax,
        c.policy,
        c.source
            .as_ref()
            .map(|x| format!("  source {x}"))
            .unwrap_or_default()
    ));
    s.push_str(&format!(
        "  deadline D      {} = sender {} + network {} + receiver {}\n",
        fmt_ns(c.deadline),
        fmt_ns(a.link_deadline),
        fmt_ns(c.network_bound),
        fmt_ns(c.receiver.deadline)
    ));
    s.push_str(&format!(
        "  sender          core {}  txq {}  CPU deadline {}  link deadline {}  packets {}\n",
        a.core,
        a.txq,
        fmt_ns(a.cpu_deadline),
        fmt_ns(a.link_deadline),
        a.packets
    ));
    s.push_str(&format!(
        "                  cost CPU {} link {}  utilisation CPU {} link {}  (core {} txq {})\n",
        fmt_ns(a.cpu_cost),
        fmt_ns(a.link_cost),
        pct(a.cpu_utilisation_ppm),
        pct(a.link_utilisation_ppm),
        pct(a.core_utilisation_ppm),
        pct(a.txq_utilisation_ppm)
    ));
    s.push_str(&format!(
        "                  buffer {} messages, {} bytes\n",
        a.buffer_messages, a.buffer_bytes
    ));
    s.push_str(&format!(
        "  receiver        host {}  core {}  bound {} (least {})  RX CPU deadline {}  utilisation core {}\n",
        c.receiver.host,
        r.core,
        fmt_ns(c.receiver.deadline),
        fmt_ns(c.receiver.least_deadline),
        fmt_ns(r.cpu_deadline),
        pct(r.core_utilisation_ppm)
    ));
    s
}

/// `stats --cores`: one line per polling core.
pub fn cores_table(cores: &[control::protocol::CoreStatsInfo]) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "{:<6} {:>14} {:>8} {:>12} {:>12}\n",
        "core", "iterations", "busy", "uptime", "longest"
    );
    for c in cores {
        let _ = writeln!(
            s,
            "{:<6} {:>14} {:>7.1}% {:>12} {:>12}",
            c.core,
            c.iterations,
            c.busy_share * 100.0,
            fmt_ns(c.uptime_ns),
            fmt_ns(c.longest_stretch_ns)
        );
    }
    s
}

/// The `stats --port` table: link, port counters, one line per queue pair, non-zero xstats.
pub fn port_table(p: &control::protocol::PortStatsInfo) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let dev = p.device.as_deref().unwrap_or("-");
    let Some(d) = &p.dpdk else {
        if p.queues.is_empty() {
            let _ = writeln!(
                s,
                "port {} ({dev}): no port counters kept for this kind and core count (dpdk, \
                 or af_packet with several cores)",
                p.kind
            );
        } else {
            let _ = writeln!(
                s,
                "port {} ({dev}): {} sockets, one per core, {} steering",
                p.kind,
                p.queues.len(),
                p.steering.as_deref().unwrap_or("-")
            );
            queue_rows(&mut s, &p.queues);
        }
        return s;
    };
    let link = match (d.link_up, d.link_speed_mbps) {
        (true, Some(m)) => format!(
            "up {m} Mb/s{}",
            if d.full_duplex { " full-duplex" } else { "" }
        ),
        (true, None) => "up".into(),
        (false, _) => "down".into(),
    };
    let _ = writeln!(s, "port dpdk {} ({}): link {link}", d.name, d.driver);
    let _ = writeln!(
        s,
        "  rx {} packets {} bytes, missed {} errors {} no-mbuf {}; tx {} packets {} bytes, \
         errors {}; RX pool {}/{} in use",
        d.ipackets,
        d.ibytes,
        d.imissed,
        d.ierrors,
        d.rx_nombuf,
        d.opackets,
        d.obytes,
        d.oerrors,
        d.rx_pool_in_use,
        d.rx_pool_size
    );
    let _ = writeln!(
        s,
        "  receive steering [{}]: {}",
        d.steering, d.steering_detail
    );
    if let Some(be) = d.be_queue {
        let _ = writeln!(
            s,
            "  best-effort RX queue {be}: {} packets; {} channel rule(s), {} refused",
            d.be_rx_packets, d.channel_rules, d.rule_failures
        );
    }
    queue_rows(&mut s, &d.queues);
    let nonzero: Vec<_> = d.xstats.iter().filter(|(_, &v)| v != 0).collect();
    if !nonzero.is_empty() {
        let _ = writeln!(s, "  xstats (non-zero; all in --json):");
        for (k, v) in nonzero {
            let _ = writeln!(s, "    {k} {v}");
        }
    }
    s
}

/// One line per queue pair (dpdk) or fanout socket (af_packet).
fn queue_rows(s: &mut String, queues: &[control::protocol::QueueStatsInfo]) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "{:>5} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10} {:>8}",
        "QUEUE", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "HANDED IN", "HO DROPS", "TX POOL"
    );
    for q in queues {
        let _ = writeln!(
            s,
            "{:>5} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10} {:>8}",
            q.queue,
            q.rx_packets,
            q.rx_bytes,
            q.tx_packets,
            q.tx_bytes,
            q.handed_in,
            q.handoff_dropped,
            q.tx_pool_in_use
        );
    }
}

/// `stats`.
pub fn stats_table(v: &[ChannelStatsInfo]) -> String {
    if v.is_empty() {
        return "no channels\n".into();
    }
    let mut s = format!(
        "{:>5} {:>3} {:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>7}\n",
        "ID",
        "DIR",
        "PEER",
        "SUBMIT",
        "SENT",
        "DROPS",
        "DELIVER",
        "LAT p50",
        "LAT p99",
        "LAT p99.9",
        "MISS",
        "LOST",
        "LATE"
    );
    for c in v {
        let (sub, sent, drops, late) =
            c.tx.as_ref()
                .map_or(("-".into(), "-".into(), "-".into(), "-".into()), |t| {
                    (
                        t.submitted.to_string(),
                        t.sent.to_string(),
                        (t.dropped + t.would_block).to_string(),
                        t.late_packets.to_string(),
                    )
                });
        let (del, p50, p99, p999, miss, lost) = match &c.rx {
            Some(r) => (
                r.delivered.to_string(),
                fmt_ns(r.latency.p50),
                fmt_ns(r.latency.p99),
                fmt_ns(r.latency.p999),
                r.deadline_misses.to_string(),
                r.lost.to_string(),
            ),
            None => match &c.tx {
                // Without the receiver here, the sending delay (submit to the wire).
                Some(t) => (
                    "-".into(),
                    format!("{}*", fmt_ns(t.delay.p50)),
                    format!("{}*", fmt_ns(t.delay.p99)),
                    format!("{}*", fmt_ns(t.delay.p999)),
                    "-".into(),
                    "-".into(),
                ),
                None => Default::default(),
            },
        };
        s.push_str(&format!(
            "{:>5} {:>3} {:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>7}\n",
            c.id, c.direction, c.peer, sub, sent, drops, del, p50, p99, p999, miss, lost, late
        ));
    }
    if v.iter().any(|c| c.rx.is_none() && c.tx.is_some()) {
        s.push_str("(* sending host only: submit to last packet on the wire; the receiver has end-to-end latency)\n");
    }
    for c in v {
        if let Some(r) = &c.rx {
            if !r.rejected.is_empty() || r.implausible_timestamps > 0 || r.resyncs > 0 {
                s.push_str(&format!(
                    "channel {} receive: rejected {}; implausible timestamps {}; resyncs {}\n",
                    c.id,
                    reasons(&r.rejected),
                    r.implausible_timestamps,
                    r.resyncs
                ));
            }
        }
    }
    s
}

/// `reason=count, ...`, or `none`.
fn reasons(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `policy show`.
pub fn policy_table(p: &PolicyInfo) -> String {
    format!(
        "granularity              {} packets\nwork_conserving          {}\nbest_effort_reserve_ppm  {} ({})\nrun_budget_cycles        {}\noverflow                 {}\nclose                    {}\n",
        p.granularity,
        p.work_conserving,
        p.best_effort_reserve_ppm,
        pct(p.best_effort_reserve_ppm),
        p.run_budget_cycles,
        p.overflow,
        p.close
    )
}

/// The final report the daemon prints when it stops.
pub fn final_report(channels: &[ChannelStatsInfo], cores: &[CoreStats]) -> String {
    let mut s = String::from("rtchand: final statistics\n");
    s.push_str(&stats_table(channels));
    for (i, c) in cores.iter().enumerate() {
        s.push_str(&format!(
            "core {i}: {} iterations, {} handler runs, {} packets, {} budget overruns, {} TX errors\n",
            c.iterations, c.runs, c.packets, c.budget_overruns, c.tx_errors
        ));
    }
    s
}

/// One channel's row of `rtchanctl top`: rate over the last refresh, p99, misses, drops.
fn top_row(now: &ChannelStatsInfo, before: Option<&ChannelStatsInfo>, dt: f64) -> String {
    let count = |c: &ChannelStatsInfo| match (&c.rx, &c.tx) {
        (Some(r), _) => r.delivered,
        (None, Some(t)) => t.sent,
        _ => 0,
    };
    let rate = match before {
        Some(b) if dt > 0.0 => format!("{:.0}/s", count(now).saturating_sub(count(b)) as f64 / dt),
        _ => "-".into(),
    };
    let p99 = match (&now.rx, &now.tx) {
        (Some(r), _) if r.latency.count > 0 => fmt_ns(r.latency.p99),
        (None, Some(t)) if t.delay.count > 0 => fmt_ns(t.delay.p99),
        _ => "-".into(),
    };
    let misses = now
        .rx
        .as_ref()
        .map_or("-".into(), |r| r.deadline_misses.to_string());
    let lost = now.rx.as_ref().map_or("-".into(), |r| r.lost.to_string());
    let drops = now
        .tx
        .as_ref()
        .map_or("-".into(), |t| (t.dropped + t.would_block).to_string());
    let late = now
        .tx
        .as_ref()
        .map_or("-".into(), |t| t.late_packets.to_string());
    format!(
        "{:>6} {:<4} {:<12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        now.id, now.direction, now.peer, rate, p99, misses, lost, drops, late
    )
}

/// The screen of `rtchanctl top`: a header, then one row per channel (rates over `dt` seconds
/// since `before`), cut to `height` lines.
pub fn top_screen(
    now: &[ChannelStatsInfo],
    before: &[ChannelStatsInfo],
    dt: f64,
    height: usize,
) -> Vec<String> {
    top_screen_with_cores(now, before, &[], &[], dt, height)
}

/// One line of per-core figures for `top`: each core's busy share over the refresh (from the
/// change of its busy time and uptime since `before`; since its start without one) and its
/// longest stretch without a preemption point.
pub fn core_line(
    now: &[control::protocol::CoreStatsInfo],
    before: &[control::protocol::CoreStatsInfo],
) -> String {
    if now.is_empty() {
        return "cores: (no figures from the daemon)".into();
    }
    let parts: Vec<String> = now
        .iter()
        .map(|c| {
            let share = match before.iter().find(|b| b.core == c.core) {
                Some(b) if c.uptime_ns > b.uptime_ns => {
                    c.busy_ns.saturating_sub(b.busy_ns) as f64 / (c.uptime_ns - b.uptime_ns) as f64
                }
                _ => c.busy_share,
            };
            format!(
                "{} busy {:5.1}% longest {}",
                c.core,
                share.min(1.0) * 100.0,
                fmt_ns(c.longest_stretch_ns)
            )
        })
        .collect();
    format!("cores: {}", parts.join(" | "))
}

/// [`top_screen`] with the cores' line ([`core_line`]).
pub fn top_screen_with_cores(
    now: &[ChannelStatsInfo],
    before: &[ChannelStatsInfo],
    cores: &[control::protocol::CoreStatsInfo],
    cores_before: &[control::protocol::CoreStatsInfo],
    dt: f64,
    height: usize,
) -> Vec<String> {
    let mut lines = vec![
        format!(
            "rtchan top: {} channel(s), refreshed every second; q quits",
            now.len()
        ),
        core_line(cores, cores_before),
        String::new(),
        format!(
            "{:>6} {:<4} {:<12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "id", "dir", "peer", "rate", "p99", "misses", "lost", "drops", "late-pk"
        ),
    ];
    for c in now {
        let b = before
            .iter()
            .find(|b| b.id == c.id && b.direction == c.direction);
        lines.push(top_row(c, b, dt));
    }
    lines.truncate(height.max(1));
    lines
}
