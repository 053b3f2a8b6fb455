//! The worker pool: a bounded queue, worker threads that each run one job at a time, and a
//! supervisor thread that restarts lost workers under a restart guard.
//!
//! The API is synchronous on purpose (no async runtime is required); from async code call it
//! inside `spawn_blocking`. Every call is bounded in time: `run` waits at most `enqueue_timeout`
//! for room in the queue and at most `run_timeout` in all.
//!
//! A job normally stops itself at its limits (see [`crate::job::MechanicsExecutionLimits`]). When
//! native code inside Boa does not return — a catastrophic regular expression, or an allocation
//! parked by the memory guard — the supervisor fails the job once its time limit plus
//! `abandon_grace` has passed, gives up on that thread and starts a replacement, so the caller
//! gets an answer and the pool keeps serving. Abandoned threads are counted in
//! [`MechanicsPoolStats::abandoned_workers`]: a process that sees them should be recycled.

mod config;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::JobOutput;
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

pub use config::MechanicsPoolConfig;

use crate::MechanicsError;
use crate::endpoint::{EndpointDefaults, EndpointRuntime};
use crate::job::MechanicsJob;
use worker::{Envelope, Supervisor};

/// A pool of JavaScript workers. Dropping it cancels queued jobs, gives running jobs up to
/// `shutdown_timeout` to finish and joins its threads (a thread still stuck then is left behind).
pub struct MechanicsPool {
    sender: Option<Sender<Envelope>>,
    /// Kept to cancel queued jobs on drop.
    receiver: Receiver<Envelope>,
    shared: Arc<PoolShared>,
    supervisor: Option<JoinHandle<()>>,
    config: MechanicsPoolConfig,
}

/// State shared by the pool handle, the workers and the supervisor.
#[derive(Debug)]
struct PoolShared {
    closed: AtomicBool,
    supervisor: Mutex<Supervisor>,
    jobs_completed: AtomicU64,
    jobs_failed: AtomicU64,
    /// The transport and I/O runtime of `mechanics:endpoint` calls.
    endpoints: Arc<EndpointRuntime>,
}

/// A snapshot of a pool's state, taken without blocking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MechanicsPoolStats {
    /// Jobs waiting in the queue.
    pub queue_depth: usize,
    /// The queue's capacity.
    pub queue_capacity: usize,
    /// Worker threads alive and taking jobs.
    pub worker_count: usize,
    /// Workers currently running a job.
    pub busy_workers: usize,
    /// The number of workers the pool aims for.
    pub desired_worker_count: usize,
    /// Whether the restart guard is holding back restarts.
    pub restart_blocked: bool,
    /// Restarts within the current restart window.
    pub restarts_in_window: usize,
    /// The restart window, in milliseconds.
    pub restart_window_ms: u64,
    /// The most restarts allowed within the window.
    pub max_restarts_in_window: usize,
    /// Threads given up on because a job would not stop; they may still hold memory or CPU.
    pub abandoned_workers: usize,
    /// Jobs that returned a result.
    pub jobs_completed: u64,
    /// Jobs that ran and failed.
    pub jobs_failed: u64,
    /// Whether `max_memory_mb` is enforced (the process uses [`crate::JobMemoryAllocator`]).
    pub memory_limits_enforced: bool,
}

impl MechanicsPool {
    /// Starts the pool's workers and supervisor. Fails with [`MechanicsError::RuntimePool`] for an
    /// invalid configuration or a worker that cannot start; no partly started pool is returned.
    pub fn new(config: MechanicsPoolConfig) -> Result<Self, MechanicsError> {
        config.validate()?;
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_capacity);
        let shared = Arc::new(PoolShared {
            closed: AtomicBool::new(false),
            supervisor: Mutex::new(Supervisor::new(&config)),
            jobs_completed: AtomicU64::new(0),
            jobs_failed: AtomicU64::new(0),
            endpoints: Arc::new(EndpointRuntime::new(
                config.endpoint_http_client.clone(),
                EndpointDefaults {
                    timeout: config.default_http_timeout,
                    response_max_bytes: config.default_http_response_max_bytes,
                },
            )),
        });
        let mut workers = Vec::with_capacity(config.worker_count);
        for _ in 0..config.worker_count {
            match worker::spawn(&config, receiver.clone(), shared.clone()) {
                Ok(worker) => workers.push(worker),
                Err(err) => {
                    shared.closed.store(true, Ordering::SeqCst);
                    drop(sender);
                    for worker in workers {
                        worker.join();
                    }
                    return Err(err);
                }
            }
        }
        lock(&shared.supervisor).workers = workers;
        let supervisor = worker::spawn_supervisor(&config, receiver.clone(), shared.clone())?;
        Ok(Self {
            sender: Some(sender),
            receiver,
            shared,
            supervisor: Some(supervisor),
            config,
        })
    }

    /// Runs `job`, waiting up to `enqueue_timeout` for room in the queue, and returns its result
    /// and console output. The whole call takes at most `run_timeout`.
    pub fn run(&self, job: MechanicsJob) -> JobOutput {
        self.try_run(job)
            .unwrap_or_else(JobOutput::without_console_error)
    }

    fn try_run(&self, job: MechanicsJob) -> Result<JobOutput, MechanicsError> {
        let deadline = Instant::now() + self.config.run_timeout;
        let (envelope, reply) = self.envelope(job)?;
        let sender = self.sender.as_ref().ok_or(MechanicsError::PoolClosed)?;
        let enqueue_deadline = deadline.min(Instant::now() + self.config.enqueue_timeout);
        match sender.send_deadline(envelope, enqueue_deadline) {
            Ok(()) => {}
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {
                return Err(if enqueue_deadline < deadline {
                    MechanicsError::QueueTimeout
                } else {
                    MechanicsError::RunTimeout
                });
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                return Err(MechanicsError::PoolClosed);
            }
        }
        self.await_reply(&reply, deadline)
    }

    /// Like [`run`](Self::run), but fails at once with [`MechanicsError::QueueFull`] when the queue
    /// has no room.
    pub fn run_nonblocking_enqueue(&self, job: MechanicsJob) -> JobOutput {
        self.try_run_nonblocking_enqueue(job)
            .unwrap_or_else(JobOutput::without_console_error)
    }

    fn try_run_nonblocking_enqueue(&self, job: MechanicsJob) -> Result<JobOutput, MechanicsError> {
        let deadline = Instant::now() + self.config.run_timeout;
        let (envelope, reply) = self.envelope(job)?;
        let sender = self.sender.as_ref().ok_or(MechanicsError::PoolClosed)?;
        match sender.try_send(envelope) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => return Err(MechanicsError::QueueFull),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                return Err(MechanicsError::PoolClosed);
            }
        }
        self.await_reply(&reply, deadline)
    }

    fn envelope(
        &self,
        job: MechanicsJob,
    ) -> Result<(Envelope, Receiver<JobOutput>), MechanicsError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(MechanicsError::PoolClosed);
        }
        {
            let supervisor = lock(&self.shared.supervisor);
            if supervisor.live_workers() == 0 && supervisor.restart_blocked() {
                return Err(MechanicsError::WorkerUnavailable(format!(
                    "no worker is running and the restart guard allows no more than {} restarts \
                     in {} ms",
                    self.config.max_restarts_in_window,
                    self.config.restart_window.as_millis()
                )));
            }
        }
        let limits = job
            .limits()
            .copied()
            .unwrap_or(self.config.execution_limits);
        let (reply_sender, reply) = crossbeam_channel::bounded(1);
        Ok((
            Envelope {
                job,
                limits,
                reply: reply_sender,
            },
            reply,
        ))
    }

    fn await_reply(
        &self,
        reply: &Receiver<JobOutput>,
        deadline: Instant,
    ) -> Result<JobOutput, MechanicsError> {
        match reply.recv_deadline(deadline) {
            Ok(output) => Ok(output),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(MechanicsError::RunTimeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(MechanicsError::Canceled),
        }
    }

    /// A snapshot of the pool's state. Never blocks on running jobs.
    pub fn stats(&self) -> MechanicsPoolStats {
        let supervisor = lock(&self.shared.supervisor);
        MechanicsPoolStats {
            queue_depth: self.receiver.len(),
            queue_capacity: self.config.queue_capacity,
            worker_count: supervisor.live_workers(),
            busy_workers: supervisor.busy_workers(),
            desired_worker_count: self.config.worker_count,
            restart_blocked: supervisor.restart_blocked(),
            restarts_in_window: supervisor.restarts_in_window(),
            restart_window_ms: u64::try_from(self.config.restart_window.as_millis())
                .unwrap_or(u64::MAX),
            max_restarts_in_window: self.config.max_restarts_in_window,
            abandoned_workers: supervisor.abandoned_workers(),
            jobs_completed: self.shared.jobs_completed.load(Ordering::Relaxed),
            jobs_failed: self.shared.jobs_failed.load(Ordering::Relaxed),
            memory_limits_enforced: crate::memory_limits_enforced(),
        }
    }
}

impl Drop for MechanicsPool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Workers see the channel disconnect once it is empty; cancel what is still queued.
        self.sender.take();
        while let Ok(envelope) = self.receiver.try_recv() {
            let _ = envelope
                .reply
                .send(JobOutput::without_console_error(MechanicsError::Canceled));
        }
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        // Running jobs may finish (they stop at their limits); one stuck in native code is left
        // behind after `shutdown_timeout` rather than hanging the caller.
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let workers = std::mem::take(&mut lock(&self.shared.supervisor).workers);
        for worker in workers {
            worker.join_until(deadline);
        }
    }
}

impl std::fmt::Debug for MechanicsPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MechanicsPool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, recovering from poisoning: the pool's bookkeeping stays usable even if a thread
/// panicked while holding it, since every update is a single consistent assignment.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const SUPERVISOR_TICK: Duration = Duration::from_millis(20);
