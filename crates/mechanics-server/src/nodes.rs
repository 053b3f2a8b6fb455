//! The registry of remote executor nodes (`POST /api/v1/nodes`, `DELETE /api/v1/nodes/{name}`;
//! `GET /api/v1/nodes` lists them with the local ones), and keeping the js executor's remote
//! nodes in step with it.
//!
//! A node spec names where its token is (`token_env`, `token_file`), never the token: the server
//! reads it when the node is added (and the executor contacts the node with it, so a wrong token
//! is refused before anything is stored) and whenever the registry changes. A token read is
//! redacted from `/logs` from then on.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mechanics_proto::domain::{NodeSpec, RemoteNode};

use crate::Shared;
use crate::api::{ApiResult, Failure, parse_body, quote};
use crate::executor::RemoteNodeTarget;

#[utoipa::path(post, path = "/nodes", tag = "nodes", operation_id = "add_node", summary = "Add or replace a remote executor node; it is contacted with its token first", request_body = NodeSpec, responses((status = 201, description = "Added", body = RemoteNode), (status = 200, description = "Replaced", body = RemoteNode), (status = 400, description = "Invalid spec, unreadable token or CA file, or the node refused the token or speaks another protocol", body = mechanics_proto::api::ApiError)))]
pub(crate) async fn add_node(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<RemoteNode>)> {
    let spec: NodeSpec = parse_body(body)?;
    let invalid = |message: String| {
        Failure::bad_request(format!("invalid node {}: {message}", quote(&spec.name)))
    };
    spec.validate().map_err(|err| invalid(err.to_string()))?;
    let target = resolve(&spec).map_err(&invalid)?;
    shared.trace.redactor().add_secret(&target.token);
    if let Some(js) = &shared.js {
        js.check_remote_node(&target).await.map_err(&invalid)?;
    }
    let node = shared
        .store
        .upsert_node(spec, shared.clock.now_ms())
        .await?;
    sync(&shared).await;
    shared.registry_changed();
    let status = if node.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(node)))
}

#[utoipa::path(delete, path = "/nodes/{name}", tag = "nodes", operation_id = "delete_node", summary = "Remove a remote executor node (jobs on it finish)", params(("name" = String, Path, description = "The remote node's name")), responses((status = 204, description = "Removed"), (status = 404, description = "No such remote node", body = mechanics_proto::api::ApiError)))]
pub(crate) async fn delete_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if !shared.store.delete_node(&name).await? {
        return Err(Failure::not_found(format!(
            "no remote node named {}",
            quote(&name)
        )));
    }
    sync(&shared).await;
    shared.registry_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Gives the js executor the registry's remote nodes with their tokens. A node whose token
/// cannot be read now is left out, with a warning naming the reference (never a value). Runs at
/// startup and whenever the registry changes, never on an idle loop.
pub(crate) async fn sync(shared: &Shared) {
    let Some(js) = &shared.js else { return };
    let nodes = match shared.store.list_nodes().await {
        Ok(nodes) => nodes,
        Err(err) => {
            tracing::error!(error = %err, "reloading the remote nodes failed; keeping the last list");
            return;
        }
    };
    let mut targets = Vec::with_capacity(nodes.len());
    for node in nodes {
        match resolve(&node.spec) {
            Ok(target) => {
                shared.trace.redactor().add_secret(&target.token);
                targets.push(target);
            }
            Err(problem) => {
                tracing::warn!(node = %node.spec.name, "remote node left out: {problem}")
            }
        }
    }
    js.set_remote_nodes(targets);
}

/// The node's token, read from its environment variable or file now. The error names the field.
fn resolve(spec: &NodeSpec) -> Result<RemoteNodeTarget, String> {
    let token = if let Some(name) = &spec.token_env {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
            _ => {
                return Err(format!(
                    "token_env: the environment variable {name} is not set"
                ));
            }
        }
    } else if let Some(path) = &spec.token_file {
        match crate::files::read_secret(std::path::Path::new(path)) {
            Ok(Some(bytes)) => String::from_utf8(bytes)
                .map_err(|_| format!("token_file: {path} does not hold UTF-8 text"))?
                .trim()
                .to_owned(),
            Ok(None) => return Err(format!("token_file: {path} is empty")),
            Err(err) => return Err(format!("token_file: {err}")),
        }
    } else {
        return Err("token_env: required (or token_file)".to_owned());
    };
    Ok(RemoteNodeTarget {
        spec: spec.clone(),
        token,
    })
}
