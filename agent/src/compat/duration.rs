//! Durations written the Prometheus way (`1s`, `5m`, `1h30m`, `15d`, `1w`,
//! `100ms`: `model.Duration`), so users can copy values between Prometheus and
//! ngxprobe configs; the API's "float seconds or duration" parameters; and Go's
//! `time.Duration.String()` for templates.
use serde::{Deserialize, Deserializer};
use serde_with::{DeserializeFromStr, SerializeDisplay};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Units in the only order Prometheus accepts them, largest first.
const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// A duration with millisecond resolution, parsed and printed like
/// Prometheus' `model.Duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, SerializeDisplay, DeserializeFromStr)]
pub struct PromDuration(Duration);

impl PromDuration {
    pub const fn from_millis(ms: u64) -> Self {
        PromDuration(Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        PromDuration(Duration::from_secs(s))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Milliseconds, saturating at `i64::MAX` (timestamps are i64 ms).
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

/// `deserialize_with` for intervals that must not be zero (a zero tick
/// interval would spin).
pub fn deserialize_positive<'de, D: Deserializer<'de>>(d: D) -> Result<PromDuration, D::Error> {
    let duration = PromDuration::deserialize(d)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("must be greater than 0s"));
    }
    Ok(duration)
}

/// A Prometheus duration (`1h30m`) in milliseconds; `None` if it is not one.
pub fn parse_ms(s: &str) -> Option<i64> {
    s.parse::<PromDuration>().ok().map(PromDuration::as_millis_i64)
}

/// `model.ParseDurationAllowNegative`: a Prometheus duration with an optional
/// leading `-`, in milliseconds.
pub fn parse_ms_allow_negative(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(body) => parse_ms(body).map(|ms| -ms),
        None => parse_ms(s),
    }
}

/// A duration parameter as Prometheus's API reads it (`timeout`, `step`):
/// float seconds, or a Prometheus duration. Milliseconds.
pub fn parse_api_duration(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = (f * 1000.0).round();
        if !ms.is_finite() || ms.abs() > 9.2e18 {
            return Err(format!("cannot parse {s:?} to a valid duration. It overflows int64"));
        }
        return Ok(ms as i64);
    }
    parse_ms(s).ok_or_else(|| format!("cannot parse {s:?} to a valid duration"))
}

/// Go's `time.Duration.String()` of `ns` nanoseconds: `1h2m3.5s`, `1.5ms`, `0s`.
pub fn go_duration_string(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if u < 1_000_000_000 {
        // Sub-second: ns, µs, ms with fraction.
        let (unit, div) = if u < 1_000 {
            ("ns", 1u64)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&frac_string(u, div));
        out.push_str(unit);
    } else {
        let secs_total = u / 1_000_000_000;
        let frac_ns = u % 1_000_000_000;
        let h = secs_total / 3600;
        let m = (secs_total / 60) % 60;
        let sec = secs_total % 60;
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&frac_string(sec * 1_000_000_000 + frac_ns, 1_000_000_000));
        out.push('s');
    }
    out
}

/// `v / div` with the fraction's trailing zeros trimmed (`div` a power of ten).
fn frac_string(v: u64, div: u64) -> String {
    let int = v / div;
    let frac = v % div;
    if frac == 0 {
        return int.to_string();
    }
    let width = div.to_string().len() - 1;
    let f = format!("{frac:0width$}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

impl From<PromDuration> for Duration {
    fn from(d: PromDuration) -> Duration {
        d.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 100ms, 1s, 5m, 1h30m, 15d, 1w)")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl FromStr for PromDuration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseDurationError {
            input: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(fail("empty duration"));
        }
        // Prometheus allows a bare "0" and nothing else without a unit.
        if s == "0" {
            return Ok(PromDuration::default());
        }
        let mut rest = s;
        let mut next_unit = 0; // index into UNITS: each unit at most once, in order
        let mut total_ms: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail("expected a number"));
            }
            let number: u64 = rest[..digits].parse().map_err(|_| fail("number too large"))?;
            rest = &rest[digits..];
            // "ms" must be tried before "m".
            let Some((index, unit_ms, unit_len)) = UNITS
                .iter()
                .enumerate()
                .filter(|(_, (unit, _))| rest.starts_with(unit))
                .map(|(i, (unit, ms))| (i, *ms, unit.len()))
                .max_by_key(|&(_, _, len)| len)
            else {
                return Err(fail("missing or unknown unit (use ms, s, m, h, d, w or y)"));
            };
            if index < next_unit {
                return Err(fail("units must appear once each, largest first"));
            }
            next_unit = index + 1;
            rest = &rest[unit_len..];
            total_ms = number
                .checked_mul(unit_ms)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(|| fail("duration too large"))?;
        }
        Ok(PromDuration::from_millis(total_ms))
    }
}

impl fmt::Display for PromDuration {
    /// Same as Prometheus' `model.Duration.String()`: `1h30m`, `15d`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, unit_ms) in UNITS {
            if ms >= unit_ms {
                write!(f, "{}{}", ms / unit_ms, unit)?;
                ms %= unit_ms;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_and_go_durations() {
        assert_eq!(parse_api_duration("1.5"), Ok(1500));
        assert_eq!(parse_api_duration("1m30s"), Ok(90_000));
        assert!(parse_api_duration("30s1m").is_err());
        assert!(parse_api_duration("1e300").is_err());
        assert_eq!(parse_ms_allow_negative("-5m"), Some(-300_000));
        assert_eq!(go_duration_string(0), "0s");
        assert_eq!(go_duration_string(1_500_000), "1.5ms");
        assert_eq!(go_duration_string(-3_723_500_000_000), "-1h2m3.5s");
        assert_eq!(go_duration_string(999), "999ns");
        assert_eq!(go_duration_string(60_000_000_000), "1m0s");
    }

    fn ms(s: &str) -> u64 {
        s.parse::<PromDuration>()
            .map(|d| d.0.as_millis() as u64)
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn parses_prometheus_syntax() {
        assert_eq!(ms("1s"), 1_000);
        assert_eq!(ms("5m"), 300_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("15d"), 15 * 86_400_000);
        assert_eq!(ms("1w"), 7 * 86_400_000);
        assert_eq!(ms("100ms"), 100);
        assert_eq!(ms("1m30s500ms"), 90_500);
        assert_eq!(ms("1y"), 365 * 86_400_000);
        assert_eq!(ms("0"), 0);
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "1",
            "s",
            "1x",
            "1.5s",
            "-1s",
            "1s1m",
            "1m1m",
            "1 s",
            "5min",
            "99999999999999999999s",
        ] {
            assert!(bad.parse::<PromDuration>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn prints_like_prometheus() {
        for text in ["1s", "5m", "1h30m", "1w", "100ms", "1y", "1w1d1h1m1s1ms"] {
            assert_eq!(
                text.parse::<PromDuration>().map(|d| d.to_string()),
                Ok(text.to_string())
            );
        }
        assert_eq!(PromDuration::default().to_string(), "0s");
        assert_eq!(PromDuration::from_secs(90).to_string(), "1m30s");
        // Prometheus normalises to the largest units: 15d prints as 2w1d.
        assert_eq!(
            "15d".parse::<PromDuration>().map(|d| d.to_string()),
            Ok("2w1d".to_string())
        );
    }
}
