//! Built-in traffic sources: when a channel's application submits, for the demo, the tests
//! and the benchmarks.
//!
//! A [`Source`] is a deterministic schedule of submit times; the caller asks how many messages
//! are due at `now` and submits them. Poisson arrivals use a seeded SplitMix64 generator (a
//! dozen lines; reproducible runs matter more here than a general-purpose RNG).

use crate::time::Nanos;

/// The shape of a source's traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// One message every `interval` (at Imin: exactly the spec's rate).
    Periodic {
        /// Interval, ns.
        interval: Nanos,
    },
    /// Exponentially distributed gaps with mean `mean`.
    Poisson {
        /// Mean interval, ns.
        mean: Nanos,
    },
    /// A violator: `multiple` times the rate of one message every `imin`.
    Greedy {
        /// The spec's Imin, ns.
        imin: Nanos,
        /// How many times faster than the spec.
        multiple: u32,
    },
    /// `size` messages at once every `every` ns (bursts of Bmax).
    Bursts {
        /// Messages per burst.
        size: u32,
        /// Period of bursts, ns.
        every: Nanos,
    },
}

/// A source's state.
#[derive(Clone, Debug)]
pub struct Source {
    pattern: Pattern,
    next_at: Nanos,
    rng: u64,
    /// Messages made due so far.
    pub generated: u64,
}

impl Source {
    /// A source starting at `start`, seeded with `seed` (Poisson only).
    pub fn new(pattern: Pattern, start: Nanos, seed: u64) -> Self {
        Self {
            pattern,
            next_at: start,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            generated: 0,
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// When the next message is due.
    pub fn next_at(&self) -> Nanos {
        self.next_at
    }

    fn next_f64(&mut self) -> f64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// How many messages are due at `now` (advancing past them).
    pub fn due(&mut self, now: Nanos) -> u64 {
        let mut n = 0;
        while self.next_at <= now {
            match self.pattern {
                Pattern::Periodic { interval } => {
                    n += 1;
                    self.next_at += interval.max(1);
                }
                Pattern::Poisson { mean } => {
                    n += 1;
                    let gap = (-(self.next_f64().ln()) * mean as f64) as Nanos;
                    self.next_at += gap.max(1);
                }
                Pattern::Greedy { imin, multiple } => {
                    n += 1;
                    self.next_at += (imin / multiple.max(1) as u64).max(1);
                }
                Pattern::Bursts { size, every } => {
                    n += size as u64;
                    self.next_at += every.max(1);
                }
            }
        }
        self.generated += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_and_greedy_rates() {
        let mut p = Source::new(Pattern::Periodic { interval: 100 }, 0, 1);
        assert_eq!(p.due(1000), 11);
        let mut g = Source::new(
            Pattern::Greedy {
                imin: 100,
                multiple: 5,
            },
            0,
            1,
        );
        assert_eq!(g.due(1000), 51);
    }

    #[test]
    fn bursts_come_whole() {
        let mut b = Source::new(
            Pattern::Bursts {
                size: 4,
                every: 1000,
            },
            0,
            1,
        );
        assert_eq!(b.due(0), 4);
        assert_eq!(b.due(999), 0);
        assert_eq!(b.due(1000), 4);
    }

    #[test]
    fn poisson_mean_is_close() {
        let mut p = Source::new(Pattern::Poisson { mean: 1000 }, 0, 7);
        let n = p.due(10_000_000);
        assert!((9_000..=11_000).contains(&n), "{n}");
    }
}
