//! The Nodes page: every executor node and process worker with its state, crash-loop breaker
//! and jobs in flight, and a Reset button (for `operate` and `admin` sessions) that re-arms a
//! breaker through the API's own [`crate::api::reset_breaker`].

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use mechanics_proto::api::ApiScope;

use super::{Visitor, failure_page, html_response, layout};
use crate::Shared;
use crate::api::{node_views, reset_breaker};

/// `GET /ui/nodes`.
pub(super) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
) -> Response {
    let nodes = node_views(&shared);
    let operate = visitor.may(ApiScope::Operate);
    let body = html! {
        h1 { "Nodes" }
        @if nodes.is_empty() {
            p.empty { "No executor nodes or process workers." }
        } @else {
            table.nodes {
                thead {
                    tr {
                        th { "Node" } th { "Kind" } th { "State" } th { "Breaker" } th { "In flight" }
                        th { "Jobs" } th { "Deaths" } th { "Last error" }
                        @if operate { th { "Action" } }
                    }
                }
                tbody {
                    @for node in &nodes {
                        tr id={"node-" (node.name)} {
                            td { (node.name) }
                            td { (node.kind.as_str()) }
                            td.node-state { (node.state) }
                            td.breaker { (node.breaker) }
                            td { (node.in_flight) }
                            td { (node.jobs) }
                            td { (node.deaths) }
                            td.error { (node.last_error.as_deref().unwrap_or("")) }
                            @if operate {
                                td {
                                    form method="post" action={"/ui/nodes/" (super::encode(&node.name)) "/reset"} {
                                        (visitor.csrf_field())
                                        button type="submit" { "Reset" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "Nodes", body))
}

/// `POST /ui/nodes/{name}/reset`: re-arms the breaker, then back to the Nodes page.
pub(super) async fn reset(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
) -> Response {
    match reset_breaker(&shared, &name) {
        Ok(()) => Redirect::to("/ui/nodes").into_response(),
        Err(failure) => failure_page(&visitor, &failure),
    }
}
