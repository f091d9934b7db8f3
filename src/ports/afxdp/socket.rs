//! An AF_XDP socket (XSK) bound to one queue of one interface, with its RX and TX rings and
//! the UMEM it owns.

use super::ffi;
use super::umem::Umem;
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// How the XDP program that redirects to the socket is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpAttach {
    /// Native (driver) mode first, generic (SKB) mode if the driver refuses.
    #[default]
    Auto,
    /// Native mode (`XDP_FLAGS_DRV_MODE`): the driver runs the program before it builds an skb.
    Native,
    /// Generic mode (`XDP_FLAGS_SKB_MODE`): the program runs on the skb; works on any
    /// interface, always in copy mode.
    Skb,
}

impl XdpAttach {
    fn flags(self) -> u32 {
        match self {
            XdpAttach::Auto => 0,
            XdpAttach::Native => ffi::XDP_FLAGS_DRV_MODE,
            XdpAttach::Skb => ffi::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl std::fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpAttach::Auto => "auto",
            XdpAttach::Native => "native",
            XdpAttach::Skb => "skb",
        })
    }
}

/// Options of one socket-creation attempt (a concrete attach mode and copy or zero-copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// RX ring entries (power of two).
    pub rx_ring: u32,
    /// TX ring entries (power of two).
    pub tx_ring: u32,
    /// [`XdpAttach::Native`] or [`XdpAttach::Skb`] (`Auto` lets libxdp choose).
    pub attach: XdpAttach,
    /// Bind with `XDP_ZEROCOPY` (else `XDP_COPY`).
    pub zero_copy: bool,
    /// Bind with `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall to make
    /// progress, instead of one per burst.
    pub need_wakeup: bool,
    /// Let libxdp load its default redirect program (else the caller loads a program and
    /// puts the socket in its XSKMAP: `XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD`).
    pub load_program: bool,
}

/// An AF_XDP socket on `ifname` queue `queue`. Owns its UMEM; dropping it deletes the socket
/// (libxdp then detaches its default program once no socket uses it) and then the UMEM.
pub struct XskSocket {
    raw: NonNull<ffi::xsk_socket>,
    // Boxed: libxdp keeps pointers to them.
    rx: Box<ffi::xsk_ring_cons>,
    tx: Box<ffi::xsk_ring_prod>,
    fd: RawFd,
    opts: SocketOptions,
    // Dropped after the socket (see `Drop`).
    umem: Umem,
}

// SAFETY: the rings are single-producer/single-consumer structures used only through `&mut
// self`; libxdp's socket object has no thread affinity. Moving it to another thread is sound.
unsafe impl Send for XskSocket {}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd)
            .field("opts", &self.opts)
            .field("umem", &self.umem)
            .finish()
    }
}

impl XskSocket {
    /// Creates the socket, binds it to `ifname` queue `queue` (looked up in the calling
    /// thread's network namespace) with `umem`, and, unless told not to, has libxdp attach
    /// its default program (which redirects every packet of that queue to the socket).
    pub fn create(ifname: &str, queue: u32, umem: Umem, opts: SocketOptions) -> io::Result<Self> {
        let name = CString::new(ifname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut cfg = ffi::xsk_socket_config {
            rx_size: opts.rx_ring,
            tx_size: opts.tx_ring,
            xdp_flags: opts.attach.flags(),
            bind_flags: ((if opts.zero_copy {
                ffi::XDP_ZEROCOPY
            } else {
                ffi::XDP_COPY
            }) | if opts.need_wakeup {
                ffi::XDP_USE_NEED_WAKEUP
            } else {
                0
            }) as u16,
            ..Default::default()
        };
        cfg.__bindgen_anon_1.libxdp_flags = if opts.load_program {
            0
        } else {
            ffi::XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD
        };
        // SAFETY: zero is a valid (empty) bit pattern for the plain-data ring structs.
        let mut rx: Box<ffi::xsk_ring_cons> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: as above.
        let mut tx: Box<ffi::xsk_ring_prod> = Box::new(unsafe { std::mem::zeroed() });
        let mut raw: *mut ffi::xsk_socket = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `umem.raw()` is a live UMEM with no socket yet;
        // the ring structs are boxed storage that lives as long as the socket; `cfg` is read
        // during the call only.
        let rc = unsafe {
            ffi::xsk_socket__create(
                &mut raw,
                name.as_ptr(),
                queue,
                umem.raw(),
                &mut *rx,
                &mut *tx,
                &cfg,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(-rc));
        }
        let raw = NonNull::new(raw).expect("xsk_socket__create succeeded with a NULL socket");
        // SAFETY: `raw` is the live socket just created.
        let fd = unsafe { ffi::xsk_socket__fd(raw.as_ptr()) };
        Ok(Self {
            raw,
            rx,
            tx,
            fd,
            opts,
            umem,
        })
    }

    /// The socket's file descriptor (for `poll`, or to put it in a custom program's XSKMAP).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The options the socket was created with.
    pub fn options(&self) -> SocketOptions {
        self.opts
    }

    /// The UMEM.
    pub fn umem(&self) -> &Umem {
        &self.umem
    }

    pub(crate) fn umem_mut(&mut self) -> &mut Umem {
        &mut self.umem
    }

    /// Free TX descriptors (at least `want` are checked against the kernel's consumer).
    #[inline]
    pub(crate) fn tx_room(&mut self, want: u32) -> u32 {
        // SAFETY: `tx` is this socket's live TX ring, used only through `&mut self`.
        unsafe { ffi::rtchan_xsk_prod_nb_free(&mut *self.tx, want) }
    }

    /// Descriptors on the TX ring the kernel has not taken yet.
    #[inline]
    pub(crate) fn tx_unconsumed(&mut self) -> u32 {
        let size = self.tx.size;
        size - self.tx_room(size).min(size)
    }

    /// Reserves `n` TX descriptors; returns the index of the first, or `None` if the ring
    /// has less room.
    #[inline]
    pub(crate) fn tx_reserve(&mut self, n: u32) -> Option<u32> {
        let mut idx = 0u32;
        // SAFETY: as in `tx_room`; `idx` is written by the call.
        let got = unsafe { ffi::rtchan_xsk_prod_reserve(&mut *self.tx, n, &mut idx) };
        (got == n).then_some(idx)
    }

    /// Writes a descriptor into reserved slot `idx`.
    #[inline]
    pub(crate) fn tx_write(&mut self, idx: u32, desc: ffi::xdp_desc) {
        // SAFETY: the caller reserved `idx` with `tx_reserve` and has not submitted it; the
        // helper masks the index into the ring.
        unsafe { *ffi::rtchan_xsk_prod_tx_desc(&mut *self.tx, idx) = desc };
    }

    /// Publishes the `n` descriptors reserved (and written) last.
    #[inline]
    pub(crate) fn tx_submit(&mut self, n: u32) {
        // SAFETY: publishes slots reserved by `tx_reserve` and written by `tx_write`.
        unsafe { ffi::rtchan_xsk_prod_submit(&mut *self.tx, n) };
    }

    /// Whether the kernel asked for a syscall to process the TX ring (always true when the
    /// socket does not use need-wakeup).
    #[inline]
    pub(crate) fn tx_needs_wakeup(&self) -> bool {
        // SAFETY: reads the flags word of this socket's live TX ring.
        !self.opts.need_wakeup || unsafe { ffi::rtchan_xsk_prod_needs_wakeup(&*self.tx) } != 0
    }

    /// Whether the kernel asked for a syscall to refill from the fill ring.
    #[inline]
    pub(crate) fn fill_needs_wakeup(&self) -> bool {
        // SAFETY: reads the flags word of the UMEM's live fill ring.
        self.opts.need_wakeup && unsafe { ffi::rtchan_xsk_prod_needs_wakeup(&*self.umem.fill) } != 0
    }

    /// `sendto(fd, NULL, 0, MSG_DONTWAIT)`: makes the kernel send what is on the TX ring (in
    /// copy mode, up to its per-call budget, 32 descriptors by default).
    #[inline]
    pub(crate) fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length send on our own socket with no buffer and no address.
        let rc = unsafe {
            libc::sendto(
                self.fd,
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `recvfrom(fd, NULL, 0, MSG_DONTWAIT)`: lets a driver that asked for it refill from the
    /// fill ring.
    #[inline]
    pub(crate) fn wake_rx(&self) -> io::Result<()> {
        // SAFETY: a zero-length receive on our own socket with no buffer and no address.
        let rc = unsafe {
            libc::recvfrom(
                self.fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Takes up to `max` RX descriptors, calls `f(addr, len)` for each, and releases them.
    #[inline]
    pub(crate) fn rx_drain(&mut self, max: u32, mut f: impl FnMut(u64, u32)) -> u32 {
        let mut idx = 0u32;
        // SAFETY: `rx` is this socket's live RX ring, used only through `&mut self`; `idx` is
        // written by the call.
        let n = unsafe { ffi::rtchan_xsk_cons_peek(&mut *self.rx, max, &mut idx) };
        for k in 0..n {
            // SAFETY: slots `idx..idx + n` were handed to us by the peek above.
            let d = unsafe { *ffi::rtchan_xsk_cons_rx_desc(&*self.rx, idx.wrapping_add(k)) };
            f(d.addr, d.len);
        }
        if n > 0 {
            // SAFETY: releases exactly the slots peeked above, whose contents were copied.
            unsafe { ffi::rtchan_xsk_cons_release(&mut *self.rx, n) };
        }
        n
    }

    /// The kernel's counters for the socket (`getsockopt(SOL_XDP, XDP_STATISTICS)`).
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        let mut s = ffi::xdp_statistics::default();
        let mut len = std::mem::size_of::<ffi::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` is a writable `xdp_statistics` of `len` bytes; the kernel writes at most
        // `len` bytes and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_XDP,
                ffi::XDP_STATISTICS as libc::c_int,
                (&mut s as *mut ffi::xdp_statistics).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `xsk_socket__create` and is deleted once, here, before the
        // UMEM (a field, dropped after this body) and the rings' boxes.
        unsafe { ffi::xsk_socket__delete(self.raw.as_ptr()) };
    }
}

/// The kernel's per-socket counters (`struct xdp_statistics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Packets dropped for reasons other than a full RX ring (no fill frame, too long...).
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid_descs: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was found empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was found empty.
    pub tx_ring_empty_descs: u64,
}
