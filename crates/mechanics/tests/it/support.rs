//! A real `mechanics serve` per test (own HOME, own database, port 0), the CLI run against it,
//! and small HTTP servers in the test process standing in for workers and APIs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mechanics");

/// Environment variables a developer's shell may set that would change what a test sees.
const SCRUB: &[&str] = &[
    "MECHANICS_ADDR",
    "MECHANICS_API_KEY",
    "MECHANICS_API_KEY_FILE",
    "MECHANICS_INSECURE_NO_AUTH",
    "MECHANICS_DB_PATH",
    "MECHANICS_DB_CONNECT_TIMEOUT",
    "MECHANICS_LOCAL_NODES",
    "MECHANICS_QUEUE_SIZE",
    "MECHANICS_CONCURRENCY",
    "MECHANICS_DRAIN_TIMEOUT",
    "MECHANICS_LOG_FORMAT",
    "MECHANICS_LOG_LEVEL",
    "MECHANICS_MAX_CONNECTIONS",
    "MECHANICS_HEADER_TIMEOUT",
    "MECHANICS_IDLE_TIMEOUT",
    "MECHANICS_WEBHOOK_BODY_BUDGET",
    "MECHANICS_HTTP_WORKER_TIMEOUT",
    "MECHANICS_SERVER",
    "RUST_LOG",
    // Requests to the test's servers on 127.0.0.1 must not go through a proxy.
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A `mechanics` command with a clean environment and `home` as HOME (so no real
/// `~/.mechanics/config.yml` is read).
pub(crate) fn command(home: &Path) -> Command {
    scrubbed(BIN, home)
}

/// `program` with the environment [`command`] gives `mechanics`: a shell running the README's
/// commands sees what a `mechanics` run by a test sees.
pub(crate) fn scrubbed(program: &str, home: &Path) -> Command {
    let mut command = Command::new(program);
    for name in SCRUB {
        command.env_remove(name);
    }
    command.env("HOME", home);
    command
}

/// A running `mechanics serve`.
pub(crate) struct Coordinator {
    child: Option<Child>,
    pub(crate) url: String,
    pub(crate) home: PathBuf,
    stderr: Arc<Mutex<String>>,
    api_key: Option<String>,
}

impl Coordinator {
    /// `mechanics serve --addr 127.0.0.1:0 --db <dir>/m.db --local-nodes 1 --log-format compact
    /// <extra>` with `env` (`--addr`, `--db`, `--local-nodes` or `--log-format` in `extra`
    /// replaces the default: a PostgreSQL URL, say, or the port of a server started before).
    pub(crate) fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Coordinator {
        Self::start_with(dir, extra, env, |_| {})
    }

    /// [`Coordinator::start`], with `adjust` applied to the command first (a lower descriptor
    /// limit, say).
    pub(crate) fn start_with(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Coordinator {
        let mut command = command(dir);
        command.arg("serve");
        if !extra.contains(&"--addr") {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--local-nodes") {
            command.args(["--local-nodes", "1"]);
        }
        if !extra.contains(&"--db") {
            command.arg("--db").arg(dir.join("m.db"));
        }
        if !extra.contains(&"--log-format") {
            command.args(["--log-format", "compact"]);
        }
        command
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("mechanics serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err_pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so that the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let Some(addr) = first
            .as_deref()
            .and_then(|line| line.strip_prefix("READY "))
            .map(|a| a.trim().to_owned())
        else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "no READY line (got {first:?}); stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        let api_key = extra
            .iter()
            .position(|a| *a == "--api-key")
            .map(|i| extra[i + 1].to_owned());
        Coordinator {
            child: Some(child),
            url: format!("http://{addr}"),
            home: dir.to_owned(),
            stderr,
            api_key,
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Whether the server process is still running (it has not exited, and was not killed).
    pub(crate) fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("the server's address")
    }

    /// What the server logged so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `mechanics <args>` against this server (with its API key, if it has one).
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let mut command = command(&self.home);
        command.env("MECHANICS_SERVER", &self.url);
        if let Some(key) = &self.api_key {
            command.env("MECHANICS_API_KEY", key);
        }
        command.args(args).output().expect("the CLI runs")
    }

    /// `mechanics <args>` that must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "mechanics {args:?}\nstdout: {}\nstderr: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.stderr(), 40),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `mechanics <args> --json` that must succeed, parsed.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{args:?}: {err}: {text}"))
    }

    /// Writes `worker.yml` (and nothing else) under a fresh directory and adds it.
    pub(crate) fn add_worker(&self, yaml: &str) {
        let dir = tempfile::tempdir_in(&self.home).unwrap();
        let path = dir.path().join("worker.yml");
        std::fs::write(&path, yaml).unwrap();
        self.ok(&["worker", "add", "-f", path.to_str().unwrap()]);
    }

    /// Every task, by id (paging through the API).
    pub(crate) fn tasks(&self) -> BTreeMap<i64, Value> {
        let mut all = BTreeMap::new();
        let mut cursor: Option<i64> = None;
        loop {
            let mut args = vec!["task", "list", "--limit", "1000"];
            let c;
            if let Some(next) = cursor {
                c = next.to_string();
                args.extend(["--cursor", c.as_str()]);
            }
            let page = self.json(&args);
            for task in page["tasks"].as_array().unwrap() {
                all.insert(task["id"].as_i64().unwrap(), task.clone());
            }
            match page["next_cursor"].as_i64() {
                Some(next) => cursor = Some(next),
                None => return all,
            }
        }
    }

    /// Polls task `id` until it is in an end state; panics after `limit`.
    pub(crate) fn wait_end(&self, id: i64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let task = self.json(&["task", "show", &id.to_string()]);
            let state = task["state"].as_str().unwrap().to_owned();
            if matches!(state.as_str(), "completed" | "failed" | "dead" | "canceled") {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} still {state} after {limit:?}: {task}\nserver log:\n{}",
                tail(&self.stderr(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the exit status once it has stopped (within `limit`).
    pub(crate) fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let children = descendants(child.id() as i32);
                let _ = child.kill();
                let _ = child.wait();
                kill_groups(&children);
                panic!(
                    "mechanics serve did not stop within {limit:?} of SIGTERM; log:\n{}",
                    tail(&self.stderr(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the coordinator, and of the node and worker processes it leaves behind.
    pub(crate) fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let children = descendants(child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        kill_groups(&children);
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let children = descendants(child.id() as i32);
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            kill_groups(&children);
        }
    }
}

/// The children of `pid` (node processes, process workers; each leads its own group).
pub(crate) fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces) start at the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn kill_groups(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions. Each child leads its own group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTP server in the test process (its own runtime), serving `router` on 127.0.0.1.
pub(crate) struct HttpServer {
    pub(crate) addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HttpServer {
    pub(crate) fn start(router: axum::Router) -> HttpServer {
        Self::start_on("127.0.0.1:0".parse().unwrap(), router)
    }

    pub(crate) fn start_on(addr: SocketAddr, router: axum::Router) -> HttpServer {
        Self::serve(addr, router, false)
    }

    /// [`HttpServer::start`], with each request's peer address for its handler
    /// (`axum::extract::ConnectInfo<SocketAddr>`): which connection, so which client, sent it.
    pub(crate) fn start_with_peers(router: axum::Router) -> HttpServer {
        Self::serve("127.0.0.1:0".parse().unwrap(), router, true)
    }

    fn serve(addr: SocketAddr, router: axum::Router, peers: bool) -> HttpServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|err| panic!("bind {addr}: {err}"));
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            if peers {
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                let _ = axum::serve(listener, service).await;
            } else {
                let _ = axum::serve(listener, router).await;
            }
        });
        HttpServer {
            addr,
            runtime: Some(runtime),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The (task id, attempt) pairs an http worker received, in order.
pub(crate) type Seen = Arc<Mutex<Vec<(i64, u64)>>>;

/// An http worker: `POST /task` records (id, attempt), waits `delay`, and answers `status`
/// with `{"echo": payload, "attempt": attempt}`.
pub(crate) fn http_worker(seen: Seen, delay: Duration, status: Arc<Mutex<u16>>) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new().route(
        "/task",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            let status = status.clone();
            async move {
                let id = body["id"].as_i64().unwrap_or(-1);
                let attempt = body["attempt"].as_u64().unwrap_or(0);
                seen.lock().unwrap().push((id, attempt));
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let code = *status.lock().unwrap();
                (
                    StatusCode::from_u16(code).unwrap(),
                    axum::Json(serde_json::json!({
                        "echo": body["payload"],
                        "attempt": attempt,
                        "worker": body["worker"],
                    })),
                )
            }
        }),
    )
}

/// A port nothing listens on (bound and released).
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Submits `count` tasks for `worker` through the API directly (a CLI process per task would
/// measure process start-up, not the server); returns their ids.
pub(crate) fn submit_many(coordinator: &Coordinator, worker: &str, count: usize) -> Vec<i64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("{}/api/v1/tasks", coordinator.url);
    let worker = worker.to_owned();
    runtime.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut ids = Vec::with_capacity(count);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0;
        while ids.len() < count {
            while next < count && pending.len() < 16 {
                let client = client.clone();
                let url = url.clone();
                let body = serde_json::json!({ "worker": worker, "payload": { "n": next } });
                pending.spawn(async move {
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("submit");
                    assert_eq!(response.status().as_u16(), 202);
                    let value: Value =
                        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                    value["id"].as_i64().unwrap()
                });
                next += 1;
            }
            ids.push(pending.join_next().await.unwrap().unwrap());
        }
        ids
    })
}

/// A blocking HTTP client for a test's own requests (API calls, webhook deliveries): status and
/// JSON answer (`null` when the answer is not JSON).
pub(crate) struct TestClient {
    runtime: tokio::runtime::Runtime,
    pub(crate) http: reqwest::Client,
}

impl TestClient {
    pub(crate) fn new(timeout: Duration) -> TestClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        TestClient {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .unwrap(),
        }
    }

    pub(crate) fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    }

    pub(crate) fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.http.get(url))
    }

    /// `GET url`'s body as text (`/metrics`), asserting a `200`.
    pub(crate) fn get_text(&self, url: &str) -> String {
        self.runtime.block_on(async {
            let response = self.http.get(url).send().await.expect("the server answers");
            assert_eq!(response.status().as_u16(), 200, "GET {url}");
            response.text().await.unwrap()
        })
    }

    pub(crate) fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    }
}
