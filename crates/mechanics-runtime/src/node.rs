//! The unit of supervision: something that runs until it ends or is asked to stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{NodeFailure, ResourceExhaustion, ShutdownSignal};

/// A node the supervisor runs, restarts and health-checks. Each call to [`run`](Self::run) is
/// one *instance*; the supervisor never runs two instances of a node at once, so an
/// implementation may keep per-instance state in `self` behind interior mutability.
///
/// Implement it with `async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure>`
/// (and optionally `async fn health_check(&self) -> HealthStatus`); see `examples/supervise.rs`.
pub trait NodeRunner: Send + Sync + 'static {
    /// Runs one instance until it ends by itself or `shutdown` fires. `Ok` is a clean exit.
    /// After `shutdown` fires the supervisor waits at most its shutdown timeout, then drops
    /// the future: an implementation must release what it holds on drop too.
    fn run(&self, shutdown: ShutdownSignal)
    -> impl Future<Output = Result<(), NodeFailure>> + Send;

    /// Reports whether the running instance is healthy. Called only while an instance runs,
    /// every health-check interval, under the health-check timeout. The default says healthy.
    fn health_check(&self) -> impl Future<Output = HealthStatus> + Send {
        async { HealthStatus::Healthy }
    }
}

/// The result of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthStatus {
    /// Not known yet: no check has completed for this instance, or it is still starting.
    /// Neither healthy nor a strike against it.
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy, with the reason.
    Unhealthy(String),
    /// The check could not be made because *this* process is out of a resource (it could not
    /// open a socket to ask, say): it tells nothing about the node, so it is neither a strike
    /// nor a clear, and the last conclusive result stands. Find the error's resource with
    /// [`resource_exhaustion`](crate::resource_exhaustion).
    Unchecked(ResourceExhaustion),
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// [`NodeRunner`] with boxed futures, so nodes of different types live in one supervisor.
pub(crate) trait DynRunner: Send + Sync + 'static {
    fn run_boxed(self: Arc<Self>, shutdown: ShutdownSignal) -> BoxFuture<Result<(), NodeFailure>>;
    fn health_boxed(self: Arc<Self>) -> BoxFuture<HealthStatus>;
}

impl<R: NodeRunner> DynRunner for R {
    fn run_boxed(self: Arc<Self>, shutdown: ShutdownSignal) -> BoxFuture<Result<(), NodeFailure>> {
        Box::pin(async move { self.run(shutdown).await })
    }

    fn health_boxed(self: Arc<Self>) -> BoxFuture<HealthStatus> {
        Box::pin(async move { self.health_check().await })
    }
}
