//! `structuredClone(value)`: a deep copy of plain data, as the HTML structured clone algorithm
//! makes it: primitives, plain objects and arrays (own enumerable string-keyed properties, holes
//! kept), `Date`, `RegExp`, `Map`, `Set`, `ArrayBuffer`, typed arrays, `DataView`, errors and
//! primitive wrappers. Shared references and cycles come out shared the same way. Functions,
//! symbols, proxies, promises, weak collections and other host objects throw a `DOMException`
//! named `DataCloneError`.
//!
//! The walk keeps its own work list instead of recursing, so a deeply nested value cannot
//! overflow the native stack, and it counts every value it copies against the job's limits.

use std::collections::HashMap;

use boa_engine::builtins::error::Error;
use boa_engine::builtins::object::OrdinaryObject;
use boa_engine::builtins::typed_array::TypedArrayKind;
use boa_engine::object::builtins::{
    JsArray, JsArrayBuffer, JsDataView, JsDate, JsMap, JsProxy, JsRegExp, JsSet,
    JsSharedArrayBuffer, JsTypedArray,
};
use boa_engine::{
    Context, JsBigInt, JsError, JsNativeError, JsObject, JsResult, JsString, JsSymbol, JsValue,
    NativeFunction, js_string,
};

use super::{Budget, CHUNK_BYTES};

/// The value of the `structuredClone` global.
pub(super) fn function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(
        context,
        "structuredClone",
        1,
        NativeFunction::from_fn_ptr(structured_clone),
    )
    .into())
}

/// A `DataCloneError` saying what could not be cloned.
fn data_clone_error(what: &str, context: &mut Context) -> JsError {
    super::dom_exception(
        "DataCloneError",
        format!("structuredClone: {what} could not be cloned"),
        context,
    )
}

/// `structuredClone(value, { transfer })`; transferring is not supported, so `transfer` must be
/// empty.
fn structured_clone(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let Some(value) = args.first() else {
        return Err(super::type_error(
            "structuredClone: 1 argument required, but only 0 present",
        ));
    };
    let budget = Budget::of(context)?;
    if let Some(options) = args.get(1)
        && !options.is_null_or_undefined()
    {
        let options = options
            .as_object()
            .ok_or_else(|| super::type_error("structuredClone: the options are not an object"))?;
        let transfer = options.get(js_string!("transfer"), context)?;
        if !transfer.is_undefined() {
            let transfer = transfer.as_object().ok_or_else(|| {
                super::type_error("structuredClone: transfer is not a sequence of objects")
            })?;
            let mut count = 0;
            super::for_each_of(&transfer, &budget, context, |_, _| {
                count += 1;
                Ok(())
            })?;
            if count > 0 {
                return Err(super::dom_exception(
                    "DataCloneError",
                    "structuredClone: transferring objects is not supported in jobs",
                    context,
                ));
            }
        }
    }
    let mut cloner = Cloner {
        budget,
        copies: HashMap::new(),
        to_fill: Vec::new(),
    };
    let clone = cloner.copy(value, context)?;
    while let Some(fill) = cloner.to_fill.pop() {
        cloner.fill(fill, context)?;
    }
    Ok(clone)
}

/// A copied container whose contents are still to be copied.
enum Fill {
    /// A plain object or an array: its own enumerable string-keyed properties.
    Properties {
        source: JsObject,
        target: JsObject,
    },
    Map {
        source: JsMap,
        target: JsMap,
    },
    Set {
        source: JsSet,
        target: JsSet,
    },
}

struct Cloner {
    budget: Budget,
    /// The copy of every object met so far, so shared references and cycles stay so.
    copies: HashMap<JsObject, JsObject>,
    to_fill: Vec<Fill>,
}

impl Cloner {
    /// The copy of `value`; containers come out empty and are queued to be filled.
    fn copy(&mut self, value: &JsValue, context: &mut Context) -> JsResult<JsValue> {
        let Some(object) = value.as_object() else {
            if value.is_symbol() {
                return Err(data_clone_error("a Symbol", context));
            }
            return Ok(value.clone());
        };
        if let Some(copy) = self.copies.get(&object) {
            return Ok(copy.clone().into());
        }
        self.budget.item()?;
        let copy = self.copy_object(&object, context)?;
        self.copies.insert(object, copy.clone());
        Ok(copy.into())
    }

    fn copy_object(&mut self, object: &JsObject, context: &mut Context) -> JsResult<JsObject> {
        if object.is_callable() {
            return Err(data_clone_error("a function", context));
        }
        if JsProxy::from_object(object.clone()).is_ok() {
            return Err(data_clone_error("a Proxy", context));
        }
        if let Some(copy) = self.copy_plain(object, context)? {
            return Ok(copy);
        }
        if let Some(primitive) = wrapped_primitive(object) {
            if primitive.is_symbol() {
                return Err(data_clone_error("a Symbol object", context));
            }
            return primitive.to_object(context);
        }
        if let Ok(date) = JsDate::from_object(object.clone()) {
            let time = date.get_time(context)?;
            let date = context.intrinsics().constructors().date().constructor();
            return date.construct(&[time], None, context);
        }
        if let Ok(regexp) = JsRegExp::from_object(object.clone()) {
            let source = regexp.source(context)?;
            let flags = regexp.flags(context)?;
            return Ok(
                JsRegExp::new(JsString::from(source), JsString::from(flags), context)?.into(),
            );
        }
        if JsSharedArrayBuffer::from_object(object.clone()).is_ok() {
            return Err(data_clone_error("a SharedArrayBuffer", context));
        }
        if let Ok(buffer) = JsArrayBuffer::from_object(object.clone()) {
            return self.copy_buffer(&buffer, context);
        }
        if let Ok(array) = JsTypedArray::from_object(object.clone()) {
            return self.copy_typed_array(&array, context);
        }
        if let Ok(view) = JsDataView::from_object(object.clone()) {
            let buffer = self.copy(&view.buffer(context)?, context)?;
            let offset = view.byte_offset(context)?;
            let length = view.byte_length(context)?;
            let constructor = context
                .intrinsics()
                .constructors()
                .data_view()
                .constructor();
            return constructor.construct(&[buffer, offset.into(), length.into()], None, context);
        }
        if let Ok(source) = JsMap::from_object(object.clone()) {
            let target = JsMap::new(context);
            self.to_fill.push(Fill::Map {
                source,
                target: target.clone(),
            });
            return Ok(target.into());
        }
        if let Ok(source) = JsSet::from_object(object.clone()) {
            let target = JsSet::new(context);
            self.to_fill.push(Fill::Set {
                source,
                target: target.clone(),
            });
            return Ok(target.into());
        }
        if object.is::<Error>() {
            return copy_error(object, context);
        }
        let tag = object
            .get(JsSymbol::to_string_tag(), context)?
            .as_string()
            .map_or_else(
                || "this object".to_owned(),
                |tag| format!("a {}", tag.to_std_string_escaped()),
            );
        Err(data_clone_error(&tag, context))
    }

    /// The empty copy of a plain object or an array, queued to be filled; `None` for anything
    /// else. Tried first: plain data is what jobs clone most.
    fn copy_plain(
        &mut self,
        object: &JsObject,
        context: &mut Context,
    ) -> JsResult<Option<JsObject>> {
        let target = if object.is_array() {
            let length = object.get(js_string!("length"), context)?;
            let target = JsArray::new(context)?;
            target.set(js_string!("length"), length, true, context)?;
            JsObject::from(target)
        } else if object.is::<OrdinaryObject>() {
            JsObject::with_object_proto(context.intrinsics())
        } else {
            return Ok(None);
        };
        self.to_fill.push(Fill::Properties {
            source: object.clone(),
            target: target.clone(),
        });
        Ok(Some(target))
    }

    /// A new buffer with the same bytes, copied a chunk at a time with the limits checked in
    /// between.
    fn copy_buffer(&self, source: &JsArrayBuffer, context: &mut Context) -> JsResult<JsObject> {
        let Some(length) = source.data().map(|data| data.len()) else {
            return Err(data_clone_error("a detached ArrayBuffer", context));
        };
        self.budget.chunk()?;
        let target = JsArrayBuffer::new(length, context)?;
        let mut start = 0;
        while start < length {
            let end = (start + 16 * CHUNK_BYTES).min(length);
            {
                let from = source
                    .data()
                    .ok_or_else(|| super::type_error("structuredClone: a buffer was detached"))?;
                let mut to = target
                    .data_mut()
                    .ok_or_else(|| super::type_error("structuredClone: a buffer was detached"))?;
                to[start..end].copy_from_slice(&from[start..end]);
            }
            self.budget.chunk()?;
            start = end;
        }
        Ok(target.into())
    }

    /// A typed array of the same kind over the copy of its buffer, at the same offset.
    fn copy_typed_array(
        &mut self,
        array: &JsTypedArray,
        context: &mut Context,
    ) -> JsResult<JsObject> {
        let buffer = self.copy(&array.buffer(context)?, context)?;
        let offset = array.byte_offset(context)?;
        let length = array.length(context)?;
        let constructors = context.intrinsics().constructors();
        #[allow(unreachable_patterns)] // `Float16` exists only with Boa's `float16` feature.
        let constructor = match array.kind() {
            Some(TypedArrayKind::Int8) => constructors.typed_int8_array(),
            Some(TypedArrayKind::Uint8) => constructors.typed_uint8_array(),
            Some(TypedArrayKind::Uint8Clamped) => constructors.typed_uint8clamped_array(),
            Some(TypedArrayKind::Int16) => constructors.typed_int16_array(),
            Some(TypedArrayKind::Uint16) => constructors.typed_uint16_array(),
            Some(TypedArrayKind::Int32) => constructors.typed_int32_array(),
            Some(TypedArrayKind::Uint32) => constructors.typed_uint32_array(),
            Some(TypedArrayKind::BigInt64) => constructors.typed_bigint64_array(),
            Some(TypedArrayKind::BigUint64) => constructors.typed_biguint64_array(),
            Some(TypedArrayKind::Float32) => constructors.typed_float32_array(),
            Some(TypedArrayKind::Float64) => constructors.typed_float64_array(),
            _ => return Err(data_clone_error("this typed array", context)),
        }
        .constructor();
        constructor.construct(&[buffer, offset.into(), length.into()], None, context)
    }

    /// Copies the contents of one container.
    fn fill(&mut self, fill: Fill, context: &mut Context) -> JsResult<()> {
        match fill {
            Fill::Properties { source, target } => {
                let keys =
                    OrdinaryObject::keys(&JsValue::undefined(), &[source.clone().into()], context)?;
                let keys = keys
                    .as_object()
                    .and_then(|keys| JsArray::from_object(keys).ok())
                    .ok_or_else(|| super::type_error("structuredClone: Object.keys failed"))?;
                for index in 0..keys.length(context)? {
                    self.budget.item()?;
                    let key = keys.get(index, context)?.to_property_key(context)?;
                    let value = source.get(key.clone(), context)?;
                    let copy = self.copy(&value, context)?;
                    target.create_data_property_or_throw(key, copy, context)?;
                }
            }
            Fill::Map { source, target } => {
                let entries = source.entries(context)?;
                loop {
                    self.budget.item()?;
                    let Some(entry) = iterator_value(&entries.next(context)?, context)? else {
                        break;
                    };
                    let entry = entry
                        .as_object()
                        .ok_or_else(|| super::type_error("structuredClone: a Map entry is odd"))?;
                    let key = self.copy(&entry.get(0, context)?, context)?;
                    let value = self.copy(&entry.get(1, context)?, context)?;
                    target.set(key, value, context)?;
                }
            }
            Fill::Set { source, target } => {
                let values = source.values(context)?;
                loop {
                    self.budget.item()?;
                    let Some(value) = iterator_value(&values.next(context)?, context)? else {
                        break;
                    };
                    let value = self.copy(&value, context)?;
                    target.add(value, context)?;
                }
            }
        }
        Ok(())
    }
}

/// The value of an iterator result, or `None` once it is done.
fn iterator_value(result: &JsValue, context: &mut Context) -> JsResult<Option<JsValue>> {
    let result = result
        .as_object()
        .ok_or_else(|| super::type_error("structuredClone: an iterator result is not an object"))?;
    if result.get(js_string!("done"), context)?.to_boolean() {
        return Ok(None);
    }
    Ok(Some(result.get(js_string!("value"), context)?))
}

/// The primitive inside a `Boolean`, `Number`, `String`, `BigInt` or `Symbol` object.
fn wrapped_primitive(object: &JsObject) -> Option<JsValue> {
    if let Some(value) = object.downcast_ref::<bool>() {
        return Some((*value).into());
    }
    if let Some(value) = object.downcast_ref::<f64>() {
        return Some((*value).into());
    }
    if let Some(value) = object.downcast_ref::<JsString>() {
        return Some(value.clone().into());
    }
    if let Some(value) = object.downcast_ref::<JsBigInt>() {
        return Some(value.clone().into());
    }
    object
        .downcast_ref::<JsSymbol>()
        .map(|value| value.clone().into())
}

/// An error of the same standard type (`TypeError`, ...; any other name gives `Error`) with the
/// same message, as the HTML standard copies errors.
fn copy_error(error: &JsObject, context: &mut Context) -> JsResult<JsObject> {
    let name = error.get(js_string!("name"), context)?;
    let name = name
        .as_string()
        .map(|name| name.to_std_string_escaped())
        .unwrap_or_default();
    let copy = match name.as_str() {
        "EvalError" => JsNativeError::eval(),
        "RangeError" => JsNativeError::range(),
        "ReferenceError" => JsNativeError::reference(),
        "SyntaxError" => JsNativeError::syntax(),
        "TypeError" => JsNativeError::typ(),
        "URIError" => JsNativeError::uri(),
        _ => JsNativeError::error(),
    };
    let copy = if error.has_own_property(js_string!("message"), context)? {
        let message = error
            .get(js_string!("message"), context)?
            .to_string(context)?;
        copy.with_message(message.to_std_string_lossy())
    } else {
        copy
    };
    Ok(copy.into_opaque(context))
}
