//! Supervises three nodes until Ctrl+C (or SIGTERM): a child process that announces its address
//! and keeps running, a child that crashes at once (watch the backoff, then the crash-loop
//! breaker trip at its sixth death), and an in-process node with a health check.
//!
//! ```sh
//! cargo run -p mechanics-runtime --example supervise
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mechanics_runtime::{
    ExponentialBackoff, HealthStatus, LogFormat, NodeFailure, NodeRunner, ProcessNode,
    RestartPolicy, Runtime, RuntimeError, ShutdownSignal,
};

/// An in-process node: ticks every second, and reports unhealthy on every fifth check.
#[derive(Default)]
struct Ticker {
    checks: AtomicU32,
}

impl NodeRunner for Ticker {
    async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure> {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => tracing::debug!("tick"),
                () = shutdown.requested() => return Ok(()),
            }
        }
    }

    async fn health_check(&self) -> HealthStatus {
        match self.checks.fetch_add(1, Ordering::Relaxed) % 5 {
            4 => HealthStatus::Unhealthy(
                "every fifth check fails, to show it is not enough to restart".into(),
            ),
            _ => HealthStatus::Healthy,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), RuntimeError> {
    let runtime = Runtime::builder()
        .log_format(LogFormat::Compact)
        .log_level("info")
        .restart_policy(RestartPolicy::OnFailure(ExponentialBackoff::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
        )))
        .health_check_interval(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(5))
        .build();
    runtime.init_logging()?;

    let server = ProcessNode::new("sh")
        .args([
            "-c",
            "echo READY 127.0.0.1:$$; echo working >&2; exec sleep 3600",
        ])
        .ready_timeout(Duration::from_secs(5))
        .stop_timeout(Duration::from_secs(2));
    let mut address = server.address();
    runtime.supervisor().add("server", server)?;
    runtime.supervisor().add(
        "crashy",
        ProcessNode::new("sh").args(["-c", "echo 'missing config' >&2; exit 1"]),
    )?;
    runtime.supervisor().add("ticker", Ticker::default())?;

    let supervisor = runtime.supervisor().clone();
    tokio::spawn(async move {
        if let Ok(announced) = address.wait_for(Option::is_some).await {
            tracing::info!(address = ?*announced, "server is ready");
        }
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            for node in supervisor.snapshots() {
                tracing::info!(
                    node = %node.name, state = ?node.state, breaker = ?node.breaker, starts = node.starts,
                    restarts = node.restarts, last_exit = ?node.last_exit.map(|exit| exit.status), "snapshot"
                );
            }
        }
    });

    runtime.run().await
}
