//! Runs one job in a fresh Boa context.
//!
//! Every job gets a context of its own, built while the worker waits for work: nothing a job does
//! to globals, built-ins or module objects can reach the next one, and a job that was stopped in
//! the middle of its work leaves nothing behind to clean up. The flow of one job:
//!
//! 1. instrument the module ([`instrument`]) so loops and calls reach the tick functions, or take
//!    the thread's earlier instrumentation of the same source ([`instrumented_cache`]);
//! 2. evaluate an entry shim that imports the user module's default export and hands it to a
//!    native capture function (asking Boa for the module namespace instead would leak the realm);
//! 3. call the default export with the argument, wrap a non-promise result in a resolved promise;
//! 4. drain the job queue once, then apply the promise rules: a rejected result, any other
//!    unhandled rejection, or a promise still pending fail the job;
//! 5. convert the result to JSON ([`convert`]).

mod console;
pub(crate) mod convert;
mod globals;
mod host;
mod instrument;
mod instrumented_cache;
mod positions;
mod state;

pub(crate) use instrument::syntax_error;

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Instant;

use boa_engine::builtins::promise::PromiseState;
use boa_engine::error::RuntimeLimitError;
use boa_engine::object::builtins::JsPromise;
use boa_engine::property::PropertyDescriptor;
use boa_engine::vm::RuntimeLimits;
use boa_engine::{
    Context, JsError, JsNativeError, JsResult, JsString, JsSymbol, JsValue, Module, NativeFunction,
    Source, js_string,
};
use serde_json::Value;

use crate::console::{ConsoleLine, JobOutput};
use crate::endpoint::EndpointRuntime;
use crate::job::{MechanicsExecutionLimits, MechanicsJob};
use crate::{MechanicsError, memory};
use convert::ConvertError;
use host::{JobHooks, JobLoader, JobQueue};
use instrument::InstrumentError;
use state::{Exceeded, JobState};

/// Largest `ArrayBuffer` a job may create when its memory limit is higher: Boa's own default.
const MAX_BUFFER_BYTES: u64 = 1_610_612_736;

/// Net allocation of a job above which the worker collects garbage before the next job.
const COLLECT_AFTER_BYTES: i64 = 8 * 1024 * 1024;

/// A context ready for the next job, with the host objects wired into it.
struct PreparedContext {
    context: Context,
    state: Rc<JobState>,
    queue: Rc<JobQueue>,
    hooks: Rc<JobHooks>,
}

impl PreparedContext {
    fn new() -> Result<Self, MechanicsError> {
        let state = Rc::new(JobState::new());
        let queue = Rc::new(JobQueue::new(state.clone()));
        let hooks = Rc::new(JobHooks {
            state: state.clone(),
            max_buffer_bytes: Cell::new(MAX_BUFFER_BYTES),
        });
        let mut context = Context::builder()
            .host_hooks(hooks.clone())
            .job_executor(queue.clone())
            .module_loader(Rc::new(JobLoader {
                state: state.clone(),
            }))
            .build()
            .map_err(|err| {
                MechanicsError::RuntimePool(format!("could not create a JavaScript context: {err}"))
            })?;
        console::install(&mut context, &state).map_err(|err| {
            MechanicsError::RuntimePool(format!("could not install the console: {err}"))
        })?;
        globals::install(&mut context, &state).map_err(|err| {
            MechanicsError::RuntimePool(format!("could not install the web globals: {err}"))
        })?;
        Ok(Self {
            context,
            state,
            queue,
            hooks,
        })
    }
}

impl Drop for PreparedContext {
    fn drop(&mut self) {
        // Drop every value the host holds before the context goes, so the collector can free it
        // all and calls in flight are aborted, on the unwinding path of a panic too.
        self.state.clear();
        self.queue.clear();
    }
}

/// Runs jobs one after another on the current thread, keeping a fresh context ready.
pub(crate) struct JobRunner {
    prepared: Option<PreparedContext>,
    endpoints: Arc<EndpointRuntime>,
    random: RandomState,
    jobs_run: u64,
    collect_before_next: bool,
    instrumented: instrumented_cache::InstrumentedCache,
}

impl JobRunner {
    /// A runner whose jobs call endpoints through `endpoints`.
    pub(crate) fn new(endpoints: Arc<EndpointRuntime>) -> Result<Self, MechanicsError> {
        let mut runner = Self {
            prepared: None,
            endpoints,
            random: RandomState::new(),
            jobs_run: 0,
            collect_before_next: false,
            instrumented: instrumented_cache::InstrumentedCache::default(),
        };
        runner.prepare()?;
        Ok(runner)
    }

    /// Builds the context for the next job, if it is not built yet. Workers call this while idle,
    /// so a job does not wait for it.
    pub(crate) fn prepare(&mut self) -> Result<(), MechanicsError> {
        if self.prepared.is_none() {
            // Free a big previous job's objects now, while idle: freed during the next job, they
            // would count as negative usage and stretch that job's memory budget. Small jobs'
            // garbage is left to the collector's own schedule, which keeps trivial jobs fast.
            if std::mem::take(&mut self.collect_before_next) {
                boa_gc::force_collect();
            }
            self.prepared = Some(PreparedContext::new()?);
        }
        Ok(())
    }

    /// Runs `job` under `limits`. `park_signal` is set if the thread parks on the hard memory
    /// limit (see [`memory`]).
    pub(crate) fn run(
        &mut self,
        job: &MechanicsJob,
        limits: &MechanicsExecutionLimits,
        park_signal: &AtomicU8,
    ) -> JobOutput {
        let mut console = Vec::new();
        let result = self.run_capturing(job, limits, park_signal, &mut console);
        let mut output = JobOutput { result, console };
        if let Some(map) = job.source_map() {
            positions::rewrite(map, job.module_source(), &mut output);
        }
        output
    }

    fn run_capturing(
        &mut self,
        job: &MechanicsJob,
        limits: &MechanicsExecutionLimits,
        park_signal: &AtomicU8,
        console: &mut Vec<ConsoleLine>,
    ) -> Result<Value, MechanicsError> {
        let source = job.module_source();
        if source.len() > limits.max_module_source_bytes() {
            return Err(MechanicsError::LimitExceeded(format!(
                "the module source is {} bytes, more than the limit of {} bytes",
                source.len(),
                limits.max_module_source_bytes()
            )));
        }
        self.jobs_run += 1;
        let suffix = self.random.hash_one(self.jobs_run);
        let instrumented = self
            .instrumented
            .get_or_instrument(source, suffix)
            .map_err(|err| match err {
                InstrumentError::Syntax(message) | InstrumentError::Unsupported(message) => {
                    MechanicsError::Execution(message)
                }
            })?;

        self.prepare()?;
        let Some(prepared) = self.prepared.take() else {
            return Err(MechanicsError::RuntimePool(
                "no JavaScript context is available".to_owned(),
            ));
        };
        memory::begin_job(limits.max_memory_bytes(), park_signal);
        prepared.state.endpoint_calls.begin_job(
            job.config(),
            &self.endpoints,
            limits.max_result_bytes(),
            limits.max_memory_bytes(),
        );
        let result = run_in(prepared, job, limits, &instrumented, suffix, console);
        self.collect_before_next = memory::end_job() > COLLECT_AFTER_BYTES;
        result
    }
}

fn run_in(
    mut prepared: PreparedContext,
    job: &MechanicsJob,
    limits: &MechanicsExecutionLimits,
    instrumented: &instrument::Instrumented,
    suffix: u64,
    console: &mut Vec<ConsoleLine>,
) -> Result<Value, MechanicsError> {
    let state = prepared.state.clone();
    state
        .deadline
        .set(Instant::now() + limits.max_execution_time());
    state.max_loop_iterations.set(limits.max_loop_iterations());
    prepared
        .hooks
        .max_buffer_bytes
        .set(limits.max_memory_bytes().min(MAX_BUFFER_BYTES));
    let mut runtime_limits = RuntimeLimits::default();
    runtime_limits.set_recursion_limit(limits.max_recursion_depth());
    runtime_limits.set_stack_size_limit(limits.max_stack_size());
    // Instrumented loops are counted for the whole job by the tick; Boa's per-frame count is the
    // backstop for loops whose text-placed tick could not be confirmed (see `instrument`).
    runtime_limits.set_loop_iteration_limit(limits.max_loop_iterations());
    prepared.context.set_runtime_limits(runtime_limits);

    let context = &mut prepared.context;
    let outcome = evaluate(context, &state, job, limits, instrumented, suffix);
    let outcome = outcome.map_err(|failure| failure.into_error(&state, limits, context));
    *console = state.console.borrow_mut().take();
    drop(prepared);
    outcome
}

/// How a job failed, before it is turned into a [`MechanicsError`] (which needs the context to
/// describe a thrown value).
enum Failure {
    Thrown(JsError),
    Message(String),
    Convert(ConvertError),
}

impl Failure {
    fn into_error(
        self,
        state: &JobState,
        limits: &MechanicsExecutionLimits,
        context: &mut Context,
    ) -> MechanicsError {
        if let Some(limit) = state.exceeded.get() {
            return limit_exceeded(limit, limits);
        }
        match self {
            Failure::Message(message) => MechanicsError::Execution(message),
            Failure::Convert(ConvertError::NotJson(message)) => {
                MechanicsError::Execution(format!("the result is not JSON: {message}"))
            }
            Failure::Convert(ConvertError::TooLarge(max)) => MechanicsError::LimitExceeded(
                format!("the result is larger than the limit of {max} bytes"),
            ),
            Failure::Convert(ConvertError::Thrown(error)) | Failure::Thrown(error) => {
                if let Some(limit) = engine_limit(&error) {
                    return MechanicsError::LimitExceeded(limit_message(limit, limits));
                }
                let message = host::describe(&error, context);
                let class = retry_class(&error, context);
                if let Some(limit) = state.exceeded.get() {
                    return limit_exceeded(limit, limits);
                }
                class(message)
            }
        }
    }
}

/// How an uncaught error asks to be treated: the rejection of an endpoint call that failed in
/// transport carries `transport: true` (and `retryable: true`), and a job may throw any error
/// with `retryable: true` to ask for another attempt. Only the value `true` counts; reading a
/// property that throws counts as not set.
fn retry_class(error: &JsError, context: &mut Context) -> fn(String) -> MechanicsError {
    let Some(object) = error.as_opaque().and_then(JsValue::as_object) else {
        return MechanicsError::Execution;
    };
    let mut flag = |name: &str| {
        object
            .get(JsString::from(name), context)
            .is_ok_and(|value| value.as_boolean() == Some(true))
    };
    if flag(crate::modules::TRANSPORT_PROPERTY) {
        MechanicsError::EndpointTransport
    } else if flag(crate::modules::RETRYABLE_PROPERTY) {
        MechanicsError::Retryable
    } else {
        MechanicsError::Execution
    }
}

fn engine_limit(error: &JsError) -> Option<RuntimeLimitError> {
    match error.as_engine()? {
        boa_engine::error::EngineError::RuntimeLimit(limit) => Some(*limit),
        _ => None,
    }
}

fn limit_message(limit: RuntimeLimitError, limits: &MechanicsExecutionLimits) -> String {
    match limit {
        RuntimeLimitError::LoopIteration => format!(
            "loop iteration limit of {} exceeded",
            limits.max_loop_iterations()
        ),
        RuntimeLimitError::Recursion => format!(
            "recursion depth limit of {} exceeded",
            limits.max_recursion_depth()
        ),
        RuntimeLimitError::StackSize => format!(
            "stack size limit of {} values exceeded",
            limits.max_stack_size()
        ),
    }
}

fn limit_exceeded(limit: Exceeded, limits: &MechanicsExecutionLimits) -> MechanicsError {
    MechanicsError::LimitExceeded(match limit {
        Exceeded::Time => format!(
            "execution time limit of {} ms exceeded",
            limits.max_execution_time().as_millis()
        ),
        Exceeded::LoopIterations => limit_message(RuntimeLimitError::LoopIteration, limits),
        Exceeded::Memory => format!(
            "memory limit of {} MiB exceeded",
            limits.max_memory_bytes() / (1024 * 1024)
        ),
    })
}

/// The uncatchable error a tick throws once a limit is hit; the limit itself is recorded in the
/// job state and reported from there.
pub(crate) fn limit_error(_limit: Exceeded) -> JsError {
    RuntimeLimitError::LoopIteration.into()
}

fn evaluate(
    context: &mut Context,
    state: &Rc<JobState>,
    job: &MechanicsJob,
    limits: &MechanicsExecutionLimits,
    instrumented: &instrument::Instrumented,
    suffix: u64,
) -> Result<Value, Failure> {
    let capture = format!("__mechanics_capture_{suffix:016x}");
    install_ticks(context, state, instrumented, &capture).map_err(Failure::Thrown)?;

    let module = Module::parse(
        Source::from_bytes(instrumented.source.as_bytes()),
        None,
        context,
    )
    .map_err(|err| {
        Failure::Message(format!(
            "the instrumented module does not parse (this is a bug in Mechanics): {err}"
        ))
    })?;
    state.job_module.replace(Some(module));
    let shim = format!(
        "import main from \"{}\";\n{capture}(main);\n",
        host::JOB_SPECIFIER
    );
    let shim = Module::parse(Source::from_bytes(shim.as_bytes()), None, context)
        .map_err(Failure::Thrown)?;
    let evaluation = shim.load_link_evaluate(context);
    state.globals.timers.end_with(&evaluation);
    context.run_jobs().map_err(Failure::Thrown)?;
    match evaluation.state() {
        PromiseState::Fulfilled(_) => {}
        PromiseState::Rejected(reason) => {
            return Err(Failure::Thrown(JsError::from_opaque(reason)));
        }
        PromiseState::Pending => {
            return Err(Failure::Message(
                "module evaluation is still pending after the job queue drained (top-level await \
                 on a promise that never settles)"
                    .to_owned(),
            ));
        }
    }
    let main = state.default_export.borrow_mut().take();
    let Some(main) = main.as_ref().and_then(JsValue::as_callable) else {
        return Err(Failure::Message(
            "the module's default export is not a function: export one with \
             `export default function main(arg) { ... }`"
                .to_owned(),
        ));
    };
    let arg = convert::arg_to_js(job.arg(), context).map_err(Failure::Convert)?;
    let returned = main
        .call(&JsValue::undefined(), &[arg], context)
        .map_err(Failure::Thrown)?;
    let promise = match returned.as_promise() {
        Some(promise) => promise,
        None => JsPromise::resolve(returned, context).map_err(Failure::Thrown)?,
    };
    // The job ends when this promise settles: timers still pending then never fire.
    state.globals.timers.end_with(&promise);
    context.run_jobs().map_err(Failure::Thrown)?;
    if state.unsupported_job.get() {
        return Err(Failure::Message(
            "the job enqueued a kind of engine job the sandbox does not run".to_owned(),
        ));
    }
    let result = match promise.state() {
        PromiseState::Fulfilled(value) => value,
        PromiseState::Rejected(reason) => {
            return Err(Failure::Thrown(JsError::from_opaque(reason)));
        }
        PromiseState::Pending => {
            return Err(Failure::Message(
                "the default export's promise is still pending after the job queue drained"
                    .to_owned(),
            ));
        }
    };
    let promise_object: boa_engine::JsObject = promise.into();
    let unhandled = state
        .unhandled_rejections
        .borrow()
        .iter()
        .find(|p| !boa_engine::JsObject::equals(p, &promise_object))
        .cloned();
    if let Some(rejected) = unhandled {
        let reason = JsPromise::from_object(rejected)
            .ok()
            .and_then(|p| match p.state() {
                PromiseState::Rejected(reason) => Some(reason),
                _ => None,
            })
            .unwrap_or_default();
        let described = host::describe(&JsError::from_opaque(reason), context);
        return Err(Failure::Message(format!(
            "unhandled promise rejection: {described}"
        )));
    }
    convert::result_to_json(&result, limits.max_result_bytes(), context).map_err(Failure::Convert)
}

/// Replaces `Symbol.for` and `Symbol.keyFor` with versions backed by the job's own registry.
fn install_symbol_registry(context: &mut Context, state: &Rc<JobState>) -> JsResult<()> {
    let for_state = state.clone();
    // SAFETY: the closures capture only an `Rc<JobState>`; see `install_ticks`.
    let symbol_for = unsafe {
        NativeFunction::from_closure(move |_, args, context| {
            let key = args
                .first()
                .cloned()
                .unwrap_or_default()
                .to_string(context)?;
            let mut symbols = for_state.symbols.borrow_mut();
            if let Some(symbol) = symbols.get(&key) {
                return Ok(symbol.clone().into());
            }
            let symbol = JsSymbol::new(Some(key.clone())).ok_or_else(|| {
                JsNativeError::range().with_message("Symbol.for: no more symbols can be created")
            })?;
            symbols.insert(key, symbol.clone());
            Ok(symbol.into())
        })
    };
    let key_for_state = state.clone();
    let symbol_key_for = unsafe {
        NativeFunction::from_closure(move |_, args, _| {
            let Some(symbol) = args.first().and_then(JsValue::as_symbol) else {
                return Err(JsNativeError::typ()
                    .with_message("Symbol.keyFor: the argument is not a symbol")
                    .into());
            };
            let symbols = key_for_state.symbols.borrow();
            Ok(symbols
                .iter()
                .find(|(_, s)| **s == symbol)
                .map_or_else(JsValue::undefined, |(key, _)| key.clone().into()))
        })
    };
    let constructor = context.intrinsics().constructors().symbol().constructor();
    for (name, function) in [("for", symbol_for), ("keyFor", symbol_key_for)] {
        let object = boa_engine::object::FunctionObjectBuilder::new(context.realm(), function)
            .name(JsString::from(name))
            .length(1)
            .build();
        constructor.define_property_or_throw(
            JsString::from(name),
            PropertyDescriptor::builder()
                .value(object)
                .writable(true)
                .enumerable(false)
                .configurable(true),
            context,
        )?;
    }
    Ok(())
}

/// Defines the global object whose `import` method the instrumentation calls in place of each
/// dynamic `import(specifier)`: it answers a promise of the module's namespace object (the one a
/// static `import * as` gets), or a rejection for a module that does not exist. Boa's own dynamic
/// import would create a real namespace object, which Boa never frees.
fn install_dynamic_import(context: &mut Context, state: &Rc<JobState>, name: &str) -> JsResult<()> {
    let import_state = state.clone();
    // SAFETY: the closure captures only an `Rc<JobState>`; see `install_ticks`.
    let import = unsafe {
        NativeFunction::from_closure(move |_, args, context| {
            let specifier = args
                .first()
                .cloned()
                .unwrap_or_default()
                .to_string(context)?
                .to_std_string_escaped();
            let promise = match host::namespace_of(&import_state, &specifier, context) {
                Ok(Some(namespace)) => JsPromise::resolve(namespace, context)?,
                Ok(None) => JsPromise::reject(host::unknown_module(&specifier), context)?,
                Err(error) => JsPromise::reject(error, context)?,
            };
            Ok(promise.into())
        })
    };
    let import = boa_engine::object::FunctionObjectBuilder::new(context.realm(), import)
        .name(js_string!("import"))
        .length(1)
        .build();
    let object = boa_engine::object::ObjectInitializer::new(context)
        .property(
            js_string!("import"),
            import,
            boa_engine::property::Attribute::empty(),
        )
        .build();
    context.global_object().define_property_or_throw(
        JsString::from(name),
        PropertyDescriptor::builder()
            .value(object)
            .writable(false)
            .enumerable(false)
            .configurable(false),
        context,
    )?;
    Ok(())
}

/// Defines the tick functions and the capture function as read-only, non-configurable globals.
fn install_ticks(
    context: &mut Context,
    state: &Rc<JobState>,
    instrumented: &instrument::Instrumented,
    capture: &str,
) -> JsResult<()> {
    let loop_state = state.clone();
    // SAFETY (of the closures below): they capture only an `Rc<JobState>`, which holds no GC
    // pointers that need tracing while the closure lives: its JS values are cleared before the
    // context is dropped and are rooted by the `Rc` meanwhile.
    let loop_tick = unsafe {
        NativeFunction::from_closure(move |_, _, _| {
            // The next budget, never 0: a bare `for (;;)` gets the guard as its whole condition.
            let budget = loop_state.loop_budget().map_err(limit_error)?;
            Ok(JsValue::from(budget))
        })
    };
    let call_state = state.clone();
    let call_tick = unsafe {
        NativeFunction::from_closure(move |_, _, _| {
            let budget = call_state.call_budget().map_err(limit_error)?;
            Ok(JsValue::from(budget))
        })
    };
    install_symbol_registry(context, state)?;
    let capture_state = state.clone();
    let capture_fn = unsafe {
        NativeFunction::from_closure(move |_, args, _| {
            let value = args.first().cloned().unwrap_or_default();
            capture_state.default_export.replace(Some(value));
            Ok(JsValue::undefined())
        })
    };
    install_dynamic_import(context, state, &instrumented.import_object)?;
    for (name, function) in [
        (instrumented.loop_tick.as_str(), loop_tick),
        (instrumented.call_tick.as_str(), call_tick),
        (capture, capture_fn),
    ] {
        let object = boa_engine::object::FunctionObjectBuilder::new(context.realm(), function)
            .name(js_string!(""))
            .length(0)
            .build();
        context.global_object().define_property_or_throw(
            JsString::from(name),
            PropertyDescriptor::builder()
                .value(object)
                .writable(false)
                .enumerable(false)
                .configurable(false),
            context,
        )?;
    }
    Ok(())
}
