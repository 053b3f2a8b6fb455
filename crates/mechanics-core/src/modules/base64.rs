//! `mechanics:base64`: Base64 (RFC 4648 §4) and Base64url (RFC 4648 §5) encoding of bytes.
//!
//! - `encode(bufferLike, variant = "base64")` returns a string: `"base64"` output is padded with
//!   `=`, `"base64url"` output is not padded.
//! - `decode(encoded, variant = "base64")` returns a `Uint8Array`; padded and unpadded input are
//!   both accepted for both variants, but padding, when present, must be complete (a multiple
//!   of four characters), and the unused bits of the last symbol must be zero.
//!   Whitespace is not skipped, and each variant accepts only its own alphabet.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use boa_engine::{Context, JsResult, JsString, JsValue, NativeFunction};

use super::buffer::{ByteView, encoded_arg, invalid_input, uint8_array, variant_arg};

/// The accepted variants.
const VARIANTS: &[&str] = &["base64", "base64url"];

/// An engine for `alphabet`: `pad` says whether encoding pads, `padding` what decoding accepts.
const fn engine(
    alphabet: &alphabet::Alphabet,
    pad: bool,
    padding: DecodePaddingMode,
) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_encode_padding(pad)
            .with_decode_padding_mode(padding),
    )
}

/// Base64: encodes with padding; decodes input that is completely padded.
const STANDARD_PADDED: GeneralPurpose = engine(
    &alphabet::STANDARD,
    true,
    DecodePaddingMode::RequireCanonical,
);
/// Base64: decodes input without padding.
const STANDARD_UNPADDED: GeneralPurpose =
    engine(&alphabet::STANDARD, false, DecodePaddingMode::RequireNone);
/// Base64url: decodes input that is completely padded.
const URL_SAFE_PADDED: GeneralPurpose = engine(
    &alphabet::URL_SAFE,
    true,
    DecodePaddingMode::RequireCanonical,
);
/// Base64url: encodes without padding; decodes input without padding.
const URL_SAFE_UNPADDED: GeneralPurpose =
    engine(&alphabet::URL_SAFE, false, DecodePaddingMode::RequireNone);

/// The module's exports: `encode` and `decode`, and a default object holding both.
pub(super) fn exports() -> super::Exports {
    super::Exports::named(vec![
        ("encode", 2, NativeFunction::from_fn_ptr(encode)),
        ("decode", 2, NativeFunction::from_fn_ptr(decode)),
    ])
}

/// `encode(bufferLike, variant = "base64"): string`
fn encode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "base64.encode";
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let view = ByteView::new(&arg(0), FUNCTION, context)?;
    let engine = match variant_arg(&arg(1), FUNCTION, VARIANTS, "base64")? {
        "base64url" => &URL_SAFE_UNPADDED,
        _ => &STANDARD_PADDED,
    };
    let encoded = view.with_bytes(|bytes| engine.encode(bytes))?;
    Ok(JsString::from(encoded).into())
}

/// `decode(encoded, variant = "base64"): Uint8Array`
fn decode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "base64.decode";
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let variant = variant_arg(&arg(1), FUNCTION, VARIANTS, "base64")?;
    let text = encoded_arg(&arg(0), FUNCTION, variant)?;
    let engine = match (variant, text.contains('=')) {
        ("base64url", true) => &URL_SAFE_PADDED,
        ("base64url", false) => &URL_SAFE_UNPADDED,
        (_, true) => &STANDARD_PADDED,
        (_, false) => &STANDARD_UNPADDED,
    };
    let bytes = engine
        .decode(text)
        .map_err(|err| invalid_input(FUNCTION, variant, &err.to_string()))?;
    uint8_array(bytes, context)
}
