//! `mechanics run` as a user runs it: the real binary, real files, exit codes and streams.

use std::process::{Command, Output};

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

#[test]
fn run_prints_the_result_of_the_readme_example() {
    let out = mechanics(&["run", "examples/hello.js", "--arg", r#"{"name":"Ada"}"#]);
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
