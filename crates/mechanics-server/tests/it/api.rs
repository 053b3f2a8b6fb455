//! The API's answers to bad input, authentication, and listings.

use serde_json::{Value, json};

use crate::support::{TestServer, http_worker, reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_error_that_says_what_is_wrong_and_changes_nothing() {
    let server = TestServer::start().await;
    let cases = [
        (
            "POST",
            "/api/v1/workers",
            Some(json!("not an object")),
            400,
            "invalid type",
        ),
        (
            "POST",
            "/api/v1/workers",
            Some(json!({ "spec": { "name": "a", "kind": "http", "url": "http://h", "color": 1 } })),
            400,
            "unknown field `color`",
        ),
        (
            "POST",
            "/api/v1/workers",
            Some(json!({ "spec": { "name": "Bad Name", "kind": "http", "url": "http://h" } })),
            400,
            "name",
        ),
        (
            "POST",
            "/api/v1/workers",
            Some(json!({ "spec": { "name": "js", "kind": "js" } })),
            400,
            "module",
        ),
        (
            "POST",
            "/api/v1/workers",
            Some(
                json!({ "spec": { "name": "js", "kind": "js", "module": "m.js" }, "module_source": "x".repeat(1024 * 1024 + 1) }),
            ),
            413,
            "limit",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some(json!({ "worker": "nobody" })),
            404,
            "no worker named \"nobody\"",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some(json!({ "worker": "x", "extra": 1 })),
            400,
            "unknown field `extra`",
        ),
        ("GET", "/api/v1/tasks?state=sleeping", None, 400, "sleeping"),
        ("GET", "/api/v1/tasks?colour=red", None, 400, "colour"),
        (
            "GET",
            "/api/v1/tasks/abc",
            None,
            400,
            "not a task or event id",
        ),
        ("GET", "/api/v1/tasks/999", None, 404, "no task 999"),
        ("POST", "/api/v1/tasks/999/retry", None, 404, "999"),
        (
            "GET",
            "/api/v1/workers/nobody",
            None,
            404,
            "no worker named",
        ),
        (
            "DELETE",
            "/api/v1/workers/nobody",
            None,
            404,
            "no worker named",
        ),
        ("GET", "/api/v1/nope", None, 404, "no such API route"),
        ("POST", "/api/v1/nodes/nobody/reset", None, 404, "nobody"),
    ];
    let huge = "n".repeat(100 * 1024);
    let long_path_name = "p".repeat(2000);
    // URLs stay under the edge's 8 KiB limit (a longer one is a `414`, tested in
    // `mechanics-edge`).
    let long_value = "n".repeat(5_000);
    // Every refusal class of the API: a filter a listing does not take, a limit out of range,
    // a cursor or id that is not one, a path segment that does not decode, a method a route
    // does not take, an unknown route outside `/api/v1`.
    let refusals: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "GET",
            "/api/v1/tasks?colour=red".into(),
            None,
            400,
            "unknown query parameter \"colour\"; this listing takes: state, worker, event, since, q, limit, cursor",
        ),
        // Each listing takes its own filters: a task filter is not silently ignored by events.
        (
            "GET",
            "/api/v1/events?worker=w".into(),
            None,
            400,
            "takes: state, source, type, limit, cursor",
        ),
        (
            "GET",
            "/api/v1/tasks?source=gh".into(),
            None,
            400,
            "\"source\"",
        ),
        (
            "GET",
            "/logs?color=red".into(),
            None,
            400,
            "takes: event, task, worker, action",
        ),
        (
            "GET",
            "/api/v1/logs?color=red".into(),
            None,
            400,
            "\"color\"",
        ),
        (
            "GET",
            "/api/v1/tasks?state=failed&state=dead".into(),
            None,
            400,
            "more than once",
        ),
        (
            "GET",
            "/api/v1/tasks?limit=0".into(),
            None,
            400,
            "limit: must be a number from 1 to 1000",
        ),
        (
            "GET",
            "/api/v1/events?limit=1001".into(),
            None,
            400,
            "from 1 to 1000",
        ),
        (
            "GET",
            "/logs?limit=99999999999".into(),
            None,
            400,
            "from 1 to 1000",
        ),
        ("GET", "/api/v1/tasks?limit=many".into(), None, 400, "limit"),
        (
            "GET",
            "/api/v1/tasks?cursor=abc".into(),
            None,
            400,
            "cursor: \"abc\" is not an id",
        ),
        (
            "GET",
            "/api/v1/events?cursor=-5".into(),
            None,
            400,
            "cursor",
        ),
        ("GET", "/logs?cursor=1.5".into(), None, 400, "cursor"),
        ("GET", "/api/v1/tasks?event=x".into(), None, 400, "event"),
        (
            "GET",
            "/api/v1/events?state=lost".into(),
            None,
            400,
            "state: \"lost\" is not one of: received",
        ),
        ("GET", "/api/v1/workers/%ff".into(), None, 400, "UTF-8"),
        ("DELETE", "/api/v1/workers/%ff".into(), None, 400, "UTF-8"),
        ("GET", "/api/v1/sources/%ff".into(), None, 400, "UTF-8"),
        ("GET", "/api/v1/tasks/%ff".into(), None, 400, "UTF-8"),
        (
            "POST",
            "/api/v1/tasks/%ff/cancel".into(),
            None,
            400,
            "UTF-8",
        ),
        ("GET", "/api/v1/events/%ff".into(), None, 400, "UTF-8"),
        ("POST", "/api/v1/nodes/%ff/reset".into(), None, 400, "UTF-8"),
        (
            "PUT",
            "/api/v1/workers".into(),
            None,
            405,
            "does not take PUT: its `Allow` header lists",
        ),
        (
            "DELETE",
            "/api/v1/tasks".into(),
            None,
            405,
            "does not take DELETE",
        ),
        (
            "GET",
            "/api/v1/tasks/1/retry".into(),
            None,
            405,
            "does not take GET",
        ),
        ("POST", "/metrics".into(), None, 405, "does not take POST"),
        ("POST", "/healthz".into(), None, 405, "does not take POST"),
        ("POST", "/logs".into(), None, 405, "does not take POST"),
        ("GET", "/nope".into(), None, 404, "no such route"),
        // What a caller sent is quoted back cut to 100 characters.
        (
            "POST",
            "/api/v1/tasks".into(),
            Some(json!({ "worker": huge })),
            404,
            "no worker named \"nnnn",
        ),
        (
            "GET",
            format!("/api/v1/tasks?state={long_value}"),
            None,
            400,
            "state: \"nnnn",
        ),
        (
            "GET",
            format!("/api/v1/tasks?{long_value}=1"),
            None,
            400,
            "unknown query parameter \"nnnn",
        ),
        (
            "GET",
            format!("/api/v1/workers/{long_path_name}"),
            None,
            404,
            "no worker named \"pppp",
        ),
        (
            "GET",
            format!("/api/v1/tasks/{long_path_name}"),
            None,
            400,
            "not a task or event id",
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(method, path, body, status, needle)| (method, path.to_owned(), body, status, needle))
        .chain(refusals);
    for (method, path, body, status, needle) in cases {
        let (got, answer) = server.call(method, &path, body).await;
        let shown = &path[..path.len().min(80)];
        assert_eq!(got, status, "{method} {shown}: {answer}");
        // One shape: `{ "error": { "code", "message", "field"? } }` and nothing else.
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(
            keys(&answer),
            Some(vec!["error".to_owned()]),
            "{method} {shown}: {answer}"
        );
        let mut fields = keys(&answer["error"]).unwrap_or_default();
        fields.sort();
        let with_field = fields == ["code", "field", "message"];
        assert!(
            fields == ["code", "message"] || with_field && answer["error"]["field"].is_string(),
            "{method} {shown}: {answer}"
        );
        let code = match status {
            400 => "bad_request",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "payload_too_large",
            other => panic!("no code for {other}"),
        };
        assert_eq!(
            answer["error"]["code"],
            json!(code),
            "{method} {shown}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {shown}: {answer}");
        assert!(
            message.chars().count() <= 400,
            "{method} {shown}: a message of {} characters",
            message.chars().count()
        );
        if message.contains("nnnn") || message.contains("pppp") {
            // Exactly 100 characters of the name, the cut marked, in a short message.
            let quoted = message.split('"').nth(1).unwrap();
            assert_eq!(quoted.chars().count(), 101, "{message}");
            assert!(quoted.ends_with('…'), "{message}");
            assert!(message.chars().count() <= 200, "{message}");
        }
    }
    // A 405 keeps its `Allow` header.
    let response = server
        .client
        .put(format!("{}/api/v1/workers", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD,POST");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    // A body over the API limit.
    let big = json!({ "worker": "x", "payload": "y".repeat(3 * 1024 * 1024) });
    let (status, answer) = server.call("POST", "/api/v1/tasks", Some(big)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    let (_, workers) = server.call("GET", "/api/v1/workers", None).await;
    assert_eq!(workers, json!({ "workers": [] }));
    let (_, tasks) = server.call("GET", "/api/v1/tasks", None).await;
    assert_eq!(tasks, json!({ "tasks": [] }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_every_api_call_needs_it_but_healthz_does_not() {
    let mut server = TestServer::start_with(Some("s3cret"), tempfile::tempdir().unwrap()).await;
    let (status, _) = server.call("GET", "/api/v1/workers", None).await;
    assert_eq!(status, 200);
    for key in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        server.api_key = key.map(str::to_owned);
        let (status, body) = server.call("GET", "/api/v1/workers", None).await;
        assert_eq!(status, 401, "{key:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("API key")
        );
        assert!(!body.to_string().contains("s3cret"));
    }
    let response = server
        .client
        .get(format!("{}/api/v1/workers", server.base))
        .header("x-api-key", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_with_one_idempotency_key_make_one_task_and_lists_page() {
    let (url, _seen) = http_worker(|_, _| reply(200, json!(1))).await;
    let server = TestServer::start().await;
    server.add_http_worker("w", &url, json!({})).await;
    let submit = json!({ "worker": "w", "payload": 1, "idempotency_key": "k-1" });
    let (s1, a) = server
        .call("POST", "/api/v1/tasks", Some(submit.clone()))
        .await;
    let (s2, b) = server.call("POST", "/api/v1/tasks", Some(submit)).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        (a["created"].clone(), b["created"].clone()),
        (json!(true), json!(false))
    );
    for n in 0..4 {
        server.submit("w", json!(n)).await;
    }
    let (_, page) = server
        .call("GET", "/api/v1/tasks?worker=w&limit=3", None)
        .await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_i64().unwrap();
    let (_, rest) = server
        .call(
            "GET",
            &format!("/api/v1/tasks?worker=w&limit=3&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 2);
    // A worker without `api: true` takes no submissions.
    let (status, _) = server
        .call("POST", "/api/v1/workers", Some(json!({ "spec": { "name": "cron-only", "kind": "http", "url": url, "triggers": [{ "cron": "* * * * *" }] } })))
        .await;
    assert_eq!(status, 201);
    let (status, body) = server
        .call(
            "POST",
            "/api/v1/tasks",
            Some(json!({ "worker": "cron-only" })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api: true")
    );
    server.stop().await;
}
