//! The local fleet with real node processes of the `mechanics` binary: hostile scripts beside
//! healthy jobs, `kill -9` mid-job, the watchdog, the memory cap, the crash rule, recycling, and
//! no process left after shutdown.

use std::time::{Duration, Instant};

use mechanics_node::{Fleet, FleetConfig, FleetError, ShutdownHandle};
use mechanics_proto::node::JobRequest;
use mechanics_runtime::{ExponentialBackoff, RestartPolicy};
use serde_json::{Value, json};

/// A fleet of `nodes` nodes named `<prefix>-N`, restarting quickly after a failure.
async fn fleet(prefix: &str, nodes: usize, tweak: impl FnOnce(&mut FleetConfig)) -> Fleet {
    let mut config = FleetConfig::new(env!("CARGO_BIN_EXE_mechanics"));
    config.nodes = nodes;
    config.name_prefix = prefix.into();
    config.stop_timeout = Duration::from_secs(1);
    config.supervisor.restart_policy = RestartPolicy::OnFailure(ExponentialBackoff::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
    ));
    tweak(&mut config);
    Fleet::start(config, ShutdownHandle::new()).await.unwrap()
}

fn job(id: &str, source: &str) -> JobRequest {
    JobRequest::new(id, source, Value::Null)
}

fn healthy(n: u64) -> JobRequest {
    JobRequest::new(
        format!("healthy-{n}"),
        "export default (x) => x + 1",
        json!(n),
    )
}

/// A job that keeps its worker busy for `ms` milliseconds, then returns `"done"`.
fn busy(id: &str, ms: u64, limit_ms: u64) -> JobRequest {
    let mut request = job(
        id,
        &format!(
            "export default () => {{ const end = Date.now() + {ms}; while (Date.now() < end) {{}} return 'done' }}"
        ),
    );
    request.limits = Some(json!({
        "max_execution_time_ms": limit_ms,
        "max_loop_iterations": 1_000_000_000_000u64,
    }));
    request
}

/// Live (non-zombie) processes whose command line names a node `<prefix>-*`, with their node name.
fn node_processes(prefix: &str) -> Vec<(i32, String)> {
    let needle = format!("--name\0{prefix}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if let Some(at) = cmdline.find(&needle) {
            let name = cmdline[at + "--name\0".len()..]
                .split('\0')
                .next()
                .unwrap_or_default()
                .to_owned();
            found.push((pid, name));
        }
    }
    found
}

fn pid_of(prefix: &str, node: &str) -> i32 {
    let pids: Vec<i32> = node_processes(prefix)
        .into_iter()
        .filter(|(_, name)| name == node)
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(pids.len(), 1, "one process for {node}: {pids:?}");
    pids[0]
}

fn resident_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shuts the fleet down and checks that none of its processes is left.
async fn shut_down(fleet: Fleet, prefix: &str) {
    fleet.shutdown().await;
    assert_eq!(node_processes(prefix), vec![], "node processes left behind");
}

const HOSTILE_LIMIT: Duration = Duration::from_millis(1000);
const GRACE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_scripts_fail_cleanly_in_time_while_healthy_jobs_complete_beside_them() {
    const PREFIX: &str = "hostile";
    const CAP_MB: u64 = 512;
    let fleet = fleet(PREFIX, 2, |c| c.memory_cap_mb = CAP_MB).await;

    // Healthy jobs run beside the hostile ones the whole time; a sampler watches node memory.
    let done = stop_flag();
    let healthy_jobs = tokio::spawn({
        let (fleet, done) = (fleet.clone(), done.clone());
        async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let result = fleet.run(&healthy(n)).await.map(|r| r.result);
                assert_eq!(result, Ok(json!(n + 1)), "healthy job {n}");
            }
            n
        }
    });
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut peak, mut peak_total) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let sizes: Vec<u64> = node_processes(PREFIX)
                    .into_iter()
                    .map(|(pid, _)| resident_kib(pid))
                    .collect();
                peak = peak.max(sizes.iter().copied().max().unwrap_or(0));
                peak_total = peak_total.max(sizes.iter().sum());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak, peak_total)
        }
    });

    for (index, (name, source, expected)) in mechanics_test_support::hostile_corpus()
        .into_iter()
        .enumerate()
    {
        let mut request = job(&format!("hostile-{index}"), &source);
        request.limits = Some(json!({
            "max_execution_time_ms": HOSTILE_LIMIT.as_millis() as u64,
            "max_loop_iterations": 1_000_000_000_000u64,
            "max_memory_mb": 64,
        }));
        let started = Instant::now();
        let outcome = fleet.run(&request).await;
        let elapsed = started.elapsed();
        match outcome {
            Err(FleetError::Script { kind, message, .. }) => {
                assert!(
                    kind == "execution" || kind == "limit_exceeded",
                    "{name}: kind {kind}"
                );
                assert!(
                    message.contains(expected),
                    "{name}: expected {expected:?} in {message}"
                );
            }
            other => panic!("{name}: expected a script error, got {other:?}"),
        }
        assert!(elapsed < HOSTILE_LIMIT + GRACE, "{name}: took {elapsed:?}");
    }

    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let healthy_count = healthy_jobs.await.unwrap();
    let (peak_node_kib, peak_total_kib) = sampler.await.unwrap();
    assert!(healthy_count > 20, "only {healthy_count} healthy jobs ran");
    // Memory bombs hit the jobs' own 64 MiB limits: every node stayed under its cap, and the
    // fleet as a whole (recycled processes included) under the sum of the caps. (The test
    // process's own memory is no measure here: other tests run beside this one in it.)
    assert!(
        peak_node_kib < CAP_MB * 1024,
        "a node reached {peak_node_kib} KiB"
    );
    assert!(
        peak_total_kib < 2 * CAP_MB * 1024,
        "the nodes reached {peak_total_kib} KiB"
    );
    // Threads given up on (regex, parked allocations) made their nodes ask for recycling.
    let recycles: u64 = fleet.nodes().iter().map(|n| n.recycles).sum();
    assert!(recycles >= 1, "{:?}", fleet.nodes());
    shut_down(fleet, PREFIX).await;
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_gives_a_retryable_error_and_the_node_comes_back() {
    const PREFIX: &str = "kill9";
    let fleet = fleet(PREFIX, 2, |_| {}).await;
    let running = tokio::spawn({
        let fleet = fleet.clone();
        async move { fleet.run(&busy("victim", 5_000, 10_000)).await }
    });
    eventually("the job is in flight", || {
        fleet.nodes().iter().any(|n| n.in_flight == 1)
    })
    .await;
    let node = fleet
        .nodes()
        .into_iter()
        .find(|n| n.in_flight == 1)
        .unwrap()
        .name;
    let pid = pid_of(PREFIX, &node);
    // A node runs untrusted scripts: it inherits none of this process's environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|v| v.split(|b| *b == b'=').next())
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert!(std::env::var_os("PATH").is_some());
    assert!(
        names
            .iter()
            .all(|n| n == "MECHANICS_NODE_TOKEN" || n == "RUST_LOG"),
        "{names:?}"
    );
    signal(pid, libc::SIGKILL);
    let err = running.await.unwrap().unwrap_err();
    assert!(matches!(err, FleetError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());

    eventually("the node is restarted", || {
        let info = fleet.nodes().into_iter().find(|n| n.name == node).unwrap();
        let snapshot = info.snapshot.unwrap();
        snapshot.starts == 2 && info.address.is_some()
    })
    .await;
    assert_ne!(pid_of(PREFIX, &node), pid);
    let snapshot = fleet.supervisor().snapshot(&node).unwrap();
    assert!(
        snapshot.last_exit.unwrap().status.contains("SIGKILL"),
        "a kill -9 death is recorded"
    );
    // The fleet keeps serving, on both nodes.
    let results = join_all((0..8).map(|n| {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.run(&healthy(n)).await.map(|r| r.result) })
    }))
    .await;
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result, Ok(json!(n as u64 + 1)));
    }
    shut_down(fleet, PREFIX).await;
}

async fn join_all<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_kills_a_frozen_node_and_a_job_that_kills_twice_is_sandbox_crashed() {
    const PREFIX: &str = "watchdog";
    let fleet = fleet(PREFIX, 1, |c| c.watchdog_grace = Duration::from_millis(300)).await;
    for attempt in 1..=2 {
        // Busy long enough that the job is surely still running when the node is frozen.
        let mut request = busy("frozen", 1500, 2000);
        request.attempt = attempt;
        let running = tokio::spawn({
            let fleet = fleet.clone();
            async move {
                let started = Instant::now();
                (fleet.run(&request).await, started.elapsed())
            }
        });
        eventually("the job is in flight", || fleet.nodes()[0].in_flight == 1).await;
        // A node that stops answering altogether (here: frozen by SIGSTOP) is what the engine's
        // own limits cannot handle.
        let pid = pid_of(PREFIX, "watchdog-1");
        signal(pid, libc::SIGSTOP);
        let (outcome, elapsed) = running.await.unwrap();
        assert!(
            elapsed < Duration::from_millis(2000 + 300) + Duration::from_secs(2),
            "{elapsed:?}"
        );
        match (attempt, outcome) {
            (1, Err(err @ FleetError::Transport { .. })) => {
                assert!(err.is_retryable());
                assert!(err.to_string().contains("overran"), "{err}");
            }
            (2, Err(err @ FleetError::SandboxCrashed { crashes: 2 })) => {
                assert!(!err.is_retryable());
                assert_eq!(err.kind(), "sandbox_crashed");
            }
            (attempt, other) => panic!("attempt {attempt}: {other:?}"),
        }
        eventually("the frozen node is replaced", || {
            fleet.nodes()[0]
                .snapshot
                .as_ref()
                .is_some_and(|s| s.starts == u64::from(attempt) + 1)
                && fleet.nodes()[0].address.is_some()
        })
        .await;
        let last_exit = fleet
            .supervisor()
            .snapshot("watchdog-1")
            .unwrap()
            .last_exit
            .unwrap();
        assert!(last_exit.status.contains("overran"), "{}", last_exit.status);
    }
    // The job is not run again; other jobs are.
    let err = fleet.run(&busy("frozen", 1, 2000)).await.unwrap_err();
    assert_eq!(err, FleetError::SandboxCrashed { crashes: 2 });
    assert_eq!(fleet.run(&healthy(1)).await.map(|r| r.result), Ok(json!(2)));
    shut_down(fleet, PREFIX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_cap_ends_a_node_and_the_fleet_restarts_it() {
    const PREFIX: &str = "memcap";
    let fleet = fleet(PREFIX, 1, |c| {
        c.memory_cap_mb = 128;
        c.recycle_memory_mb = 120;
    })
    .await;
    // 300 MiB of live strings, within the job's own (raised) memory limit: only the node's cap
    // stops it.
    let mut hog = job(
        "hog",
        "export default () => { const a = []; for (let i = 0; i < 300; i++) a.push('x'.repeat(1 << 20) + i); return a.length }",
    );
    hog.limits =
        Some(json!({ "max_memory_mb": 2048, "max_loop_iterations": 1_000_000_000_000u64 }));
    let err = fleet.run(&hog).await.unwrap_err();
    assert!(matches!(err, FleetError::Transport { .. }), "{err:?}");
    eventually("the node is restarted", || {
        fleet.nodes()[0]
            .snapshot
            .as_ref()
            .is_some_and(|s| s.starts == 2)
            && fleet.nodes()[0].address.is_some()
    })
    .await;
    let last_exit = fleet
        .supervisor()
        .snapshot("memcap-1")
        .unwrap()
        .last_exit
        .unwrap();
    assert!(
        last_exit.status.contains("86"),
        "exit status of the cap: {}",
        last_exit.status
    );
    assert!(
        last_exit
            .stderr_tail
            .iter()
            .any(|line| line.contains("above the node's cap")),
        "{:?}",
        last_exit.stderr_tail
    );
    // The second death of the same job fails it for good.
    let err = fleet.run(&hog).await.unwrap_err();
    assert_eq!(err, FleetError::SandboxCrashed { crashes: 2 });
    assert_eq!(fleet.run(&healthy(7)).await.map(|r| r.result), Ok(json!(8)));
    shut_down(fleet, PREFIX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_recycled_after_its_job_quota_without_failing_a_job() {
    const PREFIX: &str = "recycle";
    let fleet = fleet(PREFIX, 1, |c| c.recycle_after_jobs = 3).await;
    let first_pid = pid_of(PREFIX, "recycle-1");
    let mut tasks = Vec::new();
    for n in 0..12 {
        let fleet = fleet.clone();
        tasks.push(tokio::spawn(async move {
            fleet.run(&healthy(n)).await.map(|r| r.result)
        }));
        if n % 4 == 3 {
            // Some jobs arrive while the node drains or restarts.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (n, result) in join_all(tasks.into_iter()).await.into_iter().enumerate() {
        assert_eq!(result, Ok(json!(n as u64 + 1)), "job {n}");
    }
    eventually("the last recycle is done", || !fleet.nodes()[0].draining).await;
    let info = &fleet.nodes()[0];
    assert!(info.recycles >= 2, "{info:?}");
    // Recycling is a stop, not a death: the breaker never sees it.
    let snapshot = info.snapshot.clone().unwrap();
    assert_eq!(snapshot.deaths, 0, "{snapshot:?}");
    assert_ne!(pid_of(PREFIX, "recycle-1"), first_pid);
    shut_down(fleet, PREFIX).await;
}
