//! What a job is: its module source, argument, configuration and limits.
//!
//! Every type here is JSON-first: deserializing rejects unknown fields and runs the same validation
//! as the Rust constructors and builders, so a value that exists is a valid value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::MechanicsError;
use crate::endpoint::HttpEndpoint;
use crate::typescript::SourceMap;

/// One unit of work for a [`MechanicsPool`](crate::MechanicsPool): an ES module whose default export
/// is called with `arg`.
///
/// JSON shape: `{ "module_source": string, "arg"?: any, "config"?: MechanicsConfig, "limits"?:
/// MechanicsExecutionLimits, "source_map"?: SourceMap }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "JsonObject")]
pub struct MechanicsJob {
    module_source: String,
    arg: Value,
    config: MechanicsConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<MechanicsExecutionLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_map: Option<SourceMap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    module_source: String,
    #[serde(default)]
    arg: Value,
    #[serde(default)]
    config: MechanicsConfig,
    #[serde(default)]
    limits: Option<MechanicsExecutionLimits>,
    #[serde(default)]
    source_map: Option<SourceMap>,
}

impl TryFrom<JsonObject> for MechanicsJob {
    type Error = MechanicsError;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let raw: RawJob = fields_of("job", object)?;
        let mut job = MechanicsJob::new(raw.module_source, raw.arg, raw.config)?;
        job.limits = raw.limits;
        job.source_map = raw.source_map;
        Ok(job)
    }
}

impl MechanicsJob {
    /// A job running `module_source` with `arg`. Fails when the source is empty.
    pub fn new(
        module_source: impl Into<String>,
        arg: Value,
        config: MechanicsConfig,
    ) -> Result<Self, MechanicsError> {
        let module_source = module_source.into();
        if module_source.trim().is_empty() {
            return Err(MechanicsError::RuntimePool(
                "job: `module_source` must not be empty".to_owned(),
            ));
        }
        Ok(Self {
            module_source,
            arg,
            config,
            limits: None,
            source_map: None,
        })
    }

    /// Runs this job with `limits` instead of the pool's default limits.
    #[must_use]
    pub fn with_limits(mut self, limits: MechanicsExecutionLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Maps positions of `module_source`, JavaScript transpiled from another language
    /// (TypeScript, see [`typescript`](crate::typescript)), back to the original: positions in the
    /// job's error message and console output then name the original file and lines.
    #[must_use]
    pub fn with_source_map(mut self, source_map: SourceMap) -> Self {
        self.source_map = Some(source_map);
        self
    }

    /// The ES module source.
    pub fn module_source(&self) -> &str {
        &self.module_source
    }

    /// The argument passed to the default export.
    pub fn arg(&self) -> &Value {
        &self.arg
    }

    /// The job's configuration.
    pub fn config(&self) -> &MechanicsConfig {
        &self.config
    }

    /// The job's own limits, if it overrides the pool's.
    pub fn limits(&self) -> Option<&MechanicsExecutionLimits> {
        self.limits.as_ref()
    }

    /// The map back to the module's original source, when it was transpiled.
    pub fn source_map(&self) -> Option<&SourceMap> {
        self.source_map.as_ref()
    }
}

/// Per-job configuration handed to the `mechanics:*` modules: the HTTP endpoints that
/// `mechanics:endpoint` may call, by name.
///
/// Every endpoint is validated when the configuration is built or deserialized, and errors name
/// the endpoint and the field. JSON shape: `{ "endpoints"?: { [name]: HttpEndpoint } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JsonObject")]
pub struct MechanicsConfig {
    endpoints: BTreeMap<String, HttpEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    endpoints: BTreeMap<String, JsonObject>,
}

impl TryFrom<JsonObject> for MechanicsConfig {
    type Error = MechanicsError;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let RawConfig { endpoints } = fields_of("config", object)?;
        let mut config = Self::default();
        for (name, object) in endpoints {
            check_endpoint_name(&name)?;
            let endpoint = HttpEndpoint::try_from(object).map_err(|err| {
                let message = err.to_string();
                let message = message.strip_prefix("endpoint: ").unwrap_or(&message);
                MechanicsError::RuntimePool(format!("config: endpoint `{name}`: {message}"))
            })?;
            config.endpoints.insert(name, endpoint);
        }
        Ok(config)
    }
}

fn check_endpoint_name(name: &str) -> Result<(), MechanicsError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(MechanicsError::RuntimePool(format!(
            "config: endpoint name {name:?} must be non-empty and free of control characters"
        )));
    }
    Ok(())
}

fn validated(name: &str, endpoint: &HttpEndpoint) -> Result<(), MechanicsError> {
    check_endpoint_name(name)?;
    endpoint.validate().map_err(|message| {
        MechanicsError::RuntimePool(format!("config: endpoint `{name}`: {message}"))
    })
}

impl MechanicsConfig {
    /// A configuration holding `endpoints`, each validated; the error names the first invalid
    /// endpoint and field.
    pub fn new(
        endpoints: impl IntoIterator<Item = (String, HttpEndpoint)>,
    ) -> Result<Self, MechanicsError> {
        Self::default().with_endpoint_overrides(endpoints)
    }

    /// Validates `endpoint` and adds it under `name`, replacing any endpoint of that name.
    pub fn with_endpoint(
        mut self,
        name: impl Into<String>,
        endpoint: HttpEndpoint,
    ) -> Result<Self, MechanicsError> {
        let name = name.into();
        validated(&name, &endpoint)?;
        self.endpoints.insert(name, endpoint);
        Ok(self)
    }

    /// Validates every endpoint of `overrides` and then adds them all, replacing endpoints of the
    /// same names; on error nothing is applied.
    pub fn with_endpoint_overrides(
        mut self,
        overrides: impl IntoIterator<Item = (String, HttpEndpoint)>,
    ) -> Result<Self, MechanicsError> {
        let overrides: Vec<(String, HttpEndpoint)> = overrides.into_iter().collect();
        for (name, endpoint) in &overrides {
            validated(name, endpoint)?;
        }
        self.endpoints.extend(overrides);
        Ok(self)
    }

    /// Removes the endpoint called `name`, if there is one.
    #[must_use]
    pub fn without_endpoint(mut self, name: &str) -> Self {
        self.endpoints.remove(name);
        self
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&HttpEndpoint> {
        self.endpoints.get(name)
    }

    /// The names of the configured endpoints, in order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.endpoints.keys().map(String::as_str)
    }
}

/// The JSON object every runtime-facing type is read from.
///
/// serde's derived `Deserialize` also accepts a struct written as an array of its fields in order;
/// reading a map first keeps the JSON shape to the documented object.
pub(crate) type JsonObject = serde_json::Map<String, Value>;

/// Reads the fields of `what` from `object`, with serde's message (unknown field, wrong type) on
/// failure.
pub(crate) fn fields_of<T: serde::de::DeserializeOwned>(
    what: &str,
    object: JsonObject,
) -> Result<T, MechanicsError> {
    serde_json::from_value(Value::Object(object))
        .map_err(|err| MechanicsError::RuntimePool(format!("{what}: {err}")))
}

/// Limits that bound what one job may consume. Every limit applies to the whole job, promise
/// callbacks included.
///
/// JSON shape (every field optional, defaults shown):
/// `{ "max_execution_time_ms": 10000, "max_loop_iterations": 1000000, "max_recursion_depth": 512,
///    "max_stack_size": 10240, "max_memory_mb": 128, "max_module_source_bytes": 1048576,
///    "max_result_bytes": 8388608 }`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JsonObject", into = "RawLimits")]
pub struct MechanicsExecutionLimits {
    max_execution_time: Duration,
    max_loop_iterations: u64,
    max_recursion_depth: usize,
    max_stack_size: usize,
    max_memory_bytes: u64,
    max_module_source_bytes: usize,
    max_result_bytes: usize,
}

/// The JSON form of [`MechanicsExecutionLimits`]; both directions go through it so that serde and
/// the builders share one validation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_execution_time_ms: u64,
    max_loop_iterations: u64,
    max_recursion_depth: usize,
    max_stack_size: usize,
    max_memory_mb: u64,
    max_module_source_bytes: usize,
    max_result_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        MechanicsExecutionLimits::default().into()
    }
}

impl From<MechanicsExecutionLimits> for RawLimits {
    fn from(l: MechanicsExecutionLimits) -> Self {
        Self {
            max_execution_time_ms: u64::try_from(l.max_execution_time.as_millis())
                .unwrap_or(u64::MAX),
            max_loop_iterations: l.max_loop_iterations,
            max_recursion_depth: l.max_recursion_depth,
            max_stack_size: l.max_stack_size,
            max_memory_mb: l.max_memory_bytes / MIB,
            max_module_source_bytes: l.max_module_source_bytes,
            max_result_bytes: l.max_result_bytes,
        }
    }
}

impl TryFrom<JsonObject> for MechanicsExecutionLimits {
    type Error = MechanicsError;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let raw: RawLimits = fields_of("limits", object)?;
        MechanicsExecutionLimits::default()
            .with_max_execution_time(Duration::from_millis(raw.max_execution_time_ms))?
            .with_max_loop_iterations(raw.max_loop_iterations)?
            .with_max_recursion_depth(raw.max_recursion_depth)?
            .with_max_stack_size(raw.max_stack_size)?
            .with_max_memory_mb(raw.max_memory_mb)?
            .with_max_module_source_bytes(raw.max_module_source_bytes)?
            .with_max_result_bytes(raw.max_result_bytes)
    }
}

const MIB: u64 = 1024 * 1024;

/// Upper bounds that keep a limit meaningful: beyond them a value is a typo, or would let one job
/// starve the process (native stack for recursion, address space for memory).
const MAX_EXECUTION_TIME: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_RECURSION_DEPTH: usize = 10_000;
const MAX_STACK_SIZE: usize = 10 * 1024 * 1024;
const MAX_MEMORY_MB: u64 = 64 * 1024;
const MAX_MODULE_SOURCE_BYTES: usize = 64 * 1024 * 1024;
const MAX_RESULT_BYTES: usize = 1024 * 1024 * 1024;

fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, MechanicsError> {
    if value < min || value > max {
        return Err(MechanicsError::RuntimePool(format!(
            "limits: `{field}` must be between {min} and {max}, got {value}"
        )));
    }
    Ok(value)
}

impl Default for MechanicsExecutionLimits {
    fn default() -> Self {
        Self {
            max_execution_time: Duration::from_secs(10),
            max_loop_iterations: 1_000_000,
            max_recursion_depth: 512,
            max_stack_size: 10 * 1024,
            max_memory_bytes: 128 * MIB,
            max_module_source_bytes: 1024 * 1024,
            max_result_bytes: 8 * 1024 * 1024,
        }
    }
}

impl MechanicsExecutionLimits {
    /// Wall-clock time for the whole job, synchronous code and promise callbacks alike
    /// (1 ms to 24 h; default 10 s).
    pub fn with_max_execution_time(mut self, value: Duration) -> Result<Self, MechanicsError> {
        if value < Duration::from_millis(1) || value > MAX_EXECUTION_TIME {
            return Err(MechanicsError::RuntimePool(format!(
                "limits: `max_execution_time_ms` must be between 1 and {}, got {}",
                MAX_EXECUTION_TIME.as_millis(),
                value.as_millis()
            )));
        }
        self.max_execution_time = value;
        Ok(self)
    }

    /// Loop iterations counted over the whole job, not per call frame (at least 1; default 1,000,000).
    pub fn with_max_loop_iterations(mut self, value: u64) -> Result<Self, MechanicsError> {
        self.max_loop_iterations = check_range("max_loop_iterations", value, 1, u64::MAX)?;
        Ok(self)
    }

    /// Nested calls (1 to 10,000; default 512).
    pub fn with_max_recursion_depth(mut self, value: usize) -> Result<Self, MechanicsError> {
        self.max_recursion_depth =
            check_range("max_recursion_depth", value, 1, MAX_RECURSION_DEPTH)?;
        Ok(self)
    }

    /// Values on the VM stack (1 to 10 Mi; default 10,240).
    pub fn with_max_stack_size(mut self, value: usize) -> Result<Self, MechanicsError> {
        self.max_stack_size = check_range("max_stack_size", value, 1, MAX_STACK_SIZE)?;
        Ok(self)
    }

    /// Heap memory the job may allocate, in MiB (1 to 65,536; default 128).
    pub fn with_max_memory_mb(mut self, value: u64) -> Result<Self, MechanicsError> {
        self.max_memory_bytes = check_range("max_memory_mb", value, 1, MAX_MEMORY_MB)? * MIB;
        Ok(self)
    }

    /// Size of the module source in bytes (1 to 64 MiB; default 1 MiB).
    pub fn with_max_module_source_bytes(mut self, value: usize) -> Result<Self, MechanicsError> {
        self.max_module_source_bytes =
            check_range("max_module_source_bytes", value, 1, MAX_MODULE_SOURCE_BYTES)?;
        Ok(self)
    }

    /// Size of the job's result serialized as JSON, in bytes (1 to 1 GiB; default 8 MiB).
    pub fn with_max_result_bytes(mut self, value: usize) -> Result<Self, MechanicsError> {
        self.max_result_bytes = check_range("max_result_bytes", value, 1, MAX_RESULT_BYTES)?;
        Ok(self)
    }

    /// See [`with_max_execution_time`](Self::with_max_execution_time).
    pub fn max_execution_time(&self) -> Duration {
        self.max_execution_time
    }

    /// See [`with_max_loop_iterations`](Self::with_max_loop_iterations).
    pub fn max_loop_iterations(&self) -> u64 {
        self.max_loop_iterations
    }

    /// See [`with_max_recursion_depth`](Self::with_max_recursion_depth).
    pub fn max_recursion_depth(&self) -> usize {
        self.max_recursion_depth
    }

    /// See [`with_max_stack_size`](Self::with_max_stack_size).
    pub fn max_stack_size(&self) -> usize {
        self.max_stack_size
    }

    /// See [`with_max_memory_mb`](Self::with_max_memory_mb); in bytes.
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    /// See [`with_max_module_source_bytes`](Self::with_max_module_source_bytes).
    pub fn max_module_source_bytes(&self) -> usize {
        self.max_module_source_bytes
    }

    /// See [`with_max_result_bytes`](Self::with_max_result_bytes).
    pub fn max_result_bytes(&self) -> usize {
        self.max_result_bytes
    }
}
