//! `mechanics:endpoint`: `endpoint(name, options)` (also the default export) calls an endpoint of
//! the job's configuration and returns a promise of `{ body, headers, status, ok }`.
//!
//! The call is checked and its request built here, synchronously; the exchange itself runs on the
//! pool's Tokio runtime while the job goes on. The job's event loop ([`EndpointCalls::settle_next`])
//! waits for finished calls when nothing else is left to run, and settles their promises, so
//! `Promise.all` over several calls runs them concurrently. Every failure, bad options included,
//! rejects the promise: a job handles all of them the same way, with `await` in `try` or `.catch`.
//! The configuration itself (URLs, header values) is never visible from JavaScript.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use boa_engine::builtins::promise::ResolvingFunctions;
use boa_engine::object::ObjectInitializer;
use boa_engine::object::builtins::JsPromise;
use boa_engine::property::Attribute;
use boa_engine::{
    Context, JsError, JsNativeError, JsObject, JsResult, JsString, JsValue, NativeFunction,
    js_string,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_lite::FutureExt as _;

use super::buffer::{ByteView, describe, type_error, uint8_array};
use crate::endpoint::http_client::EndpointHttpRequestBody;
use crate::endpoint::{
    CallError, CallInput, CallResult, EndpointBodyType, EndpointRuntime, HttpMethod, ResponseBody,
    perform,
};
use crate::engine::convert;
use crate::job::MechanicsConfig;
use crate::memory;

const FUNCTION: &str = "endpoint";

/// Calls one job may have in flight at once: enough for any fan-out a job needs, few enough that
/// a loop of calls cannot flood a server or the I/O thread.
pub(crate) const MAX_CALLS_IN_FLIGHT: usize = 64;

/// What the job's calls need: its configuration and the pool's transport.
struct Scope {
    config: MechanicsConfig,
    runtime: Arc<EndpointRuntime>,
    max_body_bytes: usize,
    /// The job's memory limit, which also bounds the response bytes its calls in flight may
    /// buffer: those sit on the shared transport thread, outside the job's own accounting.
    max_memory_bytes: usize,
}

/// A call in flight: the promise to settle, its task (aborted if the job ends first), and the
/// response bytes it may buffer.
struct Pending {
    resolvers: ResolvingFunctions,
    task: tokio::task::AbortHandle,
    response_max_bytes: usize,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Completion = (u64, Result<CallResult, CallError>);

/// The endpoint calls of one job context.
pub(crate) struct EndpointCalls {
    scope: RefCell<Option<Scope>>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
    done_sender: Sender<Completion>,
    done: Receiver<Completion>,
}

impl std::fmt::Debug for EndpointCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointCalls")
            .field("in_flight", &self.pending.borrow().len())
            .finish_non_exhaustive()
    }
}

impl EndpointCalls {
    pub(crate) fn new() -> Self {
        let (done_sender, done) = crossbeam_channel::unbounded();
        Self {
            scope: RefCell::new(None),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            done_sender,
            done,
        }
    }

    /// Makes `config`'s endpoints callable for the job about to run. Request bodies are bounded
    /// like results, by `max_body_bytes`.
    pub(crate) fn begin_job(
        &self,
        config: &MechanicsConfig,
        runtime: &Arc<EndpointRuntime>,
        max_body_bytes: usize,
        max_memory_bytes: u64,
    ) {
        self.scope.replace(Some(Scope {
            config: config.clone(),
            runtime: runtime.clone(),
            max_body_bytes,
            max_memory_bytes: usize::try_from(max_memory_bytes).unwrap_or(usize::MAX),
        }));
    }

    /// Whether a call is still in flight.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Waits until a call finishes or `deadline` passes; settles the finished call's promise.
    /// Returns `false` when the deadline passed first.
    pub(crate) fn settle_next(&self, deadline: Instant, context: &mut Context) -> JsResult<bool> {
        let (id, outcome) = match self.done.recv_deadline(deadline) {
            Ok(completion) => completion,
            Err(RecvTimeoutError::Timeout) => return Ok(false),
            // The sender lives in `self`, so this cannot happen; fail rather than spin.
            Err(RecvTimeoutError::Disconnected) => {
                return Err(call_error(
                    "endpoint: the completion channel closed (a bug in Mechanics)".to_owned(),
                ));
            }
        };
        // Take the call out before running any JavaScript: resolving may call back into
        // `endpoint` (through a `then` getter), which needs the map.
        let Some(pending) = self.pending.borrow_mut().remove(&id) else {
            return Ok(true);
        };
        let resolvers = pending.resolvers.clone();
        drop(pending);
        let value = match outcome {
            Ok(mut result) => {
                // The body was allocated on the transport thread and is freed here.
                memory::adopt(result.body.capacity());
                match result.parse_body() {
                    Ok(body) => result_object(result, body, context),
                    Err(message) => Err(call_error(message)),
                }
            }
            Err(failure) if failure.transport => transport_error(failure.message, context),
            Err(failure) => Err(call_error(failure.message)),
        };
        match value {
            Ok(value) => {
                resolvers
                    .resolve
                    .call(&JsValue::undefined(), &[value], context)?;
            }
            Err(error) => reject(&resolvers, error, context)?,
        }
        Ok(true)
    }

    /// Aborts calls in flight and drops every JavaScript value held, at the end of a job.
    pub(crate) fn clear(&self) {
        self.pending.borrow_mut().clear();
        self.scope.replace(None);
    }

    /// `endpoint(name, options)`.
    fn call(&self, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
        let (promise, resolvers) = JsPromise::new_pending(context);
        match self.start(args, context) {
            Ok((id, task, response_max_bytes)) => {
                self.pending.borrow_mut().insert(
                    id,
                    Pending {
                        resolvers,
                        task,
                        response_max_bytes,
                    },
                );
            }
            Err(error) => reject(&resolvers, error, context)?,
        }
        Ok(promise.into())
    }

    /// The job's scope and its endpoint `name`, or the error a job sees for an unknown name.
    fn lookup<'a>(
        scope: Option<&'a Scope>,
        name: &str,
    ) -> JsResult<(&'a Scope, &'a crate::endpoint::HttpEndpoint)> {
        let scope = scope.ok_or_else(|| no_endpoint(name, None))?;
        let endpoint = scope
            .config
            .endpoint(name)
            .ok_or_else(|| no_endpoint(name, Some(&scope.config)))?;
        Ok((scope, endpoint))
    }

    /// Runs `f` on the job's scope and endpoint `name`, holding the scope only while `f` runs.
    fn with_endpoint<R>(
        &self,
        name: &str,
        f: impl FnOnce(&Scope, &crate::endpoint::HttpEndpoint) -> R,
    ) -> JsResult<R> {
        let scope = self.scope.borrow();
        let (scope, endpoint) = Self::lookup(scope.as_ref(), name)?;
        Ok(f(scope, endpoint))
    }

    /// Checks the arguments, builds the request and starts the exchange.
    fn start(
        &self,
        args: &[JsValue],
        context: &mut Context,
    ) -> JsResult<(u64, tokio::task::AbortHandle, usize)> {
        let name_value = args.first().cloned().unwrap_or_default();
        let Some(name) = name_value.as_string() else {
            return Err(type_error(format!(
                "{FUNCTION}: the endpoint name must be a string, got {}",
                describe(&name_value)
            )));
        };
        let name = name.to_std_string_escaped();
        let options = args.get(1).cloned().unwrap_or_default();
        // Read the options before looking at the configuration: reading can run job code (a
        // getter), which must not observe a borrow of our state.
        let (method, body_type, max_body_bytes) =
            self.with_endpoint(&name, |scope, endpoint| {
                (
                    endpoint.method(),
                    endpoint.request_body_type(),
                    scope.max_body_bytes,
                )
            })?;
        let body = BodyRules {
            method,
            body_type,
            max_bytes: max_body_bytes,
        };
        let input = read_options(&name, &options, &body, context)?;
        if self.pending.borrow().len() >= MAX_CALLS_IN_FLIGHT {
            return Err(JsNativeError::error()
                .with_message(format!(
                    "{FUNCTION} `{name}`: {MAX_CALLS_IN_FLIGHT} calls are already in flight; \
                     await some before starting more"
                ))
                .into());
        }
        let scope = self.scope.borrow();
        let (scope, endpoint) = Self::lookup(scope.as_ref(), &name)?;
        let prepared = endpoint
            .prepare(&name, input, scope.runtime.defaults)
            .map_err(|message| JsError::from(JsNativeError::typ().with_message(message)))?;
        let response_max_bytes = prepared.response_max_bytes();
        let buffered: usize = self
            .pending
            .borrow()
            .values()
            .map(|p| p.response_max_bytes)
            .sum();
        if buffered.saturating_add(response_max_bytes) > scope.max_memory_bytes {
            return Err(JsNativeError::range()
                .with_message(format!(
                    "{FUNCTION} `{name}`: the calls in flight could buffer more response bytes \
                     than the job's memory limit of {} bytes; await some before starting more",
                    scope.max_memory_bytes
                ))
                .into());
        }
        let client = scope.runtime.client().map_err(call_error)?;
        let handle = scope.runtime.handle().map_err(call_error)?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let done = self.done_sender.clone();
        // The request body was allocated here and is freed on the transport thread.
        memory::hand_off(prepared.body_capacity());
        let task = handle.spawn(async move {
            let outcome = AssertUnwindSafe(perform(prepared, client))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(CallError {
                        message: format!("endpoint `{name}`: the HTTP transport panicked"),
                        transport: false,
                    })
                });
            // The job may be gone; then nobody is waiting and the result is dropped.
            let _ = done.send((id, outcome));
        });
        Ok((id, task.abort_handle(), response_max_bytes))
    }
}

fn call_error(message: String) -> JsError {
    JsNativeError::error().with_message(message).into()
}

/// Property set to `true` on the error of a call that could not reach its service after the
/// endpoint's own retries; an uncaught one makes the job's failure an endpoint transport failure.
pub(crate) const TRANSPORT_PROPERTY: &str = "transport";
/// Property a job sets to `true` on an error it throws to ask for another attempt; the transport
/// error of a call carries it too.
pub(crate) const RETRYABLE_PROPERTY: &str = "retryable";

/// The `Error` a call that failed in transport rejects with: `transport` and `retryable` are
/// `true` on it, so that the job can tell (and rethrow), and so that the coordinator retries a
/// job that did not handle it.
fn transport_error(message: String, context: &mut Context) -> JsResult<JsValue> {
    let error = call_error(message).into_opaque(context)?;
    if let Some(object) = error.as_object() {
        for name in [TRANSPORT_PROPERTY, RETRYABLE_PROPERTY] {
            object.set(JsString::from(name), true, false, context)?;
        }
    }
    Err(JsError::from_opaque(error))
}

fn no_endpoint(name: &str, config: Option<&MechanicsConfig>) -> JsError {
    let names: Vec<&str> = config
        .map(|c| c.endpoint_names().collect())
        .unwrap_or_default();
    let configured = if names.is_empty() {
        "the job's config has no endpoints".to_owned()
    } else {
        format!("configured endpoints: {}", names.join(", "))
    };
    JsNativeError::typ()
        .with_message(format!(
            "{FUNCTION}: no endpoint named {name:?} ({configured})"
        ))
        .into()
}

/// Rejects with `error`, unless it is uncatchable (a limit), which keeps unwinding the job.
fn reject(resolvers: &ResolvingFunctions, error: JsError, context: &mut Context) -> JsResult<()> {
    let reason = error.into_opaque(context)?;
    resolvers
        .reject
        .call(&JsValue::undefined(), &[reason], context)?;
    Ok(())
}

/// The module's exports: `endpoint`, which is also the default export.
pub(super) fn exports(calls: &Rc<EndpointCalls>) -> super::Exports {
    let calls = calls.clone();
    // SAFETY: the closure captures only an `Rc<EndpointCalls>`, whose JavaScript values (the
    // promises' resolving functions) are rooted while held and dropped by `clear` at the end of
    // the job, before the context goes.
    let function =
        unsafe { NativeFunction::from_closure(move |_, args, context| calls.call(args, context)) };
    super::Exports::with_default(vec![(FUNCTION, 2, function)], FUNCTION)
}

/// What an endpoint accepts as a request body.
struct BodyRules {
    method: HttpMethod,
    body_type: Option<EndpointBodyType>,
    max_bytes: usize,
}

/// Reads `options` (`undefined` or `{ urlParams?, queries?, headers?, body? }`).
fn read_options(
    name: &str,
    options: &JsValue,
    body: &BodyRules,
    context: &mut Context,
) -> JsResult<CallInput> {
    let mut input = CallInput::default();
    if options.is_undefined() {
        return Ok(input);
    }
    let object = plain_object(options, &format!("{FUNCTION} `{name}`: `options`"))?;
    for (key, value) in own_entries(&object, context)? {
        match key.as_str() {
            "urlParams" => input.url_params = string_record(name, &key, &value, context)?,
            "queries" => input.queries = string_record(name, &key, &value, context)?,
            "headers" => input.headers = string_record(name, &key, &value, context)?,
            "body" => {
                if !value.is_undefined() {
                    input.body = Some(read_body(name, &value, body, context)?);
                }
            }
            other => {
                return Err(type_error(format!(
                    "{FUNCTION} `{name}`: unknown option `{other}` (options are urlParams, \
                     queries, headers and body)"
                )));
            }
        }
    }
    Ok(input)
}

fn plain_object(value: &JsValue, what: &str) -> JsResult<JsObject> {
    match value.as_object() {
        Some(object) if !object.is_callable() && !object.is_array() => Ok(object.clone()),
        _ => Err(type_error(format!(
            "{what} must be an object, got {}",
            describe(value)
        ))),
    }
}

/// The own enumerable string-keyed properties of `object`, as `Object.entries` sees them.
fn own_entries(object: &JsObject, context: &mut Context) -> JsResult<Vec<(String, JsValue)>> {
    let keys = context
        .intrinsics()
        .constructors()
        .object()
        .constructor()
        .get(js_string!("keys"), context)?;
    let keys = keys
        .as_callable()
        .ok_or_else(|| type_error("Object.keys is not callable".to_owned()))?
        .call(&JsValue::undefined(), &[object.clone().into()], context)?;
    let keys = keys
        .as_object()
        .ok_or_else(|| type_error("Object.keys returned no array".to_owned()))?;
    let length = keys
        .get(js_string!("length"), context)?
        .to_length(context)?;
    let mut entries = Vec::new();
    for index in 0..length {
        let key = keys.get(index, context)?.to_string(context)?;
        let value = object.get(key.clone(), context)?;
        entries.push((key.to_std_string_escaped(), value));
    }
    Ok(entries)
}

/// An object of strings (`urlParams`, `queries`, `headers`); `undefined` is empty.
fn string_record(
    name: &str,
    field: &str,
    value: &JsValue,
    context: &mut Context,
) -> JsResult<Vec<(String, String)>> {
    if value.is_undefined() {
        return Ok(Vec::new());
    }
    let object = plain_object(value, &format!("{FUNCTION} `{name}`: `{field}`"))?;
    own_entries(&object, context)?
        .into_iter()
        .map(|(key, value)| match value.as_string() {
            Some(text) => text
                .to_std_string()
                .map(|text| (key.clone(), text))
                .map_err(|_| {
                    type_error(format!(
                        "{FUNCTION} `{name}`: `{field}.{key}` holds a lone surrogate, which is not \
                     UTF-8"
                    ))
                }),
            None => Err(type_error(format!(
                "{FUNCTION} `{name}`: `{field}.{key}` must be a string, got {}",
                describe(&value)
            ))),
        })
        .collect()
}

/// The request body in the endpoint's body type. `null` is a value (JSON `null`), not omission.
fn read_body(
    name: &str,
    value: &JsValue,
    rules: &BodyRules,
    context: &mut Context,
) -> JsResult<EndpointHttpRequestBody> {
    let max_body_bytes = rules.max_bytes;
    let Some(body_type) = rules.body_type.filter(|_| rules.method.allows_body()) else {
        return Err(type_error(format!(
            "{FUNCTION} `{name}`: {} requests carry no body, not even `null`; leave `body` out",
            rules.method
        )));
    };
    match body_type {
        EndpointBodyType::Json => {
            if value.is_callable() || value.is_symbol() {
                return Err(type_error(format!(
                    "{FUNCTION} `{name}`: `body` is a {}, which is not JSON",
                    describe(value)
                )));
            }
            let json =
                convert::result_to_json(value, max_body_bytes, context).map_err(
                    |err| {
                        match err {
                    convert::ConvertError::Thrown(error) => error,
                    convert::ConvertError::NotJson(message) => type_error(format!(
                        "{FUNCTION} `{name}`: `body` is not JSON: {message}"
                    )),
                    convert::ConvertError::TooLarge(max) => JsNativeError::range()
                        .with_message(format!(
                            "{FUNCTION} `{name}`: `body` is larger than the limit of {max} bytes"
                        ))
                        .into(),
                }
                    },
                )?;
            let bytes = serde_json::to_vec(&json).map_err(|err| {
                type_error(format!("{FUNCTION} `{name}`: `body` is not JSON: {err}"))
            })?;
            Ok(EndpointHttpRequestBody::Json(bytes))
        }
        EndpointBodyType::Utf8 => match value.as_string() {
            Some(text) => {
                let text = text.to_std_string().map_err(|_| {
                    type_error(format!(
                        "{FUNCTION} `{name}`: `body` holds a lone surrogate, which is not UTF-8"
                    ))
                })?;
                if text.len() > max_body_bytes {
                    return Err(JsNativeError::range()
                        .with_message(format!(
                            "{FUNCTION} `{name}`: `body` is larger than the limit of \
                             {max_body_bytes} bytes"
                        ))
                        .into());
                }
                Ok(EndpointHttpRequestBody::Utf8(text))
            }
            None => Err(type_error(format!(
                "{FUNCTION} `{name}`: `body` must be a string for a utf8 endpoint, got {}",
                describe(value)
            ))),
        },
        EndpointBodyType::Bytes => {
            let view = ByteView::new(value, "endpoint", context)?;
            let bytes = view.with_bytes(<[u8]>::to_vec)?;
            if bytes.len() > max_body_bytes {
                return Err(JsNativeError::range()
                    .with_message(format!(
                        "{FUNCTION} `{name}`: `body` is larger than the limit of {max_body_bytes} \
                         bytes"
                    ))
                    .into());
            }
            Ok(EndpointHttpRequestBody::Bytes(bytes))
        }
    }
}

/// `{ body, headers, status, ok }` for a finished call.
fn result_object(
    result: CallResult,
    body: ResponseBody,
    context: &mut Context,
) -> JsResult<JsValue> {
    let body = match body {
        ResponseBody::Empty => JsValue::null(),
        ResponseBody::Json(value) => {
            convert::arg_to_js(&value, context).map_err(|err| match err {
                convert::ConvertError::Thrown(error) => error,
                convert::ConvertError::NotJson(message) => {
                    type_error(format!("{FUNCTION}: the response body: {message}"))
                }
                convert::ConvertError::TooLarge(max) => {
                    type_error(format!("{FUNCTION}: the response body is over {max} bytes"))
                }
            })?
        }
        ResponseBody::Text(text) => JsString::from(text.as_str()).into(),
        ResponseBody::Bytes(bytes) => uint8_array(bytes, context)?,
    };
    let mut headers = ObjectInitializer::new(context);
    for (name, value) in result.headers {
        headers.property(
            JsString::from(name.as_str()),
            JsString::from(value.as_str()),
            Attribute::all(),
        );
    }
    let headers = headers.build();
    let object = ObjectInitializer::new(context)
        .property(js_string!("body"), body, Attribute::all())
        .property(js_string!("headers"), headers, Attribute::all())
        .property(js_string!("status"), result.status, Attribute::all())
        .property(
            js_string!("ok"),
            (200..300).contains(&result.status),
            Attribute::all(),
        )
        .build();
    Ok(object.into())
}
