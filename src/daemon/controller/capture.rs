//! Captures on demand (`rtchanctl capture`): arming every polling core's capture ring for one
//! control connection, draining the rings into replies, disarming.
//!
//! The rings are `dataplane::capture` rings, built here (allocated and faulted in) and handed
//! to the cores with a command, so the cores never allocate. This thread is each ring's only
//! consumer: it drains them when the connection asks (`capture_take`), at most
//! [`CAPTURE_TAKE_BYTES`] of frames per reply. One capture at a time; it ends when its count
//! is reached, on `capture_stop`, or when its connection closes, and the cores are disarmed
//! then. Traffic is never touched: a full ring drops the copy, counted.

use std::sync::Arc;

use control::protocol::{
    ApiError, CaptureArgs, CaptureChunk, CaptureFrameInfo, CaptureStarted, ErrorKind,
    CAPTURE_TAKE_BYTES,
};
use dataplane::capture::{CaptureConfig, CaptureRing, Direction};
use dataplane::handle::CoreHandle;
use dataplane::time::monotonic_now;

use super::{internal, not_found, Control};
use crate::daemon::server::ConnId;

/// A running capture.
pub(super) struct Session {
    conn: ConnId,
    /// Per capture interface: the ring (interface `i` is `rings[i]`).
    rings: Vec<Arc<CaptureRing>>,
    /// Frames still to hand out; `None`: until stopped.
    left: Option<u64>,
    /// Wall clock minus the monotonic clock, ns.
    wall_offset: i128,
    /// The cores are disarmed; what the rings hold is still handed out.
    disarmed: bool,
}

/// The cores in interface order: sending cores (`tx0..`), then receive cores (`rx0..`).
fn handles(c: &mut Control) -> impl Iterator<Item = &mut CoreHandle> {
    c.dp.tx
        .iter_mut()
        .chain(c.dp.rx.iter_mut())
        .map(|s| &mut s.handle)
}

impl Control {
    /// `capture_start` from `conn`.
    pub(super) fn capture_start(
        &mut self,
        conn: ConnId,
        args: &CaptureArgs,
    ) -> Result<CaptureStarted, ApiError> {
        if !self.cfg.capture.enabled {
            return Err(ApiError::invalid(
                "capture.enabled",
                "captures are off in this daemon's configuration: set [capture] enabled = true \
                 (admission then charges cost.capture_frame_ns per frame; docs/admission.md §10)",
            ));
        }
        if args.count == Some(0) {
            return Err(ApiError::invalid(
                "request.capture_start.count",
                "a capture of 0 frames captures nothing: give at least 1",
            ));
        }
        if let Some(id) = args.channel {
            if !self.out.contains_key(&id) && !self.inc.contains_key(&id) {
                return Err(not_found(id));
            }
        }
        if self.capture.is_some() {
            return Err(ApiError::new(
                ErrorKind::Limit,
                "a capture is already running on this daemon (one at a time)",
            ));
        }
        let slots = self.cfg.capture.slots;
        let channel = args.channel;
        let snaplen = handles(self).map(|h| h.max_frame()).max().unwrap_or(0);
        let mut rings = Vec::new();
        for h in handles(self) {
            rings.push(
                CaptureRing::new(CaptureConfig {
                    slots,
                    snaplen: h.max_frame(),
                    channel,
                })
                .map_err(internal)?,
            );
        }
        let mut armed = 0;
        let mut failed = None;
        for (h, ring) in handles(self).zip(&rings) {
            if let Err(e) = h.set_capture(Some(ring.clone())) {
                failed = Some(e);
                break;
            }
            armed += 1;
        }
        if let Some(e) = failed {
            self.disarm(armed);
            return Err(internal(format!("cannot arm a polling core: {e}")));
        }
        let interfaces = self
            .dp
            .tx
            .iter()
            .enumerate()
            .map(|(i, _)| format!("tx{i}"))
            .chain(self.dp.rx.iter().enumerate().map(|(i, _)| format!("rx{i}")))
            .collect();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        self.capture = Some(Session {
            conn,
            rings,
            left: args.count,
            wall_offset: wall - monotonic_now() as i128,
            disarmed: false,
        });
        tracing::info!(channel = ?channel, count = ?args.count, "capture started");
        Ok(CaptureStarted {
            interfaces,
            snaplen: snaplen as u32,
            slots,
        })
    }

    /// `capture_take` (or, with `stop`, `capture_stop`) from `conn`. A stop disarms the cores
    /// first, so that every frame they copied is handed out by this and the next takes; the
    /// capture is done when its count is reached, or once disarmed with its rings empty.
    pub(super) fn capture_take(
        &mut self,
        conn: ConnId,
        stop: bool,
    ) -> Result<CaptureChunk, ApiError> {
        let Some(s) = self.capture.as_mut().filter(|s| s.conn == conn) else {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "no capture is running on this connection (capture_start first)",
            ));
        };
        if stop && !s.disarmed {
            s.disarmed = true;
            let n = s.rings.len();
            self.disarm_cores(n);
        }
        let Some(s) = self.capture.as_mut() else {
            return Err(internal("the capture went away while disarming"));
        };
        let mut chunk = CaptureChunk::default();
        let mut bytes = 0usize;
        {
            'rings: for (iface, ring) in s.rings.iter().enumerate() {
                loop {
                    if bytes >= CAPTURE_TAKE_BYTES || s.left == Some(0) {
                        break 'rings;
                    }
                    let mut took = false;
                    let off = s.wall_offset;
                    let n = ring.drain(1, |f| {
                        took = true;
                        bytes += f.data.len();
                        chunk.frames.push(CaptureFrameInfo {
                            iface: iface as u16,
                            ts: (i128::from(f.ts) + off).max(0) as u64,
                            inbound: f.dir == Direction::In,
                            orig_len: f.orig_len,
                            data: hex(f.data),
                        });
                    });
                    if n == 0 || !took {
                        break;
                    }
                    if let Some(l) = s.left.as_mut() {
                        *l -= 1;
                    }
                }
            }
        }
        chunk.copied = s.rings.iter().map(|r| r.copied()).sum();
        chunk.dropped = s.rings.iter().map(|r| r.dropped()).sum();
        let emptied = s.disarmed && s.rings.iter().all(|r| r.is_empty());
        if emptied || s.left == Some(0) {
            chunk.done = true;
            let n = if s.disarmed { 0 } else { s.rings.len() };
            self.disarm(n);
            tracing::info!(
                copied = chunk.copied,
                dropped = chunk.dropped,
                "capture ended"
            );
        }
        Ok(chunk)
    }

    /// Ends the capture of a connection that went away.
    pub(super) fn capture_closed(&mut self, conn: ConnId) {
        if let Some(n) = self
            .capture
            .as_ref()
            .filter(|s| s.conn == conn)
            .map(|s| s.rings.len())
        {
            self.disarm(n);
            tracing::info!("capture ended: its connection closed");
        }
    }

    /// Disarms the first `n` cores (in interface order) and forgets the capture.
    fn disarm(&mut self, n: usize) {
        self.capture = None;
        self.disarm_cores(n);
    }

    /// Disarms the first `n` cores (in interface order).
    fn disarm_cores(&mut self, n: usize) {
        for h in handles(self).take(n) {
            if let Err(e) = h.set_capture(None) {
                tracing::warn!("cannot disarm a polling core's capture: {e}");
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}
