//! `mechanics-edge`: the HTTP edge that every Mechanics listener serves through — the
//! coordinator's API and webhooks, and an executor node's job service.
//!
//! It exists so that nobody who can reach a port can exhaust the process: connections are
//! counted and capped below the descriptor limit ([`EdgeLimits::max_connections`]), and at the
//! cap a connection that only waits makes room for a new one; a connection must deliver its
//! request head within [`EdgeLimits::header_timeout`], may idle between requests for
//! [`EdgeLimits::idle_timeout`], and must send its body at [`EdgeLimits::min_body_rate`];
//! accept errors (a full descriptor table) back off instead of spinning; and the requests hyper
//! refuses before any handler sees them (a huge URI or head, garbage) are answered in the JSON
//! error shape like every other refusal.
//!
//! It must not know routes, authentication, tasks or nodes; must not buffer a body (a body is
//! passed to the handler as it arrives, metered); and never prints.

mod body;
mod connection;
mod errors;
mod limits;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

pub use body::{BodyTooSlow, is_body_too_slow};
pub use limits::{EdgeLimits, MAX_HEADER_BYTES, MAX_URI_BYTES, raise_open_files_limit};

use body::{GuardedBody, MeteredBody};
use connection::{ConnState, Watched};

/// Serves `app` on `listener` under `limits` until `shutdown` resolves; then stops accepting,
/// lets the requests in progress finish (for up to [`SHUTDOWN_GRACE`]; those still running
/// then are dropped), closes idle connections, and returns when every connection is closed.
///
/// Handlers can take [`ConnectInfo<SocketAddr>`] to learn the peer's address.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, app, limits, None, shutdown).await;
}

/// [`serve`] over TLS: each connection first completes a TLS handshake under `tls` (within
/// [`EdgeLimits::header_timeout`]; a client that fails it or is too slow is dropped), then is
/// served and limited exactly as a plaintext one, on the decrypted stream.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_with(listener, app, limits, Some(acceptor), shutdown).await;
}

async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let open = Arc::new(OpenConnections::default());
    let (stopping, stop_rx) = watch::channel(false);
    let (abandoning, abandon_rx) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    let pause = accept_errors.failed(&err);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        accept_errors.succeeded();
        // At the limit, the connection that has waited longest for a request makes room for the
        // one just accepted; with every connection busy, it waits for a slot (and the ones
        // behind it in the kernel's backlog). Evicting only for a connection in hand keeps the
        // idle ones open while nobody else wants in.
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break Some(slot);
            }
            open.evict_longest_waiting();
            tokio::select! {
                () = &mut shutdown => break None,
                slot = slots.clone().acquire_owned() => break slot.ok(),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        };
        let Some(slot) = slot else { break };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop_rx = stop_rx.clone();
        let mut abandon_rx = abandon_rx.clone();
        let state = ConnState::new();
        let registered = open.register(state.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let abandoned = async move {
                let _ = abandon_rx.wait_for(|abandon| *abandon).await;
            };
            let connection = Connection {
                peer,
                state,
                app,
                limits,
                stop: stop_rx,
                registered,
            };
            tokio::select! {
                () = connection.serve(stream, tls) => {}
                () = abandoned => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection gives its slot back when it ends; after the grace, by force.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running {SHUTDOWN_GRACE:?} after shutdown began are dropped"
        );
        let _ = abandoning.send(true);
        let _ = slots.acquire_many(all).await;
    }
}

/// How long an evicted connection may take to send what is left of its last answer.
const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// How long shutdown waits for requests in progress (a body still arriving, a slow answer).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// One accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    state: Arc<ConnState>,
    app: Router,
    limits: EdgeLimits,
    stop: watch::Receiver<bool>,
    /// Dropped once the connection is closing: it is then no longer one to evict.
    registered: Registered,
}

impl Connection {
    /// Serves the connection (after a TLS handshake, with `tls`), then drains it ([`linger`]).
    async fn serve(self, stream: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let Some(acceptor) = tls else {
            if let Some(stream) = self.http(stream).await {
                linger(stream).await;
            }
            return;
        };
        let peer = self.peer;
        let handshake =
            tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream)).await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not completed in time");
                return;
            }
        };
        if let Some(stream) = self.http(stream).await {
            linger(stream).await;
        }
    }

    /// HTTP on `stream` until it closes or, after shutdown began, its last request is answered;
    /// the stream, when it is to be drained before it is closed ([`linger`]).
    async fn http<S>(self, stream: S) -> Option<S>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            state,
            app,
            limits,
            stop,
            registered,
        } = self;
        let stream = serve_http(stream, peer, state, app, limits, stop).await;
        drop(registered);
        stream
    }
}

/// One connection's HTTP, until it closes or, after shutdown began, its last request is
/// answered; the stream, when it is to be drained before it is closed ([`linger`]).
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<ConnState>,
    app: Router,
    limits: EdgeLimits,
    mut stop: watch::Receiver<bool>,
) -> Option<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let evicted = state.clone();
    let io = TokioIo::new(Watched::new(stream, state.clone(), limits));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let guard = state.request_started();
        let mut app = app.clone();
        // Boxed so the connection is `Unpin` and its socket can be taken back for lingering.
        Box::pin(async move {
            if let Some(refusal) = errors::refuse_oversized_head(&request) {
                return Ok::<_, Infallible>(refusal.map(|b| Body::new(GuardedBody::new(b, guard))));
            }
            let mut request = request.map(|incoming| Body::new(MeteredBody::new(incoming, limits)));
            request.extensions_mut().insert(ConnectInfo(peer));
            let response: Response<Body> =
                match tower_service::Service::call(&mut app, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
            Ok(response.map(|b| Body::new(GuardedBody::new(b, guard))))
        })
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The socket wrapper keeps the time (header, idle and write timeouts); hyper's own header
    // timer would also cut kept-alive connections at the header timeout.
    builder
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES + MAX_URI_BYTES + 16 * 1024);
    let mut connection = builder.serve_connection(io, service);
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => result,
        () = evicted.evicted() => {
            tracing::debug!(%peer, "connection closed to make room for a new one");
            // Gracefully, so that the end of an answer still buffered is sent first; a client
            // in the middle of a head gets a moment, not its full header timeout.
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            let flushed = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx));
            let _ = tokio::time::timeout(EVICTION_GRACE, flushed).await;
            return None;
        }
        () = stopping => {
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await
        }
    };
    if let Err(err) = &result {
        tracing::debug!(%peer, error = %err, "connection ended");
        // A connection that overstayed a timeout is closed at once; one refused for what it
        // sent (a head hyper could not parse) is drained like any other, so its client reads
        // the answer.
        if timed_out(err) {
            return None;
        }
    }
    Some(connection.into_parts().io.into_inner().into_stream())
}

/// Whether `err` comes from one of the socket's timeouts.
fn timed_out(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}

/// The connections open now, so that a full listener can close one that is only waiting.
#[derive(Debug, Default)]
struct OpenConnections {
    next_id: std::sync::atomic::AtomicU64,
    by_id: std::sync::Mutex<std::collections::HashMap<u64, Arc<ConnState>>>,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<ConnState>>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, state: Arc<ConnState>) -> Registered {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, state);
        Registered {
            open: self.clone(),
            id,
        }
    }

    /// Evicts the connection that has waited longest for a request, preferring one that has
    /// sent nothing of its next one: a client that is being answered is never cut off to make
    /// room.
    fn evict_longest_waiting(&self) {
        let longest = self
            .lock()
            .values()
            .filter_map(|state| state.waiting_rank().map(|rank| (rank, state.clone())))
            .min_by_key(|(rank, _)| *rank);
        if let Some((_, state)) = longest {
            state.evict();
        }
    }
}

/// Removes its connection from [`OpenConnections`] when dropped.
struct Registered {
    open: Arc<OpenConnections>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

/// How long, and for how many bytes, a connection is drained after its last answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// Closes a connection whose client may still be sending (a body refused from its headers):
/// the answer is followed by a FIN, then what the client still sends is read and dropped for a
/// little while. Closing at once with unread bytes would send a reset, and the client could
/// lose the answer (a `413`, a `401`) it was meant to read.
async fn linger<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    let mut buf = [0u8; 8192];
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Accept failures: a pause that doubles from 10 ms to 1 s while they last, and one log line a
/// second at most, so a full descriptor table neither spins a core nor floods the log.
#[derive(Debug, Default)]
struct AcceptErrors {
    pause: Option<Duration>,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, err: &std::io::Error) -> Duration {
        let pause = self.pause.map_or(Duration::from_millis(10), |p| {
            (p * 2).min(Duration::from_secs(1))
        });
        self.pause = Some(pause);
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            let hint = if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                "; the process is out of file descriptors: lower --max-connections or raise the \
                 descriptor limit (ulimit -n)"
            } else {
                ""
            };
            tracing::warn!(error = %err, failures = self.unlogged, "accepting connections failed{hint}");
            self.last_logged = Some(now);
            self.unlogged = 0;
        }
        pause
    }

    fn succeeded(&mut self) {
        self.pause = None;
    }
}
