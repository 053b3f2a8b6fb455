//! `atob` and `btoa`: base64 over "binary strings" (one character per byte), as the HTML
//! standard defines them: `btoa` refuses characters above U+00FF and `atob` decodes forgivingly
//! (ASCII whitespace skipped, padding optional), each throwing a `DOMException` named
//! `InvalidCharacterError` on bad input.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use boa_engine::string::{JsStr, JsStrVariant};
use boa_engine::{Context, JsResult, JsString, JsValue, NativeFunction};

use super::Budget;

/// The standard alphabet, decoding as the "forgiving-base64 decode" algorithm does once padding
/// and whitespace are gone: leftover bits need not be zero.
const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// The value of the `atob` global.
pub(super) fn atob_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(context, "atob", 1, NativeFunction::from_fn_ptr(atob)).into())
}

/// The value of the `btoa` global.
pub(super) fn btoa_function(context: &mut Context) -> JsResult<JsValue> {
    Ok(super::function(context, "btoa", 1, NativeFunction::from_fn_ptr(btoa)).into())
}

/// The string argument of `atob`/`btoa` (WebIDL `DOMString`: `undefined` is `"undefined"`).
fn string_arg(args: &[JsValue], function: &str, context: &mut Context) -> JsResult<JsString> {
    match args.first() {
        Some(value) => value.to_string(context),
        None => Err(super::type_error(format!(
            "{function}: 1 argument required, but only 0 present"
        ))),
    }
}

/// `btoa(data)`: the base64 of the bytes that `data`'s characters stand for.
fn btoa(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let data = string_arg(args, "btoa", context)?;
    Budget::of(context)?.chunk()?;
    let encoded = match data.as_str().variant() {
        JsStrVariant::Latin1(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
        JsStrVariant::Utf16(units) => {
            let bytes: Option<Vec<u8>> = units.iter().map(|&u| u8::try_from(u).ok()).collect();
            let Some(bytes) = bytes else {
                return Err(super::dom_exception(
                    "InvalidCharacterError",
                    "btoa: the string to be encoded contains characters outside of the Latin1 \
                     range",
                    context,
                ));
            };
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    };
    Ok(JsString::from(JsStr::latin1(encoded.as_bytes())).into())
}

/// `atob(data)`: the bytes of base64 `data`, one character each.
fn atob(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let data = string_arg(args, "atob", context)?;
    Budget::of(context)?.chunk()?;
    let invalid = |context: &mut Context| {
        super::dom_exception(
            "InvalidCharacterError",
            "atob: the string to be decoded is not correctly encoded",
            context,
        )
    };
    // Only ASCII can be valid; whitespace is dropped as the forgiving decoder does.
    let mut ascii = Vec::with_capacity(data.len());
    for unit in data.iter() {
        match u8::try_from(unit) {
            Ok(b'\t' | b'\n' | b'\x0c' | b'\r' | b' ') => {}
            Ok(byte) if byte.is_ascii() => ascii.push(byte),
            _ => return Err(invalid(context)),
        }
    }
    if ascii.len() % 4 == 0 {
        for _ in 0..2 {
            if ascii.last() == Some(&b'=') {
                ascii.pop();
            }
        }
    }
    let Ok(bytes) = FORGIVING.decode(&ascii) else {
        return Err(invalid(context));
    };
    Ok(JsString::from(JsStr::latin1(&bytes)).into())
}
