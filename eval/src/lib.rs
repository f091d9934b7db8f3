//! The evaluation: the founding paper's experiments, rerun on rtchan's dataplane.
//!
//! Six experiments (`docs/evaluation.md` shows and explains their results):
//!
//! | name | what it shows | time |
//! | --- | --- | --- |
//! | `qos` | real-time channels keep their rate and bounds while best-effort load rises past the link rate | virtual |
//! | `overload` | a channel sending at 2x–10x its spec hurts no one but itself | virtual |
//! | `fairness` | early real-time work waits behind best-effort (three-class order), unlike a "real-time first" order | virtual |
//! | `granularity` | preemption granularity k against the tightest channel's delay, beside admission's bound | virtual |
//! | `overheads` | per-stage costs in ns and cycles, handler switch, admission time vs channel count | real (TSC) |
//! | `baselines` | FIFO without QoS and strict priority without enforcement on the same runs | virtual |
//!
//! # Virtual and real time
//! Experiments 1–4 and 6 run the real dataplane code (cores, schedulers, link scheduler,
//! receive path) over the in-memory link in *virtual time* ([`world`]): a shared manual clock,
//! a virtual CPU that charges a fixed cost per packet, a link that times frames at its rate.
//! Scheduling decisions, not the host's speed, decide the results, so they are deterministic,
//! identical on every machine, and a second of traffic simulates in a fraction of a second.
//! Experiment 5 measures what virtual time cannot: the real cost of each stage, with the TSC,
//! in whatever build the binary is (use `--release`).
//!
//! # One experiment, two beds
//! Each experiment is one function, `exp_NAME::run(opts, bed)`, written against the [`bed::Bed`]
//! trait: it builds its scenarios at the bed's scale, runs each point with `Bed::run` and reads
//! one [`bed::Point`]. [`bed::MemBed`] is the virtual-time bed above; [`bed::VethBed`] runs
//! the same scenarios in real time over a veth pair between two network namespaces ([`veth`]:
//! real threads, clocks and ports on a 100 Mb/s paced link, bounds with an allowance for the
//! machine; root only), writing `*-veth` files ([`run_on`] with [`Link::Veth`]). Where the
//! beds' checks differ (exact in virtual time; on veth a miss excused only by measured OS
//! preemption) the experiment says so beside the check. On veth experiment 5 also times the
//! port TX stage and the whole loop on the kernel ports beside the `NullPort`.
//!
//! Every experiment writes `NAME.csv` (and more tables where useful) and `NAME.svg` into the
//! output directory and checks its qualitative result; `quick` runs shorter versions of the
//! same checks (`eval/tests/eval_quick.rs`, CI).

pub mod bounds;
pub mod exp_baselines;
pub mod exp_fairness;
pub mod exp_granularity;
pub mod exp_overheads;
pub mod exp_overload;
pub mod exp_qos;
pub mod out;

pub use rtchan::bed::{self, veth, world, Link};

use std::path::PathBuf;

/// How to run an experiment.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Shortened runs (CI): same checks, less traffic.
    pub quick: bool,
    /// Where CSV and SVG files go.
    pub out: PathBuf,
}

/// What an experiment produced.
#[derive(Debug, Default)]
pub struct Report {
    /// The experiment's name.
    pub name: String,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Key numbers, one line each.
    pub summary: Vec<String>,
    /// Checks that held.
    pub passed: Vec<String>,
    /// Checks that failed, in words.
    pub failed: Vec<String>,
}

impl Report {
    /// An empty report for `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }
    /// Records a check.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let w = what.into();
        if ok {
            self.passed.push(w);
        } else {
            self.failed.push(w);
        }
    }
    /// Adds a line of key numbers.
    pub fn note(&mut self, line: impl Into<String>) {
        self.summary.push(line.into());
    }
    /// Writes a table and remembers the file.
    pub fn csv(&mut self, opts: &Opts, file: &str, t: &out::Csv) -> Result<(), String> {
        let p = opts.out.join(file);
        t.write(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        self.files.push(p);
        Ok(())
    }
    /// Draws a bar chart and remembers the file.
    pub fn bars(
        &mut self,
        opts: &Opts,
        file: &str,
        (title, y): (&str, &str),
        bars: &[(String, f64)],
    ) -> Result<(), String> {
        let p = opts.out.join(file);
        out::bar_chart(&p, title, y, bars)?;
        self.files.push(p);
        Ok(())
    }
    /// Draws a line chart and remembers the file.
    pub fn plot(
        &mut self,
        opts: &Opts,
        file: &str,
        c: &out::Chart,
        s: &[out::Series],
    ) -> Result<(), String> {
        let p = opts.out.join(file);
        out::line_chart(&p, c, s).map_err(|e| format!("{}: {e}", p.display()))?;
        self.files.push(p);
        Ok(())
    }
}

/// Every experiment, in order.
pub const EXPERIMENTS: [&str; 6] = [
    "qos",
    "overload",
    "fairness",
    "granularity",
    "overheads",
    "baselines",
];

/// Runs the experiment `name` (see [`EXPERIMENTS`]) on the in-memory link.
pub fn run(name: &str, opts: &Opts) -> Result<Report, String> {
    run_on(name, opts, Link::Mem)
}

/// Runs the experiment `name` on `link` (on veth, files get a `-veth` suffix, on the DPDK
/// bed `-dpdk`; without root the report says SKIPPED).
pub fn run_on(name: &str, opts: &Opts, link: Link) -> Result<Report, String> {
    if !EXPERIMENTS.contains(&name) {
        return Err(format!(
            "unknown experiment '{name}' (expected one of: {}, all)",
            EXPERIMENTS.join(", ")
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let mut skipped = Report::new(name);
    let Some(mut bed) = open_bed(link, name, &mut skipped)? else {
        return Ok(skipped);
    };
    let bed = bed.as_mut();
    let mut rep = match (name, link) {
        ("qos", _) => exp_qos::run(opts, bed),
        ("overload", _) => exp_overload::run(opts, bed),
        ("baselines", _) => exp_baselines::run(opts, bed),
        ("fairness", _) => exp_fairness::run(opts, bed),
        ("granularity", _) => exp_granularity::run(opts, bed),
        ("overheads", _) => exp_overheads::run(opts, bed),
        (other, _) => unreachable!("{other}: checked against EXPERIMENTS above"),
    }?;
    // The bed's set-up notes first.
    let mut notes = skipped.summary;
    notes.append(&mut rep.summary);
    rep.summary = notes;
    Ok(rep)
}

/// Makes the bed for `link`, or a report saying why it cannot run here (`name` the
/// experiment's); the bed's set-up notes go into `rep`.
fn open_bed(link: Link, name: &str, rep: &mut Report) -> Result<Option<Box<dyn bed::Bed>>, String> {
    match link {
        Link::Mem => Ok(Some(Box::new(bed::MemBed::default()))),
        Link::Veth => {
            if let Some(why) = veth::skip_reason() {
                rep.note(format!("SKIPPED (veth): {why}"));
                return Ok(None);
            }
            let b = bed::VethBed::new(&name[..1])?;
            for n in &b.notes {
                rep.note(n.clone());
            }
            Ok(Some(Box::new(b)))
        }
        Link::Dpdk => {
            if let Some(why) = veth::skip_reason() {
                rep.note(format!("SKIPPED (dpdk): {why}"));
                return Ok(None);
            }
            let b = bed::VethBed::with_backend(&name[..1], veth::Backend::Dpdk)?;
            Ok(Some(Box::new(b)))
        }
        // Its channels are fed by processes on patterns (no floods, no idle channels) and its
        // cores are the daemons' own, which the experiments' checks read.
        Link::Daemons => Err(format!(
            "{name}: the experiments run on the mem, veth and dpdk beds; the daemon bed runs \
             the demo (rtchand demo)"
        )),
    }
}

/// The value for a run on `bed`: of the `(quick, full)` pair for virtual time or the one for
/// real time, the one `quick` picks.
pub(crate) fn per_bed<T>(
    bed: &bed::Profile,
    quick: bool,
    virtual_time: (T, T),
    real_time: (T, T),
) -> T {
    let (q, full) = if bed.real_time() {
        real_time
    } else {
        virtual_time
    };
    if quick {
        q
    } else {
        full
    }
}

/// A table for a run on `bed`: `cols` with `{u}` replaced by the bed's delay unit ("us" or
/// "ms"), then the bed's noise columns ([`bed::Point::noise_columns`], none in virtual time).
pub(crate) fn bed_table(bed: &bed::Profile, cols: &[&str]) -> out::Csv {
    let mut names: Vec<String> = cols
        .iter()
        .map(|c| c.replace("{u}", bed.unit.name()))
        .collect();
    names.extend(bed::Point::noise_columns(bed).iter().map(|c| c.to_string()));
    out::Csv::new(&names.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Milliseconds of virtual time, as ns.
pub const MS: u64 = 1_000_000;
/// Microseconds, as ns.
pub const US: u64 = 1_000;
