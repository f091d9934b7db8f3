//! The demo's application processes: `rtchand demo-app send|recv`, run by `rtchand demo`
//! (hidden from `--help`; not meant to be run by hand).
//!
//! - `send --socket S --channel NAME [--dst PEER --net-and-rx D]`: opens the demo channel
//!   `NAME` through [`crate::client`] with its spec (admission on both hosts; the submit ring
//!   mapped into this process), prints `open ID`, waits for a line `go` on stdin, then sends on the channel's
//!   pattern for `--duration` (the violator at `--violation` times its rate), timing every
//!   submit call: one over [`crate::preemption::SLOW_SUBMIT`] is reported, since a preemption
//!   inside it (between the message's stamp and its publication) delays that message (a line
//!   `stop` ends it early). It then prints `sent SUBMITTED REFUSED START,END...` and closes the
//!   channel when stdin ends.
//! - `recv --socket S --id ID`: attaches the channel's receiving end, prints `ready`, takes
//!   messages until stdin ends, then prints `received DELIVERED LOST P50 P99 MAX UNRECORDED
//!   SUBMIT,DEADLINE,DELIVERED...`: latency (submit stamp to the receiving core's delivery
//!   stamp) and every deadline miss with its times, for the parent to hold against measured
//!   OS preemption. LOST counts the gaps in the channel's sequence numbers this process saw.
//!
//! The parent reads these lines with [`SenderReport::parse`] and [`ReceiverReport::parse`];
//! both sides use the types below, so the format has one definition. Errors go to stderr with
//! exit code 1 (a bad argument: clap's exit code 2).

use super::{parse_duration, DemoChannel, CHANNELS, MISS_LOG};
use crate::client::{Client, Message, RecvError, SendError, Sent};
use crate::preemption::{MissLog, SlowSubmits};
use dataplane::source::Source;
use dataplane::time::{monotonic_now, Nanos};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `rtchand demo-app`: one of the demo's application processes.
#[derive(clap::Args, Debug, Clone)]
pub struct AppArgs {
    /// What this process does.
    #[command(subcommand)]
    pub role: AppRole,
}

/// The two kinds of application process.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AppRole {
    /// Open a demo channel and send on it as the demo does.
    Send {
        /// The daemon's control socket.
        #[arg(long)]
        socket: PathBuf,
        /// The demo channel (control-loop, sensor-fusion, video-slice, telemetry-burst,
        /// misbehaving).
        #[arg(long, value_parser = DemoChannel::named)]
        channel: usize,
        /// How many times its spec's rate the violating channel sends.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        violation: u32,
        /// How long to send.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// The destination: `local` (the loopback) or the receiving daemon's peer name.
        #[arg(long, default_value = "local")]
        dst: String,
        /// The network's and the receiving host's share of the end-to-end bound, added to the
        /// channel's sending-host bound.
        #[arg(long, default_value = "2ms", value_parser = parse_duration)]
        net_and_rx: Duration,
        /// CPU to run on.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Attach the receiving end of a channel and report every message's times.
    Recv {
        /// The daemon's control socket.
        #[arg(long)]
        socket: PathBuf,
        /// The channel id (`open ID` of its sender).
        #[arg(long)]
        id: u32,
        /// CPU to run on.
        #[arg(long)]
        cpu: Option<usize>,
    },
}

/// What a sender process reports when its time is up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SenderReport {
    /// Messages queued.
    pub submitted: u64,
    /// Messages refused (a full buffer) or dropped by drop-newest.
    pub refused: u64,
    /// Submit calls slower than [`crate::preemption::SLOW_SUBMIT`], `(start, end)`.
    pub slow: Vec<(Nanos, Nanos)>,
}

impl SenderReport {
    /// The report's line.
    pub fn line(&self) -> String {
        let mut l = format!("sent {} {}", self.submitted, self.refused);
        for (a, b) in &self.slow {
            l.push_str(&format!(" {a},{b}"));
        }
        l
    }

    /// Reads a report's line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let bad = || format!("not a sender's report: '{line}'");
        let mut w = line
            .strip_prefix("sent ")
            .ok_or_else(bad)?
            .split_whitespace();
        let mut num = || w.next().and_then(|x| x.parse().ok()).ok_or_else(bad);
        let (submitted, refused) = (num()?, num()?);
        let slow = w
            .map(|p| {
                let (a, b) = p.split_once(',').ok_or_else(bad)?;
                Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            submitted,
            refused,
            slow,
        })
    }
}

/// What a receiver process reports when told to stop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReceiverReport {
    /// Messages taken.
    pub delivered: u64,
    /// Gaps in the sequence numbers.
    pub lost: u64,
    /// Latency percentiles, ns (p50, p99, max).
    pub latency: (Nanos, Nanos, Nanos),
    /// Deadline misses past the 65,536 listed (counted only).
    pub unrecorded: u64,
    /// Each miss: (submit, deadline, delivered).
    pub misses: Vec<(Nanos, Nanos, Nanos)>,
}

impl ReceiverReport {
    /// The report's line.
    pub fn line(&self) -> String {
        let (p50, p99, max) = self.latency;
        let mut l = format!(
            "received {} {} {p50} {p99} {max} {}",
            self.delivered, self.lost, self.unrecorded
        );
        for (s, d, t) in &self.misses {
            l.push_str(&format!(" {s},{d},{t}"));
        }
        l
    }

    /// Reads a report's line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let bad = || format!("not a receiver's report: '{line}'");
        let mut w = line
            .strip_prefix("received ")
            .ok_or_else(bad)?
            .split_whitespace();
        let mut num = || w.next().and_then(|x| x.parse().ok()).ok_or_else(bad);
        let (delivered, lost) = (num()?, num()?);
        let latency = (num()?, num()?, num()?);
        let unrecorded = num()?;
        let misses = w
            .map(|m| {
                let v: Vec<Nanos> = m.split(',').filter_map(|x| x.parse().ok()).collect();
                match v[..] {
                    [s, d, t] => Ok((s, d, t)),
                    _ => Err(bad()),
                }
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            delivered,
            lost,
            latency,
            unrecorded,
            misses,
        })
    }

    /// The misses as a log for [`crate::preemption::Preemptions`].
    pub fn miss_log(&self) -> MissLog {
        let mut log = MissLog::with_capacity(self.misses.len());
        for &(s, d, t) in &self.misses {
            log.record(s, d, t);
        }
        log.unrecorded = self.unrecorded;
        log
    }
}

/// Runs `rtchand demo-app`.
pub fn run(a: &AppArgs) -> Result<(), String> {
    match &a.role {
        AppRole::Send {
            socket,
            channel,
            violation,
            duration,
            dst,
            net_and_rx,
            cpu,
        } => {
            pin(*cpu)?;
            let spec = CHANNELS[*channel].open_spec(dst, *net_and_rx);
            send(socket, &spec, *channel, *violation, *duration)
        }
        AppRole::Recv { socket, id, cpu } => {
            pin(*cpu)?;
            recv(socket, *id)
        }
    }
}

/// Keeps this process on `cpu` (off the sending core's CPU).
fn pin(cpu: Option<usize>) -> Result<(), String> {
    let Some(id) = cpu else { return Ok(()) };
    if core_affinity::set_for_current(core_affinity::CoreId { id }) {
        Ok(())
    } else {
        Err(format!("--cpu {id}: cannot run on that CPU"))
    }
}

/// What the parent says on stdin once traffic runs: a line `stop` (end traffic early), then
/// the end of stdin (finish and exit).
struct Input {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Input {
    /// Reads stdin on a thread of its own, so that traffic never waits for it.
    fn watch() -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                for l in std::io::stdin().lock().lines() {
                    match l {
                        Ok(l) if l.trim() == "stop" => stop2.store(true, Ordering::Relaxed),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                stop2.store(true, Ordering::Relaxed);
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(Self { stop, thread })
    }

    /// Traffic should end (`stop`, or stdin ended).
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits for the end of stdin.
    fn wait_end(self) {
        let _ = self.thread.join();
    }
}

/// Writes a line for the parent (stdout is a pipe: flushed at once).
fn say(line: &str) -> Result<(), String> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}")
        .and_then(|_| o.flush())
        .map_err(|e| format!("writing to stdout: {e}"))
}

fn connect(socket: &std::path::Path) -> Result<Client, String> {
    Client::connect(socket).map_err(|e| format!("connecting to {}: {e}", socket.display()))
}

fn send(
    socket: &std::path::Path,
    spec: &crate::client::OpenSpec,
    index: usize,
    violation: u32,
    duration: Duration,
) -> Result<(), String> {
    let ch = &CHANNELS[index];
    let client = connect(socket)?;
    let mut tx = client
        .open(spec)
        .map_err(|e| format!("opening channel {}: {e}", ch.name))?;
    say(&format!("open {}", tx.id()))?;
    let mut l = String::new();
    std::io::stdin()
        .read_line(&mut l)
        .map_err(|e| format!("reading stdin: {e}"))?;
    if l.trim() != "go" {
        return Err(format!(
            "expected a line 'go' on stdin (from rtchand demo), got {l:?}"
        ));
    }
    let input = Input::watch()?;
    let payload = vec![0xa5u8; ch.mmax as usize];
    let start = monotonic_now();
    let end = start.saturating_add(duration.as_nanos() as Nanos);
    let mut src = Source::new((ch.pattern)(ch.imin, violation), start, index as u64 + 1);
    let mut report = SenderReport::default();
    let mut slow = SlowSubmits::with_capacity(MISS_LOG);
    while monotonic_now() < end && !input.stopped() {
        for _ in 0..src.due(monotonic_now()) {
            let called = monotonic_now();
            match tx.send(&payload) {
                Ok(Sent::DroppedNewest) | Err(SendError::WouldBlock) => report.refused += 1,
                Ok(_) => {
                    report.submitted += 1;
                    slow.record(called, monotonic_now());
                }
                Err(e) => return Err(format!("sending on {}: {e}", ch.name)),
            }
        }
        // Sleep until the next message is due (at least 20 µs: room for the other processes).
        let wait = src
            .next_at()
            .saturating_sub(monotonic_now())
            .clamp(20_000, 200_000);
        std::thread::sleep(Duration::from_nanos(wait));
    }
    report.slow = slow.calls().to_vec();
    say(&report.line())?;
    // The channel stays open (its last messages drain) until the parent is done with it.
    input.wait_end();
    tx.close()
        .map_err(|e| format!("closing channel {}: {e}", ch.name))
}

fn recv(socket: &std::path::Path, id: u32) -> Result<(), String> {
    let client = connect(socket)?;
    let mut rx = client
        .attach_receiver(id)
        .map_err(|e| format!("attaching to channel {id}: {e}"))?;
    say("ready")?;
    let input = Input::watch()?;
    let mut latencies: Vec<Nanos> = Vec::new();
    let mut log = MissLog::with_capacity(MISS_LOG);
    let mut next_seq = 0u32;
    let mut lost = 0u64;
    let mut take = |m: &Message| {
        latencies.push(m.delivered_ts.saturating_sub(m.submit_ts));
        log.record(m.submit_ts, m.deadline, m.delivered_ts);
        // A gap forward is lost messages (this process attached before the first was sent).
        let ahead = m.seq.wrapping_sub(next_seq);
        if ahead < u32::MAX / 2 {
            lost += u64::from(ahead);
            next_seq = m.seq.wrapping_add(1);
        }
    };
    while !input.stopped() {
        match rx.recv_with_timeout(Duration::from_millis(10), |_, m| *m) {
            Ok(m) => take(&m),
            Err(RecvError::Timeout) => {}
            Err(e) => return Err(format!("receiving on channel {id}: {e}")),
        }
    }
    loop {
        match rx.try_recv_with(|_, m| *m) {
            Ok(m) => take(&m),
            Err(RecvError::WouldBlock) => break,
            Err(e) => return Err(format!("receiving on channel {id}: {e}")),
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| -> Nanos {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[i - 1]
    };
    let report = ReceiverReport {
        delivered: latencies.len() as u64,
        lost,
        latency: (at(0.5), at(0.99), at(1.0)),
        unrecorded: log.unrecorded,
        misses: log
            .misses
            .iter()
            .map(|m| (m.submit, m.deadline, m.delivered))
            .collect(),
    };
    say(&report.line())?;
    rx.close()
        .map_err(|e| format!("detaching from channel {id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_what_was_written() {
        let s = SenderReport {
            submitted: 7,
            refused: 2,
            slow: vec![(10, 70_000), (100, 200_000)],
        };
        assert_eq!(SenderReport::parse(&s.line()), Ok(s));
        let r = ReceiverReport {
            delivered: 9,
            lost: 1,
            latency: (5, 6, 7),
            unrecorded: 3,
            misses: vec![(1, 2, 3), (4, 5, 6)],
        };
        assert_eq!(ReceiverReport::parse(&r.line()), Ok(r));
        assert!(SenderReport::parse("sent 1").is_err());
        assert!(ReceiverReport::parse("received 1 0 1 2 3 0 1,2").is_err());
        assert!(ReceiverReport::parse("ready").is_err());
    }
}
