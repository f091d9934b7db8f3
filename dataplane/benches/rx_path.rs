//! Cost per received frame of `RxPath::handle` (parse, checksums, demultiplex, the source
//! check, the fragment-layout and sequence-window checks, reassembly, delivery), with and
//! without the channel's source check, for 1-fragment and 3-fragment messages. Prints ns per
//! frame and the ratio; the figure to compare with `rx_cost.per_packet_ns` (default 200 ns).
//!
//! Both variants run interleaved, several rounds, and the minimum per variant is reported, so
//! noise from a shared machine does not favour one of them.

use std::sync::Arc;
use std::time::Instant;

use dataplane::rx::{Receiver, RxPath, RxShared};
use dataplane::spec::Endpoint;
use dataplane::stats::{SampleSink, SampleSource};
use dataplane::wire::{HeaderTemplate, RtHeader, SourceCheck, RTCHAN_UDP_PORT};

const FRAMES: usize = 20_000;
const ROUNDS: usize = 21;

fn frames(fragments: u16) -> Vec<Vec<u8>> {
    let t = HeaderTemplate::new(&Endpoint::default());
    let per = 1000u32;
    let msg_len = per * u32::from(fragments);
    let mut out = Vec::new();
    let mut seq = 0u32;
    while out.len() < FRAMES {
        for i in 0..fragments {
            let h = RtHeader {
                flags: 0,
                frag_index: i,
                frag_count: fragments,
                frag_len: per as u16,
                channel: 1,
                msg_seq: seq,
                msg_len,
                frag_offset: u32::from(i) * per,
                submit_ts: 1_000,
                deadline: u64::MAX / 2,
            };
            let mut b = vec![0u8; 2048];
            let n = t.write_frame(&mut b, 0, &h, &[7u8; 1000]);
            b.truncate(n);
            out.push(b);
        }
        seq += 1;
    }
    out
}

fn run(frames: &[Vec<u8>], check: Option<SourceCheck>) -> f64 {
    let sink = SampleSink::new();
    let mut rx = RxPath::new(
        RTCHAN_UDP_PORT,
        1_000_000_000,
        sink.producer(SampleSource::Latency),
    );
    let shared: Arc<RxShared> = RxShared::with_source(1, 4000, 1024, 64, &sink, check);
    rx.open(RxPath::prepare(shared.clone(), 64)).unwrap();
    let r = Receiver::new(shared);
    let t = Instant::now();
    for (i, f) in frames.iter().enumerate() {
        rx.handle(f, 2_000);
        if i % 256 == 255 {
            while r.recv_with(|_, _| ()).is_some() {}
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / frames.len() as f64;
    assert!(r.stats().delivered.get() > 0);
    ns
}

fn main() {
    for fragments in [1u16, 3] {
        let f = frames(fragments);
        let check = Some(SourceCheck::exact(&Endpoint::default()));
        let (mut plain, mut checked) = (f64::MAX, f64::MAX);
        for _ in 0..ROUNDS {
            plain = plain.min(run(&f, None));
            checked = checked.min(run(&f, check));
        }
        println!(
            "rx_path {fragments}-fragment messages of 1000-byte fragments: {plain:.1} ns/frame \
             without the source check, {checked:.1} ns/frame with it (ratio {:.3})",
            checked / plain
        );
    }
}
