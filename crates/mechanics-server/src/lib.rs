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
pub mod containers;
pub mod cron;
pub mod dispatch;
mod events;
pub mod executor;
pub mod files;
pub mod instances;
pub mod keys;
pub mod metrics;
mod nodes;
pub mod observe;
pub mod openapi;
mod pipeline;
mod policy;
pub mod processes;
pub mod recent;
mod registry;
mod sources;
pub mod trace_log;
pub mod ui;
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
pub use executor::{
    AttemptOutput, JsExecutor, NodeChange, NodeChangeListener, Outcome, RemoteNodeTarget,
    ScriptRetry,
};
pub use metrics::Metrics;
pub use sources::read_webhook_secret;
pub use trace_log::TraceLog;

use containers::{ContainerCli, ContainerWorkers};
use dispatch::Dispatcher;
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
    /// The first heartbeat, which lists this server among the instances, could not be written.
    #[error("registering this server in the database failed: {0}")]
    Instance(mechanics_store::StoreError),
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
    /// The dispatcher settings of `config`: `http_worker_timeout` (10 min by default) for an
    /// http or process worker's answer, and a tenth of it (1 s to 60 s) as the lease's margin.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            concurrency: config.concurrency,
            claim_batch: u32::try_from(config.queue_size.min(64)).unwrap_or(64),
            prefetch: config.queue_size,
            lease_margin: (config.http_worker_timeout / 10)
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            http_timeout: config.http_worker_timeout,
            default_rate: mechanics_store::TokenRate {
                per_second: config.worker_rate_limit.per_second,
                burst: config.worker_rate_limit.burst,
            },
        }
    }
}

/// With other servers on the database, the longest an idle dispatcher sleeps before it reads
/// the next due time again (which also refreshes the registry version): a lost notification
/// delays work by at most this, never loses it. The only query an idle server makes besides
/// its heartbeat.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// How often a busy server re-queues tasks whose lease expired, with other servers on the
/// database.
pub const LEASE_SWEEP: Duration = Duration::from_secs(5);

/// State shared by the API handlers and the loops.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    pub(crate) js: Option<Arc<dyn JsExecutor>>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// The configured key and the stored keys: who a request is (see [`keys`]).
    pub(crate) keys: keys::ApiKeys,
    /// Every counter of `/metrics`; see [`metrics`] for the one-line API.
    pub(crate) metrics: Arc<Metrics>,
    /// The `/logs` pipeline trace; see [`trace_log`] for the one-line API.
    pub(crate) trace: Arc<TraceLog>,
    /// Sources, webhook buckets, write-back client, cron wake-up.
    pub(crate) integrations: Arc<webhooks::Integrations>,
    /// The dashboard's sessions and bulk actions (see [`ui`]).
    pub(crate) ui: ui::UiState,
    /// Rung when workers were added, changed or removed: the process workers are reconciled.
    reconcile: Notify,
    /// When this server started (unix ms): claims older than that on a database no other
    /// server uses were its earlier process's.
    pub(crate) started_at: i64,
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
    start_with(listener, config, parts, axum::Router::new()).await
}

/// [`start`], also serving `routes` behind the API's authentication: a request without a valid
/// key is refused with `401`, and one that passes carries the key's
/// [`ApiScope`](mechanics_proto::api::ApiScope) in its extensions (the scope each route needs
/// is [`keys::needed_scope`]). `mechanics serve` mounts `/mcp` this way: the MCP tools live in
/// the binary's crate, which depends on this one.
pub async fn start_with(
    listener: TcpListener,
    config: &ServerConfig,
    parts: ServerParts,
    routes: axum::Router,
) -> Result<RunningServer, ServerError> {
    let addr = listener.local_addr().map_err(ServerError::Listener)?;
    let metrics = Arc::new(Metrics::new());
    let trace = Arc::new(TraceLog::new(parts.store.clone(), metrics.clone()));
    if let Some(key) = &config.api_key {
        trace.redactor().add_secret(key);
    }
    for password in config.db.passwords() {
        trace.redactor().add_secret(&password);
    }
    let now = parts.clock.now_ms();
    // Alone on the database (SQLite: one server per file), nothing can still be running a
    // claim from before. With other servers on it, only claims whose lease ran out are taken
    // back: a live server's are its own.
    let recovered = if parts.store.shared() {
        parts.store.requeue_expired_leases(now).await
    } else {
        parts.store.requeue_all_dispatched(now).await
    }
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
    let processes = Arc::new(ProcessWorkers::new(parts.supervisor.clone()));
    let runtime = match ContainerCli::find(config.container_runtime).await {
        Ok(cli) => containers::Scope::claim(&config.data_dir(), &config.db.to_string())
            .map(|scope| (cli, scope))
            .map_err(|why| format!("no scope of its own for its containers: {why}")),
        Err(why) => Err(why),
    };
    if let Err(why) = &runtime {
        tracing::info!(reason = %why, "container workers cannot run on this server");
    }
    let containers = Arc::new(ContainerWorkers::new(
        parts.supervisor,
        runtime,
        trace.clone(),
        parts.clock,
    ));
    let http = HttpWorkerClient::new(parts.dispatch.http_timeout).map_err(ServerError::Http)?;
    let dispatcher = Arc::new(Dispatcher::new(
        parts.store.clone(),
        parts.clock,
        registry.clone(),
        parts.js.clone(),
        http,
        processes.clone(),
        containers,
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
        keys: keys::ApiKeys::new(config.api_key.clone()),
        metrics: metrics.clone(),
        trace: trace.clone(),
        integrations,
        ui: ui::UiState::default(),
        reconcile: Notify::new(),
        started_at: parts.clock.now_ms(),
    });
    if let Some(js) = &shared.js {
        // Watched before any remote node is installed, so that its first check is written too.
        let (trace, clock) = (trace.clone(), shared.clock);
        js.watch_nodes(Box::new(move |change| {
            trace.node_changed(&change, clock.now_ms())
        }));
    }
    // The remote nodes are known before the first task is dispatched.
    nodes::sync(&shared).await;
    // Listed before it serves: a client that reached this server finds it in the list.
    let instance = instances::this_instance(format!("http://{addr}"), shared.clock.now_ms());
    shared
        .store
        .heartbeat(&instance, instance.started_at)
        .await
        .map_err(ServerError::Instance)?;
    let (stop, stopped) = watch::channel(false);
    let drain = config.drain_timeout;
    // One error shape for every route, webhooks included (see `api::json_errors`).
    let routes = routes.layer(axum::middleware::from_fn_with_state(
        shared.clone(),
        keys::authenticate,
    ));
    let app = routes
        .merge(api::router(shared.clone()))
        .merge(webhooks::router(shared.clone()))
        .layer(axum::middleware::from_fn(api::json_errors))
        // The dashboard answers its errors with pages, not JSON: outside that layer.
        .merge(ui::router(shared.clone()));
    let edge = config.edge_limits();
    let config_reconcile_interval = config.container_reconcile_interval;
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
        // So does the heartbeat: a draining server still holds claims, and is still listed.
        let heartbeat = tokio::spawn(instances::heartbeat_loop(
            store.clone(),
            clock,
            instance,
            until_stop(drained_rx.clone()),
        ));
        let write_back = tokio::spawn(writeback::run(
            loops.clone(),
            until_stop(drained_rx.clone()),
        ));
        let reconciler = tokio::spawn(reconcile_loop(
            loops.clone(),
            config_reconcile_interval,
            until_stop(stopped.clone()),
        ));
        // With other servers on the database: their hints, the lease sweep, and the renewal of
        // this server's claims (which, like write-back, outlives the drain).
        let shared_loops = loops.store.shared().then(|| {
            [
                tokio::spawn(remote_changes_loop(
                    loops.clone(),
                    until_stop(stopped.clone()),
                )),
                tokio::spawn(lease_sweep_loop(
                    dispatcher.clone(),
                    until_stop(stopped.clone()),
                )),
                tokio::spawn(lease_renewal_loop(
                    dispatcher.clone(),
                    until_stop(drained_rx.clone()),
                )),
            ]
        });
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
        for handle in shared_loops.into_iter().flatten() {
            let _ = handle.await;
        }
        let _ = cron.await;
        let _ = write_back.await;
        let _ = heartbeat.await;
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

/// Makes the process and container workers match the registry whenever the API changed it,
/// and the containers every `container_interval` while there are container workers (an idle
/// server without any sleeps).
async fn reconcile_loop(
    shared: Arc<Shared>,
    container_interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let containers = shared.dispatcher.containers.any();
        tokio::select! {
            () = &mut stop => return,
            () = shared.reconcile.notified() => {}
            () = tokio::time::sleep(container_interval), if containers => {
                let workers: Vec<_> = shared.dispatcher.registry.all().await.values().cloned().collect();
                shared.dispatcher.containers.reconcile(&workers).await;
                continue;
            }
        }
        let workers: Vec<_> = shared
            .dispatcher
            .registry
            .all()
            .await
            .values()
            .cloned()
            .collect();
        // Both retire first: a worker whose kind changed leaves one owner before the other
        // starts it under the same supervisor name.
        shared.dispatcher.processes.retire(&workers).await;
        shared.dispatcher.containers.retire(&workers).await;
        shared.dispatcher.processes.reconcile(&workers).await;
        shared.dispatcher.containers.reconcile(&workers).await;
        nodes::sync(&shared).await;
    }
}

/// With other servers on the database: wakes the dispatcher when one of them made work due,
/// and the registry's users (process workers, cron) when the registry version moved, whether a
/// notification or the dispatcher's poll ([`FALLBACK_POLL`]) showed it. Reads no database.
async fn remote_changes_loop(shared: Arc<Shared>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let changes = shared.store.remote_changes();
    let mut seen = shared.store.registry_version();
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = changes.notified() => shared.dispatcher.wake.notify_one(),
            () = tokio::time::sleep(FALLBACK_POLL) => {}
        }
        let version = shared.store.registry_version();
        if version != seen {
            seen = version;
            shared.registry_changed();
        }
    }
}

/// With other servers on the database: renews the leases of the claims this server holds every
/// third of [`dispatch::SHARED_LEASE`], until the drain has ended (attempts still run during it).
async fn lease_renewal_loop(dispatcher: Arc<Dispatcher>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(dispatch::SHARED_LEASE / 3) => {}
        }
        dispatcher.renew_leases().await;
    }
}

/// With other servers on the database: while this one is busy, re-queues tasks whose lease
/// expired (a server that died holding them) every [`LEASE_SWEEP`]. An idle dispatcher's poll
/// does the same on its own, so an idle server adds no query here.
async fn lease_sweep_loop(dispatcher: Arc<Dispatcher>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut claims_seen = dispatcher.claims_made();
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(LEASE_SWEEP) => {}
        }
        // Busy: it claimed since the last round, or attempts are running (its feeder then
        // waits for a runner, not on the poll that would sweep).
        let claims = dispatcher.claims_made();
        if claims != claims_seen || dispatcher.in_flight() > 0 {
            claims_seen = claims;
            dispatcher.requeue_expired().await;
        }
    }
}
