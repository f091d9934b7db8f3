//! Fuzz-style tests of the control plane's parsers on hostile input: the control protocol
//! (client and peer lines), the daemon's configuration and the state file. Each runs the
//! committed corpus (`fuzz/corpus/<target>/`) and mutations of it (`fuzz/mutator.rs`; more
//! with `RTCHAN_FUZZ_ITERS`, another sequence with `RTCHAN_FUZZ_SEED`). Besides never
//! panicking, what parses must survive its own encoding unchanged.

include!("../../fuzz/mutator.rs");

use control::config::DaemonConfig;
use control::protocol::{
    decode, encode_peer_request, encode_request, PeerRequestLine, RequestLine,
};
use control::state::{parse, StateFile, STATE_VERSION};

#[test]
fn protocol_lines() {
    fuzz("protocol", |input| {
        if let Ok(line) = decode::<RequestLine>(input) {
            let again: RequestLine = decode(encode_request(&line.request).trim_end().as_bytes())
                .expect("an encoded request decodes");
            assert_eq!(again.request, line.request);
        }
        if let Ok(line) = decode::<PeerRequestLine>(input) {
            let text = encode_peer_request(&line.request);
            let again: PeerRequestLine =
                decode(text.trim_end().as_bytes()).expect("an encoded peer request decodes");
            assert_eq!(again.request, line.request);
        }
    });
}

#[test]
fn daemon_configuration() {
    fuzz("config", |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(cfg) = DaemonConfig::parse(text) {
            let _ = cfg.validate();
            let _ = cfg
                .limits
                .memory_budget(&control::admission::memory::MachineMemory::default());
            let _ = (cfg.tx_model(), cfg.rx_model());
        }
    });
}

#[test]
fn state_file() {
    fuzz("state", |input| {
        let Ok(loaded) = parse(input) else {
            return;
        };
        // Written back (valid records and rejected ones verbatim), it reads the same.
        let text = StateFile {
            version: STATE_VERSION,
            channels: loaded.records.iter().map(|r| r.1.clone()).collect(),
        }
        .to_text(&loaded.rejected);
        let again = parse(text.as_bytes()).expect("a written table reads back");
        let ids = |l: &control::state::LoadedState| {
            let mut v: Vec<u32> = l.records.iter().map(|r| r.1.id).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ids(&again), ids(&loaded));
        assert_eq!(again.rejected.len(), loaded.rejected.len());
    });
}
