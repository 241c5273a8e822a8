//! Calendar arithmetic and Go's ways of printing a UTC time, shared by the
//! query (date functions), rules (templates, API) and notify (templates,
//! webhook payloads) stages.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(
            format_utc(1_705_407_980, 526_679_846, ' ', " +0000 UTC"),
            "2024-01-16 12:26:20.526679846 +0000 UTC"
        );
        assert_eq!(
            format_utc(1_705_407_980, 120_000_000, 'T', "Z"),
            "2024-01-16T12:26:20.12Z"
        );
        assert_eq!(format_utc(-1, 0, 'T', "Z"), "1969-12-31T23:59:59Z");
    }
}
