//! `--web.config.file` (exporter-toolkit's format) on the real agent: TLS
//! with certificates this test makes with openssl (a CA, the server's, two
//! clients'), basic auth with bcrypt, client certificates, TLS versions, the
//! API switched off, and Debian's Prometheus scraping the agent over https
//! with basic_auth and tls_config as a user would configure it. A bad file
//! stops the agent at start with file, line and field, the port never open.
//!
//! Clients are curl (TLS 1.2/1.3, client certificates) and Prometheus; no
//! nginx is needed: the agent's own /metrics is the payload.
use ngxprobe_e2e::agent::{binary_path, curl_https};
use ngxprobe_e2e::pki::Pki;
use ngxprobe_e2e::prometheus::{Prometheus, PrometheusOptions};
use ngxprobe_e2e::util::{self, Poll, TempDir, poll, require_tool};
use ngxprobe_e2e::{Agent, AgentOptions, guard};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse:battery";

fn tools() -> bool {
    ["openssl", "curl", "prometheus"]
        .iter()
        .all(|t| require_tool(t, "`cargo xtask setup` installs it").is_some())
}

fn status(addr: SocketAddr, path: &str, args: &[String]) -> u16 {
    match curl_https(addr, path, args) {
        Ok((status, _)) => status,
        Err(e) => panic!("GET {path}: {e:#}"),
    }
}

/// `curl -D -`: the response headers, lower-cased.
fn headers(addr: SocketAddr, path: &str, args: &[String]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// The value of a sample line `name{labels} value` in a text scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn basic_auth_over_tls_and_prometheus_scrapes_it() {
    let _g = guard("basic_auth_over_tls_and_prometheus_scrapes_it");
    if !tools() {
        return;
    }
    let dir = TempDir::new("secured").expect("tempdir");
    let pki = Pki::new(dir.path()).expect("certificates");
    let hash = bcrypt::hash(PASSWORD, 6).expect("bcrypt");
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  {USER}: {hash}\n"
        ),
    )
    .expect("write web config");
    let agent = Agent::start_opts(&AgentOptions {
        extra_args: vec![format!("--web.config.file={}", web.display())],
        https_probe: pki.curl(None, &[]),
        ..Default::default()
    })
    .expect("agent starts with TLS and basic auth");
    let addr = agent.addr();
    let right = pki.curl(None, &["-u", &format!("{USER}:{PASSWORD}")]);
    let wrong = pki.curl(None, &["-u", &format!("{USER}:nope")]);
    let unknown = pki.curl(None, &["-u", &format!("bob:{PASSWORD}")]);
    let none = pki.curl(None, &[]);

    let (code, body) = curl_https(addr, "/metrics", &right).expect("scrape with the password");
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 200);
    assert!(body.contains("ngxprobe_http_connections_open"), "{body}");
    assert_eq!(status(addr, "/metrics", &wrong), 401);
    assert_eq!(status(addr, "/metrics", &unknown), 401);
    assert_eq!(status(addr, "/metrics", &none), 401);
    assert_eq!(
        status(addr, "/api/v1/query?query=up", &none),
        401,
        "the API is protected too"
    );
    assert_eq!(status(addr, "/", &none), 401, "and the page");
    assert_eq!(status(addr, "/api/v1/query?query=vector(1)", &right), 200);
    assert_eq!(status(addr, "/healthz", &none), 200, "health stays open");
    assert_eq!(status(addr, "/readyz", &none), 200);
    let h = headers(addr, "/metrics", &none);
    assert!(h.contains("www-authenticate: basic"), "{h}");
    assert!(
        h.contains("x-frame-options: deny") && h.contains("x-content-type-options: nosniff"),
        "{h}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = ngxprobe_e2e::clients::http_get(addr, "/healthz");
    assert!(!matches!(plain, Ok((200, _))), "plain HTTP on the TLS port: {plain:?}");

    // Prometheus, configured as a user would, scrapes over https with basic auth.
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, PASSWORD).expect("password file");
    let prom = Prometheus::start(&PrometheusOptions {
        config: Some(format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n- job_name: ngxprobe\n  scheme: https\n  \
             basic_auth:\n    username: {USER}\n    password_file: {}\n  tls_config:\n    ca_file: {}\n  \
             static_configs:\n  - targets: ['{addr}']\n",
            pw_file.display(),
            pki.path("ca.crt")
        )),
        ..Default::default()
    })
    .expect("prometheus starts");
    let up = poll(
        "prometheus: target up, samples stored",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let v = prom.api_get(
                "/api/v1/query",
                &[(
                    "query",
                    "up{job=\"ngxprobe\"} * on() group_left count({job=\"ngxprobe\",__name__=~\"ngxprobe_.*\"})"
                        .to_string(),
                )],
            )?;
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            Ok(match value {
                Some(n) if n > 0.0 => Poll::Ready(n),
                _ => {
                    let t = prom.api_get("/api/v1/targets", &[])?;
                    Poll::Pending(format!("{}", t["data"]["activeTargets"][0]["lastError"]))
                }
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nprometheus log:\n{}", prom.log_tail(20)));
    eprintln!("[e2e] prometheus scraped the agent over https with basic auth: {up} ngxprobe_* series");

    // A renewed certificate (cert-manager rewriting the Secret) is served
    // without restart: new key and certificate moved over the old files.
    let subject = || -> String {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-CAfile",
                &pki.path("ca.crt"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_default()
            .to_string()
    };
    assert!(subject().contains("CN = server"), "{}", subject());
    pki.issue("renewed", "DNS:localhost,IP:127.0.0.1").expect("issue");
    for (from, to) in [("renewed.key", "server.key"), ("renewed.crt", "server.crt")] {
        std::fs::rename(pki.path(from), pki.path(to)).expect("rename");
    }
    let renewed = poll(
        "the renewed certificate is served",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = subject();
            Ok(match s.contains("CN = renewed") {
                true => Poll::Ready(s),
                false => Poll::Pending(s),
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(10)));
    eprintln!("[e2e] after renewal: {renewed}");
    assert_eq!(
        status(addr, "/metrics", &right),
        200,
        "scrapes go on with the renewed certificate"
    );

    // The password and its hash never reach the log.
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        !log.contains(PASSWORD) && !log.contains(&hash),
        "secret in the agent log"
    );
}

#[test]
fn client_certificates_tls13_only_and_api_off() {
    let _g = guard("client_certificates_tls13_only_and_api_off");
    if !tools() {
        return;
    }
    let dir = TempDir::new("secured-mtls").expect("tempdir");
    let pki = Pki::new(dir.path()).expect("certificates");
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
         client_allowed_sans: [scraper.example]\n  min_version: TLS13\n",
    )
    .expect("write web config");
    // The config file's keys this time (the other test uses the flag).
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(format!("web:\n  config_file: {}\n  enable_api: false\n", web.display())),
        https_probe: pki.curl(Some("scraper"), &[]),
        ..Default::default()
    })
    .expect("agent starts with client certificates required");
    let addr = agent.addr();
    let scraper = pki.curl(Some("scraper"), &[]);
    assert_eq!(status(addr, "/metrics", &scraper), 200);
    assert_eq!(status(addr, "/api/v1/query?query=vector(1)", &scraper), 404, "API off");
    assert_eq!(status(addr, "/api/v1/rules", &scraper), 404);
    assert_eq!(status(addr, "/", &scraper), 404, "page off");
    assert_eq!(status(addr, "/healthz", &scraper), 200);

    let refused = [
        ("no client certificate", pki.curl(None, &[])),
        ("a certificate without an allowed SAN", pki.curl(Some("intruder"), &[])),
        (
            "TLS 1.2 (min_version TLS13)",
            pki.curl(Some("scraper"), &["--tlsv1.2", "--tls-max", "1.2"]),
        ),
    ];
    for (what, args) in &refused {
        let r = curl_https(addr, "/healthz", args);
        assert!(r.is_err(), "{what}: must fail the handshake, got {r:?}");
        eprintln!(
            "[e2e] refused, {what}: {:#}",
            r.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    let (_, text) = curl_https(addr, "/metrics", &scraper).expect("scrape");
    let text = String::from_utf8_lossy(&text);
    let failed = sample(
        &text,
        "ngxprobe_http_connections_refused_total{reason=\"tls_handshake\"}",
    );
    assert!(
        failed.is_some_and(|n| n >= refused.len() as f64),
        "handshake failures counted: {failed:?}"
    );
}

#[test]
fn a_bad_web_config_stops_the_agent_before_the_port_opens() {
    let _g = guard("a_bad_web_config_stops_the_agent_before_the_port_opens");
    if !tools() {
        return;
    }
    let dir = TempDir::new("secured-bad").expect("tempdir");
    Pki::new(dir.path()).expect("certificates");
    let port = util::free_port().expect("port");
    for (text, want) in [
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
            "web.yml:4:16: tls_server_config.min_version: TLS10 is not supported",
        ),
        (
            "basic_auth_users:\n  alice: plain-text-password\n",
            "web.yml:2:10: basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  certfile: x\n",
            "web.yml:2:3: tls_server_config.certfile: unknown field",
        ),
    ] {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, text).expect("write");
        let mut child = util::ChildGuard::spawn(
            Command::new(binary_path())
                .arg(format!("--web.config.file={}", web.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--storage.path={}", dir.path().join("data").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            "ngxprobe",
        )
        .expect("spawn");
        // Until it exits, the port must never accept.
        let exit = poll(
            "agent exits",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || {
                assert!(
                    TcpStream::connect(("127.0.0.1", port)).is_err(),
                    "the port opened with a bad web config"
                );
                Ok(match child.try_wait()? {
                    Some(st) => Poll::Ready(st),
                    None => Poll::Pending("running".into()),
                })
            },
        )
        .expect("the agent stops");
        let mut stderr = String::new();
        if let Some(c) = child.child_mut()
            && let Some(mut e) = c.stderr.take()
        {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert_eq!(exit.code(), Some(2), "config error exit code; stderr: {stderr}");
        assert!(
            stderr.contains(&format!("{}/{want}", dir.path().display())),
            "want {want:?} in: {stderr}"
        );
        assert!(!stderr.contains("plain-text-password"), "secret in the error: {stderr}");
        eprintln!("[e2e] refused at start: {}", stderr.trim());
    }
}
