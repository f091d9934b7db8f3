//! The rtchand daemon: configuration, the control thread, the Unix-socket server, peers.
//!
//! # Threads and data flow
//! ```text
//! rtchanctl ──Unix socket──▶ server (one poll(2) event loop: SO_PEERCRED and caps at
//!                            accept, line cap, timeouts, decode, permission) ──Msg──▶ control
//!                            thread ──ReplyTo (JSON line + SCM_RIGHTS fds)──▶ server
//! peer daemon ──TCP──▶ peer server (one thread per session) ──Msg──▶ control thread
//! control thread ──CoreHandle (lock-free control ring, waits for the ack)──▶ polling cores
//! control thread ──TCP (PeerLink)──▶ peer daemons' control threads
//! source threads ──Sender::submit──▶ channels;  sink thread ◀── Receivers
//! ```
//! The control thread ([`controller`]) owns the channel table and the admission controllers,
//! handles one message at a time, heartbeats its peer sessions, and persists the table after
//! every change. [`Daemon::start`] builds all of it from a [`DaemonConfig`];
//! [`Daemon::shutdown`] stops accepting, closes channels (draining per the close mode),
//! stops the cores and returns the final statistics. [`run`] adds SIGINT/SIGTERM handling
//! for `rtchand --config FILE`.
//!
//! Logs go through `tracing` (one line per event, with its level; `rtchand` installs a
//! subscriber writing to stderr, which journald keeps under the service).
//!
//! # Modules
//! - [`controller`]: the control thread's state and request handling.
//! - [`server`]: the control socket and its permission checks.
//! - [`peer`]: control-plane sessions between daemons: bytes and timers only; the
//!   reservation protocol's rules are `control::reservation`'s machines, driven by the
//!   control thread.
//! - [`dp`]: building the polling cores from the `[port]` and `[[cores]]` tables.
//! - [`traffic`]: built-in sources and the receivers' sink.
//! - [`client`]: the socket client and the tables `rtchanctl` prints.
//! - [`calibrate`]: `rtchand calibrate`, measuring the cost model.

pub mod calibrate;
pub mod client;
pub mod controller;
pub mod dp;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod traffic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use control::config::{resolve_group, ConfigError, DaemonConfig};
use control::protocol::{PeerRequest, Reply, Request};
use control::state::{check_writable, keep_aside, LoadedState, StateFile};

pub use self::controller::FinalReport;

/// A message to the control thread.
pub enum Msg {
    /// A request from `rtchanctl` (permission already checked).
    Client {
        /// The connection it came on (see [`Msg::ClientClosed`]).
        conn: server::ConnId,
        /// Who sent it (credentials from `SO_PEERCRED`).
        caller: server::Caller,
        /// The request.
        request: Request,
        /// Where the reply (and any file descriptors) goes.
        reply: server::ReplyTo,
    },
    /// A control-socket connection ended (after all of its requests): free what it held.
    ClientClosed {
        /// The connection.
        conn: server::ConnId,
    },
    /// A peer's connection was accepted as session `session`.
    PeerAccepted {
        /// The session.
        session: u64,
        /// The peer names its `hello` may give (those configured at its address).
        allowed: Vec<String>,
    },
    /// A request from a peer's control plane.
    Peer {
        /// The session it came on.
        session: u64,
        /// Its position in the session, from 0.
        seq: u64,
        /// The request.
        request: PeerRequest,
        /// Where the answer goes.
        reply: mpsc::Sender<peer::PeerAnswer>,
    },
    /// A peer's session ended: free what it held.
    SessionClosed {
        /// The session.
        session: u64,
    },
    /// SIGHUP: apply the run-time policy of a re-read configuration file.
    Reload {
        /// The policy as the file now has it.
        update: control::protocol::PolicyUpdate,
        /// The outcome (the policy now in force, or why nothing changed).
        reply: mpsc::Sender<Reply>,
    },
    /// A scrape of the metrics endpoint: the exposition text goes back on `reply`.
    Metrics {
        /// Where the text goes.
        reply: mpsc::Sender<String>,
    },
}

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The dataplane or the admission model could not be built.
    #[error("{0}")]
    Setup(String),
    /// The control socket could not be served.
    #[error("control socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The peering port could not be bound.
    #[error("peering.listen {addr}: {source}")]
    Peering {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The metrics endpoint could not be bound.
    #[error("metrics.listen {addr}: {source} (another process, or another rtchand, holds it?)")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// The state file cannot be read or written: starting would lose its channels.
    #[error("{0}")]
    State(String),
}

/// How to start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Start with no channels when the state file is unreadable, keeping it aside under a
    /// timestamped name (`rtchand --discard-state`).
    pub discard_state: bool,
}

/// Reads the state file at start-up: refuses an unwritable `state_file`, and an unreadable
/// one unless `discard` (which keeps it aside, never overwriting it).
fn load_state(path: &Path, discard: bool) -> Result<LoadedState, DaemonError> {
    check_writable(path).map_err(|m| {
        DaemonError::State(format!(
            "state_file {}: {m}; refusing to start, since no channel could be saved",
            path.display()
        ))
    })?;
    match StateFile::read(path) {
        Ok(l) => Ok(l),
        Err(e) if discard => {
            let kept = keep_aside(path).map_err(|k| {
                DaemonError::State(format!("{e}; --discard-state could not keep it aside: {k}"))
            })?;
            tracing::warn!(
                "rtchand: {e}; --discard-state: kept it as {} and starting with no channels",
                kept.display()
            );
            Ok(LoadedState::default())
        }
        Err(e) => Err(DaemonError::State(format!(
            "{e}; refusing to start so the channels in it are not lost: repair or move the \
             file, or start with --discard-state to keep it aside as {}.unreadable-<time> and \
             start with no channels",
            path.display()
        ))),
    }
}

/// Sets the daemon's stop flag when dropped armed (a start that failed part-way).
struct StopOnError(Option<Arc<AtomicBool>>);

impl Drop for StopOnError {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.store(true, Ordering::Relaxed);
        }
    }
}

/// A running daemon.
pub struct Daemon {
    stop: Arc<AtomicBool>,
    control: Option<JoinHandle<FinalReport>>,
    server: server::Server,
    peer: Option<peer::PeerServer>,
    metrics: Option<metrics::MetricsServer>,
    /// The control thread's inbox (for SIGHUP reloads).
    inbox: mpsc::Sender<Msg>,
    /// Where peers connect (the bound address of `peering.listen`).
    pub peer_addr: Option<SocketAddr>,
    /// Where `GET /metrics` is served (the bound address of `metrics.listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// The control socket.
    pub socket: PathBuf,
    /// Channels re-established from the state file.
    pub restored: usize,
    /// Channels of the state file that could not be re-established, with the reason.
    pub restore_errors: Vec<String>,
    /// Kernel thread ids of the threads every control request passes through: the control
    /// thread and the socket's event loop. Tests watch their run-queue wait
    /// ([`crate::preemption`]) to tell OS preemption from a slow daemon.
    pub request_tids: RequestTids,
}

/// The kernel thread ids ([`crate::preemption::current_tid`]) on a control request's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTids {
    /// The control thread (`rtchan-control`).
    pub control: u32,
    /// The control socket's event loop (`rtchan-ctl-server`).
    pub server: u32,
}

impl Daemon {
    /// Starts the cores, the control thread, the peer server and the control socket, after
    /// re-establishing the persisted channels.
    pub fn start(cfg: DaemonConfig) -> Result<Self, DaemonError> {
        Self::start_with(cfg, StartOptions::default())
    }

    /// [`Daemon::start`] with options.
    pub fn start_with(cfg: DaemonConfig, opts: StartOptions) -> Result<Self, DaemonError> {
        cfg.validate()?;
        let state = match &cfg.state_file {
            Some(p) => load_state(p, opts.discard_state)?,
            None => LoadedState::default(),
        };
        let group = cfg.group.as_deref().map(resolve_group).transpose();
        let read_group = cfg.read_group.as_deref().map(resolve_group).transpose();
        let (group, read_group) = match (group, read_group) {
            (Ok(g), Ok(r)) => (g, r),
            (Err(m), _) | (_, Err(m)) => return Err(DaemonError::Setup(m)),
        };
        let access = server::Access { group, read_group };
        let mode = cfg.socket_mode()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Msg>();
        // A start that fails part-way stops what it had started (the metrics thread, the
        // control thread).
        let mut stop_on_error = StopOnError(Some(stop.clone()));
        // Bound before the cores start, so that an address in use fails the start at once.
        let metrics = match cfg.metrics.listen {
            Some(addr) => Some(
                metrics::MetricsServer::start(addr, tx.clone(), stop.clone())
                    .map_err(|source| DaemonError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let mut control = controller::Control::new(cfg.clone()).map_err(DaemonError::Setup)?;
        let peer = match cfg.peering.listen {
            Some(addr) => Some(
                peer::PeerServer::start(addr, cfg.peers.clone(), tx.clone(), stop.clone())
                    .map_err(|source| DaemonError::Peering { addr, source })?,
            ),
            None => None,
        };
        if let Some(p) = &peer {
            control.attach_peer_closer(p.closer());
        }
        let (restored, restore_errors) = control.restore(state);
        let stop2 = stop.clone();
        control.attach_inbox(rx);
        let (tid_tx, tid_rx) = mpsc::channel();
        let control = std::thread::Builder::new()
            .name("rtchan-control".into())
            .spawn(move || {
                let _ = tid_tx.send(crate::preemption::current_tid());
                loop {
                    match control.next_msg(Duration::from_millis(50)) {
                        // A stopping server ends every connection: that is not their clients
                        // going away, and their channels stay in the table for the next start.
                        Ok(Msg::ClientClosed { .. }) if stop2.load(Ordering::Relaxed) => {}
                        Ok(m) => control.handle(m),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    control.tick();
                }
                control.shutdown()
            })
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
        let control_tid = tid_rx
            .recv()
            .map_err(|_| DaemonError::Setup("the control thread did not start".into()))?;
        let reload_tx = tx.clone();
        let server = server::Server::start(
            &cfg.socket,
            mode,
            group.or(read_group),
            access,
            server::ServerLimits::from(&cfg.limits),
            tx,
            stop.clone(),
        )
        .map_err(|source| DaemonError::Socket {
            path: cfg.socket.clone(),
            source,
        })?;
        stop_on_error.0 = None;
        let server_tid = server.tid;
        Ok(Self {
            stop,
            control: Some(control),
            server,
            peer_addr: peer.as_ref().map(|p| p.local_addr),
            peer,
            metrics_addr: metrics.as_ref().map(|m| m.local_addr),
            metrics,
            inbox: reload_tx,
            socket: cfg.socket,
            restored,
            restore_errors,
            request_tids: RequestTids {
                control: control_tid,
                server: server_tid,
            },
        })
    }

    /// Applies the run-time changeable part of `cfg` (the `[policy]` table, `overflow`,
    /// `close`) as `policy set` would; the policy now in force, or why nothing changed.
    pub fn reload(&self, cfg: &DaemonConfig) -> Reply {
        let update = control::protocol::PolicyUpdate {
            granularity: Some(cfg.policy.granularity),
            work_conserving: Some(cfg.policy.work_conserving),
            best_effort_reserve_ppm: Some(cfg.policy.best_effort_reserve_ppm),
            run_budget_cycles: Some(cfg.policy.run_budget_cycles),
            overflow: Some(cfg.overflow.clone()),
            close: Some(
                match cfg.close {
                    control::config::CloseMode::Drain => "drain",
                    control::config::CloseMode::Discard => "discard",
                }
                .into(),
            ),
        };
        let (tx, rx) = mpsc::channel();
        if self.inbox.send(Msg::Reload { update, reply: tx }).is_err() {
            return Reply::err(control::protocol::ApiError::new(
                control::protocol::ErrorKind::Internal,
                "the control thread has stopped",
            ));
        }
        rx.recv().unwrap_or_else(|_| {
            Reply::err(control::protocol::ApiError::new(
                control::protocol::ErrorKind::Internal,
                "the control thread has stopped",
            ))
        })
    }

    /// The control socket server's counters (connections accepted, refused, timed out).
    pub fn server_counters(&self) -> Arc<server::ServerCounters> {
        self.server.counters.clone()
    }

    /// Stops accepting, closes the channels (draining per the close mode), stops the cores;
    /// the final statistics. The persisted table keeps the channels for the next start.
    pub fn shutdown(mut self) -> FinalReport {
        self.stop.store(true, Ordering::Relaxed);
        self.server.join();
        if let Some(p) = self.peer.as_mut() {
            p.join();
        }
        if let Some(m) = self.metrics.as_mut() {
            m.join();
        }
        self.control
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// `e` on one line (a log event is one line): a parser's multi-line excerpt folded.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join(" ")
}

/// SIGHUP: re-reads `path`, applies its run-time policy, and names what else changed (which
/// needs a restart). A file that does not load changes nothing.
fn reload(d: &Daemon, path: &Path, running: &DaemonConfig) {
    let cfg = match DaemonConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("rtchand: SIGHUP: {}; nothing changed", one_line(&e));
            return;
        }
    };
    let reply = d.reload(&cfg);
    match reply.into_result::<control::protocol::PolicyInfo>() {
        Ok(p) => tracing::info!(
            "rtchand: SIGHUP: policy reloaded from {}: granularity {}, work_conserving {}, \
             best_effort_reserve_ppm {}, run_budget_cycles {}, overflow {}, close {}",
            path.display(),
            p.granularity,
            p.work_conserving,
            p.best_effort_reserve_ppm,
            p.run_budget_cycles,
            p.overflow,
            p.close
        ),
        Err(e) => tracing::warn!("rtchand: SIGHUP: policy not changed: {}", e.message),
    }
    let (new, old) = (
        serde_json::to_value(&cfg).unwrap_or_default(),
        serde_json::to_value(running).unwrap_or_default(),
    );
    if let (Some(new), Some(old)) = (new.as_object(), old.as_object()) {
        let mut policy_new = new.get("policy").cloned().unwrap_or_default();
        let mut policy_old = old.get("policy").cloned().unwrap_or_default();
        // These are read when the cores start.
        const AT_START: [&str; 4] = ["idle", "idle_sleep", "service_interval", "tx_window"];
        for p in [&mut policy_new, &mut policy_old] {
            if let Some(o) = p.as_object_mut() {
                o.retain(|k, _| AT_START.contains(&k.as_str()));
            }
        }
        let mut stale: Vec<String> = new
            .iter()
            .filter(|(k, v)| {
                !matches!(k.as_str(), "policy" | "overflow" | "close") && old.get(*k) != Some(*v)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if policy_new != policy_old {
            stale.push("policy.idle/idle_sleep/service_interval/tx_window".into());
        }
        if !stale.is_empty() {
            tracing::warn!(
                "rtchand: SIGHUP: changed but not applied until a restart: {}",
                stale.join(", ")
            );
        }
    }
}

/// `rtchand --config FILE`: runs until SIGINT or SIGTERM, then shuts down; the final
/// statistics.
pub fn run(path: &Path, opts: StartOptions) -> Result<FinalReport, DaemonError> {
    let cfg = DaemonConfig::load(path)?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone()).map_err(DaemonError::Signals)?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(DaemonError::Signals)?;
    let started_with = cfg.clone();
    let d = Daemon::start_with(cfg, opts)?;
    for e in &d.restore_errors {
        tracing::warn!("rtchand: not re-established (kept in the state file and listed): {e}");
    }
    tracing::info!(
        "rtchand: serving {}{}{}; {} channel(s) re-established",
        d.socket.display(),
        d.peer_addr
            .map(|a| format!(", peers on {a}"))
            .unwrap_or_default(),
        d.metrics_addr
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default(),
        d.restored
    );
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            reload(&d, path, &started_with);
        }
    }
    tracing::info!("rtchand: stopping: no new requests; draining channels");
    Ok(d.shutdown())
}
