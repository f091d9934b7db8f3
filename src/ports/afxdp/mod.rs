//! AF_XDP port backend (feature `af_xdp`): XSK rings over a UMEM, through libxdp and libbpf.
//!
//! # Pieces
//! - [`FramePool`]: the UMEM area, `rx_frames + tx_frames` frames of `frame_size` bytes in one
//!   anonymous `mmap`, with a lock-free free list of frame indices per class (RX, TX).
//! - [`XdpFrame`]: a [`PacketBuf`](dataplane::port::PacketBuf) that is one UMEM frame. A TX
//!   frame is written in place (what the handler writes is what the kernel sends); a received
//!   frame is read where the kernel put it. Dropping a frame returns it to its free list; a
//!   frame handed to [`Port::tx_burst`](dataplane::port::Port::tx_burst) belongs to the
//!   kernel until the completion ring gives it back, so it can never be reused while the
//!   kernel reads it.
//! - [`Umem`]: the area registered with the kernel (`xsk_umem__create`), with the fill ring
//!   (free RX frames given to the kernel) and the completion ring (sent frames given back).
//! - [`XskSocket`]: the socket bound to one queue of one interface (`xsk_socket__create`),
//!   with its RX and TX rings; it owns its UMEM and deletes it after itself.
//! - [`open_queues`]: one socket per polling core on consecutive queues of one interface, with
//!   the software hand-off between them ([`XskGroup`]).
//! - [`AfXdpPort`]: the dataplane [`Port`](dataplane::port::Port): `tx_burst` reaps
//!   completions, reserves TX descriptors, submits, and kicks the kernel with
//!   `sendto(MSG_DONTWAIT)` when the TX ring says it needs a wake-up; `rx_burst` reaps and
//!   kicks too (so TX progresses while the core has nothing new), refills the fill ring,
//!   peeks the RX ring and wraps the descriptors as frames.
//!
//! # The XDP program
//! No BPF code is written here: when no program is loaded on the interface, libxdp's
//! `xsk_socket__create` loads its built-in default program (`xsk_def_xdp_prog.o`, shipped by
//! the `libxdp1` package in `/usr/lib/<triplet>/bpf/`), which redirects every packet of the
//! bound queue to the socket through an XSKMAP, and removes it when the last socket goes. With
//! a bpffs mounted at `/sys/fs/bpf` it is attached through libxdp's multi-program dispatcher;
//! without one, libxdp says so on stderr and attaches it alone (see [`set_library_logging`]).
//! [`AfXdpConfig::load_program`] `= false` inhibits the load for deployments that bring their
//! own program (put [`XskSocket::fd`] into its XSKMAP).
//!
//! # Modes
//! [`XdpAttach`] picks native (driver) or generic (SKB) attachment, [`XskBind`] copy or
//! zero-copy. Zero-copy needs a driver with AF_XDP zero-copy support (ice, i40e, ixgbe, igc,
//! mlx5, ...) in native mode; veth has native XDP but no zero-copy, and generic mode is always
//! copy mode. The defaults (native, else SKB; copy) work on any interface.
//!
//! Built and tested with Debian 12's libxdp 1.3.1 (xdp-tools) and libbpf 1.1.2, Linux 6.x.
//! `build.rs` generates [`ffi`] and compiles the C shim for the ring helpers.
//!
//! ```no_run
//! use dataplane::port::{Batch, PacketBuf, Port};
//! use rtchan::ports::afxdp::{AfXdpConfig, AfXdpPort};
//!
//! let mut port = AfXdpPort::open("veth0", AfXdpConfig::default())?;
//! let mut frame = port.alloc_tx().expect("no free TX frame");
//! frame.buf_mut()[..6].copy_from_slice(&[0xff; 6]); // written straight into the UMEM
//! frame.set_len(60);
//! let mut batch = Batch::new();
//! batch.push(frame);
//! port.tx_burst(0, &mut batch).expect("tx");
//! # Ok::<(), rtchan::ports::afxdp::AfXdpError>(())
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod ffi;
mod group;
mod port;
mod socket;
mod umem;

pub use group::{open_queues, XskGroup};
pub use port::AfXdpPort;
pub use socket::{SocketOptions, XdpAttach, XdpStatistics, XskSocket};
pub use umem::{FramePool, Umem, XdpFrame};

use std::io;

/// Copy or zero-copy binding of the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XskBind {
    /// `XDP_COPY`: the kernel copies packets between its buffers and the UMEM. Works
    /// everywhere.
    #[default]
    Copy,
    /// `XDP_ZEROCOPY`: the NIC DMAs to and from the UMEM; fails if the driver cannot.
    ZeroCopy,
    /// Zero-copy when the driver has it, else copy.
    ZeroCopyOrCopy,
}

/// How an AF_XDP port is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// The interface queue the socket binds to.
    pub queue_id: u32,
    /// Bytes per UMEM frame: a power of two from 2048 to the page size.
    pub frame_size: u32,
    /// Frames for receiving (they cycle through the fill ring).
    pub rx_frames: u32,
    /// Frames for sending (the pool `alloc_tx` draws from). The core's link scheduler holds
    /// up to its capacity of them.
    pub tx_frames: u32,
    /// RX ring entries (power of two).
    pub rx_ring: u32,
    /// TX ring (and completion ring) entries (power of two).
    pub tx_ring: u32,
    /// How the XDP program is attached.
    pub attach: XdpAttach,
    /// Copy or zero-copy.
    pub bind: XskBind,
    /// Use `XDP_USE_NEED_WAKEUP` (syscalls only when the kernel asks for them).
    pub need_wakeup: bool,
    /// Let libxdp load its default redirect program.
    pub load_program: bool,
    /// Link rate in bits per second for the capabilities (0: unknown).
    pub link_rate_bps: u64,
    /// Report TX completions ([`Port::tx_in_flight_bytes`](dataplane::port::Port)): in-flight
    /// bytes are then the frames the kernel has not given back, and the link scheduler keeps
    /// those under its limit. On a NIC a frame completes once it is on the wire, so this
    /// tracks the link. On veth (or in copy mode on a fast host) a frame completes as soon as
    /// the kernel has copied it, so nothing would pace the queue: set `false` there, and
    /// `link_rate_bps`, and the link scheduler paces at that rate instead.
    pub report_completions: bool,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        Self {
            queue_id: 0,
            frame_size: 2048,
            rx_frames: 2048,
            tx_frames: 4096 + 512,
            rx_ring: 2048,
            tx_ring: 2048,
            attach: XdpAttach::Auto,
            bind: XskBind::Copy,
            need_wakeup: true,
            load_program: true,
            link_rate_bps: 0,
            report_completions: true,
        }
    }
}

impl AfXdpConfig {
    /// Fill ring entries: room for every RX frame at once.
    fn fill_ring(&self) -> u32 {
        self.rx_frames.next_power_of_two()
    }

    fn validate(&self) -> Result<(), String> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
        if !self.frame_size.is_power_of_two() || self.frame_size < 2048 || self.frame_size > page {
            return Err(format!(
                "frame_size {} must be a power of two from 2048 to the page size ({page})",
                self.frame_size
            ));
        }
        if self.rx_frames == 0 || self.tx_frames == 0 {
            return Err("rx_frames and tx_frames must be at least 1".into());
        }
        if self.rx_frames > 1 << 20 || self.tx_frames > 1 << 20 {
            return Err("rx_frames and tx_frames must be at most 2^20".into());
        }
        if self.bind == XskBind::ZeroCopy && self.attach == XdpAttach::Skb {
            return Err(
                "zero-copy needs native attachment; SKB (generic) mode is copy only".into(),
            );
        }
        for (what, n) in [("rx_ring", self.rx_ring), ("tx_ring", self.tx_ring)] {
            if !n.is_power_of_two() || n < 64 {
                return Err(format!("{what} {n} must be a power of two, at least 64"));
            }
        }
        Ok(())
    }
}

/// Why an AF_XDP port could not be opened. Each names the interface and queue.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    /// A system or library call failed.
    #[error("af_xdp {ifname}/q{queue}: {call} failed: {source}")]
    Os {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// The failing call, with the mode it was tried in.
        call: String,
        /// The OS error (errno and its text).
        source: io::Error,
    },
    /// Every allowed attach/bind mode failed.
    #[error("af_xdp {ifname}/q{queue}: no mode worked: {}", attempts.join("; "))]
    NoMode {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// Each attempt and its error.
        attempts: Vec<String>,
    },
    /// The configuration cannot work.
    #[error("af_xdp {ifname}/q{queue}: invalid configuration: {reason}")]
    Config {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// What is wrong.
        reason: String,
    },
}

/// Turns libxdp's and libbpf's messages on stderr off (`false`) or back on (`true`). They are
/// on by default; libxdp prints, for example, that it found no bpffs and attached its program
/// without the dispatcher. Process-wide.
pub fn set_library_logging(enabled: bool) {
    // SAFETY: swaps the libraries' global print callbacks for a function that prints nothing
    // (or back); no other state is touched.
    unsafe { ffi::rtchan_xdp_set_quiet(i32::from(!enabled)) }
}

/// Whether this process can open AF_XDP sockets at all: `socket(AF_XDP, SOCK_RAW, 0)`. The
/// error says why not (`EAFNOSUPPORT`: a kernel without `CONFIG_XDP_SOCKETS`; `EPERM`: a
/// sandbox forbids it). Ports can still fail later for lack of `CAP_NET_ADMIN`/`CAP_BPF`.
pub fn probe() -> io::Result<()> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => io::Error::new(
                e.kind(),
                format!("socket(AF_XDP): {e}: the kernel was built without CONFIG_XDP_SOCKETS"),
            ),
            _ => io::Error::new(e.kind(), format!("socket(AF_XDP): {e}")),
        });
    }
    // SAFETY: `fd` was just opened and is owned here; closing it once.
    unsafe { libc::close(fd) };
    Ok(())
}
