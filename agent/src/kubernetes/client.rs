//! A minimal client for the two requests the resolver makes: list this
//! node's pods, and watch them from a resourceVersion. HTTPS only, the
//! API server's certificate checked against the configured CA alone, the
//! bearer token re-read from its file for every request (the kubelet
//! rotates projected service account tokens, about hourly).
use std::path::PathBuf;
use std::time::Duration;

use super::cache::Outcome;
use super::pods::{PodList, Status};

/// How long a watch may stay open (`timeoutSeconds`); the server ends it
/// then and we resume from the last resourceVersion. kubectl/client-go use 5–10 min.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Pods per list page (client-go's default, 500).
const LIST_PAGE: u32 = 500;

/// A failed request: what the outcome metric counts and a log-safe message
/// (never the token).
#[derive(Debug)]
pub struct ApiError {
    pub outcome: Outcome,
    pub message: String,
}

impl ApiError {
    fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        ApiError {
            outcome,
            message: message.into(),
        }
    }
}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    field_selector: String,
    token_file: PathBuf,
}

impl ApiClient {
    /// `base` is `https://host:port`; the CA file is read once (it is
    /// mounted with the token but does not rotate in practice).
    pub fn new(base: &str, node_name: &str, ca_file: &std::path::Path, token_file: PathBuf) -> Result<Self, String> {
        // Process-wide; a second install (or one by another stage) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(ca_file).map_err(|e| format!("kubernetes.ca_file {}: {e}", ca_file.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("kubernetes.ca_file {}: {e}", ca_file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "kubernetes.ca_file {}: no PEM certificate in it",
                ca_file.display()
            ));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // No read timeout: a watch may be quiet for its whole
            // timeoutSeconds (a node whose pods do not change), and each
            // request has a total timeout. Keepalive finds a peer that vanished.
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("ngxprobe/", env!("CARGO_PKG_VERSION")))
            .https_only(true)
            .tls_certs_only(certs)
            .no_proxy();
        b = b.redirect(reqwest::redirect::Policy::none());
        let http = b.build().map_err(|e| format!("kubernetes: HTTP client: {e}"))?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            field_selector: format!("spec.nodeName={node_name}"),
            token_file,
        })
    }

    fn get(&self, query: &[(&str, &str)], timeout: Duration) -> Result<reqwest::RequestBuilder, ApiError> {
        let token = crate::secret::load_secret_file(&self.token_file)
            .map_err(|e| ApiError::new(Outcome::Unauthorized, format!("service account token: {e}")))?;
        let mut pairs = vec![("fieldSelector", self.field_selector.as_str())];
        pairs.extend_from_slice(query);
        let query = serde_urlencoded::to_string(&pairs)
            .map_err(|e| ApiError::new(Outcome::Invalid, format!("query string: {e}")))?;
        Ok(self
            .http
            .get(format!("{}/api/v1/pods?{query}", self.base))
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(timeout))
    }

    /// Every pod of the node, page by page, and the list's resourceVersion.
    pub async fn list(&self) -> Result<(PodList, String), ApiError> {
        let mut all = PodList {
            metadata: Default::default(),
            items: Vec::new(),
        };
        let mut cont = String::new();
        loop {
            let limit = LIST_PAGE.to_string();
            let mut q = vec![("limit", limit.as_str())];
            if !cont.is_empty() {
                q.push(("continue", cont.as_str()));
            }
            let resp = send(self.get(&q, Duration::from_secs(60))?).await?;
            let page: PodList = resp
                .json()
                .await
                .map_err(|e| ApiError::new(body_outcome(&e), format!("pod list: {e}")))?;
            all.items.extend(page.items);
            if page.metadata.continue_token.is_empty() {
                let rv = page.metadata.resource_version;
                return Ok((all, rv));
            }
            cont = page.metadata.continue_token;
        }
    }

    /// Opens a watch from `resource_version`, with bookmarks.
    pub async fn watch(&self, resource_version: &str) -> Result<reqwest::Response, ApiError> {
        let secs = WATCH_TIMEOUT.as_secs().to_string();
        let q = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", secs.as_str()),
        ];
        // The server ends the watch at timeoutSeconds; allow it a margin.
        send(self.get(&q, WATCH_TIMEOUT + Duration::from_secs(30))?).await
    }
}

/// Sends a request; a non-2xx status becomes an error carrying the Status message.
async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::new(Outcome::Unreachable, without_url(&e)))?;
    let code = resp.status();
    if code.is_success() {
        return Ok(resp);
    }
    let outcome = match code.as_u16() {
        410 => Outcome::Expired,
        401 | 403 => Outcome::Unauthorized,
        _ => Outcome::HttpError,
    };
    // The body is a meta/v1 Status; its message says what is wrong (e.g. RBAC).
    let body = resp.bytes().await.unwrap_or_default();
    let detail = serde_json::from_slice::<Status>(&body)
        .map(|s| s.message)
        .unwrap_or_default();
    let detail: String = detail.chars().take(300).collect();
    Err(ApiError::new(outcome, format!("HTTP {code}: {detail:?}")))
}

/// A body that broke off is the network's fault; one that is not JSON, the server's.
fn body_outcome(e: &reqwest::Error) -> Outcome {
    match e.is_decode() {
        true => Outcome::Invalid,
        false => Outcome::Unreachable,
    }
}

/// A reqwest error with its causes (e.g. "connection reset"), without the
/// URL (it carries only the field selector, but keep messages uniform).
pub(super) fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(&format!(" ({url})"), "").replace(url.as_str(), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
