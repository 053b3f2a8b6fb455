//! What a js worker wrote with `console`: the lines a node sends back with a job's answer, and
//! the lines the store keeps per task attempt.
//!
//! The engine has its own types for them (it does not know this crate, nor this one the engine);
//! the shapes are the same, so a line reads alike in the node protocol, the store and the API.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `console` method a line was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The method's name, as in JSON: `log`, `info`, `warn`, `error`, `debug`.
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

impl fmt::Display for ConsoleLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call of a `console` method in a job: `{ "level", "ts", "message" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleLine {
    /// Which method.
    pub level: ConsoleLevel,
    /// When, in unix milliseconds (the node's clock).
    pub ts: i64,
    /// The formatted arguments. Once stored by the coordinator, without any secret it knows.
    pub message: String,
}

/// A console line of one attempt of a task, as `GET /api/v1/tasks/{id}` shows it:
/// `{ "attempt", "level", "ts", "message" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptConsoleLine {
    /// The task attempt that wrote it (the task's `attempt` while it ran).
    pub attempt: u32,
    /// The line.
    #[serde(flatten)]
    pub line: ConsoleLine,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_attempts_line_is_flat_json_with_a_lowercase_level() {
        let line = AttemptConsoleLine {
            attempt: 2,
            line: ConsoleLine {
                level: ConsoleLevel::Warn,
                ts: 1_700_000_000_123,
                message: "careful".into(),
            },
        };
        let value = serde_json::to_value(&line).unwrap();
        assert_eq!(
            value,
            json!({ "attempt": 2, "level": "warn", "ts": 1_700_000_000_123_i64, "message": "careful" })
        );
        assert_eq!(
            serde_json::from_value::<AttemptConsoleLine>(value).unwrap(),
            line
        );
        let unknown = serde_json::from_value::<ConsoleLine>(
            json!({ "level": "trace", "ts": 1, "message": "x" }),
        );
        assert!(unknown.is_err());
    }
}
