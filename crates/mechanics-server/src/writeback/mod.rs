//! Write-back: when every task of an event has ended, the replies of its workers that have
//! `write_back: true` (a string `reply` in their result) are posted where the event came from,
//! through the source kind's [responder](responders), and the event ends.
//!
//! An event's replies are joined (in task order, separated by a blank line) into one message, so
//! an event is written back exactly once however many workers answered it, and one event state
//! tracks it. Without replies the event is `completed` (or `failed` when none of its tasks
//! completed).
//!
//! A transient failure (5xx, 429, network) moves the event to `write_back_failed` with
//! `next_write_back_at` — the delay the platform asked for, else 30 s × 2^(tries−1) capped at
//! 30 min — and the write-back loop tries again then, up to [`MAX_WRITE_BACK_RETRIES`] times;
//! after that the event is `failed` (the dead letter). Other 4xx answers are permanent: `failed`
//! at once. The loop sleeps until the store's next `write_back_at` or until a task of an event
//! ends: an idle server alone on its database makes no query here (invariant 6). With other
//! servers on the database, every write-back is claimed first (one server posts it) and the
//! loop also reads the next retry time every [`SHARED_WRITE_BACK_POLL`] and recovers, every
//! [`EVENT_SWEEP`], events a server that died left unfinished.

pub(crate) mod responders;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use mechanics_proto::domain::{Event, EventId, EventState, SourceKind, TaskState};
use mechanics_store::{EventUpdate, TaskFilter};
use serde_json::Value;
use tokio::sync::Notify;

use crate::Shared;
use crate::webhooks::set_state;
use responders::Sent;

/// Retries after the first failed write-back before the event is dead-lettered.
pub const MAX_WRITE_BACK_RETRIES: u32 = 5;

/// Timeout of one write-back request.
const WRITE_BACK_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server holds a write-back it claimed: the post's timeout with room to record its
/// outcome. A server that dies holding it leaves it to the others after this.
const WRITE_BACK_CLAIM: Duration = Duration::from_secs(60);
/// With other servers on the database, how often events left unfinished by a server that died
/// (still `received`, or with every task ended but not settled) are looked for, and how long an
/// event must have been unchanged to count as left.
const EVENT_SWEEP: Duration = Duration::from_secs(60);
/// With other servers on the database, the longest the loop sleeps before it reads the next
/// retry time again: a retry another server scheduled, and then died, is found by then.
const SHARED_WRITE_BACK_POLL: Duration = Duration::from_secs(30);

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Events to look at because one of their tasks ended (or they were just matched). Filled by the
/// dispatcher and the matcher, drained by the write-back loop.
#[derive(Debug, Default)]
pub(crate) struct SettleQueue {
    ids: Mutex<Vec<EventId>>,
    notify: Notify,
}

impl SettleQueue {
    /// Asks the write-back loop to look at event `id`.
    pub(crate) fn push(&self, id: EventId) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<EventId> {
        let mut ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()));
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The HTTP clients of the responders.
pub(crate) struct WriteBackClient {
    /// For platforms on the Internet: honours the environment's proxy settings.
    public: reqwest::Client,
    /// For loopback targets (tests, local callbacks): a proxy could not reach them.
    local: reqwest::Client,
}

impl WriteBackClient {
    pub(crate) fn new() -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = |no_proxy: bool| {
            let mut builder = reqwest::Client::builder()
                .timeout(WRITE_BACK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("mechanics/", env!("CARGO_PKG_VERSION")));
            if no_proxy {
                builder = builder.no_proxy();
            }
            builder
                .build()
                .map_err(|err| format!("cannot build the write-back HTTP client: {err}"))
        };
        Ok(Self {
            public: build(false)?,
            local: build(true)?,
        })
    }

    /// The client for `url`: loopback targets bypass any proxy.
    pub(crate) fn for_url(&self, url: &str) -> &reqwest::Client {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        match host.as_deref() {
            Some("localhost" | "127.0.0.1" | "[::1]") => &self.local,
            _ => &self.public,
        }
    }
}

/// The delay before write-back retry number `tries` (1 = the first retry) when the platform
/// did not say: 30 s × 2^(tries−1), capped at 30 min.
pub fn retry_delay(tries: u32) -> Duration {
    let exponent = tries.saturating_sub(1).min(16);
    Duration::from_secs(30u64.saturating_mul(1 << exponent)).min(Duration::from_secs(30 * 60))
}

/// Runs until `stop`: startup recovery of events, then settles events whose tasks ended and
/// retries failed write-backs when they are due.
pub(crate) async fn run(shared: Arc<Shared>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let shared_store = shared.store.shared();
    let grace = || shared.clock.now_ms() - duration_ms(EVENT_SWEEP);
    crate::webhooks::recover(&shared, shared_store.then(grace)).await;
    let mut sweep =
        tokio::time::interval_at(tokio::time::Instant::now() + EVENT_SWEEP, EVENT_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_retry = next_due(&shared).await;
    loop {
        let poll = shared
            .store
            .shared()
            .then(|| shared.clock.now_ms() + duration_ms(SHARED_WRITE_BACK_POLL));
        let (due, clock) = (next_retry.into_iter().chain(poll).min(), shared.clock);
        let sleep = async move {
            match due {
                Some(at) => tokio::time::sleep_until(clock.instant_at(at)).await,
                None => std::future::pending().await,
            }
        };
        let settle = &shared.dispatcher.settle;
        tokio::select! {
            () = &mut stop => return,
            () = settle.notify.notified() => {
                for id in settle.take() {
                    if let Some(at) = settle_event(&shared, id).await {
                        next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                    }
                }
            }
            () = sleep => {
                retry_due(&shared).await;
                next_retry = next_due(&shared).await;
            }
            _ = sweep.tick(), if shared_store => {
                crate::webhooks::recover(&shared, Some(grace())).await;
            }
        }
    }
}

async fn next_due(shared: &Shared) -> Option<i64> {
    match shared.store.next_due().await {
        Ok(next) => next.write_back_at,
        Err(err) => {
            tracing::error!(error = %err, "reading the next write-back time failed; retrying in 1 s");
            Some(shared.clock.now_ms() + 1000)
        }
    }
}

/// Ends event `id` if all of its tasks have ended: writes back its replies, or completes it.
/// Returns the next write-back time if the write-back failed transiently.
async fn settle_event(shared: &Shared, id: EventId) -> Option<i64> {
    let event = match shared.store.get_event(id).await {
        Ok(Some(event)) => event,
        Ok(None) => return None,
        Err(err) => {
            tracing::error!(event = id, error = %err, "reading an event to settle failed");
            return None;
        }
    };
    if !matches!(event.state, EventState::Matched | EventState::Dispatched) {
        return None;
    }
    let tasks = match shared
        .store
        .list_tasks(&TaskFilter {
            event_id: Some(id),
            limit: Some(mechanics_store::MAX_PAGE_SIZE),
            ..TaskFilter::default()
        })
        .await
    {
        Ok(page) => page.items,
        Err(err) => {
            tracing::error!(event = id, error = %err, "listing an event's tasks failed");
            return None;
        }
    };
    if tasks.is_empty() || tasks.iter().any(|t| !t.state.is_end()) {
        return None;
    }
    match replies(shared, &tasks).await {
        Some(text) => {
            // Two servers may finish an event's last tasks at once: one posts.
            let now = shared.clock.now_ms();
            match shared
                .store
                .claim_write_back(
                    id,
                    claim_expired_at(shared, &event, now),
                    now + duration_ms(WRITE_BACK_CLAIM),
                )
                .await
            {
                // A claim on an event still `matched` or `dispatched` was made by a try that
                // never recorded its outcome (its server stopped): it may have posted.
                Ok(Some(claimed)) => {
                    let interrupted = event.next_write_back_at.is_some();
                    write_back(shared, &claimed, &text, interrupted).await
                }
                Ok(None) => None,
                Err(err) => {
                    tracing::error!(event = id, error = %err, "claiming a write-back failed");
                    None
                }
            }
        }
        None => {
            let completed = tasks
                .iter()
                .filter(|t| t.state == TaskState::Completed)
                .count();
            let (state, error) = if completed == 0 {
                let error = format!("none of its {} tasks completed", tasks.len());
                (EventState::Failed, Some(error))
            } else {
                (EventState::Completed, None)
            };
            if set_state(shared, id, state, error).await.is_some() {
                let now = shared.clock.now_ms();
                shared.trace.settled_without_write_back(&event, state, now);
            }
            None
        }
    }
}

/// The replies to write back: the string `reply` of every completed task whose worker has
/// `write_back: true`, oldest task first, joined by blank lines.
async fn replies(shared: &Shared, tasks: &[mechanics_proto::domain::Task]) -> Option<String> {
    let workers = shared.dispatcher.registry.all().await;
    let mut tasks: Vec<_> = tasks.iter().collect();
    tasks.sort_by_key(|t| t.id);
    let texts: Vec<&str> = tasks
        .into_iter()
        .filter(|t| t.state == TaskState::Completed)
        .filter(|t| workers.get(&t.worker).is_some_and(|w| w.spec.write_back))
        .filter_map(|t| t.result.as_ref()?.get("reply").and_then(Value::as_str))
        .filter(|text| !text.is_empty())
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n\n"))
}

/// Retries the write-backs that are due now, claimed so that no other server on the database
/// retries them at the same time.
async fn retry_due(shared: &Shared) {
    let now = shared.clock.now_ms();
    let until = now + duration_ms(WRITE_BACK_CLAIM);
    let events = match shared.store.claim_write_backs(now, until, 100).await {
        Ok(events) => events,
        Err(err) => {
            tracing::error!(error = %err, "claiming the write-backs due failed");
            return;
        }
    };
    for event in events {
        let tasks = shared
            .store
            .list_tasks(&TaskFilter {
                event_id: Some(event.id),
                limit: Some(mechanics_store::MAX_PAGE_SIZE),
                ..TaskFilter::default()
            })
            .await;
        match tasks {
            Ok(page) => match replies(shared, &page.items).await {
                Some(text) => {
                    write_back(shared, &event, &text, false).await;
                }
                // The worker stopped asking for write-back meanwhile.
                None => {
                    let state = EventState::Completed;
                    if set_state(shared, event.id, state, None).await.is_some() {
                        let now = shared.clock.now_ms();
                        shared.trace.settled_without_write_back(&event, state, now);
                    }
                }
            },
            Err(err) => {
                tracing::error!(event = event.id, error = %err, "listing an event's tasks failed")
            }
        }
    }
}

/// The time to claim `event`'s write-back at: now, or for a server alone on its database, the
/// end of a claim its own earlier process left (that process is gone: nobody else can hold it,
/// and the reply need not wait for the claim to run out).
fn claim_expired_at(shared: &Shared, event: &Event, now: i64) -> i64 {
    let claimed_until = event.next_write_back_at.filter(|_| {
        !shared.store.shared()
            && matches!(event.state, EventState::Matched | EventState::Dispatched)
    });
    match claimed_until {
        Some(until) if until - duration_ms(WRITE_BACK_CLAIM) < shared.started_at => until.max(now),
        _ => now,
    }
}

/// How soon a try whose outcome was unknown looks at the platform: the reply is most likely
/// there, and the look is one read.
const UNKNOWN_OUTCOME_RECHECK: Duration = Duration::from_secs(1);

/// How the event's error starts after a try whose outcome is unknown.
const MAY_HAVE_POSTED: &str = "the reply may have been posted: ";

/// Posts `text` in reply to `event` and records the outcome on the event. `interrupted`: an
/// earlier try's server stopped while it held the claim, so it may have posted. Returns the
/// next try's time after a transient failure.
///
/// A reply is posted at most once: a try that follows one whose outcome is unknown (an
/// interrupted try, a lost answer) first looks for the earlier reply's marker on the platform
/// and records it if it is there; where the platform cannot be searched (Telegram), such a
/// reply is not posted again.
async fn write_back(shared: &Shared, event: &Event, text: &str, interrupted: bool) -> Option<i64> {
    let trace = &shared.trace;
    let outcome = post(shared, event, text, interrupted).await;
    let now = shared.clock.now_ms();
    // A platform's answer may quote the token: the event's error, the log line and the trace
    // all get the redacted text.
    let redact = |error: String| trace.redactor().redact(&error).into_owned();
    match outcome {
        Sent::Done => {
            trace.written_back(event, now);
            tracing::info!(event = event.id, source = %event.source, "written back");
            set_state(shared, event.id, EventState::Completed, None).await;
            None
        }
        Sent::Found => {
            trace.write_back_found(event, now);
            tracing::info!(event = event.id, source = %event.source, "an earlier try's reply was found; not posted again");
            set_state(shared, event.id, EventState::Completed, None).await;
            None
        }
        Sent::Permanent(error) => {
            let error = redact(error);
            trace.write_back_failed(event, &error, now);
            tracing::warn!(event = event.id, source = %event.source, %error, "write-back failed for good");
            set_state(shared, event.id, EventState::Failed, Some(error)).await;
            None
        }
        // The next try looks before it posts, soon: the reply is most likely there.
        Sent::Unknown(error) if searchable(shared, event).await => {
            let error = format!("{MAY_HAVE_POSTED}{}", redact(error));
            retry_later(shared, event, Some(UNKNOWN_OUTCOME_RECHECK), &error, now).await
        }
        Sent::Unknown(error) if resends_safely(shared, event).await => {
            retry_later(shared, event, None, &redact(error), now).await
        }
        Sent::Unknown(error) => {
            let error = redact(error);
            trace.write_back_unconfirmed(event, &error, now);
            tracing::warn!(event = event.id, source = %event.source, %error, "the reply may have been posted; not posted again");
            set_state(shared, event.id, EventState::Completed, None).await;
            None
        }
        Sent::Transient { delay, error } => {
            retry_later(shared, event, delay, &redact(error), now).await
        }
    }
}

/// Schedules another try of `event`'s write-back after `delay` (the platform's, else the
/// backoff), or dead-letters it when its tries are spent.
async fn retry_later(
    shared: &Shared,
    event: &Event,
    delay: Option<Duration>,
    error: &str,
    now: i64,
) -> Option<i64> {
    let trace = &shared.trace;
    let failures = event.write_back_attempts + 1;
    if failures > MAX_WRITE_BACK_RETRIES {
        let error = format!("write-back gave up after {failures} tries: {error}");
        trace.write_back_dead_lettered(event, &error, now);
        tracing::warn!(event = event.id, source = %event.source, %error, "write-back dead-lettered");
        set_state(shared, event.id, EventState::Failed, Some(error)).await;
        return None;
    }
    let delay = delay.unwrap_or_else(|| retry_delay(failures));
    let at = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
    trace.write_back_retried(event, error, at, now);
    tracing::info!(event = event.id, source = %event.source, %error, retry_in_ms = at - now, "write-back failed; retrying later");
    let update = EventUpdate {
        state: EventState::WriteBackFailed,
        error: Some(error.to_owned()),
        next_write_back_at: Some(at),
    };
    match shared.store.update_event(event.id, update, now).await {
        Ok(_) => Some(at),
        Err(err) => {
            tracing::error!(event = event.id, error = %err, "recording a failed write-back failed");
            None
        }
    }
}

/// The kind of `event`'s source, if it is still registered.
async fn source_kind(shared: &Shared, event: &Event) -> Option<SourceKind> {
    let source = shared.integrations.sources.get(&event.source).await?;
    Some(source.source.spec.kind)
}

/// Whether an earlier reply to `event` can be looked for on its platform.
async fn searchable(shared: &Shared, event: &Event) -> bool {
    matches!(
        source_kind(shared, event).await,
        Some(SourceKind::Github | SourceKind::Gitlab | SourceKind::Slack)
    )
}

/// Whether posting `event`'s reply again is harmless without a look: a generic receiver drops a
/// repeated `webhook-id`.
async fn resends_safely(shared: &Shared, event: &Event) -> bool {
    source_kind(shared, event).await == Some(SourceKind::Generic)
}

/// Builds and sends the reply; every failure becomes a [`Sent`]. When an earlier try may have
/// posted it (`interrupted`, or any retry), looks for it first where the platform can be
/// searched.
async fn post(shared: &Shared, event: &Event, text: &str, interrupted: bool) -> Sent {
    let Some(source) = shared.integrations.sources.get(&event.source).await else {
        return Sent::Permanent(format!(
            "the source {:?} is no longer registered",
            event.source
        ));
    };
    let spec = &source.source.spec;
    // Both were read into memory (and joined the redactor) when the source was loaded.
    let token = match &source.token {
        Ok(token) => token.clone(),
        Err(message) => return Sent::Permanent(message.clone()),
    };
    let secret = source.secret.as_ref().ok().cloned();
    let now_secs = shared.clock.now_ms().div_euclid(1000);
    let outbound = match responders::build(
        spec,
        token.as_deref(),
        secret.as_deref(),
        event,
        text,
        now_secs,
    ) {
        Ok(outbound) => outbound,
        Err(message) => return Sent::Permanent(message),
    };
    // Any retry may follow a try that posted (its answer lost, or its server killed after the
    // post): where the platform can be searched, a retry looks first (one read).
    let retry = event.write_back_attempts > 0;
    match responders::lookup(spec, event, &outbound) {
        Some(lookup) if interrupted || retry => {
            // A marker counts only on a message of the token's own identity, when it can be
            // known (`identity` logs why it cannot).
            let own = match token.as_deref() {
                Some(token) => {
                    shared
                        .integrations
                        .policies
                        .identity(shared, &source, token)
                        .await
                }
                None => Vec::new(),
            };
            let own = (!own.is_empty()).then_some(own.as_slice());
            match look_for_reply(shared, spec.kind, event, lookup, own).await {
                Ok(true) => return Sent::Found,
                Ok(false) => {}
                Err(error) => return Sent::Transient { delay: None, error },
            }
        }
        None if interrupted && spec.kind != SourceKind::Generic => {
            return Sent::Unknown("the server stopped while it was posting this reply".to_owned());
        }
        _ => {}
    }
    let client = shared.integrations.write_back.for_url(&outbound.url);
    let mut request = client
        .post(&outbound.url)
        .header("content-type", "application/json")
        .body(outbound.body);
    for (name, value) in outbound.headers {
        request = request.header(name, value);
    }
    let who = responders::platform(spec.kind);
    let response = match request.send().await {
        Ok(response) => response,
        // Not connected: nothing was sent.
        Err(err) if err.is_connect() => {
            return Sent::Transient {
                delay: None,
                // Without the URL: Telegram's carries the token.
                error: format!(
                    "{who} could not be reached: {}",
                    crate::executor::describe(err)
                ),
            };
        }
        Err(err) => {
            return Sent::Unknown(format!(
                "{who}'s answer was lost: {}",
                crate::executor::describe(err)
            ));
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(err) => {
            return Sent::Unknown(format!(
                "reading {who}'s answer failed: {}",
                crate::executor::describe(err)
            ));
        }
    };
    responders::classify(spec.kind, status, &headers, &body, now_secs)
}

/// Whether the platform holds a reply to `event` (its marker on a message of `own`), by `lookup`.
async fn look_for_reply(
    shared: &Shared,
    kind: SourceKind,
    event: &Event,
    lookup: responders::Lookup,
    own: Option<&[String]>,
) -> Result<bool, String> {
    let who = responders::platform(kind);
    let mut request = shared
        .integrations
        .write_back
        .for_url(&lookup.url)
        .get(&lookup.url);
    for (name, value) in lookup.headers {
        request = request.header(name, value);
    }
    let failed = |err: reqwest::Error| {
        format!(
            "looking for an earlier reply on {who} failed: {}",
            crate::executor::describe(err)
        )
    };
    let response = request.send().await.map_err(failed)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(failed)?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "looking for an earlier reply on {who} failed: it answered {status}"
        ));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Slack answers its errors (a missing `channels:history` scope among them) with 200.
    if kind == SourceKind::Slack && body["ok"] != true {
        return Err(format!(
            "looking for an earlier reply on Slack failed: {} (the app needs the history scope \
             of the conversation, e.g. channels:history)",
            body["error"].as_str().unwrap_or("no \"ok\": true")
        ));
    }
    Ok(responders::holds_reply(kind, &body, event, own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_30_s_up_to_30_min() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1800, 1800]);
    }
}
