//! Command-line interface.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::{MechanicsPool, MechanicsPoolConfig, typescript};
use mechanics_node::{Fleet, FleetConfig, FleetError, NodeConfig, ShutdownHandle};
use mechanics_proto::node::{JobRequest, TOKEN_ENV};
use serde_json::Value;

use crate::client::{self, ClientArgs, TaskCommand, WorkerCommand};
use crate::serve::{self, ConfigArgs};

/// Mechanics: a self-hosted automation server that runs sandboxed JavaScript workers.
///
/// Start the coordinator with `mechanics serve`, register workers with `mechanics worker add -f
/// worker.yml`, and submit tasks with `mechanics task submit WORKER --wait`.
#[derive(Debug, Parser)]
#[command(name = "mechanics", version, about, after_help = client::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: the API, the task queue (on SQLite, or on PostgreSQL shared with
    /// other servers), and local executor nodes.
    ///
    /// Settings come from compiled defaults, then ~/.mechanics/config.yml (or --config), then
    /// MECHANICS_* variables, then these flags; `mechanics config show` prints the result.
    /// Prints `READY <addr>` on stdout once it listens. Stops on SIGINT or SIGTERM after the
    /// tasks in flight finish (up to the drain timeout; a second signal stops at once). Exits 2
    /// when it cannot start (bad configuration, address in use, database unusable or not
    /// reachable within --db-connect-timeout).
    Serve(ConfigArgs),
    /// The server's configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Workers: the JavaScript modules, HTTP services and programs that run tasks.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Worker {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: WorkerCommand,
    },
    /// Sources: the platforms whose signed webhooks start workers (`POST /webhooks/NAME`).
    #[command(after_help = client::EXIT_CODES_HELP)]
    Source {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::sources::SourceCommand,
    },
    /// Events: what was received, and for one event what became of it per worker (matched or
    /// why not, the policy's decision, its task); redelivery.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Event {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::events::EventCommand,
    },
    /// Webhooks: send a sample delivery to a running server, signed as the platform would.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Webhook {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// API keys: create (the secret is shown once), list, revoke. Each has a scope: read,
    /// operate or admin.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Key {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::keys::KeyCommand,
    },
    /// Tasks: submit, list, show, retry, cancel.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Task {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// The pipeline trace: every submission, attempt, retry, dead letter and rate-limit
    /// re-queue (and, with webhooks, every delivery, match and policy decision), oldest first.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Logs(crate::logs::LogsArgs),
    /// Run one JavaScript module in the sandbox and print its JSON result.
    ///
    /// The module's default export is called with the argument; its (awaited) return value is
    /// printed as JSON on stdout. On failure `error: <kind>: <message>` goes to stderr and the exit
    /// status is 1 (2 for usage errors such as an unreadable file or invalid JSON).
    Run(RunArgs),
    /// Executor nodes: the service that runs JavaScript jobs for the coordinator.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The API's description.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
    /// Serve the server's tools to an AI assistant over MCP (Model Context Protocol) on stdin
    /// and stdout: the assistant's client starts this command, which calls the API of the
    /// server at --server with the API key of these settings (the key's scope limits what the
    /// tools may do). `mechanics serve` offers the same tools over HTTP at `/mcp`.
    // It prints no answers, so the client commands' --json has nothing to change here.
    #[command(after_help = MCP_EXIT_CODES_HELP, mut_arg("json", |arg| arg.hide(true)))]
    Mcp(McpArgs),
    /// Instances: the `mechanics serve` processes using the server's database.
    Instance {
        #[command(subcommand)]
        command: InstanceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Print the OpenAPI 3.1 document of this build's API on stdout (what a server of this
    /// version serves at `/api/v1/openapi.json`; no server is needed).
    Openapi,
}

#[derive(Debug, Subcommand)]
enum InstanceCommand {
    /// List the servers using the database (several share one PostgreSQL database; SQLite has
    /// one): id, address, version, when it started and when its last heartbeat was. A server
    /// that stopped cleanly is gone at once; one that died after 3 missed heartbeats (15 s).
    #[command(after_help = client::EXIT_CODES_HELP)]
    List(ClientArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, each value with where it came from (the API key and
    /// the database password are redacted). Takes the flags of `mechanics serve`, to see what
    /// they would change. With --json, one JSON object: per key `{"value", "source"}`.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print one JSON object instead of lines (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Deliver a JSON file to a source's webhook URL, signed with the source's secret as its
    /// platform would (GitHub, GitLab, Slack v0, Telegram, Standard Webhooks); the secret is read
    /// from the environment variable or file the source names, as the server reads it. Prints
    /// the server's answer.
    Send(crate::webhook_send::SendArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List a running server's executor nodes, local and remote, and process workers: kind,
    /// URL, state (remote nodes: healthy, unreachable, unauthorized, incompatible, tripped),
    /// jobs in flight against capacity, jobs done, p50 job time, last error.
    #[command(after_help = client::EXIT_CODES_HELP)]
    List(ClientArgs),
    /// Register a remote executor node (`mechanics node serve` on another machine), or update
    /// the one of that name. The server reads its token from --token-env or --token-file and
    /// contacts it first: a wrong token or another protocol version is refused.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Add {
        #[command(flatten)]
        node: crate::nodes::AddArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a remote executor node: it gets no new jobs; those on it finish.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Rm {
        /// The remote node's name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-arm the crash-loop breaker of a node (or process worker) so it is started again.
    #[command(after_help = client::EXIT_CODES_HELP)]
    Reset {
        /// The node's name, as `mechanics node list` shows it.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Serve jobs over HTTP: `POST /v1/jobs`, `GET /health`, `GET /stats`.
    ///
    /// Prints `READY <addr>` on stdout once it listens (the supervisor's handshake; with port 0
    /// the address shows the port chosen). Every request but `GET /health` needs
    /// `Authorization: Bearer <token>`, the token coming from MECHANICS_NODE_TOKEN or
    /// --token-file; without a token the node only listens on a loopback address. On a
    /// non-loopback address it serves over TLS (--tls-cert, --tls-key) unless
    /// --insecure-plaintext is given. Stops on SIGTERM or SIGINT after the jobs in flight finish.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The address to listen on, such as 127.0.0.1:0 or 0.0.0.0:7070.
    #[arg(long, value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// A file holding the bearer token (instead of MECHANICS_NODE_TOKEN); surrounding whitespace
    /// is ignored.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A name for logs and /stats.
    #[arg(long)]
    name: Option<String>,
    /// Engine worker threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Jobs that may wait for a worker; past it the node answers 503.
    #[arg(long, value_name = "N", default_value_t = 256)]
    queue_capacity: usize,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Exit at once when resident memory passes this many MiB (status 86).
    #[arg(long, value_name = "MIB")]
    memory_cap_mb: Option<u64>,
    /// Ask to be recycled (response header x-mechanics-recycle) after this many jobs.
    #[arg(long, value_name = "N")]
    recycle_after_jobs: Option<u64>,
    /// Ask to be recycled once resident memory passes this many MiB.
    #[arg(long, value_name = "MIB")]
    recycle_memory_mb: Option<u64>,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plaintext HTTP on a non-loopback address (the token crosses the network in clear):
    /// only for a network that is private by other means.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_plaintext: bool,
    /// Log one JSON object per line (for log collectors; a coordinator running this node as a
    /// local node passes it, and relays each line under its own log format).
    #[arg(long)]
    log_json: bool,
}

/// `mechanics mcp`'s exit statuses: it serves until its client goes, and answers nothing itself.
const MCP_EXIT_CODES_HELP: &str = "\
Exit status:
  0  the assistant's client closed the session (stdin)
  1  the session could not start or failed
  2  usage or bad input: unknown flags, an unreadable or invalid --api-key-file or config.yml";

#[derive(Debug, clap::Args)]
struct McpArgs {
    /// Offer only the tools that change nothing (no submit, retry, cancel, reset or add).
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The ES module to run (its default export is called).
    module: PathBuf,
    /// The argument passed to the default export, as JSON.
    #[arg(long, value_name = "JSON", default_value = "null")]
    arg: String,
    /// A file holding the job's MechanicsConfig as JSON.
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
    /// A file holding MechanicsExecutionLimits as JSON (any subset of the fields).
    #[arg(long, value_name = "LIMITS.json")]
    limits: Option<PathBuf>,
    /// Print errors as a JSON object `{"kind", "message"}` on stderr.
    #[arg(long)]
    json_errors: bool,
    /// Run the job in a local executor node (a supervised child process) instead of in this
    /// process, as the server does.
    #[arg(long)]
    node: bool,
}

/// Parses the command line and runs the command; returns the process exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return argument_error(&err),
    };
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Serve(args) => ExitCode::from(serve::serve(&args)),
        Command::Config {
            command: ConfigCommand::Show { config, json },
        } => ExitCode::from(serve::config_show(&config, json)),
        Command::Worker {
            command: WorkerCommand::Test(args),
            ..
        } => crate::worker_test::run(&args),
        Command::Worker { client, command } => {
            finish(client::worker(&client, &command), client.json)
        }
        Command::Task { client, command } => finish(client::task(&client, &command), client.json),
        Command::Source { client, command } => {
            finish(crate::sources::source(&client, &command), client.json)
        }
        Command::Webhook {
            client,
            command: WebhookCommand::Send(send),
        } => finish(crate::webhook_send::send(&client, &send), client.json),
        Command::Event { client, command } => {
            finish(crate::events::event(&client, &command), client.json)
        }
        Command::Key { client, command } => {
            finish(crate::keys::key(&client, &command), client.json)
        }
        Command::Logs(args) => finish(crate::logs::logs(&args), args.json()),
        Command::Node { command } => match command {
            NodeCommand::Serve(args) => node_serve(&args),
            NodeCommand::List(client) => finish(client::node_list(&client), client.json),
            NodeCommand::Add { node, client } => {
                finish(crate::nodes::node_add(&client, &node), client.json)
            }
            NodeCommand::Rm { name, client } => {
                finish(crate::nodes::node_rm(&client, &name), client.json)
            }
            NodeCommand::Reset { name, client } => {
                finish(client::node_reset(&client, &name), client.json)
            }
        },
        Command::Instance {
            command: InstanceCommand::List(client),
        } => finish(client::instance_list(&client), client.json),
        Command::Mcp(args) => finish(mcp(&args), false),
        Command::Api {
            command: ApiCommand::Openapi,
        } => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(mechanics_server::openapi::document_json().as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    error_line(&format!("writing the document failed: {err}"));
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The exit status of a client command, its error printed as `error: <message>`, or with
/// `--json` (`json`) as one JSON object on stderr, so a script reads every outcome as JSON.
/// Arguments clap refused: with `--json` among them, the error as every other client error
/// prints it with `--json` (exit 2), so a script reading stderr as JSON is not handed clap's
/// text; otherwise (and for `--help` and `--version`, which are no errors) as clap prints it.
fn argument_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let shown = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    // Only up to a `--`: after it, `--json` would be a value, not the flag.
    let json = std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    if shown || !json {
        err.exit();
    }
    // clap's text is `error: <what>`, a blank line, then the usage: the JSON keeps the what.
    let text = err.render().to_string();
    let what = text.split("\n\n").next().unwrap_or_default();
    let message = what.strip_prefix("error: ").unwrap_or(what).trim();
    finish(Err(client::Failure::usage(message)), true)
}

fn finish(result: Result<(), client::Failure>, json: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if json {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{}", failure.to_json());
            } else {
                error_line(&failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Prints `error: <message>` on stderr.
pub(crate) fn error_line(message: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {message}");
}

/// Exit status for a job that failed.
const EXIT_FAILED: u8 = 1;
/// Exit status for bad usage: unreadable files, invalid JSON, invalid limits.
const EXIT_USAGE: u8 = 2;

fn run(args: &RunArgs) -> ExitCode {
    let job = match load_job(args) {
        Ok(job) => job,
        // A TypeScript syntax error fails the job, as a JavaScript one does in the engine.
        Err(err) if err.is::<typescript::TranspileError>() => {
            report(args.json_errors, "execution", &err.to_string());
            return ExitCode::from(EXIT_FAILED);
        }
        Err(err) => {
            report(args.json_errors, "usage", &format!("{err:#}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = if args.node {
        run_on_node(job)
    } else {
        match MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(1)) {
            Ok(pool) => {
                let output = pool.run(job);
                print_console(output.console.iter().map(|l| (l.level, l.message.as_str())));
                output.result
            }
            Err(err) => Err(err),
        }
        .map_err(|err| (err.kind().as_str().to_owned(), err.to_string()))
    };
    match result {
        Ok(value) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{value}");
            ExitCode::SUCCESS
        }
        Err((kind, message)) => {
            report(args.json_errors, &kind, &message);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Prints a job's console output, as `(level, message)` pairs, on stderr: one
/// `console.LEVEL: message` per line, so that stdout stays exactly the result. The engine's lines
/// (in this process) and a node's (over the wire) print alike.
pub(crate) fn print_console<'a, L: std::fmt::Display>(
    lines: impl IntoIterator<Item = (L, &'a str)>,
) {
    let mut stderr = std::io::stderr().lock();
    for (level, message) in lines {
        let _ = writeln!(stderr, "console.{level}: {message}");
    }
}

/// Runs `job` through a fleet of one node started from this binary and prints its console
/// output as [`run`] does in process; the error as (kind, message).
fn run_on_node(job: MechanicsJob) -> Result<Value, (String, String)> {
    let failed = |kind: &str, err: &dyn std::fmt::Display| (kind.to_owned(), err.to_string());
    let program = std::env::current_exe().map_err(|err| failed("node", &err))?;
    let request = job_request(job).map_err(|err| failed("usage", &err))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|err| failed("node", &err))?;
    runtime.block_on(async {
        let mut config = FleetConfig::new(program);
        config.nodes = 1;
        config.workers_per_node = 1;
        let fleet = Fleet::start(config, ShutdownHandle::new())
            .await
            .map_err(|err| failed("node", &err))?;
        let result = fleet.run(&request).await;
        fleet.shutdown().await;
        match result {
            Ok(answer) => {
                print_console(answer.console.iter().map(|l| (l.level, l.message.as_str())));
                Ok(answer.result)
            }
            Err(FleetError::Script {
                kind,
                message,
                console,
            }) => {
                print_console(console.iter().map(|l| (l.level, l.message.as_str())));
                Err((kind, message))
            }
            Err(other) => Err(failed(other.kind(), &other)),
        }
    })
}

/// Runs `mechanics mcp`: the tools over stdio until the client closes it. Nothing but MCP
/// messages may reach stdout, so logs go to stderr.
fn mcp(args: &McpArgs) -> Result<(), client::Failure> {
    init_logging();
    let connection = args.client.connect()?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|err| client::Failure::failed(format!("cannot start the async runtime: {err}")))?;
    runtime
        .block_on(crate::mcp::serve_stdio(crate::mcp::Toolbox::stdio(
            connection,
            args.read_only,
        )))
        .map_err(client::Failure::failed)
}

/// The wire form of a validated job.
pub(crate) fn job_request(job: MechanicsJob) -> anyhow::Result<JobRequest> {
    let Value::Object(mut fields) = serde_json::to_value(&job)? else {
        anyhow::bail!("a job serializes to an object");
    };
    let mut request = JobRequest::new(
        format!("run-{}", std::process::id()),
        job.module_source(),
        job.arg().clone(),
    );
    request.config = fields.remove("config");
    request.limits = fields.remove("limits");
    request.source_map = fields.remove("source_map");
    Ok(request)
}

fn node_serve(args: &ServeArgs) -> ExitCode {
    if args.log_json {
        init_json_logging();
    } else {
        init_logging();
    }
    match serve_node(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(false, "node", &format!("{err:#}"));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn serve_node(args: &ServeArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        // Only a small regular file: a FIFO or a device would hang or exhaust the node.
        Some(path) => Some(
            mechanics_server::files::read_text(
                path,
                mechanics_server::files::MAX_SECRET_FILE_BYTES,
            )
            .context("--token-file")?
            .trim()
            .to_owned(),
        ),
        None => std::env::var(TOKEN_ENV).ok(),
    };
    let mib = |n: u64| n.saturating_mul(1024 * 1024);
    let mut pool = MechanicsPoolConfig::default()
        .with_queue_capacity(args.queue_capacity)
        // A node being stopped or recycled should not wait long for a thread stuck in native
        // code; its process ends anyway.
        .with_shutdown_timeout(Duration::from_secs(1));
    if let Some(workers) = args.workers {
        pool = pool.with_worker_count(workers);
    }
    let mut config = NodeConfig::new();
    config.name.clone_from(&args.name);
    config.token = token;
    config.pool = pool;
    config.max_body_bytes = args.max_body_bytes;
    config.memory_cap_bytes = args.memory_cap_mb.map(mib);
    config.recycle_after_jobs = args.recycle_after_jobs;
    config.recycle_rss_bytes = args.recycle_memory_mb.map(mib);
    config.insecure_plaintext = args.insecure_plaintext;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(mechanics_node::server_tls(cert, key)?);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr = listener.local_addr()?;
        config.check_address(addr)?;
        let shutdown = termination().context("cannot install signal handlers")?;
        let serving = mechanics_node::serve(listener, config, shutdown);
        // The supervisor's handshake: announced once the socket accepts connections.
        announce_ready(addr);
        serving.await.map_err(anyhow::Error::from)
    })
}

fn announce_ready(addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "READY {addr}");
    let _ = stdout.flush();
}

/// Completes on the first SIGTERM or SIGINT.
fn termination() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Logs to stderr, filtered by RUST_LOG (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A node's stderr is read by its supervisor, not a terminal: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Logs to stderr as one JSON object per line, filtered by RUST_LOG (default `info`).
fn init_json_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The job `mechanics run` runs. A TypeScript module (`.ts`, `.mts`) is transpiled first, with
/// its source map, so positions in errors and console output name its lines; its syntax error
/// is the error itself (a [`typescript::TranspileError`]), which `run` reports as the job's.
fn load_job(args: &RunArgs) -> anyhow::Result<MechanicsJob> {
    let source = std::fs::read_to_string(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))?;
    let arg: Value = serde_json::from_str(&args.arg).context("--arg is not valid JSON")?;
    let config: MechanicsConfig = match &args.config {
        Some(path) => read_json(path, "--config")?,
        None => MechanicsConfig::default(),
    };
    let file_name = args.module.display().to_string();
    let (source, source_map) = if typescript::is_typescript(&file_name) {
        let transpiled = typescript::transpile(&source, &file_name)?;
        (transpiled.javascript, Some(transpiled.source_map))
    } else {
        (source, None)
    };
    let mut job = MechanicsJob::new(source, arg, config)
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("invalid module {}", args.module.display()))?;
    if let Some(source_map) = source_map {
        job = job.with_source_map(source_map);
    }
    Ok(match &args.limits {
        Some(path) => job.with_limits(read_json::<MechanicsExecutionLimits>(path, "--limits")?),
        None => job,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, flag: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{flag}: invalid {}", path.display()))
}

fn report(json: bool, kind: &str, message: &str) {
    let mut stderr = std::io::stderr().lock();
    if json {
        let _ = writeln!(
            stderr,
            "{}",
            serde_json::json!({ "kind": kind, "message": message })
        );
    } else {
        let _ = writeln!(stderr, "error: {kind}: {message}");
    }
}
