//! Integration tests of `mechanics-core`: real jobs through a real `MechanicsPool`.

mod endpoint;
mod engine;
mod fake_server;
mod globals;
mod hostile;
mod limits;
mod modules;
mod pool;
mod schema;
mod typescript;

use std::sync::OnceLock;

/// The same allocator the `mechanics` binary installs, so memory limits hold in these tests.
#[global_allocator]
static ALLOCATOR: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

use mechanics_core::job::{MechanicsConfig, MechanicsJob};
use mechanics_core::{MechanicsError, MechanicsPool, MechanicsPoolConfig};
use serde_json::Value;

/// One pool shared by tests that do not care about pool settings, so the suite does not pay for a
/// pool per test.
fn shared_pool() -> &'static MechanicsPool {
    static POOL: OnceLock<MechanicsPool> = OnceLock::new();
    POOL.get_or_init(|| {
        MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(2))
            .expect("the default pool starts")
    })
}

/// Runs `source` with `arg` on the shared pool.
fn run_js(source: &str, arg: Value) -> Result<Value, MechanicsError> {
    let job = MechanicsJob::new(source, arg, MechanicsConfig::default())?;
    shared_pool().run(job).result
}

/// Runs `source` and returns the error's kind and message, failing the test if the job succeeded.
fn run_js_err(source: &str) -> (String, String) {
    match run_js(source, Value::Null) {
        Ok(value) => panic!("expected the job to fail, it returned {value}"),
        Err(err) => (err.kind().to_string(), err.to_string()),
    }
}

/// Runs the test `name` again in a child process of this test binary, with
/// `MECHANICS_TEST_CHILD` set, and returns its standard output. Tests whose assertions concern
/// the whole process (resident memory, its threads) use it so that other tests running in this
/// process do not disturb them.
fn run_in_child(name: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("MECHANICS_TEST_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Whether this process is the child started by [`run_in_child`].
fn in_child() -> bool {
    std::env::var_os("MECHANICS_TEST_CHILD").is_some()
}
