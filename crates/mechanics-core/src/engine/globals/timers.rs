//! `setTimeout`/`clearTimeout`, `setInterval`/`clearInterval` and `queueMicrotask`.
//!
//! Timers live in the job's [`Timers`] list; the job's event loop (`JobQueue::run_jobs` in
//! `engine/host.rs`) fires the next due one when no microtask is left, and otherwise waits for it
//! (or for an endpoint call) no longer than the job's deadline, so a timer never stretches a job
//! past its time limit. Once the promise the job ends with has settled, no timer fires again:
//! timers still pending then are dropped with the job, as the job has ended.
//!
//! Callbacks run with the global object as `this`, and microtasks queued by `queueMicrotask`
//! interleave with promise reactions in one queue, as in browsers. An exception thrown by a timer
//! or microtask callback fails the job (nothing else could ever see it).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use boa_engine::builtins::promise::PromiseState;
use boa_engine::job::{Job, PromiseJob};
use boa_engine::object::builtins::JsPromise;
use boa_engine::{Context, JsObject, JsResult, JsValue, NativeFunction};

/// A job's `setTimeout` (no `repeat`) or `setInterval` callback, with its extra arguments.
#[derive(Debug)]
struct Timer {
    callback: JsObject,
    args: Vec<JsValue>,
    repeat: Option<Duration>,
}

/// The pending timers of one job, in the order they are due.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    next_id: Cell<u64>,
    /// Timers by due time, then by id, so that timers due at the same time fire in the order
    /// they were set.
    queue: RefCell<BTreeMap<(Instant, u64), Timer>>,
    /// When each timer is due, by id, for `clearTimeout`; an interval keeps its entry
    /// while its callback runs, so clearing it from inside stops it.
    due: RefCell<HashMap<u64, Instant>>,
    /// The promise whose settling ends the job.
    ends_with: RefCell<Option<JsPromise>>,
}

impl Timers {
    /// From now on no timer fires once `promise` has settled: the job ends with it.
    pub(crate) fn end_with(&self, promise: &JsPromise) {
        self.ends_with.replace(Some(promise.clone()));
    }

    fn new_id(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    /// Schedules `callback(...args)` after `delay` (and every `delay` after that if `repeat`);
    /// returns the timer's id.
    fn add(&self, callback: JsObject, args: Vec<JsValue>, delay: Duration, repeat: bool) -> u64 {
        let id = self.new_id();
        let at = Instant::now() + delay;
        self.due.borrow_mut().insert(id, at);
        self.queue.borrow_mut().insert(
            (at, id),
            Timer {
                callback,
                args,
                repeat: repeat.then_some(delay),
            },
        );
        id
    }

    /// Cancels the script timer `id`, if it is still pending.
    fn cancel(&self, id: u64) {
        if let Some(at) = self.due.borrow_mut().remove(&id) {
            self.queue.borrow_mut().remove(&(at, id));
        }
    }

    /// Whether the promise the job ends with has settled.
    fn ended(&self) -> bool {
        self.ends_with
            .borrow()
            .as_ref()
            .is_some_and(|promise| !matches!(promise.state(), PromiseState::Pending))
    }

    /// When the next timer is due; `None` when none is pending or the job has ended.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if self.ended() {
            return None;
        }
        self.queue.borrow().keys().next().map(|(at, _)| *at)
    }

    /// Runs the callback of the timer due first, and schedules an interval's next run.
    pub(crate) fn fire_next(&self, context: &mut Context) -> JsResult<()> {
        // The list is never borrowed while JavaScript runs: a callback may set or clear timers.
        let first = self.queue.borrow_mut().pop_first();
        let Some(((_, id), timer)) = first else {
            return Ok(());
        };
        if timer.repeat.is_none() {
            self.due.borrow_mut().remove(&id);
        }
        let started = Instant::now();
        let this = context.global_object().into();
        timer.callback.call(&this, &timer.args, context)?;
        if let Some(interval) = timer.repeat
            && self.due.borrow().contains_key(&id)
        {
            let at = started + interval;
            self.due.borrow_mut().insert(id, at);
            self.queue.borrow_mut().insert((at, id), timer);
        }
        Ok(())
    }

    /// Drops every pending timer (and the values it holds) at the end of a job.
    pub(crate) fn clear(&self) {
        self.queue.borrow_mut().clear();
        self.due.borrow_mut().clear();
        self.ends_with.borrow_mut().take();
    }
}

/// The value of the `queueMicrotask` global.
pub(super) fn queue_microtask_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(
        context,
        "queueMicrotask",
        1,
        NativeFunction::from_fn_ptr(queue_microtask),
    )
    .into())
}

/// The value of the `setTimeout` global.
pub(super) fn set_timeout_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(
        context,
        "setTimeout",
        1,
        NativeFunction::from_fn_ptr(|_, args, context| set_timer(args, false, context)),
    )
    .into())
}

/// The value of the `setInterval` global.
pub(super) fn set_interval_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(
        context,
        "setInterval",
        1,
        NativeFunction::from_fn_ptr(|_, args, context| set_timer(args, true, context)),
    )
    .into())
}

/// The value of the `clearTimeout` global.
pub(super) fn clear_timeout_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(
        context,
        "clearTimeout",
        0,
        NativeFunction::from_fn_ptr(clear_timer),
    )
    .into())
}

/// The value of the `clearInterval` global (timeouts and intervals share their ids).
pub(super) fn clear_interval_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(
        context,
        "clearInterval",
        0,
        NativeFunction::from_fn_ptr(clear_timer),
    )
    .into())
}

/// `queueMicrotask(callback)`.
fn queue_microtask(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let callback = args
        .first()
        .and_then(JsValue::as_callable)
        .ok_or_else(|| super::type_error("queueMicrotask: the callback is not a function"))?;
    let realm = context.realm().clone();
    context.enqueue_job(Job::PromiseJob(PromiseJob::with_realm(
        move |context| callback.call(&JsValue::undefined(), &[], context),
        realm,
    )));
    Ok(JsValue::undefined())
}

/// `setTimeout(callback, delay = 0, ...args)` and `setInterval(...)`: the delay is a WebIDL
/// `long` (so it wraps at 2^31 as in browsers), and a negative one is 0.
fn set_timer(args: &[JsValue], repeat: bool, context: &mut Context) -> JsResult<JsValue> {
    let function = if repeat { "setInterval" } else { "setTimeout" };
    let callback = args.first().and_then(JsValue::as_callable).ok_or_else(|| {
        super::type_error(format!(
            "{function}: the callback must be a function (jobs cannot run code from strings)"
        ))
    })?;
    let delay = match args.get(1) {
        Some(delay) => delay.to_i32(context)?.max(0),
        None => 0,
    };
    let rest = args.get(2..).unwrap_or_default().to_vec();
    let state = super::job_state(context)?;
    let id = state.globals.timers.add(
        callback,
        rest,
        Duration::from_millis(u64::from(delay.unsigned_abs())),
        repeat,
    );
    Ok(JsValue::from(id))
}

/// `clearTimeout(id)` / `clearInterval(id)`: anything that is not a pending timer's id is
/// ignored.
fn clear_timer(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let Some(id) = args.first() else {
        return Ok(JsValue::undefined());
    };
    let id = id.to_number(context)?;
    if id.fract() == 0.0 && id >= 1.0 && id < 2_f64.powi(53) {
        // In range and integral, so the conversion is exact.
        super::job_state(context)?.globals.timers.cancel(id as u64);
    }
    Ok(JsValue::undefined())
}
