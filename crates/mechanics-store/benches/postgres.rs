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
//! First, on another fresh database, what each store operation of a task's life costs the
//! PostgreSQL backends (CPU from `/proc`), one kind at a time: `create_task`, `claim_due`,
//! `take_tokens` (one per attempt, all on one worker's bucket) and `complete_task`.
//!
//! `MECHANICS_BENCH_SCALE` scales the number of claims (default 600 per phase) and the tasks of
//! the cost run (default 4,096); the backlog stays 100,000. Nothing here asserts; the goal (issue 14) is claim p99 <= 10 ms.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::pin::Pin;

use mechanics_store::{NewTask, PgStore, Store, Take, TokenRate};
use mechanics_test_support::postgres::{TestDatabase, URL_ENV};
use serde_json::json;
use tokio_postgres::NoTls;

const BACKLOG: i64 = 100_000;
const BATCH: u32 = 64;
const CLAIMERS: usize = 3;
const LEASE_MS: i64 = 60_000;
/// The paced phase: each of the 3 claimers claims a batch this often, 1,500 tasks/s in all
/// (the throughput goal for one server).
const PACED_EVERY: Duration = Duration::from_millis(128);

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
    /// When each `claim_due` started, and its milliseconds.
    claims: Vec<(Instant, f64)>,
    /// Milliseconds per `complete_task`.
    completes: Vec<f64>,
    tasks: usize,
    elapsed: Duration,
}

impl Phase {
    fn print(&self, label: &str) {
        // The claims in the order they were made: the first and the last tenth.
        let mut in_order = self.claims.clone();
        in_order.sort_by_key(|(at, _)| *at);
        let tenth = (in_order.len() / 10).max(1);
        let sorted = |claims: &[(Instant, f64)]| {
            let mut ms: Vec<f64> = claims.iter().map(|(_, ms)| *ms).collect();
            ms.sort_by(f64::total_cmp);
            ms
        };
        let first = sorted(&in_order[..tenth]);
        let last = sorted(&in_order[in_order.len() - tenth..]);
        let claims = sorted(&in_order);
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
            "    claim_due p50 of the first tenth of the claims {:.2} ms, of the last tenth {:.2} ms",
            percentile(&first, 0.5),
            percentile(&last, 0.5),
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

/// `claims` rounds of one claim and the completion of what it took; a round every `every`, or
/// each as soon as the previous one is done.
async fn claimer(store: Arc<PgStore>, claims: usize, every: Option<Duration>) -> Phase {
    let mut phase = Phase::default();
    let mut ticker = every.map(tokio::time::interval);
    let started = Instant::now();
    for _ in 0..claims {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let now = now_ms();
        let at = Instant::now();
        let claimed = store.claim_due(now, now + LEASE_MS, BATCH).await.unwrap();
        phase.claims.push((at, at.elapsed().as_secs_f64() * 1e3));
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

/// CPU seconds used so far by the PostgreSQL backends whose process title names `database`
/// (`/proc`, in USER_HZ ticks of 1/100 s).
fn backend_cpu(database: &str) -> f64 {
    let mut seconds = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let title = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let title = String::from_utf8_lossy(&title);
        if !title.starts_with("postgres") || !title.contains(database) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, fields)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<f64> = fields
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        seconds += (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0;
    }
    seconds
}

type Op = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Runs `op(0..ops)` from `callers` callers at once; prints ops/s and the backends' CPU per op.
async fn cost(database: &str, label: &str, ops: usize, callers: usize, op: Op) -> f64 {
    let cpu_before = backend_cpu(database);
    let started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for c in 0..callers {
        let op = op.clone();
        running.spawn(async move {
            for i in (c..ops).step_by(callers) {
                op(i).await;
            }
        });
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu_ms = (backend_cpu(database) - cpu_before) * 1e3 / ops as f64;
    println!(
        "    {label:<52} {:>7.0} /s   PostgreSQL backend CPU {cpu_ms:.3} ms each",
        ops as f64 / elapsed.as_secs_f64()
    );
    cpu_ms
}

/// What each store operation of a task's life costs PostgreSQL, on an empty database: the
/// dispatcher's calls per task, measured one kind at a time.
async fn per_task_costs(db: &TestDatabase, tasks: usize) {
    const CALLERS: usize = 16;
    let store = Arc::new(
        PgStore::connect(db.url(), Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let name = db.name().to_owned();
    println!(
        "PgStore cost per task, {tasks} tasks, {CALLERS} callers at once (claims: one caller)"
    );
    let s = store.clone();
    let create: Op = Arc::new(move |i| {
        let s = s.clone();
        Box::pin(async move {
            let now = now_ms();
            let task = NewTask {
                worker: "bench".to_owned(),
                event_id: None,
                idempotency_key: None,
                payload: json!({ "n": i }),
                next_run_at: now,
            };
            s.create_task(task, now).await.unwrap();
        })
    });
    let mut total = cost(
        &name,
        "create_task (API submission)",
        tasks,
        CALLERS,
        create,
    )
    .await;

    let claimed = Arc::new(std::sync::Mutex::new(Vec::with_capacity(tasks)));
    let (s, c) = (store.clone(), claimed.clone());
    let claim: Op = Arc::new(move |_| {
        let (s, c) = (s.clone(), c.clone());
        Box::pin(async move {
            let now = now_ms();
            let tasks = s.claim_due(now, now + LEASE_MS, BATCH).await.unwrap();
            c.lock()
                .unwrap()
                .extend(tasks.into_iter().map(|t| (t.id, t.attempt)));
        })
    });
    let claims = tasks.div_ceil(BATCH as usize);
    let per_claim = cost(
        &name,
        &format!("claim_due, batches of {BATCH}"),
        claims,
        1,
        claim,
    )
    .await;
    total += per_claim * claims as f64 / tasks as f64;

    let s = store.clone();
    let take: Op = Arc::new(move |_| {
        let s = s.clone();
        Box::pin(async move {
            let rate = TokenRate {
                per_second: 1_000_000.0,
                burst: 1_000_000,
            };
            s.take_tokens("worker:bench", rate, Take::Reserve(1), now_ms())
                .await
                .unwrap();
        })
    });
    total += cost(
        &name,
        "take_tokens, one bucket (one per attempt)",
        tasks,
        CALLERS,
        take,
    )
    .await;

    let claimed: Arc<Vec<(i64, u32)>> = Arc::new(std::mem::take(&mut *claimed.lock().unwrap()));
    let (s, c) = (store.clone(), claimed.clone());
    let complete: Op = Arc::new(move |i| {
        let (s, c) = (s.clone(), c.clone());
        Box::pin(async move {
            let (id, attempt) = c[i];
            s.complete_task(id, attempt, json!({ "ok": true }), now_ms())
                .await
                .unwrap();
        })
    });
    total += cost(&name, "complete_task", claimed.len(), CALLERS, complete).await;
    println!(
        "    {:<52} {:>7}     PostgreSQL backend CPU {total:.3} ms per task",
        "in all", ""
    );
}

/// `claimer`s on `stores` at once, `claims` rounds each; their timings together.
async fn concurrently(stores: &[Arc<PgStore>], claims: usize, every: Option<Duration>) -> Phase {
    let mut claimers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (i, store) in stores.iter().enumerate() {
        let store = store.clone();
        claimers.spawn(async move {
            // Paced claimers start apart, as independent servers would be.
            if let Some(every) = every {
                tokio::time::sleep(every * u32::try_from(i).unwrap() / CLAIMERS as u32).await;
            }
            claimer(store, claims, every).await
        });
    }
    let mut all = Phase::default();
    while let Some(phase) = claimers.join_next().await {
        let phase = phase.unwrap();
        all.claims.extend(phase.claims);
        all.completes.extend(phase.completes);
        all.tasks += phase.tasks;
    }
    all.elapsed = started.elapsed();
    all
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

/// The claim's plan, by `psql`: as executed with literal values (`EXPLAIN ANALYZE`), and as a
/// prepared statement (which the store's are) after 10 executions, with how many of them used a
/// generic plan; then the generic plan itself. Each in a transaction that is rolled back.
fn print_plans(db: &TestDatabase) {
    let now = now_ms();
    let lease = now + LEASE_MS;
    let literal = CLAIM_SQL
        .replace("$1", &now.to_string())
        .replace("$2", &lease.to_string())
        .replace("$3", &BATCH.to_string());
    let analyzed = db.query(&format!(
        "BEGIN; EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {literal}; ROLLBACK"
    ));
    let execute = format!("EXECUTE claim({now}, {lease}, {BATCH});");
    let prepared = db.query(&format!(
        "BEGIN; PREPARE claim(BIGINT, BIGINT, BIGINT) AS {CLAIM_SQL}; {} \
         SELECT 'plan cache: ' || generic_plans || ' generic plans, ' || custom_plans || \
         ' custom plans' FROM pg_prepared_statements WHERE name = 'claim'; \
         EXPLAIN (COSTS OFF) {execute} ROLLBACK",
        execute.repeat(10)
    ));
    // Past the ids the executions returned.
    let prepared = prepared
        .find("plan cache:")
        .map_or(prepared.as_str(), |at| &prepared[at..]);
    let generic = db.query(&format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
         PREPARE claim(BIGINT, BIGINT, BIGINT) AS {CLAIM_SQL}; \
         EXPLAIN (COSTS OFF) {execute} ROLLBACK"
    ));
    for (label, plan) in [
        ("as executed (EXPLAIN ANALYZE)", analyzed.as_str()),
        ("prepared, after 10 executions", prepared),
        (
            "forced generic plan (plan_cache_mode = force_generic_plan)",
            generic.as_str(),
        ),
    ] {
        // The CTE `due` is what reads the backlog; the one Sort outside it orders the claimed
        // rows only.
        let due: Vec<&str> = plan
            .lines()
            .skip_while(|line| !line.contains("CTE due"))
            .take_while(|line| !line.contains("CTE claimed"))
            .collect();
        let uses_index = due.iter().any(|line| line.contains("tasks_due"));
        let sorts_backlog = due.iter().any(|line| line.contains("Sort"));
        let seq_scan = plan.contains("Seq Scan on tasks");
        println!(
            "  claim plan, {label}: backlog read through the tasks_due index: {}; sort of the backlog: {}; sequential scan of tasks: {}",
            if uses_index { "yes" } else { "NO" },
            if sorts_backlog { "YES" } else { "none" },
            if seq_scan { "YES" } else { "none" },
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
    let paced_claims = mechanics_test_support::bench_count(300, 30);
    let db = TestDatabase::create();
    let costs_db = TestDatabase::create();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(per_task_costs(
        &costs_db,
        mechanics_test_support::bench_count(4_096, 256),
    ));
    let (single, flat_out, paced, backlog) = runtime.block_on(async {
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
        let single = claimer(store.clone(), claims, None).await;

        let mut stores = Vec::new();
        for _ in 0..CLAIMERS {
            stores.push(Arc::new(
                PgStore::connect(db.url(), Duration::from_secs(10))
                    .await
                    .unwrap(),
            ));
        }
        top_up(&client, BACKLOG + per_phase).await;
        let flat_out = concurrently(&stores, claims / CLAIMERS, None).await;
        top_up(&client, BACKLOG + per_phase).await;
        let paced = concurrently(&stores, paced_claims / CLAIMERS, Some(PACED_EVERY)).await;
        (single, flat_out, paced, backlog)
    });
    drop(runtime);
    println!("(backlog >= {backlog} pending during every claim; due times in the past)");
    single.print("1 claimer, each claim as soon as the last one's tasks are completed");
    flat_out.print(&format!(
        "{CLAIMERS} claimers at once (3 stores), each claim as soon as the last one's tasks are completed"
    ));
    paced.print(&format!(
        "{CLAIMERS} claimers at once (3 stores), each claiming every {} ms, staggered ({:.0} tasks/s in all)",
        PACED_EVERY.as_millis(),
        (CLAIMERS as f64 * f64::from(BATCH)) / PACED_EVERY.as_secs_f64()
    ));
    print_plans(&db);
}
