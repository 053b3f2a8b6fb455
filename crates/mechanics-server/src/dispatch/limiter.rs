//! Per-worker token buckets that hand out *reservations*: a task that finds no token is told the
//! exact time its token will be there, and is re-queued until then. Every waiting task gets its
//! own future slot, so a burst of N tasks is released once each, at the bucket's rate, instead of
//! bouncing between the database and the dispatcher.
//!
//! This is GCRA (the generic cell rate algorithm) with reservations. Maintained crates such as
//! `governor` answer "not until T" without reserving T, which would let every waiting task
//! come back at the same instant.

use std::collections::HashMap;

/// A bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second.
    pub per_second: f64,
    /// Tokens available at once.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: Rate,
    /// Theoretical arrival time of the next token, unix ms (GCRA's TAT).
    next_free_ms: f64,
    last_used_ms: i64,
}

/// The buckets of every worker that dispatched recently.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// Takes a token of `worker`'s bucket at `now_ms`, or reserves the next free one: returns the
    /// time (unix ms) from which the caller may run, `now_ms` when a token was free.
    pub fn reserve(&mut self, worker: &str, rate: Rate, now_ms: i64) -> i64 {
        let interval = 1000.0 / rate.per_second;
        let tolerance = interval * f64::from(rate.burst.saturating_sub(1));
        let now = now_ms as f64;
        let bucket = self.buckets.entry(worker.to_owned()).or_insert(Bucket {
            rate,
            next_free_ms: now,
            last_used_ms: now_ms,
        });
        if bucket.rate != rate {
            // The worker's limit changed: start its new bucket full.
            *bucket = Bucket {
                rate,
                next_free_ms: now,
                last_used_ms: now_ms,
            };
        }
        let tat = bucket.next_free_ms.max(now);
        let allowed_at = tat - tolerance;
        bucket.next_free_ms = tat + interval;
        bucket.last_used_ms = now_ms;
        if allowed_at <= now {
            now_ms
        } else {
            allowed_at.ceil() as i64
        }
    }

    /// Drops buckets unused since `idle_since_ms` (they are full again by then anyway).
    pub fn forget_idle(&mut self, idle_since_ms: i64) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, b| b.last_used_ms >= idle_since_ms);
        before - self.buckets.len()
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 2.0,
        burst: 5,
    };

    #[test]
    fn a_burst_runs_at_once_and_the_rest_get_one_slot_each_at_the_rate() {
        let mut limiter = RateLimiter::default();
        let slots: Vec<i64> = (0..9).map(|_| limiter.reserve("w", RATE, 10_000)).collect();
        assert_eq!(
            slots,
            [
                10_000, 10_000, 10_000, 10_000, 10_000, 10_500, 11_000, 11_500, 12_000
            ]
        );
        // Another worker has its own bucket.
        assert_eq!(limiter.reserve("other", RATE, 10_000), 10_000);
    }

    #[test]
    fn tokens_refill_over_time_up_to_the_burst() {
        let mut limiter = RateLimiter::default();
        for _ in 0..5 {
            assert_eq!(limiter.reserve("w", RATE, 0), 0);
        }
        assert_eq!(limiter.reserve("w", RATE, 0), 500);
        // Long idle: the bucket is full again, but never more than the burst.
        let later = 60_000;
        let slots: Vec<i64> = (0..6).map(|_| limiter.reserve("w", RATE, later)).collect();
        assert_eq!(slots, [later, later, later, later, later, later + 500]);
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let mut limiter = RateLimiter::default();
        limiter.reserve("old", RATE, 0);
        limiter.reserve("new", RATE, 600_000);
        assert_eq!(limiter.forget_idle(300_000), 1);
        assert_eq!(limiter.len(), 1);
    }
}
