//! Tests of the notify stage: dispatcher timing with a hand-driven clock,
//! config errors, delivery under failures, restarts, and parity with
//! Debian's prometheus-alertmanager.
mod config_tests;
mod delivery_tests;
mod dispatch_tests;
mod hostile_receiver;
mod parity;
mod support;
