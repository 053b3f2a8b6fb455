//! Container workers: images the server runs with the `docker` or `podman` CLI, supervised by
//! `mechanics-runtime` and called over the http worker contract at the port the runtime
//! published on 127.0.0.1.
//!
//! Each container worker is one supervised node ([`ContainerNode`]): an *instance* is one
//! container. Its first instance in this process adopts the container a previous run left
//! running (same labels, same revision) instead of recreating it; every later instance follows a
//! death (the container went missing, exited, turned unhealthy or failed its health checks) and
//! creates a fresh container. So the supervisor's restart policy and crash-loop breaker govern
//! recreation: an image that exits at once cannot loop forever.
//!
//! Containers outlive the server: when the supervisor stops (shutdown), an instance returns
//! without touching its container, and the next start adopts it. Only a worker's removal or a
//! new revision removes a container ([`ContainerWorkers::reconcile`]).
//!
//! Reconciliation runs on every registry change and every `container_reconcile_interval`: it
//! starts and stops nodes to match the registry, asks every node to compare its container with
//! the runtime's view, and removes orphans (containers labelled with this server's scope whose
//! worker is gone). Each repair is a `/logs` entry with action `reconcile` and counts in
//! `mechanics_containers_reconciled_total`.
//!
//! Secrets: the container's environment (with `${env:NAME}` resolved) is written to a private
//! temporary file passed with `--env-file` and deleted once the container is created, so the
//! values never appear in this process's arguments, and they are registered with the redactor.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mechanics_proto::api::{NodeKind, NodeView};
use mechanics_proto::domain::{LogOutcome, RestartPolicyName, Worker, WorkerKind};
use mechanics_runtime::{
    ExponentialBackoff, HealthStatus, NodeFailure, NodeRunner, NodeState, RestartPolicy,
    ShutdownSignal, Supervisor,
};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::ContainerRuntimeChoice;
use crate::trace_log::{TraceLog, entry};

/// Label holding the scope of the server that made a container ([`Scope`]: a hash of its
/// database and of its own id), so that no other server on the same engine, of the same database
/// or not, touches its containers.
pub const SCOPE_LABEL: &str = "mechanics.scope";
/// Label holding the worker's name.
pub const WORKER_LABEL: &str = "mechanics.worker";
/// Label holding the worker's revision.
pub const REVISION_LABEL: &str = "mechanics.revision";

/// How long a new container has to answer HTTP before its instance counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one runtime command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Log lines of a dead container quoted in its failure.
const LOG_LINES_QUOTED: usize = 5;

/// The container runtime's CLI.
#[derive(Debug, Clone)]
pub struct ContainerCli {
    program: PathBuf,
    podman: bool,
}

impl ContainerCli {
    /// Finds the CLI `choice` names on `PATH`. `auto` takes `docker` when its engine answers,
    /// else `podman`, else fails. The error is one line saying what is missing.
    pub async fn find(choice: ContainerRuntimeChoice) -> Result<Self, String> {
        let docker = on_path("docker").map(|program| Self {
            program,
            podman: false,
        });
        let podman = on_path("podman").map(|program| Self {
            program,
            podman: true,
        });
        match choice {
            ContainerRuntimeChoice::Docker => {
                docker.ok_or_else(|| "docker is not on the server's PATH".to_owned())
            }
            ContainerRuntimeChoice::Podman => {
                podman.ok_or_else(|| "podman is not on the server's PATH".to_owned())
            }
            ContainerRuntimeChoice::Auto => {
                // A Docker engine that answers wins; without Podman, Docker's CLI is still the
                // best guess (its error then says what is wrong).
                if let Some(docker) = docker
                    && (podman.is_none()
                        || docker
                            .output(&["info", "--format", "{{.ID}}"])
                            .await
                            .is_ok())
                {
                    return Ok(docker);
                }
                podman.ok_or_else(|| "neither docker nor podman is on the server's PATH".to_owned())
            }
        }
    }

    /// `docker` or `podman`.
    pub fn name(&self) -> &'static str {
        if self.podman { "podman" } else { "docker" }
    }

    /// Runs the CLI with `args` and returns its stdout, trimmed; a failure is the CLI's stderr
    /// in one line.
    async fn output(&self, args: &[&str]) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => return Err(format!("cannot run {}: {err}", self.name())),
            Err(_) => {
                return Err(format!(
                    "{} {} did not answer within {COMMAND_TIMEOUT:?}",
                    self.name(),
                    args.first().unwrap_or(&"")
                ));
            }
        };
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(one_line(&String::from_utf8_lossy(&output.stderr)))
        }
    }

    /// Whether `image` is on this machine; an error says why the runtime could not tell.
    pub async fn has_image(&self, image: &str) -> Result<bool, String> {
        match self
            .output(&["image", "inspect", "--format", "{{.Id}}", image])
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.to_ascii_lowercase().contains("no such") => Ok(false),
            Err(err) if err.contains("image not known") => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The ids of the containers (running or not) carrying every label of `labels`.
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, String> {
        let filters: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("label={key}={value}"))
            .collect();
        let mut args = vec!["ps", "-a", "--no-trunc", "--format", "{{.ID}}"];
        for filter in &filters {
            args.extend(["--filter", filter]);
        }
        Ok(self
            .output(&args)
            .await?
            .lines()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The container `id` as the runtime sees it, `None` if it does not exist.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, String> {
        let text = match self.output(&["container", "inspect", id]).await {
            Ok(text) => text,
            Err(err) if is_missing(&err) => return Ok(None),
            Err(err) => return Err(err),
        };
        let parsed: Value = serde_json::from_str(&text).map_err(|err| {
            format!(
                "{} inspect answered something else than JSON: {err}",
                self.name()
            )
        })?;
        Ok(parsed
            .as_array()
            .and_then(|all| all.first())
            .map(ContainerInfo::from_inspect))
    }

    /// Removes container `id` whatever its state; a container already gone is no error.
    async fn remove(&self, id: &str) -> Result<(), String> {
        // Podman's `rm -f` waits 10 s for the container to stop on SIGTERM first.
        let args: &[&str] = if self.podman {
            &["rm", "-f", "--time=0", id]
        } else {
            &["rm", "-f", id]
        };
        match self.output(args).await {
            Ok(_) => Ok(()),
            Err(err) if is_missing(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The last lines container `id` wrote (stdout and stderr), oldest first.
    async fn log_tail(&self, id: &str) -> Vec<String> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(["logs", "--tail", &LOG_LINES_QUOTED.to_string(), id])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&output.stderr).lines())
                .filter(|line| !line.trim().is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// What `inspect` says about a container.
#[derive(Debug, Clone, PartialEq)]
struct ContainerInfo {
    id: String,
    /// `running`, `exited`, `created`, ...
    status: String,
    exit_code: i64,
    /// The image's own health check, when it has one: `healthy`, `unhealthy`, `starting`.
    health: Option<String>,
    labels: BTreeMap<String, String>,
    /// Published ports: `"8080/tcp"` → host port.
    ports: BTreeMap<String, u16>,
}

impl ContainerInfo {
    fn from_inspect(value: &Value) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let state = &value["State"];
        let labels = value["Config"]["Labels"]
            .as_object()
            .map(|labels| labels.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default();
        let ports = value["NetworkSettings"]["Ports"]
            .as_object()
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|(port, bindings)| {
                        let host = bindings.as_array()?.iter().find_map(|b| {
                            b["HostPort"].as_str().and_then(|p| p.parse::<u16>().ok())
                        })?;
                        Some((port.clone(), host))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: text(&value["Id"]),
            status: text(&state["Status"]),
            exit_code: state["ExitCode"].as_i64().unwrap_or_default(),
            health: state["Health"]["Status"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            labels,
            ports,
        }
    }

    /// Why this container cannot serve its worker, if it cannot.
    fn drift(&self) -> Option<String> {
        if self.status != "running" {
            return Some(format!(
                "the container is {} (exit code {})",
                self.status, self.exit_code
            ));
        }
        if self.health.as_deref() == Some("unhealthy") {
            return Some("the container's own health check says unhealthy".to_owned());
        }
        None
    }
}

/// A runtime error that means the container does not exist.
fn is_missing(err: &str) -> bool {
    let lower = err.to_ascii_lowercase();
    lower.contains("no such") || lower.contains("no container with")
}

/// `text` on one line: its lines joined with ` | `, bounded.
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    joined.chars().take(500).collect()
}

/// This process's descriptor limit as `soft:hard`.
fn descriptor_limit() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return "1024:1024".to_owned();
    }
    format!("{}:{}", limit.rlim_cur, limit.rlim_max)
}

/// The first executable file called `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The first 12 hex digits of the SHA-256 of `text`: short enough for a container name.
fn short_hash(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// How many servers of one home may share a database and a container engine at once.
const MAX_SCOPE_SLOTS: usize = 64;

/// The containers of one server: the value of its [`SCOPE_LABEL`], and the claim on it.
///
/// Several servers may use one database (PostgreSQL) and one engine; each must reconcile and
/// remove only the containers it made, or they remove each other's as orphans. So the scope is
/// the database *and* an id of this server, kept in a file of its data directory
/// ([`ServerConfig::data_dir`](crate::ServerConfig::data_dir),
/// `containers-<database hash>-<slot>.id`) that it holds locked while it runs: a restarted
/// server claims the same slot again (same id, so it adopts its containers), and a second
/// server of the same directory, finding the first slot locked, takes the next with an id of
/// its own. Servers with different data directories have different ids.
#[derive(Debug)]
pub struct Scope {
    label: String,
    /// Held locked for the life of the server (the lock goes with the file).
    _claim: std::fs::File,
}

impl Scope {
    /// Claims the first slot in directory `home` that no running server of database `database` (as the
    /// configuration shows it) holds, creating its id on first use. The error is one line.
    pub fn claim(home: &std::path::Path, database: &str) -> Result<Self, String> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(home)
            .map_err(|err| format!("cannot create {}: {err}", home.display()))?;
        let database_hash = short_hash(database);
        for slot in 1..=MAX_SCOPE_SLOTS {
            let path = home.join(format!("containers-{database_hash}-{slot}.id"));
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                // Another server of this home and database runs with this slot.
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(format!("cannot lock {}: {err}", path.display()));
                }
            }
            let mut id = String::new();
            file.read_to_string(&mut id)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let mut id = id.trim().to_owned();
            if id.is_empty() {
                id = uuid::Uuid::new_v4().to_string();
                file.write_all(format!("{id}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
            }
            return Ok(Self {
                label: short_hash(&format!("{database}\n{id}")),
                _claim: file,
            });
        }
        Err(format!(
            "{MAX_SCOPE_SLOTS} servers of {} already run on this database",
            home.display()
        ))
    }

    /// The value of [`SCOPE_LABEL`] on this server's containers.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// What a node shares with the workers' owner.
struct Context {
    cli: ContainerCli,
    /// This server's [`SCOPE_LABEL`] value.
    scope: String,
    /// Held so that no other server of this home claims the same scope while this one runs.
    _claim: Scope,
    trace: Arc<TraceLog>,
    clock: Clock,
    http: reqwest::Client,
}

impl Context {
    /// One `/logs` entry (action `reconcile`) and one count of a repair.
    fn reconciled(&self, worker: &str, outcome: LogOutcome, detail: Value) {
        let mut record = entry("reconcile", outcome, self.clock.now_ms());
        record.worker = Some(worker.to_owned());
        record.detail = Some(detail);
        self.trace.record(record);
        self.trace.metrics().containers_reconciled.inc(worker);
    }

    /// Removes every container of worker `name` in this scope but `keep`.
    async fn remove_containers_of(
        &self,
        name: &str,
        keep: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let ids = self
            .cli
            .list(&[(SCOPE_LABEL, &self.scope), (WORKER_LABEL, name)])
            .await?;
        let mut removed = Vec::new();
        for id in ids {
            if keep.is_some_and(|keep| keep == id) {
                continue;
            }
            self.cli.remove(&id).await?;
            removed.push(id);
        }
        Ok(removed)
    }
}

/// Where a ready container answers.
#[derive(Debug, Clone)]
struct Ready {
    id: String,
    address: String,
}

/// One container worker under supervision; each instance is one container.
struct ContainerNode {
    context: Arc<Context>,
    worker: Arc<Worker>,
    /// Rung by reconciliation: compare the container with the runtime's view now.
    check: Notify,
    /// True until the first instance: it may adopt a container left by an earlier run.
    may_adopt: AtomicBool,
    ready: Mutex<Option<Ready>>,
    /// Why the last instance ended, for the entry of the next creation.
    last_drift: Mutex<Option<String>>,
}

impl ContainerNode {
    fn name(&self) -> &str {
        &self.worker.spec.name
    }

    fn ready(&self) -> Option<Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_ready(&self, ready: Option<Ready>) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = ready;
    }

    fn failure(&self, status: String, tail: Vec<String>) -> NodeFailure {
        let redactor = self.context.trace.redactor();
        let mut failure = NodeFailure::new(redactor.redact(&status).into_owned());
        failure.stderr_tail = tail
            .iter()
            .map(|line| redactor.redact(line).into_owned())
            .collect();
        *self.last_drift.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure.status.clone());
        failure
    }

    /// A container of this worker at this revision that a previous run left running.
    async fn adoptable(&self) -> Result<Option<ContainerInfo>, String> {
        let revision = self.worker.revision.to_string();
        let ids = self
            .context
            .cli
            .list(&[
                (SCOPE_LABEL, &self.context.scope),
                (WORKER_LABEL, self.name()),
                (REVISION_LABEL, &revision),
            ])
            .await?;
        for id in ids {
            if let Some(info) = self.context.cli.inspect(&id).await?
                && info.drift().is_none()
            {
                return Ok(Some(info));
            }
        }
        Ok(None)
    }

    /// Creates this revision's container, first removing any other of the worker's. Nothing is
    /// left behind when it fails.
    async fn create(&self) -> Result<(ContainerInfo, usize), NodeFailure> {
        let context = &self.context;
        let spec = &self.worker.spec;
        let (Some(image), Some(port)) = (&spec.image, spec.port) else {
            return Err(self.failure(
                "the container worker has no image or port".to_owned(),
                Vec::new(),
            ));
        };
        let replaced = context
            .remove_containers_of(self.name(), None)
            .await
            .map_err(|err| {
                self.failure(
                    format!("removing the old container failed: {err}"),
                    Vec::new(),
                )
            })?;
        let env_file = self
            .env_file()
            .map_err(|err| self.failure(err, Vec::new()))?;
        let container_name = format!("mechanics-{}-{}", context.scope, self.name());
        let labels = [
            format!("{SCOPE_LABEL}={}", context.scope),
            format!("{WORKER_LABEL}={}", self.name()),
            format!("{REVISION_LABEL}={}", self.worker.revision),
        ];
        let publish = format!("127.0.0.1::{port}");
        let env_path = env_file.path().to_string_lossy().into_owned();
        let pull = format!("--pull={}", spec.pull_policy().as_str());
        let mut args: Vec<&str> = vec!["run", "-d", "--name", &container_name];
        for label in &labels {
            args.extend(["--label", label]);
        }
        args.extend(["-p", &publish, "--env-file", &env_path, &pull]);
        let memory;
        let cpus;
        if let Some(resources) = &spec.resources {
            if let Some(mb) = resources.memory_mb {
                memory = format!("--memory={mb}m");
                args.push(&memory);
            }
            if let Some(count) = resources.cpus {
                cpus = format!("--cpus={count}");
                args.push(&cpus);
            }
        }
        let nofile;
        if context.cli.podman {
            // Podman asks the OCI runtime for limits of its own choosing, which runc may not be
            // allowed to set (it refuses the whole container then): explicit values it can set
            // always apply, this server's own descriptor limit and a fixed process budget.
            nofile = format!("nofile={}", descriptor_limit());
            args.extend(["--ulimit", &nofile, "--ulimit", "nproc=4096:4096"]);
        }
        args.push(image);
        let created = context.cli.output(&args).await;
        drop(env_file);
        let id = match created {
            Ok(id) => id,
            Err(err) => {
                // A refused start can leave the created container behind.
                let _ = context.cli.remove(&container_name).await;
                return Err(self.failure(
                    format!("{} run refused the container: {err}", context.cli.name()),
                    Vec::new(),
                ));
            }
        };
        match context.cli.inspect(&id).await {
            Ok(Some(info)) => Ok((info, replaced.len())),
            Ok(None) => Err(self.failure(
                "the container vanished right after it was created".to_owned(),
                Vec::new(),
            )),
            Err(err) => Err(self.failure(err, Vec::new())),
        }
    }

    /// The worker's environment as a private `NAME=value` file, `${env:NAME}` resolved (the
    /// referenced values are registered with the redactor when the node is built).
    fn env_file(&self) -> Result<tempfile::NamedTempFile, String> {
        // Created with mode 0600 in the temporary directory: only this user reads it, and it
        // is deleted as soon as the container exists.
        let mut file = tempfile::Builder::new()
            .prefix("mechanics-env-")
            .tempfile()
            .map_err(|err| format!("cannot write the container's env file: {err}"))?;
        for (name, value) in self.worker.spec.env.iter().flatten() {
            let resolved = match crate::dispatch::resolve_env_refs(&Value::String(value.clone()))? {
                Value::String(resolved) => resolved,
                _ => unreachable!("a string resolves to a string"),
            };
            if resolved.contains(['\n', '\r', '\0']) {
                return Err(format!(
                    "env.{name}: the value of its `${{env:...}}` reference is not one line"
                ));
            }
            writeln!(file, "{name}={resolved}")
                .map_err(|err| format!("cannot write the container's env file: {err}"))?;
        }
        file.flush()
            .map_err(|err| format!("cannot write the container's env file: {err}"))?;
        Ok(file)
    }

    /// Waits until the container answers HTTP on its published port (any status: it listens),
    /// or fails when it exits, is gone, or does not answer within [`READY_TIMEOUT`].
    async fn wait_ready(
        &self,
        info: &ContainerInfo,
        shutdown: &ShutdownSignal,
    ) -> Result<Option<Ready>, NodeFailure> {
        let spec = &self.worker.spec;
        let key = format!("{}/tcp", spec.port.unwrap_or_default());
        let Some(host_port) = info.ports.get(&key) else {
            // An exited container has no published ports any more: say why it exited.
            let drift = match self.context.cli.inspect(&info.id).await {
                Ok(Some(now)) => now.drift(),
                Ok(None) => Some("the container is gone".to_owned()),
                Err(err) => Some(err),
            };
            let tail = self.context.cli.log_tail(&info.id).await;
            return Err(match drift {
                Some(drift) => self.failure(format!("it did not start: {drift}"), tail),
                None => self.failure(format!("the container's port {key} is not published"), tail),
            });
        };
        let address = format!("127.0.0.1:{host_port}");
        let path = spec.health.as_ref().map_or("/", |h| h.path.as_str());
        let url = format!("http://{address}{path}");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let asked = self
                .context
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if asked.is_ok() {
                return Ok(Some(Ready {
                    id: info.id.clone(),
                    address,
                }));
            }
            match self.context.cli.inspect(&info.id).await {
                Ok(Some(now)) => {
                    if let Some(drift) = now.drift() {
                        let tail = self.context.cli.log_tail(&info.id).await;
                        return Err(self.failure(format!("it did not start: {drift}"), tail));
                    }
                }
                Ok(None) => {
                    return Err(self.failure("the container is gone".to_owned(), Vec::new()));
                }
                Err(err) => return Err(self.failure(err, Vec::new())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.failure(
                    format!("the container did not answer on {address} within {READY_TIMEOUT:?}"),
                    Vec::new(),
                ));
            }
            tokio::select! {
                () = shutdown.requested() => return Ok(None),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

impl NodeRunner for ContainerNode {
    async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure> {
        let first = self.may_adopt.swap(false, Ordering::SeqCst);
        let adopted = if first {
            self.adoptable()
                .await
                .map_err(|err| self.failure(err, Vec::new()))?
        } else {
            None
        };
        let info = match adopted {
            Some(info) => {
                self.context.reconciled(
                    self.name(),
                    LogOutcome::Ok,
                    json!({ "step": "adopted", "container": short_id(&info.id), "revision": self.worker.revision }),
                );
                info
            }
            None => {
                let (info, replaced) = self.create().await?;
                let why = self
                    .last_drift
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .or_else(|| {
                        (replaced > 0).then(|| {
                            "replaced the container of another revision, or one that had ended"
                                .to_owned()
                        })
                    });
                self.context.reconciled(
                    self.name(),
                    LogOutcome::Ok,
                    json!({
                        "step": if first && why.is_none() { "created" } else { "recreated" },
                        "container": short_id(&info.id),
                        "revision": self.worker.revision,
                        "reason": why,
                    }),
                );
                info
            }
        };
        let Some(ready) = self.wait_ready(&info, &shutdown).await? else {
            return Ok(());
        };
        let id = ready.id.clone();
        self.set_ready(Some(ready));
        let ended = loop {
            tokio::select! {
                // Shutdown or a stop: the container keeps running (the owner removes it when
                // the worker is gone).
                () = shutdown.requested() => break Ok(()),
                () = self.check.notified() => {}
            }
            match self.context.cli.inspect(&id).await {
                Ok(None) => {
                    break Err(self.failure(
                        "the container is gone (removed behind the server's back)".to_owned(),
                        Vec::new(),
                    ));
                }
                Ok(Some(info)) => {
                    if let Some(drift) = info.drift() {
                        let tail = self.context.cli.log_tail(&id).await;
                        break Err(self.failure(drift, tail));
                    }
                }
                // The runtime did not answer: that says nothing about the container.
                Err(err) => {
                    tracing::warn!(worker = %self.name(), error = %err, "cannot inspect the container")
                }
            }
        };
        self.set_ready(None);
        if let Err(failure) = &ended {
            self.context.reconciled(
                self.name(),
                LogOutcome::Retry,
                json!({ "step": "drift", "container": short_id(&id), "reason": failure.status }),
            );
        }
        ended
    }

    async fn health_check(&self) -> HealthStatus {
        let (Some(health), Some(ready)) = (&self.worker.spec.health, self.ready()) else {
            return HealthStatus::Unknown;
        };
        let url = format!("http://{}{}", ready.address, health.path);
        match self.context.http.get(&url).send().await {
            Ok(answer) if answer.status().is_success() => HealthStatus::Healthy,
            Ok(answer) => {
                HealthStatus::Unhealthy(format!("GET {} answered {}", health.path, answer.status()))
            }
            Err(err) => HealthStatus::Unhealthy(format!("GET {} failed: {err}", health.path)),
        }
    }
}

/// The 12-character id people see in `docker ps`.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The container workers of this server.
pub struct ContainerWorkers {
    supervisor: Supervisor,
    /// The runtime's CLI, or why there is none.
    cli: Result<ContainerCli, String>,
    context: Option<Arc<Context>>,
    nodes: Mutex<HashMap<String, Arc<ContainerNode>>>,
}

impl std::fmt::Debug for ContainerWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerWorkers").finish_non_exhaustive()
    }
}

impl ContainerWorkers {
    /// Container workers run by the runtime's CLI under `supervisor`, labelled with this
    /// server's [`Scope`]; or refused with why there is no CLI or no scope.
    pub(crate) fn new(
        supervisor: Supervisor,
        runtime: Result<(ContainerCli, Scope), String>,
        trace: Arc<TraceLog>,
        clock: Clock,
    ) -> Self {
        let (cli, context) = match runtime {
            Err(why) => (Err(why), None),
            Ok((cli, scope)) => (Ok(cli.clone()), Some((cli, scope))),
        };
        let context = context.map(|(cli, scope)| {
            Arc::new(Context {
                cli,
                scope: scope.label().to_owned(),
                _claim: scope,
                trace,
                clock,
                http: reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
            })
        });
        Self {
            supervisor,
            cli,
            context,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ContainerNode>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any container worker is supervised (the periodic reconciliation has work).
    pub(crate) fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Refuses a container worker this server cannot run: no runtime, or an image that is not
    /// on the machine while the worker may not pull it. The error names the field.
    pub async fn check(&self, image: &str, may_pull: bool) -> Result<(), (&'static str, String)> {
        let cli = self.cli.as_ref().map_err(|why| {
            (
                "kind",
                format!("container workers need docker or podman: {why}"),
            )
        })?;
        if may_pull {
            return Ok(());
        }
        match cli.has_image(image).await {
            Ok(true) => Ok(()),
            Ok(false) => Err((
                "image",
                format!(
                    "{image:?} is not on this machine and the worker may not pull it (pull: never); \
                     build or load it first"
                ),
            )),
            Err(err) => Err((
                "image",
                format!("{} cannot inspect {image:?}: {err}", cli.name()),
            )),
        }
    }

    /// The base URL of container worker `name` while its container is ready; otherwise why it
    /// cannot take a task.
    pub fn target(&self, name: &str) -> Result<String, String> {
        let node = self.lock().get(name).cloned();
        let Some(node) = node else {
            return Err(match &self.cli {
                Err(why) => format!("the container worker cannot run: {why}"),
                Ok(_) => "the container worker is not running".to_owned(),
            });
        };
        if let Some(ready) = node.ready() {
            return Ok(format!("http://{}", ready.address));
        }
        let mut message = "the container worker is not ready".to_owned();
        if let Some(snapshot) = self.supervisor.snapshot(name) {
            message = format!(
                "the container worker is not ready ({}",
                snapshot.state.as_str()
            );
            if snapshot.state == NodeState::Tripped {
                message.push_str(": its container keeps dying, recreation is paused");
            }
            message.push(')');
            if let Some(exit) = snapshot.last_exit {
                message.push_str(&format!("; its container last ended: {}", exit.status));
                if !exit.stderr_tail.is_empty() {
                    message.push_str(&format!(
                        "; its last log lines: {}",
                        exit.stderr_tail.join(" | ")
                    ));
                }
            }
        }
        Err(message)
    }

    /// Makes the containers match `workers`: starts nodes for new container workers and new
    /// revisions, stops the others and removes their containers, asks every node to check its
    /// container, and removes orphans of this scope.
    pub async fn reconcile(&self, workers: &[Arc<Worker>]) {
        let Some(context) = &self.context else { return };
        self.retire(workers).await;
        let wanted = wanted(workers);
        for (name, worker) in &wanted {
            if self.lock().contains_key(*name) {
                continue;
            }
            // Its secrets are known to the redactor from now on, an adopted container's too:
            // each referenced variable's value on its own, not only whole env values.
            if let Some(env) = &worker.spec.env {
                context.trace.redactor().add_env_refs(&json!(env));
            }
            let node = Arc::new(ContainerNode {
                context: context.clone(),
                worker: Arc::clone(worker),
                check: Notify::new(),
                may_adopt: AtomicBool::new(true),
                ready: Mutex::new(None),
                last_drift: Mutex::new(None),
            });
            let added = match &worker.spec.health {
                Some(health) => self.supervisor.add_with_health_interval(
                    name,
                    SharedNode(node.clone()),
                    policy(worker),
                    health.interval.0,
                ),
                None => {
                    self.supervisor
                        .add_with_policy(name, SharedNode(node.clone()), policy(worker))
                }
            };
            match added {
                Ok(()) => {
                    self.lock().insert((*name).to_owned(), node);
                }
                Err(err) => {
                    tracing::error!(worker = %name, error = %err, "cannot supervise the container worker")
                }
            }
        }
        for node in self.lock().values() {
            node.check.notify_one();
        }
        match context.cli.list(&[(SCOPE_LABEL, &context.scope)]).await {
            Ok(ids) => {
                for id in ids {
                    let Ok(Some(info)) = context.cli.inspect(&id).await else {
                        continue;
                    };
                    let worker = info.labels.get(WORKER_LABEL).cloned().unwrap_or_default();
                    if wanted.contains_key(worker.as_str()) {
                        continue;
                    }
                    match context.cli.remove(&id).await {
                        Ok(()) => context.reconciled(&worker, LogOutcome::Ok, json!({ "step": "orphan_removed", "container": short_id(&id), "reason": "no container worker of that name" })),
                        Err(err) => tracing::error!(container = %id, error = %err, "removing an orphan container failed"),
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot list the containers"),
        }
    }

    /// Stops the nodes no container worker of `workers` at its current revision wants, and
    /// removes the containers of the workers that are gone (or are now of another kind); a new
    /// revision's node replaces its container itself. Process and container workers share the
    /// supervisor's names, so both owners retire before either starts (see `reconcile_loop`).
    pub async fn retire(&self, workers: &[Arc<Worker>]) {
        let Some(context) = &self.context else { return };
        let wanted = wanted(workers);
        let stale: Vec<(String, bool)> = self
            .lock()
            .iter()
            .filter_map(|(name, node)| match wanted.get(name.as_str()) {
                None => Some((name.clone(), true)),
                Some(w) if w.revision != node.worker.revision => Some((name.clone(), false)),
                Some(_) => None,
            })
            .collect();
        for (name, removed) in stale {
            self.lock().remove(&name);
            if let Err(err) = self.supervisor.stop(&name).await {
                tracing::warn!(worker = %name, error = %err, "stopping a container worker failed");
            }
            // A new revision's node replaces the container itself (and says so).
            if removed {
                match context.remove_containers_of(&name, None).await {
                    Ok(ids) => {
                        for id in ids {
                            context.reconciled(&name, LogOutcome::Ok, json!({ "step": "removed", "container": short_id(&id), "reason": "the worker was removed" }));
                        }
                    }
                    Err(err) => {
                        tracing::error!(worker = %name, error = %err, "removing a container failed")
                    }
                }
            }
        }
    }

    /// The container workers, for `GET /nodes`.
    pub fn views(&self) -> Vec<NodeView> {
        let nodes: Vec<Arc<ContainerNode>> = self.lock().values().cloned().collect();
        nodes
            .into_iter()
            .filter_map(|node| {
                let s = self.supervisor.snapshot(node.name())?;
                let ready = node.ready();
                Some(NodeView {
                    address: ready.as_ref().map(|r| r.address.clone()),
                    state: s.state.as_str().to_owned(),
                    breaker: s.breaker.as_str().to_owned(),
                    in_flight: 0,
                    jobs: 0,
                    starts: s.starts,
                    deaths: s.deaths,
                    restarts: s.restarts,
                    last_exit: s.last_exit.map(|e| e.status),
                    resource_exhaustion: None,
                    kind: NodeKind::Container,
                    url: None,
                    capacity: None,
                    p50_ms: None,
                    last_error: None,
                    image: node.worker.spec.image.clone(),
                    container_id: ready.map(|r| short_id(&r.id)),
                    name: s.name,
                })
            })
            .collect()
    }

    /// Re-arms the breaker of container worker `name`; `false` if there is none.
    pub fn reset(&self, name: &str) -> bool {
        self.lock().contains_key(name) && self.supervisor.reset_breaker(name).is_ok()
    }
}

/// The container workers of `workers`, by name.
fn wanted(workers: &[Arc<Worker>]) -> HashMap<&str, &Arc<Worker>> {
    workers
        .iter()
        .filter(|w| w.spec.kind == WorkerKind::Container)
        .map(|w| (w.spec.name.as_str(), w))
        .collect()
}

/// The supervisor owns its runner; the workers' owner keeps the same node to read its state.
struct SharedNode(Arc<ContainerNode>);

impl NodeRunner for SharedNode {
    async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure> {
        self.0.run(shutdown).await
    }

    async fn health_check(&self) -> HealthStatus {
        self.0.health_check().await
    }
}

/// The worker's `restart`, as for process workers.
fn policy(worker: &Worker) -> RestartPolicy {
    match &worker.spec.restart {
        None => RestartPolicy::default(),
        Some(restart) => match restart.policy {
            RestartPolicyName::Never => RestartPolicy::Never,
            RestartPolicyName::Always => RestartPolicy::Always {
                delay: Duration::from_millis(restart.initial_backoff_ms),
            },
            RestartPolicyName::OnFailure => RestartPolicy::OnFailure(ExponentialBackoff::new(
                Duration::from_millis(restart.initial_backoff_ms),
                Duration::from_millis(restart.max_backoff_ms),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_kept_across_restarts_and_differs_between_servers_and_databases() {
        let home = tempfile::tempdir().unwrap();
        let other_home = tempfile::tempdir().unwrap();
        let first = Scope::claim(home.path(), "postgres://db/a").unwrap();
        let label = first.label().to_owned();
        assert_eq!(label.len(), 12);
        // A second server of the same home and database while the first runs: its own scope.
        let second = Scope::claim(home.path(), "postgres://db/a").unwrap();
        assert_ne!(second.label(), label);
        // One of another home, or of another database: their own too.
        let elsewhere = Scope::claim(other_home.path(), "postgres://db/a").unwrap();
        assert_ne!(elsewhere.label(), label);
        assert_ne!(elsewhere.label(), second.label());
        let other_db = Scope::claim(home.path(), "postgres://db/b").unwrap();
        assert_ne!(other_db.label(), label);
        // The first stopped and started again: the same scope, so it adopts its containers.
        drop(first);
        assert_eq!(
            Scope::claim(home.path(), "postgres://db/a")
                .unwrap()
                .label(),
            label
        );
    }

    #[test]
    fn inspect_output_gives_state_labels_and_the_published_port() {
        let info = ContainerInfo::from_inspect(&json!({
            "Id": "abc",
            "State": { "Status": "exited", "ExitCode": 3 },
            "Config": { "Labels": { "mechanics.worker": "w" } },
            "NetworkSettings": { "Ports": { "8080/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "49153" }] } }
        }));
        assert_eq!(info.ports.get("8080/tcp"), Some(&49153));
        assert_eq!(
            info.labels.get("mechanics.worker").map(String::as_str),
            Some("w")
        );
        assert_eq!(
            info.drift().as_deref(),
            Some("the container is exited (exit code 3)")
        );
    }

    #[test]
    fn runtime_errors_are_one_line() {
        assert_eq!(one_line("Error: a\n\n  b \n"), "Error: a | b");
    }
}
