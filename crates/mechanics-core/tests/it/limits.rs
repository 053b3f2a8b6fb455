//! Limits hold for the whole job: across call frames, in promise callbacks, for sizes.

use std::time::{Duration, Instant};

use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use serde_json::{Value, json};

use crate::shared_pool;

fn run_limited(
    source: &str,
    limits: MechanicsExecutionLimits,
) -> Result<Value, mechanics_core::MechanicsError> {
    let job = MechanicsJob::new(source, Value::Null, MechanicsConfig::default())
        .unwrap()
        .with_limits(limits);
    shared_pool().run(job).result
}

fn limits() -> MechanicsExecutionLimits {
    MechanicsExecutionLimits::default()
}

#[test]
fn loop_iterations_are_counted_over_the_whole_job_not_per_frame() {
    // 10 calls of 600 iterations each: no frame reaches 1,000, the job does.
    let source = "function spin() { let n = 0; for (let i = 0; i < 600; i++) n++; return n }
        export default () => { let t = 0; for (let k = 0; k < 10; k++) t += spin(); return t }";
    let tight = limits().with_max_loop_iterations(1_000).unwrap();
    let err = run_limited(source, tight).unwrap_err();
    assert_eq!(err.kind().as_str(), "limit_exceeded");
    assert!(
        err.to_string().contains("loop iteration limit of 1000"),
        "{err}"
    );
    let roomy = limits().with_max_loop_iterations(10_000).unwrap();
    assert_eq!(run_limited(source, roomy).unwrap(), json!(6000));
}

#[test]
fn every_loop_form_counts_toward_the_job_limit() {
    let tight = limits().with_max_loop_iterations(1_000).unwrap();
    for body in [
        "for (const x of A) n++;",
        "for (const x of A) { n++ }",
        "for (const k in O) { n++ }",
        "let i = 0; let x = 4 / 2; for (;;) { if (++i > 900) break; n++ }",
    ] {
        let source = format!(
            "const A = new Array(900).fill(0); const O = Object.fromEntries(A.map((_, i) => [i, i]));
             export default function () {{ let n = 0; function f() {{ {body} }}
             for (let k = 0; k < 900; k++) f(); return n }}"
        );
        let err = run_limited(&source, tight).unwrap_err();
        assert!(
            err.to_string().contains("loop iteration limit"),
            "{body}: {err}"
        );
    }
}

#[test]
fn loop_limit_also_counts_promise_callbacks() {
    let source = "export default async function () { let t = 0;
        for (let k = 0; k < 5; k++) { await null; for (let i = 0; i < 300; i++) t++ } return t }";
    let err = run_limited(source, limits().with_max_loop_iterations(1_000).unwrap()).unwrap_err();
    assert!(err.to_string().contains("loop iteration limit"), "{err}");
}

#[test]
fn time_limit_stops_synchronous_code_even_with_a_huge_loop_limit() {
    let limits = limits()
        .with_max_execution_time(Duration::from_millis(200))
        .unwrap()
        .with_max_loop_iterations(u64::MAX)
        .unwrap();
    for source in [
        "export default () => { while (true) {} }",
        "export default () => { for (;;) {} }",
        "export default () => { for (let i = 0; ; ) { i++; continue } }",
        "export default () => { let i = 0; do { i++ } while (i >= 0) }",
        "function f(n) { return n <= 1 ? n : f(n - 1) + f(n - 2) } export default () => f(60)",
        "export default () => { const a = [1, 2, 3]; while (true) a.map(x => x * 2) }",
    ] {
        let started = Instant::now();
        let err = run_limited(source, limits).unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            err.to_string().contains("time limit of 200 ms"),
            "{source}: {err}"
        );
        assert!(
            elapsed < Duration::from_millis(1200),
            "{source}: {elapsed:?}"
        );
    }
}

#[test]
fn a_try_catch_cannot_swallow_a_limit() {
    let source = "export default () => { for (let k = 0; k < 100; k++) {
        try { while (true) {} } catch (e) {} } return 'escaped' }";
    let limits = limits()
        .with_max_execution_time(Duration::from_millis(200))
        .unwrap()
        .with_max_loop_iterations(u64::MAX)
        .unwrap();
    let err = run_limited(source, limits).unwrap_err();
    assert_eq!(err.kind().as_str(), "limit_exceeded", "{err}");
}

#[test]
fn recursion_depth_and_stack_limits_apply() {
    let source = "function r(n) { return n === 0 ? 0 : 1 + r(n - 1) } export default () => r(100)";
    assert_eq!(run_limited(source, limits()).unwrap(), json!(100));
    let err = run_limited(source, limits().with_max_recursion_depth(50).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("recursion depth limit of 50"),
        "{err}"
    );
}

#[test]
fn source_and_result_sizes_are_bounded() {
    let source = format!("export default () => 1 // {}", "x".repeat(2_000));
    let err = run_limited(
        &source,
        limits().with_max_module_source_bytes(1_000).unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("more than the limit of 1000 bytes"),
        "{err}"
    );
    let big = "export default () => 'y'.repeat(5000)";
    let err = run_limited(big, limits().with_max_result_bytes(4_000).unwrap()).unwrap_err();
    assert_eq!(err.kind().as_str(), "limit_exceeded");
    assert_eq!(
        run_limited(big, limits().with_max_result_bytes(6_000).unwrap())
            .unwrap()
            .as_str()
            .map(str::len),
        Some(5000)
    );
}

#[test]
fn memory_limit_fails_a_job_that_keeps_allocating() {
    let source = "export default () => { const keep = []; while (true) keep.push(new Float64Array(1 << 16)) }";
    let limits = limits().with_max_memory_mb(32).unwrap();
    let err = run_limited(source, limits).unwrap_err();
    assert!(err.to_string().contains("memory limit of 32 MiB"), "{err}");
}

#[test]
fn invalid_limits_are_rejected_with_the_field_name() {
    for (json, field) in [
        (r#"{"max_execution_time_ms": 0}"#, "max_execution_time_ms"),
        (r#"{"max_loop_iterations": 0}"#, "max_loop_iterations"),
        (r#"{"max_memory_mb": 1000000}"#, "max_memory_mb"),
        (r#"{"max_result_bytes": 0}"#, "max_result_bytes"),
    ] {
        let err = serde_json::from_str::<MechanicsExecutionLimits>(json).unwrap_err();
        assert!(err.to_string().contains(field), "{json}: {err}");
    }
    let err = serde_json::from_str::<MechanicsExecutionLimits>(r#"{"max_time": 5}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

/// Resident memory after 100,000 jobs, measured in a child process so that other tests running
/// in this process do not disturb the figure. The jobs use a namespace import and a dynamic
/// import, which guards the Boa leak: a real module namespace object is never freed and keeps its
/// whole realm alive, so each job would leak a context if the engine let Boa create one.
#[test]
fn hundred_thousand_jobs_with_namespace_and_dynamic_imports_grow_resident_memory_by_less_than_20_mb()
 {
    if crate::in_child() {
        return memory_growth_child();
    }
    let stdout = crate::run_in_child(
        "limits::hundred_thousand_jobs_with_namespace_and_dynamic_imports_grow_resident_memory_by_less_than_20_mb",
    );
    let mut kinds = 0;
    for line in stdout.lines() {
        let Some(report) = line.strip_prefix("rss-growth-mb ") else {
            continue;
        };
        let (kind, growth) = report.split_once(' ').expect("kind and figure");
        let growth: f64 = growth.trim().parse().unwrap();
        assert!(growth < 20.0, "{kind}: resident memory grew by {growth} MB");
        kinds += 1;
    }
    assert_eq!(
        kinds,
        MEMORY_GROWTH_JOBS.len(),
        "every kind reports its growth: {stdout}"
    );
}

/// The jobs whose memory growth is measured, by kind. One job uses both import forms that Boa
/// would answer with a namespace object, so the 100,000 jobs cover both in one run.
const MEMORY_GROWTH_JOBS: [(&str, &str); 1] = [(
    "namespace-and-dynamic-import",
    "import * as hex from 'mechanics:hex'; \
     export default async (a) => { const b = await import('mechanics:base64'); \
     const byte = new Uint8Array([a & 255]); return { a, s: hex.encode(byte) + b.encode(byte) } }",
)];

fn memory_growth_child() {
    let pool = mechanics_core::MechanicsPool::new(
        mechanics_core::MechanicsPoolConfig::default().with_worker_count(2),
    )
    .unwrap();
    for (kind, source) in MEMORY_GROWTH_JOBS {
        let run = |i: usize| {
            let job = MechanicsJob::new(source, json!(i), MechanicsConfig::default()).unwrap();
            let result = pool.run(job).result.unwrap();
            assert_eq!(result["a"], json!(i), "{kind}");
        };
        // Warm up: caches, the collector's thresholds and the allocator's arenas settle first.
        for i in 0..5_000 {
            run(i);
        }
        let before = rss_mb();
        std::thread::scope(|scope| {
            for t in 0..2 {
                let run = &run;
                scope.spawn(move || (0..50_000).for_each(|i| run(t * 50_000 + i)));
            }
        });
        let growth = rss_mb() - before;
        #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
        {
            println!("\nrss-growth-mb {kind} {growth}");
        }
    }
}

fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / 1_000_000.0
}

#[test]
fn a_previous_jobs_garbage_does_not_stretch_the_next_jobs_memory_budget() {
    // The time limit is raised out of the way: on a loaded machine a debug build needs several
    // seconds to allocate 64 MiB of objects, and this test is about the memory limit alone.
    let limits = limits()
        .with_max_memory_mb(64)
        .unwrap()
        .with_max_loop_iterations(u64::MAX)
        .unwrap()
        .with_max_execution_time(std::time::Duration::from_secs(60))
        .unwrap();
    let pool = mechanics_core::MechanicsPool::new(
        mechanics_core::MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_execution_limits(limits),
    )
    .unwrap();
    let objects = |n: u32| {
        let source = format!(
            "export default () => {{ const a = []; for (let i = 0; i < {n}; i++) {{ const o = {{ i }}; o.self = o; a.push(o) }} return a.length }}"
        );
        pool.run(MechanicsJob::new(source, Value::Null, MechanicsConfig::default()).unwrap())
            .result
    };
    let alone = objects(500_000).unwrap_err();
    assert!(alone.to_string().contains("memory limit"), "{alone}");
    for _ in 0..3 {
        assert_eq!(objects(300_000).unwrap(), json!(300_000));
        let after = objects(500_000).unwrap_err();
        assert!(after.to_string().contains("memory limit"), "{after}");
    }
}

#[test]
fn loop_limit_is_exact_across_budget_boundaries() {
    // Instrumented loops call the native tick once per budget of iterations; the job's count must
    // still be exact: 1,000 condition evaluations pass a limit of 1,000, 1,001 do not.
    let tight = limits().with_max_loop_iterations(1_000).unwrap();
    let fits = "export default () => { let n = 0; while (n < 999) n++; return n }";
    assert_eq!(run_limited(fits, tight).unwrap(), json!(999));
    let over = "export default () => { let n = 0; while (n < 1000) n++; return n }";
    let err = run_limited(over, tight).unwrap_err();
    assert!(
        err.to_string().contains("loop iteration limit of 1000"),
        "{err}"
    );
}

/// What a job can try against the budgets the instrumentation counts down: read their names from
/// its own functions' source text, then write, define, delete or shadow them through every door
/// JavaScript offers without naming them in the source. Returns what it found and what each
/// attempt did; with `arg.spin` it then loops forever, and the limits must still stop it.
const TAMPER: &str = r#"
function probe() { for (const x of []) ; while (false) ; return 1 }
const attempt = (what, f) => { try { f(); return what + ': done' } catch (e) { return what + ': ' + e.name } };
export default function (arg) {
  const names = [...new Set(String(probe).match(/__mechanics_\w+/g) || [])];
  const big = 1e15;
  const report = [];
  for (const name of names) {
    report.push(attempt('assign global', () => { globalThis[name] = big }));
    report.push(attempt('define getter', () => Object.defineProperty(globalThis, name,
      { get() { return big }, set() {}, configurable: true })));
    report.push(attempt('delete global', () => { delete globalThis[name] }));
    report.push(attempt('prototype getter', () => Object.defineProperty(Object.prototype, name,
      { get() { return big }, set() {}, configurable: true })));
    report.push(attempt('eval', () => eval(name + ' = ' + big)));
    report.push(attempt('indirect eval', () => (0, globalThis.eval)('var ' + name + ' = ' + big)));
    report.push(attempt('Function', () => Function(name + ' = ' + big)()));
    report.push(attempt('generator Function', () => (function* () {}).constructor(name + ' = ' + big)().next()));
    report.push(attempt('async Function', () => (async function () {}).constructor(name + ' = ' + big)()));
    report.push(attempt('setTimeout string', () => setTimeout(name + ' = ' + big, 0)));
    report.push(attempt('Reflect.set', () => Reflect.set(globalThis, name, big)));
  }
  if (arg && arg.spin) {
    let n = 0;
    while (true) { n++; probe() }
  }
  return { names, report };
}
"#;

#[test]
fn a_job_cannot_reset_read_or_shadow_the_budgets_the_limits_count_down() {
    let job = |spin: bool, limits: MechanicsExecutionLimits| {
        let job = MechanicsJob::new(TAMPER, json!({ "spin": spin }), MechanicsConfig::default())
            .unwrap()
            .with_limits(limits);
        shared_pool().run(job).result
    };
    // The names are there for the reading: the defence must not rest on hiding them.
    let seen = job(false, limits()).unwrap();
    let names: Vec<&str> = seen["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("__mechanics_loops_left_"))
            && names
                .iter()
                .any(|n| n.starts_with("__mechanics_calls_left_")),
        "{seen}"
    );
    // No way of compiling a string works, so nothing can name a budget at run time.
    for line in seen["report"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        for door in [
            "eval:",
            "Function:",
            "generator Function:",
            "async Function:",
            "setTimeout string:",
        ] {
            if line.starts_with(door) {
                assert!(!line.ends_with(": done"), "{line}");
            }
        }
    }

    // After every attempt, an endless loop still meets the loop limit...
    let err = job(true, limits().with_max_loop_iterations(10_000).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("loop iteration limit of 10000"),
        "{err}"
    );
    // ...and, with no loop limit to speak of, the time limit, within a second of it.
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let err = job(
        true,
        limits()
            .with_max_execution_time(limit)
            .unwrap()
            .with_max_loop_iterations(u64::MAX)
            .unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("execution time limit"), "{err}");
    assert!(
        started.elapsed() < limit + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn code_that_runs_before_the_budgets_are_declared_or_after_a_limit_is_still_stopped() {
    let limits = limits()
        .with_max_execution_time(Duration::from_millis(300))
        .unwrap()
        .with_max_loop_iterations(u64::MAX)
        .unwrap();
    for source in [
        // The budgets are declared on the module's last line: hoisted functions and top-level
        // code run before it is reached.
        "spin(); function spin() { for (;;) {} } export default () => 1",
        "while (true) {} export default () => 1",
        "const f = () => f(); for (const x of [1]) { for (;;) {} } export default () => 1",
        // A limit thrown leaves the budget at zero: a `finally` must not get a fresh budget.
        "export default () => { try { for (;;) {} } finally { while (true) {} } }",
        "export default () => { const r = (n) => { try { return r(n + 1) } finally { for (;;) {} } }; return r(0) }",
    ] {
        let started = Instant::now();
        let err = run_limited(source, limits).unwrap_err();
        assert_eq!(err.kind().as_str(), "limit_exceeded", "{source}: {err}");
        assert!(
            started.elapsed() < Duration::from_millis(300) + Duration::from_secs(1),
            "{source}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_with_statement_cannot_put_an_object_in_front_of_the_budgets() {
    // Modules are strict code: `with` does not even parse, so nothing runs.
    let source = "const scope = new Proxy({}, { has: () => true, get: () => 1e15 });
        export default () => { with (scope) { while (true) {} } }";
    let err = run_limited(source, limits()).unwrap_err();
    assert!(err.to_string().contains("SyntaxError"), "{err}");
}
