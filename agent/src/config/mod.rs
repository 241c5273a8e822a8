//! stage: config
