//! rtchan's control plane.
//!
//! - [`admission`]: the deterministic, I/O-free admission test. It turns a channel request
//!   (`Mmax`, `Imin`, `Bmax`, local bound `d`) and the calibrated cost model into per-core
//!   and per-TX-queue sporadic tasks, runs an exact EDF processor-demand test on each, and
//!   answers with a placement, CPU and link deadlines and a buffer reservation, or with the
//!   resource and test that refused it and the tightest deadline it could have granted.
pub mod admission;
