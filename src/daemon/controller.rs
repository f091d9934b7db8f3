//! The control thread: owns the channel table and both admission controllers, and is the
//! only writer of the dataplane's configuration.
//!
//! Requests arrive as [`Msg`]s from the control socket's connection threads and from peers'
//! sessions, one at a time, so every decision sees a consistent table. Opening a channel:
//!
//! 1. validate the request (fields, destination, placement);
//! 2. find this host's least admissible bound `d_s` on the chosen core ([`control::e2e`]);
//! 3. ask the receiving side (this daemon's own receive side for `local`, else the peer over
//!    TCP) to `prepare` with the budget `D − network − least(d_s)`; it reserves its share;
//! 4. admit this host's share `d_s = D − network − d_r`, open the channel on its core through
//!    the core's control ring (the reply waits for the core's acknowledgement), start the
//!    built-in source if asked, `commit` the receiving side, persist the table.
//!
//! Any failure after a reservation undoes it, on both sides, before the reply. Closing stops
//! the source, closes the channel on its core (draining or discarding), frees this host's
//! reservation and tells the receiving side to free its own.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::admission::memory::{
    receiving_bytes, sending_bytes, sending_field, MachineMemory, MemoryBudget, MemoryRefusal, Side,
};
use control::admission::{
    Admission, AdmitError, Admitted, ChannelRequest, Nanos, RequestError, ResourceModel,
};
use control::config::{parse_mac, CloseMode, DaemonConfig};
use control::e2e::{least_deadline, receiver_share};
use control::protocol::{
    percentiles, ApiError, ChannelInfo, ChannelList, ChannelStatsInfo, CloseArgs, ErrorKind, Grant,
    IncomingInfo, OpenArgs, PolicyInfo, PolicyUpdate, PrepareArgs, Refusal, Reply, Request,
    RxCounters, TxCounters,
};
pub(crate) use control::reservation::not_found;
use control::reservation::{id_in_use, Inbound, Op, Timers};
use control::state::{
    utc_stamp, ChannelRecord, LoadedState, RejectedRecord, SaveFailure, StateError, StateFile,
    STATE_VERSION,
};
use control::units::fmt_ns;
use dataplane::channel::{ChannelShared, Sender};
use dataplane::core::CoreStats;
use dataplane::rx::Receiver;
use dataplane::sched::SchedPolicy;
use dataplane::spec::{ChannelConfig, ChannelSpec, Endpoint, OverflowPolicy};
use dataplane::wire::{ParseError, SourceCheck};

use super::dp::{Dataplane, PORT_QUEUE};
use super::peer::SessionCloser;
use super::server::ConnId;
use super::traffic::{parse_source, Sink, SourceThread};
use super::Msg;

mod attach;
mod peering;

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

fn model_error(e: control::admission::ModelError) -> ApiError {
    ApiError::invalid("policy", e.to_string())
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

    /// A memory-budget refusal as the client sees it.
    fn memory_error(&self, e: MemoryRefusal) -> ApiError {
        ApiError {
            kind: ErrorKind::Limit,
            field: Some(e.field.into()),
            message: format!("{e} (host '{}')", self.cfg.peering.name),
            refusal: None,
        }
    }

    /// The memory budget's check for a new channel's sides on this host, before anything is
    /// prepared: the sending side, and the receiving side too when it is local.
    fn check_memory(&self, mmax: u32, bmax: u32, local: bool) -> Result<(), ApiError> {
        if mmax > self.cfg.max_message {
            // Refused by admission naming `mmax` and `max_message`; nothing is allocated.
            return Ok(());
        }
        let mut sides = vec![(
            Side::Sending,
            sending_field(bmax),
            sending_bytes(mmax, bmax),
        )];
        if local && self.dp.receive_cores() > 0 {
            sides.push((Side::Receiving, "mmax", receiving_bytes(mmax, RX_RING)));
        }
        self.memory
            .check_sides(&sides)
            .map_err(|e| self.memory_error(e))
    }

    /// Re-establishes the channels of a state file read record by record; returns how many
    /// came back and, for the log, why the others did not. Those stay in the table as
    /// `unrestored` (listed, written back to the file) until closed: none is dropped.
    pub fn restore(&mut self, state: LoadedState) -> (usize, Vec<String>) {
        let ids = state
            .records
            .iter()
            .map(|(_, c)| c.id)
            .chain(state.rejected.iter().filter_map(|r| r.id));
        self.next_id = ids.map(|id| id.wrapping_add(1)).max().unwrap_or(0);
        self.unrestored = state.rejected;
        let mut ok = 0;
        for (index, rec) in state.records {
            match self.open(&rec.open, Some(rec.id)) {
                Ok(_) => ok += 1,
                Err(e) => self.unrestored.push(RejectedRecord {
                    index,
                    id: Some(rec.id),
                    error: e.message,
                    record: serde_json::to_value(&rec).expect("a record serialises"),
                }),
            }
        }
        self.unrestored.sort_by_key(|r| r.index);
        self.persist("the restore at start-up");
        let errors = self
            .unrestored
            .iter()
            .map(|r| match r.id {
                Some(id) => format!("channel {id} (record {}): {}", r.index, r.error),
                None => format!("record {}: {}", r.index, r.error),
            })
            .collect();
        (ok, errors)
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
                if attach::carries_fds(&request) {
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
            Msg::ClientClosed { conn } => self.client_closed(conn),
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

    /// Counts a refused `channel open` by side and reason (for the metrics).
    fn count_refusal(&mut self, e: &ApiError) {
        let key = match &e.refusal {
            Some(r) => {
                let resource = match r.rejection.resource {
                    control::admission::Resource::Cpu(_) => "cpu",
                    control::admission::Resource::Link(_) => "link",
                };
                let test = match r.rejection.test {
                    control::admission::FailedTest::Utilisation { .. } => "utilisation",
                    control::admission::FailedTest::Demand { .. } => "demand",
                };
                (r.side.clone(), format!("{resource}_{test}"))
            }
            None => (
                "request".to_string(),
                serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "other".into()),
            ),
        };
        *self.refusals.entry(key).or_default() += 1;
    }

    /// The metrics endpoint's text: what `stats` reads (the channels' shared counters and
    /// histograms), the admission controllers and this thread's own counters; nothing from a
    /// polling core (see [`super::metrics`]).
    pub fn metrics(&self) -> String {
        use super::metrics::{bound_buckets, Exposition};
        let mut e = Exposition::default();
        for (&id, o) in &self.out {
            let ch = id.to_string();
            let l = [("channel", ch.as_str()), ("dst", o.info.dst.as_str())];
            let st = o.shared.stats.snapshot();
            e.counter(
                "rtchan_channel_submitted_messages_total",
                "Messages accepted by submit on the sending host.",
                &l,
                st.submitted,
            );
            e.counter(
                "rtchan_channel_sent_messages_total",
                "Messages whose last packet left the sending host.",
                &l,
                st.messages_sent,
            );
            e.counter(
                "rtchan_channel_sent_packets_total",
                "Packets sent.",
                &l,
                st.packets,
            );
            e.counter(
                "rtchan_channel_sent_bytes_total",
                "Bytes sent.",
                &l,
                st.bytes,
            );
            for (reason, v) in [
                ("would_block", st.would_block),
                ("drop_newest", st.dropped_newest),
                ("drop_oldest", st.dropped_oldest),
                ("on_close", st.dropped_on_close),
            ] {
                e.counter(
                    "rtchan_channel_drops_total",
                    "Messages not sent, by reason: refused with a full buffer (would_block), \
                     dropped by the overflow policy, or discarded at close.",
                    &[l[0], l[1], ("reason", reason)],
                    v,
                );
            }
            e.counter(
                "rtchan_channel_late_packets_total",
                "Packets released after their link deadline.",
                &l,
                st.late_packets,
            );
            e.counter(
                "rtchan_channel_budget_overruns_total",
                "Handler runs over their cycle budget.",
                &l,
                st.budget_overruns,
            );
            let bound = if o.info.best_effort {
                0
            } else {
                o.info.sender.link_deadline
            };
            e.gauge(
                "rtchan_channel_host_bound_seconds",
                "The sending host's admitted bound d_s (0: best-effort).",
                &l,
                bound as f64 / 1e9,
            );
            e.histogram_ns(
                "rtchan_channel_host_delay_seconds",
                "Submit to last packet released on the sending host; buckets around d_s.",
                &l,
                &o.shared.stats.delay_snapshot(),
                &bound_buckets(bound),
            );
        }
        for (&id, i) in &self.inc {
            let Some(r) = i.receiver.as_ref() else {
                continue;
            };
            let ch = id.to_string();
            let l = [("channel", ch.as_str()), ("src", i.info.from.as_str())];
            let st = r.stats();
            e.counter(
                "rtchan_channel_delivered_messages_total",
                "Messages delivered on the receiving host.",
                &l,
                st.delivered.get(),
            );
            e.counter(
                "rtchan_channel_delivered_bytes_total",
                "Payload bytes delivered.",
                &l,
                st.bytes.get(),
            );
            e.counter(
                "rtchan_channel_deadline_misses_total",
                "Messages delivered after their end-to-end deadline.",
                &l,
                st.deadline_misses.get(),
            );
            e.counter(
                "rtchan_channel_lost_messages_total",
                "Messages never received (sequence gaps).",
                &l,
                st.lost.get(),
            );
            e.counter(
                "rtchan_channel_duplicate_messages_total",
                "Messages or fragments received twice.",
                &l,
                st.duplicates.get(),
            );
            e.counter(
                "rtchan_channel_reordered_messages_total",
                "Messages that arrived after a later one.",
                &l,
                st.reordered.get(),
            );
            e.counter(
                "rtchan_channel_receive_drops_total",
                "Messages dropped on the receiving host, by reason.",
                &[l[0], l[1], ("reason", "ring_full")],
                st.ring_full.get(),
            );
            e.counter(
                "rtchan_channel_receive_drops_total",
                "Messages dropped on the receiving host, by reason.",
                &[l[0], l[1], ("reason", "incomplete")],
                st.incomplete.get(),
            );
            let bound = if i.info.best_effort {
                0
            } else {
                i.info.end_to_end
            };
            e.gauge(
                "rtchan_channel_bound_seconds",
                "The channel's end-to-end bound D (0: best-effort).",
                &l,
                bound as f64 / 1e9,
            );
            e.histogram_ns(
                "rtchan_channel_latency_seconds",
                "Submit to delivery (end to end); buckets around D.",
                &l,
                &st.latency_snapshot(),
                &bound_buckets(bound),
            );
        }
        // Per TX queue (admission's queue i is core i's port queue): what the sending
        // channels on it report, and what admission has granted of it.
        let rate = self.cfg.link_rate_bps();
        let util = self.tx_adm.utilisation();
        for (q, ppm) in util.tx_queues.iter().enumerate() {
            let qs = q.to_string();
            let l = [("txq", qs.as_str())];
            let on_q = self
                .out
                .values()
                .filter(|o| usize::from(o.info.sender.txq) == q);
            let (late, packets) = on_q.fold((0, 0), |(a, b), o| {
                let st = o.shared.stats.snapshot();
                (a + st.late_packets, b + st.packets)
            });
            e.gauge(
                "rtchan_txq_paced_rate_bytes_per_second",
                "The rate the link scheduler paces the queue at.",
                &l,
                rate as f64 / 8.0,
            );
            e.counter(
                "rtchan_txq_late_packets_total",
                "Packets of the queue's open channels released after their link deadline.",
                &l,
                late,
            );
            e.counter(
                "rtchan_txq_packets_total",
                "Packets of the queue's open channels sent.",
                &l,
                packets,
            );
            e.gauge(
                "rtchan_admission_utilisation_ratio",
                "Real-time utilisation admitted on a resource (of 1).",
                &[("side", "tx"), ("resource", "link"), ("index", qs.as_str())],
                f64::from(*ppm) / 1e6,
            );
        }
        for (side, u) in [("tx", &util), ("rx", &self.rx_adm.utilisation())] {
            for (c, ppm) in u.cores.iter().enumerate() {
                let cs = c.to_string();
                e.gauge(
                    "rtchan_admission_utilisation_ratio",
                    "Real-time utilisation admitted on a resource (of 1).",
                    &[("side", side), ("resource", "cpu"), ("index", cs.as_str())],
                    f64::from(*ppm) / 1e6,
                );
            }
        }
        e.gauge(
            "rtchan_admission_limit_ratio",
            "The utilisation admission allows a resource (1 - best-effort reserve).",
            &[],
            1.0 - f64::from(self.policy.best_effort_reserve_ppm) / 1e6,
        );
        for ((side, reason), n) in &self.refusals {
            e.counter(
                "rtchan_admission_refusals_total",
                "channel open requests refused, by side (sender, receiver, request) and reason.",
                &[("side", side.as_str()), ("reason", reason.as_str())],
                *n,
            );
        }
        e.counter(
            "rtchan_state_save_failures_total",
            "Failed saves of the state file, retries included.",
            &[],
            self.save_failures_total,
        );
        e.gauge(
            "rtchan_state_unsaved",
            "1 while the last save of the state file failed (the table in memory is not on disk).",
            &[],
            if self.save_failure.is_some() {
                1.0
            } else {
                0.0
            },
        );
        e.gauge(
            "rtchan_channels",
            "Channels open on this host, by direction.",
            &[("direction", "out")],
            self.out.len() as f64,
        );
        e.gauge(
            "rtchan_channels",
            "Channels open on this host, by direction.",
            &[("direction", "in")],
            self.inc.values().filter(|i| i.info.from != "local").count() as f64,
        );
        e.finish()
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
            Request::PolicyShow => Reply::ok(&self.policy),
            Request::PolicySet(u) => Reply::from_result(self.policy_set(&u)),
            Request::Ping => Reply::ok(serde_json::json!({})),
            // Routed to `client_with_fds` by `handle`.
            Request::Attach(_) | Request::Detach(_) => Reply::err(internal(
                "attach/detach must come from a control-socket connection",
            )),
        }
    }

    // ----- opening -----

    fn destination(&self, dst: &str) -> Result<(Dst, Nanos), ApiError> {
        if dst == "local" {
            if !self.dp.has_loopback() {
                return Err(ApiError::invalid(
                    "dst",
                    format!(
                        "dst: 'local' needs a receive path; port '{}' has none (use memlink)",
                        self.cfg.port.kind.name()
                    ),
                ));
            }
            return Ok((Dst::Local, self.cfg.peering.loopback_network_bound.0));
        }
        match self.cfg.peer(dst) {
            Some(p) if self.dp.wire.is_some() && p.mac.is_none() => Err(ApiError::invalid(
                "dst",
                format!(
                    "dst: peer '{dst}' has no `mac` in its [[peers]] entry; port '{}' needs it \
                     to address frames to the peer",
                    self.cfg.port.kind.name()
                ),
            )),
            Some(p) => Ok((Dst::Peer(p.name.clone()), p.network_bound.0)),
            None => {
                let mut known = vec!["local".to_string()];
                known.extend(self.cfg.peers.iter().map(|p| p.name.clone()));
                Err(ApiError::invalid(
                    "dst",
                    format!(
                        "dst: unknown destination '{dst}' (known: {})",
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    fn sender_error(&self, e: AdmitError, d: Nanos, net: Nanos, dst: &str) -> ApiError {
        match e {
            AdmitError::Invalid(RequestError::DeadlineTooShort { minimum, .. }) => {
                ApiError::invalid(
                    "deadline",
                    format!(
                        "deadline: {} leaves {} for this host after the network bound {} to '{dst}', \
                         below {}, the least an idle sending host can guarantee for this channel \
                         (D must be at least {} plus the receiving host's share)",
                        fmt_ns(d),
                        fmt_ns(d.saturating_sub(net)),
                        fmt_ns(net),
                        fmt_ns(minimum),
                        fmt_ns(minimum + net)
                    ),
                )
            }
            AdmitError::Invalid(e) => ApiError::invalid(e.field(), e.to_string()),
            AdmitError::Rejected(rej) => {
                let msg = format!("refused by the sending host: {rej}");
                ApiError::refused(
                    msg,
                    Refusal {
                        side: "sender".into(),
                        host: self.cfg.peering.name.clone(),
                        least_host_deadline: rej.tightest_deadline,
                        tightest_deadline: None,
                        rejection: *rej,
                    },
                )
            }
        }
    }

    /// Cores to try, in order: the one asked for, or worst-fit by utilisation.
    fn candidates(&self, args: &OpenArgs) -> Result<Vec<u16>, ApiError> {
        let n = self.cfg.cores.len() as u16;
        if let (Some(c), Some(q)) = (args.core, args.txq) {
            if c != q {
                return Err(ApiError::invalid(
                    "txq",
                    format!("txq: core {c} sends on TX queue {c}; txq {q} would need core {q}"),
                ));
            }
        }
        if let Some(c) = args.core {
            if c >= n {
                return Err(ApiError::invalid(
                    "core",
                    format!("core: {c} does not exist (the host has {n} cores)"),
                ));
            }
        }
        if let Some(q) = args.txq {
            if q >= n {
                return Err(ApiError::invalid(
                    "txq",
                    format!("txq: {q} does not exist (the host has {n} TX queues)"),
                ));
            }
        }
        if let Some(c) = args.core.or(args.txq) {
            return Ok(vec![c]);
        }
        let u = self.tx_adm.utilisation();
        let mut v: Vec<u16> = (0..n).collect();
        v.sort_by_key(|&c| {
            (
                u64::from(u.cores[usize::from(c)]) + u64::from(u.tx_queues[usize::from(c)]),
                c,
            )
        });
        Ok(v)
    }

    /// Where channel `id` is among the records not re-established.
    fn unrestored_index(&self, id: u32) -> Option<usize> {
        self.unrestored.iter().position(|r| r.id == Some(id))
    }

    fn fresh_id(&mut self) -> u32 {
        while self.out.contains_key(&self.next_id)
            || self.inc.contains_key(&self.next_id)
            || self.unrestored_index(self.next_id).is_some()
        {
            self.next_id = self.next_id.wrapping_add(1);
        }
        self.next_id
    }

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
        let sender_adm = match self.tx_adm.admit(&req) {
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
            let _ = this.tx_adm.release(sender_adm.id);
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
    fn info(
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

    /// Addresses a channel's frames: the peer's data-link IPv4 (and, on a wire port, this
    /// host's MAC/IPv4 and the peer's MAC).
    fn address(&self, cfg: &mut ChannelConfig, dst: &Dst) {
        let Dst::Peer(p) = dst else {
            return;
        };
        let Some(peer) = self.cfg.peer(p) else {
            return;
        };
        if let Some(ip) = peer.data_ipv4() {
            cfg.endpoint.dst_ip = ip.octets();
        }
        if let Some(w) = self.dp.wire {
            cfg.endpoint.src_mac = w.mac;
            cfg.endpoint.src_ip = w.ip;
            // Checked by `destination`.
            if let Some(Ok(mac)) = peer.mac.as_deref().map(parse_mac) {
                cfg.endpoint.dst_mac = mac;
            }
        }
    }

    /// Opens a best-effort channel: no admission on either host; the receiving side opens a
    /// receiver for it. It runs in the best-effort class of its core and link, which gets
    /// whatever real-time traffic leaves and at least `best_effort_reserve_ppm`.
    fn open_best_effort(
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
    fn start_sender(
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
            Ok(pending) => self.off_thread(bytes, move || pending.build()),
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
    fn commit_outgoing(
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

    // ----- the receiving side, local or remote -----

    fn receiver_least(
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

    /// Prepares the receiving end under `fixed_id`, or under a fresh id, taking the next one
    /// (up to [`ID_ATTEMPTS`] times) while the receiving end already uses it.
    fn prepare_with_id(
        &mut self,
        dst: &Dst,
        fixed_id: Option<u32>,
        prep: impl Fn(u32) -> PrepareArgs,
    ) -> Result<(u32, Grant), ApiError> {
        let mut attempts = 0;
        loop {
            let id = fixed_id.unwrap_or_else(|| self.fresh_id());
            match self.prepare_remote(dst, &prep(id)) {
                Ok(g) => return Ok((id, g)),
                Err(e)
                    if e.field.as_deref() == Some("id")
                        && fixed_id.is_none()
                        && attempts < ID_ATTEMPTS =>
                {
                    attempts += 1;
                    self.next_id = id.wrapping_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn prepare_remote(&mut self, dst: &Dst, prep: &PrepareArgs) -> Result<Grant, ApiError> {
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

    fn commit_remote(&mut self, dst: &Dst, id: u32) -> Result<(), ApiError> {
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

    fn abort_remote(&mut self, dst: &Dst, id: u32) {
        match dst {
            Dst::Local => self.release_incoming(id),
            Dst::Peer(p) => {
                let _ = self.peer_call(p, Op::Abort { id });
            }
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

    // ----- the receiving side's handlers -----

    /// Reserves (or, with `dry_run`, decides) the receiving side of a channel from `from`
    /// (`local`, or a peer whose inbound machine asked).
    pub(super) fn prepare(&mut self, from: &str, p: &PrepareArgs) -> Result<Grant, ApiError> {
        let me = self.cfg.peering.name.clone();
        if !p.dry_run && self.inc.contains_key(&p.id) {
            return Err(id_in_use(p.id, &me));
        }
        let rx_bytes = receiving_bytes(p.mmax, RX_RING);
        if self.dp.receive_cores() > 0 && p.mmax <= self.cfg.max_message {
            self.memory
                .check(Side::Receiving, "mmax", rx_bytes)
                .map_err(|e| self.memory_error(e))?;
        }
        if p.best_effort {
            return self.prepare_best_effort(from, p);
        }
        let req = ChannelRequest {
            mmax: p.mmax,
            imin: p.imin,
            bmax: p.bmax,
            deadline: p.budget,
            core: p.core,
            txq: Some(0),
        };
        let least = match least_deadline(&self.rx_adm, &req) {
            Ok(l) => l,
            Err(AdmitError::Invalid(e)) => {
                return Err(ApiError::invalid(
                    e.field(),
                    format!("receiving host '{me}': {e}"),
                ))
            }
            Err(AdmitError::Rejected(rej)) => {
                return Err(ApiError::refused(
                    format!("refused by the receiving host '{me}': {}", rx_text(&rej)),
                    Refusal {
                        side: "receiver".into(),
                        host: me,
                        least_host_deadline: None,
                        tightest_deadline: None,
                        rejection: *rej,
                    },
                ))
            }
        };
        if least > p.budget {
            return Err(match self.rx_adm.check(&req) {
                Err(AdmitError::Rejected(rej)) => ApiError::refused(
                    format!(
                        "refused by the receiving host '{me}': {} (it can give no less than {}, \
                         the budget left was {})",
                        rx_text(&rej),
                        fmt_ns(least),
                        fmt_ns(p.budget)
                    ),
                    Refusal {
                        side: "receiver".into(),
                        host: me,
                        least_host_deadline: Some(least),
                        tightest_deadline: None,
                        rejection: *rej,
                    },
                ),
                Err(AdmitError::Invalid(RequestError::DeadlineTooShort { minimum, .. })) => {
                    ApiError::invalid(
                        "deadline",
                        format!(
                            "deadline: the receiving host '{me}' needs at least {} even when idle; \
                             the end-to-end deadline left it {}",
                            fmt_ns(minimum),
                            fmt_ns(p.budget)
                        ),
                    )
                }
                Err(AdmitError::Invalid(e)) => ApiError::invalid(e.field(), e.to_string()),
                Ok(_) => internal("receiver's least deadline disagrees with admission"),
            });
        }
        let d_r = receiver_share(least, p.budget);
        let req = ChannelRequest {
            deadline: d_r,
            ..req
        };
        if p.dry_run {
            let admitted = self
                .rx_adm
                .check(&req)
                .map_err(|e| internal(e.to_string()))?;
            return Ok(Grant {
                id: p.id,
                host: me,
                deadline: d_r,
                least_deadline: least,
                admitted,
            });
        }
        let admitted = self
            .rx_adm
            .admit(&req)
            .map_err(|e| internal(e.to_string()))?;
        let core = admitted.core;
        let receiver = match self.open_receiver(core, p.id, p.mmax, from) {
            Ok(r) => r,
            Err(e) => {
                let _ = self.rx_adm.release(admitted.id);
                return Err(e);
            }
        };
        if let Some(r) = &receiver {
            self.sink.add(p.id, r.clone());
            self.dp.steer(p.id, Some(core));
        }
        let mut shown = admitted.clone();
        shown.id = p.id;
        self.inc.insert(
            p.id,
            Incoming {
                adm_id: Some(admitted.id),
                core,
                receiver,
                info: IncomingInfo {
                    id: p.id,
                    from: from.into(),
                    deadline: d_r,
                    end_to_end: p.end_to_end,
                    admitted: shown.clone(),
                    committed: false,
                    best_effort: false,
                },
                opened: Instant::now(),
                app: None,
            },
        );
        Ok(Grant {
            id: p.id,
            host: me,
            deadline: d_r,
            least_deadline: least,
            admitted: shown,
        })
    }

    /// The receiving side of a best-effort channel: a receiver, no admission.
    fn prepare_best_effort(&mut self, from: &str, p: &PrepareArgs) -> Result<Grant, ApiError> {
        let me = self.cfg.peering.name.clone();
        if p.mmax == 0 || p.mmax > self.cfg.max_message {
            return Err(ApiError::invalid(
                "mmax",
                format!(
                    "receiving host '{me}': mmax {} is not in 1..={}",
                    p.mmax, self.cfg.max_message
                ),
            ));
        }
        let cores = self.dp.receive_cores().max(1);
        let core = p
            .core
            .filter(|&c| usize::from(c) < cores)
            .unwrap_or_else(|| (p.id as usize % cores) as u16);
        let shown = unadmitted(p.id, core, p.mmax, p.imin, p.bmax);
        let grant = Grant {
            id: p.id,
            host: me,
            deadline: 0,
            least_deadline: 0,
            admitted: shown.clone(),
        };
        if p.dry_run {
            return Ok(grant);
        }
        let receiver = self.open_receiver(core, p.id, p.mmax, from)?;
        if let Some(r) = &receiver {
            self.sink.add(p.id, r.clone());
            self.dp.steer(p.id, Some(core));
        }
        self.inc.insert(
            p.id,
            Incoming {
                adm_id: None,
                core,
                receiver,
                info: IncomingInfo {
                    id: p.id,
                    from: from.into(),
                    deadline: 0,
                    end_to_end: 0,
                    admitted: shown,
                    committed: false,
                    best_effort: true,
                },
                opened: Instant::now(),
                app: None,
            },
        );
        Ok(grant)
    }

    /// Opens channel `id`'s receive side on receive core `core` (none without a receive
    /// path): reserves its memory, allocates it off the request path, hands it to the core.
    fn open_receiver(
        &mut self,
        core: u16,
        id: u32,
        mmax: u32,
        from: &str,
    ) -> Result<Option<Receiver>, ApiError> {
        if self.dp.receive_core(core).is_none() {
            return Ok(None);
        }
        let bytes = receiving_bytes(mmax, RX_RING);
        self.memory
            .reserve(Side::Receiving, id, "mmax", bytes)
            .map_err(|e| self.memory_error(e))?;
        let check = self.source_check(from);
        let pending = self
            .dp
            .receive_core(core)
            .expect("checked above")
            .prepare_receiver(id, mmax, RX_RING)
            .with_source(check);
        let opened = self
            .off_thread(bytes, move || pending.build())
            .and_then(|shared| {
                self.dp
                    .receive_core(core)
                    .expect("checked above")
                    .open_built_receiver(shared)
                    .map_err(|e| internal(format!("receive core {core}: {e}")))
            });
        if opened.is_err() {
            self.memory.release(Side::Receiving, id);
        }
        opened.map(Some)
    }

    fn release_incoming(&mut self, id: u32) {
        if let Some(i) = self.inc.remove(&id) {
            self.memory.release(Side::Receiving, id);
            self.sink.remove(id);
            // An attached client sees the channel closed in its ring.
            if let Some(r) = i.receiver.as_ref().and_then(|r| r.shared().app_region()) {
                r.close();
            }
            if i.receiver.is_some() {
                self.dp.steer(id, None);
                if let Some(handle) = self.dp.receive_core(i.core) {
                    let _ = handle.close_receiver(id);
                }
            }
            if let Some(a) = i.adm_id {
                let _ = self.rx_adm.release(a);
            }
        }
    }

    // ----- closing -----

    /// Stops the source, closes the channel on its core, frees both sides' reservations.
    fn teardown(&mut self, id: u32, drain: bool, tell_peer: bool) -> Option<ChannelInfo> {
        let mut o = self.out.remove(&id)?;
        if let Some(src) = o.source.take() {
            o.sender = src.stop();
        }
        let _ = self.dp.tx[usize::from(o.core)].handle.close(id, drain);
        self.memory.release(Side::Sending, id);
        if let Some(a) = o.adm_id {
            let _ = self.tx_adm.release(a);
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

    fn close(&mut self, args: &CloseArgs) -> Result<ChannelInfo, ApiError> {
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

    /// Drops record `record` (its number as listed) of those not re-established from the
    /// state file, and saves the table without it; the reply carries the record verbatim.
    fn discard_unrestored(&mut self, record: usize) -> Result<serde_json::Value, ApiError> {
        let Some(i) = self.unrestored.iter().position(|r| r.index == record) else {
            let listed: Vec<String> = self
                .unrestored
                .iter()
                .map(|r| r.index.to_string())
                .collect();
            return Err(ApiError {
                kind: ErrorKind::NotFound,
                field: Some("record".into()),
                message: if listed.is_empty() {
                    format!("record: no unrestored record {record}: every record of the state file was re-established")
                } else {
                    format!(
                        "record: no unrestored record {record} (unrestored records: {})",
                        listed.join(", ")
                    )
                },
                refusal: None,
            });
        };
        let r = self.unrestored.remove(i);
        self.persist(&format!("discarding unrestored record {record}"));
        Ok(serde_json::json!({
            "record": r.index,
            "id": r.id,
            "state": "discarded",
            "error": r.error,
            "content": r.record,
        }))
    }

    // ----- reading -----

    fn list(&self, only: Option<u32>) -> ChannelList {
        ChannelList {
            channels: self
                .out
                .iter()
                .filter(|(id, _)| only.is_none_or(|o| o == **id))
                .map(|(_, o)| o.info.clone())
                .collect(),
            incoming: self
                .inc
                .iter()
                .filter(|(id, i)| only.is_none_or(|o| o == **id) && i.info.from != "local")
                .map(|(_, i)| i.info.clone())
                .collect(),
            unrestored: self
                .unrestored
                .iter()
                .filter(|r| only.is_none() || r.id == only)
                .cloned()
                .collect(),
            receive_rejected: self.receive_rejected(),
        }
    }

    /// Frames every receive path of this host rejected, by reason (non-zero only).
    fn receive_rejected(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for slot in self.dp.tx.iter().chain(self.dp.rx.iter()) {
            let r = slot.handle.rx_rejects();
            for e in ParseError::ALL {
                let n = r.rejected[e.index()].get();
                if n > 0 {
                    *m.entry(e.name().to_string()).or_insert(0) += n;
                }
            }
        }
        m
    }

    /// The addresses frames of a channel from `from` must carry: what its sender writes
    /// (`address` on the sending side, mirrored), as far as this host knows them.
    fn source_check(&self, from: &str) -> SourceCheck {
        let default = Endpoint::default();
        if from == "local" {
            return SourceCheck::exact(&default);
        }
        let peer = self.cfg.peer(from);
        let peer_ip = peer.and_then(|p| p.data_ipv4()).map(|ip| ip.octets());
        match self.dp.wire {
            Some(w) => SourceCheck {
                src_mac: peer
                    .and_then(|p| p.mac.as_deref())
                    .and_then(|m| parse_mac(m).ok()),
                dst_mac: Some(w.mac),
                src_ip: peer_ip,
                dst_ip: Some(w.ip),
                src_port: Some(default.src_port),
            },
            // No data link: the sender writes the default addresses, to our data IPv4 as
            // it has us configured (unknown here).
            None => SourceCheck {
                dst_ip: None,
                ..SourceCheck::exact(&default)
            },
        }
    }

    fn rx_counters(&self, id: u32, r: &Receiver) -> RxCounters {
        let s = r.stats();
        let (recent_misses, older_misses) = self.sink.recent_misses(id);
        RxCounters {
            delivered: s.delivered.get(),
            bytes: s.bytes.get(),
            deadline_misses: s.deadline_misses.get(),
            lost: s.lost.get(),
            duplicates: s.duplicates.get(),
            reordered: s.reordered.get(),
            latency: percentiles(&s.latency_snapshot()),
            recent_misses,
            older_misses,
            rejected: ParseError::ALL
                .iter()
                .map(|e| (e.name().to_string(), s.rejected[e.index()].get()))
                .filter(|(_, n)| *n > 0)
                .collect(),
            implausible_timestamps: s.implausible_timestamps.get(),
            resyncs: s.resyncs.get(),
        }
    }

    fn stats(&self, only: Option<u32>) -> Result<Vec<ChannelStatsInfo>, ApiError> {
        if let Some(id) = only {
            if !self.out.contains_key(&id) && !self.inc.contains_key(&id) {
                return Err(not_found(id));
            }
        }
        Ok(self.all_stats(only))
    }

    fn all_stats(&self, only: Option<u32>) -> Vec<ChannelStatsInfo> {
        let mut v = Vec::new();
        for (&id, o) in &self.out {
            if only.is_some_and(|x| x != id) {
                continue;
            }
            let s = &o.shared.stats;
            let snap = s.snapshot();
            let rx = match o.dst {
                Dst::Local => self
                    .inc
                    .get(&id)
                    .and_then(|i| i.receiver.as_ref())
                    .map(|r| self.rx_counters(id, r)),
                Dst::Peer(_) => None,
            };
            v.push(ChannelStatsInfo {
                id,
                direction: "out".into(),
                peer: o.info.dst.clone(),
                uptime_s: o.opened.elapsed().as_secs_f64(),
                tx: Some(TxCounters {
                    submitted: snap.submitted,
                    sent: snap.messages_sent,
                    packets: snap.packets,
                    bytes: snap.bytes,
                    would_block: snap.would_block,
                    dropped: snap.dropped_newest + snap.dropped_oldest + snap.dropped_on_close,
                    late_packets: snap.late_packets,
                    budget_overruns: snap.budget_overruns,
                    invalid: snap.invalid_descriptors,
                    restamped: snap.restamped,
                    delay: percentiles(&s.delay_snapshot()),
                }),
                rx,
            });
        }
        for (&id, i) in &self.inc {
            if only.is_some_and(|x| x != id) || i.info.from == "local" {
                continue;
            }
            v.push(ChannelStatsInfo {
                id,
                direction: "in".into(),
                peer: i.info.from.clone(),
                uptime_s: i.opened.elapsed().as_secs_f64(),
                tx: None,
                rx: i.receiver.as_ref().map(|r| self.rx_counters(id, r)),
            });
        }
        v
    }

    // ----- policy -----

    fn policy_set(&mut self, u: &PolicyUpdate) -> Result<PolicyInfo, ApiError> {
        let mut next = self.policy.clone();
        if let Some(g) = u.granularity {
            next.granularity = g;
        }
        if let Some(w) = u.work_conserving {
            next.work_conserving = w;
        }
        if let Some(r) = u.best_effort_reserve_ppm {
            next.best_effort_reserve_ppm = r;
        }
        if let Some(b) = u.run_budget_cycles {
            next.run_budget_cycles = b;
        }
        if let Some(o) = &u.overflow {
            o.parse::<OverflowPolicy>()
                .map_err(|m| ApiError::invalid("overflow", format!("overflow: {m}")))?;
            next.overflow = o.clone();
        }
        if let Some(c) = &u.close {
            if c != "drain" && c != "discard" {
                return Err(ApiError::invalid(
                    "close",
                    format!("close: '{c}' is neither drain nor discard"),
                ));
            }
            next.close = c.clone();
        }
        let sched = SchedPolicy {
            granularity: next.granularity,
            work_conserving: next.work_conserving,
            best_effort_reserve_ppm: next.best_effort_reserve_ppm,
            run_budget_cycles: next.run_budget_cycles,
            fifo: false,
        };
        sched
            .validate()
            .map_err(|e| ApiError::invalid("policy", format!("policy: {e}")))?;
        let model_changes = next.granularity != self.policy.granularity
            || next.work_conserving != self.policy.work_conserving
            || next.best_effort_reserve_ppm != self.policy.best_effort_reserve_ppm;
        if model_changes {
            let open = self.out.len() + self.inc.len();
            if open > 0 {
                return Err(ApiError::new(
                    ErrorKind::Refused,
                    format!(
                        "granularity, work_conserving and best_effort_reserve_ppm change what \
                         admission guaranteed; close the {open} open channel(s) first"
                    ),
                ));
            }
            let tx = ResourceModel {
                granularity: next.granularity,
                work_conserving: next.work_conserving,
                best_effort_reserve_ppm: next.best_effort_reserve_ppm,
                ..self.tx_adm.model().clone()
            };
            let rx = ResourceModel {
                granularity: next.granularity,
                work_conserving: next.work_conserving,
                best_effort_reserve_ppm: next.best_effort_reserve_ppm,
                ..self.rx_adm.model().clone()
            };
            self.tx_adm = Admission::new(tx).map_err(model_error)?;
            self.rx_adm = Admission::new(rx).map_err(model_error)?;
        }
        for slot in self.dp.tx.iter_mut().chain(self.dp.rx.iter_mut()) {
            slot.handle
                .set_policy(sched)
                .map_err(|e| internal(format!("a core refused the policy: {e}")))?;
        }
        self.policy = next;
        Ok(self.policy.clone())
    }

    // ----- persistence and shutdown -----

    /// Writes the table to the state file. A failure changes nothing in memory: it is logged,
    /// counted, carried on every client reply (`state_save_failed`) and retried every
    /// [`SAVE_RETRY`] until a save succeeds, which clears it. `after` says what the save was for.
    fn persist(&mut self, after: &str) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let state = StateFile {
            version: STATE_VERSION,
            channels: self
                .out
                .iter()
                .map(|(&id, o)| ChannelRecord {
                    id,
                    open: o.args.clone(),
                })
                .collect(),
        };
        self.last_save_attempt = Instant::now();
        let e = match state.save_with(&self.unrestored, &path) {
            Ok(()) => {
                if let Some(f) = self.save_failure.take() {
                    tracing::warn!(
                        "rtchand: state file {} saved again after {} failed attempt(s) since {}",
                        f.path,
                        f.attempts,
                        f.since
                    );
                }
                return;
            }
            Err(e) => e,
        };
        self.save_failures_total += 1;
        let why = match &e {
            StateError::Io { source, .. } => source.to_string(),
            StateError::Unreadable { message, .. } => message.clone(),
        };
        let now = utc_stamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        match &mut self.save_failure {
            Some(f) => {
                f.attempts += 1;
                f.last = now;
                if f.error != why {
                    tracing::error!("rtchand: {e} (still not saved since {})", f.since);
                    f.error = why;
                }
            }
            None => {
                tracing::error!(
                    "rtchand: {e} (saving after {after}); the channel table is kept in memory, \
                     the save retried every {}s, and `channel list`/`stats` show it",
                    SAVE_RETRY.as_secs()
                );
                self.save_failure = Some(SaveFailure {
                    path: path.display().to_string(),
                    error: why,
                    since: now.clone(),
                    last: now,
                    after: after.to_string(),
                    attempts: 1,
                });
            }
        }
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

/// The numbers a best-effort channel shows where a real-time one shows its admission: no
/// deadlines, no utilisation, its queue as the buffer.
fn unadmitted(id: u32, core: u16, mmax: u32, imin: Nanos, queue: u32) -> Admitted {
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

fn core_hint(dst: &Dst, core: u16) -> Option<u16> {
    match dst {
        Dst::Local => Some(core),
        Dst::Peer(_) => None,
    }
}

/// A receiving host's rejection in words: its single "queue" is the link's receive capacity.
fn rx_text(rej: &control::admission::Rejection) -> String {
    rej.to_string()
        .replace("txq 0 link", "receive link")
        .replace("core ", "RX core ")
}
