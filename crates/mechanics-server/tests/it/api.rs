//! The API's answers to bad input, authentication, and listings.

use serde_json::json;

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
    for (method, path, body, status, needle) in cases {
        let (got, answer) = server.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
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
