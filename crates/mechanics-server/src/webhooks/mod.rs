//! Webhook ingest: `POST /webhooks/{source}`, outside `/api/v1` and without the API key (the
//! delivery's signature is its authentication), and the matching of stored events to workers.
//!
//! Order of checks, each refusal storing no event (its `webhook` entry in `/logs` says why,
//! under the per-source refusal budget). From the path and headers, before a byte of the body
//! is read: unknown source `404`; the source's secret unreadable on the server `503`; a missing
//! signature header, a wrong shared token or a stale timestamp `401`; a declared length over
//! 5 MiB `413`. Then the body, under the server-wide byte budget (`503` with `Retry-After` when
//! spent; `408` when it arrives too slowly; `413` past 5 MiB): signature wrong `401`; over the
//! source's token bucket `429` with `Retry-After`; malformed JSON or a delivery without its id
//! `400`. Slack's `url_verification` challenge is answered (after its signature is checked)
//! without storing. Then the event is inserted — deduplicated on the delivery id, and for
//! GitHub and GitLab on the body's hash within 24 hours — and committed *before* the `202`
//! (invariant 1). Matching happens after the answer: it creates one task per matching worker
//! (unique per event and worker) and moves the event to `matched` or `skipped`. Matching is
//! idempotent, so a crash between the insert and the match is repaired by startup recovery
//! ([`recover`]) re-matching every event still `received`, without duplicate tasks.

pub mod matching;
pub mod verify;

use std::sync::Arc;

use axum::Router;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use mechanics_proto::api::{ApiError, WebhookAccepted};
use mechanics_proto::domain::{Event, EventState, SourceKind, Worker};
use mechanics_store::{
    EventFilter, EventUpdate, NewEvent, NewTask, Store, StoreError, Take, TaskFilter, Tokens,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::Failure;
use crate::pipeline::Refusal;
use crate::sources::SourceCache;
use crate::writeback::WriteBackClient;
use crate::{ServerConfig, Shared, TraceLog};

/// Largest webhook body (DESIGN §3).
pub const MAX_WEBHOOK_BYTES: usize = 5 * 1024 * 1024;

/// What webhooks, cron and write-back share: the source cache, the per-source bucket rate, the
/// write-back HTTP client, and the cron scheduler's wake-up.
pub(crate) struct Integrations {
    pub(crate) sources: Arc<SourceCache>,
    /// The per-source webhook bucket (`webhook_rate_limit`), kept by the store so that every
    /// server on the database shares it. A refused delivery takes no token.
    pub(crate) rate: mechanics_store::TokenRate,
    /// Webhook body bytes being received now, over all deliveries (`webhook_body_budget`): one
    /// permit a byte.
    pub(crate) body_budget: Arc<Semaphore>,
    pub(crate) write_back: WriteBackClient,
    /// Worker policies' memory: sources' own identities, GitHub team memberships.
    pub(crate) policies: crate::policy::Policies,
    /// Rung when the registry changes: the cron scheduler recomputes its next fire.
    pub(crate) cron_wake: Notify,
}

impl Integrations {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        trace: Arc<TraceLog>,
        config: &ServerConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            sources: Arc::new(SourceCache::new(store, trace)),
            body_budget: Arc::new(Semaphore::new(
                config.webhook_body_budget.min(Semaphore::MAX_PERMITS),
            )),
            rate: mechanics_store::TokenRate {
                per_second: config.webhook_rate_limit.per_second,
                burst: config.webhook_rate_limit.burst,
            },
            write_back: WriteBackClient::new()?,
            policies: crate::policy::Policies::default(),
            cron_wake: Notify::new(),
        })
    }
}

/// The answer to a delivery the database could not take (`what` failed): `503` when that is
/// transient, else `500`. The sender is not authenticated to read database errors; it only
/// needs to know that the delivery was not taken and should come again.
fn not_stored(shared: &Shared, name: &str, what: &str, err: &StoreError, now: i64) -> Response {
    shared
        .trace
        .webhook_failed(name, &format!("{what} failed: {err}"), now);
    tracing::error!(source = %name, error = %err, "{what} failed for a webhook");
    let (status, code) = if err.is_transient() {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
    };
    Failure::new(
        status,
        code,
        "the delivery could not be stored; deliver it again later",
    )
    .into_response()
}

/// The `POST /webhooks/{source}` route, registered with its documentation.
pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// [`routes`] as a router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    routes().split_for_parts().0.with_state(shared)
}

/// Refuses a delivery to `source` with `message` (the refusal's status, `Retry-After` on a `503`
/// added by the `Failure`), and records the refusal in the trace and the log, under the trace's
/// budget so that a flood of refusals floods neither. The message names headers and limits,
/// never a secret. When the server is at fault (its secret is unavailable) the message is for
/// the operator, logged as an error, and the sender learns only that it should come again.
fn refused(shared: &Shared, source: &str, refusal: Refusal, message: String) -> Response {
    let recorded = shared
        .trace
        .webhook_refused(source, refusal, &message, shared.clock.now_ms());
    let source = crate::api::quote(source);
    let status = refusal.status();
    if refusal == Refusal::SecretUnavailable {
        if recorded {
            tracing::error!(%source, "{message}");
        }
        return Failure::new(
            status,
            Failure::code_of(status),
            "the source's secret is not available on the server; see the server's log",
        )
        .into_response();
    }
    if recorded {
        tracing::info!(%source, %message, "webhook refused");
    }
    Failure::new(status, Failure::code_of(status), message).into_response()
}

/// Why a webhook body was not read to its end.
enum BodyRefusal {
    TooLarge,
    Busy,
    TooSlow(String),
    Unreadable(String),
}

/// The longest a webhook body may take to arrive, whatever its pace: GitHub gives a whole
/// delivery 10 s. A sender that keeps a body crawling cannot hold its share of the budget for
/// longer.
const WEBHOOK_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a webhook body of at most [`MAX_WEBHOOK_BYTES`], holding its bytes against the
/// server-wide budget as they arrive (a slow sender holds only what it has sent), within
/// [`WEBHOOK_BODY_DEADLINE`]. The reservation lasts as long as the returned permit.
async fn read_body(
    budget: &Arc<Semaphore>,
    body: Body,
) -> Result<(Bytes, OwnedSemaphorePermit), BodyRefusal> {
    tokio::time::timeout(WEBHOOK_BODY_DEADLINE, read_body_within_budget(budget, body))
        .await
        .unwrap_or_else(|_| {
            Err(BodyRefusal::TooSlow(format!(
                "the webhook body did not arrive within {} s",
                WEBHOOK_BODY_DEADLINE.as_secs()
            )))
        })
}

async fn read_body_within_budget(
    budget: &Arc<Semaphore>,
    mut body: Body,
) -> Result<(Bytes, OwnedSemaphorePermit), BodyRefusal> {
    let reserve = |bytes: usize| {
        u32::try_from(bytes)
            .ok()
            .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
            .ok_or(BodyRefusal::Busy)
    };
    let mut permit = reserve(0)?;
    // Pieces kept as they arrive: memory follows what was sent (and reserved), not what a
    // sender announced, and is not doubled by a growing buffer; one exact copy joins them at
    // the end.
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut received = 0;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|err| {
            if mechanics_edge::is_body_too_slow(&err) {
                BodyRefusal::TooSlow(err.to_string())
            } else {
                BodyRefusal::Unreadable(err.to_string())
            }
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        received += chunk.len();
        if received > MAX_WEBHOOK_BYTES {
            return Err(BodyRefusal::TooLarge);
        }
        permit.merge(reserve(chunk.len())?);
        pieces.push(chunk);
    }
    if pieces.len() == 1 {
        return Ok((pieces.swap_remove(0), permit));
    }
    let mut bytes = Vec::with_capacity(received);
    for piece in pieces {
        bytes.extend_from_slice(&piece);
    }
    Ok((Bytes::from(bytes), permit))
}

#[utoipa::path(post, path = "/webhooks/{source}", tag = "webhooks", operation_id = "deliver_webhook", summary = "A platform's delivery to the source `source`", description = "Authenticated by the platform's signature or token (GitHub, GitLab, Slack, Telegram, Standard Webhooks), never by an API key. The body is verified as it arrived, before it is parsed.", security(()), params(("source" = String, Path, description = "The source's name")), request_body(content((String = "application/json"), (String = "application/x-www-form-urlencoded")), description = "The delivery, as the platform sent it"), responses((status = 202, description = "Stored as a new event", body = WebhookAccepted), (status = 200, description = "A delivery seen before: the stored event", body = WebhookAccepted), (status = 400, description = "Unreadable or malformed", body = ApiError), (status = 401, description = "Signature, token or timestamp wrong", body = ApiError), (status = 404, description = "No such source", body = ApiError), (status = 408, description = "The body arrived too slowly", body = ApiError), (status = 413, description = "The body is over the source's limit", body = ApiError), (status = 429, description = "The source's delivery rate is exceeded; `Retry-After` says when", body = ApiError)))]
async fn ingest(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let integrations = &shared.integrations;
    let trace = &shared.trace;
    let refuse = |refusal, message| refused(&shared, &name, refusal, message);
    // Everything the path and headers decide is decided before a byte of the body is read.
    let Some(source) = integrations.sources.get(&name).await else {
        return refuse(
            Refusal::UnknownSource,
            format!("no source named {}", crate::api::quote(&name)),
        );
    };
    let secret = match &source.secret {
        Ok(secret) => secret,
        // The server's configuration is wrong, not the sender's request; the message names the
        // reference, never a value.
        Err(message) => {
            return refuse(
                Refusal::SecretUnavailable,
                format!("cannot verify a webhook: {message}"),
            );
        }
    };
    let now = shared.clock.now_ms();
    let kind = source.source.spec.kind;
    let denied = |denied: verify::Denied| {
        let refusal = match denied {
            verify::Denied::Stale(_) => Refusal::StaleTimestamp,
            verify::Denied::Missing(_) | verify::Denied::Mismatch(_) => Refusal::Signature,
        };
        refuse(refusal, denied.to_string())
    };
    if let Err(err) = verify::verify_headers(kind, secret, &headers, now.div_euclid(1000)) {
        return denied(err);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large =
        || format!("the webhook body is larger than the limit of {MAX_WEBHOOK_BYTES} bytes");
    if declared.is_some_and(|n| n > MAX_WEBHOOK_BYTES as u64) {
        return refuse(Refusal::TooLarge, too_large());
    }
    let (body, _reservation) = match read_body(&integrations.body_budget, body).await {
        Ok(read) => read,
        Err(BodyRefusal::TooLarge) => return refuse(Refusal::TooLarge, too_large()),
        Err(BodyRefusal::Busy) => {
            return refuse(
                Refusal::Busy,
                "the server is receiving too many webhook bodies at once; deliver again shortly"
                    .to_owned(),
            );
        }
        Err(BodyRefusal::TooSlow(message)) => return refuse(Refusal::TooSlow, message),
        Err(BodyRefusal::Unreadable(message)) => {
            return refuse(
                Refusal::Unreadable,
                format!("cannot read the webhook body: {message}"),
            );
        }
    };
    if let Err(err) = verify::verify(kind, secret, &headers, &body, now.div_euclid(1000)) {
        return denied(err);
    }
    let bucket = format!("source:{name}");
    let allowed = shared
        .store
        .take_tokens(&bucket, integrations.rate, Take::IfFree, now)
        .await;
    let not_before = match allowed {
        Ok(Tokens::Granted(_)) => None,
        Ok(Tokens::NotBefore(at)) => Some(at),
        // The bucket's database is unreachable: overload, not the sender's fault.
        Err(err) => {
            return not_stored(
                &shared,
                &name,
                "taking a token of the source's bucket",
                &err,
                now,
            );
        }
    };
    if let Some(at) = not_before {
        let retry_after = u64::try_from((at - now).max(1)).unwrap_or(1).div_ceil(1000);
        let mut response = refuse(
            Refusal::RateLimited,
            format!(
                "the source {} sends more webhooks than its limit; retry in {retry_after} s",
                crate::api::quote(&name)
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(err) => {
            return refuse(
                Refusal::Malformed,
                format!("the webhook body is not JSON: {err}"),
            );
        }
    };
    if kind == SourceKind::Slack
        && payload.get("type").and_then(Value::as_str) == Some("url_verification")
    {
        let challenge = payload.get("challenge").cloned().unwrap_or(Value::Null);
        trace.webhook_challenge(&name, now);
        return axum::Json(json!({ "challenge": challenge })).into_response();
    }
    let delivery = match verify::describe(kind, &headers, &payload) {
        Ok(delivery) => delivery,
        Err(message) => {
            return refuse(
                Refusal::Malformed,
                format!("the delivery is not valid: {message}"),
            );
        }
    };
    let inserted = match shared
        .store
        .insert_event(
            NewEvent {
                source: name.clone(),
                delivery_id: delivery.delivery_id.clone(),
                event_type: delivery.event_type,
                payload,
                body_dedup: body_dedup(kind, &body, now),
            },
            now,
        )
        .await
    {
        Ok(inserted) => inserted,
        Err(err) => return not_stored(&shared, &name, "storing the event", &err, now),
    };
    let event = inserted.record;
    let answer = WebhookAccepted {
        event_id: event.id,
        state: event.state,
        duplicate: !inserted.created,
        duplicate_by: (!inserted.created).then(|| {
            if event.delivery_id == delivery.delivery_id {
                "delivery_id".to_owned()
            } else {
                "body".to_owned()
            }
        }),
    };
    if !inserted.created {
        trace.event_deduplicated(&event, &delivery.delivery_id, now);
        return (StatusCode::OK, axum::Json(answer)).into_response();
    }
    trace.webhook_received(&event, now);
    let matcher = shared.clone();
    tokio::spawn(async move { match_event(&matcher, &event).await });
    (StatusCode::ACCEPTED, axum::Json(answer)).into_response()
}

/// How long a source whose delivery id anyone can forge remembers a body: the same body again
/// within it is a replay under a new id, not a new delivery (README, "Webhooks").
pub const BODY_REPLAY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// The body deduplication of a delivery of `kind` received at `now`, on top of the delivery id
/// (the module's dedup): the SHA-256 of its exact bytes, matched against the last
/// [`BODY_REPLAY_WINDOW_MS`], for the kinds whose delivery id is not authenticated
/// ([`verify::delivery_id_is_forgeable`]); `None` for the others.
fn body_dedup(kind: SourceKind, body: &[u8], now: i64) -> Option<mechanics_store::BodyDedup> {
    use sha2::Digest as _;
    verify::delivery_id_is_forgeable(kind).then(|| mechanics_store::BodyDedup {
        hash: sha2::Sha256::digest(body).into(),
        since_ms: now.saturating_sub(BODY_REPLAY_WINDOW_MS),
    })
}

/// Creates a task for every worker whose webhook trigger matches `event` and whose policy admits
/// it, and moves the event to `matched` (`skipped` when no worker matches, `ignored` when every
/// policy refused it). Idempotent: a task per (event, worker) is unique in the store, an event
/// admitted before is admitted again, and a state move already made is not an error here.
pub(crate) async fn match_event(shared: &Shared, event: &Event) {
    let workers = shared.dispatcher.registry.all().await;
    let mut matched: Vec<&Worker> = workers
        .values()
        .filter(|worker| matching::worker_matches(worker, event))
        .map(|worker| &**worker)
        .collect();
    matched.sort_unstable_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let names: Vec<&str> = matched.iter().map(|w| w.spec.name.as_str()).collect();
    let not_matched: std::collections::BTreeMap<&str, String> = workers
        .values()
        .filter_map(|worker| {
            let why = matching::why_not(worker, event)?;
            Some((worker.spec.name.as_str(), why))
        })
        .collect();
    let now = shared.clock.now_ms();
    let source = shared.integrations.sources.get(&event.source).await;
    // Recorded with the verdicts, so that `event show` names who caused every event, also
    // one that matched no worker (and so had no policy entry naming it).
    let actor = source
        .as_ref()
        .map(|source| crate::policy::actor::of(&source.source.spec, &event.payload).shown());
    shared
        .trace
        .matched(event, &names, &not_matched, actor.as_deref(), now);
    if names.is_empty() {
        tracing::debug!(event = event.id, event_type = %event.event_type, "no worker matches the event");
        set_state(shared, event.id, EventState::Skipped, None).await;
        return;
    }
    let Some(source) = source else {
        let error = format!("the source {:?} is no longer registered", event.source);
        shared.trace.match_failed(event, &error, now);
        set_state(shared, event.id, EventState::Failed, Some(error)).await;
        return;
    };
    // Matched again (recovery after a failure half way): a worker that has its task was
    // admitted before, and deciding again could turn the event `ignored` under a running task.
    let admitted_before: std::collections::HashSet<String> = match shared
        .store
        .list_tasks(&TaskFilter {
            event_id: Some(event.id),
            limit: Some(mechanics_store::MAX_PAGE_SIZE),
            ..TaskFilter::default()
        })
        .await
    {
        Ok(page) => page.items.into_iter().map(|task| task.worker).collect(),
        Err(err) => {
            let error = format!("listing the event's tasks failed: {err}");
            shared.trace.match_failed(event, &error, now);
            return;
        }
    };
    let mut names = Vec::with_capacity(matched.len());
    for worker in matched {
        if admitted_before.contains(&worker.spec.name) {
            names.push(worker.spec.name.as_str());
            continue;
        }
        let policies = &shared.integrations.policies;
        match policies.decide(shared, &source, worker, event).await {
            Ok(verdict) => {
                shared
                    .trace
                    .policy_decided(event, &worker.spec.name, &verdict, now);
                if matches!(verdict, crate::policy::Verdict::Admit { .. }) {
                    names.push(worker.spec.name.as_str());
                }
            }
            Err(err) => {
                // The event stays `received`: recovery matches it again.
                tracing::error!(event = event.id, worker = %worker.spec.name, error = %err, "deciding a worker's policy failed");
                shared.trace.match_failed(event, &err, now);
                return;
            }
        }
    }
    if names.is_empty() {
        set_state(shared, event.id, EventState::Ignored, None).await;
        return;
    }
    for name in names {
        let task = NewTask {
            worker: name.to_owned(),
            event_id: Some(event.id),
            idempotency_key: None,
            // The delivery reaches the worker as `event.payload`; it is not copied into the task.
            payload: Value::Null,
            next_run_at: now,
        };
        match shared.store.create_task(task, now).await {
            Ok(inserted) => {
                shared
                    .trace
                    .event_task_submitted(&inserted.record, inserted.created, now);
            }
            Err(err) => {
                // The event stays `received`: startup recovery matches it again.
                tracing::error!(event = event.id, worker = name, error = %err, "creating a task for an event failed");
                let error = format!("creating a task for the worker {name:?} failed: {err}");
                shared.trace.match_failed(event, &error, now);
                return;
            }
        }
    }
    set_state(shared, event.id, EventState::Matched, None).await;
    shared.dispatcher.wake.notify_one();
    // A task may have ended before the event was `matched`; the write-back loop looks again.
    shared.dispatcher.settle.push(event.id);
}

/// Moves an event; a move another path already made (recovery racing a match) is fine.
pub(crate) async fn set_state(
    shared: &Shared,
    id: i64,
    state: EventState,
    error: Option<String>,
) -> Option<Event> {
    let update = EventUpdate {
        state,
        error,
        next_write_back_at: None,
    };
    match shared
        .store
        .update_event(id, update, shared.clock.now_ms())
        .await
    {
        Ok(event) => Some(event),
        Err(StoreError::InvalidTransition { .. }) => None,
        Err(err) => {
            tracing::error!(event = id, state = %state, error = %err, "updating an event failed");
            None
        }
    }
}

/// Recovery of events: every event still `received` is matched again (or `failed` if its
/// source is gone), and every `matched` or `dispatched` event is handed to the write-back loop,
/// which settles those whose tasks all ended while no server was looking. With
/// `unchanged_before`, only events unchanged since then: with other servers on the database an
/// event changed recently may be another server's work in progress (both steps are idempotent
/// anyway: tasks are unique per event and worker, and a write-back is claimed).
pub(crate) async fn recover(shared: &Shared, unchanged_before: Option<i64>) {
    for state in [
        EventState::Received,
        EventState::Matched,
        EventState::Dispatched,
    ] {
        let mut cursor = None;
        loop {
            let filter = EventFilter {
                state: Some(state),
                cursor,
                limit: Some(mechanics_store::MAX_PAGE_SIZE),
                ..EventFilter::default()
            };
            let page = match shared.store.list_events(&filter).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::error!(error = %err, state = %state, "listing events for recovery failed");
                    break;
                }
            };
            let settled_long_enough =
                |event: &&Event| unchanged_before.is_none_or(|before| event.updated_at < before);
            for event in page.items.iter().filter(settled_long_enough) {
                if state != EventState::Received {
                    shared.dispatcher.settle.push(event.id);
                } else if shared
                    .integrations
                    .sources
                    .get(&event.source)
                    .await
                    .is_some()
                {
                    match_event(shared, event).await;
                } else {
                    let error = format!("the source {:?} is no longer registered", event.source);
                    shared
                        .trace
                        .match_failed(event, &error, shared.clock.now_ms());
                    set_state(shared, event.id, EventState::Failed, Some(error)).await;
                }
            }
            if !page.items.is_empty() {
                tracing::info!(events = page.items.len(), state = %state, "startup recovery of events");
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
}
