//! Human durations as written in job files and on the command line: `500ms`, `5s`,
//! `1m30s`, `2h`, `1d`. A bare number is refused, so that `timeout = 30` cannot be
//! misread as milliseconds or minutes.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parse a duration such as `1m30s`. Units: `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError(
            "must be a duration like \"30s\", \"5m\" or \"1h30m\", got an empty string".into(),
        ));
    }
    let bad = || {
        DurationError(format!(
            "must be a duration like \"30s\", \"5m\" or \"1h30m\" (units ms, s, m, h, d), got {input:?}"
        ))
    };
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let n: u64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(|| DurationError(format!("duration {input:?} is too large")))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| DurationError(format!("duration {input:?} is too large")))?;
    }
    Ok(total)
}

/// Formats a duration in the shortest form [`parse_duration`] reads back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = total_ms;
        for (unit, ms) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if rest >= ms {
                write!(f, "{}{}", rest / ms, unit)?;
                rest %= ms;
            }
        }
        Ok(())
    }
}

/// Serde helpers for a `Duration` written as a human string.
pub mod serde_human {
    use super::{HumanDuration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialize as e.g. `"1m30s"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&HumanDuration(*d))
    }

    /// Deserialize from e.g. `"1m30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for an `Option<Duration>` written as a human string.
pub mod serde_human_opt {
    use super::{HumanDuration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialize as e.g. `"1m30s"`, or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&HumanDuration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from e.g. `"1m30s"`, or nothing.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        for bad in ["", "30", "5x", "s", "1.5s", "-1s", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for ms in [1u64, 999, 1000, 1500, 60_000, 90_000, 3_600_000, 86_400_001] {
            let d = Duration::from_millis(ms);
            let s = HumanDuration(d).to_string();
            assert_eq!(parse_duration(&s), Ok(d), "{s}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "1m30s");
    }
}
