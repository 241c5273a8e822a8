//! Expose stage: renders metric families (Prometheus text 0.0.4 or
//! OpenMetrics 1.0, negotiated per scrape) and serves them over HTTP with
//! /healthz and /readyz.
mod float;
mod health;
mod negotiate;
mod process;
mod render;
mod server;

pub use health::Health;
pub use process::process_families;
pub use server::serve;
// Rendering and binding API for other callers (dumps, tests); serve() uses them internally.
#[allow(unused_imports)]
pub use negotiate::{Format, negotiate};
#[allow(unused_imports)]
pub use render::{render_openmetrics, render_text};
#[allow(unused_imports)]
pub use server::{ServeError, bind, serve_listener};

use crate::metrics::Family;

/// Where the server gets the families for a scrape (implemented by collect).
/// Called on every scrape: keep it cheap and non-blocking.
pub trait MetricsSource: Send + Sync {
    fn families(&self) -> Vec<Family>;
}
