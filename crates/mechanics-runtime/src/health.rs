//! On-demand health checks across every node.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::{HealthStatus, Supervisor};

/// Checks the health of a supervisor's nodes. Cheap to clone.
///
/// The supervisor already checks every running instance each `health_check_interval` and acts
/// on the results; this type reads those results and runs extra checks on demand (for an API),
/// which do not count toward the unhealthy threshold.
#[derive(Clone)]
pub struct HealthChecker {
    supervisor: Supervisor,
}

impl HealthChecker {
    /// The checker of `supervisor`'s nodes.
    pub fn new(supervisor: Supervisor) -> Self {
        HealthChecker { supervisor }
    }

    /// The last periodic result for the node's current instance.
    pub fn status(&self, name: &str) -> Option<HealthStatus> {
        self.supervisor
            .snapshot(name)
            .map(|snapshot| snapshot.health)
    }

    /// Checks every node now, concurrently, each under the health-check timeout, and returns
    /// the results by name. A node with no running instance is reported unhealthy with its
    /// state as the reason.
    pub async fn check_all(&self) -> Vec<(String, HealthStatus)> {
        let limit: Duration = self.supervisor.config().health_check_timeout;
        let mut results = Vec::new();
        let mut checks = JoinSet::new();
        let mut names = HashMap::new();
        for (name, runner) in self.supervisor.runners() {
            match runner {
                Ok(runner) => {
                    let check = checks.spawn(async move {
                        tokio::time::timeout(limit, runner.health_boxed())
                            .await
                            .unwrap_or_else(|_| {
                                HealthStatus::Unhealthy(format!(
                                    "health check timed out after {limit:?}"
                                ))
                            })
                    });
                    names.insert(check.id(), name);
                }
                Err(state) => {
                    results.push((name, HealthStatus::Unhealthy(format!("node is {state:?}"))))
                }
            }
        }
        while let Some(joined) = checks.join_next_with_id().await {
            let (id, status) = match joined {
                Ok((id, status)) => (id, status),
                Err(err) => (
                    err.id(),
                    HealthStatus::Unhealthy("health check panicked".into()),
                ),
            };
            if let Some(name) = names.remove(&id) {
                results.push((name, status));
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        results
    }
}
