//! `mechanics-server`: the coordinator behind `mechanics serve`.
//!
//! It must not run user JavaScript in its own process (jobs go to executor nodes), must not hold
//! SQL (that is `mechanics-store`'s), and never prints: it reports through `tracing`.

pub mod config;
