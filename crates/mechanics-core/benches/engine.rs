//! `cargo bench -p mechanics-core --bench engine`: latency and throughput of jobs run through a
//! [`MechanicsPool`], next to QuickJS (`rquickjs`) and, when `node` is on `PATH`, Node's `vm`.
//!
//! Every engine runs the same function sources (an identity, a JSON transform, a recursive
//! `fib(25)`, a 1,000,000-iteration loop and a webhook job that parses a 30 KB GitHub
//! `issues.opened` payload and builds a reply) with JSON in and JSON out. Ours runs them as
//! `export default <fn>` modules in a fresh context per job; "Boa without limits" runs them on the
//! same Boa with nothing of ours (no instrumentation, no host objects) in a fresh `Context` per
//! job, so the cost of our limits and sandbox is a ratio in every run; QuickJS runs them with a
//! fresh runtime and context per job and with one reused context; Node runs them in a fresh `vm`
//! context per job and in one reused context.
//!
//! A "module size" section runs modules of 1 KB, 10 KB and 100 KB (helper functions never called)
//! whose default export is the identity: the difference to the trivial job is what parsing,
//! instrumenting and compiling the module costs per job, next to Boa's parse alone and to Boa
//! without limits parsing and evaluating the same module.
//!
//! A last section runs a TypeScript version of the transform job (transpiled once, as at worker
//! add) against its own JavaScript output: a TypeScript worker should cost what its JavaScript
//! costs.
//!
//! Wall-clock ratios on a shared, noisy machine move by tens of percent from run to run, so the
//! cost of the limits is also counted in instructions when `valgrind` is on `PATH`: the bench runs
//! itself under Callgrind once per (job, engine) with one job and once with three, and the
//! difference over two is what one job costs, whatever else the machine is doing
//! (`MECHANICS_BENCH_ONE=JOB,ENGINE,COUNT` is that child mode; ENGINE is `ours`, `plain`, or
//! `context`, which only creates and drops a bare `Context` per job). The trivial job's count is
//! also shown over `context`'s: the fixed cost of a job over the least a fresh realm costs.
//!
//! `MECHANICS_BENCH_SCALE` (a positive number, default 1) scales every job count. Nothing here
//! asserts: the goal check at the end only reports pass or fail.

// A custom bench harness reports by printing a table (stdout) and progress (stderr); the
// workspace denies both lints for library and binary code, not for this reporting tool.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::typescript::{self, SourceMap};
use mechanics_core::{MechanicsPool, MechanicsPoolConfig};
use serde_json::{Value, json};

// The same allocator as the `mechanics` binary, so per-job memory accounting is on the hot path.
#[global_allocator]
static A: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

/// Goal for the trivial job with 2 workers: p50 latency at most this many milliseconds...
const GOAL_P50_MS: f64 = 0.25;
/// ...and at least this many jobs per second.
const GOAL_JOBS_PER_SEC: f64 = 6_000.0;

/// One benchmark script: a function expression taking the job's argument.
struct Script {
    name: &'static str,
    /// A JS function expression; ours gets `export default <fn_source>;`.
    fn_source: &'static str,
    arg: Value,
    /// Jobs per measurement before scaling.
    base_count: usize,
}

const TRIVIAL_FN: &str = "(a) => a";

const TRANSFORM_FN: &str = r"(input) => {
  const rows = input.records
    .filter((r) => r.active && r.qty > 0)
    .map((r) => ({ id: r.id, category: r.category, total: r.price * r.qty, tags: r.tags.length }));
  const byCategory = rows.reduce((acc, r) => {
    const c = acc[r.category] || (acc[r.category] = { count: 0, revenue: 0, tags: 0 });
    c.count += 1;
    c.revenue += r.total;
    c.tags += r.tags;
    return acc;
  }, {});
  const top = rows
    .slice()
    .sort((x, y) => y.total - x.total || x.id - y.id)
    .slice(0, 5)
    .map((r) => r.id);
  const revenue = rows.reduce((s, r) => s + r.total, 0);
  return {
    region: input.region,
    records: input.records.length,
    kept: rows.length,
    revenue,
    average: rows.length ? Math.round((revenue / rows.length) * 100) / 100 : 0,
    top,
    categories: Object.keys(byCategory).sort().map((k) => ({ name: k, ...byCategory[k] })),
  };
}";

const FIB_FN: &str = r"(a) => {
  const fib = (n) => (n < 2 ? n : fib(n - 1) + fib(n - 2));
  return { n: a.n, fib: fib(a.n) };
}";

const LOOP_FN: &str = r"(a) => {
  let s = 0;
  for (let i = 0; i < a.n; i++) {
    s = (s + i * 7) % 1000003;
  }
  return { n: a.n, s };
}";

/// A webhook worker's hot path: parse the delivery's raw body, pick fields, build a reply.
const WEBHOOK_FN: &str = r"(delivery) => {
  const event = JSON.parse(delivery.body);
  const issue = event.issue;
  const labels = issue.labels.map((l) => l.name);
  const lines = issue.body.split('\n');
  const tasks = lines.filter((l) => l.startsWith('- [ ]')).length;
  const done = lines.filter((l) => l.startsWith('- [x]')).length;
  const mentions = [];
  for (const word of issue.body.split(' ')) {
    if (word.startsWith('@') && word.length > 1 && !mentions.includes(word)) mentions.push(word);
  }
  const priority = labels.includes('bug') ? 'high' : labels.includes('enhancement') ? 'normal' : 'low';
  const owners = event.repository.topics.filter((t) => t !== 'automation');
  return {
    action: event.action,
    repository: event.repository.full_name,
    number: issue.number,
    title: issue.title.trim(),
    author: issue.user.login,
    priority,
    labels,
    tasks: { open: tasks, done },
    mentions,
    reply: {
      url: issue.comments_url,
      body: `Thanks @${issue.user.login} for #${issue.number}: ${tasks} open task(s), priority ${priority}.`
        + (owners.length ? ` Routed to ${owners.join(', ')}.` : ''),
      labels: labels.concat(['triage']),
    },
  };
}";

/// [`TRANSFORM_FN`] as a TypeScript worker author writes it: interfaces, generics, an enum, a class
/// with parameter properties, casts.
const TRANSFORM_TS: &str = r"interface Item {
  id: number;
  name: string;
  category: string;
  price: number;
  qty: number;
  active: boolean;
  tags: string[];
}

interface Row {
  id: number;
  category: string;
  total: number;
  tags: number;
}

interface Totals {
  count: number;
  revenue: number;
  tags: number;
}

enum Order {
  Descending = -1,
  Ascending = 1,
}

class Ranking<T extends { id: number; total: number }> {
  constructor(private readonly rows: readonly T[], private readonly order: Order) {}
  top(n: number): number[] {
    return this.rows
      .slice()
      .sort((x, y) => this.order * (x.total - y.total) || x.id - y.id)
      .slice(0, n)
      .map((r) => r.id);
  }
}

export default function transform(input: { region: string; records: Item[] }) {
  const rows: Row[] = input.records
    .filter((r) => r.active && r.qty > 0)
    .map((r) => ({ id: r.id, category: r.category, total: r.price * r.qty, tags: r.tags.length }));
  const byCategory = rows.reduce((acc, r) => {
    const c = acc[r.category] || (acc[r.category] = { count: 0, revenue: 0, tags: 0 });
    c.count += 1;
    c.revenue += r.total;
    c.tags += r.tags;
    return acc;
  }, {} as Record<string, Totals>);
  const revenue = rows.reduce((s, r) => s + r.total, 0);
  return {
    region: input.region,
    records: input.records.length,
    kept: rows.length,
    revenue,
    average: rows.length ? Math.round((revenue / rows.length) * 100) / 100 : 0,
    top: new Ranking(rows, Order.Descending).top(5),
    categories: Object.keys(byCategory).sort().map((k) => ({ name: k, ...byCategory[k] })),
  };
}
";

/// A GitHub `issues.opened` delivery of about 30 KB, shaped like GitHub's (users, repository and
/// issue with their URL fields, labels, a long Markdown body), as a raw body string.
fn webhook_arg() -> Value {
    let api = "https://api.github.com";
    let user = |login: &str, id: u32| {
        let mut u = serde_json::Map::new();
        u.insert("login".into(), json!(login));
        u.insert("id".into(), json!(id));
        u.insert("node_id".into(), json!(format!("MDQ6VXNlcj{id}")));
        u.insert("type".into(), json!("User"));
        u.insert("site_admin".into(), json!(false));
        for field in [
            "avatar_url",
            "url",
            "html_url",
            "followers_url",
            "following_url",
            "gists_url",
            "starred_url",
            "subscriptions_url",
            "organizations_url",
            "repos_url",
            "events_url",
            "received_events_url",
        ] {
            u.insert(field.into(), json!(format!("{api}/users/{login}/{field}")));
        }
        Value::Object(u)
    };
    let mut repository = serde_json::Map::new();
    repository.insert("id".into(), json!(1_296_269));
    repository.insert("name".into(), json!("mechanics"));
    repository.insert("full_name".into(), json!("octo-org/mechanics"));
    repository.insert("owner".into(), user("octo-org", 9_919));
    repository.insert("private".into(), json!(false));
    repository.insert(
        "description".into(),
        json!("Self-hosted automation server in one Rust binary"),
    );
    repository.insert(
        "topics".into(),
        json!(["automation", "rust", "webhooks", "platform-team"]),
    );
    for (i, field) in [
        "archive_url",
        "assignees_url",
        "blobs_url",
        "branches_url",
        "collaborators_url",
        "comments_url",
        "commits_url",
        "compare_url",
        "contents_url",
        "contributors_url",
        "deployments_url",
        "downloads_url",
        "events_url",
        "forks_url",
        "git_commits_url",
        "git_refs_url",
        "git_tags_url",
        "hooks_url",
        "issue_comment_url",
        "issue_events_url",
        "issues_url",
        "keys_url",
        "labels_url",
        "languages_url",
        "merges_url",
        "milestones_url",
        "notifications_url",
        "pulls_url",
        "releases_url",
        "stargazers_url",
        "statuses_url",
        "subscribers_url",
        "subscription_url",
        "tags_url",
        "teams_url",
        "trees_url",
    ]
    .iter()
    .enumerate()
    {
        repository.insert(
            (*field).into(),
            json!(format!("{api}/repos/octo-org/mechanics/{field}{{/number}}")),
        );
        repository.insert(format!("{field}_count"), json!(i * 3));
    }
    let mut body = String::new();
    for section in 0..40 {
        body.push_str(&format!(
            "## Part {section}\nWhen the worker reads a delivery with @reviewer{} in it, the \
             reply should name the owner and the labels. Steps to reproduce follow.\n- [ ] \
             check the payload of step {section}\n- [x] read the logs of run {section}\n",
            section % 5
        ));
    }
    let labels: Vec<Value> = ["bug", "triage", "area/engine", "good first issue"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "id": 208_045_946 + i,
                "node_id": format!("MDU6TGFiZWwyMDgwNDU5N{i}"),
                "url": format!("{api}/repos/octo-org/mechanics/labels/{name}"),
                "name": name,
                "color": "f29513",
                "default": i == 0,
                "description": format!("Issues labelled {name}"),
            })
        })
        .collect();
    let issue = json!({
        "url": format!("{api}/repos/octo-org/mechanics/issues/1347"),
        "repository_url": format!("{api}/repos/octo-org/mechanics"),
        "labels_url": format!("{api}/repos/octo-org/mechanics/issues/1347/labels{{/name}}"),
        "comments_url": format!("{api}/repos/octo-org/mechanics/issues/1347/comments"),
        "events_url": format!("{api}/repos/octo-org/mechanics/issues/1347/events"),
        "html_url": "https://github.com/octo-org/mechanics/issues/1347",
        "id": 1_347_001,
        "node_id": "MDU6SXNzdWUxMzQ3",
        "number": 1347,
        "title": "  Webhook replies lose their labels  ",
        "user": user("octocat", 583_231),
        "labels": labels,
        "state": "open",
        "locked": false,
        "assignee": user("hubot", 2),
        "assignees": [user("hubot", 2)],
        "milestone": null,
        "comments": 0,
        "created_at": "2026-12-04T10:00:00Z",
        "updated_at": "2026-12-04T10:00:00Z",
        "closed_at": null,
        "author_association": "CONTRIBUTOR",
        "body": body,
    });
    let event = json!({
        "action": "opened",
        "issue": issue,
        "repository": repository,
        "sender": user("octocat", 583_231),
        "installation": { "id": 2_311_213, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMjMxMTIxMw==" },
    });
    json!({ "body": event.to_string() })
}

fn transform_arg() -> Value {
    let categories = ["tools", "garden", "books", "games", "food"];
    let records: Vec<Value> = (0..200u32)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("item-{i}"),
                "category": categories[(i as usize * 7) % categories.len()],
                "price": f64::from((i * 37) % 1000) / 10.0 + 0.5,
                "qty": (i * 13) % 9,
                "active": i % 4 != 0,
                "tags": (0..(i % 4)).map(|t| format!("t{t}")).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "region": "eu-west", "records": records })
}

fn scripts(scale: f64) -> Vec<Script> {
    let scripts = vec![
        Script {
            name: "trivial",
            fn_source: TRIVIAL_FN,
            arg: json!({ "id": 42, "ok": true, "tags": ["a", "b"] }),
            base_count: 5_000,
        },
        Script {
            name: "transform",
            fn_source: TRANSFORM_FN,
            arg: transform_arg(),
            base_count: 2_000,
        },
        Script {
            name: "fib(25)",
            fn_source: FIB_FN,
            arg: json!({ "n": 25 }),
            base_count: 20,
        },
        Script {
            name: "loop 1M",
            fn_source: LOOP_FN,
            arg: json!({ "n": 1_000_000 }),
            base_count: 20,
        },
        Script {
            name: "webhook (30 KB issues.opened)",
            fn_source: WEBHOOK_FN,
            arg: webhook_arg(),
            base_count: 1_000,
        },
    ];
    scripts
        .into_iter()
        .map(|s| Script {
            base_count: scaled(s.base_count, scale),
            ..s
        })
        .collect()
}

/// `count * scale`, at least 2 so that one job per client thread is always possible.
fn scaled(count: usize, scale: f64) -> usize {
    ((count as f64 * scale).round() as usize).max(2)
}

fn warmup_for(count: usize) -> usize {
    (count / 20).clamp(1, 100)
}

/// Latency and throughput of one measured run.
#[derive(Debug, Clone, Copy)]
struct Stats {
    threads: usize,
    p50_ms: f64,
    p99_ms: f64,
    jobs_per_sec: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `count` jobs split over `threads` client threads. `make` builds one job runner per
/// thread (on that thread); each thread warms up, then all start together.
fn measure<M, R>(threads: usize, count: usize, make: M) -> Result<Stats, String>
where
    M: Fn() -> Result<R, String> + Sync,
    R: FnMut() -> Result<(), String>,
{
    let per_thread = count.div_ceil(threads);
    let warmup = warmup_for(per_thread);
    let barrier = Barrier::new(threads + 1);
    let (wall, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, make) = (&barrier, &make);
                scope.spawn(move || -> Result<Vec<Duration>, String> {
                    let prepared = make().and_then(|mut run| {
                        (0..warmup).try_for_each(|_| run())?;
                        Ok(run)
                    });
                    barrier.wait();
                    let mut run = prepared?;
                    let mut samples = Vec::with_capacity(per_thread);
                    for _ in 0..per_thread {
                        let start = Instant::now();
                        run()?;
                        samples.push(start.elapsed());
                    }
                    Ok(samples)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".to_owned()))
            })
            .collect();
        (start.elapsed(), results)
    });
    let mut samples = Vec::with_capacity(per_thread * threads);
    for result in results {
        samples.extend(result?);
    }
    samples.sort_unstable();
    Ok(Stats {
        threads,
        p50_ms: percentile(&samples, 50.0).as_secs_f64() * 1e3,
        p99_ms: percentile(&samples, 99.0).as_secs_f64() * 1e3,
        jobs_per_sec: samples.len() as f64 / wall.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------------------------

fn module_source(script: &Script) -> String {
    format!("export default {};\n", script.fn_source)
}

fn run_ours(pool: &MechanicsPool, source: &str, arg: &Value) -> Result<Value, String> {
    run_job(pool, job_of(source, arg, None)?)
}

fn run_job(pool: &MechanicsPool, job: MechanicsJob) -> Result<Value, String> {
    pool.run(job).result.map_err(|e| e.to_string())
}

/// The job for `source`, with `source_map` when it was transpiled.
fn job_of(
    source: &str,
    arg: &Value,
    source_map: Option<&SourceMap>,
) -> Result<MechanicsJob, String> {
    let job = MechanicsJob::new(source, arg.clone(), MechanicsConfig::default())
        .map_err(|e| e.to_string())?;
    Ok(match source_map {
        Some(map) => job.with_source_map(map.clone()),
        None => job,
    })
}

/// A pool of `workers` with the default limits, but loops may run 1,000,000,000 iterations: the
/// 1M loop's condition alone is evaluated once more than the default limit allows. Every limit is
/// still enforced, at the same cost.
fn pool_of(workers: usize) -> Result<MechanicsPool, String> {
    pool_with_time_limit(
        workers,
        MechanicsExecutionLimits::default().max_execution_time(),
    )
}

/// [`pool_of`] with another time limit: under Callgrind a job runs some fifty times slower
/// than the default 10 s allow.
fn pool_with_time_limit(workers: usize, time_limit: Duration) -> Result<MechanicsPool, String> {
    let limits = MechanicsExecutionLimits::default()
        .with_max_loop_iterations(1_000_000_000)
        .and_then(|limits| limits.with_max_execution_time(time_limit))
        .map_err(|e| e.to_string())?;
    MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(workers)
            .with_execution_limits(limits),
    )
    .map_err(|e| e.to_string())
}

fn bench_ours(script: &Script, workers: usize) -> Result<Stats, String> {
    bench_ours_module(
        &module_source(script),
        &script.arg,
        workers,
        script.base_count,
    )
}

fn bench_ours_module(
    source: &str,
    arg: &Value,
    workers: usize,
    count: usize,
) -> Result<Stats, String> {
    let pool = pool_of(workers)?;
    measure(workers, count, || {
        let pool = &pool;
        Ok(move || run_ours(pool, source, arg).map(drop))
    })
}

/// Calls `function` with `arg` in `context` and answers the result as JSON, as ours does.
fn boa_call(
    context: &mut boa_engine::Context,
    function: &boa_engine::JsValue,
    arg: &Value,
) -> Result<Value, String> {
    let describe = |e: boa_engine::JsError| e.to_string();
    let function = function.as_callable().ok_or("not a function")?;
    let arg = boa_engine::JsValue::from_json(arg, context).map_err(describe)?;
    let result = function
        .call(&boa_engine::JsValue::undefined(), &[arg], context)
        .map_err(describe)?;
    result
        .to_json(context)
        .map_err(describe)?
        .ok_or_else(|| "undefined result".to_owned())
}

/// Plain Boa without limits: a fresh default `Context`, evaluate `(fn)`, call it.
fn run_boa_plain(expr: &str, arg: &Value) -> Result<Value, String> {
    let mut context = boa_engine::Context::default();
    let function = context
        .eval(boa_engine::Source::from_bytes(expr))
        .map_err(|e| e.to_string())?;
    boa_call(&mut context, &function, arg)
}

/// Plain Boa without limits on a module: a fresh default `Context`, parse, link and evaluate the
/// module, call its default export.
fn run_boa_plain_module(source: &str, arg: &Value) -> Result<Value, String> {
    let context = &mut boa_engine::Context::default();
    let module = boa_engine::Module::parse(boa_engine::Source::from_bytes(source), None, context)
        .map_err(|e| e.to_string())?;
    let promise = module.load_link_evaluate(context);
    context.run_jobs().map_err(|e| e.to_string())?;
    if let boa_engine::builtins::promise::PromiseState::Rejected(reason) = promise.state() {
        return Err(format!("module rejected: {}", reason.display()));
    }
    let main = module
        .namespace(context)
        .get(boa_engine::js_string!("default"), context)
        .map_err(|e| e.to_string())?;
    boa_call(context, &main, arg)
}

fn bench_boa_plain(script: &Script, threads: usize) -> Result<Stats, String> {
    let expr = format!("({})", script.fn_source);
    measure(threads, script.base_count, || {
        let (expr, arg) = (&expr, &script.arg);
        Ok(move || run_boa_plain(expr, arg).map(drop))
    })
}

/// Evaluates `(fn_source)` in `ctx`, calls it with `JSON.parse(arg)` and returns
/// `JSON.stringify(result)` parsed back into a [`Value`].
fn quickjs_call(ctx: &rquickjs::Context, expr: &str, arg: &Value) -> Result<Value, String> {
    let input = serde_json::to_string(arg).map_err(|e| e.to_string())?;
    let output = ctx.with(|ctx| {
        let describe = |e: rquickjs::Error| match e {
            rquickjs::Error::Exception => format!("QuickJS exception: {:?}", ctx.catch()),
            other => other.to_string(),
        };
        let run = || -> rquickjs::Result<String> {
            let func: rquickjs::Function = ctx.eval(expr)?;
            let arg = ctx.json_parse(input)?;
            let result: rquickjs::Value = func.call((arg,))?;
            match ctx.json_stringify(result)? {
                Some(s) => s.to_string(),
                None => Ok("null".to_owned()),
            }
        };
        run().map_err(describe)
    })?;
    serde_json::from_str(&output).map_err(|e| e.to_string())
}

fn quickjs_context() -> Result<rquickjs::Context, String> {
    let runtime = rquickjs::Runtime::new().map_err(|e| e.to_string())?;
    runtime.set_memory_limit(128 * 1024 * 1024);
    rquickjs::Context::full(&runtime).map_err(|e| e.to_string())
}

/// QuickJS with a new runtime and context for every job.
fn run_quickjs_fresh(expr: &str, arg: &Value) -> Result<Value, String> {
    let ctx = quickjs_context()?;
    quickjs_call(&ctx, expr, arg)
}

fn bench_quickjs(script: &Script, threads: usize, fresh: bool) -> Result<Stats, String> {
    let expr = format!("({})", script.fn_source);
    measure(threads, script.base_count, || {
        let (expr, arg) = (&expr, &script.arg);
        // Reused: one runtime and context per client thread; the function is still evaluated
        // and called for each job.
        let reused = if fresh {
            None
        } else {
            Some(quickjs_context()?)
        };
        Ok(move || match &reused {
            Some(ctx) => quickjs_call(ctx, expr, arg).map(drop),
            None => run_quickjs_fresh(expr, arg).map(drop),
        })
    })
}

/// The Node driver: reads `{ scripts: [{ name, source, arg, count, warmup }] }` on stdin, and for
/// each script and mode (`fresh`: a new `vm` context per job; `reused`: one context) prints
/// `{ name, mode, jobs, p50_ms, p99_ms, jobs_per_sec, sample }` as one JSON array on stdout.
const NODE_DRIVER: &str = r"'use strict';
const vm = require('vm');
const fs = require('fs');
const config = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = [];
for (const s of config.scripts) {
  const expr = '(' + s.source + ')';
  for (const mode of ['fresh', 'reused']) {
    const shared = vm.createContext({});
    let sample = null;
    const job = () => {
      const ctx = mode === 'fresh' ? vm.createContext({}) : shared;
      const fn = vm.runInContext(expr, ctx);
      return JSON.stringify(fn(JSON.parse(s.arg)));
    };
    for (let i = 0; i < s.warmup; i++) sample = job();
    const lat = new Float64Array(s.count);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < s.count; i++) {
      const a = process.hrtime.bigint();
      sample = job();
      lat[i] = Number(process.hrtime.bigint() - a) / 1e6;
    }
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    lat.sort();
    const pct = (p) => lat[Math.min(lat.length, Math.max(1, Math.ceil((p / 100) * lat.length))) - 1];
    out.push({ name: s.name, mode, jobs: s.count, p50_ms: pct(50), p99_ms: pct(99),
      jobs_per_sec: s.count / wall, sample });
  }
}
process.stdout.write(JSON.stringify(out));
";

/// Node's figures for one script: (fresh context, reused context).
type NodeResult = (Stats, Stats, Value);

/// Runs every script in one `node` process. `Ok(None)` when `node` is not on `PATH`.
fn bench_node(scripts: &[Script]) -> Result<Option<Vec<NodeResult>>, String> {
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Ok(None);
    }
    let path =
        std::env::temp_dir().join(format!("mechanics-engine-bench-{}.js", std::process::id()));
    std::fs::write(&path, NODE_DRIVER).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let config = json!({
        "scripts": scripts.iter().map(|s| json!({
            "name": s.name,
            "source": s.fn_source,
            "arg": s.arg.to_string(),
            "count": s.base_count,
            "warmup": warmup_for(s.base_count),
        })).collect::<Vec<_>>(),
    });
    let output = (|| {
        let mut child = Command::new("node")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning node: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(config.to_string().as_bytes())
                .map_err(|e| format!("writing to node: {e}"))?;
        }
        child
            .wait_with_output()
            .map_err(|e| format!("waiting for node: {e}"))
    })();
    let _ = std::fs::remove_file(&path);
    let output = output?;
    if !output.status.success() {
        return Err(format!(
            "node driver failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let rows: Vec<Value> =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("node driver output: {e}"))?;
    let stats = |row: &Value| -> Stats {
        let num = |k: &str| row.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        Stats {
            threads: 1,
            p50_ms: num("p50_ms"),
            p99_ms: num("p99_ms"),
            jobs_per_sec: num("jobs_per_sec"),
        }
    };
    let find = |name: &str, mode: &str| {
        rows.iter()
            .find(|r| r["name"] == name && r["mode"] == mode)
            .ok_or_else(|| format!("node driver reported no {mode} run of {name}"))
    };
    scripts
        .iter()
        .map(|s| {
            let fresh = find(s.name, "fresh")?;
            let reused = find(s.name, "reused")?;
            let sample = fresh["sample"]
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null);
            Ok((stats(fresh), stats(reused), sample))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// A TypeScript worker against its own JavaScript output, on one pool with 1 worker: the
/// TypeScript job runs the JavaScript transpiled once (as `worker add` does) and carries the
/// source map, so the two should cost the same. Four alternating rounds each; the better of each
/// (other processes on the machine slow some rounds down).
fn typescript_report(count: usize) -> String {
    let mut out = String::from("\n== TypeScript worker vs its JavaScript output (transform) ==\n");
    let started = Instant::now();
    let transpiled = match typescript::transpile(TRANSFORM_TS, "transform.ts") {
        Ok(transpiled) => transpiled,
        Err(err) => return out + &format!("FAILED: {err}\n"),
    };
    let transpile_ms = started.elapsed().as_secs_f64() * 1e3;
    let pool = match MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(1)) {
        Ok(pool) => pool,
        Err(err) => return out + &format!("FAILED: {err}\n"),
    };
    let arg = transform_arg();
    let map = Some(&transpiled.source_map);
    let js_source = module_source(&Script {
        name: "transform",
        fn_source: TRANSFORM_FN,
        arg: Value::Null,
        base_count: 0,
    });
    let check = [
        job_of(&transpiled.javascript, &arg, map).and_then(|job| run_job(&pool, job)),
        run_ours(&pool, &js_source, &arg),
    ];
    match &check {
        [Ok(ts), Ok(js)] if same_json(ts, js) => {}
        [ts, js] => return out + &format!("RESULT MISMATCH ts={ts:?} js={js:?}\n"),
    }
    let run = |source_map: Option<&SourceMap>| {
        measure(1, count, || {
            let (pool, source, arg) = (&pool, &transpiled.javascript, &arg);
            Ok(move || run_job(pool, job_of(source, arg, source_map)?).map(drop))
        })
    };
    let mut best: [Option<Stats>; 2] = [None, None];
    for _ in 0..4 {
        for (slot, source_map) in [(0, None), (1, map)] {
            match run(source_map) {
                Ok(stats) => {
                    let kept = best[slot].get_or_insert(stats);
                    kept.p50_ms = kept.p50_ms.min(stats.p50_ms);
                    kept.p99_ms = kept.p99_ms.min(stats.p99_ms);
                    kept.jobs_per_sec = kept.jobs_per_sec.max(stats.jobs_per_sec);
                }
                Err(err) => return out + &format!("FAILED: {err}\n"),
            }
        }
    }
    let [Some(js), Some(ts)] = best else {
        return out + "FAILED: no measurement\n";
    };
    let _ = writeln!(
        out,
        "transpiled once in {transpile_ms:.2} ms ({} bytes of TypeScript, {} of JavaScript); \
         {count} jobs per run, 1 worker",
        TRANSFORM_TS.len(),
        transpiled.javascript.len()
    );
    let _ = writeln!(
        out,
        "{:<36} {:>10} {:>10} {:>10}",
        "job", "p50 ms", "p99 ms", "jobs/s"
    );
    for (label, stats) in [
        ("its JavaScript output, plain", js),
        ("TypeScript worker (+ source map)", ts),
    ] {
        let _ = writeln!(
            out,
            "{label:<36} {:>10} {:>10} {:>10}",
            fmt_num(stats.p50_ms, 3),
            fmt_num(stats.p99_ms, 3),
            fmt_rate(stats.jobs_per_sec)
        );
    }
    let _ = writeln!(
        out,
        "ratio TypeScript/JavaScript: p50 {}, jobs/s {}",
        fmt_ratio(ts.p50_ms, js.p50_ms),
        fmt_ratio(ts.jobs_per_sec, js.jobs_per_sec)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

/// JSON equality that treats numbers by value (`75025` equals `75025.0`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

struct Row {
    label: &'static str,
    stats: Result<Stats, String>,
}

/// Everything measured for one script.
struct Report {
    name: &'static str,
    jobs: usize,
    ours: [Result<Stats, String>; 2],
    baselines: Vec<Row>,
    notes: Vec<String>,
}

fn fmt_num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".to_owned()
    }
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let whole = v.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ratio(ours: f64, base: f64) -> String {
    if ours.is_finite() && base.is_finite() && base > 0.0 {
        format!("{:.2}x", ours / base)
    } else {
        "-".to_owned()
    }
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {} ({} jobs per run) ==",
        report.name, report.jobs
    );
    let _ = writeln!(
        out,
        "{:<36} {:>4} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "engine / mode", "thr", "p50 ms", "p99 ms", "jobs/s", "p50 ours/it", "jobs/s ours/it"
    );
    let line =
        |out: &mut String, label: &str, stats: &Result<Stats, String>, ours: Option<&Stats>| {
            match stats {
                Ok(s) => {
                    let (r50, rtp) = match ours {
                        Some(o) => (
                            fmt_ratio(o.p50_ms, s.p50_ms),
                            fmt_ratio(o.jobs_per_sec, s.jobs_per_sec),
                        ),
                        None => ("-".to_owned(), "-".to_owned()),
                    };
                    let _ = writeln!(
                        out,
                        "{:<36} {:>4} {:>10} {:>10} {:>10} {:>12} {:>14}",
                        label,
                        s.threads,
                        fmt_num(s.p50_ms, 3),
                        fmt_num(s.p99_ms, 3),
                        fmt_rate(s.jobs_per_sec),
                        r50,
                        rtp
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "{label:<36}  FAILED: {e}");
                }
            }
        };
    for ours in &report.ours {
        line(&mut out, "mechanics (Boa pool, fresh ctx)", ours, None);
    }
    for row in &report.baselines {
        // Compare against our run with the same number of threads (node: 1 worker).
        let ours = row.stats.as_ref().ok().and_then(|s| {
            let index = if s.threads >= 2 { 1 } else { 0 };
            report.ours[index].as_ref().ok()
        });
        line(&mut out, row.label, &row.stats, ours);
    }
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out
}

/// The label of the "Boa without limits" rows.
const BOA_PLAIN: &str = "Boa without limits, fresh ctx";

/// Goal for the cost of our limits and sandbox: ours at most this many times Boa without limits.
const GOAL_LIMITS_RATIO: f64 = 1.25;

/// Goal for the fixed cost of a job: the trivial job at most this many times the creation and
/// drop of a bare `Context` (in instructions; the wall-clock goal is [`GOAL_P50_MS`]).
const GOAL_CONTEXT_RATIO: f64 = 1.1;

/// For every job: p50 of ours over p50 of Boa without limits, 1 worker against 1 thread (the
/// cost of the limits and the sandbox), and over QuickJS and Node (Boa's own distance).
fn limits_overhead_report(reports: &[(Report, Result<Value, String>)]) -> String {
    let mut out = String::from(
        "\n== cost of the limits: p50 ours / p50 Boa without limits (1 worker, 1 thread), \
         and ours / QuickJS, Node (fresh context each) ==\n",
    );
    let _ = writeln!(
        out,
        "{:<32} {:>12} {:>8} {:>10} {:>10}",
        "job", "ours/no-lim", "goal", "ours/qjs", "ours/node"
    );
    for (report, _) in reports {
        let ours = report.ours[0].as_ref().ok().map(|s| s.p50_ms);
        let base = |label: &str| {
            report
                .baselines
                .iter()
                .find(|row| row.label == label && row.stats.as_ref().is_ok_and(|s| s.threads == 1))
                .and_then(|row| row.stats.as_ref().ok().map(|s| s.p50_ms))
        };
        let ratio = |label: &str| match (ours, base(label)) {
            (Some(o), Some(b)) => fmt_ratio(o, b),
            _ => "-".to_owned(),
        };
        let verdict = match (ours, base(BOA_PLAIN)) {
            (Some(o), Some(b)) if o / b <= GOAL_LIMITS_RATIO => "PASS",
            (Some(_), Some(_)) => "FAIL",
            _ => "-",
        };
        let _ = writeln!(
            out,
            "{:<32} {:>12} {:>8} {:>10} {:>10}",
            report.name,
            ratio(BOA_PLAIN),
            verdict,
            ratio("QuickJS fresh runtime+ctx per job"),
            ratio("node vm fresh context per job"),
        );
    }
    out
}

/// The child mode of [`instructions_report`]: `JOB,ENGINE,COUNT` runs COUNT jobs of one script
/// on one engine and exits.
const ONE_ENV: &str = "MECHANICS_BENCH_ONE";

/// Runs `JOB,ENGINE,COUNT` (see [`ONE_ENV`]); the process's exit code.
fn run_one(spec: &str) -> i32 {
    let mut parts = spec.split(',');
    let (Some(job), Some(engine), Some(Ok(count))) = (
        parts.next(),
        parts.next(),
        parts.next().map(str::parse::<usize>),
    ) else {
        eprintln!("{ONE_ENV} must be JOB,ENGINE,COUNT, not {spec:?}");
        return 2;
    };
    let scripts = scripts(1.0);
    // "module N KB": the module-size section's identity module of N KB.
    if let Some(kb) = job
        .strip_prefix("module ")
        .and_then(|rest| rest.strip_suffix(" KB"))
        .and_then(|kb| kb.parse::<usize>().ok())
    {
        let source = sized_module(kb * 1024);
        let arg = json!({ "id": 1 });
        let run = || -> Result<(), String> {
            match engine {
                "ours" => {
                    let pool = pool_with_time_limit(1, Duration::from_secs(3600))?;
                    (0..count).try_for_each(|_| run_ours(&pool, &source, &arg).map(drop))
                }
                "plain" => {
                    (0..count).try_for_each(|_| run_boa_plain_module(&source, &arg).map(drop))
                }
                other => Err(format!("unknown engine {other:?} (ours or plain)")),
            }
        };
        return match run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{job} on {engine}: {e}");
                1
            }
        };
    }
    let Some(script) = scripts.iter().find(|s| s.name == job) else {
        eprintln!("{ONE_ENV}: no job named {job:?}");
        return 2;
    };
    let run = |count: usize| -> Result<(), String> {
        match engine {
            "ours" => {
                let pool = pool_with_time_limit(1, Duration::from_secs(3600))?;
                let source = module_source(script);
                (0..count).try_for_each(|_| run_ours(&pool, &source, &script.arg).map(drop))
            }
            "plain" => {
                let expr = format!("({})", script.fn_source);
                (0..count).try_for_each(|_| run_boa_plain(&expr, &script.arg).map(drop))
            }
            // The floor of any engine that gives each job a fresh realm: the script is not run.
            "context" => {
                (0..count).for_each(|_| drop(std::hint::black_box(boa_engine::Context::default())));
                Ok(())
            }
            other => Err(format!("unknown engine {other:?} (ours, plain or context)")),
        }
    };
    match run(count) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{job} on {engine}: {e}");
            1
        }
    }
}

/// Instructions Callgrind counts for `JOB,ENGINE,COUNT` in a child process of this bench.
fn callgrind_instructions(job: &str, engine: &str, count: usize) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .env(ONE_ENV, format!("{job},{engine},{count}"))
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("running valgrind: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("valgrind run failed: {}", stderr.trim()));
    }
    // "==PID== Collected : 123456"
    stderr
        .lines()
        .find_map(|line| line.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "no instruction count in valgrind's output: {}",
                stderr.trim()
            )
        })
}

/// Instructions per job, ours over Boa without limits: the cost of the limits as a count that
/// does not depend on the machine's load. Empty when `valgrind` is not on `PATH`.
fn instructions_report(scripts: &[Script]) -> String {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return "\n(valgrind not found on PATH: no instruction counts)\n".to_owned();
    }
    let mut out = String::from(
        "\n== cost of the limits in instructions (callgrind; per job = (3 jobs - 1 job) / 2) ==\n",
    );
    let _ = writeln!(
        out,
        "{:<32} {:>16} {:>16} {:>12} {:>8}",
        "job", "ours instr", "no-limits instr", "ours/no-lim", "goal"
    );
    let per_job = |job: &str, engine: &str| -> Result<f64, String> {
        let one = callgrind_instructions(job, engine, 1)?;
        let three = callgrind_instructions(job, engine, 3)?;
        Ok((three as f64 - one as f64) / 2.0)
    };
    let mut trivial = None;
    for script in scripts {
        match (per_job(script.name, "ours"), per_job(script.name, "plain")) {
            (Ok(ours), Ok(plain)) => {
                if script.name == "trivial" {
                    trivial = Some(ours);
                }
                let ratio = ours / plain;
                let _ = writeln!(
                    out,
                    "{:<32} {:>16} {:>16} {:>12} {:>8}",
                    script.name,
                    fmt_num(ours, 0),
                    fmt_num(plain, 0),
                    fmt_ratio(ours, plain),
                    if ratio <= GOAL_LIMITS_RATIO {
                        "PASS"
                    } else {
                        "FAIL"
                    },
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(out, "{:<32} failed: {e}", script.name);
            }
        }
    }
    // The fixed cost of a job: ours on the trivial job over creating and dropping a bare
    // `Context`, the least any engine with a fresh realm per job pays.
    match (trivial, per_job("trivial", "context")) {
        (Some(ours), Ok(context)) => {
            let _ = writeln!(
                out,
                "{:<32} {:>16} {:>16} {:>12} {:>8}",
                "trivial / Context::default()",
                fmt_num(ours, 0),
                fmt_num(context, 0),
                fmt_ratio(ours, context),
                if ours / context <= GOAL_CONTEXT_RATIO {
                    "PASS"
                } else {
                    "FAIL"
                },
            );
        }
        (None, _) => {}
        (_, Err(e)) => {
            let _ = writeln!(out, "{:<32} failed: {e}", "Context::default() alone");
        }
    }
    out
}

/// A module of about `bytes` bytes: helper functions with loops that are never called, and an
/// identity default export.
fn sized_module(bytes: usize) -> String {
    let mut source = String::new();
    let mut i = 0;
    while source.len() + 30 < bytes {
        let _ = write!(
            source,
            "function helper{i}(items) {{\n  let total = 0;\n  for (const item of items) {{\n    \
             if (item.kind === 'k{i}' && item.qty > {i}) total += item.price * item.qty;\n  }}\n  \
             for (let j = 0; j < items.length; j++) {{ total -= items[j].discount || 0; }}\n  \
             return {{ id: {i}, total, tag: `h{i}-${{items.length}}` }};\n}}\n"
        );
        i += 1;
    }
    source.push_str("export default (a) => a;\n");
    source
}

/// Per-job cost of a module's size: ours (parse, instrument, compile, run), Boa without limits
/// (parse, compile, run) and Boa's parse alone, 1 thread each.
fn module_size_report(scale: f64) -> String {
    let mut out = String::from(
        "\n== module size: p50 per job of an identity export in a module of N KB (1 thread) ==\n",
    );
    let _ = writeln!(
        out,
        "{:<10} {:>12} {:>16} {:>14} {:>12}",
        "module", "ours ms", "no-limits ms", "Boa parse ms", "ours/no-lim"
    );
    let arg = json!({ "id": 1 });
    for (kb, base_count) in [(1, 1_000), (10, 300), (100, 40)] {
        let source = sized_module(kb * 1024);
        let count = scaled(base_count, scale);
        let ours = bench_ours_module(&source, &arg, 1, count);
        let plain = measure(1, count, || {
            let (source, arg) = (&source, &arg);
            Ok(move || run_boa_plain_module(source, arg).map(drop))
        });
        let parse = measure(1, count, || {
            let source = &source;
            Ok(move || {
                boa_parser::Parser::new(boa_parser::Source::from_bytes(source))
                    .parse_module(
                        &boa_ast::scope::Scope::new_global(),
                        &mut boa_interner::Interner::default(),
                    )
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        });
        let ms = |r: &Result<Stats, String>| r.as_ref().map_or(f64::NAN, |s| s.p50_ms);
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>16} {:>14} {:>12}",
            format!("{kb} KB"),
            fmt_num(ms(&ours), 3),
            fmt_num(ms(&plain), 3),
            fmt_num(ms(&parse), 3),
            fmt_ratio(ms(&ours), ms(&plain)),
        );
        for (what, result) in [("ours", &ours), ("no limits", &plain), ("parse", &parse)] {
            if let Err(e) = result {
                let _ = writeln!(out, "  note: {what} failed: {e}");
            }
        }
    }
    out
}

fn main() {
    if let Ok(one) = std::env::var(ONE_ENV) {
        std::process::exit(run_one(&one));
    }
    let scale = mechanics_test_support::bench_scale();
    let scripts = scripts(scale);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let enforced = MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(1))
        .map(|pool| pool.stats().memory_limits_enforced)
        .unwrap_or(false);

    let mut reports = Vec::new();
    for script in &scripts {
        eprintln!("[engine bench] {} ...", script.name);
        let mut notes = Vec::new();

        // Check that every engine computes the same result before timing anything.
        let expected =
            pool_of(1).and_then(|pool| run_ours(&pool, &module_source(script), &script.arg));
        let expr = format!("({})", script.fn_source);
        for (engine, result) in [
            ("quickjs", run_quickjs_fresh(&expr, &script.arg)),
            ("boa without limits", run_boa_plain(&expr, &script.arg)),
        ] {
            match (&expected, &result) {
                (Ok(a), Ok(b)) if same_json(a, b) => {}
                (Ok(a), Ok(b)) => notes.push(format!("RESULT MISMATCH ours={a} {engine}={b}")),
                (Err(e), _) => notes.push(format!("ours failed: {e}")),
                (_, Err(e)) => notes.push(format!("{engine} failed: {e}")),
            }
        }

        let ours = [bench_ours(script, 1), bench_ours(script, 2)];
        let mut baselines = vec![
            Row {
                label: BOA_PLAIN,
                stats: bench_boa_plain(script, 1),
            },
            Row {
                label: BOA_PLAIN,
                stats: bench_boa_plain(script, 2),
            },
        ];
        for (label, threads, fresh) in [
            ("QuickJS fresh runtime+ctx per job", 1, true),
            ("QuickJS fresh runtime+ctx per job", 2, true),
            ("QuickJS reused ctx (eval+call/job)", 1, false),
            ("QuickJS reused ctx (eval+call/job)", 2, false),
        ] {
            baselines.push(Row {
                label,
                stats: bench_quickjs(script, threads, fresh),
            });
        }
        reports.push((
            Report {
                name: script.name,
                jobs: script.base_count,
                ours,
                baselines,
                notes,
            },
            expected,
        ));
    }

    eprintln!("[engine bench] node ...");
    let mut node_note = None;
    match bench_node(&scripts) {
        Ok(Some(results)) => {
            for ((report, expected), (fresh, reused, sample)) in reports.iter_mut().zip(results) {
                if let Ok(expected) = expected
                    && !same_json(expected, &sample)
                {
                    report
                        .notes
                        .push(format!("RESULT MISMATCH ours={expected} node={sample}"));
                }
                report.baselines.push(Row {
                    label: "node vm fresh context per job",
                    stats: Ok(fresh),
                });
                report.baselines.push(Row {
                    label: "node vm reused ctx (eval+call/job)",
                    stats: Ok(reused),
                });
            }
        }
        Ok(None) => node_note = Some("node not found on PATH: node baseline skipped".to_owned()),
        Err(e) => node_note = Some(format!("node baseline failed: {e}")),
    }

    println!(
        "mechanics-core engine bench: {cores} cores, MECHANICS_BENCH_SCALE={scale}, \
         JobMemoryAllocator enforced={enforced}"
    );
    println!(
        "Ours: 1 worker driven by 1 client thread; 2 workers driven by 2 client threads. \
         Baselines with thr=2 use 2 threads with an engine each."
    );
    println!(
        "Ratios compare ours (same thread count; node vs 1 worker) to that row: \
         p50 ours/it > 1 = ours slower; jobs/s ours/it < 1 = ours slower."
    );
    if let Some(note) = &node_note {
        println!("note: {note}");
    }
    for (report, _) in &reports {
        print!("{}", render(report));
    }

    print!("{}", limits_overhead_report(&reports));

    eprintln!("[engine bench] instructions under callgrind ...");
    print!("{}", instructions_report(&scripts));

    eprintln!("[engine bench] module sizes ...");
    print!("{}", module_size_report(scale));

    eprintln!("[engine bench] typescript ...");
    let transform_jobs = scripts
        .iter()
        .find(|s| s.name == "transform")
        .map_or(2, |s| s.base_count);
    print!("{}", typescript_report(transform_jobs));

    println!("\n== goal check (trivial job, 2 workers, 2 client threads) ==");
    match reports.first().map(|(r, _)| (&r.ours[0], &r.ours[1])) {
        Some((one, Ok(two))) => {
            let p50_ok = two.p50_ms <= GOAL_P50_MS;
            let tp_ok = two.jobs_per_sec >= GOAL_JOBS_PER_SEC;
            let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
            println!(
                "p50 {:.3} ms <= {GOAL_P50_MS} ms: {}",
                two.p50_ms,
                verdict(p50_ok)
            );
            println!(
                "throughput {} jobs/s >= {} jobs/s: {}",
                fmt_rate(two.jobs_per_sec),
                fmt_rate(GOAL_JOBS_PER_SEC),
                verdict(tp_ok)
            );
            if let Ok(one) = one {
                println!("(for reference: p50 with 1 worker {:.3} ms)", one.p50_ms);
            }
            println!("overall: {}", verdict(p50_ok && tp_ok));
        }
        Some((_, Err(e))) => println!("overall: FAIL (the 2-worker run failed: {e})"),
        None => println!("overall: FAIL (no trivial run)"),
    }
}
