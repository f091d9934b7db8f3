//! The control socket: a Unix stream socket serving `rtchanctl`.
//!
//! One thread accepts; each connection gets a thread that reads the caller's credentials once
//! (`SO_PEERCRED`), then reads request lines (at most [`MAX_LINE`] bytes), decodes them,
//! checks the caller's permission, hands each request to the control thread and writes its
//! reply. A malformed line is answered with an error and changes nothing; an oversized line
//! is discarded up to its newline and answered; a line cut off by the end of the stream is
//! answered before the connection ends.
//!
//! Permissions: root and the daemon's own user may do anything; members of `group` may open,
//! close and set the policy and read; members of `read_group` may only read; everyone else
//! is refused (the socket's mode is the first gate, these checks the second).

use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use control::protocol::{
    decode, read_line_capped, ApiError, ErrorKind, Line, Reply, RequestLine, MAX_LINE,
};

use super::Msg;

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
pub fn peer_credentials(s: &UnixStream) -> std::io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `s`; `cred` and `len` are valid, writable and
    // sized for SO_PEERCRED's `struct ucred`; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// The daemon's effective user id.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

/// The listening socket and its accept thread.
pub struct Server {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    live: Live,
}

/// Clones of the open connections, to end them at shutdown.
type Live = Arc<Mutex<std::collections::HashMap<u64, UnixStream>>>;

impl Server {
    /// Binds `path` with `mode` (and `chown_group` as its group), and serves it.
    pub fn start(
        path: &Path,
        mode: u32,
        chown_group: Option<u32>,
        access: Access,
        to_control: mpsc::Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        // A stale socket from a daemon that died: nobody answers on it.
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
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
        let live: Live = Arc::default();
        let live2 = live.clone();
        let thread = std::thread::Builder::new()
            .name("rtchan-ctl-accept".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let tx = to_control.clone();
                            let stop = stop.clone();
                            let live = live2.clone();
                            let _ = std::thread::Builder::new()
                                .name("rtchan-ctl-conn".into())
                                .spawn(move || serve(s, access, tx, stop, live));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            thread: Some(thread),
            live,
        })
    }

    /// Waits for the accept thread (after the stop flag is set) and removes the socket.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(l) = self.live.lock() {
            for c in l.values() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    s: UnixStream,
    access: Access,
    to_control: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
    live: Live,
) {
    let _ = s.set_nonblocking(false);
    let caller = match peer_credentials(&s) {
        Ok((pid, uid, gid)) => Caller {
            pid,
            uid,
            gid,
            role: access.role(pid, uid, gid),
        },
        Err(_) => return,
    };
    let Ok(writer) = s.try_clone() else {
        return;
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    if let (Ok(c), Ok(mut l)) = (s.try_clone(), live.lock()) {
        l.insert(key, c);
    }
    serve_lines(s, writer, caller, &to_control, &stop);
    if let Ok(mut l) = live.lock() {
        l.remove(&key);
    }
}

fn serve_lines(
    s: UnixStream,
    mut writer: UnixStream,
    caller: Caller,
    to_control: &mpsc::Sender<Msg>,
    stop: &AtomicBool,
) {
    let mut reader = BufReader::new(s);
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(line) = read_line_capped(&mut reader, MAX_LINE, &mut buf) else {
            return;
        };
        let reply = match line {
            Line::Eof => return,
            Line::TooLong => Reply::err(ApiError::new(
                ErrorKind::Protocol,
                format!("request line exceeds {MAX_LINE} bytes; it was discarded"),
            )),
            Line::Truncated => Reply::err(ApiError::new(
                ErrorKind::Protocol,
                "truncated request: the stream ended before the line's newline; nothing was done",
            )),
            Line::Complete if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Complete => handle(&buf, caller, to_control),
        };
        if writer.write_all(reply.to_line().as_bytes()).is_err() {
            return;
        }
        if line == Line::Truncated {
            return;
        }
    }
}

fn handle(line: &[u8], caller: Caller, to_control: &mpsc::Sender<Msg>) -> Reply {
    let req: RequestLine = match decode(line) {
        Ok(r) => r,
        Err(e) => return Reply::err(e),
    };
    let allowed = match caller.role {
        Role::Admin => true,
        Role::Reader => !req.request.is_write(),
        Role::None => false,
    };
    if !allowed {
        return Reply::err(ApiError::new(
            ErrorKind::Permission,
            format!(
                "permission denied: uid {} (gid {}) may not {} (root, the daemon's user or the \
                 configured group may change channels; the read group may read)",
                caller.uid,
                caller.gid,
                if req.request.is_write() {
                    "change channels"
                } else {
                    "read channels"
                }
            ),
        ));
    }
    let (tx, rx) = mpsc::channel();
    if to_control
        .send(Msg::Client {
            request: req.request,
            reply: tx,
        })
        .is_err()
    {
        return Reply::err(ApiError::new(
            ErrorKind::Internal,
            "the daemon is shutting down",
        ));
    }
    rx.recv().unwrap_or_else(|_| {
        Reply::err(ApiError::new(
            ErrorKind::Internal,
            "the daemon is shutting down",
        ))
    })
}
