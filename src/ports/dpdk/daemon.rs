//! [`DaemonPort`]: the DPDK port of `rtchand` (`[port] kind = "dpdk"`), opened from the
//! daemon's configuration.
//!
//! Bring-up, each step's failure named by the key at fault:
//! 1. EAL (`port.eal_args`): `-l <first CPU of this process>` (unless the arguments pick
//!    lcores), `--file-prefix=<port.file_prefix>`, else `--in-memory` (with hugepages) or
//!    `--no-shconf --file-prefix=rtchan-<pid>` (without), `--no-huge` when `port.no_huge`; for a PCI device `-a <address>`, for a vdev `--no-pci`. The calling
//!    thread's CPU affinity is restored afterwards, so the cores the daemon spawns are not all
//!    pinned to the main lcore.
//! 2. The device (`port.device`): a vdev is hot-plugged (`rte_dev_probe`), a PCI port looked up
//!    by address (it must be bound to vfio-pci).
//! 3. Queues (`cores`): one TX and one RX queue per `[[cores]]` entry; more than the device
//!    has is refused.
//! 4. Pools (sized from the model, see [`pool_sizes`]), then `rte_eth_dev_configure` and the
//!    queue set-up, start, and one [`QueuePort`] per core.
//! 5. Receive steering ([`super::flow`]): the configured port is asked whether its PMD has
//!    `rte_flow` at all; if it has, and a queue pair to spare, it is configured with one more
//!    (the best-effort RX queue 0, core `i` on RX queue `i + 1`), started, and the rules are
//!    installed; when the device refuses them, the port goes back to one queue pair per core
//!    and the software hand-off. The choice is logged once and shown in
//!    `rtchanctl stats --port` ([`PortReport::steering`]).

use std::sync::{Arc, Mutex};

use control::config::{is_pci_address, DaemonConfig};
use dataplane::link::LinkConfig;
use dataplane::port::MAX_BURST;
use dataplane::wire::RTCHAN_UDP_PORT;

use super::eal::Eal;
use super::ethdev::{EthConfig, EthPort, EthStats, LinkStatus};
use super::flow::{self, FlowSteering, SteeringMode, BE_QUEUE};
use super::mbuf::Mbuf;
use super::mempool::{Mempool, MempoolConfig};
use super::queues::QueuePort;
use crate::ports::open::OpenError;
use crate::ports::steering::{Steering, HANDOFF_RING};

/// TX descriptors per queue: small, because everything in the NIC ring is FIFO and the link
/// scheduler's pacing keeps it nearly empty anyway; enough for several bursts.
pub const TX_DESC: u16 = 512;
/// RX descriptors per queue: room for a polling core to miss a few iterations at line rate.
pub const RX_DESC: u16 = 1024;

fn err(key: &str, message: impl Into<String>) -> OpenError {
    OpenError {
        key: key.into(),
        message: message.into(),
    }
}

/// Mbufs of each core's TX pool and of the shared RX pool for `cores` cores.
///
/// TX: the link scheduler holds at most `LinkConfig::capacity` packets (real-time and
/// best-effort together: admission's reservations live inside it), the NIC ring `TX_DESC`
/// more until the PMD frees them, and the core holds one burst being written. RX: every
/// queue's ring (the cores' and the best-effort queue's), one burst in hand and one full
/// hand-off ring per core.
pub fn pool_sizes(cores: usize, link: &LinkConfig) -> (u32, u32) {
    let tx = link.capacity as usize + usize::from(TX_DESC) + 2 * MAX_BURST;
    let rx = cores * (usize::from(RX_DESC) + MAX_BURST + HANDOFF_RING)
        + usize::from(RX_DESC)
        + MAX_BURST;
    (tx as u32, rx as u32)
}

/// The EAL arguments for `cfg` (see the module docs).
pub fn eal_args(cfg: &DaemonConfig) -> Vec<String> {
    let p = &cfg.port;
    let dev = p.device.as_deref().unwrap_or_default();
    let mut args = Vec::new();
    let picks_lcores = p
        .eal_args
        .iter()
        .any(|a| matches!(a.as_str(), "-l" | "-c" | "--lcores") || a.starts_with("--lcores="));
    if !picks_lcores {
        let cpu = core_affinity::get_core_ids()
            .and_then(|ids| ids.first().map(|c| c.id))
            .unwrap_or(0);
        args.extend(["-l".to_owned(), cpu.to_string()]);
    }
    match (&p.file_prefix, p.no_huge) {
        (Some(f), _) => args.push(format!("--file-prefix={f}")),
        (None, false) => args.push("--in-memory".into()),
        // --no-huge implies legacy memory, which --in-memory refuses: no shared config files
        // instead, under a prefix of this process's own.
        (None, true) => args.extend([
            "--no-shconf".to_owned(),
            format!("--file-prefix={OWN_PREFIX}{}", std::process::id()),
        ]),
    }
    if p.no_huge {
        args.push("--no-huge".into());
    }
    if is_pci_address(dev) {
        args.extend(["-a".to_owned(), dev.to_owned()]);
    } else {
        args.push("--no-pci".into());
    }
    args.extend(p.eal_args.iter().cloned());
    args
}

/// Prefix of the per-process EAL file prefix `rtchan-<pid>` (see [`eal_args`]).
const OWN_PREFIX: &str = "rtchan-";

/// Where EAL puts runtime directories: `/var/run/dpdk` for root, else
/// `$XDG_RUNTIME_DIR/dpdk` or `/tmp/dpdk` (EAL's `eal_create_runtime_dir`).
pub fn runtime_root() -> std::path::PathBuf {
    if crate::sys::unix::effective_uid() == 0 {
        return "/var/run/dpdk".into();
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map_or_else(|| "/tmp".into(), std::path::PathBuf::from)
        .join("dpdk")
}

/// Removes the runtime directories `rtchan-<pid>` under `root` whose process is gone (a
/// daemon killed before EAL cleanup leaves its directory behind); how many. Only that
/// name, made by this daemon for itself, is touched, and only when `/proc/<pid>` is absent.
pub fn remove_stale_runtime_dirs(root: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(OWN_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The ethdev name of `device`: the vdev name before its arguments, or the PCI address with
/// its domain.
pub fn port_name(device: &str) -> String {
    if is_pci_address(device) {
        if device.matches(':').count() == 1 {
            format!("0000:{device}")
        } else {
            device.to_owned()
        }
    } else {
        device.split(',').next().unwrap_or_default().to_owned()
    }
}

/// The daemon's DPDK port: one queue pair per core, and what the reports read.
pub struct DaemonPort {
    // First: the rules go before the port closes.
    flow: Option<Mutex<FlowSteering>>,
    mode: SteeringMode,
    eth: Arc<EthPort>,
    queues: Vec<QueuePort>,
    steering: Arc<Steering<Mbuf>>,
    tx_pools: Vec<Mempool>,
    rx_pool: Mempool,
    mac: [u8; 6],
    /// The runtime directory of this process's own file prefix, removed on drop.
    own_runtime_dir: Option<std::path::PathBuf>,
    _eal: Eal,
}

impl Drop for DaemonPort {
    fn drop(&mut self) {
        // EAL is never cleaned up while a pool may have mbufs out (see `Mempool`), and it
        // leaves its directory behind even when it is (its telemetry socket goes at exit).
        // The directory of this process's own prefix is nobody else's: remove it whole.
        if let Some(dir) = &self.own_runtime_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl std::fmt::Debug for DaemonPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonPort")
            .field("eth", &self.eth)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl DaemonPort {
    /// Brings up the port of `cfg` (see the module docs); frames up to `max_frame` bytes.
    pub fn open(cfg: &DaemonConfig, max_frame: usize) -> Result<Self, OpenError> {
        let p = &cfg.port;
        let dev = p.device.as_deref().unwrap_or_default();
        let cores = cfg.cores.len();
        let args = eal_args(cfg);
        if p.file_prefix.is_none() && p.no_huge {
            remove_stale_runtime_dirs(&runtime_root());
        }
        let eal = Eal::init_keep_affinity(&args).map_err(|e| {
            err(
                "port.eal_args",
                format!("DPDK EAL initialisation with {args:?} failed: {e}"),
            )
        })?;
        if let Err(e) = super::telemetry::register() {
            eprintln!("rtchand: dpdk: rtchan's telemetry endpoints not registered: {e}");
        }
        if !is_pci_address(dev) {
            eal.probe_device(dev).map_err(|e| {
                err(
                    "port.device",
                    format!("'{dev}': no such DPDK vdev, or its arguments are wrong: {e}"),
                )
            })?;
        }
        let name = port_name(dev);
        let id = eal.port_by_name(&name).map_err(|_| {
            err(
                "port.device",
                if is_pci_address(dev) {
                    format!(
                        "'{dev}': no DPDK port at this PCI address (is it bound to vfio-pci? \
                         `dpdk-devbind.py --status`)"
                    )
                } else {
                    format!("'{dev}': the vdev made no ethdev port named '{name}'")
                },
            )
        })?;
        let (max_rx, max_tx) = EthPort::max_queues(&eal, id)
            .map_err(|e| err("port.device", format!("'{dev}': {e}")))?;
        if cores > usize::from(max_rx) || cores > usize::from(max_tx) {
            return Err(err(
                "cores",
                format!(
                    "{cores} [[cores]] entries need {cores} TX and {cores} RX queues of '{name}', \
                     which has at most {max_tx} TX and {max_rx} RX queues"
                ),
            ));
        }
        let link = LinkConfig::default();
        let (tx_n, rx_n) = pool_sizes(cores, &link);
        let pool = |name: String, n: u32| {
            Mempool::create(&eal, &MempoolConfig::new(name.as_str(), n)).map_err(|e| {
                err(
                    "port.eal_args",
                    format!(
                        "mbuf pool '{name}' of {n} buffers: {e} (give EAL more memory: \
                         hugepages, or \"-m\" in port.eal_args)"
                    ),
                )
            })
        };
        let rx_pool = pool("rtchan_rx".into(), rx_n)?;
        let tx_pools = (0..cores)
            .map(|i| pool(format!("rtchan_tx{i}"), tx_n))
            .collect::<Result<Vec<_>, _>>()?;
        let queues = cores as u16;
        let mut eth = EthPort::configure(
            &eal,
            id,
            &EthConfig {
                rx_queues: queues,
                tx_queues: queues,
                rx_desc: RX_DESC,
                tx_desc: TX_DESC,
                mtu: None,
                promiscuous: false,
            },
            &rx_pool,
        )
        .map_err(|e| err("port.device", format!("'{name}': {e}")))?;
        let port_err = |e: super::Error| err("port.device", format!("'{name}': {e}"));
        // Does the PMD have rte_flow at all? Asked on the configured port, of a rule any flow
        // PMD understands. Those without (net_pcap, net_null, net_ring, net_af_packet) say
        // ENOSYS or ENOTSUP and are never reconfigured (net_pcap's `infinite_rx` queues, for
        // one, cannot be set up twice).
        let probe = flow::validate(
            eth.id(),
            &flow::Rule {
                matches: flow::Match::UdpPort(RTCHAN_UDP_PORT),
                queue: 0,
                priority: flow::PRIO_PORT,
            },
        );
        let no_flow = match probe {
            Err(e) if matches!(e.errno(), Some(libc::ENOSYS | libc::ENOTSUP)) => Some(e),
            _ => None,
        };
        // NIC steering needs one RX queue more than there are cores: the best-effort queue.
        // Its TX twin stays unused (net_tap wants as many TX as RX queues).
        let spare = cores < usize::from(max_rx) && cores < usize::from(max_tx);
        let (flow_steering, mode) = match (no_flow, spare) {
            (Some(e), _) => (
                None,
                SteeringMode::Software(format!("rte_flow refused: {e}")),
            ),
            (None, false) => (
                None,
                SteeringMode::Software(format!(
                    "rte_flow not tried: '{name}' has {max_rx} RX / {max_tx} TX queues, NIC \
                     steering needs {} of each (one per core and the best-effort queue)",
                    cores + 1
                )),
            ),
            (None, true) => {
                eth.reconfigure_queues(queues + 1, queues + 1)
                    .and_then(|()| eth.start())
                    .map_err(port_err)?;
                match FlowSteering::install(eth.id(), queues, RTCHAN_UDP_PORT) {
                    Ok((f, mode)) => (Some(f), mode),
                    Err(e) => {
                        let _ = flow::flush(eth.id());
                        eth.reconfigure_queues(queues, queues).map_err(port_err)?;
                        (
                            None,
                            SteeringMode::Software(format!("rte_flow refused: {e}")),
                        )
                    }
                }
            }
        };
        eth.start().map_err(port_err)?;
        eprintln!(
            "rtchand: dpdk {name}: receive steering: {}",
            mode.describe()
        );
        let mtu = eth.mtu().unwrap_or(1500);
        let frame = (usize::from(mtu) + 14).min(rx_pool.buf_capacity());
        if frame < max_frame {
            return Err(err(
                "cost.mtu",
                format!(
                    "{} exceeds what '{name}' carries (MTU {mtu}, {frame}-byte frames)",
                    cfg.cost.mtu
                ),
            ));
        }
        let mac = eth
            .mac_addr()
            .map_err(|e| err("port.mac", format!("the MAC address of '{name}': {e}")))?;
        let eth = Arc::new(eth);
        let max_channels: usize = cfg.cores.iter().map(|c| c.max_channels as usize).sum();
        let steering = Steering::new(cores, max_channels);
        let steer = (cores > 1).then(|| steering.clone());
        let ports = tx_pools
            .iter()
            .enumerate()
            .map(|(i, tx)| {
                let q = QueuePort::new(
                    eth.clone(),
                    i as u16,
                    tx.clone(),
                    steer.clone(),
                    RTCHAN_UDP_PORT,
                );
                if flow_steering.is_some() {
                    // The last core reads the best-effort queue too, after its own.
                    let be = (i + 1 == cores).then_some(BE_QUEUE);
                    q.with_rx_queues(flow::core_queue(i as u16), be)
                } else {
                    q
                }
            })
            .collect();
        eprintln!(
            "rtchand: dpdk {name} ({}): {cores} TX/RX queue pair(s), {} TX / {} RX descriptors, \
             TX pools {tx_n} mbufs per core, RX pool {rx_n}",
            eth.driver(),
            eth.tx_desc(),
            eth.rx_desc()
        );
        Ok(Self {
            flow: flow_steering.map(Mutex::new),
            mode,
            eth,
            queues: ports,
            steering,
            tx_pools,
            rx_pool,
            mac,
            own_runtime_dir: (p.file_prefix.is_none() && p.no_huge)
                .then(|| eal.runtime_dir().map(std::path::Path::to_path_buf))
                .flatten(),
            _eal: eal,
        })
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Takes the queue ports, core `i`'s at index `i` (once; later calls get none).
    pub fn take_queues(&mut self) -> Vec<QueuePort> {
        std::mem::take(&mut self.queues)
    }

    /// The steering table (channel → receiving core).
    pub fn steering(&self) -> &Arc<Steering<Mbuf>> {
        &self.steering
    }

    /// How received frames reach their receiver's core on this port.
    pub fn steering_mode(&self) -> &SteeringMode {
        &self.mode
    }

    /// Channel `id`'s receiver is on core `core` from now on (`None`: removed): the software
    /// table, and the device's rules where it has them. Control thread only (rte_flow calls).
    pub fn steer(&self, id: dataplane::spec::ChannelId, core: Option<u16>, best_effort: bool) {
        match core {
            Some(c) => self.steering.place(id, c),
            None => self.steering.remove(id),
        }
        if let Some(f) = &self.flow {
            f.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .steer(id, core, best_effort);
        }
    }

    /// The port's report: link, counters, per-queue counters, pools.
    pub fn report(&self) -> PortReport {
        let steered = self.flow.is_some();
        let rx_queue = |q: u16| if steered { flow::core_queue(q) } else { q };
        let queues = (0..self.tx_pools.len() as u16)
            .map(|q| {
                let (_, _, tx_packets, tx_bytes) = self.eth.queue_stats(q).unwrap_or_default();
                let (rx_packets, rx_bytes, _, _) =
                    self.eth.queue_stats(rx_queue(q)).unwrap_or_default();
                let (handed_in, handoff_dropped) = self.steering.counters(usize::from(q));
                QueueReport {
                    queue: q,
                    rx_queue: rx_queue(q),
                    rx_packets,
                    rx_bytes,
                    tx_packets,
                    tx_bytes,
                    handed_in,
                    handoff_dropped,
                    tx_pool_in_use: self.tx_pools.get(usize::from(q)).map_or(0, Mempool::in_use),
                }
            })
            .collect();
        let (channel_rules, rule_failures) = self.flow.as_ref().map_or((0, 0), |f| {
            let f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (f.channel_rules(), f.create_failures())
        });
        PortReport {
            steering: self.mode.clone(),
            be_queue: steered.then(|| {
                let (rx_packets, rx_bytes, _, _) =
                    self.eth.queue_stats(BE_QUEUE).unwrap_or_default();
                (BE_QUEUE, rx_packets, rx_bytes)
            }),
            channel_rules,
            rule_failures,
            name: self.eth.name().to_owned(),
            driver: self.eth.driver().to_owned(),
            link: self.eth.link().ok(),
            stats: self.eth.stats().unwrap_or_default(),
            queues,
            rx_pool_in_use: self.rx_pool.in_use(),
            rx_pool_size: self.rx_pool.size(),
            xstats: self.eth.xstats().unwrap_or_default(),
        }
    }
}

/// One queue pair's counters.
#[derive(Clone, Debug, Default)]
pub struct QueueReport {
    /// Queue pair index (= polling core = TX queue).
    pub queue: u16,
    /// The RX queue the core reads (`queue`, or `queue + 1` when rules steer).
    pub rx_queue: u16,
    /// Packets received on this RX queue.
    pub rx_packets: u64,
    /// Bytes received on this RX queue.
    pub rx_bytes: u64,
    /// Packets sent on this TX queue.
    pub tx_packets: u64,
    /// Bytes sent on this TX queue.
    pub tx_bytes: u64,
    /// Frames other cores handed to this core (software steering).
    pub handed_in: u64,
    /// Frames for this core dropped because its hand-off ring was full.
    pub handoff_dropped: u64,
    /// Mbufs of this core's TX pool out of the pool.
    pub tx_pool_in_use: u32,
}

/// The port's state and counters.
#[derive(Clone, Debug, Default)]
pub struct PortReport {
    /// How received frames reach their receiver's core.
    pub steering: SteeringMode,
    /// When rules steer: the best-effort RX queue, its packets and bytes.
    pub be_queue: Option<(u16, u64, u64)>,
    /// Per-channel rules installed.
    pub channel_rules: usize,
    /// Rules the device refused after start.
    pub rule_failures: u64,
    /// Ethdev name.
    pub name: String,
    /// PMD.
    pub driver: String,
    /// Link state, when the driver tells.
    pub link: Option<LinkStatus>,
    /// Whole-port counters.
    pub stats: EthStats,
    /// Per queue pair.
    pub queues: Vec<QueueReport>,
    /// RX pool mbufs in use.
    pub rx_pool_in_use: u32,
    /// RX pool size.
    pub rx_pool_size: u32,
    /// The driver's extended statistics.
    pub xstats: Vec<(String, u64)>,
}
