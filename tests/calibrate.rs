//! `rtchand calibrate`, briefly: every cost admission charges is measured and written, with its
//! sample count, and the fragment loads as the daemon's configuration with exactly the
//! measured figures. (No timing thresholds: the figures depend on the machine.)

use control::config::DaemonConfig;
use rtchan::daemon::calibrate::{run, CalibrateOptions};

/// The value of `key` in `[table]` of a TOML fragment, read from its text (so a key that the
/// configuration would fill with its default is not mistaken for a written one).
fn written(fragment: &str, table: &str, key: &str) -> Option<u64> {
    let mut current = "";
    for line in fragment.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            current = line;
        } else if current == format!("[{table}]") {
            if let Some(v) = line.strip_prefix(&format!("{key} = ")) {
                return v.parse().ok();
            }
        }
    }
    None
}

#[test]
fn calibrate_writes_every_charged_cost_and_the_fragment_loads() {
    let opts = CalibrateOptions {
        samples: 1000,
        ..CalibrateOptions::default()
    };
    let c = run(&opts).expect("calibration runs");
    let fragment = c.toml_fragment();

    let cost = [
        ("per_message_ns", c.per_message_ns),
        ("per_packet_ns", c.per_packet_ns),
        ("best_effort_run_ns", c.best_effort_run_ns),
        ("tx_stage_ns", c.tx_stage_ns),
        ("rx_burst_ns", c.rx_burst_ns),
        ("client_scan_ns", c.client_scan_ns),
        ("control_poll_ns", c.control_poll_ns),
        ("capture_frame_ns", c.capture_frame_ns),
    ];
    for (key, v) in cost {
        assert!(v > 0, "{key} is 0");
        assert_eq!(
            written(&fragment, "cost", key),
            Some(v),
            "[cost] {key} in:\n{fragment}"
        );
        // Each term says what it timed and how many samples it took.
        assert!(
            fragment
                .lines()
                .any(|l| l.starts_with("# ") && l.contains(key) && l.contains(" 1000 ")),
            "no comment with the samples of {key} in:\n{fragment}"
        );
    }
    for (key, v) in [
        ("per_message_ns", c.rx_per_message_ns),
        ("per_packet_ns", c.rx_per_packet_ns),
    ] {
        assert_eq!(
            written(&fragment, "rx_cost", key),
            Some(v),
            "[rx_cost] {key}"
        );
    }
    // Every distribution has the samples asked for, and its p99.9 is in the fragment.
    for d in &c.distributions {
        assert_eq!(d.samples, 1000, "{}", d.what);
        assert!(d.p50 <= d.p999 && d.p999 <= d.max, "{d:?}");
        assert!(
            fragment.contains(&format!("{}", d.p999)),
            "p99.9 of {} ({} ns) not in the fragment:\n{fragment}",
            d.what,
            d.p999
        );
    }
    // The burst bound covers what [rx_cost] says its 32 frames cost.
    assert!(32 * (c.rx_per_message_ns + c.rx_per_packet_ns) <= c.rx_burst_ns);
    // A best-effort run covers the handler run of `granularity` packets it bounds.
    assert!(c.best_effort_run_ns >= c.per_message_ns + 4 * c.per_packet_ns);

    let cfg = DaemonConfig::parse(&fragment)
        .unwrap_or_else(|e| panic!("the fragment does not load: {e}\n{fragment}"));
    assert_eq!(cfg.cost.per_message_ns, c.per_message_ns);
    assert_eq!(cfg.cost.per_packet_ns, c.per_packet_ns);
    assert_eq!(cfg.cost.best_effort_run_ns, c.best_effort_run_ns);
    assert_eq!(cfg.cost.tx_stage_ns, c.tx_stage_ns);
    assert_eq!(cfg.cost.rx_burst_ns, c.rx_burst_ns);
    assert_eq!(cfg.cost.client_scan_ns, c.client_scan_ns);
    assert_eq!(cfg.cost.control_poll_ns, c.control_poll_ns);
    assert_eq!(cfg.cost.capture_frame_ns, c.capture_frame_ns);
    assert_eq!(cfg.rx_cost.per_message_ns, c.rx_per_message_ns);
    assert_eq!(cfg.rx_cost.per_packet_ns, c.rx_per_packet_ns);
    // The intervals it sets (if any) are the ones the loaded configuration runs.
    if let Some(i) = c.service_interval_ns {
        assert_eq!(cfg.policy.service_interval.0, i);
    }
    if let Some(w) = c.tx_window_ns {
        assert_eq!(cfg.policy.tx_window.0, w);
    }
    assert_eq!(cfg.policy.granularity, c.granularity);
    // The model admission builds from it accepts the costs as a usable host.
    cfg.tx_model().validate().expect("sending model");
    cfg.rx_model().validate().expect("receiving model");
}
