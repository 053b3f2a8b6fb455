//! The Logs page: the pipeline trace of `/logs`, newest first, with the same filters (`event`,
//! `task`, `worker`, `action`, `outcome`, `since`, `trace`, `limit`, `cursor`, read by the API's
//! own [`crate::observe::log_query`]) in a GET form, and cursor paging.
//!
//! **Live tail** (`live=1`, on the first page only): the table names its own URL in
//! `data-live`, so the script's live refresh fetches the page again every 2 s while the tab is
//! visible and swaps the new entries in: no script of its own. Without JavaScript, reloading
//! does the same.

use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use mechanics_proto::domain::{LogEntry, LogOutcome};

use super::{Visitor, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::{ApiResult, Failure, ListingQuery};
use crate::observe::{LOG_PARAMS, log_query};
use crate::trace_log::ACTIONS;

/// The query as given: the filters (empty form fields dropped), and whether to tail.
struct Given {
    filters: Vec<(String, String)>,
    live: bool,
}

impl Given {
    fn parse(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> ApiResult<Self> {
        let Query(pairs) = query.map_err(|err| {
            Failure::bad_request(format!("invalid query string: {}", err.body_text()))
        })?;
        let mut live = false;
        let mut filters = Vec::new();
        for (name, value) in pairs {
            match name.as_str() {
                "live" => live = value == "1",
                _ if value.is_empty() => {}
                _ => filters.push((name, value)),
            }
        }
        Ok(Self { filters, live })
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.filters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `/ui/logs?...` with these filters but another cursor, tailing or not.
    fn url(&self, cursor: Option<i64>, live: bool) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.filters {
            if name != "cursor" {
                query.append_pair(name, value);
            }
        }
        if let Some(cursor) = cursor {
            query.append_pair("cursor", &cursor.to_string());
        }
        if live {
            query.append_pair("live", "1");
        }
        let query = query.finish();
        if query.is_empty() {
            "/ui/logs".to_owned()
        } else {
            format!("/ui/logs?{query}")
        }
    }
}

/// `GET /ui/logs`.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    match body(&shared, query).await {
        Ok(body) => html_response(StatusCode::OK, layout(Some(&visitor), "Logs", body)),
        Err(failure) => failure_page(&visitor, &failure),
    }
}

async fn body(
    shared: &Shared,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Markup> {
    let given = Given::parse(query)?;
    let params = ListingQuery::parse(Ok(Query(given.filters.clone())), LOG_PARAMS)?;
    let query = log_query(params, shared.clock.now_ms())?;
    // As `GET /logs` does: the steps just taken are in the buffer, not yet in the store.
    if let Err(err) = shared.trace.flush().await {
        tracing::warn!(error = %err, "flushing the pipeline trace before a read failed");
    }
    let page = shared.store.query_logs(&query).await?;
    let tailing = given.live && query.cursor.is_none();
    let live_url = tailing.then(|| given.url(None, true));
    Ok(html! {
        h1 { "Logs" }
        (filter_form(&given))
        p.paging {
            @if tailing {
                "Live: new entries appear every 2 s while this tab is shown · "
                a href=(given.url(None, false)) { "Stop" }
            } @else {
                a #live-tail href=(given.url(None, true)) { "Live tail" }
            }
        }
        section #log-live data-live=[live_url] {
            @if page.items.is_empty() {
                p.empty { "No entries match." }
            } @else {
                table.logs {
                    thead {
                        tr {
                            th { "Time" } th { "Step" } th { "Outcome" } th { "Worker" } th { "Task" }
                            th { "Event" } th { "Trace" } th { "Detail" }
                        }
                    }
                    tbody {
                        @for entry in &page.items { (row(entry)) }
                    }
                }
            }
        }
        @if let Some(next) = page.next_cursor {
            p.paging { a rel="next" href=(given.url(Some(next), false)) { "Older entries →" } }
        }
    })
}

fn filter_form(given: &Given) -> Markup {
    let text = |name: &str| given.value(name).map(str::to_owned);
    html! {
        form.filters method="get" action="/ui/logs" {
            label for="action" { "Step" }
            select id="action" name="action" {
                option value="" { "any" }
                @for action in ACTIONS {
                    option value=(action) selected[given.value("action") == Some(action)] { (action) }
                }
            }
            label for="outcome" { "Outcome" }
            select id="outcome" name="outcome" {
                option value="" { "any" }
                @for outcome in LogOutcome::ALL {
                    option value=(outcome.as_str()) selected[given.value("outcome") == Some(outcome.as_str())] { (outcome.as_str()) }
                }
            }
            label for="worker" { "Worker" }
            input id="worker" name="worker" value=[text("worker")];
            label for="task" { "Task" }
            input id="task" name="task" size="6" value=[text("task")];
            label for="event" { "Event" }
            input id="event" name="event" size="6" value=[text("event")];
            label for="trace" { "Trace" }
            input id="trace" name="trace" value=[text("trace")];
            label for="since" { "Since" }
            input id="since" name="since" size="8" placeholder="15m, 24h, RFC 3339" value=[text("since")];
            @if let Some(limit) = text("limit") {
                input type="hidden" name="limit" value=(limit);
            }
            @if given.live {
                input type="hidden" name="live" value="1";
            }
            button type="submit" { "Filter" }
        }
    }
}

fn row(entry: &LogEntry) -> Markup {
    let record = &entry.record;
    html! {
        tr id={"log-" (entry.id)} {
            td { (timestamp(record.ts)) }
            td { (record.action) }
            td { span class={"outcome " (record.outcome.as_str())} { (record.outcome.as_str()) } }
            td { (record.worker.as_deref().unwrap_or("")) }
            td { @if let Some(task) = record.task_id { a href={"/ui/tasks/" (task)} { "#" (task) } } }
            td { @if let Some(event) = record.event_id { a href={"/ui/events/" (event)} { "#" (event) } } }
            td { @if let Some(trace) = &record.trace_id { a href={"/ui/logs?trace=" (super::encode(trace))} { (trace) } } }
            td {
                @if let Some(detail) = &record.detail { code { (detail) } }
                @if let Some(error) = &record.error { " " span.error { (error) } }
            }
        }
    }
}
