//! `mechanics:hex`: hexadecimal (RFC 4648 §8, "base16") encoding of bytes.
//!
//! - `encode(bufferLike)` returns lowercase hex, two digits per byte.
//! - `decode(encoded)` returns a `Uint8Array`; it accepts upper- and lowercase digits, and throws
//!   a `SyntaxError` on an odd length or any other character.

use boa_engine::{Context, JsResult, JsString, JsValue, NativeFunction};
use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};

use super::buffer::{ByteView, encoded_arg, invalid_input, uint8_array};

/// The module's exports: `encode` and `decode`, and a default object holding both.
pub(super) fn exports() -> super::Exports {
    super::Exports::named(vec![
        ("encode", 1, NativeFunction::from_fn_ptr(encode)),
        ("decode", 1, NativeFunction::from_fn_ptr(decode)),
    ])
}

/// `encode(bufferLike): string`
fn encode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "hex.encode";
    let view = ByteView::new(
        &args.first().cloned().unwrap_or_default(),
        FUNCTION,
        context,
    )?;
    let encoded = view.with_bytes(|bytes| HEXLOWER.encode(bytes))?;
    Ok(JsString::from(encoded).into())
}

/// `decode(encoded): Uint8Array`
fn decode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "hex.decode";
    let text = encoded_arg(&args.first().cloned().unwrap_or_default(), FUNCTION, "hex")?;
    let bytes = HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|err| invalid_input(FUNCTION, "hex", &err.to_string()))?;
    uint8_array(bytes, context)
}
