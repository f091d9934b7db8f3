//! The control socket's client side and the human-readable tables of `rtchanctl`.
//!
//! [`Client`] sends one request line and reads its reply line; the table functions turn
//! replies into aligned text (every command also has `--json`, which prints the reply's
//! result as it came).

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use control::protocol::{
    encode_request, read_line_capped, ChannelInfo, ChannelList, ChannelStatsInfo, Line, PolicyInfo,
    Reply, Request, MAX_LINE,
};
use control::units::{fmt_ns, fmt_size};
use dataplane::core::CoreStats;

/// A connection to the daemon.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
}

/// The daemon could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("daemon at {path}: {message}")]
pub struct Unreachable {
    /// The socket.
    pub path: String,
    /// What happened.
    pub message: String,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, Unreachable> {
        let s = UnixStream::connect(path).map_err(|e| Unreachable {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let reader = BufReader::new(s.try_clone().map_err(|e| Unreachable {
            path: path.display().to_string(),
            message: e.to_string(),
        })?);
        Ok(Self {
            writer: s,
            reader,
            buf: Vec::new(),
        })
    }

    /// Sends `req` and reads the reply.
    pub fn call(&mut self, req: &Request) -> Result<Reply, Unreachable> {
        self.call_raw(&encode_request(req))
    }

    /// Sends a raw line (newline included) and reads the reply (tests use this for malformed
    /// requests).
    pub fn call_raw(&mut self, line: &str) -> Result<Reply, Unreachable> {
        let err = |m: String| Unreachable {
            path: "socket".into(),
            message: m,
        };
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        match read_line_capped(&mut self.reader, MAX_LINE * 16, &mut self.buf) {
            Ok(Line::Complete) => {
                serde_json::from_slice(&self.buf).map_err(|e| err(format!("bad reply: {e}")))
            }
            Ok(_) => Err(err("the daemon closed the connection".into())),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

fn pct(ppm: u32) -> String {
    format!("{:.2}%", f64::from(ppm) / 1e4)
}

/// `channel list`.
pub fn list_table(l: &ChannelList) -> String {
    let mut s = String::new();
    if l.channels.is_empty() && l.incoming.is_empty() {
        return "no channels\n".into();
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
    s
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
