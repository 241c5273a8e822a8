//! `ngxprobe query 'EXPR'`: runs a query against a running agent's HTTP API
//! or directly over a reader (a data dir opened by the store), and prints a table.
use std::{io::Write, time::Duration};

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
/// instant vector (`diagnose`). Values the API writes as strings (`NaN`,
/// `+Inf`) parse as such.
pub fn instant_vector(addr: &str, expr: &str) -> Result<Vec<VectorRow>, String> {
    let body = http_get(addr, &instant_query_path(expr)?)?;
    parse_vector(addr, expr, &body)
}

/// The API path of an instant query for `expr` now.
pub fn instant_query_path(expr: &str) -> Result<String, String> {
    let qs = serde_urlencoded::to_string([("query", expr)]).map_err(|e| e.to_string())?;
    Ok(format!("/api/v1/query?{qs}"))
}

/// The series of an instant-vector answer, or the API's error.
pub fn parse_vector(addr: &str, expr: &str, body: &str) -> Result<Vec<VectorRow>, String> {
    let v: J = serde_json::from_str(body).map_err(|e| format!("{expr}: bad response from {addr}: {e}"))?;
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

/// Longest a one-shot command (`query --addr`, `diagnose`) waits for one
/// answer: the API's longest query (its 2 min timeout) and some margin. The
/// connect is bounded much tighter by the client (5 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(150);

/// GET on a running agent's plain-HTTP API (`query --addr`, `diagnose`),
/// every wait bounded (see [`ApiClient`]). The body is returned whatever the
/// status: the API's errors are JSON the callers read.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let api = ApiClient::new(CLI_TIMEOUT)?;
    api.block_on(api.get(addr, path))
}

/// The client of the agent's API used by the commands that talk to a
/// running agent: the outbound client of [`crate::http_client`] (connect
/// bounded to 5 s, the whole exchange to `timeout`) on a runtime of the
/// calling thread, so that a dead or hung agent costs at most `timeout`.
pub struct ApiClient {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an HTTP client runtime: {e}"))?;
        let client = crate::http_client::build_client(&crate::http_client::HttpConfig {
            timeout: Some(crate::compat::PromDuration::from_millis(timeout.as_millis() as u64)),
            ..Default::default()
        })?;
        Ok(ApiClient { rt, client, timeout })
    }

    /// Runs `f` (e.g. [`ApiClient::get`]) to completion on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// `GET http://{addr}{path}`: the body (whatever the status), or why
    /// there is none (`connect ADDR: Connection refused (os error 111)`,
    /// `no answer within 3s`).
    pub async fn get(&self, addr: &str, path: &str) -> Result<String, String> {
        let url = format!("http://{addr}{path}");
        let resp = self.client.get(&url).send().await.map_err(|e| self.why(addr, e))?;
        resp.text().await.map_err(|e| self.why(addr, e))
    }

    /// A transport error as `connect ADDR: <cause>`: reqwest's own message
    /// names the whole URL (long) and leaves out the cause, which is the
    /// innermost error (`Connection refused (os error 111)`).
    fn why(&self, addr: &str, e: reqwest::Error) -> String {
        // A connect that timed out is a connect error (5 s, not `timeout`).
        if e.is_timeout() && !e.is_connect() {
            let t = crate::compat::PromDuration::from_millis(self.timeout.as_millis() as u64);
            return format!("no answer within {t}");
        }
        let kind = if e.is_connect() { "connect" } else { "request to" };
        let mut root: &dyn std::error::Error = &e;
        while let Some(c) = root.source() {
            root = c;
        }
        format!("{kind} {addr}: {root}")
    }
}
