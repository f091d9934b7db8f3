//! The demo's application processes: `rtchand demo-app send|recv`, run by `rtchand demo`
//! (hidden from `--help`; not meant to be run by hand).
//!
//! - `send --socket S --name NAME --mmax M --imin I --bmax B --deadline D --pattern P ...`:
//!   opens a real-time channel of that spec through [`crate::client`] (admission on both
//!   hosts; the submit ring mapped into this process), prints `open ID`, waits for a line `go`
//!   on stdin, then submits on pattern `P` ([`parse_pattern`]) for `--duration`, timing every
//!   submit call: one over [`crate::preemption::SLOW_SUBMIT`] is reported, since a preemption
//!   inside it (between the message's stamp and its publication) delays that message (a line
//!   `stop` ends it early). A full buffer refuses a message, counted, or with `--retry` the
//!   message stays due and the refusal is counted as a retry. It then prints
//!   `sent SUBMITTED REFUSED RETRIES START,END...` and closes the channel when stdin ends.
//! - `recv --socket S --id ID`: attaches the channel's receiving end, prints `ready`, takes
//!   messages until stdin ends, then prints `received DELIVERED BYTES LOST BEHIND P50 P99 MAX
//!   MEAN UNRECORDED m SUBMIT,DEADLINE,DELIVERED... h VALUE:COUNT...`: latency (submit stamp
//!   to the receiving core's delivery stamp), every deadline miss with its times, for the
//!   parent to hold against measured OS preemption, and the latency histogram's buckets. LOST
//!   counts the gaps in the channel's sequence numbers this process saw, BEHIND the numbers
//!   that came after a later one (out of order, or twice).
//!
//! The parent reads these lines with [`SenderReport::parse`] and [`ReceiverReport::parse`];
//! both sides use the types below, so the format has one definition. Errors go to stderr with
//! exit code 1 (a bad argument: clap's exit code 2).

use super::{parse_duration, MISS_LOG};
use crate::client::{Client, Message, Overflow, RecvError, SendError, Sent};
use crate::preemption::{MissLog, SlowSubmits};
use dataplane::source::{Pattern, Source};
use dataplane::time::{monotonic_now, Nanos};
use hdrhistogram::Histogram;
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
    /// Open a real-time channel and send on a pattern.
    Send {
        /// The daemon's control socket.
        #[arg(long)]
        socket: PathBuf,
        /// The channel's name, for messages.
        #[arg(long)]
        name: String,
        /// Largest message, bytes (every message is this long unless `--len`).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        mmax: u32,
        /// Smallest interval between messages.
        #[arg(long, value_parser = parse_duration)]
        imin: Duration,
        /// Largest burst, messages.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        bmax: u32,
        /// End-to-end bound asked for.
        #[arg(long, value_parser = parse_duration)]
        deadline: Duration,
        /// Length of every message (at most `--mmax`; default `--mmax`).
        #[arg(long)]
        len: Option<u32>,
        /// When messages are submitted: `periodic:GAP`, `poisson:MEAN`, `greedy:IMIN:N` (N times
        /// one every IMIN), `bursts:N:EVERY` (durations as 2ms, 500us or plain ns).
        #[arg(long, value_parser = parse_pattern)]
        pattern: Pattern,
        /// What a full buffer does: block, drop-newest or drop-oldest.
        #[arg(long, default_value = "block")]
        policy: Overflow,
        /// Retry a message a full buffer refused (counted) instead of counting it refused and
        /// moving on.
        #[arg(long)]
        retry: bool,
        /// The pattern's random seed (Poisson gaps).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long to send.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// The destination: `local` (the loopback) or the receiving daemon's peer name.
        #[arg(long, default_value = "local")]
        dst: String,
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
    /// Messages refused (a full buffer, not retried) or dropped by drop-newest.
    pub refused: u64,
    /// Submits a full buffer refused and the process retried (`--retry`).
    pub retries: u64,
    /// Submit calls slower than [`crate::preemption::SLOW_SUBMIT`], `(start, end)`.
    pub slow: Vec<(Nanos, Nanos)>,
}

impl SenderReport {
    /// The report's line.
    pub fn line(&self) -> String {
        let mut l = format!("sent {} {} {}", self.submitted, self.refused, self.retries);
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
        let (submitted, refused, retries) = (num()?, num()?, num()?);
        let slow = w
            .map(|p| {
                let (a, b) = p.split_once(',').ok_or_else(bad)?;
                Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            submitted,
            refused,
            retries,
            slow,
        })
    }
}

/// What a receiver process reports when told to stop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReceiverReport {
    /// Messages taken.
    pub delivered: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Gaps in the sequence numbers.
    pub lost: u64,
    /// Messages whose sequence number is behind one already taken (out of order or twice).
    pub behind: u64,
    /// Latency percentiles, ns (p50, p99, max; max exact).
    pub latency: (Nanos, Nanos, Nanos),
    /// Mean latency, ns.
    pub mean: Nanos,
    /// Deadline misses past the 65,536 listed (counted only).
    pub unrecorded: u64,
    /// Each miss: (submit, deadline, delivered).
    pub misses: Vec<(Nanos, Nanos, Nanos)>,
    /// The latency histogram's recorded buckets: (value, count), ns.
    pub histogram: Vec<(Nanos, u64)>,
}

impl ReceiverReport {
    /// The report's line: the counters, then `m` and each miss, then `h` and each bucket.
    pub fn line(&self) -> String {
        let (p50, p99, max) = self.latency;
        let mut l = format!(
            "received {} {} {} {} {p50} {p99} {max} {} {} m",
            self.delivered, self.bytes, self.lost, self.behind, self.mean, self.unrecorded
        );
        for (s, d, t) in &self.misses {
            l.push_str(&format!(" {s},{d},{t}"));
        }
        l.push_str(" h");
        for (v, c) in &self.histogram {
            l.push_str(&format!(" {v}:{c}"));
        }
        l
    }

    /// Reads a report's line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let bad = || format!("not a receiver's report: '{line}'");
        let rest = line.strip_prefix("received ").ok_or_else(bad)?;
        let (head, tail) = rest.split_once(" m").ok_or_else(bad)?;
        let (misses, buckets) = tail.split_once(" h").ok_or_else(bad)?;
        let n: Vec<u64> = head
            .split_whitespace()
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, String>>()?;
        let [delivered, bytes, lost, behind, p50, p99, max, mean, unrecorded] = n[..] else {
            return Err(bad());
        };
        let misses = misses
            .split_whitespace()
            .map(|m| {
                let v: Vec<Nanos> = m.split(',').filter_map(|x| x.parse().ok()).collect();
                match v[..] {
                    [s, d, t] => Ok((s, d, t)),
                    _ => Err(bad()),
                }
            })
            .collect::<Result<_, String>>()?;
        let histogram = buckets
            .split_whitespace()
            .map(|b| {
                let (v, c) = b.split_once(':').ok_or_else(bad)?;
                Ok((v.parse().map_err(|_| bad())?, c.parse().map_err(|_| bad())?))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            delivered,
            bytes,
            lost,
            behind,
            latency: (p50, p99, max),
            mean,
            unrecorded,
            misses,
            histogram,
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

    /// The latency histogram.
    pub fn latency_histogram(&self) -> Histogram<u64> {
        let mut h = latency_histogram();
        for &(v, c) in &self.histogram {
            // A bucket's value came from a histogram of the same bounds.
            let _ = h.record_n(v, c);
        }
        h
    }
}

/// A latency histogram: 1 ns to 100 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// Reads a `--pattern`: `periodic:GAP`, `poisson:MEAN`, `greedy:IMIN:N`, `bursts:N:EVERY`.
pub fn parse_pattern(s: &str) -> Result<Pattern, String> {
    let bad = || {
        format!(
            "'{s}' is not a send pattern (periodic:GAP, poisson:MEAN, greedy:IMIN:N, \
             bursts:N:EVERY; durations as 2ms or plain ns)"
        )
    };
    let ns = |x: &str| parse_duration(x).map(|d| d.as_nanos() as Nanos);
    let count = |x: &str| x.parse::<u32>().ok().filter(|&n| n >= 1).ok_or_else(bad);
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        ["periodic", gap] => Ok(Pattern::Periodic { interval: ns(gap)? }),
        ["poisson", mean] => Ok(Pattern::Poisson { mean: ns(mean)? }),
        ["greedy", imin, n] => Ok(Pattern::Greedy {
            imin: ns(imin)?,
            multiple: count(n)?,
        }),
        ["bursts", n, every] => Ok(Pattern::Bursts {
            size: count(n)?,
            every: ns(every)?,
        }),
        _ => Err(bad()),
    }
}

/// `p` as [`parse_pattern`] reads it.
pub fn pattern_arg(p: &Pattern) -> String {
    match *p {
        Pattern::Periodic { interval } => format!("periodic:{interval}ns"),
        Pattern::Poisson { mean } => format!("poisson:{mean}ns"),
        Pattern::Greedy { imin, multiple } => format!("greedy:{imin}ns:{multiple}"),
        Pattern::Bursts { size, every } => format!("bursts:{size}:{every}ns"),
    }
}

/// Runs `rtchand demo-app`.
pub fn run(a: &AppArgs) -> Result<(), String> {
    match &a.role {
        AppRole::Send {
            socket,
            name,
            mmax,
            imin,
            bmax,
            deadline,
            len,
            pattern,
            policy,
            retry,
            seed,
            duration,
            dst,
            cpu,
        } => {
            pin(*cpu)?;
            let len = len.unwrap_or(*mmax);
            if len == 0 || len > *mmax {
                return Err(format!(
                    "--len {len}: a message is 1 to --mmax ({mmax}) bytes"
                ));
            }
            let mut spec = crate::client::OpenSpec::new(*mmax, *imin, *bmax, *deadline);
            spec.dst = dst.clone();
            spec.policy = Some(*policy);
            let how = Sending {
                name,
                len: len as usize,
                pattern: *pattern,
                retry: *retry,
                seed: *seed,
                duration: *duration,
            };
            send(socket, &spec, &how)
        }
        AppRole::Recv { socket, id, cpu } => {
            pin(*cpu)?;
            recv(socket, *id)
        }
    }
}

/// How a sender sends.
struct Sending<'a> {
    name: &'a str,
    len: usize,
    pattern: Pattern,
    retry: bool,
    seed: u64,
    duration: Duration,
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
    how: &Sending,
) -> Result<(), String> {
    let name = how.name;
    let client = connect(socket)?;
    let mut tx = client
        .open(spec)
        .map_err(|e| format!("opening channel {name}: {e}"))?;
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
    let payload = vec![0xa5u8; how.len];
    let start = monotonic_now();
    let end = start.saturating_add(how.duration.as_nanos() as Nanos);
    let mut src = Source::new(how.pattern, start, how.seed);
    let mut report = SenderReport::default();
    let mut slow = SlowSubmits::with_capacity(MISS_LOG);
    // Messages due and not yet queued (a refused one stays due under --retry).
    let mut due = 0u64;
    while monotonic_now() < end && !input.stopped() {
        due += src.due(monotonic_now());
        while due > 0 {
            let called = monotonic_now();
            match tx.send(&payload) {
                Err(SendError::WouldBlock) if how.retry => {
                    report.retries += 1;
                    break;
                }
                Ok(Sent::DroppedNewest) | Err(SendError::WouldBlock) => report.refused += 1,
                Ok(_) => {
                    report.submitted += 1;
                    slow.record(called, monotonic_now());
                }
                Err(e) => return Err(format!("sending on {name}: {e}")),
            }
            due -= 1;
        }
        // Sleep until the next message is due (at least 20 µs: room for the other processes).
        let wait = if due > 0 {
            20_000
        } else {
            src.next_at()
                .saturating_sub(monotonic_now())
                .clamp(20_000, 200_000)
        };
        std::thread::sleep(Duration::from_nanos(wait));
    }
    // Messages still due when time is up (retried and never queued) were refused too.
    report.refused += due;
    report.slow = slow.calls().to_vec();
    say(&report.line())?;
    // The channel stays open (its last messages drain) until the parent is done with it.
    input.wait_end();
    tx.close()
        .map_err(|e| format!("closing channel {name}: {e}"))
}

fn recv(socket: &std::path::Path, id: u32) -> Result<(), String> {
    let client = connect(socket)?;
    let mut rx = client
        .attach_receiver(id)
        .map_err(|e| format!("attaching to channel {id}: {e}"))?;
    say("ready")?;
    let input = Input::watch()?;
    let mut hist = latency_histogram();
    let (mut max, mut sum, mut bytes) = (0, 0u128, 0u64);
    let mut log = MissLog::with_capacity(MISS_LOG);
    let mut next_seq = 0u32;
    let (mut lost, mut behind) = (0u64, 0u64);
    let mut take = |m: &Message| {
        let latency = m.delivered_ts.saturating_sub(m.submit_ts);
        hist.saturating_record(latency.max(1));
        max = max.max(latency);
        sum += u128::from(latency);
        bytes += m.len as u64;
        log.record(m.submit_ts, m.deadline, m.delivered_ts);
        // A gap forward is lost messages (this process attached before the first was sent);
        // a number behind the next expected one came out of order or twice.
        let ahead = m.seq.wrapping_sub(next_seq);
        if ahead < u32::MAX / 2 {
            lost += u64::from(ahead);
            next_seq = m.seq.wrapping_add(1);
        } else {
            behind += 1;
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
    let delivered = hist.len();
    let report = ReceiverReport {
        delivered,
        bytes,
        lost,
        behind,
        latency: (
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            max,
        ),
        mean: sum.checked_div(u128::from(delivered)).unwrap_or(0) as Nanos,
        unrecorded: log.unrecorded,
        misses: log
            .misses
            .iter()
            .map(|m| (m.submit, m.deadline, m.delivered))
            .collect(),
        histogram: hist
            .iter_recorded()
            .map(|b| (b.value_iterated_to(), b.count_at_value()))
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
            retries: 4,
            slow: vec![(10, 70_000), (100, 200_000)],
        };
        assert_eq!(SenderReport::parse(&s.line()), Ok(s));
        let r = ReceiverReport {
            delivered: 9,
            bytes: 900,
            lost: 1,
            behind: 2,
            latency: (5, 6, 7),
            mean: 6,
            unrecorded: 3,
            misses: vec![(1, 2, 3), (4, 5, 6)],
            histogram: vec![(5, 4), (7, 5)],
        };
        assert_eq!(ReceiverReport::parse(&r.line()), Ok(r));
        let empty = ReceiverReport::default();
        assert_eq!(ReceiverReport::parse(&empty.line()), Ok(empty));
        assert!(SenderReport::parse("sent 1 2").is_err());
        assert!(ReceiverReport::parse("received 1 0 1 2 3 0 m 1,2 h").is_err());
        assert!(ReceiverReport::parse("received 1 2 0 0 1 2 3 2 0 m 1,2 h").is_err());
        assert!(ReceiverReport::parse("ready").is_err());
    }

    #[test]
    fn a_histogram_reads_back_its_counts() {
        let mut h = latency_histogram();
        for v in [1_000, 1_000, 2_500_000, 40_000_000] {
            h.record(v).unwrap();
        }
        let r = ReceiverReport {
            delivered: h.len(),
            histogram: h
                .iter_recorded()
                .map(|b| (b.value_iterated_to(), b.count_at_value()))
                .collect(),
            ..ReceiverReport::default()
        };
        let back = ReceiverReport::parse(&r.line())
            .unwrap()
            .latency_histogram();
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn patterns_read_back_what_was_written() {
        for p in [
            Pattern::Periodic {
                interval: 1_000_000,
            },
            Pattern::Poisson { mean: 400_000 },
            Pattern::Greedy {
                imin: 1_000_000,
                multiple: 10,
            },
            Pattern::Bursts {
                size: 8,
                every: 8_000_000,
            },
        ] {
            assert_eq!(parse_pattern(&pattern_arg(&p)), Ok(p));
        }
        assert_eq!(
            parse_pattern("periodic:2ms"),
            Ok(Pattern::Periodic {
                interval: 2_000_000
            })
        );
        for bad in ["", "periodic", "greedy:1ms:0", "bursts:x:1ms", "steady:1ms"] {
            assert!(
                parse_pattern(bad)
                    .unwrap_err()
                    .contains("is not a send pattern"),
                "{bad}"
            );
        }
    }
}
