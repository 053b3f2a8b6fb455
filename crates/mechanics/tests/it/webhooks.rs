//! Webhooks through the real binary: `mechanics source add|list|show|rm` (tables, `--json`, exit
//! codes), and a signed GitHub `issues.opened` delivery → a js worker → exactly one comment on a
//! fake GitHub API, also when the delivery is sent twice and when the coordinator is killed with
//! `kill -9` while the worker runs and restarted on the same database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{
    Coordinator, HttpServer, TestClient, closed_port, code, command, stderr, tail,
};

const SECRET: &str = "e2e-webhook-secret";
const TOKEN: &str = "ghp-e2e-token";

/// `X-Hub-Signature-256` of `body`.
pub(crate) fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// An `issues.opened` delivery shaped like GitHub's documented example.
fn issue_opened(number: u64, title: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "opened",
        "issue": {
            "number": number, "title": title, "body": "It crashes on start.",
            "user": { "login": "octocat" }, "labels": []
        },
        "repository": { "full_name": "acme/app", "name": "app", "owner": { "login": "acme" } },
        "sender": { "login": "octocat" }
    }))
    .unwrap()
}

/// The test's own requests: signed deliveries and event reads.
struct Client(TestClient);

impl Client {
    fn new() -> Client {
        Client(TestClient::new(Duration::from_secs(10)))
    }

    /// A signed GitHub delivery to `POST /webhooks/{source}`: status and JSON answer.
    fn deliver(&self, base: &str, source: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
        self.0.send(
            self.0
                .http
                .post(format!("{base}/webhooks/{source}"))
                .header("content-type", "application/json")
                .header("x-github-event", "issues")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", github_signature(SECRET, body))
                .body(body.to_vec()),
        )
    }

    fn get(&self, url: &str) -> Value {
        let (status, body) = self.0.get(url);
        assert!((200..300).contains(&status), "GET {url}: {status} {body}");
        body
    }
}

/// One request the fake GitHub received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Value,
}

type Requests = Arc<Mutex<Vec<Seen>>>;

/// The issue whose comment the fake GitHub stores but never answers: its server is killed
/// while it waits.
const HELD_ISSUE: u64 = 45;

/// A fake GitHub API: it records every post and answers `201` as GitHub does for a comment
/// (a comment on [`HELD_ISSUE`] is recorded and then left without an answer), lists the
/// comments posted on an issue (`GET .../comments`), and says who the token is (`GET /user`).
fn fake_github(seen: Requests) -> HttpServer {
    HttpServer::start(axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                // Who the token is, which the server asks once for the source's policies.
                if (method.as_str(), uri.path()) == ("GET", "/user") {
                    return (
                        StatusCode::OK,
                        axum::Json(json!({ "login": "mechanics-bot" })),
                    );
                }
                if method == Method::GET {
                    let comments: Vec<Value> = seen
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|s| s.path == uri.path())
                        // GitHub names each comment's author; ours are the token's.
                        .map(|s| json!({ "body": s.body["body"], "user": { "login": "mechanics-bot" } }))
                        .collect();
                    return (StatusCode::OK, axum::Json(Value::Array(comments)));
                }
                seen.lock().unwrap().push(Seen {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    authorization: headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                if uri.path() == format!("/repos/acme/app/issues/{HELD_ISSUE}/comments") {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                (
                    StatusCode::CREATED,
                    axum::Json(json!({ "id": 1, "body": "created" })),
                )
            }
        },
    ))
}

fn wait_until(limit: Duration, what: &str, server: &Coordinator, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; server log:\n{}",
            tail(&server.stderr(), 40)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn source_commands_add_list_show_and_remove_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let good = file(
        "source.yml",
        "name: gh\nkind: github\nsecret_env: GH_WEBHOOK_SECRET\ntoken_env: GH_TOKEN\n",
    );

    // Bad input exits 2 naming the file and the field, before any server is asked (none runs).
    let no_server = format!("http://127.0.0.1:{}", closed_port());
    let cases = [
        (
            "no-secret.yml",
            "name: gh\nkind: github\n",
            "secret_env: required",
        ),
        (
            "value.yml",
            "name: gh\nkind: github\nsecret: hunter2\n",
            "unknown field `secret`",
        ),
        (
            "kind.yml",
            "name: gh\nkind: bitbucket\nsecret_env: S\n",
            "bitbucket",
        ),
        (
            "name.yml",
            "name: Not_A_Name\nkind: github\nsecret_env: S\n",
            "name:",
        ),
        (
            "url.yml",
            "name: gh\nkind: github\nsecret_env: S\napi_base_url: nope\n",
            "api_base_url:",
        ),
        ("empty.yml", "\n", "is empty"),
        ("syntax.yml", "name: [gh\n", "syntax.yml"),
    ];
    for (name, text, expected) in cases {
        let path = file(name, text);
        let out = command(dir.path())
            .args(["source", "add", "-f", &path, "--server", &no_server])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(code(&out), Some(2), "{name}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(name) && err.contains(expected),
            "{name}: {err}"
        );
    }
    let out = command(dir.path())
        .args(["source", "add", "-f", "/nonexistent/source.yml"])
        .args(["--server", &no_server])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    // A valid file but no server: 3.
    for args in [
        vec!["source", "add", "-f", good.as_str()],
        vec!["source", "list"],
    ] {
        let out = command(dir.path())
            .args(&args)
            .args(["--server", &no_server])
            .output()
            .unwrap();
        assert_eq!(code(&out), Some(3), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no Mechanics server"),
            "{}",
            stderr(&out)
        );
    }

    // `source add` reads the secret and the token: the server has them.
    let server = Coordinator::start(
        dir.path(),
        &["--api-key", "k3y"],
        &[("GH_WEBHOOK_SECRET", "s3cret"), ("GH_TOKEN", "t0ken")],
    );
    assert_eq!(
        server.ok(&["source", "list"]),
        "no sources yet: add one with `mechanics source add -f source.yml`\n"
    );
    assert_eq!(
        server.ok(&["source", "add", "-f", &good]),
        "source gh added (revision 1): deliveries go to POST /webhooks/gh\n"
    );
    let tg_secret = file("tg.secret", "tg-s3cret\n");
    let tg = file(
        "tg.yml",
        &format!(
            "name: tg\nkind: telegram\nsecret_file: {tg_secret}\n\
             api_base_url: http://127.0.0.1:9/bot\n"
        ),
    );
    server.ok(&["source", "add", "-f", &tg]);
    // Adding again updates.
    let updated = server.json(&["source", "add", "-f", &good]);
    assert_eq!(updated["revision"], 2, "{updated}");
    assert_eq!(updated["spec"]["secret_env"], "GH_WEBHOOK_SECRET");

    let list = server.ok(&["source", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].starts_with("NAME  KIND      SECRET") && lines[0].contains("REVISION"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("gh    github    env:GH_WEBHOOK_SECRET")
            && lines[1].contains("env:GH_TOKEN"),
        "{list}"
    );
    assert!(
        lines[2].starts_with(&format!("tg    telegram  file:{tg_secret}"))
            && lines[2].contains("http://127.0.0.1:9/bot"),
        "{list}"
    );
    let json = server.json(&["source", "list"]);
    let names: Vec<&str> = json["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spec"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gh", "tg"]);

    let shown = server.ok(&["source", "show", "gh"]);
    for line in [
        "name:      gh",
        "kind:      github",
        "webhook:   POST /webhooks/gh",
        "secret:    env:GH_WEBHOOK_SECRET",
        "token:     env:GH_TOKEN",
        "api:       the platform's public API",
        "revision:  2",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }
    assert_eq!(
        server.json(&["source", "show", "tg"])["spec"]["kind"],
        "telegram"
    );

    assert_eq!(server.ok(&["source", "rm", "tg"]), "source tg removed\n");
    for args in [["source", "show", "tg"], ["source", "rm", "tg"]] {
        let out = server.cli(&args);
        assert_eq!(code(&out), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("no source named \"tg\""),
            "{}",
            stderr(&out)
        );
    }
    // The API key is required: without it the server refuses (1), naming what to pass.
    let out = command(dir.path())
        .args(["source", "list", "--server", &server.url])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--api-key"), "{}", stderr(&out));
}

/// The triage worker of the test: comments with the issue's number and title; spins for a
/// while first so that the coordinator can be killed while it runs.
const TRIAGE_JS: &str = r#"
export default function main({ event }) {
  const issue = event.payload.issue;
  const until = Date.now() + 1500;
  while (Date.now() < until) {}
  return { reply: `Thanks @${issue.user.login}! #${issue.number} "${issue.title}" is triaged.` };
}
"#;

/// Adds source `gh` (its API the fake `github`) and the js worker `triage` ([`TRIAGE_JS`]) to
/// `server`, from files under `dir/work`.
fn add_triage(server: &Coordinator, dir: &std::path::Path, github: &HttpServer) {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("source.yml"),
        format!(
            "name: gh\nkind: github\nsecret_env: GH_WEBHOOK_SECRET\ntoken_env: GH_TOKEN\n\
             api_base_url: {}\n",
            github.url()
        ),
    )
    .unwrap();
    std::fs::write(work.join("triage.js"), TRIAGE_JS).unwrap();
    std::fs::write(
        work.join("worker.yml"),
        "name: triage\nkind: js\nmodule: triage.js\n\
         limits: { max_execution_time_ms: 8000, max_loop_iterations: 1000000000000 }\n\
         triggers:\n  - webhook: { source: gh, events: [\"issues.opened\"] }\n\
         write_back: true\n",
    )
    .unwrap();
    for (what, file) in [("source", "source.yml"), ("worker", "worker.yml")] {
        server.ok(&[what, "add", "-f", work.join(file).to_str().unwrap()]);
    }
}

#[test]
fn a_comment_posted_just_before_a_kill_9_is_found_after_the_restart_not_posted_again() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Requests = Arc::default();
    let github = fake_github(seen.clone());
    let env = [("GH_WEBHOOK_SECRET", SECRET), ("GH_TOKEN", TOKEN)];
    let mut server = Coordinator::start(dir.path(), &[], &env);
    add_triage(&server, dir.path(), &github);
    let client = Client::new();
    let body = issue_opened(HELD_ISSUE, "Held");
    let (status, answer) = client.deliver(&server.url, "gh", "held-1", &body);
    assert_eq!(status, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    let posted = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == format!("/repos/acme/app/issues/{HELD_ISSUE}/comments"))
            .count()
    };
    // The comment is on GitHub; its answer never comes back; the server dies before it could
    // record the write-back.
    wait_until(
        Duration::from_secs(20),
        "the comment posted",
        &server,
        || posted() == 1,
    );
    server.kill9();

    let server = Coordinator::start(dir.path(), &[], &env);
    wait_until(
        Duration::from_secs(20),
        "the event completed after the restart",
        &server,
        || client.get(&format!("{}/api/v1/events/{id}", server.url))["state"] == "completed",
    );
    assert_eq!(
        posted(),
        1,
        "exactly one comment: {:?}",
        seen.lock().unwrap()
    );
    let logs = client.get(&format!("{}/logs?event={id}&action=write_back", server.url));
    let entries = logs["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["outcome"] == "ok" && e["detail"]["found"].is_string()),
        "{logs}"
    );
}

#[test]
fn a_signed_issue_webhook_gets_exactly_one_comment_through_duplicates_and_kill_9() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let seen: Requests = Arc::default();
    let github = fake_github(seen.clone());
    let env = [("GH_WEBHOOK_SECRET", SECRET), ("GH_TOKEN", TOKEN)];
    let mut server = Coordinator::start(dir.path(), &[], &env);

    add_triage(&server, dir.path(), &github);

    let client = Client::new();
    let comments_on = |number: u64| -> Vec<Seen> {
        let path = format!("/repos/acme/app/issues/{number}/comments");
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    };
    let event_state = |server: &Coordinator, id: i64| -> String {
        let event = client.get(&format!("{}/api/v1/events/{id}", server.url));
        event["state"].as_str().unwrap().to_owned()
    };

    // A signed delivery: stored before the 202, one comment.
    let first = issue_opened(42, "Crash on start");
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let (status, answer) = client.deliver(&server.url, "gh", delivery, &first);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["duplicate"], false, "{answer}");
    let first_id = answer["event_id"].as_i64().unwrap();
    // GitHub's redelivery of the same delivery while it runs: acknowledged, nothing new.
    let (status, again) = client.deliver(&server.url, "gh", delivery, &first);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["event_id"], first_id, "{again}");
    wait_until(
        Duration::from_secs(15),
        "event 1 completed",
        &server,
        || event_state(&server, first_id) == "completed",
    );
    let shown = server.ok(&["event", "show", &first_id.to_string()]);
    assert!(shown.contains("\n  write-back:  done\n"), "{shown}");
    let comments = comments_on(42);
    assert_eq!(comments.len(), 1, "exactly one comment: {comments:?}");
    let comment = &comments[0];
    assert_eq!(comment.method, "POST");
    assert_eq!(comment.path, "/repos/acme/app/issues/42/comments");
    assert_eq!(
        comment.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        comment.body,
        json!({
            "body": format!(
                "Thanks @octocat! #42 \"Crash on start\" is triaged.\n\n<!-- mechanics:event {first_id} -->"
            )
        })
    );
    // Once more after it completed: still a duplicate, still one comment.
    let (status, again) = client.deliver(&server.url, "gh", delivery, &first);
    assert_eq!((status, again["duplicate"].clone()), (200, json!(true)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(comments_on(42).len(), 1);
    // A forged delivery is refused and stores nothing.
    let forged = issue_opened(43, "Forged");
    let request = client
        .0
        .http
        .post(format!("{}/webhooks/gh", server.url))
        .header("x-github-event", "issues")
        .header("x-github-delivery", "forged-1")
        .header("x-hub-signature-256", github_signature("wrong", &forged))
        .body(forged);
    assert_eq!(client.0.send(request).0, 401);

    // The crash: a new delivery, the coordinator (and its nodes) killed with kill -9 while the
    // worker runs it, a restart on the same database.
    let second = issue_opened(44, "Kill me");
    let (status, answer) = client.deliver(&server.url, "gh", "delivery-44", &second);
    assert_eq!(status, 202, "{answer}");
    let second_id = answer["event_id"].as_i64().unwrap();
    let tasks_url = |server: &Coordinator| format!("{}/api/v1/tasks?event={second_id}", server.url);
    wait_until(
        Duration::from_secs(10),
        "event 2's task dispatched",
        &server,
        || {
            let tasks = client.get(&tasks_url(&server));
            tasks["tasks"]
                .as_array()
                .is_some_and(|t| t.len() == 1 && t[0]["state"] == "dispatched")
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    server.kill9();
    assert!(
        comments_on(44).is_empty(),
        "the kill came after the comment"
    );

    let server = Coordinator::start(dir.path(), &[], &env);
    wait_until(
        Duration::from_secs(20),
        "event 2 completed after the restart",
        &server,
        || event_state(&server, second_id) == "completed",
    );
    // The delivery GitHub retries after the outage is a duplicate too.
    let (status, again) = client.deliver(&server.url, "gh", "delivery-44", &second);
    assert_eq!((status, again["event_id"].clone()), (200, json!(second_id)));
    std::thread::sleep(Duration::from_millis(300));
    let comments = comments_on(44);
    assert_eq!(
        comments.len(),
        1,
        "exactly one comment after the crash: {comments:?}"
    );
    assert_eq!(
        comments[0].body,
        json!({
            "body": format!(
                "Thanks @octocat! #44 \"Kill me\" is triaged.\n\n<!-- mechanics:event {second_id} -->"
            )
        })
    );
    assert_eq!(comments_on(42).len(), 1);
    assert_eq!(seen.lock().unwrap().len(), 2, "nothing else was posted");
    // The task ran again after the restart (attempt 2), once.
    let tasks = client.get(&tasks_url(&server));
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["state"], "completed");
    assert_eq!(tasks[0]["attempt"], 2, "{tasks:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The worked examples under `examples/`: (folder, script, what the sample event must make it
/// reply, or `None` to check separately).
const EXAMPLES: &[(&str, &str, Option<&str>)] = &[
    (
        "github-triage",
        "triage.js",
        Some(
            "Thanks @octocat for opening #42 in acme/app! This looks like: `bug`. A maintainer \
             will have a look soon.",
        ),
    ),
    (
        "slack-echo",
        "echo.js",
        Some("<@U123ABC456> you said: is it everything a river should be?"),
    ),
    (
        "telegram-bot",
        "bot.js",
        Some("Hello Ada! I know /start, /help, /ping, /time and /roll; anything else I repeat."),
    ),
    ("cron-heartbeat", "heartbeat.js", None),
];

#[test]
fn the_examples_parse_validate_register_and_run_with_their_sample_events() {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(REPO).join("examples");
    // Every file parses and validates as the CLI reads it (spec, js config and limits, module).
    for (folder, script, _) in EXAMPLES {
        let folder = examples.join(folder);
        for file in ["worker.yml", "README.md", *script, "event.json"] {
            assert!(folder.join(file).is_file(), "{}/{file}", folder.display());
        }
        let input = mechanics::client::load_worker(&folder.join("worker.yml"))
            .unwrap_or_else(|f| panic!("{}", f.message));
        assert!(input.module_source.is_some());
        if folder.join("source.yml").exists() {
            mechanics::sources::load_source(&folder.join("source.yml"))
                .unwrap_or_else(|f| panic!("{}", f.message));
        }
    }

    // The server takes them as the READMEs say (sources first, their variables set).
    let env = [
        ("GITHUB_WEBHOOK_SECRET", "s"),
        ("GITHUB_TOKEN", "t"),
        ("SLACK_SIGNING_SECRET", "s"),
        ("SLACK_BOT_TOKEN", "t"),
        ("TELEGRAM_SECRET_TOKEN", "s"),
        ("TELEGRAM_BOT_TOKEN", "t"),
    ];
    let server = Coordinator::start(dir.path(), &[], &env);
    for (folder, _, _) in EXAMPLES {
        let folder = examples.join(folder);
        if folder.join("source.yml").exists() {
            server.ok(&[
                "source",
                "add",
                "-f",
                folder.join("source.yml").to_str().unwrap(),
            ]);
        }
        server.ok(&[
            "worker",
            "add",
            "-f",
            folder.join("worker.yml").to_str().unwrap(),
        ]);
    }
    assert_eq!(
        server.json(&["worker", "list"])["workers"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    drop(server);

    // Each script runs on its sample event (as the server passes it) and replies as expected.
    for (folder, script, reply) in EXAMPLES {
        let Some(reply) = reply else { continue };
        let folder = examples.join(folder);
        let arg = std::fs::read_to_string(folder.join("event.json")).unwrap();
        let out = command(dir.path())
            .args(["run", folder.join(script).to_str().unwrap(), "--arg", &arg])
            .output()
            .unwrap();
        assert_eq!(code(&out), Some(0), "{script}: {}", stderr(&out));
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["reply"], *reply, "{script}: {result}");
    }

    // The heartbeat calls its endpoint: the worker's config, pointed at a server of the test.
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = calls.clone();
    let target = HttpServer::start(axum::Router::new().fallback(move |uri: Uri| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(uri.to_string());
            "alive"
        }
    }));
    let folder = examples.join("cron-heartbeat");
    let spec: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(folder.join("worker.yml")).unwrap())
            .unwrap();
    let mut config = spec["config"].clone();
    let url = config["endpoints"]["heartbeat"]["url_template"]
        .as_str()
        .unwrap()
        .replace("http://127.0.0.1:8000", &target.url());
    config["endpoints"]["heartbeat"]["url_template"] = json!(url);
    let config_path = dir.path().join("heartbeat-config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let arg = std::fs::read_to_string(folder.join("event.json")).unwrap();
    let out = command(dir.path())
        .args([
            "run",
            folder.join("heartbeat.js").to_str().unwrap(),
            "--arg",
            &arg,
        ])
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result,
        json!({ "ok": true, "status": 200, "fire_time": "2026-01-01T00:00:00.000Z", "dropped": 0, "attempt": 1 })
    );
    assert_eq!(
        *calls.lock().unwrap(),
        ["/?from=mechanics&fire_time=2026-01-01T00%3A00%3A00.000Z"]
    );
}

#[test]
fn event_show_says_why_a_worker_did_not_match_and_redeliver_matches_again() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("GH_WEBHOOK_SECRET", SECRET)];
    let server = Coordinator::start(dir.path(), &[], &env);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let file = |name: &str, text: &str| {
        let path = work.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let source = file(
        "source.yml",
        "name: gh\nkind: github\nsecret_env: GH_WEBHOOK_SECRET\n",
    );
    file("w.js", "export default () => ({ ok: true });\n");
    let worker = |repo: &str| {
        file(
            "worker.yml",
            &format!(
                "name: triage\nkind: js\nmodule: w.js\ntriggers:\n  - webhook:\n      \
                 source: gh\n      events: [\"issues.opened\"]\n      \
                 filter: {{ repository.full_name: {repo} }}\n"
            ),
        )
    };
    server.ok(&["source", "add", "-f", &source]);
    server.ok(&["worker", "add", "-f", &worker("acme/web")]);

    let client = Client::new();
    let (status, answer) = client.deliver(&server.url, "gh", "d-1", &issue_opened(7, "Oops"));
    assert_eq!(status, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the event skipped",
        &server,
        || client.get(&format!("{}/api/v1/events/{id}", server.url))["state"] == "skipped",
    );
    let shown = server.ok(&["event", "show", &id.to_string()]);
    assert!(shown.contains("state:       skipped"), "{shown}");
    assert!(
        shown.contains(
            "triage: not matched: repository.full_name: want \"acme/web\", got \"acme/app\""
        ),
        "{shown}"
    );
    let listed = server.ok(&[
        "event",
        "list",
        "--state",
        "skipped",
        "--type",
        "issues.opened",
    ]);
    assert!(
        listed.contains("issues.opened") && listed.contains("skipped"),
        "{listed}"
    );
    assert_eq!(
        server.ok(&["event", "list", "--type", "push"]),
        "no events\n"
    );
    let bad = server.cli(&["event", "list", "--state", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // The filter fixed, the same delivery again: a new event, matched, its task completed.
    server.ok(&["worker", "add", "-f", &worker("acme/app")]);
    let again = server.ok(&["event", "redeliver", &id.to_string(), "--key", "fix-1"]);
    let copy: i64 = again
        .split("as event ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{again}"));
    assert_ne!(copy, id);
    let same = server.ok(&["event", "redeliver", &id.to_string(), "--key", "fix-1"]);
    assert!(
        same.contains(&format!(
            "already redelivered with this key as event {copy}"
        )),
        "{same}"
    );
    wait_until(
        Duration::from_secs(20),
        "the redelivery completed",
        &server,
        || client.get(&format!("{}/api/v1/events/{copy}", server.url))["state"] == "completed",
    );
    let shown = server.ok(&["event", "show", &copy.to_string()]);
    assert!(shown.contains("triage: matched"), "{shown}");
    assert!(shown.contains("policy: ok"), "{shown}");
    assert!(shown.contains(": completed (attempt 1)"), "{shown}");
    let json: Value =
        serde_json::from_str(&server.ok(&["event", "show", &copy.to_string(), "--json"])).unwrap();
    assert_eq!(json["actor"], "octocat");
    assert_eq!(json["workers"][0]["task"]["state"], "completed");
    assert_eq!(json["workers"][0]["task"]["trigger"], "webhook");
    let list = server.ok(&["task", "list", "--worker", "triage"]);
    let row = list.lines().nth(1).unwrap_or_else(|| panic!("{list}"));
    assert_eq!(row.split_whitespace().nth(2), Some("webhook"), "{list}");
}

#[test]
fn logs_and_event_show_give_every_workers_reason_and_the_actor_until_the_trace_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("GH_WEBHOOK_SECRET", SECRET)];
    let server = Coordinator::start(dir.path(), &[], &env);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let file = |name: &str, text: &str| {
        let path = work.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let source = file(
        "source.yml",
        "name: gh\nkind: github\nsecret_env: GH_WEBHOOK_SECRET\n",
    );
    file("w.js", "export default () => ({ ok: true });\n");
    // One worker whose patterns miss the type, one whose filter misses the repository.
    let typed = file(
        "typed.yml",
        "name: typed\nkind: js\nmodule: w.js\ntriggers:\n  - webhook:\n      source: gh\n      \
         events: [\"pull_request.opened\", \"pull_request.synchronize\", \"push\"]\n",
    );
    let filtered = file(
        "filtered.yml",
        "name: filtered\nkind: js\nmodule: w.js\ntriggers:\n  - webhook:\n      source: gh\n      \
         events: [\"issues.opened\"]\n      filter: { repository.full_name: acme/web }\n",
    );
    server.ok(&["source", "add", "-f", &source]);
    server.ok(&["worker", "add", "-f", &typed]);
    server.ok(&["worker", "add", "-f", &filtered]);

    let client = Client::new();
    let (status, answer) = client.deliver(&server.url, "gh", "d-1", &issue_opened(7, "Oops"));
    assert_eq!(status, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the match entry", &server, || {
        !server.json(&["logs", "--event", &id, "--action", "match"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let text = server.ok(&["logs", "--event", &id, "--action", "match"]);
    let row = text.lines().nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.ends_with(
            "issues.opened: no worker matched; \
             filtered: repository.full_name: want \"acme/web\", got \"acme/app\"; \
             typed: event type \"issues.opened\" matches none of \
             [\"pull_request.opened\", \"pull_request.synchronize\", \"push\"]"
        ),
        "{text}"
    );

    // No worker matched, so no policy ran: the actor is known from the match all the same.
    let shown = server.ok(&["event", "show", &id]);
    assert!(shown.contains("  actor:       octocat\n"), "{shown}");
    assert!(
        shown.contains("filtered: not matched: repository.full_name"),
        "{shown}"
    );
    // Once the match entry is pruned (after 7 days), the verdicts are said to be gone, not
    // that no worker listens to the source.
    let db = rusqlite::Connection::open(dir.path().join("m.db")).unwrap();
    let pruned = db
        .execute(
            "DELETE FROM logs WHERE event_id = ?1 AND action = 'match'",
            [id.parse::<i64>().unwrap()],
        )
        .unwrap();
    assert_eq!(pruned, 1);
    let shown = server.ok(&["event", "show", &id]);
    assert!(
        shown.ends_with(
            "workers: the verdicts are no longer in the trace (its entries are kept 7 days)\n"
        ),
        "{shown}"
    );
}

#[test]
fn event_show_says_when_a_failing_write_back_is_tried_again_and_why() {
    let dir = tempfile::tempdir().unwrap();
    // A GitHub that knows the token but cannot take comments right now.
    let github = HttpServer::start(axum::Router::new().fallback(|method: Method| async move {
        if method == Method::GET {
            (
                StatusCode::OK,
                axum::Json(json!({ "login": "mechanics-bot" })),
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "message": "down for maintenance" })),
            )
        }
    }));
    let env = [("GH_WEBHOOK_SECRET", SECRET), ("GH_TOKEN", TOKEN)];
    let server = Coordinator::start(dir.path(), &[], &env);
    add_triage(&server, dir.path(), &github);
    let client = Client::new();
    let (status, answer) = client.deliver(&server.url, "gh", "d-1", &issue_opened(7, "Oops"));
    assert_eq!(status, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    let url = format!("{}/api/v1/events/{id}", server.url);
    wait_until(
        Duration::from_secs(15),
        "a failed write-back",
        &server,
        || client.get(&url)["state"] == "write_back_failed",
    );
    let event = client.get(&url);
    let at = event["next_write_back_at"].as_i64().unwrap();
    let time = mechanics_proto::domain::time::rfc3339(at).unwrap();
    let shown = server.ok(&["event", "show", &id.to_string()]);
    let line = shown
        .lines()
        .find_map(|l| l.strip_prefix("  write-back:  "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        line.starts_with(&format!("retrying at {time}: ")),
        "{shown}"
    );
    assert!(line.contains("503"), "{shown}");
    let json: Value =
        serde_json::from_str(&server.ok(&["event", "show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(json["write_back"]["outcome"], "retry", "{json}");
}

#[test]
fn a_paused_workers_webhook_task_waits_and_runs_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("GH_WEBHOOK_SECRET", SECRET)];
    let server = Coordinator::start(dir.path(), &[], &env);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let file = |name: &str, text: &str| {
        let path = work.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let source = file(
        "source.yml",
        "name: gh\nkind: github\nsecret_env: GH_WEBHOOK_SECRET\n",
    );
    file(
        "w.js",
        "export default ({ event }) => ({ number: event.payload.issue.number });\n",
    );
    let worker = file(
        "worker.yml",
        "name: triage\nkind: js\nmodule: w.js\ntriggers:\n  - webhook:\n      source: gh\n      \
         events: [\"issues.opened\"]\n",
    );
    server.ok(&["source", "add", "-f", &source]);
    server.ok(&["worker", "add", "-f", &worker]);
    server.ok(&["worker", "pause", "triage"]);

    let client = Client::new();
    let (status, answer) = client.deliver(&server.url, "gh", "d-1", &issue_opened(7, "Oops"));
    assert_eq!(status, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    // The event is matched and its task made, but not dispatched while the worker is paused.
    let task = || {
        let page = server.json(&["task", "list", "--worker", "triage"]);
        page["tasks"].as_array().unwrap().first().cloned()
    };
    wait_until(Duration::from_secs(10), "the task made", &server, || {
        task().is_some()
    });
    let made = task().unwrap();
    assert_eq!(made["event_id"], id, "{made}");
    let task_id = made["id"].to_string();
    // Another delivery after it is matched too: the dispatcher had every chance to claim the
    // first task meanwhile, and did not.
    let (status, later) = client.deliver(&server.url, "gh", "d-2", &issue_opened(8, "Again"));
    assert_eq!(status, 202, "{later}");
    wait_until(
        Duration::from_secs(10),
        "the second task made",
        &server,
        || {
            server.json(&["task", "list", "--worker", "triage"])["tasks"]
                .as_array()
                .unwrap()
                .len()
                == 2
        },
    );
    let waiting = server.json(&["task", "show", &task_id]);
    assert_eq!(
        (&waiting["state"], &waiting["attempt"]),
        (&json!("pending"), &json!(0)),
        "{waiting}"
    );

    server.ok(&["worker", "resume", "triage"]);
    let watched = server.ok(&["task", "watch", &task_id]);
    assert!(watched.contains("completed (attempt 1)"), "{watched}");
    let done = server.json(&["task", "show", &task_id]);
    assert_eq!(done["result"], json!({ "number": 7 }), "{done}");
    wait_until(
        Duration::from_secs(10),
        "the event completed",
        &server,
        || client.get(&format!("{}/api/v1/events/{id}", server.url))["state"] == "completed",
    );
}

#[test]
fn webhook_send_signs_as_each_platform_and_the_server_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let file = |name: &str, text: &str| {
        let path = work.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let secret = file("secret", "e2e-secret\n");
    let whsec = file("whsec", "whsec_c2VuZC10ZXN0LWtleS1ieXRlcw==\n");
    for (name, kind, secret) in [
        ("gh", "github", &secret),
        ("gl", "gitlab", &secret),
        ("sl", "slack", &secret),
        ("tg", "telegram", &secret),
        ("gen", "generic", &whsec),
    ] {
        let spec = file(
            &format!("{name}.yml"),
            &format!("name: {name}\nkind: {kind}\nsecret_file: {secret}\n"),
        );
        server.ok(&["source", "add", "-f", &spec]);
    }
    let samples = [
        (
            "gh",
            r#"{"action":"opened","issue":{"number":1},"sender":{"login":"octocat"}}"#,
        ),
        (
            "gl",
            r#"{"object_kind":"issue","object_attributes":{"action":"open","iid":1}}"#,
        ),
        (
            "sl",
            r#"{"type":"event_callback","event_id":"Ev1","event":{"type":"message","user":"U1"}}"#,
        ),
        (
            "tg",
            r#"{"update_id":7,"message":{"message_id":1,"chat":{"id":1},"text":"hi"}}"#,
        ),
        ("gen", r#"{"type":"build.finished","data":{"ok":true}}"#),
    ];
    let mut gh_event = String::new();
    for (source, body) in samples {
        let sample = file(&format!("{source}.json"), body);
        let out = server.ok(&[
            "webhook",
            "send",
            source,
            &sample,
            "--event",
            "issues",
            "--delivery-id",
            "same-1",
        ]);
        let id = out
            .strip_prefix("202: event ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{source}: {out}"));
        assert_eq!(
            out,
            format!("202: event {id} stored; follow it with `mechanics event show {id}`\n")
        );
        if source == "gh" {
            gh_event = id.to_owned();
        }
    }
    let events: Value = serde_json::from_str(&server.ok(&["event", "list", "--json"])).unwrap();
    let mut types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "build.finished",
            "issue.open",
            "issues.opened",
            "message",
            "message"
        ]
    );
    // The same delivery id again is a duplicate; exit 0, nothing new.
    let gh = work.join("gh.json");
    let again = server.ok(&[
        "webhook",
        "send",
        "gh",
        gh.to_str().unwrap(),
        "--event",
        "issues",
        "--delivery-id",
        "same-1",
    ]);
    assert_eq!(
        again,
        format!(
            "200: event {gh_event} (a duplicate: this delivery id was delivered before; nothing \
             new was done). To match it again: mechanics event redeliver {gh_event}\n"
        )
    );
    // The same GitHub body under a new delivery id is a duplicate too, and says so.
    let replayed = server.ok(&[
        "webhook",
        "send",
        "gh",
        gh.to_str().unwrap(),
        "--event",
        "issues",
    ]);
    assert_eq!(
        replayed,
        format!(
            "200: event {gh_event} (a duplicate: the same body arrived in the last 24 hours \
             under another delivery id; nothing new was done). To match it again: mechanics \
             event redeliver {gh_event}\n"
        )
    );

    // Bad input exits 2 before anything is sent; a refusal by the server exits 1.
    let not_json = file("bad.json", "{nope");
    let no_event = server.cli(&["webhook", "send", "gh", gh.to_str().unwrap()]);
    assert_eq!(code(&no_event), Some(2), "{}", stderr(&no_event));
    assert!(
        stderr(&no_event).contains("--event"),
        "{}",
        stderr(&no_event)
    );
    let bad = server.cli(&["webhook", "send", "gh", &not_json, "--event", "issues"]);
    assert_eq!(code(&bad), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("not JSON"), "{}", stderr(&bad));
    std::fs::write(&secret, "rotated-here-only\n").unwrap();
    let refused = server.cli(&["webhook", "send", "sl", &file("sl2.json", samples[2].1)]);
    assert_eq!(code(&refused), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("the server refused the delivery (401)"),
        "{}",
        stderr(&refused)
    );
    let unknown = server.cli(&["webhook", "send", "nope", gh.to_str().unwrap()]);
    assert_eq!(code(&unknown), Some(1), "{}", stderr(&unknown));
}
