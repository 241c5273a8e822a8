//! Clients that speak what ngxprobe does not parse: TLS (curl over https,
//! `openssl s_client`), HTTP/2 (h2load, over TLS or h2c prior knowledge),
//! and bytes that are no protocol at all. Each is a child process killed by
//! PID on drop and waited for with a bound; every figure a test compares
//! (connections opened, requests nginx answered) comes from the client's
//! own report, not from assumptions.
use crate::util::ChildGuard;
use anyhow::{Context, Result, bail, ensure};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest a client run may take before the test fails.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion (bounded by [`CLIENT_LIMIT`]); returns its stdout
/// and stderr, failing with both if it exited non-zero.
pub(crate) fn run(cmd: &mut Command, name: &str) -> Result<(String, String)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd, name)?;
    // Read the pipes while the process runs (s_client prints certificates):
    // a full pipe must not stall it until the bound.
    let child = guard.child_mut().context("child gone")?;
    let mut out_pipe = child.stdout.take().context("no stdout pipe")?;
    let mut err_pipe = child.stderr.take().context("no stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let st = guard.wait_timeout(CLIENT_LIMIT)?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !st.success() {
        bail!("{name} failed: {st}\nstdout:\n{out}\nstderr:\n{err}");
    }
    Ok((out, err))
}

/// What one curl run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CurlRun {
    /// Connections curl opened (`%{num_connects}` summed over its transfers).
    pub connections: u64,
    /// Responses with status 200.
    pub ok: u64,
}

/// `curl --http1.1` over https (certificate not verified) fetching `paths`
/// in one run, so curl reuses its connection between them.
pub fn curl_https(addr: SocketAddr, paths: &[&str]) -> Result<CurlRun> {
    let urls: Vec<String> = paths.iter().map(|p| format!("https://{addr}{p}")).collect();
    curl(&[], &urls)
}

/// `curl --http1.1` with `extra` arguments (e.g. `--haproxy-protocol`)
/// fetching `urls` in one run (certificates not verified).
pub fn curl(extra: &[&str], urls: &[String]) -> Result<CurlRun> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-k",
        "--http1.1",
        "--max-time",
        "20",
        "-w",
        "%{http_code} %{num_connects}\\n",
    ])
    .args(extra);
    for u in urls {
        cmd.args(["-o", "/dev/null"]).arg(u);
    }
    let (out, _) = run(&mut cmd, "curl")?;
    let mut r = CurlRun::default();
    for line in out.lines() {
        let (code, connects) = line.split_once(' ').with_context(|| format!("curl -w line {line:?}"))?;
        if code == "200" {
            r.ok += 1;
        }
        r.connections += connects
            .trim()
            .parse::<u64>()
            .with_context(|| format!("curl num_connects {line:?}"))?;
    }
    ensure!(
        out.lines().count() == urls.len(),
        "curl reported {} transfers for {} URLs:\n{out}",
        out.lines().count(),
        urls.len()
    );
    Ok(r)
}

/// A TLS handshake with `openssl s_client` and nothing else: it connects,
/// completes the handshake, reads EOF on stdin and closes.
pub fn tls_handshake_only(addr: SocketAddr) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(addr.to_string())
        .args(["-servername", "localhost"]);
    let (out, err) = run(&mut cmd, "openssl s_client")?;
    ensure!(
        out.contains("Cipher is") && !out.contains("Cipher is (NONE)"),
        "s_client did not complete a handshake:\n{out}\n{err}"
    );
    Ok(())
}

/// `openssl s_client -reconnect` over TLS 1.2: one full handshake, then five
/// more connections resuming its session (nginx's session tickets), no
/// request on any. Returns (connections, how many s_client says it resumed:
/// "Reused," lines).
pub fn tls_resumed_handshakes(addr: SocketAddr) -> Result<(u64, u64)> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"]).arg(addr.to_string()).args([
        "-servername",
        "localhost",
        "-tls1_2",
        "-reconnect",
    ]);
    let (out, err) = run(&mut cmd, "openssl s_client -reconnect")?;
    let new = out.lines().filter(|l| l.starts_with("New,")).count() as u64;
    let reused = out.lines().filter(|l| l.starts_with("Reused,")).count() as u64;
    ensure!(
        new + reused == 6,
        "s_client -reconnect: {new} new and {reused} reused sessions, want 6 connections:\n{out}\n{err}"
    );
    Ok((new + reused, reused))
}

/// h2load's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2loadResult {
    pub total: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    /// The negotiated protocol ("h2", or "h2c" for prior knowledge).
    pub protocol: String,
    pub output: String,
}

/// Parses h2load's `requests:` and `Application protocol:` lines.
pub fn parse_h2load(out: &str) -> Result<H2loadResult> {
    let mut r = H2loadResult {
        output: out.to_string(),
        ..Default::default()
    };
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("no `requests:` line in h2load output:\n{out}"))?;
    for part in line.trim_start_matches("requests:").split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let n: u64 = n.parse().with_context(|| format!("h2load count {part:?}"))?;
        match what {
            "total" => r.total = n,
            "done" => r.done = n,
            "succeeded" => r.succeeded = n,
            "failed" => r.failed = n,
            "errored" => r.errored = n,
            _ => {}
        }
    }
    if let Some(p) = out.lines().find_map(|l| l.strip_prefix("Application protocol:")) {
        r.protocol = p.trim().to_string();
    }
    Ok(r)
}

/// h2load with `clients` connections and `requests` requests in all, at most
/// 10 streams at once per connection, against `url` (https:// negotiates h2
/// with ALPN; http:// is h2c with prior knowledge). Fails unless every
/// request succeeded over HTTP/2.
pub fn h2load(url: &str, clients: u32, requests: u32) -> Result<H2loadResult> {
    h2load_streams(url, clients, requests, 10)
}

/// [`h2load`] with `streams` concurrent streams per connection.
pub fn h2load_streams(url: &str, clients: u32, requests: u32, streams: u32) -> Result<H2loadResult> {
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-n",
        &requests.to_string(),
        "-c",
        &clients.to_string(),
        "-m",
        &streams.to_string(),
        url,
    ]);
    let (out, err) = run(&mut cmd, "h2load")?;
    let r = parse_h2load(&out).with_context(|| format!("stderr: {err}"))?;
    ensure!(
        r.succeeded == u64::from(requests) && r.done == r.total && r.failed == 0 && r.errored == 0,
        "h2load did not complete every request:\n{out}\n{err}"
    );
    ensure!(
        r.protocol == "h2" || r.protocol == "h2c",
        "h2load did not speak HTTP/2 (protocol {:?}):\n{out}",
        r.protocol
    );
    Ok(r)
}

/// Sends `bytes` (not HTTP) on a new connection, half-closes, and reads
/// until nginx closes (it answers 400 and closes, or just closes).
pub fn send_garbage(addr: SocketAddr, bytes: &[u8]) -> Result<()> {
    let mut s = crate::clients::connect(addr)?;
    s.write_all(bytes)?;
    crate::clients::close_gracefully(s)
}

/// A GET with `Connection: close` behind a PROXY protocol v2 header (as an
/// AWS NLB sends it: binary signature, TCP over IPv4), sent in one write;
/// reads the response and then EOF.
pub fn proxy_v2_get(addr: SocketAddr, path: &str) -> Result<crate::clients::Response> {
    let mut s = crate::clients::connect(addr)?;
    let mut msg = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // Version 2, PROXY command; TCP over IPv4; 12 address bytes follow.
    msg.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    msg.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    msg.extend_from_slice(&40000u16.to_be_bytes());
    msg.extend_from_slice(&addr.port().to_be_bytes());
    msg.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    s.write_all(&msg)?;
    let mut r = std::io::BufReader::new(s);
    let resp = crate::clients::read_response(&mut r, false)?;
    crate::clients::expect_eof(&mut r)?;
    Ok(resp)
}

/// `openssl req` writes a self-signed P-256 certificate and its key for
/// `localhost` to `cert` and `key`.
pub fn self_signed_cert(cert: &std::path::Path, key: &std::path::Path) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-batch",
        "-keyout",
    ])
    .arg(key)
    .arg("-out")
    .arg(cert);
    run(&mut cmd, "openssl req").map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_summary() {
        let out = "starting benchmark...\nApplication protocol: h2c\n\nfinished in 50.1ms, 5988 req/s\n\
                   requests: 300 total, 300 started, 300 done, 299 succeeded, 1 failed, 0 errored, 0 timeout\n\
                   status codes: 300 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!(
            (r.total, r.done, r.succeeded, r.failed, r.errored),
            (300, 300, 299, 1, 0)
        );
        assert_eq!(r.protocol, "h2c");
        assert!(parse_h2load("no summary").is_err());
    }
}
