//! rtchan: real-time channels over a kernel-bypass dataplane.
//!
//! This crate holds the edges around the deterministic core in `dataplane` and the control
//! plane in `control`: port backends (`ports`: DPDK behind the `dpdk` feature, AF_XDP behind `af_xdp`), the daemon, the demo,
//! the test beds scenarios run on (`bed`: virtual time, veth; the evaluation and the end-to-end
//! tests share them) and the binaries `rtchand` and `rtchanctl`.
//!
//! `unsafe` is denied everywhere but in [`sys`] (system calls `std` does not wrap) and in the
//! port backends under [`ports`].

#![deny(unsafe_code)]

pub mod bed;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod pcapng;
#[allow(unsafe_code)]
pub mod ports;
pub mod preemption;
#[allow(unsafe_code)]
pub mod sys;
