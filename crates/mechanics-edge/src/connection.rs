//! One connection's clock: whether a request is in progress, and when the connection must have
//! said something, enforced on the socket itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::errors;
use crate::limits::{EdgeLimits, after};

/// How long a connection waits for a request before it may be evicted to make room.
const EVICTABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in progress since `since`; `head_started` is when the first byte of the next
    /// one arrived.
    Waiting {
        since: Instant,
        head_started: Option<Instant>,
    },
    /// This many requests are being answered (hyper answers one at a time; pipelining may
    /// overlap the end of one with the start of the next).
    Busy(usize),
}

/// Shared by a connection's socket wrapper ([`Watched`]) and its requests ([`RequestGuard`]).
#[derive(Debug)]
pub(crate) struct ConnState {
    phase: Mutex<Phase>,
    requests: AtomicU64,
    /// The connection task, parked in a read while a request was answered: hyper reads before
    /// it writes, so without a wake-up the idle clock would only start at the next byte.
    reader: Mutex<Option<Waker>>,
    /// Rung when the listener is full and this connection, waiting for a request, is the one
    /// that makes room.
    eviction: Notify,
    /// Evicted and closing: not a candidate for another eviction.
    evicting: std::sync::atomic::AtomicBool,
}

impl ConnState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                head_started: None,
            }),
            requests: AtomicU64::new(0),
            reader: Mutex::new(None),
            eviction: Notify::new(),
            evicting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request's head was read and is about to be answered.
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Waiting { .. } => Phase::Busy(1),
        };
        RequestGuard(self.clone())
    }

    /// How long the connection has waited for a request, as an eviction rank (lower goes
    /// first): one that has sent nothing of its next request before one that has, then the
    /// longest waiting; `None` while a request is answered, and for the first
    /// [`EVICTABLE_AFTER`] of a wait — a client just accepted, or just answered, is about to
    /// send its request or read its answer.
    pub(crate) fn waiting_rank(&self) -> Option<(bool, Instant)> {
        if self.evicting.load(Ordering::Relaxed) {
            return None;
        }
        match *self.phase() {
            Phase::Waiting {
                since,
                head_started,
            } if since.elapsed() >= EVICTABLE_AFTER => Some((head_started.is_some(), since)),
            _ => None,
        }
    }

    /// Asks the connection to close if it is still waiting for a request.
    pub(crate) fn evict(&self) {
        self.eviction.notify_one();
    }

    /// Resolves when the connection was evicted while waiting for a request (an eviction that
    /// arrives while a request is answered is ignored: that connection is in use).
    pub(crate) async fn evicted(&self) {
        loop {
            self.eviction.notified().await;
            if self.waiting_rank().is_some() {
                self.evicting.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    fn bytes_arrived(&self) {
        if let Phase::Waiting {
            head_started: head_started @ None,
            ..
        } = &mut *self.phase()
        {
            *head_started = Some(Instant::now());
        }
    }

    /// When the connection is closed unless a request head completes first; `None` while a
    /// request is being answered (its body has its own clock).
    fn read_deadline(&self, limits: &EdgeLimits, reader: &Waker) -> Option<Instant> {
        match *self.phase() {
            Phase::Busy(_) => {
                let mut parked = self.reader.lock().unwrap_or_else(|e| e.into_inner());
                if !parked.as_ref().is_some_and(|w| w.will_wake(reader)) {
                    *parked = Some(reader.clone());
                }
                None
            }
            // A fresh connection must send its first request promptly: an idle or trickling
            // connection is the cheapest attack there is.
            Phase::Waiting { since, .. } if self.requests.load(Ordering::Relaxed) == 0 => {
                Some(after(since, limits.header_timeout))
            }
            Phase::Waiting {
                head_started: Some(started),
                ..
            } => Some(after(started, limits.header_timeout)),
            Phase::Waiting { since, .. } => Some(after(since, limits.idle_timeout)),
        }
    }
}

/// Held while a request is answered; dropping it (when hyper is done with the response body,
/// or the request was abandoned) makes the connection idle again.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let idle = {
            let mut phase = self.0.phase();
            *phase = match *phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Waiting {
                    since: Instant::now(),
                    head_started: None,
                },
            };
            matches!(*phase, Phase::Waiting { .. })
        };
        if idle {
            let parked = self
                .0
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(reader) = parked {
                reader.wake();
            }
        }
    }
}

/// A connection's stream (TCP, or TLS over TCP: the plaintext side, so that the replacement
/// below sees hyper's bytes) that ends itself when its connection overstays: no request head in
/// time, idle too long, or a response its client stopped reading. Also replaces hyper's own
/// answers to malformed first requests (empty `400`, `414`, `431` bodies) with the JSON error
/// shape.
pub(crate) struct Watched<S = TcpStream> {
    stream: S,
    state: Arc<ConnState>,
    limits: EdgeLimits,
    read_timer: Pin<Box<Sleep>>,
    write_blocked_since: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    /// Our JSON answer in place of hyper's, and how much of it was written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Watched<S> {
    pub(crate) fn new(stream: S, state: Arc<ConnState>, limits: EdgeLimits) -> Self {
        let now = Instant::now();
        Self {
            stream,
            state,
            limits,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_blocked_since: None,
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            replacement: None,
        }
    }

    /// The socket, once hyper is done with it.
    pub(crate) fn into_stream(self) -> S {
        self.stream
    }

    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, written)) = &mut self.replacement else {
            return Poll::Ready(Ok(()));
        };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                if let Some(deadline) = this.state.read_deadline(&this.limits, cx.waker()) {
                    if this.read_timer.deadline() != deadline {
                        this.read_timer.as_mut().reset(deadline);
                    }
                    if this.read_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(timed_out(
                            "the client sent no complete request in time",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Before the first request reached a handler, anything hyper writes is its own answer to
        // a request it could not parse; hyper closes the connection after it.
        if this.replacement.is_none() && this.state.requests.load(Ordering::Relaxed) == 0 {
            this.replacement = errors::replace_hyper_answer(buf).map(|bytes| (bytes, 0));
        }
        if this.replacement.is_some() {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.write_blocked_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let since = *this.write_blocked_since.get_or_insert_with(Instant::now);
                let deadline = after(since, this.limits.idle_timeout);
                if this.write_timer.deadline() != deadline {
                    this.write_timer.as_mut().reset(deadline);
                }
                if this.write_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out("the client stopped reading the answer")));
                }
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
