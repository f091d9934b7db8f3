//! The Wireshark dissector (`contrib/wireshark/rtchan.lua`) on a capture the project writes:
//! frames built by the dataplane's own wire code (`HeaderTemplate::write_frame`) are sent
//! through a [`PcapPort`], and `tshark -X lua_script:... -T fields` must read back every header
//! field exactly as sent; a frame captured after its deadline gets the expert warning, one
//! with a truncated header is marked malformed (and shows the fields it holds), a frame cut by
//! the capture does not crash the dissector.
//!
//! Needs `tshark` (Debian package `tshark`, in scripts/test.sh's PKGS); prints SKIPPED when it
//! is missing outside CI, fails in CI.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use dataplane::memlink::{MemLink, MemLinkConfig};
use dataplane::port::{Batch, PacketBuf, Port};
use dataplane::spec::Endpoint;
use dataplane::time::{Clock, ManualClock};
use dataplane::wire::{HeaderTemplate, RtHeader, ETH_LEN, FLAG_BEST_EFFORT, IPV4_LEN, UDP_LEN};
use rtchan::ports::pcap::{Directions, PcapPort};

const DISSECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/wireshark/rtchan.lua");

/// Sends `frame` (already built) through the capturing port.
fn send(port: &mut PcapPort<dataplane::memlink::MemPort>, frame: &[u8]) {
    let mut b = port.alloc_tx().expect("a buffer");
    b.buf_mut()[..frame.len()].copy_from_slice(frame);
    b.set_len(frame.len());
    let mut batch = Batch::new();
    batch.push(b);
    assert_eq!(port.tx_burst(0, &mut batch).unwrap(), 1);
}

fn header(
    channel: u32,
    seq: u32,
    idx: u16,
    count: u16,
    len: u32,
    submit: u64,
    dl: u64,
) -> RtHeader {
    let per = 1000u32;
    let off = u32::from(idx) * per;
    RtHeader {
        flags: if dl == 0 { FLAG_BEST_EFFORT } else { 0 },
        frag_index: idx,
        frag_count: count,
        frag_len: (len - off).min(per) as u16,
        channel,
        msg_seq: seq,
        msg_len: len,
        frag_offset: off,
        submit_ts: submit,
        deadline: dl,
    }
}

fn tshark(capture: &Path, fields: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "-X".to_string(),
        format!("lua_script:{DISSECTOR}"),
        "-r".into(),
        capture.display().to_string(),
        "-T".into(),
        "fields".into(),
        "-E".into(),
        "separator=|".into(),
    ];
    for f in fields {
        args.push("-e".into());
        args.push((*f).into());
    }
    let out = Command::new("tshark")
        .args(&args)
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || err.contains("Lua: Error") {
        return Err(format!("tshark failed ({}): {err}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn tshark_reads_every_field_as_sent() {
    if Command::new("tshark").arg("--version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("tshark not available in CI: install the Debian package tshark");
        }
        eprintln!("SKIPPED dissector test: tshark not found (Debian package tshark)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rtchan-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rtchan.pcap");
    // The capture clock: the port stamps each frame with this monotonic time (shifted to the
    // wall clock); submit and deadline stamps are on the same monotonic time line.
    let t0: u64 = 5_000_000_000;
    let clock = ManualClock::new(t0);
    let clk: Arc<dyn Clock> = Arc::new(clock.clone());
    let (a, _b) = MemLink::pair(
        MemLinkConfig {
            rate_bps: 0,
            ..MemLinkConfig::default()
        },
        clk.clone(),
    );
    let mut port = PcapPort::create(
        a,
        &path,
        clk,
        Directions {
            tx: true,
            rx: false,
        },
    )
    .unwrap();
    let t = HeaderTemplate::new(&Endpoint::default());
    let payload = vec![0x5au8; 1000];
    let mut buf = vec![0u8; 2048];
    let mut sent: Vec<RtHeader> = Vec::new();
    // On time: a two-fragment message on channel 3 (D = 2 ms), a one-fragment one on
    // channel 70000, a best-effort one; each captured 10 µs after its submit.
    let on_time = [
        header(3, 0, 0, 2, 1500, t0, t0 + 2_000_000),
        header(3, 0, 1, 2, 1500, t0, t0 + 2_000_000),
        header(70_000, 41, 0, 1, 64, t0 + 100_000, t0 + 600_000),
        header(9, u32::MAX, 0, 1, 900, t0 + 200_000, 0),
    ];
    for h in on_time {
        clock.set(h.submit_ts + 10_000);
        let n = t.write_frame(&mut buf, 1, &h, &payload[..h.frag_len as usize]);
        send(&mut port, &buf[..n]);
        sent.push(h);
    }
    // Late: submitted at +1 ms with D = 100 µs, captured 3 ms later.
    let late = header(4, 7, 0, 1, 200, t0 + 1_000_000, t0 + 1_100_000);
    clock.set(t0 + 4_000_000);
    let n = t.write_frame(&mut buf, 2, &late, &payload[..200]);
    send(&mut port, &buf[..n]);
    sent.push(late);
    // Truncated header: UDP says 8 + 20 bytes (a sender writing half a header).
    let h = header(11, 12, 0, 1, 13, t0 + 2_000_000, t0 + 9_000_000);
    let n = t.write_frame(&mut buf, 3, &h, &[]);
    let cut = ETH_LEN + IPV4_LEN + UDP_LEN + 20;
    let mut short = buf[..n].to_vec();
    short.truncate(cut);
    let ip_len = (cut - ETH_LEN) as u16;
    short[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&ip_len.to_be_bytes());
    short[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let sum = dataplane::wire::checksum_finish(dataplane::wire::checksum_add(
        0,
        &short[ETH_LEN..ETH_LEN + IPV4_LEN],
    ));
    short[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&sum.to_be_bytes());
    let udp_len = (cut - ETH_LEN - IPV4_LEN) as u16;
    short[ETH_LEN + IPV4_LEN + 4..ETH_LEN + IPV4_LEN + 6].copy_from_slice(&udp_len.to_be_bytes());
    short[ETH_LEN + IPV4_LEN + 6..ETH_LEN + IPV4_LEN + 8].fill(0); // no UDP checksum
    clock.set(t0 + 5_000_000);
    send(&mut port, &short);
    // A frame whose headers claim more than it holds (cut mid-header).
    let n = t.write_frame(
        &mut buf,
        4,
        &header(12, 1, 0, 1, 64, t0, t0 + 1),
        &payload[..64],
    );
    send(&mut port, &buf[..(n - 64 - 25)]);
    port.flush().unwrap();
    drop(port);

    let fields = [
        "rtchan.channel",
        "rtchan.seq",
        "rtchan.frag_index",
        "rtchan.frag_count",
        "rtchan.frag_len",
        "rtchan.msg_len",
        "rtchan.frag_offset",
        "rtchan.submit_ts",
        "rtchan.deadline",
        "rtchan.flags.best_effort",
        "_ws.expert.message",
    ];
    let out = tshark(&path, &fields).unwrap();
    eprintln!("{out}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 7, "{out}");
    for (i, h) in sent.iter().enumerate() {
        let r = &rows[i];
        let want = [
            h.channel.to_string(),
            h.msg_seq.to_string(),
            h.frag_index.to_string(),
            h.frag_count.to_string(),
            h.frag_len.to_string(),
            h.msg_len.to_string(),
            h.frag_offset.to_string(),
            h.submit_ts.to_string(),
            h.deadline.to_string(),
        ];
        assert_eq!(
            &r[..9],
            &want.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "frame {i}: {out}"
        );
        let be = h.flags & FLAG_BEST_EFFORT != 0;
        assert!(
            r[9] == if be { "1" } else { "0" } || r[9] == if be { "True" } else { "False" },
            "frame {i} best-effort flag: {out}"
        );
        let past = r[10].contains("deadline already past");
        assert_eq!(
            past,
            i == 4,
            "frame {i}: only the late frame is past its deadline: {out}"
        );
    }
    // The truncated header: the fields it holds, marked malformed.
    let r = &rows[5];
    assert_eq!(&r[..6], &["11", "12", "0", "1", "13", "13"], "{out}");
    assert_eq!(r[6], "", "no fragment offset in 20 bytes: {out}");
    assert!(
        r[10].contains("truncated rtchan header: 20 of 40 bytes"),
        "{out}"
    );
    // The cut frame: dissected without a Lua error (checked in `tshark`), flagged.
    assert!(
        !rows[6][10].is_empty(),
        "the cut frame carries an expert note: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
