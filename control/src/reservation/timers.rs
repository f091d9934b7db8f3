//! The protocol's clocks: how often an idle sender pings, how long it waits for a reply, and
//! how long a receiver keeps a silent session.

use crate::admission::Nanos;

/// The timer policy both sides follow (`peering.heartbeat`, `peering.timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// An open session with nothing else to send pings this long after its last request.
    pub heartbeat: Nanos,
    /// A request unanswered this long means the peer is lost.
    pub timeout: Nanos,
}

impl Timers {
    /// How long a receiver keeps a session it hears nothing on: three heartbeats, and never
    /// less than the sender's reply timeout (a sender waiting that long on a slow receiver
    /// has not gone away).
    pub fn idle(&self) -> Nanos {
        self.heartbeat.saturating_mul(3).max(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_three_heartbeats_or_the_timeout() {
        let t = Timers {
            heartbeat: 100,
            timeout: 2000,
        };
        assert_eq!(t.idle(), 2000);
        let t = Timers {
            heartbeat: 1000,
            timeout: 2000,
        };
        assert_eq!(t.idle(), 3000);
    }
}
