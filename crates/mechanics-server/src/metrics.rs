//! The server's metrics, exposed by `GET /metrics` in the Prometheus text format (0.0.4) and by
//! `GET /debug/vars` as JSON.
//!
//! [`Metrics`] holds every counter of spec/server.txt under Prometheus naming; incrementing one
//! is one line, with no lock held across an await and no database access:
//!
//! ```text
//! shared.metrics.webhooks_received.inc();                  // unlabelled counters
//! shared.metrics.tasks_created.inc(&worker_name);          // per-worker counters
//! shared.metrics.writeback_dead_letter.inc();
//! ```
//!
//! Task counters carry a `worker` label (worker names are bounded by the registry; tasks and
//! events are never labels); a worker's series appears with its first count, as usual for
//! labelled Prometheus metrics (`sum(...) or vector(0)` in queries), and goes when the worker is
//! deleted ([`Metrics::forget_worker`]). Webhook, cron and write-back counters are unlabelled. Gauges that
//! describe state (tasks per state, queue depth, in-flight attempts, nodes) are not kept here:
//! [`Metrics::render`] takes them from a [`Snapshot`] read at scrape time, so nothing has to
//! keep them in sync and an idle server does no work for them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mechanics_proto::api::{NodeKind, NodeView};
use mechanics_proto::domain::TaskState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use std::sync::atomic::AtomicU64;

/// Upper bounds (seconds) of the dispatch latency histogram: 12 buckets from 0.1 s to 10 min.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Weight of the newest sample in the dispatch latency EMA.
pub const EMA_ALPHA: f64 = 0.1;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

/// A counter with a `worker` label, which also keeps its total across workers (for tests and
/// `/debug/vars`).
#[derive(Debug, Default)]
pub struct PerWorker {
    family: Family<WorkerLabel, Counter>,
    total: AtomicU64,
}

impl PerWorker {
    /// Adds one for `worker`.
    pub fn inc(&self, worker: &str) {
        self.inc_by(worker, 1);
    }

    /// Adds `n` for `worker`.
    pub fn inc_by(&self, worker: &str, n: u64) {
        self.family
            .get_or_create(&WorkerLabel {
                worker: worker.to_owned(),
            })
            .inc_by(n);
        self.total
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The sum over all workers since the server started, removed workers included.
    pub fn get(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops `worker`'s series; the total keeps its counts.
    fn remove(&self, worker: &WorkerLabel) {
        self.family.remove(worker);
    }
}

type LatencyFamily = Family<WorkerLabel, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeOutcomeLabel {
    node: String,
    outcome: &'static str,
}

/// `mechanics_node_jobs_total{node,outcome}`: attempts that ended on each executor node (local
/// or remote) or process worker, by [`Outcome::node_label`](crate::Outcome::node_label).
/// Counted where the attempt ends, so a node's series outlive its removal like any counter.
#[derive(Debug, Default)]
pub struct NodeJobs {
    family: Family<NodeOutcomeLabel, Counter>,
}

impl NodeJobs {
    /// Adds one attempt that ended on `node` with `outcome`.
    pub fn inc(&self, node: &str, outcome: &'static str) {
        self.family
            .get_or_create(&NodeOutcomeLabel {
                node: node.to_owned(),
                outcome,
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    worker: String,
    outcome: &'static str,
    reason: &'static str,
}

/// `mechanics_policy_decisions_total{worker,outcome,reason}`: one per (event, worker) pair
/// that matched, `outcome` `ok` (reason `none`) or `deny` with the policy's reason.
#[derive(Debug, Default)]
pub struct PolicyDecisions {
    family: Family<DecisionLabel, Counter>,
    denied: AtomicU64,
}

impl PolicyDecisions {
    /// Counts a decision for `worker`: `deny` with `Some(reason)`, else `ok`.
    pub fn inc(&self, worker: &str, denied: Option<&'static str>) {
        let label = DecisionLabel {
            worker: worker.to_owned(),
            outcome: if denied.is_some() { "deny" } else { "ok" },
            reason: denied.unwrap_or("none"),
        };
        self.family.get_or_create(&label).inc();
        if denied.is_some() {
            self.denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Denials over all workers since the server started.
    pub fn denied(&self) -> u64 {
        self.denied.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn forget(&self, worker: &str) {
        let labels: Vec<DecisionLabel> = std::iter::once(("ok", "none"))
            .chain(POLICY_DENIALS.iter().map(|reason| ("deny", *reason)))
            .map(|(outcome, reason)| DecisionLabel {
                worker: worker.to_owned(),
                outcome,
                reason,
            })
            .collect();
        for label in &labels {
            self.family.remove(label);
        }
    }
}

/// Every reason a policy denies for (the `reason` label and `/logs` `detail.reason`).
pub const POLICY_DENIALS: [&str; 5] = [
    "self",
    "bot",
    "actor_not_allowed",
    "actor_denied",
    "actor_limit",
];

/// Every metric the server maintains as things happen. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    /// `mechanics_tasks_created_total{worker}`: tasks created (API submissions, events, cron).
    pub tasks_created: PerWorker,
    /// `mechanics_tasks_completed_total{worker}`: attempts that completed their task.
    pub tasks_completed: PerWorker,
    /// `mechanics_tasks_failed_total{worker}`: tasks that ended `failed`.
    pub tasks_failed: PerWorker,
    /// `mechanics_tasks_dead_total{worker}`: tasks dead-lettered (retries exhausted).
    pub tasks_dead: PerWorker,
    /// `mechanics_tasks_retried_total{worker}`: attempts rescheduled for a retry.
    pub tasks_retried: PerWorker,
    /// `mechanics_tasks_rate_limited_total{worker}`: claims re-queued because the worker's
    /// bucket was empty.
    pub tasks_rate_limited: PerWorker,
    /// `mechanics_tasks_recovered_total{worker}`: tasks put back to pending by startup recovery
    /// or lease expiry.
    pub tasks_recovered: PerWorker,
    /// `mechanics_tasks_dedup_skipped_total{worker}`: submissions that named an existing task
    /// (idempotency key, or an event already matched to the worker).
    pub tasks_dedup_skipped: PerWorker,
    /// `mechanics_containers_reconciled_total{worker}`: container workers' reconciliation
    /// steps: containers created, adopted, found drifted, removed (orphans count under their
    /// label's worker name).
    pub containers_reconciled: PerWorker,
    /// `mechanics_policy_decisions_total{worker,outcome,reason}`: worker policies' verdicts.
    pub policy_decisions: PolicyDecisions,
    /// `mechanics_node_jobs_total{node,outcome}`: attempts per node and how they ended.
    pub node_jobs: NodeJobs,
    /// `mechanics_webhooks_received_total`: webhook deliveries accepted.
    pub webhooks_received: Counter,
    /// `mechanics_webhooks_rate_limited_total`: webhook deliveries refused by the rate limit.
    pub webhooks_rate_limited: Counter,
    /// `mechanics_events_dedup_skipped_total`: deliveries whose id was already stored.
    pub events_dedup_skipped: Counter,
    /// `mechanics_cron_ticks_dropped_total`: cron fires skipped (missed or already recorded).
    pub cron_ticks_dropped: Counter,
    /// `mechanics_writeback_ok_total`: write-backs that succeeded at the first try.
    pub writeback_ok: Counter,
    /// `mechanics_writeback_fail_total`: write-back tries that failed.
    pub writeback_fail: Counter,
    /// `mechanics_writeback_retry_ok_total`: write-backs that succeeded on a later try.
    pub writeback_retry_ok: Counter,
    /// `mechanics_writeback_dead_letter_total`: write-backs given up.
    pub writeback_dead_letter: Counter,
    /// `mechanics_logs_dropped_total`: `/logs` entries dropped because the database could not
    /// take them and the buffer was full.
    pub logs_dropped: Counter,
    /// `mechanics_logs_refusals_unrecorded_total`: refused webhook deliveries past the per-source
    /// trace budget, counted here instead of written to `/logs` one by one.
    pub logs_refusals_unrecorded: Counter,
    /// Each worker's last hour, for `GET /api/v1/metrics/summary`.
    pub recent: crate::recent::RecentActivity,
    latency: LatencyFamily,
    latency_ema: Gauge<f64, AtomicU64>,
    ema: Mutex<Option<f64>>,
    started: std::time::Instant,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered for exposition.
    pub fn new() -> Self {
        let latency: LatencyFamily =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        let mut metrics = Self {
            tasks_created: PerWorker::default(),
            tasks_completed: PerWorker::default(),
            tasks_failed: PerWorker::default(),
            tasks_dead: PerWorker::default(),
            tasks_retried: PerWorker::default(),
            tasks_rate_limited: PerWorker::default(),
            tasks_recovered: PerWorker::default(),
            tasks_dedup_skipped: PerWorker::default(),
            containers_reconciled: PerWorker::default(),
            policy_decisions: PolicyDecisions::default(),
            node_jobs: NodeJobs::default(),
            webhooks_received: Counter::default(),
            webhooks_rate_limited: Counter::default(),
            events_dedup_skipped: Counter::default(),
            cron_ticks_dropped: Counter::default(),
            writeback_ok: Counter::default(),
            writeback_fail: Counter::default(),
            writeback_retry_ok: Counter::default(),
            writeback_dead_letter: Counter::default(),
            logs_dropped: Counter::default(),
            logs_refusals_unrecorded: Counter::default(),
            recent: crate::recent::RecentActivity::default(),
            latency,
            latency_ema: Gauge::default(),
            ema: Mutex::new(None),
            started: std::time::Instant::now(),
            registry: Registry::with_prefix("mechanics"),
        };
        let r = &mut metrics.registry;
        // The families are cheap handles onto the same cells: registering a clone exposes the
        // counter the fields above increment.
        for (name, help, counter) in [
            ("tasks_created", "Tasks created", &metrics.tasks_created),
            (
                "tasks_completed",
                "Tasks completed",
                &metrics.tasks_completed,
            ),
            (
                "tasks_failed",
                "Tasks that ended failed",
                &metrics.tasks_failed,
            ),
            (
                "tasks_dead",
                "Tasks dead-lettered after their retries",
                &metrics.tasks_dead,
            ),
            (
                "tasks_retried",
                "Attempts rescheduled for a retry",
                &metrics.tasks_retried,
            ),
            (
                "tasks_rate_limited",
                "Claims re-queued by the worker's rate limit",
                &metrics.tasks_rate_limited,
            ),
            (
                "tasks_recovered",
                "Tasks re-queued by startup recovery or lease expiry",
                &metrics.tasks_recovered,
            ),
            (
                "tasks_dedup_skipped",
                "Submissions that named an existing task",
                &metrics.tasks_dedup_skipped,
            ),
            (
                "containers_reconciled",
                "Container reconciliation steps: created, adopted, drifted, removed",
                &metrics.containers_reconciled,
            ),
        ] {
            r.register(name, help, counter.family.clone());
        }
        r.register(
            "node_jobs",
            "Attempts that ended on the node, by outcome (ok, error, transport, overloaded)",
            metrics.node_jobs.family.clone(),
        );
        for (name, help, counter) in [
            (
                "webhooks_received",
                "Webhook deliveries accepted",
                &metrics.webhooks_received,
            ),
            (
                "webhooks_rate_limited",
                "Webhook deliveries refused by the rate limit",
                &metrics.webhooks_rate_limited,
            ),
            (
                "events_dedup_skipped",
                "Deliveries whose id was already stored",
                &metrics.events_dedup_skipped,
            ),
            (
                "cron_ticks_dropped",
                "Cron fires dropped",
                &metrics.cron_ticks_dropped,
            ),
            (
                "writeback_ok",
                "Write-backs that succeeded",
                &metrics.writeback_ok,
            ),
            (
                "writeback_fail",
                "Write-back tries that failed",
                &metrics.writeback_fail,
            ),
            (
                "writeback_retry_ok",
                "Write-backs that succeeded on a retry",
                &metrics.writeback_retry_ok,
            ),
            (
                "writeback_dead_letter",
                "Write-backs given up",
                &metrics.writeback_dead_letter,
            ),
            (
                "logs_dropped",
                "Pipeline trace entries dropped because the database could not take them",
                &metrics.logs_dropped,
            ),
            (
                "logs_refusals_unrecorded",
                "Refused webhook deliveries over the per-source trace budget, not written one by one",
                &metrics.logs_refusals_unrecorded,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        r.register(
            "policy_decisions",
            "Worker policy decisions on matched events",
            metrics.policy_decisions.family.clone(),
        );
        r.register_with_unit(
            "dispatch_latency",
            "Time from a task becoming due to its attempt starting",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        r.register(
            "dispatch_latency_seconds_ema",
            "Exponential moving average (alpha 0.1) of the dispatch latency in seconds",
            metrics.latency_ema.clone(),
        );
        metrics
    }

    /// Records the dispatch latency of an attempt of `worker`: the histogram and the EMA.
    pub fn observe_dispatch_latency(&self, worker: &str, seconds: f64) {
        let seconds = seconds.max(0.0);
        self.latency
            .get_or_create(&WorkerLabel {
                worker: worker.to_owned(),
            })
            .observe(seconds);
        let mut ema = self.ema.lock().unwrap_or_else(|e| e.into_inner());
        let next = match *ema {
            Some(previous) => previous + EMA_ALPHA * (seconds - previous),
            None => seconds,
        };
        *ema = Some(next);
        self.latency_ema.set(next);
    }

    /// Drops every series labelled with `worker`, when the worker is removed: the registry bounds
    /// the labels only if a removed worker's series go with it. Should a task of the removed
    /// worker still end afterwards, its count starts a new series, as after a restart.
    pub fn forget_worker(&self, worker: &str) {
        let label = WorkerLabel {
            worker: worker.to_owned(),
        };
        for counter in [
            &self.tasks_created,
            &self.tasks_completed,
            &self.tasks_failed,
            &self.tasks_dead,
            &self.tasks_retried,
            &self.tasks_rate_limited,
            &self.tasks_recovered,
            &self.tasks_dedup_skipped,
            &self.containers_reconciled,
        ] {
            counter.remove(&label);
        }
        self.latency.remove(&label);
        self.recent.forget(worker);
        self.policy_decisions.forget(worker);
    }

    /// Time since these metrics were made (the server's start).
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The dispatch latency EMA in seconds (0 before the first attempt).
    pub fn dispatch_latency_ema(&self) -> f64 {
        self.latency_ema.get()
    }

    /// The exposition: the counters above, then the gauges of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoding error would be a bug in a metric name.
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %err, "encoding the metrics failed");
        }
        let scrape = snapshot.registry();
        if let Err(err) = prometheus_client::encoding::prometheus_text::encode(&mut out, &scrape) {
            tracing::error!(error = %err, "encoding the state gauges failed");
        }
        out
    }

    /// The counters as JSON-friendly totals, for `/debug/vars`.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("tasks_created", self.tasks_created.get()),
            ("tasks_completed", self.tasks_completed.get()),
            ("tasks_failed", self.tasks_failed.get()),
            ("tasks_dead", self.tasks_dead.get()),
            ("tasks_retried", self.tasks_retried.get()),
            ("tasks_rate_limited", self.tasks_rate_limited.get()),
            ("tasks_recovered", self.tasks_recovered.get()),
            ("tasks_dedup_skipped", self.tasks_dedup_skipped.get()),
            ("containers_reconciled", self.containers_reconciled.get()),
            ("policy_denied", self.policy_decisions.denied()),
            ("webhooks_received", self.webhooks_received.get()),
            ("webhooks_rate_limited", self.webhooks_rate_limited.get()),
            ("events_dedup_skipped", self.events_dedup_skipped.get()),
            ("cron_ticks_dropped", self.cron_ticks_dropped.get()),
            ("writeback_ok", self.writeback_ok.get()),
            ("writeback_fail", self.writeback_fail.get()),
            ("writeback_retry_ok", self.writeback_retry_ok.get()),
            ("writeback_dead_letter", self.writeback_dead_letter.get()),
            ("logs_dropped", self.logs_dropped.get()),
            (
                "logs_refusals_unrecorded",
                self.logs_refusals_unrecorded.get(),
            ),
        ])
    }
}

/// The state read at scrape time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Tasks in each state; `None` when the database could not be read (the gauges are left
    /// out rather than reported as zero).
    pub tasks: Option<BTreeMap<TaskState, u64>>,
    /// Attempts running now.
    pub in_flight: usize,
    /// Claimed tasks waiting for a runner (the ready queue).
    pub ready: usize,
    /// Attempts that may run at once.
    pub concurrency: usize,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Executor nodes (local and remote) and process workers, as `GET /api/v1/nodes` shows
    /// them; their `kind` is the `kind` label.
    pub nodes: Vec<NodeView>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabel {
    node: String,
    kind: &'static str,
    state: String,
}

impl Snapshot {
    /// Pending tasks: the queue (the database is the queue).
    pub fn queue_depth(&self) -> Option<u64> {
        self.tasks
            .as_ref()
            .map(|t| t.get(&TaskState::Pending).copied().unwrap_or(0))
    }

    /// The gauges of this snapshot, in a registry of their own made for one scrape.
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("mechanics");
        if let Some(tasks) = &self.tasks {
            let by_state = Family::<StateLabel, Gauge>::default();
            for (state, n) in tasks {
                by_state
                    .get_or_create(&StateLabel {
                        state: state.to_string(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            r.register("tasks", "Tasks in each state", by_state);
            r.register(
                "queue_depth",
                "Pending tasks (the database is the queue)",
                ConstGauge::new(i64::try_from(self.queue_depth().unwrap_or(0)).unwrap_or(i64::MAX)),
            );
        }
        r.register(
            "uptime_seconds",
            "Seconds since the server started",
            ConstGauge::<f64>::new(self.uptime_seconds),
        );
        r.register(
            "tasks_in_flight",
            "Attempts running now",
            ConstGauge::new(i64::try_from(self.in_flight).unwrap_or(i64::MAX)),
        );
        r.register(
            "tasks_ready",
            "Claimed tasks waiting for a runner",
            ConstGauge::new(i64::try_from(self.ready).unwrap_or(i64::MAX)),
        );
        r.register(
            "dispatch_concurrency",
            "Attempts that may run at once",
            ConstGauge::new(i64::try_from(self.concurrency).unwrap_or(i64::MAX)),
        );
        let state = Family::<NodeStateLabel, Gauge>::default();
        let tripped = Family::<NodeLabel, Gauge>::default();
        let in_flight = Family::<NodeLabel, Gauge>::default();
        let restarts = Family::<NodeLabel, Counter>::default();
        let deaths = Family::<NodeLabel, Counter>::default();
        let up = Family::<NodeLabel, Gauge>::default();
        let mut tripped_total = 0;
        for node in &self.nodes {
            let label = NodeLabel {
                node: node.name.clone(),
                kind: node.kind.as_str(),
            };
            state
                .get_or_create(&NodeStateLabel {
                    node: node.name.clone(),
                    kind: node.kind.as_str(),
                    state: node.state.clone(),
                })
                .set(1);
            up.get_or_create(&label).set(i64::from(is_up(node)));
            let is_tripped = node.breaker == "tripped";
            tripped_total += i64::from(is_tripped);
            tripped.get_or_create(&label).set(i64::from(is_tripped));
            in_flight
                .get_or_create(&label)
                .set(i64::try_from(node.in_flight).unwrap_or(i64::MAX));
            restarts.get_or_create(&label).inc_by(node.restarts);
            deaths.get_or_create(&label).inc_by(node.deaths);
        }
        r.register(
            "nodes",
            "Executor nodes and process workers",
            ConstGauge::new(i64::try_from(self.nodes.len()).unwrap_or(i64::MAX)),
        );
        r.register(
            "nodes_tripped",
            "Nodes whose crash-loop breaker is tripped",
            ConstGauge::new(tripped_total),
        );
        r.register("node_state", "1 for the node's current state", state);
        r.register(
            "node_up",
            "1 while the node can take work (local and process: running; remote: healthy)",
            up,
        );
        r.register(
            "node_breaker_tripped",
            "1 while the node's crash-loop breaker is tripped",
            tripped,
        );
        r.register("node_in_flight", "Jobs running on the node", in_flight);
        r.register("node_restarts", "Times the node was restarted", restarts);
        r.register("node_deaths", "Times the node died", deaths);
        r
    }
}

/// Whether `node` can take work now: a remote node once a check found it `healthy`, a local
/// node, process worker or container worker while its instance is `running` (not draining,
/// backing off or tripped).
fn is_up(node: &NodeView) -> bool {
    match node.kind {
        NodeKind::Remote => node.state == "healthy",
        NodeKind::Local | NodeKind::Process | NodeKind::Container => node.state == "running",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_worker_drops_its_series_from_every_family_and_keeps_the_others() {
        let metrics = Metrics::new();
        for worker in ["gone", "kept"] {
            for counter in [
                &metrics.tasks_created,
                &metrics.tasks_completed,
                &metrics.tasks_failed,
                &metrics.tasks_dead,
                &metrics.tasks_retried,
                &metrics.tasks_rate_limited,
                &metrics.tasks_recovered,
                &metrics.tasks_dedup_skipped,
            ] {
                counter.inc(worker);
            }
            metrics.observe_dispatch_latency(worker, 0.2);
        }
        let labelled = |text: &str, worker: &str| {
            let label = format!("worker=\"{worker}\"");
            let mut families: Vec<String> = text
                .lines()
                .filter(|line| !line.starts_with('#') && line.contains(&label))
                .map(|line| line.split('{').next().unwrap().to_owned())
                .collect();
            families.dedup();
            families
        };
        let before = metrics.render(&Snapshot::default());
        let every_family = labelled(&before, "gone");
        // 8 counters, and the histogram's buckets, sum and count.
        assert_eq!(every_family.len(), 11, "{every_family:?}");
        assert_eq!(labelled(&before, "kept"), every_family);

        metrics.forget_worker("gone");
        let after = metrics.render(&Snapshot::default());
        assert_eq!(labelled(&after, "gone"), Vec::<String>::new(), "{after}");
        assert_eq!(labelled(&after, "kept"), every_family, "{after}");
        // Totals count since the start, removed workers included.
        assert_eq!(metrics.tasks_created.get(), 2);
    }
}
