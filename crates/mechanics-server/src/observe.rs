//! The observability endpoints:
//!
//! - `GET /metrics` (public, for scrapers): the Prometheus text format (0.0.4) of
//!   [`Metrics`](crate::metrics::Metrics) plus the state gauges read at scrape time.
//! - `GET /logs` and its alias `GET /api/v1/logs` (API key, as the rest of the API): the
//!   pipeline trace, filtered by `event`, `task`, `worker`, `action`, `outcome`, `since` (`90s`,
//!   `15m`, `1h`, `24h`, `7d` or RFC 3339), `trace`, `limit` and `cursor`; newest first.
//! - `GET /api/v1/metrics/summary` (API key, `read`): per worker, tasks created, completed,
//!   failed and dead and the dispatch latency's p50 and p95 over the last hour on this server
//!   ([`crate::recent`]).
//! - `GET /debug/vars`: metrics and runtime state as JSON (`store.queries`: the store operations
//!   that ran SQL since the server started, not counting this request's own). With an API key
//!   configured or stored it needs a valid key (any scope); without one it answers loopback
//!   peers only (401 otherwise). It
//!   never shows environment variables, the command line, the configuration or secrets, and its
//!   JSON passes through the redactor as well.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mechanics_proto::api::{LogList, MetricsSummary};
use mechanics_proto::domain::LogOutcome;
use mechanics_store::LogQuery;
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Shared;
use crate::api::{Failure, ListingQuery, quote};
use crate::metrics::Snapshot;

/// The routes outside `/api/v1` that need no key, each registered with its documentation:
/// `/metrics`, `/healthz` and `/debug/vars` (which checks keys itself, see the module doc).
pub(crate) fn open_routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(debug_vars))
}

/// `/logs`, the alias of `/api/v1/logs` outside the API prefix; the caller puts it behind the
/// keys' authentication.
pub(crate) fn log_routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new().routes(routes!(list_logs_outside_api))
}

/// The state gauges: one `task_counts` query, the rest from memory.
async fn snapshot(shared: &Shared) -> Snapshot {
    let tasks = match shared.store.task_counts(None).await {
        Ok(counts) => Some(counts),
        Err(err) => {
            tracing::warn!(error = %err, "reading task counts for the metrics failed");
            None
        }
    };
    let nodes = crate::api::node_views(shared);
    Snapshot {
        tasks,
        in_flight: shared.dispatcher.in_flight(),
        ready: shared.dispatcher.ready(),
        concurrency: shared.dispatcher.config.concurrency,
        uptime_seconds: shared.metrics.uptime().as_secs_f64(),
        nodes,
    }
}

#[utoipa::path(get, path = "/metrics", tag = "observe", operation_id = "metrics", summary = "Prometheus metrics (text format 0.0.4)", security(()), responses((status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = snapshot(&shared).await;
    let body = shared.metrics.render(&snapshot);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

/// The schema of `since` in the document: a duration back from now (`90s`, `15m`, `1h`, `7d`) or
/// an RFC 3339 time, which is exactly what [`parse_since`] takes.
pub(crate) struct Since;

impl utoipa::PartialSchema for Since {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        AnyOfBuilder::new()
            .item(string().pattern(Some("^[0-9]{1,12}[smhd]$")))
            .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))))
            .description(Some(
                "A duration back from now (90s, 15m, 1h, 24h, 7d) or an RFC 3339 time",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Since {}

/// The schema of `action` in the document: one of [`crate::trace_log::ACTIONS`], as the listing
/// checks.
pub(crate) struct Action;

impl utoipa::PartialSchema for Action {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(crate::trace_log::ACTIONS.iter().copied()))
            .description(Some("Only entries of this step of the pipeline"))
            .into()
    }
}

impl utoipa::ToSchema for Action {}

/// The parameters `GET /logs` takes.
pub(crate) const LOG_PARAMS: &[&str] = &[
    "event", "task", "worker", "action", "outcome", "since", "trace", "limit", "cursor",
];

/// `params` as a store query, with `now` for relative `since` values.
pub(crate) fn log_query(mut params: ListingQuery, now: i64) -> Result<LogQuery, Failure> {
    let since = params
        .text("since")
        .map(|s| parse_since(&s, now))
        .transpose()
        .map_err(|err| Failure::bad_request(format!("since: {err}")))?;
    Ok(LogQuery {
        event_id: params.id("event")?,
        task_id: params.id("task")?,
        worker: params.text("worker"),
        action: params
            .text("action")
            .map(|action| {
                if crate::trace_log::ACTIONS.contains(&action.as_str()) {
                    Ok(action)
                } else {
                    Err(Failure::bad_request(format!(
                        "action: {} is not one of: {}",
                        crate::api::quote(&action),
                        crate::trace_log::ACTIONS.join(", ")
                    )))
                }
            })
            .transpose()?,
        outcome: params.one_of("outcome", LogOutcome::ALL)?,
        since,
        trace_id: params.text("trace"),
        limit: params.limit()?,
        cursor: params.id("cursor")?,
    })
}

/// `GET /logs`: flushes the buffered entries first, so a caller sees the steps it caused.
#[utoipa::path(get, path = "/logs", tag = "logs", operation_id = "list_logs", summary = "The pipeline trace, newest first", params(("event" = Option<i64>, Query, minimum = 1), ("task" = Option<i64>, Query, minimum = 1), ("worker" = Option<String>, Query), ("action" = inline(Option<Action>), Query), ("outcome" = Option<LogOutcome>, Query), ("since" = inline(Option<Since>), Query), ("trace" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("cursor" = Option<i64>, Query, minimum = 1)), responses((status = 200, description = "A page of entries", body = LogList)))]
pub(crate) async fn list_logs(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::Json<LogList>, Failure> {
    let query = log_query(
        ListingQuery::parse(query, LOG_PARAMS)?,
        shared.clock.now_ms(),
    )?;
    if let Err(err) = shared.trace.flush().await {
        tracing::warn!(error = %err, "flushing the pipeline trace before a read failed");
    }
    let page = shared.store.query_logs(&query).await?;
    Ok(axum::Json(LogList {
        entries: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// `GET /api/v1/metrics/summary`: every registered worker's last hour (and any removed one's
/// still in the window).
#[utoipa::path(get, path = "/metrics/summary", tag = "observe", operation_id = "metrics_summary", summary = "Per worker over the last hour on this server: tasks created, completed, failed, dead; dispatch latency p50 and p95", responses((status = 200, description = "Every worker's last hour, by name", body = MetricsSummary)))]
pub(crate) async fn metrics_summary(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::Json<MetricsSummary>, Failure> {
    ListingQuery::parse(query, &[])?;
    let workers = shared.store.list_workers().await?;
    let names = workers.iter().map(|worker| worker.spec.name.as_str());
    let workers = shared.metrics.recent.summary(shared.clock.now_ms(), names);
    Ok(axum::Json(MetricsSummary {
        window_seconds: (crate::recent::WINDOW_MS / 1000) as u64,
        workers,
    }))
}

/// `GET /logs`: [`list_logs`] outside the API prefix, where the README and scrapers look for it.
#[utoipa::path(get, path = "/logs", tag = "logs", operation_id = "list_logs_outside_api", summary = "The pipeline trace, newest first (the same as /api/v1/logs)", params(("event" = Option<i64>, Query, minimum = 1), ("task" = Option<i64>, Query, minimum = 1), ("worker" = Option<String>, Query), ("action" = inline(Option<Action>), Query), ("outcome" = Option<LogOutcome>, Query), ("since" = inline(Option<Since>), Query), ("trace" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("cursor" = Option<i64>, Query, minimum = 1)), responses((status = 200, description = "A page of entries", body = LogList)))]
async fn list_logs_outside_api(
    state: State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::Json<LogList>, Failure> {
    list_logs(state, query).await
}

/// `GET /healthz`: the process answers (readiness for load balancers and `mechanics serve`'s
/// own callers; it reads nothing).
#[utoipa::path(get, path = "/healthz", tag = "observe", operation_id = "healthz", summary = "Liveness: the server answers", security(()), responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// Unix ms from `text`: a duration back from `now` (`90s`, `15m`, `1h`, `24h`, `7d`) or an
/// RFC 3339 time (`2026-01-31T12:00:00Z`, with an optional fraction and offset).
pub fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "{} is neither a duration back from now (90s, 15m, 1h, 24h, 7d) nor an \
             RFC 3339 time (2026-01-31T12:00:00Z)",
            quote(text)
        )
    };
    if let Some(unit) = text.chars().last().filter(char::is_ascii_alphabetic)
        && text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && text.len() > 1
    {
        let n: i64 = text[..text.len() - 1].parse().map_err(|_| invalid())?;
        let unit_ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(invalid()),
        };
        return Ok(now.saturating_sub(n.saturating_mul(unit_ms)));
    }
    parse_rfc3339(text).ok_or_else(invalid)
}

/// Unix ms of an RFC 3339 date-time.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Who may read `/debug/vars` on a server without keys (none configured, none stored): loopback
/// peers only (the server may be exposed with `insecure_no_auth`). With keys, any valid key may
/// (every scope includes `read`).
pub fn open_debug_access_allowed(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

#[utoipa::path(get, path = "/debug/vars", tag = "observe", operation_id = "debug_vars", summary = "Metrics and runtime state as JSON", description = "Needs a key of any scope when the server has one; without any, answers loopback clients only.", responses((status = 200, description = "The state", body = Object)))]
async fn debug_vars(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Failure> {
    let now = shared.clock.now_ms();
    let caller = shared
        .keys
        .identify(shared.store.as_ref(), &headers, now)
        .await?;
    if caller == crate::keys::Caller::Anyone && !open_debug_access_allowed(peer) {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/debug/vars answers loopback clients only when the server has no API key",
        ));
    }
    // Read before this request's own query (the task counts below): two reads of an idle server
    // differ by exactly that one query of the first read.
    let queries = shared.store.queries_executed();
    let snapshot = snapshot(&shared).await;
    let metrics = &shared.metrics;
    let mut vars = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": snapshot.uptime_seconds,
        "queue": {
            "depth": snapshot.queue_depth(),
            "tasks": snapshot.tasks,
        },
        "dispatch": {
            "in_flight": snapshot.in_flight,
            "ready": snapshot.ready,
            "concurrency": snapshot.concurrency,
            "latency_ema_seconds": metrics.dispatch_latency_ema(),
        },
        "counters": metrics.totals(),
        "trace": { "buffered": shared.trace.buffered() },
        "nodes": snapshot.nodes,
        "store": {
            "shared": shared.store.shared(),
            "queries": queries,
        },
    });
    shared.trace.redactor().redact_json(&mut vars);
    Ok(axum::Json(vars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_rfc3339() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_since("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("1970-01-01T00:00:00Z", now).unwrap(), 0);
        assert_eq!(
            parse_since("2026-01-31T12:00:00.25Z", now).unwrap(),
            1_769_860_800_250
        );
        assert_eq!(
            parse_since("2026-01-31T14:00:00+02:00", now).unwrap(),
            1_769_860_800_000
        );
        for bad in [
            "",
            "h",
            "1y",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-31",
            "-1h",
        ] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_open_debug_vars_answers_loopback_peers_only() {
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert!(open_debug_access_allowed(loopback));
        assert!(open_debug_access_allowed(mapped));
        assert!(!open_debug_access_allowed(remote));
    }
}
