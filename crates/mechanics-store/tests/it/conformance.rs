//! The conformance suite: every behaviour the server relies on, written against `&dyn Store` so
//! that each backend runs it unchanged (`sqlite::conformance` instantiates it for SQLite).
//! Each function expects a fresh, empty store.

use std::collections::HashSet;

use mechanics_proto::api::{ApiScope, Instance};
use mechanics_proto::domain::{
    AttemptConsoleLine, AttemptOutcome, ConsoleLevel, ConsoleLine, EventState, LogOutcome,
    LogRecord, NodeSpec, TaskAttempt, TaskState, TaskTrigger, TranspiledModule, WorkerSpec,
};
use mechanics_store::{
    ActivityBucket, BodyDedup, EventFilter, EventUpdate, LogQuery, NewApiKey, NewEvent, NewTask,
    NextDue, Release, Store, StoreError, Take, TaskFilter, TokenRate, Tokens, WorkerFailures,
};
use serde_json::{Value, json};

use crate::{github_source, js_worker};

fn new_event(source: &str, delivery: &str) -> NewEvent {
    NewEvent {
        source: source.into(),
        delivery_id: delivery.into(),
        event_type: "issues.opened".into(),
        payload: json!({ "delivery": delivery }),
        body_dedup: None,
    }
}

/// [`new_event`] deduplicated on the body hash `[hash; 32]` since `since_ms`.
fn body_event(source: &str, delivery: &str, hash: u8, since_ms: i64) -> NewEvent {
    NewEvent {
        body_dedup: Some(BodyDedup {
            hash: [hash; 32],
            since_ms,
        }),
        ..new_event(source, delivery)
    }
}

fn api_task(worker: &str, key: Option<&str>, next_run_at: i64) -> NewTask {
    NewTask {
        worker: worker.into(),
        event_id: None,
        idempotency_key: key.map(str::to_owned),
        payload: json!({ "n": next_run_at }),
        next_run_at,
    }
}

async fn task_id(store: &dyn Store, worker: &str, next_run_at: i64) -> i64 {
    let inserted = store
        .create_task(api_task(worker, None, next_run_at), 0)
        .await
        .unwrap();
    assert!(inserted.created);
    inserted.record.id
}

pub(crate) async fn registry_upserts_count_revisions_and_bump_the_version(store: &dyn Store) {
    let v0 = store.registry_version();
    let first = store
        .upsert_worker(
            js_worker("triage"),
            Some("export default () => 1".into()),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        (first.revision, first.created_at, first.updated_at),
        (1, 10, 10)
    );
    let second = store
        .upsert_worker(
            js_worker("triage"),
            Some("export default () => 2".into()),
            None,
            20,
        )
        .await
        .unwrap();
    assert_eq!(
        (second.revision, second.created_at, second.updated_at),
        (2, 10, 20)
    );
    assert_eq!(
        second.module_source.as_deref(),
        Some("export default () => 2")
    );
    store
        .upsert_worker(js_worker("another"), Some(String::new()), None, 30)
        .await
        .unwrap();
    // Reading the version runs no query; each registry write raised it.
    let queries = store.queries_executed();
    assert!(store.registry_version() >= v0 + 3);
    assert_eq!(store.queries_executed(), queries);

    let names: Vec<_> = store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.spec.name)
        .collect();
    assert_eq!(names, ["another", "triage"]);
    assert_eq!(store.get_worker("triage").await.unwrap(), Some(second));

    let before_delete = store.registry_version();
    assert_eq!(
        store.delete_worker("another", false, 1).await.unwrap(),
        Some(Vec::new())
    );
    assert_eq!(
        store.delete_worker("another", false, 1).await.unwrap(),
        None
    );
    assert_eq!(store.get_worker("another").await.unwrap(), None);
    assert_eq!(store.registry_version(), before_delete + 1);
    assert_eq!(
        store.refresh_registry_version().await.unwrap(),
        store.registry_version()
    );

    let source = store.upsert_source(github_source("gh"), 5).await.unwrap();
    assert_eq!(source.revision, 1);
    assert_eq!(source.spec.secret_env.as_deref(), Some("GH_SECRET"));
    assert_eq!(
        store.list_sources().await.unwrap(),
        std::slice::from_ref(&source)
    );
    assert_eq!(store.get_source("gh").await.unwrap(), Some(source));
    assert!(store.delete_source("gh").await.unwrap());
    assert!(store.list_sources().await.unwrap().is_empty());
}

pub(crate) async fn a_typescript_module_is_stored_with_what_runs_and_shown_as_written(
    store: &dyn Store,
) {
    let source = "export default (n: number): number => n + 1;\n";
    let transpiled = TranspiledModule {
        javascript: "export default (n) => n + 1;\n".into(),
        source_map: json!({ "source": "w.ts", "mappings": "AAAA,eAAe,CAAC,MAAiB,IAAI" }),
    };
    let mut spec = js_worker("typed");
    spec.module = Some("./w.ts".into());
    let added = store
        .upsert_worker(
            spec.clone(),
            Some(source.into()),
            Some(transpiled.clone()),
            10,
        )
        .await
        .unwrap();
    assert_eq!(added.module_source.as_deref(), Some(source));
    assert_eq!(added.transpiled.as_ref(), Some(&transpiled));
    assert_eq!(
        store.get_worker("typed").await.unwrap().as_ref(),
        Some(&added)
    );
    assert_eq!(store.list_workers().await.unwrap(), [added]);

    // Replaced by a JavaScript module, the worker keeps no transpiled code.
    spec.module = Some("./w.js".into());
    let replaced = store
        .upsert_worker(spec, Some("export default (n) => n;".into()), None, 20)
        .await
        .unwrap();
    assert_eq!(replaced.revision, 2);
    assert_eq!(replaced.transpiled, None);
    assert_eq!(store.get_worker("typed").await.unwrap(), Some(replaced));

    // Transpiled code goes with a module.
    let http: WorkerSpec = serde_json::from_value(json!({
        "name": "remote", "kind": "http", "url": "http://127.0.0.1:9/",
    }))
    .unwrap();
    let err = store
        .upsert_worker(http, None, Some(transpiled), 0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "transpiled: only a worker with a module has transpiled code"
    );
    assert!(store.get_worker("remote").await.unwrap().is_none());
}

pub(crate) async fn invalid_registry_input_is_refused_naming_the_field(store: &dyn Store) {
    let mut bad = js_worker("Bad Name");
    let err = store
        .upsert_worker(bad.clone(), Some(String::new()), None, 0)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("worker spec: name: \"Bad Name\" is not a valid name"),
        "{err}"
    );
    bad.name = "ok".into();
    let err = store.upsert_worker(bad, None, None, 0).await.unwrap_err();
    assert_eq!(err.to_string(), "module_source: required for js workers");
    let mut source = github_source("gh");
    source.secret_env = None;
    let err = store.upsert_source(source, 0).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("source spec: secret_env: required"),
        "{err}"
    );
    assert!(store.list_workers().await.unwrap().is_empty());
}

pub(crate) async fn events_are_deduplicated_per_source_and_delivery_id(store: &dyn Store) {
    let first = store
        .insert_event(new_event("gh", "d-1"), 100)
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.record.state, EventState::Received);
    assert_eq!(first.record.payload, json!({ "delivery": "d-1" }));
    let again = store
        .insert_event(new_event("gh", "d-1"), 200)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.record, first.record);
    let other_source = store
        .insert_event(new_event("gl", "d-1"), 300)
        .await
        .unwrap();
    assert!(other_source.created);
    assert_ne!(other_source.record.id, first.record.id);
    assert_eq!(
        store.get_event(first.record.id).await.unwrap(),
        Some(first.record)
    );
}

pub(crate) async fn events_are_deduplicated_per_source_and_body_hash_within_the_window(
    store: &dyn Store,
) {
    let insert = |event: NewEvent, now: i64| async move {
        let inserted = store.insert_event(event, now).await.unwrap();
        (inserted.created, inserted.record)
    };
    let (created, first) = insert(body_event("gh", "d-1", 1, 0), 1_000).await;
    assert!(created);
    // The same body under a new delivery id, with the window starting exactly at the first's
    // receipt: the first event, nothing new.
    let (created, replay) = insert(body_event("gh", "d-2", 1, 1_000), 2_000).await;
    assert!(!created);
    assert_eq!(replay, first);
    // The window starts after the first's receipt: a new event.
    let (created, later) = insert(body_event("gh", "d-3", 1, 1_001), 3_000).await;
    assert!(created);
    assert_ne!(later.id, first.id);
    assert_eq!(later.delivery_id, "d-3");
    // With both in the window the earliest is the original.
    assert_eq!(
        insert(body_event("gh", "d-4", 1, 0), 4_000).await,
        (false, first.clone())
    );
    assert_eq!(
        insert(body_event("gh", "d-4", 1, 2_000), 4_000).await,
        (false, later.clone())
    );
    // The delivery id goes first: a redelivery returns its own event, whatever the body.
    assert_eq!(
        insert(body_event("gh", "d-3", 1, 0), 5_000).await,
        (false, later.clone())
    );
    assert_eq!(
        insert(body_event("gh", "d-1", 2, 0), 5_000).await,
        (false, first.clone())
    );
    // Another body of the same source, and the same body of another source, are new.
    let (created, other_body) = insert(body_event("gh", "d-5", 2, 0), 6_000).await;
    assert!(created && other_body.id != first.id);
    let (created, other_source) = insert(body_event("gl", "d-2", 1, 0), 6_000).await;
    assert!(created && other_source.id != first.id);
    // Without `body_dedup` only the delivery id counts, and no hash is stored for the body:
    // a later delivery of it with `body_dedup` is new.
    let (created, plain) = insert(new_event("gh", "d-6"), 7_000).await;
    assert!(created);
    assert_eq!(insert(new_event("gh", "d-6"), 7_000).await, (false, plain));
    let (created, _) = insert(new_event("gh", "d-7"), 7_000).await;
    assert!(created, "body_dedup None ignores other events' bodies");
    let (created, _) = insert(new_event("sl", "s-1"), 7_000).await;
    assert!(created);
    let (created, _) = insert(body_event("sl", "s-2", 3, 0), 8_000).await;
    assert!(
        created,
        "an event stored without a hash never matches a body"
    );
    let (created, _) = insert(body_event("sl", "s-3", 3, 0), 8_000).await;
    assert!(!created, "but one stored with it does");

    // Two deliveries of one body at once: one event.
    let (a, b) = tokio::join!(
        store.insert_event(body_event("gh", "c-1", 9, 0), 9_000),
        store.insert_event(body_event("gh", "c-2", 9, 0), 9_000),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.created ^ b.created, "{a:?} {b:?}");
    assert_eq!(a.record.id, b.record.id);
    let gh = store
        .list_events(&EventFilter {
            source: Some("gh".into()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(gh.items.len(), 6, "d-1, d-3, d-5, d-6, d-7, c-*");
}

pub(crate) async fn events_move_only_along_their_lifecycle(store: &dyn Store) {
    let id = store
        .insert_event(new_event("gh", "d"), 0)
        .await
        .unwrap()
        .record
        .id;
    let update = |state, error: Option<&str>, next: Option<i64>| EventUpdate {
        state,
        error: error.map(str::to_owned),
        next_write_back_at: next,
    };
    let err = store
        .update_event(id, update(EventState::Completed, None, None), 1)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("event {id} cannot go from received to completed")
    );
    for state in [EventState::Matched, EventState::Dispatched] {
        store
            .update_event(id, update(state, None, None), 2)
            .await
            .unwrap();
    }
    let failed = store
        .update_event(
            id,
            update(EventState::WriteBackFailed, Some("502"), Some(5_000)),
            3,
        )
        .await
        .unwrap();
    assert_eq!(failed.write_back_attempts, 1);
    assert_eq!(failed.next_write_back_at, Some(5_000));
    let failed = store
        .update_event(
            id,
            update(EventState::WriteBackFailed, Some("503"), Some(9_000)),
            4,
        )
        .await
        .unwrap();
    assert_eq!(
        (failed.write_back_attempts, failed.error.as_deref()),
        (2, Some("503"))
    );
    let done = store
        .update_event(id, update(EventState::Completed, None, None), 5)
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.error, done.updated_at),
        (EventState::Completed, None, 5)
    );
    let err = store
        .update_event(404_404, update(EventState::Matched, None, None), 6)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "event 404404 not found");
}

pub(crate) async fn one_task_per_event_and_worker_and_per_idempotency_key(store: &dyn Store) {
    let event = store
        .insert_event(new_event("gh", "d"), 0)
        .await
        .unwrap()
        .record;
    let for_event = |worker: &str| NewTask {
        worker: worker.into(),
        event_id: Some(event.id),
        idempotency_key: None,
        payload: json!({}),
        next_run_at: 0,
    };
    let a = store.create_task(for_event("a"), 1).await.unwrap();
    let a_again = store.create_task(for_event("a"), 2).await.unwrap();
    let b = store.create_task(for_event("b"), 3).await.unwrap();
    assert!(a.created && !a_again.created && b.created);
    assert_eq!(a_again.record, a.record);
    assert_ne!(a.record.id, b.record.id);
    assert_eq!(a.record.trigger, TaskTrigger::Webhook);

    let keyed = store
        .create_task(api_task("a", Some("k1"), 0), 4)
        .await
        .unwrap();
    assert_eq!(keyed.record.trigger, TaskTrigger::Api);
    let keyed_again = store
        .create_task(api_task("a", Some("k1"), 99), 5)
        .await
        .unwrap();
    let other_worker = store
        .create_task(api_task("b", Some("k1"), 0), 6)
        .await
        .unwrap();
    let no_key_1 = store.create_task(api_task("a", None, 0), 7).await.unwrap();
    let no_key_2 = store.create_task(api_task("a", None, 0), 8).await.unwrap();
    assert!(keyed.created && !keyed_again.created && other_worker.created);
    assert_eq!(keyed_again.record, keyed.record);
    assert!(no_key_1.created && no_key_2.created);

    let err = store
        .create_task(
            NewTask {
                event_id: Some(777),
                ..for_event("a")
            },
            9,
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "event 777 not found");
}

pub(crate) async fn claims_take_due_tasks_under_a_lease_and_completions_are_fenced(
    store: &dyn Store,
) {
    let late = task_id(store, "w", 300).await;
    let first = task_id(store, "w", 100).await;
    let second = task_id(store, "w", 200).await;
    let claimed = store.claim_due(250, 10_250, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|t| t.id).collect();
    assert_eq!(ids, [first, second], "only due tasks, oldest first");
    for task in &claimed {
        assert_eq!(task.state, TaskState::Dispatched);
        assert_eq!((task.attempt, task.tries), (1, 1));
        assert_eq!(task.lease_expires_at, Some(10_250));
    }
    assert!(store.claim_due(250, 10_250, 10).await.unwrap().is_empty());
    let limited = store.claim_due(1_000, 2_000, 1).await.unwrap();
    assert_eq!(limited.iter().map(|t| t.id).collect::<Vec<_>>(), [late]);

    let err = store
        .complete_task(first, 2, json!("too new"), 260)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::StaleAttempt {
            id: first,
            attempt: 2,
            current_attempt: 1,
            state: TaskState::Dispatched
        }
    );
    let done = store
        .complete_task(first, 1, json!({ "reply": "hi" }), 270)
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.result, Some(json!({ "reply": "hi" })));
    assert_eq!(done.lease_expires_at, None);
    let err = store
        .complete_task(first, 1, json!(null), 280)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task {first}: attempt 1 is not current (the task is completed at attempt 1)")
    );
    let err = store
        .complete_task(9_999, 1, json!(null), 280)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "task 9999 not found");
}

pub(crate) async fn expired_leases_are_requeued_and_the_late_reply_is_rejected(store: &dyn Store) {
    let id = task_id(store, "w", 0).await;
    let first = store.claim_due(0, 1_000, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.requeue_expired_leases(999).await.unwrap().is_empty());
    let requeued = store.requeue_expired_leases(1_000).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(
        (
            requeued[0].state,
            requeued[0].next_run_at,
            requeued[0].lease_expires_at
        ),
        (TaskState::Pending, 1_000, None)
    );
    let second = store.claim_due(1_000, 2_000, 10).await.unwrap();
    assert_eq!(second[0].attempt, 2);
    let late = store.complete_task(id, 1, json!("late"), 1_500).await;
    assert!(
        matches!(
            late,
            Err(StoreError::StaleAttempt {
                current_attempt: 2,
                ..
            })
        ),
        "{late:?}"
    );
    let done = store
        .complete_task(id, 2, json!("current"), 1_600)
        .await
        .unwrap();
    assert_eq!(done.result, Some(json!("current")));

    // Startup of a lone server: every dispatched task is orphaned, lease or not.
    let other = task_id(store, "w", 0).await;
    store.claim_due(2_000, 999_999, 10).await.unwrap();
    let requeued = store.requeue_all_dispatched(2_100).await.unwrap();
    assert_eq!(requeued.iter().map(|t| t.id).collect::<Vec<_>>(), [other]);
    assert_eq!(requeued[0].state, TaskState::Pending);
}

pub(crate) async fn retry_cancel_release_and_reschedule_follow_the_lifecycle(store: &dyn Store) {
    let id = task_id(store, "w", 0).await;
    let claim = |now| async move { store.claim_due(now, now + 100, 1).await.unwrap().remove(0) };

    // Rate limited: the claim is given back without counting as a try; its attempt stays fenced.
    let t = claim(0).await;
    let released = store
        .release_task(id, t.attempt, 50, Release::OnReservedToken, 1)
        .await
        .unwrap();
    assert_eq!(
        (
            released.state,
            released.attempt,
            released.tries,
            released.runs
        ),
        (TaskState::Pending, 1, 0, 0)
    );
    assert_eq!(
        (released.next_run_at, released.reserved_slot),
        (50, Some(50))
    );
    assert!(store.complete_task(id, 1, json!(null), 2).await.is_err());

    // The reserved token travels with the task to whoever claims it next.
    let t = claim(50).await;
    assert_eq!(
        (t.attempt, t.tries, t.runs, t.reserved_slot),
        (2, 1, 1, Some(50))
    );
    // A claim whose lease runs out may have spent its token: the requeued task has none.
    let requeued = store
        .requeue_expired_leases(t.lease_expires_at.unwrap())
        .await
        .unwrap();
    assert_eq!(requeued[0].reserved_slot, None);
    let t = claim(150).await;
    assert_eq!((t.attempt, t.reserved_slot), (3, None));
    // A release for another reason reserves nothing.
    let released = store
        .release_task(id, t.attempt, 50, Release::Unreserved, 51)
        .await
        .unwrap();
    assert_eq!((released.reserved_slot, released.runs), (None, 1));

    // A transport failure the server decided to retry.
    let t = claim(50).await;
    assert_eq!((t.attempt, t.tries), (4, 2));
    let rescheduled = store
        .reschedule_task(id, t.attempt, 500, "connection refused", 60)
        .await
        .unwrap();
    assert_eq!(
        (
            rescheduled.state,
            rescheduled.next_run_at,
            rescheduled.error.as_deref()
        ),
        (TaskState::Pending, 500, Some("connection refused"))
    );

    let t = claim(500).await;
    let dead = store
        .fail_task(id, t.attempt, TaskState::Dead, "retries exhausted", 510)
        .await
        .unwrap();
    assert_eq!(dead.state, TaskState::Dead);
    let err = store
        .fail_task(id, t.attempt, TaskState::Completed, "x", 511)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");

    let retried = store.retry_task(id, 600, 520).await.unwrap();
    assert_eq!(
        (
            retried.state,
            retried.tries,
            retried.attempt,
            retried.next_run_at,
            retried.runs
        ),
        // Three attempts ran (two claims were released): a manual retry keeps counting them.
        (TaskState::Pending, 0, 5, 600, 3)
    );
    let err = store.retry_task(id, 600, 530).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task {id} cannot go from pending to pending")
    );

    // Canceling a running task fences out its completion.
    let t = claim(600).await;
    let canceled = store.cancel_task(id, 610).await.unwrap();
    assert_eq!(
        (canceled.state, canceled.lease_expires_at),
        (TaskState::Canceled, None)
    );
    let late = store
        .complete_task(id, t.attempt, json!(null), 620)
        .await
        .unwrap_err();
    assert!(matches!(
        late,
        StoreError::StaleAttempt {
            state: TaskState::Canceled,
            ..
        }
    ));
    let err = store.cancel_task(id, 630).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task {id} cannot go from canceled to canceled")
    );
    let err = store.retry_task(id, 0, 640).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task {id} cannot go from canceled to pending")
    );

    let other = task_id(store, "w", 10_000).await;
    let failed_id = task_id(store, "w", 0).await;
    let t = claim(700).await;
    assert_eq!(t.id, failed_id);
    store
        .fail_task(failed_id, t.attempt, TaskState::Failed, "HTTP 500", 710)
        .await
        .unwrap();
    assert_eq!(
        store.retry_task(failed_id, 800, 720).await.unwrap().state,
        TaskState::Pending
    );
    assert_eq!(
        store.cancel_task(other, 730).await.unwrap().state,
        TaskState::Canceled
    );
    let err = store.cancel_task(12_345, 740).await.unwrap_err();
    assert_eq!(err.to_string(), "task 12345 not found");
}

pub(crate) async fn listings_filter_and_page_newest_first(store: &dyn Store) {
    let event = store
        .insert_event(new_event("gh", "d"), 0)
        .await
        .unwrap()
        .record;
    let mut a_ids = Vec::new();
    for i in 0..25 {
        a_ids.push(task_id(store, "a", i).await);
        task_id(store, "b", i).await;
    }
    let for_event = store
        .create_task(
            NewTask {
                worker: "c".into(),
                event_id: Some(event.id),
                idempotency_key: None,
                payload: Value::Null,
                next_run_at: 0,
            },
            0,
        )
        .await
        .unwrap()
        .record;

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_tasks(&TaskFilter {
                worker: Some("a".into()),
                limit: Some(10),
                cursor,
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.iter().all(|t| t.worker == "a"));
        seen.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    a_ids.reverse();
    assert_eq!(seen, a_ids, "every task once, newest first");
    assert_eq!(pages, 3);

    let by_event = store
        .list_tasks(&TaskFilter {
            event_id: Some(event.id),
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_event.items, [for_event]);
    assert_eq!(by_event.next_cursor, None);

    store.claim_due(3, 100, 100).await.unwrap(); // claims next_run_at 0..=3 of a, b and c
    let dispatched = store
        .list_tasks(&TaskFilter {
            state: Some(TaskState::Dispatched),
            worker: Some("b".into()),
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dispatched.items.len(), 4);

    let counts = store.task_counts(None).await.unwrap();
    assert_eq!(counts.len(), TaskState::ALL.len(), "every state is present");
    assert_eq!(counts[&TaskState::Dispatched], 9);
    assert_eq!(counts[&TaskState::Pending], 42);
    assert_eq!(counts[&TaskState::Completed], 0);
    assert_eq!(
        store.task_counts(Some("c")).await.unwrap()[&TaskState::Dispatched],
        1
    );
    let per_worker = store.task_counts_per_worker().await.unwrap();
    assert_eq!(per_worker["c"][&TaskState::Dispatched], 1);
    assert_eq!(per_worker["b"][&TaskState::Dispatched], 4);
    for (worker, states) in &per_worker {
        assert_eq!(states.len(), TaskState::ALL.len(), "{worker}: every state");
        assert_eq!(states, &store.task_counts(Some(worker)).await.unwrap());
    }
    for state in TaskState::ALL {
        let sum: u64 = per_worker.values().map(|states| states[state]).sum();
        assert_eq!(sum, counts[state], "{state:?} over all workers");
    }

    store.insert_event(new_event("gl", "x"), 0).await.unwrap();
    let gl = store
        .list_events(&EventFilter {
            source: Some("gl".into()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(gl.items.len(), 1);
    let mut push = new_event("gh", "p");
    push.event_type = "push".into();
    let push = store.insert_event(push, 0).await.unwrap().record;
    let of_type = |event_type: &str| EventFilter {
        event_type: Some(event_type.into()),
        ..EventFilter::default()
    };
    assert_eq!(
        store.list_events(&of_type("push")).await.unwrap().items,
        std::slice::from_ref(&push)
    );
    assert!(
        store
            .list_events(&of_type("issues"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    store
        .update_event(
            push.id,
            EventUpdate {
                state: EventState::Skipped,
                error: None,
                next_write_back_at: None,
            },
            1,
        )
        .await
        .unwrap();
    let received = store
        .list_events(&EventFilter {
            state: Some(EventState::Received),
            limit: Some(1),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(received.items[0].source, "gl");
    let rest = store
        .list_events(&EventFilter {
            state: Some(EventState::Received),
            cursor: received.next_cursor,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.items, [event]);
}

pub(crate) async fn next_due_reports_the_earliest_work(store: &dyn Store) {
    assert_eq!(store.next_due().await.unwrap(), NextDue::default());
    task_id(store, "w", 500).await;
    task_id(store, "w", 300).await;
    let due = store.next_due().await.unwrap();
    assert_eq!((due.task_run_at, due.earliest()), (Some(300), Some(300)));

    store.claim_due(300, 9_000, 1).await.unwrap();
    let due = store.next_due().await.unwrap();
    assert_eq!(
        due,
        NextDue {
            task_run_at: Some(500),
            lease_expires_at: Some(9_000),
            write_back_at: None
        }
    );

    let event = store
        .insert_event(new_event("gh", "d"), 0)
        .await
        .unwrap()
        .record;
    for state in [EventState::Matched, EventState::Dispatched] {
        let update = EventUpdate {
            state,
            error: None,
            next_write_back_at: None,
        };
        store.update_event(event.id, update, 1).await.unwrap();
    }
    let update = EventUpdate {
        state: EventState::WriteBackFailed,
        error: Some("429".into()),
        next_write_back_at: Some(200),
    };
    store.update_event(event.id, update, 2).await.unwrap();
    assert_eq!(store.next_due().await.unwrap().earliest(), Some(200));
    let due_now = store
        .list_events(&EventFilter {
            write_back_due_by: Some(200),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(due_now.items.len(), 1);
    let not_yet = store
        .list_events(&EventFilter {
            write_back_due_by: Some(199),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(not_yet.items.is_empty());
}

pub(crate) async fn cron_fires_create_one_task_per_worker_and_time(store: &dyn Store) {
    store
        .upsert_worker(js_worker("nightly"), Some(String::new()), None, 0)
        .await
        .unwrap();
    let task = store
        .record_cron_fire("nightly", 60_000, json!({ "fire_time": 60_000 }), 60_001)
        .await
        .unwrap()
        .expect("the first fire creates a task");
    assert_eq!(
        (task.worker.as_str(), task.next_run_at),
        ("nightly", 60_000)
    );
    assert_eq!(task.payload, json!({ "fire_time": 60_000 }));
    assert_eq!(task.trigger, TaskTrigger::Cron);
    assert_eq!(
        store
            .record_cron_fire("nightly", 60_000, json!({}), 60_002)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .record_cron_fire("nightly", 120_000, json!({}), 120_001)
            .await
            .unwrap()
            .is_some()
    );
    let err = store
        .record_cron_fire("ghost", 60_000, json!({}), 0)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "worker ghost not found");
    assert_eq!(
        store.last_cron_fire("nightly").await.unwrap(),
        Some(120_000)
    );
    assert_eq!(store.last_cron_fire("ghost").await.unwrap(), None);
    assert_eq!(store.prune(100_000).await.unwrap().cron_fires, 1);
}

pub(crate) async fn logs_are_filtered_paged_and_pruned(store: &dyn Store) {
    let entry =
        |ts: i64, action: &str, outcome, task: Option<i64>, worker: Option<&str>| LogRecord {
            trace_id: Some(format!("trace-{}", ts % 2)),
            ts,
            action: action.into(),
            outcome,
            event_id: Some(ts / 10),
            task_id: task,
            worker: worker.map(str::to_owned),
            attempt: task.map(|_| 1),
            error: (outcome == LogOutcome::Fail).then(|| "boom".into()),
            detail: Some(json!({ "ts": ts })),
        };
    store
        .append_logs(vec![
            entry(10, "webhook", LogOutcome::Ok, None, None),
            entry(11, "match", LogOutcome::Ok, None, Some("a")),
            entry(20, "dispatch", LogOutcome::Fail, Some(7), Some("a")),
            entry(21, "dispatch", LogOutcome::Retry, Some(7), Some("a")),
            entry(30, "policy", LogOutcome::Deny, None, Some("b")),
        ])
        .await
        .unwrap();
    let ts_of = |query: LogQuery| async move {
        let page = store.query_logs(&query).await.unwrap();
        page.items.iter().map(|e| e.record.ts).collect::<Vec<_>>()
    };
    assert_eq!(ts_of(LogQuery::default()).await, [30, 21, 20, 11, 10]);
    assert_eq!(
        ts_of(LogQuery {
            event_id: Some(2),
            ..LogQuery::default()
        })
        .await,
        [21, 20]
    );
    assert_eq!(
        ts_of(LogQuery {
            task_id: Some(7),
            ..LogQuery::default()
        })
        .await,
        [21, 20]
    );
    assert_eq!(
        ts_of(LogQuery {
            worker: Some("a".into()),
            ..LogQuery::default()
        })
        .await,
        [21, 20, 11]
    );
    assert_eq!(
        ts_of(LogQuery {
            action: Some("dispatch".into()),
            ..LogQuery::default()
        })
        .await,
        [21, 20]
    );
    assert_eq!(
        ts_of(LogQuery {
            outcome: Some(LogOutcome::Deny),
            ..LogQuery::default()
        })
        .await,
        [30]
    );
    assert_eq!(
        ts_of(LogQuery {
            since: Some(21),
            ..LogQuery::default()
        })
        .await,
        [30, 21]
    );
    assert_eq!(
        ts_of(LogQuery {
            trace_id: Some("trace-1".into()),
            ..LogQuery::default()
        })
        .await,
        [21, 11]
    );
    assert_eq!(
        ts_of(LogQuery {
            worker: Some("a".into()),
            outcome: Some(LogOutcome::Fail),
            ..LogQuery::default()
        })
        .await,
        [20]
    );

    let first = store
        .query_logs(&LogQuery {
            limit: Some(2),
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.items[1].record.detail, Some(json!({ "ts": 21 })));
    let next = store
        .query_logs(&LogQuery {
            limit: Some(2),
            cursor: first.next_cursor,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.items.iter().map(|e| e.record.ts).collect::<Vec<_>>(),
        [20, 11]
    );
    assert_eq!(next.items[0].record.error.as_deref(), Some("boom"));
    assert_eq!(next.items[0].record.attempt, Some(1));

    assert_eq!(store.prune(20).await.unwrap().logs, 2);
    assert_eq!(ts_of(LogQuery::default()).await, [30, 21, 20]);
}

pub(crate) async fn an_idle_store_runs_no_queries(store: &dyn Store) {
    task_id(store, "w", 0).await;
    let before = store.queries_executed();
    // What an idle server does: compare the registry version, read counters, sleep.
    for _ in 0..100 {
        store.registry_version();
        store.commits();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(store.queries_executed(), before);
    store.get_task(1).await.unwrap();
    assert_eq!(store.queries_executed(), before + 1);
}

pub(crate) async fn concurrent_creates_all_commit_with_distinct_ids(store: &dyn Store) {
    let creates =
        (0..1_000).map(|i| store.create_task(api_task("w", Some(&format!("k{i}")), 0), 0));
    let results = futures_join_all(creates).await;
    let ids: HashSet<i64> = results.into_iter().map(|r| r.unwrap().record.id).collect();
    assert_eq!(ids.len(), 1_000);
    assert_eq!(
        store.task_counts(Some("w")).await.unwrap()[&TaskState::Pending],
        1_000
    );
}

pub(crate) async fn token_buckets_reserve_slots_and_refuse_without_taking(store: &dyn Store) {
    // Whole-millisecond intervals, so both backends' floating point gives the same slots.
    let rate = TokenRate {
        per_second: 2.0,
        burst: 3,
    };
    let granted = |tokens: Tokens| match tokens {
        Tokens::Granted(slots) => slots,
        Tokens::NotBefore(at) => panic!("refused until {at}"),
    };
    let now = 1_000_000;
    let first = granted(
        store
            .take_tokens("worker:w", rate, Take::Reserve(5), now)
            .await
            .unwrap(),
    );
    assert_eq!(first, [now, now, now, now + 500, now + 1000]);
    // The next reservation continues where the last one ended; another bucket is separate.
    let next = granted(
        store
            .take_tokens("worker:w", rate, Take::Reserve(1), now)
            .await
            .unwrap(),
    );
    assert_eq!(next, [now + 1500]);
    let other = granted(
        store
            .take_tokens("worker:x", rate, Take::Reserve(1), now)
            .await
            .unwrap(),
    );
    assert_eq!(other, [now]);
    // A refusal says when, and takes nothing.
    let source = TokenRate {
        per_second: 1.0,
        burst: 2,
    };
    for _ in 0..2 {
        assert_eq!(
            store
                .take_tokens("source:gh", source, Take::IfFree, now)
                .await
                .unwrap(),
            Tokens::Granted(vec![now])
        );
    }
    assert_eq!(
        store
            .take_tokens("source:gh", source, Take::IfFree, now)
            .await
            .unwrap(),
        Tokens::NotBefore(now + 1000)
    );
    assert_eq!(
        store
            .take_tokens("source:gh", source, Take::IfFree, now + 1000)
            .await
            .unwrap(),
        Tokens::Granted(vec![now + 1000])
    );
    // A changed rate starts a full bucket; a long idle bucket is full again, never more.
    let faster = TokenRate {
        per_second: 10.0,
        burst: 1,
    };
    assert_eq!(
        granted(
            store
                .take_tokens("worker:w", faster, Take::Reserve(2), now)
                .await
                .unwrap()
        ),
        [now, now + 100]
    );
    let later = now + 3_600_000;
    assert_eq!(
        granted(
            store
                .take_tokens("worker:w", rate, Take::Reserve(4), later)
                .await
                .unwrap()
        ),
        [later, later, later, later + 500]
    );
    // An unusable rate is refused, not divided by.
    let zero = TokenRate {
        per_second: 0.0,
        burst: 1,
    };
    assert!(matches!(
        store
            .take_tokens("worker:z", zero, Take::Reserve(1), now)
            .await,
        Err(StoreError::InvalidInput(_))
    ));
}

pub(crate) async fn write_back_claims_hide_events_until_they_expire(store: &dyn Store) {
    store.upsert_source(github_source("gh"), 0).await.unwrap();
    let mut ids = Vec::new();
    for (i, due) in [(1, 100), (2, 200), (3, 100_000)] {
        let event = store
            .insert_event(new_event("gh", &format!("d{i}")), 0)
            .await
            .unwrap()
            .record;
        for state in [EventState::Matched, EventState::Dispatched] {
            store
                .update_event(
                    event.id,
                    EventUpdate {
                        state,
                        error: None,
                        next_write_back_at: None,
                    },
                    0,
                )
                .await
                .unwrap();
        }
        store
            .update_event(
                event.id,
                EventUpdate {
                    state: EventState::WriteBackFailed,
                    error: Some("503".into()),
                    next_write_back_at: Some(due),
                },
                0,
            )
            .await
            .unwrap();
        ids.push(event.id);
    }
    // A first write-back is claimed once; a claim that ran out can be taken again.
    let fresh = store
        .insert_event(new_event("gh", "first"), 0)
        .await
        .unwrap()
        .record;
    assert!(
        store
            .claim_write_back(fresh.id, 100, 1_000)
            .await
            .unwrap()
            .is_none(),
        "received"
    );
    store
        .update_event(
            fresh.id,
            EventUpdate {
                state: EventState::Matched,
                error: None,
                next_write_back_at: None,
            },
            0,
        )
        .await
        .unwrap();
    let first = store.claim_write_back(fresh.id, 100, 1_000).await.unwrap();
    assert_eq!(first.map(|e| e.next_write_back_at), Some(Some(1_000)));
    assert!(
        store
            .claim_write_back(fresh.id, 999, 2_000)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim_write_back(fresh.id, 1_000, 2_000)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .claim_write_back(ids[0], 100, 1_000)
            .await
            .unwrap()
            .is_none(),
        "failed ones are retried, not claimed first"
    );

    let claimed = store.claim_write_backs(500, 60_500, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    assert!(claimed.iter().all(|e| e.next_write_back_at == Some(60_500)));
    // Claimed: no other server sees them due until the claim runs out.
    assert!(
        store
            .claim_write_backs(600, 60_600, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.claim_write_backs(60_500, 120_000, 1).await.unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[0]]);
    // Other states are never claimed.
    store
        .update_event(
            ids[1],
            EventUpdate {
                state: EventState::Completed,
                error: None,
                next_write_back_at: None,
            },
            0,
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_write_backs(200_000, 300_000, 10)
            .await
            .unwrap()
            .iter()
            .all(|e| e.id != ids[1])
    );
}

pub(crate) async fn renewed_leases_keep_a_claim_and_stale_ones_are_ignored(store: &dyn Store) {
    let (a, b) = (task_id(store, "w", 0).await, task_id(store, "w", 0).await);
    let claimed = store.claim_due(10, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // The claim of `a` is renewed; `b` is renewed under a wrong attempt, which changes nothing.
    assert_eq!(
        store.renew_leases(&[(a, 1), (b, 7)], 5_000).await.unwrap(),
        1
    );
    let requeued = store.requeue_expired_leases(2_000).await.unwrap();
    assert_eq!(requeued.iter().map(|t| t.id).collect::<Vec<_>>(), [b]);
    let kept = store.get_task(a).await.unwrap().unwrap();
    assert_eq!(
        (kept.state, kept.lease_expires_at),
        (TaskState::Dispatched, Some(5_000))
    );
    // A task no longer dispatched is not renewed back into a claim.
    store.complete_task(a, 1, json!(null), 3_000).await.unwrap();
    assert_eq!(store.renew_leases(&[(a, 1)], 9_000).await.unwrap(), 0);
    assert_eq!(store.renew_leases(&[], 9_000).await.unwrap(), 0);
}

pub(crate) async fn text_with_nul_characters_is_stored(store: &dyn Store) {
    // A worker's error or a payload's event type may hold U+0000, which PostgreSQL's TEXT
    // cannot: it must still be stored (readably), never fail the write.
    let shown = |text: &str| text.replace(['\0', '\u{FFFD}'], "_");
    let id = task_id(store, "w", 0).await;
    let t = store.claim_due(0, 100, 1).await.unwrap().remove(0);
    let failed = store
        .fail_task(id, t.attempt, TaskState::Failed, "bad\0byte", 1)
        .await
        .unwrap();
    assert_eq!(shown(failed.error.as_deref().unwrap()), "bad_byte");
    store.upsert_source(github_source("gh"), 0).await.unwrap();
    let event = NewEvent {
        event_type: "issues.\0".into(),
        ..new_event("gh", "nul")
    };
    let stored = store.insert_event(event, 0).await.unwrap().record;
    assert_eq!(shown(&stored.event_type), "issues._");
    store
        .append_logs(vec![LogRecord {
            trace_id: None,
            ts: 5,
            action: "dispatch".into(),
            outcome: LogOutcome::Fail,
            event_id: None,
            task_id: Some(id),
            worker: Some("w".into()),
            attempt: Some(1),
            error: Some("a\0b".into()),
            detail: None,
        }])
        .await
        .unwrap();
    let logged = store
        .query_logs(&LogQuery {
            task_id: Some(id),
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        shown(logged.items[0].record.error.as_deref().unwrap()),
        "a_b"
    );
}

pub(crate) async fn instances_heartbeat_list_and_leave(store: &dyn Store) {
    let instance = |id: &str| Instance {
        id: id.into(),
        address: format!("http://127.0.0.1:1/{id}"),
        version: "0.1.0".into(),
        started_at: 1_000,
        last_seen: 0,
    };
    store.heartbeat(&instance("a"), 5_000).await.unwrap();
    store.heartbeat(&instance("b"), 5_000).await.unwrap();
    store.heartbeat(&instance("a"), 20_000).await.unwrap();
    let seen = store.list_instances(10_000).await.unwrap();
    assert_eq!(
        seen,
        [Instance {
            last_seen: 20_000,
            ..instance("a")
        }]
    );
    assert_eq!(store.list_instances(0).await.unwrap().len(), 2);
    store.remove_instance("a").await.unwrap();
    assert!(store.list_instances(10_000).await.unwrap().is_empty());
}

/// Polls every future concurrently on the current task (no spawning, so `&dyn Store` borrows
/// are fine) and returns their outputs in order.
pub(crate) async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

pub(crate) async fn claiming_an_events_task_dispatches_the_matched_event(store: &dyn Store) {
    let mut events = Vec::new();
    for delivery in ["matched", "received"] {
        let event = store
            .insert_event(new_event("gh", delivery), 0)
            .await
            .unwrap()
            .record;
        let task = NewTask {
            event_id: Some(event.id),
            ..api_task("w", None, 0)
        };
        assert!(store.create_task(task, 0).await.unwrap().created);
        events.push(event.id);
    }
    let matched = EventUpdate {
        state: EventState::Matched,
        error: None,
        next_write_back_at: None,
    };
    store.update_event(events[0], matched, 1).await.unwrap();

    assert_eq!(store.claim_due(5, 1_000, 10).await.unwrap().len(), 2);
    let dispatched = store.get_event(events[0]).await.unwrap().unwrap();
    assert_eq!(
        (dispatched.state, dispatched.updated_at),
        (EventState::Dispatched, 5)
    );
    // Still being matched: its matcher moves it on; `received -> dispatched` is no transition.
    let received = store.get_event(events[1]).await.unwrap().unwrap();
    assert_eq!(received.state, EventState::Received);
}

pub(crate) async fn console_output_is_kept_per_attempt_in_order(store: &dyn Store) {
    let line = |level: ConsoleLevel, ts: i64, message: &str| ConsoleLine {
        level,
        ts,
        message: message.into(),
    };
    let shown = |lines: Vec<AttemptConsoleLine>| -> Vec<(u32, ConsoleLevel, i64, String)> {
        lines
            .into_iter()
            .map(|l| (l.attempt, l.line.level, l.line.ts, l.line.message))
            .collect()
    };
    let id = task_id(store, "w", 0).await;
    let other = task_id(store, "w", 0).await;
    // A task none of whose attempts wrote anything.
    assert_eq!(store.task_console(id).await.unwrap(), []);

    let first = vec![
        line(ConsoleLevel::Log, 1_700_000_000_001, "starting"),
        line(ConsoleLevel::Warn, 1_700_000_000_002, "slow: {\"ms\":900}"),
        line(
            ConsoleLevel::Error,
            1_700_000_000_003,
            "two\nlines, ünïcode, a\0nul",
        ),
    ];
    let second = vec![
        line(ConsoleLevel::Info, 1_700_000_100_000, "again"),
        line(ConsoleLevel::Debug, 1_700_000_100_001, "done"),
    ];
    // Recorded out of order (a late answer of attempt 1): read back by attempt.
    store.record_console(id, 2, &second, 20).await.unwrap();
    store.record_console(id, 1, &first, 10).await.unwrap();
    store
        .record_console(other, 1, &[line(ConsoleLevel::Log, 5, "other task")], 10)
        .await
        .unwrap();
    // The same attempt recorded again (a retried write) keeps one copy.
    store.record_console(id, 1, &first, 11).await.unwrap();
    let kept = shown(store.task_console(id).await.unwrap());
    let nul_free = |text: &str| text.replace(['\0', '\u{FFFD}'], "_");
    assert_eq!(
        kept.iter()
            .map(|(a, level, ts, m)| (*a, *level, *ts, nul_free(m)))
            .collect::<Vec<_>>(),
        [
            (
                1,
                ConsoleLevel::Log,
                1_700_000_000_001,
                "starting".to_owned()
            ),
            (
                1,
                ConsoleLevel::Warn,
                1_700_000_000_002,
                "slow: {\"ms\":900}".to_owned()
            ),
            (
                1,
                ConsoleLevel::Error,
                1_700_000_000_003,
                "two\nlines, ünïcode, a_nul".to_owned()
            ),
            (2, ConsoleLevel::Info, 1_700_000_100_000, "again".to_owned()),
            (2, ConsoleLevel::Debug, 1_700_000_100_001, "done".to_owned()),
        ]
    );
    assert_eq!(
        shown(store.task_console(other).await.unwrap()),
        [(1, ConsoleLevel::Log, 5, "other task".to_owned())]
    );

    // Nothing written is nothing stored, without a query.
    let third = task_id(store, "w", 0).await;
    let queries = store.queries_executed();
    store.record_console(third, 1, &[], 30).await.unwrap();
    assert_eq!(store.queries_executed(), queries);
    assert_eq!(store.task_console(third).await.unwrap(), []);

    let missing = store
        .record_console(9_999, 1, &first, 30)
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, StoreError::NotFound { what: "task", .. }),
        "{missing}"
    );
    let no_attempt = store.record_console(id, 0, &first, 30).await.unwrap_err();
    assert!(
        matches!(no_attempt, StoreError::InvalidInput(_)),
        "{no_attempt}"
    );
    assert_eq!(store.task_console(id).await.unwrap().len(), 5);
}

pub(crate) async fn per_actor_limits_count_events_in_a_sliding_window_once_each(store: &dyn Store) {
    let hour = 3_600_000;
    // Two admissions an hour for alice on `triage`: the third within the hour is refused.
    assert!(
        store
            .admit_actor("triage", "alice", 1, 2, hour, 0)
            .await
            .unwrap()
    );
    assert!(
        store
            .admit_actor("triage", "alice", 2, 2, hour, 10)
            .await
            .unwrap()
    );
    assert!(
        !store
            .admit_actor("triage", "alice", 3, 2, hour, 20)
            .await
            .unwrap()
    );
    // An event admitted before is admitted again (matched again after a crash), not counted.
    assert!(
        store
            .admit_actor("triage", "alice", 2, 2, hour, 30)
            .await
            .unwrap()
    );
    assert!(
        !store
            .admit_actor("triage", "alice", 4, 2, hour, 40)
            .await
            .unwrap()
    );
    // Other actors and other workers have their own counts.
    assert!(
        store
            .admit_actor("triage", "bob", 3, 2, hour, 20)
            .await
            .unwrap()
    );
    assert!(
        store
            .admit_actor("label", "alice", 3, 2, hour, 20)
            .await
            .unwrap()
    );
    // The window slides: once the first admission is an hour old, one more fits.
    assert!(
        !store
            .admit_actor("triage", "alice", 5, 2, hour, hour - 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .admit_actor("triage", "alice", 5, 2, hour, hour)
            .await
            .unwrap()
    );
    assert!(
        !store
            .admit_actor("triage", "alice", 6, 2, hour, hour + 5)
            .await
            .unwrap()
    );
    // Concurrent admissions of one pair never exceed the limit.
    let admitted = futures_join_all(
        (100..120).map(|event| store.admit_actor("burst", "carol", event, 5, hour, 0)),
    )
    .await;
    let admitted = admitted
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(admitted, 5);
}

pub(crate) async fn an_event_every_policy_refused_ends_ignored(store: &dyn Store) {
    let id = store
        .insert_event(new_event("gh", "d"), 0)
        .await
        .unwrap()
        .record
        .id;
    let ignored = EventUpdate {
        state: EventState::Ignored,
        error: None,
        next_write_back_at: None,
    };
    let event = store.update_event(id, ignored.clone(), 1).await.unwrap();
    assert_eq!(event.state, EventState::Ignored);
    let filter = EventFilter {
        state: Some(EventState::Ignored),
        ..EventFilter::default()
    };
    assert_eq!(store.list_events(&filter).await.unwrap().items, [event]);
    let matched = EventUpdate {
        state: EventState::Matched,
        ..ignored
    };
    assert!(matches!(
        store.update_event(id, matched, 2).await,
        Err(StoreError::InvalidTransition { .. })
    ));
}

fn new_key(name: &str, scope: ApiScope, hash: u8, expires_at: Option<i64>) -> NewApiKey {
    NewApiKey {
        name: name.into(),
        scope,
        hash: vec![hash; 32],
        expires_at,
    }
}

pub(crate) async fn api_keys_are_created_once_listed_revoked_and_bump_the_version(
    store: &dyn Store,
) {
    let v0 = store.registry_version();
    let ci = store
        .create_api_key(new_key("ci", ApiScope::Operate, 1, Some(9_000)), 100)
        .await
        .unwrap();
    assert_eq!(ci.scope, ApiScope::Operate);
    assert_eq!(
        (ci.created_at, ci.expires_at, ci.last_used_at),
        (100, Some(9_000), None)
    );
    let v1 = store.registry_version();
    assert!(v1 > v0, "a new key moves the registry version");
    store
        .create_api_key(new_key("admin-1", ApiScope::Admin, 2, None), 200)
        .await
        .unwrap();

    // A taken name is refused and changes nothing.
    let v2 = store.registry_version();
    let err = store
        .create_api_key(new_key("ci", ApiScope::Admin, 3, None), 300)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(store.registry_version(), v2);

    let keys = store.list_api_keys().await.unwrap();
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["admin-1", "ci"]);
    assert_eq!(keys[1].hash, vec![1; 32]);
    assert_eq!(keys[1].scope, ApiScope::Operate);
    assert_eq!(keys[0].expires_at, None);

    assert!(store.delete_api_key("ci").await.unwrap());
    let v3 = store.registry_version();
    assert!(v3 > v2, "a revocation moves the registry version");
    assert!(!store.delete_api_key("ci").await.unwrap());
    assert_eq!(store.registry_version(), v3);
    let keys = store.list_api_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    // The name is free again.
    store
        .create_api_key(new_key("ci", ApiScope::Read, 4, None), 400)
        .await
        .unwrap();
}

pub(crate) async fn invalid_api_keys_are_refused_and_change_nothing(store: &dyn Store) {
    let version = store.registry_version();
    for name in ["", "has space", "slash/name", &"n".repeat(65), "ünïcode"] {
        let err = store
            .create_api_key(new_key(name, ApiScope::Read, 1, None), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInput(_)),
            "{name:?}: {err}"
        );
    }
    let mut short = new_key("short", ApiScope::Read, 1, None);
    short.hash.truncate(16);
    let err = store.create_api_key(short, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(store.list_api_keys().await.unwrap().is_empty());
    assert_eq!(store.registry_version(), version);
}

pub(crate) async fn api_key_use_is_recorded_without_moving_back_or_the_version(store: &dyn Store) {
    store
        .create_api_key(new_key("ci", ApiScope::Read, 1, None), 10)
        .await
        .unwrap();
    let version = store.registry_version();
    store.touch_api_key("ci", 5_000).await.unwrap();
    store.touch_api_key("ci", 4_000).await.unwrap();
    // A key revoked meanwhile: nothing to record, no error.
    store.touch_api_key("gone", 6_000).await.unwrap();
    let keys = store.list_api_keys().await.unwrap();
    assert_eq!(keys[0].last_used_at, Some(5_000));
    assert_eq!(store.registry_version(), version);
}

pub(crate) async fn a_paused_workers_tasks_stay_pending_until_it_is_resumed(store: &dyn Store) {
    for name in ["paused", "running"] {
        store
            .upsert_worker(js_worker(name), Some(String::new()), None, 0)
            .await
            .unwrap();
    }
    assert_eq!(store.set_worker_paused("nobody", true).await.unwrap(), None);
    let version = store.registry_version();
    let worker = store
        .set_worker_paused("paused", true)
        .await
        .unwrap()
        .unwrap();
    assert!(worker.paused);
    assert_eq!(
        store.registry_version(),
        version + 1,
        "other servers see it"
    );
    // Created while paused; the oldest due task is the paused worker's.
    let held = task_id(store, "paused", 100).await;
    let other = task_id(store, "running", 200).await;
    assert_eq!(store.next_due().await.unwrap().task_run_at, Some(200));
    let claimed = store.claim_due(1_000, 5_000, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [other]);
    assert_eq!(store.next_due().await.unwrap().task_run_at, None);
    assert_eq!(
        store.get_task(held).await.unwrap().unwrap().state,
        TaskState::Pending
    );

    // An update of the worker keeps it paused.
    let updated = store
        .upsert_worker(js_worker("paused"), Some("//2".into()), None, 2)
        .await
        .unwrap();
    assert_eq!((updated.revision, updated.paused), (2, true));
    assert!(store.get_worker("paused").await.unwrap().unwrap().paused);
    assert!(store.claim_due(1_000, 5_000, 10).await.unwrap().is_empty());

    let resumed = store
        .set_worker_paused("paused", false)
        .await
        .unwrap()
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(store.next_due().await.unwrap().task_run_at, Some(100));
    let claimed = store.claim_due(1_000, 5_000, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [held]);
    assert_eq!(claimed[0].attempt, 1, "nothing ran while it was paused");
}

pub(crate) async fn a_worker_with_unfinished_tasks_is_removed_only_by_force_which_cancels_them(
    store: &dyn Store,
) {
    store
        .upsert_worker(js_worker("busy"), Some(String::new()), None, 0)
        .await
        .unwrap();
    let done = task_id(store, "busy", 5).await;
    store.claim_due(5, 5_000, 1).await.unwrap();
    store.complete_task(done, 1, json!(1), 6).await.unwrap();
    let running = task_id(store, "busy", 10).await;
    store.claim_due(10, 5_000, 1).await.unwrap();
    let pending = task_id(store, "busy", 20).await;
    let other = task_id(store, "other", 40).await;

    let version = store.registry_version();
    let refused = store.delete_worker("busy", false, 50).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::UnfinishedTasks { worker, count: 2 } if worker == "busy"),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("2 unfinished"), "{refused}");
    assert!(
        store.get_worker("busy").await.unwrap().is_some(),
        "nothing changed"
    );
    assert_eq!(store.registry_version(), version);
    for (id, state) in [
        (running, TaskState::Dispatched),
        (pending, TaskState::Pending),
    ] {
        assert_eq!(store.get_task(id).await.unwrap().unwrap().state, state);
    }

    let canceled = store
        .delete_worker("busy", true, 60)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        canceled.iter().map(|t| t.id).collect::<Vec<_>>(),
        [running, pending]
    );
    assert!(
        canceled
            .iter()
            .all(|t| t.state == TaskState::Canceled && t.updated_at == 60)
    );
    assert_eq!(store.get_worker("busy").await.unwrap(), None);
    assert_eq!(store.registry_version(), version + 1);
    let mut seen = Vec::new();
    for id in [running, pending, done, other] {
        seen.push(store.get_task(id).await.unwrap().unwrap().state);
    }
    assert_eq!(
        seen,
        [
            TaskState::Canceled,
            TaskState::Canceled,
            TaskState::Completed,
            TaskState::Pending
        ],
        "only the removed worker's unfinished tasks are canceled"
    );
    // A late answer of the canceled attempt is fenced out.
    assert!(store.complete_task(running, 1, json!(1), 70).await.is_err());
    assert_eq!(store.delete_worker("busy", true, 80).await.unwrap(), None);
}

/// A paused worker's fire time is claimed as skipped once, like a fire, and makes no task; a
/// later fire of that time is refused as already recorded, and an unknown worker is named.
pub(crate) async fn a_skipped_cron_fire_is_claimed_once_and_makes_no_task(store: &dyn Store) {
    store
        .upsert_worker(js_worker("tick"), Some(String::new()), None, 0)
        .await
        .unwrap();
    assert!(store.record_cron_skip("tick", 1_000).await.unwrap());
    assert!(!store.record_cron_skip("tick", 1_000).await.unwrap());
    assert_eq!(
        store
            .record_cron_fire("tick", 1_000, json!({}), 1_000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.last_cron_fire("tick").await.unwrap(), Some(1_000));
    let tasks = store
        .list_tasks(&TaskFilter {
            worker: Some("tick".into()),
            ..TaskFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert!(tasks.is_empty(), "{tasks:?}");
    let fired = store
        .record_cron_fire("tick", 2_000, json!({}), 2_000)
        .await
        .unwrap();
    assert!(fired.is_some());
    assert!(!store.record_cron_skip("tick", 2_000).await.unwrap());
    let missing = store.record_cron_skip("gone", 3_000).await.unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { what: "worker", .. }),
        "{missing:?}"
    );
}

/// A worker removed by force while its cron fires are being recorded: each fire either finds
/// no worker or made a task the removal canceled and returned, never a task left pending for a
/// worker that is gone (PostgreSQL: the fire's reference to the worker row waits for the
/// removal's row lock, or the removal for the fire; SQLite: the one writer orders them).
pub(crate) async fn a_worker_removed_while_its_cron_fires_leaves_no_unfinished_task(
    store: &dyn Store,
) {
    for round in 0..10_i64 {
        store
            .upsert_worker(js_worker("racer"), Some(String::new()), None, 0)
            .await
            .unwrap();
        let fire = |n: i64| {
            let time = round * 100 + n;
            store.record_cron_fire("racer", time, json!({ "n": time }), time)
        };
        let (removed, f0, f1, f2, f3, f4, f5) = tokio::join!(
            store.delete_worker("racer", true, round * 100 + 50),
            fire(0),
            fire(1),
            fire(2),
            fire(3),
            fire(4),
            fire(5),
        );
        let canceled: HashSet<i64> = removed
            .unwrap()
            .expect("the worker was there")
            .iter()
            .map(|t| t.id)
            .collect();
        for fired in [f0, f1, f2, f3, f4, f5] {
            match fired {
                Ok(Some(task)) => {
                    assert!(
                        canceled.contains(&task.id),
                        "round {round}: task {} of a fire the removal did not cancel",
                        task.id
                    );
                    let state = store.get_task(task.id).await.unwrap().unwrap().state;
                    assert_eq!(state, TaskState::Canceled, "round {round}");
                }
                Err(StoreError::NotFound { what: "worker", .. }) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(store.get_worker("racer").await.unwrap(), None);
    }
}

pub(crate) async fn attempts_are_recorded_per_claim_and_listed_in_order(store: &dyn Store) {
    let task = task_id(store, "w", 0).await;
    assert!(store.task_attempts(task).await.unwrap().is_empty());
    let second = TaskAttempt {
        claim: 3,
        started_at: 300,
        ended_at: 350,
        node: Some("node-1".into()),
        worker_revision: 2,
        outcome: AttemptOutcome::Completed,
        error: None,
    };
    let first = TaskAttempt {
        claim: 1,
        started_at: 100,
        ended_at: 180,
        node: None,
        worker_revision: 1,
        outcome: AttemptOutcome::TransportError,
        error: Some("connection refused".into()),
    };
    store.record_attempt(task, &second).await.unwrap();
    store.record_attempt(task, &first).await.unwrap();
    // The same claim recorded again (a retried write) keeps one row, the last written.
    let first = TaskAttempt {
        ended_at: 190,
        ..first
    };
    store.record_attempt(task, &first).await.unwrap();
    assert_eq!(
        store.task_attempts(task).await.unwrap(),
        [first.clone(), second.clone()]
    );

    for bad in [
        TaskAttempt {
            claim: 0,
            ..first.clone()
        },
        TaskAttempt {
            ended_at: 99,
            ..first.clone()
        },
    ] {
        let err = store.record_attempt(task, &bad).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    let err = store.record_attempt(task + 100, &first).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(store.task_attempts(task + 100).await.unwrap().is_empty());
    assert_eq!(store.task_attempts(task).await.unwrap().len(), 2);
}

fn node_spec(name: &str, url: &str) -> NodeSpec {
    serde_json::from_value(json!({ "name": name, "url": url, "token_env": "NODE_TOKEN" })).unwrap()
}

pub(crate) async fn remote_nodes_are_stored_by_reference_replaced_deleted_and_bump_the_version(
    store: &dyn Store,
) {
    let v0 = store.registry_version();
    let added = store
        .upsert_node(node_spec("exec-b", "https://10.0.0.2:7070"), 100)
        .await
        .unwrap();
    assert_eq!(
        (added.revision, added.created_at, added.updated_at),
        (1, 100, 100)
    );
    let v1 = store.registry_version();
    assert!(v1 > v0, "a new node moves the registry version");
    let mut spec = node_spec("exec-a", "https://10.0.0.1:7070");
    spec.capacity = Some(8);
    spec.ca_file = Some("/etc/mechanics/ca.pem".into());
    store.upsert_node(spec.clone(), 200).await.unwrap();

    // Replacing keeps the creation time and counts the revision.
    spec.capacity = Some(4);
    let replaced = store.upsert_node(spec.clone(), 300).await.unwrap();
    assert_eq!(
        (replaced.revision, replaced.created_at, replaced.updated_at),
        (2, 200, 300)
    );
    let nodes = store.list_nodes().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.spec.name.as_str()).collect();
    assert_eq!(names, ["exec-a", "exec-b"]);
    assert_eq!(nodes[0].spec, spec);

    let v2 = store.registry_version();
    assert!(store.delete_node("exec-b").await.unwrap());
    let v3 = store.registry_version();
    assert!(v3 > v2, "a removal moves the registry version");
    assert!(!store.delete_node("exec-b").await.unwrap());
    assert_eq!(store.registry_version(), v3);
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
}

pub(crate) async fn invalid_remote_nodes_are_refused_naming_the_field(store: &dyn Store) {
    let version = store.registry_version();
    let plaintext = node_spec("exec-a", "http://10.0.0.1:7070");
    let err = store.upsert_node(plaintext, 1).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidInput(message) if message.starts_with("node spec: url: ")),
        "{err}"
    );
    let mut no_token = node_spec("exec-a", "https://10.0.0.1:7070");
    no_token.token_env = None;
    let err = store.upsert_node(no_token, 1).await.unwrap_err();
    assert!(err.to_string().contains("token_env: required"), "{err}");
    assert!(store.list_nodes().await.unwrap().is_empty());
    assert_eq!(store.registry_version(), version);
}

/// Creates a task of `worker` with `payload` at `now` (its `created_at`).
async fn task_at(store: &dyn Store, worker: &str, payload: Value, now: i64) -> i64 {
    store
        .create_task(
            NewTask {
                worker: worker.into(),
                event_id: None,
                idempotency_key: None,
                payload,
                next_run_at: now,
            },
            now,
        )
        .await
        .unwrap()
        .record
        .id
}

/// Claims the task `id` (due by `now`) and ends it: completed with `Ok(result)`, or failed
/// (`Err((end, error))`), at `now`.
async fn end_task(store: &dyn Store, id: i64, end: Result<Value, (TaskState, &str)>, now: i64) {
    let claimed = store.claim_due(now, now + 1_000, 1000).await.unwrap();
    let attempt = claimed.iter().find(|t| t.id == id).unwrap().attempt;
    match end {
        Ok(result) => store
            .complete_task(id, attempt, result, now)
            .await
            .map(drop),
        Err((end, error)) => store
            .fail_task(id, attempt, end, error, now)
            .await
            .map(drop),
    }
    .unwrap();
    // Whatever else the claim took goes back, due again.
    for other in claimed.iter().filter(|t| t.id != id) {
        store
            .release_task(other.id, other.attempt, now, Release::Unreserved, now)
            .await
            .unwrap();
    }
}

async fn listed(store: &dyn Store, filter: TaskFilter) -> Vec<i64> {
    let page = store.list_tasks(&filter).await.unwrap();
    page.items.iter().map(|t| t.id).collect()
}

pub(crate) async fn task_listings_filter_by_creation_time(store: &dyn Store) {
    let first = task_at(store, "a", json!({ "n": 1 }), 100).await;
    let second = task_at(store, "a", json!({ "n": 2 }), 200).await;
    let third = task_at(store, "b", json!({ "n": 3 }), 300).await;
    let fourth = task_at(store, "b", json!({ "n": 4 }), 400).await;
    let fifth = task_at(store, "b", json!({ "n": 5 }), 500).await;

    // Created at or after `since`: the bound is inclusive.
    let since = |at: i64| TaskFilter {
        created_since: Some(at),
        ..TaskFilter::default()
    };
    assert_eq!(listed(store, since(400)).await, [fifth, fourth]);
    assert_eq!(listed(store, since(401)).await, [fifth]);
    assert_eq!(listed(store, since(501)).await, Vec::<i64>::new());
    // With another filter.
    assert_eq!(
        listed(
            store,
            TaskFilter {
                worker: Some("a".into()),
                ..since(150)
            }
        )
        .await,
        [second]
    );

    // Cursor paging keeps the bound.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_tasks(&TaskFilter {
                limit: Some(2),
                cursor,
                ..since(200)
            })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, [fifth, fourth, third, second]);
    assert!(!seen.contains(&first));
}

pub(crate) async fn ended_tasks_are_counted_per_bucket_and_failing_workers_ranked(
    store: &dyn Store,
) {
    const MINUTE: i64 = 60_000;
    // Minute 1: two completed (a), one failed (a). Minute 3: one dead (b), one dead (a), one
    // canceled (not counted). A pending task is not counted either.
    for (worker, end, at) in [
        ("a", Ok(json!(1)), MINUTE + 5),
        ("a", Ok(json!(2)), MINUTE + 59_999),
        ("a", Err((TaskState::Failed, "boom")), MINUTE + 10),
        ("b", Err((TaskState::Dead, "boom")), 3 * MINUTE),
        ("a", Err((TaskState::Dead, "boom")), 3 * MINUTE + 1),
    ] {
        let id = task_at(store, worker, json!(null), at - 1).await;
        end_task(store, id, end, at).await;
    }
    let canceled = task_at(store, "c", json!(null), 3 * MINUTE).await;
    store.cancel_task(canceled, 3 * MINUTE + 2).await.unwrap();
    task_at(store, "c", json!(null), 3 * MINUTE).await;

    let buckets = store.task_activity(0, MINUTE).await.unwrap();
    assert_eq!(
        buckets,
        [
            ActivityBucket {
                start: MINUTE,
                completed: 2,
                failed: 1
            },
            ActivityBucket {
                start: 3 * MINUTE,
                completed: 0,
                failed: 2
            },
        ]
    );
    // `since` leaves out what ended before it.
    assert_eq!(
        store.task_activity(MINUTE + 11, MINUTE).await.unwrap(),
        [
            ActivityBucket {
                start: MINUTE,
                completed: 1,
                failed: 0
            },
            ActivityBucket {
                start: 3 * MINUTE,
                completed: 0,
                failed: 2
            },
        ]
    );
    assert!(matches!(
        store.task_activity(0, 0).await,
        Err(StoreError::InvalidInput(message)) if message.starts_with("bucket_ms:")
    ));

    let failing = |worker: &str, failed: u64| WorkerFailures {
        worker: worker.into(),
        failed,
    };
    assert_eq!(
        store.failing_workers(0, 10).await.unwrap(),
        [failing("a", 2), failing("b", 1)]
    );
    assert_eq!(
        store.failing_workers(3 * MINUTE, 10).await.unwrap(),
        [failing("a", 1), failing("b", 1)]
    );
    assert_eq!(
        store.failing_workers(0, 1).await.unwrap(),
        [failing("a", 2)]
    );
    assert_eq!(store.failing_workers(3 * MINUTE + 2, 10).await.unwrap(), []);
}
