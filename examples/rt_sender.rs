//! `rt_sender`: an application that sends its own messages on a real-time channel through
//! `rtchan::client`.
//!
//! It opens a channel with the spec given on the command line (admission on both hosts, the
//! submit ring mapped into this process) or attaches to a client-fed channel by id (one the
//! daemon restored after a restart), then sends `--count` messages at `--rate` messages per
//! second on an absolute schedule (message k is due at start + k/rate), and closes the
//! channel. Each message says which it is, so `rt_receiver --check` can verify it byte for
//! byte: bytes 0..4 are k (little-endian), byte i ≥ 4 is `(k + 31·i) mod 256`. Its length is
//! `--size`, or varies with k over `--size MIN..MAX`.
//!
//! ```text
//! cargo run --example rt_sender -- --socket /run/rtchan/rtchand.sock \
//!     --mmax 1500 --imin 1ms --bmax 4 --deadline 5ms --count 1000 --rate 500 --size 64..1500
//! cargo run --example rt_receiver -- --channel <id printed above> --count 1000 --check
//! ```
//!
//! Output (stdout): `rt_sender: channel <id> ...` once the channel is there, then
//! `rt_sender: sent <n> messages ...` with an FNV-1a digest of every byte sent (the receiver
//! prints the same digest of what it got). Errors go to stderr with exit code 1 (2 for a bad
//! argument).

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rtchan::client::{Client, OpenSpec, Overflow, SendError, Sender, Sent};

#[derive(Parser, Debug)]
#[command(about = "Send messages on a real-time channel from this process (rtchan::client)")]
struct Args {
    /// The daemon's control socket (default: $RTCHAN_SOCKET, else /run/rtchan/rtchand.sock).
    #[arg(long, short = 's', value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    /// Attach to this client-fed channel (one restored after a daemon restart) instead of
    /// opening one; the spec options are then not allowed.
    #[arg(long, value_name = "ID", conflicts_with_all = ["mmax", "imin", "bmax", "deadline", "dst", "policy", "core"])]
    attach: Option<u32>,
    /// Largest message of the channel to open (default: the largest --size).
    #[arg(long, value_parser = size)]
    mmax: Option<u32>,
    /// Smallest interval between messages (default: 1/rate).
    #[arg(long, value_parser = duration)]
    imin: Option<Duration>,
    /// Largest burst, messages: the channel's buffer.
    #[arg(long)]
    bmax: Option<u32>,
    /// End-to-end bound D, from send to delivery at the receiver.
    #[arg(long, value_parser = duration)]
    deadline: Option<Duration>,
    /// Destination: `local` (the loopback) or a configured peer's name.
    #[arg(long)]
    dst: Option<String>,
    /// Full-buffer policy: block, drop-newest or drop-oldest (default: the daemon's).
    #[arg(long, value_parser = policy)]
    policy: Option<Overflow>,
    /// Core to run the channel on (default: placement decides).
    #[arg(long)]
    core: Option<u16>,
    /// Messages to send.
    #[arg(long, short = 'n', default_value_t = 1000)]
    count: u64,
    /// Message length in bytes, `N` or `MIN..MAX` (varying with the message number).
    #[arg(long, default_value = "64", value_parser = size_range)]
    size: (u32, u32),
    /// Messages per second (at most 1/imin).
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    rate: f64,
    /// How long one message may wait for room in a full buffer before the run fails.
    #[arg(long, default_value = "1s", value_parser = duration)]
    block_timeout: Duration,
    /// Wait for a line on stdin before the first message (start the receiver first) and
    /// again before closing the channel (read its statistics meanwhile).
    #[arg(long)]
    wait_stdin: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    control::units::parse_duration(s)
        .map(Duration::from_nanos)
        .map_err(|e| e.to_string())
}

fn size(s: &str) -> Result<u32, String> {
    let v = control::units::parse_size(s).map_err(|e| e.to_string())?;
    u32::try_from(v).map_err(|_| format!("{s}: at most {} bytes", u32::MAX))
}

/// `N` or `MIN..MAX`, each at least 4 bytes (the message number).
fn size_range(s: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = match s.split_once("..") {
        Some((a, b)) => (size(a)?, size(b)?),
        None => (size(s)?, size(s)?),
    };
    if lo < 4 {
        return Err(format!(
            "{s}: messages are at least 4 bytes (they carry their number)"
        ));
    }
    if lo > hi {
        return Err(format!("{s}: the minimum is above the maximum"));
    }
    Ok((lo, hi))
}

fn policy(s: &str) -> Result<Overflow, String> {
    match s {
        "block" => Ok(Overflow::Block),
        "drop-newest" => Ok(Overflow::DropNewest),
        "drop-oldest" => Ok(Overflow::DropOldest),
        _ => Err(format!(
            "{s}: not a policy (block, drop-newest, drop-oldest)"
        )),
    }
}

/// Message `k` of length `len`: its number, then a pattern of it (see the module docs).
fn fill(buf: &mut Vec<u8>, k: u32, len: usize) {
    buf.clear();
    buf.extend_from_slice(&k.to_le_bytes());
    buf.extend((4..len).map(|i| (k as usize).wrapping_add(31 * i) as u8));
}

/// The length of message `k`: spread over `[lo, hi]` (997 is prime to most spans).
fn length(k: u64, (lo, hi): (u32, u32)) -> usize {
    lo as usize + (k as usize).wrapping_mul(997) % (hi - lo + 1) as usize
}

/// FNV-1a over every byte sent, in order (`rt_receiver` prints the same of what it got).
struct Digest(u64);

impl Digest {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn wait_line() {
    let mut l = String::new();
    let _ = std::io::stdin().lock().read_line(&mut l);
}

fn open(client: &Client, a: &Args) -> Result<Sender, String> {
    if let Some(id) = a.attach {
        return client
            .attach_sender(id)
            .map_err(|e| format!("attach to channel {id}: {e}"));
    }
    let missing = |what: &str| format!("--{what} is needed to open a channel (or --attach ID)");
    let imin = match a.imin {
        Some(d) => d,
        None => Duration::from_secs_f64(1.0 / a.rate),
    };
    let mut spec = OpenSpec::new(
        a.mmax.unwrap_or(a.size.1),
        imin,
        a.bmax.ok_or_else(|| missing("bmax"))?,
        a.deadline.ok_or_else(|| missing("deadline"))?,
    );
    if let Some(d) = &a.dst {
        spec.dst = d.clone();
    }
    spec.policy = a.policy;
    spec.core = a.core;
    client
        .open(&spec)
        .map_err(|e| format!("open a channel to {}: {e}", spec.dst))
}

fn run(a: &Args) -> Result<(), String> {
    if !(a.rate.is_finite() && a.rate > 0.0) {
        return Err(format!(
            "--rate {}: messages per second must be above 0",
            a.rate
        ));
    }
    if a.count > u64::from(u32::MAX) {
        return Err(format!("--count {}: at most {}", a.count, u32::MAX));
    }
    let socket = a
        .socket
        .clone()
        .unwrap_or_else(rtchan::client::default_socket);
    let client =
        Client::connect(&socket).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let mut tx = open(&client, a)?;
    if a.size.1 > tx.mmax() {
        return Err(format!(
            "--size {}..{}: channel {} carries at most {} bytes",
            a.size.0,
            a.size.1,
            tx.id(),
            tx.mmax()
        ));
    }
    let info = tx.info();
    println!(
        "rt_sender: channel {} {} to {}: mmax {} B, bmax {}, policy {}, deadline {:.3} ms \
         (sending host's share {:.3} ms)",
        tx.id(),
        if a.attach.is_some() {
            "attached"
        } else {
            "open"
        },
        info.dst,
        tx.mmax(),
        tx.capacity(),
        info.policy,
        info.deadline as f64 / 1e6,
        info.sender.request.deadline as f64 / 1e6,
    );
    // Faster than 1/imin breaks the channel's contract: admission reserved nothing for it.
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let imin = Duration::from_nanos(info.sender.request.imin);
    if period < imin {
        return Err(format!(
            "--rate {}: channel {} admits one message per {imin:?} at most (imin)",
            a.rate,
            tx.id()
        ));
    }
    if a.wait_stdin {
        wait_line();
    }
    let mut digest = Digest(0xcbf2_9ce4_8422_2325);
    let (mut bytes, mut dropped, mut blocked) = (0u64, 0u64, 0u64);
    let mut msg = Vec::with_capacity(a.size.1 as usize);
    let start = Instant::now();
    for k in 0..a.count {
        let due = start + period.mul_f64(k as f64);
        // Sleep most of the wait, spin the last bit: the stamp is taken in `send`.
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            if due - now > Duration::from_micros(200) {
                std::thread::sleep(due - now - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
        fill(&mut msg, k as u32, length(k, a.size));
        let r = match tx.send(&msg) {
            Err(SendError::WouldBlock) => {
                blocked += 1;
                tx.send_timeout(&msg, a.block_timeout)
            }
            r => r,
        };
        match r {
            Ok(Sent::Queued) => {}
            Ok(Sent::DroppedNewest | Sent::QueuedDroppedOldest) => dropped += 1,
            Err(SendError::WouldBlock) => {
                return Err(format!(
                    "message {k}: the buffer stayed full for {:?} (--block-timeout)",
                    a.block_timeout
                ))
            }
            Err(e) => return Err(format!("message {k}: {e}")),
        }
        digest.add(&msg);
        bytes += msg.len() as u64;
    }
    let took = start.elapsed();
    println!(
        "rt_sender: sent {} messages, {bytes} bytes in {:.3} s ({:.0} messages/s); \
         {blocked} found the buffer full, {dropped} dropped by the policy; digest {:016x}",
        a.count,
        took.as_secs_f64(),
        a.count as f64 / took.as_secs_f64().max(1e-9),
        digest.0
    );
    if a.wait_stdin {
        wait_line();
    }
    tx.close().map_err(|e| format!("close channel: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rt_sender: {e}");
            ExitCode::FAILURE
        }
    }
}
