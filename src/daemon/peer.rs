//! Control-plane peering over TCP: the bytes and timers of the reservation protocol, whose
//! rules live in [`control::reservation`].
//!
//! Outbound, a [`PeerLink`] is one connection to a peer's `peering.listen`: it writes the
//! request lines the sender's [`control::reservation::Outbound`] produces and reads the replies,
//! numbering each by its position (TCP keeps the order), and while it waits it lets the
//! control thread serve its own inbox, or two daemons opening channels to each other at once
//! would each wait for the other forever.
//!
//! Inbound, [`PeerServer`] accepts connections only from the addresses of configured peers
//! and tells the control thread (`Msg::PeerAccepted`, with the names allowed there); each
//! connection's thread decodes request lines, forwards them numbered (`Msg::Peer`), writes
//! the answer the control thread's [`control::reservation::Inbound`] gave, closes when told,
//! and reports the end of the connection (`Msg::SessionClosed`). The machine decides what a
//! `hello` may say, and closes sessions that fall silent through [`SessionCloser`].

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use control::config::PeerConfig;
use control::protocol::{
    decode, encode_peer_request, read_line_capped, ApiError, ErrorKind, Line, PeerRequest,
    PeerRequestLine, Reply, MAX_LINE,
};
use control::reservation::Seq;

use super::Msg;

/// What the control thread answers to one request of an incoming session.
#[derive(Debug)]
pub struct PeerAnswer {
    /// The reply line to write; none: close without one.
    pub reply: Option<Reply>,
    /// Close the connection after the reply.
    pub close: bool,
}

/// How often a control thread waiting for a peer's reply looks at its own inbox.
pub const SERVE_WHILE_WAITING: Duration = Duration::from_millis(5);

/// One outbound connection to a peer's control plane.
pub struct PeerLink {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
    /// Replies read so far: the next one answers request number `replies`.
    replies: Seq,
}

impl PeerLink {
    /// Connects to `peer` (within `timeout`).
    pub fn connect(peer: &PeerConfig, timeout: Duration) -> Result<Self, String> {
        let s = TcpStream::connect_timeout(&peer.address, timeout)
            .map_err(|e| format!("peer '{}' at {}: {e}", peer.name, peer.address))?;
        let _ = s.set_nodelay(true);
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(Self {
            writer: s,
            reader,
            buf: Vec::new(),
            replies: 0,
        })
    }

    /// Writes one request line.
    pub fn send(&mut self, req: &PeerRequest) -> Result<(), String> {
        self.writer
            .write_all(encode_peer_request(req).as_bytes())
            .map_err(|e| format!("send: {e}"))
    }

    /// The next reply and the number of the request it answers, or `None` if none started to
    /// arrive by `until`; `serve` runs every [`SERVE_WHILE_WAITING`] meanwhile. `Err` means
    /// the connection is broken.
    pub fn wait_reply(
        &mut self,
        until: Instant,
        mut serve: impl FnMut(),
    ) -> Result<Option<(Seq, Reply)>, String> {
        // Wait for the first byte without consuming anything (so no partial line is lost);
        // then read the line within the connection's timeout (kept as its write timeout).
        if self.reader.buffer().is_empty() {
            let sock = self.reader.get_ref();
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                let _ = sock.set_read_timeout(Some(left.min(SERVE_WHILE_WAITING)));
                match sock.peek(&mut [0u8; 1]) {
                    Ok(_) => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        serve()
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("no reply: {e}")),
                }
            }
            let line_time = self.writer.write_timeout().ok().flatten();
            let _ = sock.set_read_timeout(line_time);
        }
        match read_line_capped(&mut self.reader, MAX_LINE, &mut self.buf) {
            Ok(Line::Complete) => {
                let seq = self.replies;
                self.replies += 1;
                serde_json::from_slice(&self.buf)
                    .map(|r| Some((seq, r)))
                    .map_err(|e| format!("bad reply from peer: {e}"))
            }
            Ok(Line::Eof | Line::Truncated) => Err("the peer closed the connection".into()),
            Ok(Line::TooLong) => Err("the peer's reply is too long".into()),
            Err(e) => Err(format!("no reply: {e}")),
        }
    }
}

/// Closes incoming sessions on the control thread's word (a session its machine found
/// silent).
#[derive(Clone, Default)]
pub struct SessionCloser(Arc<Mutex<HashMap<u64, TcpStream>>>);

impl SessionCloser {
    /// Ends session `session`'s connection (its thread then reports it closed).
    pub fn close(&self, session: u64) {
        if let Ok(l) = self.0.lock() {
            if let Some(s) = l.get(&session) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn add(&self, session: u64, s: &TcpStream) {
        if let (Ok(c), Ok(mut l)) = (s.try_clone(), self.0.lock()) {
            l.insert(session, c);
        }
    }

    fn remove(&self, session: u64) {
        if let Ok(mut l) = self.0.lock() {
            l.remove(&session);
        }
    }

    fn close_all(&self) {
        if let Ok(l) = self.0.lock() {
            for s in l.values() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Accepts peers' sessions.
pub struct PeerServer {
    thread: Option<JoinHandle<()>>,
    live: SessionCloser,
    /// The bound address (useful when the configuration asked for port 0).
    pub local_addr: SocketAddr,
}

impl PeerServer {
    /// Listens on `addr` for the configured `peers`.
    pub fn start(
        addr: SocketAddr,
        peers: Vec<PeerConfig>,
        to_control: mpsc::Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let live = SessionCloser::default();
        let live2 = live.clone();
        let sessions = Arc::new(AtomicU64::new(1));
        let thread = std::thread::Builder::new()
            .name("rtchan-peer-accept".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, from)) => {
                            let allowed: Vec<String> = peers
                                .iter()
                                .filter(|p| same_host(p.address.ip(), from.ip()))
                                .map(|p| p.name.clone())
                                .collect();
                            if allowed.is_empty() {
                                continue; // not a configured peer: drop the connection
                            }
                            let session = sessions.fetch_add(1, Ordering::Relaxed);
                            // Before the connection's thread sends anything for it.
                            if to_control
                                .send(Msg::PeerAccepted { session, allowed })
                                .is_err()
                            {
                                return;
                            }
                            live2.add(session, &s);
                            let tx = to_control.clone();
                            let live3 = live2.clone();
                            let _ = std::thread::Builder::new()
                                .name("rtchan-peer-conn".into())
                                .spawn(move || {
                                    serve(s, session, &tx);
                                    live3.remove(session);
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

    /// What the control thread closes silent sessions with.
    pub fn closer(&self) -> SessionCloser {
        self.live.clone()
    }

    /// Waits for the accept thread (after the stop flag is set) and ends every session.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.live.close_all();
    }
}

fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_loopback() && b.is_loopback())
}

/// One incoming session: decode, forward numbered, write the answer.
fn serve(s: TcpStream, session: u64, to_control: &mpsc::Sender<Msg>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let Ok(mut writer) = s.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(s);
    let mut buf = Vec::new();
    let mut seq: Seq = 0;
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
            // Closed, cut off, broken, or shut by the control thread: the session is over.
            _ => return,
        };
        let answer = match decode::<PeerRequestLine>(&line) {
            Err(e) => PeerAnswer {
                reply: Some(Reply::err(e)),
                close: false,
            },
            Ok(PeerRequestLine { request, .. }) => {
                let (tx, rx) = mpsc::channel();
                let msg = Msg::Peer {
                    session,
                    seq,
                    request,
                    reply: tx,
                };
                seq += 1;
                if to_control.send(msg).is_err() {
                    return;
                }
                match rx.recv() {
                    Ok(a) => a,
                    Err(_) => return,
                }
            }
        };
        let Some(reply) = answer.reply else {
            return;
        };
        if writer.write_all(reply.to_line().as_bytes()).is_err() || answer.close {
            return;
        }
    }
}
