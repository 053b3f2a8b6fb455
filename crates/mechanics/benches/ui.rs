//! `cargo bench -p mechanics --bench ui`: how long the `/ui` dashboard's pages take to answer,
//! and how much they weigh, on a SQLite store of 100,000 tasks and 100,000 `/logs` entries,
//! against the goal of issue 22 (at most 50 ms of server time and 200 KB per page).
//!
//! The store is filled directly with SQL (one transaction; the server's own writes would take
//! minutes) on a file migrated to the current schema: 20 workers (registered through the
//! store), tasks created over the last
//! two days (one every ~1.7 s), 70 % completed, 10 % failed, 5 % dead, 10 % pending, 5 %
//! canceled, each payload naming a user (one task in 10,000 names `rare-user`), and `/logs`
//! entries spread over the same tasks. A server (`mechanics_server::start`, in this process,
//! no key: every page is open) then serves it; each page is fetched over loopback HTTP 5 times
//! to warm up and `MECHANICS_BENCH_SAMPLES` times (default 30) measured, one after another. The
//! time is the whole request seen by the client on 127.0.0.1, so it is an upper bound of the
//! server's. Nothing here asserts.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mechanics_node::ShutdownHandle;
use mechanics_runtime::{Supervisor, SupervisorConfig};
use mechanics_server::{Clock, DispatchConfig, ServerConfig, ServerParts};
use mechanics_store::{SQLITE_SCHEMA_VERSION, SqliteStore, Store as _, migrate_sqlite_to};

const TASKS: i64 = 100_000;
const LOGS: i64 = 100_000;
const WORKERS: i64 = 20;
/// The goal per page.
const GOAL_MS: f64 = 50.0;
const GOAL_KB: f64 = 200.0;

/// Fills the file at `path` (migrated) with the tasks and `/logs` entries, created up to `now`.
fn fill(path: &Path, now: i64) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    let span = 2 * 24 * 3_600_000;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO tasks (id, worker, payload, state, attempt, tries, next_run_at, \
                 result, error, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?6, ?9)",
            )
            .unwrap();
        for id in 1..=TASKS {
            let created = now - span + span * id / TASKS;
            let (state, result, error) = match id % 20 {
                0..=13 => (
                    "completed",
                    Some(r#"{"ok":true,"labels":["triage"]}"#),
                    None,
                ),
                14 | 15 => (
                    "failed",
                    None,
                    Some("HTTP 500 from the worker: upstream said no"),
                ),
                16 => ("dead", None, Some("connection refused after 5 tries")),
                17 | 18 => ("pending", None, None),
                _ => ("canceled", None, None),
            };
            let user = if id % 10_000 == 0 {
                "rare-user".to_owned()
            } else {
                format!("user{}", id % 5_000)
            };
            let payload = format!(
                r#"{{"action":"opened","issue":{{"number":{id},"title":"Crash on start #{id}","user":"{user}"}}}}"#
            );
            let ended = state != "pending";
            insert
                .execute(rusqlite::params![
                    id,
                    format!("worker-{}", id % WORKERS),
                    payload,
                    state,
                    i64::from(ended),
                    created,
                    result,
                    error,
                    created + if ended { 350 } else { 0 },
                ])
                .unwrap();
        }
        let mut log = tx
            .prepare(
                "INSERT INTO logs (trace_id, ts, action, outcome, task_id, worker, attempt) \
                 VALUES (?1, ?2, ?3, 'ok', ?4, ?5, ?6)",
            )
            .unwrap();
        for n in 0..LOGS {
            let task = 1 + n % TASKS;
            let action = ["enqueue", "dispatch", "complete"][(n % 3) as usize];
            log.execute(rusqlite::params![
                format!("trace-{task}"),
                now - span + span * task / TASKS,
                action,
                task,
                format!("worker-{}", task % WORKERS),
                1,
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// p50 and p95 of `samples`, ms.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (
        at(0.5).as_secs_f64() * 1000.0,
        at(0.95).as_secs_f64() * 1000.0,
    )
}

#[tokio::main]
async fn main() {
    // reqwest is built without a TLS provider in this workspace (the server's clients too); the
    // binary installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let samples: usize = std::env::var("MECHANICS_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mechanics.db");
    let now = chrono::Utc::now().timestamp_millis();
    migrate_sqlite_to(&path, SQLITE_SCHEMA_VERSION).unwrap();
    let filled = Instant::now();
    fill(&path, now);
    println!(
        "filled {TASKS} tasks and {LOGS} /logs entries in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    let store = Arc::new(SqliteStore::open(&path).unwrap());
    // The workers the tasks name, so the Workers pages have their counts to read.
    for n in 0..WORKERS {
        let spec = serde_json::from_value(serde_json::json!({
            "name": format!("worker-{n}"), "kind": "js", "module": "./w.js",
            "triggers": [{ "webhook": { "source": "gh", "events": ["issues.opened"] } }, { "api": true }]
        }))
        .unwrap();
        store
            .upsert_worker(spec, Some("export default (a) => a".into()), None, now)
            .await
            .unwrap();
    }
    let config = ServerConfig::defaults(dir.path());
    let parts = ServerParts {
        store,
        js: None,
        supervisor: Supervisor::new(SupervisorConfig::default(), ShutdownHandle::new()),
        clock: Clock::system(),
        dispatch: DispatchConfig::from_config(&config),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = mechanics_server::start(listener, &config, parts)
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // One session for every request (an open server gives one to each visitor without a cookie).
    let first = client.get(format!("{base}/ui")).send().await.unwrap();
    let cookie = first.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let deep = TASKS / 10;
    let pages: Vec<(&str, String)> = vec![
        ("Overview", "/ui".into()),
        ("Tasks", "/ui/tasks".into()),
        ("Tasks state=failed", "/ui/tasks?state=failed".into()),
        ("Tasks worker=", "/ui/tasks?worker=worker-7".into()),
        ("Tasks since=1h", "/ui/tasks?since=1h".into()),
        (
            "Tasks since=RFC 3339",
            format!("/ui/tasks?since={}", rfc3339(now - 6 * 3_600_000)),
        ),
        ("Tasks q= (common)", "/ui/tasks?q=user42".into()),
        ("Tasks q= (rare)", "/ui/tasks?q=rare-user".into()),
        ("Tasks q= (none)", "/ui/tasks?q=nobody-at-all".into()),
        (
            "Tasks q= & since=1h",
            "/ui/tasks?q=nobody-at-all&since=1h".into(),
        ),
        (
            "Tasks all filters",
            "/ui/tasks?state=failed&worker=worker-14&since=1d&q=user".into(),
        ),
        ("Tasks deep page", format!("/ui/tasks?cursor={deep}")),
        (
            "Tasks deep, failed",
            format!("/ui/tasks?state=failed&cursor={deep}"),
        ),
        ("Task", format!("/ui/tasks/{}", TASKS - 5)),
        ("Events", "/ui/events".into()),
        ("Workers", "/ui/workers".into()),
        ("Worker", "/ui/workers/worker-7".into()),
        ("Sources", "/ui/sources".into()),
        ("Nodes", "/ui/nodes".into()),
        ("Logs", "/ui/logs".into()),
        ("Logs worker=", "/ui/logs?worker=worker-7".into()),
        ("Logs action=dispatch", "/ui/logs?action=dispatch".into()),
        ("Logs task=", format!("/ui/logs?task={}", TASKS - 5)),
    ];
    println!(
        "{} samples per page after 5 to warm up; goal ≤ {GOAL_MS} ms, ≤ {GOAL_KB} KB",
        samples
    );
    println!(
        "{:<22} {:>8} {:>8} {:>9}  goal",
        "page", "p50 ms", "p95 ms", "KB"
    );
    for (name, path) in &pages {
        let url = format!("{base}{path}");
        let mut times = Vec::with_capacity(samples);
        let mut bytes = 0;
        for round in 0..samples + 5 {
            let started = Instant::now();
            let response = client
                .get(&url)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            let took = started.elapsed();
            assert!(status.is_success(), "{path}: {status}");
            bytes = body.len();
            if round >= 5 {
                times.push(took);
            }
        }
        let (p50, p95) = percentiles(times);
        let kb = bytes as f64 / 1024.0;
        let met = if p95 <= GOAL_MS && kb <= GOAL_KB {
            "met"
        } else {
            "MISSED"
        };
        println!("{name:<22} {p50:>8.2} {p95:>8.2} {kb:>9.1}  {met}");
    }
    server.shutdown().await;
}

/// `unix_ms` as RFC 3339 (UTC, whole seconds).
fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
