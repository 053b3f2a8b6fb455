//! The server's clock: unix milliseconds for the store, advanced by Tokio's clock, so tests with
//! paused time move the whole server (backoff, leases, rate limits) without sleeping.

use tokio::time::Instant;

/// Unix milliseconds that advance with Tokio's clock from the moment the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix_ms: i64,
    base: Instant,
}

impl Clock {
    /// A clock reading the system time now.
    pub fn system() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self::starting_at(unix_ms)
    }

    /// A clock reading `unix_ms` now.
    pub fn starting_at(unix_ms: i64) -> Self {
        Self {
            base_unix_ms: unix_ms,
            base: Instant::now(),
        }
    }

    /// The current time in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_unix_ms.saturating_add(elapsed)
    }

    /// The Tokio instant at `unix_ms` (now, if it is in the past).
    pub fn instant_at(&self, unix_ms: i64) -> Instant {
        let ahead = unix_ms.saturating_sub(self.now_ms()).max(0);
        Instant::now() + std::time::Duration::from_millis(ahead.unsigned_abs())
    }
}
