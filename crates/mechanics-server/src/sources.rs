//! Webhook sources: the API under `/api/v1/sources`, an in-memory cache of the registered
//! sources for the ingest path, and the resolution of a source's secret and token references.
//!
//! A source stores only *where* its secret and token are (`secret_env`, `secret_file`, ...). The
//! values are read into memory off the async threads — when the source is added or changed, at
//! startup, every minute and on SIGHUP — so rotating a secret needs no re-registration, a
//! delivery never waits on a file, and a value never reaches the database, an API answer, a log
//! line or an error message (invariant 5): errors name the variable or file, never what it holds.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mechanics_proto::api::SourceList;
use mechanics_proto::domain::{Source, SourceSpec};
use mechanics_store::Store;
use tokio::sync::{Mutex, Notify, RwLock};

use crate::api::{ApiResult, Failure, parse_body};
use crate::{Shared, TraceLog};

/// The routes under `/api/v1/sources`, merged into the API router (and so behind its
/// authentication).
pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<Shared>> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(list_sources, add_source))
        .routes(utoipa_axum::routes!(show_source, delete_source))
}

#[utoipa::path(post, path = "/sources", tag = "sources", operation_id = "add_source", summary = "Add or replace a webhook source", request_body = SourceSpec, responses((status = 201, description = "Added", body = Source), (status = 200, description = "Replaced", body = Source)))]
async fn add_source(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Source>)> {
    let spec: SourceSpec = parse_body(body)?;
    spec.validate()
        .map_err(|err| Failure::invalid_spec("source", err))?;
    refuse_unreadable_references(&spec).await?;
    let now = shared.clock.now_ms();
    let source = shared.store.upsert_source(spec, now).await?;
    // Read before the answer, so the first delivery finds the secret in memory.
    shared.integrations.sources.prime().await;
    let status = if source.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(source)))
}

/// `400` when the server cannot read the source's secret or token now: a variable not set in
/// its environment, a file missing, empty or unreadable, a FIFO, a device, a directory or an
/// oversized file. The message names the variable or file, never what it holds. Found here,
/// the mistake is the author's to fix at once, not a `503` at the first delivery.
async fn refuse_unreadable_references(spec: &SourceSpec) -> ApiResult<()> {
    let spec = spec.clone();
    let checked = tokio::task::spawn_blocking(move || {
        read_webhook_secret(&spec)?;
        token(&spec).map(|_| ())
    })
    .await;
    match checked {
        Ok(result) => {
            result.map_err(|message| Failure::bad_request(format!("invalid source: {message}")))
        }
        Err(_) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "checking the source's secret and token failed",
        )),
    }
}

#[utoipa::path(get, path = "/sources", tag = "sources", operation_id = "list_sources", summary = "The webhook sources", responses((status = 200, description = "Every source", body = SourceList)))]
async fn list_sources(State(shared): State<Arc<Shared>>) -> ApiResult<axum::Json<SourceList>> {
    Ok(axum::Json(SourceList {
        sources: shared.store.list_sources().await?,
    }))
}

#[utoipa::path(get, path = "/sources/{name}", tag = "sources", operation_id = "show_source", summary = "A webhook source", params(("name" = String, Path, description = "The source's name")), responses((status = 200, description = "The source", body = Source)))]
async fn show_source(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Source>> {
    match shared.store.get_source(&name).await? {
        Some(source) => Ok(axum::Json(source)),
        None => Err(Failure::not_found(format!(
            "no source named {}",
            crate::api::quote(&name)
        ))),
    }
}

#[utoipa::path(delete, path = "/sources/{name}", tag = "sources", operation_id = "delete_source", summary = "Remove a webhook source", params(("name" = String, Path, description = "The source's name")), responses((status = 204, description = "Removed")))]
async fn delete_source(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if shared.store.delete_source(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Failure::not_found(format!(
            "no source named {}",
            crate::api::quote(&name)
        )))
    }
}

/// A registered source with its secret and token as they were last resolved.
#[derive(Debug)]
pub(crate) struct CachedSource {
    /// The source as stored.
    pub(crate) source: Source,
    /// The webhook secret, or why it is not available (the message names the reference).
    pub(crate) secret: Result<Vec<u8>, String>,
    /// The write-back token (`None`: none configured), or why it is not available.
    pub(crate) token: Result<Option<String>, String>,
}

impl CachedSource {
    /// Resolves `source`'s references now. Blocking: reads environment variables and files.
    fn resolve(source: Source) -> Self {
        let secret = read_webhook_secret(&source.spec);
        let token = token(&source.spec);
        Self {
            source,
            secret,
            token,
        }
    }

    /// `source` before its files were read: deliveries to it are answered `503` meanwhile.
    fn unread(source: Source) -> Self {
        let why = format!(
            "the secret of the source {:?} has not been read yet",
            source.spec.name
        );
        Self {
            source,
            secret: Err(why.clone()),
            token: Err(why),
        }
    }

    /// Whether this is the stored version `source`: a source removed and added again starts
    /// at revision 1 again, with a new `created_at`.
    fn is_version(&self, source: &Source) -> bool {
        (self.source.created_at, self.source.revision) == (source.created_at, source.revision)
    }
}

/// Sources by name.
type Sources = Arc<HashMap<String, Arc<CachedSource>>>;

/// How long the reads of one round may take before they are reported as stuck (a file on a hung
/// mount); a stuck read is not started again until it ends.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// How often every source's secret and token are read again, so a rotated file is picked up.
pub(crate) const SECRET_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// The registered sources with their resolved secrets, cached and reloaded when the store's
/// registry version moves (every source change bumps it), so a webhook costs no query to find
/// its source and never reads a file.
///
/// Secrets and tokens are read on the blocking pool, never under the cache's lock: when the API
/// adds or changes a source (before it answers), at startup, every [`SECRET_REFRESH_INTERVAL`]
/// and on SIGHUP, and in the background for a change another process made. Each value joins the
/// redactor as soon as it is read. A read only replaces the entry of the stored version it was
/// made for, so a removed or newer source is never overwritten by an older read.
pub(crate) struct SourceCache {
    store: Arc<dyn Store>,
    trace: Arc<TraceLog>,
    cache: RwLock<(Option<u64>, Sources)>,
    /// One reload of the list at a time.
    reloading: Mutex<()>,
    /// Sources whose files are being read now: a read that hangs is not started again.
    reading: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl SourceCache {
    pub(crate) fn new(store: Arc<dyn Store>, trace: Arc<TraceLog>) -> Self {
        Self {
            store,
            trace,
            cache: RwLock::new((None, Arc::new(HashMap::new()))),
            reloading: Mutex::new(()),
            reading: Arc::default(),
        }
    }

    /// The source called `name`, as of the current registry version. Sources new to this
    /// cache are read in the background; until then they answer as not read yet.
    pub(crate) async fn get(self: &Arc<Self>, name: &str) -> Option<Arc<CachedSource>> {
        let version = self.store.registry_version();
        {
            let cache = self.cache.read().await;
            if cache.0 == Some(version) {
                return cache.1.get(name).cloned();
            }
        }
        let unread = self.reload(version).await;
        if !unread.is_empty() {
            let cache = self.clone();
            tokio::spawn(async move { cache.read_and_install(unread).await });
        }
        self.cache.read().await.1.get(name).cloned()
    }

    /// Brings the cache to the current registry version and reads, before returning, the
    /// secrets of the sources new to it: the API calls it after adding or changing a source so
    /// that the first delivery finds its secret; startup calls it before serving.
    pub(crate) async fn prime(&self) {
        let unread = self.reload(self.store.registry_version()).await;
        self.read_and_install(unread).await;
    }

    /// Reloads the list for `version`: an unchanged source keeps its entry, a new or changed one
    /// gets an unread entry; those are returned, for their files to be read.
    async fn reload(&self, version: u64) -> Vec<Source> {
        let _one = self.reloading.lock().await;
        let previous = {
            let cache = self.cache.read().await;
            if cache.0 == Some(version) {
                return Vec::new();
            }
            cache.1.clone()
        };
        let sources = match self.store.list_sources().await {
            Ok(sources) => sources,
            Err(err) => {
                tracing::error!(error = %err, "reloading the sources failed; using the last list");
                return Vec::new();
            }
        };
        let mut map = HashMap::with_capacity(sources.len());
        let mut unread = Vec::new();
        for source in sources {
            let name = source.spec.name.clone();
            match previous.get(&name) {
                Some(cached) if cached.is_version(&source) => {
                    map.insert(name, cached.clone());
                }
                _ => {
                    map.insert(name, Arc::new(CachedSource::unread(source.clone())));
                    unread.push(source);
                }
            }
        }
        *self.cache.write().await = (Some(version), Arc::new(map));
        unread
    }

    /// Reads every source's secret and token again (a rotated file, a changed variable).
    pub(crate) async fn refresh(&self) {
        let current = self.cache.read().await.1.clone();
        let sources = current.values().map(|c| c.source.clone()).collect();
        self.read_and_install(sources).await;
    }

    /// Reads each of `sources` on its own blocking task and installs what was read by
    /// [`RESOLVE_WAIT`]; a read still running from an earlier round is not started again.
    async fn read_and_install(&self, sources: Vec<Source>) {
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        let mut reads = Vec::new();
        for source in sources {
            let name = source.spec.name.clone();
            if !lock(&self.reading).insert(name.clone()) {
                tracing::warn!(source = %name, "the source's secret is still being read since an earlier round");
                continue;
            }
            let reading = self.reading.clone();
            let done = name.clone();
            let read = tokio::task::spawn_blocking(move || {
                let cached = CachedSource::resolve(source);
                lock(&reading).remove(&done);
                cached
            });
            reads.push((name, read));
        }
        for (name, read) in reads {
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(cached)) => {
                    self.learn(&cached);
                    self.install(cached).await;
                }
                _ => tracing::error!(
                    source = %name,
                    "reading the source's secret takes longer than {RESOLVE_WAIT:?} (a hung file \
                     system?); its last value stays in use, and it is read again once the read ends"
                ),
            }
        }
    }

    /// Puts `cached` in place of the entry of the same stored version, if there still is one.
    async fn install(&self, cached: CachedSource) {
        let mut cache = self.cache.write().await;
        let name = cached.source.spec.name.clone();
        if cache
            .1
            .get(&name)
            .is_some_and(|c| c.is_version(&cached.source))
        {
            let mut map = (*cache.1).clone();
            map.insert(name, Arc::new(cached));
            cache.1 = Arc::new(map);
        }
    }

    /// Redacts a resolved secret and token from now on, and says what could not be resolved.
    fn learn(&self, cached: &CachedSource) {
        if let Ok(secret) = &cached.secret {
            redact_secret(&self.trace, secret);
        }
        if let Ok(Some(token)) = &cached.token {
            redact_secret(&self.trace, token.as_bytes());
        }
        for problem in [cached.secret.as_ref().err(), cached.token.as_ref().err()]
            .into_iter()
            .flatten()
        {
            tracing::warn!(source = %cached.source.spec.name, "{problem}");
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a resolved secret or token with the redactor (a Standard Webhooks `whsec_` secret
/// with and without its prefix). A value that is not text cannot appear in text.
fn redact_secret(trace: &TraceLog, secret: &[u8]) {
    if let Ok(text) = std::str::from_utf8(secret) {
        let redactor = trace.redactor();
        redactor.add_secret(text);
        if let Some(key) = text.trim().strip_prefix("whsec_") {
            redactor.add_secret(key);
        }
    }
}

/// Reloads every source's secret and token every [`SECRET_REFRESH_INTERVAL`], and when `now`
/// is rung (SIGHUP).
pub(crate) async fn refresh_loop(
    sources: Arc<SourceCache>,
    now: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(SECRET_REFRESH_INTERVAL) => {}
            () = now.notified() => tracing::info!("reading the sources' secrets again"),
        }
        sources.refresh().await;
    }
}

/// The source's webhook secret, read from its environment variable or file now, as the server
/// reads it (also by `mechanics webhook send`, in its own environment). The error names the
/// reference, never a value.
pub fn read_webhook_secret(spec: &SourceSpec) -> Result<Vec<u8>, String> {
    resolve(
        "secret",
        spec.secret_env.as_deref(),
        spec.secret_file.as_deref(),
    )?
    .ok_or_else(|| format!("the source {:?} has no secret configured", spec.name))
}

/// The source's write-back token, if it has one configured.
fn token(spec: &SourceSpec) -> Result<Option<String>, String> {
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
                "the environment variable {name} that holds the source's {what} is not set"
            )),
        };
    }
    if let Some(path) = file {
        return match crate::files::read_secret(std::path::Path::new(path)) {
            Ok(Some(bytes)) => Ok(Some(bytes)),
            Ok(None) => Err(format!(
                "the file {path} that holds the source's {what} is empty"
            )),
            Err(err) => Err(format!("the file that holds the source's {what}: {err}")),
        };
    }
    Ok(None)
}
