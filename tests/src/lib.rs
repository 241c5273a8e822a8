//! ngxprobe end-to-end harness: real nginx, real agent, real clients.
//!
//! * [`nginx`]: a private nginx instance on loopback (child process, killed by PID).
//! * [`nginx_dev`]: nginx's structs as Debian built them (nginx-dev), compiled: offsetof() and DWARF.
//! * [`netns`]: network namespaces the test creates, their TCP counters as an oracle.
//! * [`oracle`]: nginx's own stub_status, the reference numbers.
//! * [`agent`]: the ngxprobe binary (`$NGXPROBE_BIN`), its /readyz and /metrics.
//! * [`clients`]: raw HTTP/1.x clients and wrk.
//! * [`protocol_clients`]: what ngxprobe does not parse: TLS, HTTP/2, garbage.
//! * [`pki`]: a test CA and the certificates it signs (openssl).
//! * [`metrics_text`]: Prometheus text parsing, per-`conf_path` views.
//! * [`measure`]: the exact measurement protocol and the invariant monitor.
//! * [`kube_api`]: a local HTTPS stand-in for the Kubernetes API's pods endpoint.
//! * [`slack_receiver`]: a local HTTP server standing in for Slack's webhook.
//! * [`seed`]: the seed's Slack receiver and alerting rule.
//! * [`browser`]: headless Chromium over the DevTools protocol (the page's tests).
//! * [`red`]: per-request views: the agent's histograms and nginx's access log, per label set.
//! * [`prometheus`]: Debian's Prometheus and promtool as processes, the
//!   reference for comparisons (queries, alert latency).
//!
//! `cargo xtask bench` uses the same pieces (so this crate must not depend on
//! the agent crate: xtask builds before the eBPF toolchain exists).
//!
//! Tests in one binary are serialised ([`util::serial`]) and each has a
//! watchdog; every process started is killed by PID on drop, also on panic.
pub mod agent;
pub mod browser;
pub mod clients;
pub mod kube_api;
pub mod measure;
pub mod metrics_text;
pub mod netns;
pub mod nginx;
pub mod nginx_dev;
pub mod oracle;
pub mod pki;
pub mod prometheus;
pub mod protocol_clients;
pub mod red;
pub mod seed;
pub mod slack_receiver;
pub mod tmux;
pub mod util;

pub use agent::{Agent, AgentOptions};
pub use measure::{Report, Target, measure};
pub use nginx::{Nginx, NginxOptions};

use std::sync::MutexGuard;
use std::time::Duration;

/// Per-test limit for the watchdog.
pub const TEST_LIMIT: Duration = Duration::from_secs(240);

/// The usual setup: serialised test, watchdog, nginx (started first, so the
/// agent discovers an already-running instance), agent ready, instance up.
pub struct Session {
    // Drop order = field order: agent, nginx, then the watchdog and the lock.
    pub agent: Agent,
    pub nginx: Nginx,
    _watchdog: util::Watchdog,
    _serial: MutexGuard<'static, ()>,
}

impl Session {
    pub fn start(name: &str, opts: NginxOptions) -> Session {
        Self::start_with_config(name, opts, None)
    }

    /// [`Session::start`] with the agent running `config` (YAML) if given.
    pub fn start_with_config(name: &str, opts: NginxOptions, config: Option<&str>) -> Session {
        let serial = util::serial();
        let wd = util::watchdog(name, TEST_LIMIT);
        eprintln!("[e2e] ---- {name} ----");
        let nginx = Nginx::start(opts).expect("start nginx");
        let agent = match config {
            Some(yaml) => Agent::start_with_config(yaml),
            None => Agent::start(),
        }
        .expect("start ngxprobe");
        agent
            .wait_instance_up(&nginx.conf_label())
            .expect("agent reports the nginx instance up");
        Session {
            agent,
            nginx,
            _watchdog: wd,
            _serial: serial,
        }
    }

    pub fn one_worker(name: &str) -> Session {
        Self::start(name, NginxOptions::default())
    }
}

/// Serialisation + watchdog for tests that set things up themselves.
pub struct Guard {
    _watchdog: util::Watchdog,
    _serial: MutexGuard<'static, ()>,
}

pub fn guard(name: &str) -> Guard {
    let serial = util::serial();
    let wd = util::watchdog(name, TEST_LIMIT);
    eprintln!("[e2e] ---- {name} ----");
    Guard {
        _watchdog: wd,
        _serial: serial,
    }
}
