//! A node that is a child process.
//!
//! Each instance is one child in a process group of its own, so stopping it reaches everything
//! it started: SIGTERM to the group, SIGKILL after the stop timeout, and SIGKILL to whatever of
//! the group is left once the child has exited. The child is always waited for (no zombies), and
//! its pipes are closed with the instance (no leaked descriptors; Rust opens every descriptor
//! close-on-exec, so children inherit none of ours).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};

use crate::{
    HealthStatus, NodeFailure, NodeRunner, RuntimeError, ShutdownSignal, resource_exhaustion,
};

/// Lines of stderr kept for [`NodeFailure::stderr_tail`].
const STDERR_TAIL_LINES: usize = 20;
/// Longer output lines are cut, so a child printing without newlines cannot grow our memory.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// How long output still in the pipes may take to drain after the child's group is gone. Only a
/// descendant that left the group can hold a pipe open that long.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// A [`NodeRunner`] that runs a program as a child process.
///
/// Its stdout and stderr lines are logged through `tracing` (target `mechanics_runtime::child`,
/// field `stream`) inside the supervisor's `node` span, which names the node. With
/// [`ready_timeout`](Self::ready_timeout) the child must print `READY <addr>` on stdout in time;
/// the address is published on [`address`](Self::address) for each instance and cleared when
/// the instance ends.
#[derive(Debug)]
pub struct ProcessNode {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    clear_env: bool,
    current_dir: Option<PathBuf>,
    ready_timeout: Option<Duration>,
    health_url: Option<String>,
    stop_timeout: Duration,
    address: watch::Sender<Option<String>>,
    /// The node name its JSON log lines on stderr are relayed under, when they are.
    relay_logs_as: Option<String>,
}

impl ProcessNode {
    /// Runs `program` (looked up in `PATH` if it has no slash), with the parent's environment,
    /// no stdin, a 5 s stop timeout, no readiness handshake and no health URL.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        ProcessNode {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            clear_env: false,
            current_dir: None,
            ready_timeout: None,
            health_url: None,
            stop_timeout: Duration::from_secs(5),
            address: watch::Sender::new(None),
            relay_logs_as: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts the child with only the variables given with [`env`](Self::env), not the parent's
    /// environment, which may hold secrets the child has no business seeing.
    pub fn clear_env(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Requires the child to print a line `READY <addr>` on stdout within `timeout`; an
    /// instance that does not is killed and fails.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// Health-checks the child with `GET url`: a 2xx answer is healthy. `{addr}` in the URL is
    /// replaced by the announced address (until it is announced the health is unknown). Only
    /// plain `http://` URLs are supported: nodes are reached on loopback.
    pub fn health_url(mut self, url: &str) -> Result<Self, RuntimeError> {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if authority.is_none_or(str::is_empty) {
            return Err(RuntimeError::InvalidSetting(format!(
                "health URL {url:?} is not http://HOST[:PORT]/PATH"
            )));
        }
        self.health_url = Some(url.to_owned());
        Ok(self)
    }

    /// How long the child has after SIGTERM before its group gets SIGKILL (default 5 s). Keep it
    /// below the supervisor's shutdown timeout, or the supervisor kills first.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Re-emits each stderr line the child writes as a `tracing` JSON object (its own
    /// `tracing-subscriber` with the JSON format) as an event of this process: the child's level,
    /// target and fields, plus `node = name`, so that every log format of this process shows it
    /// once. Other lines are logged as text, as without it.
    pub fn relay_json_logs(mut self, name: impl Into<String>) -> Self {
        self.relay_logs_as = Some(name.into());
        self
    }

    /// The address the current instance announced with `READY <addr>`; `None` while none is
    /// running or it has not announced yet. Changes on each restart.
    pub fn address(&self) -> watch::Receiver<Option<String>> {
        self.address.subscribe()
    }

    fn spawn(&self) -> Result<Child, NodeFailure> {
        let mut command = Command::new(&self.program);
        if self.clear_env {
            command.env_clear();
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // Only matters when the instance's future is dropped mid-run; the group guard kills
            // the rest of the group then.
            .kill_on_drop(true);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: the closure runs in the child between fork and exec and calls only
            // async-signal-safe functions (prctl, getppid, _exit).
            unsafe {
                command.pre_exec(move || {
                    // If this process is killed (even with SIGKILL, when no shutdown code runs),
                    // the kernel kills the child too instead of leaving it to run unsupervised.
                    // The signal follows the thread that spawned the child: supervisors run on
                    // runtime worker threads, which live as long as the runtime.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // The parent may have died before the prctl took effect.
                    if u32::try_from(libc::getppid()).ok() != Some(parent) {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        command.spawn().map_err(|err| {
            let status = format!("cannot start {:?}: {err}", self.program);
            match resource_exhaustion(&err) {
                // The pipes or the fork failed for want of descriptors or memory here: the
                // program is not at fault and a later launch may well succeed.
                Some(resource) => NodeFailure::launch_starved(resource, status),
                None => NodeFailure::new(status),
            }
        })
    }

    /// Waits for readiness (if required) and then for the child's exit or the stop signal.
    async fn watch_child(
        &self,
        child: &mut Child,
        group: &ProcessGroup,
        shutdown: &ShutdownSignal,
    ) -> Result<(), String> {
        if let Some(limit) = self.ready_timeout {
            let mut address = self.address.subscribe();
            tokio::select! {
                biased;
                () = shutdown.requested() => return self.terminate(child, group).await,
                status = child.wait() => {
                    return Err(format!("exited before announcing READY: {}", describe(status)));
                }
                ready = tokio::time::timeout(limit, async { address.wait_for(Option::is_some).await.map(drop) }) => {
                    if ready.is_err() {
                        self.terminate(child, group).await?;
                        return Err(format!("did not print READY <addr> within {limit:?}"));
                    }
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown.requested() => self.terminate(child, group).await,
            status = child.wait() => match status {
                Ok(status) if status.success() => Ok(()),
                other => Err(describe(other)),
            },
        }
    }

    /// SIGTERM to the group, SIGKILL after the stop timeout; returns once the child is reaped.
    async fn terminate(&self, child: &mut Child, group: &ProcessGroup) -> Result<(), String> {
        group.signal(libc::SIGTERM);
        match tokio::time::timeout(self.stop_timeout, child.wait()).await {
            Ok(status) => status.map(drop).map_err(|err| err.to_string()),
            Err(_) => {
                tracing::warn!(timeout = ?self.stop_timeout, "child ignored SIGTERM; killing its process group");
                group.signal(libc::SIGKILL);
                child.wait().await.map(drop).map_err(|err| err.to_string())
            }
        }
    }
}

impl NodeRunner for ProcessNode {
    async fn run(&self, shutdown: ShutdownSignal) -> Result<(), NodeFailure> {
        self.address.send_replace(None);
        if shutdown.is_requested() {
            return Ok(());
        }
        let mut child = self.spawn()?;
        let group = ProcessGroup::of(&child);
        tracing::info!(pid = ?child.id(), "child started");
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let child_done = Notify::new();
        let main = async {
            let result = self.watch_child(&mut child, &group, &shutdown).await;
            // The child is reaped; whatever it left in its group goes too, which also closes
            // the pipes those processes held.
            group.signal(libc::SIGKILL);
            child_done.notify_one();
            result
        };
        let readers = async {
            let here = tracing::Span::current();
            let stdout = forward_lines(stdout, "stdout", None, here.clone(), |line| {
                if let Some(addr) = line.strip_prefix("READY ") {
                    self.address.send_if_modified(|current| {
                        // Only the first announcement of an instance counts.
                        let first = current.is_none();
                        if first {
                            *current = Some(addr.trim().to_owned());
                        }
                        first
                    });
                }
            });
            let relay = self.relay_logs_as.clone();
            let tail = Arc::clone(&tail);
            // Read on a task of its own, outside the span this runs in (the supervisor's `node`
            // span): a relayed line is an event of its own with a `node` field, and inside that
            // span it would name the node again. Plain lines are logged in the span still.
            let stderr = tokio::spawn(forward_lines(stderr, "stderr", relay, here, move |line| {
                let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.to_owned());
            }));
            let stderr_reader = stderr.abort_handle();
            tokio::select! {
                _ = async { tokio::join!(stdout, stderr) } => {}
                () = async {
                    child_done.notified().await;
                    tokio::time::sleep(DRAIN_GRACE).await;
                } => {}
            }
            // A grandchild may hold the pipe open past the grace: stop reading it.
            stderr_reader.abort();
        };
        let (result, ()) = tokio::join!(main, readers);
        self.address.send_replace(None);
        result.map_err(|status| NodeFailure {
            status,
            stderr_tail: std::mem::take(
                &mut *tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            )
            .into(),
            // The child ran: however it ended, that is its own death.
            resource_exhaustion: None,
        })
    }

    async fn health_check(&self) -> HealthStatus {
        let address = self.address.borrow().clone();
        // Still starting: the readiness timeout, not the health checks, bounds that phase.
        if self.ready_timeout.is_some() && address.is_none() {
            return HealthStatus::Unknown;
        }
        let Some(template) = &self.health_url else {
            return HealthStatus::Healthy;
        };
        let url = match address {
            Some(addr) => template.replace("{addr}", &addr),
            None if template.contains("{addr}") => return HealthStatus::Unknown,
            None => template.clone(),
        };
        match http_get_status(&url).await {
            Ok(code) if (200..300).contains(&code) => HealthStatus::Healthy,
            Ok(code) => HealthStatus::Unhealthy(format!("GET {url} answered {code}")),
            Err(err) => match resource_exhaustion(&err) {
                // We could not even open a socket to ask: that says nothing about the child.
                Some(resource) => HealthStatus::Unchecked(resource),
                None => HealthStatus::Unhealthy(format!("GET {url}: {err}")),
            },
        }
    }
}

/// The child's process group. Dropping it (the instance's future was dropped mid-run) kills the
/// whole group.
struct ProcessGroup {
    pgid: Option<libc::pid_t>,
}

impl ProcessGroup {
    fn of(child: &Child) -> Self {
        // The child leads its own group (`process_group(0)`), so its pid is the group id.
        ProcessGroup {
            pgid: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions; a group that is already gone
            // yields ESRCH, which is the outcome we want anyway.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

fn describe(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("cannot wait for the child: {err}"),
    }
}

/// Logs each line of `pipe` (relayed as the node `relay` names when it is a JSON log line, else
/// as text in `span`) and hands it to `on_line` (a relayed line in its one-line text form), until
/// end of file or a read error.
async fn forward_lines(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: &'static str,
    relay: Option<String>,
    span: tracing::Span,
    mut on_line: impl FnMut(&str),
) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if let Some(relayed) = relay
            .as_deref()
            .and_then(|node| crate::relay::relay(node, text))
        {
            on_line(&relayed);
            continue;
        }
        span.in_scope(|| tracing::info!(target: "mechanics_runtime::child", stream, "{text}"));
        on_line(text);
    }
}

/// Reads one line (with its newline) into `out`, keeping at most `cap` bytes of it; returns the
/// bytes consumed, 0 at end of file.
async fn read_line_capped(
    reader: &mut (impl AsyncBufRead + Unpin),
    out: &mut Vec<u8>,
    cap: usize,
) -> io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        let (chunk, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (&buf[..=end], true),
            None => (buf, false),
        };
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let taken = chunk.len();
        reader.consume(taken);
        consumed += taken;
        if complete {
            return Ok(consumed);
        }
    }
}

/// `GET url` over HTTP/1.1; returns the status code. The caller bounds the time.
async fn http_get_status(url: &str) -> io::Result<u16> {
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported".into()))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut status_line = Vec::new();
    read_line_capped(&mut reader, &mut status_line, 256).await?;
    let status_line = String::from_utf8_lossy(&status_line);
    let mut parts = status_line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|code| code.parse().ok()),
    ) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(invalid(format!(
            "not an HTTP response: {:?}",
            status_line.trim_end()
        ))),
    }
}
