//! One responder per source kind: the request that posts a reply where the event came from, and
//! what the platform's answer means.
//!
//! | kind | request |
//! |---|---|
//! | github | `POST {api}/repos/{owner}/{repo}/issues/{number}/comments` `{ "body" }`, `Authorization: Bearer` |
//! | gitlab | `POST {api}/projects/{id}/issues/{iid}/notes` (or `merge_requests`) `{ "body" }`, `PRIVATE-TOKEN` |
//! | slack | `POST {api}/chat.postMessage` `{ "channel", "text", "thread_ts" }`, `Authorization: Bearer` |
//! | telegram | `POST {api}/bot{token}/sendMessage` `{ "chat_id", "text", "reply_to_message_id" }` |
//! | generic | `POST {api_base_url}` `{ "type": "reply", "event_id", "delivery_id", "reply" }` signed with Standard Webhooks |
//!
//! Answers: 2xx is done (Slack: only with `"ok": true`); 429, 5xx, GitHub's 403 with
//! `x-ratelimit-remaining: 0`, Slack's `ratelimited` and network errors are transient, with the
//! delay the platform asked for (`Retry-After`, rate-limit reset headers, Telegram's
//! `parameters.retry_after`) when it gave one; any other 4xx is permanent.

use std::time::Duration;

use mechanics_proto::domain::{Event, SourceKind, SourceSpec};
use serde_json::{Value, json};

use crate::webhooks::verify::standard_webhooks_signature;

/// The longest delay a platform's answer may impose on a retry.
const MAX_HINTED_DELAY: Duration = Duration::from_secs(3600);

/// A request to post one reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outbound {
    pub(crate) url: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

/// What came of posting a reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sent {
    /// The platform took it.
    Done,
    /// Worth another try, after `delay` if the platform said when.
    Transient {
        delay: Option<Duration>,
        error: String,
    },
    /// Another try would fail the same way.
    Permanent(String),
}

/// The base URL of `spec`'s platform API, without a trailing `/`: its `api_base_url`, or the
/// platform's public API (`None` for a generic source without one).
pub(crate) fn api_base(spec: &SourceSpec) -> Option<String> {
    let api = spec.api_base_url.as_deref().or(default_api(spec.kind))?;
    Some(api.trim_end_matches('/').to_owned())
}

fn default_api(kind: SourceKind) -> Option<&'static str> {
    match kind {
        SourceKind::Github => Some("https://api.github.com"),
        SourceKind::Gitlab => Some("https://gitlab.com/api/v4"),
        SourceKind::Slack => Some("https://slack.com/api"),
        SourceKind::Telegram => Some("https://api.telegram.org"),
        SourceKind::Generic => None,
    }
}

/// The platform's name for messages.
pub(crate) fn platform(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Github => "GitHub",
        SourceKind::Gitlab => "GitLab",
        SourceKind::Slack => "Slack",
        SourceKind::Telegram => "Telegram",
        SourceKind::Generic => "the callback",
    }
}

fn field<'a>(payload: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    payload
        .pointer(pointer)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("the event's payload has no {pointer:?} to reply to"))
}

/// A number or a numeric string, as an id in a URL.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// Builds the request posting `text` in reply to `event`. `token` is the source's write-back
/// token, `secret` its webhook secret (the generic responder signs with it). The error is
/// permanent: the source or the payload lacks what a reply needs.
pub(crate) fn build(
    spec: &SourceSpec,
    token: Option<&str>,
    secret: Option<&[u8]>,
    event: &Event,
    text: &str,
    now_secs: i64,
) -> Result<Outbound, String> {
    let api = api_base(spec)
        .ok_or("a generic source needs api_base_url: the URL its replies are posted to")?;
    let need_token = || {
        token.ok_or_else(|| {
            format!(
                "the source {:?} has no token_env or token_file, so it cannot write back",
                spec.name
            )
        })
    };
    let payload = &event.payload;
    let json_body = |value: Value| serde_json::to_vec(&value).unwrap_or_default();
    match spec.kind {
        SourceKind::Github => {
            let token = need_token()?;
            let repo = field(payload, "/repository/full_name")?
                .as_str()
                .filter(|r| r.split('/').count() == 2 && !r.contains(['?', '#', ' ']))
                .ok_or("the event's repository.full_name is not owner/repo")?;
            let number = field(payload, "/issue/number")
                .or_else(|_| field(payload, "/pull_request/number"))?;
            let number = id_text(number).ok_or("the event's issue number is not a number")?;
            Ok(Outbound {
                url: format!("{api}/repos/{repo}/issues/{number}/comments"),
                headers: vec![
                    ("authorization", format!("Bearer {token}")),
                    ("accept", "application/vnd.github+json".to_owned()),
                    ("x-github-api-version", "2022-11-28".to_owned()),
                ],
                body: json_body(json!({ "body": text })),
            })
        }
        SourceKind::Gitlab => {
            let token = need_token()?;
            let project = id_text(field(payload, "/project/id")?)
                .ok_or("the event's project.id is not a number")?;
            let kind = payload.get("object_kind").and_then(Value::as_str);
            let (noteable, iid) = match kind {
                Some("merge_request") => {
                    ("merge_requests", field(payload, "/object_attributes/iid")?)
                }
                Some("issue") => ("issues", field(payload, "/object_attributes/iid")?),
                Some("note") => match field(payload, "/issue/iid") {
                    Ok(iid) => ("issues", iid),
                    Err(_) => ("merge_requests", field(payload, "/merge_request/iid")?),
                },
                _ => {
                    return Err(
                        "only issue, merge_request and note events of GitLab can be replied to"
                            .to_owned(),
                    );
                }
            };
            let iid = id_text(iid).ok_or("the event's iid is not a number")?;
            Ok(Outbound {
                url: format!("{api}/projects/{project}/{noteable}/{iid}/notes"),
                headers: vec![("private-token", token.to_owned())],
                body: json_body(json!({ "body": text })),
            })
        }
        SourceKind::Slack => {
            let token = need_token()?;
            let channel = field(payload, "/event/channel")?.clone();
            // A reply goes in the thread: the thread's root if the message is in one.
            let thread = field(payload, "/event/thread_ts")
                .or_else(|_| field(payload, "/event/ts"))?
                .clone();
            Ok(Outbound {
                url: format!("{api}/chat.postMessage"),
                headers: vec![("authorization", format!("Bearer {token}"))],
                body: json_body(json!({ "channel": channel, "text": text, "thread_ts": thread })),
            })
        }
        SourceKind::Telegram => {
            let token = need_token()?;
            let content = [
                "message",
                "edited_message",
                "channel_post",
                "edited_channel_post",
            ]
            .into_iter()
            .find_map(|k| payload.get(k))
            .ok_or("only message updates of Telegram can be replied to")?;
            let chat = field(content, "/chat/id")?.clone();
            let message = field(content, "/message_id")?.clone();
            Ok(Outbound {
                url: format!("{api}/bot{token}/sendMessage"),
                headers: Vec::new(),
                body: json_body(
                    json!({ "chat_id": chat, "text": text, "reply_to_message_id": message }),
                ),
            })
        }
        SourceKind::Generic => {
            let body = json_body(json!({
                "type": "reply",
                "event_id": event.id,
                "delivery_id": event.delivery_id,
                "reply": text,
            }));
            // The same id on every try lets the receiver drop a repeated reply.
            let id = format!("reply-{}", event.id);
            let mut headers = vec![
                ("webhook-id", id.clone()),
                ("webhook-timestamp", now_secs.to_string()),
            ];
            if let Some(secret) = secret {
                headers.push((
                    "webhook-signature",
                    standard_webhooks_signature(secret, &id, now_secs, &body),
                ));
            }
            if let Some(token) = token {
                headers.push(("authorization", format!("Bearer {token}")));
            }
            Ok(Outbound {
                url: api,
                headers,
                body,
            })
        }
    }
}

/// Reads what the platform's answer means.
pub(crate) fn classify(
    kind: SourceKind,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Sent {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let who = platform(kind);
    let header_secs = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let hinted = || {
        let secs = header_secs("retry-after")
            .or_else(|| {
                // GitHub (`x-ratelimit-reset`) and GitLab (`ratelimit-reset`) give the unix time
                // at which the limit resets.
                header_secs("x-ratelimit-reset")
                    .or_else(|| header_secs("ratelimit-reset"))
                    .map(|reset| reset.saturating_sub(now_secs))
            })
            .or_else(|| {
                json.as_ref()
                    .and_then(|j| j.pointer("/parameters/retry_after"))
                    .and_then(Value::as_i64)
            })?;
        Some(Duration::from_secs(secs.max(0).unsigned_abs()).min(MAX_HINTED_DELAY))
    };
    if (200..300).contains(&status) {
        if kind == SourceKind::Slack {
            let ok = json
                .as_ref()
                .and_then(|j| j.get("ok"))
                .and_then(Value::as_bool);
            if ok != Some(true) {
                let error = json
                    .as_ref()
                    .and_then(|j| j.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("no \"ok\": true in the answer");
                let message = format!("Slack refused the message: {error}");
                return if error == "ratelimited" {
                    Sent::Transient {
                        delay: hinted(),
                        error: message,
                    }
                } else {
                    Sent::Permanent(message)
                };
            }
        }
        return Sent::Done;
    }
    let message = format!("{who} answered {status}: {snippet}");
    let github_rate_limited = kind == SourceKind::Github
        && status == 403
        && headers
            .get("x-ratelimit-remaining")
            .is_some_and(|v| v.as_bytes() == b"0");
    if status == 429 || status >= 500 || github_rate_limited {
        Sent::Transient {
            delay: hinted(),
            error: message,
        }
    } else {
        Sent::Permanent(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mechanics_proto::domain::EventState;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn event(payload: Value) -> Event {
        Event {
            id: 9,
            source: "src".into(),
            delivery_id: "d".into(),
            event_type: "t".into(),
            payload,
            state: EventState::Matched,
            error: None,
            write_back_attempts: 0,
            next_write_back_at: None,
            received_at: 0,
            updated_at: 0,
        }
    }

    fn spec(kind: SourceKind) -> SourceSpec {
        SourceSpec {
            name: "src".into(),
            kind,
            secret_env: Some("S".into()),
            secret_file: None,
            token_env: Some("T".into()),
            token_file: None,
            api_base_url: None,
            actor_path: None,
        }
    }

    #[test]
    fn requests_per_kind() {
        let gh = build(
            &spec(SourceKind::Github),
            Some("tok"),
            None,
            &event(json!({ "repository": { "full_name": "acme/app" }, "issue": { "number": 42 } })),
            "hi",
            0,
        )
        .unwrap();
        assert_eq!(
            gh.url,
            "https://api.github.com/repos/acme/app/issues/42/comments"
        );
        assert_eq!(gh.headers[0], ("authorization", "Bearer tok".to_owned()));
        let tg = build(
            &spec(SourceKind::Telegram),
            Some("123:abc"),
            None,
            &event(json!({ "update_id": 1, "message": { "message_id": 5, "chat": { "id": -7 } } })),
            "hi",
            0,
        )
        .unwrap();
        assert_eq!(tg.url, "https://api.telegram.org/bot123:abc/sendMessage");
        let body: Value = serde_json::from_slice(&tg.body).unwrap();
        assert_eq!(
            body,
            json!({ "chat_id": -7, "text": "hi", "reply_to_message_id": 5 })
        );
        let err = build(
            &spec(SourceKind::Github),
            None,
            None,
            &event(json!({})),
            "hi",
            0,
        )
        .unwrap_err();
        assert!(err.contains("no token_env"), "{err}");
        let err = build(
            &spec(SourceKind::Generic),
            None,
            None,
            &event(json!({})),
            "hi",
            0,
        )
        .unwrap_err();
        assert!(err.contains("api_base_url"), "{err}");
    }

    #[test]
    fn answers_are_classified_with_the_platforms_delay() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            classify(SourceKind::Github, 201, &headers, b"{}", 0),
            Sent::Done
        );
        assert!(matches!(
            classify(SourceKind::Github, 404, &headers, b"{}", 0),
            Sent::Permanent(_)
        ));
        assert!(matches!(
            classify(SourceKind::Github, 502, &headers, b"", 0),
            Sent::Transient { delay: None, .. }
        ));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("1060"));
        assert!(matches!(
            classify(SourceKind::Github, 403, &headers, b"", 1000),
            Sent::Transient { delay: Some(d), .. } if d == Duration::from_secs(60)
        ));
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert!(matches!(
            classify(SourceKind::Github, 429, &headers, b"", 1000),
            Sent::Transient { delay: Some(d), .. } if d == Duration::from_secs(7)
        ));
        let none = HeaderMap::new();
        assert!(matches!(
            classify(SourceKind::Slack, 200, &none, br#"{"ok":false,"error":"channel_not_found"}"#, 0),
            Sent::Permanent(m) if m.contains("channel_not_found")
        ));
        assert!(matches!(
            classify(SourceKind::Telegram, 429, &none, br#"{"ok":false,"parameters":{"retry_after":3}}"#, 0),
            Sent::Transient { delay: Some(d), .. } if d == Duration::from_secs(3)
        ));
    }
}
