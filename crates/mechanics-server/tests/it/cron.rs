//! Cron triggers on a running server: fires per schedule, once per fire time, and catch-up
//! after downtime, traced in `/logs`. Schedule arithmetic (time zones, daylight saving,
//! counting) is unit-tested in `src/cron.rs` with fixed instants; these use real time, kept to a
//! few seconds.

use std::time::Duration;

use mechanics_proto::domain::Task;
use mechanics_store::Store;
use serde_json::json;

use crate::observe::{step, steps};
use crate::support::{TestServer, http_worker, reply};

async fn cron_tasks(server: &TestServer, worker: &str) -> Vec<Task> {
    let (status, body) = server
        .call("GET", &format!("/api/v1/tasks?worker={worker}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["tasks"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_second_schedule_fires_once_per_time() {
    let (url, _) = http_worker(|_, _| reply(200, json!({ "ok": true }))).await;
    let server = TestServer::start().await;
    server
        .add_http_worker(
            "tick",
            &url,
            json!({ "triggers": [{ "cron": "* * * * * *" }] }),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let tasks = loop {
        let tasks = cron_tasks(&server, "tick").await;
        if tasks.len() >= 2 {
            break tasks;
        }
        assert!(tokio::time::Instant::now() < deadline, "{tasks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut times: Vec<i64> = tasks
        .iter()
        .map(|t| t.payload["cron"]["fire_time"].as_i64().unwrap())
        .collect();
    for (task, time) in tasks.iter().zip(&times) {
        assert_eq!(time % 1000, 0, "fires on whole seconds");
        assert_eq!(task.next_run_at, *time);
        assert_eq!(task.payload["cron"]["tz"], "UTC");
    }
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), tasks.len(), "one task per fire time");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_a_schedule_fires_once_and_counts_the_missed_times() {
    let (url, _) = http_worker(|_, _| reply(200, json!({ "ok": true }))).await;
    let server = TestServer::start().await;
    server
        .add_http_worker(
            "nightly",
            &url,
            json!({ "triggers": [{ "cron": { "schedule": "* * * * *", "tz": "Europe/Paris" } }] }),
        )
        .await;
    let dir = server.stop().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let this_minute = now - now % 60_000;
    // The last fire the previous run recorded: 10 minutes ago.
    {
        let store = mechanics_store::SqliteStore::open(dir.path().join("m.db")).unwrap();
        store
            .record_cron_fire(
                "nightly",
                this_minute - 600_000,
                json!({ "old": true }),
                now,
            )
            .await
            .unwrap()
            .unwrap();
    }
    let server = TestServer::start_with(None, dir).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let fired = loop {
        let fired: Vec<Task> = cron_tasks(&server, "nightly")
            .await
            .into_iter()
            .filter(|t| t.payload.get("cron").is_some())
            .collect();
        if !fired.is_empty() {
            break fired;
        }
        assert!(tokio::time::Instant::now() < deadline, "no catch-up fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fired.len(), 1, "{fired:?}");
    let fire_time = fired[0].payload["cron"]["fire_time"].as_i64().unwrap();
    assert!(fire_time >= this_minute, "the latest missed time fires");
    // 10 minute marks were missed (11 if a minute passed meanwhile): all but one are dropped.
    let dropped = server.metrics().cron_ticks_dropped.get();
    assert!((9..=10).contains(&dropped), "{dropped}");
    assert_eq!(fired[0].payload["cron"]["dropped"], dropped);
    // The fire's trace: the dropped times, the fire, the task it made, its attempt.
    let task = fired[0].id;
    server.wait_end(task).await;
    assert_eq!(
        steps(&server, &format!("trace=task-{task}")).await,
        [
            step("cron", "skip", None),
            step("cron", "ok", None),
            step("submit", "ok", None),
            step("dispatch", "ok", Some(1)),
        ]
    );
    let (_, logs) = server
        .call("GET", &format!("/logs?trace=task-{task}&action=cron"), None)
        .await;
    let (fire, skip) = (&logs["entries"][0], &logs["entries"][1]);
    assert_eq!(skip["detail"]["dropped"], dropped);
    assert_eq!(skip["worker"], "nightly");
    assert_eq!(fire["detail"]["fire_time"], fire_time);
    assert_eq!(fire["detail"]["tz"], "Europe/Paris");
    assert_eq!(fire["task_id"], task);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_another_server_fired_is_logged_by_that_server_only() {
    let (url, _) = http_worker(|_, _| reply(200, json!({ "ok": true }))).await;
    let server = TestServer::start().await;
    server
        .add_http_worker(
            "tick",
            &url,
            json!({ "triggers": [{ "cron": "* * * * * *" }] }),
        )
        .await;
    // A second server on the same database wins the next few seconds' fires first.
    let other = mechanics_store::SqliteStore::open(server.dir.path().join("m.db")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let first = now - now % 1000 + 2000;
    let taken: Vec<i64> = (0..3).map(|n| first + n * 1000).collect();
    for &fire_time in &taken {
        other
            .record_cron_fire(
                "tick",
                fire_time,
                json!({ "cron": { "fire_time": fire_time } }),
                now,
            )
            .await
            .unwrap()
            .expect("the other server wins the fire");
    }
    // Wait until this server has tried them all and fired a later time itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let fired = cron_tasks(&server, "tick")
            .await
            .iter()
            .any(|t| t.payload["cron"]["fire_time"].as_i64() > taken.last().copied());
        if fired {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no later fire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, logs) = server
        .call("GET", "/logs?action=cron&worker=tick&limit=1000", None)
        .await;
    let entries = logs["entries"].as_array().unwrap();
    // A catch-up after a slow start may log its dropped times as a skip of its own; no entry
    // may stand for a time the other server fired.
    let skips: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["outcome"] == "skip" && e["detail"]["dropped"].is_null())
        .collect();
    assert!(
        skips.is_empty(),
        "the other server's fires are its to log: {skips:?}"
    );
    assert!(entries.iter().any(|e| e["outcome"] == "ok"), "{logs}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_fire_another_server_skipped_is_logged_once() {
    let (url, _) = http_worker(|_, _| reply(200, json!({ "ok": true }))).await;
    let server = TestServer::start().await;
    server
        .add_http_worker(
            "tick",
            &url,
            json!({ "triggers": [{ "cron": "* * * * * *" }] }),
        )
        .await;
    let (code, body) = server
        .call("POST", "/api/v1/workers/tick/pause", None)
        .await;
    assert_eq!(code, 200, "{body}");
    // A second server on the same database skips the next three seconds' fires first.
    let other = mechanics_store::SqliteStore::open(server.dir.path().join("m.db")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let first = now - now % 1000 + 2000;
    let taken: Vec<i64> = (0..3).map(|n| first + n * 1000).collect();
    for &fire_time in &taken {
        assert!(other.record_cron_skip("tick", fire_time).await.unwrap());
    }
    let last = *taken.last().unwrap();
    // Wait until this server skipped a later time itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let skips = loop {
        let (_, logs) = server
            .call("GET", "/logs?action=cron&worker=tick&limit=1000", None)
            .await;
        let skips: Vec<i64> = logs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outcome"] == "skip")
            .filter_map(|e| e["detail"]["fire_time"].as_i64())
            .collect();
        if skips.iter().any(|&t| t > last) {
            break skips;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no later skip: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        skips.iter().all(|t| !taken.contains(t)),
        "the other server's skips are its to log: {skips:?}"
    );
    assert!(
        cron_tasks(&server, "tick").await.is_empty(),
        "paused: no task"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schedule_or_zone_is_refused_when_the_worker_is_added() {
    let server = TestServer::start().await;
    for (cron, expected) in [
        (
            json!("61 * * * *"),
            "triggers[0].cron: \"61 * * * *\" is not a cron schedule",
        ),
        (
            json!({ "schedule": "* * * * *", "tz": "Mars/Olympus" }),
            "\"Mars/Olympus\" is not an IANA time zone",
        ),
    ] {
        let (status, body) = server
            .call(
                "POST",
                "/api/v1/workers",
                Some(
                    json!({ "spec": { "name": "bad", "kind": "http", "url": "http://127.0.0.1:9",
                    "triggers": [{ "cron": cron }] } }),
                ),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    server.stop().await;
}
