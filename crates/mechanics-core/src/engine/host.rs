//! The host side of a job's context: hooks, module loader and job queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use boa_engine::builtins::promise::OperationType;
use boa_engine::context::HostHooks;
use boa_engine::job::{GenericJob, Job, JobExecutor, NativeAsyncJob, PromiseJob};
use boa_engine::module::{ModuleLoader, ModuleRequest, Referrer};
use boa_engine::realm::Realm;
use boa_engine::{Context, JsError, JsNativeError, JsObject, JsResult, JsString, Module};

use super::state::JobState;
use crate::modules;

/// The specifier under which the entry shim imports the user's module.
pub(crate) const JOB_SPECIFIER: &str = "mechanics:job";

/// Host hooks: no string compilation, rejection tracking, buffer sizes within the memory limit.
pub(crate) struct JobHooks {
    pub(crate) state: Rc<JobState>,
    pub(crate) max_buffer_bytes: std::cell::Cell<u64>,
}

impl HostHooks for JobHooks {
    fn ensure_can_compile_strings(
        &self,
        _realm: Realm,
        _parameters: &[JsString],
        _body: &JsString,
        _direct: bool,
        _context: &mut Context,
    ) -> JsResult<()> {
        // Code made from strings would run without the instrumentation that enforces limits.
        Err(JsNativeError::eval()
            .with_message("eval and new Function are disabled in Mechanics jobs")
            .into())
    }

    fn promise_rejection_tracker(
        &self,
        promise: &JsObject<boa_engine::builtins::promise::Promise>,
        operation: OperationType,
        _context: &mut Context,
    ) {
        let promise = promise.clone().upcast();
        let mut unhandled = self.state.unhandled_rejections.borrow_mut();
        match operation {
            OperationType::Reject => unhandled.push(promise),
            OperationType::Handle => unhandled.retain(|p| !JsObject::equals(p, &promise)),
        }
    }

    fn max_buffer_size(&self, _context: &mut Context) -> u64 {
        self.max_buffer_bytes.get()
    }
}

/// Serves the user module to the entry shim and the `mechanics:*` modules to everyone; refuses
/// every other specifier, so a job can never reach the file system or the network by importing.
pub(crate) struct JobLoader {
    pub(crate) state: Rc<JobState>,
}

impl ModuleLoader for JobLoader {
    async fn load_imported_module(
        self: Rc<Self>,
        _referrer: Referrer,
        request: ModuleRequest,
        context: &RefCell<&mut Context>,
    ) -> JsResult<Module> {
        let specifier = request.specifier().to_std_string_escaped();
        if let Some(module) = self.state.loaded.borrow().get(&specifier) {
            return Ok(module.clone());
        }
        let module = if specifier == JOB_SPECIFIER {
            self.state.job_module.borrow().clone()
        } else {
            let context = &mut *context.borrow_mut();
            match namespace_of(&self.state, &specifier, context)? {
                Some(namespace) => Some(modules::synthetic_module(&namespace, context)?),
                None => None,
            }
        };
        let Some(module) = module else {
            return Err(unknown_module(&specifier));
        };
        self.state
            .loaded
            .borrow_mut()
            .insert(specifier, module.clone());
        Ok(module)
    }
}

/// The namespace object of the `mechanics:*` module `specifier`, built once per job; `None` when
/// no such module exists.
pub(crate) fn namespace_of(
    state: &JobState,
    specifier: &str,
    context: &mut Context,
) -> JsResult<Option<JsObject>> {
    if let Some(namespace) = state.namespaces.borrow().get(specifier) {
        return Ok(Some(namespace.clone()));
    }
    let Some(namespace) = modules::namespace(specifier, &state.endpoint_calls, context) else {
        return Ok(None);
    };
    let namespace = namespace?;
    state
        .namespaces
        .borrow_mut()
        .insert(specifier.to_owned(), namespace.clone());
    Ok(Some(namespace))
}

/// The error of an import of anything but our modules.
pub(crate) fn unknown_module(specifier: &str) -> JsError {
    JsNativeError::typ()
        .with_message(format!(
            "cannot import {specifier:?}: jobs can import only the built-in modules {}",
            modules::SPECIFIERS.join(", ")
        ))
        .into()
}

/// The job's event loop: promise reactions and host jobs, run in order until none is left.
/// Between two jobs it checks the clock, so an endless promise chain stops at the time limit.
pub(crate) struct JobQueue {
    pub(crate) state: Rc<JobState>,
    promise_jobs: RefCell<VecDeque<PromiseJob>>,
    generic_jobs: RefCell<VecDeque<GenericJob>>,
    async_jobs: RefCell<VecDeque<NativeAsyncJob>>,
}

impl JobQueue {
    pub(crate) fn new(state: Rc<JobState>) -> Self {
        Self {
            state,
            promise_jobs: RefCell::default(),
            generic_jobs: RefCell::default(),
            async_jobs: RefCell::default(),
        }
    }

    /// Drops queued jobs (and the values they hold) after a job failed.
    pub(crate) fn clear(&self) {
        self.promise_jobs.borrow_mut().clear();
        self.generic_jobs.borrow_mut().clear();
        self.async_jobs.borrow_mut().clear();
    }
}

impl JobExecutor for JobQueue {
    fn enqueue_job(self: Rc<Self>, job: Job, _context: &mut Context) {
        match job {
            Job::PromiseJob(job) => self.promise_jobs.borrow_mut().push_back(job),
            Job::GenericJob(job) => self.generic_jobs.borrow_mut().push_back(job),
            Job::AsyncJob(job) => self.async_jobs.borrow_mut().push_back(job),
            // Jobs have their own timers (`engine/globals/timers.rs`); the engine's only timeout
            // job, `Atomics.waitAsync`'s, is gone with it. A finalization callback may be
            // skipped by specification.
            Job::TimeoutJob(_) | Job::IntervalJob(_) => self.state.unsupported_job.set(true),
            Job::FinalizationRegistryCleanupJob(_) => {}
            _ => self.state.unsupported_job.set(true),
        }
    }

    fn run_jobs(self: Rc<Self>, context: &mut Context) -> JsResult<()> {
        loop {
            if let Err(limit) = self.state.check_now() {
                return Err(super::limit_error(limit));
            }
            let async_job = self.async_jobs.borrow_mut().pop_front();
            if let Some(job) = async_job {
                let cell = RefCell::new(&mut *context);
                futures_lite::future::block_on(job.call(&cell))?;
                continue;
            }
            let promise_job = self.promise_jobs.borrow_mut().pop_front();
            if let Some(job) = promise_job {
                job.call(context)?;
                continue;
            }
            let generic_job = self.generic_jobs.borrow_mut().pop_front();
            if let Some(job) = generic_job {
                job.call(context)?;
                continue;
            }
            // No microtask left: fire the next due timer, or wait for it (or for an endpoint
            // call in flight), never past the job's deadline, which the loop's top checks.
            if let Some(due) = self.state.globals.timers.next_due() {
                if due <= Instant::now() {
                    self.state.globals.timers.fire_next(context)?;
                } else {
                    let wake = due.min(self.state.deadline.get());
                    if self.state.endpoint_calls.has_pending() {
                        self.state.endpoint_calls.settle_next(wake, context)?;
                    } else {
                        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                    }
                }
                continue;
            }
            // Nothing left to run but endpoint calls in flight: wait for the next one, no longer
            // than the job may run.
            if self.state.endpoint_calls.has_pending() {
                if !self
                    .state
                    .endpoint_calls
                    .settle_next(self.state.deadline.get(), context)?
                {
                    self.state.check_now().map_err(super::limit_error)?;
                }
                continue;
            }
            return Ok(());
        }
    }
}

/// A thrown error as a message for the job's author: `TypeError: ...`, or `Uncaught <value>`;
/// a use of a global jobs do not have (`fetch`) says so.
pub(crate) fn describe(error: &JsError, context: &mut Context) -> String {
    let described = describe_thrown(error, context);
    super::globals::refine_description(error, described, context)
}

fn describe_thrown(error: &JsError, context: &mut Context) -> String {
    if let Some(native) = error.as_native() {
        return native.to_string();
    }
    if let Some(engine) = error.as_engine() {
        return engine.to_string();
    }
    match error.try_native(context) {
        Ok(native) => native.to_string(),
        Err(_) => match error.as_opaque() {
            Some(value) => match value.to_string(context) {
                Ok(text) => format!("Uncaught {}", text.to_std_string_escaped()),
                Err(_) => "Uncaught exception".to_owned(),
            },
            None => error.to_string(),
        },
    }
}
