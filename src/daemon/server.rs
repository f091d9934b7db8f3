//! The control socket: a Unix stream socket serving `rtchanctl` and the client library.
//!
//! One thread runs an event loop (`poll(2)`) over the listening socket, every connection and a
//! wake-up eventfd; no thread per connection, so a client can cost the daemon one fd and a few
//! KiB, never a thread. Data flow:
//!
//! 1. accept; read the caller's credentials (`SO_PEERCRED`) and decide its [`Role`] *before
//!    reading a byte*: a caller with no role, or one over the connection caps of `[limits]`
//!    (total, per uid, and the admins' reserve), gets one error line and the connection is
//!    closed at once;
//! 2. read request lines (at most [`MAX_LINE`] bytes each; an oversized line is discarded up to
//!    its newline and answered; a line unfinished after `limits.line_timeout` is answered and
//!    the connection closed; a connection idle for `limits.idle_timeout` is closed);
//! 3. decode each line and check the permission here, on the server thread (bounded work:
//!    a line is at most 64 KiB);
//! 4. hand a well-formed, permitted request to the control thread as [`Msg::Client`], with the
//!    connection's [`ConnId`] and a [`ReplyTo`]; one request per connection is in flight at a
//!    time, so replies come back in order, and the next line is not read until the reply has
//!    been written (a client that does not read its replies stops being read);
//! 5. the control thread answers through [`ReplyTo`], which queues the reply (JSON line, and
//!    optionally file descriptors sent with `SCM_RIGHTS` alongside its first byte) and wakes the
//!    loop;
//! 6. when a connection ends, for whatever reason, the control thread gets
//!    [`Msg::ClientClosed`] with its id, after every request of that connection.
//!
//! Permissions: root and the daemon's own user may do anything; members of `group` may open,
//! close and set the policy and read; members of `read_group` may only read; everyone else
//! is refused at accept (the socket's mode is the first gate, these checks the second).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use control::limits::LimitsConfig;
use control::protocol::{decode, ApiError, ErrorKind, Reply, RequestLine, MAX_LINE};

use super::Msg;
use crate::sys::unix::{poll, send_with_fds, EventFd};

/// Identifies one control-socket connection for the daemon's lifetime (never reused).
pub type ConnId = u64;

/// Most file descriptors one reply may carry (the kernel's `SCM_MAX_FD` is 253; a channel
/// needs a few).
pub const MAX_REPLY_FDS: usize = crate::sys::unix::MAX_FDS;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Connections accepted per loop iteration, so a connect flood cannot starve the others.
const ACCEPTS_PER_ROUND: usize = 64;
/// The longest the loop sleeps in `poll` when nothing is due (it also wakes on the eventfd).
const MAX_POLL_WAIT: Duration = Duration::from_millis(500);
/// How long the listener rests after accept failed for want of fds (EMFILE/ENFILE): the
/// pending connection stays in the backlog and would wake `poll` again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Open, close, set the policy, and read.
    Admin,
    /// List, show, stats, policy show.
    Reader,
    /// Nothing.
    None,
}

/// The caller at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// What it may do.
    pub role: Role,
}

/// Reads the peer's credentials of a connected Unix socket.
pub use crate::sys::unix::peer_credentials;

/// The daemon's effective user id.
pub fn own_uid() -> u32 {
    crate::sys::unix::effective_uid()
}

/// Supplementary groups of process `pid`, from `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Who may do what.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// Admin group.
    pub group: Option<u32>,
    /// Read-only group.
    pub read_group: Option<u32>,
}

impl Access {
    /// The role of a caller.
    pub fn role(&self, pid: i32, uid: u32, gid: u32) -> Role {
        if uid == 0 || uid == own_uid() {
            return Role::Admin;
        }
        let groups = supplementary_groups(pid);
        let member = |g: Option<u32>| g.is_some_and(|g| gid == g || groups.contains(&g));
        if member(self.group) {
            Role::Admin
        } else if member(self.read_group) {
            Role::Reader
        } else {
            Role::None
        }
    }
}

/// An eventfd that wakes the event loop from another thread.
struct Waker(EventFd);

impl Waker {
    fn new() -> io::Result<Self> {
        EventFd::new().map(Self)
    }

    fn wake(&self) {
        self.0.signal();
    }

    fn clear(&self) {
        self.0.drain();
    }
}

/// A reply on its way back to the event loop.
struct Completion {
    conn: ConnId,
    line: Vec<u8>,
    fds: Vec<OwnedFd>,
    holds: Option<bool>,
}

/// Where the control thread sends the reply to one request.
pub struct ReplyTo {
    conn: ConnId,
    tx: mpsc::Sender<Completion>,
    waker: Arc<Waker>,
}

impl ReplyTo {
    /// The connection the request came on.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Sends the reply line. Fails only when the server has stopped; a reply to a connection
    /// that has closed meanwhile is dropped silently.
    pub fn send(self, reply: Reply) -> Result<(), ServerGone> {
        self.send_full(reply, Vec::new(), None)
    }

    /// Sends the reply line with file descriptors (at most [`MAX_REPLY_FDS`]), passed with
    /// `SCM_RIGHTS` on the line's first byte. The daemon's copies are closed once sent (or
    /// when the connection is gone).
    pub fn send_with_fds(self, reply: Reply, fds: Vec<OwnedFd>) -> Result<(), ServerGone> {
        self.send_full(reply, fds, None)
    }

    /// [`ReplyTo::send_with_fds`], also saying whether the connection now holds daemon
    /// resources (`Some(true)`: e.g. channels of a client library, which the control thread
    /// frees on [`Msg::ClientClosed`]); such a connection is exempt from the idle timeout.
    /// `None` leaves it as it was.
    pub fn send_full(
        self,
        reply: Reply,
        fds: Vec<OwnedFd>,
        holds: Option<bool>,
    ) -> Result<(), ServerGone> {
        let (line, fds) = if fds.len() > MAX_REPLY_FDS {
            let e = Reply::err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "a reply may carry at most {MAX_REPLY_FDS} file descriptors, not {}",
                    fds.len()
                ),
            ));
            (e.to_line(), Vec::new())
        } else {
            (reply.to_line(), fds)
        };
        let c = Completion {
            conn: self.conn,
            line: line.into_bytes(),
            fds,
            holds,
        };
        self.tx.send(c).map_err(|_| ServerGone)?;
        self.waker.wake();
        Ok(())
    }
}

/// The control socket's server has stopped; the reply was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerGone;

/// The server's limits, from `[limits]`.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections in total.
    pub max_connections: usize,
    /// Connections a caller without admin rights may fill.
    pub non_admin_connections: usize,
    /// Connections per uid.
    pub max_per_uid: usize,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// A request line must be complete this long after its first byte.
    pub line_timeout: Duration,
}

impl From<&LimitsConfig> for ServerLimits {
    fn from(l: &LimitsConfig) -> Self {
        Self {
            max_connections: l.max_connections as usize,
            non_admin_connections: l.non_admin_connections() as usize,
            max_per_uid: l.max_connections_per_uid as usize,
            idle_timeout: Duration::from_nanos(l.idle_timeout.0),
            line_timeout: Duration::from_nanos(l.line_timeout.0),
        }
    }
}

/// The server's counters, readable while it runs (tests and logs).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Connections accepted and served.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Refused at accept: no role.
    pub refused_permission: std::sync::atomic::AtomicU64,
    /// Refused at accept: a connection cap.
    pub refused_cap: std::sync::atomic::AtomicU64,
    /// Closed for idleness.
    pub idle_closed: std::sync::atomic::AtomicU64,
    /// Closed for an unfinished line.
    pub line_timeouts: std::sync::atomic::AtomicU64,
    /// Accept failures for want of file descriptors.
    pub accept_fd_exhausted: std::sync::atomic::AtomicU64,
}

/// The listening socket and its event-loop thread.
pub struct Server {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    /// Counters of the event loop.
    pub counters: Arc<ServerCounters>,
    /// The event loop thread's kernel thread id.
    pub tid: u32,
}

impl Server {
    /// Binds `path` with `mode` (and `chown_group` as its group), and serves it.
    pub fn start(
        path: &Path,
        mode: u32,
        chown_group: Option<u32>,
        access: Access,
        limits: ServerLimits,
        to_control: mpsc::Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        // A stale socket from a daemon that died: nobody answers on it.
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another daemon is serving this socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        if let Some(g) = chown_group {
            std::os::unix::fs::chown(path, None, Some(g))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        listener.set_nonblocking(true)?;
        let waker = Arc::new(Waker::new()?);
        let counters = Arc::new(ServerCounters::default());
        let (done_tx, done_rx) = mpsc::channel();
        let mut ev = EventLoop {
            listener,
            access,
            limits,
            to_control,
            stop,
            waker: waker.clone(),
            done_tx,
            done_rx,
            conns: HashMap::new(),
            per_uid: HashMap::new(),
            next_id: 0,
            accept_rest_until: None,
            counters: counters.clone(),
        };
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rtchan-ctl-server".into())
            .spawn(move || {
                let _ = tid_tx.send(crate::preemption::current_tid());
                ev.run()
            })?;
        let tid = tid_rx
            .recv()
            .map_err(|_| io::Error::other("the control socket's thread did not start"))?;
        Ok(Self {
            path: path.to_owned(),
            tid,
            thread: Some(thread),
            waker,
            counters,
        })
    }

    /// Waits for the event loop (after the stop flag is set), which closes every connection,
    /// and removes the socket.
    pub fn join(&mut self) {
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A reply being written.
struct Out {
    bytes: Vec<u8>,
    sent: usize,
    /// Sent with the first byte written, then closed here.
    fds: Vec<OwnedFd>,
}

/// One connection's state in the event loop.
struct Conn {
    stream: UnixStream,
    caller: Caller,
    /// Bytes received and not yet taken as lines.
    inbuf: Vec<u8>,
    /// Discarding an oversized line up to its newline (`inbuf` holds nothing then).
    discarding: bool,
    /// The discarded line's newline arrived: the first line of `inbuf` is its end.
    oversized_ended: bool,
    /// When the unfinished line at the end of `inbuf` (or the one being discarded) began.
    partial_since: Option<Instant>,
    /// Replies to write, in order.
    out: VecDeque<Out>,
    /// A request is with the control thread.
    in_flight: bool,
    /// The peer will send no more (read returned 0).
    eof: bool,
    /// Close once `out` is written.
    close_after_flush: bool,
    /// Closed: drop at the end of the round.
    dead: bool,
    /// The control thread said the connection holds resources: no idle timeout.
    holds: bool,
    /// Last byte read or written, or last reply queued.
    last_activity: Instant,
}

impl Conn {
    fn wants_read(&self) -> bool {
        !self.eof && !self.dead && !self.close_after_flush && self.inbuf.len() <= MAX_LINE
    }

    /// Recomputes `partial_since` after `inbuf` or `discarding` changed.
    fn note_partial(&mut self, now: Instant) {
        let partial = self.discarding || self.inbuf.last().is_some_and(|&b| b != b'\n');
        match (partial, self.partial_since) {
            (true, None) => self.partial_since = Some(now),
            (false, Some(_)) => self.partial_since = None,
            _ => {}
        }
    }
}

/// What the next bytes of a connection's input are.
enum NextLine {
    /// A whole line (newline and a trailing `\r` stripped).
    Line(Vec<u8>),
    /// An oversized line ended.
    TooLong,
    /// No complete line yet.
    Pending,
}

struct EventLoop {
    listener: UnixListener,
    access: Access,
    limits: ServerLimits,
    to_control: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    done_tx: mpsc::Sender<Completion>,
    done_rx: mpsc::Receiver<Completion>,
    conns: HashMap<ConnId, Conn>,
    per_uid: HashMap<u32, usize>,
    next_id: ConnId,
    accept_rest_until: Option<Instant>,
    counters: Arc<ServerCounters>,
}

fn protocol_error(message: impl Into<String>) -> Reply {
    Reply::err(ApiError::new(ErrorKind::Protocol, message))
}

impl EventLoop {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut ids: Vec<ConnId> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.take_completions(now);
            let ready: Vec<ConnId> = self.conns.keys().copied().collect();
            for id in ready {
                self.advance(id, now);
            }
            self.timeouts(now);
            self.reap();

            fds.clear();
            ids.clear();
            fds.push(libc::pollfd {
                fd: self.waker.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let listening = self.accept_rest_until.is_none_or(|t| now >= t);
            if listening {
                self.accept_rest_until = None;
            }
            fds.push(libc::pollfd {
                fd: if listening {
                    self.listener.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            });
            for (&id, c) in &self.conns {
                let mut events = 0;
                if c.wants_read() {
                    events |= libc::POLLIN;
                }
                if !c.out.is_empty() {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
                ids.push(id);
            }
            let wait = self.next_deadline(now).min(MAX_POLL_WAIT);
            let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            if poll(&mut fds, ms).is_err() {
                continue;
            }
            if fds[0].revents != 0 {
                self.waker.clear();
            }
            if fds[1].revents != 0 {
                self.accept();
            }
            let now = Instant::now();
            for (pfd, &id) in fds[2..].iter().zip(&ids) {
                if pfd.revents == 0 {
                    continue;
                }
                let Some(c) = self.conns.get_mut(&id) else {
                    continue;
                };
                if pfd.revents & libc::POLLIN != 0
                    || (pfd.revents & libc::POLLHUP != 0 && c.wants_read())
                {
                    Self::read(c, now);
                } else if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
                    && pfd.revents & libc::POLLOUT == 0
                {
                    c.dead = true;
                }
            }
        }
        // Shutdown: every connection closes; the control thread hears of each.
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                c.dead = true;
            }
        }
        self.reap();
    }

    /// How long until some connection's timeout is due.
    fn next_deadline(&self, now: Instant) -> Duration {
        let mut wait = MAX_POLL_WAIT;
        if let Some(t) = self.accept_rest_until {
            wait = wait.min(t.saturating_duration_since(now));
        }
        for c in self.conns.values() {
            if let Some(p) = c.partial_since {
                wait = wait.min((p + self.limits.line_timeout).saturating_duration_since(now));
            }
            if !c.holds && !c.in_flight {
                wait = wait.min(
                    (c.last_activity + self.limits.idle_timeout).saturating_duration_since(now),
                );
            }
        }
        wait
    }

    fn take_completions(&mut self, now: Instant) {
        while let Ok(done) = self.done_rx.try_recv() {
            // A reply to a connection that has gone is dropped here (its fds close).
            if let Some(c) = self.conns.get_mut(&done.conn) {
                c.in_flight = false;
                if let Some(h) = done.holds {
                    c.holds = h;
                }
                c.last_activity = now;
                c.out.push_back(Out {
                    bytes: done.line,
                    sent: 0,
                    fds: done.fds,
                });
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_ROUND {
            match self.listener.accept() {
                Ok((s, _)) => self.admit(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE/ENFILE (or ENOBUFS): rest the listener instead of spinning on it.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        self.counters
                            .accept_fd_exhausted
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.accept_rest_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// The credential check and the caps, before anything is read from the caller.
    fn admit(&mut self, s: UnixStream) {
        let Ok((pid, uid, gid)) = peer_credentials(&s) else {
            return;
        };
        let role = self.access.role(pid, uid, gid);
        let caller = Caller {
            pid,
            uid,
            gid,
            role,
        };
        let refuse = |s: &UnixStream, r: Reply| {
            // One best-effort line on a fresh socket (its buffer is empty), then close.
            let _ = send_with_fds(s.as_raw_fd(), r.to_line().as_bytes(), &[]);
        };
        if role == Role::None {
            self.counters
                .refused_permission
                .fetch_add(1, Ordering::Relaxed);
            refuse(
                &s,
                Reply::err(ApiError::new(
                    ErrorKind::Permission,
                    format!(
                        "permission denied: uid {uid} (gid {gid}) may not use this daemon \
                         (root, the daemon's user or the configured group may change channels; \
                         the read group may read)"
                    ),
                )),
            );
            return;
        }
        let total = self.conns.len();
        let mine = self.per_uid.get(&uid).copied().unwrap_or(0);
        let cap = if role == Role::Admin {
            self.limits.max_connections
        } else {
            self.limits.non_admin_connections
        };
        let over = if mine >= self.limits.max_per_uid {
            Some(format!(
                "uid {uid} has {mine} connections open, the most limits.max_connections_per_uid \
                 ({}) allows",
                self.limits.max_per_uid
            ))
        } else if total >= cap {
            Some(format!(
                "the daemon has {total} connections open, the most limits.max_connections \
                 ({}) allows{}",
                self.limits.max_connections,
                if role == Role::Admin {
                    String::new()
                } else {
                    format!(" ({cap} for callers outside the admin group)")
                }
            ))
        } else {
            None
        };
        if let Some(why) = over {
            self.counters.refused_cap.fetch_add(1, Ordering::Relaxed);
            refuse(
                &s,
                Reply::err(ApiError::new(
                    ErrorKind::Limit,
                    format!("too many connections: {why}; close some and retry"),
                )),
            );
            return;
        }
        if s.set_nonblocking(true).is_err() {
            return;
        }
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id;
        self.next_id += 1;
        *self.per_uid.entry(uid).or_default() += 1;
        self.conns.insert(
            id,
            Conn {
                stream: s,
                caller,
                inbuf: Vec::new(),
                discarding: false,
                oversized_ended: false,
                partial_since: None,
                out: VecDeque::new(),
                in_flight: false,
                eof: false,
                close_after_flush: false,
                dead: false,
                holds: false,
                last_activity: Instant::now(),
            },
        );
    }

    /// Reads what is there, up to one line's worth beyond the cap.
    fn read(c: &mut Conn, now: Instant) {
        let mut chunk = [0u8; READ_CHUNK];
        while c.wants_read() {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    c.eof = true;
                    break;
                }
                Ok(n) => {
                    c.last_activity = now;
                    let mut data = &chunk[..n];
                    if c.discarding {
                        // Drop the oversized line's bytes as they come, up to its newline.
                        match data.iter().position(|&b| b == b'\n') {
                            Some(i) => {
                                // Keep the newline: it ends the line `next_line` reports.
                                data = &data[i..];
                                c.discarding = false;
                                c.oversized_ended = true;
                            }
                            None => data = &[],
                        }
                    }
                    c.inbuf.extend_from_slice(data);
                    if !c.discarding && c.inbuf.len() > MAX_LINE && !c.inbuf.contains(&b'\n') {
                        c.inbuf.clear();
                        c.discarding = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    break;
                }
            }
        }
        c.note_partial(now);
    }

    fn next_line(c: &mut Conn, now: Instant) -> NextLine {
        let Some(i) = c.inbuf.iter().position(|&b| b == b'\n') else {
            if !c.discarding && c.inbuf.len() > MAX_LINE {
                c.inbuf.clear();
                c.discarding = true;
                c.note_partial(now);
            }
            return NextLine::Pending;
        };
        let mut line: Vec<u8> = c.inbuf.drain(..=i).collect();
        line.pop();
        c.note_partial(now);
        if c.oversized_ended {
            c.oversized_ended = false;
            return NextLine::TooLong;
        }
        if line.len() > MAX_LINE {
            return NextLine::TooLong;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        NextLine::Line(line)
    }

    /// Writes what is pending, then takes lines until one goes to the control thread.
    fn advance(&mut self, id: ConnId, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.dead {
                return;
            }
            if !Self::flush(c, now) {
                return;
            }
            if c.in_flight {
                return;
            }
            if c.close_after_flush {
                c.dead = true;
                return;
            }
            let reply = match Self::next_line(c, now) {
                NextLine::Pending => {
                    if c.eof {
                        if c.discarding || !c.inbuf.is_empty() {
                            c.inbuf.clear();
                            c.discarding = false;
                            c.partial_since = None;
                            c.close_after_flush = true;
                            protocol_error(
                                "truncated request: the stream ended before the line's newline; \
                                 nothing was done",
                            )
                        } else {
                            c.dead = true;
                            return;
                        }
                    } else {
                        return;
                    }
                }
                NextLine::TooLong => protocol_error(format!(
                    "request line exceeds {MAX_LINE} bytes; it was discarded"
                )),
                NextLine::Line(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                NextLine::Line(l) => {
                    let caller = c.caller;
                    match self.dispatch(id, caller, &l) {
                        Some(r) => r,
                        None => {
                            if let Some(c) = self.conns.get_mut(&id) {
                                c.in_flight = true;
                            }
                            return;
                        }
                    }
                }
            };
            if let Some(c) = self.conns.get_mut(&id) {
                c.out.push_back(Out {
                    bytes: reply.to_line().into_bytes(),
                    sent: 0,
                    fds: Vec::new(),
                });
            }
        }
    }

    /// Writes pending replies; true when nothing is left to write.
    fn flush(c: &mut Conn, now: Instant) -> bool {
        while let Some(o) = c.out.front_mut() {
            let fds = std::mem::take(&mut o.fds);
            match send_with_fds(c.stream.as_raw_fd(), &o.bytes[o.sent..], &fds) {
                Ok(n) => {
                    // The fds went with the first byte; our copies close here.
                    drop(fds);
                    c.last_activity = now;
                    o.sent += n;
                    if o.sent >= o.bytes.len() {
                        c.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    o.fds = fds;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => o.fds = fds,
                Err(_) => {
                    c.dead = true;
                    return false;
                }
            }
        }
        true
    }

    /// Decodes and checks a line; the reply when the server answers it itself, `None` when it
    /// went to the control thread.
    fn dispatch(&mut self, id: ConnId, caller: Caller, line: &[u8]) -> Option<Reply> {
        let req: RequestLine = match decode(line) {
            Ok(r) => r,
            Err(e) => return Some(Reply::err(e)),
        };
        let allowed = match caller.role {
            Role::Admin => true,
            Role::Reader => !req.request.is_write(),
            Role::None => false,
        };
        if !allowed {
            return Some(Reply::err(ApiError::new(
                ErrorKind::Permission,
                format!(
                    "permission denied: uid {} (gid {}) may not change channels (root, the \
                     daemon's user or the configured group may; the read group may read)",
                    caller.uid, caller.gid,
                ),
            )));
        }
        let reply = ReplyTo {
            conn: id,
            tx: self.done_tx.clone(),
            waker: self.waker.clone(),
        };
        match self.to_control.send(Msg::Client {
            conn: id,
            caller,
            request: req.request,
            reply,
        }) {
            Ok(()) => None,
            Err(_) => Some(Reply::err(ApiError::new(
                ErrorKind::Internal,
                "the daemon is shutting down",
            ))),
        }
    }

    fn timeouts(&mut self, now: Instant) {
        for c in self.conns.values_mut() {
            if c.dead {
                continue;
            }
            if let Some(p) = c.partial_since {
                if now.duration_since(p) >= self.limits.line_timeout && !c.close_after_flush {
                    self.counters.line_timeouts.fetch_add(1, Ordering::Relaxed);
                    c.inbuf.clear();
                    c.discarding = false;
                    c.partial_since = None;
                    c.close_after_flush = true;
                    let r = protocol_error(format!(
                        "request line not finished within limits.line_timeout ({} ms); the \
                         connection is closed and nothing was done",
                        self.limits.line_timeout.as_millis()
                    ));
                    c.out.push_back(Out {
                        bytes: r.to_line().into_bytes(),
                        sent: 0,
                        fds: Vec::new(),
                    });
                    if !c.in_flight {
                        let _ = Self::flush(c, now);
                    }
                    continue;
                }
            }
            let stalled = now.duration_since(c.last_activity) >= self.limits.idle_timeout;
            if stalled && !c.in_flight && (!c.holds || !c.out.is_empty()) {
                // Idle with nothing in flight, or not reading its replies: close.
                self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                c.dead = true;
            }
        }
        // A connection that answered its timeout line closes once it is written.
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.close_after_flush && !c.dead && c.out.is_empty() && !c.in_flight)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.dead = true;
            }
        }
    }

    /// Drops dead connections and tells the control thread.
    fn reap(&mut self) {
        let dead: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead)
            .map(|(&id, _)| id)
            .collect();
        for id in dead {
            if let Some(c) = self.conns.remove(&id) {
                if let Some(n) = self.per_uid.get_mut(&c.caller.uid) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_uid.remove(&c.caller.uid);
                    }
                }
                let _ = self.to_control.send(Msg::ClientClosed { conn: id });
            }
        }
    }
}
