//! `basic_auth_users` (bcrypt hashes) and `http_server_config.headers`, as
//! a middleware in front of every route but /healthz and /readyz.
//!
//! Health stays open (unlike exporter-toolkit, which protects everything)
//! because kubelet's probes and load balancers' health checks cannot send
//! credentials, and they tell nothing but "up"/"ready" (the not-ready
//! reason names only a startup phase).
//!
//! bcrypt costs tens of milliseconds per check by design; a scrape every
//! few seconds must not pay it each time. As exporter-toolkit does,
//! successful checks are cached: keyed by a SHA-256 of user, hash and
//! password (the password itself is never kept), at most [`CACHE_MAX`]
//! entries. Failures are not cached, so guessing stays at bcrypt's pace;
//! checks run one at a time on a blocking thread, so a flood of wrong
//! passwords costs one core, not the runtime. At most [`MAX_WAITING`]
//! checks wait their turn; more get 503 at once (counted as
//! `auth_busy`), so such a flood cannot hold every connection slot while
//! cached scrapers, which never wait, go on. An unknown user is checked
//! against a dummy hash of the same cost, so its answer takes as long as a
//! wrong password's.
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::http_stats::{HttpStats, RequestRefusal};
use super::web_config::Problem;
use crate::secret::Secret;

/// Cached successful (user, hash, password) digests at most.
pub const CACHE_MAX: usize = 100;
/// bcrypt checks waiting for their turn at most.
pub const MAX_WAITING: usize = 16;

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Too many checks waiting: try again (503).
    Busy,
}

pub struct BasicAuth {
    users: BTreeMap<String, Secret>,
    /// Checked for unknown users: same cost as the highest configured.
    dummy_hash: String,
    ok_cache: Mutex<HashSet<[u8; 32]>>,
    /// One bcrypt at a time (exporter-toolkit's bcryptMtx).
    bcrypt_turn: tokio::sync::Mutex<()>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl BasicAuth {
    pub fn new(users: &BTreeMap<String, Secret>) -> Result<BasicAuth, Problem> {
        let mut max_cost = 4;
        for (user, hash) in users {
            let parts: bcrypt::HashParts = hash.expose().parse().map_err(|_| {
                Problem::at(
                    &["basic_auth_users", user],
                    "not a bcrypt hash (expected $2a$/$2b$/$2y$, e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
                )
            })?;
            max_cost = max_cost.max(parts.get_cost());
        }
        let dummy_hash = bcrypt::hash("ngxprobe: no such user", max_cost)
            .map_err(|e| Problem::at(&["basic_auth_users"], format!("cannot make the dummy hash: {e}")))?;
        Ok(BasicAuth {
            users: users.clone(),
            dummy_hash,
            ok_cache: Mutex::new(HashSet::new()),
            bcrypt_turn: tokio::sync::Mutex::new(()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Whether an `Authorization` header value names a user with the right password.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Verdict {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return Verdict::Denied;
        };
        let known = self.users.get(&user);
        let hash = known.map_or(self.dummy_hash.as_str(), |s| s.expose());
        let digest = cache_key(&user, hash, &password);
        if known.is_some() && self.cache().contains(&digest) {
            return Verdict::Allowed;
        }
        let Some(_waiter) = Waiter::enter(&self.waiting) else {
            return Verdict::Busy;
        };
        let _turn = self.bcrypt_turn.lock().await;
        let hash = hash.to_string();
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let ok = known.is_some() && verified;
        if ok {
            let mut cache = self.cache();
            if cache.len() >= CACHE_MAX {
                // Any entry: a dropped one costs one more bcrypt, nothing else.
                let victim = cache.iter().next().copied();
                if let Some(v) = victim {
                    cache.remove(&v);
                }
            }
            cache.insert(digest);
        }
        match ok {
            true => Verdict::Allowed,
            false => Verdict::Denied,
        }
    }

    #[cfg(test)]
    pub fn cached(&self) -> usize {
        self.cache().len()
    }

    #[cfg(test)]
    pub fn dummy_cost(&self) -> u32 {
        self.dummy_hash.parse::<bcrypt::HashParts>().map_or(0, |p| p.get_cost())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.ok_cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A place among the checks waiting for bcrypt; left on drop.
struct Waiter<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiter<'a> {
    fn enter(waiting: &'a std::sync::atomic::AtomicUsize) -> Option<Waiter<'a>> {
        use std::sync::atomic::Ordering::AcqRel;
        let before = waiting.fetch_add(1, AcqRel);
        let waiter = Waiter(waiting);
        (before < MAX_WAITING).then_some(waiter)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// `Basic base64(user:password)` → (user, password); the password may contain ':'.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Length-prefixed, so ("ab", "c") and ("a", "bc") never share a key.
fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What the middleware applies.
pub struct Guard {
    pub basic_auth: Option<Arc<BasicAuth>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub stats: Arc<HttpStats>,
}

/// Paths served without credentials.
pub fn is_open(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let verdict = match &guard.basic_auth {
        Some(auth) if !is_open(req.uri().path()) => auth.check(req.headers().get(header::AUTHORIZATION)).await,
        _ => Verdict::Allowed,
    };
    let mut response = match verdict {
        Verdict::Allowed => next.run(req).await,
        Verdict::Denied => {
            let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            r
        }
        Verdict::Busy => {
            guard.stats.request_refused(RequestRefusal::AuthBusy);
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many password checks waiting; try again\n",
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    };
    for (name, value) in &guard.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}
