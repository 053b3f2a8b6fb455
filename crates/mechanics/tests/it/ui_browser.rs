//! The `/ui` dashboard in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium` and `chromium-driver`, which `scripts/test.sh` installs)
//! against a real `mechanics serve`. One browser session walks through the scenarios in order,
//! so the suite starts one driver and one browser: sign in; see a failed task counted on the
//! Overview; see the server's js node on the Nodes page and Reset its breaker; find the failed
//! task through the filter; open it, Retry, and watch it complete without a reload; Replay it
//! with an edited payload (bad JSON is caught before it is sent) and see the
//! new task's result; refuse a forged POST without the CSRF token; bulk-cancel 20 pending
//! tasks; open Workers, a worker, and Run test on a typed payload; tail the Logs live; create
//! a key on the Keys page; and, signed in with a `read` key, see no buttons. Each view's
//! screenshot is saved under `target/ui-screenshots/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{BIN, Coordinator};

/// The configured (admin) key of the test server.
const ADMIN: &str = "browser-admin-key-0123456789";
/// The longest a page may take to show what a step waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver; scripts/test.sh installs it)");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots go: `target/ui-screenshots/`, beside the binary's `debug/`.
fn screenshot_dir() -> PathBuf {
    let bin = PathBuf::from(BIN);
    let target = bin
        .parent()
        .and_then(|debug| debug.parent())
        .expect("the binary is under target/<profile>/");
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// The text of the element at `css`, or `None` while there is none.
async fn text(browser: &Client, css: &str) -> Option<String> {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.ok(),
        Err(_) => None,
    }
}

/// Waits until the element at `css` shows text for which `good` holds; that text.
async fn wait_text(browser: &Client, css: &str, good: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let shown = text(browser, css).await;
        if let Some(shown) = &shown
            && good(shown)
        {
            return shown.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{css} shows {shown:?} after {PATIENCE:?}; page:\n{}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `path` of the server at `base` in the browser.
async fn open(browser: &Client, base: &str, path: &str) {
    browser.goto(&format!("{base}{path}")).await.unwrap();
}

/// How many elements `css` finds on the current page.
async fn count(browser: &Client, css: &str) -> usize {
    browser.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn path(browser: &Client) -> String {
    let url = browser.current_url().await.unwrap();
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

async fn sign_in(browser: &Client, server: &Coordinator, key: &str) {
    open(browser, &server.url, "/ui/tasks").await;
    assert!(path(browser).await.starts_with("/ui/login"));
    let field = browser.find(Locator::Css("input#key")).await.unwrap();
    field.send_keys(key).await.unwrap();
    browser
        .find(Locator::Css("form.login button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(browser, "h1", |t| t == "Tasks").await;
}

/// The worker's module: fails on `{"fail": true}`, otherwise logs and echoes the payload.
const MODULE: &str = "export default function main({ payload }) {\n\
    if (payload && payload.fail) { throw new Error('asked to fail'); }\n\
    console.log('echoing', JSON.stringify(payload));\n\
    return { echo: payload };\n}\n";

fn add_worker(server: &Coordinator, module: &str) {
    let dir = tempfile::tempdir_in(&server.home).unwrap();
    std::fs::write(dir.path().join("echo.js"), module).unwrap();
    std::fs::write(
        dir.path().join("echo.yml"),
        "name: echo\nkind: js\nmodule: echo.js\ntriggers: [{ api: true }]\n",
    )
    .unwrap();
    server.ok(&[
        "worker",
        "add",
        "-f",
        dir.path().join("echo.yml").to_str().unwrap(),
    ]);
}

fn submit(server: &Coordinator, payload: &Value) -> i64 {
    let task = server.json(&["task", "submit", "echo", "--payload", &payload.to_string()]);
    task["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let home = tempfile::tempdir().unwrap();
    let server = Coordinator::start(home.path(), &["--api-key", ADMIN], &[]);
    add_worker(&server, MODULE);
    let failed = submit(&server, &json!({ "fail": true }));
    assert_eq!(server.wait_end(failed, PATIENCE)["state"], "failed");

    let driver = Driver::start();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"] }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session (Debian's chromium; scripts/test.sh installs it)");

    // Sign in: the login page, then the tasks.
    open(&browser, &server.url, "/ui/tasks?state=failed").await;
    wait_text(&browser, "h1", |t| t == "Sign in").await;
    screenshot(&browser, "login").await;
    sign_in(&browser, &server, ADMIN).await;

    // The Overview counts it.
    open(&browser, &server.url, "/ui").await;
    wait_text(&browser, "h1", |t| t == "Overview").await;
    wait_text(&browser, "tr#count-failed", |t| t.ends_with('1')).await;
    screenshot(&browser, "overview").await;

    // The Nodes page: the server's own js node, its breaker closed, with Reset for an admin.
    open(&browser, &server.url, "/ui/nodes").await;
    wait_text(&browser, "table.nodes td.breaker", |t| t == "closed").await;
    wait_text(&browser, "table.nodes button", |t| t == "Reset").await;
    screenshot(&browser, "nodes").await;
    // Reset (a closed breaker stays closed) comes back to the page, the node still there.
    browser
        .find(Locator::Css("table.nodes button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "h1", |t| t == "Nodes").await;
    wait_text(&browser, "table.nodes td.breaker", |t| t == "closed").await;

    // The failed task, through the filter.
    open(&browser, &server.url, "/ui/tasks?state=failed").await;
    let row = format!("tr#task-{failed}");
    wait_text(&browser, &format!("{row} .state"), |t| t == "failed").await;
    screenshot(&browser, "tasks").await;

    // Open it; fix the worker; Retry; the state changes in place, without a reload.
    browser
        .find(Locator::Css(&format!("{row} a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#task-state", |t| t == "failed").await;
    assert!(
        text(&browser, "#task-error")
            .await
            .unwrap()
            .contains("asked to fail")
    );
    add_worker(&server, &MODULE.replace("payload.fail", "payload.never"));
    browser
        .execute("window.notReloaded = true; return null;", vec![])
        .await
        .unwrap();
    browser
        .find(Locator::Css("button#retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#task-state", |t| t == "completed").await;
    let kept = browser
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(kept, json!(true), "the page was reloaded");
    assert_eq!(path(&browser).await, format!("/ui/tasks/{failed}"));
    wait_text(&browser, "#task-result", |t| t.contains("\"fail\": true")).await;
    screenshot(&browser, "task").await;

    // A forged POST (no CSRF token) from the signed-in page is refused, and changes nothing.
    let status = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             fetch(arguments[0], { method: 'POST', body: new URLSearchParams({}) })\
               .then(r => done(r.status), e => done(String(e)));",
            vec![json!(format!("/ui/tasks/{failed}/retry"))],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert_eq!(
        server.json(&["task", "show", &failed.to_string()])["attempt"],
        2
    );

    // Replay: bad JSON is caught in the page; edited JSON makes a new task, which completes.
    let field = browser
        .find(Locator::Css("textarea#payload"))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys("{ not json").await.unwrap();
    browser
        .find(Locator::Css("form.replay button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "[data-json-error]", |t| {
        t.contains("payload: not valid JSON")
    })
    .await;
    assert_eq!(path(&browser).await, format!("/ui/tasks/{failed}"));
    field.clear().await.unwrap();
    field.send_keys(r#"{"edited": 2}"#).await.unwrap();
    browser
        .find(Locator::Css("form.replay button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while path(&browser).await == format!("/ui/tasks/{failed}") {
        assert!(
            Instant::now() < deadline,
            "Replay did not open the new task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay: i64 = path(&browser)
        .await
        .strip_prefix("/ui/tasks/")
        .unwrap()
        .parse()
        .unwrap();
    wait_text(&browser, "#task-state", |t| t == "completed").await;
    wait_text(&browser, "#task-result", |t| t.contains("\"edited\": 2")).await;
    // A task page flushes the batched trace before reading it, so the last refresh, the one
    // that showed the task ended, already holds the link (an ended task's page refreshes no
    // more).
    let linked = format!("replay of #{failed}");
    assert!(
        text(&browser, "table.trace")
            .await
            .is_some_and(|t| t.contains(&linked)),
        "no {linked:?} in the trace"
    );
    screenshot(&browser, "replay").await;
    assert_eq!(
        server.json(&["task", "show", &replay.to_string()])["payload"],
        json!({ "edited": 2 })
    );

    // Bulk cancel: 20 pending tasks (the worker paused), selected all, canceled.
    server.ok(&["worker", "pause", "echo"]);
    let pending: Vec<i64> = (0..20)
        .map(|n| submit(&server, &json!({ "n": n })))
        .collect();
    open(&browser, &server.url, "/ui/tasks?state=pending").await;
    wait_text(&browser, &format!("tr#task-{} .state", pending[19]), |t| {
        t == "pending"
    })
    .await;
    browser
        .find(Locator::Css("input#select-all"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .find(Locator::Css("button[name=action][value=cancel]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#bulk-progress", |t| t.contains("done")).await;
    assert_eq!(
        text(&browser, "#bulk-progress").await.unwrap(),
        "Cancel: 20 changed, 0 refused · done"
    );
    screenshot(&browser, "bulk").await;
    for id in &pending {
        assert_eq!(
            server.json(&["task", "show", &id.to_string()])["state"],
            "canceled"
        );
    }

    // Workers → the worker → Run test: the module runs on the typed payload (on the server's
    // js node, nothing stored), and the result and console show on the page.
    open(&browser, &server.url, "/ui/workers").await;
    wait_text(&browser, "tr#worker-echo td a", |t| t == "echo").await;
    screenshot(&browser, "workers").await;
    browser
        .find(Locator::Css("tr#worker-echo td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "h1", |t| t == "Worker echo").await;
    assert!(
        text(&browser, "pre#module-source")
            .await
            .unwrap()
            .contains("export default function main")
    );
    let tasks_before = server.json(&["task", "list", "--worker", "echo"]);
    let field = browser
        .find(Locator::Css("textarea#payload"))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys(r#"{"from": "browser"}"#).await.unwrap();
    browser
        .find(Locator::Css("form.run-test button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#test-output", |t| {
        t.contains(r#""from": "browser""#)
    })
    .await;
    wait_text(&browser, "#test-console", |t| t.contains("echoing")).await;
    screenshot(&browser, "worker-run-test").await;
    assert_eq!(
        server.json(&["task", "list", "--worker", "echo"]),
        tasks_before,
        "Run test stores no task"
    );

    // Sources (none here) and Logs with live tail: a task submitted now shows up without a
    // reload.
    open(&browser, &server.url, "/ui/sources").await;
    wait_text(&browser, "h1", |t| t == "Sources").await;
    screenshot(&browser, "sources").await;
    open(&browser, &server.url, "/ui/logs?worker=echo&live=1").await;
    wait_text(&browser, "section#log-live", |t| t.contains("submit")).await;
    let tailed = submit(&server, &json!({ "tailed": true }));
    wait_text(&browser, "section#log-live", |t| {
        t.contains(&format!("#{tailed}"))
    })
    .await;
    assert!(path(&browser).await.ends_with("live=1"));
    screenshot(&browser, "logs").await;

    // Keys (admin): create one, its secret shown once.
    open(&browser, &server.url, "/ui/keys").await;
    wait_text(&browser, "h1", |t| t == "API keys").await;
    browser
        .find(Locator::Css("input#name"))
        .await
        .unwrap()
        .send_keys("ci-bot")
        .await
        .unwrap();
    browser
        .find(Locator::Css("form.create-key button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "code#new-secret", |t| t.starts_with("mk_")).await;
    screenshot(&browser, "key-created").await;
    open(&browser, &server.url, "/ui/keys").await;
    wait_text(&browser, "tr#key-ci-bot td.scope", |t| t == "read").await;
    screenshot(&browser, "keys").await;

    // A read key: the same pages, no buttons.
    let created = server.json(&["key", "create", "viewer", "--scope", "read"]);
    let secret = created["secret"].as_str().unwrap().to_owned();
    browser
        .find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "h1", |t| t == "Sign in").await;
    sign_in(&browser, &server, &secret).await;
    open(&browser, &server.url, &format!("/ui/tasks/{failed}")).await;
    wait_text(&browser, "#task-state", |t| t == "completed").await;
    assert_eq!(count(&browser, "button").await, 1, "only Sign out");
    assert_eq!(
        text(&browser, "form.signout .who").await.unwrap(),
        "viewer · read"
    );
    screenshot(&browser, "read-scope").await;
    open(&browser, &server.url, "/ui/tasks").await;
    assert_eq!(count(&browser, "input[type=checkbox]").await, 0);
    // Nor a Run test, nor the Keys link.
    open(&browser, &server.url, "/ui/workers/echo").await;
    wait_text(&browser, "h1", |t| t == "Worker echo").await;
    assert_eq!(count(&browser, "button").await, 1, "only Sign out");
    assert_eq!(count(&browser, "a[href='/ui/keys']").await, 0);

    browser.close().await.unwrap();
}
