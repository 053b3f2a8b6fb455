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
    /// The request may have reached the platform, and its answer was lost (a timeout, a
    /// connection closed after sending): only a look at the platform can tell.
    Unknown(String),
    /// An earlier try's reply is on the platform already: recorded, not posted again.
    Found,
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
                body: json_body(json!({ "body": with_marker(text, event) })),
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
                body: json_body(json!({ "body": with_marker(text, event) })),
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
                body: json_body(json!({
                    "channel": channel, "text": text, "thread_ts": thread,
                    "metadata": {
                        "event_type": SLACK_MARKER_TYPE,
                        "event_payload": { "event": event.id },
                    },
                })),
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

/// The invisible marker a GitHub or GitLab reply to `event` carries (an HTML comment, which
/// neither renders), so that a try whose outcome is unknown can find what an earlier one posted.
pub(crate) fn marker(event: &Event) -> String {
    format!("<!-- mechanics:event {} -->", event.id)
}

fn with_marker(text: &str, event: &Event) -> String {
    format!("{text}\n\n{}", marker(event))
}

/// The Slack message metadata type of our replies (`metadata.event_payload.event` is the
/// event's id).
const SLACK_MARKER_TYPE: &str = "mechanics_reply";

/// A request that lists what may be an earlier try's reply to an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lookup {
    pub(crate) url: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// How to look for a reply to `event` posted by an earlier try: `None` where the platform
/// cannot be searched (Telegram: its bots cannot read a chat's history) or needs no search
/// (a generic receiver drops a repeated `webhook-id` itself). `reply` is the request the try
/// would post.
pub(crate) fn lookup(spec: &SourceSpec, event: &Event, reply: &Outbound) -> Option<Lookup> {
    match spec.kind {
        SourceKind::Github => {
            // Comments come oldest first: only those made since the event arrived.
            let since = chrono::DateTime::from_timestamp_millis(event.received_at)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%SZ");
            Some(Lookup {
                url: format!("{}?per_page=100&since={since}", reply.url),
                headers: reply.headers.clone(),
            })
        }
        SourceKind::Gitlab => Some(Lookup {
            url: format!("{}?sort=desc&order_by=created_at&per_page=100", reply.url),
            headers: reply.headers.clone(),
        }),
        SourceKind::Slack => {
            let body: Value = serde_json::from_slice(&reply.body).ok()?;
            let (channel, thread) = (body.get("channel")?, body.get("thread_ts")?);
            let text = |v: &Value| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            };
            let api = reply.url.trim_end_matches("/chat.postMessage");
            Some(Lookup {
                url: format!(
                    "{api}/conversations.replies?channel={}&ts={}&include_all_metadata=true&limit=200",
                    text(channel),
                    text(thread)
                ),
                headers: reply.headers.clone(),
            })
        }
        SourceKind::Telegram | SourceKind::Generic => None,
    }
}

/// Whether the platform's answer `body` to a [`lookup`] holds our reply to `event`: a message
/// carrying the marker and written by one of `own`, the names of the source's token. Anyone in
/// the thread can paste a marker (a person, another bot); counted as ours, it would make a reply
/// that was never posted look posted. `None`: the token's names are not known (a GitHub App's
/// installation token cannot read `/user`), and a marker counts whoever wrote it, since refusing
/// to decide would never post the reply at all.
pub(crate) fn holds_reply(
    kind: SourceKind,
    body: &Value,
    event: &Event,
    own: Option<&[String]>,
) -> bool {
    let marker = marker(event);
    let by_us = |message: &Value, pointers: &[&str]| {
        pointers.iter().any(|pointer| {
            message
                .pointer(pointer)
                .and_then(Value::as_str)
                .is_some_and(|author| {
                    own.is_none_or(|own| own.iter().any(|name| name.eq_ignore_ascii_case(author)))
                })
        })
    };
    let has_marker = |note: &Value| {
        note.get("body")
            .and_then(Value::as_str)
            .is_some_and(|text| text.contains(&marker))
    };
    match kind {
        SourceKind::Github => body.as_array().is_some_and(|notes| {
            notes
                .iter()
                .any(|note| has_marker(note) && by_us(note, &["/user/login"]))
        }),
        SourceKind::Gitlab => body.as_array().is_some_and(|notes| {
            notes
                .iter()
                .any(|note| has_marker(note) && by_us(note, &["/author/username"]))
        }),
        SourceKind::Slack => {
            body.get("messages")
                .and_then(Value::as_array)
                .is_some_and(|messages| {
                    messages.iter().any(|message| {
                        by_us(message, &["/bot_id", "/user"])
                            && message
                                .pointer("/metadata/event_type")
                                .and_then(Value::as_str)
                                == Some(SLACK_MARKER_TYPE)
                            && message
                                .pointer("/metadata/event_payload/event")
                                .and_then(Value::as_i64)
                                == Some(event.id)
                    })
                })
        }
        SourceKind::Telegram | SourceKind::Generic => false,
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
    fn replies_carry_a_marker_that_a_lookup_finds() {
        let payload = json!({
            "repository": { "full_name": "acme/app" }, "issue": { "number": 42 },
            "event": { "channel": "C1", "ts": "17.5" },
        });
        let event = Event {
            received_at: 1_700_000_000_123,
            ..event(payload)
        };
        let gh_spec = spec(SourceKind::Github);
        let gh = build(&gh_spec, Some("tok"), None, &event, "hi", 0).unwrap();
        let body: Value = serde_json::from_slice(&gh.body).unwrap();
        assert_eq!(body["body"], "hi\n\n<!-- mechanics:event 9 -->");
        let look = lookup(&gh_spec, &event, &gh).unwrap();
        assert_eq!(
            look.url,
            "https://api.github.com/repos/acme/app/issues/42/comments?per_page=100&since=2023-11-14T22:13:20Z"
        );
        let own = ["mechanics-bot".to_owned(), "BBOT".to_owned()];
        let comments = json!([
            { "body": "other", "user": { "login": "mechanics-bot" } },
            { "body": body["body"], "user": { "login": "Mechanics-Bot" } },
        ]);
        assert!(holds_reply(
            SourceKind::Github,
            &comments,
            &event,
            Some(&own)
        ));
        let other = Event {
            id: 10,
            ..event.clone()
        };
        assert!(!holds_reply(
            SourceKind::Github,
            &comments,
            &other,
            Some(&own)
        ));
        // The same marker pasted by someone else is not our reply...
        let pasted = json!([{ "body": body["body"], "user": { "login": "eve" } }]);
        assert!(!holds_reply(
            SourceKind::Github,
            &pasted,
            &event,
            Some(&own)
        ));
        // ...unless who the token is cannot be known: then any marker counts.
        assert!(holds_reply(SourceKind::Github, &pasted, &event, None));
        assert!(!holds_reply(SourceKind::Github, &pasted, &other, None));
        let gitlab =
            |author: &str| json!([{ "body": body["body"], "author": { "username": author } }]);
        assert!(holds_reply(
            SourceKind::Gitlab,
            &gitlab("mechanics-bot"),
            &event,
            Some(&own)
        ));
        assert!(!holds_reply(
            SourceKind::Gitlab,
            &gitlab("eve"),
            &event,
            Some(&own)
        ));

        let sl_spec = spec(SourceKind::Slack);
        let sl = build(&sl_spec, Some("tok"), None, &event, "hi", 0).unwrap();
        let look = lookup(&sl_spec, &event, &sl).unwrap();
        assert_eq!(
            look.url,
            "https://slack.com/api/conversations.replies?channel=C1&ts=17.5&include_all_metadata=true&limit=200"
        );
        let posted: Value = serde_json::from_slice(&sl.body).unwrap();
        let thread = |bot: &str| {
            json!({ "ok": true, "messages": [
                { "text": "q", "user": "U1" },
                { "text": "hi", "bot_id": bot, "metadata": posted["metadata"] },
            ] })
        };
        assert!(holds_reply(
            SourceKind::Slack,
            &thread("BBOT"),
            &event,
            Some(&own)
        ));
        assert!(!holds_reply(
            SourceKind::Slack,
            &thread("BBOT"),
            &other,
            Some(&own)
        ));
        // Another app can set the same metadata.
        assert!(!holds_reply(
            SourceKind::Slack,
            &thread("BOTHER"),
            &event,
            Some(&own)
        ));

        let tg_spec = spec(SourceKind::Telegram);
        let tg_event =
            super::tests::event(json!({ "message": { "message_id": 5, "chat": { "id": 1 } } }));
        let tg = build(&tg_spec, Some("1:a"), None, &tg_event, "hi", 0).unwrap();
        assert_eq!(lookup(&tg_spec, &tg_event, &tg), None);
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
