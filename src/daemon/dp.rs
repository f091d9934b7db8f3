//! The daemon's dataplane: the polling cores built from the `[port]` and `[[cores]]` tables.
//!
//! Each configured core gets its own port and owns TX queue 0 of it, which is the admission
//! model's TX queue `i` of core `i`:
//! - memlink: one in-memory link per core; the other end of every link is polled by a
//!   receive core of this daemon, so channels to `local` are delivered in-process (loopback);
//! - null: one null port per core (no receive path);
//! - af_packet: one interface (`port.device`) and exactly one core, which both sends (channels
//!   to peers go out on the wire, addressed with this host's MAC/IPv4 and the peer's) and
//!   receives (incoming channels from peers get their receivers on that same core). Its idle
//!   loop sleeps (`policy.idle_sleep`) unless `policy.idle = "spin"`: a loop that spins or
//!   yields starves the softirq that moves frames through veth.
//! - af_xdp (feature `af_xdp`): like af_packet, over an AF_XDP socket bound to queue
//!   `port.queue` of `port.device` (libxdp loads its default redirect program). Without the
//!   feature the kind is refused when the dataplane starts.
//!
//! The control thread reaches every core only through its [`CoreHandle`] (the lock-free
//! control ring), and places receivers with [`Dataplane::receive_core`]. New backends (DPDK)
//! slot in by building their port in [`Dataplane::start`], like the af_xdp arm.

use std::sync::Arc;

use control::config::{parse_mac, DaemonConfig, IdleMode, PortKind};
use dataplane::core::{Core, CoreConfig, CoreError, CoreStats, IdlePolicy, RunningCore};
use dataplane::handle::CoreHandle;
use dataplane::link::LinkConfig;
use dataplane::memlink::{MemLink, MemLinkConfig, NullPort};
use dataplane::port::Port;
use dataplane::sched::SchedPolicy;
use dataplane::time::{Clock, MonotonicClock};

use crate::ports::afpacket::{AfPacketConfig, AfPacketPort};
use crate::ports::iface;

/// A running core of any port type, stoppable for its final counters.
trait Stoppable: Send {
    fn stop_core(self: Box<Self>) -> CoreStats;
}

impl<P: Port + 'static> Stoppable for RunningCore<P>
where
    P::Buf: 'static,
{
    fn stop_core(self: Box<Self>) -> CoreStats {
        (*self).stop().stats()
    }
}

/// One polling core: the control side's handle and the running thread.
pub struct CoreSlot {
    /// The control ring's handle.
    pub handle: CoreHandle,
    running: Option<Box<dyn Stoppable>>,
}

impl CoreSlot {
    fn start<P: Port + 'static>(
        core: Core<P>,
        cpu: Option<usize>,
        clock: Arc<dyn Clock>,
        idle: IdlePolicy,
    ) -> Result<Self, DataplaneError>
    where
        P::Buf: 'static,
    {
        let handle = CoreHandle::new(&core);
        let running = RunningCore::spawn(core, cpu, clock, idle).map_err(DataplaneError::Thread)?;
        Ok(Self {
            handle,
            running: Some(Box::new(running)),
        })
    }

    /// Stops the core's thread; its final counters.
    pub fn stop(&mut self) -> Option<CoreStats> {
        self.running.take().map(|r| r.stop_core())
    }
}

/// Building the dataplane failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A core refused its configuration.
    #[error("core: {0}")]
    Core(#[from] CoreError),
    /// A core's thread could not start.
    #[error("cannot start a polling thread: {0}")]
    Thread(std::io::Error),
    /// The port backend is not available.
    #[error(
        "port.kind: '{0}' is not supported by the daemon yet (use 'memlink', 'null' or 'af_packet')"
    )]
    NotSupported(&'static str),
    /// The port could not be opened or addressed.
    #[error("port: {0}")]
    Port(String),
    /// `kind = "af_xdp"` in a daemon built without the feature.
    #[cfg(not(feature = "af_xdp"))]
    #[error(
        "port.kind: 'af_xdp': rtchand was built without the af_xdp feature (rebuild with \
         `cargo build --features af_xdp`)"
    )]
    NoAfXdp,
}

/// This host's addresses on the data link (af_packet, af_xdp): the source of its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireAddr {
    /// Source MAC.
    pub mac: [u8; 6],
    /// Source IPv4.
    pub ip: [u8; 4],
}

/// Every polling core of the daemon.
pub struct Dataplane {
    /// Sending cores, index = admission core = TX queue.
    pub tx: Vec<CoreSlot>,
    /// Receive cores (memlink loopback), index = admission RX core; empty for `null` and
    /// `af_packet`.
    pub rx: Vec<CoreSlot>,
    /// Receivers live on the sending cores (af_packet, af_xdp: one core sends and receives).
    rx_on_tx: bool,
    /// This host's data-link addresses, for ports that put frames on a real wire.
    pub wire: Option<WireAddr>,
}

/// The TX queue on a core's own port that admission's TX queue `i` maps to.
pub const PORT_QUEUE: u16 = 0;

/// The scheduling policy of the cores from the configuration.
pub fn sched_policy(cfg: &DaemonConfig) -> SchedPolicy {
    SchedPolicy {
        granularity: cfg.policy.granularity,
        work_conserving: cfg.policy.work_conserving,
        best_effort_reserve_ppm: cfg.policy.best_effort_reserve_ppm,
        run_budget_cycles: cfg.policy.run_budget_cycles,
        fifo: false,
    }
}

impl Dataplane {
    /// Builds and starts every core.
    pub fn start(cfg: &DaemonConfig) -> Result<Self, DataplaneError> {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
        let idle = match cfg.policy.idle {
            IdleMode::Spin => IdlePolicy::Spin,
            IdleMode::Yield => IdlePolicy::Yield,
            IdleMode::Sleep => IdlePolicy::Sleep(cfg.policy.idle_sleep.0),
        };
        let max_frame = cfg.cost.mtu as usize + 14;
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        let mut rx_on_tx = false;
        let mut wire = None;
        for entry in &cfg.cores {
            let core_cfg = CoreConfig {
                max_channels: entry.max_channels,
                sched: sched_policy(cfg),
                link: LinkConfig {
                    link_rate_bps: cfg.link_rate_bps(),
                    share_ppm: entry.tx_share_ppm,
                    in_flight_limit: cfg.tx_model().link_in_flight_bytes(),
                    work_conserving: cfg.policy.work_conserving,
                    best_effort_reserve_ppm: cfg.policy.best_effort_reserve_ppm,
                    ..LinkConfig::default()
                },
                tx_queue: PORT_QUEUE,
                ..CoreConfig::default()
            };
            match cfg.port.kind {
                PortKind::Memlink => {
                    let (a, b) = MemLink::pair(
                        MemLinkConfig {
                            rate_bps: cfg.link_rate_bps(),
                            fifo_packets: cfg.port.fifo_packets,
                            pool_buffers: cfg.port.buffers,
                            max_frame,
                            tx_queues: 1,
                        },
                        clock.clone(),
                    );
                    let send = Core::new(core_cfg, a)?;
                    let recv = Core::new(core_cfg, b)?;
                    tx.push(CoreSlot::start(send, entry.cpu, clock.clone(), idle)?);
                    rx.push(CoreSlot::start(recv, entry.rx_cpu, clock.clone(), idle)?);
                }
                PortKind::Null => {
                    let core = Core::new(core_cfg, NullPort::new(cfg.port.buffers, max_frame))?;
                    tx.push(CoreSlot::start(core, entry.cpu, clock.clone(), idle)?);
                }
                PortKind::AfPacket => {
                    let (port, addr) = open_af_packet(cfg, max_frame)?;
                    let core = Core::new(core_cfg, port)?;
                    let idle = match idle {
                        IdlePolicy::Spin => IdlePolicy::Spin,
                        _ => IdlePolicy::Sleep(cfg.policy.idle_sleep.0),
                    };
                    tx.push(CoreSlot::start(core, entry.cpu, clock.clone(), idle)?);
                    rx_on_tx = true;
                    wire = Some(addr);
                }
                #[cfg(feature = "af_xdp")]
                PortKind::AfXdp => {
                    let (port, addr) = open_af_xdp(cfg, max_frame)?;
                    let core = Core::new(core_cfg, port)?;
                    let idle = match idle {
                        IdlePolicy::Spin => IdlePolicy::Spin,
                        _ => IdlePolicy::Sleep(cfg.policy.idle_sleep.0),
                    };
                    tx.push(CoreSlot::start(core, entry.cpu, clock.clone(), idle)?);
                    rx_on_tx = true;
                    wire = Some(addr);
                }
                #[cfg(not(feature = "af_xdp"))]
                PortKind::AfXdp => return Err(DataplaneError::NoAfXdp),
                other => return Err(DataplaneError::NotSupported(other.name())),
            }
        }
        Ok(Self {
            tx,
            rx,
            rx_on_tx,
            wire,
        })
    }

    /// Whether channels to `local` can be delivered here (the memlink loopback).
    pub fn has_loopback(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Whether this host can receive channels at all (memlink loopback, or a wire port whose
    /// cores also receive).
    pub fn can_receive(&self) -> bool {
        self.rx_on_tx || !self.rx.is_empty()
    }

    /// How many receive cores there are (receivers go on cores `0..n`).
    pub fn receive_cores(&self) -> usize {
        if self.rx_on_tx {
            self.tx.len()
        } else {
            self.rx.len()
        }
    }

    /// The core that receives for admission's RX core `core`: the loopback receive core
    /// (memlink), the sending core itself (af_packet), or none (null).
    pub fn receive_core(&mut self, core: u16) -> Option<&mut CoreHandle> {
        let slots = if self.rx_on_tx {
            &mut self.tx
        } else {
            &mut self.rx
        };
        slots.get_mut(usize::from(core)).map(|s| &mut s.handle)
    }

    /// Stops every core; the final counters of the sending cores.
    pub fn stop(&mut self) -> Vec<CoreStats> {
        let stats = self.tx.iter_mut().filter_map(CoreSlot::stop).collect();
        for r in &mut self.rx {
            r.stop();
        }
        stats
    }
}

/// Opens the af_packet port of `cfg.port.device` and finds this host's addresses on it.
fn open_af_packet(
    cfg: &DaemonConfig,
    max_frame: usize,
) -> Result<(AfPacketPort, WireAddr), DataplaneError> {
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    let port = AfPacketPort::open(
        dev,
        AfPacketConfig {
            rx_block_size: p.rx_block_size,
            rx_blocks: p.rx_blocks,
            frame_size: p.frame_size,
            tx_batch: p.tx_batch,
            pool_buffers: p.buffers,
            qdisc_bypass: p.qdisc_bypass,
            link_rate_bps: cfg.link_rate_bps(),
            rx_block_timeout_ms: p.rx_block_timeout_ms,
        },
    )
    .map_err(|e| DataplaneError::Port(e.to_string()))?;
    if port.capabilities().max_frame < max_frame {
        return Err(DataplaneError::Port(format!(
            "cost.mtu {} exceeds the MTU {} of '{dev}'",
            cfg.cost.mtu,
            port.mtu()
        )));
    }
    for n in port.notes() {
        eprintln!("rtchand: af_packet {dev}: {n}");
    }
    Ok((port, wire_addr(cfg)?))
}

/// This host's addresses on `cfg.port.device`: `port.mac`/`port.ip`, else the interface's.
fn wire_addr(cfg: &DaemonConfig) -> Result<WireAddr, DataplaneError> {
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    let mac = match &p.mac {
        Some(m) => parse_mac(m).map_err(|e| DataplaneError::Port(format!("port.mac: {e}")))?,
        None => iface::hwaddr(dev)
            .map_err(|e| DataplaneError::Port(format!("the MAC address of '{dev}': {e}")))?,
    };
    let ip = match p.ip {
        Some(ip) => ip.octets(),
        None => iface::ipv4(dev).map_err(|e| {
            DataplaneError::Port(format!(
                "the IPv4 address of '{dev}': {e} (give one with port.ip)"
            ))
        })?,
    };
    Ok(WireAddr { mac, ip })
}

/// Opens the AF_XDP port of `cfg.port.device`, queue `cfg.port.queue`, and finds this host's
/// addresses on it.
#[cfg(feature = "af_xdp")]
fn open_af_xdp(
    cfg: &DaemonConfig,
    max_frame: usize,
) -> Result<(crate::ports::afxdp::AfXdpPort, WireAddr), DataplaneError> {
    use crate::ports::afxdp::{AfXdpConfig, AfXdpPort, XdpAttach, XskBind};
    use control::config::{XdpAttachMode, XdpBindMode};
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    let frames = |key: &str, n: usize| {
        u32::try_from(n).map_err(|_| DataplaneError::Port(format!("port.{key} {n} is too large")))
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
    let port = AfXdpPort::open(dev, xcfg).map_err(|e| DataplaneError::Port(e.to_string()))?;
    if port.capabilities().max_frame < max_frame {
        return Err(DataplaneError::Port(format!(
            "cost.mtu {} exceeds what '{dev}' carries in frames of {} bytes ({} bytes with the \
             Ethernet header)",
            cfg.cost.mtu,
            p.frame_size,
            port.capabilities().max_frame
        )));
    }
    for n in port.notes() {
        eprintln!("rtchand: af_xdp {dev}: {n}");
    }
    eprintln!(
        "rtchand: af_xdp {dev}/q{}: {} mode, {}",
        p.queue,
        port.attach_mode(),
        if port.zero_copy() {
            "zero-copy"
        } else {
            "copy"
        }
    );
    Ok((port, wire_addr(cfg)?))
}
