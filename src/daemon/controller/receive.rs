//! The receiving side of a channel on this host: admission of its share of the end-to-end
//! bound, its receiver on a receive core and the buffers for it, and freeing all of it. It
//! serves this host's own `local` channels directly and peers' `prepare`s through the inbound
//! machine ([`super::peering`]).

use std::time::Instant;

use control::admission::memory::{receiving_bytes, Side};
use control::admission::{AdmitError, ChannelRequest, RequestError};
use control::config::parse_mac;
use control::e2e::{least_deadline, receiver_share};
use control::protocol::{ApiError, Grant, IncomingInfo, PrepareArgs, Refusal};
use control::reservation::id_in_use;
use control::units::fmt_ns;
use dataplane::rx::Receiver;
use dataplane::spec::Endpoint;
use dataplane::wire::SourceCheck;

use super::{internal, open::unadmitted, validate::rx_text, Control, Incoming, RX_RING};

impl Control {
    /// Reserves (or, with `dry_run`, decides) the receiving side of a channel from `from`
    /// (`local`, or a peer whose inbound machine asked).
    pub(super) fn prepare(&mut self, from: &str, p: &PrepareArgs) -> Result<Grant, ApiError> {
        let me = self.cfg.peering.name.clone();
        if !p.dry_run && self.inc.contains_key(&p.id) {
            return Err(id_in_use(p.id, &me));
        }
        let rx_bytes = receiving_bytes(p.mmax, RX_RING);
        if self.dp.receive_cores() > 0 && p.mmax <= self.cfg.max_message {
            self.memory
                .check(Side::Receiving, "mmax", rx_bytes)
                .map_err(|e| self.memory_error(e))?;
        }
        if p.best_effort {
            return self.prepare_best_effort(from, p);
        }
        let req = ChannelRequest {
            mmax: p.mmax,
            imin: p.imin,
            bmax: p.bmax,
            deadline: p.budget,
            core: p.core,
            txq: Some(0),
        };
        let least = match least_deadline(&self.rx_adm, &req) {
            Ok(l) => l,
            Err(AdmitError::Invalid(e)) => {
                return Err(ApiError::invalid(
                    e.field(),
                    format!("receiving host '{me}': {e}"),
                ))
            }
            Err(AdmitError::Rejected(rej)) => {
                return Err(ApiError::refused(
                    format!("refused by the receiving host '{me}': {}", rx_text(&rej)),
                    Refusal {
                        side: "receiver".into(),
                        host: me,
                        least_host_deadline: None,
                        tightest_deadline: None,
                        rejection: *rej,
                    },
                ))
            }
        };
        if least > p.budget {
            return Err(match self.rx_adm.check(&req) {
                Err(AdmitError::Rejected(rej)) => ApiError::refused(
                    format!(
                        "refused by the receiving host '{me}': {} (it can give no less than {}, \
                         the budget left was {})",
                        rx_text(&rej),
                        fmt_ns(least),
                        fmt_ns(p.budget)
                    ),
                    Refusal {
                        side: "receiver".into(),
                        host: me,
                        least_host_deadline: Some(least),
                        tightest_deadline: None,
                        rejection: *rej,
                    },
                ),
                Err(AdmitError::Invalid(RequestError::DeadlineTooShort { minimum, .. })) => {
                    ApiError::invalid(
                        "deadline",
                        format!(
                            "deadline: the receiving host '{me}' needs at least {} even when idle; \
                             the end-to-end deadline left it {}",
                            fmt_ns(minimum),
                            fmt_ns(p.budget)
                        ),
                    )
                }
                Err(AdmitError::Invalid(e)) => ApiError::invalid(e.field(), e.to_string()),
                Ok(_) => internal("receiver's least deadline disagrees with admission"),
            });
        }
        let d_r = receiver_share(least, p.budget);
        let req = ChannelRequest {
            deadline: d_r,
            ..req
        };
        if p.dry_run {
            let admitted = self
                .rx_adm
                .check(&req)
                .map_err(|e| internal(e.to_string()))?;
            return Ok(Grant {
                id: p.id,
                host: me,
                deadline: d_r,
                least_deadline: least,
                admitted,
            });
        }
        let admitted = self
            .admit_receiving(&req)
            .map_err(|e| internal(e.to_string()))?;
        let core = admitted.core;
        let receiver = match self.open_receiver(core, p.id, p.mmax, from) {
            Ok(r) => r,
            Err(e) => {
                self.release_receiving(admitted.id);
                return Err(e);
            }
        };
        if let Some(r) = &receiver {
            self.sink.add(p.id, r.clone());
            self.dp.steer(p.id, Some(core), false);
        }
        let mut shown = admitted.clone();
        shown.id = p.id;
        self.inc.insert(
            p.id,
            Incoming {
                adm_id: Some(admitted.id),
                core,
                receiver,
                info: IncomingInfo {
                    id: p.id,
                    from: from.into(),
                    deadline: d_r,
                    end_to_end: p.end_to_end,
                    admitted: shown.clone(),
                    committed: false,
                    best_effort: false,
                },
                opened: Instant::now(),
                app: None,
                pending_app: None,
                carried: None,
            },
        );
        Ok(Grant {
            id: p.id,
            host: me,
            deadline: d_r,
            least_deadline: least,
            admitted: shown,
        })
    }

    /// The receiving side of a best-effort channel: a receiver, no admission.
    pub(super) fn prepare_best_effort(
        &mut self,
        from: &str,
        p: &PrepareArgs,
    ) -> Result<Grant, ApiError> {
        let me = self.cfg.peering.name.clone();
        if p.mmax == 0 || p.mmax > self.cfg.max_message {
            return Err(ApiError::invalid(
                "mmax",
                format!(
                    "receiving host '{me}': mmax {} is not in 1..={}",
                    p.mmax, self.cfg.max_message
                ),
            ));
        }
        let cores = self.dp.receive_cores().max(1);
        let core = p
            .core
            .filter(|&c| usize::from(c) < cores)
            .unwrap_or_else(|| (p.id as usize % cores) as u16);
        let shown = unadmitted(p.id, core, p.mmax, p.imin, p.bmax);
        let grant = Grant {
            id: p.id,
            host: me,
            deadline: 0,
            least_deadline: 0,
            admitted: shown.clone(),
        };
        if p.dry_run {
            return Ok(grant);
        }
        let receiver = self.open_receiver(core, p.id, p.mmax, from)?;
        if let Some(r) = &receiver {
            self.sink.add(p.id, r.clone());
            self.dp.steer(p.id, Some(core), true);
        }
        self.inc.insert(
            p.id,
            Incoming {
                adm_id: None,
                core,
                receiver,
                info: IncomingInfo {
                    id: p.id,
                    from: from.into(),
                    deadline: 0,
                    end_to_end: 0,
                    admitted: shown,
                    committed: false,
                    best_effort: true,
                },
                opened: Instant::now(),
                app: None,
                pending_app: None,
                carried: None,
            },
        );
        Ok(grant)
    }

    /// Opens channel `id`'s receive side on receive core `core` (none without a receive
    /// path): reserves its memory, allocates it off the request path, hands it to the core.
    pub(super) fn open_receiver(
        &mut self,
        core: u16,
        id: u32,
        mmax: u32,
        from: &str,
    ) -> Result<Option<Receiver>, ApiError> {
        if self.dp.receive_core(core).is_none() {
            return Ok(None);
        }
        let bytes = receiving_bytes(mmax, RX_RING);
        self.memory
            .reserve(Side::Receiving, id, "mmax", bytes)
            .map_err(|e| self.memory_error(e))?;
        let check = self.source_check(from);
        let pending = self
            .dp
            .receive_core(core)
            .expect("checked above")
            .prepare_receiver(id, mmax, RX_RING)
            .with_source(check);
        let opened = self
            .off_thread(bytes, move || pending.build())
            .and_then(|shared| {
                self.dp
                    .receive_core(core)
                    .expect("checked above")
                    .open_built_receiver(shared)
                    .map_err(|e| internal(format!("receive core {core}: {e}")))
            });
        if opened.is_err() {
            self.memory.release(Side::Receiving, id);
        }
        opened.map(Some)
    }

    pub(super) fn release_incoming(&mut self, id: u32) {
        if let Some(i) = self.inc.remove(&id) {
            self.memory.release(Side::Receiving, id);
            self.sink.remove(id);
            // An attached client sees the channel closed in its ring.
            if let Some(r) = i.receiver.as_ref().and_then(|r| r.shared().app_region()) {
                r.close();
            }
            if i.receiver.is_some() {
                self.dp.steer(id, None, i.info.best_effort);
                if let Some(handle) = self.dp.receive_core(i.core) {
                    let _ = handle.close_receiver(id);
                }
            }
            if let Some(a) = i.adm_id {
                self.release_receiving(a);
            }
        }
    }

    /// The addresses frames of a channel from `from` must carry: what its sender writes
    /// (`address` on the sending side, mirrored), as far as this host knows them.
    pub(super) fn source_check(&self, from: &str) -> SourceCheck {
        let default = Endpoint::default();
        if from == "local" {
            return SourceCheck::exact(&default);
        }
        let peer = self.cfg.peer(from);
        let peer_ip = peer.and_then(|p| p.data_ipv4()).map(|ip| ip.octets());
        match self.dp.wire {
            Some(w) => SourceCheck {
                src_mac: peer
                    .and_then(|p| p.mac.as_deref())
                    .and_then(|m| parse_mac(m).ok()),
                dst_mac: Some(w.mac),
                src_ip: peer_ip,
                dst_ip: Some(w.ip),
                src_port: Some(default.src_port),
            },
            // No data link: the sender writes the default addresses, to our data IPv4 as
            // it has us configured (unknown here).
            None => SourceCheck {
                dst_ip: None,
                ..SourceCheck::exact(&default)
            },
        }
    }
}
