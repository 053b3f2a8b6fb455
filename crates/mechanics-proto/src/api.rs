//! The coordinator's HTTP API under `/api/v1`: request and response bodies, shared by the server
//! and the CLI so that neither can drift from the other.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /workers` | [`WorkerInput`] | `201` (new) or `200` (updated) [`WorkerView`] |
//! | `GET /workers` | | [`WorkerList`] |
//! | `GET /workers/{name}` | | [`WorkerView`] with the module source |
//! | `DELETE /workers/{name}` | | `204` |
//! | `POST /tasks` | [`SubmitTask`] | `202` [`Submitted`] |
//! | `GET /tasks?state&worker&event&limit&cursor` | | [`TaskList`] |
//! | `GET /tasks/{id}` | | [`TaskDetail`] (the task and its attempts' console lines) |
//! | `POST /tasks/{id}/retry`, `POST /tasks/{id}/cancel` | | [`Task`] |
//! | `GET /events?source&state&type&limit&cursor` | | [`EventList`] |
//! | `GET /events/{id}` | | [`EventDetail`] (the event, and what became of it per worker) |
//! | `POST /events/{id}/redeliver` | [`Redeliver`] (optional) | `202` [`WebhookAccepted`] (the new event) |
//! | `POST /sources` | [`SourceSpec`] | `201` (new) or `200` (updated) [`Source`] |
//! | `GET /sources` | | [`SourceList`] |
//! | `GET /sources/{name}` | | [`Source`] |
//! | `DELETE /sources/{name}` | | `204` |
//! | `GET /nodes` | | [`NodeList`] |
//! | `POST /nodes/{name}/reset` | | [`NodeList`] after the reset |
//! | `POST /keys` | [`ApiKeyInput`] | `201` [`ApiKeyCreated`] (the secret, shown once) |
//! | `GET /keys` | | [`ApiKeyList`] |
//! | `DELETE /keys/{name}` | | `204` |
//!
//! Outside `/api/v1`, `POST /webhooks/{source}` takes a platform's signed delivery (the signature
//! is the authentication, not the API key) and answers `202` [`WebhookAccepted`], or `200` with
//! `duplicate: true` for a delivery id it already has.
//!
//! Every error is [`ApiError`] with a stable `code`: `bad_request`, `unauthorized`, `not_found`,
//! `method_not_allowed`, `conflict`, `payload_too_large`, `rate_limited`, `unavailable` (overload:
//! `Retry-After` says when to come back), `internal`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(doc)]
use crate::domain::SourceSpec;
use crate::domain::{
    AttemptConsoleLine, Event, EventId, EventState, Source, Task, TaskAttempt, TaskState, Worker,
    WorkerSpec,
};

/// Path prefix of the API.
pub const API_PREFIX: &str = "/api/v1";

/// Largest js module source accepted with a worker, in bytes: the server refuses a larger
/// [`WorkerInput::module_source`], and the CLI stops reading a module file past it.
pub const MAX_MODULE_BYTES: usize = 1024 * 1024;

/// A worker to add or update: the spec, and for js workers the module's source (the CLI reads the
/// file named by `spec.module`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerInput {
    /// The spec.
    pub spec: WorkerSpec,
    /// js: the module source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_source: Option<String>,
}

/// A worker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    /// The stored worker (the module source only in `GET /workers/{name}`).
    #[serde(flatten)]
    pub worker: Worker,
    /// `GET /workers/{name}` of a worker with cron triggers: its next 3 fire times (RFC 3339,
    /// UTC), skipped while it is paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_cron_fires: Vec<String>,
}

/// `GET /workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerList {
    /// Every worker, by name.
    pub workers: Vec<WorkerView>,
}

/// `POST /tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// The worker to run.
    pub worker: String,
    /// Its input (default `null`).
    #[serde(default)]
    pub payload: Value,
    /// Submitting twice with the same key for the same worker makes one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The answer to `POST /tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The task's id.
    pub id: i64,
    /// Its state now.
    pub state: TaskState,
    /// `false` when the idempotency key named an existing task.
    pub created: bool,
}

/// `GET /tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// `GET /tasks/{id}`: the task with what its js attempts wrote with `console`. The listing
/// ([`TaskList`]) leaves the console out: it can be 64 KiB per attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskDetail {
    /// The task, its fields at the top level as in [`TaskList`].
    #[serde(flatten)]
    pub task: Task,
    /// Every console line of the task's attempts, by attempt and then in the order written;
    /// redacted like `/logs`. Empty when no attempt wrote any (or the worker is not js).
    #[serde(default)]
    pub console: Vec<AttemptConsoleLine>,
    /// Every attempt that ran, oldest first (re-queues for a rate limit or a busy executor are
    /// not attempts); the last one's `worker_revision` is the revision the task ran with.
    #[serde(default)]
    pub attempts: Vec<TaskAttempt>,
}

/// `GET /events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventList {
    /// Newest first.
    pub events: Vec<Event>,
    /// Pass as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// `GET /events/{id}`: the event and, per worker that had a webhook trigger on its source, what
/// became of it — the answer to "why did my bot (not) react?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventDetail {
    /// The event, its fields at the top level as in [`EventList`].
    #[serde(flatten)]
    pub event: Event,
    /// Who caused it, as the policies read it (`unknown` when the payload names nobody), read
    /// from its `match` entry of the trace: `None` before it was matched or once that entry
    /// was pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Whether its `match` entry is in the trace: `false` before it was matched, and once the
    /// entry was pruned (after 7 days), when `workers` has only the workers that got a task.
    #[serde(default)]
    pub verdicts: bool,
    /// Per worker, by name: the verdicts of matching and policy, and its task.
    #[serde(default)]
    pub workers: Vec<EventWorker>,
    /// Its write-back's last step in the trace (`None` before there was one, and once pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_back: Option<EventWriteBack>,
}

/// The last `write_back` step of an event, as its trace entry recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventWriteBack {
    /// `ok` (posted, or an earlier try's reply found), `retry` (tried again at
    /// `next_attempt_at`), `fail` (given up) or `skip` (no reply to post, or one that may have
    /// been posted and cannot be looked for).
    pub outcome: crate::domain::LogOutcome,
    /// Unix ms of that step.
    pub ts: i64,
    /// The tries made so far, that one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// The last error (redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix ms of the next try (`retry` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
}

impl EventDetail {
    /// Its write-back in a few words: done, retrying at a time, failed or skipped, with the
    /// number of tries and the last error; `None` for an event that never had a write-back
    /// step. `time` writes a unix-ms time the way the reader shows times. `mechanics event
    /// show` and the dashboard's event page both say it this way.
    pub fn write_back_summary(&self, time: impl Fn(i64) -> String) -> Option<String> {
        let event = &self.event;
        let Some(step) = &self.write_back else {
            // The step was pruned from the trace: the event still counts its failed tries.
            return (event.write_back_attempts > 0)
                .then(|| format!("{} failed tries", event.write_back_attempts));
        };
        let error = step
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let tries = step
            .tries
            .filter(|n| *n > 1)
            .map(|n| format!(" after {n} tries"))
            .unwrap_or_default();
        Some(match step.outcome {
            crate::domain::LogOutcome::Ok => format!("done{tries}"),
            crate::domain::LogOutcome::Retry => {
                let at = event.next_write_back_at.or(step.next_attempt_at);
                let at = at.map_or_else(|| "-".to_owned(), time);
                format!("retrying at {at}{tries}{error}")
            }
            crate::domain::LogOutcome::Skip => format!(
                "skipped ({}){error}",
                step.reason.as_deref().unwrap_or("no reply")
            ),
            crate::domain::LogOutcome::Fail | crate::domain::LogOutcome::Deny => {
                format!("failed{tries}{error}")
            }
        })
    }
}

/// What became of an event for one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventWorker {
    /// The worker's name.
    pub worker: String,
    /// Whether one of its webhook triggers matched.
    pub matched: bool,
    /// Why it did not match (`repository.full_name: want "acme/web", got "acme/app"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_matched: Option<String>,
    /// The policy's decision: `ok` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Why the policy denied it (`actor_not_allowed: eve is not in policy.actors.allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_reason: Option<String>,
    /// The task made for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
}

/// `POST /events/{id}/redeliver`: the event is delivered again as a new event (same source,
/// type and payload) and matched as if it had just arrived. The same `key` names the same
/// redelivery, so a retried call makes one new event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeliver {
    /// Names this redelivery (default: a fresh one per call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `GET /sources`. Sources hold only references to their secrets, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceList {
    /// Every source, by name.
    pub sources: Vec<Source>,
}

/// The answer to `POST /webhooks/{source}`: the delivery is stored (committed) as this event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookAccepted {
    /// The stored event's id.
    pub event_id: EventId,
    /// Its state now.
    pub state: EventState,
    /// `true` when the delivery was already stored: nothing new was done.
    pub duplicate: bool,
    /// Why a webhook delivery is a duplicate: `delivery_id` (that id names the event) or
    /// `body` (a GitHub or GitLab body received in the last 24 hours under another id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_by: Option<String>,
}

/// An executor node or process worker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// `local` (a node this server supervises), `remote` (a registered node on another
    /// machine), `process` (a process worker's program) or `container` (a container worker's
    /// container).
    #[serde(default)]
    pub kind: NodeKind,
    /// A remote node's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Local nodes and process workers: `running`, `backing_off`, `tripped`, `stopped`, ...;
    /// remote nodes: `healthy`, `unreachable`, `unauthorized`, `incompatible`, `tripped`
    /// (`unchecked` until the first check).
    pub state: String,
    /// The crash-loop breaker: `closed`, `tripped` or `half_open`.
    pub breaker: String,
    /// Where it listens, once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Jobs running on it now.
    pub in_flight: u64,
    /// Jobs it ran.
    pub jobs: u64,
    /// Times it was started.
    pub starts: u64,
    /// Times it died.
    pub deaths: u64,
    /// Times it was restarted.
    pub restarts: u64,
    /// How its last instance ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// What the process ran out of at its last launch or health check ("the process is out of
    /// file descriptors (EMFILE)"), while that lasts; such failures are not held against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_exhaustion: Option<String>,
    /// Executor nodes: jobs sent to it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Remote nodes: the median job time, in milliseconds, over its last jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// Remote nodes: why it is not healthy, or its last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Container workers: the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container workers: the id (12 characters) of the container serving it, while one is
    /// ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// What a [`NodeView`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// An executor node (`mechanics node serve`) this server supervises.
    #[default]
    Local,
    /// A registered executor node on another machine (`mechanics node add`).
    Remote,
    /// The program of a process worker.
    Process,
    /// The container of a container worker.
    Container,
}

impl NodeKind {
    /// The kind's name as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Process => "process",
            Self::Container => "container",
        }
    }
}

/// `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeList {
    /// Executor nodes, process workers and container workers, by name.
    pub nodes: Vec<NodeView>,
}

/// Every error answer: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// The error.
    pub error: ApiErrorBody,
}

/// The body of an [`ApiError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// A stable, machine-readable code.
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The input field at fault, when one is (`triggers[0].cron`, a query parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `GET /logs` (also `GET /api/v1/logs`): the pipeline trace, newest first. Filters `event`,
/// `task`, `worker`, `action`, `outcome`, `since` (`1h`, `24h`, RFC 3339), `trace`, `limit`
/// and `cursor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogList {
    /// Newest first.
    pub entries: Vec<crate::domain::LogEntry>,
    /// Pass as `cursor` for the next (older) page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

/// A `mechanics serve` process using the database, as its heartbeats record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    /// Chosen at startup, unique per process.
    pub id: String,
    /// Where its API listens.
    pub address: String,
    /// The Mechanics version it runs.
    pub version: String,
    /// When it started (unix ms).
    pub started_at: i64,
    /// Its last heartbeat (unix ms).
    pub last_seen: i64,
}

/// `GET /instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceList {
    /// The instances seen within the last three heartbeats, by id.
    pub instances: Vec<Instance>,
}

/// `GET /metrics/summary`: what each worker did in the last hour on the server answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricsSummary {
    /// The window the counts cover, in seconds (3600), ending now.
    pub window_seconds: u64,
    /// Every registered worker (and any removed one still with activity in the window), by
    /// name.
    pub workers: Vec<WorkerActivity>,
}

/// One worker's last hour, in [`MetricsSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerActivity {
    /// The worker's name.
    pub worker: String,
    /// Tasks created (API, webhook and cron).
    pub created: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks that ended failed.
    pub failed: u64,
    /// Tasks dead-lettered after their retries.
    pub dead: u64,
    /// Attempts started (the latencies below are theirs).
    pub attempts: u64,
    /// Median time from a task becoming due to its attempt starting, in ms (within 20 % above
    /// the exact value); `null` without attempts.
    pub dispatch_latency_p50_ms: Option<u64>,
    /// 95th percentile of the same, in ms; `null` without attempts.
    pub dispatch_latency_p95_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConsoleLevel, ConsoleLine};
    use serde_json::json;

    #[test]
    fn a_task_detail_is_the_task_with_its_console_beside_its_fields() {
        let task: Task = serde_json::from_value(json!({
            "id": 7, "worker": "w", "payload": null, "state": "completed", "attempt": 2,
            "tries": 2, "next_run_at": 0, "result": { "ok": 1 }, "created_at": 1, "updated_at": 2,
        }))
        .unwrap();
        let detail = TaskDetail {
            task: task.clone(),
            console: vec![AttemptConsoleLine {
                attempt: 1,
                line: ConsoleLine {
                    level: ConsoleLevel::Info,
                    ts: 5,
                    message: "hello".into(),
                },
            }],
            attempts: Vec::new(),
        };
        let body = serde_json::to_value(&detail).unwrap();
        assert_eq!(
            (&body["id"], &body["state"]),
            (&json!(7), &json!("completed"))
        );
        assert_eq!(
            body["console"],
            json!([{ "attempt": 1, "level": "info", "ts": 5, "message": "hello" }])
        );
        assert_eq!(
            serde_json::from_value::<TaskDetail>(body.clone()).unwrap(),
            detail
        );
        // A client reading it as a plain task (`task submit --wait`) ignores the console.
        assert_eq!(serde_json::from_value::<Task>(body).unwrap(), task);
    }
}

/// What an API key may do. Each scope includes the ones before it, so they are ordered.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    /// Every `GET` (workers, tasks, events, nodes, sources, instances, `/logs`, `/debug/vars`).
    Read,
    /// `read`, plus submitting, retrying and canceling tasks and resetting breakers.
    Operate,
    /// Everything: workers, sources, nodes and API keys too.
    Admin,
}

impl ApiScope {
    /// Every scope, narrowest first.
    pub const ALL: &'static [ApiScope] = &[ApiScope::Read, ApiScope::Operate, ApiScope::Admin];

    /// The name the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for ApiScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a scope: read, operate or admin"))
    }
}

/// `POST /api/v1/keys`: a new API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyInput {
    /// Its name (letters, digits, `.`, `_`, `-`; at most 64 characters), unique.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// What it may do.
    pub scope: ApiScope,
    /// Seconds from now after which it is refused; none: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_secs: Option<u64>,
}

/// An API key as the API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scope: ApiScope,
    /// When it was created (unix ms).
    pub created_at: i64,
    /// When it was last used (unix ms), recorded at most once a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    /// When it stops working (unix ms); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// The answer to `POST /api/v1/keys`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyCreated {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The secret to send as `Authorization: Bearer <secret>`; it is stored only as a hash.
    pub secret: String,
}

/// `GET /api/v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    /// Every key, by name.
    pub keys: Vec<ApiKeyView>,
}
