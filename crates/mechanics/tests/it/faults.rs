//! The coordinator killed and stopped under load: `kill -9` with 1,000 tasks in flight and a
//! restart on the same database; SIGTERM with slow tasks in flight and a drain timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Coordinator, HttpServer, Seen, http_worker, submit_many, tail};

/// Bulk workers must not be slowed by the default bucket (2/s).
fn bulk_worker(name: &str, url: &str) -> String {
    format!(
        "name: {name}\nkind: http\nurl: {url}\ntriggers: [{{ api: true }}]\n\
         rate_limit: {{ per_second: 1000, burst: 1000 }}\n\
         retry: {{ max_retries: 5, base_delay: 100ms, max_delay: 500ms }}\n"
    )
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_with_1000_tasks_in_flight_then_restart_completes_each_task_once() {
    const TASKS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let worker = HttpServer::start(http_worker(
        seen.clone(),
        Duration::from_millis(50),
        Arc::new(Mutex::new(200)),
    ));
    let mut server = Coordinator::start(dir.path(), &[], &[]);
    server.add_worker(&bulk_worker("counted", &worker.url()));
    let ids = submit_many(&server, "counted", TASKS);
    assert_eq!(ids.len(), TASKS);
    // Some done, most still pending or dispatched: kill -9 mid-stream.
    wait_until(Duration::from_secs(30), "100 attempts seen", || {
        seen.lock().unwrap().len() >= 100
    });
    server.kill9();
    let seen_before_kill = seen.lock().unwrap().len();
    assert!(
        seen_before_kill < TASKS,
        "the kill came after all tasks ran ({seen_before_kill})"
    );

    let server = Coordinator::start(dir.path(), &[], &[]);
    let started = Instant::now();
    let tasks = loop {
        let tasks = server.tasks();
        let open = tasks
            .values()
            .filter(|t| matches!(t["state"].as_str(), Some("pending" | "dispatched")))
            .count();
        if open == 0 {
            break tasks;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{open} tasks still open after the restart\n{}",
            tail(&server.stderr(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(tasks.len(), TASKS);
    let seen = seen.lock().unwrap().clone();
    let mut attempts: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for (id, attempt) in &seen {
        attempts.entry(*id).or_default().push(*attempt);
    }
    for (id, task) in &tasks {
        assert_eq!(task["state"], "completed", "{task}");
        // The completion recorded is the answer to the task's current attempt (fenced), and
        // the worker saw that attempt.
        let attempt = task["attempt"].as_u64().unwrap();
        assert_eq!(task["result"]["attempt"].as_u64(), Some(attempt), "{task}");
        let saw = attempts.get(id).cloned().unwrap_or_default();
        assert!(saw.contains(&attempt), "task {id}: saw {saw:?}, {task}");
        // Every attempt the worker saw is a distinct claim, none later than the recorded one.
        let mut unique = saw.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), saw.len(), "task {id} attempts {saw:?}");
        assert!(
            saw.iter().all(|a| *a <= attempt),
            "task {id} attempts {saw:?} > {attempt}"
        );
    }
    // Only tasks in flight at the kill were run again.
    let rerun = attempts.values().filter(|a| a.len() > 1).count();
    assert!(rerun <= 64, "{rerun} tasks ran more than once");
}

#[test]
fn sigterm_drains_slow_tasks_in_flight_before_exiting() {
    const TASKS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let worker = HttpServer::start(http_worker(
        seen.clone(),
        Duration::from_secs(1),
        Arc::new(Mutex::new(200)),
    ));
    let mut server = Coordinator::start(dir.path(), &[], &[("MECHANICS_DRAIN_TIMEOUT", "10s")]);
    server.add_worker(&bulk_worker("slow", &worker.url()));
    let ids = submit_many(&server, "slow", TASKS);
    wait_until(Duration::from_secs(20), "every task in flight", || {
        seen.lock().unwrap().len() >= TASKS
    });
    let status = server.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "{status:?}\n{}",
        tail(&server.stderr(), 30)
    );

    // Right after a restart (before recovery could run anything again, which takes the worker a
    // second): each task completed on its first attempt, so the drain finished them.
    let server = Coordinator::start(dir.path(), &[], &[]);
    for id in ids {
        let task = server.json(&["task", "show", &id.to_string()]);
        assert_eq!(task["state"], "completed", "{task}");
        assert_eq!(task["attempt"], 1, "{task}");
    }
    assert_eq!(seen.lock().unwrap().len(), TASKS, "no attempt ran twice");
}
