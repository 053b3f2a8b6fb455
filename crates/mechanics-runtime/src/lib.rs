//! `mechanics-runtime`: the supervisor that keeps Mechanics' executor nodes and process workers
//! alive.
//!
//! A [`Supervisor`] runs each node (a [`NodeRunner`], such as a [`ProcessNode`] child process)
//! in a loop of its own: it starts an instance, health-checks it every interval, and when the
//! instance ends applies the node's [`RestartPolicy`] (never, on failure with exponential
//! backoff, always) and its crash-loop breaker (more than 5 deaths in 60 s stops respawning
//! until a reset or a 5 min cool-down). Shutdown — a call, SIGTERM or SIGINT — reaches every node
//! in every state at once: instances get a timeout to stop, then are killed. A [`Launcher`]
//! starts and stops nodes by name at run time; [`NodeSnapshot`]s expose states and counters.
//! [`Runtime`] bundles them behind a builder.
//!
//! A health check or launch that fails because this process is out of descriptors or memory
//! ([`resource_exhaustion`]) is not held against the node: no strike, no death, no breaker
//! count; the check is simply repeated and the launch retried after a short delay.
//!
//! This crate must not know about JavaScript, tasks or databases, must never print (it emits
//! `tracing` events; only [`Runtime::init_logging`], called by a binary, configures output), and
//! must never leave a child process running, unreaped or holding our descriptors.

mod breaker;
mod error;
mod health;
mod launcher;
mod node;
mod policy;
mod process;
mod relay;
mod resource;
mod runtime;
mod shutdown;
mod supervisor;

pub use breaker::{BreakerConfig, BreakerState};
pub use error::{NodeFailure, RuntimeError};
pub use health::HealthChecker;
pub use launcher::{LaunchEntry, Launcher};
pub use node::{HealthStatus, NodeRunner};
pub use policy::{ExponentialBackoff, RestartPolicy};
pub use process::ProcessNode;
pub use resource::{ResourceExhaustion, ShortageLog, resource_exhaustion};
pub use runtime::{LogFormat, Runtime, RuntimeBuilder};
pub use shutdown::{ShutdownHandle, ShutdownSignal};
pub use supervisor::{LastExit, NodeSnapshot, NodeState, Supervisor, SupervisorConfig};
