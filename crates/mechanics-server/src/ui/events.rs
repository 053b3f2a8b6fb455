//! The Events list and the Event page: what arrived, and per worker what became of it.
//!
//! Both read through the API's own queries ([`crate::events::event_filter`],
//! [`crate::events::event_detail`]), so the dashboard shows what `GET /api/v1/events` and
//! `mechanics event show` show: the list takes the same filters (`state`, `source`, `type`,
//! `limit`, `cursor`), newest first, and the page the verdicts given when the event arrived.

use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use mechanics_proto::domain::EventState;
use mechanics_store::EventFilter;

use super::tasks::pretty;
use super::{Visitor, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::{ApiResult, Failure, ListingQuery, parse_id};
use crate::events::{LISTING_PARAMETERS, event_detail, event_filter};

/// The listing's filters, as given (empty form fields dropped: the filter form sends them).
fn parse_filters(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<EventFilter> {
    let given =
        query.map(|Query(pairs)| Query(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect()));
    event_filter(&mut ListingQuery::parse(given, LISTING_PARAMETERS)?)
}

/// The query string of `filter` with another cursor.
fn query_with_cursor(filter: &EventFilter, cursor: i64) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(state) = filter.state {
        query.append_pair("state", state.as_str());
    }
    if let Some(source) = &filter.source {
        query.append_pair("source", source);
    }
    if let Some(event_type) = &filter.event_type {
        query.append_pair("type", event_type);
    }
    if let Some(limit) = filter.limit {
        query.append_pair("limit", &limit.to_string());
    }
    query.append_pair("cursor", &cursor.to_string());
    query.finish()
}

/// `GET /ui/events`.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let filter = match parse_filters(query) {
        Ok(filter) => filter,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    let page = match shared.store.list_events(&filter).await {
        Ok(page) => page,
        Err(err) => return failure_page(&visitor, &Failure::from(err)),
    };
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action="/ui/events" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" { "any" }
                @for state in EventState::ALL {
                    option value=(state.as_str()) selected[filter.state == Some(*state)] { (state.as_str()) }
                }
            }
            label for="source" { "Source" }
            input id="source" name="source" value=[filter.source.as_deref()];
            label for="type" { "Type" }
            input id="type" name="type" value=[filter.event_type.as_deref()];
            button type="submit" { "Filter" }
        }
        @if page.items.is_empty() {
            p.empty { "No events match." }
        } @else {
            table.events {
                thead { tr { th { "Event" } th { "Source" } th { "Type" } th { "State" } th { "Received" } th { "Error" } } }
                tbody {
                    @for event in &page.items {
                        tr id={"event-" (event.id)} {
                            td { a href={"/ui/events/" (event.id)} { "#" (event.id) } }
                            td { (event.source) }
                            td { (event.event_type) }
                            td { span class={"state " (event.state.as_str())} { (event.state.as_str()) } }
                            td { (timestamp(event.received_at)) }
                            td.error { (event.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = page.next_cursor {
            p.paging { a rel="next" href={"/ui/events?" (query_with_cursor(&filter, next))} { "Older events →" } }
        }
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "Events", body))
}

/// `GET /ui/events/{id}`.
pub(super) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
) -> Response {
    let detail = match parse_id(&id) {
        Ok(id) => event_detail(&shared, id).await,
        Err(failure) => Err(failure),
    };
    let detail = match detail {
        Ok(detail) => detail,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    // `event_detail` has redacted the payload already.
    let event = &detail.event;
    let write_back = detail
        .write_back_summary(timestamp)
        .unwrap_or_else(|| "none yet".to_owned());
    let body = html! {
        h1 { "Event #" (event.id) " " span class={"state " (event.state.as_str())} { (event.state.as_str()) } }
        dl.event {
            dt { "Source" } dd #source { (event.source) }
            dt { "Type" } dd #type { (event.event_type) }
            dt { "Actor" } dd #actor { (detail.actor.as_deref().unwrap_or("—")) }
            dt { "Delivery id" } dd #delivery { (event.delivery_id) }
            dt { "Received" } dd { (timestamp(event.received_at)) }
            dt { "Updated" } dd { (timestamp(event.updated_at)) }
            dt { "Write-back" } dd #write-back { (write_back) }
            @if let Some(error) = &event.error {
                dt { "Error" } dd.error #error { (error) }
            }
        }
        h2 { "Workers" }
        @if detail.workers.is_empty() {
            p.empty { "No worker has a webhook trigger on this source." }
        } @else {
            table.workers {
                thead { tr { th { "Worker" } th { "Matched" } th { "Policy" } th { "Task" } } }
                tbody {
                    @for worker in &detail.workers {
                        tr id={"worker-" (worker.worker)} {
                            td { a href={"/ui/tasks?worker=" (super::encode(&worker.worker))} { (worker.worker) } }
                            td {
                                @if worker.matched { "yes" } @else { "no" }
                                @if let Some(why) = &worker.not_matched { ": " span.why { (why) } }
                            }
                            td {
                                (worker.policy.as_deref().unwrap_or("—"))
                                @if let Some(reason) = &worker.policy_reason { ": " span.why { (reason) } }
                            }
                            td {
                                @if let Some(task) = &worker.task {
                                    a href={"/ui/tasks/" (task.id)} { "#" (task.id) }
                                    " " span class={"state " (task.state.as_str())} { (task.state.as_str()) }
                                } @else { "—" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Payload" }
        pre.payload { (pretty(&event.payload)) }
    };
    html_response(
        StatusCode::OK,
        layout(Some(&visitor), &format!("Event #{}", event.id), body),
    )
}
