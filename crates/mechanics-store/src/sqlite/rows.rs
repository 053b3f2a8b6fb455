//! Row mapping of the SQLite backend (the column lists are `crate::columns`).

use std::str::FromStr;

use mechanics_proto::domain::{
    ConsoleLine, Event, LogEntry, LogRecord, RemoteNode, Source, Task, TaskAttempt,
    TranspiledModule, Worker,
};
use rusqlite::Row;
use rusqlite::types::Type;
use serde::de::DeserializeOwned;

pub(super) use crate::columns::{
    event_columns, log_columns, node_columns, paused_excluded, source_columns, task_columns,
    worker_columns,
};

fn conversion(
    index: usize,
    err: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err))
}

fn json<T: DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|err| conversion(index, err))
}

fn opt_json<T: DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(index)?;
    text.map(|text| serde_json::from_str(&text).map_err(|err| conversion(index, err)))
        .transpose()
}

fn parsed<T>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(index)?;
    text.parse().map_err(|err| conversion(index, err))
}

pub(super) fn task(row: &Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: row.get(0)?,
        worker: row.get(1)?,
        event_id: row.get(2)?,
        idempotency_key: row.get(3)?,
        payload: json(row, 4)?,
        state: parsed(row, 5)?,
        attempt: row.get(6)?,
        tries: row.get(7)?,
        next_run_at: row.get(8)?,
        lease_expires_at: row.get(9)?,
        result: opt_json(row, 10)?,
        error: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        reserved_slot: row.get(14)?,
        runs: row.get(15)?,
        trigger: parsed(row, 16)?,
    })
}

pub(super) fn event(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: row.get(0)?,
        source: row.get(1)?,
        delivery_id: row.get(2)?,
        event_type: row.get(3)?,
        payload: json(row, 4)?,
        state: parsed(row, 5)?,
        error: row.get(6)?,
        write_back_attempts: row.get(7)?,
        next_write_back_at: row.get(8)?,
        received_at: row.get(9)?,
        updated_at: row.get(10)?,
    })
}

pub(super) fn worker(row: &Row<'_>) -> rusqlite::Result<Worker> {
    let module_js: Option<String> = row.get(6)?;
    let source_map: Option<serde_json::Value> = opt_json(row, 7)?;
    Ok(Worker {
        spec: json(row, 1)?,
        module_source: row.get(2)?,
        transpiled: module_js
            .zip(source_map)
            .map(|(javascript, source_map)| TranspiledModule {
                javascript,
                source_map,
            }),
        revision: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        paused: row.get(8)?,
    })
}

pub(super) fn source(row: &Row<'_>) -> rusqlite::Result<Source> {
    Ok(Source {
        spec: json(row, 1)?,
        revision: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

pub(super) fn remote_node(row: &Row<'_>) -> rusqlite::Result<RemoteNode> {
    Ok(RemoteNode {
        spec: json(row, 1)?,
        revision: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

/// The lines of one attempt's console row (a JSON array) at column `index`.
pub(super) fn console_lines(row: &Row<'_>, index: usize) -> rusqlite::Result<Vec<ConsoleLine>> {
    json(row, index)
}

pub(super) fn log(row: &Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        id: row.get(0)?,
        record: LogRecord {
            trace_id: row.get(1)?,
            ts: row.get(2)?,
            action: row.get(3)?,
            outcome: parsed(row, 4)?,
            event_id: row.get(5)?,
            task_id: row.get(6)?,
            worker: row.get(7)?,
            attempt: row.get(8)?,
            error: row.get(9)?,
            detail: opt_json(row, 10)?,
        },
    })
}

/// A `task_attempts` row: claim, started_at, ended_at, node, worker_revision, outcome, error.
pub(super) fn attempt(row: &Row<'_>) -> rusqlite::Result<TaskAttempt> {
    let outcome: String = row.get(5)?;
    Ok(TaskAttempt {
        claim: row.get(0)?,
        started_at: row.get(1)?,
        ended_at: row.get(2)?,
        node: row.get(3)?,
        worker_revision: row.get(4)?,
        outcome: outcome.parse().map_err(|err| conversion(5, err))?,
        error: row.get(6)?,
    })
}
