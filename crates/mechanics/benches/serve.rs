//! `cargo bench -p mechanics --bench serve`: the coordinator end to end, against raw SQLite, in
//! the same run.
//!
//! - `coordinator`: a server (SQLite file, group commit) with a local fleet of 2 executor nodes;
//!   a trivial js worker (`export default ({ task }) => ({ started: Date.now() })`); tasks
//!   submitted through `POST /api/v1/tasks` by 16 concurrent clients. Throughput is submissions
//!   to the last completion; enqueue→start latency is the script's `Date.now()` minus the task's
//!   `created_at` (millisecond clock).
//! - `raw SQLite`: the same number of rows inserted and then updated to `completed`, one
//!   autocommit statement each, WAL and `synchronous=NORMAL` — the least any durable queue on this
//!   disk must do per task.
//!
//! `MECHANICS_BENCH_SCALE` scales the task count (default 2,000). Nothing here asserts.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mechanics::serve::FleetExecutor;
use mechanics_node::{Fleet, FleetConfig, ShutdownHandle};
use mechanics_proto::domain::TaskState;
use mechanics_runtime::{Supervisor, SupervisorConfig};
use mechanics_server::{Clock, DispatchConfig, ServerConfig, ServerParts};
use mechanics_store::{SqliteStore, Store, TaskFilter};
use serde_json::{Value, json};

// The same allocator as the `mechanics` binary, whose `serve` this process stands in for.
#[global_allocator]
static ALLOCATOR: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

const CLIENTS: usize = 16;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Inserts `count` task-like rows and updates each to completed, one autocommit each.
fn raw_sqlite(dir: &std::path::Path, count: usize) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, worker TEXT, payload TEXT, state TEXT,
                         result TEXT, created_at INTEGER, updated_at INTEGER);",
    )
    .unwrap();
    let started = Instant::now();
    for n in 0..count {
        conn.execute(
            "INSERT INTO t (worker, payload, state, created_at, updated_at)
             VALUES ('bench', ?1, 'pending', 0, 0)",
            [format!("{{\"n\":{n}}}")],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        conn.execute(
            "UPDATE t SET state = 'completed', result = '{\"ok\":true}', updated_at = 1 WHERE id = ?1",
            [id],
        )
        .unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn submit_all(client: &reqwest::Client, base: &str, count: usize) {
    let per_client = count / CLIENTS;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let url = format!("{base}/api/v1/tasks");
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                let body = json!({ "worker": "bench", "payload": { "c": c, "n": n } });
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn wait_completed(metrics: &mechanics_server::metrics::Metrics, target: u64) {
    while metrics.tasks_completed.get() < target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn main() {
    let count = mechanics_test_support::bench_count(2_000, 50) / CLIENTS * CLIENTS;
    let dir = tempfile::tempdir().unwrap();
    let raw_per_sec = raw_sqlite(dir.path(), count);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut fleet_config = FleetConfig::new(env!("CARGO_BIN_EXE_mechanics"));
        fleet_config.nodes = 2;
        fleet_config.workers_per_node = 2;
        let fleet = Fleet::start(fleet_config, ShutdownHandle::new()).await.unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("m.db")).unwrap());
        let config = ServerConfig::defaults(dir.path());
        let parts = ServerParts {
            store: store.clone(),
            js: Some(Arc::new(FleetExecutor::new(fleet.clone()))),
            supervisor: Supervisor::new(SupervisorConfig::default(), ShutdownHandle::new()),
            clock: Clock::system(),
            dispatch: DispatchConfig::from_config(&config),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = mechanics_server::start(listener, &config, parts).await.unwrap();
        let base = format!("http://{}", server.addr);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let worker = json!({ "spec": {
            "name": "bench", "kind": "js", "module": "bench.js",
            "triggers": [{ "api": true }],
            "rate_limit": { "per_second": 1_000_000, "burst": 1_000_000 },
        }, "module_source": "export default ({ task }) => ({ started: Date.now(), id: task.id });" });
        let response = client
            .post(format!("{base}/api/v1/workers"))
            .header("content-type", "application/json")
            .body(worker.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);

        let warmup = CLIENTS * 10;
        submit_all(&client, &base, warmup).await;
        wait_completed(&server.metrics, warmup as u64).await;

        let started = Instant::now();
        submit_all(&client, &base, count).await;
        let submitted = started.elapsed();
        wait_completed(&server.metrics, (warmup + count) as u64).await;
        let elapsed = started.elapsed();

        let mut latencies = Vec::with_capacity(count);
        let mut cursor = None;
        loop {
            let page = store
                .list_tasks(&TaskFilter {
                    state: Some(TaskState::Completed),
                    worker: None,
                    event_id: None,
                    limit: Some(1000),
                    cursor,
                })
                .await
                .unwrap();
            for task in &page.items {
                if let Some(Value::Number(start)) = task.result.as_ref().map(|r| r["started"].clone()) {
                    latencies.push(start.as_i64().unwrap() - task.created_at);
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        // Newest first: the measured tasks are the first `count`.
        latencies.truncate(count);
        latencies.sort_unstable();

        // Unloaded latency: one task at a time, each submitted after the previous completed.
        let single = mechanics_test_support::bench_count(200, 50).min(count);
        let mut idle_latencies = Vec::with_capacity(single);
        for n in 0..single {
            let done = server.metrics.tasks_completed.get();
            let response = client
                .post(format!("{base}/api/v1/tasks"))
                .header("content-type", "application/json")
                .body(json!({ "worker": "bench", "payload": n }).to_string())
                .send()
                .await
                .unwrap();
            let id = response.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
            wait_completed(&server.metrics, done + 1).await;
            let task = store.get_task(id).await.unwrap().unwrap();
            let started = task.result.as_ref().and_then(|r| r["started"].as_i64()).unwrap();
            idle_latencies.push(started - task.created_at);
        }
        idle_latencies.sort_unstable();
        let per_sec = count as f64 / elapsed.as_secs_f64();
        println!("coordinator benchmark: {count} trivial js tasks, {CLIENTS} clients, 2 nodes, concurrency 16");
        println!("  submitted in            {:>8.0} ms ({:.0} submissions/s)", submitted.as_secs_f64() * 1e3, count as f64 / submitted.as_secs_f64());
        println!("  submit -> completed     {:>8.0} tasks/s   (goal >= 2000)", per_sec);
        println!("  enqueue -> start, saturated: p50 {} ms, p99 {} ms (backlog of {count} submitted at once)", percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        println!("  enqueue -> start, one at a time: p50 {} ms, p99 {} ms (goal p50 <= 5)", percentile(&idle_latencies, 0.5), percentile(&idle_latencies, 0.99));
        println!("  raw SQLite insert+update{:>8.0} rows/s", raw_per_sec);
        println!("  coordinator / raw SQLite: {:.2}", per_sec / raw_per_sec);
        server.shutdown().await;
        fleet.shutdown().await;
    });
}
