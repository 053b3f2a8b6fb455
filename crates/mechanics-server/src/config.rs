//! The server's configuration, from four layers: compiled defaults, then `~/.mechanics/config.yml`,
//! then `MECHANICS_*` environment variables, then command-line flags; each layer overrides the one
//! before it, key by key.
//!
//! Every layer is read in full before anything starts: an unknown key in the file, or a value
//! that does not parse or is out of range in any layer, is an error naming the key and where it
//! came from (`config.yml: concurrency: ...`, `MECHANICS_CONCURRENCY: ...`, `--concurrency: ...`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mechanics_proto::domain::{HumanDuration, RateLimitSpec};
use serde::{Deserialize, Serialize};

/// Checks an API key: non-blank, only visible ASCII characters and inner spaces, no whitespace at
/// its ends. Clients send the key in an HTTP header, which cannot carry control characters or
/// (as text the server can compare) anything outside ASCII, and whose value loses the whitespace
/// at its ends: a key breaking these rules could never be sent, so the server could never be
/// used. The message never repeats the key.
pub fn check_api_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err(format!(
            "the key is blank ({} characters of whitespace): give a key of visible characters, \
             or none at all",
            key.chars().count()
        ));
    }
    if let Some(at) = key.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        return Err(format!(
            "the key has a control or non-ASCII character at byte {at}: an HTTP header cannot \
             carry it; use visible ASCII characters"
        ));
    }
    if key.trim() != key {
        return Err(
            "the key starts or ends with whitespace, which HTTP headers drop: remove it".to_owned(),
        );
    }
    Ok(())
}

/// Reads the API key from the file at `path` with [`crate::files::read_secret`] (a regular file
/// of at most [`crate::files::MAX_SECRET_FILE_BYTES`], its closing line breaks dropped), checked
/// by [`check_api_key`]. The server reads it once at startup; the CLI's `--api-key-file` reads
/// it the same way.
pub fn read_api_key_file(path: &Path) -> Result<String, String> {
    let bytes = crate::files::read_secret(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is empty: write the key into it", path.display()))?;
    let key = String::from_utf8(bytes).map_err(|_| {
        crate::files::ReadFileError::NotText {
            path: path.to_owned(),
        }
        .to_string()
    })?;
    check_api_key(&key).map_err(|message| format!("{}: {message}", path.display()))?;
    Ok(key)
}

/// A YAML parser's error in `text` as one line: its message and position, and the line of
/// `text` it points at, so that the key at fault is named; for a message that names the file
/// once, itself: `{file}: {this}`. (The parser's own rendering adds an excerpt headed by a
/// made-up file name, `<input>`.)
pub fn yaml_message(err: &serde_saphyr::Error, text: &str) -> String {
    let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let message = err.render_with_options(options);
    let line = err
        .location()
        .and_then(|at| usize::try_from(at.line()).ok())
        .and_then(|line| text.lines().nth(line.checked_sub(1)?))
        .map(str::trim)
        .filter(|line| !line.is_empty());
    match line {
        Some(line) => format!("{message}: `{line}`"),
        None => message,
    }
}

/// Where a setting was read from, for error messages and `mechanics config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The compiled default.
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// The environment variable of this name.
    Env(String),
    /// The command-line flag of this name (`--addr`).
    Flag(String),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Default => f.write_str("default"),
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Env(name) => f.write_str(name),
            ConfigSource::Flag(name) => f.write_str(name),
        }
    }
}

/// A configuration that cannot be used; the message names the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape (unknown key, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is out of range or does not parse.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// Where the value came from.
        origin: ConfigSource,
        /// The key, as written in the file.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Multi-line, coloured, for people at a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
    /// One short line per event.
    Compact,
}

/// Which CLI runs container workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntimeChoice {
    /// A running Docker engine if there is one, else Podman, else Docker's CLI.
    Auto,
    /// The `docker` CLI.
    Docker,
    /// The `podman` CLI.
    Podman,
}

impl ContainerRuntimeChoice {
    /// The setting's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// A token bucket's settings: `per_second` tokens refill, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

/// The schemes of a `db` setting that select PostgreSQL; anything else is a SQLite path.
pub const POSTGRES_SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

/// Where the server keeps its state: the `db` setting, typed.
///
/// Its `Display` and `Debug` forms never show a PostgreSQL password (it is replaced by `***`),
/// so the value can go into logs and messages as it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file: one server per file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://USER:PASSWORD@HOST:PORT/DB`): any number of
    /// servers may share the database.
    Postgres(String),
}

impl Database {
    /// The database a `db` setting names: a value starting with one of [`POSTGRES_SCHEMES`] is
    /// a PostgreSQL URL, anything else the path of a SQLite file. Surrounding whitespace is
    /// dropped; a blank value is an error (it would otherwise be a file with no name).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err(
                "is empty: give a SQLite file path or a postgres:// URL, or leave it unset for \
                 ~/.mechanics/mechanics.db"
                    .to_owned(),
            );
        }
        if POSTGRES_SCHEMES.iter().any(|s| value.starts_with(s)) {
            Ok(Self::Postgres(value.to_owned()))
        } else {
            Ok(Self::Sqlite(PathBuf::from(value)))
        }
    }

    /// The password of a PostgreSQL URL, in every form it may take in text: as written and
    /// percent-decoded, from the user part (`USER:PASSWORD@`) and from a `password=` query
    /// parameter. Registered with the trace's redactor, so that it never reaches `/logs` even
    /// if a database message were to quote it. Empty for SQLite and for a URL without one.
    pub fn passwords(&self) -> Vec<String> {
        match self {
            Self::Postgres(url) => mechanics_store::database_url_passwords(url),
            Self::Sqlite(_) => Vec::new(),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&mechanics_store::redact_database_url(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

/// The effective server configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The API key, given directly or read from [`api_key_file`](Self::api_key_file); `None`
    /// means no authentication (loopback only, unless `insecure_no_auth`). Never blank: see
    /// [`check_api_key`].
    pub api_key: Option<String>,
    /// The file the API key was read from at startup, if it came from one.
    pub api_key_file: Option<PathBuf>,
    /// Serve without an API key on a non-loopback address.
    pub insecure_no_auth: bool,
    /// The database: a SQLite file, or a PostgreSQL server shared with other servers.
    pub db: Database,
    /// How long startup keeps trying to reach a PostgreSQL database before giving up.
    pub db_connect_timeout: Duration,
    /// Local executor nodes to launch; 0 for a pure coordinator that sends js jobs only to
    /// remote nodes.
    pub local_nodes: usize,
    /// The in-memory ready queue: claimed tasks waiting for a runner, at most `concurrency` of
    /// them, and the most claimed by one query (at most 64). Tasks wait in the database, which is
    /// the queue; this only lets the dispatcher claim in batches under load.
    pub queue_size: usize,
    /// Tasks dispatched at once.
    pub concurrency: usize,
    /// Default per-worker dispatch bucket (a worker's `rate_limit` overrides it).
    pub worker_rate_limit: RateLimit,
    /// Per-source webhook bucket.
    pub webhook_rate_limit: RateLimit,
    /// How long shutdown waits for tasks in flight.
    pub drain_timeout: Duration,
    /// Log output format.
    pub log_format: LogFormat,
    /// Log filter (`info`, `mechanics_server=debug`); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Connections open at once; `mechanics serve` lowers it to what the descriptor limit
    /// leaves (see [`mechanics_edge::EdgeLimits::within_open_files`]).
    pub max_connections: usize,
    /// How long a client has to send a request's headers.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Webhook body bytes being received at once, over all deliveries; past it a delivery is
    /// answered `503` with `Retry-After` before its body is read.
    pub webhook_body_budget: usize,
    /// How long an http worker (or process worker) has to answer one task; the lease of a
    /// claimed task is twice the slowest worker's limit plus a margin, so this also bounds how
    /// long the tasks of a server that died wait before another server runs them.
    pub http_worker_timeout: Duration,
    /// The CLI that runs container workers, found on `PATH`.
    pub container_runtime: ContainerRuntimeChoice,
    /// How often container workers are compared with the runtime's containers (besides every
    /// registry change): missing, exited or unhealthy containers are recreated, orphans removed.
    pub container_reconcile_interval: Duration,
    /// Host names (`name` or `name:port`) that `/mcp` accepts in the `Host` header besides the
    /// names of `addr`: the public names of a reverse proxy that passes the client's `Host`
    /// through. The `Host` check stops DNS rebinding, so only names that resolve to this server
    /// belong here.
    pub mcp_allowed_hosts: Vec<String>,
    /// Where each setting came from, by key.
    pub sources: BTreeMap<&'static str, ConfigSource>,
}

/// One layer of settings, every key optional. The file is read into it directly; environment
/// variables and flags are put into it by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// For client commands and `mechanics mcp` only (the server ignores it): the URL of the
    /// server they call, when it is not `http://` + `addr` on this machine.
    pub server: Option<String>,
    /// See [`ServerConfig::addr`].
    pub addr: Option<String>,
    /// See [`ServerConfig::api_key`].
    pub api_key: Option<String>,
    /// See [`ServerConfig::api_key_file`]; giving it and `api_key` (in any layers) is an error.
    pub api_key_file: Option<PathBuf>,
    /// See [`ServerConfig::insecure_no_auth`].
    pub insecure_no_auth: Option<bool>,
    /// See [`ServerConfig::db`]: a `postgres://` or `postgresql://` URL, or a SQLite file path.
    pub db: Option<String>,
    /// See [`ServerConfig::db_connect_timeout`] (`30s`).
    pub db_connect_timeout: Option<String>,
    /// See [`ServerConfig::local_nodes`].
    pub local_nodes: Option<usize>,
    /// See [`ServerConfig::queue_size`].
    pub queue_size: Option<usize>,
    /// See [`ServerConfig::concurrency`].
    pub concurrency: Option<usize>,
    /// See [`ServerConfig::worker_rate_limit`].
    pub worker_rate_limit: Option<RateLimit>,
    /// See [`ServerConfig::webhook_rate_limit`].
    pub webhook_rate_limit: Option<RateLimit>,
    /// See [`ServerConfig::drain_timeout`] (`30s`, `10m`).
    pub drain_timeout: Option<String>,
    /// See [`ServerConfig::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`ServerConfig::log_level`].
    pub log_level: Option<String>,
    /// See [`ServerConfig::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`ServerConfig::header_timeout`] (`10s`).
    pub header_timeout: Option<String>,
    /// See [`ServerConfig::idle_timeout`] (`60s`).
    pub idle_timeout: Option<String>,
    /// See [`ServerConfig::webhook_body_budget`], in bytes.
    pub webhook_body_budget: Option<usize>,
    /// See [`ServerConfig::http_worker_timeout`] (`10m`).
    pub http_worker_timeout: Option<String>,
    /// See [`ServerConfig::container_runtime`].
    pub container_runtime: Option<ContainerRuntimeChoice>,
    /// See [`ServerConfig::container_reconcile_interval`] (`60s`).
    pub container_reconcile_interval: Option<String>,
    /// See [`ServerConfig::mcp_allowed_hosts`]: a list in the file, comma-separated in a
    /// variable or flag.
    pub mcp_allowed_hosts: Option<Vec<String>>,
}

/// Environment variables read, and the key each sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("MECHANICS_ADDR", "addr"),
    ("MECHANICS_API_KEY", "api_key"),
    ("MECHANICS_API_KEY_FILE", "api_key_file"),
    ("MECHANICS_INSECURE_NO_AUTH", "insecure_no_auth"),
    ("MECHANICS_DB_PATH", "db"),
    ("MECHANICS_DB_CONNECT_TIMEOUT", "db_connect_timeout"),
    ("MECHANICS_LOCAL_NODES", "local_nodes"),
    ("MECHANICS_QUEUE_SIZE", "queue_size"),
    ("MECHANICS_CONCURRENCY", "concurrency"),
    ("MECHANICS_DRAIN_TIMEOUT", "drain_timeout"),
    ("MECHANICS_LOG_FORMAT", "log_format"),
    ("MECHANICS_LOG_LEVEL", "log_level"),
    ("MECHANICS_MAX_CONNECTIONS", "max_connections"),
    ("MECHANICS_HEADER_TIMEOUT", "header_timeout"),
    ("MECHANICS_IDLE_TIMEOUT", "idle_timeout"),
    ("MECHANICS_WEBHOOK_BODY_BUDGET", "webhook_body_budget"),
    ("MECHANICS_HTTP_WORKER_TIMEOUT", "http_worker_timeout"),
    ("MECHANICS_CONTAINER_RUNTIME", "container_runtime"),
    (
        "MECHANICS_CONTAINER_RECONCILE_INTERVAL",
        "container_reconcile_interval",
    ),
    ("MECHANICS_MCP_ALLOWED_HOSTS", "mcp_allowed_hosts"),
];

impl ConfigLayer {
    /// Reads the YAML file at `path`; a missing file is an empty layer.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: yaml_message(&err, &text),
        })
    }

    /// Reads the `MECHANICS_*` variables of [`ENV_KEYS`] through `get` (`std::env::var` in the
    /// binary, a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut layer = Self::default();
        for (name, key) in ENV_KEYS {
            if let Some(value) = get(name) {
                layer.set(key, &value, ConfigSource::Env((*name).to_owned()))?;
            }
        }
        Ok(layer)
    }

    /// Sets `key` from its text form, as environment variables and flags give it.
    pub fn set(&mut self, key: &str, value: &str, source: ConfigSource) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(
            key: &'static str,
            value: &str,
            source: &ConfigSource,
            expected: &str,
        ) -> Result<T, ConfigError> {
            value.trim().parse().map_err(|_| ConfigError::Invalid {
                origin: source.clone(),
                key,
                message: format!("{value:?} is not {expected}"),
            })
        }
        match key {
            "addr" => self.addr = Some(value.to_owned()),
            "api_key" => self.api_key = Some(value.to_owned()),
            "api_key_file" => self.api_key_file = Some(PathBuf::from(value)),
            "insecure_no_auth" => {
                self.insecure_no_auth = Some(parse_bool("insecure_no_auth", value, &source)?);
            }
            "db" => self.db = Some(value.to_owned()),
            "db_connect_timeout" => self.db_connect_timeout = Some(value.to_owned()),
            "local_nodes" => {
                self.local_nodes = Some(parse("local_nodes", value, &source, "a number")?)
            }
            "queue_size" => {
                self.queue_size = Some(parse("queue_size", value, &source, "a number")?)
            }
            "concurrency" => {
                self.concurrency = Some(parse("concurrency", value, &source, "a number")?);
            }
            "drain_timeout" => self.drain_timeout = Some(value.to_owned()),
            "log_format" => {
                self.log_format = Some(match value.trim() {
                    "pretty" => LogFormat::Pretty,
                    "json" => LogFormat::Json,
                    "compact" => LogFormat::Compact,
                    _ => {
                        return Err(ConfigError::Invalid {
                            origin: source,
                            key: "log_format",
                            message: format!("{value:?} is not one of pretty, json, compact"),
                        });
                    }
                });
            }
            "log_level" => self.log_level = Some(value.to_owned()),
            "max_connections" => {
                self.max_connections = Some(parse("max_connections", value, &source, "a number")?);
            }
            "header_timeout" => self.header_timeout = Some(value.to_owned()),
            "idle_timeout" => self.idle_timeout = Some(value.to_owned()),
            "http_worker_timeout" => self.http_worker_timeout = Some(value.to_owned()),
            "container_runtime" => {
                self.container_runtime = Some(match value.trim() {
                    "auto" => ContainerRuntimeChoice::Auto,
                    "docker" => ContainerRuntimeChoice::Docker,
                    "podman" => ContainerRuntimeChoice::Podman,
                    _ => {
                        return Err(ConfigError::Invalid {
                            origin: source,
                            key: "container_runtime",
                            message: format!("{value:?} is not one of auto, docker, podman"),
                        });
                    }
                });
            }
            "container_reconcile_interval" => {
                self.container_reconcile_interval = Some(value.to_owned());
            }
            "mcp_allowed_hosts" => {
                self.mcp_allowed_hosts = Some(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|host| !host.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "webhook_body_budget" => {
                self.webhook_body_budget = Some(parse(
                    "webhook_body_budget",
                    value,
                    &source,
                    "a number of bytes",
                )?);
            }
            _ => {
                return Err(ConfigError::Invalid {
                    origin: source,
                    key: "config",
                    message: format!("unknown key {key:?}"),
                });
            }
        }
        Ok(())
    }
}

fn parse_bool(key: &'static str, value: &str, source: &ConfigSource) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            origin: source.clone(),
            key,
            message: format!("{value:?} is not a boolean (true or false)"),
        }),
    }
}

/// The default home of Mechanics' files: `~/.mechanics` (or `./.mechanics` without a home).
pub fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".mechanics")
}

impl ServerConfig {
    /// Where this server keeps its own files besides the database: the SQLite file's directory,
    /// or with PostgreSQL (no file of its own) [`default_home`].
    pub fn data_dir(&self) -> PathBuf {
        match &self.db {
            Database::Sqlite(path) => match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            },
            Database::Postgres(_) => default_home(),
        }
    }

    /// The compiled defaults, with the database under `home`.
    pub fn defaults(home: &Path) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let edge = mechanics_edge::EdgeLimits::default();
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 21212)),
            api_key: None,
            api_key_file: None,
            insecure_no_auth: false,
            db: Database::Sqlite(home.join("mechanics.db")),
            db_connect_timeout: Duration::from_secs(30),
            local_nodes: cpus,
            queue_size: 256,
            concurrency: 16,
            worker_rate_limit: RateLimit {
                per_second: 2.0,
                burst: 5,
            },
            webhook_rate_limit: RateLimit {
                per_second: 2.0,
                burst: 5,
            },
            drain_timeout: Duration::from_secs(600),
            log_format: LogFormat::Compact,
            log_level: "info".to_owned(),
            max_connections: edge.max_connections,
            header_timeout: edge.header_timeout,
            idle_timeout: edge.idle_timeout,
            webhook_body_budget: 64 * 1024 * 1024,
            http_worker_timeout: Duration::from_secs(600),
            container_runtime: ContainerRuntimeChoice::Auto,
            container_reconcile_interval: Duration::from_secs(60),
            mcp_allowed_hosts: Vec::new(),
            sources: BTreeMap::new(),
        }
    }

    /// Applies `layers` in order over the defaults (database under `home`) and checks the result.
    pub fn resolve(
        home: &Path,
        layers: impl IntoIterator<Item = (ConfigSource, ConfigLayer)>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::defaults(home);
        for (source, layer) in layers {
            config.apply(&source, layer)?;
        }
        config.check()?;
        config.load_api_key_file()?;
        Ok(config)
    }

    /// Reads `api_key_file` into `api_key`; giving both is an error naming both and where each
    /// came from, since neither could be said to win.
    fn load_api_key_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.api_key_file else {
            return Ok(());
        };
        let invalid = |message| ConfigError::Invalid {
            origin: self.source_of("api_key_file"),
            key: "api_key_file",
            message,
        };
        if self.api_key.is_some() {
            return Err(invalid(format!(
                "api_key (from {}) is set too: give the key one way, api_key or api_key_file",
                self.source_of("api_key")
            )));
        }
        self.api_key = Some(read_api_key_file(path).map_err(invalid)?);
        self.sources
            .insert("api_key", self.source_of("api_key_file"));
        Ok(())
    }

    fn apply(&mut self, source: &ConfigSource, layer: ConfigLayer) -> Result<(), ConfigError> {
        for key in layer.keys_set() {
            self.sources.insert(key, source.clone());
        }
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            origin: source.clone(),
            key,
            message,
        };
        if let Some(addr) = layer.addr {
            self.addr = addr.trim().parse().map_err(|_| {
                invalid(
                    "addr",
                    format!("{addr:?} is not an address: write HOST:PORT, e.g. 127.0.0.1:21212"),
                )
            })?;
        }
        if let Some(key) = layer.api_key {
            // A blank key is refused in `check`, not taken as "no key": an unset secret
            // (`MECHANICS_API_KEY=$UNSET`) must not switch authentication off.
            self.api_key = Some(key);
        }
        if let Some(path) = layer.api_key_file {
            self.api_key_file = Some(path);
        }
        if let Some(v) = layer.insecure_no_auth {
            self.insecure_no_auth = v;
        }
        if let Some(v) = layer.db {
            self.db = Database::parse(&v).map_err(|message| invalid("db", message))?;
        }
        if let Some(text) = layer.db_connect_timeout {
            self.db_connect_timeout = HumanDuration::parse(&text)
                .map_err(|message| invalid("db_connect_timeout", message))?
                .0;
        }
        if let Some(v) = layer.local_nodes {
            self.local_nodes = v;
        }
        if let Some(v) = layer.queue_size {
            self.queue_size = v;
        }
        if let Some(v) = layer.concurrency {
            self.concurrency = v;
        }
        if let Some(v) = layer.worker_rate_limit {
            self.worker_rate_limit = v;
        }
        if let Some(v) = layer.webhook_rate_limit {
            self.webhook_rate_limit = v;
        }
        if let Some(text) = layer.drain_timeout {
            self.drain_timeout = HumanDuration::parse(&text)
                .map_err(|message| invalid("drain_timeout", message))?
                .0;
        }
        if let Some(v) = layer.log_format {
            self.log_format = v;
        }
        if let Some(v) = layer.log_level {
            self.log_level = v;
        }
        if let Some(v) = layer.max_connections {
            self.max_connections = v;
        }
        if let Some(text) = layer.header_timeout {
            self.header_timeout = HumanDuration::parse(&text)
                .map_err(|message| invalid("header_timeout", message))?
                .0;
        }
        if let Some(text) = layer.idle_timeout {
            self.idle_timeout = HumanDuration::parse(&text)
                .map_err(|message| invalid("idle_timeout", message))?
                .0;
        }
        if let Some(v) = layer.webhook_body_budget {
            self.webhook_body_budget = v;
        }
        if let Some(text) = layer.http_worker_timeout {
            self.http_worker_timeout = HumanDuration::parse(&text)
                .map_err(|message| invalid("http_worker_timeout", message))?
                .0;
        }
        if let Some(v) = layer.container_runtime {
            self.container_runtime = v;
        }
        if let Some(text) = layer.container_reconcile_interval {
            let interval = HumanDuration::parse(&text)
                .map_err(|message| invalid("container_reconcile_interval", message))?
                .0;
            if interval < Duration::from_secs(1) {
                return Err(invalid(
                    "container_reconcile_interval",
                    format!("{text:?} is too short: at least 1s"),
                ));
            }
            self.container_reconcile_interval = interval;
        }
        if let Some(hosts) = layer.mcp_allowed_hosts {
            if let Some(bad) = hosts.iter().find(|host| {
                host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/')
            }) {
                return Err(invalid(
                    "mcp_allowed_hosts",
                    format!(
                        "{bad:?} is not a host name: write the name (or name:port) clients \
                         use, e.g. mechanics.example.com"
                    ),
                ));
            }
            self.mcp_allowed_hosts = hosts;
        }
        Ok(())
    }

    /// The limits of the listener's connections.
    pub fn edge_limits(&self) -> mechanics_edge::EdgeLimits {
        mechanics_edge::EdgeLimits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            ..mechanics_edge::EdgeLimits::default()
        }
    }

    /// Where the value of `key` came from.
    pub fn source_of(&self, key: &str) -> ConfigSource {
        self.sources
            .get(key)
            .cloned()
            .unwrap_or(ConfigSource::Default)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            origin: self.source_of(key),
            key,
            message,
        };
        // 0 local nodes makes a pure coordinator: js jobs go to remote nodes only.
        if self.local_nodes > 256 {
            return Err(invalid(
                "local_nodes",
                format!("must be between 0 and 256, got {}", self.local_nodes),
            ));
        }
        for (key, value, max) in [
            ("queue_size", self.queue_size, 1_000_000),
            ("concurrency", self.concurrency, 10_000),
            ("max_connections", self.max_connections, 1_000_000),
        ] {
            if !(1..=max).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between 1 and {max}, got {value}"),
                ));
            }
        }
        for (key, limit) in [
            ("worker_rate_limit", self.worker_rate_limit),
            ("webhook_rate_limit", self.webhook_rate_limit),
        ] {
            // The same range as a worker's own `rate_limit`.
            RateLimitSpec::check_per_second(limit.per_second)
                .map_err(|message| invalid(key, format!("per_second {message}")))?;
            if limit.burst == 0 {
                return Err(invalid(key, "burst must be at least 1, got 0".to_owned()));
            }
        }
        if let Some(api_key) = &self.api_key {
            check_api_key(api_key).map_err(|message| invalid("api_key", message))?;
        }
        let keyed = self.api_key.is_some() || self.api_key_file.is_some();
        if !keyed && !self.addr.ip().is_loopback() && !self.insecure_no_auth {
            return Err(invalid(
                "addr",
                format!(
                    "{} is not a loopback address and no api_key is set: set an API key \
                     (--api-key-file, MECHANICS_API_KEY_FILE or MECHANICS_API_KEY), or pass \
                     --insecure-no-auth to serve \
                     without one",
                    self.addr
                ),
            ));
        }
        if self.db_connect_timeout > Duration::from_secs(3600) {
            return Err(invalid(
                "db_connect_timeout",
                format!(
                    "must be at most 1h, got {}",
                    HumanDuration(self.db_connect_timeout)
                ),
            ));
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("http_worker_timeout", self.http_worker_timeout),
        ] {
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between 1s and 1h, got {}", HumanDuration(value)),
                ));
            }
        }
        // At least one whole delivery must fit, or every webhook would be refused.
        let smallest = crate::webhooks::MAX_WEBHOOK_BYTES;
        if !(smallest..=1 << 40).contains(&self.webhook_body_budget) {
            return Err(invalid(
                "webhook_body_budget",
                format!(
                    "must be between {smallest} bytes (one largest webhook) and 1 TiB, got {}",
                    self.webhook_body_budget
                ),
            ));
        }
        if self.log_level.trim().is_empty() {
            return Err(invalid("log_level", "must not be empty".to_owned()));
        }
        Ok(())
    }

    /// The effective configuration as `key: value  # source` lines, the API key and the
    /// database password redacted.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.shown_values() {
            out.push_str(&format!("{key}: {value}  # {}\n", self.source_of(key)));
        }
        out
    }

    /// [`show`](Self::show) as one JSON object, for scripts: per key `{ "value", "source" }`,
    /// the values as `show` writes them (redacted alike).
    pub fn show_json(&self) -> serde_json::Value {
        let keys = self
            .shown_values()
            .into_iter()
            .map(|(key, value)| {
                let source = self.source_of(key).to_string();
                let entry = serde_json::json!({ "value": value, "source": source });
                (key.to_owned(), entry)
            })
            .collect();
        serde_json::Value::Object(keys)
    }

    /// Each key with its value as shown (the API key and the database password redacted).
    fn shown_values(&self) -> [(&'static str, String); 22] {
        let redacted = self.api_key.as_ref().map(|_| "<redacted>".to_owned());
        let rate = |r: RateLimit| format!("{{ per_second: {}, burst: {} }}", r.per_second, r.burst);
        [
            ("addr", self.addr.to_string()),
            ("api_key", redacted.unwrap_or_else(|| "(none)".to_owned())),
            (
                "api_key_file",
                self.api_key_file
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string()),
            ),
            ("insecure_no_auth", self.insecure_no_auth.to_string()),
            ("db", self.db.to_string()),
            (
                "db_connect_timeout",
                HumanDuration(self.db_connect_timeout).to_string(),
            ),
            ("local_nodes", self.local_nodes.to_string()),
            ("queue_size", self.queue_size.to_string()),
            ("concurrency", self.concurrency.to_string()),
            ("worker_rate_limit", rate(self.worker_rate_limit)),
            ("webhook_rate_limit", rate(self.webhook_rate_limit)),
            (
                "drain_timeout",
                HumanDuration(self.drain_timeout).to_string(),
            ),
            (
                "log_format",
                match self.log_format {
                    LogFormat::Pretty => "pretty",
                    LogFormat::Json => "json",
                    LogFormat::Compact => "compact",
                }
                .to_owned(),
            ),
            ("log_level", self.log_level.clone()),
            ("max_connections", self.max_connections.to_string()),
            (
                "header_timeout",
                HumanDuration(self.header_timeout).to_string(),
            ),
            ("idle_timeout", HumanDuration(self.idle_timeout).to_string()),
            ("webhook_body_budget", self.webhook_body_budget.to_string()),
            (
                "http_worker_timeout",
                HumanDuration(self.http_worker_timeout).to_string(),
            ),
            (
                "container_runtime",
                self.container_runtime.as_str().to_owned(),
            ),
            (
                "container_reconcile_interval",
                HumanDuration(self.container_reconcile_interval).to_string(),
            ),
            (
                "mcp_allowed_hosts",
                if self.mcp_allowed_hosts.is_empty() {
                    "(none)".to_owned()
                } else {
                    self.mcp_allowed_hosts.join(", ")
                },
            ),
        ]
    }
}

impl ConfigLayer {
    /// The keys this layer sets.
    fn keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut note = |set: bool, key| {
            if set {
                keys.push(key);
            }
        };
        note(self.addr.is_some(), "addr");
        note(self.api_key.is_some(), "api_key");
        note(self.api_key_file.is_some(), "api_key_file");
        note(self.insecure_no_auth.is_some(), "insecure_no_auth");
        note(self.db.is_some(), "db");
        note(self.db_connect_timeout.is_some(), "db_connect_timeout");
        note(self.local_nodes.is_some(), "local_nodes");
        note(self.queue_size.is_some(), "queue_size");
        note(self.concurrency.is_some(), "concurrency");
        note(self.worker_rate_limit.is_some(), "worker_rate_limit");
        note(self.webhook_rate_limit.is_some(), "webhook_rate_limit");
        note(self.drain_timeout.is_some(), "drain_timeout");
        note(self.log_format.is_some(), "log_format");
        note(self.log_level.is_some(), "log_level");
        note(self.max_connections.is_some(), "max_connections");
        note(self.header_timeout.is_some(), "header_timeout");
        note(self.idle_timeout.is_some(), "idle_timeout");
        note(self.webhook_body_budget.is_some(), "webhook_body_budget");
        note(self.http_worker_timeout.is_some(), "http_worker_timeout");
        note(self.container_runtime.is_some(), "container_runtime");
        note(
            self.container_reconcile_interval.is_some(),
            "container_reconcile_interval",
        );
        note(self.mcp_allowed_hosts.is_some(), "mcp_allowed_hosts");
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn later_layers_win_key_by_key_and_sources_are_recorded() {
        let (_dir, path) =
            file("addr: 127.0.0.1:3000\nconcurrency: 4\nqueue_size: 10\napi_key: from-file\n");
        let file_layer = ConfigLayer::from_file(&path).unwrap();
        let env_layer = ConfigLayer::from_env(env(&[
            ("MECHANICS_CONCURRENCY", "8"),
            ("MECHANICS_DRAIN_TIMEOUT", "30s"),
        ]))
        .unwrap();
        let mut flags = ConfigLayer::default();
        flags
            .set(
                "concurrency",
                "12",
                ConfigSource::Flag("--concurrency".into()),
            )
            .unwrap();
        let home = Path::new("/home/u/.mechanics");
        let config = ServerConfig::resolve(
            home,
            [
                (ConfigSource::File(path.clone()), file_layer),
                (ConfigSource::Env("MECHANICS_*".into()), env_layer),
                (ConfigSource::Flag("flags".into()), flags),
            ],
        )
        .unwrap();
        assert_eq!(config.addr.to_string(), "127.0.0.1:3000");
        assert_eq!(config.concurrency, 12);
        assert_eq!(config.queue_size, 10);
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.db, Database::Sqlite(home.join("mechanics.db")));
        assert_eq!(config.db_connect_timeout, Duration::from_secs(30));
        assert_eq!(config.source_of("queue_size"), ConfigSource::File(path));
        assert_eq!(
            config.source_of("concurrency"),
            ConfigSource::Flag("flags".into())
        );
        assert_eq!(config.source_of("db"), ConfigSource::Default);
        let shown = config.show();
        assert!(shown.contains("api_key: <redacted>"), "{shown}");
        assert!(!shown.contains("from-file"), "{shown}");
        assert!(shown.contains("concurrency: 12  # flags"), "{shown}");
    }

    #[test]
    fn a_postgres_url_selects_postgresql_and_anything_else_is_a_sqlite_path() {
        let resolve = |layers: Vec<(ConfigSource, ConfigLayer)>| {
            ServerConfig::resolve(Path::new("/h"), layers).map_err(|e| e.to_string())
        };
        for url in [
            "postgres://alice@db.example:5432/mechanics",
            "postgresql://alice@db.example/mechanics",
        ] {
            let config = resolve(vec![flag_layer("db", url)]).unwrap();
            assert_eq!(config.db, Database::Postgres(url.to_owned()), "{url}");
            assert_eq!(config.db.to_string(), url, "nothing to redact");
        }
        for path in [
            "/var/lib/mechanics.db",
            "relative.db",
            "postgres.db",
            "postgres:/one-slash",
            "Postgres://not-the-scheme",
        ] {
            let config = resolve(vec![flag_layer("db", path)]).unwrap();
            assert_eq!(config.db, Database::Sqlite(PathBuf::from(path)), "{path}");
        }
        // The variable and the file name the same setting.
        let layer =
            ConfigLayer::from_env(env(&[("MECHANICS_DB_PATH", "postgresql://u@127.0.0.1/x")]))
                .unwrap();
        let config = resolve(vec![(ConfigSource::Env("MECHANICS_DB_PATH".into()), layer)]).unwrap();
        assert!(matches!(config.db, Database::Postgres(_)));
        assert_eq!(
            config.source_of("db"),
            ConfigSource::Env("MECHANICS_DB_PATH".into())
        );
        let (_dir, path) = file("db: postgres://u@127.0.0.1:5432/x\n");
        let config = resolve(vec![(
            ConfigSource::File(path.clone()),
            ConfigLayer::from_file(&path).unwrap(),
        )])
        .unwrap();
        assert_eq!(
            config.db,
            Database::Postgres("postgres://u@127.0.0.1:5432/x".into())
        );
        let err = resolve(vec![flag_layer("db", " ")]).unwrap_err();
        assert!(err.starts_with("--db: db: is empty"), "{err}");
    }

    #[test]
    fn a_database_password_is_never_shown_and_is_known_to_the_redactor() {
        let url = "postgres://alice:s3cret%21@127.0.0.1:5432/db?sslmode=disable&password=0ther";
        let config = ServerConfig::resolve(Path::new("/h"), [flag_layer("db", url)]).unwrap();
        for shown in [
            config.show(),
            config.db.to_string(),
            format!("{:?}", config.db),
            format!("{config:?}"),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("0ther"), "{shown}");
            assert!(shown.contains("alice"), "{shown}");
        }
        assert!(
            config
                .show()
                .contains("db: postgres://alice:***@127.0.0.1:5432/db")
        );
        assert_eq!(
            config.db.passwords(),
            ["0ther", "s3cret!", "s3cret%21"].map(str::to_owned)
        );
        for none in [
            "postgres://alice@127.0.0.1/db",
            "postgresql://127.0.0.1:5432/db",
            "postgres://alice:@127.0.0.1/db",
        ] {
            assert!(
                Database::Postgres(none.to_owned()).passwords().is_empty(),
                "{none}"
            );
        }
        assert!(
            Database::Sqlite(PathBuf::from("a:b@c"))
                .passwords()
                .is_empty()
        );
        // `%XX` escapes decoded; a `%` not followed by two hex digits stays as it is.
        assert_eq!(
            Database::Postgres("postgres://u:a%2Fb%zz%4@h/d".to_owned()).passwords(),
            ["a%2Fb%zz%4", "a/b%zz%4"].map(str::to_owned)
        );
    }

    #[test]
    fn the_database_connect_timeout_is_a_duration_of_at_most_an_hour() {
        let resolve = |value: &str| {
            ServerConfig::resolve(Path::new("/h"), [flag_layer("db_connect_timeout", value)])
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            resolve("1s").unwrap().db_connect_timeout,
            Duration::from_secs(1)
        );
        assert_eq!(
            resolve("2m30s").unwrap().db_connect_timeout,
            Duration::from_secs(150)
        );
        assert_eq!(resolve("0s").unwrap().db_connect_timeout, Duration::ZERO);
        let shown = resolve("45s").unwrap().show();
        assert!(
            shown.contains("db_connect_timeout: 45s  # --db-connect-timeout"),
            "{shown}"
        );
        assert_eq!(
            resolve("soon").unwrap_err(),
            "--db-connect-timeout: db_connect_timeout: \"soon\" is not a duration: write e.g. \
             500ms, 30s, 30m, 1h30m or 7d"
        );
        assert_eq!(
            resolve("2h").unwrap_err(),
            "--db-connect-timeout: db_connect_timeout: must be at most 1h, got 2h"
        );
        let err = ConfigLayer::from_env(env(&[("MECHANICS_DB_CONNECT_TIMEOUT", "x")]))
            .and_then(|layer| {
                ServerConfig::resolve(
                    Path::new("/h"),
                    [(
                        ConfigSource::Env("MECHANICS_DB_CONNECT_TIMEOUT".into()),
                        layer,
                    )],
                )
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("MECHANICS_DB_CONNECT_TIMEOUT: db_connect_timeout: \"x\""),
            "{err}"
        );
        let (_dir, path) = file("db_connect_timeout: 10s\n");
        let config = ServerConfig::resolve(
            Path::new("/h"),
            [(
                ConfigSource::File(path.clone()),
                ConfigLayer::from_file(&path).unwrap(),
            )],
        )
        .unwrap();
        assert_eq!(config.db_connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_missing_or_empty_file_is_no_settings() {
        let dir = tempfile::tempdir().unwrap();
        let layer = ConfigLayer::from_file(&dir.path().join("absent.yml")).unwrap();
        assert!(layer.keys_set().is_empty());
        let (_dir, path) = file("  \n");
        assert!(ConfigLayer::from_file(&path).unwrap().keys_set().is_empty());
    }

    #[test]
    fn bad_input_names_the_key_and_where_it_came_from() {
        let (_dir, path) = file("concurrency: 4\nconcurency: 5\n");
        let err = ConfigLayer::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("concurency") && err.contains("config.yml"),
            "{err}"
        );
        let (_dir, path) = file("concurrency: lots\n");
        let err = ConfigLayer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("concurrency"), "{err}");
        let err = ConfigLayer::from_env(env(&[("MECHANICS_QUEUE_SIZE", "-1")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "MECHANICS_QUEUE_SIZE: queue_size: \"-1\" is not a number"
        );
        let err = ConfigLayer::from_env(env(&[("MECHANICS_DRAIN_TIMEOUT", "soon")]))
            .and_then(|layer| {
                ServerConfig::resolve(
                    Path::new("/h"),
                    [(ConfigSource::Env("MECHANICS_DRAIN_TIMEOUT".into()), layer)],
                )
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("MECHANICS_DRAIN_TIMEOUT: drain_timeout: \"soon\" is not a duration"),
            "{err}"
        );
        let mut flags = ConfigLayer::default();
        flags
            .set(
                "concurrency",
                "0",
                ConfigSource::Flag("--concurrency".into()),
            )
            .unwrap();
        let err = ServerConfig::resolve(
            Path::new("/h"),
            [(ConfigSource::Flag("--concurrency".into()), flags)],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--concurrency: concurrency: must be between 1 and 10000, got 0"
        );
    }

    #[test]
    fn without_a_key_only_loopback_is_served_unless_insecure_no_auth() {
        let layer = |addr: &str, insecure: Option<bool>, key: Option<&str>| ConfigLayer {
            addr: Some(addr.to_owned()),
            insecure_no_auth: insecure,
            api_key: key.map(str::to_owned),
            ..ConfigLayer::default()
        };
        let resolve = |l: ConfigLayer| {
            ServerConfig::resolve(Path::new("/h"), [(ConfigSource::Flag("flags".into()), l)])
        };
        let err = resolve(layer("0.0.0.0:21212", None, None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a loopback address and no api_key is set"),
            "{err}"
        );
        assert!(resolve(layer("[::1]:21212", None, None)).is_ok());
        assert!(resolve(layer("0.0.0.0:21212", Some(true), None)).is_ok());
        assert!(resolve(layer("0.0.0.0:21212", None, Some("k"))).is_ok());
        assert!(
            resolve(layer("0.0.0.0:21212", None, Some(""))).is_err(),
            "an empty key is refused"
        );
    }

    fn flag_layer(key: &str, value: &str) -> (ConfigSource, ConfigLayer) {
        let flag = format!("--{}", key.replace('_', "-"));
        let mut layer = ConfigLayer::default();
        layer
            .set(key, value, ConfigSource::Flag(flag.clone()))
            .unwrap();
        (ConfigSource::Flag(flag), layer)
    }

    #[test]
    fn a_blank_or_unsendable_api_key_is_refused_without_repeating_it() {
        // Blank keys are refused on loopback too: an empty value is never "no key", so an unset
        // secret in a deployment cannot switch authentication off.
        for (key, expected) in [
            (
                "",
                "--api-key: api_key: the key is blank (0 characters of whitespace)",
            ),
            (
                "  ",
                "--api-key: api_key: the key is blank (2 characters of whitespace)",
            ),
            ("\t\n", "--api-key: api_key: the key is blank"),
            (
                "k3y\u{0}x",
                "--api-key: api_key: the key has a control or non-ASCII character at byte 3",
            ),
            (
                "k3yé",
                "--api-key: api_key: the key has a control or non-ASCII character at byte 3",
            ),
            (
                " k3y",
                "--api-key: api_key: the key starts or ends with whitespace",
            ),
            (
                "k3y ",
                "--api-key: api_key: the key starts or ends with whitespace",
            ),
        ] {
            let err = ServerConfig::resolve(Path::new("/h"), [flag_layer("api_key", key)])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{key:?}: {err}");
            if !key.trim().is_empty() {
                assert!(!err.contains("k3y"), "the key is never repeated: {err}");
            }
        }
        let (_dir, path) = file("api_key: \"   \"\n");
        let err = ConfigLayer::from_file(&path)
            .and_then(|layer| {
                ServerConfig::resolve(Path::new("/h"), [(ConfigSource::File(path.clone()), layer)])
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: api_key: the key is blank", path.display())),
            "{err}"
        );
        let config = ServerConfig::resolve(
            Path::new("/h"),
            [flag_layer("api_key", "a key with spaces")],
        )
        .unwrap();
        assert_eq!(config.api_key.as_deref(), Some("a key with spaces"));
    }

    #[test]
    fn the_api_key_file_is_read_at_startup_trimmed_bounded_and_exclusive_with_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let resolve = |layers: Vec<(ConfigSource, ConfigLayer)>| {
            ServerConfig::resolve(Path::new("/h"), layers).map_err(|e| e.to_string())
        };
        let from_file =
            |path: &Path| resolve(vec![flag_layer("api_key_file", path.to_str().unwrap())]);

        // One trailing line break (LF or CRLF) is not part of the key; the key is used on a
        // public address, `config show` names the file and redacts the key.
        for (name, bytes) in [
            ("lf", &b"s3cret-key\n"[..]),
            ("crlf", b"s3cret-key\r\n"),
            ("none", b"s3cret-key"),
        ] {
            let path = write(name, bytes);
            let mut layers = vec![flag_layer("addr", "0.0.0.0:21212")];
            layers.push(flag_layer("api_key_file", path.to_str().unwrap()));
            let config = resolve(layers).unwrap();
            assert_eq!(config.api_key.as_deref(), Some("s3cret-key"), "{name}");
            let shown = config.show();
            assert!(
                shown.contains(&format!(
                    "api_key_file: {}  # --api-key-file",
                    path.display()
                )),
                "{shown}"
            );
            assert!(
                shown.contains("api_key: <redacted>  # --api-key-file"),
                "{shown}"
            );
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        // The variable works like the flag.
        let path = write("env", b"from-env\n");
        let layer =
            ConfigLayer::from_env(env(&[("MECHANICS_API_KEY_FILE", path.to_str().unwrap())]))
                .unwrap();
        let config = resolve(vec![(
            ConfigSource::Env("MECHANICS_API_KEY_FILE".into()),
            layer,
        )])
        .unwrap();
        assert_eq!(config.api_key.as_deref(), Some("from-env"));

        let shown = |path: &Path| path.display().to_string();
        let empty = write("empty", b"");
        assert_eq!(
            from_file(&empty).unwrap_err(),
            format!(
                "--api-key-file: api_key_file: {} is empty: write the key into it",
                shown(&empty)
            )
        );
        let newline = write("newline", b"\n");
        assert!(
            from_file(&newline)
                .unwrap_err()
                .ends_with("is empty: write the key into it")
        );
        let blank = write("blank", b"   \n");
        assert!(
            from_file(&blank).unwrap_err().starts_with(&format!(
                "--api-key-file: api_key_file: {}: the key is blank",
                shown(&blank)
            )),
            "{:?}",
            from_file(&blank)
        );
        let padded = write("padded", b"s3cret-key \n");
        let err = from_file(&padded).unwrap_err();
        assert!(
            err.ends_with(
                "the key starts or ends with whitespace, which HTTP headers drop: remove it"
            ),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        let big = write("big", &vec![b'k'; crate::files::MAX_SECRET_FILE_BYTES + 1]);
        assert_eq!(
            from_file(&big).unwrap_err(),
            format!(
                "--api-key-file: api_key_file: {} is larger than the limit of 65536 bytes",
                shown(&big)
            )
        );
        let at_limit = write("at-limit", &vec![b'k'; crate::files::MAX_SECRET_FILE_BYTES]);
        assert_eq!(
            from_file(&at_limit).unwrap().api_key.unwrap().len(),
            crate::files::MAX_SECRET_FILE_BYTES
        );
        let missing = dir.path().join("missing");
        assert!(from_file(&missing).unwrap_err().starts_with(&format!(
            "--api-key-file: api_key_file: cannot read {}",
            shown(&missing)
        )));
        // A FIFO with no writer would block an ordinary open forever.
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let started = std::time::Instant::now();
        assert_eq!(
            from_file(&fifo).unwrap_err(),
            format!(
                "--api-key-file: api_key_file: {} is a FIFO, not a regular file",
                shown(&fifo)
            )
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        // Both ways at once, in any layers, is an error naming both and their sources.
        let key_file = write("key", b"k\n");
        let (_cfg_dir, cfg) = file("api_key: from-file\n");
        let err = resolve(vec![
            (
                ConfigSource::File(cfg.clone()),
                ConfigLayer::from_file(&cfg).unwrap(),
            ),
            flag_layer("api_key_file", key_file.to_str().unwrap()),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            format!(
                "--api-key-file: api_key_file: api_key (from {}) is set too: give the key one \
                 way, api_key or api_key_file",
                cfg.display()
            )
        );
    }

    #[test]
    fn server_rate_limits_have_the_same_range_as_a_workers() {
        for (text, expected) in [
            (
                "worker_rate_limit: { per_second: 1e-300, burst: 1 }\n",
                "worker_rate_limit: per_second must be between 1/3600 (one token per hour, \
                 0.000278) and 1000000 tokens per second, got 1e-300",
            ),
            (
                "webhook_rate_limit: { per_second: .inf, burst: 1 }\n",
                "webhook_rate_limit: per_second must be between 1/3600",
            ),
            (
                "webhook_rate_limit: { per_second: -2, burst: 1 }\n",
                "webhook_rate_limit: per_second must be between 1/3600",
            ),
            (
                "worker_rate_limit: { per_second: 2000000, burst: 1 }\n",
                "worker_rate_limit: per_second must be between 1/3600",
            ),
            (
                "worker_rate_limit: { per_second: 2, burst: 0 }\n",
                "worker_rate_limit: burst must be at least 1, got 0",
            ),
        ] {
            let (_dir, path) = file(text);
            let err = ServerConfig::resolve(
                Path::new("/h"),
                [(
                    ConfigSource::File(path.clone()),
                    ConfigLayer::from_file(&path).unwrap(),
                )],
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with(&format!("{}: {expected}", path.display())),
                "{text}: {err}"
            );
        }
        let (_dir, path) = file("worker_rate_limit: { per_second: 0.000278, burst: 1 }\n");
        let config = ServerConfig::resolve(
            Path::new("/h"),
            [(
                ConfigSource::File(path.clone()),
                ConfigLayer::from_file(&path).unwrap(),
            )],
        )
        .unwrap();
        assert_eq!(config.worker_rate_limit.per_second, 0.000278);
    }

    #[test]
    fn connection_limits_are_read_checked_and_shown() {
        let flags = |pairs: &[(&str, &str)]| {
            let mut layer = ConfigLayer::default();
            for (key, value) in pairs {
                layer
                    .set(key, value, ConfigSource::Flag(format!("--{key}")))
                    .unwrap();
            }
            ServerConfig::resolve(
                Path::new("/h"),
                [(ConfigSource::Flag("flags".into()), layer)],
            )
        };
        let config = flags(&[
            ("max_connections", "300"),
            ("header_timeout", "5s"),
            ("idle_timeout", "2m"),
            ("webhook_body_budget", "10485760"),
        ])
        .unwrap();
        let limits = config.edge_limits();
        assert_eq!(limits.max_connections, 300);
        assert_eq!(limits.header_timeout, Duration::from_secs(5));
        assert_eq!(limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.webhook_body_budget, 10 * 1024 * 1024);
        let shown = config.show();
        assert!(shown.contains("header_timeout: 5s  # flags"), "{shown}");
        assert!(shown.contains("webhook_body_budget: 10485760"), "{shown}");

        let defaults = flags(&[]).unwrap();
        assert_eq!(
            defaults.edge_limits(),
            mechanics_edge::EdgeLimits::default()
        );
        assert_eq!(defaults.webhook_body_budget, 64 * 1024 * 1024);

        for (key, value, message) in [
            ("max_connections", "0", "must be between 1 and 1000000"),
            ("header_timeout", "0s", "must be between 1s and 1h"),
            ("idle_timeout", "2h", "must be between 1s and 1h"),
            ("webhook_body_budget", "1000", "one largest webhook"),
        ] {
            let err = flags(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(message), "{err}");
        }
        let err = flags(&[("header_timeout", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("header_timeout"), "{err}");
    }

    #[test]
    fn the_http_worker_timeout_is_10_minutes_unless_set_and_bounded() {
        let resolve = |layers: Vec<(ConfigSource, ConfigLayer)>| {
            ServerConfig::resolve(Path::new("/h"), layers).map_err(|e| e.to_string())
        };
        let config = resolve(vec![]).unwrap();
        assert_eq!(config.http_worker_timeout, Duration::from_secs(600));
        assert!(
            config
                .show()
                .contains("http_worker_timeout: 10m  # default\n")
        );
        let config = resolve(vec![flag_layer("http_worker_timeout", "2s")]).unwrap();
        assert_eq!(config.http_worker_timeout, Duration::from_secs(2));
        assert!(
            config
                .show()
                .contains("http_worker_timeout: 2s  # --http-worker-timeout\n"),
            "{}",
            config.show()
        );
        let env = ConfigLayer::from_env(env(&[("MECHANICS_HTTP_WORKER_TIMEOUT", "45s")])).unwrap();
        let config = resolve(vec![(ConfigSource::Env("MECHANICS_*".into()), env)]).unwrap();
        assert_eq!(config.http_worker_timeout, Duration::from_secs(45));
        for bad in ["0s", "2h", "soon"] {
            let err = resolve(vec![flag_layer("http_worker_timeout", bad)]).unwrap_err();
            assert!(
                err.starts_with("--http-worker-timeout: http_worker_timeout: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn mcp_allowed_hosts_are_a_list_in_the_file_and_comma_separated_elsewhere() {
        let resolve = |layers: Vec<(ConfigSource, ConfigLayer)>| {
            ServerConfig::resolve(Path::new("/h"), layers).map_err(|e| e.to_string())
        };
        assert!(resolve(vec![]).unwrap().mcp_allowed_hosts.is_empty());
        let (_dir, path) = file("mcp_allowed_hosts: [mechanics.example.com, \"proxy:8443\"]\n");
        let layer = ConfigLayer::from_file(&path).unwrap();
        let config = resolve(vec![(ConfigSource::File(path), layer)]).unwrap();
        assert_eq!(
            config.mcp_allowed_hosts,
            ["mechanics.example.com", "proxy:8443"]
        );
        let env =
            ConfigLayer::from_env(env(&[("MECHANICS_MCP_ALLOWED_HOSTS", "a.example, b")])).unwrap();
        let config = resolve(vec![(ConfigSource::Env("MECHANICS_*".into()), env)]).unwrap();
        assert_eq!(config.mcp_allowed_hosts, ["a.example", "b"]);
        let config = resolve(vec![flag_layer("mcp_allowed_hosts", "c.example")]).unwrap();
        assert!(
            config
                .show()
                .contains("mcp_allowed_hosts: c.example  # --mcp-allowed-hosts\n"),
            "{}",
            config.show()
        );
        let err = resolve(vec![flag_layer("mcp_allowed_hosts", "https://c.example/")]).unwrap_err();
        assert!(
            err.starts_with("--mcp-allowed-hosts: mcp_allowed_hosts: "),
            "{err}"
        );
    }
}
