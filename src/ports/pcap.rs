//! Packet captures: a port wrapper that records what a port sends and receives as a pcap file
//! (nanosecond timestamps, Ethernet link type) that Wireshark and tcpdump open.
//!
//! [`PcapPort`] wraps any [`Port`]. Transmitted frames are staged in a preallocated buffer and
//! only those the inner port accepted are written; received frames are written as they are
//! handed up. Timestamps are the wall clock (CLOCK_MONOTONIC shifted by the offset to the
//! realtime clock measured at creation), so captures from two hosts line up in Wireshark as
//! well as their clocks do. Writes go through a `BufWriter`: capturing costs a copy per frame
//! and an occasional `write(2)`, which is why it is a wrapper for debugging and tests, not
//! something the production path carries. An I/O error is counted and kept, never a panic.

use dataplane::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats, MAX_BURST};
use dataplane::time::{monotonic_now, Clock, Nanos};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

/// pcap magic for nanosecond timestamps.
pub const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Link type: Ethernet.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Largest frame recorded whole; longer ones are cut (their original length is kept).
pub const SNAPLEN: u32 = 65_535;
const RECORD_HEADER: usize = 16;

/// Which directions to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directions {
    /// Record transmitted frames.
    pub tx: bool,
    /// Record received frames.
    pub rx: bool,
}

impl Directions {
    /// Both directions.
    pub const BOTH: Self = Self { tx: true, rx: true };
}

/// What the capture did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames written.
    pub frames: u64,
    /// Write errors (the capture is incomplete if non-zero).
    pub write_errors: u64,
}

/// A port that records its traffic to a pcap file.
pub struct PcapPort<P: Port> {
    inner: P,
    out: BufWriter<File>,
    clock: Arc<dyn Clock>,
    dirs: Directions,
    /// Wall clock minus the monotonic clock, ns.
    realtime_offset: i128,
    staging: Vec<u8>,
    stats: CaptureStats,
    last_error: Option<std::io::Error>,
}

impl<P: Port> std::fmt::Debug for PcapPort<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapPort")
            .field("dirs", &self.dirs)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<P: Port> PcapPort<P> {
    /// Wraps `inner`, creating (truncating) `path` and writing the pcap header.
    pub fn create(
        inner: P,
        path: &Path,
        clock: Arc<dyn Clock>,
        dirs: Directions,
    ) -> std::io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&PCAP_MAGIC_NS.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let max = inner.capabilities().max_frame.min(SNAPLEN as usize);
        Ok(Self {
            inner,
            out,
            clock,
            dirs,
            realtime_offset: wall - monotonic_now() as i128,
            staging: Vec::with_capacity(MAX_BURST * (RECORD_HEADER + max)),
            stats: CaptureStats::default(),
            last_error: None,
        })
    }

    /// What the capture did.
    pub fn capture_stats(&self) -> CaptureStats {
        self.stats
    }

    /// The first write error, if any.
    pub fn last_error(&self) -> Option<&std::io::Error> {
        self.last_error.as_ref()
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn stage(staging: &mut Vec<u8>, ts: Nanos, offset: i128, frame: &[u8]) {
        let wall = (ts as i128 + offset).max(0) as u128;
        let incl = frame.len().min(SNAPLEN as usize);
        staging.extend_from_slice(&((wall / 1_000_000_000) as u32).to_le_bytes());
        staging.extend_from_slice(&((wall % 1_000_000_000) as u32).to_le_bytes());
        staging.extend_from_slice(&(incl as u32).to_le_bytes());
        staging.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        staging.extend_from_slice(&frame[..incl]);
    }

    fn commit(&mut self, bytes: usize, frames: usize) {
        if let Err(e) = self.out.write_all(&self.staging[..bytes]) {
            self.stats.write_errors += 1;
            self.last_error.get_or_insert(e);
        } else {
            self.stats.frames += frames as u64;
        }
        self.staging.clear();
    }
}

impl<P: Port> Port for PcapPort<P> {
    type Buf = P::Buf;

    fn capabilities(&self) -> PortCapabilities {
        let mut c = self.inner.capabilities();
        c.name = format!("pcap:{}", c.name);
        c
    }

    fn alloc_tx(&mut self) -> Option<Self::Buf> {
        self.inner.alloc_tx()
    }

    fn alloc_bulk(&mut self, batch: &mut Batch<Self::Buf>, n: usize) -> usize {
        self.inner.alloc_bulk(batch, n)
    }

    fn free_bulk(&mut self, batch: &mut Batch<Self::Buf>) {
        self.inner.free_bulk(batch)
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<Self::Buf>) -> Result<usize, PortError> {
        if !self.dirs.tx {
            return self.inner.tx_burst(queue, batch);
        }
        // Stage every frame with the end offset of its record; keep only the sent ones.
        let now = self.clock.now();
        let mut ends = [0usize; MAX_BURST];
        for (i, b) in batch.iter().enumerate() {
            Self::stage(&mut self.staging, now, self.realtime_offset, b.data());
            ends[i] = self.staging.len();
        }
        let sent = self.inner.tx_burst(queue, batch);
        match sent {
            Ok(n) if n > 0 => self.commit(ends[n - 1], n),
            _ => self.staging.clear(),
        }
        sent
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<Self::Buf>) -> Result<usize, PortError> {
        let before = batch.len();
        let n = self.inner.rx_burst(queue, batch)?;
        if self.dirs.rx && n > 0 {
            let now = self.clock.now();
            for b in &batch[before..] {
                Self::stage(&mut self.staging, now, self.realtime_offset, b.data());
            }
            let len = self.staging.len();
            self.commit(len, n);
        }
        Ok(n)
    }

    fn tx_in_flight_bytes(&self, queue: u16) -> Option<u64> {
        self.inner.tx_in_flight_bytes(queue)
    }

    fn stats(&self) -> PortStats {
        self.inner.stats()
    }
}

impl<P: Port> Drop for PcapPort<P> {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::core::{Core, CoreConfig};
    use dataplane::memlink::{MemLink, MemLinkConfig};
    use dataplane::spec::{ChannelConfig, ChannelSpec};
    use dataplane::time::{ManualClock, VirtualCpu};
    use dataplane::wire::{parse_frame, RTCHAN_UDP_PORT};

    /// Reads a nanosecond pcap back: (timestamp ns, frame) per record.
    fn read_pcap(bytes: &[u8]) -> Vec<(u128, Vec<u8>)> {
        assert_eq!(
            u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
            PCAP_MAGIC_NS
        );
        assert_eq!(
            u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
            LINKTYPE_ETHERNET
        );
        let mut out = Vec::new();
        let mut at = 24;
        while at + RECORD_HEADER <= bytes.len() {
            let u = |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
            let (sec, ns, incl, orig) = (u(0), u(4), u(8) as usize, u(12) as usize);
            assert_eq!(incl, orig);
            let data = bytes[at + RECORD_HEADER..at + RECORD_HEADER + incl].to_vec();
            out.push((sec as u128 * 1_000_000_000 + ns as u128, data));
            at += RECORD_HEADER + incl;
        }
        assert_eq!(at, bytes.len(), "no trailing partial record");
        out
    }

    #[test]
    fn records_what_the_core_sends_as_valid_frames() {
        let dir = std::env::temp_dir().join(format!("rtchan-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tx.pcap");
        let clock = ManualClock::new(1_000);
        let (a, mut b) = MemLink::pair(
            MemLinkConfig {
                rate_bps: 0,
                ..MemLinkConfig::default()
            },
            Arc::new(clock.clone()),
        );
        let port = PcapPort::create(a, &path, Arc::new(clock.clone()), Directions::BOTH).unwrap();
        let mut core = Core::new(CoreConfig::default(), port).unwrap();
        let spec = ChannelSpec {
            mmax: 3000,
            imin: 10_000,
            bmax: 4,
            cpu_deadline: 100_000,
            link_deadline: 200_000,
            end_to_end_deadline: 300_000,
        };
        let mut tx = core.open(ChannelConfig::real_time(3, spec)).unwrap();
        for i in 0..4u8 {
            tx.submit_at(&vec![i; 2500], 1_000).unwrap();
        }
        let mut cpu = VirtualCpu {
            clock: clock.clone(),
            per_packet: 100,
        };
        for _ in 0..200 {
            core.poll(&clock, &mut cpu);
            clock.advance(1_000);
        }
        let mut received = Vec::new();
        let mut batch = Batch::new();
        while b.rx_burst(0, &mut batch).unwrap() > 0 {
            received.extend(batch.drain(..).map(|f| f.data().to_vec()));
        }
        drop(core); // flushes the capture
        let records = read_pcap(&std::fs::read(&path).unwrap());
        assert_eq!(records.len(), received.len());
        assert_eq!(records.len(), 8, "4 messages of 2 packets");
        for ((_, rec), got) in records.iter().zip(&received) {
            assert_eq!(rec, got, "the capture holds exactly the frames sent");
            let h = parse_frame(rec, RTCHAN_UDP_PORT).unwrap().header;
            assert_eq!(h.channel, 3);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
