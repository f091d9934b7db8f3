//! The wire format: Ethernet + IPv4 + UDP + the rtchan header, in network byte order.
//!
//! A handler writes one frame per fragment straight into the port's buffer: the Ethernet, IPv4
//! and UDP headers come from a per-channel [`HeaderTemplate`] (built once on the control path),
//! the per-packet fields and both checksums are patched in. The parser ([`parse_frame`]) is the
//! receive path's first step; it never panics and names each malformed case with a
//! [`ParseError`] the RX path counts. `docs/wire.md` has the byte layout.

use crate::spec::{ChannelId, Endpoint};
use crate::time::Nanos;

/// UDP port rtchan uses by default.
pub const RTCHAN_UDP_PORT: u16 = 7447;
/// Version written in and accepted from the rtchan header.
pub const RTCHAN_VERSION: u8 = 1;
/// Ethernet header bytes.
pub const ETH_LEN: usize = 14;
/// IPv4 header bytes (no options written; options accepted on receive).
pub const IPV4_LEN: usize = 20;
/// UDP header bytes.
pub const UDP_LEN: usize = 8;
/// rtchan header bytes.
pub const RTCHAN_HEADER_LEN: usize = 40;
/// Header bytes inside the IP packet before the payload (IPv4, UDP, rtchan): an IP MTU less
/// this is the payload one packet carries.
pub const IP_OVERHEAD: usize = IPV4_LEN + UDP_LEN + RTCHAN_HEADER_LEN;
/// All header bytes before the payload.
pub const FRAME_OVERHEAD: usize = ETH_LEN + IP_OVERHEAD;
/// Preamble and start-of-frame delimiter: on the wire, not in the frame.
pub const PREAMBLE_SFD_LEN: usize = 8;
/// Ethernet frame check sequence, added by the NIC.
pub const FCS_LEN: usize = 4;
/// Minimum inter-frame gap.
pub const INTER_FRAME_GAP_LEN: usize = 12;
/// Bytes a frame costs on the wire beyond what the port is handed: preamble and SFD, FCS,
/// inter-frame gap.
pub const WIRE_OVERHEAD: usize = PREAMBLE_SFD_LEN + FCS_LEN + INTER_FRAME_GAP_LEN;
/// Smallest Ethernet frame without FCS; shorter frames are padded by the NIC.
pub const MIN_FRAME: usize = 60;
/// Flag: the packet belongs to a best-effort channel.
pub const FLAG_BEST_EFFORT: u8 = 1;

/// Bytes a frame of `frame_len` occupies on the wire, padding and overhead included.
#[inline]
pub fn wire_bytes(frame_len: usize) -> u64 {
    (frame_len.max(MIN_FRAME) + WIRE_OVERHEAD) as u64
}

/// The rtchan header of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RtHeader {
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// Index of this fragment, from 0.
    pub frag_index: u16,
    /// Fragments in the message.
    pub frag_count: u16,
    /// Payload bytes in this fragment.
    pub frag_len: u16,
    /// The channel.
    pub channel: ChannelId,
    /// Message sequence number on the channel, from 0.
    pub msg_seq: u32,
    /// Length of the whole message.
    pub msg_len: u32,
    /// Offset of this fragment's payload in the message.
    pub frag_offset: u32,
    /// When the application submitted the message (CLOCK_MONOTONIC ns).
    pub submit_ts: Nanos,
    /// Absolute end-to-end deadline: logical arrival time + D (0 for best-effort).
    pub deadline: Nanos,
}

impl RtHeader {
    /// Writes the header into `b[..RTCHAN_HEADER_LEN]`.
    #[inline]
    pub fn write(&self, b: &mut [u8]) {
        let b = &mut b[..RTCHAN_HEADER_LEN];
        b[0] = RTCHAN_VERSION;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.frag_index.to_be_bytes());
        b[4..6].copy_from_slice(&self.frag_count.to_be_bytes());
        b[6..8].copy_from_slice(&self.frag_len.to_be_bytes());
        b[8..12].copy_from_slice(&self.channel.to_be_bytes());
        b[12..16].copy_from_slice(&self.msg_seq.to_be_bytes());
        b[16..20].copy_from_slice(&self.msg_len.to_be_bytes());
        b[20..24].copy_from_slice(&self.frag_offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.submit_ts.to_be_bytes());
        b[32..40].copy_from_slice(&self.deadline.to_be_bytes());
    }

    /// Reads a header; checks the version and the fields' consistency with each other.
    pub fn read(b: &[u8]) -> Result<Self, ParseError> {
        if b.len() < RTCHAN_HEADER_LEN {
            return Err(ParseError::Short);
        }
        if b[0] != RTCHAN_VERSION {
            return Err(ParseError::WrongVersion);
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let h = Self {
            flags: b[1],
            frag_index: u16_at(2),
            frag_count: u16_at(4),
            frag_len: u16_at(6),
            channel: u32_at(8),
            msg_seq: u32_at(12),
            msg_len: u32_at(16),
            frag_offset: u32_at(20),
            submit_ts: u64_at(24),
            deadline: u64_at(32),
        };
        if h.frag_count == 0 || h.frag_index >= h.frag_count {
            return Err(ParseError::FragmentIndexBeyondCount);
        }
        if h.frag_offset as u64 + h.frag_len as u64 > h.msg_len as u64 {
            return Err(ParseError::FragmentBeyondMessage);
        }
        Ok(h)
    }
}

/// Why a received frame was rejected. `Copy` and tiny: counted on the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum ParseError {
    /// Shorter than the headers it claims.
    #[error("frame too short")]
    Short,
    /// Not IPv4 (EtherType, version or header length).
    #[error("not IPv4")]
    NotIpv4,
    /// IPv4 header checksum wrong.
    #[error("bad IPv4 checksum")]
    BadIpChecksum,
    /// IPv4 fragment (rtchan fragments itself; IP fragments are not accepted).
    #[error("IPv4 fragment")]
    IpFragment,
    /// Not UDP, or not to the rtchan port.
    #[error("not rtchan UDP")]
    NotRtchan,
    /// IPv4, UDP and rtchan lengths disagree with each other or the frame.
    #[error("lengths disagree")]
    LengthMismatch,
    /// UDP checksum wrong.
    #[error("bad UDP checksum")]
    BadUdpChecksum,
    /// rtchan version not understood.
    #[error("wrong rtchan version")]
    WrongVersion,
    /// Fragment index not below the fragment count (or a zero count).
    #[error("fragment index beyond count")]
    FragmentIndexBeyondCount,
    /// Fragment offset + length past the message length.
    #[error("fragment beyond message length")]
    FragmentBeyondMessage,
    /// No channel with that id is open for receive.
    #[error("unknown channel")]
    UnknownChannel,
    /// The source MAC, IPv4 address or UDP port is not the one the channel's peer set up.
    #[error("wrong source")]
    WrongSource,
    /// The destination MAC or IPv4 address is not this host's for the channel.
    #[error("wrong destination")]
    WrongDestination,
    /// A fragment that does not fit the message's layout: offset not its index times the
    /// fragment size, a last fragment not ending the message, or fields disagreeing with the
    /// message's other fragments.
    #[error("fragment does not fit the message")]
    BadFragment,
    /// A message sequence number too far ahead of (or behind) the channel's window.
    #[error("sequence number outside the window")]
    SeqOutOfWindow,
}

impl ParseError {
    /// Number of reasons (size of a counter array).
    pub const COUNT: usize = 15;
    /// Every reason, in counter-index order.
    pub const ALL: [ParseError; Self::COUNT] = [
        Self::Short,
        Self::NotIpv4,
        Self::BadIpChecksum,
        Self::IpFragment,
        Self::NotRtchan,
        Self::LengthMismatch,
        Self::BadUdpChecksum,
        Self::WrongVersion,
        Self::FragmentIndexBeyondCount,
        Self::FragmentBeyondMessage,
        Self::UnknownChannel,
        Self::WrongSource,
        Self::WrongDestination,
        Self::BadFragment,
        Self::SeqOutOfWindow,
    ];
    /// Index into a counter array.
    pub fn index(self) -> usize {
        self as usize
    }
    /// Short name for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::NotIpv4 => "not_ipv4",
            Self::BadIpChecksum => "bad_ip_checksum",
            Self::IpFragment => "ip_fragment",
            Self::NotRtchan => "not_rtchan",
            Self::LengthMismatch => "length_mismatch",
            Self::BadUdpChecksum => "bad_udp_checksum",
            Self::WrongVersion => "wrong_version",
            Self::FragmentIndexBeyondCount => "fragment_index_beyond_count",
            Self::FragmentBeyondMessage => "fragment_beyond_message",
            Self::UnknownChannel => "unknown_channel",
            Self::WrongSource => "wrong_source",
            Self::WrongDestination => "wrong_destination",
            Self::BadFragment => "bad_fragment",
            Self::SeqOutOfWindow => "seq_out_of_window",
        }
    }
}

/// Adds `data` to a one's-complement running sum (RFC 1071), 16-bit big-endian words.
#[inline]
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        sum += u16::from_be_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        sum += (rest[i] as u64) << 8;
    }
    sum
}

/// Folds a running sum into the final 16-bit one's-complement checksum.
#[inline]
pub fn checksum_finish(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Ethernet, IPv4 and UDP headers of one channel, with the constant part of each checksum
/// summed once.
#[derive(Clone, Copy, Debug)]
pub struct HeaderTemplate {
    bytes: [u8; ETH_LEN + IPV4_LEN + UDP_LEN],
    /// Sum of the IPv4 header's constant words (length, id and checksum excluded).
    ip_sum: u64,
    /// Sum of the UDP pseudo-header's constant words (addresses, protocol) and the ports.
    udp_sum: u64,
}

impl HeaderTemplate {
    /// Builds the template for `ep`.
    pub fn new(ep: &Endpoint) -> Self {
        let mut b = [0u8; ETH_LEN + IPV4_LEN + UDP_LEN];
        b[0..6].copy_from_slice(&ep.dst_mac);
        b[6..12].copy_from_slice(&ep.src_mac);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut b[ETH_LEN..ETH_LEN + IPV4_LEN];
        ip[0] = 0x45; // version 4, IHL 5
        ip[1] = 0xb8; // DSCP EF (46): real-time traffic
        ip[6] = 0x40; // don't fragment
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&ep.src_ip);
        ip[16..20].copy_from_slice(&ep.dst_ip);
        let ip_sum = checksum_add(0, ip);
        let udp = &mut b[ETH_LEN + IPV4_LEN..];
        udp[0..2].copy_from_slice(&ep.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&ep.dst_port.to_be_bytes());
        let mut udp_sum = checksum_add(0, &ep.src_ip);
        udp_sum = checksum_add(udp_sum, &ep.dst_ip);
        udp_sum += 17;
        udp_sum = checksum_add(udp_sum, &udp[0..4]);
        Self {
            bytes: b,
            ip_sum,
            udp_sum,
        }
    }

    /// Writes a whole frame into `buf`: headers from the template, `rt`, then `payload`.
    /// Returns the frame length. `buf` must hold `FRAME_OVERHEAD + payload.len()` bytes.
    #[inline]
    pub fn write_frame(&self, buf: &mut [u8], ip_id: u16, rt: &RtHeader, payload: &[u8]) -> usize {
        let total = FRAME_OVERHEAD + payload.len();
        let buf = &mut buf[..total];
        buf[..self.bytes.len()].copy_from_slice(&self.bytes);
        let ip_len = (total - ETH_LEN) as u16;
        let udp_len = (total - ETH_LEN - IPV4_LEN) as u16;
        {
            let ip = &mut buf[ETH_LEN..ETH_LEN + IPV4_LEN];
            ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
            ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
            let sum = self.ip_sum + ip_len as u64 + ip_id as u64;
            ip[10..12].copy_from_slice(&checksum_finish(sum).to_be_bytes());
        }
        let l4 = ETH_LEN + IPV4_LEN;
        buf[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        // The checksum is summed from the sources (a stack copy of the header and the message),
        // not read back from the frame just written: reading fresh stores back stalls.
        let mut hdr = [0u8; RTCHAN_HEADER_LEN];
        rt.write(&mut hdr);
        buf[l4 + UDP_LEN..FRAME_OVERHEAD].copy_from_slice(&hdr);
        buf[FRAME_OVERHEAD..].copy_from_slice(payload);
        // Pseudo-header length and UDP length field both count. The payload starts at an even
        // offset, so its words line up with the frame's.
        let mut sum = self.udp_sum + 2 * udp_len as u64;
        sum = checksum_add(sum, &hdr);
        sum = checksum_add(sum, payload);
        let mut c = checksum_finish(sum);
        if c == 0 {
            c = 0xffff; // 0 means "no checksum" in UDP over IPv4
        }
        buf[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        total
    }
}

/// A parsed rtchan frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedFrame<'a> {
    /// The rtchan header.
    pub header: RtHeader,
    /// This fragment's payload.
    pub payload: &'a [u8],
    /// Its addresses.
    pub addr: FrameAddr,
}

/// The addresses of a received frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameAddr {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: [u8; 4],
    /// IPv4 destination.
    pub dst_ip: [u8; 4],
    /// UDP source port.
    pub src_port: u16,
}

/// The addresses a channel's frames must carry, as its peer set it up (`None`: not checked,
/// e.g. an address this host does not know). Not authentication against an on-path host,
/// which can forge any of them (see `docs/wire.md`); it stops other hosts of the link, and
/// frames to someone else, from reaching the channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCheck {
    /// The sender's MAC.
    pub src_mac: Option<[u8; 6]>,
    /// This host's MAC.
    pub dst_mac: Option<[u8; 6]>,
    /// The sender's IPv4 address.
    pub src_ip: Option<[u8; 4]>,
    /// This host's IPv4 address.
    pub dst_ip: Option<[u8; 4]>,
    /// The sender's UDP source port.
    pub src_port: Option<u16>,
}

impl SourceCheck {
    /// Every address of `ep`, the endpoint the sender writes its frames with.
    pub fn exact(ep: &Endpoint) -> Self {
        Self {
            src_mac: Some(ep.src_mac),
            dst_mac: Some(ep.dst_mac),
            src_ip: Some(ep.src_ip),
            dst_ip: Some(ep.dst_ip),
            src_port: Some(ep.src_port),
        }
    }

    /// Whether frame addresses `a` are the channel's: a few compares, no allocation.
    #[inline]
    pub fn check(&self, a: &FrameAddr) -> Result<(), ParseError> {
        let differs = |want: Option<&[u8]>, got: &[u8]| want.is_some_and(|w| w != got);
        if differs(self.dst_mac.as_ref().map(|m| &m[..]), &a.dst_mac)
            || differs(self.dst_ip.as_ref().map(|m| &m[..]), &a.dst_ip)
        {
            return Err(ParseError::WrongDestination);
        }
        if differs(self.src_mac.as_ref().map(|m| &m[..]), &a.src_mac)
            || differs(self.src_ip.as_ref().map(|m| &m[..]), &a.src_ip)
            || self.src_port.is_some_and(|p| p != a.src_port)
        {
            return Err(ParseError::WrongSource);
        }
        Ok(())
    }
}

/// Parses and checks a frame: Ethernet II, IPv4 (checksum, no fragments), UDP to the rtchan
/// port (checksum when non-zero), the rtchan header, and that every length agrees.
pub fn parse_frame(f: &[u8], port: u16) -> Result<ParsedFrame<'_>, ParseError> {
    if f.len() < ETH_LEN + IPV4_LEN {
        return Err(ParseError::Short);
    }
    if f[12..14] != [0x08, 0x00] || f[ETH_LEN] >> 4 != 4 {
        return Err(ParseError::NotIpv4);
    }
    let ihl = (f[ETH_LEN] & 0x0f) as usize * 4;
    if ihl < IPV4_LEN {
        return Err(ParseError::NotIpv4);
    }
    if f.len() < ETH_LEN + ihl + UDP_LEN {
        return Err(ParseError::Short);
    }
    let ip = &f[ETH_LEN..ETH_LEN + ihl];
    if checksum_finish(checksum_add(0, ip)) != 0 {
        return Err(ParseError::BadIpChecksum);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return Err(ParseError::IpFragment);
    }
    if ip[9] != 17 {
        return Err(ParseError::NotRtchan);
    }
    let ip_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // The frame may carry Ethernet padding past the IP packet, never less than it.
    if ip_len < ihl + UDP_LEN || ETH_LEN + ip_len > f.len() {
        return Err(ParseError::LengthMismatch);
    }
    let l4 = ETH_LEN + ihl;
    let udp = &f[l4..ETH_LEN + ip_len];
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return Err(ParseError::NotRtchan);
    }
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if udp_len != udp.len() {
        return Err(ParseError::LengthMismatch);
    }
    if udp.len() < UDP_LEN + RTCHAN_HEADER_LEN {
        return Err(ParseError::Short);
    }
    if udp[6..8] != [0, 0] {
        let mut sum = checksum_add(0, &ip[12..20]);
        sum += 17 + udp_len as u64;
        sum = checksum_add(sum, udp);
        if checksum_finish(sum) != 0 {
            return Err(ParseError::BadUdpChecksum);
        }
    }
    let header = RtHeader::read(&udp[UDP_LEN..])?;
    let payload = &udp[UDP_LEN + RTCHAN_HEADER_LEN..];
    if payload.len() != header.frag_len as usize {
        return Err(ParseError::LengthMismatch);
    }
    let mut addr = FrameAddr {
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        ..FrameAddr::default()
    };
    addr.dst_mac.copy_from_slice(&f[0..6]);
    addr.src_mac.copy_from_slice(&f[6..12]);
    addr.src_ip.copy_from_slice(&ip[12..16]);
    addr.dst_ip.copy_from_slice(&ip[16..20]);
    Ok(ParsedFrame {
        header,
        payload,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> RtHeader {
        RtHeader {
            flags: 0,
            frag_index: 1,
            frag_count: 3,
            frag_len: 5,
            channel: 42,
            msg_seq: 7,
            msg_len: 2000,
            frag_offset: 1000,
            submit_ts: 123_456_789,
            deadline: 987_654_321,
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let t = HeaderTemplate::new(&Endpoint::default());
        let mut buf = vec![0u8; 2048];
        let mut h = header();
        h.frag_len = payload.len() as u16;
        let n = t.write_frame(&mut buf, 99, &h, payload);
        buf.truncate(n);
        buf
    }

    #[test]
    fn round_trip() {
        let f = frame(b"hello");
        let p = parse_frame(&f, RTCHAN_UDP_PORT).unwrap();
        assert_eq!(p.payload, b"hello");
        assert_eq!(p.header.channel, 42);
        assert_eq!(p.header.deadline, 987_654_321);
        assert_eq!(f.len(), FRAME_OVERHEAD + 5);
    }

    #[test]
    fn checksums_verify_independently() {
        let f = frame(b"odd");
        // IPv4 header sums to 0xffff.
        assert_eq!(checksum_finish(checksum_add(0, &f[14..34])), 0);
        // UDP with the pseudo-header sums to 0xffff.
        let udp = &f[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        assert_eq!(checksum_finish(checksum_add(0, &pseudo)), 0);
    }

    #[test]
    fn malformed_frames_are_named() {
        let good = frame(b"abcdef");
        let mut f = good.clone();
        f[14 + 8] ^= 1; // TTL: IP checksum breaks
        assert_eq!(
            parse_frame(&f, RTCHAN_UDP_PORT),
            Err(ParseError::BadIpChecksum)
        );
        let mut f = good.clone();
        *f.last_mut().unwrap() ^= 0xff;
        assert_eq!(
            parse_frame(&f, RTCHAN_UDP_PORT),
            Err(ParseError::BadUdpChecksum)
        );
        assert_eq!(
            parse_frame(&good[..30], RTCHAN_UDP_PORT),
            Err(ParseError::Short)
        );
        assert_eq!(parse_frame(&good, 9), Err(ParseError::NotRtchan));
        let mut f = good.clone();
        f[34 + 6] = 0; // no UDP checksum, so the rtchan checks below are reached
        f[34 + 7] = 0;
        let mut v = f.clone();
        v[42] = 9;
        assert_eq!(
            parse_frame(&v, RTCHAN_UDP_PORT),
            Err(ParseError::WrongVersion)
        );
        let mut v = f.clone();
        v[42 + 2..42 + 4].copy_from_slice(&3u16.to_be_bytes()); // index 3 of 3
        assert_eq!(
            parse_frame(&v, RTCHAN_UDP_PORT),
            Err(ParseError::FragmentIndexBeyondCount)
        );
        let mut v = f.clone();
        v[42 + 6..42 + 8].copy_from_slice(&4u16.to_be_bytes()); // frag_len 4 vs 6 bytes
        assert_eq!(
            parse_frame(&v, RTCHAN_UDP_PORT),
            Err(ParseError::LengthMismatch)
        );
        let mut v = f.clone();
        v[42 + 16..42 + 20].copy_from_slice(&1000u32.to_be_bytes()); // offset 1000 + 6 > 1000
        assert_eq!(
            parse_frame(&v, RTCHAN_UDP_PORT),
            Err(ParseError::FragmentBeyondMessage)
        );
        let mut v = f.clone();
        v[12] = 0x86; // IPv6 EtherType
        assert_eq!(parse_frame(&v, RTCHAN_UDP_PORT), Err(ParseError::NotIpv4));
    }

    #[test]
    fn padding_is_accepted() {
        let mut f = frame(b"");
        f.resize(f.len().max(MIN_FRAME) + 4, 0);
        assert!(parse_frame(&f, RTCHAN_UDP_PORT).is_ok());
    }

    /// The plain RFC 1071 sum: 16-bit big-endian words, an odd last byte padded.
    fn reference_sum(data: &[u8]) -> u64 {
        data.chunks(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum()
    }

    #[test]
    fn checksum_of_edge_patterns_matches_the_reference() {
        for data in [
            vec![],
            vec![0u8; 9],
            vec![0xff; 1],
            vec![0xff; 2],
            vec![0xff; 16],
            vec![0xff; 17],
            (0..=255u8).collect::<Vec<_>>(),
        ] {
            assert_eq!(
                checksum_finish(checksum_add(7, &data)),
                checksum_finish(7 + reference_sum(&data)),
                "{data:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn checksum_matches_the_reference(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            start in 0u64..1 << 40,
        ) {
            prop_assert_eq!(
                checksum_finish(checksum_add(start, &data)),
                checksum_finish(start + reference_sum(&data))
            );
        }
    }

    proptest! {
        /// Any byte string parses to a result or an error, never a panic.
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_frame(&bytes, RTCHAN_UDP_PORT);
        }

        /// Corrupting a valid frame's header bytes never panics either.
        #[test]
        fn corrupted_frames_never_panic(i in 0usize..90, v in any::<u8>()) {
            let mut f = frame(b"0123456789");
            let i = i % f.len();
            f[i] = v;
            let _ = parse_frame(&f, RTCHAN_UDP_PORT);
        }
    }
}
