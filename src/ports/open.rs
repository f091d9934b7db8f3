//! [`open`]: the one function through which the daemon builds the ports of any backend from
//! the `[port]` and `[[cores]]` tables.
//!
//! It returns one [`Ports`] value: the ports each polling core will own (memlink pairs, null
//! ports, af_packet or AF_XDP sockets, or DPDK queue pairs, one per core) and, for backends
//! that put frames on a real wire, this host's addresses there ([`WireAddr`]). Every failure
//! is an [`OpenError`] naming the configuration key at fault, and happens before the daemon
//! admits any channel.

use std::sync::Arc;

use control::config::{parse_mac, DaemonConfig, PortKind};
use dataplane::memlink::{MemLink, MemLinkConfig, MemPort, NullPort};
use dataplane::port::Port;
use dataplane::time::Clock;

use super::afpacket::{device_queues, open_group, AfPacketConfig, AfPacketPort, FanoutGroup};
use super::iface;

/// This host's addresses on the data link (af_packet, af_xdp, dpdk): the source of its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireAddr {
    /// Source MAC.
    pub mac: [u8; 6],
    /// Source IPv4.
    pub ip: [u8; 4],
}

/// A `[port]` value the port cannot be opened with: the key and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct OpenError {
    /// The configuration key at fault (`port.device`, `cores`, `port.eal_args`, ...).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> OpenError {
    OpenError {
        key: key.into(),
        message: message.into(),
    }
}

/// The opened ports, one per polling core.
pub enum Ports {
    /// memlink: per core, the sending end and the loopback receiving end.
    Memlink(Vec<(MemPort, MemPort)>),
    /// null: per core, a port that discards everything.
    Null(Vec<NullPort>),
    /// af_packet: per core, its socket; with more than one core, the sockets' fanout group
    /// (steering and per-socket counters).
    AfPacket(Vec<AfPacketPort>, Option<FanoutGroup>),
    /// af_xdp: per core, its socket (core `i` on queue `port.queue + i`); with more than one
    /// core, their steering and per-socket counters.
    #[cfg(feature = "af_xdp")]
    AfXdp(Vec<super::afxdp::AfXdpPort>, Option<super::afxdp::XskGroup>),
    /// dpdk: per core, its queue pair of the one port, and the port for reports.
    #[cfg(feature = "dpdk")]
    Dpdk(super::dpdk::DaemonPort),
}

/// What [`open`] built.
pub struct Opened {
    /// The ports.
    pub ports: Ports,
    /// This host's addresses on a real wire (af_packet, af_xdp, dpdk).
    pub wire: Option<WireAddr>,
}

/// Opens the ports `cfg` describes, one per `[[cores]]` entry where the backend has queues.
pub fn open(cfg: &DaemonConfig, clock: Arc<dyn Clock>) -> Result<Opened, OpenError> {
    let max_frame = cfg.cost.mtu as usize + 14;
    let (ports, wire) = match cfg.port.kind {
        PortKind::Memlink => {
            let pairs = cfg
                .cores
                .iter()
                .map(|_| {
                    MemLink::pair(
                        MemLinkConfig {
                            rate_bps: cfg.link_rate_bps(),
                            fifo_packets: cfg.port.fifo_packets,
                            pool_buffers: cfg.port.buffers,
                            max_frame,
                            tx_queues: 1,
                        },
                        clock.clone(),
                    )
                })
                .collect();
            (Ports::Memlink(pairs), None)
        }
        PortKind::Null => (
            Ports::Null(
                cfg.cores
                    .iter()
                    .map(|_| NullPort::new(cfg.port.buffers, max_frame))
                    .collect(),
            ),
            None,
        ),
        PortKind::AfPacket => {
            let (ports, group) = open_af_packet(cfg, max_frame)?;
            (Ports::AfPacket(ports, group), Some(wire_addr(cfg, None)?))
        }
        #[cfg(feature = "af_xdp")]
        PortKind::AfXdp => {
            let (ports, group) = open_af_xdp(cfg, max_frame)?;
            (Ports::AfXdp(ports, group), Some(wire_addr(cfg, None)?))
        }
        #[cfg(not(feature = "af_xdp"))]
        PortKind::AfXdp => {
            return Err(err(
                "port.kind",
                "'af_xdp': rtchand was built without the af_xdp feature (rebuild with \
                 `cargo build --features af_xdp`)",
            ))
        }
        #[cfg(feature = "dpdk")]
        PortKind::Dpdk => {
            let port = super::dpdk::DaemonPort::open(cfg, max_frame)?;
            let mac = port.mac();
            (Ports::Dpdk(port), Some(wire_addr(cfg, Some(mac))?))
        }
        #[cfg(not(feature = "dpdk"))]
        PortKind::Dpdk => {
            return Err(err(
                "port.kind",
                "'dpdk': rtchand was built without the dpdk feature (rebuild with \
                 `cargo build --features dpdk`)",
            ))
        }
    };
    Ok(Opened { ports, wire })
}

/// Refuses more `[[cores]]` entries than `dev` has RX or TX queues from queue `first` on
/// (each core is one queue of the device in the admission model). One core on queue 0 always
/// fits; a device whose queues cannot be read is let through with a note.
pub fn check_queue_count(cfg: &DaemonConfig, dev: &str, first: u32) -> Result<(), OpenError> {
    let cores = cfg.cores.len();
    if cores <= 1 && first == 0 {
        return Ok(());
    }
    let need = cores + first as usize;
    let from = if first > 0 {
        format!(" from queue {first} (port.queue) on")
    } else {
        String::new()
    };
    match device_queues(dev) {
        Ok((rx, tx)) if need > rx as usize || need > tx as usize => Err(err(
            "cores",
            format!(
                "{cores} [[cores]] entries need {cores} RX and {cores} TX queues of '{dev}'{from}, \
                 which has {rx} RX and {tx} TX queues (a veth gets more with `ip link add ... \
                 numrxqueues N numtxqueues N`; a NIC with `ethtool -L {dev} combined N`)"
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!(
                "rtchand: {}: the queue count of '{dev}' is unknown ({e}); not checked against \
                 the {cores} cores",
                cfg.port.kind.name()
            );
            Ok(())
        }
    }
}

/// Opens the af_packet socket(s) of `cfg.port.device`: one, or with several cores one per
/// core in a fanout group.
fn open_af_packet(
    cfg: &DaemonConfig,
    max_frame: usize,
) -> Result<(Vec<AfPacketPort>, Option<FanoutGroup>), OpenError> {
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    check_queue_count(cfg, dev, 0)?;
    let acfg = AfPacketConfig {
        rx_block_size: p.rx_block_size,
        rx_blocks: p.rx_blocks,
        frame_size: p.frame_size,
        tx_batch: p.tx_batch,
        pool_buffers: p.buffers,
        qdisc_bypass: p.qdisc_bypass,
        link_rate_bps: cfg.link_rate_bps(),
        rx_block_timeout_ms: p.rx_block_timeout_ms,
    };
    let cores = cfg.cores.len();
    let (ports, group) = if cores == 1 {
        let port = AfPacketPort::open(dev, acfg).map_err(|e| err("port.device", e.to_string()))?;
        (vec![port], None)
    } else {
        let max_channels: usize = cfg.cores.iter().map(|c| c.max_channels as usize).sum();
        let (ports, group) = open_group(
            dev,
            acfg,
            cores,
            dataplane::wire::RTCHAN_UDP_PORT,
            max_channels,
        )
        .map_err(|e| err("port.device", e.to_string()))?;
        eprintln!(
            "rtchand: af_packet {dev}: {cores} sockets in fanout group {}, {} steering",
            group.id(),
            group.mode().name()
        );
        for n in group.notes() {
            eprintln!("rtchand: af_packet {dev}: {n}");
        }
        (ports, Some(group))
    };
    let port = &ports[0];
    if port.capabilities().max_frame < max_frame {
        return Err(err(
            "cost.mtu",
            format!("{} exceeds the MTU {} of '{dev}'", cfg.cost.mtu, port.mtu()),
        ));
    }
    for n in port.notes() {
        eprintln!("rtchand: af_packet {dev}: {n}");
    }
    Ok((ports, group))
}

/// This host's addresses: `port.mac`/`port.ip`, else the device's MAC (`device_mac`, or the
/// kernel interface's) and the interface's first IPv4 address.
fn wire_addr(cfg: &DaemonConfig, device_mac: Option<[u8; 6]>) -> Result<WireAddr, OpenError> {
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    let mac = match (&p.mac, device_mac) {
        (Some(m), _) => parse_mac(m).map_err(|e| err("port.mac", e))?,
        (None, Some(m)) => m,
        (None, None) => iface::hwaddr(dev)
            .map_err(|e| err("port.mac", format!("the MAC address of '{dev}': {e}")))?,
    };
    let ip = match p.ip {
        Some(ip) => ip.octets(),
        None => iface::ipv4(dev).map_err(|e| {
            err(
                "port.ip",
                format!("the IPv4 address of '{dev}': {e} (give one with port.ip)"),
            )
        })?,
    };
    Ok(WireAddr { mac, ip })
}

/// Opens the AF_XDP socket(s) of `cfg.port.device`: one per core, core `i`'s on queue
/// `cfg.port.queue + i`.
#[cfg(feature = "af_xdp")]
fn open_af_xdp(
    cfg: &DaemonConfig,
    max_frame: usize,
) -> Result<(Vec<super::afxdp::AfXdpPort>, Option<super::afxdp::XskGroup>), OpenError> {
    use super::afxdp::{open_queues, AfXdpConfig, AfXdpPort, XdpAttach, XskBind};
    use control::config::{XdpAttachMode, XdpBindMode};
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    let frames = |key: &str, n: usize| {
        u32::try_from(n).map_err(|_| err(&format!("port.{key}"), format!("{n} is too large")))
    };
    let xcfg = AfXdpConfig {
        queue_id: p.queue,
        frame_size: frames("frame_size", p.frame_size)?,
        rx_frames: p.rx_frames,
        tx_frames: frames("buffers", p.buffers)?,
        attach: match p.attach {
            XdpAttachMode::Auto => XdpAttach::Auto,
            XdpAttachMode::Native => XdpAttach::Native,
            XdpAttachMode::Skb => XdpAttach::Skb,
        },
        bind: match p.bind {
            XdpBindMode::Copy => XskBind::Copy,
            XdpBindMode::ZeroCopy => XskBind::ZeroCopy,
            XdpBindMode::ZeroCopyOrCopy => XskBind::ZeroCopyOrCopy,
        },
        link_rate_bps: cfg.link_rate_bps(),
        report_completions: p.report_completions,
        ..AfXdpConfig::default()
    };
    check_queue_count(cfg, dev, p.queue)?;
    let cores = cfg.cores.len();
    let (ports, group) = if cores == 1 {
        let port = AfXdpPort::open(dev, xcfg).map_err(|e| err("port.device", e.to_string()))?;
        (vec![port], None)
    } else {
        let max_channels: usize = cfg.cores.iter().map(|c| c.max_channels as usize).sum();
        let (ports, group) = open_queues(
            dev,
            xcfg,
            cores,
            dataplane::wire::RTCHAN_UDP_PORT,
            max_channels,
        )
        .map_err(|e| err("port.device", e.to_string()))?;
        (ports, Some(group))
    };
    let port = &ports[0];
    if port.capabilities().max_frame < max_frame {
        return Err(err(
            "cost.mtu",
            format!(
                "{} exceeds what '{dev}' carries in frames of {} bytes ({} bytes with the \
                 Ethernet header)",
                cfg.cost.mtu,
                p.frame_size,
                port.capabilities().max_frame
            ),
        ));
    }
    for n in port.notes() {
        eprintln!("rtchand: af_xdp {dev}: {n}");
    }
    for port in &ports {
        eprintln!(
            "rtchand: af_xdp {dev}/q{}: {} mode, {}",
            port.queue(),
            port.attach_mode(),
            if port.zero_copy() {
                "zero-copy"
            } else {
                "copy"
            }
        );
    }
    Ok((ports, group))
}
