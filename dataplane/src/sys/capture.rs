//! Captures on demand: a bounded ring per core that the polling core copies frames into and
//! the control side drains (`rtchanctl capture`).
//!
//! ```text
//! polling core ── CaptureTap::offer(frame) ──▶ CaptureRing (per core, SPSC, fixed slots) ──▶
//!   CaptureRing::drain (control thread) ──▶ pcapng file (rtchanctl)
//! ```
//! The control thread builds a ring (allocating and faulting in every slot) and arms a core by
//! handing it over with `core::Command::Capture`; it disarms the same way, and the ring comes
//! back on the acknowledgement. A disarmed core pays one test of an `Option` it owns per TX
//! stage and per RX burst. An armed core, per frame: the channel filter (a few byte loads),
//! one copy of at most the slot's snap length, two stores of the slot's metadata and a
//! `Release` store of the head. A full ring drops the frame's *copy* (counted in
//! [`CaptureRing::dropped`]); the frame itself always goes on. Nothing on the core allocates,
//! locks or waits. Admission charges the copy when captures can be armed
//! (`cost.capture_frame_ns`, docs/admission.md §10).

use crate::spec::ChannelId;
use crate::stats::Padded;
use crate::time::Nanos;
use crate::wire::{ETH_LEN, IPV4_LEN, UDP_LEN};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots a ring has by default: 4,096 frames, 41 ms of a fully loaded 1 Gb/s link of
/// 1,500-byte frames, far more than the 20 ms between two drains by `rtchanctl capture`.
pub const DEFAULT_CAPTURE_SLOTS: usize = 4096;
/// Most slots a ring may have (a ring of 1,514-byte slots is then 100 MiB).
pub const MAX_CAPTURE_SLOTS: usize = 1 << 16;
/// Offset of the rtchan header's channel id in an rtchan frame (Ethernet, IPv4 without
/// options, UDP, then the header's bytes 8..12).
const CHANNEL_OFFSET: usize = ETH_LEN + IPV4_LEN + UDP_LEN + 8;

/// Which way a captured frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Built by the TX stage and handed to the port.
    Out,
    /// Received from the port.
    In,
}

/// A ring's parameters, checked by [`CaptureRing::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Frames the ring holds (a power of two, 1 to [`MAX_CAPTURE_SLOTS`]).
    pub slots: usize,
    /// Bytes kept of each frame (longer frames are cut; their length is kept): the port's
    /// largest frame keeps every byte.
    pub snaplen: usize,
    /// Only frames of this rtchan channel; every frame when `None`.
    pub channel: Option<ChannelId>,
}

/// A capture ring's parameters were wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaptureConfigError {
    /// `slots` is 0, not a power of two, or too large.
    #[error("capture slots: {0} is not a power of two between 1 and {MAX_CAPTURE_SLOTS}")]
    Slots(usize),
    /// `snaplen` is 0.
    #[error("capture snaplen: must be at least one byte")]
    Snaplen,
}

/// One captured frame, as the drain hands it out.
#[derive(Clone, Copy, Debug)]
pub struct CapturedFrame<'a> {
    /// The core's clock when it copied the frame (CLOCK_MONOTONIC ns on a running core).
    pub ts: Nanos,
    /// Which way it went.
    pub dir: Direction,
    /// Its length on the port.
    pub orig_len: u32,
    /// Its first `snaplen` bytes.
    pub data: &'a [u8],
}

/// A single-producer single-consumer ring of fixed frame slots.
///
/// The producer (the armed core, through its [`CaptureTap`]) fills a slot only while
/// `head − tail` is below the capacity and publishes it with a `Release` store of `head`; the
/// consumer reads slots below the `head` it loaded with `Acquire` and gives them back with a
/// `Release` store of `tail`, which the producer loads with `Acquire` before reusing them.
pub struct CaptureRing {
    cfg: CaptureConfig,
    /// `slots × snaplen` frame bytes.
    data: Box<[UnsafeCell<u8>]>,
    /// Per slot: the timestamp, and `orig_len | kept_len << 32 | direction << 63`.
    meta: Box<[[AtomicU64; 2]]>,
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    /// Frames copied, and copies dropped because the ring was full (the core writes both).
    copied: Padded<AtomicU64>,
    dropped: AtomicU64,
    draining: AtomicBool,
}

// SAFETY: the frame bytes are written only by the one producer, to slots the consumer has
// given back (tail published with Release, loaded with Acquire), and read only by the one
// consumer (held by `draining`), from slots the producer published (head: Release/Acquire);
// every other field is atomic.
unsafe impl Sync for CaptureRing {}

impl std::fmt::Debug for CaptureRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureRing")
            .field("cfg", &self.cfg)
            .field("copied", &self.copied())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl CaptureRing {
    /// Allocates and faults in a ring (control path: `slots × snaplen` bytes).
    pub fn new(cfg: CaptureConfig) -> Result<Arc<Self>, CaptureConfigError> {
        if cfg.slots == 0 || !cfg.slots.is_power_of_two() || cfg.slots > MAX_CAPTURE_SLOTS {
            return Err(CaptureConfigError::Slots(cfg.slots));
        }
        if cfg.snaplen == 0 {
            return Err(CaptureConfigError::Snaplen);
        }
        // Zeroed by writing: every page is touched here, not on the core's first lap.
        let data: Box<[UnsafeCell<u8>]> = (0..cfg.slots * cfg.snaplen)
            .map(|_| UnsafeCell::new(0))
            .collect();
        let meta = (0..cfg.slots)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect();
        Ok(Arc::new(Self {
            cfg,
            data,
            meta,
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            copied: Padded(AtomicU64::new(0)),
            dropped: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }))
    }

    /// The ring's parameters.
    pub fn config(&self) -> CaptureConfig {
        self.cfg
    }

    /// Frames the core copied into the ring so far.
    pub fn copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// Frames the core did not copy because the ring was full (the frames themselves went on).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Frames waiting to be drained.
    pub fn len(&self) -> usize {
        self.head
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    /// True when no frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands up to `max` waiting frames to `f`, oldest first, then gives their slots back;
    /// returns how many. One consumer at a time: a second concurrent caller gets 0.
    pub fn drain(&self, max: usize, mut f: impl FnMut(CapturedFrame<'_>)) -> usize {
        if self.draining.swap(true, Ordering::Acquire) {
            return 0;
        }
        let head = self.head.load(Ordering::Acquire);
        let mut tail = self.tail.load(Ordering::Relaxed);
        let mut n = 0;
        while tail != head && n < max {
            let i = tail & (self.cfg.slots - 1);
            let ts = self.meta[i][0].load(Ordering::Relaxed);
            let w = self.meta[i][1].load(Ordering::Relaxed);
            let kept = ((w >> 32) as usize & 0x7fff_ffff).min(self.cfg.snaplen);
            let start = i * self.cfg.snaplen;
            // SAFETY: slot `i` is below the published head, so the producer finished writing
            // it (Acquire above) and will not touch it until `tail` passes it (Release
            // below); `start + kept` is within `data` (kept <= snaplen).
            let data = unsafe {
                std::slice::from_raw_parts(
                    UnsafeCell::raw_get(&self.data[start]).cast_const(),
                    kept,
                )
            };
            f(CapturedFrame {
                ts,
                dir: if w >> 63 == 1 {
                    Direction::In
                } else {
                    Direction::Out
                },
                orig_len: w as u32,
                data,
            });
            tail = tail.wrapping_add(1);
            n += 1;
        }
        self.tail.store(tail, Ordering::Release);
        self.draining.store(false, Ordering::Release);
        n
    }
}

/// The armed core's end of a [`CaptureRing`]: owns the head, caches the tail.
#[derive(Debug)]
pub struct CaptureTap {
    ring: Arc<CaptureRing>,
    head: usize,
    tail_cache: usize,
    copied: u64,
    dropped: u64,
}

impl CaptureTap {
    /// The producer of `ring`. Only one tap may exist per ring (the core that is armed with it).
    pub fn new(ring: Arc<CaptureRing>) -> Self {
        Self {
            head: ring.head.load(Ordering::Relaxed),
            tail_cache: ring.tail.load(Ordering::Acquire),
            copied: ring.copied(),
            dropped: ring.dropped(),
            ring,
        }
    }

    /// The ring, handed back when the core is disarmed.
    pub fn into_ring(self) -> Arc<CaptureRing> {
        self.ring
    }

    /// Copies `frame` into the next slot if it passes the channel filter; a full ring counts
    /// a dropped copy. Never waits, allocates or fails the frame.
    #[inline]
    pub fn offer(&mut self, frame: &[u8], ts: Nanos, dir: Direction) {
        let r = &*self.ring;
        if let Some(ch) = r.cfg.channel {
            if frame_channel(frame) != Some(ch) {
                return;
            }
        }
        if self.head.wrapping_sub(self.tail_cache) >= r.cfg.slots {
            self.tail_cache = r.tail.load(Ordering::Acquire);
            if self.head.wrapping_sub(self.tail_cache) >= r.cfg.slots {
                self.dropped += 1;
                r.dropped.store(self.dropped, Ordering::Relaxed);
                return;
            }
        }
        let i = self.head & (r.cfg.slots - 1);
        let kept = frame.len().min(r.cfg.snaplen);
        let start = i * r.cfg.snaplen;
        // SAFETY: slot `i` is free: `head − tail < slots` with `tail` loaded Acquire, so the
        // consumer has finished reading it and reads it again only after the head store below
        // (Release); `start + kept` is within `data` (kept <= snaplen); `frame` is a separate
        // buffer, so the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                UnsafeCell::raw_get(&r.data[start]),
                kept,
            );
        }
        let dir_bit = u64::from(dir == Direction::In) << 63;
        r.meta[i][0].store(ts, Ordering::Relaxed);
        r.meta[i][1].store(
            (frame.len() as u32 as u64) | ((kept as u64) << 32) | dir_bit,
            Ordering::Relaxed,
        );
        self.head = self.head.wrapping_add(1);
        r.head.store(self.head, Ordering::Release);
        self.copied += 1;
        r.copied.store(self.copied, Ordering::Relaxed);
    }
}

/// The rtchan channel id of a frame, when it is an IPv4/UDP frame long enough to carry one
/// (IPv4 without options, as rtchan sends them).
#[inline]
pub fn frame_channel(frame: &[u8]) -> Option<ChannelId> {
    let b = frame.get(..CHANNEL_OFFSET + 4)?;
    if b[12] != 0x08 || b[13] != 0x00 || b[ETH_LEN] != 0x45 || b[ETH_LEN + 9] != 17 {
        return None;
    }
    Some(u32::from_be_bytes([
        b[CHANNEL_OFFSET],
        b[CHANNEL_OFFSET + 1],
        b[CHANNEL_OFFSET + 2],
        b[CHANNEL_OFFSET + 3],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(channel: u32, len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[12] = 0x08;
        f[13] = 0x00;
        f[ETH_LEN] = 0x45;
        f[ETH_LEN + 9] = 17;
        f[CHANNEL_OFFSET..CHANNEL_OFFSET + 4].copy_from_slice(&channel.to_be_bytes());
        f
    }

    fn ring(slots: usize, snaplen: usize, channel: Option<u32>) -> Arc<CaptureRing> {
        CaptureRing::new(CaptureConfig {
            slots,
            snaplen,
            channel,
        })
        .unwrap()
    }

    #[test]
    fn frames_come_out_as_they_went_in_and_a_full_ring_counts_drops() {
        let r = ring(4, 128, None);
        let mut tap = CaptureTap::new(r.clone());
        for i in 0..6u8 {
            tap.offer(
                &frame(7, 100 + usize::from(i), i),
                1000 + u64::from(i),
                Direction::Out,
            );
        }
        assert_eq!((r.copied(), r.dropped(), r.len()), (4, 2, 4));
        let mut got = Vec::new();
        assert_eq!(
            r.drain(usize::MAX, |f| got.push((
                f.ts,
                f.orig_len,
                f.data.to_vec()
            ))),
            4
        );
        for (i, (ts, len, data)) in got.iter().enumerate() {
            assert_eq!(*ts, 1000 + i as u64);
            assert_eq!(*len as usize, 100 + i);
            assert_eq!(data, &frame(7, 100 + i, i as u8));
        }
        // Room again: the next frame is copied.
        tap.offer(&frame(7, 64, 9), 2000, Direction::In);
        let mut dirs = Vec::new();
        r.drain(1, |f| dirs.push(f.dir));
        assert_eq!(dirs, [Direction::In]);
        assert_eq!((r.copied(), r.dropped()), (5, 2));
    }

    #[test]
    fn long_frames_are_cut_to_the_snap_length_and_keep_their_length() {
        let r = ring(2, 80, None);
        let mut tap = CaptureTap::new(r.clone());
        let f = frame(1, 1500, 3);
        tap.offer(&f, 5, Direction::Out);
        r.drain(8, |c| {
            assert_eq!(c.orig_len, 1500);
            assert_eq!(c.data, &f[..80]);
        });
    }

    #[test]
    fn the_channel_filter_keeps_only_that_channel() {
        let r = ring(8, 128, Some(3));
        let mut tap = CaptureTap::new(r.clone());
        tap.offer(&frame(2, 100, 0), 1, Direction::Out);
        tap.offer(&frame(3, 100, 0), 2, Direction::Out);
        tap.offer(&[0u8; 30], 3, Direction::In); // too short to name a channel
        let mut ts = Vec::new();
        r.drain(8, |f| ts.push(f.ts));
        assert_eq!(ts, [2]);
        assert_eq!(r.dropped(), 0);
    }

    #[test]
    fn bad_parameters_are_named() {
        for slots in [0, 3, MAX_CAPTURE_SLOTS * 2] {
            let e = CaptureRing::new(CaptureConfig {
                slots,
                snaplen: 64,
                channel: None,
            })
            .unwrap_err();
            assert_eq!(e, CaptureConfigError::Slots(slots));
        }
        let e = CaptureRing::new(CaptureConfig {
            slots: 4,
            snaplen: 0,
            channel: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("snaplen"));
    }

    #[test]
    fn a_producer_and_a_consumer_on_two_threads_lose_nothing_they_count() {
        let r = ring(64, 64, None);
        let r2 = r.clone();
        let producer = std::thread::spawn(move || {
            let mut tap = CaptureTap::new(r2);
            for i in 0..20_000u64 {
                let mut f = frame(1, 64, 0);
                f[56..64].copy_from_slice(&i.to_le_bytes());
                tap.offer(&f, i, Direction::Out);
            }
        });
        let mut seen = Vec::new();
        loop {
            let done = producer.is_finished();
            r.drain(usize::MAX, |f| {
                let v = u64::from_le_bytes(f.data[56..64].try_into().unwrap());
                assert_eq!(v, f.ts, "slot bytes and metadata from the same frame");
                seen.push(v);
            });
            if done && r.is_empty() {
                break;
            }
        }
        producer.join().unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(seen.len() as u64 + r.dropped(), 20_000);
        assert_eq!(r.copied(), seen.len() as u64);
    }
}
