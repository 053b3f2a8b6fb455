//! The Workers list and the Worker page, with its **Run test**.
//!
//! The list shows each worker's kind, triggers and rate limit, its tasks per state (the store's
//! count, as the Overview's) and its last hour on this server (the numbers of
//! `GET /api/v1/metrics/summary`, dispatch latency p50/p95 among them). The page shows the spec,
//! the module source and the recent tasks.
//!
//! Run test runs a js worker's module once on a payload typed into the page, through the job the
//! dispatcher would build ([`crate::dispatch::js_job`], as `mechanics worker test` does) on the
//! server's executor nodes: the same sandbox, config and limits as a task, but no task is stored,
//! nothing reaches `/logs`, and the task id the module sees is 0. It needs the `operate` scope,
//! as the API's task submission and the MCP `test_module` tool do ([`super::session`] checks it
//! with the CSRF token); the answer, console output included, is redacted as a task's is.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Form};
use maud::{Markup, html};
use mechanics_proto::api::{ApiScope, WorkerActivity};
use mechanics_proto::domain::{ConsoleLine, Task, TaskState, Trigger, Worker, WorkerKind};
use mechanics_store::TaskFilter;
use serde::Deserialize;
use serde_json::Value;

use super::tasks::pretty;
use super::{Visitor, encode, error_page, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::{ApiResult, Failure, quote};
use crate::executor::Outcome;

/// How many of a worker's tasks its page lists.
const RECENT_TASKS: u32 = 20;

/// The triggers as one line each: `api`, `cron */5 * * * *`, `webhook gh: issues.opened`.
fn triggers(worker: &Worker) -> Vec<String> {
    worker
        .spec
        .triggers
        .iter()
        .filter_map(|trigger| match trigger {
            Trigger::Api(true) => Some("api".to_owned()),
            Trigger::Api(false) => None,
            Trigger::Cron(cron) => Some(match cron.tz() {
                Some(tz) => format!("cron {} ({tz})", cron.schedule()),
                None => format!("cron {}", cron.schedule()),
            }),
            Trigger::Webhook(hook) => Some(format!(
                "webhook {}: {}",
                hook.source,
                hook.events.join(", ")
            )),
        })
        .collect()
}

/// `2/s, burst 5`, or the server's default bucket.
fn rate_limit(worker: &Worker) -> String {
    match &worker.spec.rate_limit {
        Some(rate) => format!("{}/s, burst {}", rate.per_second, rate.burst),
        None => "server default".to_owned(),
    }
}

fn milliseconds(value: Option<u64>) -> String {
    value.map_or_else(|| "—".to_owned(), |ms| format!("{ms} ms"))
}

/// `GET /ui/workers`.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
) -> Response {
    match list_body(&shared).await {
        Ok(body) => html_response(StatusCode::OK, layout(Some(&visitor), "Workers", body)),
        Err(failure) => failure_page(&visitor, &failure),
    }
}

async fn list_body(shared: &Shared) -> ApiResult<Markup> {
    let workers = shared.store.list_workers().await?;
    let counts = shared.store.task_counts_per_worker().await?;
    let no_tasks = BTreeMap::new();
    let activity = shared.metrics.recent.summary(
        shared.clock.now_ms(),
        workers.iter().map(|w| w.spec.name.as_str()),
    );
    let activity_of = |name: &str| activity.iter().find(|a| a.worker == name);
    Ok(html! {
        h1 { "Workers" }
        @if workers.is_empty() {
            p.empty { "No workers yet: " code { "mechanics worker add -f worker.yml" } " adds one." }
        } @else {
            table.workers {
                thead {
                    tr {
                        th { "Worker" } th { "Kind" } th { "Triggers" } th { "Rate limit" }
                        th { "Tasks per state" }
                        th title="Tasks created, completed, failed and dead in the last hour on this server" { "Last hour" }
                        th { "Latency p50" } th { "p95" }
                    }
                }
                tbody {
                    @for worker in &workers {
                        @let name = &worker.spec.name;
                        @let counts = counts.get(name).unwrap_or(&no_tasks);
                        tr id={"worker-" (name)} {
                            td {
                                a href={"/ui/workers/" (encode(name))} { (name) }
                                @if worker.paused { " " span.state.paused { "paused" } }
                            }
                            td { (worker.spec.kind.as_str()) }
                            td { (triggers(worker).join("; ")) }
                            td { (rate_limit(worker)) }
                            td.counts {
                                @for state in TaskState::ALL {
                                    @if let Some(n) = counts.get(state).filter(|n| **n > 0) {
                                        a href={"/ui/tasks?state=" (state.as_str()) "&worker=" (encode(name))} {
                                            span class={"state " (state.as_str())} { (state.as_str()) } " " (n)
                                        }
                                        " "
                                    }
                                }
                            }
                            @let recent = activity_of(name);
                            td.activity { (last_hour(recent)) }
                            td { (milliseconds(recent.and_then(|a| a.dispatch_latency_p50_ms))) }
                            td { (milliseconds(recent.and_then(|a| a.dispatch_latency_p95_ms))) }
                        }
                    }
                }
            }
        }
    })
}

fn last_hour(activity: Option<&WorkerActivity>) -> String {
    match activity {
        Some(a) => format!(
            "{} created, {} completed, {} failed, {} dead",
            a.created, a.completed, a.failed, a.dead
        ),
        None => "none".to_owned(),
    }
}

/// What a Run test gave, redacted.
enum TestRun {
    /// The payload field was not JSON (or missing): nothing ran.
    BadPayload(String),
    /// The module ran (or could not be started): the answer and its console output.
    Ran {
        result: Result<Value, String>,
        console: Vec<ConsoleLine>,
        node: Option<String>,
    },
}

/// `GET /ui/workers/{name}`.
pub(super) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
) -> Response {
    worker_page(&shared, &visitor, &name, None, None).await
}

/// The Worker page; after a Run test, with its `payload` kept in the form and its outcome.
async fn worker_page(
    shared: &Shared,
    visitor: &Visitor,
    name: &str,
    payload: Option<&str>,
    run: Option<TestRun>,
) -> Response {
    let worker = match find(shared, name).await {
        Ok(worker) => worker,
        Err(failure) => return failure_page(visitor, &failure),
    };
    let tasks = match shared
        .store
        .list_tasks(&TaskFilter {
            worker: Some(worker.spec.name.clone()),
            limit: Some(RECENT_TASKS),
            ..TaskFilter::default()
        })
        .await
    {
        Ok(page) => page.items,
        Err(err) => return failure_page(visitor, &Failure::from(err)),
    };
    let status = match &run {
        Some(TestRun::BadPayload(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    let body = html! {
        h1 { "Worker " (worker.spec.name) }
        (spec(&worker))
        @if worker.spec.kind == WorkerKind::Js {
            h2 #run-test { "Run test" }
            (run_test(visitor, &worker, payload, run.as_ref()))
        }
        h2 { "Recent tasks" }
        (recent_tasks(&worker, &tasks))
        @if let Some(source) = &worker.module_source {
            h2 { "Module " @if let Some(module) = worker.spec.module_name() { code { (module) } } }
            pre #module-source.source { (source) }
        }
    };
    html_response(
        status,
        layout(Some(visitor), &format!("Worker {}", worker.spec.name), body),
    )
}

async fn find(shared: &Shared, name: &str) -> ApiResult<Worker> {
    shared
        .store
        .get_worker(name)
        .await?
        .ok_or_else(|| Failure::not_found(format!("no worker named {}", quote(name))))
}

fn spec(worker: &Worker) -> Markup {
    let spec = &worker.spec;
    html! {
        dl.spec {
            dt { "Kind" } dd #kind { (spec.kind.as_str()) }
            dt { "State" } dd { @if worker.paused { "paused" } @else { "running" } }
            dt { "Revision" } dd { (worker.revision) " · updated " (timestamp(worker.updated_at)) }
            dt { "Triggers" } dd #triggers {
                @for trigger in triggers(worker) { (trigger) br; }
            }
            dt { "Rate limit" } dd #rate-limit { (rate_limit(worker)) }
            dt { "Retry" } dd {
                (spec.retry.max_retries) " retries, backoff " (spec.retry.base_delay) " to "
                (spec.retry.max_delay)
            }
            @if let Some(url) = &spec.url { dt { "URL" } dd { (url) } }
            @if let Some(command) = &spec.command { dt { "Command" } dd { code { (command.join(" ")) } } }
            @if let Some(image) = &spec.image { dt { "Image" } dd { (image) } }
            @if let Some(limits) = &spec.limits { dt { "Limits" } dd { code { (limits) } } }
            @if spec.write_back { dt { "Write-back" } dd { "a result's reply is written back" } }
        }
        @if let Some(config) = &spec.config {
            // The stored config holds `${env:NAME}` references, never their values.
            h2 { "Config" }
            pre.json { (pretty(config)) }
        }
    }
}

fn recent_tasks(worker: &Worker, tasks: &[Task]) -> Markup {
    html! {
        @if tasks.is_empty() {
            p.empty { "No tasks yet." }
        } @else {
            table.tasks {
                thead { tr { th { "Task" } th { "State" } th { "Tries" } th { "Created" } th { "Updated" } } }
                tbody {
                    @for task in tasks {
                        tr id={"task-" (task.id)} {
                            td { a href={"/ui/tasks/" (task.id)} { "#" (task.id) } }
                            td { span class={"state " (task.state.as_str())} { (task.state.as_str()) } }
                            td { (task.tries) }
                            td { (timestamp(task.created_at)) }
                            td { (timestamp(task.updated_at)) }
                        }
                    }
                }
            }
            p { a href={"/ui/tasks?worker=" (encode(&worker.spec.name))} { "All its tasks →" } }
        }
    }
}

/// The Run test form (for `operate` and `admin`), and what the last run gave; the form's answer
/// opens at `#run-test`, so the outcome is in view.
fn run_test(
    visitor: &Visitor,
    worker: &Worker,
    payload: Option<&str>,
    run: Option<&TestRun>,
) -> Markup {
    html! {
        @if visitor.may(ApiScope::Operate) {
            form.run-test method="post" action={"/ui/workers/" (encode(&worker.spec.name)) "/test#run-test"} data-json-field="payload" {
                (visitor.csrf_field())
                label for="payload" { "Payload (JSON): the module gets it as " code { "payload" } "; nothing is stored" }
                textarea id="payload" name="payload" rows="6" spellcheck="false" { (payload.unwrap_or("{}")) }
                p.error data-json-error hidden {}
                button type="submit" { "Run test" }
            }
        } @else {
            p.hint { "Running a test needs an " code { "operate" } " or " code { "admin" } " key." }
        }
        @match run {
            Some(TestRun::BadPayload(message)) => {
                p #test-error.error { (message) }
            }
            Some(TestRun::Ran { result, console, node }) => {
                section #test-result {
                    @match result {
                        Ok(value) => {
                            h3 { "Result" @if let Some(node) = node { " (on " (node) ")" } }
                            pre #test-output.json { (pretty(value)) }
                        }
                        Err(error) => {
                            h3 { "Error" }
                            pre #test-error.error { (error) }
                        }
                    }
                    h3 { "Console" }
                    @if console.is_empty() {
                        p.empty { "No output." }
                    } @else {
                        pre #test-console.console {
                            @for line in console { (line.level) " " (line.message) "\n" }
                        }
                    }
                }
            }
            None => {}
        }
    }
}

/// The Run test form.
#[derive(Deserialize)]
pub(super) struct RunTestForm {
    payload: Option<String>,
}

/// `POST /ui/workers/{name}/test`: runs the module on the payload and shows the Worker page
/// with the outcome; a payload that is not JSON runs nothing and answers `400`.
pub(super) async fn test(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
    Form(form): Form<RunTestForm>,
) -> Response {
    let worker = match find(&shared, &name).await {
        Ok(worker) => worker,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    if worker.spec.kind != WorkerKind::Js {
        return error_page(
            Some(&visitor),
            StatusCode::CONFLICT,
            &format!(
                "Run test runs js workers' modules; {} is a {} worker, a service of its own",
                quote(&name),
                worker.spec.kind.as_str()
            ),
        );
    }
    let text = form.payload.unwrap_or_default();
    let run = match serde_json::from_str::<Value>(&text) {
        Ok(payload) => run_module(&shared, &worker, &payload).await,
        Err(err) => TestRun::BadPayload(format!("payload: not valid JSON: {err}")),
    };
    worker_page(&shared, &visitor, &name, Some(&text), Some(run)).await
}

/// Runs `worker`'s module on `payload` as task 0's first attempt, on the executor nodes.
async fn run_module(shared: &Shared, worker: &Worker, payload: &Value) -> TestRun {
    let failed = |message: String| TestRun::Ran {
        result: Err(message),
        console: Vec::new(),
        node: None,
    };
    let Some(js) = &shared.js else {
        return failed("this server has no executor nodes to run js on".to_owned());
    };
    let redactor = shared.trace.redactor();
    if let Some(config) = &worker.spec.config {
        // The job needs the values; the page must never show them.
        redactor.add_env_refs(config);
    }
    let job = match crate::dispatch::js_job(worker, 0, 1, payload, None) {
        Ok(job) => job,
        Err(message) => return failed(message),
    };
    let output = js.run(job).await;
    let result = match output.outcome {
        Outcome::Completed(mut value) => {
            redactor.redact_json(&mut value);
            Ok(value)
        }
        Outcome::Failed(message)
        | Outcome::Transport(message)
        | Outcome::ScriptRetry(_, message)
        | Outcome::RetryAfter(_, message)
        | Outcome::Overloaded(_, message) => Err(redactor.redact(&message).into_owned()),
    };
    let console = output
        .console
        .into_iter()
        .map(|mut line| {
            line.message = redactor.redact(&line.message).into_owned();
            line
        })
        .collect();
    TestRun::Ran {
        result,
        console,
        node: output.node,
    }
}
