//! Durations and sizes as people write them: `500us`, `2ms`, `1s`; `1500`, `4KiB`.
//!
//! The CLI parses its arguments with [`parse_duration`] and [`parse_size`]; the daemon's
//! configuration and the control protocol accept either a plain integer (nanoseconds or
//! bytes) or such a string through the serde types [`Duration`] and [`Size`]. Zero and
//! negative values are refused here, so every layer above sees a positive number.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::admission::Nanos;

/// A duration or size that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum UnitError {
    /// Not a number with a known unit.
    #[error("'{text}' is not a {what} (examples: {examples})")]
    Syntax {
        /// The text as given.
        text: String,
        /// "duration" or "size".
        what: &'static str,
        /// Examples of the accepted syntax.
        examples: &'static str,
    },
    /// A unit that is not known.
    #[error("'{text}': unknown {what} unit '{unit}' (known: {known})")]
    Unit {
        /// The text as given.
        text: String,
        /// The unit as given.
        unit: String,
        /// "duration" or "size".
        what: &'static str,
        /// The known units.
        known: &'static str,
    },
    /// Zero or negative.
    #[error("{what} '{text}' must be greater than zero")]
    NotPositive {
        /// The text as given.
        text: String,
        /// "duration" or "size".
        what: &'static str,
    },
    /// Too large to represent.
    #[error("{what} '{text}' is too large")]
    TooLarge {
        /// The text as given.
        text: String,
        /// "duration" or "size".
        what: &'static str,
    },
}

const DURATION_UNITS: &str = "ns, us, ms, s, m";
const SIZE_UNITS: &str = "B, KiB, MiB, GiB, K, M, G, KB, MB, GB";

fn split_number(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (n, u) = s.split_at(at);
    (n, u.trim())
}

/// Parses a positive duration: a number (decimals allowed) with a unit `ns`, `us` (`µs`),
/// `ms`, `s` or `m`; a bare number is nanoseconds. Rounds to the nanosecond.
pub fn parse_duration(text: &str) -> Result<Nanos, UnitError> {
    let s = text.trim();
    let (num, unit) = split_number(s);
    let syntax = || UnitError::Syntax {
        text: text.to_owned(),
        what: "duration",
        examples: "500us, 2ms, 1s",
    };
    let v: f64 = num.parse().map_err(|_| syntax())?;
    let scale = match unit {
        "" | "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        other => {
            return Err(UnitError::Unit {
                text: text.to_owned(),
                unit: other.to_owned(),
                what: "duration",
                known: DURATION_UNITS,
            })
        }
    };
    to_positive(v * scale, text, "duration")
}

/// Parses a positive size in bytes: `1500`, `4KiB` (1024-based), `4K`/`4KB` (1000-based),
/// `1MiB`, `1MB`, `1GiB`, `1GB`, or with a `B` unit.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let (num, unit) = split_number(s);
    let syntax = || UnitError::Syntax {
        text: text.to_owned(),
        what: "size",
        examples: "1500, 4KiB, 1MB",
    };
    let v: f64 = num.parse().map_err(|_| syntax())?;
    let scale = match unit {
        "" | "B" | "b" => 1.0,
        "KiB" | "kiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "K" | "k" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        other => {
            return Err(UnitError::Unit {
                text: text.to_owned(),
                unit: other.to_owned(),
                what: "size",
                known: SIZE_UNITS,
            })
        }
    };
    to_positive(v * scale, text, "size")
}

fn to_positive(v: f64, text: &str, what: &'static str) -> Result<u64, UnitError> {
    if v.is_nan() || v < 0.5 {
        return Err(UnitError::NotPositive {
            text: text.to_owned(),
            what,
        });
    }
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(UnitError::TooLarge {
            text: text.to_owned(),
            what,
        });
    }
    Ok(v.round() as u64)
}

/// Formats nanoseconds with the largest unit that keeps the number readable.
pub fn fmt_ns(ns: Nanos) -> String {
    if ns >= 1_000_000_000 && ns % 1_000_000 == 0 {
        trim(ns as f64 / 1e9, "s")
    } else if ns >= 1_000_000 {
        trim(ns as f64 / 1e6, "ms")
    } else if ns >= 1_000 {
        trim(ns as f64 / 1e3, "us")
    } else {
        format!("{ns}ns")
    }
}

fn trim(v: f64, unit: &str) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{unit}")
}

/// Formats a byte count: exact KiB/MiB when it divides, else plain bytes.
pub fn fmt_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes >= KIB * KIB && bytes % (KIB * KIB) == 0 {
        format!("{}MiB", bytes / (KIB * KIB))
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{}KiB", bytes / KIB)
    } else {
        format!("{bytes}")
    }
}

/// A positive duration in nanoseconds; deserialises from an integer (ns) or a string with a
/// unit, serialises as integer nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub Nanos);

/// A positive size in bytes; deserialises from an integer or a string with a unit, serialises
/// as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_ns(self.0))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_size(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

struct UnitVisitor {
    what: &'static str,
    parse: fn(&str) -> Result<u64, UnitError>,
}

impl Visitor<'_> for UnitVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a positive {} (an integer, or a string with a unit)",
            self.what
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if v == 0 {
            return Err(E::custom(format!(
                "{} must be greater than zero",
                self.what
            )));
        }
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        if v <= 0 {
            return Err(E::custom(format!(
                "{} must be greater than zero, got {v}",
                self.what
            )));
        }
        Ok(v as u64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        Err(E::custom(format!(
            "{} must be an integer or a string with a unit, got {v}",
            self.what
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "duration",
            parse: parse_duration,
        })
        .map(Duration)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "size",
            parse: parse_size,
        })
        .map(Size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us"), Ok(500_000));
        assert_eq!(parse_duration("2ms"), Ok(2_000_000));
        assert_eq!(parse_duration("1s"), Ok(1_000_000_000));
        assert_eq!(parse_duration("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_duration("750"), Ok(750));
        assert!(matches!(
            parse_duration("0ms"),
            Err(UnitError::NotPositive { .. })
        ));
        assert!(matches!(
            parse_duration("-1ms"),
            Err(UnitError::NotPositive { .. })
        ));
        assert!(matches!(
            parse_duration("3 fortnights"),
            Err(UnitError::Unit { .. })
        ));
        assert!(matches!(
            parse_duration("ms"),
            Err(UnitError::Syntax { .. })
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("4 parsecs").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for ns in [1, 999, 1_000, 1_500, 500_000, 2_000_000, 1_000_000_000] {
            assert_eq!(parse_duration(&fmt_ns(ns)), Ok(ns), "{}", fmt_ns(ns));
        }
        assert_eq!(fmt_size(4096), "4KiB");
        assert_eq!(fmt_size(1500), "1500");
    }

    #[test]
    fn serde_accepts_both_forms_and_refuses_zero() {
        let d: Duration = serde_json::from_str("\"2ms\"").unwrap();
        assert_eq!(d, Duration(2_000_000));
        let d: Duration = serde_json::from_str("1000").unwrap();
        assert_eq!(d, Duration(1000));
        assert!(serde_json::from_str::<Duration>("0").is_err());
        assert!(serde_json::from_str::<Duration>("-5").is_err());
        assert!(serde_json::from_str::<Duration>("1.5").is_err());
        let s: Size = serde_json::from_str("\"4KiB\"").unwrap();
        assert_eq!(s, Size(4096));
    }
}
