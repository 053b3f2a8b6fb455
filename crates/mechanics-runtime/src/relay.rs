//! Relaying a child's JSON log lines as this process's own events.
//!
//! A child that logs with `tracing-subscriber`'s JSON format writes one object per line:
//! `{"timestamp", "level", "fields": {"message", ...}, "target", "span"?, "spans"?}`. Logged as
//! text, such a line would carry two timestamps and two levels. [`relay`] re-emits it instead as
//! an event with the child's level, target and fields (the fields of its spans after its own),
//! plus a `node` field naming the child, so that every output format of this process shows it
//! once, as if it had been logged here. The caller relays outside the supervisor's `node` span,
//! which would name the node a second time.
//!
//! `tracing` events need `'static` metadata, and a child's target and field names are only known
//! at run time: each distinct (level, target, field names) gets a callsite leaked once and
//! registered with `tracing`, like the callsites its macros create. The children are our own
//! nodes, so the set is small; past [`MAX_CALLSITES`] a line is not relayed and its caller logs it
//! as plain text, so that a child cannot make this process grow without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};

use serde_json::{Map, Value};
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{DisplayValue, FieldSet};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};

/// Distinct callsites relayed events may create in this process.
pub(crate) const MAX_CALLSITES: usize = 1024;
/// Fields kept of one relayed event, `node` included; the rest are dropped.
const MAX_FIELDS: usize = 32;
/// The field naming the child.
const NODE_FIELD: &str = "node";

/// Re-emits `line`, a JSON log line of the child `node`, as an event of this process. Returns a
/// one-line text form of it (`LEVEL target: message field=value ...`) for the child's stderr
/// tail, or `None` when the line is not such a JSON object (or no callsite is left for it): the
/// caller then logs it as text.
pub(crate) fn relay(node: &str, line: &str) -> Option<String> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let level: Level = object.get("level")?.as_str()?.parse().ok()?;
    let target = object.get("target")?.as_str()?;
    let fields = fields_of(&object, node)?;
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    let callsite = callsite(level, target, &names)?;
    let summary = summary(level, target, &fields);
    if callsite.interest.load(Ordering::Relaxed) == NEVER {
        return Some(summary);
    }
    let metadata = callsite.metadata();
    let values: Vec<&dyn tracing::Value> = fields.iter().map(|(_, v)| v.as_value()).collect();
    let values: Vec<Option<&dyn tracing::Value>> = values.into_iter().map(Some).collect();
    let value_set = metadata.fields().value_set_all(&values);
    tracing::dispatcher::get_default(|dispatch| {
        if dispatch.enabled(metadata) {
            dispatch.event(&Event::new(metadata, &value_set));
        }
    });
    Some(summary)
}

/// A field's value, typed as the child wrote it.
enum FieldValue {
    /// Recorded as displayed, as the child's `%` fields were: text formats would quote a plain
    /// string (`node="node-1"`), unlike the same field of an event of this process.
    Text(DisplayValue<String>),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Bool(bool),
}

impl FieldValue {
    fn text(text: String) -> FieldValue {
        FieldValue::Text(tracing::field::display(text))
    }

    fn of(value: &Value) -> FieldValue {
        match value {
            Value::String(text) => FieldValue::text(text.clone()),
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => n
                .as_u64()
                .map(FieldValue::Unsigned)
                .or_else(|| n.as_i64().map(FieldValue::Signed))
                .or_else(|| n.as_f64().map(FieldValue::Float))
                .unwrap_or_else(|| FieldValue::text(n.to_string())),
            other => FieldValue::text(other.to_string()),
        }
    }

    fn as_value(&self) -> &dyn tracing::Value {
        match self {
            FieldValue::Text(text) => text,
            FieldValue::Signed(n) => n,
            FieldValue::Unsigned(n) => n,
            FieldValue::Float(n) => n,
            FieldValue::Bool(b) => b,
        }
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Text(text) => text.fmt(f),
            FieldValue::Signed(n) => n.fmt(f),
            FieldValue::Unsigned(n) => n.fmt(f),
            FieldValue::Float(n) => n.fmt(f),
            FieldValue::Bool(b) => b.fmt(f),
        }
    }
}

/// The event's fields (`message` first), then its spans' fields, innermost span first, each
/// name once, then `node`: at most [`MAX_FIELDS`]. `None` when the line has no `fields` object.
fn fields_of(object: &Map<String, Value>, node: &str) -> Option<Vec<(String, FieldValue)>> {
    let own = object.get("fields")?.as_object()?;
    let mut fields: Vec<(String, FieldValue)> = Vec::new();
    let add = |name: &str, value: &Value, fields: &mut Vec<(String, FieldValue)>| {
        let taken = name == NODE_FIELD || fields.iter().any(|(n, _)| n == name);
        if !taken && fields.len() < MAX_FIELDS - 1 {
            fields.push((name.to_owned(), FieldValue::of(value)));
        }
    };
    if let Some(message) = own.get("message") {
        add("message", message, &mut fields);
    }
    for (name, value) in own {
        add(name, value, &mut fields);
    }
    let spans = object.get("spans").and_then(Value::as_array);
    for span in spans
        .into_iter()
        .flatten()
        .rev()
        .filter_map(Value::as_object)
    {
        for (name, value) in span.iter().filter(|(name, _)| name.as_str() != "name") {
            add(name, value, &mut fields);
        }
    }
    fields.push((NODE_FIELD.to_owned(), FieldValue::text(node.to_owned())));
    Some(fields)
}

/// `LEVEL target: message name=value ...`.
fn summary(level: Level, target: &str, fields: &[(String, FieldValue)]) -> String {
    let mut text = format!("{level} {target}:");
    for (name, value) in fields {
        if name == "message" {
            text.push_str(&format!(" {value}"));
        } else {
            text.push_str(&format!(" {name}={value}"));
        }
    }
    text
}

const NEVER: u8 = 0;
const SOMETIMES: u8 = 1;
const ALWAYS: u8 = 2;

/// The callsite of relayed events with one level, target and set of field names.
struct RelayCallsite {
    /// Set once, right after the callsite is leaked and before it is registered.
    metadata: OnceLock<Metadata<'static>>,
    interest: AtomicU8,
}

impl Callsite for RelayCallsite {
    fn set_interest(&self, interest: Interest) {
        let interest = if interest.is_never() {
            NEVER
        } else if interest.is_always() {
            ALWAYS
        } else {
            SOMETIMES
        };
        self.interest.store(interest, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        // `callsite` sets the metadata before it registers the callsite, and only registered
        // callsites are asked for it.
        self.metadata
            .get()
            .expect("a relay callsite's metadata is set before it is registered")
    }
}

type CallsiteKey = (Level, String, Vec<String>);

static CALLSITES: LazyLock<Mutex<HashMap<CallsiteKey, &'static RelayCallsite>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The callsite for `level`, `target` and `names`, made and registered on first use; `None`
/// once [`MAX_CALLSITES`] exist and this is not one of them.
fn callsite(level: Level, target: &str, names: &[&str]) -> Option<&'static RelayCallsite> {
    let key: CallsiteKey = (
        level,
        target.to_owned(),
        names.iter().map(|n| (*n).to_owned()).collect(),
    );
    // A panic elsewhere while the map was held leaves it whole: an insert is the last step.
    let mut callsites = CALLSITES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(callsite) = callsites.get(&key) {
        return Some(callsite);
    }
    if callsites.len() >= MAX_CALLSITES {
        return None;
    }
    let leak = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
    let names: &'static [&'static str] = Box::leak(
        names
            .iter()
            .map(|n| leak(n))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let callsite: &'static RelayCallsite = Box::leak(Box::new(RelayCallsite {
        metadata: OnceLock::new(),
        interest: AtomicU8::new(SOMETIMES),
    }));
    let metadata = Metadata::new(
        "relayed",
        leak(target),
        level,
        None,
        None,
        None,
        FieldSet::new(names, Identifier(callsite)),
        Kind::EVENT,
    );
    let _ = callsite.metadata.set(metadata);
    tracing::callsite::register(callsite);
    callsites.insert(key, callsite);
    Some(callsite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_keeps_its_level_target_and_fields_once_with_the_node() {
        let line = r#"{"timestamp":"2026-12-04T17:00:00Z","level":"WARN","fields":{"message":"slow job","job_id":"j-1","ms":1500,"node":"spoofed"},"target":"mechanics_node::service","spans":[{"name":"job","attempt":2,"ms":7}]}"#;
        assert_eq!(
            relay("node-1", line).as_deref(),
            Some("WARN mechanics_node::service: slow job job_id=j-1 ms=1500 attempt=2 node=node-1")
        );
    }

    #[test]
    fn other_lines_are_left_to_the_caller() {
        for line in [
            "2026-12-04T17:00:00Z INFO plain text",
            "{\"level\":\"INFO\"}",
            "{\"level\":\"LOUD\",\"target\":\"t\",\"fields\":{}}",
            "[1,2]",
            "",
        ] {
            assert_eq!(relay("node-1", line), None, "{line}");
        }
    }
}
