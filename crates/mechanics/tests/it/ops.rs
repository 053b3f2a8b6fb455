//! Operating a running server through the binary: pausing and resuming a worker (its tasks wait,
//! its cron fires are skipped and traced, nothing is lost) and removing a worker that still has
//! work (refused, or canceled with `--force`); the log lines of local nodes, relayed once in
//! every log format.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Coordinator, HttpServer, Seen, code, http_worker, stderr, tail};

/// The `cron` entries of `worker` in `/logs` with `outcome`.
fn cron_entries(server: &Coordinator, worker: &str, outcome: &str) -> Vec<Value> {
    let page = server.json(&[
        "logs",
        "--worker",
        worker,
        "--action",
        "cron",
        "--outcome",
        outcome,
    ]);
    page["entries"].as_array().unwrap().clone()
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
fn eventually(server: &Coordinator, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}; server log:\n{}",
            tail(&server.stderr(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tasks_of(server: &Coordinator, worker: &str) -> Vec<Value> {
    let page = server.json(&["task", "list", "--worker", worker]);
    page["tasks"].as_array().unwrap().clone()
}

#[test]
fn a_paused_cron_worker_skips_its_fires_and_keeps_its_tasks_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let seen: Seen = Arc::default();
    let target = HttpServer::start(http_worker(
        seen.clone(),
        Duration::ZERO,
        Arc::new(Mutex::new(200)),
    ));
    // Every second, and API submissions too. Paused right after it is added, so (but for a
    // fire in between) nothing of it runs until it is resumed.
    server.add_worker(&format!(
        "name: tick\nkind: http\nurl: {}\ntriggers: [{{ cron: \"* * * * * *\" }}, {{ api: true }}]\n",
        target.url()
    ));
    let paused = server.ok(&["worker", "pause", "tick"]);
    assert_eq!(
        paused,
        "worker tick paused: its tasks wait until `mechanics worker resume tick`\n"
    );
    let ran_before_pause = seen.lock().unwrap().len();
    let cron_tasks_before = tasks_of(&server, "tick").len();

    let submitted = server.json(&["task", "submit", "tick", "--payload", "{\"n\":1}"]);
    let held = submitted["id"].as_i64().unwrap();

    // Two fire times pass while paused: each is in /logs as skipped, and makes no task.
    eventually(
        &server,
        "two skipped cron fires",
        Duration::from_secs(10),
        || cron_entries(&server, "tick", "skip").len() >= 2,
    );
    for entry in cron_entries(&server, "tick", "skip") {
        assert_eq!(entry["detail"]["reason"], "the worker is paused", "{entry}");
        assert!(entry["detail"]["fire_time"].as_i64().unwrap() % 1000 == 0);
    }
    let tasks = tasks_of(&server, "tick");
    assert_eq!(
        tasks.len(),
        cron_tasks_before + 1,
        "only the submitted task was created while paused: {tasks:?}"
    );
    let task = server.json(&["task", "show", &held.to_string()]);
    assert_eq!(task["state"], "pending", "{task}");
    assert_eq!(task["attempt"], 0, "never dispatched: {task}");
    assert_eq!(seen.lock().unwrap().len(), ran_before_pause, "nothing ran");

    // `worker show` says so, with the next three fire times (whole seconds, in order).
    let show = server.ok(&["worker", "show", "tick"]);
    assert!(
        show.contains("paused:    yes (tasks wait; cron fires are skipped)\n"),
        "{show}"
    );
    let view = server.json(&["worker", "show", "tick"]);
    assert_eq!(view["paused"], true, "{view}");
    let fires: Vec<&str> = view["next_cron_fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(fires.len(), 3, "{view}");
    let parsed: Vec<chrono::DateTime<chrono::Utc>> = fires
        .iter()
        .map(|t| t.parse().unwrap_or_else(|err| panic!("{t}: {err}")))
        .collect();
    assert!(
        parsed.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 1),
        "{fires:?}"
    );
    assert!(
        show.contains(&format!(
            "next cron: {} (skipped while paused)\n",
            fires.join(", ")
        )),
        "{show}"
    );

    // Removing it is refused while its task waits, and changes nothing.
    let refused = server.cli(&["worker", "rm", "tick"]);
    assert_eq!(code(&refused), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("has 1 unfinished task(s)")
            && stderr(&refused).contains("mechanics worker rm --force"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(server.json(&["worker", "show", "tick"])["paused"], true);

    // Resumed: the waiting task runs, and the schedule fires again.
    assert_eq!(
        server.ok(&["worker", "resume", "tick"]),
        "worker tick resumed\n"
    );
    let done = server.wait_end(held, Duration::from_secs(20));
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["attempt"], 1, "{done}");
    eventually(
        &server,
        "a cron fire after the resume",
        Duration::from_secs(10),
        || {
            !cron_entries(&server, "tick", "ok").is_empty()
                && seen.lock().unwrap().iter().any(|(id, _)| *id != held)
        },
    );
    assert!(
        server
            .ok(&["worker", "show", "tick"])
            .contains("paused:    no\n")
    );
    let actions: Vec<String> = server.json(&["logs", "--worker", "tick"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        actions.contains(&"pause".to_owned()) && actions.contains(&"resume".to_owned()),
        "{actions:?}"
    );
}

#[test]
fn worker_rm_with_waiting_tasks_is_refused_and_force_cancels_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let seen: Seen = Arc::default();
    let target = HttpServer::start(http_worker(
        seen.clone(),
        Duration::ZERO,
        Arc::new(Mutex::new(200)),
    ));
    server.add_worker(&format!(
        "name: queue\nkind: http\nurl: {}\ntriggers: [{{ api: true }}]\n",
        target.url()
    ));
    // A finished task does not hold the worker back.
    let first = server.json(&["task", "submit", "queue", "--wait"]);
    assert_eq!(first["state"], "completed", "{first}");
    server.ok(&["worker", "pause", "queue"]);
    let waiting: Vec<i64> = (0..2)
        .map(|_| {
            server.json(&["task", "submit", "queue"])["id"]
                .as_i64()
                .unwrap()
        })
        .collect();

    let refused = server.cli(&["worker", "rm", "queue", "--json"]);
    assert_eq!(code(&refused), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("has 2 unfinished task(s)"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        server.json(&["worker", "show", "queue"])["spec"]["name"],
        "queue"
    );

    assert_eq!(
        server.ok(&["worker", "rm", "queue", "--force"]),
        "worker queue removed\n"
    );
    for id in &waiting {
        let task = server.json(&["task", "show", &id.to_string()]);
        assert_eq!(task["state"], "canceled", "{task}");
    }
    let first = server.json(&["task", "show", &first["id"].to_string()]);
    assert_eq!(first["state"], "completed", "history stays: {first}");
    let gone = server.cli(&["worker", "show", "queue"]);
    assert_eq!(code(&gone), Some(1), "{}", stderr(&gone));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the canceled tasks never ran"
    );
    let cancels = server.json(&["logs", "--worker", "queue", "--action", "cancel"]);
    assert_eq!(cancels["entries"].as_array().unwrap().len(), 2, "{cancels}");
}

#[test]
fn task_show_lists_each_attempt_that_ran_and_not_rate_limit_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);

    // Refused connections: two attempts (max_retries 1), both transport errors, then dead.
    let port = crate::support::closed_port();
    server.add_worker(&format!(
        "name: away\nkind: http\nurl: http://127.0.0.1:{port}\ntriggers: [{{ api: true }}]\n\
         retry: {{ max_retries: 1, base_delay: 100ms, max_delay: 200ms }}\n"
    ));
    let out = server.cli(&["task", "submit", "away", "--wait", "--json"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"].to_string();
    let shown = server.json(&["task", "show", &id]);
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{shown}");
    for (attempt, claim) in attempts.iter().zip([1, 2]) {
        assert_eq!(attempt["claim"], claim, "{attempt}");
        assert_eq!(attempt["outcome"], "transport_error", "{attempt}");
        assert_eq!(attempt["node"], format!("http://127.0.0.1:{port}"));
        assert_eq!(attempt["worker_revision"], 1);
        // The API writes attempt times as RFC 3339 in UTC, to the millisecond.
        let time = |field: &str| {
            let text = attempt[field]
                .as_str()
                .unwrap_or_else(|| panic!("{attempt}"));
            assert!(
                text.len() == 24 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
                "{field}: {text}"
            );
            chrono::DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|err| panic!("{field}: {text}: {err}"))
                .timestamp_millis()
        };
        let (start, end) = (time("started_at"), time("ended_at"));
        assert!(start <= end && start >= shown["created_at"].as_i64().unwrap());
        assert!(
            attempt["error"].as_str().unwrap().contains("refused"),
            "{attempt}"
        );
    }
    let text = server.ok(&["task", "show", &id]);
    assert!(
        text.contains("attempts:  2 (2 counted toward retries)\n"),
        "{text}"
    );
    assert!(
        text.contains("worker:    away (ran revision 1)\n"),
        "{text}"
    );
    assert!(
        text.contains("  #  STARTED                   DURATION  NODE"),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  1  ") || l.starts_with("  2  "))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        // The start as a time (RFC 3339, UTC), never unix milliseconds.
        let started = row.split_whitespace().nth(1).unwrap();
        assert!(
            started.parse::<chrono::DateTime<chrono::Utc>>().is_ok() && started.ends_with('Z'),
            "{row}"
        );
        assert!(row.contains("transport_error"), "{row}");
    }
    let created = text
        .lines()
        .find_map(|l| l.strip_prefix("created:   "))
        .unwrap();
    assert!(
        created
            .split(' ')
            .next()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .is_ok(),
        "{created}"
    );

    // One token a minute: of two tasks submitted together, the second is re-queued to the next
    // token, which is no attempt. It is still pending (claimed once, ran never): no attempts.
    let seen: Seen = Arc::default();
    let target = HttpServer::start(http_worker(
        seen.clone(),
        Duration::ZERO,
        Arc::new(Mutex::new(200)),
    ));
    server.add_worker(&format!(
        "name: slow\nkind: http\nurl: {}\ntriggers: [{{ api: true }}]\n\
         rate_limit: {{ per_second: 0.0167, burst: 1 }}\n",
        target.url()
    ));
    let first = server.json(&["task", "submit", "slow", "--wait"]);
    assert_eq!(first["state"], "completed", "{first}");
    let second = server.json(&["task", "submit", "slow"])["id"].to_string();
    eventually(
        &server,
        "a rate-limit re-queue",
        Duration::from_secs(10),
        || {
            let entries = server.json(&["logs", "--task", &second, "--action", "rate_limit"]);
            !entries["entries"].as_array().unwrap().is_empty()
        },
    );
    let waiting = server.json(&["task", "show", &second]);
    assert_eq!(waiting["state"], "pending", "{waiting}");
    assert!(
        waiting["attempt"].as_u64().unwrap() >= 1,
        "claimed: {waiting}"
    );
    assert_eq!(waiting["attempts"], serde_json::json!([]), "{waiting}");
    let text = server.ok(&["task", "show", &second]);
    assert!(
        text.contains("attempts:  0 (0 counted toward retries)\n"),
        "{text}"
    );
    let done = server.json(&["task", "show", &first["id"].to_string()]);
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1, "{done}");
    assert_eq!(done["attempts"][0]["outcome"], "completed");
    assert_eq!(done["attempts"][0]["node"], target.url());
}

#[test]
fn a_rate_limit_requeue_is_not_an_attempt_in_watch_list_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let seen: Seen = Arc::default();
    let target = HttpServer::start(http_worker(
        seen.clone(),
        Duration::ZERO,
        Arc::new(Mutex::new(200)),
    ));
    // One token every 2 s: of two tasks, the second waits for the next token, re-queued once.
    server.add_worker(&format!(
        "name: paced\nkind: http\nurl: {}\ntriggers: [{{ api: true }}]\n\
         rate_limit: {{ per_second: 0.5, burst: 1 }}\n",
        target.url()
    ));
    let first = server.json(&["task", "submit", "paced", "--wait"]);
    assert_eq!(first["state"], "completed", "{first}");
    let second = server.json(&["task", "submit", "paced"])["id"].to_string();
    let watched = server.ok(&["task", "watch", &second]);
    assert!(watched.contains("completed (attempt 1)"), "{watched}");
    assert!(!watched.contains("(attempt 2)"), "{watched}");

    let requeues = server.json(&["logs", "--task", &second, "--action", "rate_limit"]);
    let requeues = requeues["entries"].as_array().unwrap();
    assert!(!requeues.is_empty(), "the second task was never re-queued");
    // The API gives the token's time in unix ms; the text view as a time.
    let until = requeues[0]["detail"]["until"].as_i64().unwrap();
    let text = server.ok(&["logs", "--task", &second, "--action", "rate_limit"]);
    let time = mechanics_proto::domain::time::rfc3339(until).unwrap();
    assert!(
        text.contains(&format!("{{\"until\":\"{time}\"}}")),
        "{text}"
    );
    assert!(!text.contains(&until.to_string()), "{text}");
    let task = server.json(&["task", "show", &second]);
    assert!(
        task["attempt"].as_u64().unwrap() >= 2,
        "claimed twice: {task}"
    );
    assert_eq!(task["runs"], 1, "{task}");
    assert_eq!(task["attempts"].as_array().unwrap().len(), 1, "{task}");
    let shown = server.ok(&["task", "show", &second]);
    assert!(
        shown.contains("attempts:  1 (1 counted toward retries)"),
        "{shown}"
    );

    // `task list`: the ATTEMPT column (the fifth) says 1 for both.
    let list = server.ok(&["task", "list", "--worker", "paced"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{list}");
    for row in rows {
        assert_eq!(row.split_whitespace().nth(4), Some("1"), "{list}");
    }
    // `logs`: every entry of the second task that names an attempt names the first, the
    // rate-limit wait included; in text the ATTEMPT column after the worker says so.
    let entries = server.json(&["logs", "--task", &second]);
    let attempts: Vec<&Value> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["attempt"])
        .filter(|a| !a.is_null())
        .collect();
    assert!(!attempts.is_empty(), "{entries}");
    assert!(attempts.iter().all(|a| **a == 1), "{entries}");
    let text = server.ok(&["logs", "--task", &second]);
    let column = text.lines().next().unwrap().find("ATTEMPT").unwrap();
    let shown: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|row| row.get(column..)?.split_whitespace().next())
        .collect();
    assert!(shown.contains(&"1"), "{text}");
    assert!(
        !shown.iter().any(|a| a.parse::<u32>().is_ok_and(|n| n != 1)),
        "{text}"
    );
}

#[test]
fn task_list_and_show_name_the_trigger_recorded_with_each_task() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let seen: Seen = Arc::default();
    let target = HttpServer::start(http_worker(
        seen.clone(),
        Duration::ZERO,
        Arc::new(Mutex::new(200)),
    ));
    server.add_worker(&format!(
        "name: tick\nkind: http\nurl: {}\ntriggers: [{{ cron: \"* * * * * *\" }}, {{ api: true }}]\n",
        target.url()
    ));
    eventually(&server, "a cron fire", Duration::from_secs(10), || {
        !tasks_of(&server, "tick").is_empty()
    });
    server.ok(&["worker", "pause", "tick"]);
    // A submission whose payload looks like a cron fire's is still the API's.
    let payload = r#"{"cron":{"schedule":"* * * * * *","tz":"UTC"}}"#;
    let submitted = server.json(&["task", "submit", "tick", "--payload", payload]);
    let id = submitted["id"].as_i64().unwrap();
    let tasks = tasks_of(&server, "tick");
    for task in &tasks {
        let trigger = if task["id"] == id { "api" } else { "cron" };
        assert_eq!(task["trigger"], trigger, "{task}");
    }
    let list = server.ok(&["task", "list", "--worker", "tick"]);
    for row in list.lines().skip(1) {
        let columns: Vec<&str> = row.split_whitespace().collect();
        let trigger = if columns[0] == id.to_string() {
            "api"
        } else {
            "cron"
        };
        assert_eq!(columns[2], trigger, "{list}");
    }
    let shown = server.ok(&["task", "show", &id.to_string()]);
    assert!(shown.contains("trigger:   api\n"), "{shown}");
    let cron = tasks.iter().find(|t| t["id"] != id).unwrap()["id"].to_string();
    let shown = server.ok(&["task", "show", &cron]);
    assert!(shown.contains("trigger:   cron\n"), "{shown}");
}

/// The JSON object a client command with `--json` printed on stderr for its failure.
fn json_error(out: &std::process::Output) -> Value {
    let text = stderr(out);
    let value: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|err| panic!("stderr is not one JSON object ({err}): {text}"));
    assert_eq!(
        value["error"]["exit"].as_i64(),
        code(out).map(i64::from),
        "{value}"
    );
    value
}

#[test]
fn with_json_every_kind_of_client_error_is_json_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);

    // Refused by the server: exit 1.
    let out = server.cli(&["worker", "show", "nobody", "--json"]);
    assert_eq!(code(&out), Some(1));
    let error = json_error(&out);
    assert_eq!(error["error"]["code"], "failed", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody"),
        "{error}"
    );
    assert!(out.stdout.is_empty());
    for args in [
        &["task", "show", "999", "--json"][..],
        &["event", "show", "999", "--json"],
        &["worker", "pause", "nobody", "--json"],
        &["node", "reset", "nobody", "--json"],
        &["source", "show", "nobody", "--json"],
        &["key", "revoke", "nobody", "--json"],
    ] {
        let out = server.cli(args);
        assert_eq!(code(&out), Some(1), "{args:?}: {}", stderr(&out));
        assert_eq!(json_error(&out)["error"]["code"], "failed", "{args:?}");
    }

    // Bad input, refused before any request: exit 2.
    let out = server.cli(&["task", "list", "--limit", "0", "--json"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let error = json_error(&out);
    assert_eq!(error["error"]["code"], "usage", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{error}"
    );
    // `--limit 0` is refused by every listing, with the same exit and message.
    for listing in [&["logs"][..], &["event", "list"], &["task", "list"]] {
        let mut args = listing.to_vec();
        args.extend(["--limit", "0", "--json"]);
        let out = server.cli(&args);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        let error = json_error(&out);
        assert_eq!(error["error"]["code"], "usage", "{args:?}");
        assert_eq!(
            error["error"]["message"],
            "--limit: must be 1 to 1000; follow the printed --cursor for more",
            "{args:?}"
        );
    }

    // Arguments clap refuses (a bad value, an unknown flag): the same shape, exit 2.
    let out = server.cli(&["task", "show", "abc", "--json"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let error = json_error(&out);
    assert_eq!(error["error"]["code"], "usage", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'abc'") && message.contains("<ID>"),
        "{error}"
    );
    let out = server.cli(&["worker", "list", "--json", "--colour"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        json_error(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--colour")
    );
    // A missing subcommand too.
    let out = server.cli(&["task", "--json"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let message = json_error(&out)["error"]["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("'mechanics task' requires a subcommand")),
        "{message}"
    );
    // Without --json clap's own text; --help stays help.
    let out = server.cli(&["task", "show", "abc"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).starts_with("error: invalid value 'abc'"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["task", "show", "--help", "--json"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));

    // No server: exit 3.
    let port = crate::support::closed_port();
    let out = crate::support::command(&server.home)
        .args(["worker", "list", "--json", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert_eq!(json_error(&out)["error"]["code"], "no_server");

    // Without --json, the same failure is one line for people.
    let out = server.cli(&["worker", "show", "nobody"]);
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

#[test]
fn node_reset_of_a_closed_breaker_says_there_was_nothing_to_re_arm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let nodes = server.json(&["node", "list"]);
    let node = &nodes["nodes"][0];
    assert_eq!(node["breaker"], "closed", "{nodes}");
    let name = node["name"].as_str().unwrap();
    let said = server.ok(&["node", "reset", name]);
    assert!(
        said.starts_with(&format!(
            "the crash-loop breaker of {name} was closed already: nothing to re-arm\n"
        )),
        "{said}"
    );
}

#[test]
fn serve_help_shows_the_log_format_config_show_reports_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let help = crate::support::command(dir.path())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert_eq!(code(&help), Some(0));
    let help = String::from_utf8(help.stdout).unwrap();
    let shown = crate::support::command(dir.path())
        .args(["config", "show"])
        .output()
        .unwrap();
    assert_eq!(code(&shown), Some(0), "{}", stderr(&shown));
    let shown = String::from_utf8(shown.stdout).unwrap();
    let default = shown
        .lines()
        .find_map(|line| line.strip_prefix("log_format: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no log_format in config show: {shown}"));
    assert!(
        help.contains(&format!("[default: {default}; MECHANICS_LOG_FORMAT]")),
        "serve --help does not say the default is {default}:\n{help}"
    );
}

#[test]
fn config_show_json_is_one_object_with_each_value_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::command(dir.path())
        .args(["config", "show", "--json", "--concurrency", "8"])
        .env("MECHANICS_API_KEY", "a-secret-key-value")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let shown: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"));
    assert_eq!(shown["concurrency"]["value"], "8", "{shown}");
    assert_eq!(shown["concurrency"]["source"], "--concurrency", "{shown}");
    assert_eq!(shown["api_key"]["value"], "<redacted>", "{shown}");
    assert!(!text.contains("a-secret-key-value"), "{text}");
    assert_eq!(shown["log_format"]["value"], "compact", "{shown}");

    let out = crate::support::command(dir.path())
        .args(["config", "show", "--json"])
        .env("MECHANICS_DRAIN_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let error = json_error(&out);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MECHANICS_DRAIN_TIMEOUT"),
        "{error}"
    );
}

#[test]
fn an_unknown_log_action_or_outcome_is_refused_by_the_cli_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    for args in [
        &["logs", "--action", "dispatched"][..],
        &["logs", "--outcome", "sideways"],
    ] {
        let out = server.cli(args);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        let said = stderr(&out);
        assert!(
            said.contains(args[2]) && said.contains("one of: "),
            "{said}"
        );
    }
    // A known action is a filter, even with nothing to show.
    let page = server.json(&["logs", "--action", "dead_letter"]);
    assert_eq!(page["entries"], serde_json::json!([]), "{page}");

    let client = crate::support::TestClient::new(Duration::from_secs(10));
    let (status, body) = client.get(&format!("{}/logs?action=dispatched", server.url));
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"dispatched\"") && message.contains("dispatch"),
        "{message}"
    );
    let (status, _) = client.get(&format!("{}/logs?action=dispatch", server.url));
    assert_eq!(status, 200);
}

#[test]
fn local_node_log_lines_are_relayed_once_with_their_level_target_and_fields_in_every_format() {
    for format in ["json", "compact", "pretty"] {
        let dir = tempfile::tempdir().unwrap();
        // The node's debug events too: a relayed line keeps the child's level, not ours.
        let server = Coordinator::start(
            dir.path(),
            &["--log-format", format],
            &[("RUST_LOG", "info,mechanics_node=debug")],
        );
        std::fs::write(
            dir.path().join("fail.js"),
            "export default () => { throw new Error('boom') }",
        )
        .unwrap();
        server.add_worker(&format!(
            "name: fail\nkind: js\nmodule: {}\ntriggers: [{{ api: true }}]\n",
            dir.path().join("fail.js").display()
        ));
        let out = server.cli(&["task", "submit", "fail", "--wait"]);
        assert_ne!(code(&out), Some(0), "{}", stderr(&out));
        eventually(
            &server,
            "the node's job failed line",
            Duration::from_secs(10),
            || server.stderr().contains("job failed"),
        );

        let log = server.stderr();
        let lines_with =
            |text: &str| -> Vec<&str> { log.lines().filter(|line| line.contains(text)).collect() };
        for (message, level) in [("node serving", "INFO"), ("job failed", "DEBUG")] {
            let lines = lines_with(message);
            assert_eq!(lines.len(), 1, "{format}: relayed once: {lines:#?}");
            let line = lines[0];
            assert!(
                !line.contains("mechanics_runtime::child"),
                "{format}: not wrapped in a line of ours: {line}"
            );
            if format == "json" {
                let event: Value = serde_json::from_str(line).unwrap();
                assert_eq!(event["level"], level, "{line}");
                assert_eq!(event["target"], "mechanics_node::service", "{line}");
                assert_eq!(event["fields"]["message"], message, "{line}");
                assert_eq!(event["fields"]["node"], "node-1", "{line}");
            } else {
                let words: Vec<&str> = line.split_whitespace().collect();
                // `<timestamp> <LEVEL> <target>: <message>`.
                assert_eq!(words[1], level, "{format}: {line}");
                assert_eq!(words[2], "mechanics_node::service:", "{format}: {line}");
            }
        }
        // Every relayed line: one timestamp, one level, the node once as `node` (not also as a
        // span of ours or the child's own `name`), and no Rust debug forms such as `Some(..)`.
        let relayed = lines_with("mechanics_node::service");
        assert!(relayed.len() >= 2, "{format}: {relayed:#?}");
        for line in relayed {
            assert!(!line.contains("Some("), "{format}: {line}");
            assert_eq!(line.matches("node-1").count(), 1, "{format}: {line}");
            if format == "json" {
                let event: Value = serde_json::from_str(line).unwrap();
                assert_eq!(event["fields"]["node"], "node-1", "{line}");
                assert_eq!(line.matches("\"timestamp\"").count(), 1, "{line}");
                assert_eq!(line.matches("\"level\"").count(), 1, "{line}");
            } else {
                let node_field = if format == "pretty" {
                    "node: node-1"
                } else {
                    "node=node-1"
                };
                assert!(line.contains(node_field), "{format}: {line}");
                let words: Vec<&str> = line.split_whitespace().collect();
                let timestamps = words
                    .iter()
                    .filter(|w| w.len() > 20 && w.as_bytes()[4] == b'-' && w.contains('T'))
                    .count();
                assert_eq!(timestamps, 1, "{format}: {line}");
                let levels = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
                let count = words.iter().filter(|w| levels.contains(w)).count();
                assert_eq!(count, 1, "{format}: {line}");
            }
        }
        // The job's own fields come along.
        let failed = lines_with("job failed")[0];
        assert!(failed.contains("execution"), "{format}: {failed}");
    }
}

/// Client commands take the server and the key from their flags, else their variables, else
/// `~/.mechanics/config.yml` (`server:` or `addr:`, `api_key:` or `api_key_file:`); a broken
/// file is reported naming it, and only read when flags and variables leave something unset.
#[test]
fn client_commands_read_the_server_and_key_from_config_yml_after_flags_and_variables() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &["--api-key", "config-key-1"], &[]);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".mechanics")).unwrap();
    let config = home.path().join(".mechanics/config.yml");
    let key_file = home.path().join("api-key");
    std::fs::write(&key_file, "config-key-1\n").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        crate::support::command(home.path())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };

    // The server's own settings: its address and its key file.
    std::fs::write(
        &config,
        format!(
            "addr: {}\napi_key_file: {}\n",
            server.addr(),
            key_file.display()
        ),
    )
    .unwrap();
    let out = run(&["worker", "list"], &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no workers yet"));

    // `server:` names the URL when it is not this machine's `addr`.
    let closed = crate::support::closed_port();
    std::fs::write(
        &config,
        format!(
            "server: {}\naddr: 127.0.0.1:{closed}\napi_key: config-key-1\n",
            server.url
        ),
    )
    .unwrap();
    let out = run(&["worker", "list", "--json"], &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // Flags and variables come first.
    let elsewhere = format!("http://127.0.0.1:{closed}");
    let out = run(&["worker", "list", "--server", &elsewhere], &[]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let out = run(&["worker", "list"], &[("MECHANICS_SERVER", &elsewhere)]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let out = run(&["worker", "list"], &[("MECHANICS_API_KEY", "not-the-key")]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not accepted"), "{}", stderr(&out));

    // A broken file names itself and the key, exit 2; with flags for both it is not read.
    std::fs::write(&config, "server: [unclosed\n").unwrap();
    let out = run(&["worker", "list"], &[]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&config.display().to_string()),
        "{}",
        stderr(&out)
    );
    let out = run(
        &[
            "worker",
            "list",
            "--server",
            &server.url,
            "--api-key",
            "config-key-1",
        ],
        &[],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    std::fs::write(&config, "addr: \"not an address\"\n").unwrap();
    let out = run(&["worker", "list", "--api-key", "config-key-1"], &[]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: {}: addr: \"not an address\" is not an address: write HOST:PORT, e.g. \
             127.0.0.1:21212",
            config.display()
        )
    );
}

/// `logs --follow` says on stderr when the server goes away, keeps asking, and once a server
/// answers on the same address again prints what comes next; every row lines up under the one
/// header, before and after.
#[test]
fn logs_follow_goes_on_across_a_server_restart_with_its_columns_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Coordinator::start(dir.path(), &[], &[]);
    let hello = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/hello-worker/worker.yml"
    );
    server.ok(&["worker", "add", "-f", hello]);
    let submit = |server: &Coordinator| {
        let task = server.json(&["task", "submit", "hello", "--wait"]);
        task["id"].as_i64().expect("an id")
    };
    let before = submit(&server);
    let addr = server.addr();
    let mut follow = crate::support::command(&server.home)
        .args(["logs", "--follow", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |pipe: Box<dyn std::io::Read + Send>| {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        lines
    };
    let stdout = collect(Box::new(follow.stdout.take().unwrap()));
    let stderr_lines = collect(Box::new(follow.stderr.take().unwrap()));
    // A row of task `id` (its TASK column) with the `dispatch` action: the attempt's end.
    let has_run = |id: i64| {
        stdout
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(" dispatch ") && line.contains(&format!("  {id}  ")))
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}; stdout:\n{}\nstderr:\n{}",
                stdout.lock().unwrap().join("\n"),
                stderr_lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the first task's run is printed", &|| has_run(before));

    server.terminate(Duration::from_secs(30));
    wait_for("the lost server is reported", &|| {
        stderr_lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("trying again every second"))
    });
    let server = Coordinator::start(dir.path(), &["--addr", &addr.to_string()], &[]);
    let after = submit(&server);
    wait_for("the task run after the restart is printed", &|| {
        has_run(after)
    });
    let _ = follow.kill();
    let _ = follow.wait();

    let errors = stderr_lines.lock().unwrap().join("\n");
    assert!(
        errors.contains(&format!("the server at {} answers again", server.url)),
        "{errors}"
    );
    let lines = stdout.lock().unwrap().clone();
    let header = &lines[0];
    assert!(header.starts_with("ID "), "{header}");
    assert_eq!(
        lines.iter().filter(|line| line.starts_with("ID ")).count(),
        1,
        "one header:\n{}",
        lines.join("\n")
    );
    let column = |name: &str| header.find(name).unwrap_or_else(|| panic!("{name}"));
    let (action, outcome, task) = (column("ACTION"), column("OUTCOME"), column("TASK"));
    let actions = [
        "submit", "dispatch", "console", "retry", "recover", "cancel",
    ];
    for line in &lines[1..] {
        let at = |start: usize| line.get(start..).unwrap_or_default();
        assert!(
            actions.iter().any(|a| at(action).starts_with(a)),
            "ACTION column out of line:\n{header}\n{line}"
        );
        assert!(
            ["ok", "fail", "skip", "retry", "deny"]
                .iter()
                .any(|o| at(outcome).starts_with(o)),
            "OUTCOME column out of line:\n{header}\n{line}"
        );
        assert!(
            at(task).starts_with(|c: char| c.is_ascii_digit()),
            "TASK column out of line:\n{header}\n{line}"
        );
        assert_eq!(&line[action - 2..action], "  ", "{line}");
    }
}
