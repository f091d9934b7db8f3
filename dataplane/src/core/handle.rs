//! The control side's handle on a polling core: open and close channels on a running core.
//!
//! Each change is a [`Command`] posted on the core's lock-free control ring; the call waits
//! until the core acknowledges it, which the core does only once the change is applied (at its
//! next preemption point; a draining close when the channel's queue is empty). Everything here
//! runs on the control thread and may allocate: shared state and receiver state are built here
//! and moved to the core, and what the core hands back on an ack (a closed channel, a closed
//! receiver) is dropped here, in [`ControlRing::take_ack`](crate::core::ControlRing::take_ack).

use crate::channel::{ChannelShared, Doorbell, Sender};
use crate::core::{Command, ControlRing, Core, CoreError, CLIENT_SCAN_PER_ITERATION};
use crate::port::Port;
use crate::rx::{Receiver, ReceiverState, RxPath, RxRejects, RxShared};
use crate::sched::SchedPolicy;
use crate::slots::Slots;
use crate::spec::{ChannelConfig, ChannelId};
use crate::stats::SampleSink;
use crate::time::Nanos;
use crate::wire::SourceCheck;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the control side waits for a core to acknowledge a command. A running core
/// applies commands within one iteration (microseconds); a second means it is stuck or gone.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel validated for a core, its buffers not yet allocated (see
/// [`CoreHandle::prepare_open`]).
#[derive(Debug)]
pub struct PendingOpen {
    config: ChannelConfig,
    slot: u32,
    doorbell: Arc<Doorbell>,
    sink: Arc<SampleSink>,
}

impl PendingOpen {
    /// Allocates the channel's shared state and buffers (any thread; may take a while for a
    /// large reservation).
    pub fn build(self) -> Result<Arc<ChannelShared>, CoreError> {
        ChannelShared::new(self.config, self.slot, self.doorbell, &self.sink)
            .map_err(|e| CoreError::Ring(e.to_string()))
    }
}

/// A receive side validated by [`CoreHandle::prepare_receiver`], not yet allocated.
#[derive(Debug)]
pub struct PendingReceiver {
    id: ChannelId,
    mmax: u32,
    ring: u32,
    sink: Arc<SampleSink>,
    source: Option<SourceCheck>,
}

impl PendingReceiver {
    /// Accepts only frames carrying `check`'s addresses.
    pub fn with_source(mut self, check: SourceCheck) -> Self {
        self.source = Some(check);
        self
    }

    /// Allocates the receive side: the application's shared state and the core's reassembly
    /// state (any thread; never the polling core).
    pub fn build(self) -> BuiltReceiver {
        let reassembly = CoreHandle::reassembly_slots(self.ring);
        let shared = RxShared::with_source(
            self.id,
            self.mmax,
            self.ring,
            reassembly,
            &self.sink,
            self.source,
        );
        BuiltReceiver {
            state: RxPath::prepare(shared.clone(), reassembly),
            shared,
        }
    }
}

/// A receive side allocated by [`PendingReceiver::build`], for
/// [`CoreHandle::open_built_receiver`].
#[derive(Debug)]
pub struct BuiltReceiver {
    shared: Arc<RxShared>,
    state: ReceiverState,
}

/// The control thread's view of one core.
#[derive(Debug)]
pub struct CoreHandle {
    control: Arc<ControlRing>,
    doorbell: Arc<Doorbell>,
    sink: Arc<SampleSink>,
    payload_per_packet: u32,
    tx_queue: u16,
    /// Open sending channels; the flag says client-fed.
    slots: Slots<bool>,
    /// How many of them are client-fed (at most [`CLIENT_SCAN_PER_ITERATION`]).
    clients: usize,
    early_acks: HashMap<u64, Result<(), CoreError>>,
    rx_rejects: Arc<RxRejects>,
    max_frame: usize,
    gauges: Arc<crate::stats::CoreGauges>,
}

impl CoreHandle {
    /// A handle for `core`; take it before the core starts running.
    pub fn new<P: Port>(core: &Core<P>) -> Self {
        Self {
            control: core.control().clone(),
            doorbell: core.doorbell().clone(),
            sink: core.sink().clone(),
            payload_per_packet: core.payload_per_packet(),
            tx_queue: core.config().tx_queue,
            slots: Slots::new(core.config().max_channels as usize),
            clients: 0,
            early_acks: HashMap::new(),
            rx_rejects: core.rx_rejects(),
            max_frame: core.port().capabilities().max_frame,
            gauges: core.gauges().clone(),
        }
    }

    /// The core's receive-path reject counters (frames refused before or at a channel).
    pub fn rx_rejects(&self) -> &Arc<RxRejects> {
        &self.rx_rejects
    }

    /// What the core publishes while it runs (busy time, iterations, longest stretch).
    pub fn gauges(&self) -> crate::stats::CoreGaugesSnapshot {
        self.gauges.snapshot()
    }

    /// The largest frame the core's port carries (a capture slot that keeps whole frames).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Arms captures into `ring` (`Some`) or disarms them (`None`); returns once the core
    /// applied it (the ring it held is dropped here, on the control thread).
    pub fn set_capture(
        &mut self,
        ring: Option<Arc<crate::capture::CaptureRing>>,
    ) -> Result<(), CoreError> {
        self.send(Command::Capture(ring), ACK_TIMEOUT)
    }

    /// Payload bytes per packet on this core.
    pub fn payload_per_packet(&self) -> u32 {
        self.payload_per_packet
    }

    fn wait(&mut self, seq: u64, timeout: Duration) -> Result<(), CoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.early_acks.remove(&seq) {
                return r;
            }
            while let Some((s, r)) = self.control.take_ack() {
                if s == seq {
                    return r;
                }
                self.early_acks.insert(s, r);
            }
            if Instant::now() > deadline {
                return Err(CoreError::NotRunning);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn send(&mut self, cmd: Command, timeout: Duration) -> Result<(), CoreError> {
        let seq = self.control.post(cmd).map_err(|_| CoreError::NotRunning)?;
        self.wait(seq, timeout)
    }

    /// Opens a sending channel; returns its sender once the core runs its handler.
    pub fn open(&mut self, config: ChannelConfig) -> Result<Sender, CoreError> {
        let pending = self.prepare_open(config)?;
        self.open_built(pending.build()?)
    }

    /// The allocation-free first half of [`CoreHandle::open`]: validates `config` and picks
    /// the handler's slot. [`PendingOpen::build`] then allocates the channel's buffers on any
    /// thread (so the control thread can answer others meanwhile), and
    /// [`CoreHandle::open_built`] hands the result to the core.
    pub fn prepare_open(&self, config: ChannelConfig) -> Result<PendingOpen, CoreError> {
        config.validate(self.payload_per_packet)?;
        if config.txq != self.tx_queue {
            return Err(CoreError::NoSuchQueue {
                queue: config.txq,
                count: self.tx_queue + 1,
            });
        }
        if self.slots.contains(config.id) {
            return Err(CoreError::Duplicate(config.id));
        }
        let slot = self
            .slots
            .free_slot()
            .ok_or(CoreError::Full(self.slots.capacity()))?;
        Ok(PendingOpen {
            config,
            slot,
            doorbell: self.doorbell.clone(),
            sink: self.sink.clone(),
        })
    }

    /// The second half of [`CoreHandle::open`]: opens the channel `shared` (from
    /// [`PendingOpen::build`] of this handle's [`CoreHandle::prepare_open`]) on the core.
    pub fn open_built(&mut self, shared: Arc<ChannelShared>) -> Result<Sender, CoreError> {
        let (id, slot) = (shared.config.id, shared.slot);
        if self.slots.contains(id) {
            return Err(CoreError::Duplicate(id));
        }
        if !self.slots.is_free(slot) {
            return Err(CoreError::Full(self.slots.capacity()));
        }
        self.send(Command::Open(shared.clone()), ACK_TIMEOUT)?;
        self.slots.insert(id, slot, false);
        Sender::new(shared).map_err(|e| CoreError::Ring(e.to_string()))
    }

    /// Opens a client-fed channel: its submit ring is a sealed memfd region (hand
    /// `shared.region().fd()` to the client); returns the shared state once the core runs it.
    /// `release_jitter`: the wait between a client's stamp and the core's take the channel
    /// was admitted with (stamps are held to it, see [`ChannelShared::new_client`]).
    pub fn open_client(
        &mut self,
        config: ChannelConfig,
        release_jitter: Nanos,
    ) -> Result<Arc<ChannelShared>, CoreError> {
        // The release jitter admission charges assumes the core's client scan sees every
        // client-fed ring each service phase: one more would wait several phases.
        if self.clients >= CLIENT_SCAN_PER_ITERATION {
            return Err(CoreError::ClientsFull(CLIENT_SCAN_PER_ITERATION));
        }
        let p = self.prepare_open(config)?;
        let shared =
            ChannelShared::new_client(p.config, p.slot, p.doorbell, &p.sink, release_jitter)
                .map_err(|e| CoreError::Ring(e.to_string()))?;
        let (id, slot) = (shared.config.id, shared.slot);
        self.send(Command::Open(shared.clone()), ACK_TIMEOUT)?;
        self.slots.insert(id, slot, true);
        self.clients += 1;
        Ok(shared)
    }

    /// Closes a sending channel, draining its queue first when `drain`.
    pub fn close(&mut self, id: ChannelId, drain: bool) -> Result<(), CoreError> {
        let slot = self.slots.slot_of(id).ok_or(CoreError::NoSuchChannel(id))?;
        // A drain waits for the queue to empty: allow for a full buffer's worth of sending.
        let timeout = if drain { ACK_TIMEOUT * 5 } else { ACK_TIMEOUT };
        self.send(Command::Close { id, drain }, timeout)?;
        if self.slots.remove(slot) == Some(true) {
            self.clients -= 1;
        }
        Ok(())
    }

    /// Opens the receive side of a channel on this core.
    pub fn open_receiver(
        &mut self,
        id: ChannelId,
        mmax: u32,
        ring: u32,
    ) -> Result<Receiver, CoreError> {
        self.open_built_receiver(self.prepare_receiver(id, mmax, ring).build())
    }

    /// Reassembly slots of a receive side whose application ring holds `ring` messages.
    pub fn reassembly_slots(ring: u32) -> u32 {
        ring.clamp(1, 64)
    }

    /// Heap bytes [`CoreHandle::open_receiver`] allocates for `mmax` and `ring`.
    pub fn receiver_bytes(mmax: u32, ring: u32) -> u64 {
        crate::rx::reservation_bytes(mmax, ring, Self::reassembly_slots(ring))
    }

    /// The allocation-free first half of [`CoreHandle::open_receiver`]: what
    /// [`PendingReceiver::build`] needs to allocate the receive side on any thread.
    pub fn prepare_receiver(&self, id: ChannelId, mmax: u32, ring: u32) -> PendingReceiver {
        PendingReceiver {
            id,
            mmax,
            ring,
            sink: self.sink.clone(),
            source: None,
        }
    }

    /// Opens a receive side built by [`PendingReceiver::build`] on this core: the core only
    /// moves the prepared state into a slot.
    pub fn open_built_receiver(&mut self, built: BuiltReceiver) -> Result<Receiver, CoreError> {
        self.send(Command::OpenReceiver(built.state), ACK_TIMEOUT)?;
        Ok(Receiver::new(built.shared))
    }

    /// Opens the receive side of a channel whose application is another process: messages
    /// go into the client's delivery ring `region`, whose wake word wakes it when it sleeps.
    /// The returned receiver only reads the statistics (it has no consuming end here).
    pub fn open_receiver_app(
        &mut self,
        id: ChannelId,
        mmax: u32,
        region: Arc<crate::shm::Region>,
        source: Option<SourceCheck>,
    ) -> Result<Receiver, CoreError> {
        let reassembly = Self::reassembly_slots(region.params().capacity);
        let shared = RxShared::with_app(id, mmax, reassembly, region, &self.sink, source);
        let state = RxPath::prepare_app(shared.clone(), reassembly)
            .map_err(|e| CoreError::Ring(format!("channel {id}'s delivery ring: {e}")))?;
        self.open_built_receiver(BuiltReceiver { state, shared })
    }

    /// Closes the receive side of a channel.
    pub fn close_receiver(&mut self, id: ChannelId) -> Result<(), CoreError> {
        self.send(Command::CloseReceiver(id), ACK_TIMEOUT)
    }

    /// Replaces the scheduling policy.
    pub fn set_policy(&mut self, policy: SchedPolicy) -> Result<(), CoreError> {
        policy.validate()?;
        self.send(Command::SetPolicy(policy), ACK_TIMEOUT)
    }
}
