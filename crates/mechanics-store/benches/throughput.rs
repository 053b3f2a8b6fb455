//! `cargo bench -p mechanics-store --bench throughput`: task create / claim / complete throughput
//! of [`SqliteStore`] next to raw SQLite inserts into the same schema, measured in the same run.
//!
//! Baselines (rusqlite on its own connection, same pragmas, same `tasks` table and indexes):
//! one transaction per insert, which is what a store without group commit pays per write; and
//! every insert in one transaction, the ceiling no durable per-request write can reach.
//! The store is measured with one caller (each write its own commit) and with 64 concurrent
//! callers (group commit). `MECHANICS_BENCH_SCALE` (default 1) scales the task count.

// A custom bench harness reports by printing; the workspace denies it for library code only.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use mechanics_store::{NewTask, SQLITE_SCHEMA_VERSION, SqliteStore, Store, migrate_sqlite_to};
use rusqlite::{Connection, params};
use serde_json::json;

const CONCURRENCY: usize = 64;

fn main() {
    let n = mechanics_test_support::bench_count(5_000, CONCURRENCY);
    let dir = tempfile::tempdir().unwrap();

    let raw_each = raw_inserts(&dir.path().join("raw-each.db"), n, false);
    let raw_one = raw_inserts(&dir.path().join("raw-one.db"), n, true);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (serial, concurrent) = runtime.block_on(async {
        let serial = store_run(&dir.path().join("serial.db"), n / 5, 1).await;
        let concurrent = store_run(&dir.path().join("concurrent.db"), n, CONCURRENCY).await;
        (serial, concurrent)
    });

    println!("mechanics-store throughput, {n} tasks (ops/s, higher is better)");
    println!(
        "{:<58} {:>10}",
        "raw SQLite insert, one transaction each",
        rate(raw_each)
    );
    println!(
        "{:<58} {:>10}",
        "raw SQLite insert, all in one transaction",
        rate(raw_one)
    );
    println!(
        "{:<58} {:>10}",
        "store create, 1 caller",
        rate(serial.create)
    );
    println!(
        "{:<58} {:>10}",
        "store complete, 1 caller",
        rate(serial.complete)
    );
    println!(
        "{:<58} {:>10}",
        format!("store create, {CONCURRENCY} callers"),
        rate(concurrent.create)
    );
    println!(
        "{:<58} {:>10}",
        format!("store claim (batches of {CONCURRENCY})"),
        rate(concurrent.claim)
    );
    println!(
        "{:<58} {:>10}",
        format!("store complete, {CONCURRENCY} callers"),
        rate(concurrent.complete)
    );
    println!(
        "{:<58} {:>10}",
        "store full cycle create+claim+complete (tasks/s)",
        rate(concurrent.cycle)
    );
    println!(
        "commits for {} concurrent creates + completes: {}",
        2 * n,
        concurrent.commits
    );
    println!(
        "ratio store create ({CONCURRENCY} callers) / raw insert (one transaction each): {:.2}",
        concurrent.create.0 as f64 / concurrent.create.1 / (raw_each.0 as f64 / raw_each.1)
    );
    println!(
        "ratio store create ({CONCURRENCY} callers) / store create (1 caller): {:.2}",
        concurrent.create.0 as f64
            / concurrent.create.1
            / (serial.create.0 as f64 / serial.create.1)
    );
}

/// (operations, seconds)
type Measure = (usize, f64);

fn rate((ops, secs): Measure) -> String {
    format!("{:.0}", ops as f64 / secs)
}

fn raw_inserts(path: &std::path::Path, n: usize, one_transaction: bool) -> Measure {
    migrate_sqlite_to(path, SQLITE_SCHEMA_VERSION).unwrap();
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .unwrap();
    let payload = json!({ "n": 0 }).to_string();
    let start = Instant::now();
    if one_transaction {
        conn.execute_batch("BEGIN").unwrap();
    }
    let mut insert = conn
        .prepare(
            "INSERT INTO tasks (worker, idempotency_key, payload, state, next_run_at, created_at, \
             updated_at) VALUES (?1, ?2, ?3, 'pending', 0, 0, 0)",
        )
        .unwrap();
    for i in 0..n {
        insert
            .execute(params!["w", format!("k{i}"), payload])
            .unwrap();
    }
    drop(insert);
    if one_transaction {
        conn.execute_batch("COMMIT").unwrap();
    }
    (n, start.elapsed().as_secs_f64())
}

struct StoreRun {
    create: Measure,
    claim: Measure,
    complete: Measure,
    cycle: Measure,
    commits: u64,
}

async fn store_run(path: &std::path::Path, n: usize, callers: usize) -> StoreRun {
    let store = Arc::new(SqliteStore::open(path).unwrap());
    let commits_before = store.commits();
    let cycle_start = Instant::now();

    let start = Instant::now();
    let mut handles = Vec::new();
    for caller in 0..callers {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            for i in (caller..n).step_by(callers) {
                let task = NewTask {
                    worker: "w".into(),
                    event_id: None,
                    idempotency_key: Some(format!("k{i}")),
                    payload: json!({ "n": i }),
                    next_run_at: 0,
                };
                store.create_task(task, 0).await.unwrap();
            }
        }));
    }
    for handle in handles.drain(..) {
        handle.await.unwrap();
    }
    let create = (n, start.elapsed().as_secs_f64());

    let start = Instant::now();
    let mut claimed = Vec::with_capacity(n);
    loop {
        let batch = store
            .claim_due(1, 60_000, CONCURRENCY as u32)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        claimed.extend(batch.into_iter().map(|t| (t.id, t.attempt)));
    }
    assert_eq!(claimed.len(), n);
    let claim = (n, start.elapsed().as_secs_f64());

    let start = Instant::now();
    let claimed = Arc::new(claimed);
    for caller in 0..callers {
        let store = Arc::clone(&store);
        let claimed = Arc::clone(&claimed);
        handles.push(tokio::spawn(async move {
            for &(id, attempt) in claimed.iter().skip(caller).step_by(callers) {
                store
                    .complete_task(id, attempt, json!({ "ok": true }), 2)
                    .await
                    .unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let complete = (n, start.elapsed().as_secs_f64());
    let cycle = (n, cycle_start.elapsed().as_secs_f64());
    let commits = store.commits() - commits_before;
    StoreRun {
        create,
        claim,
        complete,
        cycle,
        commits,
    }
}
