//! Webhook ingest (signatures per kind, dedup, bad input, the per-source bucket), matching, and
//! write-back end to end against fake platform APIs on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use mechanics_proto::domain::{Event, EventState};
use mechanics_server::webhooks::BODY_REPLAY_WINDOW_MS;
use mechanics_store::{BodyDedup, EventFilter, NewEvent, Store, TaskFilter};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{TestServer, http_worker, reply};

pub(crate) const SECRET: &str = "s3cret-for-tests";
pub(crate) const TOKEN: &str = "tok-123";

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Registers source `name` of `kind` with its secret (and token) in files of the server's
/// directory; `api` is its `api_base_url`. Without one, the API is a closed loopback port: with a
/// token, the server asks the platform who the token is, and tests reach nothing but loopback.
pub(crate) async fn add_source(
    server: &TestServer,
    name: &str,
    kind: &str,
    secret: &str,
    api: Option<&str>,
) {
    let api = Some(api.unwrap_or("http://127.0.0.1:9"));
    let secret_file = server.dir.path().join(format!("{name}.secret"));
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let token_file = server.dir.path().join(format!("{name}.token"));
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut spec = json!({
        "name": name, "kind": kind,
        "secret_file": secret_file, "token_file": token_file,
    });
    if let Some(api) = api {
        spec["api_base_url"] = json!(api);
    }
    let (status, body) = server.call("POST", "/api/v1/sources", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.to_string().contains(secret), "no secret in answers");
}

/// `POST /webhooks/{source}` with raw `body` and `headers`; status, JSON answer, headers.
pub(crate) async fn deliver(
    server: &TestServer,
    source: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value, HeaderMap) {
    let mut request = server
        .client
        .post(format!("{}/webhooks/{source}", server.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

pub(crate) fn github_headers(
    secret: &str,
    delivery: &str,
    event: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-hub-signature-256",
            format!("sha256={}", hex(&hmac_sha256(secret.as_bytes(), &[body]))),
        ),
        ("x-github-delivery", delivery.to_owned()),
        ("x-github-event", event.to_owned()),
    ]
}

/// Slack's headers for `body` signed now with `secret` (v0 over `v0:{ts}:{body}`).
pub(crate) fn slack_headers(secret: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = now_secs();
    let base = format!("v0:{ts}:");
    vec![
        ("x-slack-request-timestamp", ts.to_string()),
        (
            "x-slack-signature",
            format!(
                "v0={}",
                hex(&hmac_sha256(secret.as_bytes(), &[base.as_bytes(), body]))
            ),
        ),
    ]
}

/// An `issues.opened` payload shaped like GitHub's documented example.
pub(crate) fn issue_opened(repo: &str, number: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "opened",
        "issue": { "number": number, "title": "Crash on start", "body": "It crashes.", "user": { "login": "octocat" } },
        "repository": { "full_name": repo, "name": repo.split('/').nth(1).unwrap() },
        "sender": { "login": "octocat" }
    }))
    .unwrap()
}

async fn events(server: &TestServer) -> Vec<Event> {
    let (status, body) = server.call("GET", "/api/v1/events", None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["events"].clone()).unwrap()
}

/// Waits until event `id` is in `state`, up to 20 s.
pub(crate) async fn wait_event(server: &TestServer, id: i64, state: EventState) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = server
            .call("GET", &format!("/api/v1/events/{id}"), None)
            .await;
        let event: Event = serde_json::from_value(body).unwrap();
        if event.state == state {
            return event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {id} is not {state}: {event:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request a fake platform received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Value,
}

pub(crate) type Requests = Arc<Mutex<Vec<Seen>>>;

/// The identity every fake platform gives its token: GitHub and GitLab `mechanics-bot`, Slack
/// user `UBOT` (bot `BBOT`), Telegram bot 999 `mechanics_bot`.
pub(crate) const FAKE_IDENTITY: &str = "mechanics-bot";

/// The fake platform's answer to a question about its token's identity (`GET /user`, Slack
/// `auth.test`, Telegram `getMe`), which the server asks once per source for its policies.
pub(crate) fn identity_answer(method: &Method, path: &str) -> Option<Response> {
    let body = match (method.as_str(), path) {
        ("GET", p) if p.ends_with("/user") => {
            json!({ "login": FAKE_IDENTITY, "username": FAKE_IDENTITY })
        }
        ("POST", p) if p.ends_with("/auth.test") => {
            json!({ "ok": true, "user_id": "UBOT", "bot_id": "BBOT" })
        }
        ("GET", p) if p.ends_with("/getMe") => {
            json!({ "ok": true, "result": { "id": 999, "username": "mechanics_bot", "is_bot": true } })
        }
        _ => return None,
    };
    Some(axum::Json(body).into_response())
}

/// A fake platform API answering every request with `answer(call index)` (identity questions
/// aside: [`identity_answer`]); its base URL and the requests it saw.
pub(crate) async fn fake_platform(
    answer: impl Fn(usize) -> Response + Clone + Send + Sync + 'static,
) -> (String, Requests) {
    let seen: Requests = Arc::default();
    let log = seen.clone();
    let router = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            let answer = answer.clone();
            async move {
                if let Some(identity) = identity_answer(&method, uri.path()) {
                    return identity;
                }
                // A write-back retry first lists the thread for its earlier reply: none here.
                if method == Method::GET {
                    return axum::Json(json!([])).into_response();
                }
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Seen {
                        method: method.to_string(),
                        path: uri.path().to_owned(),
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    log.len() - 1
                };
                answer(index)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

pub(crate) fn status(code: u16, headers: &[(&'static str, &'static str)]) -> Response {
    let mut response = (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(json!({ "message": "fake" })),
    )
        .into_response();
    for (k, v) in headers {
        response.headers_mut().insert(*k, v.parse().unwrap());
    }
    response
}

/// An http worker replying `{ "reply": text }`, subscribed to `source`'s `events`, with
/// write-back.
async fn replying_worker(server: &TestServer, name: &str, source: &str, events: Value, text: &str) {
    let text = text.to_owned();
    let (url, _) = http_worker(move |_, _| reply(200, json!({ "reply": text }))).await;
    server
        .add_http_worker(
            name,
            &url,
            json!({ "triggers": [{ "webhook": { "source": source, "events": events } }], "write_back": true }),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_signatures_are_checked_and_a_rejected_request_stores_nothing() {
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, None).await;
    let body = issue_opened("acme/app", 1);
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers("wrong", "d1", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 401, "wrong secret: {answer}");
    assert_eq!(answer["error"]["code"], "unauthorized");
    assert!(!answer.to_string().contains(SECRET));
    let tampered = issue_opened("acme/app", 2);
    let (code, _, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d1", "issues", &body),
        &tampered,
    )
    .await;
    assert_eq!(code, 401, "tampered body");
    let mut missing = github_headers(SECRET, "d1", "issues", &body);
    missing.remove(0);
    let (code, answer, _) = deliver(&server, "gh", &missing, &body).await;
    assert_eq!(code, 401);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-hub-signature-256")
    );
    assert!(
        events(&server).await.is_empty(),
        "rejected requests store no event"
    );

    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d1", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["duplicate"], false);
    let stored = events(&server).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event_type, "issues.opened");
    assert_eq!(stored[0].delivery_id, "d1");
    // No worker subscribes: the event is skipped.
    wait_event(&server, stored[0].id, EventState::Skipped).await;
    assert_eq!(server.metrics().webhooks_received.get(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gitlab_telegram_and_standard_webhooks_vectors() {
    let server = TestServer::start().await;
    add_source(&server, "sl", "slack", SECRET, None).await;
    add_source(&server, "gl", "gitlab", SECRET, None).await;
    add_source(&server, "tg", "telegram", SECRET, None).await;
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"generic key bytes")
    );
    add_source(&server, "gen", "generic", &whsec, None).await;

    // Slack: v0 signature over "v0:{ts}:{body}", 5-minute window, url_verification answered.
    let slack = |ts: i64, secret: &str, body: &[u8]| {
        let base = format!("v0:{ts}:");
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            (
                "x-slack-signature",
                format!(
                    "v0={}",
                    hex(&hmac_sha256(secret.as_bytes(), &[base.as_bytes(), body]))
                ),
            ),
        ]
    };
    let challenge = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (code, answer, _) = deliver(
        &server,
        "sl",
        &slack(now_secs(), SECRET, challenge),
        challenge,
    )
    .await;
    assert_eq!(
        (code, answer["challenge"].as_str()),
        (
            200,
            Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
        )
    );
    let message = serde_json::to_vec(&json!({
        "type": "event_callback", "event_id": "Ev1", "team_id": "T1",
        "event": { "type": "app_mention", "channel": "C1", "ts": "1700000000.000100", "text": "<@U1> hi" }
    })).unwrap();
    let (code, _, _) = deliver(
        &server,
        "sl",
        &slack(now_secs() - 301, SECRET, &message),
        &message,
    )
    .await;
    assert_eq!(code, 401, "stale timestamp");
    let (code, _, _) = deliver(
        &server,
        "sl",
        &slack(now_secs(), "wrong", &message),
        &message,
    )
    .await;
    assert_eq!(code, 401, "wrong secret");
    let (code, answer, _) = deliver(
        &server,
        "sl",
        &slack(now_secs(), SECRET, &message),
        &message,
    )
    .await;
    assert_eq!(code, 202, "{answer}");

    // GitLab and Telegram: a shared token compared in constant time.
    let issue = serde_json::to_vec(&json!({
        "object_kind": "issue", "project": { "id": 15 },
        "object_attributes": { "iid": 3, "action": "open", "title": "Bug" }
    }))
    .unwrap();
    let gl = |token: &str| {
        vec![
            ("x-gitlab-token", token.to_owned()),
            ("x-gitlab-event-uuid", "u-1".to_owned()),
        ]
    };
    assert_eq!(deliver(&server, "gl", &gl("wrong"), &issue).await.0, 401);
    assert_eq!(
        deliver(
            &server,
            "gl",
            &[("x-gitlab-event-uuid", "u-1".to_owned())],
            &issue
        )
        .await
        .0,
        401
    );
    assert_eq!(deliver(&server, "gl", &gl(SECRET), &issue).await.0, 202);
    let update = br#"{"update_id":10000,"message":{"message_id":1365,"chat":{"id":1111,"type":"private"},"text":"/start"}}"#;
    let tg = |token: &str| vec![("x-telegram-bot-api-secret-token", token.to_owned())];
    assert_eq!(deliver(&server, "tg", &tg("wrong"), update).await.0, 401);
    assert_eq!(deliver(&server, "tg", &tg(SECRET), update).await.0, 202);

    // Generic: Standard Webhooks with a whsec_ secret.
    let payload = br#"{"type":"invoice.paid","data":{"id":7}}"#;
    let standard = |id: &str, ts: i64, body: &[u8]| {
        let key = base64::engine::general_purpose::STANDARD
            .decode(whsec.trim_start_matches("whsec_"))
            .unwrap();
        let signed = format!("{id}.{ts}.");
        let sig = base64::engine::general_purpose::STANDARD
            .encode(hmac_sha256(&key, &[signed.as_bytes(), body]));
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", format!("v1,{sig}")),
        ]
    };
    assert_eq!(
        deliver(
            &server,
            "gen",
            &standard("msg_1", now_secs() - 600, payload),
            payload
        )
        .await
        .0,
        401
    );
    let mut tampered = standard("msg_1", now_secs(), payload);
    tampered[0].1 = "msg_2".to_owned();
    assert_eq!(deliver(&server, "gen", &tampered, payload).await.0, 401);
    assert_eq!(
        deliver(
            &server,
            "gen",
            &standard("msg_1", now_secs(), payload),
            payload
        )
        .await
        .0,
        202
    );

    let mut types: Vec<(String, String)> = events(&server)
        .await
        .into_iter()
        .map(|e| (e.source, e.event_type))
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("gen".into(), "invoice.paid".into()),
            ("gl".into(), "issue.open".into()),
            ("sl".into(), "app_mention".into()),
            ("tg".into(), "message".into()),
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_bad_input_and_bursts_store_nothing_new() {
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, None).await;
    let body = issue_opened("acme/app", 1);
    let headers = github_headers(SECRET, "same", "issues", &body);
    let (first, a, _) = deliver(&server, "gh", &headers, &body).await;
    let (second, b, _) = deliver(&server, "gh", &headers, &body).await;
    assert_eq!((first, second), (202, 200));
    assert_eq!(
        (b["duplicate"].as_bool(), &b["event_id"]),
        (Some(true), &a["event_id"])
    );
    assert_eq!(server.metrics().events_dedup_skipped.get(), 1);

    assert_eq!(deliver(&server, "nope", &headers, &body).await.0, 404);
    let big = vec![b' '; 5 * 1024 * 1024 + 1];
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "big", "issues", &big),
        &big,
    )
    .await;
    assert_eq!(
        (code, answer["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let bad = b"{not json";
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "bad", "issues", bad),
        bad,
    )
    .await;
    assert_eq!(
        (code, answer["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    assert_eq!(events(&server).await.len(), 1);

    // The default per-source bucket holds 5 (2/s); the two above took 2 tokens, the bad body 1.
    let mut codes = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let body = issue_opened("acme/app", 100 + i);
        let (code, _, headers) = deliver(
            &server,
            "gh",
            &github_headers(SECRET, &format!("burst-{i}"), "issues", &body),
            &body,
        )
        .await;
        if code == 429 {
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
        codes.push(code);
    }
    let accepted = codes.iter().filter(|c| **c == 202).count();
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        events(&server).await.len(),
        1 + accepted,
        "refused deliveries store nothing"
    );
    assert_eq!(
        server.metrics().webhooks_rate_limited.get(),
        (6 - accepted) as u64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_webhook_is_answered_with_exactly_one_github_comment() {
    let (api, seen) = fake_platform(|_| status(201, &[])).await;
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    replying_worker(
        &server,
        "triage",
        "gh",
        json!(["issues.*"]),
        "Thanks, triaged as bug",
    )
    .await;
    // A worker whose filter does not match gets no task.
    let (status_code, body) = server
        .call("POST", "/api/v1/workers", Some(json!({ "spec": {
            "name": "other-repo", "kind": "http", "url": "http://127.0.0.1:9",
            "triggers": [{ "webhook": { "source": "gh", "events": ["*"], "filter": { "repository.full_name": "acme/web" } } }],
            "write_back": true
        }})))
        .await;
    assert_eq!(status_code, 201, "{body}");

    let body = issue_opened("acme/app", 42);
    let headers = github_headers(
        SECRET,
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "issues",
        &body,
    );
    let (code, answer, _) = deliver(&server, "gh", &headers, &body).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    // The same delivery again (GitHub's redelivery): acknowledged, nothing new.
    assert_eq!(deliver(&server, "gh", &headers, &body).await.0, 200);
    let event = wait_event(&server, id, EventState::Completed).await;
    assert_eq!(event.write_back_attempts, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "exactly one comment: {seen:?}");
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/repos/acme/app/issues/42/comments");
    assert_eq!(request.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(
        request.body,
        json!({ "body": "Thanks, triaged as bug\n\n<!-- mechanics:event 1 -->" })
    );
    let (_, tasks) = server
        .call("GET", &format!("/api/v1/tasks?event={id}"), None)
        .await;
    let workers: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers, ["triage"]);
    assert_eq!(server.metrics().writeback_ok.get(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_telegram_replies_go_to_the_thread_and_the_message() {
    let (slack_api, slack_seen) =
        fake_platform(|_| reply(200, json!({ "ok": true, "ts": "1.2" }))).await;
    let (tg_api, tg_seen) =
        fake_platform(|_| reply(200, json!({ "ok": true, "result": {} }))).await;
    let server = TestServer::start().await;
    add_source(&server, "sl", "slack", SECRET, Some(&slack_api)).await;
    add_source(&server, "tg", "telegram", SECRET, Some(&tg_api)).await;
    replying_worker(&server, "echo", "sl", json!(["app_mention"]), "echo!").await;
    replying_worker(&server, "bot", "tg", json!(["message"]), "pong").await;

    let ts = now_secs();
    let message = serde_json::to_vec(&json!({
        "type": "event_callback", "event_id": "Ev9",
        "event": { "type": "app_mention", "channel": "C42", "ts": "1700000000.000200", "thread_ts": "1700000000.000100", "text": "hi" }
    })).unwrap();
    let sig = hex(&hmac_sha256(
        SECRET.as_bytes(),
        &[format!("v0:{ts}:").as_bytes(), &message],
    ));
    let (code, a, _) = deliver(
        &server,
        "sl",
        &[
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", format!("v0={sig}")),
        ],
        &message,
    )
    .await;
    assert_eq!(code, 202);
    let update = br#"{"update_id":5,"message":{"message_id":77,"chat":{"id":-1001,"type":"group"},"text":"ping"}}"#;
    let (code, b, _) = deliver(
        &server,
        "tg",
        &[("x-telegram-bot-api-secret-token", SECRET.to_owned())],
        update,
    )
    .await;
    assert_eq!(code, 202);
    wait_event(
        &server,
        a["event_id"].as_i64().unwrap(),
        EventState::Completed,
    )
    .await;
    wait_event(
        &server,
        b["event_id"].as_i64().unwrap(),
        EventState::Completed,
    )
    .await;

    let slack_event = a["event_id"].as_i64().unwrap();
    let slack = slack_seen.lock().unwrap().clone();
    assert_eq!(slack.len(), 1);
    assert_eq!(
        (slack[0].method.as_str(), slack[0].path.as_str()),
        ("POST", "/chat.postMessage")
    );
    assert_eq!(slack[0].headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(
        slack[0].body,
        json!({
            "channel": "C42", "text": "echo!", "thread_ts": "1700000000.000100",
            "metadata": { "event_type": "mechanics_reply", "event_payload": { "event": slack_event } },
        })
    );
    let tg = tg_seen.lock().unwrap().clone();
    assert_eq!(tg.len(), 1);
    assert_eq!(tg[0].path, format!("/bot{TOKEN}/sendMessage"));
    assert_eq!(
        tg[0].body,
        json!({ "chat_id": -1001, "text": "pong", "reply_to_message_id": 77 })
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_write_back_failures_retry_and_4xx_is_permanent() {
    // 503 then 429 (both with Retry-After: 1), then 201.
    let (api, seen) = fake_platform(|i| match i {
        0 => status(503, &[("retry-after", "1")]),
        1 => status(429, &[("retry-after", "1")]),
        _ => status(201, &[]),
    })
    .await;
    let (gone_api, gone_seen) = fake_platform(|_| status(404, &[])).await;
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    add_source(&server, "gone", "github", SECRET, Some(&gone_api)).await;
    replying_worker(&server, "triage", "gh", json!(["issues.opened"]), "retried").await;
    replying_worker(&server, "lost", "gone", json!(["issues.opened"]), "lost").await;

    let body = issue_opened("acme/app", 7);
    let (_, a, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "r1", "issues", &body),
        &body,
    )
    .await;
    let (_, b, _) = deliver(
        &server,
        "gone",
        &github_headers(SECRET, "r2", "issues", &body),
        &body,
    )
    .await;
    let failed = wait_event(&server, b["event_id"].as_i64().unwrap(), EventState::Failed).await;
    assert!(
        failed.error.as_deref().unwrap().contains("404"),
        "{failed:?}"
    );
    let event = wait_event(
        &server,
        a["event_id"].as_i64().unwrap(),
        EventState::Completed,
    )
    .await;
    assert_eq!(event.write_back_attempts, 2);
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(gone_seen.lock().unwrap().len(), 1, "a 4xx is not retried");
    let metrics = server.metrics();
    assert_eq!(
        (
            metrics.writeback_retry_ok.get(),
            metrics.writeback_fail.get(),
            metrics.writeback_ok.get()
        ),
        (1, 3, 0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_that_keeps_failing_is_dead_lettered_after_5_retries() {
    let (api, seen) = fake_platform(|_| status(502, &[("retry-after", "0")])).await;
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    replying_worker(&server, "triage", "gh", json!(["issues.opened"]), "never").await;
    let body = issue_opened("acme/app", 8);
    let (_, a, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "dl", "issues", &body),
        &body,
    )
    .await;
    let event = wait_event(&server, a["event_id"].as_i64().unwrap(), EventState::Failed).await;
    assert!(
        event
            .error
            .as_deref()
            .unwrap()
            .contains("gave up after 6 tries"),
        "{event:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 6, "the first try and 5 retries");
    assert_eq!(server.metrics().writeback_dead_letter.get(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_left_received_by_a_crash_is_matched_at_startup_once() {
    let (api, seen) = fake_platform(|_| status(201, &[])).await;
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    replying_worker(
        &server,
        "triage",
        "gh",
        json!(["issues.opened"]),
        "recovered",
    )
    .await;
    let dir = server.stop().await;
    // The crash: the event was committed (and acknowledged) but never matched.
    {
        let store = mechanics_store::SqliteStore::open(dir.path().join("m.db")).unwrap();
        let payload: Value = serde_json::from_slice(&issue_opened("acme/app", 9)).unwrap();
        store
            .insert_event(
                NewEvent {
                    source: "gh".into(),
                    delivery_id: "lost".into(),
                    event_type: "issues.opened".into(),
                    payload,
                    body_dedup: None,
                },
                1,
            )
            .await
            .unwrap();
    }
    let server = TestServer::start_with(None, dir).await;
    let id = events(&server).await[0].id;
    wait_event(&server, id, EventState::Completed).await;
    let body = issue_opened("acme/app", 9);
    // Redelivered after the restart: still one event and one comment.
    assert_eq!(
        deliver(
            &server,
            "gh",
            &github_headers(SECRET, "lost", "issues", &body),
            &body
        )
        .await
        .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        seen.lock().unwrap()[0].path,
        "/repos/acme/app/issues/9/comments"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_api_adds_lists_shows_and_removes() {
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, None).await;
    let (code, list) = server.call("GET", "/api/v1/sources", None).await;
    assert_eq!(
        (code, list["sources"][0]["spec"]["kind"].as_str()),
        (200, Some("github"))
    );
    let (code, shown) = server.call("GET", "/api/v1/sources/gh", None).await;
    assert_eq!((code, shown["revision"].as_i64()), (200, Some(1)));
    let (code, err) = server
        .call(
            "POST",
            "/api/v1/sources",
            Some(json!({ "name": "x", "kind": "github", "secret": "inline" })),
        )
        .await;
    assert_eq!(code, 400, "{err}");
    assert!(!err.to_string().contains("inline"));
    assert_eq!(
        server.call("DELETE", "/api/v1/sources/gh", None).await.0,
        204
    );
    assert_eq!(server.call("GET", "/api/v1/sources/gh", None).await.0, 404);
    let body = issue_opened("acme/app", 1);
    assert_eq!(
        deliver(
            &server,
            "gh",
            &github_headers(SECRET, "d", "issues", &body),
            &body
        )
        .await
        .0,
        404
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_sees_exactly_the_accepted_events() {
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, None).await;
    let body = issue_opened("acme/app", 3);
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "c1", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 202);
    // Committed before the 202: readable at once through another connection.
    let event = server
        .store
        .get_event(answer["event_id"].as_i64().unwrap())
        .await
        .unwrap();
    assert_eq!(event.map(|e| e.delivery_id), Some("c1".to_owned()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_notes_and_signed_generic_callbacks() {
    let (gl_api, gl_seen) = fake_platform(|_| status(201, &[])).await;
    let (cb_url, cb_seen) = fake_platform(|_| status(204, &[])).await;
    let server = TestServer::start().await;
    add_source(
        &server,
        "gl",
        "gitlab",
        SECRET,
        Some(&format!("{gl_api}/api/v4")),
    )
    .await;
    add_source(
        &server,
        "gen",
        "generic",
        SECRET,
        Some(&format!("{cb_url}/replies")),
    )
    .await;
    replying_worker(&server, "gl-bot", "gl", json!(["issue.*"]), "noted").await;
    replying_worker(&server, "gen-bot", "gen", json!(["generic"]), "called back").await;

    let issue = serde_json::to_vec(&json!({
        "object_kind": "issue", "project": { "id": 15 },
        "object_attributes": { "iid": 3, "action": "open" }
    }))
    .unwrap();
    let gl = [
        ("x-gitlab-token", SECRET.to_owned()),
        ("x-gitlab-event-uuid", "u-9".to_owned()),
    ];
    let (_, a, _) = deliver(&server, "gl", &gl, &issue).await;
    let body = br#"{"data":1}"#;
    let ts = now_secs();
    let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
        SECRET.as_bytes(),
        &[format!("m1.{ts}.").as_bytes(), body],
    ));
    let gen_headers = [
        ("webhook-id", "m1".to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", format!("v1,{sig}")),
    ];
    let (_, b, _) = deliver(&server, "gen", &gen_headers, body).await;
    wait_event(
        &server,
        a["event_id"].as_i64().unwrap(),
        EventState::Completed,
    )
    .await;
    let event_id = b["event_id"].as_i64().unwrap();
    wait_event(&server, event_id, EventState::Completed).await;

    let gl = gl_seen.lock().unwrap().clone();
    assert_eq!(gl.len(), 1);
    assert_eq!(gl[0].path, "/api/v4/projects/15/issues/3/notes");
    assert_eq!(gl[0].headers["private-token"], TOKEN);
    assert_eq!(
        gl[0].body,
        json!({ "body": "noted\n\n<!-- mechanics:event 1 -->" })
    );
    let cb = cb_seen.lock().unwrap().clone();
    assert_eq!(cb.len(), 1);
    assert_eq!(cb[0].path, "/replies");
    assert_eq!(
        cb[0].body,
        json!({ "type": "reply", "event_id": event_id, "delivery_id": "m1", "reply": "called back" })
    );
    // The callback verifies with the receiver's side of Standard Webhooks.
    let id = cb[0].headers["webhook-id"].to_str().unwrap().to_owned();
    let cb_ts = cb[0].headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .to_owned();
    let signed = serde_json::to_vec(&cb[0].body).unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
        SECRET.as_bytes(),
        &[format!("{id}.{cb_ts}.").as_bytes(), &signed],
    ));
    assert_eq!(cb[0].headers["webhook-signature"], format!("v1,{expected}"));
    server.stop().await;
}

/// A server whose sources' buckets never refuse, so a test can send many deliveries to one.
async fn unlimited_server() -> TestServer {
    TestServer::start_configured(None, tempfile::tempdir().unwrap(), |config| {
        config.webhook_rate_limit = mechanics_server::config::RateLimit {
            per_second: 1_000.0,
            burst: 1_000,
        };
    })
    .await
}

/// The events and tasks the store holds for `source`.
async fn stored(server: &TestServer, source: &str) -> (Vec<Event>, usize) {
    let events = server
        .store
        .list_events(&EventFilter {
            source: Some(source.into()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .items;
    let mut tasks = 0;
    for event in &events {
        let filter = TaskFilter {
            event_id: Some(event.id),
            ..TaskFilter::default()
        };
        tasks += server.store.list_tasks(&filter).await.unwrap().items.len();
    }
    (events, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_body_replayed_under_a_new_delivery_id_is_a_duplicate_for_24_hours() {
    let server = unlimited_server().await;
    add_source(&server, "gh", "github", SECRET, None).await;
    let (url, _) = http_worker(|_, _| reply(200, json!({}))).await;
    server
        .add_http_worker(
            "triage",
            &url,
            json!({ "triggers": [{ "webhook": { "source": "gh", "events": ["issues.*"] } }] }),
        )
        .await;
    let body = issue_opened("acme/app", 1);
    let (code, first, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d-1", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(code, 202, "{first}");
    let id = first["event_id"].as_i64().unwrap();
    // Captured and sent again: the signature covers only the body, so it verifies under any
    // delivery id. Once before the first ran, once after.
    let (code, again, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d-2", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(
        (code, &again["duplicate"], &again["event_id"]),
        (200, &json!(true), &json!(id))
    );
    wait_event(&server, id, EventState::Completed).await;
    let (code, again, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d-3", "issues", &body),
        &body,
    )
    .await;
    assert_eq!(
        (code, &again["duplicate"], &again["event_id"]),
        (200, &json!(true), &json!(id))
    );
    let (events, tasks) = stored(&server, "gh").await;
    assert_eq!((events.len(), tasks), (1, 1), "{events:?}");
    assert_eq!(server.metrics().events_dedup_skipped.get(), 2);
    // The trace says it was the body, and under which id it came.
    let (_, logs) = server
        .call("GET", &format!("/logs?trace=event-{id}&action=dedup"), None)
        .await;
    let details: Vec<&Value> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["detail"])
        .collect();
    assert_eq!(details.len(), 2, "{logs}");
    for (detail, sent) in details.iter().zip(["d-3", "d-2"]) {
        assert_eq!(
            (
                &detail["by"],
                &detail["delivery_id"],
                &detail["event_delivery_id"]
            ),
            (&json!("body"), &json!(sent), &json!("d-1")),
            "{detail}"
        );
        let reason = detail["reason"].as_str().unwrap();
        assert!(reason.starts_with("the body repeats"), "{reason}");
    }

    // Another body is another delivery.
    let other = issue_opened("acme/app", 2);
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d-4", "issues", &other),
        &other,
    )
    .await;
    assert_eq!(
        (code, &answer["duplicate"]),
        (202, &json!(false)),
        "{answer}"
    );
    assert_ne!(answer["event_id"], json!(id));

    // The window: the server hashes the exact body bytes with SHA-256 and looks back 24 hours.
    // Events stored as if received 23 hours and 24 hours and a minute ago stand in for waiting.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut ids = Vec::new();
    for (number, age) in [
        (3, BODY_REPLAY_WINDOW_MS - 3_600_000),
        (4, BODY_REPLAY_WINDOW_MS + 60_000),
    ] {
        let body = issue_opened("acme/app", number);
        let event = NewEvent {
            source: "gh".into(),
            delivery_id: format!("aged-{number}"),
            event_type: "issues.opened".into(),
            payload: serde_json::from_slice(&body).unwrap(),
            body_dedup: Some(BodyDedup {
                hash: Sha256::digest(&body).into(),
                since_ms: 0,
            }),
        };
        let inserted = server.store.insert_event(event, now - age).await.unwrap();
        assert!(inserted.created);
        ids.push(inserted.record.id);
    }
    let recent = issue_opened("acme/app", 3);
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d-5", "issues", &recent),
        &recent,
    )
    .await;
    assert_eq!(
        (code, &answer["event_id"]),
        (200, &json!(ids[0])),
        "23 hours ago: {answer}"
    );
    let old = issue_opened("acme/app", 4);
    let (code, answer, _) = deliver(
        &server,
        "gh",
        &github_headers(SECRET, "d-6", "issues", &old),
        &old,
    )
    .await;
    assert_eq!(
        (code, &answer["duplicate"]),
        (202, &json!(false)),
        "a day ago: {answer}"
    );
    assert_ne!(answer["event_id"], json!(ids[1]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_body_replayed_under_a_new_uuid_is_a_duplicate_but_standard_webhooks_ids_count() {
    let server = unlimited_server().await;
    add_source(&server, "gl", "gitlab", SECRET, None).await;
    let issue = |iid: u64| {
        serde_json::to_vec(&json!({
            "object_kind": "issue", "project": { "id": 15 },
            "object_attributes": { "iid": iid, "action": "open", "title": "Bug" }
        }))
        .unwrap()
    };
    let gl = |uuid: &str| {
        vec![
            ("x-gitlab-token", SECRET.to_owned()),
            ("x-gitlab-event-uuid", uuid.to_owned()),
        ]
    };
    let (code, first, _) = deliver(&server, "gl", &gl("u-1"), &issue(3)).await;
    assert_eq!(code, 202, "{first}");
    let (code, again, _) = deliver(&server, "gl", &gl("u-2"), &issue(3)).await;
    assert_eq!(
        (code, &again["duplicate"], &again["event_id"]),
        (200, &json!(true), &first["event_id"])
    );
    // The bytes are hashed, not the JSON: the same issue with other whitespace is new.
    let mut spaced = issue(3);
    spaced.push(b' ');
    assert_eq!(deliver(&server, "gl", &gl("u-3"), &spaced).await.0, 202);
    assert_eq!(deliver(&server, "gl", &gl("u-4"), &issue(4)).await.0, 202);
    assert_eq!(stored(&server, "gl").await.0.len(), 3);

    // Standard Webhooks signs its id: a sender's two messages with one body are two events.
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"generic key bytes")
    );
    add_source(&server, "gen", "generic", &whsec, None).await;
    let key = base64::engine::general_purpose::STANDARD
        .decode(whsec.trim_start_matches("whsec_"))
        .unwrap();
    let payload = br#"{"type":"invoice.paid","data":{"id":7}}"#;
    let mut answers = Vec::new();
    for id in ["msg_1", "msg_2"] {
        let ts = now_secs();
        let signed = format!("{id}.{ts}.");
        let signature = base64::engine::general_purpose::STANDARD
            .encode(hmac_sha256(&key, &[signed.as_bytes(), payload]));
        let headers = [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", format!("v1,{signature}")),
        ];
        let (code, answer, _) = deliver(&server, "gen", &headers, payload).await;
        assert_eq!(code, 202, "{answer}");
        answers.push(answer["event_id"].clone());
    }
    assert_ne!(answers[0], answers[1]);
    assert_eq!(stored(&server, "gen").await.0.len(), 2);
    server.stop().await;
}

/// A rotated secret file is read again on `refresh_secrets` (what SIGHUP does); a source removed
/// and added again under its name uses its new secret at once, never an old read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_and_re_added_secrets_take_effect_and_old_ones_stop_working() {
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", "one", None).await;
    let signed = |secret: &str, n: u64| {
        let body = issue_opened("acme/app", n);
        (
            github_headers(secret, &format!("d-{n}"), "issues", &body),
            body,
        )
    };
    let (headers, body) = signed("one", 1);
    assert_eq!(deliver(&server, "gh", &headers, &body).await.0, 202);

    std::fs::write(server.dir.path().join("gh.secret"), "two\n").unwrap();
    server.server.as_ref().unwrap().refresh_secrets();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 2;
    loop {
        let (headers, body) = signed("two", n);
        n += 1;
        if deliver(&server, "gh", &headers, &body).await.0 == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated secret was never read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, body) = signed("one", 100);
    assert_eq!(deliver(&server, "gh", &headers, &body).await.0, 401);

    let (status, _) = server.call("DELETE", "/api/v1/sources/gh", None).await;
    assert_eq!(status, 204);
    add_source(&server, "gh", "github", "three", None).await;
    // The first delivery after `source add` answered finds the new secret in memory.
    let (headers, body) = signed("three", 101);
    assert_eq!(deliver(&server, "gh", &headers, &body).await.0, 202);
    let (headers, body) = signed("two", 102);
    assert_eq!(deliver(&server, "gh", &headers, &body).await.0, 401);
}
