//! The dashboard's Workers, Worker (with Run test), Sources, Logs and Keys pages over real
//! HTTP: what each shows, the scope and CSRF refusals of their forms, and bad input.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{ADMIN, Browser, key_with_scope};
use crate::support::TestServer;

/// The executor seam: every job completes with what the dispatcher built for it (the task the
/// module saw and its payload) and the header its config resolved to, and writes one console
/// line naming the payload; a payload with `"throw"` fails as a script error would. It keeps
/// the jobs, so a test sees whether anything ran.
#[derive(Default)]
struct EchoNode {
    jobs: Mutex<Vec<mechanics_proto::node::JobRequest>>,
}

#[async_trait::async_trait]
impl mechanics_server::JsExecutor for EchoNode {
    async fn run(&self, job: mechanics_proto::node::JobRequest) -> mechanics_server::AttemptOutput {
        let payload = job.arg["payload"].clone();
        let header =
            job.config.clone().unwrap_or_default()["endpoints"]["api"]["headers"]["x-custom"]
                .clone();
        let console = vec![mechanics_proto::domain::ConsoleLine {
            level: mechanics_proto::domain::ConsoleLevel::Log,
            ts: 0,
            message: format!("got {payload} with {header}"),
        }];
        let outcome = match payload.get("throw") {
            Some(message) => {
                mechanics_server::Outcome::Failed(format!("Error: {}", message.as_str().unwrap()))
            }
            None => mechanics_server::Outcome::Completed(json!({
                "task": job.arg["task"], "payload": payload, "header": header,
            })),
        };
        self.jobs.lock().unwrap().push(job);
        mechanics_server::AttemptOutput {
            outcome,
            console,
            node: Some("n1".to_owned()),
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

/// A server with the admin key running js on `js`, and a js worker `echo-js` whose module holds
/// markup and whose config names an environment variable (standing in for an operator's
/// secret: cargo sets it for every test process).
async fn server_with_js_worker(js: Arc<EchoNode>) -> TestServer {
    let server = TestServer::start_with_js_and_key(js, ADMIN).await;
    let spec = json!({ "spec": {
        "name": "echo-js", "kind": "js", "module": "m.js", "triggers": [{ "api": true }],
        "rate_limit": { "per_second": 3, "burst": 7 },
        "config": { "endpoints": { "api": {
            "method": "post", "url_template": "http://127.0.0.1:9/x",
            "headers": { "x-custom": "k=${env:CARGO_MANIFEST_DIR}" },
        } } },
    }, "module_source": "// <script>alert(1)</script>\nexport default function main(arg) { return arg; }\n" });
    let (status, body) = server.call("POST", "/api/v1/workers", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_list_and_a_workers_page_show_spec_counts_source_and_recent_tasks() {
    let js = Arc::new(EchoNode::default());
    let server = server_with_js_worker(js.clone()).await;
    let id = server.submit("echo-js", json!({ "n": 1 })).await;
    server.wait_end(id).await;
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;

    let list = browser.get("/ui/workers").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let row = list
        .body
        .split(r#"<tr id="worker-echo-js">"#)
        .nth(1)
        .unwrap();
    let row = row.split("</tr>").next().unwrap();
    for shown in [
        r#"<a href="/ui/workers/echo-js">echo-js</a>"#,
        "<td>js</td>",
        "<td>api</td>",
        "3/s, burst 7",
        r#"href="/ui/tasks?state=completed&amp;worker=echo-js""#,
        "1 created, 1 completed, 0 failed, 0 dead",
    ] {
        assert!(row.contains(shown), "{shown} missing: {row}");
    }
    // The dispatch latency of the one attempt, in the last hour on this server.
    assert!(row.matches(" ms</td>").count() == 2, "p50 and p95: {row}");
    assert!(list.body.contains(r#"<a href="/ui/workers">Workers</a>"#));

    let page = browser.get("/ui/workers/echo-js").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(r#"<dd id="kind">js</dd>"#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"<dd id="rate-limit">3/s, burst 7</dd>"#)
    );
    // The module is escaped, never markup; the config shows the reference, not the value.
    assert!(
        page.body
            .contains("// &lt;script&gt;alert(1)&lt;/script&gt;")
    );
    assert!(!page.body.contains("<script>alert"));
    assert!(page.body.contains("${env:CARGO_MANIFEST_DIR}"));
    let secret = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    assert!(!page.body.contains(&secret));
    assert!(
        page.body
            .contains(&format!(r#"<a href="/ui/tasks/{id}">#{id}</a>"#))
    );
    assert!(
        page.body
            .contains(r#"action="/ui/workers/echo-js/test#run-test""#)
    );

    let missing = browser.get("/ui/workers/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no worker named"), "{}", missing.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_test_runs_the_module_on_the_payload_without_storing_a_task() {
    let js = Arc::new(EchoNode::default());
    let server = server_with_js_worker(js.clone()).await;
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let csrf = browser.get("/ui/workers/echo-js").await.csrf();
    let path = "/ui/workers/echo-js/test";

    let ran = browser
        .post(path, &[("csrf", &csrf), ("payload", r#"{"n": 7}"#)])
        .await;
    assert_eq!(ran.status, 200, "{}", ran.body);
    // The job the dispatcher would build: task 0 (none stored), the payload as typed.
    assert!(
        ran.body.contains(r#"<pre class="json" id="test-output">"#),
        "{}",
        ran.body
    );
    assert!(ran.body.contains("&quot;n&quot;: 7"), "{}", ran.body);
    assert!(ran.body.contains("&quot;id&quot;: 0"), "{}", ran.body);
    assert!(ran.body.contains("Result (on n1)"));
    assert!(ran.body.contains(r#"id="test-console""#));
    // The config's variable reached the job, and is redacted from result and console.
    let secret = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    assert_eq!(
        js.jobs.lock().unwrap()[0].config.as_ref().unwrap()["endpoints"]["api"]["headers"]["x-custom"],
        json!(format!("k={secret}"))
    );
    assert!(!ran.body.contains(&secret), "{}", ran.body);
    // The payload stays in the form for the next run.
    assert!(ran.body.contains(r#"{&quot;n&quot;: 7}</textarea>"#));
    let (_, tasks) = server.call("GET", "/api/v1/tasks", None).await;
    assert_eq!(tasks["tasks"], json!([]), "no task stored");

    // A script error is shown as one.
    let failed = browser
        .post(
            path,
            &[("csrf", &csrf), ("payload", r#"{"throw": "boom"}"#)],
        )
        .await;
    assert_eq!(failed.status, 200);
    assert!(
        failed
            .body
            .contains(r#"<pre class="error" id="test-error">Error: boom</pre>"#),
        "{}",
        failed.body
    );
    assert_eq!(js.jobs.lock().unwrap().len(), 2);

    // Bad input runs nothing: not JSON, or no payload at all.
    for form in [
        vec![("csrf", csrf.as_str()), ("payload", "{ not json")],
        vec![("csrf", csrf.as_str())],
    ] {
        let bad = browser.post(path, &form).await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        assert!(bad.body.contains("payload: not valid JSON"), "{}", bad.body);
    }
    // No CSRF token, an unknown worker: refused, nothing run.
    let forged = browser.post(path, &[("payload", "{}")]).await;
    assert_eq!(forged.status, 403);
    let unknown = browser
        .post(
            "/ui/workers/nope/test",
            &[("csrf", &csrf), ("payload", "{}")],
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(js.jobs.lock().unwrap().len(), 2);

    // A read key sees no form, and its POST is refused.
    let reader = key_with_scope(&server, "reader", "read").await;
    let mut read = Browser::new(&server);
    read.sign_in(&reader).await;
    let page = read.get("/ui/workers/echo-js").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("/test#run-test"), "{}", page.body);
    assert!(!page.body.contains("<button type=\"submit\">Run test"));
    let refused = read
        .post(path, &[("csrf", &page.csrf()), ("payload", "{}")])
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("needs the `operate` scope"));
    assert_eq!(js.jobs.lock().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sources_page_names_where_secrets_are_read_never_their_values_and_counts_events() {
    use crate::policy::comment_by;
    use crate::webhooks::{SECRET, TOKEN, add_source, deliver, github_headers};

    let server = TestServer::start_with(Some(ADMIN), tempfile::tempdir().unwrap()).await;
    add_source(&server, "gh", "github", SECRET, None).await;
    add_source(&server, "quiet", "github", SECRET, None).await;
    for (delivery, issue) in [("d-1", 1), ("d-2", 2)] {
        let body = comment_by("alice", false, issue);
        let headers = github_headers(SECRET, delivery, "issue_comment", &body);
        let (code, answer, _) = deliver(&server, "gh", &headers, &body).await;
        assert_eq!(code, 202, "{answer}");
    }
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;
    let page = browser.get("/ui/sources").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let secret_file = server.dir.path().join("gh.secret");
    let row = page.body.split(r#"<tr id="source-gh">"#).nth(1).unwrap();
    let row = row.split("</tr>").next().unwrap();
    for shown in [
        r#"<a href="/ui/events?source=gh">gh</a>"#.to_owned(),
        "<td>github</td>".to_owned(),
        format!(r#"<td class="secret">file {}</td>"#, secret_file.display()),
        r#"<td class="recent">2</td>"#.to_owned(),
    ] {
        assert!(row.contains(&shown), "{shown} missing: {row}");
    }
    let quiet = page.body.split(r#"<tr id="source-quiet">"#).nth(1).unwrap();
    assert!(quiet.contains(r#"<td class="recent">0</td>"#));
    assert!(quiet.contains("<td>never</td>"));
    assert!(!page.body.contains(SECRET));
    assert!(!page.body.contains(TOKEN));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_page_takes_the_logs_filters_pages_by_cursor_and_tails_live() {
    let js = Arc::new(EchoNode::default());
    let server = server_with_js_worker(js).await;
    let first = server.submit("echo-js", json!({ "n": 1 })).await;
    let second = server.submit("echo-js", json!({ "n": 2 })).await;
    server.wait_end(first).await;
    server.wait_end(second).await;
    let mut browser = Browser::new(&server);
    browser.sign_in(ADMIN).await;

    // Newest first, the filters as `/logs` takes them (empty form fields ignored).
    let page = browser
        .get("/ui/logs?action=submit&worker=echo-js&outcome=&since=1h")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let at = |id: i64| {
        page.body
            .find(&format!(r#"<a href="/ui/tasks/{id}">"#))
            .unwrap_or_else(|| panic!("task {id} missing: {}", page.body))
    };
    assert!(at(second) < at(first), "newest first");
    assert_eq!(page.body.matches("<td>submit</td>").count(), 2);
    assert!(
        page.body
            .contains(r#"<option value="submit" selected>submit</option>"#)
    );
    assert!(page.body.contains(r#"value="1h""#));
    assert!(!page.body.contains("data-live"), "not tailing");

    // One a page: the cursor leads to the older one, keeping the filters.
    let one = browser.get("/ui/logs?action=submit&limit=1").await;
    assert!(one.body.contains(&format!("/ui/tasks/{second}")));
    assert!(!one.body.contains(&format!("/ui/tasks/{first}\"")));
    let next = regex::Regex::new(r#"rel="next" href="([^"]+)""#).unwrap();
    let older = next.captures(&one.body).unwrap()[1].replace("&amp;", "&");
    assert!(
        older.starts_with("/ui/logs?action=submit&limit=1&cursor="),
        "{older}"
    );
    let older = browser.get(&older).await;
    assert!(
        older.body.contains(&format!("/ui/tasks/{first}\"")),
        "{}",
        older.body
    );

    // Live tail: the table names its own URL for the script's refresh, on the first page only.
    let live = browser.get("/ui/logs?worker=echo-js&live=1").await;
    assert!(
        live.body
            .contains(r#"<section id="log-live" data-live="/ui/logs?worker=echo-js&amp;live=1">"#),
        "{}",
        live.body
    );
    let paged = browser.get("/ui/logs?worker=echo-js&live=1&cursor=2").await;
    assert!(!paged.body.contains("data-live"));

    // Bad filters: a 400 naming them.
    let unknown = browser.get("/ui/logs?colour=red").await;
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.body.contains("unknown query parameter"),
        "{}",
        unknown.body
    );
    let bad = browser.get("/ui/logs?action=nap").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("action:"), "{}", bad.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_for_admins_created_once_shown_and_revoked_with_csrf() {
    let server = TestServer::start_with(Some(ADMIN), tempfile::tempdir().unwrap()).await;
    let operator = key_with_scope(&server, "operator", "operate").await;
    let mut admin = Browser::new(&server);
    admin.sign_in(ADMIN).await;

    let page = admin.get("/ui/keys").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"<tr id="key-operator">"#));
    assert!(page.body.contains(r#"<td class="scope">operate</td>"#));
    assert!(page.body.contains(r#"<a href="/ui/keys">Keys</a>"#));
    assert!(!page.body.contains(&operator));
    let csrf = page.csrf();

    // Create: the secret once, then never again.
    let created = admin
        .post(
            "/ui/keys",
            &[
                ("csrf", &csrf),
                ("name", "bot"),
                ("scope", "read"),
                ("expires_in_days", "30"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(created.body.contains("it is not shown again"));
    let secret = regex::Regex::new(r#"<code id="new-secret">([^<]+)</code>"#)
        .unwrap()
        .captures(&created.body)
        .unwrap()[1]
        .to_owned();
    let (_, keys) = server.call("GET", "/api/v1/keys", None).await;
    let bot = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bot")
        .unwrap()
        .clone();
    assert_eq!(bot["scope"], "read");
    let expires = bot["expires_at"].as_i64().unwrap() - bot["created_at"].as_i64().unwrap();
    assert_eq!(expires, 30 * 24 * 3600 * 1000);
    let listed = admin.get("/ui/keys").await;
    assert!(listed.body.contains(r#"<tr id="key-bot">"#));
    assert!(!listed.body.contains(&secret));
    let mut bot_browser = Browser::new(&server);
    assert_eq!(
        bot_browser.sign_in(&secret).await.status,
        303,
        "the key works"
    );

    // Bad input: a 400 naming the field, nothing created.
    for (form, field) in [
        (vec![("name", "x"), ("scope", "god")], "scope:"),
        (
            vec![
                ("name", "x"),
                ("scope", "read"),
                ("expires_in_days", "soon"),
            ],
            "expires_in_days:",
        ),
        (
            vec![("name", "x"), ("scope", "read"), ("expires_in_days", "0")],
            "expires_in_days:",
        ),
        (vec![("name", ""), ("scope", "read")], "name: required"),
        (vec![("name", "bot"), ("scope", "read")], "bot"),
    ] {
        let mut form = form;
        form.push(("csrf", &csrf));
        let bad = admin.post("/ui/keys", &form).await;
        assert!(
            bad.status == 400 || bad.status == 409,
            "{}: {}",
            bad.status,
            bad.body
        );
        assert!(bad.body.contains(field), "{field}: {}", bad.body);
    }
    let (_, keys) = server.call("GET", "/api/v1/keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");

    // Without the CSRF token: refused, the key stays.
    let forged = admin.post("/ui/keys/bot/revoke", &[]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(bot_browser.get("/ui/tasks").await.status, 200);
    // Revoke: gone from the list, and its session ends.
    let revoked = admin.post("/ui/keys/bot/revoke", &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, 303);
    assert_eq!(revoked.location(), "/ui/keys");
    assert!(!admin.get("/ui/keys").await.body.contains("key-bot"));
    assert_eq!(bot_browser.get("/ui/tasks").await.status, 303, "signed out");
    let again = admin.post("/ui/keys/bot/revoke", &[("csrf", &csrf)]).await;
    assert_eq!(again.status, 404);

    // An operate key: no Keys link, 403 on the page and on both forms.
    let mut op = Browser::new(&server);
    op.sign_in(&operator).await;
    let tasks = op.get("/ui/tasks").await;
    assert!(!tasks.body.contains(r#"href="/ui/keys""#));
    let refused = op.get("/ui/keys").await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("needs the `admin` scope"),
        "{}",
        refused.body
    );
    let op_csrf = tasks.csrf();
    let create = op
        .post(
            "/ui/keys",
            &[("csrf", &op_csrf), ("name", "mine"), ("scope", "admin")],
        )
        .await;
    assert_eq!(create.status, 403);
    let revoke = op
        .post("/ui/keys/operator/revoke", &[("csrf", &op_csrf)])
        .await;
    assert_eq!(revoke.status, 403);
    let (_, keys) = server.call("GET", "/api/v1/keys", None).await;
    let names: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["operator"]);
    server.stop().await;
}
