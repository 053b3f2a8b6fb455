//! `mechanics-core`: the sandboxed JavaScript engine that runs every Mechanics job.
//!
//! A job is an ES module whose default export is called with a JSON argument; its JSON result is
//! returned. Jobs run on Boa inside a [`MechanicsPool`] of worker threads, each job in a fresh
//! context, under [`MechanicsExecutionLimits`](job::MechanicsExecutionLimits) that hold for
//! synchronous code, promise callbacks and native built-ins alike (see `ARCHITECTURE.md` for the
//! one case only a process boundary can stop).
//!
//! This crate must not know about tasks, databases or HTTP servers, must not read files or open
//! connections on a job's behalf except through configured `mechanics:*` modules, and never
//! prints: it reports through return values.

pub mod console;
pub mod endpoint;
mod engine;
mod error;
pub mod javascript;
pub mod job;
mod memory;
mod modules;
mod pool;
mod stack_guard;
pub mod typescript;

pub use console::{ConsoleLevel, ConsoleLine, JobOutput};
pub use error::{MechanicsError, MechanicsErrorKind};
pub use memory::{JobMemoryAllocator, memory_limits_enforced, release_freed_memory};
pub use pool::{MechanicsPool, MechanicsPoolConfig, MechanicsPoolStats};
