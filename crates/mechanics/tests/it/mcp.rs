//! The MCP tools as an assistant uses them: rmcp's own client against `mechanics mcp` (a child
//! process on stdio) and against `/mcp` on a real `mechanics serve`, with real scoped keys; and
//! the stdio server driven by hand, one JSON-RPC line at a time.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ReadResourceRequestParams, ResourceContents,
};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{
    StreamableHttpClientTransport, TokioChildProcess,
    streamable_http_client::StreamableHttpClientTransportConfig,
};
use serde_json::{Value, json};

use crate::support::{Coordinator, command};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const ADMIN_KEY: &str = "mcp-admin-key";

/// The tools that change something: a read-only listing has none of them.
const CHANGING: &[&str] = &[
    "submit_task",
    "retry_task",
    "cancel_task",
    "reset_node",
    "add_worker",
];

type Client = RunningService<RoleClient, ()>;

/// A server with the hello worker and keys of every scope: (server, read key, operate key).
fn server_with_keys(dir: &std::path::Path) -> (Coordinator, String, String) {
    let server = Coordinator::start(dir, &["--api-key", ADMIN_KEY], &[]);
    server.ok(&[
        "worker",
        "add",
        "-f",
        &format!("{REPO}/examples/hello-worker/worker.yml"),
    ]);
    let secret = |name: &str, scope: &str| {
        let created = server.json(&["key", "create", name, "--scope", scope]);
        created["secret"].as_str().expect("a secret").to_owned()
    };
    let read = secret("assistant-read", "read");
    let operate = secret("assistant-operate", "operate");
    (server, read, operate)
}

async fn http_client(server: &Coordinator, key: &str) -> Client {
    // reqwest is built without a default TLS provider (plain HTTP needs none, its builder does).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url))
        .auth_header(key);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("the MCP session starts")
}

async fn stdio_client(server: &Coordinator, key: &str, extra: &[&str]) -> Client {
    let mut cmd = tokio::process::Command::from(command(&server.home));
    cmd.env("MECHANICS_SERVER", &server.url)
        .env("MECHANICS_API_KEY", key)
        .arg("mcp")
        .args(extra);
    let transport = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("mechanics mcp starts")
        .0;
    ().serve(transport).await.expect("the MCP session starts")
}

async fn tool_names(client: &Client) -> BTreeSet<String> {
    client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|tool| tool.name.into_owned())
        .collect()
}

async fn call(client: &Client, name: &'static str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    client
        .call_tool(CallToolRequestParams::new(name).with_arguments(args))
        .await
        .unwrap_or_else(|err| panic!("{name} is answered, not a protocol failure: {err}"))
}

/// The text of a resource.
async fn read_resource(client: &Client, uri: &str) -> Result<String, rmcp::ServiceError> {
    let result = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await?;
    Ok(match &result.contents[0] {
        ResourceContents::TextResourceContents { text, .. } => text.clone(),
        other => panic!("{other:?}"),
    })
}

/// The text of a result's first block.
fn text(result: &CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|block| block.as_text())
        .map(|text| text.text.clone())
        .unwrap_or_default()
}

fn failed(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

/// `submit_task` with a wait on the hello worker returns the greeting, and `get_task` shows the
/// same task.
async fn submit_and_get(client: &Client) {
    let submitted = call(
        client,
        "submit_task",
        json!({ "worker": "hello", "payload": { "name": "Ada" }, "wait_seconds": 60 }),
    )
    .await;
    assert!(!failed(&submitted), "{}", text(&submitted));
    assert!(
        text(&submitted).contains("completed"),
        "{}",
        text(&submitted)
    );
    let task = json_block(&submitted);
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["result"]["greeting"], "Hello, Ada!");

    let shown = call(client, "get_task", json!({ "id": task["id"] })).await;
    assert!(!failed(&shown), "{}", text(&shown));
    let shown = shown.structured_content.expect("structured content");
    assert_eq!(shown["id"], task["id"]);
    assert_eq!(shown["result"]["greeting"], "Hello, Ada!");

    // The last hour of the worker, with the task just run in it.
    let summary = call(client, "metrics_summary", json!({})).await;
    assert!(!failed(&summary), "{}", text(&summary));
    assert!(
        text(&summary).starts_with("last hour: hello: "),
        "{}",
        text(&summary)
    );
    let summary = summary.structured_content.expect("structured content");
    assert_eq!(summary["window_seconds"], 3600, "{summary}");
    let hello = &summary["workers"][0];
    assert_eq!(hello["worker"], "hello", "{summary}");
    assert!(hello["created"].as_u64() >= Some(1), "{summary}");
    assert!(hello["completed"].as_u64() >= Some(1), "{summary}");
    assert!(hello["attempts"].as_u64() >= Some(1), "{summary}");
    let (p50, p95) = (
        hello["dispatch_latency_p50_ms"].as_u64().expect("a p50"),
        hello["dispatch_latency_p95_ms"].as_u64().expect("a p95"),
    );
    assert!(p50 <= p95, "{summary}");
    let bad = call(client, "metrics_summary", json!({ "worker": "hello" })).await;
    assert!(
        failed(&bad) && text(&bad).contains("worker"),
        "{}",
        text(&bad)
    );
}

/// Bad input is a tool error naming what is wrong, never a protocol failure.
async fn bad_input_is_a_tool_error(client: &Client) {
    let wrong_type = call(
        client,
        "submit_task",
        json!({ "worker": "hello", "wait_seconds": "soon" }),
    )
    .await;
    assert!(failed(&wrong_type));
    assert!(
        text(&wrong_type).contains("wait_seconds"),
        "{}",
        text(&wrong_type)
    );

    let too_long = call(
        client,
        "submit_task",
        json!({ "worker": "hello", "wait_seconds": 61 }),
    )
    .await;
    assert!(failed(&too_long) && text(&too_long).contains("at most 60"));

    // An error quoting a big argument is cut short: errors never approach the 1 MiB cap.
    let huge = call(client, "get_task", json!({ "id": "7".repeat(900_000) })).await;
    assert!(failed(&huge));
    assert!(text(&huge).contains("id"), "{}", text(&huge));
    assert!(text(&huge).len() < 64 * 1024, "{} bytes", text(&huge).len());

    let unknown_worker = call(client, "submit_task", json!({ "worker": "nobody" })).await;
    assert!(failed(&unknown_worker));
    assert!(
        text(&unknown_worker).contains("nobody"),
        "{}",
        text(&unknown_worker)
    );

    let unknown_task = call(client, "get_task", json!({ "id": 987_654 })).await;
    assert!(failed(&unknown_task));
    assert!(
        text(&unknown_task).contains("987654"),
        "{}",
        text(&unknown_task)
    );

    let unknown_field = call(client, "list_workers", json!({ "verbose": true })).await;
    assert!(failed(&unknown_field) && text(&unknown_field).contains("verbose"));

    let unknown_tool = call(client, "drop_database", json!({})).await;
    assert!(failed(&unknown_tool));
    assert!(text(&unknown_tool).contains("drop_database"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tools_follow_the_keys_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (server, read, operate) = server_with_keys(dir.path());

    // A read key sees no tool that changes anything, and calling one names the scope needed.
    let reader = http_client(&server, &read).await;
    let names = tool_names(&reader).await;
    for tool in [
        "list_workers",
        "get_worker",
        "get_task",
        "list_tasks",
        "query_logs",
    ] {
        assert!(names.contains(tool), "{tool} in {names:?}");
    }
    for tool in CHANGING.iter().chain(&["test_module"]) {
        assert!(!names.contains(*tool), "{tool} in {names:?}");
    }
    let refused = call(&reader, "submit_task", json!({ "worker": "hello" })).await;
    assert!(failed(&refused));
    assert!(
        text(&refused).contains("needs the `operate` scope"),
        "{}",
        text(&refused)
    );
    let workers = call(&reader, "list_workers", json!({})).await;
    assert!(!failed(&workers), "{}", text(&workers));
    let workers_text = workers.clone();
    let workers = workers.structured_content.expect("structured content");
    assert_eq!(workers["workers"][0]["spec"]["name"], "hello");
    assert!(text(&workers_text).contains("hello"));
    let worker = call(&reader, "get_worker", json!({ "name": "hello" })).await;
    let worker = worker.structured_content.expect("structured content");
    assert!(
        worker["module_source"]
            .as_str()
            .is_some_and(|source| source.contains("Hello, ")),
        "{worker}"
    );
    reader.cancel().await.unwrap();

    // An operate key acts on tasks but does not add workers.
    let operator = http_client(&server, &operate).await;
    let names = tool_names(&operator).await;
    assert!(names.contains("submit_task") && names.contains("cancel_task"));
    assert!(!names.contains("add_worker"), "{names:?}");
    submit_and_get(&operator).await;
    bad_input_is_a_tool_error(&operator).await;
    let refused = call(&operator, "add_worker", json!({ "yaml": "name: x" })).await;
    assert!(
        text(&refused).contains("needs the `admin` scope"),
        "{}",
        text(&refused)
    );
    operator.cancel().await.unwrap();

    // The admin key sees every tool.
    let admin = http_client(&server, ADMIN_KEY).await;
    let names = tool_names(&admin).await;
    for tool in CHANGING {
        assert!(names.contains(*tool), "{tool} in {names:?}");
    }
    admin.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mcp_refuses_a_missing_key_and_a_foreign_host() {
    let dir = tempfile::tempdir().unwrap();
    // Behind a reverse proxy that passes the client's Host through, its public name is allowed.
    let server = Coordinator::start(
        dir.path(),
        &[
            "--api-key",
            ADMIN_KEY,
            "--mcp-allowed-hosts",
            "mechanics.example.com, proxy.example:8443",
        ],
        &[],
    );
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "test", "version": "1" }
        }
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |host: Option<&str>, key: Option<&str>| {
        let mut request = client
            .post(format!("{}/mcp", server.url))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize.to_string());
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let no_key = post(None, None).await.unwrap();
    assert_eq!(no_key.status(), 401);
    let wrong_key = post(None, Some("not-a-key")).await.unwrap();
    assert_eq!(wrong_key.status(), 401);
    // A page on another site that rebinds its name to 127.0.0.1 sends its own Host.
    let rebound = post(Some("attacker.example"), Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    for proxied in ["mechanics.example.com", "proxy.example:8443"] {
        let answer = post(Some(proxied), Some(ADMIN_KEY)).await.unwrap();
        assert!(
            answer.status().is_success(),
            "{proxied}: {}",
            answer.status()
        );
    }
    // A configured name with a port is that port only.
    let other_port = post(Some("proxy.example:9999"), Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(other_port.status(), 403);
    let fine = post(None, Some(ADMIN_KEY)).await.unwrap();
    assert!(fine.status().is_success(), "{}", fine.status());
    let answer = fine.text().await.unwrap();
    assert!(answer.contains("\"mechanics\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_tools_read_only_and_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server, read, operate) = server_with_keys(dir.path());

    // --read-only hides every changing tool, whatever the key may do.
    let client = stdio_client(&server, ADMIN_KEY, &["--read-only"]).await;
    let names = tool_names(&client).await;
    assert!(names.contains("list_workers") && names.contains("test_module"));
    for tool in CHANGING {
        assert!(!names.contains(*tool), "{tool} in {names:?}");
    }
    let refused = call(&client, "cancel_task", json!({ "id": 1 })).await;
    assert!(failed(&refused) && text(&refused).contains("--read-only"));
    client.cancel().await.unwrap();

    // Over stdio the server decides: a read key's change is refused, naming the scope.
    let client = stdio_client(&server, &read, &[]).await;
    let refused = call(&client, "submit_task", json!({ "worker": "hello" })).await;
    assert!(failed(&refused));
    assert!(
        text(&refused).contains("`operate` scope"),
        "{}",
        text(&refused)
    );
    client.cancel().await.unwrap();

    let client = stdio_client(&server, &operate, &[]).await;
    submit_and_get(&client).await;
    bad_input_is_a_tool_error(&client).await;
    let page = call(
        &client,
        "list_tasks",
        json!({ "worker": "hello", "limit": 1 }),
    )
    .await;
    let page = page.structured_content.expect("structured content");
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1), "{page}");
    let logs = call(
        &client,
        "query_logs",
        json!({ "worker": "hello", "limit": 5 }),
    )
    .await;
    assert!(!failed(&logs), "{}", text(&logs));
    let bad_limit = call(&client, "list_tasks", json!({ "limit": 0 })).await;
    assert!(failed(&bad_limit) && text(&bad_limit).contains("limit"));

    // Resources: the types to write a worker against, and the pipeline's records by URI.
    let types = client.list_all_resources().await.unwrap();
    assert!(
        types
            .iter()
            .any(|r| r.uri == "mechanics://types/mechanics-endpoint.d.ts"),
        "{types:?}"
    );
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 3, "{templates:?}");
    let endpoint = read_resource(&client, "mechanics://types/mechanics-endpoint.d.ts")
        .await
        .unwrap();
    assert!(
        endpoint.contains("declare module \"mechanics:endpoint\""),
        "{endpoint}"
    );
    // The worker's argument, as the dispatcher builds it: `{ event, task, payload }`.
    let worker_arg = read_resource(&client, "mechanics://types/mechanics-worker.d.ts")
        .await
        .unwrap();
    for declared in [
        "interface MechanicsWorkerArg<P = unknown>",
        "event: MechanicsWorkerEvent | null;",
        "task: MechanicsWorkerTask;",
        "payload: P | null;",
    ] {
        assert!(worker_arg.contains(declared), "{declared}: {worker_arg}");
    }
    let worker: Value = serde_json::from_str(
        &read_resource(&client, "mechanics://workers/hello")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(worker["spec"]["name"], "hello");
    let missing = read_resource(&client, "mechanics://tasks/987654")
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("987654"), "{missing}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_module_runs_in_the_sandbox_and_contains_a_hostile_script() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _) = server_with_keys(dir.path());
    let client = stdio_client(&server, ADMIN_KEY, &["--read-only"]).await;

    let typed = call(
        &client,
        "test_module",
        json!({
            "source": "export default (n: number): number => { console.log('got', n); return n * 2 }",
            "arg": 21,
            "language": "ts",
        }),
    )
    .await;
    assert!(!failed(&typed), "{}", text(&typed));
    let typed = typed.structured_content.expect("structured content");
    assert_eq!(typed["result"], 42);
    assert_eq!(typed["console"][0]["message"], "got 21");

    // The default limits stop a script that spins forever (10 s of execution time).
    let started = Instant::now();
    let spin = call(
        &client,
        "test_module",
        json!({ "source": "export default () => { while (true) {} }" }),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(failed(&spin));
    let spin = spin.structured_content.expect("structured content");
    assert_eq!(spin["error"]["kind"], "limit_exceeded", "{spin}");
    client.cancel().await.unwrap();
}

/// An assistant's client, by hand: JSON-RPC lines on the child's stdin and stdout.
#[test]
fn stdio_server_speaks_json_rpc_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (server, read, _) = server_with_keys(dir.path());
    let mut child = command(&server.home)
        .env("MECHANICS_SERVER", &server.url)
        .env("MECHANICS_API_KEY", &read)
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut send = |message: Value| {
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    };
    let mut receive = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap_or_else(|err| panic!("{err}: {line:?}"))
    };
    send(json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "by-hand", "version": "1" }
        }
    }));
    let initialized = receive();
    assert_eq!(initialized["id"], 1);
    assert_eq!(initialized["result"]["serverInfo"]["name"], "mechanics");
    assert!(initialized["result"]["capabilities"]["tools"].is_object());
    send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    send(json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "list_workers", "arguments": {} }
    }));
    let listed = receive();
    assert_eq!(listed["id"], 2);
    assert_eq!(listed["result"]["isError"], false, "{listed}");
    assert_eq!(
        listed["result"]["structuredContent"]["workers"][0]["spec"]["name"],
        "hello"
    );
    send(json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": "get_task", "arguments": { "id": "three" } }
    }));
    let bad = receive();
    assert_eq!(bad["id"], 3);
    assert_eq!(bad["result"]["isError"], true, "{bad}");
    drop(stdin);
    // Closing stdin ends the session and the process.
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tools_over_http_and_their_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _) = server_with_keys(dir.path());
    let admin = http_client(&server, ADMIN_KEY).await;

    // add_worker: a spec and its module, then a task on it.
    let added = call(
        &admin,
        "add_worker",
        json!({
            "yaml": "name: echo\nkind: js\nmodule: ./echo.js\ntriggers:\n  - api: true\n",
            "module_source": "export default ({ payload }) => payload",
        }),
    )
    .await;
    assert!(!failed(&added), "{}", text(&added));
    assert!(text(&added).contains("echo"), "{}", text(&added));
    let echoed = call(
        &admin,
        "submit_task",
        json!({ "worker": "echo", "payload": { "n": 7 }, "wait_seconds": 60 }),
    )
    .await;
    let echoed = echoed.structured_content.expect("structured content");
    assert_eq!(echoed["result"], json!({ "n": 7 }), "{echoed}");
    let bad_spec = call(
        &admin,
        "add_worker",
        json!({ "yaml": "name: Bad Name\nkind: js\n" }),
    )
    .await;
    assert!(failed(&bad_spec), "{}", text(&bad_spec));

    // A completed task cannot be canceled or retried: the API's refusal, as a tool error.
    let id = echoed["id"].clone();
    for tool in ["cancel_task", "retry_task"] {
        let refused = call(&admin, tool, json!({ "id": id })).await;
        assert!(failed(&refused), "{tool}: {}", text(&refused));
    }

    let nodes = call(&admin, "list_nodes", json!({})).await;
    assert!(!failed(&nodes), "{}", text(&nodes));
    let nodes = nodes.structured_content.expect("structured content");
    assert!(!nodes["nodes"].as_array().unwrap().is_empty(), "{nodes}");
    let unknown_node = call(&admin, "reset_node", json!({ "name": "no-such-node" })).await;
    assert!(failed(&unknown_node) && text(&unknown_node).contains("no-such-node"));

    let events = call(&admin, "list_events", json!({ "limit": 10 })).await;
    assert!(!failed(&events), "{}", text(&events));
    let no_event = call(&admin, "get_event", json!({ "id": 424_242 })).await;
    assert!(failed(&no_event) && text(&no_event).contains("424242"));
    admin.cancel().await.unwrap();
}

/// Listings whose page would pass 1 MiB come back in smaller pages, each under the limit, and
/// following `next_cursor` reaches every item once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_listings_are_paged_under_a_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _) = server_with_keys(dir.path());
    let admin = http_client(&server, ADMIN_KEY).await;
    let added = call(
        &admin,
        "add_worker",
        json!({
            "yaml": "name: sink\nkind: js\nmodule: ./sink.js\ntriggers:\n  - api: true\n",
            "module_source": "export default () => null",
        }),
    )
    .await;
    assert!(!failed(&added), "{}", text(&added));
    // Five tasks of 300 KB each: 1.5 MB in one page of the default size, and more once
    // escaped: a quote and a newline take two bytes each in JSON, and each answer carries its
    // JSON twice (structured, and as text, where it is escaped again).
    let big = "x\"\n".repeat(100 * 1024);
    let mut submitted = BTreeSet::new();
    for _ in 0..5 {
        let task = call(
            &admin,
            "submit_task",
            json!({ "worker": "sink", "payload": { "blob": big } }),
        )
        .await;
        assert!(!failed(&task), "{}", text(&task));
        let task = task.structured_content.expect("structured content");
        submitted.insert(task["id"].as_i64().unwrap());
    }

    let mut seen = BTreeSet::new();
    let mut cursor: Option<i64> = None;
    let mut pages = 0;
    loop {
        let mut args = json!({ "worker": "sink" });
        if let Some(cursor) = cursor {
            args["cursor"] = json!(cursor);
        }
        let page = call(&admin, "list_tasks", args).await;
        assert!(!failed(&page), "{}", text(&page));
        let size = answer_bytes(&page);
        assert!(size <= 1024 * 1024, "an answer of {size} bytes");
        let summary = text(&page);
        let page = page.structured_content.expect("structured content");
        let tasks = page["tasks"].as_array().unwrap();
        assert!(!tasks.is_empty(), "{summary}");
        if pages == 0 {
            assert!(summary.contains("a smaller page than asked"), "{summary}");
        }
        for task in tasks {
            assert!(
                seen.insert(task["id"].as_i64().unwrap()),
                "twice: {}",
                task["id"]
            );
        }
        pages += 1;
        match page["next_cursor"].as_i64() {
            Some(next) => {
                assert!(
                    summary.contains(&format!("pass cursor {next}")),
                    "{summary}"
                );
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, submitted);
    assert!(pages >= 2, "{pages} pages");

    // A page that fits is answered as asked.
    let small = call(
        &admin,
        "list_tasks",
        json!({ "worker": "sink", "limit": 1 }),
    )
    .await;
    assert!(!text(&small).contains("smaller page"), "{}", text(&small));
    admin.cancel().await.unwrap();
}

/// `mechanics mcp` finds the server and the key in `~/.mechanics/config.yml` as the CLI does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_reads_the_server_and_key_from_config_yml() {
    let dir = tempfile::tempdir().unwrap();
    let (server, read, _) = server_with_keys(dir.path());
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".mechanics")).unwrap();
    std::fs::write(
        home.path().join(".mechanics/config.yml"),
        format!("addr: {}\napi_key: {read}\n", server.addr()),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::from(command(home.path()));
    cmd.arg("mcp");
    let transport = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("mechanics mcp starts")
        .0;
    let client = ().serve(transport).await.expect("the MCP session starts");
    let workers = call(&client, "list_workers", json!({})).await;
    assert!(!failed(&workers), "{}", text(&workers));
    let workers = workers.structured_content.expect("structured content");
    assert_eq!(workers["workers"][0]["spec"]["name"], "hello");
    // The read key from the file: a change is refused by the server.
    let refused = call(&client, "submit_task", json!({ "worker": "hello" })).await;
    assert!(failed(&refused) && text(&refused).contains("`operate` scope"));
    client.cancel().await.unwrap();
}

/// The JSON of a result's second block, which must be its structured content: the clients that
/// show the model only text show it that.
fn json_block(result: &CallToolResult) -> Value {
    let block = result
        .content
        .get(1)
        .and_then(|block| block.as_text())
        .unwrap_or_else(|| panic!("a second, JSON text block: {result:?}"));
    let value: Value = serde_json::from_str(&block.text).expect("the block is JSON");
    assert_eq!(Some(&value), result.structured_content.as_ref());
    value
}

/// The bytes of a tool's whole answer as it goes over the wire.
fn answer_bytes(result: &CallToolResult) -> usize {
    serde_json::to_string(result).unwrap().len()
}

/// A task too big for one answer (1.2 MB of payload) is shown without its payload, with its id
/// and state, by every tool and the resource: `submit_task` does not fail after creating it, and
/// `list_tasks` pages on past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_too_big_for_an_answer_comes_trimmed() {
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _) = server_with_keys(dir.path());
    let admin = http_client(&server, ADMIN_KEY).await;
    let added = call(
        &admin,
        "add_worker",
        json!({
            "yaml": "name: measure\nkind: js\nmodule: ./measure.js\ntriggers:\n  - api: true\n",
            "module_source": "export default ({ payload }) => payload.blob.length",
        }),
    )
    .await;
    assert!(!failed(&added), "{}", text(&added));
    let small =
        |n: u64| json!({ "worker": "measure", "payload": { "blob": "y".repeat(n as usize) } });
    let first = call(&admin, "submit_task", small(1)).await;
    let first = json_block(&first)["id"].as_i64().unwrap();

    // Without a wait the answer is only the new task's id and state, whatever the payload.
    let quick = call(
        &admin,
        "submit_task",
        json!({ "worker": "measure", "payload": { "blob": "z".repeat(1_200_000) } }),
    )
    .await;
    assert!(!failed(&quick), "{}", text(&quick));
    assert!(answer_bytes(&quick) < MIB, "{}", answer_bytes(&quick));
    let quick = json_block(&quick)["id"].as_i64().expect("the id");

    let blob = "x".repeat(1_200_000);
    let submitted = call(
        &admin,
        "submit_task",
        json!({ "worker": "measure", "payload": { "blob": blob }, "wait_seconds": 60 }),
    )
    .await;
    assert!(!failed(&submitted), "{}", text(&submitted));
    assert!(
        answer_bytes(&submitted) < MIB,
        "{}",
        answer_bytes(&submitted)
    );
    let task = json_block(&submitted);
    let id = task["id"].as_i64().expect("the id");
    assert_eq!(task["state"], "completed", "{}", text(&submitted));
    assert_eq!(task["result"], 1_200_000);
    assert_eq!(task["attempts"].as_array().map(Vec::len), Some(1));
    assert!(
        task["payload"]["$trimmed"]["bytes"].as_u64() > Some(1_200_000),
        "{}",
        task["payload"]
    );
    let summary = text(&submitted);
    assert!(summary.contains("payload ("), "{summary}");
    assert!(
        summary.contains(&format!("/api/v1/tasks/{id}")),
        "{summary}"
    );

    let shown = call(&admin, "get_task", json!({ "id": id })).await;
    assert!(!failed(&shown), "{}", text(&shown));
    assert!(answer_bytes(&shown) < MIB, "{}", answer_bytes(&shown));
    let shown = json_block(&shown);
    assert_eq!(
        (&shown["id"], &shown["state"]),
        (&json!(id), &json!("completed"))
    );
    assert!(
        shown["payload"]["$trimmed"].is_object(),
        "{}",
        shown["payload"]
    );

    let last = call(&admin, "submit_task", small(2)).await;
    let last = json_block(&last)["id"].as_i64().unwrap();
    // Newest first: the small task, the big ones (trimmed, each alone in its page), the first.
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let mut args = json!({ "worker": "measure" });
        if let Some(cursor) = cursor {
            args["cursor"] = json!(cursor);
        }
        let page = call(&admin, "list_tasks", args).await;
        assert!(!failed(&page), "{}", text(&page));
        assert!(answer_bytes(&page) < MIB, "{}", answer_bytes(&page));
        let summary = text(&page);
        let page = json_block(&page);
        for task in page["tasks"].as_array().unwrap() {
            let task_id = task["id"].as_i64().unwrap();
            seen.push(task_id);
            assert_eq!(
                task_id == id || task_id == quick,
                task["payload"]["$trimmed"].is_object(),
                "{summary}"
            );
        }
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, [last, id, quick, first]);

    // Retry and cancel answer with the whole task: trimmed too, never an error after the
    // action was taken (an assistant would take it for a failed one).
    let added = call(
        &admin,
        "add_worker",
        json!({
            "yaml": "name: refuse\nkind: js\nmodule: ./refuse.js\ntriggers:\n  - api: true\n",
            "module_source": "export default () => { throw new Error('refused') }",
        }),
    )
    .await;
    assert!(!failed(&added), "{}", text(&added));
    let refused = call(
        &admin,
        "submit_task",
        json!({ "worker": "refuse", "payload": { "blob": "r".repeat(1_200_000) }, "wait_seconds": 60 }),
    )
    .await;
    let refused = json_block(&refused)["id"].as_i64().expect("the id");
    let retried = call(&admin, "retry_task", json!({ "id": refused })).await;
    assert!(!failed(&retried), "{}", text(&retried));
    assert!(answer_bytes(&retried) < MIB, "{}", answer_bytes(&retried));
    let retried = json_block(&retried);
    assert_eq!(retried["id"], refused);
    assert!(
        retried["payload"]["$trimmed"].is_object(),
        "{}",
        retried["payload"]
    );

    let resource = read_resource(&admin, &format!("mechanics://tasks/{id}"))
        .await
        .unwrap();
    assert!(resource.len() < MIB, "{}", resource.len());
    let resource: Value = serde_json::from_str(&resource).unwrap();
    assert_eq!(
        (&resource["id"], &resource["state"]),
        (&json!(id), &json!("completed"))
    );
    assert!(
        resource["payload"]["$trimmed"].is_object(),
        "{}",
        resource["payload"]
    );
    admin.cancel().await.unwrap();
}

/// `test_module` over HTTP: the result and console, a hostile script's limit error, and at most
/// two runs at once per server (each starts a node process), a third refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_test_module_runs_two_at_once_and_contains_a_hostile_script() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, operate) = server_with_keys(dir.path());
    let client = http_client(&server, &operate).await;

    let ran = call(
        &client,
        "test_module",
        json!({
            "source": "export default (arg) => { console.log('got', arg.n); return arg.n + 1 }",
            "arg": { "n": 41 },
        }),
    )
    .await;
    assert!(!failed(&ran), "{}", text(&ran));
    let ran = json_block(&ran);
    assert_eq!(ran["result"], 42, "{ran}");
    assert_eq!(ran["console"][0]["message"], "got 41", "{ran}");

    let spin = call(
        &client,
        "test_module",
        json!({ "source": "export default () => { while (true) {} }" }),
    )
    .await;
    assert!(failed(&spin), "{}", text(&spin));
    assert_eq!(json_block(&spin)["error"]["kind"], "limit_exceeded");

    // Three calls at once of a module that works for 1.5 s (built-in work each turn, so that the
    // loop stays under the iteration limit): two run, one is refused.
    let slow = json!({
        "source": "export default () => { const end = Date.now() + 1500; let n = 0; \
                   while (Date.now() < end) { n += JSON.stringify(new Array(10000).fill(n)).length } \
                   return n > 0 }",
    });
    let (a, b, c) = tokio::join!(
        call(&client, "test_module", slow.clone()),
        call(&client, "test_module", slow.clone()),
        call(&client, "test_module", slow.clone()),
    );
    let busy: Vec<String> = [&a, &b, &c]
        .into_iter()
        .filter(|result| failed(result))
        .map(text)
        .collect();
    assert_eq!(busy.len(), 1, "{busy:?}");
    assert!(
        busy[0].contains("busy") && busy[0].contains("retry"),
        "{}",
        busy[0]
    );
    for result in [&a, &b, &c].into_iter().filter(|result| !failed(result)) {
        assert_eq!(json_block(result)["result"], true);
    }
    // Once they ended, a call runs again.
    let again = call(
        &client,
        "test_module",
        json!({ "source": "export default () => 1" }),
    )
    .await;
    assert!(!failed(&again), "{}", text(&again));
    client.cancel().await.unwrap();
}

/// What every transport's run of [`each_tool_does_its_job`] reads: a webhook event, a node.
struct Fixtures {
    event: i64,
    node: String,
}

/// Every tool's happy path not covered above, and the resources, through `client`; `tag` keeps
/// the runs of the two transports apart.
async fn each_tool_does_its_job(client: &Client, tag: &str, fixtures: &Fixtures) {
    // The same idempotency key for the same worker gives the same task.
    let once = json!({
        "worker": "hello",
        "payload": { "name": tag },
        "idempotency_key": format!("{tag}-once"),
    });
    let first = json_block(&call(client, "submit_task", once.clone()).await);
    let again = json_block(&call(client, "submit_task", once).await);
    assert_eq!(first["id"], again["id"], "{first} {again}");
    assert_eq!(
        (&first["created"], &again["created"]),
        (&json!(true), &json!(false))
    );

    // A task that fails, with its attempt, error and console output.
    let flaky = call(
        client,
        "submit_task",
        json!({ "worker": "flaky", "wait_seconds": 60 }),
    )
    .await;
    assert!(!failed(&flaky), "{}", text(&flaky));
    let id = json_block(&flaky)["id"].as_i64().unwrap();
    let shown = call(client, "get_task", json!({ "id": id })).await;
    assert!(text(&shown).contains("boom"), "{}", text(&shown));
    let shown = json_block(&shown);
    assert_eq!(shown["state"], "failed", "{shown}");
    assert_eq!(shown["attempts"][0]["outcome"], "failed", "{shown}");
    assert_eq!(shown["console"][0]["message"], "trying", "{shown}");
    let resource: Value = serde_json::from_str(
        &read_resource(client, &format!("mechanics://tasks/{id}"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&resource["id"], &resource["state"]),
        (&json!(id), &json!("failed"))
    );

    // The trace of that task, filtered.
    let logs = call(
        client,
        "query_logs",
        json!({ "task": id, "outcome": "fail" }),
    )
    .await;
    assert!(!failed(&logs), "{}", text(&logs));
    let logs = json_block(&logs);
    let entries = logs["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{logs}");
    for entry in entries {
        assert_eq!(
            (&entry["task_id"], &entry["outcome"]),
            (&json!(id), &json!("fail"))
        );
    }

    // A failed task is queued again.
    let retried = call(client, "retry_task", json!({ "id": id })).await;
    assert!(!failed(&retried), "{}", text(&retried));
    assert!(
        text(&retried).starts_with(&format!("task {id} is ")),
        "{}",
        text(&retried)
    );
    assert_eq!(json_block(&retried)["state"], "pending");

    // A task of a paused worker waits: it can be canceled.
    let parked = call(client, "submit_task", json!({ "worker": "parked" })).await;
    let parked = json_block(&parked)["id"].as_i64().unwrap();
    let canceled = call(client, "cancel_task", json!({ "id": parked })).await;
    assert!(!failed(&canceled), "{}", text(&canceled));
    assert_eq!(json_block(&canceled)["state"], "canceled");

    let reset = call(client, "reset_node", json!({ "name": fixtures.node })).await;
    assert!(!failed(&reset), "{}", text(&reset));
    assert!(text(&reset).contains(&fixtures.node), "{}", text(&reset));

    let event = call(client, "get_event", json!({ "id": fixtures.event })).await;
    assert!(!failed(&event), "{}", text(&event));
    let event = json_block(&event);
    assert_eq!(
        (&event["id"], &event["source"]),
        (&json!(fixtures.event), &json!("gh"))
    );
    let resource: Value = serde_json::from_str(
        &read_resource(client, &format!("mechanics://events/{}", fixtures.event))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(resource["type"], event["type"], "{resource}");
}

/// Every tool (the admin key lists them all) has an object input schema and a description, and
/// is annotated read-only exactly when it changes nothing; only cancel_task is destructive.
async fn tools_declare_what_they_do(client: &Client) {
    let tools = client.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.len(), 15, "{tools:?}");
    for tool in tools {
        let name = tool.name.as_ref();
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&json!("object")),
            "{name}"
        );
        assert!(
            tool.description.as_ref().is_some_and(|d| d.len() > 20),
            "{name}"
        );
        let annotations = tool.annotations.as_ref().expect("annotations");
        let changes = CHANGING.contains(&name);
        assert_eq!(annotations.read_only_hint, Some(!changes), "{name}");
        assert_eq!(
            annotations.destructive_hint,
            Some(name == "cancel_task"),
            "{name}"
        );
        assert_eq!(annotations.open_world_hint, Some(false), "{name}");
    }
}

/// The tools the other tests leave out, over stdio and over HTTP against one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_does_its_job_over_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &["--api-key", ADMIN_KEY], &[]);
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    server.ok(&[
        "worker",
        "add",
        "-f",
        &format!("{REPO}/examples/hello-worker/worker.yml"),
    ]);
    file(
        "flaky.js",
        "export default () => { console.log('trying'); throw new Error('boom') }",
    );
    file("parked.js", "export default () => null");
    for name in ["flaky", "parked"] {
        let spec = file(
            &format!("{name}.yml"),
            &format!(
                "name: {name}\nkind: js\nmodule: ./{name}.js\ntriggers:\n  - api: true\n\
                 retry: {{ max_retries: 0 }}\n"
            ),
        );
        server.ok(&["worker", "add", "-f", &spec]);
    }
    server.ok(&["worker", "pause", "parked"]);
    let secret = file("secret", "s3cret\n");
    let source = file(
        "gh.yml",
        &format!("name: gh\nkind: github\nsecret_file: {secret}\n"),
    );
    server.ok(&["source", "add", "-f", &source]);
    let delivery = file(
        "delivery.json",
        r#"{"action":"opened","issue":{"number":1}}"#,
    );
    server.ok(&["webhook", "send", "gh", &delivery, "--event", "issues"]);
    let events = server.json(&["event", "list"]);
    let nodes = server.json(&["node", "list"]);
    let fixtures = Fixtures {
        event: events["events"][0]["id"].as_i64().expect("an event"),
        node: nodes["nodes"][0]["name"]
            .as_str()
            .expect("a node")
            .to_owned(),
    };

    let stdio = stdio_client(&server, ADMIN_KEY, &[]).await;
    each_tool_does_its_job(&stdio, "stdio", &fixtures).await;
    stdio.cancel().await.unwrap();
    let http = http_client(&server, ADMIN_KEY).await;
    tools_declare_what_they_do(&http).await;
    each_tool_does_its_job(&http, "http", &fixtures).await;
    http.cancel().await.unwrap();
}

/// `mechanics mcp --help` shows what applies to it: no `--json` (it prints no answers) and its
/// own exit statuses.
#[test]
fn mcp_help_shows_only_what_applies() {
    let home = tempfile::tempdir().unwrap();
    let out = command(home.path())
        .args(["mcp", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("--read-only") && help.contains("--api-key-file"),
        "{help}"
    );
    assert!(!help.contains("--json"), "{help}");
    assert!(!help.contains("task submit --wait"), "{help}");
    assert!(
        help.contains("0  the assistant's client closed the session"),
        "{help}"
    );
}
