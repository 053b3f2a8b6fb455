//! `/api/v1/events`: the received events, what became of each per worker (matching, policy,
//! task), and redelivery. It answers "why did my bot (not) react?" in one call: the verdicts
//! are read from the event's own `match` and `policy` entries of the trace, so they are the
//! ones given when it arrived, not what today's workers would say.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use mechanics_proto::api::{
    ApiError, EventDetail, EventList, EventWorker, EventWriteBack, Redeliver, WebhookAccepted,
};
use mechanics_proto::domain::{Event, EventState, LogEntry};
use mechanics_store::{EventFilter, LogQuery, NewEvent, TaskFilter};
use serde_json::Value;

use crate::Shared;
use crate::api::{ApiResult, Failure, ListingQuery, parse_body, parse_id, shown_event, shown_task};

/// The routes under `/api/v1/events`, merged into the API router (and so behind its
/// authentication).
pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<Shared>> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(list_events))
        .routes(utoipa_axum::routes!(show_event))
        .routes(utoipa_axum::routes!(redeliver))
}

/// The query parameters of the events listing (the API's and the dashboard's).
pub(crate) const LISTING_PARAMETERS: &[&str] = &["state", "source", "type", "limit", "cursor"];

/// The store filter of the events listing's parameters (see [`LISTING_PARAMETERS`]).
pub(crate) fn event_filter(q: &mut ListingQuery) -> ApiResult<EventFilter> {
    Ok(EventFilter {
        source: q.text("source"),
        state: q.one_of("state", EventState::ALL)?,
        event_type: q.text("type"),
        write_back_due_by: None,
        limit: q.limit()?,
        cursor: q.id("cursor")?,
    })
}

#[utoipa::path(get, path = "/events", tag = "events", operation_id = "list_events", summary = "Events, newest first", params(("state" = Option<EventState>, Query, description = "Only events in this state"), ("source" = Option<String>, Query, description = "Only this source's events"), ("type" = Option<String>, Query, description = "Only events of this type (issues.opened)"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"), ("cursor" = Option<i64>, Query, minimum = 1, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of events", body = EventList)))]
async fn list_events(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<axum::Json<EventList>> {
    let mut q = ListingQuery::parse(query, LISTING_PARAMETERS)?;
    let filter = event_filter(&mut q)?;
    let page = shared.store.list_events(&filter).await?;
    Ok(axum::Json(EventList {
        events: page
            .items
            .into_iter()
            .map(|event| shown_event(&shared, event))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/events/{id}", tag = "events", operation_id = "show_event", summary = "An event, and per worker what became of it", params(("id" = i64, Path, description = "The event's id")), responses((status = 200, description = "The event, with its actor and per worker the match, the policy's decision and the task", body = EventDetail)))]
async fn show_event(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EventDetail>> {
    Ok(axum::Json(event_detail(&shared, parse_id(&id)?).await?))
}

/// Event `id` and, per worker, what became of it (the API's and the dashboard's Event).
pub(crate) async fn event_detail(shared: &Shared, id: i64) -> ApiResult<EventDetail> {
    let Some(event) = shared.store.get_event(id).await? else {
        return Err(Failure::not_found(format!("no event {id}")));
    };
    // The steps of the event still buffered are part of the answer.
    if let Err(err) = shared.trace.flush().await {
        tracing::warn!(error = %err, "flushing the pipeline trace before a read failed");
    }
    let mut workers: BTreeMap<String, EventWorker> = BTreeMap::new();
    let mut actor = None;
    let matches = steps(shared, id, "match").await?;
    let verdicts = !matches.is_empty();
    for entry in matches {
        let detail = entry.record.detail.unwrap_or(Value::Null);
        actor = detail["actor"].as_str().map(str::to_owned).or(actor);
        for name in detail["workers"].as_array().into_iter().flatten() {
            if let Some(name) = name.as_str() {
                slot(&mut workers, name).matched = true;
            }
        }
        for (name, why) in detail["not_matched"].as_object().into_iter().flatten() {
            slot(&mut workers, name).not_matched = why.as_str().map(str::to_owned);
        }
    }
    for entry in steps(shared, id, "policy").await? {
        let (Some(name), Some(detail)) = (entry.record.worker.as_deref(), entry.record.detail)
        else {
            continue;
        };
        actor = detail["actor"].as_str().map(str::to_owned).or(actor);
        let worker = slot(&mut workers, name);
        worker.policy = Some(entry.record.outcome.as_str().to_owned());
        worker.policy_reason = detail["reason"]
            .as_str()
            .map(|reason| format!("{reason}: {}", detail["why"].as_str().unwrap_or("")));
    }
    let tasks = shared
        .store
        .list_tasks(&TaskFilter {
            event_id: Some(id),
            limit: Some(mechanics_store::MAX_PAGE_SIZE),
            ..TaskFilter::default()
        })
        .await?;
    for task in tasks.items {
        let worker = slot(&mut workers, &task.worker);
        worker.matched = true;
        worker.task = Some(shown_task(shared, task));
    }
    let write_back = steps(shared, id, "write_back").await?.pop().map(|entry| {
        let detail = entry.record.detail.unwrap_or(Value::Null);
        EventWriteBack {
            outcome: entry.record.outcome,
            ts: entry.record.ts,
            tries: detail["tries"].as_u64().and_then(|n| u32::try_from(n).ok()),
            error: entry.record.error,
            reason: detail["reason"].as_str().map(str::to_owned),
            next_attempt_at: detail["next_attempt_at"].as_i64(),
        }
    });
    Ok(EventDetail {
        event: shown_event(shared, event),
        actor,
        verdicts,
        workers: workers.into_values().collect(),
        write_back,
    })
}

/// The entry of worker `name`, made empty if it is not there yet.
fn slot<'a>(workers: &'a mut BTreeMap<String, EventWorker>, name: &str) -> &'a mut EventWorker {
    workers
        .entry(name.to_owned())
        .or_insert_with(|| EventWorker {
            worker: name.to_owned(),
            matched: false,
            not_matched: None,
            policy: None,
            policy_reason: None,
            task: None,
        })
}

/// The trace entries of event `id` with `action`, oldest first.
async fn steps(shared: &Shared, id: i64, action: &str) -> ApiResult<Vec<LogEntry>> {
    let page = shared
        .store
        .query_logs(&LogQuery {
            event_id: Some(id),
            action: Some(action.to_owned()),
            limit: Some(mechanics_store::MAX_PAGE_SIZE),
            ..LogQuery::default()
        })
        .await?;
    let mut entries = page.items;
    entries.reverse();
    Ok(entries)
}

/// Delivers event `id` again as a new event, matched as if it had just arrived: the way to try a
/// changed worker, filter or policy on a real delivery.
#[utoipa::path(post, path = "/events/{id}/redeliver", tag = "events", operation_id = "redeliver_event", summary = "Deliver an event again as a new event", params(("id" = i64, Path, description = "The event's id")), request_body(content = Option<Redeliver>, description = "Optional: a key naming the redelivery"), responses((status = 202, description = "Stored as a new event, being matched", body = WebhookAccepted), (status = 200, description = "This key's redelivery exists already", body = WebhookAccepted), (status = 409, description = "The event's source is gone", body = ApiError)))]
async fn redeliver(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<WebhookAccepted>)> {
    let id = parse_id(&id)?;
    // The body is optional: none, or `null`, is a redelivery without a key.
    let empty = matches!(&body, Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace));
    let request: Redeliver = if empty {
        Redeliver::default()
    } else {
        parse_body::<Option<Redeliver>>(body)?.unwrap_or_default()
    };
    let Some(event) = shared.store.get_event(id).await? else {
        return Err(Failure::not_found(format!("no event {id}")));
    };
    if shared
        .integrations
        .sources
        .get(&event.source)
        .await
        .is_none()
    {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the source {:?} of event {id} is no longer registered",
                event.source
            ),
        ));
    }
    let key = match request.key {
        Some(key) if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) => {
            return Err(Failure::bad_request(
                "key: use 1 to 200 characters without control characters",
            ));
        }
        Some(key) => key,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let now = shared.clock.now_ms();
    let inserted = shared
        .store
        .insert_event(
            NewEvent {
                source: event.source.clone(),
                delivery_id: format!("redeliver:{id}:{key}"),
                event_type: event.event_type.clone(),
                payload: event.payload.clone(),
                body_dedup: None,
            },
            now,
        )
        .await?;
    let copy: Event = inserted.record;
    let answer = WebhookAccepted {
        event_id: copy.id,
        state: copy.state,
        duplicate: !inserted.created,
        // A redelivery's duplicate is its key used before, which the answer already says.
        duplicate_by: None,
    };
    if !inserted.created {
        return Ok((StatusCode::OK, axum::Json(answer)));
    }
    shared.trace.webhook_received(&copy, now);
    let matcher = shared.clone();
    tokio::spawn(async move { crate::webhooks::match_event(&matcher, &copy).await });
    Ok((StatusCode::ACCEPTED, axum::Json(answer)))
}
