//! The daemon's configuration file (TOML), parsed and validated once at start.
//!
//! `rtchand --config FILE` reads a [`DaemonConfig`]: the port and its polling cores, the
//! scheduling policy, the calibrated cost model of the sending path and of the receiving
//! path, the control socket (path, mode, groups), the state file, and the control-plane
//! peers with the network bound towards each. Every table refuses unknown keys, and every
//! validation error names the key at fault (`docs/config.md` is the reference). From the
//! validated config [`DaemonConfig::tx_model`] and [`DaemonConfig::rx_model`] build the two
//! [`ResourceModel`]s the admission controllers use.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::admission::{CostModel, ModelError, Nanos, ResourceModel};
use crate::units::Duration;
use dataplane::port::MAX_BURST;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/rtchan/rtchand.sock";

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Control socket path.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Control socket permission bits, octal in a string (`"0600"`).
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Group (name or number) whose members may open, close and read; root always may.
    #[serde(default)]
    pub group: Option<String>,
    /// Group (name or number) whose members may only read (list, show, stats, policy show).
    #[serde(default)]
    pub read_group: Option<String>,
    /// Where the channel table is persisted; no persistence when absent.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// What closing a channel does with its queued messages: `drain` or `discard`.
    #[serde(default)]
    pub close: CloseMode,
    /// The overflow policy of channels opened without `--policy`.
    #[serde(default = "default_overflow")]
    pub overflow: String,
    /// The port the polling cores send on.
    #[serde(default)]
    pub port: PortConfig,
    /// The polling cores; each owns one TX queue (core `i` sends on TX queue `i`).
    #[serde(default = "default_cores")]
    pub cores: Vec<CoreEntry>,
    /// Scheduling policy of every core.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Sending-path costs (CPU per message and per packet, link rate, MTU, chunks).
    #[serde(default)]
    pub cost: CostModel,
    /// Receiving-path CPU costs, for the admission of incoming channels.
    #[serde(default)]
    pub rx_cost: RxCost,
    /// Largest `mmax` a channel may ask for, bytes.
    #[serde(default = "default_max_message")]
    pub max_message: u32,
    /// The control-plane peering (TCP between daemons).
    #[serde(default)]
    pub peering: PeeringConfig,
    /// Other hosts' control planes, by name (the `--dst` of `channel open`).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// What clients may make the daemon hold (connections, timeouts).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// The Prometheus/OpenMetrics endpoint (`[metrics]`); off when `listen` is absent.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Captures on demand (`[capture]`, `rtchanctl capture`); off by default, since admission
    /// charges the polling cores' copy only where they can be armed.
    #[serde(default)]
    pub capture: CaptureConfig,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_socket_mode() -> String {
    "0600".into()
}
fn default_overflow() -> String {
    "block".into()
}
fn default_cores() -> Vec<CoreEntry> {
    vec![CoreEntry::default()]
}
fn default_max_message() -> u32 {
    65_536
}

/// What closing a channel does with messages still queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseMode {
    /// Send what is queued first.
    #[default]
    Drain,
    /// Drop what is queued.
    Discard,
}

/// Which port backend the cores use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// The in-memory link in loopback: each core's port is one end of a link whose other end a
    /// receive core of this daemon polls, so a channel to `local` is delivered in-process.
    #[default]
    Memlink,
    /// Discards every packet (no receive path).
    Null,
    /// Linux af_packet on one interface (`device`): each core sends and receives on its own
    /// socket; with several cores the sockets form one fanout group steered by channel.
    AfPacket,
    /// Linux AF_XDP on queues of one interface (`device`): core `i` sends and receives on
    /// queue `queue + i`. Needs an `rtchand` built with the `af_xdp` feature.
    AfXdp,
    /// DPDK on one ethdev port (`device`: a PCI address bound to vfio-pci, or a vdev): every
    /// `[[cores]]` entry owns its own TX queue and RX queue of that port. Needs an `rtchand`
    /// built with the `dpdk` feature.
    Dpdk,
}

impl PortKind {
    /// The name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memlink => "memlink",
            Self::Null => "null",
            Self::AfPacket => "af_packet",
            Self::AfXdp => "af_xdp",
            Self::Dpdk => "dpdk",
        }
    }
}

/// af_xdp: how the XDP program is attached to the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpAttachMode {
    /// Native (driver) mode, else generic (SKB) mode.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode only (always copy mode).
    Skb,
}

/// af_xdp: copy or zero-copy binding of the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpBindMode {
    /// The kernel copies packets to and from the UMEM (works on any interface).
    #[default]
    Copy,
    /// The NIC reads and writes the UMEM (native mode on a driver that supports it).
    ZeroCopy,
    /// Zero-copy when the driver has it, else copy.
    ZeroCopyOrCopy,
}

/// The `[port]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortConfig {
    /// Backend.
    pub kind: PortKind,
    /// Interface or device name (for the backends that need one).
    pub device: Option<String>,
    /// memlink: packets each end's transmit FIFO holds (a NIC's TX ring).
    pub fifo_packets: usize,
    /// Packet buffers in the pool of each link (memlink), port (null) or interface (af_packet).
    pub buffers: usize,
    /// The link rate the link scheduler paces at and admission assumes, bits per second; when
    /// set it replaces `cost.link_rate_bps`. Required for af_packet (an interface's sysfs speed
    /// is wrong or absent for veth and inside a network namespace).
    pub link_rate_bps: Option<u64>,
    /// af_packet, af_xdp: the source MAC of this host's frames (`"02:00:00:00:00:01"`);
    /// default: the interface's own address.
    pub mac: Option<String>,
    /// af_packet, af_xdp: the source IPv4 address of this host's frames; default: the
    /// interface's first IPv4 address.
    pub ip: Option<Ipv4Addr>,
    /// af_packet: bytes per RX ring block (a multiple of the page size).
    pub rx_block_size: usize,
    /// af_packet: blocks in the RX ring.
    pub rx_blocks: usize,
    /// af_packet: how long a partly filled RX block waits before user space sees it, ms.
    pub rx_block_timeout_ms: u32,
    /// af_packet: ring frame size (a multiple of 16, MTU + 14 + 128 at least); af_xdp: UMEM
    /// frame size (a power of two from 2048 to the page size).
    pub frame_size: usize,
    /// af_packet: most packets per `sendmmsg` (1..=32).
    pub tx_batch: usize,
    /// af_packet: ask for `PACKET_QDISC_BYPASS`.
    pub qdisc_bypass: bool,
    /// af_xdp: the interface queue the first core's socket binds to (core `i`'s: `queue + i`).
    pub queue: u32,
    /// af_xdp: how the XDP program is attached.
    pub attach: XdpAttachMode,
    /// af_xdp: copy or zero-copy.
    pub bind: XdpBindMode,
    /// af_xdp: frames for receiving (they cycle through the fill ring).
    pub rx_frames: u32,
    /// af_xdp: count a frame as in flight until the kernel completes it (a NIC: until it is on
    /// the wire). Off, the link scheduler paces at `link_rate_bps` alone, which veth (and copy
    /// mode, where a frame completes once copied) needs.
    pub report_completions: bool,
    /// dpdk: extra EAL arguments, appended after the ones rtchand derives (`-l`, `--in-memory`
    /// or `--file-prefix`, `--no-huge`, `--vdev`/`-a`); e.g. `["-m", "512"]`.
    pub eal_args: Vec<String>,
    /// dpdk: the EAL file prefix (`--file-prefix`): the runtime directory
    /// `/var/run/dpdk/<prefix>` holds the telemetry socket. Absent: `--in-memory` (no shared
    /// files, so several rtchand processes never collide).
    pub file_prefix: Option<String>,
    /// dpdk: run without hugepages (`--no-huge`; tests, vdevs). Off by default: a NIC's DMA
    /// wants hugepages.
    pub no_huge: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            kind: PortKind::Memlink,
            device: None,
            fifo_packets: 256,
            buffers: 8192,
            link_rate_bps: None,
            mac: None,
            ip: None,
            rx_block_size: 4096,
            rx_blocks: 512,
            rx_block_timeout_ms: 1,
            frame_size: 2048,
            tx_batch: 32,
            qdisc_bypass: true,
            queue: 0,
            attach: XdpAttachMode::Auto,
            bind: XdpBindMode::Copy,
            rx_frames: 2048,
            report_completions: false,
            eal_args: Vec::new(),
            file_prefix: None,
            no_huge: false,
        }
    }
}

/// Whether `device` is written as a PCI address (`0000:3b:00.0` or `3b:00.0`), not a vdev.
pub fn is_pci_address(device: &str) -> bool {
    let parts: Vec<&str> = device.split(':').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (bus, devfn) = match parts.as_slice() {
        [dom, bus, devfn] if hex(dom, 4) => (*bus, *devfn),
        [bus, devfn] => (*bus, *devfn),
        _ => return false,
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    hex(bus, 2) && hex(dev, 2) && func.len() == 1 && matches!(func.as_bytes()[0], b'0'..=b'7')
}

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    let bad = || format!("'{text}' is not a MAC address like \"02:00:00:00:00:01\"");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// One `[[cores]]` entry: a polling core and its TX queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreEntry {
    /// CPU to pin the core's thread to; unpinned when absent.
    pub cpu: Option<usize>,
    /// CPU to pin the matching receive core to (memlink); unpinned when absent.
    pub rx_cpu: Option<usize>,
    /// This core's TX queue's share of the link rate, millionths.
    pub tx_share_ppm: u32,
    /// Most channels the core runs.
    pub max_channels: u32,
}

impl Default for CoreEntry {
    fn default() -> Self {
        Self {
            cpu: None,
            rx_cpu: None,
            tx_share_ppm: 1_000_000,
            max_channels: 1024,
        }
    }
}

/// What an idle polling loop does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleMode {
    /// Busy-poll (dedicated, isolated cores).
    Spin,
    /// Yield the CPU.
    #[default]
    Yield,
    /// Sleep `idle_sleep` between idle iterations.
    Sleep,
}

/// The `[policy]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Packets a handler writes between preemption points (k).
    pub granularity: u32,
    /// Process early real-time messages when nothing else waits.
    pub work_conserving: bool,
    /// Share of every core and queue kept for best-effort traffic, millionths.
    pub best_effort_reserve_ppm: u32,
    /// Cycle budget of one handler run.
    pub run_budget_cycles: u64,
    /// Idle behaviour of the polling loops.
    pub idle: IdleMode,
    /// Sleep of `idle = "sleep"`.
    pub idle_sleep: Duration,
    /// Least time between two service phases (RX burst, client scan, control command) of a
    /// busy core. The phase `[cost]` describes must fit in it; set at start-up only.
    pub service_interval: Duration,
    /// TX stage window of the cores: a TX stage is due this long after the previous one while
    /// packets wait. `cost.tx_stage_ns` must be shorter; set at start-up only.
    pub tx_window: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            granularity: 4,
            work_conserving: false,
            best_effort_reserve_ppm: 50_000,
            run_budget_cycles: 200_000,
            idle: IdleMode::Yield,
            idle_sleep: Duration(50_000),
            service_interval: Duration(dataplane::core::SERVICE_INTERVAL_NS),
            tx_window: Duration(dataplane::core::TX_WINDOW_NS),
        }
    }
}

/// The `[rx_cost]` table: the receiving path's CPU costs (reassembly, delivery).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RxCost {
    /// CPU per received message.
    pub per_message_ns: Nanos,
    /// CPU per received packet.
    pub per_packet_ns: Nanos,
}

impl Default for RxCost {
    fn default() -> Self {
        Self {
            per_message_ns: 400,
            per_packet_ns: 200,
        }
    }
}

/// The `[metrics]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (TCP, plain HTTP; e.g. `"127.0.0.1:9877"`); no endpoint
    /// when absent. Anyone who can connect can read it: keep it on loopback or a management
    /// network.
    pub listen: Option<SocketAddr>,
}

/// Default cost of one capture copy when `[capture] enabled` and `cost.capture_frame_ns` is
/// not given, ns: an upper bound of a 1,514-byte frame's copy into a capture ring
/// (`cargo bench -p dataplane --bench capture` prints the measured figure).
pub const DEFAULT_CAPTURE_FRAME_NS: Nanos = 400;

/// The `[capture]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Whether `rtchanctl capture` may arm the polling cores. When true, admission charges
    /// every packet sent and every frame received one copy (`cost.capture_frame_ns`, else
    /// [`DEFAULT_CAPTURE_FRAME_NS`]), whether a capture runs or not; when false, captures are
    /// refused and nothing is charged. Not changed by a reload.
    pub enabled: bool,
    /// Frames each core's capture ring holds (a power of two, 1 to 65536).
    pub slots: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            slots: dataplane::capture::DEFAULT_CAPTURE_SLOTS,
        }
    }
}

/// The `[peering]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeeringConfig {
    /// This daemon's name as its peers know it.
    pub name: String,
    /// Where peers' control planes connect (TCP); no incoming channels from peers when absent.
    pub listen: Option<SocketAddr>,
    /// Liveness probe period on every peer session.
    pub heartbeat: Duration,
    /// How long a peer may take to answer before it counts as lost.
    pub timeout: Duration,
    /// The network bound of the destination `local` (the in-process loopback).
    pub loopback_network_bound: Duration,
}

impl Default for PeeringConfig {
    fn default() -> Self {
        Self {
            name: "local".into(),
            listen: None,
            heartbeat: Duration(500_000_000),
            timeout: Duration(2_000_000_000),
            loopback_network_bound: Duration(20_000),
        }
    }
}

/// One `[[peers]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The name `--dst` uses.
    pub name: String,
    /// The peer's control-plane address (its `peering.listen`).
    pub address: SocketAddr,
    /// Worst-case network delay of one message to this peer (the network's share of D).
    pub network_bound: Duration,
    /// The peer's MAC address on the data link (af_packet: the destination MAC of frames to
    /// it; required to open a channel to this peer over af_packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The peer's IPv4 address on the data link; default: the IP of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_ip: Option<Ipv4Addr>,
}

impl PeerConfig {
    /// The destination IPv4 address of data frames to this peer, when known.
    pub fn data_ipv4(&self) -> Option<Ipv4Addr> {
        self.data_ip.or(match self.address.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        })
    }
}

/// A configuration that cannot run a daemon; every variant names the key at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML for the schema (names the key and the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key has a bad value.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, dotted (`cores[1].tx_share_ppm`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The resource model built from the file is unusable.
    #[error("{0}")]
    Model(#[from] ModelError),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            group: None,
            read_group: None,
            state_file: None,
            close: CloseMode::Drain,
            overflow: default_overflow(),
            port: PortConfig::default(),
            cores: default_cores(),
            policy: PolicyConfig::default(),
            cost: CostModel::default(),
            rx_cost: RxCost::default(),
            max_message: default_max_message(),
            peering: PeeringConfig::default(),
            peers: Vec::new(),
            limits: crate::limits::LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            capture: CaptureConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every key that serde cannot check alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_mode()?;
        if self.socket.as_os_str().is_empty() {
            return Err(invalid("socket", "must not be empty"));
        }
        if let Some(g) = &self.group {
            resolve_group(g).map_err(|m| invalid("group", m))?;
        }
        if let Some(g) = &self.read_group {
            resolve_group(g).map_err(|m| invalid("read_group", m))?;
        }
        self.overflow
            .parse::<dataplane::spec::OverflowPolicy>()
            .map_err(|m| invalid("overflow", m))?;
        let slots = self.capture.slots;
        if slots == 0 || !slots.is_power_of_two() || slots > dataplane::capture::MAX_CAPTURE_SLOTS {
            return Err(invalid(
                "capture.slots",
                format!(
                    "{slots} is not a power of two between 1 and {}",
                    dataplane::capture::MAX_CAPTURE_SLOTS
                ),
            ));
        }
        match self.port.kind {
            PortKind::Memlink | PortKind::Null => {}
            PortKind::AfPacket => self.validate_wire_port()?,
            PortKind::AfXdp => {
                self.validate_wire_port()?;
                self.validate_af_xdp()?;
            }
            PortKind::Dpdk => self.validate_dpdk()?,
        }
        if self.port.link_rate_bps == Some(0) {
            return Err(invalid("port.link_rate_bps", "must be greater than zero"));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(m) = &p.mac {
                parse_mac(m).map_err(|e| invalid(format!("peers[{i}].mac"), e))?;
            }
        }
        if self.port.buffers < 64 {
            return Err(invalid("port.buffers", "must be at least 64"));
        }
        if self.port.fifo_packets == 0 {
            return Err(invalid("port.fifo_packets", "must be at least 1"));
        }
        if self.cores.is_empty() {
            return Err(invalid("cores", "at least one [[cores]] entry is needed"));
        }
        if self.cores.len() > 64 {
            return Err(invalid("cores", "at most 64 cores"));
        }
        let shares: u64 = self.cores.iter().map(|c| u64::from(c.tx_share_ppm)).sum();
        if shares > 1_000_000 {
            return Err(invalid(
                "cores[].tx_share_ppm",
                format!(
                    "the {} cores' TX queue shares add up to {shares} ppm ({:.1} %), more than \
                     the link (1000000 ppm, 100 %)",
                    self.cores.len(),
                    shares as f64 / 10_000.0
                ),
            ));
        }
        for (i, c) in self.cores.iter().enumerate() {
            if c.max_channels == 0 {
                return Err(invalid(
                    format!("cores[{i}].max_channels"),
                    "must be at least 1",
                ));
            }
        }
        if self.policy.run_budget_cycles == 0 {
            return Err(invalid(
                "policy.run_budget_cycles",
                "must be greater than zero",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.name.is_empty() || p.name == "local" {
                return Err(invalid(
                    format!("peers[{i}].name"),
                    "must be non-empty and not 'local' (reserved for the loopback)",
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    format!("peers[{i}].name"),
                    format!("duplicate peer '{}'", p.name),
                ));
            }
        }
        if self.peering.timeout.0 < 1_000_000 {
            return Err(invalid("peering.timeout", "must be at least 1ms"));
        }
        self.limits.validate().map_err(|(k, m)| invalid(k, m))?;
        self.validate_rx_burst()?;
        let tx = self.tx_model();
        tx.validate()?;
        tx.validate_best_effort_run()?;
        self.rx_model().validate()?;
        Ok(())
    }

    /// `cost.rx_burst_ns` bounds a burst of [`MAX_BURST`] frames, each of which the receiving
    /// channels are charged `[rx_cost]` for (a one-packet message each at worst): a burst
    /// shorter than that receive work contradicts the costs admission charges for it.
    fn validate_rx_burst(&self) -> Result<(), ConfigError> {
        let frames = MAX_BURST as u64;
        let work = frames.saturating_mul(
            self.rx_cost
                .per_message_ns
                .saturating_add(self.rx_cost.per_packet_ns),
        );
        if self.cost.rx_burst_ns < work {
            return Err(invalid(
                "cost.rx_burst_ns",
                format!(
                    "{} ns is shorter than the receive work of the {frames} frames it bounds: \
                     {frames} x (rx_cost.per_message_ns {} + rx_cost.per_packet_ns {}) = {work} \
                     ns; raise cost.rx_burst_ns or lower [rx_cost] (`rtchand calibrate` \
                     measures both)",
                    self.cost.rx_burst_ns, self.rx_cost.per_message_ns, self.rx_cost.per_packet_ns
                ),
            ));
        }
        Ok(())
    }

    /// The `[port]` keys a port on a kernel interface (af_packet, af_xdp) needs.
    fn validate_wire_port(&self) -> Result<(), ConfigError> {
        let kind = format!("with port.kind = \"{}\"", self.port.kind.name());
        let kind = kind.as_str();
        match self.port.device.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "port.device",
                    format!("required {kind}: the interface to send and receive on"),
                ))
            }
            Some(_) => {}
        }
        if self.port.link_rate_bps.is_none() {
            return Err(invalid(
                "port.link_rate_bps",
                format!(
                    "required {kind}: the rate to pace the link at (an interface's sysfs speed \
                     is wrong or absent for veth and inside a network namespace)"
                ),
            ));
        }
        // af_packet: one socket per core in a fanout group; af_xdp: one socket per core on
        // consecutive queues from port.queue. The device's queue count is checked when it is
        // opened, before any channel.
        if self.cores.len() > usize::from(u16::MAX) {
            return Err(invalid("cores", "too many cores for one device's queues"));
        }
        if let Some(m) = &self.port.mac {
            parse_mac(m).map_err(|e| invalid("port.mac", e))?;
        }
        // The pool feeds both the link scheduler (which may hold `capacity` packets) and the
        // receive path: with fewer buffers a flood starves reception and real-time packets.
        let least = dataplane::link::LinkConfig::default().capacity as usize + 1024;
        if self.port.buffers < least {
            return Err(invalid(
                "port.buffers",
                format!(
                    "{kind} must be at least {least} (the link scheduler holds up to {} packets, \
                     and received frames need buffers too)",
                    least - 1024
                ),
            ));
        }
        Ok(())
    }

    /// The `[port]` keys of `kind = "dpdk"` that can be checked without DPDK (the device's
    /// existence and queue counts are checked when the port is opened, before any channel).
    fn validate_dpdk(&self) -> Result<(), ConfigError> {
        let p = &self.port;
        match p.device.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "port.device",
                    "required with port.kind = \"dpdk\": a PCI address bound to vfio-pci \
                     (\"0000:3b:00.0\") or a vdev (\"net_null0\", \"net_pcap0,tx_pcap=...\", \
                     \"net_ring0\", \"net_af_packet0,iface=eth1\")",
                ))
            }
            Some(d) if d.chars().any(char::is_whitespace) || d.starts_with('-') => {
                return Err(invalid(
                    "port.device",
                    format!("'{d}' is not a PCI address or a vdev string (no spaces, no options)"),
                ))
            }
            Some(d) if !is_pci_address(d) && !d.starts_with("net_") => {
                return Err(invalid(
                    "port.device",
                    format!(
                        "'{d}' is neither a PCI address (\"0000:3b:00.0\") nor a DPDK ethdev \
                         vdev (\"net_<driver><n>[,args]\")"
                    ),
                ))
            }
            Some(_) => {}
        }
        if let Some(f) = &p.file_prefix {
            if f.is_empty()
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                return Err(invalid(
                    "port.file_prefix",
                    format!("'{f}' must be non-empty letters, digits, '_', '-' or '.'"),
                ));
            }
        }
        for (i, a) in p.eal_args.iter().enumerate() {
            if a.contains('\0') {
                return Err(invalid(
                    format!("port.eal_args[{i}]"),
                    "contains a NUL byte",
                ));
            }
            let key = a.split('=').next().unwrap_or_default();
            if [
                "--in-memory",
                "--file-prefix",
                "--no-huge",
                "--vdev",
                "-a",
                "--allow",
            ]
            .contains(&key)
            {
                return Err(invalid(
                    format!("port.eal_args[{i}]"),
                    format!(
                        "'{a}' is set by rtchand from port.file_prefix, port.no_huge and \
                         port.device; use those keys"
                    ),
                ));
            }
        }
        if p.ip.is_none() {
            return Err(invalid(
                "port.ip",
                "required with port.kind = \"dpdk\": the source IPv4 address of this host's \
                 frames (a DPDK port has no kernel interface to take it from)",
            ));
        }
        if let Some(m) = &p.mac {
            parse_mac(m).map_err(|e| invalid("port.mac", e))?;
        }
        if self.cores.len() > usize::from(u16::MAX) {
            return Err(invalid("cores", "too many cores for one port's queues"));
        }
        Ok(())
    }

    /// The `[port]` keys only af_xdp has.
    fn validate_af_xdp(&self) -> Result<(), ConfigError> {
        let p = &self.port;
        if !p.frame_size.is_power_of_two() || !(2048..=65_536).contains(&p.frame_size) {
            return Err(invalid(
                "port.frame_size",
                "with port.kind = \"af_xdp\" must be a power of two from 2048 to the page size",
            ));
        }
        if p.buffers > 1 << 20 {
            return Err(invalid(
                "port.buffers",
                "with port.kind = \"af_xdp\" must be at most 1048576 (UMEM TX frames)",
            ));
        }
        if p.rx_frames < 64 || p.rx_frames > 1 << 20 {
            return Err(invalid("port.rx_frames", "must be from 64 to 1048576"));
        }
        if p.bind == XdpBindMode::ZeroCopy && p.attach == XdpAttachMode::Skb {
            return Err(invalid(
                "port.bind",
                "\"zero-copy\" needs native attachment (attach = \"native\" or \"auto\"); \
                 skb (generic) mode is copy only",
            ));
        }
        Ok(())
    }

    /// The link rate: `port.link_rate_bps` when set, else `cost.link_rate_bps`.
    pub fn link_rate_bps(&self) -> u64 {
        self.port.link_rate_bps.unwrap_or(self.cost.link_rate_bps)
    }

    /// The socket's permission bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let s = self.socket_mode.trim_start_matches("0o");
        let mode = u32::from_str_radix(s, 8).map_err(|_| {
            invalid(
                "socket_mode",
                format!("'{}' is not an octal mode like \"0600\"", self.socket_mode),
            )
        })?;
        if mode > 0o777 {
            return Err(invalid(
                "socket_mode",
                format!("'{}' has bits beyond 0777", self.socket_mode),
            ));
        }
        Ok(mode)
    }

    /// What admission charges per capture copy: 0 unless `[capture] enabled`, then
    /// `cost.capture_frame_ns` or [`DEFAULT_CAPTURE_FRAME_NS`].
    pub fn capture_frame_ns(&self) -> Nanos {
        match (self.capture.enabled, self.cost.capture_frame_ns) {
            (false, _) => 0,
            (true, 0) => DEFAULT_CAPTURE_FRAME_NS,
            (true, c) => c,
        }
    }

    /// The sending host's resource model: one core and one TX queue per `[[cores]]` entry.
    pub fn tx_model(&self) -> ResourceModel {
        ResourceModel {
            cost: CostModel {
                link_rate_bps: self.link_rate_bps(),
                capture_frame_ns: self.capture_frame_ns(),
                ..self.cost.clone()
            },
            cores: self.cores.len() as u16,
            tx_queue_share_ppm: self.cores.iter().map(|c| c.tx_share_ppm).collect(),
            best_effort_reserve_ppm: self.policy.best_effort_reserve_ppm,
            granularity: self.policy.granularity,
            max_message: self.max_message,
            work_conserving: self.policy.work_conserving,
            service_interval_ns: self.policy.service_interval.0,
            tx_window_ns: self.policy.tx_window.0,
        }
    }

    /// The receiving host's resource model: the same cores running the receive path at the
    /// `[rx_cost]` costs, and the whole link's receive capacity as one queue.
    pub fn rx_model(&self) -> ResourceModel {
        ResourceModel {
            cost: CostModel {
                per_message_ns: self.rx_cost.per_message_ns,
                per_packet_ns: self.rx_cost.per_packet_ns,
                link_rate_bps: self.link_rate_bps(),
                capture_frame_ns: self.capture_frame_ns(),
                ..self.cost.clone()
            },
            cores: self.cores.len() as u16,
            tx_queue_share_ppm: vec![1_000_000],
            best_effort_reserve_ppm: self.policy.best_effort_reserve_ppm,
            granularity: self.policy.granularity,
            max_message: self.max_message,
            work_conserving: self.policy.work_conserving,
            service_interval_ns: self.policy.service_interval.0,
            tx_window_ns: self.policy.tx_window.0,
        }
    }

    /// A peer by name.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// Resolves a group name or number to a gid, reading `/etc/group`.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to resolve '{group}': {e}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            Some((name, gid))
        })
        .find(|(n, _)| *n == group)
        .map(|(_, g)| g)
        .ok_or_else(|| format!("no group named '{group}' in /etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let cfg = DaemonConfig::parse("").unwrap();
        assert_eq!(cfg, DaemonConfig::default());
        assert_eq!(cfg.socket_mode().unwrap(), 0o600);
    }

    #[test]
    fn defaults_fit_together() {
        let cfg = DaemonConfig::default();
        cfg.validate().unwrap();
        let (tx, rx) = (cfg.tx_model(), cfg.rx_model());
        // 32 frames at [rx_cost] fit the burst bound, a best-effort run covers a handler run
        // of k packets, the phase fits its interval and the stage its window.
        assert!(
            32 * (cfg.rx_cost.per_message_ns + cfg.rx_cost.per_packet_ns) <= cfg.cost.rx_burst_ns
        );
        assert!(tx.cost.best_effort_run_ns >= tx.cost.handler_chunk(4, tx.granularity));
        assert!(tx.cost.service_phase_ns() < tx.service_interval_ns);
        assert!(tx.cost.tx_stage_ns < tx.tx_window_ns);
        rx.validate().unwrap();
        // docs/admission.md §3 quotes these.
        assert_eq!(tx.cost.service_phase_ns(), 21_700);
        assert_eq!(tx.client_release_jitter(), 281_700);
    }

    #[test]
    fn contradicting_costs_are_refused_naming_the_keys() {
        // 32 frames of receive work cannot fit a shorter burst.
        let e = DaemonConfig::parse("[cost]\nrx_burst_ns = 3000\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("cost.rx_burst_ns"), "{m}");
        assert!(
            m.contains("rx_cost.per_message_ns") && m.contains("rx_cost.per_packet_ns"),
            "{m}"
        );
        assert!(m.contains("= 19200 ns"), "{m}");
        // Exactly the receive work passes.
        DaemonConfig::parse("[cost]\nrx_burst_ns = 19200\n").unwrap();
        DaemonConfig::parse(
            "[cost]\nrx_burst_ns = 3200\n[rx_cost]\nper_message_ns = 50\nper_packet_ns = 50\n",
        )
        .unwrap();
        // A best-effort run is a handler run of up to k packets.
        let e = DaemonConfig::parse("[cost]\nbest_effort_run_ns = 999\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("cost.best_effort_run_ns"), "{m}");
        assert!(
            m.contains("cost.per_packet_ns") && m.contains("policy.granularity"),
            "{m}"
        );
        assert!(m.contains("= 1000 ns"), "{m}");
        DaemonConfig::parse("[cost]\nbest_effort_run_ns = 1000\n").unwrap();
        DaemonConfig::parse("[cost]\nbest_effort_run_ns = 550\n[policy]\ngranularity = 1\n")
            .unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = DaemonConfig::parse("[policy]\ngranularty = 4\n").unwrap_err();
        assert!(e.to_string().contains("granularty"), "{e}");
        let e = DaemonConfig::parse("sokket = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("sokket"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = DaemonConfig::parse("socket_mode = \"0999\"\n").unwrap_err();
        assert!(e.to_string().starts_with("socket_mode"), "{e}");
        let e = DaemonConfig::parse("[port]\nkind = \"dpdk\"\n").unwrap_err();
        assert!(e.to_string().starts_with("port.device"), "{e}");
        let e = DaemonConfig::parse("[[cores]]\ntx_share_ppm = 0\n").unwrap_err();
        assert!(e.to_string().contains("tx_queue_share_ppm"), "{e}");
        let e = DaemonConfig::parse("[peering]\nheartbeat = \"0ms\"\n").unwrap_err();
        assert!(e.to_string().contains("heartbeat"), "{e}");
        let e = DaemonConfig::parse(
            "[[peers]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\nnetwork_bound = \"1ms\"\n\
             [[peers]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\nnetwork_bound = \"1ms\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("peers[1].name"), "{e}");
    }

    #[test]
    fn af_packet_needs_its_device_and_rate_and_takes_several_cores() {
        let base = "[port]\nkind = \"af_packet\"\n";
        let e = DaemonConfig::parse(base).unwrap_err();
        assert!(e.to_string().starts_with("port.device"), "{e}");
        let e = DaemonConfig::parse(&format!("{base}device = \"veth0\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.link_rate_bps"), "{e}");
        let ok = format!("{base}device = \"veth0\"\nlink_rate_bps = 100000000\n");
        let cfg = DaemonConfig::parse(&ok).unwrap();
        assert_eq!(cfg.link_rate_bps(), 100_000_000);
        assert_eq!(cfg.tx_model().cost.link_rate_bps, 100_000_000);
        assert_eq!(cfg.rx_model().cost.link_rate_bps, 100_000_000);
        let two = DaemonConfig::parse(&format!(
            "{ok}[[cores]]\ntx_share_ppm = 400000\n[[cores]]\ntx_share_ppm = 400000\n"
        ))
        .unwrap();
        assert_eq!(two.tx_model().cores, 2);
        let e = DaemonConfig::parse(&format!(
            "{ok}[[cores]]\ntx_share_ppm = 600000\n[[cores]]\ntx_share_ppm = 500000\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("cores[].tx_share_ppm"), "{e}");
        let e = DaemonConfig::parse(&format!("{ok}buffers = 4096\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.buffers"), "{e}");
        let e = DaemonConfig::parse(&format!("{ok}mac = \"02:00\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.mac"), "{e}");
        let e = DaemonConfig::parse(
            "[[peers]]\nname = \"b\"\naddress = \"10.0.0.2:1\"\nnetwork_bound = \"1ms\"\n\
             mac = \"zz:00:00:00:00:01\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("peers[0].mac"), "{e}");
        assert_eq!(
            parse_mac("02:72:74:00:00:0A"),
            Ok([0x02, 0x72, 0x74, 0, 0, 0x0a])
        );
    }

    #[test]
    fn af_xdp_needs_what_af_packet_needs_and_its_modes() {
        let base = "[port]\nkind = \"af_xdp\"\n";
        let e = DaemonConfig::parse(base).unwrap_err();
        assert!(e.to_string().starts_with("port.device"), "{e}");
        let e = DaemonConfig::parse(&format!("{base}device = \"veth0\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.link_rate_bps"), "{e}");
        let ok = format!("{base}device = \"veth0\"\nlink_rate_bps = 100000000\n");
        let cfg = DaemonConfig::parse(&ok).unwrap();
        assert_eq!(cfg.port.attach, XdpAttachMode::Auto);
        assert_eq!(cfg.port.bind, XdpBindMode::Copy);
        assert_eq!(cfg.port.queue, 0);
        let cfg = DaemonConfig::parse(&format!(
            "{ok}queue = 3\nattach = \"native\"\nbind = \"zero-copy-or-copy\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.port.queue, 3);
        assert_eq!(cfg.port.attach, XdpAttachMode::Native);
        assert_eq!(cfg.port.bind, XdpBindMode::ZeroCopyOrCopy);
        let e = DaemonConfig::parse(&format!("{ok}attach = \"skb\"\nbind = \"zero-copy\"\n"))
            .unwrap_err();
        assert!(e.to_string().starts_with("port.bind"), "{e}");
        let e = DaemonConfig::parse(&format!("{ok}bind = \"zerocopy\"\n")).unwrap_err();
        assert!(e.to_string().contains("zerocopy"), "{e}");
        let e = DaemonConfig::parse(&format!("{ok}frame_size = 3000\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.frame_size"), "{e}");
        let two = DaemonConfig::parse(&format!(
            "{ok}[[cores]]\ntx_share_ppm = 500000\n[[cores]]\ntx_share_ppm = 500000\n"
        ))
        .unwrap();
        assert_eq!(two.rx_model().cores, 2);
    }

    #[test]
    fn dpdk_keys_are_checked_and_named() {
        let base = "[port]\nkind = \"dpdk\"\nip = \"10.0.0.1\"\n";
        let e = DaemonConfig::parse(base).unwrap_err();
        assert!(e.to_string().starts_with("port.device"), "{e}");
        let ok = format!("{base}device = \"net_null0\"\n");
        let cfg = DaemonConfig::parse(&ok).unwrap();
        assert!(!cfg.port.no_huge);
        assert_eq!(cfg.port.file_prefix, None);
        for bad in ["eth0", "net null0", "--vdev=net_null0", "3b:00"] {
            let e = DaemonConfig::parse(&format!("{base}device = \"{bad}\"\n")).unwrap_err();
            assert!(e.to_string().starts_with("port.device"), "{bad}: {e}");
        }
        for good in ["0000:3b:00.0", "3b:00.1", "net_pcap0,tx_pcap=/tmp/a.pcap"] {
            DaemonConfig::parse(&format!("{base}device = \"{good}\"\n")).unwrap();
        }
        let e = DaemonConfig::parse(&format!("{ok}eal_args = [\"--no-huge\"]\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.eal_args[0]"), "{e}");
        let e = DaemonConfig::parse(&format!("{ok}file_prefix = \"a/b\"\n")).unwrap_err();
        assert!(e.to_string().starts_with("port.file_prefix"), "{e}");
        let e =
            DaemonConfig::parse("[port]\nkind = \"dpdk\"\ndevice = \"net_null0\"\n").unwrap_err();
        assert!(e.to_string().starts_with("port.ip"), "{e}");
        let e = DaemonConfig::parse(&format!(
            "{ok}[[cores]]\ntx_share_ppm = 600000\n[[cores]]\ntx_share_ppm = 500000\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("cores[].tx_share_ppm"), "{e}");
        assert!(e.to_string().contains("110.0 %"), "{e}");
        assert!(is_pci_address("0000:af:00.7"));
        assert!(!is_pci_address("0000:af:00.8"));
    }

    #[test]
    fn captures_are_charged_only_where_they_can_be_armed() {
        let off = DaemonConfig::parse("[cost]\ncapture_frame_ns = 250\n").unwrap();
        assert_eq!(off.tx_model().cost.capture_frame_ns, 0);
        assert_eq!(off.rx_model().cost.capture_frame_ns, 0);
        let on = DaemonConfig::parse("[capture]\nenabled = true\n").unwrap();
        assert_eq!(
            on.tx_model().cost.capture_frame_ns,
            DEFAULT_CAPTURE_FRAME_NS
        );
        let given =
            DaemonConfig::parse("[capture]\nenabled = true\n[cost]\ncapture_frame_ns = 250\n")
                .unwrap();
        let (m, base) = (given.tx_model(), off.tx_model());
        assert_eq!(m.cost.capture_frame_ns, 250);
        // Per packet in the channel's cost, 32 per RX burst and per TX stage as blocking.
        assert_eq!(m.cost.cpu_cost(3), base.cost.cpu_cost(3) + 3 * 250);
        assert_eq!(
            m.cost.service_phase_ns(),
            base.cost.service_phase_ns() + 32 * 250
        );
        assert_eq!(
            m.cpu_blocking_extra(),
            base.cpu_blocking_extra() + 2 * 32 * 250
        );
        for bad in ["0", "3", "131072"] {
            let e = DaemonConfig::parse(&format!("[capture]\nslots = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("capture.slots"), "{e}");
        }
    }

    #[test]
    fn models_follow_the_cores() {
        let cfg = DaemonConfig::parse(
            "[[cores]]\ntx_share_ppm = 600000\n[[cores]]\ntx_share_ppm = 400000\n",
        )
        .unwrap();
        let m = cfg.tx_model();
        assert_eq!(m.cores, 2);
        assert_eq!(m.tx_queue_share_ppm, vec![600_000, 400_000]);
        assert_eq!(cfg.rx_model().tx_queue_share_ppm, vec![1_000_000]);
    }

    #[test]
    fn groups_resolve() {
        assert_eq!(resolve_group("0"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-here").is_err());
    }
}
