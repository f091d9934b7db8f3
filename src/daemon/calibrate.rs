//! `rtchand calibrate`: measures the sending path's CPU cost per message and per packet on
//! this machine, through the real handler path, and writes them as a cost-model fragment.
//!
//! A polling [`Core`] runs on a [`NullPort`] (so no NIC or link time is included) in this
//! thread. For each sample one message is submitted on a real-time channel and the core is
//! polled until the message's last packet is released; the TSC cycles of those polls are the
//! sample (dequeue, logical arrival, scheduling, fragmentation, headers, checksums, timestamps,
//! the link scheduler and the TX burst: everything the handler path does, plus the loop's
//! fixed per-iteration work, which errs on the safe side). Two message sizes, one packet and
//! `N` packets, give two distributions; with `q1` and `qN` their 99.9th percentiles, the model
//! `per_message + n·per_packet` is fitted through both: `per_packet = (qN − q1)/(N − 1)`,
//! `per_message = q1 − per_packet`.
//!
//! Why p99.9 and not the mean: admission treats these costs as worst-case execution times. A
//! mean is exceeded by about half of all messages; the EDF test would then be accounting for
//! less work than the core does, and deadlines could be missed under exactly the load the
//! test admitted. The maximum, on an ordinary kernel, is dominated by one-off interrupts and
//! page faults and would waste most of the core. A high percentile bounds almost every run;
//! the cycle budget and overrun counters catch the rest at run time.

use std::sync::Arc;

use control::admission::Nanos;
use dataplane::core::{Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::memlink::NullPort;
use dataplane::sched::SchedPolicy;
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{read_tsc, Clock, MonotonicClock, TscMeter};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Options of a calibration.
#[derive(Clone, Copy, Debug)]
pub struct CalibrateOptions {
    /// Samples per message size.
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

/// One message size's distribution, ns.
#[derive(Clone, Debug, Serialize)]
pub struct Distribution {
    /// Packets per message.
    pub packets: u32,
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
    /// Single-packet messages.
    pub single: Distribution,
    /// Multi-packet messages.
    pub multi: Distribution,
    /// Fitted per-message cost.
    pub per_message_ns: Nanos,
    /// Fitted per-packet cost.
    pub per_packet_ns: Nanos,
}

impl Calibration {
    /// The `[cost]` fragment for the daemon's configuration.
    pub fn toml_fragment(&self) -> String {
        format!(
            "# Written by `rtchand calibrate`: p99.9 of {} samples per message size through the\n\
             # handler path on a null port ({} cycles/us). 1 packet: p99.9 {} ns; {} packets: p99.9 {} ns.\n\
             [cost]\nper_message_ns = {}\nper_packet_ns = {}\n",
            self.single.samples,
            self.cycles_per_us,
            self.single.p999,
            self.multi.packets,
            self.multi.p999,
            self.per_message_ns,
            self.per_packet_ns
        )
    }
}

fn distribution(h: &Histogram<u64>, packets: u32) -> Distribution {
    Distribution {
        packets,
        samples: h.len(),
        mean: h.mean(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Runs the calibration.
pub fn run(opts: &CalibrateOptions) -> Result<Calibration, String> {
    if opts.samples < 1000 {
        return Err("samples: at least 1000 are needed for a 99.9th percentile".into());
    }
    if opts.packets < 2 {
        return Err("packets: the multi-packet message needs at least 2 packets".into());
    }
    let cycles_per_us = TscMeter::calibrate(50_000_000);
    let max_frame = opts.mtu as usize + 14;
    let cfg = CoreConfig {
        sched: SchedPolicy {
            granularity: opts.granularity.max(1),
            ..SchedPolicy::default()
        },
        link: LinkConfig {
            link_rate_bps: 400_000_000_000,
            in_flight_limit: 1 << 20,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg, NullPort::new(4096, max_frame)).map_err(|e| e.to_string())?;
    let payload = core.payload_per_packet();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
    let mut meter = TscMeter;
    let mut measure = |id: u32, size: u32| -> Result<Histogram<u64>, String> {
        let spec = ChannelSpec {
            mmax: size,
            imin: 1,
            bmax: 1,
            cpu_deadline: 1_000_000,
            link_deadline: 1_000_000,
            end_to_end_deadline: 1_000_000,
        };
        let mut sender = core
            .open(ChannelConfig::real_time(id, spec))
            .map_err(|e| e.to_string())?;
        let data = vec![0xa5u8; size as usize];
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let warmup = opts.samples / 10;
        for i in 0..warmup + opts.samples {
            let before = sender.stats().messages_sent.get();
            sender
                .submit_at(&data, clock.now())
                .map_err(|e| e.to_string())?;
            let start = read_tsc();
            let mut polls = 0;
            while sender.stats().messages_sent.get() == before {
                core.poll(&*clock, &mut meter);
                polls += 1;
                if polls > 100_000 {
                    return Err("the core did not send the calibration message".into());
                }
            }
            let cycles = read_tsc().saturating_sub(start);
            if i >= warmup {
                let ns = (u128::from(cycles) * 1000 / u128::from(cycles_per_us.max(1))) as u64;
                h.saturating_record(ns.max(1));
            }
        }
        Ok(h)
    };
    let single = measure(1, 64.min(payload))?;
    let multi = measure(2, payload * opts.packets)?;
    let (q1, qn) = (
        single.value_at_quantile(0.999),
        multi.value_at_quantile(0.999),
    );
    let per_packet = (qn.saturating_sub(q1))
        .div_ceil(u64::from(opts.packets - 1))
        .max(1);
    let per_message = q1.saturating_sub(per_packet).max(1);
    Ok(Calibration {
        cycles_per_us,
        single: distribution(&single, 1),
        multi: distribution(&multi, opts.packets),
        per_message_ns: per_message,
        per_packet_ns: per_packet,
    })
}
