//! The web-standard globals of a job's context: `TextEncoder`/`TextDecoder`, `URL`/
//! `URLSearchParams`, `atob`/`btoa`, `structuredClone`, `queueMicrotask`, timers, `crypto` and
//! `DOMException`, behaving as browsers and Node do for the cases people use.
//!
//! None of them reaches the network, a file or another process; `fetch`, `require` and `process`
//! stay absent, and [`refine_description`] says so in the error a job gets for using them.
//!
//! They are installed lazily: each is an accessor on the global object whose first read builds
//! the real value (and keeps it for the job). A context is built per job, so a job pays only for
//! the globals it touches (a few function objects each) and the trivial job's context costs one
//! small function object per name.
//!
//! Native code here that walks data of the job's making (bytes, strings, object graphs, lists)
//! checks the job's limits as it goes ([`Budget`]), so no input can hold the thread past the
//! time limit or grow the heap far past the memory limit between two ticks.

mod base64;
mod clone;
mod crypto;
mod dom_exception;
mod text;
mod timers;
mod url;

use std::cell::RefCell;
use std::rc::Rc;

use boa_engine::class::{Class, ClassBuilder};
use boa_engine::context::intrinsics::StandardConstructor;
use boa_engine::object::FunctionObjectBuilder;
use boa_engine::object::builtins::{JsArrayBuffer, JsDataView, JsSharedArrayBuffer, JsTypedArray};
use boa_engine::property::PropertyDescriptor;
use boa_engine::{
    Context, JsError, JsNativeError, JsObject, JsResult, JsString, JsSymbol, JsValue,
    NativeFunction, js_string,
};

use super::state::JobState;
use dom_exception::dom_exception;
use timers::Timers;

/// Builds the value of one global on first use.
type Build = fn(&mut Context) -> JsResult<JsValue>;

/// Every lazily installed global: its name, whether it is enumerable (as WebIDL makes functions
/// and attributes of the global object, and not interfaces), and its builder.
const GLOBALS: &[(&str, bool, Build)] = &[
    ("TextEncoder", false, text::encoder_constructor),
    ("TextDecoder", false, text::decoder_constructor),
    ("URL", false, url::url_constructor),
    ("URLSearchParams", false, url::params_constructor),
    ("DOMException", false, dom_exception::constructor),
    ("atob", true, base64::atob_function),
    ("btoa", true, base64::btoa_function),
    ("structuredClone", true, clone::function),
    ("queueMicrotask", true, timers::queue_microtask_function),
    ("setTimeout", true, timers::set_timeout_function),
    ("clearTimeout", true, timers::clear_timeout_function),
    ("setInterval", true, timers::set_interval_function),
    ("clearInterval", true, timers::clear_interval_function),
    ("crypto", true, crypto::object),
];

/// The per-job state of the globals, kept in the job's `JobState`.
#[derive(Debug, Default)]
pub(crate) struct GlobalsState {
    /// The job's pending timers.
    pub(crate) timers: Timers,
    /// The value of each global of [`GLOBALS`], once built or assigned.
    values: RefCell<Vec<Option<JsValue>>>,
}

impl GlobalsState {
    /// Drops every value held (globals, timers) at the end of a job.
    pub(crate) fn clear(&self) {
        self.timers.clear();
        self.values.borrow_mut().clear();
    }
}

/// The job's state, reachable from native functions through the context.
struct JobHandle(Rc<JobState>);

/// Defines every global of [`GLOBALS`] as a lazy accessor on the global object.
///
/// The accessors stay: replacing one with a data property on first use would be cleaner, but
/// Boa 0.22's inline caches keep treating a global turned from accessor into data property as an
/// accessor (the shape is not invalidated), and would then call the new value as a getter.
pub(crate) fn install(context: &mut Context, state: &Rc<JobState>) -> JsResult<()> {
    context.insert_data(JobHandle(state.clone()));
    // `Atomics.waitAsync` leaves a waiter in Boa's process-wide list, holding its buffer, until a
    // notify or timeout that never comes once the job has ended, and would make the job queue
    // block on it; a job is a single agent with no use for it.
    let atomics = context.intrinsics().objects().atomics();
    atomics.delete_property_or_throw(js_string!("waitAsync"), context)?;
    let global = context.global_object();
    for (index, (name, enumerable, _)) in GLOBALS.iter().enumerate() {
        // One function is both getter and setter: a setter call carries the value assigned.
        let accessor = FunctionObjectBuilder::new(
            context.realm(),
            NativeFunction::from_copy_closure(move |_, args, context| access(index, args, context)),
        )
        .build();
        global.define_property_or_throw(
            JsString::from(*name),
            PropertyDescriptor::builder()
                .get(accessor.clone())
                .set(accessor)
                .enumerable(*enumerable)
                .configurable(true),
            context,
        )?;
    }
    Ok(())
}

/// Reads global `index` (building it on first use) or, with an argument, assigns it: web
/// globals are writable, so are these.
fn access(index: usize, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let state = job_state(context)?;
    let store = |value: &JsValue| {
        let mut values = state.globals.values.borrow_mut();
        if values.len() < GLOBALS.len() {
            values.resize(GLOBALS.len(), None);
        }
        values[index] = Some(value.clone());
    };
    if let Some(assigned) = args.first() {
        store(assigned);
        return Ok(JsValue::undefined());
    }
    let built = state.globals.values.borrow().get(index).cloned().flatten();
    if let Some(value) = built {
        return Ok(value);
    }
    let value = (GLOBALS[index].2)(context)?;
    store(&value);
    Ok(value)
}

/// The state of the job running in `context`.
fn job_state(context: &Context) -> JsResult<Rc<JobState>> {
    context
        .get_data::<JobHandle>()
        .map(|handle| handle.0.clone())
        .ok_or_else(|| {
            JsNativeError::error()
                .with_message("the job state is missing from the context (a bug in Mechanics)")
                .into()
        })
}

/// Checks the job's limits during native work over the job's data: every item counts as one tick
/// (the clock and memory are looked at every 256), every chunk of bytes checks at once.
struct Budget {
    state: Rc<JobState>,
}

impl Budget {
    /// A budget for native work in the job running in `context`.
    fn of(context: &Context) -> JsResult<Self> {
        Ok(Self {
            state: job_state(context)?,
        })
    }

    /// One item of work (a property, a pair, a list entry).
    fn item(&self) -> JsResult<()> {
        self.state.tick().map_err(super::limit_error)
    }

    /// A chunk of bytes: checks the clock and the memory budget now. Never call it while holding
    /// a mutable borrow of a JavaScript object: the check may collect garbage, and the collector
    /// skips the contents of a mutably borrowed object.
    fn chunk(&self) -> JsResult<()> {
        self.state.check_now().map_err(super::limit_error)
    }
}

/// How many bytes native code processes between two looks at the job's limits.
const CHUNK_BYTES: usize = 64 * 1024;

/// The constructor and prototype of class `C` in the job's realm, built on first use.
fn class<C: Class>(context: &mut Context) -> JsResult<StandardConstructor> {
    if let Some(class) = context.get_global_class::<C>() {
        return Ok(class);
    }
    let mut builder = ClassBuilder::new::<C>(context);
    C::init(&mut builder)?;
    let class = builder.build();
    context.realm().register_class::<C>(class.clone());
    Ok(class)
}

/// The constructor of class `C`, as the value of its global.
fn constructor_of<C: Class>(context: &mut Context) -> JsResult<JsValue> {
    Ok(class::<C>(context)?.constructor().into())
}

/// A new instance of class `C` holding `data`, made from Rust.
fn instance<C: Class>(data: C, context: &mut Context) -> JsResult<JsObject> {
    let prototype = class::<C>(context)?.prototype();
    Ok(JsObject::from_proto_and_data(prototype, data).upcast())
}

/// A native function object named `name`, for a global or a method built by hand.
fn function(
    context: &Context,
    name: &str,
    length: usize,
    body: NativeFunction,
) -> boa_engine::object::builtins::JsFunction {
    FunctionObjectBuilder::new(context.realm(), body)
        .name(JsString::from(name))
        .length(length)
        .build()
}

/// `this` as an instance of class `C`, or a `TypeError` naming the method called on something
/// else (`URL.prototype.href` read on a plain object).
fn this_instance<C: Class>(this: &JsValue, method: &str) -> JsResult<JsObject<C>> {
    this.as_object()
        .and_then(|object| object.downcast::<C>().ok())
        .ok_or_else(|| {
            JsNativeError::typ()
                .with_message(format!(
                    "{method}: called on an object that is not a {}",
                    C::NAME
                ))
                .into()
        })
}

/// A `TypeError` with `message`.
fn type_error(message: impl Into<String>) -> JsError {
    JsNativeError::typ().with_message(message.into()).into()
}

/// The bytes of a `BufferSource` argument (`ArrayBuffer`, a typed array or a `DataView`): the
/// buffer and the viewed range. Shared buffers are refused: their bytes can change under us.
struct Bytes {
    buffer: JsArrayBuffer,
    offset: usize,
    length: usize,
}

impl Bytes {
    /// Resolves `value`, or throws a `TypeError` naming `function` and what it expected.
    fn of(value: &JsValue, function: &str, context: &mut Context) -> JsResult<Self> {
        let not_bytes = || {
            type_error(format!(
                "{function}: expected an ArrayBuffer, a TypedArray or a DataView"
            ))
        };
        let object = value.as_object().ok_or_else(not_bytes)?;
        let shared = || {
            type_error(format!(
                "{function}: SharedArrayBuffers and their views are not accepted"
            ))
        };
        if JsSharedArrayBuffer::from_object(object.clone()).is_ok() {
            return Err(shared());
        }
        let unshared = |buffer: JsValue| {
            buffer
                .as_object()
                .and_then(|buffer| JsArrayBuffer::from_object(buffer).ok())
                .ok_or_else(shared)
        };
        let (buffer, offset, length) = if let Ok(buffer) =
            JsArrayBuffer::from_object(object.clone())
        {
            let length = buffer.data().map_or(0, |data| data.len());
            (buffer, 0, length)
        } else if let Ok(array) = JsTypedArray::from_object(object.clone()) {
            let buffer = unshared(array.buffer(context)?)?;
            (
                buffer,
                array.byte_offset(context)?,
                array.byte_length(context)?,
            )
        } else if let Ok(view) = JsDataView::from_object(object) {
            let buffer = unshared(view.buffer(context)?)?;
            let offset = usize::try_from(view.byte_offset(context)?).map_err(|_| not_bytes())?;
            let length = usize::try_from(view.byte_length(context)?).map_err(|_| not_bytes())?;
            (buffer, offset, length)
        } else {
            return Err(not_bytes());
        };
        let bytes = Self {
            buffer,
            offset,
            length,
        };
        // A detached buffer views no bytes, as in browsers.
        if bytes.buffer.data().is_none() {
            return Ok(Self { length: 0, ..bytes });
        }
        bytes.with(|_| ())?;
        Ok(bytes)
    }

    /// How many bytes are viewed.
    fn len(&self) -> usize {
        self.length
    }

    /// Calls `f` with the viewed bytes (none when the buffer was detached).
    fn with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> JsResult<R> {
        let Some(data) = self.buffer.data() else {
            return Ok(f(&[]));
        };
        let end = self.offset.saturating_add(self.length);
        let bytes = data
            .get(self.offset..end)
            .ok_or_else(|| type_error("the view is out of its buffer's bounds"))?;
        Ok(f(bytes))
    }

    /// Calls `f` with the viewed bytes, mutably. `f` must not run JavaScript or check limits.
    fn with_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> JsResult<R> {
        let Some(mut data) = self.buffer.data_mut() else {
            return Ok(f(&mut []));
        };
        let end = self.offset.saturating_add(self.length);
        let bytes = data
            .get_mut(self.offset..end)
            .ok_or_else(|| type_error("the view is out of its buffer's bounds"))?;
        Ok(f(bytes))
    }
}

/// Calls `f` for each value `iterable` yields (its `Symbol.iterator`), checking the job's limits
/// per item and closing the iterator if `f` fails. `Ok(false)` when `iterable` has no iterator.
fn for_each_of(
    iterable: &JsObject,
    budget: &Budget,
    context: &mut Context,
    mut f: impl FnMut(JsValue, &mut Context) -> JsResult<()>,
) -> JsResult<bool> {
    let method = iterable.get(JsSymbol::iterator(), context)?;
    if method.is_null_or_undefined() {
        return Ok(false);
    }
    let method = method
        .as_callable()
        .ok_or_else(|| type_error("Symbol.iterator is not a function"))?;
    let iterator = method.call(&iterable.clone().into(), &[], context)?;
    let iterator = iterator
        .as_object()
        .ok_or_else(|| type_error("the iterator is not an object"))?;
    let next = iterator.get(js_string!("next"), context)?;
    let next = next
        .as_callable()
        .ok_or_else(|| type_error("the iterator's next is not a function"))?;
    loop {
        budget.item()?;
        let result = next.call(&iterator.clone().into(), &[], context)?;
        let result = result
            .as_object()
            .ok_or_else(|| type_error("the iterator's result is not an object"))?;
        if result.get(js_string!("done"), context)?.to_boolean() {
            return Ok(true);
        }
        let value = result.get(js_string!("value"), context)?;
        if let Err(error) = f(value, context) {
            // IteratorClose; a limit error is not for JavaScript to intercept.
            if error.as_engine().is_none()
                && let Ok(close) = iterator.get(js_string!("return"), context)
                && let Some(close) = close.as_callable()
            {
                let _ = close.call(&iterator.clone().into(), &[], context);
            }
            return Err(error);
        }
    }
}

/// Hints for globals a job author may expect and jobs do not have, by the name in Boa's
/// `ReferenceError: NAME is not defined`.
const ABSENT: &[(&str, &str)] = &[
    (
        "fetch",
        "jobs have no fetch: call a configured endpoint with mechanics:endpoint",
    ),
    (
        "XMLHttpRequest",
        "jobs have no XMLHttpRequest: call a configured endpoint with mechanics:endpoint",
    ),
    (
        "WebSocket",
        "jobs have no WebSocket: call a configured endpoint with mechanics:endpoint",
    ),
    (
        "require",
        "jobs are ES modules and have no require: use import, of the mechanics:* modules",
    ),
    (
        "process",
        "jobs have no process: settings come in the job's argument, secrets in the endpoint \
         configuration",
    ),
    (
        "Buffer",
        "jobs have no Buffer: use Uint8Array, TextEncoder/TextDecoder, or mechanics:base64 and \
         mechanics:hex",
    ),
];

/// Refines the description of an error a job threw: an error object that names itself
/// (`DOMException`s, subclasses setting `name`) is shown under its own name, and a use of a
/// global jobs do not have (`fetch`, `require`, `process`) gets a hint at the way out.
pub(crate) fn refine_description(
    error: &JsError,
    described: String,
    context: &mut Context,
) -> String {
    let described = own_name(error, described, context);
    for (name, hint) in ABSENT {
        let missing = format!("ReferenceError: {name} is not defined");
        // Boa may add where it happened: `... is not defined (unknown at :1:22)`.
        if let Some(rest) = described.strip_prefix(&missing)
            && (rest.is_empty() || rest.starts_with(' '))
        {
            return format!("{missing} ({hint}){rest}");
        }
    }
    described
}

/// `described` with its leading error kind (`Error: `) replaced by the `name` the thrown error
/// object has, when it has another one.
fn own_name(error: &JsError, described: String, context: &mut Context) -> String {
    let Some(object) = error.as_opaque().and_then(JsValue::as_object) else {
        return described;
    };
    if !object.is::<boa_engine::builtins::error::Error>() {
        return described;
    }
    let Ok(name) = object.get(js_string!("name"), context) else {
        return described;
    };
    let Some(name) = name.as_string() else {
        return described;
    };
    let name = name.to_std_string_escaped();
    match described.split_once(':') {
        Some((kind, rest)) if !name.is_empty() && kind != name && !kind.contains(' ') => {
            format!("{name}:{rest}")
        }
        None if !name.is_empty() && described != name && !described.contains(' ') => name,
        _ => described,
    }
}
