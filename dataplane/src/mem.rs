//! Memory the packet path touches is faulted in when it is allocated, on the control path:
//! zeroed allocations are mapped lazily by the kernel, and the first touch of each page would
//! otherwise cost a page fault on the hot path (a best-effort flood first walking a pool of
//! thousands of buffers cost the polling core milliseconds).

/// Page size assumed for pre-faulting (the smallest Linux page: touching more often is harmless).
const PAGE: usize = 4096;

/// A zeroed byte buffer of `len` bytes with every page already mapped.
pub fn prefaulted_bytes(len: usize) -> Box<[u8]> {
    let mut b = vec![0u8; len].into_boxed_slice();
    prefault(&mut b);
    b
}

/// Touches every page of `s` (writing its current value back through an opaque value, so the
/// compiler cannot drop the store as redundant on zeroed memory).
pub fn prefault<T: Copy>(s: &mut [T]) {
    let stride = (PAGE / std::mem::size_of::<T>().max(1)).max(1);
    let mut i = 0;
    while i < s.len() {
        s[i] = std::hint::black_box(s[i]);
        i += stride;
    }
}

pub use crate::sys::cpu::prefetch;

/// [`prefetch`] for every cache line of `*p`, up to `MAX_LINES` lines.
#[inline(always)]
pub fn prefetch_lines<T, const MAX_LINES: usize>(p: *const T) {
    let lines = std::mem::size_of::<T>().div_ceil(64).min(MAX_LINES);
    for i in 0..lines {
        prefetch((p as *const u8).wrapping_add(i * 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefaulting_keeps_contents() {
        let b = prefaulted_bytes(10_000);
        assert!(b.iter().all(|&x| x == 0));
        let mut v = vec![[1u32, 2]; 5000];
        prefault(&mut v);
        assert!(v.iter().all(|x| *x == [1, 2]));
    }

    #[test]
    fn prefetch_is_harmless_anywhere() {
        let v = vec![7u64; 1000];
        prefetch(&v[3]);
        prefetch_lines::<[u64; 1000], 4>(v.as_ptr() as *const [u64; 1000]);
        // Addresses that are not the program's: a hint never faults.
        prefetch(std::ptr::null::<u64>());
        prefetch(usize::MAX as *const u64);
        assert_eq!(v[3], 7);
    }
}
