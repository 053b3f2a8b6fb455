//! `mechanics worker test`: every example runs as the server would run it, and bad input exits 2.

use serde_json::{Value, json};

use super::{mechanics, write};

fn stdout_json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// The webhook payload inside an example's `mechanics run` argument (`event.json`).
fn example_payload(example: &str) -> String {
    let path = format!(
        "{}/../../examples/{example}/event.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let arg: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    write(
        &format!("{example}-payload.json"),
        &arg["event"]["payload"].to_string(),
    )
}

#[test]
fn every_example_worker_runs_with_its_sample_input() {
    // A payload worker.
    let out = mechanics(&[
        "worker",
        "test",
        "-f",
        "examples/hello-worker/worker.yml",
        "--payload",
        r#"{"name":"Ada"}"#,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc = stdout_json(&out);
    assert_eq!(doc["result"]["greeting"], json!("Hello, Ada!"));
    assert_eq!(
        doc["result"]["task"],
        json!(1),
        "the task argument as the server builds it"
    );
    assert_eq!(doc["reply"], Value::Null);

    // Webhook workers with write-back: the reply that would be posted is shown, not posted.
    for example in ["github-triage", "slack-echo", "telegram-bot"] {
        let payload = example_payload(example);
        let file = format!("examples/{example}/worker.yml");
        let out = mechanics(&["worker", "test", "-f", &file, "--event", &payload, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{example}: {out:?}");
        let doc = stdout_json(&out);
        let reply = doc["reply"].as_str().unwrap_or_default();
        assert!(!reply.is_empty(), "{example} would post a reply: {doc}");
        assert_eq!(doc["result"]["reply"].as_str(), Some(reply), "{example}");
    }

    // The cron worker needs no event and calls its configured endpoint for real: with nothing
    // listening there, the job fails as it would on the server (exit 1), naming the endpoint.
    let out = mechanics(&[
        "worker",
        "test",
        "-f",
        "examples/cron-heartbeat/worker.yml",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc = stdout_json(&out);
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("endpoint `heartbeat`"), "{doc}");
    // The TypeScript worker runs its transpiled module and its console output comes back.
    let out = mechanics(&[
        "worker",
        "test",
        "-f",
        "examples/ts-worker/worker.yml",
        "--payload",
        r#"{"items":[{"name":"a","price":2,"tags":["x"]}]}"#,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc = stdout_json(&out);
    assert!(
        doc["console"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("task 1")),
        "{doc}"
    );
}

#[test]
fn human_output_keeps_stdout_the_result_and_console_and_reply_on_stderr() {
    let payload = example_payload("github-triage");
    let out = mechanics(&[
        "worker",
        "test",
        "-f",
        "examples/github-triage/worker.yml",
        "--event",
        &payload,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let result = stdout_json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("write-back reply (not posted):"),
        "{stderr}"
    );
    assert!(
        stderr.contains(result["reply"].as_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn a_failing_job_exits_1_and_bad_input_exits_2() {
    let module = write(
        "fails.js",
        "export default () => { console.error('about to fail'); throw new Error('nope') }",
    );
    let spec = write(
        "fails.yml",
        &format!("name: fails\nkind: js\nmodule: {module}\ntriggers: [{{ api: true }}]\n"),
    );
    let out = mechanics(&["worker", "test", "-f", &spec]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("console.error: about to fail"), "{stderr}");
    assert!(stderr.contains("Error: nope"), "{stderr}");

    for args in [
        vec!["--payload", "{not json"],
        vec!["--event", "/nonexistent/event.json"],
    ] {
        let mut all = vec!["worker", "test", "-f", &spec];
        all.extend(args);
        let out = mechanics(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {out:?}");
    }
    let out = mechanics(&["worker", "test", "-f", "/nonexistent/worker.yml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
