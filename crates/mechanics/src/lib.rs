//! The `mechanics` binary's wiring: command-line parsing and the commands it runs.
//!
//! Logic that a test must reach lives in the library crates; this crate only parses arguments,
//! loads files and prints, so each command is a thin call into them.

pub mod cli;
pub mod client;
pub mod events;
pub mod keys;
pub mod logs;
pub mod mcp;
pub mod nodes;
pub mod serve;
pub mod sources;
pub mod webhook_send;
pub mod worker_test;
