//! The local fleet: N nodes as supervised child processes, and the client that sends each job to
//! the least-loaded healthy one.
//!
//! Containment the engine cannot give in-process lives here and in the node: a memory cap per
//! process (the node exits past it), a watchdog that kills a node whose job overruns its time
//! limit plus a grace, recycling (a node asks for it through `RECYCLE_HEADER`; the fleet stops
//! sending it jobs, waits for those in flight, stops it and starts a fresh process), and the rule
//! that a job which killed its node twice is failed as `sandbox_crashed`.
//!
//! A call that fails because this process (the coordinator) is out of descriptors or memory is
//! not a node's failure: it is answered as overload, holds nothing against the job or the node,
//! and leaves the node's address in use, so work resumes as soon as the shortage ends.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mechanics_core::job::MechanicsExecutionLimits;
use mechanics_proto::domain::ConsoleLine;
use mechanics_proto::node::{
    ErrorResponse, HEALTH_PATH, JOBS_PATH, JobRequest, JobResponse, RECYCLE_HEADER,
    SANDBOX_CRASHED, TOKEN_ENV,
};
use mechanics_runtime::{
    HealthStatus, NodeSnapshot, ProcessNode, ShortageLog, ShutdownHandle, Supervisor,
    SupervisorConfig, resource_exhaustion,
};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::NodeError;
use crate::remote::{CallFailure, Remote, RemoteChange, RemoteNodeConfig, RemoteNodeInfo, Remotes};

/// A job that has killed this many node processes is failed as `sandbox_crashed`.
const CRASHES_BEFORE_FAILING: u32 = 2;
/// Jobs remembered for the crash rule; past this, entries older than [`CRASH_MEMORY`] go.
const CRASH_LOG_CAPACITY: usize = 10_000;
/// How long a crash is held against a job id.
const CRASH_MEMORY: Duration = Duration::from_secs(3600);
/// How often a job waiting for a free node looks again even without a wake-up (a node that
/// became ready does not send one).
const RECHECK: Duration = Duration::from_millis(20);
/// Times a job is offered to another node when a node refused the connection (the job never
/// ran there, so trying elsewhere is safe).
const CONNECT_TRIES: usize = 3;
/// How long an address whose connection failed gets no jobs. A dead instance withdraws its
/// address within milliseconds; one still announced after this was alive after all.
const DEAD_MARK: Duration = Duration::from_secs(5);
/// The [`FleetError::Overloaded`] kind of a call that failed because this process is out of
/// descriptors or memory.
const RESOURCE_EXHAUSTED: &str = "resource_exhausted";

/// How a [`Fleet`] is run. [`FleetConfig::new`] gives the defaults; set fields to change them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The `mechanics` binary; each node runs `<program> node serve --addr 127.0.0.1:0 ...`.
    pub program: PathBuf,
    /// Node processes (default: the number of CPUs).
    pub nodes: usize,
    /// Node names are `<name_prefix>-1`, `<name_prefix>-2`, ... (default `node`, which the
    /// registry keeps remote nodes from using); they are also passed as `--name`, so a node's
    /// process can be told apart in `ps`.
    pub name_prefix: String,
    /// Engine workers per node, which is also how many jobs the fleet sends a node at once
    /// (default 2: a node with one thread stuck still serves).
    pub workers_per_node: usize,
    /// A node process exits when its resident memory passes this (default 1 GiB).
    pub memory_cap_mb: u64,
    /// A node is recycled once its resident memory passes this (default 768 MiB).
    pub recycle_memory_mb: u64,
    /// A node is recycled after this many jobs (default 10,000).
    pub recycle_after_jobs: u64,
    /// A node whose job runs longer than the job's `max_execution_time` plus this is killed
    /// (default 2 s).
    pub watchdog_grace: Duration,
    /// How long [`Fleet::run`] waits for a node with a free slot before it answers
    /// [`FleetError::Overloaded`] (default 10 s).
    pub queue_timeout: Duration,
    /// How long a node may take to print `READY <addr>` (default 10 s).
    pub ready_timeout: Duration,
    /// How long a node has after SIGTERM before it is killed (default 3 s).
    pub stop_timeout: Duration,
    /// Restart policy, health checks and crash-loop breaker of the nodes.
    pub supervisor: SupervisorConfig,
    /// How often each remote node is checked (`GET /stats`) (default 1 s).
    pub remote_check_interval: Duration,
    /// How long a check of a remote node, or a connection to one, may take (default 2 s).
    pub remote_timeout: Duration,
}

impl FleetConfig {
    /// The defaults, running `program` as each node.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        FleetConfig {
            program: program.into(),
            nodes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            name_prefix: mechanics_proto::domain::LOCAL_NODE_PREFIX.into(),
            workers_per_node: 2,
            memory_cap_mb: 1024,
            recycle_memory_mb: 768,
            recycle_after_jobs: 10_000,
            watchdog_grace: Duration::from_secs(2),
            queue_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(3),
            supervisor: SupervisorConfig::default(),
            remote_check_interval: Duration::from_secs(1),
            remote_timeout: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), NodeError> {
        let invalid = |message: &str| Err(NodeError::Config(message.into()));
        if !(1..=1024).contains(&self.workers_per_node) {
            return invalid("`workers_per_node` must be between 1 and 1024");
        }
        if self.memory_cap_mb == 0 || self.recycle_memory_mb == 0 || self.recycle_after_jobs == 0 {
            return invalid(
                "`memory_cap_mb`, `recycle_memory_mb` and `recycle_after_jobs` must be at least 1",
            );
        }
        if self.remote_check_interval.is_zero() || self.remote_timeout.is_zero() {
            return invalid("`remote_check_interval` and `remote_timeout` must be above zero");
        }
        if self.stop_timeout >= self.supervisor.shutdown_timeout {
            return invalid("`stop_timeout` must be below the supervisor's shutdown timeout");
        }
        Ok(())
    }
}

/// Why [`Fleet::run`] did not return a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The script failed (`422` from the node): `kind` is the engine's (`execution`,
    /// `limit_exceeded`, `panic`). Not worth retrying.
    #[error("{kind}: {message}")]
    Script {
        /// The engine's error kind.
        kind: String,
        /// The engine's message.
        message: String,
        /// What the script wrote with `console` before it failed, in order.
        console: Vec<ConsoleLine>,
    },
    /// The node refused the request as invalid (`400` for a bad job, `401`, `413`, `500`). Not
    /// worth retrying.
    #[error("node answered {status}: {kind}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The node's error kind (`invalid_job`, `bad_request`, ...).
        kind: String,
        /// The node's message.
        message: String,
    },
    /// The node died or could not be reached while it had the job (a crash, a `kill -9`, the
    /// memory cap, the watchdog). The node is restarted; the job may be retried.
    #[error("node {node} failed while running the job: {message}")]
    Transport {
        /// The node's name.
        node: String,
        /// What happened.
        message: String,
    },
    /// No node could take the job in time, a node answered `503`, or this process is out of
    /// descriptors or memory to call a node with. Retry later; the job is not at fault.
    #[error("{kind}: {message}")]
    Overloaded {
        /// `queue_full`, `queue_timeout`, `no_node_available`, `resource_exhausted` (this
        /// process is out of descriptors or memory), ...
        kind: String,
        /// What happened.
        message: String,
        /// The node's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The job has killed its node [`CRASHES_BEFORE_FAILING`] times: it is failed, not retried.
    #[error("the job killed its executor node {crashes} times; it is not run again")]
    SandboxCrashed {
        /// Node deaths recorded against the job id.
        crashes: u32,
    },
    /// The fleet is shutting down.
    #[error("the fleet is shutting down")]
    ShuttingDown,
}

impl FleetError {
    /// Whether the same job may succeed if submitted again later (transport failures and
    /// overload), as opposed to failures of the job itself.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transport { .. } | Self::Overloaded { .. } | Self::ShuttingDown
        )
    }

    /// A machine-readable kind: the engine's kind for script failures, `sandbox_crashed`,
    /// `node_failed`, `shutting_down`, or the node's kind.
    pub fn kind(&self) -> &str {
        match self {
            Self::Script { kind, .. }
            | Self::Rejected { kind, .. }
            | Self::Overloaded { kind, .. } => kind,
            Self::Transport { .. } => "node_failed",
            Self::SandboxCrashed { .. } => SANDBOX_CRASHED,
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// One node as the fleet sees it, for APIs and metrics.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Where its current instance listens, once it announced `READY`.
    pub address: Option<String>,
    /// Jobs the fleet has sent it that have not come back.
    pub in_flight: usize,
    /// Jobs it answered since the fleet started.
    pub jobs: u64,
    /// Whether it is being drained for recycling.
    pub draining: bool,
    /// Times it was recycled.
    pub recycles: u64,
    /// The supervisor's view: state, health, breaker, starts, deaths, last exit. Counters restart
    /// from zero on each recycle (a recycle replaces the supervised node).
    pub snapshot: Option<NodeSnapshot>,
}

/// Local executor nodes, supervised, and the client that runs jobs on them. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    config: FleetConfig,
    supervisor: Supervisor,
    shutdown: ShutdownHandle,
    /// The nodes' bearer token: random per fleet, passed in the environment (argv shows in `ps`).
    token: String,
    client: reqwest::Client,
    slots: Vec<Slot>,
    /// Node deaths per job id, with the time of the last.
    crashes: Mutex<HashMap<String, (u32, Instant)>>,
    /// Woken whenever a slot frees up or a node comes back from recycling.
    freed: Notify,
    /// Where the least-loaded search starts, so that ties are spread.
    next: AtomicUsize,
    /// Warnings about calls that failed because this process is out of a resource.
    shortages: Mutex<ShortageLog>,
    /// The remote nodes, as the registry last gave them.
    remotes: Remotes,
}

struct Slot {
    name: String,
    /// The current instance's address; replaced with the process node on each recycle.
    address: Mutex<watch::Receiver<Option<String>>>,
    /// An address that gets no jobs, and since when: its instance was killed or failed a
    /// connection. A new instance announces a new address.
    dead_address: Mutex<Option<(String, Instant)>>,
    in_flight: AtomicUsize,
    jobs: AtomicU64,
    draining: AtomicBool,
    recycles: AtomicU64,
}

impl Fleet {
    /// Starts `config.nodes` nodes and waits until each has announced its address. The nodes
    /// stop when `shutdown` is triggered (or on [`shutdown`](Self::shutdown)).
    pub async fn start(config: FleetConfig, shutdown: ShutdownHandle) -> Result<Fleet, NodeError> {
        config.validate()?;
        let client = http_client(&config)?;
        let supervisor = Supervisor::new(config.supervisor.clone(), shutdown.clone());
        let token = random_token()?;
        let mut slots = Vec::with_capacity(config.nodes);
        let mut pending = Vec::with_capacity(config.nodes);
        for index in 1..=config.nodes {
            let name = format!("{}-{index}", config.name_prefix);
            let added = process_node(&config, &name, &token).and_then(|node| {
                let address = node.address();
                supervisor.add(&name, node)?;
                Ok(address)
            });
            let address = match added {
                Ok(address) => address,
                Err(err) => {
                    // Leave nothing running that no fleet owns.
                    supervisor.shutdown().await;
                    return Err(err);
                }
            };
            pending.push((name.clone(), address.clone()));
            slots.push(Slot::new(name, address));
        }
        let fleet = Fleet::from_parts(config, supervisor, shutdown, token, client, slots);
        let limit = fleet.inner.config.ready_timeout + Duration::from_secs(1);
        for (name, mut address) in pending {
            let ready = tokio::time::timeout(limit, address.wait_for(Option::is_some)).await;
            if !matches!(ready, Ok(Ok(_))) {
                let status = fleet
                    .inner
                    .supervisor
                    .snapshot(&name)
                    .and_then(|s| s.last_exit)
                    .map_or_else(
                        || format!("no READY line within {limit:?}"),
                        |exit| format!("{} {:?}", exit.status, exit.stderr_tail),
                    );
                fleet.shutdown().await;
                return Err(NodeError::NotReady { node: name, status });
            }
        }
        tracing::info!(nodes = fleet.inner.slots.len(), "fleet ready");
        tokio::spawn(check_remotes(Arc::downgrade(&fleet.inner)));
        Ok(fleet)
    }

    fn from_parts(
        config: FleetConfig,
        supervisor: Supervisor,
        shutdown: ShutdownHandle,
        token: String,
        client: reqwest::Client,
        slots: Vec<Slot>,
    ) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                config,
                supervisor,
                shutdown,
                token,
                client,
                slots,
                crashes: Mutex::new(HashMap::new()),
                freed: Notify::new(),
                next: AtomicUsize::new(0),
                shortages: Mutex::new(ShortageLog::new()),
                remotes: Remotes::default(),
            }),
        }
    }

    /// Runs `request` on the least-loaded healthy node and returns the job's answer: its result
    /// and what it wrote with `console` (a script that failed gives [`FleetError::Script`], with
    /// its console lines too).
    ///
    /// Waits up to `queue_timeout` for a node with a free slot. A node that dies while it has
    /// the job gives [`FleetError::Transport`] (retryable) and is restarted by the supervisor;
    /// a node whose job overruns `max_execution_time + watchdog_grace` is killed, with the same
    /// result. Each such death is held against `request.job_id`; at the second the answer is
    /// [`FleetError::SandboxCrashed`], and so is every later call with that id. A call that fails
    /// because this process is out of descriptors or memory is [`FleetError::Overloaded`] with
    /// kind `resource_exhausted`: nothing is held against the job or the node.
    pub async fn run(&self, request: &JobRequest) -> Result<JobResponse, FleetError> {
        self.run_noting_node(request, &mut None).await
    }

    /// [`run`](Self::run), and the name of the node that last had the job (`None` when it
    /// never reached one): what a task attempt's history shows as where it ran.
    pub async fn run_on(
        &self,
        request: &JobRequest,
    ) -> (Option<String>, Result<JobResponse, FleetError>) {
        let mut node = None;
        let answer = self.run_noting_node(request, &mut node).await;
        (node, answer)
    }

    async fn run_noting_node(
        &self,
        request: &JobRequest,
        node: &mut Option<String>,
    ) -> Result<JobResponse, FleetError> {
        let inner = &self.inner;
        if let Some(crashes) = inner.crashes_of(&request.job_id) {
            return Err(FleetError::SandboxCrashed { crashes });
        }
        let body = serde_json::to_vec(request).map_err(|err| FleetError::Rejected {
            status: 400,
            kind: "bad_request".into(),
            message: err.to_string(),
        })?;
        let watchdog = time_limit(request.limits.as_ref()) + inner.config.watchdog_grace;
        let mut tries = 0;
        loop {
            tries += 1;
            let lease = inner.acquire().await?;
            let (index, address) = match &lease.target {
                Target::Local { slot, address } => (*slot, address.clone()),
                Target::Remote(remote) => {
                    *node = Some(remote.config.name.clone());
                    match inner
                        .run_remote(remote, &request.job_id, &body, watchdog)
                        .await
                    {
                        RemoteOutcome::Answered(answer) => return answer,
                        RemoteOutcome::NotSent(_) if tries < CONNECT_TRIES => continue,
                        RemoteOutcome::NotSent(message) => {
                            return Err(FleetError::Transport {
                                node: remote.config.name.clone(),
                                message,
                            });
                        }
                        RemoteOutcome::Failed(error) => return Err(error),
                    }
                }
            };
            let slot = &inner.slots[index];
            *node = Some(slot.name.clone());
            let url = format!("http://{address}{JOBS_PATH}");
            let call = async {
                let response = inner
                    .client
                    .post(&url)
                    .bearer_auth(&inner.token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let recycle = response.headers().contains_key(RECYCLE_HEADER);
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let status = response.status().as_u16();
                let bytes = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, recycle, retry_after, bytes))
            };
            // A call that fails here, for lack of descriptors say, ends this select with its
            // error at once: only a node that does not answer lets the watchdog fire.
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = tokio::time::sleep(watchdog) => {
                    let reason = format!(
                        "job {} overran its time limit plus grace ({watchdog:?})",
                        request.job_id
                    );
                    tracing::warn!(node = %slot.name, %reason, "watchdog killing node");
                    slot.mark_dead(&address);
                    let _ = inner.supervisor.kill(&slot.name, &reason);
                    return Err(inner.crashed(&request.job_id, &slot.name, reason));
                }
            };
            let (status, recycle, retry_after, bytes) = match outcome {
                Ok(answer) => answer,
                Err(err) => {
                    match inner.call_failed(&request.job_id, index, &address, &err, tries) {
                        Some(error) => return Err(error),
                        None => continue,
                    }
                }
            };
            slot.jobs.fetch_add(1, Ordering::Relaxed);
            if recycle {
                self.recycle(index);
            }
            drop(lease);
            return answer(status, retry_after, &bytes);
        }
    }

    /// Every node as the fleet sees it.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let inner = &self.inner;
        inner
            .slots
            .iter()
            .map(|slot| NodeInfo {
                name: slot.name.clone(),
                address: slot.address().borrow().clone(),
                in_flight: slot.in_flight.load(Ordering::SeqCst),
                jobs: slot.jobs.load(Ordering::Relaxed),
                draining: slot.draining.load(Ordering::SeqCst),
                recycles: slot.recycles.load(Ordering::Relaxed),
                snapshot: inner.supervisor.snapshot(&slot.name),
            })
            .collect()
    }

    /// Jobs sent to one local node at once.
    pub fn workers_per_node(&self) -> usize {
        self.inner.config.workers_per_node
    }

    /// Every remote node as the fleet sees it, in registration order.
    pub fn remote_nodes(&self) -> Vec<RemoteNodeInfo> {
        self.inner.remotes.all().iter().map(|r| r.info()).collect()
    }

    /// Makes `nodes` the remote nodes jobs may go to (the registry's, with their tokens). A node
    /// whose configuration is unchanged keeps its state and connections; a new or changed one
    /// gets jobs once a check finds it healthy, which starts at once.
    pub fn set_remote_nodes(&self, nodes: Vec<RemoteNodeConfig>) {
        let inner = &self.inner;
        inner.remotes.replace(nodes, inner.config.remote_timeout);
        let timeout = inner.config.remote_timeout;
        for remote in inner.remotes.all().iter() {
            if remote.info().state == crate::RemoteState::Unchecked {
                let (remote, fleet) = (Arc::clone(remote), self.clone());
                // Jobs waiting for a node look again once it is found healthy.
                tokio::spawn(async move {
                    remote.check(timeout).await;
                    fleet.inner.freed.notify_waiters();
                });
            }
        }
    }

    /// Tells `listener` of every change of state of a remote node, once per change, in order.
    /// Call it before [`set_remote_nodes`](Self::set_remote_nodes): nodes installed earlier
    /// are not watched. `listener` runs under the node's status lock and must not block.
    pub fn on_remote_change(&self, listener: impl Fn(&RemoteChange) + Send + Sync + 'static) {
        self.inner.remotes.set_listener(Arc::new(listener));
    }

    /// Contacts the node `config` once, as its registration is checked, without adding it: its
    /// state after one check (`healthy`, or why not in `last_error`).
    pub async fn probe(&self, config: RemoteNodeConfig) -> RemoteNodeInfo {
        let remote = Remote::new(config, self.inner.config.remote_timeout, None);
        remote.check(self.inner.config.remote_timeout).await;
        remote.info()
    }

    /// The supervisor of the nodes: for breaker resets and snapshots by name.
    pub fn supervisor(&self) -> &Supervisor {
        &self.inner.supervisor
    }

    /// A receiver of the snapshots of the local node `name`'s current process. A recycle
    /// replaces the process and its supervision, so the receiver's `changed` fails then: call
    /// this again for the new one, which it waits for. `None` once the fleet is shutting down,
    /// or when it has no local node `name`.
    pub async fn watch_local(&self, name: &str) -> Option<watch::Receiver<NodeSnapshot>> {
        let inner = &self.inner;
        if !inner.slots.iter().any(|slot| slot.name == name) {
            return None;
        }
        let stop = inner.shutdown.signal();
        loop {
            let replaced = inner.freed.notified();
            tokio::pin!(replaced);
            replaced.as_mut().enable();
            if stop.is_requested() {
                return None;
            }
            // Between a recycle's stop and its restart the node has no supervision, or still
            // the ended one (whose sender is gone): wait for the next.
            if let Some(updates) = inner.supervisor.watch(name)
                && updates.has_changed().is_ok()
            {
                return Some(updates);
            }
            // A recycle wakes `freed` once its new process is supervised. After a restart that
            // failed nothing will: the sleep keeps that wait cheap until shutdown.
            tokio::select! {
                () = stop.requested() => return None,
                () = &mut replaced => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Triggers the fleet's shutdown and waits until every node process has ended.
    pub async fn shutdown(&self) {
        self.inner.supervisor.shutdown().await;
    }

    /// Drains the node and replaces its process, off the caller's path. Another recycle of the
    /// same node already under way wins.
    fn recycle(&self, index: usize) {
        let slot = &self.inner.slots[index];
        if slot.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let fleet = self.clone();
        tokio::spawn(async move {
            let inner = &fleet.inner;
            let slot = &inner.slots[index];
            tracing::info!(node = %slot.name, "recycling node");
            let stop = inner.shutdown.signal();
            // Jobs already sent there finish first; the watchdog bounds each of them.
            while slot.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::select! {
                    () = stop.requested() => return,
                    () = tokio::time::sleep(RECHECK) => {}
                }
            }
            let _ = inner.supervisor.stop(&slot.name).await;
            let replaced = process_node(&inner.config, &slot.name, &inner.token).and_then(|node| {
                let address = node.address();
                inner.supervisor.add(&slot.name, node)?;
                *slot.address() = address;
                Ok(())
            });
            match replaced {
                Ok(()) => {
                    slot.recycles.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(node = %slot.name, %err, "could not restart a recycled node")
                }
            }
            slot.draining.store(false, Ordering::SeqCst);
            inner.freed.notify_waiters();
        });
    }
}

impl Inner {
    /// Waits for the least-loaded healthy node with a free slot and takes the slot.
    async fn acquire(&self) -> Result<Lease<'_>, FleetError> {
        let deadline = Instant::now() + self.config.queue_timeout;
        let stop = self.shutdown.signal();
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if stop.is_requested() {
                return Err(FleetError::ShuttingDown);
            }
            if let Some(lease) = self.try_acquire() {
                return Ok(lease);
            }
            tokio::select! {
                () = stop.requested() => return Err(FleetError::ShuttingDown),
                () = &mut freed => {}
                () = tokio::time::sleep(RECHECK) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(FleetError::Overloaded {
                        kind: "no_node_available".into(),
                        message: format!(
                            "no executor node could take the job within {:?}",
                            self.config.queue_timeout
                        ),
                        retry_after: None,
                    });
                }
            }
        }
    }

    /// Takes a slot on the least-loaded usable node, local or remote: the lowest share of its
    /// capacity in flight, ties spread by a rotating start.
    fn try_acquire(&self) -> Option<Lease<'_>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // (node, jobs in flight, capacity); `a/b < c/d` compared as `a*d < c*b`.
        let mut best: Option<(Target, usize, usize)> = None;
        let mut consider = |target: Target, load: usize, capacity: usize| {
            let better = load < capacity
                && best
                    .as_ref()
                    .is_none_or(|(_, l, c)| load * *c < *l * capacity);
            if better {
                best = Some((target, load, capacity));
            }
        };
        let count = self.slots.len();
        for offset in 0..count {
            let index = (start + offset) % count;
            let slot = &self.slots[index];
            let load = slot.in_flight.load(Ordering::SeqCst);
            let capacity = self.config.workers_per_node;
            if load >= capacity {
                continue;
            }
            if let Some(address) = self.usable_address(slot) {
                let target = Target::Local {
                    slot: index,
                    address,
                };
                consider(target, load, capacity);
            }
        }
        let remotes = self.remotes.all();
        for offset in 0..remotes.len() {
            let remote = &remotes[(start + offset) % remotes.len()];
            if remote.is_usable() {
                let load = remote.in_flight.load(Ordering::SeqCst);
                consider(Target::Remote(remote.clone()), load, remote.capacity());
            }
        }
        let (target, load, _) = best?;
        let in_flight = match &target {
            Target::Local { slot, .. } => &self.slots[*slot].in_flight,
            Target::Remote(remote) => &remote.in_flight,
        };
        // Another caller may have taken the slot meanwhile; then look again next time.
        in_flight
            .compare_exchange(load, load + 1, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        let lease = Lease {
            inner: self,
            target,
        };
        // A recycle that started meanwhile waits for in_flight to reach zero; do not add to it.
        if let Target::Local { slot, .. } = &lease.target
            && self.slots[*slot].draining.load(Ordering::SeqCst)
        {
            return None;
        }
        Some(lease)
    }

    /// Runs the job `body` on `remote`, bounded by `watchdog`: a remote node cannot be killed,
    /// so an overrun is a transport failure of the call, and the node is checked again before
    /// it gets another job.
    async fn run_remote(
        &self,
        remote: &Remote,
        job_id: &str,
        body: &[u8],
        watchdog: Duration,
    ) -> RemoteOutcome {
        let node = remote.config.name.clone();
        let outcome = tokio::select! {
            outcome = remote.call(JOBS_PATH, body.to_vec()) => outcome,
            () = tokio::time::sleep(watchdog) => {
                let reason = format!(
                    "job {job_id} got no answer within its time limit plus grace ({watchdog:?})"
                );
                remote.transport_failed(&reason);
                return RemoteOutcome::Failed(FleetError::Transport { node, message: reason });
            }
        };
        match outcome {
            Ok((status, retry_after, bytes)) => {
                RemoteOutcome::Answered(answer(status, retry_after, &bytes))
            }
            Err(CallFailure::NotSent(message)) => {
                tracing::debug!(node, %message, "job not delivered to a remote node");
                RemoteOutcome::NotSent(message)
            }
            Err(CallFailure::Broken(message)) => {
                tracing::warn!(%job_id, node, %message, "remote node failed with the job on it");
                RemoteOutcome::Failed(FleetError::Transport { node, message })
            }
        }
    }

    /// The slot's address if it may get a job now: announced, not known dead, not draining, and
    /// not failing its health checks.
    fn usable_address(&self, slot: &Slot) -> Option<String> {
        if slot.draining.load(Ordering::SeqCst) {
            return None;
        }
        let address = slot.address().borrow().clone()?;
        if slot
            .dead_address()
            .as_ref()
            .is_some_and(|(dead, at)| *dead == address && at.elapsed() < DEAD_MARK)
        {
            return None;
        }
        let healthy = self
            .supervisor
            .snapshot(&slot.name)
            .is_some_and(|s| !matches!(s.health, HealthStatus::Unhealthy(_)));
        healthy.then_some(address)
    }

    /// What a call on `lease` that failed with `err` (on try number `tries`) means: the error to
    /// give the caller, or `None` to offer the job to a node again.
    fn call_failed(
        &self,
        job_id: &str,
        index: usize,
        address: &str,
        err: &reqwest::Error,
        tries: usize,
    ) -> Option<FleetError> {
        let slot = &self.slots[index];
        if let Some(resource) = resource_exhaustion(err) {
            // This process could not open or use a connection: the node is not at fault and
            // any other would fare no better. Overload makes the caller try again shortly
            // without spending one of the job's tries, and the address stays in use so work
            // resumes as soon as the shortage ends.
            lock(&self.shortages).warn(
                resource,
                &format_args!("sending a job to node {}", slot.name),
            );
            return Some(FleetError::Overloaded {
                kind: RESOURCE_EXHAUSTED.into(),
                message: format!("the coordinator cannot call node {}: {resource}", slot.name),
                retry_after: None,
            });
        }
        slot.mark_dead(address);
        if err.is_connect() {
            // Never reached the node, so the job did not run: its instance is gone.
            return (tries >= CONNECT_TRIES).then(|| FleetError::Transport {
                node: slot.name.clone(),
                message: format!("cannot connect: {err}"),
            });
        }
        // The connection broke with the job on it: the node died (the supervisor restarts it)
        // or is dying; send nothing more there.
        Some(self.crashed(job_id, &slot.name, format!("{err:#}")))
    }

    /// Records a node death against `job_id`; the error to give the caller.
    fn crashed(&self, job_id: &str, node: &str, message: String) -> FleetError {
        let now = Instant::now();
        let mut crashes = lock(&self.crashes);
        if crashes.len() >= CRASH_LOG_CAPACITY {
            crashes.retain(|_, (_, at)| now.duration_since(*at) < CRASH_MEMORY);
            if crashes.len() >= CRASH_LOG_CAPACITY {
                crashes.clear();
            }
        }
        let entry = crashes.entry(job_id.to_owned()).or_insert((0, now));
        *entry = (entry.0 + 1, now);
        tracing::warn!(%job_id, node, crashes = entry.0, %message, "job's node failed");
        if entry.0 >= CRASHES_BEFORE_FAILING {
            FleetError::SandboxCrashed { crashes: entry.0 }
        } else {
            FleetError::Transport {
                node: node.to_owned(),
                message,
            }
        }
    }

    /// The job's crash count once it has reached the limit.
    fn crashes_of(&self, job_id: &str) -> Option<u32> {
        lock(&self.crashes)
            .get(job_id)
            .map(|(count, _)| *count)
            .filter(|count| *count >= CRASHES_BEFORE_FAILING)
    }
}

/// A taken slot on a node; gives it back when dropped.
struct Lease<'a> {
    inner: &'a Inner,
    target: Target,
}

/// The node a job goes to.
enum Target {
    /// The local node in `slots[slot]`, at its instance's `address`.
    Local { slot: usize, address: String },
    /// A remote node.
    Remote(Arc<Remote>),
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let in_flight = match &self.target {
            Target::Local { slot, .. } => &self.inner.slots[*slot].in_flight,
            Target::Remote(remote) => &remote.in_flight,
        };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.freed.notify_waiters();
    }
}

/// How a job sent to a remote node ended.
enum RemoteOutcome {
    /// The node answered: the job's result or error.
    Answered(Result<JobResponse, FleetError>),
    /// The job never reached the node; another may run it.
    NotSent(String),
    /// The call failed with the job on it.
    Failed(FleetError),
}

/// Checks every remote node every `remote_check_interval`, until the fleet is gone or shuts
/// down. Checks run side by side, so a node that hangs delays no other's.
async fn check_remotes(fleet: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = fleet.upgrade() else { return };
        let stop = inner.shutdown.signal();
        let interval = inner.config.remote_check_interval;
        let timeout = inner.config.remote_timeout;
        let remotes = inner.remotes.all();
        drop(inner);
        let started = Instant::now();
        let mut checks = tokio::task::JoinSet::new();
        for remote in remotes.iter() {
            let remote = Arc::clone(remote);
            checks.spawn(async move { remote.check(timeout).await });
        }
        let round = async { while checks.join_next().await.is_some() {} };
        tokio::select! {
            () = stop.requested() => return,
            () = round => {}
        }
        tokio::select! {
            () = stop.requested() => return,
            () = tokio::time::sleep_until(started + interval) => {}
        }
    }
}

impl Slot {
    fn new(name: String, address: watch::Receiver<Option<String>>) -> Self {
        Slot {
            name,
            address: Mutex::new(address),
            dead_address: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            jobs: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            recycles: AtomicU64::new(0),
        }
    }

    fn address(&self) -> MutexGuard<'_, watch::Receiver<Option<String>>> {
        lock(&self.address)
    }

    fn dead_address(&self) -> MutexGuard<'_, Option<(String, Instant)>> {
        lock(&self.dead_address)
    }

    fn mark_dead(&self, address: &str) {
        *self.dead_address() = Some((address.to_owned(), Instant::now()));
    }
}

/// The job's answer from the node's status and body.
fn answer(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<JobResponse, FleetError> {
    if status == 200 {
        return serde_json::from_slice::<JobResponse>(body).map_err(|err| FleetError::Rejected {
            status,
            kind: "bad_response".into(),
            message: format!("the node's answer is not a job response: {err}"),
        });
    }
    let error = serde_json::from_slice::<ErrorResponse>(body).map_or_else(
        |_| {
            (
                "bad_response".to_owned(),
                String::from_utf8_lossy(body).chars().take(512).collect(),
                Vec::new(),
            )
        },
        |response| {
            (
                response.error.kind,
                response.error.message,
                response.console,
            )
        },
    );
    let (kind, message, console) = error;
    Err(match status {
        422 => FleetError::Script {
            kind,
            message,
            console,
        },
        503 => FleetError::Overloaded {
            kind,
            message,
            retry_after,
        },
        _ => FleetError::Rejected {
            status,
            kind,
            message,
        },
    })
}

/// The job's wall-clock limit: its own `max_execution_time_ms`, else the engine's default (what
/// the node applies too).
fn time_limit(limits: Option<&Value>) -> Duration {
    limits
        .and_then(|limits| serde_json::from_value::<MechanicsExecutionLimits>(limits.clone()).ok())
        .unwrap_or_default()
        .max_execution_time()
}

fn process_node(config: &FleetConfig, name: &str, token: &str) -> Result<ProcessNode, NodeError> {
    let args: Vec<OsString> = [
        "node",
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--name",
        name,
        "--workers",
        &config.workers_per_node.to_string(),
        "--memory-cap-mb",
        &config.memory_cap_mb.to_string(),
        "--recycle-memory-mb",
        &config.recycle_memory_mb.to_string(),
        "--recycle-after-jobs",
        &config.recycle_after_jobs.to_string(),
        // Relayed below as structured events, not as text inside a line of ours.
        "--log-json",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    // A node runs untrusted scripts: it gets none of the coordinator's environment (API key,
    // platform tokens, webhook secrets), only its token and the log filter.
    let mut node = ProcessNode::new(&config.program).clear_env();
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        node = node.env("RUST_LOG", filter);
    }
    Ok(node
        .args(args)
        .relay_json_logs(name)
        .env(TOKEN_ENV, token)
        .ready_timeout(config.ready_timeout)
        .stop_timeout(config.stop_timeout)
        .health_url(&format!("http://{{addr}}{HEALTH_PATH}"))?)
}

/// The client the fleet calls its nodes with.
fn http_client(config: &FleetConfig) -> Result<reqwest::Client, NodeError> {
    // reqwest is built with rustls but no provider; plain http on loopback never uses it, yet
    // the client builder needs one installed. Another part of the process may have done so.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(config.workers_per_node * 2)
        // Well under the node's idle timeout (the edge's 60 s): the client drops a kept-alive
        // connection before the node does, so a job is never sent on one being closed.
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|err| NodeError::Config(format!("cannot build the HTTP client: {err}")))
}

/// 32 random bytes as hex.
fn random_token() -> Result<String, NodeError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| NodeError::Config(format!("no randomness for the node token: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one assignment, so a panic cannot leave them half-done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    //! The fleet's handling of failed calls, against fake nodes on loopback (the fleet with real
    //! node processes is tested in `crates/mechanics/tests/it/fleet.rs`).

    use std::net::SocketAddr;

    use axum::routing::post;
    use mechanics_runtime::{NodeFailure, NodeRunner, ShutdownSignal};
    use serde_json::json;

    use super::*;

    /// A supervised node that runs until stopped, standing in for a node process whose address
    /// the test gives the fleet directly.
    struct Idle;

    impl NodeRunner for Idle {
        async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure> {
            shutdown.requested().await;
            Ok(())
        }
    }

    /// A fleet of one supervised node `node-1` listening at `address`.
    fn fleet_at(address: SocketAddr) -> Fleet {
        let config = FleetConfig {
            queue_timeout: Duration::from_millis(200),
            ..FleetConfig::new("unused")
        };
        let shutdown = ShutdownHandle::new();
        let supervisor = Supervisor::new(
            SupervisorConfig {
                health_check_interval: Duration::ZERO,
                ..SupervisorConfig::default()
            },
            shutdown.clone(),
        );
        supervisor.add("node-1", Idle).unwrap();
        let (_, announced) = watch::channel(Some(address.to_string()));
        let client = http_client(&config).unwrap();
        let slots = vec![Slot::new("node-1".into(), announced)];
        Fleet::from_parts(config, supervisor, shutdown, "token".into(), client, slots)
    }

    /// A node that answers every job with `{"result": 1}` and closes the connection, so that
    /// each call opens a new one.
    async fn answering_node() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let answer = || async {
            (
                [(reqwest::header::CONNECTION, "close")],
                axum::Json(json!({ "result": 1 })),
            )
        };
        let router = axum::Router::new().route(JOBS_PATH, post(answer));
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    fn job() -> JobRequest {
        JobRequest::new("job-1", "export default () => 1", Value::Null)
    }

    /// Whether anything is held against the job or the node's address.
    fn held_against(fleet: &Fleet) -> (usize, bool) {
        let inner = &fleet.inner;
        let crashes = lock(&inner.crashes).len();
        let address_dead = inner.usable_address(&inner.slots[0]).is_none();
        (crashes, address_dead)
    }

    #[test]
    fn a_call_that_fails_for_lack_of_descriptors_here_is_overload_and_holds_nothing_against_the_node()
     {
        // In a child process, which may exhaust its own descriptors.
        if !mechanics_test_support::in_child_process() {
            mechanics_test_support::passes_in_a_child_process(
                "fleet::tests::a_call_that_fails_for_lack_of_descriptors_here_is_overload_and_holds_nothing_against_the_node",
            );
            return;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let fleet = fleet_at(answering_node().await);
            assert_eq!(fleet.run(&job()).await.map(|r| r.result), Ok(json!(1)));

            let files = mechanics_test_support::exhaust_descriptors();
            for _ in 0..2 * CRASHES_BEFORE_FAILING {
                let error = fleet.run(&job()).await.unwrap_err();
                assert!(
                    matches!(&error, FleetError::Overloaded { kind, message, retry_after: None }
                        if kind == RESOURCE_EXHAUSTED && message.contains("(EMFILE)")),
                    "{error:?}"
                );
            }
            assert_eq!(held_against(&fleet), (0, false));
            let snapshot = fleet.supervisor().snapshot("node-1").unwrap();
            assert_eq!((snapshot.starts, snapshot.deaths), (1, 0));

            // Once descriptors are free again the same node takes the job at once.
            drop(files);
            assert_eq!(fleet.run(&job()).await.map(|r| r.result), Ok(json!(1)));
            fleet.shutdown().await;
        });
    }

    #[test]
    fn console_lines_come_back_with_a_result_and_with_a_script_error() {
        let console = json!([
            { "level": "log", "ts": 1, "message": "hello" },
            { "level": "error", "ts": 2, "message": "about to fail" },
        ]);
        let lines: Vec<ConsoleLine> = serde_json::from_value(console.clone()).unwrap();
        let ok = json!({ "result": { "n": 1 }, "console": console });
        let answered = answer(200, None, ok.to_string().as_bytes()).unwrap();
        assert_eq!(
            (answered.result, answered.console),
            (json!({ "n": 1 }), lines.clone())
        );

        let failed = json!({
            "error": { "kind": "execution", "message": "Error: boom" },
            "console": console,
        });
        let error = answer(422, None, failed.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.to_string(), "execution: Error: boom");
        assert_eq!(
            error,
            FleetError::Script {
                kind: "execution".into(),
                message: "Error: boom".into(),
                console: lines,
            }
        );
        // A node of an older build sends none.
        let old = answer(200, None, br#"{"result":1}"#).unwrap();
        assert!(old.console.is_empty());
    }

    #[tokio::test]
    async fn a_connection_that_breaks_with_the_job_on_it_is_still_a_node_death() {
        // Accepts each connection, reads the request, and hangs up without an answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            }
        });
        let fleet = fleet_at(address);
        let error = fleet.run(&job()).await.unwrap_err();
        assert!(
            matches!(&error, FleetError::Transport { node, .. } if node == "node-1"),
            "{error:?}"
        );
        assert_eq!(held_against(&fleet), (1, true));
        fleet.shutdown().await;
    }
}
