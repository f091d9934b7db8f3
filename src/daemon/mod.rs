//! The rtchand daemon: configuration, the control thread, the Unix-socket server, peers.
//!
//! # Threads and data flow
//! ```text
//! rtchanctl ──Unix socket──▶ server (one poll(2) event loop: SO_PEERCRED and caps at
//!                            accept, line cap, timeouts, decode, permission) ──Msg──▶ control
//!                            thread ──ReplyTo (JSON line + SCM_RIGHTS fds)──▶ server
//! peer daemon ──TCP──▶ peer server (one thread per session) ──Msg──▶ control thread
//! control thread ──CoreHandle (lock-free control ring, waits for the ack)──▶ polling cores
//! control thread ──TCP (PeerSession)──▶ peer daemons' control threads
//! source threads ──Sender::submit──▶ channels;  sink thread ◀── Receivers
//! ```
//! The control thread ([`controller`]) owns the channel table and the admission controllers,
//! handles one message at a time, heartbeats its peer sessions, and persists the table after
//! every change. [`Daemon::start`] builds all of it from a [`DaemonConfig`];
//! [`Daemon::shutdown`] stops accepting, closes channels (draining per the close mode),
//! stops the cores and returns the final statistics. [`run`] adds SIGINT/SIGTERM handling
//! for `rtchand --config FILE`.
//!
//! # Modules
//! - [`controller`]: the control thread's state and request handling.
//! - [`server`]: the control socket and its permission checks.
//! - [`peer`]: control-plane sessions between daemons.
//! - [`dp`]: building the polling cores from the `[port]` and `[[cores]]` tables.
//! - [`traffic`]: built-in sources and the receivers' sink.
//! - [`client`]: the socket client and the tables `rtchanctl` prints.
//! - [`calibrate`]: `rtchand calibrate`, measuring the cost model.

pub mod calibrate;
pub mod client;
pub mod controller;
pub mod dp;
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
    /// A request from a peer's control plane.
    Peer {
        /// The session it came on.
        session: u64,
        /// The peer's name.
        from: String,
        /// The request.
        request: PeerRequest,
        /// Where the reply goes.
        reply: mpsc::Sender<Reply>,
    },
    /// A peer's session ended: free what it held.
    SessionClosed {
        /// The session.
        session: u64,
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
            eprintln!(
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

/// A running daemon.
pub struct Daemon {
    stop: Arc<AtomicBool>,
    control: Option<JoinHandle<FinalReport>>,
    server: server::Server,
    peer: Option<peer::PeerServer>,
    /// Where peers connect (the bound address of `peering.listen`).
    pub peer_addr: Option<SocketAddr>,
    /// The control socket.
    pub socket: PathBuf,
    /// Channels re-established from the state file.
    pub restored: usize,
    /// Channels of the state file that could not be re-established, with the reason.
    pub restore_errors: Vec<String>,
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
        let mut control = controller::Control::new(cfg.clone()).map_err(DaemonError::Setup)?;
        let heartbeat = Duration::from_nanos(cfg.peering.heartbeat.0);
        let idle = (heartbeat * 3).max(Duration::from_nanos(cfg.peering.timeout.0));
        let peer = match cfg.peering.listen {
            Some(addr) => Some(
                peer::PeerServer::start(addr, cfg.peers.clone(), idle, tx.clone(), stop.clone())
                    .map_err(|source| DaemonError::Peering { addr, source })?,
            ),
            None => None,
        };
        let (restored, restore_errors) = control.restore(state);
        let stop2 = stop.clone();
        control.attach_inbox(rx);
        let control = std::thread::Builder::new()
            .name("rtchan-control".into())
            .spawn(move || {
                loop {
                    match control.next_msg(Duration::from_millis(50)) {
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
        Ok(Self {
            stop,
            control: Some(control),
            server,
            peer_addr: peer.as_ref().map(|p| p.local_addr),
            peer,
            socket: cfg.socket,
            restored,
            restore_errors,
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
        self.control
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
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
    let d = Daemon::start_with(cfg, opts)?;
    for e in &d.restore_errors {
        eprintln!("rtchand: not re-established (kept in the state file and listed): {e}");
    }
    eprintln!(
        "rtchand: serving {}{}; {} channel(s) re-established",
        d.socket.display(),
        d.peer_addr
            .map(|a| format!(", peers on {a}"))
            .unwrap_or_default(),
        d.restored
    );
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("rtchand: stopping: no new requests; draining channels");
    Ok(d.shutdown())
}
