//! rtchan: real-time channels over a kernel-bypass dataplane.
//!
//! This crate holds the edges around the deterministic core in `dataplane` and the control
//! plane in `control`: port backends (DPDK behind the `dpdk` feature), the daemon, the demo
//! and the binaries `rtchand` and `rtchanctl`.

pub mod afpacket;
#[cfg(feature = "af_xdp")]
pub mod afxdp;
pub mod daemon;
pub mod demo;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod eval;
pub mod netns;
pub mod pcap;
pub mod preemption;
