//! Restart policies and their exact backoff sequences, in paused time.

use std::time::Duration;

use mechanics_runtime::{ExponentialBackoff, NodeState, RestartPolicy};

use crate::{Ending, TestNode, config, gaps, ms, supervisor, wait_for};

fn doubling(initial: Duration, max: Duration) -> RestartPolicy {
    RestartPolicy::OnFailure(ExponentialBackoff::new(initial, max).with_jitter(0.0))
}

#[tokio::test(start_paused = true)]
async fn on_failure_restarts_after_exactly_the_exponential_delays_up_to_the_cap() {
    let sup = supervisor(config(doubling(ms(100), ms(1000))));
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| {
        s.deaths == 9 && s.state == NodeState::BackingOff
    })
    .await;
    assert_eq!(
        gaps(&node.starts()),
        [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1000),
            ms(1000),
            ms(1000),
            ms(1000)
        ]
    );
    assert_eq!((snapshot.starts, snapshot.restarts), (9, 8));
    assert_eq!(
        snapshot.next_start_at,
        Some(tokio::time::Instant::now() + ms(1000))
    );
    let last = snapshot.last_exit.unwrap();
    assert!(!last.clean);
    assert_eq!(
        (last.status.as_str(), last.stderr_tail),
        ("boom", vec!["last words".to_owned()])
    );
    assert_eq!(node.max_live(), 1);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_between_the_jitter_floor_and_the_exact_delay() {
    let policy =
        RestartPolicy::OnFailure(ExponentialBackoff::new(ms(1000), ms(1000)).with_jitter(0.5));
    let sup = supervisor(config(policy));
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    wait_for(&sup, "n", |s| s.starts == 20).await;
    let gaps = gaps(&node.starts());
    assert!(
        gaps.iter().all(|gap| (ms(500)..=ms(1000)).contains(gap)),
        "{gaps:?}"
    );
    // With 19 random samples, equal gaps would mean the jitter is not applied.
    assert!(gaps.iter().any(|gap| *gap != gaps[0]), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn on_failure_ends_the_node_after_a_clean_exit() {
    let sup = supervisor(config(doubling(ms(100), ms(1000))));
    let node = TestNode::new(ms(50), Ending::Clean);
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.state == NodeState::Exited).await;
    assert_eq!(
        (snapshot.starts, snapshot.deaths, snapshot.restarts),
        (1, 1, 0)
    );
    let last = snapshot.last_exit.unwrap();
    assert!(last.clean);
    assert_eq!(last.ran_for, ms(50));
}

#[tokio::test(start_paused = true)]
async fn always_restarts_clean_exits_and_failures_after_a_constant_delay() {
    for ending in [Ending::Clean, Ending::Fail] {
        let sup = supervisor(config(RestartPolicy::Always { delay: ms(250) }));
        let node = TestNode::new(ms(10), ending);
        sup.add("n", node.clone()).unwrap();
        wait_for(&sup, "n", |s| s.starts == 6).await;
        assert_eq!(gaps(&node.starts()), [ms(260); 5], "{ending:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn never_does_not_restart_a_failure() {
    let sup = supervisor(config(RestartPolicy::Never));
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.state == NodeState::Exited).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(node.starts().len(), 1);
    assert_eq!(
        (snapshot.starts, snapshot.deaths, snapshot.restarts),
        (1, 1, 0)
    );
    assert_eq!(snapshot.last_exit.unwrap().status, "boom");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_node_is_a_failure_and_is_restarted() {
    let sup = supervisor(config(doubling(ms(100), ms(100))));
    let node = TestNode::new(ms(5), Ending::Panic);
    sup.add("n", node.clone()).unwrap();
    let snapshot = wait_for(&sup, "n", |s| s.starts == 3).await;
    let last = snapshot.last_exit.unwrap();
    assert_eq!(last.status, "node panicked: node exploded");
}

#[tokio::test(start_paused = true)]
async fn a_run_longer_than_the_crash_window_resets_the_backoff() {
    let sup = supervisor(config(doubling(ms(100), ms(100_000))));
    let node = TestNode::failing();
    sup.add("n", node.clone()).unwrap();
    wait_for(&sup, "n", |s| s.starts == 4).await;
    // Stable now: each instance outlives the 60 s window before failing.
    node.set_run_for(Duration::from_secs(61));
    wait_for(&sup, "n", |s| s.starts == 8).await;
    let gaps = gaps(&node.starts());
    assert_eq!(gaps[..3], [ms(100), ms(200), ms(400)]);
    // The fourth instance started with the old run_for or the new one depending on when the
    // test changed it; after that every failure follows a stable run, so the delay is back to
    // the initial 100 ms.
    assert_eq!(gaps[4..], [Duration::from_secs(61) + ms(100); 3]);
}
