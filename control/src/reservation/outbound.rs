//! The sender's side of the protocol with one peer: its session and the state of every
//! channel reserved there.
//!
//! The caller [`Outbound::submit`]s operations and gets a [`Ticket`] for each; the machine
//! asks for a connection when it has none ([`OutEvent::Connect`]), opens each session with
//! `hello`, sends one request at a time in submission order, pings an idle session every
//! heartbeat, and reports each operation's outcome as [`OutEvent::Done`]. A request left
//! unanswered for the reply timeout, or a broken transport, loses the peer: every channel to
//! it is dropped on this side ([`OutEvent::Lost`] lists those whose local resources the
//! caller must free) and the session is abandoned ([`OutEvent::Disconnect`]); the receiver
//! frees its side when the session ends or falls silent.
//!
//! A channel's life here: `Preparing` (prepare sent) → `Prepared` (the receiver granted it;
//! the caller now sets its own side up) → `Committing` → `Open`; `abort` from `Prepared` or
//! `release` from `Open` → `Closing` → gone once answered. A refused prepare or commit
//! removes it: the receiver holds nothing for it then.

use std::collections::{BTreeMap, VecDeque};

use super::{Seq, SessionId, Timers};
use crate::admission::Nanos;
use crate::protocol::{PeerRequest, PrepareArgs, Reply};
use crate::units::fmt_ns;

/// What the caller asks of the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reserve the receiving side (nothing is reserved with `dry_run`).
    Prepare(PrepareArgs),
    /// The sending side is set up: establish a prepared channel.
    Commit {
        /// Channel id.
        id: u32,
    },
    /// Give up a prepared channel.
    Abort {
        /// Channel id.
        id: u32,
    },
    /// Close an established channel.
    Release {
        /// Channel id.
        id: u32,
    },
}

impl Op {
    /// The request's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Prepare(_) => "prepare",
            Op::Commit { .. } => "commit",
            Op::Abort { .. } => "abort",
            Op::Release { .. } => "release",
        }
    }

    fn request(&self) -> PeerRequest {
        match self {
            Op::Prepare(p) => PeerRequest::Prepare(p.clone()),
            Op::Commit { id } => PeerRequest::Commit { id: *id },
            Op::Abort { id } => PeerRequest::Abort { id: *id },
            Op::Release { id } => PeerRequest::Release { id: *id },
        }
    }
}

/// Names one submitted operation in its [`OutEvent::Done`].
pub type Ticket = u64;

/// A request line to write on session `session`; it is that session's request number `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The session (as numbered by [`OutEvent::Connect`]).
    pub session: SessionId,
    /// Its position in the session.
    pub seq: Seq,
    /// The request.
    pub request: PeerRequest,
}

/// Why an operation did not get the peer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No session could be opened (no connection, or the peer refused the `hello`): nothing
    /// was sent, so nothing is reserved there.
    Unreachable(String),
    /// The peer stopped answering or the session broke: every channel to it is gone.
    Lost(String),
    /// The operation does not fit the channel's state (e.g. `commit` of a channel that is not
    /// prepared); nothing was sent.
    Misused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(m) | Failure::Lost(m) | Failure::Misused(m) => f.write_str(m),
        }
    }
}

/// What the machine tells its caller.
#[derive(Clone, Debug, PartialEq)]
pub enum OutEvent {
    /// Open a connection to the peer for session `session`, then call
    /// [`Outbound::connected`] or [`Outbound::connect_failed`].
    Connect {
        /// The new session's number.
        session: SessionId,
    },
    /// Session `session` is abandoned: drop its connection.
    Disconnect {
        /// The session.
        session: SessionId,
    },
    /// An operation finished: the peer's reply (which may be an error), or why there is none.
    Done {
        /// The operation.
        ticket: Ticket,
        /// Its outcome.
        result: Result<Reply, Failure>,
    },
    /// The peer is lost: these channels, prepared or established, are gone on this side; free
    /// their local resources.
    Lost {
        /// Channel ids.
        channels: Vec<u32>,
        /// Why, for people.
        reason: String,
    },
}

/// A channel's state on the sending side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// `prepare` sent, not answered.
    Preparing,
    /// The receiver holds it; the caller decides `commit` or `abort`.
    Prepared,
    /// `commit` sent, not answered.
    Committing,
    /// Established on both hosts.
    Open,
    /// `abort` or `release` sent; the caller has freed its side.
    Closing,
}

impl ChannelState {
    /// Whether the caller holds local resources for the channel in this state.
    pub fn held_here(self) -> bool {
        matches!(self, Self::Prepared | Self::Committing | Self::Open)
    }
}

/// What a request in flight is for.
#[derive(Clone, Debug)]
enum Purpose {
    Hello,
    Ping,
    Op(Ticket, Op),
}

#[derive(Debug)]
struct InFlight {
    seq: Seq,
    purpose: Purpose,
    sent_at: Nanos,
}

#[derive(Debug)]
enum Session {
    None,
    Connecting {
        id: SessionId,
        since: Nanos,
    },
    Open {
        id: SessionId,
        next_seq: Seq,
        /// Whether the peer accepted the `hello`.
        greeted: bool,
        in_flight: Option<InFlight>,
        last_sent: Nanos,
    },
}

/// The sender's protocol state for one peer.
#[derive(Debug)]
pub struct Outbound {
    me: String,
    timers: Timers,
    session: Session,
    last_session: SessionId,
    next_ticket: Ticket,
    queue: VecDeque<(Ticket, Op)>,
    channels: BTreeMap<u32, ChannelState>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<OutEvent>,
}

impl Outbound {
    /// A machine for a daemon named `me` (its `hello`), with no session yet.
    pub fn new(me: impl Into<String>, timers: Timers) -> Self {
        Self {
            me: me.into(),
            timers,
            session: Session::None,
            last_session: 0,
            next_ticket: 0,
            queue: VecDeque::new(),
            channels: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Queues `op`; its outcome comes as [`OutEvent::Done`] with the returned ticket. An
    /// operation that does not fit its channel's state is refused at once.
    pub fn submit(&mut self, now: Nanos, op: Op) -> Result<Ticket, Failure> {
        let (id, need, next) = match &op {
            Op::Prepare(p) if p.dry_run => (None, None, None),
            Op::Prepare(p) => (Some(p.id), None, Some(ChannelState::Preparing)),
            Op::Commit { id } => (
                Some(*id),
                Some(ChannelState::Prepared),
                Some(ChannelState::Committing),
            ),
            Op::Abort { id } => (
                Some(*id),
                Some(ChannelState::Prepared),
                Some(ChannelState::Closing),
            ),
            Op::Release { id } => (
                Some(*id),
                Some(ChannelState::Open),
                Some(ChannelState::Closing),
            ),
        };
        if let (Some(id), Some(next)) = (id, next) {
            let have = self.channels.get(&id).copied();
            if have != need {
                return Err(Failure::Misused(format!(
                    "channel {id} is {} here; {} needs it {}",
                    have.map_or("unknown".to_string(), |s| format!("{s:?}").to_lowercase()),
                    op.name(),
                    need.map_or("unknown".to_string(), |s| format!("{s:?}").to_lowercase()),
                )));
            }
            self.channels.insert(id, next);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back((ticket, op));
        if matches!(self.session, Session::None) {
            self.last_session += 1;
            self.session = Session::Connecting {
                id: self.last_session,
                since: now,
            };
            self.events.push_back(OutEvent::Connect {
                session: self.last_session,
            });
        }
        self.send_next(now);
        Ok(ticket)
    }

    /// The connection for `session` is up: the session starts with `hello`.
    pub fn connected(&mut self, now: Nanos, session: SessionId) {
        if !matches!(self.session, Session::Connecting { id, .. } if id == session) {
            self.events.push_back(OutEvent::Disconnect { session });
            return;
        }
        self.session = Session::Open {
            id: session,
            next_seq: 0,
            greeted: false,
            in_flight: None,
            last_sent: now,
        };
        self.send(
            now,
            Purpose::Hello,
            PeerRequest::Hello {
                name: self.me.clone(),
            },
        );
    }

    /// No connection for `session`: its queued operations fail as unreachable.
    pub fn connect_failed(&mut self, _now: Nanos, session: SessionId, why: &str) {
        if matches!(self.session, Session::Connecting { id, .. } if id == session) {
            self.unreachable(why.to_string());
        }
    }

    /// The connection of `session` broke (closed, reset, a write failed).
    pub fn transport_failed(&mut self, _now: Nanos, session: SessionId, why: &str) {
        if self.session_id() == Some(session) {
            self.fail_session(why.to_string());
        }
    }

    /// The reply to request `seq` of `session`; anything else (a late or repeated line) is
    /// ignored.
    pub fn handle_reply(&mut self, now: Nanos, session: SessionId, seq: Seq, reply: Reply) {
        let Session::Open {
            id,
            greeted,
            in_flight,
            ..
        } = &mut self.session
        else {
            return;
        };
        if *id != session || in_flight.as_ref().is_none_or(|f| f.seq != seq) {
            return;
        }
        let done = in_flight.take().expect("checked");
        match done.purpose {
            Purpose::Hello if reply.ok => *greeted = true,
            Purpose::Hello => {
                let why = reply
                    .error
                    .map_or_else(|| "error reply without error".into(), |e| e.message);
                self.unreachable(format!("the peer refused the session: {why}"));
                return;
            }
            Purpose::Ping => {}
            Purpose::Op(ticket, op) => {
                match (&op, reply.ok) {
                    (Op::Prepare(p), ok) if !p.dry_run => {
                        self.set_or_remove(p.id, ok.then_some(ChannelState::Prepared))
                    }
                    (Op::Commit { id }, ok) => {
                        self.set_or_remove(*id, ok.then_some(ChannelState::Open))
                    }
                    (Op::Abort { id } | Op::Release { id }, _) => self.set_or_remove(*id, None),
                    (Op::Prepare(_), _) => {}
                }
                self.events.push_back(OutEvent::Done {
                    ticket,
                    result: Ok(reply),
                });
            }
        }
        self.send_next(now);
    }

    /// When [`Outbound::handle_timeout`] should run next (a reply overdue, a heartbeat due).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        match &self.session {
            Session::None => None,
            Session::Connecting { since, .. } => Some(since.saturating_add(self.timers.timeout)),
            Session::Open {
                in_flight: Some(f), ..
            } => Some(f.sent_at.saturating_add(self.timers.timeout)),
            Session::Open { last_sent, .. } => {
                Some(last_sent.saturating_add(self.timers.heartbeat))
            }
        }
    }

    /// Runs the timers: an overdue reply loses the peer; an idle session is pinged.
    pub fn handle_timeout(&mut self, now: Nanos) {
        let Some(due) = self.poll_timeout() else {
            return;
        };
        if now < due {
            return;
        }
        let waited = fmt_ns(self.timers.timeout);
        match &self.session {
            Session::None => {}
            Session::Connecting { .. } => {
                self.unreachable(format!("no connection within {waited}"));
            }
            Session::Open {
                in_flight: Some(f), ..
            } => {
                let why = format!("no reply within {waited}");
                if matches!(f.purpose, Purpose::Hello) {
                    self.unreachable(why);
                } else {
                    self.fail_session(why);
                }
            }
            Session::Open { .. } => self.send(now, Purpose::Ping, PeerRequest::Ping),
        }
    }

    /// The next request line to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<OutEvent> {
        self.events.pop_front()
    }

    /// The channels known here and their states.
    pub fn channels(&self) -> impl Iterator<Item = (u32, ChannelState)> + '_ {
        self.channels.iter().map(|(&id, &s)| (id, s))
    }

    /// The current session, once connected.
    pub fn session_id(&self) -> Option<SessionId> {
        match self.session {
            Session::Open { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether a request is in flight or operations are waiting.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
            || matches!(self.session, Session::Connecting { .. })
            || matches!(
                self.session,
                Session::Open {
                    in_flight: Some(_),
                    ..
                }
            )
    }

    /// Ends the session (this daemon is stopping): the peer frees its side when the connection
    /// closes; nothing is held here any more.
    pub fn close(&mut self) {
        if let Some(session) = self.session_id() {
            self.events.push_back(OutEvent::Disconnect { session });
        }
        self.session = Session::None;
        self.channels.clear();
        self.queue.clear();
        self.transmits.clear();
    }

    fn set_or_remove(&mut self, id: u32, state: Option<ChannelState>) {
        match state {
            Some(s) => {
                self.channels.insert(id, s);
            }
            None => {
                self.channels.remove(&id);
            }
        }
    }

    /// Sends the next queued operation if the session is greeted and idle.
    fn send_next(&mut self, now: Nanos) {
        let ready = matches!(
            self.session,
            Session::Open {
                greeted: true,
                in_flight: None,
                ..
            }
        );
        if !ready {
            return;
        }
        if let Some((ticket, op)) = self.queue.pop_front() {
            let request = op.request();
            self.send(now, Purpose::Op(ticket, op), request);
        }
    }

    fn send(&mut self, now: Nanos, purpose: Purpose, request: PeerRequest) {
        let Session::Open {
            id,
            next_seq,
            in_flight,
            last_sent,
            ..
        } = &mut self.session
        else {
            return;
        };
        let seq = *next_seq;
        *next_seq += 1;
        *last_sent = now;
        *in_flight = Some(InFlight {
            seq,
            purpose,
            sent_at: now,
        });
        self.transmits.push_back(Transmit {
            session: *id,
            seq,
            request,
        });
    }

    /// The session never got going: nothing was reserved through it.
    fn unreachable(&mut self, why: String) {
        let dropped = std::mem::replace(&mut self.session, Session::None);
        if let Session::Open { id, .. } = dropped {
            self.events.push_back(OutEvent::Disconnect { session: id });
        }
        self.transmits.clear();
        for (ticket, _) in std::mem::take(&mut self.queue) {
            self.events.push_back(OutEvent::Done {
                ticket,
                result: Err(Failure::Unreachable(why.clone())),
            });
        }
        // Only submitted operations waited on a session that never opened: roll their
        // channels back (a prepare that was never sent reserved nothing).
        self.channels.clear();
    }

    /// The peer is lost: everything to it goes.
    fn fail_session(&mut self, why: String) {
        let dropped = std::mem::replace(&mut self.session, Session::None);
        let mut failed: Vec<Ticket> = Vec::new();
        if let Session::Open {
            id,
            in_flight:
                Some(InFlight {
                    purpose: Purpose::Op(ticket, _),
                    ..
                }),
            ..
        } = dropped
        {
            failed.push(ticket);
            self.events.push_back(OutEvent::Disconnect { session: id });
        } else if let Session::Open { id, .. } = dropped {
            self.events.push_back(OutEvent::Disconnect { session: id });
        }
        let held: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, s)| s.held_here())
            .map(|(&id, _)| id)
            .collect();
        self.channels.clear();
        self.transmits.clear();
        failed.extend(std::mem::take(&mut self.queue).into_iter().map(|(t, _)| t));
        self.events.push_back(OutEvent::Lost {
            channels: held,
            reason: why.clone(),
        });
        for ticket in failed {
            self.events.push_back(OutEvent::Done {
                ticket,
                result: Err(Failure::Lost(why.clone())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reservation::fixtures::{prepare_args, T};

    fn prep(id: u32) -> Op {
        Op::Prepare(prepare_args(id))
    }

    fn events(o: &mut Outbound) -> Vec<OutEvent> {
        std::iter::from_fn(|| o.poll_event()).collect()
    }

    /// Connects and answers the hello.
    fn greeted() -> Outbound {
        let mut o = Outbound::new("a", T);
        let t = o.submit(0, prep(1)).unwrap();
        assert_eq!(events(&mut o), vec![OutEvent::Connect { session: 1 }]);
        o.connected(0, 1);
        let hello = o.poll_transmit().unwrap();
        assert_eq!(hello.seq, 0);
        assert!(matches!(hello.request, PeerRequest::Hello { .. }));
        assert!(o.poll_transmit().is_none(), "one request at a time");
        o.handle_reply(1, 1, 0, Reply::ok(serde_json::json!({})));
        let p = o.poll_transmit().unwrap();
        assert_eq!(p.seq, 1);
        assert!(matches!(p.request, PeerRequest::Prepare(_)));
        o.handle_reply(2, 1, 1, Reply::ok(serde_json::json!({})));
        assert!(matches!(
            events(&mut o)[..],
            [OutEvent::Done { ticket, result: Ok(_) }] if ticket == t
        ));
        o
    }

    #[test]
    fn commit_needs_a_prepared_channel() {
        let mut o = greeted();
        assert!(matches!(
            o.submit(3, Op::Release { id: 1 }),
            Err(Failure::Misused(_))
        ));
        assert!(matches!(
            o.submit(3, Op::Commit { id: 2 }),
            Err(Failure::Misused(_))
        ));
        o.submit(3, Op::Commit { id: 1 }).unwrap();
        let c = o.poll_transmit().unwrap();
        o.handle_reply(4, 1, c.seq, Reply::ok(serde_json::json!({})));
        assert_eq!(o.channels().collect::<Vec<_>>(), [(1, ChannelState::Open)]);
    }

    #[test]
    fn stale_and_repeated_replies_change_nothing() {
        let mut o = greeted();
        o.submit(3, Op::Commit { id: 1 }).unwrap();
        let c = o.poll_transmit().unwrap();
        // The prepare's reply again, and one from another session.
        o.handle_reply(4, 1, c.seq - 1, Reply::ok(serde_json::json!({})));
        o.handle_reply(4, 2, c.seq, Reply::ok(serde_json::json!({})));
        assert_eq!(
            o.channels().collect::<Vec<_>>(),
            [(1, ChannelState::Committing)]
        );
        assert!(events(&mut o).is_empty());
    }

    #[test]
    fn an_unanswered_request_loses_the_peer_and_everything_to_it() {
        let mut o = greeted();
        o.submit(3, Op::Commit { id: 1 }).unwrap();
        o.poll_transmit().unwrap();
        assert_eq!(o.poll_timeout(), Some(3 + T.timeout));
        o.handle_timeout(3 + T.timeout - 1);
        assert!(events(&mut o).is_empty());
        o.handle_timeout(3 + T.timeout);
        let ev = events(&mut o);
        assert!(ev.contains(&OutEvent::Disconnect { session: 1 }), "{ev:?}");
        assert!(
            ev.iter()
                .any(|e| matches!(e, OutEvent::Lost { channels, .. } if channels == &[1])),
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| matches!(
            e,
            OutEvent::Done {
                result: Err(Failure::Lost(_)),
                ..
            }
        )));
        assert_eq!(o.channels().count(), 0);
        assert_eq!(o.poll_timeout(), None);
    }

    #[test]
    fn an_idle_session_pings_every_heartbeat() {
        let mut o = greeted();
        assert_eq!(o.poll_timeout(), Some(1 + T.heartbeat));
        o.handle_timeout(1 + T.heartbeat);
        let p = o.poll_transmit().unwrap();
        assert_eq!(p.request, PeerRequest::Ping);
        o.handle_reply(150, 1, p.seq, Reply::ok(serde_json::json!({})));
        assert_eq!(o.poll_timeout(), Some(101 + T.heartbeat));
    }

    #[test]
    fn a_refused_hello_fails_as_unreachable_and_rolls_back() {
        let mut o = Outbound::new("a", T);
        let t = o.submit(0, prep(7)).unwrap();
        o.connected(0, 1);
        o.poll_transmit().unwrap();
        o.handle_reply(
            1,
            1,
            0,
            Reply::err(crate::protocol::ApiError::new(
                crate::protocol::ErrorKind::Permission,
                "no",
            )),
        );
        let ev = events(&mut o);
        assert!(ev.iter().any(|e| matches!(
            e,
            OutEvent::Done { ticket, result: Err(Failure::Unreachable(m)) } if *ticket == t && m.contains("no")
        )));
        assert_eq!(o.channels().count(), 0);
        // The next operation opens a new session.
        o.submit(2, prep(7)).unwrap();
        assert!(events(&mut o).contains(&OutEvent::Connect { session: 2 }));
    }
}
