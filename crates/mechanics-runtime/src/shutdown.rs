//! Shutdown: one trigger (a signal or a call) broadcast to every node.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::RuntimeError;

/// Triggers shutdown and hands out [`ShutdownSignal`]s. Clones share the trigger.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    /// A handle that nothing has triggered yet.
    pub fn new() -> Self {
        ShutdownHandle::default()
    }

    /// Requests shutdown. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A signal that fires when shutdown is requested.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            token: self.token.clone(),
        }
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT (Ctrl+C). The listening task ends
    /// when shutdown is triggered by any means. Call it inside a Tokio runtime.
    pub fn listen_for_signals(&self) -> Result<(), RuntimeError> {
        let setup = |err: std::io::Error| RuntimeError::Setup {
            what: "signal handlers",
            message: err.to_string(),
        };
        let mut term = signal(SignalKind::terminate()).map_err(setup)?;
        let mut int = signal(SignalKind::interrupt()).map_err(setup)?;
        let token = self.token.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                () = token.cancelled() => return,
            };
            tracing::info!(signal = name, "shutdown requested by signal");
            token.cancel();
        });
        Ok(())
    }

    /// A handle whose trigger also fires when this one's does, but not the other way round:
    /// stopping one node must not stop the rest.
    pub(crate) fn child(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.token.child_token(),
        }
    }
}

/// What a node watches to know it must stop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    token: CancellationToken,
}

impl ShutdownSignal {
    /// Completes when the node must stop (at once if it already must).
    pub async fn requested(&self) {
        self.token.cancelled().await;
    }

    /// Whether the node must stop.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }
}
