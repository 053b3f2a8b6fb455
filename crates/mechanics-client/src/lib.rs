//! The typed client of a Mechanics server's API (`/api/v1`, shapes in `mechanics_proto::api`).
//!
//! One method per endpoint: the CLI's commands and the MCP tools (`mechanics mcp` over stdio, and
//! `/mcp`, which calls back into its own server with the caller's key) call the API only through
//! [`ApiClient`], so an endpoint is called one way everywhere, with one set of errors. Each
//! answer keeps the server's JSON as sent (what `--json` prints and MCP returns as structured
//! content) next to its typed form ([`Answer::parse`]).
//!
//! What it must not do: decide anything the server decides (validation, scopes, defaults are the
//! server's; the client only refuses what it cannot send, such as a URL that is not one), print,
//! read configuration files, or pick exit statuses: those belong to its callers.

use std::marker::PhantomData;
use std::time::Duration;

use mechanics_proto::api::{
    API_PREFIX, ApiError, ApiKeyCreated, ApiKeyInput, ApiKeyList, EventDetail, EventList,
    InstanceList, LogList, MetricsSummary, NodeList, Redeliver, SourceList, SubmitTask, Submitted,
    TaskDetail, TaskList, WebhookAccepted, WorkerInput, WorkerList, WorkerView,
};
use mechanics_proto::domain::{NodeSpec, RemoteNode, Source, SourceSpec, Task};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call did not give an answer of the server's.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server's URL is not an `http://` or `https://` URL with a host.
    #[error("--server: {server:?} is not an http:// or https:// URL with a host{detail}")]
    BadServerUrl {
        /// The URL as given.
        server: String,
        /// What the URL parser said, if it said anything (`" (relative URL without a base)"`).
        detail: String,
    },
    /// Nothing answered at the server's address (refused, unreachable, connect timeout).
    #[error(
        "no Mechanics server answered at {server} ({cause}): start one with `mechanics serve` \
         or pass --server (or set MECHANICS_SERVER)"
    )]
    NoServer {
        /// The server's URL.
        server: String,
        /// The innermost cause.
        cause: String,
    },
    /// A connection was made but the exchange failed (reset, timeout while reading).
    #[error("the request to {server} failed: {cause}")]
    Transport {
        /// The server's URL.
        server: String,
        /// What went wrong.
        cause: String,
    },
    /// The server refused or failed the call: its own message.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's message, with a hint on a 401.
        message: String,
    },
    /// The answer is not what a Mechanics server of this version sends.
    #[error("{0}")]
    UnexpectedAnswer(String),
    /// The request could not be built (the body does not encode, no TLS or HTTP client).
    #[error("cannot build the request: {0}")]
    Request(String),
}

/// Shorthand for this crate's results.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An answer of the API: its text as sent, the JSON it holds, and the type it has.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The body as the server sent it.
    pub text: String,
    /// The body as JSON (`null` for an empty body).
    pub value: Value,
    shape: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Answer<T> {
    /// The answer in its type; an error says the server may be of another version.
    pub fn parse(&self) -> Result<T> {
        serde_json::from_value(self.value.clone()).map_err(|err| {
            ClientError::UnexpectedAnswer(format!(
                "the server's answer has an unexpected shape ({err}); is it the same version as \
                 this client?"
            ))
        })
    }
}

/// The filters of `GET /tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<String>,
    /// Only this worker's tasks.
    pub worker: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// The filters of `GET /events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this source's events.
    pub source: Option<String>,
    /// Only events in this state.
    pub state: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// The filters of `GET /logs`.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only entries of this event.
    pub event: Option<i64>,
    /// Only entries of this task.
    pub task: Option<i64>,
    /// Only entries of this worker.
    pub worker: Option<String>,
    /// Only this pipeline step.
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only entries since then (`1h`, or an RFC 3339 time).
    pub since: Option<String>,
    /// Only this trace (`event-N`, `task-N`).
    pub trace: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// `path` with the parameters that are set, escaped.
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

fn number<N: ToString>(value: Option<N>) -> Option<String> {
    value.map(|n| n.to_string())
}

/// `text` as one path segment: names are `[a-z0-9-]`, but anything typed is escaped so that it
/// stays one segment (`a/b` cannot reach another route).
pub fn path_segment(text: &str) -> String {
    if text == "." || text == ".." {
        // A dot segment would be resolved away by URL normalisation, reaching another route.
        return text.replace('.', "%2E");
    }
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A client of one server, with one key (or none). Cheap to clone: clones share connections.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ApiClient {
    /// A client of the server at `server` (an `http://` or `https://` URL), sending `key` as
    /// `Authorization: Bearer` when there is one.
    pub fn new(server: &str, key: Option<String>) -> Result<Self> {
        let base = server.trim().trim_end_matches('/').to_owned();
        let bad = |detail: String| ClientError::BadServerUrl {
            server: base.clone(),
            detail,
        };
        let url = reqwest::Url::parse(&base).map_err(|err| bad(format!(" ({err})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(bad(String::new()));
        }
        // reqwest is built without a default TLS provider; the server may be behind https.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            // A proxy from HTTP_PROXY cannot reach this machine's loopback.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|err| ClientError::Request(format!("no HTTP client: {err}")))?;
        Ok(Self { base, key, http })
    }

    /// The same server with another key (the HTTP client and its connections are shared).
    pub fn with_key(&self, key: Option<String>) -> Self {
        Self {
            base: self.base.clone(),
            key,
            http: self.http.clone(),
        }
    }

    /// The server's URL, without a trailing slash.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// `GET /workers`.
    pub async fn list_workers(&self) -> Result<Answer<WorkerList>> {
        self.get("/workers").await
    }

    /// `GET /workers/{name}`: the worker with its module source.
    pub async fn get_worker(&self, name: &str) -> Result<Answer<WorkerView>> {
        self.get(&format!("/workers/{}", path_segment(name))).await
    }

    /// `POST /workers`: adds the worker or replaces the one of that name.
    pub async fn add_worker(&self, input: &WorkerInput) -> Result<Answer<WorkerView>> {
        self.call(Method::POST, "/workers", Some(input)).await
    }

    /// `POST /workers/{name}/pause` (`paused`) or `/resume`.
    pub async fn set_worker_paused(&self, name: &str, paused: bool) -> Result<Answer<WorkerView>> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/workers/{}/{verb}", path_segment(name));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `DELETE /workers/{name}`, with `force=true` to cancel its unfinished tasks.
    pub async fn remove_worker(&self, name: &str, force: bool) -> Result<Answer<Value>> {
        let path = with_query(
            &format!("/workers/{}", path_segment(name)),
            &[("force", force.then(|| "true".to_owned()))],
        );
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /tasks`.
    pub async fn submit_task(&self, submit: &SubmitTask) -> Result<Answer<Submitted>> {
        self.call(Method::POST, "/tasks", Some(submit)).await
    }

    /// `GET /tasks`, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Answer<TaskList>> {
        let path = with_query(
            "/tasks",
            &[
                ("state", filter.state.clone()),
                ("worker", filter.worker.clone()),
                ("limit", number(filter.limit)),
                ("cursor", number(filter.cursor)),
            ],
        );
        self.get(&path).await
    }

    /// `GET /tasks/{id}`: the task with its attempts and console output.
    pub async fn get_task(&self, id: i64) -> Result<Answer<TaskDetail>> {
        self.get(&format!("/tasks/{id}")).await
    }

    /// `POST /tasks/{id}/retry`.
    pub async fn retry_task(&self, id: i64) -> Result<Answer<Task>> {
        self.call(Method::POST, &format!("/tasks/{id}/retry"), None::<&()>)
            .await
    }

    /// `POST /tasks/{id}/cancel`.
    pub async fn cancel_task(&self, id: i64) -> Result<Answer<Task>> {
        self.call(Method::POST, &format!("/tasks/{id}/cancel"), None::<&()>)
            .await
    }

    /// `GET /events`, newest first.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Answer<EventList>> {
        let path = with_query(
            "/events",
            &[
                ("source", filter.source.clone()),
                ("state", filter.state.clone()),
                ("type", filter.event_type.clone()),
                ("limit", number(filter.limit)),
                ("cursor", number(filter.cursor)),
            ],
        );
        self.get(&path).await
    }

    /// `GET /events/{id}`: the event and per worker what became of it.
    pub async fn get_event(&self, id: i64) -> Result<Answer<EventDetail>> {
        self.get(&format!("/events/{id}")).await
    }

    /// `POST /events/{id}/redeliver`.
    pub async fn redeliver_event(
        &self,
        id: i64,
        request: &Redeliver,
    ) -> Result<Answer<WebhookAccepted>> {
        let path = format!("/events/{id}/redeliver");
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `GET /logs`, newest first.
    pub async fn query_logs(&self, filter: &LogFilter) -> Result<Answer<LogList>> {
        let path = with_query(
            "/logs",
            &[
                ("event", number(filter.event)),
                ("task", number(filter.task)),
                ("worker", filter.worker.clone()),
                ("action", filter.action.clone()),
                ("outcome", filter.outcome.clone()),
                ("since", filter.since.clone()),
                ("trace", filter.trace.clone()),
                ("limit", number(filter.limit)),
                ("cursor", number(filter.cursor)),
            ],
        );
        self.get(&path).await
    }

    /// `GET /metrics/summary`: per worker, the last hour on the server answering.
    pub async fn metrics_summary(&self) -> Result<Answer<MetricsSummary>> {
        self.get("/metrics/summary").await
    }

    /// `GET /nodes`.
    pub async fn list_nodes(&self) -> Result<Answer<NodeList>> {
        self.get("/nodes").await
    }

    /// `POST /nodes/{name}/reset`: every node, after the reset.
    pub async fn reset_node(&self, name: &str) -> Result<Answer<NodeList>> {
        let path = format!("/nodes/{}/reset", path_segment(name));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `POST /nodes`: adds or replaces a remote node.
    pub async fn add_node(&self, spec: &NodeSpec) -> Result<Answer<RemoteNode>> {
        self.call(Method::POST, "/nodes", Some(spec)).await
    }

    /// `DELETE /nodes/{name}`.
    pub async fn remove_node(&self, name: &str) -> Result<Answer<Value>> {
        let path = format!("/nodes/{}", path_segment(name));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /instances`.
    pub async fn list_instances(&self) -> Result<Answer<InstanceList>> {
        self.get("/instances").await
    }

    /// `POST /sources`: adds or replaces a webhook source.
    pub async fn add_source(&self, spec: &SourceSpec) -> Result<Answer<Source>> {
        self.call(Method::POST, "/sources", Some(spec)).await
    }

    /// `GET /sources`.
    pub async fn list_sources(&self) -> Result<Answer<SourceList>> {
        self.get("/sources").await
    }

    /// `GET /sources/{name}`.
    pub async fn get_source(&self, name: &str) -> Result<Answer<Source>> {
        self.get(&format!("/sources/{}", path_segment(name))).await
    }

    /// `DELETE /sources/{name}`.
    pub async fn remove_source(&self, name: &str) -> Result<Answer<Value>> {
        let path = format!("/sources/{}", path_segment(name));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /keys`: the answer holds the new key's secret, shown only this once.
    pub async fn create_key(&self, input: &ApiKeyInput) -> Result<Answer<ApiKeyCreated>> {
        self.call(Method::POST, "/keys", Some(input)).await
    }

    /// `GET /keys`.
    pub async fn list_keys(&self) -> Result<Answer<ApiKeyList>> {
        self.get("/keys").await
    }

    /// `DELETE /keys/{name}`.
    pub async fn revoke_key(&self, name: &str) -> Result<Answer<Value>> {
        let path = format!("/keys/{}", path_segment(name));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `POST /webhooks/{source}` with `headers` and the raw `body`, as a platform sends it (no
    /// API key: the signature is the authentication). The status and the answer, whatever they
    /// are: a refusal is what the caller wants to see.
    pub async fn deliver_webhook(
        &self,
        source: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Answer<Value>)> {
        let url = format!("{}/webhooks/{}", self.base, path_segment(source));
        let mut request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let (status, text) = self.send(request).await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status.as_u16(), answer(text, value)))
    }

    async fn get<T>(&self, path: &str) -> Result<Answer<T>> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `method path` with an optional JSON body; the answer of a 2xx, else the API's error.
    async fn call<T>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<Answer<T>> {
        let url = format!("{}{API_PREFIX}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|err| ClientError::Request(format!("the body does not encode: {err}")))?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let (status, text) = self.send(request).await?;
        if !status.is_success() {
            return Err(self.api_failure(status, &text));
        }
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|err| {
                ClientError::UnexpectedAnswer(format!(
                    "the server at {} answered {status} with something that is not JSON ({err}); \
                     is it a Mechanics server?",
                    self.base
                ))
            })?
        };
        Ok(answer(text, value))
    }

    /// Sends `request` and reads the whole answer as text; a transport failure says whether a
    /// server answered at all.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, String)> {
        let exchange = async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let (status, bytes) = exchange.await.map_err(|err| self.transport_failure(err))?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn transport_failure(&self, err: reqwest::Error) -> ClientError {
        let mut cause = String::new();
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        if err.is_connect() || (err.is_timeout() && err.is_request()) {
            if cause.is_empty() {
                cause = err.without_url().to_string();
            }
            return ClientError::NoServer {
                server: self.base.clone(),
                cause,
            };
        }
        let what = if err.is_timeout() {
            "timed out".to_owned()
        } else {
            err.without_url().to_string()
        };
        ClientError::Transport {
            server: self.base.clone(),
            cause: if cause.is_empty() {
                what
            } else {
                format!("{what}: {cause}")
            },
        }
    }

    fn api_failure(&self, status: StatusCode, text: &str) -> ClientError {
        match serde_json::from_str::<ApiError>(text) {
            Ok(error) if status == StatusCode::UNAUTHORIZED => {
                let hint = if self.key.is_some() {
                    "the API key given was not accepted: check --api-key-file, --api-key, \
                     MECHANICS_API_KEY or config.yml"
                } else {
                    "pass the server's API key with --api-key-file, MECHANICS_API_KEY, \
                     api_key_file in config.yml or --api-key"
                };
                ClientError::Api {
                    status: status.as_u16(),
                    message: format!("{} ({hint})", error.error.message),
                }
            }
            Ok(error) => ClientError::Api {
                status: status.as_u16(),
                message: error.error.message,
            },
            Err(_) => {
                let snippet: String = text.chars().take(200).collect();
                ClientError::UnexpectedAnswer(format!(
                    "the server at {} answered {status}: {snippet}; is it a Mechanics server?",
                    self.base
                ))
            }
        }
    }
}

fn answer<T>(text: String, value: Value) -> Answer<T> {
    Answer {
        text,
        value,
        shape: PhantomData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_stays_one_segment() {
        assert_eq!(path_segment("hello-bot"), "hello-bot");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("v1.2"), "v1.2");
    }

    #[test]
    fn only_set_filters_reach_the_query() {
        assert_eq!(with_query("/tasks", &[("state", None)]), "/tasks");
        assert_eq!(
            with_query(
                "/logs",
                &[
                    ("worker", Some("a b".to_owned())),
                    ("limit", number(Some(5))),
                    ("cursor", None),
                ]
            ),
            "/logs?worker=a+b&limit=5"
        );
    }

    #[test]
    fn a_url_that_is_not_http_is_refused() {
        let err = ApiClient::new("ftp://example.org", None).unwrap_err();
        assert!(matches!(err, ClientError::BadServerUrl { .. }), "{err}");
        let err = ApiClient::new("nonsense", None).unwrap_err();
        assert!(err.to_string().contains("\"nonsense\""), "{err}");
        assert!(ApiClient::new("http://127.0.0.1:1/", None).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let client = ApiClient::new("http://127.0.0.1:1", Some("s3cret".to_owned())).unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }
}
