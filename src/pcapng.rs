//! A small pcapng writer for `rtchanctl capture`: one section, one interface per polling core
//! role (`tx0`, `rx0`, ...), Ethernet frames with nanosecond timestamps and their direction
//! (`epb_flags`), which Wireshark and tshark show as `frame.interface_name` and
//! `frame.packet_flags_direction`.
//!
//! Three block types (section header, interface description, enhanced packet) in the host's
//! byte order, as the format allows; readers swap by the section's byte-order magic. Written
//! here rather than with a crate: it is these three blocks and nothing else.

use std::io::{self, Write};

use crate::ports::pcap::LINKTYPE_ETHERNET;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const OPT_END: u16 = 0;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// Writes a pcapng stream to `W`.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
    block: Vec<u8>,
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

impl<W: Write> PcapngWriter<W> {
    /// Starts the stream with its section header.
    pub fn new(out: W) -> io::Result<Self> {
        let mut w = Self {
            out,
            interfaces: 0,
            block: Vec::with_capacity(4096),
        };
        w.block.clear();
        w.block.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
        w.block.extend_from_slice(&1u16.to_ne_bytes());
        w.block.extend_from_slice(&0u16.to_ne_bytes());
        w.block.extend_from_slice(&(-1i64).to_ne_bytes()); // section length: not given
        w.emit(SHB)?;
        Ok(w)
    }

    fn option(&mut self, code: u16, value: &[u8]) {
        self.block.extend_from_slice(&code.to_ne_bytes());
        self.block
            .extend_from_slice(&(value.len() as u16).to_ne_bytes());
        self.block.extend_from_slice(value);
        self.block.resize(pad4(self.block.len()), 0);
    }

    /// Writes the block body in `self.block` framed as a block of `kind`.
    fn emit(&mut self, kind: u32) -> io::Result<()> {
        let total = (12 + self.block.len()) as u32;
        self.out.write_all(&kind.to_ne_bytes())?;
        self.out.write_all(&total.to_ne_bytes())?;
        self.out.write_all(&self.block)?;
        self.out.write_all(&total.to_ne_bytes())
    }

    /// Describes the next interface (Ethernet, nanosecond timestamps); returns its index.
    pub fn add_interface(&mut self, name: &str, snaplen: u32) -> io::Result<u32> {
        self.block.clear();
        self.block
            .extend_from_slice(&(LINKTYPE_ETHERNET as u16).to_ne_bytes());
        self.block.extend_from_slice(&0u16.to_ne_bytes());
        self.block.extend_from_slice(&snaplen.to_ne_bytes());
        self.option(IF_NAME, name.as_bytes());
        self.option(IF_TSRESOL, &[9]);
        self.option(OPT_END, &[]);
        self.emit(IDB)?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// Writes one frame seen on interface `iface` at `ts_ns` (ns since the Unix epoch),
    /// `orig_len` bytes long on the wire, of which `data` was kept.
    pub fn write_packet(
        &mut self,
        iface: u32,
        ts_ns: u64,
        inbound: bool,
        orig_len: u32,
        data: &[u8],
    ) -> io::Result<()> {
        if iface >= self.interfaces {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "interface {iface} was not described (there are {})",
                    self.interfaces
                ),
            ));
        }
        self.block.clear();
        self.block.extend_from_slice(&iface.to_ne_bytes());
        self.block
            .extend_from_slice(&((ts_ns >> 32) as u32).to_ne_bytes());
        self.block.extend_from_slice(&(ts_ns as u32).to_ne_bytes());
        self.block
            .extend_from_slice(&(data.len() as u32).to_ne_bytes());
        self.block.extend_from_slice(&orig_len.to_ne_bytes());
        self.block.extend_from_slice(data);
        self.block.resize(pad4(self.block.len()), 0);
        let flags: u32 = if inbound { 1 } else { 2 };
        self.option(EPB_FLAGS, &flags.to_ne_bytes());
        self.option(OPT_END, &[]);
        self.emit(EPB)
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn blocks_are_framed_padded_and_chained() {
        let mut w = PcapngWriter::new(Vec::new()).unwrap();
        assert_eq!(w.add_interface("tx0", 1514).unwrap(), 0);
        w.write_packet(0, 0x1_0000_0002, false, 61, &[7u8; 61])
            .unwrap();
        let b = w.out;
        // Walk the blocks: each total length is repeated at its end, and lengths are 4-aligned.
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < b.len() {
            let len = u32_at(&b, at + 4) as usize;
            assert_eq!(len % 4, 0);
            assert_eq!(u32_at(&b, at + len - 4) as usize, len);
            kinds.push(u32_at(&b, at));
            at += len;
        }
        assert_eq!(at, b.len());
        assert_eq!(kinds, [SHB, IDB, EPB]);
        let epb = b.len() - (12 + 20 + 64 + 8 + 4);
        assert_eq!(u32_at(&b, epb + 8), 0, "interface");
        assert_eq!(u32_at(&b, epb + 12), 1, "timestamp high");
        assert_eq!(u32_at(&b, epb + 16), 2, "timestamp low");
        assert_eq!(u32_at(&b, epb + 20), 61, "captured length");
        assert_eq!(u32_at(&b, epb + 24), 61, "original length");
    }

    #[test]
    fn a_packet_on_an_undescribed_interface_is_refused() {
        let mut w = PcapngWriter::new(Vec::new()).unwrap();
        let e = w.write_packet(0, 1, true, 1, &[0]).unwrap_err();
        assert!(e.to_string().contains("interface 0"));
    }
}
