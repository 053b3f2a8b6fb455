//! Helpers shared by the `mechanics:*` modules: reading and writing the bytes of a buffer-like
//! argument (`TypedArray | ArrayBuffer | DataView`), making a `Uint8Array`, and checking the
//! string and variant arguments.
//!
//! Every check here throws a catchable JavaScript error whose message starts with the name of the
//! function that was called (`"base64.encode: ..."`), so a job author can tell which call failed.
//! `SharedArrayBuffer`s, and views of them, are rejected: their bytes can change under us, which
//! is not a contract the modules want to offer.

use boa_engine::object::builtins::{
    JsArrayBuffer, JsDataView, JsSharedArrayBuffer, JsTypedArray, JsUint8Array,
};
use boa_engine::{Context, JsError, JsNativeError, JsResult, JsString, JsValue};

/// The bytes a buffer-like argument stands for: a range of a (non-shared) `ArrayBuffer`.
///
/// The range was checked against the buffer when the view was made; the accessors check again,
/// since nothing is cached but the offsets and a buffer can only be detached by JavaScript code,
/// which cannot run while we hold the view.
pub(super) struct ByteView {
    buffer: JsArrayBuffer,
    offset: usize,
    length: usize,
    function: &'static str,
}

impl ByteView {
    /// Resolves `value` into the bytes it views, or throws a `TypeError` naming `function` when
    /// `value` is not a `TypedArray`, `ArrayBuffer` or `DataView`, is backed by a
    /// `SharedArrayBuffer`, or its buffer is detached.
    pub(super) fn new(
        value: &JsValue,
        function: &'static str,
        context: &mut Context,
    ) -> JsResult<Self> {
        let Some(object) = value.as_object() else {
            return Err(not_buffer_like(value, function));
        };
        if JsSharedArrayBuffer::from_object(object.clone()).is_ok() {
            return Err(shared(function));
        }
        if let Ok(buffer) = JsArrayBuffer::from_object(object.clone()) {
            let length = buffer.data().ok_or_else(|| detached(function))?.len();
            return Self::checked(buffer, 0, length, function);
        }
        if let Ok(array) = JsTypedArray::from_object(object.clone()) {
            // The builtin getters are called directly, so a job cannot intercept them.
            let buffer = backing_buffer(&array.buffer(context)?, function)?;
            if buffer.data().is_none() {
                return Err(detached(function));
            }
            let offset = array.byte_offset(context)?;
            let length = array.byte_length(context)?;
            // The getters report an empty range for a view that a resizable buffer shrank out
            // from under; `at`, which validates the view first, tells those apart.
            if length == 0 {
                array
                    .at(0_i64, context)
                    .map_err(|_| out_of_bounds(function))?;
            }
            return Self::checked(buffer, offset, length, function);
        }
        if let Ok(view) = JsDataView::from_object(object) {
            let buffer = backing_buffer(&view.buffer(context)?, function)?;
            // The `DataView` getters throw their own, less specific, errors on a detached buffer
            // or a view that a resizable buffer shrank out from under.
            if buffer.data().is_none() {
                return Err(detached(function));
            }
            let offset = view
                .byte_offset(context)
                .ok()
                .and_then(|offset| usize::try_from(offset).ok())
                .ok_or_else(|| out_of_bounds(function))?;
            let length = view
                .byte_length(context)
                .ok()
                .and_then(|length| usize::try_from(length).ok())
                .ok_or_else(|| out_of_bounds(function))?;
            return Self::checked(buffer, offset, length, function);
        }
        Err(not_buffer_like(value, function))
    }

    fn checked(
        buffer: JsArrayBuffer,
        offset: usize,
        length: usize,
        function: &'static str,
    ) -> JsResult<Self> {
        let view = Self {
            buffer,
            offset,
            length,
            function,
        };
        view.with_bytes(|_| ())?;
        Ok(view)
    }

    /// Calls `f` with the viewed bytes, without copying them.
    pub(super) fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> JsResult<R> {
        let data = self.buffer.data().ok_or_else(|| detached(self.function))?;
        let end = self
            .offset
            .checked_add(self.length)
            .ok_or_else(|| out_of_bounds(self.function))?;
        let bytes = data
            .get(self.offset..end)
            .ok_or_else(|| out_of_bounds(self.function))?;
        Ok(f(bytes))
    }

    /// Calls `f` with the viewed bytes, mutably: only the view's range, never the rest of its
    /// buffer.
    pub(super) fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> JsResult<R> {
        let mut data = self
            .buffer
            .data_mut()
            .ok_or_else(|| detached(self.function))?;
        let end = self
            .offset
            .checked_add(self.length)
            .ok_or_else(|| out_of_bounds(self.function))?;
        let bytes = data
            .get_mut(self.offset..end)
            .ok_or_else(|| out_of_bounds(self.function))?;
        Ok(f(bytes))
    }
}

/// The `ArrayBuffer` behind a view, or a `TypeError` when it is shared.
fn backing_buffer(buffer: &JsValue, function: &'static str) -> JsResult<JsArrayBuffer> {
    let object = buffer.as_object().ok_or_else(|| detached(function))?;
    if JsSharedArrayBuffer::from_object(object.clone()).is_ok() {
        return Err(shared(function));
    }
    JsArrayBuffer::from_object(object).map_err(|_| shared(function))
}

/// A new `Uint8Array` (over a new `ArrayBuffer`) holding `bytes`.
pub(super) fn uint8_array(bytes: Vec<u8>, context: &mut Context) -> JsResult<JsValue> {
    Ok(JsUint8Array::from_iter(bytes, context)?.into())
}

/// The string argument `value`, or a `TypeError` saying that `what` (e.g. `"the input"`) of
/// `function` must be a string.
pub(super) fn string_arg(
    value: &JsValue,
    function: &'static str,
    what: &str,
) -> JsResult<JsString> {
    value.as_string().ok_or_else(|| {
        type_error(format!(
            "{function}: {what} must be a string, got {}",
            describe(value)
        ))
    })
}

/// The variant argument `value`: `default` when it is `undefined`, the matching entry of
/// `accepted` when it is one of them, else a `TypeError` (not a string) or a `RangeError` (an
/// unknown string) that lists the accepted values.
pub(super) fn variant_arg(
    value: &JsValue,
    function: &'static str,
    accepted: &'static [&'static str],
    default: &'static str,
) -> JsResult<&'static str> {
    if value.is_undefined() {
        return Ok(default);
    }
    let list = || {
        accepted
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(string) = value.as_string() else {
        return Err(type_error(format!(
            "{function}: the variant must be a string (one of {}), got {}",
            list(),
            describe(value)
        )));
    };
    let string = string.to_std_string_lossy();
    accepted
        .iter()
        .find(|v| **v == string)
        .copied()
        .ok_or_else(|| {
            JsNativeError::range()
                .with_message(format!(
                    "{function}: unknown variant {}, expected one of {}",
                    quote(&string),
                    list()
                ))
                .into()
        })
}

/// The encoded-text argument of a `decode` function: a string (else a `TypeError`) holding only
/// ASCII characters (else a `SyntaxError`, see [`invalid_input`]), as a Rust string.
pub(super) fn encoded_arg(
    value: &JsValue,
    function: &'static str,
    variant: &str,
) -> JsResult<String> {
    let string = string_arg(value, function, "the encoded input")?;
    let text = string.to_std_string_lossy();
    match text.chars().position(|c| !c.is_ascii()) {
        None => Ok(text),
        Some(index) => Err(invalid_input(
            function,
            variant,
            &format!("non-ASCII character at index {index}"),
        )),
    }
}

/// The `SyntaxError` a `decode` function throws when its input is not valid `variant` text.
pub(super) fn invalid_input(function: &str, variant: &str, reason: &str) -> JsError {
    JsNativeError::syntax()
        .with_message(format!("{function}: invalid {variant} input: {reason}"))
        .into()
}

/// What kind of value `value` is, for error messages: its `typeof`, except that `null`, arrays
/// and the binary types a job might confuse with the accepted ones are named as such.
pub(super) fn describe(value: &JsValue) -> String {
    if value.is_null() {
        return "null".to_owned();
    }
    let Some(object) = value.as_object() else {
        return value.type_of().to_owned();
    };
    if object.is_callable() {
        "function".to_owned()
    } else if object.is_array() {
        "array".to_owned()
    } else if JsSharedArrayBuffer::from_object(object).is_ok() {
        "SharedArrayBuffer".to_owned()
    } else {
        "object".to_owned()
    }
}

/// `text` in double quotes, escaped, and cut short when long, for error messages.
pub(super) fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() > MAX_CHARS {
        let prefix: String = text.chars().take(MAX_CHARS).collect();
        format!("{prefix:?}...")
    } else {
        format!("{text:?}")
    }
}

/// A `TypeError` with `message`.
pub(super) fn type_error(message: String) -> JsError {
    JsNativeError::typ().with_message(message).into()
}

fn not_buffer_like(value: &JsValue, function: &str) -> JsError {
    type_error(format!(
        "{function}: expected a TypedArray, ArrayBuffer or DataView, got {}",
        describe(value)
    ))
}

fn shared(function: &str) -> JsError {
    type_error(format!(
        "{function}: SharedArrayBuffer and views of one are not supported"
    ))
}

fn detached(function: &str) -> JsError {
    type_error(format!("{function}: the ArrayBuffer is detached"))
}

fn out_of_bounds(function: &str) -> JsError {
    type_error(format!(
        "{function}: the view is out of the bounds of its ArrayBuffer"
    ))
}

#[cfg(test)]
mod tests {
    //! Detaching a buffer is not possible from job code (Boa has no `ArrayBuffer.prototype.transfer`
    //! or `structuredClone`), so the detached paths are exercised from Rust.

    use boa_engine::object::builtins::{JsArrayBuffer, JsDataView, JsUint8Array};
    use boa_engine::{Context, JsValue};

    use super::ByteView;

    fn detached_message(value: &JsValue, context: &mut Context) -> String {
        match ByteView::new(value, "test.fn", context) {
            Ok(_) => panic!("a detached buffer was accepted"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn detached_buffers_and_views_are_type_errors() {
        let context = &mut Context::default();
        let buffer = JsArrayBuffer::new(8, context).expect("buffer");
        let array = JsUint8Array::from_array_buffer(buffer.clone(), context).expect("array");
        let view =
            JsDataView::from_js_array_buffer(buffer.clone(), None, None, context).expect("view");
        let before = ByteView::new(&array.clone().into(), "test.fn", context).expect("view");
        buffer.detach(&JsValue::undefined()).expect("detach");

        for value in [buffer.into(), array.into(), view.into()] {
            let message = detached_message(&value, context);
            assert!(message.contains("TypeError"), "{message}");
            assert!(
                message.contains("test.fn: the ArrayBuffer is detached"),
                "{message}"
            );
        }
        // A view resolved before the buffer was detached does not read freed bytes either.
        assert!(before.with_bytes(<[u8]>::to_vec).is_err());
        assert!(before.with_bytes_mut(|bytes| bytes.fill(1)).is_err());
    }

    #[test]
    fn views_cover_exactly_their_range() {
        let context = &mut Context::default();
        let buffer = JsArrayBuffer::new(8, context).expect("buffer");
        let view = JsDataView::from_js_array_buffer(buffer.clone(), Some(2), Some(3), context)
            .expect("view");
        let bytes = ByteView::new(&view.into(), "test.fn", context).expect("view");
        bytes.with_bytes_mut(|b| b.fill(7)).expect("fill");
        assert_eq!(buffer.to_vec(), Some(vec![0, 0, 7, 7, 7, 0, 0, 0]));
        assert_eq!(bytes.with_bytes(<[u8]>::len).expect("len"), 3);
    }
}
