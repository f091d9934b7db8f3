//! Request validation: what a channel request names must exist and fit before anything is
//! reserved — its destination, this host's memory budget — and the words a refusal by
//! admission is given (which field, which host, the numbers).

use control::admission::memory::{
    receiving_bytes, sending_bytes, sending_field, MemoryRefusal, Side,
};
use control::admission::{AdmitError, Nanos, RequestError};
use control::protocol::{ApiError, ErrorKind, Refusal};
use control::units::fmt_ns;

use super::{Control, Dst, RX_RING};

impl Control {
    pub(super) fn destination(&self, dst: &str) -> Result<(Dst, Nanos), ApiError> {
        if dst == "local" {
            if !self.dp.has_loopback() {
                return Err(ApiError::invalid(
                    "dst",
                    format!(
                        "dst: 'local' needs a receive path; port '{}' has none (use memlink)",
                        self.cfg.port.kind.name()
                    ),
                ));
            }
            return Ok((Dst::Local, self.cfg.peering.loopback_network_bound.0));
        }
        match self.cfg.peer(dst) {
            Some(p) if self.dp.wire.is_some() && p.mac.is_none() => Err(ApiError::invalid(
                "dst",
                format!(
                    "dst: peer '{dst}' has no `mac` in its [[peers]] entry; port '{}' needs it \
                     to address frames to the peer",
                    self.cfg.port.kind.name()
                ),
            )),
            Some(p) => Ok((Dst::Peer(p.name.clone()), p.network_bound.0)),
            None => {
                let mut known = vec!["local".to_string()];
                known.extend(self.cfg.peers.iter().map(|p| p.name.clone()));
                Err(ApiError::invalid(
                    "dst",
                    format!(
                        "dst: unknown destination '{dst}' (known: {})",
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    pub(super) fn sender_error(&self, e: AdmitError, d: Nanos, net: Nanos, dst: &str) -> ApiError {
        match e {
            AdmitError::Invalid(RequestError::DeadlineTooShort { minimum, .. }) => {
                ApiError::invalid(
                    "deadline",
                    format!(
                        "deadline: {} leaves {} for this host after the network bound {} to '{dst}', \
                         below {}, the least an idle sending host can guarantee for this channel \
                         (D must be at least {} plus the receiving host's share)",
                        fmt_ns(d),
                        fmt_ns(d.saturating_sub(net)),
                        fmt_ns(net),
                        fmt_ns(minimum),
                        fmt_ns(minimum + net)
                    ),
                )
            }
            AdmitError::Invalid(e) => ApiError::invalid(e.field(), e.to_string()),
            AdmitError::Rejected(rej) => {
                let msg = format!("refused by the sending host: {rej}");
                ApiError::refused(
                    msg,
                    Refusal {
                        side: "sender".into(),
                        host: self.cfg.peering.name.clone(),
                        least_host_deadline: rej.tightest_deadline,
                        tightest_deadline: None,
                        rejection: *rej,
                    },
                )
            }
        }
    }

    /// The memory budget's check for a new channel's sides on this host, before anything is
    /// prepared: the sending side, and the receiving side too when it is local.
    pub(super) fn check_memory(&self, mmax: u32, bmax: u32, local: bool) -> Result<(), ApiError> {
        if mmax > self.cfg.max_message {
            // Refused by admission naming `mmax` and `max_message`; nothing is allocated.
            return Ok(());
        }
        let mut sides = vec![(
            Side::Sending,
            sending_field(bmax),
            sending_bytes(mmax, bmax),
        )];
        if local && self.dp.receive_cores() > 0 {
            sides.push((Side::Receiving, "mmax", receiving_bytes(mmax, RX_RING)));
        }
        self.memory
            .check_sides(&sides)
            .map_err(|e| self.memory_error(e))
    }

    /// A memory-budget refusal as the client sees it.
    pub(super) fn memory_error(&self, e: MemoryRefusal) -> ApiError {
        ApiError {
            kind: ErrorKind::Limit,
            field: Some(e.field.into()),
            message: format!("{e} (host '{}')", self.cfg.peering.name),
            refusal: None,
        }
    }
}

/// A receiving host's rejection in words: its single "queue" is the link's receive capacity.
pub(super) fn rx_text(rej: &control::admission::Rejection) -> String {
    rej.to_string()
        .replace("txq 0 link", "receive link")
        .replace("core ", "RX core ")
}

pub(super) fn model_error(e: control::admission::ModelError) -> ApiError {
    ApiError::invalid("policy", e.to_string())
}
