//! Two dataplanes over af_packet on a veth pair between two network namespaces: real-time
//! channels (one of them multi-packet) under a best-effort flood that would saturate the
//! (paced) link. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns, CAP_NET_RAW); skips with a
//! message otherwise. The namespaces are removed on every exit path, failures included.
//!
//! The scenario and its checks are shared with `afxdp_veth` (`common/veth_scenario.rs`) and
//! run on the veth test bed the evaluation uses (`rtchan::bed::VethBed`, af_packet's
//! configuration there: TPACKET_V3, one page per block and a 1 ms block retire timer, so under
//! load a block reaches user space after about two frame times, ~250 µs at 100 Mb/s); this
//! file picks the port.

#![cfg(target_os = "linux")]

#[path = "common/veth_scenario.rs"]
mod veth_scenario;

use rtchan::bed::veth::Backend;

#[test]
fn real_time_channels_meet_their_bounds_over_af_packet_on_veth() {
    if let Some(why) = veth_scenario::skip_reason("network namespaces, veth, AF_PACKET") {
        eprintln!("SKIPPED afpacket_veth: {why}");
        return;
    }
    veth_scenario::run(Backend::AfPacket);
}
