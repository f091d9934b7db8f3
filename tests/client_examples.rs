//! `examples/rt_sender.rs` and `examples/rt_receiver.rs` as processes against a daemon on the
//! in-memory link: delivery byte-exact (the receiver checks every message and both print a
//! digest of every byte), the receiver's counts equal to the daemon's counters, no deadline
//! miss unexcused by measured OS preemption; and a clear error with a failing exit code for
//! bad arguments.

#[path = "common/client_examples.rs"]
mod client_examples;

use std::process::Command;

use client_examples::{
    checking_receiver, close_and_judge, config, example, field, list, num, sender_channel,
    sender_sent, stats_once_delivered, temp_dir, Proc,
};
use rtchan::client::Client;
use rtchan::daemon::Daemon;
use rtchan::preemption::PreemptionProbe;

const MESSAGES: u64 = 400;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn rt_sender_and_rt_receiver_byte_exact_counts_agree_with_the_daemon() {
    // Built before the daemon starts, so a first build does not compete with its cores.
    example("rt_sender");
    let dir = temp_dir("client-examples");
    let d = Daemon::start(config(&dir)).unwrap();
    let probe = PreemptionProbe::start().unwrap();
    probe
        .watch_threads_of(std::process::id(), "rtchan-core")
        .unwrap();
    let sock = d.socket.display().to_string();
    let count = MESSAGES.to_string();
    let mut tx = Proc::spawn(
        "rt_sender",
        &s(&[
            "--socket",
            &sock,
            "--mmax",
            "3000",
            "--imin",
            "1ms",
            "--bmax",
            "4",
            "--deadline",
            "20ms",
            "--rate",
            "1000",
            "--count",
            &count,
            "--size",
            "4..3000",
            "--wait-stdin",
        ]),
    );
    let id = sender_channel(&tx.line());
    probe.watch_threads_of(tx.child.id(), "").unwrap();
    let rx = checking_receiver(&sock, id);
    probe.watch_threads_of(rx.child.id(), "").unwrap();
    tx.go();
    let (sent_bytes, sent_digest) = sender_sent(&tx.line());
    // Wait for the last delivery (an event; the bound only keeps a broken run from hanging).
    let client = Client::connect(&d.socket).unwrap();
    let stats = stats_once_delivered(&client, id, MESSAGES);
    // The sender closes its channel when told; the receiver sees it closed and reports.
    let (summary, verdict) = close_and_judge(tx, rx, probe);
    println!("{} deadline misses: {verdict}", num(&summary, "late"));

    // Byte-exact: every message checked, and the same digest of the same bytes.
    assert_eq!(num(&summary, "received"), MESSAGES, "{summary}");
    assert_eq!(num(&summary, "bad"), 0, "{summary}");
    assert_eq!(num(&summary, "bytes"), sent_bytes, "{summary}");
    assert_eq!(field(&summary, "digest"), sent_digest, "{summary}");
    // The receiver's counts are the daemon's.
    let txc = stats.tx.expect("the sending side's counters");
    let rxc = stats.rx.expect("the receiving side's counters");
    assert_eq!(
        (txc.submitted, txc.sent, txc.invalid, txc.dropped),
        (MESSAGES, MESSAGES, 0, 0),
        "{txc:?}"
    );
    assert_eq!(rxc.delivered, num(&summary, "received"), "{rxc:?}");
    assert_eq!(rxc.bytes, num(&summary, "bytes"), "{rxc:?}");
    assert_eq!(rxc.deadline_misses, num(&summary, "late"), "{rxc:?}");
    assert_eq!(
        (rxc.lost, rxc.duplicates, rxc.reordered),
        (0, 0, 0),
        "{rxc:?}"
    );
    assert_eq!(verdict.unexcused, 0, "{verdict}");

    // Nothing is left open.
    let l = list(&d.socket);
    assert!(l.channels.is_empty() && l.incoming.is_empty(), "{l:?}");
    d.shutdown();
}

/// Runs an example to its end: (exit code, stderr).
fn run(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(example(name)).args(args).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_get_a_clear_error_and_a_failing_exit_code() {
    let dir = temp_dir("client-examples-args");
    let d = Daemon::start(config(&dir)).unwrap();
    let sock = d.socket.display().to_string();
    let sock = sock.as_str();
    let missing = dir.join("no.sock").display().to_string();
    let cases: &[(&str, &[&str], i32, &str)] = &[
        // Refused by the argument parser: exit 2.
        ("rt_sender", &["--size", "2"], 2, "at least 4 bytes"),
        (
            "rt_sender",
            &["--size", "9..5"],
            2,
            "minimum is above the maximum",
        ),
        ("rt_sender", &["--imin", "soon"], 2, "duration"),
        ("rt_sender", &["--policy", "lifo"], 2, "not a policy"),
        (
            "rt_sender",
            &["--attach", "1", "--bmax", "4"],
            2,
            "cannot be used with",
        ),
        ("rt_receiver", &[], 2, "--channel"),
        ("rt_receiver", &["--channel", "x"], 2, "invalid value"),
        // Refused by the program or the daemon: exit 1.
        (
            "rt_sender",
            &["--socket", sock, "--deadline", "5ms"],
            1,
            "--bmax is needed",
        ),
        (
            "rt_sender",
            &["--socket", sock, "--bmax", "4"],
            1,
            "--deadline is needed",
        ),
        (
            "rt_sender",
            &[
                "--socket",
                sock,
                "--bmax",
                "4",
                "--deadline",
                "5ms",
                "--rate",
                "0",
            ],
            1,
            "must be above 0",
        ),
        (
            "rt_sender",
            &[
                "--socket",
                sock,
                "--bmax",
                "4",
                "--deadline",
                "20ms",
                "--imin",
                "10ms",
                "--rate",
                "1000",
            ],
            1,
            "admits one message per",
        ),
        (
            "rt_sender",
            &[
                "--socket",
                sock,
                "--bmax",
                "4",
                "--deadline",
                "20ms",
                "--mmax",
                "100",
                "--size",
                "200",
            ],
            1,
            "carries at most 100 bytes",
        ),
        (
            "rt_sender",
            &[
                "--socket",
                sock,
                "--bmax",
                "4",
                "--deadline",
                "20ms",
                "--dst",
                "nowhere",
            ],
            1,
            "nowhere",
        ),
        (
            "rt_sender",
            &["--socket", sock, "--attach", "77"],
            1,
            "channel 77",
        ),
        (
            "rt_sender",
            &["--socket", &missing, "--bmax", "4", "--deadline", "5ms"],
            1,
            "daemon gone",
        ),
        (
            "rt_receiver",
            &["--socket", sock, "--channel", "77"],
            1,
            "no channel 77",
        ),
        (
            "rt_receiver",
            &["--socket", sock, "--channel", "1", "--count", "0"],
            1,
            "nothing to receive",
        ),
        (
            "rt_receiver",
            &["--socket", &missing, "--channel", "1"],
            1,
            "daemon gone",
        ),
    ];
    for (name, args, code, says) in cases {
        let (got, err) = run(name, args);
        assert_eq!(got, Some(*code), "{name} {args:?}: {err}");
        assert!(
            err.contains(says),
            "{name} {args:?}: wanted '{says}' in: {err}"
        );
    }
    // Nothing was left open by the refused runs.
    let l = list(&d.socket);
    assert!(l.channels.is_empty(), "{l:?}");
    d.shutdown();
}
