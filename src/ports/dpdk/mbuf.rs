//! Owning packet buffer: one `rte_mbuf`, freed to its pool on drop.
//!
//! [`Mbuf`] is the zero-copy unit of the DPDK port: a handler writes headers and payload
//! straight into [`PacketBuf::buf_mut`] (the area from the mbuf's `data_off` to the end of
//! its buffer), sets the length, and the same buffer is handed to the NIC by
//! `rte_eth_tx_burst`. The data pointer is `buf_addr + data_off`, what the
//! `rte_pktmbuf_mtod` macro computes.
//!
//! Only single-segment mbufs are handled (ports are configured without scatter RX).

use std::ptr::NonNull;

use dataplane::port::PacketBuf;

use super::ffi;

/// An owned `rte_mbuf` (refcount 1, direct, single segment).
pub struct Mbuf {
    ptr: NonNull<ffi::rte_mbuf>,
}

// SAFETY: Mbuf owns its mbuf exclusively; freeing it from another thread is allowed for
// DPDK's default ring_mp_mc pools (non-EAL threads bypass the per-lcore cache).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `ptr` must be a valid, direct, single-segment mbuf with refcount 1 that nothing else
    /// uses or frees, from a pool that outlives it (a [`Mempool`](super::Mempool) guarantees
    /// this for its mbufs).
    #[inline]
    pub unsafe fn from_raw(ptr: NonNull<ffi::rte_mbuf>) -> Mbuf {
        Mbuf { ptr }
    }

    /// Gives up ownership; the caller must free the mbuf (or hand it to DPDK).
    #[inline]
    pub fn into_raw(self) -> NonNull<ffi::rte_mbuf> {
        let ptr = self.ptr;
        std::mem::forget(self);
        ptr
    }

    /// The raw mbuf, still owned by `self`.
    #[inline]
    pub fn as_ptr(&self) -> *mut ffi::rte_mbuf {
        self.ptr.as_ptr()
    }

    #[inline]
    fn raw(&self) -> &ffi::rte_mbuf {
        // SAFETY: self owns a valid mbuf for its whole life, and nothing else writes it.
        unsafe { self.ptr.as_ref() }
    }

    /// Bytes before the packet data (room to prepend headers).
    #[inline]
    pub fn headroom(&self) -> usize {
        usize::from(self.raw().data_off)
    }

    /// Input port the PMD stored on receive.
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// Pointer to the first data byte: `buf_addr + data_off` (`rte_pktmbuf_mtod`).
    #[inline]
    fn data_ptr(&self) -> *mut u8 {
        let m = self.raw();
        // SAFETY: data_off <= buf_len, so the result stays inside the mbuf's buffer.
        unsafe { m.buf_addr.cast::<u8>().add(usize::from(m.data_off)) }
    }
}

impl PacketBuf for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: data_len bytes from the data pointer lie inside the first segment's buffer
        // (DPDK invariant data_off + data_len <= buf_len) and are initialised packet bytes;
        // the borrow of self prevents writes meanwhile.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), usize::from(self.raw().data_len)) }
    }

    #[inline]
    fn buf_mut(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        // SAFETY: [data_off, buf_len) is inside the buffer DPDK allocated for this mbuf,
        // which self owns exclusively (refcount 1, direct); the buffer memory is initialised
        // (hugepage/heap memory from the pool, never uninit for u8 purposes in DPDK).
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), cap) }
    }

    #[inline]
    fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "set_len({len}) beyond mbuf capacity {}",
            self.capacity()
        );
        // SAFETY: exclusive ownership (&mut self); only length fields are written.
        let m = unsafe { self.ptr.as_mut() };
        assert_eq!(m.nb_segs, 1, "set_len on a multi-segment mbuf");
        m.data_len = len as u16;
        m.pkt_len = len as u32;
    }

    #[inline]
    fn len(&self) -> usize {
        usize::from(self.raw().data_len)
    }

    #[inline]
    fn capacity(&self) -> usize {
        let m = self.raw();
        usize::from(m.buf_len - m.data_off)
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf; it is returned to its pool exactly once.
        unsafe { ffi::rte_pktmbuf_free(self.ptr.as_ptr()) }
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("headroom", &self.headroom())
            .field("capacity", &self.capacity())
            .finish()
    }
}
