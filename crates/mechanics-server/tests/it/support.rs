//! A server per test, a client for its API, and http workers whose answers a test scripts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mechanics_proto::domain::Task;
use mechanics_runtime::{ShutdownHandle, Supervisor, SupervisorConfig};
use mechanics_server::{Clock, DispatchConfig, RunningServer, ServerConfig, ServerParts};
use mechanics_store::TokenRate;
use mechanics_store::{SqliteStore, Store};
use serde_json::{Value, json};

/// A running server, its store and database directory.
pub(crate) struct TestServer {
    pub(crate) server: Option<RunningServer>,
    pub(crate) store: Arc<SqliteStore>,
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) api_key: Option<String>,
}

/// Dispatcher settings for tests: a worker call times out after `http_timeout` (generous, so a
/// loaded machine does not turn a slow answer into a transport failure, unless a test wants
/// that), no rate limit unless a worker sets one.
pub(crate) fn dispatch_config(http_timeout: Duration) -> DispatchConfig {
    DispatchConfig {
        concurrency: 16,
        claim_batch: 64,
        prefetch: 16,
        lease_margin: Duration::from_secs(60),
        http_timeout,
        default_rate: TokenRate {
            per_second: 10_000.0,
            burst: 10_000,
        },
    }
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(None, tempfile::tempdir().unwrap()).await
    }

    /// A server over the database in `dir`, with `api_key` if given.
    pub(crate) async fn start_with(api_key: Option<&str>, dir: tempfile::TempDir) -> Self {
        Self::start_configured(api_key, dir, |_| {}).await
    }

    /// [`start_with`](Self::start_with), with `configure` applied to the configuration last.
    pub(crate) async fn start_configured(
        api_key: Option<&str>,
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        Self::start_full(
            api_key,
            dir,
            configure,
            dispatch_config(Duration::from_secs(10)),
            None,
        )
        .await
    }

    /// A server whose worker calls time out after `http_timeout`.
    pub(crate) async fn start_timing_out_after(http_timeout: Duration) -> Self {
        let dispatch = dispatch_config(http_timeout);
        Self::start_full(None, tempfile::tempdir().unwrap(), |_| {}, dispatch, None).await
    }

    /// A server that runs js jobs on `js`.
    pub(crate) async fn start_with_js(js: Arc<dyn mechanics_server::JsExecutor>) -> Self {
        let dispatch = dispatch_config(Duration::from_secs(10));
        Self::start_with_js_dispatch(js, dispatch, tempfile::tempdir().unwrap()).await
    }

    /// A server with `api_key` that runs js jobs on `js`.
    pub(crate) async fn start_with_js_and_key(
        js: Arc<dyn mechanics_server::JsExecutor>,
        api_key: &str,
    ) -> Self {
        let dispatch = dispatch_config(Duration::from_secs(10));
        let dir = tempfile::tempdir().unwrap();
        Self::start_full(Some(api_key), dir, |_| {}, dispatch, Some(js)).await
    }

    /// A server over the database in `dir` that runs js jobs on `js` and dispatches as
    /// `dispatch` says.
    pub(crate) async fn start_with_js_dispatch(
        js: Arc<dyn mechanics_server::JsExecutor>,
        dispatch: DispatchConfig,
        dir: tempfile::TempDir,
    ) -> Self {
        Self::start_full(None, dir, |_| {}, dispatch, Some(js)).await
    }

    async fn start_full(
        api_key: Option<&str>,
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut ServerConfig),
        dispatch: DispatchConfig,
        js: Option<Arc<dyn mechanics_server::JsExecutor>>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Arc::new(SqliteStore::open(dir.path().join("m.db")).unwrap());
        let mut config = ServerConfig::defaults(dir.path());
        config.api_key = api_key.map(str::to_owned);
        config.drain_timeout = Duration::from_secs(10);
        configure(&mut config);
        let parts = ServerParts {
            store: store.clone(),
            js,
            supervisor: Supervisor::new(SupervisorConfig::default(), ShutdownHandle::new()),
            clock: Clock::system(),
            dispatch,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = mechanics_server::start(listener, &config, parts)
            .await
            .unwrap();
        let base = format!("http://{}", server.addr);
        Self {
            server: Some(server),
            store,
            base,
            client: reqwest::Client::new(),
            dir,
            api_key: api_key.map(str::to_owned),
        }
    }

    /// Stops the server (drain included) and hands back its database directory.
    pub(crate) async fn stop(mut self) -> tempfile::TempDir {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.dir
    }

    pub(crate) fn metrics(&self) -> &mechanics_server::Metrics {
        &self.server.as_ref().unwrap().metrics
    }

    /// `method path` with `body`; the status and the JSON answer (`Null` when empty).
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.parse().unwrap(), url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    /// Adds an http worker `name` calling `url`, with `extra` spec fields.
    pub(crate) async fn add_http_worker(&self, name: &str, url: &str, extra: Value) {
        let mut spec =
            json!({ "name": name, "kind": "http", "url": url, "triggers": [{ "api": true }] });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (status, body) = self
            .call("POST", "/api/v1/workers", Some(json!({ "spec": spec })))
            .await;
        assert!(status == 201 || status == 200, "{status} {body}");
    }

    /// Submits a task for `worker`; its id.
    pub(crate) async fn submit(&self, worker: &str, payload: Value) -> i64 {
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/tasks",
                Some(json!({ "worker": worker, "payload": payload })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub(crate) async fn task(&self, id: i64) -> Task {
        let (status, body) = self.call("GET", &format!("/api/v1/tasks/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Waits until task `id` is in an end state, up to 20 s.
    pub(crate) async fn wait_end(&self, id: i64) -> Task {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let task = self.task(id).await;
            if task.state.is_end() {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} stuck: {task:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn queries(&self) -> u64 {
        self.store.queries_executed()
    }
}

/// What an http worker saw: `(task id, attempt)` per call.
pub(crate) type Seen = Arc<Mutex<Vec<(i64, u32)>>>;

/// An http worker answering `POST /task` with `answer(body, call index)`; returns its URL and
/// the calls it saw.
pub(crate) async fn http_worker(
    answer: impl Fn(&Value, usize) -> Response + Clone + Send + Sync + 'static,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let router = Router::new().route(
        "/task",
        axum::routing::post(move |Json(body): Json<Value>| {
            let log = log.clone();
            let answer = answer.clone();
            async move {
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push((
                        body["id"].as_i64().unwrap(),
                        u32::try_from(body["attempt"].as_u64().unwrap()).unwrap(),
                    ));
                    log.len() - 1
                };
                answer(&body, index)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), seen)
}

/// `status` with a JSON body.
pub(crate) fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

/// An http worker that answers `{"ok": true}` after `delay`; its URL.
pub(crate) async fn slow_http_worker(delay: std::time::Duration) -> String {
    let router = Router::new().route(
        "/task",
        axum::routing::post(move || async move {
            tokio::time::sleep(delay).await;
            Json(json!("finished"))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// An http worker that answers its first call `429` with `Retry-After: retry_after` (seconds),
/// and every later one `200` with `then`; its URL and the calls it saw.
pub(crate) async fn rate_limited_once_worker(
    retry_after: &'static str,
    then: Value,
) -> (String, Seen) {
    http_worker(move |_, index| {
        if index == 0 {
            let mut r = reply(429, json!({}));
            r.headers_mut()
                .insert("retry-after", retry_after.parse().unwrap());
            r
        } else {
            reply(200, then.clone())
        }
    })
    .await
}
