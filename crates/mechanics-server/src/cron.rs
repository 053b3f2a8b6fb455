//! Cron triggers: schedule computation (pure, tested with fixed instants) and the scheduler loop.
//!
//! A schedule has 5 fields (`minute hour day-of-month month day-of-week`) or 6 with seconds
//! first, in POSIX/Vixie syntax as the `croner` crate reads it (ranges, steps, lists, names such
//! as `MON` and `JAN`, `L`, `#`, `W`, and `@daily`-style nicknames), evaluated in the trigger's IANA
//! time zone (UTC by default), so `0 9 * * 1-5` with `tz: Europe/Paris` fires at 09:00 Paris
//! time across daylight-saving changes.
//!
//! The scheduler sleeps until the earliest next fire among all cron workers, or until the
//! registry changes: an idle server makes no query (invariant 6). A fire is recorded with
//! [`Store::record_cron_fire`](mechanics_store::Store::record_cron_fire), unique per worker and
//! fire time, so several servers on one database fire each time once; a paused worker's time
//! is recorded as skipped on the same key ([`Store::record_cron_skip`](mechanics_store::Store::record_cron_skip)),
//! so it is logged once too. After downtime a worker
//! fires once for the latest missed time; the other missed times are counted in
//! `cron_ticks_dropped`. The starting point is the worker's last recorded fire; a worker with no
//! record kept (new, or pruned by retention) starts from now, so a pruned record never causes a
//! second fire.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::TimeZone as _;
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use mechanics_proto::domain::{Trigger, WorkerSpec};
use serde_json::json;

use crate::Shared;
use crate::trace_log::task_trace_id;

/// Most missed fire times counted on catch-up; beyond it the count stops (a per-second
/// schedule after a month down would otherwise take millions of steps).
pub const MAX_COUNTED_MISSES: u64 = 100_000;

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error("{expression:?} is not a cron schedule: {message}")]
    Pattern {
        /// The expression as written.
        expression: String,
        /// What the parser said.
        message: String,
    },
    /// The time zone is unknown.
    #[error("{0:?} is not an IANA time zone name (for example Europe/Paris or UTC)")]
    Zone(String),
}

/// A parsed cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// What a schedule missed between two instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The latest fire time in the interval, to fire now.
    pub fire: Option<i64>,
    /// The other fire times in the interval, which are dropped (counted, not fired).
    pub dropped: u64,
}

impl Schedule {
    /// Parses a 5- or 6-field expression in time zone `tz` (UTC when `None`).
    pub fn parse(expression: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match tz {
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::Zone(name.to_owned()))?,
            None => Tz::UTC,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|err| ScheduleError::Pattern {
                expression: expression.to_owned(),
                message: err.to_string(),
            })?;
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `after_ms` (unix ms), if the schedule ever fires again.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = self.tz.timestamp_millis_opt(after_ms).single()?;
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|next| next.timestamp_millis())
    }

    /// The fire times in `(after_ms, now_ms]`: the latest, and how many others.
    pub fn catch_up(&self, after_ms: i64, now_ms: i64) -> CatchUp {
        let mut fire = None;
        let mut count = 0u64;
        let mut cursor = after_ms;
        while let Some(next) = self.next_after(cursor) {
            if next > now_ms {
                break;
            }
            fire = Some(next);
            count += 1;
            cursor = next;
            if count > MAX_COUNTED_MISSES {
                // Jump to the last fire before now without counting every step.
                if let Some(last) = self
                    .tz
                    .timestamp_millis_opt(now_ms)
                    .single()
                    .and_then(|now| self.cron.find_previous_occurrence(&now, true).ok())
                {
                    fire = Some(last.timestamp_millis());
                }
                break;
            }
        }
        CatchUp {
            fire,
            dropped: count.saturating_sub(1),
        }
    }
}

/// The schedules of a worker's cron triggers; an error names the trigger.
pub fn schedules(spec: &WorkerSpec) -> Result<Vec<Schedule>, String> {
    spec.triggers
        .iter()
        .enumerate()
        .filter_map(|(i, trigger)| match trigger {
            Trigger::Cron(cron) => Some(
                Schedule::parse(cron.schedule(), cron.tz())
                    .map_err(|err| format!("triggers[{i}].cron: {err}")),
            ),
            _ => None,
        })
        .collect()
}

/// The next `count` fire times (unix ms) after `after_ms` of all of a worker's cron triggers
/// together (a time two triggers share counts once); empty without cron triggers.
pub fn next_fires(spec: &WorkerSpec, after_ms: i64, count: usize) -> Vec<i64> {
    let Ok(schedules) = schedules(spec) else {
        return Vec::new();
    };
    let mut fires = Vec::with_capacity(count);
    let mut cursor = after_ms;
    while fires.len() < count {
        let Some(next) = schedules.iter().filter_map(|s| s.next_after(cursor)).min() else {
            break;
        };
        fires.push(next);
        cursor = next;
    }
    fires
}

/// Checks a worker's cron triggers when it is added, so a bad schedule is a `400` then and not a
/// silent non-firing later.
pub(crate) fn validate_triggers(spec: &WorkerSpec) -> Result<(), String> {
    schedules(spec).map(|_| ())
}

/// The scheduler: fires due cron triggers until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    // Per worker: every fire time up to this one has been handled.
    let mut handled: HashMap<String, i64> = HashMap::new();
    loop {
        let workers = shared.dispatcher.registry.all().await;
        let mut plans: Vec<(String, Vec<Planned>)> = Vec::new();
        for worker in workers.values() {
            let mut list = Vec::new();
            for trigger in &worker.spec.triggers {
                if let Trigger::Cron(cron) = trigger {
                    match Schedule::parse(cron.schedule(), cron.tz()) {
                        Ok(schedule) => list.push((
                            schedule,
                            cron.schedule().to_owned(),
                            cron.tz().map(str::to_owned),
                        )),
                        Err(err) => {
                            tracing::warn!(worker = %worker.spec.name, error = %err, "cron trigger ignored")
                        }
                    }
                }
            }
            if !list.is_empty() {
                plans.push((worker.spec.name.clone(), list));
            }
        }
        handled.retain(|name, _| plans.iter().any(|(n, _)| n == name));
        let now = shared.clock.now_ms();
        for (name, schedules) in &plans {
            if !handled.contains_key(name) {
                let start = match shared.store.last_cron_fire(name).await {
                    Ok(last) => last.unwrap_or(now),
                    Err(err) => {
                        tracing::error!(worker = %name, error = %err, "reading the last cron fire failed");
                        now
                    }
                };
                handled.insert(name.clone(), start);
            }
            let after = handled[name];
            fire_due(&shared, name, schedules, after, now).await;
            handled.insert(name.clone(), now.max(after));
        }
        let next = plans
            .iter()
            .filter_map(|(name, schedules)| {
                let after = handled[name];
                schedules
                    .iter()
                    .filter_map(|(s, _, _)| s.next_after(after))
                    .min()
            })
            .min();
        let clock = shared.clock;
        let sleep = async move {
            match next {
                Some(at) => tokio::time::sleep_until(clock.instant_at(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return,
            () = shared.integrations.cron_wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// A cron trigger of a worker: its schedule, expression and time zone as written.
type Planned = (Schedule, String, Option<String>);

/// Fires `worker` once for its latest fire time in `(after, now]`, counting the others as
/// dropped.
async fn fire_due(shared: &Shared, worker: &str, schedules: &[Planned], after: i64, now: i64) {
    let mut latest: Option<(i64, &str, Option<&str>)> = None;
    let mut total = 0u64;
    for (schedule, expression, tz) in schedules {
        let catch_up = schedule.catch_up(after, now);
        if let Some(fire) = catch_up.fire {
            total += 1 + catch_up.dropped;
            if latest.is_none_or(|(t, _, _)| fire > t) {
                latest = Some((fire, expression, tz.as_deref()));
            }
        }
    }
    let Some((fire_time, expression, tz)) = latest else {
        return;
    };
    let dropped = total - 1;
    let paused = shared
        .dispatcher
        .registry
        .get(worker)
        .await
        .is_some_and(|w| w.paused);
    if paused {
        // Recorded with no task: the worker runs nothing for it, now or after its resume (nor
        // after a restart, which starts from the last recorded time). The claim also makes one
        // server of several on the database log the skip.
        match shared.store.record_cron_skip(worker, fire_time).await {
            Ok(true) => shared.trace.cron_paused(worker, fire_time, now),
            Ok(false) => {}
            Err(err) => {
                tracing::error!(worker, error = %err, "recording a skipped cron fire failed");
            }
        }
        return;
    }
    let fire = json!({ "schedule": expression, "tz": tz.unwrap_or("UTC"), "fire_time": fire_time, "dropped": dropped });
    let payload = json!({ "cron": fire });
    let fired = shared
        .store
        .record_cron_fire(worker, fire_time, payload, now)
        .await;
    // Several servers catch up on the same missed times: the one that recorded the fire
    // counts them, so they are counted once.
    if let Ok(Some(task)) = &fired
        && dropped > 0
    {
        tracing::warn!(
            worker,
            dropped,
            "cron fires missed while the server was down are dropped; firing once"
        );
        // In the fired task's trace, so `?trace=task-N` shows why it stands for several times.
        shared
            .trace
            .cron_dropped(worker, dropped, task_trace_id(task), now);
    }
    match fired {
        Ok(Some(task)) => {
            shared.trace.cron_fired(&task, fire, now);
            tracing::debug!(worker, task = task.id, fire_time, "cron fired");
            shared.dispatcher.wake.notify_one();
        }
        // Another server (or an earlier run) fired it, and logged the fire: an entry here too
        // would repeat it once per other server on the database, every fire.
        Ok(None) => tracing::debug!(worker, fire_time, "cron fire already recorded elsewhere"),
        Err(err) => {
            tracing::error!(worker, error = %err, "recording a cron fire failed");
            let error = format!("recording the fire at {fire_time} failed: {err}");
            shared.trace.cron_failed(worker, &error, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-30T00:00:00Z, the day before Europe's switch to summer time.
    const MARCH_30: i64 = 1_711_756_800_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    #[test]
    fn five_and_six_fields() {
        let every_5 = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(every_5.next_after(MARCH_30), Some(MARCH_30 + 5 * MIN));
        assert_eq!(every_5.next_after(MARCH_30 + 1), Some(MARCH_30 + 5 * MIN));
        let every_10s = Schedule::parse("*/10 * * * * *", None).unwrap();
        assert_eq!(every_10s.next_after(MARCH_30), Some(MARCH_30 + 10_000));
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::Zone("Mars/Olympus".into())
        );
    }

    #[test]
    fn nicknames_fire_as_their_expressions_do() {
        // 2024-03-30 is a Saturday.
        let next = |expression: &str, tz: Option<&str>| {
            Schedule::parse(expression, tz)
                .unwrap()
                .next_after(MARCH_30)
        };
        assert_eq!(next("@hourly", None), Some(MARCH_30 + HOUR));
        assert_eq!(next("@daily", None), Some(MARCH_30 + 24 * HOUR));
        assert_eq!(next("@weekly", None), Some(MARCH_30 + 24 * HOUR));
        assert_eq!(next("@monthly", None), Some(MARCH_30 + 48 * HOUR));
        assert_eq!(next("@yearly", None), Some(1_735_689_600_000));
        assert_eq!(next("@annually", None), next("@yearly", None));
        // Midnight in the trigger's zone: Paris is UTC+1 on March 30.
        assert_eq!(
            next("@daily", Some("Europe/Paris")),
            Some(MARCH_30 + 23 * HOUR)
        );
    }

    #[test]
    fn time_zones_follow_daylight_saving() {
        let nine_paris = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        // March 30: UTC+1, so 08:00Z; March 31 (summer time): UTC+2, so 07:00Z.
        let first = nine_paris.next_after(MARCH_30).unwrap();
        assert_eq!(first, MARCH_30 + 8 * HOUR);
        assert_eq!(
            nine_paris.next_after(first),
            Some(MARCH_30 + 24 * HOUR + 7 * HOUR)
        );
    }

    #[test]
    fn catch_up_fires_the_latest_and_drops_the_rest() {
        let hourly = Schedule::parse("0 * * * *", None).unwrap();
        let c = hourly.catch_up(MARCH_30, MARCH_30 + 5 * HOUR + 30 * MIN);
        assert_eq!(
            c,
            CatchUp {
                fire: Some(MARCH_30 + 5 * HOUR),
                dropped: 4
            }
        );
        let none = hourly.catch_up(MARCH_30, MARCH_30 + 59 * MIN);
        assert_eq!(
            none,
            CatchUp {
                fire: None,
                dropped: 0
            }
        );
        // A fire exactly at `now` is due; one exactly at `after` was already handled.
        let edge = hourly.catch_up(MARCH_30, MARCH_30 + HOUR);
        assert_eq!(
            edge,
            CatchUp {
                fire: Some(MARCH_30 + HOUR),
                dropped: 0
            }
        );
    }
}
