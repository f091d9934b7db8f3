//! A [`Port`] over a Linux `AF_PACKET` socket: raw Ethernet frames on any kernel interface
//! (veth pairs in tests, a real NIC without DPDK).
//!
//! # Set-up ([`AfPacketPort::open`])
//! 1. `socket(AF_PACKET, SOCK_RAW, 0)`: protocol 0 receives nothing until the bind in step 6,
//!    so no frame of another interface slips into the ring meanwhile; the bind then asks for
//!    `ETH_P_ALL` on the one interface.
//! 2. `SIOCGIFINDEX` and `SIOCGIFMTU` on that socket (so the interface is looked up in the
//!    socket's network namespace).
//! 3. `PACKET_VERSION = TPACKET_V3`, `PACKET_IGNORE_OUTGOING` (Linux ≥ 4.20; otherwise frames
//!    whose `sll_pkttype` is `PACKET_OUTGOING` are skipped on receive), `PACKET_QDISC_BYPASS`
//!    when asked (if the kernel refuses, the port falls back to the qdisc and records a note).
//! 4. `PACKET_RX_RING` with a `tpacket_req3`: `rx_blocks` blocks of `rx_block_size` bytes,
//!    retired to user space when full or after `rx_block_timeout_ms`.
//! 5. `mmap` of the ring (shared with the kernel).
//! 6. `bind` to the interface index with `ETH_P_ALL`.
//!
//! # Receive
//! [`Port::rx_burst`] walks the ring: a block belongs to user space once its `block_status` has
//! `TP_STATUS_USER`; its frames are copied into pooled [`HeapBuf`]s (no zero copy: a ring frame
//! cannot outlive its block, and a block goes back to the kernel only when all its frames were
//! consumed, which would tie the ring to the application's slowest reader); when the last frame
//! of a block is taken, the block is handed back (`TP_STATUS_KERNEL`). Frames the kernel dropped
//! because the ring was full are read with `PACKET_STATISTICS` and reported as `rx_dropped`.
//!
//! # Transmit
//! [`Port::tx_burst`] sends the batch with `sendmmsg(MSG_DONTWAIT)`, one iovec per buffer,
//! `tx_batch` messages per call. What the kernel did not take (`EAGAIN`, `ENOBUFS`: socket
//! buffer full, or the device dropped it) stays at the front of the batch, in order. The port
//! does not report TX completions: the link scheduler models the queue at the configured rate.
//!
//! # Several cores
//! [`open_group`] opens one socket per core in one `PACKET_FANOUT_CBPF` group, steered by
//! channel in the kernel, with the software hand-off behind it and a socket filter keeping
//! non-rtchan frames out of the rings (see [`fanout`]).
//!
//! Needs `CAP_NET_RAW` in the interface's network namespace. Linux only.

#![cfg(target_os = "linux")]

pub mod fanout;
pub use fanout::{
    device_queues, open_group, rtchan_filter, steering_program, FanoutGroup, FanoutMode,
    MAX_KERNEL_CHANNELS,
};

use dataplane::memlink::{BufPool, HeapBuf};
use dataplane::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats, MAX_BURST};
use std::cell::Cell;
use std::ffi::c_void;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Ethernet header bytes, added to the MTU for the largest frame.
const ETH_HLEN: usize = 14;

/// Upper bound of the bytes the kernel puts before a frame's MAC header in a TPACKET_V3 ring
/// (`tpacket3_hdr` and `sockaddr_ll`, aligned, plus the 16-byte MAC room: 96 on x86_64).
const RING_FRAME_HEADROOM: usize = 128;

/// How an af_packet port is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfPacketConfig {
    /// Bytes per RX ring block (a multiple of the page size). A block reaches user space only
    /// when it is full or its timer retires it, so small blocks mean low latency under load.
    pub rx_block_size: usize,
    /// Blocks in the RX ring.
    pub rx_blocks: usize,
    /// Ring frame size (a multiple of 16; must hold the MTU plus the ring's per-frame header).
    /// TPACKET_V3 packs frames of any size into a block; this only sizes the kernel's checks.
    pub frame_size: usize,
    /// Most packets per `sendmmsg` call (1..=32).
    pub tx_batch: usize,
    /// Packet buffers in the pool shared by TX and RX.
    pub pool_buffers: usize,
    /// Ask for `PACKET_QDISC_BYPASS` (frames go straight to the driver, skipping the qdisc).
    pub qdisc_bypass: bool,
    /// Link rate in bits per second reported in the capabilities (0: read
    /// `/sys/class/net/IF/speed` if present, else 0 = unknown).
    pub link_rate_bps: u64,
    /// How long a partly filled RX block waits before the kernel retires it to user space, ms
    /// (`tp_retire_blk_tov`; 0 lets the kernel choose, usually 8 ms). This bounds receive
    /// latency when traffic is light.
    pub rx_block_timeout_ms: u32,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        Self {
            rx_block_size: 16 * 1024,
            rx_blocks: 256,
            frame_size: 2048,
            tx_batch: MAX_BURST,
            pool_buffers: 4096,
            qdisc_bypass: true,
            link_rate_bps: 0,
            rx_block_timeout_ms: 1,
        }
    }
}

/// Why an af_packet port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    /// A system call failed.
    #[error("af_packet {ifname}: {call} failed: {source}")]
    Os {
        /// The interface.
        ifname: String,
        /// The failing call (and option).
        call: &'static str,
        /// The OS error (errno and its text).
        source: io::Error,
    },
    /// The configuration cannot work.
    #[error("af_packet {ifname}: invalid configuration: {reason}")]
    Config {
        /// The interface.
        ifname: String,
        /// What is wrong.
        reason: String,
    },
}

/// The mmap'd TPACKET_V3 RX ring.
struct RxRing {
    base: NonNull<u8>,
    len: usize,
    block_size: usize,
    blocks: usize,
}

// SAFETY: the mapping is owned by this value alone (nothing else holds its address) and is only
// touched through `&mut AfPacketPort`; the kernel's side synchronises through the atomic
// block_status word. Moving the owner to another thread is therefore sound.
unsafe impl Send for RxRing {}

/// Offset of `block_status` in a block descriptor (`hdr` is a union whose only member is
/// `tpacket_hdr_v1`, at the union's start).
const BLOCK_STATUS_OFF: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
const NUM_PKTS_OFF: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const FIRST_PKT_OFF: usize = offset_of!(libc::tpacket_block_desc, hdr)
    + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
/// Offset of the `sockaddr_ll` after each frame's `tpacket3_hdr`.
const SLL_OFF: usize = (size_of::<libc::tpacket3_hdr>() + libc::TPACKET_ALIGNMENT - 1)
    & !(libc::TPACKET_ALIGNMENT - 1);

impl RxRing {
    /// The block_status word of block `i`, shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < self.blocks);
        // SAFETY: block i lies inside the mapping (i < blocks, len = blocks × block_size); the
        // word is 4-byte aligned (blocks are page-aligned, the offset is 8) and lives as long as
        // `self`. The kernel writes it concurrently, which is why it is read as an atomic.
        unsafe {
            &*(self
                .base
                .as_ptr()
                .add(i * self.block_size + BLOCK_STATUS_OFF) as *const AtomicU32)
        }
    }

    /// A u32 of block `i`'s header at `off` (read after the block was handed to user space).
    fn block_u32(&self, i: usize, off: usize) -> u32 {
        debug_assert!(off + 4 <= self.block_size);
        // SAFETY: inside block i of the mapping, aligned (see `status`); the kernel does not
        // write a block's header while the block belongs to user space (TP_STATUS_USER, read
        // with Acquire before this call).
        unsafe { (self.base.as_ptr().add(i * self.block_size + off) as *const u32).read_volatile() }
    }

    /// The bytes of block `i` (valid while it belongs to user space).
    fn block(&self, i: usize) -> &[u8] {
        debug_assert!(i < self.blocks);
        // SAFETY: the range is inside the mapping; while the block's status is TP_STATUS_USER
        // the kernel does not write to it, so reading it as a shared slice is sound until the
        // block is handed back (which takes `&mut self` of the port, ending this borrow).
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(i * self.block_size), self.block_size)
        }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; no reference into the mapping
        // outlives `self` (every borrow handed out is tied to `&self`).
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut c_void, self.len);
        }
    }
}

/// Where the RX walk is.
#[derive(Clone, Copy, Debug, Default)]
struct RxCursor {
    block: usize,
    /// The current block was opened (its header read).
    open: bool,
    /// Frames of the current block not yet consumed.
    left: u32,
    /// Offset of the next frame in the current block.
    off: usize,
}

/// A port on a kernel interface through an `AF_PACKET` socket. See the module docs.
pub struct AfPacketPort {
    ifname: String,
    ifindex: i32,
    mtu: usize,
    max_frame: usize,
    link_rate_bps: u64,
    tx_batch: usize,
    qdisc_bypass: bool,
    filter_outgoing: bool,
    notes: Vec<String>,
    pool: Arc<BufPool>,
    cursor: RxCursor,
    stats: PortStats,
    tx_full: u64,
    kernel_drops: Cell<u64>,
    /// Set when the socket is one of a fanout group ([`open_group`]).
    member: Option<crate::ports::steering::Member<HeapBuf>>,
    // Dropped in declaration order: the ring is unmapped before the socket closes.
    ring: RxRing,
    fd: OwnedFd,
}

impl std::fmt::Debug for AfPacketPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacketPort")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("mtu", &self.mtu)
            .field("qdisc_bypass", &self.qdisc_bypass)
            .field("filter_outgoing", &self.filter_outgoing)
            .field("stats", &self.stats)
            .finish()
    }
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, value: i32) -> io::Result<()> {
    setsockopt_raw(fd, level, opt, &value)
}

fn setsockopt_raw<T>(fd: RawFd, level: i32, opt: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of size_of::<T>() bytes for the duration of the call;
    // the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            value as *const T as *const c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An `ifreq` naming `ifname` (checked to fit by the caller).
fn ifreq_for(ifname: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers, sockaddrs and a
    // pointer); all-zero is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

/// Runs an interface ioctl that reads an `int` out of `ifr_ifru`.
fn ifreq_int(fd: RawFd, ifname: &str, request: libc::c_ulong) -> io::Result<i32> {
    let mut req = ifreq_for(ifname);
    // SAFETY: `req` is a valid, NUL-terminated ifreq the kernel fills in; SIOCGIFINDEX and
    // SIOCGIFMTU write only the int members of the union.
    let rc = unsafe { libc::ioctl(fd, request as _, &mut req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the kernel wrote the int member (ifindex and mtu share
    // the union's first int).
    Ok(unsafe { req.ifr_ifru.ifru_mtu })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The interface's speed from sysfs, bits per second (0 if unknown). Note that sysfs shows the
/// network namespace it was mounted in, not the calling thread's.
fn sysfs_speed_bps(ifname: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|&mbps| mbps > 0)
        .map_or(0, |mbps| mbps as u64 * 1_000_000)
}

impl AfPacketPort {
    /// Opens `ifname` (in the calling thread's network namespace). See the module docs for
    /// the steps; every failure names the interface and the call.
    pub fn open(ifname: &str, cfg: AfPacketConfig) -> Result<Self, AfPacketError> {
        Self::open_with(ifname, cfg, |_| Ok(()))
    }

    /// [`AfPacketPort::open`], running `before_bind` on the socket just before step 6 (a
    /// socket filter attached there applies to the very first frame the socket sees).
    fn open_with(
        ifname: &str,
        cfg: AfPacketConfig,
        before_bind: impl FnOnce(RawFd) -> Result<(), AfPacketError>,
    ) -> Result<Self, AfPacketError> {
        let bad = |reason: String| AfPacketError::Config {
            ifname: ifname.to_string(),
            reason,
        };
        let os = |call: &'static str| {
            let source = io::Error::last_os_error();
            AfPacketError::Os {
                ifname: ifname.to_string(),
                call,
                source,
            }
        };
        let os_err = |call: &'static str, source: io::Error| AfPacketError::Os {
            ifname: ifname.to_string(),
            call,
            source,
        };
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
            return Err(bad(format!(
                "interface name must be 1 to {} bytes without NUL",
                libc::IFNAMSIZ - 1
            )));
        }
        let page = page_size();
        if cfg.rx_block_size == 0 || cfg.rx_block_size % page != 0 {
            return Err(bad(format!(
                "rx_block_size {} must be a non-zero multiple of the page size ({page})",
                cfg.rx_block_size
            )));
        }
        if cfg.frame_size < RING_FRAME_HEADROOM || cfg.frame_size % libc::TPACKET_ALIGNMENT != 0 {
            return Err(bad(format!(
                "frame_size {} must be a multiple of {} and at least {RING_FRAME_HEADROOM}",
                cfg.frame_size,
                libc::TPACKET_ALIGNMENT
            )));
        }
        if cfg.frame_size > cfg.rx_block_size {
            return Err(bad(format!(
                "frame_size {} exceeds rx_block_size {}",
                cfg.frame_size, cfg.rx_block_size
            )));
        }
        let frames_per_block = cfg.rx_block_size / cfg.frame_size;
        let ring_len = cfg.rx_block_size.checked_mul(cfg.rx_blocks);
        let frame_nr = frames_per_block.checked_mul(cfg.rx_blocks);
        let (Some(ring_len), Some(frame_nr)) = (ring_len, frame_nr) else {
            return Err(bad("RX ring size overflows".into()));
        };
        if cfg.rx_blocks == 0 || u32::try_from(frame_nr).is_err() {
            return Err(bad(format!(
                "rx_blocks {} must be at least 1 and keep the frame count in 32 bits",
                cfg.rx_blocks
            )));
        }
        if !(1..=MAX_BURST).contains(&cfg.tx_batch) {
            return Err(bad(format!(
                "tx_batch {} must be in 1..={MAX_BURST}",
                cfg.tx_batch
            )));
        }
        if cfg.pool_buffers == 0 {
            return Err(bad("pool_buffers must be at least 1".into()));
        }

        // 1. The socket, receiving nothing until bound.
        // SAFETY: plain syscall; the returned descriptor is checked and then owned.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os("socket(AF_PACKET, SOCK_RAW)"));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = fd.as_raw_fd();

        // 2. Index and MTU.
        let ifindex = ifreq_int(sock, ifname, libc::SIOCGIFINDEX)
            .map_err(|e| os_err("ioctl(SIOCGIFINDEX)", e))?;
        let mtu = ifreq_int(sock, ifname, libc::SIOCGIFMTU)
            .map_err(|e| os_err("ioctl(SIOCGIFMTU)", e))?;
        let mtu = usize::try_from(mtu).map_err(|_| bad(format!("MTU {mtu} is negative")))?;
        let max_frame = mtu + ETH_HLEN;
        if cfg.frame_size < max_frame + RING_FRAME_HEADROOM {
            return Err(bad(format!(
                "frame_size {} cannot hold a {max_frame}-byte frame (MTU {mtu}) plus the ring's \
                 {RING_FRAME_HEADROOM}-byte header",
                cfg.frame_size
            )));
        }

        // 3. Options.
        let mut notes = Vec::new();
        setsockopt_int(
            sock,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            libc::tpacket_versions::TPACKET_V3 as i32,
        )
        .map_err(|e| os_err("setsockopt(PACKET_VERSION, TPACKET_V3)", e))?;
        let filter_outgoing =
            match setsockopt_int(sock, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1) {
                Ok(()) => false,
                Err(e) => {
                    notes.push(format!(
                        "PACKET_IGNORE_OUTGOING unavailable ({e}): outgoing frames are \
                         filtered by pkt_type on receive"
                    ));
                    true
                }
            };
        let qdisc_bypass = cfg.qdisc_bypass
            && match setsockopt_int(sock, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1) {
                Ok(()) => true,
                Err(e) => {
                    notes.push(format!(
                        "PACKET_QDISC_BYPASS refused ({e}): frames go through the qdisc"
                    ));
                    false
                }
            };

        // 4. The RX ring.
        let req = libc::tpacket_req3 {
            tp_block_size: cfg.rx_block_size as u32,
            tp_block_nr: cfg.rx_blocks as u32,
            tp_frame_size: cfg.frame_size as u32,
            tp_frame_nr: frame_nr as u32,
            tp_retire_blk_tov: cfg.rx_block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt_raw(sock, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
            .map_err(|e| os_err("setsockopt(PACKET_RX_RING)", e))?;

        // 5. Map it.
        // SAFETY: a fresh shared mapping of the socket's ring, of exactly the ring's size; the
        // result is checked before use and owned by `RxRing`, which unmaps it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                sock,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mmap(PACKET_RX_RING)"));
        }
        let ring = RxRing {
            base: NonNull::new(base as *mut u8).expect("mmap never returns NULL on success"),
            len: ring_len,
            block_size: cfg.rx_block_size,
            blocks: cfg.rx_blocks,
        };

        before_bind(sock)?;

        // 6. Bind to the interface, all protocols.
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll of the length passed; the kernel only reads it.
        let rc = unsafe {
            libc::bind(
                sock,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os("bind(sockaddr_ll)"));
        }

        let link_rate_bps = if cfg.link_rate_bps > 0 {
            cfg.link_rate_bps
        } else {
            sysfs_speed_bps(ifname)
        };
        Ok(Self {
            ifname: ifname.to_string(),
            ifindex,
            mtu,
            max_frame,
            link_rate_bps,
            tx_batch: cfg.tx_batch,
            qdisc_bypass,
            filter_outgoing,
            notes,
            pool: BufPool::new(cfg.pool_buffers, max_frame),
            cursor: RxCursor::default(),
            stats: PortStats::default(),
            tx_full: 0,
            kernel_drops: Cell::new(0),
            member: None,
            ring,
            fd,
        })
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index in its network namespace.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// The interface MTU read at open.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Whether `PACKET_QDISC_BYPASS` is in effect.
    pub fn qdisc_bypass(&self) -> bool {
        self.qdisc_bypass
    }

    /// What fell back during set-up, in words (empty when everything asked for is in effect).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The buffer pool (to watch for leaks).
    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// `sendmmsg` calls that stopped early because the kernel took no more (socket buffer full
    /// or device queue full).
    pub fn tx_full(&self) -> u64 {
        self.tx_full
    }

    /// Frames the kernel dropped because the ring was full, read (and reset) from the socket.
    fn poll_kernel_drops(&self) -> u64 {
        // SAFETY: tpacket_stats_v3 is plain old data; all-zero is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut libc::tpacket_stats_v3 as *mut c_void,
                &mut len,
            )
        };
        if rc == 0 {
            self.kernel_drops
                .set(self.kernel_drops.get() + st.tp_drops as u64);
        }
        self.kernel_drops.get()
    }

    /// Hands the current block back to the kernel and moves to the next.
    fn release_block(&mut self) {
        let c = &mut self.cursor;
        self.ring
            .status(c.block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        c.block = (c.block + 1) % self.ring.blocks;
        c.open = false;
        c.left = 0;
        c.off = 0;
    }
}

/// Maps an errno to the port error the core counts.
fn port_error(errno: i32) -> PortError {
    match errno {
        libc::ENETDOWN | libc::ENXIO | libc::ENODEV => PortError::LinkDown,
        e => PortError::Backend(e),
    }
}

impl Port for AfPacketPort {
    type Buf = HeapBuf;

    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            name: format!("af_packet:{}", self.ifname),
            max_frame: self.max_frame,
            tx_queues: 1,
            rx_queues: 1,
            link_rate_bps: self.link_rate_bps,
            reports_tx_completion: false,
        }
    }

    #[inline]
    fn alloc_tx(&mut self) -> Option<HeapBuf> {
        let b = self.pool.alloc();
        if b.is_none() {
            self.stats.alloc_failures += 1;
        }
        b
    }

    fn tx_burst(&mut self, queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        if queue != 0 {
            return Err(PortError::NoSuchQueue(queue));
        }
        let mut sent = 0;
        while !batch.is_empty() {
            let n = batch.len().min(self.tx_batch);
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_BURST];
            // SAFETY: mmsghdr is plain old data (pointers and lengths); all-zero is valid.
            let mut msgs: [libc::mmsghdr; MAX_BURST] = unsafe { std::mem::zeroed() };
            for (i, buf) in batch.iter().take(n).enumerate() {
                let data = buf.data();
                iov[i].iov_base = data.as_ptr() as *mut c_void;
                iov[i].iov_len = data.len();
            }
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: msgs[..n] each point to one iovec in `iov`, which points into a buffer of
            // `batch`; all live on this frame across the call and the kernel only reads them
            // (it writes msg_len). No address: the bound socket sends on its interface.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc < 0 {
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno == libc::EINTR {
                    continue;
                }
                if matches!(errno, libc::EAGAIN | libc::ENOBUFS) {
                    self.tx_full += 1;
                    break;
                }
                if sent > 0 {
                    break; // report what was sent; the error comes back on the next call
                }
                return Err(port_error(errno));
            }
            let k = rc as usize;
            for buf in batch.drain(..k) {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += buf.len() as u64;
            }
            sent += k;
            if k < n {
                self.tx_full += 1;
                break;
            }
        }
        if let (Some(m), true) = (&self.member, sent > 0) {
            m.publish_tx(&self.stats);
        }
        Ok(sent)
    }

    fn rx_burst(&mut self, queue: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        if queue != 0 {
            return Err(PortError::NoSuchQueue(queue));
        }
        let block_size = self.ring.block_size;
        let before = batch.len();
        let rx_before = self.stats.rx_packets;
        if let Some(m) = &self.member {
            m.take_handed(batch);
        }
        while !batch.is_full() {
            let b = self.cursor.block;
            if !self.cursor.open {
                if self.ring.status(b).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break; // the kernel still fills it
                }
                self.cursor.open = true;
                self.cursor.left = self.ring.block_u32(b, NUM_PKTS_OFF);
                self.cursor.off = self.ring.block_u32(b, FIRST_PKT_OFF) as usize;
            }
            if self.cursor.left == 0 {
                self.release_block();
                continue;
            }
            let off = self.cursor.off;
            if off + SLL_OFF + size_of::<libc::sockaddr_ll>() > block_size {
                // A corrupt offset: give the block back rather than read past it.
                self.stats.rx_dropped += self.cursor.left as u64;
                self.release_block();
                continue;
            }
            let block = self.ring.block(b);
            // SAFETY: off + size_of::<tpacket3_hdr>() ≤ off + SLL_OFF ≤ block_size (checked
            // above), the block belongs to user space, and read_unaligned accepts any alignment.
            let hdr: libc::tpacket3_hdr =
                unsafe { (block.as_ptr().add(off) as *const libc::tpacket3_hdr).read_unaligned() };
            // SAFETY: as above, for the sockaddr_ll right after the aligned header.
            let sll: libc::sockaddr_ll = unsafe {
                (block.as_ptr().add(off + SLL_OFF) as *const libc::sockaddr_ll).read_unaligned()
            };
            let mac = off + hdr.tp_mac as usize;
            let snap = hdr.tp_snaplen as usize;
            let mut take = true;
            if self.filter_outgoing && sll.sll_pkttype == libc::PACKET_OUTGOING {
                take = false;
            } else if mac + snap > block_size || snap < hdr.tp_len as usize || snap > self.max_frame
            {
                // Truncated or larger than our buffers (e.g. GRO/TSO super-frames): counted.
                self.stats.rx_dropped += 1;
                take = false;
            }
            if take {
                let Some(mut buf) = self.pool.alloc() else {
                    break; // no buffer: leave the frame in the ring for the next call
                };
                buf.buf_mut()[..snap].copy_from_slice(&block[mac..mac + snap]);
                buf.set_len(snap);
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += snap as u64;
                match &self.member {
                    // A frame of a channel whose receiver is on another core goes there.
                    Some(m) => {
                        if let Some(buf) = m.route(buf) {
                            batch.push(buf);
                        }
                    }
                    None => batch.push(buf),
                }
            }
            self.cursor.left -= 1;
            self.cursor.off = off + hdr.tp_next_offset as usize;
            if self.cursor.left == 0 {
                self.release_block();
            }
        }
        if let (Some(m), true) = (&self.member, self.stats.rx_packets != rx_before) {
            m.publish_rx(&self.stats);
        }
        Ok(batch.len() - before)
    }

    fn stats(&self) -> PortStats {
        let mut s = self.stats;
        s.rx_dropped += self.poll_kernel_drops();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_named_before_any_syscall() {
        let cases = [
            (
                AfPacketConfig {
                    rx_block_size: 1000,
                    ..AfPacketConfig::default()
                },
                "rx_block_size",
            ),
            (
                AfPacketConfig {
                    frame_size: 2050,
                    ..AfPacketConfig::default()
                },
                "frame_size",
            ),
            (
                AfPacketConfig {
                    tx_batch: 0,
                    ..AfPacketConfig::default()
                },
                "tx_batch",
            ),
            (
                AfPacketConfig {
                    rx_blocks: 0,
                    ..AfPacketConfig::default()
                },
                "rx_blocks",
            ),
        ];
        for (cfg, field) in cases {
            let e = AfPacketPort::open("veth0", cfg).unwrap_err();
            assert!(matches!(e, AfPacketError::Config { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains("veth0") && text.contains(field), "{text}");
        }
        let e = AfPacketPort::open("a-name-far-too-long", AfPacketConfig::default()).unwrap_err();
        assert!(e.to_string().contains("interface name"), "{e}");
    }

    #[test]
    fn a_missing_interface_names_the_interface_and_the_call() {
        // Without CAP_NET_RAW the socket call fails (EPERM); with it, the index lookup does
        // (ENODEV). Either way the error says which interface and which call.
        let e = AfPacketPort::open("rtchan-none0", AfPacketConfig::default()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("rtchan-none0"), "{text}");
        assert!(
            text.contains("socket(") || text.contains("SIOCGIFINDEX"),
            "{text}"
        );
        assert!(text.contains("os error"), "errno text: {text}");
    }
}
