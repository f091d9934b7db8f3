//! Packet-buffer pools: a `rte_pktmbuf_pool_create` pool of a size the caller chooses.
//!
//! A [`Mempool`] is a cloneable, thread-safe handle (DPDK's default `ring_mp_mc` pool ops are
//! multi-producer/multi-consumer; EAL lcores use their per-lcore cache, other threads the
//! ring). The pool's memory is released when the last handle goes *and* every mbuf is back
//! in the pool; if mbufs are still out (in a NIC ring, in a leaked [`Mbuf`]), the pool is
//! leaked instead, together with a reference on the [`Eal`], so no buffer ever dangles.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use dataplane::port::Batch;

use super::eal::Eal;
use super::error::{Error, Result};
use super::ffi;
use super::mbuf::Mbuf;

/// Longest pool name DPDK accepts (`RTE_MEMPOOL_NAMESIZE` less the NUL and the "MP_" prefix
/// the ring name adds).
pub const MAX_POOL_NAME: usize = 22;

/// How to create a pktmbuf pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Unique name in the process (at most [`MAX_POOL_NAME`] bytes).
    pub name: String,
    /// Number of mbufs. DPDK is most memory-efficient with 2^q − 1.
    pub count: u32,
    /// Per-lcore cache size (0 disables; at most `RTE_MEMPOOL_CACHE_MAX_SIZE` and at most
    /// `count / 1.5`).
    pub cache_size: u32,
    /// Data room per mbuf, headroom included (`RTE_MBUF_DEFAULT_BUF_SIZE`: 2048 + 128).
    pub data_room: u16,
    /// NUMA socket to allocate on; `None` means the calling lcore's socket.
    pub socket_id: Option<i32>,
}

impl MempoolConfig {
    /// A pool of `count` default-sized mbufs with a per-lcore cache of
    /// `min(256, count / 2)`.
    pub fn new(name: impl Into<String>, count: u32) -> Self {
        MempoolConfig {
            name: name.into(),
            count,
            cache_size: (count / 2).min(256),
            data_room: ffi::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            socket_id: None,
        }
    }
}

/// A pktmbuf pool. Cheap to clone; see the module docs for when its memory is freed.
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    ptr: NonNull<ffi::rte_mempool>,
    name: String,
    eal: Eal,
}

// SAFETY: the pool is created with DPDK's default ops (ring_mp_mc), whose get/put are safe
// from any thread concurrently; its header is only read after creation.
unsafe impl Send for PoolInner {}
// SAFETY: as above; every operation through &PoolInner is a thread-safe DPDK call.
unsafe impl Sync for PoolInner {}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool")
            .field("name", &self.inner.name)
            .field("size", &self.size())
            .field("available", &self.available())
            .finish()
    }
}

impl Mempool {
    /// Creates a pool (`rte_pktmbuf_pool_create`).
    pub fn create(eal: &Eal, config: &MempoolConfig) -> Result<Mempool> {
        if config.name.is_empty() || config.name.len() > MAX_POOL_NAME {
            return Err(Error::InvalidArgument(format!(
                "pool name {:?} must be 1..={MAX_POOL_NAME} bytes",
                config.name
            )));
        }
        if config.count == 0 {
            return Err(Error::InvalidArgument("pool of zero mbufs".into()));
        }
        if u32::from(config.data_room) <= ffi::RTE_PKTMBUF_HEADROOM {
            return Err(Error::InvalidArgument(format!(
                "data room {} leaves no space after the {}-byte headroom",
                config.data_room,
                ffi::RTE_PKTMBUF_HEADROOM
            )));
        }
        let name = CString::new(config.name.as_str())
            .map_err(|_| Error::InvalidArgument("pool name contains NUL".into()))?;
        let socket = config.socket_id.unwrap_or_else(|| eal.socket_id());
        // SAFETY: EAL is initialised (eal exists); name is NUL-terminated and copied by DPDK.
        let ptr = unsafe {
            ffi::rte_pktmbuf_pool_create(
                name.as_ptr(),
                config.count,
                config.cache_size,
                0,
                config.data_room,
                socket,
            )
        };
        let ptr =
            NonNull::new(ptr).ok_or_else(|| Error::from_rte_errno("rte_pktmbuf_pool_create"))?;
        Ok(Mempool {
            inner: Arc::new(PoolInner {
                ptr,
                name: config.name.clone(),
                eal: eal.clone(),
            }),
        })
    }

    /// Shorthand for [`Mempool::create`] with [`MempoolConfig::new`].
    pub fn pktmbuf(eal: &Eal, name: &str, count: u32) -> Result<Mempool> {
        Mempool::create(eal, &MempoolConfig::new(name, count))
    }

    /// One mbuf, reset (length 0, default headroom), or `None` when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is alive (self holds it); rte_pktmbuf_alloc is thread-safe for
        // ring_mp_mc pools and returns NULL or an mbuf with refcnt 1 that nobody else owns.
        let m = unsafe { ffi::rte_pktmbuf_alloc(self.as_ptr()) };
        // SAFETY: a non-NULL result is a fresh single-segment mbuf we now own.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }

    /// Appends `n` mbufs to `batch`, all or none (`rte_pktmbuf_alloc_bulk`); returns false
    /// when the pool has fewer than `n` or `batch` has no room for them.
    pub fn alloc_bulk(&self, batch: &mut Batch<Mbuf>, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if n > batch.remaining_capacity() {
            return false;
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); dataplane::port::MAX_BURST];
        // SAFETY: ptrs has room for n <= MAX_BURST pointers; the pool is alive. On success all
        // n entries are fresh mbufs we own; on failure none was taken.
        let ret =
            unsafe { ffi::rte_pktmbuf_alloc_bulk(self.as_ptr(), ptrs.as_mut_ptr(), n as u32) };
        if ret != 0 {
            return false;
        }
        for &m in &ptrs[..n] {
            // SAFETY: see above: each pointer is a non-NULL mbuf now owned by this batch.
            batch.push(unsafe { Mbuf::from_raw(NonNull::new_unchecked(m)) });
        }
        true
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Number of mbufs the pool was created with.
    pub fn size(&self) -> u32 {
        // SAFETY: the header is valid while the pool lives and `size` is never written after
        // creation.
        unsafe { (*self.as_ptr()).size }
    }

    /// Mbufs currently in the pool (per-lcore caches included).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is alive; the call only reads counters.
        unsafe { ffi::rte_mempool_avail_count(self.as_ptr()) }
    }

    /// Mbufs currently out of the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is alive; the call only reads counters.
        unsafe { ffi::rte_mempool_in_use_count(self.as_ptr()) }
    }

    /// Data room per mbuf, headroom included.
    pub fn data_room(&self) -> u16 {
        // SAFETY: the pool is alive and is a pktmbuf pool (its private area is set).
        unsafe { ffi::rte_pktmbuf_data_room_size(self.as_ptr()) }
    }

    /// Bytes of packet one freshly allocated mbuf holds (data room less headroom).
    pub fn buf_capacity(&self) -> usize {
        usize::from(self.data_room()).saturating_sub(ffi::RTE_PKTMBUF_HEADROOM as usize)
    }

    /// The raw pool, for DPDK calls this module does not wrap (rte_sched, queue setup).
    /// It stays valid while any clone of this handle lives.
    pub fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.inner.ptr.as_ptr()
    }

    /// The EAL this pool was created under.
    pub fn eal(&self) -> &Eal {
        &self.inner.eal
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let mp = self.ptr.as_ptr();
        // SAFETY: the pool is alive until freed below; these calls only read it.
        let all_back = unsafe { ffi::rte_mempool_avail_count(mp) == (*mp).size };
        if all_back {
            // SAFETY: no handle is left and every mbuf is back in the pool, so nothing can
            // reach the pool's memory any more.
            unsafe { ffi::rte_mempool_free(mp) };
        } else {
            // Some mbuf may still be used (a NIC ring of a port using this pool for TX, a
            // leaked Mbuf): leak the pool, and keep EAL (its memory) alive for good.
            std::mem::forget(self.eal.clone());
        }
    }
}
