//! Which failures are retried, through `mechanics serve`: a js job failing with an endpoint
//! call's transport error (after the endpoint's own retries) is retried under the worker's
//! `retry` until it is `dead`; an error thrown with `retryable: true` is retried; any other
//! script error fails at once. The task's error says which rule applied. A crash-looping process
//! worker's tasks carry the last lines its program wrote to stderr, and `node list` shows the
//! program's kind and no address while it is not running.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Coordinator, closed_port, code, stderr, tail};

/// Adds js worker `name` with `module` and the extra YAML `extra` (config, retry), written
/// under `dir`.
fn add_js(server: &Coordinator, dir: &Path, name: &str, module: &str, extra: &str) {
    let work = tempfile::tempdir_in(dir).unwrap();
    std::fs::write(work.path().join("w.js"), module).unwrap();
    let yml = work.path().join("w.yml");
    std::fs::write(
        &yml,
        format!("name: {name}\nkind: js\nmodule: ./w.js\ntriggers: [{{ api: true }}]\n{extra}"),
    )
    .unwrap();
    server.ok(&["worker", "add", "-f", yml.to_str().unwrap()]);
    // The work directory is dropped here: the module is stored with the worker.
}

/// Submits a task for `worker`, waits for its end; the task as `task show --json` gives it.
fn run(server: &Coordinator, worker: &str) -> Value {
    let out = server.cli(&[
        "task",
        "submit",
        worker,
        "--payload",
        "{}",
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert!(
        matches!(code(&out), Some(0 | 1)),
        "{}\n{}",
        stderr(&out),
        tail(&server.stderr(), 30)
    );
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    server.json(&["task", "show", &task["id"].to_string()])
}

const FAST_RETRY: &str = "retry: { max_retries: 2, base_delay: 100ms, max_delay: 200ms }\n";

#[test]
fn endpoint_transport_failures_and_retryable_errors_are_retried_other_errors_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);

    // Nothing listens at the endpoint: refused on each of the endpoint's 2 attempts, then the
    // task is retried under the worker's retry, and is dead after 1 + 2 tries.
    let port = closed_port();
    add_js(
        &server,
        dir.path(),
        "caller",
        "import endpoint from \"mechanics:endpoint\";\n\
         export default async function main() {\n  \
           const res = await endpoint(\"svc\", {});\n  return res.body;\n}\n",
        &format!(
            "config: {{ endpoints: {{ svc: {{ method: get, url_template: \"http://127.0.0.1:{port}/\", \
             timeout_ms: 2000, retry_policy: {{ max_attempts: 2, base_backoff_ms: 10 }} }} }} }}\n\
             {FAST_RETRY}"
        ),
    );
    let task = run(&server, "caller");
    assert_eq!(task["state"], "dead", "{task}");
    assert_eq!(task["tries"], 3, "{task}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("endpoint_transport: ")
            && error.contains("endpoint `svc`")
            && error.contains("(after 2 attempts)")
            && error.contains(
                "(an endpoint call failed in transport: retried under the worker's retry; \
                 retries exhausted after 3 tries)"
            ),
        "{error}"
    );

    // A job that catches the transport error sees it marked, and what it returns completes.
    add_js(
        &server,
        dir.path(),
        "careful",
        "import endpoint from \"mechanics:endpoint\";\n\
         export default async function main() {\n  \
           try { await endpoint(\"svc\", {}); } catch (e) {\n    \
             return { transport: e.transport, retryable: e.retryable };\n  }\n}\n",
        &format!(
            "config: {{ endpoints: {{ svc: {{ method: get, url_template: \"http://127.0.0.1:{port}/\", \
             retry_policy: {{ max_attempts: 1 }} }} }} }}\n{FAST_RETRY}"
        ),
    );
    let task = run(&server, "careful");
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["result"]["transport"], true, "{task}");
    assert_eq!(task["result"]["retryable"], true, "{task}");

    // `retryable: true` asks for another attempt: the second one completes.
    add_js(
        &server,
        dir.path(),
        "flaky",
        "export default function main({ task }) {\n  \
           if (task.attempt < 2) {\n    \
             throw Object.assign(new Error(\"not yet\"), { retryable: true });\n  }\n  \
           return { attempt: task.attempt };\n}\n",
        FAST_RETRY,
    );
    let task = run(&server, "flaky");
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["tries"], 2, "{task}");
    // Always retryable: dead once the retries are spent, saying so.
    add_js(
        &server,
        dir.path(),
        "never",
        "export default function main() {\n  \
           throw Object.assign(new Error(\"not today\"), { retryable: true });\n}\n",
        FAST_RETRY,
    );
    let task = run(&server, "never");
    assert_eq!(
        (&task["state"], &task["tries"]),
        (&"dead".into(), &3.into()),
        "{task}"
    );
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("retryable: Error: not today")
            && error.contains("the job threw retryable: true: retried under the worker's retry"),
        "{error}"
    );

    // Any other error fails at once, `retryable` set to something else than `true` included.
    add_js(
        &server,
        dir.path(),
        "broken",
        "export default function main() {\n  \
           throw Object.assign(new Error(\"boom\"), { retryable: \"yes\" });\n}\n",
        FAST_RETRY,
    );
    let task = run(&server, "broken");
    assert_eq!(
        (&task["state"], &task["tries"]),
        (&"failed".into(), &1.into()),
        "{task}"
    );
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("execution: Error: boom"),
        "{task}"
    );
}

#[test]
fn endpoint_timeouts_and_unknown_hosts_are_transport_failures_retried_to_dead() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    // Takes connections (the kernel completes them) and never answers: each call times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    let module = "import endpoint from \"mechanics:endpoint\";\n\
                  export default async function main() {\n  \
                    const res = await endpoint(\"svc\", {});\n  return res.body;\n}\n";
    for (name, url, says) in [
        ("slow", silent_url.as_str(), "timed out"),
        ("nowhere", "http://no-such-host.invalid/", "dns"),
    ] {
        add_js(
            &server,
            dir.path(),
            name,
            module,
            &format!(
                "config: {{ endpoints: {{ svc: {{ method: get, url_template: \"{url}\", \
                 timeout_ms: 300, retry_policy: {{ max_attempts: 1 }} }} }} }}\n\
                 retry: {{ max_retries: 1, base_delay: 100ms, max_delay: 100ms }}\n"
            ),
        );
        let task = run(&server, name);
        assert_eq!(
            (&task["state"], &task["tries"]),
            (&"dead".into(), &2.into()),
            "{name}: {task}"
        );
        let attempts = task["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{name}: {task}");
        let error = task["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("endpoint_transport: ")
                && error.contains(
                    "(an endpoint call failed in transport: retried under the worker's retry; \
                     retries exhausted after 2 tries)"
                ),
            "{name}: {error}"
        );
        assert!(error.to_lowercase().contains(says), "{name}: {error}");
    }
    drop(silent);
}

#[test]
fn a_crash_looping_process_workers_tasks_carry_its_last_stderr_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let work = tempfile::tempdir_in(dir.path()).unwrap();
    let yml = work.path().join("w.yml");
    // It dies at once, every time, saying why on its last line of stderr.
    std::fs::write(
        &yml,
        "name: crashy\nkind: process\n\
         command: [\"sh\", \"-c\", \"echo starting >&2; echo 'fatal: cannot open /etc/crashy.toml' >&2; exit 3\"]\n\
         restart: { policy: on-failure, initial_backoff_ms: 20, max_backoff_ms: 50 }\n\
         triggers: [{ api: true }]\n\
         retry: { max_retries: 3, base_delay: 200ms, max_delay: 300ms }\n",
    )
    .unwrap();
    server.ok(&["worker", "add", "-f", yml.to_str().unwrap()]);

    let task = run(&server, "crashy");
    assert_eq!(task["state"], "dead", "{task}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("its program last ended: ")
            && error.contains("its last stderr lines: ")
            && error.contains("fatal: cannot open /etc/crashy.toml"),
        "{error}"
    );

    // `node list`: the program is a process, and while it is not running it has no address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let nodes = server.json(&["node", "list"]);
        let node = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "crashy")
            .cloned()
            .unwrap_or_else(|| panic!("no node crashy: {nodes}"));
        if node["state"] != "running" {
            break node;
        }
        assert!(Instant::now() < deadline, "crashy keeps running: {node}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(node["kind"], "process", "{node}");
    assert_eq!(node.get("address"), None, "{node}");
    let table = server.ok(&["node", "list"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("KIND"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("crashy") && line.contains("process")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("node-") && line.contains("local")),
        "{table}"
    );
}
