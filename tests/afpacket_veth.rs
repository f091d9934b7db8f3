//! Two dataplanes over af_packet on a veth pair between two network namespaces: real-time
//! channels (one of them multi-packet) under a best-effort flood that would saturate the
//! (paced) link. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns, CAP_NET_RAW); skips with a
//! message otherwise. The namespaces are removed on every exit path, failures included.
//!
//! The scenario and its checks are shared with `afxdp_veth` (`common/veth_scenario.rs`); this
//! file supplies the port.

#![cfg(target_os = "linux")]

#[path = "common/veth_scenario.rs"]
mod veth_scenario;

use rtchan::ports::afpacket::{AfPacketConfig, AfPacketPort};
use veth_scenario::{ScenarioPort, RATE_BPS};

fn port_config() -> AfPacketConfig {
    AfPacketConfig {
        // One page per block: at most two full-size frames, so under load a block is handed to
        // user space after about two frame times (~250 µs at 100 Mb/s).
        rx_block_size: 4096,
        rx_blocks: 512,
        frame_size: 2048,
        tx_batch: 32,
        pool_buffers: 2048,
        qdisc_bypass: true,
        link_rate_bps: RATE_BPS,
        rx_block_timeout_ms: 1,
    }
}

/// A TPACKET_V3 block reaches user space only when full or when its 1 ms retire timer fires (a
/// 4 ms jiffy at HZ = 250): part of what the scenario's generous latency bounds allow for.
impl ScenarioPort for AfPacketPort {
    const NAME: &'static str = "af_packet";
    const NS_PREFIX: &'static str = "rtchan-";
    const IF_PREFIX: &'static str = "rt";
    const THREAD_PREFIX: &'static str = "afp";

    fn open_on(ifname: &str) -> Result<Self, String> {
        AfPacketPort::open(ifname, port_config()).map_err(|e| e.to_string())
    }

    fn sender_notes(&self) -> Vec<String> {
        self.notes().to_vec()
    }

    fn receiver_notes(&self) -> Vec<String> {
        Vec::new()
    }
}

#[test]
fn real_time_channels_meet_their_bounds_over_af_packet_on_veth() {
    if let Some(why) = veth_scenario::skip_reason("network namespaces, veth, AF_PACKET") {
        eprintln!("SKIPPED afpacket_veth: {why}");
        return;
    }
    veth_scenario::run::<AfPacketPort>();
}
