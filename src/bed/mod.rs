//! The test beds a scenario runs on, behind one trait: the evaluation's experiments
//! (`rtchan-eval`) and the end-to-end veth tests are written once against [`Bed`] and run on
//! any of them.
//!
//! - [`MemBed`]: the in-memory link in virtual time ([`world`]): deterministic, exact, a
//!   virtual CPU, a 1 Gb/s link.
//! - [`VethBed`]: a veth pair between two network namespaces in real time ([`veth`]): real
//!   threads, clocks and ports on a 100 Mb/s paced link, the ports AF_XDP or af_packet
//!   ([`Link::Veth`]) or DPDK's `net_af_packet` vdevs ([`Link::Dpdk`]); root only.
//! - [`DaemonBed`] ([`crate::demo::bed`]): as in production, rtchan daemons (one on the
//!   in-memory link, or two on veth) and application processes of their own sending and
//!   receiving through [`crate::client`]; the demo is one scenario on it.
//!
//! An experiment asks the bed for its [`Profile`] (the link, the time unit its tables use, the
//! shapes of a well-behaved application and of best-effort load), builds its [`Scenario`]s at
//! the bed's scale, runs each point with [`Bed::run`], and reads one [`Point`]: the channels'
//! counters, and on a real-time bed what the machine did beside them (the polling threads'
//! measured OS preemption, which alone may excuse a deadline miss, and the gaps between polls,
//! reported only). Where a check must differ between beds (exact in virtual time, within the
//! machine's allowance in real time) the experiment says so beside the check.

pub mod veth;
pub mod world;

use crate::preemption::MissVerdict;
use dataplane::core::CoreConfig;
use dataplane::source::Pattern;
use dataplane::spec::ChannelSpec;
use dataplane::time::Nanos;
use veth::VethOut;

pub use crate::demo::bed::{DaemonBed, DaemonOut};
use world::{Load, RunOut, Scenario};

/// Which bed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Link {
    /// The in-memory link in virtual time ([`world`], [`MemBed`]).
    #[default]
    Mem,
    /// A veth pair between two network namespaces in real time ([`veth`], [`VethBed`]):
    /// AF_XDP when built with `--features af_xdp`, else af_packet. Needs root.
    Veth,
    /// The same veth bed with DPDK ports: the `net_af_packet` vdev on each end
    /// ([`veth::Backend::Dpdk`]; built with `--features dpdk`). Needs root.
    Dpdk,
    /// rtchan daemons and application processes, as in production ([`DaemonBed`]): over the
    /// in-memory link in one daemon, or two daemons on veth.
    Daemons,
}

/// A place a scenario's points run.
pub trait Bed {
    /// What the bed is and the scale it runs at.
    fn profile(&self) -> &Profile;
    /// Runs one point: `sc`'s channels for `sc.duration`.
    fn run(&mut self, sc: &Scenario) -> Result<Point, String>;
}

/// A bed's link, units and application shapes.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Which bed.
    pub link: Link,
    /// How its ports are opened, for tables and plots ("memlink", "af_packet", ...).
    pub backend: &'static str,
    /// The link rate, b/s.
    pub link_bps: u64,
    /// The unit delays are shown in: µs in virtual time, ms on veth.
    pub unit: Unit,
}

/// A unit for delays in tables and plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
}

impl Unit {
    /// Its name in column names and axes.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Us => "us",
            Unit::Ms => "ms",
        }
    }
    /// `ns` in this unit.
    pub fn of(self, ns: Nanos) -> f64 {
        match self {
            Unit::Us => ns as f64 / 1e3,
            Unit::Ms => ns as f64 / 1e6,
        }
    }
    /// `ns` (fractional) in this unit.
    pub fn of_f(self, ns: f64) -> f64 {
        match self {
            Unit::Us => ns / 1e3,
            Unit::Ms => ns / 1e6,
        }
    }
    /// Decimals worth printing in this unit.
    pub fn prec(self) -> usize {
        match self {
            Unit::Us => 2,
            Unit::Ms => 3,
        }
    }
}

impl Profile {
    /// True on a bed in real time (a machine's noise on the path): veth, with kernel or DPDK
    /// ports. Such beds share one scale and one set of checks.
    pub fn real_time(&self) -> bool {
        self.link != Link::Mem
    }
    /// File name of `stem.ext` on this bed (`-veth` or `-dpdk` before the extension).
    pub fn file(&self, stem: &str, ext: &str) -> String {
        match self.link {
            Link::Mem => format!("{stem}.{ext}"),
            Link::Veth => format!("{stem}-veth.{ext}"),
            Link::Dpdk => format!("{stem}-dpdk.{ext}"),
            Link::Daemons => format!("{stem}-daemons.{ext}"),
        }
    }
    /// How a check names the bed (empty in virtual time, as the memlink runs always did).
    pub fn tag(&self) -> &'static str {
        match self.link {
            Link::Mem => "",
            Link::Veth => "veth ",
            Link::Dpdk => "dpdk ",
            Link::Daemons => "daemons ",
        }
    }
    /// The link in words, for axes.
    pub fn link_words(&self) -> String {
        match self.link {
            Link::Mem => format!("the {} Gb/s link", self.link_bps / 1_000_000_000),
            Link::Daemons => format!(
                "the {} Mb/s {} link",
                self.link_bps / 1_000_000,
                self.backend
            ),
            Link::Veth | Link::Dpdk => format!("the {} Mb/s paced link", self.link_bps / 1_000_000),
        }
    }
    /// The bed in words, for titles ("" in virtual time).
    pub fn title_tag(&self) -> String {
        match self.link {
            Link::Mem => String::new(),
            Link::Daemons => format!(" on daemons ({}, real time)", self.backend),
            Link::Veth | Link::Dpdk => format!(" on veth ({}, real time)", self.backend),
        }
    }
    /// Periodic best-effort load of `pct` percent of the link in `len`-byte messages.
    pub fn be_load(&self, pct: u32, len: u32) -> Load {
        if pct == 0 {
            return Load::Idle;
        }
        let wire = world::message_wire_ns(len, self.link_bps);
        Load::Pattern(Pattern::Periodic {
            interval: (wire * 100 / pct as u64).max(1),
        })
    }
    /// A well-behaved application of `s`: periodic at its spec in virtual time; on veth 10 %
    /// under it, so that the backlog a machine's stall leaves drains instead of persisting.
    pub fn well_behaved(&self, s: &ChannelSpec) -> Load {
        let interval = if self.real_time() {
            s.imin + s.imin / 10
        } else {
            s.imin
        };
        Load::Pattern(Pattern::Periodic { interval })
    }
    /// The experiments' core configuration on this bed: granularity `k`, early work run or
    /// held, a best-effort reserve (see [`world::core_config`]), the link at this bed's rate
    /// (on veth with 512 link scheduler slots).
    pub fn core_config(&self, k: u32, work_conserving: bool, reserve_ppm: u32) -> CoreConfig {
        let mut c = world::core_config(k, work_conserving, reserve_ppm);
        c.link.link_rate_bps = self.link_bps;
        if self.real_time() {
            c.link.capacity = 512;
        }
        c
    }
}

/// What one point produced.
#[derive(Debug)]
pub enum Point {
    /// In virtual time: exact, nothing on the path but the dataplane.
    Virtual(Box<RunOut>),
    /// In real time, with what the machine did beside.
    Real(Box<VethOut>),
    /// By daemons and application processes, in real time.
    Daemons(Box<DaemonOut>),
}

impl Point {
    /// Every channel's counters.
    pub fn run(&self) -> &RunOut {
        match self {
            Point::Virtual(r) => r,
            Point::Real(o) => &o.run,
            Point::Daemons(o) => &o.run,
        }
    }
    /// Channel `i`'s deadline misses, excused by measured OS preemption or not. In virtual
    /// time nothing can excuse a miss.
    pub fn verdict(&self, i: usize) -> MissVerdict {
        match self {
            Point::Virtual(r) => MissVerdict {
                unexcused: r.chans[i].misses,
                ..MissVerdict::default()
            },
            Point::Real(o) => o.verdict(i),
            Point::Daemons(o) => o.verdicts[i],
        }
    }
    /// Channel `i`'s messages and payload bytes delivered while the applications submitted
    /// (on veth the drain after the run delivers more; virtual time has no drain).
    pub fn window(&self, i: usize) -> (u64, u64) {
        match self {
            Point::Virtual(r) => (r.chans[i].delivered, r.chans[i].bytes),
            Point::Real(o) => o.window[i],
            Point::Daemons(o) => (o.run.chans[i].delivered, o.run.chans[i].bytes),
        }
    }
    /// Channel `i`'s goodput while the applications submitted, Mb/s.
    pub fn window_mbps(&self, i: usize) -> f64 {
        self.window(i).1 as f64 * 8e3 / self.run().duration as f64
    }
    /// The sending thread's time in gaps between polls over [`veth::STALL_GAP`] (0 in virtual
    /// time, and on the daemon bed, which does not see the daemons' threads' polls), during
    /// which the link cannot be fed.
    pub fn tx_stalled(&self) -> Nanos {
        match self {
            Point::Virtual(_) | Point::Daemons(_) => 0,
            Point::Real(o) => o.tx_stalled,
        }
    }
    /// Channel `i`'s goodput per second the sending thread ran (its stalls taken out), Mb/s.
    pub fn running_mbps(&self, i: usize) -> f64 {
        let run = self.run().duration.saturating_sub(self.tx_stalled()).max(1);
        self.window(i).1 as f64 * 8e3 / run as f64
    }
    /// Channel `i`'s largest lateness past ℓ + D, ns (0: no miss).
    pub fn overrun(&self, i: usize) -> Nanos {
        match self {
            Point::Virtual(_) => 0,
            Point::Real(o) => o.overrun[i],
            Point::Daemons(o) => o.overrun[i],
        }
    }
    /// The ports' trouble on a real-time bed, as a check: port TX errors and frames the RX
    /// ring dropped must both be zero. `None` in virtual time and on the daemon bed (the
    /// ports are the daemons').
    pub fn port_check(&self, what: &str) -> Option<(bool, String)> {
        match self {
            Point::Virtual(_) | Point::Daemons(_) => None,
            Point::Real(o) => Some((
                o.tx_errors == 0 && o.rx_dropped == 0,
                format!(
                    "{what}: {} port TX errors, {} frames dropped by the RX ring",
                    o.tx_errors, o.rx_dropped
                ),
            )),
        }
    }
    /// The machine's noise in words, for a summary line ("" in virtual time).
    pub fn noise_note(&self) -> String {
        match self {
            Point::Virtual(_) => String::new(),
            Point::Real(o) => format!("; {}", veth_noise(o)),
            Point::Daemons(o) => format!("; {}", o.preempted),
        }
    }
    /// The names of [`Point::noise_cells`]'s columns on `bed` (none in virtual time).
    pub fn noise_columns(bed: &Profile) -> &'static [&'static str] {
        if bed.real_time() {
            Self::noise_columns_real()
        } else {
            &[]
        }
    }
    fn noise_columns_real() -> &'static [&'static str] {
        &[
            "excused_misses",
            "unexcused_misses",
            "retries",
            "os_preemption_ms",
            "tx_stalled_ms",
            "tx_longest_stall_ms",
            "tx_stalls_over_1ms",
            "rx_longest_stall_ms",
            "rx_stalls_over_1ms",
        ]
    }
    /// Channel `i`'s (or with `None` the whole point's) noise cells for a table row.
    pub fn noise_cells(&self, i: Option<usize>) -> Vec<String> {
        let ms = |x: Nanos| format!("{:.2}", x as f64 / 1e6);
        let o = match self {
            Point::Virtual(_) => return Vec::new(),
            Point::Real(o) => o,
            Point::Daemons(o) => {
                let (e, u, r) = match i {
                    Some(i) => (o.verdicts[i].excused, o.verdicts[i].unexcused, o.retries[i]),
                    None => o
                        .verdicts
                        .iter()
                        .zip(&o.retries)
                        .fold((0, 0, 0), |(e, u, r), (v, x)| {
                            (e + v.excused, u + v.unexcused, r + x)
                        }),
                };
                // The daemons' threads' poll gaps are not seen from here: empty cells.
                let mut cells = vec![
                    e.to_string(),
                    u.to_string(),
                    r.to_string(),
                    ms(o.preempted.total()),
                ];
                cells.resize(Self::noise_columns_real().len(), String::new());
                return cells;
            }
        };
        let (excused, unexcused, retries) = match i {
            Some(i) => {
                let v = o.verdict(i);
                (v.excused, v.unexcused, o.retries[i])
            }
            None => (0..o.run.chans.len()).fold((0, 0, 0), |(e, u, r), i| {
                let v = o.verdict(i);
                (e + v.excused, u + v.unexcused, r + o.retries[i])
            }),
        };
        vec![
            excused.to_string(),
            unexcused.to_string(),
            retries.to_string(),
            ms(o.preempted.total()),
            ms(o.tx_stalled),
            ms(o.tx_stalls.longest),
            o.tx_stalls.over_1ms.to_string(),
            ms(o.rx_stalls.longest),
            o.rx_stalls.over_1ms.to_string(),
        ]
    }
    /// Whether channel `i` (counters `c`, spec `s`) has no deadline miss that measured OS
    /// preemption does not excuse (in virtual time: no miss), and its numbers in words. Packets
    /// released after ℓ + d are reported, not judged: after a machine's stall the backlog it
    /// left takes time to drain, so a late packet can be late by more than the stall.
    pub fn within_bounds(&self, i: usize, s: &ChannelSpec, u: Unit) -> (bool, String) {
        let c = &self.run().chans[i];
        let v = self.verdict(i);
        let un = u.name();
        let mut w = format!(
            "{} misses (max delay {:.2} {un} vs D {:.1} {un}); {} packets after l + d (host              delay {:.2} {un} vs d {:.2} {un}, reported)",
            c.misses,
            u.of(c.max_latency),
            u.of(s.end_to_end_deadline),
            c.late_packets,
            u.of(c.max_host_delay),
            u.of(s.link_deadline)
        );
        if c.misses > 0 {
            w.push_str(&format!(": {v}"));
        }
        (v.unexcused == 0, w)
    }
    /// How the ports were opened (empty in virtual time).
    pub fn mode(&self) -> &str {
        match self {
            Point::Virtual(_) => "",
            Point::Real(o) => &o.mode,
            Point::Daemons(o) => o.backend,
        }
    }
}

/// The measured OS preemption and each thread's longest gap between polls, in words.
pub(crate) fn veth_noise(o: &VethOut) -> String {
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

/// The in-memory link in virtual time.
pub struct MemBed {
    profile: Profile,
}

impl Default for MemBed {
    fn default() -> Self {
        Self {
            profile: Profile {
                link: Link::Mem,
                backend: "memlink",
                link_bps: world::GBPS,
                unit: Unit::Us,
            },
        }
    }
}

impl Bed for MemBed {
    fn profile(&self) -> &Profile {
        &self.profile
    }
    fn run(&mut self, sc: &Scenario) -> Result<Point, String> {
        Ok(Point::Virtual(Box::new(world::run(sc))))
    }
}

/// A veth pair between two namespaces in real time. Each point gets a fresh pair (an AF_XDP
/// socket's queue stays busy for a moment after the socket closes).
pub struct VethBed {
    profile: Profile,
    backend: veth::Backend,
    /// What setting up noted (fallbacks).
    pub notes: Vec<String>,
}

/// The veth runs' paced link rate.
pub const VETH_BPS: u64 = 100_000_000;

impl VethBed {
    /// Probes the bed (makes and drops one pair of namespaces to see which port works).
    pub fn new(tag: &str) -> Result<Self, String> {
        Self::probe(veth::Pair::new(tag)?)
    }

    /// The bed on the port `backend`, or why it cannot run here.
    pub fn with_backend(tag: &str, backend: veth::Backend) -> Result<Self, String> {
        Self::probe(veth::Pair::with_backend(tag, backend)?)
    }

    fn probe(probe: veth::Pair) -> Result<Self, String> {
        Ok(Self {
            profile: Profile {
                link: if probe.backend == veth::Backend::Dpdk {
                    Link::Dpdk
                } else {
                    Link::Veth
                },
                backend: probe.backend.label(),
                link_bps: VETH_BPS,
                unit: Unit::Ms,
            },
            backend: probe.backend,
            notes: probe.notes.clone(),
        })
    }
}

impl Bed for VethBed {
    fn profile(&self) -> &Profile {
        &self.profile
    }
    fn run(&mut self, sc: &Scenario) -> Result<Point, String> {
        let o = veth::Pair::with_backend("p", self.backend)?.run(sc)?;
        Ok(Point::Real(Box::new(o)))
    }
}
