//! `mechanics:form-urlencoded`: `application/x-www-form-urlencoded` (UTF-8) encoding of string
//! records, as in HTML forms and URL query strings.
//!
//! - `encode(record)` takes an object whose own enumerable string-keyed properties all hold
//!   strings, and returns `key=value` pairs joined by `&`, with keys in lexical (code point)
//!   order so that equal records always encode to the same text. Symbol keys are ignored.
//! - `decode(params)` takes such text, with or without a leading `?`, and returns a plain object;
//!   when a key repeats, the last value wins. Every key becomes an own data property, including
//!   `__proto__`.
//!
//! Strings that are not well-formed UTF-16 (lone surrogates) are encoded with U+FFFD in their
//! place, as `URLSearchParams` does.

use std::collections::BTreeMap;

use boa_engine::property::PropertyKey;
use boa_engine::{Context, JsObject, JsResult, JsString, JsValue, NativeFunction};

use super::buffer::{describe, quote, string_arg, type_error};

/// The module's exports: `encode` and `decode`, and a default object holding both.
pub(super) fn exports() -> super::Exports {
    super::Exports::named(vec![
        ("encode", 1, NativeFunction::from_fn_ptr(encode)),
        ("decode", 1, NativeFunction::from_fn_ptr(decode)),
    ])
}

/// `encode(record: Record<string, string>): string`
fn encode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "form-urlencoded.encode";
    let record = args.first().cloned().unwrap_or_default();
    if !record.is_object() {
        return Err(type_error(format!(
            "{FUNCTION}: expected an object of string values, got {}",
            describe(&record)
        )));
    }
    // Snapshot the own enumerable properties (running any getters once, in property order) into
    // an object of plain data properties, so reading them back runs no job code.
    let snapshot = JsObject::with_null_proto();
    snapshot.copy_data_properties(&record, Vec::<PropertyKey>::new(), context)?;
    let mut pairs = BTreeMap::new();
    for key in snapshot.own_property_keys(context)? {
        let name = match &key {
            PropertyKey::String(name) => name.to_std_string_lossy(),
            PropertyKey::Index(index) => index.get().to_string(),
            PropertyKey::Symbol(_) => continue,
        };
        let value = snapshot.get(key, context)?;
        let Some(value) = value.as_string() else {
            return Err(type_error(format!(
                "{FUNCTION}: the value of key {} must be a string, got {}",
                quote(&name),
                describe(&value)
            )));
        };
        pairs.insert(name, value.to_std_string_lossy());
    }
    let mut serializer = ::form_urlencoded::Serializer::new(String::new());
    serializer.extend_pairs(&pairs);
    Ok(JsString::from(serializer.finish()).into())
}

/// `decode(params: string): Record<string, string>`
fn decode(_this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "form-urlencoded.decode";
    let params = string_arg(
        &args.first().cloned().unwrap_or_default(),
        FUNCTION,
        "the input",
    )?
    .to_std_string_lossy();
    let params = params.strip_prefix('?').unwrap_or(&params);
    let result = JsObject::with_object_proto(context.intrinsics());
    for (key, value) in ::form_urlencoded::parse(params.as_bytes()) {
        // CreateDataProperty: an own data property even for `__proto__`, and a repeated key
        // keeps its first position but takes the later value.
        result.create_data_property_or_throw(
            JsString::from(&*key),
            JsString::from(&*value),
            context,
        )?;
    }
    Ok(result.into())
}
