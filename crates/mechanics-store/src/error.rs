//! The one error type of the crate.

use mechanics_proto::domain::TaskState;

/// Why a store operation failed. Messages name the row and the rule; they never contain payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row does not exist.
    #[error("{what} {key} not found")]
    NotFound {
        /// `task`, `event`, `worker`, ...
        what: &'static str,
        /// Its id or name.
        key: String,
    },
    /// A fenced operation carried an attempt that is not the task's current claim: a late reply
    /// from an earlier attempt, or a task that is no longer dispatched.
    #[error(
        "task {id}: attempt {attempt} is not current (the task is {state} at attempt {current_attempt})"
    )]
    StaleAttempt {
        /// The task.
        id: i64,
        /// The attempt the caller held.
        attempt: u32,
        /// The task's attempt now.
        current_attempt: u32,
        /// The task's state now.
        state: TaskState,
    },
    /// The lifecycle does not allow the move.
    #[error("{what} {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// `task` or `event`.
        what: &'static str,
        /// Its id.
        id: i64,
        /// Its state now.
        from: String,
        /// The state asked for.
        to: String,
    },
    /// The input breaks a rule (an invalid spec, a bad argument); the message says which.
    #[error("{0}")]
    InvalidInput(String),
    /// A row with this unique name exists already (an API key's name): nothing was changed.
    #[error("{what} {key} exists already")]
    AlreadyExists {
        /// What kind of row.
        what: &'static str,
        /// Its name, quoted.
        key: String,
    },
    /// A worker still has tasks that have not ended (pending or running), so it was not
    /// deleted: nothing was changed.
    #[error("worker {worker:?} has {count} unfinished task(s) (pending or running)")]
    UnfinishedTasks {
        /// The worker's name.
        worker: String,
        /// How many of its tasks are pending or dispatched.
        count: u64,
    },
    /// The database was written by a newer Mechanics; this build must not touch it.
    #[error(
        "database {path} has schema version {found}, newer than this build supports ({supported}); upgrade mechanics"
    )]
    SchemaTooNew {
        /// The database file.
        path: String,
        /// Its `user_version`.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The database stayed locked past the busy timeout (another process holds it): a transient
    /// overload, worth a 503 and a retry, not the caller's fault.
    #[error("database busy while {context}: {message}")]
    Busy {
        /// What the store was doing.
        context: String,
        /// The database's message.
        message: String,
    },
    /// Any other database failure.
    #[error("database error while {context}: {message}")]
    Database {
        /// What the store was doing.
        context: String,
        /// The database's message.
        message: String,
    },
    /// The store's writer has stopped (the store is shutting down, or its thread died).
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether trying again later may succeed (the database was busy, or the store closing).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::Closed)
    }
}
