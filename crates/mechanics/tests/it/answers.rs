//! What `mechanics serve` answers, through the real binary on 127.0.0.1: a secret echoed back
//! by an API never reaches a task's result, a replayed GitHub body is a duplicate under a new
//! delivery id, and every refusal class has the one JSON error shape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::support::{Coordinator, HttpServer, code, stderr};

/// One raw request on a fresh connection: the status and the JSON body of the answer.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let json = serde_json::from_str(body)
        .unwrap_or_else(|err| panic!("status {status}, body not JSON ({err}): {body:?}"));
    (status, json)
}

#[test]
fn a_secret_an_api_echoes_back_never_reaches_the_task_result() {
    const SECRET: &str = "sup3r-s3cret-bearer-value";
    let echo = HttpServer::start(axum::Router::new().route(
        "/echo",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            axum::Json(serde_json::json!({ "auth": auth }))
        }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[("ECHO_TOKEN", SECRET)]);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        work.join("echo.js"),
        "import endpoint from \"mechanics:endpoint\";\n\
         export default async () => {\n\
           const res = await endpoint(\"echo\", {});\n\
           return { echoed: res.body.auth, length: res.body.auth.length };\n\
         }\n",
    )
    .unwrap();
    std::fs::write(
        work.join("worker.yml"),
        format!(
            "name: echo\nkind: js\nmodule: echo.js\ntriggers:\n  - api: true\n\
             config:\n  endpoints:\n    echo:\n      method: get\n      url_template: \"{}/echo\"\n\
             \x20     headers: {{ authorization: \"Bearer ${{env:ECHO_TOKEN}}\" }}\n",
            echo.url()
        ),
    )
    .unwrap();
    server.ok(&[
        "worker",
        "add",
        "-f",
        work.join("worker.yml").to_str().unwrap(),
    ]);
    let out = server.cli(&["task", "submit", "echo", "--wait", "--json"]);
    assert_eq!(code(&out), Some(0), "{}\n{}", stderr(&out), server.stderr());
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "completed", "{task}");
    // The job saw the real value (its length counts it), the answer shows none of it.
    assert_eq!(
        task["result"]["length"],
        ("Bearer ".len() + SECRET.len()) as u64,
        "{task}"
    );
    let shown = task.to_string();
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    let id = task["id"].to_string();
    let listed = server.ok(&["task", "show", &id, "--json"]);
    assert!(!listed.contains(SECRET), "{listed}");
    // Nor is it stored.
    let db = rusqlite::Connection::open(dir.path().join("m.db")).unwrap();
    let stored: String = db
        .query_row(
            "SELECT COALESCE(result, '') FROM tasks WHERE id = ?1",
            [task["id"].as_i64().unwrap()],
            |row| row.get(0),
        )
        .unwrap();
    assert!(!stored.is_empty() && !stored.contains(SECRET), "{stored}");
    assert!(!server.stderr().contains(SECRET));
}

fn github_delivery(addr: SocketAddr, secret: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut request = format!(
        "POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: issues\r\nX-GitHub-Delivery: {delivery}\r\n\
         X-Hub-Signature-256: sha256={signature}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw(addr, &request)
}

#[test]
fn a_replayed_github_body_is_a_duplicate_under_a_new_delivery_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[("GH_SECRET", "s3cret")]);
    let source = dir.path().join("source.yml");
    std::fs::write(&source, "name: gh\nkind: github\nsecret_env: GH_SECRET\n").unwrap();
    server.ok(&["source", "add", "-f", source.to_str().unwrap()]);
    let body = br#"{"action":"opened","issue":{"number":7},"repository":{"full_name":"acme/app"}}"#;
    let (status, first) = github_delivery(server.addr(), "s3cret", "d-1", body);
    assert_eq!(
        (status, &first["duplicate"]),
        (202, &Value::Bool(false)),
        "{first}"
    );
    // Captured and sent again with a fresh delivery id: the signature still holds.
    let (status, replay) = github_delivery(server.addr(), "s3cret", "d-2", body);
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["duplicate"], true, "{replay}");
    assert_eq!(replay["event_id"], first["event_id"], "{replay}");
    let other =
        br#"{"action":"opened","issue":{"number":8},"repository":{"full_name":"acme/app"}}"#;
    assert_eq!(
        github_delivery(server.addr(), "s3cret", "d-3", other).0,
        202
    );
    let db = rusqlite::Connection::open(dir.path().join("m.db")).unwrap();
    let events: i64 = db
        .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(events, 2);
}

#[test]
fn every_refusal_class_answers_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let addr = server.addr();
    let get =
        |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let long_name = "n".repeat(5_000);
    let cases: Vec<(String, u16, &str)> = vec![
        (get("/api/v1/workers/%ff"), 400, "bad_request"),
        (get("/api/v1/tasks?bogus=1"), 400, "bad_request"),
        (get("/api/v1/tasks?limit=0"), 400, "bad_request"),
        (get("/api/v1/tasks?limit=100000"), 400, "bad_request"),
        (get("/api/v1/tasks?cursor=abc"), 400, "bad_request"),
        (get(&format!("/api/v1/workers/{long_name}")), 404, "not_found"),
        (get("/nowhere"), 404, "not_found"),
        (get("/webhooks/%ff"), 405, "method_not_allowed"),
        (
            "POST /webhooks/nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                .to_owned(),
            404,
            "not_found",
        ),
        (
            "DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            405,
            "method_not_allowed",
        ),
        (get(&format!("/api/v1/workers/{}", "a".repeat(10_000))), 414, "uri_too_long"),
        (get(&format!("/api/v1/workers/{}", "a".repeat(100_000))), 431, "headers_too_large"),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "b".repeat(40_000)
            ),
            431,
            "headers_too_large",
        ),
        ("BLAH\r\n\r\n".to_owned(), 400, "bad_request"),
    ];
    for (request, status, expected) in cases {
        let shown = &request[..request.len().min(60)];
        let (got, body) = raw(addr, request.as_bytes());
        assert_eq!(got, status, "{shown}: {body}");
        let error = &body["error"];
        assert_eq!(error["code"], expected, "{shown}: {body}");
        let message = error["message"].as_str().unwrap();
        assert!(message.chars().count() <= 300, "{shown}: {message}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
}
