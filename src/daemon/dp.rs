//! The daemon's dataplane: the polling cores built from the `[port]` and `[[cores]]` tables.
//!
//! Each configured core gets its own port (memlink: one in-memory link per core; null: one
//! null port per core) and owns TX queue 0 of it, which is the admission model's TX queue
//! `i` of core `i`. With memlink the other end of every link is polled by a receive core of
//! this daemon, so channels to `local` are delivered in-process (loopback). The control
//! thread reaches every core only through its [`CoreHandle`] (the lock-free control ring).
//! New backends (af_packet, AF_XDP, DPDK) slot in by building their port here.

use std::sync::Arc;

use control::config::{DaemonConfig, IdleMode, PortKind};
use dataplane::core::{Core, CoreConfig, CoreError, CoreStats, IdlePolicy, RunningCore};
use dataplane::handle::CoreHandle;
use dataplane::link::LinkConfig;
use dataplane::memlink::{MemLink, MemLinkConfig, NullPort};
use dataplane::port::Port;
use dataplane::sched::SchedPolicy;
use dataplane::time::{Clock, MonotonicClock};

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
    #[error("port.kind: '{0}' is not supported by the daemon yet (use 'memlink' or 'null')")]
    NotSupported(&'static str),
}

/// Every polling core of the daemon.
pub struct Dataplane {
    /// Sending cores, index = admission core = TX queue.
    pub tx: Vec<CoreSlot>,
    /// Receive cores (memlink loopback), index = admission RX core; empty for `null`.
    pub rx: Vec<CoreSlot>,
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
        for entry in &cfg.cores {
            let core_cfg = CoreConfig {
                max_channels: entry.max_channels,
                sched: sched_policy(cfg),
                link: LinkConfig {
                    link_rate_bps: cfg.cost.link_rate_bps,
                    share_ppm: entry.tx_share_ppm,
                    in_flight_limit: 2 * (max_frame as u64 + 24),
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
                            rate_bps: cfg.cost.link_rate_bps,
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
                other => return Err(DataplaneError::NotSupported(other.name())),
            }
        }
        Ok(Self { tx, rx })
    }

    /// Whether channels can be received here (memlink loopback).
    pub fn has_receive_path(&self) -> bool {
        !self.rx.is_empty()
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
