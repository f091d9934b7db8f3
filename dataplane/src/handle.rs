//! The control side's handle on a polling core: open and close channels on a running core.
//!
//! Each change is a [`Command`] posted on the core's lock-free control ring; the call waits
//! until the core acknowledges it, which the core does only once the change is applied (at its
//! next preemption point; a draining close when the channel's queue is empty). Everything here
//! runs on the control thread and may allocate.

use crate::channel::{ChannelShared, Doorbell, Sender};
use crate::core::{Command, ControlRing, Core, CoreError};
use crate::port::Port;
use crate::rx::{Receiver, RxShared};
use crate::sched::SchedPolicy;
use crate::spec::{ChannelConfig, ChannelId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the control side waits for a core to acknowledge a command. A running core
/// applies commands within one iteration (microseconds); a second means it is stuck or gone.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The control thread's view of one core.
#[derive(Debug)]
pub struct CoreHandle {
    control: Arc<ControlRing>,
    doorbell: Arc<Doorbell>,
    payload_per_packet: u32,
    tx_queue: u16,
    slots: Vec<bool>,
    slot_of: HashMap<ChannelId, u32>,
    early_acks: HashMap<u64, Result<(), CoreError>>,
}

impl CoreHandle {
    /// A handle for `core`; take it before the core starts running.
    pub fn new<P: Port>(core: &Core<P>) -> Self {
        Self {
            control: core.control().clone(),
            doorbell: core.doorbell().clone(),
            payload_per_packet: core.payload_per_packet(),
            tx_queue: core.config().tx_queue,
            slots: vec![false; core.config().max_channels as usize],
            slot_of: HashMap::new(),
            early_acks: HashMap::new(),
        }
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
        let slot = self.claim_slot(&config)?;
        let shared = ChannelShared::new(config, slot, self.doorbell.clone());
        self.send(Command::Open(shared.clone()), ACK_TIMEOUT)?;
        self.slots[slot as usize] = true;
        self.slot_of.insert(config.id, slot);
        Ok(Sender::new(shared))
    }

    /// Opens a client-fed channel: its submit ring is a sealed memfd region (hand
    /// `shared.region().fd()` to the client); returns the shared state once the core runs it.
    pub fn open_client(&mut self, config: ChannelConfig) -> Result<Arc<ChannelShared>, CoreError> {
        let slot = self.claim_slot(&config)?;
        let shared = ChannelShared::new_client(config, slot, self.doorbell.clone())
            .map_err(|e| CoreError::Ring(e.to_string()))?;
        self.send(Command::Open(shared.clone()), ACK_TIMEOUT)?;
        self.slots[slot as usize] = true;
        self.slot_of.insert(config.id, slot);
        Ok(shared)
    }

    /// Validates a new channel against this core and finds it a free slot.
    fn claim_slot(&self, config: &ChannelConfig) -> Result<u32, CoreError> {
        config.validate(self.payload_per_packet)?;
        if config.txq != self.tx_queue {
            return Err(CoreError::NoSuchQueue {
                queue: config.txq,
                count: self.tx_queue + 1,
            });
        }
        if self.slot_of.contains_key(&config.id) {
            return Err(CoreError::Duplicate(config.id));
        }
        Ok(self
            .slots
            .iter()
            .position(|used| !used)
            .ok_or(CoreError::Full(self.slots.len() as u32))? as u32)
    }

    /// Closes a sending channel, draining its queue first when `drain`.
    pub fn close(&mut self, id: ChannelId, drain: bool) -> Result<(), CoreError> {
        let slot = *self.slot_of.get(&id).ok_or(CoreError::NoSuchChannel(id))?;
        // A drain waits for the queue to empty: allow for a full buffer's worth of sending.
        let timeout = if drain { ACK_TIMEOUT * 5 } else { ACK_TIMEOUT };
        self.send(Command::Close { id, drain }, timeout)?;
        self.slots[slot as usize] = false;
        self.slot_of.remove(&id);
        Ok(())
    }

    /// Opens the receive side of a channel on this core.
    pub fn open_receiver(
        &mut self,
        id: ChannelId,
        mmax: u32,
        ring: u32,
    ) -> Result<Receiver, CoreError> {
        let reassembly = ring.clamp(1, 64);
        let shared = RxShared::new(id, mmax, ring, reassembly);
        self.send(
            Command::OpenReceiver {
                shared: shared.clone(),
                reassembly,
            },
            ACK_TIMEOUT,
        )?;
        Ok(Receiver::new(shared))
    }

    /// Opens the receive side of a channel whose application is another process: messages
    /// go into the client's delivery ring `region`, and `wake` is signalled when it sleeps.
    /// The returned receiver only reads the statistics (its in-process queue stays empty).
    pub fn open_receiver_app(
        &mut self,
        id: ChannelId,
        mmax: u32,
        region: Arc<crate::shm::Region>,
        wake: std::os::fd::OwnedFd,
    ) -> Result<Receiver, CoreError> {
        let reassembly = region.params().capacity.clamp(1, 64);
        let shared = RxShared::with_app(id, mmax, reassembly, region, wake);
        self.send(
            Command::OpenReceiver {
                shared: shared.clone(),
                reassembly,
            },
            ACK_TIMEOUT,
        )?;
        Ok(Receiver::new(shared))
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
