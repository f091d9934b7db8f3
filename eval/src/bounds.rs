//! What the admission test predicts for an experiment's channels.
//!
//! Each experiment describes its real-time channels as admission requests (`Mmax`, `Imin`,
//! `Bmax`, host bound d) and admits them with a [`ResourceModel`] that describes the virtual
//! test bed honestly: the virtual CPU's per-packet cost (no per-message cost: the virtual CPU
//! charges none), best-effort runs of k packets, the idle clock step as the longest background
//! chunk, the link's rate and the policy (granularity, work-conserving, reserve). The channels
//! then run with the CPU and link deadlines admission gave them, and the receiver's bound is
//! D = d + [`super::world::network_allowance`].

use control::admission::{Admission, ChannelRequest, CostModel, Nanos, ResourceModel};
use dataplane::spec::ChannelSpec;

/// A real-time channel as an admission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtReq {
    /// Largest message, bytes.
    pub mmax: u32,
    /// Smallest interval, ns.
    pub imin: Nanos,
    /// Largest burst, messages.
    pub bmax: u32,
    /// Host bound d, ns.
    pub d: Nanos,
}

impl RtReq {
    fn request(&self, d: Nanos) -> ChannelRequest {
        ChannelRequest {
            mmax: self.mmax,
            imin: self.imin,
            bmax: self.bmax,
            deadline: d,
            core: None,
            txq: None,
        }
    }
}

/// The resource model of the virtual test bed.
pub fn model(
    link_bps: u64,
    per_packet: Nanos,
    k: u32,
    step: Nanos,
    work_conserving: bool,
    reserve_ppm: u32,
) -> ResourceModel {
    ResourceModel {
        cost: CostModel {
            per_message_ns: 0,
            per_packet_ns: per_packet,
            best_effort_run_ns: u64::from(k) * per_packet,
            rx_burst_ns: step,
            control_poll_ns: 0,
            tx_stage_ns: 0,
            client_scan_ns: 0,
            capture_frame_ns: 0,
            mtu: 1500,
            link_rate_bps: link_bps,
        },
        cores: 1,
        tx_queue_share_ppm: vec![1_000_000],
        best_effort_reserve_ppm: reserve_ppm,
        granularity: k,
        max_message: 65_536,
        work_conserving,
        ..ResourceModel::default()
    }
}

/// Admits `reqs` in order; returns each channel's dataplane spec (deadlines from admission,
/// end-to-end bound d + `allowance`) or the first refusal in words.
pub fn admit_all(
    model: &ResourceModel,
    reqs: &[RtReq],
    allowance: Nanos,
) -> Result<Vec<ChannelSpec>, String> {
    let mut adm = Admission::new(model.clone()).map_err(|e| e.to_string())?;
    reqs.iter()
        .map(|r| {
            let a = adm
                .admit(&r.request(r.d))
                .map_err(|e| format!("{r:?}: {e}"))?;
            Ok(ChannelSpec {
                mmax: r.mmax,
                imin: r.imin,
                bmax: r.bmax,
                cpu_deadline: a.cpu_deadline,
                link_deadline: a.link_deadline,
                end_to_end_deadline: a.link_deadline + allowance,
            })
        })
        .collect()
}

/// The smallest host bound d admission would grant `req` after admitting `before`: the bound it
/// predicts for that channel. `None` if no deadline fits.
pub fn tightest(model: &ResourceModel, before: &[RtReq], req: &RtReq) -> Option<Nanos> {
    let mut adm = Admission::new(model.clone()).ok()?;
    for r in before {
        adm.admit(&r.request(r.d)).ok()?;
    }
    let fits = |d: Nanos| adm.check(&req.request(d)).is_ok();
    let mut hi: Nanos = 1 << 20;
    while !fits(hi) {
        hi *= 2;
        if hi > 1 << 40 {
            return None;
        }
    }
    let mut lo: Nanos = 0; // fails (a zero deadline is invalid)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}
