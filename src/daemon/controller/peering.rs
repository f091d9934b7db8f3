//! The control thread's side of peering: it drives the reservation protocol's machines
//! ([`control::reservation`]) and applies what they decide to the channel table.
//!
//! Sending: [`Control::peer_call`] submits an operation to the peer's [`Outbound`] and runs it
//! to its outcome: it opens the [`PeerLink`] the machine asks for, writes its request lines,
//! waits for replies until the machine's next deadline (answering this host's own peers and
//! readers meanwhile), and feeds replies, timeouts and broken connections back. When the
//! machine declares the peer lost, every channel to it is torn down here. [`Control::tick`]
//! runs the same loop for heartbeats.
//!
//! Receiving: each request line an incoming session delivers goes to the [`Inbound`] machine;
//! [`Control::run_inbound`] carries out its actions (admission and buffers for a `prepare`,
//! freeing, closing silent sessions) and returns the answer the connection's thread writes.

use std::time::{Duration, Instant};

use control::admission::Nanos;
use control::protocol::{ApiError, ErrorKind, Reply};
use control::reservation::inbound::FreeReason;
use control::reservation::outbound::ChannelState;
use control::reservation::{Failure, InAction, Op, OutEvent, Outbound, Seq, SessionId, Ticket};

use super::{internal, timers, Control, Dst};
use crate::daemon::peer::{PeerAnswer, PeerLink};
use control::protocol::{Grant, PrepareArgs};

/// The sender's protocol state with one peer and its connection, when it has one.
pub(super) struct PeerOut {
    machine: Outbound,
    link: Option<(SessionId, PeerLink)>,
}

impl Control {
    /// The machines' clock: nanoseconds since the controller started.
    pub(super) fn now(&self) -> Nanos {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, t: Nanos) -> Instant {
        self.epoch + Duration::from_nanos(t)
    }

    /// Runs `op` with `peer` to its outcome: the peer's reply (possibly an error it sent), or
    /// a `peer` error when it is unreachable or was lost (its channels are then closed).
    pub(super) fn peer_call(&mut self, peer: &str, op: Op) -> Result<Reply, ApiError> {
        if self.cfg.peer(peer).is_none() {
            return Err(internal(format!("peer '{peer}' is not configured")));
        }
        // Out of the map while it runs, so the waits can serve incoming peer requests.
        let mut po = self.peers.remove(peer).unwrap_or_else(|| PeerOut {
            machine: Outbound::new(self.cfg.peering.name.clone(), timers(&self.cfg)),
            link: None,
        });
        let now = self.now();
        let outcome = match po.machine.submit(now, op) {
            Ok(ticket) => self.drive(peer, &mut po, Some(ticket)),
            Err(f) => Some(Err(f)),
        };
        self.peers.insert(peer.to_owned(), po);
        match outcome {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(Failure::Unreachable(m))) => Err(ApiError::new(
                ErrorKind::Peer,
                format!("peer '{peer}' is unreachable: {m}; nothing was reserved"),
            )),
            Some(Err(Failure::Lost(m))) => Err(ApiError::new(
                ErrorKind::Peer,
                format!("lost peer '{peer}': {m}; its channels were closed"),
            )),
            Some(Err(Failure::Misused(m))) => Err(internal(format!("peer '{peer}': {m}"))),
            None => Err(internal(format!(
                "peer '{peer}': the request never finished"
            ))),
        }
    }

    /// Moves `po`'s bytes and timers until `ticket` finishes (or, without one, until nothing
    /// is in flight); returns the ticket's outcome.
    fn drive(
        &mut self,
        peer: &str,
        po: &mut PeerOut,
        ticket: Option<Ticket>,
    ) -> Option<Result<Reply, Failure>> {
        let mut done = None;
        loop {
            while let Some(ev) = po.machine.poll_event() {
                match ev {
                    OutEvent::Connect { session } => {
                        let timeout = Duration::from_nanos(self.cfg.peering.timeout.0);
                        let link = match self.cfg.peer(peer) {
                            Some(cfg) => PeerLink::connect(cfg, timeout),
                            None => Err(format!("peer '{peer}' is not configured")),
                        };
                        let now = self.now();
                        match link {
                            Ok(l) => {
                                po.link = Some((session, l));
                                po.machine.connected(now, session);
                            }
                            Err(e) => po.machine.connect_failed(now, session, &e),
                        }
                    }
                    OutEvent::Disconnect { session } => {
                        if po.link.as_ref().is_some_and(|(s, _)| *s == session) {
                            po.link = None;
                        }
                    }
                    OutEvent::Done { ticket: t, result } => {
                        if Some(t) == ticket {
                            done = Some(result);
                        }
                    }
                    OutEvent::Lost { channels, reason } => self.peer_lost(peer, &channels, &reason),
                }
            }
            let mut news = false;
            while let Some(t) = po.machine.poll_transmit() {
                let sent = match &mut po.link {
                    Some((s, l)) if *s == t.session => l.send(&t.request),
                    _ => Err("no connection".into()),
                };
                if let Err(e) = sent {
                    po.machine.transport_failed(self.now(), t.session, &e);
                    news = true;
                }
            }
            if news {
                continue;
            }
            if done.is_some() || (ticket.is_none() && !po.machine.busy()) {
                return done;
            }
            let Some(due) = po.machine.poll_timeout() else {
                return done;
            };
            let until = self.instant(due);
            match &mut po.link {
                Some((session, link)) => {
                    let session = *session;
                    let got = link.wait_reply(until, || self.serve_peers_while_waiting());
                    let now = self.now();
                    match got {
                        Ok(Some((seq, reply))) => po.machine.handle_reply(now, session, seq, reply),
                        Ok(None) => po.machine.handle_timeout(now),
                        Err(e) => po.machine.transport_failed(now, session, &e),
                    }
                }
                None => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    po.machine.handle_timeout(self.now());
                }
            }
        }
    }

    /// The machine lost `peer`: close the channels to it it names.
    fn peer_lost(&mut self, peer: &str, channels: &[u32], reason: &str) {
        let dst = Dst::Peer(peer.to_owned());
        debug_assert!(
            self.out
                .iter()
                .all(|(id, o)| o.dst != dst || channels.contains(id)),
            "every channel to '{peer}' is held by its machine"
        );
        let ids: Vec<u32> = channels
            .iter()
            .copied()
            .filter(|id| self.out.get(id).is_some_and(|o| o.dst == dst))
            .collect();
        for &id in &ids {
            self.teardown(id, false, false);
        }
        if !ids.is_empty() {
            tracing::warn!(
                "rtchand: lost peer '{peer}' ({reason}): closed channels {ids:?} and freed their reservations"
            );
            self.persist(&format!("closing the channels of lost peer '{peer}'"));
        }
    }

    /// Whether channel `id` is established with `peer` (so closing it tells the peer).
    pub(super) fn peer_has_open(&self, peer: &str, id: u32) -> bool {
        self.peers.get(peer).is_some_and(|po| {
            po.machine
                .channels()
                .any(|(c, s)| c == id && s == ChannelState::Open)
        })
    }

    /// Runs the protocol's timers: silent incoming sessions end; idle outgoing ones are
    /// pinged, and a peer that does not answer is lost.
    pub(super) fn peer_timers(&mut self) {
        let now = self.now();
        self.inbound.handle_timeout(now);
        self.run_inbound(None);
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for p in names {
            let Some(mut po) = self.peers.remove(&p) else {
                continue;
            };
            if po.machine.poll_timeout().is_some_and(|t| t <= now) {
                po.machine.handle_timeout(now);
                self.drive(&p, &mut po, None);
            }
            self.peers.insert(p, po);
        }
    }

    /// Ends every outgoing session (the daemon is stopping); peers free what they held.
    pub(super) fn close_peers(&mut self) {
        for po in self.peers.values_mut() {
            po.machine.close();
            po.link = None;
        }
        self.peers.clear();
    }

    /// Carries out the inbound machine's actions; the answer to request `current` (session,
    /// number) when there is one. A request the machine dropped gets no reply: its
    /// connection is closed.
    pub(super) fn run_inbound(&mut self, current: Option<(SessionId, Seq)>) -> PeerAnswer {
        let mut answer = PeerAnswer {
            reply: None,
            close: false,
        };
        while let Some(a) = self.inbound.poll_action() {
            match a {
                InAction::Reply {
                    session,
                    seq,
                    reply,
                } => {
                    if current == Some((session, seq)) {
                        answer.reply = Some(reply);
                    }
                }
                InAction::Reserve { token, from, args } => {
                    let r = self.prepare(&from, &args);
                    let now = self.now();
                    self.inbound.complete_reserve(now, token, r);
                }
                InAction::Commit { id } => {
                    if let Some(i) = self.inc.get_mut(&id) {
                        i.info.committed = true;
                    }
                }
                InAction::Free { ids, reason, .. } => {
                    for &id in &ids {
                        self.release_incoming(id);
                    }
                    if !matches!(reason, FreeReason::Aborted | FreeReason::Released) {
                        tracing::warn!(
                            "rtchand: a peer's session ended ({reason:?}): released incoming channels {ids:?}"
                        );
                    }
                }
                InAction::Close { session } => {
                    if current.is_some_and(|(s, _)| s == session) {
                        answer.close = true;
                    } else if let Some(c) = &self.closer {
                        c.close(session);
                    }
                }
            }
        }
        answer
    }

    pub(super) fn receiver_least(
        &mut self,
        dst: &Dst,
        mmax: u32,
        imin: Nanos,
        bmax: u32,
        d: Nanos,
        core: Option<u16>,
    ) -> Option<Nanos> {
        let prep = PrepareArgs {
            id: u32::MAX,
            mmax,
            imin,
            bmax,
            budget: Nanos::MAX / 4,
            end_to_end: d,
            core,
            dry_run: true,
            best_effort: false,
        };
        self.prepare_remote(dst, &prep)
            .ok()
            .map(|g| g.least_deadline)
    }

    pub(super) fn prepare_remote(
        &mut self,
        dst: &Dst,
        prep: &PrepareArgs,
    ) -> Result<Grant, ApiError> {
        match dst {
            Dst::Local => self.prepare("local", prep),
            Dst::Peer(p) => {
                let granted = self.peer_call(p, Op::Prepare(prep.clone()))?;
                let ok = granted.ok;
                let r = granted.into_result();
                if r.is_err() && ok && !prep.dry_run {
                    // Granted, but not in words this host reads: give it back.
                    let _ = self.peer_call(p, Op::Abort { id: prep.id });
                }
                r
            }
        }
    }

    pub(super) fn commit_remote(&mut self, dst: &Dst, id: u32) -> Result<(), ApiError> {
        match dst {
            Dst::Local => {
                if let Some(i) = self.inc.get_mut(&id) {
                    i.info.committed = true;
                }
                Ok(())
            }
            Dst::Peer(p) => self
                .peer_call(p, Op::Commit { id })?
                .into_result::<serde_json::Value>()
                .map(|_| ()),
        }
    }

    pub(super) fn abort_remote(&mut self, dst: &Dst, id: u32) {
        match dst {
            Dst::Local => self.release_incoming(id),
            Dst::Peer(p) => {
                let _ = self.peer_call(p, Op::Abort { id });
            }
        }
    }
}
