//! ngxprobe: zero-config nginx visibility from eBPF.
//!
//! Pipeline (data flows one way): discover/probe → collect → expose (/metrics)
//! → store → query → rules → notify.
mod collect;
mod config;
mod discover;
mod expose;
mod metrics;
mod probe;

fn main() {}
