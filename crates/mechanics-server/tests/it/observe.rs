//! Observability: exact counters and a valid exposition from `/metrics`, the `/logs` trace of
//! each task in order with its filters and paging, redaction of secrets everywhere they could
//! surface, `/debug/vars` and its access rules, and trace ids on every log line of a task.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;

use mechanics_proto::domain::TaskState;
use mechanics_store::Store;
use serde_json::{Value, json};

use crate::support::{TestServer, http_worker, rate_limited_once_worker, reply};

/// The tasks of [`scripted_run`], by what happened to them.
struct Run {
    ok: i64,
    broken: i64,
    flaky: i64,
    gone: i64,
    limited: [i64; 2],
}

/// Through real http workers: a completion (submitted twice with one idempotency key), a 5xx
/// failure, a retry (429 then 200), a dead letter (connection refused, one retry allowed), and
/// a rate-limited re-queue (two tasks through a burst of one).
async fn scripted_run(server: &TestServer) -> Run {
    let (ok_url, _) = http_worker(|_, _| reply(200, json!({ "done": true }))).await;
    let (broken_url, _) = http_worker(|_, _| reply(500, json!({ "oops": "broken" }))).await;
    let (flaky_url, _) = rate_limited_once_worker("0", json!("second time lucky")).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    server.add_http_worker("ok", &ok_url, json!({})).await;
    server
        .add_http_worker("broken", &broken_url, json!({}))
        .await;
    server.add_http_worker("flaky", &flaky_url, json!({})).await;
    server
        .add_http_worker(
            "gone",
            &format!("http://{closed}"),
            json!({ "retry": { "max_retries": 1, "base_delay": "10ms", "max_delay": "10ms" } }),
        )
        .await;
    server
        .add_http_worker(
            "limited",
            &ok_url,
            // One token a second: the second task, submitted right after the first, always
            // waits for its reserved slot (a faster refill made that a race).
            json!({ "rate_limit": { "per_second": 1, "burst": 1 } }),
        )
        .await;

    let submit = json!({ "worker": "ok", "payload": 1, "idempotency_key": "once" });
    let (status, first) = server
        .call("POST", "/api/v1/tasks", Some(submit.clone()))
        .await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = server.call("POST", "/api/v1/tasks", Some(submit)).await;
    assert_eq!((status, &again["created"]), (202, &json!(false)), "{again}");
    let run = Run {
        ok: first["id"].as_i64().unwrap(),
        broken: server.submit("broken", json!(2)).await,
        flaky: server.submit("flaky", json!(3)).await,
        gone: server.submit("gone", json!(4)).await,
        limited: [
            server.submit("limited", json!(5)).await,
            server.submit("limited", json!(6)).await,
        ],
    };
    let ends = [
        (run.ok, TaskState::Completed),
        (run.broken, TaskState::Failed),
        (run.flaky, TaskState::Completed),
        (run.gone, TaskState::Dead),
        (run.limited[0], TaskState::Completed),
        (run.limited[1], TaskState::Completed),
    ];
    for (id, state) in ends {
        let task = server.wait_end(id).await;
        assert_eq!(task.state, state, "{task:?}");
    }
    run
}

/// `GET path` as text, with the server's key if it has one.
pub(crate) async fn text(server: &TestServer, path: &str) -> (u16, String, Option<String>) {
    let mut request = server.client.get(format!("{}{path}", server.base));
    if let Some(key) = &server.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.text().await.unwrap(), content_type)
}

/// Every sample of the exposition by name, summed over labels, after checking its syntax:
/// the independent `prometheus-parse` parser reads it, and every sample belongs to a family
/// declared with `# TYPE`.
pub(crate) fn parse_exposition(body: &str) -> (prometheus_parse::Scrape, BTreeMap<String, f64>) {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let name = regex::Regex::new(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$").unwrap();
    let mut typed = Vec::new();
    let mut sums = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            assert!(name.is_match(family), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(family.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let sample = series.split('{').next().unwrap();
        assert!(name.is_match(sample), "{line}");
        assert!(
            typed.iter().any(|f| sample == f
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.strip_suffix(s) == Some(f.as_str()))),
            "{sample} has no # TYPE"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        *sums.entry(sample.to_owned()).or_insert(0.0) += value;
    }
    (scrape, sums)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_workers_series_are_gone_from_metrics() {
    let server = TestServer::start().await;
    scripted_run(&server).await;
    // The families labelled with `worker`, per worker, by sample name.
    let labelled = |scrape: &prometheus_parse::Scrape| {
        let mut by_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for sample in &scrape.samples {
            if let Some(worker) = sample.labels.get("worker") {
                by_worker
                    .entry(worker.to_owned())
                    .or_default()
                    .push(sample.metric.clone());
            }
        }
        by_worker
    };
    let (status, body, _) = text(&server, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let before = labelled(&parse_exposition(&body).0);
    // "gone" went dead after a retry, "limited" waited for its bucket: several families each.
    for (worker, family) in [
        ("gone", "mechanics_tasks_dead_total"),
        ("gone", "mechanics_tasks_retried_total"),
        ("limited", "mechanics_tasks_rate_limited_total"),
        ("limited", "mechanics_dispatch_latency_seconds_count"),
    ] {
        assert!(
            before[worker].iter().any(|m| m == family),
            "{worker} {family}: {body}"
        );
    }

    for worker in ["gone", "limited"] {
        let (status, answer) = server
            .call("DELETE", &format!("/api/v1/workers/{worker}"), None)
            .await;
        assert_eq!(status, 204, "{answer}");
    }
    let (status, body, _) = text(&server, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let after = labelled(&parse_exposition(&body).0);
    let workers: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(workers, ["broken", "flaky", "ok"], "{body}");
    for worker in workers {
        assert_eq!(after[worker], before[worker], "{worker} keeps its series");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_run_is_counted_exactly_in_a_valid_exposition() {
    let server = TestServer::start().await;
    scripted_run(&server).await;
    let (status, body, content_type) = text(&server, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (scrape, sums) = parse_exposition(&body);
    let expected = [
        ("mechanics_tasks_created_total", 6.0),
        ("mechanics_tasks_completed_total", 4.0),
        ("mechanics_tasks_failed_total", 1.0),
        ("mechanics_tasks_dead_total", 1.0),
        ("mechanics_tasks_retried_total", 2.0),
        ("mechanics_tasks_rate_limited_total", 1.0),
        ("mechanics_tasks_recovered_total", 0.0),
        ("mechanics_tasks_dedup_skipped_total", 1.0),
        ("mechanics_webhooks_received_total", 0.0),
        ("mechanics_webhooks_rate_limited_total", 0.0),
        ("mechanics_events_dedup_skipped_total", 0.0),
        ("mechanics_cron_ticks_dropped_total", 0.0),
        ("mechanics_writeback_ok_total", 0.0),
        ("mechanics_writeback_fail_total", 0.0),
        ("mechanics_writeback_retry_ok_total", 0.0),
        ("mechanics_writeback_dead_letter_total", 0.0),
        // ok 1, broken 1, flaky 2, gone 2, limited 2 attempts.
        ("mechanics_dispatch_latency_seconds_count", 8.0),
        ("mechanics_queue_depth", 0.0),
        ("mechanics_tasks_in_flight", 0.0),
        ("mechanics_dispatch_concurrency", 16.0),
        ("mechanics_nodes", 0.0),
        ("mechanics_nodes_tripped", 0.0),
    ];
    for (name, value) in expected {
        // A per-worker family appears with its first count (recovered: none here).
        if !name.starts_with("mechanics_tasks_") {
            let family = name.strip_suffix("_count").unwrap_or(name);
            assert!(
                body.contains(&format!("# TYPE {family} ")),
                "{family} in\n{body}"
            );
        }
        assert_eq!(
            sums.get(name).copied().unwrap_or(0.0),
            value,
            "{name} in\n{body}"
        );
    }
    assert!(
        sums.contains_key("mechanics_dispatch_latency_seconds_ema"),
        "{body}"
    );
    assert!(sums.contains_key("mechanics_uptime_seconds"), "{body}");

    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
            .value
            .clone()
    };
    use prometheus_parse::Value as V;
    // Per worker, labelled by name (bounded by the registry).
    assert_eq!(
        sample("mechanics_tasks_retried_total", &[("worker", "flaky")]),
        V::Counter(1.0)
    );
    assert_eq!(
        sample("mechanics_tasks_dead_total", &[("worker", "gone")]),
        V::Counter(1.0)
    );
    assert_eq!(
        sample(
            "mechanics_tasks_rate_limited_total",
            &[("worker", "limited")]
        ),
        V::Counter(1.0)
    );
    // Tasks per state, read at scrape time.
    for (state, n) in [
        ("completed", 4.0),
        ("failed", 1.0),
        ("dead", 1.0),
        ("pending", 0.0),
    ] {
        assert_eq!(
            sample("mechanics_tasks", &[("state", state)]),
            V::Gauge(n),
            "{state}"
        );
    }
    // The histogram: 12 buckets from 0.1 s to 600 s, plus +Inf.
    let V::Histogram(buckets) =
        sample("mechanics_dispatch_latency_seconds", &[("worker", "flaky")])
    else {
        panic!("not a histogram:\n{body}");
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    assert_eq!(
        bounds,
        [
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
            30.0,
            60.0,
            120.0,
            300.0,
            600.0,
            f64::INFINITY
        ]
    );
    assert_eq!(buckets.last().unwrap().count, 2.0, "two attempts of flaky");
    server.stop().await;
}

/// The `/logs` entries of `query`, oldest first, as `(action, outcome, attempt)`.
pub(crate) async fn steps(server: &TestServer, query: &str) -> Vec<(String, String, Option<u64>)> {
    let (status, body) = server.call("GET", &format!("/logs?{query}"), None).await;
    assert_eq!(status, 200, "{body}");
    let mut entries: Vec<Value> = body["entries"].as_array().unwrap().clone();
    entries.reverse();
    entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["attempt"].as_u64(),
            )
        })
        .collect()
}

pub(crate) fn step(
    action: &str,
    outcome: &str,
    attempt: Option<u64>,
) -> (String, String, Option<u64>) {
    (action.to_owned(), outcome.to_owned(), attempt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_trace_of_each_task_is_in_order() {
    let server = TestServer::start().await;
    let run = scripted_run(&server).await;
    // The duplicate submission is part of the task's trace, whenever it came.
    let mut ok = steps(&server, &format!("task={}", run.ok)).await;
    ok.retain(|s| s != &step("submit", "skip", None));
    assert_eq!(
        ok,
        [step("submit", "ok", None), step("dispatch", "ok", Some(1))]
    );
    assert_eq!(
        steps(&server, &format!("task={}", run.broken)).await,
        [
            step("submit", "ok", None),
            step("dispatch", "fail", Some(1))
        ]
    );
    assert_eq!(
        steps(&server, &format!("task={}", run.flaky)).await,
        [
            step("submit", "ok", None),
            step("dispatch", "retry", Some(1)),
            step("retry", "retry", Some(1)),
            step("dispatch", "ok", Some(2)),
        ]
    );
    assert_eq!(
        steps(&server, &format!("task={}", run.gone)).await,
        [
            step("submit", "ok", None),
            step("dispatch", "retry", Some(1)),
            step("retry", "retry", Some(1)),
            step("dispatch", "fail", Some(2)),
            step("dead_letter", "fail", Some(2)),
        ]
    );
    // Of the two tasks sharing a one-token bucket, whichever ran second waited for its slot:
    // that wait is no attempt, so it still ran as attempt 1.
    let mut waited = Vec::new();
    for id in run.limited {
        let limited = steps(&server, &format!("task={id}")).await;
        assert_eq!(limited.first(), Some(&step("submit", "ok", None)));
        if limited.contains(&step("rate_limit", "retry", Some(1))) {
            assert_eq!(limited.last(), Some(&step("dispatch", "ok", Some(1))));
            waited.push(id);
        } else {
            assert_eq!(limited.last(), Some(&step("dispatch", "ok", Some(1))));
        }
    }
    assert_eq!(waited.len(), 1, "{waited:?}");

    // One trace per API task, and the trace filter gives the same chain.
    let (_, body) = server
        .call("GET", &format!("/logs?task={}", run.gone), None)
        .await;
    for entry in body["entries"].as_array().unwrap() {
        assert_eq!(entry["trace_id"], json!(format!("task-{}", run.gone)));
        assert_eq!(entry["worker"], json!("gone"));
        assert_eq!(entry["task_id"], json!(run.gone));
        assert!(entry["id"].as_i64().is_some() && entry["ts"].as_i64().is_some());
    }
    let dead = &body["entries"][0];
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains("retries exhausted"),
        "{dead}"
    );
    assert_eq!(
        steps(&server, &format!("trace=task-{}", run.gone)).await,
        steps(&server, &format!("task={}", run.gone)).await
    );
    let retry = &steps(&server, &format!("task={}&action=retry", run.flaky)).await;
    assert_eq!(retry, &[step("retry", "retry", Some(1))]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_filter_page_and_refuse_bad_filters() {
    let server =
        TestServer::start_with(Some("logs-key-0123456789"), tempfile::tempdir().unwrap()).await;
    let run = scripted_run(&server).await;

    let all = steps(&server, "limit=1000").await;
    assert!(all.len() >= 18, "{all:?}");
    assert_eq!(steps(&server, "since=1h").await, all);
    assert_eq!(steps(&server, "since=2999-01-01T00:00:00Z").await, []);
    assert_eq!(
        steps(&server, "worker=broken").await,
        [
            step("submit", "ok", None),
            step("dispatch", "fail", Some(1))
        ]
    );
    let failures = steps(&server, "action=dispatch&outcome=fail").await;
    assert_eq!(failures.len(), 2, "broken and gone: {failures:?}");
    assert_eq!(
        steps(&server, "outcome=skip").await,
        [step("submit", "skip", None)]
    );
    assert_eq!(steps(&server, "event=1").await, []);

    // Paging: pages of 3 follow the cursor to the same entries, newest first, no duplicates.
    let (_, everything) = server.call("GET", "/logs?limit=1000", None).await;
    let ids: Vec<i64> = everything["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let mut paged = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/logs?limit=3&cursor={c}"),
            None => "/logs?limit=3".to_owned(),
        };
        let (status, page) = server.call("GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 3);
        paged.extend(entries.iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, ids);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    // The alias under /api/v1 answers the same.
    let (status, alias) = server
        .call("GET", &format!("/api/v1/logs?task={}", run.flaky), None)
        .await;
    let (_, root) = server
        .call("GET", &format!("/logs?task={}", run.flaky), None)
        .await;
    assert_eq!((status, &alias), (200, &root));

    for bad in [
        "outcome=maybe",
        "since=yesterday",
        "since=2026-01-31",
        "limit=0",
        "limit=many",
        "task=abc",
        "color=red",
    ] {
        let (status, body) = server.call("GET", &format!("/logs?{bad}"), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], json!("bad_request"), "{bad}: {body}");
    }
    // Both paths need the key.
    for path in ["/logs", "/api/v1/logs"] {
        let response = server
            .client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
    }
    server.stop().await;
}

/// Log output of the whole test binary, from the first call on (`mechanics_server=debug`).
static CAPTURED: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Arc::default);

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("mechanics_server=debug")
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

pub(crate) fn captured() -> String {
    String::from_utf8_lossy(&CAPTURED.lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_debug_vars_api_answers_or_log_output() {
    capture_logs();
    let api_key = "api-key-f00dfeed-0123456789";
    let token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let slack = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp";
    let bearer = "Bearer sEcReT-bEaReR-vAlUe";
    let server = TestServer::start_with(Some(api_key), tempfile::tempdir().unwrap()).await;
    // A worker that echoes what it got, and a secret header, into its error.
    let echo = format!("{bearer} {token} {api_key}");
    let (url, _) =
        http_worker(move |body, _| reply(500, json!({ "payload": body["payload"], "auth": echo })))
            .await;
    server.add_http_worker("leaky", &url, json!({})).await;
    // And one that completes, echoing the same into its result, under a key and as a key.
    let echo = format!("{bearer} {token} {api_key}");
    let (url, _) = http_worker(move |body, _| {
        reply(
            200,
            json!({ "reply": echo, "got": body["payload"], api_key: "as a key" }),
        )
    })
    .await;
    server.add_http_worker("echo", &url, json!({})).await;
    let payload = json!({ "note": format!("use {slack}"), "authorization": bearer });
    let id = server.submit("leaky", payload.clone()).await;
    let echoed = server.submit("echo", payload).await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Failed);
    let completed = server.wait_end(echoed).await;
    assert_eq!(completed.state, TaskState::Completed);
    // Redacted before it was stored: the database never held the secrets.
    let stored = server.store.get_task(echoed).await.unwrap().unwrap();
    let stored_result = stored.result.clone().unwrap();
    assert_eq!(
        stored_result["reply"],
        json!("Bearer [redacted] [redacted] [redacted]"),
        "{stored_result}"
    );
    assert_eq!(
        stored_result["[redacted]"],
        json!("as a key"),
        "{stored_result}"
    );
    // The stored payload is the submitter's own, as the worker needs it.
    assert_eq!(stored.payload["authorization"], json!(bearer));
    let error = task.error.clone().unwrap();
    assert!(
        error.contains("[redacted]") && error.contains("500"),
        "{error}"
    );

    // A wrong key in a header is not echoed either.
    let response = server
        .client
        .get(format!("{}/api/v1/tasks", server.base))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let refused = response.text().await.unwrap();

    let (_, logs, _) = text(&server, &format!("/logs?task={id}")).await;
    let (_, vars, _) = text(&server, "/debug/vars").await;
    let (_, shown, _) = text(&server, &format!("/api/v1/tasks/{id}")).await;
    let (_, listed, _) = text(&server, "/api/v1/tasks?worker=leaky").await;
    let (_, shown_result, _) = text(&server, &format!("/api/v1/tasks/{echoed}")).await;
    let (_, all_tasks, _) = text(&server, "/api/v1/tasks").await;
    let (status, retried) = server
        .call("POST", &format!("/api/v1/tasks/{id}/retry"), None)
        .await;
    assert_eq!(status, 200, "{retried}");
    let retried = retried.to_string();
    let (_, echo_logs, _) = text(&server, &format!("/logs?task={echoed}")).await;
    let stored_result = stored_result.to_string();
    let (_, metrics, _) = text(&server, "/metrics").await;
    assert!(
        logs.contains("dispatch") && logs.contains("[redacted]"),
        "{logs}"
    );
    let task_error = serde_json::from_str::<Value>(&shown).unwrap()["error"].clone();
    // Give the log writer a moment: the subscriber writes as events happen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let output = captured();
    for (place, text) in [
        ("/logs", &logs),
        ("/logs of the completed task", &echo_logs),
        ("/debug/vars", &vars),
        ("GET /tasks/{id}", &shown),
        ("GET /tasks/{id} of the completed task", &shown_result),
        ("GET /tasks", &all_tasks),
        ("GET /tasks?worker=leaky", &listed),
        ("POST /tasks/{id}/retry", &retried),
        ("the stored result", &stored_result),
        ("/metrics", &metrics),
        ("401 answer", &refused),
        ("log output", &output),
    ] {
        for secret in [token, slack, "sEcReT-bEaReR-vAlUe", api_key] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {place}: {text}"
            );
        }
    }
    // The listing shows the same redacted error, and the payload redacted on its way out.
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["tasks"][0]["error"], task_error);
    assert_eq!(
        listed["tasks"][0]["payload"],
        json!({ "note": "use [redacted]", "authorization": "[redacted]" })
    );
    // Every log line of the attempt carries the task's trace id.
    let trace = format!("trace_id=task-{id}");
    let attempt_lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains(&format!("task={id} ")) && l.contains("worker=leaky"))
        .collect();
    assert!(
        !attempt_lines.is_empty(),
        "no log line of task {id}:\n{output}"
    );
    for line in attempt_lines {
        assert!(line.contains(&trace), "{line}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_vars_shows_runtime_state_to_key_holders_or_loopback() {
    let server =
        TestServer::start_with(Some("debug-key-0123456789"), tempfile::tempdir().unwrap()).await;
    let (url, _) = http_worker(|_, _| reply(200, json!(1))).await;
    server.add_http_worker("w", &url, json!({})).await;
    server.wait_end(server.submit("w", json!(1)).await).await;
    let get = |key: Option<&str>| {
        let mut request = server.client.get(format!("{}/debug/vars", server.base));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    assert_eq!(get(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(get(Some("wrong")).await.unwrap().status().as_u16(), 401);
    let response = get(Some("debug-key-0123456789")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let vars: Value = response.json().await.unwrap();
    let keys: Vec<&str> = vars
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "counters",
            "dispatch",
            "nodes",
            "queue",
            "store",
            "trace",
            "uptime_seconds",
            "version"
        ]
    );
    assert_eq!(vars["version"], json!(env!("CARGO_PKG_VERSION")));
    // The store's own count, not including this request's query.
    assert_eq!(vars["store"]["shared"], json!(false));
    let queries = vars["store"]["queries"].as_u64().unwrap();
    assert!(
        queries > 0 && queries < server.store.queries_executed(),
        "{vars}"
    );
    assert_eq!(vars["counters"]["tasks_completed"], json!(1));
    assert_eq!(vars["queue"]["depth"], json!(0));
    assert_eq!(vars["queue"]["tasks"]["completed"], json!(1));
    assert_eq!(vars["dispatch"]["concurrency"], json!(16));
    assert_eq!(vars["nodes"], json!([]));
    let text = vars.to_string();
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(
        path.is_empty() || !text.contains(&path),
        "environment leaked"
    );
    // /metrics stays public for scrapers.
    let metrics = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    server.stop().await;

    // Without a key: loopback callers are let in (non-loopback refusal: unit test of the check).
    let open = TestServer::start().await;
    let (status, vars) = open.call("GET", "/debug/vars", None).await;
    assert_eq!(status, 200, "{vars}");
    assert_eq!(vars["counters"]["tasks_created"], json!(0));
    open.stop().await;
}

/// A js executor whose every job answers with the header value its config was resolved to and
/// the payload it got, as a script echoing its endpoint's credentials would; it keeps the jobs.
#[derive(Default)]
struct EchoingExecutor {
    jobs: Mutex<Vec<mechanics_proto::node::JobRequest>>,
}

#[async_trait::async_trait]
impl mechanics_server::JsExecutor for EchoingExecutor {
    async fn run(&self, job: mechanics_proto::node::JobRequest) -> mechanics_server::AttemptOutput {
        let config = job.config.clone().unwrap_or_default();
        let header = config["endpoints"]["api"]["headers"]["x-custom"].clone();
        let payload = job.arg["payload"].clone();
        self.jobs.lock().unwrap().push(job);
        mechanics_server::Outcome::Completed(json!({
            "reply": format!("sent {}", header.as_str().unwrap_or_default()),
            "got": payload,
        }))
        .into()
    }
    fn validate(&self, _: Option<&Value>, _: Option<&Value>) -> Result<(), String> {
        Ok(())
    }
    fn nodes(&self) -> Vec<mechanics_proto::api::NodeView> {
        Vec::new()
    }
    fn reset(&self, _: &str) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_env_value_echoed_in_a_result_is_redacted_before_it_is_stored() {
    // `std::env::set_var` is unsafe while other threads read the environment; cargo sets this
    // variable for every test process, so it stands in for an operator's secret.
    let secret = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    assert!(secret.len() >= 6, "{secret}");
    let js = Arc::new(EchoingExecutor::default());
    let server = TestServer::start_with_js(js.clone()).await;
    let spec = json!({ "spec": {
        "name": "echo-js", "kind": "js", "module": "m.js", "triggers": [{ "api": true }],
        "config": { "endpoints": { "api": {
            "method": "post", "url_template": "http://127.0.0.1:9/x",
            "headers": { "x-custom": "k=${env:CARGO_MANIFEST_DIR}" },
        } } },
    }, "module_source": "export default function main() { return 1; }" });
    let (status, body) = server.call("POST", "/api/v1/workers", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let id = server
        .submit("echo-js", json!({ "note": format!("pass {secret}") }))
        .await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");

    // The job got the real values: its resolved config and the payload as submitted.
    {
        let jobs = js.jobs.lock().unwrap();
        let config = jobs[0].config.clone().unwrap();
        assert_eq!(
            config["endpoints"]["api"]["headers"]["x-custom"],
            json!(format!("k={secret}"))
        );
        assert_eq!(
            jobs[0].arg["payload"]["note"],
            json!(format!("pass {secret}"))
        );
    }
    // The store never held the value; the API shows neither it nor the payload's copy.
    let stored = server.store.get_task(id).await.unwrap().unwrap();
    assert_eq!(
        stored.result,
        Some(json!({ "reply": "sent k=[redacted]", "got": { "note": "pass [redacted]" } }))
    );
    assert_eq!(task.result, stored.result);
    assert_eq!(task.payload, json!({ "note": "pass [redacted]" }));
    let (_, listed, _) = text(&server, "/api/v1/tasks?worker=echo-js").await;
    // The attempt's entry reaches `/logs` with the trace's next flush.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let (_, logs, _) = text(&server, &format!("/logs?task={id}")).await;
        if logs.contains("dispatch") {
            break logs;
        }
        assert!(tokio::time::Instant::now() < deadline, "{logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (place, text) in [("GET /tasks", &listed), ("/logs", &logs)] {
        assert!(
            !text.contains(&secret),
            "the env value leaked into {place}: {text}"
        );
    }
    server.stop().await;
}

/// A js executor whose script writes console lines holding the header value its config was
/// resolved to (an operator's secret) and a GitHub token, fails its first attempt in a
/// retryable way and completes the second.
struct ConsoleExecutor;

#[async_trait::async_trait]
impl mechanics_server::JsExecutor for ConsoleExecutor {
    async fn run(&self, job: mechanics_proto::node::JobRequest) -> mechanics_server::AttemptOutput {
        use mechanics_proto::domain::{ConsoleLevel, ConsoleLine};
        let config = job.config.clone().unwrap_or_default();
        let header = config["endpoints"]["api"]["headers"]["x-custom"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let line = |level, ts, message: String| ConsoleLine { level, ts, message };
        let n = i64::from(job.attempt);
        let mut console = vec![
            line(
                ConsoleLevel::Log,
                1_000 * n,
                format!("attempt {n} calling with {header}"),
            ),
            line(
                ConsoleLevel::Warn,
                1_000 * n + 1,
                "token ghp_abcdefghijklmnopqrstuvwxyz0123456789".into(),
            ),
        ];
        let outcome = if job.attempt == 1 {
            console.push(line(
                ConsoleLevel::Error,
                1_000 * n + 2,
                "connection reset".into(),
            ));
            mechanics_server::Outcome::Transport("node-1 failed while running the job".into())
        } else {
            mechanics_server::Outcome::Completed(json!("done"))
        };
        mechanics_server::AttemptOutput {
            outcome,
            console,
            node: Some("test-node".to_owned()),
        }
    }
    fn validate(&self, _: Option<&Value>, _: Option<&Value>) -> Result<(), String> {
        Ok(())
    }
    fn nodes(&self) -> Vec<mechanics_proto::api::NodeView> {
        Vec::new()
    }
    fn reset(&self, _: &str) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_attempts_console_is_redacted_stored_per_attempt_and_traced_once_per_attempt() {
    // As in the test above: a variable cargo sets stands in for an operator's secret.
    let secret = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let server = TestServer::start_with_js(Arc::new(ConsoleExecutor)).await;
    let spec = json!({ "spec": {
        "name": "chatty", "kind": "js", "module": "m.js", "triggers": [{ "api": true }],
        "retry": { "max_retries": 2, "base_delay": "10ms", "max_delay": "10ms" },
        "config": { "endpoints": { "api": {
            "method": "post", "url_template": "http://127.0.0.1:9/x",
            "headers": { "x-custom": "k=${env:CARGO_MANIFEST_DIR}" },
        } } },
    }, "module_source": "export default () => 1;" });
    let (status, body) = server.call("POST", "/api/v1/workers", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let id = server.submit("chatty", json!(null)).await;
    let task = server.wait_end(id).await;
    assert_eq!(
        (task.state, task.attempt),
        (TaskState::Completed, 2),
        "{task:?}"
    );

    // `GET /tasks/{id}`: both attempts' lines, apart and in order, without the secrets.
    let (status, body) = server
        .call("GET", &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["console"],
        json!([
            { "attempt": 1, "level": "log", "ts": 1000, "message": "attempt 1 calling with k=[redacted]" },
            { "attempt": 1, "level": "warn", "ts": 1001, "message": "token [redacted]" },
            { "attempt": 1, "level": "error", "ts": 1002, "message": "connection reset" },
            { "attempt": 2, "level": "log", "ts": 2000, "message": "attempt 2 calling with k=[redacted]" },
            { "attempt": 2, "level": "warn", "ts": 2001, "message": "token [redacted]" },
        ])
    );
    // Stored redacted: the database never held the value.
    let stored = server.store.task_console(id).await.unwrap();
    assert_eq!(stored.len(), 5);
    assert!(stored.iter().all(|l| !l.line.message.contains(&secret)));
    // The listing leaves the console out.
    let (_, listed) = server
        .call("GET", "/api/v1/tasks?worker=chatty", None)
        .await;
    assert_eq!(listed["tasks"][0]["id"], json!(id));
    assert!(listed["tasks"][0].get("console").is_none(), "{listed}");

    // `/logs`: one `console` entry per attempt, before that attempt's result.
    assert_eq!(
        steps(&server, &format!("task={id}")).await,
        [
            step("submit", "ok", None),
            step("console", "ok", Some(1)),
            step("dispatch", "retry", Some(1)),
            step("retry", "retry", Some(1)),
            step("console", "ok", Some(2)),
            step("dispatch", "ok", Some(2)),
        ]
    );
    let (_, logs) = server
        .call("GET", &format!("/logs?task={id}&action=console"), None)
        .await;
    let details: Vec<&Value> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| &e["detail"])
        .collect();
    assert_eq!(
        details,
        [
            &json!({ "lines": 3, "errors": 1, "warnings": 1, "last": "error: connection reset" }),
            &json!({ "lines": 2, "errors": 0, "warnings": 1, "last": "warn: token [redacted]" }),
        ]
    );
    let (_, logs, _) = text(&server, &format!("/logs?task={id}")).await;
    assert!(!logs.contains(&secret) && !logs.contains("ghp_"), "{logs}");
    server.stop().await;
}
