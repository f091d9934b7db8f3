//! The `[limits]` table: what one client, or all of them, may make the daemon hold.
//!
//! Connection limits bound the control socket's server (how many connections in total and per
//! user id, how long one may sit idle or keep a request line unfinished). Everything here is
//! plain data validated at start-up, so a bad value is refused with the key named before the
//! daemon serves anyone. Memory limits bound the buffers channels make the host allocate
//! (per channel side and for the host; [`crate::admission::memory`] applies them).

use serde::{Deserialize, Serialize};

use crate::admission::memory::{MachineMemory, MemoryBudget};
use crate::units::{Duration, Size};

/// The `[limits]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Control-socket connections open at once, all users together.
    pub max_connections: u32,
    /// Control-socket connections open at once by one user id.
    pub max_connections_per_uid: u32,
    /// A connection with nothing in flight and no bytes moving for this long is closed
    /// (unless the daemon marked it as holding resources, e.g. a client library's channels).
    pub idle_timeout: Duration,
    /// A request line must be complete (newline received) this long after its first byte.
    pub line_timeout: Duration,
    /// Most buffer memory one side of one channel may make this host allocate; absent: an
    /// eighth of the host's budget, at most 256 MiB (see [`crate::admission::memory`]).
    pub memory_per_channel: Option<Size>,
    /// Most buffer memory all channels together may make this host allocate; absent: a
    /// quarter of the machine's memory (the least of MemTotal, the rlimits, the cgroup).
    pub memory_per_host: Option<Size>,
}

/// Connections the server keeps for admins (root, the daemon's user, `group`) once everybody
/// else has filled the rest: a read-only user cannot lock the operator out.
pub const ADMIN_RESERVED_CONNECTIONS: u32 = 8;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            // 256 connections use 256 fds, well inside the usual soft RLIMIT_NOFILE of 1024
            // next to the port's own descriptors.
            max_connections: 256,
            // Each application using the client library holds one connection; 64 processes
            // of one user is generous without letting one user take the whole table.
            max_connections_per_uid: 64,
            // `rtchanctl` finishes in milliseconds; a minute of silence is a leaked or hostile
            // connection.
            idle_timeout: Duration(60_000_000_000),
            // A request line is written at once by every client; 10 s covers a person typing
            // one into socat.
            line_timeout: Duration(10_000_000_000),
            memory_per_channel: None,
            memory_per_host: None,
        }
    }
}

impl LimitsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("limits.{k}"), m));
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.max_connections > 65_536 {
            return bad(
                "max_connections",
                format!("{} is above 65536", self.max_connections),
            );
        }
        if self.max_connections_per_uid == 0 {
            return bad("max_connections_per_uid", "must be at least 1".into());
        }
        if self.max_connections_per_uid > self.max_connections {
            return bad(
                "max_connections_per_uid",
                format!(
                    "{} exceeds limits.max_connections ({})",
                    self.max_connections_per_uid, self.max_connections
                ),
            );
        }
        if let (Some(c), Some(h)) = (self.memory_per_channel, self.memory_per_host) {
            if c.0 > h.0 {
                return bad(
                    "memory_per_channel",
                    format!(
                        "{} bytes exceeds limits.memory_per_host ({} bytes)",
                        c.0, h.0
                    ),
                );
            }
        }
        Ok(())
    }

    /// The memory budget in force on `machine`: the configured figures, or its defaults.
    pub fn memory_budget(&self, machine: &MachineMemory) -> MemoryBudget {
        let host = self
            .memory_per_host
            .map_or_else(|| machine.default_per_host(), |s| s.0);
        let channel = self
            .memory_per_channel
            .map_or_else(|| machine.default_per_channel().min(host), |s| s.0);
        MemoryBudget::new(channel, host)
    }

    /// Connections a caller without admin rights may fill: all but the admins' reserve (never
    /// less than half).
    pub fn non_admin_connections(&self) -> u32 {
        let reserve = ADMIN_RESERVED_CONNECTIONS.min(self.max_connections / 2);
        self.max_connections - reserve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_key() {
        LimitsConfig::default().validate().unwrap();
        let l = LimitsConfig {
            max_connections_per_uid: 300,
            ..LimitsConfig::default()
        };
        assert_eq!(
            l.validate().unwrap_err().0,
            "limits.max_connections_per_uid"
        );
        let l = LimitsConfig {
            max_connections: 0,
            ..LimitsConfig::default()
        };
        assert_eq!(l.validate().unwrap_err().0, "limits.max_connections");
        assert_eq!(LimitsConfig::default().non_admin_connections(), 248);
        let small = LimitsConfig {
            max_connections: 4,
            max_connections_per_uid: 4,
            ..LimitsConfig::default()
        };
        assert_eq!(small.non_admin_connections(), 2);
    }
}
