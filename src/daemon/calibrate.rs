//! `rtchand calibrate`: measures, on this machine and through the real polling loop, every CPU
//! cost admission charges, and writes them as a configuration fragment.
//!
//! Each term is timed in [`Core::poll`] itself, on in-memory ports (a [`NullPort`], or a
//! [`MemLink`] pair at infinite rate where frames must be received), so no NIC or wire time is
//! included. A cycle meter (`StretchMeter`) reads the TSC at the loop's own hooks
//! ([`CycleMeter::on_tx_stage`], [`CycleMeter::on_rx_burst`], [`CycleMeter::on_maintain`],
//! [`CycleMeter::on_client_scan`], [`CycleMeter::on_command`]): a stretch is the cycles from
//! the loop's previous reading to the hook, so it is exactly the stretch the loop runs between
//! those points (plus the few cycles of the reading, which errs on the safe side). The terms:
//!
//! * `per_message_ns`, `per_packet_ns`: one message submitted on a real-time channel, the core
//!   polled until its last packet is released (the whole handler path and the loop's fixed
//!   work); 1-packet and `N`-packet messages, with `q1` and `qN` their 99.9th percentiles:
//!   `per_packet = (qN − q1)/(N − 1)`, `per_message = q1 − per_packet`.
//! * `best_effort_run_ns`: one message of `granularity` full-size packets at a time on a
//!   best-effort channel (one run, since a run writes at most `granularity` packets), polled
//!   until released; at least `per_message + granularity · per_packet`, the handler run it
//!   bounds (the configuration refuses less).
//! * `tx_stage_ns`: TX stages releasing a full batch ([`MAX_BURST`] packets), each the last
//!   packet of a one-packet message of its own channel (a delay sample per packet: the worst
//!   release), full-size frames.
//! * `rx_burst_ns`: RX bursts of [`MAX_BURST`] full-size frames, each a one-packet message for
//!   a receiver on the core (parsed, checked, reassembled, delivered: the receive path's
//!   per-frame work runs inside the burst, so it is inside this stretch), buffers freed in
//!   bulk, and the reassembly-maintenance step after them (enough receivers that a step
//!   examines a full [`dataplane::rx::MAINTAIN_SLOTS_PER_STEP`]). The same bursts with
//!   `p`-packet messages give `[rx_cost]` by the same fit (`q1` = 32 messages, `qp` = 32/p):
//!   `per_message = (q1 − qp)/(32 − 32/p)`, `per_packet = q1/32 − per_message`, so that
//!   `32 · (per_message + per_packet) ≤ rx_burst_ns`: the burst bound covers what `[rx_cost]`
//!   says its frames cost. The same one-packet bursts again to client-type receivers whose
//!   ring consumers are threads asleep on the wake word, so each delivery also wakes one (one
//!   `FUTEX_WAKE` that finds a waiter: what a client process's sleeping reader costs the
//!   core); `rx_burst_ns` is the larger of the two.
//! * `client_scan_ns`: scans of [`CLIENT_SCAN_PER_ITERATION`] client-fed channels' rings, each
//!   with a new message (so every check also wakes its channel: the longest scan).
//! * `control_poll_ns`: the heaviest of the commands open, close, open receiver and close
//!   receiver (each one taken and applied; what it hands back rides on the acknowledgement).
//! * `capture_frame_ns`: TX stages and RX bursts again with a capture armed; the larger of
//!   `(armed − plain)/32` of the two.
//!
//! Why p99.9 and not the mean: admission treats these costs as worst-case execution times. A
//! mean is exceeded by about half of all runs; the EDF test would then be accounting for less
//! work than the core does, and deadlines could be missed under exactly the load the test
//! admitted. The maximum, on an ordinary kernel, is dominated by one-off interrupts and page
//! faults and would waste most of the core. A high percentile bounds almost every run; the
//! cycle budget and overrun counters catch the rest at run time.
//!
//! The fragment must load as configuration: where the measured service phase or TX stage do
//! not fit the default `policy.service_interval` or `policy.tx_window` (a debug build is far
//! slower), it adds a `[policy]` table with intervals that fit (4 times the phase, 8 times
//! the stage), and [`run`] checks that the fragment parses and validates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use control::admission::Nanos;
use control::config::DaemonConfig;
use dataplane::capture::{CaptureConfig, CaptureRing};
use dataplane::channel::ChannelShared;
use dataplane::core::{
    Command, Core, CoreConfig, CLIENT_SCAN_PER_ITERATION, SERVICE_INTERVAL_NS, TX_WINDOW_NS,
};
use dataplane::link::LinkConfig;
use dataplane::memlink::{MemLink, MemLinkConfig, NullPort};
use dataplane::port::{Port, MAX_BURST};
use dataplane::rx::{RxPath, RxShared};
use dataplane::sched::SchedPolicy;
use dataplane::shm::{Consumer, DeliverDesc, Params, Producer, Region, SubmitDesc};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{read_tsc, Clock, CycleMeter, MonotonicClock, TscMeter};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Options of a calibration.
#[derive(Clone, Copy, Debug)]
pub struct CalibrateOptions {
    /// Samples per measured distribution.
    pub samples: u32,
    /// Packets of the multi-packet message.
    pub packets: u32,
    /// Preemption granularity of the measured core.
    pub granularity: u32,
    /// IP MTU.
    pub mtu: u32,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        Self {
            samples: 20_000,
            packets: 8,
            granularity: 4,
            mtu: 1500,
        }
    }
}

/// Packets per message of the multi-packet RX bursts (32 frames: 8 messages).
const RX_MULTI_PACKETS: u32 = 4;
/// Idle receivers beside the measured ones, so that a maintenance step examines a full step.
const IDLE_RECEIVERS: u32 = 16;
/// Reassembly slots (and delivery ring) of each calibration receiver.
const RX_RING: u32 = 16;

/// One distribution, ns.
#[derive(Clone, Debug, Serialize)]
pub struct Distribution {
    /// What was timed.
    pub what: String,
    /// Samples.
    pub samples: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: Nanos,
    /// 99th percentile.
    pub p99: Nanos,
    /// 99.9th percentile (what the model uses).
    pub p999: Nanos,
    /// Largest.
    pub max: Nanos,
}

/// The result.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    /// TSC cycles per microsecond.
    pub cycles_per_us: u64,
    /// Packets of the multi-packet message.
    pub packets: u32,
    /// Preemption granularity of the measured core (packets per run).
    pub granularity: u32,
    /// Every measured distribution, in the order of the table.
    pub distributions: Vec<Distribution>,
    /// Fitted per-message cost.
    pub per_message_ns: Nanos,
    /// Fitted per-packet cost.
    pub per_packet_ns: Nanos,
    /// A best-effort run of `granularity` full-size packets (at least the handler run
    /// `per_message_ns + granularity · per_packet_ns`).
    pub best_effort_run_ns: Nanos,
    /// A TX stage releasing a full batch.
    pub tx_stage_ns: Nanos,
    /// An RX burst of a full batch with the maintenance step after it.
    pub rx_burst_ns: Nanos,
    /// A scan of the most client rings one iteration scans.
    pub client_scan_ns: Nanos,
    /// The heaviest control command.
    pub control_poll_ns: Nanos,
    /// One capture copy.
    pub capture_frame_ns: Nanos,
    /// Receive path per message (`[rx_cost]`).
    pub rx_per_message_ns: Nanos,
    /// Receive path per packet (`[rx_cost]`).
    pub rx_per_packet_ns: Nanos,
    /// `policy.service_interval` the fragment sets, when the default does not fit.
    pub service_interval_ns: Option<Nanos>,
    /// `policy.tx_window` the fragment sets, when the default does not fit.
    pub tx_window_ns: Option<Nanos>,
}

impl Calibration {
    fn dist(&self, prefix: &str) -> &Distribution {
        self.distributions
            .iter()
            .find(|d| d.what.starts_with(prefix))
            .expect("every distribution is measured")
    }

    /// The configuration fragment (`[cost]`, `[rx_cost]`, and `[policy]` when needed).
    pub fn toml_fragment(&self) -> String {
        let d = |p: &str| self.dist(p);
        let (one, multi) = (d("send 1-packet"), d("send N-packet"));
        let be = d("best-effort run");
        let stage = d("TX stage");
        let stage_cap = d("TX stage, capture");
        let rx = d("RX burst 1-packet");
        let rx_multi = d("RX burst p-packet");
        let rx_cap = d("RX burst, capture");
        let rx_asleep = d("RX burst, receivers asleep");
        let scan = d("client scan");
        let commands: Vec<String> = self
            .distributions
            .iter()
            .filter(|x| x.what.starts_with("command"))
            .map(|x| format!("{} {} ns", &x.what["command ".len()..], x.p999))
            .collect();
        let ncmd = self
            .distributions
            .iter()
            .find(|x| x.what.starts_with("command"))
            .map_or(0, |x| x.samples);
        let mut s = format!(
            "# Written by `rtchand calibrate`: each figure is the 99.9th percentile of its samples,\n\
             # timed inside Core::poll on in-memory ports ({cpu} cycles/us; no NIC or wire time).\n\
             # per_message_ns, per_packet_ns: {n1} messages of 1 packet (p99.9 {q1} ns) and {nn} of {np}\n\
             #   packets (p99.9 {qn} ns), fitted through both.\n\
             # best_effort_run_ns: {nb} best-effort messages of {k} full-size packets, each one run\n\
             #   and its release: p99.9 {qb} ns (at least per_message_ns + {k} x per_packet_ns).\n\
             # tx_stage_ns: {ns} TX stages releasing {b} packets: p99.9 {qs} ns.\n\
             # rx_burst_ns: {nr} RX bursts of {b} full-size one-packet messages received and delivered,\n\
             #   with the maintenance step after them: p99.9 {qr} ns; {na} such bursts whose receivers\n\
             #   were asleep (a FUTEX_WAKE per message): p99.9 {qa} ns; the larger.\n\
             # client_scan_ns: {nc} scans of {rings} client rings, each with a new message: p99.9 {qc} ns.\n\
             # control_poll_ns: the heaviest of {ncmd} commands of each kind, p99.9: {cmds}.\n\
             # capture_frame_ns: {nsc} TX stages and {nrc} RX bursts with a capture armed, the larger of\n\
             #   (stage armed {qsc} - plain {qs}) / {b} and (burst armed {qrc} - plain {qr}) / {b}; charged\n\
             #   only with [capture] enabled.\n\
             [cost]\n\
             per_message_ns = {pm}\n\
             per_packet_ns = {pp}\n\
             best_effort_run_ns = {br}\n\
             tx_stage_ns = {ts}\n\
             rx_burst_ns = {rb}\n\
             client_scan_ns = {cs}\n\
             control_poll_ns = {cp}\n\
             capture_frame_ns = {cf}\n\
             \n\
             # [rx_cost] per_message_ns, per_packet_ns: fitted through the RX bursts of 1-packet messages\n\
             #   ({nr} samples, p99.9 {qr} ns) and of {rp}-packet messages ({nrm} samples, p99.9 {qrm} ns), so {b} x (per_message_ns + per_packet_ns)\n\
             #   <= rx_burst_ns.\n\
             [rx_cost]\n\
             per_message_ns = {rpm}\n\
             per_packet_ns = {rpp}\n",
            cpu = self.cycles_per_us,
            n1 = one.samples,
            q1 = one.p999,
            nn = multi.samples,
            np = self.packets,
            qn = multi.p999,
            nb = be.samples,
            k = self.granularity,
            qb = be.p999,
            br = self.best_effort_run_ns,
            ns = stage.samples,
            b = MAX_BURST,
            qs = stage.p999,
            nr = rx.samples,
            qr = rx.p999,
            na = rx_asleep.samples,
            qa = rx_asleep.p999,
            nc = scan.samples,
            rings = CLIENT_SCAN_PER_ITERATION,
            qc = scan.p999,
            cmds = commands.join(", "),
            qsc = stage_cap.p999,
            qrc = rx_cap.p999,
            nsc = stage_cap.samples,
            nrc = rx_cap.samples,
            pm = self.per_message_ns,
            pp = self.per_packet_ns,
            ts = self.tx_stage_ns,
            rb = self.rx_burst_ns,
            cs = self.client_scan_ns,
            cp = self.control_poll_ns,
            cf = self.capture_frame_ns,
            rp = RX_MULTI_PACKETS,
            nrm = rx_multi.samples,
            qrm = rx_multi.p999,
            rpm = self.rx_per_message_ns,
            rpp = self.rx_per_packet_ns,
        );
        let default_k = control::config::PolicyConfig::default().granularity;
        if self.service_interval_ns.is_some() || self.tx_window_ns.is_some() {
            s.push_str(
                "\n# The service phase (rx_burst_ns + client_scan_ns + control_poll_ns) or the TX stage\n\
                 # does not fit the default interval: these fit (4x the phase, 8x the stage).\n",
            );
        }
        if self.granularity != default_k {
            s.push_str(&format!(
                "\n# best_effort_run_ns was measured at {} packets per run.\n",
                self.granularity
            ));
        }
        if self.service_interval_ns.is_some()
            || self.tx_window_ns.is_some()
            || self.granularity != default_k
        {
            s.push_str("[policy]\n");
            if self.granularity != default_k {
                s.push_str(&format!("granularity = {}\n", self.granularity));
            }
            if let Some(i) = self.service_interval_ns {
                s.push_str(&format!("service_interval = \"{}us\"\n", i / 1000));
            }
            if let Some(w) = self.tx_window_ns {
                s.push_str(&format!("tx_window = \"{}us\"\n", w / 1000));
            }
        }
        s
    }
}

fn distribution(what: impl Into<String>, h: &Histogram<u64>) -> Distribution {
    Distribution {
        what: what.into(),
        samples: h.len(),
        mean: h.mean(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds")
}

/// A stretch of the loop between its previous TSC reading and one of its hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stretch {
    /// A TX stage that handed this many packets to the port.
    Stage(usize),
    /// An RX burst of this many frames, with the maintenance step after it.
    Rx(usize),
    /// A client scan over this many rings.
    Scan(usize),
    /// One control command.
    Command,
}

/// The TSC, remembering its last reading so that each hook can time the stretch before it.
#[derive(Debug)]
struct StretchMeter {
    last: u64,
    /// An RX burst's cycles, until the maintenance step after it has run too.
    rx: Option<(u64, usize)>,
    events: Vec<(Stretch, u64)>,
}

impl StretchMeter {
    fn new() -> Self {
        Self {
            last: read_tsc(),
            rx: None,
            events: Vec::with_capacity(1024),
        }
    }

    fn mark(&mut self, s: Stretch) {
        let c = read_tsc();
        self.events.push((s, c.wrapping_sub(self.last)));
        self.last = c;
    }
}

impl CycleMeter for StretchMeter {
    #[inline]
    fn cycles(&mut self) -> u64 {
        let c = read_tsc();
        if self.rx.is_none() {
            self.last = c;
        }
        c
    }
    fn on_rx_burst(&mut self, frames: usize) {
        let c = read_tsc();
        self.rx = Some((c.wrapping_sub(self.last), frames));
        self.last = c;
    }
    fn on_maintain(&mut self) {
        let c = read_tsc();
        if let Some((burst, frames)) = self.rx.take() {
            self.events
                .push((Stretch::Rx(frames), burst + c.wrapping_sub(self.last)));
        }
        self.last = c;
    }
    fn on_client_scan(&mut self, rings: usize) {
        self.mark(Stretch::Scan(rings));
    }
    fn on_command(&mut self) {
        self.mark(Stretch::Command);
    }
    fn on_tx_stage(&mut self, packets: usize) {
        self.mark(Stretch::Stage(packets));
    }
    fn cycles_to_ns(&self, cycles: u64) -> dataplane::time::Nanos {
        TscMeter.cycles_to_ns(cycles)
    }
}

/// Where the scenarios run and how their samples are converted.
struct Bench {
    opts: CalibrateOptions,
    cycles_per_us: u64,
    max_frame: usize,
    clock: Arc<dyn Clock>,
}

impl Bench {
    fn ns(&self, cycles: u64) -> u64 {
        ((u128::from(cycles) * 1000 / u128::from(self.cycles_per_us.max(1))) as u64).max(1)
    }

    fn core_config(&self, max_channels: u32) -> CoreConfig {
        CoreConfig {
            max_channels,
            sched: SchedPolicy {
                granularity: self.opts.granularity.max(1),
                ..SchedPolicy::default()
            },
            link: LinkConfig {
                link_rate_bps: 400_000_000_000,
                in_flight_limit: 1 << 20,
                ..LinkConfig::default()
            },
            ..CoreConfig::default()
        }
    }

    fn spec(mmax: u32) -> ChannelSpec {
        ChannelSpec {
            mmax,
            imin: 1,
            bmax: 4,
            cpu_deadline: 1_000_000,
            link_deadline: 1_000_000,
            end_to_end_deadline: 1_000_000,
        }
    }

    fn capture_ring(&self) -> Result<Arc<CaptureRing>, String> {
        CaptureRing::new(CaptureConfig {
            slots: 4096,
            snaplen: self.max_frame,
            channel: None,
        })
        .map_err(|e| e.to_string())
    }

    /// Arms `core` with a capture ring (the command is applied in the next service phase).
    fn arm<P: Port>(
        &self,
        core: &mut Core<P>,
        meter: &mut StretchMeter,
    ) -> Result<Arc<CaptureRing>, String> {
        let ring = self.capture_ring()?;
        core.control()
            .post(Command::Capture(Some(ring.clone())))
            .map_err(|_| "the control ring is full".to_string())?;
        for _ in 0..1000 {
            core.poll(&*self.clock, meter);
            if let Some((_, r, _)) = core.control().take_ack_retired() {
                r.map_err(|e| e.to_string())?;
                return Ok(ring);
            }
        }
        Err("the core did not apply the capture command".into())
    }

    /// Per-message cost: one message of `size` bytes at a time on a real-time channel, polled
    /// until released.
    fn send_path(&self, size: u32) -> Result<Histogram<u64>, String> {
        self.send_on(ChannelConfig::real_time(1, Self::spec(size)), size)
    }

    /// A best-effort run: one message of `granularity` full-size packets at a time on a
    /// best-effort channel, polled until released. A run writes at most `granularity` packets,
    /// so the whole message is one run (plus the stage that releases it, which errs on the
    /// safe side).
    fn best_effort_run(&self, payload: u32) -> Result<Histogram<u64>, String> {
        let size = payload * self.opts.granularity.max(1);
        self.send_on(ChannelConfig::best_effort(1, size, 4), size)
    }

    fn send_on(&self, channel: ChannelConfig, size: u32) -> Result<Histogram<u64>, String> {
        let mut core = Core::new(self.core_config(4), NullPort::new(4096, self.max_frame))
            .map_err(|e| e.to_string())?;
        let mut sender = core.open(channel).map_err(|e| e.to_string())?;
        let data = vec![0xa5u8; size as usize];
        let mut meter = TscMeter;
        let mut h = histogram();
        let warmup = self.opts.samples / 10;
        for i in 0..warmup + self.opts.samples {
            let before = sender.stats().messages_sent.get();
            sender
                .submit_at(&data, self.clock.now())
                .map_err(|e| e.to_string())?;
            let start = read_tsc();
            let mut polls = 0;
            while sender.stats().messages_sent.get() == before {
                core.poll(&*self.clock, &mut meter);
                polls += 1;
                if polls > 100_000 {
                    return Err("the core did not send the calibration message".into());
                }
            }
            if i >= warmup {
                h.saturating_record(self.ns(read_tsc().saturating_sub(start)));
            }
        }
        Ok(h)
    }

    /// TX stages releasing a full batch: [`MAX_BURST`] channels each send a one-packet
    /// full-size message per round.
    fn tx_stage(&self, capture: bool) -> Result<Histogram<u64>, String> {
        let n = MAX_BURST as u32;
        // Stages by the batch count only, not by the window: the stage is the same work.
        let cfg = CoreConfig {
            tx_window: 1_000_000_000,
            ..self.core_config(2 * n)
        };
        let mut core =
            Core::new(cfg, NullPort::new(8192, self.max_frame)).map_err(|e| e.to_string())?;
        let payload = core.payload_per_packet();
        let mut senders = (0..n)
            .map(|i| core.open(ChannelConfig::real_time(100 + i, Self::spec(payload))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let mut meter = StretchMeter::new();
        let ring = if capture {
            Some(self.arm(&mut core, &mut meter)?)
        } else {
            None
        };
        let data = vec![0x5au8; payload as usize];
        let mut h = histogram();
        let warmup = u64::from(self.opts.samples / 10);
        let (mut seen, mut rounds) = (0u64, 0u64);
        while h.len() < u64::from(self.opts.samples) {
            rounds += 1;
            if rounds > 20 * u64::from(self.opts.samples) {
                return Err(format!(
                    "TX stage: only {} full stages of {MAX_BURST} packets in {rounds} rounds \
                     (last round: {:?})",
                    h.len(),
                    meter.events
                ));
            }
            let before: u64 = senders.iter().map(|s| s.stats().messages_sent.get()).sum();
            for s in &mut senders {
                s.submit_at(&data, self.clock.now())
                    .map_err(|e| e.to_string())?;
            }
            meter.events.clear();
            let mut polls = 0;
            while senders
                .iter()
                .map(|s| s.stats().messages_sent.get())
                .sum::<u64>()
                < before + u64::from(n)
            {
                core.poll(&*self.clock, &mut meter);
                polls += 1;
                if polls > 100_000 {
                    return Err("TX stage: the core did not send the messages".into());
                }
            }
            for &(s, c) in &meter.events {
                if s == Stretch::Stage(MAX_BURST) {
                    seen += 1;
                    if seen > warmup {
                        h.saturating_record(self.ns(c));
                    }
                }
            }
            if let Some(r) = &ring {
                r.drain(usize::MAX, |_| {});
            }
        }
        Ok(h)
    }

    /// RX bursts of [`MAX_BURST`] full-size frames of `packets`-packet messages, received by
    /// receivers on the measured core. With `asleep`, the receivers are client-type (their
    /// delivery rings consumed elsewhere, as a client process's are) and each ring's consumer
    /// is a thread asleep on its wake word when the burst comes, so every delivery also wakes
    /// one (a `FUTEX_WAKE` that finds a waiter); those bursts are fewer (a tenth of the
    /// samples, at least 1000), since each round waits for the threads to sleep again.
    fn rx_burst(
        &self,
        packets: u32,
        capture: bool,
        asleep: bool,
    ) -> Result<Histogram<u64>, String> {
        let channels = MAX_BURST as u32 / packets;
        let (a, b) = MemLink::pair(
            MemLinkConfig {
                rate_bps: 0,
                fifo_packets: 4 * MAX_BURST,
                pool_buffers: 8192,
                max_frame: self.max_frame,
                tx_queues: 1,
            },
            self.clock.clone(),
        );
        let mut tx = Core::new(self.core_config(channels), a).map_err(|e| e.to_string())?;
        let mut rx =
            Core::new(self.core_config(channels + IDLE_RECEIVERS), b).map_err(|e| e.to_string())?;
        let mmax = packets * tx.payload_per_packet();
        let mut senders = (0..channels)
            .map(|i| tx.open(ChannelConfig::real_time(200 + i, Self::spec(mmax))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let mut receivers = Vec::new();
        let mut client_rings = Vec::new();
        for i in 0..channels {
            if asleep {
                client_rings.push(self.open_client_receiver(&mut rx, 200 + i, mmax)?);
            } else {
                receivers.push(rx.open_receiver(200 + i, mmax, RX_RING));
            }
        }
        let _idle: Vec<_> = (0..IDLE_RECEIVERS)
            .map(|i| rx.open_receiver(1000 + i, mmax, RX_RING))
            .collect();
        let mut tmeter = TscMeter;
        let mut meter = StretchMeter::new();
        let ring = if capture {
            Some(self.arm(&mut rx, &mut meter)?)
        } else {
            None
        };
        let data = vec![0x3cu8; mmax as usize];
        let mut h = histogram();
        let samples = if asleep {
            (self.opts.samples / 10).max(1000)
        } else {
            self.opts.samples
        };
        let warmup = u64::from(samples / 10);
        let sleepers = asleep.then(|| Sleepers::start(client_rings)).transpose()?;
        let (mut seen, mut rounds, mut delivered) = (0u64, 0u64, 0u64);
        while h.len() < u64::from(samples) {
            rounds += 1;
            if let Some(s) = &sleepers {
                s.all_asleep()?;
            }
            if rounds > 20 * u64::from(samples) {
                return Err(format!(
                    "RX burst: only {} bursts of {MAX_BURST} frames in {rounds} rounds",
                    h.len()
                ));
            }
            let before: u64 = senders.iter().map(|s| s.stats().messages_sent.get()).sum();
            for s in &mut senders {
                s.submit_at(&data, self.clock.now())
                    .map_err(|e| e.to_string())?;
            }
            let mut polls = 0;
            while senders
                .iter()
                .map(|s| s.stats().messages_sent.get())
                .sum::<u64>()
                < before + u64::from(channels)
            {
                tx.poll(&*self.clock, &mut tmeter);
                polls += 1;
                if polls > 100_000 {
                    return Err("RX burst: the sending core did not send the messages".into());
                }
            }
            meter.events.clear();
            // An idle core runs its service phase every iteration: one burst per poll.
            rx.poll(&*self.clock, &mut meter);
            for &(s, c) in &meter.events {
                if s == Stretch::Rx(MAX_BURST) {
                    seen += 1;
                    if seen > warmup {
                        h.saturating_record(self.ns(c));
                    }
                }
            }
            // Frames of a partial burst (none expected) are taken before the next round.
            while rx.poll(&*self.clock, &mut tmeter).rx > 0 {}
            for r in &receivers {
                while r.recv_with(|_, _| ()).is_some() {
                    delivered += 1;
                }
            }
            if let Some(r) = &ring {
                r.drain(usize::MAX, |_| {});
            }
        }
        if let Some(s) = sleepers {
            delivered += s.stop()?;
        }
        if delivered < rounds * u64::from(channels) {
            return Err(format!(
                "RX burst: {delivered} of {} messages delivered; the bursts did not do the \
                 receive path's work",
                rounds * u64::from(channels)
            ));
        }
        Ok(h)
    }

    /// A receiver on `core` whose delivery ring is consumed the way a client process's is
    /// (client-type: the core wakes its consumer when it sleeps), opened by the command the
    /// daemon posts; returns the ring for the consumer.
    fn open_client_receiver<P: Port>(
        &self,
        core: &mut Core<P>,
        id: u32,
        mmax: u32,
    ) -> Result<Arc<Region>, String> {
        let region = Region::heap::<DeliverDesc>(&Params {
            mmax,
            capacity: RX_RING,
            drop_oldest: false,
            channel: id,
        })
        .map_err(|e| e.to_string())?;
        let reassembly = RX_RING.clamp(1, 64);
        let shared = RxShared::with_app(id, mmax, reassembly, region.clone(), core.sink(), None);
        let state = RxPath::prepare_app(shared, reassembly).map_err(|e| e.to_string())?;
        core.control()
            .post(Command::OpenReceiver(state))
            .map_err(|_| "the control ring is full".to_string())?;
        let mut meter = TscMeter;
        for _ in 0..1000 {
            core.poll(&*self.clock, &mut meter);
            if let Some((_, r, _)) = core.control().take_ack_retired() {
                r.map_err(|e| e.to_string())?;
                return Ok(region);
            }
        }
        Err("the core did not open the client receiver".into())
    }

    /// Client scans over [`CLIENT_SCAN_PER_ITERATION`] rings, each with a new message.
    fn client_scan(&self) -> Result<Histogram<u64>, String> {
        let n = CLIENT_SCAN_PER_ITERATION as u32;
        let mut core = Core::new(self.core_config(n), NullPort::new(8192, self.max_frame))
            .map_err(|e| e.to_string())?;
        let mut rings = Vec::with_capacity(n as usize);
        for i in 0..n {
            let cfg = ChannelConfig::real_time(300 + i, Self::spec(64));
            let region = Region::heap::<SubmitDesc>(&ChannelShared::ring_params(&cfg))
                .map_err(|e| e.to_string())?;
            let shared = core
                .open_ring(cfg, region.clone(), 0)
                .map_err(|e| e.to_string())?;
            let producer = Producer::<SubmitDesc>::new(region).map_err(|e| e.to_string())?;
            rings.push((shared, producer));
        }
        let mut meter = StretchMeter::new();
        let mut h = histogram();
        let warmup = self.opts.samples / 10;
        let msg = [0x77u8; 64];
        for i in 0..warmup + self.opts.samples {
            let before: u64 = rings.iter().map(|(s, _)| s.stats.messages_sent.get()).sum();
            for (_, p) in &mut rings {
                let now = self.clock.now();
                if p.room() == 0 {
                    return Err("client scan: a client ring is full".into());
                }
                let b = p
                    .grant(|_| {})
                    .ok_or("client scan: no free buffer in a client ring")?;
                p.buffer_mut(b)[..msg.len()].copy_from_slice(&msg);
                p.push(SubmitDesc {
                    buf: b,
                    len: msg.len() as u32,
                    submit_ts: now,
                });
                p.publish();
            }
            meter.events.clear();
            // The core was idle: this poll's service phase scans every ring and finds each new.
            core.poll(&*self.clock, &mut meter);
            let scan = meter
                .events
                .iter()
                .find(|(s, _)| *s == Stretch::Scan(n as usize))
                .map(|&(_, c)| c)
                .ok_or("client scan: the idle core did not scan its client rings")?;
            let mut polls = 0;
            while rings
                .iter()
                .map(|(s, _)| s.stats.messages_sent.get())
                .sum::<u64>()
                < before + u64::from(n)
            {
                core.poll(&*self.clock, &mut meter);
                polls += 1;
                if polls > 100_000 {
                    return Err("client scan: the core did not send the clients' messages".into());
                }
            }
            if i >= warmup {
                h.saturating_record(self.ns(scan));
            }
        }
        Ok(h)
    }

    /// Control commands, one per service phase: open, close, open receiver, close receiver.
    fn commands(&self) -> Result<[Histogram<u64>; 4], String> {
        let mut core = Core::new(self.core_config(4), NullPort::new(1024, self.max_frame))
            .map_err(|e| e.to_string())?;
        let mmax = 8 * core.payload_per_packet();
        let mut meter = StretchMeter::new();
        let mut hs = [histogram(), histogram(), histogram(), histogram()];
        let warmup = self.opts.samples / 10;
        for i in 0..warmup + self.opts.samples {
            for (k, h) in hs.iter_mut().enumerate() {
                let cmd = match k {
                    0 => Command::Open(
                        core.prepare(ChannelConfig::real_time(7, Self::spec(mmax)), 0)
                            .map_err(|e| e.to_string())?,
                    ),
                    1 => Command::Close {
                        id: 7,
                        drain: false,
                    },
                    2 => Command::OpenReceiver(RxPath::prepare(
                        RxShared::new(8, mmax, 64, 64, core.sink()),
                        64,
                    )),
                    _ => Command::CloseReceiver(8),
                };
                core.control()
                    .post(cmd)
                    .map_err(|_| "commands: the control ring is full".to_string())?;
                meter.events.clear();
                core.poll(&*self.clock, &mut meter);
                let (_, result, retired) = core
                    .control()
                    .take_ack_retired()
                    .ok_or("commands: the core did not take the command")?;
                result.map_err(|e| format!("commands: {e}"))?;
                drop(retired); // here, on the control side
                let c = meter
                    .events
                    .iter()
                    .find(|(s, _)| *s == Stretch::Command)
                    .map(|&(_, c)| c)
                    .ok_or("commands: no command stretch timed")?;
                if i >= warmup {
                    h.saturating_record(self.ns(c));
                }
            }
        }
        Ok(hs)
    }
}

/// The applications of [`Bench::rx_burst`]'s client-type receivers when they sleep: one
/// thread per delivery ring, draining it and then asleep on its wake word.
struct Sleepers {
    stop: Arc<AtomicBool>,
    /// Set by a thread just before it sleeps again, cleared by the bench before a burst.
    armed: Vec<Arc<AtomicBool>>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Sleepers {
    fn start(rings: Vec<Arc<Region>>) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut armed = Vec::new();
        let mut threads = Vec::new();
        for region in rings {
            let ring = Consumer::<DeliverDesc>::new(region).map_err(|e| e.to_string())?;
            let (stop, flag) = (stop.clone(), Arc::new(AtomicBool::new(false)));
            armed.push(flag.clone());
            threads.push(std::thread::spawn(move || {
                let mut delivered = 0u64;
                let mut drain = || {
                    while let Some(t) = ring.take(|_| {}) {
                        ring.release(t);
                        delivered += 1;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    drain();
                    flag.store(true, Ordering::Release);
                    ring.sleep(50);
                }
                drain();
                delivered
            }));
        }
        Ok(Self {
            stop,
            armed,
            threads,
        })
    }

    /// Waits until every thread drained its ring and went to sleep, and gives them time to be
    /// inside the futex wait; then clears the flags for the next round.
    fn all_asleep(&self) -> Result<(), String> {
        let start = std::time::Instant::now();
        while !self.armed.iter().all(|a| a.load(Ordering::Acquire)) {
            if start.elapsed() > std::time::Duration::from_secs(10) {
                return Err("RX burst (receivers asleep): the ring consumers did not sleep".into());
            }
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        for a in &self.armed {
            a.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stops the threads; the messages they took.
    fn stop(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| "a ring consumer thread panicked".to_string())
            })
            .sum()
    }
}

/// `x` ns rounded up to whole microseconds.
fn round_up_us(x: Nanos) -> Nanos {
    x.div_ceil(1000) * 1000
}

/// Runs the calibration.
pub fn run(opts: &CalibrateOptions) -> Result<Calibration, String> {
    if opts.samples < 1000 {
        return Err("samples: at least 1000 are needed for a 99.9th percentile".into());
    }
    if opts.packets < 2 {
        return Err("packets: the multi-packet message needs at least 2 packets".into());
    }
    let bench = Bench {
        opts: *opts,
        cycles_per_us: TscMeter::calibrate(50_000_000),
        max_frame: opts.mtu as usize + 14,
        clock: Arc::new(MonotonicClock),
    };
    let payload = control::admission::CostModel {
        mtu: opts.mtu,
        ..Default::default()
    }
    .payload_per_packet();
    if payload == 0 {
        return Err(format!("mtu: {} leaves no payload", opts.mtu));
    }
    let single = bench.send_path(64.min(payload))?;
    let multi = bench.send_path(payload * opts.packets)?;
    let (q1, qn) = (
        single.value_at_quantile(0.999),
        multi.value_at_quantile(0.999),
    );
    let per_packet = (qn.saturating_sub(q1))
        .div_ceil(u64::from(opts.packets - 1))
        .max(1);
    let per_message = q1.saturating_sub(per_packet).max(1);

    let be_run = bench.best_effort_run(payload)?;
    // At least the handler run it bounds (the configuration refuses less).
    let best_effort_run_ns = be_run
        .value_at_quantile(0.999)
        .max(per_message + u64::from(opts.granularity.max(1)) * per_packet);

    let stage = bench.tx_stage(false)?;
    let stage_cap = bench.tx_stage(true)?;
    let rx = bench.rx_burst(1, false, false)?;
    let rx_asleep = bench.rx_burst(1, false, true)?;
    let rx_multi = bench.rx_burst(RX_MULTI_PACKETS, false, false)?;
    let rx_cap = bench.rx_burst(1, true, false)?;
    let scan = bench.client_scan()?;
    let cmds = bench.commands()?;

    let p = |h: &Histogram<u64>| h.value_at_quantile(0.999);
    let burst = MAX_BURST as u64;
    let tx_stage_ns = p(&stage);
    // The burst with receivers to wake is the longer one; the fits below are the plain one's.
    let rx_plain = p(&rx);
    let rx_burst_ns = rx_plain.max(p(&rx_asleep));
    let capture_frame_ns = (p(&stage_cap).saturating_sub(tx_stage_ns))
        .div_ceil(burst)
        .max(p(&rx_cap).saturating_sub(rx_plain).div_ceil(burst))
        .max(1);
    // [rx_cost] through the two kinds of burst: 32 messages of 1 packet, 32/p of p packets.
    let messages_multi = burst / u64::from(RX_MULTI_PACKETS);
    // The two are a split of `rx_burst_ns` (its 32 one-packet messages), so they are held to
    // it: the two p99.9s are separate samples, and a noisy multi-packet figure (below the
    // one-packet one by more than their difference in messages) would otherwise fit a
    // per-message cost above what the burst bound covers.
    let rx_per_message = (rx_plain.saturating_sub(p(&rx_multi)))
        .div_ceil(burst - messages_multi)
        .min((rx_plain / burst).saturating_sub(1))
        .max(1);
    let rx_per_packet = (rx_plain.saturating_sub(burst * rx_per_message) / burst).max(1);
    let client_scan_ns = p(&scan);
    let control_poll_ns = cmds.iter().map(p).max().unwrap_or(1);

    let phase = rx_burst_ns + client_scan_ns + control_poll_ns;
    let service_interval_ns = (phase >= SERVICE_INTERVAL_NS).then(|| round_up_us(4 * phase));
    let tx_window_ns = (tx_stage_ns >= TX_WINDOW_NS).then(|| round_up_us(8 * tx_stage_ns));

    let mut distributions = vec![
        distribution("send 1-packet message", &single),
        distribution(
            format!("send N-packet message (N = {})", opts.packets),
            &multi,
        ),
        distribution(
            format!("best-effort run of {} packets", opts.granularity.max(1)),
            &be_run,
        ),
        distribution(format!("TX stage of {MAX_BURST} packets"), &stage),
        distribution("TX stage, capture armed", &stage_cap),
        distribution(format!("RX burst 1-packet x {MAX_BURST}"), &rx),
        distribution(
            format!("RX burst p-packet (p = {RX_MULTI_PACKETS}) x {messages_multi}"),
            &rx_multi,
        ),
        distribution("RX burst, capture armed", &rx_cap),
        distribution("RX burst, receivers asleep", &rx_asleep),
        distribution(
            format!("client scan of {CLIENT_SCAN_PER_ITERATION} rings"),
            &scan,
        ),
    ];
    for (name, h) in ["open", "close", "open receiver", "close receiver"]
        .iter()
        .zip(cmds.iter())
    {
        distributions.push(distribution(format!("command {name}"), h));
    }
    let c = Calibration {
        cycles_per_us: bench.cycles_per_us,
        packets: opts.packets,
        granularity: opts.granularity.max(1),
        distributions,
        per_message_ns: per_message,
        per_packet_ns: per_packet,
        best_effort_run_ns,
        tx_stage_ns,
        rx_burst_ns,
        client_scan_ns,
        control_poll_ns,
        capture_frame_ns,
        rx_per_message_ns: rx_per_message,
        rx_per_packet_ns: rx_per_packet,
        service_interval_ns,
        tx_window_ns,
    };
    // The fragment must be a configuration the daemon accepts: its costs fit together.
    DaemonConfig::parse(&c.toml_fragment())
        .map_err(|e| format!("the measured costs do not load as configuration: {e}"))?;
    Ok(c)
}
