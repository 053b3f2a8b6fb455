//! A worker's policy: which webhook events may start it. A public bot is reachable by everyone
//! who can comment or write in a channel, so it needs protection against answering itself (or
//! another bot) in a loop, against being run as often as anyone likes, and a way to listen only
//! to some people. The server evaluates the policy per (event, worker) after matching.

use serde::{Deserialize, Serialize};

use super::{HumanDuration, SpecError, refuse_control};

/// `policy:` in a worker spec. Absent, the defaults apply: events caused by the source's own
/// write-back identity and by senders the platform marks as bots start nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Events caused by this source's write-back identity (the token's user or bot) start
    /// nothing: a worker never answers its own reply (default true).
    #[serde(default = "enabled")]
    pub ignore_self: bool,
    /// Events whose sender the platform marks as a bot start nothing (default true).
    #[serde(default = "enabled")]
    pub ignore_bots: bool,
    /// Who may start the worker (absent: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actors: Option<ActorRule>,
    /// How often one actor may start the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_actor_limit: Option<ActorLimit>,
}

fn enabled() -> bool {
    true
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            ignore_self: true,
            ignore_bots: true,
            actors: None,
            per_actor_limit: None,
        }
    }
}

/// `actors: { allow: [...] }` or `actors: { deny: [...] }`. An entry is a user name as the
/// platform writes it (GitHub login, GitLab username, Slack user id, Telegram username or
/// numeric id), or a GitHub team `@org/team`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActorRule {
    /// Only these actors may start the worker.
    Allow(Vec<String>),
    /// Everyone but these actors may start the worker.
    Deny(Vec<String>),
}

impl ActorRule {
    /// The entries, allow or deny.
    pub fn entries(&self) -> &[String] {
        match self {
            Self::Allow(entries) | Self::Deny(entries) => entries,
        }
    }
}

/// `per_actor_limit: { count: 10, per: 1h }`: at most `count` events of one actor start the
/// worker in any window of `per`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorLimit {
    /// Events per window, at least 1.
    pub count: u32,
    /// The window, from 1 s to 30 d.
    pub per: HumanDuration,
}

impl ActorLimit {
    /// The longest window: counts are kept in the store for this long at most.
    pub const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
}

/// A GitHub team entry `@org/team`, split; `None` for a user name.
pub fn team_entry(entry: &str) -> Option<(&str, &str)> {
    let (org, team) = entry.strip_prefix('@')?.split_once('/')?;
    Some((org, team))
}

impl PolicySpec {
    /// Whether this is the default policy (written back out as no `policy:` at all).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The GitHub teams `@org/team` its actor rule names.
    pub fn teams(&self) -> impl Iterator<Item = (&str, &str)> {
        self.actors
            .iter()
            .flat_map(ActorRule::entries)
            .filter_map(|entry| team_entry(entry))
    }

    /// Checks the actor entries and the limit; errors name the field (`policy.actors.allow[1]`).
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(rule) = &self.actors {
            let list = match rule {
                ActorRule::Allow(_) => "policy.actors.allow",
                ActorRule::Deny(_) => "policy.actors.deny",
            };
            if rule.entries().is_empty() {
                return Err(SpecError::new(
                    list,
                    "list at least one actor (or leave out `actors` to let everyone in)",
                ));
            }
            for (i, entry) in rule.entries().iter().enumerate() {
                let field = format!("{list}[{i}]");
                if entry.trim().is_empty() || entry.trim() != entry {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "{entry:?} is not an actor: write a user name without spaces around it"
                        ),
                    ));
                }
                refuse_control(&field, entry)?;
                if entry.starts_with('@') {
                    // Names as GitHub allows them; `.` or `..` would change the API path.
                    let name = |part: &str| {
                        part.chars().any(|c| c != '.')
                            && part
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    };
                    let valid =
                        team_entry(entry).is_some_and(|(org, team)| name(org) && name(team));
                    if !valid {
                        return Err(SpecError::new(
                            field,
                            format!("{entry:?} is not a GitHub team: write @org/team"),
                        ));
                    }
                }
            }
        }
        if let Some(limit) = &self.per_actor_limit {
            if limit.count == 0 {
                return Err(SpecError::new(
                    "policy.per_actor_limit.count",
                    "must be at least 1",
                ));
            }
            let window = limit.per.0;
            if window < std::time::Duration::from_secs(1) || window > ActorLimit::MAX_WINDOW {
                return Err(SpecError::new(
                    "policy.per_actor_limit.per",
                    format!("{} is outside 1s to 30d", limit.per),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: serde_json::Value) -> Result<PolicySpec, String> {
        let spec: PolicySpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn defaults_ignore_self_and_bots_and_let_everyone_in() {
        let spec = check(json!({})).unwrap();
        assert!(spec.ignore_self && spec.ignore_bots);
        assert!(spec.is_default());
        let spec = check(json!({
            "ignore_bots": false,
            "actors": { "allow": ["alice", "@acme/maintainers"] },
            "per_actor_limit": { "count": 10, "per": "1h" },
        }))
        .unwrap();
        assert_eq!(spec.teams().collect::<Vec<_>>(), [("acme", "maintainers")]);
        assert_eq!(spec.per_actor_limit.unwrap().per.0.as_secs(), 3600);
    }

    #[test]
    fn bad_entries_and_limits_name_their_field() {
        let cases = [
            (
                json!({ "actors": { "allow": [] } }),
                "policy.actors.allow: list at least one",
            ),
            (
                json!({ "actors": { "deny": ["ok", " bob"] } }),
                "policy.actors.deny[1]:",
            ),
            (
                json!({ "actors": { "allow": ["@acme"] } }),
                "policy.actors.allow[0]: \"@acme\" is not a GitHub team",
            ),
            (
                json!({ "actors": { "allow": ["@acme/a/b"] } }),
                "policy.actors.allow[0]:",
            ),
            (
                json!({ "actors": { "deny": ["@acme/.."] } }),
                "policy.actors.deny[0]: \"@acme/..\" is not a GitHub team",
            ),
            (
                json!({ "actors": { "allow": ["a\u{7}"] } }),
                "policy.actors.allow[0]:",
            ),
            (
                json!({ "per_actor_limit": { "count": 0, "per": "1h" } }),
                "policy.per_actor_limit.count: must be at least 1",
            ),
            (
                json!({ "per_actor_limit": { "count": 1, "per": "500ms" } }),
                "policy.per_actor_limit.per: 500ms is outside",
            ),
            (
                json!({ "per_actor_limit": { "count": 1, "per": "31d" } }),
                "policy.per_actor_limit.per:",
            ),
        ];
        for (value, want) in cases {
            let err = check(value.clone()).unwrap_err();
            assert!(err.starts_with(want), "{value}: {err}");
        }
        for value in [
            json!({ "actors": { "allow": ["a"], "deny": ["b"] } }),
            json!({ "actors": ["a"] }),
            json!({ "ignore_self": "yes" }),
            json!({ "per_actor": 3 }),
        ] {
            assert!(check(value.clone()).is_err(), "{value}");
        }
    }
}
