//! Shared-memory channel rings: one region per channel direction, mapped by the daemon and by
//! the application's process, carrying messages with no syscall and no copy by the daemon.
//!
//! # Data flow
//! A region holds a descriptor ring, a free ring and the channel's message buffers. The
//! **producer** takes a buffer index from the free ring, writes the message into that buffer,
//! writes a descriptor (buffer index, length, time stamps) at the ring's tail and publishes the
//! tail with a release store (one store for a whole batch). The **consumer** reads the tail
//! with an acquire load, reads each descriptor at its head, validates it, uses the buffer, and
//! gives the buffer index back on the free ring when done. On the submit path the application
//! produces and the polling core consumes ([`SubmitDesc`]); on the receive path the core
//! produces into the receiving application's ring ([`DeliverDesc`]).
//!
//! # Layout (every offset a multiple of [`LINE`] bytes)
//! ```text
//! 0        header      written once by the creator, read-only after: magic, version, sizes
//! LINE     producer    tail, woken_seq, free_head, wake word (written by the producer only)
//! 2·LINE   consumer    head, free_tail, sleep_seq  (written by the consumer only)
//! 3·LINE   daemon      closed, invalid             (written by the daemon only, never read back)
//! 4·LINE   descriptors slots × desc_size (slots a power of two ≥ max_queued)
//!          free ring   free_slots × 4 bytes (a power of two ≥ nbufs), buffer indices
//!          buffers     nbufs × buf_stride (mmax rounded up to 64 bytes)
//! ```
//! The producer's and the consumer's lines are [`LINE`] (128) bytes apart, two cache lines, so
//! neither side's stores invalidate the other's line, nor its adjacent-line prefetch pair.
//! Each side keeps its own indices in process memory and only *publishes* them to its line;
//! it never reads its own line back, so whatever the other process writes there changes
//! nothing for it.
//!
//! # Invariants (positions are u64 counters that never wrap in practice)
//! 1. Only the producer writes `tail` and descriptors; only the consumer writes `head`,
//!    `free_tail` and free-ring entries. The creator writes the header once, before sharing.
//! 2. `head ≤ tail ≤ head + max_queued`: the producer writes a slot only when it is free.
//!    `max_queued` is the channel's capacity, plus one for drop-oldest channels (see 6).
//! 3. A descriptor is written before the `tail` store that covers it (`Release`); the consumer
//!    loads `tail` with `Acquire` before reading descriptors and buffers below it. Likewise
//!    a buffer's index goes on the free ring before the `free_tail` store (`Release`) and the
//!    producer loads `free_tail` with `Acquire` before reusing the buffer.
//! 4. The consumer loads each descriptor once, copies it, and validates the copy: `buf < nbufs`,
//!    `len ≤ mmax`, and `buf` not already held by the consumer (a private bitmap). A bad
//!    descriptor is skipped and counted ([`Event::Invalid`]); its buffer is not returned. A
//!    `tail` beyond `head + max_queued` poisons the ring: counted once, the ring is closed and
//!    nothing more is read from it. The producer, likewise, bounds-checks every free-ring
//!    entry. So a process writing garbage anywhere in the region can only make its own
//!    channel's messages wrong or lost; no index read from shared memory is used unchecked.
//! 5. Each side caches the other's index (`cached_head`, `cached_tail`, `cached_free_tail`)
//!    and reloads it only when the cached value says full or empty, so a steady stream costs
//!    one shared-line transfer per batch, not per message.
//! 6. Drop-oldest: the producer may publish one descriptor beyond the capacity (it has one
//!    buffer more for it); the consumer drops the oldest queued descriptors down to the
//!    capacity before taking one ([`Event::DroppedOldest`]). The producer cannot move `head`,
//!    which stays single-writer.
//! 7. Sleep and wake (receive rings): a consumer about to sleep reads the producer's wake
//!    word, bumps `sleep_seq`, issues a `SeqCst` fence and re-checks the ring, then waits on
//!    the wake word (`FUTEX_WAIT` while it still holds the value read); the producer
//!    publishes, issues a `SeqCst` fence and reads `sleep_seq`: when it differs from its
//!    `woken_seq` it stores it, bumps the wake word and wakes its waiters (`FUTEX_WAKE`). Each
//!    side writes before it reads (a Dekker pair), so a message published while the consumer
//!    goes to sleep is seen by one side or the other; a bump after the consumer read the word
//!    makes its wait return at once. The wake is a futex on the shared page, not an fd the
//!    other process could make blocking: `FUTEX_WAKE` never blocks, whatever the consumer
//!    does, so the polling core cannot be held by a client.
//!
//! 8. The daemon line is the creator's (the daemon's) *publication* of its own state: the
//!    creating side keeps `closed` and the invalid count in process memory and only stores
//!    them to the line; it never loads them back, so a client writing that line (it maps the
//!    whole region) cannot reopen a channel the daemon closed, close one the daemon still
//!    serves, or change the counts the daemon reports. Only a mapping side (the client) reads
//!    the line, and it never writes it (its own closing and counting stay in its memory).
//!
//! 9. In-process drop-oldest (both ends in this process, a heap region: the in-process
//!    `Sender`): the producer may *evict* the oldest queued message when the ring is full. The
//!    consumer's head then has two writers, so each head position is claimed by a
//!    compare-and-swap `h → h + 1` on the consumer's private head ([`Consumer::new_evictable`]):
//!    the consumer claims a position before it uses the descriptor it read there, the producer
//!    claims it to take that descriptor's buffer for the new message
//!    ([`Producer::evict_oldest`]). Exactly one side wins each position, so each buffer keeps
//!    one owner; a descriptor read by the losing side is discarded. The producer reads the
//!    consumer's private head while evicting, never a lagging shared line, and keeps the
//!    largest head it has seen (heads only grow).
//!
//! Message bytes in a buffer may change under the reader if the other process misbehaves; they
//! are read as plain bytes (any value is valid), copied once by the consumer, and only that
//! channel's content can suffer.
//!
//! All `unsafe` of the rings is in this module (part of [`crate::sys`]).

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// `"RTCHRING"`: the first eight bytes of every region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RTCHRING");
/// Layout version; a region of another version is refused when mapped.
pub const VERSION: u32 = 2;
/// Distance between the region's shared lines: two 64-byte cache lines, so that the adjacent
/// line prefetcher never pairs the producer's line with the consumer's.
pub const LINE: usize = 128;
/// Largest buffer count a region may have (keeps the layout arithmetic far from overflow and
/// one region's memory bounded).
pub const MAX_BUFFERS: u32 = 1 << 20;
/// Largest message a region may carry (1 GiB, as admission's largest `max_message`).
pub const MAX_MMAX: u32 = 1 << 30;
/// Invalid descriptors one [`Consumer::take`] skips before giving up for now: bounds the work a
/// misbehaving producer can add to one take (each skip is a few loads and compares).
pub const INVALID_PER_TAKE: usize = 8;
/// Invalid free-ring entries one [`Producer::grant`] skips before giving up for now.
pub const INVALID_PER_GRANT: usize = 8;

const PAGE: usize = 4096;
const OFF_PRODUCER: usize = LINE;
const OFF_CONSUMER: usize = 2 * LINE;
const OFF_DAEMON: usize = 3 * LINE;
const OFF_DESCS: usize = 4 * LINE;

/// What kind of descriptor a region's ring carries.
pub trait Descriptor: Copy + Default + Send + Sync + 'static + sealed::Sealed {
    /// Stored in the header, checked when mapping.
    const KIND: u32;
    /// The buffer the message is in.
    fn buf(&self) -> u32;
    /// The message length.
    fn msg_len(&self) -> u32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SubmitDesc {}
    impl Sealed for super::DeliverDesc {}
}

/// A submitted message: application → polling core. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SubmitDesc {
    /// Buffer index.
    pub buf: u32,
    /// Message length.
    pub len: u32,
    /// Submit time (CLOCK_MONOTONIC ns), stamped by the application.
    pub submit_ts: u64,
}

impl Descriptor for SubmitDesc {
    const KIND: u32 = 1;
    fn buf(&self) -> u32 {
        self.buf
    }
    fn msg_len(&self) -> u32 {
        self.len
    }
}

/// [`DeliverDesc::flags`]: delivered after its end-to-end deadline.
pub const DELIVER_LATE: u32 = 1;

/// A delivered message: receiving core → application. 40 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DeliverDesc {
    /// Buffer index.
    pub buf: u32,
    /// Message length.
    pub len: u32,
    /// The channel's message sequence number.
    pub seq: u32,
    /// [`DELIVER_LATE`].
    pub flags: u32,
    /// Submit time at the sender (CLOCK_MONOTONIC ns).
    pub submit_ts: u64,
    /// Delivery time here (CLOCK_MONOTONIC ns).
    pub delivered_ts: u64,
    /// Absolute end-to-end deadline from the header (ℓ + D; 0 for best-effort).
    pub deadline: u64,
}

impl Descriptor for DeliverDesc {
    const KIND: u32 = 2;
    fn buf(&self) -> u32 {
        self.buf
    }
    fn msg_len(&self) -> u32 {
        self.len
    }
}

/// What a region is sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Largest message, bytes (≥ 1).
    pub mmax: u32,
    /// Messages the ring holds (≥ 1): the channel's buffer reservation.
    pub capacity: u32,
    /// Drop-oldest channel: one descriptor and one buffer of slack (invariant 6).
    pub drop_oldest: bool,
    /// The channel, recorded in the header for the client's checks.
    pub channel: u32,
}

/// Why a region could not be created or mapped.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A size out of range.
    #[error("ring parameters: {0}")]
    Params(String),
    /// The region does not describe a ring this build understands.
    #[error("not an rtchan ring: {0}")]
    BadRegion(String),
    /// A system call failed.
    #[error("{call}: {source}")]
    Os {
        /// What was called.
        call: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The producer or consumer end was already taken in this process.
    #[error("the {0} end of this ring is already in use")]
    EndTaken(&'static str),
}

fn os(call: &'static str) -> ShmError {
    ShmError::Os {
        call,
        source: std::io::Error::last_os_error(),
    }
}

/// The header line. Written once by the creator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    kind: u32,
    desc_size: u32,
    mmax: u32,
    nbufs: u32,
    capacity: u32,
    max_queued: u32,
    slots: u32,
    free_slots: u32,
    buf_stride: u32,
    free_off: u64,
    bufs_off: u64,
    len: u64,
    channel: u32,
    _pad: u32,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl Header {
    /// The layout for `p` with descriptors of `desc_size` bytes.
    fn layout(kind: u32, desc_size: usize, p: &Params) -> Result<Self, ShmError> {
        if p.mmax == 0 || p.mmax > MAX_MMAX {
            return Err(ShmError::Params(format!(
                "mmax {} is not in 1..={MAX_MMAX}",
                p.mmax
            )));
        }
        if p.capacity == 0 || p.capacity >= MAX_BUFFERS - 2 {
            return Err(ShmError::Params(format!(
                "capacity {} is not in 1..{}",
                p.capacity,
                MAX_BUFFERS - 2
            )));
        }
        let max_queued = p.capacity + u32::from(p.drop_oldest);
        // One buffer beyond the queue: the one the consumer holds while it works on it.
        let nbufs = max_queued + 1;
        let slots = max_queued.next_power_of_two();
        let free_slots = nbufs.next_power_of_two();
        let buf_stride = round_up(p.mmax as usize, 64);
        let free_off = round_up(OFF_DESCS + slots as usize * desc_size, LINE);
        let bufs_off = round_up(free_off + free_slots as usize * 4, LINE);
        let len = (bufs_off as u64)
            .checked_add(u64::from(nbufs) * buf_stride as u64)
            .filter(|&l| l <= (1u64 << 46))
            .ok_or_else(|| ShmError::Params("region too large".into()))?;
        Ok(Self {
            magic: MAGIC,
            version: VERSION,
            kind,
            desc_size: desc_size as u32,
            mmax: p.mmax,
            nbufs,
            capacity: p.capacity,
            max_queued,
            slots,
            free_slots,
            buf_stride: buf_stride as u32,
            free_off: free_off as u64,
            bufs_off: bufs_off as u64,
            len: round_up(len as usize, PAGE) as u64,
            channel: p.channel,
            _pad: 0,
        })
    }

    fn params(&self) -> Params {
        Params {
            mmax: self.mmax,
            capacity: self.capacity,
            drop_oldest: self.max_queued > self.capacity,
            channel: self.channel,
        }
    }
}

/// Where a region's memory comes from.
#[derive(Debug)]
enum Backing {
    /// `std::alloc` (in-process channels).
    Heap(std::alloc::Layout),
    /// A shared mapping of a memfd (kept open to hand to clients).
    Mapped(OwnedFd),
}

/// One channel direction's shared memory: header, lines, rings and buffers.
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    hdr: Header,
    backing: Backing,
    producer_taken: AtomicBool,
    consumer_taken: AtomicBool,
    /// This process created the region (the daemon; heap regions too): it publishes the
    /// daemon line and never reads it back (invariant 8).
    creator: bool,
    /// Closed as this process knows it (authoritative for the creator).
    closed_here: AtomicBool,
    /// Invalid entries this process counted (authoritative for the creator).
    invalid_here: AtomicU64,
}

// SAFETY: the region is plain memory; every access to the shared parts goes through atomics or
// through bounds-checked byte copies whose races can only produce wrong bytes (invariant 4),
// and the mapping is owned by the Region until it drops.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives no unsynchronised mutable access to process memory.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        match &self.backing {
            // SAFETY: `base` was returned by `alloc_zeroed` with exactly this layout.
            Backing::Heap(l) => unsafe { std::alloc::dealloc(self.base.as_ptr(), *l) },
            // SAFETY: `base..base+len` is the mapping made in `map`, unmapped once, here.
            Backing::Mapped(_) => unsafe {
                libc::munmap(self.base.as_ptr().cast(), self.hdr.len as usize);
            },
        }
    }
}

impl Region {
    /// Bytes a region for `p` takes (what [`Region::heap`] allocates), computed without
    /// allocating, so admission can refuse before anything is allocated.
    pub fn bytes_for<D: Descriptor>(p: &Params) -> Result<u64, ShmError> {
        Header::layout(D::KIND, std::mem::size_of::<D>(), p).map(|h| h.len)
    }

    /// A region in process memory (in-process channels and tests), pages pre-faulted.
    pub fn heap<D: Descriptor>(p: &Params) -> Result<Arc<Self>, ShmError> {
        let hdr = Header::layout(D::KIND, std::mem::size_of::<D>(), p)?;
        let layout = std::alloc::Layout::from_size_align(hdr.len as usize, PAGE)
            .map_err(|e| ShmError::Params(e.to_string()))?;
        // SAFETY: the layout has a non-zero size (at least the header lines).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| ShmError::Params("out of memory".into()))?;
        let r = Self {
            base,
            hdr,
            backing: Backing::Heap(layout),
            producer_taken: AtomicBool::new(false),
            consumer_taken: AtomicBool::new(false),
            creator: true,
            closed_here: AtomicBool::new(false),
            invalid_here: AtomicU64::new(0),
        };
        r.prefault();
        r.init();
        Ok(Arc::new(r))
    }

    /// A region in a sealed memfd (its size can never change again), mapped here; hand
    /// [`Region::fd`] to the client with `SCM_RIGHTS`.
    pub fn memfd<D: Descriptor>(p: &Params, name: &str) -> Result<Arc<Self>, ShmError> {
        let hdr = Header::layout(D::KIND, std::mem::size_of::<D>(), p)?;
        let cname = std::ffi::CString::new(name.replace('\0', "?")).expect("no NUL left");
        // SAFETY: `cname` is a valid C string; the flags are valid for memfd_create.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscalls on our fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), hdr.len as libc::off_t) } != 0 {
            return Err(os("ftruncate"));
        }
        // A client that could shrink the file would make the daemon's next access SIGBUS. The
        // seals are not sealed yet: `seal_writers` adds F_SEAL_FUTURE_WRITE once the client has
        // mapped the region (a writable mapping cannot be made after it).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(os("fcntl(F_ADD_SEALS)"));
        }
        let base = Self::map(&fd, hdr.len as usize)?;
        let r = Self {
            base,
            hdr,
            backing: Backing::Mapped(fd),
            producer_taken: AtomicBool::new(false),
            consumer_taken: AtomicBool::new(false),
            creator: true,
            closed_here: AtomicBool::new(false),
            invalid_here: AtomicU64::new(0),
        };
        r.init();
        Ok(Arc::new(r))
    }

    /// Seals a memfd region against every writer but the mappings already made: no new
    /// writable mapping, no `write(2)` and no hole punching (`fallocate(PUNCH_HOLE)`,
    /// `MADV_REMOVE`) from now on (`F_SEAL_FUTURE_WRITE`), and no seal added or removed after
    /// (`F_SEAL_SEAL`), then faults every page in again (a hole punched before the seal would
    /// otherwise still cost the polling core a page fault, which nothing charges). The daemon
    /// calls it once the client has mapped the ring. Fails when the client sealed the seals
    /// itself first. A heap region has no file: nothing to seal.
    pub fn seal_writers(&self) -> Result<(), ShmError> {
        let Backing::Mapped(fd) = &self.backing else {
            return Ok(());
        };
        let want =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: plain fcntl calls on our own fd.
        let (added, seals) = unsafe {
            (
                libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL,
                ),
                libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS),
            )
        };
        if added != 0 {
            return Err(os("fcntl(F_ADD_SEALS, F_SEAL_FUTURE_WRITE)"));
        }
        if seals < 0 || seals & want != want {
            return Err(ShmError::BadRegion(format!(
                "the memfd's seals are {seals:#x} after sealing, not {want:#x}"
            )));
        }
        // Holes punched before the seal are still holes: fault every page back in now, on the
        // control thread, so the polling core never takes a fault on this ring.
        // SAFETY: `base..base+len` is this region's own mapping; MADV_POPULATE_WRITE only
        // faults its pages in (writable, shared), it changes no byte.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().cast(),
                self.hdr.len as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            return Err(os("madvise(MADV_POPULATE_WRITE)"));
        }
        Ok(())
    }

    /// Maps a region received from the daemon, after checking its seals, size and header.
    pub fn from_fd<D: Descriptor>(fd: OwnedFd) -> Result<Arc<Self>, ShmError> {
        // SAFETY: plain syscall on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(os("fcntl(F_GET_SEALS)"));
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(ShmError::BadRegion(
                "the memfd is not sealed against shrinking".into(),
            ));
        }
        // SAFETY: `st` is a valid out-parameter for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os("fstat"));
        }
        let size = st.st_size as usize;
        if size < OFF_DESCS {
            return Err(ShmError::BadRegion(format!("{size} bytes is too small")));
        }
        let base = Self::map(&fd, size)?;
        // SAFETY: the mapping is at least OFF_DESCS ≥ size_of::<Header>() bytes, page-aligned;
        // Header is plain integers, any bit pattern is a value.
        let hdr: Header = unsafe { std::ptr::read_volatile(base.as_ptr().cast::<Header>()) };
        let unmap = || {
            // SAFETY: unmapping the mapping just made, which nothing else refers to.
            unsafe { libc::munmap(base.as_ptr().cast(), size) };
        };
        let expect = match Header::layout(D::KIND, std::mem::size_of::<D>(), &hdr.params()) {
            Ok(h) => h,
            Err(e) => {
                unmap();
                return Err(ShmError::BadRegion(e.to_string()));
            }
        };
        let why = if hdr.magic != MAGIC {
            Some("bad magic".to_string())
        } else if hdr.version != VERSION {
            Some(format!(
                "layout version {} (this build reads {VERSION})",
                hdr.version
            ))
        } else if hdr.kind != D::KIND {
            Some(format!("ring kind {} (expected {})", hdr.kind, D::KIND))
        } else if hdr != expect {
            Some("header sizes do not match its parameters".into())
        } else if hdr.len as usize != size {
            Some(format!(
                "header says {} bytes, the file has {size}",
                hdr.len
            ))
        } else {
            None
        };
        if let Some(w) = why {
            unmap();
            return Err(ShmError::BadRegion(w));
        }
        Ok(Arc::new(Self {
            base,
            hdr,
            backing: Backing::Mapped(fd),
            producer_taken: AtomicBool::new(false),
            consumer_taken: AtomicBool::new(false),
            creator: false,
            closed_here: AtomicBool::new(false),
            invalid_here: AtomicU64::new(0),
        }))
    }

    fn map(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>, ShmError> {
        // SAFETY: a new shared mapping of `len` bytes of our fd; the kernel picks the address.
        // MAP_POPULATE faults every page in now, so the polling core never takes a page fault.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        NonNull::new(p.cast::<u8>()).ok_or_else(|| os("mmap"))
    }

    fn prefault(&self) {
        let mut off = 0;
        while off < self.hdr.len as usize {
            // SAFETY: `off < len`; a volatile write of a zero byte into our zeroed memory.
            unsafe { self.base.as_ptr().add(off).write_volatile(0) };
            off += PAGE;
        }
    }

    /// Writes the header and puts every buffer on the free ring (creator only, before sharing).
    fn init(&self) {
        // SAFETY: the region is at least OFF_DESCS bytes; nobody else sees it yet.
        unsafe { std::ptr::write_volatile(self.base.as_ptr().cast::<Header>(), self.hdr) };
        for i in 0..self.hdr.nbufs {
            self.free_entry(u64::from(i)).store(i, Ordering::Relaxed);
        }
        self.atomic64(OFF_CONSUMER + CONS_FREE_TAIL)
            .store(u64::from(self.hdr.nbufs), Ordering::Release);
    }

    fn atomic64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= OFF_DESCS);
        // SAFETY: `off` is one of the fixed line offsets, 8-aligned and inside the region,
        // which lives as long as `self`; AtomicU64 has the layout of u64.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn atomic32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= OFF_DESCS);
        // SAFETY: as in `atomic64`, 4-aligned.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn free_entry(&self, pos: u64) -> &AtomicU32 {
        let i = (pos & u64::from(self.hdr.free_slots - 1)) as usize;
        // SAFETY: `i < free_slots`, so the entry is inside the free ring, 4-aligned
        // (free_off is a multiple of LINE).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.hdr.free_off as usize + i * 4)
                .cast::<AtomicU32>()
        }
    }

    fn desc_ptr<D: Descriptor>(&self, pos: u64) -> *mut D {
        debug_assert_eq!(std::mem::size_of::<D>(), self.hdr.desc_size as usize);
        let i = (pos & u64::from(self.hdr.slots - 1)) as usize;
        // SAFETY: `i < slots`: inside the descriptor array, 8-aligned (OFF_DESCS is a
        // multiple of LINE and descriptors are 16 or 40 bytes, of u32/u64 fields).
        unsafe {
            self.base
                .as_ptr()
                .add(OFF_DESCS + i * self.hdr.desc_size as usize)
        }
        .cast()
    }

    fn buf_ptr(&self, buf: u32) -> *mut u8 {
        assert!(buf < self.hdr.nbufs, "buffer index checked by the caller");
        // SAFETY: `buf < nbufs`: the buffer is inside the region.
        unsafe {
            self.base
                .as_ptr()
                .add(self.hdr.bufs_off as usize + buf as usize * self.hdr.buf_stride as usize)
        }
    }

    /// The memfd to hand to a client (none for heap regions).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backing {
            Backing::Mapped(fd) => Some(fd.as_fd()),
            Backing::Heap(_) => None,
        }
    }

    /// What the region was sized for.
    pub fn params(&self) -> Params {
        self.hdr.params()
    }

    /// Bytes of memory the region takes.
    pub fn len(&self) -> usize {
        self.hdr.len as usize
    }

    /// Never: a region always has its header lines.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Messages published and not yet taken, as the shared lines say (a snapshot for
    /// statistics; clamped to the queue's bounds).
    pub fn queued(&self) -> u64 {
        let tail = self
            .atomic64(OFF_PRODUCER + PROD_TAIL)
            .load(Ordering::Acquire);
        let head = self
            .atomic64(OFF_CONSUMER + CONS_HEAD)
            .load(Ordering::Acquire);
        tail.wrapping_sub(head).min(u64::from(self.hdr.max_queued))
    }

    /// Marks the channel closed. The creator (the daemon) also publishes it on the daemon
    /// line, where the other process sees it; a mapping side only notes it for itself.
    pub fn close(&self) {
        self.closed_here.store(true, Ordering::Release);
        if self.creator {
            self.atomic32(OFF_DAEMON + DAEMON_CLOSED)
                .store(1, Ordering::Release);
        }
    }

    /// True once closed: for the creator only by its own [`Region::close`] (or a poisoned
    /// ring), never by what the daemon line says (invariant 8); for a mapping side also when
    /// the daemon published it.
    pub fn is_closed(&self) -> bool {
        self.closed_here.load(Ordering::Acquire)
            || (!self.creator
                && self
                    .atomic32(OFF_DAEMON + DAEMON_CLOSED)
                    .load(Ordering::Acquire)
                    != 0)
    }

    /// Invalid descriptors or entries counted in this ring: the creator's own count, or, on a
    /// mapping side, what the daemon published.
    pub fn invalid(&self) -> u64 {
        if self.creator {
            self.invalid_here.load(Ordering::Relaxed)
        } else {
            self.atomic64(OFF_DAEMON + DAEMON_INVALID)
                .load(Ordering::Relaxed)
        }
    }

    fn count_invalid(&self) {
        // One consumer thread counts (see `Consumer`): a plain load and store suffice.
        let n = self.invalid_here.load(Ordering::Relaxed).wrapping_add(1);
        self.invalid_here.store(n, Ordering::Relaxed);
        if self.creator {
            self.atomic64(OFF_DAEMON + DAEMON_INVALID)
                .store(n, Ordering::Relaxed);
        }
    }

    /// Writes raw bytes at `offset` (tests: what a misbehaving process could do to its
    /// mapping). Panics when the bytes are not inside the region.
    ///
    /// # Safety
    /// No other thread of this process may access these bytes during the call (a plain store
    /// racing with this process's atomics is a data race). Another process writing them is
    /// what the ring is built to survive (invariant 4); within one process, call it only
    /// while no ring end is in use on another thread.
    #[doc(hidden)]
    pub unsafe fn scribble(&self, offset: usize, bytes: &[u8]) {
        assert!(offset
            .checked_add(bytes.len())
            .is_some_and(|end| end <= self.len()));
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: inside the region (checked above); the caller excludes concurrent
            // accesses from this process.
            unsafe { self.base.as_ptr().add(offset + i).write_volatile(b) };
        }
    }

    /// Offsets of the shared parts (tests and docs): (producer line, consumer line,
    /// descriptors, free ring, buffers).
    #[doc(hidden)]
    pub fn offsets(&self) -> (usize, usize, usize, usize, usize) {
        (
            OFF_PRODUCER,
            OFF_CONSUMER,
            OFF_DESCS,
            self.hdr.free_off as usize,
            self.hdr.bufs_off as usize,
        )
    }
}

const PROD_TAIL: usize = 0;
const PROD_WOKEN_SEQ: usize = 8;
const PROD_FREE_HEAD: usize = 16;
const PROD_WAKE: usize = 24;
const CONS_HEAD: usize = 0;
const CONS_FREE_TAIL: usize = 8;
const CONS_SLEEP_SEQ: usize = 16;
const DAEMON_CLOSED: usize = 0;
const DAEMON_INVALID: usize = 8;

/// Something a ring end noticed (for the owner's counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A descriptor or free-ring entry failed validation and was skipped.
    Invalid(Invalid),
    /// The oldest queued message was dropped (drop-oldest, invariant 6).
    DroppedOldest,
}

/// What was wrong with an entry read from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A buffer index ≥ the region's buffer count.
    BufferIndex,
    /// A length above Mmax.
    Length,
    /// A buffer the reading side already holds.
    Outstanding,
    /// The other side's index is outside the ring's bounds: the ring is poisoned and closed.
    Index,
}

/// The producing end. One per region per process (taken once).
#[derive(Debug)]
pub struct Producer<D: Descriptor> {
    region: Arc<Region>,
    tail: u64,
    published: u64,
    cached_head: u64,
    free_head: u64,
    cached_free_tail: u64,
    woken_seq: u64,
    _d: PhantomData<D>,
}

impl<D: Descriptor> Producer<D> {
    /// Takes the producing end of `region`.
    pub fn new(region: Arc<Region>) -> Result<Self, ShmError> {
        if region.hdr.kind != D::KIND {
            return Err(ShmError::BadRegion("descriptor kind".into()));
        }
        if region.producer_taken.swap(true, Ordering::AcqRel) {
            return Err(ShmError::EndTaken("producer"));
        }
        // The creator's producer is the region's first (one end per process): it starts from
        // the fresh ring, never from its line, which the other process could have written
        // since the fd was handed over. A producer taking over a region in another process
        // (a client re-attaching) continues where the last one published; what it had not
        // published is lost to this channel only.
        let line = |off: usize| {
            if region.creator {
                0
            } else {
                region.atomic64(OFF_PRODUCER + off).load(Ordering::Acquire)
            }
        };
        let (tail, free_head, woken_seq) =
            (line(PROD_TAIL), line(PROD_FREE_HEAD), line(PROD_WOKEN_SEQ));
        Ok(Self {
            tail,
            published: tail,
            cached_head: tail,
            free_head,
            cached_free_tail: free_head,
            woken_seq,
            region,
            _d: PhantomData,
        })
    }

    /// The region.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Largest message.
    pub fn mmax(&self) -> u32 {
        self.region.hdr.mmax
    }

    /// The capacity (the channel's buffer, without drop-oldest's slack).
    pub fn capacity(&self) -> u32 {
        self.region.hdr.capacity
    }

    /// Descriptors pushed and not yet taken by the consumer (reloads the head when the
    /// cached one says the ring is full). A head outside the ring's bounds reads as full.
    #[inline]
    pub fn queued(&mut self) -> u64 {
        let max = u64::from(self.region.hdr.max_queued);
        let q = self.tail.wrapping_sub(self.cached_head);
        if q < u64::from(self.region.hdr.capacity) {
            return q;
        }
        let head = self
            .region
            .atomic64(OFF_CONSUMER + CONS_HEAD)
            .load(Ordering::Acquire);
        // In process (a heap ring, where the producer may evict: invariant 9) the line can lag
        // behind a head this producer moved itself, and must not make the ring look fuller.
        // Across processes the line is the only word: a head the other side wrote wrongly is
        // not kept beyond its next store.
        self.cached_head = if self.region.fd().is_none() {
            self.cached_head.max(head)
        } else {
            head
        };
        let q = self.tail.wrapping_sub(self.cached_head);
        if q > max {
            // The consumer's head is not between our tail and tail - max: it misbehaves.
            return max;
        }
        q
    }

    /// Room for this many more descriptors (up to `max_queued`). Whether there is room at all
    /// is exact; a larger figure may be less than the real room, since the consumer's head is
    /// reloaded only when the cached view says full (invariant 5): wait for `room() > 0`, one
    /// descriptor at a time, never for `room() >= k`.
    #[inline]
    pub fn room(&mut self) -> u64 {
        u64::from(self.region.hdr.max_queued) - self.queued()
    }

    /// Takes a free buffer for the next message; `None` when every buffer is out. Entries
    /// outside the buffer range are skipped and reported.
    #[inline]
    pub fn grant(&mut self, mut on: impl FnMut(Event)) -> Option<u32> {
        for _ in 0..INVALID_PER_GRANT {
            if self.free_head == self.cached_free_tail {
                self.cached_free_tail = self
                    .region
                    .atomic64(OFF_CONSUMER + CONS_FREE_TAIL)
                    .load(Ordering::Acquire);
                let avail = self.cached_free_tail.wrapping_sub(self.free_head);
                if avail == 0 {
                    return None;
                }
                if avail > u64::from(self.region.hdr.free_slots) {
                    // Garbage: resynchronise on what the consumer claims and report it.
                    on(Event::Invalid(Invalid::Index));
                    self.free_head = self
                        .cached_free_tail
                        .wrapping_sub(u64::from(self.region.hdr.nbufs));
                }
            }
            let b = self
                .region
                .free_entry(self.free_head)
                .load(Ordering::Relaxed);
            self.free_head = self.free_head.wrapping_add(1);
            if b < self.region.hdr.nbufs {
                return Some(b);
            }
            on(Event::Invalid(Invalid::BufferIndex));
        }
        None
    }

    /// The buffer `buf` (from [`Producer::grant`]), `mmax` bytes, to write the message into.
    #[inline]
    pub fn buffer_mut(&mut self, buf: u32) -> &mut [u8] {
        let p = self.region.buf_ptr(buf);
        // SAFETY: `buf < nbufs` (asserted in buf_ptr): the buffer's `mmax` bytes are inside
        // the region, which `self` keeps alive; `&mut self` keeps this process from
        // aliasing it through this producer. The other process may misbehave and write it
        // concurrently, which can only make this channel's bytes wrong (invariant 4).
        unsafe { std::slice::from_raw_parts_mut(p, self.region.hdr.mmax as usize) }
    }

    /// Writes `d` at the tail (not visible until [`Producer::publish`]). The caller checked
    /// [`Producer::room`].
    #[inline]
    pub fn push(&mut self, d: D) {
        debug_assert!(
            self.tail.wrapping_sub(self.cached_head) < u64::from(self.region.hdr.max_queued)
        );
        let p = self.region.desc_ptr::<D>(self.tail);
        // SAFETY: `p` is an aligned slot inside the descriptor array (desc_ptr masks the
        // position); a volatile store because the other process reads it.
        unsafe { p.write_volatile(d) };
        self.tail = self.tail.wrapping_add(1);
    }

    /// Drop-oldest in process (invariant 9): claims the oldest queued message away from
    /// `consumer` (this region's consuming end, made with [`Consumer::new_evictable`]) and
    /// returns its buffer, now this producer's, for the next message; its descriptor's slot
    /// is free for [`Producer::push`]. `None` when the ring is not full (the consumer took a
    /// message meanwhile: [`Producer::grant`] has a buffer then) or `consumer` is not
    /// evictable.
    pub fn evict_oldest(&mut self, consumer: &Consumer<D>) -> Option<u32> {
        if !consumer.evictable || !Arc::ptr_eq(&self.region, &consumer.region) {
            return None;
        }
        let head = consumer.head.load(Ordering::Acquire);
        self.cached_head = self.cached_head.max(head);
        if self.tail.wrapping_sub(head) < u64::from(self.region.hdr.capacity) {
            return None;
        }
        // SAFETY: `desc_ptr` masks the position into the descriptor array; this producer
        // wrote the descriptor itself (both ends are in this process), D is plain integers.
        let d: D = unsafe { self.region.desc_ptr::<D>(head).read_volatile() };
        consumer
            .head
            .compare_exchange(
                head,
                head.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()?;
        self.cached_head = head.wrapping_add(1);
        // Written by this producer, so in range; checked anyway, never trusted.
        (d.buf() < self.region.hdr.nbufs).then_some(d.buf())
    }

    /// Makes every pushed descriptor visible: one release store (invariant 3).
    #[inline]
    pub fn publish(&mut self) {
        if self.published != self.tail {
            self.region
                .atomic64(OFF_PRODUCER + PROD_FREE_HEAD)
                .store(self.free_head, Ordering::Relaxed);
            self.region
                .atomic64(OFF_PRODUCER + PROD_TAIL)
                .store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }

    /// [`Producer::publish`], then whether the consumer asked to be woken since the last
    /// signal (invariant 7): if so the caller signals its eventfd.
    #[inline]
    pub fn publish_and_check_wake(&mut self) -> bool {
        self.publish();
        fence(Ordering::SeqCst);
        let s = self
            .region
            .atomic64(OFF_CONSUMER + CONS_SLEEP_SEQ)
            .load(Ordering::Relaxed);
        if s == self.woken_seq {
            return false;
        }
        self.woken_seq = s;
        self.region
            .atomic64(OFF_PRODUCER + PROD_WOKEN_SEQ)
            .store(s, Ordering::Relaxed);
        true
    }

    /// Wakes a consumer sleeping in [`Consumer::sleep`] (invariant 7; after
    /// [`Producer::publish_and_check_wake`] said so): bumps the wake word and wakes its
    /// waiters. One syscall that never blocks.
    #[inline]
    pub fn wake_consumer(&mut self) {
        let w = self.region.atomic32(OFF_PRODUCER + PROD_WAKE);
        w.store(w.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        futex_wake(w);
    }

    /// True once the daemon closed the channel.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.region.is_closed()
    }
}

/// A validated descriptor the consumer took: its buffer is the consumer's until
/// [`Consumer::release`], which consumes it (neither `Clone` nor `Copy`: one release per take).
#[derive(Debug, PartialEq, Eq)]
pub struct Taken<D> {
    /// The descriptor as read (validated: `buf < nbufs`, `len ≤ mmax`).
    pub desc: D,
}

/// The consuming end. Its indices live in this process (relaxed atomics, so `&self` methods
/// can be called from whichever thread consumes); one thread consumes at a time: two
/// concurrent consumers would see wrong messages, never touch memory out of bounds.
#[derive(Debug)]
pub struct Consumer<D: Descriptor> {
    region: Arc<Region>,
    head: AtomicU64,
    cached_tail: AtomicU64,
    free_tail: AtomicU64,
    poisoned: AtomicBool,
    /// The producer may evict (invariant 9): positions are claimed by compare-and-swap.
    evictable: bool,
    /// Bit per buffer: held by this consumer (taken, not yet released).
    held: Box<[AtomicU64]>,
    _d: PhantomData<D>,
}

impl<D: Descriptor> Consumer<D> {
    /// Takes the consuming end of `region`.
    pub fn new(region: Arc<Region>) -> Result<Self, ShmError> {
        Self::with_eviction(region, false)
    }

    /// Takes the consuming end of a heap region whose producer, in this process, may evict
    /// the oldest message (invariant 9; the in-process drop-oldest `Sender`). A memfd region
    /// is refused: another process cannot take part in the claims.
    pub fn new_evictable(region: Arc<Region>) -> Result<Self, ShmError> {
        if region.fd().is_some() {
            return Err(ShmError::BadRegion(
                "eviction needs both ends in this process (a heap region)".into(),
            ));
        }
        Self::with_eviction(region, true)
    }

    fn with_eviction(region: Arc<Region>, evictable: bool) -> Result<Self, ShmError> {
        if region.hdr.kind != D::KIND {
            return Err(ShmError::BadRegion("descriptor kind".into()));
        }
        if region.consumer_taken.swap(true, Ordering::AcqRel) {
            return Err(ShmError::EndTaken("consumer"));
        }
        let head = region
            .atomic64(OFF_CONSUMER + CONS_HEAD)
            .load(Ordering::Acquire);
        let free_tail = region
            .atomic64(OFF_CONSUMER + CONS_FREE_TAIL)
            .load(Ordering::Acquire);
        let words = (region.hdr.nbufs as usize).div_ceil(64);
        Ok(Self {
            head: AtomicU64::new(head),
            cached_tail: AtomicU64::new(head),
            free_tail: AtomicU64::new(free_tail),
            poisoned: AtomicBool::new(false),
            evictable,
            held: (0..words).map(|_| AtomicU64::new(0)).collect(),
            region,
            _d: PhantomData,
        })
    }

    /// The region.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Messages published and not yet taken; reloads the tail. A tail outside the ring's
    /// bounds poisons the ring (invariant 4) and reads as empty.
    #[inline]
    pub fn available(&self, mut on: impl FnMut(Event)) -> u64 {
        if self.poisoned.load(Ordering::Relaxed) {
            return 0;
        }
        let head = self.head.load(Ordering::Acquire);
        let tail = self
            .region
            .atomic64(OFF_PRODUCER + PROD_TAIL)
            .load(Ordering::Acquire);
        let n = tail.wrapping_sub(head);
        if self.evictable {
            // Both ends are ours (invariant 9): the producer may have evicted past the tail
            // read here; nothing to poison, look again next time.
            let n = if head > tail { 0 } else { n };
            self.cached_tail.store(tail, Ordering::Relaxed);
            return n;
        }
        if n > u64::from(self.region.hdr.max_queued) {
            self.poisoned.store(true, Ordering::Relaxed);
            self.region.count_invalid();
            self.region.close();
            on(Event::Invalid(Invalid::Index));
            return 0;
        }
        self.cached_tail.store(tail, Ordering::Relaxed);
        n
    }

    /// Whether anything is published beyond the head (one shared load; no validation).
    #[inline]
    pub fn has_new(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed)
            && self
                .region
                .atomic64(OFF_PRODUCER + PROD_TAIL)
                .load(Ordering::Relaxed)
                != self.head.load(Ordering::Relaxed)
    }

    /// Takes the next valid descriptor, if any: drops the oldest down to the capacity first
    /// (drop-oldest rings), skips at most [`INVALID_PER_TAKE`] invalid ones (reported).
    #[inline]
    pub fn take(&self, mut on: impl FnMut(Event)) -> Option<Taken<D>> {
        if self.evictable {
            return self.take_claimed(on);
        }
        let mut head = self.head.load(Ordering::Relaxed);
        let mut avail = self.cached_tail.load(Ordering::Relaxed).wrapping_sub(head);
        if avail == 0 {
            avail = self.available(&mut on);
            if avail == 0 {
                return None;
            }
        }
        let cap = u64::from(self.region.hdr.capacity);
        let mut skipped = 0;
        let mut out = None;
        while avail > 0 {
            // SAFETY: `desc_ptr` masks the position into the descriptor array; D is plain
            // integers (any bit pattern is a value); read once, then only the copy is used.
            let d: D = unsafe { self.region.desc_ptr::<D>(head).read_volatile() };
            head = head.wrapping_add(1);
            avail -= 1;
            if let Some(why) = self.invalid(&d) {
                self.region.count_invalid();
                on(Event::Invalid(why));
                skipped += 1;
                if skipped >= INVALID_PER_TAKE {
                    break;
                }
                continue;
            }
            if avail >= cap {
                // Drop-oldest's slack is in use: this one is the oldest and goes (inv. 6).
                self.set_held(d.buf(), true);
                self.give_back(d.buf());
                on(Event::DroppedOldest);
                continue;
            }
            self.set_held(d.buf(), true);
            out = Some(Taken { desc: d });
            break;
        }
        self.head.store(head, Ordering::Relaxed);
        self.region
            .atomic64(OFF_CONSUMER + CONS_HEAD)
            .store(head, Ordering::Release);
        if out.is_some() || avail == 0 {
            self.flush_free();
        }
        out
    }

    /// [`Consumer::take`] when the producer may evict (invariant 9): each position is claimed
    /// by compare-and-swap before its descriptor is used; a lost claim means the producer
    /// evicted it, and the next position is tried. Lock-free: every lost claim is an eviction
    /// the producer completed, one per submit at most.
    fn take_claimed(&self, mut on: impl FnMut(Event)) -> Option<Taken<D>> {
        let mut skipped = 0;
        loop {
            let head = self.head.load(Ordering::Acquire);
            if head >= self.cached_tail.load(Ordering::Relaxed) && self.available(&mut on) == 0 {
                return None;
            }
            // SAFETY: as in `take`; the copy is used only if the claim below succeeds, so a
            // slot the producer reused after evicting it is never acted on.
            let d: D = unsafe { self.region.desc_ptr::<D>(head).read_volatile() };
            if self
                .head
                .compare_exchange(
                    head,
                    head.wrapping_add(1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                continue; // evicted by the producer: the next one
            }
            self.region
                .atomic64(OFF_CONSUMER + CONS_HEAD)
                .store(head.wrapping_add(1), Ordering::Release);
            if let Some(why) = self.invalid(&d) {
                self.region.count_invalid();
                on(Event::Invalid(why));
                skipped += 1;
                if skipped >= INVALID_PER_TAKE {
                    return None;
                }
                continue;
            }
            self.set_held(d.buf(), true);
            self.flush_free();
            return Some(Taken { desc: d });
        }
    }

    /// What is wrong with descriptor `d` read from shared memory, if anything (invariant 4).
    #[inline]
    fn invalid(&self, d: &D) -> Option<Invalid> {
        if d.buf() >= self.region.hdr.nbufs {
            Some(Invalid::BufferIndex)
        } else if d.msg_len() > self.region.hdr.mmax {
            Some(Invalid::Length)
        } else if self.is_held(d.buf()) {
            Some(Invalid::Outstanding)
        } else {
            None
        }
    }

    /// The bytes of a taken message (valid until it is released).
    #[inline]
    pub fn bytes(&self, t: &Taken<D>) -> &[u8] {
        let p = self.region.buf_ptr(t.desc.buf());
        // SAFETY: `buf < nbufs` and `len ≤ mmax` were validated at take; the slice is inside
        // the region, which `self` keeps alive. The other process may write these bytes
        // concurrently if it misbehaves: plain bytes, any value valid (invariant 4).
        unsafe { std::slice::from_raw_parts(p, t.desc.msg_len() as usize) }
    }

    /// Gives a taken message's buffer back to the producer (published at once).
    #[inline]
    pub fn release(&self, t: Taken<D>) {
        self.give_back(t.desc.buf());
        self.flush_free();
    }

    fn give_back(&self, buf: u32) {
        if !self.is_held(buf) {
            return; // not ours (a stale copy): never hand a buffer back twice
        }
        self.set_held(buf, false);
        let ft = self.free_tail.load(Ordering::Relaxed);
        self.region.free_entry(ft).store(buf, Ordering::Relaxed);
        self.free_tail.store(ft.wrapping_add(1), Ordering::Relaxed);
    }

    fn flush_free(&self) {
        self.region
            .atomic64(OFF_CONSUMER + CONS_FREE_TAIL)
            .store(self.free_tail.load(Ordering::Relaxed), Ordering::Release);
    }

    fn is_held(&self, buf: u32) -> bool {
        self.held[buf as usize / 64].load(Ordering::Relaxed) & (1 << (buf % 64)) != 0
    }

    fn set_held(&self, buf: u32, on: bool) {
        let w = &self.held[buf as usize / 64];
        let bit = 1u64 << (buf % 64);
        let v = w.load(Ordering::Relaxed);
        w.store(if on { v | bit } else { v & !bit }, Ordering::Relaxed);
    }

    /// Invariant 7, the consumer's half: asks to be woken, then re-checks the ring. Returns
    /// true when the ring is still empty (sleep now); false when a message raced in.
    pub fn prepare_sleep(&self) -> bool {
        let s = self.region.atomic64(OFF_CONSUMER + CONS_SLEEP_SEQ);
        s.store(s.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.available(|_| {}) == 0
    }

    /// Sleeps until the producer wakes this consumer or `timeout_ms` passed (invariant 7),
    /// unless a message is there already. Returns whether it slept.
    pub fn sleep(&self, timeout_ms: u32) -> bool {
        let w = self.region.atomic32(OFF_PRODUCER + PROD_WAKE);
        let seen = w.load(Ordering::Acquire);
        if !self.prepare_sleep() {
            return false;
        }
        futex_wait(w, seen, timeout_ms);
        true
    }

    /// True once the daemon closed the channel (or the ring was poisoned).
    pub fn is_closed(&self) -> bool {
        self.region.is_closed()
    }

    /// Whether the ring was poisoned by an out-of-bounds tail.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }
}

/// `FUTEX_WAKE` on a word of a shared mapping (not `FUTEX_PRIVATE_FLAG`: the waiter is in
/// another process, mapping the same page): wakes every waiter; never blocks.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: the address is a live, aligned u32 of this mapping; FUTEX_WAKE only reads the
    // futex key of the address and wakes waiters; the result (how many) is not needed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            0usize,
            0u32,
        )
    };
}

/// `FUTEX_WAIT` on a word of a shared mapping while it holds `expected`, at most `timeout_ms`
/// (woken, timed out, interrupted, or the word already changed: all return).
fn futex_wait(word: &AtomicU32, expected: u32, timeout_ms: u32) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::from(timeout_ms / 1000),
        tv_nsec: libc::c_long::from(timeout_ms % 1000) * 1_000_000,
    };
    // SAFETY: as in `futex_wake`; `ts` is a valid relative timeout for the call's duration.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            0usize,
            0u32,
        )
    };
}

/// Whether the peer of a connected stream socket hung up: a zero-timeout poll for
/// `POLLRDHUP`/`POLLHUP`/`POLLERR` (the client library's daemon-death check).
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(capacity: u32, drop_oldest: bool) -> Params {
        Params {
            mmax: 100,
            capacity,
            drop_oldest,
            channel: 7,
        }
    }

    fn pair(capacity: u32, drop_oldest: bool) -> (Producer<SubmitDesc>, Consumer<SubmitDesc>) {
        let r = Region::heap::<SubmitDesc>(&params(capacity, drop_oldest)).unwrap();
        (Producer::new(r.clone()).unwrap(), Consumer::new(r).unwrap())
    }

    /// Sends `msg` the way the client library does: room, grant, write, push, publish.
    fn send(p: &mut Producer<SubmitDesc>, msg: &[u8], ts: u64) -> bool {
        if p.room() == 0 {
            return false;
        }
        let Some(b) = p.grant(|e| panic!("{e:?}")) else {
            return false;
        };
        p.buffer_mut(b)[..msg.len()].copy_from_slice(msg);
        p.push(SubmitDesc {
            buf: b,
            len: msg.len() as u32,
            submit_ts: ts,
        });
        p.publish();
        true
    }

    fn recv(c: &Consumer<SubmitDesc>) -> Option<(Vec<u8>, u64)> {
        let t = c.take(|e| panic!("{e:?}"))?;
        let out = (c.bytes(&t).to_vec(), t.desc.submit_ts);
        c.release(t);
        Some(out)
    }

    #[test]
    fn layout_keeps_the_two_sides_apart() {
        let r = Region::heap::<SubmitDesc>(&params(4, false)).unwrap();
        let (prod, cons, descs, free, bufs) = r.offsets();
        assert_eq!((prod, cons), (LINE, 2 * LINE));
        assert!(cons - prod >= 128 && descs % LINE == 0 && free % LINE == 0);
        assert!(bufs % LINE == 0 && r.len() % PAGE == 0);
        assert_eq!(std::mem::size_of::<SubmitDesc>(), 16);
        assert_eq!(std::mem::size_of::<DeliverDesc>(), 40);
        assert!(std::mem::size_of::<Header>() <= LINE);
    }

    #[test]
    fn empty_full_and_wrap_around() {
        let (mut p, c) = pair(3, false);
        assert!(recv(&c).is_none(), "empty");
        for round in 0..10u64 {
            for i in 0..3u8 {
                assert!(send(&mut p, &[i, round as u8], round), "room for 3");
            }
            assert!(!send(&mut p, b"x", 0), "full at the capacity");
            for i in 0..3u8 {
                assert_eq!(recv(&c), Some((vec![i, round as u8], round)));
            }
            assert!(recv(&c).is_none());
        }
        assert_eq!(p.region().invalid(), 0);
    }

    #[test]
    fn the_held_buffer_counts_against_the_producer() {
        // Capacity 2 has 3 buffers: two queued and one held by the consumer use them all.
        let (mut p, c) = pair(2, false);
        assert!(send(&mut p, b"a", 0) && send(&mut p, b"b", 0));
        let held = c.take(|_| {}).unwrap();
        assert!(
            send(&mut p, b"c", 0),
            "the ring has room and one buffer is left"
        );
        assert!(p.room() == 0);
        c.release(held);
        assert_eq!(recv(&c).unwrap().0, b"b");
        assert!(send(&mut p, b"d", 0));
    }

    #[test]
    fn drop_oldest_slack_is_trimmed_by_the_consumer() {
        let (mut p, c) = pair(2, true);
        assert!(send(&mut p, b"1", 0) && send(&mut p, b"2", 0) && send(&mut p, b"3", 0));
        assert!(!send(&mut p, b"4", 0), "one descriptor of slack only");
        let mut dropped = 0;
        let t = c
            .take(|e| {
                assert_eq!(e, Event::DroppedOldest);
                dropped += 1
            })
            .unwrap();
        assert_eq!((c.bytes(&t), dropped), (&b"2"[..], 1));
        c.release(t);
        assert_eq!(recv(&c).unwrap().0, b"3");
    }

    #[test]
    fn batch_publish_is_one_store() {
        let (mut p, c) = pair(8, false);
        for i in 0..5u8 {
            let b = p.grant(|_| {}).unwrap();
            p.buffer_mut(b)[0] = i;
            p.push(SubmitDesc {
                buf: b,
                len: 1,
                submit_ts: 0,
            });
        }
        assert!(recv(&c).is_none(), "nothing visible before the publish");
        p.publish();
        let got: Vec<u8> = std::iter::from_fn(|| recv(&c).map(|m| m.0[0])).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn garbage_descriptors_are_refused_and_counted() {
        let (mut p, c) = pair(4, false);
        let region = p.region().clone();
        // A bad index, a bad length, and a buffer the consumer holds.
        assert!(send(&mut p, b"ok", 1));
        let held = c.take(|_| {}).unwrap();
        for d in [
            SubmitDesc {
                buf: 1000,
                len: 1,
                submit_ts: 0,
            },
            SubmitDesc {
                buf: 1,
                len: 101,
                submit_ts: 0,
            },
            SubmitDesc {
                buf: held.desc.buf,
                len: 1,
                submit_ts: 0,
            },
        ] {
            p.push(d);
        }
        p.publish();
        assert!(send(&mut p, b"fine", 2));
        let mut seen = Vec::new();
        let t = c.take(|e| seen.push(e)).unwrap();
        assert_eq!(c.bytes(&t), b"fine");
        assert_eq!(
            seen,
            vec![
                Event::Invalid(Invalid::BufferIndex),
                Event::Invalid(Invalid::Length),
                Event::Invalid(Invalid::Outstanding)
            ]
        );
        assert_eq!(region.invalid(), 3);
        assert!(!region.is_closed());
    }

    #[test]
    fn a_tail_out_of_bounds_poisons_and_closes() {
        let (_p, c) = pair(4, false);
        let region = c.region().clone();
        let (prod, ..) = region.offsets();
        // SAFETY: single-threaded test: no ring end is in use meanwhile.
        unsafe { region.scribble(prod, &1_000_000u64.to_le_bytes()) };
        let mut seen = Vec::new();
        assert!(c.take(|e| seen.push(e)).is_none());
        assert_eq!(seen, vec![Event::Invalid(Invalid::Index)]);
        assert!(region.is_closed() && c.is_poisoned());
        // Nothing more is read from it.
        // SAFETY: single-threaded test: no ring end is in use meanwhile.
        unsafe { region.scribble(prod, &1u64.to_le_bytes()) };
        assert!(c.take(|_| {}).is_none());
    }

    #[test]
    fn producer_skips_garbage_free_entries() {
        let (mut p, c) = pair(2, false);
        let region = p.region().clone();
        let (_, _, _, free, _) = region.offsets();
        // Every entry says buffer 999.
        for i in 0..4 {
            // SAFETY: single-threaded test: no ring end is in use meanwhile.
            unsafe { region.scribble(free + i * 4, &999u32.to_le_bytes()) };
        }
        let mut bad = 0;
        assert_eq!(p.grant(|_| bad += 1), None);
        assert_eq!(bad, 3, "all three entries published were refused");
        drop(c);
    }

    #[test]
    fn ends_are_taken_once() {
        let r = Region::heap::<SubmitDesc>(&params(2, false)).unwrap();
        let _p = Producer::<SubmitDesc>::new(r.clone()).unwrap();
        assert!(matches!(
            Producer::<SubmitDesc>::new(r.clone()),
            Err(ShmError::EndTaken("producer"))
        ));
        assert!(matches!(
            Consumer::<DeliverDesc>::new(r.clone()),
            Err(ShmError::BadRegion(_))
        ));
    }

    #[test]
    fn sleep_and_wake_pair() {
        let r = Region::heap::<DeliverDesc>(&params(4, false)).unwrap();
        let mut p = Producer::<DeliverDesc>::new(r.clone()).unwrap();
        let c = Consumer::<DeliverDesc>::new(r).unwrap();
        assert!(!p.publish_and_check_wake(), "nobody asked");
        assert!(c.prepare_sleep(), "empty: may sleep");
        let b = p.grant(|_| {}).unwrap();
        p.push(DeliverDesc {
            buf: b,
            len: 0,
            ..Default::default()
        });
        assert!(p.publish_and_check_wake(), "the sleeper is woken");
        assert!(!p.publish_and_check_wake(), "once");
        assert!(!c.prepare_sleep(), "a message is there: do not sleep");
    }

    /// Invariant 8: the daemon's closed flag and invalid count are what it decided, whatever
    /// the client writes on the daemon line; the client reads what the daemon published.
    #[test]
    fn the_daemon_line_is_published_never_read_back() {
        let daemon = Region::memfd::<SubmitDesc>(&params(4, false), "rtchan-test").unwrap();
        let fd = daemon.fd().unwrap().try_clone_to_owned().unwrap();
        let client = Region::from_fd::<SubmitDesc>(fd).unwrap();
        let (.., descs, _, _) = daemon.offsets();
        let line = descs - LINE;
        // The client closes the daemon's channel and inflates its count: nothing changes.
        // SAFETY: single-threaded test: no ring end is in use meanwhile.
        unsafe { client.scribble(line, &1u32.to_le_bytes()) };
        // SAFETY: as above.
        unsafe { client.scribble(line + 8, &77u64.to_le_bytes()) };
        assert!(!daemon.is_closed());
        assert_eq!(daemon.invalid(), 0);
        // The daemon counts and closes; the client sees both, and a client that scribbles
        // the flag back to open does not reopen the channel for the daemon.
        let mut p = Producer::<SubmitDesc>::new(client.clone()).unwrap();
        let c = Consumer::<SubmitDesc>::new(daemon.clone()).unwrap();
        p.push(SubmitDesc {
            buf: 999,
            len: 1,
            submit_ts: 0,
        });
        p.publish();
        assert!(c.take(|_| {}).is_none());
        assert_eq!((daemon.invalid(), client.invalid()), (1, 1));
        daemon.close();
        assert!(client.is_closed() && p.is_closed());
        // SAFETY: as above.
        unsafe { client.scribble(line, &0u32.to_le_bytes()) };
        assert!(daemon.is_closed() && c.is_closed());
        // A client's own close (a poisoned delivery ring, say) stays in its memory.
        let other = Region::memfd::<SubmitDesc>(&params(4, false), "rtchan-test").unwrap();
        let fd = other.fd().unwrap().try_clone_to_owned().unwrap();
        let mapped = Region::from_fd::<SubmitDesc>(fd).unwrap();
        mapped.close();
        assert!(mapped.is_closed() && !other.is_closed());
    }

    /// Once sealed, a mapped client can still write its ring, but can no longer punch holes
    /// in it (which would fault the daemon's next access) nor map it writable again.
    #[test]
    fn sealed_writers_keep_their_mapping_and_cannot_punch_holes() {
        // Buffers of 8 KiB: the region spans several pages, the second one a buffer's.
        let big = Params {
            mmax: 8192,
            ..params(4, false)
        };
        let r = Region::memfd::<SubmitDesc>(&big, "rtchan-test").unwrap();
        assert!(r.len() > 2 * PAGE);
        let fd = r.fd().unwrap().try_clone_to_owned().unwrap();
        let theirs = Region::from_fd::<SubmitDesc>(fd).unwrap();
        let punch = |r: &Region| {
            let fd = r.fd().unwrap().as_raw_fd();
            // SAFETY: a plain syscall on a live fd; the range is inside the file.
            let rc = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    PAGE as libc::off_t,
                    PAGE as libc::off_t,
                )
            };
            (rc, std::io::Error::last_os_error().raw_os_error())
        };
        // Before the seal a hole can be punched (the page leaves the daemon's mapping too);
        // sealing faults it back in, so the core never takes that fault.
        assert_eq!(punch(&theirs).0, 0);
        let resident = |r: &Region| {
            let mut v = [0u8; 1];
            // SAFETY: the page at offset PAGE is inside the mapping; `v` has one entry for it.
            let rc =
                unsafe { libc::mincore(r.base.as_ptr().add(PAGE).cast(), PAGE, v.as_mut_ptr()) };
            assert_eq!(rc, 0);
            v[0] & 1 == 1
        };
        assert!(
            !resident(&r),
            "the punched page is gone from the daemon's mapping"
        );
        r.seal_writers().unwrap();
        assert!(resident(&r), "sealing faulted the punched page back in");
        assert_eq!(punch(&theirs), (-1, Some(libc::EPERM)));
        let mut p = Producer::<SubmitDesc>::new(theirs).unwrap();
        let c = Consumer::<SubmitDesc>::new(r.clone()).unwrap();
        assert!(send(&mut p, b"still writable", 9));
        assert_eq!(recv(&c), Some((b"still writable".to_vec(), 9)));
        let fd = r.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(matches!(
            Region::from_fd::<SubmitDesc>(fd),
            Err(ShmError::Os { call: "mmap", .. })
        ));
        // A client that sealed the seals first makes sealing fail, with the reason.
        let r = Region::memfd::<SubmitDesc>(&params(4, false), "rtchan-test").unwrap();
        // SAFETY: a plain fcntl on a live fd.
        unsafe {
            libc::fcntl(
                r.fd().unwrap().as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SEAL,
            )
        };
        assert!(matches!(r.seal_writers(), Err(ShmError::Os { .. })));
    }

    /// Invariant 7 with the futex: a consumer asleep on the wake word (in a mapping of its
    /// own, as a client's) is woken by the producer's publish; a consumer that finds a message
    /// does not sleep.
    #[test]
    fn a_sleeping_consumer_is_woken_through_the_wake_word() {
        let r = Region::memfd::<DeliverDesc>(&params(4, false), "rtchan-test").unwrap();
        let theirs =
            Region::from_fd::<DeliverDesc>(r.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
        let mut p = Producer::<DeliverDesc>::new(r).unwrap();
        let c = Consumer::<DeliverDesc>::new(theirs).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // Sleeps (60 s at most) until woken; then the message is there.
            while c.take(|_| {}).is_none() {
                c.sleep(60_000);
            }
            done_tx.send(()).unwrap();
            c
        });
        // Publish once the consumer asked to be woken, as the core does.
        let mut woke = false;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !woke {
            assert!(
                std::time::Instant::now() < until,
                "the consumer never slept"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
            if p.publish_and_check_wake() {
                woke = true;
            }
        }
        let b = p.grant(|_| {}).unwrap();
        p.push(DeliverDesc {
            buf: b,
            len: 0,
            ..Default::default()
        });
        assert!(!p.publish_and_check_wake(), "asked once, woken once");
        p.wake_consumer();
        // An event, not a duration: the bound only keeps a broken wake from hanging the test.
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the sleeping consumer was not woken");
        let c = sleeper.join().unwrap();
        // A message already there: no sleep.
        let b = p.grant(|_| {}).unwrap();
        p.push(DeliverDesc {
            buf: b,
            len: 0,
            ..Default::default()
        });
        p.publish();
        assert!(!c.sleep(60_000));
    }

    #[test]
    fn memfd_region_maps_in_another_mapping() {
        let r = Region::memfd::<SubmitDesc>(&params(4, false), "rtchan-test").unwrap();
        let fd = r.fd().unwrap().try_clone_to_owned().unwrap();
        let theirs = Region::from_fd::<SubmitDesc>(fd).unwrap();
        let mut p = Producer::<SubmitDesc>::new(theirs).unwrap();
        let c = Consumer::<SubmitDesc>::new(r.clone()).unwrap();
        assert!(send(&mut p, b"across mappings", 5));
        assert_eq!(recv(&c), Some((b"across mappings".to_vec(), 5)));
        // The other kind is refused, and so is an unsealed file.
        let fd = r.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(matches!(
            Region::from_fd::<DeliverDesc>(fd),
            Err(ShmError::BadRegion(_))
        ));
        // SAFETY: test-only: a plain memfd without seals.
        let raw = unsafe { libc::memfd_create(c"plain".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: just created.
        let plain = unsafe { OwnedFd::from_raw_fd(raw) };
        assert!(matches!(
            Region::from_fd::<SubmitDesc>(plain),
            Err(ShmError::BadRegion(_))
        ));
    }

    #[test]
    fn threads_deliver_in_order() {
        let (mut p, c) = pair(16, false);
        let n = 20_000u32;
        let t = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < n {
                if send(&mut p, &i.to_le_bytes(), u64::from(i)) {
                    i += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0u32;
        while next < n {
            if let Some((b, ts)) = recv(&c) {
                assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), next);
                assert_eq!(ts, u64::from(next));
                next += 1;
            }
        }
        t.join().unwrap();
    }

    /// Invariant 9 on one thread: a full ring evicts its oldest message, the consumer never
    /// sees it, the evicted buffer carries the new message; eviction needs an evictable
    /// consumer of the same region and a full ring.
    #[test]
    fn eviction_replaces_the_oldest() {
        let region = Region::heap::<SubmitDesc>(&params(2, false)).unwrap();
        let mut p = Producer::<SubmitDesc>::new(region.clone()).unwrap();
        let c = Consumer::<SubmitDesc>::new_evictable(region).unwrap();
        assert!(send(&mut p, b"1", 1));
        assert_eq!(p.evict_oldest(&c), None, "not full");
        assert!(send(&mut p, b"2", 2));
        let b = p.evict_oldest(&c).expect("full: evicts 1");
        p.buffer_mut(b)[0] = b'3';
        p.push(SubmitDesc {
            buf: b,
            len: 1,
            submit_ts: 3,
        });
        p.publish();
        assert_eq!(recv(&c), Some((b"2".to_vec(), 2)));
        assert_eq!(recv(&c), Some((b"3".to_vec(), 3)));
        assert_eq!(recv(&c), None);
        // Not evictable: a plain consumer, or another region's.
        let (mut q, plain) = pair(1, false);
        assert!(send(&mut q, b"x", 0));
        assert_eq!(q.evict_oldest(&plain), None);
        assert_eq!(p.evict_oldest(&plain), None);
        let r = Region::memfd::<SubmitDesc>(&params(1, false), "rtchan-test").unwrap();
        assert!(matches!(
            Consumer::<SubmitDesc>::new_evictable(r),
            Err(ShmError::BadRegion(_))
        ));
    }

    /// Invariant 9 under a race: a producer that evicts whenever the ring is full and a
    /// consumer taking as fast as it can never both own a buffer (every message arrives whole,
    /// with its own bytes), the consumer sees messages in order, and every message is either
    /// taken, evicted or still queued.
    #[test]
    fn eviction_races_with_the_consumer_without_sharing_a_buffer() {
        let region = Region::heap::<SubmitDesc>(&Params {
            mmax: 64,
            capacity: 4,
            drop_oldest: false,
            channel: 1,
        })
        .unwrap();
        let c = Arc::new(Consumer::<SubmitDesc>::new_evictable(region.clone()).unwrap());
        let mut p = Producer::<SubmitDesc>::new(region).unwrap();
        let n = 50_000u32;
        let c2 = c.clone();
        let producer = std::thread::spawn(move || {
            let mut evicted = 0u32;
            for i in 0..n {
                let b = loop {
                    if p.queued() < u64::from(p.capacity()) {
                        if let Some(b) = p.grant(|_| {}) {
                            break b;
                        }
                    }
                    if let Some(b) = p.evict_oldest(&c2) {
                        evicted += 1;
                        break b;
                    }
                };
                p.buffer_mut(b)[..64].fill(i as u8);
                p.buffer_mut(b)[..4].copy_from_slice(&i.to_le_bytes());
                p.push(SubmitDesc {
                    buf: b,
                    len: 64,
                    submit_ts: u64::from(i),
                });
                p.publish();
            }
            evicted
        });
        let (mut taken, mut last) = (0u32, None::<u32>);
        let mut done = false;
        loop {
            if let Some(t) = c.take(|e| panic!("{e:?}")) {
                let b = c.bytes(&t).to_vec();
                let i = u32::from_le_bytes(b[..4].try_into().unwrap());
                assert_eq!(t.desc.submit_ts, u64::from(i));
                assert!(b[4..].iter().all(|&x| x == i as u8), "message {i} torn");
                assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
                last = Some(i);
                taken += 1;
                c.release(t);
            } else if done {
                break;
            } else if producer.is_finished() {
                done = true; // one more pass takes what is still queued
            }
        }
        let evicted = producer.join().unwrap();
        assert_eq!(taken + evicted, n, "taken {taken} evicted {evicted}");
        assert!(evicted > 0, "the race was not exercised");
    }

    proptest! {
        /// Any interleaving of sends and receives behaves like a bounded FIFO of the capacity.
        #[test]
        fn behaves_like_a_bounded_fifo(cap in 1u32..9, ops in proptest::collection::vec(any::<bool>(), 1..200)) {
            let (mut p, c) = pair(cap, false);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u32;
            for send_op in ops {
                if send_op {
                    let ok = send(&mut p, &next.to_le_bytes(), 0);
                    prop_assert_eq!(ok, model.len() < cap as usize);
                    if ok { model.push_back(next); }
                    next += 1;
                } else {
                    let got = recv(&c).map(|(b, _)| u32::from_le_bytes(b[..4].try_into().unwrap()));
                    prop_assert_eq!(got, model.pop_front());
                }
            }
        }

        /// Garbage written anywhere in the shared lines or rings never makes the consumer
        /// hand out an out-of-range message, and it keeps working or reports the ring closed.
        #[test]
        fn garbage_anywhere_is_contained(off in 0usize..2048, bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            let (mut p, c) = pair(4, false);
            let region = p.region().clone();
            prop_assume!(off >= LINE); // the header is read once, at map time
            let end = (off + bytes.len()).min(region.offsets().4);
            prop_assume!(end > off);
            send(&mut p, b"before", 0);
            // SAFETY: single-threaded test: no ring end is in use meanwhile.
            unsafe { region.scribble(off, &bytes[..end - off]) };
            for _ in 0..8 {
                if let Some(t) = c.take(|_| {}) {
                    prop_assert!(c.bytes(&t).len() <= 100);
                    c.release(t);
                }
            }
        }
    }
}
