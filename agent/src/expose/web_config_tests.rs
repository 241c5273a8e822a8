//! The web config file: every field, and each bad input's message (file,
//! line, field). Certificates are made with openssl, as the e2e tests do.
use std::path::{Path, PathBuf};

use super::*;
use crate::expose::auth::Verdict;

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    /// The harness's test CA and certificates (`server.crt`/`.key`, client
    /// keys that fit no server certificate).
    fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("tempdir");
        ngxprobe_e2e::pki::Pki::new(tmp.path()).expect("openssl makes the certificates");
        Dir { tmp }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn file(&self) -> PathBuf {
        self.path().join("web.yml")
    }

    fn parse(&self, text: &str) -> Result<WebSecurity, String> {
        parse(&self.file(), text).map_err(|e| e.to_string())
    }

    /// The error for `text`, without the directory in front.
    fn error(&self, text: &str) -> String {
        match self.parse(text) {
            Ok(_) => panic!("should be refused:\n{text}"),
            Err(e) => e.replace(&format!("{}/", self.path().display()), ""),
        }
    }
}

const TLS_FILES: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[test]
fn an_empty_file_is_plain_http_without_auth() {
    let d = Dir::new();
    for text in ["", "# nothing\n", "tls_server_config:\n", "{}\n"] {
        let s = d.parse(text).expect("valid");
        assert!(
            s.tls.is_none() && s.basic_auth.is_none() && s.headers.is_empty(),
            "{text:?}"
        );
    }
}

#[test]
fn every_field_loads() {
    let d = Dir::new();
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    let text = format!(
        "tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [prometheus.example, 127.0.0.1]
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
  curve_preferences: [X25519, CurveP256, CurveP384]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
    X-XSS-Protection: \"\"
basic_auth_users:
  alice: {hash}
"
    );
    let s = d.parse(&text).expect("valid");
    let tls = s.tls.as_ref().expect("tls");
    assert!(!tls.ignore_client_order, "prefer_server_cipher_suites: false");
    assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(s.basic_auth.is_some());
    // Blank values are left out ("unset if blank").
    let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["strict-transport-security", "x-frame-options"]);
    // Debug shows no hash.
    assert!(!format!("{s:?}").contains(&hash));

    // Inline PEM instead of files; TLS 1.3 only.
    let pem = |f: &str| std::fs::read_to_string(d.path().join(f)).expect("pem");
    let inline = format!(
        "tls_server_config:\n  cert: |\n{}  key: |\n{}  min_version: TLS13\n",
        indent(&pem("server.crt")),
        indent(&pem("server.key"))
    );
    assert!(d.parse(&inline).expect("inline PEM").tls.is_some());
    // exporter-toolkit's old name and the empty string for NoClientCert.
    for auth in ["RequireClientCert", "RequestClientCert", "\"\""] {
        let text = format!("{TLS_FILES}  client_auth_type: {auth}\n");
        assert!(d.parse(&text).is_ok(), "{auth}");
    }
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn each_bad_input_names_file_line_and_field() {
    let d = Dir::new();
    let cases: Vec<(String, &str)> = vec![
        (
            "basic_auth_user:\n  a: b\n".into(),
            "web.yml:1:1: basic_auth_user: unknown field, expected one of tls_server_config, http_server_config, basic_auth_users, rate_limit",
        ),
        (
            format!("{TLS_FILES}  cert_fil: x\n"),
            "web.yml:4:3: tls_server_config.cert_fil: unknown field",
        ),
        (
            format!("{TLS_FILES}  client_auth_type: Always\n"),
            "web.yml:4:21: tls_server_config.client_auth_type: unknown variant",
        ),
        (
            format!("{TLS_FILES}  min_version: TLS11\n"),
            "web.yml:4:16: tls_server_config.min_version: TLS11 is not supported (rustls implements TLS12 and TLS13)",
        ),
        (
            format!("{TLS_FILES}  min_version: TLS14\n"),
            "web.yml:4:16: tls_server_config.min_version: unknown variant",
        ),
        (
            format!("{TLS_FILES}  min_version: TLS13\n  max_version: TLS12\n"),
            "web.yml:4:16: tls_server_config.min_version: TLS13 is above max_version TLS12",
        ),
        (
            format!(
                "{TLS_FILES}  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    - TLS_RSA_WITH_AES_128_CBC_SHA\n"
            ),
            "web.yml:6:7: tls_server_config.cipher_suites[1]: TLS_RSA_WITH_AES_128_CBC_SHA is not supported (rustls implements only",
        ),
        (
            format!("{TLS_FILES}  cipher_suites: [NOPE]\n"),
            "tls_server_config.cipher_suites[0]: unknown cipher suite \"NOPE\"",
        ),
        (
            format!("{TLS_FILES}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            "web.yml:4:18: tls_server_config.cipher_suites: lists no TLS 1.2 suite",
        ),
        (
            format!("{TLS_FILES}  curve_preferences: [X25519, CurveP521]\n"),
            "tls_server_config.curve_preferences[1]: CurveP521 is not supported",
        ),
        (
            format!("{TLS_FILES}  curve_preferences: [P256]\n"),
            "tls_server_config.curve_preferences[0]: unknown curve \"P256\"",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
            "web.yml:2:14: tls_server_config.cert_file: cannot read missing.crt: No such file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: ca.crt\n".into(),
            "web.yml:3:13: tls_server_config.key_file: ca.crt: no PRIVATE KEY block",
        ),
        (
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            "web.yml:2:14: tls_server_config.cert_file: server.key: no CERTIFICATE block",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: intruder.key\n".into(),
            "web.yml:3:13: tls_server_config.key_file: the key does not fit the certificate",
        ),
        (
            "tls_server_config:\n  key_file: server.key\n".into(),
            "web.yml:2:3: tls_server_config: missing one of cert or cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n".into(),
            "web.yml:2:3: tls_server_config: missing one of key or key_file",
        ),
        (
            format!("{TLS_FILES}  cert: x\n"),
            "tls_server_config.cert_file: set either cert_file or cert, not both",
        ),
        (
            format!("{TLS_FILES}  client_ca_file: ca.crt\n"),
            "web.yml:1:1: tls_server_config.client_auth_type: a client CA is configured without a client_auth_type that uses it",
        ),
        (
            format!("{TLS_FILES}  client_auth_type: RequireAndVerifyClientCert\n"),
            "web.yml:4:21: tls_server_config.client_auth_type: RequireAndVerifyClientCert needs client_ca_file (or client_ca)",
        ),
        (
            format!("{TLS_FILES}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nope.crt\n"),
            "web.yml:5:19: tls_server_config.client_ca_file: cannot read nope.crt",
        ),
        (
            format!(
                "{TLS_FILES}  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [a.example, me@example.com]\n"
            ),
            "tls_server_config.client_allowed_sans[1]: \"me@example.com\": only DNS names and IP addresses are supported",
        ),
        (
            format!("{TLS_FILES}  client_allowed_sans: [a.example]\n"),
            "tls_server_config.client_allowed_sans: needs a client_auth_type that asks for client certificates",
        ),
        (
            "http_server_config:\n  headers:\n    Server: nginx\n".into(),
            "web.yml:3:13: http_server_config.headers.Server: HTTP header \"Server\" can not be configured",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".into(),
            "web.yml:3:22: http_server_config.headers.X-Frame-Options: invalid value \"allow\", expected one of [\"deny\", \"sameorigin\"]",
        ),
        (
            "http_server_config:\n  http2: maybe\n".into(),
            "web.yml:2:10: http_server_config.http2:",
        ),
        (
            "basic_auth_users:\n  alice: hunter2\n".into(),
            "web.yml:2:10: basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "rate_limit:\n  interval: 1s\n  burst: 5\n".into(),
            "web.yml:2:3: rate_limit: not supported by ngxprobe",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, want) in cases {
        let got = d.error(&text);
        let matches = got.contains(want) && (!want.starts_with("web.yml:") || got.starts_with(want));
        if !matches {
            wrong.push(format!("for\n{text}want {want:?}\ngot  {got:?}"));
        }
        assert!(!got.contains("hunter2") && !got.contains("PRIVATE KEY-----"), "{got}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    let missing = load(&d.path().join("absent.yml")).map_err(|e| e.to_string());
    assert!(
        matches!(&missing, Err(e) if e.contains("absent.yml: cannot read web config file")),
        "{missing:?}"
    );
}

#[tokio::test]
async fn basic_auth_checks_users_and_caches_only_successes() {
    use axum::http::HeaderValue;
    use base64::Engine as _;
    let hash = bcrypt::hash("right:pw", 4).expect("hash");
    let users = [
        ("alice".to_string(), Secret::new(hash)),
        ("carol".to_string(), Secret::new(bcrypt::hash("x", 5).expect("hash"))),
    ]
    .into_iter()
    .collect();
    let auth = BasicAuth::new(&users).map_err(|p| p.message).expect("auth");
    // Unknown users pay the highest configured cost: no faster "no such user".
    assert_eq!(auth.dummy_cost(), 5);
    let header = |s: &str| {
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        HeaderValue::from_str(&v).expect("header")
    };
    let ok = |v: Verdict| v == Verdict::Allowed;
    assert!(ok(auth.check(Some(&header("alice:right:pw"))).await));
    assert_eq!(auth.cached(), 1);
    assert!(ok(auth.check(Some(&header("alice:right:pw"))).await), "from the cache");
    assert!(!ok(auth.check(Some(&header("alice:wrong"))).await));
    assert!(!ok(auth.check(Some(&header("bob:right:pw"))).await));
    assert!(!ok(auth.check(Some(&header("alice"))).await));
    assert!(!ok(auth.check(None).await));
    assert!(!ok(auth.check(Some(&HeaderValue::from_static("Bearer xyz"))).await));
    assert!(!ok(auth.check(Some(&HeaderValue::from_static("Basic !!!"))).await));
    assert_eq!(auth.cached(), 1, "failures are not cached");

    // A flood of wrong passwords: at most MAX_WAITING wait for bcrypt, the
    // rest are turned away at once; the cached user is let in meanwhile.
    let wrong = header("alice:wrong");
    let flood = futures_join_all((0..super::super::auth::MAX_WAITING + 8).map(|_| auth.check(Some(&wrong))));
    let right = header("alice:right:pw");
    let cached = auth.check(Some(&right));
    let (verdicts, cached) = tokio::join!(flood, cached);
    assert_eq!(cached, Verdict::Allowed);
    let busy = verdicts.iter().filter(|v| **v == Verdict::Busy).count();
    let denied = verdicts.iter().filter(|v| **v == Verdict::Denied).count();
    assert_eq!((busy, denied), (8, super::super::auth::MAX_WAITING), "{verdicts:?}");
}

/// Polls every future in turn until all are done (no futures crate here).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, o) in set.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => std::task::Poll::Pending,
            false => std::task::Poll::Ready(out.iter_mut().filter_map(Option::take).collect()),
        }
    })
    .await
}
