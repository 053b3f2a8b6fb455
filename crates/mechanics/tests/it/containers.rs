//! Container workers on a real runtime: Docker, and Podman (with runc). The images are built
//! here `FROM scratch` from `task-echo` (a test binary that answers `POST /task` with its
//! request, `$MODEL` and `$API_TOKEN` reversed, or, told to crash, writes `$API_TOKEN` to its
//! log and exits) and the libraries it links; nothing is pulled.
//! A test fails, not skips, when its runtime does not work.

use std::process::Command;
use std::time::{Duration, Instant};

use mechanics_test_support::docker::ScratchImage;
use serde_json::Value;

use crate::support::{Coordinator, code, stderr, tail};

/// The secret a worker's `${env:SUMMARIZER_TOKEN}` resolves to.
const SECRET: &str = "tok-5ecret-summarizer-0123456789";

/// One container runtime as the tests drive it.
#[derive(Clone, Copy)]
struct Runtime {
    name: &'static str,
}

const DOCKER: Runtime = Runtime { name: "docker" };
const PODMAN: Runtime = Runtime { name: "podman" };

impl Runtime {
    /// Runs the CLI; its stdout, or a panic with its stderr.
    fn ok(self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("the runtime's CLI runs");
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn command(self) -> Command {
        let mut command = Command::new(self.name);
        for (key, value) in self.env() {
            command.env(key, value);
        }
        command
    }

    /// What the runtime (and a server using it) needs in its environment: Podman runs with
    /// runc, since crun refuses this machine's hybrid cgroup layout.
    fn env(self) -> Vec<(&'static str, String)> {
        if self.name == "podman" {
            vec![("CONTAINERS_CONF", podman_conf())]
        } else {
            Vec::new()
        }
    }

    /// The ids of the containers (running or not) labelled `label`.
    fn ids(self, label: &str) -> Vec<String> {
        self.ids_with(&[label])
    }

    /// The ids of the containers (running or not) carrying every label of `labels`.
    fn ids_with(self, labels: &[&str]) -> Vec<String> {
        let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
        let mut args = vec!["ps", "-a", "--no-trunc", "--format", "{{.ID}}"];
        for filter in &filters {
            args.extend(["--filter", filter]);
        }
        self.ok(&args).lines().map(str::to_owned).collect()
    }

    /// The `mechanics.scope=...` label of container `id`: the server that made it.
    fn scope_label(self, id: &str) -> String {
        let scope = &self.inspect(id)["Config"]["Labels"]["mechanics.scope"];
        format!("mechanics.scope={}", scope.as_str().unwrap())
    }

    fn inspect(self, id: &str) -> Value {
        let text = self.ok(&["container", "inspect", id]);
        serde_json::from_str::<Value>(&text).unwrap()[0].clone()
    }
}

/// An image of `task-echo` in `runtime`'s store; with `exit`, one whose container exits at once.
fn echo_image(runtime: Runtime, exit: bool) -> ScratchImage {
    let binary = mechanics_test_support::task_echo::binary();
    let args: &[&str] = if exit { &["exit"] } else { &[] };
    if runtime.name == "podman" {
        ScratchImage::build_for_podman("echo", &binary, args)
    } else {
        ScratchImage::build("echo", &binary, args)
    }
}

/// A `containers.conf` choosing runc, written once.
fn podman_conf() -> String {
    let path = std::env::temp_dir().join("mechanics-test-podman-runc.conf");
    if !path.exists() {
        std::fs::write(&path, "[engine]\nruntime = \"runc\"\n").unwrap();
    }
    path.to_string_lossy().into_owned()
}

/// `mechanics serve` using `runtime`, reconciling every second, with [`SECRET`] in its
/// environment and a temporary directory of its own (where its env files would linger).
fn serve(dir: &std::path::Path, runtime: Runtime) -> Coordinator {
    serve_with(dir, runtime, &[], &[])
}

/// [`serve`] with more arguments (`--db`, say) and environment variables (`PATH`, say).
fn serve_with(
    dir: &std::path::Path,
    runtime: Runtime,
    extra: &[&str],
    extra_env: &[(&str, &str)],
) -> Coordinator {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp = tmp.to_string_lossy().into_owned();
    let mut env: Vec<(&str, String)> = runtime.env();
    env.push(("SUMMARIZER_TOKEN", SECRET.to_owned()));
    env.push(("TMPDIR", tmp));
    env.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "--container-runtime",
        runtime.name,
        "--container-reconcile-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    Coordinator::start(dir, &args, &env)
}

/// The worker spec of the tests, with `model` in its environment.
fn echo_worker(name: &str, image: &str, model: &str) -> String {
    format!(
        "name: {name}\nkind: container\nimage: {image}\nport: 8080\n\
         env: {{ MODEL: {model}, API_TOKEN: \"${{env:SUMMARIZER_TOKEN}}\" }}\n\
         resources: {{ memory_mb: 64, cpus: 0.5 }}\n\
         health: {{ path: /healthz, interval: 1s }}\n\
         triggers: [{{ api: true }}]\n\
         retry: {{ max_retries: 20, base_delay: 250ms, max_delay: 500ms }}\n"
    )
}

/// The node of container worker `name` in `node list --json`, once `ready` holds for it.
fn node_when(
    server: &Coordinator,
    name: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let nodes = server.json(&["node", "list"]);
        let node = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned();
        if let Some(node) = node
            && ready(&node)
        {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not {what} after 90 s: {nodes}\nserver log:\n{}",
            tail(&server.stderr(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits a task to `worker`, waits for its end and returns its result.
fn run_task(server: &Coordinator, worker: &str, payload: &str) -> Value {
    let task = server.json(&["task", "submit", worker, "--payload", payload]);
    let id = task["id"].as_i64().unwrap();
    let task = server.wait_end(id, Duration::from_secs(90));
    assert_eq!(task["state"], "completed", "{task}");
    task["result"].clone()
}

fn reconcile_steps(server: &Coordinator, worker: &str) -> Vec<String> {
    server.json(&[
        "logs",
        "--worker",
        worker,
        "--action",
        "reconcile",
        "--limit",
        "1000",
    ])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["step"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The whole life of a container worker on `runtime`.
fn lifecycle(runtime: Runtime) {
    let image = echo_image(runtime, false);
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), runtime);
    let label = "mechanics.worker=summarizer";

    // Added: a container is created, and a task runs in it with the worker's environment.
    server.add_worker(&echo_worker("summarizer", &image.tag, "small"));
    let node = node_when(&server, "summarizer", "running", |n| {
        n["container_id"].is_string()
    });
    assert_eq!(node["kind"], "container", "{node}");
    assert_eq!(node["image"], image.tag.as_str(), "{node}");
    assert_eq!(node["breaker"], "closed", "{node}");
    let first_id = node["container_id"].as_str().unwrap().to_owned();
    let result = run_task(&server, "summarizer", "{\"text\":\"hello\"}");
    assert_eq!(
        result["request"]["payload"],
        serde_json::json!({ "text": "hello" }),
        "{result}"
    );
    assert_eq!(result["model"], "small", "{result}");
    let reversed: String = SECRET.chars().rev().collect();
    assert_eq!(result["token_reversed"], reversed.as_str(), "{result}");
    let ids = runtime.ids(label);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].starts_with(&first_id), "{ids:?} {first_id}");
    let info = runtime.inspect(&ids[0]);
    // Published on loopback only.
    let binding = &info["NetworkSettings"]["Ports"]["8080/tcp"][0];
    assert_eq!(binding["HostIp"], "127.0.0.1", "{binding}");
    let table = server.ok(&["node", "list"]);
    assert!(
        table.lines().any(|line| line.starts_with("summarizer")
            && line.contains("container")
            && line.contains(&image.tag)
            && line.contains(&first_id)),
        "{table}"
    );

    // Secrets: in no argument of the server or its children, no log line, no `/logs` entry,
    // no API answer; the env file is gone.
    for pid in
        std::iter::once(server.pid() as i32).chain(crate::support::descendants(server.pid() as i32))
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(SECRET),
            "the secret is in the arguments of process {pid}"
        );
    }
    assert!(
        !server.stderr().contains(SECRET),
        "the secret is in the server's log"
    );
    let logs = server.ok(&["logs", "--limit", "1000", "--json"]);
    assert!(!logs.contains(SECRET), "the secret is in /logs");
    let shown = server.ok(&["worker", "show", "summarizer", "--json"]);
    assert!(
        !shown.contains(SECRET) && shown.contains("${env:SUMMARIZER_TOKEN}"),
        "{shown}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("mechanics-env-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "files left in the server's TMPDIR: {leftovers:?}"
    );

    // A new revision recreates the container.
    server.add_worker(&echo_worker("summarizer", &image.tag, "large"));
    let node = node_when(&server, "summarizer", "recreated", |n| {
        n["container_id"].as_str().is_some_and(|id| id != first_id)
    });
    let second_id = node["container_id"].as_str().unwrap().to_owned();
    assert_eq!(run_task(&server, "summarizer", "{}")["model"], "large");
    assert_eq!(runtime.ids(label).len(), 1);

    // Removed behind the server's back: reconciled, and the next task runs.
    runtime.ok(&["rm", "-f", &second_id]);
    let node = node_when(&server, "summarizer", "reconciled", |n| {
        n["container_id"].as_str().is_some_and(|id| id != second_id)
    });
    let third_id = node["container_id"].as_str().unwrap().to_owned();
    assert_eq!(node["deaths"], 1, "{node}");
    assert_eq!(run_task(&server, "summarizer", "{}")["model"], "large");
    let steps = reconcile_steps(&server, "summarizer");
    assert!(
        steps.iter().any(|s| s == "drift") && steps.iter().any(|s| s == "recreated"),
        "{steps:?}"
    );
    let client = crate::support::TestClient::new(Duration::from_secs(10));
    let (_, vars) = client.get(&format!("{}/debug/vars", server.url));
    // Created twice, drifted once, recreated once at least.
    let counted = vars["counters"]["containers_reconciled"]
        .as_u64()
        .unwrap_or_default();
    assert!(counted >= 4, "{vars}");

    // An orphan of this server (labelled with its scope, no such worker) is removed.
    let scope = runtime.inspect(&third_id)["Config"]["Labels"]["mechanics.scope"]
        .as_str()
        .unwrap()
        .to_owned();
    let scope_label = format!("mechanics.scope={scope}");
    let mut run = vec![
        "run",
        "-d",
        "--label",
        &scope_label,
        "--label",
        "mechanics.worker=ghost",
    ];
    if runtime.name == "podman" {
        // Limits runc may set here (the server passes its own the same way).
        run.extend([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ]);
    }
    run.push(&image.tag);
    let orphan = runtime.ok(&run);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runtime.ids("mechanics.worker=ghost").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the orphan {orphan} is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reconcile_steps(&server, "ghost").contains(&"orphan_removed".to_owned()));

    // Shutdown leaves the container running; the next server adopts it.
    let status = server.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let ids = runtime.ids(label);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(runtime.inspect(&ids[0])["State"]["Status"], "running");
    let server = serve(dir.path(), runtime);
    let node = node_when(&server, "summarizer", "adopted", |n| {
        n["container_id"].is_string()
    });
    assert_eq!(node["container_id"], third_id.as_str(), "{node}");
    assert!(reconcile_steps(&server, "summarizer").contains(&"adopted".to_owned()));
    assert_eq!(run_task(&server, "summarizer", "{}")["model"], "large");

    // Removed with its worker.
    server.ok(&["worker", "rm", "summarizer"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runtime.ids(label).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the container outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_container_worker_on_docker_runs_tasks_and_is_recreated_reconciled_adopted_and_removed() {
    lifecycle(DOCKER);
}

#[test]
fn a_container_worker_on_podman_runs_tasks_and_is_recreated_reconciled_adopted_and_removed() {
    lifecycle(PODMAN);
}

/// An image that exits at once: each container dies, the breaker trips and says so.
fn crash_loop(runtime: Runtime) {
    let image = echo_image(runtime, true);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), runtime);
    server.add_worker(&format!(
        "name: crashy\nkind: container\nimage: {}\nport: 8080\n\
         restart: {{ policy: on-failure, initial_backoff_ms: 50, max_backoff_ms: 100 }}\n\
         triggers: [{{ api: true }}]\nretry: {{ max_retries: 0 }}\n",
        &image.tag
    ));
    let node = node_when(&server, "crashy", "tripped", |n| n["breaker"] == "tripped");
    assert_eq!(node["state"], "tripped", "{node}");
    let last_exit = node["last_exit"].as_str().unwrap_or_default();
    assert!(last_exit.contains("exit code 3"), "{node}");
    let task = server.json(&["task", "submit", "crashy"]);
    let task = server.wait_end(task["id"].as_i64().unwrap(), Duration::from_secs(60));
    let error = task["error"].as_str().unwrap_or_default();
    // The runtime's own word for a dead container: Docker says `exited`; Podman says `exited` or,
    // a moment after, `stopped`.
    assert!(
        error.contains("its container keeps dying, recreation is paused")
            && (error.contains("it did not start: the container is exited (exit code 3)")
                || error.contains("it did not start: the container is stopped (exit code 3)")),
        "{task}"
    );
    // Docker keeps a dead container's output for `docker logs`; Podman's may not have it yet
    // when the container is inspected, so only Docker's is asserted.
    if runtime.name == "docker" {
        assert!(error.contains("task-echo: told to exit at once"), "{task}");
    }
    // Containers outlive the server by design: the worker's removal is what removes them.
    server.ok(&["worker", "rm", "crashy"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runtime.ids("mechanics.worker=crashy").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the crashy container outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_image_that_exits_at_once_trips_the_breaker_on_docker() {
    crash_loop(DOCKER);
}

#[test]
fn an_image_that_exits_at_once_trips_the_breaker_on_podman() {
    crash_loop(PODMAN);
}

#[test]
fn a_container_worker_the_server_cannot_run_is_refused_at_add_naming_the_field() {
    let image = echo_image(DOCKER, false);
    let dir = tempfile::tempdir().unwrap();
    let yml = dir.path().join("w.yml");
    let add = |server: &Coordinator, spec: &str| {
        std::fs::write(&yml, spec).unwrap();
        server.cli(&["worker", "add", "-f", yml.to_str().unwrap()])
    };
    // No docker on the server's PATH.
    let server = Coordinator::start(
        dir.path(),
        &["--container-runtime", "docker"],
        &[("PATH", "/nonexistent")],
    );
    let out = add(&server, &echo_worker("w", &image.tag, "m"));
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "kind: container workers need docker or podman: docker is not on the server's PATH"
        ),
        "{}",
        stderr(&out)
    );
    drop(server);
    let server = serve(dir.path(), DOCKER);
    // An image that is not on the machine, which a localhost/ image may not pull.
    let out = add(
        &server,
        &echo_worker("w", "localhost/mechanics-test-no-such-image:1", "m"),
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("image: \"localhost/mechanics-test-no-such-image:1\" is not on this machine"),
        "{}",
        stderr(&out)
    );
    // Fields checked before a request.
    let out = add(
        &server,
        "name: w\nkind: container\nimage: --privileged\nport: 8080\n",
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("image: \"--privileged\" is not an image reference"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server.json(&["worker", "list"])["workers"],
        serde_json::json!([])
    );
    assert!(DOCKER.ids("mechanics.worker=w").is_empty());
}

/// Every call of the runtime's CLI a server made, as recorded by [`recording_cli`]: each call's
/// arguments, in order.
fn recorded_calls(log: &std::path::Path) -> Vec<Vec<String>> {
    let bytes = std::fs::read(log).unwrap_or_default();
    // Each argument ends with a NUL, each call with a newline after its last NUL.
    String::from_utf8_lossy(&bytes)
        .split("\0\n")
        .filter(|call| !call.is_empty())
        .map(|call| call.split('\0').map(str::to_owned).collect())
        .collect()
}

/// A directory holding a script named after `runtime` that appends its arguments to `log`
/// (NUL-separated, one call a line), the mode and owner of the file it is given with
/// `--env-file` to `modes` (while that file exists), then `exec`s the real CLI.
fn recording_cli(
    dir: &std::path::Path,
    runtime: Runtime,
    log: &std::path::Path,
    modes: &std::path::Path,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", &format!("command -v {}", runtime.name)])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(real.starts_with('/'), "{} is not on PATH", runtime.name);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join(runtime.name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             {{ printf '%s\\0' \"$@\"; printf '\\n'; }} >> '{log}'\n\
             previous=\n\
             for arg in \"$@\"; do\n\
             \x20 if [ \"$previous\" = --env-file ]; then stat -c '%a %u' \"$arg\" >> '{modes}'; fi\n\
             \x20 previous=$arg\n\
             done\n\
             exec '{real}' \"$@\"\n",
            log = log.display(),
            modes = modes.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A server whose runtime CLI records its arguments: the secret a worker's env refers to is in
/// none of them; it goes through `--env-file`, a file only the server's user could read and
/// which is gone once the container exists; and it reaches the container.
fn secrets_through_env_file(runtime: Runtime) {
    let image = echo_image(runtime, false);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let modes = dir.path().join("modes");
    let bin = recording_cli(dir.path(), runtime, &log, &modes);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let server = serve_with(dir.path(), runtime, &[], &[("PATH", &path)]);
    server.add_worker(&echo_worker("keeper", &image.tag, "small"));
    let node = node_when(&server, "keeper", "running", |n| {
        n["container_id"].is_string()
    });
    let scope = runtime.scope_label(node["container_id"].as_str().unwrap());
    let result = run_task(&server, "keeper", "{}");
    let reversed: String = SECRET.chars().rev().collect();
    assert_eq!(result["token_reversed"], reversed.as_str(), "{result}");

    let calls = recorded_calls(&log);
    let runs: Vec<&Vec<String>> = calls.iter().filter(|c| c[0] == "run").collect();
    assert_eq!(runs.len(), 1, "{calls:?}");
    for call in &calls {
        assert!(
            !call.iter().any(|arg| arg.contains(SECRET)),
            "the secret is in the arguments of `{} {}`",
            runtime.name,
            call[0]
        );
    }
    let run = runs[0];
    let at = run
        .iter()
        .position(|a| a == "--env-file")
        .expect("--env-file");
    let env_file = std::path::Path::new(&run[at + 1]);
    assert!(
        env_file.starts_with(dir.path().join("tmp")),
        "{env_file:?} is not in the server's TMPDIR"
    );
    assert!(
        !env_file.exists(),
        "{env_file:?} outlived the container's creation"
    );
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(
        std::fs::read_to_string(&modes).unwrap(),
        format!("600 {}\n", uid.trim()),
        "the env file's mode and owner while it existed"
    );
    assert!(
        !server.stderr().contains(SECRET),
        "the secret is in the server's log"
    );
    let logs = server.ok(&["logs", "--limit", "1000", "--json"]);
    assert!(!logs.contains(SECRET), "the secret is in /logs");

    server.ok(&["worker", "rm", "keeper"]);
    wait_gone(runtime, &["mechanics.worker=keeper", &scope], &server);
}

#[test]
fn a_container_workers_secret_reaches_docker_only_through_a_private_env_file() {
    secrets_through_env_file(DOCKER);
}

#[test]
fn a_container_workers_secret_reaches_podman_only_through_a_private_env_file() {
    secrets_through_env_file(PODMAN);
}

/// Waits until no container carrying every label of `labels` is left; `server`'s log explains
/// a failure. (Tests filter by their server's scope too: a container of an earlier, failed run
/// may carry the same worker label.)
fn wait_gone(runtime: Runtime, labels: &[&str], server: &Coordinator) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runtime.ids_with(labels).is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers labelled {labels:?} are still there\nserver log:\n{}",
            tail(&server.stderr(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The result of a task of `worker` once one completes (each attempt may meet the worker
/// between its kinds).
fn completed_task(
    server: &Coordinator,
    worker: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let result = run_task(server, worker, "{}");
        if done(&result) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{worker}: no task ran on {what}: last result {result}\n{}",
            tail(&server.stderr(), 40)
        );
    }
}

#[test]
fn a_worker_changed_from_container_to_process_and_back_runs_as_its_new_kind() {
    let image = echo_image(DOCKER, false);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DOCKER);
    let script = dir.path().join("worker.py");
    std::fs::write(
        &script,
        r#"import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"pid": os.getpid()}).encode()
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
    let process = format!(
        "name: flip\nkind: process\ncommand: [\"python3\", \"{}\"]\n\
         triggers: [{{ api: true }}]\n\
         retry: {{ max_retries: 20, base_delay: 250ms, max_delay: 500ms }}\n",
        script.display()
    );
    let label = "mechanics.worker=flip";

    server.add_worker(&echo_worker("flip", &image.tag, "small"));
    let node = node_when(&server, "flip", "running", |n| {
        n["container_id"].is_string()
    });
    let scope = DOCKER.scope_label(node["container_id"].as_str().unwrap());
    let labels = [label, scope.as_str()];
    assert_eq!(run_task(&server, "flip", "{}")["model"], "small");
    assert_eq!(DOCKER.ids_with(&labels).len(), 1);

    // Container → process: the container is removed and the program runs the tasks.
    server.add_worker(&process);
    let result = completed_task(&server, "flip", "the process", |r| r["pid"].is_i64());
    let pid = result["pid"].as_i64().unwrap() as i32;
    assert!(
        crate::support::descendants(server.pid() as i32).contains(&pid),
        "{pid} is no child of the server"
    );
    wait_gone(DOCKER, &labels, &server);
    let node = node_when(&server, "flip", "a process", |n| n["kind"] == "process");
    assert_eq!(node["state"], "running", "{node}");

    // Process → container: the program is stopped and a container runs the tasks.
    server.add_worker(&echo_worker("flip", &image.tag, "large"));
    completed_task(&server, "flip", "the container", |r| r["model"] == "large");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the process worker {pid} outlived its kind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let node = node_when(&server, "flip", "a container", |n| {
        n["kind"] == "container" && n["container_id"].is_string()
    });
    assert_eq!(DOCKER.ids_with(&labels).len(), 1, "{node}");

    server.ok(&["worker", "rm", "flip"]);
    wait_gone(DOCKER, &labels, &server);
}

#[test]
fn servers_sharing_a_postgresql_database_each_keep_their_own_container() {
    let image = echo_image(DOCKER, false);
    let db = mechanics_test_support::postgres::TestDatabase::create();
    let homes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers: Vec<Coordinator> = homes
        .iter()
        .map(|home| serve_with(home.path(), DOCKER, &["--db", db.url()], &[]))
        .collect();
    let label = "mechanics.worker=shared";
    servers[0].add_worker(&echo_worker("shared", &image.tag, "small"));

    // Each server makes a container of its own, labelled with its own scope, and runs tasks.
    let ids: Vec<String> = servers
        .iter()
        .map(|server| {
            let node = node_when(server, "shared", "running", |n| {
                n["container_id"].is_string()
            });
            node["container_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    let scopes: Vec<String> = ids.iter().map(|id| DOCKER.scope_label(id)).collect();
    assert_ne!(scopes[0], scopes[1], "{scopes:?}");
    for server in &servers {
        assert_eq!(run_task(server, "shared", "{}")["model"], "small");
    }

    // Over three reconcile intervals, neither removes nor recreates the other's: both
    // containers stay, each the one its server uses.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for (id, scope) in ids.iter().zip(&scopes) {
            let now = DOCKER.ids_with(&[label, scope]);
            assert!(
                now.len() == 1 && now[0].starts_with(id.as_str()),
                "{id} is not its scope's only container: {now:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (server, id) in servers.iter().zip(&ids) {
        let node = node_when(server, "shared", "running", |n| {
            n["container_id"].is_string()
        });
        assert_eq!(node["container_id"], id.as_str(), "{node}");
        let steps = reconcile_steps(server, "shared");
        assert!(
            !steps
                .iter()
                .any(|s| s == "orphan_removed" || s == "removed" || s == "drift"),
            "{steps:?}"
        );
    }

    // Removed through one server: both containers go.
    servers[1].ok(&["worker", "rm", "shared"]);
    for (server, scope) in servers.iter().zip(&scopes) {
        wait_gone(DOCKER, &[label, scope], server);
    }
}

#[test]
fn an_adopted_containers_secret_is_redacted_where_its_log_is_quoted() {
    let image = echo_image(DOCKER, false);
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), DOCKER);
    server.add_worker(&format!(
        "name: leaky\nkind: container\nimage: {}\nport: 8080\n\
         env: {{ API_TOKEN: \"${{env:SUMMARIZER_TOKEN}}\" }}\n\
         restart: {{ policy: never }}\n\
         triggers: [{{ api: true }}]\nretry: {{ max_retries: 0 }}\n",
        image.tag
    ));
    let node = node_when(&server, "leaky", "running", |n| {
        n["container_id"].is_string()
    });
    let id = node["container_id"].as_str().unwrap().to_owned();
    let scope = DOCKER.scope_label(&id);
    let status = server.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");

    // The next server adopts the container: it never creates one, yet knows its secret.
    let server = serve(dir.path(), DOCKER);
    let node = node_when(&server, "leaky", "adopted", |n| {
        n["container_id"].is_string()
    });
    assert_eq!(node["container_id"], id.as_str(), "{node}");
    assert!(reconcile_steps(&server, "leaky").contains(&"adopted".to_owned()));

    // The worker writes its secret to its log and dies; the server quotes that log.
    let task = server.json(&["task", "submit", "leaky", "--payload", "{\"crash\":true}"]);
    server.wait_end(task["id"].as_i64().unwrap(), Duration::from_secs(30));
    node_when(&server, "leaky", "dead", |n| {
        n["container_id"].is_null() && !n["last_exit"].is_null()
    });
    let task = server.json(&["task", "submit", "leaky"]);
    let task = server.wait_end(task["id"].as_i64().unwrap(), Duration::from_secs(30));
    let error = task["error"].as_str().unwrap_or_default();
    assert!(error.contains("API_TOKEN=[redacted]"), "{task}");
    assert!(!error.contains(SECRET), "{task}");
    let log = server.stderr();
    assert!(
        log.contains("API_TOKEN=[redacted]"),
        "the server did not log the container's last lines:\n{}",
        tail(&log, 30)
    );
    assert!(!log.contains(SECRET), "the secret is in the server's log");
    let logs = server.ok(&["logs", "--limit", "1000", "--json"]);
    assert!(!logs.contains(SECRET), "the secret is in /logs");

    server.ok(&["worker", "rm", "leaky"]);
    wait_gone(DOCKER, &["mechanics.worker=leaky", &scope], &server);
}
