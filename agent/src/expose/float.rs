//! Sample values formatted exactly as Prometheus' Go client writes them, so
//! /metrics is byte-identical to nginx-prometheus-exporter's for equal values.

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` with client_golang's text-format
/// special cases: `15585`, `1.5304375e+07`, `0.0001`, `1e-05`, `+Inf`, `NaN`.
pub fn format_text_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if v == 0.0 {
        // Covers -0.0 too: client_golang writes "0" for any zero.
        return "0".to_string();
    }
    // Rust's `{:e}` yields the shortest round-tripping digits, like Go's -1 precision.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(24);
    if v < 0.0 {
        out.push('-');
    }
    // Go's %g with shortest precision switches to %e when exp < -4 || exp >= 6.
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if exp >= 0 {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', int_len - digits.len()));
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        out.push_str(&digits);
    }
    out
}

/// client_golang's OpenMetrics variant: integral values get a `.0`
/// (`15585.0`), since OpenMetrics distinguishes ints and floats.
pub fn format_openmetrics_value(v: f64) -> String {
    let text = format_text_value(v);
    if v.is_finite() && !text.contains(['e', '.']) {
        text + ".0"
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go_format_float_g() {
        // Expected strings produced by Go's strconv.FormatFloat(v, 'g', -1, 64).
        let cases: &[(f64, &str)] = &[
            (15585.0, "15585"),
            (15304375.0, "1.5304375e+07"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.0, "0"),
            (-0.0, "0"),
            (100000.0, "100000"),
            (999999.0, "999999"),
            (1000000.0, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (-42.5, "-42.5"),
            (1e21, "1e+21"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1713456789.123, "1.713456789123e+09"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for &(v, want) in cases {
            assert_eq!(format_text_value(v), want, "value {v:?}");
        }
    }

    #[test]
    fn openmetrics_marks_floats() {
        assert_eq!(format_openmetrics_value(15585.0), "15585.0");
        assert_eq!(format_openmetrics_value(0.0), "0.0");
        assert_eq!(format_openmetrics_value(1.0), "1.0");
        assert_eq!(format_openmetrics_value(-1.0), "-1.0");
        assert_eq!(format_openmetrics_value(0.25), "0.25");
        assert_eq!(format_openmetrics_value(15304375.0), "1.5304375e+07");
        assert_eq!(format_openmetrics_value(f64::INFINITY), "+Inf");
        assert_eq!(format_openmetrics_value(f64::NAN), "NaN");
    }
}
