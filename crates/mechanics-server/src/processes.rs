//! Process workers: local programs the server launches, supervises with `mechanics-runtime`, and
//! calls over the http worker contract at `http://127.0.0.1:$MECHANICS_WORKER_PORT`.
//!
//! [`ProcessWorkers::reconcile`] makes the running children match the registry: it starts
//! workers that are new or whose revision changed, and stops the ones that were removed. The
//! server calls it when the registry changes, so an idle server does not poll.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mechanics_proto::api::{NodeKind, NodeView};
use mechanics_proto::domain::{RestartPolicyName, Worker, WorkerKind};
use mechanics_runtime::{
    ExponentialBackoff, LastExit, NodeSnapshot, NodeState, ProcessNode, RestartPolicy, Supervisor,
};

/// Environment variable that tells a process worker its port.
pub const WORKER_PORT_ENV: &str = "MECHANICS_WORKER_PORT";

#[derive(Debug, Clone, Copy)]
struct Running {
    revision: i64,
    port: u16,
}

/// The process workers' children.
pub struct ProcessWorkers {
    supervisor: Supervisor,
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for ProcessWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessWorkers").finish_non_exhaustive()
    }
}

impl ProcessWorkers {
    /// Children run under `supervisor`.
    pub fn new(supervisor: Supervisor) -> Self {
        Self {
            supervisor,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The base URL of process worker `name` while its program runs; otherwise why it cannot
    /// take a task, with how the program last ended and the last lines it wrote to stderr
    /// (bounded), which usually say why a crash-looping program keeps dying.
    pub fn target(&self, name: &str) -> Result<String, String> {
        let Some(port) = self.lock().get(name).map(|r| r.port) else {
            return Err("the process worker is not running".to_owned());
        };
        match self.supervisor.snapshot(name) {
            Some(snapshot) if snapshot.state == NodeState::Running => {
                Ok(format!("http://127.0.0.1:{port}"))
            }
            Some(snapshot) => Err(not_running(&snapshot)),
            None => Err("the process worker is not running".to_owned()),
        }
    }

    /// `message` (a call to process worker `name` that failed in transport) with how its program
    /// last ended and its last stderr lines, when it ended before: a program that dies right
    /// after it starts is seen running and refusing.
    pub fn explain(&self, name: &str, message: String) -> String {
        match self
            .supervisor
            .snapshot(name)
            .and_then(|snapshot| snapshot.last_exit)
        {
            Some(exit) => format!("{message}{}", last_exit(&exit)),
            None => message,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts, restarts and stops children so that exactly the process workers of `workers` run,
    /// each at its current revision.
    pub async fn reconcile(&self, workers: &[std::sync::Arc<Worker>]) {
        self.retire(workers).await;
        for worker in workers
            .iter()
            .filter(|w| w.spec.kind == WorkerKind::Process)
        {
            let name = worker.spec.name.as_str();
            if self.lock().contains_key(name) {
                continue;
            }
            if let Err(message) = self.start(worker) {
                tracing::error!(worker = %name, error = %message, "cannot start the process worker");
            }
        }
    }

    /// Stops the children no process worker of `workers` at its current revision wants: a
    /// worker removed, changed, or now of another kind. Process and container workers share the
    /// supervisor's names, so both owners retire before either starts (see `reconcile_loop`):
    /// a worker whose kind changed is then free to start under its new owner.
    pub async fn retire(&self, workers: &[std::sync::Arc<Worker>]) {
        let wanted: HashMap<&str, &Worker> = workers
            .iter()
            .filter(|w| w.spec.kind == WorkerKind::Process)
            .map(|w| (w.spec.name.as_str(), w.as_ref()))
            .collect();
        let stale: Vec<String> = self
            .lock()
            .iter()
            .filter(|(name, running)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|w| w.revision != running.revision)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.lock().remove(&name);
            if let Err(err) = self.supervisor.stop(&name).await {
                tracing::warn!(worker = %name, error = %err, "stopping a process worker failed");
            }
        }
    }

    fn start(&self, worker: &Worker) -> Result<(), String> {
        let Some((program, args)) = worker
            .spec
            .command
            .as_deref()
            .and_then(<[String]>::split_first)
        else {
            return Err("the worker has no command".to_owned());
        };
        let port = free_port()?;
        let node = ProcessNode::new(program)
            .args(args)
            .env(WORKER_PORT_ENV, port.to_string())
            .stop_timeout(Duration::from_secs(5));
        let policy = match &worker.spec.restart {
            None => RestartPolicy::default(),
            Some(restart) => match restart.policy {
                RestartPolicyName::Never => RestartPolicy::Never,
                RestartPolicyName::Always => RestartPolicy::Always {
                    delay: Duration::from_millis(restart.initial_backoff_ms),
                },
                RestartPolicyName::OnFailure => RestartPolicy::OnFailure(ExponentialBackoff::new(
                    Duration::from_millis(restart.initial_backoff_ms),
                    Duration::from_millis(restart.max_backoff_ms),
                )),
            },
        };
        self.supervisor
            .add_with_policy(&worker.spec.name, node, policy)
            .map_err(|err| err.to_string())?;
        self.lock().insert(
            worker.spec.name.clone(),
            Running {
                revision: worker.revision,
                port,
            },
        );
        Ok(())
    }

    /// The children, for `GET /nodes` (the supervisor also runs the container workers).
    pub fn views(&self) -> Vec<NodeView> {
        let running = self.lock().clone();
        self.supervisor
            .snapshots()
            .into_iter()
            .filter(|s| running.contains_key(&s.name))
            .map(|s| NodeView {
                // Only a running program listens: a stopped or crash-looping one's port is not
                // where anything answers.
                address: running
                    .get(&s.name)
                    .filter(|_| s.state == NodeState::Running)
                    .map(|r| format!("127.0.0.1:{}", r.port)),
                state: s.state.as_str().to_owned(),
                breaker: s.breaker.as_str().to_owned(),
                in_flight: 0,
                jobs: 0,
                starts: s.starts,
                deaths: s.deaths,
                restarts: s.restarts,
                last_exit: s.last_exit.map(|e| e.status),
                resource_exhaustion: s.resource_exhaustion.map(|r| r.to_string()),
                kind: NodeKind::Process,
                url: None,
                capacity: None,
                p50_ms: None,
                last_error: None,
                image: None,
                container_id: None,
                name: s.name,
            })
            .collect()
    }

    /// Re-arms the breaker of child `name`; `false` if there is none.
    pub fn reset(&self, name: &str) -> bool {
        self.lock().contains_key(name) && self.supervisor.reset_breaker(name).is_ok()
    }

    /// Stops every child, and every container worker's node (the supervisor is shared; the
    /// containers themselves keep running).
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }
}

/// Lines of a program's stderr quoted in a task's error, and the characters kept of each.
const STDERR_LINES_QUOTED: usize = 5;
const STDERR_LINE_CHARS: usize = 300;

/// Why a process worker whose program is not running cannot take a task: its state, how the
/// program last ended, and the end of what it wrote to stderr.
fn not_running(snapshot: &NodeSnapshot) -> String {
    let mut message = format!(
        "the process worker is not running ({}",
        snapshot.state.as_str()
    );
    if snapshot.state == NodeState::Tripped {
        message.push_str(": its program keeps dying, restarts are paused");
    }
    message.push(')');
    if let Some(exit) = &snapshot.last_exit {
        message.push_str(&last_exit(exit));
    }
    message
}

/// `; its program last ended: <status>; its last stderr lines: a | b`, bounded.
fn last_exit(exit: &LastExit) -> String {
    let mut text = format!("; its program last ended: {}", exit.status);
    let skip = exit.stderr_tail.len().saturating_sub(STDERR_LINES_QUOTED);
    let lines: Vec<String> = exit.stderr_tail[skip..]
        .iter()
        .map(|line| line.chars().take(STDERR_LINE_CHARS).collect())
        .collect();
    if !lines.is_empty() {
        text.push_str("; its last stderr lines: ");
        text.push_str(&lines.join(" | "));
    }
    text
}

/// A port that was free a moment ago. The child binds it right after; another process could take
/// it in between, in which case the child fails to bind, dies, and is restarted by its policy.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|err| format!("no free port for the process worker: {err}"))
}
