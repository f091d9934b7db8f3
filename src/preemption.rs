//! OS preemption of polling threads, measured independently of the threads themselves: what a
//! test or an evaluation run may use to excuse a deadline miss, and nothing else may.
//!
//! A polling thread's own view of its gaps ([`dataplane::core::PollStalls`]) includes the
//! dataplane's own work, so it cannot tell "the OS took the CPU" from "the loop was slow". This
//! module reads the kernel's account instead: the second field of
//! `/proc/PID/task/TID/schedstat` is the time the thread spent runnable but waiting on a run
//! queue for a CPU (ns, cumulative). A [`PreemptionProbe`] thread samples it for every watched
//! thread every [`SAMPLE_EVERY`] and timestamps each sample with `CLOCK_MONOTONIC` (the clock
//! the dataplane stamps messages with).
//!
//! Data flow: polling threads call [`PreemptionProbe::watch_current_thread`] once (or a test
//! watches another process's threads, [`PreemptionProbe::watch_threads_of`]); the probe thread
//! appends `(time, cumulative preemption)` samples, where the cumulative preemption grows in
//! each sample interval by the *largest* wait of any watched thread in that interval (the
//! threads of one path are preempted at the same time when the machine is busy; adding them
//! would count one stall twice); [`PreemptionProbe::finish`] stops it and returns
//! [`Preemptions`].
//!
//! Where a wait lies in time: the kernel adds a wait to `run_delay` only when the thread gets
//! its CPU back, so a wait `w` that first shows in the sample at `t_k` *ended* somewhere in
//! `(t_(k-1), t_k]` and began `w` earlier; a 5 ms wait reported at one 1 ms sample lies mostly
//! before that sample interval. [`Preemptions::waited`] places each interval's growth as one
//! block `[a - w, a]` ending in its interval and counts, for a window, the *least* overlap over
//! where in the interval the block may have ended (`a = t_(k-1)` or `a = t_k`: the overlap of a
//! sliding block is unimodal in `a`). So a window is credited only with waiting that certainly
//! fell inside it; the uncertainty is at most one sample interval per wait.
//!
//! The rule ([`Preemptions::excuses`]): a deadline miss is excused only when, during that
//! message's own life `[submit, delivery]`, the OS kept the watched threads waiting for a CPU
//! at least as long as the message was late (`delivery - deadline`). That implies a preemption
//! overlapping `[submit, deadline]`: a wait entirely after the deadline is always shorter than
//! the lateness, since the message was already late when it began. Misses the probe cannot
//! explain (including any past the capacity of a [`MissLog`]) are unexcused.
//!
//! Backlog ([`Preemptions::with_backlog`], off by default): a wait that ended before a
//! message was submitted can still make it late, through the work that queued up meanwhile.
//! Under the admitted model it can only do so within one busy period: a message released
//! after the resource has drained (no admitted work pending) owes nothing to what came before.
//! So the rule extends the message's window back to the earliest start `b` of a busy period
//! that the model allows to still be running at its submit `s`, and credits the certain waits
//! in `[b, delivery]`. The model is admission's, handed in as a [`BusyBound`] (the stages of the
//! path with their blocking `B` and sporadic loads `C, T, J`), never anything the dataplane
//! measures of itself. Work arriving in any window of length `δ` is at most
//! `B + Σ ⌈(δ + J)/T⌉·C ≤ burst + U·δ` with `burst = B + Σ C·(1 + J/T)`; a resource busy
//! throughout `[b, t]` has received at least `t − b` of work and waiting, so
//! `burst + W(b, t) ≥ (1 − U)·(t − b)` at every `t` of `[b, s]`, `W(b, t)` the waiting in
//! `[b, t]` (taken at its most: each block placed where it overlaps most). The earliest sample
//! time `b` meeting that at every sample time up to `s` is where the waits start to count
//! (resolution one sample interval). One wait of `w` alone gives the closed form
//! `s − b ≤ (burst + w)/(1 − U)` ([`BusyBound::after_one_wait`]). A message's path has several
//! resources (the sending core, the link, the receiving core); the bound treats it as one that
//! drains at the slowest stage's `1 − U` and starts each busy period with every stage's burst,
//! and counts a wait once. That is an engineering bound, not a proof for stages in tandem: the
//! bursts are summed (longer than any one stage's), while a stage downstream of a delayed one
//! receives that work later, which in the exact model adds `U_r·w` to its window and is not
//! counted (leaving it out only shortens the look-back: it takes credit away, never gives
//! it). Lateness is still
//! at most the waiting in the busy period (EDF's demand argument: with a stall of `Π` inside the
//! level-`d` busy window, `dbf + B + Π ≥ d + λ − t'` while `dbf + B ≤ d − t'`), so the credit
//! must still cover the lateness. The look-back is capped at [`MAX_LOOKBACK`] (a cap only takes
//! credit away). A wait too early to matter, whose busy period has ended by `s`, is not
//! credited; a wait after the deadline never covers the lateness, as above.
//!
//! Submitting threads: a message's life starts at its submit stamp, taken inside
//! `Sender::submit` just before the message is enqueued, so a preemption of the submitting
//! thread between the two delays it too. Such a thread is watched *apart*
//! ([`Watcher::watch_current_thread_apart`]): its waits do not enter the polling threads'
//! curve, and count for a miss only within that message's own submit call, which the
//! application bounds by timing its slow calls ([`SlowSubmits`]; the wait in them is still
//! the kernel's). [`Preemptions::verdict_submitted`] then credits a miss with the submitter's
//! wait from the stamp to the end of its call plus the polling threads' wait from where it
//! counts (the call's end, or with the backlog rule the busy period's start) to the delivery:
//! the first delays the message's release (a release jitter past the model's adds at most
//! itself to the lateness), the second its work. A submitter's waits need no backlog rule:
//! before the stamp they delay nothing the deadline counts, and a catch-up burst after one gets
//! logical arrivals `Imin` apart, within the admitted load.
//!
//! Host steal: in a virtual machine the host may take a whole virtual CPU away; no thread of
//! the guest then waits on a run queue, so `run_delay` does not see it. A *sentinel* thread
//! pinned to each CPU of the process, at the probe's priority and with a 1 ns timer slack,
//! sleeps [`SAMPLE_EVERY`] at a time and measures how much later than that it woke, less its
//! own run-queue wait in between and a [`WAKE_ALLOWANCE`] for the timer's own latency: what is
//! left is time the CPU was not there to run it. A wait found at a wake-up ended then, so the
//! probe places it like a run-queue wait (the sentinel publishes it within the few µs of its
//! two reads after waking). Each sample adds the steal found on the CPU a watched thread last
//! ran on (`/proc/PID/task/TID/stat`, field 39) to that thread's growth. The sentinels can only
//! find less than the host took (a steal that ends before a sentinel's timer is not seen), and
//! what they find is checked against the kernel's own steal account (`/proc/stat`, in 10 ms
//! ticks): if any CPU's sentinel found more than the kernel counted plus one tick (the error
//! of a difference of two truncated readings), no steal is credited at all
//! ([`Preemptions::steal`] says so). What else can make a sentinel late without a run-queue
//! wait is interrupt work on its CPU, which the same allowance and check bound: less than one
//! tick of it per CPU and run can pass for steal.
//!
//! What the kernel does not see is not measured: softirq work deferred to `ksoftirqd` is not a
//! watched thread's run-queue wait. A miss it causes is reported unexcused.

use dataplane::time::{monotonic_now, Nanos};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the probe samples: fine enough to place a wait within a message's window (tens of
/// ms in the veth tests), coarse enough that reading two or three small /proc files costs the
/// shared CPUs about 1 %.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// How much later than asked a sentinel may wake without the difference counting as host
/// steal: a timer's latency in a virtual machine (the hrtimer, an idle virtual CPU's exit) is
/// tens of µs; this leaves room, and what it swallows only takes credit away.
pub const WAKE_ALLOWANCE: Nanos = 200_000;

/// `/proc/stat`'s unit, USER_HZ (100 on every Linux ABI), in ns.
const USER_HZ_NS: Nanos = 10_000_000;

/// How long after the sentinels stop the kernel's steal account is read: past the next tick
/// of every CPU at HZ=100 or more.
const KERNEL_ACCOUNT_LAG: Duration = Duration::from_millis(20);

/// One watched thread.
struct Watched {
    name: String,
    file: File,
    /// Kept out of the combined curve (a submitting thread, see the module docs).
    apart: bool,
    /// Run-queue wait at the previous sample (None before the first).
    last: Option<Nanos>,
    /// This thread's cumulative wait at each sample since it was added.
    curve: Curve,
    /// `/proc/PID/task/TID/stat`: the CPU it last ran on.
    stat: File,
    /// The same wait with the host steal found on its CPU added.
    with_steal: Curve,
}

#[derive(Default)]
struct Record {
    curve: Curve,
    with_steal: Curve,
}

/// One CPU's sentinel: the steal it has found so far (ns, cumulative), published after each
/// wake-up.
struct Sentinel {
    cpu: usize,
    found: AtomicU64,
    /// The kernel's steal account of this CPU (ns) when the sentinel started, `None` when it
    /// could not start or read `/proc/stat` (then it finds nothing).
    kernel_at_start: Mutex<Option<Nanos>>,
}

struct Shared {
    stop: AtomicBool,
    watched: Mutex<Vec<Watched>>,
    record: Mutex<Record>,
    sentinels: Vec<Sentinel>,
}

/// The probe thread, its sentinels and what it has sampled so far.
pub struct PreemptionProbe {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    sentinels: Vec<JoinHandle<()>>,
}

/// The calling thread's kernel thread id.
pub fn current_tid() -> u32 {
    crate::sys::unix::thread_id()
}

/// Reads the run-queue wait (ns) from an open schedstat file.
fn read_wait(file: &File, buf: &mut [u8]) -> Option<Nanos> {
    let n = file.read_at(buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

impl PreemptionProbe {
    /// Starts the probe thread (SCHED_FIFO when allowed, else nice -20 when allowed, so that its
    /// own samples stay regular).
    pub fn start() -> Result<Self, String> {
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            watched: Mutex::new(Vec::new()),
            record: Mutex::new(Record::default()),
            sentinels: cpus
                .iter()
                .map(|c| Sentinel {
                    cpu: c.id,
                    found: AtomicU64::new(0),
                    kernel_at_start: Mutex::new(None),
                })
                .collect(),
        });
        let mut sentinels = Vec::new();
        for i in 0..shared.sentinels.len() {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("steal-sentinel{}", shared.sentinels[i].cpu))
                .spawn(move || sentinel_loop(&s, i))
                .map_err(|e| format!("cannot start a steal sentinel thread: {e}"))?;
            sentinels.push(t);
        }
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("preempt-probe".into())
            .spawn(move || probe_loop(&s))
            .map_err(|e| format!("cannot start the preemption probe thread: {e}"))?;
        Ok(Self {
            shared,
            thread: Some(thread),
            sentinels,
        })
    }

    /// A handle other threads use to add themselves to the watched threads.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            shared: self.shared.clone(),
        }
    }

    /// Watches thread `tid` of process `pid` under `name` (in reports).
    pub fn watch(&self, pid: u32, tid: u32, name: &str) -> Result<(), String> {
        self.watcher().watch(pid, tid, name)
    }

    /// Watches the calling thread, named after the thread's name.
    pub fn watch_current_thread(&self) -> Result<(), String> {
        self.watcher().watch_current_thread()
    }

    /// Watches thread `tid` of process `pid` apart, as a submitting thread named `name` (an
    /// application process's sending thread).
    pub fn watch_apart(&self, pid: u32, tid: u32, name: &str) -> Result<(), String> {
        self.watcher().watch_apart(pid, tid, name)
    }

    /// Watches the calling thread apart, as a submitting thread named `name`.
    pub fn watch_current_thread_apart(&self, name: &str) -> Result<(), String> {
        self.watcher().watch_current_thread_apart(name)
    }

    /// Watches every thread of process `pid` whose name (`comm`) starts with `prefix`; returns
    /// how many.
    pub fn watch_threads_of(&self, pid: u32, prefix: &str) -> Result<usize, String> {
        self.watcher().watch_threads_of(pid, prefix)
    }

    /// Stops the probe and returns what it measured.
    pub fn finish(mut self) -> Preemptions {
        self.stop_thread();
        // The kernel accounts steal at a CPU's next tick (4 ms at HZ=250): let the last of it
        // in before reading the account.
        std::thread::sleep(KERNEL_ACCOUNT_LAG);
        let steal: Vec<CpuSteal> = self
            .shared
            .sentinels
            .iter()
            .map(|s| {
                let start = *s.kernel_at_start.lock().unwrap_or_else(|e| e.into_inner());
                CpuSteal {
                    cpu: s.cpu,
                    found: s.found.load(Ordering::Acquire),
                    kernel: start.and_then(|a| Some(kernel_steal(s.cpu)?.saturating_sub(a))),
                }
            })
            .collect();
        // Credited only when every sentinel found no more than its CPU's kernel account.
        let credited = steal.iter().all(CpuSteal::within_kernel_account);
        let record =
            std::mem::take(&mut *self.shared.record.lock().unwrap_or_else(|e| e.into_inner()));
        let mut watched = self
            .shared
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let pick = |plain: Curve, with_steal: Curve| if credited { with_steal } else { plain };
        Preemptions {
            backlog: None,
            combined: pick(record.curve, record.with_steal),
            threads: watched
                .drain(..)
                .map(|w| ThreadWait {
                    name: w.name,
                    apart: w.apart,
                    curve: pick(w.curve, w.with_steal),
                })
                .collect(),
            steal: Steal {
                cpus: steal,
                credited,
            },
        }
    }

    fn stop_thread(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for t in self.sentinels.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PreemptionProbe {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Adds threads to a running [`PreemptionProbe`]'s watched threads (cheap to clone, `Send`).
#[derive(Clone)]
pub struct Watcher {
    shared: Arc<Shared>,
}

impl Watcher {
    fn add(&self, pid: u32, tid: u32, name: &str, apart: bool) -> Result<(), String> {
        let path = format!("/proc/{pid}/task/{tid}/schedstat");
        let file = File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        let mut buf = [0u8; 128];
        let first = read_wait(&file, &mut buf)
            .ok_or_else(|| format!("{path} does not hold a run-queue wait"))?;
        let stat_path = format!("/proc/{pid}/task/{tid}/stat");
        let stat = File::open(&stat_path).map_err(|e| format!("cannot open {stat_path}: {e}"))?;
        let mut w = self
            .shared
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.push(Watched {
            name: name.to_string(),
            file,
            apart,
            last: Some(first),
            curve: Curve::default(),
            stat,
            with_steal: Curve::default(),
        });
        Ok(())
    }

    /// Watches thread `tid` of process `pid` under `name` (in reports).
    pub fn watch(&self, pid: u32, tid: u32, name: &str) -> Result<(), String> {
        self.add(pid, tid, name, false)
    }

    /// Watches the calling thread, named after the thread's name.
    pub fn watch_current_thread(&self) -> Result<(), String> {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        self.watch(std::process::id(), current_tid(), &name)
    }

    /// Watches the calling thread apart from the polling threads, as a submitting thread
    /// named `name` (see the module docs).
    pub fn watch_current_thread_apart(&self, name: &str) -> Result<(), String> {
        self.add(std::process::id(), current_tid(), name, true)
    }

    /// Watches thread `tid` of process `pid` apart from the polling threads, as a submitting
    /// thread named `name`.
    pub fn watch_apart(&self, pid: u32, tid: u32, name: &str) -> Result<(), String> {
        self.add(pid, tid, name, true)
    }

    /// Watches every thread of process `pid` whose name (`comm`) starts with `prefix`; returns
    /// how many.
    pub fn watch_threads_of(&self, pid: u32, prefix: &str) -> Result<usize, String> {
        let dir = format!("/proc/{pid}/task");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).map_err(|e| format!("cannot list {dir}: {e}"))? {
            let Ok(e) = e else { continue };
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let comm = comm.trim_end();
            if comm.starts_with(prefix) && self.watch(pid, tid, &format!("{pid}/{comm}")).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The probe's SCHED_FIFO priority when allowed: above every CFS thread, so that its samples
/// stay 1 ms apart however loaded the machine is (it runs a few µs per sample, far below the
/// kernel's real-time throttling), and below the threads of real real-time applications.
const PROBE_FIFO_PRIORITY: i32 = 1;

fn probe_loop(s: &Shared) {
    if dataplane::core::set_realtime_priority(PROBE_FIFO_PRIORITY).is_err() {
        let _ = dataplane::core::raise_priority();
    }
    let mut buf = [0u8; 128];
    let mut stat_buf = [0u8; 512];
    let (mut cumulative, mut cumulative_with_steal): (Nanos, Nanos) = (0, 0);
    // Each sentinel's steal found at the previous sample.
    let mut steal_seen: Vec<Nanos> = vec![0; s.sentinels.len()];
    loop {
        let stop = s.stop.load(Ordering::Acquire);
        // A wait first seen by these reads ended after the previous reads and before these:
        // within (previous `before`, this `after`].
        let before = monotonic_now();
        // The steal each CPU's sentinel found since the previous sample.
        let stolen: Vec<(usize, Nanos)> = s
            .sentinels
            .iter()
            .zip(steal_seen.iter_mut())
            .map(|(sentinel, seen)| {
                let now = sentinel.found.load(Ordering::Acquire);
                let grew = now.saturating_sub(*seen);
                *seen = now;
                (sentinel.cpu, grew)
            })
            .collect();
        let (mut largest, mut largest_with_steal) = (0, 0);
        {
            let mut watched = s.watched.lock().unwrap_or_else(|e| e.into_inner());
            let after_reads = |w: &mut Watched, buf: &mut [u8], stat_buf: &mut [u8]| {
                // A thread that exited keeps what it had: its file no longer reads.
                let v = read_wait(&w.file, buf)?;
                let grew = w.last.map_or(0, |l| v.saturating_sub(l));
                w.last = Some(v);
                let cpu = read_cpu(&w.stat, stat_buf);
                let steal = cpu.map_or(0, |c| {
                    stolen.iter().find(|(s, _)| *s == c).map_or(0, |(_, g)| *g)
                });
                Some((grew, steal))
            };
            let grown: Vec<Option<(Nanos, Nanos)>> = watched
                .iter_mut()
                .map(|w| after_reads(w, &mut buf, &mut stat_buf))
                .collect();
            let after = monotonic_now();
            for (w, g) in watched.iter_mut().zip(grown) {
                let (grew, steal) = g.unwrap_or((0, 0));
                let c = w.curve.last_cumulative() + grew;
                w.curve.push(before, after, c);
                let c = w.with_steal.last_cumulative() + grew + steal;
                w.with_steal.push(before, after, c);
                if !w.apart {
                    largest = largest.max(grew);
                    largest_with_steal = largest_with_steal.max(grew + steal);
                }
            }
            cumulative += largest;
            cumulative_with_steal += largest_with_steal;
            let mut r = s.record.lock().unwrap_or_else(|e| e.into_inner());
            r.curve.push(before, after, cumulative);
            r.with_steal.push(before, after, cumulative_with_steal);
        }
        if stop {
            return;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// A sentinel: pinned to its CPU, wakes every [`SAMPLE_EVERY`] and publishes how much later
/// than that it woke, less its own run-queue wait and [`WAKE_ALLOWANCE`] (module docs, "Host
/// steal"). It finds nothing when it cannot be pinned or cannot read the kernel's account.
fn sentinel_loop(s: &Shared, i: usize) {
    let me = &s.sentinels[i];
    if !core_affinity::set_for_current(core_affinity::CoreId { id: me.cpu }) {
        return;
    }
    if dataplane::core::set_realtime_priority(PROBE_FIFO_PRIORITY).is_err() {
        let _ = dataplane::core::raise_priority();
    }
    // A 50 µs default slack would be 50 µs of every wake-up the allowance must cover.
    let _ = crate::sys::unix::set_timer_slack(1);
    let Ok(own) = File::open("/proc/thread-self/schedstat") else {
        return;
    };
    let Some(kernel) = kernel_steal(me.cpu) else {
        return;
    };
    *me.kernel_at_start.lock().unwrap_or_else(|e| e.into_inner()) = Some(kernel);
    let mut buf = [0u8; 128];
    let asked = SAMPLE_EVERY.as_nanos() as Nanos;
    let (mut found, mut t0, mut r0) = (0, monotonic_now(), read_wait(&own, &mut buf));
    while !s.stop.load(Ordering::Acquire) {
        std::thread::sleep(SAMPLE_EVERY);
        let t1 = monotonic_now();
        let r1 = read_wait(&own, &mut buf);
        let queued = match (r0, r1) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            // Its own wait unknown: the whole lateness might be that, so nothing is found.
            _ => Nanos::MAX,
        };
        let late = t1.saturating_sub(t0).saturating_sub(asked);
        found += late.saturating_sub(queued).saturating_sub(WAKE_ALLOWANCE);
        me.found.store(found, Ordering::Release);
        (t0, r0) = (t1, r1);
    }
}

/// The kernel's steal account of `cpu` (`/proc/stat`, its eighth value), ns.
fn kernel_steal(cpu: usize) -> Option<Nanos> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_kernel_steal(&text, cpu)
}

fn parse_kernel_steal(text: &str, cpu: usize) -> Option<Nanos> {
    let label = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let ticks: Nanos = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks * USER_HZ_NS)
}

/// The CPU a thread last ran on, from an open `/proc/PID/task/TID/stat` (field 39; the
/// fields after the command name, which may hold spaces, start at field 3).
fn read_cpu(file: &File, buf: &mut [u8]) -> Option<usize> {
    let n = file.read_at(buf, 0).ok()?;
    parse_cpu(std::str::from_utf8(&buf[..n]).ok()?)
}

fn parse_cpu(stat: &str) -> Option<usize> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

/// One CPU's host steal over a probe's life: what its sentinel found and what the kernel
/// accounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSteal {
    /// The CPU.
    pub cpu: usize,
    /// What its sentinel found, ns.
    pub found: Nanos,
    /// The kernel's steal account over the same time, ns (10 ms ticks); `None` if unread.
    pub kernel: Option<Nanos>,
}

impl CpuSteal {
    /// The sentinel found no more than the kernel accounted, give or take one tick: the
    /// difference of two readings truncated to ticks is less than one tick from the truth.
    pub fn within_kernel_account(&self) -> bool {
        match self.kernel {
            Some(k) => self.found <= k + USER_HZ_NS,
            None => self.found == 0,
        }
    }
}

/// The host steal of every CPU of the process, and whether it was credited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Steal {
    /// Per CPU.
    pub cpus: Vec<CpuSteal>,
    /// Added to the watched threads' waits (every sentinel within the kernel's account).
    pub credited: bool,
}

/// A cumulative run-queue wait sampled over time: at sample `k` the reads began at `starts[k]`
/// and ended by `times[k]`, and the wait had reached `cumulative[k]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Curve {
    starts: Vec<Nanos>,
    times: Vec<Nanos>,
    cumulative: Vec<Nanos>,
    /// The largest growth between two samples (bounds how far back a wait may reach).
    longest_block: Nanos,
}

impl Curve {
    fn push(&mut self, start: Nanos, time: Nanos, cumulative: Nanos) {
        let grew = cumulative.saturating_sub(self.last_cumulative());
        if !self.cumulative.is_empty() {
            self.longest_block = self.longest_block.max(grew);
        }
        self.starts.push(start);
        self.times.push(time);
        self.cumulative.push(cumulative);
    }

    fn last_cumulative(&self) -> Nanos {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Builds a curve from `(time, cumulative wait)` samples (reads taking no time).
    pub fn from_samples(samples: &[(Nanos, Nanos)]) -> Self {
        let mut c = Self::default();
        for &(t, w) in samples {
            c.push(t, t, w);
        }
        c
    }

    /// How long the thread(s) certainly waited for a CPU during `[from, to]`: each sample
    /// interval's wait placed as one block ending within the interval, at the end that
    /// overlaps the window least (see the module docs).
    pub fn waited(&self, from: Nanos, to: Nanos) -> Nanos {
        if to <= from || self.times.len() < 2 {
            return 0;
        }
        let overlap = |a: Nanos, w: Nanos| {
            let (s, e) = (a.saturating_sub(w).max(from), a.min(to));
            e.saturating_sub(s)
        };
        let mut sum = 0;
        // Blocks ending before `from` cannot overlap; the first interval that can ends at or
        // after it. Past `to + longest block` none can.
        let first = self.times.partition_point(|&t| t < from).max(1);
        for k in first..self.times.len() {
            let (t0, t1) = (self.starts[k - 1], self.times[k]);
            if t0.saturating_sub(self.longest_block) > to {
                break;
            }
            let w = self.cumulative[k] - self.cumulative[k - 1];
            if w > 0 {
                sum += overlap(t0, w).min(overlap(t1, w));
            }
        }
        sum
    }

    /// The most of block `k` (the growth reported at sample `k`, `k ≥ 1`, which ended in
    /// `[starts[k-1], times[k]]`) that can lie in `[from, to]`:
    /// `min(w, to − from, times[k] − from, to − (starts[k-1] − w))`.
    fn most_overlap(&self, k: usize, from: Nanos, to: Nanos) -> Nanos {
        let w = self.cumulative[k] - self.cumulative[k - 1];
        let earliest = self.starts[k - 1].saturating_sub(w);
        w.min(to.saturating_sub(from))
            .min(self.times[k].saturating_sub(from))
            .min(to.saturating_sub(earliest))
    }

    /// The most the thread(s) may have waited during `[from, to]`: each wait placed where it
    /// overlaps the window most. An upper bound for diagnosis (could preemption be the cause
    /// at all?), never an excuse: that is [`Curve::waited`], what certainly fell inside.
    pub fn may_have_waited(&self, from: Nanos, to: Nanos) -> Nanos {
        if to <= from || self.times.len() < 2 {
            return 0;
        }
        let first = self.times.partition_point(|&t| t < from).max(1);
        (first..self.times.len())
            .take_while(|&k| self.starts[k - 1].saturating_sub(self.longest_block) <= to)
            .map(|k| self.most_overlap(k, from, to))
            .sum()
    }

    /// Total wait measured.
    pub fn total(&self) -> Nanos {
        self.last_cumulative() - self.cumulative.first().copied().unwrap_or(0)
    }

    /// The largest wait within one sample interval.
    pub fn longest(&self) -> Nanos {
        self.longest_block
    }

    /// The number of samples taken.
    pub fn samples(&self) -> usize {
        self.times.len()
    }
}

/// One watched thread's run-queue wait over the probe's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadWait {
    /// The thread's name.
    pub name: String,
    /// Watched apart (a submitting thread): not part of the combined curve.
    pub apart: bool,
    /// Its wait over time.
    pub curve: Curve,
}

/// What a probe measured: the watched threads' OS preemption over time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preemptions {
    /// The polling threads' combined wait (see the module docs).
    combined: Curve,
    /// Per watched thread.
    pub threads: Vec<ThreadWait>,
    /// The admitted load on the messages' path, for the backlog rule (none: a message's own
    /// life only).
    backlog: Option<BusyBound>,
    /// The host steal found on each CPU (in the curves when credited).
    pub steal: Steal,
}

/// Sporadic work on one resource of a message's path, as admission charges it: at most one
/// job of `cost` per `period`, released up to `jitter` after its nominal arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Worst-case cost of one job, ns.
    pub cost: Nanos,
    /// Least separation of nominal arrivals (`Imin`, an interference task's period), ns.
    pub period: Nanos,
    /// Release jitter, ns.
    pub jitter: Nanos,
}

/// One resource on the messages' path (a polling core, a link) as admission models it: the
/// blocking at the start of a busy window and its sporadic loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// For reports.
    pub name: String,
    /// Work that may run ahead of everything due at the start of a busy window, ns.
    pub blocking: Nanos,
    /// The admitted channels' and the loop's own sporadic work.
    pub loads: Vec<Load>,
}

impl Stage {
    /// Utilisation `Σ C/T`.
    pub fn utilisation(&self) -> f64 {
        self.loads
            .iter()
            .map(|l| l.cost as f64 / l.period.max(1) as f64)
            .sum()
    }

    /// The constant of the linear bound on work arriving in a window of length `δ`:
    /// `B + Σ ⌈(δ + J)/T⌉·C ≤ B + Σ C·(1 + J/T) + U·δ` (module docs, "Backlog").
    pub fn burst(&self) -> f64 {
        self.blocking as f64
            + self
                .loads
                .iter()
                .map(|l| l.cost as f64 * (1.0 + l.jitter as f64 / l.period.max(1) as f64))
                .sum::<f64>()
    }
}

/// The longest busy period the admitted load on a path can build up from OS waits of the
/// polling threads (module docs, "Backlog"): the path as one virtual resource that drains at
/// `1 − U` (the most loaded stage's spare capacity), starts a busy period with every stage's
/// burst, and is held up by a wait for as long as it lasts.
#[derive(Clone, Debug, PartialEq)]
pub struct BusyBound {
    /// The stages, for reports.
    pub stages: Vec<Stage>,
    /// `1 − max U`.
    drain: f64,
    /// `Σ` of the stages' bursts, ns.
    burst: f64,
}

impl BusyBound {
    /// The bound for a path through `stages`; `None` when a stage's utilisation is 1 or more
    /// (its busy period is unbounded: admission never admits such a load) or there are none.
    pub fn new(stages: Vec<Stage>) -> Option<Self> {
        let u = stages.iter().map(Stage::utilisation).fold(0.0, f64::max);
        if stages.is_empty() || u >= 1.0 || u.is_nan() {
            return None;
        }
        Some(Self {
            drain: 1.0 - u,
            burst: stages.iter().map(Stage::burst).sum(),
            stages,
        })
    }

    /// The longest busy period after one wait of `w` (no other wait): `(Σ burst + w) / (1 −
    /// U)`, rounded up.
    pub fn after_one_wait(&self, w: Nanos) -> Nanos {
        ((self.burst + w as f64) / self.drain).ceil() as Nanos
    }

    /// The earliest time `b ≤ s` a busy period of the path that is still running at `s` can
    /// have begun, given the waits in `curve` placed where they lengthen it most: the earliest
    /// sample time `b` at most [`MAX_LOOKBACK`] before `s` with
    /// `burst + W(b, t) ≥ (1 − U)·(t − b)` at every sample time `t` in `[b, s]` and at `s`,
    /// `W(b, t)` the most waiting that can lie in `[b, t]`; `s` itself when none.
    pub fn busy_since(&self, curve: &Curve, s: Nanos) -> Nanos {
        let n = curve.times.len();
        let last = curve.times.partition_point(|&t| t <= s);
        let first = curve
            .times
            .partition_point(|&t| t < s.saturating_sub(MAX_LOOKBACK));
        if n < 2 || last == 0 {
            return s;
        }
        let most = |k: usize, b: Nanos, t: Nanos| curve.most_overlap(k, b, t);
        // Blocks reported after sample i that may still lie before times[i]: at most the
        // longest block back.
        let reach = |i: usize| {
            let until = curve.times[i].saturating_add(curve.longest_block);
            (i + 1..n).take_while(move |&k| curve.starts[k - 1] <= until)
        };
        let busy_at = |j: usize, t: Nanos, fixed: Nanos, i: usize| -> bool {
            let b = curve.times[j];
            let pending: Nanos = reach(i).map(|k| most(k, b, t)).sum();
            self.burst + (fixed + pending) as f64 >= self.drain * t.saturating_sub(b) as f64
        };
        let mut since = s;
        for j in (first..last).rev() {
            let b = curve.times[j];
            // Waits of blocks reported by sample i, which can lie no later than times[i].
            let mut fixed: Nanos = 0;
            let mut busy = true;
            for i in j..last {
                if i > j {
                    fixed += most(i, b, curve.times[i]);
                }
                if !busy_at(j, curve.times[i], fixed, i) {
                    busy = false;
                    break;
                }
            }
            if busy && busy_at(j, s, fixed, last - 1) {
                since = b;
            }
        }
        since
    }
}

/// How far back from a message's submit the backlog rule looks at most: a cap on the credit
/// (never a reason to give more), so that judging a miss costs a bounded scan.
pub const MAX_LOOKBACK: Nanos = 50_000_000;

/// A deadline miss: one message's times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Miss {
    /// Submit time at the sender.
    pub submit: Nanos,
    /// Absolute end-to-end deadline.
    pub deadline: Nanos,
    /// Delivery time (after `deadline`).
    pub delivered: Nanos,
}

impl Miss {
    /// How late the message was.
    pub fn lateness(&self) -> Nanos {
        self.delivered.saturating_sub(self.deadline)
    }
}

/// The misses of one channel, kept up to a capacity fixed in advance (recording never
/// allocates, so a polling thread may record); those past it are counted and unexcused.
#[derive(Clone, Debug, Default)]
pub struct MissLog {
    /// The misses recorded.
    pub misses: Vec<Miss>,
    /// Misses not recorded (the log was full).
    pub unrecorded: u64,
}

impl MissLog {
    /// A log holding up to `capacity` misses.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            misses: Vec::with_capacity(capacity),
            unrecorded: 0,
        }
    }

    /// Records a delivery if it missed its deadline (`deadline` 0: none).
    #[inline]
    pub fn record(&mut self, submit: Nanos, deadline: Nanos, delivered: Nanos) {
        if deadline == 0 || delivered <= deadline {
            return;
        }
        if self.misses.len() < self.misses.capacity() {
            self.misses.push(Miss {
                submit,
                deadline,
                delivered,
            });
        } else {
            self.unrecorded += 1;
        }
    }

    /// All misses, recorded or not.
    pub fn count(&self) -> u64 {
        self.misses.len() as u64 + self.unrecorded
    }
}

/// A submit call slower than this is recorded by [`SlowSubmits`]: below it a preemption inside
/// the call could not make a message late by more than this, which no bound here is close to.
pub const SLOW_SUBMIT: Nanos = 50_000;

/// The submit calls of one channel that took at least [`SLOW_SUBMIT`], `[start, end]` as the
/// submitting thread timed them, in order; up to a capacity fixed in advance (calls past it
/// are not recorded, so a miss in one gets no credit for the submitter's wait).
#[derive(Clone, Debug, Default)]
pub struct SlowSubmits {
    calls: Vec<(Nanos, Nanos)>,
}

impl SlowSubmits {
    /// Holds up to `capacity` slow calls.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            calls: Vec::with_capacity(capacity),
        }
    }

    /// Records the call `[start, end]` if it was slow (calls come in order, one thread).
    #[inline]
    pub fn record(&mut self, start: Nanos, end: Nanos) {
        if end.saturating_sub(start) >= SLOW_SUBMIT && self.calls.len() < self.calls.capacity() {
            self.calls.push((start, end));
        }
    }

    /// The calls recorded, `(start, end)` in order (to hand them to another process).
    pub fn calls(&self) -> &[(Nanos, Nanos)] {
        &self.calls
    }

    /// The recorded call during which a message was stamped at `t`.
    pub fn containing(&self, t: Nanos) -> Option<(Nanos, Nanos)> {
        let i = self.calls.partition_point(|c| c.0 <= t);
        let c = *self.calls.get(i.checked_sub(1)?)?;
        (t <= c.1).then_some(c)
    }

    /// Calls recorded.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// No call recorded.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// How a channel's misses divide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissVerdict {
    /// Misses the OS preemption of the watched threads explains.
    pub excused: u64,
    /// Misses it does not (the dataplane's, or the machine's in ways not measured).
    pub unexcused: u64,
    /// The largest lateness among the unexcused, ns.
    pub worst_unexcused: Nanos,
    /// The largest lateness among the excused, ns.
    pub worst_excused: Nanos,
    /// Of the excused, those only the backlog rule excuses (the waits in the message's own
    /// life do not cover its lateness).
    pub by_backlog: u64,
}

impl MissVerdict {
    /// Counts `m`: excused or not, and whether its own life's waits alone excused it.
    fn add(&mut self, m: &Miss, excused: bool, own: bool) {
        if excused {
            self.excused += 1;
            self.by_backlog += u64::from(!own);
            self.worst_excused = self.worst_excused.max(m.lateness());
        } else {
            self.unexcused += 1;
            self.worst_unexcused = self.worst_unexcused.max(m.lateness());
        }
    }
}

impl std::fmt::Display for MissVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} misses excused by measured OS preemption ({} through a backlog; largest lateness \
             {:.3} ms), {} unexcused (largest lateness {:.3} ms)",
            self.excused,
            self.by_backlog,
            self.worst_excused as f64 / 1e6,
            self.unexcused,
            self.worst_unexcused as f64 / 1e6
        )
    }
}

impl Preemptions {
    /// Builds a record from samples of the combined curve (for tests of the rule):
    /// `(time, cumulative preemption)`.
    pub fn from_samples(samples: &[(Nanos, Nanos)]) -> Self {
        Self {
            combined: Curve::from_samples(samples),
            threads: Vec::new(),
            backlog: None,
            steal: Steal::default(),
        }
    }

    /// Judges misses with the backlog rule for a path whose admitted load is `bound`
    /// (module docs, "Backlog"): a wait counts for a miss from the earliest time a busy
    /// period of the path still running at its submit can have begun.
    pub fn with_backlog(mut self, bound: BusyBound) -> Self {
        self.backlog = Some(bound);
        self
    }

    /// Where a miss's waits start to count: its submit, or with the backlog rule the start of
    /// the longest busy period that can still run at its submit.
    pub fn counted_from(&self, m: &Miss) -> Nanos {
        match &self.backlog {
            Some(b) => b.busy_since(&self.combined, m.submit),
            None => m.submit,
        }
    }

    /// Adds a thread watched apart with its samples (for tests of the rule).
    pub fn with_submitter(mut self, name: &str, samples: &[(Nanos, Nanos)]) -> Self {
        self.threads.push(ThreadWait {
            name: name.into(),
            apart: true,
            curve: Curve::from_samples(samples),
        });
        self
    }

    /// How long the polling threads certainly waited for a CPU during `[from, to]` (see the
    /// module docs).
    pub fn waited(&self, from: Nanos, to: Nanos) -> Nanos {
        self.combined.waited(from, to)
    }

    /// The most the polling threads may have waited during `[from, to]`
    /// ([`Curve::may_have_waited`]): for diagnosis only, never an excuse.
    pub fn may_have_waited(&self, from: Nanos, to: Nanos) -> Nanos {
        self.combined.may_have_waited(from, to)
    }

    /// The curve of the thread named `name`.
    pub fn thread(&self, name: &str) -> Option<&Curve> {
        self.threads
            .iter()
            .find(|t| t.name == name)
            .map(|t| &t.curve)
    }

    /// Whether the measured preemption of the polling threads explains `m` (the rule in the
    /// module docs).
    pub fn excuses(&self, m: &Miss) -> bool {
        self.excuses_from(m, self.counted_from(m))
    }

    /// Whether the polling threads' waits in `[from, delivery]` cover `m`'s lateness.
    fn excuses_from(&self, m: &Miss, from: Nanos) -> bool {
        m.lateness() > 0 && self.waited(from, m.delivered) >= m.lateness()
    }

    /// Whether the measured preemption explains `m`, counting the submitting thread's wait
    /// within the message's own submit call `call` (from its stamp to the call's end) and the
    /// polling threads' wait from where it counts ([`Preemptions::counted_from`]) to the
    /// delivery.
    pub fn excuses_submitted(
        &self,
        m: &Miss,
        submitter: Option<&Curve>,
        call: Option<(Nanos, Nanos)>,
    ) -> bool {
        let backlog = self.backlog.as_ref().map(|_| self.counted_from(m));
        self.excuses_submitted_from(m, submitter, call, backlog)
    }

    /// [`Preemptions::excuses_submitted`] with the polling threads' waits counted from
    /// `backlog` (the backlog rule), or (`None`, a message's own life) from the end of its
    /// submit call, when the message was released.
    fn excuses_submitted_from(
        &self,
        m: &Miss,
        submitter: Option<&Curve>,
        call: Option<(Nanos, Nanos)>,
        backlog: Option<Nanos>,
    ) -> bool {
        match (submitter, call) {
            (Some(sub), Some((_, end))) if end > m.submit && end < m.delivered => {
                // In series: the submitter's wait inside its call delays the message's
                // release (a release jitter past the model's, which adds at most itself to
                // the lateness), the polling threads' waits delay its work: from its release
                // in its own life, from the busy period's start with a backlog.
                m.lateness() > 0
                    && sub.waited(m.submit, end) + self.waited(backlog.unwrap_or(end), m.delivered)
                        >= m.lateness()
            }
            _ => self.excuses_from(m, backlog.unwrap_or(m.submit)),
        }
    }

    /// What the rule saw of `m`, for a report: how late it was, where the polling threads'
    /// waits started to count, and how much of them certainly fell in its own life and from
    /// there.
    pub fn explain(&self, m: &Miss) -> String {
        let from = self.counted_from(m);
        let mut l = format!(
            "submitted at {}, {:.3} ms late; polling threads waited {:.3} ms in its life, {:.3} \
             ms from {:.3} ms before its submit (the busy period's start)",
            m.submit,
            m.lateness() as f64 / 1e6,
            self.waited(m.submit, m.delivered) as f64 / 1e6,
            self.waited(from, m.delivered) as f64 / 1e6,
            m.submit.saturating_sub(from) as f64 / 1e6
        );
        for t in &self.threads {
            l.push_str(&format!(
                "; {} {:.3} ms",
                t.name,
                t.curve.waited(from, m.delivered) as f64 / 1e6
            ));
        }
        l
    }

    /// Divides a channel's misses into excused and unexcused.
    pub fn verdict(&self, log: &MissLog) -> MissVerdict {
        let mut v = MissVerdict {
            unexcused: log.unrecorded,
            ..MissVerdict::default()
        };
        for m in &log.misses {
            v.add(m, self.excuses(m), self.excuses_from(m, m.submit));
        }
        v
    }

    /// Divides a channel's misses, with its slow submit calls made on the thread watched apart
    /// as `submitter` ([`Preemptions::excuses_submitted`]).
    pub fn verdict_submitted(
        &self,
        log: &MissLog,
        submitter: &str,
        slow: &SlowSubmits,
    ) -> MissVerdict {
        let sub = self.thread(submitter);
        let mut v = MissVerdict {
            unexcused: log.unrecorded,
            ..MissVerdict::default()
        };
        for m in &log.misses {
            let call = slow.containing(m.submit);
            v.add(
                m,
                self.excuses_submitted(m, sub, call),
                self.excuses_submitted_from(m, sub, call, None),
            );
        }
        v
    }

    /// Total preemption of the polling threads measured.
    pub fn total(&self) -> Nanos {
        self.combined.total()
    }

    /// The number of samples taken.
    pub fn samples(&self) -> usize {
        self.combined.samples()
    }
}

impl std::fmt::Display for Preemptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OS preemption (run-queue wait, /proc schedstat, {} samples): {:.3} ms of the polling \
             threads",
            self.samples(),
            self.total() as f64 / 1e6
        )?;
        if let Some(b) = &self.backlog {
            write!(
                f,
                "; waits count from the earliest start of a busy period the admitted load can \
                 keep running (spare capacity {:.2}, burst {:.3} ms)",
                b.drain,
                b.burst / 1e6
            )?;
        }
        if !self.steal.cpus.is_empty() {
            let cpus: Vec<String> = self
                .steal
                .cpus
                .iter()
                .map(|c| {
                    format!(
                        "cpu{} {:.3} ms (the kernel's account {})",
                        c.cpu,
                        c.found as f64 / 1e6,
                        c.kernel
                            .map_or("unread".into(), |k| format!("{:.0} ms", k as f64 / 1e6))
                    )
                })
                .collect();
            write!(
                f,
                "; host steal found by the sentinels: {} ({})",
                cpus.join(", "),
                if self.steal.credited {
                    "in the waits"
                } else {
                    "NOT in the waits: a sentinel found more than the kernel accounted"
                }
            )?;
        }
        for t in &self.threads {
            write!(
                f,
                "; {}{} waited {:.3} ms (at most {:.3} ms in one {} ms sample)",
                t.name,
                if t.apart { " (submitting)" } else { "" },
                t.curve.total() as f64 / 1e6,
                t.curve.longest() as f64 / 1e6,
                SAMPLE_EVERY.as_millis()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn the_kernels_steal_and_a_threads_cpu_are_read_from_proc() {
        let stat = "cpu  3306063 652871 814043 11204065 47382 0 16370 323722 0 0\n\
                    cpu0 1653334 328512 367726 5640778 26475 0 6428 159308 0 0\n\
                    cpu1 1652729 324358 446317 5563286 20907 0 9941 164413 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_kernel_steal(stat, 0), Some(159_308 * USER_HZ_NS));
        assert_eq!(parse_kernel_steal(stat, 1), Some(164_413 * USER_HZ_NS));
        assert_eq!(parse_kernel_steal(stat, 2), None);
        // A command name with spaces and parentheses; field 39 is the CPU (here 1).
        let task = "4242 (rtchan core) x) S 1 4242 4242 0 -1 4194368 100 0 0 0 5 6 0 0 20 0 3 0 \
                    12345 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_cpu(task), Some(1));
        assert_eq!(parse_cpu("4242 (short"), None);
        // This thread's own line reads.
        let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        assert!(parse_cpu(&own).is_some(), "{own}");
    }

    #[test]
    fn steal_past_the_kernels_account_is_not_credited() {
        let c = |found, kernel| CpuSteal {
            cpu: 0,
            found,
            kernel,
        };
        assert!(c(5 * MS, Some(0)).within_kernel_account());
        assert!(c(10 * MS, Some(0)).within_kernel_account());
        assert!(!c(11 * MS, Some(0)).within_kernel_account());
        assert!(c(110 * MS, Some(100 * MS)).within_kernel_account());
        assert!(!c(111 * MS, Some(100 * MS)).within_kernel_account());
        assert!(c(0, None).within_kernel_account());
        assert!(!c(1, None).within_kernel_account());
    }

    #[test]
    fn a_probe_measures_its_sentinels_cpus() {
        let probe = PreemptionProbe::start().unwrap();
        probe.watch_current_thread().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let p = probe.finish();
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        assert_eq!(p.steal.cpus.len(), cpus.len());
        for c in &p.steal.cpus {
            assert!(c.kernel.is_some(), "cpu{}: /proc/stat unread", c.cpu);
        }
        assert!(p.samples() > 5);
    }

    fn miss(submit: Nanos, deadline: Nanos, delivered: Nanos) -> Miss {
        Miss {
            submit,
            deadline,
            delivered,
        }
    }

    #[test]
    fn a_wait_is_placed_before_the_sample_that_reports_it() {
        // 4 ms of waiting reported between the samples at 10 and 12 ms: it ended in (10, 12]
        // and began 4 ms earlier, so it lies within [6, 12].
        let p = Preemptions::from_samples(&[
            (0, 0),
            (10 * MS, 0),
            (12 * MS, 4 * MS),
            (20 * MS, 4 * MS),
        ]);
        assert_eq!(p.waited(0, 30 * MS), 4 * MS);
        assert_eq!(p.waited(6 * MS, 12 * MS), 4 * MS);
        // Ending at 10 it covers [6, 10]; at 12, [8, 12]: at least 2 ms of [0, 10] is certain.
        assert_eq!(p.waited(0, 10 * MS), 2 * MS);
        // Neither placement reaches into [12, 20], nor is [11, 12] certain.
        assert_eq!(p.waited(12 * MS, 20 * MS), 0);
        assert_eq!(p.waited(11 * MS, 12 * MS), 0);
        assert_eq!(p.waited(0, 6 * MS), 0);
        assert_eq!(p.waited(5 * MS, 5 * MS), 0);
    }

    #[test]
    fn may_have_waited_places_each_wait_where_it_overlaps_most() {
        // The 4 ms wait reported at 12 ms lies somewhere in [6, 12] (see above).
        let p = Preemptions::from_samples(&[
            (0, 0),
            (10 * MS, 0),
            (12 * MS, 4 * MS),
            (20 * MS, 4 * MS),
        ]);
        // Any 1 ms window inside [6, 12] may have been waited through whole, though none is
        // certain.
        assert_eq!(p.may_have_waited(11 * MS, 12 * MS), MS);
        assert_eq!(p.waited(11 * MS, 12 * MS), 0);
        assert_eq!(p.may_have_waited(6 * MS, 7 * MS), MS);
        // At most the wait itself, and nothing outside where it can lie.
        assert_eq!(p.may_have_waited(0, 30 * MS), 4 * MS);
        assert_eq!(p.may_have_waited(0, 7 * MS), MS);
        assert_eq!(p.may_have_waited(12 * MS, 20 * MS), 0);
        assert_eq!(p.may_have_waited(0, 6 * MS), 0);
        // Never less than what is certain.
        for (a, b) in [(0, 10), (6, 12), (8, 11), (0, 30)] {
            assert!(p.may_have_waited(a * MS, b * MS) >= p.waited(a * MS, b * MS));
        }
    }

    #[test]
    fn a_long_wait_reported_in_one_sample_covers_the_messages_it_delayed() {
        // Samples every ms; a 5 ms wait shows at 11 ms (the thread got its CPU back in
        // (10, 11]): a message that lived [6, 9.9] ms waited through it.
        let mut samples: Vec<(Nanos, Nanos)> = (0..=10).map(|i| (i * MS, 0)).collect();
        samples.extend((11..=20).map(|i| (i * MS, 5 * MS)));
        let p = Preemptions::from_samples(&samples);
        assert_eq!(p.waited(6 * MS, 9 * MS + 900_000), 3 * MS + 900_000);
        assert!(p.excuses(&miss(6 * MS, 8 * MS, 9 * MS + 900_000)));
        // Not one that lived entirely before 5 ms.
        assert_eq!(p.waited(0, 5 * MS), 0);
    }

    #[test]
    fn a_miss_is_excused_only_by_preemption_in_its_own_life_as_long_as_its_lateness() {
        let p = Preemptions::from_samples(&[
            (0, 0),
            (10 * MS, 0),
            (12 * MS, 4 * MS),
            (100 * MS, 4 * MS),
        ]);
        // Preempted 4 ms inside the window, 3 ms late: excused.
        assert!(p.excuses(&miss(5 * MS, 15 * MS, 18 * MS)));
        // 5 ms late: more than the preemption.
        assert!(!p.excuses(&miss(5 * MS, 15 * MS, 20 * MS)));
        // The preemption was before the message existed.
        assert!(!p.excuses(&miss(30 * MS, 40 * MS, 41 * MS)));
        // After its delivery.
        assert!(!p.excuses(&miss(MS, 5 * MS, 6 * MS)));
    }

    #[test]
    fn the_verdict_counts_unrecorded_misses_as_unexcused() {
        // A 5 ms wait ending in (10, 11]: within [5, 10] at the earliest, [6, 11] at the latest.
        let p = Preemptions::from_samples(&[(0, 0), (10 * MS, 0), (11 * MS, 5 * MS)]);
        let mut log = MissLog::with_capacity(2);
        log.record(4 * MS, 8 * MS, 9 * MS); // 1 ms late, at least 3 ms waited → excused
        log.record(4 * MS, 8 * MS, 14 * MS); // 6 ms late, 5 ms waited: unexcused
        log.record(4 * MS, 8 * MS, 9 * MS); // past capacity
        log.record(0, 4 * MS, 3 * MS); // not a miss
        log.record(0, 0, 3 * MS); // best-effort
        assert_eq!(log.count(), 3);
        let v = p.verdict(&log);
        assert_eq!((v.excused, v.unexcused), (1, 2));
        assert_eq!(v.worst_unexcused, 6 * MS);
        assert_eq!(v.worst_excused, MS);
    }

    #[test]
    fn a_submitter_wait_counts_only_within_the_message_s_own_submit_call() {
        // The polling threads never waited; the submitting thread waited 5 ms, reported at
        // 11 ms (so within [5, 11]).
        let flat: Vec<(Nanos, Nanos)> = (0..=30).map(|i| (i * MS, 0)).collect();
        let sub: Vec<(Nanos, Nanos)> = (0..=30)
            .map(|i| (i * MS, if i >= 11 { 5 * MS } else { 0 }))
            .collect();
        let p = Preemptions::from_samples(&flat).with_submitter("app", &sub);
        let mut slow = SlowSubmits::with_capacity(4);
        slow.record(MS, MS + 10); // fast: not recorded
        slow.record(4 * MS, 12 * MS); // the preempted call
        slow.record(20 * MS, 20 * MS + SLOW_SUBMIT);
        assert_eq!(slow.len(), 2);
        assert_eq!(slow.containing(6 * MS), Some((4 * MS, 12 * MS)));
        assert_eq!(slow.containing(13 * MS), None);
        let mut log = MissLog::with_capacity(4);
        // Stamped at 4.5 ms inside the preempted call, 3 ms late: at least 4 ms waited in
        // [4.5, 12] (the block lies within [5, 11]): excused.
        log.record(4 * MS + MS / 2, 10 * MS, 13 * MS);
        // Stamped at 4.5 ms, 6 ms late: more than the wait.
        log.record(4 * MS + MS / 2, 10 * MS, 16 * MS);
        // Stamped in a call the submitter was not preempted in: the submitter's wait, though
        // within the message's life, is not credited.
        log.record(20 * MS, 22 * MS, 23 * MS);
        // Stamped outside any slow call while the submitter waited: not credited either.
        log.record(3 * MS, 4 * MS, 12 * MS);
        let v = p.verdict_submitted(&log, "app", &slow);
        assert_eq!((v.excused, v.unexcused), (1, 3), "{v}");
        // Without the call windows nothing is excused (the polling threads never waited).
        assert_eq!(p.verdict(&log).excused, 0);
    }

    /// One stage at utilisation 0.5 whose burst is 0.5 ms (one job of 0.5 ms per ms, no
    /// blocking): a busy period lasts twice its burst plus the waits inside it.
    fn half_loaded() -> BusyBound {
        BusyBound::new(vec![Stage {
            name: "core".into(),
            blocking: 0,
            loads: vec![Load {
                cost: MS / 2,
                period: MS,
                jitter: 0,
            }],
        }])
        .unwrap()
    }

    /// Samples every ms up to 100 ms, a 4 ms wait reported at 11 ms (within [6, 11]).
    fn one_wait() -> Vec<(Nanos, Nanos)> {
        (0..=100)
            .map(|i| (i * MS, if i >= 11 { 4 * MS } else { 0 }))
            .collect()
    }

    #[test]
    fn a_busy_period_lasts_as_long_as_the_admitted_load_can_keep_it() {
        let b = half_loaded();
        assert_eq!(b.after_one_wait(4 * MS), 9 * MS);
        let c = Curve::from_samples(&one_wait());
        // Placed latest, [7, 11], the wait keeps a busy period begun at 7 ms running until
        // 7 + (0.5 + 4) / 0.5 = 16 ms, and no earlier one that long.
        assert_eq!(b.busy_since(&c, 16 * MS), 7 * MS);
        // At 13 ms one begun as early as 5 ms (burst until 6, the wait from 6) still runs.
        assert_eq!(b.busy_since(&c, 13 * MS), 5 * MS);
        // At 17 ms only one begun in the last 1 ms (its own burst) can run.
        assert_eq!(b.busy_since(&c, 17 * MS), 16 * MS);
        // A load the resource cannot carry has no bound.
        let full = Stage {
            name: "over".into(),
            blocking: 0,
            loads: vec![Load {
                cost: MS,
                period: MS,
                jitter: 0,
            }],
        };
        assert!(BusyBound::new(vec![full]).is_none());
        assert!(BusyBound::new(Vec::new()).is_none());
    }

    #[test]
    fn the_backlog_rule_credits_a_wait_before_a_message_only_within_the_busy_period() {
        let own = Preemptions::from_samples(&one_wait());
        let p = own.clone().with_backlog(half_loaded());
        // Submitted at 13 ms, after the wait ended (by 11 ms), 1 ms late: the backlog the
        // wait left is still being worked off (the busy period can run to 16 ms). The own
        // window holds no wait; with the backlog all 4 ms of it count.
        let backlog = miss(13 * MS, 14 * MS, 15 * MS);
        assert!(!own.excuses(&backlog));
        assert_eq!(p.counted_from(&backlog), 5 * MS);
        assert!(p.excuses(&backlog));
        // Submitted at 17 ms: every busy period the wait can have lengthened has ended.
        let too_early = miss(17 * MS, 18 * MS, 19 * MS);
        assert_eq!(p.counted_from(&too_early), 16 * MS);
        assert!(!p.excuses(&too_early));
        // A wait after the deadline: the message was already late when it began, so it is
        // shorter than the lateness (7 ms against 4 ms), backlog or not.
        let after = miss(MS, 5 * MS, 12 * MS);
        assert!(!p.excuses(&after));
        // More lateness than the waits of the busy period: not excused.
        assert!(!p.excuses(&miss(13 * MS, 14 * MS, 19 * MS)));
        // The verdict uses the same rule.
        let mut log = MissLog::with_capacity(4);
        for m in [backlog, too_early, after] {
            log.record(m.submit, m.deadline, m.delivered);
        }
        let v = p.verdict(&log);
        assert_eq!((v.excused, v.unexcused, v.by_backlog), (1, 2, 1), "{v}");
        assert_eq!(own.verdict(&log).excused, 0);
    }

    #[test]
    fn a_submitter_wait_in_its_call_adds_to_the_polling_threads_backlog() {
        // The polling threads' 4 ms wait (within [6, 11]) and a submitter that waited 1 ms
        // (reported at 14 ms: within [12, 14]) inside the call that stamped the message at
        // 12.5 ms and ended at 14 ms.
        let sub: Vec<(Nanos, Nanos)> = (0..=100)
            .map(|i| (i * MS, if i >= 14 { MS } else { 0 }))
            .collect();
        let p = Preemptions::from_samples(&one_wait()).with_submitter("app", &sub);
        let mut slow = SlowSubmits::with_capacity(1);
        slow.record(12 * MS, 14 * MS);
        let mut log = MissLog::with_capacity(2);
        // 4.5 ms late: the backlog's 4 ms and the call's 0.5 ms certain (of [12.5, 14]).
        log.record(12 * MS + MS / 2, 15 * MS, 19 * MS + MS / 2);
        // 5 ms late: more than both.
        log.record(12 * MS + MS / 2, 15 * MS, 20 * MS);
        let v = p
            .clone()
            .with_backlog(half_loaded())
            .verdict_submitted(&log, "app", &slow);
        assert_eq!((v.excused, v.unexcused, v.by_backlog), (1, 1, 1), "{v}");
        // In its own life only: the call's wait alone.
        let v = p.verdict_submitted(&log, "app", &slow);
        assert_eq!((v.excused, v.unexcused), (0, 2), "{v}");
    }

    #[test]
    fn the_probe_sees_a_thread_waiting_for_a_cpu() {
        // Two threads pinned to one CPU, both spinning: each waits for the other's slices. The
        // probe must see waiting in the right place in time.
        let probe = PreemptionProbe::start().unwrap();
        let cpu = core_affinity::get_core_ids().unwrap()[0];
        let start = monotonic_now();
        let spin = |probe: Option<&PreemptionProbe>| {
            core_affinity::set_for_current(cpu);
            if let Some(p) = probe {
                p.watch_current_thread().unwrap();
            }
            let t0 = monotonic_now();
            while monotonic_now() - t0 < 300 * MS {
                std::hint::spin_loop();
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| spin(Some(&probe)));
            s.spawn(|| spin(None));
        });
        let end = monotonic_now();
        let p = probe.finish();
        assert_eq!(p.threads.len(), 1);
        assert!(p.samples() > 10, "{p}");
        // Sharing one CPU for 300 ms: the watched thread waits for a good part of it.
        assert!(p.waited(start, end) >= 50 * MS, "{p}");
        assert!(p.waited(end + 1, end + 1000 * MS) == 0, "{p}");
    }
}
