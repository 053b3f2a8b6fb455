//! `mechanics-proto`: the wire and domain types that the coordinator, the executor nodes and the
//! CLI exchange, with their JSON shapes.
//!
//! This crate must not do I/O: no sockets, no files, no database, no clocks. It holds types, their
//! validation, and nothing that needs a runtime.

pub mod api;
pub mod domain;
pub mod node;
