//! The port backends: every way rtchan puts frames on a link, in one place.
//!
//! Each backend is a module with the same shape: a `…Config` (how it is set up), a `…Port`
//! implementing [`dataplane::port::Port`] (opened with `…Port::open`), and a `…Error` naming the
//! device and the call that failed. The daemon builds any of them through one function,
//! [`open::open`], which maps the `[port]` table to a backend and every failure to the key at
//! fault, so no backend's set-up (and no `unsafe`) leaks into the daemon.
//!
//! - [`afpacket`]: a Linux `AF_PACKET` socket with a TPACKET_V3 ring (veth, any NIC);
//! - [`afxdp`] (feature `af_xdp`): an AF_XDP socket on one interface queue, over libxdp;
//! - [`dpdk`] (feature `dpdk`): DPDK 22.11 ethdev ports (NICs bound to vfio-pci, vdevs);
//! - [`steering`]: the channel → core table and software hand-off of ports whose cores share
//!   one device (dpdk queue pairs, af_packet fanout sockets);
//! - [`pcap`]: a wrapper recording what any port sends and receives as a pcap file;
//! - [`iface`] and [`netns`]: interface addresses, network namespaces and veth pairs.

/// Includes bindgen's output `OUT_DIR/$file` (made by `build.rs`) as the items of the module
/// it is used in, with the lints generated code cannot meet turned off for it alone.
#[cfg(any(feature = "dpdk", feature = "af_xdp"))]
macro_rules! bindgen_output {
    ($file:literal) => {
        #[allow(
            non_camel_case_types,
            non_upper_case_globals,
            non_snake_case,
            dead_code,
            missing_docs,
            unsafe_op_in_unsafe_fn,
            rustdoc::all,
            clippy::all,
            clippy::pedantic,
            clippy::undocumented_unsafe_blocks
        )]
        mod generated {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
        pub use generated::*;
    };
}

pub mod afpacket;
#[cfg(feature = "af_xdp")]
pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod iface;
pub mod netns;
pub mod open;
pub mod pcap;
pub mod steering;

pub use open::{open, OpenError, Opened, Ports, WireAddr};
