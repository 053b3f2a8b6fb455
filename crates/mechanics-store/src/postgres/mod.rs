//! The PostgreSQL backend: several servers on one database.
//!
//! Why `tokio-postgres` with `deadpool-postgres` rather than `sqlx`: it is the async client the
//! other Rust PostgreSQL stacks are built on, it exposes `LISTEN`/`NOTIFY` messages on the
//! connection (which the wake-up hints need) and caches prepared statements per connection,
//! and it adds no compile-time query checking that would need a database at build time.
//! `deadpool-postgres` is a small, maintained pool for it with timeouts.
//!
//! How several servers share the work (ARCHITECTURE.md, "Several servers on one database"):
//! - claims take due pending tasks with `FOR UPDATE SKIP LOCKED` over the partial index of
//!   pending tasks, so concurrent claimers never wait for each other or take the same task;
//! - completions are fenced by the claim's attempt, as on SQLite;
//! - a write that makes work due sends a `NOTIFY mechanics_work` hint, debounced to one per
//!   [`HINT_DEBOUNCE`] per process and never inside the writing transaction (a `NOTIFY` takes a
//!   database-wide lock at commit); registry changes notify `mechanics_registry` with the new
//!   version inside their transaction (they are rare). Each store listens on a connection of
//!   its own and rings [`Store::remote_changes`];
//! - cron fires, webhook deliveries and tasks per (event, worker) are unique rows, so the same
//!   work offered by several servers is done once;
//! - the token buckets are rows updated by one statement each;
//! - transient failures (connection lost, server restarting, serialization failure, deadlock,
//!   pool exhausted) are retried with backoff for up to [`RETRY_FOR`].

mod rows;
mod schema;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mechanics_proto::api::Instance;
use mechanics_proto::domain::{
    AttemptConsoleLine, ConsoleLine, Event, EventId, LogEntry, LogRecord, NodeSpec, RemoteNode,
    Source, SourceSpec, Task, TaskAttempt, TaskId, TaskState, TaskTrigger, TranspiledModule,
    Worker, WorkerSpec,
};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row, Statement};

use crate::{
    ActivityBucket, DEFAULT_PAGE_SIZE, EventFilter, EventUpdate, Inserted, LogQuery, MAX_PAGE_SIZE,
    NewEvent, NewTask, NextDue, Page, Pruned, Store, StoreError, StoreResult, Take, TaskFilter,
    TokenRate, Tokens, WorkerFailures,
};
use rows::{
    event_columns, log_columns, node_columns, paused_excluded, source_columns, task_columns,
    worker_columns,
};

/// The schema version this build of the PostgreSQL backend writes.
pub const PG_SCHEMA_VERSION: i64 = schema::LATEST_VERSION;

/// Creates or migrates the PostgreSQL database at `url` to schema `version` exactly (at most
/// [`PG_SCHEMA_VERSION`]), without opening a store: migration tests use it to build databases
/// as every earlier release left them.
pub async fn migrate_postgres_to(url: &str, version: i64) -> StoreResult<()> {
    let shown = redact_database_url(url);
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(pg_err(&format!("connecting to {shown}")))?;
    let driver = tokio::spawn(connection);
    let migrated = schema::migrate(&mut client, &shown, version).await;
    drop(client);
    let _ = driver.await;
    migrated
}

/// Connections per store. Statements are short (the longest holds a connection for one claim
/// batch), so this serves the default concurrency with room for the loops and the API.
const POOL_SIZE: usize = 16;
/// How long a statement waits for a free connection before the try counts as failed.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// How long a transient failure is retried before the operation fails.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// At most one work hint per this interval per process.
const HINT_DEBOUNCE: Duration = Duration::from_millis(100);
/// The advisory lock of retention: one server prunes at a time.
const PRUNE_LOCK: i64 = 0x6d65_6368_7072_756e;
/// Notification channels.
const WORK_CHANNEL: &str = "mechanics_work";
const REGISTRY_CHANNEL: &str = "mechanics_registry";

/// A database URL cut where its passwords may be, as the client reads it: the user part ends at
/// the first `@` (even when a `/` or a `?` comes before it), and a `password=` query parameter
/// is one too.
struct UrlParts<'a> {
    scheme: &'a str,
    /// `USER` and `PASSWORD` of `USER[:PASSWORD]@`.
    user: Option<(&'a str, Option<&'a str>)>,
    /// Host, port and database name.
    location: &'a str,
    /// The parameters after `?`, each as `(key, value)`.
    query: Option<Vec<(&'a str, Option<&'a str>)>>,
}

impl<'a> UrlParts<'a> {
    fn of(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let (user, after) = match rest.split_once('@') {
            Some((userinfo, after)) => {
                let user = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                (Some(user), after)
            }
            None => (None, rest),
        };
        let (location, query) = match after.split_once('?') {
            Some((location, query)) => (location, Some(query)),
            None => (after, None),
        };
        let query = query.map(|query| {
            query
                .split('&')
                .map(|parameter| match parameter.split_once('=') {
                    Some((key, value)) => (key, Some(value)),
                    None => (parameter, None),
                })
                .collect()
        });
        Some(Self {
            scheme,
            user,
            location,
            query,
        })
    }

    fn is_password(key: &str) -> bool {
        key.eq_ignore_ascii_case("password")
    }
}

/// `url` with its password, if any, replaced by `***`: the only form of a database URL that
/// may be shown (logs, `config show`, errors).
pub fn redact_database_url(url: &str) -> String {
    let Some(parts) = UrlParts::of(url) else {
        return url.to_owned();
    };
    let mut shown = format!("{}://", parts.scheme);
    match parts.user {
        Some((user, Some(_))) => shown.push_str(&format!("{user}:***@")),
        Some((user, None)) => shown.push_str(&format!("{user}@")),
        None => {}
    }
    shown.push_str(parts.location);
    if let Some(query) = parts.query {
        let parameters: Vec<String> = query
            .into_iter()
            .map(|(key, value)| match value {
                Some(_) if UrlParts::is_password(key) => format!("{key}=***"),
                Some(value) => format!("{key}={value}"),
                None => key.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&parameters.join("&"));
    }
    shown
}

/// The passwords a database URL holds (its user part's and `password=` parameters'), each as
/// written and percent-decoded, none empty: what a redactor must hide besides the URL itself.
pub fn database_url_passwords(url: &str) -> Vec<String> {
    let Some(parts) = UrlParts::of(url) else {
        return Vec::new();
    };
    let mut found: Vec<String> = parts
        .user
        .and_then(|(_, password)| password)
        .into_iter()
        .chain(
            parts
                .query
                .into_iter()
                .flatten()
                .filter(|(key, _)| UrlParts::is_password(key))
                .filter_map(|(_, value)| value),
        )
        .flat_map(|password| {
            let decoded = percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned();
            [password.to_owned(), decoded]
        })
        .filter(|password| !password.is_empty())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Maps a PostgreSQL error to [`StoreError`]: connection loss, a server shutting down or
/// starting, a serialization failure, a deadlock or too many connections are
/// [`StoreError::Busy`] (transient, retried); the rest is [`StoreError::Database`].
pub(crate) fn pg_err(context: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |err| {
        let transient = match err.code() {
            Some(code) => {
                let code = code.code();
                code.starts_with("08")
                    || code.starts_with("57P")
                    || matches!(code, "40001" | "40P01" | "53300" | "55P03")
            }
            None => {
                err.is_closed()
                    || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>())
            }
        };
        let message = match err.as_db_error() {
            Some(db) => db.to_string(),
            None => match std::error::Error::source(&err) {
                Some(source) => format!("{err}: {source}"),
                None => err.to_string(),
            },
        };
        let context = context.to_owned();
        if transient {
            StoreError::Busy { context, message }
        } else {
            StoreError::Database { context, message }
        }
    }
}

fn pool_err(err: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(err) => pg_err("connecting to the database")(err),
        PoolError::Timeout(_) => StoreError::Busy {
            context: "waiting for a database connection".into(),
            message: format!(
                "no connection was free or could be opened within {} s",
                POOL_WAIT.as_secs()
            ),
        },
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Database {
            context: "getting a database connection".into(),
            message: other.to_string(),
        },
    }
}

/// A foreign key violation: the row referred to does not exist.
fn is_missing_reference(err: &tokio_postgres::Error) -> bool {
    err.code()
        .is_some_and(|c| *c == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|err| StoreError::InvalidInput(err.to_string()))
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A pooled connection or a transaction on one: what the statements run on.
pub(super) trait Db: Sync {
    fn statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send;
    fn rows(
        &self,
        statement: &Statement,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send;
    fn exec(
        &self,
        statement: &Statement,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send;
}

impl Db for ClientWrapper {
    fn statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(sql)
    }
    fn rows(
        &self,
        statement: &Statement,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
        tokio_postgres::Client::query(self, statement, params)
    }
    fn exec(
        &self,
        statement: &Statement,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        tokio_postgres::Client::execute(self, statement, params)
    }
}

impl Db for deadpool_postgres::Transaction<'_> {
    fn statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(sql)
    }
    fn rows(
        &self,
        statement: &Statement,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
        tokio_postgres::Transaction::query(self, statement, params)
    }
    fn exec(
        &self,
        statement: &Statement,
        params: &Params<'_>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        tokio_postgres::Transaction::execute(self, statement, params)
    }
}

async fn query(
    db: &impl Db,
    sql: &str,
    params: &Params<'_>,
    context: &str,
) -> StoreResult<Vec<Row>> {
    let statement = db.statement(sql).await.map_err(pg_err(context))?;
    db.rows(&statement, params).await.map_err(pg_err(context))
}

async fn execute(db: &impl Db, sql: &str, params: &Params<'_>, context: &str) -> StoreResult<u64> {
    let statement = db.statement(sql).await.map_err(pg_err(context))?;
    db.exec(&statement, params).await.map_err(pg_err(context))
}

async fn all<T>(
    db: &impl Db,
    sql: &str,
    params: &Params<'_>,
    map: fn(&Row) -> StoreResult<T>,
    context: &str,
) -> StoreResult<Vec<T>> {
    query(db, sql, params, context)
        .await?
        .iter()
        .map(map)
        .collect()
}

async fn opt<T>(
    db: &impl Db,
    sql: &str,
    params: &Params<'_>,
    map: fn(&Row) -> StoreResult<T>,
    context: &str,
) -> StoreResult<Option<T>> {
    query(db, sql, params, context)
        .await?
        .first()
        .map(map)
        .transpose()
}

/// Runs `$body` (an expression that may `.await` and use `?`, with a pooled connection bound to
/// `$db` and `$retried` telling whether an earlier try failed transiently) until it succeeds,
/// fails for good, or [`RETRY_FOR`] has passed.
macro_rules! retrying {
    ($store:expr, |$db:ident, $retried:ident| $body:expr) => {{
        let store = $store;
        store.queries.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + RETRY_FOR;
        let mut delay = Duration::from_millis(20);
        let mut $retried = false;
        loop {
            let result: StoreResult<_> = async {
                #[allow(unused_mut)]
                let mut $db = store.pool.get().await.map_err(pool_err)?;
                $body
            }
            .await;
            match result {
                Err(err) if err.is_transient() && Instant::now() + delay < deadline => {
                    tracing::debug!(error = %err, "a transient database error; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                    $retried = true;
                }
                other => break other,
            }
        }
    }};
}

/// The shared store: one PostgreSQL database, any number of servers.
pub struct PgStore {
    /// The URL without its password.
    display: String,
    pool: Pool,
    /// This process's mark on its notifications, so it ignores its own.
    tag: String,
    queries: AtomicU64,
    commits: AtomicU64,
    registry_version: Arc<AtomicU64>,
    remote_changes: Arc<Notify>,
    hints: Arc<Hints>,
    listener: tokio::task::AbortHandle,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`), trying
    /// again with backoff until `connect_timeout` has passed, migrates it to
    /// [`PG_SCHEMA_VERSION`] (one server at a time), and starts listening for other servers'
    /// hints. Errors show the URL without its password.
    pub async fn connect(url: &str, connect_timeout: Duration) -> StoreResult<Self> {
        let shown = redact_database_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|err| {
            StoreError::InvalidInput(format!("the database URL {shown} is not valid: {err}"))
        })?;
        config.application_name("mechanics");
        config.connect_timeout(
            connect_timeout.clamp(Duration::from_secs(1), Duration::from_secs(10)),
        );
        let started = Instant::now();
        let deadline = started + connect_timeout;
        let mut delay = Duration::from_millis(100);
        let (mut client, connection) = loop {
            match config.connect(NoTls).await {
                Ok(connected) => break connected,
                Err(err) if Instant::now() < deadline => {
                    // Debug only: `mechanics serve` promises one line when it gives up.
                    tracing::debug!(database = %shown, error = %pg_err("connecting")(err), "the database is not reachable yet; trying again");
                    tokio::time::sleep(delay.min(deadline - Instant::now())).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    let message = match pg_err("")(err) {
                        StoreError::Busy { message, .. } | StoreError::Database { message, .. } => {
                            message
                        }
                        other => other.to_string(),
                    };
                    return Err(StoreError::Database {
                        context: format!(
                            "connecting to {shown} (tried for {:.1} s)",
                            started.elapsed().as_secs_f64()
                        ),
                        message,
                    });
                }
            }
        };
        let driver = tokio::spawn(connection);
        let migrated = schema::migrate(&mut client, &shown, schema::LATEST_VERSION).await;
        drop(client);
        let _ = driver.await;
        migrated?;

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|err| StoreError::Database {
                context: "creating the connection pool".into(),
                message: err.to_string(),
            })?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let registry_version = Arc::new(AtomicU64::new(0));
        let remote_changes = Arc::new(Notify::new());
        let (listening, heard_from) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listen(
            config,
            tag.clone(),
            registry_version.clone(),
            remote_changes.clone(),
            listening,
        ))
        .abort_handle();
        // Connected means the other servers' hints are heard from now on (the poll covers them
        // if the listener is slow to come up).
        if tokio::time::timeout(POOL_WAIT, heard_from).await.is_err() {
            tracing::warn!(database = %shown, "not listening for other servers' hints yet; polling covers them meanwhile");
        }
        let store = Self {
            display: shown,
            pool: pool.clone(),
            tag: tag.clone(),
            queries: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            registry_version,
            remote_changes,
            hints: Arc::new(Hints {
                pool,
                tag,
                last_sent: Mutex::new(None),
            }),
            listener,
        };
        store.refresh_registry_version().await?;
        Ok(store)
    }

    /// The database URL without its password.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    fn saw_registry_version(&self, version: u64) {
        self.registry_version.fetch_max(version, Ordering::Relaxed);
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends the debounced work hints of one store.
struct Hints {
    pool: Pool,
    tag: String,
    /// When the last hint was sent, or the next one is scheduled to be (in the future): hints
    /// are at least [`HINT_DEBOUNCE`] apart.
    last_sent: Mutex<Option<Instant>>,
}

impl Hints {
    /// Tells the other servers that work may be due: now, or at the end of the debounce window
    /// if a hint went out less than [`HINT_DEBOUNCE`] ago (one hint then covers every write of
    /// the window).
    fn work_made_due(self: &Arc<Self>) {
        let now = Instant::now();
        let send_at = {
            let mut last = self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
            match *last {
                // A hint is already scheduled for the end of the window: it covers this write.
                Some(at) if at > now => return,
                Some(at) if now < at + HINT_DEBOUNCE => {
                    // The window's hint went out; one more at its end covers this write.
                    *last = Some(at + HINT_DEBOUNCE);
                    at + HINT_DEBOUNCE
                }
                _ => {
                    *last = Some(now);
                    now
                }
            }
        };
        let hints = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(send_at).await;
            hints.send().await;
        });
    }

    async fn send(&self) {
        // A lost hint only delays work until the other servers' next poll.
        let sent = async {
            let db = self.pool.get().await.map_err(pool_err)?;
            execute(
                &*db,
                "SELECT pg_notify('mechanics_work', $1)",
                &[&self.tag],
                "sending a work hint",
            )
            .await
        }
        .await;
        if let Err(err) = sent {
            tracing::debug!(error = %err, "a work hint was not sent; the other servers' poll covers it");
        }
    }
}

/// Listens for the other servers' hints on a connection of its own, reconnecting when it is
/// lost. After a reconnection it rings `changes` once: hints may have been missed meanwhile.
async fn listen(
    config: tokio_postgres::Config,
    tag: String,
    registry_version: Arc<AtomicU64>,
    changes: Arc<Notify>,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut reconnected = false;
    let mut listening = Some(listening);
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                use futures_lite::StreamExt;
                let mut messages =
                    futures_lite::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let AsyncMessage::Notification(notification) = message
                        && sender.send(notification).is_err()
                    {
                        return;
                    }
                }
            });
            let listening_now = client
                .batch_execute(&format!("LISTEN {WORK_CHANNEL}; LISTEN {REGISTRY_CHANNEL}"))
                .await;
            if listening_now.is_ok() {
                if let Some(listening) = listening.take() {
                    let _ = listening.send(());
                }
                if reconnected {
                    if let Ok(row) = client
                        .query_one("SELECT value FROM meta WHERE key = 'registry_version'", &[])
                        .await
                    {
                        let version: i64 = row.get(0);
                        registry_version.fetch_max(version as u64, Ordering::Relaxed);
                    }
                    changes.notify_one();
                }
                while let Some(notification) = received.recv().await {
                    let payload = notification.payload();
                    let (sender_tag, version) = payload.split_once(':').unwrap_or((payload, ""));
                    if sender_tag == tag {
                        continue;
                    }
                    if let Ok(version) = version.parse::<u64>() {
                        registry_version.fetch_max(version, Ordering::Relaxed);
                    }
                    changes.notify_one();
                }
            }
            drop(client);
            driver.abort();
            tracing::warn!(
                "the connection listening for other servers' hints was lost; reconnecting"
            );
        }
        reconnected = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// After `retrying!`, which it uses (macros are in scope from their definition on).
mod store;
