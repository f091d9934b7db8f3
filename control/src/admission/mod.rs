//! Admission control: decides, without I/O and deterministically, whether a new real-time
//! channel fits on the host, and where.
//!
//! # Data flow
//!
//! A [`ChannelRequest`] (`Mmax`, `Imin`, `Bmax`, the host's local bound `d`, optionally a
//! core and a TX queue) goes through four steps in [`Admission::check`] (dry run) or
//! [`Admission::admit`] (which also records the reservation):
//!
//! 1. **Validation.** Bad fields are a [`RequestError`] naming the field, including a
//!    deadline below what an idle host could give.
//! 2. **Costs.** The [`CostModel`] turns the request into one sporadic task per core
//!    (`C = per_message + packets * per_packet`, period `Imin`) and a few per TX queue (the
//!    wire time of each handler run's packets at the queue's paced rate).
//! 3. **Tests.** Each resource is tested on its own with [`demand::check`] (EDF with
//!    non-preemptive chunks, exact processor-demand analysis) plus the utilisation limit
//!    `U <= 1 - reserve`. The CPU test depends only on the CPU deadline `d_c`; the link test
//!    only on `x = d - d_c`, because a packet's deadline is `l + d` while it may reach the
//!    link as late as `l + d_c` less the CPU work still to follow it in the message. That
//!    overlap of processing and transmission is why `d` can be smaller than the two
//!    whole-message bounds added up; `docs/admission.md` derives it with numbers.
//! 4. **Decision.** Both tests are monotone, so a request fits on (core, queue) iff the
//!    least CPU deadline the core accepts plus the least link budget the queue accepts is
//!    at most `d`. The split gives each resource slack in proportion to what it needs on an
//!    idle host. The answer is [`Admitted`] (placement, deadlines, reservation, costs,
//!    utilisations) or a [`Rejection`] naming the resource, the failed test with its
//!    numbers, and the tightest deadline that would have been admitted.
//!
//! Placement, when the request names no core or queue, is worst-fit: candidates are tried
//! from the least to the most utilised (ties by index), core-major; the first pair that
//! passes at the proportional split wins, else the first pair that passes at any split. [`offline`] runs a JSON file of requests through the same code
//! for the CLI's `admission check FILE`.

pub mod demand;
pub mod memory;
pub mod model;
pub mod offline;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use demand::{
    check_from as demand_check_from, least_passing, Blocking, Task, TaskSet, Unschedulable,
    SEARCH_LIMIT,
};
pub use model::{CostModel, ModelError, Nanos, ResourceModel, RTCHAN_HEADER_LEN};

/// A request to open a channel, as the admission test sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    /// Largest message in bytes.
    pub mmax: u32,
    /// Smallest interval between messages (logical arrivals), in ns.
    pub imin: Nanos,
    /// Largest burst of messages the sender may submit at once.
    pub bmax: u32,
    /// The sending host's local bound `d`, from logical arrival to the last packet on the wire.
    pub deadline: Nanos,
    /// Core to run the handler on; `None` lets admission choose.
    #[serde(default)]
    pub core: Option<u16>,
    /// TX queue to send on; `None` lets admission choose.
    #[serde(default)]
    pub txq: Option<u16>,
}

/// An admitted channel: where it runs, its deadlines and what it reserves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    /// Channel id (never reused by this [`Admission`]).
    pub id: u32,
    /// Core that runs the handler.
    pub core: u16,
    /// TX queue that sends the packets.
    pub txq: u16,
    /// Relative CPU deadline: the handler's EDF key for a message is `l + cpu_deadline`.
    pub cpu_deadline: Nanos,
    /// Relative link deadline: every packet is queued with deadline `l + link_deadline`;
    /// equal to the requested host bound `d`.
    pub link_deadline: Nanos,
    /// Packets per maximum-size message.
    pub packets: u32,
    /// Buffer reservation in messages (`Bmax`).
    pub buffer_messages: u32,
    /// Buffer reservation in bytes (`Bmax * Mmax`).
    pub buffer_bytes: u64,
    /// CPU cost of one message.
    pub cpu_cost: Nanos,
    /// Link cost of one message at the queue's paced rate.
    pub link_cost: Nanos,
    /// This channel's CPU utilisation, millionths.
    pub cpu_utilisation_ppm: u32,
    /// This channel's share of the queue, millionths.
    pub link_utilisation_ppm: u32,
    /// The core's total real-time utilisation with this channel.
    pub core_utilisation_ppm: u32,
    /// The queue's total real-time utilisation with this channel.
    pub txq_utilisation_ppm: u32,
    /// The request as made.
    pub request: ChannelRequest,
}

/// A request field that is invalid whatever the host's load.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize)]
pub enum RequestError {
    /// `imin` is 0.
    #[error("imin: must be greater than 0 ns")]
    ZeroImin,
    /// `mmax` is 0.
    #[error("mmax: must be greater than 0 bytes")]
    ZeroMmax,
    /// `bmax` is 0.
    #[error("bmax: must be at least 1 message")]
    ZeroBmax,
    /// `deadline` is 0.
    #[error("deadline: must be greater than 0 ns")]
    ZeroDeadline,
    /// `mmax` exceeds the configured maximum message.
    #[error("mmax: {mmax} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge {
        /// Requested.
        mmax: u32,
        /// Configured maximum.
        max: u32,
    },
    /// `deadline` is below what the host could guarantee even with nothing else admitted.
    #[error("deadline: {deadline} ns is below {minimum} ns, the least an idle host can guarantee for this channel")]
    DeadlineTooShort {
        /// Requested.
        deadline: Nanos,
        /// Least admissible on an idle host.
        minimum: Nanos,
    },
    /// `core` names no core.
    #[error("core: {core} does not exist (the host has {cores} cores)")]
    UnknownCore {
        /// Requested.
        core: u16,
        /// Number of cores.
        cores: u16,
    },
    /// `txq` names no TX queue.
    #[error("txq: {txq} does not exist (the host has {tx_queues} TX queues)")]
    UnknownTxq {
        /// Requested.
        txq: u16,
        /// Number of queues.
        tx_queues: u16,
    },
}

impl RequestError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::ZeroImin => "imin",
            Self::ZeroMmax | Self::MessageTooLarge { .. } => "mmax",
            Self::ZeroBmax => "bmax",
            Self::ZeroDeadline | Self::DeadlineTooShort { .. } => "deadline",
            Self::UnknownCore { .. } => "core",
            Self::UnknownTxq { .. } => "txq",
        }
    }
}

/// A resource that refused the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// A core's CPU.
    Cpu(u16),
    /// A TX queue's share of the link.
    Link(u16),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu(c) => write!(f, "core {c} CPU"),
            Self::Link(q) => write!(f, "txq {q} link"),
        }
    }
}

/// The test a resource failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailedTest {
    /// `U` with the channel would exceed `1 - reserve` (millionths, rounded up).
    Utilisation {
        /// Utilisation of the resource with the channel.
        utilisation_ppm: u32,
        /// The limit, `1 - best_effort_reserve`.
        limit_ppm: u32,
    },
    /// `dbf(t) + B(t) > t` at check point `t` with the CPU deadline `cpu_deadline`
    /// (a link test ran with link budget `d - cpu_deadline`).
    Demand {
        /// The check point (an absolute deadline after a synchronous release).
        t: Nanos,
        /// `dbf(t)`.
        demand: Nanos,
        /// `B(t)`.
        blocking: Nanos,
        /// The CPU deadline of the split that was tested.
        cpu_deadline: Nanos,
    },
}

/// Why a valid request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The resource at fault (on the best candidate placement).
    pub resource: Resource,
    /// The test it failed.
    pub test: FailedTest,
    /// Core of the candidate placement examined.
    pub core: u16,
    /// TX queue of the candidate placement examined.
    pub txq: u16,
    /// The least host deadline `d` the same request would have been admitted with, or
    /// `None` when no deadline would do (e.g. utilisation).
    pub tightest_deadline: Option<Nanos>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refuses: ", self.resource)?;
        match self.test {
            FailedTest::Utilisation {
                utilisation_ppm,
                limit_ppm,
            } => write!(
                f,
                "utilisation {:.4}% would exceed the limit {:.4}%",
                f64::from(utilisation_ppm) / 1e4,
                f64::from(limit_ppm) / 1e4
            )?,
            FailedTest::Demand {
                t,
                demand,
                blocking,
                cpu_deadline,
            } => write!(
                f,
                "at t = {t} ns demand {demand} ns + blocking {blocking} ns > t \
                 (CPU deadline {cpu_deadline} ns)"
            )?,
        }
        match self.tightest_deadline {
            Some(d) => write!(f, "; the tightest admissible deadline is {d} ns"),
            None => write!(f, "; no deadline would be admitted"),
        }
    }
}

/// The outcome of a refused request.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AdmitError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] RequestError),
    /// The request is valid but does not fit.
    #[error("rejected: {0}")]
    Rejected(Box<Rejection>),
}

/// [`Admission::release`] of an id that is not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("channel {0} is not admitted")]
pub struct UnknownChannel(pub u32);

/// A core the model does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("core {0} is not a core of this model")]
pub struct UnknownCore(pub u16);

/// One channel's reservation on its core, as another controller sharing the core books it
/// ([`Admission::cpu_reservation`], [`Admission::add_shared`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuReservation {
    /// The core.
    pub core: u16,
    /// Its sporadic task there.
    pub task: Task,
    /// Its longest non-preemptive chunk (blocking of later deadlines).
    pub chunk: Nanos,
}

/// Real-time utilisation per resource, millionths (to the nearest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Utilisation {
    /// Per core.
    pub cores: Vec<u32>,
    /// Per TX queue, relative to the queue's share.
    pub tx_queues: Vec<u32>,
}

/// Whose task a ledger entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// A channel this controller admitted.
    Channel(u32),
    /// Work another controller admitted on a core this one shares ([`Admission::add_shared`]).
    Shared(u32),
}

/// The admitted tasks on one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ledger {
    /// Sorted by deadline, as [`TaskSet`] wants.
    tasks: Vec<Task>,
    /// Parallel to `tasks`: owner and its largest non-preemptive chunk.
    owners: Vec<(Owner, Nanos)>,
    utilisation_fp: u128,
}

impl Ledger {
    fn insert(&mut self, id: Owner, task: Task, chunk: Nanos) {
        let at = self.tasks.partition_point(|t| t.deadline <= task.deadline);
        self.tasks.insert(at, task);
        self.owners.insert(at, (id, chunk));
        self.utilisation_fp += task.utilisation_fp();
    }

    fn remove(&mut self, id: Owner) {
        let mut i = 0;
        while i < self.tasks.len() {
            if self.owners[i].0 == id {
                self.utilisation_fp -= self.tasks[i].utilisation_fp();
                self.tasks.remove(i);
                self.owners.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// CPU blocking: background work plus each handler's chunk while its deadline is later,
    /// each with `extra` (what may follow the chunk before a pick) added.
    fn cpu_blocking(&self, floor: Nanos, work_conserving: bool, extra: Nanos) -> Blocking {
        let mut by_chunk: BTreeMap<Nanos, Nanos> = BTreeMap::new();
        for (task, &(_, chunk)) in self.tasks.iter().zip(&self.owners) {
            let chunk = chunk + extra;
            if chunk > floor {
                let d = by_chunk.entry(chunk).or_default();
                *d = (*d).max(task.deadline);
            }
        }
        let any = if work_conserving {
            Some(Nanos::MAX)
        } else {
            None
        };
        Blocking::with_chunks(
            floor,
            by_chunk.into_iter().map(|(c, d)| (any.unwrap_or(d), c)),
        )
    }
}

/// What one request costs, independent of placement.
#[derive(Clone, Copy)]
struct Spec {
    packets: u32,
    cpu_cost: Nanos,
    chunk: Nanos,
}

/// The per-resource verdicts for one request, cached while the decision is being made.
struct Candidates<'a> {
    adm: &'a Admission,
    req: &'a ChannelRequest,
    spec: Spec,
    cpu_blocking: HashMap<u16, Blocking>,
    link_groups: HashMap<u16, Vec<(Nanos, Nanos)>>,
}

impl<'a> Candidates<'a> {
    fn new(adm: &'a Admission, req: &'a ChannelRequest) -> Self {
        let cost = &adm.model.cost;
        let packets = cost.packets(req.mmax);
        Candidates {
            adm,
            req,
            spec: Spec {
                packets,
                cpu_cost: cost.cpu_cost(packets),
                chunk: cost.handler_chunk(packets, adm.model.granularity),
            },
            cpu_blocking: HashMap::new(),
            link_groups: HashMap::new(),
        }
    }

    fn cpu_task(&self, cpu_deadline: Nanos) -> Task {
        Task {
            cost: self.spec.cpu_cost,
            period: self.req.imin,
            deadline: cpu_deadline,
        }
    }

    fn cpu_utilisation(&self, core: u16) -> Result<u128, FailedTest> {
        let ledger = &self.adm.cores[usize::from(core)];
        let overheads: u128 = self
            .adm
            .model
            .cpu_overheads()
            .iter()
            .map(Task::utilisation_fp)
            .sum();
        let u = ledger.utilisation_fp + self.cpu_task(1).utilisation_fp() + overheads;
        self.adm.within_limit(u)
    }

    fn link_utilisation(&self, txq: u16) -> Result<u128, FailedTest> {
        let ledger = &self.adm.txqs[usize::from(txq)];
        let u = ledger.utilisation_fp
            + self
                .link_tasks(txq, 1)
                .iter()
                .map(Task::utilisation_fp)
                .sum::<u128>();
        self.adm.within_limit(u)
    }

    fn blocking(&mut self, core: Option<u16>) -> Blocking {
        let extra = self.adm.model.cpu_blocking_extra();
        let floor = self.adm.model.cost.background_chunk() + extra;
        let wc = self.adm.model.work_conserving;
        match core {
            None => Blocking::constant(floor),
            Some(c) => self
                .cpu_blocking
                .entry(c)
                .or_insert_with(|| self.adm.cores[usize::from(c)].cpu_blocking(floor, wc, extra))
                .clone(),
        }
    }

    /// The least CPU deadline `>= lo` at which [`Self::cpu_test`] passes on `core`, or
    /// `None` if none does up to [`SEARCH_LIMIT`].
    ///
    /// The test is not monotone in `d_c` (docs/admission.md §3, "Split"): the loop's service
    /// phase and TX stages are no check points, so the own job can fail just past one of
    /// their steps and pass before it; and without work conservation the own chunk blocks
    /// every check point below `d_c`. So no bisection: the search walks up from `lo`, and
    /// after each failure jumps to the least `d_c` at which the failing check point could
    /// pass (every value skipped fails at that same point), the way response-time analysis
    /// iterates. Each step moves at least 1 ns and is usually a whole slack.
    fn least_cpu_deadline(&mut self, core: Option<u16>, lo: Nanos) -> Option<Nanos> {
        let mut dc = lo.max(1);
        while dc <= SEARCH_LIMIT {
            let Err(e) = self.cpu_test(core, dc) else {
                return Some(dc);
            };
            dc = self.next_cpu_candidate(core, dc, e)?;
        }
        None
    }

    /// After `cpu_test(core, dc)` failed with `e`: a `d_c' > dc` such that every value in
    /// `(dc, d_c')` fails too, or `None` if every value above `dc` fails.
    fn next_cpu_candidate(
        &mut self,
        core: Option<u16>,
        dc: Nanos,
        e: Unschedulable,
    ) -> Option<Nanos> {
        let Unschedulable::Demand {
            t,
            demand,
            blocking,
        } = e
        else {
            // U >= 1 does not depend on d_c.
            return None;
        };
        let imin = self.req.imin;
        // How far the check point's left side is above it (> 0: the point failed).
        let excess = demand.saturating_add(blocking).saturating_sub(t).max(1);
        let base: &[Task] = core.map_or(&[], |c| &self.adm.cores[usize::from(c)].tasks);
        let fixed_point = base
            .iter()
            .any(|k| t >= k.deadline && (t - k.deadline) % k.period == 0);
        let mut next: Nanos = dc + 1;
        if fixed_point {
            if t < dc {
                // Our chunk may block it, our demand is 0 there: larger d_c cannot help.
                return None;
            }
            // It stays put and fails until one of our jobs leaves the window [0, t].
            let jobs = (t - dc) / imin + 1;
            next = next.max(t - (jobs - 1) * imin + 1);
        }
        if t >= dc && (t - dc) % imin == 0 {
            // One of our own deadlines: it moves with d_c, the demand before it does not
            // drop, so it fails until it has moved by the excess or past a step down of B.
            let mut b = self.blocking(core);
            let until = if self.adm.model.work_conserving {
                Nanos::MAX
            } else {
                dc
            };
            b.add([(until, self.spec.chunk + self.adm.model.cpu_blocking_extra())]);
            let step = b.next_change_after(t).map_or(Nanos::MAX, |s| s - t);
            next = next.max(dc.saturating_add(excess.min(step)));
        }
        Some(next)
    }

    /// The CPU test on `core` (`None`: an idle core) with CPU deadline `dc`.
    fn cpu_test(&mut self, core: Option<u16>, dc: Nanos) -> Result<(), Unschedulable> {
        let mut blocking = self.blocking(core);
        let until = if self.adm.model.work_conserving {
            Nanos::MAX
        } else {
            dc
        };
        // The admitted set passed: below dc nothing changes unless our chunk blocks more.
        let chunk = self.spec.chunk + self.adm.model.cpu_blocking_extra();
        let from = if blocking.at(until.min(dc) - 1) >= chunk && until == dc {
            dc
        } else {
            0
        };
        blocking.add([(until, chunk)]);
        let base: &[Task] = core.map_or(&[], |c| &self.adm.cores[usize::from(c)].tasks);
        let overheads = self.adm.model.cpu_overheads();
        let own = [self.cpu_task(dc)];
        let set = TaskSet::new(base, &own).with_interference(&overheads);
        demand_check_from(&set, &blocking, from)
    }

    /// `(offset, cost)` per handler run of a message on `txq`: the run's packets may reach
    /// the link as late as `l + d_c - offset`, `offset` being the CPU work after that run.
    fn groups(&mut self, txq: u16) -> &[(Nanos, Nanos)] {
        let (adm, req, packets) = (self.adm, self.req, self.spec.packets);
        self.link_groups.entry(txq).or_insert_with(|| {
            let cost = &adm.model.cost;
            let k = adm.model.granularity;
            let share = adm.model.tx_queue_share_ppm[usize::from(txq)];
            let mut groups: Vec<(Nanos, Nanos)> = Vec::new();
            let mut first = 0;
            while first < packets {
                let last = packets.min(first.saturating_add(k));
                let c = cost.link_ns(cost.wire_bytes_of(req.mmax, first, last), share);
                let offset = u64::from(packets - last) * cost.per_packet_ns;
                match groups.last_mut() {
                    Some(g) if g.0 == offset => g.1 += c,
                    _ => groups.push((offset, c)),
                }
                first = last;
            }
            groups
        })
    }

    fn link_tasks(&self, txq: u16, x: Nanos) -> Vec<Task> {
        // Only called after `groups` filled the cache.
        self.link_groups[&txq]
            .iter()
            .map(|&(offset, cost)| Task {
                cost,
                period: self.req.imin,
                deadline: x.saturating_add(offset),
            })
            .collect()
    }

    /// The link test on `txq` with link budget `x = d - d_c`; `idle` ignores admitted channels.
    fn link_test(&mut self, txq: u16, idle: bool, x: Nanos) -> Result<(), Unschedulable> {
        self.groups(txq);
        let tasks = self.link_tasks(txq, x);
        let blocking = Blocking::constant(self.adm.model.link_blocking(txq));
        let base: &[Task] = if idle {
            &[]
        } else {
            &self.adm.txqs[usize::from(txq)].tasks
        };
        // The admitted set passed, and blocking is constant: only our deadlines matter.
        let from = tasks.iter().map(|t| t.deadline).min().unwrap_or(0);
        demand_check_from(&TaskSet::new(base, &tasks), &blocking, from)
    }
}

/// A decision before it is recorded.
struct Plan {
    core: u16,
    txq: u16,
    cpu_deadline: Nanos,
    spec: Spec,
    cpu_task: Task,
    link_tasks: Vec<Task>,
}

/// The admission controller: the resource model and every admitted channel's reservation.
#[derive(Clone, Debug)]
pub struct Admission {
    model: ResourceModel,
    cores: Vec<Ledger>,
    txqs: Vec<Ledger>,
    channels: BTreeMap<u32, Admitted>,
    next_id: u32,
}

/// Equal when the model and every reservation are equal; ids handed out are not compared.
impl PartialEq for Admission {
    fn eq(&self, other: &Self) -> bool {
        self.model == other.model
            && self.cores == other.cores
            && self.txqs == other.txqs
            && self.channels == other.channels
    }
}

impl Admission {
    /// An admission controller with nothing admitted.
    pub fn new(model: ResourceModel) -> Result<Self, ModelError> {
        model.validate()?;
        Ok(Self {
            cores: vec![Ledger::default(); usize::from(model.cores)],
            txqs: vec![Ledger::default(); usize::from(model.tx_queues())],
            model,
            channels: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// The resource model.
    pub fn model(&self) -> &ResourceModel {
        &self.model
    }

    /// Decides and, on success, reserves.
    pub fn admit(&mut self, req: &ChannelRequest) -> Result<Admitted, AdmitError> {
        let plan = self.decide(req)?;
        let admitted = self.describe(req, &plan, self.next_id);
        let owner = Owner::Channel(admitted.id);
        self.cores[usize::from(plan.core)].insert(owner, plan.cpu_task, plan.spec.chunk);
        for task in &plan.link_tasks {
            self.txqs[usize::from(plan.txq)].insert(owner, *task, 0);
        }
        self.channels.insert(admitted.id, admitted.clone());
        self.next_id = self.next_id.wrapping_add(1);
        Ok(admitted)
    }

    /// Decides without reserving (dry run); the id is the one `admit` would assign.
    pub fn check(&self, req: &ChannelRequest) -> Result<Admitted, AdmitError> {
        let plan = self.decide(req)?;
        Ok(self.describe(req, &plan, self.next_id))
    }

    /// Frees a channel's reservation exactly.
    pub fn release(&mut self, id: u32) -> Result<Admitted, UnknownChannel> {
        let ch = self.channels.remove(&id).ok_or(UnknownChannel(id))?;
        self.cores[usize::from(ch.core)].remove(Owner::Channel(id));
        self.txqs[usize::from(ch.txq)].remove(Owner::Channel(id));
        Ok(ch)
    }

    /// What channel `id` reserved on its core, for a controller that shares the core
    /// ([`Self::add_shared`]).
    pub fn cpu_reservation(&self, id: u32) -> Option<CpuReservation> {
        let ch = self.channels.get(&id)?;
        Some(CpuReservation {
            core: ch.core,
            task: Task {
                cost: ch.cpu_cost,
                period: ch.request.imin,
                deadline: ch.cpu_deadline,
            },
            chunk: self
                .model
                .cost
                .handler_chunk(ch.packets, self.model.granularity),
        })
    }

    /// Books on core `r.core` the work another controller admitted there under `tag` (one
    /// core that both sends and receives: the receive path's channels on the sending
    /// controller and the other way round), so every test on that core counts it: its demand,
    /// its utilisation and its chunk as blocking. It is not a channel here (not listed, never
    /// released by [`Self::release`]). The other controller tested the combined set when it
    /// admitted the work, so this controller's channels still pass.
    pub fn add_shared(&mut self, tag: u32, r: CpuReservation) -> Result<(), UnknownCore> {
        let ledger = self
            .cores
            .get_mut(usize::from(r.core))
            .ok_or(UnknownCore(r.core))?;
        ledger.insert(Owner::Shared(tag), r.task, r.chunk);
        Ok(())
    }

    /// Takes back what [`Self::add_shared`] booked under `tag` (nothing if nothing was).
    pub fn remove_shared(&mut self, tag: u32) {
        for ledger in &mut self.cores {
            ledger.remove(Owner::Shared(tag));
        }
    }

    /// Admitted channels by ascending id.
    pub fn channels(&self) -> impl Iterator<Item = &Admitted> + '_ {
        self.channels.values()
    }

    /// One admitted channel.
    pub fn channel(&self, id: u32) -> Option<&Admitted> {
        self.channels.get(&id)
    }

    /// Real-time utilisation of every resource.
    pub fn utilisation(&self) -> Utilisation {
        Utilisation {
            cores: self.cores.iter().map(|l| ppm(l.utilisation_fp)).collect(),
            tx_queues: self.txqs.iter().map(|l| ppm(l.utilisation_fp)).collect(),
        }
    }

    /// Largest admissible utilisation, fixed point; strictly below 1 so busy periods end.
    fn limit_fp(&self) -> u128 {
        let real_time = u128::from(1_000_000 - self.model.best_effort_reserve_ppm);
        ((real_time << 64) / 1_000_000).min((1u128 << 64) - 1)
    }

    fn within_limit(&self, u: u128) -> Result<u128, FailedTest> {
        let limit = self.limit_fp();
        if u <= limit {
            Ok(u)
        } else {
            Err(FailedTest::Utilisation {
                utilisation_ppm: ppm_up(u),
                limit_ppm: 1_000_000 - self.model.best_effort_reserve_ppm,
            })
        }
    }

    fn validate(&self, req: &ChannelRequest) -> Result<(), RequestError> {
        if req.imin == 0 {
            return Err(RequestError::ZeroImin);
        }
        if req.mmax == 0 {
            return Err(RequestError::ZeroMmax);
        }
        if req.bmax == 0 {
            return Err(RequestError::ZeroBmax);
        }
        if req.deadline == 0 {
            return Err(RequestError::ZeroDeadline);
        }
        if req.mmax > self.model.max_message {
            return Err(RequestError::MessageTooLarge {
                mmax: req.mmax,
                max: self.model.max_message,
            });
        }
        if let Some(core) = req.core.filter(|&c| c >= self.model.cores) {
            return Err(RequestError::UnknownCore {
                core,
                cores: self.model.cores,
            });
        }
        if let Some(txq) = req.txq.filter(|&q| q >= self.model.tx_queues()) {
            return Err(RequestError::UnknownTxq {
                txq,
                tx_queues: self.model.tx_queues(),
            });
        }
        Ok(())
    }

    /// Candidate resources, least utilised first (worst fit), ties by index.
    fn order(ledgers: &[Ledger], fixed: Option<u16>) -> Vec<u16> {
        match fixed {
            Some(i) => vec![i],
            None => {
                let mut all: Vec<u16> = (0..ledgers.len() as u16).collect();
                all.sort_by_key(|&i| (ledgers[usize::from(i)].utilisation_fp, i));
                all
            }
        }
    }

    fn decide(&self, req: &ChannelRequest) -> Result<Plan, AdmitError> {
        self.validate(req)?;
        let mut cand = Candidates::new(self, req);
        let d = req.deadline;
        let cores = Self::order(&self.cores, req.core);
        let txqs = Self::order(&self.txqs, req.txq);
        for &q in &txqs {
            cand.groups(q);
        }

        // What an idle host could do: lower bounds for every search below.
        let alone_fits = cand.cpu_task(1).utilisation_fp() <= self.limit_fp();
        let cpu_idle = if alone_fits {
            cand.least_cpu_deadline(None, 1)
        } else {
            None
        };
        let link_idle: HashMap<u16, Option<Nanos>> = txqs
            .iter()
            .map(|&q| {
                let u: u128 = cand.link_tasks(q, 1).iter().map(Task::utilisation_fp).sum();
                let min = (u <= self.limit_fp())
                    .then(|| least_passing(1, |x| cand.link_test(q, true, x).is_ok()))
                    .flatten();
                (q, min)
            })
            .collect();
        if let (Some(ci), Some(li)) = (cpu_idle, link_idle.values().flatten().min()) {
            if d < ci + li {
                return Err(RequestError::DeadlineTooShort {
                    deadline: d,
                    minimum: ci + li,
                }
                .into());
            }
        }

        let split = |lo: Nanos, hi: Nanos, li: Nanos| -> Nanos {
            // Slack in proportion to idle needs, moved into the feasible range [lo, hi].
            let ci = cpu_idle.unwrap_or(1);
            let prop =
                (u128::from(d) * u128::from(ci) / (u128::from(ci) + u128::from(li))) as Nanos;
            prop.clamp(lo, hi)
        };

        // Fast path: each candidate pair at the proportional split, one test per resource.
        let mut cpu_ok: HashMap<(u16, Nanos), bool> = HashMap::new();
        let mut link_ok: HashMap<(u16, Nanos), bool> = HashMap::new();
        if let Some(ci) = cpu_idle {
            for &c in &cores {
                if cand.cpu_utilisation(c).is_err() {
                    continue;
                }
                for &q in &txqs {
                    let Some(li) = link_idle[&q] else { continue };
                    if d < ci + li || cand.link_utilisation(q).is_err() {
                        continue;
                    }
                    let dc = split(ci, d - li, li);
                    let cpu = *cpu_ok
                        .entry((c, dc))
                        .or_insert_with(|| cand.cpu_test(Some(c), dc).is_ok());
                    if cpu
                        && *link_ok
                            .entry((q, d - dc))
                            .or_insert_with(|| cand.link_test(q, false, d - dc).is_ok())
                    {
                        return Ok(self.plan(&mut cand, c, q, dc));
                    }
                }
            }
        }

        // Exact path: the least CPU deadline per core and link budget per queue.
        let dc_min: Vec<Option<Nanos>> = cores
            .iter()
            .map(|&c| {
                let ci = cpu_idle?;
                cand.cpu_utilisation(c).ok()?;
                cand.least_cpu_deadline(Some(c), ci)
            })
            .collect();
        let x_min: Vec<Option<Nanos>> = txqs
            .iter()
            .map(|&q| {
                let li = link_idle[&q]?;
                cand.link_utilisation(q).ok()?;
                least_passing(li, |x| cand.link_test(q, false, x).is_ok())
            })
            .collect();
        for (ci, &c) in cores.iter().enumerate() {
            for (qi, &q) in txqs.iter().enumerate() {
                if let (Some(lo), Some(x)) = (dc_min[ci], x_min[qi]) {
                    if lo.saturating_add(x) <= d {
                        // The test is not monotone in d_c: keep the split only if it passes.
                        let mut dc = split(lo, d - x, link_idle[&q].unwrap_or(x));
                        if dc != lo && cand.cpu_test(Some(c), dc).is_err() {
                            dc = lo;
                        }
                        return Ok(self.plan(&mut cand, c, q, dc));
                    }
                }
            }
        }

        // Rejected: explain on the best candidate pair.
        let best_c = (0..cores.len())
            .min_by_key(|&i| dc_min[i].unwrap_or(Nanos::MAX))
            .unwrap_or(0);
        let best_q = (0..txqs.len())
            .min_by_key(|&i| x_min[i].unwrap_or(Nanos::MAX))
            .unwrap_or(0);
        let tightest = match (dc_min[best_c], x_min[best_q]) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
        let (c, q) = (cores[best_c], txqs[best_q]);
        let (resource, test) = self.blame(&mut cand, c, q, dc_min[best_c], x_min[best_q]);
        Err(AdmitError::Rejected(Box::new(Rejection {
            resource,
            test,
            core: c,
            txq: q,
            tightest_deadline: tightest,
        })))
    }

    /// The failing test on (core, txq) given each resource's least feasible value.
    fn blame(
        &self,
        cand: &mut Candidates<'_>,
        c: u16,
        q: u16,
        dc_min: Option<Nanos>,
        x_min: Option<Nanos>,
    ) -> (Resource, FailedTest) {
        let d = cand.req.deadline;
        if let Err(t) = cand.cpu_utilisation(c) {
            return (Resource::Cpu(c), t);
        }
        if let Err(t) = cand.link_utilisation(q) {
            return (Resource::Link(q), t);
        }
        // Give one resource everything the other does not need at least, and report the
        // first resource that still fails.
        let cpu_at = match (dc_min, x_min) {
            (None, _) => Some(d),
            (Some(_), Some(x)) if x < d => Some(d - x),
            _ => None,
        };
        if let Some(dc) = cpu_at {
            if let Err(Unschedulable::Demand {
                t,
                demand,
                blocking,
            }) = cand.cpu_test(Some(c), dc)
            {
                let test = FailedTest::Demand {
                    t,
                    demand,
                    blocking,
                    cpu_deadline: dc,
                };
                return (Resource::Cpu(c), test);
            }
        }
        let dc = dc_min.unwrap_or(d).min(d - 1);
        match cand.link_test(q, false, d - dc) {
            Err(Unschedulable::Demand {
                t,
                demand,
                blocking,
            }) => (
                Resource::Link(q),
                FailedTest::Demand {
                    t,
                    demand,
                    blocking,
                    cpu_deadline: dc,
                },
            ),
            // Unreachable when the searches are consistent; report the utilisation then.
            _ => (
                Resource::Link(q),
                FailedTest::Utilisation {
                    utilisation_ppm: ppm(cand.link_utilisation(q).unwrap_or(0)),
                    limit_ppm: 1_000_000 - self.model.best_effort_reserve_ppm,
                },
            ),
        }
    }

    fn plan(&self, cand: &mut Candidates<'_>, core: u16, txq: u16, cpu_deadline: Nanos) -> Plan {
        cand.groups(txq);
        let link_tasks = cand.link_tasks(txq, cand.req.deadline - cpu_deadline);
        Plan {
            core,
            txq,
            cpu_deadline,
            cpu_task: cand.cpu_task(cpu_deadline),
            link_tasks,
            spec: cand.spec,
        }
    }

    fn describe(&self, req: &ChannelRequest, plan: &Plan, id: u32) -> Admitted {
        let cpu_u = plan.cpu_task.utilisation_fp();
        let link_u: u128 = plan.link_tasks.iter().map(Task::utilisation_fp).sum();
        Admitted {
            id,
            core: plan.core,
            txq: plan.txq,
            cpu_deadline: plan.cpu_deadline,
            link_deadline: req.deadline,
            packets: plan.spec.packets,
            buffer_messages: req.bmax,
            buffer_bytes: u64::from(req.bmax) * u64::from(req.mmax),
            cpu_cost: plan.spec.cpu_cost,
            link_cost: plan.link_tasks.iter().map(|t| t.cost).sum(),
            cpu_utilisation_ppm: ppm(cpu_u),
            link_utilisation_ppm: ppm(link_u),
            core_utilisation_ppm: ppm(self.cores[usize::from(plan.core)].utilisation_fp + cpu_u),
            txq_utilisation_ppm: ppm(self.txqs[usize::from(plan.txq)].utilisation_fp + link_u),
            request: *req,
        }
    }
}

/// Fixed point (64 fraction bits) to millionths, to the nearest, saturating. The fixed
/// point already errs upwards by a few 2^-64, so rounding up would overstate exact values.
fn ppm(fp: u128) -> u32 {
    fp.checked_mul(1_000_000)
        .and_then(|x| x.checked_add(1 << 63))
        .map_or(u32::MAX, |x| u32::try_from(x >> 64).unwrap_or(u32::MAX))
}

/// Like [`ppm`] but rounded up, for a utilisation that was found over a limit.
fn ppm_up(fp: u128) -> u32 {
    fp.checked_mul(1_000_000).map_or(u32::MAX, |x| {
        u32::try_from(x.div_ceil(1 << 64)).unwrap_or(u32::MAX)
    })
}

#[cfg(test)]
mod search_tests;
