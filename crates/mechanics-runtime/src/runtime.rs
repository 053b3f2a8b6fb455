//! The runtime: one supervisor, launcher and shutdown handle configured by a builder, and the
//! process-wide log setup for binaries.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::{
    HealthChecker, Launcher, RestartPolicy, RuntimeError, ShutdownHandle, Supervisor,
    SupervisorConfig,
};

/// How [`Runtime::init_logging`] formats log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Multi-line, human-readable.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
    /// One short line per event.
    Compact,
}

/// Builds a [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeBuilder {
    log_format: LogFormat,
    log_level: Option<String>,
    config: SupervisorConfig,
}

impl RuntimeBuilder {
    /// The log format (default pretty).
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// The log filter, in `RUST_LOG` syntax (`info`, `mechanics_runtime=debug`). When unset,
    /// `RUST_LOG` is used, else `info`.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = Some(level.into());
        self
    }

    /// The restart policy of nodes added without one.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.config.restart_policy = policy;
        self
    }

    /// How long a stopping node may take before it is dropped (killed).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The pause between health checks of a running node; zero turns them off.
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        self.config.health_check_interval = interval;
        self
    }

    /// How long a health check may take before it counts as unhealthy.
    pub fn health_check_timeout(mut self, timeout: Duration) -> Self {
        self.config.health_check_timeout = timeout;
        self
    }

    /// How many consecutive unhealthy checks kill a node's instance.
    pub fn unhealthy_threshold(mut self, checks: u32) -> Self {
        self.config.unhealthy_threshold = checks;
        self
    }

    /// A node dying more than this many times within the crash window trips its breaker.
    pub fn max_crashes_in_window(mut self, crashes: u32) -> Self {
        self.config.breaker.max_crashes_in_window = crashes;
        self
    }

    /// The crash-loop breaker's sliding window.
    pub fn crash_window(mut self, window: Duration) -> Self {
        self.config.breaker.crash_window = window;
        self
    }

    /// How long a tripped breaker waits before it allows one more try.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.breaker.cooldown = cooldown;
        self
    }

    /// The runtime.
    pub fn build(self) -> Runtime {
        let shutdown = ShutdownHandle::new();
        let supervisor = Supervisor::new(self.config, shutdown.clone());
        Runtime {
            log_format: self.log_format,
            log_level: self.log_level,
            launcher: Launcher::new(supervisor.clone()),
            supervisor,
            shutdown,
        }
    }
}

/// A supervisor with its launcher and shutdown handle.
pub struct Runtime {
    log_format: LogFormat,
    log_level: Option<String>,
    supervisor: Supervisor,
    launcher: Launcher,
    shutdown: ShutdownHandle,
}

impl Runtime {
    /// A builder with the defaults of [`SupervisorConfig`].
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Installs the process-wide log subscriber in the configured format and level, writing to
    /// stderr. For binaries only: a library must leave output to its binary. Fails if a
    /// subscriber is already installed or the level does not parse.
    pub fn init_logging(&self) -> Result<(), RuntimeError> {
        let setup = |message: String| RuntimeError::Setup {
            what: "logging",
            message,
        };
        let filter = match &self.log_level {
            Some(level) => EnvFilter::try_new(level).map_err(|err| setup(err.to_string()))?,
            None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let installed = match self.log_format {
            LogFormat::Pretty => builder.pretty().try_init(),
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Compact => builder.compact().try_init(),
        };
        installed.map_err(|err| setup(err.to_string()))
    }

    /// The supervisor: add, stop, kill and inspect nodes.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The launcher of nodes by name.
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// The health checker of the supervisor's nodes.
    pub fn health_checker(&self) -> HealthChecker {
        HealthChecker::new(self.supervisor.clone())
    }

    /// The handle that stops everything.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs until SIGTERM, SIGINT (Ctrl+C) or [`ShutdownHandle::trigger`], then stops every node
    /// (each gets the shutdown timeout, then is killed) and returns once all have ended.
    pub async fn run(&self) -> Result<(), RuntimeError> {
        self.shutdown.listen_for_signals()?;
        self.shutdown.signal().requested().await;
        tracing::info!("shutting down");
        self.supervisor.shutdown().await;
        Ok(())
    }
}
