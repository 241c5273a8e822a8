//! The embedded files and how they are served: content-hashed paths with an
//! immutable cache for the assets, an ETag for the page that names them.
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;

/// One embedded file. `name` is what index.html's `{{name}}` placeholders
/// and the served path use.
pub(super) struct Asset {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";
const HTML: &str = "text/html; charset=utf-8";

/// An embedded file: `asset!(name, path under assets/, content type)`.
macro_rules! asset {
    ($name:literal, $file:literal, $content_type:expr) => {
        Asset {
            name: $name,
            bytes: include_bytes!(concat!("assets/", $file)),
            content_type: $content_type,
        }
    };
}

/// Everything the page loads besides itself.
pub(super) const ASSETS: &[Asset] = &[
    asset!("uPlot.min.css", "vendor/uPlot.min.css", CSS),
    asset!("uPlot.iife.min.js", "vendor/uPlot.iife.min.js", JS),
    asset!("app.css", "app.css", CSS),
    asset!("app.js", "app.js", JS),
    asset!("favicon.svg", "favicon.svg", SVG),
];

const INDEX_TEMPLATE: &str = include_str!("assets/index.html");

/// Only this origin may provide scripts, styles, images and API answers: a
/// second line of defence behind "nothing is fetched from elsewhere".
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// A year: the path changes whenever the content does.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page with its asset paths filled in, and the assets by served path.
pub(super) struct Site {
    index: String,
    index_etag: String,
    by_hash_and_name: HashMap<(String, &'static str), (&'static Asset, String)>,
}

impl Site {
    pub fn new(telemetry_path: &str) -> Site {
        let mut index = INDEX_TEMPLATE.to_string();
        let mut by_hash_and_name = HashMap::new();
        for a in ASSETS {
            let hash = short_hash(a.bytes);
            index = index.replace(&format!("{{{{{}}}}}", a.name), &asset_path(&hash, a.name));
            let etag = format!("\"{hash}\"");
            by_hash_and_name.insert((hash, a.name), (a, etag));
        }
        // The telemetry path is validated to [A-Za-z0-9/_.~-] at load, so it
        // needs no escaping inside an attribute.
        index = index.replace("{{telemetry_path}}", telemetry_path);
        let index_etag = format!("\"{}\"", short_hash(index.as_bytes()));
        Site {
            index,
            index_etag,
            by_hash_and_name,
        }
    }

    #[cfg(test)]
    pub fn index_html(&self) -> &str {
        &self.index
    }
}

/// Where an asset is served: `/ui/<hash of its bytes>/<name>`.
pub(super) fn asset_path(hash: &str, name: &str) -> String {
    format!("/ui/{hash}/{name}")
}

/// The first 12 hex digits of the SHA-256 of `bytes`: enough to tell
/// versions of one file apart.
pub(super) fn short_hash(bytes: &[u8]) -> String {
    sha256_hex(bytes)[..12].to_string()
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn common_headers(r: &mut Response, etag: &str) {
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
}

/// `GET /`: the page. Revalidated on every load (its asset paths change
/// with the binary), 304 when unchanged.
pub(super) async fn index(State(site): State<Arc<Site>>, headers: HeaderMap) -> Response {
    let mut r = match not_modified(&headers, &site.index_etag) {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => ([(header::CONTENT_TYPE, HTML)], site.index.clone()).into_response(),
    };
    common_headers(&mut r, &site.index_etag);
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// `GET /ui/<hash>/<name>`: an embedded asset, if the hash is its current one.
pub(super) async fn asset(
    State(site): State<Arc<Site>>,
    Path((hash, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(&(a, ref etag)) = ASSETS
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| site.by_hash_and_name.get(&(hash, a.name)))
    else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "404 page not found\n",
        )
            .into_response();
    };
    let mut r = match not_modified(&headers, etag) {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => ([(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response(),
    };
    common_headers(&mut r, etag);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    r
}
