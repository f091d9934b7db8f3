//! The in-process API against a client process over shared memory, side by side in one run
//! (issue 13: the cross-process path must be within 1.2x of the in-process one).
//!
//! Both paths run the same channel on the same dataplane: cores built from one
//! `DaemonConfig` by [`Dataplane::start`] (the daemon's own function): a sending core on the
//! in-memory link, its loopback receive core, pinned, with the configured idle loop, and the
//! daemon's sink draining the receiving end.
//! - **in-process**: this process opens the channel on the sending core with
//!   `CoreHandle::open` and a pinned thread submits through `dataplane::channel::Sender`;
//! - **client process**: a daemon ([`Daemon::start`], in this process as the tests start it)
//!   on the same configuration, and a separate process (this bench binary run again with
//!   [`CHILD_ENV`] set) that opens the channel through `rtchan::client` and sends from a
//!   pinned thread into its shared-memory ring.
//!
//! The in-process channel is opened with the spec and the deadlines the daemon admitted for
//! the client's channel (`ChannelInfo::sender`), so the two channels are the same
//! `ChannelConfig` apart from where their messages come from.
//!
//! Two figures per path:
//! - **saturation**: the sender submits as fast as the channel's ring takes messages for a
//!   fixed time, retrying every would-block at once (counted); messages per second is what
//!   was accepted over the sender's own time window (after the core drained, accepted ==
//!   sent is checked). `policy.work_conserving = true`, so messages ahead of the spec's Imin
//!   are sent when nothing else waits: what limits the rate is the path, not the spec.
//! - **delay**: at a fixed offered rate (by default half the in-process saturation rate
//!   measured in this run, the best of its rounds: the path's capacity, not the machine's
//!   mood), the channel's own delay histogram: from the sender's submit stamp
//!   (taken inside `Sender::submit` / `client::Sender::send`) to the release of the
//!   message's last packet to the port by the link scheduler (`ChannelStats` delay, the
//!   daemon's `tx.delay`). So "release" here is the TX release, which includes the core's
//!   pick-up of the message (doorbell, or client scan), its handler run and the TX stage.
//!
//! A third path is the ablation that says where a difference comes from: the client's ring
//! without the process boundary (a client-fed channel opened with `CoreHandle::open_client`,
//! as the daemon opens it, written from a thread of this process through `shm::Producer`
//! exactly as `client::Sender::send` writes it, and found by the core's client scan). The
//! Sender against it is the ring type and wake-up (submit queue and doorbell against the
//! shared-memory ring and the scan); it against the client process is the process boundary.
//!
//! Runs alternate between the paths (cross-process first, since the in-process channels
//! take their deadlines from the daemon's answer), each on a freshly started dataplane; the
//! tables show the median of the rounds, and the best of the rounds figure by figure: on a
//! shared machine a run in which the OS held the sending core or the sender off its CPU for
//! milliseconds (its run-queue wait, printed per run and in the tables) has that in its tail,
//! whichever path it ran; the best of the rounds is the least disturbed figure. The 1.2x
//! target is judged on both, printed apart. `--quick` (or `RTCHAN_BENCH_QUICK=1`): two
//! rounds of 0.5 s instead of twelve of 1 s. Figures of runs: `docs/benchmarks.md`.
//!
//! The in-memory link gets a deep FIFO ([`FIFO`]), so that the receive core, which shares a
//! CPU with the sending core on a two-CPU machine, never backs the sending core up.
//!
//! Environment: `RTCHAN_BENCH_CPUS=tx,rx,sender` (default: the sender alone on CPU 0, the
//! sending core on the last CPU, the receive core on the one before it, or on the last one
//! too on a two-CPU machine), `RTCHAN_BENCH_IDLE=spin|yield|sleep` (default `yield`: two
//! cores sharing a CPU hand it to each other when idle; with `spin` each holds the other off
//! until the OS preempts it, milliseconds; `sleep` adds the sleep to every delay),
//! `RTCHAN_BENCH_RATE` (messages/s of the delay runs),
//! `RTCHAN_BENCH_SERVICE_INTERVAL` (e.g. `50us`: the core's service phase, hence its client
//! scan, runs at most this often while busy; below the default 20 µs admission refuses the
//! channel with the default cost model) and `RTCHAN_BENCH_BATCH` (each call sends this
//! many messages: the client with `send_many`, one stamp and one publish for the batch, the
//! ring ablation likewise, the Sender, which has no batch submit, with that many `submit`s;
//! the delay runs then send a batch every that many intervals): the last two are ablations.
//! `RTCHAN_BENCH_DEBUG`: also the sending core's counters after each run and the receiving
//! side's of the client's channel.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use control::config::DaemonConfig;
use control::protocol::{percentiles, Percentiles};
use dataplane::channel::{Sender, SubmitError};
use dataplane::core::CoreStats;
use dataplane::shm::{Producer, SubmitDesc};
use dataplane::spec::{ChannelConfig, ChannelSpec, OverflowPolicy};
use dataplane::time::{monotonic_now, Nanos};
use rtchan::client::{Client, OpenSpec, Overflow, SendError};
use rtchan::daemon::dp::{Dataplane, PORT_QUEUE};
use rtchan::daemon::traffic::Sink;
use rtchan::daemon::Daemon;

/// Set in the child process: its role's arguments (see [`child`]).
const CHILD_ENV: &str = "RTCHAN_CLIENT_PATH_CHILD";
/// The channel: one-packet messages of this many bytes...
const MMAX: u32 = 64;
/// ... at most one per this interval in its spec (500,000 messages/s; admitted with the
/// default cost model, which charges 550 ns per message) ...
const IMIN: Duration = Duration::from_micros(2);
/// ... with a buffer (and ring) of this many messages ...
const BMAX: u32 = 32;
/// ... and this end-to-end bound.
const DEADLINE: Duration = Duration::from_millis(1);
/// The daemon's loopback receive ring (`controller::RX_RING`), for the in-process receiver.
const RX_RING: u32 = 1024;
/// The in-memory link's transmit FIFO and buffer pool: deep enough (27 ms at 600,000
/// messages/s) that the receive core, which shares its CPU with the sending core on a
/// two-CPU machine and gets it only when the OS preempts a busy sending core, never backs
/// the sending core up: what is measured ends at the sending port, as on a real wire, which
/// never waits for the receiver.
const FIFO: usize = 16_384;
const BUFFERS: usize = 32_768;
/// How long both paths wait, with the channel open and the sender thread started and pinned,
/// before sending: what runs once after a start (the cores' first iterations and folds,
/// page faults of fresh buffers, the new thread's migration) is over by then. Without it the
/// in-process run, which spawned its sender thread right before sending, had one stall of
/// about 1.4 ms at its start (33 late packets: a full ring) that the client run did not.
const SETTLE: Duration = Duration::from_millis(200);
/// How long the core may take to send what is queued once the sender stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// As fast as the ring takes messages.
    Saturate,
    /// One submit call (a message, or a batch) every `interval` ns.
    Rate { interval: Nanos },
}

impl Mode {
    fn arg(self) -> String {
        match self {
            Mode::Saturate => "saturate".into(),
            Mode::Rate { interval } => format!("rate:{interval}"),
        }
    }

    fn parse(s: &str) -> Mode {
        match s.strip_prefix("rate:") {
            Some(i) => Mode::Rate {
                interval: i.parse().expect("rate interval"),
            },
            None => Mode::Saturate,
        }
    }
}

/// What the sender saw.
#[derive(Clone, Copy, Debug, Default)]
struct Drive {
    /// Messages accepted.
    sent: u64,
    /// Submits refused with would-block (each retried).
    would_block: u64,
    /// The sender's window, ns.
    elapsed: Nanos,
    /// The sending thread's run-queue wait (OS preemption) in that window, ns.
    waited: Nanos,
}

/// One run's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    drive: Drive,
    /// Packets released after their link deadline.
    late: u64,
    delay: Percentiles,
    /// The sending core's and the receive core's run-queue wait during the sender's
    /// window, ns.
    cores_waited: (Nanos, Nanos),
    /// The sending core's counters at the end (printed with `RTCHAN_BENCH_DEBUG`).
    core: CoreStats,
}

impl Run {
    fn rate(&self) -> f64 {
        self.drive.sent as f64 * 1e9 / self.drive.elapsed.max(1) as f64
    }
}

/// The result of one submit, whichever API made it.
enum Outcome {
    Taken(u64),
    WouldBlock,
}

/// Drives `submit` for `secs` in `mode`: the loop both paths share. `submit` sends one
/// message (or a batch) and says how many were taken. The sender spins: waiting for its
/// next due time, and retrying a would-block at once.
fn drive(mode: Mode, secs: f64, mut submit: impl FnMut(&[u8]) -> Outcome) -> Drive {
    let msg = [0x5au8; MMAX as usize];
    let span = (secs * 1e9) as Nanos;
    let start = monotonic_now();
    let end = start + span;
    let mut d = Drive::default();
    let waited0 = thread_wait("/proc/thread-self/schedstat");
    let mut due = start;
    loop {
        let now = monotonic_now();
        if now >= end {
            break;
        }
        if let Mode::Rate { interval } = mode {
            if now < due {
                std::hint::spin_loop();
                continue;
            }
            // A sender held up (preempted) does not burst to catch up: the offered load
            // stays at most the rate, never a backlog released at once.
            due = (due + interval).max(now);
        }
        // A refused submit is retried at once (saturation: that is the point; at the
        // moderate rate it should not happen).
        loop {
            match submit(&msg) {
                Outcome::Taken(n) => {
                    d.sent += n;
                    break;
                }
                Outcome::WouldBlock => {
                    d.would_block += 1;
                    std::hint::spin_loop();
                }
            }
        }
    }
    d.elapsed = monotonic_now() - start;
    d.waited = thread_wait("/proc/thread-self/schedstat") - waited0;
    d
}

/// A thread's run-queue wait so far (`schedstat`'s second field), ns; 0 when unreadable.
fn thread_wait(path: &str) -> Nanos {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The run-queue wait of this process's polling-core threads (the daemon's or the
/// in-process dataplane's), ns: the sending core's and the receive core's, apart. Both
/// dataplanes start the sending core's thread before the receive core's (`Dataplane::start`),
/// so of the live `rtchan-core*` threads the one with the lower thread id sends.
fn cores_wait() -> (Nanos, Nanos) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let mut cores: Vec<(u32, Nanos)> = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("rtchan-core"))
        })
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            Some((
                tid,
                thread_wait(&t.path().join("schedstat").display().to_string()),
            ))
        })
        .collect();
    cores.sort_unstable();
    (
        cores.first().map_or(0, |c| c.1),
        cores.get(1..).map_or(0, |r| r.iter().map(|c| c.1).sum()),
    )
}

fn pin(cpu: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        eprintln!("warning: cannot pin the sender to CPU {cpu}");
    }
}

/// Where the threads run and how the cores idle.
#[derive(Clone, Debug)]
struct Setup {
    tx_cpu: usize,
    rx_cpu: usize,
    sender_cpu: usize,
    idle: String,
    service_interval: Option<String>,
    batch: usize,
}

impl Setup {
    fn from_env() -> Self {
        let n = core_affinity::get_core_ids().map_or(1, |v| v.len()).max(1);
        let cpus: Vec<usize> = std::env::var("RTCHAN_BENCH_CPUS")
            .ok()
            .map(|s| {
                s.split(',')
                    .map(|c| c.trim().parse().expect("CPU"))
                    .collect()
            })
            .unwrap_or_else(|| match n {
                // The sender alone on CPU 0; the two cores share the other one, each
                // yielding it when idle.
                1 | 2 => vec![n - 1, n - 1, 0],
                _ => vec![n - 1, n - 2, 0],
            });
        assert_eq!(cpus.len(), 3, "RTCHAN_BENCH_CPUS=tx,rx,sender");
        Self {
            tx_cpu: cpus[0],
            rx_cpu: cpus[1],
            sender_cpu: cpus[2],
            idle: std::env::var("RTCHAN_BENCH_IDLE").unwrap_or_else(|_| "yield".into()),
            service_interval: std::env::var("RTCHAN_BENCH_SERVICE_INTERVAL").ok(),
            batch: std::env::var("RTCHAN_BENCH_BATCH")
                .ok()
                .map_or(1, |b| b.parse::<usize>().expect("batch").max(1)),
        }
    }

    fn config(&self, dir: &Path) -> DaemonConfig {
        let service = self
            .service_interval
            .as_ref()
            .map_or(String::new(), |s| format!("service_interval = \"{s}\"\n"));
        DaemonConfig::parse(&format!(
            r#"
socket = "{dir}/ctl.sock"
socket_mode = "0600"
state_file = "{dir}/state.json"
[port]
fifo_packets = {FIFO}
buffers = {BUFFERS}
[policy]
idle = "{idle}"
work_conserving = true
{service}
[[cores]]
cpu = {tx}
rx_cpu = {rx}
"#,
            dir = dir.display(),
            idle = self.idle,
            tx = self.tx_cpu,
            rx = self.rx_cpu,
        ))
        .expect("bench configuration")
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtchan-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn open_spec() -> OpenSpec {
    let mut s = OpenSpec::new(MMAX, IMIN, BMAX, DEADLINE);
    s.policy = Some(Overflow::Block);
    s.core = Some(0);
    s
}

/// Waits until `released()` reaches `target` (the core sent everything queued).
fn wait_drained(what: &str, target: u64, mut released: impl FnMut() -> u64) {
    let until = monotonic_now() + DRAIN_TIMEOUT.as_nanos() as Nanos;
    loop {
        let r = released();
        if r >= target {
            return;
        }
        assert!(
            monotonic_now() < until,
            "{what}: {r} of {target} messages sent after {DRAIN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---- the client process ----------------------------------------------------------------

/// Writes a line for the parent (stdout is a pipe to it).
fn say(s: &str) {
    let mut o = std::io::stdout().lock();
    writeln!(o, "@@ {s}").unwrap();
    o.flush().unwrap();
}

/// The child: `socket mode secs cpu batch`. Opens the channel, says its id and the admitted
/// deadlines, waits for a line, drives, says what it saw, waits for a line, closes.
fn child(args: &str) {
    let a: Vec<&str> = args.split_whitespace().collect();
    let (socket, mode, secs) = (a[0], Mode::parse(a[1]), a[2].parse::<f64>().unwrap());
    let (cpu, batch): (usize, usize) = (a[3].parse().unwrap(), a[4].parse().unwrap());
    let client = Client::connect(socket).expect("connect");
    let mut tx = client.open(&open_spec()).expect("open");
    let s = &tx.info().sender;
    say(&format!(
        "id {} {} {}",
        tx.id(),
        s.cpu_deadline,
        s.link_deadline
    ));
    pin(cpu);
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).unwrap();
    let d = if batch <= 1 {
        drive(mode, secs, |m| match tx.send(m) {
            Ok(_) => Outcome::Taken(1),
            Err(SendError::WouldBlock) => Outcome::WouldBlock,
            Err(e) => panic!("send: {e}"),
        })
    } else {
        drive(mode, secs, |m| {
            match tx.send_many(std::iter::repeat_n(m, batch)) {
                Ok(n) => Outcome::Taken(n as u64),
                Err(SendError::WouldBlock) => Outcome::WouldBlock,
                Err(e) => panic!("send_many: {e}"),
            }
        })
    };
    say(&format!(
        "done {} {} {} {}",
        d.sent, d.would_block, d.elapsed, d.waited
    ));
    l.clear();
    std::io::stdin().read_line(&mut l).unwrap();
    tx.close().expect("close");
}

/// The next `@@ ` line of a child.
fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    loop {
        l.clear();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "client process exited early"
        );
        if let Some(rest) = l.strip_prefix("@@ ") {
            return rest.trim_end().to_string();
        }
    }
}

fn numbers(l: &str, prefix: &str) -> Vec<u64> {
    l.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("client process: {l}"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// The admitted deadlines of the client's channel (cpu, link), kept for the in-process one.
type Deadlines = (Nanos, Nanos);

/// One run of the client path: a daemon, a client process. Returns the figures and the
/// deadlines the daemon admitted.
fn run_client(setup: &Setup, mode: Mode, secs: f64) -> (Run, Deadlines) {
    let dir = temp_dir("client");
    let d = Daemon::start(setup.config(&dir)).expect("daemon");
    let sock = d.socket.display().to_string();
    let args = format!(
        "{sock} {} {secs} {} {}",
        mode.arg(),
        setup.sender_cpu,
        setup.batch
    );
    let mut c: Child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let v = numbers(&line(&mut out), "id ");
    let (id, deadlines) = (v[0] as u32, (v[1], v[2]));
    std::thread::sleep(SETTLE);
    let w0 = cores_wait();
    writeln!(c.stdin.as_mut().unwrap()).unwrap();
    let v = numbers(&line(&mut out), "done ");
    let drive = Drive {
        sent: v[0],
        would_block: v[1],
        elapsed: v[2],
        waited: v[3],
    };
    let w1 = cores_wait();
    let cores_waited = (w1.0 - w0.0, w1.1 - w0.1);
    let ctl = Client::connect(&d.socket).expect("connect");
    let stat = || ctl.stats(id).expect("stats").tx.expect("tx counters");
    wait_drained("client path", drive.sent, || stat().sent);
    let t = stat();
    if std::env::var_os("RTCHAN_BENCH_DEBUG").is_some() {
        println!("    receiving side: {:?}", ctl.stats(id).expect("stats").rx);
    }
    assert_eq!(
        t.submitted, drive.sent,
        "the core took what the client sent"
    );
    assert_eq!(t.invalid, 0, "no descriptor refused");
    let mut run = Run {
        drive,
        late: t.late_packets,
        delay: t.delay,
        cores_waited,
        core: CoreStats::default(),
    };
    drop(c.stdin.take());
    assert!(c.wait().unwrap().success(), "client process failed");
    run.core = d.shutdown().cores[0];
    let _ = std::fs::remove_dir_all(&dir);
    (run, deadlines)
}

/// One submit (or batch) of an in-process run, moved to its sending thread.
type SubmitFn = dyn FnMut(&[u8]) -> Outcome + Send;

/// How an in-process run feeds its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// `dataplane::channel::Sender` (the in-process API: its submit ring and the doorbell).
    Sender,
    /// The ablation: a client-fed channel (`CoreHandle::open_client`, as the daemon opens
    /// the client's) written from this process through `shm::Producer` exactly as
    /// `client::Sender::send` writes it: the shared-memory ring and the core's client scan,
    /// without the process boundary (and without the client's liveness checks).
    Ring,
}

/// Writes one message into a client-fed ring as `client::Sender::send` does, without
/// publishing it (the block policy: no room, no message).
fn ring_place(ring: &mut Producer<SubmitDesc>, capacity: u64, msg: &[u8], now: Nanos) -> bool {
    if ring.queued() >= capacity {
        return false;
    }
    let Some(b) = ring.grant(|_| {}) else {
        return false;
    };
    ring.buffer_mut(b)[..msg.len()].copy_from_slice(msg);
    ring.push(SubmitDesc {
        buf: b,
        len: msg.len() as u32,
        submit_ts: now,
    });
    true
}

/// One run of an in-process path: the same dataplane, the same channel, fed by `feed`.
fn run_in_process(
    setup: &Setup,
    feed: Feed,
    mode: Mode,
    secs: f64,
    (cpu_d, link_d): Deadlines,
) -> Run {
    let dir = temp_dir("inproc");
    let cfg = setup.config(&dir);
    let mut dp = Dataplane::start(&cfg).expect("dataplane");
    let sink = Sink::start().expect("sink");
    const ID: u32 = 1;
    let rx = dp
        .receive_core(0)
        .expect("loopback receive core")
        .open_receiver(ID, MMAX, RX_RING)
        .expect("receiver");
    sink.add(ID, rx);
    let mut ch = ChannelConfig::real_time(
        ID,
        ChannelSpec {
            mmax: MMAX,
            imin: IMIN.as_nanos() as Nanos,
            bmax: BMAX,
            cpu_deadline: cpu_d,
            link_deadline: link_d,
            end_to_end_deadline: DEADLINE.as_nanos() as Nanos,
        },
    );
    ch.overflow = OverflowPolicy::Block;
    ch.txq = PORT_QUEUE;
    let (cpu, batch) = (setup.sender_cpu, setup.batch);
    // Either way the submitting closure goes to a pinned thread and `shared` keeps the
    // statistics.
    let (shared, mut submit): (_, Box<SubmitFn>) = match feed {
        Feed::Sender => {
            let mut tx: Sender = dp.tx[0].handle.open(ch).expect("open");
            let shared = tx.shared().clone();
            (
                shared,
                // The in-process API has no batch submit: a batch is that many submits.
                Box::new(move |m: &[u8]| {
                    let mut n = 0;
                    for _ in 0..batch {
                        match tx.submit(m) {
                            Ok(_) => n += 1,
                            Err(SubmitError::WouldBlock) => break,
                            Err(e) => panic!("submit: {e}"),
                        }
                    }
                    if n == 0 {
                        Outcome::WouldBlock
                    } else {
                        Outcome::Taken(n)
                    }
                }),
            )
        }
        Feed::Ring => {
            // The release jitter the daemon admits client-fed channels with.
            let jitter = cfg.tx_model().client_release_jitter();
            let shared = dp.tx[0].handle.open_client(ch, jitter).expect("open");
            let region = shared.region().expect("a client-fed ring").clone();
            let mut ring = Producer::<SubmitDesc>::new(region).expect("producer");
            // As a client does once it has mapped the ring: the core reads it from now on.
            shared.client_mapped().expect("seal the ring");
            let capacity = u64::from(BMAX);
            (
                shared,
                Box::new(move |m: &[u8]| {
                    // One stamp and one publish per call, as `send`, or `send_many` for a
                    // batch.
                    let now = monotonic_now();
                    let mut n = 0;
                    while n < batch as u64 && ring_place(&mut ring, capacity, m, now) {
                        n += 1;
                    }
                    ring.publish();
                    if n == 0 {
                        Outcome::WouldBlock
                    } else {
                        Outcome::Taken(n)
                    }
                }),
            )
        }
    };
    // The sender thread starts and pins itself first, then waits out the settling time, as
    // the client process does before it is told to go.
    let go = std::sync::Barrier::new(2);
    let (w0, drive) = std::thread::scope(|s| {
        let t = s.spawn(|| {
            pin(cpu);
            go.wait();
            drive(mode, secs, &mut submit)
        });
        std::thread::sleep(SETTLE);
        let w0 = cores_wait();
        go.wait();
        (w0, t.join().unwrap())
    });
    let w1 = cores_wait();
    let cores_waited = (w1.0 - w0.0, w1.1 - w0.1);
    let stats = &shared.stats;
    wait_drained("in-process path", drive.sent, || stats.messages_sent.get());
    let snap = stats.snapshot();
    assert_eq!(
        snap.submitted, drive.sent,
        "the core took what was submitted"
    );
    assert_eq!(snap.invalid_descriptors, 0, "no descriptor refused");
    let mut run = Run {
        drive,
        late: snap.late_packets,
        delay: percentiles(&stats.delay_snapshot()),
        cores_waited,
        core: CoreStats::default(),
    };
    let _ = dp.tx[0].handle.close(ID, true);
    drop(submit);
    drop(shared);
    run.core = dp.stop()[0];
    drop(sink);
    let _ = std::fs::remove_dir_all(&dir);
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One path's figures over the rounds (see [`summary_of`]).
#[derive(Clone, Copy, Debug)]
struct Summary {
    rate: f64,
    would_block: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Run-queue wait of the sender, of the sending core, of the receive core, % of the
    /// window.
    sender_wait: f64,
    tx_wait: f64,
    rx_wait: f64,
}

/// The median of each figure over the rounds (`best`: the best of the rounds instead, the
/// run least disturbed by the rest of the machine, figure by figure).
fn summary_of(runs: &[Run], best: bool) -> Summary {
    let m = |f: &dyn Fn(&Run) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        if best {
            v.into_iter().fold(f64::INFINITY, f64::min)
        } else {
            median(v)
        }
    };
    let rates: Vec<f64> = runs.iter().map(Run::rate).collect();
    Summary {
        rate: if best {
            rates.iter().copied().fold(0.0, f64::max)
        } else {
            median(rates)
        },
        would_block: m(&|r| r.drive.would_block as f64 / r.drive.sent.max(1) as f64),
        p50: m(&|r| r.delay.p50 as f64),
        p99: m(&|r| r.delay.p99 as f64),
        p999: m(&|r| r.delay.p999 as f64),
        sender_wait: m(&|r| r.drive.waited as f64 * 100.0 / r.drive.elapsed.max(1) as f64),
        tx_wait: m(&|r| r.cores_waited.0 as f64 * 100.0 / r.drive.elapsed.max(1) as f64),
        rx_wait: m(&|r| r.cores_waited.1 as f64 * 100.0 / r.drive.elapsed.max(1) as f64),
    }
}

fn print_run(path: &str, mode: &str, r: &Run) {
    let share = |w: Nanos| w as f64 * 100.0 / r.drive.elapsed.max(1) as f64;
    println!(
        "  {path:<14} {mode:<8} {:>8.0} msg/s  would-block/msg {:>6.2}  late {:>5}  \
         delay p50 {:>6} p99 {:>8} p99.9 {:>8} max {:>8} ns  run-queue wait: sender {:>4.1} %, \
         sending core {:>4.1} %, receive core {:>4.1} %",
        r.rate(),
        r.drive.would_block as f64 / r.drive.sent.max(1) as f64,
        r.late,
        r.delay.p50,
        r.delay.p99,
        r.delay.p999,
        r.delay.max,
        share(r.drive.waited),
        share(r.cores_waited.0),
        share(r.cores_waited.1),
    );
    if std::env::var_os("RTCHAN_BENCH_DEBUG").is_some() {
        println!("    sending core: {:?}", r.core);
    }
}

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        child(&args);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("RTCHAN_BENCH_QUICK").is_ok_and(|v| v != "0");
    // Short runs, many of them, alternating: on a shared machine the noise then hits both
    // paths alike, and the median of the rounds drops the runs another load spoilt.
    let (rounds, secs) = if quick { (2, 0.5) } else { (12, 1.0) };
    let setup = Setup::from_env();
    println!(
        "client_path: channel mmax {MMAX} B, imin {IMIN:?}, bmax {BMAX}, D {DEADLINE:?}, \
         block policy; memlink at 10 Gb/s, work-conserving; sending core on CPU {}, receive \
         core on CPU {}, sender on CPU {}; idle = {}{}{}; {rounds} round(s) of {secs} s",
        setup.tx_cpu,
        setup.rx_cpu,
        setup.sender_cpu,
        setup.idle,
        setup
            .service_interval
            .as_ref()
            .map_or(String::new(), |s| format!(", service_interval {s}")),
        if setup.batch > 1 {
            format!(", batches of {}", setup.batch)
        } else {
            String::new()
        },
    );

    // Per round: the client process, the in-process Sender, the in-process ring (ablation).
    let mut sat: [Vec<Run>; 3] = Default::default();
    let mut deadlines = (0, 0);
    for _ in 0..rounds {
        let (c, d) = run_client(&setup, Mode::Saturate, secs);
        deadlines = d;
        print_run("client process", "saturate", &c);
        sat[0].push(c);
        let i = run_in_process(&setup, Feed::Sender, Mode::Saturate, secs, deadlines);
        print_run("in-process", "saturate", &i);
        sat[1].push(i);
        let r = run_in_process(&setup, Feed::Ring, Mode::Saturate, secs, deadlines);
        print_run("in-proc ring", "saturate", &r);
        sat[2].push(r);
    }
    let rate = std::env::var("RTCHAN_BENCH_RATE")
        .ok()
        .map_or(summary_of(&sat[1], true).rate / 2.0, |r| {
            r.parse().expect("rate")
        });
    let interval = (1e9 / rate) as Nanos;
    // A batch goes every `batch` intervals: the offered messages per second stay `rate`.
    let mode = Mode::Rate {
        interval: interval * setup.batch as Nanos,
    };
    let mut del: [Vec<Run>; 3] = Default::default();
    for _ in 0..rounds {
        let (c, _) = run_client(&setup, mode, secs);
        print_run("client process", "rate", &c);
        del[0].push(c);
        let i = run_in_process(&setup, Feed::Sender, mode, secs, deadlines);
        print_run("in-process", "rate", &i);
        del[1].push(i);
        let r = run_in_process(&setup, Feed::Ring, mode, secs, deadlines);
        print_run("in-proc ring", "rate", &r);
        del[2].push(r);
    }
    println!();
    println!(
        "(sat msg/s: accepted per second at saturation; wb/msg: would-block retries per \
         accepted message; p50..p99.9: submit stamp to the last packet's release to the port, \
         at {rate:.0} msg/s offered, one every {interval} ns; run-queue wait: time the OS \
         kept the thread off its CPU, % of the run)"
    );
    for best in [false, true] {
        let [s_cross, s_in, s_ring] = [0, 1, 2].map(|k| summary_of(&sat[k], best));
        let [d_cross, d_in, d_ring] = [0, 1, 2].map(|k| summary_of(&del[k], best));
        println!();
        if best {
            println!("best of {rounds} round(s), figure by figure:");
        } else {
            println!("medians of {rounds} round(s):");
        }
        println!(
            "{:<22} {:>10} {:>7} | {:>9} {:>9} {:>9} | run-queue wait % (sat / delay)",
            "path", "sat msg/s", "wb/msg", "p50 ns", "p99 ns", "p99.9 ns"
        );
        for (name, s, d) in [
            ("in-process (Sender)", s_in, d_in),
            ("client process", s_cross, d_cross),
            ("ablation: in-proc ring", s_ring, d_ring),
        ] {
            println!(
                "{:<22} {:>10.0} {:>7.2} | {:>9.0} {:>9.0} {:>9.0} | sender {:.1}/{:.1}, \
                 sending core {:.1}/{:.1}, receive core {:.1}/{:.1}",
                name,
                s.rate,
                s.would_block,
                d.p50,
                d.p99,
                d.p999,
                s.sender_wait,
                d.sender_wait,
                s.tx_wait,
                d.tx_wait,
                s.rx_wait,
                d.rx_wait,
            );
        }
        ratios(
            (s_cross, d_cross),
            (s_in, d_in),
            (s_ring, d_ring),
            if best { "best" } else { "medians" },
        );
    }
}

/// Prints the ratios of one table: the client over the in-process Sender against the 1.2x
/// target, and the ablation's split of the difference.
fn ratios(
    cross: (Summary, Summary),
    inproc: (Summary, Summary),
    ring: (Summary, Summary),
    of: &str,
) {
    // A slower path is the larger figure: throughput faster / slower, delay slower /
    // faster; the target is every ratio of the client over the in-process API at most 1.2.
    let ratio_set = |(x, dx): (Summary, Summary), (y, dy): (Summary, Summary)| {
        [
            ("msg/s", y.rate / x.rate),
            ("delay p50", dx.p50 / dy.p50),
            ("delay p99", dx.p99 / dy.p99),
            ("delay p99.9", dx.p999 / dy.p999),
        ]
    };
    let main = ratio_set(cross, inproc);
    let v: Vec<String> = main
        .iter()
        .map(|(n, r)| format!("{n} {r:.2}x{}", if *r <= 1.2 { "" } else { " (MISSES)" }))
        .collect();
    println!(
        "ratios ({of}), client process over in-process Sender: {}",
        v.join(", ")
    );
    println!(
        "1.2x target ({of}): {}",
        if main.iter().all(|&(_, r)| r <= 1.2) {
            "holds"
        } else {
            "does not hold"
        }
    );
    for (label, set) in [
        (
            "ablation: ring instead of Sender, one process",
            ratio_set(ring, inproc),
        ),
        (
            "ablation: process boundary, same ring",
            ratio_set(cross, ring),
        ),
    ] {
        let v: Vec<String> = set.iter().map(|(n, r)| format!("{n} {r:.2}x")).collect();
        println!("  {label}: {}", v.join(", "));
    }
}
