//! Unix-socket calls with descriptors attached (`SCM_RIGHTS`), the peer's credentials, an
//! eventfd waker, `poll(2)` and the thread id: what the control socket's server and client need beyond
//! `std::os::unix::net`.
//!
//! Each function returns `io::Result` from errno and takes or returns owned descriptors, so a
//! descriptor received is closed if the caller drops it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Most descriptors one message carries (one control buffer's worth).
pub const MAX_FDS: usize = 16;

/// Control-buffer storage for [`MAX_FDS`] descriptors: u64 keeps it aligned for `cmsghdr`
/// (16 bytes of header, 4 per descriptor).
type ControlBuf = [u64; 16 + MAX_FDS / 2];

/// Receives into `buf`, appending any `SCM_RIGHTS` descriptors to `fds` (close-on-exec);
/// bytes read. More than [`MAX_FDS`] descriptors is an error: the kernel dropped some.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: buf.len(),
    };
    let mut control: ControlBuf = [0; 16 + MAX_FDS / 2];
    // SAFETY: `msghdr` is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `fd` is a live socket; `msg` points at `iov` (into `buf`) and `control`, both
    // valid for writes of the sizes given and alive across the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg`'s control area; CMSG_FIRSTHDR/NXTHDR walk it within
    // `msg_controllen`, and each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4`
    // descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(format!(
            "the peer sent more than {MAX_FDS} file descriptors; some were lost"
        )));
    }
    Ok(n as usize)
}

/// Sends `data` (and `fds`, at most [`MAX_FDS`], with its first byte) without blocking and
/// without raising SIGPIPE; bytes sent.
pub fn send_with_fds(fd: RawFd, data: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "one message carries at most {MAX_FDS} file descriptors, not {}",
                fds.len()
            ),
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of::<RawFd>() * fds.len();
    let mut control: ControlBuf = [0; 16 + MAX_FDS / 2];
    // SAFETY: `msghdr` is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at `control`, large enough for one cmsghdr with
        // `fds.len() <= MAX_FDS` descriptors (checked above), so CMSG_FIRSTHDR is non-null
        // and the header and data writes stay inside `control`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: `fd` is a live socket; `msg` and everything it points at outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `data` with `MSG_NOSIGNAL`, retrying on EINTR: a peer that went away is an
/// error here, never a SIGPIPE that kills the calling program (the client library runs inside
/// applications).
pub fn send_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `fd` is a live socket; `data` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast::<libc::c_void>(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// The peer's `(pid, uid, gid)` of a connected Unix socket (`SO_PEERCRED`).
pub fn peer_credentials(s: &UnixStream) -> io::Result<(i32, u32, u32)> {
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
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The calling thread's kernel thread id.
pub fn thread_id() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Sets the calling thread's timer slack (how late the kernel may fire its timers to batch
/// wake-ups; 50 µs by default) to `ns`.
pub fn set_timer_slack(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only the calling
    // thread's timer slack; the unused arguments are zero as prctl(2) asks.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-blocking eventfd used as a counter-less wake-up: [`EventFd::signal`] makes it
/// readable, [`EventFd::drain`] resets it.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions; a non-negative return is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes it readable. A full counter (EAGAIN) means a wake-up is pending already, so the
    /// result is not needed.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// Resets it to not readable (a no-op when it is not).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `poll(2)` on `fds` for at most `timeout_ms` (clamped to at least 1 ms by the caller if it
/// wants to avoid a busy loop); how many entries have events. EINTR is `Ok(0)`.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, initialised, exclusively borrowed array of `fds.len()` pollfds.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let ev = EventFd::new().unwrap();
        let dup = ev.0.try_clone().unwrap();
        assert_eq!(send_with_fds(a.as_raw_fd(), b"hi", &[dup]).unwrap(), 2);
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same eventfd: a signal through it wakes ours.
        EventFd(fds.pop().unwrap()).signal();
        let mut p = [libc::pollfd {
            fd: ev.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut p, 1000).unwrap(), 1);
        ev.drain();
        assert_eq!(poll(&mut p, 0).unwrap(), 0);
    }

    #[test]
    fn too_many_descriptors_is_refused_before_sending() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..=MAX_FDS).map(|_| EventFd::new().unwrap().0).collect();
        let e = send_with_fds(a.as_raw_fd(), b"x", &fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("at most 16"), "{e}");
        drop(a);
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn peer_credentials_are_ours_on_a_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (pid, uid, _) = peer_credentials(&a).unwrap();
        assert_eq!(pid as u32, std::process::id());
        assert_eq!(uid, effective_uid());
    }
}
