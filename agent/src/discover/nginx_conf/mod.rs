//! What an nginx instance's config says about its HTTP listeners: whether
//! any serves TLS, HTTP/2 or HTTP/3 (whose requests only the request uprobe
//! counts exactly) or all are plaintext HTTP/1.x (which the socket probes
//! measure, at a lower cost per request).
//!
//! The config is read the way nginx reads it (ngx_conf_file.c): the main
//! file, then `include`s in place, relative paths taken from the main
//! file's directory (nginx's conf_prefix), wildcards expanded like glob(3).
//! Files are read inside the instance's root (/proc/<master>/root). Anything
//! it cannot read for certain (a missing file, a syntax error, limits) gives
//! [`ConfVerdict::Unknown`], never a guess.
//!
//! It also collects every TCP `listen` of `http {}`, merged per address as
//! nginx merges them ([`listens`]), for the ports that speak only
//! cleartext HTTP/2 in the instance's nginx version.
mod files;
pub mod listens;
#[cfg(test)]
mod tests;
mod token;

use std::path::Path;

use files::Root;
pub use listens::Listens;
use listens::ServerListens;
use token::{Item, tokenize};

/// Most files read for one instance (main file and includes).
pub const MAX_FILES: usize = 256;
/// Most bytes read for one instance, all files together.
pub const MAX_TOTAL_BYTES: u64 = 8 << 20;
/// Deepest nesting of includes (the main file is depth 0).
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// Values of the `reason` label of unknown verdicts.
pub const UNKNOWN_REASONS: [&str; 4] = ["unreadable", "syntax", "too_large", "path_unknown"];

/// What the config says about an instance's HTTP listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfVerdict {
    /// Some HTTP listener has TLS, HTTP/2 or HTTP/3; `why` names the first
    /// directive found (file:line and the words), safe to log.
    NeedsUprobe { why: String },
    /// Every `listen` in `http {}` is plaintext HTTP/1.x.
    PlaintextOnly,
    /// The config could not be read for certain.
    Unknown(Unknown),
}

/// What the agent takes from an instance's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConf {
    pub verdict: ConfVerdict,
    /// The `http {}` TCP listeners (empty when the verdict is unknown, or a
    /// `listen` was not understood: see `listens_unknown`).
    pub listens: Listens,
    /// Why `listens` is not known for certain (a `listen` not understood,
    /// file and line); None when the verdict is unknown (its detail says why).
    pub listens_unknown: Option<String>,
}

impl InstanceConf {
    fn unknown(u: Unknown) -> InstanceConf {
        InstanceConf {
            verdict: ConfVerdict::Unknown(u),
            listens: Listens::default(),
            listens_unknown: None,
        }
    }
}

/// The TCP ports on which an instance's nginx makes no HTTP/1.x request
/// (`listen ... http2` without TLS, nginx before 1.25.1), from its config
/// and version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2cPorts {
    pub ports: std::collections::BTreeSet<u16>,
    /// Why some or all ports could not be decided (safe to log); those are
    /// left as HTTP/1.x (their HTTP/1.x bytes may be counted as requests
    /// nginx does not count), with one of [`H2C_UNKNOWN_REASONS`].
    pub unknown: Option<(&'static str, String)>,
}

/// Values of the `reason` label of undecided h2c-only ports.
pub const H2C_UNKNOWN_REASONS: [&str; 3] = ["config", "version", "mixed_port"];

/// Decides [`H2cPorts`] for an instance running nginx `version`.
pub fn h2c_ports(conf: &InstanceConf, version: &str) -> H2cPorts {
    if let ConfVerdict::Unknown(u) = &conf.verdict {
        return H2cPorts {
            ports: Default::default(),
            unknown: Some((
                "config",
                format!("config not read for certain ({}: {})", u.reason, u.detail),
            )),
        };
    }
    if let Some(why) = &conf.listens_unknown {
        return H2cPorts {
            ports: Default::default(),
            unknown: Some(("config", why.clone())),
        };
    }
    let plain_h2 = conf.listens.plaintext_http2_ports();
    if plain_h2.is_empty() {
        return H2cPorts::default();
    }
    match listens::plaintext_http2_is_h2c_only(version) {
        Ok(false) => H2cPorts::default(),
        Err(why) => H2cPorts {
            ports: Default::default(),
            unknown: Some(("version", format!("{why}: plaintext http2 on ports {plain_h2:?}"))),
        },
        Ok(true) => {
            let (ports, mixed) = conf.listens.h2c_only_ports();
            let unknown = (!mixed.is_empty()).then(|| {
                (
                    "mixed_port",
                    format!("plaintext http2 on some addresses only of ports {mixed:?}"),
                )
            });
            H2cPorts { ports, unknown }
        }
    }
}

/// Why a config could not be read; `detail` names file and line, safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// One of [`UNKNOWN_REASONS`].
    pub reason: &'static str,
    pub detail: String,
}

/// Reads the config of the instance whose master is `master_pid`, as it
/// runs with `conf_path` (absolute, in the instance's root).
pub fn read_instance_conf(proc_root: &Path, master_pid: u32, conf_path: &str) -> InstanceConf {
    if !conf_path.starts_with('/') {
        // A relative -c without -p is relative to the compiled-in prefix,
        // which the agent does not know.
        return InstanceConf::unknown(Unknown {
            reason: "path_unknown",
            detail: format!(
                "config path {} is relative to nginx's compiled-in prefix",
                crate::discover::log_excerpt(conf_path)
            ),
        });
    }
    let root_dir = proc_root.join(master_pid.to_string()).join("root");
    match Root::open(&root_dir) {
        Ok(root) => read_conf(&root, conf_path),
        Err(e) => InstanceConf::unknown(Unknown {
            reason: "unreadable",
            detail: format!("cannot open {}: {e}", root_dir.display()),
        }),
    }
}

fn read_conf(root: &Root, conf_path: &str) -> InstanceConf {
    // nginx's conf_prefix: the main file's directory, with its slash.
    let prefix = match conf_path.rfind('/') {
        Some(i) => conf_path[..=i].to_owned(),
        None => "/".to_owned(),
    };
    let mut r = Reader {
        root,
        prefix,
        files: 0,
        bytes: 0,
        stack: Vec::new(),
        needs: None,
        servers: Vec::new(),
        http_ssl_on: false,
        listens_unknown: None,
    };
    match r.file(conf_path, 0, None) {
        Ok(()) => InstanceConf {
            verdict: match r.needs {
                Some(why) => ConfVerdict::NeedsUprobe { why },
                None => ConfVerdict::PlaintextOnly,
            },
            listens: if r.listens_unknown.is_some() {
                Listens::default()
            } else {
                Listens::merge(&r.servers, r.http_ssl_on)
            },
            listens_unknown: r.listens_unknown,
        },
        Err(u) => InstanceConf::unknown(u),
    }
}

struct Reader<'a> {
    root: &'a Root,
    prefix: String,
    files: usize,
    bytes: u64,
    /// Names of the enclosing blocks (`http`, `server`, …).
    stack: Vec<String>,
    /// The first directive that makes the instance need the uprobe.
    needs: Option<String>,
    /// The `server {}`s of `http {}`, in order.
    servers: Vec<ServerListens>,
    /// `ssl on` in `http {}` (inherited by every server).
    http_ssl_on: bool,
    /// The first `listen` not understood (file:line and why).
    listens_unknown: Option<String>,
}

fn shown(path: &str) -> String {
    crate::discover::log_excerpt(path)
}

impl Reader<'_> {
    /// Parses one file in place of an `include` (`from`: where, for errors).
    fn file(&mut self, path: &str, depth: usize, from: Option<&str>) -> Result<(), Unknown> {
        let at = || from.map(|f| format!(" (included from {f})")).unwrap_or_default();
        if depth > MAX_INCLUDE_DEPTH {
            return Err(Unknown {
                reason: "too_large",
                detail: format!(
                    "includes nested deeper than {MAX_INCLUDE_DEPTH} at {}{}",
                    shown(path),
                    at()
                ),
            });
        }
        self.files += 1;
        if self.files > MAX_FILES {
            return Err(Unknown {
                reason: "too_large",
                detail: format!("more than {MAX_FILES} config files (at {}{})", shown(path), at()),
            });
        }
        let left = MAX_TOTAL_BYTES - self.bytes;
        let text = match self.root.read(path, left) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(Unknown {
                    reason: "too_large",
                    detail: format!(
                        "config files larger than {MAX_TOTAL_BYTES} bytes in all (at {}{})",
                        shown(path),
                        at()
                    ),
                });
            }
            Err(e) => {
                return Err(Unknown {
                    reason: "unreadable",
                    detail: format!("cannot read {}{}: {e}", shown(path), at()),
                });
            }
        };
        self.bytes += text.len() as u64;
        let items = tokenize(&text).map_err(|e| Unknown {
            reason: "syntax",
            detail: format!("{}:{}: {}", shown(path), e.line, e.what),
        })?;
        // Blocks must close in the file that opened them (ngx_conf_parse).
        let base = self.stack.len();
        for item in items {
            match item {
                Item::BlockEnd { line } => {
                    if self.stack.len() == base {
                        return Err(Unknown {
                            reason: "syntax",
                            detail: format!("{}:{line}: unexpected \"}}\"", shown(path)),
                        });
                    }
                    self.stack.pop();
                }
                Item::Directive { words, line, block } => {
                    let here = format!("{}:{line}", shown(path));
                    if words[0] == "include" && !block {
                        let [_, target] = words.as_slice() else {
                            return Err(Unknown {
                                reason: "syntax",
                                detail: format!("{here}: \"include\" takes one path"),
                            });
                        };
                        self.include(target, depth, &here)?;
                        continue;
                    }
                    self.listen_directive(&words, &here, block);
                    self.directive(&words, &here);
                    if block {
                        self.stack.push(words[0].clone());
                    }
                }
            }
        }
        if self.stack.len() != base {
            return Err(Unknown {
                reason: "syntax",
                detail: format!("{}: unexpected end of file, expecting \"}}\"", shown(path)),
            });
        }
        Ok(())
    }

    fn include(&mut self, target: &str, depth: usize, here: &str) -> Result<(), Unknown> {
        let full = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("{}{target}", self.prefix)
        };
        if !full.contains(['*', '?', '[']) {
            return self.file(&full, depth + 1, Some(here));
        }
        let paths = self.root.glob(&full, MAX_FILES).map_err(|e| Unknown {
            reason: "unreadable",
            detail: format!("{here}: include {}: {e}", shown(&full)),
        })?;
        for p in paths {
            self.file(&p, depth + 1, Some(here))?;
        }
        Ok(())
    }

    /// Collects `server {}`s, their `listen`s and `ssl on` in `http {}`.
    fn listen_directive(&mut self, words: &[String], here: &str, block: bool) {
        if self.stack.first().map(String::as_str) != Some("http") {
            return;
        }
        let in_server = self.stack.len() == 2 && self.stack[1] == "server";
        let on = words.get(1).is_some_and(|w| w == "on");
        match words[0].as_str() {
            "server" if block && self.stack.len() == 1 => self.servers.push(ServerListens::default()),
            "ssl" if on && self.stack.len() == 1 => self.http_ssl_on = true,
            "ssl" if on && in_server => {
                if let Some(s) = self.servers.last_mut() {
                    s.ssl_on = true;
                }
            }
            "listen" if in_server => match listens::parse_listen(words) {
                Ok(Some(l)) => {
                    if let Some(s) = self.servers.last_mut() {
                        s.listens.push(l);
                    }
                }
                Ok(None) => {}
                Err(why) => {
                    if self.listens_unknown.is_none() {
                        self.listens_unknown = Some(format!("{here}: {why}"));
                    }
                }
            },
            _ => {}
        }
    }

    /// Notes a directive that needs the uprobe: in `http {}` (not `stream`
    /// or `mail`), a `listen` with `ssl`, `http2`, `quic` or `http3`, or
    /// `ssl on`, `http2 on`, `http3 on`.
    fn directive(&mut self, words: &[String], here: &str) {
        if self.needs.is_some() || self.stack.first().map(String::as_str) != Some("http") {
            return;
        }
        let needs = match words[0].as_str() {
            "listen" => words
                .iter()
                .skip(2)
                .any(|w| matches!(w.as_str(), "ssl" | "http2" | "quic" | "http3")),
            "ssl" | "http2" | "http3" => words.get(1).is_some_and(|w| w == "on"),
            _ => false,
        };
        if needs {
            self.needs = Some(format!("{here}: {}", crate::discover::log_excerpt(&words.join(" "))));
        }
    }
}
