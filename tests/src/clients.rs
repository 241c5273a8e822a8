//! Load generators: raw HTTP/1.x clients over std TcpStream, and wrk.
use crate::util::{ChildGuard, Poll, poll};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed HTTP response. Only the first `KEEP_BODY` bytes are kept.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_head: Vec<u8>,
}

pub const KEEP_BODY: usize = 64 * 1024;

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Connects with timeouts set.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn read_line(r: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    let n = r.take(16 * 1024).read_until(b'\n', &mut line)?;
    if n == 0 {
        bail!("unexpected EOF while reading response head");
    }
    if !line.ends_with(b"\n") {
        bail!(
            "response line too long or truncated: {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Reads one response (status line, headers, body). The body is delimited by
/// Content-Length, chunked encoding, or EOF (HTTP/1.0 / no length).
/// `head_only`: the request was HEAD (no body).
pub fn read_response(r: &mut impl BufRead, head_only: bool) -> Result<Response> {
    read_response_keeping(r, head_only, KEEP_BODY)
}

/// As [`read_response`], keeping the first `keep` bytes of the body.
pub fn read_response_keeping(r: &mut impl BufRead, head_only: bool, keep: usize) -> Result<Response> {
    let status_line = read_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        bail!("bad status line {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for _ in 0..200 {
        let l = read_line(r)?;
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body_len: 0,
        body_head: Vec::new(),
    };
    if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let blen = buf.len() as u64;
    let sink = |resp: &mut Response, data: &[u8]| {
        let keep = keep.saturating_sub(resp.body_head.len()).min(data.len());
        resp.body_head.extend_from_slice(&data[..keep]);
        resp.body_len += data.len() as u64;
    };
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        for _ in 0..1_000_000 {
            let size_line = read_line(r)?;
            let size = u64::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                // trailers until blank line
                for _ in 0..100 {
                    if read_line(r)?.is_empty() {
                        break;
                    }
                }
                return Ok(resp);
            }
            let mut left = size;
            while left > 0 {
                let n = r.read(&mut buf[..left.min(blen) as usize])?;
                if n == 0 {
                    bail!("EOF inside chunk");
                }
                sink(&mut resp, &buf[..n]);
                left -= n as u64;
            }
            read_line(r)?; // CRLF after chunk
        }
        bail!("too many chunks");
    } else if let Some(cl) = resp.header("content-length") {
        let cl: u64 = cl.parse().with_context(|| format!("bad content-length {cl:?}"))?;
        let mut left = cl;
        while left > 0 {
            let n = r.read(&mut buf[..left.min(blen) as usize])?;
            if n == 0 {
                bail!("EOF after {} of {cl} body bytes", cl - left);
            }
            sink(&mut resp, &buf[..n]);
            left -= n as u64;
        }
        Ok(resp)
    } else {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(resp);
            }
            sink(&mut resp, &buf[..n]);
        }
    }
}

/// Reads until EOF (bounded by the socket timeout); fails if data arrives.
pub fn expect_eof(r: &mut impl Read) -> Result<()> {
    let mut b = [0u8; 4096];
    let n = r.read(&mut b).context("waiting for the server to close")?;
    if n != 0 {
        bail!("expected EOF, got {:?}", String::from_utf8_lossy(&b[..n]));
    }
    Ok(())
}

/// Closes a connection the client way that lets us know nginx has closed it
/// too: half-close (FIN), then read to EOF.
pub fn close_gracefully(s: TcpStream) -> Result<()> {
    s.shutdown(Shutdown::Write).ok();
    let mut s = s;
    let mut b = [0u8; 4096];
    for _ in 0..10_000 {
        match s.read(&mut b) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e).context("read to EOF after half-close"),
        }
    }
    bail!("server kept sending after half-close")
}

/// Largest body [`http_get`] returns.
pub const MAX_GET_BODY: usize = 1 << 30;

/// A minimal GET with `Connection: close` over HTTP/1.1: (status, whole
/// body). Used for the agent's /readyz, /metrics and API, and other
/// Prometheus-style servers.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    whole_response(addr, &format!("GET http://{addr}{path}"), req.as_bytes())
}

/// Sends `req` on a new connection and reads the response with its whole
/// body (up to [`MAX_GET_BODY`]): (status, body).
fn whole_response(addr: SocketAddr, what: &str, req: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut s = connect(addr)?;
    s.write_all(req)?;
    let mut r = BufReader::new(s);
    let resp = read_response_keeping(&mut r, false, MAX_GET_BODY).with_context(|| what.to_string())?;
    if resp.body_len as usize > resp.body_head.len() {
        bail!("{what}: body larger than {MAX_GET_BODY} bytes");
    }
    Ok((resp.status, resp.body_head))
}

/// A POST (`Content-Type: application/octet-stream`, `Connection: close`)
/// whose whole response body is returned, up to [`MAX_GET_BODY`] (an API's
/// answer can be far larger than the head [`post`] keeps): (status, body).
pub fn post_whole(addr: SocketAddr, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    whole_response(addr, &format!("POST http://{addr}{path}"), &req)
}

/// `GET path`, expecting 200 and a JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = http_get(addr, path)?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        bail!("GET http://{addr}{path}: status {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("GET http://{addr}{path}: not JSON: {text}"))
}

/// GET with `Connection: close`; reads the response and then EOF.
pub fn get_close(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut s = connect(addr)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false)?;
    expect_eof(&mut r)?;
    Ok(resp)
}

/// One HTTP/1.0 request on a new connection; nginx closes after the response.
pub fn http10_get(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut s = connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false)?;
    expect_eof(&mut r)?;
    Ok(resp)
}

/// `n` keep-alive requests in a single write on one connection; reads all `n`
/// responses, then closes (half-close + EOF).
pub fn pipelined(addr: SocketAddr, path: &str, n: usize) -> Result<Vec<Response>> {
    let mut s = connect(addr)?;
    let mut req = String::new();
    for _ in 0..n {
        req.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(read_response(&mut r, false).with_context(|| format!("pipelined response {i}"))?);
    }
    if !r.buffer().is_empty() {
        bail!("{} unexpected bytes after {n} responses", r.buffer().len());
    }
    drop(r);
    close_gracefully(s)?;
    Ok(out)
}

/// One keep-alive connection that GETs `paths` one after the other, reading
/// each response in full before sending the next request, then closes
/// (half-close + EOF). Returns each response's (status, body length).
pub fn keepalive_sequence(addr: SocketAddr, paths: &[String]) -> Result<Vec<(u16, u64)>> {
    let mut s = connect(addr)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut out = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        write!(s, "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let resp = read_response_keeping(&mut r, false, 0).with_context(|| format!("response {i} ({p})"))?;
        out.push((resp.status, resp.body_len));
    }
    if !r.buffer().is_empty() {
        bail!("{} unexpected bytes after {} responses", r.buffer().len(), paths.len());
    }
    drop(r);
    close_gracefully(s)?;
    Ok(out)
}

/// The request used by [`split_request`].
pub fn split_request_bytes(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: ngxprobe-e2e\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Splits `req` into `pieces` nearly equal parts.
pub fn split_into(req: &[u8], pieces: usize) -> Vec<&[u8]> {
    let pieces = pieces.max(1);
    let step = req.len().div_ceil(pieces);
    req.chunks(step).collect()
}

/// Writes a request in `pieces` parts with TCP_NODELAY and `gap` between
/// them (the gap is the scenario), then reads the response and EOF.
pub fn split_request(addr: SocketAddr, path: &str, pieces: usize, gap: Duration) -> Result<Response> {
    let mut s = connect(addr)?;
    s.set_nodelay(true)?;
    let req = split_request_bytes(path);
    let parts = split_into(&req, pieces);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        s.write_all(p)?;
        s.flush()?;
    }
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false)?;
    expect_eof(&mut r)?;
    Ok(resp)
}

/// A connection that has sent only the first `bytes` of a request and is
/// then held: nginx is reading its request header.
pub fn partial_request(addr: SocketAddr, path: &str, bytes: usize) -> Result<TcpStream> {
    let mut s = connect(addr)?;
    s.set_nodelay(true)?;
    let req = split_request_bytes(path);
    s.write_all(&req[..bytes.min(req.len() - 1)])?;
    Ok(s)
}

/// A connection that never sends anything.
pub fn idle_connection(addr: SocketAddr) -> Result<TcpStream> {
    connect(addr)
}

/// A keep-alive connection that has done one request (response read) and is
/// then held idle.
pub fn keepalive_idle(addr: SocketAddr, path: &str) -> Result<TcpStream> {
    let mut s = connect(addr)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut r = BufReader::new(s.try_clone()?);
    let resp = read_response(&mut r, false)?;
    if resp.status != 200 {
        bail!("keepalive request: status {}", resp.status);
    }
    if !r.buffer().is_empty() {
        bail!("unexpected bytes after the keep-alive response");
    }
    Ok(s)
}

/// Full download with `Connection: close`, reading every byte; returns the
/// body length.
pub fn download(addr: SocketAddr, path: &str) -> Result<u64> {
    let resp = get_close(addr, path)?;
    if resp.status != 200 {
        bail!("download {path}: status {}", resp.status);
    }
    Ok(resp.body_len)
}

/// A client that requests a large file, reads `read_bytes` of it and then
/// stops reading while keeping the connection open: nginx is left writing.
/// Its receive buffer is kept small so the kernel cannot absorb the file.
pub struct SlowReader {
    pub stream: TcpStream,
    pub read: usize,
}

impl SlowReader {
    pub fn start(addr: SocketAddr, path: &str, read_bytes: usize) -> Result<SlowReader> {
        let sock = unsafe {
            libc::socket(
                if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 },
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if sock < 0 {
            bail!("socket(): {}", std::io::Error::last_os_error());
        }
        let size: libc::c_int = 64 * 1024;
        unsafe {
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let SocketAddr::V4(a4) = addr else {
            unsafe { libc::close(sock) };
            bail!("SlowReader supports IPv4 only");
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = unsafe {
            libc::connect(
                sock,
                &sin as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            unsafe { libc::close(sock) };
            bail!("connect {addr}: {e}");
        }
        use std::os::fd::FromRawFd;
        let mut stream = unsafe { TcpStream::from_raw_fd(sock) };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut read = 0usize;
        let deadline = Instant::now() + IO_TIMEOUT;
        while read < read_bytes && Instant::now() < deadline {
            let want = (read_bytes - read).min(buf.len());
            let n = stream.read(&mut buf[..want])?;
            if n == 0 {
                bail!("EOF after {read} bytes from {path}");
            }
            read += n;
        }
        if read < read_bytes {
            bail!("slow reader: only {read} of {read_bytes} bytes in time");
        }
        Ok(SlowReader { stream, read })
    }
}

/// Result of a POST.
#[derive(Debug)]
pub struct PostResult {
    /// Status of an interim response (100 Continue) if one came.
    pub interim: Option<u16>,
    pub response: Response,
}

/// POSTs `body` to `path` with `Connection: close` and reads to EOF. With
/// `expect_continue`, sends the headers with `Expect: 100-continue`, waits up
/// to `continue_wait` for an interim response (the wait is part of the
/// scenario), then sends the body and reads the final response.
pub fn post(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    expect_continue: bool,
    continue_wait: Duration,
) -> Result<PostResult> {
    let mut s = connect(addr)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        body.len(),
        if expect_continue {
            "Expect: 100-continue\r\n"
        } else {
            ""
        }
    );
    if !expect_continue {
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req)?;
        let mut r = BufReader::new(s);
        let response = read_response(&mut r, false)?;
        expect_eof(&mut r)?;
        return Ok(PostResult {
            interim: None,
            response,
        });
    }
    s.write_all(head.as_bytes())?;
    let mut r = BufReader::new(s.try_clone()?);
    // Is anything there within continue_wait?
    s.set_read_timeout(Some(continue_wait))?;
    let got = match r.fill_buf() {
        Ok(b) => !b.is_empty(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => return Err(e).context("waiting for 100 Continue"),
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut interim = None;
    let mut final_resp = None;
    if got {
        let first = read_response(&mut r, false)?;
        if (100..200).contains(&first.status) {
            interim = Some(first.status);
        } else {
            final_resp = Some(first);
        }
    }
    // Send the body (if nginx already answered, it reads and discards it).
    let _ = s.write_all(body);
    let response = match final_resp {
        Some(f) => f,
        None => read_response(&mut r, false)?,
    };
    match expect_eof(&mut r) {
        Ok(()) => {}
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::ConnectionReset) => {}
        Err(e) => return Err(e),
    }
    Ok(PostResult { interim, response })
}

// ---------------------------------------------------------------------------
// wrk

/// `$WRK_BIN`, else /usr/bin/wrk, else `wrk` from PATH.
pub fn wrk_bin() -> String {
    if let Ok(b) = std::env::var("WRK_BIN") {
        return b;
    }
    if std::path::Path::new("/usr/bin/wrk").is_file() {
        return "/usr/bin/wrk".into();
    }
    crate::util::find_executable("wrk").map_or_else(|| "/usr/bin/wrk".into(), |p| p.to_string_lossy().into_owned())
}

/// wrk's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WrkResult {
    pub requests: u64,
    /// How long wrk ran, from `N requests in 10.00s` (wrk's own clock).
    pub duration: Duration,
    pub non_2xx_3xx: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
    pub output: String,
}

impl WrkResult {
    pub fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }

    /// Socket errors plus responses that were neither 2xx nor 3xx.
    pub fn errors(&self) -> u64 {
        self.socket_errors() + self.non_2xx_3xx
    }

    /// Completed requests per second of wrk's own run time.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// wrk's durations: `10.00s`, `1.50m`, `2.00h`, `500.00ms`, `900.00us`.
pub fn parse_wrk_duration(s: &str) -> Option<Duration> {
    for (suffix, secs) in [("ms", 1e-3), ("us", 1e-6), ("m", 60.0), ("h", 3600.0), ("s", 1.0)] {
        if let Some(v) = s.strip_suffix(suffix) {
            let v = v.parse::<f64>().ok()? * secs;
            return (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v));
        }
    }
    None
}

/// Parses wrk's text output.
pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult {
        output: out.to_string(),
        ..Default::default()
    };
    let mut saw_requests = false;
    for line in out.lines() {
        let l = line.trim();
        if l.contains(" requests in ") {
            // "812345 requests in 10.00s, 600.12MB read"
            let mut words = l.split_whitespace();
            let (n, d) = (words.next(), words.nth(2));
            r.requests = n
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("bad wrk line {l:?}"))?;
            r.duration = d
                .and_then(|d| parse_wrk_duration(d.trim_end_matches(',')))
                .with_context(|| format!("bad wrk line {l:?}"))?;
            saw_requests = true;
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx_3xx = rest.trim().parse().with_context(|| format!("bad wrk line {l:?}"))?;
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut it = part.split_whitespace();
                let (Some(k), Some(v)) = (it.next(), it.next()) else {
                    bail!("bad wrk line {l:?}");
                };
                let v: u64 = v.parse().with_context(|| format!("bad wrk line {l:?}"))?;
                match k {
                    "connect" => r.connect_errors = v,
                    "read" => r.read_errors = v,
                    "write" => r.write_errors = v,
                    "timeout" => r.timeouts = v,
                    _ => bail!("bad wrk line {l:?}"),
                }
            }
        }
    }
    if !saw_requests {
        bail!("no 'requests in' line in wrk output:\n{out}");
    }
    Ok(r)
}

/// A running wrk.
pub struct WrkRun {
    guard: ChildGuard,
    limit: Duration,
    args: Vec<String>,
}

impl WrkRun {
    /// Starts wrk with `args`; `duration` is its `-d`, used to bound the wait.
    pub fn spawn(args: &[&str], duration: Duration) -> Result<WrkRun> {
        let mut cmd = Command::new(wrk_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(WrkRun {
            guard: ChildGuard::spawn(&mut cmd, "wrk")?,
            limit: duration + Duration::from_secs(20),
            args: args.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.try_wait(), Ok(None))
    }

    /// Waits (bounded) for wrk to finish and parses its output.
    pub fn wait(mut self) -> Result<WrkResult> {
        let st = self.guard.wait_timeout(self.limit)?;
        let child = self.guard.child_mut().context("wrk child gone")?;
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        if !st.success() {
            bail!("wrk {:?} failed: {st}\n{out}\n{err}", self.args);
        }
        parse_wrk(&out).with_context(|| format!("wrk {:?} stderr: {err}", self.args))
    }
}

/// Runs wrk to completion.
pub fn wrk(args: &[&str], duration: Duration) -> Result<WrkResult> {
    WrkRun::spawn(args, duration)?.wait()
}

/// Waits (bounded) for a condition on a running wrk: used to reload/kill "after
/// the first second" only once wrk really is producing traffic.
pub fn wait_wrk_running(w: &mut WrkRun, min: Duration) -> Result<()> {
    let t0 = Instant::now();
    poll(
        "wrk to run",
        min + Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            if !w.is_running() {
                bail!("wrk exited early");
            }
            Ok(if t0.elapsed() >= min {
                Poll::Ready(())
            } else {
                Poll::Pending("".into())
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:8080/\n  1 threads and 20 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.06ms  307.47us   6.43ms   85.06%\n    Req/Sec    18.93k     1.03k   20.43k    75.00%\n  37658 requests in 2.00s, 29.23MB read\n  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 37658\nRequests/sec:  18803.83\nTransfer/sec:     14.59MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 37658);
        assert_eq!(r.duration, Duration::from_secs(2));
        assert_eq!(r.errors(), 37658 + 6);
        assert!((r.rate() - 18829.0).abs() < 1e-6);
        assert_eq!(parse_wrk_duration("1.50m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_wrk_duration("500.00ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wrk_duration("10"), None);
        assert_eq!(r.non_2xx_3xx, 37658);
        assert_eq!(
            (r.connect_errors, r.read_errors, r.write_errors, r.timeouts),
            (0, 3, 1, 2)
        );
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn reads_chunked_and_length_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnopeHTTP/1.0 200 OK\r\n\r\nrest";
        let mut r = BufReader::new(&raw[..]);
        let a = read_response(&mut r, false).unwrap();
        assert_eq!((a.status, a.body_head.as_slice()), (200, &b"abcde"[..]));
        let b = read_response(&mut r, false).unwrap();
        assert_eq!((b.status, b.body_len), (404, 4));
        let c = read_response(&mut r, false).unwrap();
        assert_eq!(c.body_head, b"rest");
    }

    #[test]
    fn splits_requests() {
        let req = split_request_bytes("/");
        let parts = split_into(&req, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), req);
    }
}
