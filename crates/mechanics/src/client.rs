//! The CLI client of a running coordinator: `mechanics worker|task|node|instance ...`.
//!
//! Every command is one or a few calls of the API under `/api/v1` through the one typed client,
//! [`mechanics_client::ApiClient`] (shapes in `mechanics_proto::api`). People get aligned tables and short lines; `--json` prints the API's
//! JSON answer as it came. Exit statuses: [`EXIT_OK`], [`EXIT_FAILED`], [`EXIT_USAGE`],
//! [`EXIT_NO_SERVER`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mechanics_client::{Answer, ApiClient, ClientError, TaskFilter};
use mechanics_proto::api::{
    InstanceList, MAX_MODULE_BYTES, NodeList, SubmitTask, Submitted, TaskDetail, TaskList,
    WorkerInput, WorkerList, WorkerView,
};
use mechanics_proto::domain::{
    AttemptConsoleLine, HumanDuration, Task, TaskAttempt, TaskState, WorkerKind, WorkerSpec,
};
use mechanics_store::MAX_PAGE_SIZE;
use serde_json::Value;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The server refused or failed the operation (an API error), or `--wait` ended with the task
/// failed, dead or canceled.
pub const EXIT_FAILED: u8 = 1;
/// Bad usage or bad input: unknown flags, a malformed or invalid worker file, unreadable files.
pub const EXIT_USAGE: u8 = 2;
/// No server answered at the URL.
pub const EXIT_NO_SERVER: u8 = 3;

/// Largest worker or source YAML file read: a spec is a page of settings (the module is read
/// separately, up to [`MAX_MODULE_BYTES`]), so anything bigger is the wrong file.
pub const MAX_SPEC_FILE_BYTES: usize = 256 * 1024;

/// The exit statuses, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  the server refused or failed the operation (the API's message is printed as `error: ...`),
     or `task submit --wait` ended with the task failed, dead or canceled
  2  usage or bad input: unknown flags, malformed or invalid worker YAML, unreadable files
  3  no Mechanics server answered at the --server URL";

/// Where the server is and how to talk to it; shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's URL [default: `server:` in ~/.mechanics/config.yml, else http:// and its
    /// `addr:`, else http://127.0.0.1:21212].
    #[arg(long, global = true, env = "MECHANICS_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The server's API key, sent as `Authorization: Bearer`. Every local user can read a flag's
    /// value with `ps`: prefer --api-key-file or MECHANICS_API_KEY.
    #[arg(
        long,
        global = true,
        env = "MECHANICS_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    /// A file holding the server's API key: a regular file of at most 64 KiB, its trailing line
    /// break trimmed. Not together with --api-key.
    #[arg(
        long,
        global = true,
        env = "MECHANICS_API_KEY_FILE",
        value_name = "PATH"
    )]
    api_key_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of tables, for scripts; an error is then the JSON
    /// object `{"error": {"code", "message", "exit"}}` on stderr.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `mechanics worker ...`.
#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// Add a worker from its YAML spec, or update the worker of that name.
    ///
    /// For js workers the module named by `module:` is read relative to the YAML file's directory
    /// and stored with the worker; editing the file later changes nothing until you add it
    /// again. Both must be regular files: the YAML at most 256 KiB, the module at most 1 MiB.
    /// Errors in the file (syntax, unknown fields, invalid values) name the file and the field
    /// and exit 2.
    Add {
        /// The worker's YAML spec.
        #[arg(short = 'f', long = "file", value_name = "WORKER.yml")]
        file: PathBuf,
    },
    /// List the registered workers.
    List,
    /// Show one worker: its spec, revision and (js) module size.
    Show {
        /// The worker's name.
        name: String,
    },
    /// Remove a worker. Its tasks stay in the database. A worker with pending or running tasks
    /// is not removed (exit 1) unless --force, which cancels them.
    Rm {
        /// The worker's name.
        name: String,
        /// Cancel the worker's pending and running tasks and remove it.
        #[arg(long)]
        force: bool,
    },
    /// Pause a worker: its tasks are still created (webhooks, API, cron fires are recorded as
    /// skipped) but none is dispatched until `resume`. Every server sharing the database obeys.
    Pause {
        /// The worker's name.
        name: String,
    },
    /// Resume a paused worker: its pending tasks are dispatched, oldest first.
    Resume {
        /// The worker's name.
        name: String,
    },
    /// Run a js worker once, locally, with no server: exactly as the server would (the same
    /// `{ event, task, payload }` argument, the worker's limits and endpoints, `${env:...}` from
    /// this environment). Prints the result on stdout, console lines on stderr and, for
    /// `write_back: true` workers, the reply that would be posted. Exit 0 (the job returned),
    /// 1 (it failed), 2 (bad input).
    Test(crate::worker_test::TestArgs),
}

/// `mechanics task ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Submit a task for a worker (the worker needs an `api: true` trigger).
    ///
    /// Prints the new task's id. With --wait, follows the task until it ends and prints it:
    /// exit 0 when it completed, 1 when it failed, went dead or was canceled.
    Submit {
        /// The worker's name.
        worker: String,
        /// The task's input, as JSON.
        #[arg(long, value_name = "JSON", default_value = "null")]
        payload: String,
        /// Submitting again with the same key for the same worker gives the same task.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Wait until the task ends and print it.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (e.g. 30s, 5m), exit 1 [default: no limit].
        #[arg(long, value_name = "DURATION", requires = "wait")]
        timeout: Option<String>,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks in this state: pending, dispatched, completed, failed, dead, canceled.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Only tasks of this worker.
        #[arg(long, value_name = "NAME")]
        worker: Option<String>,
        /// At most this many, 1 to 1000 (pass the printed --cursor for the next page).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Continue a listing after this id (the `next_cursor` of the previous page).
        #[arg(long, value_name = "ID")]
        cursor: Option<i64>,
    },
    /// Show one task: state, attempts, result or error, and under `console:` what its
    /// attempts wrote with `console` (`[attempt N] HH:MM:SS.mmmZ LEVEL message`, UTC).
    Show {
        /// The task's id.
        id: i64,
    },
    /// Queue a failed or dead task again (its retry count starts over).
    ///
    /// With --wait, follows it as `task watch` does: exit 0 when it completed, 1 otherwise.
    Retry {
        /// The task's id.
        id: i64,
        /// Follow the task until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Follow a task: one line per change of state or attempt, until it ends; exit 0 when it
    /// completed, 1 when it failed, went dead or was canceled.
    Watch {
        /// The task's id.
        id: i64,
    },
    /// Cancel a task that has not ended.
    Cancel {
        /// The task's id.
        id: i64,
    },
}

/// The server client commands call when nothing says otherwise: `mechanics serve`'s default
/// address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:21212";

/// The URL of a server listening on `addr` (`HOST:PORT`) as seen from this machine: an address
/// on every interface (`0.0.0.0`, `[::]`) is reached on loopback.
fn server_of_addr(addr: &str) -> std::result::Result<String, String> {
    let parsed: std::net::SocketAddr = addr.trim().parse().map_err(|_| {
        format!("{addr:?} is not an address: write HOST:PORT, e.g. 127.0.0.1:21212")
    })?;
    let ip = match parsed.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(format!(
        "http://{}",
        std::net::SocketAddr::new(ip, parsed.port())
    ))
}

/// A command's failure, with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub code: u8,
    /// The message, printed as `error: <message>`.
    pub message: String,
}

impl Failure {
    /// What kind of failure it is, by its exit status: `failed`, `usage` or `no_server`.
    pub fn kind(&self) -> &'static str {
        match self.code {
            EXIT_USAGE => "usage",
            EXIT_NO_SERVER => "no_server",
            _ => "failed",
        }
    }

    /// The failure as `--json` prints it on stderr: `{"error": {"code", "message", "exit"}}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "error": { "code": self.kind(), "message": self.message, "exit": self.code }
        })
        .to_string()
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

pub(crate) type Result<T, E = Failure> = std::result::Result<T, E>;

/// `--limit` as the server takes it, 1 to [`MAX_PAGE_SIZE`]: the server refuses any other
/// page size, so a bad one exits 2 here without a request.
pub(crate) fn page_limit(limit: u32) -> Result<u32> {
    if (1..=MAX_PAGE_SIZE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Failure::usage(format!(
            "--limit: must be 1 to {MAX_PAGE_SIZE}; follow the printed --cursor for more"
        )))
    }
}

/// `--state` checked against the states `S` names, in the spelling the server takes: a typo
/// exits 2 here, naming the states, without a request.
pub(crate) fn state_filter<S>(state: Option<&str>) -> Result<Option<String>>
where
    S: std::str::FromStr + std::fmt::Display,
    S::Err: std::fmt::Display,
{
    state
        .map(|state| {
            state
                .parse::<S>()
                .map(|state| state.to_string())
                .map_err(|err| Failure::usage(format!("--state: {err}")))
        })
        .transpose()
}

impl ClientArgs {
    /// The API key to send, from --api-key/MECHANICS_API_KEY or --api-key-file/
    /// MECHANICS_API_KEY_FILE, checked by the server's own rules (a blank key or one no header
    /// can carry is refused, not sent).
    fn key(&self) -> Result<Option<String>> {
        use mechanics_server::config::{check_api_key, read_api_key_file};
        match (&self.api_key, &self.api_key_file) {
            (Some(_), Some(_)) => Err(Failure::usage(
                "--api-key (or MECHANICS_API_KEY) and --api-key-file (or MECHANICS_API_KEY_FILE) \
                 are both set: give the key one way",
            )),
            (Some(key), None) => {
                check_api_key(key).map_err(|message| {
                    Failure::usage(format!("--api-key (or MECHANICS_API_KEY): {message}"))
                })?;
                Ok(Some(key.clone()))
            }
            (None, Some(path)) => read_api_key_file(path)
                .map(Some)
                .map_err(|message| Failure::usage(format!("--api-key-file: {message}"))),
            (None, None) => Ok(None),
        }
    }
}

impl ClientArgs {
    /// The connection these settings describe: the URL checked, the key read.
    ///
    /// Each setting comes from its flag, else its variable, else `~/.mechanics/config.yml` (the
    /// server's own file, read by the server's loader): `server:` or `http://` + `addr:` for the
    /// URL, `api_key:` or `api_key_file:` for the key. The file is read only for what flags and
    /// variables left unset, so a broken file does not stop a command that does not need it.
    pub(crate) fn connect(&self) -> Result<ApiClient> {
        let flag_key = self.key()?;
        if let (Some(server), Some(key)) = (&self.server, &flag_key) {
            return Ok(ApiClient::new(server, Some(key.clone()))?);
        }
        let path = mechanics_server::config::default_home().join("config.yml");
        let file = mechanics_server::config::ConfigLayer::from_file(&path)
            .map_err(|err| Failure::usage(err.to_string()))?;
        let server = match (&self.server, &file.server, &file.addr) {
            (Some(server), _, _) | (None, Some(server), _) => server.clone(),
            (None, None, Some(addr)) => server_of_addr(addr).map_err(|message| {
                Failure::usage(format!("{}: addr: {message}", path.display()))
            })?,
            (None, None, None) => DEFAULT_SERVER.to_owned(),
        };
        let key = match (flag_key, file.api_key, file.api_key_file) {
            (Some(key), _, _) => Some(key),
            (None, Some(_), Some(_)) => {
                return Err(Failure::usage(format!(
                    "{}: api_key and api_key_file are both set: give the key one way",
                    path.display()
                )));
            }
            (None, Some(key), None) => {
                use mechanics_server::config::check_api_key;
                check_api_key(&key).map_err(|message| {
                    Failure::usage(format!("{}: api_key: {message}", path.display()))
                })?;
                Some(key)
            }
            (None, None, Some(file)) => Some(
                mechanics_server::config::read_api_key_file(&file).map_err(|message| {
                    Failure::usage(format!("{}: api_key_file: {message}", path.display()))
                })?,
            ),
            (None, None, None) => None,
        };
        Ok(ApiClient::new(&server, key)?)
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        let code = match &err {
            ClientError::BadServerUrl { .. } | ClientError::Request(_) => EXIT_USAGE,
            ClientError::NoServer { .. } => EXIT_NO_SERVER,
            ClientError::Transport { .. }
            | ClientError::Api { .. }
            | ClientError::UnexpectedAnswer(_) => EXIT_FAILED,
        };
        Self {
            code,
            message: err.to_string(),
        }
    }
}

/// The CLI's blocking side of the [`ApiClient`]: every command calls the API through it.
pub(crate) struct Api {
    client: ApiClient,
    pub(crate) json: bool,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    pub(crate) fn new(args: &ClientArgs) -> Result<Self> {
        let client = args.connect()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::failed(format!("cannot start the async runtime: {err}")))?;
        Ok(Self {
            client,
            json: args.json,
            runtime,
        })
    }

    /// The client, to name the call: `api.run(api.client().list_workers())`.
    pub(crate) fn client(&self) -> &ApiClient {
        &self.client
    }

    /// Runs one call of the client to its end.
    pub(crate) fn run<T>(
        &self,
        call: impl Future<Output = mechanics_client::Result<T>>,
    ) -> Result<T> {
        self.try_run(call).map_err(Failure::from)
    }

    /// [`Api::run`] with the client's own error, for a caller that handles some kinds.
    pub(crate) fn try_run<T>(
        &self,
        call: impl Future<Output = mechanics_client::Result<T>>,
    ) -> mechanics_client::Result<T> {
        self.runtime.block_on(call)
    }

    /// Prints the answer verbatim with `--json`, else `people(answer)`.
    pub(crate) fn print<T>(
        &self,
        answer: &Answer<T>,
        people: impl FnOnce(&Answer<T>) -> Result<String>,
    ) -> Result<()> {
        let text = if self.json {
            let mut text = answer.text.trim_end().to_owned();
            text.push('\n');
            text
        } else {
            people(answer)?
        };
        out(&text);
        Ok(())
    }
}

pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Runs `mechanics worker ...`.
pub fn worker(args: &ClientArgs, command: &WorkerCommand) -> Result<()> {
    // Bad input is reported before anything is sent, even when no server is running.
    let input = match command {
        WorkerCommand::Add { file } => Some(load_worker(file)?),
        _ => None,
    };
    if let WorkerCommand::Test(_) = command {
        return Err(Failure::usage(
            "worker test runs locally: call worker_test::run".to_owned(),
        ));
    }
    let api = Api::new(args)?;
    match command {
        WorkerCommand::Test(_) => Ok(()),
        WorkerCommand::Add { .. } => {
            let input = input.expect("read above");
            let answer = api
                .run(api.client().add_worker(&input))
                .map_err(|failure| {
                    // What only the server can check (a webhook trigger's source is registered) is
                    // bad input all the same: exit 2, as for a spec refused here.
                    if failure.message.starts_with("invalid worker: ") {
                        Failure::usage(failure.message)
                    } else {
                        failure
                    }
                })?;
            api.print(&answer, |answer| {
                let view: WorkerView = answer.parse()?;
                let verb = if view.worker.revision == 1 {
                    "added"
                } else {
                    "updated"
                };
                Ok(format!(
                    "worker {} {verb} (revision {})\n",
                    view.worker.spec.name, view.worker.revision
                ))
            })
        }
        WorkerCommand::List => {
            let answer = api.run(api.client().list_workers())?;
            api.print(&answer, |answer| {
                let list: WorkerList = answer.parse()?;
                if list.workers.is_empty() {
                    return Ok(
                        "no workers yet: add one with `mechanics worker add -f worker.yml`\n"
                            .to_owned(),
                    );
                }
                let rows = list
                    .workers
                    .iter()
                    .map(|view| {
                        let w = &view.worker;
                        vec![
                            w.spec.name.clone(),
                            w.spec.kind.as_str().to_owned(),
                            target(&w.spec),
                            triggers(&w.spec),
                            w.revision.to_string(),
                            age(w.updated_at),
                        ]
                    })
                    .collect();
                Ok(table(
                    &["NAME", "KIND", "TARGET", "TRIGGERS", "REVISION", "UPDATED"],
                    rows,
                ))
            })
        }
        WorkerCommand::Show { name } => {
            let answer = api.run(api.client().get_worker(name))?;
            api.print(&answer, |answer| {
                let view: WorkerView = answer.parse()?;
                let w = &view.worker;
                let mut text = format!(
                    "name:      {}\nkind:      {}\ntarget:    {}\ntriggers:  {}\nrevision:  {}\n\
                     created:   {}\nupdated:   {}\n",
                    w.spec.name,
                    w.spec.kind.as_str(),
                    target(&w.spec),
                    triggers(&w.spec),
                    w.revision,
                    age(w.created_at),
                    age(w.updated_at),
                );
                text.push_str(if w.paused {
                    "paused:    yes (tasks wait; cron fires are skipped)\n"
                } else {
                    "paused:    no\n"
                });
                if !view.next_cron_fires.is_empty() {
                    text.push_str(&format!(
                        "next cron: {}{}\n",
                        view.next_cron_fires.join(", "),
                        if w.paused {
                            " (skipped while paused)"
                        } else {
                            ""
                        }
                    ));
                }
                if let Some(source) = &w.module_source {
                    text.push_str(&format!(
                        "module:    {} bytes, {} lines\n",
                        source.len(),
                        source.lines().count()
                    ));
                }
                let spec = serde_json::to_string_pretty(&w.spec).unwrap_or_default();
                text.push_str(&format!("spec:\n{}\n", indent(&spec)));
                Ok(text)
            })
        }
        WorkerCommand::Pause { name } | WorkerCommand::Resume { name } => {
            let pause = matches!(command, WorkerCommand::Pause { .. });
            let answer = api.run(api.client().set_worker_paused(name, pause))?;
            api.print(&answer, |answer| {
                let view: WorkerView = answer.parse()?;
                Ok(if view.worker.paused {
                    format!(
                        "worker {} paused: its tasks wait until `mechanics worker resume {}`\n",
                        view.worker.spec.name, view.worker.spec.name
                    )
                } else {
                    format!("worker {} resumed\n", view.worker.spec.name)
                })
            })
        }
        WorkerCommand::Rm { name, force } => {
            api.run(api.client().remove_worker(name, *force))?;
            if !api.json {
                out(&format!("worker {name} removed\n"));
            }
            Ok(())
        }
    }
}

/// Reads the YAML spec at `path` (`what` names its fields for an empty file) and checks it with
/// `validate`; errors name the file and the field.
pub(crate) fn load_spec<T: serde::de::DeserializeOwned, E: std::fmt::Display>(
    path: &Path,
    what: &str,
    validate: impl FnOnce(&T) -> std::result::Result<(), E>,
) -> Result<T> {
    let shown = path.display();
    // Bounded, and never blocking on a FIFO or reading a device forever.
    let text = mechanics_server::files::read_text(path, MAX_SPEC_FILE_BYTES)
        .map_err(|err| Failure::usage(err.to_string()))?;
    if text.trim().is_empty() {
        return Err(Failure::usage(format!("{shown} is empty: write a {what}")));
    }
    let spec: T = serde_saphyr::from_str(&text).map_err(|err| {
        let message = mechanics_server::config::yaml_message(&err, &text);
        Failure::usage(format!("{shown}: {message}"))
    })?;
    validate(&spec).map_err(|err| Failure::usage(format!("{shown}: {err}")))?;
    Ok(spec)
}

/// Reads a worker file: the YAML spec, checked, with the js module's source.
pub fn load_worker(path: &Path) -> Result<WorkerInput> {
    let shown = path.display();
    let spec: WorkerSpec = load_spec(path, "worker spec (name, kind, ...)", WorkerSpec::validate)?;
    // A schedule or time zone the server would refuse is bad input found here, without a request.
    mechanics_server::cron::schedules(&spec)
        .map_err(|err| Failure::usage(format!("{shown}: {err}")))?;
    let module_source = match (spec.kind, &spec.module) {
        (WorkerKind::Js, Some(module)) => {
            crate::serve::validate_js(spec.config.as_ref(), spec.limits.as_ref())
                .map_err(|err| Failure::usage(format!("{shown}: {err}")))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let module_path = dir.join(module);
            // The server refuses a module past the limit anyway; stopping at it here keeps
            // `module: /dev/zero` from reading forever.
            let source = mechanics_server::files::read_text(&module_path, MAX_MODULE_BYTES)
                .map_err(|err| Failure::usage(format!("{shown}: module: {err}")))?;
            // A TypeScript syntax error is bad input too: found here, it needs no server. (The
            // server transpiles again: what it stores is its own work.)
            crate::serve::transpile_module(&source, spec.module_name().unwrap_or(module))
                .map_err(|err| Failure::usage(format!("{shown}: module: {err}")))?;
            Some(source)
        }
        _ => None,
    };
    Ok(WorkerInput {
        spec,
        module_source,
    })
}

/// Runs `mechanics task ...`.
pub fn task(args: &ClientArgs, command: &TaskCommand) -> Result<()> {
    match command {
        TaskCommand::Submit {
            worker,
            payload,
            idempotency_key,
            wait,
            timeout,
        } => {
            let payload: Value = serde_json::from_str(payload)
                .map_err(|err| Failure::usage(format!("--payload is not valid JSON: {err}")))?;
            let timeout = timeout
                .as_deref()
                .map(|text| {
                    HumanDuration::parse(text)
                        .map(|d| d.0)
                        .map_err(|err| Failure::usage(format!("--timeout: {err}")))
                })
                .transpose()?;
            let api = Api::new(args)?;
            let submit = SubmitTask {
                worker: worker.clone(),
                payload,
                idempotency_key: idempotency_key.clone(),
            };
            let answer = api.run(api.client().submit_task(&submit))?;
            let submitted: Submitted = answer.parse()?;
            if !*wait {
                return api.print(&answer, |_| {
                    Ok(if submitted.created {
                        format!("task {} submitted ({})\n", submitted.id, submitted.state)
                    } else {
                        format!(
                            "task {} already exists for this idempotency key ({})\n",
                            submitted.id, submitted.state
                        )
                    })
                });
            }
            let (answer, shown) = wait_for(&api, submitted.id, timeout)?;
            api.print(&answer, |_| Ok(show_task(&shown)))?;
            let task = shown.task;
            match task.state {
                TaskState::Completed => Ok(()),
                state => Err(Failure::failed(format!(
                    "task {} ended {state}{}",
                    task.id,
                    task.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))),
            }
        }
        TaskCommand::List {
            state,
            worker,
            limit,
            cursor,
        } => {
            let state = state_filter::<TaskState>(state.as_deref())?;
            let filter = TaskFilter {
                state,
                worker: worker.clone(),
                limit: limit.map(page_limit).transpose()?,
                cursor: *cursor,
            };
            let api = Api::new(args)?;
            let answer = api.run(api.client().list_tasks(&filter))?;
            api.print(&answer, |answer| {
                let list: TaskList = answer.parse()?;
                if list.tasks.is_empty() {
                    return Ok("no tasks\n".to_owned());
                }
                let rows = list
                    .tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.to_string(),
                            t.worker.clone(),
                            t.trigger.to_string(),
                            t.state.to_string(),
                            t.runs.to_string(),
                            age(t.created_at),
                            age(t.updated_at),
                            t.error
                                .as_deref()
                                .map(|e| shorten(e, 60))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                let mut text = table(
                    &[
                        "ID", "WORKER", "TRIGGER", "STATE", "ATTEMPT", "CREATED", "UPDATED",
                        "ERROR",
                    ],
                    rows,
                );
                if let Some(next) = list.next_cursor {
                    text.push_str(&format!("more: pass --cursor {next}\n"));
                }
                Ok(text)
            })
        }
        TaskCommand::Show { id } => {
            let api = Api::new(args)?;
            let answer = api.run(api.client().get_task(*id))?;
            api.print(&answer, |answer| Ok(show_task(&answer.parse()?)))
        }
        TaskCommand::Retry { id, wait } => {
            let api = Api::new(args)?;
            let answer = api.run(api.client().retry_task(*id))?;
            if *wait && !api.json {
                return watch(&api, *id);
            }
            api.print(&answer, |answer| {
                let task: Task = answer.parse()?;
                Ok(format!("task {} is {}\n", task.id, task.state))
            })?;
            if *wait {
                return watch(&api, *id);
            }
            Ok(())
        }
        TaskCommand::Cancel { id } => {
            let api = Api::new(args)?;
            let answer = api.run(api.client().cancel_task(*id))?;
            api.print(&answer, |answer| {
                let task: Task = answer.parse()?;
                Ok(format!("task {} is {}\n", task.id, task.state))
            })
        }
        TaskCommand::Watch { id } => {
            let api = Api::new(args)?;
            watch(&api, *id)
        }
    }
}

/// Follows task `id` until it ends, printing a line (or with `--json`, the task) whenever its
/// state or attempt changes; the exit status says how it ended.
fn watch(api: &Api, id: i64) -> Result<()> {
    let mut seen: Option<(TaskState, u32)> = None;
    let mut delay = Duration::from_millis(25);
    loop {
        let answer = api.run(api.client().get_task(id))?;
        let shown = answer.parse()?;
        let task = &shown.task;
        if seen != Some((task.state, task.runs)) {
            seen = Some((task.state, task.runs));
            delay = Duration::from_millis(25);
            let line = if api.json {
                format!("{}\n", serde_json::to_string(&task).unwrap_or_default())
            } else {
                let attempt = if task.runs > 0 {
                    format!(" (attempt {})", task.runs)
                } else {
                    String::new()
                };
                let error = task
                    .error
                    .as_deref()
                    .map(|e| format!(": {}", shorten(e, 200)))
                    .unwrap_or_default();
                format!(
                    "{} task {} {}{attempt}{error}\n",
                    time_of_day(now_ms()),
                    task.id,
                    task.state
                )
            };
            out(&line);
        }
        if task.state.is_end() {
            return match task.state {
                TaskState::Completed => Ok(()),
                state => Err(Failure::failed(format!("task {id} ended {state}"))),
            };
        }
        std::thread::sleep(delay);
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}

/// Polls the task until it ends (or `timeout` passes), with a short backoff.
fn wait_for(
    api: &Api,
    id: i64,
    timeout: Option<Duration>,
) -> Result<(Answer<TaskDetail>, TaskDetail)> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(25);
    loop {
        let answer = api.run(api.client().get_task(id))?;
        let shown = answer.parse()?;
        let task = &shown.task;
        if task.state.is_end() {
            return Ok((answer, shown));
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            return Err(Failure::failed(format!(
                "task {id} is still {} after {}; follow it with `mechanics task show {id}`",
                task.state,
                HumanDuration(limit)
            )));
        }
        let mut sleep = delay;
        if let Some(limit) = timeout {
            sleep = sleep.min(limit.saturating_sub(started.elapsed()));
        }
        std::thread::sleep(sleep);
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}

/// Runs `mechanics node list`.
pub fn node_list(args: &ClientArgs) -> Result<()> {
    let api = Api::new(args)?;
    let answer = api.run(api.client().list_nodes())?;
    api.print(&answer, nodes_table)
}

/// Runs `mechanics node reset NAME`.
pub fn node_reset(args: &ClientArgs, name: &str) -> Result<()> {
    let api = Api::new(args)?;
    // Read first, to tell people when there was nothing to re-arm (the reset itself is
    // harmless then, and still answers 404 for a name that is no node).
    let before = api.run(api.client().list_nodes())?.parse()?;
    let was_closed = before
        .nodes
        .iter()
        .any(|node| node.name == name && node.breaker == "closed");
    let answer = api.run(api.client().reset_node(name))?;
    api.print(&answer, |answer| {
        let said = if was_closed {
            format!("the crash-loop breaker of {name} was closed already: nothing to re-arm\n")
        } else {
            format!("the crash-loop breaker of {name} is re-armed\n")
        };
        Ok(format!("{said}{}", nodes_table(answer)?))
    })
}

/// Runs `mechanics instance list`.
pub fn instance_list(args: &ClientArgs) -> Result<()> {
    let api = Api::new(args)?;
    let answer = api.run(api.client().list_instances())?;
    api.print(&answer, instances_table)
}

fn instances_table(answer: &Answer<InstanceList>) -> Result<String> {
    let list: InstanceList = answer.parse()?;
    if list.instances.is_empty() {
        return Ok("no instances\n".to_owned());
    }
    let rows = list
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.address.clone(),
                i.version.clone(),
                age(i.started_at),
                age(i.last_seen),
            ]
        })
        .collect();
    Ok(table(
        &["ID", "ADDRESS", "VERSION", "STARTED", "LAST_SEEN"],
        rows,
    ))
}

/// One line per node short of a resource, under the table: why its launches or health checks
/// fail, and that this is not held against it.
fn shortages(list: &NodeList) -> String {
    list.nodes
        .iter()
        .filter_map(|n| {
            let what = n.resource_exhaustion.as_deref()?;
            Some(format!(
                "{}: {what}; not counted as a death, retried shortly\n",
                n.name
            ))
        })
        .collect()
}

fn nodes_table(answer: &Answer<NodeList>) -> Result<String> {
    let list: NodeList = answer.parse()?;
    if list.nodes.is_empty() {
        return Ok("no nodes\n".to_owned());
    }
    let dash = || "-".to_owned();
    let rows = list
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.kind.as_str().to_owned(),
                n.url
                    .clone()
                    .or_else(|| n.address.clone())
                    .unwrap_or_else(dash),
                n.state.clone(),
                n.breaker.clone(),
                n.image.clone().unwrap_or_else(dash),
                n.container_id.clone().unwrap_or_else(dash),
                n.in_flight.to_string(),
                n.capacity.map_or_else(dash, |c| c.to_string()),
                n.jobs.to_string(),
                n.p50_ms.map_or_else(dash, |ms| format!("{ms:.1}ms")),
                n.deaths.to_string(),
                n.last_error
                    .as_deref()
                    .or(n.last_exit.as_deref())
                    .map(|e| shorten(e, 60))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "KIND",
            "URL",
            "STATE",
            "BREAKER",
            "IMAGE",
            "CONTAINER",
            "IN_FLIGHT",
            "CAPACITY",
            "JOBS",
            "P50",
            "DEATHS",
            "LAST_ERROR",
        ],
        rows,
    ) + &shortages(&list))
}

fn show_task(shown: &TaskDetail) -> String {
    let task = &shown.task;
    // What ran, as people count it (the one running now included): a claim re-queued for a
    // rate limit or a busy executor is no attempt.
    let attempts = task.runs;
    let revision = shown
        .attempts
        .last()
        .map(|a| format!(" (ran revision {})", a.worker_revision))
        .unwrap_or_default();
    let mut text = format!(
        "id:        {}\nworker:    {}{revision}\nstate:     {}\nattempts:  {attempts} ({} counted toward retries)\n\
         created:   {}\nupdated:   {}\n",
        task.id,
        task.worker,
        task.state,
        task.tries,
        timestamp(task.created_at),
        timestamp(task.updated_at),
    );
    if task.state == TaskState::Pending && task.next_run_at > now_ms() {
        text.push_str(&format!("next run:  {}\n", until(task.next_run_at)));
    }
    if let Some(key) = &task.idempotency_key {
        text.push_str(&format!("idempotency key: {key}\n"));
    }
    if let Some(event) = task.event_id {
        text.push_str(&format!("event:     {event}\n"));
    }
    text.push_str(&format!("trigger:   {}\n", task.trigger));
    if !task.payload.is_null() {
        let pretty = serde_json::to_string_pretty(&task.payload).unwrap_or_default();
        text.push_str(&format!("payload:\n{}\n", indent(&pretty)));
    }
    if let Some(error) = &task.error {
        text.push_str(&format!("error:     {error}\n"));
    }
    if let Some(result) = &task.result {
        let pretty = serde_json::to_string_pretty(result).unwrap_or_default();
        text.push_str(&format!("result:\n{}\n", indent(&pretty)));
    }
    text.push_str(&attempt_table(&shown.attempts));
    text.push_str(&console_lines(&shown.console, &shown.attempts));
    text
}

/// The `attempts:` section of `task show`: one row per attempt that ran, numbered as people
/// count them (re-queues skipped), with its start, duration, node, outcome and error.
fn attempt_table(attempts: &[TaskAttempt]) -> String {
    if attempts.is_empty() {
        return String::new();
    }
    let rows = attempts
        .iter()
        .enumerate()
        .map(|(index, attempt)| {
            vec![
                (index + 1).to_string(),
                rfc3339(attempt.started_at),
                duration(attempt.ended_at.saturating_sub(attempt.started_at)),
                attempt.node.clone().unwrap_or_else(|| "-".to_owned()),
                attempt.worker_revision.to_string(),
                attempt.outcome.to_string(),
                attempt
                    .error
                    .as_deref()
                    .map(|e| shorten(e, 200))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let table = table(
        &[
            "#", "STARTED", "DURATION", "NODE", "REVISION", "OUTCOME", "ERROR",
        ],
        rows,
    );
    format!("attempts:\n{}", indent(table.trim_end()) + "\n")
}

/// Unix ms as an RFC 3339 UTC time with milliseconds, `2026-12-04T14:51:02.123Z`, as the API
/// writes attempt times.
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    mechanics_proto::domain::time::rfc3339(unix_ms).unwrap_or_else(|| unix_ms.to_string())
}

/// A time as `task show` prints it: RFC 3339, and how long ago.
fn timestamp(unix_ms: i64) -> String {
    format!("{} ({})", rfc3339(unix_ms), age(unix_ms))
}

/// A duration in ms as people read it: `850ms`, `2.5s`, `3m 4s`.
fn duration(ms: i64) -> String {
    match ms {
        ..1000 => format!("{}ms", ms.max(0)),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m {}s", ms / 60_000, ms / 1000 % 60),
    }
}

/// The `console:` section of `task show`: one `[attempt N] HH:MM:SS.mmmZ LEVEL message` per
/// line (UTC, levels padded so messages align, a message's further lines indented under its
/// first), N numbered as the attempt table numbers it; nothing when no attempt wrote any.
fn console_lines(console: &[AttemptConsoleLine], attempts: &[TaskAttempt]) -> String {
    if console.is_empty() {
        return String::new();
    }
    let mut text = "console:\n".to_owned();
    for entry in console {
        let line = &entry.line;
        let number = TaskAttempt::number(attempts, entry.attempt);
        let head = format!(
            "  [attempt {}] {} {:<5} ",
            number,
            time_of_day(line.ts),
            line.level.as_str()
        );
        let mut rest = line.message.lines();
        text.push_str(&head);
        text.push_str(rest.next().unwrap_or_default());
        text.push('\n');
        for more in rest {
            text.push_str(&" ".repeat(head.chars().count()));
            text.push_str(more);
            text.push('\n');
        }
    }
    text
}

/// Unix ms as the UTC time of day, `HH:MM:SS.mmmZ`.
fn time_of_day(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// What the worker runs: the module, URL or command.
fn target(spec: &WorkerSpec) -> String {
    match spec.kind {
        WorkerKind::Js => spec.module.clone().unwrap_or_default(),
        WorkerKind::Http => spec.url.clone().unwrap_or_default(),
        WorkerKind::Process => spec
            .command
            .as_ref()
            .map(|c| c.join(" "))
            .unwrap_or_default(),
        WorkerKind::Container => spec.image.clone().unwrap_or_default(),
    }
}

fn triggers(spec: &WorkerSpec) -> String {
    use mechanics_proto::domain::Trigger;
    let names: Vec<String> = spec
        .triggers
        .iter()
        .filter_map(|t| match t {
            Trigger::Api(true) => Some("api".to_owned()),
            Trigger::Api(false) => None,
            Trigger::Cron(cron) => Some(format!("cron {}", cron.schedule())),
            Trigger::Webhook(hook) => Some(format!("webhook {}", hook.source)),
        })
        .collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    table_at_least(headers, rows, &[])
}

/// [`table`], each column at least as wide as `min_widths` says: a table printed in parts
/// (`logs --follow`) lines up across the parts when its columns have fixed widths.
pub(crate) fn table_at_least(
    headers: &[&str],
    rows: Vec<Vec<String>>,
    min_widths: &[usize],
) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.chars()
                .count()
                .max(min_widths.get(i).copied().unwrap_or(0))
        })
        .collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub(crate) fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && !text.contains('\n') {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`.
pub(crate) fn age(unix_ms: i64) -> String {
    format!("{} ago", span(now_ms().saturating_sub(unix_ms)))
}

/// `in 3s`.
pub(crate) fn until(unix_ms: i64) -> String {
    format!("in {}", span(unix_ms.saturating_sub(now_ms())))
}

fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_short_of_descriptors_gets_a_line_under_the_table() {
        let node = |name: &str, short: Option<&str>| mechanics_proto::api::NodeView {
            name: name.to_owned(),
            state: "running".to_owned(),
            breaker: "closed".to_owned(),
            address: None,
            in_flight: 0,
            jobs: 0,
            starts: 1,
            deaths: 0,
            restarts: 0,
            last_exit: None,
            resource_exhaustion: short.map(str::to_owned),
            kind: mechanics_proto::api::NodeKind::Local,
            url: None,
            capacity: Some(2),
            p50_ms: None,
            last_error: None,
            image: None,
            container_id: None,
        };
        let list = NodeList {
            nodes: vec![
                node("node-1", None),
                node(
                    "node-2",
                    Some("the process is out of file descriptors (EMFILE)"),
                ),
            ],
        };
        assert_eq!(
            shortages(&list),
            "node-2: the process is out of file descriptors (EMFILE); not counted as a death, \
             retried shortly\n"
        );
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "STATE", "ERROR"],
            vec![
                vec!["1".into(), "completed".into(), String::new()],
                vec!["100".into(), "dead".into(), "refused".into()],
            ],
        );
        assert_eq!(
            text,
            "ID   STATE      ERROR\n1    completed\n100  dead       refused\n"
        );
    }

    #[test]
    fn console_lines_show_attempt_time_and_level_and_indent_further_lines() {
        use mechanics_proto::domain::{ConsoleLevel, ConsoleLine};
        let entry = |attempt, level, ts, message: &str| AttemptConsoleLine {
            attempt,
            line: ConsoleLine {
                level,
                ts,
                message: message.into(),
            },
        };
        assert_eq!(console_lines(&[], &[]), "");
        let text = console_lines(
            &[
                entry(1, ConsoleLevel::Log, 1_769_860_800_250, "starting"),
                entry(1, ConsoleLevel::Error, 1_769_860_801_007, "boom\n  at main"),
                entry(2, ConsoleLevel::Warn, 1_769_864_400_000, "again"),
            ],
            &[],
        );
        assert_eq!(
            text,
            "console:\n\
             \x20 [attempt 1] 12:00:00.250Z log   starting\n\
             \x20 [attempt 1] 12:00:01.007Z error boom\n\
             \x20                                   at main\n\
             \x20 [attempt 2] 13:00:00.000Z warn  again\n"
        );
    }

    #[test]
    fn attempts_are_numbered_as_they_ran_with_times_as_times() {
        use mechanics_proto::domain::{AttemptOutcome, ConsoleLevel, ConsoleLine};
        let attempt = |claim, started_at, ended_at, outcome, error: Option<&str>| TaskAttempt {
            claim,
            started_at,
            ended_at,
            node: Some("node-0".into()),
            worker_revision: 2,
            outcome,
            error: error.map(str::to_owned),
        };
        // Claim 2 was a rate-limit re-queue: it did not run, so claim 3 is the second attempt.
        let attempts = [
            attempt(
                1,
                1_769_860_800_250,
                1_769_860_801_500,
                AttemptOutcome::TransportError,
                Some("connection refused"),
            ),
            attempt(
                3,
                1_769_860_810_000,
                1_769_860_810_042,
                AttemptOutcome::Completed,
                None,
            ),
        ];
        assert_eq!(
            attempt_table(&attempts),
            "attempts:\n\
             \x20 #  STARTED                   DURATION  NODE    REVISION  OUTCOME          ERROR\n\
             \x20 1  2026-01-31T12:00:00.250Z  1.2s      node-0  2         transport_error  connection refused\n\
             \x20 2  2026-01-31T12:00:10.000Z  42ms      node-0  2         completed\n"
        );
        assert_eq!(attempt_table(&[]), "");
        let line = AttemptConsoleLine {
            attempt: 3,
            line: ConsoleLine {
                level: ConsoleLevel::Log,
                ts: 1_769_860_810_001,
                message: "ok".into(),
            },
        };
        assert_eq!(
            console_lines(&[line], &attempts),
            "console:\n  [attempt 2] 12:00:10.001Z log   ok\n"
        );
        assert_eq!(duration(61_500), "1m 1s");
    }

    #[test]
    fn spans_are_short() {
        assert_eq!(span(999), "0s");
        assert_eq!(span(61_000), "1m");
        assert_eq!(span(7_200_000), "2h");
        assert_eq!(span(3 * 86_400_000), "3d");
    }
}
