//! `DOMException`: the error web APIs throw, told apart by its `name` (`InvalidCharacterError`,
//! `DataCloneError`, `QuotaExceededError`, ...), with the legacy numeric `code` where one exists.
//!
//! An instance is a real `Error` object (so it has a stack, `instanceof Error` holds and the
//! engine describes it like any error) whose prototype is `DOMException.prototype`, which in turn
//! inherits from `Error.prototype`, as in browsers.

use boa_engine::class::{Class, ClassBuilder};
use boa_engine::context::intrinsics::StandardConstructor;
use boa_engine::property::{Attribute, PropertyDescriptor};
use boa_engine::{
    Context, Finalize, JsData, JsError, JsNativeError, JsObject, JsResult, JsString, JsSymbol,
    JsValue, Trace, js_string,
};

/// The `DOMException` class; its instances are `Error` objects, so it holds no data of its own.
#[derive(Debug, Trace, Finalize, JsData)]
pub(super) struct DomException;

impl Class for DomException {
    const NAME: &'static str = "DOMException";
    const ATTRIBUTES: Attribute = Attribute::WRITABLE.union(Attribute::CONFIGURABLE);

    fn init(class: &mut ClassBuilder<'_>) -> JsResult<()> {
        class.property(
            JsSymbol::to_string_tag(),
            js_string!("DOMException"),
            Attribute::CONFIGURABLE,
        );
        Ok(())
    }

    fn data_constructor(_: &JsValue, _: &[JsValue], _: &mut Context) -> JsResult<Self> {
        Ok(Self)
    }

    /// `new DOMException(message = "", name = "Error")`.
    fn construct(
        new_target: &JsValue,
        args: &[JsValue],
        context: &mut Context,
    ) -> JsResult<JsObject> {
        let Some(new_target) = new_target.as_object() else {
            return Err(super::type_error(
                "DOMException: the constructor must be called with new",
            ));
        };
        let message = match args.first() {
            None => String::new(),
            Some(value) if value.is_undefined() => String::new(),
            Some(value) => value.to_string(context)?.to_std_string_lossy(),
        };
        let name = match args.get(1) {
            None => "Error".to_owned(),
            Some(value) if value.is_undefined() => "Error".to_owned(),
            Some(value) => value.to_string(context)?.to_std_string_lossy(),
        };
        // A subclass's instances get the subclass's prototype.
        let prototype = new_target
            .get(js_string!("prototype"), context)?
            .as_object();
        create(&name, message, prototype, context)
    }
}

/// The class, built on first use, with `DOMException.prototype` inheriting from
/// `Error.prototype`.
fn class(context: &mut Context) -> JsResult<StandardConstructor> {
    if let Some(class) = context.get_global_class::<DomException>() {
        return Ok(class);
    }
    let class = super::class::<DomException>(context)?;
    let error_prototype = context.intrinsics().constructors().error().prototype();
    class.prototype().set_prototype(Some(error_prototype));
    Ok(class)
}

/// The value of the `DOMException` global.
pub(super) fn constructor(context: &mut Context) -> JsResult<JsValue> {
    Ok(class(context)?.constructor().into())
}

/// A `DOMException` named `name` to throw (or reject with).
pub(crate) fn dom_exception(
    name: &str,
    message: impl Into<String>,
    context: &mut Context,
) -> JsError {
    match create(name, message.into(), None, context) {
        Ok(error) => JsError::from_opaque(error.into()),
        Err(error) => error,
    }
}

fn create(
    name: &str,
    message: String,
    prototype: Option<JsObject>,
    context: &mut Context,
) -> JsResult<JsObject> {
    let prototype = match prototype {
        Some(prototype) => prototype,
        None => class(context)?.prototype(),
    };
    let error = JsNativeError::error()
        .with_message(message)
        .into_opaque(context);
    error.set_prototype(Some(prototype));
    for (key, value) in [
        (js_string!("name"), JsValue::from(JsString::from(name))),
        (js_string!("code"), JsValue::from(legacy_code(name))),
    ] {
        error.define_property_or_throw(
            key,
            PropertyDescriptor::builder()
                .value(value)
                .writable(true)
                .enumerable(false)
                .configurable(true),
            context,
        )?;
    }
    Ok(error)
}

/// The legacy `code` of a `DOMException` name (WebIDL's table), 0 for names without one.
fn legacy_code(name: &str) -> u32 {
    const CODES: &[(&str, u32)] = &[
        ("IndexSizeError", 1),
        ("HierarchyRequestError", 3),
        ("WrongDocumentError", 4),
        ("InvalidCharacterError", 5),
        ("NoModificationAllowedError", 7),
        ("NotFoundError", 8),
        ("NotSupportedError", 9),
        ("InvalidStateError", 11),
        ("SyntaxError", 12),
        ("InvalidModificationError", 13),
        ("NamespaceError", 14),
        ("InvalidAccessError", 15),
        ("TypeMismatchError", 17),
        ("SecurityError", 18),
        ("NetworkError", 19),
        ("AbortError", 20),
        ("URLMismatchError", 21),
        ("QuotaExceededError", 22),
        ("TimeoutError", 23),
        ("InvalidNodeTypeError", 24),
        ("DataCloneError", 25),
    ];
    CODES
        .iter()
        .find(|(known, _)| *known == name)
        .map_or(0, |(_, code)| *code)
}
