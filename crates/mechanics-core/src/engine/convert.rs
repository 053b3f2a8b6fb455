//! Conversions between JSON and JavaScript values at the job boundary.
//!
//! The result follows `JSON.stringify` rules (`toJSON`, `undefined` and functions dropped from
//! objects and turned into `null` in arrays, non-finite numbers become `null`, BigInt fails), but
//! is written without recursion limits of Boa's own: nesting deeper than [`MAX_DEPTH`] — which
//! includes every circular structure — and output larger than the job's result limit fail with a
//! clear message instead of exhausting the stack or the heap.

use boa_engine::{Context, JsObject, JsValue, js_string};

use serde_json::{Map, Number, Value};

/// Deepest nesting accepted in a result or argument; the same as `serde_json`'s parser default,
/// so a value that came in as JSON text can always go out again.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a value could not be converted.
#[derive(Debug)]
pub(crate) enum ConvertError {
    /// The value is not JSON (BigInt, too deep, circular); the message says which.
    NotJson(String),
    /// The serialized result would pass the result-size limit.
    TooLarge(usize),
    /// Reading the value ran script code (a getter, `toJSON`, a proxy) that threw.
    Thrown(boa_engine::JsError),
}

/// Converts the job's result to JSON, spending at most `max_bytes` of serialized output.
pub(crate) fn result_to_json(
    value: &JsValue,
    max_bytes: usize,
    context: &mut Context,
) -> Result<Value, ConvertError> {
    let object_keys = context
        .intrinsics()
        .constructors()
        .object()
        .constructor()
        .get(js_string!("keys"), context)
        .map_err(ConvertError::Thrown)?;
    let mut writer = JsonWriter {
        budget: max_bytes,
        max_bytes,
        object_keys,
    };
    Ok(writer
        .convert(value.clone(), &JsValue::from(js_string!("")), 0, context)?
        .unwrap_or(Value::Null))
}

struct JsonWriter {
    budget: usize,
    max_bytes: usize,
    object_keys: JsValue,
}

impl JsonWriter {
    fn spend(&mut self, bytes: usize) -> Result<(), ConvertError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or(ConvertError::TooLarge(self.max_bytes))?;
        Ok(())
    }

    /// `None` is `undefined`: the caller drops it from objects and writes `null` in arrays.
    fn convert(
        &mut self,
        mut value: JsValue,
        key: &JsValue,
        depth: usize,
        context: &mut Context,
    ) -> Result<Option<Value>, ConvertError> {
        if let Some(object) = value.as_object() {
            let to_json = object
                .get(js_string!("toJSON"), context)
                .map_err(ConvertError::Thrown)?;
            if let Some(to_json) = to_json.as_callable() {
                value = to_json
                    .call(&value, std::slice::from_ref(key), context)
                    .map_err(ConvertError::Thrown)?;
            }
        }
        if value.is_undefined() || value.is_symbol() || value.is_callable() {
            return Ok(None);
        }
        if value.is_null() {
            self.spend(4)?;
            return Ok(Some(Value::Null));
        }
        if let Some(b) = value.as_boolean() {
            self.spend(5)?;
            return Ok(Some(Value::Bool(b)));
        }
        if let Some(s) = value.as_string() {
            let s = s.to_std_string_escaped();
            self.spend(s.len() + 2)?;
            return Ok(Some(Value::String(s)));
        }
        if let Some(n) = value.as_number() {
            self.spend(24)?;
            return Ok(Some(number(n)));
        }
        if value.is_bigint() {
            return Err(ConvertError::NotJson(
                "the result contains a BigInt, which JSON cannot represent".to_owned(),
            ));
        }
        let Some(object) = value.as_object() else {
            return Ok(None);
        };
        if depth >= MAX_DEPTH {
            return Err(ConvertError::NotJson(format!(
                "the result is nested more than {MAX_DEPTH} levels deep, or is circular"
            )));
        }
        if object.is_array() {
            let length = length_of(&object, context)?;
            // Each element costs at least one byte of output, so this bounds `new Array(2 ** 32 - 1)`.
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            self.spend(2)?;
            self.spend(length)?;
            let mut items = Vec::with_capacity(length.min(1024));
            for index in 0..length {
                let item = object.get(index, context).map_err(ConvertError::Thrown)?;
                let index_key = JsValue::from(js_string!(index.to_string()));
                items.push(
                    self.convert(item, &index_key, depth + 1, context)?
                        .unwrap_or(Value::Null),
                );
            }
            return Ok(Some(Value::Array(items)));
        }
        let keys = self
            .object_keys
            .as_callable()
            .ok_or_else(|| ConvertError::NotJson("Object.keys is not callable".to_owned()))?
            .call(&JsValue::undefined(), &[value.clone()], context)
            .map_err(ConvertError::Thrown)?;
        let keys = keys
            .as_object()
            .ok_or_else(|| ConvertError::NotJson("Object.keys returned no array".to_owned()))?;
        let count = length_of(&keys, context)?;
        self.spend(2)?;
        let mut map = Map::new();
        for i in 0..count {
            let key = keys.get(i, context).map_err(ConvertError::Thrown)?;
            let Some(name) = key.as_string() else {
                continue;
            };
            let item = object
                .get(name.clone(), context)
                .map_err(ConvertError::Thrown)?;
            if let Some(item) = self.convert(item, &key, depth + 1, context)? {
                let name = name.to_std_string_escaped();
                self.spend(name.len() + 4)?;
                map.insert(name, item);
            }
        }
        Ok(Some(Value::Object(map)))
    }
}

fn length_of(object: &JsObject, context: &mut Context) -> Result<u64, ConvertError> {
    object
        .get(js_string!("length"), context)
        .and_then(|length| length.to_length(context))
        .map_err(ConvertError::Thrown)
}

fn number(n: f64) -> Value {
    if !n.is_finite() {
        return Value::Null;
    }
    // Integral values within the exactly-representable range print without a fraction, as
    // JSON.stringify does.
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// Converts the job's argument, refusing nesting deeper than [`MAX_DEPTH`] (possible only for a
/// value built in Rust) before Boa's recursive conversion can exhaust the stack.
pub(crate) fn arg_to_js(value: &Value, context: &mut Context) -> Result<JsValue, ConvertError> {
    if depth_exceeds(value, MAX_DEPTH) {
        return Err(ConvertError::NotJson(format!(
            "the argument is nested more than {MAX_DEPTH} levels deep"
        )));
    }
    JsValue::from_json(value, context).map_err(ConvertError::Thrown)
}

fn depth_exceeds(value: &Value, max: usize) -> bool {
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth >= max {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}
