//! Which TCP ports of an instance speak only cleartext HTTP/2 ("h2c-only"):
//! nginx makes no HTTP/1.x request of any bytes read there, so the socket
//! probes must not either.
//!
//! nginx's semantics (src/http/ngx_http_request.c, ngx_http.c):
//! - 1.9.5 to 1.25.0: `listen ... http2` without `ssl` hands every
//!   connection on that address to ngx_http_v2_init, which rejects anything
//!   but the HTTP/2 preface (GOAWAY, close) without making a request. With
//!   `ssl` (or `ssl on` in the address's default server) it is TLS with ALPN.
//! - 1.25.1 and later: a plaintext connection with HTTP/2 enabled (the
//!   `http2` directive or the deprecated listen parameter) is HTTP/2 only if
//!   its first bytes are the preface; anything else is HTTP/0.9–1.1. No
//!   listener is h2c-only.
//! - The options of one address:port given in several server blocks are
//!   merged: `ssl` and `http2` are each on if any of them says so
//!   (ngx_http_add_addresses). The addresses of one port can differ (a
//!   wildcard and a specific address), each with its own options; the
//!   probes only know the port, so a port is h2c-only when every address
//!   on it is.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

/// The port nginx listens on when `listen` gives none.
const DEFAULT_PORT: u16 = 80;

/// One `listen` of a server in `http {}` (TCP; unix sockets are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Canonical address: an IP literal as Rust prints it, `*` for IPv4's
    /// wildcard, or a host name as written (nginx resolves it; two spellings
    /// of one address are then not merged, which can only keep a port from
    /// being taken for h2c-only).
    pub addr: String,
    pub port: u16,
    pub ssl: bool,
    pub http2: bool,
}

/// Parses the words of a `listen` directive (words[0] is "listen").
/// `Ok(None)`: a unix socket or a QUIC (UDP) listener, not a TCP port.
pub fn parse_listen(words: &[String]) -> Result<Option<Listen>, String> {
    let Some(target) = words.get(1) else {
        return Err("\"listen\" without an address".into());
    };
    if target.starts_with("unix:") {
        return Ok(None);
    }
    let params = &words[2..];
    if params.iter().any(|w| w == "quic") {
        return Ok(None);
    }
    let (addr, port) = parse_addr(target)?;
    Ok(Some(Listen {
        addr,
        port,
        ssl: params.iter().any(|w| w == "ssl"),
        http2: params.iter().any(|w| w == "http2"),
    }))
}

/// `port`, `addr`, `addr:port`, `*:port`, `[v6]`, `[v6]:port`.
fn parse_addr(target: &str) -> Result<(String, u16), String> {
    let bad = || {
        format!(
            "\"listen\" address {} not understood",
            crate::discover::log_excerpt(target)
        )
    };
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        let v6: IpAddr = v6.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (v6.to_string(), port)
    } else if let Some((host, port)) = target.split_once(':') {
        (host.to_owned(), Some(port))
    } else if target.bytes().all(|b| b.is_ascii_digit()) {
        ("*".to_owned(), Some(target))
    } else {
        (target.to_owned(), None)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad()),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    let host = match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => "*".to_owned(),
        Ok(ip) => ip.to_string(),
        Err(_) => host,
    };
    Ok((host, port))
}

/// The `listen`s of one `server {}` in `http {}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerListens {
    pub listens: Vec<Listen>,
    /// `ssl on` in the server (nginx before 1.25.1: TLS on its addresses
    /// where it is the default server; taken here as TLS on all of them).
    pub ssl_on: bool,
}

/// The TCP listeners of an instance's `http {}`, merged per address as
/// nginx merges them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listens {
    /// (address, port) → (ssl, http2).
    addrs: BTreeMap<(String, u16), (bool, bool)>,
}

impl Listens {
    /// Merges the servers' listens; `http_ssl_on`: `ssl on` in `http {}`.
    pub fn merge(servers: &[ServerListens], http_ssl_on: bool) -> Listens {
        let mut addrs: BTreeMap<(String, u16), (bool, bool)> = BTreeMap::new();
        for s in servers {
            if s.listens.is_empty() {
                // A server without `listen` listens on *:80 as root, *:8000
                // otherwise: both taken as plain HTTP/1.x, which can only
                // keep a port from being taken for h2c-only.
                for port in [DEFAULT_PORT, 8000] {
                    addrs.entry(("*".into(), port)).or_default();
                }
            }
            for l in &s.listens {
                let e = addrs.entry((l.addr.clone(), l.port)).or_default();
                e.0 |= l.ssl || s.ssl_on || http_ssl_on;
                e.1 |= l.http2;
            }
        }
        Listens { addrs }
    }

    /// Ports with some plaintext `http2` address.
    pub fn plaintext_http2_ports(&self) -> BTreeSet<u16> {
        self.addrs
            .iter()
            .filter(|(_, (ssl, http2))| *http2 && !*ssl)
            .map(|((_, port), _)| *port)
            .collect()
    }

    /// For nginx before 1.25.1: the ports every address of which is
    /// plaintext `http2` (h2c-only), and those where only some are.
    pub fn h2c_only_ports(&self) -> (BTreeSet<u16>, BTreeSet<u16>) {
        let mut all = BTreeSet::new();
        let mut mixed = BTreeSet::new();
        for port in self.plaintext_http2_ports() {
            let every = self
                .addrs
                .iter()
                .filter(|((_, p), _)| *p == port)
                .all(|(_, (ssl, http2))| *http2 && !*ssl);
            if every {
                all.insert(port);
            } else {
                mixed.insert(port);
            }
        }
        (all, mixed)
    }
}

/// Whether a plaintext `listen ... http2` is h2c-only in the nginx whose
/// version `nginx -v` prints as `version` ("nginx/1.22.1"; OpenResty's
/// "openresty/1.21.4.3" carries nginx 1.21.4). Err: a version whose nginx
/// core is not known (other forks, unreadable), with why.
pub fn plaintext_http2_is_h2c_only(version: &str) -> Result<bool, String> {
    let unknown = || format!("nginx version {} not known", crate::discover::log_excerpt(version));
    let core = version
        .strip_prefix("nginx/")
        .or_else(|| version.strip_prefix("openresty/"))
        .ok_or_else(unknown)?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unknown());
    };
    // Preface detection with HTTP/1.x fallback since 1.25.1.
    Ok((major, minor, patch) < (1, 25, 1))
}
