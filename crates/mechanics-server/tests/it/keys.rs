//! Scoped API keys over real HTTP: the scope matrix (every route × every scope, and no key, a
//! wrong key, a revoked key, an expired key), keys on a server without a configured key, the
//! `/logs` record of key changes, and "last used".

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::TestServer;

/// The configured (admin) key of the matrix server.
const CONFIGURED: &str = "configured-admin-key";

/// Every route with a request whose answer, once let through, does not depend on the state
/// (nothing is changed), the scope it needs, and that answer.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>, &'static str, u16)> {
    vec![
        ("GET", "/api/v1/workers", None, "read", 200),
        ("GET", "/api/v1/workers/nope", None, "read", 404),
        ("POST", "/api/v1/workers", Some(json!({})), "admin", 400),
        ("DELETE", "/api/v1/workers/nope", None, "admin", 404),
        ("GET", "/api/v1/tasks", None, "read", 200),
        ("GET", "/api/v1/tasks/999", None, "read", 404),
        (
            "POST",
            "/api/v1/tasks",
            Some(json!({ "worker": "nope" })),
            "operate",
            404,
        ),
        ("POST", "/api/v1/tasks/999/retry", None, "operate", 404),
        ("POST", "/api/v1/tasks/999/cancel", None, "operate", 404),
        ("GET", "/api/v1/events", None, "read", 200),
        ("GET", "/api/v1/events/999", None, "read", 404),
        ("GET", "/api/v1/nodes", None, "read", 200),
        ("POST", "/api/v1/nodes/nope/reset", None, "operate", 404),
        ("GET", "/api/v1/instances", None, "read", 200),
        ("GET", "/api/v1/sources", None, "read", 200),
        ("GET", "/api/v1/sources/nope", None, "read", 404),
        ("POST", "/api/v1/sources", Some(json!({})), "admin", 400),
        ("DELETE", "/api/v1/sources/nope", None, "admin", 404),
        ("GET", "/api/v1/logs", None, "read", 200),
        ("GET", "/logs", None, "read", 200),
        ("GET", "/debug/vars", None, "read", 200),
        ("GET", "/api/v1/keys", None, "admin", 200),
        (
            "POST",
            "/api/v1/keys",
            Some(json!({ "name": "bad name", "scope": "read" })),
            "admin",
            400,
        ),
        ("DELETE", "/api/v1/keys/nope", None, "admin", 404),
        ("GET", "/api/v1/no-such-route", None, "read", 404),
    ]
}

const SCOPES: [&str; 3] = ["read", "operate", "admin"];

fn rank(scope: &str) -> usize {
    SCOPES.iter().position(|s| *s == scope).unwrap()
}

/// `method path` with `body` and `key` (none: no key header); status and JSON body.
async fn call_as(
    server: &mut TestServer,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    server.api_key = key.map(str::to_owned);
    server.call(method, path, body).await
}

/// Creates a key `name` with `scope` (and `extra` fields) as `as_key`; its secret.
async fn create_key(
    server: &mut TestServer,
    as_key: Option<&str>,
    name: &str,
    extra: Value,
) -> String {
    let mut body = json!({ "name": name });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = call_as(server, as_key, "POST", "/api/v1/keys", Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["name"], name);
    let secret = answer["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("mk_") && secret.len() == 46, "{secret}");
    secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_scope_and_refuses_missing_wrong_revoked_and_expired_keys() {
    let mut server = TestServer::start_with(Some(CONFIGURED), tempfile::tempdir().unwrap()).await;
    let c = Some(CONFIGURED);
    let mut secrets = Vec::new();
    for scope in SCOPES {
        let secret = create_key(
            &mut server,
            c,
            &format!("k-{scope}"),
            json!({ "scope": scope }),
        )
        .await;
        secrets.push((scope, secret));
    }
    let revoked = create_key(&mut server, c, "revoked", json!({ "scope": "admin" })).await;
    let (status, _) = call_as(&mut server, c, "DELETE", "/api/v1/keys/revoked", None).await;
    assert_eq!(status, 204);
    let expired = create_key(
        &mut server,
        c,
        "expired",
        json!({ "scope": "admin", "expires_in_secs": 1 }),
    )
    .await;
    // The expiring key works until it expires.
    let (status, _) = call_as(&mut server, Some(&expired), "GET", "/api/v1/workers", None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for (method, path, body, needed, allowed) in routes() {
        let what = format!("{method} {path}");
        let (status, answer) = call_as(&mut server, c, method, path, body.clone()).await;
        assert_eq!(status, allowed, "configured key: {what}: {answer}");
        for (scope, secret) in &secrets {
            let (status, answer) =
                call_as(&mut server, Some(secret), method, path, body.clone()).await;
            if rank(scope) >= rank(needed) {
                assert_eq!(status, allowed, "{scope}: {what}: {answer}");
            } else {
                assert_eq!(status, 403, "{scope}: {what}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("`{needed}` scope"))
                        && message.contains(&format!("k-{scope}")),
                    "{message}"
                );
            }
            assert!(!answer.to_string().contains(secret.as_str()));
        }
        let wrong = format!("mk_{}", "A".repeat(43));
        for (who, key) in [
            ("no key", None),
            ("wrong key", Some(wrong.as_str())),
            ("short wrong key", Some("nope")),
            ("revoked key", Some(revoked.as_str())),
            ("expired key", Some(expired.as_str())),
        ] {
            let (status, answer) = call_as(&mut server, key, method, path, body.clone()).await;
            assert_eq!(status, 401, "{who}: {what}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
            if let Some(key) = key {
                assert!(!answer.to_string().contains(key), "{answer}");
            }
        }
    }
    // The expired key is refused naming it, not its secret.
    let (_, answer) = call_as(&mut server, Some(&expired), "GET", "/api/v1/tasks", None).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"expired\" has expired")
    );

    // Listing shows every live key without a secret; the revoked one is gone.
    let (status, list) = call_as(&mut server, c, "GET", "/api/v1/keys", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["expired", "k-admin", "k-operate", "k-read"]);
    let shown = list.to_string();
    assert!(
        !shown.contains("secret") && !shown.contains("mk_") && !shown.contains("hash"),
        "{shown}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operate_key_runs_tasks_and_a_read_key_only_watches() {
    let mut server = TestServer::start().await;
    let (url, _) =
        crate::support::http_worker(|_, _| crate::support::reply(200, json!("done"))).await;
    server.add_http_worker("w", &url, json!({})).await;
    let admin = create_key(&mut server, None, "admin", json!({ "scope": "admin" })).await;
    let operate = create_key(
        &mut server,
        Some(&admin),
        "ops",
        json!({ "scope": "operate" }),
    )
    .await;
    let read = create_key(
        &mut server,
        Some(&admin),
        "viewer",
        json!({ "scope": "read" }),
    )
    .await;

    server.api_key = Some(operate.clone());
    let id = server.submit("w", json!({ "n": 1 })).await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state.to_string(), "completed");
    let (status, body) = call_as(
        &mut server,
        Some(&operate),
        "POST",
        &format!("/api/v1/tasks/{id}/retry"),
        None,
    )
    .await;
    // Let through to the handler, which refuses to retry a completed task.
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // An operate key cannot change workers.
    let (status, body) = call_as(
        &mut server,
        Some(&operate),
        "DELETE",
        "/api/v1/workers/w",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    let (status, body) = call_as(
        &mut server,
        Some(&read),
        "POST",
        "/api/v1/tasks",
        Some(json!({ "worker": "w", "payload": {} })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`operate` scope")
    );
    let (status, _) = call_as(
        &mut server,
        Some(&read),
        "GET",
        &format!("/api/v1/tasks/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_key_the_api_is_open_until_a_key_is_stored() {
    let mut server = TestServer::start().await;
    let (status, _) = call_as(&mut server, None, "GET", "/api/v1/workers", None).await;
    assert_eq!(status, 200);
    let admin = create_key(&mut server, None, "first", json!({ "scope": "admin" })).await;
    // Now a key is needed, for the API, `/logs` and `/debug/vars` alike.
    for path in ["/api/v1/workers", "/logs", "/debug/vars"] {
        let (status, body) = call_as(&mut server, None, "GET", path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = call_as(&mut server, Some(&admin), "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // `/metrics` and `/healthz` stay public.
    for path in ["/metrics", "/healthz"] {
        let (status, _) = call_as(&mut server, None, "GET", path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    // Revoking the last key opens the API again, but the revoked key itself is refused.
    let (status, _) = call_as(
        &mut server,
        Some(&admin),
        "DELETE",
        "/api/v1/keys/first",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call_as(&mut server, Some(&admin), "GET", "/api/v1/workers", None).await;
    assert_eq!(status, 401);
    let (status, _) = call_as(&mut server, None, "GET", "/api/v1/workers", None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_requests_get_a_4xx_and_change_nothing() {
    let mut server = TestServer::start_with(Some(CONFIGURED), tempfile::tempdir().unwrap()).await;
    let c = Some(CONFIGURED);
    create_key(&mut server, c, "taken", json!({ "scope": "read" })).await;
    for (body, status, needle) in [
        (
            json!({ "name": "taken", "scope": "admin" }),
            409,
            "exists already",
        ),
        (
            json!({ "name": "x", "scope": "root" }),
            400,
            "unknown variant `root`",
        ),
        (json!({ "name": "x" }), 400, "scope"),
        (json!({ "name": "", "scope": "read" }), 400, "API key name"),
        (
            json!({ "name": "x".repeat(65), "scope": "read" }),
            400,
            "API key name",
        ),
        (
            json!({ "name": "x", "scope": "read", "expires_in_secs": 0 }),
            400,
            "expires_in_secs",
        ),
        (
            json!({ "name": "x", "scope": "read", "expires_in_secs": 400_000_000u64 }),
            400,
            "expires_in_secs",
        ),
        (
            json!({ "name": "x", "scope": "read", "extra": 1 }),
            400,
            "extra",
        ),
        (json!("not an object"), 400, "not valid"),
    ] {
        let (got, answer) =
            call_as(&mut server, c, "POST", "/api/v1/keys", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (_, list) = call_as(&mut server, c, "GET", "/api/v1/keys", None).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["keys"][0]["scope"], "read");
    server.stop().await;
}

/// `/logs` entries of action `api_key`, oldest first.
async fn key_logs(server: &mut TestServer, key: &str, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (status, body) = call_as(server, Some(key), "GET", "/logs?action=api_key", None).await;
        assert_eq!(status, 200, "{body}");
        let mut entries = body["entries"].as_array().cloned().unwrap_or_default();
        if entries.len() >= count {
            entries.reverse();
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} api_key entries in /logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_are_in_logs_by_name_and_use_is_recorded() {
    let mut server = TestServer::start_with(Some(CONFIGURED), tempfile::tempdir().unwrap()).await;
    let c = Some(CONFIGURED);
    let admin = create_key(&mut server, c, "root", json!({ "scope": "admin" })).await;
    let ci = create_key(
        &mut server,
        Some(&admin),
        "ci",
        json!({ "scope": "read", "expires_in_secs": 3600 }),
    )
    .await;
    let (status, _) = call_as(&mut server, Some(&ci), "GET", "/api/v1/tasks", None).await;
    assert_eq!(status, 200);
    let (status, _) = call_as(&mut server, Some(&admin), "DELETE", "/api/v1/keys/ci", None).await;
    assert_eq!(status, 204);

    let entries = key_logs(&mut server, CONFIGURED, 3).await;
    let details: Vec<Value> = entries.iter().map(|e| e["detail"].clone()).collect();
    assert_eq!(
        details,
        [
            json!({ "key": "root", "change": "created (admin)", "by": "(configured key)" }),
            json!({ "key": "ci", "change": "created (read)", "by": "root" }),
            json!({ "key": "ci", "change": "revoked", "by": "root" }),
        ]
    );
    let (_, all_logs) = call_as(&mut server, c, "GET", "/logs?limit=500", None).await;
    let shown = all_logs.to_string();
    assert!(!shown.contains(&admin) && !shown.contains(&ci) && !shown.contains(CONFIGURED));
    let (_, vars) = call_as(&mut server, c, "GET", "/debug/vars", None).await;
    assert!(!vars.to_string().contains(&admin));

    // "Last used" is written soon after a use (once a minute at most), not before.
    let mut last_used = Value::Null;
    for _ in 0..100 {
        let (_, list) = call_as(&mut server, Some(&admin), "GET", "/api/v1/keys", None).await;
        last_used = list["keys"][0]["last_used_at"].clone();
        if last_used.is_i64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last_used.is_i64(), "root's last use was not recorded");
    server.stop().await;
}
