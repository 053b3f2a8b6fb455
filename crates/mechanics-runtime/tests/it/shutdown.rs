//! Shutdown and stop in every state, in paused time: honoured at once, bounded by the timeout.

use std::time::Duration;

use mechanics_runtime::{
    ExponentialBackoff, HealthStatus, NodeState, RestartPolicy, RuntimeError, SupervisorConfig,
};
use tokio::time::Instant;

use crate::{Ending, TestNode, config, ms, settle, supervisor, wait_for};

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_backoff_sleep_is_honoured_at_once() {
    let policy = RestartPolicy::OnFailure(ExponentialBackoff::new(
        Duration::from_secs(600),
        Duration::from_secs(600),
    ));
    let sup = supervisor(config(policy));
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    wait_for(&sup, "n", |s| s.state == NodeState::BackingOff).await;
    let t0 = Instant::now();
    sup.shutdown().await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let snapshot = sup.snapshot("n").unwrap();
    assert_eq!((snapshot.state, snapshot.starts), (NodeState::Stopped, 1));
    assert_eq!(snapshot.next_start_at, None);
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_hanging_health_check_is_honoured_at_once() {
    let sup = supervisor(SupervisorConfig {
        health_check_interval: Duration::from_secs(1),
        health_check_timeout: Duration::from_secs(3600),
        ..config(RestartPolicy::default())
    });
    let node = TestNode::forever();
    node.set_health(|_| None);
    sup.add("n", node.clone()).unwrap();
    tokio::time::sleep(ms(1500)).await;
    assert_eq!(node.health_calls(), 1, "the check is in flight");
    let t0 = Instant::now();
    sup.shutdown().await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(sup.snapshot("n").unwrap().state, NodeState::Stopped);
    assert_eq!(node.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_ignores_shutdown_is_dropped_after_the_shutdown_timeout() {
    let sup = supervisor(SupervisorConfig {
        shutdown_timeout: Duration::from_secs(3),
        ..config(RestartPolicy::default())
    });
    let node = TestNode::forever();
    node.ignore_shutdown();
    let polite = TestNode::forever();
    sup.add("stubborn", node.clone()).unwrap();
    sup.add("polite", polite.clone()).unwrap();
    settle().await;
    assert_eq!(node.live() + polite.live(), 2);
    let t0 = Instant::now();
    sup.shutdown().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(
        node.live() + polite.live(),
        0,
        "both instances' futures are gone"
    );
    for name in ["stubborn", "polite"] {
        assert_eq!(sup.snapshot(name).unwrap().state, NodeState::Stopped);
    }
}

#[tokio::test(start_paused = true)]
async fn stopping_one_node_leaves_the_others_running() {
    let sup = supervisor(config(RestartPolicy::default()));
    let (a, b) = (TestNode::forever(), TestNode::forever());
    sup.add("a", a.clone()).unwrap();
    sup.add("b", b.clone()).unwrap();
    settle().await;
    let last = sup.stop("a").await.unwrap();
    assert_eq!(
        (last.state, last.starts, last.deaths),
        (NodeState::Stopped, 1, 0)
    );
    assert!(sup.snapshot("a").is_none(), "a stopped node is forgotten");
    assert_eq!((a.live(), b.live()), (0, 1));
    assert_eq!(sup.snapshot("b").unwrap().state, NodeState::Running);
    assert!(matches!(
        sup.stop("a").await,
        Err(RuntimeError::UnknownNode(_))
    ));
    sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_after_shutdown_and_an_ended_node_can_be_replaced() {
    let sup = supervisor(config(RestartPolicy::Never));
    sup.add("n", TestNode::new(ms(1), Ending::Clean)).unwrap();
    assert!(matches!(
        sup.add("n", TestNode::forever()),
        Err(RuntimeError::NodeExists(_))
    ));
    wait_for(&sup, "n", |s| s.state == NodeState::Exited).await;
    assert!(matches!(
        sup.kill("n", "x"),
        Err(RuntimeError::NotRunning(_))
    ));
    let replacement = TestNode::forever();
    sup.add("n", replacement.clone()).unwrap();
    settle().await;
    assert_eq!(replacement.live(), 1);
    sup.shutdown().await;
    assert!(matches!(
        sup.add("m", TestNode::forever()),
        Err(RuntimeError::ShuttingDown)
    ));
    assert_eq!(sup.snapshot("n").unwrap().health, HealthStatus::Unknown);
}
