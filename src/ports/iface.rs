//! An interface's addresses, read with ioctls on a datagram socket (in the calling thread's
//! network namespace, like the port itself).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn ioctl(ifname: &str, request: libc::c_ulong) -> io::Result<libc::ifreq> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: plain syscall; the descriptor is checked and then owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name (the length was checked
    // and the rest is zero); the kernel writes only inside it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

/// The interface's MAC address (`SIOCGIFHWADDR`).
pub fn hwaddr(ifname: &str) -> io::Result<[u8; 6]> {
    let req = ioctl(ifname, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// The interface's (first) IPv4 address (`SIOCGIFADDR`).
pub fn ipv4(ifname: &str) -> io::Result<[u8; 4]> {
    let req = ioctl(ifname, libc::SIOCGIFADDR)?;
    // SAFETY: SIOCGIFADDR filled the addr member of the union with a sockaddr_in.
    let sa = unsafe { req.ifr_ifru.ifru_addr };
    // sockaddr_in: family (2 bytes), then sa_data = port (2 bytes), address (4 bytes).
    let d = sa.sa_data;
    Ok([d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8])
}
