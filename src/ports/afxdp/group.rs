//! Several polling cores on one interface over AF_XDP: one socket per core, core `i`'s bound to
//! queue `first + i` of the device, each with its own UMEM ([`open_queues`], [`XskGroup`]).
//!
//! libxdp's default program redirects every frame to the socket of the queue it arrived on
//! (`bpf_redirect_map(xsks_map, rx_queue_index)`); the sockets after the first find the
//! program the first one loaded and add themselves to its map. Which queue a frame arrives on
//! is the device's choice (a NIC's RSS hash; on veth, the TX queue the sender used), not the
//! channel's, so every frame of a channel whose receiver is on another core is handed to that
//! core in software ([`Steering`]). No XDP program could steer instead: the kernel gives a
//! redirected frame only to a socket bound to the queue it arrived on (`xsk_rcv_check`), so
//! only the device itself (NIC flow rules) could choose the queue by channel.
//!
//! The default program takes every frame of the bound queues away from the kernel, ARP and
//! TCP included: they reach whichever core's socket and that core's receive path counts and
//! drops them.

use std::sync::Arc;

use dataplane::spec::ChannelId;

use super::{AfXdpConfig, AfXdpError, AfXdpPort, XdpFrame};
use crate::ports::steering::{Member, QueueCounters, QueueReport, SharedDevice, Steering};

/// The control side of the per-queue sockets: the steering table and per-socket counters.
#[derive(Debug)]
pub struct XskGroup {
    steering: Arc<Steering<XdpFrame>>,
    counters: Vec<Arc<QueueCounters>>,
}

/// Opens `sockets` AF_XDP ports on `ifname`, port `i` on queue `cfg.queue_id + i` (core `i`'s;
/// see the module docs). Channels placed with [`SharedDevice::steer`] (up to `max_channels`
/// receivers) are handed to their core.
pub fn open_queues(
    ifname: &str,
    cfg: AfXdpConfig,
    sockets: usize,
    udp_port: u16,
    max_channels: usize,
) -> Result<(Vec<AfXdpPort>, XskGroup), AfXdpError> {
    let steering = Steering::new(sockets, max_channels);
    let mut ports = Vec::with_capacity(sockets);
    let mut counters = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let queue_id = u32::try_from(i)
            .ok()
            .and_then(|i| cfg.queue_id.checked_add(i))
            .ok_or_else(|| AfXdpError::Config {
                ifname: ifname.into(),
                queue: cfg.queue_id,
                reason: format!("{sockets} queues from {} overflow", cfg.queue_id),
            })?;
        let mut port = AfXdpPort::open(ifname, AfXdpConfig { queue_id, ..cfg })?;
        let c = Arc::new(QueueCounters::default());
        port.join(Member::new(i, steering.clone(), c.clone(), udp_port));
        counters.push(c);
        ports.push(port);
    }
    Ok((ports, XskGroup { steering, counters }))
}

impl SharedDevice for XskGroup {
    fn steer(&self, id: ChannelId, core: Option<u16>) -> std::io::Result<()> {
        match core {
            Some(c) => self.steering.place(id, c),
            None => self.steering.remove(id),
        }
        Ok(())
    }

    fn report(&self) -> Vec<QueueReport> {
        self.steering.report(&self.counters)
    }

    fn steering_name(&self) -> &'static str {
        "software"
    }
}
