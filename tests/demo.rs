//! The demo (the README's main command) runs end to end on each link it offers and reports
//! every channel; over the in-memory link its real-time channels come from application
//! processes through `rtchan::client` (a daemon in this process, `rtchand demo-app` children).
//! Losses are asserted on every link, and that every deadline miss was judged against the OS
//! preemption of the polling and application threads measured independently of them
//! (`rtchan::preemption`, with the backlog rule: a wait counts from the earliest start of a
//! busy period the admitted load lets still run at the message's submit). The verdict is
//! printed, excused and unexcused apart.
//!
//! Over the in-memory link no miss may be unexcused (no retries). Under the rule of a message's
//! own life alone, a run inside the full test suite had 2 unexcused misses (0.45 and 0.36 ms
//! late) while the submitting processes waited half the run; with the backlog rule, 45 of 48
//! runs beside CPU hogs and parallel builds passed, 10 of them only because of it
//! (docs/evaluation.md, "How a deadline miss is judged", has the figures and the failures).
//! This build's costs are far above what the demo admits with (issue 11; `rtchand calibrate`
//! of a debug build gives an RX burst of about 1 ms against the 19.2 µs charged), so its busy
//! periods outlast the model's and the rule credits less than they delay: a failure under
//! heavy load may be that, and is reported, not retried. Over veth the kernel's softirq work
//! for veth (often in `ksoftirqd`, not a watched thread) is on the path and not measured, so
//! there misses are reported only. Each host's core polls on its own thread (over veth, in a
//! daemon process of its own).

use dataplane::source::Pattern;
use dataplane::spec::ChannelSpec;
use rtchan::bed::world::{core_config, ChanDef, Load, Scenario};
use rtchan::bed::{Bed, Point};
use rtchan::demo::bed::{DaemonBed, HostLink};
use rtchan::demo::{run, DemoArgs, LinkChoice};
use std::sync::Mutex;
use std::time::Duration;

/// The two demos run one at a time: each wants a CPU for its polling thread.
static SERIAL: Mutex<()> = Mutex::new(());

fn args(link: LinkChoice) -> DemoArgs {
    DemoArgs {
        duration: Duration::from_secs(2),
        // 100 Mb/s: this debug build's per-packet costs exceed the cost model the demo admits
        // with at 1 Gb/s of flood. Over veth the receiving daemon cannot take ~90,000 flood
        // frames a second off its af_packet ring, which then overflows and drops real-time
        // frames with the flood's (receive-side best-effort load is not admitted); over the
        // in-memory link the cores and the in-daemon flood leave the application processes
        // too little CPU (1,460 misses unexcused in one run, half the messages submitted).
        // The release build (the README's command) carries 1 Gb/s on both.
        link_mbps: 100,
        violation: 10,
        quiet: true,
        no_flood: false,
        link,
        // The application processes run `rtchand demo-app`, not this test binary.
        app_exe: Some(env!("CARGO_BIN_EXE_rtchand").into()),
    }
}

fn check(link: LinkChoice) -> u64 {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let r = run(&args(link)).expect("the demo runs");
    eprintln!("{}", r.preempted);
    for c in &r.channels {
        eprintln!(
            "{}: submitted {} delivered {} misses {} ({}) lost {} (violator: {})",
            c.name, c.submitted, c.delivered, c.misses, c.verdict, c.lost, c.violator
        );
        // Every miss was judged (none slipped past the receivers' drain).
        assert_eq!(
            c.verdict.excused + c.verdict.unexcused,
            c.misses,
            "{}: misses counted and misses judged differ",
            c.name
        );
    }
    assert_eq!(r.channels.len(), 5);
    for c in &r.channels {
        assert!(c.delivered > 0, "{}: nothing delivered", c.name);
        assert_eq!(c.lost, 0, "{}: lost messages", c.name);
        assert!(c.delivered <= c.submitted);
    }
    // Every real-time channel was fed by an application process of its own through
    // rtchan::client: the sending daemon lists it as client-fed, and its sender and receiver
    // are processes of their own, not this one.
    let me = std::process::id();
    let mut pids = std::collections::HashSet::new();
    for c in &r.channels {
        assert!(c.client_fed, "{}: not client-fed", c.name);
        let (tx, rx) = c.apps;
        assert!(tx != me && rx != me && pids.insert(tx) && pids.insert(rx));
    }
    let violator = r.channels.iter().find(|c| c.violator).unwrap();
    assert!(violator.refused > 0, "the violator's excess was dropped");
    assert!(r.best_effort_bps > 0.0, "best-effort got through");
    r.unexcused_misses()
}

#[test]
fn demo_runs_over_the_in_memory_link() {
    // No retries: a miss the measured OS preemption (with its backlog) does not explain fails.
    let unexcused = check(LinkChoice::Memlink);
    assert_eq!(
        unexcused, 0,
        "deadline misses not explained by measured OS preemption"
    );
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
    // Over veth the kernel's softirq work is on the path and not measured: reported only.
    check(LinkChoice::Veth);
}

/// The demo is one scenario on the daemon bed; any other runs there behind the same `Bed`
/// trait as on the beds of cores: here a real-time channel whose application retries what a
/// full buffer refuses, beside a best-effort channel on the sending daemon's periodic source.
/// Over the in-memory link, as in the demo's test, no miss may be unexcused.
#[test]
fn the_daemon_bed_runs_a_scenario_of_its_own() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = ChannelSpec {
        mmax: 500,
        imin: 2_000_000,
        bmax: 2,
        cpu_deadline: 2_000_000,
        link_deadline: 2_000_000,
        end_to_end_deadline: 2_000_000,
    };
    let mut sc = Scenario::new(core_config(4, false, 50_000), 100_000_000, 0, 1_500_000_000);
    let mut rt = ChanDef::real_time(
        "steady",
        1,
        spec,
        // 10 % under its spec, so that a backlog a stall of the machine leaves drains (the
        // enforcer releases a backlog at the spec's rate).
        Load::Pattern(Pattern::Periodic {
            interval: 2_200_000,
        }),
    );
    rt.msg_len = 300;
    assert!(rt.retry_when_full);
    // The background at 16 % of the link: this debug build's costs are far above the cost
    // model (see the module docs), and with it at 80 % one run missed 8 deadlines unexcused.
    sc.channels = vec![
        rt,
        ChanDef::best_effort(
            "background",
            2,
            1000,
            Load::Pattern(Pattern::Periodic { interval: 500_000 }),
        ),
    ];
    let mut bed = DaemonBed::new(
        HostLink::Memlink,
        sc.link_bps,
        env!("CARGO_BIN_EXE_rtchand").into(),
    );
    let p = bed.run(&sc).expect("the scenario runs");
    let Point::Daemons(o) = &p else {
        panic!("not the daemon bed's point")
    };
    eprintln!("{}", o.preempted);
    let (steady, background) = (&p.run().chans[0], &p.run().chans[1]);
    // The admitted spec replaces the scenario's: the bed asked for the host bound plus its
    // network's share, and admission split it.
    let admitted = steady.spec.expect("admitted");
    assert_eq!(admitted.end_to_end_deadline, 2_000_000 + bed.net_and_rx());
    assert!(admitted.link_deadline <= admitted.end_to_end_deadline);
    // 1.5 s at one message per 2.2 ms: 681 offered. A refused one is retried; those still
    // waiting when time is up (behind a backlog the machine's stalls of the sending process
    // left, which drains at the spec's rate) count as blocked.
    assert!(
        (670..=690).contains(&steady.offered),
        "offered {}",
        steady.offered
    );
    assert_eq!(steady.accepted + steady.blocked, steady.offered);
    assert!(
        steady.accepted * 10 >= steady.offered * 9,
        "{} of {} queued",
        steady.accepted,
        steady.offered
    );
    assert_eq!(steady.delivered, steady.accepted, "every message delivered");
    assert_eq!(steady.bytes, 300 * steady.delivered);
    assert_eq!((steady.lost, steady.reordered), (0, 0));
    let v = p.verdict(0);
    assert_eq!(v.excused + v.unexcused, steady.misses, "every miss judged");
    let (ok, words) = p.within_bounds(0, &admitted, bed.profile().unit);
    assert!(ok, "{words}");
    assert!(o.client_fed[0] && o.apps[0].is_some());
    // The daemon's source: 2,000 messages a second (16 % of the link), delivered while traffic
    // ran.
    assert!(o.apps[1].is_none() && !o.client_fed[1]);
    assert!(background.delivered > 1_500, "{background:?}");
    assert_eq!(background.bytes, 1000 * background.delivered);
    assert_eq!(p.window(1), (background.delivered, background.bytes));
}

/// The application subcommand run by hand with bad input says what is wrong (and names the
/// patterns it reads), with exit code 2 for a bad argument and 1 for a failure.
#[test]
fn demo_app_run_by_hand_explains_bad_input() {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_rtchand"))
            .arg("demo-app")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let send = |pattern: &str| {
        run(&[
            "send",
            "--socket",
            "/x",
            "--name",
            "c",
            "--mmax",
            "100",
            "--imin",
            "1ms",
            "--bmax",
            "1",
            "--deadline",
            "2ms",
            "--pattern",
            pattern,
            "--duration",
            "1s",
        ])
    };
    let (code, err) = send("nope");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'nope' is not a send pattern (periodic:GAP,"),
        "{err}"
    );
    let missing = std::env::temp_dir().join(format!("rtchan-no-daemon-{}", std::process::id()));
    let sock = missing.display().to_string();
    let (code, err) = run(&["recv", "--socket", &sock, "--id", "3"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("connecting to {sock}")), "{err}");
}
