//! ngxprobe: zero-config nginx visibility from eBPF, as a library.
//!
//! The `ngxprobe` binary (main.rs) is a thin command line over this crate;
//! benchmarks and the end-to-end tests use the same public API.
//!
//! Pipeline (data flows one way): discover/probe (+ kubernetes metadata) → collect → expose (/metrics)
//! → store → query → rules → notify (+ remote_write). The stages talk through small typed
//! interfaces ([`metrics`], [`series`], [`alerts`], [`live`]); [`agent`] starts
//! them, owns their lifetimes and stops them in order.
pub mod agent;
pub mod alerts;
pub mod collect;
pub mod compat;
pub mod config;
pub mod diagnose;
pub mod discover;
pub mod expose;
pub mod http_client;
pub mod kubernetes;
pub mod live;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod preflight;
pub mod private_files;
pub mod privilege;
pub mod probe;
pub mod query;
pub mod remote_write;
pub mod rules;
pub mod secret;
pub mod series;
pub mod store;
pub mod top;
pub mod web;
pub mod worker;
