//! Placement: which core (and so TX queue) a channel is tried on, which id it gets (one the
//! receiving side does not use yet), and the addresses its frames carry.

use control::config::parse_mac;
use control::protocol::{ApiError, Grant, OpenArgs, PrepareArgs};
use dataplane::spec::ChannelConfig;

use super::{Control, Dst, ID_ATTEMPTS};

impl Control {
    /// Cores to try, in order: the one asked for, or worst-fit by utilisation.
    pub(super) fn candidates(&self, args: &OpenArgs) -> Result<Vec<u16>, ApiError> {
        let n = self.cfg.cores.len() as u16;
        if let (Some(c), Some(q)) = (args.core, args.txq) {
            if c != q {
                return Err(ApiError::invalid(
                    "txq",
                    format!("txq: core {c} sends on TX queue {c}; txq {q} would need core {q}"),
                ));
            }
        }
        if let Some(c) = args.core {
            if c >= n {
                return Err(ApiError::invalid(
                    "core",
                    format!("core: {c} does not exist (the host has {n} cores)"),
                ));
            }
        }
        if let Some(q) = args.txq {
            if q >= n {
                return Err(ApiError::invalid(
                    "txq",
                    format!("txq: {q} does not exist (the host has {n} TX queues)"),
                ));
            }
        }
        if let Some(c) = args.core.or(args.txq) {
            return Ok(vec![c]);
        }
        let u = self.tx_adm.utilisation();
        let mut v: Vec<u16> = (0..n).collect();
        v.sort_by_key(|&c| {
            (
                u64::from(u.cores[usize::from(c)]) + u64::from(u.tx_queues[usize::from(c)]),
                c,
            )
        });
        Ok(v)
    }

    pub(super) fn fresh_id(&mut self) -> u32 {
        while self.out.contains_key(&self.next_id)
            || self.inc.contains_key(&self.next_id)
            || self.unrestored_index(self.next_id).is_some()
        {
            self.next_id = self.next_id.wrapping_add(1);
        }
        self.next_id
    }

    /// Prepares the receiving end under `fixed_id`, or under a fresh id, taking the next one
    /// (up to [`ID_ATTEMPTS`] times) while the receiving end already uses it.
    pub(super) fn prepare_with_id(
        &mut self,
        dst: &Dst,
        fixed_id: Option<u32>,
        prep: impl Fn(u32) -> PrepareArgs,
    ) -> Result<(u32, Grant), ApiError> {
        let mut attempts = 0;
        loop {
            let id = fixed_id.unwrap_or_else(|| self.fresh_id());
            match self.prepare_remote(dst, &prep(id)) {
                Ok(g) => return Ok((id, g)),
                Err(e)
                    if e.field.as_deref() == Some("id")
                        && fixed_id.is_none()
                        && attempts < ID_ATTEMPTS =>
                {
                    attempts += 1;
                    self.next_id = id.wrapping_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Addresses a channel's frames: the peer's data-link IPv4 (and, on a wire port, this
    /// host's MAC/IPv4 and the peer's MAC).
    pub(super) fn address(&self, cfg: &mut ChannelConfig, dst: &Dst) {
        let Dst::Peer(p) = dst else {
            return;
        };
        let Some(peer) = self.cfg.peer(p) else {
            return;
        };
        if let Some(ip) = peer.data_ipv4() {
            cfg.endpoint.dst_ip = ip.octets();
        }
        if let Some(w) = self.dp.wire {
            cfg.endpoint.src_mac = w.mac;
            cfg.endpoint.src_ip = w.ip;
            // Checked by `destination`.
            if let Some(Ok(mac)) = peer.mac.as_deref().map(parse_mac) {
                cfg.endpoint.dst_mac = mac;
            }
        }
    }
}

pub(super) fn core_hint(dst: &Dst, core: u16) -> Option<u16> {
    match dst {
        Dst::Local => Some(core),
        Dst::Peer(_) => None,
    }
}
