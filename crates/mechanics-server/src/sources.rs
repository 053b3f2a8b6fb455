//! Webhook sources: the API under `/api/v1/sources`, an in-memory cache of the registered
//! sources for the ingest path, and the resolution of a source's secret and token references.
//!
//! A source stores only *where* its secret and token are (`secret_env`, `secret_file`, ...). The
//! values are read when a request needs them, so rotating a secret needs no re-registration, and
//! a value never reaches the database, an API answer, a log line or an error message
//! (invariant 5): errors name the variable or file, never what it holds.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use mechanics_proto::api::SourceList;
use mechanics_proto::domain::{Source, SourceSpec};
use mechanics_store::Store;
use tokio::sync::RwLock;

use crate::Shared;
use crate::api::{ApiResult, Failure, parse_body};

/// The routes under `/api/v1/sources`, merged into the API router (and so behind its
/// authentication).
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sources", get(list_sources).post(add_source))
        .route("/sources/{name}", get(show_source).delete(delete_source))
}

async fn add_source(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Source>)> {
    let spec: SourceSpec = parse_body(body)?;
    spec.validate()
        .map_err(|err| Failure::bad_request(format!("invalid source: {err}")))?;
    let now = shared.clock.now_ms();
    let source = shared.store.upsert_source(spec, now).await?;
    let status = if source.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(source)))
}

async fn list_sources(State(shared): State<Arc<Shared>>) -> ApiResult<axum::Json<SourceList>> {
    Ok(axum::Json(SourceList {
        sources: shared.store.list_sources().await?,
    }))
}

async fn show_source(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Source>> {
    match shared.store.get_source(&name).await? {
        Some(source) => Ok(axum::Json(source)),
        None => Err(Failure::not_found(format!("no source named {name:?}"))),
    }
}

async fn delete_source(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if shared.store.delete_source(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Failure::not_found(format!("no source named {name:?}")))
    }
}

/// Sources by name.
type Sources = Arc<HashMap<String, Arc<Source>>>;

/// The registered sources, cached and reloaded when the store's registry version moves (every
/// source change bumps it), so a webhook costs no query to find its source.
pub(crate) struct SourceCache {
    store: Arc<dyn Store>,
    cache: RwLock<(Option<u64>, Sources)>,
}

impl SourceCache {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: RwLock::new((None, Arc::new(HashMap::new()))),
        }
    }

    /// The source called `name`, as of the current registry version.
    pub(crate) async fn get(&self, name: &str) -> Option<Arc<Source>> {
        let version = self.store.registry_version();
        {
            let cache = self.cache.read().await;
            if cache.0 == Some(version) {
                return cache.1.get(name).cloned();
            }
        }
        let mut cache = self.cache.write().await;
        if cache.0 != Some(version) {
            match self.store.list_sources().await {
                Ok(sources) => {
                    let map = sources
                        .into_iter()
                        .map(|s| (s.spec.name.clone(), Arc::new(s)))
                        .collect();
                    *cache = (Some(version), Arc::new(map));
                }
                Err(err) => {
                    tracing::error!(error = %err, "reloading the sources failed; using the last list");
                }
            }
        }
        cache.1.get(name).cloned()
    }
}

/// The source's webhook secret, read from its environment variable or file now. The error names
/// the reference, never a value.
pub(crate) fn secret(spec: &SourceSpec) -> Result<Vec<u8>, String> {
    resolve(
        "secret",
        spec.secret_env.as_deref(),
        spec.secret_file.as_deref(),
    )?
    .ok_or_else(|| format!("the source {:?} has no secret configured", spec.name))
}

/// The source's write-back token, if it has one configured.
pub(crate) fn token(spec: &SourceSpec) -> Result<Option<String>, String> {
    resolve(
        "token",
        spec.token_env.as_deref(),
        spec.token_file.as_deref(),
    )?
    .map(|bytes| {
        String::from_utf8(bytes).map_err(|_| {
            format!(
                "the write-back token of the source {:?} is not UTF-8",
                spec.name
            )
        })
    })
    .transpose()
}

fn resolve(what: &str, env: Option<&str>, file: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    if let Some(name) = env {
        return match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(Some(value.into_bytes())),
            _ => Err(format!(
                "the environment variable {name} that holds the source's {what} is not set on the server"
            )),
        };
    }
    if let Some(path) = file {
        return match std::fs::read(path) {
            // A trailing newline is an artefact of `echo secret > file`, not part of the secret.
            Ok(mut bytes) => {
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                if bytes.is_empty() {
                    Err(format!(
                        "the file {path} that holds the source's {what} is empty"
                    ))
                } else {
                    Ok(Some(bytes))
                }
            }
            Err(err) => Err(format!(
                "cannot read the file {path} that holds the source's {what}: {}",
                err.kind()
            )),
        };
    }
    Ok(None)
}
