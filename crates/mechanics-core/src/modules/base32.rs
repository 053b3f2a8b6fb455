//! `mechanics:base32`: Base32 (RFC 4648 §6) and Base32hex (RFC 4648 §7) encoding of bytes.
//!
//! - `encode(bufferLike, variant = "base32")` returns uppercase text padded with `=` to a multiple
//!   of eight characters, as RFC 4648 specifies.
//! - `decode(encoded, variant = "base32")` returns a `Uint8Array`. It is case-insensitive and
//!   accepts padded and unpadded input; padded input must be padded completely (a multiple of
//!   eight characters), and the unused bits of the last symbol must be zero.

use std::sync::LazyLock;

use boa_engine::{Context, JsNativeError, JsResult, JsString, JsValue, NativeFunction};
use data_encoding::{BASE32, BASE32HEX, Encoding};

use super::buffer::{ByteView, encoded_arg, invalid_input, uint8_array, variant_arg};

/// The accepted variants.
const VARIANTS: &[&str] = &["base32", "base32hex"];

/// The decoders, built once: for each variant, one for padded and one for unpadded input, both
/// mapping lowercase letters to uppercase. `Err` holds why a decoder could not be built, which
/// would be a bug; it is reported as a JavaScript error rather than a panic.
struct Decoders {
    base32: Result<Encoding, String>,
    base32_nopad: Result<Encoding, String>,
    base32hex: Result<Encoding, String>,
    base32hex_nopad: Result<Encoding, String>,
}

static DECODERS: LazyLock<Decoders> = LazyLock::new(|| Decoders {
    base32: decoder(&BASE32, true),
    base32_nopad: decoder(&BASE32, false),
    base32hex: decoder(&BASE32HEX, true),
    base32hex_nopad: decoder(&BASE32HEX, false),
});

/// A case-insensitive decoder for the alphabet of `base`, expecting padding or not.
fn decoder(base: &Encoding, padded: bool) -> Result<Encoding, String> {
    let mut spec = base.specification();
    let upper = spec.symbols.clone();
    let lower = upper.to_ascii_lowercase();
    // Only letters need translating; digits map to themselves and the spec rejects that.
    let (from, to): (String, String) = lower
        .chars()
        .zip(upper.chars())
        .filter(|(l, u)| l != u)
        .unzip();
    spec.translate.from = from;
    spec.translate.to = to;
    if !padded {
        spec.padding = None;
    }
    spec.encoding().map_err(|err| err.to_string())
}

/// The module's exports: `encode` and `decode`, and a default object holding both.
pub(super) fn exports() -> super::Exports {
    super::Exports::named(vec![
        ("encode", 2, NativeFunction::from_fn_ptr(encode)),
        ("decode", 2, NativeFunction::from_fn_ptr(decode)),
    ])
}

/// `encode(bufferLike, variant = "base32"): string`
fn encode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "base32.encode";
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let view = ByteView::new(&arg(0), FUNCTION, context)?;
    let encoding = match variant_arg(&arg(1), FUNCTION, VARIANTS, "base32")? {
        "base32hex" => &BASE32HEX,
        _ => &BASE32,
    };
    let encoded = view.with_bytes(|bytes| encoding.encode(bytes))?;
    Ok(JsString::from(encoded).into())
}

/// `decode(encoded, variant = "base32"): Uint8Array`
fn decode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "base32.decode";
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let variant = variant_arg(&arg(1), FUNCTION, VARIANTS, "base32")?;
    let text = encoded_arg(&arg(0), FUNCTION, variant)?;
    let padded = text.contains('=');
    let decoders = &*DECODERS;
    let decoder = match (variant, padded) {
        ("base32hex", true) => &decoders.base32hex,
        ("base32hex", false) => &decoders.base32hex_nopad,
        (_, true) => &decoders.base32,
        (_, false) => &decoders.base32_nopad,
    };
    let decoder = decoder.as_ref().map_err(|err| {
        JsNativeError::error().with_message(format!("{FUNCTION}: internal error: {err}"))
    })?;
    let bytes = decoder
        .decode(text.as_bytes())
        .map_err(|err| invalid_input(FUNCTION, variant, &err.to_string()))?;
    uint8_array(bytes, context)
}
