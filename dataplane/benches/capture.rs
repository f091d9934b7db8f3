//! Cost per frame of a capture copy (`CaptureTap::offer`) as the polling core pays it while a
//! capture is armed, for 64-byte and 1,514-byte frames, with and without a channel filter that
//! lets the frame through: the figure to compare with `cost.capture_frame_ns` (default 400 ns
//! when `[capture] enabled`, docs/admission.md §10). Each lap fills an empty 6 MiB ring
//! (every copy lands, in slots the caches no longer hold) and drains it untimed.
//!
//! Prints the minimum over rounds of ns per frame (noise on a shared machine only adds).

use std::time::Instant;

use dataplane::capture::{CaptureConfig, CaptureRing, CaptureTap, Direction};

const FRAMES: usize = 200_000;
const ROUNDS: usize = 9;
/// Slots of the ring: 4,096 × 1,514 bytes = 6 MiB, more than the caches hold.
const SLOTS: usize = 4096;

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x5au8; len];
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = 0x45;
    f[14 + 9] = 17;
    f[50..54].copy_from_slice(&7u32.to_be_bytes());
    f
}

fn round(len: usize, channel: Option<u32>) -> (f64, u64) {
    let ring = CaptureRing::new(CaptureConfig {
        slots: SLOTS,
        snaplen: 1514,
        channel,
    })
    .unwrap();
    let mut tap = CaptureTap::new(ring.clone());
    let f = frame(len);
    let mut timed = std::time::Duration::ZERO;
    for lap in 0..FRAMES / SLOTS {
        // Fill the empty ring (every copy lands; the slots are cold), then drain it untimed.
        let t = Instant::now();
        for i in 0..SLOTS {
            tap.offer(
                std::hint::black_box(&f),
                (lap * SLOTS + i) as u64,
                Direction::Out,
            );
        }
        timed += t.elapsed();
        ring.drain(usize::MAX, |c| {
            std::hint::black_box(c.data[0]);
        });
    }
    (
        timed.as_nanos() as f64 / (FRAMES / SLOTS * SLOTS) as f64,
        ring.dropped(),
    )
}

fn main() {
    for len in [64usize, 1514] {
        for channel in [None, Some(7)] {
            let mut best = f64::MAX;
            let mut dropped = 0;
            for _ in 0..ROUNDS {
                let (ns, d) = round(len, channel);
                if ns < best {
                    best = ns;
                    dropped = d;
                }
            }
            println!(
                "capture copy, {len:>4}-byte frames, filter {:<5}: {best:6.1} ns per frame \
                 (min of {ROUNDS} rounds of {FRAMES}; {dropped} copies dropped in that round)",
                if channel.is_some() { "on" } else { "off" }
            );
        }
    }
}
