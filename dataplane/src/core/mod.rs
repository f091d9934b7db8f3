//! The polling core: one pinned thread's loop over RX, control, the scheduler, the link
//! scheduler and TX, staged like a DPDK pipeline.
//!
//! # One iteration ([`Core::poll`])
//! 1. **Service phase** (at most once per [`SERVICE_INTERVAL_NS`] while there is work to run,
//!    every iteration when the core is idle): up to [`RX_BURSTS_PER_SERVICE`] RX bursts into
//!    the receive path (each burst's buffers go back to the pool in one
//!    [`Port::free_bulk`]), reassembly maintenance, the client scan ([`Core::scan_clients`]:
//!    up to [`CLIENT_SCAN_PER_ITERATION`] client-fed channels, whose messages come through a
//!    shared-memory ring from another process that cannot ring the doorbell, checked
//!    round-robin and woken like a doorbell slot), then up to [`CONTROL_PER_SERVICE`]
//!    commands from the control thread's ring, each acknowledged once applied. Commands are
//!    only taken here, between runs: a handler never sees its configuration change mid-run.
//! 2. **Preemption points**, up to [`RUNS_PER_ITERATION`] (and [`PACKETS_PER_ITERATION`]
//!    packets): at each, a TX stage if one is due, then up to [`WAKEUPS_PER_POINT`] channels
//!    that received messages are woken (each takes its head message, gets its logical arrival
//!    time and is queued by class), then the scheduler picks and the handler runs: it writes
//!    packets into buffers from the core's stash (refilled [`MAX_BURST`] at a time with
//!    [`Port::alloc_bulk`]) until its next preemption point (k packets, the end of its
//!    message, or the cycle budget); each packet goes to the TX queue's link scheduler.
//! 3. **TX stage**: the link scheduler releases packets in deadline order within the in-flight
//!    limit into the TX batch, and the batch goes to the port in one `tx_burst`. A stage is
//!    due once [`MAX_BURST`] packets were written since the last one (the batch fills) or
//!    [`TX_WINDOW_NS`] passed since it, and at the end of an iteration that found nothing to
//!    run. A written packet therefore waits for its release at most the window plus one
//!    stretch between two points: the *batch window* admission charges on the link.
//!
//! Time inside an iteration is the clock read at its start plus the cycles since, so every
//! phase is counted. Every stretch without a preemption point is bounded by a constant here,
//! and `control::admission` charges each as what it is (docs/admission.md §7): the service
//! phase as a sporadic interference of its summed bounds every [`SERVICE_INTERVAL_NS`], a TX
//! stage per window or per [`MAX_BURST`] packets, one run as blocking.
//!
//! # Nothing on the core allocates, locks or frees
//! After [`Core::new`], the polling thread neither allocates nor frees nor takes a lock,
//! commands included: a command carries everything already built on the control thread (a
//! channel's [`ChannelShared`], a receiver's [`ReceiverState`]); what a command takes off the
//! core (a closed channel's shared state, a closed receiver's state, anything refused) rides
//! back on its acknowledgement and is dropped by the control thread when it takes the ack
//! ([`ControlRing::take_ack`]). Delay and latency samples go into the core's sample rings
//! ([`crate::stats`]), which the control side folds into the histograms. A core polled by its
//! owner thread (tests, benches, tools) is its own control thread, so it folds at the end of
//! each [`Core::poll`] unless told not to ([`Core::set_fold_on_poll`]); a [`RunningCore`]
//! folds on a companion thread every [`crate::stats::FOLD_INTERVAL`] instead.
//!
//! The core is generic over the [`Port`] and takes its clock and cycle meter as arguments, so
//! the whole loop runs in virtual time in tests (the meter's hooks let a virtual CPU charge
//! each phase its modelled cost).

use crate::capture::{CaptureRing, CaptureTap, Direction};
use crate::channel::{ChannelShared, Doorbell, Sender};
use crate::handler::Handler;
use crate::link::{LinkConfig, LinkConfigError, LinkScheduler, LinkStats, ReleaseStop, Released};
use crate::port::{Batch, PacketBuf, Port, MAX_BURST};
use crate::rx::{
    Receiver, ReceiverState, RxOpenError, RxPath, RxPathStats, RxShared, DEFAULT_REASSEMBLY_TIMEOUT,
};
use crate::sched::{Class, CpuScheduler, PolicyError, SchedPolicy};
use crate::slots::Slots;
use crate::spec::{ChannelConfig, ChannelId, SpecError};
use crate::stats::{SampleProducer, SampleSink, SampleSource, FOLD_INTERVAL};
use crate::time::{Clock, CycleMeter, Nanos};
use crate::wire::{wire_bytes, FRAME_OVERHEAD, RTCHAN_UDP_PORT};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// RX bursts per service phase: one burst of 32 frames every [`SERVICE_INTERVAL_NS`] under
/// load (1.6 Mpps of receive per core while it also sends), every iteration when idle. One,
/// because the whole phase runs without a preemption point and admission charges all of it
/// (`RX_BURSTS_PER_SERVICE × rx_burst_ns`) as blocking: a receive-heavy core is idle more.
pub const RX_BURSTS_PER_SERVICE: usize = 1;
/// Control commands per service phase: configuration is rare, and every command slot is
/// charged `control_poll_ns` in every service phase whether a command comes or not.
pub const CONTROL_PER_SERVICE: usize = 1;
/// Default least time between two service phases while there is work to run
/// ([`CoreConfig::service_interval`]), ns: 100 µs. The interval turns RX and control into a
/// sporadic load on the core (at most one phase per interval), which is what admission
/// charges; it also bounds how long a received frame or a command waits on a busy core. The
/// default costs (`control::admission::CostModel`) make a 21.7 µs phase (an RX burst of 32
/// frames at the default `[rx_cost]`, 19.2 µs, is most of it), so 100 µs charges it as 22 %
/// of a busy core; costs calibrated on a slower machine need a longer interval, since the
/// phase must fit in it.
pub const SERVICE_INTERVAL_NS: Nanos = 100_000;
/// Default TX stage window ([`CoreConfig::tx_window`]), ns: a stage is due this long after
/// the previous one while the link scheduler holds packets. At saturation the [`MAX_BURST`] trigger comes first (full
/// bursts); the window serves lighter loads. 4 µs keeps a written packet's wait for its
/// release small against link deadlines, and a stage per window (charged by admission as a
/// sporadic load, `tx_stage_ns` every 4 µs) a small share of the core.
pub const TX_WINDOW_NS: Nanos = 4_000;
/// Wake-ups per preemption point: a wake-up is a ring pop and a queue insert (tens of ns); 64
/// bounds the step to a few microseconds while draining a mass wake-up in a few steps. Wake-ups
/// are taken at every preemption point, so a new message waits at most one handler run.
pub const WAKEUPS_PER_POINT: usize = 64;
/// Client-fed channels whose rings the core checks per iteration: a check is one load of the
/// ring's tail line (tens of ns when the client just wrote it, a few when not), so 64 bound the
/// scan to a few microseconds (charged in admission as `cost.client_scan_ns`, in the service
/// phase) and a core with at most 64 client-fed channels sees each one every iteration.
pub const CLIENT_SCAN_PER_ITERATION: usize = 64;
/// Handler runs per iteration: with [`PACKETS_PER_ITERATION`] it keeps an iteration's fixed
/// costs (a clock read, the service check, the publish check) amortised over many packets.
pub const RUNS_PER_ITERATION: usize = 64;
/// Packets written per iteration, at most (the last run may add up to k − 1 more): 256
/// packets, so the publish check and the service gate are looked at regularly.
pub const PACKETS_PER_ITERATION: usize = 256;
/// Commands the control ring holds.
pub const CONTROL_RING_DEPTH: usize = 256;

/// How a core is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// Most channels (handlers) the core runs; sizes every table up front.
    pub max_channels: u32,
    /// The CPU scheduling policy.
    pub sched: SchedPolicy,
    /// The link scheduler of the core's TX queue.
    pub link: LinkConfig,
    /// The TX queue this core owns.
    pub tx_queue: u16,
    /// The RX queue this core polls.
    pub rx_queue: u16,
    /// UDP port of rtchan traffic.
    pub udp_port: u16,
    /// How long incomplete messages wait for fragments.
    pub reassembly_timeout: Nanos,
    /// Least time between two service phases while there is work to run, ns (see
    /// [`SERVICE_INTERVAL_NS`]); admission's `ResourceModel::service_interval_ns` must equal it.
    pub service_interval: Nanos,
    /// TX stage window, ns (see [`TX_WINDOW_NS`]); admission's `ResourceModel::tx_window_ns`
    /// must equal it.
    pub tx_window: Nanos,
}

impl CoreConfig {
    /// The same core with QoS off: FIFO scheduling on the CPU and the link, no enforcement.
    pub fn fifo_baseline(mut self) -> Self {
        self.sched.fifo = true;
        self.link.fifo = true;
        self
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_channels: 1024,
            sched: SchedPolicy::default(),
            link: LinkConfig::default(),
            tx_queue: 0,
            rx_queue: 0,
            udp_port: RTCHAN_UDP_PORT,
            reassembly_timeout: DEFAULT_REASSEMBLY_TIMEOUT,
            service_interval: SERVICE_INTERVAL_NS,
            tx_window: TX_WINDOW_NS,
        }
    }
}

/// A problem building a core or applying a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The scheduling policy is invalid.
    #[error("scheduling policy: {0}")]
    Policy(#[from] PolicyError),
    /// The link configuration is invalid.
    #[error("link scheduler: {0}")]
    Link(#[from] LinkConfigError),
    /// The channel's configuration is invalid.
    #[error("channel: {0}")]
    Spec(#[from] SpecError),
    /// Every handler slot is in use.
    #[error("core is full: all {0} channel slots are in use")]
    Full(u32),
    /// The channel id is already open on this core.
    #[error("channel {0} is already open")]
    Duplicate(ChannelId),
    /// No such channel.
    #[error("channel {0} is not open")]
    NoSuchChannel(ChannelId),
    /// The port's TX queue does not exist.
    #[error("TX queue {queue} does not exist (the port has {count})")]
    NoSuchQueue {
        /// Requested queue.
        queue: u16,
        /// Queues the port has.
        count: u16,
    },
    /// The service interval or the TX window is zero.
    #[error("service interval and TX window: each must be at least 1 ns")]
    ZeroInterval,
    /// The port's frames are too small to carry a header and one payload byte.
    #[error("port frames of {0} bytes cannot carry rtchan's {FRAME_OVERHEAD}-byte headers")]
    FrameTooSmall(usize),
    /// A client-fed channel's shared-memory ring could not be created.
    #[error("shared-memory ring: {0}")]
    Ring(String),
    /// The core already has as many client-fed channels as one client scan checks: another
    /// would wait more than the release jitter it is admitted with.
    #[error("the core already serves {0} client-fed channels, as many as its client scan checks each service phase; open it on another core")]
    ClientsFull(usize),
    /// The core stopped before applying the command.
    #[error("the polling core is not running")]
    NotRunning,
}

/// A change the control thread asks a core to make.
#[derive(Debug)]
pub enum Command {
    /// Start a channel's handler in slot `shared.slot`.
    Open(Arc<ChannelShared>),
    /// Close a channel: finish what is queued (`drain`) or discard it.
    Close {
        /// The channel.
        id: ChannelId,
        /// Drain the queue first.
        drain: bool,
    },
    /// Open the receive side of a channel with its state built on the control thread
    /// ([`RxPath::prepare`]).
    OpenReceiver(ReceiverState),
    /// Close the receive side of a channel.
    CloseReceiver(ChannelId),
    /// Replace the scheduling policy.
    SetPolicy(SchedPolicy),
    /// Arm captures with this ring (`Some`), or disarm (`None`); the ring the core held comes
    /// back on the acknowledgement ([`crate::capture`]).
    Capture(Option<Arc<CaptureRing>>),
}

/// What a command took off the core, handed back on its acknowledgement so that the control
/// thread, not the core, drops it (a receiver's state is over a thousand heap blocks).
#[derive(Debug)]
pub enum Retired {
    /// A closed (or refused) channel's shared state.
    Channel(Arc<ChannelShared>),
    /// A closed (or refused) receiver's state.
    Receiver(ReceiverState),
    /// The capture ring a disarmed (or re-armed) core held.
    Capture(Arc<CaptureRing>),
}

/// One acknowledgement: the command's sequence number, its outcome, what it hands back.
#[derive(Debug)]
struct Ack {
    seq: u64,
    result: Result<(), CoreError>,
    retired: Option<Retired>,
}

/// The lock-free rings between the control thread and one core.
///
/// The acknowledgement ring has room for one ack per command the ring holds plus one per
/// channel slot (a draining close acknowledges later), and the core takes a command only while
/// the acks it owes fit: so an ack push never fails, and nothing the core hands back is ever
/// dropped on the core.
#[derive(Debug)]
pub struct ControlRing {
    commands: ArrayQueue<(u64, Command)>,
    acks: ArrayQueue<Ack>,
    next_seq: AtomicU64,
}

impl ControlRing {
    /// Rings of `depth` commands, and acknowledgements for them and for `channels` draining
    /// closes.
    pub fn new(depth: usize, channels: usize) -> Arc<Self> {
        Arc::new(Self {
            commands: ArrayQueue::new(depth),
            acks: ArrayQueue::new(depth + channels.max(1)),
            next_seq: AtomicU64::new(1),
        })
    }
    /// Posts a command; returns its sequence number, or the command back if the ring is full.
    pub fn post(&self, cmd: Command) -> Result<u64, Command> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.commands
            .push((seq, cmd))
            .map(|_| seq)
            .map_err(|(_, c)| c)
    }
    /// Takes one acknowledgement, dropping what it hands back here, on the calling (control)
    /// thread.
    pub fn take_ack(&self) -> Option<(u64, Result<(), CoreError>)> {
        self.take_ack_retired().map(|(seq, r, _)| (seq, r))
    }

    /// Takes one acknowledgement with what it hands back (for the caller to drop or keep).
    pub fn take_ack_retired(&self) -> Option<(u64, Result<(), CoreError>, Option<Retired>)> {
        self.acks.pop().map(|a| (a.seq, a.result, a.retired))
    }
}

/// Core-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Loop iterations.
    pub iterations: u64,
    /// Handler runs.
    pub runs: u64,
    /// Runs of a different handler than the previous run (context switches).
    pub switches: u64,
    /// Packets written by handlers.
    pub packets: u64,
    /// Runs cut short because the port had no buffer.
    pub alloc_failures: u64,
    /// Runs not started because the link scheduler was full.
    pub link_backpressure: u64,
    /// Runs over the cycle budget.
    pub budget_overruns: u64,
    /// Port TX errors.
    pub tx_errors: u64,
    /// Port RX errors.
    pub rx_errors: u64,
    /// Packets handed to the port.
    pub tx_packets: u64,
    /// `tx_burst` calls.
    pub tx_bursts: u64,
    /// Acknowledgements that found the ack ring full (impossible while the control side only
    /// posts through [`ControlRing::post`]; counted so that it would show).
    pub ack_overflows: u64,
    /// How `tx_burst` calls closed: full, or below [`MAX_BURST`] and why.
    pub bursts: BurstCloses,
}

/// How the core's `tx_burst` calls closed. Every burst is counted once: full ([`MAX_BURST`]
/// packets), or short under the first reason that applies — the link scheduler stopped
/// releasing (in-flight limit, pacing, early packets held), else what made the stage due
/// (the window expired, or the iteration ended with nothing to run or the link scheduler
/// full) with fewer packets written than a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BurstCloses {
    /// Bursts of [`MAX_BURST`] packets.
    pub full: u64,
    /// Short: the TX window passed since the last stage.
    pub window: u64,
    /// Short: the iteration found nothing to run (or the link scheduler was full).
    pub iteration_end: u64,
    /// Short: the port's in-flight bytes reached the in-flight limit.
    pub in_flight_limit: u64,
    /// Short: the modelled link was full (pacing at the link rate).
    pub pacing: u64,
    /// Short: only early packets were left (held until current).
    pub held_early: u64,
    /// Short although [`MAX_BURST`] packets were written since the last stage (some were
    /// dropped late, or an earlier partial burst was still held).
    pub other: u64,
}

/// What made a TX stage due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StageTrigger {
    /// [`MAX_BURST`] packets written since the last stage.
    Batch,
    /// The TX window passed.
    Window,
    /// The iteration found nothing to run, or the link scheduler full.
    IterationEnd,
}

/// What one iteration did, for the runner's idle policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Packets received.
    pub rx: usize,
    /// Packets written by handlers.
    pub written: usize,
    /// Packets handed to the port.
    pub tx: usize,
    /// Commands applied.
    pub commands: usize,
}

impl Progress {
    /// True when the iteration did nothing.
    pub fn is_idle(&self) -> bool {
        self.rx == 0 && self.written == 0 && self.tx == 0 && self.commands == 0
    }
}

/// One packet as a handler wrote it, for the optional trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// The channel.
    pub channel: ChannelId,
    /// Message sequence number.
    pub seq: u32,
    /// Fragment index.
    pub frag: u16,
    /// When the handler run that wrote it started.
    pub run_start: Nanos,
    /// The class the run was in.
    pub class: Class,
}

/// One polling core.
pub struct Core<P: Port> {
    trace: Option<Vec<TraceEntry>>,
    cfg: CoreConfig,
    port: P,
    payload_per_packet: u32,
    sched: CpuScheduler,
    link: LinkScheduler<P::Buf>,
    handlers: Slots<Handler>,
    generations: Vec<u32>,
    pending_close_ack: Vec<Option<u64>>,
    doorbell: Arc<Doorbell>,
    control: Arc<ControlRing>,
    /// Acknowledgements owed for draining closes (reserved room in the ack ring).
    owed_acks: usize,
    tx_batch: Batch<P::Buf>,
    /// TX buffers allocated ahead, refilled a burst at a time.
    tx_stash: Batch<P::Buf>,
    /// When the last TX stage ran, and packets written since.
    last_stage: Nanos,
    since_stage: usize,
    /// When the next service phase is due while there is work.
    next_service: Nanos,
    /// The last iteration found nothing to run.
    idle: bool,
    rx: RxPath,
    /// Delay samples to the control side (the receive path holds the latency ring's producer).
    samples: SampleProducer,
    fold_on_poll: bool,
    /// Delay samples are recorded (off only for benchmarks' ablations).
    delay_samples: bool,
    /// Slots of client-fed channels, and where the next scan starts.
    clients: Vec<u32>,
    client_cursor: usize,
    last_slot: u32,
    stats: CoreStats,
    /// Armed captures: frames sent and received are copied into its ring.
    capture: Option<CaptureTap>,
    /// Busy time, iterations, longest stretch: published each iteration.
    gauges: Arc<crate::stats::CoreGauges>,
}

impl<P: Port> std::fmt::Debug for Core<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<P: Port> Core<P> {
    /// Builds a core over `port` after validating the configuration against it.
    pub fn new(cfg: CoreConfig, port: P) -> Result<Self, CoreError> {
        cfg.sched.validate()?;
        if cfg.service_interval == 0 || cfg.tx_window == 0 {
            return Err(CoreError::ZeroInterval);
        }
        let caps = port.capabilities();
        cfg.link.validate(caps.max_frame)?;
        if cfg.tx_queue >= caps.tx_queues {
            return Err(CoreError::NoSuchQueue {
                queue: cfg.tx_queue,
                count: caps.tx_queues,
            });
        }
        if caps.max_frame <= FRAME_OVERHEAD {
            return Err(CoreError::FrameTooSmall(caps.max_frame));
        }
        let n = cfg.max_channels as usize;
        let sink = SampleSink::new();
        Ok(Self {
            trace: None,
            payload_per_packet: (caps.max_frame - FRAME_OVERHEAD) as u32,
            sched: CpuScheduler::new(n, cfg.sched),
            link: LinkScheduler::new(cfg.link),
            handlers: Slots::new(n),
            generations: vec![0; n],
            pending_close_ack: vec![None; n],
            doorbell: Arc::new(Doorbell::new(n.max(1))),
            control: ControlRing::new(CONTROL_RING_DEPTH, n),
            owed_acks: 0,
            tx_batch: Batch::new(),
            tx_stash: Batch::new(),
            last_stage: 0,
            since_stage: 0,
            next_service: 0,
            idle: true,
            rx: RxPath::with_capacity(
                cfg.udp_port,
                cfg.reassembly_timeout,
                n,
                sink.producer(SampleSource::Latency),
            ),
            samples: sink.producer(SampleSource::Delay),
            fold_on_poll: true,
            delay_samples: true,
            clients: Vec::with_capacity(n),
            client_cursor: 0,
            last_slot: u32::MAX,
            stats: CoreStats::default(),
            capture: None,
            gauges: Arc::default(),
            cfg,
            port,
        })
    }

    /// Payload bytes one packet carries.
    pub fn payload_per_packet(&self) -> u32 {
        self.payload_per_packet
    }

    /// The doorbell senders ring.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }

    /// The control ring.
    pub fn control(&self) -> &Arc<ControlRing> {
        &self.control
    }

    /// The sample sink this core's delay and latency histograms are registered in.
    pub fn sink(&self) -> &Arc<SampleSink> {
        self.samples.sink()
    }

    /// Whether [`Core::poll`] folds the sample rings at its end (default: yes, for a core
    /// whose polling thread is also its control thread; off when another thread folds).
    pub fn set_fold_on_poll(&mut self, on: bool) {
        self.fold_on_poll = on;
    }

    /// Whether released messages' delays go into the sample ring (default: yes). Off only to
    /// measure what recording costs (`dpdk-bench --ablation`): the channels' delay
    /// histograms then stay empty.
    pub fn set_delay_samples(&mut self, on: bool) {
        self.delay_samples = on;
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// What the core publishes while it runs (busy time, iterations, longest stretch).
    pub fn gauges(&self) -> &Arc<crate::stats::CoreGauges> {
        &self.gauges
    }

    /// Core-wide counters.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// The link scheduler's counters.
    pub fn link_stats(&self) -> LinkStats {
        self.link.stats()
    }

    /// The receive path's counters.
    pub fn rx_stats(&self) -> RxPathStats {
        self.rx.stats()
    }

    /// The receive path's reject counters, shared with the control side.
    pub fn rx_rejects(&self) -> Arc<crate::rx::RxRejects> {
        self.rx.rejects().clone()
    }

    /// The port.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// Handlers queued per class: (current, best-effort, early).
    pub fn queued(&self) -> (usize, usize, usize) {
        self.sched.queued()
    }

    /// Packets held by the link scheduler and not yet handed to the port.
    pub fn link_backlog(&self) -> usize {
        self.link.len() + self.tx_batch.len()
    }

    /// Records the first `capacity` packets handlers write, in order (a debugging aid and
    /// how tests observe scheduling order). Allocates the whole trace now.
    pub fn enable_trace(&mut self, capacity: usize) {
        self.trace = Some(Vec::with_capacity(capacity));
    }

    /// The trace recorded so far.
    pub fn trace(&self) -> &[TraceEntry] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Opens a channel directly (the core is not running yet, or in virtual-time tests):
    /// validates, starts its handler, and returns the sender.
    pub fn open(&mut self, config: ChannelConfig) -> Result<Sender, CoreError> {
        let slot = self
            .handlers
            .free_slot()
            .ok_or(CoreError::Full(self.cfg.max_channels))?;
        let shared = self.prepare(config, slot)?;
        self.start_handler(shared.clone()).map_err(|(e, _)| e)?;
        Sender::new(shared).map_err(|e| CoreError::Ring(e.to_string()))
    }

    /// Opens a client-fed channel directly over `region` (its submit ring; a heap region in
    /// virtual-time tests, a memfd in a daemon): validates and starts its handler. `release_jitter`:
    /// see [`ChannelShared::new_client`].
    pub fn open_ring(
        &mut self,
        config: ChannelConfig,
        region: Arc<crate::shm::Region>,
        release_jitter: Nanos,
    ) -> Result<Arc<ChannelShared>, CoreError> {
        config.validate(self.payload_per_packet)?;
        let slot = self
            .handlers
            .free_slot()
            .ok_or(CoreError::Full(self.cfg.max_channels))?;
        let shared = ChannelShared::with_ring(
            config,
            slot,
            self.doorbell.clone(),
            self.sink(),
            region,
            release_jitter,
        )
        .map_err(|e| CoreError::Ring(e.to_string()))?;
        self.start_handler(shared.clone()).map_err(|(e, _)| e)?;
        Ok(shared)
    }

    /// Validates a channel and builds its shared state for `slot` (control side; allocates).
    pub fn prepare(
        &self,
        config: ChannelConfig,
        slot: u32,
    ) -> Result<Arc<ChannelShared>, CoreError> {
        config.validate(self.payload_per_packet)?;
        if config.txq != self.cfg.tx_queue {
            return Err(CoreError::NoSuchQueue {
                queue: config.txq,
                count: self.port.capabilities().tx_queues,
            });
        }
        ChannelShared::new(config, slot, self.doorbell.clone(), self.sink())
            .map_err(|e| CoreError::Ring(e.to_string()))
    }

    /// Opens the receive side of a channel directly; returns the application's handle.
    ///
    /// # Panics
    /// If the channel already has a receiver here, or all `max_channels` receivers are open
    /// (the control side checks both before posting [`Command::OpenReceiver`]).
    pub fn open_receiver(&mut self, id: ChannelId, mmax: u32, ring: u32) -> Receiver {
        let reassembly = ring.clamp(1, 64);
        let shared = RxShared::new(id, mmax, ring, reassembly, self.sink());
        if let Err(e) = self.rx.open(RxPath::prepare(shared.clone(), reassembly)) {
            panic!("cannot open receiver {id}: {e:?}");
        }
        Receiver::new(shared)
    }

    /// Starts a handler; on refusal hands the shared state back (it is not dropped here).
    #[allow(clippy::result_large_err)]
    fn start_handler(
        &mut self,
        shared: Arc<ChannelShared>,
    ) -> Result<(), (CoreError, Arc<ChannelShared>)> {
        let id = shared.config.id;
        let slot = shared.slot;
        if self.handlers.contains(id) {
            return Err((CoreError::Duplicate(id), shared));
        }
        if !self.handlers.is_free(slot) {
            return Err((CoreError::Full(self.cfg.max_channels), shared));
        }
        if shared.is_client() && self.clients.len() >= CLIENT_SCAN_PER_ITERATION {
            return Err((CoreError::ClientsFull(CLIENT_SCAN_PER_ITERATION), shared));
        }
        let generation = self.generations[slot as usize].wrapping_add(1);
        self.generations[slot as usize] = generation;
        shared.arm();
        if shared.is_client() {
            self.clients.push(slot);
        }
        let mut h = Handler::new(shared, generation, self.payload_per_packet);
        h.enforce = !self.cfg.sched.fifo;
        self.handlers.insert(id, slot, h);
        // Messages may already wait (submitted before the open was applied).
        let _ = self.doorbell.push(slot);
        Ok(())
    }

    /// Closes a channel: returns `Ok(Some(shared))` when done now (for the ack to hand back),
    /// `Ok(None)` when draining.
    fn close(
        &mut self,
        id: ChannelId,
        drain: bool,
    ) -> Result<Option<Arc<ChannelShared>>, CoreError> {
        let slot = self
            .handlers
            .slot_of(id)
            .ok_or(CoreError::NoSuchChannel(id))?;
        let h = self.handlers.get_mut(slot).expect("indexed handler");
        h.shared.close();
        if drain && (h.current.is_some() || h.shared.queued() > 0) {
            h.draining = true;
            if h.current.is_none() && !self.sched.is_queued(slot) {
                // Idle with messages racing in: wake it so the drain makes progress.
                let _ = self.doorbell.push(slot);
            }
            return Ok(None);
        }
        Ok(self.finish_close(slot))
    }

    /// Ends a channel's handler. A draining close is acknowledged here, handing the shared
    /// state back; otherwise the shared state is returned for the caller's ack.
    fn finish_close(&mut self, slot: u32) -> Option<Arc<ChannelShared>> {
        self.sched.remove(slot);
        if let Some(i) = self.clients.iter().position(|&s| s == slot) {
            self.clients.swap_remove(i);
        }
        // Packets still in the link scheduler go out; their stats go nowhere (generation).
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        let mut h = self.handlers.remove(slot)?;
        let n = h.discard();
        h.shared.stats.dropped_on_close.add(n);
        let shared = h.shared;
        match self.pending_close_ack[slot as usize].take() {
            Some(seq) => {
                self.owed_acks -= 1;
                self.ack(seq, Ok(()), Some(Retired::Channel(shared)));
                None
            }
            None => Some(shared),
        }
    }

    /// Pushes an acknowledgement (room is reserved before a command is taken).
    fn ack(&mut self, seq: u64, result: Result<(), CoreError>, retired: Option<Retired>) {
        let a = Ack {
            seq,
            result,
            retired,
        };
        if let Err(a) = self.control.acks.push(a) {
            self.stats.ack_overflows += 1;
            drop(a); // unreachable while room is reserved (see ControlRing)
        }
    }

    /// Whether the ack ring has room for one more command's acknowledgement.
    fn ack_room(&self) -> bool {
        self.control.acks.len() + self.owed_acks < self.control.acks.capacity()
    }

    fn apply(&mut self, seq: u64, cmd: Command) {
        let (result, retired) = match cmd {
            Command::Open(shared) => match self.start_handler(shared) {
                Ok(()) => (Ok(()), None),
                Err((e, shared)) => (Err(e), Some(Retired::Channel(shared))),
            },
            Command::Close { id, drain } => match self.close(id, drain) {
                Ok(Some(shared)) => (Ok(()), Some(Retired::Channel(shared))),
                Ok(None) => {
                    let slot = self.handlers.slot_of(id).expect("draining channel");
                    self.pending_close_ack[slot as usize] = Some(seq);
                    self.owed_acks += 1;
                    return; // acknowledged when drained
                }
                Err(e) => (Err(e), None),
            },
            Command::OpenReceiver(state) => match self.rx.open(state) {
                Ok(()) => (Ok(()), None),
                Err(RxOpenError::Duplicate(state)) => (
                    Err(CoreError::Duplicate(state.id())),
                    Some(Retired::Receiver(state)),
                ),
                Err(RxOpenError::Full(state, n)) => (
                    Err(CoreError::Full(n as u32)),
                    Some(Retired::Receiver(state)),
                ),
            },
            Command::CloseReceiver(id) => match self.rx.close(id) {
                Some(state) => (Ok(()), Some(Retired::Receiver(state))),
                None => (Err(CoreError::NoSuchChannel(id)), None),
            },
            Command::SetPolicy(p) => match p.validate().and(if p.fifo == self.cfg.sched.fifo {
                Ok(())
            } else {
                Err(PolicyError::FifoChange)
            }) {
                Ok(()) => {
                    self.sched.set_policy(p);
                    self.cfg.sched = p;
                    (Ok(()), None)
                }
                Err(e) => (Err(e.into()), None),
            },
            Command::Capture(ring) => {
                let old = std::mem::replace(&mut self.capture, ring.map(CaptureTap::new));
                (Ok(()), old.map(|t| Retired::Capture(t.into_ring())))
            }
        };
        self.ack(seq, result, retired);
    }

    /// Queues a handler that has a message by its class and key.
    #[inline]
    fn enqueue(&mut self, slot: u32, now: Nanos) {
        let h = self.handlers.get(slot).expect("live handler");
        match (&h.spec, &h.current) {
            (Some(_), Some(cur)) => {
                self.sched
                    .enqueue_real_time(slot, cur.logical, cur.cpu_deadline, now)
            }
            (None, Some(_)) => self.sched.enqueue_best_effort(slot),
            (_, None) => {}
        }
    }

    #[inline]
    fn wake(&mut self, slot: u32, now: Nanos) {
        let Some(h) = self.handlers.get_mut(slot) else {
            return; // closed meanwhile
        };
        if h.current.is_some() {
            return; // active: it fetches its next message when this one is done
        }
        if h.fetch(now) {
            self.enqueue(slot, now);
        } else if h.draining {
            let _undrained = self.finish_close(slot); // None: a drain was acknowledged
        }
    }

    /// Time at this point of the iteration: the clock read at its start plus the cycles since,
    /// so every phase's time (RX, control, runs, TX stages) is counted. A clock read costs
    /// tens of nanoseconds, a TSC read a few.
    #[inline(always)]
    fn point_time(anchor: (Nanos, u64), meter: &mut impl CycleMeter) -> Nanos {
        let c = meter.cycles();
        anchor.0 + meter.cycles_to_ns(c.wrapping_sub(anchor.1))
    }

    /// One loop iteration at the clock's time. See the module docs for the stages.
    pub fn poll(&mut self, clock: &dyn Clock, meter: &mut impl CycleMeter) -> Progress {
        self.stats.iterations += 1;
        let mut progress = Progress::default();
        let start = clock.now();
        let anchor = (start, meter.cycles());

        // 1 + 2. The service phase (RX, control), at most once per service interval while
        // there is work to run, every iteration when the core is idle.
        if self.idle || start >= self.next_service {
            self.next_service = start + self.cfg.service_interval;
            self.service(&mut progress, anchor, meter);
        }

        // 3 + 4 + 5. At each preemption point: a TX stage if due, wake-ups, a pick, a run.
        let mut now = Self::point_time(anchor, meter);
        let mut longest = now - start;
        let mut idle = false;
        let mut stalled = false;
        for _ in 0..RUNS_PER_ITERATION {
            let point = now;
            if self.stage_if_due(now, &mut progress, meter) {
                now = Self::point_time(anchor, meter);
            }
            // Two plain loads: an empty pop costs a full fence, and the doorbell is empty at
            // most points. A slot rung meanwhile is taken at the next point, as after a pop.
            if !self.doorbell.is_empty() {
                for _ in 0..WAKEUPS_PER_POINT {
                    let Some(slot) = self.doorbell.pop() else {
                        break;
                    };
                    self.wake(slot, now);
                }
            }
            let k = self.cfg.sched.granularity as usize;
            if self.link.room() < k {
                self.stats.link_backpressure += 1;
                stalled = true;
                break;
            }
            let be_ok = self.link.best_effort_room() >= k;
            let early_ok = self.link.early_room() >= k;
            let Some((slot, class)) = self.sched.pick(now, be_ok, early_ok) else {
                idle = true;
                break;
            };
            // The handler likely to run next: its state is fetched while this one runs.
            let next = self.sched.peek_current();
            if let Some(h) = next.and_then(|n| self.handlers.entry(n)) {
                crate::mem::prefetch_lines::<Option<Handler>, { crate::handler::HOT_LINES }>(h);
            }
            let (written, end) = self.run(slot, class, now, anchor, meter);
            if let Some(h) = next.and_then(|n| self.handlers.get(n)) {
                h.prefetch_shared();
            }
            progress.written += written;
            longest = longest.max(end.saturating_sub(point));
            now = end;
            if progress.written >= PACKETS_PER_ITERATION {
                break;
            }
        }
        // Nothing to run (or the link scheduler full): hand the port what may go now rather
        // than wait for the window, since no run would fill the batch meanwhile.
        if idle || stalled {
            self.stage(now, StageTrigger::IterationEnd, &mut progress, meter);
        }
        self.idle = idle;
        let end = Self::point_time(anchor, meter);
        longest = longest.max(end.saturating_sub(now));
        self.gauges.publish(
            self.stats.iterations,
            start,
            end,
            !progress.is_idle(),
            longest,
        );

        // Owner-polled only (a running core folds on its companion thread): never waits.
        if self.fold_on_poll {
            self.sink().fold(false);
        }
        progress
    }

    /// RX bursts, reassembly maintenance and control commands, each bounded; a TX stage is
    /// checked between bursts so the link is fed while the phase runs.
    fn service(
        &mut self,
        progress: &mut Progress,
        anchor: (Nanos, u64),
        meter: &mut impl CycleMeter,
    ) {
        let mut batch: Batch<P::Buf> = Batch::new();
        for _ in 0..RX_BURSTS_PER_SERVICE {
            let now = Self::point_time(anchor, meter);
            self.stage_if_due(now, progress, meter);
            match self.port.rx_burst(self.cfg.rx_queue, &mut batch) {
                Ok(0) => break,
                Ok(n) => {
                    progress.rx += n;
                    for b in &batch {
                        self.rx.handle(b.data(), now);
                    }
                    if let Some(tap) = self.capture.as_mut() {
                        for b in &batch {
                            tap.offer(b.data(), now, Direction::In);
                        }
                    }
                    // Back to the pool in one call (rte_pktmbuf_free_bulk on DPDK).
                    self.port.free_bulk(&mut batch);
                    meter.on_rx_burst(n);
                    if n < MAX_BURST {
                        break;
                    }
                }
                Err(_) => {
                    self.stats.rx_errors += 1;
                    break;
                }
            }
        }
        let now = Self::point_time(anchor, meter);
        if self.rx.maintenance_due(now) {
            self.rx.maintain_step(now); // bounded: MAINTAIN_SLOTS_PER_STEP
        }
        meter.on_maintain();
        // Client-fed channels' rings (bounded: CLIENT_SCAN_PER_ITERATION).
        self.scan_clients(now);
        meter.on_client_scan(self.clients.len().min(CLIENT_SCAN_PER_ITERATION));
        // Commands are only taken here, between runs: a handler never sees its configuration
        // change mid-run.
        for _ in 0..CONTROL_PER_SERVICE {
            if self.control.commands.is_empty() {
                break; // as for the doorbell: no fence when there is nothing
            }
            if !self.ack_room() {
                break; // the control side has not taken its acks: nothing may be lost
            }
            let Some((seq, cmd)) = self.control.commands.pop() else {
                break;
            };
            self.apply(seq, cmd);
            meter.on_command();
            progress.commands += 1;
        }
    }

    /// Wakes client-fed channels with new messages in their rings: up to
    /// [`CLIENT_SCAN_PER_ITERATION`] of them, round-robin, one tail load each.
    pub fn scan_clients(&mut self, now: Nanos) {
        let n = self.clients.len();
        if n == 0 {
            return;
        }
        for _ in 0..n.min(CLIENT_SCAN_PER_ITERATION) {
            if self.client_cursor >= n {
                self.client_cursor = 0;
            }
            let slot = self.clients[self.client_cursor];
            self.client_cursor += 1;
            let Some(h) = self.handlers.get(slot) else {
                continue;
            };
            // An active handler takes its next message itself when its current one is done.
            if h.current.is_none() && h.shared.client_has_new() {
                self.wake(slot, now);
            }
        }
    }

    /// Runs one handler until its next preemption point; returns packets written and the time
    /// at the end of the run (from `anchor`: a clock reading and the cycle count at it).
    #[inline]
    fn run(
        &mut self,
        slot: u32,
        class: Class,
        now: Nanos,
        anchor: (Nanos, u64),
        meter: &mut impl CycleMeter,
    ) -> (usize, Nanos) {
        let k = self.cfg.sched.granularity;
        let budget = self.cfg.sched.run_budget_cycles;
        let c0 = meter.cycles();
        let mut written = 0u32;
        let h = self.handlers.get_mut(slot).expect("queued handler is live");
        loop {
            if self.tx_stash.is_empty() {
                // One bulk allocation per MAX_BURST packets (rte_pktmbuf_alloc_bulk on DPDK).
                self.port.alloc_bulk(&mut self.tx_stash, MAX_BURST);
            }
            let Some(mut buf) = self.tx_stash.pop() else {
                self.stats.alloc_failures += 1;
                break;
            };
            if buf.capacity() < h.frame_room() {
                // A port whose buffers are smaller than its frames is a backend bug.
                self.stats.alloc_failures += 1;
                break;
            }
            let w = h.write_packet(&mut buf);
            if let Some(t) = self.trace.as_mut().filter(|t| t.len() < t.capacity()) {
                t.push(TraceEntry {
                    channel: h.shared.config.id,
                    seq: w.seq,
                    frag: w.frag_index,
                    run_start: now,
                    class,
                });
            }
            meter.on_packet();
            written += 1;
            if let Err(_buf) = self.link.enqueue(buf, w.meta, now) {
                // Cannot happen: a run starts only with room for k packets. Counted by the
                // link scheduler as `full` if it ever does.
            }
            if w.message_done || written >= k || meter.cycles().wrapping_sub(c0) >= budget {
                break;
            }
        }
        self.since_stage += written as usize;
        let c_end = meter.cycles();
        let used = c_end.wrapping_sub(c0);
        let end = anchor.0 + meter.cycles_to_ns(c_end.wrapping_sub(anchor.1));
        h.shared.stats.handler_cycles.add(used);
        if used > budget {
            h.shared.stats.budget_overruns.inc();
            h.shared.stats.overrun_cycles.add(used - budget);
            self.stats.budget_overruns += 1;
        }
        self.sched.account(class, meter.cycles_to_ns(used));
        self.stats.runs += 1;
        self.stats.packets += written as u64;
        if slot != self.last_slot {
            self.stats.switches += 1;
            self.last_slot = slot;
        }
        // Re-queue at the preemption point with the (possibly new) head message.
        if h.fetch(end) {
            self.enqueue(slot, end);
        } else if h.draining {
            let _undrained = self.finish_close(slot); // None: a drain was acknowledged
        }
        (written as usize, end)
    }

    /// A TX stage when one is due: [`MAX_BURST`] packets were written since the last stage
    /// (the batch would fill), or the TX window passed since it while the link scheduler
    /// holds packets. The window bounds how long a written packet waits for its release; the
    /// burst trigger keeps bursts full at saturation.
    /// Returns whether a stage ran.
    #[inline]
    fn stage_if_due(
        &mut self,
        now: Nanos,
        progress: &mut Progress,
        meter: &mut impl CycleMeter,
    ) -> bool {
        let trigger = if self.since_stage >= MAX_BURST {
            StageTrigger::Batch
        } else if now.saturating_sub(self.last_stage) >= self.cfg.tx_window
            && !(self.link.is_empty() && self.tx_batch.is_empty())
        {
            StageTrigger::Window
        } else {
            return false;
        };
        self.stage(now, trigger, progress, meter);
        true
    }

    /// The TX stage: the link scheduler releases what it may into the TX batch (at most one
    /// batch, within the in-flight limit) and the batch goes to the port in one `tx_burst`.
    #[inline]
    fn stage(
        &mut self,
        now: Nanos,
        trigger: StageTrigger,
        progress: &mut Progress,
        meter: &mut impl CycleMeter,
    ) {
        self.last_stage = now;
        self.since_stage = 0;
        let q = self.cfg.tx_queue;
        let reported = self.port.tx_in_flight_bytes(q);
        let held = self.tx_batch.len();
        if !self.tx_batch.is_full() {
            // Packets in the batch are released but not yet the port's: count them in flight.
            let in_flight = reported.map(|b| {
                b + self
                    .tx_batch
                    .iter()
                    .map(|p| wire_bytes(p.len()))
                    .sum::<u64>()
            });
            let handlers = &mut self.handlers;
            let generations = &self.generations;
            let samples = &mut self.samples;
            let record = self.delay_samples;
            self.link
                .release(now, in_flight, &mut self.tx_batch, |r: Released| {
                    let m = r.meta;
                    if generations.get(m.slot as usize) != Some(&m.generation) {
                        return;
                    }
                    let Some(h) = handlers.get_mut(m.slot) else {
                        return;
                    };
                    let st = &h.shared.stats;
                    if r.late {
                        st.late_packets.inc();
                    }
                    if r.dropped {
                        st.late_dropped.inc();
                        return;
                    }
                    st.packets.inc();
                    st.bytes.add(m.frame_len as u64);
                    if m.last_of_message {
                        st.messages_sent.inc();
                        if record {
                            h.record_delay(samples, m.submit_ts, now);
                        }
                    }
                });
        }
        if self.tx_batch.is_empty() {
            return;
        }
        // Frames this stage released (those held from a partial burst were copied before).
        if let Some(tap) = self.capture.as_mut() {
            for p in &self.tx_batch[held..] {
                tap.offer(p.data(), now, Direction::Out);
            }
        }
        let n = self.tx_batch.len();
        self.count_close(n, trigger);
        match self.port.tx_burst(q, &mut self.tx_batch) {
            Ok(sent) => {
                self.stats.tx_packets += sent as u64;
                self.stats.tx_bursts += 1;
                progress.tx += sent;
            }
            Err(_) => self.stats.tx_errors += 1,
        }
        meter.on_tx_stage(n);
    }

    /// Counts how a burst of `n` packets closed (see [`BurstCloses`]).
    #[inline]
    fn count_close(&mut self, n: usize, trigger: StageTrigger) {
        let c = &mut self.stats.bursts;
        if n >= MAX_BURST {
            c.full += 1;
            return;
        }
        match self.link.last_stop() {
            ReleaseStop::InFlightLimit => c.in_flight_limit += 1,
            ReleaseStop::Pacing => c.pacing += 1,
            ReleaseStop::HeldEarly => c.held_early += 1,
            ReleaseStop::BatchFull | ReleaseStop::Empty => match trigger {
                StageTrigger::Window => c.window += 1,
                StageTrigger::IterationEnd => c.iteration_end += 1,
                StageTrigger::Batch => c.other += 1,
            },
        }
    }

    /// Folds every pending delay and latency sample into the histograms, waiting for readers
    /// if need be. For the control path: call it on a stopped core, or between polls.
    pub fn flush_stats(&mut self) {
        self.sink().fold(true);
    }

    /// When the core next has timed work (an early message becoming current), if any.
    pub fn next_release(&mut self) -> Option<Nanos> {
        self.sched.next_release()
    }
}

/// Gives the calling thread a real-time priority (`SCHED_FIFO` at `priority`, 1–99), so that
/// ordinary threads on the same CPU cannot preempt a polling core. Needs root or
/// `CAP_SYS_NICE`. A busy-polling thread at this priority should sleep when idle
/// ([`IdlePolicy::Sleep`]): the kernel throttles real-time threads that never sleep (by default
/// for 50 ms of every second), which would be a stall far worse than the sleep.
pub fn set_realtime_priority(priority: i32) -> std::io::Result<()> {
    crate::sys::os::sched_fifo(priority)
}

/// Raises the calling thread's CFS priority to nice −20 (root or `CAP_SYS_NICE`): a polling
/// core on a machine that is not isolated then loses far less time to other threads, without
/// the real-time throttling that [`set_realtime_priority`] risks.
pub fn raise_priority() -> std::io::Result<()> {
    crate::sys::os::set_nice(-20)
}

/// Gaps between a polling thread's iterations: how long the OS (or the host) kept it off its
/// CPU. The demo, the evaluation and the veth tests report it beside deadline misses, since a
/// polling core's guarantees assume it keeps its CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollStalls {
    last: Nanos,
    /// Longest gap between two ticks, ns.
    pub longest: Nanos,
    /// Gaps over 1 ms.
    pub over_1ms: u64,
}

impl PollStalls {
    /// Records an iteration starting at `now` (the first tick only sets the origin).
    pub fn tick(&mut self, now: Nanos) {
        if self.last != 0 {
            let gap = now.saturating_sub(self.last);
            self.longest = self.longest.max(gap);
            self.over_1ms += u64::from(gap > 1_000_000);
        }
        self.last = now;
    }
}

impl std::fmt::Display for PollStalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "longest gap between polls {:.3} ms, {} gaps over 1 ms",
            self.longest as f64 / 1e6,
            self.over_1ms
        )
    }
}

/// What an idle polling loop does between iterations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Busy-poll (a dedicated, isolated core).
    Spin,
    /// Yield the CPU (shared machines, tests).
    Yield,
    /// Sleep this long (laptops, CI).
    Sleep(Nanos),
}

/// A core running on its own thread, with a companion thread that folds its sample rings into
/// the histograms every [`FOLD_INTERVAL`] (the core itself never touches a histogram).
#[derive(Debug)]
pub struct RunningCore<P: Port> {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Core<P>>>,
    folder: Option<std::thread::JoinHandle<()>>,
}

impl<P: Port + 'static> RunningCore<P> {
    /// Starts `core` on a new thread, pinned to `cpu` when given (core_affinity), polling with
    /// `clock` and the TSC.
    pub fn spawn(
        mut core: Core<P>,
        cpu: Option<usize>,
        clock: Arc<dyn Clock>,
        idle: IdlePolicy,
    ) -> std::io::Result<Self>
    where
        P::Buf: 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        core.set_fold_on_poll(false);
        let sink = core.sink().clone();
        let stop3 = stop.clone();
        let folder = std::thread::Builder::new()
            .name(format!("rtchan-fold{}", cpu.map_or(-1, |c| c as i64)))
            .spawn(move || {
                while !stop3.load(Ordering::Relaxed) {
                    sink.fold(false);
                    std::thread::sleep(FOLD_INTERVAL);
                }
                sink.fold(true);
            })?;
        let thread = std::thread::Builder::new()
            .name(format!("rtchan-core{}", cpu.map_or(-1, |c| c as i64)))
            .spawn(move || {
                if let Some(id) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                let mut tsc = crate::time::TscMeter;
                while !stop2.load(Ordering::Relaxed) {
                    let p = core.poll(&*clock, &mut tsc);
                    if p.is_idle() {
                        match idle {
                            IdlePolicy::Spin => std::hint::spin_loop(),
                            IdlePolicy::Yield => std::thread::yield_now(),
                            IdlePolicy::Sleep(ns) => {
                                std::thread::sleep(std::time::Duration::from_nanos(ns))
                            }
                        }
                    }
                }
                core
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = folder.join();
                return Err(e);
            }
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            folder: Some(folder),
        })
    }

    /// Stops the loop and returns the core (for final statistics), every sample folded.
    pub fn stop(mut self) -> Core<P> {
        self.stop.store(true, Ordering::Relaxed);
        let mut core = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .expect("polling core panicked");
        if let Some(f) = self.folder.take() {
            let _ = f.join();
        }
        core.set_fold_on_poll(true);
        core.flush_stats();
        core
    }
}

impl<P: Port> Drop for RunningCore<P> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(f) = self.folder.take() {
            let _ = f.join();
        }
    }
}
