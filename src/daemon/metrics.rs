//! The OpenMetrics/Prometheus endpoint: `[metrics] listen = "127.0.0.1:9877"` (off by
//! default) serves `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Data flow: the metrics thread accepts one HTTP connection at a time, reads its request
//! (bounded: [`MAX_REQUEST`] bytes within [`IO_TIMEOUT`]) and asks the control thread for the
//! text with [`super::Msg::Metrics`]; the control thread renders it from what it already
//! holds for `stats` (each channel's shared counters and histograms, the admission
//! controllers, its own counters of refusals) with an [`Exposition`]. Nothing here reaches a
//! polling core: a scrape costs the cores what a `stats` request costs them, nothing.
//!
//! Names follow the Prometheus conventions: `rtchan_` prefix, base units (`_seconds`,
//! `_bytes`, `_ratio`), counters end in `_total`, one `# HELP` and `# TYPE` per family. Delay
//! histograms get buckets around the channel's own bound ([`bound_buckets`]), so
//! `histogram_quantile` and "how close to the bound" read directly off them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::time::Nanos;
use hdrhistogram::Histogram;

use super::Msg;

/// Largest HTTP request head read; longer requests get 431.
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request, and the control thread to render.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What a metric family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic count (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets, `_sum`, `_count`.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    lines: String,
}

/// Builds the text exposition: samples are grouped by family whatever order they come in.
#[derive(Default)]
pub struct Exposition {
    order: Vec<&'static str>,
    families: BTreeMap<&'static str, Family>,
}

/// Label values escaped as the text format requires (`\`, `"`, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels_text(labels: &[(&str, &str)], extra: Option<(&str, &str)>) -> String {
    let all: Vec<String> = labels
        .iter()
        .copied()
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

/// A float as the text format writes it.
fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut Family {
        if !self.families.contains_key(name) {
            self.order.push(name);
        }
        self.families.entry(name).or_insert(Family {
            help,
            kind,
            lines: String::new(),
        })
    }

    /// A counter sample (`name` ends in `_total`).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: u64,
    ) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        let l = labels_text(labels, None);
        let f = self.family(name, Kind::Counter, help);
        let _ = writeln!(f.lines, "{name}{l} {v}");
    }

    /// A counter sample of a non-integer quantity (seconds), `name` ending in `_total`.
    pub fn counter_f64(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        let l = labels_text(labels, None);
        let f = self.family(name, Kind::Counter, help);
        let _ = writeln!(f.lines, "{name}{l} {}", num(v));
    }

    /// A gauge sample.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let l = labels_text(labels, None);
        let f = self.family(name, Kind::Gauge, help);
        let _ = writeln!(f.lines, "{name}{l} {}", num(v));
    }

    /// A histogram of nanosecond values, exposed in seconds with cumulative buckets at
    /// `bounds_ns` (ascending) and `+Inf`. `_sum` is the histogram's mean times its count (to
    /// its three significant digits). A histogram bucket counts towards `le=b` only when its
    /// highest equivalent value is at most `b`, so a sample above `b` never lands in `le=b`
    /// (one that shares a bucket with `b` is counted in the next bound up: late, never early).
    pub fn histogram_ns(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        h: &Histogram<u64>,
        bounds_ns: &[Nanos],
    ) {
        let count = h.len();
        let mut text = String::new();
        for &b in bounds_ns {
            let le = num(b as f64 / 1e9);
            let at_most: u64 = h
                .iter_recorded()
                .take_while(|v| h.highest_equivalent(v.value_iterated_to()) <= b)
                .map(|v| v.count_at_value())
                .sum();
            let _ = writeln!(
                text,
                "{name}_bucket{} {at_most}",
                labels_text(labels, Some(("le", &le)))
            );
        }
        let _ = writeln!(
            text,
            "{name}_bucket{} {count}",
            labels_text(labels, Some(("le", "+Inf")))
        );
        let l = labels_text(labels, None);
        let sum = if count == 0 {
            0.0
        } else {
            h.mean() * count as f64 / 1e9
        };
        let _ = writeln!(text, "{name}_sum{l} {}", num(sum));
        let _ = writeln!(text, "{name}_count{l} {count}");
        let f = self.family(name, Kind::Histogram, help);
        f.lines.push_str(&text);
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let f = &self.families[name];
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.name());
            out.push_str(&f.lines);
        }
        out
    }
}

/// Bucket bounds around a channel's bound `d` (ns): from a tenth of it to four times it, with
/// the bound itself and the values just either side, so a scrape shows both the margin and
/// how far past the bound the misses went. A channel with no bound (best-effort) gets
/// decades from 10 µs to 1 s.
pub fn bound_buckets(d: Nanos) -> Vec<Nanos> {
    if d == 0 {
        return (0..6).map(|i| 10_000 * 10u64.pow(i)).collect();
    }
    const PER_MILLE: [u64; 11] = [100, 250, 500, 750, 900, 1000, 1100, 1250, 1500, 2000, 4000];
    let mut v: Vec<Nanos> = PER_MILLE
        .iter()
        .map(|p| d / 1000 * p + d % 1000 * p / 1000)
        .collect();
    v.dedup();
    v
}

/// The metrics thread.
pub struct MetricsServer {
    /// The bound address (the port the OS chose when `listen` had port 0).
    pub local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves until `stop` is set. Fails at once when the address cannot
    /// be bound (in use, not local, no permission).
    pub fn start(
        addr: SocketAddr,
        control: mpsc::Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("rtchan-metrics".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => serve(s, &control),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(ACCEPT_POLL)
                        }
                        Err(_) => std::thread::sleep(ACCEPT_POLL),
                    }
                }
            })?;
        Ok(Self {
            local_addr,
            thread: Some(thread),
        })
    }

    /// Waits for the thread (after the daemon's stop flag was set).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
}

/// Reads the request head (bounded in size and time); the request line.
fn read_head(s: &mut TcpStream) -> Result<String, &'static str> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_REQUEST {
            return Err("431 Request Header Fields Too Large");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return Err("408 Request Timeout");
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err("408 Request Timeout"),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn serve(mut s: TcpStream, control: &mpsc::Sender<Msg>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let line = match read_head(&mut s) {
        Ok(l) => l,
        Err(status) => return respond(&mut s, status, "text/plain", "bad request\n"),
    };
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        );
    }
    if path != "/metrics" && !path.starts_with("/metrics?") {
        return respond(
            &mut s,
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n",
        );
    }
    let (tx, rx) = mpsc::channel();
    if control.send(Msg::Metrics { reply: tx }).is_err() {
        return respond(
            &mut s,
            "503 Service Unavailable",
            "text/plain",
            "stopping\n",
        );
    }
    match rx.recv_timeout(IO_TIMEOUT) {
        Ok(text) => respond(
            &mut s,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            if method == "HEAD" { "" } else { &text },
        ),
        Err(_) => respond(
            &mut s,
            "503 Service Unavailable",
            "text/plain",
            "the control thread did not answer in time\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_their_samples_with_one_help_and_type() {
        let mut e = Exposition::default();
        e.counter("rtchan_a_total", "A.", &[("channel", "1")], 3);
        e.gauge("rtchan_b_ratio", "B.", &[], 0.5);
        e.counter("rtchan_a_total", "A.", &[("channel", "2")], 4);
        let t = e.finish();
        assert_eq!(
            t,
            "# HELP rtchan_a_total A.\n# TYPE rtchan_a_total counter\n\
             rtchan_a_total{channel=\"1\"} 3\nrtchan_a_total{channel=\"2\"} 4\n\
             # HELP rtchan_b_ratio B.\n# TYPE rtchan_b_ratio gauge\nrtchan_b_ratio 0.5\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.gauge("rtchan_x", "X.", &[("peer", "a\"b\\c\nd")], 1.0);
        assert!(e.finish().contains(r#"rtchan_x{peer="a\"b\\c\nd"} 1"#));
    }

    #[test]
    fn a_sample_just_above_the_bound_is_not_counted_at_the_bound() {
        let d: u64 = 1_000_000;
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        // The case that matters: D + 1 ns shares D's histogram bucket.
        assert!(h.equivalent(d, d + 1));
        h.record(d + 1).unwrap();
        h.record(d / 2).unwrap();
        let mut e = Exposition::default();
        e.histogram_ns("rtchan_d_seconds", "D.", &[], &h, &[d, 2 * d]);
        let t = e.finish();
        assert!(
            t.contains("rtchan_d_seconds_bucket{le=\"0.001\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("rtchan_d_seconds_bucket{le=\"0.002\"} 2\n"),
            "{t}"
        );
    }

    #[test]
    fn histograms_are_cumulative_in_seconds_around_the_bound() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in [99_000u64, 400_000, 900_000, 1_500_000] {
            h.record(v).unwrap();
        }
        let b = bound_buckets(1_000_000);
        assert_eq!(b[0], 100_000);
        assert!(b.contains(&1_000_000) && b.contains(&4_000_000));
        let mut e = Exposition::default();
        e.histogram_ns("rtchan_d_seconds", "D.", &[("channel", "7")], &h, &b);
        let t = e.finish();
        assert!(t.contains("# TYPE rtchan_d_seconds histogram"), "{t}");
        assert!(
            t.contains("rtchan_d_seconds_bucket{channel=\"7\",le=\"0.0001\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("rtchan_d_seconds_bucket{channel=\"7\",le=\"0.0005\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("rtchan_d_seconds_bucket{channel=\"7\",le=\"0.001\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("rtchan_d_seconds_bucket{channel=\"7\",le=\"0.002\"} 4"),
            "{t}"
        );
        assert!(
            t.contains("rtchan_d_seconds_bucket{channel=\"7\",le=\"+Inf\"} 4"),
            "{t}"
        );
        assert!(t.contains("rtchan_d_seconds_count{channel=\"7\"} 4"), "{t}");
        assert_eq!(bound_buckets(0).len(), 6);
    }
}
