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
    /// A node on a non-loopback address serves over TLS unless told otherwise: its bearer token
    /// would cross the network in clear.
    #[error(
        "refusing plaintext HTTP on {0}: give --tls-cert and --tls-key, or --insecure-plaintext \
         if the network is private by other means"
    )]
    PlaintextAddress(SocketAddr),
    /// A certificate, key or CA file could not be read or used; names the file's flag.
    #[error("{field}: {message}")]
    Tls {
        /// The setting the file came from (`--tls-cert`, `--tls-key`, `ca_file`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
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
