//! Go and Prometheus compatibility: the small, exact behaviours users see when
//! they compare ngxprobe with Prometheus, Alertmanager or promtool — time and
//! RFC 3339, Go's float and duration formatting, Prometheus durations, Go
//! quoting — and the one YAML loader whose errors name file, line and field.
//!
//! A leaf: it depends on no other ngxprobe module, and every stage that needs
//! one of these behaviours uses this copy (like Prometheus's model/timestamp,
//! util/strutil and model.Duration).
pub mod duration;
pub mod float;
pub mod quote;
pub mod relabel;
pub mod time;
pub mod yaml;
mod yaml_locate;

pub use duration::PromDuration;
pub use yaml::{InvalidField, Step};
