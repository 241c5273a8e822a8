//! Expose stage: renders metric families (Prometheus text 0.0.4 or
//! OpenMetrics 1.0, negotiated per scrape) and serves them over HTTP with
//! /healthz and /readyz, plus the routes later stages add (the API).
//! Owns the `web:` config section.
//!
//! Files: `server` (bind, accept loop, connections), `conns` (the bounded
//! connection table: timeouts, eviction), `limits` (per-request limits),
//! `routes` (telemetry, health, landing page), `http_stats`
//! (`ngxprobe_http_*`), `render`/`negotiate` (formats), `process`
//! (`process_*`), `config`/`listen` (the `web:` section), `web_config`
//! (`--web.config.file`, exporter-toolkit's format), `tls` (rustls from it),
//! `auth` (basic auth and headers).
mod auth;
mod config;
mod conns;
mod health;
mod http_stats;
mod limits;
mod listen;
mod negotiate;
mod process;
mod render;
mod routes;
mod server;
#[cfg(test)]
mod tests;
mod tls;
mod web_config;

pub use config::{ListenAddress, WebConfig};
pub use health::Health;
pub use negotiate::{Format, negotiate};
pub use process::{max_fds, open_fds, process_families};
pub use render::{render_openmetrics, render_text};
pub use server::{ServeError, Server, bind};
pub use web_config::{WebSecurity, load as load_web_config};
