//! `mechanics:rand`: cryptographically secure random bytes from the operating system.
//!
//! `fillRandom(bufferLike)` (also the default export) overwrites exactly the bytes that its
//! `TypedArray`, `ArrayBuffer` or `DataView` argument views, in place, and returns `undefined`.

use boa_engine::{Context, JsNativeError, JsResult, JsValue, NativeFunction};

use super::buffer::ByteView;

/// The module's exports: `fillRandom`, which is also the default export.
pub(super) fn exports() -> super::Exports {
    super::Exports::with_default(
        vec![("fillRandom", 1, NativeFunction::from_fn_ptr(fill_random))],
        "fillRandom",
    )
}

/// `fillRandom(bufferLike): void`
fn fill_random(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "rand.fillRandom";
    let view = ByteView::new(
        &args.first().cloned().unwrap_or_default(),
        FUNCTION,
        context,
    )?;
    view.with_bytes_mut(getrandom::fill)?.map_err(|err| {
        JsNativeError::error().with_message(format!(
            "{FUNCTION}: the operating system's random source failed: {err}"
        ))
    })?;
    Ok(JsValue::undefined())
}
