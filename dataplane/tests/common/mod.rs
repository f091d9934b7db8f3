//! Helpers shared by the dataplane's integration tests: a core on a null port in virtual time.
#![allow(dead_code)]

use dataplane::core::{Core, CoreConfig};
use dataplane::link::LinkConfig;
use dataplane::memlink::NullPort;
use dataplane::sched::SchedPolicy;
use dataplane::spec::{ChannelConfig, ChannelSpec};
use dataplane::time::{ManualClock, Nanos, VirtualCpu};
use dataplane::wire::FRAME_OVERHEAD;

/// Payload bytes per packet in these tests (small, so multi-packet messages are cheap).
pub const PAYLOAD: usize = 100;
/// Virtual cost of one packet, ns.
pub const PACKET_COST: Nanos = 100;

pub struct Virtual {
    pub clock: ManualClock,
    pub cpu: VirtualCpu,
    pub core: Core<NullPort>,
}

pub fn virtual_core(policy: SchedPolicy, max_channels: u32) -> Virtual {
    let clock = ManualClock::new(0);
    let cpu = VirtualCpu {
        clock: clock.clone(),
        per_packet: PACKET_COST,
    };
    let cfg = CoreConfig {
        max_channels,
        sched: policy,
        link: LinkConfig {
            link_rate_bps: 100_000_000_000,
            in_flight_limit: u64::MAX / 4,
            capacity: 8192,
            ..LinkConfig::default()
        },
        ..CoreConfig::default()
    };
    let core = Core::new(cfg, NullPort::new(8192, FRAME_OVERHEAD + PAYLOAD)).unwrap();
    Virtual { clock, cpu, core }
}

pub fn rt(id: u32, imin: Nanos, bmax: u32, deadline: Nanos, mmax: u32) -> ChannelConfig {
    ChannelConfig::real_time(
        id,
        ChannelSpec {
            mmax,
            imin,
            bmax,
            cpu_deadline: deadline,
            link_deadline: deadline,
            end_to_end_deadline: deadline,
        },
    )
}

impl Virtual {
    /// Polls until `packets` have been traced or `limit` iterations pass, jumping the clock to
    /// the next logical arrival when the core idles.
    pub fn run_until(&mut self, packets: usize, limit: usize) {
        for _ in 0..limit {
            if self.core.trace().len() >= packets {
                return;
            }
            let p = self.core.poll(&self.clock, &mut self.cpu);
            if p.written == 0 {
                match self.core.next_release() {
                    Some(t) if t > self.clock_now() => self.clock.set(t),
                    Some(_) => {}
                    None => return,
                }
            }
        }
    }

    pub fn clock_now(&self) -> Nanos {
        use dataplane::time::Clock;
        self.clock.now()
    }
}
