//! Message bodies (Slack, webhook) and HTTP delivery with retries.
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json, json};

use super::clock::instant_after;
use super::compile::{SlackTemplates, UrlSource};
use super::template::TemplateData;
use crate::compat::time::{GO_ZERO_TIME, rfc3339};
use crate::http_client::{HttpConfig, auth_header};
pub use crate::http_client::{build_client, parse_retry_after};

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
    fn backoff_doubles_from_500ms_to_30s() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
