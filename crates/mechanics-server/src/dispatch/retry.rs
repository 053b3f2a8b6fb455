//! When a failed attempt is tried again (DESIGN §3): transport failures back off
//! `base_delay × 2^(n−1)`, capped at `max_delay`, with jitter, until `max_retries` retries have
//! been spent; then the task is dead. Everything else is final at once, so a deterministically
//! broken worker is not hammered.

use std::time::Duration;

use mechanics_proto::domain::RetrySpec;

/// The delay before retry `n` (1-based) after a transport failure, before jitter.
pub fn backoff(spec: &RetrySpec, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    spec.base_delay
        .0
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(spec.max_delay.0)
}

/// `delay` moved by up to ±10 %, from `random` in `[0, 1)`, so that tasks failing together do not
/// all come back together.
pub fn with_jitter(delay: Duration, random: f64) -> Duration {
    delay.mul_f64(0.9 + 0.2 * random.clamp(0.0, 1.0))
}

/// Whether a task that has made `tries` attempts (this failed one included) may run again.
pub fn may_retry(spec: &RetrySpec, tries: u32) -> bool {
    tries <= spec.max_retries
}

#[cfg(test)]
mod tests {
    use super::*;
    use mechanics_proto::domain::HumanDuration;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let spec = RetrySpec::default();
        let delays: Vec<u64> = (1..=8).map(|n| backoff(&spec, n).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(backoff(&spec, u32::MAX), Duration::from_secs(1800));
        let tiny = RetrySpec {
            base_delay: HumanDuration(Duration::from_millis(10)),
            ..RetrySpec::default()
        };
        assert_eq!(backoff(&tiny, 3), Duration::from_millis(40));
    }

    #[test]
    fn three_retries_then_dead() {
        let spec = RetrySpec::default();
        assert_eq!(spec.max_retries, 3);
        let verdicts: Vec<bool> = (1..=5).map(|tries| may_retry(&spec, tries)).collect();
        assert_eq!(verdicts, [true, true, true, false, false]);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_secs(100);
        assert_eq!(with_jitter(d, 0.0), Duration::from_secs(90));
        assert_eq!(with_jitter(d, 0.5), Duration::from_secs(100));
        assert!(with_jitter(d, 0.999_999) <= Duration::from_secs(110));
    }
}
