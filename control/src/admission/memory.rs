//! The memory budget: a channel is admitted only if the buffers it makes this host allocate fit,
//! checked before anything is allocated.
//!
//! Each side of a channel on this host (the sending side's `Bmax + 1` buffers of `Mmax`, its
//! submit ring and free list; the receiving side's delivery ring, reassembly slots and their
//! buffers) costs the bytes the dataplane's own formulas give
//! ([`dataplane::channel::reservation_bytes`], [`CoreHandle::receiver_bytes`]). A side must fit
//! `limits.memory_per_channel` on its own, and all sides together `limits.memory_per_host`.
//! Both default to figures from the machine ([`MachineMemory`]): a quarter of the least of
//! MemTotal, the address-space and data rlimits and the cgroup's `memory.max` for the host, an
//! eighth of that (at most 256 MiB) per channel. A refusal names the request field that sets
//! the size (`bmax` for a sending side with more than one buffer, else `mmax`), the figure and
//! the limit.
//!
//! Data flow: the controller asks [`MemoryBudget::check`] before it prepares anything,
//! [`MemoryBudget::reserve`] just before it allocates, and [`MemoryBudget::release`] when the
//! side is freed.

use std::collections::BTreeMap;

use dataplane::handle::CoreHandle;

/// Largest default per-channel budget: a channel's buffers are allocated and faulted in on a
/// helper thread, but one open still should not take seconds.
pub const DEFAULT_CHANNEL_CAP: u64 = 256 << 20;

/// A byte count to three significant digits in binary units, for people (`1.40 GiB`).
pub fn approx(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Which side of a channel a reservation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// This host sends.
    Sending,
    /// This host receives.
    Receiving,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Sending => "sending side",
            Self::Receiving => "receiving side",
        }
    }
}

/// The heap bytes a sending side of `bmax` messages of `mmax` bytes allocates.
pub fn sending_bytes(mmax: u32, bmax: u32) -> u64 {
    dataplane::channel::reservation_bytes(bmax, mmax)
}

/// The heap bytes a receiving side of messages up to `mmax` allocates with an application
/// ring of `ring` messages.
pub fn receiving_bytes(mmax: u32, ring: u32) -> u64 {
    CoreHandle::receiver_bytes(mmax, ring)
}

/// A side that does not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRefusal {
    /// The request field that sets the size (`bmax` or `mmax`).
    pub field: &'static str,
    /// The `[limits]` key that refused it.
    pub limit_key: &'static str,
    /// What the side would reserve.
    pub bytes: u64,
    /// The limit.
    pub limit: u64,
    /// Already reserved on the host (for `memory_per_host`).
    pub in_use: u64,
    /// The sides counted in `bytes`.
    pub sides: &'static str,
}

impl std::fmt::Display for MemoryRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the {} would reserve {} bytes ({}) of buffers",
            self.field,
            self.sides,
            self.bytes,
            approx(self.bytes)
        )?;
        if self.limit_key == "memory_per_host" {
            write!(
                f,
                "; with the {} bytes ({}) already reserved that exceeds limits.memory_per_host = \
                 {} bytes ({})",
                self.in_use,
                approx(self.in_use),
                self.limit,
                approx(self.limit)
            )
        } else {
            write!(
                f,
                ", above limits.memory_per_channel = {} bytes ({})",
                self.limit,
                approx(self.limit)
            )
        }
    }
}

/// What the machine lets this process hold, bytes (`None`: no such limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineMemory {
    /// MemTotal of `/proc/meminfo`.
    pub mem_total: Option<u64>,
    /// Soft `RLIMIT_AS`.
    pub rlimit_as: Option<u64>,
    /// Soft `RLIMIT_DATA`.
    pub rlimit_data: Option<u64>,
    /// The cgroup (v2) `memory.max`.
    pub cgroup_max: Option<u64>,
}

impl MachineMemory {
    /// Reads the figures of this machine and process.
    pub fn detect() -> Self {
        let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
        Self {
            mem_total,
            rlimit_as: rlimit(libc::RLIMIT_AS),
            rlimit_data: rlimit(libc::RLIMIT_DATA),
            cgroup_max: cgroup_memory_max(),
        }
    }

    /// The least of the known figures (4 GiB when none is known).
    pub fn usable(&self) -> u64 {
        [
            self.mem_total,
            self.rlimit_as,
            self.rlimit_data,
            self.cgroup_max,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(4 << 30)
    }

    /// The default `limits.memory_per_host`: a quarter of [`MachineMemory::usable`] (the rest
    /// is for the port's buffers, the applications and the kernel).
    pub fn default_per_host(&self) -> u64 {
        self.usable() / 4
    }

    /// The default `limits.memory_per_channel`: an eighth of the host's, at most
    /// [`DEFAULT_CHANNEL_CAP`].
    pub fn default_per_channel(&self) -> u64 {
        (self.default_per_host() / 8).min(DEFAULT_CHANNEL_CAP)
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    crate::sys::rlimit_cur(resource)
}

fn cgroup_memory_max() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let v = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim())).ok()?;
    v.trim().parse().ok()
}

/// The host's buffer-memory ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    per_channel: u64,
    per_host: u64,
    reserved: BTreeMap<(Side, u32), u64>,
    in_use: u64,
}

impl MemoryBudget {
    /// A ledger with nothing reserved.
    pub fn new(per_channel: u64, per_host: u64) -> Self {
        Self {
            per_channel,
            per_host,
            reserved: BTreeMap::new(),
            in_use: 0,
        }
    }

    /// `limits.memory_per_channel` in force.
    pub fn per_channel(&self) -> u64 {
        self.per_channel
    }

    /// `limits.memory_per_host` in force.
    pub fn per_host(&self) -> u64 {
        self.per_host
    }

    /// Bytes reserved by every side on the host.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Whether a side of `bytes` would fit now; `field` is the request field blamed.
    pub fn check(&self, side: Side, field: &'static str, bytes: u64) -> Result<(), MemoryRefusal> {
        self.check_sides(&[(side, field, bytes)])
    }

    /// Whether the sides of one channel (`(side, field blamed, bytes)`) would fit now: each
    /// within `memory_per_channel`, all of them together within what the host has left.
    pub fn check_sides(&self, sides: &[(Side, &'static str, u64)]) -> Result<(), MemoryRefusal> {
        for &(side, field, bytes) in sides {
            if bytes > self.per_channel {
                return Err(MemoryRefusal {
                    field,
                    limit_key: "memory_per_channel",
                    bytes,
                    limit: self.per_channel,
                    in_use: self.in_use,
                    sides: side.name(),
                });
            }
        }
        let total = sides.iter().fold(0u64, |a, s| a.saturating_add(s.2));
        if self.in_use.saturating_add(total) > self.per_host {
            let largest = sides.iter().max_by_key(|s| s.2).expect("at least one side");
            return Err(MemoryRefusal {
                field: largest.1,
                limit_key: "memory_per_host",
                bytes: total,
                limit: self.per_host,
                in_use: self.in_use,
                sides: if sides.len() > 1 {
                    "sending and receiving sides"
                } else {
                    largest.0.name()
                },
            });
        }
        Ok(())
    }

    /// Checks and records a side of channel `id` (replacing an earlier record of the same side).
    pub fn reserve(
        &mut self,
        side: Side,
        id: u32,
        field: &'static str,
        bytes: u64,
    ) -> Result<(), MemoryRefusal> {
        self.release(side, id);
        self.check(side, field, bytes)?;
        self.reserved.insert((side, id), bytes);
        self.in_use += bytes;
        Ok(())
    }

    /// Frees a side's record (nothing when there is none).
    pub fn release(&mut self, side: Side, id: u32) {
        if let Some(b) = self.reserved.remove(&(side, id)) {
            self.in_use -= b;
        }
    }
}

/// The field a sending side's size is blamed on.
pub fn sending_field(bmax: u32) -> &'static str {
    if bmax > 1 {
        "bmax"
    } else {
        "mmax"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_request_is_refused_naming_bmax_and_the_figure() {
        let b = MemoryBudget::new(256 << 20, 4 << 30);
        let bytes = sending_bytes(1500, u32::MAX);
        assert!(bytes > 1500 * u64::from(u32::MAX), "{bytes}");
        let e = b
            .check(Side::Sending, sending_field(u32::MAX), bytes)
            .unwrap_err();
        assert_eq!((e.field, e.limit_key), ("bmax", "memory_per_channel"));
        let text = e.to_string();
        println!("{text}");
        assert!(text.starts_with("bmax: "), "{text}");
        assert!(text.contains(&bytes.to_string()), "{text}");
        assert!(
            text.contains("limits.memory_per_channel = 268435456"),
            "{text}"
        );
    }

    #[test]
    fn the_host_budget_counts_every_side_and_frees_exactly() {
        let mut b = MemoryBudget::new(100, 250);
        b.reserve(Side::Sending, 1, "bmax", 100).unwrap();
        b.reserve(Side::Receiving, 1, "mmax", 100).unwrap();
        let e = b.reserve(Side::Sending, 2, "bmax", 60).unwrap_err();
        assert_eq!((e.limit_key, e.in_use), ("memory_per_host", 200));
        assert_eq!(b.in_use(), 200, "a refused reservation records nothing");
        b.release(Side::Sending, 1);
        b.reserve(Side::Sending, 2, "bmax", 60).unwrap();
        assert_eq!(b.in_use(), 160);
        b.release(Side::Sending, 1);
        assert_eq!(b.in_use(), 160, "a second release frees nothing");
    }

    #[test]
    fn formulas_grow_with_the_request_and_saturate() {
        assert!(sending_bytes(1500, 2) > 3 * 1500);
        assert!(sending_bytes(1500, 1_000_000) > 1_000_001 * 1500);
        // Inline messages have no buffers: the ring only.
        assert!(sending_bytes(64, 1000) < sending_bytes(65, 1000));
        assert!(receiving_bytes(65_536, 1024) > 1024 * 65_536);
        assert!(sending_bytes(u32::MAX, u32::MAX) == u64::MAX);
    }

    #[test]
    fn machine_defaults_are_the_least_limit() {
        let m = MachineMemory {
            mem_total: Some(16 << 30),
            rlimit_as: None,
            rlimit_data: Some(8 << 30),
            cgroup_max: None,
        };
        assert_eq!(m.usable(), 8 << 30);
        assert_eq!(m.default_per_host(), 2 << 30);
        assert_eq!(m.default_per_channel(), 256 << 20);
        let small = MachineMemory {
            mem_total: Some(1 << 30),
            ..MachineMemory::default()
        };
        assert_eq!(small.default_per_channel(), 32 << 20);
        assert!(MachineMemory::detect().usable() > 0);
    }
}
