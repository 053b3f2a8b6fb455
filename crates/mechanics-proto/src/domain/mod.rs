//! Domain types of the coordinator: worker and source specs as users write them, and the records
//! the store keeps (tasks, events, `/logs` entries, the console lines of task attempts) with
//! their states.
//!
//! Ids are `i64` row ids (see [`TaskId`]). Times are unix milliseconds (`i64`), always supplied
//! by the caller, so that nothing here reads a clock.

mod console;
mod duration;
mod policy;
mod queue;
mod remote_node;
mod source;
pub mod time;
mod worker;

pub use console::{AttemptConsoleLine, ConsoleLevel, ConsoleLine};
pub use duration::HumanDuration;
pub use policy::{ActorLimit, ActorRule, PolicySpec, team_entry};
pub use queue::{
    AttemptOutcome, Event, EventId, EventState, LogEntry, LogId, LogOutcome, LogRecord, Task,
    TaskAttempt, TaskId, TaskState, TaskTrigger, UnknownState,
};
pub use remote_node::{LOCAL_NODE_PREFIX, MAX_NODE_CAPACITY, NodeSpec, RemoteNode};
pub use source::{Source, SourceKind, SourceSpec};
pub use worker::{
    CronTrigger, HealthSpec, PullPolicy, RateLimitSpec, ResourcesSpec, RestartPolicyName,
    RestartSpec, RetrySpec, TranspiledModule, Trigger, WebhookTrigger, Worker, WorkerKind,
    WorkerSpec,
};

/// A spec that deserialized but breaks a rule; `field` is the path of the offending field
/// (`triggers[0].cron`, `retry.base_delay`), so the user knows what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the field, as written in the spec.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a worker or source name: 1 to 64 characters of `a-z`, `0-9` and `-`. Names appear in
/// URLs (`/webhooks/{source}`), metric labels and file names, so nothing else is allowed.
pub fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{name:?} is not a valid name: use 1 to 64 characters of a-z, 0-9 and '-'"),
        ))
    }
}

/// Checks the name of an environment variable that holds a secret (`[A-Za-z_][A-Za-z0-9_]*`).
pub(crate) fn validate_env_name(field: &str, name: &str) -> Result<(), SpecError> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{name:?} is not an environment variable name"),
        ))
    }
}

/// Refuses a NUL byte in a string the operating system or a parser receives as a C string (a
/// program, an argument, a file path): it would cut the string short there, so `exec` and `open`
/// refuse it, and only after the spec was stored. `carrier` names what cannot carry it.
pub(crate) fn refuse_nul(field: &str, value: &str, carrier: &str) -> Result<(), SpecError> {
    match value.find('\0') {
        None => Ok(()),
        Some(at) => Err(SpecError::new(
            field,
            format!("{value:?} contains a NUL byte (at byte {at}), which {carrier} cannot carry"),
        )),
    }
}

/// Refuses control characters (NUL, tab, newline, DEL, ...) in a string that must match text
/// from a URL or an HTTP header, which cannot carry them: such a value could never match, or a
/// URL parser would silently drop them.
pub(crate) fn refuse_control(field: &str, value: &str) -> Result<(), SpecError> {
    match value.char_indices().find(|(_, c)| c.is_control()) {
        None => Ok(()),
        Some((at, c)) => Err(SpecError::new(
            field,
            format!(
                "{value:?} contains the control character {:?} (at byte {at}): \
                 control characters are not allowed here",
                c
            ),
        )),
    }
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host, free of control
/// characters (URL parsers drop tabs and newlines without a word, and refuse the rest later).
pub(crate) fn validate_http_url(field: &str, url: &str) -> Result<(), SpecError> {
    refuse_control(field, url)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(SpecError::new(
            field,
            format!("{url:?} is not an http:// or https:// URL"),
        )),
    }
}
