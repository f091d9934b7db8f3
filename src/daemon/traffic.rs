//! Built-in traffic for demos and tests: a source thread per channel opened with `--source`,
//! and one sink thread that drains every receiver of this host.
//!
//! A source runs a [`dataplane::source::Source`] on its own application thread: it asks how
//! many messages are due, submits them on the channel's [`Sender`] (a full buffer under the
//! `block` policy is counted by the channel and the message skipped), and sleeps until the
//! next one is due. Patterns: `periodic` (one message every Imin), `poisson` (mean gap Imin),
//! `greedy:N` (N times the spec's rate: enforcement pushes its logical arrivals into the
//! future), `bursts` (Bmax messages every Bmax·Imin).
//! Receivers deliver into a ring the application must empty; the sink empties them (latency
//! and deadline misses are counted by the receive path at delivery). The sink also keeps the
//! times of each channel's most recent misses ([`RecentMisses`], fixed capacity), which
//! `stats` reports so that a test can hold each miss against measured OS preemption.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use control::admission::Nanos;
use control::protocol::MissTimes;
use dataplane::channel::Sender;
use dataplane::rx::Receiver;
use dataplane::source::{Pattern, Source};
use dataplane::time::monotonic_now;

/// Parses a `--source` value for a channel with `imin` and `bmax`.
pub fn parse_source(text: &str, imin: Nanos, bmax: u32) -> Result<Pattern, String> {
    let (name, arg) = match text.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (text, None),
    };
    let multiple = |default: u32| -> Result<u32, String> {
        match arg {
            None => Ok(default),
            Some(a) => a
                .parse::<u32>()
                .ok()
                .filter(|&m| m >= 1)
                .ok_or_else(|| format!("'{a}' is not a positive multiple in '{text}'")),
        }
    };
    match name {
        "periodic" if arg.is_none() => Ok(Pattern::Periodic { interval: imin }),
        "poisson" if arg.is_none() => Ok(Pattern::Poisson { mean: imin }),
        "greedy" => Ok(Pattern::Greedy {
            imin,
            multiple: multiple(10)?,
        }),
        "bursts" if arg.is_none() => Ok(Pattern::Bursts {
            size: bmax,
            every: imin.saturating_mul(u64::from(bmax)),
        }),
        _ => Err(format!(
            "unknown source '{text}' (periodic, poisson, greedy[:N], bursts)"
        )),
    }
}

/// A running source; dropping it stops the thread.
pub struct SourceThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sender>>,
}

impl SourceThread {
    /// Starts submitting `size`-byte messages on `sender` following `pattern`.
    pub fn start(
        mut sender: Sender,
        pattern: Pattern,
        size: usize,
        id: u32,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rtchan-src{id}"))
            .spawn(move || {
                let payload = vec![0x5au8; size];
                let mut src = Source::new(pattern, monotonic_now(), u64::from(id));
                while !stop2.load(Ordering::Relaxed) {
                    let now = monotonic_now();
                    for _ in 0..src.due(now) {
                        // Refusals are counted in the channel's statistics.
                        let _ = sender.submit(&payload);
                    }
                    let wait = src.next_at().saturating_sub(monotonic_now());
                    std::thread::sleep(Duration::from_nanos(wait.clamp(20_000, 5_000_000)));
                }
                sender
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and gives the sender back.
    pub fn stop(mut self) -> Option<Sender> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Misses kept with their times per channel: the last ones of a few seconds at the fastest
/// rates tests use; older ones are counted only (`deadline_misses`).
pub const RECENT_MISSES: usize = 4096;

/// A channel's most recent misses with their times: a ring of fixed capacity.
#[derive(Debug)]
pub struct RecentMisses {
    ring: Vec<MissTimes>,
    /// Where the next miss goes once the ring is full.
    next: usize,
    /// Misses overwritten (no longer held).
    older: u64,
}

impl RecentMisses {
    /// A ring holding up to `capacity` misses (allocated here, never grown).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            ring: Vec::with_capacity(capacity.max(1)),
            next: 0,
            older: 0,
        }
    }

    /// Records a delivery if it missed its deadline (`deadline` 0: none).
    pub fn record(&mut self, submit: Nanos, deadline: Nanos, delivered: Nanos) {
        if deadline == 0 || delivered <= deadline {
            return;
        }
        let m = MissTimes {
            submit,
            deadline,
            delivered,
        };
        if self.ring.len() < self.ring.capacity() {
            self.ring.push(m);
        } else {
            self.ring[self.next] = m;
            self.next = (self.next + 1) % self.ring.len();
            self.older += 1;
        }
    }

    /// The misses held, oldest first, and how many older ones were overwritten.
    pub fn to_vec(&self) -> (Vec<MissTimes>, u64) {
        let (new, old) = self.ring.split_at(self.next);
        (old.iter().chain(new).copied().collect(), self.older)
    }
}

struct Drained {
    id: u32,
    receiver: Receiver,
    misses: RecentMisses,
}

/// The sink: empties every registered receiver every 200 µs.
pub struct Sink {
    receivers: Arc<Mutex<Vec<Drained>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts the sink thread.
    pub fn start() -> std::io::Result<Self> {
        let receivers: Arc<Mutex<Vec<Drained>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r2, s2) = (receivers.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rtchan-sink".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    if let Ok(mut list) = r2.lock() {
                        for d in list.iter_mut() {
                            let misses = &mut d.misses;
                            while d
                                .receiver
                                .recv_with(|_, m| {
                                    misses.record(m.submit_ts, m.deadline, m.delivered_ts)
                                })
                                .is_some()
                            {}
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })?;
        Ok(Self {
            receivers,
            stop,
            thread: Some(thread),
        })
    }

    /// Drains `r` from now on.
    pub fn add(&self, id: u32, r: Receiver) {
        if let Ok(mut l) = self.receivers.lock() {
            l.push(Drained {
                id,
                receiver: r,
                misses: RecentMisses::with_capacity(RECENT_MISSES),
            });
        }
    }

    /// Stops draining channel `id`.
    pub fn remove(&self, id: u32) {
        if let Ok(mut l) = self.receivers.lock() {
            l.retain(|d| d.id != id);
        }
    }

    /// Channel `id`'s most recent misses with their times, oldest first, and how many older
    /// ones are no longer held (nothing when the sink does not drain it).
    pub fn recent_misses(&self, id: u32) -> (Vec<MissTimes>, u64) {
        self.receivers
            .lock()
            .ok()
            .and_then(|l| l.iter().find(|d| d.id == id).map(|d| d.misses.to_vec()))
            .unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_misses_keep_the_last_ones_in_order() {
        let mut r = RecentMisses::with_capacity(3);
        r.record(0, 10, 5); // on time
        r.record(0, 0, 50); // best-effort
        for i in 1..=5 {
            r.record(i, 10, 10 + i);
        }
        let (held, older) = r.to_vec();
        let v: Vec<u64> = held.iter().map(|m| m.submit).collect();
        assert_eq!(v, [3, 4, 5]);
        assert_eq!(held[0].delivered, 13);
        assert_eq!(older, 2);
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            parse_source("greedy:5", 100, 2),
            Ok(Pattern::Greedy {
                imin: 100,
                multiple: 5
            })
        );
        assert_eq!(
            parse_source("bursts", 100, 4),
            Ok(Pattern::Bursts {
                size: 4,
                every: 400
            })
        );
        assert!(parse_source("greedy:0", 100, 1).is_err());
        assert!(parse_source("flood", 100, 1).is_err());
    }
}
