//! The executor-node contract (internal, versioned by its path `/v1/`): what the coordinator's
//! fleet client sends to a node and what the node answers.
//!
//! `POST /v1/jobs` takes a [`JobRequest`] and answers `200` with a [`JobResponse`], or an error
//! status with an [`ErrorResponse`]: `422` the script failed, `400` malformed request or invalid
//! job, `401` bad token, `413` body over the limit, `503` overloaded (with `Retry-After`). Both
//! the `200` and the `422` bodies carry what the job wrote with `console` (`console: [...]`,
//! left out when empty, so a peer of an older build reads them as before).
//! `GET /health` is public and answers `200` while the node serves; `GET /stats` (token
//! required) answers [`NodeStats`], with the node's [`PROTOCOL_VERSION`] and capacity: a
//! coordinator reads it on first contact and on every health check of a remote node.
//!
//! The job's `config` and `limits` stay JSON values here: this crate does not know the engine's
//! types, and the node validates them so that a bad value is a `400` naming the field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::ConsoleLine;

/// The version of this contract. A node reports it in `/stats`; a coordinator sends jobs only
/// to a node that reports the version it speaks (a node without one is of an older build).
pub const PROTOCOL_VERSION: u32 = 1;
/// Path of the job endpoint.
pub const JOBS_PATH: &str = "/v1/jobs";
/// Path of the public liveness check.
pub const HEALTH_PATH: &str = "/health";
/// Path of the node's statistics.
pub const STATS_PATH: &str = "/stats";
/// Response header a node sets (to `1`) when it wants to be recycled: it ran its job quota, its
/// resident memory passed the watermark, or its pool gave up on a thread. The fleet drains it
/// and starts a fresh process.
pub const RECYCLE_HEADER: &str = "x-mechanics-recycle";
/// Environment variable holding a node's bearer token.
pub const TOKEN_ENV: &str = "MECHANICS_NODE_TOKEN";
/// The error kind of a job that killed its node twice: it is failed, never retried again.
pub const SANDBOX_CRASHED: &str = "sandbox_crashed";

/// One job for a node: an ES module, its argument, and its `MechanicsConfig` and
/// `MechanicsExecutionLimits` as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The coordinator's id of the job; stays the same across attempts.
    pub job_id: String,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// The ES module whose default export is called.
    pub module_source: String,
    /// The argument of the default export.
    #[serde(default)]
    pub arg: Value,
    /// The job's `MechanicsConfig` (endpoints); absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// The job's `MechanicsExecutionLimits`; absent means the node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    /// When `module_source` was transpiled (a TypeScript worker): the engine's `SourceMap` back to
    /// the original, so that positions in errors and console output name its lines; absent for
    /// JavaScript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_map: Option<Value>,
}

impl JobRequest {
    /// A first attempt of `module_source` with `arg`, no config and the node's default limits.
    pub fn new(job_id: impl Into<String>, module_source: impl Into<String>, arg: Value) -> Self {
        JobRequest {
            job_id: job_id.into(),
            attempt: 1,
            module_source: module_source.into(),
            arg,
            config: None,
            limits: None,
            source_map: None,
        }
    }
}

/// The answer to a job that returned: `{ "result": ..., "console": [...] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResponse {
    /// The JSON value the module's default export returned (awaited).
    pub result: Value,
    /// What the job wrote with `console`, in order (the engine caps it at 64 KiB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<ConsoleLine>,
}

/// What went wrong, by machine-readable kind (`execution`, `limit_exceeded`, `queue_full`,
/// `bad_request`, `unauthorized`, ...) and a message for the job's author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// The kind, snake_case.
    pub kind: String,
    /// What happened and, where there is one, what to change. Never holds a secret.
    pub message: String,
}

/// The body of every error status: `{ "error": { "kind", "message" } }`, and for a script that
/// failed (`422`) what it wrote with `console` before it did (`console: [...]`): a failing job
/// is when its author needs those lines most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: JobError,
    /// What the job wrote with `console`, in order; empty when it never ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<ConsoleLine>,
}

impl ErrorResponse {
    /// An error body of `kind` with `message`, without console output.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorResponse {
            error: JobError {
                kind: kind.into(),
                message: message.into(),
            },
            console: Vec::new(),
        }
    }
}

/// `GET /stats`: the node's counters, memory and pool state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's name (`--name`), if it was given one.
    pub name: Option<String>,
    /// The node's process id.
    pub pid: u32,
    /// Milliseconds since the node started serving.
    pub uptime_ms: u64,
    /// Jobs answered (results and script errors alike).
    pub jobs_run: u64,
    /// Jobs being run right now.
    pub jobs_in_flight: u64,
    /// Resident memory of the process, in bytes.
    pub rss_bytes: u64,
    /// The process exits when its resident memory passes this, if set.
    pub memory_cap_bytes: Option<u64>,
    /// Whether the node asks to be recycled (see [`RECYCLE_HEADER`]).
    pub recycle_due: bool,
    /// The engine pool's statistics (`MechanicsPoolStats` as JSON).
    pub pool: Value,
    /// The node's [`PROTOCOL_VERSION`]; 0 from a node of a build before versioning.
    #[serde(default)]
    pub protocol: u32,
    /// Jobs the node runs at once (its engine workers): how many a coordinator may send it at a
    /// time unless the node's registration says otherwise. 0 when unknown.
    #[serde(default)]
    pub capacity: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ConsoleLevel;
    use serde_json::json;

    #[test]
    fn a_job_request_needs_only_id_attempt_and_source() {
        let request: JobRequest = serde_json::from_value(
            json!({ "job_id": "j1", "attempt": 2, "module_source": "export default () => 1" }),
        )
        .unwrap();
        assert_eq!(request.arg, Value::Null);
        assert_eq!((request.config, request.limits), (None, None));
        let unknown = serde_json::from_value::<JobRequest>(
            json!({ "job_id": "j1", "attempt": 1, "module_source": "x", "extra": 1 }),
        );
        assert!(unknown.unwrap_err().to_string().contains("extra"));
    }

    #[test]
    fn errors_have_the_documented_shape() {
        let body = serde_json::to_value(ErrorResponse::new("execution", "boom")).unwrap();
        assert_eq!(
            body,
            json!({ "error": { "kind": "execution", "message": "boom" } })
        );
    }

    fn lines() -> Vec<ConsoleLine> {
        vec![
            ConsoleLine {
                level: ConsoleLevel::Log,
                ts: 1_700_000_000_000,
                message: "starting".into(),
            },
            ConsoleLine {
                level: ConsoleLevel::Error,
                ts: 1_700_000_000_007,
                message: "it broke: {\"n\":1}\nsecond line".into(),
            },
        ]
    }

    #[test]
    fn console_lines_round_trip_with_results_and_script_errors() {
        let answer = JobResponse {
            result: json!({ "ok": true }),
            console: lines(),
        };
        let body = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            body["console"][1],
            json!({ "level": "error", "ts": 1_700_000_000_007_i64, "message": "it broke: {\"n\":1}\nsecond line" })
        );
        assert_eq!(serde_json::from_value::<JobResponse>(body).unwrap(), answer);

        let failed = ErrorResponse {
            console: lines(),
            ..ErrorResponse::new("execution", "Error: boom")
        };
        let body = serde_json::to_string(&failed).unwrap();
        assert_eq!(
            serde_json::from_str::<ErrorResponse>(&body).unwrap(),
            failed
        );
    }

    #[test]
    fn without_console_output_the_bodies_are_what_older_peers_write_and_read() {
        // Nothing written: no `console` key, so an older fleet client parses the answer.
        let answer = JobResponse {
            result: json!(1),
            console: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({ "result": 1 })
        );
        // An older node sends no `console`: it reads as none.
        let old: JobResponse = serde_json::from_value(json!({ "result": 1 })).unwrap();
        assert_eq!(old, answer);
        let old: ErrorResponse =
            serde_json::from_value(json!({ "error": { "kind": "execution", "message": "boom" } }))
                .unwrap();
        assert_eq!(old, ErrorResponse::new("execution", "boom"));
    }
}
