//! Durations as the concise form writes them: `"250ms"`, `"5s"`, `"1.5s"`,
//! `"2m"`, `"1h"`.
//!
//! This file owns parsing and the conversion to the protobuf `Duration`. It does
//! not decide which durations must be positive: that is `validate`'s job, next
//! to the field that needs it.
//!
//! A bare number is rejected on purpose: `timeout: 5` reads as seconds to one
//! person and milliseconds to another, so the error asks for `"5s"`.

use std::fmt;

use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The largest duration protobuf can carry (10,000 years, in seconds).
const MAX_SECONDS: u128 = 315_576_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// A non-negative duration with nanosecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration {
    nanos: u128,
}

impl Duration {
    /// A duration of whole seconds (used for defaults).
    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            nanos: secs as u128 * NANOS_PER_SECOND,
        }
    }

    /// Whether this is the zero duration.
    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// As a std `Duration` (saturating; [`parse`] bounds durations far below).
    pub fn to_std(self) -> std::time::Duration {
        let secs = u64::try_from(self.nanos / NANOS_PER_SECOND).unwrap_or(u64::MAX);
        let nanos = u32::try_from(self.nanos % NANOS_PER_SECOND).unwrap_or(0);
        std::time::Duration::new(secs, nanos)
    }

    /// The protobuf form. [`parse`] bounds durations to what protobuf can
    /// carry, so the conversions below do not truncate.
    pub fn to_proto(self) -> ProtoDuration {
        ProtoDuration {
            seconds: i64::try_from(self.nanos / NANOS_PER_SECOND).unwrap_or(i64::MAX),
            nanos: i32::try_from(self.nanos % NANOS_PER_SECOND).unwrap_or(0),
        }
    }
}

/// Parses `"<number><unit>"`, where the number may have a decimal fraction and
/// the unit is one of `ms`, `s`, `m`, `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3_600 * NANOS_PER_SECOND,
        "" if !number.is_empty() => {
            return Err(format!(
                "duration `{text}` has no unit: write \"{number}s\" (units: ms, s, m, h)"
            ))
        }
        _ => {
            return Err(format!(
                "invalid duration `{text}`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""
            ))
        }
    };
    let invalid = || {
        format!(
            "invalid duration `{text}`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""
        )
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(invalid());
    }
    let too_long = || format!("duration `{text}` is too long (at most 10000 years)");
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
    if !fraction.is_empty() {
        if fraction.len() > 18 {
            return Err(format!(
                "duration `{text}` is more precise than a nanosecond"
            ));
        }
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
        let fraction: u128 = fraction.parse().map_err(|_| invalid())?;
        let scaled = fraction * unit_nanos;
        if !scaled.is_multiple_of(scale) {
            return Err(format!(
                "duration `{text}` is more precise than a nanosecond"
            ));
        }
        nanos += scaled / scale;
    }
    if nanos / NANOS_PER_SECOND > MAX_SECONDS {
        return Err(too_long());
    }
    Ok(Duration { nanos })
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl DurationVisitor {
    fn bare_number<E: de::Error>(number: impl fmt::Display) -> E {
        E::custom(format!(
            "a bare number is not a duration: write \"{number}s\" (units: ms, s, m, h)"
        ))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"5s\" or \"250ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(Self::bare_number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(Self::bare_number(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(Self::bare_number(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let table = [
            ("5s", 5, 0),
            ("250ms", 0, 250_000_000),
            ("1.5s", 1, 500_000_000),
            ("2m", 120, 0),
            ("1h", 3600, 0),
            ("0.25h", 900, 0),
            ("0s", 0, 0),
            ("1.000000001s", 1, 1),
            ("1.5ms", 0, 1_500_000),
        ];
        for (text, seconds, nanos) in table {
            assert_eq!(
                parse(text).map(Duration::to_proto),
                Ok(ProtoDuration { seconds, nanos }),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_bad_durations() {
        let table = [
            ("5", "duration `5` has no unit: write \"5s\" (units: ms, s, m, h)"),
            ("", "invalid duration ``: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""),
            ("5d", "invalid duration `5d`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""),
            ("-1s", "invalid duration `-1s`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""),
            (".5s", "invalid duration `.5s`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""),
            ("1.s", "invalid duration `1.s`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""),
            ("1.2.3s", "invalid duration `1.2.3s`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\""),
            ("0.0000000001s", "duration `0.0000000001s` is more precise than a nanosecond"),
            ("99999999999999h", "duration `99999999999999h` is too long (at most 10000 years)"),
        ];
        for (text, message) in table {
            assert_eq!(parse(text), Err(message.to_string()), "{text}");
        }
    }

    #[test]
    fn bare_numbers_ask_for_a_unit() {
        let err = serde_yaml::from_str::<Duration>("5")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a bare number is not a duration: write \"5s\""),
            "{err}"
        );
        let err = serde_yaml::from_str::<Duration>("1.5")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a bare number is not a duration: write \"1.5s\""),
            "{err}"
        );
        assert_eq!(
            serde_yaml::from_str::<Duration>("\"5s\"").ok(),
            Some(Duration::from_secs(5))
        );
    }
}
