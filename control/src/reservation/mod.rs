//! The reservation protocol between two control planes, as deterministic state machines.
//!
//! A channel to a peer holds resources on both hosts: the sender's admission and buffers, and
//! the receiver's. The protocol keeps the two in step: the sender asks the receiver to
//! `prepare` (the receiver reserves its share and answers with a grant), then sets its own
//! side up and sends `commit`, or `abort` if it could not; `release` ends an established
//! channel; `ping` is the heartbeat. Whatever a session held on the receiver goes when the
//! session ends, breaks, or falls silent; whatever the sender holds for a peer goes when the
//! peer stops answering. So neither host keeps a reservation the other does not.
//!
//! Neither machine does I/O or reads a clock: each takes `now` (nanoseconds from any fixed
//! origin) and what arrived, and returns what to send and what to do, in the style of
//! `quinn-proto`'s `Connection`:
//!
//! - [`Outbound`] (the sender's side, one per peer): `submit` an [`Op`], then move its
//!   [`Transmit`]s (`poll_transmit`), feed back the peer's replies (`handle_reply`), the
//!   transport's news (`connected`, `connect_failed`, `transport_failed`) and the timer
//!   (`poll_timeout`, `handle_timeout`); read the outcomes from `poll_event`.
//! - [`Inbound`] (the receiver's side, every session from every peer): feed it accepted
//!   sessions, request lines, closed sessions and the timer; it returns [`InAction`]s: replies
//!   to write, reservations to make or free (the caller owns the resources and decides
//!   admission), sessions to close.
//!
//! The transport must deliver each session's lines in order (TCP in the daemon), so a request
//! carries its position in the session as its sequence number and nothing new on the wire.
//! The machines nevertheless drop what a lossy, reordering, duplicating link would add
//! (replies to no outstanding request, stale or repeated request numbers, lines from a
//! session already closed), and treat loss as what it is over TCP: silence, then the end of
//! the session. `control/tests/reservation_sim.rs` drives both over such a link in virtual
//! time and checks that the two hosts agree once it settles.
//!
//! Files: [`timers`] (heartbeat, reply timeout, idle limit), [`outbound`], [`inbound`].

pub mod inbound;
pub mod outbound;
pub mod timers;

pub use inbound::{InAction, Inbound, ReserveToken};
pub use outbound::{Failure, Op, OutEvent, Outbound, Ticket, Transmit};
pub use timers::Timers;

use crate::protocol::{ApiError, ErrorKind};

/// A session's number: the receiver's for an accepted connection, the sender's for each
/// connection it opened (its epoch).
pub type SessionId = u64;

/// A request's position in its session, from 0 (the `hello`).
pub type Seq = u64;

/// The error for a channel id this host does not know.
pub fn not_found(id: u32) -> ApiError {
    ApiError {
        kind: ErrorKind::NotFound,
        field: Some("id".into()),
        message: format!("id: no channel {id} on this host"),
        refusal: None,
    }
}

/// The error for a `prepare` whose id the receiving host `me` already uses.
pub fn id_in_use(id: u32, me: &str) -> ApiError {
    ApiError::invalid(
        "id",
        format!("id: channel {id} is already in use at the receiving host '{me}'"),
    )
}

/// What the two machines' tests share: the timers they run with and a prepare's arguments.
#[cfg(test)]
mod fixtures {
    use super::timers::Timers;
    use crate::protocol::PrepareArgs;

    /// Heartbeat every 100 ns of virtual time, a peer lost after 1000 without word.
    pub(super) const T: Timers = Timers {
        heartbeat: 100,
        timeout: 1000,
    };

    /// A small real-time channel's prepare for channel `id`.
    pub(super) fn prepare_args(id: u32) -> PrepareArgs {
        PrepareArgs {
            id,
            mmax: 100,
            imin: 1000,
            bmax: 1,
            budget: 10_000,
            end_to_end: 20_000,
            core: None,
            dry_run: false,
            best_effort: false,
        }
    }
}
