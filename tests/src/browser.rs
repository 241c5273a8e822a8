//! A real browser for the page's tests: Debian's Chromium, headless, driven
//! over the Chrome DevTools Protocol (CDP) on a WebSocket. Every request the
//! page makes, every exception and console error is recorded from CDP events.
//!
//! Chromium is started with a new empty profile and without its background
//! services (sync, component updates, field trials): on a closed network
//! their connection attempts would be refused, and a test must not depend
//! on them anyway.
use crate::clients::http_get;
use crate::util::{self, ChildGuard, Poll, TempDir, poll};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// How long one CDP command may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `$CHROMIUM_BIN`, else Debian's chromium.
pub fn chromium_bin() -> String {
    std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_string())
}

/// Where tests leave screenshots: `target/web-screenshots/` of this workspace
/// (or of `$CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("web-screenshots")
}

/// One request the page made and, once it finished, its size on the wire.
#[derive(Clone, Debug)]
pub struct Request {
    pub url: String,
    pub status: Option<u16>,
    /// Bytes received (headers + encoded body), from `Network.loadingFinished`.
    pub transferred: Option<u64>,
}

pub struct Browser {
    // Drop order: close the socket, then the process, then its profile dir.
    ws: WebSocket<TcpStream>,
    next_id: u64,
    events: Vec<Value>,
    child: ChildGuard,
    dir: TempDir,
}

impl Browser {
    /// Starts headless Chromium (`bin`) with one blank page and attaches to it.
    pub fn start(bin: &Path) -> Result<Browser> {
        let dir = TempDir::new("chromium")?;
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromium.log");
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1280,900",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
        let mut child = ChildGuard::spawn(&mut cmd, "chromium")?;
        // Chromium writes the port it picked (and the browser target's path)
        // into the profile once DevTools listens.
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = poll(
            "chromium's DevToolsActivePort",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                if let Some(st) = child.try_wait()? {
                    bail!("chromium exited with {st}:\n{}", util::tail(&log, 20));
                }
                Ok(match std::fs::read_to_string(&port_file) {
                    Ok(s) if s.lines().count() >= 2 => Poll::Ready(
                        s.lines()
                            .next()
                            .and_then(|l| l.trim().parse().ok())
                            .context("bad DevToolsActivePort")?,
                    ),
                    _ => Poll::Pending("not written yet".into()),
                })
            },
        )?;
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let ws_url = poll(
            "chromium's page target",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let (status, body) = http_get(devtools, "/json/list")?;
                let v: Value = serde_json::from_slice(&body).context("/json/list is not JSON")?;
                let page = v
                    .as_array()
                    .and_then(|a| a.iter().find(|t| t["type"] == "page"))
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str());
                Ok(match page {
                    Some(u) => Poll::Ready(u.to_string()),
                    None => Poll::Pending(format!("status {status}: {v}")),
                })
            },
        )?;
        let stream = TcpStream::connect(devtools).context("connect to chromium's DevTools")?;
        // Reads time out so that every wait below stays bounded.
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        let request = ws_url.as_str().into_client_request().context("DevTools URL")?;
        let (ws, _) = tungstenite::client(request, stream).map_err(|e| anyhow::anyhow!("DevTools handshake: {e}"))?;
        let mut b = Browser {
            ws,
            next_id: 0,
            events: Vec::new(),
            child,
            dir,
        };
        for domain in ["Page", "Network", "Runtime", "Log"] {
            b.call(&format!("{domain}.enable"), json!({}))?;
        }
        eprintln!("[e2e] chromium pid {} (DevTools on {devtools})", b.child.pid());
        Ok(b)
    }

    /// Sends one CDP command and waits (bounded) for its answer; events that
    /// arrive meanwhile are kept.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .with_context(|| format!("CDP {method}: send"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        while Instant::now() < deadline {
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(e) => bail!("CDP {method}: {e}"),
            };
            let v: Value = serde_json::from_str(text.as_str()).context("CDP message is not JSON")?;
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("CDP {method}: {e}");
                }
                return Ok(v["result"].clone());
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
        bail!("CDP {method}: no answer within {CALL_TIMEOUT:?}")
    }

    /// Loads `url` and waits (bounded) until the document has loaded.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("navigating to {url}: {e}");
        }
        self.wait_for(
            &format!("{url} to load"),
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )?;
        Ok(())
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("?");
            bail!("JavaScript {js:?} threw: {what}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `js` (an expression) until it is truthy, at most `timeout`;
    /// returns its value. On timeout the error shows the last value.
    pub fn wait_for(&mut self, what: &str, js: &str, timeout: Duration) -> Result<Value> {
        poll(what, timeout, Duration::from_millis(100), || {
            let v = self.eval(js)?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            Ok(if truthy {
                Poll::Ready(v)
            } else {
                Poll::Pending(v.to_string())
            })
        })
    }

    /// Writes a PNG of the whole page (at most 6000 CSS pixels tall).
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let m = self.call("Page.getLayoutMetrics", json!({}))?;
        let width = m["cssContentSize"]["width"].as_f64().unwrap_or(1280.0);
        let height = m["cssContentSize"]["height"].as_f64().unwrap_or(900.0).min(6000.0);
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}),
        )?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("screenshot without data")?)
            .context("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))?;
        eprintln!("[e2e] screenshot {}", path.display());
        Ok(())
    }

    /// Emulates the system's colour scheme (`prefers-color-scheme`).
    pub fn set_dark_mode(&mut self, dark: bool) -> Result<()> {
        let value = if dark { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": value}]}),
        )?;
        Ok(())
    }

    /// Types `text` into the focused element, as a keyboard would.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({ "text": text }))?;
        Ok(())
    }

    /// Presses and releases a key: "Enter", "Tab" (focus moves as a user's would).
    pub fn press(&mut self, key: &str) -> Result<()> {
        let code = match key {
            "Enter" => 13,
            "Tab" => 9,
            other => bail!("press: no key code for {other:?}"),
        };
        let text = if key == "Enter" { "\r" } else { "" };
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code,
                       "text": if kind == "keyDown" { text } else { "" }}),
            )?;
        }
        Ok(())
    }

    /// Every request the page made so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        let mut order = Vec::new();
        let mut by_id: HashMap<String, Request> = HashMap::new();
        for e in &self.events {
            let p = &e["params"];
            let id = p["requestId"].as_str().unwrap_or_default().to_string();
            match e["method"].as_str() {
                Some("Network.requestWillBeSent") => {
                    if !by_id.contains_key(&id) {
                        order.push(id.clone());
                    }
                    by_id.insert(
                        id,
                        Request {
                            url: p["request"]["url"].as_str().unwrap_or_default().to_string(),
                            status: None,
                            transferred: None,
                        },
                    );
                }
                Some("Network.responseReceived") => {
                    if let Some(r) = by_id.get_mut(&id) {
                        r.status = p["response"]["status"].as_u64().and_then(|s| u16::try_from(s).ok());
                    }
                }
                Some("Network.loadingFinished") => {
                    if let Some(r) = by_id.get_mut(&id) {
                        r.transferred = p["encodedDataLength"].as_f64().map(|b| b as u64);
                    }
                }
                _ => {}
            }
        }
        order.into_iter().filter_map(|id| by_id.remove(&id)).collect()
    }

    /// Uncaught exceptions, console errors, and browser log errors other
    /// than failed network loads (CSP violations are among them).
    pub fn script_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.events {
            let p = &e["params"];
            match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => out.push(format!(
                    "exception: {}",
                    p["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .or(p["exceptionDetails"]["text"].as_str())
                        .unwrap_or("?")
                )),
                Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                    out.push(format!("console.error: {}", p["args"]))
                }
                Some("Log.entryAdded") if p["entry"]["level"] == "error" && p["entry"]["source"] != "network" => out
                    .push(format!(
                        "log ({}): {} {}",
                        p["entry"]["source"], p["entry"]["text"], p["entry"]["url"]
                    )),
                _ => {}
            }
        }
        out
    }

    /// Forgets the events recorded so far.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// Chromium's own log (stdout and stderr).
    pub fn log_tail(&self, n: usize) -> String {
        util::tail(&self.dir.path().join("chromium.log"), n)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helper processes (renderer, GPU, zygote) are its
        // children: note them, ask the browser to close, then make sure
        // every one of them is gone.
        let mut helpers = Vec::new();
        let mut frontier = vec![self.child.pid()];
        for _ in 0..5 {
            let next: Vec<i32> = frontier.iter().flat_map(|p| util::children_of(*p)).collect();
            helpers.extend(&next);
            frontier = next;
        }
        let _ = self
            .ws
            .send(Message::text(json!({"id": 0, "method": "Browser.close"}).to_string()));
        let _ = self.ws.flush();
        if self.child.wait_timeout(Duration::from_secs(5)).is_err() {
            self.child.stop(libc::SIGKILL, Duration::from_secs(5));
        }
        for pid in helpers {
            if util::is_alive(pid) {
                // SAFETY: a plain kill(2) of a PID this browser started moments ago.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
