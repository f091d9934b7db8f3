//! rtchan's control plane.
//!
//! - [`admission`]: the deterministic, I/O-free admission test. It turns a channel request
//!   (`Mmax`, `Imin`, `Bmax`, local bound `d`) and the calibrated cost model into per-core
//!   and per-TX-queue sporadic tasks, runs an exact EDF processor-demand test on each, and
//!   answers with a placement, CPU and link deadlines and a buffer reservation, or with the
//!   resource and test that refused it and the tightest deadline it could have granted.
//! - [`e2e`]: how an end-to-end bound D is split over the sending host, the network and the
//!   receiving host.
//! - [`config`]: the daemon's TOML configuration, validated with errors naming the key.
//! - [`limits`]: the `[limits]` table: connection caps and timeouts of the control socket.
//! - [`protocol`]: the versioned line-delimited JSON spoken by `rtchanctl` and the daemon,
//!   and between daemons' control planes.
//! - [`reservation`]: the reservation protocol between two daemons' control planes
//!   (prepare, commit, abort, release, heartbeat, loss of the peer) as deterministic state
//!   machines that take `now` and messages and return what to send and do.
//! - [`state`]: the persisted channel table, written atomically.
//! - [`units`]: durations (`500us`) and sizes (`4KiB`) as people write them.
//! - `sys` (private): the crate's only `unsafe` (`getrlimit`); the rest is
//!   `#![deny(unsafe_code)]`.
//!
//! Data flow: `rtchanctl` encodes a [`protocol::Request`]; the daemon (crate `rtchan`,
//! module `daemon`) decodes it, runs [`admission`] on both hosts as [`e2e`] describes, applies
//! the result to the dataplane's cores, and saves the table with [`state`].
#![deny(unsafe_code)]

pub mod admission;
pub mod config;
pub mod e2e;
pub mod limits;
pub mod protocol;
pub mod reservation;
pub mod state;
mod sys;
pub mod units;
