use super::assets::{ASSETS, Site, asset_path, sha256_hex, short_hash};
use super::*;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

const VENDOR_README: &str = include_str!("assets/vendor/README.md");

fn info() -> AgentInfo {
    AgentInfo {
        telemetry_path: "/metrics".into(),
        storage: Some(StorageInfo {
            path: "/var/lib/ngxprobe".into(),
            retention: "15d".into(),
            retention_seconds: 15.0 * 86400.0,
            retention_size_bytes: 0,
            interval_seconds: 1.0,
        }),
        rules: Some(RulesInfo::default()),
        receivers: vec![ReceiverInfo {
            name: "slack-notifications".into(),
            integrations: vec![("slack".into(), 1)],
        }],
        alertmanagers: 0,
    }
}

async fn get(
    app: &Router,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = to_bytes(body, 10 << 20).await.expect("body");
    (parts.status, parts.headers, bytes.to_vec())
}

fn asset_url(name: &str) -> String {
    let a = ASSETS.iter().find(|a| a.name == name).expect("asset");
    asset_path(&short_hash(a.bytes), a.name)
}

/// The vendored uPlot files are byte for byte what the README says they are
/// (an accidental edit, or an update without the README, fails here).
#[test]
fn vendored_files_match_their_recorded_sha256() {
    let files: [(&str, &[u8]); 3] = [
        ("uPlot.iife.min.js", include_bytes!("assets/vendor/uPlot.iife.min.js")),
        ("uPlot.min.css", include_bytes!("assets/vendor/uPlot.min.css")),
        ("uPlot.LICENSE", include_bytes!("assets/vendor/uPlot.LICENSE")),
    ];
    for (name, bytes) in files {
        let row = VENDOR_README
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("vendor/README.md has no row for {name}"));
        let recorded = row.trim_end_matches('|').rsplit('|').next().unwrap_or_default().trim();
        assert_eq!(sha256_hex(bytes), recorded, "{name} differs from vendor/README.md");
    }
}

#[test]
fn index_names_every_asset_by_hash_and_links_the_telemetry_path() {
    let site = Site::new("/custom-metrics");
    let html = site.index_html();
    assert!(!html.contains("{{"), "placeholder left in index.html:\n{html}");
    for a in ASSETS {
        assert!(html.contains(&asset_url(a.name)), "{} not referenced:\n{html}", a.name);
    }
    assert!(html.contains("href=\"/custom-metrics\""), "{html}");
    // Nothing from another origin: no absolute URL in the page.
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
}

/// A few hundred KiB at most, uncompressed; the JS and CSS name no other origin.
#[test]
fn assets_are_small_and_local() {
    let total: usize = ASSETS.iter().map(|a| a.bytes.len()).sum();
    assert!(total < 200 * 1024, "assets total {total} bytes");
    for a in ASSETS.iter().filter(|a| !a.name.starts_with("uPlot")) {
        let text = std::str::from_utf8(a.bytes).expect("utf-8");
        for bad in ["http://", "https://", "@import", "//cdn"] {
            let allowed = a.name == "favicon.svg" && text.contains("http://www.w3.org/2000/svg");
            assert!(
                !text.contains(bad) || (allowed && bad == "http://"),
                "{} contains {bad}",
                a.name
            );
        }
    }
}

#[tokio::test]
async fn serves_the_page_with_etag_and_security_headers() {
    let app = router(info());
    let (status, h, body) = get(&app, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = String::from_utf8(body).expect("utf-8");
    assert!(html.contains(&asset_url("app.js")), "{html}");
    let etag = h[header::ETAG].to_str().expect("ascii").to_string();
    let (status, _, body) = get(&app, "/", &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (status, _, _) = get(&app, "/", &[(header::IF_NONE_MATCH, "\"other\"")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn serves_assets_immutable_under_their_hash_only() {
    let app = router(info());
    for a in ASSETS {
        let (status, h, body) = get(&app, &asset_url(a.name), &[]).await;
        assert_eq!(status, StatusCode::OK, "{}", a.name);
        assert_eq!(h[header::CONTENT_TYPE], a.content_type, "{}", a.name);
        assert_eq!(h[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
        assert_eq!(body, a.bytes, "{}", a.name);
        let etag = h[header::ETAG].to_str().expect("ascii").to_string();
        let (status, _, _) = get(&app, &asset_url(a.name), &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{}", a.name);
    }
    // An old (or made-up) hash, an unknown name: 404, not another version.
    for path in [
        "/ui/000000000000/app.js",
        "/ui/x/app.js",
        &asset_url("app.js").replace("app.js", "nope.js"),
    ] {
        assert_eq!(get(&app, path, &[]).await.0, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn compresses_when_asked() {
    let app = router(info());
    let url = asset_url("uPlot.iife.min.js");
    let (status, h, body) = get(&app, &url, &[(header::ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_ENCODING], "gzip");
    assert!(body.len() < 30 * 1024, "gzipped uPlot is {} bytes", body.len());
    let (_, h, _) = get(&app, &url, &[]).await;
    assert!(h.get(header::CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn status_carries_settings_and_the_agents_clock() {
    let app = router(info());
    let (status, h, body) = get(&app, "/ui/api/status", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["storage"]["retention_seconds"], 1296000.0);
    assert_eq!(v["receivers"][0]["name"], "slack-notifications");
    assert_eq!(v["receivers"][0]["integrations"][0][0], "slack");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let agent_now = v["now_unix"].as_f64().expect("now_unix");
    assert!((agent_now - now).abs() < 60.0, "{agent_now} vs {now}");
    assert!(v["started_unix"].as_f64().expect("started_unix") <= agent_now);

    let mut no_store = info();
    no_store.storage = None;
    let (_, _, body) = get(&router(no_store), "/ui/api/status", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(v["storage"].is_null(), "{v}");
}
