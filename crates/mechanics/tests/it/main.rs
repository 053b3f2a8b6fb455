//! `mechanics run` and `mechanics node serve` as a user runs them: the real binary, real files,
//! exit codes and streams; the local fleet of node processes (`fleet`); `mechanics serve` with the
//! CLI client (`serve`), and the coordinator killed and stopped under load (`faults`); hostile
//! files and API keys refused at once (`validation`); the public edge under attack (`edge`);
//! secrets, replays and error shapes in what the server answers (`answers`); several servers on
//! one PostgreSQL database (`cluster`); pausing, resuming and removing workers with work (`ops`);
//! remote executor nodes over TLS, killed and restarted under load (`remote_nodes`);
//! TypeScript workers, from `worker add` and `run` to the positions in their errors
//! (`typescript`); the MCP tools over stdio and `/mcp` (`mcp`); container workers on Docker and
//! Podman (`containers`); the README's command blocks, run as written (`readme`).

mod add_checks;
mod answers;
mod cluster;
mod containers;
mod edge;
mod faults;
mod fleet;
mod mcp;
mod ops;
mod readme;
mod remote_nodes;
mod retries;
mod serve;
mod support;
mod typescript;
mod ui_browser;
mod validation;
mod webhooks;
mod worker_test;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

fn mechanics(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("the binary runs")
}

fn write(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("mechanics-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// `examples/hello.js` ran with `{"name":"Ada"}` and printed its result.
fn assert_hello_ada(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["greeting"], "Hello, Ada!");
    assert_eq!(value["hex"], "48656c6c6f2c2041646121");
}

#[test]
fn run_prints_the_result_of_the_readme_example() {
    let out = mechanics(&["run", "examples/hello.js", "--arg", r#"{"name":"Ada"}"#]);
    assert_hello_ada(&out);
}

#[test]
fn script_failures_exit_1_with_kind_and_message() {
    let module = write(
        "throw.js",
        "export default () => { throw new Error('nope') }",
    );
    let out = mechanics(&["run", &module]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: execution: ") && stderr.contains("nope"),
        "{stderr}"
    );

    let out = mechanics(&["run", &module, "--json-errors"]);
    assert_eq!(out.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["kind"], "execution");
}

#[test]
fn limits_file_applies_and_a_spinning_script_stops() {
    let module = write("spin.js", "export default () => { while (true) {} }");
    let limits = write(
        "limits.json",
        r#"{"max_execution_time_ms": 200, "max_loop_iterations": 1000000000000}"#,
    );
    let out = mechanics(&["run", &module, "--limits", &limits]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limit_exceeded") && stderr.contains("200 ms"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let module = write("ok.js", "export default (a) => a");
    for args in [
        vec!["run", "/nonexistent/module.js"],
        vec!["run", module.as_str(), "--arg", "{not json"],
        vec![
            "run",
            module.as_str(),
            "--limits",
            "/nonexistent/limits.json",
        ],
    ] {
        let out = mechanics(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let bad = write("bad-limits.json", r#"{"max_loop_iterations": 0}"#);
    let out = mechanics(&["run", &module, "--limits", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_loop_iterations"));
    assert_eq!(mechanics(&["run"]).status.code(), Some(2));
}

#[test]
fn run_on_a_node_gives_the_same_results_and_errors() {
    let out = mechanics(&[
        "run",
        "examples/hello.js",
        "--arg",
        r#"{"name":"Ada"}"#,
        "--node",
    ]);
    assert_hello_ada(&out);

    let module = write(
        "node-throw.js",
        "export default () => { throw new Error('nope') }",
    );
    let out = mechanics(&["run", &module, "--node", "--json-errors"]);
    assert_eq!(out.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["kind"], "execution");
    assert!(error["message"].as_str().unwrap().contains("nope"));
}

#[test]
fn console_lines_go_to_stderr_in_process_and_on_a_node_and_stdout_stays_the_result() {
    let chatty = write(
        "chatty.js",
        "export default (n) => { console.log('got', n); console.warn({ careful: true }); return n * 2 }",
    );
    let failing = write(
        "chatty-throw.js",
        "export default () => { console.error('about to fail'); throw new Error('nope') }",
    );
    for place in [&[][..], &["--node"][..]] {
        let out = mechanics(&[&["run", chatty.as_str(), "--arg", "21"][..], place].concat());
        assert_eq!(out.status.code(), Some(0), "{place:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n", "{place:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let console: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("console."))
            .collect();
        assert_eq!(console.len(), 2, "{place:?}: {stderr}");
        assert_eq!(console[0], "console.log: got 21", "{place:?}");
        assert!(
            console[1].starts_with("console.warn: ") && console[1].contains("careful"),
            "{place:?}: {stderr}"
        );

        // A failing script's lines come first, then its error.
        let out = mechanics(&[&["run", failing.as_str()][..], place].concat());
        assert_eq!(out.status.code(), Some(1), "{place:?}");
        assert!(out.stdout.is_empty(), "{place:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let console = stderr.find("console.error: about to fail");
        let error = stderr.find("error: execution: ");
        assert!(
            console.is_some() && error.is_some() && console < error,
            "{place:?}: {stderr}"
        );
    }
}

#[test]
fn node_serve_announces_ready_serves_health_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args(["node", "serve", "--addr", "127.0.0.1:0", "--workers", "1"])
        .env("MECHANICS_NODE_TOKEN", "t0ken")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .trim()
        .to_owned();
    let health = http(
        &addr,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let stats = http(
        &addr,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(stats.starts_with("HTTP/1.1 401"), "{stats}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !stderr.contains("t0ken"),
        "the token is never logged: {stderr}"
    );
}

fn http(addr: &str, request: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn node_serve_refuses_a_public_address_without_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args(["node", "serve", "--addr", "0.0.0.0:0"])
        .env_remove("MECHANICS_NODE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no READY line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

#[test]
fn node_serve_refuses_a_token_file_that_is_a_device_at_once() {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args([
            "node",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            "/dev/zero",
        ])
        .env_remove("MECHANICS_NODE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no READY line");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains("not a regular file"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
