//! The supervisor: one loop per node that starts its instances, health-checks them, applies the
//! restart policy and the crash-loop breaker, and stops them on request or shutdown.
//!
//! Each node's loop is the only place that starts or ends that node's instances, and it awaits
//! the end of one instance before it starts the next, so a node never has two live instances.
//! Every wait in the loop (backoff, breaker cool-down, a running instance, a health check) is
//! raced against the stop signal, so shutdown is honoured in every state.
//!
//! A health check or launch that failed because this process is out of descriptors or memory
//! is kept apart from the node's own failures: it strikes nothing, kills nothing, counts no death,
//! and a starved launch is tried again after the short `resource_retry` delay.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinError;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;

use crate::breaker::{BreakerConfig, BreakerState, CrashLoopBreaker};
use crate::node::DynRunner;
use crate::{
    ExponentialBackoff, HealthStatus, NodeFailure, NodeRunner, ResourceExhaustion, RestartPolicy,
    RuntimeError, ShortageLog, ShutdownHandle,
};

/// How the supervisor treats its nodes. Every node uses these settings; only the restart policy
/// ([`Supervisor::add_with_policy`]) and the health-check interval
/// ([`Supervisor::add_with_health_interval`]) can be set per node.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// The policy of nodes added without one.
    pub restart_policy: RestartPolicy,
    /// How long a stopping instance may take to end before its future is dropped (for a
    /// [`ProcessNode`](crate::ProcessNode): its process group is then killed).
    pub shutdown_timeout: Duration,
    /// The pause between the end of one health check and the start of the next; zero turns
    /// health checks off.
    pub health_check_interval: Duration,
    /// A health check that takes longer counts as unhealthy.
    pub health_check_timeout: Duration,
    /// An instance unhealthy for this many consecutive checks is killed (and counts as a death).
    pub unhealthy_threshold: u32,
    /// The crash-loop breaker's limits.
    pub breaker: BreakerConfig,
    /// The wait before launching again after a launch failed because this process ran out of
    /// descriptors or memory ([`NodeFailure::resource_exhaustion`]); it grows with each such
    /// failure in a row. Such a failure is no death, so the restart policy's backoff and the
    /// breaker do not see it; keep the cap short, so nodes are back within seconds once the
    /// shortage ends.
    pub resource_retry: ExponentialBackoff,
}

impl Default for SupervisorConfig {
    /// Restart on failure with the default backoff, 10 s shutdown timeout, a health check every
    /// 5 s with a 5 s timeout, 3 strikes, the default breaker, and launches that failed for lack
    /// of a resource retried after 1 s, doubling up to 5 s.
    fn default() -> Self {
        SupervisorConfig {
            restart_policy: RestartPolicy::default(),
            shutdown_timeout: Duration::from_secs(10),
            health_check_interval: Duration::from_secs(5),
            health_check_timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
            breaker: BreakerConfig::default(),
            resource_retry: ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(5)),
        }
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// An instance is running.
    Running,
    /// The instance is being stopped (a kill, failed health checks, stop or shutdown).
    Stopping,
    /// Waiting out the restart delay; [`NodeSnapshot::next_start_at`] says until when.
    BackingOff,
    /// The crash-loop breaker tripped: no restart until a reset or the cool-down
    /// ([`NodeSnapshot::next_start_at`]).
    Tripped,
    /// Stopped on request or by shutdown. Final.
    Stopped,
    /// Ended and its restart policy does not start it again. Final.
    Exited,
}

impl NodeState {
    /// The state's name for APIs and metrics (`backing_off`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Running => "running",
            NodeState::Stopping => "stopping",
            NodeState::BackingOff => "backing_off",
            NodeState::Tripped => "tripped",
            NodeState::Stopped => "stopped",
            NodeState::Exited => "exited",
        }
    }

    /// Whether the node's supervision has ended (it will never run again).
    pub fn is_final(self) -> bool {
        matches!(self, NodeState::Stopped | NodeState::Exited)
    }
}

/// How a node's last instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastExit {
    /// Whether it ended by itself without an error.
    pub clean: bool,
    /// What ended it: `exited cleanly`, the failure's status, or why the supervisor killed it.
    pub status: String,
    /// The tail of its stderr, when the node reported one.
    pub stderr_tail: Vec<String>,
    /// How long the instance ran.
    pub ran_for: Duration,
}

/// A node's state and counters at one moment, for APIs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The node's name.
    pub name: String,
    /// Where it is in its life.
    pub state: NodeState,
    /// Its crash-loop breaker.
    pub breaker: BreakerState,
    /// The last health-check result of the current instance.
    pub health: HealthStatus,
    /// Instances started.
    pub starts: u64,
    /// Instances that ended without being asked to (failures, clean exits, kills).
    pub deaths: u64,
    /// Starts after the first.
    pub restarts: u64,
    /// Deaths the breaker counts in its current window.
    pub recent_deaths: usize,
    /// Set while the node's last launch, or the last health check of its instance, failed
    /// because this process is out of a resource; cleared by the next launch and by the next
    /// health check that gets an answer. Such failures are not counted as deaths or strikes.
    pub resource_exhaustion: Option<ResourceExhaustion>,
    /// Launches and health checks of this node that failed because this process was out of a
    /// resource.
    pub resource_failures: u64,
    /// How the last instance ended.
    pub last_exit: Option<LastExit>,
    /// When the node is next started, while it is backing off or tripped.
    pub next_start_at: Option<Instant>,
}

/// A node's runner while an instance runs, else the node's state.
pub(crate) type RunningRunner = Result<Arc<dyn DynRunner>, NodeState>;

enum Command {
    Kill(String),
    ResetBreaker,
}

struct NodeEntry {
    runner: Arc<dyn DynRunner>,
    status: watch::Receiver<NodeSnapshot>,
    commands: mpsc::UnboundedSender<Command>,
    stop: ShutdownHandle,
}

struct Inner {
    config: SupervisorConfig,
    shutdown: ShutdownHandle,
    nodes: Mutex<BTreeMap<String, NodeEntry>>,
    tasks: TaskTracker,
}

/// Runs nodes and keeps them alive. Cheap to clone; clones control the same nodes.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// A supervisor whose nodes all stop when `shutdown` is triggered.
    pub fn new(config: SupervisorConfig, shutdown: ShutdownHandle) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                config,
                shutdown,
                nodes: Mutex::new(BTreeMap::new()),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The settings this supervisor was built with.
    pub fn config(&self) -> &SupervisorConfig {
        &self.inner.config
    }

    /// Starts supervising `runner` as `name` under the default restart policy; its first
    /// instance starts at once. A node of the same name that has ended is replaced.
    pub fn add(&self, name: &str, runner: impl NodeRunner) -> Result<(), RuntimeError> {
        self.add_with_policy(name, runner, self.inner.config.restart_policy.clone())
    }

    /// [`add`](Self::add) with its own restart policy.
    pub fn add_with_policy(
        &self,
        name: &str,
        runner: impl NodeRunner,
        policy: RestartPolicy,
    ) -> Result<(), RuntimeError> {
        self.add_dyn(name, Arc::new(runner), policy, None)
    }

    /// [`add_with_policy`](Self::add_with_policy), with the node's own pause between health
    /// checks instead of the supervisor's `health_check_interval` (zero turns its checks off):
    /// a node whose service says how often it wants to be asked (a container worker's
    /// `health.interval`).
    pub fn add_with_health_interval(
        &self,
        name: &str,
        runner: impl NodeRunner,
        policy: RestartPolicy,
        health_check_interval: Duration,
    ) -> Result<(), RuntimeError> {
        self.add_dyn(name, Arc::new(runner), policy, Some(health_check_interval))
    }

    pub(crate) fn add_dyn(
        &self,
        name: &str,
        runner: Arc<dyn DynRunner>,
        policy: RestartPolicy,
        health_check_interval: Option<Duration>,
    ) -> Result<(), RuntimeError> {
        let mut nodes = self.nodes();
        if self.inner.shutdown.is_triggered() {
            return Err(RuntimeError::ShuttingDown);
        }
        if nodes
            .get(name)
            .is_some_and(|entry| !entry.status.borrow().state.is_final())
        {
            return Err(RuntimeError::NodeExists(name.to_owned()));
        }
        let breaker = CrashLoopBreaker::new(self.inner.config.breaker.clone());
        let (status_tx, status_rx) = watch::channel(NodeSnapshot {
            name: name.to_owned(),
            state: NodeState::Running,
            breaker: breaker.state(),
            health: HealthStatus::Unknown,
            starts: 0,
            deaths: 0,
            restarts: 0,
            recent_deaths: 0,
            resource_exhaustion: None,
            resource_failures: 0,
            last_exit: None,
            next_start_at: None,
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let stop = self.inner.shutdown.child();
        let span = tracing::info_span!("node", node = %name);
        let mut config = self.inner.config.clone();
        if let Some(interval) = health_check_interval {
            config.health_check_interval = interval;
        }
        let node_loop = NodeLoop {
            runner: runner.clone(),
            policy,
            config,
            status: status_tx,
            commands: Some(commands_rx),
            stop: stop.clone(),
            breaker,
            shortages: ShortageLog::new(),
            span: span.clone(),
        };
        self.inner.tasks.spawn(node_loop.run().instrument(span));
        nodes.insert(
            name.to_owned(),
            NodeEntry {
                runner,
                status: status_rx,
                commands: commands_tx,
                stop,
            },
        );
        Ok(())
    }

    /// Stops the node (its instance gets the shutdown timeout to end), waits until it has
    /// ended, forgets it and returns its final snapshot.
    pub async fn stop(&self, name: &str) -> Result<NodeSnapshot, RuntimeError> {
        let entry = self
            .nodes()
            .remove(name)
            .ok_or_else(|| RuntimeError::UnknownNode(name.to_owned()))?;
        entry.stop.trigger();
        let mut status = entry.status;
        // The loop owns the sender and drops it when it returns, after its instance has ended.
        while status.changed().await.is_ok() {}
        let last = status.borrow().clone();
        Ok(last)
    }

    /// Kills the node's running instance as a death: it is recorded with `reason`, counted by
    /// the breaker and followed by the restart policy, exactly like a crash. Use it for
    /// watchdogs. Does nothing while the node is backing off or tripped.
    pub fn kill(&self, name: &str, reason: &str) -> Result<(), RuntimeError> {
        self.command(name, Command::Kill(reason.to_owned()))
    }

    /// Re-arms the node's crash-loop breaker, forgetting its deaths; a tripped node is started
    /// again at once.
    pub fn reset_breaker(&self, name: &str) -> Result<(), RuntimeError> {
        self.command(name, Command::ResetBreaker)
    }

    fn command(&self, name: &str, command: Command) -> Result<(), RuntimeError> {
        let nodes = self.nodes();
        let entry = nodes
            .get(name)
            .ok_or_else(|| RuntimeError::UnknownNode(name.to_owned()))?;
        entry
            .commands
            .send(command)
            .map_err(|_| RuntimeError::NotRunning(name.to_owned()))
    }

    /// The node's current snapshot.
    pub fn snapshot(&self, name: &str) -> Option<NodeSnapshot> {
        self.nodes()
            .get(name)
            .map(|entry| entry.status.borrow().clone())
    }

    /// Every node's snapshot, by name.
    pub fn snapshots(&self) -> Vec<NodeSnapshot> {
        self.nodes()
            .values()
            .map(|entry| entry.status.borrow().clone())
            .collect()
    }

    /// A receiver that sees each change of the node's snapshot; `changed` fails once the node
    /// has ended for good.
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<NodeSnapshot>> {
        self.nodes().get(name).map(|entry| entry.status.clone())
    }

    /// Triggers shutdown (if not already triggered) and waits until every node has ended: each
    /// instance is asked to stop and gets the shutdown timeout, then is dropped.
    pub async fn shutdown(&self) {
        self.inner.shutdown.trigger();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Each node's name with its runner if an instance is running, else its state; for the
    /// health checker.
    pub(crate) fn runners(&self) -> Vec<(String, RunningRunner)> {
        self.nodes()
            .iter()
            .map(|(name, entry)| {
                let state = entry.status.borrow().state;
                let runner = if state == NodeState::Running {
                    Ok(entry.runner.clone())
                } else {
                    Err(state)
                };
                (name.clone(), runner)
            })
            .collect()
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<String, NodeEntry>> {
        // The map is only ever left consistent (inserts and removes are single calls), so a
        // panic elsewhere while it was locked cannot have broken it.
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How one instance ended.
enum InstanceEnd {
    /// By itself.
    Ended(Result<(), NodeFailure>),
    /// Killed by the supervisor: a kill command or failed health checks.
    Killed {
        reason: String,
        result: Result<(), NodeFailure>,
    },
    /// Stopped on request or by shutdown.
    Stopped,
}

struct NodeLoop {
    runner: Arc<dyn DynRunner>,
    policy: RestartPolicy,
    config: SupervisorConfig,
    status: watch::Sender<NodeSnapshot>,
    /// `None` once every sender is gone (the supervisor was dropped): no command can come.
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    stop: ShutdownHandle,
    breaker: CrashLoopBreaker,
    /// Warnings about launches and health checks that failed for lack of a resource.
    shortages: ShortageLog,
    span: tracing::Span,
}

impl NodeLoop {
    async fn run(mut self) {
        let mut failures_in_row: u32 = 0;
        let mut starved_in_row: u32 = 0;
        loop {
            if self.stop.is_triggered() {
                break;
            }
            let started = Instant::now();
            self.status.send_modify(|s| {
                s.state = NodeState::Running;
                s.starts += 1;
                s.health = HealthStatus::Unknown;
                s.resource_exhaustion = None;
                s.next_start_at = None;
            });
            let end = match self.supervise_instance(started).await {
                InstanceEnd::Ended(Err(NodeFailure {
                    resource_exhaustion: Some(resource),
                    ..
                })) => {
                    if !self.retry_starved_launch(resource, starved_in_row).await {
                        break;
                    }
                    starved_in_row = starved_in_row.saturating_add(1);
                    continue;
                }
                end => end,
            };
            starved_in_row = 0;
            let ran_for = started.elapsed();
            let last_exit = match end {
                InstanceEnd::Stopped => break,
                InstanceEnd::Ended(Ok(())) => LastExit {
                    clean: true,
                    status: "exited cleanly".into(),
                    stderr_tail: Vec::new(),
                    ran_for,
                },
                InstanceEnd::Ended(Err(failure)) => LastExit {
                    clean: false,
                    status: failure.status,
                    stderr_tail: failure.stderr_tail,
                    ran_for,
                },
                InstanceEnd::Killed { reason, result } => {
                    let (status, stderr_tail) = match result {
                        Ok(()) => (format!("killed by the supervisor: {reason}"), Vec::new()),
                        Err(failure) => (
                            format!("killed by the supervisor: {reason} ({})", failure.status),
                            failure.stderr_tail,
                        ),
                    };
                    LastExit {
                        clean: false,
                        status,
                        stderr_tail,
                        ran_for,
                    }
                }
            };
            // A run that outlived the crash window was stable: the next failure backs off from
            // the start again.
            if ran_for >= self.config.breaker.crash_window {
                failures_in_row = 0;
            }
            let delay = self
                .policy
                .next_delay(last_exit.clean, failures_in_row, random_unit());
            if !last_exit.clean {
                failures_in_row = failures_in_row.saturating_add(1);
            }
            let tripped = delay.is_some() && self.breaker.record_death(Instant::now());
            if last_exit.clean {
                tracing::info!(ran_for = ?ran_for, "node exited cleanly");
            } else {
                tracing::warn!(status = %last_exit.status, stderr_tail = ?last_exit.stderr_tail, "node died");
            }
            let trip_error = tripped.then(|| RuntimeError::BreakerTripped {
                node: self.status.borrow().name.clone(),
                deaths: self.breaker.recent_deaths(),
                window_secs: self.config.breaker.crash_window.as_secs(),
                last_exit: last_exit.status.clone(),
                stderr_tail: last_exit.stderr_tail.clone(),
            });
            self.status.send_modify(|s| {
                s.deaths += 1;
                s.last_exit = Some(last_exit);
                s.health = HealthStatus::Unknown;
            });
            self.publish_breaker();
            let Some(delay) = delay else {
                self.status.send_modify(|s| s.state = NodeState::Exited);
                return;
            };
            let resumed = match (trip_error, self.breaker.cooldown_ends()) {
                (Some(error), Some(cooldown_ends)) => {
                    tracing::error!(%error, "crash-loop breaker tripped");
                    self.wait_to_restart(NodeState::Tripped, cooldown_ends)
                        .await
                }
                _ => {
                    self.wait_to_restart(NodeState::BackingOff, Instant::now() + delay)
                        .await
                }
            };
            if !resumed {
                break;
            }
            self.status.send_modify(|s| s.restarts += 1);
        }
        self.status.send_modify(|s| {
            s.state = NodeState::Stopped;
            s.next_start_at = None;
        });
    }

    /// Runs one instance until it ends, is killed, or must stop.
    async fn supervise_instance(&mut self, started: Instant) -> InstanceEnd {
        let instance_stop = self.stop.child();
        let mut task = AbortOnDropHandle::new(tokio::spawn(
            self.runner
                .clone()
                .run_boxed(instance_stop.signal())
                .instrument(self.span.clone()),
        ));
        let node_stop = self.stop.signal();
        let interval = self.config.health_check_interval;
        let checks_on = !interval.is_zero();
        let mut next_check = started + interval;
        let mut check: Option<AbortOnDropHandle<HealthStatus>> = None;
        let mut strikes: u32 = 0;
        loop {
            let proven_at = self.breaker.try_proven_at();
            tokio::select! {
                biased;
                () = node_stop.requested() => {
                    self.status.send_modify(|s| s.state = NodeState::Stopping);
                    match self.end_instance(&mut task, &instance_stop).await {
                        Ok(()) => tracing::info!("node stopped"),
                        Err(failure) => tracing::warn!(status = %failure, "node stopped with a failure"),
                    }
                    return InstanceEnd::Stopped;
                }
                result = &mut task => return InstanceEnd::Ended(join_result(result)),
                command = recv_command(&mut self.commands) => match command {
                    Command::Kill(reason) => {
                        tracing::warn!(%reason, "killing the node's instance");
                        self.status.send_modify(|s| s.state = NodeState::Stopping);
                        let result = self.end_instance(&mut task, &instance_stop).await;
                        return InstanceEnd::Killed { reason, result };
                    }
                    Command::ResetBreaker => self.reset_breaker(),
                },
                () = sleep_until(next_check), if checks_on && check.is_none() => {
                    check = Some(self.start_health_check());
                }
                result = async { check.as_mut().expect("guarded by is_some").await }, if check.is_some() => {
                    check = None;
                    next_check = Instant::now() + interval;
                    let health = result.unwrap_or_else(|err| HealthStatus::Unhealthy(format!("health check {}", join_message(err))));
                    match &health {
                        HealthStatus::Healthy => strikes = 0,
                        HealthStatus::Unknown => {}
                        HealthStatus::Unhealthy(reason) => {
                            strikes += 1;
                            tracing::warn!(%reason, strikes, "health check failed");
                        }
                        // This process could not ask: the node may well be fine, so it keeps its
                        // strikes and its last conclusive health, and keeps serving.
                        HealthStatus::Unchecked(resource) => {
                            self.shortages.warn(*resource, &"health check");
                        }
                    }
                    let reason = match &health {
                        HealthStatus::Unhealthy(reason) if strikes >= self.config.unhealthy_threshold => Some(format!(
                            "unhealthy for {strikes} consecutive checks: {reason}"
                        )),
                        _ => None,
                    };
                    self.status.send_modify(|s| match health {
                        HealthStatus::Unchecked(resource) => {
                            s.resource_exhaustion = Some(resource);
                            s.resource_failures += 1;
                        }
                        health => {
                            s.health = health;
                            s.resource_exhaustion = None;
                        }
                    });
                    if let Some(reason) = reason {
                        tracing::warn!(%reason, "killing the node's instance");
                        self.status.send_modify(|s| s.state = NodeState::Stopping);
                        let result = self.end_instance(&mut task, &instance_stop).await;
                        return InstanceEnd::Killed { reason, result };
                    }
                }
                () = sleep_until(proven_at.unwrap_or(started)), if proven_at.is_some() => {
                    tracing::info!("crash-loop breaker closed: the try outlived the crash window");
                    self.breaker.reset();
                    self.publish_breaker();
                }
            }
        }
    }

    fn start_health_check(&self) -> AbortOnDropHandle<HealthStatus> {
        let runner = self.runner.clone();
        let limit = self.config.health_check_timeout;
        AbortOnDropHandle::new(tokio::spawn(
            async move {
                timeout(limit, runner.health_boxed())
                    .await
                    .unwrap_or_else(|_| {
                        HealthStatus::Unhealthy(format!("health check timed out after {limit:?}"))
                    })
            }
            .instrument(self.span.clone()),
        ))
    }

    /// Asks the instance to stop, waits up to the shutdown timeout, then drops it. Returns once
    /// the instance's future is gone, so the next instance never overlaps it.
    async fn end_instance(
        &self,
        task: &mut AbortOnDropHandle<Result<(), NodeFailure>>,
        instance_stop: &ShutdownHandle,
    ) -> Result<(), NodeFailure> {
        instance_stop.trigger();
        let limit = self.config.shutdown_timeout;
        match timeout(limit, &mut *task).await {
            Ok(result) => join_result(result),
            Err(_) => {
                tracing::warn!(timeout = ?limit, "instance did not stop in time; dropping it");
                task.abort();
                // Wait for the abort to take effect: the future's drop runs before this returns.
                let _ = (&mut *task).await;
                Err(NodeFailure::new(format!(
                    "did not stop within {limit:?}; aborted"
                )))
            }
        }
    }

    /// The instance's launch failed because this process is out of `resource`, after
    /// `starved_in_row` such failures in a row: the node never ran, so this is neither a death
    /// nor a start, and neither the restart policy's backoff nor the breaker sees it. Waits the
    /// short resource-retry delay instead. Returns false if the node must stop instead.
    async fn retry_starved_launch(
        &mut self,
        resource: ResourceExhaustion,
        starved_in_row: u32,
    ) -> bool {
        self.shortages.warn(resource, &"launch");
        self.status.send_modify(|s| {
            s.starts = s.starts.saturating_sub(1);
            s.resource_exhaustion = Some(resource);
            s.resource_failures += 1;
        });
        let delay = self
            .config
            .resource_retry
            .delay(starved_in_row, random_unit());
        if !self
            .wait_to_restart(NodeState::BackingOff, Instant::now() + delay)
            .await
        {
            return false;
        }
        // A half-open breaker's one try is measured from when an instance really runs.
        if self.breaker.state() == BreakerState::HalfOpen {
            self.breaker.half_open(Instant::now());
        }
        true
    }

    /// Waits in `state` (backing off or tripped) until `until`: the restart delay or the
    /// breaker's cool-down, after which a tripped breaker half-opens. A reset ends a trip at
    /// once. Returns false if the node must stop instead.
    async fn wait_to_restart(&mut self, state: NodeState, until: Instant) -> bool {
        self.status.send_modify(|s| {
            s.state = state;
            s.next_start_at = Some(until);
        });
        let tripped = state == NodeState::Tripped;
        let node_stop = self.stop.signal();
        loop {
            tokio::select! {
                biased;
                () = node_stop.requested() => return false,
                () = sleep_until(until) => {
                    if tripped {
                        tracing::info!("crash-loop breaker cooled down; one more try");
                        self.breaker.half_open(Instant::now());
                        self.publish_breaker();
                    }
                    return true;
                }
                command = recv_command(&mut self.commands) => match command {
                    Command::ResetBreaker => {
                        self.reset_breaker();
                        if tripped {
                            return true;
                        }
                    }
                    Command::Kill(_) => {}
                },
            }
        }
    }

    fn reset_breaker(&mut self) {
        tracing::info!("crash-loop breaker reset");
        self.breaker.reset();
        self.publish_breaker();
    }

    fn publish_breaker(&self) {
        let (state, recent) = (self.breaker.state(), self.breaker.recent_deaths());
        self.status.send_modify(|s| {
            s.breaker = state;
            s.recent_deaths = recent;
        });
    }
}

/// The next command, or never once no sender is left (so a `select!` loop does not spin on a
/// closed channel).
async fn recv_command(commands: &mut Option<mpsc::UnboundedReceiver<Command>>) -> Command {
    if let Some(receiver) = commands {
        if let Some(command) = receiver.recv().await {
            return command;
        }
        *commands = None;
    }
    std::future::pending().await
}

fn join_result(result: Result<Result<(), NodeFailure>, JoinError>) -> Result<(), NodeFailure> {
    result.unwrap_or_else(|err| Err(NodeFailure::new(format!("node {}", join_message(err)))))
}

fn join_message(err: JoinError) -> String {
    if !err.is_panic() {
        return "was cancelled".into();
    }
    let payload = err.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into());
    format!("panicked: {message}")
}

/// A uniform random number in `[0, 1)` for backoff jitter; `RandomState` is randomly keyed per
/// instance, which is all the randomness jitter needs.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
