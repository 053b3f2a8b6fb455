//! The node's HTTP service: `POST /v1/jobs`, `GET /health`, `GET /stats`.
//!
//! A job's console output goes back to the caller with its answer (a result or a script error),
//! never to the node's own output: the node does not print what a script writes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mechanics_core::job::MechanicsJob;
use mechanics_core::{ConsoleLevel, ConsoleLine, MechanicsError, MechanicsPool};
use mechanics_proto::domain;
use mechanics_proto::node::{
    ErrorResponse, HEALTH_PATH, JOBS_PATH, JobRequest, JobResponse, NodeStats, PROTOCOL_VERSION,
    RECYCLE_HEADER, STATS_PATH,
};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::memory::Monitor;
use crate::{NodeConfig, NodeError};

struct Node {
    pool: Arc<MechanicsPool>,
    config: NodeConfig,
    monitor: Monitor,
    started: Instant,
    jobs_run: AtomicU64,
    in_flight: AtomicU64,
}

/// Serves jobs on `listener` until `shutdown` completes, then stops accepting, lets the jobs in
/// flight finish and drops the pool.
///
/// Refuses a listener on a non-loopback address when `config` has no token. Starts the engine
/// pool (a `JobMemoryAllocator` must be the process's global allocator for memory limits to
/// hold) and, with `memory_cap_bytes`, the memory monitor that ends the process past the cap.
/// Raises the process's soft descriptor limit to its hard limit, and serves through
/// `mechanics-edge` with its default limits, under that descriptor limit.
pub async fn serve(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let addr = listener.local_addr()?;
    config.check_address(addr)?;
    let pool = Arc::new(MechanicsPool::new(config.pool.clone())?);
    let monitor = Monitor::start(config.memory_cap_bytes, NodeConfig::MEMORY_CAP_EXIT_STATUS)?;
    let node = Arc::new(Node {
        pool: pool.clone(),
        config,
        monitor,
        started: Instant::now(),
        jobs_run: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
    });
    let tls = node.config.tls.clone();
    // Its name (`--name`) as `node`, the field a coordinator relaying this line names it by; an
    // unnamed node has none.
    let name = node.config.name.as_deref();
    tracing::info!(%addr, node = name, tls = tls.is_some(), "node serving");
    let guarded = Router::new()
        .route(JOBS_PATH, post(run_job))
        .route(STATS_PATH, get(stats))
        .route_layer(middleware::from_fn_with_state(node.clone(), authorize))
        .layer(DefaultBodyLimit::max(node.config.max_body_bytes));
    let router = guarded.route(HEALTH_PATH, get(health)).with_state(node);
    // The coordinator is the only intended client, but the port may be reachable by others:
    // the edge keeps them from holding connections or descriptors.
    let limits = mechanics_edge::EdgeLimits::default().for_this_process();
    match tls {
        Some(tls) => mechanics_edge::serve_tls(listener, router, limits, tls, shutdown).await,
        None => mechanics_edge::serve(listener, router, limits, shutdown).await,
    }
    tracing::info!(%addr, "node stopped");
    // Dropping the pool waits up to its shutdown timeout for running jobs: not on the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(pool)).await;
    Ok(())
}

/// `401` unless the request carries `Authorization: Bearer <token>`; runs before the body is read.
async fn authorize(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    if let Some(token) = &node.config.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        // Constant time in the token's content; only its length can show through timing.
        if !bool::from(presented.ct_eq(token.as_bytes())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

async fn health(State(node): State<Arc<Node>>) -> Response {
    let stats = node.pool.stats();
    // A pool that has no worker and may not start one cannot serve: say so, so the supervisor
    // restarts the process.
    if stats.worker_count == 0 && stats.restart_blocked {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "worker_unavailable",
            "no engine worker is running and none may be started",
        );
    }
    (StatusCode::OK, "ok").into_response()
}

async fn stats(State(node): State<Arc<Node>>) -> Response {
    let pool = node.pool.stats();
    let stats = NodeStats {
        name: node.config.name.clone(),
        pid: std::process::id(),
        uptime_ms: u64::try_from(node.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        jobs_run: node.jobs_run.load(Ordering::Relaxed),
        jobs_in_flight: node.in_flight.load(Ordering::Relaxed),
        rss_bytes: node.monitor.rss(),
        memory_cap_bytes: node.config.memory_cap_bytes,
        recycle_due: node.recycle_due(),
        capacity: pool.worker_count as u64,
        pool: serde_json::to_value(&pool).unwrap_or(Value::Null),
        protocol: PROTOCOL_VERSION,
    };
    axum::Json(stats).into_response()
}

async fn run_job(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut response = node.run_job(body).await;
    if node.recycle_due() {
        response
            .headers_mut()
            .insert(RECYCLE_HEADER, HeaderValue::from_static("1"));
    }
    response
}

impl Node {
    async fn run_job(self: &Arc<Self>, body: Result<Bytes, BytesRejection>) -> Response {
        let body = match body {
            Ok(body) => body,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    &format!(
                        "the request body is larger than the node's limit of {} bytes",
                        self.config.max_body_bytes
                    ),
                );
            }
            Err(rejection) => {
                return error(rejection.status(), "bad_request", &rejection.body_text());
            }
        };
        let request: JobRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("the body is not a job request: {err}"),
                );
            }
        };
        let job_id = request.job_id.clone();
        let job = match job_of(request) {
            Ok(job) => job,
            Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_job", &message),
        };
        let in_flight = InFlight::enter(self);
        let pool = self.pool.clone();
        // The pool's API blocks; a blocking thread waits for the answer.
        let outcome = tokio::task::spawn_blocking(move || pool.run_nonblocking_enqueue(job)).await;
        drop(in_flight);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::error!(%job_id, %err, "job task failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the node failed to run the job",
                );
            }
        };
        let console = outcome.console.into_iter().map(wire_line).collect();
        match outcome.result {
            Ok(result) => {
                self.jobs_run.fetch_add(1, Ordering::Relaxed);
                axum::Json(JobResponse { result, console }).into_response()
            }
            Err(err) => {
                let status = status_of(&err);
                if status == StatusCode::UNPROCESSABLE_ENTITY {
                    self.jobs_run.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%job_id, kind = %err.kind(), "job failed");
                let body = ErrorResponse {
                    console,
                    ..ErrorResponse::new(err.kind().as_str(), err.to_string())
                };
                let mut response = (status, axum::Json(body)).into_response();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    let seconds = self.config.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
        }
    }

    /// Whether this process should be replaced: it ran its quota of jobs, its memory passed the
    /// watermark, or the pool gave up on a thread (which may hold a core or memory for good).
    fn recycle_due(&self) -> bool {
        let config = &self.config;
        config
            .recycle_after_jobs
            .is_some_and(|quota| self.jobs_run.load(Ordering::Relaxed) >= quota)
            || config
                .recycle_rss_bytes
                .is_some_and(|mark| self.monitor.rss() >= mark)
            || self.pool.stats().abandoned_workers > 0
    }
}

/// Counts a job in flight until dropped, also when the caller hangs up and axum drops the
/// handler mid-job.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(node: &'a Node) -> Self {
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&node.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The status of a failed job. The script's own failures are `422`; load and lifecycle are `503`
/// (overload is never the caller's fault); anything else is the node's fault.
fn status_of(err: &MechanicsError) -> StatusCode {
    let kind = err.kind();
    if kind.is_transient() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match err {
        MechanicsError::Execution(_)
        | MechanicsError::EndpointTransport(_)
        | MechanicsError::Retryable(_)
        | MechanicsError::LimitExceeded(_)
        | MechanicsError::Panic(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The engine's job, validated: a bad `config`, `limits` or `source_map` fails here with a
/// message naming the field.
/// The engine's job for a node request: the one reading of the wire form, shared with
/// `mechanics worker test`. The error names the invalid field.
pub fn job_of(request: JobRequest) -> Result<MechanicsJob, String> {
    let mut object = Map::new();
    object.insert("module_source".into(), Value::String(request.module_source));
    object.insert("arg".into(), request.arg);
    if let Some(config) = request.config {
        object.insert("config".into(), config);
    }
    if let Some(limits) = request.limits {
        object.insert("limits".into(), limits);
    }
    if let Some(source_map) = request.source_map {
        object.insert("source_map".into(), source_map);
    }
    serde_json::from_value(Value::Object(object)).map_err(|err| err.to_string())
}

/// The engine's console line as the node protocol carries it.
fn wire_line(line: ConsoleLine) -> domain::ConsoleLine {
    let level = match line.level {
        ConsoleLevel::Log => domain::ConsoleLevel::Log,
        ConsoleLevel::Info => domain::ConsoleLevel::Info,
        ConsoleLevel::Warn => domain::ConsoleLevel::Warn,
        ConsoleLevel::Error => domain::ConsoleLevel::Error,
        ConsoleLevel::Debug => domain::ConsoleLevel::Debug,
    };
    domain::ConsoleLine {
        level,
        ts: line.ts,
        message: line.message,
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, axum::Json(ErrorResponse::new(kind, message))).into_response()
}
