//! Supervision while this process is out of descriptors or memory: health checks and launches
//! that fail for that reason are not held against the node (no strike, no death, no breaker
//! count), and the node is back within seconds once the shortage ends. Paused time, except the
//! last test, which starves a real child process of this test binary of descriptors.

use std::time::Duration;

use mechanics_runtime::{
    BreakerConfig, BreakerState, ExponentialBackoff, HealthStatus, NodeRunner, NodeState,
    ProcessNode, ResourceExhaustion, RestartPolicy, ShutdownHandle, Supervisor, SupervisorConfig,
    resource_exhaustion,
};
use tokio::time::Instant;

use crate::{TestNode, gaps, in_child, ms, supervisor, wait_for};

/// The health of a check this process could not make: it could not open a socket.
fn out_of_descriptors() -> Option<HealthStatus> {
    let err = std::io::Error::from_raw_os_error(libc::EMFILE);
    Some(HealthStatus::Unchecked(
        resource_exhaustion(&err).expect("EMFILE is resource exhaustion"),
    ))
}

/// Health checks every second, 3 strikes kill, restarts after 100 ms, the default breaker (more
/// than 5 deaths in 60 s trip it), and starved launches retried after 1 s doubling to 4 s.
fn pressured() -> SupervisorConfig {
    SupervisorConfig {
        restart_policy: RestartPolicy::OnFailure(
            ExponentialBackoff::new(ms(100), ms(100)).with_jitter(0.0),
        ),
        health_check_interval: Duration::from_secs(1),
        health_check_timeout: ms(500),
        unhealthy_threshold: 3,
        breaker: BreakerConfig::default(),
        resource_retry: ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(4))
            .with_jitter(0.0),
        ..SupervisorConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn health_checks_that_fail_for_lack_of_descriptors_neither_kill_nor_count_a_death() {
    let sup = supervisor(pressured());
    let node = TestNode::forever();
    // Healthy once, then ten checks in a row that cannot be made (more than the 3 strikes and
    // the breaker's 5 deaths), then healthy again.
    node.set_health(|n| match n {
        1..=10 => out_of_descriptors(),
        _ => Some(HealthStatus::Healthy),
    });
    sup.add("n", node.clone()).unwrap();

    // Checks at 1 s (healthy) and 2..=6 s (unchecked).
    tokio::time::sleep(ms(6_500)).await;
    let during = sup.snapshot("n").unwrap();
    assert_eq!(
        during.resource_exhaustion,
        Some(ResourceExhaustion::ProcessDescriptors)
    );
    assert_eq!(during.resource_failures, 5);
    assert_eq!(
        during.health,
        HealthStatus::Healthy,
        "the last conclusive result stands, so the node keeps getting work"
    );
    assert_eq!(during.state, NodeState::Running);

    // Checks at 7..=11 s unchecked, at 12 s healthy again.
    tokio::time::sleep(ms(6_000)).await;
    let after = sup.snapshot("n").unwrap();
    assert_eq!(node.health_calls(), 12);
    assert_eq!(after.resource_failures, 10);
    assert_eq!(
        after.resource_exhaustion, None,
        "cleared by a check that got an answer"
    );
    assert_eq!(after.health, HealthStatus::Healthy);
    assert_eq!(
        (after.state, after.starts, after.deaths, after.restarts),
        (NodeState::Running, 1, 0, 0)
    );
    assert_eq!(
        (after.breaker, after.recent_deaths),
        (BreakerState::Closed, 0)
    );
    assert_eq!(node.starts().len(), 1, "the instance was never killed");
}

#[tokio::test(start_paused = true)]
async fn an_unchecked_health_check_neither_strikes_nor_clears_strikes() {
    let sup = supervisor(pressured());
    let node = TestNode::forever();
    // Two strikes, eight checks that cannot be made, then a third strike: it is the third
    // consecutive *answered* failure, so it kills.
    node.set_health(|n| match n {
        0 | 1 | 10 => Some(HealthStatus::Unhealthy(format!("check {n} failed"))),
        2..=9 => out_of_descriptors(),
        _ => Some(HealthStatus::Healthy),
    });
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.starts == 2).await;
    assert_eq!(node.health_calls(), 11);
    assert_eq!(
        snapshot.last_exit.unwrap().status,
        "killed by the supervisor: unhealthy for 3 consecutive checks: check 10 failed"
    );
    assert_eq!(snapshot.deaths, 1);
}

#[tokio::test(start_paused = true)]
async fn a_launch_that_fails_for_lack_of_descriptors_is_retried_soon_without_a_death() {
    let sup = supervisor(pressured());
    let node = TestNode::forever();
    // Ten launches in a row fail: twice the breaker's limit of deaths.
    node.starve_launches(10);
    let t0 = Instant::now();
    sup.add("n", node.clone()).unwrap();

    let waiting = wait_for(&sup, "n", |s| s.resource_failures == 1).await;
    assert_eq!(waiting.state, NodeState::BackingOff);
    assert_eq!(waiting.next_start_at, Some(t0 + Duration::from_secs(1)));
    assert_eq!(
        waiting.resource_exhaustion,
        Some(ResourceExhaustion::ProcessDescriptors)
    );
    assert_eq!(
        (waiting.starts, waiting.deaths),
        (0, 0),
        "a launch that never ran is neither a start nor a death"
    );

    let running = wait_for(&sup, "n", |s| {
        s.state == NodeState::Running && s.starts == 1
    })
    .await;
    let mut tries = node.starved_at();
    tries.extend(node.starts());
    let secs = Duration::from_secs;
    assert_eq!(
        gaps(&tries),
        [
            secs(1),
            secs(2),
            secs(4),
            secs(4),
            secs(4),
            secs(4),
            secs(4),
            secs(4),
            secs(4),
            secs(4)
        ],
        "retried after the short resource delay, capped, not the restart policy's backoff"
    );
    assert_eq!(tries[0], t0);
    assert_eq!(
        (running.deaths, running.restarts, running.resource_failures),
        (0, 0, 10)
    );
    assert_eq!(
        (running.breaker, running.recent_deaths),
        (BreakerState::Closed, 0)
    );
    assert_eq!(running.resource_exhaustion, None);
    assert_eq!(running.last_exit, None);

    // The instance that finally ran is supervised as usual: a real crash still counts.
    sup.kill("n", "test").unwrap();
    let killed = wait_for(&sup, "n", |s| s.starts == 2).await;
    assert_eq!((killed.deaths, killed.recent_deaths), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_honoured_at_once_while_a_starved_launch_waits() {
    let sup = supervisor(pressured());
    let node = TestNode::forever();
    node.starve_launches(u32::MAX);
    sup.add("n", node.clone()).unwrap();
    wait_for(&sup, "n", |s| s.resource_failures == 3).await;
    let asked = Instant::now();
    let last = sup.stop("n").await.unwrap();
    assert_eq!(Instant::now(), asked);
    assert_eq!((last.state, last.deaths), (NodeState::Stopped, 0));
}

#[test]
fn a_real_process_node_out_of_descriptors_is_retried_and_checked_again_without_a_death() {
    if !in_child() {
        mechanics_test_support::passes_in_a_child_process(
            "pressure::a_real_process_node_out_of_descriptors_is_retried_and_checked_again_without_a_death",
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Something that answers health checks, and Tokio's SIGCHLD handling set up by a first
        // child, before the descriptors run out.
        let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_url = format!("http://{}/health", health.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                if let Ok((mut stream, _)) = health.accept().await {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, ok).await;
                }
            }
        });
        let warm_up = ProcessNode::new("true");
        warm_up.run(ShutdownHandle::new().signal()).await.unwrap();
        let sup = Supervisor::new(
            SupervisorConfig {
                health_check_interval: Duration::ZERO,
                resource_retry: ExponentialBackoff::new(ms(50), ms(200)),
                ..SupervisorConfig::default()
            },
            ShutdownHandle::new(),
        );

        let files = mechanics_test_support::exhaust_descriptors();
        let node = ProcessNode::new("sleep")
            .arg("1000")
            .health_url(&health_url)
            .unwrap();
        let failure = node.run(ShutdownHandle::new().signal()).await.unwrap_err();
        assert_eq!(
            failure.resource_exhaustion,
            Some(ResourceExhaustion::ProcessDescriptors),
            "{failure}"
        );
        assert_eq!(
            node.health_check().await,
            HealthStatus::Unchecked(ResourceExhaustion::ProcessDescriptors),
            "the check could not open a socket"
        );

        sup.add("n", ProcessNode::new("sleep").arg("1000")).unwrap();
        let mut watch = sup.watch("n").unwrap();
        let starved = tokio::time::timeout(
            Duration::from_secs(30),
            watch.wait_for(|s| s.resource_failures >= 3),
        )
        .await
        .expect("three starved launches")
        .unwrap()
        .clone();
        assert_eq!((starved.deaths, starved.breaker), (0, BreakerState::Closed));

        drop(files);
        let running = tokio::time::timeout(
            Duration::from_secs(30),
            watch.wait_for(|s| s.state == NodeState::Running && s.resource_exhaustion.is_none()),
        )
        .await
        .expect("running once descriptors are free")
        .unwrap()
        .clone();
        assert_eq!(
            (running.starts, running.deaths, running.breaker),
            (1, 0, BreakerState::Closed)
        );
        assert_eq!(
            node.health_check().await,
            HealthStatus::Healthy,
            "checked again once a socket can be opened"
        );
        sup.shutdown().await;
    });
}
