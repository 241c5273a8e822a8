//! stage: probe
