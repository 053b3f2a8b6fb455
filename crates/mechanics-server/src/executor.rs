//! Running one attempt of a task on its worker: js jobs on executor nodes, http workers over
//! `POST {url}/task`, process workers over the same contract at their supervised child's port.
//!
//! Each kind answers with an [`Outcome`] that says only what happened; what to do about it
//! (complete, retry, dead-letter) is the dispatcher's decision. A js attempt also hands back what
//! its script wrote with `console` ([`AttemptOutput`]), which the dispatcher redacts and stores
//! with the attempt.

use std::time::Duration;

use async_trait::async_trait;
use mechanics_proto::api::{NodeKind, NodeView};
use mechanics_proto::domain::{ConsoleLine, NodeSpec, TranspiledModule};
use mechanics_proto::node::JobRequest;
use serde_json::{Value, json};

/// What one attempt gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The worker's JSON result.
    Completed(Value),
    /// The worker failed in a way a retry would repeat (a script error, a 5xx, a result that is
    /// not JSON).
    Failed(String),
    /// The worker could not be reached or died (refused, timeout, node gone): worth a retry.
    Transport(String),
    /// A js job's script failed, and its error says a later attempt may succeed (see
    /// [`ScriptRetry`]): retried under the worker's `retry` as a transport failure is.
    ScriptRetry(ScriptRetry, String),
    /// The worker asked to come back after a delay (`429` with `Retry-After`).
    RetryAfter(Duration, String),
    /// The executor was too busy to take the attempt (no free node, a node's queue full). Not the
    /// task's fault: the task goes back to the queue after the delay without spending a try.
    Overloaded(Option<Duration>, String),
}

impl Outcome {
    /// The `outcome` label of `mechanics_node_jobs_total`: `ok` (a result), `error` (the node
    /// answered with a failure: a script error, retryable or not, or a refusal), `transport`
    /// (the node could not be reached or failed with the job on it) or `overloaded` (too busy,
    /// or asked to come back later).
    pub fn node_label(&self) -> &'static str {
        match self {
            Self::Completed(_) => "ok",
            Self::Failed(_) | Self::ScriptRetry(..) => "error",
            Self::Transport(_) => "transport",
            Self::RetryAfter(..) | Self::Overloaded(..) => "overloaded",
        }
    }
}

/// Why a js job's failure is retried rather than failing the task at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptRetry {
    /// The job failed with the error of a `mechanics:endpoint` call that could not reach its
    /// service (refused, timed out, name not resolved) after the endpoint's own retries.
    EndpointTransport,
    /// The job threw an error with `retryable: true`.
    Requested,
}

impl ScriptRetry {
    /// The rule, as the task's error states it.
    pub fn rule(self) -> &'static str {
        match self {
            Self::EndpointTransport => {
                "an endpoint call failed in transport: retried under the worker's retry"
            }
            Self::Requested => "the job threw retryable: true: retried under the worker's retry",
        }
    }
}

/// What one js attempt gave, with the lines its script wrote with `console` on the way: for a
/// result and for a script error alike (a failing job is when its author needs them most).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutput {
    /// What happened.
    pub outcome: Outcome,
    /// The script's console output, in order, as the node sent it (not yet redacted); empty
    /// when it wrote none or never ran.
    pub console: Vec<ConsoleLine>,
    /// The node that ran it (its name, as `GET /nodes` shows it), when it reached one.
    pub node: Option<String>,
}

impl From<Outcome> for AttemptOutput {
    /// An outcome without console output: the script never ran (or is no script).
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            console: Vec::new(),
            node: None,
        }
    }
}

/// Runs js jobs. The binary implements it over the local fleet of executor nodes (and remote
/// nodes), so that this crate never runs JavaScript and never links the engine.
#[async_trait]
pub trait JsExecutor: Send + Sync {
    /// Runs `job` on some node: what came of it and what the script wrote with `console`.
    async fn run(&self, job: JobRequest) -> AttemptOutput;
    /// Checks a worker's `config` and `limits` as the engine will read them; the error names the
    /// field.
    fn validate(&self, config: Option<&Value>, limits: Option<&Value>) -> Result<(), String>;
    /// Turns the module `source` into the JavaScript that runs when its file name `module` (the
    /// spec's `module`) says it is written in another language (TypeScript: `.ts`, `.mts`);
    /// `Ok(None)` for a JavaScript module, once it is known to parse. The error says what is
    /// wrong where, as
    /// `file:line:column: message`. Called once per worker add, never per task. The default
    /// (executors that run no real engine) runs every module as written.
    fn transpile(&self, source: &str, module: &str) -> Result<Option<TranspiledModule>, String> {
        let _ = (source, module);
        Ok(None)
    }
    /// The nodes, for `GET /nodes`.
    fn nodes(&self) -> Vec<NodeView>;
    /// Re-arms the crash-loop breaker of node `name`; `false` if there is no such node.
    fn reset(&self, name: &str) -> bool;
    /// Makes `nodes` the remote executor nodes jobs may also go to (the registry's, with their
    /// tokens read). The default, for executors without nodes, ignores them.
    fn set_remote_nodes(&self, nodes: Vec<RemoteNodeTarget>) {
        let _ = nodes;
    }
    /// Contacts a node about to be registered, once: `Err` says why it cannot be used, naming
    /// the field at fault (`ca_file`, `token_env`/`token_file` for a refused token, `url`). A
    /// node that cannot be reached now is accepted: it is used once it can be. The default
    /// accepts every node.
    async fn check_remote_node(&self, node: &RemoteNodeTarget) -> Result<(), String> {
        let _ = node;
        Ok(())
    }
    /// Tells `on_change` of every change of a node's state from now on, once per change (the
    /// server writes each to `/logs`). Called once, before the first
    /// [`set_remote_nodes`](Self::set_remote_nodes); `on_change` must not block. The default,
    /// for executors whose nodes never change state, never calls it.
    fn watch_nodes(&self, on_change: NodeChangeListener) {
        let _ = on_change;
    }
}

/// What [`JsExecutor::watch_nodes`] calls with each change.
pub type NodeChangeListener = Box<dyn Fn(NodeChange) + Send + Sync>;

/// A node moved from one state to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    /// The node's name, as `GET /nodes` shows it.
    pub node: String,
    /// What it is.
    pub kind: NodeKind,
    /// The state it left, as `GET /nodes` names states.
    pub from: String,
    /// The state it is in now.
    pub to: String,
    /// Whether it gets jobs in its new state.
    pub up: bool,
    /// Why it is no longer up.
    pub error: Option<String>,
}

/// A registered remote node with its token, as the server gives it to the [`JsExecutor`].
#[derive(Clone)]
pub struct RemoteNodeTarget {
    /// The node's registration.
    pub spec: NodeSpec,
    /// Its bearer token, read from where the spec says.
    pub token: String,
}

impl std::fmt::Debug for RemoteNodeTarget {
    // By hand so that the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNodeTarget")
            .field("spec", &self.spec)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Calls http and process workers.
#[derive(Debug, Clone)]
pub struct HttpWorkerClient {
    client: reqwest::Client,
}

/// What an http worker receives: `POST {url}/task`.
pub fn task_body(task: &mechanics_proto::domain::Task, event: Option<&Value>) -> Value {
    json!({
        "id": task.id,
        "attempt": task.attempt,
        "worker": task.worker,
        "event": event.cloned().unwrap_or(Value::Null),
        "payload": task.payload,
    })
}

impl HttpWorkerClient {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        // reqwest is built without a default TLS provider; http workers may be https.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Workers are local or internal services; a proxy from the environment meant for
            // the outside world would only get in the way (and see every task).
            .no_proxy()
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(Self { client })
    }

    /// `POST {base_url}/task` with `body`, and what the answer means.
    pub async fn run(&self, base_url: &str, body: &Value) -> Outcome {
        let url = format!("{}/task", base_url.trim_end_matches('/'));
        let response = match self.client.post(&url).json(body).send().await {
            Ok(response) => response,
            Err(err) => return Outcome::Transport(describe(err)),
        };
        let status = response.status();
        if status.as_u16() == 429 {
            let delay = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return match delay {
                Some(delay) => Outcome::RetryAfter(delay, "the worker answered 429".to_owned()),
                None => Outcome::Transport(
                    "the worker answered 429 without a Retry-After in seconds".to_owned(),
                ),
            };
        }
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(err) => return Outcome::Transport(describe(err)),
        };
        if !status.is_success() {
            let snippet: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Outcome::Failed(format!("the worker answered {status}: {snippet}"));
        }
        match serde_json::from_slice(&bytes) {
            Ok(value) => Outcome::Completed(value),
            Err(err) => Outcome::Failed(format!("the worker's answer is not JSON: {err}")),
        }
    }
}

/// The error with its causes, without the URL (its query may hold a credential).
pub(crate) fn describe(err: reqwest::Error) -> String {
    let timeout = err.is_timeout();
    let err = err.without_url();
    let mut text = if timeout {
        "the request timed out".to_owned()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
