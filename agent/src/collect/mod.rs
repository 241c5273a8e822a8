//! stage: collect
