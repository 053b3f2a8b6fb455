//! Scoped API keys: who a request is, what its route needs, and `/api/v1/keys`.
//!
//! A key is `mk_` and 43 characters of URL-safe base64 (32 random bytes). The store keeps only
//! its SHA-256: 256 random bits need no slow hash, and a stolen database holds no usable key.
//! Every server keeps the keys in memory, reloaded when the store's registry version moves
//! (every key change moves it, like a worker change), so a request costs no query; a revocation
//! on a shared PostgreSQL reaches the other servers with the version's notification, or at the
//! latest with their next poll ([`FALLBACK_POLL`](crate::FALLBACK_POLL), 1 s).
//!
//! Who may do what:
//! - the key of `--api-key` / the configuration is an admin key;
//! - a stored key has its scope (`read` < `operate` < `admin`, see [`needed_scope`]); an expired
//!   one is refused from the millisecond it expires;
//! - with no configured key and no stored key the API is open, as it was before keys existed;
//!   once a key is stored, every request needs a key;
//! - a key that is sent is always checked, even on an open server: a revoked or mistyped key
//!   is a `401`, never silently ignored.
//!
//! "Last used" is written at most once a minute per key per server ([`USE_RECORD_INTERVAL`]),
//! off the request's path, so using a key costs no write per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use mechanics_proto::api::{
    API_PREFIX, ApiKeyCreated, ApiKeyInput, ApiKeyList, ApiKeyView, ApiScope,
};
use mechanics_proto::domain::LogOutcome;
use mechanics_store::{ApiKey, NewApiKey, Store, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use crate::Shared;
use crate::api::{ApiResult, Failure, parse_body, quote};

/// The prefix of every key this server makes (and of the redaction pattern for them).
pub const KEY_PREFIX: &str = "mk_";
/// How often a key's `last_used_at` is written at most, per server.
pub const USE_RECORD_INTERVAL_MS: i64 = 60_000;
/// The longest lifetime a key can be given (ten years): anything longer is a typo.
pub const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Nobody needs to be anyone: no key is configured or stored.
    Anyone,
    /// The key of the configuration (admin).
    Configured,
    /// A stored key.
    Key {
        /// Its name.
        name: String,
        /// Its scope.
        scope: ApiScope,
        /// Which key of that name: a key made later under the same name is another key.
        hash: KeyHash,
    },
}

/// The SHA-256 of a stored key's secret: what tells two keys of one name apart (a revoked key
/// and its successor). Not shown in `Debug`, though it is no secret itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyHash([u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

impl Caller {
    /// What the caller may do.
    pub(crate) fn scope(&self) -> ApiScope {
        match self {
            Self::Anyone | Self::Configured => ApiScope::Admin,
            Self::Key { scope, .. } => *scope,
        }
    }

    /// How `/logs` names the caller: a key's name, never a secret.
    pub(crate) fn label(&self) -> String {
        match self {
            Self::Anyone => "(no key)".to_owned(),
            Self::Configured => "(configured key)".to_owned(),
            Self::Key { name, .. } => name.clone(),
        }
    }
}

/// A key as the cache holds it.
struct CachedKey {
    name: String,
    scope: ApiScope,
    hash: [u8; 32],
    expires_at: Option<i64>,
}

/// The configured key and the stored keys, cached as of a registry version.
pub(crate) struct ApiKeys {
    configured: Option<String>,
    cache: RwLock<Option<(u64, Arc<Vec<CachedKey>>)>>,
    /// When each key's use was last written, by this server.
    recorded: Mutex<HashMap<String, i64>>,
}

/// Why a request was refused before its handler.
fn unauthorized(message: &str) -> Failure {
    Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

const KEY_REQUIRED: &str =
    "a valid API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`";

impl ApiKeys {
    pub(crate) fn new(configured: Option<String>) -> Self {
        Self {
            configured,
            cache: RwLock::new(None),
            recorded: Mutex::new(HashMap::new()),
        }
    }

    /// The stored keys as of the store's registry version: from memory unless it moved. If
    /// reloading fails, the last list is used (a busy database must not lock everyone out, nor
    /// let anyone in); with no list yet, the error.
    async fn stored(&self, store: &dyn Store) -> Result<Arc<Vec<CachedKey>>, StoreError> {
        let version = store.registry_version();
        if let Some((seen, keys)) = &*self.cache.read().await
            && *seen == version
        {
            return Ok(keys.clone());
        }
        let mut cache = self.cache.write().await;
        if let Some((seen, keys)) = &*cache
            && *seen == version
        {
            return Ok(keys.clone());
        }
        match store.list_api_keys().await {
            Ok(keys) => {
                let keys: Arc<Vec<CachedKey>> =
                    Arc::new(keys.into_iter().filter_map(cached).collect());
                *cache = Some((version, keys.clone()));
                Ok(keys)
            }
            Err(err) => match &*cache {
                Some((_, keys)) => {
                    tracing::error!(error = %err, "reloading the API keys failed; using the last list");
                    Ok(keys.clone())
                }
                None => Err(err),
            },
        }
    }

    /// Who sent a request with `headers` at `now`, or the refusal to answer.
    pub(crate) async fn identify(
        &self,
        store: &dyn Store,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Caller, Failure> {
        let keys = self.stored(store).await.map_err(Failure::from)?;
        let Some(given) = presented_key(headers) else {
            return if self.configured.is_none() && keys.is_empty() {
                Ok(Caller::Anyone)
            } else {
                Err(unauthorized(KEY_REQUIRED))
            };
        };
        if let Some(configured) = &self.configured
            && bool::from(given.as_bytes().ct_eq(configured.as_bytes()))
        {
            return Ok(Caller::Configured);
        }
        let hash = hash_secret(given);
        // Every stored hash is compared, in constant time each: how long this takes says
        // nothing about which key (if any) matched.
        let mut found: Option<&CachedKey> = None;
        for key in keys.iter() {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        let Some(key) = found else {
            return Err(unauthorized(KEY_REQUIRED));
        };
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(unauthorized(&format!(
                "the API key {} has expired; ask an admin for a new one (`mechanics key create`)",
                quote(&key.name)
            )));
        }
        Ok(Caller::Key {
            name: key.name.clone(),
            scope: key.scope,
            hash: KeyHash(key.hash),
        })
    }

    /// Until when (unix ms) `caller`, identified earlier, may still act at `now`: `None` once its
    /// key was revoked or expired (or, for [`Caller::Anyone`], once any key exists), `i64::MAX`
    /// for a key without an expiry. A `/ui` session asks this on every request, so a revocation
    /// ends the sessions made with the key as it ends the key's API calls. A key is found by its
    /// hash, not its name: a new key given a revoked key's name does not bring back the revoked
    /// key's sessions.
    pub(crate) async fn valid_until(
        &self,
        store: &dyn Store,
        caller: &Caller,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let keys = self.stored(store).await?;
        Ok(match caller {
            Caller::Anyone => (self.configured.is_none() && keys.is_empty()).then_some(i64::MAX),
            Caller::Configured => self.configured.is_some().then_some(i64::MAX),
            Caller::Key { name, scope, hash } => keys
                .iter()
                .find(|key| key.hash == hash.0 && &key.name == name && key.scope == *scope)
                .map(|key| key.expires_at.unwrap_or(i64::MAX))
                .filter(|until| *until > now),
        })
    }

    /// Writes that `caller` used its key at `now`, at most once per [`USE_RECORD_INTERVAL_MS`]
    /// per key, in the background.
    pub(crate) fn record_use(&self, store: &Arc<dyn Store>, caller: &Caller, now: i64) {
        let Caller::Key { name, .. } = caller else {
            return;
        };
        {
            let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            let last = recorded.get(name).copied();
            if last.is_some_and(|last| now - last < USE_RECORD_INTERVAL_MS) {
                return;
            }
            recorded.insert(name.clone(), now);
        }
        let (store, name) = (store.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(err) = store.touch_api_key(&name, now).await {
                tracing::warn!(error = %err, key = %name, "recording an API key's use failed");
            }
        });
    }
}

/// A stored key for the cache; a row whose hash is not 32 bytes (the store refuses those)
/// matches nothing.
fn cached(key: ApiKey) -> Option<CachedKey> {
    Some(CachedKey {
        hash: key.hash.as_slice().try_into().ok()?,
        name: key.name,
        scope: key.scope,
        expires_at: key.expires_at,
    })
}

/// SHA-256 of a presented secret.
fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new secret: `mk_` and 32 random bytes in URL-safe base64 (43 characters).
fn new_secret() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("no randomness for a new key: {err}"),
        )
    })?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

/// The scope a request needs: `admin` for anything under `/keys`; `read` for every other
/// `GET` (and `HEAD`); `operate` for submitting, retrying and canceling tasks, redelivering an
/// event and resetting a node's breaker; `admin` for every other change (workers, sources) and any other method or
/// path. `path` is with or without the `/api/v1` prefix. `/mcp` (the MCP endpoint that
/// [`crate::start_with`] mounts) needs `read`: each of its tools checks the scope it needs.
pub fn needed_scope(method: &Method, path: &str) -> ApiScope {
    if path == "/mcp" {
        return ApiScope::Read;
    }
    let path = path.strip_prefix(API_PREFIX).unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first() == Some(&"keys") {
        return ApiScope::Admin;
    }
    if method == Method::GET || method == Method::HEAD {
        return ApiScope::Read;
    }
    let operate = method == Method::POST
        && matches!(
            segments.as_slice(),
            ["tasks"]
                | ["tasks", _, "retry" | "cancel"]
                | ["nodes", _, "reset"]
                | ["events", _, "redeliver"]
                | ["workers", _, "pause" | "resume"]
        );
    if operate {
        ApiScope::Operate
    } else {
        ApiScope::Admin
    }
}

/// The middleware in front of the API and `/logs`: identifies the caller, refuses a missing,
/// unknown, revoked or expired key with `401` and a request outside the key's scope with `403`
/// naming the scope it needs.
pub(crate) async fn authenticate(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = shared.clock.now_ms();
    let caller = match shared
        .keys
        .identify(shared.store.as_ref(), request.headers(), now)
        .await
    {
        Ok(caller) => caller,
        Err(failure) => return failure.into_response(),
    };
    let needed = needed_scope(request.method(), request.uri().path());
    if caller.scope() < needed {
        let name = caller.label();
        return Failure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this request needs the `{needed}` scope; the key {} has `{}`",
                quote(&name),
                caller.scope()
            ),
        )
        .into_response();
    }
    shared.keys.record_use(&shared.store, &caller, now);
    // The scope, public, for routes mounted from outside this crate (`/mcp`).
    request.extensions_mut().insert(caller.scope());
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The routes under `/api/v1/keys` (admin only, see [`needed_scope`]).
pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<Shared>> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(list_keys, create_key))
        .routes(utoipa_axum::routes!(revoke_key))
}

fn view(key: ApiKey) -> ApiKeyView {
    ApiKeyView {
        name: key.name,
        scope: key.scope,
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        expires_at: key.expires_at,
    }
}

/// The `api_key` step in `/logs`: which key changed how, and by whom (names only).
fn log_change(shared: &Shared, caller: Option<&Caller>, name: &str, change: &str, now: i64) {
    let by = caller.map_or_else(|| "(no key)".to_owned(), Caller::label);
    shared.trace.record(mechanics_proto::domain::LogRecord {
        detail: Some(json!({ "key": name, "change": change, "by": by })),
        ..crate::trace_log::entry("api_key", LogOutcome::Ok, now)
    });
}

#[utoipa::path(post, path = "/keys", tag = "keys", operation_id = "create_key", summary = "Create an API key; the answer holds its secret, shown only this once", request_body = ApiKeyInput, responses((status = 201, description = "Created", body = ApiKeyCreated), (status = 409, description = "A key with this name exists", body = mechanics_proto::api::ApiError)))]
async fn create_key(
    State(shared): State<Arc<Shared>>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<ApiKeyCreated>)> {
    let input: ApiKeyInput = parse_body(body)?;
    let created = create(&shared, caller.as_ref().map(|c| &c.0), input).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Creates the key `input` describes on behalf of `caller` (the API's `POST /keys` and the
/// dashboard's Keys page); the answer holds its secret, which is stored only as a hash.
pub(crate) async fn create(
    shared: &Shared,
    caller: Option<&Caller>,
    input: ApiKeyInput,
) -> ApiResult<ApiKeyCreated> {
    let now = shared.clock.now_ms();
    let expires_at = match input.expires_in_secs {
        None => None,
        Some(secs) if (1..=MAX_EXPIRES_IN_SECS).contains(&secs) => {
            // At most ten years in ms: far from overflowing.
            Some(now + i64::try_from(secs).unwrap_or(i64::MAX / 2_000) * 1000)
        }
        Some(secs) => {
            return Err(Failure::bad_request(format!(
                "expires_in_secs: must be from 1 to {MAX_EXPIRES_IN_SECS} (ten years), not {secs}"
            ))
            .at("expires_in_secs"));
        }
    };
    let secret = new_secret()?;
    let key = shared
        .store
        .create_api_key(
            NewApiKey {
                name: input.name,
                scope: input.scope,
                hash: hash_secret(&secret).to_vec(),
                expires_at,
            },
            now,
        )
        .await?;
    log_change(
        shared,
        caller,
        &key.name,
        &format!("created ({})", key.scope),
        now,
    );
    Ok(ApiKeyCreated {
        key: view(key),
        secret,
    })
}

#[utoipa::path(get, path = "/keys", tag = "keys", operation_id = "list_keys", summary = "The API keys (never their secrets)", responses((status = 200, description = "Every key", body = ApiKeyList)))]
async fn list_keys(State(shared): State<Arc<Shared>>) -> ApiResult<axum::Json<ApiKeyList>> {
    let keys = shared.store.list_api_keys().await?;
    Ok(axum::Json(ApiKeyList {
        keys: keys.into_iter().map(view).collect(),
    }))
}

#[utoipa::path(delete, path = "/keys/{name}", tag = "keys", operation_id = "revoke_key", summary = "Revoke an API key (at once, on every server)", params(("name" = String, Path, description = "The key's name")), responses((status = 204, description = "Revoked")))]
async fn revoke_key(
    State(shared): State<Arc<Shared>>,
    caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    revoke(&shared, caller.as_ref().map(|c| &c.0), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the key `name` on behalf of `caller` (the API's `DELETE /keys/{name}` and the
/// dashboard's Keys page); `404` when there is no such key.
pub(crate) async fn revoke(shared: &Shared, caller: Option<&Caller>, name: &str) -> ApiResult<()> {
    if !shared.store.delete_api_key(name).await? {
        return Err(Failure::not_found(format!(
            "no API key named {}",
            quote(name)
        )));
    }
    let now = shared.clock.now_ms();
    log_change(shared, caller, name, "revoked", now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_route() {
        let cases = [
            (Method::GET, "/api/v1/workers", ApiScope::Read),
            (Method::GET, "/logs", ApiScope::Read),
            (Method::GET, "/api/v1/tasks/3", ApiScope::Read),
            (Method::POST, "/api/v1/tasks", ApiScope::Operate),
            (Method::POST, "/tasks/3/retry", ApiScope::Operate),
            (Method::POST, "/tasks/3/cancel", ApiScope::Operate),
            (Method::POST, "/nodes/n1/reset", ApiScope::Operate),
            (Method::POST, "/events/4/redeliver", ApiScope::Operate),
            (Method::POST, "/workers/w/pause", ApiScope::Operate),
            (Method::POST, "/workers/w/resume", ApiScope::Operate),
            (Method::POST, "/tasks/3/other", ApiScope::Admin),
            (Method::POST, "/workers", ApiScope::Admin),
            (Method::DELETE, "/workers/w", ApiScope::Admin),
            (Method::POST, "/sources", ApiScope::Admin),
            (Method::POST, "/nodes", ApiScope::Admin),
            (Method::DELETE, "/nodes/exec-1", ApiScope::Admin),
            (Method::GET, "/nodes", ApiScope::Read),
            (Method::GET, "/api/v1/keys", ApiScope::Admin),
            (Method::DELETE, "/keys/k", ApiScope::Admin),
            (Method::PUT, "/tasks", ApiScope::Admin),
            (Method::POST, "/mcp", ApiScope::Read),
            (Method::POST, "/api/v1/mcp", ApiScope::Admin),
        ];
        for (method, path, scope) in cases {
            assert_eq!(needed_scope(&method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn secrets_are_43_characters_after_the_prefix_and_differ() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert!(a.starts_with(KEY_PREFIX));
    }
}
