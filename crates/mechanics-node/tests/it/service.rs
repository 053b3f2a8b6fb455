use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mechanics_core::MechanicsPoolConfig;
use mechanics_node::{NodeConfig, NodeError, serve};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "test-token-0123456789";

struct Node {
    base: String,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<Result<(), NodeError>>>>,
}

impl Node {
    async fn start(config: NodeConfig) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, config, async {
            let _ = stopped.await;
        }));
        Node {
            base: format!("http://{addr}"),
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    async fn post(&self, token: Option<&str>, body: impl Into<reqwest::Body>) -> Answer {
        let mut request = client()
            .post(format!("{}/v1/jobs", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Answer::of(request.send().await.unwrap()).await
    }

    async fn job(&self, job: Value) -> Answer {
        self.post(Some(TOKEN), job.to_string()).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = client().get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Answer::of(request.send().await.unwrap()).await
    }

    /// Triggers shutdown and waits for `serve` to return.
    async fn stop(&self) -> Result<(), NodeError> {
        let _ = self.stop.lock().unwrap().take().unwrap().send(());
        let task = self.task.lock().unwrap().take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn config(workers: usize) -> NodeConfig {
    let mut config = NodeConfig::new();
    config.token = Some(TOKEN.into());
    config.pool = MechanicsPoolConfig::default()
        .with_worker_count(workers)
        .with_worker_stack_bytes(16 * 1024 * 1024);
    config
}

fn job(source: &str, arg: Value) -> Value {
    json!({ "job_id": "j1", "attempt": 1, "module_source": source, "arg": arg })
}

/// A job that keeps its worker busy for about `ms` milliseconds.
fn busy(ms: u64) -> Value {
    let mut job = job(
        &format!(
            "export default () => {{ const end = Date.now() + {ms}; while (Date.now() < end) {{}} return 'done' }}"
        ),
        Value::Null,
    );
    job["limits"] = json!({ "max_loop_iterations": 1_000_000_000_000u64 });
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_stats_need_the_token_and_health_does_not() {
    let node = Node::start(config(1)).await;
    let ok = job("export default (x) => x * 2", json!(21));
    for token in [None, Some("wrong"), Some("test-token-012345678"), Some("")] {
        let answer = node.post(token, ok.to_string()).await;
        assert_eq!(answer.status, 401, "{token:?}");
        assert_eq!(answer.kind(), "unauthorized");
        assert_eq!(answer.headers["www-authenticate"], "Bearer");
        assert!(!answer.message().contains(TOKEN));
    }
    let answer = node.job(ok).await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({ "result": 42 }))
    );

    assert_eq!(node.get("/health", None).await.status, 200);
    assert_eq!(node.get("/stats", None).await.status, 401);
    let stats = node.get("/stats", Some(TOKEN)).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["jobs_run"], 1);
    assert_eq!(stats.body["jobs_in_flight"], 0);
    assert_eq!(stats.body["pid"], std::process::id());
    assert!(stats.body["rss_bytes"].as_u64().unwrap() > 1024 * 1024);
    assert_eq!(stats.body["pool"]["worker_count"], 1);
    assert_eq!(stats.body["pool"]["memory_limits_enforced"], true);
    assert_eq!(stats.body["recycle_due"], false);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let mut config = config(1);
    config.max_body_bytes = 4096;
    let node = Node::start(config).await;
    let source = format!("export default () => '{}'", "a".repeat(8192));
    let answer = node.job(job(&source, Value::Null)).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.kind(), "payload_too_large");
    assert!(answer.message().contains("4096"), "{}", answer.message());
    // A job under the limit still runs.
    let answer = node
        .job(job("export default () => 'small'", Value::Null))
        .await;
    assert_eq!(answer.status, 200);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_invalid_jobs_are_400_naming_the_problem() {
    let node = Node::start(config(1)).await;
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "bad_request", "not a job request"),
        (
            json!({ "job_id": "j", "attempt": 1 }).to_string(),
            "bad_request",
            "module_source",
        ),
        (
            json!({ "job_id": "j", "attempt": 1, "module_source": "x", "surprise": 1 }).to_string(),
            "bad_request",
            "surprise",
        ),
        (
            json!({ "job_id": "j", "attempt": 1, "module_source": "   " }).to_string(),
            "invalid_job",
            "module_source",
        ),
        (
            json!({ "job_id": "j", "attempt": 1, "module_source": "export default () => 1",
                    "limits": { "max_loop_iterations": 0 } })
            .to_string(),
            "invalid_job",
            "max_loop_iterations",
        ),
        (
            json!({ "job_id": "j", "attempt": 1, "module_source": "export default () => 1",
                    "config": { "endpoints": { "e": { "method": "get" } } } })
            .to_string(),
            "invalid_job",
            "endpoint `e`",
        ),
    ];
    for (body, kind, needle) in cases {
        let answer = node.post(Some(TOKEN), body.clone()).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.kind(), kind, "{body}");
        assert!(
            answer.message().contains(needle),
            "{body}: {}",
            answer.message()
        );
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_failures_are_422_with_the_engine_kind() {
    let node = Node::start(config(1)).await;
    let thrown = node
        .job(job(
            "export default () => { throw new Error('nope') }",
            Value::Null,
        ))
        .await;
    assert_eq!((thrown.status, thrown.kind()), (422, "execution"));
    assert!(thrown.message().contains("nope"));
    let mut spin = job("export default () => { while (true) {} }", Value::Null);
    spin["limits"] =
        json!({ "max_execution_time_ms": 100, "max_loop_iterations": 1_000_000_000_000u64 });
    let started = Instant::now();
    let limited = node.job(spin).await;
    assert_eq!((limited.status, limited.kind()), (422, "limit_exceeded"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!limited.headers.contains_key("retry-after"));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_output_comes_back_with_results_and_script_errors() {
    let node = Node::start(config(1)).await;
    let levels_and_messages = |answer: &Answer| -> Vec<(String, String)> {
        answer.body["console"]
            .as_array()
            .unwrap_or_else(|| panic!("no console: {}", answer.body))
            .iter()
            .map(|line| {
                assert!(line["ts"].as_i64().unwrap() > 1_600_000_000_000, "{line}");
                (
                    line["level"].as_str().unwrap().to_owned(),
                    line["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |level: &str, message: &str| (level.to_owned(), message.to_owned());
    let done = node
        .job(job(
            "export default (n) => { console.log('got', n); console.warn('careful'); return n + 1 }",
            json!(41),
        ))
        .await;
    assert_eq!((done.status, &done.body["result"]), (200, &json!(42)));
    assert_eq!(
        levels_and_messages(&done),
        [pair("log", "got 41"), pair("warn", "careful")]
    );
    let thrown = node
        .job(job(
            "export default () => { console.error('about to fail'); throw new Error('nope') }",
            Value::Null,
        ))
        .await;
    assert_eq!((thrown.status, thrown.kind()), (422, "execution"));
    assert_eq!(
        levels_and_messages(&thrown),
        [pair("error", "about to fail")]
    );
    // A job that writes nothing answers as before: no `console` key.
    let quiet = node.job(job("export default () => 1", Value::Null)).await;
    assert_eq!(quiet.body, json!({ "result": 1 }));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_with_retry_after_not_the_callers_fault() {
    let mut config = config(1);
    config.pool = config.pool.with_queue_capacity(1);
    let node = Arc::new(Node::start(config).await);
    let running = tokio::spawn({
        let node = node.clone();
        async move { node.job(busy(1500)).await }
    });
    wait_for_stats(&node, |s| s["pool"]["busy_workers"] == 1).await;
    let queued = tokio::spawn({
        let node = node.clone();
        async move { node.job(busy(10)).await }
    });
    wait_for_stats(&node, |s| s["pool"]["queue_depth"] == 1).await;
    let refused = node.job(busy(10)).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.kind(), "queue_full");
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200);
    node.stop().await.unwrap();
}

async fn wait_for_stats(node: &Node, until: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = node.get("/stats", Some(TOKEN)).await.body;
        if until(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "stats never matched: {stats}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_asks_for_recycling_after_its_job_quota() {
    let mut config = config(1);
    config.recycle_after_jobs = Some(2);
    let node = Node::start(config).await;
    let first = node.job(job("export default () => 1", Value::Null)).await;
    assert!(!first.headers.contains_key("x-mechanics-recycle"));
    let second = node.job(job("export default () => 2", Value::Null)).await;
    assert_eq!(second.headers["x-mechanics-recycle"], "1");
    assert_eq!(
        node.get("/stats", Some(TOKEN)).await.body["recycle_due"],
        true
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_job_in_flight_finish() {
    let node = Arc::new(Node::start(config(1)).await);
    let running = tokio::spawn({
        let node = node.clone();
        async move { node.job(busy(500)).await }
    });
    wait_for_stats(&node, |s| s["jobs_in_flight"] == 1).await;
    node.stop().await.unwrap();
    let answer = running.await.unwrap();
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({ "result": "done" }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_token_listens_only_on_loopback() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let mut config = config(1);
    config.token = None;
    let err = serve(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InsecureAddress(_)), "{err}");
    assert!(err.to_string().contains("MECHANICS_NODE_TOKEN"));
}
