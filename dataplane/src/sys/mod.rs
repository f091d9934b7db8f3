//! Every `unsafe` of the dataplane, each block with its `// SAFETY:` argument; the rest of the
//! crate is `#![deny(unsafe_code)]` and calls these safe wrappers.
//!
//! - [`shm`]: the shared-memory rings. Their raw memory (mapping, descriptor and buffer
//!   access) is sound only through the ring protocol's invariants, so the protocol lives here
//!   with it; re-exported as `dataplane::shm`.
//! - [`capture`]: the capture rings (`rtchanctl capture`): frame slots written by the polling
//!   core and read by the control thread under the ring protocol; re-exported as
//!   `dataplane::capture`.
//! - [`cpu`]: instructions without preconditions (cache prefetch, the TSC).
//! - `os` (crate-private): libc calls that fill a plain struct or change the calling thread's
//!   scheduling (the monotonic clock, `SCHED_FIFO`, nice).
#![allow(unsafe_code)]

pub mod capture;
pub mod cpu;
pub(crate) mod os;
pub mod shm;
