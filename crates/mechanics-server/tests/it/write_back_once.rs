//! Write-back posts a reply at most once: a try whose answer was lost is followed by a look for
//! the reply's marker, not by a second post; where the platform cannot be searched, the reply is
//! not posted again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mechanics_proto::domain::EventState;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestServer, http_worker, reply};
use crate::webhooks::{SECRET, add_source, deliver, github_headers, issue_opened, wait_event};

/// What a [`forgetful_platform`] was sent: `METHOD path` and the JSON body of each post.
type Posts = Arc<Mutex<Vec<(String, Value)>>>;

/// A fake platform on a raw socket: it stores every post, but drops the connection without an
/// answer to the first one (the answer is lost; the post was made). It answers identity
/// questions (`mechanics-bot`) and lists the stored GitHub comments on `GET .../comments` as
/// written by `author`.
async fn forgetful_platform(author: &'static str) -> (String, Posts) {
    let posts: Posts = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stored = posts.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let stored = stored.clone();
            tokio::spawn(async move {
                let Some((method, path, body)) = read_request(&mut socket).await else {
                    return;
                };
                let answer = if path.ends_with("/user") || path.ends_with("/getMe") {
                    json!({ "login": "mechanics-bot", "ok": true, "result": { "id": 999 } })
                } else if method == "GET" {
                    let comments: Vec<Value> = stored
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(_, body): &(String, Value)| {
                            json!({ "body": body["body"], "user": { "login": author } })
                        })
                        .collect();
                    Value::Array(comments)
                } else {
                    let first = {
                        let mut stored = stored.lock().unwrap();
                        stored.push((format!("{method} {path}"), body));
                        stored.len() == 1
                    };
                    if first {
                        // Stored, and the answer never leaves.
                        return;
                    }
                    json!({ "id": 1, "ok": true, "result": { "message_id": 1 } })
                };
                let body = answer.to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, posts)
}

/// One HTTP/1.1 request: method, path without the query, JSON body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, String, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_owned();
    let target = words.next()?;
    let path = target.split('?').next()?.to_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    Some((method, path, body))
}

/// The `write_back` entries of event `id`, oldest first, once the last one is not a retry.
async fn write_backs(server: &TestServer, id: i64) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = server
            .call("GET", &format!("/logs?event={id}&action=write_back"), None)
            .await;
        let mut entries = body["entries"].as_array().cloned().unwrap_or_default();
        entries.reverse();
        if entries.last().is_some_and(|e| e["outcome"] != "retry") {
            return entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_reply_whose_answer_was_lost_is_found_and_not_posted_again() {
    let (api, posts) = forgetful_platform("mechanics-bot").await;
    let (worker, _) = http_worker(|_, _| reply(200, json!({ "reply": "on it" }))).await;
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    server
        .add_http_worker(
            "triage",
            &worker,
            json!({
                "triggers": [{ "webhook": { "source": "gh", "events": ["issues.opened"] } }],
                "write_back": true,
            }),
        )
        .await;
    let body = issue_opened("acme/app", 5);
    let headers = github_headers(SECRET, "lost-1", "issues", &body);
    let (code, answer, _) = deliver(&server, "gh", &headers, &body).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    let event = wait_event(&server, id, EventState::Completed).await;
    assert_eq!(event.error, None);

    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "exactly one comment: {posts:?}");
    assert_eq!(posts[0].0, "POST /repos/acme/app/issues/5/comments");
    let entries = write_backs(&server, id).await;
    let steps: Vec<(&str, bool)> = entries
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["detail"]["found"].is_string(),
            )
        })
        .collect();
    assert_eq!(steps, [("retry", false), ("ok", true)], "{entries:?}");
    assert!(
        entries[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("the reply may have been posted: GitHub's answer was lost"),
        "{entries:?}"
    );
    assert_eq!(entries[0]["detail"]["delay_ms"], 1000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_on_someone_elses_comment_is_not_our_reply() {
    // The lost post's comment is listed as eve's: as if eve had pasted the marker and our post
    // never landed. Taken for ours, the reply would never be posted.
    let (api, posts) = forgetful_platform("eve").await;
    let (worker, _) = http_worker(|_, _| reply(200, json!({ "reply": "on it" }))).await;
    let server = TestServer::start().await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    server
        .add_http_worker(
            "triage",
            &worker,
            json!({
                "triggers": [{ "webhook": { "source": "gh", "events": ["issues.opened"] } }],
                "write_back": true,
            }),
        )
        .await;
    let body = issue_opened("acme/app", 5);
    let headers = github_headers(SECRET, "pasted-1", "issues", &body);
    let (code, answer, _) = deliver(&server, "gh", &headers, &body).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    wait_event(&server, id, EventState::Completed).await;

    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "posted again: {posts:?}");
    let entries = write_backs(&server, id).await;
    let steps: Vec<(&str, bool)> = entries
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["detail"]["found"].is_string(),
            )
        })
        .collect();
    assert_eq!(steps, [("retry", false), ("ok", false)], "{entries:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_reply_whose_answer_was_lost_is_not_posted_again() {
    let (api, posts) = forgetful_platform("mechanics-bot").await;
    let (worker, _) = http_worker(|_, _| reply(200, json!({ "reply": "pong" }))).await;
    let server = TestServer::start().await;
    add_source(&server, "tg", "telegram", SECRET, Some(&api)).await;
    server
        .add_http_worker(
            "echo",
            &worker,
            json!({
                "triggers": [{ "webhook": { "source": "tg", "events": ["message"] } }],
                "write_back": true,
            }),
        )
        .await;
    let body = serde_json::to_vec(&json!({
        "update_id": 4,
        "message": { "message_id": 8, "chat": { "id": 3 }, "text": "ping", "from": { "id": 1 } },
    }))
    .unwrap();
    let headers = [("x-telegram-bot-api-secret-token", SECRET.to_owned())];
    let (code, answer, _) = deliver(&server, "tg", &headers, &body).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["event_id"].as_i64().unwrap();
    wait_event(&server, id, EventState::Completed).await;
    let entries = write_backs(&server, id).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "skip");
    assert!(
        entries[0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("not posted again"),
        "{entries:?}"
    );
    // The event has ended: no try is left to post it again.
    assert_eq!(posts.lock().unwrap().len(), 1);
    server.stop().await;
}
