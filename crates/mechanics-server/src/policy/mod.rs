//! Worker policies ([`PolicySpec`]): after an event matched a worker's webhook trigger and before
//! a task is made, one decision per (event, worker) pair, in this order:
//!
//! 1. `self`: the actor is the source's own write-back identity (with `ignore_self`), which the
//!    server asks the platform for once per source version ([`platform::identity`]); a worker
//!    never answers its own reply, which would loop;
//! 2. `bot`: the platform marks the sender as a bot (with `ignore_bots`): bots answering each
//!    other loop too;
//! 3. `actor_not_allowed` / `actor_denied`: the `actors` allow or deny list, GitHub teams
//!    resolved through the API and cached for [`TEAM_TTL`]. An event that names no actor passes
//!    neither list, and a team GitHub does not show the token refuses too (a list that cannot be
//!    read lets no one past it);
//! 4. `actor_limit`: the per-actor limit, counted in the store so that it holds across restarts
//!    and across servers on one database. Counted last, so that only events that would start
//!    the worker count.
//!
//! A pair whose decision could not be made (the store failed) is an error: the event stays
//! `received` and is matched again by recovery (at the next startup; on a shared PostgreSQL also
//! by the periodic sweep). A worker that already has a task for the event is not decided again. A platform that cannot say who the token is
//! does not stop events: the `bot` rule still holds, and the identity is asked again after
//! [`IDENTITY_RETRY`].

pub(crate) mod actor;
mod platform;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mechanics_proto::domain::{
    ActorRule, Event, PolicySpec, SourceKind, Trigger, Worker, WorkerSpec, team_entry,
};
use tokio::time::Instant;

use crate::Shared;
use crate::sources::CachedSource;
use actor::Actor;

/// How long a GitHub team membership answer is used.
pub(crate) const TEAM_TTL: Duration = Duration::from_secs(5 * 60);

/// How soon a failed identity lookup is tried again.
pub(crate) const IDENTITY_RETRY: Duration = Duration::from_secs(60);

/// The decision on one (event, worker) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A task is made.
    Admit {
        /// The actor, as `/logs` shows it.
        actor: String,
    },
    /// No task: `reason` is one of [`crate::metrics::POLICY_DENIALS`], `detail` says why in
    /// words.
    Deny {
        reason: &'static str,
        actor: String,
        detail: String,
    },
}

/// What policies remember between events: identities of sources' tokens, team memberships.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    /// By source name: the source version it was asked for, and its names (or the failure).
    identities: Mutex<HashMap<String, Identity>>,
    /// Whether a login is in a team, and when GitHub said so.
    teams: Mutex<HashMap<Membership, (bool, Instant)>>,
}

/// (org, team, lowercased login).
type Membership = (String, String, String);

#[derive(Debug, Clone)]
struct Identity {
    version: (i64, i64),
    names: Result<Vec<String>, String>,
    asked: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Policies {
    /// Decides whether `event` of `source` may start `worker`. An error means no decision:
    /// the caller leaves the event to be matched again.
    pub(crate) async fn decide(
        &self,
        shared: &Shared,
        source: &CachedSource,
        worker: &Worker,
        event: &Event,
    ) -> Result<Verdict, String> {
        let policy = &worker.spec.policy;
        let spec = &source.source.spec;
        let actor = actor::of(spec, &event.payload);
        let shown = actor.shown();
        let deny = |reason, detail: String| Verdict::Deny {
            reason,
            actor: shown.clone(),
            detail,
        };
        let token = source.token.as_ref().ok().and_then(Option::as_deref);
        if policy.ignore_self
            && let Some(token) = token
            && let Some(own) = self
                .identity(shared, source, token)
                .await
                .into_iter()
                .find(|name| actor.is(name))
        {
            return Ok(deny(
                "self",
                format!(
                    "the event was caused by the source's own identity {own:?}: a reply of ours"
                ),
            ));
        }
        if policy.ignore_bots && actor.bot {
            return Ok(deny(
                "bot",
                format!("the sender {shown} is a bot (policy.ignore_bots)"),
            ));
        }
        if let Some(rule) = &policy.actors {
            let (listed, errors) = self.listed(shared, source, token, rule, &actor).await;
            match rule {
                ActorRule::Allow(_) if !listed => {
                    let mut detail = if actor.names.is_empty() {
                        "the event names no actor, and policy.actors.allow lets only its \
                         entries in"
                            .to_owned()
                    } else {
                        format!("{shown} is not in policy.actors.allow")
                    };
                    if !errors.is_empty() {
                        detail.push_str(&format!(" ({})", errors.join("; ")));
                    }
                    return Ok(deny("actor_not_allowed", detail));
                }
                ActorRule::Deny(_) if listed || !errors.is_empty() || actor.names.is_empty() => {
                    let detail = if listed {
                        format!("{shown} is in policy.actors.deny")
                    } else if actor.names.is_empty() {
                        // Who is not named cannot be told apart from a denied actor: letting
                        // such events in would let anyone past the list by leaving the actor out.
                        "the event names no actor, so it cannot be told that it is not one of \
                         policy.actors.deny"
                            .to_owned()
                    } else {
                        // A deny list that cannot be read refuses rather than lets anyone in.
                        format!(
                            "whether {shown} is in policy.actors.deny could not be told: {}",
                            errors.join("; ")
                        )
                    };
                    return Ok(deny("actor_denied", detail));
                }
                _ => {}
            }
        }
        if let Some(limit) = &policy.per_actor_limit {
            let key = actor.key().unwrap_or("");
            let window_ms = i64::try_from(limit.per.0.as_millis()).unwrap_or(i64::MAX);
            let admitted = shared
                .store
                .admit_actor(
                    &worker.spec.name,
                    key,
                    event.id,
                    limit.count,
                    window_ms,
                    shared.clock.now_ms(),
                )
                .await
                .map_err(|err| format!("counting the events of {shown} failed: {err}"))?;
            if !admitted {
                return Ok(deny(
                    "actor_limit",
                    format!(
                        "{shown} already started this worker {} times in the last {} \
                         (policy.per_actor_limit)",
                        limit.count, limit.per
                    ),
                ));
            }
        }
        Ok(Verdict::Admit { actor: shown })
    }

    /// Whether `actor` is one of `rule`'s entries, and the team lookups that failed.
    async fn listed(
        &self,
        shared: &Shared,
        source: &CachedSource,
        token: Option<&str>,
        rule: &ActorRule,
        actor: &Actor,
    ) -> (bool, Vec<String>) {
        let mut errors = Vec::new();
        if actor.names.is_empty() {
            return (false, errors);
        }
        for entry in rule.entries() {
            let Some(team) = team_entry(entry) else {
                if actor.is(entry) {
                    return (true, errors);
                }
                continue;
            };
            let (Some(token), SourceKind::Github, Some(login)) =
                (token, source.source.spec.kind, actor.key())
            else {
                // Refused at add time; a source changed since then cannot resolve it.
                errors.push(format!(
                    "{entry} needs a GitHub source with a token to be resolved"
                ));
                continue;
            };
            match self.team_member(shared, source, token, team, login).await {
                Ok(true) => return (true, errors),
                Ok(false) => {}
                Err(err) => errors.push(err),
            }
        }
        (false, errors)
    }

    /// The names of `source`'s token, asked once per source version (again after
    /// [`IDENTITY_RETRY`] when the platform could not say). Empty when unknown. Write-back uses
    /// it too: only a message of these names counts as an earlier reply.
    pub(crate) async fn identity(
        &self,
        shared: &Shared,
        source: &CachedSource,
        token: &str,
    ) -> Vec<String> {
        let spec = &source.source.spec;
        let version = (source.source.created_at, source.source.revision);
        if let Some(known) = lock(&self.identities).get(&spec.name)
            && known.version == version
            && (known.names.is_ok() || known.asked.elapsed() < IDENTITY_RETRY)
        {
            return known.names.clone().unwrap_or_default();
        }
        let names = platform::identity(&shared.integrations.write_back, spec, token).await;
        if let Err(err) = &names {
            tracing::warn!(
                source = %spec.name,
                error = %err,
                "the source's own identity is unknown, so its replies cannot be told apart from \
                 other events until it is (asked again in {IDENTITY_RETRY:?})"
            );
        }
        let entry = Identity {
            version,
            names: names.clone(),
            asked: Instant::now(),
        };
        lock(&self.identities).insert(spec.name.clone(), entry);
        names.unwrap_or_default()
    }

    /// Whether `login` is in GitHub team `org/team`, cached for [`TEAM_TTL`].
    async fn team_member(
        &self,
        shared: &Shared,
        source: &CachedSource,
        token: &str,
        (org, team): (&str, &str),
        login: &str,
    ) -> Result<bool, String> {
        let key = (org.to_owned(), team.to_owned(), login.to_ascii_lowercase());
        if let Some((member, at)) = lock(&self.teams).get(&key)
            && at.elapsed() < TEAM_TTL
        {
            return Ok(*member);
        }
        let member = platform::team_member(
            &shared.integrations.write_back,
            &source.source.spec,
            token,
            (org, team),
            login,
        )
        .await?;
        let mut teams = lock(&self.teams);
        // Answers of long ago are of no use; the map holds only what is fresh.
        teams.retain(|_, (_, at)| at.elapsed() < TEAM_TTL);
        teams.insert(key, (member, Instant::now()));
        Ok(member)
    }
}

/// Refuses an `actors` list that cannot work: on a generic source without `actor_path` no event
/// names an actor, so the list would refuse every event; and a GitHub team entry needs every
/// webhook trigger's source to be a registered GitHub source with a readable token.
pub(crate) async fn check_actors(shared: &Shared, spec: &WorkerSpec) -> Result<(), String> {
    let policy: &PolicySpec = &spec.policy;
    let Some(rule) = &policy.actors else {
        return Ok(());
    };
    let list = match rule {
        ActorRule::Allow(_) => "policy.actors.allow",
        ActorRule::Deny(_) => "policy.actors.deny",
    };
    // A team entry is checked against every webhook trigger's source; only the first is named.
    let team = rule
        .entries()
        .iter()
        .enumerate()
        .find(|(_, entry)| team_entry(entry).is_some());
    for trigger in &spec.triggers {
        let Trigger::Webhook(webhook) = trigger else {
            continue;
        };
        let source = shared.integrations.sources.get(&webhook.source).await;
        if let Some(source) = &source {
            let spec = &source.source.spec;
            if spec.kind == SourceKind::Generic && spec.actor_path.is_none() {
                return Err(format!(
                    "{list}: the source {:?} is a generic source without actor_path, so its \
                     events name no actor and the list would refuse every one; set actor_path on \
                     the source (the JSON path of the sender's name in a delivery)",
                    webhook.source
                ));
            }
        }
        let Some((i, entry)) = team else {
            continue;
        };
        let why = match &source {
            None => Some(format!("the source {:?} is not registered", webhook.source)),
            Some(source) if source.source.spec.kind != SourceKind::Github => Some(format!(
                "the source {:?} is not a GitHub source",
                webhook.source
            )),
            Some(source) => match &source.token {
                Ok(Some(_)) => None,
                Ok(None) => Some(format!(
                    "the source {:?} has no token_env or token_file",
                    webhook.source
                )),
                Err(err) => Some(err.clone()),
            },
        };
        if let Some(why) = why {
            return Err(format!(
                "{list}[{i}]: the team {entry} is resolved through GitHub with the source's \
                 token, and {why}"
            ));
        }
    }
    Ok(())
}
