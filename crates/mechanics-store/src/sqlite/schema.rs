//! The SQLite schema as forward-only migrations: `MIGRATIONS[n]` takes a database from
//! `PRAGMA user_version` n to n + 1. Never edit a shipped migration; append a new one (and the
//! migration test covers it from every earlier version).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::db_err;
use crate::{StoreError, StoreResult};

/// Each entry moves the schema one version up.
const MIGRATIONS: &[&str] = &[
    // 1: the whole first schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT;
    INSERT INTO meta (key, value) VALUES ('registry_version', 0);

    CREATE TABLE workers (
        name          TEXT PRIMARY KEY,
        spec          TEXT NOT NULL,          -- WorkerSpec as JSON
        module_source TEXT,
        revision      INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE sources (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,             -- SourceSpec as JSON: secret references only
        revision   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;

    -- No foreign key to sources: events outlive a deleted source (recovery marks them failed).
    CREATE TABLE events (
        id                  INTEGER PRIMARY KEY,
        source              TEXT NOT NULL,
        delivery_id         TEXT NOT NULL,
        event_type          TEXT NOT NULL,
        payload             TEXT NOT NULL,
        state               TEXT NOT NULL CHECK (state IN ('received', 'matched', 'dispatched',
                                'completed', 'write_back_failed', 'failed', 'skipped')),
        error               TEXT,
        write_back_attempts INTEGER NOT NULL DEFAULT 0,
        next_write_back_at  INTEGER,
        received_at         INTEGER NOT NULL,
        updated_at          INTEGER NOT NULL,
        UNIQUE (source, delivery_id)
    ) STRICT;
    CREATE INDEX events_state ON events (state, id);
    CREATE INDEX events_write_back_due ON events (next_write_back_at)
        WHERE state = 'write_back_failed';

    -- No foreign key to workers: tasks outlive a deleted worker as history.
    CREATE TABLE tasks (
        id               INTEGER PRIMARY KEY,
        worker           TEXT NOT NULL,
        event_id         INTEGER REFERENCES events (id),
        idempotency_key  TEXT,
        payload          TEXT NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('pending', 'dispatched', 'completed',
                             'failed', 'dead', 'canceled')),
        attempt          INTEGER NOT NULL DEFAULT 0,
        tries            INTEGER NOT NULL DEFAULT 0,
        next_run_at      INTEGER NOT NULL,
        lease_expires_at INTEGER,
        result           TEXT,
        error            TEXT,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX tasks_event_worker ON tasks (event_id, worker) WHERE event_id IS NOT NULL;
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (worker, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_due ON tasks (next_run_at) WHERE state = 'pending';
    CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE state = 'dispatched';
    CREATE INDEX tasks_state ON tasks (state, id);
    CREATE INDEX tasks_worker ON tasks (worker, id);

    CREATE TABLE cron_fires (
        worker    TEXT NOT NULL REFERENCES workers (name) ON DELETE CASCADE,
        fire_time INTEGER NOT NULL,
        task_id   INTEGER NOT NULL,
        PRIMARY KEY (worker, fire_time)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX cron_fires_time ON cron_fires (fire_time);

    CREATE TABLE logs (
        id       INTEGER PRIMARY KEY,
        trace_id TEXT,
        ts       INTEGER NOT NULL,
        action   TEXT NOT NULL,
        outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'fail', 'skip', 'retry', 'deny')),
        event_id INTEGER,
        task_id  INTEGER,
        worker   TEXT,
        attempt  INTEGER,
        error    TEXT,
        detail   TEXT
    ) STRICT;
    CREATE INDEX logs_ts ON logs (ts);
    CREATE INDEX logs_event ON logs (event_id) WHERE event_id IS NOT NULL;
    CREATE INDEX logs_task ON logs (task_id) WHERE task_id IS NOT NULL;
    CREATE INDEX logs_worker ON logs (worker) WHERE worker IS NOT NULL;
    CREATE INDEX logs_trace ON logs (trace_id) WHERE trace_id IS NOT NULL;
    "#,
    // 2: the body hash of events from senders whose delivery id is not signed (GitHub,
    // GitLab), so a replayed body under a new delivery id is found. NULL for every other event,
    // and for events stored before this version; the partial index leaves those rows out.
    r#"
    ALTER TABLE events ADD COLUMN body_hash BLOB;
    CREATE INDEX events_body_hash ON events (source, body_hash, received_at)
        WHERE body_hash IS NOT NULL;
    "#,
    // 3: the rate-limit token reserved for a task's next attempt, kept with the task (not in
    // the memory of the server that reserved it) so that any server claiming it uses it.
    r#"
    ALTER TABLE tasks ADD COLUMN reserved_slot INTEGER;
    "#,
    // 4: what each js task attempt wrote with `console` (redacted by the server). One row per
    // attempt, its lines a JSON array: an attempt's output is written and read whole, and the
    // writer thread pays one insert per attempt however many lines it wrote.
    r#"
    CREATE TABLE task_console (
        task_id     INTEGER NOT NULL REFERENCES tasks (id),
        attempt     INTEGER NOT NULL,
        lines       TEXT NOT NULL,            -- [ConsoleLine] as JSON
        recorded_at INTEGER NOT NULL,
        PRIMARY KEY (task_id, attempt)
    ) STRICT;
    "#,
    // 5: a TypeScript worker's module as it runs: the JavaScript the server transpiled it to at
    // add time and the source map back to `module_source` (JSON), which stays the source as
    // written. NULL for JavaScript modules and for workers stored before this version.
    r#"
    ALTER TABLE workers ADD COLUMN module_js TEXT;
    ALTER TABLE workers ADD COLUMN source_map TEXT;
    "#,
    // 6: worker policies. The `ignored` event state, for an event every matching worker's
    // policy refused: SQLite cannot change a CHECK constraint, so the table is rebuilt (the
    // migration runs with foreign keys off and checks them before it commits). And the events
    // each (worker, actor) pair was admitted for, counted against per-actor limits.
    r#"
    CREATE TABLE events_v6 (
        id                  INTEGER PRIMARY KEY,
        source              TEXT NOT NULL,
        delivery_id         TEXT NOT NULL,
        event_type          TEXT NOT NULL,
        payload             TEXT NOT NULL,
        state               TEXT NOT NULL CHECK (state IN ('received', 'matched', 'dispatched',
                                'completed', 'write_back_failed', 'failed', 'skipped',
                                'ignored')),
        error               TEXT,
        write_back_attempts INTEGER NOT NULL DEFAULT 0,
        next_write_back_at  INTEGER,
        received_at         INTEGER NOT NULL,
        updated_at          INTEGER NOT NULL,
        body_hash           BLOB,
        UNIQUE (source, delivery_id)
    ) STRICT;
    INSERT INTO events_v6 (id, source, delivery_id, event_type, payload, state, error,
            write_back_attempts, next_write_back_at, received_at, updated_at, body_hash)
        SELECT id, source, delivery_id, event_type, payload, state, error, write_back_attempts,
            next_write_back_at, received_at, updated_at, body_hash FROM events;
    DROP TABLE events;
    ALTER TABLE events_v6 RENAME TO events;
    CREATE INDEX events_state ON events (state, id);
    CREATE INDEX events_write_back_due ON events (next_write_back_at)
        WHERE state = 'write_back_failed';
    CREATE INDEX events_body_hash ON events (source, body_hash, received_at)
        WHERE body_hash IS NOT NULL;

    CREATE TABLE actor_admissions (
        worker      TEXT NOT NULL,
        actor       TEXT NOT NULL,
        event_id    INTEGER NOT NULL,
        admitted_at INTEGER NOT NULL,
        PRIMARY KEY (worker, actor, event_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX actor_admissions_time ON actor_admissions (worker, admitted_at);
    "#,
    // 7: scoped API keys: each key's SHA-256 (never the secret), its scope and lifetime.
    r#"
    CREATE TABLE api_keys (
        name         TEXT PRIMARY KEY,
        scope        TEXT NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
        hash         BLOB NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER,
        expires_at   INTEGER
    ) STRICT;
    "#,
    // 8: paused workers (`mechanics worker pause`): their pending tasks stay pending, passed
    // over by the claim, until they are resumed. And each attempt that ran (`task show`): when,
    // on which node, with which worker revision, and what came of it; a re-queue that did not
    // run (rate limit, busy executor) has no row.
    r#"
    ALTER TABLE workers ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1));

    CREATE TABLE task_attempts (
        task_id         INTEGER NOT NULL REFERENCES tasks (id),
        claim           INTEGER NOT NULL,
        started_at      INTEGER NOT NULL,
        ended_at        INTEGER NOT NULL,
        node            TEXT,
        worker_revision INTEGER NOT NULL,
        outcome         TEXT NOT NULL CHECK (outcome IN ('completed', 'failed',
                            'transport_error', 'retry_after')),
        error           TEXT,
        PRIMARY KEY (task_id, claim)
    ) STRICT;
    "#,
    // 9: remote executor nodes, shared by every coordinator on the database: the spec names
    // where the node's token is, never the token.
    r#"
    CREATE TABLE remote_nodes (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,          -- NodeSpec as JSON
        revision   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    "#,
    // 10: the dashboard's queries. `created_at` bounds a `since` listing by id; the ended
    // tasks by `updated_at` (with their state and worker, so the index alone answers) make the
    // Overview's per-minute chart and its failing workers a range, not a scan of every task;
    // (worker, state) gives the Workers page every worker's counts in index order, unsorted.
    r#"
    CREATE INDEX tasks_created ON tasks (created_at);
    CREATE INDEX tasks_updated ON tasks (updated_at, state, worker);
    CREATE INDEX tasks_worker_state ON tasks (worker, state);
    "#,
    // 11: the attempts of a task that ran (or run now), as people count them: `attempt` also
    // counts claims re-queued without running (rate limit, busy executor). Older tasks get the
    // attempts recorded for them, plus the one running now, or their tries when fewer attempts
    // were recorded (tasks older than attempt records). And what made a task (`origin`,
    // as `trigger` is an SQL keyword): older tasks by their event, their cron fire record, or
    // (that record pruned) a payload as a cron fire makes it.
    r#"
    ALTER TABLE tasks ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT 'api'
        CHECK (origin IN ('api', 'webhook', 'cron'));
    UPDATE tasks SET
        runs = MAX(tries, (SELECT COUNT(*) FROM task_attempts a WHERE a.task_id = tasks.id)
            + (state = 'dispatched')),
        origin = CASE
            WHEN event_id IS NOT NULL THEN 'webhook'
            WHEN id IN (SELECT task_id FROM cron_fires WHERE task_id IS NOT NULL)
                OR (idempotency_key IS NULL AND json_type(payload, '$.cron') = 'object')
                THEN 'cron'
            ELSE 'api' END;
    "#,
];

/// The schema version this build creates and understands.
pub(crate) const LATEST_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to `target` (at most [`LATEST_VERSION`]), one migration per transaction.
/// The version is re-read inside each write transaction, so two processes opening the same file
/// at once apply each migration exactly once.
pub(crate) fn migrate(conn: &mut Connection, path: &str, target: i64) -> StoreResult<()> {
    if !(0..=LATEST_VERSION).contains(&target) {
        return Err(StoreError::InvalidInput(format!(
            "schema version {target} does not exist (this build knows 0 to {LATEST_VERSION})"
        )));
    }
    // A migration may rebuild a table others refer to (SQLite cannot alter a constraint), which
    // SQLite's procedure for it does with foreign keys off: they cannot be switched inside a
    // transaction, and each migration checks them before it commits.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(db_err("preparing a migration"))?;
    let migrated = migrate_steps(conn, path, target);
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .map_err(db_err("finishing a migration"))?;
    migrated
}

fn migrate_steps(conn: &mut Connection, path: &str, target: i64) -> StoreResult<()> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err("starting a migration"))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(db_err("reading the schema version"))?;
        if version > LATEST_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.to_owned(),
                found: version,
                supported: LATEST_VERSION,
            });
        }
        if version >= target {
            return Ok(());
        }
        let Ok(index) = usize::try_from(version) else {
            return Err(StoreError::Database {
                context: format!("opening {path}"),
                message: format!("schema version {version} is not a Mechanics schema version"),
            });
        };
        tx.execute_batch(MIGRATIONS[index])
            .map_err(db_err(&format!(
                "migrating to schema version {}",
                version + 1
            )))?;
        let dangling: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
            .optional()
            .map_err(db_err("checking foreign keys after a migration"))?;
        if let Some(table) = dangling {
            return Err(StoreError::Database {
                context: format!("migrating {path} to schema version {}", version + 1),
                message: format!("a row of {table} refers to a row that is gone"),
            });
        }
        // PRAGMA takes no parameters; the value is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            .map_err(db_err("recording the schema version"))?;
        tx.commit().map_err(db_err(&format!(
            "committing schema version {}",
            version + 1
        )))?;
        tracing::info!(path, version = version + 1, "migrated the database schema");
    }
}
