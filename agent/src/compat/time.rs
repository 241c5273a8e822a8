//! Time as Prometheus and Go handle it: milliseconds since the epoch (the
//! unit of every sample and API timestamp), RFC 3339 both ways, and Go's ways
//! of printing a UTC time (templates, JSON, webhook payloads).
use std::time::{SystemTime, UNIX_EPOCH};

/// What Go's JSON encoding prints for the zero `time.Time` (never evaluated, unset).
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Wall-clock milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

/// Milliseconds since the epoch of `t` (0 before 1970; saturates far in the future).
pub fn system_time_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01, the inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `secs` + `nanos` since the epoch as Go prints a UTC time: the date,
/// `sep`, the clock, the fraction without trailing zeros (none when zero),
/// then `suffix`. `' '`, `" +0000 UTC"` is `time.Time.String()`; `'T'`, `"Z"`
/// is RFC 3339 as Go's JSON encoding writes it.
pub fn format_utc(secs: i64, nanos: u32, sep: char, suffix: &str) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nanos != 0 {
        out.push('.');
        out.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    out.push_str(suffix);
    out
}

/// A millisecond timestamp as Go's JSON encoding of `time.Time` writes it
/// (RFC 3339, fraction trimmed); [`GO_ZERO_TIME`] for `None`.
pub fn rfc3339_ms(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => format_utc(ms.div_euclid(1000), ms.rem_euclid(1000) as u32 * 1_000_000, 'T', "Z"),
        None => GO_ZERO_TIME.to_string(),
    }
}

/// `t` as Go's JSON encoding of `time.Time` writes it (nanoseconds, trimmed).
pub fn rfc3339(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format_utc(
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
            'T',
            "Z",
        ),
        Err(_) => GO_ZERO_TIME.to_string(),
    }
}

/// `t` as go-openapi's strfmt.DateTime: RFC 3339 with exactly three fraction
/// digits (what Prometheus posts to Alertmanager).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let ms = system_time_ms(t);
    let s = format_utc(ms.div_euclid(1000), 0, 'T', "");
    format!("{s}.{:03}Z", ms.rem_euclid(1000))
}

/// How Go prints a UTC `time.Time`: `2024-01-16 12:26:20.526679846 +0000 UTC`.
pub fn go_time(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(_) => (0, 0),
    };
    format_utc(secs, nanos, ' ', " +0000 UTC")
}

/// Parses RFC 3339 (`2024-01-16T12:26:20.5Z`, `...+02:00`) to milliseconds
/// since the epoch; fractions beyond milliseconds are truncated. `None` for
/// anything else, including non-ASCII text and out-of-range timestamps.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    // ASCII checked above: every byte index is a char boundary.
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i];
        let padded: String = digits.chars().chain(std::iter::repeat('0')).take(3).collect();
        frac_ms = padded.parse().ok()?;
    }
    let off_min = match &s[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && o.as_bytes()[3] == b':' => {
            let v = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d)
        .checked_mul(86_400)?
        .checked_add(h * 3600 + mi * 60 + se - off_min * 60)?;
    secs.checked_mul(1000)?.checked_add(frac_ms)
}

/// A timestamp parameter as Prometheus's API reads it: Unix seconds with an
/// optional fraction, or RFC 3339. Milliseconds since the epoch.
pub fn parse_api_time(s: &str) -> Result<i64, String> {
    let err = || format!("cannot parse {s:?} to a valid timestamp");
    if let Ok(f) = s.parse::<f64>() {
        let ms = (f * 1000.0).round();
        if !ms.is_finite() || ms.abs() > 9.2e18 {
            return Err(err());
        }
        return Ok(ms as i64);
    }
    parse_rfc3339(s).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(
            format_utc(1_705_407_980, 526_679_846, ' ', " +0000 UTC"),
            "2024-01-16 12:26:20.526679846 +0000 UTC"
        );
        assert_eq!(
            format_utc(1_705_407_980, 120_000_000, 'T', "Z"),
            "2024-01-16T12:26:20.12Z"
        );
        assert_eq!(format_utc(-1, 0, 'T', "Z"), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_ms(Some(1_705_407_980_120)), "2024-01-16T12:26:20.12Z");
        assert_eq!(rfc3339_ms(None), GO_ZERO_TIME);
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_705_407_980_005);
        assert_eq!(rfc3339_millis(t), "2024-01-16T12:26:20.005Z");
        assert_eq!(rfc3339(t), "2024-01-16T12:26:20.005Z");
        assert_eq!(go_time(t), "2024-01-16 12:26:20.005 +0000 UTC");
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("2024-01-16T12:26:20Z"), Some(1_705_407_980_000));
        assert_eq!(parse_rfc3339("2024-01-16T12:26:20.12Z"), Some(1_705_407_980_120));
        assert_eq!(parse_rfc3339("2024-01-16T14:26:20.1234+02:00"), Some(1_705_407_980_123));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1000));
        for bad in [
            "2024-01-16T12:26:20",
            "2024-01-16T12:26:20.Z",
            "2024-13-16T12:26:20Z",
            "2024-01-16T12:26:20+0200",
            "2024-01-16T12:26:20+0é:0",
            "2024-01-16T12:26:20é0000",
            "2024-01-16T12:26:2é",
            "+024-01-16T12:26:20Z",
            "9999999999-01-16T12:26:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_api_times() {
        assert_eq!(parse_api_time("1.5"), Ok(1500));
        assert_eq!(parse_api_time("2024-01-16T12:26:20Z"), Ok(1_705_407_980_000));
        assert!(parse_api_time("1e300").is_err());
        assert!(parse_api_time("NaN").is_err());
        assert!(parse_api_time("soon").is_err());
    }
}
