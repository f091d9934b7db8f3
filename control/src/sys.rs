//! Every `unsafe` of the control plane, each block with its `// SAFETY:` argument; the rest of
//! the crate is `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]

/// The soft limit of `resource` (`getrlimit`), `None` when unlimited or the call fails.
pub(crate) fn rlimit_cur(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit; getrlimit only writes it.
    let rc = unsafe { libc::getrlimit(resource, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}
