//! `mechanics-node`: the executor node that runs JavaScript jobs for the coordinator, and the
//! local fleet of such nodes.
//!
//! [`serve`] is the node: an HTTP service (`POST /v1/jobs`, `GET /health`, `GET /stats`, see
//! [`mechanics_proto::node`]) around one [`MechanicsPool`](mechanics_core::MechanicsPool), with a
//! bearer token compared in constant time, a body limit, overload answered as `503` with
//! `Retry-After`, a per-process memory cap and a recycling signal. [`Fleet`] runs N nodes as
//! supervised child processes of the `mechanics` binary (through `mechanics-runtime`) and sends
//! each job to the least-loaded healthy one, with a watchdog and recycling; it is how untrusted
//! JavaScript stays out of the coordinator's process (DESIGN.md invariant 4).
//!
//! This crate must not touch the database, must not print (it emits `tracing` events; the binary
//! configures output and prints `READY <addr>`), and must never log a node token.

mod config;
mod error;
mod fleet;
mod memory;
mod remote;
mod service;
mod tls;

pub use config::NodeConfig;
pub use error::NodeError;
pub use fleet::{Fleet, FleetConfig, FleetError, NodeInfo};
pub use mechanics_runtime::{NodeSnapshot, ShutdownHandle, SupervisorConfig};
pub use memory::resident_bytes;
pub use remote::{RemoteChange, RemoteNodeConfig, RemoteNodeInfo, RemoteState};
pub use service::{job_of, serve};
pub use tls::{client_tls, server_tls};
