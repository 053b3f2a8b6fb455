//! The crash-loop breaker in the supervisor, in paused time: when it trips, that it holds, and
//! both ways it re-arms.

use std::time::Duration;

use mechanics_runtime::{
    BreakerConfig, BreakerState, NodeState, RestartPolicy, Supervisor, SupervisorConfig,
};
use tokio::time::Instant;

use crate::{TestNode, gaps, supervisor, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

/// Default breaker (more than 5 deaths in 60 s, 5 min cool-down), restart at once.
fn breaker_supervisor() -> Supervisor {
    supervisor(SupervisorConfig {
        restart_policy: RestartPolicy::Always {
            delay: Duration::ZERO,
        },
        health_check_interval: Duration::ZERO,
        breaker: BreakerConfig::default(),
        ..SupervisorConfig::default()
    })
}

async fn wait_tripped(sup: &Supervisor) -> mechanics_runtime::NodeSnapshot {
    wait_for(sup, "n", |s| s.state == NodeState::Tripped).await
}

#[tokio::test(start_paused = true)]
async fn the_sixth_death_within_the_window_trips_and_the_node_is_not_respawned() {
    let sup = breaker_supervisor();
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    let t0 = Instant::now();
    let snapshot = wait_tripped(&sup).await;
    assert_eq!(
        (snapshot.starts, snapshot.deaths, snapshot.restarts),
        (6, 6, 5)
    );
    assert_eq!(
        (snapshot.breaker, snapshot.recent_deaths),
        (BreakerState::Tripped, 6)
    );
    assert_eq!(snapshot.next_start_at, Some(t0 + 5 * MINUTE));
    assert_eq!(snapshot.last_exit.unwrap().status, "boom");
    // It holds until the cool-down ends.
    tokio::time::sleep(5 * MINUTE - Duration::from_millis(1)).await;
    assert_eq!(node.starts().len(), 6);
    assert_eq!(sup.snapshot("n").unwrap().state, NodeState::Tripped);
}

#[tokio::test(start_paused = true)]
async fn deaths_are_counted_across_cycles_whose_start_succeeded() {
    // The loop the breaker exists for: every instance comes up fine, runs 5 s, then dies, and
    // is restarted 1 s later; no single cycle looks like a failure to start.
    let sup = supervisor(SupervisorConfig {
        restart_policy: RestartPolicy::Always {
            delay: Duration::from_secs(1),
        },
        ..breaker_supervisor().config().clone()
    });
    let node = TestNode::failing();
    node.set_run_for(Duration::from_secs(5));
    sup.add("n", node.clone()).unwrap();
    let t0 = Instant::now();
    wait_tripped(&sup).await;
    assert_eq!(node.starts().len(), 6);
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(6 * 5 + 5),
        "tripped at the sixth death"
    );
}

#[tokio::test(start_paused = true)]
async fn five_deaths_per_window_never_trip() {
    let sup = supervisor(SupervisorConfig {
        restart_policy: RestartPolicy::Always {
            delay: Duration::from_secs(2),
        },
        ..breaker_supervisor().config().clone()
    });
    let node = TestNode::failing();
    // One death every 12 s: the sixth death is always 60 s after the first of its five.
    node.set_run_for(Duration::from_secs(10));
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.starts == 30).await;
    assert_eq!(
        (snapshot.breaker, snapshot.deaths),
        (BreakerState::Closed, 29)
    );
    assert_eq!(gaps(&node.starts()), [Duration::from_secs(12); 29]);
}

#[tokio::test(start_paused = true)]
async fn the_cool_down_allows_one_try_a_death_inside_the_window_trips_again_a_survivor_rearms() {
    let sup = breaker_supervisor();
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    wait_tripped(&sup).await;

    // First try after the cool-down dies 10 s in: tripped again at once, no further start.
    node.set_run_for(Duration::from_secs(10));
    let tripped_at = Instant::now();
    let snapshot = wait_for(&sup, "n", |s| s.breaker == BreakerState::HalfOpen).await;
    assert_eq!(Instant::now() - tripped_at, 5 * MINUTE);
    assert_eq!((snapshot.starts, snapshot.state), (7, NodeState::Running));
    let snapshot = wait_tripped(&sup).await;
    assert_eq!(
        Instant::now() - tripped_at,
        5 * MINUTE + Duration::from_secs(10)
    );
    assert_eq!(
        (snapshot.starts, snapshot.breaker),
        (7, BreakerState::Tripped)
    );

    // Second try survives the window: the breaker closes and the node keeps running.
    node.set_run_for(Duration::from_secs(1_000_000));
    wait_for(&sup, "n", |s| s.breaker == BreakerState::HalfOpen).await;
    let try_started = Instant::now();
    let snapshot = wait_for(&sup, "n", |s| s.breaker == BreakerState::Closed).await;
    assert_eq!(Instant::now() - try_started, MINUTE);
    assert_eq!(
        (snapshot.starts, snapshot.state, snapshot.recent_deaths),
        (8, NodeState::Running, 0)
    );

    // Re-armed from zero: five kills do not trip it, the sixth does.
    for kill in 1..=6 {
        sup.kill("n", "job overran").unwrap();
        let snapshot = wait_for(&sup, "n", |s| s.deaths == 7 + kill).await;
        let expected = if kill < 6 {
            BreakerState::Closed
        } else {
            BreakerState::Tripped
        };
        assert_eq!(snapshot.breaker, expected, "after kill {kill}");
        if kill < 6 {
            wait_for(&sup, "n", |s| {
                s.state == NodeState::Running && s.starts == 8 + kill
            })
            .await;
        }
    }
    let last = sup.snapshot("n").unwrap().last_exit.unwrap();
    assert_eq!(last.status, "killed by the supervisor: job overran");
    assert_eq!(node.max_live(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reset_rearms_the_breaker_and_respawns_at_once() {
    let sup = breaker_supervisor();
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    wait_tripped(&sup).await;
    let reset_at = Instant::now();
    sup.reset_breaker("n").unwrap();
    // Still failing at once: six more deaths after the reset trip it again, not one.
    let snapshot = wait_for(&sup, "n", |s| {
        s.starts == 12 && s.state == NodeState::Tripped
    })
    .await;
    assert_eq!(
        Instant::now(),
        reset_at,
        "respawned without waiting for the cool-down"
    );
    assert_eq!((snapshot.deaths, snapshot.recent_deaths), (12, 6));
    assert_eq!(node.starts()[6], reset_at);
}
