//! The per-job state shared by the tick functions, the host hooks, the module loader and the job
//! queue of one context.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use boa_engine::{JsObject, JsString, JsSymbol, JsValue, Module};

use super::console::ConsoleBuffer;
use super::globals::GlobalsState;
use crate::memory;
use crate::modules::EndpointCalls;

/// Which limit stopped a job, recorded before the uncatchable error is thrown so the error
/// reported to the caller names the limit whatever shape the error takes inside Boa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Time,
    LoopIterations,
    Memory,
}

/// How many ticks pass between two looks at the clock and the memory budget: often enough to
/// stop within a millisecond or so, rarely enough to keep the clock off the hot path.
const TICKS_PER_CHECK: u32 = 256;

/// How many loop iterations, and separately how many function entries, instrumented code runs
/// between two calls of a native tick (each of which checks the clock and the memory budget).
/// Half of [`TICKS_PER_CHECK`], so that code mixing loops and calls is checked at least as often
/// as when every iteration and entry called the tick; a native call per 128 is already lost in
/// the noise of the benchmarks (see ARCHITECTURE.md, "How limits are enforced").
const BUDGET: u32 = TICKS_PER_CHECK / 2;

#[derive(Debug)]
pub(crate) struct JobState {
    pub(crate) deadline: Cell<Instant>,
    pub(crate) max_loop_iterations: Cell<u64>,
    pub(crate) loop_iterations: Cell<u64>,
    ticks_until_check: Cell<u32>,
    pub(crate) exceeded: Cell<Option<Exceeded>>,
    /// Promises rejected with no handler attached, in rejection order.
    pub(crate) unhandled_rejections: RefCell<Vec<JsObject>>,
    /// The user module, served to the entry shim as `mechanics:job`.
    pub(crate) job_module: RefCell<Option<Module>>,
    /// Modules already handed out, so that one specifier always resolves to one module.
    pub(crate) loaded: RefCell<HashMap<String, Module>>,
    /// Namespace objects of the `mechanics:*` modules already built, so that a static namespace
    /// import and a dynamic `import()` of one specifier see one object.
    pub(crate) namespaces: RefCell<HashMap<String, JsObject>>,
    /// The default export, captured by the entry shim.
    pub(crate) default_export: RefCell<Option<JsValue>>,
    /// A job enqueued a kind of host job the sandbox does not run (the engine's own timeout or
    /// interval jobs; a job's timers are its own, in `globals`).
    pub(crate) unsupported_job: Cell<bool>,
    /// The job's web globals: their values once built, and the pending timers.
    pub(crate) globals: GlobalsState,
    /// The job's own `Symbol.for` registry. Boa's registry is shared by the whole process and
    /// never shrinks, so one job could grow it without bound or see another job's keys.
    pub(crate) symbols: RefCell<HashMap<JsString, JsSymbol>>,
    /// The job's `mechanics:endpoint` calls.
    pub(crate) endpoint_calls: Rc<EndpointCalls>,
    /// What the job wrote with `console`.
    pub(crate) console: RefCell<ConsoleBuffer>,
}

impl JobState {
    pub(crate) fn new() -> Self {
        Self {
            deadline: Cell::new(Instant::now()),
            max_loop_iterations: Cell::new(u64::MAX),
            loop_iterations: Cell::new(0),
            ticks_until_check: Cell::new(TICKS_PER_CHECK),
            exceeded: Cell::new(None),
            unhandled_rejections: RefCell::new(Vec::new()),
            job_module: RefCell::new(None),
            loaded: RefCell::new(HashMap::new()),
            namespaces: RefCell::new(HashMap::new()),
            default_export: RefCell::new(None),
            unsupported_job: Cell::new(false),
            globals: GlobalsState::default(),
            symbols: RefCell::new(HashMap::new()),
            endpoint_calls: Rc::new(EndpointCalls::new()),
            console: RefCell::new(ConsoleBuffer::default()),
        }
    }

    /// The loop tick, called by instrumented code when its loop budget has run out: counts the
    /// iteration that called it as the first of a new budget, checks every limit, and answers how
    /// many iterations (this one included) may run before the next call. The budget is charged to
    /// the job's count up front, so the count never passes the limit and the iteration after the
    /// limit is the one that fails.
    pub(crate) fn loop_budget(&self) -> Result<u32, Exceeded> {
        if let Some(limit) = self.exceeded.get() {
            return Err(limit);
        }
        let used = self.loop_iterations.get();
        let left = self.max_loop_iterations.get().saturating_sub(used);
        if left == 0 {
            return Err(self.exceed(Exceeded::LoopIterations));
        }
        let budget = left.min(u64::from(BUDGET));
        self.loop_iterations.set(used + budget);
        self.check_now()?;
        // `budget` is at most `BUDGET`, a `u32`.
        Ok(u32::try_from(budget).unwrap_or(BUDGET))
    }

    /// The call tick, called by instrumented code when its call budget has run out: checks the
    /// clock and the memory budget and answers how many function entries may run before the next
    /// call.
    pub(crate) fn call_budget(&self) -> Result<u32, Exceeded> {
        self.check_now()?;
        Ok(BUDGET)
    }

    /// Checks the clock and the memory budget every [`TICKS_PER_CHECK`] calls.
    pub(crate) fn tick(&self) -> Result<(), Exceeded> {
        if let Some(limit) = self.exceeded.get() {
            return Err(limit);
        }
        let left = self.ticks_until_check.get();
        if left > 0 {
            self.ticks_until_check.set(left - 1);
            return Ok(());
        }
        self.ticks_until_check.set(TICKS_PER_CHECK);
        self.check_now()
    }

    /// Checks the clock and the memory budget now.
    pub(crate) fn check_now(&self) -> Result<(), Exceeded> {
        if let Some(limit) = self.exceeded.get() {
            return Err(limit);
        }
        if Instant::now() >= self.deadline.get() {
            return Err(self.exceed(Exceeded::Time));
        }
        if memory::over_soft_limit() {
            // Garbage counts until the collector runs; only live memory should fail a job.
            boa_gc::force_collect();
            if memory::over_soft_limit() {
                return Err(self.exceed(Exceeded::Memory));
            }
        }
        Ok(())
    }

    fn exceed(&self, limit: Exceeded) -> Exceeded {
        self.exceeded.set(Some(limit));
        limit
    }

    /// Drops every JavaScript value the state holds, so none outlives its job as a GC root.
    pub(crate) fn clear(&self) {
        self.unhandled_rejections.borrow_mut().clear();
        self.job_module.borrow_mut().take();
        self.loaded.borrow_mut().clear();
        self.namespaces.borrow_mut().clear();
        self.console.borrow_mut().clear();
        self.default_export.borrow_mut().take();
        self.symbols.borrow_mut().clear();
        self.globals.clear();
        self.endpoint_calls.clear();
    }
}
