//! The `/ui` dashboard over real HTTP: sign-in and sessions (the key never on a page, the
//! cookie's flags, revocation ending a session), the CSRF check, the scopes (a `read` key sees
//! no buttons and its POSTs are refused), the security headers, the Tasks list (filters, cursor
//! paging, newest first), the Task page and its actions (Retry, Cancel, Replay), the live
//! fragments, and bulk actions.

use std::time::Duration;

use mechanics_proto::domain::TaskState;
use mechanics_store::Store;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::support::{TestServer, http_worker, reply};

/// The configured (admin) key of the test servers.
const ADMIN: &str = "ui-admin-key-0123456789";

/// A browser that does not follow redirects and keeps one session cookie.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

/// A page: its status, headers and body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token the page's forms carry.
    fn csrf(&self) -> String {
        let re = regex::Regex::new(r#"name="csrf" value="([^"]+)""#).unwrap();
        re.captures(&self.body)
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body))[1]
            .to_owned()
    }
}

impl Browser {
    fn new(server: &TestServer) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: server.base.clone(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(set) = headers.get(SET_COOKIE).and_then(|v| v.to_str().ok()) {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let body = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.post_with(path, form, &[]).await
    }

    async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// Signs in with `key`; the answer (a redirect on success).
    async fn sign_in(&mut self, key: &str) -> Answer {
        self.post("/ui/login", &[("key", key), ("next", "/ui/tasks")])
            .await
    }
}

/// A server with the admin key and an http worker `echo` that fails (500) on a payload with
/// `"fail": true` and otherwise answers its payload.
async fn server_with_worker() -> TestServer {
    let (url, _) = http_worker(|body, _| {
        if body["payload"]["fail"] == json!(true) {
            reply(500, json!({ "oops": "asked to fail" }))
        } else {
            reply(200, json!({ "echo": body["payload"] }))
        }
    })
    .await;
    let server = TestServer::start_with(Some(ADMIN), tempfile::tempdir().unwrap()).await;
    server.add_http_worker("echo", &url, json!({})).await;
    server
}

/// Creates a key with `scope` through the API; its secret.
async fn key_with_scope(server: &TestServer, name: &str, scope: &str) -> String {
    let (status, body) = server
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({ "name": name, "scope": scope })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

/// Waits until the dispatcher has ended task `id`.
async fn ended(server: &TestServer, id: i64) -> TaskState {
    server.wait_end(id).await.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sets_a_strict_http_only_cookie_and_the_key_never_reaches_a_page() {
    let server = server_with_worker().await;
    let mut browser = Browser::new(&server);
    // Without a session, a page sends the visitor to the sign-in, remembering where to.
    let answer = browser.get("/ui/tasks?state=failed").await;
    assert_eq!(answer.status, 303);
    assert_eq!(
        answer.location(),
        "/ui/login?next=%2Fui%2Ftasks%3Fstate%3Dfailed"
    );
    let login = browser.get("/ui/login").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains(">API key</label>"), "{}", login.body);
    // A wrong key: refused, and not echoed.
    let wrong = browser.sign_in("mk_wrong-key-typed-by-mistake").await;
    assert_eq!(wrong.status, 401);
    assert!(!wrong.body.contains("wrong-key-typed"));
    assert!(browser.cookie.is_none());
    // The right key: a session cookie, and a redirect where the visitor was going.
    let answer = browser
        .post(
            "/ui/login",
            &[("key", ADMIN), ("next", "/ui/tasks?state=failed")],
        )
        .await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.location(), "/ui/tasks?state=failed");
    let cookie = answer.headers[SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("mechanics_session="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(!cookie.contains(ADMIN));
    // Every page after it, with its headers: no key anywhere, the policy on each.
    let id = server.submit("echo", json!({ "n": 1 })).await;
    ended(&server, id).await;
    for path in [
        "/ui/tasks".to_owned(),
        format!("/ui/tasks/{id}"),
        format!("/ui/tasks/{id}/live"),
        "/ui/login".to_owned(),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains(ADMIN), "{path} shows the key");
        assert!(
            !format!("{:?}", page.headers).contains(ADMIN),
            "{path} has the key in a header"
        );
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        // No inline script: every script element loads from this server.
        assert!(
            !page.body.contains("<script>"),
            "{path} has an inline script"
        );
    }
    // Behind TLS (a proxy saying so), the cookie is Secure too.
    let mut tls = Browser::new(&server);
    let answer = tls
        .post_with(
            "/ui/login",
            &[("key", ADMIN)],
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(
        answer.headers[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    // The open redirect is closed: another site as `next` goes to the tasks.
    let mut other = Browser::new(&server);
    let answer = other
        .post("/ui/login", &[("key", ADMIN), ("next", "//evil.example/")])
        .await;
    assert_eq!(answer.location(), "/ui/tasks");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_and_revocation_end_the_session() {
    let server = server_with_worker().await;
    let secret = key_with_scope(&server, "ops", "operate").await;
    let mut browser = Browser::new(&server);
    assert_eq!(browser.sign_in(&secret).await.status, 303);
    let page = browser.get("/ui/tasks").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("ops · operate"), "{}", page.body);
    // Sign-out needs the CSRF token too.
    let kept = browser.cookie.clone();
    assert_eq!(browser.post("/ui/logout", &[]).await.status, 403);
    let out = browser.post("/ui/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location(), "/ui/login");
    // The old cookie, replayed, is a session no more.
    browser.cookie = kept;
    assert_eq!(browser.get("/ui/tasks").await.status, 303);
    // Revoking the key ends a session made with it at once.
    assert_eq!(browser.sign_in(&secret).await.status, 303);
    assert_eq!(browser.get("/ui/tasks").await.status, 200);
    let (status, _) = server.call("DELETE", "/api/v1/keys/ops", None).await;
    assert_eq!(status, 204);
    let answer = browser.get("/ui/tasks").await;
    assert_eq!(answer.status, 303);
    assert!(answer.location().starts_with("/ui/login"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_the_csrf_token_or_with_another_sessions_token_is_refused() {
    let server = server_with_worker().await;
    let id = server.submit("echo", json!({ "fail": true })).await;
    assert_eq!(ended(&server, id).await, TaskState::Failed);
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let mut other = Browser::new(&server);
    other.sign_in(ADMIN).await;
    let others_token = other.get("/ui/tasks").await.csrf();
    let retry = format!("/ui/tasks/{id}/retry");
    for form in [
        vec![],
        vec![("csrf", "forged")],
        vec![("csrf", others_token.as_str())],
    ] {
        let answer = browser.post(&retry, &form).await;
        assert_eq!(answer.status, 403, "{form:?}");
        assert!(answer.body.contains("CSRF token"), "{}", answer.body);
    }
    // Nothing changed.
    assert_eq!(server.task(id).await.state, TaskState::Failed);
    // Without a session at all: 401, and nothing changed either.
    let mut stranger = Browser::new(&server);
    assert_eq!(stranger.post(&retry, &[("csrf", "x")]).await.status, 401);
    assert_eq!(server.task(id).await.state, TaskState::Failed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_key_sees_no_action_buttons_and_its_posts_are_refused() {
    let server = server_with_worker().await;
    let id = server.submit("echo", json!({ "fail": true })).await;
    assert_eq!(ended(&server, id).await, TaskState::Failed);
    let secret = key_with_scope(&server, "viewer", "read").await;
    let mut reader = Browser::new(&server);
    assert_eq!(reader.sign_in(&secret).await.status, 303);
    let list = reader.get("/ui/tasks").await;
    let page = reader.get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(page.status, 200);
    for body in [&list.body, &page.body] {
        for button in [
            "id=\"retry\"",
            "id=\"cancel\"",
            ">Replay</button>",
            "value=\"cancel-all\"",
            "type=\"checkbox\"",
        ] {
            assert!(!body.contains(button), "a read key sees {button}");
        }
    }
    // The sign-out form carries the token: a read key's POST with it is still refused.
    let csrf = page.csrf();
    for (path, form) in [
        (
            format!("/ui/tasks/{id}/retry"),
            vec![("csrf", csrf.as_str())],
        ),
        (
            format!("/ui/tasks/{id}/cancel"),
            vec![("csrf", csrf.as_str())],
        ),
        (
            format!("/ui/tasks/{id}/replay"),
            vec![("csrf", csrf.as_str()), ("payload", "{}")],
        ),
        (
            "/ui/tasks/bulk".to_owned(),
            vec![
                ("csrf", csrf.as_str()),
                ("action", "retry"),
                ("id", &*id.to_string()),
            ],
        ),
    ] {
        let answer = reader.post(&path, &form).await;
        assert_eq!(answer.status, 403, "{path}");
        assert!(
            answer.body.contains("needs the `operate` scope"),
            "{}",
            answer.body
        );
    }
    assert_eq!(server.task(id).await.state, TaskState::Failed);
    // An operate key sees them.
    let secret = key_with_scope(&server, "ops", "operate").await;
    let mut operator = Browser::new(&server);
    operator.sign_in(&secret).await;
    let page = operator.get(&format!("/ui/tasks/{id}")).await;
    assert!(page.body.contains("id=\"retry\""), "{}", page.body);
    assert!(page.body.contains(">Replay</button>"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_list_filters_by_state_and_worker_newest_first_with_cursor_paging() {
    let server = server_with_worker().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let payload = if n % 2 == 0 {
            json!({ "fail": true })
        } else {
            json!({ "n": n })
        };
        let id = server.submit("echo", payload).await;
        ended(&server, id).await;
        ids.push(id);
    }
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let rows = |body: &str| -> Vec<i64> {
        let re = regex::Regex::new(r#"<tr id="task-(\d+)""#).unwrap();
        re.captures_iter(body)
            .map(|c| c[1].parse().unwrap())
            .collect()
    };
    let all = browser.get("/ui/tasks").await;
    assert_eq!(
        rows(&all.body),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    let failed = browser.get("/ui/tasks?state=failed&worker=echo").await;
    assert_eq!(rows(&failed.body), vec![ids[4], ids[2], ids[0]]);
    assert!(failed.body.contains(r#"<option value="failed" selected>"#));
    // A filter form's empty fields mean "any".
    let empty = browser.get("/ui/tasks?state=&worker=").await;
    assert_eq!(rows(&empty.body).len(), 5);
    assert_eq!(
        rows(&browser.get("/ui/tasks?worker=nobody").await.body),
        Vec::<i64>::new()
    );
    // Pages of two, by cursor, keeping the filter in the link.
    let first = browser.get("/ui/tasks?state=failed&limit=2").await;
    assert_eq!(rows(&first.body), vec![ids[4], ids[2]]);
    let re = regex::Regex::new(r#"<a rel="next" href="([^"]+)""#).unwrap();
    let next = re.captures(&first.body).unwrap()[1].replace("&amp;", "&");
    assert_eq!(
        next,
        format!("/ui/tasks?state=failed&limit=2&cursor={}", ids[2])
    );
    let second = browser.get(&next).await;
    assert_eq!(rows(&second.body), vec![ids[0]]);
    assert!(!second.body.contains("rel=\"next\""));
    // A bad filter names the field and is a 400 page.
    let bad = browser.get("/ui/tasks?state=running").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body
            .contains("state: &quot;running&quot; is not one of"),
        "{}",
        bad.body
    );
    let unknown = browser.get("/ui/tasks?colour=red").await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("unknown query parameter"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_page_shows_payload_error_attempts_and_trace_and_retry_cancel_work() {
    let server = server_with_worker().await;
    let id = server
        .submit("echo", json!({ "fail": true, "note": "<b>escaped</b>" }))
        .await;
    assert_eq!(ended(&server, id).await, TaskState::Failed);
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get(&format!("/ui/tasks/{id}")).await;
    assert_eq!(page.status, 200);
    let body = &page.body;
    assert!(
        body.contains("&lt;b&gt;escaped&lt;/b&gt;"),
        "payload escaped: {body}"
    );
    assert!(!body.contains("<b>escaped</b>"));
    assert!(body.contains(r#"<span id="task-state" class="state failed">failed</span>"#));
    assert!(
        body.contains(r#"<pre class="error" id="task-error">"#),
        "{body}"
    );
    assert!(body.contains("500"), "the error names the status: {body}");
    assert!(body.contains("<table class=\"attempts\">"));
    // The trace is written in batches in the background; the page flushes it before reading,
    // so every step so far shows at once.
    assert!(
        body.contains("<td>submit</td>") && body.contains("<td>dispatch</td>"),
        "{body}"
    );
    assert!(body.contains("asked to fail"));
    // A finished task's live part does not ask to be refreshed.
    assert!(!body.contains("data-live="));
    assert!(body.contains("id=\"retry\"") && !body.contains("id=\"cancel\""));
    // Retry: a plain form is redirected back to the page; the task runs again.
    let csrf = page.csrf();
    let answer = browser
        .post(&format!("/ui/tasks/{id}/retry"), &[("csrf", &csrf)])
        .await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.location(), format!("/ui/tasks/{id}"));
    assert_eq!(ended(&server, id).await, TaskState::Failed);
    assert_eq!(server.task(id).await.attempt, 2);
    // From the script: the live part comes back instead of a redirect.
    let answer = browser
        .post_with(
            &format!("/ui/tasks/{id}/retry"),
            &[("csrf", &csrf)],
            &[("x-ui-fragment", "1")],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.starts_with("<section id=\"task-live\""),
        "{}",
        answer.body
    );
    // Retrying a task that is not failed or dead is a 409 page.
    ended(&server, id).await;
    let done = server.submit("echo", json!({ "n": 1 })).await;
    assert_eq!(ended(&server, done).await, TaskState::Completed);
    let refused = browser
        .post(&format!("/ui/tasks/{done}/retry"), &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, 409);
    assert!(refused.body.contains("class=\"error\""));
    let page = browser.get(&format!("/ui/tasks/{done}")).await;
    assert!(
        page.body.contains(r#"<pre class="json" id="task-result">"#),
        "{}",
        page.body
    );
    // Unknown and malformed ids.
    assert_eq!(browser.get("/ui/tasks/999999").await.status, 404);
    assert_eq!(browser.get("/ui/tasks/abc").await.status, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_numbered_as_they_ran_not_by_their_claim() {
    let (url, _) = http_worker(|body, _| reply(200, json!({ "echo": body["payload"] }))).await;
    let server = TestServer::start_with(Some(ADMIN), tempfile::tempdir().unwrap()).await;
    server
        .add_http_worker(
            "limited",
            &url,
            json!({ "rate_limit": { "per_second": 4, "burst": 1 } }),
        )
        .await;
    let first = server.submit("limited", json!({ "n": 1 })).await;
    let second = server.submit("limited", json!({ "n": 2 })).await;
    server.wait_end(first).await;
    let task = server.wait_end(second).await;
    assert_eq!(task.state, TaskState::Completed);
    // The second waited for the bucket: its run came under a later claim.
    assert!(task.attempt > 1, "{task:?}");
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get(&format!("/ui/tasks/{second}")).await;
    let attempts = page
        .body
        .split("<table class=\"attempts\">")
        .nth(1)
        .expect("an attempts table");
    assert!(attempts.contains("<th>Attempt</th>"), "{attempts}");
    assert!(attempts.contains("<tr><td>1</td>"), "{attempts}");
    assert!(
        !attempts.contains(&format!("<tr><td>{}</td>", task.attempt)),
        "{attempts}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_task_is_live_and_cancel_ends_it() {
    let server = server_with_worker().await;
    // Paused, its task stays pending.
    let (status, _) = server
        .call("POST", "/api/v1/workers/echo/pause", None)
        .await;
    assert_eq!(status, 200);
    let id = server.submit("echo", json!({ "n": 1 })).await;
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get(&format!("/ui/tasks/{id}")).await;
    assert!(
        page.body
            .contains(&format!(r#"data-live="/ui/tasks/{id}/live""#)),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"cancel\""));
    let list = browser.get("/ui/tasks").await;
    assert!(list.body.contains(&format!(r#"data-live-row="{id}""#)));
    let rows = browser.get(&format!("/ui/tasks/rows?id={id}")).await;
    assert_eq!(rows.status, 200);
    assert!(
        rows.body
            .contains(&format!(r#"<tr id="task-{id}" data-live-row="{id}">"#)),
        "{}",
        rows.body
    );
    assert_eq!(browser.get("/ui/tasks/rows?id=x").await.status, 400);
    let answer = browser
        .post_with(
            &format!("/ui/tasks/{id}/cancel"),
            &[("csrf", &page.csrf())],
            &[("x-ui-fragment", "1")],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains(r#"class="state canceled""#),
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains("data-live="),
        "an ended task is not refreshed"
    );
    assert_eq!(server.task(id).await.state, TaskState::Canceled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_creates_a_new_task_with_the_edited_payload_linked_to_the_original() {
    let server = server_with_worker().await;
    let id = server.submit("echo", json!({ "fail": true })).await;
    assert_eq!(ended(&server, id).await, TaskState::Failed);
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get(&format!("/ui/tasks/{id}")).await;
    // The form is pre-filled with the payload.
    assert!(
        page.body.contains("&quot;fail&quot;: true"),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    // Not JSON: a 400 naming the field, and no task.
    let bad = browser
        .post(
            &format!("/ui/tasks/{id}/replay"),
            &[("csrf", &csrf), ("payload", "{nope")],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("payload: not valid JSON"), "{}", bad.body);
    let answer = browser
        .post(
            &format!("/ui/tasks/{id}/replay"),
            &[
                ("csrf", &csrf),
                ("payload", r#"{"fail": false, "edited": 1}"#),
            ],
        )
        .await;
    assert_eq!(answer.status, 303);
    let new_id: i64 = answer
        .location()
        .strip_prefix("/ui/tasks/")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(new_id, id);
    let replayed = server.wait_end(new_id).await;
    assert_eq!(replayed.state, TaskState::Completed);
    assert_eq!(replayed.worker, "echo");
    assert_eq!(replayed.payload, json!({ "fail": false, "edited": 1 }));
    assert_eq!(
        replayed.result,
        Some(json!({ "echo": { "fail": false, "edited": 1 } }))
    );
    // Each task's trace names the other at the first look: a page flushes the buffered trace
    // before it reads it, and an ended task's page does not refresh itself.
    let page = browser.get(&format!("/ui/tasks/{new_id}")).await;
    assert!(
        page.body
            .contains(&format!(r#"replay of <a href="/ui/tasks/{id}">"#)),
        "{}",
        page.body
    );
    let page = browser.get(&format!("/ui/tasks/{id}")).await;
    assert!(
        page.body
            .contains(&format!(r#"replayed as <a href="/ui/tasks/{new_id}">"#)),
        "{}",
        page.body
    );
    let (_, logs) = server
        .call(
            "GET",
            &format!("/api/v1/logs?task={new_id}&action=replay"),
            None,
        )
        .await;
    assert_eq!(
        logs["entries"][0]["detail"],
        json!({ "replay_of": id }),
        "{logs}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_by_selection_and_all_matching_runs_in_the_background() {
    let server = server_with_worker().await;
    let (status, _) = server
        .call("POST", "/api/v1/workers/echo/pause", None)
        .await;
    assert_eq!(status, 200);
    let mut ids = Vec::new();
    for n in 0..25 {
        ids.push(server.submit("echo", json!({ "n": n })).await);
    }
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let csrf = browser.get("/ui/tasks").await.csrf();
    // Two selected rows.
    let (a, b) = (ids[0].to_string(), ids[1].to_string());
    let answer = browser
        .post(
            "/ui/tasks/bulk",
            &[
                ("csrf", &csrf),
                ("action", "cancel"),
                ("id", &a),
                ("id", &b),
            ],
        )
        .await;
    assert_eq!(answer.status, 303);
    let progress_path = answer.location().to_owned();
    assert!(progress_path.starts_with("/ui/bulk/"));
    let progress = wait_bulk_done(&mut browser, &progress_path).await;
    assert!(
        progress.contains("Cancel: 2 changed, 0 refused · done"),
        "{progress}"
    );
    // All matching the filter: the other 23 pending.
    let answer = browser
        .post(
            "/ui/tasks/bulk",
            &[
                ("csrf", &csrf),
                ("action", "cancel-all"),
                ("state", "pending"),
                ("worker", "echo"),
            ],
        )
        .await;
    let progress = wait_bulk_done(&mut browser, answer.location()).await;
    assert!(
        progress.contains("Cancel: 23 changed, 0 refused · done"),
        "{progress}"
    );
    let (_, pending) = server
        .call("GET", "/api/v1/tasks?state=pending", None)
        .await;
    assert_eq!(pending["tasks"], json!([]));
    // Retrying canceled tasks is refused per task, counted, and changes nothing.
    let answer = browser
        .post(
            "/ui/tasks/bulk",
            &[("csrf", &csrf), ("action", "retry"), ("id", &a)],
        )
        .await;
    let progress = wait_bulk_done(&mut browser, answer.location()).await;
    assert!(
        progress.contains("Retry: 0 changed, 1 refused"),
        "{progress}"
    );
    // Bad forms name the field.
    let bad = browser
        .post("/ui/tasks/bulk", &[("csrf", &csrf), ("action", "explode")])
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("action: must be"));
    let none = browser
        .post("/ui/tasks/bulk", &[("csrf", &csrf), ("action", "cancel")])
        .await;
    assert_eq!(none.status, 400);
    assert!(none.body.contains("id: select at least one task"));
    server.stop().await;
}

/// Reads a bulk action's progress page until it says done; its progress line.
async fn wait_bulk_done(browser: &mut Browser, path: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let re = regex::Regex::new(r#"<p class="progress" id="bulk-progress">([^<]*)</p>"#).unwrap();
    loop {
        let page = browser.get(path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let line = re.captures(&page.body).unwrap()[1].to_owned();
        if line.contains("done") {
            assert!(!page.body.contains("data-live="));
            return line;
        }
        assert!(page.body.contains(&format!(r#"data-live="{path}""#)));
        assert!(tokio::time::Instant::now() < deadline, "{line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_gives_each_visitor_a_session_with_a_csrf_token() {
    let server = TestServer::start().await;
    let mut browser = Browser::new(&server);
    let page = browser.get("/ui/tasks").await;
    assert_eq!(page.status, 200);
    assert!(browser.cookie.is_some(), "a session cookie");
    assert!(page.body.contains("(no key) · admin"), "{}", page.body);
    let csrf = page.csrf();
    assert_eq!(
        browser.get("/ui/tasks").await.csrf(),
        csrf,
        "the same session"
    );
    // The token is still checked.
    assert_eq!(
        browser
            .post("/ui/tasks/bulk", &[("action", "cancel-all")])
            .await
            .status,
        403
    );
    // Once a key exists, the open session ends.
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({ "name": "first", "scope": "admin" })),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(browser.get("/ui/tasks").await.status, 303);
    // The assets are served without a session, with their types.
    let mut anyone = Browser::new(&server);
    let script = anyone.get("/ui/assets/ui.js").await;
    assert_eq!(script.status, 200);
    assert!(
        script.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.body.contains("data-live"));
    let style = anyone.get("/ui/assets/ui.css").await;
    assert_eq!(style.status, 200);
    let root = anyone.get("/ui").await;
    assert_eq!(root.status, 303);
    assert!(root.location().starts_with("/ui/login"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_tasks_per_state_charts_failures_and_lists_failing_workers_and_dead_letters()
 {
    let (url, _) = http_worker(|_, _| reply(500, json!({ "oops": "always" }))).await;
    let server = TestServer::start_with(Some(ADMIN), tempfile::tempdir().unwrap()).await;
    // A transport failure is retried once, then the task is a dead letter.
    server
        .add_http_worker(
            "flaky",
            "http://127.0.0.1:9",
            json!({ "retry": { "max_retries": 1, "base_delay": "10ms", "max_delay": "20ms" } }),
        )
        .await;
    server.add_http_worker("broken", &url, json!({})).await;
    let dead = server.submit("flaky", json!({})).await;
    assert_eq!(ended(&server, dead).await, TaskState::Dead);
    for _ in 0..2 {
        let id = server.submit("broken", json!({})).await;
        assert_eq!(ended(&server, id).await, TaskState::Failed);
    }
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get("/ui").await;
    assert_eq!(page.status, 200);
    let count = |state: &str| -> String {
        let re = regex::Regex::new(&format!(
            r#"<tr id="count-{state}"><td><a href="/ui/tasks\?state={state}">.*?</a></td><td>(\d+)</td>"#
        ))
        .unwrap();
        re.captures(&page.body)
            .unwrap_or_else(|| panic!("no {state} count in {}", page.body))[1]
            .to_owned()
    };
    assert_eq!(count("failed"), "2");
    assert_eq!(count("dead"), "1");
    assert_eq!(count("pending"), "0");
    assert!(
        page.body.contains("<table class=\"dead\">"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(&format!(r#"<a href="/ui/tasks/{dead}">"#))
    );
    assert!(page.body.contains("No executor nodes or process workers."));
    // The workers failing now, most failures first, each linking to its failed and dead tasks.
    let failing = regex::Regex::new(
        r#"<tr><td>(\w+)</td><td>(\d+)</td><td><a href="/ui/tasks\?state=failed&amp;worker=(\w+)">"#,
    )
    .unwrap();
    let rows: Vec<(String, String)> = failing
        .captures_iter(&page.body)
        .map(|c| {
            assert_eq!(c[1], c[3]);
            (c[1].to_owned(), c[2].to_owned())
        })
        .collect();
    assert_eq!(
        rows,
        [("broken".into(), "2".into()), ("flaky".into(), "1".into())]
    );
    // The charts, drawn on the server: three ended tasks, all failed or dead, in this minute.
    for chart in ["chart-hour", "chart-day"] {
        assert!(
            page.body.contains(&format!(
                r#"<figure class="chart" id="{chart}"><figcaption><strong>"#
            )),
            "{}",
            page.body
        );
    }
    assert_eq!(
        page.body
            .matches("</strong>: 0 completed, 3 failed or dead")
            .count(),
        2,
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"<rect class="failed""#));
    assert!(!page.body.contains(r#"<rect class="completed""#));
    // The dispatch latency of the attempts this server ran.
    let latency = regex::Regex::new(r#"<p id="latency">p50 <strong>\d+ ms</strong> · p95 <strong>\d+ ms</strong> over (\d+) attempts"#).unwrap();
    let attempts: u64 = latency
        .captures(&page.body)
        .unwrap_or_else(|| panic!("no latency in {}", page.body))[1]
        .parse()
        .unwrap();
    assert!(attempts >= 4, "{attempts}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_list_filters_like_the_api_and_the_event_page_shows_each_workers_fate() {
    use crate::policy::comment_by;
    use crate::webhooks::{SECRET, add_source, deliver, fake_platform, github_headers, status};
    use mechanics_proto::domain::EventState;

    // The platform refuses every write-back (500): the answered event waits for another try.
    let (api, _) = fake_platform(|_| status(500, &[])).await;
    let (worker_url, _) = http_worker(|_, _| reply(200, json!({ "reply": "on it" }))).await;
    let server = TestServer::start_with(Some(ADMIN), tempfile::tempdir().unwrap()).await;
    add_source(&server, "gh", "github", SECRET, Some(&api)).await;
    server
        .add_http_worker(
            "triage",
            &worker_url,
            json!({
                "triggers": [{ "webhook": { "source": "gh", "events": ["issue_comment.created"] } }],
                "write_back": true,
                "policy": { "actors": { "allow": ["alice"] } },
            }),
        )
        .await;
    server
        .add_http_worker(
            "labeler",
            &worker_url,
            json!({ "triggers": [{ "webhook": { "source": "gh", "events": ["issues.opened"] } }] }),
        )
        .await;
    let mut ids = Vec::new();
    for (delivery, login) in [("d-alice", "alice"), ("d-eve", "eve")] {
        let body = comment_by(login, false, 1);
        let headers = github_headers(SECRET, delivery, "issue_comment", &body);
        let (code, answer, _) = deliver(&server, "gh", &headers, &body).await;
        assert_eq!(code, 202, "{answer}");
        ids.push(answer["event_id"].as_i64().unwrap());
    }
    let (answered, refused) = (ids[0], ids[1]);
    crate::webhooks::wait_event(&server, answered, EventState::WriteBackFailed).await;
    crate::webhooks::wait_event(&server, refused, EventState::Ignored).await;

    let mut browser = Browser::new(&server);
    assert_eq!(browser.get("/ui/events").await.status, 303, "signed out");
    browser.sign_in(ADMIN).await;

    // The list: newest first, the API's filters in the URL, empty form fields ignored.
    let list = browser.get("/ui/events?state=&source=&type=").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let (at_answered, at_refused) = (
        list.body
            .find(&format!(r#"id="event-{answered}""#))
            .unwrap(),
        list.body.find(&format!(r#"id="event-{refused}""#)).unwrap(),
    );
    assert!(at_refused < at_answered, "newest first: {}", list.body);
    assert!(list.body.contains(r#"<a href="/ui/events">Events</a>"#));
    let ignored = browser.get("/ui/events?state=ignored&source=gh").await;
    assert_eq!(ignored.status, 200);
    assert!(ignored.body.contains(&format!(r#"id="event-{refused}""#)));
    assert!(!ignored.body.contains(&format!(r#"id="event-{answered}""#)));
    assert!(
        ignored
            .body
            .contains(r#"<option value="ignored" selected>"#)
    );
    let other_type = browser.get("/ui/events?type=issues.opened").await;
    assert!(
        other_type.body.contains("No events match."),
        "{}",
        other_type.body
    );
    // Cursor paging keeps the filters.
    let first = browser.get("/ui/events?source=gh&limit=1").await;
    assert!(first.body.contains(&format!(r#"id="event-{refused}""#)));
    let next = format!("/ui/events?source=gh&amp;limit=1&amp;cursor={refused}");
    assert!(first.body.contains(&next), "{}", first.body);
    let second = browser.get(&next.replace("&amp;", "&")).await;
    assert!(second.body.contains(&format!(r#"id="event-{answered}""#)));
    assert!(!second.body.contains(&format!(r#"id="event-{refused}""#)));
    for (query, field) in [
        ("state=lost", "state"),
        ("limit=0", "limit"),
        ("cursor=x", "cursor"),
        ("colour=red", "colour"),
    ] {
        let bad = browser.get(&format!("/ui/events?{query}")).await;
        assert_eq!(bad.status, 400, "{query}");
        assert!(bad.body.contains(field), "{query}: {}", bad.body);
    }

    // The answered event: its task, the policy's yes, the failed write-back and its error, and
    // the worker whose trigger did not match, with why.
    let (_, api_detail) = server
        .call("GET", &format!("/api/v1/events/{answered}"), None)
        .await;
    let task = api_detail["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == "triage")
        .unwrap()["task"]["id"]
        .as_i64()
        .unwrap();
    let page = browser.get(&format!("/ui/events/{answered}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for fragment in [
        r#"<dd id="source">gh</dd>"#.to_owned(),
        r#"<dd id="type">issue_comment.created</dd>"#.to_owned(),
        r#"<dd id="actor">alice</dd>"#.to_owned(),
        r#"<dd id="delivery">d-alice</dd>"#.to_owned(),
        r#"<span class="state write_back_failed">write_back_failed</span>"#.to_owned(),
        // Worded as `mechanics event show` words it: the next try's time and the last error.
        r#"<dd id="write-back">retrying at 20"#.to_owned(),
        r#"<dd class="error" id="error">"#.to_owned(),
        format!(r#"<tr id="worker-triage"><td><a href="/ui/tasks?worker=triage">triage</a></td><td>yes</td><td>ok</td><td><a href="/ui/tasks/{task}">#{task}</a>"#),
        r#"<tr id="worker-labeler"><td><a href="/ui/tasks?worker=labeler">labeler</a></td><td>no: <span class="why">"#.to_owned(),
    ] {
        assert!(page.body.contains(&fragment), "{fragment} in {}", page.body);
    }
    // The task's page links back to its event.
    let task_page = browser.get(&format!("/ui/tasks/{task}")).await;
    assert!(
        task_page.body.contains(&format!(
            r#"<dd><a href="/ui/events/{answered}">#{answered}</a></dd>"#
        )),
        "{}",
        task_page.body
    );
    let error = api_detail["error"].as_str().unwrap();
    assert!(error.contains("500"), "{error}");
    // The payload is shown as JSON, escaped.
    assert!(
        page.body.contains("&quot;login&quot;: &quot;alice&quot;"),
        "{}",
        page.body
    );

    // The refused event: the policy's no and its reason, and no task.
    let page = browser.get(&format!("/ui/events/{refused}")).await;
    assert!(
        page.body.contains(r#"<dd id="actor">eve</dd>"#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"<td>deny: <span class="why">actor_not_allowed: "#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"<td>—</td></tr>"#));

    assert_eq!(browser.get("/ui/events/999999").await.status, 404);
    assert_eq!(browser.get("/ui/events/abc").await.status, 400);
    // A read key sees events too: they are for looking.
    let reader = key_with_scope(&server, "reader", "read").await;
    let mut read = Browser::new(&server);
    read.sign_in(&reader).await;
    assert_eq!(
        read.get(&format!("/ui/events/{answered}")).await.status,
        200
    );
    server.stop().await;
}

/// An executor with one local node `n1` whose breaker is tripped until it is reset: the seam
/// through which the server asks for node states and resets (the real pool's breaker is tested
/// with the pool).
struct TrippedNode {
    tripped: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl mechanics_server::JsExecutor for TrippedNode {
    async fn run(
        &self,
        _job: mechanics_proto::node::JobRequest,
    ) -> mechanics_server::AttemptOutput {
        mechanics_server::Outcome::Completed(json!("done")).into()
    }
    fn validate(
        &self,
        _: Option<&serde_json::Value>,
        _: Option<&serde_json::Value>,
    ) -> Result<(), String> {
        Ok(())
    }
    fn nodes(&self) -> Vec<mechanics_proto::api::NodeView> {
        let tripped = self.tripped.load(std::sync::atomic::Ordering::SeqCst);
        let node = json!({
            "name": "n1", "kind": "local",
            "state": if tripped { "tripped" } else { "running" },
            "breaker": if tripped { "tripped" } else { "closed" },
            "in_flight": 3, "jobs": 7, "starts": 4, "deaths": 3, "restarts": 3,
            "last_error": "exited <1>",
        });
        vec![serde_json::from_value(node).unwrap()]
    }
    fn reset(&self, name: &str) -> bool {
        if name != "n1" {
            return false;
        }
        self.tripped
            .store(false, std::sync::atomic::Ordering::SeqCst);
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_page_shows_state_breaker_and_in_flight_and_reset_rearms_a_breaker() {
    let node = std::sync::Arc::new(TrippedNode {
        tripped: std::sync::atomic::AtomicBool::new(true),
    });
    let server = TestServer::start_with_js_and_key(node.clone(), ADMIN).await;
    let reader = key_with_scope(&server, "reader", "read").await;
    let operator = key_with_scope(&server, "operator", "operate").await;

    // A read key sees the node but no Reset, and its forged Reset is refused.
    let mut read = Browser::new(&server);
    read.sign_in(&reader).await;
    let page = read.get("/ui/nodes").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(
            r#"<tr id="node-n1"><td>n1</td><td>local</td><td class="node-state">tripped</td><td class="breaker">tripped</td><td>3</td><td>7</td><td>3</td><td class="error">exited &lt;1&gt;</td></tr>"#
        ),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"<a href="/ui/nodes">Nodes</a>"#));
    assert!(!page.body.contains("Reset"), "{}", page.body);
    let csrf = page.csrf();
    let refused = read.post("/ui/nodes/n1/reset", &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(node.tripped.load(std::sync::atomic::Ordering::SeqCst));

    // An operate key gets the button; without the CSRF token, or with another session's, the
    // Reset is refused and changes nothing.
    let mut operate = Browser::new(&server);
    operate.sign_in(&operator).await;
    let page = operate.get("/ui/nodes").await;
    assert!(
        page.body
            .contains(r#"<form method="post" action="/ui/nodes/n1/reset">"#),
        "{}",
        page.body
    );
    assert_eq!(operate.post("/ui/nodes/n1/reset", &[]).await.status, 403);
    let wrong = operate.post("/ui/nodes/n1/reset", &[("csrf", &csrf)]).await;
    assert_eq!(wrong.status, 403);
    assert!(node.tripped.load(std::sync::atomic::Ordering::SeqCst));

    // With it, the breaker is re-armed and the page says so.
    let csrf = page.csrf();
    let done = operate.post("/ui/nodes/n1/reset", &[("csrf", &csrf)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location(), "/ui/nodes");
    assert!(!node.tripped.load(std::sync::atomic::Ordering::SeqCst));
    let page = operate.get("/ui/nodes").await;
    assert!(
        page.body.contains(r#"<td class="breaker">closed</td>"#),
        "{}",
        page.body
    );
    let (_, nodes) = server.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(nodes["nodes"][0]["breaker"], "closed", "{nodes}");

    // An unknown node is a 404 page naming it; an admin key may reset too.
    let mut admin = Browser::new(&server);
    admin.sign_in(ADMIN).await;
    let csrf = admin.get("/ui/nodes").await.csrf();
    let missing = admin
        .post("/ui/nodes/nobody/reset", &[("csrf", &csrf)])
        .await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("nobody"), "{}", missing.body);
    assert_eq!(
        admin
            .post("/ui/nodes/n1/reset", &[("csrf", &csrf)])
            .await
            .status,
        303
    );
    server.stop().await;
}

/// The ids of the task rows of a Tasks page, in order.
fn row_ids(body: &str) -> Vec<i64> {
    let re = regex::Regex::new(r#"<tr id="task-(\d+)""#).unwrap();
    re.captures_iter(body)
        .map(|c| c[1].parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_list_searches_shown_text_and_filters_by_since_in_links_and_bulk() {
    let server = server_with_worker().await;
    let (status, _) = server
        .call("POST", "/api/v1/workers/echo/pause", None)
        .await;
    assert_eq!(status, 200);
    let octo = server
        .submit("echo", json!({ "user": "OctoCat", "n": 1 }))
        .await;
    let other = server.submit("echo", json!({ "user": "hubot" })).await;
    let octo_too = server
        .submit("echo", json!({ "note": "for octocat", "n": 2 }))
        .await;
    // A secret of the payload is shown redacted: a search must not find it by its text.
    let secret = server
        .submit("echo", json!({ "password": "hunter2-octo" }))
        .await;
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;

    let page = browser.get("/ui/tasks?q=octocat").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(row_ids(&page.body), [octo_too, octo]);
    assert!(page.body.contains(r#"name="q" value="octocat""#));
    assert_eq!(
        row_ids(&browser.get("/ui/tasks?q=hunter2").await.body),
        Vec::<i64>::new()
    );
    assert_eq!(
        row_ids(&browser.get("/ui/tasks?q=password").await.body),
        [secret]
    );
    // Only shown text is read: the newest task matches "octo" only in its hidden secret, so the
    // first page of one is the next task that shows it.
    assert_eq!(
        row_ids(&browser.get("/ui/tasks?q=octo&limit=1").await.body),
        [octo_too]
    );
    // A text found only in a secret answers exactly as a text found nowhere, tasks and cursor
    // alike, from any cursor: no answer tells whether a secret holds it.
    for cursor in [String::new(), format!("&cursor={}", secret + 1)] {
        let (_, hidden) = server
            .call(
                "GET",
                &format!("/api/v1/tasks?q=hunter2&limit=1{cursor}"),
                None,
            )
            .await;
        let (_, nowhere) = server
            .call(
                "GET",
                &format!("/api/v1/tasks?q=zz-nowhere&limit=1{cursor}"),
                None,
            )
            .await;
        assert_eq!(hidden["tasks"], json!([]), "{hidden}");
        assert_eq!(hidden, nowhere);
    }
    // The API takes the same filters and hides the same.
    let (status, listed) = server.call("GET", "/api/v1/tasks?q=OCTOCAT", None).await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<i64> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [octo_too, octo]);
    let (_, hidden) = server.call("GET", "/api/v1/tasks?q=hunter2", None).await;
    assert_eq!(hidden["tasks"], json!([]));

    // `since`: relative or RFC 3339; anything else is a clear error.
    assert_eq!(
        row_ids(&browser.get("/ui/tasks?since=1h").await.body),
        [secret, octo_too, other, octo]
    );
    assert_eq!(
        row_ids(
            &browser
                .get("/ui/tasks?since=2999-01-01T00:00:00Z")
                .await
                .body
        ),
        Vec::<i64>::new()
    );
    let bad = browser.get("/ui/tasks?since=yesterday").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("since: ") && bad.body.contains("neither a duration back from now"),
        "{}",
        bad.body
    );
    let (status, bad) = server
        .call("GET", "/api/v1/tasks?since=yesterday", None)
        .await;
    assert_eq!(status, 400, "{bad}");

    // Paging keeps both filters in the link.
    let first = browser.get("/ui/tasks?q=octocat&since=1h&limit=1").await;
    assert_eq!(row_ids(&first.body), [octo_too]);
    let next = regex::Regex::new(r#"<a rel="next" href="([^"]+)""#).unwrap();
    let link = next.captures(&first.body).unwrap()[1].replace("&amp;", "&");
    assert!(
        link.contains("since=1h") && link.contains("q=octocat"),
        "{link}"
    );
    assert_eq!(row_ids(&browser.get(&link).await.body), [octo]);

    // "All matching" takes the same filters: only the two tasks that show "octocat".
    assert!(
        first
            .body
            .contains(r#"<input type="hidden" name="q" value="octocat">"#)
    );
    assert!(
        first
            .body
            .contains(r#"<input type="hidden" name="since" value="1h">"#)
    );
    let answer = browser
        .post(
            "/ui/tasks/bulk",
            &[
                ("csrf", &first.csrf()),
                ("action", "cancel-all"),
                ("q", "octocat"),
                ("since", "1h"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let progress = wait_bulk_done(&mut browser, answer.location()).await;
    assert!(
        progress.contains("Cancel: 2 changed, 0 refused · done"),
        "{progress}"
    );
    assert_eq!(
        row_ids(&browser.get("/ui/tasks?state=pending").await.body),
        [secret, other]
    );
    let bad = browser
        .post(
            "/ui/tasks/bulk",
            &[
                ("csrf", &first.csrf()),
                ("action", "cancel-all"),
                ("since", "soon"),
            ],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("since: "), "{}", bad.body);
    assert_eq!(
        row_ids(&browser.get("/ui/tasks?state=pending").await.body),
        [secret, other]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_shows_a_secret_and_refuses_a_payload_still_redacted() {
    let server = server_with_worker().await;
    let id = server
        .submit("echo", json!({ "password": "hunter2", "n": 1 }))
        .await;
    assert_eq!(ended(&server, id).await, TaskState::Completed);
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get(&format!("/ui/tasks/{id}")).await;
    assert!(!page.body.contains("hunter2"), "{}", page.body);
    assert!(
        page.body.contains(r#"id="replay-redacted""#),
        "{}",
        page.body
    );
    let (_, before) = server.call("GET", "/api/v1/tasks", None).await;
    let refused = browser
        .post(
            &format!("/ui/tasks/{id}/replay"),
            &[
                ("csrf", &page.csrf()),
                ("payload", r#"{"password": "[redacted]", "n": 1}"#),
            ],
        )
        .await;
    assert_eq!(refused.status, 400);
    assert!(
        refused
            .body
            .contains("payload: it still holds [redacted] where the dashboard hid a secret"),
        "{}",
        refused.body
    );
    let (_, after) = server.call("GET", "/api/v1/tasks", None).await;
    assert_eq!(before["tasks"], after["tasks"], "no task was created");
    // With the value typed again, the replay runs on it.
    let replayed = browser
        .post(
            &format!("/ui/tasks/{id}/replay"),
            &[
                ("csrf", &page.csrf()),
                ("payload", r#"{"password": "hunter3", "n": 2}"#),
            ],
        )
        .await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
    let new_id: i64 = replayed
        .location()
        .trim_start_matches("/ui/tasks/")
        .parse()
        .unwrap();
    server.wait_end(new_id).await;
    // As stored (the API and the pages show it redacted).
    let stored = server.store.get_task(new_id).await.unwrap().unwrap();
    assert_eq!(stored.payload, json!({ "password": "hunter3", "n": 2 }));
    // A payload without secrets gets no warning.
    let plain = server.submit("echo", json!({ "n": 3 })).await;
    let page = browser.get(&format!("/ui/tasks/{plain}")).await;
    assert!(!page.body.contains("replay-redacted"), "{}", page.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_with_a_revoked_keys_name_does_not_revive_its_sessions() {
    let server = server_with_worker().await;
    let old = key_with_scope(&server, "ops", "operate").await;
    let mut browser = Browser::new(&server);
    assert_eq!(browser.sign_in(&old).await.status, 303);
    assert_eq!(browser.get("/ui/tasks").await.status, 200);
    let (status, _) = server.call("DELETE", "/api/v1/keys/ops", None).await;
    assert_eq!(status, 204);
    let new = key_with_scope(&server, "ops", "operate").await;
    assert_ne!(old, new);
    // The revoked key's session stays ended, though a key of its name and scope exists again.
    let answer = browser.get("/ui/tasks").await;
    assert_eq!(answer.status, 303);
    assert!(answer.location().starts_with("/ui/login"));
    // The new key signs in as itself.
    let mut other = Browser::new(&server);
    assert_eq!(other.sign_in(&new).await.status, 303);
    assert_eq!(other.get("/ui/tasks").await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_limited_per_address_even_with_the_right_key() {
    let server = server_with_worker().await;
    let mut browser = Browser::new(&server);
    // The burst: ten attempts, wrong keys.
    for _ in 0..10 {
        let answer = browser.sign_in("not-the-key").await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    // Then even the right key is refused until a token is back.
    let answer = browser.sign_in(ADMIN).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry_after), "{retry_after}");
    assert!(
        answer
            .body
            .contains("too many sign-in attempts from your address; try again in"),
        "{}",
        answer.body
    );
    assert!(browser.cookie.is_none(), "no session was opened");
    // Another address has its own limit.
    let mut elsewhere = Browser::new(&server);
    elsewhere.client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    assert_eq!(elsewhere.sign_in(ADMIN).await.status, 303);
    server.stop().await;
}

mod pages;
