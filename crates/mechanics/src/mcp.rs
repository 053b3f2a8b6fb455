//! `mechanics mcp` and `/mcp`: the server as tools for AI assistants (Model Context Protocol).
//!
//! One tool set, [`Toolbox`], served over two transports: stdio (`mechanics mcp`, a client of a
//! running server) and streamable HTTP at `/mcp` on `mechanics serve`. Every tool but
//! `test_module` is one or a few calls of the API through the one typed client,
//! [`ApiClient`], so a tool
//! does exactly what the endpoint does, with its checks and its errors: over stdio with the
//! key of the CLI's settings, over `/mcp` back to the same server on its loopback address with
//! the caller's own key. `test_module` runs JavaScript in a one-node fleet started from this
//! binary, as `mechanics run --node` does: the coordinator never runs JavaScript itself.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mechanics_core::job::{MechanicsConfig, MechanicsJob};
use mechanics_core::typescript;
use mechanics_node::{Fleet, FleetConfig, FleetError, ShutdownHandle};
use mechanics_proto::api::{ApiScope, SubmitTask, WorkerInput};
use mechanics_proto::domain::WorkerSpec;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::schemars::JsonSchema;
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use mechanics_client::{ApiClient, ClientError, EventFilter, LogFilter, TaskFilter};

mod fit;
use fit::{Record, Trimmed};

/// The largest answer a tool or a resource gives, in bytes of JSON: a larger page is cut
/// smaller, a larger task or event loses its big fields (payload, result, console) to a marker.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// The longest summary (in characters) a tool's answer starts with; with JSON's escapes it takes
/// at most [`SUMMARY_BYTES`].
const SUMMARY_CHARS: usize = 1000;

/// Room kept in every answer for its summary.
const SUMMARY_BYTES: usize = 8 * 1024;

/// Room kept for the JSON-RPC envelope around a tool's or resource's content.
const ENVELOPE_BYTES: usize = 1024;

/// The longest `submit_task` waits for its task to end.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// `test_module` calls running at once per server (each starts a node process and may spend
/// a CPU for up to the 10 s time limit); past it a call is refused as busy.
pub const MAX_TEST_MODULES: usize = 2;
/// The longest tool error, in characters: a few lines of explanation, with room to quote a bad
/// argument's start.
const MAX_ERROR_CHARS: usize = 4096;

/// How a [`Toolbox`] learns what its caller may do.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// `mechanics mcp`: the server refuses what the key may not do; `--read-only` hides every
    /// tool that changes something.
    Stdio { read_only: bool },
    /// `/mcp`: each request's key (checked by the API's middleware) decides which tools are
    /// listed and callable.
    Http,
}

/// The MCP server: the tools, and the connection they call the API with.
#[derive(Clone)]
pub struct Toolbox {
    connection: ApiClient,
    access: Access,
    /// The `test_module` calls that may run at once, shared by every clone (at `/mcp` one per
    /// request).
    test_modules: Arc<tokio::sync::Semaphore>,
}

/// What a tool needs and does, for listing and for refusing a call outside the key's scope.
struct Spec {
    name: &'static str,
    description: &'static str,
    /// The scope its API call needs (for `test_module`, the scope that may spend the server's
    /// CPU on JavaScript).
    scope: ApiScope,
    /// Whether it changes anything (hidden by `--read-only`).
    changes: bool,
    /// Whether what it changes cannot be undone (a canceled task stays canceled).
    destructive: bool,
    /// Calling it twice does what calling it once does.
    idempotent: bool,
    schema: fn() -> Arc<JsonObject>,
}

fn schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    rmcp::handler::server::tool::schema_for_type::<T>()
}

const TOOLS: &[Spec] = &[
    Spec {
        name: "list_workers",
        description: "List the registered workers: name, kind (js, http, process), triggers, \
                      limits and revision. Use get_worker for one worker's module source.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<NoArgs>,
    },
    Spec {
        name: "get_worker",
        description: "One worker: its spec (kind, triggers, limits, endpoints), revision and, \
                      for a js worker, its module source.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<NameArgs>,
    },
    Spec {
        name: "submit_task",
        description: "Submit a task for a worker that has an `api: true` trigger, with a JSON \
                      payload. With wait_seconds (up to 60) waits for the task to end and \
                      returns it (state, result or error, attempts); otherwise returns its id \
                      at once. The same idempotency_key for the same worker gives the same task.",
        scope: ApiScope::Operate,
        changes: true,
        destructive: false,
        idempotent: false,
        schema: schema::<SubmitArgs>,
    },
    Spec {
        name: "get_task",
        description: "One task: state, worker, payload, result or error, its attempts and the \
                      console output they wrote.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<IdArgs>,
    },
    Spec {
        name: "list_tasks",
        description: "List tasks, newest first, optionally only those in a state (pending, \
                      dispatched, completed, failed, dead, canceled) or of a worker. Pages of \
                      `limit` (1 to 1000, default 50); pass the answer's next_cursor as `cursor` \
                      for the next page.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<ListTasksArgs>,
    },
    Spec {
        name: "retry_task",
        description: "Queue a failed or dead task again (its retry count starts over).",
        scope: ApiScope::Operate,
        changes: true,
        destructive: false,
        idempotent: false,
        schema: schema::<IdArgs>,
    },
    Spec {
        name: "cancel_task",
        description: "Cancel a task that has not ended. A canceled task does not run again.",
        scope: ApiScope::Operate,
        changes: true,
        destructive: true,
        idempotent: true,
        schema: schema::<IdArgs>,
    },
    Spec {
        name: "list_events",
        description: "List received webhook and cron events, newest first, optionally of a \
                      source, in a state or of a type; paged with limit and cursor.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<ListEventsArgs>,
    },
    Spec {
        name: "get_event",
        description: "One event, and for each worker with a trigger on its source whether it \
                      matched (or why not), the policy's decision and the task it started.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<IdArgs>,
    },
    Spec {
        name: "query_logs",
        description: "The pipeline trace, newest first: submissions, attempts, retries, dead \
                      letters, webhook deliveries, matches and policy decisions. Filter by \
                      event, task, worker, action, outcome (ok, fail, skip, retry, deny), since \
                      (90s, 15m, 1h, 24h, 7d or RFC 3339) or trace (event-N, task-N).",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<LogsArgs>,
    },
    Spec {
        name: "metrics_summary",
        description: "Per worker, over the last hour on the server: tasks created, completed, \
                      failed and dead, attempts started, and the dispatch latency's median and \
                      95th percentile in ms (time from a task becoming due to its attempt \
                      starting). Use it to see which worker is failing or falling behind.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<NoArgs>,
    },
    Spec {
        name: "list_nodes",
        description: "The executor nodes and process workers: state, crash-loop breaker, jobs \
                      and deaths.",
        scope: ApiScope::Read,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<NoArgs>,
    },
    Spec {
        name: "reset_node",
        description: "Re-arm the crash-loop breaker of a node or process worker so that it is \
                      started again.",
        scope: ApiScope::Operate,
        changes: true,
        destructive: false,
        idempotent: true,
        schema: schema::<NameArgs>,
    },
    Spec {
        name: "test_module",
        description: "Run a JavaScript (or TypeScript, language: ts) ES module in the sandbox, \
                      as a worker would run, with the default limits and no endpoints: its \
                      default export is called with `arg`. Returns the result or the error \
                      (kind and message) and the console output. Nothing is stored or deployed.",
        scope: ApiScope::Operate,
        changes: false,
        destructive: false,
        idempotent: true,
        schema: schema::<TestModuleArgs>,
    },
    Spec {
        name: "add_worker",
        description: "Add a worker from its YAML spec (the format of `mechanics worker add`), \
                      or update the worker of that name. A js worker's module source is given \
                      as module_source (its `module:` field names it).",
        scope: ApiScope::Admin,
        changes: true,
        destructive: false,
        idempotent: true,
        schema: schema::<AddWorkerArgs>,
    },
];

/// The TypeScript declarations of the `mechanics:*` modules, the globals and the worker's
/// argument and result shapes, as `mechanics://types/{file}`: an assistant writes a worker
/// against the types the engine really has.
const TYPES: &[(&str, &str)] = &[
    (
        "mechanics-globals.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-globals.d.ts"),
    ),
    (
        "mechanics-json-shapes.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-json-shapes.d.ts"),
    ),
    (
        "mechanics-endpoint.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-endpoint.d.ts"),
    ),
    (
        "mechanics-base32.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-base32.d.ts"),
    ),
    (
        "mechanics-base64.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-base64.d.ts"),
    ),
    (
        "mechanics-form-urlencoded.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-form-urlencoded.d.ts"),
    ),
    (
        "mechanics-hex.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-hex.d.ts"),
    ),
    (
        "mechanics-rand.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-rand.d.ts"),
    ),
    (
        "mechanics-uuid.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-uuid.d.ts"),
    ),
    (
        "mechanics-worker.d.ts",
        include_str!("../../mechanics-core/ts-types/mechanics-worker.d.ts"),
    ),
];

/// The prefix of every resource URI.
const SCHEME: &str = "mechanics://";

/// The resources read from the API: (URI template, name, description).
const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "mechanics://workers/{name}",
        "worker",
        "A worker: spec, revision and module source (as get_worker).",
    ),
    (
        "mechanics://tasks/{id}",
        "task",
        "A task with its attempts, result or error and console output (as get_task).",
    ),
    (
        "mechanics://events/{id}",
        "event",
        "An event and what became of it per worker (as get_event).",
    ),
];

/// No arguments.
#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct NameArgs {
    /// The name (as list_workers or list_nodes shows it).
    name: String,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct IdArgs {
    /// The id.
    id: i64,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct SubmitArgs {
    /// The worker's name.
    worker: String,
    /// The task's input (default null).
    #[serde(default)]
    payload: Value,
    /// Submitting again with this key for the same worker gives the same task.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Wait up to this many seconds (0 to 60) for the task to end and return it.
    #[serde(default)]
    #[schemars(range(max = 60))]
    wait_seconds: u64,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct ListTasksArgs {
    /// Only tasks in this state: pending, dispatched, completed, failed, dead, canceled.
    #[serde(default)]
    state: Option<String>,
    /// Only tasks of this worker.
    #[serde(default)]
    worker: Option<String>,
    /// At most this many (1 to 1000).
    #[serde(default)]
    limit: Option<u32>,
    /// The next_cursor of the previous page.
    #[serde(default)]
    cursor: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct ListEventsArgs {
    /// Only events of this source.
    #[serde(default)]
    source: Option<String>,
    /// Only events in this state.
    #[serde(default)]
    state: Option<String>,
    /// Only events of this type.
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    /// At most this many (1 to 1000).
    #[serde(default)]
    limit: Option<u32>,
    /// The next_cursor of the previous page.
    #[serde(default)]
    cursor: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct LogsArgs {
    /// Only entries of this event.
    #[serde(default)]
    event: Option<i64>,
    /// Only entries of this task.
    #[serde(default)]
    task: Option<i64>,
    /// Only entries of this worker.
    #[serde(default)]
    worker: Option<String>,
    /// Only this pipeline step: submit, dispatch, console, retry, dead_letter, webhook, ...
    #[serde(default)]
    action: Option<String>,
    /// Only this outcome: ok, fail, skip, retry or deny.
    #[serde(default)]
    outcome: Option<String>,
    /// Only entries since then: 90s, 15m, 1h, 24h, 7d or an RFC 3339 time.
    #[serde(default)]
    since: Option<String>,
    /// Only this trace: event-N or task-N.
    #[serde(default)]
    trace: Option<String>,
    /// At most this many (1 to 1000).
    #[serde(default)]
    limit: Option<u32>,
    /// The next_cursor of the previous page.
    #[serde(default)]
    cursor: Option<i64>,
}

/// The language of a module for `test_module`.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "lowercase")]
enum Language {
    /// JavaScript.
    #[default]
    Js,
    /// TypeScript (types are removed first).
    Ts,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct TestModuleArgs {
    /// The ES module; its default export is called with `arg`.
    source: String,
    /// The argument (default null).
    #[serde(default)]
    arg: Value,
    /// js (default) or ts.
    #[serde(default)]
    language: Language,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct AddWorkerArgs {
    /// The worker's YAML spec.
    yaml: String,
    /// For a js worker: the module's source.
    #[serde(default)]
    module_source: Option<String>,
}

/// A tool's failure: the message the assistant reads.
struct ToolError(String);

impl From<ClientError> for ToolError {
    fn from(err: ClientError) -> Self {
        Self(err.to_string())
    }
}

/// A tool's answer: the structured content and its one-line summary.
struct Output {
    value: Value,
    summary: String,
    /// The tool ran but what it ran failed (a module's error).
    failed: bool,
}

impl Output {
    fn ok(value: Value, summary: String) -> Self {
        Self {
            value,
            summary,
            failed: false,
        }
    }

    /// A task or an event: when it does not fit in an answer, its big fields are cut and the
    /// summary says which and where to read them.
    fn record(mut value: Value, mut summary: String, record: Record) -> Result<Self, ToolError> {
        match fit::trim(&mut value, "", record, fit::fits_tool_answer) {
            Trimmed::Whole => {}
            Trimmed::Cut(note) => summary.push_str(&format!("; {note}")),
            Trimmed::TooBig => {
                return Err(ToolError(format!(
                    "{summary}; it is too big for an answer even without its payload, result \
                     and console: read it with {}",
                    record.read_in_full(&value["id"])
                )));
            }
        }
        Ok(Self::ok(value, summary))
    }
}

/// The caller of one request: its connection and what it may do (`None`: whatever the
/// server allows its key).
struct Caller {
    connection: ApiClient,
    scope: Option<ApiScope>,
}

impl Toolbox {
    /// The tools over stdio, calling the API with `connection`; `read_only` hides the tools that
    /// change something.
    pub fn stdio(connection: ApiClient, read_only: bool) -> Self {
        Self {
            connection,
            access: Access::Stdio { read_only },
            test_modules: Arc::new(tokio::sync::Semaphore::new(MAX_TEST_MODULES)),
        }
    }

    /// The tools at `/mcp`, calling the API at `connection`'s server with each request's key.
    pub fn http(connection: ApiClient) -> Self {
        Self {
            connection,
            access: Access::Http,
            test_modules: Arc::new(tokio::sync::Semaphore::new(MAX_TEST_MODULES)),
        }
    }

    fn caller(&self, context: &RequestContext<RoleServer>) -> Caller {
        match self.access {
            Access::Stdio { .. } => Caller {
                connection: self.connection.clone(),
                scope: None,
            },
            Access::Http => {
                let parts = context.extensions.get::<http::request::Parts>();
                let key = parts
                    .and_then(|parts| mechanics_server::keys::presented_key(&parts.headers))
                    .map(str::to_owned);
                // The middleware in front of `/mcp` put the key's scope there; without it
                // nothing beyond reading is offered.
                let scope = parts
                    .and_then(|parts| parts.extensions.get::<ApiScope>().copied())
                    .unwrap_or(ApiScope::Read);
                Caller {
                    connection: self.connection.with_key(key),
                    scope: Some(scope),
                }
            }
        }
    }

    /// Why `spec` may not be called by `caller`, if it may not.
    fn refusal(&self, spec: &Spec, caller: &Caller) -> Option<String> {
        if let Access::Stdio { read_only: true } = self.access
            && spec.changes
        {
            return Some(format!(
                "`{}` changes something, and this server was started with --read-only",
                spec.name
            ));
        }
        match caller.scope {
            Some(scope) if scope < spec.scope => Some(format!(
                "`{}` needs the `{}` scope; this API key has `{scope}`",
                spec.name, spec.scope
            )),
            _ => None,
        }
    }

    async fn run(
        &self,
        spec: &Spec,
        args: JsonObject,
        caller: &Caller,
    ) -> Result<Output, ToolError> {
        let api = &caller.connection;
        match spec.name {
            "list_workers" => {
                let NoArgs {} = parse(spec, args)?;
                let value = api.list_workers().await?.value;
                let summary = format!(
                    "{} workers: {}",
                    count(&value["workers"]),
                    names(&value["workers"], "/spec/name")
                );
                Ok(Output::ok(value, summary))
            }
            "get_worker" => {
                let NameArgs { name } = parse(spec, args)?;
                let value = api.get_worker(&name).await?.value;
                let summary = format!(
                    "worker {name} ({}), revision {}",
                    text(&value["spec"]["kind"]),
                    value["revision"]
                );
                Ok(Output::ok(value, summary))
            }
            "submit_task" => {
                let args: SubmitArgs = parse(spec, args)?;
                if args.wait_seconds > MAX_WAIT_SECONDS {
                    return Err(ToolError(format!(
                        "wait_seconds: at most {MAX_WAIT_SECONDS}; follow a longer task with \
                         get_task"
                    )));
                }
                let submit = SubmitTask {
                    worker: args.worker,
                    payload: args.payload,
                    idempotency_key: args.idempotency_key,
                };
                let submitted = api.submit_task(&submit).await?.value;
                let id = submitted["id"].as_i64().unwrap_or_default();
                if args.wait_seconds == 0 {
                    let summary = format!("task {id} submitted ({})", text(&submitted["state"]));
                    return Ok(Output::ok(submitted, summary));
                }
                // The task exists now: whatever fails from here on names it, so that the
                // assistant follows it instead of submitting it again.
                wait_for(api, id, Duration::from_secs(args.wait_seconds))
                    .await
                    .map_err(|ToolError(why)| {
                        ToolError(format!(
                            "task {id} was submitted, but waiting for it failed: {why}; \
                             follow it with get_task"
                        ))
                    })
            }
            "get_task" => {
                let IdArgs { id } = parse(spec, args)?;
                let value = api.get_task(id).await?.value;
                let summary = task_summary(&value);
                Output::record(value, summary, Record::Task)
            }
            "list_tasks" => {
                let args: ListTasksArgs = parse(spec, args)?;
                let filter = TaskFilter {
                    state: args.state,
                    worker: args.worker,
                    limit: args.limit,
                    cursor: args.cursor,
                };
                fitting_page(api, Listing::Tasks(filter)).await
            }
            "retry_task" | "cancel_task" => {
                let IdArgs { id } = parse(spec, args)?;
                let value = if spec.name == "retry_task" {
                    api.retry_task(id).await?.value
                } else {
                    api.cancel_task(id).await?.value
                };
                let summary = format!("task {id} is {}", text(&value["state"]));
                // Done already: an answer too big to send must not read as a failed action.
                Output::record(value, summary, Record::Task)
            }
            "list_events" => {
                let args: ListEventsArgs = parse(spec, args)?;
                let filter = EventFilter {
                    source: args.source,
                    state: args.state,
                    event_type: args.event_type,
                    limit: args.limit,
                    cursor: args.cursor,
                };
                fitting_page(api, Listing::Events(filter)).await
            }
            "get_event" => {
                let IdArgs { id } = parse(spec, args)?;
                let value = api.get_event(id).await?.value;
                Output::record(value, format!("event {id}"), Record::Event)
            }
            "query_logs" => {
                let args: LogsArgs = parse(spec, args)?;
                let filter = LogFilter {
                    event: args.event,
                    task: args.task,
                    worker: args.worker,
                    action: args.action,
                    outcome: args.outcome,
                    since: args.since,
                    trace: args.trace,
                    limit: args.limit,
                    cursor: args.cursor,
                };
                fitting_page(api, Listing::Logs(filter)).await
            }
            "metrics_summary" => {
                let NoArgs {} = parse(spec, args)?;
                let answer = api.metrics_summary().await?;
                let summary = answer.parse()?;
                let text = summary
                    .workers
                    .iter()
                    .map(|w| {
                        format!(
                            "{}: {} created, {} completed, {} failed, {} dead",
                            w.worker, w.created, w.completed, w.failed, w.dead
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let text = if text.is_empty() {
                    "no workers".to_owned()
                } else {
                    format!("last hour: {text}")
                };
                Ok(Output::ok(answer.value, text))
            }
            "list_nodes" => {
                let NoArgs {} = parse(spec, args)?;
                let value = api.list_nodes().await?.value;
                let summary = format!("{} nodes", count(&value["nodes"]));
                Ok(Output::ok(value, summary))
            }
            "reset_node" => {
                let NameArgs { name } = parse(spec, args)?;
                let value = api.reset_node(&name).await?.value;
                Ok(Output::ok(
                    value,
                    format!("the crash-loop breaker of {name} is re-armed"),
                ))
            }
            "test_module" => {
                let args = parse(spec, args)?;
                let Ok(running) = self.test_modules.clone().try_acquire_owned() else {
                    return Err(ToolError(format!(
                        "busy: {MAX_TEST_MODULES} test_module calls are running on this server; \
                         retry in a few seconds"
                    )));
                };
                test_module(args, running).await
            }
            "add_worker" => {
                let AddWorkerArgs {
                    yaml,
                    module_source,
                } = parse(spec, args)?;
                let spec: WorkerSpec = serde_saphyr::from_str(&yaml).map_err(|err| {
                    let message = mechanics_server::config::yaml_message(&err, &yaml);
                    ToolError(format!("yaml: {message}"))
                })?;
                let input = WorkerInput {
                    spec,
                    module_source,
                };
                let value = api.add_worker(&input).await?.value;
                let summary = format!(
                    "worker {} saved, revision {}",
                    text(&value["spec"]["name"]),
                    value["revision"]
                );
                Ok(Output::ok(value, summary))
            }
            other => Err(ToolError(format!("no tool is named `{other}`"))),
        }
    }
}

/// The tool's arguments as `T`; an error names the field (and the tool).
fn parse<T: DeserializeOwned>(spec: &Spec, args: JsonObject) -> Result<T, ToolError> {
    serde_path_to_error::deserialize(Value::Object(args)).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ToolError(format!(
            "invalid arguments for `{}`: {field}{}",
            spec.name,
            err.into_inner()
        ))
    })
}

fn count(list: &Value) -> usize {
    list.as_array().map_or(0, Vec::len)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// The string at `pointer` in every item of `list`, comma-separated.
fn names(list: &Value, pointer: &str) -> String {
    let names: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.pointer(pointer).and_then(Value::as_str))
        .collect();
    names.join(", ")
}

/// A paged listing, with its filters.
enum Listing {
    Tasks(TaskFilter),
    Events(EventFilter),
    Logs(LogFilter),
}

impl Listing {
    /// What an item is, when it can be trimmed to fit.
    fn record(&self) -> Option<Record> {
        match self {
            Listing::Tasks(_) => Some(Record::Task),
            Listing::Events(_) => Some(Record::Event),
            Listing::Logs(_) => None,
        }
    }

    /// The field of the answer that holds the items.
    fn items(&self) -> &'static str {
        match self {
            Listing::Tasks(_) => "tasks",
            Listing::Events(_) => "events",
            Listing::Logs(_) => "entries",
        }
    }

    fn limit(&mut self) -> &mut Option<u32> {
        match self {
            Listing::Tasks(filter) => &mut filter.limit,
            Listing::Events(filter) => &mut filter.limit,
            Listing::Logs(filter) => &mut filter.limit,
        }
    }

    async fn fetch(&self, api: &ApiClient) -> Result<Value, ToolError> {
        Ok(match self {
            Listing::Tasks(filter) => api.list_tasks(filter).await?.value,
            Listing::Events(filter) => api.list_events(filter).await?.value,
            Listing::Logs(filter) => api.query_logs(filter).await?.value,
        })
    }
}

/// A page of `listing` that fits in an answer: when the page asked for is larger (big payloads
/// or results), the page size is halved until it fits, and the summary says so; a task or event
/// too big alone comes trimmed (as get_task shows it). The answer's `next_cursor` continues
/// after the last item returned, so nothing is skipped.
async fn fitting_page(api: &ApiClient, mut listing: Listing) -> Result<Output, ToolError> {
    let items = listing.items();
    let asked = *listing.limit();
    loop {
        let mut value = listing.fetch(api).await?;
        let count = count(&value[items]);
        let mut note = None;
        if !fit::fits_tool_answer(&value) {
            if count > 1 {
                *listing.limit() = Some(u32::try_from(count / 2).unwrap_or(u32::MAX));
                continue;
            }
            let pointer = format!("/{items}/0");
            let trimmed = match listing.record() {
                Some(record) => fit::trim(&mut value, &pointer, record, fit::fits_tool_answer),
                None => Trimmed::TooBig,
            };
            match trimmed {
                Trimmed::Whole => {}
                Trimmed::Cut(cut) => note = Some(cut),
                Trimmed::TooBig => {
                    return Err(ToolError(format!(
                        "one of the {items} alone is {} bytes, over the limit of \
                         {MAX_RESULT_BYTES} per answer",
                        fit::tool_answer_bytes(&value) / 2
                    )));
                }
            }
        }
        let mut summary = format!("{count} {items}");
        if *listing.limit() != asked {
            summary.push_str(&format!(
                " (a smaller page than asked, to stay under {MAX_RESULT_BYTES} bytes)"
            ));
        }
        if let Some(note) = note {
            let id = &value[items][0]["id"];
            summary.push_str(&format!("; of {id}: {note}"));
        }
        if let Some(next) = value["next_cursor"].as_i64() {
            summary.push_str(&format!("; more: pass cursor {next}"));
        }
        return Ok(Output::ok(value, summary));
    }
}

fn task_summary(detail: &Value) -> String {
    let mut summary = format!(
        "task {} of {} is {} (attempt {})",
        detail["id"],
        text(&detail["worker"]),
        text(&detail["state"]),
        detail["runs"]
    );
    if let Some(error) = detail["error"].as_str() {
        summary.push_str(&format!(": {}", crate::client::shorten(error, 200)));
    }
    summary
}

/// Follows task `id` until it ends or `limit` passes, with a short backoff; the task as
/// `GET /tasks/{id}` shows it.
async fn wait_for(api: &ApiClient, id: i64, limit: Duration) -> Result<Output, ToolError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut delay = Duration::from_millis(25);
    loop {
        let value = api.get_task(id).await?.value;
        let ended = matches!(
            value["state"].as_str(),
            Some("completed" | "failed" | "dead" | "canceled")
        );
        let now = tokio::time::Instant::now();
        if ended || now >= deadline {
            let mut summary = task_summary(&value);
            if !ended {
                summary.push_str(&format!(
                    "; still running after {} s: follow it with get_task",
                    limit.as_secs()
                ));
            }
            return Output::record(value, summary, Record::Task);
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}

/// Runs a module in a one-node fleet started from this binary, with the default limits and no
/// endpoints.
/// `running` is the call's place among the [`MAX_TEST_MODULES`]: it goes with the node's
/// thread, which goes on if this future is dropped, so a caller that hangs up does not free it
/// early.
async fn test_module(
    args: TestModuleArgs,
    running: tokio::sync::OwnedSemaphorePermit,
) -> Result<Output, ToolError> {
    let failed = |kind: &str, message: String, console: Value| Output {
        summary: format!(
            "the module failed: {kind}: {}",
            crate::client::shorten(&message, 300)
        ),
        value: serde_json::json!({
            "ok": false,
            "error": { "kind": kind, "message": message },
            "console": console,
        }),
        failed: true,
    };
    let (source, source_map) = match args.language {
        Language::Js => (args.source, None),
        Language::Ts => match typescript::transpile(&args.source, "module.ts") {
            Ok(transpiled) => (transpiled.javascript, Some(transpiled.source_map)),
            Err(err) => return Ok(failed("execution", err.to_string(), Value::Array(vec![]))),
        },
    };
    let mut job = MechanicsJob::new(source, args.arg, MechanicsConfig::default())
        .map_err(|err| ToolError(format!("source: {err}")))?;
    if let Some(source_map) = source_map {
        job = job.with_source_map(source_map);
    }
    let request = crate::cli::job_request(job).map_err(|err| ToolError(format!("{err:#}")))?;
    let program = std::env::current_exe()
        .map_err(|err| ToolError(format!("cannot find this program to start a node: {err}")))?;
    // The fleet's futures are not `Send`: it runs on a thread of its own, on a runtime of its
    // own, for the one job.
    let result = tokio::task::spawn_blocking(move || {
        let _running = running;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| ToolError(format!("cannot start a runtime for the node: {err}")))?;
        runtime.block_on(async {
            let mut config = FleetConfig::new(program);
            config.nodes = 1;
            config.workers_per_node = 1;
            let fleet = Fleet::start(config, ShutdownHandle::new())
                .await
                .map_err(|err| ToolError(format!("cannot start a node: {err}")))?;
            let result = fleet.run(&request).await;
            fleet.shutdown().await;
            Ok::<_, ToolError>(result)
        })
    })
    .await
    .map_err(|err| ToolError(format!("the node's thread failed: {err}")))??;
    let console = |lines: &[mechanics_proto::domain::ConsoleLine]| {
        serde_json::to_value(lines).unwrap_or(Value::Null)
    };
    Ok(match result {
        Ok(answer) => Output::ok(
            serde_json::json!({
                "ok": true,
                "result": answer.result,
                "console": console(&answer.console),
            }),
            format!(
                "the module returned {}",
                crate::client::shorten(&answer.result.to_string(), 300)
            ),
        ),
        Err(FleetError::Script {
            kind,
            message,
            console: lines,
        }) => failed(&kind, message, console(&lines)),
        Err(other) => failed(other.kind(), other.to_string(), Value::Array(vec![])),
    })
}

fn tool(spec: &Spec) -> Tool {
    let annotations = ToolAnnotations::new()
        .read_only(!spec.changes)
        .destructive(spec.destructive)
        .idempotent(spec.idempotent)
        // Every tool acts on this server only.
        .open_world(false);
    Tool::new(spec.name, spec.description, (spec.schema)()).annotate(annotations)
}

/// A tool error. Its message may quote the caller's input (a bad argument's value), so it is cut
/// to [`MAX_ERROR_CHARS`]: an error is never the answer that passes the size cap.
fn error_result(message: String) -> CallToolResult {
    let message = match message.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}… (cut at {MAX_ERROR_CHARS} characters)", &message[..cut]),
        None => message,
    };
    CallToolResult::error(vec![ContentBlock::text(message)])
}

impl ServerHandler for Toolbox {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        );
        info.server_info = Implementation::new("mechanics", env!("CARGO_PKG_VERSION"));
        info.with_instructions(
            "Mechanics runs sandboxed JavaScript workers on tasks, webhooks and schedules. Read \
             the pipeline with list_workers, list_tasks, get_task, list_events, query_logs; act \
             with submit_task, retry_task, cancel_task, reset_node (within the API key's \
             scope); try a module with test_module before add_worker deploys it.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = self.caller(&context);
        let tools = TOOLS
            .iter()
            .filter(|spec| self.refusal(spec, &caller).is_none())
            .map(tool)
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let types = TYPES
            .iter()
            .map(|(file, text)| {
                Resource::new(format!("{SCHEME}types/{file}"), *file)
                    .with_mime_type("application/typescript")
                    .with_size(text.len() as u64)
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(types))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let templates = TEMPLATES
            .iter()
            .map(|(template, name, description)| {
                ResourceTemplate::new(*template, *name)
                    .with_description(*description)
                    .with_mime_type("application/json")
            })
            .collect();
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let not_found = |why: String| ErrorData::resource_not_found(why, None);
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return Err(not_found(format!("{uri}: resources are {SCHEME}...")));
        };
        if let Some(file) = rest.strip_prefix("types/") {
            let Some((_, text)) = TYPES.iter().find(|(name, _)| *name == file) else {
                return Err(not_found(format!("{uri}: no such type file")));
            };
            let contents =
                ResourceContents::text(*text, uri.clone()).with_mime_type("application/typescript");
            return Ok(ReadResourceResult::new(vec![contents]).into());
        }
        let unknown = || {
            not_found(format!(
                "{uri}: no such resource; resources/templates/list shows the URIs"
            ))
        };
        let (collection, key) = rest.split_once('/').ok_or_else(unknown)?;
        if key.is_empty() || key.contains('/') {
            return Err(unknown());
        }
        let id = || {
            key.parse::<i64>()
                .map_err(|_| not_found(format!("{uri}: {key:?} is not an id (a number)")))
        };
        let api = self.caller(&context).connection;
        let (answer, record) = match collection {
            "workers" => (api.get_worker(key).await.map(|answer| answer.text), None),
            "tasks" => (
                api.get_task(id()?).await.map(|answer| answer.text),
                Some(Record::Task),
            ),
            "events" => (
                api.get_event(id()?).await.map(|answer| answer.text),
                Some(Record::Event),
            ),
            _ => return Err(unknown()),
        };
        let mut text = answer.map_err(|err| not_found(format!("{uri}: {err}")))?;
        if !fit::fits_resource(&text) {
            // The same cut as the tools': a task or event without its big fields.
            let too_big = || {
                ErrorData::internal_error(
                    format!(
                        "{uri} is {} bytes, over the limit of {MAX_RESULT_BYTES}: read it with \
                         the CLI or the API",
                        text.len()
                    ),
                    None,
                )
            };
            let (Some(record), Ok(mut value)) = (record, serde_json::from_str::<Value>(&text))
            else {
                return Err(too_big());
            };
            let fits = |value: &Value| fit::fits_resource(&value.to_string());
            if fit::trim(&mut value, "", record, fits) == Trimmed::TooBig {
                return Err(too_big());
            }
            text = value.to_string();
        }
        let contents = ResourceContents::text(text, uri).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        TOOLS.iter().find(|spec| spec.name == name).map(tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name: Cow<'_, str> = request.name;
        let Some(spec) = TOOLS.iter().find(|spec| spec.name == name) else {
            return Ok(error_result(format!(
                "no tool is named `{name}`; tools/list shows the tools this key may use"
            ))
            .into());
        };
        let caller = self.caller(&context);
        if let Some(refusal) = self.refusal(spec, &caller) {
            return Ok(error_result(refusal).into());
        }
        let args = request.arguments.unwrap_or_default();
        let output = match self.run(spec, args, &caller).await {
            Ok(output) => output,
            Err(ToolError(message)) => return Ok(error_result(message).into()),
        };
        // Pages and records are already cut to fit; what else is too big (a worker's module
        // source) is for the API to show.
        if !fit::fits_tool_answer(&output.value) {
            return Ok(error_result(format!(
                "the answer of `{}` is {} bytes, over the limit of {MAX_RESULT_BYTES} per \
                 answer: read it with the CLI or the API",
                spec.name,
                fit::tool_answer_bytes(&output.value) / 2
            ))
            .into());
        }
        // The summary first, then the JSON itself as text: the MCP specification asks a tool
        // with structured content to send it as text too, and some clients show the model only
        // the text.
        let content = vec![
            ContentBlock::text(crate::client::shorten(&output.summary, SUMMARY_CHARS)),
            ContentBlock::text(output.value.to_string()),
        ];
        let mut result = if output.failed {
            CallToolResult::error(content)
        } else {
            CallToolResult::success(content)
        };
        result.structured_content = Some(output.value);
        Ok(result.into())
    }
}

/// Serves the tools over stdin and stdout until the client closes them.
pub async fn serve_stdio(toolbox: Toolbox) -> Result<(), String> {
    use rmcp::ServiceExt as _;
    let running = toolbox
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|err| format!("the MCP session did not start: {err}"))?;
    running
        .waiting()
        .await
        .map(drop)
        .map_err(|err| format!("the MCP session failed: {err}"))
}

/// The `/mcp` route for `mechanics serve` listening on `addr`: streamable HTTP, stateless (each
/// request stands alone, so nothing is kept per client), its tools calling the API on `addr`'s
/// loopback side with each request's key. Requests whose `Host` is not a name of `addr` are
/// refused (DNS rebinding): only loopback names when it listens on loopback, that address too
/// when on another one, any name when on every interface (where the API key guards it); and
/// `extra_hosts` (`mcp_allowed_hosts`: a reverse proxy's public names) besides.
pub fn http_routes(
    addr: SocketAddr,
    extra_hosts: &[String],
    stop: tokio_util::sync::CancellationToken,
) -> Result<axum::Router, ClientError> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::never::NeverSessionManager,
    };
    let ip = addr.ip();
    let target = if ip.is_unspecified() {
        match ip {
            std::net::IpAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], addr.port())),
            std::net::IpAddr::V6(_) => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
        }
    } else {
        addr
    };
    let connection = ApiClient::new(&format!("http://{target}"), None)?;
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_cancellation_token(stop);
    if ip.is_unspecified() {
        config = config.disable_allowed_hosts();
    } else {
        let mut hosts = config.allowed_hosts.clone();
        if !ip.is_loopback() {
            hosts.push(ip.to_string());
        }
        hosts.extend(extra_hosts.iter().cloned());
        config = config.with_allowed_hosts(hosts);
    }
    let toolbox = Toolbox::http(connection);
    let service = StreamableHttpService::new(
        move || Ok(toolbox.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Ok(axum::Router::new().route_service("/mcp", service))
}
