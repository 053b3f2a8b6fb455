//! Remote executor nodes: real `mechanics node serve` processes over TLS (a CA and certificate
//! made per test), registered with `mechanics node add` on a coordinator that runs no local node
//! (`--local-nodes 0`); one killed with `kill -9` under load and started again; a wrong token;
//! plain HTTP off loopback; a node that hangs (SIGSTOP) routed around; two coordinators on one
//! PostgreSQL sharing the registry; the node metrics and the `/logs` entries of state changes; a
//! node in a Docker container cut off its network under load and connected again.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mechanics_test_support::tls::TestPki;
use serde_json::{Value, json};

use crate::support::{Coordinator, TestClient, code, stderr, submit_many, tail};

/// A running `mechanics node serve`, killed when dropped.
struct RemoteNode {
    child: Child,
    addr: String,
}

impl RemoteNode {
    /// `mechanics node serve --addr <addr> --tls-cert --tls-key` with `token`, once it printed
    /// `READY`.
    fn start(addr: &str, pki: &TestPki, token: &str) -> RemoteNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mechanics"))
            .args([
                "node",
                "serve",
                "--addr",
                addr,
                "--workers",
                "2",
                "--tls-cert",
            ])
            .arg(&pki.cert_file)
            .arg("--tls-key")
            .arg(&pki.key_file)
            .env("MECHANICS_NODE_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mechanics node serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("first line {line:?}"))
            .trim()
            .to_owned();
        RemoteNode { child, addr }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the node's process.
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; the child is ours and not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal}");
    }

    /// `kill -9`.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RemoteNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A js worker `name` whose jobs run `ms` milliseconds within a time limit of `limit_ms`,
/// retried after a transport failure, and not slowed by the default bucket.
fn add_busy_worker(server: &Coordinator, dir: &Path, name: &str, ms: u64, limit_ms: u64) {
    let module = dir.join(format!("{name}.js"));
    std::fs::write(
        &module,
        format!(
            "export default ({{ payload }}) => {{ const end = Date.now() + {ms}; \
             while (Date.now() < end) {{}} return {{ doubled: payload.n * 2 }} }}"
        ),
    )
    .unwrap();
    server.add_worker(&format!(
        "name: {name}\nkind: js\nmodule: {}\ntriggers: [{{ api: true }}]\n\
         limits: {{ max_execution_time_ms: {limit_ms} }}\n\
         rate_limit: {{ per_second: 1000, burst: 1000 }}\n\
         retry: {{ max_retries: 8, base_delay: 100ms, max_delay: 500ms }}\n",
        module.display()
    ));
}

/// Asserts that every task in `ids` completed with its own result.
fn all_completed(server: &Coordinator, ids: &[i64]) {
    for id in ids {
        server.wait_end(*id, Duration::from_secs(120));
    }
    let tasks = server.tasks();
    for id in ids {
        let task = &tasks[id];
        assert_eq!(task["state"], "completed", "{task}");
        let n = task["payload"]["n"].as_i64().unwrap();
        assert_eq!(task["result"], json!({ "doubled": n * 2 }), "{task}");
    }
}

/// A js worker whose jobs take a few milliseconds, retried after a transport failure, and not
/// slowed by the default bucket (2/s).
fn add_double_worker(server: &Coordinator, dir: &Path) {
    std::fs::write(
        dir.join("double.js"),
        "export default ({ payload }) => { const end = Date.now() + 3; while (Date.now() < end) {} \
         return { doubled: payload.n * 2 } }",
    )
    .unwrap();
    let yaml = format!(
        "name: double\nkind: js\nmodule: {}\ntriggers: [{{ api: true }}]\n\
         rate_limit: {{ per_second: 1000, burst: 1000 }}\n\
         retry: {{ max_retries: 5, base_delay: 100ms, max_delay: 500ms }}\n",
        dir.join("double.js").display()
    );
    server.add_worker(&yaml);
}

/// The registered node `name` as `mechanics node list --json` shows it.
fn node(server: &Coordinator, name: &str) -> Value {
    let list = server.json(&["node", "list"]);
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no node {name} in {list}"))
}

/// Polls until node `name` is in `state`; panics after `limit`.
fn wait_state(server: &Coordinator, name: &str, state: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let node = node(server, name);
        if node["state"] == state {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "node {name} not {state} after {limit:?}: {node}\nserver log:\n{}",
            tail(&server.stderr(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn add_node(server: &Coordinator, name: &str, url: &str, token_env: &str, pki: &TestPki) {
    server.ok(&[
        "node",
        "add",
        name,
        "--url",
        url,
        "--token-env",
        token_env,
        "--ca-file",
        pki.ca_file.to_str().unwrap(),
    ]);
}

#[test]
fn a_pure_coordinator_runs_js_on_tls_nodes_and_loses_nothing_when_one_is_killed_midway() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let a = RemoteNode::start("127.0.0.1:0", &pki, "token-of-a");
    let mut b = RemoteNode::start("127.0.0.1:0", &pki, "token-of-b");
    let server = Coordinator::start(
        dir.path(),
        &["--local-nodes", "0"],
        &[
            ("NODE_A_TOKEN", "token-of-a"),
            ("NODE_B_TOKEN", "token-of-b"),
        ],
    );
    add_node(&server, "exec-a", &a.url(), "NODE_A_TOKEN", &pki);
    add_node(&server, "exec-b", &b.url(), "NODE_B_TOKEN", &pki);
    let listed = server.ok(&["node", "list"]);
    for column in [
        "KIND",
        "URL",
        "STATE",
        "IN_FLIGHT",
        "CAPACITY",
        "JOBS",
        "P50",
        "LAST_ERROR",
    ] {
        assert!(listed.contains(column), "{listed}");
    }
    wait_state(&server, "exec-a", "healthy", Duration::from_secs(10));
    wait_state(&server, "exec-b", "healthy", Duration::from_secs(10));
    let nodes = server.json(&["node", "list"]);
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["kind"] == "remote"),
        "no local node runs: {nodes}"
    );
    add_double_worker(&server, dir.path());

    // One task first: it runs on a remote node, nothing else could run it.
    let out = server.ok(&[
        "task",
        "submit",
        "double",
        "--payload",
        r#"{"n":21}"#,
        "--wait",
    ]);
    assert!(out.contains("42"), "{out}");

    const TASKS: usize = 1000;
    let submitting = Instant::now();
    let ids = submit_many(&server, "double", TASKS);
    let submitted = submitting.elapsed();
    // Midway: node b dies with jobs on it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = node(&server, "exec-b")["jobs"].as_u64().unwrap();
        if jobs >= 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b ran only {jobs} jobs ({submitted:?} to submit): {}\nserver log:\n{}",
            server.json(&["node", "list"]),
            tail(&server.stderr(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let b_addr = b.addr.clone();
    b.kill9();
    let down = node(&server, "exec-b");
    let state = wait_state_in(&server, "exec-b", &["unreachable", "tripped"]);
    assert!(down["kind"] == "remote", "{down}");

    for id in &ids {
        let task = server.wait_end(*id, Duration::from_secs(120));
        assert_eq!(task["state"], "completed", "{task}");
    }
    let tasks = server.tasks();
    let mut completed = 0;
    for id in &ids {
        let task = &tasks[id];
        assert_eq!(task["state"], "completed", "{task}");
        let n = task["payload"]["n"].as_i64().unwrap();
        assert_eq!(task["result"], json!({ "doubled": n * 2 }), "{task}");
        completed += 1;
    }
    assert_eq!(completed, TASKS, "every task completed once");
    let a_jobs = node(&server, "exec-a")["jobs"].as_u64().unwrap();
    assert!(a_jobs > 0, "node a took over");

    // Started again on its address, node b is used again without a coordinator restart.
    let b = RemoteNode::start(&b_addr, &pki, "token-of-b");
    wait_state(&server, "exec-b", "healthy", Duration::from_secs(15));
    let before = node(&server, "exec-b")["jobs"].as_u64().unwrap();
    let more = submit_many(&server, "double", 40);
    for id in &more {
        server.wait_end(*id, Duration::from_secs(60));
    }
    let after = node(&server, "exec-b")["jobs"].as_u64().unwrap();
    assert!(
        after > before,
        "node b got jobs again ({before} -> {after}); was {state}"
    );
    let log = server.stderr();
    assert!(
        !log.contains("token-of-a") && !log.contains("token-of-b"),
        "tokens never reach the log"
    );
    drop((a, b));
}

/// Polls until node `name` is in one of `states`; the state seen.
fn wait_state_in(server: &Coordinator, name: &str, states: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let node = node(server, name);
        if let Some(state) = states.iter().find(|s| node["state"] == **s) {
            return (*state).to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "node {name} not in {states:?}: {node}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wrong_token_is_refused_at_add_and_a_node_that_refuses_it_later_shows_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let node_process = RemoteNode::start("127.0.0.1:0", &pki, "the-right-token");
    let server = Coordinator::start(
        dir.path(),
        &["--local-nodes", "0"],
        &[("WRONG_TOKEN", "not-the-token")],
    );

    // Refused at add, naming the node and the field; nothing is stored.
    let out = server.cli(&[
        "node",
        "add",
        "exec-a",
        "--url",
        &node_process.url(),
        "--token-env",
        "WRONG_TOKEN",
        "--ca-file",
        pki.ca_file.to_str().unwrap(),
    ]);
    assert_ne!(code(&out), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("exec-a") && err.contains("token_env") && err.contains("unauthorized"),
        "{err}"
    );
    assert!(!err.contains("not-the-token"), "{err}");
    let remote: Vec<Value> = server.json(&["node", "list"])["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert!(remote.is_empty(), "{remote:?}");

    // Registered while down (accepted: it may come up later), then up with another token.
    let port = crate::support::closed_port();
    let url = format!("https://127.0.0.1:{port}");
    add_node(&server, "exec-b", &url, "WRONG_TOKEN", &pki);
    wait_state(&server, "exec-b", "unreachable", Duration::from_secs(10));
    let other = RemoteNode::start(&format!("127.0.0.1:{port}"), &pki, "the-right-token");
    let shown = wait_state(&server, "exec-b", "unauthorized", Duration::from_secs(10));
    assert!(
        shown["last_error"].as_str().unwrap().contains("401"),
        "{shown}"
    );
    add_double_worker(&server, dir.path());
    let submitted = submit_many(&server, "double", 3);
    let stats = stats(&other, &pki, "the-right-token");
    assert_eq!(stats["jobs_run"], 0, "nothing was sent to it: {stats}");
    let task = server.json(&["task", "show", &submitted[0].to_string()]);
    assert_ne!(task["state"], "completed", "{task}");
}

/// The node's `/stats`, asked with its `token` over TLS.
fn stats(node: &RemoteNode, pki: &TestPki, token: &str) -> Value {
    let ca = std::fs::read(&pki.ca_file).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .build()
            .unwrap();
        let response = client
            .get(format!("{}/stats", node.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
    })
}

#[test]
fn plaintext_off_loopback_is_refused_by_the_node_and_by_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    // The node: a token but no certificate on a non-loopback address.
    let out = Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args(["node", "serve", "--addr", "0.0.0.0:0"])
        .env("MECHANICS_NODE_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no READY line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing plaintext") && err.contains("--tls-cert"),
        "{err}"
    );
    // A key that is not a key is named.
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let out = Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args(["node", "serve", "--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.cert_file)
        .arg("--tls-key")
        .arg(&pki.ca_file)
        .env("MECHANICS_NODE_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));

    // The registry: the CLI refuses before sending, the API with a 400 naming the field.
    let server = Coordinator::start(dir.path(), &["--local-nodes", "0"], &[("T", "x")]);
    let out = server.cli(&[
        "node",
        "add",
        "far",
        "--url",
        "http://10.0.0.7:7070",
        "--token-env",
        "T",
    ]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("url: "), "{}", stderr(&out));
    let client = TestClient::new(Duration::from_secs(5));
    let (status, body) = client.post(
        &format!("{}/api/v1/nodes", server.url),
        &json!({ "name": "far", "url": "http://10.0.0.7:7070", "token_env": "T" }),
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"far\"") && message.contains("url: "),
        "{message}"
    );
    // An unreadable CA file is named too.
    let (status, body) = client.post(
        &format!("{}/api/v1/nodes", server.url),
        &json!({ "name": "near", "url": "https://127.0.0.1:9", "token_env": "T",
                 "ca_file": dir.path().join("missing.pem") }),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ca_file"),
        "{body}"
    );
    // So are a token file that cannot be read and a token variable that is not set.
    for (spec, field) in [
        (
            json!({ "name": "near", "url": "https://127.0.0.1:9",
                    "token_file": dir.path().join("no-token") }),
            "token_file: ",
        ),
        (
            json!({ "name": "near", "url": "https://127.0.0.1:9", "token_env": "UNSET_TOKEN" }),
            "token_env: ",
        ),
    ] {
        let (status, body) = client.post(&format!("{}/api/v1/nodes", server.url), &spec);
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"near\"") && message.contains(field),
            "{message}"
        );
    }
    let nodes = server.json(&["node", "list"]);
    assert!(nodes["nodes"].as_array().unwrap().is_empty(), "{nodes}");
}

/// A node of another protocol version (a stand-in answering `/stats` as such a build would, on
/// loopback) is refused at `node add`, naming the URL and both versions, and nothing is stored.
#[test]
fn a_node_of_another_protocol_version_is_refused_at_add() {
    let dir = tempfile::tempdir().unwrap();
    let future = crate::support::HttpServer::start(axum::Router::new().route(
        "/stats",
        axum::routing::get(|| async {
            axum::Json(json!({
                "name": null, "pid": 1, "uptime_ms": 1, "jobs_run": 0, "jobs_in_flight": 0,
                "rss_bytes": 1, "memory_cap_bytes": null, "recycle_due": false, "pool": {},
                "protocol": 999, "capacity": 2
            }))
        }),
    ));
    let server = Coordinator::start(dir.path(), &["--local-nodes", "0"], &[("T", "x")]);
    let out = server.cli(&[
        "node",
        "add",
        "exec-new",
        "--url",
        &future.url(),
        "--token-env",
        "T",
    ]);
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("\"exec-new\"")
            && said.contains("url: ")
            && said.contains("protocol version 999"),
        "{said}"
    );
    let nodes = server.json(&["node", "list"]);
    assert!(nodes["nodes"].as_array().unwrap().is_empty(), "{nodes}");
}

/// Local nodes are `node-1`, `node-2`, ... on every coordinator: a remote node may not take such
/// a name (here the local node's own, and one another coordinator with more local nodes uses).
#[test]
fn a_remote_node_may_not_take_a_local_node_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[("T", "x")]);
    let client = TestClient::new(Duration::from_secs(5));
    for name in ["node-1", "node-7"] {
        let out = server.cli(&[
            "node",
            "add",
            name,
            "--url",
            "https://127.0.0.1:9",
            "--token-env",
            "T",
        ]);
        assert_eq!(code(&out), Some(2), "{}", stderr(&out));
        let said = stderr(&out);
        assert!(
            said.contains("name: ") && said.contains("local node") && said.contains(name),
            "{said}"
        );
        let (status, body) = client.post(
            &format!("{}/api/v1/nodes", server.url),
            &json!({ "name": name, "url": "https://127.0.0.1:9", "token_env": "T" }),
        );
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("\"{name}\"")) && message.contains("name: "),
            "{message}"
        );
    }
    // Nothing changed: the local node alone, still local.
    let nodes = server.json(&["node", "list"]);
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["name"], "node-1", "{nodes:?}");
    assert_eq!(nodes[0]["kind"], "local", "{nodes:?}");
}

/// The value of the `/metrics` sample `series` (name and labels exactly as exposed), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The `/logs` entries of `node`'s state changes, oldest first, as `(from, to, outcome)`.
fn node_changes(
    server: &Coordinator,
    client: &TestClient,
    node: &str,
) -> Vec<(String, String, String)> {
    let (status, body) = client.get(&format!("{}/logs?action=node&limit=1000", server.url));
    assert_eq!(status, 200, "{body}");
    let mut changes: Vec<_> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["detail"]["node"] == node)
        .map(|entry| {
            let detail = &entry["detail"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&detail["from"]),
                text(&detail["to"]),
                text(&entry["outcome"]),
            )
        })
        .collect();
    changes.reverse();
    changes
}

#[test]
fn node_metrics_and_state_changes_cover_local_and_remote_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let mut remote = RemoteNode::start("127.0.0.1:0", &pki, "token-of-a");
    // One local node next to the remote one.
    let server = Coordinator::start(dir.path(), &[], &[("NODE_A_TOKEN", "token-of-a")]);
    add_node(&server, "exec-a", &remote.url(), "NODE_A_TOKEN", &pki);
    wait_state(&server, "exec-a", "healthy", Duration::from_secs(10));
    add_double_worker(&server, dir.path());
    for id in submit_many(&server, "double", 60) {
        let task = server.wait_end(id, Duration::from_secs(60));
        assert_eq!(task["state"], "completed", "{task}");
    }

    let client = TestClient::new(Duration::from_secs(5));
    let metrics = client.get_text(&format!("{}/metrics", server.url));
    let up = |metrics: &str, node: &str, kind: &str| {
        sample(
            metrics,
            &format!("mechanics_node_up{{node=\"{node}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(up(&metrics, "node-1", "local"), Some(1.0), "{metrics}");
    assert_eq!(up(&metrics, "exec-a", "remote"), Some(1.0), "{metrics}");
    assert!(
        !metrics.contains("kind=\"executor\""),
        "kinds are local, remote or process: {metrics}"
    );
    // Every attempt is counted once, on the node it ended on.
    let ok = |metrics: &str, node: &str| {
        sample(
            metrics,
            &format!("mechanics_node_jobs_total{{node=\"{node}\",outcome=\"ok\"}}"),
        )
        .unwrap_or(0.0)
    };
    let remote_ok = ok(&metrics, "exec-a");
    assert_eq!(ok(&metrics, "node-1") + remote_ok, 60.0, "{metrics}");
    assert_eq!(
        remote_ok,
        node(&server, "exec-a")["jobs"].as_f64().unwrap(),
        "the counter agrees with node list: {metrics}"
    );

    // The remote node goes away: down in the metrics, one entry in /logs however many checks
    // fail meanwhile (checks run every second; three of them fail here).
    let addr = remote.addr.clone();
    remote.kill9();
    wait_state(&server, "exec-a", "unreachable", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let metrics = client.get_text(&format!("{}/metrics", server.url));
    assert_eq!(up(&metrics, "exec-a", "remote"), Some(0.0), "{metrics}");
    assert_eq!(up(&metrics, "node-1", "local"), Some(1.0), "{metrics}");
    let _remote = RemoteNode::start(&addr, &pki, "token-of-a");
    wait_state(&server, "exec-a", "healthy", Duration::from_secs(10));

    let exec_a = node_changes(&server, &client, "exec-a");
    let owned = |from: &str, to: &str, outcome: &str| (from.into(), to.into(), outcome.into());
    assert_eq!(
        exec_a,
        vec![
            owned("unchecked", "healthy", "ok"),
            owned("healthy", "unreachable", "fail"),
            owned("unreachable", "healthy", "ok"),
        ],
        "once per change"
    );
    let (_, body) = client.get(&format!("{}/logs?action=node&outcome=fail", server.url));
    let down = &body["entries"][0];
    assert_eq!(down["trace_id"], "node-exec-a", "{down}");
    assert!(
        down["error"].as_str().unwrap().contains("health check"),
        "the entry says why: {down}"
    );
    let metrics = client.get_text(&format!("{}/metrics", server.url));
    assert_eq!(up(&metrics, "exec-a", "remote"), Some(1.0), "{metrics}");
}

/// The pids of the server's local node processes.
fn local_node_pids(server: &Coordinator) -> Vec<i32> {
    crate::support::descendants(server.pid() as i32)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("node\0serve"))
        })
        .collect()
}

/// Polls `node_changes` of `node` until `done` holds; panics after 30 s.
fn wait_changes(
    server: &Coordinator,
    client: &TestClient,
    node: &str,
    what: &str,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let changes = node_changes(server, client, node);
        if done(&changes) {
            return changes;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {changes:?}\nserver log:\n{}",
            tail(&server.stderr(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A local node killed behind the coordinator's back: one `node` entry when it goes down (with
/// why) and one when its restart is running again, not one per snapshot of its counters.
#[test]
fn a_local_node_that_dies_and_restarts_is_in_logs_once_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let client = TestClient::new(Duration::from_secs(5));
    let nodes = local_node_pids(&server);
    assert_eq!(nodes.len(), 1, "one local node process: {nodes:?}");
    // SAFETY: kill(2) on a child of the server this test started.
    unsafe { libc::kill(nodes[0], libc::SIGKILL) };

    let local = wait_changes(&server, &client, "node-1", "the restart runs", |c| {
        c.last().is_some_and(|(_, to, _)| to == "running")
    });
    let owned = |from: &str, to: &str, outcome: &str| (from.into(), to.into(), outcome.into());
    assert_eq!(
        local,
        vec![
            owned("running", "backing_off", "fail"),
            owned("backing_off", "running", "ok"),
        ],
        "once per change"
    );
    let (_, body) = client.get(&format!("{}/logs?action=node&outcome=fail", server.url));
    let down = &body["entries"][0];
    assert_eq!(down["trace_id"], "node-node-1", "{down}");
    assert_eq!(down["detail"]["kind"], "local", "{down}");
    assert!(
        down["error"].as_str().is_some_and(|why| !why.is_empty()),
        "the entry says why: {down}"
    );
}

/// A recycle replaces a local node's process and its supervision: the coordinator keeps
/// watching the node under its name, so the new process's start and a later death of it are in
/// `/logs`, and the metrics follow.
#[test]
fn a_recycled_local_node_is_still_watched_and_its_later_changes_are_in_logs_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let client = TestClient::new(Duration::from_secs(5));
    let first = local_node_pids(&server);
    assert_eq!(first.len(), 1, "one local node process: {first:?}");
    // One allocation far past the job's memory limit parks its engine thread for good; a node
    // that gave up on a thread asks to be recycled.
    std::fs::write(
        dir.path().join("hog.js"),
        "export default () => 'a'.repeat(2 ** 30).length",
    )
    .unwrap();
    server.add_worker(&format!(
        "name: hog\nkind: js\nmodule: {}\ntriggers: [{{ api: true }}]\n\
         limits: {{ max_memory_mb: 64 }}\n",
        dir.path().join("hog.js").display()
    ));
    let out = server.cli(&["task", "submit", "hog", "--wait"]);
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));

    let owned = |from: &str, to: &str, outcome: &str| (from.into(), to.into(), outcome.into());
    let recycled = wait_changes(&server, &client, "node-1", "the recycled node runs", |c| {
        c.iter().any(|(_, to, _)| to == "stopped")
            && c.last().is_some_and(|(_, to, _)| to == "running")
    });
    assert_eq!(
        recycled.last(),
        Some(&owned("stopped", "running", "ok")),
        "the new process is the same node: {recycled:?}"
    );
    let second = local_node_pids(&server);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "a new process");

    // The new process dies: the watch that followed the recycle sees it, once per change.
    // SAFETY: kill(2) on a child of the server this test started.
    unsafe { libc::kill(second[0], libc::SIGKILL) };
    let changes = wait_changes(
        &server,
        &client,
        "node-1",
        "the death after the recycle",
        |c| c.len() >= recycled.len() + 2 && c.last().is_some_and(|(_, to, _)| to == "running"),
    );
    assert_eq!(
        changes[recycled.len()..],
        [
            owned("running", "backing_off", "fail"),
            owned("backing_off", "running", "ok"),
        ],
        "{changes:?}"
    );
    let (_, body) = client.get(&format!(
        "{}/logs?action=node&outcome=fail&limit=1",
        server.url
    ));
    let down = &body["entries"][0];
    assert_eq!(down["detail"]["to"], "backing_off", "{down}");
    assert!(
        down["error"].as_str().is_some_and(|why| !why.is_empty()),
        "the entry says why: {down}"
    );
    let third = local_node_pids(&server);
    assert!(!third.is_empty() && third != second, "restarted: {third:?}");
    let metrics = client.get_text(&format!("{}/metrics", server.url));
    assert_eq!(
        sample(
            &metrics,
            "mechanics_node_up{node=\"node-1\",kind=\"local\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// The job time limit of the hang test's worker, and the fleet's grace past it.
const HANG_LIMIT: Duration = Duration::from_millis(1000);
const WATCHDOG_GRACE: Duration = Duration::from_secs(2);

#[test]
fn a_node_that_hangs_is_routed_around_and_its_attempts_end_within_the_time_limit_plus_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let a = RemoteNode::start("127.0.0.1:0", &pki, "token-of-a");
    let b = RemoteNode::start("127.0.0.1:0", &pki, "token-of-b");
    // As many runners as the two nodes have slots: an attempt is sent as soon as it starts.
    let server = Coordinator::start(
        dir.path(),
        &["--local-nodes", "0", "--concurrency", "4"],
        &[
            ("NODE_A_TOKEN", "token-of-a"),
            ("NODE_B_TOKEN", "token-of-b"),
        ],
    );
    add_node(&server, "exec-a", &a.url(), "NODE_A_TOKEN", &pki);
    add_node(&server, "exec-b", &b.url(), "NODE_B_TOKEN", &pki);
    wait_state(&server, "exec-a", "healthy", Duration::from_secs(10));
    wait_state(&server, "exec-b", "healthy", Duration::from_secs(10));
    add_busy_worker(
        &server,
        dir.path(),
        "slow",
        20,
        HANG_LIMIT.as_millis() as u64,
    );

    let ids = submit_many(&server, "slow", 300);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node(&server, "exec-b")["jobs"].as_u64().unwrap() < 20 {
        assert!(Instant::now() < deadline, "node b got no jobs");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Hung with jobs on it: the process is there, its sockets accept, nothing answers.
    b.signal(libc::SIGSTOP);
    let state = wait_state_in(&server, "exec-b", &["unreachable", "tripped"]);
    all_completed(&server, &ids);

    let bound = HANG_LIMIT + WATCHDOG_GRACE + Duration::from_millis(1500);
    let cut_off = cut_off_attempts(&server, &ids, "exec-b", bound);
    assert!(!cut_off.is_empty(), "jobs were on node b when it hung");
    let a_jobs = node(&server, "exec-a")["jobs"].as_u64().unwrap();
    assert!(a_jobs > 0, "node a took over");

    // Resumed, it is found healthy and gets jobs again without a coordinator restart.
    b.signal(libc::SIGCONT);
    wait_state(&server, "exec-b", "healthy", Duration::from_secs(15));
    let before = node(&server, "exec-b")["jobs"].as_u64().unwrap();
    let more = submit_many(&server, "slow", 40);
    all_completed(&server, &more);
    let after = node(&server, "exec-b")["jobs"].as_u64().unwrap();
    assert!(
        after > before,
        "node b used again ({before} -> {after}); was {state}; cut off: {cut_off:?} ms"
    );
}

#[test]
fn two_coordinators_on_one_postgresql_share_the_node_registry() {
    let db = mechanics_test_support::postgres::TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let exec = RemoteNode::start("127.0.0.1:0", &pki, "token-of-a");
    let homes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers: Vec<Coordinator> = homes
        .iter()
        .map(|home| {
            Coordinator::start(
                home.path(),
                &["--db", db.url(), "--local-nodes", "0"],
                &[("NODE_A_TOKEN", "token-of-a")],
            )
        })
        .collect();
    // Added through the first only; the second reads it from the shared registry.
    add_node(&servers[0], "exec-a", &exec.url(), "NODE_A_TOKEN", &pki);
    for server in &servers {
        wait_state(server, "exec-a", "healthy", Duration::from_secs(15));
    }
    add_busy_worker(&servers[0], dir.path(), "double", 2, 5000);

    const EACH: usize = 100;
    let ids: Vec<Vec<i64>> = servers
        .iter()
        .map(|server| {
            // The worker reaches the second server's registry within a reconcile.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !server.ok(&["worker", "list"]).contains("double") {
                assert!(
                    Instant::now() < deadline,
                    "the worker reached {}",
                    server.url
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            submit_many(server, "double", EACH)
        })
        .collect();
    all_completed(&servers[0], &ids.concat());
    for server in &servers {
        let jobs = node(server, "exec-a")["jobs"].as_u64().unwrap();
        assert!(jobs > 0, "{} sent jobs to the shared node", server.url);
    }
    // Each task ran once: the node ran exactly as many jobs as there were tasks.
    let ran = stats(&exec, &pki, "token-of-a")["jobs_run"]
        .as_u64()
        .unwrap();
    assert_eq!(ran, (2 * EACH) as u64, "every task ran once on the node");

    // Removed through the second, it is gone from both.
    servers[1].ok(&["node", "rm", "exec-a"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in &servers {
        loop {
            let list = server.json(&["node", "list"]);
            if list["nodes"].as_array().unwrap().is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "still listed: {list}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TCP proxy on 127.0.0.1 to `target` that counts the connections made through it.
struct CountingProxy {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingProxy {
    fn start(target: &str) -> CountingProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let target = target.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        CountingProxy { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn jobs_on_a_remote_node_reuse_their_tls_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let exec = RemoteNode::start("127.0.0.1:0", &pki, "token-of-a");
    let proxy = CountingProxy::start(&exec.addr);
    let server = Coordinator::start(
        dir.path(),
        &["--local-nodes", "0"],
        &[("NODE_A_TOKEN", "token-of-a")],
    );
    let url = format!("https://{}", proxy.addr);
    add_node(&server, "exec-a", &url, "NODE_A_TOKEN", &pki);
    let capacity = wait_state(&server, "exec-a", "healthy", Duration::from_secs(10))["capacity"]
        .as_u64()
        .unwrap() as usize;
    add_double_worker(&server, dir.path());
    const TASKS: usize = 300;
    let ids = submit_many(&server, "double", TASKS);
    all_completed(&server, &ids);
    let jobs = node(&server, "exec-a")["jobs"].as_u64().unwrap() as usize;
    assert_eq!(jobs, TASKS);
    // The check at `node add` (a client of its own), then one connection per job slot and one for
    // the health checks, each kept alive: a TLS handshake per connection, not per job. A loaded
    // machine may time out a health check or a slot and reconnect, so the bound leaves room for a
    // few of those; a handshake per job would be 300.
    let connections = proxy.connections();
    assert!(
        connections <= capacity + 6,
        "{connections} connections (so TLS handshakes) for {jobs} jobs and the health checks"
    );
}

/// The attempts of `ids` that ran on `node` and did not complete: each must be a
/// `transport_error` that ended within `bound` of its start; returns how long each took (ms).
fn cut_off_attempts(server: &Coordinator, ids: &[i64], node: &str, bound: Duration) -> Vec<i64> {
    let mut took = Vec::new();
    for id in ids {
        let task = server.json(&["task", "show", &id.to_string()]);
        for attempt in task["attempts"].as_array().unwrap() {
            if attempt["node"] != node || attempt["outcome"] == "completed" {
                continue;
            }
            assert_eq!(attempt["outcome"], "transport_error", "{task}");
            // The API writes the times as RFC 3339; the domain type reads them back as unix ms.
            let times: mechanics_proto::domain::TaskAttempt =
                serde_json::from_value(attempt.clone()).unwrap();
            let ms = times.ended_at - times.started_at;
            assert!(
                ms <= bound.as_millis() as i64,
                "an attempt on the cut-off node took {ms} ms (bound {bound:?}): {task}"
            );
            took.push(ms);
        }
    }
    took
}

#[test]
fn a_node_in_a_container_cut_off_its_network_is_routed_around_and_used_again_once_connected() {
    use mechanics_test_support::docker::{Container, Network, ScratchImage};

    let dir = tempfile::tempdir().unwrap();
    let network = Network::create_with_subnet("mechanics-partition");
    let ip = network.address(10);
    // The certificate is for the container's fixed address on the private network.
    let pki = TestPki::create(dir.path(), &[ip.as_str()]);
    let image = ScratchImage::build(
        "mechanics-node",
        Path::new(env!("CARGO_BIN_EXE_mechanics")),
        &["node", "serve"],
    );
    let mount = format!("{}:/pki:ro", dir.path().display());
    let container = Container::run(
        &image.tag,
        &[
            "--network",
            &network.name,
            "--ip",
            &ip,
            "-v",
            &mount,
            "-e",
            "MECHANICS_NODE_TOKEN=token-of-d",
        ],
        &[
            "--addr",
            "0.0.0.0:7070",
            "--workers",
            "2",
            "--tls-cert",
            "/pki/node.pem",
            "--tls-key",
            "/pki/node-key.pem",
        ],
    );
    // The coordinator on this host, with a local node to take over, reaches the container
    // through the bridge.
    let server = Coordinator::start(
        dir.path(),
        &["--concurrency", "4"],
        &[("NODE_D_TOKEN", "token-of-d")],
    );
    add_node(
        &server,
        "exec-d",
        &format!("https://{ip}:7070"),
        "NODE_D_TOKEN",
        &pki,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while node(&server, "exec-d")["state"] != "healthy" {
        assert!(
            Instant::now() < deadline,
            "the container's node is not healthy: {}\ncontainer log:\n{}",
            node(&server, "exec-d"),
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    add_busy_worker(
        &server,
        dir.path(),
        "slow",
        20,
        HANG_LIMIT.as_millis() as u64,
    );

    let ids = submit_many(&server, "slow", 300);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node(&server, "exec-d")["jobs"].as_u64().unwrap() < 20 {
        assert!(
            Instant::now() < deadline,
            "the container's node got no jobs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The partition: the process runs on, but nothing reaches it; packets are dropped, not
    // refused.
    container.disconnect(&network);
    let state = wait_state_in(&server, "exec-d", &["unreachable", "tripped"]);
    all_completed(&server, &ids);
    let bound = HANG_LIMIT + WATCHDOG_GRACE + Duration::from_millis(1500);
    let cut_off = cut_off_attempts(&server, &ids, "exec-d", bound);
    assert!(
        !cut_off.is_empty(),
        "jobs were on the node when it was cut off"
    );
    let local = node(&server, "node-1")["jobs"].as_u64().unwrap();
    assert!(local > 0, "the local node took over");

    container.connect(&network, Some(&ip));
    wait_state(&server, "exec-d", "healthy", Duration::from_secs(20));
    let before = node(&server, "exec-d")["jobs"].as_u64().unwrap();
    let more = submit_many(&server, "slow", 40);
    all_completed(&server, &more);
    let after = node(&server, "exec-d")["jobs"].as_u64().unwrap();
    assert!(
        after > before,
        "used again once connected ({before} -> {after}); was {state}; cut off: {cut_off:?} ms"
    );
}
