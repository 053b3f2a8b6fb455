//! [`Store`] on PostgreSQL: the SQL of every operation.

use super::*;
use crate::Release;

/// Claims up to `$3` tasks due by `$1`, oldest first, leasing them until `$2`, and marks their
/// matched events dispatched, in one statement. `SKIP LOCKED`: rows another server is claiming
/// right now are passed over, not waited for.
const CLAIM_DUE: &str = concat!(
    // `= ANY(ARRAY(...))` rather than a join with the due ids: its plan reads the claimed rows
    // by primary key even as a cached generic plan, which a join may turn into a scan.
    "WITH claimed AS (UPDATE tasks t SET state = 'dispatched', attempt = t.attempt + 1, ",
    "tries = t.tries + 1, runs = t.runs + 1, lease_expires_at = $2, updated_at = $1, claim_token = $4 ",
    "WHERE t.id = ANY(ARRAY(SELECT id FROM tasks WHERE state = 'pending' AND next_run_at <= $1 ",
    "AND ",
    paused_excluded!(),
    " ORDER BY next_run_at, id LIMIT $3 FOR UPDATE OF tasks SKIP LOCKED)) RETURNING t.*), ",
    // An event another claimer is marking right now is skipped, not waited for (nor deadlocked
    // on): it stays `matched`, which write-back treats as `dispatched`.
    "events_dispatched AS (UPDATE events e SET state = 'dispatched', updated_at = $1 ",
    "WHERE e.id IN (SELECT id FROM events WHERE state = 'matched' AND id IN ",
    "(SELECT event_id FROM claimed WHERE event_id IS NOT NULL) ORDER BY id ",
    "FOR UPDATE SKIP LOCKED)) ",
    "SELECT ",
    task_columns!(),
    " FROM claimed ORDER BY next_run_at, id"
);

const REQUEUE_EXPIRED: &str = concat!(
    "UPDATE tasks SET state = 'pending', next_run_at = $1, lease_expires_at = NULL, reserved_slot = NULL, ",
    "updated_at = $1 WHERE id IN (SELECT id FROM tasks WHERE state = 'dispatched' ",
    "AND lease_expires_at <= $1 FOR UPDATE SKIP LOCKED) RETURNING ",
    task_columns!()
);

const REQUEUE_ALL: &str = concat!(
    "UPDATE tasks SET state = 'pending', next_run_at = $1, lease_expires_at = NULL, reserved_slot = NULL, ",
    "updated_at = $1 WHERE state = 'dispatched' RETURNING ",
    task_columns!()
);

/// The poll of an idle server: the next due times and the registry version, in one query.
const NEXT_DUE: &str = concat!(
    "SELECT (SELECT next_run_at FROM tasks WHERE state = 'pending' AND ",
    paused_excluded!(),
    " ORDER BY next_run_at, id LIMIT 1), ",
    "(SELECT lease_expires_at FROM tasks WHERE state = 'dispatched' ",
    "ORDER BY lease_expires_at LIMIT 1), ",
    "(SELECT next_write_back_at FROM events WHERE state = 'write_back_failed' ",
    "AND next_write_back_at IS NOT NULL ORDER BY next_write_back_at, id LIMIT 1), ",
    "(SELECT value FROM meta WHERE key = 'registry_version')"
);

// The fenced moves out of `dispatched`: `$1` id, `$2` attempt, `$3` now, then extras.
const COMPLETE: &str = concat!(
    "UPDATE tasks SET state = 'completed', result = $4, error = NULL, lease_expires_at = NULL, ",
    "reserved_slot = NULL, updated_at = $3 WHERE id = $1 AND attempt = $2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
const FAIL: &str = concat!(
    "UPDATE tasks SET state = $4, error = $5, lease_expires_at = NULL, reserved_slot = NULL, ",
    "updated_at = $3 ",
    "WHERE id = $1 AND attempt = $2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
const RESCHEDULE: &str = concat!(
    "UPDATE tasks SET state = 'pending', next_run_at = $4, error = $5, lease_expires_at = NULL, ",
    "reserved_slot = NULL, updated_at = $3 WHERE id = $1 AND attempt = $2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
const RELEASE: &str = concat!(
    "UPDATE tasks SET state = 'pending', next_run_at = $4, tries = tries - 1, runs = runs - 1, ",
    "lease_expires_at = NULL, reserved_slot = CASE WHEN $5::BOOLEAN THEN $4::BIGINT END, updated_at = $3 ",
    "WHERE id = $1 AND attempt = $2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
// The unfenced moves: `$1` id, `$2` now, then extras.
const RETRY: &str = concat!(
    "UPDATE tasks SET state = 'pending', tries = 0, next_run_at = $3, result = NULL, ",
    "reserved_slot = NULL, updated_at = $2 WHERE id = $1 AND state IN ('dead', 'failed') RETURNING ",
    task_columns!()
);
const CANCEL: &str = concat!(
    "UPDATE tasks SET state = 'canceled', lease_expires_at = NULL, reserved_slot = NULL, ",
    "updated_at = $2 ",
    "WHERE id = $1 AND state IN ('pending', 'dispatched') RETURNING ",
    task_columns!()
);

const TASK_BY_ID: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");
const EVENT_BY_ID: &str = concat!("SELECT ", event_columns!(), " FROM events WHERE id = $1");
const EVENT_BY_DELIVERY: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE source = $1 AND delivery_id = $2"
);
const EVENT_BY_BODY: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE source = $1 AND body_hash = $2 AND received_at >= $3 ",
    "ORDER BY received_at, id LIMIT 1"
);
const INSERT_EVENT: &str = concat!(
    "INSERT INTO events (source, delivery_id, event_type, payload, state, received_at, ",
    "updated_at, body_hash) VALUES ($1, $2, $3, $4, 'received', $5, $5, $6) ",
    "ON CONFLICT (source, delivery_id) DO NOTHING RETURNING ",
    event_columns!()
);
const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (worker, event_id, idempotency_key, payload, state, next_run_at, ",
    "created_at, updated_at, create_token, origin) ",
    "VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6, $7, $8) ",
    "ON CONFLICT DO NOTHING RETURNING ",
    task_columns!()
);
const BUMP_REGISTRY: &str =
    "UPDATE meta SET value = value + 1 WHERE key = 'registry_version' RETURNING value";

/// Takes `$5` tokens (`$6`: reserve, or only if one is free now) of bucket `$1` with rate
/// `$2`/s and burst `$3` at `$4` ms; `$7` is the interval and `$8` the tolerance in ms. Every
/// `SET` expression sees the row as it was, so `taken` says whether this call took tokens.
const TAKE_TOKENS: &str = "INSERT INTO rate_buckets AS b (name, per_second, burst, tat, taken) \
     VALUES ($1, $2::FLOAT8, $3::BIGINT, $4::FLOAT8 + $5::FLOAT8 * $7::FLOAT8, true) \
     ON CONFLICT (name) DO UPDATE SET \
     tat = CASE \
       WHEN b.per_second <> $2 OR b.burst <> $3 THEN $4 + $5 * $7 \
       WHEN $6::BOOLEAN OR GREATEST(b.tat, $4) - $8::FLOAT8 <= $4 THEN GREATEST(b.tat, $4) + $5 * $7 \
       ELSE b.tat END, \
     taken = (b.per_second <> $2 OR b.burst <> $3 OR $6 OR GREATEST(b.tat, $4) - $8 <= $4), \
     per_second = $2, burst = $3 \
     RETURNING tat, taken";

/// An event found instead of inserted. On a retry after a failure that may have hidden the
/// first try's commit, an event still `received` and stamped with this very call's `now` is
/// that commit: it is reported as created, so its delivery is matched rather than taken for a
/// duplicate and left unmatched.
fn own_insert(record: Event, retried: bool, now: i64) -> Inserted<Event> {
    let created = retried
        && record.received_at == now
        && record.state == mechanics_proto::domain::EventState::Received;
    Inserted { record, created }
}

/// A random number telling one claim from every other.
fn random_token() -> i64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    i64::from_le_bytes(bytes[..8].try_into().unwrap_or_default())
}

/// `text` as PostgreSQL can store it: a `TEXT` value cannot hold U+0000, which an error
/// message or an event type taken from a payload may contain; it becomes U+FFFD. (JSON is
/// stored as text with NUL escaped, so payloads and results need nothing.)
fn pg_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn not_found(what: &'static str, id: i64) -> StoreError {
    StoreError::NotFound {
        what,
        key: id.to_string(),
    }
}

/// Runs one fenced move; if no row matched, says whether the task is missing or the attempt
/// stale — unless this is a retry after a failure that may have hidden a commit, and the task
/// already shows this very move (same attempt, target state): then that is the result.
async fn fenced(
    db: &impl Db,
    sql: &str,
    params: &Params<'_>,
    id: TaskId,
    attempt: u32,
    target: TaskState,
    retried: bool,
) -> StoreResult<Task> {
    if let Some(task) = opt(db, sql, params, rows::task, "finishing a task attempt").await? {
        return Ok(task);
    }
    let task = opt(db, TASK_BY_ID, &[&id], rows::task, "reading a task")
        .await?
        .ok_or_else(|| not_found("task", id))?;
    if retried && task.attempt == attempt && task.state == target {
        return Ok(task);
    }
    Err(StoreError::StaleAttempt {
        id,
        attempt,
        current_attempt: task.attempt,
        state: task.state,
    })
}

/// Runs one unfenced move to `to`; if no row matched, says why.
async fn transition(
    db: &impl Db,
    sql: &str,
    params: &Params<'_>,
    id: TaskId,
    to: TaskState,
) -> StoreResult<Task> {
    if let Some(task) = opt(db, sql, params, rows::task, "changing a task's state").await? {
        return Ok(task);
    }
    let task = opt(db, TASK_BY_ID, &[&id], rows::task, "reading a task")
        .await?
        .ok_or_else(|| not_found("task", id))?;
    Err(StoreError::InvalidTransition {
        what: "task",
        id,
        from: task.state.to_string(),
        to: to.to_string(),
    })
}

/// Inserts a task unless one with the same (event, worker) or (worker, idempotency key)
/// exists; then returns that one.
async fn insert_task(
    db: &impl Db,
    task: &NewTask,
    payload: &str,
    now: i64,
    token: i64,
    trigger: TaskTrigger,
) -> StoreResult<Inserted<Task>> {
    let context = "creating a task";
    let statement = db.statement(INSERT_TASK).await.map_err(pg_err(context))?;
    let inserted = db
        .rows(
            &statement,
            &[
                &task.worker,
                &task.event_id,
                &task.idempotency_key,
                &payload,
                &task.next_run_at,
                &now,
                &token,
                &trigger.as_str(),
            ],
        )
        .await;
    let inserted = match inserted {
        Ok(rows) => rows,
        Err(err) if is_missing_reference(&err) => {
            return Err(not_found("event", task.event_id.unwrap_or_default()));
        }
        Err(err) => return Err(pg_err(context)(err)),
    };
    if let Some(row) = inserted.first() {
        return Ok(Inserted {
            record: rows::task(row)?,
            created: true,
        });
    }
    let mut existing = None;
    if let Some(event_id) = task.event_id {
        existing = opt(
            db,
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE event_id = $1 AND worker = $2"
            ),
            &[&event_id, &task.worker],
            rows::task,
            "reading a duplicate task",
        )
        .await?;
    }
    if existing.is_none()
        && let Some(key) = &task.idempotency_key
    {
        existing = opt(
            db,
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE worker = $1 AND idempotency_key = $2"
            ),
            &[&task.worker, key],
            rows::task,
            "reading a duplicate task",
        )
        .await?;
    }
    let record = existing.ok_or_else(|| StoreError::Database {
        context: context.into(),
        message: "the conflicting task vanished".into(),
    })?;
    Ok(Inserted {
        record,
        created: false,
    })
}

/// The optional `WHERE` conditions of a listing, numbered as they are added.
#[derive(Default)]
struct Filters {
    conditions: Vec<String>,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Filters {
    /// `condition` has one `{}` where the parameter goes.
    fn add<T: ToSql + Sync + Send + 'static>(&mut self, condition: &str, value: Option<T>) {
        if let Some(value) = value {
            self.values.push(Box::new(value));
            let placeholder = format!("${}", self.values.len());
            self.conditions.push(condition.replace("{}", &placeholder));
        }
    }

    /// `select` with the conditions, newest first, one page.
    fn sql(&mut self, select: &str, limit: u32) -> String {
        let mut sql = select.to_owned();
        if !self.conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.conditions.join(" AND "));
        }
        self.values.push(Box::new(i64::from(limit)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", self.values.len()));
        sql
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| &**v as &(dyn ToSql + Sync))
            .collect()
    }
}

fn page<T>(items: Vec<T>, limit: u32, id_of: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if items.len() == limit as usize {
        items.last().map(id_of)
    } else {
        None
    };
    Page { items, next_cursor }
}

fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE)
}

#[async_trait]
impl Store for PgStore {
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
        let module_js = transpiled.map(|transpiled| transpiled.javascript);
        self.upsert_registry(
            concat!(
                "INSERT INTO workers (name, spec, module_source, module_js, source_map, ",
                "revision, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6) ",
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, ",
                "module_source = excluded.module_source, module_js = excluded.module_js, ",
                "source_map = excluded.source_map, revision = workers.revision + 1, ",
                "updated_at = excluded.updated_at RETURNING ",
                worker_columns!()
            ),
            &[
                &spec.name,
                &spec_json,
                &module_source,
                &module_js,
                &source_map_json,
                &now,
            ],
            rows::worker,
            "storing a worker",
        )
        .await
    }

    async fn get_worker(&self, name: &str) -> StoreResult<Option<Worker>> {
        retrying!(self, |db, _retried| {
            opt(
                &*db,
                concat!(
                    "SELECT ",
                    worker_columns!(),
                    " FROM workers WHERE name = $1"
                ),
                &[&name],
                rows::worker,
                "reading a worker",
            )
            .await
        })
    }

    async fn list_workers(&self) -> StoreResult<Vec<Worker>> {
        retrying!(self, |db, _retried| {
            all(
                &*db,
                concat!("SELECT ", worker_columns!(), " FROM workers ORDER BY name"),
                &[],
                rows::worker,
                "listing workers",
            )
            .await
        })
    }

    async fn delete_worker(
        &self,
        name: &str,
        cancel_unfinished: bool,
        now: i64,
    ) -> StoreResult<Option<Vec<Task>>> {
        let context = "deleting a worker";
        let deleted = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            // Locks the row: a concurrent pause, update or removal waits for this one.
            let found = query(
                &tx,
                "SELECT 1 FROM workers WHERE name = $1 FOR UPDATE",
                &[&name],
                context,
            )
            .await?;
            if found.is_empty() {
                return Ok(None);
            }
            let mut canceled = if cancel_unfinished {
                all(
                    &tx,
                    concat!(
                        "UPDATE tasks SET state = 'canceled', lease_expires_at = NULL, ",
                        "reserved_slot = NULL, updated_at = $2 ",
                        "WHERE worker = $1 AND state IN ('pending', 'dispatched') RETURNING ",
                        task_columns!()
                    ),
                    &[&name, &now],
                    rows::task,
                    context,
                )
                .await?
            } else {
                let rows = query(
                    &tx,
                    "SELECT count(*) FROM tasks WHERE worker = $1 \
                     AND state IN ('pending', 'dispatched')",
                    &[&name],
                    context,
                )
                .await?;
                let count: i64 = rows.first().map_or(0, |row| row.get(0));
                if count > 0 {
                    return Err(StoreError::UnfinishedTasks {
                        worker: name.to_owned(),
                        count: u64::try_from(count).unwrap_or_default(),
                    });
                }
                Vec::new()
            };
            canceled.sort_by_key(|task| task.id);
            execute(
                &tx,
                "DELETE FROM workers WHERE name = $1",
                &[&name],
                context,
            )
            .await?;
            let version = self.bump_registry(&tx).await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(Some((canceled, version)))
        })?;
        Ok(deleted.map(|(canceled, version)| {
            self.committed();
            self.saw_registry_version(version);
            canceled
        }))
    }

    async fn set_worker_paused(&self, name: &str, paused: bool) -> StoreResult<Option<Worker>> {
        let context = "pausing or resuming a worker";
        let changed = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            let Some(worker) = opt(
                &tx,
                concat!(
                    "UPDATE workers SET paused = $2 WHERE name = $1 RETURNING ",
                    worker_columns!()
                ),
                &[&name, &paused],
                rows::worker,
                context,
            )
            .await?
            else {
                return Ok(None);
            };
            let version = self.bump_registry(&tx).await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(Some((worker, version)))
        })?;
        Ok(changed.map(|(worker, version)| {
            self.committed();
            self.saw_registry_version(version);
            if !worker.paused {
                // Its pending tasks are due again: other servers' dispatchers wake.
                self.hints.work_made_due();
            }
            worker
        }))
    }

    async fn upsert_source(&self, spec: SourceSpec, now: i64) -> StoreResult<Source> {
        crate::check_source(&spec)?;
        let spec_json = to_json(&spec)?;
        self.upsert_registry(
            concat!(
                "INSERT INTO sources (name, spec, revision, created_at, updated_at) ",
                "VALUES ($1, $2, 1, $3, $3) ON CONFLICT (name) DO UPDATE SET ",
                "spec = excluded.spec, revision = sources.revision + 1, ",
                "updated_at = excluded.updated_at RETURNING ",
                source_columns!()
            ),
            &[&spec.name, &spec_json, &now],
            rows::source,
            "storing a source",
        )
        .await
    }

    async fn get_source(&self, name: &str) -> StoreResult<Option<Source>> {
        retrying!(self, |db, _retried| {
            opt(
                &*db,
                concat!(
                    "SELECT ",
                    source_columns!(),
                    " FROM sources WHERE name = $1"
                ),
                &[&name],
                rows::source,
                "reading a source",
            )
            .await
        })
    }

    async fn list_sources(&self) -> StoreResult<Vec<Source>> {
        retrying!(self, |db, _retried| {
            all(
                &*db,
                concat!("SELECT ", source_columns!(), " FROM sources ORDER BY name"),
                &[],
                rows::source,
                "listing sources",
            )
            .await
        })
    }

    async fn delete_source(&self, name: &str) -> StoreResult<bool> {
        self.delete_named("DELETE FROM sources WHERE name = $1", name)
            .await
    }

    async fn upsert_node(&self, spec: NodeSpec, now: i64) -> StoreResult<RemoteNode> {
        crate::check_node(&spec)?;
        let spec_json = to_json(&spec)?;
        self.upsert_registry(
            concat!(
                "INSERT INTO remote_nodes (name, spec, revision, created_at, updated_at) ",
                "VALUES ($1, $2, 1, $3, $3) ON CONFLICT (name) DO UPDATE SET ",
                "spec = excluded.spec, revision = remote_nodes.revision + 1, ",
                "updated_at = excluded.updated_at RETURNING ",
                node_columns!()
            ),
            &[&spec.name, &spec_json, &now],
            rows::remote_node,
            "storing a remote node",
        )
        .await
    }

    async fn list_nodes(&self) -> StoreResult<Vec<RemoteNode>> {
        retrying!(self, |db, _retried| {
            all(
                &*db,
                concat!(
                    "SELECT ",
                    node_columns!(),
                    " FROM remote_nodes ORDER BY name"
                ),
                &[],
                rows::remote_node,
                "listing remote nodes",
            )
            .await
        })
    }

    async fn delete_node(&self, name: &str) -> StoreResult<bool> {
        self.delete_named("DELETE FROM remote_nodes WHERE name = $1", name)
            .await
    }

    async fn create_api_key(&self, key: crate::NewApiKey, now: i64) -> StoreResult<crate::ApiKey> {
        crate::check_api_key(&key)?;
        let context = "storing an API key";
        let created = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            let inserted = execute(
                &tx,
                concat!(
                    "INSERT INTO api_keys (name, scope, hash, created_at, expires_at) ",
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING"
                ),
                &[
                    &key.name,
                    &key.scope.as_str(),
                    &key.hash,
                    &now,
                    &key.expires_at,
                ],
                context,
            )
            .await?;
            if inserted == 0 {
                return Ok(None);
            }
            let version = self.bump_registry(&tx).await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(Some(version))
        })?;
        let Some(version) = created else {
            return Err(StoreError::AlreadyExists {
                what: "API key",
                key: format!("{:?}", key.name),
            });
        };
        self.committed();
        self.saw_registry_version(version);
        Ok(crate::ApiKey {
            name: key.name,
            scope: key.scope,
            hash: key.hash,
            created_at: now,
            last_used_at: None,
            expires_at: key.expires_at,
        })
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<crate::ApiKey>> {
        retrying!(self, |db, _retried| {
            all(
                &*db,
                concat!(
                    "SELECT name, scope, hash, created_at, last_used_at, expires_at ",
                    "FROM api_keys ORDER BY name"
                ),
                &[],
                |row| {
                    Ok(crate::ApiKey {
                        name: row.get(0),
                        scope: crate::stored_scope(row.get(1))?,
                        hash: row.get(2),
                        created_at: row.get(3),
                        last_used_at: row.get(4),
                        expires_at: row.get(5),
                    })
                },
                "listing API keys",
            )
            .await
        })
    }

    async fn delete_api_key(&self, name: &str) -> StoreResult<bool> {
        self.delete_named("DELETE FROM api_keys WHERE name = $1", name)
            .await
    }

    async fn touch_api_key(&self, name: &str, now: i64) -> StoreResult<()> {
        let context = "recording an API key's use";
        retrying!(self, |db, _retried| {
            execute(
                &*db,
                concat!(
                    "UPDATE api_keys SET last_used_at = $2 WHERE name = $1 ",
                    "AND (last_used_at IS NULL OR last_used_at < $2)"
                ),
                &[&name, &now],
                context,
            )
            .await
        })?;
        self.committed();
        Ok(())
    }

    fn registry_version(&self) -> u64 {
        self.registry_version.load(Ordering::Relaxed)
    }

    async fn refresh_registry_version(&self) -> StoreResult<u64> {
        let version: i64 = retrying!(self, |db, _retried| {
            let rows = query(
                &*db,
                "SELECT value FROM meta WHERE key = 'registry_version'",
                &[],
                "reading the registry version",
            )
            .await?;
            Ok(rows.first().map_or(0, |row| row.get(0)))
        })?;
        self.saw_registry_version(u64::try_from(version).unwrap_or_default());
        Ok(self.registry_version())
    }

    async fn insert_event(&self, event: NewEvent, now: i64) -> StoreResult<Inserted<Event>> {
        let payload = to_json(&event.payload)?;
        let context = "storing an event";
        let hash = event.body_dedup.as_ref().map(|dedup| dedup.hash.to_vec());
        let inserted = retrying!(self, |db, retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            if let Some(dedup) = &event.body_dedup {
                // Two deliveries of one body at once: the second waits for the first's commit
                // and then finds it.
                let key = i64::from_le_bytes(dedup.hash[..8].try_into().unwrap_or_default());
                execute(
                    &tx,
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&key],
                    "locking an event body",
                )
                .await?;
                let by_delivery = opt(
                    &tx,
                    EVENT_BY_DELIVERY,
                    &[&event.source, &event.delivery_id],
                    rows::event,
                    "reading a duplicate event",
                )
                .await?;
                let found = match by_delivery {
                    Some(found) => Some(found),
                    None => {
                        opt(
                            &tx,
                            EVENT_BY_BODY,
                            &[&event.source, &hash, &dedup.since_ms],
                            rows::event,
                            "reading an event with the same body",
                        )
                        .await?
                    }
                };
                if let Some(record) = found {
                    return Ok(own_insert(record, retried, now));
                }
            }
            let inserted = opt(
                &tx,
                INSERT_EVENT,
                &[
                    &event.source,
                    &event.delivery_id,
                    &pg_text(&event.event_type),
                    &payload,
                    &now,
                    &hash,
                ],
                rows::event,
                context,
            )
            .await?;
            let result = match inserted {
                Some(record) => Inserted {
                    record,
                    created: true,
                },
                None => {
                    let record = opt(
                        &tx,
                        EVENT_BY_DELIVERY,
                        &[&event.source, &event.delivery_id],
                        rows::event,
                        "reading a duplicate event",
                    )
                    .await?
                    .ok_or_else(|| StoreError::Database {
                        context: context.into(),
                        message: "the conflicting event vanished".into(),
                    })?;
                    own_insert(record, retried, now)
                }
            };
            tx.commit().await.map_err(pg_err(context))?;
            Ok(result)
        })?;
        self.committed();
        Ok(inserted)
    }

    async fn get_event(&self, id: EventId) -> StoreResult<Option<Event>> {
        retrying!(self, |db, _retried| {
            opt(&*db, EVENT_BY_ID, &[&id], rows::event, "reading an event").await
        })
    }

    async fn update_event(&self, id: EventId, update: EventUpdate, now: i64) -> StoreResult<Event> {
        let context = "updating an event";
        let event = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            let current = opt(
                &tx,
                concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM events WHERE id = $1 FOR UPDATE"
                ),
                &[&id],
                rows::event,
                "reading an event",
            )
            .await?
            .ok_or_else(|| not_found("event", id))?;
            if !current.state.can_become(update.state) {
                return Err(StoreError::InvalidTransition {
                    what: "event",
                    id,
                    from: current.state.to_string(),
                    to: update.state.to_string(),
                });
            }
            let event = opt(
                &tx,
                concat!(
                    "UPDATE events SET state = $2, error = $3, next_write_back_at = $4, ",
                    "write_back_attempts = write_back_attempts + ",
                    "CASE WHEN $2 = 'write_back_failed' THEN 1 ELSE 0 END, updated_at = $5 ",
                    "WHERE id = $1 RETURNING ",
                    event_columns!()
                ),
                &[
                    &id,
                    &update.state.as_str(),
                    &update.error.as_deref().map(pg_text),
                    &update.next_write_back_at,
                    &now,
                ],
                rows::event,
                context,
            )
            .await?
            .ok_or_else(|| not_found("event", id))?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(event)
        })?;
        self.committed();
        Ok(event)
    }

    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Page<Event>> {
        let limit = page_size(filter.limit);
        let mut filters = Filters::default();
        filters.add("source = {}", filter.source.clone());
        filters.add("state = {}", filter.state.map(|s| s.as_str().to_owned()));
        filters.add("event_type = {}", filter.event_type.clone());
        filters.add(
            "state = 'write_back_failed' AND next_write_back_at <= {}",
            filter.write_back_due_by,
        );
        filters.add("id < {}", filter.cursor);
        let sql = filters.sql(concat!("SELECT ", event_columns!(), " FROM events"), limit);
        let items = retrying!(self, |db, _retried| {
            all(&*db, &sql, &filters.params(), rows::event, "listing events").await
        })?;
        Ok(page(items, limit, |e| e.id))
    }

    async fn create_task(&self, task: NewTask, now: i64) -> StoreResult<Inserted<Task>> {
        let payload = to_json(&task.payload)?;
        let token = random_token();
        let inserted = retrying!(self, |db, retried| {
            if retried {
                // The failed try may have committed: then that row is this call's task (an API
                // submission without an idempotency key must not be created twice).
                let mine = opt(
                    &*db,
                    concat!(
                        "SELECT ",
                        task_columns!(),
                        " FROM tasks WHERE create_token = $1"
                    ),
                    &[&token],
                    rows::task,
                    "finding a created task",
                )
                .await?;
                if let Some(record) = mine {
                    return Ok(Inserted {
                        record,
                        created: true,
                    });
                }
            }
            insert_task(&*db, &task, &payload, now, token, task.trigger()).await
        })?;
        if inserted.created {
            self.committed();
            self.hints.work_made_due();
        }
        Ok(inserted)
    }

    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>> {
        retrying!(self, |db, _retried| {
            opt(&*db, TASK_BY_ID, &[&id], rows::task, "reading a task").await
        })
    }

    async fn claim_due(&self, now: i64, lease_until: i64, limit: u32) -> StoreResult<Vec<Task>> {
        let limit = i64::from(limit);
        let token = random_token();
        let tasks = retrying!(self, |db, retried| {
            if retried {
                // The failed try may have committed: its tasks are ours, and would otherwise
                // sit claimed and unrun until their lease ran out.
                let taken = all(
                    &*db,
                    concat!(
                        "SELECT ",
                        task_columns!(),
                        " FROM tasks WHERE claim_token = $1 AND state = 'dispatched' ",
                        "ORDER BY next_run_at, id"
                    ),
                    &[&token],
                    rows::task,
                    "finding a claim's tasks",
                )
                .await?;
                if !taken.is_empty() {
                    return Ok(taken);
                }
            }
            all(
                &*db,
                CLAIM_DUE,
                &[&now, &lease_until, &limit, &token],
                rows::task,
                "claiming tasks",
            )
            .await
        })?;
        self.committed();
        Ok(tasks)
    }

    async fn complete_task(
        &self,
        id: TaskId,
        attempt: u32,
        result: Value,
        now: i64,
    ) -> StoreResult<Task> {
        let result = to_json(&result)?;
        let attempt_i = i64::from(attempt);
        let task = retrying!(self, |db, retried| {
            fenced(
                &*db,
                COMPLETE,
                &[&id, &attempt_i, &now, &result],
                id,
                attempt,
                TaskState::Completed,
                retried,
            )
            .await
        })?;
        self.committed();
        Ok(task)
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
        let attempt_i = i64::from(attempt);
        let task = retrying!(self, |db, retried| {
            fenced(
                &*db,
                FAIL,
                &[&id, &attempt_i, &now, &end.as_str(), &pg_text(error)],
                id,
                attempt,
                end,
                retried,
            )
            .await
        })?;
        self.committed();
        Ok(task)
    }

    async fn reschedule_task(
        &self,
        id: TaskId,
        attempt: u32,
        next_run_at: i64,
        error: &str,
        now: i64,
    ) -> StoreResult<Task> {
        let attempt_i = i64::from(attempt);
        let task = retrying!(self, |db, retried| {
            fenced(
                &*db,
                RESCHEDULE,
                &[&id, &attempt_i, &now, &next_run_at, &pg_text(error)],
                id,
                attempt,
                TaskState::Pending,
                retried,
            )
            .await
        })?;
        self.committed();
        self.hints.work_made_due();
        Ok(task)
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
        let attempt_i = i64::from(attempt);
        let task = retrying!(self, |db, retried| {
            fenced(
                &*db,
                RELEASE,
                &[&id, &attempt_i, &now, &next_run_at, &reserved],
                id,
                attempt,
                TaskState::Pending,
                retried,
            )
            .await
        })?;
        self.committed();
        self.hints.work_made_due();
        Ok(task)
    }

    async fn retry_task(&self, id: TaskId, next_run_at: i64, now: i64) -> StoreResult<Task> {
        let task = retrying!(self, |db, _retried| {
            transition(
                &*db,
                RETRY,
                &[&id, &now, &next_run_at],
                id,
                TaskState::Pending,
            )
            .await
        })?;
        self.committed();
        self.hints.work_made_due();
        Ok(task)
    }

    async fn cancel_task(&self, id: TaskId, now: i64) -> StoreResult<Task> {
        let task = retrying!(self, |db, _retried| {
            transition(&*db, CANCEL, &[&id, &now], id, TaskState::Canceled).await
        })?;
        self.committed();
        Ok(task)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Page<Task>> {
        let limit = page_size(filter.limit);
        let mut filters = Filters::default();
        filters.add("state = {}", filter.state.map(|s| s.as_str().to_owned()));
        filters.add("worker = {}", filter.worker.clone());
        filters.add("event_id = {}", filter.event_id);
        // As on SQLite: the first id created since then bounds the walk (`tasks_created`).
        filters.add(
            "id >= (SELECT MIN(id) FROM tasks WHERE created_at >= {}) AND created_at >= {}",
            filter.created_since,
        );
        filters.add("id < {}", filter.cursor);
        let sql = filters.sql(concat!("SELECT ", task_columns!(), " FROM tasks"), limit);
        let items = retrying!(self, |db, _retried| {
            all(&*db, &sql, &filters.params(), rows::task, "listing tasks").await
        })?;
        Ok(page(items, limit, |t| t.id))
    }

    async fn task_counts(&self, worker: Option<&str>) -> StoreResult<BTreeMap<TaskState, u64>> {
        let rows = retrying!(self, |db, _retried| {
            query(
                &*db,
                "SELECT state, COUNT(*) FROM tasks WHERE ($1::TEXT IS NULL OR worker = $1) \
                 GROUP BY state",
                &[&worker],
                "counting tasks",
            )
            .await
        })?;
        let mut counts: BTreeMap<TaskState, u64> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            let state: &str = row.get(0);
            let count: i64 = row.get(1);
            let state = state.parse().map_err(|err| StoreError::Database {
                context: "counting tasks".into(),
                message: format!("{err}"),
            })?;
            counts.insert(state, u64::try_from(count).unwrap_or_default());
        }
        Ok(counts)
    }

    async fn task_counts_per_worker(
        &self,
    ) -> StoreResult<BTreeMap<String, BTreeMap<TaskState, u64>>> {
        let rows = retrying!(self, |db, _retried| {
            query(
                &*db,
                "SELECT worker, state, COUNT(*) FROM tasks GROUP BY worker, state",
                &[],
                "counting each worker's tasks",
            )
            .await
        })?;
        let rows = rows
            .iter()
            .map(|row| {
                let state: &str = row.get(1);
                let state = state.parse().map_err(|err| StoreError::Database {
                    context: "counting each worker's tasks".into(),
                    message: format!("{err}"),
                })?;
                let count: i64 = row.get(2);
                Ok((row.get(0), state, u64::try_from(count).unwrap_or_default()))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(crate::counts_per_worker(rows))
    }

    async fn task_activity(&self, since: i64, bucket_ms: i64) -> StoreResult<Vec<ActivityBucket>> {
        crate::check_bucket(bucket_ms)?;
        let rows = retrying!(self, |db, _retried| {
            query(
                &*db,
                "SELECT (updated_at / $2) * $2 AS start, \
                 COUNT(*) FILTER (WHERE state = 'completed'), \
                 COUNT(*) FILTER (WHERE state IN ('failed', 'dead')) FROM tasks \
                 WHERE updated_at >= $1 AND state IN ('completed', 'failed', 'dead') \
                 GROUP BY start ORDER BY start",
                &[&since, &bucket_ms],
                "counting ended tasks per bucket",
            )
            .await
        })?;
        Ok(rows
            .iter()
            .map(|row| ActivityBucket {
                start: row.get(0),
                completed: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
                failed: u64::try_from(row.get::<_, i64>(2)).unwrap_or_default(),
            })
            .collect())
    }

    async fn failing_workers(&self, since: i64, limit: u32) -> StoreResult<Vec<WorkerFailures>> {
        let limit = i64::from(limit);
        let rows = retrying!(self, |db, _retried| {
            query(
                &*db,
                "SELECT worker, COUNT(*) AS failed FROM tasks \
                 WHERE updated_at >= $1 AND state IN ('failed', 'dead') \
                 GROUP BY worker ORDER BY failed DESC, worker LIMIT $2",
                &[&since, &limit],
                "finding the failing workers",
            )
            .await
        })?;
        Ok(rows
            .iter()
            .map(|row| WorkerFailures {
                worker: row.get(0),
                failed: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
            })
            .collect())
    }

    async fn next_due(&self) -> StoreResult<NextDue> {
        let row = retrying!(self, |db, _retried| {
            let rows = query(&*db, NEXT_DUE, &[], "reading the next due time").await?;
            rows.into_iter().next().ok_or_else(|| StoreError::Database {
                context: "reading the next due time".into(),
                message: "no row".into(),
            })
        })?;
        let version: Option<i64> = row.get(3);
        self.saw_registry_version(version.and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
        Ok(NextDue {
            task_run_at: row.get(0),
            lease_expires_at: row.get(1),
            write_back_at: row.get(2),
        })
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
        let attempt = i64::from(attempt);
        let context = "storing an attempt's console output";
        // An upsert: a try that failed after its commit leaves the same row the retry writes.
        retrying!(self, |db, _retried| {
            let statement = db
                .statement(
                    "INSERT INTO task_console (task_id, attempt, lines, recorded_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (task_id, attempt) DO UPDATE \
                     SET lines = excluded.lines, recorded_at = excluded.recorded_at",
                )
                .await
                .map_err(pg_err(context))?;
            match db.exec(&statement, &[&task, &attempt, &lines, &now]).await {
                Ok(_) => Ok(()),
                Err(err) if is_missing_reference(&err) => Err(not_found("task", task)),
                Err(err) => Err(pg_err(context)(err)),
            }
        })?;
        self.committed();
        Ok(())
    }

    async fn task_console(&self, task: TaskId) -> StoreResult<Vec<AttemptConsoleLine>> {
        let attempts = retrying!(self, |db, _retried| {
            all(
                &*db,
                "SELECT attempt, lines FROM task_console WHERE task_id = $1 ORDER BY attempt",
                &[&task],
                rows::console_attempt,
                "reading a task's console output",
            )
            .await
        })?;
        Ok(attempts
            .into_iter()
            .flat_map(|(attempt, lines)| crate::attempt_lines(attempt, lines))
            .collect())
    }

    async fn record_attempt(&self, task: TaskId, attempt: &TaskAttempt) -> StoreResult<()> {
        crate::check_attempt(attempt)?;
        let claim = i64::from(attempt.claim);
        let outcome = attempt.outcome.as_str();
        let context = "storing a task attempt";
        // An upsert: a try that failed after its commit leaves the same row the retry writes.
        retrying!(self, |db, _retried| {
            let statement = db
                .statement(concat!(
                    "INSERT INTO task_attempts (task_id, claim, started_at, ended_at, node, ",
                    "worker_revision, outcome, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
                    "ON CONFLICT (task_id, claim) DO UPDATE SET started_at = excluded.started_at, ",
                    "ended_at = excluded.ended_at, node = excluded.node, ",
                    "worker_revision = excluded.worker_revision, outcome = excluded.outcome, ",
                    "error = excluded.error"
                ))
                .await
                .map_err(pg_err(context))?;
            let params: &Params<'_> = &[
                &task,
                &claim,
                &attempt.started_at,
                &attempt.ended_at,
                &attempt.node,
                &attempt.worker_revision,
                &outcome,
                &attempt.error,
            ];
            match db.exec(&statement, params).await {
                Ok(_) => Ok(()),
                Err(err) if is_missing_reference(&err) => Err(not_found("task", task)),
                Err(err) => Err(pg_err(context)(err)),
            }
        })?;
        self.committed();
        Ok(())
    }

    async fn task_attempts(&self, task: TaskId) -> StoreResult<Vec<TaskAttempt>> {
        retrying!(self, |db, _retried| {
            all(
                &*db,
                concat!(
                    "SELECT claim, started_at, ended_at, node, worker_revision, outcome, error ",
                    "FROM task_attempts WHERE task_id = $1 ORDER BY claim"
                ),
                &[&task],
                rows::attempt,
                "reading a task's attempts",
            )
            .await
        })
    }

    async fn requeue_expired_leases(&self, now: i64) -> StoreResult<Vec<Task>> {
        self.requeue(REQUEUE_EXPIRED, now).await
    }

    async fn requeue_all_dispatched(&self, now: i64) -> StoreResult<Vec<Task>> {
        self.requeue(REQUEUE_ALL, now).await
    }

    async fn record_cron_fire(
        &self,
        worker: &str,
        fire_time: i64,
        payload: Value,
        now: i64,
    ) -> StoreResult<Option<Task>> {
        let payload = to_json(&payload)?;
        let context = "recording a cron fire";
        let new_task = NewTask {
            worker: worker.to_owned(),
            event_id: None,
            idempotency_key: None,
            payload: Value::Null,
            next_run_at: fire_time,
        };
        let task = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            // The fire's row first: a second server recording the same fire waits here for the
            // first's commit, then inserts nothing.
            let statement = tx
                .statement(
                    "INSERT INTO cron_fires (worker, fire_time, task_id) VALUES ($1, $2, 0) \
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg_err(context))?;
            let recorded = match tx.exec(&statement, &[&worker, &fire_time]).await {
                Ok(n) => n,
                Err(err) if is_missing_reference(&err) => {
                    return Err(StoreError::NotFound {
                        what: "worker",
                        key: worker.to_owned(),
                    });
                }
                Err(err) => return Err(pg_err(context)(err)),
            };
            if recorded == 0 {
                return Ok(None);
            }
            let task = insert_task(
                &tx,
                &new_task,
                &payload,
                now,
                random_token(),
                TaskTrigger::Cron,
            )
            .await?
            .record;
            execute(
                &tx,
                "UPDATE cron_fires SET task_id = $3 WHERE worker = $1 AND fire_time = $2",
                &[&worker, &fire_time, &task.id],
                context,
            )
            .await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(Some(task))
        })?;
        if task.is_some() {
            self.committed();
            self.hints.work_made_due();
        }
        Ok(task)
    }

    async fn record_cron_skip(&self, worker: &str, fire_time: i64) -> StoreResult<bool> {
        let context = "recording a skipped cron fire";
        let recorded = retrying!(self, |db, _retried| {
            match db
                .execute(
                    "INSERT INTO cron_fires (worker, fire_time, task_id) VALUES ($1, $2, 0) \
                     ON CONFLICT DO NOTHING",
                    &[&worker, &fire_time],
                )
                .await
            {
                Ok(n) => Ok(n == 1),
                Err(err) if is_missing_reference(&err) => Err(StoreError::NotFound {
                    what: "worker",
                    key: worker.to_owned(),
                }),
                Err(err) => Err(pg_err(context)(err)),
            }
        })?;
        if recorded {
            self.committed();
        }
        Ok(recorded)
    }

    async fn last_cron_fire(&self, worker: &str) -> StoreResult<Option<i64>> {
        retrying!(self, |db, _retried| {
            let rows = query(
                &*db,
                "SELECT MAX(fire_time) FROM cron_fires WHERE worker = $1",
                &[&worker],
                "reading the last cron fire",
            )
            .await?;
            Ok(rows.first().and_then(|row| row.get(0)))
        })
    }

    async fn append_logs(&self, entries: Vec<LogRecord>) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch: a column per array.
        let mut trace_ids = Vec::with_capacity(entries.len());
        let mut ts = Vec::with_capacity(entries.len());
        let mut actions = Vec::with_capacity(entries.len());
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut event_ids = Vec::with_capacity(entries.len());
        let mut task_ids = Vec::with_capacity(entries.len());
        let mut workers = Vec::with_capacity(entries.len());
        let mut attempts = Vec::with_capacity(entries.len());
        let mut errors = Vec::with_capacity(entries.len());
        let mut details = Vec::with_capacity(entries.len());
        for entry in entries {
            details.push(entry.detail.as_ref().map(to_json).transpose()?);
            trace_ids.push(entry.trace_id);
            ts.push(entry.ts);
            actions.push(pg_text(&entry.action).into_owned());
            outcomes.push(entry.outcome.as_str().to_owned());
            event_ids.push(entry.event_id);
            task_ids.push(entry.task_id);
            workers.push(entry.worker);
            attempts.push(entry.attempt.map(i64::from));
            errors.push(entry.error.as_deref().map(|e| pg_text(e).into_owned()));
        }
        retrying!(self, |db, _retried| {
            execute(
                &*db,
                "INSERT INTO logs (trace_id, ts, action, outcome, event_id, task_id, worker, \
                 attempt, error, detail) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], \
                 $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::BIGINT[], \
                 $9::TEXT[], $10::TEXT[])",
                &[
                    &trace_ids, &ts, &actions, &outcomes, &event_ids, &task_ids, &workers,
                    &attempts, &errors, &details,
                ],
                "appending logs",
            )
            .await
        })?;
        self.committed();
        Ok(())
    }

    async fn query_logs(&self, query_: &LogQuery) -> StoreResult<Page<LogEntry>> {
        let limit = page_size(query_.limit);
        let mut filters = Filters::default();
        filters.add("event_id = {}", query_.event_id);
        filters.add("task_id = {}", query_.task_id);
        filters.add("worker = {}", query_.worker.clone());
        filters.add("action = {}", query_.action.clone());
        filters.add(
            "outcome = {}",
            query_.outcome.map(|o| o.as_str().to_owned()),
        );
        filters.add("ts >= {}", query_.since);
        filters.add("trace_id = {}", query_.trace_id.clone());
        filters.add("id < {}", query_.cursor);
        let sql = filters.sql(concat!("SELECT ", log_columns!(), " FROM logs"), limit);
        let items = retrying!(self, |db, _retried| {
            all(&*db, &sql, &filters.params(), rows::log, "querying logs").await
        })?;
        Ok(page(items, limit, |e| e.id))
    }

    async fn prune(&self, before: i64) -> StoreResult<Pruned> {
        let context = "pruning";
        let pruned = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            // One server prunes at a time; the others find nothing to do this round.
            let locked: bool = query(
                &tx,
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&PRUNE_LOCK],
                context,
            )
            .await?
            .first()
            .is_some_and(|row| row.get(0));
            if !locked {
                return Ok(Pruned::default());
            }
            let logs = execute(&tx, "DELETE FROM logs WHERE ts < $1", &[&before], context).await?;
            let cron_fires = execute(
                &tx,
                "DELETE FROM cron_fires WHERE fire_time < $1",
                &[&before],
                context,
            )
            .await?;
            // Buckets full since then are the same as absent ones; instances silent since then
            // are long gone.
            let before_f = before as f64;
            execute(
                &tx,
                "DELETE FROM rate_buckets WHERE tat < $1",
                &[&before_f],
                context,
            )
            .await?;
            execute(
                &tx,
                "DELETE FROM instances WHERE last_seen < $1",
                &[&before],
                context,
            )
            .await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(Pruned { logs, cron_fires })
        })?;
        self.committed();
        Ok(pruned)
    }

    fn shared(&self) -> bool {
        true
    }

    fn remote_changes(&self) -> Arc<Notify> {
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
        let (count, reserve) = match take {
            Take::Reserve(n) => (n, true),
            Take::IfFree => (1, false),
        };
        let (interval, tolerance) = (rate.interval_ms(), rate.tolerance_ms());
        let (nowf, countf, burst) = (now as f64, f64::from(count), i64::from(rate.burst));
        let row = retrying!(self, |db, _retried| {
            let rows = query(
                &*db,
                TAKE_TOKENS,
                &[
                    &bucket,
                    &rate.per_second,
                    &burst,
                    &nowf,
                    &countf,
                    &reserve,
                    &interval,
                    &tolerance,
                ],
                "taking tokens",
            )
            .await?;
            rows.into_iter().next().ok_or_else(|| StoreError::Database {
                context: "taking tokens".into(),
                message: "no row".into(),
            })
        })?;
        let (tat, taken): (f64, bool) = (row.get(0), row.get(1));
        if !taken {
            return Ok(Tokens::NotBefore((tat - tolerance).ceil() as i64));
        }
        Ok(Tokens::Granted(rate.slots(
            tat - countf * interval,
            count,
            now,
        )))
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
        let context = "counting an actor's events";
        let since = now - window_ms;
        let limit = i64::from(limit);
        retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            // Servers admitting the same pair at once take turns; other pairs do not wait.
            execute(
                &tx,
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text || chr(10) || $2::text, 0))",
                &[&worker, &actor],
                context,
            )
            .await?;
            execute(
                &tx,
                "DELETE FROM actor_admissions WHERE worker = $1 AND admitted_at <= $2",
                &[&worker, &since],
                context,
            )
            .await?;
            let row = query(
                &tx,
                "SELECT COUNT(*), COALESCE(BOOL_OR(event_id = $3), false) FROM actor_admissions \
                 WHERE worker = $1 AND actor = $2",
                &[&worker, &actor, &event],
                context,
            )
            .await?;
            let (admitted, before): (i64, bool) = row
                .first()
                .map_or((0, false), |row| (row.get(0), row.get(1)));
            let admit = before || admitted < limit;
            if admit && !before {
                execute(
                    &tx,
                    "INSERT INTO actor_admissions (worker, actor, event_id, admitted_at) \
                     VALUES ($1, $2, $3, $4)",
                    &[&worker, &actor, &event, &now],
                    context,
                )
                .await?;
            }
            tx.commit().await.map_err(pg_err(context))?;
            Ok(admit)
        })
    }

    async fn claim_write_backs(&self, now: i64, until: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let limit = i64::from(limit);
        let events = retrying!(self, |db, _retried| {
            all(
                &*db,
                concat!(
                    "UPDATE events SET next_write_back_at = $2 WHERE id IN (SELECT id FROM events ",
                    "WHERE state = 'write_back_failed' AND next_write_back_at <= $1 ",
                    "ORDER BY next_write_back_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                    event_columns!()
                ),
                &[&now, &until, &limit],
                rows::event,
                "claiming write-backs",
            )
            .await
        })?;
        let mut events = events;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn claim_write_back(
        &self,
        id: EventId,
        now: i64,
        until: i64,
    ) -> StoreResult<Option<Event>> {
        retrying!(self, |db, _retried| {
            opt(
                &*db,
                concat!(
                    "UPDATE events SET next_write_back_at = $3 WHERE id = $1 ",
                    "AND state IN ('matched', 'dispatched') ",
                    "AND (next_write_back_at IS NULL OR next_write_back_at <= $2) RETURNING ",
                    event_columns!()
                ),
                &[&id, &now, &until],
                rows::event,
                "claiming a write-back",
            )
            .await
        })
    }

    async fn renew_leases(&self, claims: &[(TaskId, u32)], until: i64) -> StoreResult<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = claims.iter().map(|(id, _)| *id).collect();
        let attempts: Vec<i64> = claims.iter().map(|(_, a)| i64::from(*a)).collect();
        let renewed = retrying!(self, |db, _retried| {
            execute(
                &*db,
                "UPDATE tasks t SET lease_expires_at = $3 \
                 FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS c(id, attempt) \
                 WHERE t.id = c.id AND t.attempt = c.attempt AND t.state = 'dispatched'",
                &[&ids, &attempts, &until],
                "renewing leases",
            )
            .await
        })?;
        self.committed();
        Ok(renewed)
    }

    async fn heartbeat(&self, instance: &Instance, now: i64) -> StoreResult<()> {
        retrying!(self, |db, _retried| {
            execute(
                &*db,
                "INSERT INTO instances (id, address, version, started_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                 address = excluded.address, version = excluded.version, last_seen = $5",
                &[
                    &instance.id,
                    &instance.address,
                    &instance.version,
                    &instance.started_at,
                    &now,
                ],
                "recording a heartbeat",
            )
            .await
        })?;
        Ok(())
    }

    async fn list_instances(&self, seen_since: i64) -> StoreResult<Vec<Instance>> {
        retrying!(self, |db, _retried| {
            all(
                &*db,
                "SELECT id, address, version, started_at, last_seen FROM instances \
                 WHERE last_seen >= $1 ORDER BY id",
                &[&seen_since],
                rows::instance,
                "listing instances",
            )
            .await
        })
    }

    async fn remove_instance(&self, id: &str) -> StoreResult<()> {
        retrying!(self, |db, _retried| {
            execute(
                &*db,
                "DELETE FROM instances WHERE id = $1",
                &[&id],
                "removing an instance",
            )
            .await
        })?;
        Ok(())
    }

    fn queries_executed(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl PgStore {
    /// Bumps the registry version in `tx` and tells the other servers (delivered at commit).
    async fn bump_registry(&self, tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<u64> {
        let context = "bumping the registry version";
        let version: i64 = query(tx, BUMP_REGISTRY, &[], context)
            .await?
            .first()
            .map_or(0, |row| row.get(0));
        let payload = format!("{}:{version}", self.tag);
        execute(
            tx,
            "SELECT pg_notify('mechanics_registry', $1)",
            &[&payload],
            context,
        )
        .await?;
        Ok(u64::try_from(version).unwrap_or_default())
    }

    /// Adds or replaces a worker or source with `sql` (an upsert returning its row), bumping
    /// the registry version in the same transaction.
    async fn upsert_registry<T: Send>(
        &self,
        sql: &'static str,
        params: &Params<'_>,
        map: fn(&Row) -> StoreResult<T>,
        context: &'static str,
    ) -> StoreResult<T> {
        let (record, version) = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            let record =
                opt(&tx, sql, params, map, context)
                    .await?
                    .ok_or_else(|| StoreError::Database {
                        context: context.into(),
                        message: "the upsert returned no row".into(),
                    })?;
            let version = self.bump_registry(&tx).await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok((record, version))
        })?;
        self.committed();
        self.saw_registry_version(version);
        Ok(record)
    }

    async fn delete_named(&self, sql: &'static str, name: &str) -> StoreResult<bool> {
        let context = "deleting from the registry";
        let version = retrying!(self, |db, _retried| {
            let tx = db.transaction().await.map_err(pg_err(context))?;
            if execute(&tx, sql, &[&name], context).await? == 0 {
                return Ok(None);
            }
            let version = self.bump_registry(&tx).await?;
            tx.commit().await.map_err(pg_err(context))?;
            Ok(Some(version))
        })?;
        if let Some(version) = version {
            self.committed();
            self.saw_registry_version(version);
        }
        Ok(version.is_some())
    }

    async fn requeue(&self, sql: &'static str, now: i64) -> StoreResult<Vec<Task>> {
        let mut tasks = retrying!(self, |db, _retried| {
            all(
                &*db,
                sql,
                &[&now],
                rows::task,
                "requeueing dispatched tasks",
            )
            .await
        })?;
        tasks.sort_by_key(|t| t.id);
        if !tasks.is_empty() {
            self.committed();
            self.hints.work_made_due();
        }
        Ok(tasks)
    }
}
