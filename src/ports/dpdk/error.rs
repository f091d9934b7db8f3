//! The error type of the DPDK layer: every failing DPDK call carries its `rte_errno` (or the
//! negative errno the call returned) and the text `rte_strerror` gives for it.

use std::ffi::{c_int, CStr};

use super::ffi;

/// Result of the DPDK layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a DPDK operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `rte_eal_init` was already called in this process. DPDK's EAL can be initialised (or
    /// even attempted) only once per process, and not again after `rte_eal_cleanup`.
    #[error("DPDK EAL was already initialised in this process (it can be initialised only once)")]
    AlreadyInitialised,
    /// [`Eal::cleanup`](super::Eal::cleanup) was called while other handles (pools, ports)
    /// still used the EAL.
    #[error("DPDK EAL is still in use by {0} other handle(s)")]
    EalInUse(usize),
    /// A DPDK call failed.
    #[error("{op} failed: {message} (rte_errno {errno})")]
    Rte {
        /// The DPDK function that failed.
        op: &'static str,
        /// Its `rte_errno` (positive errno or `RTE_E*` code).
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// An `rte_flow` call failed: the PMD's own message, and which part of the rule it
    /// refused.
    #[error("{op} failed: {message} ({cause}, errno {errno})")]
    Flow {
        /// The `rte_flow` function.
        op: &'static str,
        /// The errno it returned (`ENOTSUP`, `ENOSYS`, `EINVAL`...).
        errno: i32,
        /// What the PMD blamed (`rte_flow_error.type`: "pattern item", "action"...).
        cause: &'static str,
        /// `rte_flow_error.message`, or `rte_strerror(errno)` when the PMD gave none.
        message: String,
    },
    /// An argument that cannot be passed to DPDK (interior NUL, name too long, zero count).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No ethdev port has this name.
    #[error("no DPDK ethdev port named {0:?}")]
    NoSuchPort(String),
    /// Another [`EthPort`](super::EthPort) in this process owns the port.
    #[error("DPDK port {0} is already owned by an EthPort")]
    PortInUse(u16),
}

impl Error {
    /// The DPDK errno, for [`Error::Rte`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Rte { errno, .. } | Error::Flow { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// An error for `op` from an errno value (sign ignored: ethdev returns `-errno`).
    pub(crate) fn rte(op: &'static str, code: c_int) -> Self {
        let errno = code.saturating_abs();
        Error::Rte {
            op,
            errno,
            message: strerror(errno),
        }
    }

    /// An error for `op` from the calling thread's current `rte_errno`.
    pub(crate) fn from_rte_errno(op: &'static str) -> Self {
        Self::rte(op, last_rte_errno())
    }
}

/// The calling thread's `rte_errno`.
pub fn last_rte_errno() -> i32 {
    // SAFETY: reads a thread-local int through the C helper; no preconditions.
    unsafe { ffi::rtchan_rte_errno() }
}

/// `rte_strerror(errno)` as an owned string.
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror accepts any value and returns a pointer to a NUL-terminated string
    // (a static one, or a thread-local buffer for unknown codes) that stays valid until the
    // next call on this thread; it is copied out before returning.
    unsafe {
        let msg = ffi::rte_strerror(errno);
        if msg.is_null() {
            return format!("error {errno}");
        }
        CStr::from_ptr(msg).to_string_lossy().into_owned()
    }
}
