//! `cargo bench -p mechanics --bench serve`: the coordinator end to end on SQLite and on
//! PostgreSQL (one server, and 3 servers on one database), against raw SQLite and raw PostgreSQL,
//! in the same run. It needs a PostgreSQL server: run it as
//! `scripts/with-postgres.sh cargo bench -p mechanics --bench serve`, which starts a throwaway
//! one unless `MECHANICS_TEST_POSTGRES_URL` is set.
//!
//! - `coordinator`: servers (`mechanics_server::start`, in this process) with local fleets of
//!   executor nodes (2 js workers each); a trivial js worker
//!   (`export default ({ task }) => ({ started: Date.now() })`) with a rate limit far above what
//!   is reached; tasks submitted through `POST /api/v1/tasks` by 16 concurrent clients, spread
//!   over the servers. Throughput is submissions to the last completion; enqueue→start latency is
//!   the script's `Date.now()` minus the task's `created_at` (millisecond clock): with the whole
//!   backlog submitted at once (saturated), at a steady 500 submissions/s (paced), and one task
//!   at a time.
//!   - SQLite: one server, 2 nodes, a SQLite file (group commit);
//!   - PostgreSQL, 1 instance: one server, 2 nodes, a fresh database;
//!   - PostgreSQL, 3 instances: 3 servers on one fresh database, each with its own `PgStore`
//!     (its own pool and listener) and 1 node, so that 3 coordinators and 3 nodes share the
//!     machine's cores rather than 3 × 2 nodes;
//!   - PostgreSQL, 3 instances, shared fleet: the same 3 servers sharing one fleet of 2 nodes,
//!     so that only the coordinators and the database differ from the 1-instance run.
//! - `raw SQLite`: the same number of rows inserted and then updated to `completed`, one
//!   autocommit statement each, WAL and `synchronous=NORMAL` — the least any durable queue on this
//!   disk must do per task.
//! - `raw PostgreSQL`: the same with tokio-postgres, prepared statements, one autocommit
//!   statement each, on one connection and on 16 connections at once, with the backends' CPU
//!   per row.
//!
//! All four setups are started first (idle ones cost next to nothing), then the saturated runs
//! and the baselines are measured in rounds that interleave them, each round starting with the
//! next setup, so that a change in the machine's background load falls on all alike; medians are
//! reported, with each round's figure. The unsaturated latencies are measured once per setup
//! after the rounds. On PostgreSQL, tasks are also created one at a time by a `PgStore` of no
//! server, as another instance would: the servers learn of them only from its `NOTIFY` hint (or
//! their 1 s poll), spaced beyond the hint debounce and back to back.
//!
//! Each setup also prints the store calls per task and where the CPU went during its saturated
//! rounds (this process: servers and clients; the executor nodes; the PostgreSQL backends of its
//! database; everything else on the machine, which includes PostgreSQL's background processes
//! and whatever else runs there).
//!
//! `MECHANICS_BENCH_SCALE` scales the task count (default 2,000 per round);
//! `MECHANICS_BENCH_ROUNDS` sets the rounds (default 3). Nothing here asserts.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mechanics::serve::FleetExecutor;
use mechanics_node::{Fleet, FleetConfig, ShutdownHandle};
use mechanics_proto::domain::TaskState;
use mechanics_runtime::{Supervisor, SupervisorConfig};
use mechanics_server::{Clock, DispatchConfig, RunningServer, ServerConfig, ServerParts};
use mechanics_store::{NewTask, PgStore, SqliteStore, Store, TaskFilter};
use mechanics_test_support::postgres::{TestDatabase, URL_ENV};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

// The same allocator as the `mechanics` binary, whose `serve` this process stands in for.
#[global_allocator]
static ALLOCATOR: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

const CLIENTS: usize = 16;
/// Servers of the multi-instance run.
const INSTANCES: usize = 3;
/// Submissions per second of the paced phase.
const PACED_RATE: f64 = 500.0;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Inserts `count` task-like rows and updates each to completed, one autocommit each.
fn raw_sqlite(path: &Path, count: usize) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
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

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The same as [`raw_sqlite`] on PostgreSQL: `count` rows inserted and updated to completed,
/// one autocommit statement each, spread over `connections` connections working at once.
/// Returns rows/s and the PostgreSQL backends' CPU ms per row.
async fn raw_postgres(
    database: &TestDatabase,
    table: &str,
    count: usize,
    connections: usize,
) -> (f64, f64) {
    let url = database.url();
    pg_connect(url)
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             worker TEXT, payload TEXT, state TEXT, result TEXT, created_at BIGINT, \
             updated_at BIGINT)"
        ))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = pg_connect(url).await;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {table} (worker, payload, state, created_at, updated_at) \
                 VALUES ('bench', $1, 'pending', 0, 0) RETURNING id"
            ))
            .await
            .unwrap();
        let update = client
            .prepare(&format!(
                "UPDATE {table} SET state = 'completed', result = '{{\"ok\":true}}', \
                 updated_at = 1 WHERE id = $1"
            ))
            .await
            .unwrap();
        clients.push((client, insert, update));
    }
    let per_connection = count / connections;
    let cpu_before = Cpu::now(Some(database.name()));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (c, (client, insert, update)) in clients.into_iter().enumerate() {
        workers.spawn(async move {
            for n in 0..per_connection {
                let payload = format!("{{\"c\":{c},\"n\":{n}}}");
                let id: i64 = client.query_one(&insert, &[&payload]).await.unwrap().get(0);
                client.execute(&update, &[&id]).await.unwrap();
            }
            // Kept open until the backends' CPU is read: a closed one's is gone.
            client
        });
    }
    let mut open = Vec::new();
    while let Some(client) = workers.join_next().await {
        open.push(client.unwrap());
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now(Some(database.name())).since(cpu_before);
    drop(open);
    let rows = per_connection * connections;
    let per_sec = rows as f64 / elapsed.as_secs_f64();
    (per_sec, cpu.postgres * 1e3 / rows as f64)
}

/// CPU time (seconds) used so far, by whom.
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    /// This process: the servers, the clients and the raw baselines.
    bench: f64,
    /// Our child processes: the executor nodes.
    nodes: f64,
    /// The PostgreSQL backends connected to the database being measured.
    postgres: f64,
    /// Every core of the machine, busy (not idle or waiting for I/O).
    machine: f64,
}

impl Cpu {
    /// Now, counting the backends whose process title names `database`.
    fn now(database: Option<&str>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let me = std::process::id();
        let mut cpu = Cpu::default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The fields after the command name, which is in parentheses and may hold spaces.
            let Some((_, fields)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = fields.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            let (Some(ppid), Some(utime), Some(stime)) = (field(1), field(11), field(12)) else {
                continue;
            };
            let seconds = (utime + stime) / tick;
            if pid == me {
                cpu.bench += seconds;
            } else if ppid as u32 == me {
                cpu.nodes += seconds;
            } else if let Some(database) = database {
                let title = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let title = String::from_utf8_lossy(&title);
                if title.starts_with("postgres") && title.contains(database) {
                    cpu.postgres += seconds;
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(line) = stat.lines().next()
        {
            let ticks: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy: f64 = ticks
                .iter()
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, t)| t)
                .sum();
            cpu.machine = busy / tick;
        }
        cpu
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            bench: self.bench - earlier.bench,
            nodes: self.nodes - earlier.nodes,
            postgres: self.postgres - earlier.postgres,
            machine: self.machine - earlier.machine,
        }
    }
}

async fn submit_all(client: &reqwest::Client, bases: &[String], count: usize) {
    let per_client = count / CLIENTS;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let url = format!("{}/api/v1/tasks", bases[c % bases.len()]);
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

async fn submit_one(client: &reqwest::Client, base: &str, payload: Value) {
    let response = client
        .post(format!("{base}/api/v1/tasks"))
        .header("content-type", "application/json")
        .body(json!({ "worker": "bench", "payload": payload }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Tasks completed by all `servers`.
fn completed(servers: &[RunningServer]) -> u64 {
    servers
        .iter()
        .map(|s| s.metrics.tasks_completed.get())
        .sum()
}

async fn wait_completed(servers: &[RunningServer], target: u64) {
    while completed(servers) < target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Enqueue→start (ms) of the newest `count` completed tasks, sorted.
async fn latencies(store: &dyn Store, count: usize) -> Vec<i64> {
    let mut latencies = Vec::with_capacity(count);
    let mut cursor = None;
    while latencies.len() < count {
        let page = store
            .list_tasks(&TaskFilter {
                state: Some(TaskState::Completed),
                limit: Some(1000),
                cursor,
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        for task in &page.items {
            if let Some(start) = task.result.as_ref().and_then(|r| r["started"].as_i64()) {
                latencies.push(start - task.created_at);
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
    latencies
}

/// Enqueue→start (ms, sorted) of `count` tasks created one at a time by `creator`, a store of
/// no server, each after the previous one completed, and `spaced` 150 ms after it.
async fn hinted_latencies(
    creator: &PgStore,
    servers: &[RunningServer],
    store: &dyn Store,
    count: usize,
    spaced: bool,
) -> Vec<i64> {
    let clock = Clock::system();
    for n in 0..count {
        if spaced {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let done = completed(servers);
        let now = clock.now_ms();
        let task = NewTask {
            worker: "bench".to_owned(),
            event_id: None,
            idempotency_key: None,
            payload: json!({ "hinted": n }),
            next_run_at: now,
        };
        creator.create_task(task, now).await.unwrap();
        wait_completed(servers, done + 1).await;
    }
    latencies(store, count).await
}

async fn start_fleet(nodes: usize) -> Fleet {
    let mut fleet_config = FleetConfig::new(env!("CARGO_BIN_EXE_mechanics"));
    fleet_config.nodes = nodes;
    fleet_config.workers_per_node = 2;
    Fleet::start(fleet_config, ShutdownHandle::new())
        .await
        .unwrap()
}

/// The database of a setup.
#[derive(Clone, Copy)]
enum Db<'a> {
    Sqlite(&'a Path),
    Postgres(&'a TestDatabase),
}

/// One saturated run: `count` tasks submitted at once, to the last completion.
struct Round {
    per_sec: f64,
    submitted: Duration,
    elapsed: Duration,
    /// Enqueue→start (ms) of its tasks.
    latencies: Vec<i64>,
    store_calls: u64,
    cpu: Cpu,
}

/// Enqueue→start (ms, sorted) of the unsaturated phases.
struct Latencies {
    paced: Vec<i64>,
    idle: Vec<i64>,
    /// One at a time, each created by a store of no server (PostgreSQL only): the servers learn
    /// of it from the creator's hint, as of work another instance created; spaced beyond the
    /// hint debounce, and back to back.
    hinted: Option<(Vec<i64>, Vec<i64>)>,
}

/// Servers on one database with their fleets, the worker registered and warmed up.
struct Setup<'a> {
    label: &'static str,
    db: Db<'a>,
    instances: usize,
    nodes: usize,
    shared_fleet: bool,
    fleets: Vec<Fleet>,
    stores: Vec<Arc<dyn Store>>,
    servers: Vec<RunningServer>,
    bases: Vec<String>,
    client: reqwest::Client,
    rounds: Vec<Round>,
    latencies: Option<Latencies>,
}

impl<'a> Setup<'a> {
    /// Starts `instances` servers on `db`, each with a fleet of `nodes` nodes (or all with one
    /// fleet of `nodes`, `shared_fleet`), registers the worker through the first and runs a
    /// warm-up.
    async fn start(
        label: &'static str,
        dir: &Path,
        db: Db<'a>,
        instances: usize,
        nodes: usize,
        shared_fleet: bool,
    ) -> Setup<'a> {
        let mut fleets = Vec::new();
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        let mut servers = Vec::new();
        if shared_fleet {
            fleets.push(start_fleet(nodes).await);
        }
        for i in 0..instances {
            if !shared_fleet {
                fleets.push(start_fleet(nodes).await);
            }
            let fleet = fleets.last().unwrap().clone();
            let store: Arc<dyn Store> = match db {
                Db::Sqlite(path) => Arc::new(SqliteStore::open(path).unwrap()),
                Db::Postgres(database) => Arc::new(
                    PgStore::connect(database.url(), Duration::from_secs(10))
                        .await
                        .unwrap(),
                ),
            };
            let home = dir.join(format!("{}-{i}", label.replace([' ', ','], "-")));
            std::fs::create_dir_all(&home).unwrap();
            let config = ServerConfig::defaults(&home);
            let parts = ServerParts {
                store: store.clone(),
                js: Some(Arc::new(FleetExecutor::new(fleet))),
                supervisor: Supervisor::new(SupervisorConfig::default(), ShutdownHandle::new()),
                clock: Clock::system(),
                dispatch: DispatchConfig::from_config(&config),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            servers.push(
                mechanics_server::start(listener, &config, parts)
                    .await
                    .unwrap(),
            );
            stores.push(store);
        }
        let bases: Vec<String> = servers
            .iter()
            .map(|s| format!("http://{}", s.addr))
            .collect();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // A rate limit far above what is reached: the default (2/s) would be what is measured.
        let worker = json!({ "spec": {
            "name": "bench", "kind": "js", "module": "bench.js",
            "triggers": [{ "api": true }],
            "rate_limit": { "per_second": 1_000_000, "burst": 1_000_000 },
        }, "module_source": "export default ({ task }) => ({ started: Date.now(), id: task.id });" });
        let response = client
            .post(format!("{}/api/v1/workers", bases[0]))
            .header("content-type", "application/json")
            .body(worker.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        // Every server knows the worker before any of them claims its tasks.
        let version = stores[0].registry_version();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stores.iter().any(|s| s.registry_version() < version) {
            assert!(
                Instant::now() < deadline,
                "the other servers did not see the worker"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let warmup = CLIENTS * 10;
        submit_all(&client, &bases, warmup).await;
        wait_completed(&servers, warmup as u64).await;
        Setup {
            label,
            db,
            instances,
            nodes,
            shared_fleet,
            fleets,
            stores,
            servers,
            bases,
            client,
            rounds: Vec::new(),
            latencies: None,
        }
    }

    fn database_name(&self) -> Option<&str> {
        match self.db {
            Db::Postgres(database) => Some(database.name()),
            Db::Sqlite(_) => None,
        }
    }

    /// One saturated round: `count` tasks submitted by the clients at once.
    async fn saturated(&mut self, count: usize) {
        let done = completed(&self.servers);
        let calls_before: u64 = self.stores.iter().map(|s| s.queries_executed()).sum();
        let cpu_before = Cpu::now(self.database_name());
        let started = Instant::now();
        submit_all(&self.client, &self.bases, count).await;
        let submitted = started.elapsed();
        wait_completed(&self.servers, done + count as u64).await;
        let elapsed = started.elapsed();
        let cpu = Cpu::now(self.database_name()).since(cpu_before);
        let store_calls = self
            .stores
            .iter()
            .map(|s| s.queries_executed())
            .sum::<u64>()
            - calls_before;
        let latencies = latencies(&*self.stores[0], count).await;
        self.rounds.push(Round {
            per_sec: count as f64 / elapsed.as_secs_f64(),
            submitted,
            elapsed,
            latencies,
            store_calls,
            cpu,
        });
    }

    /// Enqueue→start below saturation: paced, one at a time, and (PostgreSQL) created by a store
    /// of no server.
    async fn unsaturated(&mut self, count: usize) {
        // Paced: a steady rate well under capacity, spread over the servers.
        let paced_count = mechanics_test_support::bench_count(500, 50).min(count);
        let done = completed(&self.servers);
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / PACED_RATE));
        let mut submissions = tokio::task::JoinSet::new();
        for n in 0..paced_count {
            ticker.tick().await;
            let client = self.client.clone();
            let base = self.bases[n % self.bases.len()].clone();
            submissions
                .spawn(async move { submit_one(&client, &base, json!({ "paced": n })).await });
        }
        while let Some(submitted) = submissions.join_next().await {
            submitted.unwrap();
        }
        wait_completed(&self.servers, done + paced_count as u64).await;
        let paced = latencies(&*self.stores[0], paced_count).await;

        // Unloaded: one task at a time, each submitted after the previous completed.
        let single = mechanics_test_support::bench_count(200, 50).min(count);
        for n in 0..single {
            let done = completed(&self.servers);
            submit_one(&self.client, &self.bases[n % self.bases.len()], json!(n)).await;
            wait_completed(&self.servers, done + 1).await;
        }
        let idle = latencies(&*self.stores[0], single).await;

        let hinted = match self.db {
            Db::Postgres(database) => {
                let creator = PgStore::connect(database.url(), Duration::from_secs(10))
                    .await
                    .unwrap();
                let n = mechanics_test_support::bench_count(50, 20).min(count);
                let store = &*self.stores[0];
                // Spaced beyond the hint debounce (100 ms): each hint goes out at once.
                let spaced = hinted_latencies(&creator, &self.servers, store, n, true).await;
                // Back to back: each creation follows the previous task's completion within
                // the debounce window, so its hint waits for the window's end.
                let back_to_back = hinted_latencies(&creator, &self.servers, store, n, false).await;
                Some((spaced, back_to_back))
            }
            Db::Sqlite(_) => None,
        };
        self.latencies = Some(Latencies {
            paced,
            idle,
            hinted,
        });
    }

    /// Median tasks/s of the saturated rounds.
    fn per_sec(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.per_sec).collect())
    }

    fn print(&self) {
        let nodes = if self.shared_fleet {
            format!(
                "{} server(s) sharing one fleet of {} nodes",
                self.instances, self.nodes
            )
        } else {
            format!("{} server(s) x {} node(s)", self.instances, self.nodes)
        };
        let count = self.rounds[0].latencies.len();
        println!(
            "{}: {nodes}, 2 js workers per node, concurrency 16 per server; {} rounds of {count} trivial js tasks from {CLIENTS} clients",
            self.label,
            self.rounds.len()
        );
        let rates: Vec<String> = self
            .rounds
            .iter()
            .map(|r| format!("{:.0}", r.per_sec))
            .collect();
        println!(
            "  submit -> completed      {:>8.0} tasks/s median (rounds: {})",
            self.per_sec(),
            rates.join(", ")
        );
        let submitted = median(
            self.rounds
                .iter()
                .map(|r| r.submitted.as_secs_f64())
                .collect(),
        );
        println!(
            "  submitted in             {:>8.0} ms median ({:.0} submissions/s)",
            submitted * 1e3,
            count as f64 / submitted
        );
        let mut saturated: Vec<i64> = self
            .rounds
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        saturated.sort_unstable();
        println!(
            "  enqueue -> start, saturated:       p50 {:>5} ms, p99 {:>5} ms (backlog of {count} submitted at once; all rounds)",
            percentile(&saturated, 0.5),
            percentile(&saturated, 0.99),
        );
        if let Some(latencies) = &self.latencies {
            println!(
                "  enqueue -> start, paced {PACED_RATE:.0}/s:     p50 {:>5} ms, p99 {:>5} ms ({} tasks)",
                percentile(&latencies.paced, 0.5),
                percentile(&latencies.paced, 0.99),
                latencies.paced.len()
            );
            println!(
                "  enqueue -> start, one at a time:   p50 {:>5} ms, p99 {:>5} ms ({} tasks)",
                percentile(&latencies.idle, 0.5),
                percentile(&latencies.idle, 0.99),
                latencies.idle.len()
            );
            if let Some((spaced, back_to_back)) = &latencies.hinted {
                println!(
                    "  enqueue -> start, created by another process (woken by its NOTIFY hint), 150 ms apart: p50 {:>5} ms, p99 {:>5} ms ({} tasks)",
                    percentile(spaced, 0.5),
                    percentile(spaced, 0.99),
                    spaced.len()
                );
                println!(
                    "  enqueue -> start, created by another process, back to back (hints debounced): p50 {:>5} ms, p99 {:>5} ms ({} tasks)",
                    percentile(back_to_back, 0.5),
                    percentile(back_to_back, 0.99),
                    back_to_back.len()
                );
            }
        }
        let tasks = (count * self.rounds.len()) as f64;
        let wall: f64 = self.rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let cpu = self.rounds.iter().fold(Cpu::default(), |sum, r| Cpu {
            bench: sum.bench + r.cpu.bench,
            nodes: sum.nodes + r.cpu.nodes,
            postgres: sum.postgres + r.cpu.postgres,
            machine: sum.machine + r.cpu.machine,
        });
        let calls: u64 = self.rounds.iter().map(|r| r.store_calls).sum();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let other = (cpu.machine - cpu.bench - cpu.nodes - cpu.postgres).max(0.0);
        println!(
            "  saturated rounds: {:.1} store calls per task; CPU ms per task: bench process (servers + clients) {:.2}, nodes {:.2}, PostgreSQL backends {:.2}, other processes {:.2}; machine busy {:.0}% of {cores} cores",
            calls as f64 / tasks,
            cpu.bench * 1e3 / tasks,
            cpu.nodes * 1e3 / tasks,
            cpu.postgres * 1e3 / tasks,
            other * 1e3 / tasks,
            cpu.machine / (wall * cores as f64) * 100.0,
        );
    }

    async fn stop(self) {
        for server in self.servers {
            server.shutdown().await;
        }
        for fleet in self.fleets {
            fleet.shutdown().await;
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn main() {
    if std::env::var(URL_ENV).map_or(true, |url| url.trim().is_empty()) {
        eprintln!(
            "this bench needs a PostgreSQL server: set {URL_ENV} to its URL, or run it as \
             `scripts/with-postgres.sh cargo bench -p mechanics --bench serve`, which starts a \
             throwaway one"
        );
        std::process::exit(2);
    }
    let count = mechanics_test_support::bench_count(2_000, 50) / CLIENTS * CLIENTS;
    let rounds = std::env::var("MECHANICS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let raw_db = TestDatabase::create();
    let one_db = TestDatabase::create();
    let three_db = TestDatabase::create();
    let shared_db = TestDatabase::create();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sqlite_path = dir.path().join("m.db");
        let mut setups = vec![
            Setup::start("sqlite coordinator", dir.path(), Db::Sqlite(&sqlite_path), 1, 2, false).await,
            Setup::start("postgres 1 instance", dir.path(), Db::Postgres(&one_db), 1, 2, false).await,
            Setup::start(
                "postgres 3 instances",
                dir.path(),
                Db::Postgres(&three_db),
                INSTANCES,
                1,
                false,
            )
            .await,
            Setup::start(
                "postgres 3 instances, shared fleet",
                dir.path(),
                Db::Postgres(&shared_db),
                INSTANCES,
                2,
                true,
            )
            .await,
        ];
        // Rounds interleave the setups (and the baselines), each round starting with the next
        // one, so that a change in the machine's background load falls on all of them alike.
        let (mut raw_sqlite_rates, mut raw_pg_one, mut raw_pg_many) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let path = dir.path().join(format!("raw-{round}.db"));
            raw_sqlite_rates.push(
                tokio::task::spawn_blocking(move || raw_sqlite(&path, count))
                    .await
                    .unwrap(),
            );
            raw_pg_one.push(raw_postgres(&raw_db, &format!("raw_1_{round}"), count, 1).await);
            raw_pg_many.push(
                raw_postgres(&raw_db, &format!("raw_{CLIENTS}_{round}"), count, CLIENTS).await,
            );
            for i in 0..setups.len() {
                let at = (round + i) % setups.len();
                setups[at].saturated(count).await;
            }
        }
        for setup in &mut setups {
            setup.unsaturated(count).await;
        }
        let [sqlite, pg_one, pg_three, pg_three_shared] = &setups[..] else {
            unreachable!("four setups")
        };
        for setup in &setups {
            setup.print();
        }
        let raw_sqlite_per_sec = median(raw_sqlite_rates.clone());
        let raw_pg_one_per_sec = median(raw_pg_one.iter().map(|r| r.0).collect());
        let raw_pg_many_per_sec = median(raw_pg_many.iter().map(|r| r.0).collect());
        let list = |rates: &[f64]| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        println!("baselines ({count} rows, insert then update to completed, one autocommit statement each; median of {rounds} rounds)");
        println!("  raw SQLite                        {raw_sqlite_per_sec:>8.0} rows/s (rounds: {})", list(&raw_sqlite_rates));
        for (label, runs, per_sec) in [
            ("1 connection  ", &raw_pg_one, raw_pg_one_per_sec),
            ("16 connections", &raw_pg_many, raw_pg_many_per_sec),
        ] {
            let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let cpu = median(runs.iter().map(|r| r.1).collect());
            println!(
                "  raw PostgreSQL, {label}    {per_sec:>8.0} rows/s (rounds: {}); PostgreSQL backend CPU {cpu:.2} ms per row",
                list(&rates)
            );
        }
        println!("summary (medians)");
        println!(
            "  sqlite coordinator: {:.0} tasks/s ({:.2} of raw SQLite)",
            sqlite.per_sec(),
            sqlite.per_sec() / raw_sqlite_per_sec
        );
        for setup in [pg_one, pg_three, pg_three_shared] {
            println!(
                "  {}: {:.0} tasks/s ({:.2} of raw PostgreSQL on 1 connection, {:.2} on {CLIENTS}; {:.2} of SQLite coordinator)",
                setup.label,
                setup.per_sec(),
                setup.per_sec() / raw_pg_one_per_sec,
                setup.per_sec() / raw_pg_many_per_sec,
                setup.per_sec() / sqlite.per_sec()
            );
        }
        for setup in [pg_three, pg_three_shared] {
            let per_round: Vec<f64> = setup
                .rounds
                .iter()
                .zip(&pg_one.rounds)
                .map(|(three, one)| three.per_sec / one.per_sec)
                .collect();
            println!(
                "  {} / 1 instance: {:.2} (per round: {})",
                setup.label,
                setup.per_sec() / pg_one.per_sec(),
                per_round.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
            );
        }
        println!("goals (issue 14; this machine's cores shared by PostgreSQL, servers, nodes and clients)");
        println!(
            "  one instance >= 1,500 tasks/s: {} ({:.0})",
            verdict(pg_one.per_sec() >= 1_500.0),
            pg_one.per_sec()
        );
        for setup in [pg_three, pg_three_shared] {
            println!(
                "  3 instances >= 0.9 x one instance, {}: {} ({:.2})",
                setup.label,
                verdict(setup.per_sec() >= 0.9 * pg_one.per_sec()),
                setup.per_sec() / pg_one.per_sec()
            );
        }
        for setup in [pg_one, pg_three, pg_three_shared] {
            let Some(latencies) = &setup.latencies else {
                continue;
            };
            let (paced, idle) = (percentile(&latencies.paced, 0.5), percentile(&latencies.idle, 0.5));
            let (spaced, back_to_back) = latencies.hinted.as_ref().map_or((0, 0), |(s, b)| {
                (percentile(s, 0.5), percentile(b, 0.5))
            });
            println!(
                "  enqueue -> start p50 <= 10 ms, {}: paced {} ({paced} ms), one at a time {} ({idle} ms), created by another process {} ({spaced} ms; {back_to_back} ms back to back)",
                setup.label,
                verdict(paced <= 10),
                verdict(idle <= 10),
                verdict(spaced <= 10),
            );
        }
        for setup in setups {
            setup.stop().await;
        }
    });
}
