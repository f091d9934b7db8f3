//! [`AfXdpPort`]: the dataplane's [`Port`] over one AF_XDP socket.

use super::socket::{SocketOptions, XdpAttach, XdpStatistics, XskSocket};
use super::umem::{FramePool, Umem, XdpFrame};
use super::{AfXdpConfig, AfXdpError, XskBind};
use crate::ports::steering::Member;
use dataplane::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats};
use dataplane::wire::wire_bytes;
use std::io;
use std::sync::Arc;

/// Ethernet header bytes, added to the MTU for the largest frame.
const ETH_HLEN: usize = 14;

/// A [`Port`] over an AF_XDP socket bound to one queue of one interface.
///
/// One TX queue and one RX queue (index 0 both): the socket's. Buffers are [`XdpFrame`]s,
/// UMEM frames written and read in place. The port reports TX completions (unless configured
/// not to: [`AfXdpConfig::report_completions`]): in-flight bytes are the wire bytes of frames
/// handed to the kernel and not yet back on the completion ring.
pub struct AfXdpPort {
    sock: XskSocket,
    pool: Arc<FramePool>,
    name: String,
    ifname: String,
    queue: u32,
    attach: XdpAttach,
    zero_copy: bool,
    max_frame: usize,
    link_rate_bps: u64,
    report_completions: bool,
    /// Wire bytes of each frame while the kernel has it for sending (indexed by frame).
    tx_wire: Box<[u32]>,
    in_flight: u64,
    stats: PortStats,
    rx_invalid: u64,
    notes: Vec<String>,
    /// Set when the socket is one of several on the device's queues, one per core
    /// ([`super::open_queues`]).
    member: Option<Member<XdpFrame>>,
}

impl std::fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("name", &self.name)
            .field("attach", &self.attach)
            .field("zero_copy", &self.zero_copy)
            .field("stats", &self.stats)
            .finish()
    }
}

impl AfXdpPort {
    /// Opens an AF_XDP port on `ifname` (in the calling thread's network namespace), queue
    /// `cfg.queue_id`.
    ///
    /// Tries the attach modes and bind modes `cfg` allows, best first (native before SKB,
    /// zero-copy before copy); [`AfXdpPort::notes`] says which attempts failed and why. Needs
    /// `CAP_NET_ADMIN`, `CAP_BPF` (or `CAP_SYS_ADMIN`) and `CAP_NET_RAW`, plus either
    /// `CAP_IPC_LOCK` or an `RLIMIT_MEMLOCK` above the UMEM size.
    pub fn open(ifname: &str, cfg: AfXdpConfig) -> Result<Self, AfXdpError> {
        let queue = cfg.queue_id;
        let config_err = |reason: String| AfXdpError::Config {
            ifname: ifname.to_string(),
            queue,
            reason,
        };
        cfg.validate().map_err(config_err)?;
        let mtu = interface_mtu(ifname).map_err(|source| AfXdpError::Os {
            ifname: ifname.to_string(),
            queue,
            call: "SIOCGIFMTU".into(),
            source,
        })?;
        let pool =
            FramePool::new(cfg.frame_size, cfg.rx_frames, cfg.tx_frames).map_err(|source| {
                AfXdpError::Os {
                    ifname: ifname.to_string(),
                    queue,
                    call: format!(
                        "mmap of the UMEM ({} frames of {} bytes)",
                        cfg.rx_frames + cfg.tx_frames,
                        cfg.frame_size
                    ),
                    source,
                }
            })?;

        let attaches: &[XdpAttach] = match cfg.attach {
            XdpAttach::Auto => &[XdpAttach::Native, XdpAttach::Skb],
            XdpAttach::Native => &[XdpAttach::Native],
            XdpAttach::Skb => &[XdpAttach::Skb],
        };
        let mut failures = Vec::new();
        let mut sock = None;
        'outer: for &attach in attaches {
            // Zero-copy needs the driver's support, which generic mode never has.
            let binds: &[bool] = match (cfg.bind, attach) {
                (XskBind::Copy, _) => &[false],
                (XskBind::ZeroCopy, XdpAttach::Skb) => &[],
                (XskBind::ZeroCopy, _) => &[true],
                (XskBind::ZeroCopyOrCopy, XdpAttach::Skb) => &[false],
                (XskBind::ZeroCopyOrCopy, _) => &[true, false],
            };
            for &zero_copy in binds {
                let what = format!(
                    "{attach} mode, {}",
                    if zero_copy { "zero-copy" } else { "copy" }
                );
                // A fresh UMEM per attempt: a failed bind leaves libxdp's ring set-up state
                // on the old one.
                let umem = match Umem::new(&pool, cfg.fill_ring(), cfg.tx_ring) {
                    Ok(u) => u,
                    Err(source) => {
                        return Err(AfXdpError::Os {
                            ifname: ifname.to_string(),
                            queue,
                            call: format!(
                                "xsk_umem__create ({} frames of {} bytes)",
                                pool.frames(),
                                pool.frame_size()
                            ),
                            source,
                        })
                    }
                };
                let opts = SocketOptions {
                    rx_ring: cfg.rx_ring,
                    tx_ring: cfg.tx_ring,
                    attach,
                    zero_copy,
                    need_wakeup: cfg.need_wakeup,
                    load_program: cfg.load_program,
                };
                match XskSocket::create(ifname, queue, umem, opts) {
                    Ok(s) => {
                        sock = Some((s, attach, zero_copy));
                        break 'outer;
                    }
                    Err(e) => failures.push((what, e)),
                }
            }
        }
        let notes: Vec<String> = failures
            .iter()
            .map(|(what, e)| format!("xsk_socket__create ({what}) failed: {e}"))
            .collect();
        let Some((mut sock, attach, zero_copy)) = sock else {
            return Err(match failures.pop() {
                Some((what, source)) if notes.len() == 1 => AfXdpError::Os {
                    ifname: ifname.to_string(),
                    queue,
                    call: format!("xsk_socket__create ({what})"),
                    source,
                },
                _ => AfXdpError::NoMode {
                    ifname: ifname.to_string(),
                    queue,
                    attempts: notes,
                },
            });
        };
        sock.umem_mut().refill();
        let rx_room = (cfg.frame_size as usize).saturating_sub(xdp_rx_headroom());
        Ok(Self {
            sock,
            name: format!("af_xdp:{ifname}/q{queue}"),
            ifname: ifname.to_string(),
            queue,
            attach,
            zero_copy,
            max_frame: (mtu + ETH_HLEN).min(rx_room),
            link_rate_bps: cfg.link_rate_bps,
            report_completions: cfg.report_completions,
            tx_wire: vec![0u32; pool.frames() as usize].into_boxed_slice(),
            pool,
            in_flight: 0,
            stats: PortStats::default(),
            rx_invalid: 0,
            notes,
            member: None,
        })
    }

    /// Makes this socket core `member`'s of a shared device (receive steering, counters).
    pub(super) fn join(&mut self, member: Member<XdpFrame>) {
        self.member = Some(member);
    }

    /// The attach mode in use ([`XdpAttach::Native`] or [`XdpAttach::Skb`]).
    pub fn attach_mode(&self) -> XdpAttach {
        self.attach
    }

    /// True when the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// What happened while opening (attempts that failed before the one that worked).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The frame pool (to watch for leaks in tests).
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }

    /// The socket.
    pub fn socket(&self) -> &XskSocket {
        &self.sock
    }

    /// The kernel's counters for the socket.
    pub fn xdp_statistics(&self) -> io::Result<XdpStatistics> {
        self.sock.statistics()
    }

    /// Returns sent frames from the completion ring to their free lists.
    #[inline]
    fn reap(&mut self) {
        let tx_wire = &mut self.tx_wire;
        let in_flight = &mut self.in_flight;
        self.sock.umem_mut().reap(|index| {
            let w = std::mem::take(&mut tx_wire[index as usize]);
            *in_flight = in_flight.saturating_sub(u64::from(w));
        });
    }

    /// Kicks the kernel if descriptors wait on the TX ring and it asked for a kick.
    #[inline]
    fn kick(&mut self) -> Result<(), PortError> {
        if self.sock.tx_unconsumed() == 0 || !self.sock.tx_needs_wakeup() {
            return Ok(());
        }
        match self.sock.kick_tx() {
            Ok(()) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // The kernel's budget per call, a busy device queue, or no skb memory: the
                // descriptors stay on the ring for the next kick.
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR) => Ok(()),
                Some(libc::ENETDOWN | libc::ENXIO) => Err(PortError::LinkDown),
                Some(code) => Err(PortError::Backend(code)),
                None => Err(PortError::Backend(libc::EIO)),
            },
        }
    }

    /// Replaces frames of another port's UMEM at the front of `batch` by copies in ours, as
    /// far as TX frames last. Returns how many frames at the front are ours.
    #[cold]
    fn adopt_foreign(&mut self, batch: &mut Batch<XdpFrame>) -> usize {
        let mut ours = 0;
        for slot in batch.iter_mut() {
            if !slot.is_from(&self.pool) {
                let Some(mut copy) = self.pool.alloc_tx() else {
                    self.stats.alloc_failures += 1;
                    break;
                };
                let n = slot.len();
                copy.buf_mut()[..n].copy_from_slice(slot.data());
                copy.set_len(n);
                *slot = copy; // the foreign frame goes back to its own pool
            }
            ours += 1;
        }
        ours
    }
}

impl Port for AfXdpPort {
    type Buf = XdpFrame;

    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            name: self.name.clone(),
            max_frame: self.max_frame,
            tx_queues: 1,
            rx_queues: 1,
            link_rate_bps: self.link_rate_bps,
            reports_tx_completion: self.report_completions,
        }
    }

    #[inline]
    fn alloc_tx(&mut self) -> Option<XdpFrame> {
        let f = self.pool.alloc_tx();
        if f.is_none() {
            // Frames may be waiting on the completion ring.
            self.reap();
            let f = self.pool.alloc_tx();
            if f.is_none() {
                self.stats.alloc_failures += 1;
            }
            return f;
        }
        f
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<XdpFrame>) -> Result<usize, PortError> {
        if queue != 0 {
            return Err(PortError::NoSuchQueue(queue));
        }
        self.reap();
        let mut ready = batch.iter().take_while(|f| f.is_from(&self.pool)).count();
        if ready < batch.len() && ready == 0 {
            ready = self.adopt_foreign(batch);
        }
        let room = self.sock.tx_room(ready as u32) as usize;
        let mut n = ready.min(room);
        // Cannot fail (the room was checked and this is the ring's only producer); if it did,
        // the frames simply stay in the batch.
        match self.sock.tx_reserve(n as u32) {
            Some(idx) if n > 0 => {
                for (k, f) in batch.drain(..n).enumerate() {
                    let len = f.len();
                    let (index, desc) = f.into_desc();
                    let w = wire_bytes(len);
                    self.tx_wire[index as usize] = w as u32;
                    self.in_flight += w;
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += len as u64;
                    self.sock.tx_write(idx.wrapping_add(k as u32), desc);
                }
                self.sock.tx_submit(n as u32);
                if let Some(m) = &self.member {
                    m.publish_tx(&self.stats);
                }
            }
            _ => n = 0,
        }
        match self.kick() {
            // What was pushed is the kernel's now: report it sent; the descriptors left on
            // the ring are kicked again by the next burst, which then reports the error.
            Err(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<XdpFrame>) -> Result<usize, PortError> {
        if queue != 0 {
            return Err(PortError::NoSuchQueue(queue));
        }
        // Every poll passes here: keep TX moving even when the core has nothing new to send.
        self.reap();
        let kicked = self.kick();
        self.sock.umem_mut().refill();
        let before = batch.len();
        if let Some(m) = &self.member {
            // Frames other cores handed over first: they arrived earlier.
            m.take_handed(batch);
        }
        let max = batch.remaining_capacity() as u32;
        let pool = &self.pool;
        let stats = &mut self.stats;
        let invalid = &mut self.rx_invalid;
        let member = &self.member;
        let n = self
            .sock
            .rx_drain(max, |addr, len| match pool.locate(addr, len) {
                Some((index, offset)) => {
                    stats.rx_packets += 1;
                    stats.rx_bytes += u64::from(len);
                    let f = pool.wrap(index, offset, len);
                    match member {
                        // A frame of a channel whose receiver is on another core goes there.
                        Some(m) => {
                            if let Some(f) = m.route(f) {
                                batch.push(f);
                            }
                        }
                        None => batch.push(f),
                    }
                }
                // Not a frame of ours: a kernel bug; never build a buffer over it.
                None => *invalid += 1,
            });
        if let (Some(m), true) = (&self.member, n > 0) {
            m.publish_rx(&self.stats);
        }
        if self.sock.fill_needs_wakeup() {
            let _ = self.sock.wake_rx();
        }
        // Received frames are never lost to a TX-side error: it is reported by an empty burst.
        let got = batch.len() - before;
        if got == 0 {
            kicked?;
        }
        Ok(got)
    }

    fn tx_in_flight_bytes(&self, queue: u16) -> Option<u64> {
        (queue == 0 && self.report_completions).then_some(self.in_flight)
    }

    fn stats(&self) -> PortStats {
        let mut s = self.stats;
        let k = self.sock.statistics().unwrap_or_default();
        s.rx_dropped = k.rx_dropped + k.rx_ring_full + self.rx_invalid;
        s
    }
}

impl AfXdpPort {
    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }
}

/// Headroom the kernel leaves before a received packet in copy mode (`XDP_PACKET_HEADROOM`).
fn xdp_rx_headroom() -> usize {
    256
}

/// The interface's MTU, looked up in the calling thread's network namespace (`SIOCGIFMTU` on
/// a UDP socket; `/sys/class/net` shows the namespace sysfs was mounted in instead).
fn interface_mtu(ifname: &str) -> io::Result<usize> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid `ifreq` with a NUL-terminated name; SIOCGIFMTU writes the
    // `ifru_mtu` member only.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFMTU,
            &mut req,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the union holds the MTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.max(0) as usize)
}
