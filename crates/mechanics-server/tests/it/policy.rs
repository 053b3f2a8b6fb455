//! Worker policies end to end: webhook deliveries of each platform's shape against fake platform
//! APIs on 127.0.0.1 that say who the source's token is and who is in a GitHub team; which
//! events start the worker, which are refused and why (`/logs`, `/metrics`), and what is posted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use mechanics_proto::domain::EventState;
use serde_json::{Value, json};

use crate::support::{TestServer, http_worker, reply};
use crate::webhooks::{
    FAKE_IDENTITY, SECRET, add_source, deliver, github_headers, identity_answer, wait_event,
};

/// A fake GitHub: identity `mechanics-bot`, team `@acme/maintainers` = {dave}, every other team
/// hidden from the token (404), and every other request (a comment) recorded and answered 201. Its URL and the comments' paths.
async fn fake_github() -> (String, Arc<Mutex<Vec<String>>>) {
    let posted = Arc::new(Mutex::new(Vec::new()));
    let log = posted.clone();
    let router = Router::new().fallback(move |method: Method, uri: Uri| {
        let log = log.clone();
        async move {
            if let Some(identity) = identity_answer(&method, uri.path()) {
                return identity;
            }
            if let Some(login) = uri
                .path()
                .strip_prefix("/orgs/acme/teams/maintainers/memberships/")
            {
                return if login == "dave" {
                    axum::Json(json!({ "state": "active", "role": "member" })).into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                };
            }
            if uri.path() == "/orgs/acme/teams/maintainers" {
                return axum::Json(json!({ "slug": "maintainers" })).into_response();
            }
            // Any other team is one the token cannot see: GitHub answers 404 for it all.
            if uri.path().starts_with("/orgs/") {
                return StatusCode::NOT_FOUND.into_response();
            }
            log.lock().unwrap().push(format!("{method} {}", uri.path()));
            (StatusCode::CREATED, axum::Json(json!({ "id": 1 }))).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, posted)
}

/// An `issue_comment.created` on acme/app#`issue` by `login` (a `Bot` when `bot`).
pub(crate) fn comment_by(login: &str, bot: bool, issue: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "created",
        "issue": { "number": issue, "title": "t" },
        "comment": { "body": "hello", "user": { "login": login } },
        "repository": { "full_name": "acme/app", "name": "app" },
        "sender": { "login": login, "type": if bot { "Bot" } else { "User" } },
    }))
    .unwrap()
}

/// Delivers `body` to `source` with GitHub's headers; the stored event's id.
async fn deliver_github(server: &TestServer, delivery: &str, body: &[u8]) -> i64 {
    let headers = github_headers(SECRET, delivery, "issue_comment", body);
    let (code, answer, _) = deliver(server, "gh", &headers, body).await;
    assert_eq!(code, 202, "{answer}");
    answer["event_id"].as_i64().unwrap()
}

/// The `policy` entries of `/logs`, oldest first, once there are `count` of them.
async fn policy_entries(server: &TestServer, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = server
            .call("GET", "/logs?action=policy&limit=1000", None)
            .await;
        assert_eq!(code, 200, "{body}");
        let mut entries = body["entries"].as_array().unwrap().clone();
        if entries.len() >= count {
            entries.reverse();
            return entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} policy entries: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server on `dir` whose webhook bucket lets every delivery of a test through.
async fn roomy_server(dir: tempfile::TempDir) -> TestServer {
    TestServer::start_configured(None, dir, |config| {
        config.webhook_rate_limit = mechanics_server::config::RateLimit {
            per_second: 100.0,
            burst: 100,
        };
    })
    .await
}

/// A worker `triage` answering every comment, with `policy`.
async fn add_triage(server: &TestServer, worker_url: &str, policy: Value) {
    server
        .add_http_worker(
            "triage",
            worker_url,
            json!({
                "triggers": [{ "webhook": { "source": "gh", "events": ["issue_comment.created"] } }],
                "write_back": true,
                "policy": policy,
            }),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_comments_by_itself_bots_outsiders_and_busy_actors_start_nothing() {
    let (api, posted) = fake_github().await;
    let (worker_url, _) = http_worker(|_, _| reply(200, json!({ "reply": "on it" }))).await;
    let dir = tempfile::tempdir().unwrap();
    let server = roomy_server(dir).await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    add_triage(
        &server,
        &worker_url,
        json!({
            "actors": { "allow": ["alice", "@acme/maintainers"] },
            "per_actor_limit": { "count": 10, "per": "1h" },
        }),
    )
    .await;

    let own = deliver_github(&server, "d-self", &comment_by(FAKE_IDENTITY, false, 1)).await;
    let bot = deliver_github(&server, "d-bot", &comment_by("renovate[bot]", true, 1)).await;
    let outsider = deliver_github(&server, "d-eve", &comment_by("eve", false, 1)).await;
    let member = deliver_github(&server, "d-dave", &comment_by("dave", false, 2)).await;
    // Ten comments of alice in the hour: all answered.
    let mut alice = Vec::new();
    for n in 0..10 {
        let body = comment_by("alice", false, 10 + n);
        alice.push(deliver_github(&server, &format!("d-a{n}"), &body).await);
    }
    for id in [own, bot, outsider] {
        let event = wait_event(&server, id, EventState::Ignored).await;
        assert_eq!(event.error, None);
    }
    for &id in alice.iter().chain([&member]) {
        wait_event(&server, id, EventState::Completed).await;
    }

    // The limit is kept in the database: a restart does not reset it, and the eleventh is
    // refused.
    let dir = server.stop().await;
    let server = roomy_server(dir).await;
    let eleventh = deliver_github(&server, "d-a10", &comment_by("alice", false, 99)).await;
    wait_event(&server, eleventh, EventState::Ignored).await;

    let entries = policy_entries(&server, 15).await;
    let decisions: Vec<(i64, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["event_id"].as_i64().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["detail"]["reason"].as_str().unwrap_or("-"),
                e["detail"]["actor"].as_str().unwrap(),
            )
        })
        .collect();
    let mut want = vec![
        (own, "deny", "self", FAKE_IDENTITY),
        (bot, "deny", "bot", "renovate[bot]"),
        (outsider, "deny", "actor_not_allowed", "eve"),
        (member, "ok", "-", "dave"),
        (eleventh, "deny", "actor_limit", "alice"),
    ];
    want.extend(alice.iter().map(|&id| (id, "ok", "-", "alice")));
    for decision in &want {
        assert!(
            decisions.contains(decision),
            "{decision:?} in {decisions:?}"
        );
    }
    assert_eq!(
        decisions.len(),
        15,
        "one decision per (event, worker): {decisions:?}"
    );
    assert!(entries.iter().all(|e| e["worker"] == "triage"));
    let limited = entries.iter().find(|e| e["event_id"] == eleventh).unwrap();
    assert!(
        limited["detail"]["why"]
            .as_str()
            .unwrap()
            .contains("10 times in the last 1h"),
        "{limited}"
    );

    // Exactly the eleven admitted comments were answered, each once.
    let mut answered = posted.lock().unwrap().clone();
    answered.sort();
    let mut want: Vec<String> = [2]
        .into_iter()
        .chain(10..20)
        .map(|n| format!("POST /repos/acme/app/issues/{n}/comments"))
        .collect();
    want.sort();
    assert_eq!(answered, want);
    // The restarted server counts its own decision.
    let (_, metrics) = server.call("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(
            "mechanics_policy_decisions_total{worker=\"triage\",outcome=\"deny\",reason=\"actor_limit\"} 1"
        ),
        "{metrics}"
    );
    let (_, listed) = server
        .call("GET", "/api/v1/events?state=ignored", None)
        .await;
    assert_eq!(listed["events"].as_array().unwrap().len(), 4, "{listed}");
    server.stop().await;
}

/// The `policy` decision on event `id`: outcome, reason, why.
fn decision_on(entries: &[Value], id: i64) -> (String, String, String) {
    let entry = entries
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("a decision on {id} in {entries:?}"));
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    (
        text(&entry["outcome"]),
        text(&entry["detail"]["reason"]),
        text(&entry["detail"]["why"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_list_refuses_an_event_that_names_no_actor() {
    let (api, posted) = fake_github().await;
    let (worker_url, _) = http_worker(|_, _| reply(200, json!({ "reply": "on it" }))).await;
    let server = roomy_server(tempfile::tempdir().unwrap()).await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    add_triage(
        &server,
        &worker_url,
        json!({ "actors": { "deny": ["mallory"] } }),
    )
    .await;

    // Without `sender`, leaving the actor out would otherwise be a way past the list.
    let mut anonymous: Value = serde_json::from_slice(&comment_by("mallory", false, 1)).unwrap();
    anonymous.as_object_mut().unwrap().remove("sender");
    let anonymous =
        deliver_github(&server, "d-anon", &serde_json::to_vec(&anonymous).unwrap()).await;
    let bob = deliver_github(&server, "d-bob", &comment_by("bob", false, 2)).await;
    wait_event(&server, anonymous, EventState::Ignored).await;
    wait_event(&server, bob, EventState::Completed).await;

    let entries = policy_entries(&server, 2).await;
    let (outcome, reason, why) = decision_on(&entries, anonymous);
    assert_eq!(
        (outcome.as_str(), reason.as_str()),
        ("deny", "actor_denied"),
        "{why}"
    );
    assert!(why.contains("names no actor"), "{why}");
    assert_eq!(
        entries.iter().find(|e| e["event_id"] == anonymous).unwrap()["detail"]["actor"],
        "unknown"
    );
    assert_eq!(decision_on(&entries, bob).0, "ok");
    assert_eq!(
        posted.lock().unwrap().clone(),
        ["POST /repos/acme/app/issues/2/comments"],
        "only bob's comment was answered"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_the_token_cannot_see_is_an_error_not_an_empty_team() {
    let (api, posted) = fake_github().await;
    let (worker_url, _) = http_worker(|_, _| reply(200, json!({ "ok": true }))).await;
    let server = roomy_server(tempfile::tempdir().unwrap()).await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    for (name, actors) in [
        ("deny-ghosts", json!({ "deny": ["@acme/ghosts"] })),
        ("allow-ghosts", json!({ "allow": ["@acme/ghosts"] })),
        (
            "allow-maintainers",
            json!({ "allow": ["@acme/maintainers"] }),
        ),
    ] {
        server
            .add_http_worker(
                name,
                &worker_url,
                json!({
                    "triggers": [{ "webhook": { "source": "gh", "events": ["issue_comment.created"] } }],
                    "policy": { "actors": actors },
                }),
            )
            .await;
    }
    let bob = deliver_github(&server, "d-bob", &comment_by("bob", false, 1)).await;
    wait_event(&server, bob, EventState::Ignored).await;

    let entries = policy_entries(&server, 3).await;
    let by_worker = |worker: &str| {
        let entry = entries.iter().find(|e| e["worker"] == worker).unwrap();
        (
            entry["outcome"].as_str().unwrap().to_owned(),
            entry["detail"]["reason"].as_str().unwrap().to_owned(),
            entry["detail"]["why"].as_str().unwrap().to_owned(),
        )
    };
    // The hidden team refuses on either list, and says which team and what the token lacks.
    for (worker, reason) in [
        ("deny-ghosts", "actor_denied"),
        ("allow-ghosts", "actor_not_allowed"),
    ] {
        let (outcome, got, why) = by_worker(worker);
        assert_eq!(
            (outcome.as_str(), got.as_str()),
            ("deny", reason),
            "{worker}: {why}"
        );
        assert!(
            why.contains("@acme/ghosts") && why.contains("lacks access"),
            "{worker}: {why}"
        );
    }
    // A team GitHub shows that bob is not in is a plain "not a member".
    let (outcome, reason, why) = by_worker("allow-maintainers");
    assert_eq!(
        (outcome.as_str(), reason.as_str()),
        ("deny", "actor_not_allowed")
    );
    assert_eq!(why, "bob is not in policy.actors.allow");
    assert!(posted.lock().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_slack_and_telegram_actors_are_read_from_their_own_shapes() {
    let (api, _) = fake_github().await;
    let (worker_url, _) = http_worker(|_, _| reply(200, json!({ "ok": true }))).await;
    let server = roomy_server(tempfile::tempdir().unwrap()).await;
    add_source(&server, "gl", "gitlab", SECRET, Some(&api)).await;
    add_source(&server, "sl", "slack", SECRET, Some(&api)).await;
    add_source(&server, "tg", "telegram", SECRET, Some(&api)).await;
    for (name, source, events, policy) in [
        (
            "gl-w",
            "gl",
            json!(["note"]),
            json!({ "actors": { "deny": ["mallory"] } }),
        ),
        (
            "sl-w",
            "sl",
            json!(["message"]),
            json!({ "actors": { "allow": ["U2"] } }),
        ),
        (
            "tg-w",
            "tg",
            json!(["message"]),
            json!({ "ignore_bots": false }),
        ),
    ] {
        server
            .add_http_worker(
                name,
                &worker_url,
                json!({
                    "triggers": [{ "webhook": { "source": source, "events": events } }],
                    "policy": policy,
                }),
            )
            .await;
    }
    let gitlab = |delivery: &str, user: Value| {
        let body = serde_json::to_vec(&json!({
            "object_kind": "note", "user": user,
            "project": { "id": 1 }, "object_attributes": { "note": "hi", "noteable_type": "Issue" },
            "issue": { "iid": 1 },
        }))
        .unwrap();
        let headers = vec![
            ("x-gitlab-token", SECRET.to_owned()),
            ("x-gitlab-event", "Note Hook".to_owned()),
            ("x-gitlab-event-uuid", delivery.to_owned()),
        ];
        (headers, body)
    };
    let slack = |id: &str, event: Value| {
        let body = serde_json::to_vec(&json!({
            "type": "event_callback", "event_id": id, "team_id": "T1", "event": event,
        }))
        .unwrap();
        (crate::webhooks::slack_headers(SECRET, &body), body)
    };
    let telegram = |update: i64, from: Value| {
        let body = serde_json::to_vec(&json!({
            "update_id": update,
            "message": { "message_id": update, "chat": { "id": 5 }, "text": "hi", "from": from },
        }))
        .unwrap();
        (
            vec![("x-telegram-bot-api-secret-token", SECRET.to_owned())],
            body,
        )
    };
    let cases = [
        (
            "gl",
            gitlab("g1", json!({ "username": FAKE_IDENTITY })),
            "deny",
            "self",
        ),
        (
            "gl",
            gitlab("g2", json!({ "username": "ci", "bot": true })),
            "deny",
            "bot",
        ),
        (
            "gl",
            gitlab("g3", json!({ "username": "mallory" })),
            "deny",
            "actor_denied",
        ),
        ("gl", gitlab("g4", json!({ "username": "bob" })), "ok", "-"),
        (
            "sl",
            slack(
                "E1",
                json!({ "type": "message", "bot_id": "BBOT", "text": "ours" }),
            ),
            "deny",
            "self",
        ),
        (
            "sl",
            slack(
                "E2",
                json!({ "type": "message", "user": "U3", "text": "x" }),
            ),
            "deny",
            "actor_not_allowed",
        ),
        (
            "sl",
            slack(
                "E3",
                json!({ "type": "message", "user": "U2", "text": "x" }),
            ),
            "ok",
            "-",
        ),
        (
            "tg",
            telegram(
                1,
                json!({ "id": 999, "is_bot": true, "username": "mechanics_bot" }),
            ),
            "deny",
            "self",
        ),
        (
            "tg",
            telegram(
                2,
                json!({ "id": 31, "is_bot": true, "username": "helper_bot" }),
            ),
            "ok",
            "-",
        ),
    ];
    let mut want = Vec::new();
    for (source, (headers, body), outcome, reason) in cases {
        let (code, answer, _) = deliver(&server, source, &headers, &body).await;
        assert_eq!(code, 202, "{source}: {answer}");
        let id = answer["event_id"].as_i64().unwrap();
        let end = if outcome == "ok" {
            EventState::Completed
        } else {
            EventState::Ignored
        };
        wait_event(&server, id, end).await;
        want.push((id, outcome, reason));
    }
    let entries = policy_entries(&server, want.len()).await;
    let got: Vec<(i64, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["event_id"].as_i64().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["detail"]["reason"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    for decision in &want {
        assert!(got.contains(decision), "{decision:?} in {got:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_that_cannot_hold_are_refused_when_the_worker_is_added() {
    let server = TestServer::start().await;
    // A GitHub source without a token cannot resolve a team.
    let secret_file = server.dir.path().join("gh.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let source = json!({ "name": "gh", "kind": "github", "secret_file": secret_file });
    let (code, body) = server.call("POST", "/api/v1/sources", Some(source)).await;
    assert_eq!(code, 201, "{body}");
    let webhook = json!([{ "webhook": { "source": "gh", "events": ["issues.*"] } }]);
    // A generic source without `actor_path`: its events name no actor.
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"generic key bytes")
    );
    let generic_secret = server.dir.path().join("gen.secret");
    std::fs::write(&generic_secret, whsec).unwrap();
    let source = json!({ "name": "gen", "kind": "generic", "secret_file": generic_secret });
    let (code, body) = server.call("POST", "/api/v1/sources", Some(source)).await;
    assert_eq!(code, 201, "{body}");
    let generic = json!([{ "webhook": { "source": "gen", "events": ["*"] } }]);
    let cases = [
        (
            json!({ "triggers": generic, "policy": { "actors": { "deny": ["mallory"] } } }),
            "invalid worker: policy.actors.deny: the source \"gen\" is a generic source without \
             actor_path, so its events name no actor and the list would refuse every one; set \
             actor_path on the source (the JSON path of the sender's name in a delivery)",
        ),
        (
            json!({ "triggers": webhook, "policy": { "actors": { "allow": ["alice", "@acme/core"] } } }),
            "invalid worker: policy.actors.allow[1]: the team @acme/core is resolved through \
             GitHub with the source's token, and the source \"gh\" has no token_env or token_file",
        ),
        (
            json!({ "triggers": [{ "api": true }], "policy": { "ignore_bots": false } }),
            "invalid worker: policy: applies to events of webhook triggers, and this worker has none",
        ),
        (
            json!({ "triggers": webhook, "policy": { "per_actor_limit": { "count": 0, "per": "1h" } } }),
            "invalid worker: policy.per_actor_limit.count: must be at least 1",
        ),
    ];
    for (extra, want) in cases {
        let mut spec = json!({ "name": "w", "kind": "http", "url": "http://127.0.0.1:9" });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (code, body) = server
            .call("POST", "/api/v1/workers", Some(json!({ "spec": spec })))
            .await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["error"]["message"], want);
    }
    let (code, body) = server
        .call(
            "POST",
            "/api/v1/workers",
            Some(json!({ "spec": {
                "name": "w", "kind": "http", "url": "http://127.0.0.1:9", "triggers": webhook,
                "policy": { "actors": { "allow": ["alice"] }, "unknown": 1 },
            } })),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `unknown`"),
        "{body}"
    );
    let (_, workers) = server.call("GET", "/api/v1/workers", None).await;
    assert_eq!(workers["workers"], json!([]), "nothing was added");
    server.stop().await;
}
