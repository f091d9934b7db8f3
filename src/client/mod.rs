//! The client library: programs send and receive on their channels from their own processes.
//!
//! ```no_run
//! use rtchan::client::{Client, OpenSpec};
//! use std::time::Duration;
//! let client = Client::connect(rtchan::client::default_socket())?;
//! let spec = OpenSpec::new(256, Duration::from_millis(1), 4, Duration::from_millis(5));
//! let mut tx = client.open(&spec)?;             // admission on both hosts, ring attached
//! tx.send(b"hello")?;                           // no syscall: a copy and a release store
//! let mut rx = client.attach_receiver(tx.id())?; // the loopback's receiving end
//! let mut buf = [0u8; 256];
//! let m = rx.recv_timeout(&mut buf, Duration::from_millis(100))?;
//! assert_eq!(&buf[..m.len], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Data flow
//! [`Client`] holds the control-socket connection (line-delimited JSON, `control::protocol`).
//! `open` (with `attach: true`) and `attach` are answered with the channel's ring, a sealed
//! memfd passed with `SCM_RIGHTS` and mapped here (`dataplane::shm`). [`Sender::send`] writes
//! the message into one of the channel's reserved buffers in that ring, stamps it and
//! publishes it with one release store; the daemon's polling core finds it by scanning client
//! rings once per loop iteration and sends it. On the receiving host the core delivers into the
//! [`Receiver`]'s ring the same way and wakes it (a futex on the ring's wake word) only when
//! the reader said it sleeps. A message's delay is measured from the stamp taken in `send`.
//!
//! # Failures
//! Every call returns a typed error. The daemon's death is seen through the socket (a
//! zero-timeout poll every [`LIVENESS_INTERVAL`] and whenever a ring is full or empty):
//! [`SendError::DaemonGone`]. The daemon closing a channel (close, its close policy, a
//! corrupted ring) sets a flag in the ring: [`SendError::Closed`]. When this process's
//! connection ends, for whatever reason, the daemon closes the channels it opened and frees
//! their reservations. Writes to the socket use `MSG_NOSIGNAL`: no SIGPIPE.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::protocol::{
    ApiError, AttachArgs, AttachRole, CloseArgs, ErrorKind, IdArgs, OpenArgs, Reply, Request,
    StatsArgs,
};
use dataplane::shm::{
    self, Consumer, DeliverDesc, Producer, Region, SubmitDesc, Taken, DELIVER_LATE,
};
use dataplane::time::{monotonic_now, Nanos};

pub use control::protocol::{ChannelInfo, ChannelStatsInfo as ChannelStats, IncomingInfo};
pub use dataplane::channel::Submit as Sent;
pub use dataplane::spec::OverflowPolicy as Overflow;

use crate::daemon::client::Client as Ctl;

/// How often a busy sender or receiver checks that the daemon is still there (a zero-timeout
/// `poll` of the socket, ~1 µs): often enough that a dead daemon is noticed within
/// milliseconds, rarely enough to cost nothing per message.
pub const LIVENESS_INTERVAL: Nanos = 10_000_000;
/// How long `recv_timeout` busy-polls before it sleeps on the ring's wake word: a message due within
/// this long is taken without a wake-up's latency (tens of µs).
pub const SPIN_BEFORE_SLEEP: Nanos = 50_000;
/// Longest single sleep of `recv_timeout` between liveness checks.
const SLEEP_SLICE_MS: i32 = 10;
/// How long a control call waits for the daemon's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The control socket: `$RTCHAN_SOCKET`, else `/run/rtchan/rtchand.sock` (as `rtchanctl`).
pub fn default_socket() -> PathBuf {
    std::env::var_os("RTCHAN_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(control::config::DEFAULT_SOCKET))
}

/// A control-path failure: connect, open, attach, stats, close.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon refused the request (`kind`, the `field` at fault, a message).
    #[error("{0}")]
    Api(ApiError),
    /// The daemon could not be reached, or hung up.
    #[error("daemon gone: {0}")]
    DaemonGone(String),
    /// The daemon's answer does not make sense (a bad reply, missing fds, a bad ring).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// A negative errno-style code (for the C API).
    pub fn errno(&self) -> i32 {
        -match self {
            Self::Api(e) => match e.kind {
                ErrorKind::Invalid => libc::EINVAL,
                ErrorKind::Protocol => libc::EPROTO,
                ErrorKind::NotFound => libc::ENOENT,
                ErrorKind::Permission => libc::EACCES,
                ErrorKind::Refused => libc::EBUSY,
                ErrorKind::Peer => libc::EHOSTUNREACH,
                ErrorKind::Internal => libc::EIO,
                ErrorKind::Limit => libc::ENOSPC,
            },
            Self::DaemonGone(_) => libc::ECONNRESET,
            Self::Protocol(_) => libc::EPROTO,
        }
    }
}

/// Why a send did not queue the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The channel's buffer is full and its policy is `block`: try again later.
    #[error("channel buffer full; try again")]
    WouldBlock,
    /// Longer than the channel's Mmax: nothing was sent, nothing truncated.
    #[error("message of {len} bytes exceeds the channel's mmax of {mmax} bytes")]
    TooLong {
        /// The message length.
        len: usize,
        /// The channel's Mmax.
        mmax: u32,
    },
    /// The daemon closed the channel (closed, its close policy, or a corrupted ring).
    #[error("channel closed by the daemon")]
    Closed,
    /// The daemon's socket hung up: the daemon died or stopped.
    #[error("the daemon is gone")]
    DaemonGone,
}

impl SendError {
    /// A negative errno-style code (for the C API).
    pub fn errno(&self) -> i32 {
        -match self {
            Self::WouldBlock => libc::EAGAIN,
            Self::TooLong { .. } => libc::EMSGSIZE,
            Self::Closed => libc::EPIPE,
            Self::DaemonGone => libc::ECONNRESET,
        }
    }
}

/// Why a receive returned no message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing delivered yet (the non-blocking calls).
    #[error("no message yet")]
    WouldBlock,
    /// Nothing delivered within the timeout.
    #[error("no message within the timeout")]
    Timeout,
    /// The next message is longer than the buffer; it stays queued (not lost).
    #[error("message of {len} bytes does not fit a {cap}-byte buffer")]
    BufferTooSmall {
        /// The message length.
        len: usize,
        /// The buffer's length.
        cap: usize,
    },
    /// The daemon closed the channel (or detached this receiver) and the ring is empty.
    #[error("channel closed by the daemon")]
    Closed,
    /// The daemon's socket hung up.
    #[error("the daemon is gone")]
    DaemonGone,
}

impl RecvError {
    /// A negative errno-style code (for the C API).
    pub fn errno(&self) -> i32 {
        -match self {
            Self::WouldBlock => libc::EAGAIN,
            Self::Timeout => libc::ETIMEDOUT,
            Self::BufferTooSmall { .. } => libc::EMSGSIZE,
            Self::Closed => libc::EPIPE,
            Self::DaemonGone => libc::ECONNRESET,
        }
    }
}

/// A received message's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Bytes.
    pub len: usize,
    /// The channel's message sequence number.
    pub seq: u32,
    /// The sender's stamp (CLOCK_MONOTONIC ns; one clock on one host, PTP across hosts).
    pub submit_ts: u64,
    /// When the receiving core delivered it into this ring.
    pub delivered_ts: u64,
    /// Its absolute end-to-end deadline (logical arrival + D; 0 for best-effort).
    pub deadline: u64,
    /// Delivered after its end-to-end deadline.
    pub late: bool,
}

/// What [`Client::open`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSpec {
    /// Largest message, bytes.
    pub mmax: u32,
    /// Smallest interval between messages.
    pub imin: Duration,
    /// Largest burst, messages (the channel's buffer).
    pub bmax: u32,
    /// End-to-end delay bound D, from `send` to delivery at the receiver.
    pub deadline: Duration,
    /// `local` (the loopback) or a configured peer's name.
    pub dst: String,
    /// Full-buffer policy; the daemon's default when `None`.
    pub policy: Option<Overflow>,
    /// Core (and TX queue) to run on; placement decides when `None`.
    pub core: Option<u16>,
    /// A best-effort channel (no admission, no bound; `deadline` ignored).
    pub best_effort: bool,
}

impl OpenSpec {
    /// A real-time channel to `local` with the daemon's default policy.
    pub fn new(mmax: u32, imin: Duration, bmax: u32, deadline: Duration) -> Self {
        Self {
            mmax,
            imin,
            bmax,
            deadline,
            dst: "local".into(),
            policy: None,
            core: None,
            best_effort: false,
        }
    }

    fn args(&self) -> OpenArgs {
        OpenArgs {
            core: self.core,
            policy: self.policy.map(|p| p.name().to_string()),
            best_effort: self.best_effort,
            attach: true,
            ..OpenArgs::new(
                u64::from(self.mmax),
                self.imin.as_nanos() as Nanos,
                self.bmax,
                self.deadline.as_nanos() as Nanos,
                &self.dst,
            )
        }
    }
}

/// The connection, shared by the client and its channels.
struct Conn {
    ctl: Mutex<Ctl>,
    /// A second descriptor of the socket, polled for hang-up without the lock.
    watch: UnixStream,
    gone: AtomicBool,
}

impl Conn {
    /// The daemon was already seen gone (one relaxed load: cheap enough for every call).
    #[inline]
    fn known_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn alive(&self) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        if shm::hung_up(self.watch.as_fd()) {
            self.gone.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), Error> {
        let mut ctl = self.ctl.lock().unwrap_or_else(|p| p.into_inner());
        ctl.call_with_fds(req).map_err(|e| {
            self.gone.store(true, Ordering::Relaxed);
            Error::DaemonGone(e.to_string())
        })
    }

    fn call_result<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request,
    ) -> Result<(T, Vec<OwnedFd>), Error> {
        let (reply, fds) = self.call(req)?;
        let v = reply.into_result::<T>().map_err(|e| {
            if e.kind == ErrorKind::Protocol && e.message.starts_with("reply does not match") {
                Error::Protocol(e.message)
            } else {
                Error::Api(e)
            }
        })?;
        Ok((v, fds))
    }

    /// Tells the daemon this process mapped the ring of channel `id`'s `role` end.
    fn mapped(&self, id: u32, role: AttachRole) -> Result<(), Error> {
        let _: (serde_json::Value, _) =
            self.call_result(&Request::Mapped(AttachArgs { id, role }))?;
        Ok(())
    }

    fn stats(&self, id: u32) -> Result<ChannelStats, Error> {
        let (v, _): (Vec<ChannelStats>, _) =
            self.call_result(&Request::Stats(StatsArgs { id: Some(id) }))?;
        v.into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::Protocol(format!("no statistics of channel {id} in the reply")))
    }
}

/// A connection to rtchand. Channels keep the connection alive after the `Client` drops; when
/// the connection ends (every handle dropped, or the process exits) the daemon closes the
/// channels it opened.
#[derive(Clone)]
pub struct Client {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("alive", &self.conn.alive())
            .finish()
    }
}

fn one_fd(mut fds: Vec<OwnedFd>, n: usize, what: &str) -> Result<Vec<OwnedFd>, Error> {
    if fds.len() != n {
        return Err(Error::Protocol(format!(
            "the {what} reply carried {} file descriptors, not {n}",
            fds.len()
        )));
    }
    fds.truncate(n);
    Ok(fds)
}

impl Client {
    /// Connects to the daemon's control socket.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self, Error> {
        let ctl = Ctl::connect(socket.as_ref()).map_err(|e| Error::DaemonGone(e.to_string()))?;
        let watch = ctl
            .stream()
            .try_clone()
            .map_err(|e| Error::DaemonGone(e.to_string()))?;
        let _ = ctl.stream().set_read_timeout(Some(CALL_TIMEOUT));
        Ok(Self {
            conn: Arc::new(Conn {
                ctl: Mutex::new(ctl),
                watch,
                gone: AtomicBool::new(false),
            }),
        })
    }

    /// Opens a channel fed by this process (admission on both hosts, as `rtchanctl channel
    /// open`); the sending ring comes back with the reply.
    pub fn open(&self, spec: &OpenSpec) -> Result<Sender, Error> {
        let (info, fds): (ChannelInfo, _) = self.conn.call_result(&Request::Open(spec.args()))?;
        let id = info.id;
        let r = one_fd(fds, 1, "open")
            .and_then(|mut f| Sender::new(self.conn.clone(), info, f.remove(0)));
        if r.is_err() {
            // The channel is open and reserved: close it rather than hold it for nothing.
            let _ = self
                .conn
                .call(&Request::Close(CloseArgs { id, discard: true }));
        }
        r
    }

    /// Attaches to a client-fed channel that has no sender attached (one restored after a
    /// daemon restart).
    pub fn attach_sender(&self, id: u32) -> Result<Sender, Error> {
        let (info, fds): (ChannelInfo, _) =
            self.conn.call_result(&Request::Attach(AttachArgs {
                id,
                role: AttachRole::Send,
            }))?;
        let fd = one_fd(fds, 1, "attach")?.remove(0);
        Sender::new(self.conn.clone(), info, fd)
    }

    /// Attaches to the receiving end of channel `id` on this host (a loopback channel, or one
    /// coming from a peer): its messages are delivered into this process's ring from now on.
    pub fn attach_receiver(&self, id: u32) -> Result<Receiver, Error> {
        let (info, fds): (IncomingInfo, _) =
            self.conn.call_result(&Request::Attach(AttachArgs {
                id,
                role: AttachRole::Recv,
            }))?;
        let r = one_fd(fds, 1, "attach")
            .and_then(|mut f| Receiver::new(self.conn.clone(), info, f.remove(0)));
        if r.is_err() {
            // The daemon handed this connection the ring: give it back, so the daemon's sink
            // keeps receiving and a later attach is not refused.
            let _ = self.conn.call(&Request::Detach(IdArgs { id }));
        }
        r
    }

    /// Statistics of one channel.
    pub fn stats(&self, id: u32) -> Result<ChannelStats, Error> {
        self.conn.stats(id)
    }

    /// Closes a channel this host sends on.
    pub fn close(&self, id: u32) -> Result<(), Error> {
        let _: (ChannelInfo, _) = self
            .conn
            .call_result(&Request::Close(CloseArgs { id, discard: false }))?;
        Ok(())
    }

    /// False once the daemon hung up (a zero-timeout poll of the socket).
    pub fn daemon_alive(&self) -> bool {
        self.conn.alive()
    }
}

/// The sending end of a client-fed channel. `Send`: move it to the producing thread.
pub struct Sender {
    conn: Arc<Conn>,
    ring: Producer<SubmitDesc>,
    info: ChannelInfo,
    id: u32,
    mmax: u32,
    capacity: u64,
    drop_oldest: bool,
    drop_newest: bool,
    last_check: Nanos,
    closed: bool,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("id", &self.id)
            .field("mmax", &self.mmax)
            .finish()
    }
}

impl Sender {
    fn new(conn: Arc<Conn>, info: ChannelInfo, fd: OwnedFd) -> Result<Self, Error> {
        let region =
            Region::from_fd::<SubmitDesc>(fd).map_err(|e| Error::Protocol(e.to_string()))?;
        let p = region.params();
        if p.channel != info.id {
            return Err(Error::Protocol(format!(
                "the ring is channel {}'s, not {}'s",
                p.channel, info.id
            )));
        }
        let ring = Producer::new(region).map_err(|e| Error::Protocol(e.to_string()))?;
        let sender = Self {
            id: info.id,
            mmax: p.mmax,
            capacity: u64::from(p.capacity),
            drop_oldest: p.drop_oldest,
            drop_newest: info.policy == "drop-newest",
            info,
            ring,
            conn,
            last_check: monotonic_now(),
            closed: false,
        };
        // Mapped: the daemon seals the ring and starts reading it (on failure the sender's
        // drop closes the channel).
        sender.conn.mapped(sender.id, AttachRole::Send)?;
        Ok(sender)
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The largest message, bytes.
    pub fn mmax(&self) -> u32 {
        self.mmax
    }

    /// Messages the channel buffers (its Bmax).
    pub fn capacity(&self) -> u32 {
        self.capacity as u32
    }

    /// The daemon's answer to the open or attach: admission numbers and deadlines.
    pub fn info(&self) -> &ChannelInfo {
        &self.info
    }

    /// Whether the daemon can still be heard, checked every [`LIVENESS_INTERVAL`].
    #[inline]
    fn check(&mut self, now: Nanos) -> Result<(), SendError> {
        if now.wrapping_sub(self.last_check) >= LIVENESS_INTERVAL {
            self.last_check = now;
            if !self.conn.alive() {
                return Err(SendError::DaemonGone);
            }
        } else if self.conn.known_gone() {
            // Once seen gone, gone for every call, not only those that poll the socket.
            return Err(SendError::DaemonGone);
        }
        if self.ring.is_closed() {
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// Writes one message into the ring (not yet published); `None` when there is no room.
    #[inline]
    fn place(&mut self, msg: &[u8], now: Nanos) -> Option<Sent> {
        let q = self.ring.queued();
        let outcome = if q < self.capacity {
            Sent::Queued
        } else if self.drop_oldest && q == self.capacity {
            // The core drops the oldest before taking the next (one descriptor of slack).
            Sent::QueuedDroppedOldest
        } else {
            return None;
        };
        let b = self.ring.grant(|_| {})?;
        self.ring.buffer_mut(b)[..msg.len()].copy_from_slice(msg);
        self.ring.push(SubmitDesc {
            buf: b,
            len: msg.len() as u32,
            submit_ts: now,
        });
        Some(outcome)
    }

    /// The answer when the ring is full.
    fn full(&mut self) -> Result<Sent, SendError> {
        if self.drop_newest {
            return Ok(Sent::DroppedNewest);
        }
        // A full ring may mean the core stopped taking: is the daemon still there?
        if !self.conn.alive() {
            return Err(SendError::DaemonGone);
        }
        Err(SendError::WouldBlock)
    }

    /// Copies `msg` into one of the channel's buffers, stamps it (CLOCK_MONOTONIC) and
    /// publishes it: no syscall. The message's delay is measured from this stamp.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<Sent, SendError> {
        if msg.len() > self.mmax as usize {
            return Err(SendError::TooLong {
                len: msg.len(),
                mmax: self.mmax,
            });
        }
        let now = monotonic_now();
        self.check(now)?;
        match self.place(msg, now) {
            Some(s) => {
                self.ring.publish();
                Ok(s)
            }
            None => self.full(),
        }
    }

    /// [`Sender::send`], retrying a full buffer (spinning for a while, then yielding) until
    /// `timeout`; then [`SendError::WouldBlock`].
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<Sent, SendError> {
        let end = monotonic_now().saturating_add(timeout.as_nanos() as Nanos);
        let mut spins = 0u32;
        loop {
            match self.send(msg) {
                Err(SendError::WouldBlock) if monotonic_now() < end => {
                    spins += 1;
                    if spins < 1000 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                r => return r,
            }
        }
    }

    /// Sends messages in order with one publish for the whole batch, all stamped with one
    /// time. Stops at the first message that cannot go; `Ok(n)`: messages taken (queued, or
    /// dropped by a drop-newest channel); `Err` only when the first one fails (nothing taken).
    pub fn send_many<'a, I>(&mut self, msgs: I) -> Result<usize, SendError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let now = monotonic_now();
        self.check(now)?;
        let mut n = 0;
        let mut err = None;
        for m in msgs {
            if m.len() > self.mmax as usize {
                err = Some(SendError::TooLong {
                    len: m.len(),
                    mmax: self.mmax,
                });
                break;
            }
            match self.place(m, now) {
                Some(_) => n += 1,
                None if self.drop_newest => n += 1,
                None => {
                    err = Some(SendError::WouldBlock);
                    break;
                }
            }
        }
        self.ring.publish();
        match (n, err) {
            (0, Some(SendError::WouldBlock)) => self.full().map(|_| 0),
            (0, Some(e)) => Err(e),
            (n, _) => Ok(n),
        }
    }

    /// The channel's statistics.
    pub fn stats(&self) -> Result<ChannelStats, Error> {
        self.conn.stats(self.id)
    }

    /// Closes the channel (what is queued drains per the daemon's close mode).
    pub fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        let _: (ChannelInfo, _) = self.conn.call_result(&Request::Close(CloseArgs {
            id: self.id,
            discard: false,
        }))?;
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.closed && self.conn.alive() && !self.ring.is_closed() {
            let _ = self.conn.call(&Request::Close(CloseArgs {
                id: self.id,
                discard: false,
            }));
        }
    }
}

/// The receiving end of a channel, attached to this process.
pub struct Receiver {
    conn: Arc<Conn>,
    ring: Consumer<DeliverDesc>,
    info: IncomingInfo,
    id: u32,
    mmax: u32,
    last_check: Nanos,
    detached: bool,
    /// A message kept back because the caller's buffer was too small.
    pending: Option<Taken<DeliverDesc>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("id", &self.id).finish()
    }
}

impl Receiver {
    fn new(conn: Arc<Conn>, info: IncomingInfo, ring: OwnedFd) -> Result<Self, Error> {
        let region =
            Region::from_fd::<DeliverDesc>(ring).map_err(|e| Error::Protocol(e.to_string()))?;
        let p = region.params();
        if p.channel != info.id {
            return Err(Error::Protocol(format!(
                "the ring is channel {}'s, not {}'s",
                p.channel, info.id
            )));
        }
        let ring = Consumer::new(region).map_err(|e| Error::Protocol(e.to_string()))?;
        let receiver = Self {
            id: info.id,
            mmax: p.mmax,
            info,
            ring,
            conn,
            last_check: monotonic_now(),
            detached: false,
            pending: None,
        };
        // Mapped: the daemon seals the ring and delivers into it from now on.
        receiver.conn.mapped(receiver.id, AttachRole::Recv)?;
        Ok(receiver)
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The largest message, bytes.
    pub fn mmax(&self) -> u32 {
        self.mmax
    }

    /// The daemon's answer to the attach: this host's share of the channel.
    pub fn info(&self) -> &IncomingInfo {
        &self.info
    }

    /// Why there is no message now: closed, gone, or simply empty.
    fn empty(&mut self) -> RecvError {
        if self.ring.is_closed() {
            return RecvError::Closed;
        }
        let now = monotonic_now();
        if now.wrapping_sub(self.last_check) >= LIVENESS_INTERVAL {
            self.last_check = now;
            if !self.conn.alive() {
                return RecvError::DaemonGone;
            }
        } else if self.conn.known_gone() {
            return RecvError::DaemonGone;
        }
        RecvError::WouldBlock
    }

    /// The next message: the one kept back by a too-small buffer, else the ring's next.
    fn next(&mut self) -> Result<Taken<DeliverDesc>, RecvError> {
        if let Some(t) = self.pending.take() {
            return Ok(t);
        }
        match self.ring.take(|_| {}) {
            Some(t) => Ok(t),
            None => Err(self.empty()),
        }
    }

    /// Hands `t` to `f` if it fits `cap`, then releases it; else keeps it for the next call.
    fn deliver<R>(
        &mut self,
        t: Taken<DeliverDesc>,
        cap: usize,
        f: impl FnOnce(&[u8], &Message) -> R,
    ) -> Result<R, RecvError> {
        let d = t.desc;
        let m = Message {
            len: d.len as usize,
            seq: d.seq,
            submit_ts: d.submit_ts,
            delivered_ts: d.delivered_ts,
            deadline: d.deadline,
            late: d.flags & DELIVER_LATE != 0,
        };
        if m.len > cap {
            self.pending = Some(t);
            return Err(RecvError::BufferTooSmall { len: m.len, cap });
        }
        let r = f(self.ring.bytes(&t), &m);
        self.ring.release(t);
        Ok(r)
    }

    /// Non-blocking: the next message, handed to `f` in place (zero copy), then released.
    pub fn try_recv_with<R>(
        &mut self,
        f: impl FnOnce(&[u8], &Message) -> R,
    ) -> Result<R, RecvError> {
        let t = self.next()?;
        self.deliver(t, usize::MAX, f)
    }

    /// Non-blocking: copies the next message into `buf`.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Message, RecvError> {
        let cap = buf.len();
        let t = self.next()?;
        self.deliver(t, cap, |b, m| {
            buf[..b.len()].copy_from_slice(b);
            *m
        })
    }

    /// Waits up to `timeout` for the next message and hands it to `f` in place: busy-polls for
    /// [`SPIN_BEFORE_SLEEP`], then sleeps on the ring's wake word (the daemon wakes it only
    /// after this reader said it sleeps), checking the daemon every 10 ms.
    pub fn recv_with_timeout<R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&[u8], &Message) -> R,
    ) -> Result<R, RecvError> {
        self.wait_take(timeout, usize::MAX, f)
    }

    /// Waits up to `timeout` for the next message and copies it into `buf`.
    pub fn recv_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Message, RecvError> {
        let cap = buf.len();
        self.wait_take(timeout, cap, |b, m| {
            buf[..b.len()].copy_from_slice(b);
            *m
        })
    }

    fn wait_take<R>(
        &mut self,
        timeout: Duration,
        cap: usize,
        f: impl FnOnce(&[u8], &Message) -> R,
    ) -> Result<R, RecvError> {
        let start = monotonic_now();
        let end = start.saturating_add(timeout.as_nanos() as Nanos);
        loop {
            match self.next() {
                Ok(t) => return self.deliver(t, cap, f),
                Err(RecvError::WouldBlock) => {}
                Err(e) => return Err(e),
            }
            let now = monotonic_now();
            if now >= end {
                return Err(RecvError::Timeout);
            }
            if now - start < SPIN_BEFORE_SLEEP {
                std::hint::spin_loop();
                continue;
            }
            let left_ms = (end - now).div_ceil(1_000_000).min(SLEEP_SLICE_MS as u64) as u32;
            self.ring.sleep(left_ms);
            if !self.conn.alive() {
                return Err(RecvError::DaemonGone);
            }
        }
    }

    /// The channel's statistics (the receiving side's counters and latency).
    pub fn stats(&self) -> Result<ChannelStats, Error> {
        self.conn.stats(self.id)
    }

    /// Detaches: the daemon's own sink drains the channel again.
    pub fn close(mut self) -> Result<(), Error> {
        self.detached = true;
        let _: (serde_json::Value, _) = self
            .conn
            .call_result(&Request::Detach(IdArgs { id: self.id }))?;
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.detached && self.conn.alive() && !self.ring.is_closed() {
            let _ = self.conn.call(&Request::Detach(IdArgs { id: self.id }));
        }
    }
}
