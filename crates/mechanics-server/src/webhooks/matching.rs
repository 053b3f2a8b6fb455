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

/// Why `worker` did not take `event`, for `/logs` and `event show`: `None` when it has no
/// webhook trigger on the event's source (it was never a candidate) or when one matches; else
/// the first reason its first trigger on that source gave, e.g. `repository.full_name: want
/// "acme/web", got "acme/app"`. Filter paths go in name order, not as the YAML wrote them: the
/// spec keeps its filter as a JSON object, whose keys serde_json sorts (keeping the YAML's
/// order would take an order-preserving map through the spec, its storage and the API).
pub fn why_not(worker: &Worker, event: &Event) -> Option<String> {
    let mut on_source = worker
        .spec
        .triggers
        .iter()
        .filter_map(|trigger| match trigger {
            Trigger::Webhook(webhook) if webhook.source == event.source => Some(webhook),
            _ => None,
        });
    let first = on_source.next()?;
    if trigger_matches(first, event) || on_source.any(|other| trigger_matches(other, event)) {
        return None;
    }
    if !first
        .events
        .iter()
        .any(|pattern| pattern_matches(pattern, &event.event_type))
    {
        return Some(format!(
            "event type {:?} matches none of {:?}",
            event.event_type, first.events
        ));
    }
    let paths = first.filter.as_ref()?.as_object()?;
    paths.iter().find_map(|(path, expected)| {
        let want = match expected {
            Value::Array(choices) => format!("one of {}", Value::Array(choices.clone())),
            single => single.to_string(),
        };
        match lookup(&event.payload, path) {
            None => Some(format!(
                "{path}: want {want}, the payload has no such field"
            )),
            Some(actual) if !filter_matches(&json_object(path, expected), &event.payload) => {
                // The trace keeps a glimpse of the payload, not a copy of it.
                let got = match actual {
                    Value::Object(_) => "an object".to_owned(),
                    Value::Array(_) => "an array".to_owned(),
                    scalar => {
                        let text = scalar.to_string();
                        match text.char_indices().nth(100) {
                            Some((at, _)) => format!("{}…", &text[..at]),
                            None => text,
                        }
                    }
                };
                Some(format!("{path}: want {want}, got {got}"))
            }
            Some(_) => None,
        }
    })
}

/// `{ path: expected }`, to check one path of a filter alone.
fn json_object(path: &str, expected: &Value) -> Value {
    let mut one = serde_json::Map::new();
    one.insert(path.to_owned(), expected.clone());
    Value::Object(one)
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
    fn a_miss_names_the_type_or_the_first_filter_path_with_want_and_got() {
        let worker: Worker = serde_json::from_value(json!({
            "spec": {
                "name": "w", "kind": "http", "url": "http://127.0.0.1:9",
                "triggers": [
                    { "cron": "* * * * *" },
                    { "webhook": { "source": "gh", "events": ["issues.*"],
                      "filter": { "repository.full_name": "acme/web", "issue.labels.0.name": ["bug", "crash"] } } },
                ],
            },
            "revision": 1, "created_at": 0, "updated_at": 0,
        }))
        .unwrap();
        let event = |source: &str, event_type: &str, payload: Value| Event {
            id: 1,
            source: source.into(),
            delivery_id: "d".into(),
            event_type: event_type.into(),
            payload,
            state: mechanics_proto::domain::EventState::Received,
            error: None,
            write_back_attempts: 0,
            next_write_back_at: None,
            received_at: 0,
            updated_at: 0,
        };
        let app = json!({
            "repository": { "full_name": "acme/app" }, "issue": { "labels": [{ "name": "bug" }] },
        });
        assert_eq!(
            why_not(&worker, &event("gl", "issues.opened", app.clone())),
            None
        );
        assert_eq!(
            why_not(&worker, &event("gh", "push", app.clone())).unwrap(),
            r#"event type "push" matches none of ["issues.*"]"#
        );
        assert_eq!(
            why_not(&worker, &event("gh", "issues.opened", app)).unwrap(),
            r#"repository.full_name: want "acme/web", got "acme/app""#
        );
        let web = json!({ "repository": { "full_name": "acme/web" }, "issue": { "labels": [] } });
        assert_eq!(
            why_not(&worker, &event("gh", "issues.opened", web)).unwrap(),
            r#"issue.labels.0.name: want one of ["bug","crash"], the payload has no such field"#
        );
        let hit = json!({ "repository": { "full_name": "acme/web" }, "issue": { "labels": [{ "name": "bug" }] } });
        assert_eq!(why_not(&worker, &event("gh", "issues.opened", hit)), None);
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
