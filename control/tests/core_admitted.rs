//! The guarantee in the real loop: channels admitted by `control::admission` at their
//! tightest deadlines, run by the real `dataplane::core::Core::poll` in virtual time with every
//! background activity at its worst at once, meet both their deadlines; and with one blocking
//! term left out of admission, the same run misses.
//!
//! The virtual CPU charges each phase of the loop exactly its modelled bound (a packet of a
//! one-packet message `per_message + per_packet`, an RX burst `rx_burst_ns`, a command
//! `control_poll_ns`, a TX stage `tx_stage_ns`), so the loop runs at its worst case and the
//! test checks the model's *structure* against the loop: what runs between two preemption
//! points, how often, and in which order. (That the bounds hold on a real machine is what
//! `rtchand calibrate` measures.) Background, all at once: a best-effort flood with the
//! reserve on (CPU and link), an RX flood of maximum-size bursts, a control command (an open
//! or a close of another channel) in every service phase. Releases are synchronous: every
//! channel's messages are submitted at the same instants, each exactly `Imin` apart (each
//! channel's worst phase), and the run repeats the pattern at many offsets against the loop.
//!
//! The wire is modelled in the port: frames leave one after another at the link rate, from
//! the moment `tx_burst` hands them over; a message leaves the link when its frame's last bit
//! does.

use std::sync::Arc;

use control::admission::{Admission, AdmitError, ChannelRequest, CostModel, ResourceModel};
use dataplane::channel::{Sender, Submit};
use dataplane::core::{Command, Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::memlink::{BufPool, HeapBuf};
use dataplane::port::{Batch, PacketBuf, Port, PortCapabilities, PortError, PortStats};
use dataplane::sched::{Class, SchedPolicy};
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{ByteTime, Clock, CycleMeter, ManualClock, Nanos};
use dataplane::wire::{parse_frame, wire_bytes, FLAG_BEST_EFFORT, RTCHAN_UDP_PORT};

const LINK_BPS: u64 = 10_000_000_000;
const MAX_FRAME: usize = 1514;
/// Message bytes of every channel: one packet each (the virtual CPU charges per packet).
const MSG: u32 = 1200;
/// Messages per real-time channel.
const MESSAGES: u64 = 60;

fn model(reserve_ppm: u32) -> ResourceModel {
    ResourceModel {
        cost: CostModel {
            per_message_ns: 400,
            per_packet_ns: 150,
            // A best-effort run is one packet (k = 1) at the same cost as any packet.
            best_effort_run_ns: 550,
            rx_burst_ns: 3_000,
            control_poll_ns: 500,
            tx_stage_ns: 500,
            // No client-fed channels here: the scan finds nothing to check.
            client_scan_ns: 0,
            capture_frame_ns: 0,
            mtu: 1500,
            link_rate_bps: LINK_BPS,
        },
        best_effort_reserve_ppm: reserve_ppm,
        granularity: 1,
        ..ResourceModel::worked_example()
    }
}

/// What the loop costs in virtual time: the bounds of the true model, whatever admission used.
struct Costs {
    packet: Nanos,
    rx_burst: Nanos,
    command: Nanos,
    stage: Nanos,
}

/// A port with an RX flood (every burst full) and a modelled wire.
struct TestPort {
    pool: Arc<BufPool>,
    clock: ManualClock,
    byte_time: ByteTime,
    wire_free: Nanos,
    /// Frames are on the wire from the end of the TX stage that hands them over.
    handoff: Nanos,
    rx_flood: bool,
    /// (channel, message, last bit on the wire, header deadline) of real-time frames.
    sent: Vec<(u32, u32, Nanos, Nanos)>,
}

impl Port for TestPort {
    type Buf = HeapBuf;
    fn capabilities(&self) -> PortCapabilities {
        PortCapabilities {
            name: "test".into(),
            max_frame: MAX_FRAME,
            tx_queues: 1,
            rx_queues: 1,
            link_rate_bps: LINK_BPS,
            reports_tx_completion: false,
        }
    }
    fn alloc_tx(&mut self) -> Option<HeapBuf> {
        self.pool.alloc()
    }
    fn tx_burst(&mut self, _q: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        let n = batch.len();
        let start = self.clock.now() + self.handoff;
        for b in batch.drain(..) {
            let begin = self.wire_free.max(start);
            self.wire_free = begin + self.byte_time.ns(wire_bytes(b.len()));
            let f = parse_frame(b.data(), RTCHAN_UDP_PORT).expect("an rtchan frame");
            if f.header.flags & FLAG_BEST_EFFORT == 0 {
                self.sent.push((
                    f.header.channel,
                    f.header.msg_seq,
                    self.wire_free,
                    f.header.deadline,
                ));
            }
        }
        Ok(n)
    }
    fn rx_burst(&mut self, _q: u16, batch: &mut Batch<HeapBuf>) -> Result<usize, PortError> {
        if !self.rx_flood {
            return Ok(0);
        }
        let mut n = 0;
        while !batch.is_full() {
            let Some(mut b) = self.pool.alloc() else {
                break;
            };
            b.buf_mut()[..64].fill(0);
            b.set_len(64); // not an rtchan frame: parsed and dropped
            batch.push(b);
            n += 1;
        }
        Ok(n)
    }
    fn stats(&self) -> PortStats {
        PortStats::default()
    }
}

/// The virtual CPU: charges every phase its bound and, as its clock passes them, submits the
/// periodic messages and keeps the best-effort channel full (senders act at their instants,
/// whatever the core is doing).
struct World {
    clock: ManualClock,
    costs: Costs,
    rt: Vec<(Sender, Nanos, Nanos)>, // sender, first submit, Imin
    submitted: Vec<u64>,
    be: Option<Sender>,
    payload: Vec<u8>,
}

impl World {
    fn advance(&mut self, d: Nanos) {
        self.clock.advance(d);
        self.feed();
    }
    fn feed(&mut self) {
        let now = self.clock.now();
        for (i, (tx, first, imin)) in self.rt.iter_mut().enumerate() {
            while self.submitted[i] < MESSAGES && *first + self.submitted[i] * *imin <= now {
                let at = *first + self.submitted[i] * *imin;
                tx.submit_at(&self.payload, at).expect("ring has room");
                self.submitted[i] += 1;
            }
        }
        if let Some(be) = self.be.as_mut() {
            while be.submit_at(&self.payload, now) == Ok(Submit::Queued) {}
        }
    }
    fn next_submit(&self) -> Option<Nanos> {
        self.rt
            .iter()
            .zip(&self.submitted)
            .filter(|(_, &k)| k < MESSAGES)
            .map(|((_, first, imin), &k)| first + k * imin)
            .min()
    }
}

impl CycleMeter for World {
    fn cycles(&mut self) -> u64 {
        self.clock.now()
    }
    fn cycles_to_ns(&self, c: u64) -> Nanos {
        c
    }
    fn on_packet(&mut self) {
        self.advance(self.costs.packet);
    }
    fn on_rx_burst(&mut self, _frames: usize) {
        self.advance(self.costs.rx_burst);
    }
    fn on_command(&mut self) {
        self.advance(self.costs.command);
    }
    fn on_tx_stage(&mut self, _packets: usize) {
        self.advance(self.costs.stage);
    }
}

/// The channels: requests admitted in order, each at the tightest deadline admission grants
/// it given the ones before. Returns (Imin, cpu deadline, link deadline).
fn admit_tightest(adm: &mut Admission, imins: &[Nanos]) -> Vec<(Nanos, Nanos, Nanos)> {
    imins
        .iter()
        .map(|&imin| {
            let mut r = ChannelRequest {
                mmax: MSG,
                imin,
                bmax: 2,
                deadline: 1,
                core: Some(0),
                txq: Some(0),
            };
            // The least deadline: an idle host's minimum, then the rejection's tightest.
            for _ in 0..4 {
                match adm.check(&r) {
                    Ok(_) => break,
                    Err(AdmitError::Invalid(
                        control::admission::RequestError::DeadlineTooShort { minimum, .. },
                    )) => r.deadline = minimum,
                    Err(AdmitError::Rejected(rej)) => {
                        r.deadline = rej.tightest_deadline.expect("some deadline fits")
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let a = adm.admit(&r).expect("admitted at its tightest deadline");
            (imin, a.cpu_deadline, a.link_deadline)
        })
        .collect()
}

/// Misses of one run: (cpu, link, messages checked).
fn run(admitted_by: &ResourceModel, truth: &ResourceModel, offset: Nanos) -> (u64, u64, u64) {
    let imins = [40_000, 40_000, 50_000, 50_000, 60_000, 80_000];
    let mut adm = Admission::new(admitted_by.clone()).unwrap();
    let chans = admit_tightest(&mut adm, &imins);

    let clock = ManualClock::new(0);
    let cost = &truth.cost;
    let port = TestPort {
        pool: BufPool::new(8192, MAX_FRAME),
        clock: clock.clone(),
        byte_time: ByteTime::new(LINK_BPS),
        wire_free: 0,
        handoff: cost.tx_stage_ns,
        rx_flood: true,
        sent: Vec::new(),
    };
    let cfg = CoreConfig {
        max_channels: 64,
        sched: SchedPolicy {
            granularity: truth.granularity,
            best_effort_reserve_ppm: truth.best_effort_reserve_ppm,
            run_budget_cycles: u64::MAX / 2,
            ..SchedPolicy::default()
        },
        link: LinkConfig {
            link_rate_bps: LINK_BPS,
            // The daemon's rule, from the model admission used.
            in_flight_limit: admitted_by.link_in_flight_bytes(),
            best_effort_reserve_ppm: truth.best_effort_reserve_ppm,
            capacity: 4096,
            ..LinkConfig::default()
        },
        // The loop's own intervals, as the daemon sets them from the same keys.
        service_interval: truth.service_interval_ns,
        tx_window: truth.tx_window_ns,
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg, port).unwrap();
    let mut world = World {
        clock: clock.clone(),
        costs: Costs {
            packet: cost.per_message_ns + cost.per_packet_ns,
            rx_burst: cost.rx_burst_ns,
            command: cost.control_poll_ns,
            stage: cost.tx_stage_ns,
        },
        rt: Vec::new(),
        submitted: vec![0; chans.len()],
        be: None,
        payload: vec![7u8; MSG as usize],
    };
    // Every channel's first message at the same instant: synchronous release.
    let first = 100_000 + offset;
    for (i, &(imin, dc, dl)) in chans.iter().enumerate() {
        let spec = ChannelSpec {
            mmax: MSG,
            imin,
            bmax: 2,
            cpu_deadline: dc,
            link_deadline: dl,
            end_to_end_deadline: dl,
        };
        let tx = core.open(ChannelConfig::real_time(i as u32, spec)).unwrap();
        world.rt.push((tx, first, imin));
    }
    world.be = Some(core.open(ChannelConfig::best_effort(100, MSG, 64)).unwrap());
    core.enable_trace(100_000);

    // Control traffic: open and close another channel, one command in flight at a time.
    let extra_slot = 63;
    let mut open_next = true;
    let mut in_flight = false;
    let end = first + MESSAGES * 80_000 + 200_000;
    while clock.now() < end {
        while let Some((_, r)) = core.control().take_ack() {
            r.expect("command applied");
            in_flight = false;
        }
        if !in_flight {
            let cmd = if open_next {
                let cfg = ChannelConfig::best_effort(200, 64, 2);
                Command::Open(core.prepare(cfg, extra_slot).unwrap())
            } else {
                Command::Close {
                    id: 200,
                    drain: false,
                }
            };
            core.control().post(cmd).expect("ring has room");
            open_next = !open_next;
            in_flight = true;
        }
        world.feed();
        let p = core.poll(&clock, &mut world);
        if p.written == 0 && p.rx == 0 {
            // Nothing ran (cannot happen under the floods, but never spin).
            let next = world.next_submit().unwrap_or(end);
            clock.set(next.max(clock.now() + 1));
        }
    }

    // CPU: a real-time run writes its one packet and ends `packet` after it started.
    let run_cost = world.costs.packet;
    let mut cpu_miss = 0;
    let mut checked = 0;
    for e in core.trace() {
        if e.channel >= chans.len() as u32 || e.class != Class::Current {
            continue;
        }
        let (imin, dc, _) = chans[e.channel as usize];
        let l = first + u64::from(e.seq) * imin;
        checked += 1;
        if e.run_start + run_cost > l + dc {
            cpu_miss += 1;
        }
    }
    // Link: the frame's last bit by l + link deadline (the header carries l + link deadline).
    let mut link_miss = 0;
    let sent = &core.port().sent;
    for &(ch, seq, done, deadline) in sent {
        let (imin, _, dl) = chans[ch as usize];
        assert_eq!(
            deadline,
            first + u64::from(seq) * imin + dl,
            "header deadline"
        );
        if done > deadline {
            link_miss += 1;
        }
    }
    assert_eq!(
        sent.len() as u64,
        MESSAGES * chans.len() as u64,
        "every message sent"
    );
    assert_eq!(checked, MESSAGES * chans.len() as u64, "every message ran");
    (cpu_miss, link_miss, checked)
}

const OFFSETS: [Nanos; 4] = [0, 1_013, 5_333, 11_111];

#[test]
fn admitted_channels_meet_both_deadlines_in_the_real_loop_under_every_background_load() {
    let m = model(50_000);
    for off in OFFSETS {
        let (cpu, link, n) = run(&m, &m, off);
        assert_eq!((cpu, link), (0, 0), "offset {off}: misses of {n} messages");
    }
}

/// Admission without the service phase (RX and control) in its charges: tighter deadlines
/// are granted, and the real loop misses them.
#[test]
fn leaving_the_service_phase_out_of_admission_misses() {
    let truth = model(50_000);
    let mut wrong = truth.clone();
    wrong.cost.rx_burst_ns = 0;
    wrong.cost.control_poll_ns = 0;
    let misses: u64 = OFFSETS
        .iter()
        .map(|&off| {
            let (cpu, link, _) = run(&wrong, &truth, off);
            cpu + link
        })
        .sum();
    eprintln!("without the service phase's charge: {misses} misses");
    assert!(misses > 0, "no miss without the service phase's charge");
}

/// Admission without the TX stages in its charges (their interference, their blocking and
/// their share of the batch window): the loop misses.
#[test]
fn leaving_the_tx_stages_out_of_admission_misses() {
    let truth = model(50_000);
    let mut wrong = truth.clone();
    wrong.cost.tx_stage_ns = 0;
    let misses: u64 = OFFSETS
        .iter()
        .map(|&off| {
            let (cpu, link, _) = run(&wrong, &truth, off);
            cpu + link
        })
        .sum();
    eprintln!("without the TX stages' charge: {misses} misses");
    assert!(misses > 0, "no miss without the TX stages' charge");
}

/// The same costs in a loop whose service interval and TX window are stretched (as
/// `policy.service_interval` and `policy.tx_window` set them for slower builds): admission at
/// those intervals still holds in the real loop.
#[test]
fn stretched_loop_intervals_admitted_at_their_values_meet_both_deadlines() {
    let m = ResourceModel {
        service_interval_ns: 50_000,
        tx_window_ns: 10_000,
        ..model(50_000)
    };
    for off in OFFSETS {
        let (cpu, link, n) = run(&m, &m, off);
        assert_eq!((cpu, link), (0, 0), "offset {off}: misses of {n} messages");
    }
}
