//! Expose stage: renders metric families (Prometheus text 0.0.4 or
//! OpenMetrics 1.0, negotiated per scrape) and serves them over HTTP with
//! /healthz and /readyz, plus the routes later stages add (the API).
//! Owns the `web:` config section.
mod config;
mod health;
mod listen;
mod negotiate;
mod process;
mod render;
mod server;

pub use config::{ListenAddress, WebConfig};
pub use health::Health;
pub use negotiate::{Format, negotiate};
pub use process::process_families;
pub use render::{render_openmetrics, render_text};
pub use server::{ServeError, bind, serve, serve_listener};
