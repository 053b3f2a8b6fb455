//! Several `mechanics serve` processes on one PostgreSQL database (issue 14), each with its own
//! home, through the real binary: `kill -9` of one of three under 1,000 tasks, cron fired once
//! per fire time, one webhook delivery posted to three at once, a worker's `rate_limit` shared by
//! three, a PostgreSQL restart under 500 tasks, the queries an idle server makes, and a worker
//! added through one server used by another within a second.
//!
//! Each test makes its own database ([`TestDatabase`]); the restart test holds the server alone
//! ([`TestDatabase::create_exclusive`]), since a restart breaks every test's connections. Each
//! test prints what it measured on stderr (seen with `--nocapture`).
#![allow(
    clippy::print_stderr,
    reason = "each test reports its measurements, for people tuning the cluster"
)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use mechanics_test_support::postgres::{TestDatabase, restart_server};
use serde_json::{Value, json};

use crate::support::{Coordinator, HttpServer, TestClient, submit_many, tail};

/// `count` servers on `db`, started at once, each with its own home (removed after them).
struct Cluster {
    servers: Vec<Coordinator>,
    // After the servers: dropped once they have stopped.
    _homes: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start(db: &TestDatabase, count: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        let homes: Vec<tempfile::TempDir> =
            (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut args = vec!["--db", db.url()];
        args.extend_from_slice(extra);
        // Together: the migrations run under their lock while the others wait.
        let servers = std::thread::scope(|scope| {
            let starting: Vec<_> = homes
                .iter()
                .map(|home| scope.spawn(|| Coordinator::start(home.path(), &args, env)))
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("a server starts"))
                .collect()
        });
        Cluster {
            servers,
            _homes: homes,
        }
    }

    /// Adds the worker through every server, so each one's registry has it at once (propagation
    /// between servers has its own test).
    fn add_worker_everywhere(&self, yaml: &str) {
        for server in &self.servers {
            server.add_worker(yaml);
        }
    }

    /// The last lines each server logged, for failure messages.
    fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- server {i} ({}):\n{}", s.url, tail(&s.stderr(), 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An http worker with `triggers` and a bucket of `per_second`, burst `burst`.
fn http_worker_yaml(name: &str, url: &str, rate: (u32, u32), triggers: &str) -> String {
    format!(
        "name: {name}\nkind: http\nurl: {url}\ntriggers: {triggers}\n\
         rate_limit: {{ per_second: {}, burst: {} }}\n\
         retry: {{ max_retries: 5, base_delay: 100ms, max_delay: 500ms }}\n",
        rate.0, rate.1
    )
}

/// One request the recording worker received.
#[derive(Debug, Clone, Copy)]
struct Hit {
    task: i64,
    attempt: u64,
    /// The client's port: which connection, so which server, sent it.
    peer: u16,
    at: Instant,
    /// Unix ms, to compare with the database's times.
    wall_ms: i64,
}

/// What the recording worker saw, and its gate: while closed, requests wait before answering.
struct Recorder {
    hits: Mutex<Vec<Hit>>,
    answered: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Recorder {
    fn new(open: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            hits: Mutex::default(),
            answered: AtomicUsize::new(0),
            open: tokio::sync::watch::Sender::new(open),
        })
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// The hits by task: the attempts each task was sent, in order.
    fn attempts(&self) -> BTreeMap<i64, Vec<u64>> {
        let mut by_task: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        for hit in self.hits() {
            by_task.entry(hit.task).or_default().push(hit.attempt);
        }
        by_task
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An http worker: `POST /task` records the hit, waits for the gate and `delay`, and answers
/// `{"attempt": attempt}`.
fn recording_worker(recorder: Arc<Recorder>, delay: Duration) -> HttpServer {
    HttpServer::start_with_peers(axum::Router::new().route(
        "/task",
        axum::routing::post(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                  axum::Json(body): axum::Json<Value>| {
                let recorder = recorder.clone();
                async move {
                    let attempt = body["attempt"].as_u64().unwrap_or(0);
                    recorder.hits.lock().unwrap().push(Hit {
                        task: body["id"].as_i64().unwrap_or(-1),
                        attempt,
                        peer: peer.port(),
                        at: Instant::now(),
                        wall_ms: now_ms(),
                    });
                    let mut open = recorder.open.subscribe();
                    let _ = open.wait_for(|open| *open).await;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    recorder.answered.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({ "attempt": attempt }))
                }
            },
        ),
    ))
}

/// The local ports of the TCP connections process `pid` holds to port `remote` (its sockets in
/// `/proc/PID/fd`, their ports in `/proc/net/tcp`).
fn connection_ports(pid: u32, remote: u16) -> BTreeSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path())
                && let Some(inode) = target
                    .to_string_lossy()
                    .strip_prefix("socket:[")
                    .and_then(|rest| rest.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9
                && port(fields[2]) == Some(remote)
                && inodes.contains(fields[9])
                && let Some(local) = port(fields[1])
            {
                ports.insert(local);
            }
        }
    }
    ports
}

/// The test's own requests, with what the cluster tests read through them.
struct Api(TestClient);

impl std::ops::Deref for Api {
    type Target = TestClient;
    fn deref(&self) -> &TestClient {
        &self.0
    }
}

impl Api {
    fn new() -> Api {
        Api(TestClient::new(Duration::from_secs(20)))
    }

    /// `store.queries` of the server's `/debug/vars`.
    fn queries(&self, server: &Coordinator) -> u64 {
        let (status, vars) = self.get(&format!("{}/debug/vars", server.url));
        assert_eq!(status, 200, "{vars}");
        vars["store"]["queries"]
            .as_u64()
            .unwrap_or_else(|| panic!("no store.queries in /debug/vars: {vars}"))
    }

    /// Every task of `worker`, through the server's API.
    fn tasks(&self, server: &Coordinator, worker: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let url = format!(
                "{}/api/v1/tasks?worker={worker}&limit=1000{cursor}",
                server.url
            );
            let (status, page) = self.get(&url);
            assert_eq!(status, 200, "{page}");
            all.extend(page["tasks"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_i64() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return all,
            }
        }
    }
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tasks in an end state, counted in the database.
fn ended(db: &TestDatabase) -> usize {
    db.query(
        "SELECT count(*) FROM tasks WHERE state IN ('completed', 'failed', 'dead', 'canceled')",
    )
    .parse()
    .unwrap()
}

/// Every task ended `completed`, its result the answer to its last attempt (fenced), which the
/// worker saw; no (task, attempt) was sent twice. Returns the tasks sent more than once.
fn assert_each_completed_once(
    api: &Api,
    server: &Coordinator,
    worker: &str,
    count: usize,
    recorder: &Recorder,
) -> BTreeMap<i64, Vec<u64>> {
    let tasks = api.tasks(server, worker);
    assert_eq!(tasks.len(), count);
    let attempts = recorder.attempts();
    for task in &tasks {
        let id = task["id"].as_i64().unwrap();
        assert_eq!(task["state"], "completed", "{task}");
        let attempt = task["attempt"].as_u64().unwrap();
        assert_eq!(task["result"]["attempt"].as_u64(), Some(attempt), "{task}");
        let seen = attempts.get(&id).cloned().unwrap_or_default();
        assert!(seen.contains(&attempt), "task {id}: sent {seen:?}, {task}");
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "task {id}: attempts {seen:?}");
    }
    attempts.into_iter().filter(|(_, a)| a.len() > 1).collect()
}

#[test]
fn three_servers_1000_tasks_and_kill_9_of_one_each_task_completes_only_its_claims_run_again() {
    const TASKS: usize = 1000;
    let started = Instant::now();
    let db = TestDatabase::create();
    let recorder = Recorder::new(true);
    let worker = recording_worker(recorder.clone(), Duration::from_millis(50));
    let mut cluster = Cluster::start(&db, 3, &[], &[]);
    cluster.add_worker_everywhere(&http_worker_yaml(
        "bulk",
        &worker.url(),
        (10_000, 10_000),
        "[{ api: true }]",
    ));
    let api = Api::new();

    // Submitted through the two that live; the third is killed after some hundreds completed.
    let (victim, living) = cluster.servers.split_first_mut().unwrap();
    let (kill_at, victim_ports, living_ports) = std::thread::scope(|scope| {
        for server in living.iter() {
            scope.spawn(move || submit_many(server, "bulk", TASKS / 2));
        }
        wait_until(Duration::from_secs(40), "300 tasks answered", || {
            recorder.answered() >= 300
        });
        let victim_ports = connection_ports(victim.pid(), worker.addr.port());
        let living_ports: BTreeSet<u16> = living
            .iter()
            .flat_map(|s| connection_ports(s.pid(), worker.addr.port()))
            .collect();
        victim.kill9();
        // Dead (waited for): whatever reached the worker from its connections came before.
        (Instant::now(), victim_ports, living_ports)
    });
    let answered_at_kill = recorder.answered();
    // What was claimed and not completed when the victim died: its claims and the others'.
    let claimed: BTreeMap<i64, (u64, i64)> = db
        .query("SELECT id, attempt, lease_expires_at FROM tasks WHERE state = 'dispatched'")
        .lines()
        .map(|line| {
            let f: Vec<i64> = line.split('|').map(|v| v.parse().unwrap()).collect();
            (f[0], (f[1] as u64, f[2]))
        })
        .collect();
    assert!(
        answered_at_kill < TASKS,
        "the kill came after every task ran"
    );
    assert!(
        !victim_ports.is_empty(),
        "the killed server held no connection to the worker: it ran nothing"
    );

    wait_until(Duration::from_secs(60), "every task ended", || {
        ended(&db) == TASKS
    });
    let done_at = kill_at.elapsed();
    let living = &cluster.servers[1];
    let rerun = assert_each_completed_once(&api, living, "bulk", TASKS, &recorder);

    // The attempts the victim had sent and not completed when it died.
    let hits = recorder.hits();
    let by_victim: Vec<&Hit> = hits
        .iter()
        // By connection alone: a request written just before the kill may be seen after it.
        .filter(|h| victim_ports.contains(&h.peer))
        .collect();
    let in_flight: BTreeSet<(i64, u64)> = by_victim
        .iter()
        .filter(|h| claimed.get(&h.task).is_some_and(|(a, _)| *a == h.attempt))
        .map(|h| (h.task, h.attempt))
        .collect();
    let unattributed = hits
        .iter()
        .filter(|h| h.at < kill_at && !victim_ports.contains(&h.peer))
        .filter(|h| !living_ports.contains(&h.peer))
        .count();
    for (task, attempts) in &rerun {
        // Run again only because the victim died running it ...
        assert!(
            in_flight.contains(&(*task, attempts[0])),
            "task {task} ran {attempts:?}, but its attempt {} was not in flight on the killed \
             server: sent {:?} (attempt, port, killed's port, living's port, ms after the \
             kill); claimed at the kill: {:?}; the killed one's in flight: {in_flight:?}",
            attempts[0],
            hits.iter()
                .filter(|h| h.task == *task)
                .map(|h| (
                    h.attempt,
                    h.peer,
                    victim_ports.contains(&h.peer),
                    living_ports.contains(&h.peer),
                    if h.at >= kill_at {
                        (h.at - kill_at).as_millis() as i64
                    } else {
                        -((kill_at - h.at).as_millis() as i64)
                    }
                ))
                .collect::<Vec<_>>(),
            claimed.get(task),
        );
        // ... and only once its lease ran out: no live server takes a claim of another.
        let lease = claimed[task].1;
        for hit in hits
            .iter()
            .filter(|h| h.task == *task && h.attempt > attempts[0])
        {
            assert!(
                hit.wall_ms >= lease,
                "task {task} attempt {} started at {} before the lease {lease} ended",
                hit.attempt,
                hit.wall_ms
            );
        }
    }
    assert!(rerun.len() <= in_flight.len());
    eprintln!(
        "kill -9: {TASKS}/{TASKS} completed; killed at {answered_at_kill} answered; the killed \
         server sent {} attempts, {} in flight at the kill; {} claimed in all then; {} tasks \
         ran again ({} hits unattributed); all done {:.1?} after the kill, {:.1?} in all",
        by_victim.len(),
        in_flight.len(),
        claimed.len(),
        rerun.len(),
        unattributed,
        done_at,
        started.elapsed(),
    );
}

#[test]
fn three_servers_fire_each_cron_time_once() {
    let started = Instant::now();
    let db = TestDatabase::create();
    let recorder = Recorder::new(true);
    let worker = recording_worker(recorder.clone(), Duration::ZERO);
    let cluster = Cluster::start(&db, 3, &[], &[]);
    cluster.servers[0].add_worker(&http_worker_yaml(
        "tick",
        &worker.url(),
        (100, 100),
        "[{ cron: \"* * * * * *\" }]",
    ));
    let api = Api::new();
    // Fire times by task, from the API of the second server.
    let fires = |tasks: &[Value]| -> Vec<i64> {
        tasks
            .iter()
            .map(|t| {
                t["payload"]["cron"]["fire_time"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{t}"))
            })
            .collect()
    };
    // Ten seconds of fires, each at least 2 s old (every server had its chance to fire it).
    let mut tasks;
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let read_at = now_ms();
        tasks = api.tasks(&cluster.servers[1], "tick");
        let settled: Vec<i64> = fires(&tasks)
            .into_iter()
            .filter(|f| *f <= read_at - 2000)
            .collect();
        let (first, last) = (settled.iter().min(), settled.iter().max());
        if let (Some(first), Some(last)) = (first, last)
            && last - first >= 10_000
        {
            break settled;
        }
        assert!(
            Instant::now() < deadline,
            "10 s of cron fires within 30 s: {:?}\n{}",
            fires(&tasks),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Each fire time once, among every task there is.
    let all = fires(&tasks);
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for fire in &all {
        *counts.entry(*fire).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fire times with several tasks: {twice:?}");
    // None missing between the first and the last settled one.
    let first = *settled.iter().min().unwrap();
    let last = *settled.iter().max().unwrap();
    let expected: Vec<i64> = (first..=last).step_by(1000).collect();
    let mut got = settled.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "one task per second from {first} to {last}");
    // The database agrees: each fire row points at its own task, and no task was made without
    // its fire row (three servers, each trying every fire).
    let rows = db.query(
        "SELECT (SELECT count(*) FROM tasks WHERE worker = 'tick'), \
         (SELECT count(DISTINCT task_id) FROM cron_fires WHERE worker = 'tick')",
    );
    let (made, fired) = rows.split_once('|').unwrap();
    assert_eq!(made, fired, "cron tasks vs fire rows");
    // And the worker got each task once.
    let attempts = recorder.attempts();
    assert!(
        attempts.values().all(|a| a.len() == 1),
        "a cron task ran twice: {attempts:?}"
    );
    let dropped: u64 = tasks
        .iter()
        .map(|t| t["payload"]["cron"]["dropped"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "cron: {} fire times from {first} to {last}, each one task ({} tasks in all, {dropped} \
         dropped ticks); {:.1?}",
        expected.len(),
        all.len(),
        started.elapsed()
    );
}

const SECRET: &str = "cluster-webhook-secret";

#[test]
fn one_delivery_posted_to_three_servers_at_once_makes_one_event_and_one_task() {
    let started = Instant::now();
    let db = TestDatabase::create();
    let recorder = Recorder::new(true);
    let worker = recording_worker(recorder.clone(), Duration::ZERO);
    let env = [("GH_WEBHOOK_SECRET", SECRET)];
    let cluster = Cluster::start(&db, 3, &[], &env);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source.yml");
    std::fs::write(
        &source,
        "name: gh\nkind: github\nsecret_env: GH_WEBHOOK_SECRET\n",
    )
    .unwrap();
    cluster.servers[0].ok(&["source", "add", "-f", source.to_str().unwrap()]);
    cluster.servers[0].add_worker(&http_worker_yaml(
        "triage",
        &worker.url(),
        (100, 100),
        "[{ webhook: { source: gh, events: [\"issues.*\"] } }]",
    ));
    let api = Api::new();
    // Added through the first, known to each (probes that store nothing): an unsigned
    // delivery is refused 401 by a server that knows the source (404 by one that does not),
    // and a submission 409 by one that knows the worker (no api trigger; 404 otherwise).
    for server in &cluster.servers {
        wait_until(
            Duration::from_secs(5),
            "the source and worker known",
            || {
                let (source, _) = api.post(&format!("{}/webhooks/gh", server.url), &json!({}));
                let (worker, _) = api.post(
                    &format!("{}/api/v1/tasks", server.url),
                    &json!({ "worker": "triage" }),
                );
                (source, worker) == (401, 409)
            },
        );
    }

    let body = serde_json::to_vec(&json!({
        "action": "opened",
        "issue": { "number": 7, "title": "Crash", "user": { "login": "octocat" }, "labels": [] },
        "repository": { "full_name": "acme/app", "name": "app", "owner": { "login": "acme" } },
        "sender": { "login": "octocat" }
    }))
    .unwrap();
    let barrier = Barrier::new(cluster.servers.len());
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let posting: Vec<_> = cluster
            .servers
            .iter()
            .map(|server| {
                let (barrier, body) = (&barrier, &body);
                scope.spawn(move || {
                    let api = Api::new();
                    let request = api
                        .http
                        .post(format!("{}/webhooks/gh", server.url))
                        .header("content-type", "application/json")
                        .header("x-github-event", "issues")
                        .header("x-github-delivery", "3f1a2b00-0000-4000-8000-000000000007")
                        .header(
                            "x-hub-signature-256",
                            crate::webhooks::github_signature(SECRET, body),
                        )
                        .body(body.clone());
                    barrier.wait();
                    api.send(request)
                })
            })
            .collect();
        posting.into_iter().map(|p| p.join().unwrap()).collect()
    });
    // Each server answered: one stored it (202), the others found it stored (200, duplicate).
    let created: Vec<_> = answers.iter().filter(|(s, _)| *s == 202).collect();
    let duplicates: Vec<_> = answers
        .iter()
        .filter(|(s, a)| *s == 200 && a["duplicate"] == true)
        .collect();
    assert_eq!(
        (created.len(), duplicates.len()),
        (1, 2),
        "{answers:?}\n{}",
        cluster.logs()
    );
    let event_id = created[0].1["event_id"].as_i64().unwrap();
    assert!(
        answers.iter().all(|(_, a)| a["event_id"] == event_id),
        "{answers:?}"
    );

    wait_until(Duration::from_secs(20), "the task ran", || {
        recorder.answered() >= 1
    });
    wait_until(Duration::from_secs(20), "the task ended", || {
        ended(&db) == 1
    });
    for server in &cluster.servers {
        let (_, events) = api.get(&format!("{}/api/v1/events", server.url));
        let events = events["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["id"], event_id);
        let tasks = api.tasks(server, "triage");
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0]["event_id"], event_id, "{tasks:?}");
        assert_eq!(tasks[0]["state"], "completed", "{tasks:?}");
    }
    assert_eq!(db.query("SELECT count(*) FROM events"), "1");
    assert_eq!(db.query("SELECT count(*) FROM tasks"), "1");
    assert_eq!(recorder.hits().len(), 1, "the worker ran once");
    eprintln!(
        "webhook: 3 posts at once, answers {:?}: 1 event, 1 task; {:.1?}",
        answers.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        started.elapsed()
    );
}

#[test]
fn three_servers_share_a_workers_rate_limit() {
    const TASKS: usize = 60;
    const PER_SECOND: u32 = 5;
    const BURST: usize = 5;
    let started = Instant::now();
    let db = TestDatabase::create();
    let recorder = Recorder::new(true);
    let worker = recording_worker(recorder.clone(), Duration::ZERO);
    let cluster = Cluster::start(&db, 3, &[], &[]);
    cluster.add_worker_everywhere(&http_worker_yaml(
        "limited",
        &worker.url(),
        (PER_SECOND, BURST as u32),
        "[{ api: true }]",
    ));
    std::thread::scope(|scope| {
        for server in &cluster.servers {
            scope.spawn(move || submit_many(server, "limited", TASKS / 3));
        }
    });
    wait_until(Duration::from_secs(40), "every task ended", || {
        ended(&db) == TASKS
    });
    let api = Api::new();
    let rerun = assert_each_completed_once(&api, &cluster.servers[0], "limited", TASKS, &recorder);
    assert!(rerun.is_empty(), "{rerun:?}");

    // In any window, at most the burst plus what the rate refilled started: for the sorted start
    // times t, t[j] - t[i] >= (j - i + 1 - burst) / rate, less the delivery jitter between a
    // token's slot and the worker seeing the request (up to 250 ms on a loaded 2-core CI
    // machine). Servers each keeping their own bucket would start the 60 tasks three times as
    // fast: seconds too early over the long windows, far beyond that allowance.
    let mut starts: Vec<Instant> = recorder.hits().iter().map(|h| h.at).collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), TASKS);
    let step = Duration::from_millis(1000 / u64::from(PER_SECOND));
    let tolerance = Duration::from_millis(250);
    let mut tightest = Duration::MAX;
    for i in 0..TASKS {
        for j in i + 1..TASKS {
            let Some(tokens) = (j - i + 1).checked_sub(BURST).filter(|n| *n > 0) else {
                continue;
            };
            let needed = step * tokens as u32;
            let took = starts[j] - starts[i];
            tightest = tightest.min(took.saturating_sub(needed.saturating_sub(tolerance)));
            assert!(
                took + tolerance >= needed,
                "starts {i}..={j} ({} of them) within {took:?}: the bucket allows {} in \
                 {needed:?}\nstarts: {:?}",
                j - i + 1,
                j - i,
                starts.iter().map(|s| *s - starts[0]).collect::<Vec<_>>()
            );
        }
    }
    // Each wait for a token reserved a slot (and spent a token); more of them than tasks that
    // waited means slots reserved and not used.
    let reserved = db.query("SELECT count(*) FROM logs WHERE action = 'rate_limit'");
    eprintln!(
        "rate limit: {TASKS}/{TASKS} completed, started over {:.2?} (the bucket needs {:?}); \
         smallest margin {tightest:?}; {reserved} slots reserved; {:.1?} in all",
        starts[TASKS - 1] - starts[0],
        step * (TASKS - BURST) as u32,
        started.elapsed()
    );
    // A reserved token travels with its task to whichever server claims it: no task waits for
    // a second slot, so the tasks beyond the burst wait once each at most.
    let reserved: usize = reserved.parse().unwrap();
    assert!(
        reserved <= TASKS - BURST,
        "{reserved} slots reserved for {} tasks beyond the burst",
        TASKS - BURST
    );
}

#[test]
fn a_postgresql_restart_under_500_tasks_loses_none_and_the_servers_stay_up() {
    const TASKS: usize = 500;
    let started = Instant::now();
    // The restart breaks every connection to the server: no other test may use it meanwhile.
    let db = TestDatabase::create_exclusive();
    // Closed until every task is submitted: then they run while the database restarts.
    let recorder = Recorder::new(false);
    let worker = recording_worker(recorder.clone(), Duration::from_millis(20));
    let mut cluster = Cluster::start(&db, 3, &[], &[]);
    cluster.add_worker_everywhere(&http_worker_yaml(
        "steady",
        &worker.url(),
        (10_000, 10_000),
        "[{ api: true }]",
    ));
    std::thread::scope(|scope| {
        for (i, server) in cluster.servers.iter().enumerate() {
            let count = TASKS / 3 + usize::from(i < TASKS % 3);
            scope.spawn(move || submit_many(server, "steady", count));
        }
    });
    recorder.open.send_replace(true);
    wait_until(Duration::from_secs(30), "100 tasks answered", || {
        recorder.answered() >= 100
    });
    let answered_before = recorder.answered();
    let restart = Instant::now();
    restart_server();
    let restart_took = restart.elapsed();
    let answered_after = recorder.answered();
    assert!(
        answered_after < TASKS,
        "every task ran before the restart ended ({answered_after})"
    );
    wait_until(Duration::from_secs(60), "every task ended", || {
        ended(&db) == TASKS
    });
    let done_after = restart.elapsed();
    let api = Api::new();
    let rerun = assert_each_completed_once(&api, &cluster.servers[2], "steady", TASKS, &recorder);
    // The servers stayed up, and answer.
    for (i, server) in cluster.servers.iter_mut().enumerate() {
        assert!(
            server.running(),
            "server {i} exited:\n{}",
            tail(&server.stderr(), 40)
        );
    }
    for server in &cluster.servers {
        let (status, health) = api.get(&format!("{}/healthz", server.url));
        assert_eq!(status, 200, "{health}");
        let (status, instances) = api.get(&format!("{}/api/v1/instances", server.url));
        assert_eq!(status, 200, "{instances}");
    }
    eprintln!(
        "restart: {TASKS}/{TASKS} completed; restarted at {answered_before} answered, in \
         {restart_took:.1?} ({answered_after} answered by then); {} tasks ran again {:?}; all \
         done {done_after:.1?} after the restart began, {:.1?} in all",
        rerun.len(),
        rerun,
        started.elapsed()
    );
}

#[test]
fn an_idle_server_queries_only_its_poll_and_heartbeat_and_on_sqlite_nothing() {
    const WINDOW: Duration = Duration::from_secs(10);
    let db = TestDatabase::create();
    let cluster = Cluster::start(&db, 1, &[], &[]);
    let postgres = &cluster.servers[0];
    let home = tempfile::tempdir().unwrap();
    let sqlite = Coordinator::start(home.path(), &[], &[]);
    let api = Api::new();
    // Idle starts once startup's own work has settled: on a loaded machine the last of it (a
    // log flush, the first reconcile) can land seconds after the server answers. Settled means
    // a second in which the SQLite server made no query but the read of /debug/vars itself.
    let settle = Instant::now();
    loop {
        let first = api.queries(&sqlite);
        std::thread::sleep(Duration::from_secs(1));
        if api.queries(&sqlite) - first == 1 {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "the SQLite server kept querying for 30 s after it started"
        );
    }
    // Both windows at once; each read of /debug/vars makes one query (its task counts), which
    // the next read counts.
    let before = (api.queries(postgres), api.queries(&sqlite));
    let start = Instant::now();
    std::thread::sleep(WINDOW);
    let after = (api.queries(postgres), api.queries(&sqlite));
    let took = start.elapsed();
    let on_postgres = after.0 - before.0 - 1;
    let on_sqlite = after.1 - before.1 - 1;
    // One poll a second (FALLBACK_POLL), a heartbeat every 5 s, a write-back check every 30 s.
    let bound = took.as_secs() + took.as_secs() / 5 + 2;
    assert!(
        (5..=bound).contains(&on_postgres),
        "{on_postgres} queries in {took:?} on PostgreSQL (expected 5 to {bound})\n{}",
        cluster.logs()
    );
    assert_eq!(on_sqlite, 0, "queries in {took:?} on SQLite");
    eprintln!("idle: {on_postgres} queries in {took:.1?} on PostgreSQL, {on_sqlite} on SQLite");
}

#[test]
fn a_worker_added_through_one_server_is_used_by_another_within_a_second() {
    let db = TestDatabase::create();
    let recorder = Recorder::new(true);
    let worker = recording_worker(recorder.clone(), Duration::ZERO);
    let cluster = Cluster::start(&db, 2, &[], &[]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let api = Api::new();
    // One idempotency key: however many probes a server takes, they make one task.
    let submit = |server: &Coordinator| {
        api.post(
            &format!("{}/api/v1/tasks", server.url),
            &json!({ "worker": "late", "payload": {}, "idempotency_key": "probe" }),
        )
    };
    assert_eq!(submit(b).0, 404);
    a.add_worker(&http_worker_yaml(
        "late",
        &worker.url(),
        (100, 100),
        "[{ api: true }]",
    ));
    let added = Instant::now();
    let (status, answer) = loop {
        let (status, answer) = submit(b);
        if status != 404 || added.elapsed() > Duration::from_secs(5) {
            break (status, answer);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = added.elapsed();
    assert_eq!(status, 202, "{answer}");
    assert!(
        took <= Duration::from_millis(1200),
        "B took the worker {took:?} after A added it"
    );
    wait_until(Duration::from_secs(10), "the task ended", || {
        ended(&db) == 1
    });
    let tasks = api.tasks(a, "late");
    assert_eq!(tasks[0]["state"], "completed", "{tasks:?}");

    // Removed through B: A refuses it within a second too.
    b.ok(&["worker", "rm", "late"]);
    let removed = Instant::now();
    wait_until(Duration::from_secs(5), "A forgot the worker", || {
        submit(a).0 == 404
    });
    let forgot = removed.elapsed();
    assert!(
        forgot <= Duration::from_millis(1200),
        "A still took the worker {forgot:?} after B removed it"
    );
    eprintln!(
        "registry: added on A, used on B after {took:.2?}; removed on B, gone on A after {forgot:.2?}"
    );
}

#[test]
fn a_key_revoked_through_one_server_is_refused_by_another_within_a_second() {
    let db = TestDatabase::create();
    let cluster = Cluster::start(&db, 2, &["--api-key", "configured-cluster-key"], &[]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let out = a.ok(&["key", "create", "ci", "--scope", "read", "--expires", "90d"]);
    let secret = out.lines().next().unwrap().trim().to_owned();
    assert!(secret.starts_with("mk_") && secret.len() == 46, "{out}");
    assert!(out.contains("shown only now"), "{out}");
    let list = b.ok(&["key", "list"]);
    assert!(
        list.contains("ci") && list.contains("read") && !list.contains(&secret),
        "{list}"
    );
    let api = Api::new();
    let as_ci = |server: &Coordinator, method: reqwest::Method| {
        api.send(
            api.http
                .request(method, format!("{}/api/v1/workers", server.url))
                .bearer_auth(&secret)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .0
    };
    // B knows the key A created (its cache reloads on the version A's change moved).
    wait_until(Duration::from_secs(2), "B took the new key", || {
        as_ci(b, reqwest::Method::GET) == 200
    });
    assert_eq!(as_ci(b, reqwest::Method::POST), 403);

    a.ok(&["key", "revoke", "ci"]);
    assert_eq!(as_ci(a, reqwest::Method::GET), 401, "A refuses it at once");
    let revoked = Instant::now();
    wait_until(Duration::from_secs(5), "B refused the revoked key", || {
        as_ci(b, reqwest::Method::GET) == 401
    });
    let took = revoked.elapsed();
    assert!(
        took <= Duration::from_millis(1200),
        "B still took the key {took:?} after A revoked it"
    );
    let list = b.ok(&["key", "list"]);
    assert!(list.contains("no API keys yet"), "{list}");
    eprintln!("keys: revoked on A, refused on B after {took:.2?}");
}

#[test]
fn a_worker_paused_through_one_server_waits_on_every_server_and_runs_after_a_resume_elsewhere() {
    let db = TestDatabase::create();
    let recorder = Recorder::new(true);
    let worker = recording_worker(recorder.clone(), Duration::ZERO);
    let cluster = Cluster::start(&db, 2, &[], &[]);
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let api = Api::new();
    for name in ["held", "control"] {
        a.add_worker(&http_worker_yaml(
            name,
            &worker.url(),
            (100, 100),
            "[{ api: true }]",
        ));
    }
    a.ok(&["worker", "pause", "held"]);
    // The flag is in the database: B sees it as soon as it reads the worker.
    wait_until(Duration::from_secs(5), "B sees the pause", || {
        b.json(&["worker", "show", "held"])["paused"] == true
    });
    let submit = |server: &Coordinator, worker: &str| {
        let (status, answer) = api.post(
            &format!("{}/api/v1/tasks", server.url),
            &json!({ "worker": worker, "payload": {} }),
        );
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_i64().unwrap()
    };
    let held: Vec<i64> = (0..4)
        .map(|i| submit(if i % 2 == 0 { a } else { b }, "held"))
        .collect();
    // Submitted after the held tasks, due after them: once both servers have run it, their
    // claims have passed the held tasks over.
    let controls = [submit(a, "control"), submit(b, "control")];
    wait_until(Duration::from_secs(10), "the control tasks ended", || {
        ended(&db) == 2
    });
    let ran: BTreeSet<i64> = recorder.hits().iter().map(|hit| hit.task).collect();
    assert_eq!(ran, controls.into_iter().collect(), "only the controls ran");
    for task in api.tasks(b, "held") {
        assert_eq!(task["state"], "pending", "{task}");
        assert_eq!(task["attempt"], 0, "never claimed: {task}");
    }

    // Resumed through B: every held task runs once, on whichever server claims it.
    b.ok(&["worker", "resume", "held"]);
    wait_until(Duration::from_secs(10), "the held tasks ended", || {
        ended(&db) == 6
    });
    for task in api.tasks(a, "held") {
        assert_eq!(task["state"], "completed", "{task}");
        assert_eq!(task["attempt"], 1, "{task}");
    }
    let attempts = recorder.attempts();
    for id in held {
        assert_eq!(attempts[&id], [1], "task {id} ran once");
    }
}
