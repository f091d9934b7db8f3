//! Fuzz-style test of the wire parser and the receive path (reassembly, sequence window,
//! timestamps) on hostile frames: the committed corpus (`fuzz/corpus/wire/`) and mutations of
//! it (`fuzz/mutator.rs`). An input is a flags byte (bit 0: zero the UDP checksum and fix the
//! IPv4 one, so mutations reach past the checksums) and frames, each behind a big-endian
//! 16-bit length. Invariants: no panic; every delivered message is as long as it says and
//! within Mmax; `lost` grows by at most the window per message accepted.

include!("../../fuzz/mutator.rs");

use dataplane::rx::{Receiver, RxPath, RxShared, SEQ_WINDOW_AHEAD};
use dataplane::spec::Endpoint;
use dataplane::stats::{SampleSink, SampleSource};
use dataplane::wire::{checksum_add, checksum_finish, parse_frame, SourceCheck, RTCHAN_UDP_PORT};

const MMAX: u32 = 4000;

fn frames(input: &[u8]) -> (bool, Vec<Vec<u8>>) {
    let Some((&flags, mut rest)) = input.split_first() else {
        return (false, Vec::new());
    };
    let mut v = Vec::new();
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        v.push(rest[2..2 + n].to_vec());
        rest = &rest[2 + n..];
    }
    (flags & 1 == 1, v)
}

fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || f[14] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if ihl < 20 || f.len() < 14 + ihl + 8 {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let c = checksum_finish(checksum_add(0, &f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[14 + ihl + 6] = 0;
    f[14 + ihl + 7] = 0;
}

#[test]
fn wire_parser_and_reassembly() {
    let sink = SampleSink::new();
    let mut rx = RxPath::new(
        RTCHAN_UDP_PORT,
        1_000_000,
        sink.producer(SampleSource::Latency),
    );
    let check = SourceCheck::exact(&Endpoint::default());
    let shared = RxShared::with_source(9, MMAX, 64, 8, &sink, Some(check));
    rx.open(RxPath::prepare(shared.clone(), 8)).unwrap();
    let r = Receiver::new(shared);
    let mut now: u64 = 1_000_000_000;
    fuzz("wire", |input| {
        let (fix, frames) = frames(input);
        for mut f in frames {
            if fix {
                fix_checksums(&mut f);
            }
            let _ = parse_frame(&f, RTCHAN_UDP_PORT);
            rx.handle(&f, now);
            now += 10_000;
        }
        while let Some(()) = r.recv_with(|b, d| {
            assert_eq!(b.len(), d.len as usize);
            assert!(d.len <= MMAX);
        }) {}
        rx.maintain(now);
    });
    let s = r.stats();
    let accepted = s.delivered.get() + s.incomplete.get() + s.duplicates.get() + 1;
    println!(
        "delivered {}, lost {}, rejected {:?}",
        s.delivered.get(),
        s.lost.get(),
        rx.stats().rejected
    );
    assert!(s.lost.get() <= accepted * u64::from(SEQ_WINDOW_AHEAD));
}
