//! `mechanics-server`: the coordinator behind `mechanics serve`.
//!
//! It turns API submissions (and, with the webhook issue, events) into durable tasks, dispatches
//! them to js, http and process workers with leases, rate limits and retries, and recovers
//! everything a crash left in flight. It must not run user JavaScript in its own process (js jobs
//! go to executor nodes through [`JsExecutor`]), must not hold SQL (that is `mechanics-store`'s),
//! and never prints: it reports through `tracing`.
//!
//! [`start`] runs a server on a listener and returns a [`RunningServer`]; [`run`] is the same until
//! a shutdown future resolves.

pub mod api;
pub mod clock;
pub mod config;
pub mod cron;
pub mod dispatch;
pub mod executor;
pub mod files;
pub mod metrics;
pub mod observe;
mod pipeline;
pub mod processes;
mod registry;
mod sources;
pub mod trace_log;
pub mod webhooks;
pub mod writeback;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mechanics_runtime::Supervisor;
use mechanics_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use clock::Clock;
pub use config::ServerConfig;
pub use dispatch::DispatchConfig;
pub use executor::{JsExecutor, Outcome};
pub use metrics::Metrics;
pub use trace_log::TraceLog;

use dispatch::Dispatcher;
use dispatch::limiter::Rate;
use executor::HttpWorkerClient;
use processes::ProcessWorkers;
use registry::Registry;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener's address could not be read.
    #[error("the listener has no address: {0}")]
    Listener(std::io::Error),
    /// Startup recovery could not read or write the database.
    #[error("startup recovery failed: {0}")]
    Recovery(mechanics_store::StoreError),
    /// The HTTP client for http workers could not be built.
    #[error("{0}")]
    Http(String),
}

/// What the server is built from, besides its configuration.
pub struct ServerParts {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Runs js jobs (the local fleet); `None` refuses js work with a transport error.
    pub js: Option<Arc<dyn JsExecutor>>,
    /// Supervises process workers.
    pub supervisor: Supervisor,
    /// The clock (paused in tests).
    pub clock: Clock,
    /// How the dispatcher runs.
    pub dispatch: DispatchConfig,
}

impl DispatchConfig {
    /// The dispatcher settings of `config`, with 10 min for an http worker's answer.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            concurrency: config.concurrency,
            claim_batch: u32::try_from(config.queue_size.min(64)).unwrap_or(64),
            prefetch: config.queue_size,
            lease_margin: Duration::from_secs(60),
            http_timeout: Duration::from_secs(600),
            default_rate: Rate {
                per_second: config.worker_rate_limit.per_second,
                burst: config.worker_rate_limit.burst,
            },
        }
    }
}

/// State shared by the API handlers and the loops.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    pub(crate) js: Option<Arc<dyn JsExecutor>>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) api_key: Option<String>,
    /// Every counter of `/metrics`; see [`metrics`] for the one-line API.
    pub(crate) metrics: Arc<Metrics>,
    /// The `/logs` pipeline trace; see [`trace_log`] for the one-line API.
    pub(crate) trace: Arc<TraceLog>,
    /// Sources, webhook buckets, write-back client, cron wake-up.
    pub(crate) integrations: Arc<webhooks::Integrations>,
    /// Rung when workers were added, changed or removed: the process workers are reconciled.
    reconcile: Notify,
}

impl Shared {
    /// Called after every registry write of the API.
    pub(crate) fn registry_changed(&self) {
        self.reconcile.notify_one();
        self.integrations.cron_wake.notify_one();
    }
}

/// A server started by [`start`].
pub struct RunningServer {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The server's metrics (what `/metrics` shows).
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    secrets_refresh: Arc<Notify>,
}

impl RunningServer {
    /// Reads every source's secret and token again now (what SIGHUP does), instead of at the
    /// next minute.
    pub fn refresh_secrets(&self) {
        self.secrets_refresh.notify_one();
    }

    /// Stops accepting requests, drains attempts in flight (up to the drain timeout), stops
    /// process workers, and returns when all of that is done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Resolves when the server has stopped (after [`shutdown`](Self::shutdown) or a failure).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Recovers what a previous run left in flight, then serves the API on `listener` and runs the
/// dispatcher and the background loops.
pub async fn start(
    listener: TcpListener,
    config: &ServerConfig,
    parts: ServerParts,
) -> Result<RunningServer, ServerError> {
    let addr = listener.local_addr().map_err(ServerError::Listener)?;
    let metrics = Arc::new(Metrics::new());
    let trace = Arc::new(TraceLog::new(parts.store.clone(), metrics.clone()));
    if let Some(key) = &config.api_key {
        trace.redactor().add_secret(key);
    }
    let now = parts.clock.now_ms();
    // One server per SQLite file: nothing can still be running a claim from before.
    let recovered = parts
        .store
        .requeue_all_dispatched(now)
        .await
        .map_err(ServerError::Recovery)?;
    if !recovered.is_empty() {
        tracing::info!(
            tasks = recovered.len(),
            "startup recovery: dispatched tasks are pending again"
        );
    }
    for task in &recovered {
        trace.recovered(task, "startup recovery", now);
    }
    let registry = Arc::new(Registry::new(parts.store.clone()));
    let processes = Arc::new(ProcessWorkers::new(parts.supervisor));
    let http = HttpWorkerClient::new(parts.dispatch.http_timeout).map_err(ServerError::Http)?;
    let dispatcher = Arc::new(Dispatcher::new(
        parts.store.clone(),
        parts.clock,
        registry.clone(),
        parts.js.clone(),
        http,
        processes.clone(),
        trace.clone(),
        parts.dispatch,
    ));
    let integrations = Arc::new(
        webhooks::Integrations::new(parts.store.clone(), trace.clone(), config)
            .map_err(ServerError::Http)?,
    );
    // Every source's secret is read before the first delivery can ask for it.
    integrations.sources.prime().await;
    let secrets_refresh = Arc::new(Notify::new());
    let shared = Arc::new(Shared {
        store: parts.store,
        clock: parts.clock,
        js: parts.js,
        dispatcher: dispatcher.clone(),
        api_key: config.api_key.clone(),
        metrics: metrics.clone(),
        trace: trace.clone(),
        integrations,
        reconcile: Notify::new(),
    });
    let (stop, stopped) = watch::channel(false);
    let drain = config.drain_timeout;
    // One error shape for every route, webhooks included (see `api::json_errors`).
    let app = api::router(shared.clone())
        .merge(webhooks::router(shared.clone()))
        .layer(axum::middleware::from_fn(api::json_errors));
    let edge = config.edge_limits();
    let loops = shared.clone();
    let refresh_now = secrets_refresh.clone();
    let (store, clock) = (shared.store.clone(), shared.clock);
    let task = tokio::spawn(async move {
        let until_stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        // The edge gives handlers the peer's address (`ConnectInfo`), which lets `/debug/vars`
        // tell loopback callers apart.
        let http = tokio::spawn(mechanics_edge::serve(
            listener,
            app,
            edge,
            until_stop(stopped.clone()),
        ));
        let refresher = tokio::spawn(sources::refresh_loop(
            loops.integrations.sources.clone(),
            refresh_now,
            until_stop(stopped.clone()),
        ));
        let cron = tokio::spawn(cron::run(loops.clone(), until_stop(stopped.clone())));
        // Write-back outlives the drain: events whose last task ends during it are settled.
        let (drained, drained_rx) = watch::channel(false);
        let write_back = tokio::spawn(writeback::run(loops.clone(), until_stop(drained_rx)));
        let reconciler = tokio::spawn(reconcile_loop(loops, until_stop(stopped.clone())));
        let cleaner = tokio::spawn(limiter_cleanup_loop(
            dispatcher.clone(),
            until_stop(stopped.clone()),
        ));
        let flusher = tokio::spawn(trace.clone().flush_loop(until_stop(stopped.clone())));
        let pruner = tokio::spawn(trace_log::prune_loop(
            store,
            clock,
            trace_log::DEFAULT_RETENTION,
            until_stop(stopped.clone()),
        ));
        dispatcher
            .clone()
            .run(until_stop(stopped.clone()), drain)
            .await;
        let _ = drained.send(true);
        let _ = reconciler.await;
        let _ = cleaner.await;
        let _ = cron.await;
        let _ = write_back.await;
        let _ = flusher.await;
        let _ = pruner.await;
        let _ = refresher.await;
        if let Err(err) = http.await {
            tracing::error!(error = %err, "the API server task failed");
        }
        processes.shutdown().await;
        // Last: the drain and the API may have recorded steps until now.
        if let Err(err) = trace.flush().await {
            tracing::error!(error = %err, "writing the last pipeline trace entries failed");
        }
    });
    shared.registry_changed();
    Ok(RunningServer {
        addr,
        metrics,
        stop,
        task,
        secrets_refresh,
    })
}

/// [`start`], then run until `shutdown` resolves, then stop as [`RunningServer::shutdown`] does.
pub async fn run(
    listener: TcpListener,
    config: &ServerConfig,
    parts: ServerParts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let server = start(listener, config, parts).await?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}

/// Makes the process workers match the registry, whenever the API changed it.
async fn reconcile_loop(shared: Arc<Shared>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = shared.reconcile.notified() => {}
        }
        let workers: Vec<_> = shared
            .dispatcher
            .registry
            .all()
            .await
            .values()
            .cloned()
            .collect();
        shared.dispatcher.processes.reconcile(&workers).await;
    }
}

/// Every 5 minutes, forgets rate-limit buckets idle for 10 minutes (they would be full again).
/// Memory only: it touches no database.
async fn limiter_cleanup_loop(dispatcher: Arc<Dispatcher>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
        let idle_since = dispatcher.clock.now_ms() - 600_000;
        let forgotten = dispatcher
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget_idle(idle_since);
        if forgotten > 0 {
            tracing::debug!(forgotten, "idle rate-limit buckets forgotten");
        }
        // A task re-queued to its reserved slot may wait in the ready queue for up to a lease
        // after that slot before it runs and uses the reservation.
        let lease_ms = i64::try_from(dispatcher.lease().await.as_millis()).unwrap_or(i64::MAX);
        dispatcher.forget_stale_reservations(idle_since.saturating_sub(lease_ms));
    }
}
