//! `mechanics worker test`: runs a js worker once, locally, with no server, building its job
//! exactly as the dispatcher does (`mechanics_server::dispatch::js_job`) and reading it exactly
//! as a node does (`mechanics_node::job_of`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mechanics_core::{JobOutput, MechanicsPool, MechanicsPoolConfig};
use mechanics_proto::domain::{Trigger, Worker, WorkerKind};
use serde_json::{Value, json};

use crate::client::load_worker;

/// `mechanics worker test` arguments.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The worker's YAML spec (its module is read relative to it, as `worker add` does).
    #[arg(short = 'f', long = "file", value_name = "WORKER.yml")]
    pub file: PathBuf,
    /// The task's payload, as JSON (what `mechanics task submit` would send).
    #[arg(long, value_name = "JSON", conflicts_with = "event")]
    pub payload: Option<String>,
    /// A file holding a webhook event's payload as JSON: the worker gets it as `event.payload`,
    /// as when that delivery arrives.
    #[arg(long, value_name = "FILE")]
    pub event: Option<PathBuf>,
    /// The event's type (`issues.opened`); default: the first event type of the worker's first
    /// webhook trigger.
    #[arg(long, value_name = "TYPE", requires = "event")]
    pub event_type: Option<String>,
    /// Print one JSON document `{ result | error, console, reply }` on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the test; exit 0 (the job returned), 1 (it failed), 2 (bad input).
pub fn run(args: &TestArgs) -> ExitCode {
    match prepare(args) {
        Ok((worker, job)) => report(args, &worker, run_job(job)),
        Err(message) => {
            crate::cli::error_line(&message);
            ExitCode::from(2)
        }
    }
}

fn prepare(args: &TestArgs) -> Result<(Worker, mechanics_core::job::MechanicsJob), String> {
    let input = load_worker(&args.file).map_err(|err| err.message)?;
    if input.spec.kind != WorkerKind::Js {
        return Err(format!(
            "{}: worker test runs js workers; an {:?} worker is a service of its own: start it \
             and call it",
            args.file.display(),
            input.spec.kind
        ));
    }
    let transpiled = match (&input.module_source, input.spec.module.as_deref()) {
        (Some(source), Some(module)) => crate::serve::transpile_module(source, module)?,
        _ => None,
    };
    let worker = Worker {
        spec: input.spec,
        module_source: input.module_source,
        transpiled,
        revision: 1,
        created_at: 0,
        updated_at: 0,
        paused: false,
    };
    let payload = match &args.payload {
        Some(text) => serde_json::from_str(text)
            .map_err(|err| format!("--payload is not valid JSON: {err}"))?,
        None => Value::Null,
    };
    let event = match &args.event {
        Some(path) => Some(event_of(&worker, path, args.event_type.as_deref())?),
        None => None,
    };
    let request = mechanics_server::dispatch::js_job(&worker, 1, 1, &payload, event)?;
    let job = mechanics_node::job_of(request)?;
    Ok((worker, job))
}

/// The event as the dispatcher hands it to a worker: `{ id, source, type, payload }`.
fn event_of(worker: &Worker, path: &Path, event_type: Option<&str>) -> Result<Value, String> {
    let text = mechanics_server::files::read_text(path, mechanics_proto::api::MAX_MODULE_BYTES)
        .map_err(|err| format!("--event {}: {err}", path.display()))?;
    let payload: Value = serde_json::from_str(&text)
        .map_err(|err| format!("--event {}: not valid JSON: {err}", path.display()))?;
    let trigger = worker.spec.triggers.iter().find_map(|t| match t {
        Trigger::Webhook(webhook) => Some(webhook),
        _ => None,
    });
    let event_type = match (event_type, trigger) {
        (Some(event_type), _) => event_type.to_owned(),
        (None, Some(trigger)) => trigger.events.first().cloned().unwrap_or_default(),
        (None, None) => {
            return Err(
                "--event-type is needed: the worker has no webhook trigger to take an \
                        event type from"
                    .to_owned(),
            );
        }
    };
    let source = trigger.map_or("test", |t| t.source.as_str());
    Ok(json!({ "id": 1, "source": source, "type": event_type, "payload": payload }))
}

fn run_job(job: mechanics_core::job::MechanicsJob) -> JobOutput {
    match MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(1)) {
        Ok(pool) => pool.run(job),
        Err(err) => JobOutput::without_console(Err(err)),
    }
}

/// The reply a `write_back: true` worker's result would post: its non-empty string `reply`.
fn reply_of(worker: &Worker, result: &Value) -> Option<String> {
    if !worker.spec.write_back {
        return None;
    }
    result
        .get("reply")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

fn report(args: &TestArgs, worker: &Worker, output: JobOutput) -> ExitCode {
    let reply = output
        .result
        .as_ref()
        .ok()
        .and_then(|result| reply_of(worker, result));
    let code = if output.result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if args.json {
        let console: Vec<Value> = output
            .console
            .iter()
            .map(|line| json!({ "level": line.level, "ts": line.ts, "message": line.message }))
            .collect();
        let mut document = json!({ "console": console, "reply": reply });
        match &output.result {
            Ok(result) => document["result"] = result.clone(),
            Err(err) => {
                document["error"] = json!({ "kind": err.kind(), "message": err.to_string() });
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{document}");
        return code;
    }
    crate::cli::print_console(
        output
            .console
            .iter()
            .map(|line| (line.level.as_str(), line.message.as_str())),
    );
    match &output.result {
        Ok(result) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{result}");
            let mut stderr = std::io::stderr().lock();
            match (&reply, worker.spec.write_back) {
                (Some(text), _) => {
                    let _ = writeln!(stderr, "write-back reply (not posted):\n{text}");
                }
                (None, true) => {
                    let _ = writeln!(
                        stderr,
                        "write-back: nothing would be posted (the result has no non-empty string \
                         `reply`)"
                    );
                }
                (None, false) => {}
            }
        }
        Err(err) => crate::cli::error_line(&format!("{}: {err}", err.kind().as_str())),
    }
    code
}
