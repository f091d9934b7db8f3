//! The control protocols: `rtchanctl` ↔ daemon over the Unix socket, and daemon ↔ daemon over
//! TCP between control planes.
//!
//! Both are line-delimited JSON: one request per line, one reply line per request, in order.
//! Every request carries `"version": 1` ([`PROTOCOL_VERSION`]); a line longer than
//! [`MAX_LINE`] bytes, a line cut off by the end of the stream, invalid JSON, an unknown
//! field, a wrong type or a bad value gets an error reply naming the field (the JSON path,
//! e.g. `request.open.imin`) and changes nothing; so does a key given twice in one object.
//!
//! ```text
//! {"version":1,"request":{"open":{"mmax":"1500","imin":"1ms","bmax":4,"deadline":"2ms","dst":"local"}}}
//! {"version":1,"request":"list"}
//! {"version":1,"request":{"close":{"id":3}}}
//! → {"version":1,"ok":true,"result":{..}}
//! → {"version":1,"ok":false,"error":{"kind":"invalid","field":"request.open.imin","message":".."}}
//! ```
//!
//! Durations and sizes are integers (ns, bytes) or strings with units (`"2ms"`, `"4KiB"`).
//! Data flow: a connection thread reads a line with [`read_line_capped`], decodes it with
//! [`decode`], hands the typed request to the control thread, and writes its [`Reply`].

use std::io::{self, BufRead};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::admission::{Admitted, Nanos, Rejection};
use crate::units::{Duration, Size};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted, bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// One request line from `rtchanctl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request.
    pub request: Request,
}

/// What `rtchanctl` can ask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Open (or with `dry_run`, only decide) a channel.
    Open(OpenArgs),
    /// Close a channel.
    Close(CloseArgs),
    /// Discard a record of the state file that was not re-established at start-up (listed
    /// under `unrestored`), by its record number; `close` never touches such records.
    DiscardUnrestored(RecordArgs),
    /// All channels, outgoing and incoming.
    List,
    /// One channel with its admission numbers.
    Show(IdArgs),
    /// Statistics of one or every channel.
    Stats(StatsArgs),
    /// The port's link state and counters, per queue too (`rtchanctl stats --port`).
    PortStats,
    /// Every polling core's busy share, iterations and longest stretch (`stats --cores`).
    CoreStats,
    /// The scheduling policy.
    PolicyShow,
    /// Change the scheduling policy.
    PolicySet(PolicyUpdate),
    /// Liveness.
    Ping,
    /// Hand this connection the shared-memory ring of a channel (client library): the reply
    /// carries the ring's memfd (and, for `recv`, an eventfd) with `SCM_RIGHTS`.
    Attach(AttachArgs),
    /// Give back a receiving ring taken with `attach` (the daemon's sink drains it again).
    Detach(IdArgs),
    /// This connection has mapped the ring `attach` (or `open` with `attach`) handed it: the
    /// daemon seals the ring against new writers and hole punching, then starts reading it
    /// (`send`) or delivering into it (`recv`). Until then the ring is left alone.
    Mapped(AttachArgs),
    /// Arm every polling core's capture ring for this connection (`rtchanctl capture`).
    CaptureStart(CaptureArgs),
    /// Frames captured since the last take, oldest first, at most [`CAPTURE_TAKE_BYTES`].
    CaptureTake,
    /// Disarm the cores; the last frames are lost unless taken before.
    CaptureStop,
}

/// `capture_start`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureArgs {
    /// Only frames of this channel (sent or received here); every frame when absent.
    #[serde(default)]
    pub channel: Option<u32>,
    /// Stop after this many frames (at least 1); until `capture_stop` when absent.
    #[serde(default)]
    pub count: Option<u64>,
}

/// Frame bytes one `capture_take` reply carries at most (hex-encoded twice that), so the
/// reply stays within what `rtchanctl` reads.
pub const CAPTURE_TAKE_BYTES: usize = 256 * 1024;

/// `capture_start`'s reply: one capture interface per polling core and direction role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStarted {
    /// Interface names, indexed by [`CaptureFrameInfo::iface`] (`tx0`: sending core 0,
    /// `rx0`: receive core 0).
    pub interfaces: Vec<String>,
    /// Bytes kept of each frame.
    pub snaplen: u32,
    /// Frames each core's ring holds.
    pub slots: usize,
}

/// One captured frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureFrameInfo {
    /// Index into [`CaptureStarted::interfaces`].
    pub iface: u16,
    /// When the core copied it: ns since the Unix epoch (the core's monotonic clock shifted
    /// by the offset to the wall clock).
    pub ts: u64,
    /// True for a frame received, false for one sent.
    pub inbound: bool,
    /// Its length on the port.
    pub orig_len: u32,
    /// Its bytes (at most the snap length), hex.
    pub data: String,
}

/// `capture_take` and `capture_stop`'s reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureChunk {
    /// Frames, oldest first per core.
    pub frames: Vec<CaptureFrameInfo>,
    /// Frames the cores copied since the start.
    pub copied: u64,
    /// Copies the cores dropped since the start because a ring was full (the frames went on).
    pub dropped: u64,
    /// The capture ended (its count reached, or stopped): the cores are disarmed.
    pub done: bool,
}

/// `attach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachArgs {
    /// The channel.
    pub id: u32,
    /// Which end.
    pub role: AttachRole,
}

/// Which end of a channel a client attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachRole {
    /// The submit ring of a client-fed channel this host sends on.
    Send,
    /// The delivery ring of a channel this host receives.
    Recv,
}

impl Request {
    /// Whether the request changes anything (needs the admin permission).
    pub fn is_write(&self) -> bool {
        match self {
            Self::Open(o) => !o.dry_run,
            Self::Close(_)
            | Self::DiscardUnrestored(_)
            | Self::PolicySet(_)
            | Self::Attach(_)
            | Self::Detach(_)
            | Self::Mapped(_) => true,
            // Frames carry the traffic's contents: admins only.
            Self::CaptureStart(_) | Self::CaptureTake | Self::CaptureStop => true,
            Self::List
            | Self::Show(_)
            | Self::Stats(_)
            | Self::PortStats
            | Self::CoreStats
            | Self::PolicyShow
            | Self::Ping => false,
        }
    }
}

/// `open`: a channel's traffic specification, end-to-end bound, destination and options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenArgs {
    /// Largest message.
    pub mmax: Size,
    /// Smallest interval between messages.
    pub imin: Duration,
    /// Largest burst, messages.
    pub bmax: u32,
    /// End-to-end delay bound D.
    pub deadline: Duration,
    /// Destination: `local` or a configured peer's name.
    pub dst: String,
    /// Core (and so TX queue) to run on; chosen by placement when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<u16>,
    /// TX queue; core `i` owns TX queue `i`, so this picks the core too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txq: Option<u16>,
    /// Overflow policy: `block`, `drop-newest` or `drop-oldest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Decide only; reserve nothing on either host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Built-in traffic for the channel: `periodic`, `poisson`, `greedy:N`, `bursts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Message size of the built-in source (default `mmax`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_size: Option<Size>,
    /// A best-effort channel: no admission and no bound (`deadline` is ignored); `bmax` is
    /// its queue in messages and `imin` only paces the built-in source. It is served in the
    /// best-effort class, which gets at least `best_effort_reserve_ppm` of the core and link.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub best_effort: bool,
    /// A client-fed channel: its messages come from the requesting process through a
    /// shared-memory ring, whose memfd the reply carries (`SCM_RIGHTS`). The channel belongs
    /// to the connection: it is closed when the connection ends. Not with `source`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attach: bool,
}

impl OpenArgs {
    /// A real-time channel of messages up to `mmax` bytes, at least `imin` ns apart, `bmax`
    /// buffered, delivered to `dst` within `deadline` ns; every option at its default (any
    /// core and queue, the daemon's overflow policy, opened for real, no source, not attached).
    pub fn new(mmax: u64, imin: Nanos, bmax: u32, deadline: Nanos, dst: &str) -> Self {
        Self {
            mmax: Size(mmax),
            imin: Duration(imin),
            bmax,
            deadline: Duration(deadline),
            dst: dst.into(),
            core: None,
            txq: None,
            policy: None,
            dry_run: false,
            source: None,
            message_size: None,
            best_effort: false,
            attach: false,
        }
    }
}

/// `close`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseArgs {
    /// The channel.
    pub id: u32,
    /// Discard queued messages instead of the configured close mode.
    #[serde(default)]
    pub discard: bool,
}

/// `discard_unrestored`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordArgs {
    /// The record's number as `list` shows it (`unrestored[].index`: its position in the
    /// state file read at start-up, from 0).
    pub record: usize,
}

/// `show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdArgs {
    /// The channel.
    pub id: u32,
}

/// `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsArgs {
    /// One channel, or every channel when absent.
    #[serde(default)]
    pub id: Option<u32>,
}

/// `policy_set`: the fields to change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    /// Preemption granularity, packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<u32>,
    /// Work-conserving for early messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_conserving: Option<bool>,
    /// Best-effort reserve, millionths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_effort_reserve_ppm: Option<u32>,
    /// Cycle budget of one handler run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_budget_cycles: Option<u64>,
    /// Default overflow policy of new channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    /// Close mode: `drain` or `discard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<String>,
}

/// The policy as `policy show` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Preemption granularity, packets.
    pub granularity: u32,
    /// Work-conserving for early messages.
    pub work_conserving: bool,
    /// Best-effort reserve, millionths.
    pub best_effort_reserve_ppm: u32,
    /// Cycle budget of one handler run.
    pub run_budget_cycles: u64,
    /// Default overflow policy.
    pub overflow: String,
    /// Close mode.
    pub close: String,
}

/// The receiving host's part of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The channel id (on the wire and on both hosts).
    pub id: u32,
    /// The receiving host's name.
    pub host: String,
    /// The receiving host's bound `d_r`.
    pub deadline: Nanos,
    /// The least `d_r` the receiver could have given.
    pub least_deadline: Nanos,
    /// The receiver's admission numbers (its core, RX CPU deadline, utilisation).
    pub admitted: Admitted,
}

/// A channel as `open`, `list` and `show` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Channel id.
    pub id: u32,
    /// `open`, or `dry_run` for an `open` that reserved nothing.
    pub state: String,
    /// Destination.
    pub dst: String,
    /// End-to-end bound D.
    pub deadline: Nanos,
    /// The network's share of D.
    pub network_bound: Nanos,
    /// The sending host's share `d_s` and its admission numbers.
    pub sender: Admitted,
    /// The receiving host's share and numbers.
    pub receiver: Grant,
    /// Overflow policy.
    pub policy: String,
    /// Built-in traffic source, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A best-effort channel (no bound; the admission numbers are zero).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub best_effort: bool,
    /// Fed by a client process through a shared-memory ring.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attach: bool,
}

/// An incoming channel on the receiving host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingInfo {
    /// Channel id.
    pub id: u32,
    /// The sending host (`local` for the loopback).
    pub from: String,
    /// This host's bound `d_r`.
    pub deadline: Nanos,
    /// End-to-end bound D.
    pub end_to_end: Nanos,
    /// Admission numbers on this host.
    pub admitted: Admitted,
    /// Committed by the sender (false while its setup is in progress).
    pub committed: bool,
    /// A best-effort channel (no bound; the admission numbers are zero).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub best_effort: bool,
}

/// `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelList {
    /// Channels this host sends on.
    pub channels: Vec<ChannelInfo>,
    /// Channels this host receives.
    pub incoming: Vec<IncomingInfo>,
    /// Records of the state file that were not re-established at start-up (kept in the file
    /// until `close`d), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrestored: Vec<crate::state::RejectedRecord>,
    /// Frames this host's receive path rejected, by reason, all channels and none
    /// (`unknown_channel`, checksums, ...); reasons with no frames left out.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub receive_rejected: std::collections::BTreeMap<String, u64>,
}

/// Latency percentiles of a histogram, ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Nanos,
    /// 99th percentile.
    pub p99: Nanos,
    /// 99.9th percentile.
    pub p999: Nanos,
    /// Largest.
    pub max: Nanos,
}

/// Sending-side counters of a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxCounters {
    /// Messages accepted by submit.
    pub submitted: u64,
    /// Messages whose last packet left.
    pub sent: u64,
    /// Packets sent.
    pub packets: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Submits refused with a full buffer (block policy).
    pub would_block: u64,
    /// Dropped by drop-newest / drop-oldest / on close.
    pub dropped: u64,
    /// Packets released after their link deadline.
    pub late_packets: u64,
    /// Handler runs over their cycle budget.
    pub budget_overruns: u64,
    /// Descriptors a client wrote into its ring that failed validation (refused).
    #[serde(default)]
    pub invalid: u64,
    /// Client-fed messages whose stamp lay outside [take − admitted release jitter, take]
    /// and was moved to that window's edge for their deadlines (their delay still counts
    /// from the client's own stamp).
    #[serde(default)]
    pub restamped: u64,
    /// Submit to last packet released.
    pub delay: Percentiles,
}

/// Receiving-side counters of a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxCounters {
    /// Messages delivered.
    pub delivered: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Delivered after submit + D.
    pub deadline_misses: u64,
    /// Lost (sequence gaps).
    pub lost: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Out of order.
    pub reordered: u64,
    /// Submit to delivery.
    pub latency: Percentiles,
    /// The most recent deadline misses with their times (up to a fixed number per channel,
    /// oldest first; `deadline_misses` counts them all), to hold against measured OS
    /// preemption. Empty when the daemon does not drain the channel itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_misses: Vec<MissTimes>,
    /// Misses drained before those in `recent_misses` and no longer held (the list is full).
    /// A miss delivered but not drained yet is in `deadline_misses` and in neither of these.
    #[serde(default)]
    pub older_misses: u64,
    /// Frames naming this channel that the receive path rejected, by reason
    /// (`wrong_source`, `wrong_destination`, `bad_fragment`, `seq_out_of_window`, ...;
    /// reasons with no frames left out).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Messages delivered with an implausible submit timestamp, kept out of `latency` and
    /// `deadline_misses`.
    #[serde(default)]
    pub implausible_timestamps: u64,
    /// Times the receiver followed the sender's sequence numbers out of its window.
    #[serde(default)]
    pub resyncs: u64,
}

/// One deadline miss: the message's times (CLOCK_MONOTONIC ns of the receiving host; the
/// submit time is the sender's, on synchronised clocks across hosts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissTimes {
    /// Submit time at the sender.
    pub submit: Nanos,
    /// Absolute end-to-end deadline.
    pub deadline: Nanos,
    /// Delivery time (after the deadline).
    pub delivered: Nanos,
}

/// `port_stats`: the daemon's port. Counters are kept for `kind = "dpdk"` (`dpdk`) and for
/// af_packet with several cores (`queues`); other kinds report their kind and device only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatsInfo {
    /// `[port] kind`.
    pub kind: String,
    /// `[port] device`.
    pub device: Option<String>,
    /// The DPDK port's state and counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk: Option<DpdkPortStats>,
    /// af_packet with several cores: per socket of the fanout group (= core), its counters
    /// and the software hand-off's (a DPDK port's queues are in `dpdk`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueStatsInfo>,
    /// af_packet with several cores: how received frames reach their core, `kernel` (the
    /// fanout group's BPF program, the hand-off behind it) or `software` (flow hash and the
    /// hand-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering: Option<String>,
}

/// A DPDK ethdev port's link, counters (`rte_eth_stats`, xstats) and per-queue counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpdkPortStats {
    /// Ethdev name (`net_pcap0`, `0000:3b:00.0`).
    pub name: String,
    /// PMD (`net_i40e`, `net_ice`).
    pub driver: String,
    /// Link up (false also when the driver does not tell).
    pub link_up: bool,
    /// Link speed, Mb/s, when the driver tells.
    pub link_speed_mbps: Option<u32>,
    /// Full duplex.
    pub full_duplex: bool,
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Received packets the NIC dropped (RX ring full).
    pub imissed: u64,
    /// Erroneous received packets.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
    /// RX pool mbufs in use, and its size.
    pub rx_pool_in_use: u32,
    /// RX pool size.
    pub rx_pool_size: u32,
    /// How received frames reach their receiver's core: `flow-channel` (an `rte_flow` rule
    /// per channel), `flow-port` (one rule for the rtchan UDP port, software hand-off for the
    /// rest) or `software` (the hand-off between cores alone).
    #[serde(default)]
    pub steering: String,
    /// The steering in words, with the device's reason where it refused rules.
    #[serde(default)]
    pub steering_detail: String,
    /// With rules: the best-effort RX queue (frames no real-time rule matches), read by the
    /// last core after its own queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub be_queue: Option<u16>,
    /// Packets received on the best-effort queue.
    #[serde(default)]
    pub be_rx_packets: u64,
    /// Per-channel rules installed now.
    #[serde(default)]
    pub channel_rules: u64,
    /// Rules the device refused after start (those channels are steered in software).
    #[serde(default)]
    pub rule_failures: u64,
    /// Per queue pair (= polling core).
    pub queues: Vec<QueueStatsInfo>,
    /// The driver's extended statistics (`rte_eth_xstats_get`), by name.
    pub xstats: std::collections::BTreeMap<String, u64>,
}

/// One TX/RX queue pair of a DPDK port, or one socket of an af_packet fanout group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatsInfo {
    /// Queue pair index (= polling core = TX queue).
    pub queue: u16,
    /// The RX queue the core reads: `queue`, or `queue + 1` when `rte_flow` rules steer
    /// (queue 0 is the best-effort queue then).
    #[serde(default)]
    pub rx_queue: u16,
    /// Packets received on this RX queue.
    pub rx_packets: u64,
    /// Bytes received on this RX queue.
    pub rx_bytes: u64,
    /// Packets sent on this TX queue.
    pub tx_packets: u64,
    /// Bytes sent on this TX queue.
    pub tx_bytes: u64,
    /// Frames other cores' RX queues handed to this core (software steering).
    pub handed_in: u64,
    /// Frames for this core dropped because its hand-off ring was full.
    pub handoff_dropped: u64,
    /// This core's TX pool mbufs in use.
    pub tx_pool_in_use: u32,
}

/// `core_stats`: one polling core, as it published itself while running (read from its
/// padded counters; the core takes no lock and allocates nothing for it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreStatsInfo {
    /// `tx0`, `tx1`, ... (sending cores, = admission core and TX queue), `rx0`, ... (receive
    /// cores of the in-memory link).
    pub core: String,
    /// Loop iterations.
    pub iterations: u64,
    /// Time in iterations that did work, ns.
    pub busy_ns: u64,
    /// Time from its first to its latest iteration, ns.
    pub uptime_ns: u64,
    /// `busy_ns / uptime_ns`.
    pub busy_share: f64,
    /// Longest stretch without a preemption point seen, ns (OS preemption inside it included);
    /// compare with the model's, `docs/admission.md` §8.
    pub longest_stretch_ns: u64,
}

/// `stats` of one channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelStatsInfo {
    /// Channel id.
    pub id: u32,
    /// `out` (this host sends) or `in` (this host receives).
    pub direction: String,
    /// The other host.
    pub peer: String,
    /// Seconds since the channel opened.
    pub uptime_s: f64,
    /// Sending side (outgoing channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<TxCounters>,
    /// Receiving side (incoming channels, and loopback channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx: Option<RxCounters>,
}

/// What kind of error a reply carries; `rtchanctl` maps it to its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or has a bad value (exit 2).
    Invalid,
    /// A well-formed line that is not a request of this protocol (exit 2).
    Protocol,
    /// No such channel (exit 2).
    NotFound,
    /// The caller may not do this (exit 2).
    Permission,
    /// Admission refused it on one of the hosts (exit 1).
    Refused,
    /// A peer's control plane did not answer or went away (exit 1).
    Peer,
    /// The daemon failed (exit 1).
    Internal,
    /// A resource limit of `[limits]` refused it: connections, or a channel's or the host's
    /// buffer-memory budget (exit 1).
    Limit,
}

impl ErrorKind {
    /// `rtchanctl`'s exit code for this error.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Refused | Self::Peer | Self::Internal | Self::Limit => 1,
            Self::Invalid | Self::Protocol | Self::NotFound | Self::Permission => 2,
        }
    }
}

/// Why admission refused a channel, on which host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `sender` or `receiver`.
    pub side: String,
    /// The refusing host's name.
    pub host: String,
    /// The admission test's answer on that host.
    pub rejection: Rejection,
    /// That host's least bound for this spec now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_host_deadline: Option<Nanos>,
    /// The tightest end-to-end D the whole path would have admitted, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tightest_deadline: Option<Nanos>,
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind.
    pub kind: ErrorKind,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A sentence for people.
    pub message: String,
    /// Admission's reasons, for `refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Box<Refusal>>,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            field: None,
            message: message.into(),
            refusal: None,
        }
    }
    /// A bad value of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Invalid,
            field: Some(field.into()),
            message: message.into(),
            refusal: None,
        }
    }
    /// A refusal.
    pub fn refused(message: impl Into<String>, refusal: Refusal) -> Self {
        Self {
            kind: ErrorKind::Refused,
            field: None,
            message: message.into(),
            refusal: Some(Box::new(refusal)),
        }
    }
}

/// One reply line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Success.
    pub ok: bool,
    /// The result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// On replies to clients, while the daemon's last save of its state file failed (and none
    /// has succeeded since): the table this daemon serves is not what a restart would restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_save_failed: Option<crate::state::SaveFailure>,
}

impl Reply {
    /// A success carrying `result`.
    pub fn ok(result: impl Serialize) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: true,
            result: Some(serde_json::to_value(result).unwrap_or(serde_json::Value::Null)),
            error: None,
            state_save_failed: None,
        }
    }
    /// A failure.
    pub fn err(e: ApiError) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(e),
            state_save_failed: None,
        }
    }
    /// From a result.
    pub fn from_result<T: Serialize>(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => Self::ok(v),
            Err(e) => Self::err(e),
        }
    }
    /// The line to write, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("replies serialise");
        s.push('\n');
        s
    }
    /// The typed result, or the error.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.ok {
            return Err(ApiError::new(
                ErrorKind::Protocol,
                "error reply without error",
            ));
        }
        serde_json::from_value(self.result.unwrap_or(serde_json::Value::Null)).map_err(|e| {
            ApiError::new(
                ErrorKind::Protocol,
                format!("reply does not match the request: {e}"),
            )
        })
    }
}

/// One request line between control planes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequestLine {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request.
    pub request: PeerRequest,
}

/// What one control plane asks another (the sender asks the receiver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    /// First line of a session: who is asking.
    Hello {
        /// The sender's `peering.name`.
        name: String,
    },
    /// Admit the incoming side of a channel (reserved until `commit`, `abort`, or the session
    /// ends; with `dry_run` nothing is reserved).
    Prepare(PrepareArgs),
    /// The sender has set its side up: the channel is established.
    Commit {
        /// Channel id.
        id: u32,
    },
    /// The sender gave up: free the reservation.
    Abort {
        /// Channel id.
        id: u32,
    },
    /// The sender closed the channel.
    Release {
        /// Channel id.
        id: u32,
    },
    /// Liveness.
    Ping,
}

/// `prepare`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareArgs {
    /// Channel id proposed by the sender (refused if already in use at the receiver).
    pub id: u32,
    /// Largest message, bytes.
    pub mmax: u32,
    /// Smallest interval, ns.
    pub imin: Nanos,
    /// Largest burst.
    pub bmax: u32,
    /// The most of D the receiving host may take.
    pub budget: Nanos,
    /// End-to-end D.
    pub end_to_end: Nanos,
    /// Receive core wanted (the loopback pairs it with the sending core).
    #[serde(default)]
    pub core: Option<u16>,
    /// Decide only.
    #[serde(default)]
    pub dry_run: bool,
    /// A best-effort channel: open a receiver only, no admission (`budget` is ignored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub best_effort: bool,
}

/// How a line read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line is in the buffer (newline stripped).
    Complete,
    /// The stream ended cleanly between lines.
    Eof,
    /// The line exceeded the limit; it was discarded up to its newline (or the stream's end).
    TooLong,
    /// The stream ended inside a line; the partial line is in the buffer.
    Truncated,
}

/// Reads one line of at most `max` bytes into `buf` (cleared first), without ever holding more
/// than `max` bytes of it.
pub fn read_line_capped<R: BufRead>(r: &mut R, max: usize, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Truncated
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(if done { take + 1 } else { take });
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// Decodes a request line: JSON, then the version, then the schema (unknown fields, types and
/// values), naming the JSON path of the field at fault.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| ApiError::new(ErrorKind::Protocol, "request is not UTF-8"))?;
    let value: serde_json::Value = strict_value(text).map_err(|e| {
        ApiError::new(
            ErrorKind::Protocol,
            format!("request is not valid JSON: {e}"),
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Protocol,
            "request must be a JSON object with \"version\" and \"request\"",
        )
    })?;
    match obj.get("version") {
        None => {
            return Err(ApiError::invalid(
                "version",
                format!("missing; this daemon speaks protocol version {PROTOCOL_VERSION}"),
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(ApiError::invalid(
                "version",
                format!(
                "unsupported protocol version {v}; this daemon speaks version {PROTOCOL_VERSION}"
            ),
            ))
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." { None } else { Some(path) };
        ApiError {
            kind: ErrorKind::Invalid,
            message: match &field {
                Some(f) => format!("{f}: {inner}"),
                None => inner.to_string(),
            },
            field,
            refusal: None,
        }
    })
}

/// Parses JSON like `serde_json::from_str`, but refuses an object with the same key twice
/// (naming the key) instead of letting the last one win.
pub fn strict_value(text: &str) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_str::<StrictValue>(text).map(|v| v.0)
}

/// A JSON value whose objects have unique keys.
struct StrictValue(serde_json::Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictValue;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(serde_json::Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(serde_json::Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<StrictValue, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(x)) = a.next_element()? {
            v.push(x);
        }
        Ok(StrictValue(serde_json::Value::Array(v)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<StrictValue, A::Error> {
        let mut m = serde_json::Map::new();
        while let Some(k) = a.next_key::<String>()? {
            let StrictValue(x) = a.next_value()?;
            if m.contains_key(&k) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key \"{k}\" (each key may appear once)"
                )));
            }
            m.insert(k, x);
        }
        Ok(StrictValue(serde_json::Value::Object(m)))
    }
}

/// A request line, newline included.
pub fn encode_request(request: &Request) -> String {
    let mut s = serde_json::to_string(&RequestLine {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    })
    .expect("requests serialise");
    s.push('\n');
    s
}

/// A peer request line, newline included.
pub fn encode_peer_request(request: &PeerRequest) -> String {
    let mut s = serde_json::to_string(&PeerRequestLine {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    })
    .expect("requests serialise");
    s.push('\n');
    s
}

/// Percentiles of an HdrHistogram.
pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn dec(s: &str) -> Result<RequestLine, ApiError> {
        decode(s.as_bytes())
    }

    #[test]
    fn requests_round_trip() {
        let r = Request::Open(OpenArgs::new(1500, 1_000_000, 4, 2_000_000, "local"));
        let line = encode_request(&r);
        assert_eq!(dec(line.trim_end()).unwrap().request, r);
        assert_eq!(
            dec(r#"{"version":1,"request":"list"}"#).unwrap().request,
            Request::List
        );
        let d = dec(r#"{"version":1,"request":{"discard_unrestored":{"record":2}}}"#).unwrap();
        assert_eq!(
            d.request,
            Request::DiscardUnrestored(RecordArgs { record: 2 })
        );
        assert!(d.request.is_write(), "a reader may not discard records");
        let e = dec(r#"{"version":1,"request":{"discard_unrestored":{"id":2}}}"#).unwrap_err();
        assert!(e.message.contains("id"), "{e:?}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = dec(r#"{"version":1,"request":{"open":{"mmax":1,"imin":"0ms","bmax":1,"deadline":1,"dst":"x"}}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("request.open.imin"), "{e:?}");
        let e = dec(r#"{"version":1,"request":{"close":{"id":1,"bogus":2}}}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{e:?}");
        let e = dec(r#"{"version":1,"request":{"close":{"id":"one"}}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("request.close.id"), "{e:?}");
        let e = dec(r#"{"version":2,"request":"list"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("version"));
        let e = dec(r#"{"request":"list"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("version"));
        let e = dec(r#"{"version":1,"request":"list","extra":1}"#).unwrap_err();
        assert!(e.message.contains("extra"), "{e:?}");
        let e = dec(r#"{"version":1,"request":{"open":{"mmax":1500,"imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","dry_run":true,"dry_run":false}}}"#).unwrap_err();
        assert!(e.message.contains("duplicate key \"dry_run\""), "{e:?}");
        let e = dec(r#"{"version":1,"request":"list","request":{"close":{"id":0}}}"#).unwrap_err();
        assert!(e.message.contains("duplicate key \"request\""), "{e:?}");
        let e = dec("{not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
    }

    #[test]
    fn lines_are_capped_and_truncation_seen() {
        let mut buf = Vec::new();
        let mut r = Cursor::new(b"abc\n".to_vec());
        assert_eq!(
            read_line_capped(&mut r, 8, &mut buf).unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"abc");
        assert_eq!(read_line_capped(&mut r, 8, &mut buf).unwrap(), Line::Eof);
        let mut r = Cursor::new(b"0123456789\nok\n".to_vec());
        assert_eq!(
            read_line_capped(&mut r, 8, &mut buf).unwrap(),
            Line::TooLong
        );
        assert_eq!(
            read_line_capped(&mut r, 8, &mut buf).unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"ok");
        let mut r = Cursor::new(b"{\"vers".to_vec());
        assert_eq!(
            read_line_capped(&mut r, 8, &mut buf).unwrap(),
            Line::Truncated
        );
    }
}
