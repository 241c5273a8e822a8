//! A stand-in for the Kubernetes API server's pods endpoint, for the
//! metadata tests (no real API server can run here). It follows the real
//! API's wire format: HTTPS with a certificate from a CA the test makes
//! (openssl), `Authorization: Bearer` checked, `GET /api/v1/pods` answering a
//! PodList with `metadata.resourceVersion`, and `?watch=true` answering a
//! chunked stream of WatchEvent lines (`{"type":…,"object":…}`), including
//! BOOKMARKs and the `ERROR` event with a 410 `Status` the API server sends
//! when a watch resumes from a resourceVersion it no longer has.
//!
//! A thread accepts connections, one thread per connection; every request is
//! answered with `Connection: close`. [`FakeKubeApi::down`] closes the
//! listener and every open stream (an outage); [`FakeKubeApi::up`] listens
//! on the same port again.
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request the server received.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub authorization: Option<String>,
    /// What the server answered: "list", "watch", "unauthorized", "not_found".
    pub answer: &'static str,
}

impl ApiRequest {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

#[derive(Default)]
struct State {
    /// By uid, each with its current metadata.resourceVersion.
    pods: BTreeMap<String, Value>,
    rv: u64,
    /// Every WatchEvent line with its resourceVersion, in order: a watch
    /// from resourceVersion N gets those after N (also ones made while it
    /// was not connected), as the API server replays them.
    events: Vec<(u64, String)>,
    /// Watch streams with a generation below this end (the server's timeout).
    end_before: u64,
    /// The next watch request gets `ERROR` 410 instead of events.
    expire_next_watch: bool,
    token: String,
    requests: Vec<ApiRequest>,
}

struct Shared {
    state: Mutex<State>,
    /// Set while down: the accept loop and every stream end.
    down: AtomicBool,
    generation: AtomicU64,
    connections: AtomicU64,
}

pub struct FakeKubeApi {
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    pub ca_file: PathBuf,
}

/// Writes a CA and a server certificate for 127.0.0.1 signed by it (the
/// API server's certificate carries its IP as a SAN, as kubeadm's does).
/// Returns (CA cert, server cert, server key) paths.
pub fn make_ca_and_cert(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = dir.join("apiserver.key");
    let csr = dir.join("apiserver.csr");
    let cert = dir.join("apiserver.crt");
    let ext = dir.join("apiserver.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).output().context("run openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let p = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    let (ck, cc) = (p(&ca_key), p(&ca));
    a.extend(["-days", "2", "-subj", "/CN=kubernetes-ca", "-keyout", &ck, "-out", &cc]);
    run(&a)?;
    let mut a = vec!["req"];
    a.extend(ec);
    let (k, r) = (p(&key), p(&csr));
    a.extend(["-subj", "/CN=kube-apiserver", "-keyout", &k, "-out", &r]);
    run(&a)?;
    let (c, e) = (p(&cert), p(&ext));
    run(&[
        "x509",
        "-req",
        "-in",
        &r,
        "-CA",
        &cc,
        "-CAkey",
        &ck,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &e,
        "-out",
        &c,
    ])?;
    Ok((ca, cert, key))
}

impl FakeKubeApi {
    /// Listens on 127.0.0.1 (a free port) with a fresh CA in `dir`; requests
    /// must carry `token`.
    pub fn start(dir: &Path, token: &str) -> Result<FakeKubeApi> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (ca_file, cert, key) = make_ca_and_cert(dir)?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&key)?;
        let tls = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)?,
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                token: token.to_string(),
                ..Default::default()
            }),
            down: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut api = FakeKubeApi {
            addr,
            tls,
            shared,
            accept: None,
            ca_file,
        };
        api.serve(listener)?;
        Ok(api)
    }

    fn serve(&mut self, listener: TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        let shared = self.shared.clone();
        let tls = self.tls.clone();
        self.accept = Some(std::thread::spawn(move || {
            while !shared.down.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        shared.connections.fetch_add(1, Ordering::SeqCst);
                        let (shared, tls) = (shared.clone(), tls.clone());
                        std::thread::spawn(move || {
                            let _ = serve_conn(tcp, tls, &shared);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state().requests.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on only `token` is accepted (the kubelet rotated it).
    pub fn rotate_token(&self, token: &str) {
        self.state().token = token.to_string();
    }

    /// Adds or changes a pod: in the next list, and as an ADDED/MODIFIED event.
    pub fn put_pod(&self, mut pod: Value) {
        let mut s = self.state();
        s.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let kind = if s.pods.contains_key(&uid) { "MODIFIED" } else { "ADDED" };
        let rv = s.rv;
        s.events.push((rv, json!({"type": kind, "object": pod}).to_string()));
        s.pods.insert(uid, pod);
    }

    /// Deletes a pod: a DELETED event with its last state.
    pub fn delete_pod(&self, uid: &str) {
        let mut s = self.state();
        s.rv += 1;
        if let Some(mut pod) = s.pods.remove(uid) {
            pod["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let rv = s.rv;
            s.events
                .push((rv, json!({"type": "DELETED", "object": pod}).to_string()));
        }
    }

    /// A BOOKMARK at the current resourceVersion; returns it.
    pub fn bookmark(&self) -> String {
        let mut s = self.state();
        s.rv += 1;
        let rv = s.rv.to_string();
        let line = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}});
        let n = s.rv;
        s.events.push((n, line.to_string()));
        rv
    }

    /// Ends the open watch streams as the server does at `timeoutSeconds`;
    /// the next watch (a resume) is answered with an ERROR 410 event if `expire`.
    pub fn end_watches(&self, expire: bool) {
        let mut s = self.state();
        s.end_before = self.shared.generation.load(Ordering::SeqCst) + 1;
        s.expire_next_watch = expire;
    }

    /// An outage: the port is closed and every open stream is cut.
    pub fn down(&mut self) {
        self.shared.down.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }

    /// Back on the same port.
    pub fn up(&mut self) -> Result<()> {
        let listener = TcpListener::bind(self.addr).context("listen on the API's port again")?;
        self.shared.down.store(false, Ordering::SeqCst);
        self.serve(listener)
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.down();
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn serve_conn(tcp: TcpStream, tls: Arc<rustls::ServerConfig>, shared: &Shared) -> Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(tls)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let head = read_head(&mut s)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or_default().to_string();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query: BTreeMap<String, String> = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let mut req = ApiRequest {
        path: path.to_string(),
        query,
        authorization,
        answer: "list",
    };
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    if req.authorization.as_deref() != Some(&format!("Bearer {}", st.token)) {
        req.answer = "unauthorized";
        st.requests.push(req);
        drop(st);
        let body = status_json(401, "Unauthorized", "Unauthorized");
        return respond(&mut s, "401 Unauthorized", &body);
    }
    if req.path != "/api/v1/pods" {
        req.answer = "not_found";
        st.requests.push(req);
        drop(st);
        return respond(
            &mut s,
            "404 Not Found",
            &status_json(404, "NotFound", "the server could not find the requested resource"),
        );
    }
    if !req.is_watch() {
        st.requests.push(req);
        let items: Vec<&Value> = st.pods.values().collect();
        let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items})
            .to_string();
        drop(st);
        return respond(&mut s, "200 OK", &body);
    }
    req.answer = "watch";
    let req_rv = req.query.get("resourceVersion").cloned().unwrap_or_default();
    st.requests.push(req);
    let expire = std::mem::take(&mut st.expire_next_watch);
    let from: u64 = req_rv.parse().unwrap_or(u64::MAX);
    let mut sent = st
        .events
        .iter()
        .position(|(rv, _)| *rv > from)
        .unwrap_or(st.events.len());
    drop(st);
    let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    s.flush()?;
    if expire {
        let line = json!({"type": "ERROR", "object": serde_json::from_str::<Value>(&status_json(410, "Expired", "too old resource version"))?}).to_string();
        chunk(&mut s, &line)?;
        return finish(&mut s);
    }
    // Bounded: the agent's watch asks timeoutSeconds; tests end streams sooner.
    for _ in 0..(300 * 100) {
        if shared.down.load(Ordering::SeqCst) {
            // Cut without the final chunk: the connection breaks, as in an outage.
            let _ = s.sock.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        let st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let pending: Vec<String> = st.events[sent..].iter().map(|(_, l)| l.clone()).collect();
        let ended = generation < st.end_before;
        sent = st.events.len();
        drop(st);
        for line in pending {
            chunk(&mut s, &line)?;
        }
        if ended {
            return finish(&mut s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    finish(&mut s)
}

fn read_head(s: &mut Tls) -> Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            bail!("request head too long");
        }
        if s.read(&mut byte)? == 0 {
            bail!("connection closed before the request head ended");
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
        .to_string()
}

fn respond(s: &mut Tls, status: &str, body: &str) -> Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()?;
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(())
}

fn chunk(s: &mut Tls, line: &str) -> Result<()> {
    write!(s, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
    s.flush()?;
    Ok(())
}

fn finish(s: &mut Tls) -> Result<()> {
    s.write_all(b"0\r\n\r\n")?;
    s.flush()?;
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(())
}

/// A pod on `node`, as the API server returns it.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    /// Its one container: name, runtime ("containerd", "cri-o", "docker")
    /// and id (64 hex).
    pub container: &'a str,
    pub runtime: &'a str,
    pub container_id: &'a str,
    pub labels: Value,
}

/// The Pod object of `p`, with the fields a running pod has.
pub fn pod_json(p: PodSpec<'_>) -> Value {
    let PodSpec {
        namespace,
        name,
        uid,
        node,
        container,
        runtime,
        container_id,
        labels,
    } = p;
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "creationTimestamp": "2026-01-01T00:00:00Z", "labels": labels
        },
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "nginx:1.27"}]},
        "status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "containerStatuses": [{
                "name": container, "ready": true, "restartCount": 0, "started": true,
                "image": "docker.io/library/nginx:1.27", "imageID": "docker.io/library/nginx@sha256:0000",
                "containerID": format!("{runtime}://{container_id}"),
                "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}
            }]
        }
    })
}
