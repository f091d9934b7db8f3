//! Two dataplanes over DPDK ports on a veth pair between two network namespaces: DPDK's
//! `net_af_packet` vdev on each end, probed in that end's namespace under one EAL (no
//! hugepages), running the scenario `afpacket_veth` and `afxdp_veth` run, with the same checks
//! (`common/veth_scenario.rs`, on `rtchan::bed::VethBed` with `Backend::Dpdk`): no loss,
//! byte-exact payloads in order, no deadline miss measured OS preemption does not explain, and
//! best-effort's share of the paced link. Needs root; skips with the reason otherwise.

#![cfg(all(target_os = "linux", feature = "dpdk"))]

#[path = "common/veth_scenario.rs"]
mod veth_scenario;

use rtchan::bed::veth::Backend;

#[test]
fn real_time_channels_meet_their_bounds_over_dpdk_on_veth() {
    if let Some(why) = veth_scenario::skip_reason("network namespaces, veth, DPDK net_af_packet") {
        eprintln!("SKIPPED dpdk_veth: {why}");
        return;
    }
    veth_scenario::run(Backend::Dpdk);
}
