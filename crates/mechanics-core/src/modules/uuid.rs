//! `mechanics:uuid`: UUID generation (RFC 9562).
//!
//! `uuid(variant = "v4", options?)` (also the default export) returns a lowercase hyphenated
//! UUID string:
//!
//! - `"v4"`: random.
//! - `"v3"` / `"v5"`: name-based (MD5 / SHA-1), deterministic; they need
//!   `options = { namespace, name }` where `namespace` is a UUID string and `name` a string
//!   (hashed as UTF-8).
//! - `"v6"`: time-ordered Gregorian timestamp with a random (multicast-marked) node ID.
//! - `"v7"`: Unix-millisecond timestamp with random bits; ordered within this process.
//! - `"nil"` / `"max"`: all zero / all one bits.
//!
//! `options` is ignored by the variants that do not use it.

use boa_engine::{Context, JsError, JsNativeError, JsResult, JsString, JsValue, NativeFunction};
use uuid::{Builder, Uuid};

use super::buffer::{describe, quote, type_error, variant_arg};

const FUNCTION: &str = "uuid";

/// The accepted variants.
const VARIANTS: &[&str] = &["v3", "v4", "v5", "v6", "v7", "nil", "max"];

/// The module's exports: `uuid`, which is also the default export.
pub(super) fn exports() -> super::Exports {
    super::Exports::with_default(vec![("uuid", 2, NativeFunction::from_fn_ptr(uuid))], "uuid")
}

/// `uuid(variant = "v4", options?: { namespace: string; name: string }): string`
fn uuid(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let variant = variant_arg(&arg(0), FUNCTION, VARIANTS, "v4")?;
    let uuid = match variant {
        "v3" => {
            let (namespace, name) = name_based_options(variant, &arg(1), context)?;
            Uuid::new_v3(&namespace, name.as_bytes())
        }
        "v5" => {
            let (namespace, name) = name_based_options(variant, &arg(1), context)?;
            Uuid::new_v5(&namespace, name.as_bytes())
        }
        "v6" => {
            let mut node_id = [0_u8; 6];
            random(&mut node_id)?;
            // A random node ID has the multicast bit set, so it never equals a real MAC address.
            node_id[0] |= 0x01;
            Uuid::now_v6(&node_id)
        }
        "v7" => Uuid::now_v7(),
        "nil" => Uuid::nil(),
        "max" => Uuid::max(),
        _ => {
            let mut bytes = [0_u8; 16];
            random(&mut bytes)?;
            Builder::from_random_bytes(bytes).into_uuid()
        }
    };
    Ok(JsString::from(uuid.hyphenated().to_string()).into())
}

/// The namespace and name that `options` gives for the name-based `variant`, or a `TypeError`
/// (missing or not strings) or `SyntaxError` (a namespace that is not a UUID).
fn name_based_options(
    variant: &str,
    options: &JsValue,
    context: &mut Context,
) -> JsResult<(Uuid, String)> {
    let Some(options) = options.as_object() else {
        return Err(type_error(format!(
            "{FUNCTION}: variant \"{variant}\" requires options {{ namespace, name }}, got {}",
            describe(options)
        )));
    };
    let namespace = options.get(JsString::from("namespace"), context)?;
    let Some(namespace) = namespace.as_string() else {
        return Err(type_error(format!(
            "{FUNCTION}: variant \"{variant}\" requires options.namespace to be a UUID string, got {}",
            describe(&namespace)
        )));
    };
    let namespace = namespace.to_std_string_lossy();
    let namespace = Uuid::parse_str(&namespace).map_err(|err| -> JsError {
        JsNativeError::syntax()
            .with_message(format!(
                "{FUNCTION}: options.namespace {} is not a UUID: {err}",
                quote(&namespace)
            ))
            .into()
    })?;
    let name = options.get(JsString::from("name"), context)?;
    let Some(name) = name.as_string() else {
        return Err(type_error(format!(
            "{FUNCTION}: variant \"{variant}\" requires options.name to be a string, got {}",
            describe(&name)
        )));
    };
    Ok((namespace, name.to_std_string_lossy()))
}

/// Fills `bytes` from the operating system's random source.
fn random(bytes: &mut [u8]) -> JsResult<()> {
    getrandom::fill(bytes).map_err(|err| {
        JsNativeError::error()
            .with_message(format!(
                "{FUNCTION}: the operating system's random source failed: {err}"
            ))
            .into()
    })
}
