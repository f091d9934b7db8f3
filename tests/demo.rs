//! The demo (the README's main command) runs end to end on each link it offers and reports
//! every channel. Deadline misses are not asserted here: the test machine runs other tests at
//! the same time, and the demo itself reports the OS stalls that cause them; losses would be a
//! dataplane fault and are asserted.

use rtchan::demo::{run, DemoArgs, LinkChoice};
use std::time::Duration;

fn args(link: LinkChoice) -> DemoArgs {
    DemoArgs {
        duration: Duration::from_secs(2),
        link_mbps: 1000,
        violation: 10,
        quiet: true,
        no_flood: false,
        link,
    }
}

fn check(link: LinkChoice) {
    let r = run(&args(link)).expect("the demo runs");
    assert_eq!(r.channels.len(), 5);
    for c in &r.channels {
        assert!(c.delivered > 0, "{}: nothing delivered", c.name);
        assert_eq!(c.lost, 0, "{}: lost messages", c.name);
        assert!(c.delivered <= c.submitted);
    }
    let violator = r.channels.iter().find(|c| c.violator).unwrap();
    assert!(violator.refused > 0, "the violator's excess was dropped");
    assert!(r.best_effort_bps > 0.0, "best-effort got through");
}

#[test]
fn demo_runs_over_the_in_memory_link() {
    check(LinkChoice::Memlink);
}

#[test]
fn demo_runs_over_veth_when_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root || std::env::var_os("RTCHAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED demo over veth: needs root (network namespaces)");
        return;
    }
    check(LinkChoice::Veth);
}
