//! Who caused an event, as each platform says it, normalized so that one policy reads the same
//! on every source kind.
//!
//! | kind | actor | bot when |
//! |---|---|---|
//! | github | `sender.login` | `sender.type == "Bot"` |
//! | gitlab | `user.username` (push hooks: `user_username`) | `user.bot == true` |
//! | slack | `event.user` (and `event.bot_id`) | `event.bot_id` is set or `event.subtype == "bot_message"` |
//! | telegram | `message.from.id` and `.username` (also of `edited_message`, `channel_post`, `callback_query`) | `from.is_bot == true` |
//! | generic | the source's `actor_path` | never |

use mechanics_proto::domain::{SourceKind, SourceSpec};
use serde_json::Value;

/// The actor of an event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Actor {
    /// The names the actor goes by, the stable one first (the key of per-actor limits):
    /// a login, a user id, a Telegram id then username. Empty: the event names no actor.
    pub(crate) names: Vec<String>,
    /// The platform marks the sender as a bot.
    pub(crate) bot: bool,
}

impl Actor {
    /// The name per-actor limits count under.
    pub(crate) fn key(&self) -> Option<&str> {
        self.names.first().map(String::as_str)
    }

    /// Whether the actor goes by `name` (ASCII case-insensitively: GitHub and GitLab logins
    /// are, and ids have no case).
    pub(crate) fn is(&self, name: &str) -> bool {
        self.names.iter().any(|own| own.eq_ignore_ascii_case(name))
    }

    /// How the actor reads in `/logs`: its names joined, or `unknown`.
    pub(crate) fn shown(&self) -> String {
        if self.names.is_empty() {
            "unknown".to_owned()
        } else {
            self.names.join("/")
        }
    }
}

/// The actor of an event of `source` with `payload`.
pub(crate) fn of(source: &SourceSpec, payload: &Value) -> Actor {
    let text = |value: Option<&Value>| -> Option<String> {
        match value? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let flag = |value: Option<&Value>| value.and_then(Value::as_bool).unwrap_or(false);
    match source.kind {
        SourceKind::Github => Actor {
            names: text(payload.pointer("/sender/login")).into_iter().collect(),
            bot: payload.pointer("/sender/type").and_then(Value::as_str) == Some("Bot"),
        },
        // Push and tag push hooks name the user at the top level.
        SourceKind::Gitlab => Actor {
            names: text(payload.pointer("/user/username"))
                .or_else(|| text(payload.get("user_username")))
                .into_iter()
                .collect(),
            bot: flag(payload.pointer("/user/bot")),
        },
        SourceKind::Slack => {
            let event = payload.get("event").unwrap_or(&Value::Null);
            let bot_id = text(event.get("bot_id"));
            Actor {
                bot: bot_id.is_some()
                    || event.get("subtype").and_then(Value::as_str) == Some("bot_message"),
                names: text(event.get("user")).into_iter().chain(bot_id).collect(),
            }
        }
        SourceKind::Telegram => {
            let from = [
                "message",
                "edited_message",
                "channel_post",
                "callback_query",
            ]
            .iter()
            .find_map(|update| payload.get(*update)?.get("from"))
            .unwrap_or(&Value::Null);
            Actor {
                names: text(from.get("id"))
                    .into_iter()
                    .chain(text(from.get("username")))
                    .collect(),
                bot: flag(from.get("is_bot")),
            }
        }
        SourceKind::Generic => Actor {
            names: source
                .actor_path
                .as_deref()
                .and_then(|path| text(crate::webhooks::matching::lookup(payload, path)))
                .into_iter()
                .collect(),
            bot: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(kind: SourceKind, actor_path: Option<&str>) -> SourceSpec {
        serde_json::from_value(json!({
            "name": "s", "kind": kind, "secret_env": "S", "actor_path": actor_path,
        }))
        .unwrap()
    }

    #[test]
    fn every_kind_names_its_actor_and_bots() {
        let cases = [
            (
                SourceKind::Github,
                json!({ "sender": { "login": "alice", "type": "User" } }),
                vec!["alice"],
                false,
            ),
            (
                SourceKind::Github,
                json!({ "sender": { "login": "dependabot[bot]", "type": "Bot" } }),
                vec!["dependabot[bot]"],
                true,
            ),
            (
                SourceKind::Gitlab,
                json!({ "user": { "username": "bob", "bot": true } }),
                vec!["bob"],
                true,
            ),
            (
                SourceKind::Gitlab,
                json!({ "object_kind": "push", "user_username": "dora" }),
                vec!["dora"],
                false,
            ),
            (
                SourceKind::Slack,
                json!({ "event": { "user": "U1", "text": "hi" } }),
                vec!["U1"],
                false,
            ),
            (
                SourceKind::Slack,
                json!({ "event": { "subtype": "bot_message", "bot_id": "B9" } }),
                vec!["B9"],
                true,
            ),
            (
                SourceKind::Telegram,
                json!({ "message": { "from": { "id": 42, "username": "carol", "is_bot": false } } }),
                vec!["42", "carol"],
                false,
            ),
            (
                SourceKind::Telegram,
                json!({ "callback_query": { "from": { "id": 7, "is_bot": true } } }),
                vec!["7"],
                true,
            ),
            (SourceKind::Github, json!({ "zen": "hi" }), vec![], false),
        ];
        for (kind, payload, names, bot) in cases {
            let actor = of(&source(kind, None), &payload);
            assert_eq!(
                (actor.names.clone(), actor.bot),
                (names.iter().map(|n| n.to_string()).collect(), bot),
                "{payload}"
            );
        }
        let generic = source(SourceKind::Generic, Some("data.author.id"));
        let actor = of(&generic, &json!({ "data": { "author": { "id": 5 } } }));
        assert_eq!(actor.key(), Some("5"));
        assert_eq!(of(&generic, &json!({ "data": {} })).shown(), "unknown");
        assert!(
            of(
                &source(SourceKind::Github, None),
                &json!({ "sender": { "login": "Alice" } })
            )
            .is("alice")
        );
    }
}
