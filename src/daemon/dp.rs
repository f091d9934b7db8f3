//! The daemon's dataplane: the polling cores built from the `[port]` and `[[cores]]` tables.
//!
//! Each configured core gets its own port and owns TX queue 0 of it, which is the admission
//! model's TX queue `i` of core `i`:
//! - memlink: one in-memory link per core; the other end of every link is polled by a
//!   receive core of this daemon, so channels to `local` are delivered in-process (loopback);
//! - null: one null port per core (no receive path);
//! - af_packet: one interface (`port.device`); every core both sends (channels to peers go out
//!   on the wire, addressed with this host's MAC/IPv4 and the peer's) and receives (incoming
//!   channels from peers get their receivers on the core receiving admission picks). One core
//!   has one socket; N cores have N sockets in one `PACKET_FANOUT` group, core `i` sending on
//!   socket `i` (paced by its link scheduler at `cores[i].tx_share_ppm`) and receiving there:
//!   the kernel steers each frame to the socket of its channel's core (a cBPF program rebuilt
//!   on every [`Dataplane::steer`]), the software hand-off catches what it cannot
//!   ([`crate::ports::afpacket::FanoutGroup`]). Its idle loop sleeps (`policy.idle_sleep`)
//!   unless `policy.idle = "spin"`: a loop that spins or yields starves the softirq that moves
//!   frames through veth.
//! - af_xdp (feature `af_xdp`): like af_packet, core `i` over an AF_XDP socket bound to queue
//!   `port.queue + i` of `port.device` (libxdp loads its default program, which redirects by
//!   RX queue); a frame that arrives on another core's queue than its receiver's is handed over
//!   in software ([`crate::ports::afxdp::XskGroup`]). Without the feature the kind is refused
//!   when the dataplane starts.
//! - dpdk (feature `dpdk`): one ethdev port (`port.device`) with one TX and one RX queue per
//!   core: core `i`'s port is queue pair `i` ([`crate::ports::dpdk::QueuePort`]), so its link
//!   scheduler paces TX queue `i` at `cores[i].tx_share_ppm`, as admission models it. Each
//!   core receives on its own RX queue; frames of a channel whose receiver is on another core
//!   are handed to that core ([`Dataplane::steer`] keeps the table).
//!
//! The software hand-off is one piece for every multi-queue port
//! ([`crate::ports::steering::Steering`]); more cores than the device has queues are refused
//! when the port opens, naming `cores`.
//!
//! Every port comes from one function, [`fn@crate::ports::open`]; this module only starts cores
//! on them. The control thread reaches every core only through its [`CoreHandle`] (the
//! lock-free control ring), and places receivers with [`Dataplane::receive_core`] (and
//! [`Dataplane::steer`]).

use std::sync::Arc;

use control::config::{DaemonConfig, IdleMode};
use dataplane::core::{Core, CoreConfig, CoreError, CoreStats, IdlePolicy, RunningCore};
use dataplane::handle::CoreHandle;
use dataplane::link::LinkConfig;
use dataplane::port::Port;
use dataplane::sched::SchedPolicy;
use dataplane::time::{Clock, MonotonicClock};

use crate::ports::steering::SharedDevice;
use crate::ports::Ports;

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
    /// The port could not be opened; names the configuration key.
    #[error("{0}")]
    Port(#[from] crate::ports::OpenError),
}

pub use crate::ports::WireAddr;

/// Every polling core of the daemon.
pub struct Dataplane {
    /// Sending cores, index = admission core = TX queue.
    pub tx: Vec<CoreSlot>,
    /// Receive cores (memlink loopback), index = admission RX core; empty for `null` and the
    /// wire ports.
    pub rx: Vec<CoreSlot>,
    /// Receivers live on the sending cores (af_packet, af_xdp, dpdk: a core sends and
    /// receives).
    rx_on_tx: bool,
    /// This host's data-link addresses, for ports that put frames on a real wire.
    pub wire: Option<WireAddr>,
    /// The device the cores share, with more than one af_packet or af_xdp core (steering,
    /// per-queue reports).
    shared: Option<Box<dyn SharedDevice>>,
    /// The DPDK port the cores share (for steering and reports).
    #[cfg(feature = "dpdk")]
    dpdk: Option<crate::ports::dpdk::DaemonPort>,
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
    /// Builds and starts every core, on the ports [`fn@crate::ports::open`] builds.
    pub fn start(cfg: &DaemonConfig) -> Result<Self, DataplaneError> {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
        let idle = match cfg.policy.idle {
            IdleMode::Spin => IdlePolicy::Spin,
            IdleMode::Yield => IdlePolicy::Yield,
            IdleMode::Sleep => IdlePolicy::Sleep(cfg.policy.idle_sleep.0),
        };
        // A loop that spins or yields starves the softirq that moves frames through veth.
        let wire_idle = match idle {
            IdlePolicy::Spin => IdlePolicy::Spin,
            _ => IdlePolicy::Sleep(cfg.policy.idle_sleep.0),
        };
        let core_cfg = |entry: &control::config::CoreEntry| CoreConfig {
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
            service_interval: cfg.policy.service_interval.0,
            tx_window: cfg.policy.tx_window.0,
            ..CoreConfig::default()
        };
        let opened = crate::ports::open(cfg, clock.clone())?;
        let mut dp = Self {
            tx: Vec::new(),
            rx: Vec::new(),
            rx_on_tx: false,
            wire: opened.wire,
            shared: None,
            #[cfg(feature = "dpdk")]
            dpdk: None,
        };
        match opened.ports {
            Ports::Memlink(pairs) => {
                for (entry, (a, b)) in cfg.cores.iter().zip(pairs) {
                    let send = Core::new(core_cfg(entry), a)?;
                    let recv = Core::new(core_cfg(entry), b)?;
                    dp.tx
                        .push(CoreSlot::start(send, entry.cpu, clock.clone(), idle)?);
                    dp.rx
                        .push(CoreSlot::start(recv, entry.rx_cpu, clock.clone(), idle)?);
                }
            }
            Ports::Null(ports) => {
                for (entry, port) in cfg.cores.iter().zip(ports) {
                    let core = Core::new(core_cfg(entry), port)?;
                    dp.tx
                        .push(CoreSlot::start(core, entry.cpu, clock.clone(), idle)?);
                }
            }
            Ports::AfPacket(ports, group) => {
                // Core i owns socket i of the fanout group; it receives there too (and what
                // the other sockets' cores hand it).
                for (entry, port) in cfg.cores.iter().zip(ports) {
                    let core = Core::new(core_cfg(entry), port)?;
                    dp.tx
                        .push(CoreSlot::start(core, entry.cpu, clock.clone(), wire_idle)?);
                }
                dp.rx_on_tx = true;
                dp.shared = group.map(|g| Box::new(g) as Box<dyn SharedDevice>);
            }
            #[cfg(feature = "af_xdp")]
            Ports::AfXdp(ports, group) => {
                // Core i owns the socket of queue port.queue + i (and what the other cores
                // hand it).
                for (entry, port) in cfg.cores.iter().zip(ports) {
                    let core = Core::new(core_cfg(entry), port)?;
                    dp.tx
                        .push(CoreSlot::start(core, entry.cpu, clock.clone(), wire_idle)?);
                }
                dp.rx_on_tx = true;
                dp.shared = group.map(|g| Box::new(g) as Box<dyn SharedDevice>);
            }
            #[cfg(feature = "dpdk")]
            Ports::Dpdk(mut port) => {
                // Core i owns queue pair i; it receives there too (and what other cores'
                // queues hand it).
                for (entry, q) in cfg.cores.iter().zip(port.take_queues()) {
                    let core = Core::new(core_cfg(entry), q)?;
                    dp.tx
                        .push(CoreSlot::start(core, entry.cpu, clock.clone(), idle)?);
                }
                dp.rx_on_tx = true;
                dp.dpdk = Some(port);
            }
        }
        Ok(dp)
    }

    /// Frames of channel `id` belong to receive core `core` from now on (`None`: the channel
    /// no longer receives here); `best_effort` is its class (its frames may wait behind other
    /// best-effort traffic). Only ports that share one device between cores steer (dpdk:
    /// the software table, and the NIC's `rte_flow` rules where it takes them; af_packet and
    /// af_xdp with several cores: the kernel's fanout program where there is one, and the
    /// software hand-off).
    pub fn steer(&self, id: dataplane::spec::ChannelId, core: Option<u16>, best_effort: bool) {
        if let Some(g) = &self.shared {
            if let Err(e) = g.steer(id, core) {
                // The software hand-off still takes the channel's frames to its core.
                eprintln!(
                    "rtchand: {}: the kernel's steering was not updated for channel {id} ({e}); \
                     its frames are handed over in software",
                    g.steering_name()
                );
            }
        }
        #[cfg(feature = "dpdk")]
        if let Some(p) = &self.dpdk {
            p.steer(id, core, best_effort);
        }
        let _ = (id, core, best_effort);
    }

    /// Every core's published figures (`core_stats`), sending cores first.
    pub fn core_stats(&self) -> Vec<control::protocol::CoreStatsInfo> {
        let info = |name: String, g: dataplane::stats::CoreGaugesSnapshot| {
            control::protocol::CoreStatsInfo {
                core: name,
                iterations: g.iterations,
                busy_ns: g.busy_ns,
                uptime_ns: g.last_ns.saturating_sub(g.first_ns),
                busy_share: g.busy_share(),
                longest_stretch_ns: g.longest_stretch_ns,
            }
        };
        self.tx
            .iter()
            .enumerate()
            .map(|(i, c)| info(format!("tx{i}"), c.handle.gauges()))
            .chain(
                self.rx
                    .iter()
                    .enumerate()
                    .map(|(i, c)| info(format!("rx{i}"), c.handle.gauges())),
            )
            .collect()
    }

    /// The port's state and counters (`port_stats`): kept for the DPDK port, which the cores
    /// share; the other backends' ports are owned by their cores.
    pub fn port_stats(&self, cfg: &DaemonConfig) -> control::protocol::PortStatsInfo {
        control::protocol::PortStatsInfo {
            kind: cfg.port.kind.name().into(),
            device: cfg.port.device.clone(),
            #[cfg(feature = "dpdk")]
            dpdk: self.dpdk.as_ref().map(|p| dpdk_stats(&p.report())),
            #[cfg(not(feature = "dpdk"))]
            dpdk: None,
            queues: self.shared.as_ref().map_or_else(Vec::new, |g| {
                g.report()
                    .iter()
                    .map(|q| control::protocol::QueueStatsInfo {
                        queue: q.queue,
                        // A socket per core: core i reads its own socket.
                        rx_queue: q.queue,
                        rx_packets: q.rx_packets,
                        rx_bytes: q.rx_bytes,
                        tx_packets: q.tx_packets,
                        tx_bytes: q.tx_bytes,
                        handed_in: q.handed_in,
                        handoff_dropped: q.handoff_dropped,
                        tx_pool_in_use: 0,
                    })
                    .collect()
            }),
            steering: self.shared.as_ref().map(|g| g.steering_name().to_owned()),
        }
    }

    /// Publishes the channel table and the cores' counters to the DPDK telemetry endpoints
    /// (`/rtchan/*`); nothing for other ports.
    pub fn publish_telemetry(&self, stats: &[control::protocol::ChannelStatsInfo]) {
        #[cfg(feature = "dpdk")]
        if let Some(p) = &self.dpdk {
            use crate::ports::dpdk::telemetry::{publish, Snapshot, TelChannel, TelCore};
            let r = p.report();
            publish(Snapshot {
                channels: stats
                    .iter()
                    .map(|c| TelChannel {
                        id: c.id,
                        direction: c.direction.clone(),
                        peer: c.peer.clone(),
                        submitted: c.tx.as_ref().map_or(0, |t| t.submitted),
                        sent: c.tx.as_ref().map_or(0, |t| t.sent),
                        late_packets: c.tx.as_ref().map_or(0, |t| t.late_packets),
                        delivered: c.rx.as_ref().map_or(0, |r| r.delivered),
                        deadline_misses: c.rx.as_ref().map_or(0, |r| r.deadline_misses),
                        lost: c.rx.as_ref().map_or(0, |r| r.lost),
                        latency_p99_ns: c
                            .rx
                            .as_ref()
                            .map(|r| r.latency.p99)
                            .or(c.tx.as_ref().map(|t| t.delay.p99))
                            .unwrap_or(0),
                    })
                    .collect(),
                cores: r
                    .queues
                    .iter()
                    .map(|q| TelCore {
                        core: q.queue,
                        rx_packets: q.rx_packets,
                        tx_packets: q.tx_packets,
                        handed_in: q.handed_in,
                        handoff_dropped: q.handoff_dropped,
                    })
                    .collect(),
            });
        }
        let _ = stats;
    }

    /// Whether the port has telemetry endpoints to publish to.
    pub fn has_telemetry(&self) -> bool {
        #[cfg(feature = "dpdk")]
        return self.dpdk.is_some();
        #[cfg(not(feature = "dpdk"))]
        false
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

    /// Whether receivers run on the sending cores themselves (af_packet, AF_XDP, DPDK), so
    /// admission books a core's sending and receiving work on one ledger.
    pub fn receives_on_sending_cores(&self) -> bool {
        self.rx_on_tx
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
    /// (memlink), the sending core itself (af_packet, af_xdp, dpdk), or none (null).
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

#[cfg(feature = "dpdk")]
fn dpdk_stats(r: &crate::ports::dpdk::PortReport) -> control::protocol::DpdkPortStats {
    use control::protocol::{DpdkPortStats, QueueStatsInfo};
    DpdkPortStats {
        name: r.name.clone(),
        driver: r.driver.clone(),
        link_up: r.link.is_some_and(|l| l.up),
        link_speed_mbps: r.link.and_then(|l| l.speed_mbps),
        full_duplex: r.link.is_some_and(|l| l.full_duplex),
        ipackets: r.stats.ipackets,
        opackets: r.stats.opackets,
        ibytes: r.stats.ibytes,
        obytes: r.stats.obytes,
        imissed: r.stats.imissed,
        ierrors: r.stats.ierrors,
        oerrors: r.stats.oerrors,
        rx_nombuf: r.stats.rx_nombuf,
        rx_pool_in_use: r.rx_pool_in_use,
        rx_pool_size: r.rx_pool_size,
        steering: r.steering.name().into(),
        steering_detail: r.steering.describe(),
        be_queue: r.be_queue.map(|b| b.0),
        be_rx_packets: r.be_queue.map_or(0, |b| b.1),
        channel_rules: r.channel_rules as u64,
        rule_failures: r.rule_failures,
        queues: r
            .queues
            .iter()
            .map(|q| QueueStatsInfo {
                queue: q.queue,
                rx_queue: q.rx_queue,
                rx_packets: q.rx_packets,
                rx_bytes: q.rx_bytes,
                tx_packets: q.tx_packets,
                tx_bytes: q.tx_bytes,
                handed_in: q.handed_in,
                handoff_dropped: q.handoff_dropped,
                tx_pool_in_use: q.tx_pool_in_use,
            })
            .collect(),
        xstats: r.xstats.iter().cloned().collect(),
    }
}
