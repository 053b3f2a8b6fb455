//! The `/logs` pipeline trace: one entry per pipeline step, redacted, batched into the database.
//!
//! Recording is one line from any handler or loop, and never waits for the database:
//!
//! ```text
//! use mechanics_proto::domain::LogOutcome;
//! use mechanics_server::trace_log::{event_trace_id, entry};
//!
//! let mut e = entry("webhook", LogOutcome::Ok, now);
//! e.trace_id = Some(event_trace_id(event.id));
//! e.event_id = Some(event.id);
//! shared.trace.record(e);
//! // A secret the server resolved (a webhook secret, a platform token) is never written:
//! shared.trace.redactor().add_secret(&secret);
//! ```
//!
//! **Trace ids** are derived, not stored: every entry about event `N` — the delivery, the match,
//! the policy decisions, the tasks it made, their attempts, the write-back — carries
//! `event-N` ([`event_trace_id`]); a task without an event (an API submission) carries
//! `task-N` ([`task_trace_id`]). So the chain survives restarts and retries with no extra
//! column, and `GET /logs?trace=event-N` is the whole causal chain. A step that has neither (a
//! delivery refused before it was stored) takes a fresh [`random_trace_id`].
//!
//! **Batching**: [`TraceLog::record`] redacts the entry and pushes it onto an in-memory buffer;
//! the flusher writes the buffer with one `append_logs` after a short window
//! ([`FLUSH_WINDOW`]) or as soon as it holds [`FLUSH_BATCH`] entries. The flusher sleeps on a
//! notification while the buffer is empty, so an idle server makes no query (invariant 6).
//! `GET /logs` flushes first (a reader sees its own steps); shutdown flushes last. If the
//! database refuses a batch it is kept and retried; past [`MAX_BUFFERED`] entries the oldest
//! are dropped and counted (`mechanics_logs_dropped_total`) rather than growing without bound.
//!
//! **Redaction** happens before an entry is buffered, so nothing unredacted is ever written:
//! see [`Redactor`].
//!
//! **Retention**: [`prune_loop`] deletes entries older than the retention once a day; it is a
//! timer, so it queries only when it fires.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use mechanics_proto::domain::{EventId, LogOutcome, LogRecord, Task};
use mechanics_store::{Store, StoreError};
use regex::Regex;
use serde_json::Value;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// How long the flusher gathers entries before a write.
pub const FLUSH_WINDOW: Duration = Duration::from_millis(50);
/// Entries that trigger a write at once.
pub const FLUSH_BATCH: usize = 256;
/// Most entries held while the database refuses them.
pub const MAX_BUFFERED: usize = 10_000;
/// Default retention of `/logs` entries.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often retention runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// The trace id of event `id` and of everything it caused.
pub fn event_trace_id(id: EventId) -> String {
    format!("event-{id}")
}

/// The trace id of `task`: its event's, or its own when it has no event.
pub fn task_trace_id(task: &Task) -> String {
    match task.event_id {
        Some(event) => event_trace_id(event),
        None => format!("task-{}", task.id),
    }
}

/// A fresh trace id for a step that concerns no stored event or task.
pub fn random_trace_id() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness the id is still a valid (if shared) label.
    let _ = getrandom::fill(&mut bytes);
    format!("trace-{:016x}", u64::from_le_bytes(bytes))
}

/// Every `action` a `/logs` entry can have: what `GET /logs?action=` and `mechanics logs
/// --action` accept (anything else is refused, not answered with an empty list).
pub const ACTIONS: &[&str] = &[
    "api_key",
    "cancel",
    "console",
    "cron",
    "dead_letter",
    "dedup",
    "dispatch",
    "match",
    "node",
    "pause",
    "policy",
    "rate_limit",
    "reconcile",
    "recover",
    "replay",
    "resume",
    "retry",
    "retry_requested",
    "submit",
    "webhook",
    "write_back",
];

/// A bare entry: `action` (one of [`ACTIONS`]) ended with `outcome` at `ts` (unix ms); fill in
/// what applies.
pub fn entry(action: &str, outcome: LogOutcome, ts: i64) -> LogRecord {
    // Every test run that records an entry checks it: a new action must join the list, or
    // filtering by it would be refused.
    debug_assert!(ACTIONS.contains(&action), "{action:?} is not in ACTIONS");
    LogRecord {
        trace_id: None,
        ts,
        action: action.to_owned(),
        outcome,
        event_id: None,
        task_id: None,
        worker: None,
        attempt: None,
        error: None,
        detail: None,
    }
}

/// An entry about `task`: its trace, event, id, worker and attempt (its `runs`) filled in.
pub fn task_entry(task: &Task, action: &str, outcome: LogOutcome, ts: i64) -> LogRecord {
    LogRecord {
        trace_id: Some(task_trace_id(task)),
        event_id: task.event_id,
        task_id: Some(task.id),
        worker: Some(task.worker.clone()),
        // The attempt as people count it: a rate-limit re-queue is not one.
        attempt: (task.runs > 0).then_some(task.runs),
        ..entry(action, outcome, ts)
    }
}

/// The span every log line about one attempt of `task` runs in: it carries the trace id.
pub fn task_span(task: &Task) -> tracing::Span {
    tracing::info_span!(
        "task",
        trace_id = %task_trace_id(task),
        task = task.id,
        worker = %task.worker,
        attempt = task.attempt,
    )
}

/// Token shapes of the supported platforms and of HTTP authentication.
static PATTERNS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"gh[pousr]_[A-Za-z0-9]{20,}",
        r"|github_pat_[A-Za-z0-9_]{20,}",
        r"|xox[abpre]-[A-Za-z0-9-]{8,}",
        r"|xapp-[A-Za-z0-9-]{8,}",
        r"|\b\d{5,}:[A-Za-z0-9_-]{35}",
        r"|whsec_[A-Za-z0-9+/=_-]{8,}",
        r"|glpat-[A-Za-z0-9_-]{20,}",
        // Mechanics' own API keys (see `keys`).
        r"|\bmk_[A-Za-z0-9_-]{43}",
    ))
    .unwrap_or_else(|err| panic!("the redaction patterns are valid: {err}"))
});

/// `Bearer <value>`: the scheme stays readable.
static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
        .unwrap_or_else(|err| panic!("the bearer pattern is valid: {err}"))
});

/// JSON keys whose values are secrets whatever they look like.
static SECRET_KEYS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(authorization|cookie|set-cookie|password|passwd|secret|.*token|.*secret|api[_-]?key|x-api-key)$")
        .unwrap_or_else(|err| panic!("the secret key pattern is valid: {err}"))
});

/// Shortest configured secret that is redacted: shorter values would mangle ordinary text, and
/// no real secret is that short.
pub const MIN_SECRET_LEN: usize = 6;

/// Replaces secrets with `[redacted]`: tokens of GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`,
/// `ghr_`, `github_pat_`), Slack (`xox?-`, `xapp-`), Telegram bot tokens, Standard Webhooks
/// secrets (`whsec_`), GitLab (`glpat-`), `Bearer` values, the values of JSON keys that name a
/// secret (`authorization`, `*token`, `*secret`, `password`, `api_key`, ...), and every value
/// registered with [`add_secret`](Self::add_secret) (the API key, resolved `${env:NAME}`
/// values, webhook secrets).
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: RwLock<Vec<String>>,
}

impl Redactor {
    /// Redacts `secret` from now on (values shorter than [`MIN_SECRET_LEN`] are ignored).
    pub fn add_secret(&self, secret: &str) {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        let known = |secrets: &[String]| secrets.iter().any(|s| s == secret);
        // Registered again for every job of a worker: the common case only reads.
        if known(&self.secrets.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        if known(&secrets) {
            return;
        }
        secrets.push(secret.to_owned());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Registers the current values of the variables named by `${env:NAME}` in the strings of
    /// `config` (a worker's config): the job gets the values, the trace must never.
    pub fn add_env_refs(&self, config: &Value) {
        self.add_refs(config, &|name| std::env::var(name).ok());
    }

    fn add_refs(&self, config: &Value, lookup: &dyn Fn(&str) -> Option<String>) {
        match config {
            Value::String(text) => {
                let mut rest = text.as_str();
                while let Some(start) = rest.find("${env:") {
                    let after = &rest[start + 6..];
                    let Some(end) = after.find('}') else { break };
                    if let Some(value) = lookup(&after[..end]) {
                        self.add_secret(&value);
                    }
                    rest = &after[end + 1..];
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.add_refs(v, lookup)),
            Value::Object(map) => map.values().for_each(|v| self.add_refs(v, lookup)),
            _ => {}
        }
    }

    /// `text` with every secret replaced.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        redact_text(
            text,
            &self.secrets.read().unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// `value` with every secret replaced in its strings and object keys, and the values of
    /// secret-named keys replaced whole. The value is walked in place, never re-serialised: a
    /// string or key without a secret is neither copied nor reallocated, so a clean value costs
    /// one scan of its text. The one JSON redaction of the server: `/logs` details,
    /// `/debug/vars`, task results before they are stored, and the payloads and results of the
    /// API's answers.
    pub fn redact_json(&self, value: &mut Value) {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        redact_value(value, &secrets);
    }

    /// `record` with its error and detail redacted.
    pub fn redact_record(&self, mut record: LogRecord) -> LogRecord {
        if let Some(error) = &record.error
            && let Cow::Owned(redacted) = self.redact(error)
        {
            record.error = Some(redacted);
        }
        if let Some(detail) = &mut record.detail {
            self.redact_json(detail);
        }
        record
    }
}

/// `text` with the token shapes, `Bearer` values and the registered `secrets` replaced.
fn redact_text<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    if PATTERNS.is_match(&out) {
        out = Cow::Owned(PATTERNS.replace_all(&out, REDACTED).into_owned());
    }
    if BEARER.is_match(&out) {
        out = Cow::Owned(
            BEARER
                .replace_all(&out, format!("$1 {REDACTED}").as_str())
                .into_owned(),
        );
    }
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

/// [`Redactor::redact_json`] under one read of the registered `secrets`.
fn redact_value(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(redacted) = redact_text(text, secrets) {
                *text = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secrets)),
        Value::Object(map) => {
            // A key can be sender data too (a map keyed by user input); keys are rewritten only
            // when one holds a secret, which rebuilds the map (two keys that redact alike keep
            // the later value).
            if map
                .keys()
                .any(|key| matches!(redact_text(key, secrets), Cow::Owned(_)))
            {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, v)| (redact_text(&key, secrets).into_owned(), v))
                    .collect();
            }
            for (key, v) in map.iter_mut() {
                if SECRET_KEYS.is_match(key) && !v.is_null() {
                    *v = Value::String(REDACTED.to_owned());
                } else {
                    redact_value(v, secrets);
                }
            }
        }
        _ => {}
    }
}

/// The pipeline trace: a redacting, batching writer of `/logs` entries.
pub struct TraceLog {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    redactor: Redactor,
    buffer: Mutex<VecDeque<LogRecord>>,
    /// Rung when the buffer goes from empty to not empty.
    pending: Notify,
    /// Rung when the buffer reaches [`FLUSH_BATCH`].
    full: Notify,
    /// One flush at a time, so entries reach the database in the order they were recorded.
    flushing: tokio::sync::Mutex<()>,
    /// How many refused webhook deliveries each source may still write this second.
    pub(crate) refusals: Mutex<crate::pipeline::RefusalBudget>,
}

impl std::fmt::Debug for TraceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLog").finish_non_exhaustive()
    }
}

impl TraceLog {
    /// A trace writing to `store`, counting drops in `metrics`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            redactor: Redactor::default(),
            buffer: Mutex::new(VecDeque::new()),
            pending: Notify::new(),
            full: Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            refusals: Mutex::new(crate::pipeline::RefusalBudget::default()),
        }
    }

    /// The metrics the pipeline steps count in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Entries waiting for the next write.
    pub fn buffered(&self) -> usize {
        self.lock().len()
    }

    /// The redactor applied to every entry; register secrets with it.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Redacts `record` and queues it for the next write. Never blocks on the database.
    pub fn record(&self, record: LogRecord) {
        self.queue(record, false);
    }

    /// [`record`](Self::record) for the step that created a task: it goes before the task's
    /// other steps still buffered. Once a task is committed the dispatcher may claim and run it
    /// before the creating request records its step, and `/logs` must still show creation first.
    pub(crate) fn record_creation(&self, record: LogRecord) {
        self.queue(record, true);
    }

    fn queue(&self, record: LogRecord, before_task_steps: bool) {
        let record = self.redactor.redact_record(record);
        tracing::debug!(
            action = %record.action,
            outcome = %record.outcome,
            task = record.task_id,
            event = record.event_id,
            error = record.error.as_deref(),
            "pipeline step"
        );
        let len = {
            let mut buffer = self.lock();
            let first_step = match record.task_id {
                Some(task) if before_task_steps => {
                    buffer.iter().position(|r| r.task_id == Some(task))
                }
                _ => None,
            };
            match first_step {
                Some(at) => buffer.insert(at, record),
                None => buffer.push_back(record),
            }
            if buffer.len() > MAX_BUFFERED {
                buffer.pop_front();
                self.metrics.logs_dropped.inc();
            }
            buffer.len()
        };
        if len == 1 {
            self.pending.notify_one();
        }
        if len == FLUSH_BATCH {
            self.full.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LogRecord>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes everything buffered; no query when nothing is. On failure the entries stay
    /// buffered (in order) for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _turn = self.flushing.lock().await;
        let batch: Vec<LogRecord> = self.lock().drain(..).collect();
        if batch.is_empty() {
            return Ok(());
        }
        match self.store.append_logs(batch.clone()).await {
            Ok(()) => Ok(()),
            Err(err) => {
                let mut buffer = self.lock();
                for record in batch.into_iter().rev() {
                    buffer.push_front(record);
                }
                while buffer.len() > MAX_BUFFERED {
                    buffer.pop_front();
                    self.metrics.logs_dropped.inc();
                }
                Err(err)
            }
        }
    }

    /// Writes batches as entries arrive until `stop` resolves. The caller flushes once more
    /// after the work that records entries (the dispatcher's drain) has finished.
    pub(crate) async fn flush_loop(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = self.pending.notified() => {}
            }
            if self.lock().len() < FLUSH_BATCH {
                tokio::select! {
                    () = &mut stop => return,
                    () = self.full.notified() => {}
                    () = tokio::time::sleep(FLUSH_WINDOW) => {}
                }
            }
            if let Err(err) = self.flush().await {
                tracing::warn!(error = %err, "writing the pipeline trace failed; retrying in 1 s");
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            if !self.lock().is_empty() {
                // More arrived during the write (or it failed): go round without waiting.
                self.pending.notify_one();
            }
        }
    }
}

/// Deletes `/logs` entries (and cron fire records) older than `retention`, every
/// [`PRUNE_EVERY`], starting one period after startup. It sleeps between runs: no query until
/// the timer fires.
pub(crate) async fn prune_loop(
    store: Arc<dyn Store>,
    clock: Clock,
    retention: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let before = clock.now_ms().saturating_sub(retention_ms);
        match store.prune(before).await {
            Ok(pruned) => tracing::info!(
                logs = pruned.logs,
                cron_fires = pruned.cron_fires,
                "retention: old pipeline trace entries deleted"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "retention: pruning failed; next try in a day")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn platform_tokens_and_bearer_values_are_redacted() {
        let r = Redactor::default();
        let cases = [
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "gho_0123456789abcdefghijABCDEFGHIJ012345",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUv",
            "xoxp-1234567890-abcdef",
            "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "glpat-abcdefghij0123456789",
        ];
        for secret in cases {
            let text = format!("failed with {secret}, giving up");
            let out = r.redact(&text);
            assert!(!out.contains(secret), "{secret} leaked: {out}");
            assert_eq!(out, "failed with [redacted], giving up");
        }
        assert_eq!(
            r.redact("Authorization: Bearer abc.def-ghi"),
            "Authorization: Bearer [redacted]"
        );
        assert_eq!(r.redact("nothing secret here"), "nothing secret here");
        assert!(matches!(r.redact("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn configured_secrets_and_env_refs_are_redacted_longest_first() {
        let r = Redactor::default();
        r.add_secret("short");
        r.add_secret("s3cr3t-value");
        r.add_secret("s3cr3t-value-longer");
        assert_eq!(r.redact("a short word"), "a short word");
        assert_eq!(r.redact("x=s3cr3t-value-longer"), "x=[redacted]");
        assert_eq!(r.redact("x=s3cr3t-value;"), "x=[redacted];");
        let env = |name: &str| (name == "TOKEN").then(|| "env-secret-123".to_owned());
        r.add_refs(
            &json!({ "headers": ["k: ${env:TOKEN} ${env:OTHER}"] }),
            &env,
        );
        assert_eq!(r.redact("got env-secret-123"), "got [redacted]");
    }

    #[test]
    fn json_details_are_redacted_by_value_and_by_key() {
        let r = Redactor::default();
        let mut detail = json!({
            "headers": { "Authorization": "Basic dXNlcjpwYXNz", "x-request-id": "42" },
            "api_token": "anything",
            "note": "token ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "list": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        });
        r.redact_json(&mut detail);
        assert_eq!(
            detail,
            json!({
                "headers": { "Authorization": "[redacted]", "x-request-id": "42" },
                "api_token": "[redacted]",
                "note": "token [redacted]",
                "list": ["[redacted]"],
            })
        );
    }

    #[test]
    fn json_keys_holding_a_secret_are_redacted_and_clean_values_stay_as_they_are() {
        let r = Redactor::default();
        r.add_secret("k3y-s3cr3t-value");
        let mut value = json!({
            "by-k3y-s3cr3t-value": { "echo": "x k3y-s3cr3t-value y" },
            "plain": ["a", 1, null, { "n": true }],
        });
        r.redact_json(&mut value);
        assert_eq!(
            value,
            json!({
                "by-[redacted]": { "echo": "x [redacted] y" },
                "plain": ["a", 1, null, { "n": true }],
            })
        );
        let clean = json!({ "issue": { "title": "a bug", "labels": ["x"] }, "n": 5 });
        let mut same = clean.clone();
        r.redact_json(&mut same);
        assert_eq!(same, clean);
    }

    #[test]
    fn trace_ids_follow_the_event_else_the_task() {
        assert_eq!(event_trace_id(7), "event-7");
        let a = random_trace_id();
        assert!(a.starts_with("trace-") && a.len() == 22, "{a}");
        assert_ne!(a, random_trace_id());
    }
}
