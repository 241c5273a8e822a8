//! JSON of query answers, written straight into a string with Prometheus's
//! shapes and number formats.
use crate::query::QueryResult;
use crate::series::Labels;

/// The success body of a query answer (`{"status":"success","data":...}`),
/// written straight into a string (building a `serde_json::Value` tree costs
/// more than evaluating a large range query). Same shapes and number formats
/// as Prometheus. `limit` > 0 keeps at most that many series (the API's
/// `limit` parameter); 0 keeps all.
pub fn result_body(r: &QueryResult, limit: usize) -> String {
    let lim = |n: usize| if limit == 0 { n } else { n.min(limit) };
    let mut o = String::with_capacity(64);
    o.push_str(r#"{"status":"success","data":{"resultType":"#);
    let point = |o: &mut String, t: i64, v: f64| {
        o.push('[');
        push_ts(o, t);
        o.push_str(",\"");
        crate::compat::float::push_f(o, v);
        o.push_str("\"]");
    };
    match r {
        QueryResult::Scalar(t, v) => {
            o.push_str(r#""scalar","result":"#);
            point(&mut o, *t, *v);
        }
        QueryResult::String(t, s) => {
            o.push_str(r#""string","result":["#);
            push_ts(&mut o, *t);
            o.push(',');
            push_str(&mut o, s);
            o.push(']');
        }
        QueryResult::Vector(vs) => {
            o.push_str(r#""vector","result":["#);
            for (i, (l, t, v)) in vs.iter().take(lim(vs.len())).enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str(r#"{"metric":"#);
                push_labels(&mut o, l);
                o.push_str(r#","value":"#);
                point(&mut o, *t, *v);
                o.push('}');
            }
            o.push(']');
        }
        QueryResult::Matrix(m) => {
            o.push_str(r#""matrix","result":["#);
            let points: usize = m.iter().take(lim(m.len())).map(|s| s.samples.len()).sum();
            // `[1763712000.123,"0.13333333333333333"],` is ~40 bytes: one
            // allocation instead of a doubling (and a 10+ MB copy) at the end.
            o.reserve(points * 42);
            for (i, s) in m.iter().take(lim(m.len())).enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str(r#"{"metric":"#);
                push_labels(&mut o, &s.labels);
                o.push_str(r#","values":["#);
                for (k, (t, v)) in s.samples.iter().enumerate() {
                    if k > 0 {
                        o.push(',');
                    }
                    point(&mut o, *t, *v);
                }
                o.push_str("]}");
            }
            o.push(']');
        }
    }
    o.push_str("}}");
    o
}

/// Unix seconds as Prometheus writes them: `1700000000`, `1700000000.5`
/// (no allocation: this runs once per point of a range query).
fn push_ts(o: &mut String, t: i64) {
    use std::fmt::Write as _;
    if t < 0 {
        // Exact and simple for the rare negative timestamp.
        let _ = write!(o, "{}", t as f64 / 1000.0);
        return;
    }
    let (mut s, ms) = (t / 1000, t % 1000);
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (s % 10) as u8;
        s /= 10;
        if s == 0 {
            break;
        }
    }
    o.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
    if ms != 0 {
        let d = [
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
        ];
        let n = if ms % 100 == 0 {
            2
        } else if ms % 10 == 0 {
            3
        } else {
            4
        };
        o.push_str(std::str::from_utf8(&d[..n]).unwrap_or(""));
    }
}

fn push_str(o: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        o.push('"');
        o.push_str(s);
        o.push('"');
    } else {
        o.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

fn push_labels(o: &mut String, l: &Labels) {
    o.push('{');
    for (i, (k, v)) in l.0.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        push_str(o, k);
        o.push(':');
        push_str(o, v);
    }
    o.push('}');
}
