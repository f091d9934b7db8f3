//! Network namespaces and veth pairs for the demo and the tests: made with `ip`, removed when
//! the [`Namespaces`] guard drops (deleting a namespace removes its end of the veth pair too),
//! even when a test fails. Traffic on them stays inside the namespaces the caller made.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `ip` with `args`; the error carries its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True when the process runs with effective uid 0 (namespaces and raw sockets need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0")) // effective uid
        })
        .unwrap_or(false)
}

/// The file `setns(2)` takes for namespace `name` (see [`enter_netns`]).
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// A MAC address as `ip` writes it.
pub fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Network namespaces made by the caller; deleted on drop.
#[derive(Debug, Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates namespace `name` and takes charge of deleting it.
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.0.push(name.to_string());
        Ok(())
    }

    /// Creates namespaces `a` and `b` joined by a veth pair (`if_a` with `mac_a` in `a`, `if_b`
    /// with `mac_b` in `b`), both ends up.
    pub fn veth_pair(
        &mut self,
        a: (&str, &str, [u8; 6]),
        b: (&str, &str, [u8; 6]),
    ) -> Result<(), String> {
        self.veth_pair_with_queues(a, b, 1)
    }

    /// [`Namespaces::veth_pair`] with `queues` RX and TX queues on each end
    /// (`numrxqueues`/`numtxqueues`), for the multi-queue ports.
    pub fn veth_pair_with_queues(
        &mut self,
        (a, if_a, mac_a): (&str, &str, [u8; 6]),
        (b, if_b, mac_b): (&str, &str, [u8; 6]),
        queues: u32,
    ) -> Result<(), String> {
        self.add(a)?;
        self.add(b)?;
        let q = queues.to_string();
        let counts: &[&str] = if queues > 1 {
            &["numrxqueues", &q, "numtxqueues", &q]
        } else {
            &[]
        };
        let (mac_a, mac_b) = (mac_string(mac_a), mac_string(mac_b));
        let mut args = vec!["link", "add", if_a, "netns", a, "address", &mac_a];
        args.extend_from_slice(counts);
        args.extend_from_slice(&["type", "veth", "peer", "name", if_b, "netns", b]);
        args.extend_from_slice(&["address", &mac_b]);
        args.extend_from_slice(counts);
        ip(&args)?;
        ip(&["-n", a, "link", "set", if_a, "up"])?;
        ip(&["-n", b, "link", "set", if_b, "up"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.drain(..) {
            if let Err(e) = ip(&["netns", "del", &n]) {
                eprintln!("warning: could not delete network namespace {n}: {e}");
            }
        }
    }
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/var/run/netns/NAME`, as `ip netns add` makes). Sockets created afterwards by this thread
/// belong to that namespace; other threads are not affected. Needs `CAP_SYS_ADMIN`.
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: `f` is an open namespace file for the duration of the call; CLONE_NEWNET only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
