//! The SQLite backend.

mod ops;
mod rows;
mod schema;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mechanics_proto::domain::{
    AttemptConsoleLine, ConsoleLine, Event, EventId, LogEntry, LogRecord, NodeSpec, RemoteNode,
    Source, SourceSpec, Task, TaskAttempt, TaskId, TaskState, TranspiledModule, Worker, WorkerSpec,
};
use rusqlite::{Connection, ErrorCode};
use serde_json::Value;

use crate::Release;
use crate::buckets::MemoryBuckets;
use crate::{
    ActivityBucket, EventFilter, EventUpdate, Inserted, LogQuery, NewEvent, NewTask, NextDue, Page,
    Pruned, Store, StoreError, StoreResult, Take, TaskFilter, TokenRate, Tokens, WorkerFailures,
};
use mechanics_proto::api::Instance;
use writer::Writer;

/// How long a statement waits for a lock held by another connection (another process, such as
/// the CLI) before failing with [`StoreError::Busy`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle reader connections kept open for the next read.
const IDLE_READERS: usize = 4;

/// The embedded store: one SQLite file in WAL mode (`synchronous=NORMAL`, 5 s busy timeout,
/// foreign keys on), migrated forward on open.
///
/// Writes go to one writer thread that commits them in batches (group commit: many concurrent
/// writes, one transaction, one WAL append); a write returns only after its batch committed.
/// Reads run on separate connections on tokio's blocking pool and never wait for the writer
/// (WAL readers see the last committed state). Methods must be called inside a tokio runtime.
///
/// Durability: with `synchronous=NORMAL` in WAL mode a committed write survives a crash of the
/// process at any point; after a power loss or OS crash the last commits before it may be lost
/// (the database stays consistent). DESIGN §4 chose this for throughput.
pub struct SqliteStore {
    path: String,
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    queries: AtomicU64,
    registry_version: AtomicU64,
    /// The token buckets: no other server uses the file, so they live in memory and cost no
    /// query.
    buckets: Mutex<MemoryBuckets>,
    /// This process's own heartbeat, the only instance a file has.
    instances: Mutex<BTreeMap<String, Instance>>,
    /// Never rung: no other server changes the file.
    remote_changes: Arc<tokio::sync::Notify>,
}

/// The schema version this build of the SQLite backend writes.
pub const SQLITE_SCHEMA_VERSION: i64 = schema::LATEST_VERSION;

/// Creates or migrates the SQLite database at `path` to schema `version` exactly (at most
/// [`SQLITE_SCHEMA_VERSION`]), without opening a store: migration tests use it to build
/// databases as every earlier release left them.
pub fn migrate_sqlite_to(path: impl AsRef<Path>, version: i64) -> StoreResult<()> {
    let path = path.as_ref();
    let display = path.display().to_string();
    let mut conn = connect(path, &display)?;
    schema::migrate(&mut conn, &display, version)
}

impl SqliteStore {
    /// Opens (creating if needed, with its directory) the database at `path` and migrates it to
    /// [`SQLITE_SCHEMA_VERSION`]. Blocking: call it at startup. A database from a newer build is
    /// refused with [`StoreError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref();
        let display = path.display().to_string();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| StoreError::Database {
                context: format!("creating the directory of {display}"),
                message: err.to_string(),
            })?;
        }
        let mut conn = connect(path, &display)?;
        schema::migrate(&mut conn, &display, schema::LATEST_VERSION)?;
        let registry_version = ops::registry_version(&conn)?;
        let writer = Writer::start(conn).map_err(|err| StoreError::Database {
            context: "starting the writer thread".into(),
            message: err.to_string(),
        })?;
        Ok(Self {
            path: display,
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            queries: AtomicU64::new(0),
            registry_version: AtomicU64::new(registry_version),
            buckets: Mutex::default(),
            instances: Mutex::default(),
            remote_changes: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `work` in a write batch (see [`writer`]).
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.writer.write(work).await
    }

    /// Runs `work` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let idle = self.readers.lock().expect("reader pool lock").pop();
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let conn = match idle {
                Some(conn) => conn,
                None => {
                    let conn = connect(Path::new(&path), &path)?;
                    conn.pragma_update(None, "query_only", true)
                        .map_err(db_err("opening a reader"))?;
                    conn
                }
            };
            let result = work(&conn);
            let mut idle = readers.lock().expect("reader pool lock");
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }

    fn saw_registry_version(&self, version: u64) {
        self.registry_version.fetch_max(version, Ordering::Relaxed);
    }
}

/// Opens a connection with the store's pragmas.
fn connect(path: &Path, display: &str) -> StoreResult<Connection> {
    let context = format!("opening {display}");
    let conn = Connection::open(path).map_err(db_err(&context))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err(&context))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(db_err(&context))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database {
            context,
            message: format!("could not switch to WAL journaling (the database uses {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .map_err(db_err(&context))?;
    Ok(conn)
}

/// Maps a SQLite error to [`StoreError`], telling a lock held past the busy timeout (transient)
/// from everything else.
pub(crate) fn db_err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |err| {
        let busy = matches!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        );
        let (context, message) = (context.to_owned(), err.to_string());
        if busy {
            StoreError::Busy { context, message }
        } else {
            StoreError::Database { context, message }
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|err| StoreError::InvalidInput(err.to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    async fn upsert_worker(
        &self,
        spec: WorkerSpec,
        module_source: Option<String>,
        transpiled: Option<TranspiledModule>,
        now: i64,
    ) -> StoreResult<Worker> {
        let source_map_json =
            crate::check_worker(&spec, module_source.as_deref(), transpiled.as_ref())?;
        let spec_json = to_json(&spec)?;
        let (worker, version) = self
            .write(move |conn| {
                let row = ops::WorkerRow {
                    name: &spec.name,
                    spec_json: &spec_json,
                    module_source: module_source.as_deref(),
                    module_js: transpiled.as_ref().map(|t| t.javascript.as_str()),
                    source_map_json: source_map_json.as_deref(),
                };
                ops::upsert_worker(conn, &row, now)
            })
            .await?;
        self.saw_registry_version(version);
        Ok(worker)
    }

    async fn get_worker(&self, name: &str) -> StoreResult<Option<Worker>> {
        let name = name.to_owned();
        self.read(move |conn| ops::get_worker(conn, &name)).await
    }

    async fn list_workers(&self) -> StoreResult<Vec<Worker>> {
        self.read(ops::list_workers).await
    }

    async fn delete_worker(
        &self,
        name: &str,
        cancel_unfinished: bool,
        now: i64,
    ) -> StoreResult<Option<Vec<Task>>> {
        let name = name.to_owned();
        let deleted = self
            .write(move |conn| ops::delete_worker(conn, &name, cancel_unfinished, now))
            .await?;
        Ok(deleted.map(|(canceled, version)| {
            self.saw_registry_version(version);
            canceled
        }))
    }

    async fn set_worker_paused(&self, name: &str, paused: bool) -> StoreResult<Option<Worker>> {
        let name = name.to_owned();
        let changed = self
            .write(move |conn| ops::set_worker_paused(conn, &name, paused))
            .await?;
        Ok(changed.map(|(worker, version)| {
            self.saw_registry_version(version);
            worker
        }))
    }

    async fn upsert_source(&self, spec: SourceSpec, now: i64) -> StoreResult<Source> {
        crate::check_source(&spec)?;
        let spec_json = to_json(&spec)?;
        let (source, version) = self
            .write(move |conn| ops::upsert_source(conn, &spec.name, &spec_json, now))
            .await?;
        self.saw_registry_version(version);
        Ok(source)
    }

    async fn get_source(&self, name: &str) -> StoreResult<Option<Source>> {
        let name = name.to_owned();
        self.read(move |conn| ops::get_source(conn, &name)).await
    }

    async fn list_sources(&self) -> StoreResult<Vec<Source>> {
        self.read(ops::list_sources).await
    }

    async fn delete_source(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        let version = self
            .write(move |conn| {
                ops::delete_named(conn, "DELETE FROM sources WHERE name = ?1", &name)
            })
            .await?;
        version.inspect(|v| self.saw_registry_version(*v));
        Ok(version.is_some())
    }

    async fn upsert_node(&self, spec: NodeSpec, now: i64) -> StoreResult<RemoteNode> {
        crate::check_node(&spec)?;
        let spec_json = to_json(&spec)?;
        let (node, version) = self
            .write(move |conn| ops::upsert_node(conn, &spec.name, &spec_json, now))
            .await?;
        self.saw_registry_version(version);
        Ok(node)
    }

    async fn list_nodes(&self) -> StoreResult<Vec<RemoteNode>> {
        self.read(ops::list_nodes).await
    }

    async fn delete_node(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        let version = self
            .write(move |conn| {
                ops::delete_named(conn, "DELETE FROM remote_nodes WHERE name = ?1", &name)
            })
            .await?;
        version.inspect(|v| self.saw_registry_version(*v));
        Ok(version.is_some())
    }

    async fn create_api_key(&self, key: crate::NewApiKey, now: i64) -> StoreResult<crate::ApiKey> {
        crate::check_api_key(&key)?;
        let name = key.name.clone();
        let created = self
            .write(move |conn| ops::create_api_key(conn, &key, now))
            .await?;
        let Some((stored, version)) = created else {
            return Err(StoreError::AlreadyExists {
                what: "API key",
                key: format!("{name:?}"),
            });
        };
        self.saw_registry_version(version);
        Ok(stored)
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<crate::ApiKey>> {
        self.read(ops::list_api_keys).await
    }

    async fn delete_api_key(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        let version = self
            .write(move |conn| {
                ops::delete_named(conn, "DELETE FROM api_keys WHERE name = ?1", &name)
            })
            .await?;
        version.inspect(|v| self.saw_registry_version(*v));
        Ok(version.is_some())
    }

    async fn touch_api_key(&self, name: &str, now: i64) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |conn| ops::touch_api_key(conn, &name, now))
            .await
    }

    fn registry_version(&self) -> u64 {
        self.registry_version.load(Ordering::Relaxed)
    }

    async fn refresh_registry_version(&self) -> StoreResult<u64> {
        let version = self.read(ops::registry_version).await?;
        self.saw_registry_version(version);
        Ok(self.registry_version())
    }

    async fn insert_event(&self, event: NewEvent, now: i64) -> StoreResult<Inserted<Event>> {
        // Serialize on the caller's thread: the writer thread is the bottleneck to protect.
        let payload = to_json(&event.payload)?;
        self.write(move |conn| ops::insert_event(conn, &event, &payload, now))
            .await
    }

    async fn get_event(&self, id: EventId) -> StoreResult<Option<Event>> {
        self.read(move |conn| ops::get_event(conn, id)).await
    }

    async fn update_event(&self, id: EventId, update: EventUpdate, now: i64) -> StoreResult<Event> {
        self.write(move |conn| ops::update_event(conn, id, &update, now))
            .await
    }

    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Page<Event>> {
        let filter = filter.clone();
        self.read(move |conn| ops::list_events(conn, &filter)).await
    }

    async fn create_task(&self, task: NewTask, now: i64) -> StoreResult<Inserted<Task>> {
        let payload = to_json(&task.payload)?;
        self.write(move |conn| ops::create_task(conn, &task, &payload, task.trigger(), now))
            .await
    }

    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>> {
        self.read(move |conn| ops::get_task(conn, id)).await
    }

    async fn claim_due(&self, now: i64, lease_until: i64, limit: u32) -> StoreResult<Vec<Task>> {
        self.write(move |conn| ops::claim_due(conn, now, lease_until, limit))
            .await
    }

    async fn complete_task(
        &self,
        id: TaskId,
        attempt: u32,
        result: Value,
        now: i64,
    ) -> StoreResult<Task> {
        let result = to_json(&result)?;
        self.write(move |conn| {
            ops::fenced(
                conn,
                ops::COMPLETE,
                id,
                attempt,
                &[&id, &attempt, &now, &result],
            )
        })
        .await
    }

    async fn fail_task(
        &self,
        id: TaskId,
        attempt: u32,
        end: TaskState,
        error: &str,
        now: i64,
    ) -> StoreResult<Task> {
        crate::check_fail_end(end)?;
        let error = error.to_owned();
        self.write(move |conn| {
            ops::fenced(
                conn,
                ops::FAIL,
                id,
                attempt,
                &[&id, &attempt, &now, &end.as_str(), &error],
            )
        })
        .await
    }

    async fn reschedule_task(
        &self,
        id: TaskId,
        attempt: u32,
        next_run_at: i64,
        error: &str,
        now: i64,
    ) -> StoreResult<Task> {
        let error = error.to_owned();
        self.write(move |conn| {
            ops::fenced(
                conn,
                ops::RESCHEDULE,
                id,
                attempt,
                &[&id, &attempt, &now, &next_run_at, &error],
            )
        })
        .await
    }

    async fn release_task(
        &self,
        id: TaskId,
        attempt: u32,
        next_run_at: i64,
        release: Release,
        now: i64,
    ) -> StoreResult<Task> {
        let reserved = release == Release::OnReservedToken;
        self.write(move |conn| {
            ops::fenced(
                conn,
                ops::RELEASE,
                id,
                attempt,
                &[&id, &attempt, &now, &next_run_at, &reserved],
            )
        })
        .await
    }

    async fn retry_task(&self, id: TaskId, next_run_at: i64, now: i64) -> StoreResult<Task> {
        self.write(move |conn| {
            ops::transition(
                conn,
                ops::RETRY,
                id,
                TaskState::Pending,
                &[&id, &now, &next_run_at],
            )
        })
        .await
    }

    async fn cancel_task(&self, id: TaskId, now: i64) -> StoreResult<Task> {
        self.write(move |conn| {
            ops::transition(conn, ops::CANCEL, id, TaskState::Canceled, &[&id, &now])
        })
        .await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Page<Task>> {
        let filter = filter.clone();
        self.read(move |conn| ops::list_tasks(conn, &filter)).await
    }

    async fn task_counts(&self, worker: Option<&str>) -> StoreResult<BTreeMap<TaskState, u64>> {
        let worker = worker.map(str::to_owned);
        self.read(move |conn| ops::task_counts(conn, worker.as_deref()))
            .await
    }

    async fn task_counts_per_worker(
        &self,
    ) -> StoreResult<BTreeMap<String, BTreeMap<TaskState, u64>>> {
        self.read(ops::task_counts_per_worker).await
    }

    async fn task_activity(&self, since: i64, bucket_ms: i64) -> StoreResult<Vec<ActivityBucket>> {
        crate::check_bucket(bucket_ms)?;
        self.read(move |conn| ops::task_activity(conn, since, bucket_ms))
            .await
    }

    async fn failing_workers(&self, since: i64, limit: u32) -> StoreResult<Vec<WorkerFailures>> {
        self.read(move |conn| ops::failing_workers(conn, since, limit))
            .await
    }

    async fn next_due(&self) -> StoreResult<NextDue> {
        self.read(ops::next_due).await
    }

    async fn record_console(
        &self,
        task: TaskId,
        attempt: u32,
        lines: &[ConsoleLine],
        now: i64,
    ) -> StoreResult<()> {
        let Some(lines) = crate::console_json(attempt, lines)? else {
            return Ok(());
        };
        self.write(move |conn| ops::record_console(conn, task, attempt, &lines, now))
            .await
    }

    async fn task_console(&self, task: TaskId) -> StoreResult<Vec<AttemptConsoleLine>> {
        self.read(move |conn| ops::task_console(conn, task)).await
    }

    async fn record_attempt(&self, task: TaskId, attempt: &TaskAttempt) -> StoreResult<()> {
        crate::check_attempt(attempt)?;
        let attempt = attempt.clone();
        self.write(move |conn| ops::record_attempt(conn, task, &attempt))
            .await
    }

    async fn task_attempts(&self, task: TaskId) -> StoreResult<Vec<TaskAttempt>> {
        self.read(move |conn| ops::task_attempts(conn, task)).await
    }

    async fn requeue_expired_leases(&self, now: i64) -> StoreResult<Vec<Task>> {
        self.write(move |conn| ops::requeue_dispatched(conn, now, true))
            .await
    }

    async fn requeue_all_dispatched(&self, now: i64) -> StoreResult<Vec<Task>> {
        self.write(move |conn| ops::requeue_dispatched(conn, now, false))
            .await
    }

    async fn record_cron_fire(
        &self,
        worker: &str,
        fire_time: i64,
        payload: Value,
        now: i64,
    ) -> StoreResult<Option<Task>> {
        let worker = worker.to_owned();
        let payload = to_json(&payload)?;
        self.write(move |conn| ops::record_cron_fire(conn, &worker, fire_time, &payload, now))
            .await
    }

    async fn record_cron_skip(&self, worker: &str, fire_time: i64) -> StoreResult<bool> {
        let worker = worker.to_owned();
        self.write(move |conn| ops::record_cron_skip(conn, &worker, fire_time))
            .await
    }

    async fn last_cron_fire(&self, worker: &str) -> StoreResult<Option<i64>> {
        let worker = worker.to_owned();
        self.read(move |conn| ops::last_cron_fire(conn, &worker))
            .await
    }

    async fn append_logs(&self, entries: Vec<LogRecord>) -> StoreResult<()> {
        let entries = entries
            .into_iter()
            .map(|entry| {
                let detail = entry.detail.as_ref().map(to_json).transpose()?;
                Ok((entry, detail))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.write(move |conn| ops::append_logs(conn, &entries))
            .await
    }

    async fn query_logs(&self, query: &LogQuery) -> StoreResult<Page<LogEntry>> {
        let query = query.clone();
        self.read(move |conn| ops::query_logs(conn, &query)).await
    }

    async fn prune(&self, before: i64) -> StoreResult<Pruned> {
        self.write(move |conn| ops::prune(conn, before)).await
    }

    fn shared(&self) -> bool {
        false
    }

    fn remote_changes(&self) -> Arc<tokio::sync::Notify> {
        self.remote_changes.clone()
    }

    async fn take_tokens(
        &self,
        bucket: &str,
        rate: TokenRate,
        take: Take,
        now: i64,
    ) -> StoreResult<Tokens> {
        crate::buckets::check_rate(rate)?;
        Ok(self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bucket, rate, take, now))
    }

    async fn admit_actor(
        &self,
        worker: &str,
        actor: &str,
        event: EventId,
        limit: u32,
        window_ms: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let (worker, actor) = (worker.to_owned(), actor.to_owned());
        self.write(move |conn| {
            ops::admit_actor(conn, &worker, &actor, event, limit, now - window_ms, now)
        })
        .await
    }

    async fn claim_write_backs(&self, now: i64, until: i64, limit: u32) -> StoreResult<Vec<Event>> {
        self.write(move |conn| ops::claim_write_backs(conn, now, until, limit))
            .await
    }

    async fn claim_write_back(
        &self,
        id: EventId,
        now: i64,
        until: i64,
    ) -> StoreResult<Option<Event>> {
        self.write(move |conn| ops::claim_write_back(conn, id, now, until))
            .await
    }

    async fn renew_leases(&self, claims: &[(TaskId, u32)], until: i64) -> StoreResult<u64> {
        let claims = claims.to_vec();
        self.write(move |conn| ops::renew_leases(conn, &claims, until))
            .await
    }

    async fn heartbeat(&self, instance: &Instance, now: i64) -> StoreResult<()> {
        let seen = Instance {
            last_seen: now,
            ..instance.clone()
        };
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seen.id.clone(), seen);
        Ok(())
    }

    async fn list_instances(&self, seen_since: i64) -> StoreResult<Vec<Instance>> {
        let instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        Ok(instances
            .values()
            .filter(|i| i.last_seen >= seen_since)
            .cloned()
            .collect())
    }

    async fn remove_instance(&self, id: &str) -> StoreResult<()> {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    fn queries_executed(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn commits(&self) -> u64 {
        self.writer.commits()
    }
}
