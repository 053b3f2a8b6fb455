//! The synthetic `mechanics:*` modules a job may import.
//!
//! These are the only modules a job can import: the engine never reads files or fetches URLs.
//! Each module is built fresh inside the job's own context, so nothing a job does to a module's
//! objects is visible to the next job.

use boa_engine::module::SyntheticModuleInitializer;
use boa_engine::object::FunctionObjectBuilder;
use boa_engine::object::ObjectInitializer;
use boa_engine::property::Attribute;
use std::rc::Rc;

use boa_engine::object::IntegrityLevel;
use boa_engine::property::{PropertyDescriptor, PropertyKey};
use boa_engine::{
    Context, JsObject, JsResult, JsString, JsSymbol, JsValue, Module, NativeFunction, js_string,
};

pub(crate) use endpoint::{EndpointCalls, RETRYABLE_PROPERTY, TRANSPORT_PROPERTY};

mod base32;
mod base64;
mod buffer;
mod endpoint;
mod form_urlencoded;
mod hex;
mod rand;
mod uuid;

/// Every specifier a job may import, for error messages and documentation.
pub(crate) const SPECIFIERS: &[&str] = &[
    "mechanics:endpoint",
    "mechanics:form-urlencoded",
    "mechanics:base64",
    "mechanics:hex",
    "mechanics:base32",
    "mechanics:rand",
    "mechanics:uuid",
];

/// The export under which every synthetic module also offers its namespace object. The engine
/// rewrites `import * as ns from "mechanics:x"` into `import { __mechanics_namespace as ns } ...`,
/// because Boa 0.22 never frees a real module namespace object (see `engine/instrument.rs`).
pub(crate) const NAMESPACE_EXPORT: &str = "__mechanics_namespace";

/// Builds the namespace object of `specifier` in the current realm of `context`, or `None` when
/// the specifier names no module of ours. `calls` serves `mechanics:endpoint`.
///
/// It behaves as a module namespace does: a null prototype, the exports (`default` included) as
/// enumerable properties in name order, `Symbol.toStringTag` `"Module"`, and frozen.
pub(crate) fn namespace(
    specifier: &str,
    calls: &Rc<EndpointCalls>,
    context: &mut Context,
) -> Option<JsResult<JsObject>> {
    let exports = match specifier {
        "mechanics:endpoint" => endpoint::exports(calls),
        "mechanics:form-urlencoded" => form_urlencoded::exports(),
        "mechanics:base64" => base64::exports(),
        "mechanics:hex" => hex::exports(),
        "mechanics:base32" => base32::exports(),
        "mechanics:rand" => rand::exports(),
        "mechanics:uuid" => uuid::exports(),
        _ => return None,
    };
    Some(build_namespace(exports, context))
}

/// The synthetic module whose exports are the properties of `namespace` (built by [`namespace`]),
/// plus the namespace itself under [`NAMESPACE_EXPORT`].
pub(crate) fn synthetic_module(namespace: &JsObject, context: &mut Context) -> JsResult<Module> {
    let mut values: Vec<(JsString, JsValue)> = Vec::new();
    for key in namespace.own_property_keys(context)? {
        if let PropertyKey::String(name) = &key {
            values.push((name.clone(), namespace.get(key.clone(), context)?));
        }
    }
    values.push((JsString::from(NAMESPACE_EXPORT), namespace.clone().into()));
    let names: Vec<JsString> = values.iter().map(|(n, _)| n.clone()).collect();
    Ok(Module::synthetic(
        &names,
        SyntheticModuleInitializer::from_copy_closure_with_captures(
            |module, values: &Vec<(JsString, JsValue)>, _context| {
                for (name, value) in values {
                    module.set_export(name, value.clone())?;
                }
                Ok(())
            },
            values,
        ),
        None,
        None,
        context,
    ))
}

/// What a synthetic module exports: named functions, and which of them (if any) is the default
/// export. Without a default function, the default export is an object holding every named
/// function, so that `import b64 from "mechanics:base64"` works as well as named imports.
pub(crate) struct Exports {
    functions: Vec<(&'static str, usize, NativeFunction)>,
    default: Option<&'static str>,
}

impl Exports {
    /// A module whose default export is an object of all its functions.
    pub(crate) fn named(functions: Vec<(&'static str, usize, NativeFunction)>) -> Self {
        Self {
            functions,
            default: None,
        }
    }

    /// A module whose default export is the function called `name` (also exported by name).
    pub(crate) fn with_default(
        functions: Vec<(&'static str, usize, NativeFunction)>,
        name: &'static str,
    ) -> Self {
        Self {
            functions,
            default: Some(name),
        }
    }
}

fn build_namespace(exports: Exports, context: &mut Context) -> JsResult<JsObject> {
    let mut values: Vec<(JsString, JsValue)> = Vec::with_capacity(exports.functions.len() + 1);
    for (name, length, function) in exports.functions {
        let object = FunctionObjectBuilder::new(context.realm(), function)
            .name(JsString::from(name))
            .length(length)
            .build();
        values.push((JsString::from(name), object.into()));
    }
    let default = match exports.default {
        Some(name) => values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        None => {
            let mut object = ObjectInitializer::new(context);
            for (name, value) in &values {
                object.property(name.clone(), value.clone(), Attribute::all());
            }
            object.build().into()
        }
    };
    values.push((js_string!("default"), default));
    values.sort_by(|(a, _), (b, _)| a.cmp(b));
    let namespace = JsObject::with_null_proto();
    for (name, value) in values {
        namespace.define_property_or_throw(
            name,
            PropertyDescriptor::builder()
                .value(value)
                .writable(true)
                .enumerable(true)
                .configurable(false),
            context,
        )?;
    }
    namespace.define_property_or_throw(
        JsSymbol::to_string_tag(),
        PropertyDescriptor::builder()
            .value(js_string!("Module"))
            .writable(false)
            .enumerable(false)
            .configurable(false),
        context,
    )?;
    namespace.set_integrity_level(IntegrityLevel::Frozen, context)?;
    Ok(namespace)
}
