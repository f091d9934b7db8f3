//! The metrics endpoint of a running `rtchand` (in-memory link, loopback channels): a scrape
//! over HTTP is valid Prometheus text (checked by Prometheus' own `promtool check metrics`,
//! Debian package `prometheus`), carries every family the operator needs, and its counters
//! equal what `rtchanctl stats --json` reports for the same channel; a refused open shows up
//! among the refusals; an address already in use stops the start with a clear error; and the
//! endpoint is off without `[metrics]`.

#[path = "common/ops_daemon.rs"]
mod ops_daemon;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control::protocol::{ChannelInfo, ChannelStatsInfo};
use ops_daemon::{ctl, ctl_json, Daemon, DAEMON, STEP};

fn config(dir: &Path, metrics: &str) -> String {
    format!(
        r#"socket = "{}/ctl.sock"
[policy]
idle = "sleep"
idle_sleep = "200us"
[cost]
per_message_ns = 2000
per_packet_ns = 1000
best_effort_run_ns = 6000
link_rate_bps = 1000000000
{metrics}
"#,
        dir.display()
    )
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `rtchand` and waits until its control socket answers.
fn start(name: &str, metrics: &str) -> Daemon {
    let dir = dir(name);
    let cfg = dir.join("rtchand.toml");
    std::fs::write(&cfg, config(&dir, metrics)).unwrap();
    Daemon::spawn(dir, &cfg)
}

/// `GET path` on `addr`: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// A free local port (bound, then released).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_is_valid_prometheus_text_and_agrees_with_stats() {
    let addr = free_addr();
    let d = start("scrape", &format!("[metrics]\nlisten = \"{addr}\"\n"));
    // The check `without_a_metrics_table_nothing_listens` relies on sees this endpoint.
    let listening = tcp_listeners(d.child.as_ref().unwrap().id());
    let port = format!(":{:04X}", addr.port());
    assert!(
        listening.len() == 1 && listening[0].ends_with(&port),
        "{addr}: {listening:?}"
    );
    let ch: ChannelInfo = ctl_json(
        &d.socket,
        &[
            "channel",
            "open",
            "--mmax",
            "200",
            "--imin",
            "1ms",
            "--bmax",
            "2",
            "--deadline",
            "5ms",
            "--dst",
            "local",
            "--source",
            "periodic",
        ],
    );
    // A request no link carries: refused by the sending host's admission.
    let refused = ctl(
        &d.socket,
        &[
            "channel",
            "open",
            "--mmax",
            "60000",
            "--imin",
            "10us",
            "--bmax",
            "1",
            "--deadline",
            "1ms",
            "--dst",
            "local",
        ],
    );
    assert_eq!(
        refused.status.code(),
        Some(1),
        "the oversized open is refused"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let id = ch.id.to_string();
    let out = format!("{{channel=\"{id}\",dst=\"local\"}}");
    let inc = format!("{{channel=\"{id}\",src=\"local\"}}");
    // Each family the operator needs is there, with HELP and TYPE.
    for family in [
        "rtchan_channel_submitted_messages_total",
        "rtchan_channel_sent_packets_total",
        "rtchan_channel_sent_bytes_total",
        "rtchan_channel_drops_total",
        "rtchan_channel_late_packets_total",
        "rtchan_channel_budget_overruns_total",
        "rtchan_channel_host_delay_seconds",
        "rtchan_channel_delivered_messages_total",
        "rtchan_channel_deadline_misses_total",
        "rtchan_channel_lost_messages_total",
        "rtchan_channel_latency_seconds",
        "rtchan_txq_late_packets_total",
        "rtchan_admission_utilisation_ratio",
        "rtchan_admission_refusals_total",
        "rtchan_core_iterations_total",
        "rtchan_core_busy_seconds_total",
        "rtchan_core_busy_ratio",
        "rtchan_core_longest_stretch_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    // The histogram's buckets sit around the channel's bound: D itself is one.
    let d_s = ch.deadline as f64 / 1e9;
    assert!(
        text.contains(&format!(
            "rtchan_channel_latency_seconds_bucket{{channel=\"{id}\",src=\"local\",le=\"{d_s}\"}}"
        )),
        "no bucket at D = {d_s} s:\n{text}"
    );
    // The refusal is counted under the sending host's reason.
    let refusals: f64 = text
        .lines()
        .filter(|l| l.starts_with("rtchan_admission_refusals_total{side=\"sender\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refusals, 1.0, "{text}");
    // Counters agree with stats taken after the scrape: never more than stats, and traffic
    // flowed (the source sends every ms).
    let stats: Vec<ChannelStatsInfo> = ctl_json(&d.socket, &["stats", &id]);
    let tx = stats[0].tx.clone().unwrap();
    let rx = stats[0].rx.clone().unwrap();
    let submitted = sample(
        &text,
        &format!("rtchan_channel_submitted_messages_total{out}"),
    )
    .unwrap();
    let delivered = sample(
        &text,
        &format!("rtchan_channel_delivered_messages_total{inc}"),
    )
    .unwrap();
    assert!(
        submitted > 100.0 && submitted <= tx.submitted as f64,
        "{submitted} vs {tx:?}"
    );
    assert!(
        delivered > 100.0 && delivered <= rx.delivered as f64,
        "{delivered} vs {rx:?}"
    );
    let count = sample(&text, &format!("rtchan_channel_latency_seconds_count{inc}")).unwrap();
    // (The histogram is read after the counters in one scrape, so it is held to the later
    // stats.)
    assert!(
        count > 0.0 && count <= rx.delivered as f64,
        "{count} latency samples, {} delivered",
        rx.delivered
    );
    // The cores' own figures: the scrape's never more than `stats --cores` after it, and the
    // cores ran (iterations, busy time and a measured stretch while the source sends).
    let cores: Vec<control::protocol::CoreStatsInfo> = ctl_json(&d.socket, &["stats", "--cores"]);
    let names: Vec<&str> = cores.iter().map(|c| c.core.as_str()).collect();
    assert_eq!(
        names,
        ["tx0", "rx0"],
        "one sending and one receive core (memlink)"
    );
    for c in &cores {
        let l = format!("{{core=\"{}\"}}", c.core);
        let it = sample(&text, &format!("rtchan_core_iterations_total{l}")).unwrap();
        let busy = sample(&text, &format!("rtchan_core_busy_seconds_total{l}")).unwrap();
        let stretch = sample(&text, &format!("rtchan_core_longest_stretch_seconds{l}")).unwrap();
        assert!(it > 0.0 && it <= c.iterations as f64, "{it} vs {c:?}");
        assert!(
            busy > 0.0 && busy <= c.busy_ns as f64 / 1e9 + 1e-9,
            "{busy} vs {c:?}"
        );
        assert!(stretch > 0.0 && stretch <= c.longest_stretch_ns as f64 / 1e9 + 1e-9);
        assert!(c.busy_share > 0.0 && c.busy_share <= 1.0, "{c:?}");
        assert!(c.busy_ns <= c.uptime_ns, "{c:?}");
    }
    let table = String::from_utf8_lossy(&ctl(&d.socket, &["stats", "--cores"]).stdout).into_owned();
    assert!(
        table.contains("tx0") && table.contains("longest"),
        "{table}"
    );
    // Other paths are not found.
    assert_eq!(get(addr, "/").0, "HTTP/1.1 404 Not Found");

    // Prometheus' own checker, on the scrape.
    let scrape = d.dir.join("scrape.txt");
    std::fs::write(&scrape, &text).unwrap();
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).unwrap())
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("promtool not available in CI ({e}): install the Debian package prometheus");
            }
            eprintln!(
                "SKIPPED promtool check metrics: promtool not found ({e}); install the Debian \
                 package prometheus (scripts/test.sh does)"
            );
        }
    }
}

#[test]
fn a_metrics_address_in_use_stops_the_start_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = dir("inuse");
    let cfg = dir.join("rtchand.toml");
    std::fs::write(
        &cfg,
        config(&dir, &format!("[metrics]\nlisten = \"{addr}\"\n")),
    )
    .unwrap();
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > STEP {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rtchand kept running with its metrics address in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("metrics.listen {addr}")) && err.contains("in use"),
        "{err}"
    );
    assert!(
        !dir.join("ctl.sock").exists(),
        "the control socket was served anyway"
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(taken);
}

#[test]
fn without_a_metrics_table_nothing_listens() {
    let d = start("off", "");
    let out = ctl(&d.socket, &["channel", "list"]);
    assert_eq!(out.status.code(), Some(0));
    // No TCP socket of the daemon's is listening (the only TCP socket it can open is the
    // metrics endpoint; the scrape test shows this check finds that one).
    let pid = d.child.as_ref().unwrap().id();
    let listening = tcp_listeners(pid);
    assert!(listening.is_empty(), "rtchand listens on {listening:?}");
}

/// The local addresses (hex, as /proc shows them) of the TCP sockets process `pid` holds in
/// the LISTEN state.
fn tcp_listeners(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // Columns: sl local_address rem_address st ... uid timeout inode; st 0A is LISTEN.
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                found.push(format!("{table} {}", f[1]));
            }
        }
    }
    found
}
