//! Channel specifications: the traffic model, local deadlines, buffer reservation, policies.
//!
//! A spec is validated once, on the control path, into a [`ChannelConfig`] the core trusts. Every
//! rejected field is named in the [`SpecError`].

use crate::time::Nanos;

/// A channel's identifier, unique on a host.
pub type ChannelId = u32;

/// The linear-bounded traffic specification and the host's deadlines for a real-time channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Largest message, bytes.
    pub mmax: u32,
    /// Smallest interval between messages (1/Rmax), ns.
    pub imin: Nanos,
    /// Largest burst, messages.
    pub bmax: u32,
    /// Relative CPU deadline: a message's handler work is due by ℓ + `cpu_deadline`.
    pub cpu_deadline: Nanos,
    /// Relative link deadline (the host's local bound d): every packet of a message is due on the
    /// wire by ℓ + `link_deadline`.
    pub link_deadline: Nanos,
    /// End-to-end bound D, carried in the header so the receiver can count misses.
    pub end_to_end_deadline: Nanos,
}

/// How much buffer the channel holds: messages queued plus the one in progress, each ≤ Mmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferReservation {
    /// Messages the submit ring holds (the burst the sender may submit at once).
    pub messages: u32,
    /// Bytes per message buffer.
    pub bytes_per_message: u32,
}

impl BufferReservation {
    /// The reservation admission makes for `spec`: Bmax messages of Mmax bytes.
    pub fn for_spec(spec: &ChannelSpec) -> Self {
        Self {
            messages: spec.bmax,
            bytes_per_message: spec.mmax,
        }
    }
}

/// What a full channel buffer does to a new message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Submit answers `WouldBlock`; the sender retries.
    #[default]
    Block,
    /// The new message is dropped (counted).
    DropNewest,
    /// The oldest queued message is dropped to make room (counted).
    DropOldest,
}

impl OverflowPolicy {
    /// Its name as users and the control protocol write it (what [`str::parse`] reads).
    pub fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::DropNewest => "drop-newest",
            Self::DropOldest => "drop-oldest",
        }
    }
}

impl std::str::FromStr for OverflowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(Self::Block),
            "drop-newest" => Ok(Self::DropNewest),
            "drop-oldest" => Ok(Self::DropOldest),
            other => Err(format!(
                "unknown overflow policy '{other}' (expected block, drop-newest or drop-oldest)"
            )),
        }
    }
}

/// The class of a channel's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficClass {
    /// A real-time channel with a spec and guarantees.
    RealTime(ChannelSpec),
    /// Best-effort: no spec, served fairly after current real-time work. `mmax` bounds a message.
    BestEffort {
        /// Largest message, bytes.
        mmax: u32,
        /// Messages the submit ring holds.
        queue: u32,
    },
}

/// Where a channel's packets go on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// Source IPv4 address.
    pub src_ip: [u8; 4],
    /// Destination IPv4 address.
    pub dst_ip: [u8; 4],
    /// Source UDP port.
    pub src_port: u16,
    /// Destination UDP port.
    pub dst_port: u16,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src_ip: [127, 0, 0, 1],
            dst_ip: [127, 0, 0, 1],
            src_port: crate::wire::RTCHAN_UDP_PORT,
            dst_port: crate::wire::RTCHAN_UDP_PORT,
        }
    }
}

/// A channel as the core runs it: validated spec, reservation, placement, policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Identifier carried in every packet.
    pub id: ChannelId,
    /// Real-time with a spec, or best-effort.
    pub class: TrafficClass,
    /// Buffer reservation.
    pub reservation: BufferReservation,
    /// Full-buffer policy.
    pub overflow: OverflowPolicy,
    /// TX queue index on the core's port.
    pub txq: u16,
    /// Addresses for the headers.
    pub endpoint: Endpoint,
}

/// A field of a spec that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The named field is zero and must not be.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name as users write it.
        field: &'static str,
    },
    /// Mmax is more than one message buffer of the reservation holds.
    #[error(
        "mmax ({mmax} bytes) exceeds the buffer reservation's message size ({reserved} bytes)"
    )]
    MmaxExceedsReservation {
        /// The requested Mmax.
        mmax: u32,
        /// Bytes per message the reservation holds.
        reserved: u32,
    },
    /// The reservation holds fewer messages than a burst.
    #[error("buffer reservation of {reserved} messages cannot hold a burst of bmax = {bmax}")]
    BmaxExceedsReservation {
        /// The requested Bmax.
        bmax: u32,
        /// Messages the reservation holds.
        reserved: u32,
    },
    /// The CPU deadline is past the link deadline, which is the host's whole bound.
    #[error("cpu_deadline ({cpu} ns) exceeds link_deadline ({link} ns), the host's local bound")]
    CpuDeadlineAfterLink {
        /// CPU deadline, ns.
        cpu: Nanos,
        /// Link deadline, ns.
        link: Nanos,
    },
    /// The host's bound exceeds the end-to-end bound.
    #[error("link_deadline ({link} ns) exceeds the end-to-end deadline ({e2e} ns)")]
    LinkDeadlineAfterEndToEnd {
        /// Link deadline, ns.
        link: Nanos,
        /// End-to-end deadline, ns.
        e2e: Nanos,
    },
    /// A message this size cannot be fragmented into the 16-bit fragment count.
    #[error("mmax ({mmax} bytes) needs more than {max} fragments of {payload} bytes")]
    TooManyFragments {
        /// The requested Mmax.
        mmax: u32,
        /// Payload per packet.
        payload: u32,
        /// Largest fragment count.
        max: u32,
    },
}

impl ChannelSpec {
    /// Checks the spec alone.
    pub fn validate(&self) -> Result<(), SpecError> {
        for (field, v) in [
            ("mmax", self.mmax as u64),
            ("imin", self.imin),
            ("bmax", self.bmax as u64),
            ("cpu_deadline", self.cpu_deadline),
            ("link_deadline", self.link_deadline),
            ("end_to_end_deadline", self.end_to_end_deadline),
        ] {
            if v == 0 {
                return Err(SpecError::Zero { field });
            }
        }
        if self.cpu_deadline > self.link_deadline {
            return Err(SpecError::CpuDeadlineAfterLink {
                cpu: self.cpu_deadline,
                link: self.link_deadline,
            });
        }
        if self.link_deadline > self.end_to_end_deadline {
            return Err(SpecError::LinkDeadlineAfterEndToEnd {
                link: self.link_deadline,
                e2e: self.end_to_end_deadline,
            });
        }
        Ok(())
    }
}

impl ChannelConfig {
    /// Checks the whole configuration: spec, reservation, and that a message fragments into
    /// at most `u16::MAX` packets of `payload_per_packet` bytes.
    pub fn validate(&self, payload_per_packet: u32) -> Result<(), SpecError> {
        let mmax = match self.class {
            TrafficClass::RealTime(spec) => {
                spec.validate()?;
                if spec.bmax > self.reservation.messages {
                    return Err(SpecError::BmaxExceedsReservation {
                        bmax: spec.bmax,
                        reserved: self.reservation.messages,
                    });
                }
                spec.mmax
            }
            TrafficClass::BestEffort { mmax, queue } => {
                if mmax == 0 {
                    return Err(SpecError::Zero { field: "mmax" });
                }
                if queue == 0 {
                    return Err(SpecError::Zero { field: "queue" });
                }
                mmax
            }
        };
        if self.reservation.messages == 0 {
            return Err(SpecError::Zero {
                field: "reservation.messages",
            });
        }
        if mmax > self.reservation.bytes_per_message {
            return Err(SpecError::MmaxExceedsReservation {
                mmax,
                reserved: self.reservation.bytes_per_message,
            });
        }
        let max = u16::MAX as u32;
        if payload_per_packet == 0 || mmax.div_ceil(payload_per_packet) > max {
            return Err(SpecError::TooManyFragments {
                mmax,
                payload: payload_per_packet,
                max,
            });
        }
        Ok(())
    }

    /// The channel's spec, if real-time.
    pub fn spec(&self) -> Option<&ChannelSpec> {
        match &self.class {
            TrafficClass::RealTime(s) => Some(s),
            TrafficClass::BestEffort { .. } => None,
        }
    }

    /// Largest message the channel accepts.
    pub fn mmax(&self) -> u32 {
        match self.class {
            TrafficClass::RealTime(s) => s.mmax,
            TrafficClass::BestEffort { mmax, .. } => mmax,
        }
    }

    /// A real-time channel with the reservation admission would give it.
    pub fn real_time(id: ChannelId, spec: ChannelSpec) -> Self {
        Self {
            id,
            class: TrafficClass::RealTime(spec),
            reservation: BufferReservation::for_spec(&spec),
            overflow: OverflowPolicy::Block,
            txq: 0,
            endpoint: Endpoint::default(),
        }
    }

    /// A best-effort channel.
    pub fn best_effort(id: ChannelId, mmax: u32, queue: u32) -> Self {
        Self {
            id,
            class: TrafficClass::BestEffort { mmax, queue },
            reservation: BufferReservation {
                messages: queue,
                bytes_per_message: mmax,
            },
            overflow: OverflowPolicy::DropNewest,
            txq: 0,
            endpoint: Endpoint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChannelSpec {
        ChannelSpec {
            mmax: 1000,
            imin: 1_000_000,
            bmax: 4,
            cpu_deadline: 100_000,
            link_deadline: 200_000,
            end_to_end_deadline: 1_000_000,
        }
    }

    #[test]
    fn zero_fields_are_named() {
        for (name, f) in [
            (
                "imin",
                (|s: &mut ChannelSpec| s.imin = 0) as fn(&mut ChannelSpec),
            ),
            ("mmax", |s| s.mmax = 0),
            ("bmax", |s| s.bmax = 0),
            ("cpu_deadline", |s| s.cpu_deadline = 0),
            ("link_deadline", |s| s.link_deadline = 0),
        ] {
            let mut s = spec();
            f(&mut s);
            assert_eq!(s.validate(), Err(SpecError::Zero { field: name }));
            assert!(s.validate().unwrap_err().to_string().contains(name));
        }
    }

    #[test]
    fn mmax_beyond_reservation_is_rejected() {
        let mut c = ChannelConfig::real_time(1, spec());
        c.reservation.bytes_per_message = 999;
        assert_eq!(
            c.validate(1400),
            Err(SpecError::MmaxExceedsReservation {
                mmax: 1000,
                reserved: 999
            })
        );
        c.reservation.bytes_per_message = 1000;
        assert_eq!(c.validate(1400), Ok(()));
    }

    #[test]
    fn deadline_order_is_checked() {
        let mut s = spec();
        s.cpu_deadline = s.link_deadline + 1;
        assert!(matches!(
            s.validate(),
            Err(SpecError::CpuDeadlineAfterLink { .. })
        ));
        let mut s = spec();
        s.link_deadline = s.end_to_end_deadline + 1;
        assert!(matches!(
            s.validate(),
            Err(SpecError::LinkDeadlineAfterEndToEnd { .. })
        ));
    }

    #[test]
    fn policy_parses() {
        assert_eq!("drop-oldest".parse(), Ok(OverflowPolicy::DropOldest));
        assert!("nope"
            .parse::<OverflowPolicy>()
            .unwrap_err()
            .contains("nope"));
    }
}
