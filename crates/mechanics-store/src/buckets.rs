//! Token buckets that every server on a database shares: one per worker (its `rate_limit`) and
//! one per webhook source. The arithmetic is GCRA (the generic cell rate algorithm): a bucket is
//! one number, the theoretical arrival time (TAT) of its next token, so taking a token is one
//! read-modify-write of one value — one atomic `UPDATE` on PostgreSQL.
//!
//! A task that finds no token is given a *reservation*: the exact time its token will be there,
//! and the bucket moves past it, so every waiting task gets its own future slot and a burst of N
//! tasks is released once each, at the bucket's rate. Maintained crates such as `governor`
//! answer "not until T" without reserving T (every waiting task would come back at the same
//! instant), and keep the state in memory, which several servers cannot share.

use std::collections::HashMap;

/// A bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenRate {
    /// Tokens per second.
    pub per_second: f64,
    /// Tokens available at once.
    pub burst: u32,
}

impl TokenRate {
    /// Time between two tokens, ms.
    pub(crate) fn interval_ms(self) -> f64 {
        1000.0 / self.per_second
    }

    /// How far ahead of its TAT a token may be taken: the burst beyond the first token, ms.
    pub(crate) fn tolerance_ms(self) -> f64 {
        self.interval_ms() * f64::from(self.burst.saturating_sub(1))
    }

    /// The time each of `count` tokens may be used (unix ms, `now` when at once), for a bucket
    /// whose TAT was `tat` before the reservation (`max(tat, now)` already applied).
    pub(crate) fn slots(self, tat: f64, count: u32, now: i64) -> Vec<i64> {
        let (interval, tolerance) = (self.interval_ms(), self.tolerance_ms());
        (0..count)
            .map(|i| {
                let allowed = tat + f64::from(i) * interval - tolerance;
                if allowed <= now as f64 {
                    now
                } else {
                    allowed.ceil() as i64
                }
            })
            .collect()
    }
}

/// Refuses a rate no bucket can have (the specs' validation keeps them out already; this
/// guards the arithmetic).
pub(crate) fn check_rate(rate: TokenRate) -> crate::StoreResult<()> {
    if rate.per_second.is_finite() && rate.per_second > 0.0 && rate.burst >= 1 {
        Ok(())
    } else {
        Err(crate::StoreError::InvalidInput(format!(
            "rate: {} per second with a burst of {} is not a usable bucket",
            rate.per_second, rate.burst
        )))
    }
}

/// How a bucket may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Take `n` tokens, reserving future slots for those not there now (worker buckets: a task
    /// waits for its slot).
    Reserve(u32),
    /// Take one token if it is there now, else nothing (webhook buckets: a delivery is refused
    /// with `Retry-After`).
    IfFree,
}

/// What [`Store::take_tokens`](crate::Store::take_tokens) gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tokens {
    /// The time each taken token may be used, in order (unix ms; `now` when at once).
    Granted(Vec<i64>),
    /// [`Take::IfFree`] found no token: one will be there at this time (unix ms). Nothing taken.
    NotBefore(i64),
}

/// The buckets of a store that no other server shares (SQLite: one server per file), in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryBuckets {
    /// Bucket name → (its rate, its TAT in ms).
    buckets: HashMap<String, (TokenRate, f64)>,
}

/// Buckets held before full ones are dropped; a full bucket (TAT not after now) is the same as
/// a missing one, so dropping it changes nothing.
const MEMORY_BUCKETS_KEPT: usize = 1024;

impl MemoryBuckets {
    pub(crate) fn take(&mut self, bucket: &str, rate: TokenRate, take: Take, now: i64) -> Tokens {
        if self.buckets.len() >= MEMORY_BUCKETS_KEPT {
            self.buckets.retain(|_, (_, tat)| *tat > now as f64);
        }
        let nowf = now as f64;
        let tat = match self.buckets.get(bucket) {
            // A changed limit starts a full bucket.
            Some((stored, tat)) if *stored == rate => tat.max(nowf),
            _ => nowf,
        };
        let count = match take {
            Take::Reserve(n) => n,
            Take::IfFree if tat - rate.tolerance_ms() <= nowf => 1,
            Take::IfFree => return Tokens::NotBefore((tat - rate.tolerance_ms()).ceil() as i64),
        };
        let slots = rate.slots(tat, count, now);
        let next = tat + f64::from(count) * rate.interval_ms();
        self.buckets.insert(bucket.to_owned(), (rate, next));
        Tokens::Granted(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: TokenRate = TokenRate {
        per_second: 2.0,
        burst: 5,
    };

    fn granted(tokens: Tokens) -> Vec<i64> {
        match tokens {
            Tokens::Granted(slots) => slots,
            Tokens::NotBefore(at) => panic!("refused until {at}"),
        }
    }

    #[test]
    fn a_burst_runs_at_once_and_the_rest_get_one_slot_each_at_the_rate() {
        let mut buckets = MemoryBuckets::default();
        let slots = granted(buckets.take("w", RATE, Take::Reserve(9), 10_000));
        assert_eq!(
            slots,
            [
                10_000, 10_000, 10_000, 10_000, 10_000, 10_500, 11_000, 11_500, 12_000
            ]
        );
        // One at a time gives the same slots as a batch.
        let mut one_by_one = MemoryBuckets::default();
        let singles: Vec<i64> = (0..9)
            .flat_map(|_| granted(one_by_one.take("w", RATE, Take::Reserve(1), 10_000)))
            .collect();
        assert_eq!(singles, slots);
        assert_eq!(
            granted(buckets.take("other", RATE, Take::Reserve(1), 10_000)),
            [10_000]
        );
    }

    #[test]
    fn tokens_refill_over_time_up_to_the_burst() {
        let mut buckets = MemoryBuckets::default();
        assert_eq!(
            granted(buckets.take("w", RATE, Take::Reserve(6), 0)),
            [0, 0, 0, 0, 0, 500]
        );
        let later = 60_000;
        assert_eq!(
            granted(buckets.take("w", RATE, Take::Reserve(6), later)),
            [later, later, later, later, later, later + 500]
        );
    }

    #[test]
    fn if_free_takes_nothing_when_empty_and_says_when() {
        let rate = TokenRate {
            per_second: 1.0,
            burst: 2,
        };
        let mut buckets = MemoryBuckets::default();
        for _ in 0..2 {
            assert_eq!(
                buckets.take("gh", rate, Take::IfFree, 0),
                Tokens::Granted(vec![0])
            );
        }
        assert_eq!(
            buckets.take("gh", rate, Take::IfFree, 0),
            Tokens::NotBefore(1000)
        );
        // The refusal took nothing: the token is there at 1000.
        assert_eq!(
            buckets.take("gh", rate, Take::IfFree, 1000),
            Tokens::Granted(vec![1000])
        );
    }

    #[test]
    fn a_changed_rate_starts_a_full_bucket() {
        let mut buckets = MemoryBuckets::default();
        granted(buckets.take("w", RATE, Take::Reserve(20), 0));
        let faster = TokenRate {
            per_second: 10.0,
            burst: 1,
        };
        assert_eq!(
            granted(buckets.take("w", faster, Take::Reserve(2), 0)),
            [0, 100]
        );
    }
}
