//! The `console` global: captures what a job writes, formatted as people expect, within a cap.
//!
//! Formatting walks JavaScript values natively, so it is bounded by the bytes the job may still
//! write: once the cap is reached, the walk stops, however large or deep the value. Getters and
//! proxy traps it meets are the job's own (instrumented) code, so they stay under every limit.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use boa_engine::object::{FunctionObjectBuilder, ObjectInitializer};
use boa_engine::property::{Attribute, PropertyKey};
use boa_engine::{Context, JsObject, JsResult, JsString, JsValue, NativeFunction, js_string};

use super::state::JobState;
use crate::console::{ConsoleLevel, ConsoleLine, MAX_CONSOLE_BYTES};

/// How deep objects are shown inside a console message before they become `[Object]`/`[Array]`.
const MAX_DEPTH: usize = 6;

/// What a job has written so far, and how many bytes it may still write.
#[derive(Debug, Default)]
pub(crate) struct ConsoleBuffer {
    lines: Vec<ConsoleLine>,
    bytes: usize,
    truncated: bool,
    /// `Object.keys` as it was before any job code ran, so a job that replaces it does not change
    /// how its values are shown. Held here, not in the console functions' closures: a closure is
    /// not traced, so a JavaScript object it held would root the whole realm and leak it.
    object_keys: Option<JsObject>,
}

impl ConsoleBuffer {
    fn remaining(&self) -> usize {
        MAX_CONSOLE_BYTES.saturating_sub(self.bytes)
    }

    fn push(&mut self, level: ConsoleLevel, mut message: String) {
        if self.truncated {
            return;
        }
        let remaining = self.remaining();
        if message.len() > remaining {
            let mut end = remaining;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            if !message.is_empty() {
                self.lines.push(line(level, message));
            }
            self.truncated = true;
            self.lines.push(line(
                ConsoleLevel::Warn,
                format!(
                    "console output truncated: more than {MAX_CONSOLE_BYTES} bytes were written \
                     in this attempt; the rest was dropped"
                ),
            ));
            self.bytes = MAX_CONSOLE_BYTES;
            return;
        }
        self.bytes += message.len();
        self.lines.push(line(level, message));
    }

    /// Drops the JavaScript value the buffer holds, so it does not outlive its context.
    pub(crate) fn clear(&mut self) {
        self.object_keys = None;
        self.lines.clear();
    }

    /// Hands the lines over, leaving the buffer empty for the next job.
    pub(crate) fn take(&mut self) -> Vec<ConsoleLine> {
        self.bytes = 0;
        self.truncated = false;
        std::mem::take(&mut self.lines)
    }
}

fn line(level: ConsoleLevel, message: String) -> ConsoleLine {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    ConsoleLine { level, ts, message }
}

/// Defines `console` with `log`, `info`, `warn`, `error` and `debug` on the global object.
pub(crate) fn install(context: &mut Context, state: &Rc<JobState>) -> JsResult<()> {
    let object_constructor = context.intrinsics().constructors().object().constructor();
    let object_keys = object_constructor
        .get(js_string!("keys"), context)?
        .as_object()
        .ok_or_else(|| boa_engine::JsNativeError::typ().with_message("Object.keys is missing"))?;
    state.console.borrow_mut().object_keys = Some(object_keys);
    let mut console = ObjectInitializer::new(context);
    for level in [
        ConsoleLevel::Log,
        ConsoleLevel::Info,
        ConsoleLevel::Warn,
        ConsoleLevel::Error,
        ConsoleLevel::Debug,
    ] {
        let state = state.clone();
        // SAFETY: the closure captures only an `Rc<JobState>` (see `install_ticks`).
        let function = unsafe {
            NativeFunction::from_closure(move |_, args, context| {
                write(&state.console, level, args, context)?;
                Ok(JsValue::undefined())
            })
        };
        let function = FunctionObjectBuilder::new(console.context().realm(), function)
            .name(JsString::from(level.as_str()))
            .length(0)
            .build();
        console.property(
            JsString::from(level.as_str()),
            function,
            Attribute::WRITABLE | Attribute::CONFIGURABLE,
        );
    }
    let console = console.build();
    context.register_global_property(
        js_string!("console"),
        console,
        Attribute::WRITABLE | Attribute::CONFIGURABLE,
    )
}

fn write(
    buffer: &RefCell<ConsoleBuffer>,
    level: ConsoleLevel,
    args: &[JsValue],
    context: &mut Context,
) -> JsResult<()> {
    let (budget, object_keys) = {
        let buffer = buffer.borrow();
        if buffer.truncated {
            return Ok(());
        }
        let Some(object_keys) = buffer.object_keys.clone() else {
            return Ok(());
        };
        (buffer.remaining(), object_keys)
    };
    // One byte over the budget is enough to know the message must be cut.
    let mut out = Formatter {
        text: String::new(),
        budget: budget + 1,
        object_keys,
        seen: Vec::new(),
    };
    out.arguments(args, context)?;
    buffer.borrow_mut().push(level, out.text);
    Ok(())
}

struct Formatter {
    text: String,
    budget: usize,
    object_keys: JsObject,
    /// The objects being formatted, outermost first, to show cycles as `[Circular]`.
    seen: Vec<JsObject>,
}

impl Formatter {
    fn full(&self) -> bool {
        self.text.len() >= self.budget
    }

    /// The text of `string`, cut to what can still be written: a job's huge string is never
    /// copied whole.
    fn text_of(&self, string: &JsString) -> String {
        let room = self.budget.saturating_sub(self.text.len());
        if string.len() > room {
            string.slice(0, room).to_std_string_escaped()
        } else {
            string.to_std_string_escaped()
        }
    }

    fn push(&mut self, text: &str) {
        if !self.full() {
            self.text.push_str(text);
        }
    }

    /// `console.log(a, b, ...)`: a leading string with `%` directives is a format string, as in
    /// browsers and Node; every other argument follows, separated by a space.
    fn arguments(&mut self, args: &[JsValue], context: &mut Context) -> JsResult<()> {
        let mut rest = args;
        if let Some(format) = args.first().and_then(JsValue::as_string) {
            let format = self.text_of(&format);
            rest = &args[1..];
            if format.contains('%') {
                rest = self.format_string(&format, rest, context)?;
            } else {
                self.push(&format);
            }
            if !rest.is_empty() {
                self.push(" ");
            }
        }
        for (i, value) in rest.iter().enumerate() {
            if self.full() {
                break;
            }
            if i > 0 {
                self.push(" ");
            }
            self.top_level(value, context)?;
        }
        Ok(())
    }

    /// Applies `%s %d %i %f %o %O %j %c %%` to `format` and returns the arguments left over.
    fn format_string<'v>(
        &mut self,
        format: &str,
        mut args: &'v [JsValue],
        context: &mut Context,
    ) -> JsResult<&'v [JsValue]> {
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if self.full() {
                break;
            }
            if c != '%' {
                let mut buf = [0u8; 4];
                self.push(c.encode_utf8(&mut buf));
                continue;
            }
            let Some(&directive) = chars.peek() else {
                self.push("%");
                break;
            };
            if directive == '%' {
                chars.next();
                self.push("%");
                continue;
            }
            if !"sdifoOjc".contains(directive) {
                self.push("%");
                continue;
            }
            chars.next();
            let Some((value, tail)) = args.split_first() else {
                self.push("%");
                self.push(&directive.to_string());
                continue;
            };
            args = tail;
            match directive {
                's' => self.top_level(value, context)?,
                'd' | 'i' => {
                    let number = if value.is_bigint() {
                        value.to_string(context)?.to_std_string_escaped() + "n"
                    } else {
                        let n = value.to_number(context)?;
                        let n = if directive == 'i' { n.trunc() } else { n };
                        JsValue::from(n).to_string(context)?.to_std_string_escaped()
                    };
                    self.push(&number);
                }
                'f' => {
                    let n = value.to_number(context)?;
                    let text = JsValue::from(n).to_string(context)?.to_std_string_escaped();
                    self.push(&text);
                }
                'c' => {}
                _ => self.nested(value, 0, context)?,
            }
        }
        Ok(args)
    }

    /// A value given directly to `console.log`: strings as they are, errors with their stack.
    fn top_level(&mut self, value: &JsValue, context: &mut Context) -> JsResult<()> {
        if let Some(text) = value.as_string() {
            let text = self.text_of(&text);
            self.push(&text);
            return Ok(());
        }
        if let Some(object) = value.as_object()
            && object.is::<boa_engine::builtins::error::Error>()
        {
            let header = error_header(&object, context)?;
            self.push(&header);
            let stack = object.get(js_string!("stack"), context)?;
            if let Some(stack) = stack.as_string() {
                let stack = self.text_of(&stack);
                let stack = stack.trim_end();
                if !stack.is_empty() {
                    self.push("\n");
                    self.push(stack);
                }
            }
            return Ok(());
        }
        self.nested(value, 0, context)
    }

    /// A value inside another one, as compact JSON-like text.
    fn nested(&mut self, value: &JsValue, depth: usize, context: &mut Context) -> JsResult<()> {
        if self.full() {
            return Ok(());
        }
        if let Some(text) = value.as_string() {
            let quoted = serde_json::Value::String(self.text_of(&text)).to_string();
            self.push(&quoted);
            return Ok(());
        }
        if let Some(symbol) = value.as_symbol() {
            let text = symbol.descriptive_string().to_std_string_escaped();
            self.push(&text);
            return Ok(());
        }
        if value.is_bigint() {
            let text = value.to_string(context)?.to_std_string_escaped() + "n";
            self.push(&text);
            return Ok(());
        }
        if value
            .as_number()
            .is_some_and(|n| n == 0.0 && n.is_sign_negative())
        {
            self.push("-0");
            return Ok(());
        }
        let Some(object) = value.as_object() else {
            // undefined, null, booleans and numbers print as JavaScript writes them.
            let text = value.to_string(context)?.to_std_string_escaped();
            self.push(&text);
            return Ok(());
        };
        if object.is_callable() {
            let name = object.get(js_string!("name"), context)?;
            let name = name
                .as_string()
                .map(|n| n.to_std_string_escaped())
                .unwrap_or_default();
            if name.is_empty() {
                self.push("[Function (anonymous)]");
            } else {
                self.push(&format!("[Function: {name}]"));
            }
            return Ok(());
        }
        if object.is::<boa_engine::builtins::error::Error>() {
            let header = error_header(&object, context)?;
            self.push(&format!("[{header}]"));
            return Ok(());
        }
        if let Ok(date) = boa_engine::object::builtins::JsDate::from_object(object.clone()) {
            let text = match date.to_iso_string(context) {
                Ok(text) => text.to_string(context)?.to_std_string_escaped(),
                Err(_) => "Invalid Date".to_owned(),
            };
            self.push(&text);
            return Ok(());
        }
        if self.seen.iter().any(|seen| JsObject::equals(seen, &object)) {
            self.push("[Circular]");
            return Ok(());
        }
        let array = object.is_array();
        if depth >= MAX_DEPTH {
            self.push(if array { "[Array]" } else { "[Object]" });
            return Ok(());
        }
        self.seen.push(object.clone());
        let result = if array {
            self.array(&object, depth, context)
        } else {
            self.object(&object, depth, context)
        };
        self.seen.pop();
        result
    }

    fn array(&mut self, array: &JsObject, depth: usize, context: &mut Context) -> JsResult<()> {
        let length = array
            .get(js_string!("length"), context)?
            .to_length(context)?;
        self.push("[");
        for index in 0..length {
            if self.full() {
                break;
            }
            if index > 0 {
                self.push(",");
            }
            let item = array.get(index, context)?;
            self.nested(&item, depth + 1, context)?;
        }
        self.push("]");
        Ok(())
    }

    fn object(&mut self, object: &JsObject, depth: usize, context: &mut Context) -> JsResult<()> {
        let keys =
            self.object_keys
                .call(&JsValue::undefined(), &[object.clone().into()], context)?;
        let keys = keys.as_object().ok_or_else(|| {
            boa_engine::JsNativeError::typ().with_message("Object.keys did not return an array")
        })?;
        let count = keys
            .get(js_string!("length"), context)?
            .to_length(context)?;
        self.push("{");
        for index in 0..count {
            if self.full() {
                break;
            }
            if index > 0 {
                self.push(",");
            }
            let key = keys.get(index, context)?;
            let Some(key) = key.as_string() else { continue };
            let quoted = serde_json::Value::String(self.text_of(&key)).to_string();
            self.push(&quoted);
            self.push(":");
            let value = object.get(PropertyKey::from(key), context)?;
            self.nested(&value, depth + 1, context)?;
        }
        self.push("}");
        Ok(())
    }
}

/// `TypeError: message`, from the error's own `name` and `message`.
fn error_header(error: &JsObject, context: &mut Context) -> JsResult<String> {
    let name = error.get(js_string!("name"), context)?;
    let message = error.get(js_string!("message"), context)?;
    let name = if name.is_undefined() {
        "Error".to_owned()
    } else {
        capped(&name.to_string(context)?)
    };
    let message = capped(&message.to_string(context)?);
    let mut header = name;
    if !message.is_empty() {
        let _ = write!(header, ": {message}");
    }
    Ok(header)
}

/// The text of `string`, never longer than what a whole attempt may write.
fn capped(string: &JsString) -> String {
    string
        .slice(0, string.len().min(MAX_CONSOLE_BYTES + 1))
        .to_std_string_escaped()
}
