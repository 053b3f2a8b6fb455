//! `mechanics serve` and `mechanics config show`: the coordinator's wiring.
//!
//! The configuration comes from four layers (defaults < `config.yml` < `MECHANICS_*` < flags,
//! resolved by `mechanics-server`); the parts are the store (a SQLite file, or a PostgreSQL
//! database shared with other servers), the local fleet of executor nodes (behind
//! [`FleetExecutor`]) and a supervisor for process workers.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits};
use mechanics_core::{javascript, typescript};
use mechanics_node::{
    Fleet, FleetConfig, FleetError, NodeInfo, RemoteNodeConfig, RemoteNodeInfo, RemoteState,
    ShutdownHandle,
};
use mechanics_proto::api::{NodeKind, NodeView};
use mechanics_proto::domain::{HumanDuration, TranspiledModule};
use mechanics_proto::node::{JobRequest, JobResponse};
use mechanics_runtime::{Supervisor, SupervisorConfig};
use mechanics_server::config::{self, ConfigLayer, ConfigSource, Database, LogFormat};
use mechanics_server::{
    AttemptOutput, Clock, DispatchConfig, JsExecutor, NodeChange, NodeChangeListener, Outcome,
    RemoteNodeTarget, ScriptRetry, ServerConfig, ServerParts,
};
use mechanics_store::{PgStore, SqliteStore, Store};
use serde_json::Value;

/// The flags of `mechanics serve` and `mechanics config show` that override the configuration.
#[derive(Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// The address to listen on [default: 127.0.0.1:21212; MECHANICS_ADDR].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// The API key clients must send (Bearer or X-API-Key) [MECHANICS_API_KEY]. Every local user
    /// can read a flag's value with `ps`: prefer --api-key-file or MECHANICS_API_KEY. Without a
    /// key the server only listens on loopback addresses; a blank key is refused.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// A file holding the API key, read once at startup: a regular file of at most 64 KiB, its
    /// trailing line break trimmed [MECHANICS_API_KEY_FILE]. Not together with --api-key.
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<String>,
    /// Serve without an API key on a non-loopback address (anyone who reaches it may use it).
    #[arg(long)]
    insecure_no_auth: bool,
    /// The database: a SQLite file, or a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB,
    /// also postgresql://) that several servers may share [default: ~/.mechanics/mechanics.db;
    /// MECHANICS_DB_PATH]. Every local user can read a flag's value with `ps`: put a password
    /// in MECHANICS_DB_PATH or config.yml instead.
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
    /// How long startup keeps trying to reach a PostgreSQL database before it gives up and
    /// exits 2, e.g. 30s [default: 30s; MECHANICS_DB_CONNECT_TIMEOUT].
    #[arg(long, value_name = "DURATION")]
    db_connect_timeout: Option<String>,
    /// The configuration file [default: ~/.mechanics/config.yml; a missing default file is fine].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Local executor nodes for js workers [default: the number of CPUs; MECHANICS_LOCAL_NODES].
    #[arg(long, value_name = "N")]
    local_nodes: Option<String>,
    /// Tasks dispatched at once [default: 16; MECHANICS_CONCURRENCY].
    #[arg(long, value_name = "N")]
    concurrency: Option<String>,
    /// Claimed tasks that may wait in memory for a free runner (at most --concurrency of them)
    /// and the most claimed by one query (at most 64); the rest wait in the database
    /// [default: 256; MECHANICS_QUEUE_SIZE].
    #[arg(long, value_name = "N")]
    queue_size: Option<String>,
    /// How long shutdown waits for tasks in flight, e.g. 30s or 10m [default: 10m;
    /// MECHANICS_DRAIN_TIMEOUT].
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// How long an http or process worker has to answer one task, e.g. 30s; past it the attempt
    /// is a transport failure and retried [default: 10m; MECHANICS_HTTP_WORKER_TIMEOUT].
    #[arg(long, value_name = "DURATION")]
    http_worker_timeout: Option<String>,
    /// The CLI that runs container workers: docker, podman or auto (a running Docker engine,
    /// else Podman) [default: auto; MECHANICS_CONTAINER_RUNTIME].
    #[arg(long, value_name = "RUNTIME")]
    container_runtime: Option<String>,
    /// How often container workers are compared with their containers, e.g. 60s; missing,
    /// exited or unhealthy ones are recreated and orphans removed [default: 60s;
    /// MECHANICS_CONTAINER_RECONCILE_INTERVAL].
    #[arg(long, value_name = "DURATION")]
    container_reconcile_interval: Option<String>,
    /// Log format: pretty, json or compact [default: compact; MECHANICS_LOG_FORMAT].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or mechanics_server=debug [default: info; MECHANICS_LOG_LEVEL];
    /// RUST_LOG wins when set.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Connections open at once; more wait in the kernel's backlog. Lowered at startup to what
    /// the descriptor limit leaves [default: 1024; MECHANICS_MAX_CONNECTIONS].
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// How long a client has to send a request's headers (and a body may pause), e.g. 10s
    /// [default: 10s; MECHANICS_HEADER_TIMEOUT].
    #[arg(long, value_name = "DURATION")]
    header_timeout: Option<String>,
    /// How long a kept-alive connection may wait for its next request, e.g. 60s
    /// [default: 60s; MECHANICS_IDLE_TIMEOUT].
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Webhook body bytes received at once over all deliveries; past it deliveries get 503
    /// with Retry-After [default: 67108864 (64 MiB); MECHANICS_WEBHOOK_BODY_BUDGET].
    #[arg(long, value_name = "BYTES")]
    webhook_body_budget: Option<String>,
    /// Host names (or name:port), comma-separated, that /mcp accepts in the Host header besides
    /// the names of --addr: a reverse proxy's public name when it passes the client's Host
    /// through [default: none; MECHANICS_MCP_ALLOWED_HOSTS].
    #[arg(long, value_name = "HOST,...")]
    mcp_allowed_hosts: Option<String>,
}

/// Exit status for a server that could not start (bad configuration, port in use, database).
const EXIT_STARTUP: u8 = 2;

impl ConfigArgs {
    /// The layers of the configuration, lowest first, and the home they resolve under.
    fn resolve(&self) -> anyhow::Result<ServerConfig> {
        let home = config::default_home();
        let file = match &self.config {
            Some(path) => {
                // A file named on the command line must exist; only the default may be absent.
                if !path.exists() {
                    anyhow::bail!(
                        "--config: {} does not exist: create it or leave --config out",
                        path.display()
                    );
                }
                path.clone()
            }
            None => home.join("config.yml"),
        };
        let mut layers = vec![(
            ConfigSource::File(file.clone()),
            ConfigLayer::from_file(&file)?,
        )];
        // One layer per variable and per flag, so that errors and `config show` name the exact
        // variable or flag a value came from.
        for (name, key) in config::ENV_KEYS {
            if let Ok(value) = std::env::var(name) {
                let source = ConfigSource::Env((*name).to_owned());
                let mut layer = ConfigLayer::default();
                layer.set(key, &value, source.clone())?;
                layers.push((source, layer));
            }
        }
        let given = [
            ("addr", "--addr", self.addr.as_deref()),
            ("api_key", "--api-key", self.api_key.as_deref()),
            (
                "api_key_file",
                "--api-key-file",
                self.api_key_file.as_deref(),
            ),
            (
                "insecure_no_auth",
                "--insecure-no-auth",
                self.insecure_no_auth.then_some("true"),
            ),
            ("db", "--db", self.db.as_deref()),
            (
                "db_connect_timeout",
                "--db-connect-timeout",
                self.db_connect_timeout.as_deref(),
            ),
            ("local_nodes", "--local-nodes", self.local_nodes.as_deref()),
            ("concurrency", "--concurrency", self.concurrency.as_deref()),
            ("queue_size", "--queue-size", self.queue_size.as_deref()),
            (
                "drain_timeout",
                "--drain-timeout",
                self.drain_timeout.as_deref(),
            ),
            (
                "http_worker_timeout",
                "--http-worker-timeout",
                self.http_worker_timeout.as_deref(),
            ),
            (
                "container_runtime",
                "--container-runtime",
                self.container_runtime.as_deref(),
            ),
            (
                "container_reconcile_interval",
                "--container-reconcile-interval",
                self.container_reconcile_interval.as_deref(),
            ),
            ("log_format", "--log-format", self.log_format.as_deref()),
            ("log_level", "--log-level", self.log_level.as_deref()),
            (
                "max_connections",
                "--max-connections",
                self.max_connections.as_deref(),
            ),
            (
                "header_timeout",
                "--header-timeout",
                self.header_timeout.as_deref(),
            ),
            (
                "idle_timeout",
                "--idle-timeout",
                self.idle_timeout.as_deref(),
            ),
            (
                "webhook_body_budget",
                "--webhook-body-budget",
                self.webhook_body_budget.as_deref(),
            ),
            (
                "mcp_allowed_hosts",
                "--mcp-allowed-hosts",
                self.mcp_allowed_hosts.as_deref(),
            ),
        ];
        for (key, flag, value) in given {
            if let Some(value) = value {
                let source = ConfigSource::Flag(flag.to_owned());
                let mut layer = ConfigLayer::default();
                layer.set(key, value, source.clone())?;
                layers.push((source, layer));
            }
        }
        Ok(ServerConfig::resolve(&home, layers)?)
    }
}

/// `mechanics config show`: the effective configuration with the source of each value.
pub fn config_show(args: &ConfigArgs, json: bool) -> u8 {
    match args.resolve() {
        Ok(config) => {
            let shown = if json {
                format!("{:#}\n", config.show_json())
            } else {
                config.show()
            };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(shown.as_bytes());
            0
        }
        Err(err) if json => {
            let error = serde_json::json!({
                "error": { "code": "usage", "message": format!("{err:#}"), "exit": EXIT_STARTUP }
            });
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{error}");
            EXIT_STARTUP
        }
        Err(err) => {
            crate::cli::error_line(&format!("{err:#}"));
            EXIT_STARTUP
        }
    }
}

/// `mechanics serve`: runs the coordinator until SIGINT or SIGTERM.
pub fn serve(args: &ConfigArgs) -> u8 {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(err) => {
            crate::cli::error_line(&format!("{err:#}"));
            return EXIT_STARTUP;
        }
    };
    init_logging(config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            crate::cli::error_line(&format!("cannot start the async runtime: {err}"));
            return EXIT_STARTUP;
        }
    };
    let json_logs = config.log_format == LogFormat::Json;
    match runtime.block_on(run_server(config)) {
        Ok(()) => 0,
        Err(err) => {
            if json_logs {
                // Log collectors see the reason too; people read the line below.
                tracing::error!(error = %format!("{err:#}"), "mechanics serve could not start");
            }
            crate::cli::error_line(&format!("{err:#}"));
            EXIT_STARTUP
        }
    }
}

/// How often an idle server hands freed heap memory back to the system (see
/// [`mechanics_core::release_freed_memory`]).
const MEMORY_RELEASE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

async fn run_server(mut config: ServerConfig) -> anyhow::Result<()> {
    // Connections must leave descriptors for the database, the nodes and outgoing requests.
    config.max_connections = config.edge_limits().for_this_process().max_connections;
    let store = open_store(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server running there? Pass another --addr",
                config.addr
            )
        })?;
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let program = std::env::current_exe().context("cannot find this program's path")?;
    let mut fleet_config = FleetConfig::new(program);
    fleet_config.nodes = config.local_nodes;
    let fleet = Fleet::start(fleet_config, ShutdownHandle::new())
        .await
        .context("cannot start the local executor nodes")?;
    let parts = ServerParts {
        store,
        js: Some(Arc::new(FleetExecutor {
            fleet: fleet.clone(),
        })),
        supervisor: Supervisor::new(SupervisorConfig::default(), ShutdownHandle::new()),
        clock: Clock::system(),
        dispatch: DispatchConfig::from_config(&config),
    };
    // `/mcp`: the assistants' tools, calling this server's API with each caller's key.
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let bound = listener
        .local_addr()
        .context("the listener has no address")?;
    let mcp = crate::mcp::http_routes(bound, &config.mcp_allowed_hosts, mcp_stop.clone())
        .context("cannot serve /mcp")?;
    let server = match mechanics_server::start_with(listener, &config, parts, mcp).await {
        Ok(server) => server,
        Err(err) => {
            fleet.shutdown().await;
            return Err(err).context("cannot start the server");
        }
    };
    let addr = server.addr;
    let memory_release = tokio::spawn(async {
        let mut every = tokio::time::interval(MEMORY_RELEASE_INTERVAL);
        loop {
            every.tick().await;
            mechanics_core::release_freed_memory();
        }
    });
    tracing::info!(
        %addr,
        db = %config.db,
        local_nodes = config.local_nodes,
        auth = config.api_key.is_some(),
        "Mechanics is serving on http://{addr}"
    );
    {
        // The handshake for scripts and supervisors, as `mechanics node serve` prints it.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "READY {addr}");
        let _ = stdout.flush();
    }
    // SIGHUP reads the sources' secrets again; SIGINT or SIGTERM stops.
    while signals.next().await == Signal::Hangup {
        server.refresh_secrets();
    }
    tracing::info!(
        drain_timeout = ?config.drain_timeout,
        "shutting down: no new tasks; waiting for those in flight"
    );
    // A Ctrl+C in a terminal often reaches the server twice at once (directly, and forwarded
    // by a wrapping script): only a signal at least a second after the first skips the drain.
    let first = tokio::time::Instant::now();
    let second = async {
        loop {
            if signals.next().await == Signal::Hangup {
                continue;
            }
            if first.elapsed() >= std::time::Duration::from_secs(1) {
                return;
            }
        }
    };
    mcp_stop.cancel();
    tokio::select! {
        () = server.shutdown() => {}
        () = second => {
            tracing::warn!("second signal: stopping without waiting; recovery picks up the rest");
        }
    }
    memory_release.abort();
    fleet.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The store `config.db` names: the SQLite file, or the PostgreSQL database (tried until
/// `db_connect_timeout` passes, then migrated). An error is one line that names the database
/// (never its password) and what to do.
async fn open_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    match &config.db {
        Database::Sqlite(path) => {
            let opened = path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&opened))
                .await
                .context("opening the database")?
                .with_context(|| {
                    format!(
                        "cannot open the database {}: pass another path with --db or \
                         MECHANICS_DB_PATH",
                        path.display()
                    )
                })?;
            Ok(Arc::new(store))
        }
        Database::Postgres(url) => match PgStore::connect(url, config.db_connect_timeout).await {
            Ok(store) => Ok(Arc::new(store)),
            Err(err) => {
                // A database's message may span lines (DETAIL, HINT): the reason stays one line.
                let mut line = err
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                // The store's connection errors name the database; any other is told which.
                let shown = config.db.to_string();
                if !line.contains(&shown) {
                    line = format!("cannot use the PostgreSQL database {shown}: {line}");
                }
                anyhow::bail!(
                    "{line}: check the URL (--db or MECHANICS_DB_PATH) and that PostgreSQL is \
                     running, reachable from here and accepts this user, or allow it longer \
                     with --db-connect-timeout (now {})",
                    HumanDuration(config.db_connect_timeout)
                )
            }
        },
    }
}

/// SIGTERM and SIGINT (stop), and SIGHUP (read the secrets again).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop,
    Hangup,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` when set, else by `level`.
fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|err| {
            crate::cli::error_line(&format!(
                "log_level: {level:?} is not a log filter ({err}); using info"
            ));
            EnvFilter::new("info")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Pretty => builder.pretty().try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Compact => builder.compact().try_init(),
    };
}

/// Runs js jobs on the local fleet of executor nodes.
pub struct FleetExecutor {
    fleet: Fleet,
}

impl FleetExecutor {
    /// Runs jobs on `fleet`.
    pub fn new(fleet: Fleet) -> Self {
        Self { fleet }
    }
}

/// What a fleet answer means for the task, with the console output of a job that ran (its
/// result or its script error).
pub fn outcome_of(result: Result<JobResponse, FleetError>) -> AttemptOutput {
    match result {
        Ok(answer) => AttemptOutput {
            outcome: Outcome::Completed(answer.result),
            console: answer.console,
            node: None,
        },
        Err(FleetError::Script {
            kind,
            message,
            console,
        }) => {
            // The engine classed the script's error; the dispatcher decides what each class gets.
            let retry = match kind.as_str() {
                "endpoint_transport" => Some(ScriptRetry::EndpointTransport),
                "retryable" => Some(ScriptRetry::Requested),
                _ => None,
            };
            let outcome = match retry {
                Some(why) => Outcome::ScriptRetry(why, format!("{kind}: {message}")),
                None => Outcome::Failed(format!("{kind}: {message}")),
            };
            AttemptOutput {
                outcome,
                console,
                node: None,
            }
        }
        Err(FleetError::Overloaded {
            retry_after,
            kind,
            message,
        }) => Outcome::Overloaded(retry_after, format!("{kind}: {message}")).into(),
        Err(err) if err.is_retryable() => Outcome::Transport(err.to_string()).into(),
        Err(err @ FleetError::Rejected { .. }) => Outcome::Failed(err.to_string()).into(),
        Err(err) => Outcome::Failed(format!("{}: {err}", err.kind())).into(),
    }
}

#[async_trait]
impl JsExecutor for FleetExecutor {
    async fn run(&self, job: JobRequest) -> AttemptOutput {
        let (node, answer) = self.fleet.run_on(&job).await;
        AttemptOutput {
            node,
            ..outcome_of(answer)
        }
    }

    fn validate(&self, config: Option<&Value>, limits: Option<&Value>) -> Result<(), String> {
        validate_js(config, limits)
    }

    fn transpile(&self, source: &str, module: &str) -> Result<Option<TranspiledModule>, String> {
        transpile_module(source, module)
    }

    fn nodes(&self) -> Vec<NodeView> {
        let capacity = self.fleet.workers_per_node();
        let local = self
            .fleet
            .nodes()
            .into_iter()
            .map(|n| node_view(n, capacity));
        let remote = self.fleet.remote_nodes().into_iter().map(remote_view);
        local.chain(remote).collect()
    }

    fn reset(&self, name: &str) -> bool {
        self.fleet.supervisor().reset_breaker(name).is_ok()
    }

    fn set_remote_nodes(&self, nodes: Vec<RemoteNodeTarget>) {
        self.fleet
            .set_remote_nodes(nodes.iter().map(remote_config).collect());
    }

    fn watch_nodes(&self, on_change: NodeChangeListener) {
        let on_change = Arc::new(on_change);
        // Local nodes: their supervisor publishes every snapshot; a change is a new state
        // (running, backing_off, tripped, ...), not a new counter. A recycle replaces a node's
        // process and its snapshots (`stopped`, then the new process `running`): the watch
        // follows the new one, until the fleet shuts down.
        for snapshot in self.fleet.supervisor().snapshots() {
            let (fleet, on_change) = (self.fleet.clone(), Arc::clone(&on_change));
            tokio::spawn(async move {
                let mut last = snapshot.state;
                while let Some(mut updates) = fleet.watch_local(&snapshot.name).await {
                    loop {
                        let now = updates.borrow_and_update().clone();
                        if now.state != last {
                            let up = now.state == mechanics_runtime::NodeState::Running;
                            on_change(NodeChange {
                                node: now.name.clone(),
                                kind: NodeKind::Local,
                                from: last.as_str().to_owned(),
                                to: now.state.as_str().to_owned(),
                                up,
                                error: (!up)
                                    .then(|| now.last_exit.as_ref().map(|exit| exit.status.clone()))
                                    .flatten(),
                            });
                            last = now.state;
                        }
                        if updates.changed().await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
        self.fleet.on_remote_change(move |change| {
            on_change(NodeChange {
                node: change.node.clone(),
                kind: NodeKind::Remote,
                from: change.from.as_str().to_owned(),
                to: change.to.as_str().to_owned(),
                up: change.to == RemoteState::Healthy,
                error: change.error.clone(),
            })
        });
    }

    async fn check_remote_node(&self, node: &RemoteNodeTarget) -> Result<(), String> {
        let token_field = if node.spec.token_env.is_some() {
            "token_env"
        } else {
            "token_file"
        };
        if let Some(ca_file) = &node.spec.ca_file {
            mechanics_node::client_tls(std::path::Path::new(ca_file), "ca_file")
                .map_err(|err| err.to_string())?;
        }
        let info = self.fleet.probe(remote_config(node)).await;
        let why = info.last_error.unwrap_or_default();
        match info.state {
            RemoteState::Unauthorized => Err(format!("{token_field}: {why}")),
            RemoteState::Incompatible => Err(format!("url: {why}")),
            // Healthy, or down for now: it is used once a check finds it healthy.
            _ => Ok(()),
        }
    }
}

/// A worker's module as it will run, when its file name `module` says TypeScript: transpiled by
/// the engine's `typescript` module, with the source map as the JSON the node protocol carries.
/// A JavaScript module is only checked to parse (`None`).
pub fn transpile_module(source: &str, module: &str) -> Result<Option<TranspiledModule>, String> {
    if !typescript::is_typescript(module) {
        // JavaScript runs as written; checked here, a syntax error is refused at add.
        javascript::check(source, module).map_err(|err| err.to_string())?;
        return Ok(None);
    }
    let transpiled = typescript::transpile(source, module).map_err(|err| err.to_string())?;
    let source_map = serde_json::to_value(&transpiled.source_map).map_err(|err| err.to_string())?;
    Ok(Some(TranspiledModule {
        javascript: transpiled.javascript,
        source_map,
    }))
}

/// Checks a js worker's `config` and `limits` as the engine reads them.
pub fn validate_js(config: Option<&Value>, limits: Option<&Value>) -> Result<(), String> {
    if let Some(config) = config {
        serde_json::from_value::<MechanicsConfig>(config.clone())
            .map_err(|err| prefixed("config", &err.to_string()))?;
    }
    if let Some(limits) = limits {
        serde_json::from_value::<MechanicsExecutionLimits>(limits.clone())
            .map_err(|err| prefixed("limits", &err.to_string()))?;
    }
    Ok(())
}

/// `message`, starting with `field: ` unless it already names the field first.
fn prefixed(field: &str, message: &str) -> String {
    if message.starts_with(field) {
        message.to_owned()
    } else {
        format!("{field}: {message}")
    }
}

/// A local fleet node as the API shows it.
fn node_view(info: NodeInfo, capacity: usize) -> NodeView {
    let snapshot = info.snapshot.as_ref();
    let state = match snapshot {
        Some(_) if info.draining => "draining".to_owned(),
        Some(s) => s.state.as_str().to_owned(),
        None => "unknown".to_owned(),
    };
    NodeView {
        state,
        breaker: snapshot.map_or_else(|| "closed".to_owned(), |s| s.breaker.as_str().to_owned()),
        address: info.address,
        in_flight: info.in_flight as u64,
        jobs: info.jobs,
        starts: snapshot.map_or(0, |s| s.starts),
        deaths: snapshot.map_or(0, |s| s.deaths),
        restarts: snapshot.map_or(0, |s| s.restarts),
        last_exit: snapshot.and_then(|s| s.last_exit.as_ref().map(|e| e.status.clone())),
        resource_exhaustion: snapshot
            .and_then(|s| s.resource_exhaustion)
            .map(|r| r.to_string()),
        kind: NodeKind::Local,
        url: None,
        capacity: Some(capacity as u64),
        p50_ms: None,
        last_error: None,
        image: None,
        container_id: None,
        name: info.name,
    }
}

/// A remote node as the API shows it; its breaker is `tripped` while its state is.
fn remote_view(info: RemoteNodeInfo) -> NodeView {
    let tripped = info.state == RemoteState::Tripped;
    NodeView {
        name: info.name,
        kind: NodeKind::Remote,
        url: Some(info.url),
        state: info.state.as_str().to_owned(),
        breaker: if tripped { "tripped" } else { "closed" }.to_owned(),
        address: None,
        in_flight: info.in_flight as u64,
        jobs: info.jobs,
        starts: 0,
        deaths: info.transport_failures,
        restarts: 0,
        last_exit: None,
        resource_exhaustion: None,
        capacity: Some(info.capacity as u64),
        p50_ms: info.p50.map(|d| d.as_secs_f64() * 1000.0),
        last_error: info.last_error,
        image: None,
        container_id: None,
    }
}

/// The fleet's view of a registered node: its URL, token, CA file and capacity.
fn remote_config(node: &RemoteNodeTarget) -> RemoteNodeConfig {
    let spec = &node.spec;
    let mut config = RemoteNodeConfig::new(&spec.name, &spec.url, &node.token);
    config.ca_file = spec.ca_file.as_ref().map(PathBuf::from);
    config.capacity = spec.capacity.map(|c| c as usize);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use mechanics_proto::domain::{ConsoleLevel, ConsoleLine};
    use serde_json::json;

    #[test]
    fn fleet_errors_map_to_outcomes() {
        let console = vec![ConsoleLine {
            level: ConsoleLevel::Error,
            ts: 7,
            message: "about to throw".into(),
        }];
        let done = JobResponse {
            result: json!(1),
            console: console.clone(),
        };
        assert_eq!(
            outcome_of(Ok(done)),
            AttemptOutput {
                outcome: Outcome::Completed(json!(1)),
                console: console.clone(),
                node: None,
            }
        );
        let script = FleetError::Script {
            kind: "execution".into(),
            message: "boom".into(),
            console: console.clone(),
        };
        // A script that failed still hands back what it wrote.
        assert_eq!(
            outcome_of(Err(script)),
            AttemptOutput {
                outcome: Outcome::Failed("execution: boom".into()),
                console,
                node: None,
            }
        );
        let outcome_of = |result| outcome_of(result).outcome;
        let crashed = outcome_of(Err(FleetError::SandboxCrashed { crashes: 2 }));
        assert!(
            matches!(&crashed, Outcome::Failed(m) if m.starts_with("sandbox_crashed: ")),
            "{crashed:?}"
        );
        let gone = FleetError::Transport {
            node: "node-1".into(),
            message: "reset".into(),
        };
        assert!(matches!(outcome_of(Err(gone)), Outcome::Transport(_)));
        let busy = FleetError::Overloaded {
            kind: "queue_full".into(),
            message: "full".into(),
            retry_after: Some(std::time::Duration::from_secs(2)),
        };
        // Overload is the executor's state, not the task's fault: no try is spent on it.
        assert!(matches!(
            outcome_of(Err(busy)),
            Outcome::Overloaded(Some(d), _) if d.as_secs() == 2
        ));
        let no_node = FleetError::Overloaded {
            kind: "no_node_available".into(),
            message: "every node is busy".into(),
            retry_after: None,
        };
        assert!(matches!(
            outcome_of(Err(no_node)),
            Outcome::Overloaded(None, _)
        ));
    }

    #[test]
    fn js_config_errors_name_the_field() {
        assert!(validate_js(Some(&json!({ "endpoints": {} })), None).is_ok());
        let err = validate_js(None, Some(&json!({ "max_loop_iterations": 0 }))).unwrap_err();
        assert!(err.contains("max_loop_iterations"), "{err}");
        let err = validate_js(Some(&json!({ "endpoint": {} })), None).unwrap_err();
        assert!(err.starts_with("config"), "{err}");
    }
}
