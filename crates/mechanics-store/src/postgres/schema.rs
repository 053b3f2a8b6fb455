//! The PostgreSQL schema as forward-only migrations: `MIGRATIONS[n]` takes a database from
//! version n to n + 1 (`schema_migrations` records each). Never edit a shipped migration;
//! append a new one.
//!
//! Several servers may start at once against an empty database: migrations run on one
//! connection holding a session advisory lock, so exactly one server applies them and the
//! others find them applied when they get the lock.

use tokio_postgres::Client;

use super::pg_err;
use crate::{StoreError, StoreResult};

/// The key of the advisory lock that serializes migrations ("mechanic" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_6368_616e_6963;

/// Each entry moves the schema one version up. Times are unix ms (`BIGINT`), JSON is stored as
/// text (written and read whole, never queried inside), ids are identity columns.
const MIGRATIONS: &[&str] = &[
    // 1: the schema of the SQLite backend's version 2, plus what several servers share: the
    // token buckets and the instances.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('registry_version', 0);

    CREATE TABLE workers (
        name          TEXT PRIMARY KEY,
        spec          TEXT NOT NULL,
        module_source TEXT,
        revision      BIGINT NOT NULL,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL
    );

    CREATE TABLE sources (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        revision   BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    CREATE TABLE events (
        id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source              TEXT NOT NULL,
        delivery_id         TEXT NOT NULL,
        event_type          TEXT NOT NULL,
        payload             TEXT NOT NULL,
        state               TEXT NOT NULL CHECK (state IN ('received', 'matched', 'dispatched',
                                'completed', 'write_back_failed', 'failed', 'skipped')),
        error               TEXT,
        write_back_attempts BIGINT NOT NULL DEFAULT 0,
        next_write_back_at  BIGINT,
        received_at         BIGINT NOT NULL,
        updated_at          BIGINT NOT NULL,
        body_hash           BYTEA,
        UNIQUE (source, delivery_id)
    );
    CREATE INDEX events_state ON events (state, id);
    CREATE INDEX events_write_back_due ON events (next_write_back_at, id)
        WHERE state = 'write_back_failed';
    CREATE INDEX events_body_hash ON events (source, body_hash, received_at)
        WHERE body_hash IS NOT NULL;

    CREATE TABLE tasks (
        id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        worker           TEXT NOT NULL,
        event_id         BIGINT REFERENCES events (id),
        idempotency_key  TEXT,
        payload          TEXT NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('pending', 'dispatched', 'completed',
                             'failed', 'dead', 'canceled')),
        attempt          BIGINT NOT NULL DEFAULT 0,
        tries            BIGINT NOT NULL DEFAULT 0,
        next_run_at      BIGINT NOT NULL,
        lease_expires_at BIGINT,
        result           TEXT,
        error            TEXT,
        created_at       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX tasks_event_worker ON tasks (event_id, worker) WHERE event_id IS NOT NULL;
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (worker, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- The claim walks this partial index in order and stops after its batch: its cost does not
    -- grow with the backlog.
    CREATE INDEX tasks_due ON tasks (next_run_at, id) WHERE state = 'pending';
    CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE state = 'dispatched';
    CREATE INDEX tasks_state ON tasks (state, id);
    CREATE INDEX tasks_worker ON tasks (worker, id);
    CREATE INDEX tasks_event ON tasks (event_id) WHERE event_id IS NOT NULL;

    -- One row per fire: the primary key is what makes a fire run once however many servers
    -- run the schedule.
    CREATE TABLE cron_fires (
        worker    TEXT NOT NULL REFERENCES workers (name) ON DELETE CASCADE,
        fire_time BIGINT NOT NULL,
        task_id   BIGINT NOT NULL,
        PRIMARY KEY (worker, fire_time)
    );
    CREATE INDEX cron_fires_time ON cron_fires (fire_time);

    CREATE TABLE logs (
        id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        trace_id TEXT,
        ts       BIGINT NOT NULL,
        action   TEXT NOT NULL,
        outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'fail', 'skip', 'retry', 'deny')),
        event_id BIGINT,
        task_id  BIGINT,
        worker   TEXT,
        attempt  BIGINT,
        error    TEXT,
        detail   TEXT
    );
    CREATE INDEX logs_ts ON logs (ts);
    CREATE INDEX logs_event ON logs (event_id) WHERE event_id IS NOT NULL;
    CREATE INDEX logs_task ON logs (task_id) WHERE task_id IS NOT NULL;
    CREATE INDEX logs_worker ON logs (worker) WHERE worker IS NOT NULL;
    CREATE INDEX logs_trace ON logs (trace_id) WHERE trace_id IS NOT NULL;

    -- Unlogged: a bucket update needs no WAL flush, so the hottest row of a busy worker is
    -- locked for microseconds. A database crash empties the table: every bucket starts full,
    -- which lets at most one burst through early.
    CREATE UNLOGGED TABLE rate_buckets (
        name       TEXT PRIMARY KEY,
        per_second DOUBLE PRECISION NOT NULL,
        burst      BIGINT NOT NULL,
        tat        DOUBLE PRECISION NOT NULL,
        taken      BOOLEAN NOT NULL
    );

    CREATE TABLE instances (
        id         TEXT PRIMARY KEY,
        address    TEXT NOT NULL,
        version    TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        last_seen  BIGINT NOT NULL
    );
    "#,
    // 2: the rate-limit token reserved for a task's next attempt, kept with the task so that
    // whichever server claims it uses it; and the random tokens of the call that created a task
    // and of the claim that holds it, so that a call retried after a failure that hid its commit
    // finds what it did instead of doing it again. They are looked up only on such a retry.
    r#"
    ALTER TABLE tasks ADD COLUMN reserved_slot BIGINT;
    ALTER TABLE tasks ADD COLUMN claim_token BIGINT;
    ALTER TABLE tasks ADD COLUMN create_token BIGINT;
    "#,
    // 3: what each js task attempt wrote with `console` (redacted by the server). One row per
    // attempt, its lines a JSON array written and read whole.
    r#"
    CREATE TABLE task_console (
        task_id     BIGINT NOT NULL REFERENCES tasks (id),
        attempt     BIGINT NOT NULL,
        lines       TEXT NOT NULL,
        recorded_at BIGINT NOT NULL,
        PRIMARY KEY (task_id, attempt)
    );
    "#,
    // 4: a TypeScript worker's module as it runs (the SQLite backend's version 5): the
    // JavaScript transpiled at add time and the source map back to `module_source` (JSON).
    r#"
    ALTER TABLE workers ADD COLUMN module_js TEXT;
    ALTER TABLE workers ADD COLUMN source_map TEXT;
    "#,
    // 5: worker policies (the SQLite backend's version 6): the `ignored` event state, for an
    // event every matching worker's policy refused; and the events each (worker, actor) pair
    // was admitted for, counted against per-actor limits by every server on the database.
    r#"
    ALTER TABLE events DROP CONSTRAINT events_state_check;
    ALTER TABLE events ADD CONSTRAINT events_state_check CHECK (state IN ('received', 'matched',
        'dispatched', 'completed', 'write_back_failed', 'failed', 'skipped', 'ignored'));
    CREATE TABLE actor_admissions (
        worker      TEXT NOT NULL,
        actor       TEXT NOT NULL,
        event_id    BIGINT NOT NULL,
        admitted_at BIGINT NOT NULL,
        PRIMARY KEY (worker, actor, event_id)
    );
    CREATE INDEX actor_admissions_time ON actor_admissions (worker, admitted_at);
    "#,
    // 6: scoped API keys (the SQLite backend's version 7): each key's SHA-256 (never the
    // secret), its scope and lifetime.
    r#"
    CREATE TABLE api_keys (
        name         TEXT PRIMARY KEY,
        scope        TEXT NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
        hash         BYTEA NOT NULL UNIQUE,
        created_at   BIGINT NOT NULL,
        last_used_at BIGINT,
        expires_at   BIGINT
    );
    "#,
    // 7: paused workers (the SQLite backend's version 8): their pending tasks stay pending,
    // passed over by the claim, until they are resumed. And each attempt that ran (`task
    // show`); a re-queue that did not run has no row.
    r#"
    ALTER TABLE workers ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;

    CREATE TABLE task_attempts (
        task_id         BIGINT NOT NULL REFERENCES tasks (id),
        claim           BIGINT NOT NULL,
        started_at      BIGINT NOT NULL,
        ended_at        BIGINT NOT NULL,
        node            TEXT,
        worker_revision BIGINT NOT NULL,
        outcome         TEXT NOT NULL CHECK (outcome IN ('completed', 'failed',
                            'transport_error', 'retry_after')),
        error           TEXT,
        PRIMARY KEY (task_id, claim)
    );
    "#,
    // 8: remote executor nodes (the SQLite backend's version 9), shared by every coordinator on
    // the database: the spec names where the node's token is, never the token.
    r#"
    CREATE TABLE remote_nodes (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        revision   BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    "#,
    // 9: the dashboard's queries (the SQLite backend's version 10): `created_at` bounds a
    // `since` listing by id; the ended tasks by `updated_at` (with state and worker, so the
    // index alone answers) make the Overview's chart and failing workers a range, not a scan;
    // (worker, state) gives the Workers page every worker's counts in index order.
    r#"
    CREATE INDEX tasks_created ON tasks (created_at, id);
    CREATE INDEX tasks_updated ON tasks (updated_at, state, worker);
    CREATE INDEX tasks_worker_state ON tasks (worker, state);
    "#,
    // 10: the attempts of a task that ran (or run now), as people count them (the SQLite
    // backend's version 11): `attempt` also counts claims re-queued without running.
    // And what made a task (`origin`), for older tasks as the SQLite backend finds it. Older
    // tasks get their recorded attempts plus the one running now, or their tries when fewer
    // attempts were recorded (tasks older than attempt records). A payload holding `\u0000` is
    // not read as JSON: PostgreSQL refuses to (it has no text form), and the migration would
    // fail, and with it every server's start.
    r#"
    ALTER TABLE tasks ADD COLUMN runs BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT 'api'
        CHECK (origin IN ('api', 'webhook', 'cron'));
    UPDATE tasks SET
        runs = GREATEST(tries, (SELECT COUNT(*) FROM task_attempts a WHERE a.task_id = tasks.id)
            + CASE WHEN state = 'dispatched' THEN 1 ELSE 0 END),
        origin = CASE
            WHEN event_id IS NOT NULL THEN 'webhook'
            WHEN id IN (SELECT task_id FROM cron_fires WHERE task_id IS NOT NULL)
                OR (idempotency_key IS NULL AND CASE
                    WHEN strpos(payload, '\u0000') > 0 THEN false
                    ELSE json_typeof(payload::json -> 'cron') = 'object' END)
                THEN 'cron'
            ELSE 'api' END;
    "#,
];

/// The schema version this build creates and understands.
pub(crate) const LATEST_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to `target` (at most [`LATEST_VERSION`]), each migration in its own
/// transaction, under the migration lock. `shown` is the redacted URL, for messages.
pub(crate) async fn migrate(client: &mut Client, shown: &str, target: i64) -> StoreResult<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err("taking the migration lock"))?;
    let result = migrate_locked(client, shown, target.min(LATEST_VERSION)).await;
    // The lock is the session's: it would go with the connection anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut Client, shown: &str, target: i64) -> StoreResult<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg_err("creating the migrations table"))?;
    let version: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_err("reading the schema version"))?
        .get(0);
    if version > LATEST_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: shown.to_owned(),
            found: version,
            supported: LATEST_VERSION,
        });
    }
    for next in version + 1..=target {
        let context = format!("migrating to schema version {next}");
        let tx = client.transaction().await.map_err(pg_err(&context))?;
        tx.batch_execute(MIGRATIONS[(next - 1) as usize])
            .await
            .map_err(pg_err(&context))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&next],
        )
        .await
        .map_err(pg_err(&context))?;
        tx.commit().await.map_err(pg_err(&context))?;
        tracing::info!(database = %shown, version = next, "migrated the database schema");
    }
    Ok(())
}
