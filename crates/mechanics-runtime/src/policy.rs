//! When and how soon a node that ended is started again.

use std::time::Duration;

/// What the supervisor does when a node's instance ends without being asked to stop.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartPolicy {
    /// Never start it again: the node reads [`NodeState::Exited`](crate::NodeState::Exited).
    Never,
    /// Start it again after a failure (an error, a panic, a kill, failed health checks), waiting
    /// longer after each consecutive failure. A clean exit ends the node.
    OnFailure(ExponentialBackoff),
    /// Start it again after any end, clean exits included, always after the same delay.
    Always {
        /// The wait before each restart.
        delay: Duration,
    },
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::OnFailure(ExponentialBackoff::default())
    }
}

impl RestartPolicy {
    /// The wait before the next start, or `None` when the node must not be started again.
    /// `failures_in_row` counts the consecutive failures since the node last ran stably;
    /// `sample` is a uniform random number in `[0, 1)` that the jitter uses.
    pub fn next_delay(
        &self,
        clean_exit: bool,
        failures_in_row: u32,
        sample: f64,
    ) -> Option<Duration> {
        match self {
            RestartPolicy::Never => None,
            RestartPolicy::OnFailure(_) if clean_exit => None,
            RestartPolicy::OnFailure(backoff) => Some(backoff.delay(failures_in_row, sample)),
            RestartPolicy::Always { delay } => Some(*delay),
        }
    }
}

/// Exponential backoff: `initial × multiplier^n`, capped at `max`, then shortened by up to
/// `jitter` of itself so that nodes that failed together do not restart together.
#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialBackoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: f64,
}

impl Default for ExponentialBackoff {
    /// 500 ms doubling up to 30 s with 10 % jitter (the process-worker defaults of DESIGN.md).
    fn default() -> Self {
        ExponentialBackoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl ExponentialBackoff {
    /// Doubles from `initial` up to `max` (a `max` below `initial` is raised to it), with 10 %
    /// jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        ExponentialBackoff {
            initial,
            multiplier: 2.0,
            max: max.max(initial),
            jitter: 0.1,
        }
    }

    /// Sets the growth factor; values below 1 (and NaN) are taken as 1, a constant delay.
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        self
    }

    /// Sets the jitter: the fraction of each delay that may be taken off at random, clamped to
    /// `[0, 1]` (NaN is 0). Jitter only shortens, so `max` stays a true cap.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter > 0.0 { jitter.min(1.0) } else { 0.0 };
        self
    }

    /// The delay before restart number `failures_in_row + 1` of a run of failures. Saturates at
    /// `max` for any count: the exponent is computed in floating point, so nothing overflows.
    pub fn delay(&self, failures_in_row: u32, sample: f64) -> Duration {
        if self.initial.is_zero() {
            return Duration::ZERO;
        }
        let max = self.max.as_secs_f64();
        // i32::MAX would do, but the result is infinite far earlier; clamping keeps powi cheap.
        let exponent = failures_in_row.min(4096) as i32;
        let raw = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = if raw.is_finite() { raw.min(max) } else { max };
        let sample = if (0.0..1.0).contains(&sample) {
            sample
        } else {
            0.0
        };
        let jittered = capped * (1.0 - self.jitter * sample);
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_cap_and_never_overflow() {
        let backoff = ExponentialBackoff::new(ms(100), ms(1000)).with_jitter(0.0);
        let delays: Vec<_> = (0..7).map(|n| backoff.delay(n, 0.5)).collect();
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        for n in [64, 1_000, 100_000, u32::MAX] {
            assert_eq!(backoff.delay(n, 0.5), ms(1000), "after {n} failures");
        }
        let huge = ExponentialBackoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX)
            .with_multiplier(f64::MAX)
            .with_jitter(0.0);
        assert_eq!(huge.delay(u32::MAX, 0.0), Duration::MAX);
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_its_fraction() {
        let backoff = ExponentialBackoff::new(ms(1000), ms(1000)).with_jitter(0.25);
        assert_eq!(backoff.delay(3, 0.0), ms(1000));
        assert_eq!(backoff.delay(3, 0.5), ms(875));
        assert!(backoff.delay(3, 0.999_999) > ms(750));
        // Out-of-range samples are treated as no jitter rather than lengthening the delay.
        assert_eq!(backoff.delay(3, 7.0), ms(1000));
        assert_eq!(
            backoff.clone().with_jitter(f64::NAN).delay(0, 0.5),
            ms(1000)
        );
    }

    #[test]
    fn custom_multiplier_and_zero_initial() {
        let triple = ExponentialBackoff::new(ms(10), ms(10_000))
            .with_multiplier(3.0)
            .with_jitter(0.0);
        assert_eq!(triple.delay(2, 0.0), ms(90));
        assert_eq!(triple.clone().with_multiplier(0.5).delay(5, 0.0), ms(10));
        let zero =
            ExponentialBackoff::new(Duration::ZERO, Duration::ZERO).with_multiplier(f64::MAX);
        assert_eq!(zero.delay(u32::MAX, 0.9), Duration::ZERO);
    }

    #[test]
    fn policies_decide_which_ends_restart() {
        let on_failure =
            RestartPolicy::OnFailure(ExponentialBackoff::new(ms(100), ms(100)).with_jitter(0.0));
        assert_eq!(on_failure.next_delay(true, 0, 0.0), None);
        assert_eq!(on_failure.next_delay(false, 0, 0.0), Some(ms(100)));
        let always = RestartPolicy::Always { delay: ms(250) };
        assert_eq!(always.next_delay(true, 9, 0.0), Some(ms(250)));
        assert_eq!(always.next_delay(false, 9, 0.0), Some(ms(250)));
        assert_eq!(RestartPolicy::Never.next_delay(false, 0, 0.0), None);
    }
}
