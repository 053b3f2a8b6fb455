//! Errors of starting and running a node or a fleet (the errors of one job are
//! [`FleetError`](crate::FleetError)s).

use std::net::SocketAddr;

/// Why a node or a fleet could not start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A node without a token may only listen on loopback: anyone who can reach it could run
    /// code on it.
    #[error(
        "refusing to listen on {0} without a token: set MECHANICS_NODE_TOKEN or --token-file, or \
         listen on a loopback address"
    )]
    InsecureAddress(SocketAddr),
    /// The engine pool could not start.
    #[error("cannot start the engine pool: {0}")]
    Pool(#[from] mechanics_core::MechanicsError),
    /// Listening or serving failed.
    #[error("node I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An invalid setting, named.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The supervisor refused a node.
    #[error("supervisor: {0}")]
    Runtime(#[from] mechanics_runtime::RuntimeError),
    /// A fleet node did not announce `READY <addr>` in time.
    #[error("node {node} did not become ready: {status}")]
    NotReady {
        /// The node's name.
        node: String,
        /// How its last instance ended, if it did.
        status: String,
    },
}
