//! Opening and closing a channel from the sending side.
//!
//! [`Control::open`] takes a validated request through the end-to-end split: this host's least
//! bound on the chosen core, `prepare` at the receiving side with the budget left, this host's
//! admission, the channel on its core (and its source thread), `commit` at the receiving side,
//! the table persisted. Each step that fails undoes the ones before it, on both hosts.
//! [`Control::teardown`] is the reverse for an open channel.

use std::time::Instant;

use control::admission::memory::{sending_bytes, sending_field, Side};
use control::admission::{Admitted, ChannelRequest, Nanos};
use control::e2e::least_deadline;
use control::protocol::{
    ApiError, ChannelInfo, CloseArgs, ErrorKind, Grant, OpenArgs, PrepareArgs,
};
use control::reservation::{not_found, Op};
use control::units::fmt_ns;
use dataplane::spec::{ChannelConfig, ChannelSpec, OverflowPolicy};

use super::{internal, placement::core_hint, Control, Dst, Outgoing, SenderParts};
use crate::daemon::dp::PORT_QUEUE;
use crate::daemon::traffic::{parse_source, SourceThread};

impl Control {
    /// Opens a channel (or decides only, with `dry_run`); `fixed_id` when restoring.
    pub fn open(
        &mut self,
        args: &OpenArgs,
        fixed_id: Option<u32>,
    ) -> Result<ChannelInfo, ApiError> {
        if args.attach && args.source.is_some() {
            return Err(ApiError::invalid(
                "attach",
                "attach: a client-fed channel takes its messages from the client; it cannot \
                 also have a built-in source",
            ));
        }
        if args.best_effort {
            return self.open_best_effort(args, fixed_id);
        }
        let mmax = u32::try_from(args.mmax.0).map_err(|_| {
            ApiError::invalid("mmax", format!("mmax: {} bytes is too large", args.mmax.0))
        })?;
        let imin = args.imin.0;
        let d = args.deadline.0;
        let policy_name = args.policy.clone().unwrap_or(self.policy.overflow.clone());
        let overflow: OverflowPolicy = policy_name
            .parse()
            .map_err(|m: String| ApiError::invalid("policy", format!("policy: {m}")))?;
        let pattern = match &args.source {
            Some(s) => Some(
                parse_source(s, imin, args.bmax.max(1))
                    .map_err(|m| ApiError::invalid("source", format!("source: {m}")))?,
            ),
            None => None,
        };
        let msg_size = args.message_size.map_or(u64::from(mmax), |s| s.0);
        if msg_size > u64::from(mmax) {
            return Err(ApiError::invalid(
                "message_size",
                format!("message_size: {msg_size} bytes exceeds mmax ({mmax} bytes)"),
            ));
        }
        let (dst, net) = self.destination(&args.dst)?;
        self.check_memory(mmax, args.bmax, dst == Dst::Local)?;
        if d <= net {
            return Err(ApiError::invalid(
                "deadline",
                format!(
                    "deadline: {} does not exceed the network bound {} to '{}'",
                    fmt_ns(d),
                    fmt_ns(net),
                    args.dst
                ),
            ));
        }
        let cands = self.candidates(args)?;
        let host_max = d - net;
        // A client-fed channel's messages wait up to one loop iteration for the client scan:
        // admitted with that much less of the host's bound, given back in its deadlines.
        let jitter = self.client_jitter(args);
        let base = |c: u16, deadline: Nanos| ChannelRequest {
            mmax,
            imin,
            bmax: args.bmax,
            deadline: deadline.saturating_sub(jitter),
            core: Some(c),
            txq: Some(c),
        };
        // This host's least bound on the first core that leaves the receiver something.
        let mut chosen = None;
        for &c in &cands {
            if let Ok(least) = least_deadline(&self.tx_adm, &base(c, host_max)) {
                if least + jitter < host_max {
                    chosen = Some((c, least + jitter));
                    break;
                }
            }
        }
        let Some((core, least_s)) = chosen else {
            let c = cands[0];
            let e = match self.tx_adm.check(&base(c, host_max)) {
                Err(e) => e,
                // It fits only with the whole budget: nothing is left for the receiver.
                Ok(_) => match self.tx_adm.check(&base(c, host_max - 1)) {
                    Err(e) => e,
                    Ok(_) => return Err(internal("placement search disagrees with admission")),
                },
            };
            let mut err = self.sender_error(e, d, net, &args.dst);
            if let Some(r) = err.refusal.as_mut() {
                if let Some(ls) = r.least_host_deadline {
                    if let Some(lr) =
                        self.receiver_least(&dst, mmax, imin, args.bmax, d, core_hint(&dst, c))
                    {
                        r.tightest_deadline = Some(ls + net + lr);
                        err.message.push_str(&format!(
                            "; the tightest end-to-end deadline now is {}",
                            fmt_ns(ls + net + lr)
                        ));
                    }
                }
            }
            return Err(err);
        };
        // The receiving side, with a channel id it does not use yet.
        let budget = host_max - least_s;
        let prepared = self.prepare_with_id(&dst, fixed_id, |id| PrepareArgs {
            id,
            mmax,
            imin,
            bmax: args.bmax,
            budget,
            end_to_end: d,
            core: core_hint(&dst, core),
            dry_run: args.dry_run,
            best_effort: false,
        });
        let (id, grant) = match prepared {
            Ok(p) => p,
            Err(mut e) => {
                if let Some(r) = e.refusal.as_mut() {
                    if let Some(lr) = r.least_host_deadline {
                        let t = least_s + net + lr;
                        r.tightest_deadline = Some(t);
                        e.message.push_str(&format!(
                            "; the tightest end-to-end deadline now is {}",
                            fmt_ns(t)
                        ));
                    }
                }
                return Err(e);
            }
        };
        let d_s = host_max - grant.deadline;
        let req = base(core, d_s);
        if args.dry_run {
            let sender = self
                .tx_adm
                .check(&req)
                .map_err(|e| self.sender_error(e, d, net, &args.dst))?;
            let mut sender = sender;
            sender.cpu_deadline += jitter;
            sender.link_deadline += jitter;
            sender.request.deadline += jitter;
            return Ok(self.info(id, "dry_run", args, net, sender, grant, &policy_name));
        }
        let undo_remote = |this: &mut Self| this.abort_remote(&dst, id);
        let sender_adm = match self.admit_sending(&req) {
            Ok(a) => a,
            Err(e) => {
                undo_remote(self);
                return Err(self.sender_error(e, d, net, &args.dst));
            }
        };
        let mut sender_adm = sender_adm;
        sender_adm.cpu_deadline += jitter;
        sender_adm.link_deadline += jitter;
        sender_adm.request.deadline += jitter;
        let mut cfg = ChannelConfig::real_time(
            id,
            ChannelSpec {
                mmax,
                imin,
                bmax: args.bmax,
                cpu_deadline: sender_adm.cpu_deadline,
                link_deadline: sender_adm.link_deadline,
                end_to_end_deadline: d,
            },
        );
        cfg.overflow = overflow;
        cfg.txq = PORT_QUEUE;
        self.address(&mut cfg, &dst);
        let undo = |this: &mut Self| {
            this.release_sending(sender_adm.id);
            undo_remote(this);
        };
        let (shared, sender, source) =
            self.start_sender(core, cfg, pattern, msg_size, (id, args.attach), undo)?;
        let adm_id = Some(sender_adm.id);
        let info = self.info(id, "open", args, net, sender_adm, grant, &policy_name);
        self.commit_outgoing(
            id,
            args,
            info,
            (core, adm_id),
            dst,
            (shared, sender, source),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn info(
        &self,
        id: u32,
        state: &str,
        args: &OpenArgs,
        net: Nanos,
        mut sender: Admitted,
        receiver: Grant,
        policy: &str,
    ) -> ChannelInfo {
        sender.id = id;
        ChannelInfo {
            id,
            state: state.into(),
            dst: args.dst.clone(),
            deadline: if args.best_effort { 0 } else { args.deadline.0 },
            network_bound: net,
            sender,
            receiver,
            policy: policy.into(),
            source: args.source.clone(),
            best_effort: args.best_effort,
            attach: args.attach,
        }
    }

    /// Opens a best-effort channel: no admission on either host; the receiving side opens a
    /// receiver for it. It runs in the best-effort class of its core and link, which gets
    /// whatever real-time traffic leaves and at least `best_effort_reserve_ppm`.
    pub(super) fn open_best_effort(
        &mut self,
        args: &OpenArgs,
        fixed_id: Option<u32>,
    ) -> Result<ChannelInfo, ApiError> {
        let mmax = u32::try_from(args.mmax.0)
            .ok()
            .filter(|&m| m <= self.cfg.max_message)
            .ok_or_else(|| {
                ApiError::invalid(
                    "mmax",
                    format!(
                        "mmax: {} bytes exceeds the largest message ({} bytes)",
                        args.mmax.0, self.cfg.max_message
                    ),
                )
            })?;
        let queue = args.bmax.max(1);
        let imin = args.imin.0;
        let policy_name = args.policy.clone().unwrap_or(self.policy.overflow.clone());
        let overflow: OverflowPolicy = policy_name
            .parse()
            .map_err(|m: String| ApiError::invalid("policy", format!("policy: {m}")))?;
        let pattern = match &args.source {
            Some(s) => Some(
                parse_source(s, imin, queue)
                    .map_err(|m| ApiError::invalid("source", format!("source: {m}")))?,
            ),
            None => None,
        };
        let msg_size = args.message_size.map_or(u64::from(mmax), |s| s.0);
        if msg_size > u64::from(mmax) {
            return Err(ApiError::invalid(
                "message_size",
                format!("message_size: {msg_size} bytes exceeds mmax ({mmax} bytes)"),
            ));
        }
        let (dst, net) = self.destination(&args.dst)?;
        self.check_memory(mmax, queue, dst == Dst::Local)?;
        let core = self.candidates(args)?[0];
        let (id, grant) = self.prepare_with_id(&dst, fixed_id, |id| PrepareArgs {
            id,
            mmax,
            imin,
            bmax: queue,
            budget: 0,
            end_to_end: 0,
            core: core_hint(&dst, core),
            dry_run: args.dry_run,
            best_effort: true,
        })?;
        let sender_numbers = unadmitted(id, core, mmax, imin, queue);
        if args.dry_run {
            return Ok(self.info(
                id,
                "dry_run",
                args,
                net,
                sender_numbers,
                grant,
                &policy_name,
            ));
        }
        let mut cfg = ChannelConfig::best_effort(id, mmax, queue);
        cfg.overflow = overflow;
        cfg.txq = PORT_QUEUE;
        self.address(&mut cfg, &dst);
        let undo = |this: &mut Self| this.abort_remote(&dst, id);
        let (shared, sender, source) =
            self.start_sender(core, cfg, pattern, msg_size, (id, args.attach), undo)?;
        let info = self.info(id, "open", args, net, sender_numbers, grant, &policy_name);
        self.commit_outgoing(
            id,
            args,
            info,
            (core, None),
            dst.clone(),
            (shared, sender, source),
        )
    }

    /// Opens the channel on its core and, with a pattern, starts its source thread; on failure
    /// closes what was opened and runs `undo` (releases what the caller reserved).
    pub(super) fn start_sender(
        &mut self,
        core: u16,
        cfg: ChannelConfig,
        pattern: Option<dataplane::source::Pattern>,
        msg_size: u64,
        (id, client): (u32, bool),
        undo: impl FnOnce(&mut Self),
    ) -> Result<SenderParts, ApiError> {
        let (messages, mmax) = (cfg.reservation.messages, cfg.reservation.bytes_per_message);
        let bytes = sending_bytes(mmax, messages);
        if let Err(e) = self
            .memory
            .reserve(Side::Sending, id, sending_field(messages), bytes)
        {
            undo(self);
            return Err(self.memory_error(e));
        }
        let undo = |this: &mut Self| {
            this.memory.release(Side::Sending, id);
            undo(this);
        };
        if client {
            // Client-fed: the ring's memfd goes to the client; no sender in this process.
            // Its stamps are held to the wait admission allowed it (client_jitter's figure).
            let jitter = if matches!(cfg.class, dataplane::spec::TrafficClass::RealTime(_)) {
                self.tx_adm.model().client_release_jitter()
            } else {
                0
            };
            return match self.dp.tx[usize::from(core)]
                .handle
                .open_client(cfg, jitter)
            {
                Ok(shared) => Ok((shared, None, None)),
                Err(e) => {
                    undo(self);
                    Err(internal(format!("core {core} refused the channel: {e}")))
                }
            };
        }
        let built = match self.dp.tx[usize::from(core)].handle.prepare_open(cfg) {
            Ok(pending) => self
                .off_thread(bytes, move || pending.build())
                .and_then(|b| b.map_err(|e| internal(format!("core {core}: {e}")))),
            Err(e) => Err(internal(format!("core {core} refused the channel: {e}"))),
        };
        let opened = built.and_then(|shared| {
            self.dp.tx[usize::from(core)]
                .handle
                .open_built(shared)
                .map_err(|e| internal(format!("core {core} refused the channel: {e}")))
        });
        let sender = match opened {
            Ok(s) => s,
            Err(e) => {
                undo(self);
                return Err(e);
            }
        };
        let shared = sender.shared().clone();
        match pattern {
            Some(p) => match SourceThread::start(sender, p, msg_size as usize, id) {
                Ok(t) => Ok((shared, None, Some(t))),
                Err(e) => {
                    let _ = self.dp.tx[usize::from(core)].handle.close(id, false);
                    undo(self);
                    Err(internal(format!("cannot start the source thread: {e}")))
                }
            },
            None => Ok((shared, Some(sender), None)),
        }
    }

    /// Records an opened outgoing channel (`placed`: its core and sending admission id),
    /// commits it at the receiving end and persists the table; if the receiving end refuses
    /// the commit, tears the channel down again.
    pub(super) fn commit_outgoing(
        &mut self,
        id: u32,
        args: &OpenArgs,
        info: ChannelInfo,
        placed: (u16, Option<u32>),
        dst: Dst,
        (shared, sender, source): SenderParts,
    ) -> Result<ChannelInfo, ApiError> {
        self.out.insert(
            id,
            Outgoing {
                args: OpenArgs {
                    dry_run: false,
                    ..args.clone()
                },
                info: info.clone(),
                core: placed.0,
                adm_id: placed.1,
                dst: dst.clone(),
                shared,
                sender,
                source,
                opened: Instant::now(),
                conn: None,
            },
        );
        if let Err(e) = self.commit_remote(&dst, id) {
            self.teardown(id, false, false);
            return Err(e);
        }
        self.next_id = self.next_id.max(id.wrapping_add(1));
        self.persist(&format!("the open of channel {id}"));
        Ok(info)
    }

    /// Stops the source, closes the channel on its core, frees both sides' reservations.
    pub(super) fn teardown(
        &mut self,
        id: u32,
        drain: bool,
        tell_peer: bool,
    ) -> Option<ChannelInfo> {
        let mut o = self.out.remove(&id)?;
        if let Some(src) = o.source.take() {
            o.sender = src.stop();
        }
        let _ = self.dp.tx[usize::from(o.core)].handle.close(id, drain);
        self.memory.release(Side::Sending, id);
        if let Some(a) = o.adm_id {
            self.release_sending(a);
        }
        match &o.dst {
            Dst::Local => self.release_incoming(id),
            Dst::Peer(p) if tell_peer && self.peer_has_open(p, id) => {
                let p = p.clone();
                let _ = self.peer_call(&p, Op::Release { id });
            }
            Dst::Peer(_) => {}
        }
        Some(o.info)
    }

    pub(super) fn close(&mut self, args: &CloseArgs) -> Result<ChannelInfo, ApiError> {
        if !self.out.contains_key(&args.id) {
            if let Some(i) = self.inc.get(&args.id) {
                return Err(ApiError {
                    kind: ErrorKind::Invalid,
                    field: Some("id".into()),
                    message: format!(
                        "id: channel {} is an incoming channel from '{}'; close it on the sending host",
                        args.id, i.info.from
                    ),
                    refusal: None,
                });
            }
            if let Some(i) = self.unrestored_index(args.id) {
                // Never discarded by accident: that takes its own request, naming the record.
                let r = &self.unrestored[i];
                return Err(ApiError {
                    kind: ErrorKind::NotFound,
                    field: Some("id".into()),
                    message: format!(
                        "id: no open channel {} on this host; record {} of the state file has \
                         that id but was not re-established ({}); `rtchanctl channel \
                         discard-unrestored {}` discards it",
                        args.id, r.index, r.error, r.index
                    ),
                    refusal: None,
                });
            }
            return Err(not_found(args.id));
        }
        let drain = !args.discard && self.policy.close == "drain";
        let info = self
            .teardown(args.id, drain, true)
            .ok_or_else(|| not_found(args.id))?;
        self.persist(&format!("the close of channel {}", args.id));
        Ok(info)
    }
}

/// The numbers a best-effort channel shows where a real-time one shows its admission: no
/// deadlines, no utilisation, its queue as the buffer.
pub(super) fn unadmitted(id: u32, core: u16, mmax: u32, imin: Nanos, queue: u32) -> Admitted {
    Admitted {
        id,
        core,
        txq: core,
        cpu_deadline: 0,
        link_deadline: 0,
        packets: 0,
        buffer_messages: queue,
        buffer_bytes: u64::from(queue) * u64::from(mmax),
        cpu_cost: 0,
        link_cost: 0,
        cpu_utilisation_ppm: 0,
        link_utilisation_ppm: 0,
        core_utilisation_ppm: 0,
        txq_utilisation_ppm: 0,
        request: ChannelRequest {
            mmax,
            imin,
            bmax: queue,
            deadline: 0,
            core: Some(core),
            txq: Some(core),
        },
    }
}
