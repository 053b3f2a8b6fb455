//! What `worker add` and `source add` refuse when they are run, not at the first delivery: a js
//! module that does not parse (with its real line and column, also past an
//! `export default async` arrow), a bad cron schedule or time zone (both exit 2 without a
//! request), a webhook trigger naming an unknown source (the server's `400`, exit 2), and a
//! source whose secret or token the server cannot read (exit 1, naming the variable or file).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::{Coordinator, TestClient, code, command, stderr};

/// Writes `name` under `dir` with `text`; its path.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A module whose second line does not parse, behind a default export Boa cannot parse as
/// written (`export default async (...) =>`): the error must be the real one, where it is.
const BROKEN: &str = "export default async (arg) => {\n  const answer = ;\n  return answer;\n};\n";

#[test]
fn a_module_that_does_not_parse_and_a_bad_schedule_are_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // No server listens there: a refusal here needs none (exit 2, not 3).
    let unreachable = |args: &[&str]| {
        command(work)
            .env("MECHANICS_SERVER", "http://127.0.0.1:1")
            .args(args)
            .output()
            .unwrap()
    };
    write(work, "broken.js", BROKEN);
    let worker = write(
        work,
        "broken.yml",
        "name: broken\nkind: js\nmodule: ./broken.js\ntriggers: [{ api: true }]\n",
    );
    let out = unreachable(&["worker", "add", "-f", &worker]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    // Line 2, column 18: the `;` where an expression must be.
    assert!(
        stderr(&out).contains("module: broken.js:2:18: "),
        "{}",
        stderr(&out)
    );

    for (name, trigger, says) in [
        (
            "schedule",
            r#"{ cron: "61 * * * *" }"#,
            "\"61 * * * *\" is not a cron schedule",
        ),
        (
            "zone",
            r#"{ cron: { schedule: "@daily", tz: "Mars/Olympus" } }"#,
            "\"Mars/Olympus\" is not an IANA time zone name",
        ),
    ] {
        let path = write(
            work,
            &format!("{name}.yml"),
            &format!(
                "name: w\nkind: http\nurl: http://127.0.0.1:9\n\
                 triggers: [{{ api: true }}, {trigger}]\n"
            ),
        );
        let out = unreachable(&["worker", "add", "-f", &path]);
        assert_eq!(code(&out), Some(2), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{name}.yml: triggers[1].cron: {says}")),
            "{name}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn the_server_refuses_what_cannot_work_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[("ADD_CHECKS_SECRET", "s3cr3t-value")]);
    let work = tempfile::tempdir_in(dir.path()).unwrap();
    let work = work.path();
    let client = TestClient::new(Duration::from_secs(30));
    let workers_url = format!("{}/api/v1/workers", server.url);

    // The API checks the module as the CLI does: 400 with file, line and column, nothing stored.
    let (status, answer) = client.post(
        &workers_url,
        &json!({
            "spec": { "name": "broken", "kind": "js", "module": "./broken.js",
                      "triggers": [{ "api": true }] },
            "module_source": BROKEN,
        }),
    );
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("invalid worker: broken.js:2:18: "),
        "{message}"
    );
    let (status, _) = client.get(&format!("{workers_url}/broken"));
    assert_eq!(status, 404);

    // The same arrow without the mistake is accepted and runs, `@daily` too.
    write(
        work,
        "fine.js",
        "export default async (arg) => ({ doubled: arg.payload.n * 2 });\n",
    );
    let fine = write(
        work,
        "fine.yml",
        "name: fine\nkind: js\nmodule: ./fine.js\ntriggers: [{ api: true }, { cron: \"@daily\" }]\n",
    );
    server.ok(&["worker", "add", "-f", &fine]);
    let out = server.cli(&[
        "task",
        "submit",
        "fine",
        "--payload",
        r#"{"n":21}"#,
        "--wait",
        "--timeout",
        "60s",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["result"]["doubled"], 42);

    // A webhook trigger must name a registered source: exit 2 naming the field, nothing stored.
    write(
        work,
        "hook.js",
        "export default function () { return {}; }\n",
    );
    let hook = write(
        work,
        "hook.yml",
        "name: hook\nkind: js\nmodule: ./hook.js\n\
         triggers: [{ webhook: { source: gh, events: [\"issues.*\"] } }]\n",
    );
    let out = server.cli(&["worker", "add", "-f", &hook]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("triggers[0].webhook.source: no source named \"gh\""),
        "{}",
        stderr(&out)
    );
    let (status, _) = client.get(&format!("{workers_url}/hook"));
    assert_eq!(status, 404);

    // `source add` needs the server to read the secret and the token now: exit 1, naming the
    // variable or the file, never a value; nothing stored.
    let missing_file = work.join("absent.secret");
    for (name, yaml, named) in [
        (
            "env",
            "name: gh\nkind: github\nsecret_env: ADD_CHECKS_UNSET\n".to_owned(),
            "ADD_CHECKS_UNSET".to_owned(),
        ),
        (
            "file",
            format!(
                "name: gh\nkind: github\nsecret_file: {}\n",
                missing_file.display()
            ),
            missing_file.display().to_string(),
        ),
        (
            "token",
            "name: gh\nkind: github\nsecret_env: ADD_CHECKS_SECRET\ntoken_env: ADD_CHECKS_NO_TOKEN\n"
                .to_owned(),
            "ADD_CHECKS_NO_TOKEN".to_owned(),
        ),
    ] {
        let path = write(work, &format!("source-{name}.yml"), &yaml);
        let out = server.cli(&["source", "add", "-f", &path]);
        assert_eq!(code(&out), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(&named), "{name}: {}", stderr(&out));
        assert!(!stderr(&out).contains("s3cr3t-value"), "{}", stderr(&out));
    }
    let (status, list) = client.get(&format!("{}/api/v1/sources", server.url));
    assert_eq!(
        (status, list["sources"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );

    // With a readable secret the source is added, and then the worker naming it.
    let source = write(
        work,
        "source.yml",
        "name: gh\nkind: github\nsecret_env: ADD_CHECKS_SECRET\n",
    );
    server.ok(&["source", "add", "-f", &source]);
    server.ok(&["worker", "add", "-f", &hook]);
}

/// A worker or source file that is not valid YAML of its shape is named once, with the
/// parser's position, and no excerpt headed by a made-up file name.
#[test]
fn yaml_errors_name_the_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let refused = |args: &[&str]| {
        let out = command(work)
            .env("MECHANICS_SERVER", "http://127.0.0.1:1")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        stderr(&out)
    };
    let unclosed = write(
        work,
        "unclosed.yml",
        "name: w\nkind: js\nmodule: ./x.js\ntriggers: [{ api: true }\n",
    );
    assert_eq!(
        refused(&["worker", "add", "-f", &unclosed]),
        format!(
            "error: {unclosed}: unclosed bracket '[' at line 4, column 11: \
             `triggers: [{{ api: true }}`\n"
        )
    );
    let unknown = write(
        work,
        "unknown.yml",
        "name: s\nkind: github\nsecret_env: X\nsecrets: 1\n",
    );
    let message = refused(&["source", "add", "-f", &unknown]);
    assert_eq!(
        message,
        format!(
            "error: {unknown}: unknown field `secrets`, expected one of name, kind, secret_env, \
             secret_file, token_env, token_file, api_base_url, actor_path at line 4, column 1: \
             `secrets: 1`\n"
        )
    );
    assert!(!message.contains("<input>"), "{message}");
}
