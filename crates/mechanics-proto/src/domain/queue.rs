//! Events, tasks and `/logs` entries as stored, with their states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Row id of a task. Ids are `i64` row ids rather than UUIDs: they are what SQLite's rowid and a
/// PostgreSQL identity column give for free (no second index), they order by creation, which
/// makes them the paging cursor, and they are short to type (`mechanics task retry 42`).
pub type TaskId = i64;
/// Row id of an event (see [`TaskId`]).
pub type EventId = i64;
/// Row id of a `/logs` entry (see [`TaskId`]).
pub type LogId = i64;

/// A state name that is not one of the enum's; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?}; expected one of: {expected}")]
pub struct UnknownState {
    what: &'static str,
    got: String,
    expected: String,
}

/// Declares a state enum with its snake_case names, `as_str`, `Display`, `FromStr` and `ALL`.
macro_rules! state_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The snake_case name used in JSON, SQL and query strings.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        what: $what,
                        got: s.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

state_enum!(
    /// Where a task is in its life. `pending → dispatched → completed | failed`,
    /// `dispatched → pending` (retry scheduled), `→ dead` (retries exhausted), `→ canceled`.
    TaskState, "task state", {
        /// Waiting for `next_run_at`.
        Pending => "pending",
        /// Claimed by a dispatcher under a lease.
        Dispatched => "dispatched",
        /// Finished with a result.
        Completed => "completed",
        /// Finished with an error that is not retried.
        Failed => "failed",
        /// Retries exhausted: the dead letter.
        Dead => "dead",
        /// Canceled by a user.
        Canceled => "canceled",
    }
);

impl TaskState {
    /// Whether the task is finished (only a manual retry moves it again).
    pub fn is_end(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Dead | Self::Canceled
        )
    }
}

state_enum!(
    /// Where an event is in its life: `received → matched → dispatched → completed |
    /// write_back_failed → completed | failed`; `skipped` when no worker matches, `ignored` when
    /// the policies of all that match refuse it.
    EventState, "event state", {
        /// Stored, not yet matched.
        Received => "received",
        /// Tasks created for the matching workers.
        Matched => "matched",
        /// Its tasks are running.
        Dispatched => "dispatched",
        /// Done, write-back (if any) done.
        Completed => "completed",
        /// Write-back failed transiently; the write-back loop retries it.
        WriteBackFailed => "write_back_failed",
        /// Failed for good.
        Failed => "failed",
        /// No worker matched.
        Skipped => "skipped",
        /// Workers matched, and every one's policy refused the event (its actor, a bot, the
        /// source's own reply, a per-actor limit): `/logs` has a `policy` entry per worker.
        Ignored => "ignored",
    }
);

impl EventState {
    /// Whether the lifecycle allows going from `self` to `next`. Re-entering the same state is
    /// allowed only for `write_back_failed` (another failed write-back try).
    pub fn can_become(self, next: EventState) -> bool {
        use EventState::*;
        match self {
            Received => matches!(next, Matched | Skipped | Ignored | Failed),
            Matched => matches!(next, Dispatched | Completed | WriteBackFailed | Failed),
            Dispatched => matches!(next, Completed | WriteBackFailed | Failed),
            WriteBackFailed => matches!(next, WriteBackFailed | Completed | Failed),
            Completed | Failed | Skipped | Ignored => false,
        }
    }
}

/// One received event (a webhook delivery, or a synthetic event of the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Row id.
    pub id: EventId,
    /// The source's name.
    pub source: String,
    /// The platform's delivery id; unique per source (dedup).
    pub delivery_id: String,
    /// `issues.opened`, `message`, ...
    pub event_type: String,
    /// The delivered JSON.
    pub payload: Value,
    /// Lifecycle state.
    pub state: EventState,
    /// Why it failed or why write-back failed last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed write-back tries so far.
    pub write_back_attempts: u32,
    /// Unix ms when the write-back loop should try again (`write_back_failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_write_back_at: Option<i64>,
    /// Unix ms of receipt.
    pub received_at: i64,
    /// Unix ms of the last state change.
    pub updated_at: i64,
}

state_enum!(
    /// What made a task: an API submission (also a dashboard replay), a webhook event (the
    /// task's `event_id`) or a cron fire.
    #[derive(Default)]
    TaskTrigger, "task trigger", {
        /// `POST /tasks` (`mechanics task submit`), or a replay.
        #[default]
        Api => "api",
        /// An event of a source, matched by a webhook trigger.
        Webhook => "webhook",
        /// A cron trigger's fire time.
        Cron => "cron",
    }
);

state_enum!(
    /// What came of one attempt that ran (a rate-limit or busy-executor re-queue is no attempt).
    AttemptOutcome, "attempt outcome", {
        /// The worker answered with a result: the task completed.
        Completed => "completed",
        /// The worker failed in a way a retry would repeat (a script error, a 5xx).
        Failed => "failed",
        /// The worker could not be reached or died (refused, timeout, node gone).
        TransportError => "transport_error",
        /// The worker asked to come back later (`429` with `Retry-After`).
        RetryAfter => "retry_after",
    }
);

/// One attempt of a task that ran: when, where, with which worker revision, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskAttempt {
    /// The claim it ran under: the task's `attempt` then, which console lines carry. Claims
    /// that were re-queued without running (rate limit, busy executor) have no attempt, so
    /// these numbers can skip.
    pub claim: u32,
    /// When it was sent to the worker: unix ms in Rust, an RFC 3339 time in UTC in JSON
    /// (`2026-12-04T17:31:41.123Z`).
    #[serde(with = "crate::domain::time")]
    #[schema(value_type = String, format = DateTime, example = "2026-12-04T17:31:41.123Z")]
    pub started_at: i64,
    /// When its answer came, in the same form as `started_at`.
    #[serde(with = "crate::domain::time")]
    #[schema(value_type = String, format = DateTime, example = "2026-12-04T17:31:42.020Z")]
    pub ended_at: i64,
    /// What ran it: the executor node of a js worker, the URL of an http worker, the process
    /// worker's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The worker's revision it ran with.
    pub worker_revision: i64,
    /// What came of it.
    pub outcome: AttemptOutcome,
    /// Its error (redacted), when it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskAttempt {
    /// The number people read for the attempt that ran under `claim`: its place among
    /// `attempts` (1 for the first that ran), so claims re-queued without running (rate limit,
    /// busy executor) leave no gaps; `claim` itself when no attempt of `attempts` has it.
    pub fn number(attempts: &[TaskAttempt], claim: u32) -> u32 {
        attempts
            .iter()
            .position(|attempt| attempt.claim == claim)
            .map_or(claim, |index| u32::try_from(index + 1).unwrap_or(claim))
    }
}

/// One unit of work: a worker run for an event, an API submission or a cron fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    /// Row id.
    pub id: TaskId,
    /// The worker's name.
    pub worker: String,
    /// The event that caused it; `(event_id, worker)` is unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// The API submitter's idempotency key; unique per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The worker's input.
    pub payload: Value,
    /// Lifecycle state.
    pub state: TaskState,
    /// How many times the task has been claimed; the fencing token that a completion must
    /// carry. It never decreases, so a late reply from an earlier claim is always told apart.
    pub attempt: u32,
    /// Attempts that count toward the retry limit: a claim released without running (rate
    /// limited) gives its try back, a manual retry starts again from 0.
    pub tries: u32,
    /// Unix ms from which a pending task may be claimed.
    pub next_run_at: i64,
    /// Unix ms when the current claim expires (dispatched only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    /// The worker's JSON result (completed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix ms of creation.
    pub created_at: i64,
    /// Unix ms of the last change.
    pub updated_at: i64,
    /// The worker's rate limit reserved a token for this time (pending after a rate-limit
    /// wait, or claimed on it): the attempt runs on that token instead of taking another, on
    /// whichever server claims it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_slot: Option<i64>,
    /// The attempts that ran, the one running now included, as people count them (what
    /// `task list`, `task watch` and `/logs` show): unlike `attempt`, a claim re-queued without
    /// running (rate limit, busy executor) is not one, and unlike `tries` a manual retry does
    /// not start again from 0.
    #[serde(default)]
    pub runs: u32,
    /// What made it, as recorded when it was created.
    #[serde(default)]
    pub trigger: TaskTrigger,
}

state_enum!(
    /// Outcome of one pipeline step in `/logs`.
    LogOutcome, "log outcome", {
        /// The step succeeded.
        Ok => "ok",
        /// The step failed.
        Fail => "fail",
        /// The step was skipped (no match, duplicate).
        Skip => "skip",
        /// The step will be retried.
        Retry => "retry",
        /// The step was refused (signature, rate limit, policy).
        Deny => "deny",
    }
);

/// One `/logs` entry before it is stored. Secrets must be redacted by the writer (the server)
/// before it gets here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRecord {
    /// Groups the entries of one causal chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Unix ms.
    pub ts: i64,
    /// The pipeline step: `webhook`, `match`, `policy`, `dispatch`, `write_back`, ...
    pub action: String,
    /// How the step ended.
    pub outcome: LogOutcome,
    /// The event concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// The task concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The worker concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The task attempt concerned, as people count them (the task's `runs`, not its fencing
    /// `attempt`): a rate-limit re-queue does not start a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The error, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sparse extra JSON, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// A stored `/logs` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// Row id (ascending with insertion).
    pub id: LogId,
    /// The entry.
    #[serde(flatten)]
    pub record: LogRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_unknown_names_list_the_valid_ones() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>().unwrap(), *state);
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                Value::String(state.to_string())
            );
        }
        for state in EventState::ALL {
            assert_eq!(state.as_str().parse::<EventState>().unwrap(), *state);
        }
        let err = "running".parse::<TaskState>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown task state \"running\"; expected one of: pending, dispatched, completed, failed, dead, canceled"
        );
    }

    #[test]
    fn event_lifecycle_allows_only_the_documented_moves() {
        use EventState::*;
        assert!(Received.can_become(Matched));
        assert!(Received.can_become(Skipped));
        assert!(Received.can_become(Ignored));
        assert!(!Ignored.can_become(Matched));
        assert!(Dispatched.can_become(WriteBackFailed));
        assert!(WriteBackFailed.can_become(WriteBackFailed));
        assert!(WriteBackFailed.can_become(Completed));
        assert!(!Completed.can_become(Received));
        assert!(!Skipped.can_become(Matched));
        assert!(!Received.can_become(Received));
    }
}
