//! How a node is set up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mechanics_core::MechanicsPoolConfig;

use crate::NodeError;

/// The settings of one node ([`serve`](crate::serve)).
#[derive(Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// A name for logs and `/stats` (the fleet passes `node-1`, ...).
    pub name: Option<String>,
    /// The bearer token every request but `GET /health` must carry. Without one the node only
    /// listens on a loopback address.
    pub token: Option<String>,
    /// The engine pool the jobs run in.
    pub pool: MechanicsPoolConfig,
    /// Largest request body; a larger one is answered `413` (default 16 MiB).
    pub max_body_bytes: usize,
    /// The process exits at once (status [`MEMORY_CAP_EXIT_STATUS`](crate::NodeConfig::MEMORY_CAP_EXIT_STATUS))
    /// when its resident memory passes this. Jobs in flight then fail as a dead node; the fleet
    /// restarts it. Checked every 20 ms from a thread of its own.
    pub memory_cap_bytes: Option<u64>,
    /// Ask to be recycled after this many jobs (see `RECYCLE_HEADER` in `mechanics-proto`).
    pub recycle_after_jobs: Option<u64>,
    /// Ask to be recycled once resident memory passes this.
    pub recycle_rss_bytes: Option<u64>,
    /// The `Retry-After` of a `503`, rounded up to whole seconds (default 1 s).
    pub retry_after: Duration,
    /// Serve over TLS with this certificate and key (see [`server_tls`](crate::server_tls)).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Allow plaintext HTTP on a non-loopback address: the bearer token then crosses the network
    /// in clear. Off by default; only for a network that is private by other means.
    pub insecure_plaintext: bool,
}

impl NodeConfig {
    /// The exit status of a node that passed its memory cap.
    pub const MEMORY_CAP_EXIT_STATUS: i32 = 86;

    /// No name, no token, the default pool, a 16 MiB body limit, no memory cap, no recycling.
    pub fn new() -> Self {
        NodeConfig {
            name: None,
            token: None,
            pool: MechanicsPoolConfig::default(),
            max_body_bytes: 16 * 1024 * 1024,
            memory_cap_bytes: None,
            recycle_after_jobs: None,
            recycle_rss_bytes: None,
            retry_after: Duration::from_secs(1),
            tls: None,
            insecure_plaintext: false,
        }
    }

    /// Fails for an empty token, for a non-loopback `addr` without a token (anyone who can
    /// reach such a node could run code on it), and for a non-loopback `addr` without TLS unless
    /// `insecure_plaintext` (the token would cross the network in clear).
    /// [`serve`](crate::serve) checks this too; call it before announcing an address.
    pub fn check_address(&self, addr: SocketAddr) -> Result<(), NodeError> {
        let loopback = addr.ip().is_loopback();
        match self.token.as_deref() {
            Some("") => Err(NodeError::Config("the node token is empty".into())),
            None if !loopback => Err(NodeError::InsecureAddress(addr)),
            _ if !loopback && self.tls.is_none() && !self.insecure_plaintext => {
                Err(NodeError::PlaintextAddress(addr))
            }
            _ => Ok(()),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for NodeConfig {
    // By hand so that the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("pool", &self.pool)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("memory_cap_bytes", &self.memory_cap_bytes)
            .field("recycle_after_jobs", &self.recycle_after_jobs)
            .field("recycle_rss_bytes", &self.recycle_rss_bytes)
            .field("retry_after", &self.retry_after)
            .field("tls", &self.tls.is_some())
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish()
    }
}
