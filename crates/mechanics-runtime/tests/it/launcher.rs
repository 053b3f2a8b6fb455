//! Launching, listing and stopping nodes by name.

use std::time::Duration;

use mechanics_runtime::{NodeState, RestartPolicy, Runtime, RuntimeError};

use crate::{TestNode, settle, wait_for};

#[tokio::test(start_paused = true)]
async fn factories_launch_stop_and_list_nodes_by_name() {
    let runtime = Runtime::builder()
        .health_check_interval(Duration::ZERO)
        .build();
    let launcher = runtime.launcher();
    let worker = TestNode::forever();
    let shared = worker.clone();
    launcher.register("worker", move || shared.clone());
    launcher.register_with_policy("once", RestartPolicy::Never, TestNode::failing);

    assert!(launcher.list().iter().all(|entry| entry.node.is_none()));
    assert!(matches!(
        launcher.launch("nope"),
        Err(RuntimeError::UnknownFactory(_))
    ));
    launcher.launch("worker").unwrap();
    launcher.launch("once").unwrap();
    assert!(matches!(
        launcher.launch("worker"),
        Err(RuntimeError::NodeExists(_))
    ));
    settle().await;
    wait_for(runtime.supervisor(), "once", |s| {
        s.state == NodeState::Exited
    })
    .await;

    let list = launcher.list();
    let states: Vec<_> = list
        .iter()
        .map(|e| (e.name.as_str(), e.node.as_ref().map(|n| n.state)))
        .collect();
    assert_eq!(
        states,
        [
            ("once", Some(NodeState::Exited)),
            ("worker", Some(NodeState::Running))
        ]
    );
    assert_eq!(worker.live(), 1);

    let last = launcher.stop("worker").await.unwrap();
    assert_eq!((last.state, worker.live()), (NodeState::Stopped, 0));
    assert_eq!(launcher.list()[1].node, None);
    // Launch again after a stop: a fresh node from the factory.
    launcher.launch("worker").unwrap();
    settle().await;
    assert_eq!(
        (
            worker.starts().len(),
            runtime.supervisor().snapshot("worker").unwrap().starts
        ),
        (2, 1)
    );

    assert!(launcher.unregister("once"));
    assert!(!launcher.unregister("once"));
    assert_eq!(launcher.list().len(), 1);
    runtime.shutdown_handle().trigger();
    runtime.run().await.unwrap();
    assert_eq!(worker.live(), 0);
    assert!(matches!(
        launcher.launch("worker"),
        Err(RuntimeError::ShuttingDown)
    ));
}
