//! Remote executor nodes: `mechanics node serve` on other machines, reached over HTTPS (or plain
//! HTTP on loopback) with their own bearer token, next to the fleet's local nodes.
//!
//! A remote node gets jobs only while it is `healthy`: its last check (`GET /stats` with its
//! token, every [`FleetConfig::remote_check_interval`](crate::FleetConfig)) answered with the
//! protocol version this build speaks. A `401` makes it `unauthorized`, another version
//! `incompatible`, a failed connection or call `unreachable`; each says why in `last_error`.
//! [`BREAKER_FAILURES`] transport failures of job calls in a row trip its breaker (`tripped`):
//! no jobs until a check (the half-open probe) gets an answer again. A node that comes back is
//! used again at its next check, without a restart of the coordinator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mechanics_proto::node::{NodeStats, PROTOCOL_VERSION, STATS_PATH};

use crate::NodeError;

/// Transport failures of job calls in a row that trip a remote node's breaker.
pub(crate) const BREAKER_FAILURES: u32 = 3;
/// Job times kept per node for its p50.
const DURATIONS_KEPT: usize = 256;
/// Jobs sent to a remote node at once when neither its registration nor the node says.
const DEFAULT_CAPACITY: usize = 2;

/// A remote node as the coordinator reaches it: where, with which token, trusting which CA.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteNodeConfig {
    /// Its registered name.
    pub name: String,
    /// `https://HOST:PORT` (or `http://` where the registration allows it).
    pub url: String,
    /// Its bearer token, read by the server from where the registration says.
    pub token: String,
    /// A PEM file of the CA certificates to trust for it; the system's roots without one.
    pub ca_file: Option<PathBuf>,
    /// Jobs sent to it at once; without it, what the node reports (its engine workers).
    pub capacity: Option<usize>,
}

impl RemoteNodeConfig {
    /// A node `name` at `url` with `token`, the system's roots and the capacity it reports.
    pub fn new(name: impl Into<String>, url: impl Into<String>, token: impl Into<String>) -> Self {
        RemoteNodeConfig {
            name: name.into(),
            url: url.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            ca_file: None,
            capacity: None,
        }
    }
}

impl std::fmt::Debug for RemoteNodeConfig {
    // By hand so that the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNodeConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Where a remote node stands, as `mechanics node list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteState {
    /// Not checked yet: no jobs until the first check answers.
    Unchecked,
    /// Its last check answered: it gets jobs.
    Healthy,
    /// Its last check or call could not reach it.
    Unreachable,
    /// It refused the token (`401`).
    Unauthorized,
    /// It speaks another protocol version.
    Incompatible,
    /// Its breaker is open after [`BREAKER_FAILURES`] transport failures in a row; the next
    /// check that gets an answer closes it.
    Tripped,
}

impl RemoteState {
    /// The state's name: `unchecked`, `healthy`, `unreachable`, `unauthorized`, `incompatible`,
    /// `tripped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Healthy => "healthy",
            Self::Unreachable => "unreachable",
            Self::Unauthorized => "unauthorized",
            Self::Incompatible => "incompatible",
            Self::Tripped => "tripped",
        }
    }
}

/// A remote node moved from one state to another: what a listener registered with
/// [`Fleet::on_remote_change`](crate::Fleet::on_remote_change) gets, once per change (a check
/// that finds the node as it was reports nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteChange {
    /// The node's registered name.
    pub node: String,
    /// The state it left.
    pub from: RemoteState,
    /// The state it is in now.
    pub to: RemoteState,
    /// Why, when it is no longer healthy.
    pub error: Option<String>,
}

/// Told of every [`RemoteChange`], under the node's status lock so that changes arrive in order;
/// it must not block.
pub(crate) type ChangeListener = Arc<dyn Fn(&RemoteChange) + Send + Sync>;

/// One remote node as the fleet sees it, for APIs and metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteNodeInfo {
    /// Its registered name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Where it stands.
    pub state: RemoteState,
    /// Jobs sent to it that have not come back.
    pub in_flight: usize,
    /// Jobs sent to it at once.
    pub capacity: usize,
    /// Jobs it answered (results and script errors).
    pub jobs: u64,
    /// Job calls that ended in a transport failure.
    pub transport_failures: u64,
    /// The median time of its last answered jobs, as the coordinator measured it.
    pub p50: Option<Duration>,
    /// Why it is not healthy, or the last failure it had.
    pub last_error: Option<String>,
}

/// A remote node, with its client and its counters.
pub(crate) struct Remote {
    pub(crate) config: RemoteNodeConfig,
    /// The client for it, or why none could be built (an unreadable CA file).
    client: Result<reqwest::Client, String>,
    status: Mutex<Status>,
    pub(crate) in_flight: AtomicUsize,
    jobs: AtomicU64,
    transport_failures: AtomicU64,
    failures_in_a_row: AtomicU32,
    /// What the node reports it can run at once (0: not known yet).
    reported_capacity: AtomicUsize,
    durations: Mutex<VecDeque<Duration>>,
    /// Told of each change of state; `None` for a node probed before it is registered.
    listener: Option<ChangeListener>,
}

struct Status {
    state: RemoteState,
    last_error: Option<String>,
}

/// How a job call on a remote node failed.
pub(crate) enum CallFailure {
    /// The job was never delivered (no connection, a refused token): another node may run it.
    NotSent(String),
    /// The call broke or timed out with the job on it.
    Broken(String),
}

impl Remote {
    pub(crate) fn new(
        config: RemoteNodeConfig,
        connect_timeout: Duration,
        listener: Option<ChangeListener>,
    ) -> Remote {
        let client = client(&config, connect_timeout).map_err(|err| err.to_string());
        let status = match &client {
            Ok(_) => Status {
                state: RemoteState::Unchecked,
                last_error: None,
            },
            Err(err) => Status {
                state: RemoteState::Unreachable,
                last_error: Some(err.clone()),
            },
        };
        Remote {
            config,
            client,
            status: Mutex::new(status),
            in_flight: AtomicUsize::new(0),
            jobs: AtomicU64::new(0),
            transport_failures: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            reported_capacity: AtomicUsize::new(0),
            durations: Mutex::new(VecDeque::with_capacity(DURATIONS_KEPT)),
            listener,
        }
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        lock(&self.status)
    }

    /// Jobs it may have at once.
    pub(crate) fn capacity(&self) -> usize {
        self.config.capacity.unwrap_or_else(|| {
            match self.reported_capacity.load(Ordering::Relaxed) {
                0 => DEFAULT_CAPACITY,
                reported => reported,
            }
        })
    }

    /// Whether it may get a job now (a free slot is the caller's check).
    pub(crate) fn is_usable(&self) -> bool {
        self.status().state == RemoteState::Healthy
    }

    /// Moves to `state` with `error`, logging a change of state and telling the listener.
    fn set(&self, state: RemoteState, error: Option<String>) {
        let mut status = self.status();
        if status.state != state {
            if let Some(listener) = &self.listener {
                listener(&RemoteChange {
                    node: self.config.name.clone(),
                    from: status.state,
                    to: state,
                    error: error.clone(),
                });
            }
            let node = &self.config.name;
            match (&error, state) {
                (_, RemoteState::Healthy) => {
                    tracing::info!(node, from = status.state.as_str(), "remote node healthy")
                }
                (Some(error), _) => tracing::warn!(
                    node,
                    from = status.state.as_str(),
                    to = state.as_str(),
                    %error,
                    "remote node state changed"
                ),
                (None, _) => tracing::warn!(
                    node,
                    from = status.state.as_str(),
                    to = state.as_str(),
                    "remote node state changed"
                ),
            }
            status.state = state;
        }
        if error.is_some() {
            status.last_error = error;
        }
    }

    /// Checks the node: `GET /stats` with its token, within `timeout`. Its answer decides the
    /// state; a tripped breaker closes on any answer that makes the node healthy.
    pub(crate) async fn check(&self, timeout: Duration) {
        let Ok(client) = &self.client else {
            return;
        };
        let url = format!("{}{STATS_PATH}", self.config.url);
        let call = async {
            let response = client
                .get(&url)
                .bearer_auth(&self.config.token)
                .timeout(timeout)
                .send()
                .await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = match call.await {
            Ok(answer) => answer,
            Err(err) => {
                self.set(
                    RemoteState::Unreachable,
                    Some(format!("health check: {}", describe(&err))),
                );
                return;
            }
        };
        match status {
            200 => {}
            401 => {
                self.set(
                    RemoteState::Unauthorized,
                    Some("the node refused the token (401 unauthorized)".into()),
                );
                return;
            }
            status => {
                self.set(
                    RemoteState::Unreachable,
                    Some(format!("health check: the node answered {status}")),
                );
                return;
            }
        }
        let stats = match serde_json::from_slice::<NodeStats>(&body) {
            Ok(stats) => stats,
            Err(err) => {
                self.set(
                    RemoteState::Incompatible,
                    Some(format!(
                        "the node's /stats is not what this build reads: {err}"
                    )),
                );
                return;
            }
        };
        if stats.protocol != PROTOCOL_VERSION {
            self.set(
                RemoteState::Incompatible,
                Some(format!(
                    "the node speaks protocol version {}, this coordinator {PROTOCOL_VERSION}",
                    stats.protocol
                )),
            );
            return;
        }
        self.reported_capacity.store(
            usize::try_from(stats.capacity).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        self.set(RemoteState::Healthy, None);
    }

    /// Sends the job `body` and reads the answer: status, `Retry-After` and body.
    pub(crate) async fn call(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Option<Duration>, bytes::Bytes), CallFailure> {
        let client = self
            .client
            .as_ref()
            .map_err(|err| CallFailure::NotSent(err.clone()))?;
        let started = tokio::time::Instant::now();
        let sent = client
            .post(format!("{}{path}", self.config.url))
            .bearer_auth(&self.config.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Never reached the node: the job did not run there.
            Err(err) if err.is_connect() => return Err(self.failed(err, CallFailure::NotSent)),
            Err(err) => return Err(self.failed(err, CallFailure::Broken)),
        };
        let status = response.status().as_u16();
        if status == 401 {
            // Refused before the job was read: it did not run.
            let message = "the node refused the token (401 unauthorized)".to_owned();
            self.set(RemoteState::Unauthorized, Some(message.clone()));
            return Err(CallFailure::NotSent(message));
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.failed(err, CallFailure::Broken))?;
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        if matches!(status, 200 | 422) {
            self.jobs.fetch_add(1, Ordering::Relaxed);
            let mut durations = lock(&self.durations);
            if durations.len() == DURATIONS_KEPT {
                durations.pop_front();
            }
            durations.push_back(started.elapsed());
        }
        Ok((status, retry_after, bytes))
    }

    /// Records a transport failure of a job call (`reason`): the node is unreachable until a
    /// check answers, and [`BREAKER_FAILURES`] of them in a row trip its breaker.
    pub(crate) fn transport_failed(&self, reason: &str) {
        self.transport_failures.fetch_add(1, Ordering::Relaxed);
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let state = if in_a_row >= BREAKER_FAILURES {
            RemoteState::Tripped
        } else {
            RemoteState::Unreachable
        };
        self.set(state, Some(reason.to_owned()));
    }

    fn failed(&self, err: reqwest::Error, kind: fn(String) -> CallFailure) -> CallFailure {
        let message = describe(&err);
        self.transport_failed(&message);
        kind(message)
    }

    pub(crate) fn info(&self) -> RemoteNodeInfo {
        let status = self.status();
        let p50 = {
            let durations = lock(&self.durations);
            let mut sorted: Vec<Duration> = durations.iter().copied().collect();
            sorted.sort_unstable();
            sorted.get(sorted.len() / 2).copied()
        };
        RemoteNodeInfo {
            name: self.config.name.clone(),
            url: self.config.url.clone(),
            state: status.state,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            capacity: self.capacity(),
            jobs: self.jobs.load(Ordering::Relaxed),
            transport_failures: self.transport_failures.load(Ordering::Relaxed),
            p50,
            last_error: status.last_error.clone(),
        }
    }
}

/// The client for one remote node: its CA if it has one, a bounded connect, pooled keep-alive
/// connections so that a job costs no handshake.
fn client(
    config: &RemoteNodeConfig,
    connect_timeout: Duration,
) -> Result<reqwest::Client, NodeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Under the node's idle timeout (the edge's 60 s), so a job is never sent on a
        // connection the node is closing.
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(ca_file) = &config.ca_file {
        builder = builder.tls_backend_preconfigured(crate::client_tls(ca_file, "ca_file")?);
    }
    builder
        .build()
        .map_err(|err| NodeError::Config(format!("cannot build the HTTP client: {err}")))
}

/// The error with its causes, without the URL.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "the request timed out".to_owned();
    }
    let mut text = if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the connection failed".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few assignments that cannot panic halfway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The remote nodes of a fleet, replaced whole when the registry changes.
#[derive(Default)]
pub(crate) struct Remotes {
    nodes: Mutex<Arc<Vec<Arc<Remote>>>>,
    /// Given to every node added from now on.
    listener: Mutex<Option<ChangeListener>>,
}

impl Remotes {
    pub(crate) fn all(&self) -> Arc<Vec<Arc<Remote>>> {
        lock(&self.nodes).clone()
    }

    /// Tells `listener` of every change of state of the nodes installed from now on.
    pub(crate) fn set_listener(&self, listener: ChangeListener) {
        *lock(&self.listener) = Some(listener);
    }

    /// Installs `configs`: a node whose configuration did not change keeps its state, counters
    /// and connections; the others start unchecked.
    pub(crate) fn replace(&self, configs: Vec<RemoteNodeConfig>, connect_timeout: Duration) {
        let current = self.all();
        let listener = lock(&self.listener).clone();
        let next: Vec<Arc<Remote>> = configs
            .into_iter()
            .map(|config| {
                current
                    .iter()
                    .find(|remote| remote.config == config)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Remote::new(config, connect_timeout, listener.clone()))
                    })
            })
            .collect();
        *lock(&self.nodes) = Arc::new(next);
    }
}
