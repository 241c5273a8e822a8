//! The `--web.listen-address` syntax of nginx-prometheus-exporter (Go's
//! `net.Listen`): `:9113` is every interface, otherwise `IPv4:port`,
//! `[IPv6]:port` or `localhost:port`.
use serde_with::{DeserializeFromStr, SerializeDisplay};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, SerializeDisplay, DeserializeFromStr)]
pub enum ListenAddress {
    /// `:PORT`: all interfaces, IPv4 and IPv6 (the server binds `[::]`
    /// dual-stack and falls back to `0.0.0.0` when IPv6 is off).
    AllInterfaces { port: u16 },
    /// One explicit address.
    Socket(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listen address {input:?}: {reason} (examples: \":9113\", \"127.0.0.1:9113\", \"[::1]:9113\")")]
pub struct ParseListenAddressError {
    input: String,
    reason: &'static str,
}

impl FromStr for ListenAddress {
    type Err = ParseListenAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseListenAddressError {
            input: s.to_string(),
            reason,
        };
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(fail("missing \":port\""));
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("port must be a number"));
        }
        let port: u16 = port.parse().map_err(|_| fail("port must be at most 65535"))?;
        if host.is_empty() {
            return Ok(ListenAddress::AllInterfaces { port });
        }
        let ip = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            match inner.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => IpAddr::V6(v6),
                _ => return Err(fail("the part in brackets must be an IPv6 address")),
            }
        } else if host.eq_ignore_ascii_case("localhost") {
            // Go resolves localhost to 127.0.0.1 first; don't depend on /etc/hosts.
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => IpAddr::V4(v4),
                Ok(IpAddr::V6(_)) => {
                    return Err(fail("IPv6 addresses need brackets, e.g. [::1]:9113"));
                }
                Err(_) => {
                    return Err(fail("host must be empty, an IPv4 address, [IPv6] or localhost"));
                }
            }
        };
        Ok(ListenAddress::Socket(SocketAddr::new(ip, port)))
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::AllInterfaces { port } => write!(f, ":{port}"),
            // SocketAddr already brackets IPv6.
            ListenAddress::Socket(addr) => write!(f, "{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exporter_syntax() {
        assert_eq!(":9113".parse(), Ok(ListenAddress::AllInterfaces { port: 9113 }));
        let v4: SocketAddr = "127.0.0.1:9113".parse().unwrap();
        assert_eq!("127.0.0.1:9113".parse(), Ok(ListenAddress::Socket(v4)));
        let v6: SocketAddr = "[::1]:9113".parse().unwrap();
        assert_eq!("[::1]:9113".parse(), Ok(ListenAddress::Socket(v6)));
        assert_eq!(
            "localhost:80".parse(),
            Ok(ListenAddress::Socket("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(":0".parse(), Ok(ListenAddress::AllInterfaces { port: 0 }));
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "9113",
            ":",
            ":http",
            ":65536",
            "::1:9113",
            "[127.0.0.1]:1",
            "example.com:9113",
            "1.2.3:9113",
            ":-1",
        ] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [":9113", "127.0.0.1:9113", "[::1]:9113", "[::]:1"] {
            let parsed: Result<ListenAddress, _> = text.parse();
            assert_eq!(parsed.map(|a| a.to_string()), Ok(text.to_string()));
        }
    }
}
