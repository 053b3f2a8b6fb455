//! The Overview at `/ui`: tasks per state (each a link to the filtered list), the tasks that
//! ended per minute over the last hour and the last day (a chart drawn here as SVG: no script,
//! no library), this server's dispatch latency, the workers failing now, the nodes' health, and
//! the latest dead letters.
//!
//! Every number comes from an indexed query or from memory: the counts per state from
//! `tasks_state`, the chart and the failing workers from a range of `tasks_updated`, the
//! latency from [`crate::recent`].

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use mechanics_proto::domain::TaskState;
use mechanics_store::{ActivityBucket, TaskFilter};

use super::{Visitor, encode, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::Failure;

/// How many dead letters the Overview lists.
const LATEST_DEAD: u32 = 10;
/// "Failing now": tasks that failed or went dead in this window (15 minutes).
pub(super) const FAILING_WINDOW_MS: i64 = 15 * 60_000;
/// The most failing workers listed.
const FAILING_LISTED: u32 = 20;

const MINUTE_MS: i64 = 60_000;

/// One chart: its window, drawn in `bars` buckets of `bucket_ms`.
struct Window {
    title: &'static str,
    id: &'static str,
    bucket_ms: i64,
    bars: i64,
}

/// The last hour minute by minute; the last day in quarters of an hour (96 bars, each the
/// quarter's average per minute), so the page stays light.
const WINDOWS: [Window; 2] = [
    Window {
        title: "Last hour",
        id: "chart-hour",
        bucket_ms: MINUTE_MS,
        bars: 60,
    },
    Window {
        title: "Last day",
        id: "chart-day",
        bucket_ms: 15 * MINUTE_MS,
        bars: 96,
    },
];

/// `GET /ui`.
pub(super) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
) -> Response {
    match overview(&shared).await {
        Ok(body) => html_response(StatusCode::OK, layout(Some(&visitor), "Overview", body)),
        Err(failure) => failure_page(&visitor, &failure),
    }
}

async fn overview(shared: &Shared) -> Result<Markup, Failure> {
    let now = shared.clock.now_ms();
    let store = &shared.store;
    let counts = store.task_counts(None).await?;
    let mut charts = Vec::with_capacity(WINDOWS.len());
    for window in &WINDOWS {
        // The oldest bar starts on a bucket boundary, so the newest is the one now is in.
        let first = (now.div_euclid(window.bucket_ms) - window.bars + 1) * window.bucket_ms;
        let buckets = store.task_activity(first, window.bucket_ms).await?;
        charts.push(chart(window, first, &buckets));
    }
    let failing = store
        .failing_workers(now - FAILING_WINDOW_MS, FAILING_LISTED)
        .await?;
    let dead = store
        .list_tasks(&TaskFilter {
            state: Some(TaskState::Dead),
            limit: Some(LATEST_DEAD),
            ..TaskFilter::default()
        })
        .await?
        .items;
    let (attempts, p50, p95) = shared.metrics.recent.latency_of_all(now);
    let nodes = crate::api::node_views(shared);
    Ok(html! {
        h1 { "Overview" }
        h2 { "Tasks per state" }
        table.counts {
            tbody {
                @for state in TaskState::ALL {
                    tr id={"count-" (state.as_str())} {
                        td { a href={"/ui/tasks?state=" (state.as_str())} { span class={"state " (state.as_str())} { (state.as_str()) } } }
                        td { (counts.get(state).copied().unwrap_or(0)) }
                    }
                }
            }
        }
        h2 { "Tasks ended per minute" }
        p.hint { "Completed in green, failed or dead in red, by when they ended." }
        @for chart in &charts { (chart) }
        h2 { "Dispatch latency" }
        p #latency {
            @match (p50, p95) {
                (Some(p50), Some(p95)) => {
                    "p50 " strong { (p50) " ms" } " · p95 " strong { (p95) " ms" }
                    " over " (attempts) " attempts in the last hour on this server"
                }
                _ => { "No attempt in the last hour on this server." }
            }
        }
        h2 { "Workers failing now" }
        @if failing.is_empty() {
            p.empty #failing { "No task failed in the last 15 minutes." }
        } @else {
            table.failing #failing {
                thead { tr { th { "Worker" } th { "Failed or dead, last 15 min" } th { "Tasks" } } }
                tbody {
                    @for worker in &failing {
                        tr {
                            td { (worker.worker) }
                            td { (worker.failed) }
                            td {
                                a href={"/ui/tasks?state=failed&worker=" (encode(&worker.worker))} { "failed" }
                                " · "
                                a href={"/ui/tasks?state=dead&worker=" (encode(&worker.worker))} { "dead" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Nodes" }
        @if nodes.is_empty() {
            p.empty { "No executor nodes or process workers." }
        } @else {
            table.nodes {
                thead { tr { th { "Node" } th { "Kind" } th { "State" } th { "Breaker" } th { "In flight" } th { "Deaths" } } }
                tbody {
                    @for node in &nodes {
                        tr {
                            td { (node.name) }
                            td { (node.kind.as_str()) }
                            td { (node.state) }
                            td { (node.breaker) }
                            td { (node.in_flight) }
                            td { (node.deaths) }
                        }
                    }
                }
            }
        }
        h2 { "Latest dead letters" }
        @if dead.is_empty() {
            p.empty { "None." }
        } @else {
            table.dead {
                tbody {
                    @for task in &dead {
                        tr {
                            td { a href={"/ui/tasks/" (task.id)} { "#" (task.id) } }
                            td { (task.worker) }
                            td { (timestamp(task.updated_at)) }
                            td.error { (task.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    })
}

/// Chart size in SVG units (it scales with the page).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 100.0;

/// A bar chart of `window` from `first`: per bar, the completed tasks per minute stacked under
/// the failed ones, each bar titled with its time and counts (a tooltip, and what a screen
/// reader reads).
fn chart(window: &Window, first: i64, buckets: &[ActivityBucket]) -> Markup {
    let minutes = (window.bucket_ms / MINUTE_MS).max(1) as f64;
    let per_minute = |count: u64| count as f64 / minutes;
    let peak = buckets
        .iter()
        .map(|b| per_minute(b.completed + b.failed))
        .fold(0.0, f64::max);
    let (completed, failed) = buckets
        .iter()
        .fold((0, 0), |(c, f), b| (c + b.completed, f + b.failed));
    let bar_width = WIDTH / window.bars as f64;
    let scale = if peak > 0.0 { HEIGHT / peak } else { 0.0 };
    html! {
        figure.chart id=(window.id) {
            figcaption {
                strong { (window.title) } ": " (completed) " completed, " (failed) " failed or dead"
                @if peak > 0.0 { " · peak " (format!("{peak:.1}")) " per minute" }
            }
            svg viewBox={"0 0 " (WIDTH) " " (HEIGHT)} width="100%" height="100"
                preserveAspectRatio="none" role="img"
                aria-label={(window.title) ": tasks ended per minute"} {
                @for bucket in buckets {
                    @let index = (bucket.start - first) / window.bucket_ms;
                    @let x = index as f64 * bar_width;
                    @let ok = per_minute(bucket.completed) * scale;
                    @let bad = per_minute(bucket.failed) * scale;
                    g {
                        title {
                            (timestamp(bucket.start)) ": " (bucket.completed) " completed, "
                            (bucket.failed) " failed"
                        }
                        @if bucket.completed > 0 {
                            rect.completed x=(fmt(x)) y=(fmt(HEIGHT - ok)) width=(fmt(bar_width * 0.9)) height=(fmt(ok)) fill="#2e7d32" {}
                        }
                        @if bucket.failed > 0 {
                            rect.failed x=(fmt(x)) y=(fmt(HEIGHT - ok - bad)) width=(fmt(bar_width * 0.9)) height=(fmt(bad)) fill="#c62828" {}
                        }
                    }
                }
            }
        }
    }
}

/// A coordinate with two decimals at most: enough for a 600-unit chart, and light.
fn fmt(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
