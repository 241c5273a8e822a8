//! Floats printed exactly as Go's `strconv.FormatFloat` prints them, in the
//! verbs Prometheus uses: `'g'` for the text exposition format and templates,
//! `'f'` for the HTTP API's JSON, `'e'`/`'E'` for alert values and promtool's
//! messages. Byte-identical output is what lets users diff ngxprobe against
//! Prometheus and nginx-prometheus-exporter.

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` with client_golang's text-format
/// special cases: `15585`, `1.5304375e+07`, `0.0001`, `1e-05`, `+Inf`, `NaN`,
/// and `0` for any zero (client_golang never writes `-0`).
pub fn format_text_value(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    format_g(v, None)
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

/// Decimal digits (no trailing zeros) and decimal-point position of `v`,
/// rounded to `prec` significant digits (None: shortest round-trip).
fn decimal_digits(v: f64, prec: Option<usize>) -> (String, i32) {
    let e = match prec {
        Some(p) => format!("{:.*e}", p.max(1) - 1, v.abs()),
        None => format!("{:e}", v.abs()),
    };
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    if digits == "0" {
        return ("0".into(), 1);
    }
    (digits, exp + 1)
}

/// Go's `%g` (`prec` None) / `%.Ng` (`Some(N)`) for a float64; also `%v`.
pub fn format_g(v: f64, prec: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let neg = v.is_sign_negative();
    let (digits, dp) = decimal_digits(v, prec);
    let nd = digits.len() as i32;
    let shortest = prec.is_none();
    let mut p = match prec {
        Some(p) => p.max(1) as i32,
        None => nd,
    };
    let mut eprec = p;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    if shortest {
        eprec = 6;
    }
    let exp = dp - 1;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        out.push_str(&digits[..1]);
        if p > 1 {
            out.push('.');
            out.push_str(&digits[1..(p as usize).min(digits.len())]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let ea = exp.abs();
        if ea < 10 {
            out.push('0');
        }
        out.push_str(&ea.to_string());
        return out;
    }
    if p > dp {
        p = nd;
    }
    let decimals = (p - dp).max(0) as usize;
    // Integer part.
    if dp <= 0 {
        out.push('0');
    } else {
        for i in 0..dp as usize {
            out.push(digits.as_bytes().get(i).map(|b| *b as char).unwrap_or('0'));
        }
    }
    if decimals > 0 {
        out.push('.');
        for i in 0..decimals as i32 {
            let idx = dp + i;
            out.push(if idx < 0 {
                '0'
            } else {
                digits.as_bytes().get(idx as usize).map(|b| *b as char).unwrap_or('0')
            });
        }
    }
    out
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`.
pub fn format_e(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let s = format!("{v:e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// Go's `strconv.FormatFloat(v, 'E', -1, 64)`.
pub fn format_e_upper(v: f64) -> String {
    format_e(v).to_uppercase().replace("INF", "Inf").replace("NAN", "NaN")
}

/// Formats a float the way Prometheus's JSON API and Go's
/// `strconv.FormatFloat(f, 'f', -1, 64)` do (shortest repr, no exponent).
pub fn format_f(v: f64) -> String {
    let mut s = String::new();
    push_f(&mut s, v);
    s
}

/// Appends [`format_f`]`(v)` without allocating. Digits come from
/// serde_json's float writer (Ryū: shortest round-trip digits, ties to even,
/// exactly as Go's shortest formatting — Rust's `Display` rounds some exact
/// ties the other way, e.g. -1519218211223713.25 → Go/Prometheus "…713.2",
/// Display "…713.3"); Ryū's exponent form is rewritten as plain decimal and
/// "2.0" becomes Go's "2".
pub fn push_f(o: &mut String, v: f64) {
    if v.is_nan() {
        o.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        o.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    let start = o.len();
    // SAFETY: serde_json writes ASCII only, so the String stays UTF-8.
    let res = serde_json::to_writer(unsafe { o.as_mut_vec() }, &v);
    if res.is_err() {
        o.truncate(start);
        o.push_str(&format!("{v}"));
        return;
    }
    let written = &o[start..];
    if let Some(e) = written.find('e') {
        let plain = expand_exponent(&written[..e], written[e + 1..].parse().unwrap_or(0));
        o.truncate(start);
        o.push_str(&plain);
    } else if written.ends_with(".0") {
        o.truncate(o.len() - 2);
    }
}

/// `mantissa`e`exp` (mantissa like "-1.25") as plain decimal.
fn expand_exponent(mantissa: &str, exp: i32) -> String {
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let int_len = m.find('.').unwrap_or(m.len()) as i32;
    let digits: String = m.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let pos = int_len + exp;
    let mut out = String::with_capacity(digits.len() + pos.unsigned_abs() as usize + 3);
    if neg {
        out.push('-');
    }
    if pos <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-pos) as usize));
        out.push_str(digits);
    } else if pos as usize >= digits.len() {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', pos as usize - digits.len()));
    } else {
        out.push_str(&digits[..pos as usize]);
        out.push('.');
        out.push_str(&digits[pos as usize..]);
    }
    out
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
