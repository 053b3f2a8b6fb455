//! The column lists both backends select, in the order their row mappings read them. They are
//! macros so that statements stay `&'static str` literals (`concat!`) and hit the
//! prepared-statement caches without formatting.

macro_rules! task_columns {
    () => {
        "id, worker, event_id, idempotency_key, payload, state, attempt, tries, next_run_at, \
         lease_expires_at, result, error, created_at, updated_at, reserved_slot, runs, origin"
    };
}
macro_rules! event_columns {
    () => {
        "id, source, delivery_id, event_type, payload, state, error, write_back_attempts, \
         next_write_back_at, received_at, updated_at"
    };
}
macro_rules! worker_columns {
    () => {
        "name, spec, module_source, revision, created_at, updated_at, module_js, source_map, paused"
    };
}
macro_rules! source_columns {
    () => {
        "name, spec, revision, created_at, updated_at"
    };
}
macro_rules! node_columns {
    () => {
        "name, spec, revision, created_at, updated_at"
    };
}
macro_rules! log_columns {
    () => {
        "id, trace_id, ts, action, outcome, event_id, task_id, worker, attempt, error, detail"
    };
}
/// The condition on a `tasks` row that its worker is not paused, for the queries that find due
/// work. A task whose worker was deleted is still due (its history runs out as before).
macro_rules! paused_excluded {
    () => {
        "NOT EXISTS (SELECT 1 FROM workers w WHERE w.name = tasks.worker AND w.paused)"
    };
}
pub(crate) use {
    event_columns, log_columns, node_columns, paused_excluded, source_columns, task_columns,
    worker_columns,
};
