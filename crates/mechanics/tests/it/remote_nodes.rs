//! Remote executor nodes: real `mechanics node serve` processes over TLS (a CA and certificate
//! made per test), registered with `mechanics node add` on a coordinator that runs no local node
//! (`--local-nodes 0`); one killed with `kill -9` under load and started again; a wrong token;
//! plain HTTP off loopback.

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
    let stats = stats(&other, &pki);
    assert_eq!(stats["jobs_run"], 0, "nothing was sent to it: {stats}");
    let task = server.json(&["task", "show", &submitted[0].to_string()]);
    assert_ne!(task["state"], "completed", "{task}");
}

/// The node's `/stats`, asked with its token over TLS.
fn stats(node: &RemoteNode, pki: &TestPki) -> Value {
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
            .bearer_auth("the-right-token")
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
    let nodes = server.json(&["node", "list"]);
    assert!(nodes["nodes"].as_array().unwrap().is_empty(), "{nodes}");
}
