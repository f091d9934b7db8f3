//! Control-plane peering over TCP: the sender's control thread asks the receiver's to admit
//! the incoming side of a channel.
//!
//! Outbound, the control thread keeps one [`PeerSession`] per peer it has used: a TCP
//! connection that starts with `hello` and then carries one request line and one reply line
//! at a time (the same framing and versioning as the control socket). A session that fails
//! to answer within `peering.timeout`, or a heartbeat (`ping`, every `peering.heartbeat`) that
//! fails, counts as a lost peer: the control thread then closes every channel to that peer.
//!
//! Inbound, [`PeerServer`] accepts connections only from the addresses of configured peers;
//! each connection's thread checks the `hello` name against that peer, forwards requests to
//! the control thread tagged with a session number, and when the connection ends (closed,
//! broken, or silent for three heartbeats) tells the control thread, which frees every
//! reservation the session held, prepared or committed. So nothing stays reserved on the
//! receiver after a lost sender either.

use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use control::config::PeerConfig;
use control::protocol::{
    decode, encode_peer_request, read_line_capped, ApiError, ErrorKind, Line, PeerRequest,
    PeerRequestLine, Reply, MAX_LINE,
};

use super::Msg;

/// An outbound session to one peer's control plane.
pub struct PeerSession {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

/// How often a control thread waiting for a peer's reply looks at its own inbox: it must keep
/// answering the other side's requests meanwhile, or two daemons opening channels to each
/// other at once would each wait for the other forever.
pub const SERVE_WHILE_WAITING: Duration = Duration::from_millis(5);

impl PeerSession {
    /// Connects to `peer` and introduces this daemon as `me`.
    pub fn connect(peer: &PeerConfig, me: &str, timeout: Duration) -> Result<Self, String> {
        Self::connect_serving(peer, me, timeout, || {})
    }

    /// [`PeerSession::connect`], running `serve` while it waits for the peer's hello reply
    /// (as [`PeerSession::call`] does), so the control thread keeps answering meanwhile.
    pub fn connect_serving(
        peer: &PeerConfig,
        me: &str,
        timeout: Duration,
        serve: impl FnMut(),
    ) -> Result<Self, String> {
        let s = TcpStream::connect_timeout(&peer.address, timeout)
            .map_err(|e| format!("peer '{}' at {}: {e}", peer.name, peer.address))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(timeout))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut session = Self {
            writer: s,
            reader,
            buf: Vec::new(),
            timeout,
        };
        session
            .call(&PeerRequest::Hello { name: me.into() }, serve)?
            .into_result::<serde_json::Value>()
            .map_err(|e| format!("peer '{}' refused the session: {e}", peer.name))?;
        Ok(session)
    }

    /// One request and its reply; `serve` runs every [`SERVE_WHILE_WAITING`] until the reply
    /// starts to arrive (the control thread answers incoming peer requests there). `Err`
    /// means the session is broken.
    pub fn call(&mut self, req: &PeerRequest, mut serve: impl FnMut()) -> Result<Reply, String> {
        self.writer
            .write_all(encode_peer_request(req).as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        // Wait for the first byte without consuming anything (so no partial line is lost),
        // serving our own inbox meanwhile; then read the line with the session's timeout.
        let deadline = std::time::Instant::now() + self.timeout;
        if self.reader.buffer().is_empty() {
            let sock = self.reader.get_ref();
            let _ = sock.set_read_timeout(Some(SERVE_WHILE_WAITING));
            let waited = loop {
                match sock.peek(&mut [0u8; 1]) {
                    Ok(_) => break Ok(()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if std::time::Instant::now() >= deadline {
                            break Err(format!("no reply within {:?}", self.timeout));
                        }
                        serve();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(format!("no reply: {e}")),
                }
            };
            let _ = sock.set_read_timeout(Some(self.timeout));
            waited?;
        }
        match read_line_capped(&mut self.reader, MAX_LINE, &mut self.buf) {
            Ok(Line::Complete) => {
                serde_json::from_slice(&self.buf).map_err(|e| format!("bad reply from peer: {e}"))
            }
            Ok(Line::Eof | Line::Truncated) => Err("the peer closed the connection".into()),
            Ok(Line::TooLong) => Err("the peer's reply is too long".into()),
            Err(e) => Err(format!("no reply: {e}")),
        }
    }
}

/// Accepts peers' sessions.
pub struct PeerServer {
    thread: Option<JoinHandle<()>>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// The bound address (useful when the configuration asked for port 0).
    pub local_addr: SocketAddr,
}

impl PeerServer {
    /// Listens on `addr` for the configured `peers`.
    pub fn start(
        addr: SocketAddr,
        peers: Vec<PeerConfig>,
        idle_timeout: Duration,
        to_control: mpsc::Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let live2 = live.clone();
        let sessions = Arc::new(AtomicU64::new(1));
        let thread = std::thread::Builder::new()
            .name("rtchan-peer-accept".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, from)) => {
                            let allowed: Vec<PeerConfig> = peers
                                .iter()
                                .filter(|p| same_host(p.address.ip(), from.ip()))
                                .cloned()
                                .collect();
                            if allowed.is_empty() {
                                continue; // not a configured peer: drop the connection
                            }
                            if let (Ok(c), Ok(mut l)) = (s.try_clone(), live2.lock()) {
                                l.push(c);
                            }
                            let session = sessions.fetch_add(1, Ordering::Relaxed);
                            let tx = to_control.clone();
                            let _ = std::thread::Builder::new()
                                .name("rtchan-peer-conn".into())
                                .spawn(move || {
                                    serve(s, allowed, session, idle_timeout, &tx);
                                    let _ = tx.send(Msg::SessionClosed { session });
                                });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Self {
            thread: Some(thread),
            live,
            local_addr,
        })
    }

    /// Waits for the accept thread (after the stop flag is set) and ends every session.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(l) = self.live.lock() {
            for c in l.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_loopback() && b.is_loopback())
}

fn serve(
    s: TcpStream,
    allowed: Vec<PeerConfig>,
    session: u64,
    idle: Duration,
    to_control: &mpsc::Sender<Msg>,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(idle));
    let Ok(mut writer) = s.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(s);
    let mut buf = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let line = match read_line_capped(&mut reader, MAX_LINE, &mut buf) {
            Ok(Line::Complete) => {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                buf.clone()
            }
            Ok(Line::TooLong) => {
                let r = Reply::err(ApiError::new(
                    ErrorKind::Protocol,
                    format!("request line exceeds {MAX_LINE} bytes"),
                ));
                if writer.write_all(r.to_line().as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            // Closed, cut off, broken or silent for too long: the session is over.
            _ => return,
        };
        let reply = match decode::<PeerRequestLine>(&line) {
            Err(e) => Reply::err(e),
            Ok(PeerRequestLine {
                request: PeerRequest::Hello { name },
                ..
            }) => {
                if allowed.iter().any(|p| p.name == name) {
                    from = Some(name);
                    Reply::ok(serde_json::json!({}))
                } else {
                    let r = Reply::err(ApiError::new(
                        ErrorKind::Permission,
                        format!("'{name}' is not a configured peer at this address"),
                    ));
                    let _ = writer.write_all(r.to_line().as_bytes());
                    return;
                }
            }
            Ok(PeerRequestLine {
                request: PeerRequest::Ping,
                ..
            }) => Reply::ok(serde_json::json!({})),
            Ok(PeerRequestLine { request, .. }) => match &from {
                None => Reply::err(ApiError::new(
                    ErrorKind::Protocol,
                    "the first request of a session must be hello",
                )),
                Some(name) => {
                    let (tx, rx) = mpsc::channel();
                    if to_control
                        .send(Msg::Peer {
                            session,
                            from: name.clone(),
                            request,
                            reply: tx,
                        })
                        .is_err()
                    {
                        return;
                    }
                    match rx.recv() {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
            },
        };
        if writer.write_all(reply.to_line().as_bytes()).is_err() {
            return;
        }
    }
}
