//! The cost model and the resource model: what one message costs on a core and on a
//! TX queue, and what the host has to offer.
//!
//! Everything here is integer arithmetic in nanoseconds and bytes. The defaults are
//! placeholders for a 10 Gb/s port and a modern server core, not bounds of any machine
//! (docs/admission.md §8); a deployment replaces them with figures `rtchand calibrate`
//! measures on its own machine through the real polling loop, and loads them from its
//! configuration file through serde.

use dataplane::core::{
    CONTROL_PER_SERVICE, RX_BURSTS_PER_SERVICE, SERVICE_INTERVAL_NS, TX_WINDOW_NS,
};
use dataplane::port::MAX_BURST;
use dataplane::wire::{self, FRAME_OVERHEAD, IP_OVERHEAD};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::demand::Task;

/// A duration or an instant in nanoseconds.
pub type Nanos = u64;

// The wire format's constants are defined once, in `dataplane::wire`.
pub use dataplane::wire::RTCHAN_HEADER_LEN;

/// The bytes an IP packet of the given MTU spends on headers before the rtchan payload.
const IP_PAYLOAD_OVERHEAD: u32 = IP_OVERHEAD as u32;

/// Largest `ResourceModel::max_message` accepted, so that byte counts stay far from overflow.
pub const MAX_MESSAGE_LIMIT: u32 = 1 << 30;

/// What the dataplane's work costs, per core and on the wire.
///
/// CPU costs are worst-case execution times on one polling core; they must be upper bounds
/// (the admission test is only as sound as they are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostModel {
    /// CPU cost charged once per message (dequeue, logical arrival, bookkeeping).
    pub per_message_ns: Nanos,
    /// CPU cost per packet (fragment, headers, checksum, timestamp, enqueue at the link).
    pub per_packet_ns: Nanos,
    /// Longest non-preemptive run of best-effort work on a core.
    pub best_effort_run_ns: Nanos,
    /// Longest RX burst (poll, demultiplex, reassemble, free, plus one bounded reassembly
    /// maintenance step of `dataplane::rx::MAINTAIN_SLOTS_PER_STEP` slots) on a core.
    pub rx_burst_ns: Nanos,
    /// Longest control command (take it from the ring, apply it: state built on the control
    /// thread is moved in or out, nothing allocated, freed or locked) on a core.
    pub control_poll_ns: Nanos,
    /// Longest TX stage on a core: the link scheduler's release of one TX batch and one
    /// `tx_burst`.
    pub tx_stage_ns: Nanos,
    /// Longest scan of client-fed channels' shared-memory rings in one iteration
    /// (`dataplane::core::CLIENT_SCAN_PER_ITERATION` tail loads, each a cache miss at worst).
    /// It runs in the service phase, after the RX burst ([`Self::service_phase_ns`]).
    pub client_scan_ns: Nanos,
    /// Copy of one frame into a core's capture ring (`dataplane::capture`), charged only
    /// where captures can be armed; 0 (the default) where they cannot. It runs in the TX
    /// stage for each frame it releases and in the RX burst for each frame received, so it is
    /// charged per packet ([`Self::cpu_cost`]), per received frame ([`Self::service_phase_ns`])
    /// and in the longest TX stage ([`Self::tx_stage_longest_ns`]).
    pub capture_frame_ns: Nanos,
    /// IP MTU of the port in bytes.
    pub mtu: u32,
    /// Line rate of the port in bits per second.
    pub link_rate_bps: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            per_message_ns: 400,
            per_packet_ns: 150,
            best_effort_run_ns: 2_000,
            rx_burst_ns: 19_200,
            control_poll_ns: 500,
            tx_stage_ns: 500,
            client_scan_ns: 2_000,
            capture_frame_ns: 0,
            mtu: 1500,
            link_rate_bps: 10_000_000_000,
        }
    }
}

impl CostModel {
    /// The costs of `docs/admission.md`'s worked example: a fast server core at 10 Gb/s,
    /// about ten times faster per packet than the defaults' reference machine. They are fixed
    /// here, apart from the defaults, so that the arithmetic the docs and the admission tests
    /// check does not move when the defaults are re-measured.
    pub fn worked_example() -> Self {
        Self {
            per_message_ns: 400,
            per_packet_ns: 150,
            best_effort_run_ns: 2_000,
            rx_burst_ns: 3_000,
            control_poll_ns: 500,
            tx_stage_ns: 500,
            client_scan_ns: 2_000,
            ..Self::default()
        }
    }

    /// Message bytes carried by one packet: MTU less IPv4, UDP and rtchan headers.
    pub fn payload_per_packet(&self) -> u32 {
        self.mtu.saturating_sub(IP_PAYLOAD_OVERHEAD)
    }

    /// Packets needed for a message of `mmax` bytes (at least one).
    pub fn packets(&self, mmax: u32) -> u32 {
        mmax.div_ceil(self.payload_per_packet().max(1)).max(1)
    }

    /// Bytes a packet with `payload` message bytes occupies on the wire, including
    /// preamble, inter-frame gap, FCS and padding to the minimum frame.
    pub fn wire_bytes(&self, payload: u32) -> u64 {
        wire::wire_bytes(payload as usize + FRAME_OVERHEAD)
    }

    /// Wire bytes of a maximum-size packet.
    pub fn max_packet_wire_bytes(&self) -> u64 {
        self.wire_bytes(self.payload_per_packet())
    }

    /// Wire bytes of packets `first..last` (0-based, exclusive) of a `mmax`-byte message.
    pub fn wire_bytes_of(&self, mmax: u32, first: u32, last: u32) -> u64 {
        let ppp = self.payload_per_packet().max(1);
        (first..last)
            .map(|i| {
                let sent = u64::from(i) * u64::from(ppp);
                let left = u64::from(mmax).saturating_sub(sent);
                self.wire_bytes(left.min(u64::from(ppp)) as u32)
            })
            .sum()
    }

    /// CPU cost of a whole message of `packets` packets: its handler work plus, per packet,
    /// a [`MAX_BURST`]-th of a TX stage (a stage is due every [`MAX_BURST`] packets written)
    /// and, where captures can be armed, the packet's copy into the capture ring (the TX
    /// stage that releases it makes it).
    pub fn cpu_cost(&self, packets: u32) -> Nanos {
        self.per_message_ns
            + u64::from(packets)
                * (self.per_packet_ns
                    + self.tx_stage_ns.div_ceil(MAX_BURST as u64)
                    + self.capture_frame_ns)
    }

    /// Longest RX burst: `rx_burst_ns`, plus a capture copy of each of its [`MAX_BURST`]
    /// frames where captures can be armed.
    pub fn rx_burst_longest_ns(&self) -> Nanos {
        self.rx_burst_ns + MAX_BURST as u64 * self.capture_frame_ns
    }

    /// Longest TX stage without a preemption point: `tx_stage_ns`, plus a capture copy of each
    /// of the [`MAX_BURST`] frames it may release where captures can be armed. (The copies'
    /// CPU time is in [`Self::cpu_cost`], per packet; this is the stage's length as blocking.)
    pub fn tx_stage_longest_ns(&self) -> Nanos {
        self.tx_stage_ns + MAX_BURST as u64 * self.capture_frame_ns
    }

    /// The service phase, which runs without a preemption point: every RX burst, the client
    /// scan and every control command it may take, summed
    /// (`dataplane::core::RX_BURSTS_PER_SERVICE` × `rx_burst_ns` + `client_scan_ns` +
    /// `CONTROL_PER_SERVICE` × `control_poll_ns`).
    pub fn service_phase_ns(&self) -> Nanos {
        RX_BURSTS_PER_SERVICE as u64 * self.rx_burst_longest_ns()
            + self.client_scan_ns
            + CONTROL_PER_SERVICE as u64 * self.control_poll_ns
    }

    /// Longest non-preemptive handler run for a message of `packets` packets at
    /// granularity `k`: the per-message cost is conservatively put in the same run.
    pub fn handler_chunk(&self, packets: u32, k: u32) -> Nanos {
        self.per_message_ns + u64::from(packets.min(k)) * self.per_packet_ns
    }

    /// Longest run of non-real-time work between two preemption points on a core (a
    /// best-effort run): it has no deadline, so it can block any real-time handler. The
    /// service phase and TX stages are charged apart ([`ResourceModel::cpu_overheads`]).
    pub fn background_chunk(&self) -> Nanos {
        self.best_effort_run_ns
    }

    /// Time to send `bytes` wire bytes at `share_ppm` millionths of the line rate,
    /// rounded up to the nanosecond.
    pub fn link_ns(&self, bytes: u64, share_ppm: u32) -> Nanos {
        let num = u128::from(bytes) * 8 * 1_000_000_000 * 1_000_000;
        let den = u128::from(self.link_rate_bps) * u128::from(share_ppm);
        u64::try_from(num.div_ceil(den.max(1))).unwrap_or(Nanos::MAX)
    }
}

/// What the host offers: cores, TX queues and the admission policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceModel {
    /// Calibrated costs.
    pub cost: CostModel,
    /// Number of polling cores that run handlers (indices `0..cores`).
    pub cores: u16,
    /// One entry per NIC TX queue: the share of the line rate, in millionths, at which
    /// the link scheduler paces that queue. The sum must not exceed 1,000,000.
    pub tx_queue_share_ppm: Vec<u32>,
    /// Share of every core and every queue, in millionths, that real-time channels may
    /// never claim, so best-effort traffic is not starved.
    pub best_effort_reserve_ppm: u32,
    /// Preemption granularity: packets a handler processes between preemption points.
    pub granularity: u32,
    /// Largest `mmax` a channel may ask for, in bytes.
    pub max_message: u32,
    /// Whether early real-time messages are processed ahead of time when the core is
    /// otherwise idle. If so, any handler's chunk may block any deadline.
    pub work_conserving: bool,
    /// Least time between two service phases of a busy core, ns: the cores'
    /// `dataplane::core::CoreConfig::service_interval` (default
    /// `dataplane::core::SERVICE_INTERVAL_NS`).
    pub service_interval_ns: Nanos,
    /// TX stage window, ns: the cores' `dataplane::core::CoreConfig::tx_window` (default
    /// `dataplane::core::TX_WINDOW_NS`).
    pub tx_window_ns: Nanos,
}

impl Default for ResourceModel {
    fn default() -> Self {
        Self {
            cost: CostModel::default(),
            cores: 1,
            tx_queue_share_ppm: vec![1_000_000],
            best_effort_reserve_ppm: 50_000,
            granularity: 4,
            max_message: 65_536,
            work_conserving: false,
            service_interval_ns: SERVICE_INTERVAL_NS,
            tx_window_ns: TX_WINDOW_NS,
        }
    }
}

/// A resource model that cannot describe a host.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize)]
pub enum ModelError {
    /// `cores` is 0.
    #[error("cores: at least one core is needed")]
    NoCores,
    /// `tx_queue_share_ppm` is empty or longer than `u16::MAX`.
    #[error("tx_queue_share_ppm: between 1 and 65535 TX queues are needed, got {0}")]
    TxQueueCount(usize),
    /// A TX queue has no share of the link.
    #[error("tx_queue_share_ppm[{0}]: a queue's share must be greater than 0")]
    ZeroShare(u16),
    /// The shares add up to more than the link.
    #[error("tx_queue_share_ppm: shares add up to {0} ppm, more than the link (1000000)")]
    SharesExceedLink(u64),
    /// The reserve is the whole resource or more.
    #[error(
        "best_effort_reserve_ppm: {0} leaves nothing for real-time channels (must be < 1000000)"
    )]
    ReserveTooLarge(u32),
    /// `granularity` is 0.
    #[error("granularity: must be at least one packet")]
    ZeroGranularity,
    /// `cost.link_rate_bps` is 0.
    #[error("cost.link_rate_bps: must be greater than 0")]
    ZeroLinkRate,
    /// The MTU leaves no room for message bytes.
    #[error(
        "cost.mtu: {mtu} leaves no payload after {overhead} bytes of IPv4, UDP and rtchan headers"
    )]
    MtuTooSmall {
        /// The configured MTU.
        mtu: u32,
        /// Header bytes inside the MTU.
        overhead: u32,
    },
    /// `max_message` is 0 or absurdly large.
    #[error("max_message: must be between 1 and {MAX_MESSAGE_LIMIT}, got {0}")]
    MaxMessage(u32),
    /// The service phase the costs describe does not fit in the interval the core runs it at.
    #[error(
        "cost.rx_burst_ns, cost.client_scan_ns and cost.control_poll_ns (and 32 x \
         cost.capture_frame_ns with [capture] enabled): the service phase they add up to \
         ({phase} ns) must be shorter than policy.service_interval ({interval} ns)"
    )]
    ServicePhaseTooLong {
        /// The service phase, ns.
        phase: Nanos,
        /// The service interval, ns.
        interval: Nanos,
    },
    /// A best-effort run is a handler run of up to `granularity` packets, so it cannot be
    /// shorter than one of the costs that charge such a run.
    #[error(
        "cost.best_effort_run_ns: {run} ns is shorter than one handler run it bounds: \
         cost.per_message_ns + policy.granularity x cost.per_packet_ns = {chunk} ns"
    )]
    BestEffortRunTooShort {
        /// The configured best-effort run, ns.
        run: Nanos,
        /// `per_message_ns + granularity · per_packet_ns`, ns.
        chunk: Nanos,
    },
    /// A TX stage as long as the TX window would leave the core nothing else.
    #[error("cost.tx_stage_ns: {stage} ns must be shorter than policy.tx_window ({window} ns)")]
    TxStageTooLong {
        /// The TX stage, ns.
        stage: Nanos,
        /// The TX window, ns.
        window: Nanos,
    },
}

impl ResourceModel {
    /// The host of `docs/admission.md`'s worked example: one core and one TX queue at full
    /// share with [`CostModel::worked_example`]'s costs, a 20 µs service interval and a 4 µs
    /// TX window (what those costs fit), the default reserve and granularity.
    pub fn worked_example() -> Self {
        Self {
            cost: CostModel::worked_example(),
            service_interval_ns: 20_000,
            tx_window_ns: 4_000,
            ..Self::default()
        }
    }

    /// A sending host's best-effort run is one handler run of up to `granularity` packets at
    /// the sending costs, so `best_effort_run_ns` must cover `per_message_ns + granularity ·
    /// per_packet_ns`. (Not part of [`Self::validate`]: a receiving host's model carries the
    /// receive path's costs, while its best-effort runs are still sending runs.)
    pub fn validate_best_effort_run(&self) -> Result<(), ModelError> {
        let chunk = self.cost.handler_chunk(self.granularity, self.granularity);
        if self.cost.best_effort_run_ns < chunk {
            return Err(ModelError::BestEffortRunTooShort {
                run: self.cost.best_effort_run_ns,
                chunk,
            });
        }
        Ok(())
    }

    /// Checks that the model describes a usable host.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.cores == 0 {
            return Err(ModelError::NoCores);
        }
        let queues = self.tx_queue_share_ppm.len();
        if queues == 0 || queues > usize::from(u16::MAX) {
            return Err(ModelError::TxQueueCount(queues));
        }
        if let Some(q) = self.tx_queue_share_ppm.iter().position(|&s| s == 0) {
            return Err(ModelError::ZeroShare(q as u16));
        }
        let total: u64 = self.tx_queue_share_ppm.iter().map(|&s| u64::from(s)).sum();
        if total > 1_000_000 {
            return Err(ModelError::SharesExceedLink(total));
        }
        if self.best_effort_reserve_ppm >= 1_000_000 {
            return Err(ModelError::ReserveTooLarge(self.best_effort_reserve_ppm));
        }
        if self.granularity == 0 {
            return Err(ModelError::ZeroGranularity);
        }
        if self.cost.link_rate_bps == 0 {
            return Err(ModelError::ZeroLinkRate);
        }
        if self.cost.payload_per_packet() == 0 {
            return Err(ModelError::MtuTooSmall {
                mtu: self.cost.mtu,
                overhead: IP_PAYLOAD_OVERHEAD,
            });
        }
        if self.max_message == 0 || self.max_message > MAX_MESSAGE_LIMIT {
            return Err(ModelError::MaxMessage(self.max_message));
        }
        let phase = self.cost.service_phase_ns();
        if phase >= self.service_interval_ns {
            return Err(ModelError::ServicePhaseTooLong {
                phase,
                interval: self.service_interval_ns,
            });
        }
        if self.cost.tx_stage_ns >= self.tx_window_ns {
            return Err(ModelError::TxStageTooLong {
                stage: self.cost.tx_stage_ns,
                window: self.tx_window_ns,
            });
        }
        Ok(())
    }

    /// What every core runs besides handlers, as sporadic interference the CPU demand test
    /// adds to every core's channels (demand, not check points): the service phase at most once per
    /// [`Self::service_interval_ns`], and a TX stage at most once per
    /// [`Self::tx_window_ns`] by its window (stages due by packet count are in
    /// [`CostModel::cpu_cost`]). Each may run back to back with one already running when a
    /// busy window starts, so each task's deadline is its period less its cost and the cost is
    /// also in [`ResourceModel::cpu_blocking_extra`]: `(⌊(t + C)/T⌋ + 1)·C` in all.
    pub fn cpu_overheads(&self) -> [Task; 2] {
        let svc = self.cost.service_phase_ns();
        let stage = self.cost.tx_stage_ns;
        [
            Task {
                cost: svc,
                period: self.service_interval_ns,
                deadline: self.service_interval_ns.saturating_sub(svc),
            },
            Task {
                cost: stage,
                period: self.tx_window_ns,
                deadline: self.tx_window_ns.saturating_sub(stage),
            },
        ]
        .map(|t| Task {
            // A zero cost is no task; keep the fields valid for the demand test.
            cost: t.cost,
            period: t.period,
            deadline: t.deadline.max(1),
        })
    }

    /// CPU blocking added to the longest chunk with a later deadline: one service phase and
    /// one TX stage (the first of each in a busy window, see [`Self::cpu_overheads`]), and,
    /// with a best-effort reserve, the one best-effort run the reserve may lift ahead of
    /// current work in a busy window (`dataplane::sched`), on top of the chunk that was
    /// running when the window began.
    pub fn cpu_blocking_extra(&self) -> Nanos {
        let lifted = if self.best_effort_reserve_ppm > 0 {
            self.cost.best_effort_run_ns
        } else {
            0
        };
        self.cost.service_phase_ns() + self.cost.tx_stage_longest_ns() + lifted
    }

    /// Longest stretch between two preemption points of a core, where no TX stage can run:
    /// a handler run of `granularity` packets (its message's cost included), a best-effort
    /// run, or the service phase from its last RX burst on (at most the whole phase),
    /// followed by a TX stage.
    pub fn longest_stretch(&self) -> Nanos {
        let run = self.cost.handler_chunk(self.granularity, self.granularity);
        run.max(self.cost.best_effort_run_ns)
            .max(self.cost.service_phase_ns())
            + self.cost.tx_stage_longest_ns()
    }

    /// The batch window: how long a packet written by a run may wait in the link scheduler
    /// before a TX stage looks at it. A stage is due at the first preemption point
    /// [`Self::tx_window_ns`] after the previous one, and the points are at most
    /// [`Self::longest_stretch`] apart.
    pub fn batch_window_ns(&self) -> Nanos {
        self.tx_window_ns + self.longest_stretch()
    }

    /// Number of TX queues.
    pub fn tx_queues(&self) -> u16 {
        self.tx_queue_share_ppm.len() as u16
    }

    /// Frames the port may hold beyond the link scheduler (its in-flight limit): enough that
    /// the link does not idle between two TX stages while packets wait (the batch window at
    /// the fastest queue's paced rate, plus the frame that may not fit), and at least two, or
    /// one handler run's worth (`granularity`), so the next frame is ready when one finishes.
    pub fn link_in_flight_frames(&self) -> u32 {
        let frame = self.cost.max_packet_wire_bytes();
        // At the fastest queue's paced rate, which covers every queue.
        let share = self
            .tx_queue_share_ppm
            .iter()
            .copied()
            .max()
            .unwrap_or(1_000_000);
        let window_bytes = u128::from(self.batch_window_ns())
            * u128::from(self.cost.link_rate_bps)
            * u128::from(share)
            / 8_000_000_000_000_000;
        let cover = u32::try_from((window_bytes.div_ceil(u128::from(frame.max(1)))) + 1)
            .unwrap_or(u32::MAX);
        self.granularity.max(2).max(cover)
    }

    /// The in-flight limit in wire bytes: [`Self::link_in_flight_frames`] maximum-size frames.
    /// The daemon configures every TX queue's link scheduler with exactly this.
    pub fn link_in_flight_bytes(&self) -> u64 {
        u64::from(self.link_in_flight_frames()) * self.cost.max_packet_wire_bytes()
    }

    /// The longest a client-fed channel's message can wait, after the client published it,
    /// before the core's client scan sees it: the scan is in the service phase, due
    /// [`Self::service_interval_ns`] after the previous one, then waiting for the
    /// iteration under way (every run and TX stage it may hold, at their bounds) and for the
    /// phase's own RX burst before it. The daemon admits such a
    /// channel with this much less of its host bound and adds it back to the deadlines it
    /// configures: release jitter, which EDF's demand test charges exactly that way.
    pub fn client_release_jitter(&self) -> Nanos {
        use dataplane::core::RUNS_PER_ITERATION;
        let c = &self.cost;
        let run = c
            .best_effort_run_ns
            .max(c.handler_chunk(self.granularity, self.granularity));
        // The scan is in the service phase: due a service interval after the last one, it
        // waits for the iteration under way (its runs, a TX stage after each) and runs last
        // in its phase.
        self.service_interval_ns
            + RUNS_PER_ITERATION as Nanos * (run + c.tx_stage_longest_ns())
            + c.service_phase_ns()
    }

    /// The link's blocking on TX queue `txq`: a packet that becomes the most urgent can find
    /// the port holding the whole in-flight limit, which it cannot overtake; it may have
    /// waited the batch window in the link scheduler before a TX stage saw it (a release
    /// jitter, which in the demand test is the same as that much more blocking); and with a
    /// reserve, one best-effort frame may be lifted ahead of it (`dataplane::link`).
    pub fn link_blocking(&self, txq: u16) -> Nanos {
        let share = self.tx_queue_share_ppm[usize::from(txq)];
        let lifted = if self.best_effort_reserve_ppm > 0 {
            self.cost.max_packet_wire_bytes()
        } else {
            0
        };
        self.cost
            .link_ns(self.link_in_flight_bytes() + lifted, share)
            + self.batch_window_ns()
    }
}
