//! stage: expose
