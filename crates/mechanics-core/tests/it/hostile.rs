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

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

#[test]
fn every_hostile_script_fails_cleanly_in_time_and_the_pool_keeps_serving() {
    let pool = hostile_pool();
    let parens = format!("export default () => {}", nested("(", "1", ")", 10_000));
    let json_literal = format!("export default () => {}", nested("[", "", "]", 100_000));
    let corpus: Vec<(&str, String, &str)> = vec![
        ("infinite sync loop", "export default () => { while (true) {} }".into(), "time limit"),
        (
            "endless promise chain",
            "function f() { return Promise.resolve().then(f) } export default () => f()".into(),
            "time limit",
        ),
        ("deep recursion", "function r(n) { return r(n + 1) + 1 } export default () => r(0)".into(), "recursion"),
        ("huge repeat", "export default () => 'a'.repeat(2 ** 30).length".into(), "limit"),
        (
            "string doubling",
            "export default () => { let s = 'ab'; while (true) s += s }".into(),
            "memory limit",
        ),
        ("huge array fill", "export default () => new Array(1e9).fill(0).length".into(), "limit"),
        (
            "object flood",
            "export default () => { const a = []; while (true) a.push({ n: a.length }) }".into(),
            "limit",
        ),
        ("10,000 nested parentheses", parens, "nested too deeply"),
        ("deeply nested JSON literal", json_literal, "nested too deeply"),
        (
            "catastrophic regex",
            "export default () => { const r = /^(a+)+$/; for (let i = 0; i < 1e6; i++) r.test('a'.repeat(24) + 'b') }"
                .into(),
            "time limit",
        ),
        (
            "throw in .then after a limit",
            "export default () => { Promise.resolve().then(() => { throw new Error('x') }); while (true) {} }"
                .into(),
            "time limit",
        ),
        ("import /etc/passwd", "import '/etc/passwd'; export default () => 1".into(), "cannot import"),
        (
            "eval escape",
            "export default () => eval('while (true) {}')".into(),
            "EvalError",
        ),
        (
            "giant sparse result",
            "export default () => { const a = []; a.length = 2 ** 32 - 1; return a }".into(),
            "larger than the limit",
        ),
    ];
    for (name, source, expected) in corpus {
        let started = Instant::now();
        let job = MechanicsJob::new(source, Value::Null, MechanicsConfig::default()).unwrap();
        let outcome = pool.run(job);
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
        assert_eq!(pool.run(next).unwrap(), json!(2), "after {name}");
    }
    let stats = pool.stats();
    assert!(stats.memory_limits_enforced);
    assert_eq!(stats.worker_count, 2, "{stats:?}");
}
