//! The SQL of every operation, as plain functions on a connection. Writes run on the writer
//! thread inside its batch transaction; reads run on a reader connection.

use std::collections::BTreeMap;

use mechanics_proto::domain::{
    AttemptConsoleLine, Event, EventId, LogEntry, LogRecord, RemoteNode, Source, Task, TaskAttempt,
    TaskId, TaskState, TaskTrigger, Worker,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};

use super::db_err;
use super::rows::{
    self, event_columns, log_columns, node_columns, paused_excluded, source_columns, task_columns,
    worker_columns,
};
use crate::{
    ActivityBucket, DEFAULT_PAGE_SIZE, EventFilter, EventUpdate, Inserted, LogQuery, MAX_PAGE_SIZE,
    NewEvent, NewTask, NextDue, Page, Pruned, StoreError, StoreResult, TaskFilter, WorkerFailures,
};

// ---- registry ----

/// A worker's row: its name, spec and module (source as written, and for TypeScript the
/// JavaScript that runs with its source map as JSON).
pub(super) struct WorkerRow<'a> {
    pub(super) name: &'a str,
    pub(super) spec_json: &'a str,
    pub(super) module_source: Option<&'a str>,
    pub(super) module_js: Option<&'a str>,
    pub(super) source_map_json: Option<&'a str>,
}

pub(super) fn upsert_worker(
    conn: &Connection,
    row: &WorkerRow<'_>,
    now: i64,
) -> StoreResult<(Worker, u64)> {
    let worker = conn
        .prepare_cached(concat!(
            "INSERT INTO workers (name, spec, module_source, module_js, source_map, revision, ",
            "created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6) ",
            "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, ",
            "module_source = excluded.module_source, module_js = excluded.module_js, ",
            "source_map = excluded.source_map, revision = workers.revision + 1, ",
            "updated_at = excluded.updated_at RETURNING ",
            worker_columns!()
        ))
        .and_then(|mut s| {
            s.query_row(
                params![
                    row.name,
                    row.spec_json,
                    row.module_source,
                    row.module_js,
                    row.source_map_json,
                    now
                ],
                rows::worker,
            )
        })
        .map_err(db_err("storing a worker"))?;
    Ok((worker, bump_registry(conn)?))
}

pub(super) fn upsert_source(
    conn: &Connection,
    name: &str,
    spec_json: &str,
    now: i64,
) -> StoreResult<(Source, u64)> {
    let source = conn
        .prepare_cached(concat!(
            "INSERT INTO sources (name, spec, revision, created_at, updated_at) ",
            "VALUES (?1, ?2, 1, ?3, ?3) ON CONFLICT (name) DO UPDATE SET ",
            "spec = excluded.spec, revision = sources.revision + 1, updated_at = excluded.updated_at ",
            "RETURNING ",
            source_columns!()
        ))
        .and_then(|mut s| s.query_row(params![name, spec_json, now], rows::source))
        .map_err(db_err("storing a source"))?;
    Ok((source, bump_registry(conn)?))
}

pub(super) fn upsert_node(
    conn: &Connection,
    name: &str,
    spec_json: &str,
    now: i64,
) -> StoreResult<(RemoteNode, u64)> {
    let node = conn
        .prepare_cached(concat!(
            "INSERT INTO remote_nodes (name, spec, revision, created_at, updated_at) ",
            "VALUES (?1, ?2, 1, ?3, ?3) ON CONFLICT (name) DO UPDATE SET ",
            "spec = excluded.spec, revision = remote_nodes.revision + 1, ",
            "updated_at = excluded.updated_at RETURNING ",
            node_columns!()
        ))
        .and_then(|mut s| s.query_row(params![name, spec_json, now], rows::remote_node))
        .map_err(db_err("storing a remote node"))?;
    Ok((node, bump_registry(conn)?))
}

pub(super) fn list_nodes(conn: &Connection) -> StoreResult<Vec<RemoteNode>> {
    query_all(
        conn,
        concat!(
            "SELECT ",
            node_columns!(),
            " FROM remote_nodes ORDER BY name"
        ),
        [],
        rows::remote_node,
        "listing remote nodes",
    )
}

/// Deletes a worker, source or remote node; returns the new registry version if a row went.
pub(super) fn delete_named(conn: &Connection, sql: &str, name: &str) -> StoreResult<Option<u64>> {
    let deleted = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute([name]))
        .map_err(db_err("deleting from the registry"))?;
    if deleted == 0 {
        return Ok(None);
    }
    bump_registry(conn).map(Some)
}

/// Deletes worker `name` unless it has unfinished tasks; with `cancel_unfinished` those are
/// canceled first and returned. `None` if there is no such worker.
pub(super) fn delete_worker(
    conn: &Connection,
    name: &str,
    cancel_unfinished: bool,
    now: i64,
) -> StoreResult<Option<(Vec<Task>, u64)>> {
    if get_worker(conn, name)?.is_none() {
        return Ok(None);
    }
    let canceled = if cancel_unfinished {
        let mut tasks = query_all(
            conn,
            concat!(
                "UPDATE tasks SET state = 'canceled', lease_expires_at = NULL, ",
                "reserved_slot = NULL, updated_at = ?2 ",
                "WHERE worker = ?1 AND state IN ('pending', 'dispatched') RETURNING ",
                task_columns!()
            ),
            params![name, now],
            rows::task,
            "canceling a worker's tasks",
        )?;
        tasks.sort_by_key(|task| task.id);
        tasks
    } else {
        let count: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM tasks WHERE worker = ?1 \
                 AND state IN ('pending', 'dispatched')",
            )
            .and_then(|mut s| s.query_row([name], |row| row.get(0)))
            .map_err(db_err("counting a worker's unfinished tasks"))?;
        if count > 0 {
            return Err(StoreError::UnfinishedTasks {
                worker: name.to_owned(),
                count: u64::try_from(count).unwrap_or_default(),
            });
        }
        Vec::new()
    };
    Ok(
        delete_named(conn, "DELETE FROM workers WHERE name = ?1", name)?
            .map(|version| (canceled, version)),
    )
}

/// Sets worker `name`'s paused flag and moves the registry version; `None` if there is none.
pub(super) fn set_worker_paused(
    conn: &Connection,
    name: &str,
    paused: bool,
) -> StoreResult<Option<(Worker, u64)>> {
    let Some(worker) = query_opt(
        conn,
        concat!(
            "UPDATE workers SET paused = ?2 WHERE name = ?1 RETURNING ",
            worker_columns!()
        ),
        params![name, paused],
        rows::worker,
        "pausing or resuming a worker",
    )?
    else {
        return Ok(None);
    };
    bump_registry(conn).map(|version| Some((worker, version)))
}

fn bump_registry(conn: &Connection) -> StoreResult<u64> {
    conn.prepare_cached(
        "UPDATE meta SET value = value + 1 WHERE key = 'registry_version' RETURNING value",
    )
    .and_then(|mut s| s.query_row([], |row| unsigned(row, 0)))
    .map_err(db_err("bumping the registry version"))
}

/// Inserts an API key and moves the registry version; `None` if the name is taken.
pub(super) fn create_api_key(
    conn: &Connection,
    key: &crate::NewApiKey,
    now: i64,
) -> StoreResult<Option<(crate::ApiKey, u64)>> {
    let inserted = conn
        .prepare_cached(concat!(
            "INSERT INTO api_keys (name, scope, hash, created_at, expires_at) ",
            "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING"
        ))
        .and_then(|mut s| {
            s.execute(params![
                key.name,
                key.scope.as_str(),
                key.hash,
                now,
                key.expires_at
            ])
        })
        .map_err(db_err("storing an API key"))?;
    if inserted == 0 {
        return Ok(None);
    }
    let stored = crate::ApiKey {
        name: key.name.clone(),
        scope: key.scope,
        hash: key.hash.clone(),
        created_at: now,
        last_used_at: None,
        expires_at: key.expires_at,
    };
    Ok(Some((stored, bump_registry(conn)?)))
}

pub(super) fn list_api_keys(conn: &Connection) -> StoreResult<Vec<crate::ApiKey>> {
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT name, scope, hash, created_at, last_used_at, expires_at ",
            "FROM api_keys ORDER BY name"
        ))
        .map_err(db_err("listing API keys"))?;
    let rows = stmt
        .query_map([], |row| {
            let scope: String = row.get(1)?;
            Ok((
                scope,
                crate::ApiKey {
                    name: row.get(0)?,
                    scope: mechanics_proto::api::ApiScope::Read,
                    hash: row.get(2)?,
                    created_at: row.get(3)?,
                    last_used_at: row.get(4)?,
                    expires_at: row.get(5)?,
                },
            ))
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(db_err("listing API keys"))?;
    rows.into_iter()
        .map(|(scope, mut key)| {
            key.scope = crate::stored_scope(&scope)?;
            Ok(key)
        })
        .collect()
}

pub(super) fn touch_api_key(conn: &Connection, name: &str, now: i64) -> StoreResult<()> {
    conn.prepare_cached(concat!(
        "UPDATE api_keys SET last_used_at = ?2 WHERE name = ?1 ",
        "AND (last_used_at IS NULL OR last_used_at < ?2)"
    ))
    .and_then(|mut s| s.execute(params![name, now]))
    .map_err(db_err("recording an API key's use"))?;
    Ok(())
}

pub(super) fn registry_version(conn: &Connection) -> StoreResult<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'registry_version'")
        .and_then(|mut s| s.query_row([], |row| unsigned(row, 0)))
        .map_err(db_err("reading the registry version"))
}

pub(super) fn get_worker(conn: &Connection, name: &str) -> StoreResult<Option<Worker>> {
    query_opt(
        conn,
        concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE name = ?1"
        ),
        [name],
        rows::worker,
        "reading a worker",
    )
}

pub(super) fn list_workers(conn: &Connection) -> StoreResult<Vec<Worker>> {
    query_all(
        conn,
        concat!("SELECT ", worker_columns!(), " FROM workers ORDER BY name"),
        [],
        rows::worker,
        "listing workers",
    )
}

pub(super) fn get_source(conn: &Connection, name: &str) -> StoreResult<Option<Source>> {
    query_opt(
        conn,
        concat!(
            "SELECT ",
            source_columns!(),
            " FROM sources WHERE name = ?1"
        ),
        [name],
        rows::source,
        "reading a source",
    )
}

pub(super) fn list_sources(conn: &Connection) -> StoreResult<Vec<Source>> {
    query_all(
        conn,
        concat!("SELECT ", source_columns!(), " FROM sources ORDER BY name"),
        [],
        rows::source,
        "listing sources",
    )
}

// ---- events ----

/// The earliest event of source `?1` with body hash `?2` received at or after `?3`: it walks the
/// partial index from `?3`, whatever the number of events with other bodies.
const EVENT_BY_BODY: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events INDEXED BY events_body_hash ",
    "WHERE source = ?1 AND body_hash = ?2 AND received_at >= ?3 ORDER BY received_at, id LIMIT 1"
);

/// The event of source `?1` with delivery id `?2`.
const EVENT_BY_DELIVERY: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE source = ?1 AND delivery_id = ?2"
);

pub(super) fn insert_event(
    conn: &Connection,
    event: &NewEvent,
    payload_json: &str,
    now: i64,
) -> StoreResult<Inserted<Event>> {
    let NewEvent {
        source,
        delivery_id,
        event_type,
        body_dedup,
        ..
    } = event;
    let existing = |record| {
        Ok(Inserted {
            record,
            created: false,
        })
    };
    if let Some(dedup) = body_dedup {
        // The delivery id goes first: a redelivery is reported as what it is, and returns the
        // event of its own id even if the body matches another one.
        let by_delivery = query_opt(
            conn,
            EVENT_BY_DELIVERY,
            [source, delivery_id],
            rows::event,
            "reading a duplicate event",
        )?;
        if let Some(record) = by_delivery {
            return existing(record);
        }
        let by_body = query_opt(
            conn,
            EVENT_BY_BODY,
            params![source, &dedup.hash[..], dedup.since_ms],
            rows::event,
            "reading an event with the same body",
        )?;
        if let Some(record) = by_body {
            return existing(record);
        }
    }
    let hash = body_dedup.as_ref().map(|dedup| &dedup.hash[..]);
    let inserted = query_opt(
        conn,
        concat!(
            "INSERT INTO events (source, delivery_id, event_type, payload, state, received_at, ",
            "updated_at, body_hash) VALUES (?1, ?2, ?3, ?4, 'received', ?5, ?5, ?6) ",
            "ON CONFLICT (source, delivery_id) DO NOTHING RETURNING ",
            event_columns!()
        ),
        params![source, delivery_id, event_type, payload_json, now, hash],
        rows::event,
        "storing an event",
    )?;
    if let Some(record) = inserted {
        return Ok(Inserted {
            record,
            created: true,
        });
    }
    let record = query_opt(
        conn,
        EVENT_BY_DELIVERY,
        [source, delivery_id],
        rows::event,
        "reading a duplicate event",
    )?
    .ok_or_else(|| StoreError::Database {
        context: "storing an event".into(),
        message: "the conflicting event vanished".into(),
    })?;
    existing(record)
}

pub(super) fn get_event(conn: &Connection, id: EventId) -> StoreResult<Option<Event>> {
    query_opt(
        conn,
        concat!("SELECT ", event_columns!(), " FROM events WHERE id = ?1"),
        [id],
        rows::event,
        "reading an event",
    )
}

pub(super) fn update_event(
    conn: &Connection,
    id: EventId,
    update: &EventUpdate,
    now: i64,
) -> StoreResult<Event> {
    let current = get_event(conn, id)?.ok_or_else(|| not_found("event", id))?;
    if !current.state.can_become(update.state) {
        return Err(StoreError::InvalidTransition {
            what: "event",
            id,
            from: current.state.to_string(),
            to: update.state.to_string(),
        });
    }
    conn.prepare_cached(concat!(
        "UPDATE events SET state = ?2, error = ?3, next_write_back_at = ?4, ",
        "write_back_attempts = write_back_attempts + (?2 = 'write_back_failed'), updated_at = ?5 ",
        "WHERE id = ?1 RETURNING ",
        event_columns!()
    ))
    .and_then(|mut s| {
        s.query_row(
            params![
                id,
                update.state.as_str(),
                update.error,
                update.next_write_back_at,
                now
            ],
            rows::event,
        )
    })
    .map_err(db_err("updating an event"))
}

pub(super) fn list_events(conn: &Connection, filter: &EventFilter) -> StoreResult<Page<Event>> {
    let mut filters = Filters::default();
    filters.add("source = ?", filter.source.clone().map(SqlValue::Text));
    filters.add(
        "state = ?",
        filter.state.map(|s| SqlValue::Text(s.as_str().into())),
    );
    filters.add(
        "event_type = ?",
        filter.event_type.clone().map(SqlValue::Text),
    );
    if let Some(due) = filter.write_back_due_by {
        filters.add(
            "state = 'write_back_failed' AND next_write_back_at <= ?",
            Some(SqlValue::Integer(due)),
        );
    }
    filters.add("id < ?", filter.cursor.map(SqlValue::Integer));
    filters.page(
        conn,
        concat!("SELECT ", event_columns!(), " FROM events"),
        filter.limit,
        rows::event,
        |e| e.id,
        "listing events",
    )
}

/// Moves the next try of up to `?3` write-backs due by `?1` to `?2`, oldest first.
const CLAIM_WRITE_BACKS: &str = concat!(
    "UPDATE events SET next_write_back_at = ?2 WHERE id IN (SELECT id FROM events ",
    "INDEXED BY events_write_back_due WHERE state = 'write_back_failed' ",
    "AND next_write_back_at <= ?1 ORDER BY next_write_back_at, id LIMIT ?3) RETURNING ",
    event_columns!()
);

pub(super) fn claim_write_backs(
    conn: &Connection,
    now: i64,
    until: i64,
    limit: u32,
) -> StoreResult<Vec<Event>> {
    let mut events = query_all(
        conn,
        CLAIM_WRITE_BACKS,
        params![now, until, limit],
        rows::event,
        "claiming write-backs",
    )?;
    events.sort_by_key(|e| e.id);
    Ok(events)
}

/// Counts event `event` of `actor` against `worker`'s limit of `limit` admissions after
/// `since` (the writer runs one operation at a time, so the count and the insert are atomic).
pub(super) fn admit_actor(
    conn: &Connection,
    worker: &str,
    actor: &str,
    event: EventId,
    limit: u32,
    since: i64,
    now: i64,
) -> StoreResult<bool> {
    let context = "counting an actor's events";
    // Admissions that left every window of this worker count for nothing any more.
    conn.execute(
        "DELETE FROM actor_admissions WHERE worker = ?1 AND admitted_at <= ?2",
        params![worker, since],
    )
    .map_err(db_err(context))?;
    let (admitted, before): (i64, bool) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(MAX(event_id = ?3), 0) FROM actor_admissions \
             WHERE worker = ?1 AND actor = ?2",
            params![worker, actor, event],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(db_err(context))?;
    if before {
        return Ok(true);
    }
    if admitted >= i64::from(limit) {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO actor_admissions (worker, actor, event_id, admitted_at) \
         VALUES (?1, ?2, ?3, ?4)",
        params![worker, actor, event, now],
    )
    .map_err(db_err(context))?;
    Ok(true)
}

/// Claims event `?1` for its first write-back until `?3`, unless claimed past `?2`.
const CLAIM_WRITE_BACK: &str = concat!(
    "UPDATE events SET next_write_back_at = ?3 WHERE id = ?1 ",
    "AND state IN ('matched', 'dispatched') ",
    "AND (next_write_back_at IS NULL OR next_write_back_at <= ?2) RETURNING ",
    event_columns!()
);

pub(super) fn claim_write_back(
    conn: &Connection,
    id: EventId,
    now: i64,
    until: i64,
) -> StoreResult<Option<Event>> {
    query_opt(
        conn,
        CLAIM_WRITE_BACK,
        params![id, now, until],
        rows::event,
        "claiming a write-back",
    )
}

pub(super) fn renew_leases(
    conn: &Connection,
    claims: &[(TaskId, u32)],
    until: i64,
) -> StoreResult<u64> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE tasks SET lease_expires_at = ?3 \
             WHERE id = ?1 AND attempt = ?2 AND state = 'dispatched'",
        )
        .map_err(db_err("renewing leases"))?;
    let mut renewed = 0;
    for (id, attempt) in claims {
        renewed += statement
            .execute(params![id, attempt, until])
            .map_err(db_err("renewing leases"))? as u64;
    }
    Ok(renewed)
}

// ---- tasks ----

/// Inserts `task` (its payload as `payload_json`; `task.payload` is not read) made by
/// `trigger`, or returns the task of the same (event, worker) or (worker, idempotency key).
pub(super) fn create_task(
    conn: &Connection,
    task: &NewTask,
    payload_json: &str,
    trigger: TaskTrigger,
    now: i64,
) -> StoreResult<Inserted<Task>> {
    let (worker, event_id, next_run_at) = (task.worker.as_str(), task.event_id, task.next_run_at);
    let idempotency_key = task.idempotency_key.as_deref();
    if let Some(event_id) = event_id
        && get_event(conn, event_id)?.is_none()
    {
        return Err(not_found("event", event_id));
    }
    let inserted = query_opt(
        conn,
        concat!(
            "INSERT INTO tasks (worker, event_id, idempotency_key, payload, state, next_run_at, ",
            "created_at, updated_at, origin) VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?6, ?7) ",
            "ON CONFLICT DO NOTHING RETURNING ",
            task_columns!()
        ),
        params![
            worker,
            event_id,
            idempotency_key,
            payload_json,
            next_run_at,
            now,
            trigger.as_str()
        ],
        rows::task,
        "creating a task",
    )?;
    if let Some(record) = inserted {
        return Ok(Inserted {
            record,
            created: true,
        });
    }
    let mut existing = None;
    if let Some(event_id) = event_id {
        existing = query_opt(
            conn,
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE event_id = ?1 AND worker = ?2"
            ),
            params![event_id, worker],
            rows::task,
            "reading a duplicate task",
        )?;
    }
    if existing.is_none()
        && let Some(key) = idempotency_key
    {
        existing = query_opt(
            conn,
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE worker = ?1 AND idempotency_key = ?2"
            ),
            params![worker, key],
            rows::task,
            "reading a duplicate task",
        )?;
    }
    let record = existing.ok_or_else(|| StoreError::Database {
        context: "creating a task".into(),
        message: "the conflicting task vanished".into(),
    })?;
    Ok(Inserted {
        record,
        created: false,
    })
}

pub(super) fn get_task(conn: &Connection, id: TaskId) -> StoreResult<Option<Task>> {
    query_opt(
        conn,
        concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1"),
        [id],
        rows::task,
        "reading a task",
    )
}

// The queries that find due work name their partial index. Without `ANALYZE` statistics SQLite
// prefers the `(state, id)` index for `state = '...'` and then sorts every row in that state: each
// claim of one task would cost O(backlog). `query_plans_walk_the_due_indexes` guards the plans.

/// Claims up to `?3` tasks due by `?1`, oldest first, leasing them until `?2`.
const CLAIM_DUE: &str = concat!(
    "UPDATE tasks SET state = 'dispatched', attempt = attempt + 1, tries = tries + 1, runs = runs + 1, ",
    "lease_expires_at = ?2, updated_at = ?1 WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_due ",
    "WHERE state = 'pending' AND next_run_at <= ?1 AND ",
    paused_excluded!(),
    " ORDER BY next_run_at, id LIMIT ?3) ",
    "RETURNING ",
    task_columns!()
);

/// Puts back to `pending` every task whose lease expired by `?1`.
const REQUEUE_EXPIRED: &str = concat!(
    "UPDATE tasks INDEXED BY tasks_lease SET state = 'pending', next_run_at = ?1, ",
    "lease_expires_at = NULL, reserved_slot = NULL, updated_at = ?1 ",
    "WHERE state = 'dispatched' AND lease_expires_at <= ?1 RETURNING ",
    task_columns!()
);

/// The earliest pending run, lease expiry and write-back retry: each subquery reads the first
/// entry of one partial index.
const NEXT_DUE: &str = concat!(
    "SELECT (SELECT next_run_at FROM tasks INDEXED BY tasks_due WHERE state = 'pending' AND ",
    paused_excluded!(),
    " ORDER BY next_run_at LIMIT 1), ",
    "(SELECT lease_expires_at FROM tasks INDEXED BY tasks_lease WHERE state = 'dispatched' ",
    "ORDER BY lease_expires_at LIMIT 1), ",
    "(SELECT next_write_back_at FROM events INDEXED BY events_write_back_due ",
    "WHERE state = 'write_back_failed' ",
    "AND next_write_back_at IS NOT NULL ORDER BY next_write_back_at LIMIT 1)"
);

pub(super) fn claim_due(
    conn: &Connection,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> StoreResult<Vec<Task>> {
    let mut tasks = query_all(
        conn,
        CLAIM_DUE,
        params![now, lease_until, limit],
        rows::task,
        "claiming tasks",
    )?;
    // RETURNING gives no order; callers dispatch the oldest first.
    tasks.sort_by_key(|t| (t.next_run_at, t.id));
    for event in tasks.iter().filter_map(|t| t.event_id) {
        conn.prepare_cached(
            "UPDATE events SET state = 'dispatched', updated_at = ?2 \
             WHERE id = ?1 AND state = 'matched'",
        )
        .and_then(|mut statement| statement.execute(params![event, now]))
        .map_err(db_err("marking claimed tasks' events dispatched"))?;
    }
    Ok(tasks)
}

/// SQL of the fenced moves out of `dispatched`: `?1` id, `?2` attempt, `?3` now, then extras.
pub(super) const COMPLETE: &str = concat!(
    "UPDATE tasks SET state = 'completed', result = ?4, error = NULL, lease_expires_at = NULL, ",
    "reserved_slot = NULL, updated_at = ?3 WHERE id = ?1 AND attempt = ?2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
pub(super) const FAIL: &str = concat!(
    "UPDATE tasks SET state = ?4, error = ?5, lease_expires_at = NULL, reserved_slot = NULL, ",
    "updated_at = ?3 ",
    "WHERE id = ?1 AND attempt = ?2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
pub(super) const RESCHEDULE: &str = concat!(
    "UPDATE tasks SET state = 'pending', next_run_at = ?4, error = ?5, lease_expires_at = NULL, ",
    "reserved_slot = NULL, updated_at = ?3 WHERE id = ?1 AND attempt = ?2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);
pub(super) const RELEASE: &str = concat!(
    "UPDATE tasks SET state = 'pending', next_run_at = ?4, tries = tries - 1, runs = runs - 1, ",
    "lease_expires_at = NULL, reserved_slot = CASE WHEN ?5 THEN ?4 END, updated_at = ?3 ",
    "WHERE id = ?1 AND attempt = ?2 AND state = 'dispatched' RETURNING ",
    task_columns!()
);

/// Runs one fenced move; if no row matched, says whether the task is missing or the attempt
/// stale.
pub(super) fn fenced(
    conn: &Connection,
    sql: &str,
    id: TaskId,
    attempt: u32,
    params: &[&dyn ToSql],
) -> StoreResult<Task> {
    match query_opt(conn, sql, params, rows::task, "finishing a task attempt")? {
        Some(task) => Ok(task),
        None => {
            let task = get_task(conn, id)?.ok_or_else(|| not_found("task", id))?;
            Err(StoreError::StaleAttempt {
                id,
                attempt,
                current_attempt: task.attempt,
                state: task.state,
            })
        }
    }
}

/// SQL of the unfenced moves: `?1` id, `?2` now, then extras.
pub(super) const RETRY: &str = concat!(
    "UPDATE tasks SET state = 'pending', tries = 0, next_run_at = ?3, result = NULL, ",
    "reserved_slot = NULL, updated_at = ?2 WHERE id = ?1 AND state IN ('dead', 'failed') RETURNING ",
    task_columns!()
);
pub(super) const CANCEL: &str = concat!(
    "UPDATE tasks SET state = 'canceled', lease_expires_at = NULL, reserved_slot = NULL, ",
    "updated_at = ?2 ",
    "WHERE id = ?1 AND state IN ('pending', 'dispatched') RETURNING ",
    task_columns!()
);

/// Runs one unfenced move to `to`; if no row matched, says whether the task is missing or in a
/// state the move does not start from.
pub(super) fn transition(
    conn: &Connection,
    sql: &str,
    id: TaskId,
    to: TaskState,
    params: &[&dyn ToSql],
) -> StoreResult<Task> {
    match query_opt(conn, sql, params, rows::task, "changing a task's state")? {
        Some(task) => Ok(task),
        None => {
            let task = get_task(conn, id)?.ok_or_else(|| not_found("task", id))?;
            Err(StoreError::InvalidTransition {
                what: "task",
                id,
                from: task.state.to_string(),
                to: to.to_string(),
            })
        }
    }
}

pub(super) fn requeue_dispatched(
    conn: &Connection,
    now: i64,
    only_expired: bool,
) -> StoreResult<Vec<Task>> {
    let sql = if only_expired {
        REQUEUE_EXPIRED
    } else {
        concat!(
            "UPDATE tasks SET state = 'pending', next_run_at = ?1, lease_expires_at = NULL, reserved_slot = NULL, ",
            "updated_at = ?1 WHERE state = 'dispatched' RETURNING ",
            task_columns!()
        )
    };
    let mut tasks = query_all(conn, sql, [now], rows::task, "requeueing dispatched tasks")?;
    tasks.sort_by_key(|t| t.id);
    Ok(tasks)
}

pub(super) fn list_tasks(conn: &Connection, filter: &TaskFilter) -> StoreResult<Page<Task>> {
    let mut filters = Filters::default();
    filters.add(
        "state = ?",
        filter.state.map(|s| SqlValue::Text(s.as_str().into())),
    );
    filters.add("worker = ?", filter.worker.clone().map(SqlValue::Text));
    filters.add("event_id = ?", filter.event_id.map(SqlValue::Integer));
    // Ids grow with creation, so the first id created since then bounds the walk (found on
    // `tasks_created`); the time itself is still checked, the bound only saves reading the rest.
    filters.add(
        "id >= (SELECT MIN(id) FROM tasks WHERE created_at >= ?)",
        filter.created_since.map(SqlValue::Integer),
    );
    filters.add(
        "created_at >= ?",
        filter.created_since.map(SqlValue::Integer),
    );
    filters.add("id < ?", filter.cursor.map(SqlValue::Integer));
    filters.page(
        conn,
        concat!("SELECT ", task_columns!(), " FROM tasks"),
        filter.limit,
        rows::task,
        |t| t.id,
        "listing tasks",
    )
}

pub(super) fn task_counts(
    conn: &Connection,
    worker: Option<&str>,
) -> StoreResult<BTreeMap<TaskState, u64>> {
    let mut counts: BTreeMap<TaskState, u64> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
    let rows: Vec<(TaskState, u64)> = query_all(
        conn,
        "SELECT state, COUNT(*) FROM tasks WHERE (?1 IS NULL OR worker = ?1) GROUP BY state",
        [worker],
        |row| Ok((task_state(row, 0)?, unsigned(row, 1)?)),
        "counting tasks",
    )?;
    counts.extend(rows);
    Ok(counts)
}

/// Every worker's tasks per state: one pass over `tasks_worker_state`, in its order, reading no
/// table page and sorting nothing.
const COUNTS_PER_WORKER: &str = "SELECT worker, state, COUNT(*) FROM tasks \
     INDEXED BY tasks_worker_state GROUP BY worker, state";

pub(super) fn task_counts_per_worker(
    conn: &Connection,
) -> StoreResult<BTreeMap<String, BTreeMap<TaskState, u64>>> {
    let rows: Vec<(String, TaskState, u64)> = query_all(
        conn,
        COUNTS_PER_WORKER,
        [],
        |row| Ok((row.get(0)?, task_state(row, 1)?, unsigned(row, 2)?)),
        "counting each worker's tasks",
    )?;
    Ok(crate::counts_per_worker(rows))
}

/// The ended tasks per bucket: a range of `tasks_updated`, which holds every column it reads
/// (named: without statistics the planner would take `tasks_state`, every ended task ever).
const TASK_ACTIVITY: &str = "SELECT (updated_at / ?2) * ?2 AS start, SUM(state = 'completed'), \
     SUM(state IN ('failed', 'dead')) FROM tasks INDEXED BY tasks_updated \
     WHERE updated_at >= ?1 AND state IN ('completed', 'failed', 'dead') \
     GROUP BY start ORDER BY start";

/// The failing workers: a range of `tasks_updated` too.
const FAILING_WORKERS: &str = "SELECT worker, COUNT(*) AS failed FROM tasks INDEXED BY tasks_updated \
     WHERE updated_at >= ?1 AND state IN ('failed', 'dead') \
     GROUP BY worker ORDER BY failed DESC, worker LIMIT ?2";

pub(super) fn task_activity(
    conn: &Connection,
    since: i64,
    bucket_ms: i64,
) -> StoreResult<Vec<ActivityBucket>> {
    query_all(
        conn,
        TASK_ACTIVITY,
        params![since, bucket_ms],
        |row| {
            Ok(ActivityBucket {
                start: row.get(0)?,
                completed: unsigned(row, 1)?,
                failed: unsigned(row, 2)?,
            })
        },
        "counting ended tasks per bucket",
    )
}

pub(super) fn failing_workers(
    conn: &Connection,
    since: i64,
    limit: u32,
) -> StoreResult<Vec<WorkerFailures>> {
    query_all(
        conn,
        FAILING_WORKERS,
        params![since, limit],
        |row| {
            Ok(WorkerFailures {
                worker: row.get(0)?,
                failed: unsigned(row, 1)?,
            })
        },
        "finding the failing workers",
    )
}

pub(super) fn next_due(conn: &Connection) -> StoreResult<NextDue> {
    conn.prepare_cached(NEXT_DUE)
        .and_then(|mut s| {
            s.query_row([], |row| {
                Ok(NextDue {
                    task_run_at: row.get(0)?,
                    lease_expires_at: row.get(1)?,
                    write_back_at: row.get(2)?,
                })
            })
        })
        .map_err(db_err("reading the next due time"))
}

// ---- console output of attempts ----

pub(super) fn record_console(
    conn: &Connection,
    task: TaskId,
    attempt: u32,
    lines_json: &str,
    now: i64,
) -> StoreResult<()> {
    // The writer's batch transaction holds the write lock: the task cannot go in between.
    let exists = query_opt(
        conn,
        "SELECT 1 FROM tasks WHERE id = ?1",
        [task],
        |_| Ok(()),
        "checking a task",
    )?;
    if exists.is_none() {
        return Err(not_found("task", task));
    }
    conn.prepare_cached(
        "INSERT INTO task_console (task_id, attempt, lines, recorded_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (task_id, attempt) DO UPDATE SET lines = excluded.lines, \
         recorded_at = excluded.recorded_at",
    )
    .and_then(|mut s| s.execute(params![task, attempt, lines_json, now]))
    .map_err(db_err("storing an attempt's console output"))?;
    Ok(())
}

// ---- attempts ----

pub(super) fn record_attempt(
    conn: &Connection,
    task: TaskId,
    attempt: &TaskAttempt,
) -> StoreResult<()> {
    let stored = conn
        .prepare_cached(concat!(
            "INSERT INTO task_attempts (task_id, claim, started_at, ended_at, node, ",
            "worker_revision, outcome, error) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 ",
            "WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?1) ",
            "ON CONFLICT (task_id, claim) DO UPDATE SET started_at = excluded.started_at, ",
            "ended_at = excluded.ended_at, node = excluded.node, ",
            "worker_revision = excluded.worker_revision, outcome = excluded.outcome, ",
            "error = excluded.error"
        ))
        .and_then(|mut s| {
            s.execute(params![
                task,
                attempt.claim,
                attempt.started_at,
                attempt.ended_at,
                attempt.node,
                attempt.worker_revision,
                attempt.outcome.as_str(),
                attempt.error,
            ])
        })
        .map_err(db_err("storing a task attempt"))?;
    if stored == 0 {
        return Err(not_found("task", task));
    }
    Ok(())
}

pub(super) fn task_attempts(conn: &Connection, task: TaskId) -> StoreResult<Vec<TaskAttempt>> {
    query_all(
        conn,
        concat!(
            "SELECT claim, started_at, ended_at, node, worker_revision, outcome, error ",
            "FROM task_attempts WHERE task_id = ?1 ORDER BY claim"
        ),
        [task],
        rows::attempt,
        "reading a task's attempts",
    )
}

pub(super) fn task_console(
    conn: &Connection,
    task: TaskId,
) -> StoreResult<Vec<AttemptConsoleLine>> {
    let attempts = query_all(
        conn,
        "SELECT attempt, lines FROM task_console WHERE task_id = ?1 ORDER BY attempt",
        [task],
        |row| Ok((row.get::<_, u32>(0)?, rows::console_lines(row, 1)?)),
        "reading a task's console output",
    )?;
    Ok(attempts
        .into_iter()
        .flat_map(|(attempt, lines)| crate::attempt_lines(attempt, lines))
        .collect())
}

// ---- cron ----

pub(super) fn record_cron_fire(
    conn: &Connection,
    worker: &str,
    fire_time: i64,
    payload_json: &str,
    now: i64,
) -> StoreResult<Option<Task>> {
    if get_worker(conn, worker)?.is_none() {
        return Err(StoreError::NotFound {
            what: "worker",
            key: worker.to_owned(),
        });
    }
    // The writer holds the write lock for the whole batch, so this check and the insert below
    // cannot interleave with another writer's.
    let seen = query_opt(
        conn,
        "SELECT 1 FROM cron_fires WHERE worker = ?1 AND fire_time = ?2",
        params![worker, fire_time],
        |_| Ok(()),
        "checking a cron fire",
    )?;
    if seen.is_some() {
        return Ok(None);
    }
    let fire = NewTask {
        worker: worker.to_owned(),
        event_id: None,
        idempotency_key: None,
        payload: serde_json::Value::Null,
        next_run_at: fire_time,
    };
    let task = create_task(conn, &fire, payload_json, TaskTrigger::Cron, now)?.record;
    conn.prepare_cached("INSERT INTO cron_fires (worker, fire_time, task_id) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![worker, fire_time, task.id]))
        .map_err(db_err("recording a cron fire"))?;
    Ok(Some(task))
}

/// Claims `worker`'s fire at `fire_time` as skipped: a `cron_fires` row with no task (id 0).
pub(super) fn record_cron_skip(
    conn: &Connection,
    worker: &str,
    fire_time: i64,
) -> StoreResult<bool> {
    if get_worker(conn, worker)?.is_none() {
        return Err(StoreError::NotFound {
            what: "worker",
            key: worker.to_owned(),
        });
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO cron_fires (worker, fire_time, task_id) VALUES (?1, ?2, 0) \
             ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![worker, fire_time]))
        .map_err(db_err("recording a skipped cron fire"))?;
    Ok(inserted == 1)
}

pub(super) fn last_cron_fire(conn: &Connection, worker: &str) -> StoreResult<Option<i64>> {
    // MAX over the primary key's prefix: one index probe.
    conn.prepare_cached("SELECT MAX(fire_time) FROM cron_fires WHERE worker = ?1")
        .and_then(|mut s| s.query_row([worker], |row| row.get(0)))
        .map_err(db_err("reading the last cron fire"))
}

// ---- /logs ----

pub(super) fn append_logs(
    conn: &Connection,
    entries: &[(LogRecord, Option<String>)],
) -> StoreResult<()> {
    let mut statement = conn
        .prepare_cached(concat!(
            "INSERT INTO logs (trace_id, ts, action, outcome, event_id, task_id, worker, attempt, ",
            "error, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))
        .map_err(db_err("appending logs"))?;
    for (e, detail_json) in entries {
        statement
            .execute(params![
                e.trace_id,
                e.ts,
                e.action,
                e.outcome.as_str(),
                e.event_id,
                e.task_id,
                e.worker,
                e.attempt,
                e.error,
                detail_json
            ])
            .map_err(db_err("appending logs"))?;
    }
    Ok(())
}

pub(super) fn query_logs(conn: &Connection, query: &LogQuery) -> StoreResult<Page<LogEntry>> {
    let mut filters = Filters::default();
    filters.add("event_id = ?", query.event_id.map(SqlValue::Integer));
    filters.add("task_id = ?", query.task_id.map(SqlValue::Integer));
    filters.add("worker = ?", query.worker.clone().map(SqlValue::Text));
    filters.add("action = ?", query.action.clone().map(SqlValue::Text));
    filters.add(
        "outcome = ?",
        query.outcome.map(|o| SqlValue::Text(o.as_str().into())),
    );
    filters.add("ts >= ?", query.since.map(SqlValue::Integer));
    filters.add("trace_id = ?", query.trace_id.clone().map(SqlValue::Text));
    filters.add("id < ?", query.cursor.map(SqlValue::Integer));
    filters.page(
        conn,
        concat!("SELECT ", log_columns!(), " FROM logs"),
        query.limit,
        rows::log,
        |e| e.id,
        "querying logs",
    )
}

pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<Pruned> {
    let delete = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([before]))
            .map(|n| n as u64)
            .map_err(db_err("pruning"))
    };
    Ok(Pruned {
        logs: delete("DELETE FROM logs WHERE ts < ?1")?,
        cron_fires: delete("DELETE FROM cron_fires WHERE fire_time < ?1")?,
    })
}

// ---- helpers ----

/// Reads a count or version, which SQLite stores as a signed integer that is never negative.
fn unsigned(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Integer,
            Box::new(err),
        )
    })
}

/// Reads a task's state column.
fn task_state(row: &Row<'_>, index: usize) -> rusqlite::Result<TaskState> {
    let state: String = row.get(index)?;
    state.parse().map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
    })
}

fn not_found(what: &'static str, id: i64) -> StoreError {
    StoreError::NotFound {
        what,
        key: id.to_string(),
    }
}

fn query_opt<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    context: &str,
) -> StoreResult<Option<T>> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, map).optional())
        .map_err(db_err(context))
}

fn query_all<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    context: &str,
) -> StoreResult<Vec<T>> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_map(params, map)?.collect())
        .map_err(db_err(context))
}

/// The optional `WHERE` conditions of a listing, in parameter order.
#[derive(Default)]
struct Filters {
    conditions: Vec<&'static str>,
    values: Vec<SqlValue>,
}

impl Filters {
    fn add(&mut self, condition: &'static str, value: Option<SqlValue>) {
        if let Some(value) = value {
            self.conditions.push(condition);
            self.values.push(value);
        }
    }

    /// Runs `select` with the conditions, newest first, one page.
    fn page<T>(
        mut self,
        conn: &Connection,
        select: &str,
        limit: Option<u32>,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
        id_of: impl Fn(&T) -> i64,
        context: &str,
    ) -> StoreResult<Page<T>> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        let mut sql = select.to_owned();
        if !self.conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        self.values.push(SqlValue::Integer(i64::from(limit)));
        let items = query_all(conn, &sql, params_from_iter(self.values), map, context)?;
        let next_cursor = if items.len() == limit as usize {
            items.last().map(&id_of)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_plan(conn: &Connection, sql: &str) -> String {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = vec![SqlValue::Null; statement.parameter_count()];
        let details = statement
            .query_map(params_from_iter(unbound), |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        details.join("\n")
    }

    #[test]
    fn query_plans_walk_the_due_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, ":memory:", super::super::schema::LATEST_VERSION)
            .unwrap();
        for (sql, indexes) in [
            (CLAIM_DUE, &["tasks_due"][..]),
            (EVENT_BY_BODY, &["events_body_hash"][..]),
            (CLAIM_WRITE_BACKS, &["events_write_back_due"][..]),
            (REQUEUE_EXPIRED, &["tasks_lease"][..]),
            (
                NEXT_DUE,
                &["tasks_due", "tasks_lease", "events_write_back_due"][..],
            ),
        ] {
            let plan = query_plan(&conn, sql);
            // A sort means the query reads every row in the state instead of the index's head.
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
            for index in indexes {
                assert!(
                    plan.split_whitespace().any(|word| word == *index),
                    "{sql}\n{plan}"
                );
            }
        }
    }

    #[test]
    fn every_workers_counts_are_one_pass_over_a_covering_index_without_a_sort() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, ":memory:", super::super::schema::LATEST_VERSION)
            .unwrap();
        let plan = query_plan(&conn, COUNTS_PER_WORKER);
        assert!(
            plan.contains("USING COVERING INDEX tasks_worker_state")
                && !plan.contains("TEMP B-TREE"),
            "{plan}"
        );
    }

    #[test]
    fn the_overviews_queries_read_a_range_of_one_covering_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, ":memory:", super::super::schema::LATEST_VERSION)
            .unwrap();
        for sql in [TASK_ACTIVITY, FAILING_WORKERS] {
            let plan = query_plan(&conn, sql);
            assert!(
                plan.contains("USING COVERING INDEX tasks_updated (updated_at>?)"),
                "{sql}\n{plan}"
            );
        }
    }
}
