//! `ProcessNode` with real child processes and real signals, in real time (generous deadlines:
//! the machine may be busy; no assertion depends on a process being fast).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mechanics_runtime::{
    BreakerConfig, BreakerState, ExponentialBackoff, HealthStatus, NodeSnapshot, NodeState,
    ProcessNode, RestartPolicy, RuntimeError, ShutdownHandle, Supervisor, SupervisorConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::{ms, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

fn sh(script: &str) -> ProcessNode {
    ProcessNode::new("sh").args(["-c", script])
}

fn real_supervisor(policy: RestartPolicy) -> Supervisor {
    Supervisor::new(
        SupervisorConfig {
            restart_policy: policy,
            health_check_interval: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
            ..SupervisorConfig::default()
        },
        ShutdownHandle::new(),
    )
}

fn at_once() -> RestartPolicy {
    RestartPolicy::Always {
        delay: Duration::ZERO,
    }
}

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mechanics-runtime-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether the process exists at all (a zombie still exists: it has not been reaped).
fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the process is running (not gone, not a zombie). Orphans of a killed group are
/// reparented to init, which on some machines never reaps them: they stay zombies that are
/// neither running nor ours.
fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z')
}

/// Waits until none of `pids` exists: every one has exited and been reaped.
async fn assert_all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| exists(pid)) {
        assert!(
            Instant::now() < deadline,
            "still present: {:?}",
            pids.iter().filter(|&&p| exists(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(ms(20)).await;
    }
}

fn read_pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect()
}

async fn wait_real(
    sup: &Supervisor,
    name: &str,
    check: impl FnMut(&NodeSnapshot) -> bool,
) -> NodeSnapshot {
    tokio::time::timeout(DEADLINE, wait_for(sup, name, check))
        .await
        .unwrap_or_else(|_| {
            panic!("timed out waiting on {name}: {:?}", sup.snapshot(name));
        })
}

/// The announced address, waiting for it.
async fn address(receiver: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    next_address(receiver, "").await
}

/// The first announced address other than `previous`, waiting for it.
async fn next_address(
    receiver: &mut tokio::sync::watch::Receiver<Option<String>>,
    previous: &str,
) -> String {
    let fresh = |address: &Option<String>| address.as_deref().is_some_and(|a| a != previous);
    let announced = tokio::time::timeout(DEADLINE, receiver.wait_for(fresh)).await;
    announced
        .expect("announced in time")
        .unwrap()
        .clone()
        .unwrap()
}

/// A `tracing` writer into a shared buffer, to check what reached the logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_crash_looping_child_trips_the_breaker_at_the_sixth_death_and_the_error_names_it() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread test runtime runs every task on this thread, so the default applies to
    // the supervisor's tasks too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let sup = real_supervisor(at_once());
    sup.add(
        "crashy",
        sh("echo hello from $$; echo \"boom $$\" >&2; exit 1"),
    )
    .unwrap();
    let snapshot = wait_real(&sup, "crashy", |s| s.state == NodeState::Tripped).await;
    assert_eq!(
        (snapshot.starts, snapshot.deaths, snapshot.breaker),
        (6, 6, BreakerState::Tripped)
    );
    let last = snapshot.last_exit.unwrap();
    assert_eq!(last.status, "exit status: 1");
    assert_eq!(last.stderr_tail.len(), 1);
    assert!(
        last.stderr_tail[0].starts_with("boom "),
        "{:?}",
        last.stderr_tail
    );
    tokio::time::sleep(ms(500)).await;
    assert_eq!(sup.snapshot("crashy").unwrap().starts, 6, "not respawned");
    sup.shutdown().await;

    let logs = logs.text();
    let error = logs
        .lines()
        .find(|line| line.contains("crash-loop breaker tripped"))
        .expect("the trip is logged");
    assert!(
        error.contains("ERROR") && error.contains("node=crashy"),
        "{error}"
    );
    assert!(
        error.contains("died 6 times within 60 s") && error.contains("exit status: 1"),
        "{error}"
    );
    assert!(error.contains(&last.stderr_tail[0]), "{error}");
    let stdout = logs
        .lines()
        .find(|line| line.contains("hello from"))
        .expect("stdout is forwarded");
    assert!(
        stdout.contains("node=crashy") && stdout.contains("stream=\"stdout\""),
        "{stdout}"
    );
    assert!(
        logs.lines()
            .any(|line| line.contains("boom") && line.contains("stream=\"stderr\""))
    );
}

#[tokio::test]
async fn instances_never_overlap_and_a_killed_instance_is_reaped_before_the_next_starts() {
    let dir = temp_dir("overlap");
    let log = dir.join("log");
    // Each instance appends start and end lines around a pause; overlapping instances would
    // interleave them.
    let script = format!(
        "echo start $$ >> {0}; sleep 0.02; echo end $$ >> {0}",
        log.display()
    );
    let sup = Supervisor::new(
        SupervisorConfig {
            breaker: BreakerConfig {
                max_crashes_in_window: u32::MAX,
                ..BreakerConfig::default()
            },
            ..real_supervisor(at_once()).config().clone()
        },
        ShutdownHandle::new(),
    );
    sup.add("loop", sh(&script)).unwrap();
    wait_real(&sup, "loop", |s| s.starts >= 25).await;
    sup.stop("loop").await.unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(lines.len() >= 48, "{lines:?}");
    for pair in lines.chunks(2) {
        let pid = pair[0]
            .strip_prefix("start ")
            .unwrap_or_else(|| panic!("{lines:?}"));
        if pair.len() == 2 {
            assert_eq!(pair[1], format!("end {pid}"), "{lines:?}");
        }
    }

    // Kills: the killed instance is gone (reaped) by the time its successor announces itself.
    let node = sh("echo READY $$; exec sleep 60").ready_timeout(DEADLINE);
    let mut announced = node.address();
    sup.add("killed", node).unwrap();
    let mut pid: i32 = address(&mut announced).await.parse().unwrap();
    for round in 1..=5 {
        sup.kill("killed", "watchdog").unwrap();
        let next: i32 = next_address(&mut announced, &pid.to_string())
            .await
            .parse()
            .unwrap();
        assert_ne!(next, pid);
        assert!(
            !exists(pid),
            "round {round}: {pid} still exists while {next} runs"
        );
        pid = next;
    }
    let snapshot = sup.stop("killed").await.unwrap();
    assert_eq!((snapshot.deaths, snapshot.starts), (5, 6));
    assert!(
        snapshot
            .last_exit
            .unwrap()
            .status
            .starts_with("killed by the supervisor: watchdog")
    );
    assert!(!exists(pid));
    assert_eq!(
        *announced.borrow(),
        None,
        "the address is cleared when the instance ends"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A tiny HTTP server answering 200 or 500 depending on `healthy`; records request lines.
async fn health_server(healthy: Arc<AtomicBool>, requests: Arc<Mutex<Vec<String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            requests
                .lock()
                .unwrap()
                .push(request.lines().next().unwrap_or("").to_owned());
            let status = if healthy.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    addr
}

#[tokio::test]
async fn the_ready_address_drives_the_health_url_and_failing_checks_restart_the_child() {
    let healthy = Arc::new(AtomicBool::new(true));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let server = health_server(healthy.clone(), requests.clone()).await;
    let sup = Supervisor::new(
        SupervisorConfig {
            restart_policy: RestartPolicy::OnFailure(ExponentialBackoff::new(ms(10), ms(10))),
            health_check_interval: ms(50),
            health_check_timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
            ..SupervisorConfig::default()
        },
        ShutdownHandle::new(),
    );
    let node = sh("echo READY $SERVER; exec sleep 60")
        .env("SERVER", &server)
        .ready_timeout(DEADLINE)
        .health_url("http://{addr}/health")
        .unwrap();
    let mut announced = node.address();
    sup.add("web", node).unwrap();
    assert_eq!(address(&mut announced).await, server);
    wait_real(&sup, "web", |s| s.health == HealthStatus::Healthy).await;
    assert_eq!(requests.lock().unwrap()[0], "GET /health HTTP/1.1");

    healthy.store(false, Ordering::SeqCst);
    let snapshot = wait_real(&sup, "web", |s| s.restarts >= 1).await;
    let last = snapshot.last_exit.unwrap();
    assert!(
        last.status.starts_with(&format!(
            "killed by the supervisor: unhealthy for 3 consecutive checks: GET http://{server}/health answered 500"
        )),
        "{}",
        last.status
    );
    healthy.store(true, Ordering::SeqCst);
    wait_real(&sup, "web", |s| s.health == HealthStatus::Healthy).await;
    sup.shutdown().await;

    assert!(matches!(
        ProcessNode::new("x").health_url("https://example/"),
        Err(RuntimeError::InvalidSetting(_))
    ));
    assert!(matches!(
        ProcessNode::new("x").health_url("http:///health"),
        Err(RuntimeError::InvalidSetting(_))
    ));
}

#[tokio::test]
async fn a_child_that_never_announces_ready_is_killed_and_fails() {
    let dir = temp_dir("not-ready");
    let pids = dir.join("pids");
    let sup = real_supervisor(RestartPolicy::Never);
    let node = sh("echo $$ >> $PIDS; echo 'still booting' >&2; exec sleep 60")
        .env("PIDS", &pids)
        .ready_timeout(ms(300));
    sup.add("slow", node).unwrap();
    let snapshot = wait_real(&sup, "slow", |s| s.state == NodeState::Exited).await;
    let last = snapshot.last_exit.unwrap();
    assert_eq!(last.status, "did not print READY <addr> within 300ms");
    assert_eq!(last.stderr_tail, ["still booting"]);
    assert!(last.ran_for >= ms(300));
    assert_all_gone(&read_pids(&pids)).await;

    let early = sh("echo oops >&2; exit 3").ready_timeout(DEADLINE);
    sup.add("early", early).unwrap();
    let last = wait_real(&sup, "early", |s| s.state == NodeState::Exited)
        .await
        .last_exit
        .unwrap();
    assert_eq!(
        (last.status.as_str(), last.stderr_tail),
        (
            "exited before announcing READY: exit status: 3",
            vec!["oops".into()]
        )
    );

    let missing = ProcessNode::new("/nonexistent/program");
    sup.add("missing", missing).unwrap();
    let last = wait_real(&sup, "missing", |s| s.state == NodeState::Exited)
        .await
        .last_exit
        .unwrap();
    assert!(
        last.status
            .starts_with("cannot start \"/nonexistent/program\""),
        "{}",
        last.status
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let sup = real_supervisor(at_once());
    // The trap is set before READY, so the child ignores SIGTERM from the moment we know it runs;
    // `sleep` inherits the ignored disposition.
    let node = sh("trap '' TERM; echo READY $$; while :; do sleep 1; done")
        .ready_timeout(DEADLINE)
        .stop_timeout(ms(500));
    let mut announced = node.address();
    sup.add("stubborn", node).unwrap();
    let pid: i32 = address(&mut announced).await.parse().unwrap();
    let t0 = Instant::now();
    let snapshot = sup.stop("stubborn").await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= ms(500),
        "SIGKILL only after the stop timeout, took {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!((snapshot.state, snapshot.deaths), (NodeState::Stopped, 0));
    assert!(!exists(pid), "killed and reaped");
}

#[tokio::test]
async fn shutdown_in_every_state_leaves_no_process_and_no_zombie() {
    let dir = temp_dir("every-state");
    let pids = dir.join("pids");
    let grandchildren = dir.join("grandchildren");
    let sup = Supervisor::new(
        SupervisorConfig {
            restart_policy: at_once(),
            health_check_interval: ms(100),
            shutdown_timeout: Duration::from_secs(5),
            breaker: BreakerConfig {
                cooldown: Duration::from_secs(3600),
                ..BreakerConfig::default()
            },
            ..SupervisorConfig::default()
        },
        ShutdownHandle::new(),
    );
    let record = "echo $$ >> $PIDS;";
    let long_backoff = RestartPolicy::OnFailure(ExponentialBackoff::new(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let nodes = [
        // Running, with a grandchild in its group.
        (
            "running",
            sh(&format!(
                "{record} sleep 60 & echo $! >> $GRANDCHILDREN; echo READY $$; wait"
            ))
            .ready_timeout(DEADLINE),
            at_once(),
        ),
        // Starting: never announces readiness within the run.
        (
            "starting",
            sh(&format!("{record} exec sleep 60")).ready_timeout(Duration::from_secs(3600)),
            at_once(),
        ),
        // Backing off for an hour after its first failure.
        ("backing-off", sh(&format!("{record} exit 1")), long_backoff),
        // Tripped.
        ("tripped", sh(&format!("{record} exit 1")), at_once()),
        // Exited under `Never`.
        (
            "exited",
            sh(&format!("{record} exit 0")),
            RestartPolicy::Never,
        ),
        // Ignores SIGTERM: killed after its stop timeout.
        (
            "stubborn",
            sh(&format!(
                "{record} trap '' TERM; echo READY $$; while :; do sleep 1; done"
            ))
            .ready_timeout(DEADLINE)
            .stop_timeout(ms(300)),
            at_once(),
        ),
    ];
    for (name, node, policy) in nodes {
        sup.add_with_policy(
            name,
            node.env("PIDS", &pids).env("GRANDCHILDREN", &grandchildren),
            policy,
        )
        .unwrap();
    }
    wait_real(&sup, "running", |s| s.health == HealthStatus::Healthy).await;
    wait_real(&sup, "stubborn", |s| s.health == HealthStatus::Healthy).await;
    wait_real(&sup, "backing-off", |s| s.state == NodeState::BackingOff).await;
    wait_real(&sup, "tripped", |s| s.state == NodeState::Tripped).await;
    wait_real(&sup, "exited", |s| s.state == NodeState::Exited).await;
    let starting = sup.snapshot("starting").unwrap();
    assert_eq!(
        (starting.state, starting.health),
        (NodeState::Running, HealthStatus::Unknown)
    );
    let recorded = read_pids(&pids);
    assert!(recorded.len() >= 11, "{recorded:?}");
    let grandchild = read_pids(&grandchildren);
    assert!(grandchild.len() == 1 && running(grandchild[0]));

    let t0 = Instant::now();
    sup.shutdown().await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let states: Vec<_> = sup
        .snapshots()
        .into_iter()
        .map(|s| (s.name, s.state))
        .collect();
    for (name, state) in &states {
        let expected = if name == "exited" {
            NodeState::Exited
        } else {
            NodeState::Stopped
        };
        assert_eq!(*state, expected, "{name}");
    }
    // Every child is gone, reaped; the grandchild was killed with its child's group.
    assert_all_gone(&read_pids(&pids)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(grandchild[0]) {
        assert!(
            Instant::now() < deadline,
            "grandchild {} survived",
            grandchild[0]
        );
        tokio::time::sleep(ms(20)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn shutdown_during_a_launch_is_honoured_at_once() {
    let sup = real_supervisor(at_once());
    let node = sh("exec sleep 60")
        .ready_timeout(Duration::from_secs(3600))
        .stop_timeout(Duration::from_secs(3));
    sup.add("booting", node).unwrap();
    tokio::time::sleep(ms(50)).await;
    let t0 = Instant::now();
    sup.shutdown().await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "SIGTERM ended it, took {:?}",
        t0.elapsed()
    );
    assert_eq!(sup.snapshot("booting").unwrap().state, NodeState::Stopped);
}
