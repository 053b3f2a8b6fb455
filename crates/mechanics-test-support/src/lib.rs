//! `mechanics-test-support`: what the test suites and benchmarks of several Mechanics crates
//! share: the hostile scripts that the engine's and the fleet's tests both run, the
//! benchmarks' `MECHANICS_BENCH_SCALE` knob, running out of descriptors on purpose, and the real
//! PostgreSQL server of the tests that need one ([`postgres`]: a fresh database per test, server
//! restarts), and Docker images, networks and containers built on this machine ([`docker`]).
//!
//! Test-only: no crate depends on it outside `[dev-dependencies]`.

pub mod docker;
pub mod postgres;
pub mod task_echo;
pub mod tls;

/// Hostile job modules: a name, the module source, and a piece of the error message each must
/// end with. Every one must fail cleanly within its time limit plus grace, and leave the pool or
/// node serving the next job.
pub fn hostile_corpus() -> Vec<(&'static str, String, &'static str)> {
    let nested = |open: &str, inner: &str, close: &str, depth: usize| {
        format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
    };
    vec![
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
        (
            "10,000 nested parentheses",
            format!("export default () => {}", nested("(", "1", ")", 10_000)),
            "nested too deeply",
        ),
        (
            "deeply nested JSON literal",
            format!("export default () => {}", nested("[", "", "]", 100_000)),
            "nested too deeply",
        ),
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
        ("eval escape", "export default () => eval('while (true) {}')".into(), "EvalError"),
        (
            "giant sparse result",
            "export default () => { const a = []; a.length = 2 ** 32 - 1; return a }".into(),
            "larger than the limit",
        ),
        // The web globals: timers never outlast the time limit, native loops stop at the limits.
        (
            "a 10-minute timer",
            "export default () => new Promise((r) => setTimeout(r, 600000))".into(),
            "time limit",
        ),
        (
            "endless setTimeout chain",
            "export default () => new Promise(() => { const f = () => setTimeout(f, 0); f() })".into(),
            "time limit",
        ),
        (
            "endless setInterval",
            "export default () => new Promise(() => setInterval(() => {}, 0))".into(),
            "time limit",
        ),
        (
            "queueMicrotask recursion",
            "export default () => new Promise(() => { const f = () => queueMicrotask(f); f() })".into(),
            "time limit",
        ),
        (
            "structuredClone flood",
            "export default () => { const a = []; for (let i = 0; i < 50000; i++) a.push({ i }); const c = []; while (true) c.push(structuredClone(a)) }"
                .into(),
            "limit",
        ),
        (
            "huge TextDecoder output",
            "export default () => { const p = new TextEncoder().encode('\\u00e9'.repeat(2 ** 22)); const b = new Uint8Array(6 * p.length); for (let i = 0; i < 6; i++) b.set(p, i * p.length); return new TextDecoder().decode(b).length }"
                .into(),
            "limit",
        ),
        (
            "huge TextEncoder output",
            "export default () => { let s = '\\u20ac'.repeat(2 ** 22); s = s + s + s + s; return new TextEncoder().encode(s).length }"
                .into(),
            "limit",
        ),
        (
            "getRandomValues past its quota",
            "export default () => crypto.getRandomValues(new Uint8Array(2 ** 20))".into(),
            "QuotaExceededError",
        ),
        (
            "fetch to the metadata service",
            "export default () => fetch('http://169.254.169.254/latest/meta-data/')".into(),
            "mechanics:endpoint",
        ),
    ]
}

/// The benchmarks' scale: `MECHANICS_BENCH_SCALE` when it is a positive number, else 1.
pub fn bench_scale() -> f64 {
    std::env::var("MECHANICS_BENCH_SCALE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(1.0)
}

/// `base` scaled by [`bench_scale`], and at least `min`.
pub fn bench_count(base: usize, min: usize) -> usize {
    ((base as f64 * bench_scale()) as usize).max(min)
}

/// Set in the environment of a test run again in a child process.
const CHILD_ENV: &str = "MECHANICS_TEST_CHILD";

/// Whether this process is a child started by [`passes_in_a_child_process`].
pub fn in_child_process() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the test `name` (its path in the test binary, `module::test`) again, alone, in a child
/// process of the same binary, and asserts that it passed there. For a test that must do what
/// would disturb the others running in this process, such as [`exhaust_descriptors`]; the test
/// calls this first and returns unless [`in_child_process`].
pub fn passes_in_a_child_process(name: &str) {
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Lowers this process's descriptor limit and opens descriptors until none is left; dropping
/// the files ends the shortage.
///
/// Only in a child process ([`passes_in_a_child_process`]): the tests of one binary share its
/// descriptor table, and starving it would fail them all.
pub fn exhaust_descriptors() -> Vec<std::fs::File> {
    assert!(in_child_process(), "never starve the whole test binary");
    let highest = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's descriptors")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct passed by reference.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = highest + 32;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut files = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(err) => {
                assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
                return files;
            }
        }
    }
}
