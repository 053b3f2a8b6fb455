//! The HTTP API under `/api/v1` (shapes in `mechanics_proto::api`), `/healthz`, and the
//! authentication in front of it.
//!
//! Bodies are read as bytes and parsed here, so a body over the limit is a JSON `413` and a
//! malformed one a JSON `400` naming what is wrong; every error is `{ "error": { "code",
//! "message" } }`. Overload (`Busy` store) is `503` with `Retry-After`, never the caller's fault.
//!
//! One shape for every refusal: the handlers and the fallback (an unknown route) answer
//! [`Failure`]; what axum refuses before a handler runs (a path segment that does not decode, a
//! method the route does not take) is rewritten into the same shape by one layer,
//! [`json_errors`]. Listings take
//! only their own query parameters ([`ListingQuery`]): an unknown or repeated one, a `limit`
//! outside 1 to [`MAX_PAGE_SIZE`] or a cursor or id that is not a positive number is a `400`.
//! Whatever a caller sent and an error quotes back (a name, an id, a query value) goes through
//! [`quote`], so it is cut to [`MAX_QUOTED_CHARS`] characters.

use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mechanics_proto::api::{
    API_PREFIX, ApiError, ApiErrorBody, MAX_MODULE_BYTES, NodeList, NodeView, SubmitTask,
    Submitted, TaskDetail, TaskList, WorkerInput, WorkerList, WorkerView,
};
use mechanics_proto::domain::{
    Event, Task, TaskState, TranspiledModule, Trigger, Worker, WorkerKind, WorkerSpec,
};
use mechanics_store::{MAX_PAGE_SIZE, NewTask, Page, StoreError, TaskFilter};
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Shared;

/// Largest API request body: a worker with its module fits well within it.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Most characters of a caller's text (a name, an id, a query value) an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 100;

/// `text` as an error message quotes it: in double quotes, escaped like `{:?}` (a control
/// character cannot forge a line of a client's output), cut after [`MAX_QUOTED_CHARS`]
/// characters with `…` marking the cut, so a 100 kB name makes a short message. The one way an
/// error echoes what a caller sent.
pub(crate) fn quote(text: &str) -> String {
    let mut escaped = text.escape_debug();
    let mut quoted = String::with_capacity(MAX_QUOTED_CHARS + 8);
    quoted.push('"');
    quoted.extend(escaped.by_ref().take(MAX_QUOTED_CHARS));
    if escaped.next().is_some() {
        quoted.push('…');
    }
    quoted.push('"');
    quoted
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The input field at fault (`triggers[0].cron`, a query parameter), for clients that point
    /// at it; the message names it too, for people.
    field: Option<String>,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Its status and message, for answers that are not JSON (the dashboard's pages).
    pub(crate) fn status_and_message(&self) -> (StatusCode, &str) {
        (self.status, &self.message)
    }

    /// The same failure, blaming the input field `field`.
    pub(crate) fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// A spec that breaks a rule (`what`: "worker", "source"): a `400` naming the field.
    pub(crate) fn invalid_spec(what: &str, err: mechanics_proto::domain::SpecError) -> Self {
        let field = err.field.clone();
        Self::bad_request(format!("invalid {what}: {err}")).at(field)
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

    /// The stable code of an error answer with `status`.
    pub(crate) fn code_of(status: StatusCode) -> &'static str {
        match status {
            StatusCode::REQUEST_TIMEOUT => "too_slow",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: ApiErrorBody {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
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
            StoreError::AlreadyExists { .. } | StoreError::UnfinishedTasks { .. } => {
                Self::conflict(err.to_string())
            }
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
    serde_json::from_slice(&bytes).or_else(|err| {
        // JSON has one number type: `30.0` is the integer 30 to a client (JavaScript writes it
        // so, and JSON Schema's `integer` admits it), so a body refused only for that is read
        // again with such numbers as integers. Any other error is the first one, with its place.
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|mut value| integral_numbers_as_integers(&mut value).then_some(value))
            .and_then(|value| T::deserialize(value).ok())
            .ok_or_else(|| Failure::bad_request(format!("the request body is not valid: {err}")))
    })
}

/// Rewrites every number in `value` that is a float with no fractional part, within the range of
/// `i64`, as an integer; whether any was rewritten.
fn integral_numbers_as_integers(value: &mut Value) -> bool {
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            match number.as_f64() {
                // 2^63 as an f64 is one past i64::MAX: the bound is exclusive.
                Some(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => {
                    let integer = f as i64;
                    *value = Value::from(integer);
                    true
                }
                _ => false,
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, item| integral_numbers_as_integers(item) | any),
        Value::Object(fields) => fields
            .values_mut()
            .fold(false, |any, item| integral_numbers_as_integers(item) | any),
        _ => false,
    }
}

/// Every `/api/v1` route (without the prefix), registered with its OpenAPI documentation: a
/// handler without `#[utoipa::path]` cannot be added here, so the document
/// ([`crate::openapi::document`]) lists every route the API answers.
pub(crate) fn api_routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(list_workers, add_worker))
        .routes(routes!(show_worker, delete_worker))
        .routes(routes!(pause_worker))
        .routes(routes!(resume_worker))
        .routes(routes!(list_tasks, submit_task))
        .routes(routes!(show_task))
        .routes(routes!(retry_task))
        .routes(routes!(cancel_task))
        .routes(routes!(list_nodes, crate::nodes::add_node))
        .routes(routes!(crate::nodes::delete_node))
        .routes(routes!(reset_node))
        .routes(routes!(crate::instances::list))
        .routes(routes!(crate::observe::list_logs))
        .routes(routes!(crate::observe::metrics_summary))
        .merge(crate::sources::routes())
        .merge(crate::events::routes())
        .merge(crate::keys::routes())
}

/// The public routes under `/api/v1` (no key): the document and its rendered page.
pub(crate) fn public_api_routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(api_docs))
}

/// The routes, behind the API keys' authentication and scopes ([`crate::keys`]).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let (api, _) = api_routes().split_for_parts();
    let api = api
        .fallback(|| async { Failure::not_found("no such API route") })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::keys::authenticate,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let (public, _) = public_api_routes().split_for_parts();
    let (open, _) = crate::observe::open_routes().split_for_parts();
    let (logs, _) = crate::observe::log_routes().split_for_parts();
    let logs = logs.layer(axum::middleware::from_fn_with_state(
        shared.clone(),
        crate::keys::authenticate,
    ));
    Router::new()
        .nest(API_PREFIX, public.merge(api))
        .merge(open)
        .merge(logs)
        .fallback(|| async { Failure::not_found("no such route") })
        .with_state(shared)
}

/// The OpenAPI document, made once per process (it depends on nothing but the code).
static DOCUMENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(crate::openapi::document_json);

#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "openapi", summary = "This document (OpenAPI 3.1)", security(()), responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The reference page's script, vendored in the repository and embedded in the binary: the page
/// works with no network (no CDN, nothing fetched at build time).
const DOCS_SCRIPT: &str = include_str!("../assets/api-docs.js");

#[utoipa::path(get, path = "/docs", tag = "meta", operation_id = "api_docs", summary = "The API reference, rendered from this document", security(()), responses((status = 200, description = "An HTML page", content_type = "text/html")))]
async fn api_docs() -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Mechanics API</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>\
         <body><main id=\"api\">Loading {API_PREFIX}/openapi.json…</main>\
         <script>{DOCS_SCRIPT}</script></body></html>\n"
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        page,
    )
        .into_response()
}

/// Largest body of a non-JSON error answer read to quote it: axum's rejections are one line.
const MAX_REJECTION_BYTES: usize = 4096;

/// Rewrites every error answer that is not JSON into `{ "error": { "code", "message" } }`, its
/// status and headers kept. Those answers are axum's own, made before a handler runs: a path
/// parameter that does not decode (`/workers/%ff`, `400`), a method the route does not take
/// (`405`, empty), a rejection of any extractor a route uses. Rewriting the answer, rather than
/// catching each rejection at each handler, covers every route of the router, present and
/// future, in one place.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        // axum adds `Allow` outside this layer, after it ran.
        format!("this route does not take {method}: its `Allow` header lists the methods it takes")
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_owned()
    } else {
        text
    };
    let mut answer = Failure::new(status, Failure::code_of(status), message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

#[utoipa::path(get, path = "/workers", tag = "workers", operation_id = "list_workers", summary = "The registered workers (without module sources)", responses((status = 200, description = "Every worker", body = WorkerList)))]
async fn list_workers(State(shared): State<Arc<Shared>>) -> ApiResult<axum::Json<WorkerList>> {
    let workers = shared.store.list_workers().await?;
    Ok(axum::Json(WorkerList {
        workers: workers
            .into_iter()
            .map(|mut worker| {
                worker.module_source = None;
                WorkerView {
                    worker,
                    next_cron_fires: Vec::new(),
                }
            })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/workers", tag = "workers", operation_id = "add_worker", summary = "Add or replace a worker", request_body = WorkerInput, responses((status = 201, description = "Added", body = WorkerView), (status = 200, description = "Replaced (a new revision)", body = WorkerView)))]
async fn add_worker(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<WorkerView>)> {
    let input: WorkerInput = parse_body(body)?;
    input
        .spec
        .validate()
        .map_err(|err| Failure::invalid_spec("worker", err))?;
    if input.spec.kind == WorkerKind::Js {
        let Some(source) = &input.module_source else {
            return Err(Failure::bad_request(
                "invalid worker: module_source: a js worker needs its module's source",
            )
            .at("module_source"));
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
    if input.spec.kind == WorkerKind::Container {
        let image = input.spec.image.as_deref().unwrap_or_default();
        let may_pull = input.spec.pull_policy() != mechanics_proto::domain::PullPolicy::Never;
        shared
            .dispatcher
            .containers
            .check(image, may_pull)
            .await
            .map_err(|(field, message)| {
                Failure::bad_request(format!("invalid worker: {field}: {message}")).at(field)
            })?;
    }
    crate::cron::validate_triggers(&input.spec)
        .map_err(|message| Failure::bad_request(format!("invalid worker: {message}")))?;
    refuse_unknown_sources(&shared, &input.spec).await?;
    crate::policy::check_actors(&shared, &input.spec)
        .await
        .map_err(|message| Failure::bad_request(format!("invalid worker: {message}")))?;
    let transpiled = transpile(&shared, &input).await?;
    let now = shared.clock.now_ms();
    let worker = shared
        .store
        .upsert_worker(input.spec, input.module_source, transpiled, now)
        .await?;
    shared.registry_changed();
    let status = if worker.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(WorkerView {
            worker,
            next_cron_fires: Vec::new(),
        }),
    ))
}

/// `400` for a webhook trigger naming a source that is not registered: it could never fire, and
/// the author would find out only when no delivery reached the worker.
async fn refuse_unknown_sources(shared: &Shared, spec: &WorkerSpec) -> ApiResult<()> {
    for (i, trigger) in spec.triggers.iter().enumerate() {
        if let Trigger::Webhook(webhook) = trigger
            && shared.store.get_source(&webhook.source).await?.is_none()
        {
            return Err(Failure::bad_request(format!(
                "invalid worker: triggers[{i}].webhook.source: no source named {}; add it first \
                 with `mechanics source add`",
                quote(&webhook.source)
            )));
        }
    }
    Ok(())
}

/// A js worker's module turned into what runs, when it is not JavaScript (TypeScript), by the
/// executor, off the async threads (a large module takes milliseconds). A syntax error refuses
/// the worker, naming the module's file, line and column.
async fn transpile(shared: &Shared, input: &WorkerInput) -> ApiResult<Option<TranspiledModule>> {
    let (Some(js), Some(source), Some(module)) =
        (&shared.js, &input.module_source, input.spec.module_name())
    else {
        return Ok(None);
    };
    let (js, source, module) = (js.clone(), source.clone(), module.to_owned());
    tokio::task::spawn_blocking(move || js.transpile(&source, &module))
        .await
        .map_err(|err| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("transpiling the module failed: {err}"),
            )
        })?
        .map_err(|message| Failure::bad_request(format!("invalid worker: {message}")))
}

#[utoipa::path(get, path = "/workers/{name}", tag = "workers", operation_id = "show_worker", summary = "A worker with its module source", params(("name" = String, Path, description = "The worker's name")), responses((status = 200, description = "The worker", body = WorkerView)))]
async fn show_worker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<WorkerView>> {
    match shared.store.get_worker(&name).await? {
        Some(worker) => Ok(axum::Json(view_with_fires(&shared, worker))),
        None => Err(Failure::not_found(format!(
            "no worker named {}",
            quote(&name)
        ))),
    }
}

/// How many coming cron fire times `GET /workers/{name}` shows.
const SHOWN_CRON_FIRES: usize = 3;

/// `worker` as `GET /workers/{name}` and pause/resume answer it: with its next cron fire times.
fn view_with_fires(shared: &Shared, worker: Worker) -> WorkerView {
    let next_cron_fires =
        crate::cron::next_fires(&worker.spec, shared.clock.now_ms(), SHOWN_CRON_FIRES)
            .into_iter()
            .filter_map(chrono::DateTime::from_timestamp_millis)
            .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect();
    WorkerView {
        worker,
        next_cron_fires,
    }
}

#[utoipa::path(post, path = "/workers/{name}/pause", tag = "workers", operation_id = "pause_worker", summary = "Pause a worker: its tasks are created but not dispatched, its cron fires skipped", params(("name" = String, Path, description = "The worker's name")), responses((status = 200, description = "The worker, paused", body = WorkerView), (status = 404, description = "No such worker", body = ApiError)))]
async fn pause_worker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<WorkerView>> {
    set_paused(&shared, &name, true).await
}

#[utoipa::path(post, path = "/workers/{name}/resume", tag = "workers", operation_id = "resume_worker", summary = "Resume a paused worker: its pending tasks are dispatched", params(("name" = String, Path, description = "The worker's name")), responses((status = 200, description = "The worker, running", body = WorkerView), (status = 404, description = "No such worker", body = ApiError)))]
async fn resume_worker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<WorkerView>> {
    set_paused(&shared, &name, false).await
}

async fn set_paused(
    shared: &Shared,
    name: &str,
    paused: bool,
) -> ApiResult<axum::Json<WorkerView>> {
    let Some(worker) = shared.store.set_worker_paused(name, paused).await? else {
        return Err(Failure::not_found(format!(
            "no worker named {}",
            quote(name)
        )));
    };
    shared
        .trace
        .worker_paused(name, paused, shared.clock.now_ms());
    shared.registry_changed();
    if !paused {
        // Its pending tasks are due now.
        shared.dispatcher.wake.notify_one();
    }
    Ok(axum::Json(view_with_fires(shared, worker)))
}

#[utoipa::path(delete, path = "/workers/{name}", tag = "workers", operation_id = "delete_worker", summary = "Remove a worker; one with pending or running tasks only with `force=true`, which cancels them", params(("name" = String, Path, description = "The worker's name"), ("force" = Option<bool>, Query, description = "Cancel the worker's pending and running tasks and remove it")), responses((status = 204, description = "Removed"), (status = 409, description = "The worker has unfinished tasks (nothing changed)", body = ApiError)))]
async fn delete_worker(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let mut query = ListingQuery::parse(query, &["force"])?;
    let force = match query.text("force").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "force: {} is not true or false",
                quote(other)
            )));
        }
    };
    let now = shared.clock.now_ms();
    let deleted = shared
        .store
        .delete_worker(&name, force, now)
        .await
        .map_err(|err| match err {
            StoreError::UnfinishedTasks { .. } => Failure::conflict(format!(
                "{err}: `mechanics worker rm --force` (force=true) cancels them and removes it"
            )),
            other => other.into(),
        })?;
    let Some(canceled) = deleted else {
        return Err(Failure::not_found(format!(
            "no worker named {}",
            quote(&name)
        )));
    };
    for task in &canceled {
        shared.dispatcher.withdraw(task.id);
        shared.trace.canceled(task, now);
        if let Some(event) = task.event_id {
            shared.dispatcher.settle.push(event);
        }
    }
    shared.metrics.forget_worker(&name);
    shared.registry_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/tasks", tag = "tasks", operation_id = "submit_task", summary = "Submit a task to a worker that takes API submissions", request_body = SubmitTask, responses((status = 404, description = "No such worker", body = ApiError), (status = 202, description = "Stored (or the task with the same idempotency key)", body = Submitted), (status = 409, description = "The worker does not take API submissions", body = ApiError)))]
async fn submit_task(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Submitted>)> {
    let submit: SubmitTask = parse_body(body)?;
    let Some(worker) = shared.dispatcher.registry.get(&submit.worker).await else {
        return Err(Failure::not_found(format!(
            "no worker named {}; `mechanics worker list` shows the registered ones",
            quote(&submit.worker)
        )));
    };
    if !worker.spec.accepts_api() {
        return Err(Failure::conflict(format!(
            "the worker {} does not take API submissions: add `- api: true` to its triggers",
            quote(&submit.worker)
        )));
    }
    let inserted = enqueue(
        &shared,
        submit.worker,
        submit.payload,
        submit.idempotency_key,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Submitted {
            id: inserted.record.id,
            state: inserted.record.state,
            created: inserted.created,
        }),
    ))
}

/// Stores a task for `worker` with `payload`, due now, and wakes the dispatcher (the API's
/// submission and the dashboard's Replay); the task with the same idempotency key if there is one.
pub(crate) async fn enqueue(
    shared: &Shared,
    worker: String,
    payload: Value,
    idempotency_key: Option<String>,
) -> ApiResult<mechanics_store::Inserted<Task>> {
    let now = shared.clock.now_ms();
    let inserted = shared
        .store
        .create_task(
            NewTask {
                worker,
                event_id: None,
                idempotency_key,
                payload,
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
    Ok(inserted)
}

/// A listing's query string, checked against the parameters the listing takes; each value is
/// taken out once, parsed, with a `400` naming the parameter when it does not parse.
pub(crate) struct ListingQuery {
    pairs: Vec<(String, String)>,
}

impl ListingQuery {
    /// The parameters of `query`: an unknown one (a misspelt filter would otherwise be ignored
    /// and the whole list answered) or a repeated one is a `400` naming it and the `accepted`.
    pub(crate) fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        accepted: &[&str],
    ) -> ApiResult<Self> {
        let Query(pairs) = query.map_err(|err| {
            Failure::bad_request(format!("invalid query string: {}", err.body_text()))
        })?;
        for (index, (name, _)) in pairs.iter().enumerate() {
            if !accepted.contains(&name.as_str()) {
                return Err(Failure::bad_request(format!(
                    "unknown query parameter {}; this listing takes: {}",
                    quote(name),
                    accepted.join(", ")
                ))
                .at(name.as_str()));
            }
            if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(Failure::bad_request(format!(
                    "the query parameter {name} is given more than once"
                ))
                .at(name.as_str()));
            }
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, if given.
    pub(crate) fn text(&mut self, name: &str) -> Option<String> {
        let index = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.swap_remove(index).1)
    }

    /// `name` as one of `all` (a state or an outcome).
    pub(crate) fn one_of<T: FromStr + Display + Copy>(
        &mut self,
        name: &str,
        all: &[T],
    ) -> ApiResult<Option<T>> {
        self.text(name)
            .map(|text| {
                text.parse().map_err(|_| {
                    let all: Vec<String> = all.iter().map(T::to_string).collect();
                    Failure::bad_request(format!(
                        "{name}: {} is not one of: {}",
                        quote(&text),
                        all.join(", ")
                    ))
                    .at(name)
                })
            })
            .transpose()
    }

    /// `name` as an id: a positive number (a task or event id, or a `next_cursor`).
    pub(crate) fn id(&mut self, name: &str) -> ApiResult<Option<i64>> {
        self.text(name)
            .map(|text| match text.parse::<i64>() {
                Ok(id) if id > 0 => Ok(id),
                _ => Err(Failure::bad_request(format!(
                    "{name}: {} is not an id (a positive number)",
                    quote(&text)
                ))
                .at(name)),
            })
            .transpose()
    }

    /// `limit`: 1 to [`MAX_PAGE_SIZE`]. A larger one is refused rather than cut, so a caller
    /// asking for more never mistakes a short page for the whole list.
    pub(crate) fn limit(&mut self) -> ApiResult<Option<u32>> {
        self.text("limit")
            .map(|text| match text.parse::<u32>() {
                Ok(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
                _ => Err(Failure::bad_request(format!(
                    "limit: must be a number from 1 to {MAX_PAGE_SIZE}, not {}",
                    quote(&text)
                ))
                .at("limit")),
            })
            .transpose()
    }
}

/// `task` as the API shows it: its payload and result without any secret the server knows. The
/// payload is stored as the submitter or sender gave it (the worker needs it), so it is redacted
/// on the way out; the result was redacted before it was stored and is again here, for secrets
/// learnt since.
/// `task` as the API shows it: payload and result redacted.
pub(crate) fn shown_task(shared: &Shared, mut task: Task) -> Task {
    let redactor = shared.trace.redactor();
    redactor.redact_json(&mut task.payload);
    if let Some(result) = &mut task.result {
        redactor.redact_json(result);
    }
    task
}

/// `event` as the API shows it: its payload without any secret the server knows.
/// `event` as the API shows it: its payload redacted.
pub(crate) fn shown_event(shared: &Shared, mut event: Event) -> Event {
    shared.trace.redactor().redact_json(&mut event.payload);
    event
}

#[utoipa::path(get, path = "/tasks", tag = "tasks", operation_id = "list_tasks", summary = "Tasks, newest first", params(("state" = Option<TaskState>, Query, description = "Only tasks in this state"), ("worker" = Option<String>, Query, description = "Only this worker's tasks"), ("event" = Option<i64>, Query, minimum = 1, description = "Only the tasks of this event"), ("since" = inline(Option<crate::observe::Since>), Query), ("q" = Option<String>, Query, description = "Only tasks whose payload, result or error, as the API shows them, contains this text, ignoring case (a secret shown as [redacted] is not searched). A search reads at most 5,000 tasks per page: a page may hold fewer tasks than its limit and still have a next_cursor"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"), ("cursor" = Option<i64>, Query, minimum = 1, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of tasks", body = TaskList)))]
async fn list_tasks(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<axum::Json<TaskList>> {
    let mut q = ListingQuery::parse(
        query,
        &["state", "worker", "event", "since", "q", "limit", "cursor"],
    )?;
    let filter = TaskFilter {
        state: q.one_of("state", TaskState::ALL)?,
        worker: q.text("worker"),
        event_id: q.id("event")?,
        created_since: q
            .text("since")
            .map(|since| crate::observe::parse_since(&since, shared.clock.now_ms()))
            .transpose()
            .map_err(|err| Failure::bad_request(format!("since: {err}")).at("since"))?,
        limit: q.limit()?,
        cursor: q.id("cursor")?,
    };
    let page = list_shown_tasks(&shared, &filter, q.text("q").as_deref()).await?;
    Ok(axum::Json(TaskList {
        tasks: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// How many tasks one search reads at most before it answers (with a cursor to go on).
const SEARCH_SCAN_ROWS: usize = 5_000;

/// Tasks matching `filter`, newest first, as the API shows them ([`shown_task`]); with `text`,
/// only those whose shown payload, result or error contains it, ignoring case.
///
/// The search reads the shown tasks, never the stored text: stored payloads and results may hold
/// secrets that the shown ones hide, and any match against them, even one filtered out
/// afterwards, would tell through the page's cursor or its time whether a secret contains the
/// text. It walks the listing page by page and stops when its page is full or after
/// [`SEARCH_SCAN_ROWS`] tasks; the cursor is then the last task it read, so a page may hold
/// fewer tasks than its limit (even none) and still have a cursor.
pub(crate) async fn list_shown_tasks(
    shared: &Shared,
    filter: &TaskFilter,
    text: Option<&str>,
) -> ApiResult<Page<Task>> {
    let Some(text) = text else {
        let page = shared.store.list_tasks(filter).await?;
        return Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|task| shown_task(shared, task))
                .collect(),
            next_cursor: page.next_cursor,
        });
    };
    let needle = text.to_lowercase();
    let wanted = usize::try_from(filter.limit.unwrap_or(mechanics_store::DEFAULT_PAGE_SIZE))
        .unwrap_or(usize::MAX);
    let mut scan = TaskFilter {
        limit: Some(mechanics_store::MAX_PAGE_SIZE),
        ..filter.clone()
    };
    let (mut items, mut read) = (Vec::new(), 0);
    loop {
        let page = shared.store.list_tasks(&scan).await?;
        for task in page.items {
            read += 1;
            let id = task.id;
            let task = shown_task(shared, task);
            if shows_text(&task, &needle) {
                items.push(task);
                if items.len() == wanted {
                    return Ok(Page {
                        items,
                        next_cursor: Some(id),
                    });
                }
            }
        }
        match page.next_cursor {
            Some(cursor) if read < SEARCH_SCAN_ROWS => scan.cursor = Some(cursor),
            next_cursor => return Ok(Page { items, next_cursor }),
        }
    }
}

/// Whether the shown `task`'s payload, result or error contains `needle` (lower case), ignoring
/// case.
fn shows_text(task: &Task, needle: &str) -> bool {
    let contains = |text: &str| text.to_lowercase().contains(needle);
    contains(&task.payload.to_string())
        || task
            .result
            .as_ref()
            .is_some_and(|result| contains(&result.to_string()))
        || task.error.as_deref().is_some_and(contains)
}

/// The task with its attempts and their console output. Console lines and attempt errors were
/// redacted before they were stored and are again here, for secrets learnt since (as results
/// are).
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", operation_id = "show_task", summary = "A task with its attempts and their console output", params(("id" = i64, Path, description = "The task's id")), responses((status = 200, description = "The task", body = TaskDetail)))]
async fn show_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TaskDetail>> {
    let id = parse_id(&id)?;
    let Some(task) = shared.store.get_task(id).await? else {
        return Err(Failure::not_found(format!("no task {id}")));
    };
    let mut console = shared.store.task_console(id).await?;
    let redactor = shared.trace.redactor();
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
    Ok(axum::Json(TaskDetail {
        task: shown_task(&shared, task),
        console,
        attempts,
    }))
}

/// A task or event id from a path.
pub(crate) fn parse_id(text: &str) -> ApiResult<i64> {
    text.parse().map_err(|_| {
        Failure::bad_request(format!(
            "{} is not a task or event id (a number)",
            quote(text)
        ))
    })
}

#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks", operation_id = "retry_task", summary = "Queue a dead or failed task again", params(("id" = i64, Path, description = "The task's id")), responses((status = 200, description = "The task, pending again", body = Task), (status = 409, description = "The task is not dead or failed", body = ApiError)))]
async fn retry_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Task>> {
    let task = retry(&shared, parse_id(&id)?).await?;
    Ok(axum::Json(shown_task(&shared, task)))
}

/// Queues the dead or failed task `id` again (the API's and the dashboard's Retry).
pub(crate) async fn retry(shared: &Shared, id: i64) -> ApiResult<Task> {
    let now = shared.clock.now_ms();
    let task = shared.store.retry_task(id, now, now).await?;
    shared.trace.retry_requested(&task, now);
    shared.dispatcher.wake.notify_one();
    Ok(task)
}

#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", operation_id = "cancel_task", summary = "Cancel a task that has not ended", params(("id" = i64, Path, description = "The task's id")), responses((status = 200, description = "The canceled task", body = Task), (status = 409, description = "The task has ended already", body = ApiError)))]
async fn cancel_task(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Task>> {
    let task = cancel(&shared, parse_id(&id)?).await?;
    Ok(axum::Json(shown_task(&shared, task)))
}

/// Cancels the task `id`, which has not ended (the API's and the dashboard's Cancel).
pub(crate) async fn cancel(shared: &Shared, id: i64) -> ApiResult<Task> {
    let now = shared.clock.now_ms();
    let task = shared.store.cancel_task(id, now).await?;
    shared.dispatcher.withdraw(id);
    shared.trace.canceled(&task, now);
    // A canceled task has ended: its event may now be settled (written back or failed).
    if let Some(event) = task.event_id {
        shared.dispatcher.settle.push(event);
    }
    Ok(task)
}

#[utoipa::path(get, path = "/nodes", tag = "nodes", operation_id = "list_nodes", summary = "Executor nodes (local and remote) and process workers, with their state", responses((status = 200, description = "Every node", body = NodeList)))]
async fn list_nodes(State(shared): State<Arc<Shared>>) -> axum::Json<NodeList> {
    axum::Json(NodeList {
        nodes: node_views(&shared),
    })
}

/// Every executor node (local and remote) and process worker, with its state (the API's and
/// the dashboard's).
pub(crate) fn node_views(shared: &Shared) -> Vec<NodeView> {
    let mut nodes = shared.js.as_ref().map(|js| js.nodes()).unwrap_or_default();
    nodes.extend(shared.dispatcher.processes.views());
    nodes.extend(shared.dispatcher.containers.views());
    nodes
}

#[utoipa::path(post, path = "/nodes/{name}/reset", tag = "nodes", operation_id = "reset_node", summary = "Re-arm a node's crash-loop breaker", params(("name" = String, Path, description = "The node's or process worker's name")), responses((status = 200, description = "Every node, after the reset", body = NodeList)))]
async fn reset_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<NodeList>> {
    reset_breaker(&shared, &name)?;
    Ok(list_nodes(State(shared)).await)
}

/// Re-arms the crash-loop breaker of the node or process worker `name` (the API's and the
/// dashboard's Reset).
pub(crate) fn reset_breaker(shared: &Shared, name: &str) -> ApiResult<()> {
    let reset = shared.js.as_ref().is_some_and(|js| js.reset(name))
        || shared.dispatcher.processes.reset(name)
        || shared.dispatcher.containers.reset(name);
    if reset {
        Ok(())
    } else {
        Err(Failure::not_found(format!(
            "no node or process worker named {}",
            quote(name)
        )))
    }
}
