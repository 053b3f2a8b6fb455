//! Column lists and row mapping of the PostgreSQL backend (the same columns as SQLite's, so a
//! record reads the same from either).

use std::str::FromStr;

use mechanics_proto::api::Instance;
use mechanics_proto::domain::{
    ConsoleLine, Event, LogEntry, LogRecord, RemoteNode, Source, Task, TaskAttempt,
    TranspiledModule, Worker,
};
use serde::de::DeserializeOwned;
use tokio_postgres::Row;

use crate::{StoreError, StoreResult};

pub(super) use crate::columns::{
    event_columns, log_columns, node_columns, paused_excluded, source_columns, task_columns,
    worker_columns,
};

fn corrupt(column: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        context: format!("reading the column {column}"),
        message: err.to_string(),
    }
}

fn json<T: DeserializeOwned>(row: &Row, index: usize) -> StoreResult<T> {
    let text: &str = row.get(index);
    serde_json::from_str(text).map_err(|err| corrupt(row.columns()[index].name(), err))
}

fn opt_json<T: DeserializeOwned>(row: &Row, index: usize) -> StoreResult<Option<T>> {
    let text: Option<&str> = row.get(index);
    text.map(|text| {
        serde_json::from_str(text).map_err(|err| corrupt(row.columns()[index].name(), err))
    })
    .transpose()
}

fn parsed<T>(row: &Row, index: usize) -> StoreResult<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: &str = row.get(index);
    text.parse()
        .map_err(|err| corrupt(row.columns()[index].name(), err))
}

/// A count stored as `BIGINT` that the domain keeps as `u32`.
fn small(row: &Row, index: usize) -> StoreResult<u32> {
    let value: i64 = row.get(index);
    u32::try_from(value).map_err(|err| corrupt(row.columns()[index].name(), err))
}

pub(super) fn task(row: &Row) -> StoreResult<Task> {
    Ok(Task {
        id: row.get(0),
        worker: row.get(1),
        event_id: row.get(2),
        idempotency_key: row.get(3),
        payload: json(row, 4)?,
        state: parsed(row, 5)?,
        attempt: small(row, 6)?,
        tries: small(row, 7)?,
        next_run_at: row.get(8),
        lease_expires_at: row.get(9),
        result: opt_json(row, 10)?,
        error: row.get(11),
        created_at: row.get(12),
        updated_at: row.get(13),
        reserved_slot: row.get(14),
        runs: small(row, 15)?,
        trigger: parsed(row, 16)?,
    })
}

pub(super) fn event(row: &Row) -> StoreResult<Event> {
    Ok(Event {
        id: row.get(0),
        source: row.get(1),
        delivery_id: row.get(2),
        event_type: row.get(3),
        payload: json(row, 4)?,
        state: parsed(row, 5)?,
        error: row.get(6),
        write_back_attempts: small(row, 7)?,
        next_write_back_at: row.get(8),
        received_at: row.get(9),
        updated_at: row.get(10),
    })
}

pub(super) fn worker(row: &Row) -> StoreResult<Worker> {
    let module_js: Option<String> = row.get(6);
    let source_map: Option<serde_json::Value> = opt_json(row, 7)?;
    Ok(Worker {
        spec: json(row, 1)?,
        module_source: row.get(2),
        transpiled: module_js
            .zip(source_map)
            .map(|(javascript, source_map)| TranspiledModule {
                javascript,
                source_map,
            }),
        revision: row.get(3),
        created_at: row.get(4),
        updated_at: row.get(5),
        paused: row.get(8),
    })
}

pub(super) fn source(row: &Row) -> StoreResult<Source> {
    Ok(Source {
        spec: json(row, 1)?,
        revision: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    })
}

pub(super) fn remote_node(row: &Row) -> StoreResult<RemoteNode> {
    Ok(RemoteNode {
        spec: json(row, 1)?,
        revision: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    })
}

/// One attempt's console row: `attempt, lines` (a JSON array).
pub(super) fn console_attempt(row: &Row) -> StoreResult<(u32, Vec<ConsoleLine>)> {
    Ok((small(row, 0)?, json(row, 1)?))
}

/// A `task_attempts` row: claim, started_at, ended_at, node, worker_revision, outcome, error.
pub(super) fn attempt(row: &Row) -> StoreResult<TaskAttempt> {
    Ok(TaskAttempt {
        claim: small(row, 0)?,
        started_at: row.get(1),
        ended_at: row.get(2),
        node: row.get(3),
        worker_revision: row.get(4),
        outcome: parsed(row, 5)?,
        error: row.get(6),
    })
}

pub(super) fn log(row: &Row) -> StoreResult<LogEntry> {
    let attempt: Option<i64> = row.get(8);
    Ok(LogEntry {
        id: row.get(0),
        record: LogRecord {
            trace_id: row.get(1),
            ts: row.get(2),
            action: row.get(3),
            outcome: parsed(row, 4)?,
            event_id: row.get(5),
            task_id: row.get(6),
            worker: row.get(7),
            attempt: attempt
                .map(|a| u32::try_from(a).map_err(|err| corrupt("attempt", err)))
                .transpose()?,
            error: row.get(9),
            detail: opt_json(row, 10)?,
        },
    })
}

pub(super) fn instance(row: &Row) -> StoreResult<Instance> {
    Ok(Instance {
        id: row.get(0),
        address: row.get(1),
        version: row.get(2),
        started_at: row.get(3),
        last_seen: row.get(4),
    })
}
