//! The crash-loop breaker: stops respawning a node that keeps dying.
//!
//! Deaths are counted per node across restart cycles: a node whose start succeeds and that dies
//! seconds later adds one death per cycle to the same window, so a "connects, then crashes" loop
//! trips it like any other. A tripped breaker re-arms on an explicit reset, or half-opens after
//! its cool-down: one more try, and a death of that try within the window trips it again.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Where a node's crash-loop breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Armed: deaths are being counted.
    Closed,
    /// Too many deaths in the window: the node is not respawned until a reset or the cool-down.
    Tripped,
    /// The cool-down passed and one try is running; it closes once the try outlives the window.
    HalfOpen,
}

impl BreakerState {
    /// The state's name for APIs and metrics (`half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Tripped => "tripped",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The breaker's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// A node that dies more than this many times within `crash_window` is not respawned.
    pub max_crashes_in_window: u32,
    /// The sliding window deaths are counted in.
    pub crash_window: Duration,
    /// How long a tripped breaker waits before it allows one more try.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    /// More than 5 deaths in 60 s trips; a 5 min cool-down.
    fn default() -> Self {
        BreakerConfig {
            max_crashes_in_window: 5,
            crash_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
        }
    }
}

/// One node's breaker. The node's supervision loop is its only user, so it needs no lock.
#[derive(Debug)]
pub(crate) struct CrashLoopBreaker {
    config: BreakerConfig,
    /// Deaths inside the window, oldest first; never longer than `max_crashes_in_window + 1`.
    deaths: VecDeque<Instant>,
    state: BreakerState,
    /// When the breaker tripped (while `Tripped`) or the try began (while `HalfOpen`).
    since: Option<Instant>,
}

impl CrashLoopBreaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        CrashLoopBreaker {
            config,
            deaths: VecDeque::new(),
            state: BreakerState::Closed,
            since: None,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Deaths counted in the current window.
    pub(crate) fn recent_deaths(&self) -> usize {
        self.deaths.len()
    }

    /// Records a death at `now`; returns whether the breaker is tripped afterwards.
    pub(crate) fn record_death(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Tripped => {}
            BreakerState::HalfOpen => {
                // The try died inside the window (once it outlives it, `try_survived` closes the
                // breaker): trip again at once.
                self.deaths.push_back(now);
                self.trip(now);
            }
            BreakerState::Closed => {
                let window = self.config.crash_window;
                while self
                    .deaths
                    .front()
                    .is_some_and(|&at| now.duration_since(at) >= window)
                {
                    self.deaths.pop_front();
                }
                self.deaths.push_back(now);
                let limit = self.config.max_crashes_in_window as usize;
                if self.deaths.len() > limit {
                    self.trip(now);
                }
                // Counting past the limit tells nothing more; keep memory bounded.
                while self.deaths.len() > limit.saturating_add(1) {
                    self.deaths.pop_front();
                }
            }
        }
        self.state == BreakerState::Tripped
    }

    fn trip(&mut self, now: Instant) {
        self.state = BreakerState::Tripped;
        self.since = Some(now);
    }

    /// When a tripped breaker allows its one try.
    pub(crate) fn cooldown_ends(&self) -> Option<Instant> {
        match (self.state, self.since) {
            (BreakerState::Tripped, Some(at)) => Some(at + self.config.cooldown),
            _ => None,
        }
    }

    /// The cool-down has passed: allow one try starting at `now`.
    pub(crate) fn half_open(&mut self, now: Instant) {
        self.state = BreakerState::HalfOpen;
        self.since = Some(now);
    }

    /// When a half-open try has outlived the window and the breaker closes.
    pub(crate) fn try_proven_at(&self) -> Option<Instant> {
        match (self.state, self.since) {
            (BreakerState::HalfOpen, Some(at)) => Some(at + self.config.crash_window),
            _ => None,
        }
    }

    /// Re-arms: forgets every death. Used by an explicit reset and when a try proves itself.
    pub(crate) fn reset(&mut self) {
        self.state = BreakerState::Closed;
        self.since = None;
        self.deaths.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (CrashLoopBreaker, Instant) {
        (
            CrashLoopBreaker::new(BreakerConfig::default()),
            Instant::now(),
        )
    }

    #[test]
    fn the_sixth_death_within_the_window_trips_not_the_fifth() {
        let (mut breaker, t0) = breaker();
        for i in 0..5 {
            assert!(
                !breaker.record_death(t0 + Duration::from_secs(i * 10)),
                "death {}",
                i + 1
            );
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.record_death(t0 + Duration::from_secs(59)));
        assert_eq!(breaker.state(), BreakerState::Tripped);
        assert_eq!(
            breaker.cooldown_ends(),
            Some(t0 + Duration::from_secs(59 + 300))
        );
    }

    #[test]
    fn deaths_older_than_the_window_do_not_count() {
        let (mut breaker, t0) = breaker();
        // One death every 12 s: exactly 5 within any 60 s, forever.
        for i in 0..100 {
            assert!(
                !breaker.record_death(t0 + Duration::from_secs(i * 12)),
                "death {}",
                i + 1
            );
        }
        assert_eq!(breaker.recent_deaths(), 5);
        // A sixth inside the current window trips it.
        assert!(breaker.record_death(t0 + Duration::from_secs(99 * 12 + 1)));
    }

    #[test]
    fn half_open_try_that_dies_in_the_window_trips_again_and_a_reset_rearms() {
        let (mut breaker, t0) = breaker();
        for _ in 0..6 {
            breaker.record_death(t0);
        }
        let retry = breaker.cooldown_ends().unwrap();
        breaker.half_open(retry);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(
            breaker.try_proven_at(),
            Some(retry + Duration::from_secs(60))
        );
        assert!(breaker.record_death(retry + Duration::from_secs(59)));
        breaker.reset();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.recent_deaths(), 0);
        assert!(!breaker.record_death(retry + Duration::from_secs(60)));
    }
}
