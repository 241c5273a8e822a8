//! `ngxprobe query 'EXPR'`: runs a query against a running agent's HTTP API
//! or directly over a reader (a data dir opened by the store), and prints a table.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value as J;

use super::{QueryOptions, QueryResult, instant_query};
use crate::compat::{
    float::format_f,
    time::{now_ms, parse_api_time},
};
use crate::series::SeriesReader;

pub enum QueryTarget<'a> {
    /// `host:port` of a running agent (loopback or wherever it listens).
    Http(String),
    /// A reader over local data (e.g. the store opened read-only on a data dir).
    Reader(&'a dyn SeriesReader),
}

/// Runs `expr` at `time` (Unix seconds or RFC 3339; default now) and writes a table.
pub fn run_query_cli(target: QueryTarget, expr: &str, time: Option<&str>, out: &mut dyn Write) -> Result<(), String> {
    let t = match time {
        Some(s) => parse_api_time(s)?,
        None => now_ms(),
    };
    let rows: Vec<(String, String)> = match target {
        QueryTarget::Reader(r) => {
            match instant_query(r, expr, t, &QueryOptions::default()).map_err(|e| e.to_string())? {
                QueryResult::Scalar(_, v) => vec![("scalar".into(), format_f(v))],
                QueryResult::String(_, s) => vec![("string".into(), s)],
                QueryResult::Vector(v) => v.into_iter().map(|(l, _, x)| (l.to_string(), format_f(x))).collect(),
                QueryResult::Matrix(m) => m
                    .into_iter()
                    .map(|s| {
                        let pts: Vec<String> = s
                            .samples
                            .iter()
                            .map(|(t, v)| format!("{} @{}", format_f(*v), *t as f64 / 1000.0))
                            .collect();
                        (s.labels.to_string(), pts.join(", "))
                    })
                    .collect(),
            }
        }
        QueryTarget::Http(addr) => {
            let q: String = serde_urlencoded::to_string([("query", expr), ("time", &format!("{}", t as f64 / 1000.0))])
                .map_err(|e| e.to_string())?;
            let body = http_get(&addr, &format!("/api/v1/query?{q}"))?;
            let v: J = serde_json::from_str(&body).map_err(|e| format!("bad response: {e}"))?;
            if v["status"] != "success" {
                return Err(format!(
                    "{}: {}",
                    v["errorType"].as_str().unwrap_or("error"),
                    v["error"].as_str().unwrap_or("")
                ));
            }
            rows_from_json(&v["data"])
        }
    };
    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(6);
    writeln!(out, "{:<w$}  VALUE", "SERIES").map_err(|e| e.to_string())?;
    for (l, v) in rows {
        writeln!(out, "{l:<w$}  {v}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn fmt_metric(m: &J) -> String {
    let obj = m.as_object().cloned().unwrap_or_default();
    let name = obj.get("__name__").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let rest: Vec<String> = obj
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={}", v))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

fn rows_from_json(d: &J) -> Vec<(String, String)> {
    let r = &d["result"];
    match d["resultType"].as_str() {
        Some("scalar") | Some("string") => vec![(
            d["resultType"].as_str().unwrap_or("").into(),
            r[1].as_str().unwrap_or("").into(),
        )],
        Some("vector") => r
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (fmt_metric(&s["metric"]), s["value"][1].as_str().unwrap_or("").into()))
            .collect(),
        _ => r
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let pts: Vec<String> = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{} @{}", p[1].as_str().unwrap_or(""), p[0]))
                    .collect();
                (fmt_metric(&s["metric"]), pts.join(", "))
            })
            .collect(),
    }
}

/// One series of an instant-vector result as the API answered: its labels and value.
pub type VectorRow = (std::collections::BTreeMap<String, String>, f64);

/// Asks a running agent's `/api/v1/query` for `expr` now; the series of an
/// instant vector (`diagnose`, `top`). Values the API writes as strings
/// (`NaN`, `+Inf`) parse as such.
pub fn instant_vector(addr: &str, expr: &str) -> Result<Vec<VectorRow>, String> {
    let qs = serde_urlencoded::to_string([("query", expr)]).map_err(|e| e.to_string())?;
    let body = http_get(addr, &format!("/api/v1/query?{qs}"))?;
    let v: J = serde_json::from_str(&body).map_err(|e| format!("{expr}: bad response from {addr}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{expr}: {}", v["error"].as_str().unwrap_or("query failed")));
    }
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let labels = s["metric"]
                .as_object()?
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((labels, value))
        })
        .collect())
}

/// Minimal HTTP/1.1 GET (the agent's API speaks plain HTTP on its listen address).
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(150))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}
