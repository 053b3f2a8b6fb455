//! The task pipeline's steps, each reported once: its counter in [`Metrics`](crate::metrics)
//! and its `/logs` entry. The dispatcher and the API call one method per step, so the counters
//! and the trace cannot disagree.
//!
//! Actions written here: `submit` (ok, or skip for a duplicate), `dispatch` (an attempt's
//! result: ok, fail, or retry), `retry` (rescheduled; `detail.next_run_at`), `dead_letter`
//! (fail), `rate_limit` (retry: re-queued to its reserved slot, not an attempt;
//! `detail.until`), `recover` (retry: startup recovery or an expired lease), `retry_requested`
//! and `cancel` (ok, through the API).

use mechanics_proto::domain::{LogOutcome, LogRecord, Task};
use serde_json::json;

use crate::trace_log::{TraceLog, task_entry};

impl TraceLog {
    /// An API submission created `task` (or named an existing one: `created == false`).
    pub(crate) fn submitted(&self, task: &Task, created: bool, now: i64) {
        let metrics = self.metrics();
        let entry = |outcome| LogRecord {
            // A submission is not an attempt (a duplicate names a task that may have run).
            attempt: None,
            ..task_entry(task, "submit", outcome, now)
        };
        if created {
            metrics.tasks_created.inc(&task.worker);
            self.record(entry(LogOutcome::Ok));
        } else {
            metrics.tasks_dedup_skipped.inc(&task.worker);
            self.record(LogRecord {
                detail: Some(json!({ "reason": "the idempotency key names an existing task" })),
                ..entry(LogOutcome::Skip)
            });
        }
    }

    /// An attempt of `task` starts at `now`: its dispatch latency is the time since the task
    /// became due (`next_run_at`: creation, the end of a backoff, or a reserved rate-limit slot).
    pub(crate) fn attempt_started(&self, task: &Task, now: i64) {
        let latency_ms = now.saturating_sub(task.next_run_at).max(0);
        self.metrics()
            .observe_dispatch_latency(&task.worker, latency_ms as f64 / 1000.0);
    }

    /// The attempt completed its task.
    pub(crate) fn completed(&self, task: &Task, now: i64) {
        self.metrics().tasks_completed.inc(&task.worker);
        self.record(task_entry(task, "dispatch", LogOutcome::Ok, now));
    }

    /// The attempt failed its task for good.
    pub(crate) fn failed(&self, task: &Task, error: &str, now: i64) {
        self.metrics().tasks_failed.inc(&task.worker);
        let mut entry = task_entry(task, "dispatch", LogOutcome::Fail, now);
        entry.error = Some(error.to_owned());
        self.record(entry);
    }

    /// The attempt failed in a retryable way with no retries left: the task is dead.
    pub(crate) fn dead_lettered(&self, task: &Task, error: &str, now: i64) {
        self.metrics().tasks_dead.inc(&task.worker);
        let mut attempt = task_entry(task, "dispatch", LogOutcome::Fail, now);
        attempt.error = Some(error.to_owned());
        self.record(attempt);
        let mut dead = task_entry(task, "dead_letter", LogOutcome::Fail, now);
        dead.error = Some(error.to_owned());
        dead.detail = Some(json!({ "tries": task.tries }));
        self.record(dead);
    }

    /// The attempt failed in a retryable way; the task runs again at `at`.
    pub(crate) fn retried(&self, task: &Task, error: &str, at: i64, now: i64) {
        self.metrics().tasks_retried.inc(&task.worker);
        let mut attempt = task_entry(task, "dispatch", LogOutcome::Retry, now);
        attempt.error = Some(error.to_owned());
        self.record(attempt);
        let mut retry = task_entry(task, "retry", LogOutcome::Retry, now);
        retry.detail = Some(json!({ "next_run_at": at, "delay_ms": at.saturating_sub(now) }));
        self.record(retry);
    }

    /// The worker's bucket was empty: the claim went back to pending until `until`.
    pub(crate) fn rate_limited(&self, task: &Task, until: i64, now: i64) {
        self.metrics().tasks_rate_limited.inc(&task.worker);
        let mut entry = task_entry(task, "rate_limit", LogOutcome::Retry, now);
        entry.detail = Some(json!({ "until": until }));
        self.record(entry);
    }

    /// `task` was dispatched and is pending again: `reason` is startup recovery or an expired
    /// lease.
    pub(crate) fn recovered(&self, task: &Task, reason: &str, now: i64) {
        self.metrics().tasks_recovered.inc(&task.worker);
        let mut entry = task_entry(task, "recover", LogOutcome::Retry, now);
        entry.detail = Some(json!({ "reason": reason }));
        self.record(entry);
    }

    /// The API asked for `task` to run again.
    pub(crate) fn retry_requested(&self, task: &Task, now: i64) {
        self.record(task_entry(task, "retry_requested", LogOutcome::Ok, now));
    }

    /// The API canceled `task`.
    pub(crate) fn canceled(&self, task: &Task, now: i64) {
        self.record(task_entry(task, "cancel", LogOutcome::Ok, now));
    }
}
