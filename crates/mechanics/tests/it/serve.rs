//! `mechanics serve` and the CLI client end to end: the real binary, a real SQLite file, real
//! executor nodes, real http and process workers on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Coordinator, HttpServer, Seen, closed_port, code, command, http_worker, stderr, tail,
};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn js_workers_from_worker_add_to_completed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);

    // The README's quick start, as written.
    let added = server.ok(&[
        "worker",
        "add",
        "-f",
        &format!("{REPO}/examples/hello-worker/worker.yml"),
    ]);
    assert_eq!(added, "worker hello added (revision 1)\n");
    let out = server.cli(&[
        "task",
        "submit",
        "hello",
        "--payload",
        r#"{"name":"Ada"}"#,
        "--wait",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "completed");
    assert_eq!(task["result"]["greeting"], "Hello, Ada!");
    assert_eq!(task["result"]["hex"], "48656c6c6f2c2041646121");
    assert_eq!(task["result"]["task"], task["id"]);

    // People's output: the table and the task.
    let list = server.ok(&["worker", "list"]);
    assert!(
        list.starts_with("NAME") && list.contains("hello  js    ./hello.js"),
        "{list}"
    );
    let shown = server.ok(&["task", "show", &task["id"].to_string()]);
    assert!(
        shown.contains("state:     completed") && shown.contains("\"greeting\": \"Hello, Ada!\""),
        "{shown}"
    );

    // A worker whose config has an endpoint to an API on 127.0.0.1.
    let api = HttpServer::start(axum::Router::new().route(
        "/users/{id}",
        axum::routing::get(
            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                axum::Json(json!({ "id": id, "name": format!("user {id}") }))
            },
        ),
    ));
    let work = tempfile::tempdir_in(dir.path()).unwrap();
    std::fs::write(
        work.path().join("lookup.js"),
        r#"import endpoint from "mechanics:endpoint";
export default async function main({ payload }) {
  const res = await endpoint("users", { urlParams: { id: payload.id } });
  return { status: res.status, name: res.body.name };
}"#,
    )
    .unwrap();
    std::fs::write(
        work.path().join("worker.yml"),
        format!(
            r#"name: lookup
kind: js
module: lookup.js
config:
  endpoints:
    users:
      method: get
      url_template: "{}/users/{{id}}"
      url_param_specs: {{ id: {{ min_bytes: 1, max_bytes: 16 }} }}
      timeout_ms: 5000
triggers: [ {{ api: true }} ]
"#,
            api.url()
        ),
    )
    .unwrap();
    server.ok(&[
        "worker",
        "add",
        "-f",
        work.path().join("worker.yml").to_str().unwrap(),
    ]);
    let out = server.cli(&[
        "task",
        "submit",
        "lookup",
        "--payload",
        r#"{"id":"42"}"#,
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["result"], json!({ "status": 200, "name": "user 42" }));

    // A script that throws: failed at once, `--wait` exits 1 with the script's message.
    std::fs::write(
        work.path().join("throw.js"),
        "export default () => { throw new Error('nope') }",
    )
    .unwrap();
    std::fs::write(
        work.path().join("throw.yml"),
        "name: thrower\nkind: js\nmodule: throw.js\ntriggers: [{ api: true }]\n",
    )
    .unwrap();
    server.ok(&[
        "worker",
        "add",
        "-f",
        work.path().join("throw.yml").to_str().unwrap(),
    ]);
    let out = server.cli(&["task", "submit", "thrower", "--wait"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: task ") && err.contains("ended failed") && err.contains("nope"),
        "{err}"
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("state:     failed"), "{shown}");

    // The executor node is listed, with snake_case names.
    let nodes = server.json(&["node", "list"]);
    let node = &nodes["nodes"][0];
    assert_eq!(node["name"], "node-1");
    assert_eq!(node["state"], "running");
    assert_eq!(node["breaker"], "closed");
    assert!(node["jobs"].as_u64().unwrap() >= 3, "{nodes}");
    // Its breaker is closed: the reset says there was nothing to re-arm.
    let reset = server.ok(&["node", "reset", "node-1"]);
    assert!(
        reset.contains("closed already: nothing to re-arm"),
        "{reset}"
    );
    let out = server.cli(&["node", "reset", "node-9"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("node-9"), "{}", stderr(&out));
}

#[test]
fn http_workers_complete_fail_on_5xx_and_go_dead_then_retry_revives_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let seen: Seen = Arc::default();
    let status = Arc::new(Mutex::new(200));
    let worker = HttpServer::start(http_worker(seen.clone(), Duration::ZERO, status.clone()));
    server.add_worker(&format!(
        "name: echo\nkind: http\nurl: {}\ntriggers: [{{ api: true }}]\n",
        worker.url()
    ));
    let out = server.cli(&[
        "task",
        "submit",
        "echo",
        "--payload",
        r#"{"x":1}"#,
        "--wait",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "completed");
    assert_eq!(
        task["result"],
        json!({ "echo": { "x": 1 }, "attempt": 1, "worker": "echo" })
    );
    let first_id = task["id"].to_string();

    // 5xx: failed at once, no second attempt.
    *status.lock().unwrap() = 500;
    let before = seen.lock().unwrap().len();
    let out = server.cli(&["task", "submit", "echo", "--wait", "--json"]);
    assert_eq!(code(&out), Some(1));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "failed");
    assert_eq!(task["attempt"], 1);
    assert!(
        task["error"].as_str().unwrap().contains("500"),
        "{}",
        task["error"]
    );
    assert_eq!(seen.lock().unwrap().len(), before + 1);

    // Refused connections: retried (max_retries 1), then dead.
    let port = closed_port();
    server.add_worker(&format!(
        "name: away\nkind: http\nurl: http://127.0.0.1:{port}\ntriggers: [{{ api: true }}]\n\
         retry: {{ max_retries: 1, base_delay: 100ms, max_delay: 200ms }}\n"
    ));
    let out = server.cli(&["task", "submit", "away", "--wait", "--json"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "dead", "{task}");
    assert_eq!(
        task["attempt"], 2,
        "the first attempt and one retry: {task}"
    );
    let id = task["id"].to_string();
    assert!(stderr(&out).contains("ended dead"), "{}", stderr(&out));

    // `task retry` with the worker now answering: completed.
    *status.lock().unwrap() = 200;
    let revived_seen: Seen = Arc::default();
    let _revived = HttpServer::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        http_worker(revived_seen.clone(), Duration::ZERO, status.clone()),
    );
    // `--wait` follows it like `task watch`: a line per state or attempt, the last completed.
    let retried = server.ok(&["task", "retry", &id, "--wait"]);
    let last = retried.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(&format!("task {id} completed (attempt 3)")),
        "{retried}"
    );
    let task = server.wait_end(id.parse().unwrap(), Duration::from_secs(30));
    assert_eq!(task["state"], "completed", "{task}");
    // Watching an ended task prints where it ended; the exit status says how.
    let watched = server.ok(&["task", "watch", &id]);
    assert_eq!(watched.lines().count(), 1, "{watched}");
    let failed_id = failed_task_id(&server);
    let out = server.cli(&["task", "watch", &failed_id]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(" failed (attempt 1): "));
    let shown = server.ok(&["task", "show", &first_id]);
    assert!(shown.contains("trigger:   api"), "{shown}");
    assert!(
        shown.contains("payload:\n  {\n    \"x\": 1\n  }"),
        "{shown}"
    );
    assert_eq!(task["result"]["attempt"], 3);
    assert_eq!(
        revived_seen.lock().unwrap().as_slice(),
        &[(id.parse().unwrap(), 3)]
    );

    // An update through the CLI reaches the running server: the next task goes to the new URL.
    let dir2 = tempfile::tempdir_in(dir.path()).unwrap();
    let path = dir2.path().join("worker.yml");
    std::fs::write(
        &path,
        format!(
            "name: away\nkind: http\nurl: {}\ntriggers: [{{ api: true }}]\n",
            worker.url()
        ),
    )
    .unwrap();
    let updated = server.ok(&["worker", "add", "-f", path.to_str().unwrap()]);
    assert_eq!(updated, "worker away updated (revision 2)\n");
    let before = seen.lock().unwrap().len();
    server.ok(&["task", "submit", "away", "--wait"]);
    assert_eq!(seen.lock().unwrap().len(), before + 1);

    // Listing filters, and the people's table.
    let dead = server.json(&["task", "list", "--state", "dead"]);
    assert_eq!(dead["tasks"].as_array().unwrap().len(), 0, "{dead}");
    let failed = server.json(&["task", "list", "--state", "failed", "--worker", "echo"]);
    assert_eq!(failed["tasks"].as_array().unwrap().len(), 1, "{failed}");
    let table = server.ok(&["task", "list", "--limit", "2"]);
    assert!(table.starts_with("ID  "), "{table}");
    assert!(table.lines().next().unwrap().contains("TRIGGER"), "{table}");
    assert!(table.lines().nth(1).unwrap().contains(" api "), "{table}");
    assert!(table.contains("more: pass --cursor"), "{table}");

    // Cancel: only a task that has not ended.
    let out = server.cli(&["task", "cancel", &id]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

/// The id of the one `failed` task of worker `echo`.
fn failed_task_id(server: &Coordinator) -> String {
    let failed = server.json(&["task", "list", "--state", "failed", "--worker", "echo"]);
    failed["tasks"][0]["id"].to_string()
}

#[test]
fn process_workers_are_launched_and_complete_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let work = tempfile::tempdir_in(dir.path()).unwrap();
    let script = work.path().join("worker.py");
    std::fs::write(
        &script,
        r#"import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps({"pid": os.getpid(), "doubled": body["payload"]["n"] * 2}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["MECHANICS_WORKER_PORT"])), Handler).serve_forever()
"#,
    )
    .unwrap();
    server.add_worker(&format!(
        "name: py\nkind: process\ncommand: [\"python3\", \"{}\"]\n\
         restart: {{ policy: on-failure, initial_backoff_ms: 100, max_backoff_ms: 1000 }}\n\
         triggers: [{{ api: true }}]\n\
         retry: {{ max_retries: 20, base_delay: 200ms, max_delay: 500ms }}\n",
        script.display()
    ));
    let out = server.cli(&[
        "task",
        "submit",
        "py",
        "--payload",
        r#"{"n":21}"#,
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(
        code(&out),
        Some(0),
        "{}\n{}",
        stderr(&out),
        tail(&server.stderr(), 30)
    );
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "completed");
    assert_eq!(task["result"]["doubled"], 42);
    let nodes = server.json(&["node", "list"]);
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "py" && n["state"] == "running"),
        "{nodes}"
    );
    // Removing the worker stops its process.
    server.ok(&["worker", "rm", "py"]);
    let pid = task["result"]["pid"].as_i64().unwrap() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the process worker {pid} still runs after `worker rm`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_is_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let write = |name: &str, text: &str| {
        let path = work.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // Checked before anything is sent: no server needed, exit 2.
    let unreachable = |args: &[&str]| {
        command(work)
            .env("MECHANICS_SERVER", "http://127.0.0.1:1")
            .args(args)
            .output()
            .unwrap()
    };
    let malformed = write("malformed.yml", "name: [unclosed\nkind: js\n");
    let out = unreachable(&["worker", "add", "-f", &malformed]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!("error: {malformed}: ")),
        "{}",
        stderr(&out)
    );
    let unknown = write(
        "unknown.yml",
        "name: w\nkind: http\nurl: http://127.0.0.1:9\nnmae: typo\n",
    );
    let out = unreachable(&["worker", "add", "-f", &unknown]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("unknown.yml") && stderr(&out).contains("nmae"),
        "{}",
        stderr(&out)
    );
    let invalid = write(
        "invalid.yml",
        "name: w\nkind: http\nurl: http://127.0.0.1:9\nretry: { base_delay: 1h }\n",
    );
    let out = unreachable(&["worker", "add", "-f", &invalid]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("retry.base_delay"),
        "{}",
        stderr(&out)
    );
    let limits = write(
        "limits.yml",
        "name: w\nkind: js\nmodule: m.js\nlimits: { max_loop_iterations: 0 }\n",
    );
    let out = unreachable(&["worker", "add", "-f", &limits]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("max_loop_iterations"),
        "{}",
        stderr(&out)
    );
    let no_module = write("nomodule.yml", "name: w\nkind: js\nmodule: missing.js\n");
    let out = unreachable(&["worker", "add", "-f", &no_module]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("module: cannot read") && stderr(&out).contains("missing.js"),
        "{}",
        stderr(&out)
    );
    let out = unreachable(&["worker", "add", "-f", "/nonexistent/worker.yml"]);
    assert_eq!(code(&out), Some(2));
    let out = unreachable(&["task", "submit", "w", "--payload", "{nope"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("--payload"), "{}", stderr(&out));
    let out = unreachable(&["task", "list", "--state", "finished"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("pending"), "{}", stderr(&out));
    let out = unreachable(&["task", "show", "not-a-number"]);
    assert_eq!(code(&out), Some(2));
    // The server refuses page sizes outside 1 to 1000 rather than cutting them: so does the CLI.
    for limit in ["0", "1001"] {
        for args in [
            &["task", "list", "--limit", limit][..],
            &["logs", "--limit", limit],
        ] {
            let out = unreachable(args);
            assert_eq!(code(&out), Some(2), "{args:?}");
            assert!(
                stderr(&out).contains("--limit: must be 1 to 1000"),
                "{}",
                stderr(&out)
            );
        }
    }

    // No server at the URL: exit 3 and what to do.
    let out = unreachable(&["worker", "list"]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: no Mechanics server answered at http://127.0.0.1:1")
            && err.contains("mechanics serve")
            && err.contains("--server"),
        "{err}"
    );

    // A module over the limit is refused before it is sent (the server's own check is in
    // mechanics-server's api tests; the CLI's in `validation`).
    write(
        "big.js",
        &format!(
            "export default () => 1;\n//{}\n",
            "x".repeat(1024 * 1024 + 10)
        ),
    );
    let big_worker = write("big.yml", "name: big\nkind: js\nmodule: big.js\n");
    let out = unreachable(&["worker", "add", "-f", &big_worker]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("big.js is larger than the limit of 1048576 bytes"),
        "{}",
        stderr(&out)
    );

    // Refused by the server: exit 1 with its message.
    let server = Coordinator::start(dir.path(), &[], &[]);
    let out = server.cli(&["task", "submit", "nosuch"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).starts_with("error: no worker named \"nosuch\""),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["task", "show", "999"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("no task 999"), "{}", stderr(&out));
    let out = server.cli(&["worker", "rm", "nosuch"]);
    assert_eq!(code(&out), Some(1));
    let no_api = write(
        "noapi.yml",
        "name: quiet\nkind: http\nurl: http://127.0.0.1:9\n",
    );
    server.ok(&["worker", "add", "-f", &no_api]);
    let out = server.cli(&["task", "submit", "quiet"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("api: true"), "{}", stderr(&out));
    // Nothing was stored by the refused requests.
    let workers = server.json(&["worker", "list"]);
    assert_eq!(workers["workers"].as_array().unwrap().len(), 1, "{workers}");
}

#[test]
fn an_api_key_is_required_when_the_server_has_one() {
    let dir = tempfile::tempdir().unwrap();
    // Without a key, a public address is refused at startup.
    let out = command(dir.path())
        .args(["serve", "--addr", "0.0.0.0:0", "--local-nodes", "1"])
        .arg("--db")
        .arg(dir.path().join("refused.db"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no READY line");
    let err = stderr(&out);
    assert!(
        err.contains("--addr")
            && err.contains("not a loopback address")
            && err.contains("--api-key"),
        "{err}"
    );

    let server = Coordinator::start(dir.path(), &["--api-key", "s3cret-key"], &[]);
    // The client without the key: refused, told what to pass.
    let out = command(dir.path())
        .env("MECHANICS_SERVER", &server.url)
        .args(["worker", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: a valid API key is required") && err.contains("--api-key"),
        "{err}"
    );
    // A wrong key, then the right one by flag and by environment.
    let out = command(dir.path())
        .args([
            "worker",
            "list",
            "--server",
            &server.url,
            "--api-key",
            "wrong",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("not accepted"), "{}", stderr(&out));
    let out = command(dir.path())
        .args([
            "worker",
            "list",
            "--json",
            "--server",
            &server.url,
            "--api-key",
            "s3cret-key",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({ "workers": [] })
    );
    assert_eq!(server.json(&["node", "list"])["nodes"][0]["name"], "node-1");
    assert!(
        !server.stderr().contains("s3cret-key"),
        "the key is never logged"
    );
}

#[test]
fn config_show_prints_each_value_with_its_source_and_redacts_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::create_dir_all(home.join(".mechanics")).unwrap();
    std::fs::write(
        home.join(".mechanics/config.yml"),
        "concurrency: 4\nqueue_size: 100\napi_key: from-the-file\n",
    )
    .unwrap();
    let out = command(home)
        .args(["config", "show", "--concurrency", "8"])
        .env("MECHANICS_DRAIN_TIMEOUT", "30s")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("concurrency: 8  # --concurrency"), "{shown}");
    assert!(shown.contains("queue_size: 100  # "), "{shown}");
    assert!(shown.contains("config.yml"), "{shown}");
    assert!(
        shown.contains("drain_timeout: 30s  # MECHANICS_DRAIN_TIMEOUT"),
        "{shown}"
    );
    assert!(shown.contains("api_key: <redacted>"), "{shown}");
    assert!(!shown.contains("from-the-file"), "{shown}");

    // Bad values name the key and where it came from; exit 2.
    let out = command(home)
        .args(["config", "show"])
        .env("MECHANICS_DRAIN_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).starts_with("error: MECHANICS_DRAIN_TIMEOUT: drain_timeout:"),
        "{}",
        stderr(&out)
    );
    let out = command(home)
        .args(["serve", "--concurrency", "0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("--concurrency: concurrency: must be between 1"),
        "{}",
        stderr(&out)
    );
    let out = command(home)
        .args(["config", "show", "--config", "/nonexistent/config.yml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    std::fs::write(home.join(".mechanics/config.yml"), "concurency: 4\n").unwrap();
    let out = command(home).args(["config", "show"]).output().unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("concurency"), "{}", stderr(&out));
}

#[test]
fn serve_exits_2_when_the_address_is_taken_or_the_database_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = command(dir.path())
        .args(["serve", "--addr", &addr, "--local-nodes", "1"])
        .arg("--db")
        .arg(dir.path().join("m.db"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
    // A directory where the database file should be.
    let out = command(dir.path())
        .args(["serve", "--addr", "127.0.0.1:0", "--local-nodes", "1"])
        .arg("--db")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot open the database"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_show_never_prints_the_database_password() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let url = "postgres://alice:s3cret@127.0.0.1:1/db";
    let shown = |out: std::process::Output| {
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
        assert!(!text.contains("s3cret"), "{text}");
        text
    };
    let text = shown(
        command(home)
            .args(["config", "show", "--db", url, "--db-connect-timeout", "5s"])
            .output()
            .unwrap(),
    );
    assert!(
        text.contains("db: postgres://alice:***@127.0.0.1:1/db  # --db\n"),
        "{text}"
    );
    assert!(
        text.contains("db_connect_timeout: 5s  # --db-connect-timeout\n"),
        "{text}"
    );
    // From the variable and from the file, the same.
    let text = shown(
        command(home)
            .args(["config", "show"])
            .env("MECHANICS_DB_PATH", url)
            .output()
            .unwrap(),
    );
    assert!(
        text.contains("db: postgres://alice:***@127.0.0.1:1/db  # MECHANICS_DB_PATH"),
        "{text}"
    );
    assert!(
        text.contains("db_connect_timeout: 30s  # default"),
        "{text}"
    );
    std::fs::create_dir_all(home.join(".mechanics")).unwrap();
    std::fs::write(
        home.join(".mechanics/config.yml"),
        format!("db: \"{url}\"\n"),
    )
    .unwrap();
    let text = shown(command(home).args(["config", "show"]).output().unwrap());
    assert!(text.contains("db: postgres://alice:***@"), "{text}");
    // A bad timeout names the key and where it came from.
    let out = command(home)
        .args(["config", "show", "--db-connect-timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).starts_with("error: --db-connect-timeout: db_connect_timeout: \"soon\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_exits_2_with_one_line_when_postgresql_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    // Nothing listens on port 1.
    let out = command(dir.path())
        .args(["serve", "--addr", "127.0.0.1:0", "--local-nodes", "1"])
        .args(["--db", "postgres://alice:s3cret@127.0.0.1:1/x"])
        .args(["--db-connect-timeout", "1s"])
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no READY line");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    // What, where (the password hidden) and what to do.
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains("connect")
            && lines[0].contains("postgres://alice:***@127.0.0.1:1/x")
            && lines[0].ends_with("allow it longer with --db-connect-timeout (now 1s)"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn instance_list_shows_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let list = server.json(&["instance", "list"]);
    let instances = list["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{list}");
    assert_eq!(instances[0]["address"], server.url.as_str());
    assert_eq!(instances[0]["version"], env!("CARGO_PKG_VERSION"));
    let id = instances[0]["id"].as_str().unwrap();
    let text = server.ok(&["instance", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "ADDRESS", "VERSION", "STARTED", "LAST_SEEN"],
        "{text}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..3],
        [id, server.url.as_str(), env!("CARGO_PKG_VERSION")],
        "{text}"
    );
    assert!(
        row[3..]
            .iter()
            .all(|cell| *cell == "ago" || cell.ends_with('s')),
        "{text}"
    );
}

#[test]
fn logs_show_a_tasks_trace_filter_it_and_follow_new_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    server.ok(&[
        "worker",
        "add",
        "-f",
        &format!("{REPO}/examples/hello-worker/worker.yml"),
    ]);
    let task = server.json(&["task", "submit", "hello", "--payload", "{}", "--wait"]);
    let id = task["id"].to_string();

    // The task's trace, oldest last as the API gives it: submitted, then dispatched once.
    let trace = server.json(&["logs", "--task", &id]);
    let steps: Vec<(String, String)> = trace["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("dispatch".to_owned(), "ok".to_owned()),
            ("submit".to_owned(), "ok".to_owned())
        ],
        "{trace}"
    );
    let table = server.ok(&["logs", "--task", &id]);
    assert!(
        table.contains("dispatch") && table.contains("submit"),
        "{table}"
    );
    assert!(
        server.json(&["logs", "--task", &id, "--action", "submit"])["entries"]
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    let bad = server.cli(&["logs", "--outcome", "sideways"]);
    assert_ne!(code(&bad), Some(0));
    assert!(stderr(&bad).contains("sideways"), "{}", stderr(&bad));

    // --follow prints what comes after it started, as JSON lines.
    let mut follow = command(&server.home)
        .env("MECHANICS_SERVER", &server.url)
        .args([
            "logs", "--follow", "--worker", "hello", "--json", "--limit", "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    // Its first line is the newest entry before it started: only then is the next submission
    // sure to come after its starting point.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    let later = server.json(&["task", "submit", "hello", "--payload", "{}", "--wait"]);
    let later_id = later["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.contains(&("dispatch".to_owned(), later_id)) {
        assert!(
            std::time::Instant::now() < deadline,
            "follow printed {seen:?}"
        );
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            panic!("follow ended: {seen:?}");
        }
        let entry: Value = serde_json::from_str(&line).unwrap();
        seen.push((
            entry["action"].as_str().unwrap().to_owned(),
            entry["task_id"].as_i64().unwrap_or_default(),
        ));
    }
    assert!(seen.contains(&("submit".to_owned(), later_id)), "{seen:?}");
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn a_js_workers_console_shows_per_attempt_redacted_in_task_show_the_api_and_logs() {
    const SECRET: &str = "c0ns0le-s3cret-bearer-value";
    const TOKEN: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    // An API that echoes the credential the worker's endpoint sends, so the script can log it.
    let echo = HttpServer::start(axum::Router::new().route(
        "/echo",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            axum::Json(json!({ "auth": auth }))
        }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[("ECHO_TOKEN", SECRET)]);
    let work = tempfile::tempdir_in(dir.path()).unwrap();
    std::fs::write(
        work.path().join("chatty.js"),
        "import endpoint from \"mechanics:endpoint\";\n\
         export default async ({ task, payload }) => {\n\
           const res = await endpoint(\"echo\", {});\n\
           console.log(\"attempt\", task.attempt, \"sent\", res.body.auth);\n\
           console.warn(\"token\", payload.note);\n\
           if (task.attempt === 1) {\n\
             console.error(\"giving up on attempt\", task.attempt);\n\
             throw new Error(\"the first attempt fails\");\n\
           }\n\
           return { ok: true };\n\
         }\n",
    )
    .unwrap();
    let yaml = work.path().join("worker.yml");
    std::fs::write(
        &yaml,
        format!(
            "name: chatty\nkind: js\nmodule: chatty.js\ntriggers:\n  - api: true\n\
             config:\n  endpoints:\n    echo:\n      method: get\n      url_template: \"{}/echo\"\n\
             \x20     headers: {{ authorization: \"Bearer ${{env:ECHO_TOKEN}}\" }}\n",
            echo.url()
        ),
    )
    .unwrap();
    server.ok(&["worker", "add", "-f", yaml.to_str().unwrap()]);
    let payload = json!({ "note": TOKEN }).to_string();

    // Attempt 1: the script fails (no retry for a script error); `task retry` runs attempt 2.
    let out = server.cli(&[
        "task",
        "submit",
        "chatty",
        "--payload",
        &payload,
        "--wait",
        "--json",
    ]);
    assert_eq!(code(&out), Some(1), "{}\n{}", stderr(&out), server.stderr());
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("the first attempt fails"),
        "{failed}"
    );
    let id = failed["id"].to_string();
    server.ok(&["task", "retry", &id]);
    let task = server.wait_end(id.parse().unwrap(), Duration::from_secs(30));
    assert_eq!(
        (&task["state"], &task["attempt"]),
        (&json!("completed"), &json!(2))
    );

    // `GET /api/v1/tasks/{id}` (`task show --json`): both attempts' lines, apart and in order,
    // from the script error's answer and the result's.
    let console = task["console"].as_array().unwrap();
    let shape: Vec<(u64, &str)> = console
        .iter()
        .map(|l| (l["attempt"].as_u64().unwrap(), l["level"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, "log"),
            (1, "warn"),
            (1, "error"),
            (2, "log"),
            (2, "warn")
        ],
        "{task}"
    );
    assert_eq!(console[0]["message"], "attempt 1 sent Bearer [redacted]");
    assert_eq!(console[1]["message"], "token [redacted]");
    assert_eq!(console[2]["message"], "giving up on attempt 1");
    assert_eq!(console[3]["message"], "attempt 2 sent Bearer [redacted]");
    assert!(console.iter().all(|l| l["ts"].as_i64().unwrap() > 0));

    // `task show`: under `console:`, one line each, with attempt, time and level.
    let shown = server.ok(&["task", "show", &id]);
    let section = shown
        .split_once("console:\n")
        .unwrap_or_else(|| panic!("no console section: {shown}"))
        .1;
    let lines: Vec<&str> = section.lines().collect();
    assert_eq!(lines.len(), 5, "{shown}");
    assert!(lines[0].starts_with("  [attempt 1] "), "{shown}");
    assert!(
        lines[2].contains(" error giving up on attempt 1"),
        "{shown}"
    );
    assert!(
        lines[3].starts_with("  [attempt 2] ")
            && lines[3].ends_with(" log   attempt 2 sent Bearer [redacted]"),
        "{shown}"
    );

    // `/logs`: one `console` entry per attempt, readable in the table.
    let entries = server.json(&["logs", "--task", &id, "--action", "console"]);
    let attempts: Vec<u64> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [2, 1], "{entries}");
    let table = server.ok(&["logs", "--task", &id]);
    assert!(
        table.contains("3 lines (1 error, 1 warning), last: error: giving up on attempt 1"),
        "{table}"
    );
    assert!(
        table.contains("2 lines (1 warning), last: warn: token [redacted]"),
        "{table}"
    );

    // Neither secret anywhere: answers, the database, the server's log.
    let db = rusqlite::Connection::open(dir.path().join("m.db")).unwrap();
    let stored: String = db
        .query_row(
            "SELECT group_concat(lines, ' ') FROM task_console WHERE task_id = ?1",
            [task["id"].as_i64().unwrap()],
            |row| row.get(0),
        )
        .unwrap();
    for (place, text) in [
        ("task show --json", task.to_string()),
        ("task show", shown),
        ("logs", table),
        (
            "logs --json",
            server.json(&["logs", "--task", &id]).to_string(),
        ),
        ("the database", stored),
        ("the server's log", server.stderr()),
    ] {
        assert!(
            !text.contains(SECRET) && !text.contains(TOKEN),
            "a secret reached {place}: {text}"
        );
    }
}
