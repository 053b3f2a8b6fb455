//! Dispatch semantics: outcomes per worker answer, retries and dead letters, rate limiting,
//! fencing, recovery, drain, registry changes and an idle server's silence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mechanics_proto::domain::TaskState;
use mechanics_store::{NewTask, Store};
use serde_json::json;

use crate::support::{TestServer, http_worker, rate_limited_once_worker, reply, slow_http_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_worker_completes_a_task_with_its_json_answer() {
    let (url, seen) = http_worker(|body, _| {
        reply(
            200,
            json!({ "echo": body["payload"], "worker": body["worker"] }),
        )
    })
    .await;
    let server = TestServer::start().await;
    server.add_http_worker("echo", &url, json!({})).await;
    let id = server.submit("echo", json!({ "n": 1 })).await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(
        task.result,
        Some(json!({ "echo": { "n": 1 }, "worker": "echo" }))
    );
    assert_eq!(task.attempt, 1);
    assert_eq!(*seen.lock().unwrap(), [(id, 1)]);
    // Counted once the outcome is stored, so just after the task reads as ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metrics().tasks_completed.get() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_or_a_non_json_answer_fails_at_once_without_retry() {
    let (url, seen) = http_worker(|body, _| match body["payload"].as_str() {
        Some("html") => reply(200, json!("ok")).map(|_| "<html>".into()),
        _ => reply(500, json!({ "oops": true })),
    })
    .await;
    let server = TestServer::start().await;
    server.add_http_worker("broken", &url, json!({})).await;
    let id = server.submit("broken", json!(null)).await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.error.as_deref().unwrap().contains("500"), "{task:?}");
    let id2 = server.submit("broken", json!("html")).await;
    let task = server.wait_end(id2).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(
        task.error.as_deref().unwrap().contains("not JSON"),
        "{task:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2, "no retries");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_retry_with_backoff_then_go_dead_and_retry_revives() {
    let stall = Arc::new(AtomicBool::new(true));
    let flag = stall.clone();
    let router = axum::Router::new().route(
        "/task",
        axum::routing::post(move || {
            let stall = flag.load(Ordering::SeqCst);
            async move {
                if stall {
                    // Longer than this server's 300 ms http timeout: a transport failure.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                axum::Json(json!({ "ok": true }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let server = TestServer::start_timing_out_after(Duration::from_millis(300)).await;
    let retry =
        json!({ "retry": { "max_retries": 2, "base_delay": "50ms", "max_delay": "100ms" } });
    server.add_http_worker("flaky", &url, retry).await;
    let id = server.submit("flaky", json!(1)).await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Dead, "{task:?}");
    assert_eq!(
        (task.attempt, task.tries),
        (3, 3),
        "one try and two retries"
    );
    assert!(
        task.error.as_deref().unwrap().contains("retries exhausted"),
        "{task:?}"
    );
    assert_eq!(server.metrics().tasks_retried.get(), 2);

    stall.store(false, Ordering::SeqCst);
    let (status, body) = server
        .call("POST", &format!("/api/v1/tasks/{id}/retry"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.attempt, 4);

    // A connection refused is a transport failure too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    server
        .add_http_worker(
            "gone",
            &format!("http://{closed}"),
            json!({ "retry": { "max_retries": 1, "base_delay": "10ms", "max_delay": "10ms" } }),
        )
        .await;
    let task = server.wait_end(server.submit("gone", json!(1)).await).await;
    assert_eq!((task.state, task.tries), (TaskState::Dead, 2), "{task:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_after_that_delay() {
    let (url, seen) = rate_limited_once_worker("1", json!("done")).await;
    let server = TestServer::start().await;
    server.add_http_worker("limited", &url, json!({})).await;
    let id = server.submit("limited", json!(1)).await;
    let started = tokio::time::Instant::now();
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Completed);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "came back after Retry-After"
    );
    assert_eq!(*seen.lock().unwrap(), [(id, 1), (id, 2)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_requeues_and_never_fails_a_task() {
    let (url, seen) = http_worker(|_, _| reply(200, json!(1))).await;
    let server = TestServer::start().await;
    server
        .add_http_worker(
            "slow",
            &url,
            json!({ "rate_limit": { "per_second": 20, "burst": 2 } }),
        )
        .await;
    // Five tasks written straight to the store (nothing wakes the dispatcher), then one through
    // the API: the dispatcher claims all six at once, so exactly four find the bucket empty.
    let mut ids = Vec::new();
    for n in 0..5 {
        let task = NewTask {
            worker: "slow".into(),
            event_id: None,
            idempotency_key: None,
            payload: json!(n),
            next_run_at: 0,
        };
        ids.push(server.store.create_task(task, 0).await.unwrap().record.id);
    }
    ids.push(server.submit("slow", json!(5)).await);
    for id in &ids {
        let task = server.wait_end(*id).await;
        assert_eq!(task.state, TaskState::Completed, "{task:?}");
        assert_eq!(task.tries, 1, "a rate-limited claim is not a try: {task:?}");
    }
    // 6 tasks through a burst of 2: 4 waited, each exactly once, for the slot reserved for it.
    assert_eq!(server.metrics().tasks_rate_limited.get(), 4);
    assert_eq!(server.metrics().tasks_failed.get(), 0);
    assert_eq!(seen.lock().unwrap().len(), 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_cannot_complete_a_task_canceled_meanwhile() {
    // The worker answers after 300 ms; the task is canceled while it waits.
    let slow_url = slow_http_worker(Duration::from_millis(300)).await;
    let server = TestServer::start().await;
    server.add_http_worker("slow", &slow_url, json!({})).await;
    let id = server.submit("slow", json!(1)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.task(id).await.state != TaskState::Dispatched {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = server
        .call("POST", &format!("/api/v1/tasks/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let task = server.task(id).await;
    assert_eq!(task.state, TaskState::Canceled, "{task:?}");
    assert_eq!(task.result, None);
    assert_eq!(server.metrics().tasks_completed.get(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_recovers_tasks_a_crash_left_dispatched() {
    let (url, seen) = http_worker(|_, _| reply(200, json!("ok"))).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(None, dir).await;
    server.add_http_worker("w", &url, json!({})).await;
    let dir = server.stop().await;
    // As if a server had claimed a task and died before answering.
    let id = {
        let store = mechanics_store::SqliteStore::open(dir.path().join("m.db")).unwrap();
        let task = store
            .create_task(
                NewTask {
                    worker: "w".into(),
                    event_id: None,
                    idempotency_key: None,
                    payload: json!(1),
                    next_run_at: 0,
                },
                0,
            )
            .await
            .unwrap()
            .record;
        let claimed = store.claim_due(1, 1_000_000_000_000_000, 10).await.unwrap();
        assert_eq!(claimed[0].state, TaskState::Dispatched);
        task.id
    };
    let server = TestServer::start_with(None, dir).await;
    let task = server.wait_end(id).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.attempt, 2, "the lost claim is fenced out");
    assert_eq!(server.metrics().tasks_recovered.get(), 1);
    assert_eq!(*seen.lock().unwrap(), [(id, 2)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_attempts_in_flight() {
    let url = slow_http_worker(Duration::from_millis(1500)).await;
    let server = TestServer::start().await;
    server.add_http_worker("slow", &url, json!({})).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(server.submit("slow", json!(n)).await);
    }
    // Stop once every task is claimed (on a loaded machine the first may have ended already).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server
        .store
        .task_counts(None)
        .await
        .unwrap()
        .get(&TaskState::Pending)
        .is_some_and(|&n| n > 0)
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store = server.store.clone();
    server.stop().await;
    for id in ids {
        let task = store.get_task(id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Completed, "{task:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_changed_through_the_api_is_used_by_the_next_task() {
    let (first, first_seen) = http_worker(|_, _| reply(200, json!("first"))).await;
    let (second, second_seen) = http_worker(|_, _| reply(200, json!("second"))).await;
    let server = TestServer::start().await;
    server.add_http_worker("w", &first, json!({})).await;
    let a = server.wait_end(server.submit("w", json!(1)).await).await;
    server.add_http_worker("w", &second, json!({})).await;
    let b = server.wait_end(server.submit("w", json!(2)).await).await;
    assert_eq!(
        (a.result, b.result),
        (Some(json!("first")), Some(json!("second")))
    );
    assert_eq!(
        (
            first_seen.lock().unwrap().len(),
            second_seen.lock().unwrap().len()
        ),
        (1, 1)
    );
    let (status, _) = server.call("DELETE", "/api/v1/workers/w", None).await;
    assert_eq!(status, 204);
    let (status, body) = server
        .call("POST", "/api/v1/tasks", Some(json!({ "worker": "w" })))
        .await;
    assert_eq!(status, 404, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_makes_no_database_queries() {
    let (url, _seen) = http_worker(|_, _| reply(200, json!(1))).await;
    let server = TestServer::start().await;
    server.add_http_worker("w", &url, json!({})).await;
    let id = server.submit("w", json!(1)).await;
    server.wait_end(id).await;
    // Let the dispatcher settle into its wait after the last attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.queries();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.queries(), before, "queries ran while idle");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_backlog_does_not_hold_up_other_workers() {
    let (url, _seen) = http_worker(|_, _| reply(200, json!(1))).await;
    let server = TestServer::start().await;
    server
        .add_http_worker(
            "busy",
            &url,
            json!({ "rate_limit": { "per_second": 2, "burst": 1 } }),
        )
        .await;
    server.add_http_worker("quick", &url, json!({})).await;
    let mut backlog = Vec::new();
    for n in 0..20 {
        backlog.push(server.submit("busy", json!(n)).await);
    }
    let mut quick = Vec::new();
    for n in 0..5 {
        quick.push(server.submit("quick", json!(n)).await);
    }
    for id in quick {
        assert_eq!(server.wait_end(id).await.state, TaskState::Completed);
    }
    // At 2 per second, most of the backlog is still waiting for its slots.
    let counts = server.store.task_counts(Some("busy")).await.unwrap();
    assert!(counts[&TaskState::Pending] >= 10, "{counts:?}");
    assert_eq!(counts[&TaskState::Failed] + counts[&TaskState::Dead], 0);
    server.stop().await;
}

/// A js executor for the dispatcher's side of the contract (the fleet itself needs the
/// `mechanics` binary; the binary's tests drive it): it answers the first `overloads` attempts
/// as too busy, and runs the others once `gate` gives a permit.
struct TestExecutor {
    overloads: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
    /// Jobs that passed the gate.
    ran: std::sync::atomic::AtomicUsize,
}

impl TestExecutor {
    fn new(overloads: usize, open: bool) -> Arc<Self> {
        let permits = if open {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            0
        };
        Arc::new(Self {
            overloads: std::sync::atomic::AtomicUsize::new(overloads),
            gate: tokio::sync::Semaphore::new(permits),
            ran: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl mechanics_server::JsExecutor for TestExecutor {
    async fn run(
        &self,
        _job: mechanics_proto::node::JobRequest,
    ) -> mechanics_server::AttemptOutput {
        let busy = self
            .overloads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if busy {
            return mechanics_server::Outcome::Overloaded(
                Some(Duration::from_millis(50)),
                "no_node_available: every node is busy".into(),
            )
            .into();
        }
        let _permit = self.gate.acquire().await;
        self.ran.fetch_add(1, Ordering::SeqCst);
        mechanics_server::Outcome::Completed(json!("done")).into()
    }
    fn validate(
        &self,
        _: Option<&serde_json::Value>,
        _: Option<&serde_json::Value>,
    ) -> Result<(), String> {
        Ok(())
    }
    fn nodes(&self) -> Vec<mechanics_proto::api::NodeView> {
        Vec::new()
    }
    fn reset(&self, _: &str) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_overload_requeues_without_spending_a_try() {
    let server = TestServer::start_with_js(TestExecutor::new(2, true)).await;
    // No retries at all: an overload that spent a try would make the task dead at once.
    let spec = json!({ "spec": {
        "name": "js", "kind": "js", "module": "m.js", "triggers": [{ "api": true }],
        "retry": { "max_retries": 0, "base_delay": "1s", "max_delay": "1s" },
    }, "module_source": "export default () => 1;" });
    let (status, body) = server.call("POST", "/api/v1/workers", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let task = server.wait_end(server.submit("js", json!(1)).await).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!((task.attempt, task.tries), (3, 1), "{task:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_lease_outlasts_the_slowest_workers_time_limit() {
    let executor = TestExecutor::new(0, false);
    let server = TestServer::start_with_js(executor.clone()).await;
    // A js worker allowed 20 minutes, far beyond the 10 s http timeout of this server.
    let spec = json!({ "spec": {
        "name": "long", "kind": "js", "module": "m.js", "triggers": [{ "api": true }],
        "limits": { "max_execution_time_ms": 1_200_000 },
    }, "module_source": "export default () => 1;" });
    let (status, body) = server.call("POST", "/api/v1/workers", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let id = server.submit("long", json!(1)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let task = loop {
        let task = server.task(id).await;
        if task.state == TaskState::Dispatched {
            break task;
        }
        assert!(tokio::time::Instant::now() < deadline, "{task:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // A claimed task may first wait in the ready queue for up to one attempt's time.
    let lease_ms = task.lease_expires_at.unwrap() - task.updated_at;
    assert!(
        lease_ms >= 2 * 1_200_000,
        "a {lease_ms} ms lease could expire under a job that waited for a runner"
    );
    executor.gate.add_permits(1);
    assert_eq!(server.wait_end(id).await.state, TaskState::Completed);
    server.stop().await;
}

/// One runner and a ready queue of one.
fn one_runner() -> mechanics_server::DispatchConfig {
    let mut dispatch = crate::support::dispatch_config(Duration::from_secs(10));
    dispatch.concurrency = 1;
    dispatch.prefetch = 1;
    dispatch
}

/// Waits until task `id` is claimed and `ready` claimed tasks wait for a runner.
async fn wait_ready(server: &TestServer, id: i64, ready: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, vars) = server.call("GET", "/debug/vars", None).await;
        let claimed = server.task(id).await.state == TaskState::Dispatched;
        if claimed && vars["dispatch"]["ready"] == ready {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{vars}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Adds js worker `gated`, whose jobs a [`TestExecutor`] runs.
async fn add_gated_worker(server: &TestServer) {
    let spec = json!({ "spec": {
        "name": "gated", "kind": "js", "module": "m.js", "triggers": [{ "api": true }],
    }, "module_source": "export default () => 1;" });
    let (status, body) = server.call("POST", "/api/v1/workers", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_tasks_still_waiting_for_a_runner_go_back_on_shutdown_without_spending_a_try() {
    // Of the first two tasks one runs (held by the closed gate) and one is claimed and waits; the
    // third stays in the database.
    let executor = TestExecutor::new(0, false);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_js_dispatch(executor.clone(), one_runner(), dir).await;
    add_gated_worker(&server).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(server.submit("gated", json!(n)).await);
    }
    let store = server.store.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.task_counts(None).await.unwrap()[&TaskState::Dispatched] < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second task was never claimed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.task(ids[2]).await.state, TaskState::Pending);

    let stopping = tokio::spawn(server.stop());
    // The waiting task is put back while the other one still runs. One claim may have taken both
    // first tasks, and either may have won the runner: the one that goes back is the one that
    // waited.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (waited, ran) = loop {
        let first = store.get_task(ids[0]).await.unwrap().unwrap();
        let second = store.get_task(ids[1]).await.unwrap().unwrap();
        match (first.state, second.state) {
            (TaskState::Pending, _) => break (first, second),
            (_, TaskState::Pending) => break (second, first),
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "neither went back: {first:?} {second:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!((waited.attempt, waited.tries), (1, 0), "{waited:?}");
    assert_eq!(ran.state, TaskState::Dispatched, "{ran:?}");
    executor.gate.add_permits(1);
    let dir = stopping.await.unwrap();
    let ran = store.get_task(ran.id).await.unwrap().unwrap();
    assert_eq!(
        ran.state,
        TaskState::Completed,
        "the running attempt drained: {ran:?}"
    );
    drop(store);

    let server =
        TestServer::start_with_js_dispatch(TestExecutor::new(0, true), one_runner(), dir).await;
    for id in [waited.id, ids[2]] {
        let task = server.wait_end(id).await;
        assert_eq!(task.state, TaskState::Completed, "{task:?}");
        assert_eq!(
            task.tries, 1,
            "only the attempt that ran spent a try: {task:?}"
        );
    }
    assert_eq!(server.metrics().tasks_recovered.get(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_canceled_while_waiting_for_a_runner_never_runs() {
    let executor = TestExecutor::new(0, false);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_js_dispatch(executor.clone(), one_runner(), dir).await;
    add_gated_worker(&server).await;
    // One at a time, so that the first holds the runner before the second is claimed.
    let running = server.submit("gated", json!(1)).await;
    wait_ready(&server, running, 0).await;
    let waiting = server.submit("gated", json!(2)).await;
    wait_ready(&server, waiting, 1).await;

    let (code, body) = server
        .call("POST", &format!("/api/v1/tasks/{waiting}/cancel"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    let (_, vars) = server.call("GET", "/debug/vars", None).await;
    assert_eq!(vars["dispatch"]["ready"], 0, "{vars}");
    executor.gate.add_permits(1);
    assert_eq!(server.wait_end(running).await.state, TaskState::Completed);
    // A third task takes the freed place in the queue and runs: the canceled one never did.
    let third = server.submit("gated", json!(3)).await;
    assert_eq!(server.wait_end(third).await.state, TaskState::Completed);
    assert_eq!(executor.ran.load(Ordering::SeqCst), 2);
    assert_eq!(server.task(waiting).await.state, TaskState::Canceled);
    server.stop().await;
}
