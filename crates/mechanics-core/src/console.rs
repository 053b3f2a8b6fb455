//! What a job writes with `console`, and what a run hands back: the outcome plus that output.
//!
//! The engine never prints a job's console output: it captures it per job, up to
//! [`MAX_CONSOLE_BYTES`], and returns it with the result, so the caller decides where it goes
//! (`mechanics run` prints it on stderr, the server stores it with the task attempt).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::MechanicsError;

/// Most bytes of console messages one job may keep; past it the engine keeps one truncation line
/// and drops the rest. The captured text lives on the job's thread, so it also counts against the
/// job's memory limit.
pub const MAX_CONSOLE_BYTES: usize = 64 * 1024;

/// The `console` method a line was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleLevel {
    /// `console.log`
    Log,
    /// `console.info`
    Info,
    /// `console.warn`
    Warn,
    /// `console.error`
    Error,
    /// `console.debug`
    Debug,
}

impl ConsoleLevel {
    /// The method's name: `log`, `info`, `warn`, `error`, `debug`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleLevel::Log => "log",
            ConsoleLevel::Info => "info",
            ConsoleLevel::Warn => "warn",
            ConsoleLevel::Error => "error",
            ConsoleLevel::Debug => "debug",
        }
    }
}

impl std::fmt::Display for ConsoleLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call of a `console` method: its arguments formatted into one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleLine {
    /// Which method.
    pub level: ConsoleLevel,
    /// When, in unix milliseconds.
    pub ts: i64,
    /// The formatted arguments, separated by spaces.
    pub message: String,
}

/// The end of one job: its result or error, and every console line it wrote (also when it failed:
/// that is when people need them most).
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutput {
    /// The JSON result, or why there is none.
    pub result: Result<Value, MechanicsError>,
    /// The captured console output, in order.
    pub console: Vec<ConsoleLine>,
}

impl JobOutput {
    /// An outcome with no console output (the job never ran, or wrote nothing).
    pub fn without_console(result: Result<Value, MechanicsError>) -> Self {
        Self {
            result,
            console: Vec::new(),
        }
    }

    pub(crate) fn without_console_error(error: MechanicsError) -> Self {
        Self::without_console(Err(error))
    }
}
