//! `cargo bench -p mechanics-store --bench postgres`: [`PgStore`]'s claim latency with a
//! 100,000-task backlog, on the PostgreSQL server of `MECHANICS_TEST_POSTGRES_URL` (run it as
//! `scripts/with-postgres.sh cargo bench -p mechanics-store --bench postgres`, which starts a
//! throwaway server unless that variable is set).
//!
//! A fresh database; [`PgStore::connect`] migrates it; the backlog is inserted straight into the
//! `tasks` table (one `INSERT ... SELECT FROM generate_series`), all due, oldest first. Then
//! `claim_due(now, now + 60 s, 64)` is timed repeatedly, each claim followed by a
//! `complete_task` of every task it took (64 at once, as a busy dispatcher's runners would), by
//! one claimer and then by 3 claimers at once (each its own store, as 3 servers would be). Before
//! each phase the backlog is topped up so that it never falls below 100,000 pending tasks.
//!
//! The plan of the claim is printed (`EXPLAIN` through `psql`): with literal values as executed,
//! and as the generic plan a prepared statement may switch to. It must walk the partial index
//! `tasks_due` in order and stop after its batch (no sort of the backlog).
//!
//! `MECHANICS_BENCH_SCALE` scales the number of claims (default 600 per phase); the backlog stays
//! 100,000. Nothing here asserts; the goal (issue 14) is claim p99 <= 10 ms.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mechanics_store::{PgStore, Store};
use mechanics_test_support::postgres::{TestDatabase, URL_ENV};
use serde_json::json;
use tokio_postgres::NoTls;

const BACKLOG: i64 = 100_000;
const BATCH: u32 = 64;
const CLAIMERS: usize = 3;
const LEASE_MS: i64 = 60_000;

/// The claim statement of `PgStore::claim_due` (`CLAIM_DUE` in `src/postgres/store.rs`), its
/// final select list shortened; `$1` now, `$2` lease end, `$3` batch size.
const CLAIM_SQL: &str = "WITH due AS (SELECT id FROM tasks WHERE state = 'pending' \
     AND next_run_at <= $1 ORDER BY next_run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), \
     claimed AS (UPDATE tasks t SET state = 'dispatched', attempt = t.attempt + 1, \
     tries = t.tries + 1, lease_expires_at = $2, updated_at = $1 FROM due WHERE t.id = due.id \
     RETURNING t.*), \
     events_dispatched AS (UPDATE events e SET state = 'dispatched', updated_at = $1 \
     WHERE e.id IN (SELECT event_id FROM claimed WHERE event_id IS NOT NULL) \
     AND e.state = 'matched') \
     SELECT id, attempt FROM claimed ORDER BY next_run_at, id";

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Claim and completion timings of one phase.
#[derive(Default)]
struct Phase {
    /// Milliseconds per `claim_due`.
    claims: Vec<f64>,
    /// Milliseconds per `complete_task`.
    completes: Vec<f64>,
    tasks: usize,
    elapsed: Duration,
}

impl Phase {
    fn print(&self, label: &str) {
        let mut claims = self.claims.clone();
        claims.sort_by(f64::total_cmp);
        let mut completes = self.completes.clone();
        completes.sort_by(f64::total_cmp);
        println!(
            "  {label}: {} claims of up to {BATCH}, {:.1} tasks per claim",
            claims.len(),
            self.tasks as f64 / claims.len() as f64
        );
        println!(
            "    claim_due     p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms   (goal p99 <= 10 ms: {})",
            percentile(&claims, 0.5),
            percentile(&claims, 0.99),
            claims.last().copied().unwrap_or_default(),
            if percentile(&claims, 0.99) <= 10.0 {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "    complete_task p50 {:>6.2} ms   p99 {:>6.2} ms   ({BATCH} at once on a pool of 16)",
            percentile(&completes, 0.5),
            percentile(&completes, 0.99),
        );
        println!(
            "    claim + complete: {:.0} tasks/s",
            self.tasks as f64 / self.elapsed.as_secs_f64()
        );
    }
}

/// `claims` rounds of one claim and the completion of what it took.
async fn claimer(store: Arc<PgStore>, claims: usize) -> Phase {
    let mut phase = Phase::default();
    let started = Instant::now();
    for _ in 0..claims {
        let now = now_ms();
        let at = Instant::now();
        let claimed = store.claim_due(now, now + LEASE_MS, BATCH).await.unwrap();
        phase.claims.push(at.elapsed().as_secs_f64() * 1e3);
        phase.tasks += claimed.len();
        let mut completing = tokio::task::JoinSet::new();
        for task in claimed {
            let store = store.clone();
            completing.spawn(async move {
                let at = Instant::now();
                store
                    .complete_task(task.id, task.attempt, json!({ "ok": true }), now_ms())
                    .await
                    .unwrap();
                at.elapsed().as_secs_f64() * 1e3
            });
        }
        while let Some(ms) = completing.join_next().await {
            phase.completes.push(ms.unwrap());
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

/// Inserts pending tasks, all due, until `target` are pending.
async fn top_up(client: &tokio_postgres::Client, target: i64) -> i64 {
    let pending: i64 = client
        .query_one("SELECT COUNT(*) FROM tasks WHERE state = 'pending'", &[])
        .await
        .unwrap()
        .get(0);
    let missing = (target - pending).max(0);
    let now = now_ms();
    // Due times one per millisecond before now, oldest first; ids follow.
    client
        .execute(
            "INSERT INTO tasks (worker, payload, state, next_run_at, created_at, updated_at) \
             SELECT 'bench', '{\"n\":' || g || '}', 'pending', $1::BIGINT - $2::BIGINT + g, \
             $1::BIGINT, $1::BIGINT FROM generate_series(1, $2::BIGINT) AS g",
            &[&now, &missing],
        )
        .await
        .unwrap();
    pending + missing
}

/// The claim's plan, by `psql`: as executed with literal values (`EXPLAIN ANALYZE` in a
/// transaction that is rolled back), and the generic plan of the prepared statement.
fn print_plans(db: &TestDatabase) {
    let now = now_ms();
    let literal = CLAIM_SQL
        .replace("$1", &now.to_string())
        .replace("$2", &(now + LEASE_MS).to_string())
        .replace("$3", &BATCH.to_string());
    let analyzed = db.query(&format!(
        "BEGIN; EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) {literal}; ROLLBACK"
    ));
    let generic = db.query(&format!(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE claim(BIGINT, BIGINT, BIGINT) AS {CLAIM_SQL}; \
         EXPLAIN (COSTS OFF) EXECUTE claim({now}, {}, {BATCH})",
        now + LEASE_MS
    ));
    for (label, plan) in [
        ("as executed (EXPLAIN ANALYZE, rolled back)", &analyzed),
        ("generic plan of the prepared statement", &generic),
    ] {
        let uses_index = plan.contains("tasks_due");
        let sorts = plan.lines().any(|line| line.contains("Sort"));
        println!(
            "  claim plan, {label}: tasks_due index {}, {}",
            if uses_index { "used" } else { "NOT used" },
            if sorts { "with a Sort node" } else { "no sort" },
        );
        for line in plan.lines() {
            println!("    | {line}");
        }
    }
}

fn main() {
    if std::env::var(URL_ENV).map_or(true, |url| url.trim().is_empty()) {
        eprintln!(
            "this bench needs a PostgreSQL server: set {URL_ENV} to its URL, or run it as \
             `scripts/with-postgres.sh cargo bench -p mechanics-store --bench postgres`, which \
             starts a throwaway one"
        );
        std::process::exit(2);
    }
    let claims = mechanics_test_support::bench_count(600, 30);
    let db = TestDatabase::create();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (single, concurrent, backlog) = runtime.block_on(async {
        let store = Arc::new(
            PgStore::connect(db.url(), Duration::from_secs(10))
                .await
                .unwrap(),
        );
        let (client, connection) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        let started = Instant::now();
        let backlog = top_up(&client, BACKLOG).await;
        println!(
            "PgStore claim latency: a backlog of {backlog} pending tasks inserted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // What autovacuum would have done by the time a real backlog of this size had built up.
        client.batch_execute("ANALYZE tasks").await.unwrap();

        // Enough above the backlog that the phase's claims never take it below it.
        let per_phase = i64::try_from(claims).unwrap() * i64::from(BATCH);
        top_up(&client, BACKLOG + per_phase).await;
        let single = claimer(store.clone(), claims).await;

        top_up(&client, BACKLOG + per_phase).await;
        let mut stores = Vec::new();
        for _ in 0..CLAIMERS {
            stores.push(Arc::new(
                PgStore::connect(db.url(), Duration::from_secs(10))
                    .await
                    .unwrap(),
            ));
        }
        let mut claimers = tokio::task::JoinSet::new();
        let started = Instant::now();
        for store in stores {
            claimers.spawn(claimer(store, claims / CLAIMERS));
        }
        let mut concurrent = Phase::default();
        while let Some(phase) = claimers.join_next().await {
            let phase = phase.unwrap();
            concurrent.claims.extend(phase.claims);
            concurrent.completes.extend(phase.completes);
            concurrent.tasks += phase.tasks;
        }
        concurrent.elapsed = started.elapsed();
        (single, concurrent, backlog)
    });
    drop(runtime);
    println!("(backlog >= {backlog} pending during every claim; due times in the past)");
    single.print("1 claimer");
    concurrent.print(&format!("{CLAIMERS} claimers at once (3 stores)"));
    print_plans(&db);
}
