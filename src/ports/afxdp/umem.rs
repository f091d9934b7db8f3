//! The UMEM: one `mmap`'d area of equal frames shared with the kernel, its free lists, and the
//! fill and completion rings.
//!
//! Frames are identified by their index. Indices `0..rx_frames` are RX frames (they cycle
//! through the fill ring), `rx_frames..frames` are TX frames (handed out by `alloc_tx`). Each
//! class has its own lock-free free list ([`ArrayQueue`] of indices, like
//! [`BufPool`](dataplane::memlink::BufPool)), so a TX flood cannot starve the fill ring and a
//! receive burst cannot take every TX frame. A frame goes back to the list of its class when
//! its [`XdpFrame`] is dropped, or when the kernel reports a sent frame on the completion ring,
//! whichever class it came from (so a received frame may be sent on: forwarding).
//!
//! Ownership is what keeps a frame from being reused while the kernel has it: a frame index is
//! either in a free list, or in exactly one live [`XdpFrame`], or owned by the kernel (on the
//! fill ring, the RX ring, the TX ring or the completion ring) — never two of these at once.

use super::ffi;
use crossbeam_queue::ArrayQueue;
use dataplane::port::PacketBuf;
use std::io;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;

/// The frame area and its free lists. Shared (through [`Arc`]) by the port and every live
/// [`XdpFrame`], so the mapping outlives the last frame even when the port is gone.
#[derive(Debug)]
pub struct FramePool {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
    rx_frames: u32,
    frames: u32,
    rx_free: ArrayQueue<u32>,
    tx_free: ArrayQueue<u32>,
}

// SAFETY: the area is only read or written through an `XdpFrame`, which owns its frame
// exclusively (see the module docs), or by the kernel for frames it owns; the free lists are
// lock-free queues. Sharing the pool between threads therefore cannot race on any byte.
unsafe impl Send for FramePool {}
// SAFETY: as above: `&FramePool` only gives access to the queues and to constants.
unsafe impl Sync for FramePool {}

impl FramePool {
    /// Maps `rx_frames + tx_frames` frames of `frame_size` bytes (anonymous, populated).
    pub(crate) fn new(frame_size: u32, rx_frames: u32, tx_frames: u32) -> io::Result<Arc<Self>> {
        let frames = rx_frames
            .checked_add(tx_frames)
            .filter(|&n| n > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len = (frames as usize)
            .checked_mul(frame_size as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).expect("mmap returned NULL without failing");
        let rx_free = ArrayQueue::new(rx_frames.max(1) as usize);
        let tx_free = ArrayQueue::new(tx_frames.max(1) as usize);
        for i in 0..rx_frames {
            let _ = rx_free.push(i);
        }
        for i in rx_frames..frames {
            let _ = tx_free.push(i);
        }
        Ok(Arc::new(Self {
            base,
            len,
            frame_size,
            rx_frames,
            frames,
            rx_free,
            tx_free,
        }))
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Frames in the area (RX and TX).
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// RX frames neither on the kernel's rings nor held by the application.
    pub fn rx_available(&self) -> usize {
        self.rx_free.len()
    }

    /// TX frames that can be allocated now.
    pub fn tx_available(&self) -> usize {
        self.tx_free.len()
    }

    /// Start of the area, for `xsk_umem__create`.
    pub(crate) fn area(&self) -> (*mut u8, usize) {
        (self.base.as_ptr(), self.len)
    }

    /// A TX frame, if one is free.
    #[inline]
    pub(crate) fn alloc_tx(self: &Arc<Self>) -> Option<XdpFrame> {
        self.tx_free.pop().map(|index| XdpFrame {
            pool: self.clone(),
            index,
            offset: 0,
            len: 0,
        })
    }

    /// Takes a free RX frame index (for the fill ring).
    #[inline]
    pub(crate) fn take_rx(&self) -> Option<u32> {
        self.rx_free.pop()
    }

    /// Returns a frame index to the free list of its class.
    #[inline]
    pub(crate) fn put(&self, index: u32) {
        debug_assert!(index < self.frames);
        // Cannot fail: each queue's capacity is the number of frames of its class, and an
        // index is in at most one place at a time.
        let _ = if index < self.rx_frames {
            self.rx_free.push(index)
        } else {
            self.tx_free.push(index)
        };
    }

    /// The frame and offset of a UMEM address, if it lies inside the area with `len` bytes.
    #[inline]
    pub(crate) fn locate(&self, addr: u64, len: u32) -> Option<(u32, u32)> {
        let fs = u64::from(self.frame_size);
        let index = addr / fs;
        let offset = (addr % fs) as u32;
        (index < u64::from(self.frames) && u64::from(offset) + u64::from(len) <= fs)
            .then_some((index as u32, offset))
    }

    /// Wraps a received frame (index and data offset from [`FramePool::locate`]).
    #[inline]
    pub(crate) fn wrap(self: &Arc<Self>, index: u32, offset: u32, len: u32) -> XdpFrame {
        XdpFrame {
            pool: self.clone(),
            index,
            offset,
            len,
        }
    }

    #[inline]
    fn frame_ptr(&self, index: u32, offset: u32) -> *mut u8 {
        debug_assert!(index < self.frames && offset <= self.frame_size);
        // SAFETY: index < frames and offset <= frame_size, so the result lies within (or one
        // past the end of) the mapping of frames × frame_size bytes.
        unsafe {
            self.base
                .as_ptr()
                .add(index as usize * self.frame_size as usize + offset as usize)
        }
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length; the last `Arc` is going, so
        // no frame can reach it any more, and the kernel's registration (which pins the pages
        // itself) ended when the UMEM was deleted.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// A packet buffer that is one UMEM frame: writes go straight into the memory the kernel
/// sends from, and received packets are read where the kernel put them (no copy in user
/// space). Dropping it returns the frame to its free list; sending it hands it to the kernel
/// until the completion ring gives it back.
#[derive(Debug)]
pub struct XdpFrame {
    pool: Arc<FramePool>,
    index: u32,
    /// Where the packet starts in the frame (the kernel's headroom for received frames).
    offset: u32,
    len: u32,
}

impl XdpFrame {
    /// The frame's address in the UMEM (frame start plus data offset), as descriptors use.
    #[inline]
    pub fn addr(&self) -> u64 {
        u64::from(self.index) * u64::from(self.pool.frame_size) + u64::from(self.offset)
    }

    /// True if the frame belongs to `pool`.
    #[inline]
    pub(crate) fn is_from(&self, pool: &Arc<FramePool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }

    /// Gives the frame up without returning it to its free list (it now belongs to the
    /// kernel): its index and a TX descriptor for it.
    #[inline]
    pub(crate) fn into_desc(self) -> (u32, ffi::xdp_desc) {
        let desc = ffi::xdp_desc {
            addr: self.addr(),
            len: self.len,
            options: 0,
        };
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped nor used after this read, so the `Arc` is moved out
        // exactly once and its count stays right.
        drop(unsafe { std::ptr::read(&this.pool) });
        (this.index, desc)
    }
}

impl PacketBuf for XdpFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: `offset + len <= frame_size` (checked by `locate`/`set_len`), the frame is
        // owned by this value alone, and the mapping lives as long as `self.pool`.
        unsafe {
            std::slice::from_raw_parts(
                self.pool.frame_ptr(self.index, self.offset),
                self.len as usize,
            )
        }
    }

    #[inline]
    fn buf_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`; `&mut self` makes the access exclusive, and the kernel does not
        // touch a frame while an `XdpFrame` owns it.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.frame_ptr(self.index, self.offset),
                self.capacity(),
            )
        }
    }

    #[inline]
    fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "length {len} beyond UMEM frame capacity {}",
            self.capacity()
        );
        self.len = len as u32;
    }

    #[inline]
    fn capacity(&self) -> usize {
        (self.pool.frame_size - self.offset) as usize
    }
}

impl Drop for XdpFrame {
    #[inline]
    fn drop(&mut self) {
        self.pool.put(self.index);
    }
}

/// A UMEM registered with the kernel, with its fill and completion rings.
pub struct Umem {
    raw: NonNull<ffi::xsk_umem>,
    // Boxed: libxdp keeps pointers to them until the first socket is created on the UMEM.
    pub(crate) fill: Box<ffi::xsk_ring_prod>,
    pub(crate) comp: Box<ffi::xsk_ring_cons>,
    pool: Arc<FramePool>,
}

// SAFETY: the rings are single-producer/single-consumer structures used only through `&mut
// self`; libxdp's UMEM object has no thread affinity. Moving it to another thread is sound.
unsafe impl Send for Umem {}

impl std::fmt::Debug for Umem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Umem")
            .field("frames", &self.pool.frames)
            .field("frame_size", &self.pool.frame_size)
            .field("fill_size", &self.fill.size)
            .field("comp_size", &self.comp.size)
            .finish()
    }
}

impl Umem {
    /// Registers `pool`'s area as a UMEM with rings of `fill_size` and `comp_size` entries
    /// (powers of two). Frames have no extra headroom.
    pub fn new(pool: &Arc<FramePool>, fill_size: u32, comp_size: u32) -> io::Result<Self> {
        let cfg = ffi::xsk_umem_config {
            fill_size,
            comp_size,
            frame_size: pool.frame_size,
            frame_headroom: 0,
            flags: 0,
        };
        // SAFETY: the ring structs are plain data that libxdp fills in; zero is a valid
        // (empty) bit pattern for them.
        let mut fill: Box<ffi::xsk_ring_prod> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: as above.
        let mut comp: Box<ffi::xsk_ring_cons> = Box::new(unsafe { std::mem::zeroed() });
        let mut raw: *mut ffi::xsk_umem = std::ptr::null_mut();
        let (area, len) = pool.area();
        // SAFETY: `area` is a page-aligned mapping of `len` bytes that `pool` keeps alive at
        // least as long as this `Umem` (it holds an `Arc`); the ring pointers are to boxed,
        // stable storage owned by the returned value; `cfg` is read during the call only.
        let rc = unsafe {
            ffi::xsk_umem__create(
                &mut raw,
                area.cast(),
                len as u64,
                &mut *fill,
                &mut *comp,
                &cfg,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(-rc));
        }
        Ok(Self {
            raw: NonNull::new(raw).expect("xsk_umem__create succeeded with a NULL umem"),
            fill,
            comp,
            pool: pool.clone(),
        })
    }

    pub(crate) fn raw(&self) -> *mut ffi::xsk_umem {
        self.raw.as_ptr()
    }

    /// Moves free RX frames onto the fill ring, as many as both have room for; returns how
    /// many.
    pub(crate) fn refill(&mut self) -> u32 {
        const CHUNK: usize = 64;
        let mut total = 0;
        loop {
            let avail = self.pool.rx_available().min(CHUNK) as u32;
            if avail == 0 {
                break;
            }
            // SAFETY: `fill` is this UMEM's live fill ring, used only through `&mut self`.
            let room = unsafe { ffi::rtchan_xsk_prod_nb_free(&mut *self.fill, avail) };
            let want = avail.min(room) as usize;
            if want == 0 {
                break;
            }
            let mut buf = [0u32; CHUNK];
            let mut n = 0;
            while n < want {
                match self.pool.take_rx() {
                    Some(i) => {
                        buf[n] = i;
                        n += 1;
                    }
                    None => break,
                }
            }
            let taken = &buf[..n];
            if taken.is_empty() {
                break;
            }
            let mut idx = 0u32;
            // SAFETY: as above; `idx` is written by the call.
            let got = unsafe { ffi::rtchan_xsk_prod_reserve(&mut *self.fill, n as u32, &mut idx) };
            if got as usize != n {
                // Cannot happen (this is the ring's only producer and it had room), but never
                // lose frames.
                for &i in taken {
                    self.pool.put(i);
                }
                break;
            }
            let fs = u64::from(self.pool.frame_size);
            for (k, &i) in taken.iter().enumerate() {
                // SAFETY: slot `idx + k` was reserved above and belongs to us until submit.
                unsafe {
                    *ffi::rtchan_xsk_prod_fill_addr(&mut *self.fill, idx.wrapping_add(k as u32)) =
                        u64::from(i) * fs;
                }
            }
            // SAFETY: publishes exactly the slots reserved and written above.
            unsafe { ffi::rtchan_xsk_prod_submit(&mut *self.fill, got) };
            total += got;
        }
        total
    }

    /// Takes the addresses of sent frames off the completion ring, calling `f` with each
    /// frame index (the frame is then returned to its free list); returns how many.
    pub(crate) fn reap(&mut self, mut f: impl FnMut(u32)) -> u32 {
        let mut total = 0;
        loop {
            let mut idx = 0u32;
            // SAFETY: `comp` is this UMEM's live completion ring, used only through `&mut
            // self`; `idx` is written by the call.
            let n = unsafe { ffi::rtchan_xsk_cons_peek(&mut *self.comp, 64, &mut idx) };
            if n == 0 {
                break;
            }
            for k in 0..n {
                // SAFETY: slots `idx..idx + n` were handed to us by the peek above.
                let addr =
                    unsafe { *ffi::rtchan_xsk_cons_comp_addr(&*self.comp, idx.wrapping_add(k)) };
                if let Some((index, _)) = self.pool.locate(addr, 0) {
                    f(index);
                    self.pool.put(index);
                }
            }
            // SAFETY: releases exactly the slots peeked above, whose contents were read.
            unsafe { ffi::rtchan_xsk_cons_release(&mut *self.comp, n) };
            total += n;
        }
        total
    }

    /// The frame pool.
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `xsk_umem__create` and is deleted once, here. Every socket
        // on it was deleted before (an `XskSocket` owns its `Umem` and deletes itself first);
        // if libxdp still says EBUSY, the UMEM struct is leaked rather than freed under a user.
        unsafe {
            ffi::xsk_umem__delete(self.raw.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_return_to_the_free_list_of_their_class() {
        let pool = FramePool::new(2048, 4, 8).unwrap();
        assert_eq!((pool.rx_available(), pool.tx_available()), (4, 8));
        let mut f = pool.alloc_tx().unwrap();
        assert_eq!(f.capacity(), 2048);
        f.buf_mut()[..3].copy_from_slice(b"abc");
        f.set_len(3);
        assert_eq!(f.data(), b"abc");
        assert!(f.addr() >= 4 * 2048, "TX frames follow the RX frames");
        assert_eq!(pool.tx_available(), 7);
        drop(f);
        assert_eq!(pool.tx_available(), 8);

        let i = pool.take_rx().unwrap();
        let (index, offset) = pool.locate(u64::from(i) * 2048 + 256, 100).unwrap();
        let r = pool.wrap(index, offset, 100);
        assert_eq!((r.capacity(), r.len()), (2048 - 256, 100));
        assert_eq!(pool.rx_available(), 3);
        drop(r);
        assert_eq!(pool.rx_available(), 4);
    }

    #[test]
    fn addresses_outside_the_area_are_refused() {
        let pool = FramePool::new(2048, 2, 2).unwrap();
        assert!(pool.locate(4 * 2048, 0).is_none());
        assert!(
            pool.locate(2048 + 2000, 100).is_none(),
            "crosses the frame end"
        );
        assert_eq!(pool.locate(3 * 2048 + 10, 100), Some((3, 10)));
    }

    #[test]
    fn a_sent_frame_is_not_returned_until_completed() {
        let pool = FramePool::new(2048, 1, 2).unwrap();
        let mut f = pool.alloc_tx().unwrap();
        f.set_len(60);
        let (index, desc) = f.into_desc();
        assert_eq!((desc.addr, desc.len), (u64::from(index) * 2048, 60));
        assert_eq!(pool.tx_available(), 1, "the kernel owns it now");
        assert_eq!(Arc::strong_count(&pool), 1, "no reference leaked");
        pool.put(index); // what the completion ring does
        assert_eq!(pool.tx_available(), 2);
    }
}
