//! The task pipeline's steps, each reported once: its counter in [`Metrics`](crate::metrics)
//! and its `/logs` entry. The dispatcher and the API call one method per step, so the counters
//! and the trace cannot disagree.
//!
//! Actions written here: `submit` (ok, or skip for a duplicate), `dispatch` (an attempt's
//! result: ok, fail, or retry), `console` (ok: the attempt wrote console output, stored with it;
//! `detail.lines`, `detail.errors`, `detail.warnings` and `detail.last`, its last line),
//! `retry` (rescheduled; `detail.next_run_at`), `dead_letter`
//! (fail), `rate_limit` (retry: re-queued to its reserved slot, not an attempt;
//! `detail.until`), `recover` (retry: startup recovery or an expired lease), `retry_requested`
//! and `cancel` (ok, through the API or the dashboard), `replay` (ok: one entry on each task,
//! `detail.replayed_as` on the original, `detail.replay_of` on the new one), and `node` (a node
//! changed state: ok when it is up again, fail when it went down; trace id `node-NAME`).
//! Webhooks, cron and write-back add `webhook`, `dedup`,
//! `match`, `policy`, `cron` and `write_back` (see the second `impl` block), `submit` for the tasks they
//! make, and `dead_letter` for a write-back given up; an event's entries carry its trace id
//! `event-N` from the delivery to the write-back.

use std::collections::HashMap;

use axum::http::StatusCode;
use mechanics_proto::domain::{
    ConsoleLevel, ConsoleLine, Event, EventState, LogOutcome, LogRecord, Task,
};
use serde_json::{Value, json};

use crate::executor::{NodeChange, Outcome};
use crate::recent::Step;
use crate::trace_log::{TraceLog, entry, event_trace_id, random_trace_id, task_entry};

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
            metrics.recent.count(&task.worker, Step::Created, now);
            self.record_creation(entry(LogOutcome::Ok));
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
        let metrics = self.metrics();
        metrics.observe_dispatch_latency(&task.worker, latency_ms as f64 / 1000.0);
        metrics.recent.latency(&task.worker, latency_ms, now);
    }

    /// The attempt wrote `lines` with `console` (redacted, and stored with the attempt): one
    /// entry per such attempt, saying how much and what came last, so `/logs` shows which
    /// attempts to read in full with `GET /tasks/{id}`. Recorded before the attempt's result.
    pub(crate) fn console(&self, task: &Task, lines: &[ConsoleLine], now: i64) {
        let count = |level| lines.iter().filter(|line| line.level == level).count();
        let mut detail = json!({
            "lines": lines.len(),
            "errors": count(ConsoleLevel::Error),
            "warnings": count(ConsoleLevel::Warn),
        });
        if let Some(last) = lines.last() {
            detail["last"] = json!(bounded(&format!("{}: {}", last.level, last.message), 200));
        }
        self.record(LogRecord {
            detail: Some(detail),
            ..task_entry(task, "console", LogOutcome::Ok, now)
        });
    }

    /// The attempt completed its task.
    pub(crate) fn completed(&self, task: &Task, now: i64) {
        self.metrics().tasks_completed.inc(&task.worker);
        self.metrics()
            .recent
            .count(&task.worker, Step::Completed, now);
        self.record(task_entry(task, "dispatch", LogOutcome::Ok, now));
    }

    /// The attempt failed its task for good.
    pub(crate) fn failed(&self, task: &Task, error: &str, now: i64) {
        self.metrics().tasks_failed.inc(&task.worker);
        self.metrics().recent.count(&task.worker, Step::Failed, now);
        let mut entry = task_entry(task, "dispatch", LogOutcome::Fail, now);
        entry.error = Some(error.to_owned());
        self.record(entry);
    }

    /// The attempt failed in a retryable way with no retries left: the task is dead.
    pub(crate) fn dead_lettered(&self, task: &Task, error: &str, now: i64) {
        self.metrics().tasks_dead.inc(&task.worker);
        self.metrics().recent.count(&task.worker, Step::Dead, now);
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

    /// An attempt ended on the executor node or process worker `node` with `outcome`.
    pub(crate) fn ran_on_node(&self, node: &str, outcome: &Outcome) {
        self.metrics().node_jobs.inc(node, outcome.node_label());
    }

    /// A node changed state: `ok` when it is up again, `fail` when it went down (the reason in
    /// `error`); `detail` names the node, its kind and both states.
    pub(crate) fn node_changed(&self, change: &NodeChange, now: i64) {
        let outcome = if change.up {
            LogOutcome::Ok
        } else {
            LogOutcome::Fail
        };
        self.record(LogRecord {
            trace_id: Some(format!("node-{}", change.node)),
            error: change.error.clone(),
            detail: Some(json!({
                "node": change.node,
                "kind": change.kind.as_str(),
                "from": change.from,
                "to": change.to,
            })),
            ..entry("node", outcome, now)
        });
    }

    /// `replay` is a replay of `original` (the dashboard's Replay): one entry on each task,
    /// naming the other, so either's trace links to the other.
    pub(crate) fn replayed(&self, original: &Task, replay: &Task, now: i64) {
        self.record(LogRecord {
            detail: Some(json!({ "replayed_as": replay.id })),
            ..task_entry(original, "replay", LogOutcome::Ok, now)
        });
        self.record(LogRecord {
            detail: Some(json!({ "replay_of": original.id })),
            ..task_entry(replay, "replay", LogOutcome::Ok, now)
        });
    }
}

/// Why a webhook delivery was refused: `detail.reason` of its `webhook` deny entry, and the
/// status the sender got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No source of that name is registered.
    UnknownSource,
    /// The body is over the limit.
    TooLarge,
    /// The body could not be read.
    Unreadable,
    /// A signature or token header is missing or wrong.
    Signature,
    /// The signed timestamp is too far from the server's time.
    StaleTimestamp,
    /// Over the source's token bucket.
    RateLimited,
    /// Not JSON, or without what the kind's delivery must carry (its id).
    Malformed,
    /// The body arrived slower than the listener's minimum rate.
    TooSlow,
    /// The webhook body budget is spent: too many bodies are being received at once.
    Busy,
    /// The source's secret cannot be read on the server (its configuration, not the sender).
    SecretUnavailable,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
            Self::Signature => "signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::RateLimited => "rate_limit",
            Self::Malformed => "malformed",
            Self::TooSlow => "too_slow",
            Self::Busy => "busy",
            Self::SecretUnavailable => "secret_unavailable",
        }
    }

    /// The status the sender gets.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::UnknownSource => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Signature | Self::StaleTimestamp => StatusCode::UNAUTHORIZED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unreadable | Self::Malformed => StatusCode::BAD_REQUEST,
            Self::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::SecretUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The server's own failure (`fail`), or the sender's request refused (`deny`).
    fn outcome(self) -> LogOutcome {
        match self {
            Self::SecretUnavailable => LogOutcome::Fail,
            _ => LogOutcome::Deny,
        }
    }
}

/// `text` cut to `max` characters: a refused request's source name and message quote whatever
/// the sender typed in the path.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Refused webhook deliveries written to `/logs` per second, per source.
pub(crate) const REFUSALS_RECORDED_PER_SECOND: u32 = 10;

/// Budgets of refused deliveries per source (`None`: every unknown source together), one second
/// at a time.
#[derive(Debug, Default)]
pub(crate) struct RefusalBudget {
    windows: HashMap<Option<String>, RefusalWindow>,
}

#[derive(Debug, Clone, Copy)]
struct RefusalWindow {
    second: i64,
    recorded: u32,
    unrecorded: u64,
}

impl RefusalBudget {
    /// Whether a refusal at `now_ms` may be written: `Some(n)`, with the number of refusals not
    /// written since the last one that was, or `None` when this second's budget is spent.
    pub(crate) fn admit(&mut self, source: Option<&str>, now_ms: i64) -> Option<u64> {
        let second = now_ms.div_euclid(1000);
        // Keys are configured sources plus one for unknown names; forget idle ones all the same.
        if self.windows.len() > 1024 {
            self.windows.retain(|_, window| window.second >= second - 1);
        }
        let window = self
            .windows
            .entry(source.map(str::to_owned))
            .or_insert(RefusalWindow {
                second,
                recorded: 0,
                unrecorded: 0,
            });
        if window.second != second {
            window.second = second;
            window.recorded = 0;
        }
        if window.recorded >= REFUSALS_RECORDED_PER_SECOND {
            window.unrecorded += 1;
            return None;
        }
        window.recorded += 1;
        Some(std::mem::take(&mut window.unrecorded))
    }
}

/// A source name from a request path, bounded.
fn source_label(source: &str) -> String {
    bounded(source, 100)
}

/// An entry about event `event`: its trace and id filled in.
fn event_entry(event: &Event, action: &str, outcome: LogOutcome, ts: i64) -> LogRecord {
    LogRecord {
        trace_id: Some(event_trace_id(event.id)),
        event_id: Some(event.id),
        ..entry(action, outcome, ts)
    }
}

/// The steps of webhooks, cron and write-back. Actions: `webhook` (ok: a delivery stored as an
/// event; deny: refused, `detail.reason` one of [`Refusal`]'s; skip: Slack's URL challenge;
/// fail: the server could not take it), `dedup` (skip: a redelivery of a stored event), `match`
/// (ok with `detail.workers`, skip when no worker matches, fail; `detail.not_matched` gives
/// each other worker on the source the reason it did not match), `policy` (per matched
/// worker: ok, or deny with `detail.reason`, `detail.actor` and `detail.why`), `submit` (ok: a task made
/// for an event or a cron fire, `detail.trigger`), `cron` (ok: fired; skip: missed times
/// dropped, `detail.dropped`, or the worker paused; fail; a time another server fired is
/// logged by that server only), `write_back` (ok, retry with
/// `detail.next_attempt_at`, fail, or skip when there is no reply to post) and `dead_letter`
/// (fail: a write-back given up). A refused delivery has no event: its entry gets a fresh trace
/// id. Nothing from the request but the source name goes into `detail`, and every entry passes
/// the redactor.
impl TraceLog {
    /// A delivery to `source` was refused with `error` (the message the sender got, or for the
    /// server's own failures what the operator must fix). Whether it was recorded: a caller that
    /// also logs the refusal logs only those, under the same budget.
    pub(crate) fn webhook_refused(
        &self,
        source: &str,
        refusal: Refusal,
        error: &str,
        now: i64,
    ) -> bool {
        if refusal == Refusal::RateLimited {
            self.metrics().webhooks_rate_limited.inc();
        }
        // Anyone can send refused deliveries as fast as the network allows; each source writes
        // at most `REFUSALS_RECORDED_PER_SECOND` of them, and deliveries to unknown sources
        // share one budget, so a flood cannot fill the database.
        let budget_key = (refusal != Refusal::UnknownSource).then_some(source);
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(budget_key, now);
        let Some(unrecorded_before) = admitted else {
            self.metrics().logs_refusals_unrecorded.inc();
            return false;
        };
        let mut detail = json!({
            "source": source_label(source),
            "reason": refusal.reason(),
            "status": refusal.status().as_u16(),
        });
        if unrecorded_before > 0 {
            detail["unrecorded_before"] = json!(unrecorded_before);
        }
        self.record(LogRecord {
            trace_id: Some(random_trace_id()),
            error: Some(bounded(error, 300)),
            detail: Some(detail),
            ..entry("webhook", refusal.outcome(), now)
        });
        true
    }

    /// A delivery to `source` could not be taken because the database refused the event.
    pub(crate) fn webhook_failed(&self, source: &str, error: &str, now: i64) {
        self.record(LogRecord {
            trace_id: Some(random_trace_id()),
            error: Some(error.to_owned()),
            detail: Some(json!({ "source": source_label(source) })),
            ..entry("webhook", LogOutcome::Fail, now)
        });
    }

    /// Slack's `url_verification` challenge to `source` was answered; nothing was stored.
    pub(crate) fn webhook_challenge(&self, source: &str, now: i64) {
        self.record(LogRecord {
            trace_id: Some(random_trace_id()),
            detail: Some(json!({ "source": source_label(source), "reason": "url_verification" })),
            ..entry("webhook", LogOutcome::Skip, now)
        });
    }

    /// A delivery was stored as `event`.
    pub(crate) fn webhook_received(&self, event: &Event, now: i64) {
        self.metrics().webhooks_received.inc();
        self.record(LogRecord {
            detail: Some(json!({
                "source": event.source,
                "event_type": event.event_type,
                "delivery_id": event.delivery_id,
            })),
            ..event_entry(event, "webhook", LogOutcome::Ok, now)
        });
    }

    /// A delivery sent with `delivery_id` is the stored `event` again: acknowledged, nothing
    /// new. The store matched it by its delivery id (a redelivery) when the ids are equal, else
    /// by its body (a GitHub or GitLab delivery replayed under a new id; see
    /// [`verify::delivery_id_is_forgeable`](crate::webhooks::verify::delivery_id_is_forgeable)).
    pub(crate) fn event_deduplicated(&self, event: &Event, delivery_id: &str, now: i64) {
        self.metrics().events_dedup_skipped.inc();
        let detail = if delivery_id == event.delivery_id {
            json!({
                "source": event.source,
                "delivery_id": event.delivery_id,
                "by": "delivery_id",
                "reason": "the delivery id names an existing event",
            })
        } else {
            json!({
                "source": event.source,
                // Sender-chosen text that no event stores: bounded like a refusal's message.
                "delivery_id": bounded(delivery_id, 300),
                "event_delivery_id": event.delivery_id,
                "by": "body",
                "reason": format!(
                    "the body repeats an event received in the last {} hours under another \
                     delivery id",
                    crate::webhooks::BODY_REPLAY_WINDOW_MS / 3_600_000
                ),
            })
        };
        self.record(LogRecord {
            detail: Some(detail),
            ..event_entry(event, "dedup", LogOutcome::Skip, now)
        });
    }

    /// The workers whose triggers match `event` (none: the event is skipped), and for every
    /// other worker with a trigger on its source the first reason it did not match
    /// (`detail.not_matched`), so "why did my bot not react?" has its answer in the trace; with
    /// who caused the event (`detail.actor`) when its source is known.
    pub(crate) fn matched(
        &self,
        event: &Event,
        workers: &[&str],
        not_matched: &std::collections::BTreeMap<&str, String>,
        actor: Option<&str>,
        now: i64,
    ) {
        let mut detail = json!({ "event_type": event.event_type });
        if let Some(actor) = actor {
            detail["actor"] = json!(actor);
        }
        let outcome = if workers.is_empty() {
            detail["reason"] = json!("no worker's webhook trigger matches");
            LogOutcome::Skip
        } else {
            detail["workers"] = json!(workers);
            LogOutcome::Ok
        };
        if !not_matched.is_empty() {
            detail["not_matched"] = json!(not_matched);
        }
        self.record(LogRecord {
            detail: Some(detail),
            ..event_entry(event, "match", outcome, now)
        });
    }

    /// The policy of `worker` decided on `event`: `policy` ok, or deny with `detail.reason`
    /// (one of [`POLICY_DENIALS`](crate::metrics::POLICY_DENIALS)), and the counter.
    pub(crate) fn policy_decided(
        &self,
        event: &Event,
        worker: &str,
        verdict: &crate::policy::Verdict,
        now: i64,
    ) {
        use crate::policy::Verdict;
        let (outcome, denied, detail) = match verdict {
            Verdict::Admit { actor } => (LogOutcome::Ok, None, json!({ "actor": actor })),
            Verdict::Deny {
                reason,
                actor,
                detail,
            } => (
                LogOutcome::Deny,
                Some(*reason),
                json!({ "actor": actor, "reason": reason, "why": detail }),
            ),
        };
        self.metrics().policy_decisions.inc(worker, denied);
        self.record(LogRecord {
            worker: Some(worker.to_owned()),
            detail: Some(detail),
            ..event_entry(event, "policy", outcome, now)
        });
    }

    /// Matching `event` failed (its source is gone, or a task could not be stored).
    pub(crate) fn match_failed(&self, event: &Event, error: &str, now: i64) {
        self.record(LogRecord {
            error: Some(error.to_owned()),
            ..event_entry(event, "match", LogOutcome::Fail, now)
        });
    }

    /// Matching made `task` for its event (`created == false`: it existed, as when startup
    /// recovery matches an event again).
    pub(crate) fn event_task_submitted(&self, task: &Task, created: bool, now: i64) {
        let entry = |outcome| LogRecord {
            attempt: None,
            ..task_entry(task, "submit", outcome, now)
        };
        if created {
            self.metrics().tasks_created.inc(&task.worker);
            self.metrics()
                .recent
                .count(&task.worker, Step::Created, now);
            self.record_creation(LogRecord {
                detail: Some(json!({ "trigger": "webhook" })),
                ..entry(LogOutcome::Ok)
            });
        } else {
            self.record(LogRecord {
                detail: Some(json!({
                    "trigger": "webhook",
                    "reason": "the event already has a task for this worker",
                })),
                ..entry(LogOutcome::Skip)
            });
        }
    }

    /// `worker`'s schedule skipped `dropped` missed fire times (it fires once for the latest);
    /// `trace_id` is the fired task's, if this server fired it.
    pub(crate) fn cron_dropped(&self, worker: &str, dropped: u64, trace_id: String, now: i64) {
        self.metrics().cron_ticks_dropped.inc_by(dropped);
        self.record(LogRecord {
            trace_id: Some(trace_id),
            worker: Some(worker.to_owned()),
            detail: Some(json!({
                "dropped": dropped,
                "reason": "missed while the server was down; firing once for the latest",
            })),
            ..entry("cron", LogOutcome::Skip, now)
        });
    }

    /// A cron trigger fired and made `task`; `fire` describes the fire (schedule, time zone,
    /// fire time).
    pub(crate) fn cron_fired(&self, task: &Task, fire: Value, now: i64) {
        self.metrics().tasks_created.inc(&task.worker);
        self.metrics()
            .recent
            .count(&task.worker, Step::Created, now);
        // Each goes before the task's steps the dispatcher may have recorded already, so the
        // submission first and the fire before it.
        self.record_creation(LogRecord {
            attempt: None,
            detail: Some(json!({ "trigger": "cron" })),
            ..task_entry(task, "submit", LogOutcome::Ok, now)
        });
        self.record_creation(LogRecord {
            attempt: None,
            detail: Some(fire),
            ..task_entry(task, "cron", LogOutcome::Ok, now)
        });
    }

    /// `worker` is paused: its fire at `fire_time` made no task.
    pub(crate) fn cron_paused(&self, worker: &str, fire_time: i64, now: i64) {
        self.record(LogRecord {
            trace_id: Some(random_trace_id()),
            worker: Some(worker.to_owned()),
            detail: Some(json!({ "fire_time": fire_time, "reason": "the worker is paused" })),
            ..entry("cron", LogOutcome::Skip, now)
        });
    }

    /// A worker was paused (`paused`) or resumed through the API.
    pub(crate) fn worker_paused(&self, worker: &str, paused: bool, now: i64) {
        let action = if paused { "pause" } else { "resume" };
        self.record(LogRecord {
            trace_id: Some(random_trace_id()),
            worker: Some(worker.to_owned()),
            ..entry(action, LogOutcome::Ok, now)
        });
    }

    /// Recording `worker`'s fire failed: it did not fire.
    pub(crate) fn cron_failed(&self, worker: &str, error: &str, now: i64) {
        self.record(LogRecord {
            trace_id: Some(random_trace_id()),
            worker: Some(worker.to_owned()),
            error: Some(error.to_owned()),
            ..entry("cron", LogOutcome::Fail, now)
        });
    }

    /// The replies of `event` were posted (on its first try, or after retries).
    pub(crate) fn written_back(&self, event: &Event, now: i64) {
        let metrics = self.metrics();
        if event.write_back_attempts == 0 {
            metrics.writeback_ok.inc();
        } else {
            metrics.writeback_retry_ok.inc();
        }
        self.record(LogRecord {
            detail: Some(json!({ "tries": event.write_back_attempts + 1 })),
            ..event_entry(event, "write_back", LogOutcome::Ok, now)
        });
    }

    /// A try whose outcome was unknown had posted the reply to `event` after all: the platform
    /// holds it (its marker was found), so it was recorded, not posted again.
    pub(crate) fn write_back_found(&self, event: &Event, now: i64) {
        self.metrics().writeback_retry_ok.inc();
        self.record(LogRecord {
            detail: Some(json!({
                "tries": event.write_back_attempts + 1,
                "found": "an earlier try's reply, recorded without posting again",
            })),
            ..event_entry(event, "write_back", LogOutcome::Ok, now)
        });
    }

    /// A try of `event`'s reply may have posted it, and the platform cannot be searched: the
    /// reply is not posted again (at most once), and the event ends `completed`.
    pub(crate) fn write_back_unconfirmed(&self, event: &Event, error: &str, now: i64) {
        self.record(LogRecord {
            error: Some(error.to_owned()),
            detail: Some(json!({
                "tries": event.write_back_attempts + 1,
                "reason": "the reply may have been posted and cannot be looked for; not posted again",
            })),
            ..event_entry(event, "write_back", LogOutcome::Skip, now)
        });
    }

    /// Posting the replies of `event` failed in a way another try would repeat.
    pub(crate) fn write_back_failed(&self, event: &Event, error: &str, now: i64) {
        self.metrics().writeback_fail.inc();
        self.record(LogRecord {
            error: Some(error.to_owned()),
            detail: Some(json!({ "tries": event.write_back_attempts + 1, "permanent": true })),
            ..event_entry(event, "write_back", LogOutcome::Fail, now)
        });
    }

    /// Posting the replies of `event` failed transiently; the next try is at `at`.
    pub(crate) fn write_back_retried(&self, event: &Event, error: &str, at: i64, now: i64) {
        self.metrics().writeback_fail.inc();
        self.record(LogRecord {
            error: Some(error.to_owned()),
            detail: Some(json!({
                "tries": event.write_back_attempts + 1,
                "next_attempt_at": at,
                "delay_ms": at.saturating_sub(now),
            })),
            ..event_entry(event, "write_back", LogOutcome::Retry, now)
        });
    }

    /// Posting the replies of `event` failed transiently with no retries left: the event is
    /// dead-lettered (`failed`).
    pub(crate) fn write_back_dead_lettered(&self, event: &Event, error: &str, now: i64) {
        let metrics = self.metrics();
        metrics.writeback_fail.inc();
        metrics.writeback_dead_letter.inc();
        let tries = event.write_back_attempts + 1;
        self.record(LogRecord {
            error: Some(error.to_owned()),
            detail: Some(json!({ "tries": tries })),
            ..event_entry(event, "write_back", LogOutcome::Fail, now)
        });
        self.record(LogRecord {
            error: Some(error.to_owned()),
            detail: Some(json!({ "tries": tries })),
            ..event_entry(event, "dead_letter", LogOutcome::Fail, now)
        });
    }

    /// `event` ended without a write-back (none of its workers replied): `state` is `completed`
    /// or `failed`.
    pub(crate) fn settled_without_write_back(&self, event: &Event, state: EventState, now: i64) {
        self.record(LogRecord {
            detail: Some(json!({ "reason": "no reply to write back", "state": state })),
            ..event_entry(event, "write_back", LogOutcome::Skip, now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_records_a_bounded_number_of_refusals_per_second() {
        let mut budget = RefusalBudget::default();
        for n in 0..REFUSALS_RECORDED_PER_SECOND {
            assert_eq!(budget.admit(Some("gh"), 5_000 + i64::from(n)), Some(0));
        }
        assert_eq!(budget.admit(Some("gh"), 5_500), None);
        assert_eq!(budget.admit(Some("gh"), 5_999), None);
        // Another source and the unknown-source budget are separate.
        assert_eq!(budget.admit(Some("slack"), 5_999), Some(0));
        assert_eq!(budget.admit(None, 5_999), Some(0));
        // The next second records again and says how many went unrecorded meanwhile.
        assert_eq!(budget.admit(Some("gh"), 6_000), Some(2));
        assert_eq!(budget.admit(Some("gh"), 6_001), Some(0));
    }
}
