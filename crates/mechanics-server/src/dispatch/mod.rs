//! The dispatcher: the database is the queue.
//!
//! One feeder claims due tasks (each claim takes a lease and a fencing `attempt`) into a small
//! ready queue in front of the runners: at most `prefetch` claimed tasks wait for a runner, and
//! `prefetch` is never more than `concurrency`, so a claimed task starts within one attempt's time
//! and its lease covers the wait. Under load the feeder claims only when half the queue has
//! drained, so one claim query takes many tasks instead of one per finished attempt; with nothing
//! claimed it claims as soon as a task is due. A runner, once free, takes a token from the
//! worker's bucket (the store's, shared by every server on the database); a task whose token is
//! in the future is re-queued to that slot with the token reserved in its row, which is not an
//! attempt, and whichever server claims it then runs it on that token. The runner runs the
//! attempt through the worker's
//! [`executor`](crate::executor) and records the outcome fenced by the attempt: a late answer from
//! an older claim changes nothing. What a js attempt wrote with `console` is redacted and
//! stored for that attempt before its outcome, with one `console` entry in `/logs`.
//!
//! When nothing is due the feeder sleeps until the earliest `next_run_at` or lease expiry the
//! store reports, or until something new is queued: an idle server makes no queries.
//!
//! Every step (attempt result, retry, dead letter, rate-limit re-queue, recovery) is reported
//! through the [`TraceLog`]'s pipeline methods, which count it in the metrics and write its
//! `/logs` entry; each attempt runs in a span carrying its trace id.

pub mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mechanics_proto::domain::{
    AttemptOutcome, ConsoleLine, Task, TaskAttempt, TaskState, Worker, WorkerKind,
};
use mechanics_proto::node::JobRequest;
use mechanics_store::{Release, Store, StoreError, Take, TokenRate, Tokens};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument;

use crate::clock::Clock;
use crate::containers::ContainerWorkers;
use crate::executor::{AttemptOutput, HttpWorkerClient, JsExecutor, Outcome, task_body};
use crate::processes::ProcessWorkers;
use crate::registry::Registry;
use crate::trace_log::{TraceLog, task_span};

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Attempts running at once.
    pub concurrency: usize,
    /// Most tasks claimed by one query.
    pub claim_batch: u32,
    /// Claimed tasks that may wait for a free runner; capped at `concurrency` (see the module
    /// docs).
    pub prefetch: usize,
    /// A claim's lease beyond the attempt's own timeout.
    pub lease_margin: Duration,
    /// Timeout of one http or process worker call.
    pub http_timeout: Duration,
    /// Bucket of workers whose spec sets no `rate_limit`.
    pub default_rate: TokenRate,
}

impl DispatchConfig {
    /// Claimed tasks that may wait for a runner: `prefetch`, at most `concurrency`, at least 1.
    fn ready_queue(&self) -> usize {
        self.prefetch.min(self.concurrency).max(1)
    }
}

/// Everything a runner needs.
pub(crate) struct Dispatcher {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    pub(crate) registry: Arc<Registry>,
    pub(crate) js: Option<Arc<dyn JsExecutor>>,
    pub(crate) http: HttpWorkerClient,
    pub(crate) processes: Arc<ProcessWorkers>,
    /// The container workers.
    pub(crate) containers: Arc<ContainerWorkers>,
    /// Attempts running, by task id, so that those still running when the drain ends can be
    /// stopped before the executors are.
    /// Each with the attempt of its claim, whose lease a shared store's renewal extends.
    running: Mutex<HashMap<i64, (u32, tokio::task::AbortHandle)>>,
    /// One per claimed task, running or waiting for a runner: `concurrency + prefetch` in all.
    slots: Arc<Semaphore>,
    /// Set when the feeder stops: claimed tasks still waiting for a runner are put back.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Claimed tasks waiting for a runner, by id and attempt: one canceled meanwhile is dropped
    /// unrun.
    waiting: Mutex<HashSet<(i64, u32)>>,
    /// Metrics and `/logs` entries of every step.
    pub(crate) trace: Arc<TraceLog>,
    pub(crate) config: DispatchConfig,
    /// Rung when a task may have become due: a submission, a retry, a finished attempt.
    pub(crate) wake: Notify,
    /// Events whose task ended, for the write-back loop to settle.
    pub(crate) settle: crate::writeback::SettleQueue,
    permits: Arc<Semaphore>,
    /// Claim queries that returned tasks, for the lease sweep to tell a busy dispatcher.
    claims: std::sync::atomic::AtomicU64,
}

/// An attempt that was sent to its worker: when, and with which revision of the worker.
#[derive(Debug, Clone, Copy)]
struct Ran {
    started_at: i64,
    worker_revision: i64,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Clock,
        registry: Arc<Registry>,
        js: Option<Arc<dyn JsExecutor>>,
        http: HttpWorkerClient,
        processes: Arc<ProcessWorkers>,
        containers: Arc<ContainerWorkers>,
        trace: Arc<TraceLog>,
        config: DispatchConfig,
    ) -> Self {
        Self {
            store,
            clock,
            registry,
            js,
            http,
            processes,
            containers,
            running: Mutex::new(HashMap::new()),
            trace,
            permits: Arc::new(Semaphore::new(config.concurrency)),
            slots: Arc::new(Semaphore::new(config.concurrency + config.ready_queue())),
            stopping: tokio::sync::watch::Sender::new(false),
            waiting: Mutex::new(HashSet::new()),
            config,
            wake: Notify::new(),
            settle: crate::writeback::SettleQueue::default(),
            claims: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Claim queries that returned tasks since start.
    pub(crate) fn claims_made(&self) -> u64 {
        self.claims.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Attempts running now.
    pub(crate) fn in_flight(&self) -> usize {
        self.config.concurrency - self.permits.available_permits()
    }

    /// Claimed tasks waiting for a runner now (the ready queue).
    pub(crate) fn ready(&self) -> usize {
        lock(&self.waiting).len()
    }

    /// Drops claimed task `id` if it is still waiting for a runner (it was canceled): it must not
    /// run. A task already running is left to finish; its answer is then fenced out.
    pub(crate) fn withdraw(&self, id: i64) {
        let withdrawn = {
            let mut waiting = lock(&self.waiting);
            let claim = waiting.iter().find(|(task, _)| *task == id).copied();
            claim.is_some_and(|claim| waiting.remove(&claim))
        };
        // Not under the `waiting` lock: the feeder takes `running` first.
        let waiter = withdrawn.then(|| lock(&self.running).remove(&id)).flatten();
        if let Some((_, waiter)) = waiter {
            waiter.abort();
        }
    }

    /// Claims and runs tasks until `stop` resolves; then waits up to `drain` for the attempts in
    /// flight. Attempts still running after that keep their leases and are recovered later.
    pub(crate) async fn run(self: Arc<Self>, stop: impl Future<Output = ()>, drain: Duration) {
        tokio::pin!(stop);
        let all_slots = self.config.concurrency + self.config.ready_queue();
        let refill = (self.config.ready_queue() / 2).max(1);
        loop {
            // With tasks claimed already, wait until half the ready queue has drained, so one
            // query claims a batch; with none, claim as soon as one task can be taken.
            let wanted = if self.slots.available_permits() == all_slots {
                1
            } else {
                u32::try_from(refill).unwrap_or(1)
            };
            let mut first = tokio::select! {
                () = &mut stop => break,
                slots = self.slots.clone().acquire_many_owned(wanted) => match slots {
                    Ok(slots) => slots,
                    Err(_) => break,
                },
            };
            let mut slots = Vec::with_capacity(self.config.claim_batch as usize);
            while let Some(slot) = first.split(1) {
                slots.push(slot);
            }
            while slots.len() < self.config.claim_batch as usize {
                match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => slots.push(slot),
                    Err(_) => break,
                }
            }
            let now = self.clock.now_ms();
            let lease_until = now.saturating_add(duration_ms(self.lease().await));
            let claimed = match self
                .store
                .claim_due(now, lease_until, u32::try_from(slots.len()).unwrap_or(1))
                .await
            {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::error!(error = %err, "claiming tasks failed; trying again in 1 s");
                    drop(slots);
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if !claimed.is_empty() {
                self.claims
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if claimed.is_empty() {
                drop(slots);
                tokio::select! {
                    () = &mut stop => break,
                    () = self.sleep_until_due() => {}
                }
                continue;
            }
            for (task, slot) in claimed.into_iter().zip(slots) {
                let this = self.clone();
                let span = task_span(&task);
                let (id, claim) = (task.id, task.attempt);
                // Held while spawning, so the attempt cannot remove its entry before it exists.
                let mut running = lock(&self.running);
                lock(&self.waiting).insert((id, task.attempt));
                let attempt = tokio::spawn(
                    async move {
                        this.wait_and_run(task).await;
                        lock(&this.running).remove(&id);
                        drop(slot);
                    }
                    .instrument(span),
                );
                running.insert(id, (claim, attempt.abort_handle()));
            }
        }
        self.stopping.send_replace(true);
        let all = u32::try_from(all_slots).unwrap_or(u32::MAX);
        if tokio::time::timeout(drain, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.in_flight(),
                "the drain timeout passed with attempts in flight; recovery picks them up"
            );
            // Stop them before the executors go: an attempt whose node is stopped under it would
            // be recorded as a transport failure and spend a try. Aborted, it stays `dispatched`
            // with its lease, and startup recovery runs it again.
            for (_, (_, attempt)) in lock(&self.running).drain() {
                attempt.abort();
            }
        }
    }

    /// Waits for a free runner, then runs the claimed `task`; if the dispatcher stops first, puts
    /// the task back to `pending` without spending a try.
    async fn wait_and_run(&self, task: Task) {
        let mut stopping = self.stopping.subscribe();
        let permit = tokio::select! {
            biased;
            _ = stopping.wait_for(|stopping| *stopping) => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        };
        if !lock(&self.waiting).remove(&(task.id, task.attempt)) {
            // Canceled while it waited ([`withdraw`](Self::withdraw)).
            return;
        }
        let Some(permit) = permit else {
            let now = self.clock.now_ms();
            if let Err(err) = self
                .store
                .release_task(task.id, task.attempt, now, Release::Unreserved, now)
                .await
            {
                log_store_error(&task, "putting back a task that never started", &err);
            }
            return;
        };
        // A shared store's claims are renewed while they wait: only a lone server's lease
        // can run out here.
        if !self.store.shared()
            && task
                .lease_expires_at
                .is_some_and(|until| until <= self.clock.now_ms())
        {
            // Only attempts that overran their own limits make a wait this long. The task goes
            // back without counting as a run or spending a try; the release is fenced by the
            // claim, so if the expired lease already handed the task on, it changes nothing.
            tracing::warn!(
                task = task.id,
                attempt = task.attempt,
                "a claimed task waited past its lease; it was not run"
            );
            let now = self.clock.now_ms();
            if let Err(err) = self
                .store
                .release_task(task.id, task.attempt, now, Release::Unreserved, now)
                .await
            {
                log_store_error(
                    &task,
                    "putting back a task that waited past its lease",
                    &err,
                );
            }
            return;
        }
        self.run_attempt(task).await;
        drop(permit);
    }

    /// The longest a claim may be held: a wait in the ready queue, then the attempt, plus a
    /// margin. The wait is at most one attempt's time: at most `concurrency` tasks wait, and
    /// each running attempt ends within that time and hands its runner to the next in line.
    ///
    /// Claims are made before the claimed tasks' workers are known, so the lease covers the
    /// slowest worker registered: an http call's timeout, or a js job's time limit plus the
    /// executor's watchdog grace and its wait for a free node. A lease shorter than a running
    /// attempt would hand the task to a second runner while the first still works on it.
    ///
    /// With other servers on the database the lease is [`SHARED_LEASE`] instead, renewed while
    /// the claim is held ([`renew_leases`](Self::renew_leases)): a server that dies gives its
    /// tasks back within that time rather than after the slowest worker's timeout.
    pub(crate) async fn lease(&self) -> Duration {
        if self.store.shared() {
            return SHARED_LEASE;
        }
        let slowest_js = self
            .registry
            .all()
            .await
            .values()
            .filter(|w| w.spec.kind == WorkerKind::Js)
            .map(|w| {
                let limit_ms = w
                    .spec
                    .limits
                    .as_ref()
                    .and_then(|l| l.get("max_execution_time_ms"))
                    .and_then(Value::as_u64)
                    .unwrap_or(DEFAULT_JS_TIME_LIMIT_MS);
                Duration::from_millis(limit_ms) + JS_EXECUTOR_SLACK
            })
            .max()
            .unwrap_or_default();
        self.config.http_timeout.max(slowest_js) * 2 + self.config.lease_margin
    }

    /// Sleeps until the store's next due time (a pending task's `next_run_at`, or an expired
    /// lease, which it then requeues) or until [`wake`](Self::wake) is rung. With other servers
    /// on the database it sleeps at most [`FALLBACK_POLL`](crate::FALLBACK_POLL): their hints
    /// wake it, and the poll covers a hint that was lost. The poll is this one query: when it
    /// shows nothing due, the sleep goes on without a claim (an idle server makes one query a
    /// second, not two).
    async fn sleep_until_due(&self) {
        loop {
            let next = match self.store.next_due().await {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(error = %err, "reading the next due time failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            };
            let due = [next.task_run_at, next.lease_expires_at]
                .into_iter()
                .flatten()
                .min();
            let poll_at = self.store.shared().then(|| {
                self.clock
                    .now_ms()
                    .saturating_add(duration_ms(crate::FALLBACK_POLL))
            });
            match due.into_iter().chain(poll_at).min() {
                Some(at) => {
                    tokio::select! {
                        () = self.wake.notified() => return,
                        () = tokio::time::sleep_until(self.clock.instant_at(at)) => {
                            if next.lease_expires_at.is_some_and(|l| l <= self.clock.now_ms()) {
                                self.requeue_expired().await;
                            }
                            // Only the poll's time came: read the due times again.
                            if due.is_none_or(|due| due > at) {
                                continue;
                            }
                            return;
                        }
                    }
                }
                None => return self.wake.notified().await,
            }
        }
    }

    /// Extends the leases of every claim this dispatcher holds (waiting or running) by
    /// [`SHARED_LEASE`]; a shared store's servers call it every third of that.
    pub(crate) async fn renew_leases(&self) {
        let claims: Vec<(i64, u32)> = lock(&self.running)
            .iter()
            .map(|(id, (attempt, _))| (*id, *attempt))
            .collect();
        if claims.is_empty() {
            return;
        }
        let until = self
            .clock
            .now_ms()
            .saturating_add(duration_ms(SHARED_LEASE));
        if let Err(err) = self.store.renew_leases(&claims, until).await {
            tracing::warn!(error = %err, claims = claims.len(), "renewing leases failed; trying again at the next renewal");
        }
    }

    /// Puts tasks whose lease expired back to pending.
    pub(crate) async fn requeue_expired(&self) {
        match self.store.requeue_expired_leases(self.clock.now_ms()).await {
            Ok(tasks) => {
                for task in &tasks {
                    tracing::warn!(task = task.id, worker = %task.worker, "a lease expired; the task is pending again");
                    self.trace
                        .recovered(task, "lease expired", self.clock.now_ms());
                }
            }
            Err(err) => tracing::error!(error = %err, "requeueing expired leases failed"),
        }
    }

    /// Runs one claimed attempt and records what came of it.
    async fn run_attempt(&self, task: Task) {
        let mut worker = self.registry.get(&task.worker).await;
        if worker.is_none() && self.store.shared() {
            // Another server may have added it an instant ago, before its notification came.
            if let Err(err) = self.store.refresh_registry_version().await {
                log_store_error(&task, "reading the registry version", &err);
            }
            worker = self.registry.get(&task.worker).await;
        }
        let Some(worker) = worker else {
            self.finish(
                &task,
                Outcome::Failed(format!("the worker {:?} no longer exists", task.worker)).into(),
                None,
            )
            .await;
            return;
        };
        // Every claim counts a try; claims whose attempts never answered (their leases expired)
        // count too, so a task that outlives every lease ends dead instead of running forever.
        if !retry::may_retry(&worker.spec.retry, task.tries.saturating_sub(1)) {
            let message = format!(
                "claimed {} times without an answer in time (leases expired)",
                task.tries - 1
            );
            self.finish(&task, Outcome::Transport(message).into(), None)
                .await;
            return;
        }
        let now = self.clock.now_ms();
        match task.reserved_slot {
            // The token reserved for it by the server that re-queued it to this slot. Tokens are
            // taken when a runner is free, never while a task waits for one: tasks that waited
            // together must not start together beyond the burst.
            Some(slot) if slot <= now => self.run_with_token(&worker, &task).await,
            Some(slot) => self.wait_for_token(&task, slot, now).await,
            None => match self.take_token(&worker, &task, now).await {
                Some(slot) if slot <= now => self.run_with_token(&worker, &task).await,
                Some(slot) => self.wait_for_token(&task, slot, now).await,
                None => {
                    self.release(
                        &task,
                        now.saturating_add(duration_ms(OVERLOAD_BACKOFF)),
                        now,
                    )
                    .await
                }
            },
        }
    }

    /// The rate of `worker`'s bucket: its `rate_limit`, else the server's default.
    fn rate_of(&self, worker: &Worker) -> TokenRate {
        worker
            .spec
            .rate_limit
            .as_ref()
            .map_or(self.config.default_rate, |r| TokenRate {
                per_second: r.per_second,
                burst: r.burst,
            })
    }

    /// Takes one token of the worker's bucket (the store's, shared by every server on the
    /// database): the time it may be used, or `None` when the bucket could not be read.
    async fn take_token(&self, worker: &Worker, task: &Task, now: i64) -> Option<i64> {
        let bucket = bucket_of(&task.worker);
        match self
            .store
            .take_tokens(&bucket, self.rate_of(worker), Take::Reserve(1), now)
            .await
        {
            Ok(Tokens::Granted(slots)) => slots.first().copied(),
            Ok(Tokens::NotBefore(at)) => Some(at),
            Err(err) => {
                log_store_error(task, "taking a rate-limit token", &err);
                None
            }
        }
    }

    /// Re-queues `task` to the token reserved for it at `slot`, which is not an attempt.
    async fn wait_for_token(&self, task: &Task, slot: i64, now: i64) {
        // Traced before the write, as a retry is: once it commits, the task may be claimed and
        // run before this call returns.
        self.trace.rate_limited(task, slot, now);
        match self
            .store
            .release_task(task.id, task.attempt, slot, Release::OnReservedToken, now)
            .await
        {
            Ok(_) => self.wake.notify_one(),
            Err(err) => log_store_error(task, "re-queueing a rate-limited task", &err),
        }
    }

    /// Re-queues `task` to `at` without a reserved token and without spending a try.
    async fn release(&self, task: &Task, at: i64, now: i64) {
        match self
            .store
            .release_task(task.id, task.attempt, at, Release::Unreserved, now)
            .await
        {
            Ok(_) => self.wake.notify_one(),
            Err(err) => log_store_error(task, "re-queueing a task", &err),
        }
    }

    async fn run_with_token(&self, worker: &Worker, task: &Task) {
        tracing::debug!(task = task.id, attempt = task.attempt, worker = %task.worker, "dispatching");
        let started_at = self.clock.now_ms();
        self.trace.attempt_started(task, started_at);
        let output = self.execute(worker, task).await;
        // An http worker's "node" is its URL, not a node of ours.
        if let Some(node) = &output.node
            && worker.spec.kind != WorkerKind::Http
        {
            self.trace.ran_on_node(node, &output.outcome);
        }
        let ran = Ran {
            started_at,
            worker_revision: worker.revision,
        };
        self.finish(task, output, Some(ran)).await;
    }

    async fn execute(&self, worker: &Worker, task: &Task) -> AttemptOutput {
        let event = match task.event_id {
            Some(id) => match self.store.get_event(id).await {
                Ok(event) => event.map(|e| {
                    json!({
                        "id": e.id, "source": e.source, "type": e.event_type, "payload": e.payload,
                    })
                }),
                Err(err) => {
                    return Outcome::Transport(format!("reading the task's event: {err}")).into();
                }
            },
            None => None,
        };
        match worker.spec.kind {
            WorkerKind::Js => {
                let Some(js) = &self.js else {
                    return Outcome::Transport("no executor nodes are configured".to_owned())
                        .into();
                };
                if let Some(config) = &worker.spec.config {
                    // The job needs the values; the trace and the errors must never show them.
                    self.trace.redactor().add_env_refs(config);
                }
                let job = match js_job(worker, task.id, task.attempt, &task.payload, event) {
                    Ok(job) => job,
                    Err(message) => return Outcome::Failed(message).into(),
                };
                js.run(job).await
            }
            WorkerKind::Http => match &worker.spec.url {
                Some(url) => AttemptOutput {
                    node: Some(url.clone()),
                    ..self
                        .http
                        .run(url, &task_body(task, event.as_ref()))
                        .await
                        .into()
                },
                None => Outcome::Failed("the http worker has no url".to_owned()).into(),
            },
            WorkerKind::Process => match self.processes.target(&task.worker) {
                // The supervised child is named after its worker (`GET /nodes`).
                Ok(url) => AttemptOutput {
                    node: Some(task.worker.clone()),
                    ..match self.http.run(&url, &task_body(task, event.as_ref())).await {
                        Outcome::Transport(message) => {
                            Outcome::Transport(self.processes.explain(&task.worker, message))
                        }
                        outcome => outcome,
                    }
                    .into()
                },
                Err(why) => Outcome::Transport(why).into(),
            },
            WorkerKind::Container => match self.containers.target(&task.worker) {
                // The supervised container is named after its worker (`GET /nodes`).
                Ok(url) => AttemptOutput {
                    node: Some(task.worker.clone()),
                    ..self
                        .http
                        .run(&url, &task_body(task, event.as_ref()))
                        .await
                        .into()
                },
                Err(why) => Outcome::Transport(why).into(),
            },
        }
    }

    /// Records the attempt `task.attempt`: first what it wrote with `console` (redacted, with its
    /// `/logs` entry), so a reader who sees the task end sees its output too; then, when it ran
    /// (`ran`, and not handed back by a busy executor), its row in the task's attempt history;
    /// then its outcome, deciding on retries. A write the database could not take for a transient reason (a
    /// restart, a lost connection) is tried again until the claim's lease runs out: an attempt's
    /// outcome is never dropped while the claim is still ours, and after that the expired lease
    /// re-runs the task. Console output that cannot be stored is logged and given up: it must
    /// not keep the outcome from being recorded.
    async fn finish(&self, task: &Task, output: AttemptOutput, ran: Option<Ran>) {
        // A shared store's lease is renewed while the attempt is held, so it lasts another
        // lease from now at least.
        let lease_until = match task.lease_expires_at {
            Some(_) if self.store.shared() => Some(
                self.clock
                    .now_ms()
                    .saturating_add(duration_ms(SHARED_LEASE)),
            ),
            until => until,
        };
        let console = self.redacted(output.console);
        if !console.is_empty() {
            let stored = self
                .while_leased(
                    task,
                    lease_until,
                    "storing the attempt's console output",
                    |now| {
                        self.store
                            .record_console(task.id, task.attempt, &console, now)
                    },
                )
                .await;
            match stored {
                Ok(()) => self.trace.console(task, &console, self.clock.now_ms()),
                Err(err) => log_store_error(task, "storing the attempt's console output", &err),
            }
        }
        let outcome = output.outcome;
        if let Some(attempt) =
            ran.and_then(|ran| self.attempt_row(task, ran, &outcome, output.node))
        {
            let stored = self
                .while_leased(task, lease_until, "storing the attempt's history", |_| {
                    self.store.record_attempt(task.id, &attempt)
                })
                .await;
            if let Err(err) = stored {
                // The outcome must still be recorded: only the history misses a line.
                log_store_error(task, "storing the attempt's history", &err);
            }
        }
        let result = self
            .while_leased(task, lease_until, "recording the attempt", |now| {
                self.record(task, outcome.clone(), now)
            })
            .await;
        match result {
            Ok(ended) if ended.state.is_end() => {
                if let Some(event) = ended.event_id {
                    self.settle.push(event);
                }
            }
            Ok(_) => {}
            Err(err) => log_store_error(task, "recording the attempt", &err),
        }
    }

    /// The history row of an attempt that ran and ended with `outcome` (its error redacted, as
    /// the task's is); `None` for an executor too busy to take it, which is no attempt.
    fn attempt_row(
        &self,
        task: &Task,
        ran: Ran,
        outcome: &Outcome,
        node: Option<String>,
    ) -> Option<TaskAttempt> {
        let (outcome, error) = match outcome {
            Outcome::Completed(_) => (AttemptOutcome::Completed, None),
            // A script error that asks for a retry failed this attempt all the same; its message
            // names the class (`endpoint_transport`, `retryable`).
            Outcome::Failed(message) | Outcome::ScriptRetry(_, message) => {
                (AttemptOutcome::Failed, Some(message))
            }
            Outcome::Transport(message) => (AttemptOutcome::TransportError, Some(message)),
            Outcome::RetryAfter(_, message) => (AttemptOutcome::RetryAfter, Some(message)),
            Outcome::Overloaded(..) => return None,
        };
        let redactor = self.trace.redactor();
        Some(TaskAttempt {
            claim: task.attempt,
            started_at: ran.started_at,
            ended_at: self.clock.now_ms().max(ran.started_at),
            node,
            worker_revision: ran.worker_revision,
            outcome,
            error: error.map(|message| redactor.redact(message).into_owned()),
        })
    }

    /// `lines` with every secret the server knows replaced, by the redactor of `/logs`: console
    /// output is stored, shown by the API and traced only like this.
    fn redacted(&self, mut lines: Vec<ConsoleLine>) -> Vec<ConsoleLine> {
        let redactor = self.trace.redactor();
        for line in &mut lines {
            if let std::borrow::Cow::Owned(redacted) = redactor.redact(&line.message) {
                line.message = redacted;
            }
        }
        lines
    }

    /// Runs `write` (given the time of each try) until it succeeds, fails for good, or a
    /// transient failure comes with too little of the claim's lease (`lease_until`) left to
    /// wait and try again; backs off between tries (see [`finish`](Self::finish)).
    async fn while_leased<T, W>(
        &self,
        task: &Task,
        lease_until: Option<i64>,
        what: &str,
        mut write: impl FnMut(i64) -> W,
    ) -> Result<T, StoreError>
    where
        W: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            let now = self.clock.now_ms();
            let result = write(now).await;
            match &result {
                Err(err)
                    if err.is_transient()
                        && lease_until.is_some_and(|until| {
                            now.saturating_add(duration_ms(delay)) < until
                        }) =>
                {
                    tracing::warn!(task = task.id, attempt = task.attempt, error = %err, "{what} failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                _ => return result,
            }
        }
    }

    /// One try at recording `outcome` (see [`finish`](Self::finish)).
    async fn record(&self, task: &Task, outcome: Outcome, now: i64) -> Result<Task, StoreError> {
        let spec = self
            .registry
            .get(&task.worker)
            .await
            .map(|w| w.spec.retry.clone());
        let spec = spec.unwrap_or_default();
        // Errors and results are stored (and so shown by the API and written back) without
        // secrets a worker echoed: the store never holds them.
        let redact = |message: String| self.trace.redactor().redact(&message).into_owned();
        match outcome {
            Outcome::Completed(mut value) => {
                self.trace.redactor().redact_json(&mut value);
                let r = self
                    .store
                    .complete_task(task.id, task.attempt, value, now)
                    .await;
                if r.is_ok() {
                    self.trace.completed(task, now);
                }
                r
            }
            Outcome::Failed(message) => {
                let message = redact(message);
                let r = self
                    .store
                    .fail_task(task.id, task.attempt, TaskState::Failed, &message, now)
                    .await;
                if r.is_ok() {
                    self.trace.failed(task, &message, now);
                }
                r
            }
            Outcome::Overloaded(delay, message) => {
                let at = now.saturating_add(duration_ms(delay.unwrap_or(OVERLOAD_BACKOFF)));
                let r = self
                    .store
                    .release_task(task.id, task.attempt, at, Release::Unreserved, now)
                    .await;
                if r.is_ok() {
                    tracing::info!(task = task.id, worker = %task.worker, %message, "executor busy: the task waits without spending a try");
                    self.wake.notify_one();
                }
                r
            }
            Outcome::ScriptRetry(why, message) if !retry::may_retry(&spec, task.tries) => {
                let message = redact(format!(
                    "{message} ({}; retries exhausted after {} tries)",
                    why.rule(),
                    task.tries
                ));
                self.dead_letter(task, &message, now).await
            }
            Outcome::ScriptRetry(why, message) => {
                let delay = retry::with_jitter(retry::backoff(&spec, task.tries), random_unit());
                let message = redact(format!("{message} ({})", why.rule()));
                self.reschedule(task, delay, &message, now).await
            }
            Outcome::Transport(message) | Outcome::RetryAfter(_, message)
                if !retry::may_retry(&spec, task.tries) =>
            {
                let message = redact(format!(
                    "{message} (retries exhausted after {} tries)",
                    task.tries
                ));
                self.dead_letter(task, &message, now).await
            }
            Outcome::Transport(message) => {
                let delay = retry::with_jitter(retry::backoff(&spec, task.tries), random_unit());
                self.reschedule(task, delay, &redact(message), now).await
            }
            Outcome::RetryAfter(delay, message) => {
                // A worker's hint is honoured up to the worker's own longest backoff.
                let delay = delay.min(spec.max_delay.0);
                self.reschedule(task, delay, &redact(message), now).await
            }
        }
    }

    /// Moves the attempt's task to `dead` with `message` (already redacted), and traces it.
    async fn dead_letter(&self, task: &Task, message: &str, now: i64) -> Result<Task, StoreError> {
        let r = self
            .store
            .fail_task(task.id, task.attempt, TaskState::Dead, message, now)
            .await;
        if r.is_ok() {
            self.trace.dead_lettered(task, message, now);
        }
        r
    }

    /// Puts the attempt's task back to `pending`, due `delay` after `now`.
    async fn reschedule(
        &self,
        task: &Task,
        delay: Duration,
        message: &str,
        now: i64,
    ) -> Result<Task, StoreError> {
        let at = now.saturating_add(duration_ms(delay));
        // Recorded before the write: once it commits, a feeder already awake may claim and run
        // the next attempt before this call returns, and the trace must keep the attempts in
        // order. A write that fails (a task canceled meanwhile) is logged by the caller.
        self.trace.retried(task, message, at, now);
        let r = self
            .store
            .reschedule_task(task.id, task.attempt, at, message, now)
            .await;
        if r.is_ok() {
            self.wake.notify_one();
        }
        r
    }
}

/// The lease of a claim with other servers on the database: renewed every third of it while
/// held, so a server that dies gives its tasks back within this time.
pub const SHARED_LEASE: Duration = Duration::from_secs(30);

/// The store's bucket of worker `name`.
fn bucket_of(name: &str) -> String {
    format!("worker:{name}")
}

/// A js job's time limit when its worker sets none (`mechanics-core`'s default).
const DEFAULT_JS_TIME_LIMIT_MS: u64 = 10_000;
/// What a js attempt may take beyond its time limit: the executor's watchdog grace and its wait
/// for a free node.
const JS_EXECUTOR_SLACK: Duration = Duration::from_secs(15);
/// How long an attempt the executor was too busy to take waits before it is claimed again.
const OVERLOAD_BACKOFF: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn log_store_error(task: &Task, what: &str, err: &StoreError) {
    match err {
        // The task was canceled or claimed again meanwhile: this attempt's answer is void.
        StoreError::StaleAttempt { .. } => {
            tracing::info!(task = task.id, attempt = task.attempt, error = %err, "{what}: stale attempt ignored");
        }
        _ => tracing::error!(task = task.id, attempt = task.attempt, error = %err, "{what} failed"),
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A uniform number in `[0, 1)` for jitter.
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The job a js worker's attempt sends to a node, exactly as the dispatcher builds it: the
/// argument `{ event, task, payload }`, the worker's endpoint config with `${env:...}` resolved
/// from this process's environment, its limits, and for a TypeScript worker the JavaScript
/// transpiled when it was added with its source map. `mechanics worker test` runs the same job.
/// The error (a missing variable, no module) fails the attempt.
pub fn js_job(
    worker: &Worker,
    task_id: i64,
    attempt: u32,
    payload: &Value,
    event: Option<Value>,
) -> Result<JobRequest, String> {
    let Some(source) = &worker.module_source else {
        return Err("the js worker has no module source".to_owned());
    };
    let config = worker
        .spec
        .config
        .as_ref()
        .map(resolve_env_refs)
        .transpose()?;
    let arg = json!({
        "event": event,
        "task": { "id": task_id, "attempt": attempt, "worker": worker.spec.name },
        "payload": payload,
    });
    // A TypeScript worker runs the JavaScript transpiled when it was added.
    let (source, source_map) = match &worker.transpiled {
        Some(transpiled) => (&transpiled.javascript, Some(&transpiled.source_map)),
        None => (source, None),
    };
    let mut job = JobRequest::new(task_id.to_string(), source.clone(), arg);
    job.attempt = attempt;
    job.config = config;
    job.limits = worker.spec.limits.clone();
    job.source_map = source_map.cloned();
    Ok(job)
}

/// Replaces every `${env:NAME}` in the strings of `value` with the variable's value. The stored
/// worker keeps the reference; only the job sent to a node holds the secret. A missing variable
/// fails the task, naming the variable but never a value.
pub fn resolve_env_refs(value: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(resolve_in_text(text)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(resolve_env_refs)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_env_refs(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn resolve_in_text(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after
            .find('}')
            .ok_or_else(|| "an `${env:` reference is not closed with `}`".to_owned())?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| {
            format!("the environment variable {name} named in the worker's config is not set on the server")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
