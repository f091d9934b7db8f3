//! The control thread: owns the channel table and both admission controllers, and is the
//! only writer of the dataplane's configuration.
//!
//! Requests arrive as [`Msg`]s from the control socket's connection threads and from peers'
//! sessions, one at a time, so every decision sees a consistent table. Opening a channel:
//!
//! 1. validate the request (fields, destination, memory budget);
//! 2. place it: find this host's least admissible bound `d_s` on the chosen core
//!    ([`control::e2e`]);
//! 3. ask the receiving side (this daemon's own receive side for `local`, else the peer
//!    through the reservation protocol) to `prepare` with the budget `D − network −
//!    least(d_s)`; it reserves its share;
//! 4. admit this host's share `d_s = D − network − d_r`, open the channel on its core through
//!    the core's control ring (the reply waits for the core's acknowledgement), start the
//!    built-in source if asked, `commit` the receiving side, persist the table.
//!
//! Any failure after a reservation undoes it, on both sides, before the reply. Closing stops
//! the source, closes the channel on its core (draining or discarding), frees this host's
//! reservation and tells the receiving side to free its own.
//!
//! # Files
//! This file holds the table's types, the message loop ([`Control::handle`], the waits that
//! keep answering peers and readers) and shutdown. By concern:
//! - `validate`: what a request must name and fit before anything is reserved, and the words
//!   of admission's refusals;
//! - `placement`: the core, the channel id, the frames' addresses;
//! - `open`: the sending side's open and close (the steps above, and their undoing);
//! - `receive`: the receiving side's admission, receiver and release;
//! - `peering`: the glue to [`control::reservation`]'s machines, both directions;
//! - `stats`: `list`, `show`, `stats` and the metrics text;
//! - `policy`: `policy set` and SIGHUP reloads;
//! - `persist`: the state file, and restoring from it;
//! - `attach`: the client library's shared-memory rings.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::admission::memory::{MachineMemory, MemoryBudget};
use control::admission::Admission;
use control::config::{CloseMode, DaemonConfig};
use control::protocol::{
    ApiError, ChannelInfo, ChannelStatsInfo, ErrorKind, IncomingInfo, OpenArgs, PolicyInfo, Reply,
    Request,
};
use control::reservation::{not_found, Inbound, Timers};
use control::state::{RejectedRecord, SaveFailure};
use dataplane::channel::{ChannelShared, Sender};
use dataplane::core::CoreStats;
use dataplane::rx::Receiver;

use super::dp::Dataplane;
use super::peer::SessionCloser;
use super::server::ConnId;
use super::traffic::{Sink, SourceThread};
use super::Msg;

mod attach;
mod capture;
mod ledger;
mod open;
mod peering;
mod persist;
mod placement;
mod policy;
mod receive;
mod stats;
mod validate;

/// Receive ring of an incoming channel, messages.
const RX_RING: u32 = 1024;
/// How often the channel table is published to the DPDK telemetry endpoints: fresh enough for
/// an operator's `dpdk-telemetry.py`, rare enough that the control thread's statistics pass
/// (histogram snapshots) costs nothing noticeable.
const TELEMETRY_PERIOD: Duration = Duration::from_millis(200);
/// Attempts at a channel id the receiver does not already use.
const ID_ATTEMPTS: u32 = 32;
/// Reservations from this size up are allocated on a helper thread while the control thread
/// answers others ([`Control::off_thread`]); below it, faulting the pages in takes well under
/// a millisecond and a thread would cost more than it saves.
const OFF_THREAD_BYTES: u64 = 4 << 20;
/// How often the control thread looks up from other clients to see whether the helper
/// thread finished: short against the 100 ms other clients may wait, long enough not to spin.
const OFF_THREAD_POLL: Duration = Duration::from_millis(1);
/// How often a failed save of the state file is retried: the failure clears by itself
/// shortly after the operator fixes its cause, without waiting for the next open or close.
const SAVE_RETRY: Duration = Duration::from_secs(1);

/// Where a channel goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Dst {
    Local,
    Peer(String),
}

struct Outgoing {
    args: OpenArgs,
    info: ChannelInfo,
    core: u16,
    /// The sending host's admission id; none for a best-effort channel.
    adm_id: Option<u32>,
    dst: Dst,
    shared: Arc<ChannelShared>,
    sender: Option<Sender>,
    source: Option<SourceThread>,
    opened: Instant,
    /// The client connection holding the submit ring of a client-fed channel.
    conn: Option<ConnId>,
}

/// An opened channel's sending side: its shared state, and the application's sender or the
/// source thread that owns it.
type SenderParts = (Arc<ChannelShared>, Option<Sender>, Option<SourceThread>);

struct Incoming {
    /// The receiving host's admission id; none for a best-effort channel.
    adm_id: Option<u32>,
    core: u16,
    receiver: Option<Receiver>,
    info: IncomingInfo,
    opened: Instant,
    /// The client connection whose delivery ring receives the channel.
    app: Option<ConnId>,
    /// The delivery ring handed to `app` that it has not said it mapped yet: the daemon's
    /// own receiver keeps receiving until `mapped` seals the ring and switches to it.
    pending_app: Option<attach::PendingApp>,
    /// The counters of the receive sides this channel had before its current one (a receiver
    /// attached or detached: each switch opens a new receive side), added to its statistics
    /// so they count from the channel's open. Latency percentiles are the current side's.
    carried: Option<control::protocol::RxCounters>,
}

/// Final statistics the daemon prints when it stops.
#[derive(Debug, Default)]
pub struct FinalReport {
    /// Per channel.
    pub channels: Vec<ChannelStatsInfo>,
    /// Per sending core.
    pub cores: Vec<CoreStats>,
    /// The state file's save failure when even the save at shutdown failed: the file holds an
    /// older table than the one this run served, which the next start will restore.
    pub state_save_failed: Option<SaveFailure>,
}

/// The control thread's state.
pub struct Control {
    cfg: DaemonConfig,
    tx_adm: Admission,
    rx_adm: Admission,
    /// Buffer memory of every channel side on this host, against `[limits]`.
    memory: MemoryBudget,
    dp: Dataplane,
    sink: Sink,
    out: BTreeMap<u32, Outgoing>,
    inc: BTreeMap<u32, Incoming>,
    /// The sender's side of the reservation protocol, per peer used.
    peers: HashMap<String, peering::PeerOut>,
    /// The receiver's side: every session peers opened to this host.
    inbound: Inbound,
    /// Closes incoming sessions the inbound machine ends (none without `peering.listen`).
    closer: Option<SessionCloser>,
    /// The origin of the machines' clock.
    epoch: Instant,
    next_id: u32,
    policy: PolicyInfo,
    state_path: Option<PathBuf>,
    /// When the DPDK telemetry snapshot was last published.
    last_telemetry: Instant,
    /// The control thread's inbox (clients and peers), once attached.
    inbox: Option<std::sync::mpsc::Receiver<Msg>>,
    /// Client messages that arrived while waiting for a peer; handled next, in order.
    deferred: std::collections::VecDeque<Msg>,
    /// `channel open` requests refused, by (side, reason), for the metrics.
    refusals: BTreeMap<(String, String), u64>,
    /// Records of the state file that were not re-established: listed and written back.
    unrestored: Vec<RejectedRecord>,
    /// The last failed save of the state file while none has succeeded since: on every
    /// client reply, retried by [`Control::tick`].
    save_failure: Option<SaveFailure>,
    /// Failed saves of the state file, retries included (for the metrics).
    save_failures_total: u64,
    /// When the state file was last written or tried.
    last_save_attempt: Instant,
    /// The capture running, if any (`rtchanctl capture`).
    capture: Option<capture::Session>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, e.to_string())
}

/// The protocol's timers as `[peering]` sets them.
fn timers(cfg: &DaemonConfig) -> Timers {
    Timers {
        heartbeat: cfg.peering.heartbeat.0,
        timeout: cfg.peering.timeout.0,
    }
}

impl Control {
    /// Builds the dataplane and the admission controllers.
    pub fn new(cfg: DaemonConfig) -> Result<Self, String> {
        let tx_adm = Admission::new(cfg.tx_model()).map_err(|e| e.to_string())?;
        let rx_adm = Admission::new(cfg.rx_model()).map_err(|e| e.to_string())?;
        let dp = Dataplane::start(&cfg).map_err(|e| e.to_string())?;
        let sink = Sink::start().map_err(|e| e.to_string())?;
        let policy = PolicyInfo {
            granularity: cfg.policy.granularity,
            work_conserving: cfg.policy.work_conserving,
            best_effort_reserve_ppm: cfg.policy.best_effort_reserve_ppm,
            run_budget_cycles: cfg.policy.run_budget_cycles,
            overflow: cfg.overflow.clone(),
            close: match cfg.close {
                CloseMode::Drain => "drain".into(),
                CloseMode::Discard => "discard".into(),
            },
        };
        let memory = cfg.limits.memory_budget(&MachineMemory::detect());
        let inbound = Inbound::new(cfg.peering.name.clone(), timers(&cfg));
        Ok(Self {
            state_path: cfg.state_file.clone(),
            cfg,
            tx_adm,
            rx_adm,
            memory,
            dp,
            sink,
            out: BTreeMap::new(),
            inc: BTreeMap::new(),
            peers: HashMap::new(),
            inbound,
            closer: None,
            epoch: Instant::now(),
            next_id: 0,
            policy,
            last_telemetry: Instant::now(),
            inbox: None,
            deferred: std::collections::VecDeque::new(),
            refusals: BTreeMap::new(),
            unrestored: Vec::new(),
            save_failure: None,
            save_failures_total: 0,
            last_save_attempt: Instant::now(),
            capture: None,
        })
    }

    /// Lets the controller close incoming peer sessions (those its machine ends).
    pub fn attach_peer_closer(&mut self, closer: SessionCloser) {
        self.closer = Some(closer);
    }

    /// Gives the control thread's inbox to the controller, so it can keep serving peers while
    /// it waits on one (see [`Control::next_msg`]).
    pub fn attach_inbox(&mut self, inbox: std::sync::mpsc::Receiver<Msg>) {
        self.inbox = Some(inbox);
    }

    /// The next message: one deferred while waiting on a peer, else from the inbox.
    pub fn next_msg(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Msg, std::sync::mpsc::RecvTimeoutError> {
        if let Some(m) = self.deferred.pop_front() {
            return Ok(m);
        }
        match &self.inbox {
            Some(rx) => rx.recv_timeout(timeout),
            None => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        }
    }

    /// While waiting for a peer's reply: answer peers' requests (they only touch this host's
    /// incoming side, never call a peer) and clients' reads, keep everything else for after.
    fn serve_peers_while_waiting(&mut self) {
        let Some(rx) = self.inbox.take() else {
            return;
        };
        while let Ok(m) = rx.try_recv() {
            match m {
                // These reads only look at the table (never call a peer, unlike a dry-run
                // open), so other clients are answered at once instead of after the peer.
                Msg::Peer { .. } | Msg::PeerAccepted { .. } | Msg::SessionClosed { .. } => {
                    self.handle(m)
                }
                Msg::Client {
                    request:
                        Request::List
                        | Request::Show(_)
                        | Request::Stats(_)
                        | Request::PortStats
                        | Request::CoreStats
                        | Request::PolicyShow
                        | Request::Ping,
                    ..
                } => self.handle(m),
                other => self.deferred.push_back(other),
            }
        }
        self.inbox = Some(rx);
    }

    /// Runs `build` (allocating and faulting in a channel's buffers: seconds for a large
    /// reservation) on a helper thread when it is `bytes` large, answering reads and peers
    /// meanwhile as while waiting for a peer; other requests wait their turn.
    fn off_thread<T: Send + 'static>(
        &mut self,
        bytes: u64,
        build: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        if bytes < OFF_THREAD_BYTES {
            return Ok(build());
        }
        let worker = std::thread::Builder::new()
            .name("rtchan-alloc".into())
            .spawn(build)
            .map_err(|e| internal(format!("cannot start the allocating thread: {e}")))?;
        while !worker.is_finished() {
            self.serve_peers_while_waiting();
            std::thread::sleep(OFF_THREAD_POLL);
        }
        worker
            .join()
            .map_err(|_| internal("allocating the channel's buffers failed"))
    }

    /// Handles one message.
    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Client {
                conn,
                caller,
                request,
                reply,
            } => {
                if let Some(mut r) = self.capture_request(conn, &request) {
                    r.state_save_failed = self.save_failure.clone();
                    let _ = reply.send(r);
                } else if attach::carries_fds(&request) {
                    let (mut r, fds, holds) = self.client_with_fds(conn, caller, request);
                    r.state_save_failed = self.save_failure.clone();
                    let _ = reply.send_full(r, fds, holds);
                } else {
                    let mut r = self.client(request);
                    r.state_save_failed = self.save_failure.clone();
                    let _ = reply.send(r);
                }
            }
            // Client-fed channels close with their connection; attached receivers go back to
            // the sink.
            Msg::ClientClosed { conn } => {
                self.capture_closed(conn);
                self.client_closed(conn)
            }
            Msg::PeerAccepted { session, allowed } => {
                let now = self.now();
                self.inbound.accept(now, session, allowed);
            }
            Msg::Peer {
                session,
                seq,
                request,
                reply,
            } => {
                let now = self.now();
                self.inbound.handle_request(now, session, seq, request);
                let _ = reply.send(self.run_inbound(Some((session, seq))));
            }
            Msg::SessionClosed { session } => {
                let now = self.now();
                self.inbound.handle_closed(now, session);
                self.run_inbound(None);
            }
            Msg::Reload { update, reply } => {
                let _ = reply.send(Reply::from_result(self.policy_set(&update)));
            }
            Msg::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
        }
    }

    /// The capture requests, which belong to their connection; `None` for the others.
    fn capture_request(&mut self, conn: ConnId, request: &Request) -> Option<Reply> {
        Some(match request {
            Request::CaptureStart(a) => Reply::from_result(self.capture_start(conn, a)),
            Request::CaptureTake => Reply::from_result(self.capture_take(conn, false)),
            Request::CaptureStop => Reply::from_result(self.capture_take(conn, true)),
            _ => return None,
        })
    }

    fn client(&mut self, request: Request) -> Reply {
        match request {
            Request::Open(args) => {
                let r = self.open(&args, None);
                if let Err(e) = &r {
                    self.count_refusal(e);
                }
                Reply::from_result(r)
            }
            Request::Close(args) => Reply::from_result(self.close(&args)),
            Request::DiscardUnrestored(a) => Reply::from_result(self.discard_unrestored(a.record)),
            Request::List => Reply::ok(self.list(None)),
            Request::Show(a) => {
                if self.out.contains_key(&a.id)
                    || self.inc.contains_key(&a.id)
                    || self.unrestored_index(a.id).is_some()
                {
                    Reply::ok(self.list(Some(a.id)))
                } else {
                    Reply::err(not_found(a.id))
                }
            }
            Request::Stats(a) => Reply::from_result(self.stats(a.id)),
            Request::PortStats => Reply::ok(self.dp.port_stats(&self.cfg)),
            Request::CoreStats => Reply::ok(self.dp.core_stats()),
            Request::PolicyShow => Reply::ok(&self.policy),
            Request::PolicySet(u) => Reply::from_result(self.policy_set(&u)),
            Request::Ping => Reply::ok(serde_json::json!({})),
            // Routed to `client_with_fds` by `handle`.
            Request::Attach(_) | Request::Detach(_) | Request::Mapped(_) => Reply::err(internal(
                "attach/detach/mapped must come from a control-socket connection",
            )),
            Request::CaptureStart(_) | Request::CaptureTake | Request::CaptureStop => Reply::err(
                internal("captures must come from a control-socket connection"),
            ),
        }
    }

    /// Retries a failed save of the state file, publishes telemetry, and runs the peer
    /// protocol's timers (heartbeats, reply timeouts, silent sessions), when due.
    pub fn tick(&mut self) {
        if self.save_failure.is_some() && self.last_save_attempt.elapsed() >= SAVE_RETRY {
            self.persist("a retry");
        }
        if self.dp.has_telemetry() && self.last_telemetry.elapsed() >= TELEMETRY_PERIOD {
            self.last_telemetry = Instant::now();
            let stats = self.all_stats(None);
            self.dp.publish_telemetry(&stats);
        }
        self.peer_timers();
    }

    /// Stops every source, closes every channel (draining per the close mode) without
    /// touching the persisted table, stops the cores; the final statistics.
    pub fn shutdown(mut self) -> FinalReport {
        self.persist("the shutdown");
        for o in self.out.values_mut() {
            if let Some(src) = o.source.take() {
                o.sender = src.stop();
            }
        }
        // Let queued messages reach the receive side before reading the counters.
        let drain = self.policy.close == "drain";
        let ids: Vec<(u32, u16)> = self.out.iter().map(|(&id, o)| (id, o.core)).collect();
        for (id, core) in ids {
            let _ = self.dp.tx[usize::from(core)].handle.close(id, drain);
        }
        std::thread::sleep(Duration::from_millis(20));
        let channels = self.all_stats(None);
        let cores = self.dp.stop();
        // Sessions end with the process: peers release what they held for us.
        self.close_peers();
        FinalReport {
            channels,
            cores,
            state_save_failed: self.save_failure.take(),
        }
    }
}
