//! Both sides of the reservation protocol driven in virtual time over a simulated link that
//! loses, delays (so reorders) and duplicates what it carries, and cuts off for a while.
//!
//! Host A runs an [`Outbound`] and a sender that opens, commits or aborts (as if its own
//! admission refused), and closes channels, holding a local reservation from a granted
//! prepare until it aborts, closes or loses the channel. Host B runs an [`Inbound`] and a
//! receiver with room for a few channels. A checker requires at every instant that each
//! machine agrees with its host and that B holds nothing for A's current session that A does
//! not know of; and once the link heals and the timers have run: what each machine holds equals what its host holds, B holds exactly
//! what A holds, committed, and every operation A submitted finished. The ablations at the end
//! break one rule each (a receiver deaf to silence, a sender deaf to loss, a transport that
//! numbers requests as they arrive) and show the checker catches it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use control::admission::{Admitted, ChannelRequest, Nanos};
use control::protocol::{ApiError, ErrorKind, Grant, PeerRequest, PrepareArgs, Reply};
use control::reservation::inbound::FreeReason;
use control::reservation::outbound::ChannelState;
use control::reservation::{
    id_in_use, Failure, InAction, Inbound, Op, OutEvent, Outbound, Seq, SessionId, Ticket, Timers,
};
use proptest::prelude::*;

const TIMERS: Timers = Timers {
    heartbeat: 100,
    timeout: 400,
};
/// Channels B has room for.
const ROOM: usize = 6;

/// splitmix64: the simulation's only source of chance, so a seed replays a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// One rule broken on purpose, to show the checker notices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ablation {
    None,
    /// B does not free what a silent session held.
    ReceiverIgnoresSilence,
    /// A keeps its local reservations when the peer is lost.
    SenderIgnoresLoss,
    /// Lines are numbered as they arrive instead of by their position in the session (as the
    /// daemon's glue does, which only TCP makes right).
    NumberOnArrival,
}

#[derive(Clone, Debug)]
struct LinkCfg {
    loss: f64,
    dup: f64,
    /// Largest extra delay; two lines sent close together may swap.
    jitter: Nanos,
    /// Chance an operation slot starts a cut-off of the link.
    cut: f64,
}

#[derive(Clone, Debug)]
enum Pkt {
    ToB(SessionId, Seq, PeerRequest),
    ToA(SessionId, Seq, Reply),
    /// A dropped the connection (B sees it end).
    FinToB(SessionId),
    /// B closed the connection (A sees it break).
    FinToA(SessionId),
    Accept(SessionId),
    Connected(SessionId),
    ConnectFailed(SessionId),
}

struct Sim {
    now: Nanos,
    rng: Rng,
    link: LinkCfg,
    ablation: Ablation,
    /// In flight: (delivery time, order of sending, packet).
    wire: Vec<(Nanos, u64, Pkt)>,
    sent: u64,
    /// The link carries nothing until then.
    cut_until: Nanos,
    a: Outbound,
    b: Inbound,
    /// A's local reservations (its own admission), by channel.
    a_local: BTreeSet<u32>,
    /// A's operations not finished yet.
    a_pending: BTreeMap<Ticket, Op>,
    next_id: u32,
    lost_ids: Vec<u32>,
    /// B's reservations (its resources), committed or not.
    b_res: BTreeMap<u32, bool>,
    /// Requests delivered to B, replies to A, per session (for
    /// [`Ablation::NumberOnArrival`]).
    b_arrived: BTreeMap<SessionId, Seq>,
    a_arrived: BTreeMap<SessionId, Seq>,
    log: VecDeque<String>,
}

impl Sim {
    fn new(seed: u64, link: LinkCfg, ablation: Ablation) -> Self {
        Self {
            now: 0,
            rng: Rng(seed),
            link,
            ablation,
            wire: Vec::new(),
            sent: 0,
            cut_until: 0,
            a: Outbound::new("a", TIMERS),
            b: Inbound::new("b", TIMERS),
            a_local: BTreeSet::new(),
            a_pending: BTreeMap::new(),
            next_id: 0,
            lost_ids: Vec::new(),
            b_res: BTreeMap::new(),
            b_arrived: BTreeMap::new(),
            a_arrived: BTreeMap::new(),
            log: VecDeque::new(),
        }
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(format!("t={} {s}", self.now));
    }

    /// Puts `p` on the link: maybe lost, maybe twice, each copy with its own delay.
    fn send(&mut self, p: Pkt) {
        if self.now < self.cut_until || self.rng.chance(self.link.loss) {
            return;
        }
        let copies = if self.rng.chance(self.link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.link.jitter + 1);
            self.sent += 1;
            self.wire.push((at, self.sent, p.clone()));
        }
    }

    fn deliver(&mut self, p: Pkt) {
        let now = self.now;
        match p {
            Pkt::ToB(s, seq, req) => {
                let seq = if self.ablation == Ablation::NumberOnArrival {
                    let n = self.b_arrived.entry(s).or_default();
                    *n += 1;
                    *n - 1
                } else {
                    seq
                };
                self.b.handle_request(now, s, seq, req);
            }
            Pkt::ToA(s, seq, reply) => {
                let seq = if self.ablation == Ablation::NumberOnArrival {
                    let n = self.a_arrived.entry(s).or_default();
                    *n += 1;
                    *n - 1
                } else {
                    seq
                };
                self.a.handle_reply(now, s, seq, reply)
            }
            Pkt::FinToB(s) => self.b.handle_closed(now, s),
            Pkt::FinToA(s) => self.a.transport_failed(now, s, "closed by the peer"),
            Pkt::Accept(s) => self.b.accept(now, s, vec!["a".into()]),
            Pkt::Connected(s) => self.a.connected(now, s),
            Pkt::ConnectFailed(s) => self.a.connect_failed(now, s, "connection refused"),
        }
    }

    fn submit(&mut self, op: Op) {
        match self.a.submit(self.now, op.clone()) {
            Ok(t) => {
                self.a_pending.insert(t, op);
            }
            Err(f) => panic!("the sender only asks what fits: {f}"),
        }
    }

    /// A's reaction to its machine's events, as the daemon's sender does.
    fn a_event(&mut self, e: OutEvent) {
        match e {
            OutEvent::Connect { session } => {
                // The handshake crosses the link both ways; a cut link refuses it.
                if self.now < self.cut_until {
                    let at = self.now + TIMERS.timeout / 2;
                    self.sent += 1;
                    self.wire.push((at, self.sent, Pkt::ConnectFailed(session)));
                } else {
                    let d = 1 + self.rng.below(self.link.jitter + 1);
                    self.sent += 2;
                    self.wire
                        .push((self.now + d, self.sent - 1, Pkt::Accept(session)));
                    self.wire
                        .push((self.now + 2 * d, self.sent, Pkt::Connected(session)));
                }
            }
            OutEvent::Disconnect { session } => self.send(Pkt::FinToB(session)),
            OutEvent::Lost { channels, reason } => {
                self.note(format!("A lost the peer ({reason}): {channels:?}"));
                if self.ablation != Ablation::SenderIgnoresLoss {
                    for id in &channels {
                        self.a_local.remove(id);
                    }
                }
                self.lost_ids.extend(channels);
            }
            OutEvent::Done { ticket, result } => {
                let op = self.a_pending.remove(&ticket).expect("a ticket A holds");
                self.a_done(op, result);
            }
        }
    }

    fn a_done(&mut self, op: Op, result: Result<Reply, Failure>) {
        let ok = matches!(&result, Ok(r) if r.ok);
        match op {
            Op::Prepare(p) if ok && !p.dry_run => {
                // A's own admission: most fit; the others abort.
                if self.rng.chance(0.75) {
                    self.a_local.insert(p.id);
                    self.submit(Op::Commit { id: p.id });
                } else {
                    self.submit(Op::Abort { id: p.id });
                }
            }
            Op::Commit { id } if !ok => {
                self.a_local.remove(&id);
            }
            _ => {}
        }
    }

    fn b_action(&mut self, a: InAction) {
        match a {
            InAction::Reply {
                session,
                seq,
                reply,
            } => self.send(Pkt::ToA(session, seq, reply)),
            InAction::Reserve { token, args, .. } => {
                let r = if !args.dry_run && self.b_res.contains_key(&args.id) {
                    Err(id_in_use(args.id, "b"))
                } else if self.b_res.len() >= ROOM {
                    Err(ApiError::new(ErrorKind::Refused, "no room at b"))
                } else {
                    if !args.dry_run {
                        self.b_res.insert(args.id, false);
                    }
                    Ok(grant(args.id))
                };
                self.b.complete_reserve(self.now, token, r);
            }
            InAction::Commit { id } => {
                *self.b_res.get_mut(&id).expect("B holds what it commits") = true;
            }
            InAction::Free {
                ids,
                reason,
                session,
            } => {
                self.note(format!("B frees {ids:?} of session {session}: {reason:?}"));
                if !(self.ablation == Ablation::ReceiverIgnoresSilence
                    && reason == FreeReason::Silent)
                {
                    for id in ids {
                        self.b_res.remove(&id);
                    }
                }
            }
            InAction::Close { session } => self.send(Pkt::FinToA(session)),
        }
    }

    /// Moves everything the machines have to say until both are quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.send(Pkt::ToB(t.session, t.seq, t.request));
            }
            while let Some(e) = self.a.poll_event() {
                moved = true;
                self.a_event(e);
            }
            while let Some(a) = self.b.poll_action() {
                moved = true;
                self.b_action(a);
            }
            if !moved {
                break;
            }
        }
    }

    /// One scripted action of A's user.
    fn act(&mut self) {
        if self.rng.chance(self.link.cut) {
            let len = self.rng.below(4 * TIMERS.timeout);
            self.cut_until = self.now + len;
            self.note(format!("link cut for {len}"));
        }
        let open: Vec<u32> = self
            .a
            .channels()
            .filter(|(_, s)| *s == ChannelState::Open)
            .map(|(id, _)| id)
            .collect();
        match self.rng.below(10) {
            0..=4 => {
                // A fresh id, or now and then one lost earlier (B may still hold it).
                let known: BTreeSet<u32> = self.a.channels().map(|(id, _)| id).collect();
                let id = match self.lost_ids.pop() {
                    Some(id) if self.rng.chance(0.3) && !known.contains(&id) => id,
                    _ => {
                        self.next_id += 1;
                        self.next_id
                    }
                };
                self.submit(Op::Prepare(prepare(id, false)));
            }
            5 => self.submit(Op::Prepare(prepare(u32::MAX, true))),
            6..=8 if !open.is_empty() => {
                let id = open[self.rng.below(open.len() as u64) as usize];
                // The sender frees its side first, then tells the receiver.
                self.a_local.remove(&id);
                self.submit(Op::Release { id });
            }
            _ => {}
        }
    }

    /// Runs the clock to `until`, acting every `every` (none when 0).
    fn run(&mut self, until: Nanos, every: Nanos) -> Result<(), String> {
        let mut next_act = if every > 0 { self.now + every } else { until };
        loop {
            self.pump();
            self.check_always()?;
            let wire = self.wire.iter().map(|w| w.0).min();
            let t = [
                wire,
                self.a.poll_timeout(),
                self.b.poll_timeout(),
                (every > 0).then_some(next_act),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(t) = t.filter(|&t| t <= until) else {
                self.now = until;
                return Ok(());
            };
            self.now = self.now.max(t);
            // Deliver in time order, then in order of sending.
            self.wire.sort_by_key(|w| (w.0, w.1));
            while self.wire.first().is_some_and(|w| w.0 <= self.now) {
                let (_, _, p) = self.wire.remove(0);
                self.deliver(p);
                self.pump();
            }
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
            if every > 0 && self.now >= next_act {
                self.act();
                next_act = self.now + 1 + self.rng.below(2 * every);
            }
        }
    }

    /// What must hold at every instant: each machine agrees with its own host, and B holds
    /// nothing for A's session that A does not know of.
    fn check_always(&self) -> Result<(), String> {
        let a_held: BTreeSet<u32> = self
            .a
            .channels()
            .filter(|(_, s)| s.held_here())
            .map(|(id, _)| id)
            .collect();
        if self.ablation != Ablation::SenderIgnoresLoss && !self.a_local.is_subset(&a_held) {
            return Err(format!(
                "A holds {:?} locally but its machine only {a_held:?}",
                self.a_local
            ));
        }
        // Whatever B holds for A's current session, A knows (committed: A sent the commit).
        if let Some(current) = self.a.session_id() {
            let known: BTreeMap<u32, ChannelState> = self.a.channels().collect();
            for (id, h) in self.b.held().filter(|(_, h)| h.session == current) {
                let ok = match known.get(&id) {
                    None => false,
                    Some(s) if h.committed => matches!(
                        s,
                        ChannelState::Committing | ChannelState::Open | ChannelState::Closing
                    ),
                    Some(_) => true,
                };
                if !ok {
                    return Err(format!(
                        "B holds channel {id} ({}) for session {current}; A has it {:?}",
                        if h.committed { "committed" } else { "prepared" },
                        known.get(&id)
                    ));
                }
            }
        }
        let b_held: BTreeSet<u32> = self.b.held().map(|(id, _)| id).collect();
        let b_res: BTreeSet<u32> = self.b_res.keys().copied().collect();
        if self.ablation == Ablation::None && b_held != b_res {
            return Err(format!(
                "B's machine holds {b_held:?}, its resources {b_res:?}"
            ));
        }
        Ok(())
    }

    /// What must hold once the link has healed and the timers have run.
    fn check_settled(&self) -> Result<(), String> {
        let why = |m: String| {
            format!(
                "{m}\nlast events:\n{}",
                Vec::from(self.log.clone()).join("\n")
            )
        };
        if !self.a_pending.is_empty() {
            return Err(why(format!(
                "operations never finished: {:?}",
                self.a_pending
            )));
        }
        let a_open: BTreeSet<u32> = self
            .a
            .channels()
            .inspect(|(id, s)| assert_eq!(*s, ChannelState::Open, "channel {id} settled"))
            .map(|(id, _)| id)
            .collect();
        if self.a_local != a_open {
            return Err(why(format!(
                "A holds {:?} locally, its machine has {a_open:?} open",
                self.a_local
            )));
        }
        let b: BTreeSet<u32> = self.b_res.keys().copied().collect();
        if b != self.a_local {
            return Err(why(format!("A holds {:?}, B holds {b:?}", self.a_local)));
        }
        if let Some((id, _)) = self.b_res.iter().find(|(_, c)| !**c) {
            return Err(why(format!("B holds channel {id} uncommitted")));
        }
        Ok(())
    }
}

fn prepare(id: u32, dry_run: bool) -> PrepareArgs {
    PrepareArgs {
        id,
        mmax: 100,
        imin: 1000,
        bmax: 1,
        budget: 10_000,
        end_to_end: 20_000,
        core: None,
        dry_run,
        best_effort: false,
    }
}

fn grant(id: u32) -> Grant {
    Grant {
        id,
        host: "b".into(),
        deadline: 5000,
        least_deadline: 4000,
        admitted: Admitted {
            id,
            core: 0,
            txq: 0,
            cpu_deadline: 5000,
            link_deadline: 5000,
            packets: 1,
            buffer_messages: 1,
            buffer_bytes: 100,
            cpu_cost: 10,
            link_cost: 10,
            cpu_utilisation_ppm: 10,
            link_utilisation_ppm: 10,
            core_utilisation_ppm: 10,
            txq_utilisation_ppm: 10,
            request: ChannelRequest {
                mmax: 100,
                imin: 1000,
                bmax: 1,
                deadline: 5000,
                core: None,
                txq: Some(0),
            },
        },
    }
}

/// A run: `ops` actions of A's user on a bad link, then the link heals and the clock runs
/// long enough for every timer; the settled state is checked.
fn scenario(seed: u64, link: LinkCfg, ablation: Ablation, ops: u64) -> Result<(), String> {
    let mut sim = Sim::new(seed, link, ablation);
    let every = 40;
    sim.run(ops * every, every)?;
    sim.link.loss = 0.0;
    sim.link.cut = 0.0;
    sim.cut_until = 0;
    let settle = sim.now + 10 * (TIMERS.idle() + TIMERS.timeout);
    sim.run(settle, 0)?;
    sim.check_settled()
}

fn bad_link() -> LinkCfg {
    LinkCfg {
        loss: 0.05,
        dup: 0.2,
        jitter: 30,
        cut: 0.02,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever the link does, once it heals both hosts hold the same committed channels.
    #[test]
    fn both_hosts_agree_once_the_link_settles(
        seed in any::<u64>(),
        loss in 0.0f64..0.25,
        dup in 0.0f64..0.4,
        jitter in 0u64..80,
        cut in 0.0f64..0.05,
    ) {
        let link = LinkCfg { loss, dup, jitter, cut };
        if let Err(e) = scenario(seed, link, Ablation::None, 300) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// A clean link keeps every channel: nothing is lost, and what was opened stays open on both.
#[test]
fn a_clean_link_loses_nothing() {
    let clean = LinkCfg {
        loss: 0.0,
        dup: 0.0,
        jitter: 10,
        cut: 0.0,
    };
    let mut sim = Sim::new(7, clean, Ablation::None);
    sim.run(200 * 40, 40).unwrap();
    sim.run(sim.now + 5000, 0).unwrap();
    sim.check_settled().unwrap();
    assert!(sim.lost_ids.is_empty(), "lost {:?}", sim.lost_ids);
    assert!(!sim.a_local.is_empty(), "the script opened channels");
    assert_eq!(sim.a.session_id(), Some(1), "one session throughout");
}

/// Aborts and closes free everything on both hosts.
#[test]
fn aborting_and_closing_everything_leaves_nothing() {
    let mut sim = Sim::new(11, bad_link(), Ablation::None);
    sim.run(100 * 40, 40).unwrap();
    sim.link.loss = 0.0;
    sim.link.cut = 0.0;
    sim.cut_until = 0;
    sim.run(sim.now + 5000, 0).unwrap();
    let open: Vec<u32> = sim.a.channels().map(|(id, _)| id).collect();
    for id in open {
        sim.a_local.remove(&id);
        sim.submit(Op::Release { id });
    }
    sim.run(sim.now + 5000, 0).unwrap();
    sim.check_settled().unwrap();
    assert!(sim.a_local.is_empty());
    assert!(sim.b_res.is_empty(), "B holds {:?}", sim.b_res);
}

/// The link goes dark with channels open: A drops them within a heartbeat and a reply
/// timeout, B within its idle limit, and neither before the policy says.
#[test]
fn heartbeat_loss_tears_down_both_sides_per_policy() {
    let jitter = 10;
    let clean = LinkCfg {
        loss: 0.0,
        dup: 0.0,
        jitter,
        cut: 0.0,
    };
    let mut sim = Sim::new(3, clean, Ablation::None);
    for id in 1..=4 {
        sim.submit(Op::Prepare(prepare(id, false)));
        sim.run(sim.now + 100, 0).unwrap();
    }
    // Let the commits through; then some heartbeats.
    sim.run(sim.now + 1000, 0).unwrap();
    let held = sim.a_local.clone();
    assert!(!held.is_empty());
    assert_eq!(sim.b_res.keys().copied().collect::<BTreeSet<_>>(), held);
    let cut = sim.now;
    sim.cut_until = Nanos::MAX;
    let rtt = 2 * (jitter + 1);
    // Not before the policy allows.
    let a_earliest = cut + TIMERS.timeout - rtt;
    let b_earliest = cut + TIMERS.idle() - TIMERS.heartbeat - rtt;
    sim.run(a_earliest.min(b_earliest) - 1, 0).unwrap();
    assert_eq!(
        sim.a_local, held,
        "A keeps its channels until a reply is overdue"
    );
    assert_eq!(
        sim.b_res.len(),
        held.len(),
        "B keeps them while the session may live"
    );
    // And no later than it says.
    sim.run(cut + TIMERS.heartbeat + TIMERS.timeout, 0).unwrap();
    assert!(
        sim.a_local.is_empty(),
        "A dropped everything to the lost peer"
    );
    assert_eq!(sim.a.channels().count(), 0);
    sim.run(cut + TIMERS.idle(), 0).unwrap();
    assert!(
        sim.b_res.is_empty(),
        "B freed the silent session: {:?}",
        sim.b_res
    );
    assert_eq!(sim.b.held().count(), 0);
}

/// Runs `seeds` scenarios with `ablation`; how many the checker refused.
fn caught(ablation: Ablation, seeds: u64) -> usize {
    (0..seeds)
        .filter(|&s| scenario(1000 + s, bad_link(), ablation, 300).is_err())
        .count()
}

#[test]
fn the_checker_passes_the_real_rules() {
    assert_eq!(caught(Ablation::None, 40), 0);
}

#[test]
fn the_checker_catches_a_receiver_deaf_to_silence() {
    assert!(caught(Ablation::ReceiverIgnoresSilence, 40) > 0);
}

#[test]
fn the_checker_catches_a_sender_deaf_to_loss() {
    assert!(caught(Ablation::SenderIgnoresLoss, 40) > 0);
}

#[test]
fn the_checker_catches_requests_numbered_on_arrival() {
    assert!(caught(Ablation::NumberOnArrival, 40) > 0);
}
