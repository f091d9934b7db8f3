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

// The files are grouped by stage (`tx/`, `queue/`, `core/`, `port/`, `rx/`, `sys/`); the
// modules keep their flat paths (`dataplane::link`, `dataplane::core`, ...).

// Sending: the application's handle and submit ring, the handler, the CPU and link schedulers.
#[path = "tx/bench_path.rs"]
#[doc(hidden)]
pub mod bench_path;
#[path = "tx/channel.rs"]
pub mod channel;
#[path = "tx/handler.rs"]
mod handler;
#[path = "tx/link.rs"]
pub mod link;
#[path = "tx/sched.rs"]
pub mod sched;
#[path = "tx/source.rs"]
pub mod source;

// The EDF queue both schedulers use.
#[path = "queue/edf_queue.rs"]
pub mod edf_queue;

// The polling core, its control-side handle and their slot table.
pub mod core;
#[path = "core/handle.rs"]
pub mod handle;
#[path = "core/slots.rs"]
mod slots;

// The port trait, the frame format, the in-memory link and the fault injector.
#[path = "port/fault.rs"]
pub mod fault;
#[path = "port/memlink.rs"]
pub mod memlink;
pub mod port;
#[path = "port/wire.rs"]
pub mod wire;

// Receiving.
pub mod rx;

// Shared by every stage.
pub mod mem;
pub mod spec;
pub mod stats;
pub mod time;

// Every unsafe of the crate.
pub mod sys;

pub use handler::Enforcer;
pub use sys::capture;
pub use sys::shm;
