//! `rt_receiver`: an application that receives a real-time channel's messages through
//! `rtchan::client`, and reports their delay and deadline misses.
//!
//! It attaches to the receiving end of channel `--channel` on this host (the daemon's own sink
//! stops draining it; messages are delivered into this process's shared-memory ring), takes
//! messages until `--count` arrived or the channel closes, and prints the per-message delay
//! from the sender's submit stamp to the receiving core's delivery stamp (both carried by the
//! delivery descriptor): p50, p99, p99.9 and max, and every message delivered after its
//! deadline (the descriptor's late flag) with its times. With `--check` it verifies each
//! message as `rt_sender` builds it (its number, in order with none missing, and its pattern).
//!
//! Output (stdout), one `key=value` summary line for scripts and tests:
//! ```text
//! rt_receiver: channel 3 attached
//! late seq=17 submit=... deadline=... delivered=...          (one per miss)
//! rt_receiver: latency submit-to-delivery p50 41.2 us, p99 97.0 us, p99.9 180.4 us, max 201.7 us
//! rt_receiver: channel=3 received=1000 bytes=812345 late=0 bad=0 digest=... p50_ns=...
//! ```
//! Exit code 1 on failure (an error from the library, a bad message with `--check`, fewer
//! than `--count` messages); 2 for a bad argument. Misses alone are reported, not failures
//! (OS preemption of a shared machine can cause them; see `rtchan::preemption`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rtchan::client::{Client, Message, RecvError};

#[derive(Parser, Debug)]
#[command(about = "Receive a real-time channel's messages in this process (rtchan::client)")]
struct Args {
    /// The daemon's control socket (default: $RTCHAN_SOCKET, else /run/rtchan/rtchand.sock).
    #[arg(long, short = 's', value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    /// The channel to receive (its id, as `rt_sender` or `rtchanctl channel list` print).
    #[arg(long, short = 'c', value_name = "ID")]
    channel: u32,
    /// Stop after this many messages (default: when the channel closes).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Fail when no message comes for this long.
    #[arg(long, default_value = "10s", value_parser = duration)]
    timeout: Duration,
    /// Verify every message as rt_sender builds it: its number (in order, none missing) and
    /// its pattern.
    #[arg(long)]
    check: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    control::units::parse_duration(s)
        .map(Duration::from_nanos)
        .map_err(|e| e.to_string())
}

/// What is wrong with a message that should be `rt_sender`'s number `expect` (None: the
/// first message, any number).
fn verify(b: &[u8], expect: Option<u32>) -> Result<u32, String> {
    let Some(head) = b.get(..4) else {
        return Err(format!("{} bytes: shorter than its number", b.len()));
    };
    let k = u32::from_le_bytes(head.try_into().expect("4 bytes"));
    if let Some(e) = expect {
        if k != e {
            return Err(format!("message number {k}, expected {e}"));
        }
    }
    for (i, &v) in b.iter().enumerate().skip(4) {
        let want = (k as usize).wrapping_add(31 * i) as u8;
        if v != want {
            return Err(format!(
                "message {k}: byte {i} of {} is {v:#04x}, not {want:#04x}",
                b.len()
            ));
        }
    }
    Ok(k)
}

/// The `q`-quantile of sorted `v` (nearest rank).
fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1e3)
}

fn run(a: &Args) -> Result<(), String> {
    if a.count == Some(0) {
        return Err("--count 0: nothing to receive".into());
    }
    let socket = a
        .socket
        .clone()
        .unwrap_or_else(rtchan::client::default_socket);
    let client =
        Client::connect(&socket).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let mut rx = client
        .attach_receiver(a.channel)
        .map_err(|e| format!("attach to channel {}: {e}", a.channel))?;
    println!("rt_receiver: channel {} attached", a.channel);
    let _ = std::io::stdout().flush();
    let mut buf = vec![0u8; rx.mmax() as usize];
    let mut delays = Vec::with_capacity(a.count.unwrap_or(1 << 16).min(1 << 24) as usize);
    let (mut bytes, mut late, mut bad) = (0u64, 0u64, 0u64);
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut next: Option<u32> = None;
    let mut first_error = None;
    let mut closed = false;
    let mut out = std::io::stdout().lock();
    let end = loop {
        if a.count.is_some_and(|n| delays.len() as u64 >= n) {
            break None;
        }
        let m: Message = match rx.recv_timeout(&mut buf, a.timeout) {
            Ok(m) => m,
            Err(RecvError::Closed) if a.count.is_none() => {
                closed = true;
                break None;
            }
            Err(e) => break Some(e),
        };
        let body = &buf[..m.len];
        for &b in body {
            digest = (digest ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        bytes += m.len as u64;
        delays.push(m.delivered_ts.saturating_sub(m.submit_ts));
        if m.late {
            late += 1;
            let _ = writeln!(
                out,
                "late seq={} submit={} deadline={} delivered={}",
                m.seq, m.submit_ts, m.deadline, m.delivered_ts
            );
        }
        if a.check {
            match verify(body, next) {
                Ok(k) => next = Some(k.wrapping_add(1)),
                Err(e) => {
                    bad += 1;
                    first_error.get_or_insert(format!("seq {}: {e}", m.seq));
                    // Resynchronise on what came, so one bad message is counted once.
                    next = body
                        .get(..4)
                        .map(|h| u32::from_le_bytes(h.try_into().expect("4")).wrapping_add(1));
                }
            }
        }
    };
    let received = delays.len() as u64;
    delays.sort_unstable();
    let (p50, p99, p999, max) = (
        quantile(&delays, 0.5),
        quantile(&delays, 0.99),
        quantile(&delays, 0.999),
        delays.last().copied().unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "rt_receiver: latency submit-to-delivery p50 {}, p99 {}, p99.9 {}, max {}; \
         {late} of {received} messages missed their deadline",
        us(p50),
        us(p99),
        us(p999),
        us(max)
    );
    let _ = writeln!(
        out,
        "rt_receiver: channel={} received={received} bytes={bytes} late={late} bad={bad} \
         digest={digest:016x} p50_ns={p50} p99_ns={p99} p999_ns={p999} max_ns={max}",
        a.channel
    );
    let _ = out.flush();
    if let Some(e) = end {
        return Err(format!(
            "after {received} messages{}: {e}",
            a.count.map(|n| format!(" of {n}")).unwrap_or_default()
        ));
    }
    if let Some(e) = first_error {
        return Err(format!("{bad} bad messages; the first: {e}"));
    }
    if !closed {
        // Give the channel back to the daemon's sink (a closed one has nothing to give).
        rx.close()
            .map_err(|e| format!("detach from channel {}: {e}", a.channel))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rt_receiver: {e}");
            ExitCode::FAILURE
        }
    }
}
