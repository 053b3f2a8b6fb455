//! TypeScript workers through `mechanics serve`: added with the CLI (the example of
//! `examples/ts-worker`), transpiled by the server, run on a node with positions mapped back to
//! the TypeScript lines, shown as written; a module with a syntax error is refused and changes
//! nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Coordinator, TestClient, code, stderr};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The 1-based line of `text` holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"))
        + 1
}

#[test]
fn a_typescript_worker_is_transpiled_at_add_runs_and_is_shown_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let worker_yml = format!("{REPO}/examples/ts-worker/worker.yml");
    let source = std::fs::read_to_string(format!("{REPO}/examples/ts-worker/worker.ts")).unwrap();
    assert_eq!(
        server.ok(&["worker", "add", "-f", &worker_yml]),
        "worker summary added (revision 1)\n"
    );

    // It runs: types, enums, parameter properties, optional chaining, `mechanics:hex`.
    let payload = json!({
        "label": "cart",
        "items": [
            { "name": "pen", "price": 5, "tags": ["office"] },
            { "name": "chair", "price": 150 },
            { "name": "lamp", "price": 20 },
        ],
    });
    let out = server.cli(&[
        "task",
        "submit",
        "summary",
        "--payload",
        &payload.to_string(),
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "completed");
    assert_eq!(
        task["result"],
        json!({
            "label": "cart",
            "total": 175,
            "bands": { "cheap": 1, "dear": 1, "fair": 1 },
            "firstTag": "office",
            "labelHex": "63617274",
        })
    );

    // An error thrown in the TypeScript names its line of worker.ts.
    let out = server.cli(&[
        "task",
        "submit",
        "summary",
        "--payload",
        r#"{"items":[{"name":"refund","price":-5}]}"#,
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = failed["error"].as_str().unwrap_or_default();
    let throw_line = line_of(&source, "throw new RangeError");
    assert!(
        error.contains("RangeError: prices must not be negative")
            && error.contains(&format!("(worker.ts:{throw_line}:")),
        "{error}"
    );

    // Shown as written: `worker show` and GET give the TypeScript source, not what runs.
    let shown = server.json(&["worker", "show", "summary"]);
    assert_eq!(shown["module_source"], source.as_str());
    assert_eq!(shown["spec"]["module"], "./worker.ts");
    let client = TestClient::new(Duration::from_secs(30));
    let (status, got) = client.get(&format!("{}/api/v1/workers/summary", server.url));
    assert_eq!(status, 200);
    assert_eq!(got["module_source"], source.as_str());
    assert_eq!(got.get("transpiled"), None, "{got}");
    let human = server.ok(&["worker", "show", "summary"]);
    assert!(human.contains("./worker.ts"), "{human}");

    // A syntax error: 400 naming file, line and column, and nothing changes, neither for a new
    // worker nor for the existing one.
    let broken = "interface A { n: number }\n\nexport default function main(): A {\n  return { n: 1 as };\n}\n";
    for name in ["broken", "summary"] {
        let body = json!({
            "spec": {
                "name": name,
                "kind": "js",
                "module": "./broken.ts",
                "triggers": [{ "api": true }],
            },
            "module_source": broken,
        });
        let (status, answer) = client.post(&format!("{}/api/v1/workers", server.url), &body);
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("invalid worker: broken.ts:4:20: "),
            "{message}"
        );
    }
    let (_, list) = client.get(&format!("{}/api/v1/workers", server.url));
    let workers = list["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{list}");
    assert_eq!(workers[0]["spec"]["name"], "summary");
    assert_eq!(workers[0]["revision"], 1);
    let (_, still) = client.get(&format!("{}/api/v1/workers/summary", server.url));
    assert_eq!(still["module_source"], source.as_str());
    assert_eq!(still["revision"], 1);

    // The CLI finds the syntax error itself: bad input, exit 2, no request.
    let work = tempfile::tempdir_in(dir.path()).unwrap();
    std::fs::write(work.path().join("broken.ts"), broken).unwrap();
    std::fs::write(
        work.path().join("worker.yml"),
        "name: broken\nkind: js\nmodule: ./broken.ts\ntriggers: [{ api: true }]\n",
    )
    .unwrap();
    let out = server.cli(&[
        "worker",
        "add",
        "-f",
        work.path().join("worker.yml").to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("module: broken.ts:4:20: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_transpiles_a_typescript_file_here_and_on_a_node() {
    let module = format!("{REPO}/examples/ts-worker/worker.ts");
    let source = std::fs::read_to_string(&module).unwrap();
    let arg = json!({
        "event": null,
        "task": { "id": 7, "attempt": 1, "worker": "summary" },
        "payload": { "items": [{ "name": "refund", "price": -5 }] },
    })
    .to_string();
    let throw_line = line_of(&source, "throw new RangeError");
    for node in [false, true] {
        let mut args = vec!["run", "examples/ts-worker/worker.ts", "--arg", &arg];
        if node {
            args.push("--node");
        }
        let out = crate::mechanics(&args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("console.log: task 7: 1 items, total -5"),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "error: execution: RangeError: prices must not be negative \
                 (examples/ts-worker/worker.ts:{throw_line}:"
            )),
            "node: {node}: {err}"
        );
    }
    // A syntax error fails the job as a JavaScript one does: exit 1, file, line and column.
    let broken = crate::write("broken.ts", "export default () => {\n  let x: = 1;\n};\n");
    let out = crate::mechanics(&["run", &broken]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("error: execution: {broken}:2:10: Unexpected token\n")
    );
}
