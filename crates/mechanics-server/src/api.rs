//! The HTTP API under `/api/v1` (shapes in `mechanics_proto::api`), `/healthz`, and the
//! authentication in front of it.
//!
//! Bodies are read as bytes and parsed here, so a body over the limit is a JSON `413` and a
//! malformed one a JSON `400` naming what is wrong; every error is `{ "error": { "code",
//! "message" } }`. Overload (`Busy` store) is `503` with `Retry-After`, never the caller's fault.

use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mechanics_proto::api::{
    API_PREFIX, ApiError, ApiErrorBody, EventList, MAX_MODULE_BYTES, NodeList, SubmitTask,
    Submitted, TaskList, WorkerInput, WorkerList, WorkerView,
};
use mechanics_proto::domain::{EventState, TaskState, WorkerKind};
use mechanics_store::{EventFilter, NewTask, StoreError, TaskFilter};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::Shared;

/// Largest API request body: a worker with its module fits well within it.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// An error answer.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: ApiErrorBody {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::NotFound { .. } => Self::not_found(err.to_string()),
            StoreError::StaleAttempt { .. } | StoreError::InvalidTransition { .. } => {
                Self::conflict(err.to_string())
            }
            StoreError::InvalidInput { .. } => Self::bad_request(err.to_string()),
            _ if err.is_transient() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the database is busy, try again: {err}"),
            ),
            _ => {
                tracing::error!(error = %err, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    err.to_string(),
                )
            }
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, Failure>;

/// The body as JSON of type `T`, with a JSON 413 or 400 on failure.
pub(crate) fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_)
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
            )
        }
        other => Failure::bad_request(format!("cannot read the request body: {other}")),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|err| Failure::bad_request(format!("the request body is not valid: {err}")))
}

/// The routes, with authentication when the server has an API key.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/workers", get(list_workers).post(add_worker))
        .route("/workers/{name}", get(show_worker).delete(delete_worker))
        .route("/tasks", get(list_tasks).post(submit_task))
        .route("/tasks/{id}", get(show_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/events", get(list_events))
        .route("/events/{id}", get(show_event))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{name}/reset", post(reset_node))
        .route("/logs", get(crate::observe::list_logs))
        .merge(crate::sources::routes())
        .fallback(|| async { Failure::not_found("no such API route") })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    Router::new()
        .nest(API_PREFIX, api)
        .merge(crate::observe::router(shared.clone()))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .with_state(shared)
}

/// Accepts `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time.
pub(crate) async fn authenticate(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &shared.api_key else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let given = bearer(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    });
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => {
            next.run(request).await
        }
        _ => Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        )
        .into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn list_workers(State(shared): State<Arc<Shared>>) -> ApiResult<axum::Json<WorkerList>> {
    let workers = shared.store.list_workers().await?;
    Ok(axum::Json(WorkerList {
        workers: workers
            .into_iter()
            .map(|mut worker| {
                worker.module_source = None;
                WorkerView { worker }
            })
            .collect(),
    }))
}

async fn add_worker(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<WorkerView>)> {
    let input: WorkerInput = parse_body(body)?;
    input
        .spec
        .validate()
        .map_err(|err| Failure::bad_request(format!("invalid worker: {err}")))?;
    if input.spec.kind == WorkerKind::Js {
        let Some(source) = &input.module_source else {
            return Err(Failure::bad_request(
                "invalid worker: module_source: a js worker needs its module's source",
            ));
        };
        if source.len() > MAX_MODULE_BYTES {
            return Err(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the module is {} bytes, more than the limit of {MAX_MODULE_BYTES} bytes",
                    source.len()
                ),
            ));
        }
        if source.trim().is_empty() {
            return Err(Failure::bad_request(
                "invalid worker: module_source: the module is empty",
            ));
        }
        if let Some(js) = &shared.js {
            js.validate(input.spec.config.as_ref(), input.spec.limits.as_ref())
                .map_err(|message| Failure::bad_request(format!("invalid worker: {message}")))?;
        }
    } else if input.module_source.is_some() {
        return Err(Failure::bad_request(
            "invalid worker: module_source: only js workers have a module",
        ));
    }
    crate::cron::validate_triggers(&input.spec)
        .map_err(|message| Failure::bad_request(format!("invalid worker: {message}")))?;
    let now = shared.clock.now_ms();
    let worker = shared
        .store
        .upsert_worker(input.spec, input.module_source, now)
        .await?;
    shared.registry_changed();
    let status = if worker.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(WorkerView { worker })))
}

async fn show_worker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<WorkerView>> {
    match shared.store.get_worker(&name).await? {
        Some(worker) => Ok(axum::Json(WorkerView { worker })),
        None => Err(Failure::not_found(format!("no worker named {name:?}"))),
    }
}

async fn delete_worker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if shared.store.delete_worker(&name).await? {
        shared.metrics.forget_worker(&name);
        shared.registry_changed();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Failure::not_found(format!("no worker named {name:?}")))
    }
}

async fn submit_task(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Submitted>)> {
    let submit: SubmitTask = parse_body(body)?;
    let Some(worker) = shared.dispatcher.registry.get(&submit.worker).await else {
        return Err(Failure::not_found(format!(
            "no worker named {:?}; `mechanics worker list` shows the registered ones",
            submit.worker
        )));
    };
    if !worker.spec.accepts_api() {
        return Err(Failure::conflict(format!(
            "the worker {:?} does not take API submissions: add `- api: true` to its triggers",
            submit.worker
        )));
    }
    let now = shared.clock.now_ms();
    let inserted = shared
        .store
        .create_task(
            NewTask {
                worker: submit.worker,
                event_id: None,
                idempotency_key: submit.idempotency_key,
                payload: submit.payload,
                next_run_at: now,
            },
            now,
        )
        .await?;
    shared
        .trace
        .submitted(&inserted.record, inserted.created, now);
    if inserted.created {
        shared.dispatcher.wake.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Submitted {
            id: inserted.record.id,
            state: inserted.record.state,
            created: inserted.created,
        }),
    ))
}

/// Query parameters of the listings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    worker: Option<String>,
    source: Option<String>,
    event: Option<i64>,
    limit: Option<u32>,
    cursor: Option<i64>,
}

fn parse_state<T: FromStr<Err = E>, E: std::fmt::Display>(
    text: Option<&str>,
) -> ApiResult<Option<T>> {
    text.map(|s| {
        s.parse()
            .map_err(|err: E| Failure::bad_request(err.to_string()))
    })
    .transpose()
}

fn query(
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<ListQuery> {
    q.map(|Query(q)| q)
        .map_err(|err| Failure::bad_request(format!("invalid query: {}", err.body_text())))
}

async fn list_tasks(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<TaskList>> {
    let q = query(q)?;
    let filter = TaskFilter {
        state: parse_state::<TaskState, _>(q.state.as_deref())?,
        worker: q.worker,
        event_id: q.event,
        limit: q.limit,
        cursor: q.cursor,
    };
    let page = shared.store.list_tasks(&filter).await?;
    Ok(axum::Json(TaskList {
        tasks: page.items,
        next_cursor: page.next_cursor,
    }))
}

async fn show_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<mechanics_proto::domain::Task>> {
    let id = parse_id(&id)?;
    match shared.store.get_task(id).await? {
        Some(task) => Ok(axum::Json(task)),
        None => Err(Failure::not_found(format!("no task {id}"))),
    }
}

fn parse_id(text: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| Failure::bad_request(format!("{text:?} is not a task or event id (a number)")))
}

async fn retry_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<mechanics_proto::domain::Task>> {
    let id = parse_id(&id)?;
    let now = shared.clock.now_ms();
    let task = shared.store.retry_task(id, now, now).await?;
    shared.trace.retry_requested(&task, now);
    shared.dispatcher.wake.notify_one();
    Ok(axum::Json(task))
}

async fn cancel_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<mechanics_proto::domain::Task>> {
    let id = parse_id(&id)?;
    let now = shared.clock.now_ms();
    let task = shared.store.cancel_task(id, now).await?;
    shared.dispatcher.withdraw(id);
    shared.trace.canceled(&task, now);
    // A canceled task has ended: its event may now be settled (written back or failed).
    if let Some(event) = task.event_id {
        shared.dispatcher.settle.push(event);
    }
    Ok(axum::Json(task))
}

async fn list_events(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<EventList>> {
    let q = query(q)?;
    let filter = EventFilter {
        source: q.source,
        state: parse_state::<EventState, _>(q.state.as_deref())?,
        write_back_due_by: None,
        limit: q.limit,
        cursor: q.cursor,
    };
    let page = shared.store.list_events(&filter).await?;
    Ok(axum::Json(EventList {
        events: page.items,
        next_cursor: page.next_cursor,
    }))
}

async fn show_event(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<mechanics_proto::domain::Event>> {
    let id = parse_id(&id)?;
    match shared.store.get_event(id).await? {
        Some(event) => Ok(axum::Json(event)),
        None => Err(Failure::not_found(format!("no event {id}"))),
    }
}

async fn list_nodes(State(shared): State<Arc<Shared>>) -> axum::Json<NodeList> {
    let mut nodes = shared.js.as_ref().map(|js| js.nodes()).unwrap_or_default();
    nodes.extend(shared.dispatcher.processes.views());
    axum::Json(NodeList { nodes })
}

async fn reset_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<NodeList>> {
    let reset = shared.js.as_ref().is_some_and(|js| js.reset(&name))
        || shared.dispatcher.processes.reset(&name);
    if !reset {
        return Err(Failure::not_found(format!(
            "no node or process worker named {name:?}"
        )));
    }
    Ok(list_nodes(State(shared)).await)
}
