//! Worker threads and the supervisor that watches them.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::JobOutput;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{MechanicsPoolConfig, PoolShared, SUPERVISOR_TICK, lock};
use crate::MechanicsError;
use crate::engine::JobRunner;
use crate::job::{MechanicsExecutionLimits, MechanicsJob};
use crate::memory::{PARKED_FOR_MEMORY, PARKED_FOR_STACK};

/// A queued job with the limits it runs under and where its result goes.
pub(super) struct Envelope {
    pub(super) job: MechanicsJob,
    pub(super) limits: MechanicsExecutionLimits,
    pub(super) reply: Sender<JobOutput>,
}

/// The job a worker is running, as the supervisor sees it.
struct Running {
    reply: Sender<JobOutput>,
    limits: MechanicsExecutionLimits,
    /// When the supervisor gives up on the thread: the job's time limit plus the grace.
    give_up_at: Instant,
}

/// What a worker thread shares with the supervisor.
#[derive(Default)]
struct WorkerSlot {
    running: Mutex<Option<Running>>,
    /// Set by the memory guard when the thread parked for good.
    park_signal: AtomicU8,
    /// Set by the supervisor when it gave up on the thread; the thread exits if it ever returns.
    abandoned: AtomicBool,
    /// Set by the thread when it leaves its loop, however it leaves.
    exited: AtomicBool,
}

/// A worker thread and its slot.
pub(super) struct Worker {
    slot: Arc<WorkerSlot>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Joins the thread unless it was abandoned (it may never return).
    pub(super) fn join(mut self) {
        if self.slot.abandoned.load(Ordering::SeqCst) {
            return;
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }

    /// Joins the thread if it exits by `deadline`; otherwise gives up on it, so that a job stuck
    /// in native code cannot make dropping the pool hang.
    pub(super) fn join_until(self, deadline: Instant) {
        while !self.slot.exited.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.slot.exited.load(Ordering::SeqCst) {
            self.slot.abandoned.store(true, Ordering::SeqCst);
        }
        self.join();
    }
}

/// The supervisor's bookkeeping: the workers and the restart guard.
pub(super) struct Supervisor {
    pub(super) workers: Vec<Worker>,
    /// Replacement workers spawned but not yet in `workers`.
    starting: usize,
    abandoned: usize,
    restarts: VecDeque<Instant>,
    restart_window: Duration,
    max_restarts: usize,
    blocked: bool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("workers", &self.workers.len())
            .field("abandoned", &self.abandoned)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl Supervisor {
    pub(super) fn new(config: &MechanicsPoolConfig) -> Self {
        Self {
            workers: Vec::new(),
            starting: 0,
            abandoned: 0,
            restarts: VecDeque::new(),
            restart_window: config.restart_window,
            max_restarts: config.max_restarts_in_window,
            blocked: false,
        }
    }

    pub(super) fn live_workers(&self) -> usize {
        self.starting
            + self
                .workers
                .iter()
                .filter(|w| !w.slot.exited.load(Ordering::SeqCst))
                .count()
    }

    pub(super) fn busy_workers(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| {
                w.slot
                    .running
                    .try_lock()
                    .map_or(true, |running| running.is_some())
            })
            .count()
    }

    pub(super) fn restart_blocked(&self) -> bool {
        self.blocked
    }

    pub(super) fn restarts_in_window(&self) -> usize {
        self.restarts.len()
    }

    pub(super) fn abandoned_workers(&self) -> usize {
        self.abandoned
    }

    /// Records a restart if the guard allows one now.
    fn allow_restart(&mut self, now: Instant) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.restart_window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= self.max_restarts {
            self.blocked = true;
            return false;
        }
        self.blocked = false;
        self.restarts.push_back(now);
        true
    }
}

/// Starts one worker thread and waits until its first context is ready.
pub(super) fn spawn(
    config: &MechanicsPoolConfig,
    queue: Receiver<Envelope>,
    shared: Arc<PoolShared>,
) -> Result<Worker, MechanicsError> {
    let slot = Arc::new(WorkerSlot::default());
    let (ready_sender, ready) = crossbeam_channel::bounded(1);
    let thread_slot = slot.clone();
    let handle = std::thread::Builder::new()
        .name("mechanics-worker".to_owned())
        .stack_size(config.worker_stack_bytes)
        .spawn(move || {
            crate::stack_guard::guard_current_thread(&thread_slot.park_signal);
            let runner = JobRunner::new(shared.endpoints.clone());
            let runner = match runner {
                Ok(runner) => {
                    let _ = ready_sender.send(Ok(()));
                    runner
                }
                Err(err) => {
                    let _ = ready_sender.send(Err(err));
                    thread_slot.exited.store(true, Ordering::SeqCst);
                    return;
                }
            };
            work(runner, &queue, &thread_slot, &shared);
            thread_slot.exited.store(true, Ordering::SeqCst);
        })
        .map_err(|err| {
            MechanicsError::RuntimePool(format!("could not start a worker thread: {err}"))
        })?;
    match ready.recv() {
        Ok(Ok(())) => Ok(Worker {
            slot,
            handle: Some(handle),
        }),
        Ok(Err(err)) => {
            let _ = handle.join();
            Err(err)
        }
        Err(_) => {
            let _ = handle.join();
            Err(MechanicsError::RuntimePool(
                "a worker thread stopped while starting".to_owned(),
            ))
        }
    }
}

/// The worker loop: take a job, run it, reply, get the next context ready.
fn work(mut runner: JobRunner, queue: &Receiver<Envelope>, slot: &WorkerSlot, shared: &PoolShared) {
    loop {
        if slot.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let envelope = match queue.recv_timeout(Duration::from_millis(100)) {
            Ok(envelope) => envelope,
            Err(RecvTimeoutError::Timeout) => {
                if shared.closed.load(Ordering::SeqCst) && queue.is_empty() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let give_up_at = Instant::now() + envelope.limits.max_execution_time();
        *lock(&slot.running) = Some(Running {
            reply: envelope.reply,
            limits: envelope.limits,
            give_up_at,
        });
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            runner.run(&envelope.job, &envelope.limits, &slot.park_signal)
        }));
        let result = match outcome {
            Ok(result) => result,
            Err(payload) => {
                let failed = JobOutput::without_console(Err(panic_error(&payload)));
                // The context may be half-way through an operation; start from a fresh one.
                match JobRunner::new(shared.endpoints.clone()) {
                    Ok(fresh) => runner = fresh,
                    Err(_) => {
                        reply(slot, shared, failed);
                        return;
                    }
                }
                failed
            }
        };
        reply(slot, shared, result);
        if slot.abandoned.load(Ordering::SeqCst) {
            return;
        }
        if runner.prepare().is_err() {
            return;
        }
    }
}

fn reply(slot: &WorkerSlot, shared: &PoolShared, result: JobOutput) {
    // If the supervisor already answered for a job that overran, the result is dropped.
    if let Some(running) = lock(&slot.running).take() {
        let counter = if result.result.is_ok() {
            &shared.jobs_completed
        } else {
            &shared.jobs_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = running.reply.send(result);
    }
}

fn panic_error(payload: &Box<dyn std::any::Any + Send>) -> MechanicsError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    MechanicsError::Panic(message)
}

/// Starts the supervisor thread, which watches for overrunning jobs and lost workers until the
/// pool closes.
pub(super) fn spawn_supervisor(
    config: &MechanicsPoolConfig,
    queue: Receiver<Envelope>,
    shared: Arc<PoolShared>,
) -> Result<JoinHandle<()>, MechanicsError> {
    let config = config.clone();
    std::thread::Builder::new()
        .name("mechanics-supervisor".to_owned())
        .spawn(move || {
            while !shared.closed.load(Ordering::SeqCst) {
                std::thread::sleep(SUPERVISOR_TICK);
                supervise(&config, &queue, &shared);
            }
        })
        .map_err(|err| {
            MechanicsError::RuntimePool(format!("could not start the pool supervisor: {err}"))
        })
}

fn supervise(config: &MechanicsPoolConfig, queue: &Receiver<Envelope>, shared: &Arc<PoolShared>) {
    let now = Instant::now();
    {
        let mut supervisor = lock(&shared.supervisor);
        let mut abandoned_now = 0;
        supervisor.workers.retain(|worker| {
            let slot = &worker.slot;
            if slot.exited.load(Ordering::SeqCst) {
                return false;
            }
            let parked = slot.park_signal.load(Ordering::Acquire);
            let mut running = lock(&slot.running);
            let overran = running
                .as_ref()
                .is_some_and(|r| now >= r.give_up_at + config.abandon_grace);
            if parked == 0 && !overran {
                return true;
            }
            if let Some(job) = running.take() {
                let message = if parked == PARKED_FOR_MEMORY {
                    format!(
                        "memory limit of {} MiB exceeded",
                        job.limits.max_memory_bytes() / (1024 * 1024)
                    )
                } else if parked == PARKED_FOR_STACK {
                    "the module or its data is nested too deeply: the worker ran out of native \
                     stack (its thread was replaced)"
                        .to_owned()
                } else {
                    format!(
                        "execution time limit of {} ms exceeded (the job was stuck in a \
                         built-in operation and its worker thread was replaced)",
                        job.limits.max_execution_time().as_millis()
                    )
                };
                shared.jobs_failed.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(JobOutput::without_console(Err(
                    MechanicsError::LimitExceeded(message),
                )));
            }
            slot.abandoned.store(true, Ordering::SeqCst);
            abandoned_now += 1;
            false
        });
        supervisor.abandoned += abandoned_now;
    }
    let missing = config
        .worker_count
        .saturating_sub(lock(&shared.supervisor).live_workers());
    for _ in 0..missing {
        let mut supervisor = lock(&shared.supervisor);
        if supervisor.abandoned >= config.max_abandoned_workers {
            // Every abandoned thread may still hold memory or a core: stop adding threads and
            // let the process be recycled instead.
            supervisor.blocked = true;
            break;
        }
        if shared.closed.load(Ordering::SeqCst) || !supervisor.allow_restart(now) {
            break;
        }
        // A starting worker counts as live: it may take a job before it is in the list.
        supervisor.starting += 1;
        drop(supervisor);
        let spawned = spawn(config, queue.clone(), shared.clone());
        let mut supervisor = lock(&shared.supervisor);
        supervisor.starting -= 1;
        match spawned {
            Ok(worker) => supervisor.workers.push(worker),
            Err(_) => break,
        }
    }
}
