//! Collect stage: keeps the registry of nginx instances (from discover), gives
//! each a counter slot in the probe's maps, seeds connections that were open
//! before the agent, and turns slot counters into metric families.
mod families;
mod registry;

pub use registry::Collector;
