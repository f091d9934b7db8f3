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
//! Data flow: polling threads call [`PreemptionProbe::watch_current_thread`] once; the probe
//! thread appends `(time, cumulative preemption)` samples, where the cumulative preemption grows
//! in each sample interval by the *largest* wait of any watched thread in that interval (the
//! threads of one path are preempted at the same time when the machine is busy; adding them
//! would count one stall twice); [`PreemptionProbe::finish`] stops it and returns
//! [`Preemptions`]. [`Preemptions::waited`] interpolates the cumulative curve linearly between
//! samples, so a wait is attributed to the part of a sample interval a window covers.
//!
//! The rule ([`Preemptions::excuses`]): a deadline miss is excused only when, during that
//! message's own life `[submit, delivery]`, the OS kept the watched threads waiting for a CPU
//! at least as long as the message was late (`delivery - deadline`). That implies a preemption
//! overlapping `[submit, deadline]`: a wait entirely after the deadline is always shorter than
//! the lateness, since the message was already late when it began. Misses the probe cannot
//! explain (including any past the capacity of a [`MissLog`]) are unexcused.
//!
//! What the kernel does not see is not measured: host-level preemption of a virtual CPU
//! (steal time) and softirq work deferred to `ksoftirqd` are not a watched thread's run-queue
//! wait. A miss they cause is reported unexcused.

use dataplane::time::{monotonic_now, Nanos};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the probe samples: fine enough to place a wait within a message's window (tens of
/// ms in the veth tests), coarse enough that reading two or three small /proc files costs the
/// shared CPUs about 1 %.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// One watched thread.
struct Watched {
    name: String,
    file: File,
    /// Run-queue wait at the previous sample (None before the first).
    last: Option<Nanos>,
    /// Run-queue wait since the first sample.
    total: Nanos,
    /// Largest growth of the wait within one sample interval.
    longest: Nanos,
}

#[derive(Default)]
struct Record {
    times: Vec<Nanos>,
    cumulative: Vec<Nanos>,
}

struct Shared {
    stop: AtomicBool,
    watched: Mutex<Vec<Watched>>,
    record: Mutex<Record>,
}

/// The probe thread and what it has sampled so far.
pub struct PreemptionProbe {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The calling thread's kernel thread id.
pub fn current_tid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Reads the run-queue wait (ns) from an open schedstat file.
fn read_wait(file: &File, buf: &mut [u8]) -> Option<Nanos> {
    let n = file.read_at(buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

impl PreemptionProbe {
    /// Starts the probe thread (at nice -20 when allowed, so that its own samples stay regular).
    pub fn start() -> Result<Self, String> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            watched: Mutex::new(Vec::new()),
            record: Mutex::new(Record::default()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("preempt-probe".into())
            .spawn(move || probe_loop(&s))
            .map_err(|e| format!("cannot start the preemption probe thread: {e}"))?;
        Ok(Self {
            shared,
            thread: Some(thread),
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

    /// Watches every thread of process `pid` whose name (`comm`) starts with `prefix`; returns
    /// how many.
    pub fn watch_threads_of(&self, pid: u32, prefix: &str) -> Result<usize, String> {
        self.watcher().watch_threads_of(pid, prefix)
    }

    /// Stops the probe and returns what it measured.
    pub fn finish(mut self) -> Preemptions {
        self.stop_thread();
        let record =
            std::mem::take(&mut *self.shared.record.lock().unwrap_or_else(|e| e.into_inner()));
        let watched = self
            .shared
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Preemptions {
            times: record.times,
            cumulative: record.cumulative,
            threads: watched
                .iter()
                .map(|w| ThreadWait {
                    name: w.name.clone(),
                    total: w.total,
                    longest: w.longest,
                })
                .collect(),
        }
    }

    fn stop_thread(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
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
    /// Watches thread `tid` of process `pid` under `name` (in reports).
    pub fn watch(&self, pid: u32, tid: u32, name: &str) -> Result<(), String> {
        let path = format!("/proc/{pid}/task/{tid}/schedstat");
        let file = File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        let mut buf = [0u8; 128];
        let first = read_wait(&file, &mut buf)
            .ok_or_else(|| format!("{path} does not hold a run-queue wait"))?;
        let mut w = self
            .shared
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.push(Watched {
            name: name.to_string(),
            file,
            last: Some(first),
            total: 0,
            longest: 0,
        });
        Ok(())
    }

    /// Watches the calling thread, named after the thread's name.
    pub fn watch_current_thread(&self) -> Result<(), String> {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        self.watch(std::process::id(), current_tid(), &name)
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
            if comm.starts_with(prefix) && self.watch(pid, tid, comm).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn probe_loop(s: &Shared) {
    let _ = dataplane::core::raise_priority();
    let mut buf = [0u8; 128];
    let mut cumulative: Nanos = 0;
    loop {
        let stop = s.stop.load(Ordering::Acquire);
        let now = monotonic_now();
        let mut largest = 0;
        {
            let mut watched = s.watched.lock().unwrap_or_else(|e| e.into_inner());
            for w in watched.iter_mut() {
                // A thread that exited keeps what it had: its file no longer reads.
                let Some(v) = read_wait(&w.file, &mut buf) else {
                    continue;
                };
                let grew = w.last.map_or(0, |l| v.saturating_sub(l));
                w.last = Some(v);
                w.total += grew;
                w.longest = w.longest.max(grew);
                largest = largest.max(grew);
            }
        }
        cumulative += largest;
        {
            let mut r = s.record.lock().unwrap_or_else(|e| e.into_inner());
            r.times.push(now);
            r.cumulative.push(cumulative);
        }
        if stop {
            return;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// One watched thread's run-queue wait over the probe's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadWait {
    /// The thread's name.
    pub name: String,
    /// Total wait for a CPU, ns.
    pub total: Nanos,
    /// Largest wait within one sample interval, ns.
    pub longest: Nanos,
}

/// What a probe measured: the watched threads' OS preemption over time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preemptions {
    /// Sample times (monotonic ns), increasing.
    times: Vec<Nanos>,
    /// Cumulative preemption at each sample (see the module docs).
    cumulative: Vec<Nanos>,
    /// Per watched thread.
    pub threads: Vec<ThreadWait>,
}

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
}

impl std::fmt::Display for MissVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} misses excused by measured OS preemption (largest lateness {:.3} ms), {} unexcused \
             (largest lateness {:.3} ms)",
            self.excused,
            self.worst_excused as f64 / 1e6,
            self.unexcused,
            self.worst_unexcused as f64 / 1e6
        )
    }
}

impl Preemptions {
    /// Builds a record from samples (for tests of the rule): `(time, cumulative preemption)`.
    pub fn from_samples(samples: &[(Nanos, Nanos)]) -> Self {
        Self {
            times: samples.iter().map(|s| s.0).collect(),
            cumulative: samples.iter().map(|s| s.1).collect(),
            threads: Vec::new(),
        }
    }

    /// The cumulative preemption at time `t`, interpolated between samples (flat outside them).
    fn at(&self, t: Nanos) -> Nanos {
        let i = self.times.partition_point(|&x| x <= t);
        if i == 0 {
            return self.cumulative.first().copied().unwrap_or(0);
        }
        if i == self.times.len() {
            return *self.cumulative.last().unwrap();
        }
        let (t0, t1) = (self.times[i - 1], self.times[i]);
        let (c0, c1) = (self.cumulative[i - 1], self.cumulative[i]);
        let span = (t1 - t0).max(1) as u128;
        c0 + ((c1 - c0) as u128 * (t - t0) as u128 / span) as Nanos
    }

    /// How long the watched threads waited for a CPU during `[from, to]` (see the module docs).
    pub fn waited(&self, from: Nanos, to: Nanos) -> Nanos {
        if to <= from {
            return 0;
        }
        self.at(to) - self.at(from)
    }

    /// Whether the measured preemption explains `m` (the rule in the module docs).
    pub fn excuses(&self, m: &Miss) -> bool {
        m.lateness() > 0 && self.waited(m.submit, m.delivered) >= m.lateness()
    }

    /// Divides a channel's misses into excused and unexcused.
    pub fn verdict(&self, log: &MissLog) -> MissVerdict {
        let mut v = MissVerdict {
            unexcused: log.unrecorded,
            ..MissVerdict::default()
        };
        for m in &log.misses {
            if self.excuses(m) {
                v.excused += 1;
                v.worst_excused = v.worst_excused.max(m.lateness());
            } else {
                v.unexcused += 1;
                v.worst_unexcused = v.worst_unexcused.max(m.lateness());
            }
        }
        v
    }

    /// Total preemption measured.
    pub fn total(&self) -> Nanos {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The number of samples taken.
    pub fn samples(&self) -> usize {
        self.times.len()
    }
}

impl std::fmt::Display for Preemptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OS preemption (run-queue wait, /proc schedstat, {} samples): {:.3} ms in all",
            self.samples(),
            self.total() as f64 / 1e6
        )?;
        for t in &self.threads {
            write!(
                f,
                "; {} waited {:.3} ms (at most {:.3} ms in one {} ms sample)",
                t.name,
                t.total as f64 / 1e6,
                t.longest as f64 / 1e6,
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

    fn miss(submit: Nanos, deadline: Nanos, delivered: Nanos) -> Miss {
        Miss {
            submit,
            deadline,
            delivered,
        }
    }

    #[test]
    fn waits_interpolate_between_samples() {
        // 4 ms of waiting between 10 and 12 ms, nothing else.
        let p = Preemptions::from_samples(&[
            (0, 0),
            (10 * MS, 0),
            (12 * MS, 4 * MS),
            (20 * MS, 4 * MS),
        ]);
        assert_eq!(p.waited(0, 10 * MS), 0);
        assert_eq!(p.waited(11 * MS, 12 * MS), 2 * MS);
        assert_eq!(p.waited(0, 30 * MS), 4 * MS);
        assert_eq!(p.waited(12 * MS, 20 * MS), 0);
        assert_eq!(p.waited(5 * MS, 5 * MS), 0);
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
        let p = Preemptions::from_samples(&[(0, 0), (10 * MS, 5 * MS)]);
        let mut log = MissLog::with_capacity(2);
        log.record(0, 4 * MS, 5 * MS); // 1 ms late, 5 ms waited in [0, 5]: 2.5 ms → excused
        log.record(0, 4 * MS, 9 * MS); // 5 ms late, 4.5 ms waited: unexcused
        log.record(0, 4 * MS, 5 * MS); // past capacity
        log.record(0, 4 * MS, 3 * MS); // not a miss
        log.record(0, 0, 3 * MS); // best-effort
        assert_eq!(log.count(), 3);
        let v = p.verdict(&log);
        assert_eq!((v.excused, v.unexcused), (1, 2));
        assert_eq!(v.worst_unexcused, 5 * MS);
        assert_eq!(v.worst_excused, MS);
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
