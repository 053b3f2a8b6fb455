//! Errors of the runtime, and how a node reports that it failed.

use crate::ResourceExhaustion;

/// Why a node instance failed: returned by [`NodeRunner::run`](crate::NodeRunner::run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}")]
pub struct NodeFailure {
    /// What ended it, for operators: `exit status: 1`, `signal: 9 (SIGKILL)`, an error message.
    pub status: String,
    /// The last lines the instance wrote to stderr, oldest first (empty when there are none).
    pub stderr_tail: Vec<String>,
    /// Set when the instance could not be launched because *this* process ran out of a
    /// resource (descriptors, memory, processes): the node is not at fault, so the supervisor
    /// counts no death and tries the launch again after
    /// [`SupervisorConfig::resource_retry`](crate::SupervisorConfig::resource_retry). An instance
    /// that ran and then failed for its own lack of resources is a death and leaves it `None`.
    pub resource_exhaustion: Option<ResourceExhaustion>,
}

impl NodeFailure {
    /// A failure with no stderr output.
    pub fn new(status: impl Into<String>) -> Self {
        NodeFailure {
            status: status.into(),
            stderr_tail: Vec::new(),
            resource_exhaustion: None,
        }
    }

    /// A launch that failed because this process is out of `resource`; see
    /// [`resource_exhaustion`](Self::resource_exhaustion).
    pub fn launch_starved(resource: ResourceExhaustion, status: impl Into<String>) -> Self {
        NodeFailure {
            resource_exhaustion: Some(resource),
            ..NodeFailure::new(status)
        }
    }
}

/// Errors of the supervisor, launcher and runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No node of that name is supervised.
    #[error("no node named {0:?}")]
    UnknownNode(String),
    /// The node has ended for good (stopped or exited): it takes no more commands.
    #[error("node {0:?} has ended")]
    NotRunning(String),
    /// A node of that name is already supervised and has not ended.
    #[error("a node named {0:?} is already running")]
    NodeExists(String),
    /// No factory of that name is registered with the launcher.
    #[error("no node factory named {0:?}")]
    UnknownFactory(String),
    /// Shutdown has begun: nothing new is started.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The node's crash-loop breaker tripped: it is not respawned until a reset or its cool-down.
    #[error(
        "node {node:?} died {deaths} times within {window_secs} s and is no longer restarted; \
         last exit: {last_exit}; stderr tail: {stderr_tail:?}"
    )]
    BreakerTripped {
        /// The node's name.
        node: String,
        /// Deaths counted in the window.
        deaths: usize,
        /// The window, in seconds.
        window_secs: u64,
        /// Its last exit status.
        last_exit: String,
        /// The tail of its stderr at that exit.
        stderr_tail: Vec<String>,
    },
    /// A `ProcessNode` setting is invalid.
    #[error("invalid process node setting: {0}")]
    InvalidSetting(String),
    /// Installing the log subscriber or a signal handler failed.
    #[error("cannot set up {what}: {message}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
}
