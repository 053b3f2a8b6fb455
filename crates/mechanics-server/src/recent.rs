//! What each worker did in the last hour on this server: tasks created, completed, failed and
//! dead, and the dispatch latency's median and 95th percentile (`GET /api/v1/metrics/summary`,
//! the MCP tool `metrics_summary`).
//!
//! Kept in memory in one-minute slots, sixty per worker, so the window slides by the minute
//! and the memory is bounded whatever the throughput. Latencies go into logarithmic buckets
//! (each 20 % wider than the one before, from 1 ms to past an hour), so a percentile is the
//! upper bound of its bucket: at most 20 % above the true value, never below it. The counts are
//! this server's: with several servers on one PostgreSQL database, each reports the tasks it
//! created and ran (Prometheus' `/metrics` of every server add up to the whole).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use mechanics_proto::api::WorkerActivity;

/// The window: one hour.
pub const WINDOW_MS: i64 = 60 * 60 * 1000;

const SLOT_MS: i64 = 60 * 1000;
const SLOTS: usize = (WINDOW_MS / SLOT_MS) as usize;
/// Each bucket's bound is this much above the one before.
const GROWTH: f64 = 1.2;
/// Bucket 0 holds 0 to 1 ms; bucket 99 ends past 69 days, far beyond any real latency.
const BUCKETS: usize = 100;

/// A step of a task counted in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The task was created (API, webhook or cron).
    Created,
    /// The task completed.
    Completed,
    /// The task failed for good.
    Failed,
    /// The task went dead after its retries.
    Dead,
}

/// One minute of one worker.
#[derive(Debug, Clone)]
struct Slot {
    /// The minute (unix ms / 60 000).
    minute: i64,
    created: u64,
    completed: u64,
    failed: u64,
    dead: u64,
    latency: [u32; BUCKETS],
}

impl Slot {
    fn new(minute: i64) -> Self {
        Self {
            minute,
            created: 0,
            completed: 0,
            failed: 0,
            dead: 0,
            latency: [0; BUCKETS],
        }
    }
}

/// The last hour of every worker (see the module's documentation).
#[derive(Debug, Default)]
pub struct RecentActivity {
    workers: Mutex<HashMap<String, VecDeque<Slot>>>,
}

fn bucket_of(latency_ms: i64) -> usize {
    if latency_ms <= 1 {
        return 0;
    }
    let index = ((latency_ms as f64).ln() / GROWTH.ln()).ceil();
    (index as usize).min(BUCKETS - 1)
}

/// The largest latency bucket `index` holds, in ms.
fn bucket_bound(index: usize) -> u64 {
    GROWTH.powi(index as i32).ceil() as u64
}

impl RecentActivity {
    /// Counts `step` of a task of `worker` at `now` (unix ms).
    pub fn count(&self, worker: &str, step: Step, now: i64) {
        self.with_slot(worker, now, |slot| match step {
            Step::Created => slot.created += 1,
            Step::Completed => slot.completed += 1,
            Step::Failed => slot.failed += 1,
            Step::Dead => slot.dead += 1,
        });
    }

    /// Records the dispatch latency of an attempt of `worker` that started at `now`.
    pub fn latency(&self, worker: &str, latency_ms: i64, now: i64) {
        self.with_slot(worker, now, |slot| {
            let bucket = &mut slot.latency[bucket_of(latency_ms)];
            *bucket = bucket.saturating_add(1);
        });
    }

    /// Drops a removed worker's minutes.
    pub fn forget(&self, worker: &str) {
        self.lock().remove(worker);
    }

    /// Every worker's last hour before `now`, by name; `also` names workers to list even
    /// without activity (the registered ones), with zeros.
    pub fn summary<'a>(
        &self,
        now: i64,
        also: impl IntoIterator<Item = &'a str>,
    ) -> Vec<WorkerActivity> {
        let first = now.div_euclid(SLOT_MS) - SLOTS as i64 + 1;
        let workers = self.lock();
        let mut names: Vec<String> = workers.keys().cloned().collect();
        names.extend(also.into_iter().map(str::to_owned));
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let mut total = Slot::new(0);
                for slot in workers
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .filter(|slot| slot.minute >= first)
                {
                    total.created += slot.created;
                    total.completed += slot.completed;
                    total.failed += slot.failed;
                    total.dead += slot.dead;
                    for (sum, count) in total.latency.iter_mut().zip(slot.latency) {
                        *sum = sum.saturating_add(count);
                    }
                }
                let attempts: u64 = total.latency.iter().map(|&n| u64::from(n)).sum();
                WorkerActivity {
                    worker: name,
                    created: total.created,
                    completed: total.completed,
                    failed: total.failed,
                    dead: total.dead,
                    attempts,
                    dispatch_latency_p50_ms: percentile(&total.latency, attempts, 0.50),
                    dispatch_latency_p95_ms: percentile(&total.latency, attempts, 0.95),
                }
            })
            .collect()
    }

    /// The dispatch latency of every worker's attempts in the last hour before `now`: how
    /// many, and their p50 and p95 in ms (`None` without attempts).
    pub fn latency_of_all(&self, now: i64) -> (u64, Option<u64>, Option<u64>) {
        let first = now.div_euclid(SLOT_MS) - SLOTS as i64 + 1;
        let mut total = [0u32; BUCKETS];
        for slot in self.lock().values().flatten() {
            if slot.minute >= first {
                for (sum, count) in total.iter_mut().zip(slot.latency) {
                    *sum = sum.saturating_add(count);
                }
            }
        }
        let attempts: u64 = total.iter().map(|&n| u64::from(n)).sum();
        (
            attempts,
            percentile(&total, attempts, 0.50),
            percentile(&total, attempts, 0.95),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Slot>>> {
        // The map stays consistent whatever panicked while holding it: counts only grow.
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_slot(&self, worker: &str, now: i64, change: impl FnOnce(&mut Slot)) {
        let minute = now.div_euclid(SLOT_MS);
        let mut workers = self.lock();
        let slots = match workers.get_mut(worker) {
            Some(slots) => slots,
            None => workers.entry(worker.to_owned()).or_default(),
        };
        while slots
            .front()
            .is_some_and(|slot| slot.minute <= minute - SLOTS as i64)
        {
            slots.pop_front();
        }
        // Steps arrive in time order but from several tasks at once: one may land in the minute
        // just before the newest.
        let slot = match slots.iter_mut().rev().find(|slot| slot.minute <= minute) {
            Some(slot) if slot.minute == minute => slot,
            _ => {
                let at = slots.partition_point(|slot| slot.minute < minute);
                slots.insert(at, Slot::new(minute));
                &mut slots[at]
            }
        };
        change(slot);
    }
}

/// The `quantile` of `attempts` latencies in `buckets`, as its bucket's bound; `None` without
/// attempts.
fn percentile(buckets: &[u32; BUCKETS], attempts: u64, quantile: f64) -> Option<u64> {
    if attempts == 0 {
        return None;
    }
    // The rank of the quantile, 1-based (nearest-rank method).
    let rank = ((quantile * attempts as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, &count) in buckets.iter().enumerate() {
        seen += u64::from(count);
        if seen >= rank {
            return Some(bucket_bound(index));
        }
    }
    Some(bucket_bound(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = WINDOW_MS;
    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn counts_cover_the_last_hour_only() {
        let recent = RecentActivity::default();
        recent.count("a", Step::Created, NOW - HOUR - SLOT_MS);
        recent.count("a", Step::Created, NOW - HOUR + SLOT_MS);
        recent.count("a", Step::Completed, NOW - 10);
        recent.count("a", Step::Dead, NOW);
        recent.count("b", Step::Failed, NOW);
        let summary = recent.summary(NOW, ["c"]);
        let names: Vec<&str> = summary.iter().map(|w| w.worker.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a = &summary[0];
        assert_eq!((a.created, a.completed, a.failed, a.dead), (1, 1, 0, 1));
        assert_eq!(summary[1].failed, 1);
        assert_eq!(summary[2].created, 0);
        assert_eq!(summary[2].dispatch_latency_p50_ms, None);
        // An hour later everything has left the window.
        let later = recent.summary(NOW + HOUR, []);
        assert!(later.iter().all(|w| w.created + w.completed + w.dead == 0));
    }

    #[test]
    fn the_latency_of_all_workers_pools_their_attempts_of_the_last_hour() {
        let recent = RecentActivity::default();
        assert_eq!(recent.latency_of_all(NOW), (0, None, None));
        // 90 fast attempts of a, 10 slow ones of b, and one of a that has left the window.
        for _ in 0..90 {
            recent.latency("a", 10, NOW);
        }
        for _ in 0..10 {
            recent.latency("b", 2_000, NOW - 10);
        }
        recent.latency("a", 2_000, NOW - HOUR - SLOT_MS);
        let (attempts, p50, p95) = recent.latency_of_all(NOW);
        assert_eq!(attempts, 100);
        assert!((10..=12).contains(&p50.unwrap()), "{p50:?}");
        assert!((2_000..=2_400).contains(&p95.unwrap()), "{p95:?}");
    }

    #[test]
    fn percentiles_are_bucket_bounds_at_most_a_fifth_above() {
        let recent = RecentActivity::default();
        // 90 fast attempts (10 ms) and 10 slow ones (2 s): p50 is fast, p95 slow.
        for _ in 0..90 {
            recent.latency("w", 10, NOW);
        }
        for _ in 0..10 {
            recent.latency("w", 2_000, NOW);
        }
        let summary = recent.summary(NOW, []);
        let w = &summary[0];
        assert_eq!(w.attempts, 100);
        let p50 = w.dispatch_latency_p50_ms.unwrap();
        let p95 = w.dispatch_latency_p95_ms.unwrap();
        assert!((10..=12).contains(&p50), "{p50}");
        assert!((2_000..=2_400).contains(&p95), "{p95}");
    }

    #[test]
    fn bucket_bounds_hold_their_latencies() {
        for latency in [0, 1, 2, 7, 100, 999, 60_000, 3_600_000] {
            let bound = bucket_bound(bucket_of(latency));
            assert!(bound >= latency as u64, "{latency} -> {bound}");
            assert!((bound as f64) <= (latency.max(1) as f64) * GROWTH + 1.0);
        }
    }

    #[test]
    fn a_removed_worker_is_forgotten() {
        let recent = RecentActivity::default();
        recent.count("gone", Step::Created, NOW);
        recent.forget("gone");
        assert!(recent.summary(NOW, []).is_empty());
    }
}
