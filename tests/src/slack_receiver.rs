//! A local stand-in for Slack's incoming-webhook endpoint: a real HTTP/1.1
//! server on `127.0.0.1:0` (std::net, hand-written, a thread per connection) that answers
//! every request `200 ok` and records each request with the instant it was
//! received. Tests point `slack_configs[].api_url` at [`SlackReceiver::url`]
//! and wait (bounded) for the POSTs they expect.
use crate::util::{Poll, poll};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// One request received by the server.
#[derive(Clone, Debug)]
pub struct Received {
    /// Sequence number (0 = first request).
    pub seq: usize,
    /// When the complete request (head and body) had been read.
    pub at: Instant,
    pub wall: SystemTime,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Slack webhook bodies are JSON objects).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("request #{} body is not JSON: {:?}", self.seq, self.body))
    }

    /// `attachments[0]` of a Slack body (title, text, fallback, color...).
    pub fn attachment(&self) -> Result<serde_json::Value> {
        let v = self.json()?;
        v.get("attachments")
            .and_then(|a| a.get(0))
            .cloned()
            .with_context(|| format!("request #{} has no attachments[0]: {}", self.seq, self.body))
    }

    /// `attachments[0].<field>` as a string ("" when absent).
    pub fn att_str(&self, field: &str) -> String {
        self.attachment()
            .ok()
            .and_then(|a| a.get(field).and_then(|s| s.as_str()).map(str::to_string))
            .unwrap_or_default()
    }

    /// A firing notification: the default `fallback` starts `[FIRING:<n>]`.
    pub fn is_firing(&self) -> bool {
        self.att_str("fallback").starts_with("[FIRING:")
    }

    /// A resolved notification: the default `fallback` starts `[RESOLVED]`.
    pub fn is_resolved(&self) -> bool {
        self.att_str("fallback").starts_with("[RESOLVED]")
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
}

pub struct SlackReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Largest request accepted (Slack bodies are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

impl SlackReceiver {
    pub fn start() -> Result<SlackReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("slack-receiver".into())
            .spawn(move || serve(listener, sh))?;
        eprintln!("[e2e] slack receiver on http://{addr}");
        Ok(SlackReceiver {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn all(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        self.shared.received.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Requests the server could not parse (reported by tests).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (bounded) for the first request with `seq >= from` that matches
    /// `pred`.
    pub fn wait_for(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> Result<Received> {
        self.wait_for_checked(what, from, timeout, pred, || Ok(()))
    }

    /// As [`SlackReceiver::wait_for`], calling `check` about every 100 ms
    /// while waiting: an error from it (a process the caller depends on has
    /// exited, an interrupt) ends the wait at once with that error.
    pub fn wait_for_checked(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<Received> {
        let mut polls = 0u32;
        poll(what, timeout, Duration::from_millis(5), || {
            let all = self.all();
            if let Some(r) = all.iter().skip(from).find(|r| pred(r)) {
                return Ok(Poll::Ready(Ok(r.clone())));
            }
            polls += 1;
            if polls.is_multiple_of(20)
                && let Err(e) = check()
            {
                return Ok(Poll::Ready(Err(e)));
            }
            Ok(Poll::Pending(format!(
                "{} request(s) so far: {:?}",
                all.len(),
                all.iter().map(|r| &r.body).collect::<Vec<_>>()
            )))
        })?
    }
}

impl Drop for SlackReceiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, sh: Arc<Shared>) {
    // Bounded by the stop flag: Drop sets it and connects once to wake us.
    for conn in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        // One thread per connection: a client that keeps an idle keep-alive
        // connection open must not delay (and so skew the timestamp of) a
        // request on another connection. Each thread ends at EOF or after
        // IO_TIMEOUT of idleness.
        let sh2 = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("slack-receiver-conn".into())
            .spawn(move || {
                if let Err(e) = handle(conn, &sh2) {
                    sh2.errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{e:#}"));
                }
            });
        if let Err(e) = spawned {
            sh.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("spawn: {e}"));
        }
    }
}

/// Serves requests on one connection (keep-alive) until the client closes it.
fn handle(conn: TcpStream, sh: &Arc<Shared>) -> Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    // At most 1000 requests per connection (bounded loop).
    for _ in 0..1000 {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // Idle keep-alive connection timed out or was reset: done with it.
            Err(_) if line.is_empty() => return Ok(()),
            Err(e) => return Err(e).context("reading request line"),
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad request line {line:?}");
        };
        let mut headers = Vec::new();
        for _ in 0..200 {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                bail!("EOF in request head");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').with_context(|| format!("bad header {h:?}"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            read_chunked(&mut r)?
        } else {
            let len: usize = get("content-length")
                .map(|v| v.parse())
                .transpose()
                .context("bad Content-Length")?
                .unwrap_or(0);
            if len > MAX_BODY {
                bail!("body of {len} bytes is too large");
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).context("reading body")?;
            b
        };
        let at = Instant::now();
        let wall = SystemTime::now();
        let close = version == "HTTP/1.0" || get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        {
            let mut g = sh.received.lock().unwrap_or_else(|e| e.into_inner());
            let seq = g.len();
            g.push(Received {
                seq,
                at,
                wall,
                method: method.to_string(),
                path: path.to_string(),
                headers: headers.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n{}\r\nok",
            if close { "Connection: close\r\n" } else { "" }
        )?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let size = size.trim_end();
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if out.len() + n > MAX_BODY {
            bail!("chunked body too large");
        }
        if n == 0 {
            // Trailers, then the blank line.
            for _ in 0..100 {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                    return Ok(out);
                }
            }
            bail!("too many trailers");
        }
        let start = out.len();
        out.resize(start + n, 0);
        r.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
    bail!("too many chunks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_posts_with_length_and_chunked_bodies() {
        let rx = SlackReceiver::start().unwrap();
        let mut s = TcpStream::connect(rx.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{{\"text\":\"a\"}}"
        )
        .unwrap();
        write!(
            s,
            "POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n{{\"a\"\r\n4\r\n:1}}\n\r\n0\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
        let all = rx.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].method, "POST");
        assert_eq!(all[0].path, "/hook");
        assert_eq!(all[0].json().unwrap()["text"], "a");
        assert_eq!(all[1].body, "{\"a\":1}\n");
        assert!(rx.errors().is_empty());
        let r = rx
            .wait_for("second POST", 1, Duration::from_secs(1), |r| r.body.contains("\"a\""))
            .unwrap();
        assert_eq!(r.seq, 1);
        let e = rx
            .wait_for_checked(
                "a third POST",
                2,
                Duration::from_secs(5),
                |_| true,
                || anyhow::bail!("the sender exited"),
            )
            .unwrap_err();
        assert!(e.to_string().contains("the sender exited"), "{e:#}");
    }
}
