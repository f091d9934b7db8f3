//! The receiver's side of the protocol: every session peers opened to this host and the
//! reservations each holds.
//!
//! The transport reports an accepted connection ([`Inbound::accept`], with the peer names
//! allowed from its address), each request line with its position in the session
//! ([`Inbound::handle_request`]), and a connection's end ([`Inbound::handle_closed`]). The
//! machine checks the `hello`, keeps the session's reservations, and returns
//! [`InAction`]s: a reply to write; a reservation for the caller to make (it owns the
//! resources and runs admission, then answers with [`Inbound::complete_reserve`]); a
//! channel committed; reservations to free; a connection to close. A session that ends, or
//! is silent for [`Timers::idle`], frees everything it held, prepared or committed.

use std::collections::{BTreeMap, VecDeque};

use super::{id_in_use, not_found, Seq, SessionId, Timers};
use crate::admission::Nanos;
use crate::protocol::{ApiError, ErrorKind, Grant, PeerRequest, PrepareArgs, Reply};

/// Names a reservation the caller was asked to make, for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReserveToken {
    /// The session asking.
    pub session: SessionId,
    /// The `prepare`'s position in it.
    pub seq: Seq,
    /// Channel id.
    pub id: u32,
    /// Decide only: nothing is kept.
    pub dry_run: bool,
}

/// Why reservations were freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeReason {
    /// The sender gave up a prepared channel.
    Aborted,
    /// The sender closed an established channel.
    Released,
    /// The session's connection ended.
    SessionEnded,
    /// Nothing was heard on the session for [`Timers::idle`].
    Silent,
    /// The session was refused (its `hello`), or ended while a reservation was being made.
    Refused,
}

/// What the machine asks of its caller.
#[derive(Clone, Debug, PartialEq)]
pub enum InAction {
    /// Write `reply` as the answer to request `seq` of `session`.
    Reply {
        /// The session.
        session: SessionId,
        /// The request answered.
        seq: Seq,
        /// The reply.
        reply: Reply,
    },
    /// Reserve the receiving side of a channel for peer `from` (or decide only, with
    /// `dry_run`), then call [`Inbound::complete_reserve`] with `token`.
    Reserve {
        /// For the answer.
        token: ReserveToken,
        /// The peer's name.
        from: String,
        /// The request.
        args: PrepareArgs,
    },
    /// The channel is established.
    Commit {
        /// Channel id.
        id: u32,
    },
    /// Free these channels' reservations.
    Free {
        /// Channel ids.
        ids: Vec<u32>,
        /// The session they belonged to.
        session: SessionId,
        /// Why.
        reason: FreeReason,
    },
    /// Close the connection of `session`.
    Close {
        /// The session.
        session: SessionId,
    },
}

#[derive(Debug)]
struct Session {
    /// Names a `hello` may give (the peers configured at the connection's address).
    allowed: Vec<String>,
    /// The peer, once greeted.
    peer: Option<String>,
    next_seq: Seq,
    last_heard: Nanos,
    /// A `prepare` waiting for the caller's reservation.
    reserving: Option<Seq>,
}

/// A reservation and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The session holding it.
    pub session: SessionId,
    /// Whether the sender committed it.
    pub committed: bool,
}

/// The receiver's protocol state.
#[derive(Debug)]
pub struct Inbound {
    me: String,
    timers: Timers,
    sessions: BTreeMap<SessionId, Session>,
    held: BTreeMap<u32, Held>,
    actions: VecDeque<InAction>,
}

fn ok() -> Reply {
    Reply::ok(serde_json::json!({}))
}

impl Inbound {
    /// The machine of the receiving host `me` (its name in refusals).
    pub fn new(me: impl Into<String>, timers: Timers) -> Self {
        Self {
            me: me.into(),
            timers,
            sessions: BTreeMap::new(),
            held: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// A connection was accepted as `session`; its `hello` must name one of `allowed`.
    pub fn accept(&mut self, now: Nanos, session: SessionId, allowed: Vec<String>) {
        self.sessions.insert(
            session,
            Session {
                allowed,
                peer: None,
                next_seq: 0,
                last_heard: now,
                reserving: None,
            },
        );
    }

    /// Request `seq` of `session`. Only the session's next request is taken: a repeated or
    /// stale one, or one on a session not open, is dropped without a reply.
    pub fn handle_request(&mut self, now: Nanos, session: SessionId, seq: Seq, req: PeerRequest) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if seq != s.next_seq || s.reserving.is_some() {
            return;
        }
        s.next_seq += 1;
        s.last_heard = now;
        let reply = |reply| InAction::Reply {
            session,
            seq,
            reply,
        };
        match req {
            PeerRequest::Ping => self.actions.push_back(reply(ok())),
            PeerRequest::Hello { name } => {
                if s.allowed.contains(&name) {
                    s.peer = Some(name);
                    self.actions.push_back(reply(ok()));
                } else {
                    self.actions.push_back(reply(Reply::err(ApiError::new(
                        ErrorKind::Permission,
                        format!("'{name}' is not a configured peer at this address"),
                    ))));
                    self.end(session, FreeReason::Refused);
                    self.actions.push_back(InAction::Close { session });
                }
            }
            req => {
                let Some(from) = s.peer.clone() else {
                    self.actions.push_back(reply(Reply::err(ApiError::new(
                        ErrorKind::Protocol,
                        "the first request of a session must be hello",
                    ))));
                    return;
                };
                self.request(session, seq, from, req);
            }
        }
    }

    fn request(&mut self, session: SessionId, seq: Seq, from: String, req: PeerRequest) {
        let reply = |reply| InAction::Reply {
            session,
            seq,
            reply,
        };
        let mine = |held: &BTreeMap<u32, Held>, id: u32| {
            held.get(&id).is_some_and(|h| h.session == session)
        };
        match req {
            PeerRequest::Prepare(args) => {
                if !args.dry_run && self.held.contains_key(&args.id) {
                    let e = id_in_use(args.id, &self.me);
                    self.actions.push_back(reply(Reply::err(e)));
                    return;
                }
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.reserving = Some(seq);
                }
                self.actions.push_back(InAction::Reserve {
                    token: ReserveToken {
                        session,
                        seq,
                        id: args.id,
                        dry_run: args.dry_run,
                    },
                    from,
                    args,
                });
            }
            PeerRequest::Commit { id } if mine(&self.held, id) => {
                self.held.get_mut(&id).expect("checked").committed = true;
                self.actions.push_back(InAction::Commit { id });
                self.actions.push_back(reply(ok()));
            }
            PeerRequest::Abort { id } | PeerRequest::Release { id } if mine(&self.held, id) => {
                let committed = self.held.remove(&id).expect("checked").committed;
                self.actions.push_back(InAction::Free {
                    ids: vec![id],
                    session,
                    reason: if committed {
                        FreeReason::Released
                    } else {
                        FreeReason::Aborted
                    },
                });
                self.actions.push_back(reply(ok()));
            }
            PeerRequest::Commit { id }
            | PeerRequest::Abort { id }
            | PeerRequest::Release { id } => {
                self.actions.push_back(reply(Reply::err(not_found(id))))
            }
            PeerRequest::Hello { .. } | PeerRequest::Ping => unreachable!("handled by the caller"),
        }
    }

    /// The caller's answer to [`InAction::Reserve`]: the grant (the reservation is now held
    /// by the session) or why not. If the session ended meanwhile, a reservation made for it
    /// is freed at once.
    pub fn complete_reserve(
        &mut self,
        now: Nanos,
        token: ReserveToken,
        result: Result<Grant, ApiError>,
    ) {
        let waiting = self
            .sessions
            .get_mut(&token.session)
            .filter(|s| s.reserving == Some(token.seq));
        let Some(s) = waiting else {
            if result.is_ok() && !token.dry_run {
                self.actions.push_back(InAction::Free {
                    ids: vec![token.id],
                    session: token.session,
                    reason: FreeReason::Refused,
                });
            }
            return;
        };
        s.reserving = None;
        s.last_heard = s.last_heard.max(now);
        if result.is_ok() && !token.dry_run {
            self.held.insert(
                token.id,
                Held {
                    session: token.session,
                    committed: false,
                },
            );
        }
        self.actions.push_back(InAction::Reply {
            session: token.session,
            seq: token.seq,
            reply: Reply::from_result(result),
        });
    }

    /// The connection of `session` ended: everything it held is freed.
    pub fn handle_closed(&mut self, _now: Nanos, session: SessionId) {
        self.end(session, FreeReason::SessionEnded);
    }

    /// When [`Inbound::handle_timeout`] should run next (the first session to fall silent).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.sessions
            .values()
            .filter(|s| s.reserving.is_none())
            .map(|s| s.last_heard.saturating_add(self.timers.idle()))
            .min()
    }

    /// Ends every session silent for [`Timers::idle`]: frees what it held, closes it.
    pub fn handle_timeout(&mut self, now: Nanos) {
        let idle = self.timers.idle();
        let silent: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.reserving.is_none() && s.last_heard.saturating_add(idle) <= now)
            .map(|(&id, _)| id)
            .collect();
        for session in silent {
            self.end(session, FreeReason::Silent);
            self.actions.push_back(InAction::Close { session });
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<InAction> {
        self.actions.pop_front()
    }

    /// The reservations sessions hold.
    pub fn held(&self) -> impl Iterator<Item = (u32, Held)> + '_ {
        self.held.iter().map(|(&id, &h)| (id, h))
    }

    /// The peer a session greeted as, if it is open and greeted.
    pub fn peer(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(&session)?.peer.as_deref()
    }

    fn end(&mut self, session: SessionId, reason: FreeReason) {
        if self.sessions.remove(&session).is_none() {
            return;
        }
        let ids: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.session == session)
            .map(|(&id, _)| id)
            .collect();
        for id in &ids {
            self.held.remove(id);
        }
        if !ids.is_empty() {
            self.actions.push_back(InAction::Free {
                ids,
                session,
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{Admitted, ChannelRequest};
    use crate::reservation::fixtures::{prepare_args, T};

    fn prepare(id: u32) -> PeerRequest {
        PeerRequest::Prepare(prepare_args(id))
    }

    fn grant(id: u32) -> Grant {
        Grant {
            id,
            host: "b".into(),
            deadline: 1,
            least_deadline: 1,
            admitted: Admitted {
                id,
                core: 0,
                txq: 0,
                cpu_deadline: 0,
                link_deadline: 0,
                packets: 1,
                buffer_messages: 1,
                buffer_bytes: 1,
                cpu_cost: 0,
                link_cost: 0,
                cpu_utilisation_ppm: 0,
                link_utilisation_ppm: 0,
                core_utilisation_ppm: 0,
                txq_utilisation_ppm: 0,
                request: ChannelRequest {
                    mmax: 1,
                    imin: 1,
                    bmax: 1,
                    deadline: 1,
                    core: None,
                    txq: None,
                },
            },
        }
    }

    fn actions(i: &mut Inbound) -> Vec<InAction> {
        std::iter::from_fn(|| i.poll_action()).collect()
    }

    fn greeted() -> Inbound {
        let mut i = Inbound::new("b", T);
        i.accept(0, 1, vec!["a".into()]);
        i.handle_request(0, 1, 0, PeerRequest::Hello { name: "a".into() });
        assert!(matches!(&actions(&mut i)[..], [InAction::Reply { reply, .. }] if reply.ok));
        i
    }

    fn reserve(i: &mut Inbound, seq: Seq, id: u32) {
        i.handle_request(seq * 10, 1, seq, prepare(id));
        let [InAction::Reserve { token, .. }] = actions(i)[..] else {
            panic!("asks for the reservation");
        };
        i.complete_reserve(seq * 10, token, Ok(grant(id)));
        assert!(matches!(&actions(i)[..], [InAction::Reply { reply, .. }] if reply.ok));
    }

    #[test]
    fn a_stranger_is_turned_away_and_requests_need_a_hello() {
        let mut i = Inbound::new("b", T);
        i.accept(0, 1, vec!["a".into()]);
        i.handle_request(0, 1, 0, prepare(1));
        let a = actions(&mut i);
        assert!(
            matches!(&a[..], [InAction::Reply { reply, .. }] if reply.error.as_ref().unwrap().kind == ErrorKind::Protocol)
        );
        i.handle_request(0, 1, 1, PeerRequest::Hello { name: "m".into() });
        let a = actions(&mut i);
        assert!(
            matches!(&a[..], [InAction::Reply { reply, .. }, InAction::Close { session: 1 }]
                if reply.error.as_ref().unwrap().kind == ErrorKind::Permission),
            "{a:?}"
        );
        // The session is gone: later lines are dropped.
        i.handle_request(0, 1, 2, PeerRequest::Ping);
        assert!(actions(&mut i).is_empty());
    }

    #[test]
    fn repeated_and_stale_requests_are_dropped() {
        let mut i = greeted();
        reserve(&mut i, 1, 5);
        i.handle_request(20, 1, 2, PeerRequest::Abort { id: 5 });
        assert_eq!(actions(&mut i).len(), 2);
        // The prepare again (a duplicate on the link) reserves nothing.
        i.handle_request(30, 1, 1, prepare(5));
        assert!(actions(&mut i).is_empty());
        assert_eq!(i.held().count(), 0);
    }

    #[test]
    fn commits_aborts_and_releases_are_per_session() {
        let mut i = greeted();
        reserve(&mut i, 1, 5);
        i.accept(0, 2, vec!["a".into()]);
        i.handle_request(0, 2, 0, PeerRequest::Hello { name: "a".into() });
        i.handle_request(0, 2, 1, PeerRequest::Commit { id: 5 });
        let a = actions(&mut i);
        assert!(
            matches!(&a[..], [_, InAction::Reply { reply, .. }] if reply.error.as_ref().unwrap().kind == ErrorKind::NotFound),
            "{a:?}"
        );
        i.handle_request(20, 1, 2, PeerRequest::Commit { id: 5 });
        assert_eq!(
            actions(&mut i)[0],
            InAction::Commit { id: 5 },
            "the owner commits"
        );
        // The same id prepared again is refused naming the id.
        i.handle_request(30, 1, 3, prepare(5));
        let a = actions(&mut i);
        assert!(
            matches!(&a[..], [InAction::Reply { reply, .. }] if reply.error.as_ref().unwrap().field.as_deref() == Some("id"))
        );
    }

    #[test]
    fn a_silent_or_closed_session_frees_everything() {
        let mut i = greeted();
        reserve(&mut i, 1, 5);
        reserve(&mut i, 2, 6);
        assert_eq!(i.poll_timeout(), Some(20 + T.idle()));
        i.handle_timeout(20 + T.idle() - 1);
        assert!(actions(&mut i).is_empty());
        i.handle_timeout(20 + T.idle());
        assert_eq!(
            actions(&mut i),
            vec![
                InAction::Free {
                    ids: vec![5, 6],
                    session: 1,
                    reason: FreeReason::Silent
                },
                InAction::Close { session: 1 }
            ]
        );
        let mut i = greeted();
        reserve(&mut i, 1, 5);
        i.handle_closed(30, 1);
        assert!(matches!(
            &actions(&mut i)[..],
            [InAction::Free {
                reason: FreeReason::SessionEnded,
                ..
            }]
        ));
        assert_eq!(i.held().count(), 0);
    }

    #[test]
    fn a_reservation_finished_after_its_session_ended_is_freed() {
        let mut i = greeted();
        i.handle_request(10, 1, 1, prepare(5));
        let [InAction::Reserve { token, .. }] = actions(&mut i)[..] else {
            panic!()
        };
        i.handle_closed(11, 1);
        i.complete_reserve(12, token, Ok(grant(5)));
        assert_eq!(
            actions(&mut i),
            vec![InAction::Free {
                ids: vec![5],
                session: 1,
                reason: FreeReason::Refused
            }]
        );
        assert_eq!(i.held().count(), 0);
    }
}
