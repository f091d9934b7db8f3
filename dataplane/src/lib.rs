//! rtchan's dataplane core: real-time channels on polling cores.
//!
//! Deterministic and free of I/O in its logic: every scheduling decision takes `now` as an
//! argument, so the whole dataplane runs in virtual time in tests. I/O lives behind the
//! [`port::Port`] trait (the in-memory link here; DPDK, AF_XDP and af_packet elsewhere).
//!
//! # Data flow (sending host)
//! ```text
//! application ── Sender::submit ──▶ submit ring (per channel, SPSC) ──doorbell──▶ polling core
//!   core: handler takes the message, stamps ℓ (enforcement), CPU scheduler (EDF, 3 classes)
//!         picks it, it writes ≤ k packets into port buffers ─▶ link scheduler (EDF per TX
//!         queue, paced, in-flight bounded) ─▶ Port::tx_burst
//! ```
//! # Data flow (receiving host)
//! ```text
//! Port::rx_burst ─▶ parse ─▶ demultiplex by channel ─▶ reassemble ─▶ Receiver (per channel)
//! ```
//! # Modules
//! - [`shm`]: shared-memory rings between the daemon and client processes.
//! - [`capture`]: the per-core capture rings of `rtchanctl capture`.
//! - [`spec`]: channel specifications, validated once.
//! - [`channel`]: the sender handle, submit ring, buffer pool and doorbell.
//! - `handler` (private): per-channel state machine: enforcement and fragmentation.
//! - [`sched`]: the per-core cooperative three-class EDF scheduler.
//! - [`link`]: the per-TX-queue EDF link scheduler with pacing.
//! - [`edf_queue`]: the bucketed EDF queue both schedulers use.
//! - [`core`]: the polling core loop and its thread.
//! - [`rx`]: the receive path.
//! - [`wire`]: the frame format.
//! - [`port`], [`memlink`], [`fault`]: the port trait, the in-memory link, a fault injector.
//! - [`source`]: traffic sources; [`stats`]: counters and histograms; [`time`]: clocks.
//! - `slots` (private): the channel-to-slot table of a core and of its control handle.
//! - [`sys`]: every `unsafe` of the crate (the rings, prefetch and TSC, libc calls); the rest
//!   is `#![deny(unsafe_code)]`.

#![deny(unsafe_code)]

#[doc(hidden)]
pub mod bench_path;
pub mod channel;
pub mod core;
pub mod edf_queue;
pub mod fault;
pub mod handle;
mod handler;
pub mod link;
pub mod mem;
pub mod memlink;
pub mod port;
pub mod rx;
pub mod sched;
mod slots;
pub mod source;
pub mod spec;
pub mod stats;
pub mod sys;
pub mod time;
pub mod wire;

pub use handler::Enforcer;
pub use sys::capture;
pub use sys::shm;
