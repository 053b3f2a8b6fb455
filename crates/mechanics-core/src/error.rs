//! The one error type of the crate.

use serde::Serialize;

/// Why a job or a pool operation failed.
///
/// Every variant carries a message meant for the person who wrote the job: it says what went wrong
/// and, where there is one, what to change. Messages never contain configured secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MechanicsError {
    /// The script failed: a syntax error, an uncaught exception, a rejected or still-pending promise,
    /// a forbidden import, or a result that is not JSON.
    #[error("{0}")]
    Execution(String),
    /// The script failed with the error of a `mechanics:endpoint` call that could not reach its
    /// service (refused, timed out, name not resolved) after the endpoint's own retries, and did
    /// not catch it: the service may answer a later attempt.
    #[error("{0}")]
    EndpointTransport(String),
    /// The script failed with an error it marked `retryable: true`: it asks for another attempt.
    #[error("{0}")]
    Retryable(String),
    /// The job hit one of its [`MechanicsExecutionLimits`](crate::job::MechanicsExecutionLimits).
    #[error("{0}")]
    LimitExceeded(String),
    /// `run_nonblocking_enqueue` found the queue full.
    #[error("the job queue is full")]
    QueueFull,
    /// `run` could not enqueue the job within `enqueue_timeout`.
    #[error("timed out waiting for room in the job queue")]
    QueueTimeout,
    /// The whole `run` call did not finish within `run_timeout`.
    #[error("the job did not finish within the pool's run timeout")]
    RunTimeout,
    /// The pool is shutting down or has shut down.
    #[error("the pool is closed")]
    PoolClosed,
    /// No worker can take the job: the restart guard is holding back worker restarts.
    #[error("{0}")]
    WorkerUnavailable(String),
    /// The job was dropped from the queue before it ran, because the pool closed.
    #[error("the job was canceled before it started")]
    Canceled,
    /// The engine panicked while running the job; the worker survived and the job was failed.
    #[error("the engine failed unexpectedly: {0}")]
    Panic(String),
    /// Invalid pool or job configuration, or a worker that could not start.
    #[error("{0}")]
    RuntimePool(String),
}

/// The kind of a [`MechanicsError`], as a stable machine-readable name (`execution`, `queue_full`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MechanicsErrorKind {
    /// See [`MechanicsError::Execution`].
    Execution,
    /// See [`MechanicsError::EndpointTransport`].
    EndpointTransport,
    /// See [`MechanicsError::Retryable`].
    Retryable,
    /// See [`MechanicsError::LimitExceeded`].
    LimitExceeded,
    /// See [`MechanicsError::QueueFull`].
    QueueFull,
    /// See [`MechanicsError::QueueTimeout`].
    QueueTimeout,
    /// See [`MechanicsError::RunTimeout`].
    RunTimeout,
    /// See [`MechanicsError::PoolClosed`].
    PoolClosed,
    /// See [`MechanicsError::WorkerUnavailable`].
    WorkerUnavailable,
    /// See [`MechanicsError::Canceled`].
    Canceled,
    /// See [`MechanicsError::Panic`].
    Panic,
    /// See [`MechanicsError::RuntimePool`].
    RuntimePool,
}

impl MechanicsErrorKind {
    /// The snake_case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execution => "execution",
            Self::EndpointTransport => "endpoint_transport",
            Self::Retryable => "retryable",
            Self::LimitExceeded => "limit_exceeded",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::RunTimeout => "run_timeout",
            Self::PoolClosed => "pool_closed",
            Self::WorkerUnavailable => "worker_unavailable",
            Self::Canceled => "canceled",
            Self::Panic => "panic",
            Self::RuntimePool => "runtime_pool",
        }
    }

    /// Whether the failure is caused by load or lifecycle rather than by the job itself, so that
    /// submitting the same job again later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::QueueTimeout
                | Self::RunTimeout
                | Self::PoolClosed
                | Self::WorkerUnavailable
                | Self::Canceled
        )
    }
}

impl std::fmt::Display for MechanicsErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MechanicsError {
    /// The machine-readable kind of this error.
    pub fn kind(&self) -> MechanicsErrorKind {
        match self {
            Self::Execution(_) => MechanicsErrorKind::Execution,
            Self::EndpointTransport(_) => MechanicsErrorKind::EndpointTransport,
            Self::Retryable(_) => MechanicsErrorKind::Retryable,
            Self::LimitExceeded(_) => MechanicsErrorKind::LimitExceeded,
            Self::QueueFull => MechanicsErrorKind::QueueFull,
            Self::QueueTimeout => MechanicsErrorKind::QueueTimeout,
            Self::RunTimeout => MechanicsErrorKind::RunTimeout,
            Self::PoolClosed => MechanicsErrorKind::PoolClosed,
            Self::WorkerUnavailable(_) => MechanicsErrorKind::WorkerUnavailable,
            Self::Canceled => MechanicsErrorKind::Canceled,
            Self::Panic(_) => MechanicsErrorKind::Panic,
            Self::RuntimePool(_) => MechanicsErrorKind::RuntimePool,
        }
    }

    /// The message of a failure of the script itself (a thrown error, whatever its class), for
    /// rewriting the positions it names; `None` for limits and the pool's own errors.
    pub(crate) fn script_message_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::Execution(message)
            | Self::EndpointTransport(message)
            | Self::Retryable(message) => Some(message),
            _ => None,
        }
    }

    /// The error as the JSON object `{ "kind": ..., "message": ... }` used by the CLI and services.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "kind": self.kind(), "message": self.to_string() })
    }
}
