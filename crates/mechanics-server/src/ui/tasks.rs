//! The Tasks list, the Task page, and the task actions: Retry, Cancel, Replay and bulk.
//!
//! The list takes the API listing's filters (`state`, `worker`, `since`, `q`, `cursor`,
//! `limit`), newest first: `since` is a duration back from now (`30m`, `1h`, `2d`) or an
//! RFC 3339 time, `q` a text searched in the payload, result and error as shown (redacted). A task's action answers with a redirect to its page, or, when the script sent it
//! (`X-UI-Fragment: 1`), with the page's live part, which the script swaps in place. A bulk
//! action (the selected rows, or all that match the filters, at most [`MAX_BULK`]) runs in the
//! background; `/ui/bulk/{id}` shows its progress line.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use mechanics_proto::api::ApiScope;
use mechanics_proto::domain::{LogEntry, Task, TaskAttempt, TaskState};
use mechanics_store::{LogQuery, TaskFilter};
use serde_json::Value;

use super::{Visitor, encode, error_page, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::{ApiResult, Failure, ListingQuery, list_shown_tasks, parse_id, shown_task};
use crate::trace_log::REDACTED;

/// The most tasks one bulk action changes.
pub(super) const MAX_BULK: usize = 10_000;
/// How many finished bulk actions' progress lines are kept.
const KEPT_BULK_JOBS: usize = 100;
/// The most trace entries the Task page shows.
const TRACE_ENTRIES: u32 = 200;

/// The listing's filters, as given (empty form fields dropped: a filter form sends them).
struct Filters {
    state: Option<TaskState>,
    worker: Option<String>,
    /// `since` as typed (a relative one stays relative in the links) and as unix ms.
    since: Option<(String, i64)>,
    q: Option<String>,
    cursor: Option<i64>,
    limit: Option<u32>,
}

impl Filters {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        now: i64,
    ) -> ApiResult<Self> {
        let given = query
            .map(|Query(pairs)| Query(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect()));
        let mut q =
            ListingQuery::parse(given, &["state", "worker", "since", "q", "cursor", "limit"])?;
        Ok(Self {
            state: q.one_of("state", TaskState::ALL)?,
            worker: q.text("worker"),
            since: q
                .text("since")
                .map(|text| parse_since(text, now))
                .transpose()?,
            q: q.text("q"),
            cursor: q.id("cursor")?,
            limit: q.limit()?,
        })
    }

    fn store_filter(&self) -> TaskFilter {
        TaskFilter {
            state: self.state,
            worker: self.worker.clone(),
            event_id: None,
            created_since: self.since.as_ref().map(|(_, at)| *at),
            limit: self.limit,
            cursor: self.cursor,
        }
    }

    /// The hidden fields that make "all matching" of a bulk action these filters.
    fn hidden_fields(&self) -> Markup {
        html! {
            @if let Some(state) = self.state {
                input type="hidden" name="state" value=(state.as_str());
            }
            @if let Some(worker) = &self.worker {
                input type="hidden" name="worker" value=(worker);
            }
            @if let Some((since, _)) = &self.since {
                input type="hidden" name="since" value=(since);
            }
            @if let Some(q) = &self.q {
                input type="hidden" name="q" value=(q);
            }
        }
    }

    /// The query string of these filters with another cursor.
    fn query_with_cursor(&self, cursor: Option<i64>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(state) = self.state {
            query.append_pair("state", state.as_str());
        }
        if let Some(worker) = &self.worker {
            query.append_pair("worker", worker);
        }
        if let Some((since, _)) = &self.since {
            query.append_pair("since", since);
        }
        if let Some(q) = &self.q {
            query.append_pair("q", q);
        }
        if let Some(limit) = self.limit {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(cursor) = cursor {
            query.append_pair("cursor", &cursor.to_string());
        }
        query.finish()
    }
}

/// `GET /ui/tasks`.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let filters = match Filters::parse(query, shared.clock.now_ms()) {
        Ok(filters) => filters,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    let page = match list_shown_tasks(&shared, &filters.store_filter(), filters.q.as_deref()).await
    {
        Ok(page) => page,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    let operate = visitor.may(ApiScope::Operate);
    let body = html! {
        h1 { "Tasks" }
        form.filters method="get" action="/ui/tasks" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" { "any" }
                @for state in TaskState::ALL {
                    option value=(state.as_str()) selected[filters.state == Some(*state)] { (state.as_str()) }
                }
            }
            label for="worker" { "Worker" }
            input id="worker" name="worker" value=[filters.worker.as_deref()];
            label for="since" { "Since" }
            input id="since" name="since" size="12" placeholder="1h, 2d, RFC 3339"
                value=[filters.since.as_ref().map(|(since, _)| since.as_str())];
            label for="q" { "Search" }
            input id="q" name="q" type="search" placeholder="payload, result, error"
                value=[filters.q.as_deref()];
            button type="submit" { "Filter" }
        }
        form #bulk method="post" action="/ui/tasks/bulk" {
            @if operate {
                (visitor.csrf_field())
                (filters.hidden_fields())
                div.actions {
                    "Selected: "
                    button type="submit" name="action" value="retry" { "Retry" }
                    button type="submit" name="action" value="cancel" { "Cancel" }
                    " · All matching (at most " (MAX_BULK) "): "
                    button type="submit" name="action" value="retry-all" { "Retry all" }
                    button type="submit" name="action" value="cancel-all" { "Cancel all" }
                }
            }
            table.tasks {
                thead {
                    tr {
                        @if operate { th { input #select-all type="checkbox" title="Select all rows"; } }
                        th { "Task" } th { "Worker" } th { "State" } th { "Tries" } th { "Created" } th { "Updated" }
                    }
                }
                tbody #task-rows {
                    @for task in &page.items {
                        (row(task, operate))
                    }
                }
            }
            @if page.items.is_empty() {
                @if page.next_cursor.is_some() {
                    // A search drops the tasks that match only in hidden text: a page can
                    // come out empty with older ones still to read.
                    p.empty { "No task on this page matches; older ones may." }
                } @else {
                    p.empty { "No tasks match." }
                }
            }
        }
        @if let Some(next) = page.next_cursor {
            p.paging { a rel="next" href={"/ui/tasks?" (filters.query_with_cursor(Some(next)))} { "Older tasks →" } }
        }
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "Tasks", body))
}

/// `since` as typed and as unix ms at `now`, or why it is neither a duration back from now nor
/// an RFC 3339 time.
fn parse_since(text: String, now: i64) -> ApiResult<(String, i64)> {
    match crate::observe::parse_since(&text, now) {
        Ok(at) => Ok((text, at)),
        Err(err) => Err(Failure::bad_request(format!("since: {err}")).at("since")),
    }
}

/// One row of the list; an unfinished one names itself for the script's refresh.
fn row(task: &Task, operate: bool) -> Markup {
    let live = (!task.state.is_end()).then_some(task.id);
    html! {
        tr id={"task-" (task.id)} data-live-row=[live] {
            @if operate { td { input type="checkbox" name="id" value=(task.id) aria-label={"Select task " (task.id)}; } }
            td { a href={"/ui/tasks/" (task.id)} { "#" (task.id) } }
            td { (task.worker) }
            td { span class={"state " (task.state.as_str())} { (task.state.as_str()) } }
            td { (task.tries) }
            td { (timestamp(task.created_at)) }
            td { (timestamp(task.updated_at)) }
        }
    }
}

/// `GET /ui/tasks/rows?id=1&id=2`: those rows again (the list's live refresh), in a table.
pub(super) async fn rows(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let mut ids = Vec::new();
    for (name, value) in pairs {
        let id = match (name.as_str(), parse_id(&value)) {
            ("id", Ok(id)) => id,
            ("id", Err(failure)) => return failure_page(&visitor, &failure.at("id")),
            _ => {
                return failure_page(
                    &visitor,
                    &Failure::bad_request(format!(
                        "unknown query parameter {}; this takes only id",
                        crate::api::quote(&name)
                    )),
                );
            }
        };
        ids.push(id);
    }
    if ids.len() > mechanics_store::MAX_PAGE_SIZE as usize {
        return failure_page(
            &visitor,
            &Failure::bad_request(format!(
                "id: at most {} rows at once",
                mechanics_store::MAX_PAGE_SIZE
            )),
        );
    }
    let operate = visitor.may(ApiScope::Operate);
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        match shared.store.get_task(id).await {
            Ok(Some(task)) => found.push(task),
            Ok(None) => {}
            Err(err) => return failure_page(&visitor, &Failure::from(err)),
        }
    }
    html_response(
        StatusCode::OK,
        html! { table { tbody { @for task in &found { (row(task, operate)) } } } },
    )
}

/// What the Task page shows.
struct TaskView {
    task: Task,
    attempts: Vec<TaskAttempt>,
    console: Vec<mechanics_proto::domain::AttemptConsoleLine>,
    trace: Vec<LogEntry>,
    /// Ended, but the step that ended it is not in the trace yet: the page refreshes on.
    settling: bool,
}

/// How long an ended task's page waits for the step that ended it to reach the trace.
const SETTLE_MS: i64 = 10_000;

/// The task `id` with its attempts, console and trace, redacted as the API shows them.
async fn load(shared: &Shared, id: i64) -> ApiResult<TaskView> {
    let Some(task) = shared.store.get_task(id).await? else {
        return Err(Failure::not_found(format!("no task {id}")));
    };
    let redactor = shared.trace.redactor();
    let mut console = shared.store.task_console(id).await?;
    for entry in &mut console {
        if let std::borrow::Cow::Owned(redacted) = redactor.redact(&entry.line.message) {
            entry.line.message = redacted;
        }
    }
    let mut attempts = shared.store.task_attempts(id).await?;
    for attempt in &mut attempts {
        if let Some(error) = &mut attempt.error
            && let std::borrow::Cow::Owned(redacted) = redactor.redact(error)
        {
            *error = redacted;
        }
    }
    // Steps still in the trace's buffer are flushed first, as `GET /logs` does: a task that
    // just ended would otherwise show a trace without its last steps, and its page no longer
    // refreshes itself.
    if let Err(err) = shared.trace.flush().await {
        tracing::warn!(error = %err, "flushing the pipeline trace before a read failed");
    }
    let mut trace = shared
        .store
        .query_logs(&LogQuery {
            task_id: Some(id),
            limit: Some(TRACE_ENTRIES),
            ..LogQuery::default()
        })
        .await?
        .items;
    // The store answers newest first; a trace reads in order.
    trace.sort_by_key(|entry| entry.id);
    // The step that ends a task is traced just after its end is stored, at the same time: a
    // page read in between refreshes until it shows up (and gives up after a while, so that
    // an end traced at another time cannot keep a page refreshing for good).
    let settling = task.state.is_end()
        && shared.clock.now_ms().saturating_sub(task.updated_at) < SETTLE_MS
        && trace
            .last()
            .is_none_or(|entry| entry.record.ts < task.updated_at);
    Ok(TaskView {
        task: shown_task(shared, task),
        attempts,
        console,
        trace,
        settling,
    })
}

/// `GET /ui/tasks/{id}`.
pub(super) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
) -> Response {
    let view = match parse_id(&id) {
        Ok(id) => load(&shared, id).await,
        Err(failure) => Err(failure),
    };
    let view = match view {
        Ok(view) => view,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    let task = &view.task;
    // The page shows the payload redacted (never a secret), so the form is pre-filled with it.
    let payload_hides_secrets = task.payload.to_string().contains(REDACTED);
    let body = html! {
        h1 { "Task #" (task.id) " · " a href={"/ui/tasks?worker=" (encode(&task.worker))} { (task.worker) } }
        p #flash.error hidden {}
        (live_part(&view, &visitor))
        h2 { "Payload" }
        pre.json { (pretty(&task.payload)) }
        @if visitor.may(ApiScope::Operate) {
            h2 { "Replay" }
            form.replay method="post" action={"/ui/tasks/" (task.id) "/replay"} data-json-field="payload" {
                (visitor.csrf_field())
                @if payload_hides_secrets {
                    p #replay-redacted.hint {
                        "Secrets of this payload are shown as " code { (REDACTED) } ": type each \
                         real value in its place (or remove it) before replaying; a payload that \
                         still holds " code { (REDACTED) } " is refused."
                    }
                }
                label for="payload" { "Payload (JSON) of a new task for " (task.worker) }
                textarea id="payload" name="payload" rows="8" spellcheck="false" { (pretty(&task.payload)) }
                p.error data-json-error hidden {}
                button type="submit" { "Replay" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout(Some(&visitor), &format!("Task #{}", task.id), body),
    )
}

/// `GET /ui/tasks/{id}/live`: the part of the Task page that changes while it runs.
pub(super) async fn live(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
) -> Response {
    match live_answer(&shared, &visitor, &id).await {
        Ok(response) => response,
        Err(failure) => failure_page(&visitor, &failure),
    }
}

async fn live_answer(shared: &Shared, visitor: &Visitor, id: &str) -> ApiResult<Response> {
    let view = load(shared, parse_id(id)?).await?;
    Ok(html_response(StatusCode::OK, live_part(&view, visitor)))
}

/// State, actions, result or error, attempts, console and trace; refreshed by the script (its
/// `data-live` URL) until the task has ended and the step that ended it is traced.
fn live_part(view: &TaskView, visitor: &Visitor) -> Markup {
    let task = &view.task;
    let live =
        (!task.state.is_end() || view.settling).then(|| format!("/ui/tasks/{}/live", task.id));
    let operate = visitor.may(ApiScope::Operate);
    html! {
        section #task-live data-live=[live] {
            dl.summary {
                dt { "State" } dd { span #task-state class={"state " (task.state.as_str())} { (task.state.as_str()) } }
                dt { "Tries" } dd { (task.tries) }
                dt { "Created" } dd { (timestamp(task.created_at)) }
                dt { "Updated" } dd { (timestamp(task.updated_at)) }
                @if let Some(event) = task.event_id {
                    dt { "Event" } dd { a href={"/ui/events/" (event)} { "#" (event) } }
                }
            }
            @if operate {
                div.actions {
                    @if matches!(task.state, TaskState::Failed | TaskState::Dead) {
                        form method="post" action={"/ui/tasks/" (task.id) "/retry"} data-async="task-live" {
                            (visitor.csrf_field())
                            button #retry type="submit" { "Retry" }
                        }
                    }
                    @if !task.state.is_end() {
                        form method="post" action={"/ui/tasks/" (task.id) "/cancel"} data-async="task-live" {
                            (visitor.csrf_field())
                            button #cancel type="submit" { "Cancel" }
                        }
                    }
                }
            }
            @if let Some(result) = &task.result {
                h2 { "Result" }
                pre #task-result.json { (pretty(result)) }
            }
            @if let Some(error) = &task.error {
                h2 { "Error" }
                pre #task-error.error { (error) }
            }
            h2 { "Attempts" }
            @if view.attempts.is_empty() {
                p.empty { "None yet." }
            } @else {
                table.attempts {
                    thead { tr { th { "Attempt" } th { "Started" } th { "Duration" } th { "Node" } th { "Outcome" } th { "Error" } } }
                    tbody {
                        @for (number, attempt) in (1..).zip(&view.attempts) {
                            tr {
                                td { (number) }
                                td { (timestamp(attempt.started_at)) }
                                td { (attempt.ended_at - attempt.started_at) " ms" }
                                td { (attempt.node.as_deref().unwrap_or("")) }
                                td { (attempt.outcome) }
                                td { (attempt.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            h2 { "Console" }
            @if view.console.is_empty() {
                p.empty { "No output." }
            } @else {
                pre.console {
                    @for entry in &view.console {
                        "[attempt " (TaskAttempt::number(&view.attempts, entry.attempt)) "] " (entry.line.level) " " (entry.line.message) "\n"
                    }
                }
            }
            h2 { "Trace" }
            table.trace {
                thead { tr { th { "Time" } th { "Step" } th { "Outcome" } th { "Attempt" } th { "Detail" } } }
                tbody {
                    @for entry in &view.trace {
                        tr {
                            td { (timestamp(entry.record.ts)) }
                            td { (entry.record.action) }
                            td { (entry.record.outcome) }
                            td { (entry.record.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                            td { (trace_detail(entry)) }
                        }
                    }
                }
            }
        }
    }
}

/// A trace entry's error and detail; a replay's detail links the other task.
fn trace_detail(entry: &LogEntry) -> Markup {
    let detail = entry.record.detail.as_ref();
    let linked = detail.and_then(|d| {
        d.get("replay_of")
            .map(|id| ("replay of ", id))
            .or_else(|| d.get("replayed_as").map(|id| ("replayed as ", id)))
    });
    html! {
        @if let Some((words, id)) = linked.and_then(|(w, id)| Some((w, id.as_i64()?))) {
            (words) a href={"/ui/tasks/" (id)} { "#" (id) }
        } @else if let Some(detail) = detail {
            code { (detail) }
        }
        @if let Some(error) = &entry.record.error {
            " " span.error { (error) }
        }
    }
}

pub(super) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Whether the script sent the request and wants the live part back, not a redirect.
fn wants_fragment(headers: &HeaderMap) -> bool {
    headers.contains_key("x-ui-fragment")
}

/// After a task action on `id`: the live part for the script, a redirect for a plain form.
async fn after_action(
    shared: &Shared,
    visitor: &Visitor,
    headers: &HeaderMap,
    id: i64,
) -> Response {
    if wants_fragment(headers) {
        match live_answer(shared, visitor, &id.to_string()).await {
            Ok(response) => response,
            Err(failure) => failure_page(visitor, &failure),
        }
    } else {
        Redirect::to(&format!("/ui/tasks/{id}")).into_response()
    }
}

/// `POST /ui/tasks/{id}/retry`.
pub(super) async fn retry(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    match crate::api::retry(&shared, id).await {
        Ok(_) => after_action(&shared, &visitor, &headers, id).await,
        Err(failure) => failure_page(&visitor, &failure),
    }
}

/// `POST /ui/tasks/{id}/cancel`.
pub(super) async fn cancel(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    match crate::api::cancel(&shared, id).await {
        Ok(_) => after_action(&shared, &visitor, &headers, id).await,
        Err(failure) => failure_page(&visitor, &failure),
    }
}

/// The Replay form.
#[derive(serde::Deserialize)]
pub(super) struct ReplayForm {
    payload: String,
}

/// `POST /ui/tasks/{id}/replay`: a new task for the same worker with the (edited) payload, its
/// trace and the original's naming each other; answers with a redirect to the new task.
pub(super) async fn replay(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<ReplayForm>,
) -> Response {
    match replay_task(&shared, &id, &form.payload).await {
        Ok(new_id) => Redirect::to(&format!("/ui/tasks/{new_id}")).into_response(),
        Err(failure) => failure_page(&visitor, &failure),
    }
}

async fn replay_task(shared: &Shared, id: &str, payload: &str) -> ApiResult<i64> {
    let id = parse_id(id)?;
    let payload: Value = serde_json::from_str(payload).map_err(|err| {
        Failure::bad_request(format!("payload: not valid JSON: {err}")).at("payload")
    })?;
    // The form was pre-filled with the redacted payload: sending the marker on would run the
    // worker on it in place of the secret, silently.
    if payload.to_string().contains(REDACTED) {
        return Err(Failure::bad_request(format!(
            "payload: it still holds {REDACTED} where the dashboard hid a secret; type the real \
             value in its place (or remove it) and replay again"
        ))
        .at("payload"));
    }
    let Some(original) = shared.store.get_task(id).await? else {
        return Err(Failure::not_found(format!("no task {id}")));
    };
    let inserted = crate::api::enqueue(shared, original.worker.clone(), payload, None).await?;
    shared
        .trace
        .replayed(&original, &inserted.record, shared.clock.now_ms());
    Ok(inserted.record.id)
}

/// What a bulk action does to each task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BulkAction {
    Retry,
    Cancel,
}

impl BulkAction {
    fn verb(self) -> &'static str {
        match self {
            Self::Retry => "Retry",
            Self::Cancel => "Cancel",
        }
    }
}

/// A bulk action's progress.
#[derive(Clone)]
struct BulkProgress {
    action: BulkAction,
    /// Tasks changed.
    changed: usize,
    /// Tasks that could not be changed (already ended, not failed, gone).
    refused: usize,
    /// Whether it has ended, and why it stopped early, if it did.
    finished: bool,
    problem: Option<String>,
}

/// The bulk actions of this server, by id; the last [`KEPT_BULK_JOBS`] are kept.
#[derive(Default)]
pub(crate) struct BulkJobs {
    next_id: AtomicU64,
    jobs: Mutex<BTreeMap<u64, BulkProgress>>,
    order: Mutex<VecDeque<u64>>,
}

impl BulkJobs {
    fn start(&self, action: BulkAction) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let progress = BulkProgress {
            action,
            changed: 0,
            refused: 0,
            finished: false,
            problem: None,
        };
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        jobs.insert(id, progress);
        order.push_back(id);
        while order.len() > KEPT_BULK_JOBS {
            if let Some(old) = order.pop_front() {
                jobs.remove(&old);
            }
        }
        id
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut BulkProgress)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(progress) = jobs.get_mut(&id) {
            change(progress);
        }
    }

    fn get(&self, id: u64) -> Option<BulkProgress> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.get(&id).cloned()
    }
}

/// `POST /ui/tasks/bulk`: `action` is `retry` or `cancel` (the `id`s given) or `retry-all` or
/// `cancel-all` (every task matching `state`, `worker`, `since` and `q`, newest first, at most
/// [`MAX_BULK`]); starts it in the background and answers with a redirect to its progress.
pub(super) async fn bulk(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    match start_bulk(shared, pairs) {
        Ok(job) => Redirect::to(&format!("/ui/bulk/{job}")).into_response(),
        Err(failure) => failure_page(&visitor, &failure),
    }
}

/// Which tasks a bulk action takes.
enum Selection {
    Ids(Vec<i64>),
    /// The tasks of a listing, and the text they must show.
    Matching(TaskFilter, Option<String>),
}

fn start_bulk(shared: Arc<Shared>, pairs: Vec<(String, String)>) -> ApiResult<u64> {
    let now = shared.clock.now_ms();
    let mut action = None;
    let mut ids = Vec::new();
    let mut filter = TaskFilter::default();
    let mut text = None;
    for (name, value) in pairs {
        match name.as_str() {
            "csrf" => {}
            "action" => action = Some(value),
            "id" => ids.push(parse_id(&value).map_err(|f| f.at("id"))?),
            "state" if !value.is_empty() => {
                filter.state =
                    Some(value.parse().map_err(|err| {
                        Failure::bad_request(format!("state: {err}")).at("state")
                    })?);
            }
            "worker" if !value.is_empty() => filter.worker = Some(value),
            "since" if !value.is_empty() => filter.created_since = Some(parse_since(value, now)?.1),
            "q" if !value.is_empty() => text = Some(value),
            "state" | "worker" | "since" | "q" => {}
            other => {
                return Err(Failure::bad_request(format!(
                    "unknown form field {}",
                    crate::api::quote(other)
                )));
            }
        }
    }
    let (action, all) = match action.as_deref() {
        Some("retry") => (BulkAction::Retry, false),
        Some("cancel") => (BulkAction::Cancel, false),
        Some("retry-all") => (BulkAction::Retry, true),
        Some("cancel-all") => (BulkAction::Cancel, true),
        _ => {
            return Err(Failure::bad_request(
                "action: must be retry, cancel, retry-all or cancel-all",
            )
            .at("action"));
        }
    };
    let selection = if all {
        Selection::Matching(filter, text)
    } else if ids.is_empty() {
        return Err(Failure::bad_request("id: select at least one task").at("id"));
    } else if ids.len() > MAX_BULK {
        return Err(Failure::bad_request(format!("id: at most {MAX_BULK} tasks at once")).at("id"));
    } else {
        Selection::Ids(ids)
    };
    let job = shared.ui.bulk.start(action);
    tokio::spawn(run_bulk(shared, job, action, selection));
    Ok(job)
}

async fn run_bulk(shared: Arc<Shared>, job: u64, action: BulkAction, selection: Selection) {
    let apply = |id: i64| {
        let shared = shared.clone();
        async move {
            match action {
                BulkAction::Retry => crate::api::retry(&shared, id).await.map(|_| ()),
                BulkAction::Cancel => crate::api::cancel(&shared, id).await.map(|_| ()),
            }
        }
    };
    let record = |result: ApiResult<()>| {
        shared.ui.bulk.update(job, |p| match result {
            Ok(()) => p.changed += 1,
            Err(_) => p.refused += 1,
        });
    };
    let mut problem = None;
    match selection {
        Selection::Ids(ids) => {
            for id in ids {
                record(apply(id).await);
            }
        }
        Selection::Matching(mut filter, text) => {
            filter.limit = Some(mechanics_store::MAX_PAGE_SIZE);
            let mut seen = 0;
            'pages: loop {
                let page = match list_shown_tasks(&shared, &filter, text.as_deref()).await {
                    Ok(page) => page,
                    Err(failure) => {
                        problem = Some(format!(
                            "listing the tasks failed: {}",
                            failure.status_and_message().1
                        ));
                        break;
                    }
                };
                for task in page.items {
                    if seen == MAX_BULK {
                        problem = Some(format!(
                            "stopped at {MAX_BULK} tasks, the most one bulk action takes"
                        ));
                        break 'pages;
                    }
                    seen += 1;
                    record(apply(task.id).await);
                }
                match page.next_cursor {
                    Some(cursor) => filter.cursor = Some(cursor),
                    None => break,
                }
            }
        }
    }
    shared.ui.bulk.update(job, |p| {
        p.finished = true;
        p.problem = problem;
    });
}

/// `GET /ui/bulk/{id}`: a bulk action's progress line, refreshed until it has ended.
pub(super) async fn bulk_progress(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
) -> Response {
    let Some(progress) = id.parse().ok().and_then(|id| shared.ui.bulk.get(id)) else {
        return error_page(
            Some(&visitor),
            StatusCode::NOT_FOUND,
            "no such bulk action on this server (only the last 100 are kept)",
        );
    };
    let live = (!progress.finished).then(|| format!("/ui/bulk/{id}"));
    let body = html! {
        h1 { "Bulk " (progress.action.verb().to_lowercase()) }
        section #bulk-live data-live=[live] {
            p #bulk-progress.progress {
                (progress.action.verb()) ": " (progress.changed) " changed, "
                (progress.refused) " refused"
                @if progress.finished { " · done" } @else { " · running…" }
            }
            @if let Some(problem) = &progress.problem {
                p.error { (problem) }
            }
        }
        p { a href="/ui/tasks" { "Back to the tasks" } }
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "Bulk action", body))
}
