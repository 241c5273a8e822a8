//! The oracle: nginx's own stub_status, served by the instance under test
//! (its own connection and request are counted by nginx and by ngxprobe).
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One stub_status reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StubStatus {
    pub active: i64,
    pub accepted: i64,
    pub handled: i64,
    pub requests: i64,
    pub reading: i64,
    pub writing: i64,
    pub waiting: i64,
}

/// Fetches `GET /stub` over a fresh TCP connection with `Connection: close`
/// and reads to EOF: when this returns, nginx has closed that connection.
pub fn fetch(addr: SocketAddr) -> Result<StubStatus> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("oracle: connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /stub HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("oracle: read {addr} to EOF"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("oracle: no header end in {text:?}"))?;
    let status_line = head.lines().next().unwrap_or("");
    if !status_line.starts_with("HTTP/1.1 200") {
        bail!("oracle: unexpected status {status_line:?}; response {text:?}");
    }
    parse(body)
}

/// Parses the stub_status body:
/// ```text
/// Active connections: 1
/// server accepts handled requests
///  4 4 4
/// Reading: 0 Writing: 1 Waiting: 0
/// ```
pub fn parse(body: &str) -> Result<StubStatus> {
    let toks: Vec<&str> = body.split_whitespace().collect();
    let num = |i: usize| -> Result<i64> {
        toks.get(i)
            .with_context(|| format!("stub_status: missing token {i} in {body:?}"))?
            .parse::<i64>()
            .with_context(|| format!("stub_status: token {i} not a number in {body:?}"))
    };
    let expect = |i: usize, w: &str| -> Result<()> {
        if toks.get(i).copied() != Some(w) {
            bail!("stub_status: expected {w:?} at token {i} in {body:?}");
        }
        Ok(())
    };
    // Active connections: N server accepts handled requests A H R Reading: r Writing: w Waiting: q
    expect(0, "Active")?;
    expect(1, "connections:")?;
    expect(3, "server")?;
    expect(4, "accepts")?;
    expect(5, "handled")?;
    expect(6, "requests")?;
    expect(10, "Reading:")?;
    expect(12, "Writing:")?;
    expect(14, "Waiting:")?;
    if toks.len() != 16 {
        bail!("stub_status: {} tokens, expected 16, in {body:?}", toks.len());
    }
    Ok(StubStatus {
        active: num(2)?,
        accepted: num(7)?,
        handled: num(8)?,
        requests: num(9)?,
        reading: num(11)?,
        writing: num(13)?,
        waiting: num(15)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stub_status() {
        let b =
            "Active connections: 3 \nserver accepts handled requests\n 17 16 250 \nReading: 1 Writing: 2 Waiting: 0 \n";
        let s = parse(b).unwrap();
        assert_eq!(
            s,
            StubStatus {
                active: 3,
                accepted: 17,
                handled: 16,
                requests: 250,
                reading: 1,
                writing: 2,
                waiting: 0
            }
        );
        assert!(parse("Active connections: x").is_err());
        assert!(parse("").is_err());
    }
}
