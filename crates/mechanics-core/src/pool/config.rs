//! Pool configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::MechanicsError;
use crate::endpoint::http_client::EndpointHttpClient;
use crate::job::{JsonObject, MechanicsExecutionLimits, fields_of};

/// How a [`MechanicsPool`](super::MechanicsPool) is sized and bounded.
///
/// JSON shape (every field optional): `{ "worker_count", "queue_capacity", "enqueue_timeout_ms",
/// "run_timeout_ms", "restart_window_ms", "max_restarts_in_window", "abandon_grace_ms",
/// "shutdown_timeout_ms", "max_abandoned_workers", "worker_stack_mib", "execution_limits",
/// "default_http_timeout_ms", "default_http_response_max_bytes" }`. The endpoint transport is Rust
/// only ([`with_endpoint_http_client`](Self::with_endpoint_http_client)).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "JsonObject")]
pub struct MechanicsPoolConfig {
    pub(super) worker_count: usize,
    pub(super) queue_capacity: usize,
    pub(super) enqueue_timeout: Duration,
    pub(super) run_timeout: Duration,
    pub(super) restart_window: Duration,
    pub(super) max_restarts_in_window: usize,
    pub(super) abandon_grace: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) max_abandoned_workers: usize,
    pub(super) worker_stack_bytes: usize,
    pub(super) execution_limits: MechanicsExecutionLimits,
    pub(super) default_http_timeout: Duration,
    pub(super) default_http_response_max_bytes: usize,
    pub(super) endpoint_http_client: Option<Arc<dyn EndpointHttpClient>>,
}

impl Default for MechanicsPoolConfig {
    fn default() -> Self {
        Self {
            worker_count: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_capacity: 256,
            enqueue_timeout: Duration::from_secs(5),
            run_timeout: Duration::from_secs(60),
            restart_window: Duration::from_secs(10),
            max_restarts_in_window: 16,
            abandon_grace: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(5),
            max_abandoned_workers: 8,
            worker_stack_bytes: 256 * 1024 * 1024,
            execution_limits: MechanicsExecutionLimits::default(),
            default_http_timeout: Duration::from_secs(30),
            default_http_response_max_bytes: 8 * 1024 * 1024,
            endpoint_http_client: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolConfig {
    worker_count: Option<usize>,
    queue_capacity: Option<usize>,
    enqueue_timeout_ms: Option<u64>,
    run_timeout_ms: Option<u64>,
    restart_window_ms: Option<u64>,
    max_restarts_in_window: Option<usize>,
    abandon_grace_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    max_abandoned_workers: Option<usize>,
    worker_stack_mib: Option<usize>,
    execution_limits: Option<MechanicsExecutionLimits>,
    default_http_timeout_ms: Option<u64>,
    default_http_response_max_bytes: Option<usize>,
}

impl TryFrom<JsonObject> for MechanicsPoolConfig {
    type Error = MechanicsError;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let raw: RawPoolConfig = fields_of("pool config", object)?;
        let mut config = Self::default();
        let ms = Duration::from_millis;
        if let Some(v) = raw.worker_count {
            config.worker_count = v;
        }
        if let Some(v) = raw.queue_capacity {
            config.queue_capacity = v;
        }
        if let Some(v) = raw.enqueue_timeout_ms {
            config.enqueue_timeout = ms(v);
        }
        if let Some(v) = raw.run_timeout_ms {
            config.run_timeout = ms(v);
        }
        if let Some(v) = raw.restart_window_ms {
            config.restart_window = ms(v);
        }
        if let Some(v) = raw.max_restarts_in_window {
            config.max_restarts_in_window = v;
        }
        if let Some(v) = raw.abandon_grace_ms {
            config.abandon_grace = ms(v);
        }
        if let Some(v) = raw.shutdown_timeout_ms {
            config.shutdown_timeout = ms(v);
        }
        if let Some(v) = raw.max_abandoned_workers {
            config.max_abandoned_workers = v;
        }
        if let Some(v) = raw.worker_stack_mib {
            config.worker_stack_bytes = v.saturating_mul(1024 * 1024);
        }
        if let Some(v) = raw.execution_limits {
            config.execution_limits = v;
        }
        if let Some(v) = raw.default_http_timeout_ms {
            config.default_http_timeout = ms(v);
        }
        if let Some(v) = raw.default_http_response_max_bytes {
            config.default_http_response_max_bytes = v;
        }
        config.validate()?;
        Ok(config)
    }
}

fn invalid(message: String) -> MechanicsError {
    MechanicsError::RuntimePool(format!("pool config: {message}"))
}

impl MechanicsPoolConfig {
    /// Worker threads (1 to 1,024; default: the number of CPUs).
    #[must_use]
    pub fn with_worker_count(mut self, value: usize) -> Self {
        self.worker_count = value;
        self
    }

    /// Jobs that may wait for a worker (at least 1; default 256).
    #[must_use]
    pub fn with_queue_capacity(mut self, value: usize) -> Self {
        self.queue_capacity = value;
        self
    }

    /// How long `run` waits for room in the queue (default 5 s).
    #[must_use]
    pub fn with_enqueue_timeout(mut self, value: Duration) -> Self {
        self.enqueue_timeout = value;
        self
    }

    /// Bound on a whole `run` call, queueing included (at least 1 ms; default 60 s).
    #[must_use]
    pub fn with_run_timeout(mut self, value: Duration) -> Self {
        self.run_timeout = value;
        self
    }

    /// Window of the restart guard (at least 1 ms; default 10 s).
    #[must_use]
    pub fn with_restart_window(mut self, value: Duration) -> Self {
        self.restart_window = value;
        self
    }

    /// Worker restarts allowed within the window (default 16).
    #[must_use]
    pub fn with_max_restarts_in_window(mut self, value: usize) -> Self {
        self.max_restarts_in_window = value;
        self
    }

    /// Extra time after a job's time limit before the pool gives up on its thread (default 500 ms).
    #[must_use]
    pub fn with_abandon_grace(mut self, value: Duration) -> Self {
        self.abandon_grace = value;
        self
    }

    /// How long dropping the pool waits for running jobs before leaving their threads behind
    /// (default 5 s).
    #[must_use]
    pub fn with_shutdown_timeout(mut self, value: Duration) -> Self {
        self.shutdown_timeout = value;
        self
    }

    /// Threads the pool may give up on before it stops replacing them (default 8). Each one may
    /// still hold memory or a core, so past this the pool reports `WorkerUnavailable` and the
    /// process should be recycled.
    #[must_use]
    pub fn with_max_abandoned_workers(mut self, value: usize) -> Self {
        self.max_abandoned_workers = value;
        self
    }

    /// Stack size of each worker thread (at least 1 MiB; default 256 MiB, reserved, not committed).
    #[must_use]
    pub fn with_worker_stack_bytes(mut self, value: usize) -> Self {
        self.worker_stack_bytes = value;
        self
    }

    /// Limits for jobs that do not bring their own.
    #[must_use]
    pub fn with_execution_limits(mut self, value: MechanicsExecutionLimits) -> Self {
        self.execution_limits = value;
        self
    }

    /// Time for one endpoint attempt when the endpoint sets no `timeout_ms` (at least 1 ms;
    /// default 30 s). A call never outlasts its job's time limit either way.
    #[must_use]
    pub fn with_default_http_timeout(mut self, value: Duration) -> Self {
        self.default_http_timeout = value;
        self
    }

    /// Largest endpoint response body when the endpoint sets no `response_max_bytes` (at least
    /// 1; default 8 MiB).
    #[must_use]
    pub fn with_default_http_response_max_bytes(mut self, value: usize) -> Self {
        self.default_http_response_max_bytes = value;
        self
    }

    /// The transport for `mechanics:endpoint` calls (default: [`ReqwestEndpointHttpClient`]).
    ///
    /// [`ReqwestEndpointHttpClient`]: crate::endpoint::http_client::ReqwestEndpointHttpClient
    #[must_use]
    pub fn with_endpoint_http_client(mut self, client: Arc<dyn EndpointHttpClient>) -> Self {
        self.endpoint_http_client = Some(client);
        self
    }

    /// The limits applied to jobs that do not bring their own.
    pub fn execution_limits(&self) -> &MechanicsExecutionLimits {
        &self.execution_limits
    }

    pub(super) fn validate(&self) -> Result<(), MechanicsError> {
        if !(1..=1024).contains(&self.worker_count) {
            return Err(invalid(format!(
                "`worker_count` must be between 1 and 1024, got {}",
                self.worker_count
            )));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("`queue_capacity` must be at least 1".to_owned()));
        }
        if self.run_timeout.is_zero() {
            return Err(invalid("`run_timeout_ms` must be at least 1".to_owned()));
        }
        if Instant::now().checked_add(self.run_timeout).is_none()
            || Instant::now().checked_add(self.enqueue_timeout).is_none()
        {
            return Err(invalid(
                "`run_timeout_ms` and `enqueue_timeout_ms` must be representable as a deadline \
                 on this platform"
                    .to_owned(),
            ));
        }
        if self.restart_window.is_zero() {
            return Err(invalid("`restart_window_ms` must be at least 1".to_owned()));
        }
        if self.default_http_timeout.is_zero() {
            return Err(invalid(
                "`default_http_timeout_ms` must be at least 1".to_owned(),
            ));
        }
        if self.default_http_response_max_bytes == 0 {
            return Err(invalid(
                "`default_http_response_max_bytes` must be at least 1".to_owned(),
            ));
        }
        if self.worker_stack_bytes < 1024 * 1024 {
            return Err(invalid("`worker_stack_mib` must be at least 1".to_owned()));
        }
        Ok(())
    }
}
