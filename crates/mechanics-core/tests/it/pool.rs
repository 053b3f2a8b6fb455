//! Pool semantics: queue pressure, deadlines, stats, shutdown, configuration errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::{MechanicsError, MechanicsPool, MechanicsPoolConfig};
use serde_json::{Value, json};

fn job(source: &str) -> MechanicsJob {
    MechanicsJob::new(source, Value::Null, MechanicsConfig::default()).unwrap()
}

const SLOW: &str =
    "export default () => { const end = Date.now() + 400; while (Date.now() < end) {} return 1 }";

fn one_worker_one_slot() -> Arc<MechanicsPool> {
    Arc::new(
        MechanicsPool::new(
            MechanicsPoolConfig::default()
                .with_worker_count(1)
                .with_queue_capacity(1)
                .with_enqueue_timeout(Duration::from_millis(100)),
        )
        .unwrap(),
    )
}

/// Occupies the worker and the single queue slot, and returns the threads doing it.
fn fill(pool: &Arc<MechanicsPool>) -> Vec<std::thread::JoinHandle<Result<Value, MechanicsError>>> {
    let mut busy = Vec::new();
    for _ in 0..2 {
        let pool = pool.clone();
        let slow = job(SLOW).with_limits(
            MechanicsExecutionLimits::default()
                .with_max_loop_iterations(u64::MAX)
                .unwrap(),
        );
        busy.push(std::thread::spawn(move || pool.run(slow).result));
        std::thread::sleep(Duration::from_millis(50));
    }
    busy
}

#[test]
fn a_full_queue_is_reported_as_overload_not_as_a_bad_job() {
    let pool = one_worker_one_slot();
    let busy = fill(&pool);
    let err = pool
        .run_nonblocking_enqueue(job("export default () => 1"))
        .result
        .unwrap_err();
    assert_eq!(err, MechanicsError::QueueFull);
    assert!(err.kind().is_transient());
    let started = Instant::now();
    let err = pool.run(job("export default () => 1")).result.unwrap_err();
    assert_eq!(err, MechanicsError::QueueTimeout);
    assert!(started.elapsed() < Duration::from_millis(400));
    for handle in busy {
        assert_eq!(handle.join().unwrap().unwrap(), json!(1));
    }
    assert_eq!(
        pool.run(job("export default () => 2")).result.unwrap(),
        json!(2)
    );
}

#[test]
fn run_timeout_bounds_the_whole_call() {
    let pool = MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_run_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    let started = Instant::now();
    let slow = job(SLOW).with_limits(
        MechanicsExecutionLimits::default()
            .with_max_loop_iterations(u64::MAX)
            .unwrap(),
    );
    assert_eq!(
        pool.run(slow).result.unwrap_err(),
        MechanicsError::RunTimeout
    );
    assert!(started.elapsed() < Duration::from_millis(350));
}

#[test]
fn stats_are_a_consistent_snapshot() {
    let pool = one_worker_one_slot();
    let before = pool.stats();
    assert_eq!(
        (
            before.worker_count,
            before.desired_worker_count,
            before.queue_capacity
        ),
        (1, 1, 1)
    );
    let busy = fill(&pool);
    let during = pool.stats();
    assert_eq!(
        (during.busy_workers, during.queue_depth),
        (1, 1),
        "{during:?}"
    );
    for handle in busy {
        handle.join().unwrap().unwrap();
    }
    pool.run(job("export default () => { throw 1 }"))
        .result
        .unwrap_err();
    let after = pool.stats();
    assert_eq!(
        (after.jobs_completed, after.jobs_failed),
        (2, 1),
        "{after:?}"
    );
    assert!(!after.restart_blocked);
}

/// A pool config with one worker whose jobs may run for `time_limit`.
fn one_worker(time_limit: Duration) -> MechanicsPoolConfig {
    let limits = MechanicsExecutionLimits::default()
        .with_max_execution_time(time_limit)
        .unwrap();
    MechanicsPoolConfig::default()
        .with_worker_count(1)
        .with_execution_limits(limits)
}

/// One regular-expression call that backtracks for seconds (2^`a_count` steps): native code that
/// never reaches a tick.
fn stuck_in_regex(a_count: u32) -> MechanicsJob {
    job(&format!(
        "export default () => /^(a+)+$/.test('a'.repeat({a_count}) + 'b')"
    ))
}

#[test]
fn a_stuck_job_is_answered_and_its_worker_replaced() {
    let pool = MechanicsPool::new(
        one_worker(Duration::from_millis(200)).with_abandon_grace(Duration::from_millis(100)),
    )
    .unwrap();
    let started = Instant::now();
    let err = pool.run(stuck_in_regex(27)).result.unwrap_err();
    assert!(err.to_string().contains("time limit of 200 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert_eq!(
        pool.run(job("export default () => 3")).result.unwrap(),
        json!(3)
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.abandoned_workers, stats.worker_count),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn invalid_pool_configuration_is_rejected() {
    for config in [
        MechanicsPoolConfig::default().with_worker_count(0),
        MechanicsPoolConfig::default().with_queue_capacity(0),
        MechanicsPoolConfig::default().with_run_timeout(Duration::ZERO),
        MechanicsPoolConfig::default().with_run_timeout(Duration::MAX),
    ] {
        let err = MechanicsPool::new(config).unwrap_err();
        assert_eq!(err.kind().as_str(), "runtime_pool", "{err}");
    }
    let err = serde_json::from_str::<MechanicsPoolConfig>(r#"{"workers": 2}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn dropping_the_pool_joins_its_threads() {
    if !crate::in_child() {
        let stdout = crate::run_in_child("pool::dropping_the_pool_joins_its_threads");
        assert!(stdout.contains("threads-after-drop 0"), "{stdout}");
        return;
    }
    let count = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("mechanics-"))
            .count()
    };
    let pool = MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(3)).unwrap();
    pool.run(job("export default () => 1")).result.unwrap();
    // The workers have started (and named themselves); the supervisor may not have yet.
    assert!(count() >= 3, "three workers and the supervisor");
    drop(pool);
    #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
    {
        println!("\nthreads-after-drop {}", count());
    }
}

#[test]
fn dropping_the_pool_does_not_wait_forever_for_a_stuck_job() {
    let pool = MechanicsPool::new(
        one_worker(Duration::from_secs(3600))
            .with_run_timeout(Duration::from_millis(200))
            .with_shutdown_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    assert_eq!(
        pool.run(stuck_in_regex(27)).result.unwrap_err(),
        MechanicsError::RunTimeout
    );
    let started = Instant::now();
    drop(pool);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_pool_stops_replacing_threads_after_too_many_were_abandoned() {
    let pool = MechanicsPool::new(
        one_worker(Duration::from_millis(100))
            .with_abandon_grace(Duration::from_millis(50))
            .with_max_abandoned_workers(1)
            .with_shutdown_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    assert_eq!(
        pool.run(stuck_in_regex(26))
            .result
            .unwrap_err()
            .kind()
            .as_str(),
        "limit_exceeded"
    );
    std::thread::sleep(Duration::from_millis(100));
    let stats = pool.stats();
    assert_eq!(
        (stats.abandoned_workers, stats.worker_count),
        (1, 0),
        "{stats:?}"
    );
    assert!(stats.restart_blocked);
    let err = pool.run(job("export default () => 1")).result.unwrap_err();
    assert_eq!(err.kind().as_str(), "worker_unavailable", "{err}");
}
