//! Integration tests of `mechanics-runtime`: the supervisor with test nodes under paused Tokio
//! time (policies, breaker, health, shutdown), and with real child processes and real signals.

mod breaker;
mod health;
mod launcher;
mod policy;
mod pressure;
mod process;
mod resources;
mod shutdown;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mechanics_runtime::{
    BreakerConfig, HealthStatus, NodeFailure, NodeRunner, NodeSnapshot, RestartPolicy,
    ShutdownHandle, ShutdownSignal, Supervisor, SupervisorConfig, resource_exhaustion,
};
use tokio::time::Instant;

/// How each instance of a [`TestNode`] ends after running for its `run_for`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Clean,
    Fail,
    Panic,
}

/// What a [`TestNode`] does and what it saw; shared between the node and the test, and
/// changeable while the node runs.
struct Script {
    run_for: Mutex<Duration>,
    ending: Mutex<Ending>,
    ignore_shutdown: Mutex<bool>,
    /// The health of check number n (from 0); `None` hangs.
    health: Mutex<Box<dyn Fn(u32) -> Option<HealthStatus> + Send>>,
    health_calls: AtomicU32,
    starts: Mutex<Vec<Instant>>,
    /// Launches still to fail as if this process were out of descriptors.
    starved_launches: AtomicU32,
    /// When those launches were tried.
    starved_at: Mutex<Vec<Instant>>,
    live: AtomicU32,
    max_live: AtomicU32,
}

/// The `NodeRunner` of the policy, breaker and health tests.
#[derive(Clone)]
struct TestNode {
    script: Arc<Script>,
}

impl TestNode {
    /// A node whose instances run for `run_for` and then end with `ending`, always healthy.
    fn new(run_for: Duration, ending: Ending) -> Self {
        TestNode {
            script: Arc::new(Script {
                run_for: Mutex::new(run_for),
                ending: Mutex::new(ending),
                ignore_shutdown: Mutex::new(false),
                health: Mutex::new(Box::new(|_| Some(HealthStatus::Healthy))),
                health_calls: AtomicU32::new(0),
                starts: Mutex::new(Vec::new()),
                starved_launches: AtomicU32::new(0),
                starved_at: Mutex::new(Vec::new()),
                live: AtomicU32::new(0),
                max_live: AtomicU32::new(0),
            }),
        }
    }

    /// A node that runs until stopped.
    fn forever() -> Self {
        TestNode::new(Duration::from_secs(1_000_000), Ending::Clean)
    }

    /// A node whose instances fail at once.
    fn failing() -> Self {
        TestNode::new(Duration::ZERO, Ending::Fail)
    }

    fn set_run_for(&self, run_for: Duration) {
        *self.script.run_for.lock().unwrap() = run_for;
    }

    fn set_health(&self, health: impl Fn(u32) -> Option<HealthStatus> + Send + 'static) {
        *self.script.health.lock().unwrap() = Box::new(health);
    }

    /// Makes the next `n` launches fail as a `ProcessNode`'s spawn does when this process is out
    /// of descriptors.
    fn starve_launches(&self, n: u32) {
        self.script.starved_launches.store(n, Ordering::SeqCst);
    }

    fn starved_at(&self) -> Vec<Instant> {
        self.script.starved_at.lock().unwrap().clone()
    }

    fn ignore_shutdown(&self) {
        *self.script.ignore_shutdown.lock().unwrap() = true;
    }

    fn starts(&self) -> Vec<Instant> {
        self.script.starts.lock().unwrap().clone()
    }

    fn health_calls(&self) -> u32 {
        self.script.health_calls.load(Ordering::SeqCst)
    }

    fn live(&self) -> u32 {
        self.script.live.load(Ordering::SeqCst)
    }

    fn max_live(&self) -> u32 {
        self.script.max_live.load(Ordering::SeqCst)
    }
}

/// Counts a live instance until dropped, however the instance ends.
struct Live<'a>(&'a Script);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NodeRunner for TestNode {
    async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure> {
        let script = &*self.script;
        let starved = script
            .starved_launches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if starved {
            script.starved_at.lock().unwrap().push(Instant::now());
            let err = std::io::Error::from_raw_os_error(libc::EMFILE);
            let resource = resource_exhaustion(&err).expect("EMFILE is resource exhaustion");
            return Err(NodeFailure::launch_starved(
                resource,
                format!("cannot start: {err}"),
            ));
        }
        script.starts.lock().unwrap().push(Instant::now());
        let live = script.live.fetch_add(1, Ordering::SeqCst) + 1;
        script.max_live.fetch_max(live, Ordering::SeqCst);
        let _live = Live(script);
        let run_for = *script.run_for.lock().unwrap();
        let ignore_shutdown = *script.ignore_shutdown.lock().unwrap();
        tokio::select! {
            () = tokio::time::sleep(run_for) => {}
            () = shutdown.requested(), if !ignore_shutdown => return Ok(()),
        }
        let ending = *script.ending.lock().unwrap();
        match ending {
            Ending::Clean => Ok(()),
            Ending::Fail => Err(NodeFailure {
                stderr_tail: vec!["last words".into()],
                ..NodeFailure::new("boom")
            }),
            Ending::Panic => panic!("node exploded"),
        }
    }

    async fn health_check(&self) -> HealthStatus {
        let call = self.script.health_calls.fetch_add(1, Ordering::SeqCst);
        let health = (self.script.health.lock().unwrap())(call);
        match health {
            Some(health) => health,
            None => std::future::pending().await,
        }
    }
}

/// Settings for paused-time tests: health checks off, no jitter, a breaker that never trips
/// unless a test wants one.
fn config(policy: RestartPolicy) -> SupervisorConfig {
    SupervisorConfig {
        restart_policy: policy,
        health_check_interval: Duration::ZERO,
        breaker: BreakerConfig {
            max_crashes_in_window: u32::MAX,
            ..BreakerConfig::default()
        },
        ..SupervisorConfig::default()
    }
}

fn supervisor(config: SupervisorConfig) -> Supervisor {
    Supervisor::new(config, ShutdownHandle::new())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The gaps between consecutive start times.
fn gaps(starts: &[Instant]) -> Vec<Duration> {
    starts.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

/// Waits (in paused time this advances the clock) until the node's snapshot satisfies `check`,
/// and returns it. Fails after an hour of (virtual or real) time.
async fn wait_for(
    supervisor: &Supervisor,
    name: &str,
    check: impl FnMut(&NodeSnapshot) -> bool,
) -> NodeSnapshot {
    let mut watch = supervisor.watch(name).expect("the node is supervised");
    match tokio::time::timeout(Duration::from_secs(3600), watch.wait_for(check)).await {
        Ok(Ok(snapshot)) => snapshot.clone(),
        Ok(Err(_)) => panic!("node {name} ended: {:?}", supervisor.snapshot(name)),
        Err(_) => panic!(
            "timed out waiting on node {name}: {:?}",
            supervisor.snapshot(name)
        ),
    }
}

/// Lets every ready task run without advancing paused time.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Runs the test `name` again in a child process of this test binary with
/// `MECHANICS_TEST_CHILD` set (and `env`), returning its stdout. Tests that measure the whole
/// process (descriptors, children) or signal it use this, so other tests do not disturb them.
fn run_in_child(name: &str, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("MECHANICS_TEST_CHILD", "1")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Whether this process is the child started by [`run_in_child`].
fn in_child() -> bool {
    std::env::var_os("MECHANICS_TEST_CHILD").is_some()
}
