//! Several polling cores on one interface: a group of [`AfPacketPort`]s, one socket per core,
//! joined in one `PACKET_FANOUT` group so that each received frame reaches exactly one socket
//! ([`open_group`], [`FanoutGroup`]).
//!
//! # Receive steering
//! The group's mode is `PACKET_FANOUT_CBPF`: the kernel runs a classic BPF program for every
//! frame and gives it to the socket whose index (= core) the program returns. The program
//! ([`steering_program`]) reads the rtchan channel id of an IPv4/UDP frame to port 7447 at its
//! fixed offset (no IP options; docs/wire.md) and looks it up in a binary search tree of the
//! placed channels compiled into the program, returning that channel's core; everything else
//! (unknown channels, IP options, fragments) goes to socket 0. [`SharedDevice::steer`]
//! rebuilds the program and replaces it (`PACKET_FANOUT_DATA`) whenever a receiver is placed,
//! on the control thread.
//!
//! Behind it sits the software hand-off ([`Steering`]): each socket's port also looks the
//! channel up in the shared table and hands a frame that reached the wrong core to its owner.
//! That covers what the program cannot: channels beyond [`MAX_KERNEL_CHANNELS`], frames with
//! IP options, the instant between a receiver's placement in the table and in the program, and
//! kernels that refuse `PACKET_FANOUT_CBPF` (then the group is `PACKET_FANOUT_HASH`: the
//! kernel spreads frames by flow hash and the hand-off does all the steering).
//!
//! Each socket also carries a socket filter (`SO_ATTACH_FILTER`, [`rtchan_filter`]) that
//! accepts only IPv4 UDP frames to port 7447 (and IPv4 UDP frames with IP options, which the
//! receive path judges): ARP, the peering TCP and any other traffic of the interface is never
//! copied into a ring, so no real-time core spends its receive budget on it.
//!
//! # Transmit
//! Each core sends on its own socket. What the kernel does with it: with
//! `PACKET_QDISC_BYPASS`, `packet_direct_xmit` picks the TX queue through the driver's
//! `ndo_select_queue` or `netdev_pick_tx` (XPS by the sending CPU, else a hash of the frame);
//! without it, the qdisc of that queue. On veth the "queues" only choose which of the peer's
//! NAPI rings a frame goes to when XDP is attached there; without XDP the frame goes straight
//! to the receiving stack (the per-CPU backlog of the sending CPU). The pacing that admission
//! relies on is the core's link scheduler (`cores[i].tx_share_ppm` of the link), not the
//! device queue.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use dataplane::memlink::HeapBuf;
use dataplane::spec::ChannelId;

use super::{setsockopt_int, setsockopt_raw, AfPacketConfig, AfPacketError, AfPacketPort};
use crate::ports::steering::{Member, QueueCounters, QueueReport, SharedDevice, Steering};

/// `linux/if_packet.h`: join a fanout group (`id | (type | flags) << 16`).
const PACKET_FANOUT: i32 = 18;
/// `linux/if_packet.h`: the group's BPF program.
const PACKET_FANOUT_DATA: i32 = 22;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_CBPF: u32 = 6;
/// The kernel picks a free group id (Linux 4.20); read back with `getsockopt`.
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
/// The group's hook skips frames this host sends (Linux 6.4).
const PACKET_FANOUT_FLAG_IGNORE_OUTGOING: u32 = 0x4000;
/// `asm-generic/socket.h` (x86, arm, riscv, powerpc; mips and sparc differ).
const SO_ATTACH_FILTER: i32 = 26;

/// Channels the kernel program holds (about 2.3 instructions each; cBPF allows 4096). Channels
/// placed beyond it reach socket 0 and are handed over in software.
pub const MAX_KERNEL_CHANNELS: usize = 1700;

/// How the kernel spreads a group's frames over its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanoutMode {
    /// `PACKET_FANOUT_CBPF`: the steering program sends each channel's frames to its core.
    Kernel,
    /// `PACKET_FANOUT_HASH` (the kernel refused CBPF): by flow hash; software steering.
    Hash,
}

impl FanoutMode {
    /// `kernel` or `software`, as `stats --port` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Hash => "software",
        }
    }
}

/// The control side of a fanout group: steering updates and per-socket counters.
pub struct FanoutGroup {
    ifname: String,
    id: u16,
    mode: FanoutMode,
    /// A duplicate of socket 0's descriptor: `PACKET_FANOUT_DATA` on any member replaces the
    /// group's program.
    ctl: OwnedFd,
    udp_port: u16,
    steering: Arc<Steering<HeapBuf>>,
    /// Placed receivers (control thread only; the program is rebuilt from it).
    placed: Mutex<BTreeMap<ChannelId, u16>>,
    counters: Vec<Arc<QueueCounters>>,
    notes: Vec<String>,
}

impl std::fmt::Debug for FanoutGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutGroup")
            .field("ifname", &self.ifname)
            .field("id", &self.id)
            .field("mode", &self.mode)
            .field("sockets", &self.counters.len())
            .finish()
    }
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A load relative to the network (IPv4) header, wherever the frame's data starts: the fanout
/// program sees the frame from its network header, a socket filter from its MAC header.
const fn net(off: u32) -> u32 {
    (libc::SKF_NET_OFF as u32).wrapping_add(off)
}

const LD_B: u32 = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
const LD_H: u32 = libc::BPF_LD | libc::BPF_H | libc::BPF_ABS;
const LD_W: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const JGT: u32 = libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K;
const JA: u32 = libc::BPF_JMP | libc::BPF_JA;
const RET: u32 = libc::BPF_RET | libc::BPF_K;
/// `skb->protocol` (the EtherType, host order).
const PROTO: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32;

/// The group's program: socket (= core) for each frame, from `placed` (channel, core) pairs
/// (at most [`MAX_KERNEL_CHANNELS`], the lowest ids; the rest go to socket 0). An IPv4 frame
/// without options, not a fragment, UDP to `udp_port`: its channel field (bytes 36..40 of the
/// IPv4 packet: 20 IPv4 + 8 UDP + 8 into the rtchan header) is looked up in a binary search
/// tree of the placed channels compiled into the program: about
/// log2(n / 8) + 8 compares per frame.
pub fn steering_program(placed: &[(ChannelId, u16)], udp_port: u16) -> Vec<libc::sock_filter> {
    let mut p = vec![
        stmt(LD_H, PROTO),                    // 0
        jump(JEQ, 0x0800, 0, 8),              // 1: not IPv4 → 10
        stmt(LD_B, net(0)),                   // 2
        jump(JEQ, 0x45, 0, 6),                // 3: options → 10
        stmt(LD_H, net(6)),                   // 4
        jump(JSET, 0x3fff, 4, 0),             // 5: a fragment (MF or offset) → 10
        stmt(LD_B, net(9)),                   // 6
        jump(JEQ, 17, 0, 2),                  // 7: not UDP → 10
        stmt(LD_H, net(22)),                  // 8: UDP destination port
        jump(JEQ, u32::from(udp_port), 1, 0), // 9: rtchan → 11
        stmt(RET, 0),                         // 10: socket 0
        stmt(LD_W, net(36)),                  // 11: the channel id
    ];
    let mut sorted = placed.to_vec();
    sorted.sort_unstable();
    sorted.dedup_by_key(|e| e.0);
    sorted.truncate(MAX_KERNEL_CHANNELS);
    search_tree(&mut p, &sorted);
    p
}

/// Channels a leaf of the search tree compares one by one.
const LEAF: usize = 8;

/// Appends the code that returns the core of the channel id in A among `ids` (sorted, unique)
/// and 0 for any other: a leaf compares up to [`LEAF`] ids in turn; a node sends A above its
/// pivot (the left half's largest id) over the left half's code, with the jump's own 8-bit
/// offset when it fits and a `ja` (32 bits) when not.
fn search_tree(p: &mut Vec<libc::sock_filter>, ids: &[(ChannelId, u16)]) {
    if ids.len() <= LEAF {
        for &(id, core) in ids {
            p.push(jump(JEQ, id, 0, 1));
            p.push(stmt(RET, u32::from(core)));
        }
        p.push(stmt(RET, 0));
        return;
    }
    let (left, right) = ids.split_at(ids.len() / 2);
    let pivot = left[left.len() - 1].0;
    let mut l = Vec::new();
    search_tree(&mut l, left);
    match u8::try_from(l.len()) {
        // A > pivot: over the left half to the right one.
        Ok(n) => p.push(jump(JGT, pivot, n, 0)),
        Err(_) => {
            p.push(jump(JGT, pivot, 0, 1));
            p.push(stmt(JA, l.len() as u32));
        }
    }
    p.extend(l);
    search_tree(p, right);
}

/// Each socket's filter: accept IPv4 UDP frames to `udp_port` (whole), and IPv4 UDP frames
/// with IP options (the receive path reads their port); drop everything else in the kernel.
pub fn rtchan_filter(udp_port: u16) -> Vec<libc::sock_filter> {
    vec![
        stmt(LD_H, PROTO),                    // 0
        jump(JEQ, 0x0800, 0, 8),              // 1: not IPv4 → 10 drop
        stmt(LD_B, net(9)),                   // 2
        jump(JEQ, 17, 0, 6),                  // 3: not UDP → 10 drop
        stmt(LD_B, net(0)),                   // 4
        jump(JEQ, 0x45, 0, 5),                // 5: IP options → 11 accept
        stmt(LD_H, net(6)),                   // 6
        jump(JSET, 0x1fff, 3, 0),             // 7: a later fragment (no UDP header) → 11
        stmt(LD_H, net(22)),                  // 8: UDP destination port
        jump(JEQ, u32::from(udp_port), 1, 0), // 9: rtchan → 11
        stmt(RET, 0),                         // 10: drop
        stmt(RET, u32::MAX),                  // 11: accept, whole
    ]
}

fn attach(fd: RawFd, level: i32, opt: i32, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // The kernel copies the program during the call; `prog` outlives it.
    setsockopt_raw(fd, level, opt, &fprog)
}

fn fanout_id(fd: RawFd) -> io::Result<u16> {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            PACKET_FANOUT,
            &mut v as *mut i32 as *mut c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok((v & 0xffff) as u16)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `sockets` af_packet ports on `ifname` in one fanout group (see the module docs);
/// port `i` is core `i`'s. Channels placed with [`SharedDevice::steer`] (up to `max_channels`
/// receivers) are steered to their core. Until socket `i` has joined the group (right after
/// its bind) it sees the interface's frames on its own, as well as the group: at start, when
/// no channel runs yet.
pub fn open_group(
    ifname: &str,
    cfg: AfPacketConfig,
    sockets: usize,
    udp_port: u16,
    max_channels: usize,
) -> Result<(Vec<AfPacketPort>, FanoutGroup), AfPacketError> {
    let os_err = |call: &'static str, source: io::Error| AfPacketError::Os {
        ifname: ifname.to_string(),
        call,
        source,
    };
    if sockets == 0 || sockets > usize::from(u16::MAX) {
        return Err(AfPacketError::Config {
            ifname: ifname.into(),
            reason: format!("{sockets} sockets: a fanout group has 1 to 65535"),
        });
    }
    let steering = Steering::new(sockets, max_channels);
    let filter = rtchan_filter(udp_port);
    let mut ports = Vec::with_capacity(sockets);
    let mut counters = Vec::with_capacity(sockets);
    let mut notes = Vec::new();
    let mut mode = FanoutMode::Kernel;
    let mut flags = PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
    let mut id = 0u16;
    for i in 0..sockets {
        // The filter before the bind: no other frame ever enters the ring.
        let mut port = AfPacketPort::open_with(ifname, cfg, |fd| {
            attach(fd, libc::SOL_SOCKET, SO_ATTACH_FILTER, &filter)
                .map_err(|e| os_err("setsockopt(SO_ATTACH_FILTER)", e))
        })?;
        let fd = port.fd.as_raw_fd();
        // A group's sockets share the group's packet hook, so the per-socket
        // PACKET_IGNORE_OUTGOING does not keep outgoing frames out of the group. The group's
        // own sockets' frames never come back (the hook skips senders of the group), but other
        // senders' on this host do when they go through the qdisc (the kernel's taps see
        // them): the group flag keeps them out where the kernel has it, the pkt_type check on
        // receive everywhere.
        port.filter_outgoing = true;
        if i == 0 {
            let join = |kind: u32, flags: u32| {
                setsockopt_int(
                    fd,
                    libc::SOL_PACKET,
                    PACKET_FANOUT,
                    ((kind | flags | PACKET_FANOUT_FLAG_UNIQUEID) << 16) as i32,
                )
            };
            let mut joined = join(PACKET_FANOUT_CBPF, flags);
            if joined.is_err() {
                flags = 0;
                notes.push(
                    "PACKET_FANOUT_FLAG_IGNORE_OUTGOING refused: outgoing frames are filtered \
                     by pkt_type on receive"
                        .into(),
                );
                joined = join(PACKET_FANOUT_CBPF, flags);
            }
            if let Err(e) = joined {
                notes.push(format!(
                    "PACKET_FANOUT_CBPF refused ({e}): frames are spread by flow hash and \
                     handed to their core in software"
                ));
                mode = FanoutMode::Hash;
                join(PACKET_FANOUT_HASH, flags)
                    .map_err(|e| os_err("setsockopt(PACKET_FANOUT, HASH)", e))?;
            }
            id = fanout_id(fd).map_err(|e| os_err("getsockopt(PACKET_FANOUT)", e))?;
            if mode == FanoutMode::Kernel {
                attach(
                    fd,
                    libc::SOL_PACKET,
                    PACKET_FANOUT_DATA,
                    &steering_program(&[], udp_port),
                )
                .map_err(|e| os_err("setsockopt(PACKET_FANOUT_DATA)", e))?;
            }
        } else {
            let kind = match mode {
                FanoutMode::Kernel => PACKET_FANOUT_CBPF,
                FanoutMode::Hash => PACKET_FANOUT_HASH,
            };
            setsockopt_int(
                fd,
                libc::SOL_PACKET,
                PACKET_FANOUT,
                (u32::from(id) | (kind | flags) << 16) as i32,
            )
            .map_err(|e| os_err("setsockopt(PACKET_FANOUT, join)", e))?;
        }
        let c = Arc::new(QueueCounters::default());
        port.member = Some(Member::new(i, steering.clone(), c.clone(), udp_port));
        counters.push(c);
        ports.push(port);
    }
    // SAFETY: plain syscall on a descriptor `ports[0]` owns; the duplicate is checked and
    // then owned by the group.
    let dup = unsafe { libc::fcntl(ports[0].fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(os_err("fcntl(F_DUPFD_CLOEXEC)", io::Error::last_os_error()));
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    let ctl = unsafe { OwnedFd::from_raw_fd(dup) };
    Ok((
        ports,
        FanoutGroup {
            ifname: ifname.into(),
            id,
            mode,
            ctl,
            udp_port,
            steering,
            placed: Mutex::new(BTreeMap::new()),
            counters,
            notes,
        },
    ))
}

impl FanoutGroup {
    /// The kernel's steering mode.
    pub fn mode(&self) -> FanoutMode {
        self.mode
    }

    /// The fanout group id (per network namespace).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// What fell back during set-up, in words.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl SharedDevice for FanoutGroup {
    /// Frames of channel `id` go to core `core` from now on (`None`: nowhere in particular).
    /// The software table first, so that no frame the new program sends to `core` finds it
    /// unplaced; then the kernel program. Replacing the program waits for an RCU grace period
    /// in the kernel (`synchronize_net`: about 15 ms per call measured on a loaded 2-vCPU VM),
    /// so a removal leaves the program as it is (the next placement drops the channel from
    /// it; meanwhile its frames still go to its old core, whose receive path counts them as
    /// of an unknown channel). A program the kernel refuses leaves the previous one (the
    /// hand-off still steers); the error says why.
    fn steer(&self, id: ChannelId, core: Option<u16>) -> io::Result<()> {
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = core else {
            self.steering.remove(id);
            placed.remove(&id);
            return Ok(());
        };
        self.steering.place(id, c);
        placed.insert(id, c);
        if self.mode != FanoutMode::Kernel {
            return Ok(());
        }
        let pairs: Vec<(ChannelId, u16)> = placed.iter().map(|(&i, &c)| (i, c)).collect();
        attach(
            self.ctl.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT_DATA,
            &steering_program(&pairs, self.udp_port),
        )
    }

    fn report(&self) -> Vec<QueueReport> {
        self.steering.report(&self.counters)
    }

    fn steering_name(&self) -> &'static str {
        self.mode.name()
    }
}

/// The device's RX and TX queue counts: `ETHTOOL_GCHANNELS` (in the calling thread's network
/// namespace; `combined` channels count for both), else the `rx-*`/`tx-*` entries of
/// `/sys/class/net/IF/queues` (the namespace sysfs was mounted in).
pub fn device_queues(ifname: &str) -> io::Result<(u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{ifname}' is not an interface name"),
        ));
    }
    let from_ioctl = (|| {
        // SAFETY: plain syscall; the descriptor is checked and then owned.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ch = EthtoolChannels {
            cmd: ETHTOOL_GCHANNELS,
            ..EthtoolChannels::default()
        };
        let mut req = super::ifreq_for(ifname);
        req.ifr_ifru.ifru_data = &mut ch as *mut EthtoolChannels as *mut libc::c_char;
        // SAFETY: `req` names the interface and points to `ch`, a live ethtool_channels the
        // kernel fills in (it reads `cmd` first); both outlive the call.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::SIOCETHTOOL as _,
                &mut req as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            ch.rx_count + ch.combined_count,
            ch.tx_count + ch.combined_count,
        ))
    })();
    match from_ioctl {
        Ok(q) if q.0 > 0 && q.1 > 0 => Ok(q),
        other => {
            let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"));
            let Ok(dir) = dir else {
                return other;
            };
            let (mut rx, mut tx) = (0, 0);
            for e in dir.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                rx += u32::from(n.starts_with("rx-"));
                tx += u32::from(n.starts_with("tx-"));
            }
            Ok((rx, tx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::spec::Endpoint;
    use dataplane::wire::{HeaderTemplate, RtHeader, ETH_LEN, RTCHAN_UDP_PORT};

    /// Runs the subset of classic BPF the programs here use over an Ethernet frame, as the
    /// kernel would: `SKF_NET_OFF` loads relative to the IPv4 header, the protocol ancillary
    /// load is the EtherType; a load past the end returns 0 (the kernel's rule).
    fn run(prog: &[libc::sock_filter], frame: &[u8]) -> u32 {
        let load = |k: u32, size: usize| -> Option<u32> {
            if k == PROTO {
                return Some(u32::from(u16::from_be_bytes([frame[12], frame[13]])));
            }
            let off = k.wrapping_sub(libc::SKF_NET_OFF as u32) as usize + ETH_LEN;
            let b = frame.get(off..off + size)?;
            Some(b.iter().fold(0u32, |a, &x| a << 8 | u32::from(x)))
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            match code {
                LD_B | LD_H | LD_W => {
                    let size = match code {
                        LD_B => 1,
                        LD_H => 2,
                        _ => 4,
                    };
                    match load(i.k, size) {
                        Some(v) => a = v,
                        None => return 0,
                    }
                }
                JEQ | JSET | JGT => {
                    let hit = match code {
                        JEQ => a == i.k,
                        JGT => a > i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                JA => pc += i.k as usize,
                RET => return i.k,
                _ => panic!("instruction {code:#x} not in the subset"),
            }
        }
    }

    fn frame(channel: u32, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let rt = RtHeader {
            channel,
            frag_count: 1,
            frag_len: 4,
            msg_len: 4,
            ..RtHeader::default()
        };
        let mut b = vec![0u8; 128];
        let n = HeaderTemplate::new(&Endpoint::default()).write_frame(&mut b, 1, &rt, b"abcd");
        b.truncate(n);
        f(&mut b);
        b
    }

    #[test]
    fn the_steering_program_returns_each_placed_channel_s_core() {
        let placed = [(9, 2), (7, 1), (0x0102_0304, 3)];
        let p = steering_program(&placed, RTCHAN_UDP_PORT);
        assert_eq!(p.len(), 12 + 2 * placed.len() + 1, "one leaf");
        for (id, core) in placed {
            assert_eq!(run(&p, &frame(id, |_| {})), u32::from(core), "channel {id}");
        }
        assert_eq!(run(&p, &frame(8, |_| {})), 0, "unplaced");
        // Another UDP port, not UDP, not IPv4, IP options, a fragment, truncated: socket 0.
        let other_port = frame(7, |f| {
            f[ETH_LEN + 22..ETH_LEN + 24].copy_from_slice(&[0, 53])
        });
        let tcp = frame(7, |f| f[ETH_LEN + 9] = 6);
        let arp = frame(7, |f| f[12..14].copy_from_slice(&[0x08, 0x06]));
        let options = frame(7, |f| f[ETH_LEN] = 0x46);
        let fragment = frame(7, |f| f[ETH_LEN + 6] = 0x20);
        let short = frame(7, |f| f.truncate(ETH_LEN + 38));
        for (what, f) in [
            ("port", other_port),
            ("tcp", tcp),
            ("arp", arp),
            ("options", options),
            ("fragment", fragment),
            ("short", short),
        ] {
            assert_eq!(run(&p, &f), 0, "{what}");
        }
        // Every size of tree finds each of its channels and no other, within cBPF's limit;
        // beyond the cap, channels are left to the hand-off.
        for n in [
            9,
            17,
            100,
            333,
            MAX_KERNEL_CHANNELS,
            MAX_KERNEL_CHANNELS + 10,
        ] {
            // Sparse ids (3k + 1) on cores 1..=3, shuffled.
            let mut many: Vec<(ChannelId, u16)> = (0..n as u32)
                .map(|i| (3 * i + 1, (i % 3 + 1) as u16))
                .collect();
            many.reverse();
            let p = steering_program(&many, RTCHAN_UDP_PORT);
            assert!(p.len() <= 4096, "{n}: {} instructions", p.len());
            let kept = n.min(MAX_KERNEL_CHANNELS) as u32;
            for i in 0..n as u32 {
                let want = if i < kept { i % 3 + 1 } else { 0 };
                assert_eq!(run(&p, &frame(3 * i + 1, |_| {})), want, "{n}: channel {i}");
                assert_eq!(run(&p, &frame(3 * i + 2, |_| {})), 0, "{n}: unplaced {i}");
            }
            assert_eq!(run(&p, &frame(0, |_| {})), 0);
        }
    }

    #[test]
    fn the_socket_filter_keeps_only_rtchan_s_udp_port() {
        let p = rtchan_filter(RTCHAN_UDP_PORT);
        assert_eq!(run(&p, &frame(7, |_| {})), u32::MAX);
        let other_port = frame(7, |f| {
            f[ETH_LEN + 22..ETH_LEN + 24].copy_from_slice(&[0, 53])
        });
        assert_eq!(run(&p, &other_port), 0);
        assert_eq!(run(&p, &frame(7, |f| f[ETH_LEN + 9] = 6)), 0, "tcp");
        assert_eq!(
            run(&p, &frame(7, |f| f[12..14].copy_from_slice(&[0x86, 0xdd]))),
            0,
            "ipv6"
        );
        // The receive path judges IPv4 UDP it cannot place: options, later fragments.
        assert_eq!(run(&p, &frame(7, |f| f[ETH_LEN] = 0x46)), u32::MAX);
        assert_eq!(run(&p, &frame(7, |f| f[ETH_LEN + 7] = 1)), u32::MAX);
    }
}
