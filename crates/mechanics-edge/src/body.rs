//! Request bodies that must keep arriving, and response bodies that mark the end of a request.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::connection::RequestGuard;
use crate::limits::{EdgeLimits, after};

/// Why a request body was cut off: it arrived slower than the listener's minimum rate, or
/// paused for too long. Handlers find it in the source chain of a body error
/// ([`is_body_too_slow`]) and answer `408`.
#[derive(Debug)]
pub struct BodyTooSlow {
    received: u64,
    min_rate: u64,
}

impl fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body arrived too slowly ({} bytes so far; at least {} bytes per second \
             are needed, without long pauses)",
            self.received, self.min_rate
        )
    }
}

impl Error for BodyTooSlow {}

/// Whether `err`, or an error it was caused by, is a [`BodyTooSlow`].
pub fn is_body_too_slow(err: &(dyn Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.is::<BodyTooSlow>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// A request body metered against [`EdgeLimits::min_body_rate`].
///
/// The clock starts when the handler first asks for the body, so a handler that refuses a
/// request from its headers never waits for the body at all. From then on the bytes must keep
/// pace with the minimum rate (after a grace of `header_timeout`), and no pause between two
/// pieces may last longer than `header_timeout`: a sender that sends all but the last byte of
/// its body and waits is cut off as surely as one that trickles a byte at a time.
pub(crate) struct MeteredBody<B> {
    inner: B,
    limits: EdgeLimits,
    started: Option<Instant>,
    last_data: Option<Instant>,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl<B> MeteredBody<B> {
    pub(crate) fn new(inner: B, limits: EdgeLimits) -> Self {
        Self {
            inner,
            limits,
            started: None,
            last_data: None,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }

    /// The time by which more of the body must have arrived.
    fn deadline(&self, started: Instant) -> Instant {
        // A rate of 0 sets no pace, only the pause limit.
        let paced = self
            .received
            .checked_div(self.limits.min_body_rate)
            .map_or(std::time::Duration::MAX, std::time::Duration::from_secs);
        let pace_deadline = after(after(started, self.limits.header_timeout), paced);
        let pause_deadline = after(
            self.last_data.unwrap_or(started),
            self.limits.header_timeout,
        );
        pace_deadline.min(pause_deadline)
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.last_data = Some(Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline(started);
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow {
                        received: this.received,
                        min_rate: this.limits.min_body_rate,
                    }))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's [`RequestGuard`]: the request ends, and the
/// connection counts as idle again, when hyper is done with the body.
pub(crate) struct GuardedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> GuardedBody<B> {
    pub(crate) fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
