//! Experiments 1 (QoS maintenance) and 2 (overload protection) on veth, in real time
//! ([`super::veth`]): `rtchan-eval qos --link veth`, `rtchan-eval overload --link veth`.
//!
//! The same shapes as the memlink runs, scaled to what a real, noisy host can time: a 100 Mb/s
//! paced link (a 1400-byte frame takes 118 µs), channels ten times slower than in the memlink
//! runs, and bounds with a generous share for the machine: d = 10 ms on the sending host and
//! D = 50 ms end to end for every real-time channel, as in the veth tests, because this VM's
//! scheduler delays a polling thread by up to ~10 ms several times a second and a message can
//! meet a stall of the sender, of veth's softirq and of the receiver. What the bounds measure
//! here is mostly the machine. A miss fails a check unless the polling threads' OS preemption,
//! measured independently of them ([`rtchan::preemption`]), covers its lateness within that
//! message's own life; the CSV carries excused and unexcused misses separately, the measured
//! preemption, and (for information) each thread's longest gap between polls. Each point runs 1.5 s (0.5 s with `--quick`) plus a 0.6 s drain.

use super::veth::{skip_reason, Bed, VethOut};
use super::world::{self, Load};
use super::{Report, MS};
use dataplane::source::Pattern;
use dataplane::spec::ChannelSpec;
use dataplane::time::Nanos;

/// The paced link rate.
pub const RATE_BPS: u64 = 100_000_000;
/// Best-effort message size, bytes.
pub const BE_LEN: u32 = 1400;

/// A real-time spec with the veth bounds: d = 10 ms on the host, D = 50 ms end to end.
pub(crate) fn spec(mmax: u32, imin: Nanos, bmax: u32) -> ChannelSpec {
    ChannelSpec {
        mmax,
        imin,
        bmax,
        cpu_deadline: 5 * MS,
        link_deadline: 10 * MS,
        end_to_end_deadline: 50 * MS,
    }
}

/// The real-time channels: experiment 1's four, ten times slower (about 15 % of the link).
pub fn channels() -> Vec<(&'static str, ChannelSpec)> {
    vec![
        ("sensor", spec(64, 500_000, 4)),
        ("control", spec(200, MS, 4)),
        ("video", spec(4000, 5 * MS, 4)),
        ("bulk", spec(8000, 20 * MS, 2)),
    ]
}

/// The violator of experiment 2: 4000 bytes every 2 ms (about 17 % of the link).
pub fn violator() -> ChannelSpec {
    spec(4000, 2 * MS, 4)
}

/// The veth runs' core: k = 2, the 100 Mb/s paced link, 512 link scheduler slots.
pub(crate) fn core_config(work_conserving: bool) -> dataplane::core::CoreConfig {
    let mut c = world::core_config(2, work_conserving, 0);
    c.link.link_rate_bps = RATE_BPS;
    c.link.capacity = 512;
    c
}

/// A well-behaved application: periodic, 10 % under its spec (see [`super::veth`]).
pub(crate) fn well_behaved(s: &ChannelSpec) -> Load {
    Load::Pattern(Pattern::Periodic {
        interval: s.imin + s.imin / 10,
    })
}

/// A report that says why the veth bed cannot run here, if it cannot.
pub(crate) fn skipped(name: &str) -> Option<Report> {
    let why = skip_reason()?;
    let mut rep = Report::new(name);
    rep.note(format!("SKIPPED (veth): {why}"));
    Some(rep)
}

/// The measured OS preemption and each thread's longest gap between polls, in words.
pub(crate) fn noise_note(o: &VethOut) -> String {
    format!(
        "{}; gaps between polls (the dataplane's own work included, not an excuse): sender \
         longest {:.1} ms ({} over 1 ms), receiver longest {:.1} ms ({} over 1 ms)",
        o.preempted,
        o.tx_stalls.longest as f64 / 1e6,
        o.tx_stalls.over_1ms,
        o.rx_stalls.longest as f64 / 1e6,
        o.rx_stalls.over_1ms
    )
}

/// The backend a run will use, with its notes added to `rep`. The probe's bed is dropped at
/// once: each point makes a fresh pair of namespaces, because an AF_XDP socket's queue stays
/// busy for a moment after the socket closes.
pub(super) fn probe(rep: &mut Report, tag: &str) -> Result<&'static str, String> {
    let b = Bed::new(tag)?;
    for n in &b.notes {
        rep.note(n.clone());
    }
    Ok(b.backend.label())
}
