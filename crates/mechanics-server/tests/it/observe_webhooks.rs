//! Observability of webhooks, matching and write-back: the issue's scripted run (a webhook
//! accepted, one refused for its signature, one deduplicated, one rate limited, a task retry, a
//! write-back retry and a write-back dead letter) counted exactly in a valid exposition, the
//! `/logs` chain of each event in order, the refusals in the trace without secrets (and bounded
//! under a flood), and a source secret and write-back token echoed back never surfacing.

use std::sync::{Arc, Mutex};

use mechanics_proto::domain::{EventState, TaskState};
use mechanics_server::config::RateLimit;
use mechanics_store::Store;
use serde_json::{Value, json};

use crate::observe::{capture_logs, captured, parse_exposition, step, steps, text};
use crate::support::{TestServer, http_worker, reply};
use crate::webhooks::{
    SECRET, TOKEN, deliver, fake_platform, github_headers, issue_opened, status, wait_event,
};

/// Registers GitHub source `name` with `secret` and `token` in files of the server's directory,
/// answered by the fake platform at `api`.
async fn add_github_source(server: &TestServer, name: &str, secret: &str, token: &str, api: &str) {
    let secret_file = server.dir.path().join(format!("{name}.secret"));
    std::fs::write(&secret_file, secret).unwrap();
    let token_file = server.dir.path().join(format!("{name}.token"));
    std::fs::write(&token_file, token).unwrap();
    let spec = json!({
        "name": name, "kind": "github", "api_base_url": api,
        "secret_file": secret_file, "token_file": token_file,
    });
    let (code, body) = server.call("POST", "/api/v1/sources", Some(spec)).await;
    assert_eq!(code, 201, "{body}");
}

/// Adds http worker `name` at `url`, subscribed to `source`'s `issues.*`, with write-back.
async fn subscribe(server: &TestServer, name: &str, source: &str, url: &str) {
    server
        .add_http_worker(
            name,
            url,
            json!({
                "triggers": [{ "webhook": { "source": source, "events": ["issues.*"] } }],
                "write_back": true,
            }),
        )
        .await;
}

/// A delivery and the status it gets: source, headers, body, status.
type Delivery = (&'static str, Vec<(&'static str, String)>, Vec<u8>, u16);

/// The `/logs` entries of `query`, oldest first.
async fn entries(server: &TestServer, query: &str) -> Vec<Value> {
    let (code, body) = server.call("GET", &format!("/logs?{query}"), None).await;
    assert_eq!(code, 200, "{body}");
    let mut entries = body["entries"].as_array().unwrap().clone();
    entries.reverse();
    entries
}

/// The ids of the events the scripted run stored.
struct Run {
    /// Accepted, its task retried once, its write-back retried once, then completed.
    accepted: i64,
    /// Accepted; its write-back always fails transiently and is dead-lettered.
    dead: i64,
}

/// Per-source webhook bucket of the scripted run: 2 deliveries, then one token per 1000 s.
fn two_per_source(config: &mut mechanics_server::ServerConfig) {
    config.webhook_rate_limit = RateLimit {
        per_second: 0.001,
        burst: 2,
    };
}

async fn scripted_run(server: &TestServer) -> Run {
    // GitHub: 503 (retry now), then the comment is created.
    let (api, comments) = fake_platform(|i| match i {
        0 => status(503, &[("retry-after", "0")]),
        _ => status(201, &[]),
    })
    .await;
    // Another GitHub that never takes a comment.
    let (down_api, down_seen) = fake_platform(|_| status(502, &[("retry-after", "0")])).await;
    add_github_source(server, "gh", SECRET, TOKEN, &api).await;
    add_github_source(server, "down", SECRET, TOKEN, &down_api).await;
    // The triage worker is busy once (429, retry now), then replies.
    let (triage, _) = http_worker(|_, i| {
        if i == 0 {
            let mut busy = reply(429, json!({}));
            busy.headers_mut()
                .insert("retry-after", "0".parse().unwrap());
            busy
        } else {
            reply(200, json!({ "reply": "Thanks, triaged" }))
        }
    })
    .await;
    let (lost, _) = http_worker(|_, _| reply(200, json!({ "reply": "never posted" }))).await;
    subscribe(server, "triage", "gh", &triage).await;
    subscribe(server, "lost", "down", &lost).await;

    let body = issue_opened("acme/app", 1);
    let signed = github_headers(SECRET, "d1", "issues", &body);
    let forged = github_headers("not-the-secret", "d0", "issues", &body);
    let (code, _, _) = deliver(server, "gh", &forged, &body).await;
    assert_eq!(code, 401, "forged signature");
    let (code, first, _) = deliver(server, "gh", &signed, &body).await;
    assert_eq!(code, 202, "{first}");
    let (code, again, _) = deliver(server, "gh", &signed, &body).await;
    assert_eq!((code, &again["duplicate"]), (200, &json!(true)), "{again}");
    // The bucket of `gh` (2) is empty: a refused signature took no token, the redelivery did.
    let other = issue_opened("acme/app", 2);
    let (code, _, headers) = deliver(
        server,
        "gh",
        &github_headers(SECRET, "d2", "issues", &other),
        &other,
    )
    .await;
    assert_eq!(code, 429);
    assert!(headers.contains_key("retry-after"));
    let (code, dead, _) = deliver(
        server,
        "down",
        &github_headers(SECRET, "d3", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 202, "{dead}");
    let run = Run {
        accepted: first["event_id"].as_i64().unwrap(),
        dead: dead["event_id"].as_i64().unwrap(),
    };
    let done = wait_event(server, run.accepted, EventState::Completed).await;
    assert_eq!(done.write_back_attempts, 1);
    let failed = wait_event(server, run.dead, EventState::Failed).await;
    assert!(
        failed.error.as_deref().unwrap().contains("gave up after 6"),
        "{failed:?}"
    );
    assert_eq!(comments.lock().unwrap().len(), 2, "a 503, then the comment");
    assert_eq!(down_seen.lock().unwrap().len(), 6, "a try and 5 retries");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_webhook_run_is_counted_exactly_and_traced_in_order() {
    let server =
        TestServer::start_configured(None, tempfile::tempdir().unwrap(), two_per_source).await;
    let run = scripted_run(&server).await;

    let (code, body, _) = text(&server, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    let (_, sums) = parse_exposition(&body);
    for (name, value) in [
        ("mechanics_webhooks_received_total", 2.0),
        ("mechanics_webhooks_rate_limited_total", 1.0),
        ("mechanics_events_dedup_skipped_total", 1.0),
        ("mechanics_tasks_created_total", 2.0),
        ("mechanics_tasks_completed_total", 2.0),
        ("mechanics_tasks_retried_total", 1.0),
        ("mechanics_tasks_failed_total", 0.0),
        ("mechanics_tasks_dead_total", 0.0),
        ("mechanics_tasks_dedup_skipped_total", 0.0),
        ("mechanics_cron_ticks_dropped_total", 0.0),
        ("mechanics_writeback_ok_total", 0.0),
        ("mechanics_writeback_retry_ok_total", 1.0),
        // One for the accepted event, six for the dead letter.
        ("mechanics_writeback_fail_total", 7.0),
        ("mechanics_writeback_dead_letter_total", 1.0),
        // triage twice, lost once.
        ("mechanics_dispatch_latency_seconds_count", 3.0),
        ("mechanics_queue_depth", 0.0),
    ] {
        assert_eq!(
            sums.get(name).copied().unwrap_or(0.0),
            value,
            "{name} in\n{body}"
        );
    }

    // The accepted event's chain, from the delivery to the write-back. The redelivery joins
    // the chain whenever it came (it names the stored event).
    let trace = format!("trace=event-{}", run.accepted);
    let mut chain = steps(&server, &trace).await;
    let dedup = step("dedup", "skip", None);
    assert_eq!(
        chain.iter().filter(|s| **s == dedup).count(),
        1,
        "{chain:?}"
    );
    chain.retain(|s| *s != dedup);
    assert_eq!(
        chain,
        [
            step("webhook", "ok", None),
            step("match", "ok", None),
            step("policy", "ok", None),
            step("submit", "ok", None),
            step("dispatch", "retry", Some(1)),
            step("retry", "retry", Some(1)),
            step("dispatch", "ok", Some(2)),
            step("write_back", "retry", None),
            step("write_back", "ok", None),
        ]
    );
    let chain = entries(&server, &trace).await;
    let task = chain
        .iter()
        .find(|e| e["action"] == "submit")
        .unwrap()
        .clone();
    for entry in &chain {
        assert_eq!(entry["trace_id"], json!(format!("event-{}", run.accepted)));
        assert_eq!(entry["event_id"], json!(run.accepted), "{entry}");
    }
    let detail = |action: &str| {
        chain
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action}"))["detail"]
            .clone()
    };
    assert_eq!(
        detail("webhook"),
        json!({ "source": "gh", "event_type": "issues.opened", "delivery_id": "d1" })
    );
    assert_eq!(
        detail("match"),
        json!({ "event_type": "issues.opened", "workers": ["triage"], "actor": "octocat" })
    );
    assert_eq!(
        (&task["worker"], &task["detail"]),
        (&json!("triage"), &json!({ "trigger": "webhook" }))
    );
    assert_eq!(detail("dedup")["delivery_id"], json!("d1"));
    let retried = chain
        .iter()
        .find(|e| e["action"] == "write_back" && e["outcome"] == "retry")
        .unwrap();
    assert!(
        retried["error"]
            .as_str()
            .unwrap()
            .contains("GitHub answered 503"),
        "{retried}"
    );
    assert_eq!(retried["detail"]["tries"], json!(1));
    assert_eq!(chain.last().unwrap()["detail"], json!({ "tries": 2 }));
    // The task's own filter sees the task's part of the chain.
    assert_eq!(
        steps(&server, &format!("task={}", task["task_id"])).await,
        [
            step("submit", "ok", None),
            step("dispatch", "retry", Some(1)),
            step("retry", "retry", Some(1)),
            step("dispatch", "ok", Some(2)),
        ]
    );
    assert_eq!(
        steps(&server, &format!("event={}", run.accepted))
            .await
            .len(),
        10
    );

    // The dead letter: five retries, then given up.
    let mut expected = vec![
        step("webhook", "ok", None),
        step("match", "ok", None),
        step("policy", "ok", None),
        step("submit", "ok", None),
        step("dispatch", "ok", Some(1)),
    ];
    expected.extend(std::iter::repeat_n(step("write_back", "retry", None), 5));
    expected.push(step("write_back", "fail", None));
    expected.push(step("dead_letter", "fail", None));
    let dead_trace = format!("trace=event-{}", run.dead);
    assert_eq!(steps(&server, &dead_trace).await, expected);
    let dead = entries(&server, &dead_trace).await;
    let last = dead.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 6 tries"),
        "{last}"
    );
    assert_eq!(last["detail"], json!({ "tries": 6 }));

    // The refusals: no event, so each has its own trace id; the reason says why.
    let refused = entries(&server, "action=webhook&outcome=deny").await;
    let reasons: Vec<(&Value, &Value, &Value)> = refused
        .iter()
        .map(|e| {
            (
                &e["detail"]["source"],
                &e["detail"]["reason"],
                &e["detail"]["status"],
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (&json!("gh"), &json!("signature"), &json!(401)),
            (&json!("gh"), &json!("rate_limit"), &json!(429)),
        ]
    );
    for entry in &refused {
        let trace_id = entry["trace_id"].as_str().unwrap();
        assert!(trace_id.starts_with("trace-"), "{entry}");
        assert!(entry["event_id"].is_null() && entry["task_id"].is_null());
    }
    assert_ne!(refused[0]["trace_id"], refused[1]["trace_id"]);
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("x-hub-signature-256"),
        "{}",
        refused[0]
    );
    let (_, all, _) = text(&server, "/logs?limit=1000").await;
    assert!(!all.contains(SECRET), "{all}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_refused_delivery_is_traced_with_its_reason() {
    let server = TestServer::start().await;
    let (api, _) = fake_platform(|_| status(201, &[])).await;
    add_github_source(&server, "gh", SECRET, TOKEN, &api).await;
    let body = issue_opened("acme/app", 1);
    let stale_slack = {
        // A Slack source refuses a timestamp 10 minutes old before looking at the signature.
        let file = server.dir.path().join("sl.secret");
        std::fs::write(&file, SECRET).unwrap();
        let spec = json!({ "name": "sl", "kind": "slack", "secret_file": file });
        assert_eq!(
            server.call("POST", "/api/v1/sources", Some(spec)).await.0,
            201
        );
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 600;
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", "v0=00".to_owned()),
        ]
    };
    let mut unsigned = github_headers(SECRET, "u", "issues", &body);
    unsigned.remove(0);
    let big = vec![b' '; 5 * 1024 * 1024 + 1];
    let not_json = b"{not json".to_vec();
    let cases: Vec<Delivery> = vec![
        (
            "nope",
            github_headers(SECRET, "a", "issues", &body),
            body.clone(),
            404,
        ),
        ("gh", unsigned, body.clone(), 401),
        ("sl", stale_slack, b"{}".to_vec(), 401),
        ("gh", github_headers(SECRET, "b", "issues", &big), big, 413),
        (
            "gh",
            github_headers(SECRET, "c", "issues", &not_json),
            not_json,
            400,
        ),
    ];
    for (source, headers, body, expected) in &cases {
        assert_eq!(deliver(&server, source, headers, body).await.0, *expected);
    }
    let refused = entries(&server, "outcome=deny").await;
    let reasons: Vec<(&str, &str, u64)> = refused
        .iter()
        .map(|e| {
            assert_eq!(e["action"], "webhook", "{e}");
            (
                e["detail"]["source"].as_str().unwrap(),
                e["detail"]["reason"].as_str().unwrap(),
                e["detail"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("nope", "unknown_source", 404),
            ("gh", "signature", 401),
            ("sl", "stale_timestamp", 401),
            ("gh", "too_large", 413),
            ("gh", "malformed", 400),
        ]
    );
    assert_eq!(server.metrics().webhooks_rate_limited.get(), 0);
    // An accepted delivery no worker wants: matched to nobody, then nothing to write back.
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "lonely", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 202);
    let id = answer["event_id"].as_i64().unwrap();
    wait_event(&server, id, EventState::Skipped).await;
    let chain = entries(&server, &format!("trace=event-{id}")).await;
    let actions: Vec<(&str, &str)> = chain
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("webhook", "ok"), ("match", "skip")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_deliveries_writes_a_bounded_trace() {
    let server = TestServer::start().await;
    let (api, _) = fake_platform(|_| status(201, &[])).await;
    add_github_source(&server, "gh", SECRET, TOKEN, &api).await;
    let body = issue_opened("acme/app", 1);
    let unix_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    const FLOOD: usize = 60;
    let first_second = unix_second();
    for n in 0..FLOOD {
        let forged = github_headers("not-the-secret", &format!("f{n}"), "issues", &body);
        assert_eq!(deliver(&server, "gh", &forged, &body).await.0, 401);
        let headers = github_headers(SECRET, &format!("u{n}"), "issues", &body);
        let unknown = format!("nope-{n}");
        assert_eq!(deliver(&server, &unknown, &headers, &body).await.0, 404);
    }
    let seconds = unix_second() - first_second + 1;
    let budget = usize::try_from(seconds).unwrap() * 10;

    let refused = entries(&server, "outcome=deny&limit=1000").await;
    let recorded = |reason: &str| {
        refused
            .iter()
            .filter(|e| e["detail"]["reason"] == reason)
            .count()
    };
    let (forged, unknown) = (recorded("signature"), recorded("unknown_source"));
    // Each budget writes its first 10 each second, whatever the flood.
    assert!(
        (10..=budget.min(FLOOD)).contains(&forged),
        "{forged} of {FLOOD} in {seconds} s"
    );
    assert!(
        (10..=budget.min(FLOOD)).contains(&unknown),
        "{unknown} of {FLOOD} in {seconds} s"
    );
    assert_eq!(
        server.metrics().logs_refusals_unrecorded.get(),
        u64::try_from(2 * FLOOD - forged - unknown).unwrap(),
        "every refusal is either written or counted"
    );
    // A refusal written after some went unrecorded says how many.
    let said: u64 = refused
        .iter()
        .filter_map(|e| e["detail"]["unrecorded_before"].as_u64())
        .sum();
    assert!(said <= server.metrics().logs_refusals_unrecorded.get());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_secret_and_token_echoed_back_never_surface() {
    capture_logs();
    let secret = "src-secret-5up3r-0123456789";
    let token = "wb-token-70k3n-0123456789";
    // The platform refuses the comment and quotes what it got, token included.
    let quoted = format!("bad credentials: {token} / {secret}");
    let (api, seen) = fake_platform(move |_| {
        let mut answer = status(422, &[]);
        *answer.body_mut() = axum::body::Body::from(json!({ "message": quoted }).to_string());
        answer
    })
    .await;
    let server = TestServer::start().await;
    add_github_source(&server, "gh", secret, token, &api).await;
    // One worker fails quoting the delivery; another replies quoting it too, so a write-back
    // is tried and its result holds the secret. Both keep what they were sent.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (leaky, _) =
        http_worker(|body, _| reply(500, json!({ "got": body["event"]["payload"]["leak"] }))).await;
    let sent = got.clone();
    let (answer, _) = http_worker(move |body, _| {
        sent.lock().unwrap().push(body["event"]["payload"].clone());
        reply(
            200,
            json!({ "reply": "ok", "got": body["event"]["payload"]["leak"] }),
        )
    })
    .await;
    subscribe(&server, "leaky", "gh", &leaky).await;
    subscribe(&server, "answer", "gh", &answer).await;
    let body = serde_json::to_vec(&json!({
        "action": "opened",
        "issue": { "number": 5 },
        "repository": { "full_name": "acme/app" },
        "leak": format!("{secret} {token}"),
    }))
    .unwrap();
    let (code, accepted, _) = deliver(
        &server,
        "gh",
        &github_headers(secret, "leak-1", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["event_id"].as_i64().unwrap();
    let event = wait_event(&server, id, EventState::Failed).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "a 422 is not retried");
    let error = event.error.clone().unwrap();
    assert!(
        error.contains("422") && error.contains("[redacted]"),
        "{error}"
    );

    let (_, tasks) = server
        .call("GET", &format!("/api/v1/tasks?event={id}"), None)
        .await;
    let failed: Vec<&Value> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == json!(TaskState::Failed))
        .collect();
    assert_eq!(failed.len(), 1, "{tasks}");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("[redacted]"),
        "{tasks}"
    );
    let (_, logs, _) = text(&server, &format!("/logs?trace=event-{id}")).await;
    assert!(logs.contains("[redacted]"), "{logs}");
    let (_, vars, _) = text(&server, "/debug/vars").await;
    let (_, events, _) = text(&server, "/api/v1/events").await;
    let (_, shown_event, _) = text(&server, &format!("/api/v1/events/{id}")).await;
    let (_, all_tasks, _) = text(&server, "/api/v1/tasks").await;
    // The stored payload is the sender's own data, handed to workers unchanged; the API shows
    // it redacted, as it does the server's own words about the event.
    let stored = server.store.get_event(id).await.unwrap().unwrap();
    assert_eq!(stored.payload["leak"], json!(format!("{secret} {token}")));
    assert_eq!(got.lock().unwrap()[0]["leak"], stored.payload["leak"]);
    let shown: Value = serde_json::from_str(&shown_event).unwrap();
    assert_eq!(
        shown["payload"]["leak"],
        json!("[redacted] [redacted]"),
        "{shown}"
    );
    // The answering worker's result was stored without the webhook secret, which the server
    // knew from the delivery before the result came.
    let completed = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == json!(TaskState::Completed))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let result = server
        .store
        .get_task(completed)
        .await
        .unwrap()
        .unwrap()
        .result;
    let result = result.unwrap();
    assert!(
        !result.to_string().contains(secret),
        "stored result: {result}"
    );
    assert_eq!(result["reply"], json!("ok"));
    let output = captured();
    for (place, text) in [
        ("/logs", &logs),
        ("/debug/vars", &vars),
        ("GET /tasks?event=", &tasks.to_string()),
        ("GET /tasks", &all_tasks),
        ("GET /events", &events),
        ("GET /events/{id}", &shown_event),
        ("log output", &output),
    ] {
        for value in [secret, token] {
            assert!(!text.contains(value), "{value} leaked into {place}: {text}");
        }
    }
    server.stop().await;
}
