//! Periodic health checks and their consequences, in paused time.

use std::time::Duration;

use mechanics_runtime::{
    ExponentialBackoff, HealthChecker, HealthStatus, NodeState, RestartPolicy, Supervisor,
    SupervisorConfig,
};
use tokio::time::Instant;

use crate::{Ending, TestNode, config, ms, supervisor, wait_for};

fn checked(policy: RestartPolicy) -> Supervisor {
    supervisor(SupervisorConfig {
        health_check_interval: Duration::from_secs(1),
        health_check_timeout: ms(500),
        unhealthy_threshold: 3,
        ..config(policy)
    })
}

fn restart_after_100ms() -> RestartPolicy {
    RestartPolicy::OnFailure(ExponentialBackoff::new(ms(100), ms(100)).with_jitter(0.0))
}

fn unhealthy(n: u32) -> Option<HealthStatus> {
    Some(HealthStatus::Unhealthy(format!("check {n} failed")))
}

#[tokio::test(start_paused = true)]
async fn health_checks_really_run_on_the_interval() {
    let sup = checked(restart_after_100ms());
    let node = TestNode::forever();
    sup.add("n", node.clone()).unwrap();
    tokio::time::sleep(ms(10_500)).await;
    assert_eq!(node.health_calls(), 10);
    let checker = HealthChecker::new(sup.clone());
    assert_eq!(checker.status("n"), Some(HealthStatus::Healthy));
    assert_eq!(sup.snapshot("n").unwrap().starts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_added_with_its_own_health_interval_is_checked_on_that_interval_only() {
    let sup = checked(restart_after_100ms());
    let own = TestNode::forever();
    let default = TestNode::forever();
    sup.add_with_health_interval("own", own.clone(), restart_after_100ms(), ms(2_500))
        .unwrap();
    sup.add("default", default.clone()).unwrap();
    tokio::time::sleep(ms(10_500)).await;
    // Checks at 2.5 s, 5 s, 7.5 s and 10 s for the node's interval; every second for the other.
    assert_eq!((own.health_calls(), default.health_calls()), (4, 10));
}

#[tokio::test(start_paused = true)]
async fn n_consecutive_unhealthy_checks_kill_the_instance_and_the_policy_restarts_it() {
    let sup = checked(restart_after_100ms());
    let node = TestNode::forever();
    node.set_health(unhealthy);
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.starts == 2).await;
    // Checks at 1 s, 2 s, 3 s; the third strike kills; restart 100 ms later.
    assert_eq!(gaps_of(&node), [ms(3100)]);
    let last = snapshot.last_exit.unwrap();
    assert_eq!(
        last.status,
        "killed by the supervisor: unhealthy for 3 consecutive checks: check 2 failed"
    );
    assert_eq!(
        (snapshot.deaths, snapshot.health),
        (1, HealthStatus::Unknown)
    );
    assert_eq!(node.max_live(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_node_under_never_is_killed_and_stays_down() {
    let sup = checked(RestartPolicy::Never);
    let node = TestNode::forever();
    node.set_health(unhealthy);
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.state == NodeState::Exited).await;
    assert_eq!((snapshot.starts, node.live()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn strikes_must_be_consecutive() {
    let sup = checked(restart_after_100ms());
    let node = TestNode::forever();
    // Two failures, one success, over and over; `Unknown` neither strikes nor clears.
    node.set_health(|n| match n % 4 {
        0 | 1 => unhealthy(n),
        2 => Some(HealthStatus::Unknown),
        _ => Some(HealthStatus::Healthy),
    });
    sup.add("n", node.clone()).unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(sup.snapshot("n").unwrap().starts, 1);
    assert!(node.health_calls() >= 39);
}

#[tokio::test(start_paused = true)]
async fn a_health_check_that_times_out_is_a_strike() {
    let sup = checked(restart_after_100ms());
    let node = TestNode::forever();
    node.set_health(|_| None);
    sup.add("n", node.clone()).unwrap();
    let t0 = Instant::now();
    let snapshot = wait_for(&sup, "n", |s| s.starts == 2).await;
    // Each check: 1 s pause, then 500 ms until it times out.
    assert_eq!(Instant::now() - t0, ms(3 * 1500 + 100));
    assert!(
        snapshot
            .last_exit
            .unwrap()
            .status
            .ends_with("health check timed out after 500ms")
    );
}

#[tokio::test(start_paused = true)]
async fn check_all_checks_running_nodes_now_and_reports_the_others_state() {
    let sup = checked(RestartPolicy::Never);
    let (up, sick) = (TestNode::forever(), TestNode::forever());
    sick.set_health(unhealthy);
    sup.add("up", up.clone()).unwrap();
    sup.add("sick", sick.clone()).unwrap();
    sup.add("gone", TestNode::new(ms(1), Ending::Clean))
        .unwrap();
    wait_for(&sup, "gone", |s| s.state == NodeState::Exited).await;
    let checker = HealthChecker::new(sup.clone());
    assert_eq!(
        checker.status("up"),
        Some(HealthStatus::Unknown),
        "no periodic check yet"
    );
    let results = checker.check_all().await;
    assert_eq!(
        results,
        [
            (
                "gone".to_owned(),
                HealthStatus::Unhealthy("node is Exited".into())
            ),
            (
                "sick".to_owned(),
                HealthStatus::Unhealthy("check 0 failed".into())
            ),
            ("up".to_owned(), HealthStatus::Healthy),
        ]
    );
    // On-demand checks do not strike: the sick node survives three of them.
    checker.check_all().await;
    checker.check_all().await;
    assert_eq!(sup.snapshot("sick").unwrap().starts, 1);
    assert_eq!(sup.snapshot("sick").unwrap().state, NodeState::Running);
    assert_eq!(checker.status("missing"), None);
}

fn gaps_of(node: &TestNode) -> Vec<Duration> {
    crate::gaps(&node.starts())
}
