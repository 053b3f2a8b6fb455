//! `mechanics-store`: the durable state of the coordinator — workers, sources, events, tasks and
//! the console output of their attempts, cron fires, the `/logs` pipeline trace, the shared token
//! buckets and the instances using the database — behind one [`Store`] trait, with all of its SQL, schema and migrations.
//! [`SqliteStore`] is the embedded backend (one server per file); [`PgStore`] lets several
//! servers share one PostgreSQL database. Both pass the same conformance suite
//! (`tests/it/conformance.rs`).
//!
//! This crate must not contain policy. It never decides whether or when to retry, never computes
//! a backoff, never reads the clock for a decision: every time (`now`, `next_run_at`, lease
//! expiry) is passed in by the caller as unix milliseconds, so the server can run on virtual
//! time. It enforces only integrity: uniqueness (delivery id per source, task per
//! (event, worker), idempotency key per worker, cron fire per (worker, time)), the task and event
//! lifecycles, and fencing of completions by attempt. It never prints.
//!
//! Why `rusqlite` rather than `sqlx` for SQLite: the store funnels every write through one writer
//! thread that commits whole batches (group commit, see [`SqliteStore`]), which needs a plain
//! blocking connection it owns, not a pool; `rusqlite` is that, with prepared-statement caching
//! and no async overhead per statement. `sqlx`'s one-API-for-both-databases would not remove the
//! per-dialect SQL (placeholders, `SKIP LOCKED`, `LISTEN`), so the PostgreSQL backend is a second
//! implementation of [`Store`] with its own client either way.

mod buckets;
mod columns;
mod error;
mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use mechanics_proto::api::{ApiScope, Instance};
use mechanics_proto::domain::{
    AttemptConsoleLine, ConsoleLine, Event, EventId, EventState, LogEntry, LogOutcome, LogRecord,
    NodeSpec, RemoteNode, Source, SourceSpec, Task, TaskAttempt, TaskId, TaskState, TaskTrigger,
    TranspiledModule, Worker, WorkerKind, WorkerSpec,
};
use serde_json::Value;

pub use buckets::{Take, TokenRate, Tokens};
pub use error::StoreError;
pub use postgres::{
    PG_SCHEMA_VERSION, PgStore, database_url_passwords, migrate_postgres_to, redact_database_url,
};
pub use sqlite::{SQLITE_SCHEMA_VERSION, SqliteStore, migrate_sqlite_to};

/// Result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The coordinator's durable state. Object safe: the server holds an `Arc<dyn Store>`.
///
/// Every method that takes `now` uses it only to stamp rows and to compare with stored times.
/// A method returns after its change is committed (invariant 1).
#[async_trait]
pub trait Store: Send + Sync {
    // ---- registry ----

    /// Adds or replaces the worker `spec.name` (validated here; the revision starts at 1 and
    /// grows by one per update). js workers need `module_source`; other kinds must not have one.
    /// `transpiled` is what runs when the module is not JavaScript (TypeScript): it goes with a
    /// `module_source`, and an update without one drops the previous one.
    async fn upsert_worker(
        &self,
        spec: WorkerSpec,
        module_source: Option<String>,
        transpiled: Option<TranspiledModule>,
        now: i64,
    ) -> StoreResult<Worker>;
    /// The worker named `name`.
    async fn get_worker(&self, name: &str) -> StoreResult<Option<Worker>>;
    /// Every worker, by name.
    async fn list_workers(&self) -> StoreResult<Vec<Worker>>;
    /// Deletes the worker (its tasks stay as history); `None` if there was none. A worker with
    /// unfinished (pending or dispatched) tasks is kept and [`StoreError::UnfinishedTasks`]
    /// returned, unless `cancel_unfinished`: then those tasks are canceled in the same write and
    /// returned (the caller withdraws and traces them as it does any cancel).
    async fn delete_worker(
        &self,
        name: &str,
        cancel_unfinished: bool,
        now: i64,
    ) -> StoreResult<Option<Vec<Task>>>;
    /// Pauses (`true`) or resumes worker `name` and moves the registry version, so every server
    /// sees it: [`claim_due`](Store::claim_due) and [`next_due`](Store::next_due) pass over the
    /// pending tasks of a paused worker, which stay pending until it is resumed. `None` if there
    /// is no such worker.
    async fn set_worker_paused(&self, name: &str, paused: bool) -> StoreResult<Option<Worker>>;
    /// Adds or replaces the source `spec.name` (validated here).
    async fn upsert_source(&self, spec: SourceSpec, now: i64) -> StoreResult<Source>;
    /// The source named `name`.
    async fn get_source(&self, name: &str) -> StoreResult<Option<Source>>;
    /// Every source, by name.
    async fn list_sources(&self) -> StoreResult<Vec<Source>>;
    /// Deletes the source (its events stay); false if there was none.
    async fn delete_source(&self, name: &str) -> StoreResult<bool>;
    /// Adds or replaces the remote executor node `spec.name` (validated here) and moves the
    /// registry version, so every coordinator on the database reloads its nodes.
    async fn upsert_node(&self, spec: NodeSpec, now: i64) -> StoreResult<RemoteNode>;
    /// Every remote executor node, by name.
    async fn list_nodes(&self) -> StoreResult<Vec<RemoteNode>>;
    /// Deletes the remote node `name` and moves the registry version; false if there was none.
    async fn delete_node(&self, name: &str) -> StoreResult<bool>;
    /// A number that grows whenever a worker or source changes, read without a query: it covers
    /// this process's own writes at once, and another process's writes once
    /// [`refresh_registry_version`](Store::refresh_registry_version) has seen them. A server
    /// compares it with the version of its cached registry.
    fn registry_version(&self) -> u64;
    /// Reads the stored registry version (one query) so that changes made by another process
    /// show in [`registry_version`](Store::registry_version); the server calls it on the paths
    /// that already touch the database (a webhook, an API call), never from an idle loop.
    async fn refresh_registry_version(&self) -> StoreResult<u64>;

    // ---- events ----

    /// Stores an event in state `received`, unless `(source, delivery_id)` exists, or
    /// `event.body_dedup` is given and an event of the same source with the same body hash was
    /// received at or after its `since_ms`: then that stored event (the earliest such one) is
    /// returned with `created: false`. The check and the insert are one write, so two concurrent
    /// deliveries of one body cannot both be created. A duplicate whose `delivery_id` differs
    /// from `event.delivery_id` was found by its body.
    async fn insert_event(&self, event: NewEvent, now: i64) -> StoreResult<Inserted<Event>>;
    /// The event with this id.
    async fn get_event(&self, id: EventId) -> StoreResult<Option<Event>>;
    /// Moves an event along its lifecycle ([`EventState::can_become`]); other moves are
    /// [`StoreError::InvalidTransition`]. `write_back_failed` counts one more write-back try.
    async fn update_event(&self, id: EventId, update: EventUpdate, now: i64) -> StoreResult<Event>;
    /// Events matching `filter`, newest first.
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Page<Event>>;

    // ---- tasks ----

    /// Creates a pending task, unless one exists for the same `(event_id, worker)` or the same
    /// `(worker, idempotency_key)`: then that task is returned with `created: false`.
    async fn create_task(&self, task: NewTask, now: i64) -> StoreResult<Inserted<Task>>;
    /// The task with this id.
    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>>;
    /// Claims up to `limit` pending tasks due at `now` (oldest `next_run_at` first), none of a
    /// paused worker: each becomes
    /// `dispatched` with `attempt` and `tries` + 1 and a lease until `lease_until`. The events of
    /// claimed tasks that are `matched` become `dispatched` in the same write (an event still
    /// `received`, whose matching has not finished, is left to its matcher).
    async fn claim_due(&self, now: i64, lease_until: i64, limit: u32) -> StoreResult<Vec<Task>>;
    /// `dispatched → completed` with the result, if `attempt` is the current claim; otherwise
    /// [`StoreError::StaleAttempt`] and nothing changes (fencing).
    async fn complete_task(
        &self,
        id: TaskId,
        attempt: u32,
        result: Value,
        now: i64,
    ) -> StoreResult<Task>;
    /// `dispatched → failed` or `→ dead` (`end`), fenced like [`complete_task`](Store::complete_task).
    async fn fail_task(
        &self,
        id: TaskId,
        attempt: u32,
        end: TaskState,
        error: &str,
        now: i64,
    ) -> StoreResult<Task>;
    /// `dispatched → pending` at `next_run_at` after a failed attempt (a retry the server
    /// decided on), fenced; the try counts.
    async fn reschedule_task(
        &self,
        id: TaskId,
        attempt: u32,
        next_run_at: i64,
        error: &str,
        now: i64,
    ) -> StoreResult<Task>;
    /// `dispatched → pending` at `next_run_at` without running (no rate-limit token yet, a busy
    /// executor, a stopping server), fenced; the try is given back. `attempt` stays, so this
    /// claim stays fenced out. With [`Release::OnReservedToken`] the task's `reserved_slot` is
    /// `next_run_at`; every other move out of `dispatched` clears it.
    async fn release_task(
        &self,
        id: TaskId,
        attempt: u32,
        next_run_at: i64,
        release: Release,
        now: i64,
    ) -> StoreResult<Task>;
    /// `dead | failed → pending` at `next_run_at` with `tries` back to 0 (`mechanics task retry`).
    async fn retry_task(&self, id: TaskId, next_run_at: i64, now: i64) -> StoreResult<Task>;
    /// `pending | dispatched → canceled`; a running attempt's later completion is then rejected.
    async fn cancel_task(&self, id: TaskId, now: i64) -> StoreResult<Task>;
    /// Tasks matching `filter`, newest first.
    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Page<Task>>;
    /// Number of tasks in each state (every state present), of one worker or of all.
    async fn task_counts(&self, worker: Option<&str>) -> StoreResult<BTreeMap<TaskState, u64>>;
    /// Number of tasks in each state (every state present) of each worker that has tasks, by
    /// worker name, in one query: a page listing every worker reads this, not one
    /// [`Store::task_counts`] per worker.
    async fn task_counts_per_worker(
        &self,
    ) -> StoreResult<BTreeMap<String, BTreeMap<TaskState, u64>>>;
    /// The tasks that ended (completed, or failed or dead) at or after `since`, counted per
    /// `bucket_ms` by the time they last changed, oldest bucket first; buckets without an ended
    /// task are left out. A bucket starts at a multiple of `bucket_ms` (unix ms); `bucket_ms`
    /// must be positive.
    async fn task_activity(&self, since: i64, bucket_ms: i64) -> StoreResult<Vec<ActivityBucket>>;
    /// The workers with tasks that failed or went dead at or after `since`, with how many, most
    /// first (then by name), at most `limit`.
    async fn failing_workers(&self, since: i64, limit: u32) -> StoreResult<Vec<WorkerFailures>>;
    /// When the loops next have something to do, so they can sleep until then (a paused worker's
    /// tasks are not due).
    async fn next_due(&self) -> StoreResult<NextDue>;

    // ---- console output of attempts ----

    /// Stores what attempt `attempt` of task `task` wrote with `console` (redacted by the
    /// caller), stamped `now`. Recording the same attempt again replaces its lines, so a write
    /// retried after a failure that hid its commit keeps one copy. Empty `lines` store nothing.
    /// [`StoreError::NotFound`] if there is no such task; attempts start at 1. Not fenced: a
    /// late answer's lines are still what that attempt wrote.
    async fn record_console(
        &self,
        task: TaskId,
        attempt: u32,
        lines: &[ConsoleLine],
        now: i64,
    ) -> StoreResult<()>;
    /// Every console line of the attempts of task `task`, by attempt and then in the order
    /// written; empty when none wrote any (or there is no such task).
    async fn task_console(&self, task: TaskId) -> StoreResult<Vec<AttemptConsoleLine>>;

    // ---- attempts ----

    /// Stores what came of attempt `attempt.claim` of task `task` (its error redacted by the
    /// caller). Recording the same claim again replaces it, so a write retried after a failure
    /// that hid its commit keeps one row. [`StoreError::NotFound`] if there is no such task;
    /// claims start at 1. Not fenced: a late answer still ran.
    async fn record_attempt(&self, task: TaskId, attempt: &TaskAttempt) -> StoreResult<()>;
    /// Every recorded attempt of task `task`, by claim; empty when none ran (or there is no such
    /// task).
    async fn task_attempts(&self, task: TaskId) -> StoreResult<Vec<TaskAttempt>>;

    // ---- recovery ----

    /// Dispatched tasks whose lease expired at `now` go back to pending, due at `now`. Safe with
    /// many servers on one database: a live claim has an unexpired lease.
    async fn requeue_expired_leases(&self, now: i64) -> StoreResult<Vec<Task>>;
    /// Every dispatched task goes back to pending, due at `now`. Only for the startup of a
    /// server that is the only one using the database (SQLite): no claim can be alive.
    async fn requeue_all_dispatched(&self, now: i64) -> StoreResult<Vec<Task>>;

    // ---- cron ----

    /// Records that `worker`'s schedule fired for `fire_time` and creates its task, atomically;
    /// `None` if that fire was already recorded (by this or another server).
    async fn record_cron_fire(
        &self,
        worker: &str,
        fire_time: i64,
        payload: Value,
        now: i64,
    ) -> StoreResult<Option<Task>>;
    /// Records that `worker`'s fire at `fire_time` was skipped (the worker is paused), on the same
    /// claim as [`record_cron_fire`](Store::record_cron_fire) but with no task: `true` for the
    /// one caller that recorded it (which logs the skip), `false` if that fire time was already
    /// recorded, fired or skipped, by this or another server.
    async fn record_cron_skip(&self, worker: &str, fire_time: i64) -> StoreResult<bool>;
    /// The latest recorded fire time of `worker`'s schedule, if any is still kept (retention
    /// prunes old records): the scheduler's catch-up starts after it.
    async fn last_cron_fire(&self, worker: &str) -> StoreResult<Option<i64>>;

    // ---- /logs ----

    /// Appends pipeline entries (already redacted by the caller).
    async fn append_logs(&self, entries: Vec<LogRecord>) -> StoreResult<()>;
    /// Entries matching `query`, newest first.
    async fn query_logs(&self, query: &LogQuery) -> StoreResult<Page<LogEntry>>;
    /// Deletes `/logs` entries and cron fire records older than `before` (retention).
    async fn prune(&self, before: i64) -> StoreResult<Pruned>;

    // ---- several servers on one database ----

    /// Whether other servers may use this database at the same time (PostgreSQL). When false
    /// (SQLite: one server per file) startup recovery may take back every claim, and no
    /// heartbeat or poll is needed: every change is this process's own.
    fn shared(&self) -> bool;
    /// Rung when another server made work due or changed the registry (PostgreSQL `NOTIFY`;
    /// the registry version has moved by then). Never rung on an unshared store. A hint can be
    /// lost, so a shared server also polls [`next_due`](Store::next_due), which refreshes the
    /// registry version too.
    fn remote_changes(&self) -> Arc<tokio::sync::Notify>;
    /// Takes tokens of the bucket named `bucket` (see [`buckets`](crate::buckets)) at `now`,
    /// atomically for every server on the database. A bucket whose `rate` changed starts full.
    async fn take_tokens(
        &self,
        bucket: &str,
        rate: TokenRate,
        take: Take,
        now: i64,
    ) -> StoreResult<Tokens>;
    /// Counts event `event` of `actor` against `worker`'s per-actor limit of `limit` events per
    /// `window_ms`, atomically for every server on the database: `true` (and recorded) when
    /// fewer than `limit` events of that actor were admitted in the window before `now`. An
    /// event admitted before is admitted again without counting twice (an event matched again
    /// after a crash).
    async fn admit_actor(
        &self,
        worker: &str,
        actor: &str,
        event: EventId,
        limit: u32,
        window_ms: i64,
        now: i64,
    ) -> StoreResult<bool>;
    /// Claims up to `limit` `write_back_failed` events due at `now` for one server's retry:
    /// their `next_write_back_at` moves to `until`, so no other server retries them meanwhile,
    /// and a server that dies holding them leaves them due again at `until`.
    async fn claim_write_backs(&self, now: i64, until: i64, limit: u32) -> StoreResult<Vec<Event>>;
    /// Claims event `id` for its first write-back: its `next_write_back_at` moves to `until` if
    /// it is `matched` or `dispatched` and no claim on it is running (none, or one that ran out
    /// by `now`). `None` if the event is elsewhere in its lifecycle or another server holds it:
    /// two servers finishing an event's last tasks at once post its reply once.
    async fn claim_write_back(
        &self,
        id: EventId,
        now: i64,
        until: i64,
    ) -> StoreResult<Option<Event>>;
    /// Moves the lease of each `(task, attempt)` still dispatched under that attempt to `until`
    /// (a server renewing the claims it is working on); returns how many were renewed. A claim
    /// that was taken back meanwhile is left alone.
    async fn renew_leases(&self, claims: &[(TaskId, u32)], until: i64) -> StoreResult<u64>;
    /// Records that `instance` is alive at `now` (its `last_seen`).
    async fn heartbeat(&self, instance: &Instance, now: i64) -> StoreResult<()>;
    /// The instances whose last heartbeat was at or after `seen_since`, by id.
    async fn list_instances(&self, seen_since: i64) -> StoreResult<Vec<Instance>>;
    /// Forgets the instance `id` (a clean shutdown).
    async fn remove_instance(&self, id: &str) -> StoreResult<()>;

    // ---- API keys ----

    /// Stores a new API key (its SHA-256 only, never the secret) and moves the registry version,
    /// so every server's cache of keys reloads; [`StoreError::AlreadyExists`] if the name is
    /// taken (nothing changes).
    async fn create_api_key(&self, key: NewApiKey, now: i64) -> StoreResult<ApiKey>;
    /// Every API key, by name, with its hash (the server's cache compares against them).
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Deletes (revokes) the API key `name` and moves the registry version; false if there was
    /// none.
    async fn delete_api_key(&self, name: &str) -> StoreResult<bool>;
    /// Records that the key `name` was used at `now` (never moving `last_used_at` back). Does
    /// not move the registry version: a use is not a change of who may do what.
    async fn touch_api_key(&self, name: &str, now: i64) -> StoreResult<()>;

    // ---- counters (no query) ----

    /// Store operations that ran SQL since open: an idle server must leave it unchanged
    /// (invariant 6).
    fn queries_executed(&self) -> u64;
    /// Transactions committed by this store's writer since open; with group commit, far fewer
    /// than the writes under concurrency.
    fn commits(&self) -> u64;
}

/// The rules every backend applies to a worker before storing it: a valid spec, a module exactly
/// for js workers, and transpiled code only with a module. Returns the transpiled module's
/// source map as the JSON text a row holds.
pub(crate) fn check_worker(
    spec: &WorkerSpec,
    module_source: Option<&str>,
    transpiled: Option<&TranspiledModule>,
) -> StoreResult<Option<String>> {
    spec.validate()
        .map_err(|err| StoreError::InvalidInput(format!("worker spec: {err}")))?;
    if transpiled.is_some() && module_source.is_none() {
        return Err(StoreError::InvalidInput(
            "transpiled: only a worker with a module has transpiled code".into(),
        ));
    }
    match (spec.kind, module_source) {
        (WorkerKind::Js, None) => Err(StoreError::InvalidInput(
            "module_source: required for js workers".into(),
        )),
        (WorkerKind::Http | WorkerKind::Process | WorkerKind::Container, Some(_)) => Err(
            StoreError::InvalidInput("module_source: only js workers have a module".into()),
        ),
        _ => Ok(transpiled.map(|transpiled| transpiled.source_map.to_string())),
    }
}

/// The rules every backend applies to an attempt's console output before storing it: a real
/// attempt (claims count from 1), and the lines as the JSON array a row holds (serialized on the
/// caller's thread); `None` when there is nothing to store.
pub(crate) fn console_json(attempt: u32, lines: &[ConsoleLine]) -> StoreResult<Option<String>> {
    if attempt == 0 {
        return Err(StoreError::InvalidInput(
            "attempt: console output belongs to an attempt, which counts from 1".into(),
        ));
    }
    if lines.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(lines)
        .map(Some)
        .map_err(|err| StoreError::InvalidInput(err.to_string()))
}

/// The rules every backend applies to an attempt before storing it: a real claim (from 1) and
/// an order of times that can have happened.
pub(crate) fn check_attempt(attempt: &TaskAttempt) -> StoreResult<()> {
    if attempt.claim == 0 {
        return Err(StoreError::InvalidInput(
            "claim: an attempt runs under a claim, which counts from 1".into(),
        ));
    }
    if attempt.ended_at < attempt.started_at {
        return Err(StoreError::InvalidInput(
            "ended_at: an attempt cannot end before it started".into(),
        ));
    }
    Ok(())
}

/// The stored lines of `attempt` (a row's JSON array) as the API shows them.
pub(crate) fn attempt_lines(
    attempt: u32,
    lines: Vec<ConsoleLine>,
) -> impl Iterator<Item = AttemptConsoleLine> {
    lines
        .into_iter()
        .map(move |line| AttemptConsoleLine { attempt, line })
}

/// [`Store::fail_task`] ends a task as failed or dead, nothing else.
pub(crate) fn check_fail_end(end: TaskState) -> StoreResult<()> {
    if matches!(end, TaskState::Failed | TaskState::Dead) {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "fail_task ends a task as failed or dead, not {end}"
        )))
    }
}

/// The rules every backend applies to a source before storing it.
pub(crate) fn check_source(spec: &SourceSpec) -> StoreResult<()> {
    spec.validate()
        .map_err(|err| StoreError::InvalidInput(format!("source spec: {err}")))
}

/// The rules every backend applies to a remote node before storing it.
pub(crate) fn check_node(spec: &NodeSpec) -> StoreResult<()> {
    spec.validate()
        .map_err(|err| StoreError::InvalidInput(format!("node spec: {err}")))
}

/// Longest API key name.
pub const MAX_API_KEY_NAME: usize = 64;

/// The rules for a new API key: a name of 1 to [`MAX_API_KEY_NAME`] letters, digits, `.`, `_`
/// or `-` (it is shown in `/logs` and on a command line), a 32-byte hash.
pub(crate) fn check_api_key(key: &NewApiKey) -> StoreResult<()> {
    let name_ok = !key.name.is_empty()
        && key.name.len() <= MAX_API_KEY_NAME
        && key
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err(StoreError::InvalidInput(format!(
            "API key name {:?}: use 1 to {MAX_API_KEY_NAME} letters, digits, '.', '_' or '-'",
            key.name.chars().take(100).collect::<String>()
        )));
    }
    if key.hash.len() != 32 {
        return Err(StoreError::InvalidInput(
            "an API key's hash is a SHA-256 (32 bytes)".to_owned(),
        ));
    }
    Ok(())
}

/// A scope as a row holds it; another text is a damaged row (the schema's check forbids it).
pub(crate) fn stored_scope(text: &str) -> StoreResult<ApiScope> {
    text.parse().map_err(|message| StoreError::Database {
        context: "reading an API key".to_owned(),
        message,
    })
}

/// A new API key, as the store receives it: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub scope: ApiScope,
    /// SHA-256 of the secret (32 bytes).
    pub hash: Vec<u8>,
    /// When it stops working (unix ms); none: never.
    pub expires_at: Option<i64>,
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub scope: ApiScope,
    /// SHA-256 of the secret (32 bytes).
    pub hash: Vec<u8>,
    /// When it was created (unix ms).
    pub created_at: i64,
    /// When it was last recorded as used (unix ms).
    pub last_used_at: Option<i64>,
    /// When it stops working (unix ms); none: never.
    pub expires_at: Option<i64>,
}

/// How a claimed task goes back to `pending` without running ([`Store::release_task`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Nothing reserved for it (a busy executor, a stopping server).
    Unreserved,
    /// The worker's bucket reserved a token for `next_run_at`: the next claim runs on it.
    OnReservedToken,
}

/// A new webhook (or synthetic) event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The source's name.
    pub source: String,
    /// The platform's delivery id.
    pub delivery_id: String,
    /// The event type.
    pub event_type: String,
    /// The delivered JSON.
    pub payload: Value,
    /// Also deduplicate on the body within a time window; `None` deduplicates on the delivery
    /// id only. Which sources need it is the caller's decision.
    pub body_dedup: Option<BodyDedup>,
}

/// Deduplication of an event on its body, for senders whose delivery id is not authenticated:
/// a replayed body under a new delivery id is still a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDedup {
    /// A hash of the exact body bytes (the server uses SHA-256). Stored with the event, never
    /// shown in [`Event`].
    pub hash: [u8; 32],
    /// Only events received at or after this time (unix ms) count as the same delivery.
    pub since_ms: i64,
}

/// A state change of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventUpdate {
    /// The new state.
    pub state: EventState,
    /// The error to record; `None` clears it.
    pub error: Option<String>,
    /// When the write-back loop should try again (with `write_back_failed`).
    pub next_write_back_at: Option<i64>,
}

/// A new task.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The worker's name.
    pub worker: String,
    /// The event it is for, if any.
    pub event_id: Option<EventId>,
    /// The API submitter's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The worker's input.
    pub payload: Value,
    /// When it may first be claimed.
    pub next_run_at: i64,
}

impl NewTask {
    /// What makes it, for [`Store::create_task`]: an event's task is a webhook's, any other
    /// an API submission's ([`Store::record_cron_fire`] makes cron tasks).
    pub fn trigger(&self) -> TaskTrigger {
        if self.event_id.is_some() {
            TaskTrigger::Webhook
        } else {
            TaskTrigger::Api
        }
    }
}

/// The result of an insert that deduplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Inserted<T> {
    /// The stored row: the new one, or the one that already existed.
    pub record: T,
    /// Whether this call created it.
    pub created: bool,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// Default page size when a filter's `limit` is `None`.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size; larger limits are reduced to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Which events to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only this source.
    pub source: Option<String>,
    /// Only this state.
    pub state: Option<EventState>,
    /// Only events of this type (`issues.opened`).
    pub event_type: Option<String>,
    /// Only `write_back_failed` events due for another try at this time.
    pub write_back_due_by: Option<i64>,
    /// Page size ([`DEFAULT_PAGE_SIZE`] when `None`).
    pub limit: Option<u32>,
    /// Only ids below this (from [`Page::next_cursor`]).
    pub cursor: Option<i64>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this worker.
    pub worker: Option<String>,
    /// Only tasks of this event.
    pub event_id: Option<EventId>,
    /// Only tasks created at or after this time (unix ms).
    pub created_since: Option<i64>,
    /// Page size ([`DEFAULT_PAGE_SIZE`] when `None`).
    pub limit: Option<u32>,
    /// Only ids below this (from [`Page::next_cursor`]).
    pub cursor: Option<i64>,
}

/// The tasks that ended in one time bucket ([`Store::task_activity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityBucket {
    /// Its start (unix ms, a multiple of the bucket's length).
    pub start: i64,
    /// Tasks that completed.
    pub completed: u64,
    /// Tasks that failed or went dead.
    pub failed: u64,
}

/// A worker's recent failures ([`Store::failing_workers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailures {
    /// The worker's name.
    pub worker: String,
    /// Its tasks that failed or went dead in the window.
    pub failed: u64,
}

/// Folds `(worker, state, count)` rows into every worker's counts, every state present.
fn counts_per_worker(
    rows: impl IntoIterator<Item = (String, TaskState, u64)>,
) -> BTreeMap<String, BTreeMap<TaskState, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<TaskState, u64>> = BTreeMap::new();
    for (worker, state, count) in rows {
        counts
            .entry(worker)
            .or_insert_with(|| TaskState::ALL.iter().map(|s| (*s, 0)).collect())
            .insert(state, count);
    }
    counts
}

/// `bucket_ms` of [`Store::task_activity`], checked.
pub(crate) fn check_bucket(bucket_ms: i64) -> StoreResult<()> {
    if bucket_ms > 0 {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "bucket_ms: a bucket lasts at least 1 ms, not {bucket_ms}"
        )))
    }
}

/// Which `/logs` entries to return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    /// Only entries of this event.
    pub event_id: Option<EventId>,
    /// Only entries of this task.
    pub task_id: Option<TaskId>,
    /// Only entries of this worker.
    pub worker: Option<String>,
    /// Only this pipeline step.
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<LogOutcome>,
    /// Only entries at or after this time (unix ms).
    pub since: Option<i64>,
    /// Only this trace.
    pub trace_id: Option<String>,
    /// Page size ([`DEFAULT_PAGE_SIZE`] when `None`).
    pub limit: Option<u32>,
    /// Only ids below this (from [`Page::next_cursor`]).
    pub cursor: Option<i64>,
}

/// The earliest times at which the loops have work (unix ms), `None` where there is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextDue {
    /// Earliest `next_run_at` of a pending task.
    pub task_run_at: Option<i64>,
    /// Earliest lease expiry of a dispatched task.
    pub lease_expires_at: Option<i64>,
    /// Earliest `next_write_back_at` of a `write_back_failed` event.
    pub write_back_at: Option<i64>,
}

impl NextDue {
    /// The earliest of the three.
    pub fn earliest(&self) -> Option<i64> {
        [self.task_run_at, self.lease_expires_at, self.write_back_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// What [`Store::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// `/logs` entries.
    pub logs: u64,
    /// Cron fire records.
    pub cron_fires: u64,
}
