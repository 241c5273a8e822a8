//! Message bodies (Slack, webhook) and HTTP delivery with retries.
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value as Json, json};

use super::clock::{NEVER, instant_after};
use super::compile::{SlackTemplates, UrlSource};
use super::config::HttpConfig;
use super::template::TemplateData;
use crate::compat::time::{GO_ZERO_TIME, rfc3339};

/// The Slack webhook body, field for field as Alertmanager 0.25 builds it
/// (empty optional fields omitted, `text`/`fallback`/`callback_id`/`footer`
/// always present).
pub fn slack_body(t: &SlackTemplates, data: &TemplateData) -> Result<Json, String> {
    let v = data.to_value();
    let r = |f: &super::template::FieldTemplate| f.render(&v);
    let mut att = Map::new();
    let opt = |m: &mut Map<String, Json>, k: &str, s: String| {
        if !s.is_empty() {
            m.insert(k.to_string(), Json::String(s));
        }
    };
    opt(&mut att, "title", r(&t.title)?);
    opt(&mut att, "title_link", r(&t.title_link)?);
    opt(&mut att, "pretext", r(&t.pretext)?);
    att.insert("text".into(), Json::String(r(&t.text)?));
    att.insert("fallback".into(), Json::String(r(&t.fallback)?));
    att.insert("callback_id".into(), Json::String(r(&t.callback_id)?));
    if !t.fields.is_empty() {
        let mut fields = Vec::new();
        for (title, value, short) in &t.fields {
            let mut f = Map::new();
            opt(&mut f, "title", r(title)?);
            opt(&mut f, "value", r(value)?);
            f.insert("short".into(), Json::Bool(*short));
            fields.push(Json::Object(f));
        }
        att.insert("fields".into(), Json::Array(fields));
    }
    opt(&mut att, "image_url", r(&t.image_url)?);
    opt(&mut att, "thumb_url", r(&t.thumb_url)?);
    att.insert("footer".into(), Json::String(r(&t.footer)?));
    opt(&mut att, "color", r(&t.color)?);
    let mrkdwn: Vec<String> = if t.mrkdwn_in.is_empty() {
        vec!["fallback".into(), "pretext".into(), "text".into()]
    } else {
        t.mrkdwn_in.clone()
    };
    att.insert("mrkdwn_in".into(), json!(mrkdwn));

    let mut req = Map::new();
    opt(&mut req, "channel", r(&t.channel)?);
    opt(&mut req, "username", r(&t.username)?);
    opt(&mut req, "icon_emoji", r(&t.icon_emoji)?);
    opt(&mut req, "icon_url", r(&t.icon_url)?);
    if t.link_names {
        req.insert("link_names".into(), Json::Bool(true));
    }
    req.insert("attachments".into(), Json::Array(vec![Json::Object(att)]));
    Ok(Json::Object(req))
}

/// Alertmanager's webhook message (version 4).
pub fn webhook_body(data: &TemplateData, group_key: &str, max_alerts: u64) -> Json {
    let total = data.alerts.len() as u64;
    let keep = if max_alerts > 0 { total.min(max_alerts) } else { total } as usize;
    let alerts: Vec<Json> = data.alerts[..keep]
        .iter()
        .map(|a| {
            json!({
                "status": a.status,
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.starts_at),
                "endsAt": a.ends_at.map(rfc3339).unwrap_or_else(|| GO_ZERO_TIME.to_string()),
                "generatorURL": a.generator_url,
                "fingerprint": format!("{:016x}", a.fingerprint),
            })
        })
        .collect();
    json!({
        "receiver": data.receiver,
        "status": data.status,
        "alerts": alerts,
        "groupLabels": data.group_labels,
        "commonLabels": data.common_labels,
        "commonAnnotations": data.common_annotations,
        "externalURL": data.external_url,
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": total - keep as u64,
    })
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone)]
pub struct AttemptError {
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    pub message: String,
}

pub fn build_client(http: &HttpConfig) -> Result<reqwest::Client, String> {
    super::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(http.timeout.map(|d| d.as_duration()).unwrap_or(Duration::from_secs(10)))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("ngxprobe/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if http.follow_redirects == Some(false) {
        b = b.redirect(reqwest::redirect::Policy::none());
    }
    if let Some(p) = &http.proxy_url {
        b = b.proxy(reqwest::Proxy::all(p.expose()).map_err(|_| "invalid proxy_url".to_string())?);
    }
    if let Some(tls) = &http.tls_config {
        if tls.insecure_skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| e.to_string())
}

/// The `Authorization` header `http` asks for; `*_file` secrets are read
/// on every call, so rotated files take effect without a restart.
pub fn auth_header(http: &HttpConfig) -> Result<Option<String>, String> {
    let read = |p: &std::path::Path| {
        crate::secret::load_secret_file(p)
            .map(|s| s.expose().to_string())
            .map_err(|e| e.to_string())
    };
    if let Some(b) = &http.basic_auth {
        let pw = match (&b.password, &b.password_file) {
            (Some(p), _) => p.expose().to_string(),
            (None, Some(f)) => read(f)?,
            _ => String::new(),
        };
        return Ok(Some(format!("Basic {}", base64(&format!("{}:{pw}", b.username)))));
    }
    if let Some(a) = &http.authorization {
        let cred = match (&a.credentials, &a.credentials_file) {
            (Some(c), _) => c.expose().to_string(),
            (None, Some(f)) => read(f)?,
            _ => String::new(),
        };
        return Ok(Some(format!("{} {cred}", a.kind.as_deref().unwrap_or("Bearer"))));
    }
    match (&http.bearer_token, &http.bearer_token_file) {
        (Some(t), _) => Ok(Some(format!("Bearer {}", t.expose()))),
        (None, Some(f)) => Ok(Some(format!("Bearer {}", read(f)?))),
        _ => Ok(None),
    }
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One POST. Never puts the URL in an error (it is a secret).
pub async fn attempt(
    client: &reqwest::Client,
    url: &UrlSource,
    http: &HttpConfig,
    body: &[u8],
) -> Result<(), AttemptError> {
    let fail = |retryable: bool, message: String| AttemptError {
        retryable,
        retry_after: None,
        message,
    };
    let url = url.get().map_err(|e| fail(false, e))?;
    let mut req = client
        .post(url.expose())
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(h) = auth_header(http).map_err(|e| fail(false, e))? {
        req = req.header("Authorization", h);
    }
    let resp = req.send().await.map_err(|e| {
        let e = e.without_url();
        fail(true, format!("request failed: {e}"))
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let is_json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let text = read_limited(resp, MAX_RESPONSE_BYTES).await;
    if status.is_success() {
        if let Some(v) = is_json.then(|| serde_json::from_str::<Json>(&text).ok()).flatten()
            && v.get("ok") == Some(&Json::Bool(false))
        {
            return Err(fail(
                false,
                format!("error response: {}", v.get("error").cloned().unwrap_or(Json::Null)),
            ));
        }
        return Ok(());
    }
    // The receiver's words go into a log line: escaped, so they cannot forge lines.
    let snippet: String = text.chars().take(200).flat_map(char::escape_debug).collect();
    let retryable = status.is_server_error() || status.as_u16() == 429;
    Err(AttemptError {
        retryable,
        retry_after,
        message: format!("unexpected status code {}: {snippet}", status.as_u16()),
    })
}

/// `Retry-After` in seconds or as an HTTP date; absurd values (past u64,
/// centuries) mean "not within this flush", capped so no sum overflows.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(NEVER));
    }
    let when = humantime::parse_rfc3339_weak(v).ok().or_else(|| httpdate(v))?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(NEVER),
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn httpdate(v: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == parts[2])? + 1;
    let s = format!("{}-{:02}-{:0>2}T{}Z", parts[3], m, parts[1], parts[4]);
    humantime::parse_rfc3339(&s).ok()
}

/// How much of a receiver's answer is read: enough for an error message
/// or Slack's `{"ok": false, "error": ...}`; a receiver answering gigabytes
/// costs nothing more (the connection is dropped at the limit).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The response body up to `limit` bytes (lossy UTF-8); read errors end it.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() >= room {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Exponential backoff from 500ms, doubling, capped at 30s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(10));
    Duration::from_millis(ms.min(30_000))
}

/// Outcome of delivering one message until success or the deadline.
#[derive(Debug)]
pub struct Delivered {
    pub ok: bool,
    pub attempts: u32,
    pub failed_attempts: u32,
    pub last_error: Option<String>,
    pub latency: Duration,
}

pub async fn deliver(
    client: &reqwest::Client,
    url: &UrlSource,
    http: &HttpConfig,
    body: &[u8],
    deadline: Instant,
    on_attempt: &(dyn Fn(bool) + Send + Sync),
) -> Delivered {
    let start = Instant::now();
    let mut n = 0u32;
    let mut failed = 0u32;
    loop {
        n += 1;
        let result = attempt(client, url, http, body).await;
        on_attempt(result.is_ok());
        match result {
            Ok(()) => {
                return Delivered {
                    ok: true,
                    attempts: n,
                    failed_attempts: failed,
                    last_error: None,
                    latency: start.elapsed(),
                };
            }
            Err(e) => {
                failed += 1;
                let wait = e.retry_after.unwrap_or_else(|| backoff(n - 1));
                let now = Instant::now();
                if !e.retryable || instant_after(now, wait) >= deadline || n >= 1000 {
                    return Delivered {
                        ok: false,
                        attempts: n,
                        failed_attempts: failed,
                        last_error: Some(e.message),
                        latency: start.elapsed(),
                    };
                }
                tracing::debug!(error = %e.message, wait_ms = wait.as_millis() as u64, "notification attempt failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(base64("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64("a"), "YQ==");
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert!(httpdate("Sun, 06 Nov 1994 08:49:37 GMT").is_some());
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
