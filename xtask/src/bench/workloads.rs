//! The workloads of `bench overhead`: one nginx each (only the listeners it
//! needs) and the client that drives it.
//!
//! Each workload's nginx runs alone: the request uprobe is attached per
//! executable, so a TLS listener in any nginx running the same binary would
//! make the plaintext workload's nginx trap too. nginx, wrk and h2load come
//! from the end-to-end harness (`ngxprobe_e2e`).
use crate::util::{Rss, check_interrupted, rss, sleep};
use anyhow::{Context as _, Result, bail, ensure};
use ngxprobe_e2e::clients::{parse_wrk, wrk_bin};
use ngxprobe_e2e::protocol_clients::parse_h2load;
use ngxprobe_e2e::util::{ChildGuard, is_alive};
use ngxprobe_e2e::{Nginx, NginxOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// Plaintext HTTP/1.1 keep-alive, sendfile on (wrk).
    PlainKa,
    /// Plaintext, `Connection: close`: one connection per request (wrk).
    Close,
    /// HTTPS keep-alive, HTTP/1.1 (wrk over TLS).
    Https,
    /// HTTP/2 over TLS (h2load -c N -m M).
    H2,
    /// Plaintext keep-alive through a proxying nginx to a second local nginx
    /// (kept-alive upstream connections); the proxying worker is measured.
    Proxy,
    /// Not nginx: `dd bs=1` and a loopback TCP ping-pong between two xtask
    /// processes (what the hooks cost everyone else).
    Other,
}

impl Workload {
    pub fn title(self) -> &'static str {
        match self {
            Workload::PlainKa => "plaintext keep-alive",
            Workload::Close => "plaintext Connection: close",
            Workload::Https => "HTTPS keep-alive",
            Workload::H2 => "HTTP/2 over TLS",
            Workload::Proxy => "proxied (nginx → local nginx)",
            Workload::Other => "other processes (not nginx)",
        }
    }
}

/// Settings of the clients.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub connections: u32,
    pub h2_clients: u32,
    pub h2_streams: u32,
}

/// The nginx of one workload (and the upstream nginx of `proxy`).
pub struct Site {
    // Field order = drop order: the proxying nginx goes before its upstream.
    pub nginx: Nginx,
    _upstream: Option<Nginx>,
    pub workers: Vec<u32>,
    pub conf: String,
    url: String,
    workload: Workload,
}

impl Site {
    pub fn start(w: Workload, bin: &Path) -> Result<Site> {
        let base = NginxOptions {
            tag: format!("bench-{w:?}").to_lowercase(),
            bin: Some(bin.to_path_buf()),
            keepalive_requests: 1_000_000,
            big_file: false,
            ..NginxOptions::default()
        };
        let (nginx, upstream) = match w {
            Workload::PlainKa | Workload::Close => (Nginx::start(base)?, None),
            Workload::Https | Workload::H2 => (Nginx::start(NginxOptions { tls: true, ..base })?, None),
            Workload::Proxy => {
                let up = Nginx::start(NginxOptions {
                    tag: "bench-upstream".into(),
                    ..base.clone()
                })?;
                // Kept-alive upstream connections: what a proxy in front of an
                // app does, and no port exhaustion at tens of thousands req/s.
                let front = Nginx::start(NginxOptions {
                    extra_http: format!(
                        "    upstream bench_upstream {{\n        server 127.0.0.1:{};\n        keepalive 16;\n    }}\n",
                        up.main_port()
                    ),
                    main_locations: "        location /proxy/ {\n            proxy_pass http://bench_upstream/;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }\n".into(),
                    ..base
                })?;
                (front, Some(up))
            }
            Workload::Other => bail!("the `other` workload has no nginx"),
        };
        let workers: Vec<u32> = nginx.worker_pids().into_iter().map(|p| p as u32).collect();
        ensure!(
            workers.len() == 1,
            "nginx has {} workers, want 1: {workers:?}",
            workers.len()
        );
        let url = match w {
            Workload::Https | Workload::H2 => {
                let a = nginx.tls_addr().context("nginx has no TLS listener")?;
                format!("https://{a}/index.html")
            }
            Workload::Proxy => nginx.url("/proxy/index.html"),
            _ => nginx.url("/index.html"),
        };
        let conf = nginx.conf_label();
        Ok(Site {
            nginx,
            _upstream: upstream,
            workers,
            conf,
            url,
            workload: w,
        })
    }

    pub fn check_alive(&self) -> Result<()> {
        for &w in &self.workers {
            if !is_alive(w as i32) {
                bail!("the nginx worker {w} is gone (crashed?)");
            }
        }
        Ok(())
    }

    /// The `requests` counter of the (proxying) nginx's stub_status.
    pub fn stub_requests(&self) -> Result<f64> {
        Ok(self.nginx.oracle()?.requests as f64)
    }

    /// One client run of `seconds`, with the agent's peak RSS (and its
    /// anonymous, file and shmem parts at that sample) sampled while it runs
    /// (every 200 ms).
    pub fn drive(&self, c: &ClientSettings, seconds: u32, dir: &Path, agent_pid: Option<u32>) -> Result<ClientRun> {
        let out_path = dir.join("client.out");
        let out = std::fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match self.workload {
            Workload::H2 => {
                let mut cmd = Command::new("h2load");
                cmd.args([
                    "-t1",
                    &format!("-c{}", c.h2_clients),
                    &format!("-m{}", c.h2_streams),
                    &format!("-D{seconds}"),
                    &self.url,
                ]);
                cmd
            }
            _ => {
                let mut cmd = Command::new(wrk_bin());
                cmd.args(["-t1", &format!("-c{}", c.connections), &format!("-d{seconds}s")]);
                if self.workload == Workload::Close {
                    cmd.args(["-H", "Connection: close"]);
                }
                cmd.arg(&self.url);
                cmd
            }
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut child = ChildGuard::spawn(&mut cmd, "load client")?;
        let limit = Duration::from_secs(u64::from(seconds) + 30);
        let deadline = Instant::now() + limit;
        let mut rss_max: Option<Rss> = None;
        let status = loop {
            check_interrupted()?;
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if let Some(now) = agent_pid.and_then(rss)
                && rss_max.is_none_or(|m| now.total > m.total)
            {
                rss_max = Some(now);
            }
            if Instant::now() > deadline {
                bail!("the load client did not finish within {limit:?}");
            }
            sleep(Duration::from_millis(200))?;
        };
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        ensure!(status.success(), "load client failed ({status}):\n{text}");
        let mut run = if self.workload == Workload::H2 {
            let r = parse_h2load(&text)?;
            ensure!(r.protocol == "h2", "h2load did not negotiate h2:\n{text}");
            ClientRun {
                requests: r.succeeded,
                rps: r.succeeded as f64 / f64::from(seconds.max(1)),
                errors: r.failed + r.errored,
                rss_max: None,
            }
        } else {
            let r = parse_wrk(&text)?;
            ClientRun {
                requests: r.requests,
                rps: r.rate(),
                errors: r.errors(),
                rss_max: None,
            }
        };
        ensure!(run.requests > 0, "the load client completed no request:\n{text}");
        run.rss_max = rss_max;
        Ok(run)
    }
}

/// What one client run reported.
pub struct ClientRun {
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    /// The agent's resident memory at its highest sample.
    pub rss_max: Option<Rss>,
}
