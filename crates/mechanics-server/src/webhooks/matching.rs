//! Which workers an event is for: a webhook trigger names the source, event-type patterns and an
//! optional payload filter.
//!
//! Patterns: `*` stands for any run of characters (dots included), everything else is literal:
//! `issues.*` matches `issues.opened`, `*` matches every type, `issue_comment.created` only
//! itself.
//!
//! Filter: a JSON object of dotted paths into the payload to expected values, e.g.
//! `{ "repository.full_name": "acme/app", "issue.labels.0.name": ["bug", "crash"] }`. Every path
//! must be present and equal to its value; an array of values means "any one of these". A path
//! segment that is a number indexes an array.

use mechanics_proto::domain::{Event, Trigger, WebhookTrigger, Worker};
use serde_json::Value;

/// Whether `worker` has a webhook trigger that `event` satisfies.
pub fn worker_matches(worker: &Worker, event: &Event) -> bool {
    worker.spec.triggers.iter().any(|trigger| match trigger {
        Trigger::Webhook(webhook) => trigger_matches(webhook, event),
        _ => false,
    })
}

/// Whether one webhook trigger matches `event`.
pub fn trigger_matches(trigger: &WebhookTrigger, event: &Event) -> bool {
    trigger.source == event.source
        && trigger
            .events
            .iter()
            .any(|pattern| pattern_matches(pattern, &event.event_type))
        && trigger
            .filter
            .as_ref()
            .is_none_or(|filter| filter_matches(filter, &event.payload))
}

/// Glob match where `*` matches any run of characters.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether `payload` has every path of `filter` with its expected value. A filter that is not an
/// object (refused when the worker is added) matches nothing.
pub fn filter_matches(filter: &Value, payload: &Value) -> bool {
    let Some(paths) = filter.as_object() else {
        return false;
    };
    paths.iter().all(|(path, expected)| {
        let Some(actual) = lookup(payload, path) else {
            return false;
        };
        match expected {
            Value::Array(choices) => choices.iter().any(|choice| choice == actual),
            single => single == actual,
        }
    })
}

/// The value at dotted `path` in `value` (a number segment indexes an array).
pub(crate) fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |node, segment| match node {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_with_wildcards() {
        assert!(pattern_matches("issues.*", "issues.opened"));
        assert!(pattern_matches("*", "anything.at.all"));
        assert!(pattern_matches(
            "issue_comment.created",
            "issue_comment.created"
        ));
        assert!(pattern_matches("*.created", "issue_comment.created"));
        assert!(pattern_matches("pull_*.*ed", "pull_request.closed"));
        assert!(!pattern_matches("issues.*", "issue_comment.created"));
        assert!(!pattern_matches("issues", "issues.opened"));
        assert!(!pattern_matches("*.opened", "issues.closed"));
    }

    #[test]
    fn filters_compare_dotted_paths() {
        let payload = json!({
            "repository": { "full_name": "acme/app" },
            "issue": { "labels": [{ "name": "bug" }] },
            "event": { "channel": "C1" }
        });
        assert!(filter_matches(
            &json!({ "repository.full_name": "acme/app" }),
            &payload
        ));
        assert!(filter_matches(
            &json!({ "issue.labels.0.name": ["crash", "bug"], "event.channel": "C1" }),
            &payload
        ));
        assert!(!filter_matches(
            &json!({ "repository.full_name": "acme/web" }),
            &payload
        ));
        assert!(!filter_matches(
            &json!({ "repository.owner": "acme" }),
            &payload
        ));
        assert!(!filter_matches(&json!("acme/app"), &payload));
        assert!(filter_matches(&json!({}), &payload));
    }
}
