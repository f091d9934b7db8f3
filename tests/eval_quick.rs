//! The evaluation's quick mode (`rtchan-eval NAME --quick`): every experiment runs shortened
//! and its qualitative checks must hold — zero misses for admitted channels under a best-effort
//! flood and under a violator, the fairness and granularity trends, the baselines' failures.
//! Experiment 5 (real time) runs with very short loops and checks only that it measures.

use rtchan::eval::{self, Opts};

fn quick(name: &str) {
    let out = std::env::temp_dir().join(format!("rtchan-eval-quick-{}-{name}", std::process::id()));
    let rep = eval::run(
        name,
        &Opts {
            quick: true,
            out: out.clone(),
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
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
