//! The hostile-script corpus: every script ends in a clean error within its time limit plus one
//! second, and the pool keeps serving.

use std::time::{Duration, Instant};

use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::{MechanicsPool, MechanicsPoolConfig};
use serde_json::{Value, json};

const TIME_LIMIT: Duration = Duration::from_millis(1000);

fn hostile_pool() -> MechanicsPool {
    let limits = MechanicsExecutionLimits::default()
        .with_max_execution_time(TIME_LIMIT)
        .unwrap()
        .with_max_loop_iterations(1_000_000_000_000)
        .unwrap()
        .with_max_memory_mb(64)
        .unwrap();
    MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(2)
            .with_worker_stack_bytes(64 * 1024 * 1024)
            .with_execution_limits(limits),
    )
    .unwrap()
}

#[test]
fn every_hostile_script_fails_cleanly_in_time_and_the_pool_keeps_serving() {
    let pool = hostile_pool();
    for (name, source, expected) in mechanics_test_support::hostile_corpus() {
        let started = Instant::now();
        let job = MechanicsJob::new(source, Value::Null, MechanicsConfig::default()).unwrap();
        let outcome = pool.run(job).result;
        let elapsed = started.elapsed();
        let err = outcome.expect_err(name);
        assert!(
            err.to_string().contains(expected),
            "{name}: expected {expected:?} in {err}"
        );
        assert!(
            elapsed < TIME_LIMIT + Duration::from_secs(1),
            "{name}: took {elapsed:?}"
        );
        let next = MechanicsJob::new(
            "export default (x) => x + 1",
            json!(1),
            MechanicsConfig::default(),
        )
        .unwrap();
        assert_eq!(pool.run(next).result.unwrap(), json!(2), "after {name}");
    }
    let stats = pool.stats();
    assert!(stats.memory_limits_enforced);
    assert_eq!(stats.worker_count, 2, "{stats:?}");
}
