//! PostgreSQL-only tests: several stores on one database (as several servers use it), the
//! notifications between them, migrations under a lock, and connection failures. Each test
//! gets a database of its own on the server `scripts/test.sh` starts.

use std::collections::HashSet;
use std::time::Duration;

use mechanics_proto::domain::TaskTrigger;
use mechanics_store::{
    NewTask, PG_SCHEMA_VERSION, PgStore, Store, StoreError, Take, TokenRate, Tokens,
    migrate_postgres_to,
};
use mechanics_test_support::postgres::TestDatabase;
use serde_json::json;

use crate::conformance::futures_join_all;
use crate::js_worker;

/// A fresh database and a store on it.
pub(crate) async fn fresh_postgres() -> (TestDatabase, PgStore) {
    let database = TestDatabase::create();
    let store = connect(&database).await;
    (database, store)
}

async fn connect(database: &TestDatabase) -> PgStore {
    PgStore::connect(database.url(), Duration::from_secs(10))
        .await
        .unwrap()
}

fn task(worker: &str, key: usize) -> NewTask {
    NewTask {
        worker: worker.into(),
        event_id: None,
        idempotency_key: Some(format!("k{key}")),
        payload: json!({ "n": key }),
        next_run_at: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_together_migrate_the_database_once() {
    let database = TestDatabase::create();
    let stores =
        futures_join_all((0..5).map(|_| PgStore::connect(database.url(), Duration::from_secs(10))))
            .await;
    for store in &stores {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    let store = stores.into_iter().next().unwrap().unwrap();
    // Usable at once, and the schema went up exactly once per version.
    store
        .upsert_worker(js_worker("w"), Some(String::new()), None, 0)
        .await
        .unwrap();
    let versions = database.query("SELECT count(*), max(version) FROM schema_migrations");
    assert_eq!(versions, format!("{PG_SCHEMA_VERSION}|{PG_SCHEMA_VERSION}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_build_is_refused() {
    let database = TestDatabase::create();
    drop(connect(&database).await);
    database.query("INSERT INTO schema_migrations (version) VALUES (999)");
    let err = PgStore::connect(database.url(), Duration::from_secs(5))
        .await
        .err()
        .expect("a newer schema must be refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_stored_before_runs_and_triggers_get_both_from_what_was_recorded() {
    let database = TestDatabase::create();
    migrate_postgres_to(database.url(), 9).await.unwrap();
    // As the SQLite test of the same name, plus an API task whose payload holds a NUL, which
    // PostgreSQL's `jsonb` refuses to read: the migration must not trip on it.
    database.query(
        "INSERT INTO events (id, source, delivery_id, event_type, payload, state, received_at, \
         updated_at) OVERRIDING SYSTEM VALUE VALUES (1, 'gh', 'd', 'issues.opened', '{}', 'dispatched', \
         1, 1); \
         INSERT INTO tasks (id, worker, event_id, idempotency_key, payload, state, attempt, \
         tries, next_run_at, created_at, updated_at) OVERRIDING SYSTEM VALUE VALUES \
         (1, 'w', 1, NULL, '{}', 'dispatched', 3, 2, 0, 0, 0), \
         (2, 'w', NULL, NULL, '{\"cron\":{\"fire_time\":1}}', 'completed', 1, 1, 0, 0, 0), \
         (3, 'w', NULL, NULL, '{\"cron\":{\"fire_time\":2}}', 'completed', 1, 1, 0, 0, 0), \
         (4, 'w', NULL, 'k', '{\"cron\":{}}', 'pending', 0, 0, 0, 0, 0), \
         (5, 'w', NULL, NULL, '{\"s\":\"\\u0000\"}', 'completed', 1, 1, 0, 0, 0); \
         INSERT INTO workers (name, spec, revision, created_at, updated_at) \
         VALUES ('w', '{}', 1, 0, 0); \
         INSERT INTO cron_fires (worker, fire_time, task_id) VALUES ('w', 1, 2); \
         INSERT INTO task_attempts (task_id, claim, started_at, ended_at, worker_revision, \
         outcome) VALUES (1, 2, 0, 1, 1, 'transport_error'), (2, 1, 0, 1, 1, 'completed');",
    );
    let store = connect(&database).await;
    let mut found = Vec::new();
    for id in 1..=5 {
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
            (TaskTrigger::Api, 0),
            (TaskTrigger::Api, 1),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_after_the_timeout_without_its_password() {
    // Port 1 on loopback: nothing listens there.
    let started = std::time::Instant::now();
    let err = PgStore::connect(
        "postgres://alice:s3cret-pw@127.0.0.1:1/mechanics",
        Duration::from_secs(1),
    )
    .await
    .err()
    .expect("nothing listens on port 1");
    let message = err.to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!message.contains("s3cret-pw"), "{message}");
    assert!(
        message.contains("alice:***@127.0.0.1:1/mechanics"),
        "{message}"
    );
    // A malformed URL is the caller's mistake, named as such.
    let err = PgStore::connect(
        "postgres://alice:pw@127.0.0.1:notaport/x",
        Duration::from_secs(1),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

#[test]
fn database_urls_are_shown_without_their_password() {
    use mechanics_store::redact_database_url as redact;
    assert_eq!(
        redact("postgres://alice:s3cret@db.local:5432/mech?sslmode=disable"),
        "postgres://alice:***@db.local:5432/mech?sslmode=disable"
    );
    assert_eq!(
        redact("postgresql://p%40ss:x@h/d"),
        "postgresql://p%40ss:***@h/d"
    );
    assert_eq!(redact("postgres://alice@h/d"), "postgres://alice@h/d");
    // Cut where the client cuts: at the first `@`, whatever comes before it.
    assert_eq!(redact("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact("postgres://u:p?ss@db/x"), "postgres://u:***@db/x");
    assert_eq!(
        redact("postgres://alice:s3cret@h/db?password=0ther&sslmode=disable"),
        "postgres://alice:***@h/db?password=***&sslmode=disable"
    );
    assert_eq!(
        redact("postgres://h/d?user=a&password=s3cret"),
        "postgres://h/d?user=a&password=***"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_claiming_at_once_never_take_the_same_task() {
    let database = TestDatabase::create();
    let stores = [
        connect(&database).await,
        connect(&database).await,
        connect(&database).await,
    ];
    let creates = (0..600).map(|i| stores[i % 3].create_task(task("w", i), 0));
    for created in futures_join_all(creates).await {
        assert!(created.unwrap().created);
    }
    // Each store claims in batches of 7 until nothing is left, all at once.
    let claimers = stores.iter().map(|store| async move {
        let mut mine = Vec::new();
        loop {
            let claimed = store.claim_due(10, 60_000, 7).await.unwrap();
            if claimed.is_empty() {
                return mine;
            }
            mine.extend(claimed.into_iter().map(|t| (t.id, t.attempt)));
        }
    });
    let claims: Vec<Vec<(i64, u32)>> = futures_join_all(claimers).await;
    let all: Vec<(i64, u32)> = claims.iter().flatten().copied().collect();
    let distinct: HashSet<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(all.len(), 600, "every task claimed exactly once");
    assert_eq!(distinct.len(), 600);
    assert!(all.iter().all(|(_, attempt)| *attempt == 1));
    assert!(claims.iter().all(|c| !c.is_empty()), "every store got work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fire_and_one_delivery_however_many_stores_record_them() {
    let database = TestDatabase::create();
    let stores = [
        connect(&database).await,
        connect(&database).await,
        connect(&database).await,
    ];
    stores[0]
        .upsert_worker(js_worker("tick"), Some(String::new()), None, 0)
        .await
        .unwrap();
    stores[0]
        .upsert_source(crate::github_source("gh"), 0)
        .await
        .unwrap();
    for fire_time in [60_000, 120_000, 180_000] {
        let fires = futures_join_all(
            stores
                .iter()
                .map(|s| s.record_cron_fire("tick", fire_time, json!({}), 1)),
        )
        .await;
        let created = fires
            .into_iter()
            .filter(|f| f.as_ref().unwrap().is_some())
            .count();
        assert_eq!(created, 1, "fire {fire_time}");
    }
    let deliveries = futures_join_all(stores.iter().map(|s| {
        s.insert_event(
            mechanics_store::NewEvent {
                source: "gh".into(),
                delivery_id: "d-1".into(),
                event_type: "issues.opened".into(),
                payload: json!({}),
                body_dedup: Some(mechanics_store::BodyDedup {
                    hash: [7; 32],
                    since_ms: 0,
                }),
            },
            5,
        )
    }))
    .await;
    let created: Vec<bool> = deliveries.into_iter().map(|d| d.unwrap().created).collect();
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_buckets_hand_out_each_slot_once_across_stores() {
    let database = TestDatabase::create();
    let stores = [
        connect(&database).await,
        connect(&database).await,
        connect(&database).await,
    ];
    let rate = TokenRate {
        per_second: 5.0,
        burst: 5,
    };
    let now = 1_000_000;
    let takes = (0..60).map(|i| stores[i % 3].take_tokens("worker:w", rate, Take::Reserve(1), now));
    let mut slots: Vec<i64> = futures_join_all(takes)
        .await
        .into_iter()
        .flat_map(|t| match t.unwrap() {
            Tokens::Granted(slots) => slots,
            Tokens::NotBefore(at) => panic!("refused until {at}"),
        })
        .collect();
    slots.sort_unstable();
    // Exactly the single bucket's schedule: 5 at once, then one per 200 ms.
    let expected: Vec<i64> = (0..60)
        .map(|i: i64| if i < 5 { now } else { now + (i - 4) * 200 })
        .collect();
    assert_eq!(slots, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_other_stores_by_notification_without_a_query() {
    let database = TestDatabase::create();
    let (writer, reader) = (connect(&database).await, connect(&database).await);
    // A connected store listens already: no wait before the writes it must hear.
    let changes = reader.remote_changes();
    let before = (reader.registry_version(), reader.queries_executed());
    writer
        .upsert_worker(js_worker("w"), Some(String::new()), None, 0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.notified())
        .await
        .expect("a registry change rings the other store");
    assert!(reader.registry_version() > before.0);
    assert_eq!(reader.queries_executed(), before.1, "heard, not polled");
    // New work rings too (a hint sent after the commit).
    writer.create_task(task("w", 1), 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.notified())
        .await
        .expect("new work rings the other store");
    // A store does not ring itself.
    let own = writer.remote_changes();
    writer.create_task(task("w", 2), 0).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), own.notified())
            .await
            .is_err()
    );
}
