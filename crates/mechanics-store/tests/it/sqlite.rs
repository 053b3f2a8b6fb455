//! SQLite-only tests: the conformance suite on real files, migrations, pragmas, crash safety and
//! group commit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mechanics_proto::domain::{EventState, TaskState, TaskTrigger};
use mechanics_store::{
    BodyDedup, NewEvent, NewTask, SQLITE_SCHEMA_VERSION, SqliteStore, Store, StoreError,
    migrate_sqlite_to,
};
use rusqlite::Connection;
use serde_json::json;

use crate::conformance::futures_join_all;
use crate::{js_worker, temp_store};

fn task(worker: &str, key: Option<String>) -> NewTask {
    NewTask {
        worker: worker.into(),
        event_id: None,
        idempotency_key: key,
        payload: json!({}),
        next_run_at: 0,
    }
}

/// `PRAGMA user_version` of the file.
fn user_version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap()
}

/// The schema as `sqlite_master` holds it, for comparing databases.
fn schema_of(path: &std::path::Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT type || ' ' || name || ': ' || IFNULL(sql, '') FROM sqlite_master ORDER BY type, name")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_database_at_every_earlier_version_migrates_to_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.db");
    drop(SqliteStore::open(&fresh).unwrap());
    let expected = schema_of(&fresh);
    assert!(
        expected.iter().any(|line| line.starts_with("table tasks")),
        "{expected:?}"
    );
    for version in 0..SQLITE_SCHEMA_VERSION {
        let path = dir.path().join(format!("v{version}.db"));
        migrate_sqlite_to(&path, version).unwrap();
        assert_eq!(user_version(&path), version);
        drop(SqliteStore::open(&path).unwrap());
        assert_eq!(
            user_version(&path),
            SQLITE_SCHEMA_VERSION,
            "from version {version}"
        );
        assert_eq!(schema_of(&path), expected, "from version {version}");
    }
    // Opening the latest again changes nothing.
    drop(SqliteStore::open(&fresh).unwrap());
    assert_eq!(schema_of(&fresh), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_body_hashes_survive_the_upgrade_and_match_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    // Version 1 had no body hash column: an event as that release stored it.
    migrate_sqlite_to(&path, 1).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO events (source, delivery_id, event_type, payload, state, received_at, \
             updated_at) VALUES ('gh', 'old', 'issues.opened', '{\"n\":1}', 'matched', 5, 6)",
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let old = store
        .get_event(1)
        .await
        .unwrap()
        .expect("the old event is kept");
    assert_eq!(
        (
            old.delivery_id.as_str(),
            old.state,
            &old.payload,
            old.received_at
        ),
        ("old", EventState::Matched, &json!({ "n": 1 }), 5)
    );
    let event = |delivery: &str| NewEvent {
        source: "gh".into(),
        delivery_id: delivery.into(),
        event_type: "issues.opened".into(),
        payload: json!({ "n": 1 }),
        body_dedup: Some(BodyDedup {
            hash: [7; 32],
            since_ms: 0,
        }),
    };
    // Its delivery id still deduplicates; its body, never hashed, matches nothing.
    let again = store.insert_event(event("old"), 10).await.unwrap();
    assert_eq!((again.created, again.record), (false, old));
    assert!(store.insert_event(event("new"), 10).await.unwrap().created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stored_before_transpiled_modules_survive_the_upgrade_as_javascript() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    // Version 4 had no transpiled module: a worker as that release stored it.
    migrate_sqlite_to(&path, 4).unwrap();
    let spec = serde_json::to_string(&js_worker("old")).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO workers (name, spec, module_source, revision, created_at, updated_at) \
             VALUES ('old', ?1, 'export default () => 1', 3, 5, 6)",
            [spec],
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let old = store
        .get_worker("old")
        .await
        .unwrap()
        .expect("the old worker is kept");
    assert_eq!(
        (old.module_source.as_deref(), old.transpiled, old.revision),
        (Some("export default () => 1"), None, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_stored_before_runs_and_triggers_get_both_from_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v10.db");
    migrate_sqlite_to(&path, 10).unwrap();
    // An event's task; a cron task with its fire record, one whose record was pruned and an
    // API task. The first ran once after a rate-limit re-queue (claimed twice) and runs again.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO events (id, source, delivery_id, event_type, payload, state, received_at, \
             updated_at) VALUES (1, 'gh', 'd', 'issues.opened', '{}', 'dispatched', 1, 1);
             INSERT INTO tasks (id, worker, event_id, idempotency_key, payload, state, attempt, \
             tries, next_run_at, created_at, updated_at) VALUES \
             (1, 'w', 1, NULL, '{}', 'dispatched', 3, 2, 0, 0, 0), \
             (2, 'w', NULL, NULL, '{\"cron\":{\"fire_time\":1}}', 'completed', 1, 1, 0, 0, 0), \
             (3, 'w', NULL, NULL, '{\"cron\":{\"fire_time\":2}}', 'completed', 1, 1, 0, 0, 0), \
             (4, 'w', NULL, 'k', '{\"cron\":{}}', 'pending', 0, 0, 0, 0, 0);
             INSERT INTO workers (name, spec, revision, created_at, updated_at) \
             VALUES ('w', '{}', 1, 0, 0);
             INSERT INTO cron_fires (worker, fire_time, task_id) VALUES ('w', 1, 2);
             INSERT INTO task_attempts (task_id, claim, started_at, ended_at, worker_revision, \
             outcome) VALUES (1, 2, 0, 1, 1, 'transport_error'), (2, 1, 0, 1, 1, 'completed');",
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let mut found = Vec::new();
    for id in 1..=4 {
        let task = store.get_task(id).await.unwrap().unwrap();
        found.push((task.trigger, task.runs));
    }
    assert_eq!(
        found,
        [
            (TaskTrigger::Webhook, 2),
            (TaskTrigger::Cron, 1),
            // No attempt recorded (older than attempt records): its one try.
            (TaskTrigger::Cron, 1),
            (TaskTrigger::Api, 0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_their_tasks_survive_the_rebuild_of_the_events_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    // Version 6 rebuilds `events` (a new state in its CHECK); tasks refer to its rows.
    migrate_sqlite_to(&path, 5).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO events (source, delivery_id, event_type, payload, state, received_at, \
             updated_at, body_hash) VALUES ('gh', 'old', 'issues.opened', '{\"n\":1}', \
             'dispatched', 5, 6, X'07'); \
             INSERT INTO tasks (worker, event_id, payload, state, next_run_at, created_at, \
             updated_at) VALUES ('w', 1, 'null', 'pending', 7, 7, 7);",
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let old = store
        .get_event(1)
        .await
        .unwrap()
        .expect("the event is kept");
    assert_eq!(
        (old.delivery_id.as_str(), old.state, old.received_at),
        ("old", EventState::Dispatched, 5)
    );
    let task = store.get_task(1).await.unwrap().expect("its task is kept");
    assert_eq!(task.event_id, Some(1));
    drop(store);
    // The tasks' reference still points at the (new) events table, and is still enforced.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    let err = conn
        .execute_batch(
            "INSERT INTO tasks (worker, event_id, payload, state, next_run_at, created_at, \
             updated_at) VALUES ('w', 99, 'null', 'pending', 7, 7, 7)",
        )
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "PRAGMA user_version = {}",
            SQLITE_SCHEMA_VERSION + 1
        ))
        .unwrap();
    let Err(err) = SqliteStore::open(&path) else {
        panic!("a newer schema must be refused")
    };
    assert!(matches!(err, StoreError::SchemaTooNew { .. }));
    assert!(
        err.to_string().contains("newer than this build supports"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_in_wal_mode_and_foreign_keys_are_enforced() {
    let (dir, store) = temp_store();
    let mode: String = Connection::open(dir.path().join("mechanics.db"))
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // cron_fires references workers with ON DELETE CASCADE: deleting the worker forgets its
    // fires, so the same fire time can be recorded again for a re-added worker.
    for now in [0, 10] {
        store
            .upsert_worker(js_worker("w"), Some(String::new()), None, now)
            .await
            .unwrap();
        let fire = store.record_cron_fire("w", 1, json!({}), now + 1).await;
        assert!(fire.unwrap().is_some(), "a fresh worker's fire at {now}");
        store.delete_worker("w", true, now + 2).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_group_committed() {
    let (_dir, store) = temp_store();
    let before = store.commits();
    let creates = (0..1_000).map(|i| store.create_task(task("w", Some(format!("k{i}"))), 0));
    for result in futures_join_all(creates).await {
        result.unwrap();
    }
    let commits = store.commits() - before;
    assert!(
        commits <= 20,
        "1,000 concurrent creates took {commits} commits"
    );
    // One failing operation in a batch undoes only itself.
    let fenced = store.complete_task(1, 9, json!(null), 0);
    let good = store.create_task(task("w", None), 0);
    let (fenced, good) = tokio::join!(fenced, good);
    assert!(matches!(fenced, Err(StoreError::StaleAttempt { .. })));
    assert!(good.unwrap().created);
    assert_eq!(
        store.task_counts(None).await.unwrap()[&TaskState::Pending],
        1_001
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dropped_without_closing_keeps_every_acknowledged_write() {
    let (dir, store) = temp_store();
    let creates = (0..200).map(|i| store.create_task(task("w", Some(format!("k{i}"))), 0));
    futures_join_all(creates).await;
    drop(store);
    let store = SqliteStore::open(dir.path().join("mechanics.db")).unwrap();
    assert_eq!(
        store.task_counts(None).await.unwrap()[&TaskState::Pending],
        200
    );
}

/// The child half of `a_killed_process_loses_no_acknowledged_write`: writes until killed,
/// printing each acknowledged task id.
#[test]
fn child_writes_until_killed() {
    let Ok(path) = std::env::var("MECHANICS_STORE_CHILD_DB") else {
        return; // Only meaningful as the child of the crash test.
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(path).unwrap();
        let mut out = std::io::stdout();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut round = 0;
        while Instant::now() < deadline {
            let creates =
                (0..50).map(|i| store.create_task(task("w", Some(format!("{round}-{i}"))), 0));
            for result in futures_join_all(creates).await {
                writeln!(out, "ack {}", result.unwrap().record.id).unwrap();
            }
            out.flush().unwrap();
            round += 1;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mechanics.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::child_writes_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MECHANICS_STORE_CHILD_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acknowledged.len() < 1_000 {
        let line = lines.next().expect("the child stopped early").unwrap();
        if let Some(id) = line.strip_prefix("ack ") {
            acknowledged.push(id.parse::<i64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write: the child never stops on its own before 20 s
    child.wait().unwrap();

    let conn = Connection::open(&path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    for id in acknowledged {
        assert!(
            store.get_task(id).await.unwrap().is_some(),
            "acknowledged task {id} is lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_processs_registry_change_shows_after_a_refresh() {
    let (dir, store) = temp_store();
    let other = SqliteStore::open(dir.path().join("mechanics.db")).unwrap();
    let seen = store.registry_version();
    other
        .upsert_worker(js_worker("w"), Some(String::new()), None, 0)
        .await
        .unwrap();
    // No query: this store cannot know yet.
    assert_eq!(store.registry_version(), seen);
    assert!(store.refresh_registry_version().await.unwrap() > seen);
    assert!(store.registry_version() > seen);
    assert!(store.get_worker("w").await.unwrap().is_some());
}
