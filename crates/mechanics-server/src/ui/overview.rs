//! The Overview at `/ui`: tasks per state (each a link to the filtered list), the nodes'
//! health, and the latest dead letters.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use mechanics_proto::domain::TaskState;
use mechanics_store::TaskFilter;

use super::{Visitor, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::Failure;

/// How many dead letters the Overview lists.
const LATEST_DEAD: u32 = 10;

/// `GET /ui`.
pub(super) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
) -> Response {
    let counts = match shared.store.task_counts(None).await {
        Ok(counts) => counts,
        Err(err) => return failure_page(&visitor, &Failure::from(err)),
    };
    let dead = match shared
        .store
        .list_tasks(&TaskFilter {
            state: Some(TaskState::Dead),
            limit: Some(LATEST_DEAD),
            ..TaskFilter::default()
        })
        .await
    {
        Ok(page) => page.items,
        Err(err) => return failure_page(&visitor, &Failure::from(err)),
    };
    let nodes = crate::api::node_views(&shared);
    let body = html! {
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
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "Overview", body))
}
