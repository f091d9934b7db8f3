//! The evaluation's quick mode (`rtchan-eval NAME --quick`): every experiment runs shortened
//! and its qualitative checks must hold — zero misses for admitted channels under a best-effort
//! flood and under a violator, the fairness and granularity trends, the baselines' failures.
//! Experiment 5 (real time) runs with very short loops and checks only that it measures.
//!
//! `veth_fairness` and `veth_granularity` run experiments 3 and 4 on veth in real time, and
//! (built with `--features dpdk`) `dpdk_granularity` experiment 4 on the same bed with DPDK
//! ports (root only; they print SKIPPED and pass otherwise, or when
//! `RTCHAN_SKIP_NETNS` is set;
//! `veth_fairness` is ignored, see its attribute). The tests of
//! this file run one at a time, so the real-time one never shares the CPUs with the others.
//! There is no second chance: a real-time check allows a deadline miss only when the polling
//! threads' OS preemption, measured independently of them (`rtchan::preemption`), covers that
//! message's lateness within its own life; anything else fails the run.

use rtchan_eval::{self as eval, Link, Opts};
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn quick(name: &str) {
    quick_on(name, Link::Mem);
}

fn quick_on(name: &str, link: Link) {
    let _serial = serial();
    let out = std::env::temp_dir().join(format!(
        "rtchan-eval-quick-{}-{name}-{link:?}",
        std::process::id()
    ));
    let run = || {
        let rep = eval::run_on(
            name,
            &Opts {
                quick: true,
                out: out.clone(),
            },
            link,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        for line in &rep.summary {
            eprintln!("{name}: {line}");
        }
        rep
    };
    let rep = run();
    assert!(
        rep.failed.is_empty(),
        "{name}: failed checks:\n{}",
        rep.failed.join("\n")
    );
    assert!(!rep.passed.is_empty(), "{name}: nothing was checked");
    for f in &rep.files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.lines().count() >= 2, "{} is empty", f.display());
        if f.extension().is_some_and(|e| e == "svg") {
            assert!(text.contains("<svg"), "{} is not an SVG", f.display());
        }
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn qos_maintenance() {
    quick("qos");
}

#[test]
fn overload_protection() {
    quick("overload");
}

#[test]
fn fairness_to_best_effort() {
    quick("fairness");
}

#[test]
fn preemption_granularity() {
    quick("granularity");
}

#[test]
fn overheads_measure() {
    quick("overheads");
}

#[test]
fn baselines_break() {
    quick("baselines");
}

#[test]
#[ignore = "flaky on a loaded machine: its checks are throughput ratios between runs (best effort \
            at 4x against 1x). In CI (2026-12-03) the polling threads waited 80 ms for a CPU per \
            run and best effort at 1x came in at 17 Mb/s (53 Mb/s here), so three-class at 4x \
            reached 57 % of its 1x share against 80 %; run with --ignored"]
fn veth_fairness() {
    if let Some(why) = eval::veth::skip_reason() {
        eprintln!("SKIPPED (veth): {why}");
        return;
    }
    quick_on("fairness", Link::Veth);
}

#[test]
fn veth_granularity() {
    if let Some(why) = eval::veth::skip_reason() {
        eprintln!("SKIPPED (veth): {why}");
        return;
    }
    quick_on("granularity", Link::Veth);
}

/// Experiment 4 on the DPDK bed: the same function and checks as on veth, the ports DPDK's
/// `net_af_packet` vdevs on the veth ends.
#[cfg(feature = "dpdk")]
#[test]
fn dpdk_granularity() {
    if let Some(why) = eval::veth::skip_reason() {
        eprintln!("SKIPPED (dpdk): {why}");
        return;
    }
    quick_on("granularity", Link::Dpdk);
}

#[test]
fn unknown_experiment_is_named() {
    let e = eval::run(
        "nope",
        &Opts {
            quick: true,
            out: std::env::temp_dir(),
        },
    )
    .unwrap_err();
    assert!(e.contains("nope") && e.contains("qos"), "{e}");
}
