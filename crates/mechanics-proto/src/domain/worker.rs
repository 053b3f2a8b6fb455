//! The worker spec (`worker.yml`, DESIGN §3) and the stored worker record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    HumanDuration, PolicySpec, SpecError, refuse_control, refuse_nul, validate_env_name,
    validate_http_url, validate_name,
};

/// How a worker runs its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    /// A JavaScript module run on an executor node.
    Js,
    /// An external HTTP service: `POST {url}/task`.
    Http,
    /// A local program the server launches and supervises; it serves the HTTP contract.
    Process,
    /// A container the server runs with Docker or Podman; it serves the HTTP contract on `port`.
    Container,
}

impl WorkerKind {
    /// The kind's name as specs write it (`container`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Js => "js",
            Self::Http => "http",
            Self::Process => "process",
            Self::Container => "container",
        }
    }
}

/// A worker as the user writes it. Unknown fields are errors; [`WorkerSpec::validate`] checks the
/// rules serde cannot express and names the offending field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// `[a-z0-9-]{1,64}`, unique among workers.
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    pub name: String,
    /// How the worker runs.
    pub kind: WorkerKind,
    /// js: the module's path as written; the CLI reads it at add time and the source is stored
    /// in [`Worker::module_source`]. Its extension gives the language: `.ts` and `.mts` are
    /// TypeScript, which the server transpiles at add time ([`Worker::transpiled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// js: a `MechanicsConfig` object (endpoints the script may call); the server validates it
    /// with `mechanics-core`. `${env:NAME}` references stay references here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// js: a `MechanicsExecutionLimits` object, validated by the server with `mechanics-core`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    /// http: the service's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// process: the program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// process and container: how the supervisor restarts the program or recreates the
    /// container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    /// container: the image (`localhost/summarizer:1.4`), as the container runtime names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// container: the HTTP port the container listens on; the server publishes it on
    /// 127.0.0.1 only and sends tasks to `POST /task` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// container: the container's environment. A value may hold `${env:NAME}` references to the
    /// server's environment; the stored spec keeps the reference, and the value reaches the
    /// container through a private file, never the command line or a log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// container: memory and CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// container: an HTTP health check of the container (`GET path` on its port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// container: whether the runtime may pull the image; by default `never` for `localhost/`
    /// images and `missing` for the others ([`WorkerSpec::pull_policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,
    /// What makes tasks for this worker.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// Retry parameters for transport failures (the server applies them).
    #[serde(default)]
    pub retry: RetrySpec,
    /// The worker's dispatch token bucket; without one the server's default bucket applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Whether a `reply` in the result is written back to the event's platform.
    #[serde(default)]
    pub write_back: bool,
    /// Which webhook events may start the worker; the defaults ignore the source's own replies
    /// and bots.
    #[serde(default, skip_serializing_if = "PolicySpec::is_default")]
    pub policy: PolicySpec,
}

/// One trigger; in YAML a single-key map: `webhook: {...}`, `cron: "..."`, `api: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Events from a registered source.
    Webhook(WebhookTrigger),
    /// A schedule.
    Cron(CronTrigger),
    /// Whether tasks may be submitted through the API.
    Api(bool),
}

/// Matches events of one source by type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// The source's name.
    pub source: String,
    /// Event types (`issues.opened`); at least one.
    pub events: Vec<String>,
    /// An optional filter over the payload: an object of dotted paths to expected values, e.g.
    /// `{ "repository.full_name": "acme/app" }`; every path must hold its value (an array of
    /// values means any one of them). Interpreted by the server's matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
}

/// A cron schedule: `cron: "*/5 * * * *"` or `cron: { schedule: "0 0 9 * * 1", tz: "Europe/Paris" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CronTrigger {
    /// Just the schedule, in UTC.
    Schedule(String),
    /// A schedule with a time zone.
    WithZone {
        /// 5 fields (minute ...) or 6 (second minute ...).
        schedule: String,
        /// An IANA time zone name; the server resolves it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tz: Option<String>,
    },
}

impl CronTrigger {
    /// The schedule text.
    pub fn schedule(&self) -> &str {
        match self {
            Self::Schedule(s) | Self::WithZone { schedule: s, .. } => s,
        }
    }

    /// The time zone, if one was given (UTC otherwise).
    pub fn tz(&self) -> Option<&str> {
        match self {
            Self::Schedule(_) => None,
            Self::WithZone { tz, .. } => tz.as_deref(),
        }
    }
}

/// A container's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// The memory limit in MiB (at least 6, the runtimes' minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPUs the container may use (`1.5`), more than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// A container's HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// The path asked with `GET` (`/healthz`); a `2xx` answer is healthy.
    pub path: String,
    /// Time between checks (default `10s`, at least `1s`).
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
}

fn default_health_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

/// When the container runtime may pull a container worker's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Never: the image must be on the machine already.
    Never,
    /// When it is not on the machine.
    Missing,
    /// Before every container is created.
    Always,
}

impl PullPolicy {
    /// The name the runtimes' `--pull` option takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Missing => "missing",
            Self::Always => "always",
        }
    }
}

/// Restart policy of a process or container worker (`mechanics-runtime` semantics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// When to restart.
    pub policy: RestartPolicyName,
    /// First backoff delay.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Backoff cap.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

/// The restart policies a process worker can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicyName {
    /// Never restart.
    Never,
    /// Restart after a failure, with exponential backoff.
    OnFailure,
    /// Restart after any exit.
    Always,
}

fn default_initial_backoff_ms() -> u64 {
    500
}

fn default_max_backoff_ms() -> u64 {
    30_000
}

/// Retry parameters: the server computes `base_delay × 2^(n−1)` capped at `max_delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first attempt before a task goes `dead` (default 3).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay (default `30s`).
    #[serde(default = "default_base_delay")]
    pub base_delay: HumanDuration,
    /// Delay cap (default `30m`).
    #[serde(default = "default_max_delay")]
    pub max_delay: HumanDuration,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
        }
    }
}

fn default_max_retries() -> u32 {
    3
}

fn default_base_delay() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_max_delay() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}

/// A token bucket: `per_second` refill rate, `burst` capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Tokens added per second (default 2).
    #[serde(default = "default_per_second")]
    pub per_second: f64,
    /// Bucket capacity (default 5).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            per_second: default_per_second(),
            burst: default_burst(),
        }
    }
}

fn default_per_second() -> f64 {
    2.0
}

impl RateLimitSpec {
    /// The slowest refill accepted: one token per hour. Slower buckets are almost certainly a
    /// typo, and rates near zero make the reservation arithmetic overflow to infinity.
    pub const MIN_PER_SECOND: f64 = 1.0 / 3600.0;
    /// The fastest refill accepted; beyond it a bucket limits nothing a dispatcher can reach.
    pub const MAX_PER_SECOND: f64 = 1_000_000.0;

    /// Checks a refill rate (tokens per second) against
    /// [`MIN_PER_SECOND`](Self::MIN_PER_SECOND)..=[`MAX_PER_SECOND`](Self::MAX_PER_SECOND); the
    /// message says the allowed range. Shared with the server's `worker_rate_limit` and
    /// `webhook_rate_limit` settings, so a bucket means the same wherever it is written.
    pub fn check_per_second(per_second: f64) -> Result<(), String> {
        if (Self::MIN_PER_SECOND..=Self::MAX_PER_SECOND).contains(&per_second) {
            Ok(())
        } else {
            Err(format!(
                "must be between 1/3600 (one token per hour, {:.6}) and {} tokens per second, \
                 got {per_second:?}",
                Self::MIN_PER_SECOND,
                Self::MAX_PER_SECOND
            ))
        }
    }
}

fn default_burst() -> u32 {
    5
}

impl WorkerSpec {
    /// js: the module's name as a transpiler's errors and source positions show it (`worker.ts:3:7:
    /// ...`): `module` as written, without a leading `./`.
    pub fn module_name(&self) -> Option<&str> {
        let module = self.module.as_deref()?;
        Some(module.strip_prefix("./").unwrap_or(module))
    }

    /// Checks every rule serde cannot: the name, the fields each kind needs and forbids, the
    /// triggers, retry and rate-limit values. `config` and `limits` are only checked to be
    /// objects; their contents are `mechanics-core`'s to validate.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        let kind = self.kind.as_str();
        let given = [
            ("module", self.module.is_some()),
            ("config", self.config.is_some()),
            ("limits", self.limits.is_some()),
            ("url", self.url.is_some()),
            ("command", self.command.is_some()),
            ("restart", self.restart.is_some()),
            ("image", self.image.is_some()),
            ("port", self.port.is_some()),
            ("env", self.env.is_some()),
            ("resources", self.resources.is_some()),
            ("health", self.health.is_some()),
            ("pull", self.pull.is_some()),
        ];
        let (required, allowed): (&[&str], &[&str]) = match self.kind {
            WorkerKind::Js => (&["module"], &["module", "config", "limits"]),
            WorkerKind::Http => (&["url"], &["url"]),
            WorkerKind::Process => (&["command"], &["command", "restart"]),
            WorkerKind::Container => (
                &["image", "port"],
                &[
                    "image",
                    "port",
                    "env",
                    "resources",
                    "health",
                    "pull",
                    "restart",
                ],
            ),
        };
        for (field, present) in given {
            if present && !allowed.contains(&field) {
                return Err(SpecError::new(
                    field,
                    format!(
                        "not used by {kind} workers (allowed: {})",
                        allowed.join(", ")
                    ),
                ));
            }
            if !present && required.contains(&field) {
                return Err(SpecError::new(
                    field,
                    format!("required for {kind} workers"),
                ));
            }
        }
        if let Some(module) = &self.module {
            if module.trim().is_empty() {
                return Err(SpecError::new("module", "must not be empty"));
            }
            refuse_nul("module", module, "a file path")?;
        }
        for (field, value) in [("config", &self.config), ("limits", &self.limits)] {
            if value.as_ref().is_some_and(|v| !v.is_object()) {
                return Err(SpecError::new(field, "must be an object"));
            }
        }
        if let Some(url) = &self.url {
            validate_http_url("url", url)?;
        }
        if let Some(command) = &self.command {
            if command.first().is_none_or(|program| program.is_empty()) {
                return Err(SpecError::new(
                    "command",
                    "must name a program: [\"program\", \"arg\", ...]",
                ));
            }
            for (i, part) in command.iter().enumerate() {
                refuse_nul(&format!("command[{i}]"), part, "a program's command line")?;
            }
        }
        self.validate_container()?;
        if let Some(restart) = &self.restart
            && restart.initial_backoff_ms > restart.max_backoff_ms
        {
            return Err(SpecError::new(
                "restart.initial_backoff_ms",
                "must not exceed restart.max_backoff_ms",
            ));
        }
        for (i, trigger) in self.triggers.iter().enumerate() {
            validate_trigger(i, trigger)?;
        }
        if self.retry.base_delay.as_millis() == 0 {
            return Err(SpecError::new("retry.base_delay", "must be greater than 0"));
        }
        if self.retry.base_delay > self.retry.max_delay {
            return Err(SpecError::new(
                "retry.base_delay",
                format!(
                    "{} is longer than retry.max_delay ({})",
                    self.retry.base_delay, self.retry.max_delay
                ),
            ));
        }
        self.policy.validate()?;
        let webhooks = self
            .triggers
            .iter()
            .any(|trigger| matches!(trigger, Trigger::Webhook(_)));
        if !self.policy.is_default() && !webhooks {
            return Err(SpecError::new(
                "policy",
                "applies to events of webhook triggers, and this worker has none",
            ));
        }
        if let Some(rate_limit) = &self.rate_limit {
            RateLimitSpec::check_per_second(rate_limit.per_second)
                .map_err(|message| SpecError::new("rate_limit.per_second", message))?;
            if rate_limit.burst == 0 {
                return Err(SpecError::new("rate_limit.burst", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// container: when the runtime may pull the image: as written, else `never` for images
    /// named `localhost/...` (built on this machine; no registry has them) and `missing` for
    /// the others.
    pub fn pull_policy(&self) -> PullPolicy {
        match (self.pull, &self.image) {
            (Some(pull), _) => pull,
            (None, Some(image)) if image.starts_with("localhost/") => PullPolicy::Never,
            (None, _) => PullPolicy::Missing,
        }
    }

    /// The container fields' own rules. Each value ends up as an argument of the container
    /// runtime or a line of its env file, so what could be read as an option (a leading `-`)
    /// or split a line is refused here, before anything is stored.
    fn validate_container(&self) -> Result<(), SpecError> {
        if let Some(image) = &self.image {
            let valid = (1..=255).contains(&image.len())
                && !image.starts_with(['-', '/', ':', '@', '.'])
                && image
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
            if !valid {
                return Err(SpecError::new(
                    "image",
                    format!(
                        "{image:?} is not an image reference: write e.g. localhost/summarizer:1.4 \
                         (letters, digits and . _ - / : @, up to 255 characters)"
                    ),
                ));
            }
        }
        if self.port == Some(0) {
            return Err(SpecError::new(
                "port",
                "must be the port the container listens on, 1 to 65535",
            ));
        }
        for (name, value) in self.env.iter().flatten() {
            validate_env_name(&format!("env.{name}"), name)?;
            // The env file has one `NAME=value` per line: a line break would start another
            // variable, a NUL cannot reach a process's environment.
            if let Some(c) = value.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
                return Err(SpecError::new(
                    format!("env.{name}"),
                    format!(
                        "must be one line: {c:?} cannot be passed in a container's environment"
                    ),
                ));
            }
        }
        if let Some(resources) = &self.resources {
            if resources
                .memory_mb
                .is_some_and(|mb| !(6..=16 * 1024 * 1024).contains(&mb))
            {
                return Err(SpecError::new(
                    "resources.memory_mb",
                    "must be between 6 (the container runtimes' minimum) and 16777216 MiB",
                ));
            }
            if resources
                .cpus
                .is_some_and(|cpus| !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0))
            {
                return Err(SpecError::new(
                    "resources.cpus",
                    "must be more than 0 and at most 1024 (1.5 is one and a half CPUs)",
                ));
            }
        }
        if let Some(health) = &self.health {
            if !health.path.starts_with('/') {
                return Err(SpecError::new(
                    "health.path",
                    format!("{:?} must be a path starting with /", health.path),
                ));
            }
            refuse_control("health.path", &health.path)?;
            if health.interval.as_millis() < 1000 {
                return Err(SpecError::new("health.interval", "must be at least 1s"));
            }
        }
        Ok(())
    }

    /// Whether tasks may be submitted for this worker through the API (an `api: true` trigger).
    pub fn accepts_api(&self) -> bool {
        self.triggers.contains(&Trigger::Api(true))
    }
}

fn validate_trigger(i: usize, trigger: &Trigger) -> Result<(), SpecError> {
    match trigger {
        Trigger::Webhook(webhook) => {
            validate_name(&format!("triggers[{i}].webhook.source"), &webhook.source)?;
            if webhook.events.is_empty() {
                return Err(SpecError::new(
                    format!("triggers[{i}].webhook.events"),
                    "list at least one event type",
                ));
            }
            for (j, event) in webhook.events.iter().enumerate() {
                let field = format!("triggers[{i}].webhook.events[{j}]");
                if event.trim().is_empty() {
                    return Err(SpecError::new(field, "must not be empty"));
                }
                // Event types come from headers and payload fields of the platform: a control
                // character could never match one.
                refuse_control(&field, event)?;
            }
            if let Some(filter) = &webhook.filter {
                match filter.as_object() {
                    Some(paths) if paths.keys().all(|path| !path.trim().is_empty()) => {}
                    _ => {
                        return Err(SpecError::new(
                            format!("triggers[{i}].webhook.filter"),
                            "must be an object of dotted payload paths to expected values, \
                             e.g. { \"repository.full_name\": \"acme/app\" }",
                        ));
                    }
                }
            }
        }
        Trigger::Cron(cron) => {
            refuse_nul(
                &format!("triggers[{i}].cron"),
                cron.schedule(),
                "a schedule",
            )?;
            // A nickname (`@daily`) is one word; the server's parser says whether it knows it.
            let nickname = cron.schedule().trim_start().starts_with('@');
            let fields = cron.schedule().split_whitespace().count();
            if !(nickname || fields == 5 || fields == 6) {
                return Err(SpecError::new(
                    format!("triggers[{i}].cron"),
                    format!(
                        "{:?} has {fields} fields: write 5 (minute hour day month weekday), 6 (with seconds first) or a nickname such as @daily",
                        cron.schedule()
                    ),
                ));
            }
            if let Some(tz) = cron.tz() {
                let field = format!("triggers[{i}].cron.tz");
                if tz.trim().is_empty() {
                    return Err(SpecError::new(field, "must not be empty"));
                }
                refuse_control(&field, tz)?;
            }
        }
        Trigger::Api(_) => {}
    }
    Ok(())
}

/// A registered worker as stored: its spec, the module source read at add time (js workers), and
/// a revision that counts updates (1 on first add).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Worker {
    /// The spec as added.
    pub spec: WorkerSpec,
    /// js: the module's source text, as written (a TypeScript module's too: it is what people
    /// read and edit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_source: Option<String>,
    /// js, a TypeScript module (`spec.module` ending in `.ts` or `.mts`): what runs. Kept out of
    /// the API's JSON, which shows the source as written.
    #[serde(skip)]
    pub transpiled: Option<TranspiledModule>,
    /// 1 on add, +1 on every update.
    pub revision: i64,
    /// Unix ms of the first add.
    pub created_at: i64,
    /// Unix ms of the last update.
    pub updated_at: i64,
    /// Paused (`mechanics worker pause`): its tasks are created but not dispatched, and its cron
    /// fires are skipped, until it is resumed. Kept in the store, so every server sharing it
    /// obeys; an update of the worker leaves it as it was.
    #[serde(default)]
    pub paused: bool,
}

/// A module written in another language than JavaScript (TypeScript), transpiled by the server
/// when the worker was added: the engine runs JavaScript only, and transpiling once at add time
/// keeps it off every task's path and reports a syntax error to whoever adds the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranspiledModule {
    /// The ES module that runs.
    pub javascript: String,
    /// The engine's `SourceMap` as JSON (`{ "source", "mappings" }`), which maps positions in
    /// errors and console output back to the original lines. It stays JSON here, as a job's
    /// `config` and `limits` do: this crate does not know the engine's types.
    pub source_map: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> Result<WorkerSpec, String> {
        let spec: WorkerSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn the_design_example_parses_with_defaults_filled_in() {
        let spec = spec(json!({
            "name": "triage", "kind": "js", "module": "./triage.js",
            "config": { "endpoints": {} }, "limits": { "max_execution_time_ms": 10000 },
            "triggers": [
                { "webhook": { "source": "gh", "events": ["issues.opened"] } },
                { "cron": "*/5 * * * *" },
                { "cron": { "schedule": "0 0 9 * * 1", "tz": "Europe/Paris" } },
                { "api": true }
            ],
            "retry": { "max_retries": 5, "base_delay": "10s" },
            "write_back": true
        }))
        .unwrap();
        assert_eq!(spec.retry.max_retries, 5);
        assert_eq!(spec.retry.base_delay.as_millis(), 10_000);
        assert_eq!(spec.retry.max_delay.to_string(), "30m");
        assert_eq!(spec.rate_limit, None);
        assert_eq!(
            spec.triggers[2],
            Trigger::Cron(CronTrigger::WithZone {
                schedule: "0 0 9 * * 1".into(),
                tz: Some("Europe/Paris".into())
            })
        );
        assert!(spec.accepts_api());
        let back: WorkerSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    /// The error of a js worker spec with `extra`'s fields over a valid minimal one.
    fn js_error(extra: Value) -> String {
        let mut base = json!({ "name": "w", "kind": "js", "module": "m.js" });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec(base).unwrap_err()
    }

    #[test]
    fn the_issue_container_example_parses_and_localhost_images_are_never_pulled() {
        let spec = spec(json!({
            "name": "summarizer", "kind": "container", "image": "localhost/summarizer:1.4",
            "port": 8080,
            "env": { "MODEL": "small", "API_TOKEN": "${env:SUMMARIZER_TOKEN}" },
            "resources": { "memory_mb": 512, "cpus": 1.5 },
            "health": { "path": "/healthz", "interval": "10s" },
            "restart": { "policy": "on-failure" },
        }))
        .unwrap();
        assert_eq!(spec.pull_policy(), PullPolicy::Never);
        assert_eq!(spec.health.as_ref().unwrap().interval.as_millis(), 10_000);
        let back: WorkerSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let remote = spec_of_container(json!({ "image": "ghcr.io/acme/bot:2" })).unwrap();
        assert_eq!(remote.pull_policy(), PullPolicy::Missing);
        let pinned =
            spec_of_container(json!({ "image": "ghcr.io/acme/bot:2", "pull": "never" })).unwrap();
        assert_eq!(pinned.pull_policy(), PullPolicy::Never);
    }

    /// A container worker spec with `extra`'s fields over a valid minimal one.
    fn spec_of_container(extra: Value) -> Result<WorkerSpec, String> {
        let mut base =
            json!({ "name": "c", "kind": "container", "image": "localhost/c:1", "port": 80 });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec(base)
    }

    #[test]
    fn container_fields_are_checked_and_errors_name_the_field() {
        for (extra, expected) in [
            (
                json!({ "image": null }),
                "image: required for container workers",
            ),
            (
                json!({ "port": null }),
                "port: required for container workers",
            ),
            (
                json!({ "port": 0 }),
                "port: must be the port the container listens on",
            ),
            (json!({ "port": 70000 }), "invalid value: integer `70000`"),
            (
                json!({ "image": "" }),
                "image: \"\" is not an image reference",
            ),
            (
                json!({ "image": "--privileged" }),
                "image: \"--privileged\" is not an image reference",
            ),
            (
                json!({ "image": "a b" }),
                "image: \"a b\" is not an image reference",
            ),
            (
                json!({ "env": { "1X": "v" } }),
                "env.1X: \"1X\" is not an environment variable name",
            ),
            (
                json!({ "env": { "X": "a\nY=b" } }),
                "env.X: must be one line: '\\n'",
            ),
            (
                json!({ "env": { "X": "a\u{0}" } }),
                "env.X: must be one line: '\\0'",
            ),
            (
                json!({ "resources": { "memory_mb": 1 } }),
                "resources.memory_mb: must be between 6",
            ),
            (
                json!({ "resources": { "cpus": 0.0 } }),
                "resources.cpus: must be more than 0",
            ),
            (json!({ "resources": { "cpu": 1 } }), "unknown field `cpu`"),
            (
                json!({ "health": { "path": "healthz" } }),
                "health.path: \"healthz\" must be a path starting with /",
            ),
            (
                json!({ "health": { "path": "/h", "interval": "10ms" } }),
                "health.interval: must be at least 1s",
            ),
            (
                json!({ "pull": "sometimes" }),
                "unknown variant `sometimes`",
            ),
            (
                json!({ "url": "http://127.0.0.1:1" }),
                "url: not used by container workers",
            ),
            (
                json!({ "command": ["x"] }),
                "command: not used by container workers",
            ),
        ] {
            let err = spec_of_container(extra.clone()).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
        }
        // The container fields belong to container workers only.
        let err = spec(json!({ "name": "p", "kind": "process", "command": ["x"], "image": "i" }))
            .unwrap_err();
        assert!(
            err.starts_with("image: not used by process workers"),
            "{err}"
        );
    }

    #[test]
    fn cron_nicknames_are_schedules() {
        for schedule in [
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
        ] {
            let checked = spec(json!({
                "name": "w", "kind": "http", "url": "http://127.0.0.1:9",
                "triggers": [{ "cron": schedule }],
            }));
            assert!(checked.is_ok(), "{schedule}: {checked:?}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        for (extra, expected) in [
            (
                json!({ "name": "Bad_Name" }),
                "name: \"Bad_Name\" is not a valid name",
            ),
            (json!({ "nmae": "x" }), "unknown field `nmae`"),
            (json!({ "url": "http://x" }), "url: not used by js workers"),
            (json!({ "config": [] }), "config: must be an object"),
            (
                json!({ "triggers": [{ "cron": "* * *" }] }),
                "triggers[0].cron: \"* * *\" has 3 fields",
            ),
            (
                json!({ "triggers": [{ "webhook": { "source": "gh", "events": [] } }] }),
                "triggers[0].webhook.events: list at least one",
            ),
            (
                json!({ "triggers": [{ "webhook": { "source": "gh", "events": ["*"], "filter": "acme" } }] }),
                "triggers[0].webhook.filter: must be an object",
            ),
            (
                json!({ "retry": { "base_delay": "1h" } }),
                "retry.base_delay: 1h is longer than retry.max_delay (30m)",
            ),
            (
                json!({ "retry": { "base_delay": "soon" } }),
                "\"soon\" is not a duration",
            ),
            (
                json!({ "rate_limit": { "per_second": 0 } }),
                "rate_limit.per_second: must be between 1/3600",
            ),
            (
                json!({ "rate_limit": { "burst": 0 } }),
                "rate_limit.burst: must be at least 1",
            ),
        ] {
            let err = js_error(extra.clone());
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = spec(json!({ "name": "w", "kind": "http" })).unwrap_err();
        assert_eq!(err, "url: required for http workers");
        let err = spec(json!({ "name": "w", "kind": "http", "url": "ftp://x" })).unwrap_err();
        assert!(err.starts_with("url: \"ftp://x\" is not an http"), "{err}");
        let err = spec(json!({ "name": "w", "kind": "process", "command": [] })).unwrap_err();
        assert!(err.starts_with("command: must name a program"), "{err}");
        let ok = spec(json!({ "name": "w", "kind": "process", "command": ["bot"],
            "restart": { "policy": "on-failure" } }))
        .unwrap();
        assert_eq!(ok.restart.unwrap().max_backoff_ms, 30_000);
    }

    #[test]
    fn nul_bytes_and_control_characters_are_refused_where_the_os_or_a_header_gets_the_string() {
        let process = |command: Value| {
            spec(json!({ "name": "p", "kind": "process", "command": command })).unwrap_err()
        };
        let err = process(json!(["bot\0"]));
        assert_eq!(
            err,
            "command[0]: \"bot\\0\" contains a NUL byte (at byte 3), which a program's command \
             line cannot carry"
        );
        let err = process(json!(["bot", "--ok", "a\0b"]));
        assert!(
            err.starts_with("command[2]: \"a\\0b\" contains a NUL byte (at byte 1)"),
            "{err}"
        );
        // Arguments may hold any other character: a program gets them as they are.
        spec(json!({ "name": "p", "kind": "process", "command": ["bot", "a\nb\tc", "é"] }))
            .unwrap();

        for (extra, expected) in [
            (
                json!({ "name": "w\0" }),
                "name: \"w\\0\" is not a valid name",
            ),
            (
                json!({ "module": "m\0.js" }),
                "module: \"m\\0.js\" contains a NUL byte (at byte 1), which a file path",
            ),
            (
                json!({ "triggers": [{ "webhook": { "source": "g\0h", "events": ["x"] } }] }),
                "triggers[0].webhook.source: \"g\\0h\" is not a valid name",
            ),
            (
                json!({ "triggers": [{ "webhook": { "source": "gh", "events": ["a", "issues\0"] } }] }),
                "triggers[0].webhook.events[1]: \"issues\\0\" contains the control character '\\0'",
            ),
            (
                json!({ "triggers": [{ "webhook": { "source": "gh", "events": ["issues\n.opened"] } }] }),
                "triggers[0].webhook.events[0]: \"issues\\n.opened\" contains the control character",
            ),
            (
                json!({ "triggers": [{ "cron": "* * * * *\0" }] }),
                "triggers[0].cron: \"* * * * *\\0\" contains a NUL byte (at byte 9)",
            ),
            (
                json!({ "triggers": [{ "cron": { "schedule": "* * * * *", "tz": "Europe/Paris\0" } }] }),
                "triggers[0].cron.tz: \"Europe/Paris\\0\" contains the control character",
            ),
        ] {
            let err = js_error(extra.clone());
            assert!(err.starts_with(expected), "{extra}: {err}");
        }
        for url in [
            "http://exa\0mple.com",
            "http://exa\nmple.com",
            "http://x/\t",
        ] {
            let err = spec(json!({ "name": "h", "kind": "http", "url": url })).unwrap_err();
            assert!(
                err.starts_with("url: ") && err.contains("contains the control character"),
                "{url:?}: {err}"
            );
        }
    }

    #[test]
    fn rate_limit_per_second_is_between_one_per_hour_and_a_million() {
        let rate = |per_second: Value| {
            spec(
                json!({ "name": "w", "kind": "http", "url": "http://127.0.0.1:9",
                "rate_limit": { "per_second": per_second, "burst": 1 } }),
            )
        };
        let one_per_hour = 1.0 / 3600.0;
        for ok in [json!(one_per_hour), json!(0.5), json!(2), json!(1_000_000)] {
            rate(ok.clone()).unwrap_or_else(|err| panic!("{ok}: {err}"));
        }
        for bad in [
            json!(1e-300),
            json!(one_per_hour * 0.99),
            json!(0),
            json!(-1),
            json!(1_000_000.5),
            json!(1e300),
        ] {
            let err = rate(bad.clone()).unwrap_err();
            assert!(
                err.starts_with(
                    "rate_limit.per_second: must be between 1/3600 (one token per hour, 0.000278) \
                     and 1000000 tokens per second, got "
                ),
                "{bad}: {err}"
            );
        }
        assert!(rate(json!(1e-300)).unwrap_err().ends_with("got 1e-300"));
        // Not numbers JSON can carry, but YAML can (`.nan`, `.inf`).
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(RateLimitSpec::check_per_second(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_allow_only_lowercase_digits_and_dashes_up_to_64() {
        assert!(super::super::validate_name("name", &"a".repeat(64)).is_ok());
        for bad in ["", "A", "a_b", "a b", "é", &"a".repeat(65)] {
            assert!(super::super::validate_name("name", bad).is_err(), "{bad:?}");
        }
    }
}
