//! `TextEncoder` and `TextDecoder` (the Encoding standard, UTF-8 only): `encode`, `encodeInto`,
//! and `decode` with the `fatal`, `ignoreBOM` and `stream` options.
//!
//! Both walk the job's data in chunks of [`CHUNK_BYTES`] and check the job's limits between two
//! chunks, so a huge string or buffer cannot keep the thread past the time limit, and an output
//! is never allocated in one piece larger than what the job already holds.

use std::cell::RefCell;

use boa_engine::builtins::typed_array::TypedArrayKind;
use boa_engine::class::{Class, ClassBuilder};
use boa_engine::object::ObjectInitializer;
use boa_engine::object::builtins::{JsArrayBuffer, JsTypedArray, JsUint8Array};
use boa_engine::property::Attribute;
use boa_engine::string::{JsStr, JsStrVariant};
use boa_engine::{
    Context, Finalize, JsData, JsResult, JsString, JsSymbol, JsValue, NativeFunction, Trace,
    js_string,
};

use super::{Budget, Bytes, CHUNK_BYTES};

/// The value of the `TextEncoder` global.
pub(super) fn encoder_constructor(context: &mut Context) -> JsResult<JsValue> {
    super::constructor_of::<TextEncoder>(context)
}

/// The value of the `TextDecoder` global.
pub(super) fn decoder_constructor(context: &mut Context) -> JsResult<JsValue> {
    super::constructor_of::<TextDecoder>(context)
}

/// `TextEncoder`: UTF-8 is its only encoding, so it holds nothing.
#[derive(Debug, Trace, Finalize, JsData)]
pub(super) struct TextEncoder;

impl Class for TextEncoder {
    const NAME: &'static str = "TextEncoder";
    const ATTRIBUTES: Attribute = Attribute::WRITABLE.union(Attribute::CONFIGURABLE);

    fn init(class: &mut ClassBuilder<'_>) -> JsResult<()> {
        let encoding = super::function(
            class.context(),
            "get encoding",
            0,
            NativeFunction::from_fn_ptr(|this, _, _| {
                super::this_instance::<TextEncoder>(this, "TextEncoder.prototype.encoding")?;
                Ok(js_string!("utf-8").into())
            }),
        );
        class
            .accessor(
                js_string!("encoding"),
                Some(encoding),
                None,
                Attribute::CONFIGURABLE,
            )
            .method(js_string!("encode"), 0, NativeFunction::from_fn_ptr(encode))
            .method(
                js_string!("encodeInto"),
                2,
                NativeFunction::from_fn_ptr(encode_into),
            )
            .property(
                JsSymbol::to_string_tag(),
                js_string!("TextEncoder"),
                Attribute::CONFIGURABLE,
            );
        Ok(())
    }

    fn data_constructor(_: &JsValue, _: &[JsValue], _: &mut Context) -> JsResult<Self> {
        Ok(Self)
    }
}

/// The characters of a string with the number of UTF-16 code units each took: lone surrogates
/// become U+FFFD, as WebIDL's `USVString` conversion says.
fn chars_of<'a>(string: &'a JsStr<'a>) -> Box<dyn Iterator<Item = (char, usize)> + 'a> {
    match string.variant() {
        JsStrVariant::Latin1(bytes) => Box::new(bytes.iter().map(|&b| (char::from(b), 1))),
        JsStrVariant::Utf16(units) => Box::new(char::decode_utf16(units.iter().copied()).map(
            |decoded| match decoded {
                Ok(c) => (c, c.len_utf16()),
                Err(_) => (char::REPLACEMENT_CHARACTER, 1),
            },
        )),
    }
}

/// The string argument at `index` (`undefined` or absent is `""`).
fn string_or_empty(args: &[JsValue], index: usize, context: &mut Context) -> JsResult<JsString> {
    match args.get(index) {
        None => Ok(js_string!()),
        Some(value) if value.is_undefined() => Ok(js_string!()),
        Some(value) => value.to_string(context),
    }
}

/// Calls `sink` with the UTF-8 encoding of `string`, in pieces of about [`CHUNK_BYTES`], and
/// checks the job's limits after each.
fn utf8_pieces(
    string: &JsString,
    budget: &Budget,
    mut sink: impl FnMut(&[u8]) -> JsResult<()>,
) -> JsResult<()> {
    let str = string.as_str();
    if let JsStrVariant::Latin1(bytes) = str.variant()
        && bytes.is_ascii()
    {
        for piece in bytes.chunks(CHUNK_BYTES) {
            sink(piece)?;
            budget.chunk()?;
        }
        return Ok(());
    }
    let mut piece = Vec::with_capacity(CHUNK_BYTES + 4);
    for (c, _) in chars_of(&str) {
        let mut buf = [0; 4];
        piece.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        if piece.len() >= CHUNK_BYTES {
            sink(&piece)?;
            piece.clear();
            budget.chunk()?;
        }
    }
    sink(&piece)
}

/// How many bytes the UTF-8 encoding of `string` takes.
fn utf8_length(string: &JsString, budget: &Budget) -> JsResult<usize> {
    let mut length = 0;
    match string.as_str().variant() {
        JsStrVariant::Latin1(bytes) => {
            for chunk in bytes.chunks(CHUNK_BYTES) {
                length += chunk.len() + chunk.iter().filter(|b| !b.is_ascii()).count();
                budget.chunk()?;
            }
        }
        JsStrVariant::Utf16(units) => {
            // A high surrogate counts 3 bytes (U+FFFD, if it stays alone) and its low half 1.
            let mut after_high = false;
            for chunk in units.chunks(CHUNK_BYTES) {
                for &unit in chunk {
                    let pairs = after_high && (0xDC00..0xE000).contains(&unit);
                    after_high = !pairs && (0xD800..0xDC00).contains(&unit);
                    length += match unit {
                        _ if pairs => 1,
                        0..0x80 => 1,
                        0x80..0x800 => 2,
                        _ => 3,
                    };
                }
                budget.chunk()?;
            }
        }
    }
    Ok(length)
}

/// `TextEncoder.prototype.encode(input = "")`: a new `Uint8Array` of the UTF-8 bytes.
fn encode(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    super::this_instance::<TextEncoder>(this, "TextEncoder.prototype.encode")?;
    let input = string_or_empty(args, 0, context)?;
    let budget = Budget::of(context)?;
    let length = utf8_length(&input, &budget)?;
    budget.chunk()?;
    let buffer = JsArrayBuffer::new(length, context)?;
    let mut written = 0;
    utf8_pieces(&input, &budget, |piece| {
        let mut data = buffer
            .data_mut()
            .ok_or_else(|| super::type_error("TextEncoder.prototype.encode: buffer detached"))?;
        let end = written + piece.len();
        data.get_mut(written..end)
            .ok_or_else(|| super::type_error("TextEncoder.prototype.encode: length mismatch"))?
            .copy_from_slice(piece);
        written = end;
        Ok(())
    })?;
    Ok(JsUint8Array::from_array_buffer(buffer, context)?.into())
}

/// `TextEncoder.prototype.encodeInto(source, destination)`: writes as many whole characters as
/// fit into the `Uint8Array`, and returns `{ read, written }` (UTF-16 code units read, bytes
/// written).
fn encode_into(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const METHOD: &str = "TextEncoder.prototype.encodeInto";
    super::this_instance::<TextEncoder>(this, METHOD)?;
    let source = string_or_empty(args, 0, context)?;
    let destination = args.get(1).cloned().unwrap_or_default();
    let is_uint8 = destination
        .as_object()
        .and_then(|object| JsTypedArray::from_object(object).ok())
        .is_some_and(|array| array.kind() == Some(TypedArrayKind::Uint8));
    if !is_uint8 {
        return Err(super::type_error(format!(
            "{METHOD}: the destination must be a Uint8Array"
        )));
    }
    let destination = Bytes::of(&destination, METHOD, context)?;
    let budget = Budget::of(context)?;
    let str = source.as_str();
    let mut chars = chars_of(&str).peekable();
    let (mut read, mut written) = (0_usize, 0_usize);
    let capacity = destination.len();
    loop {
        // Write one chunk under the borrow, then look at the limits with the borrow released.
        let done = destination.with_mut(|bytes| {
            let stop = (written + CHUNK_BYTES).min(capacity);
            while let Some(&(c, units)) = chars.peek() {
                let size = c.len_utf8();
                if written + size > capacity {
                    return true;
                }
                if written + size > stop {
                    return false;
                }
                c.encode_utf8(&mut bytes[written..written + size]);
                written += size;
                read += units;
                chars.next();
            }
            true
        })?;
        if done {
            break;
        }
        budget.chunk()?;
    }
    let result = ObjectInitializer::new(context)
        .property(js_string!("read"), read, Attribute::all())
        .property(js_string!("written"), written, Attribute::all())
        .build();
    Ok(result.into())
}

/// The labels of UTF-8 in the Encoding standard; the only encoding a job's `TextDecoder` has.
const UTF8_LABELS: &[&str] = &[
    "unicode-1-1-utf-8",
    "unicode11utf8",
    "unicode20utf8",
    "utf-8",
    "utf8",
    "x-unicode20utf8",
];

/// What a streaming decoder carries from one `decode` call to the next.
#[derive(Debug, Default)]
struct StreamState {
    /// The start of a character cut off at the end of the previous chunk.
    pending: Vec<u8>,
    /// Whether the stream has produced a character yet (only a first one can be a BOM).
    started: bool,
}

/// `TextDecoder` (UTF-8).
#[derive(Debug, Trace, Finalize, JsData)]
pub(super) struct TextDecoder {
    fatal: bool,
    ignore_bom: bool,
    // No JavaScript values inside: bytes and a flag.
    #[unsafe_ignore_trace]
    stream: RefCell<StreamState>,
}

/// `options[key]` of a WebIDL dictionary argument, as a boolean (`false` when absent).
fn dictionary_flag(
    options: Option<&JsValue>,
    key: JsString,
    what: &str,
    context: &mut Context,
) -> JsResult<bool> {
    match options {
        None => Ok(false),
        Some(options) if options.is_null_or_undefined() => Ok(false),
        Some(options) => {
            let options = options.as_object().ok_or_else(|| {
                super::type_error(format!("{what}: the options are not an object"))
            })?;
            Ok(options.get(key, context)?.to_boolean())
        }
    }
}

/// Reads one property of a `TextDecoder`.
type DecoderGetter = fn(&TextDecoder) -> JsValue;

impl Class for TextDecoder {
    const NAME: &'static str = "TextDecoder";
    const ATTRIBUTES: Attribute = Attribute::WRITABLE.union(Attribute::CONFIGURABLE);

    fn init(class: &mut ClassBuilder<'_>) -> JsResult<()> {
        let getters: [(&str, DecoderGetter); 3] = [
            ("encoding", |_| js_string!("utf-8").into()),
            ("fatal", |decoder| decoder.fatal.into()),
            ("ignoreBOM", |decoder| decoder.ignore_bom.into()),
        ];
        for (name, get) in getters {
            let getter = super::function(
                class.context(),
                &format!("get {name}"),
                0,
                NativeFunction::from_copy_closure(move |this, _, _| {
                    let decoder =
                        super::this_instance::<TextDecoder>(this, "TextDecoder.prototype")?;
                    Ok(get(decoder.borrow().data()))
                }),
            );
            class.accessor(
                JsString::from(name),
                Some(getter),
                None,
                Attribute::CONFIGURABLE,
            );
        }
        class
            .method(js_string!("decode"), 0, NativeFunction::from_fn_ptr(decode))
            .property(
                JsSymbol::to_string_tag(),
                js_string!("TextDecoder"),
                Attribute::CONFIGURABLE,
            );
        Ok(())
    }

    /// `new TextDecoder(label = "utf-8", { fatal, ignoreBOM })`.
    fn data_constructor(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<Self> {
        if let Some(label) = args.first()
            && !label.is_undefined()
        {
            let label = label.to_string(context)?.to_std_string_lossy();
            let trimmed = label
                .trim_matches(['\t', '\n', '\x0c', '\r', ' '])
                .to_ascii_lowercase();
            if !UTF8_LABELS.contains(&trimmed.as_str()) {
                return Err(boa_engine::JsNativeError::range()
                    .with_message(format!(
                        "TextDecoder: the encoding label provided ('{label}') is invalid or not \
                         supported (jobs decode UTF-8 only)"
                    ))
                    .into());
            }
        }
        let options = args.get(1);
        Ok(Self {
            fatal: dictionary_flag(options, js_string!("fatal"), "TextDecoder", context)?,
            ignore_bom: dictionary_flag(options, js_string!("ignoreBOM"), "TextDecoder", context)?,
            stream: RefCell::default(),
        })
    }
}

/// Why decoding stopped early.
enum DecodeError {
    /// Invalid UTF-8 in a `fatal` decoder.
    Invalid,
    /// A limit of the job was hit.
    Limit(boa_engine::JsError),
}

/// Decodes `bytes` as UTF-8 into UTF-16 code units, replacing each maximal invalid subpart
/// with U+FFFD (or failing when `fatal`). With `stream`, an incomplete character at the end
/// is returned as the bytes to carry into the next call.
fn decode_utf8(
    bytes: &[u8],
    stream: bool,
    fatal: bool,
    budget: &Budget,
) -> Result<(Vec<u16>, Vec<u8>), DecodeError> {
    let mut out: Vec<u16> = Vec::new();
    let mut position = 0;
    let mut next_check = 0;
    while position < bytes.len() {
        if position >= next_check {
            budget.chunk().map_err(DecodeError::Limit)?;
            next_check = position + CHUNK_BYTES;
        }
        let end = (position + CHUNK_BYTES).min(bytes.len());
        let window = &bytes[position..end];
        match std::str::from_utf8(window) {
            Ok(text) => {
                out.extend(text.encode_utf16());
                position = end;
            }
            Err(error) => {
                let valid = error.valid_up_to();
                let text = std::str::from_utf8(&window[..valid]).unwrap_or_default();
                out.extend(text.encode_utf16());
                match error.error_len() {
                    Some(invalid) => {
                        if fatal {
                            return Err(DecodeError::Invalid);
                        }
                        out.push(0xFFFD);
                        position += valid + invalid;
                    }
                    // A character cut by the window's end: the next window starts with it.
                    None if end < bytes.len() => position += valid,
                    None if stream => {
                        return Ok((out, bytes[position + valid..].to_vec()));
                    }
                    None => {
                        if fatal {
                            return Err(DecodeError::Invalid);
                        }
                        out.push(0xFFFD);
                        position = bytes.len();
                    }
                }
            }
        }
    }
    Ok((out, Vec::new()))
}

/// `TextDecoder.prototype.decode(input, { stream })`.
fn decode(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const METHOD: &str = "TextDecoder.prototype.decode";
    let decoder = super::this_instance::<TextDecoder>(this, METHOD)?;
    let input = match args.first() {
        None => None,
        Some(value) if value.is_undefined() => None,
        Some(value) => Some(Bytes::of(value, METHOD, context)?),
    };
    let stream = dictionary_flag(args.get(1), js_string!("stream"), METHOD, context)?;
    let budget = Budget::of(context)?;
    let decoder = decoder.borrow();
    let decoder = decoder.data();
    let mut state = decoder.stream.borrow_mut();
    let pending = std::mem::take(&mut state.pending);

    let ascii_only = pending.is_empty()
        && input
            .as_ref()
            .map_or(Ok(true), |input| input.with(<[u8]>::is_ascii))?;
    let string = if ascii_only {
        // Nothing to decode: ASCII is its own Latin1 string (the common case, JSON bodies).
        budget.chunk()?;
        let string = match &input {
            Some(input) => input.with(|bytes| JsString::from(JsStr::latin1(bytes)))?,
            None => js_string!(),
        };
        state.started |= !string.is_empty();
        string
    } else {
        let decoded = match &input {
            Some(input) => input.with(|bytes| {
                if pending.is_empty() {
                    decode_utf8(bytes, stream, decoder.fatal, &budget)
                } else {
                    decode_utf8(
                        &[&pending[..], bytes].concat(),
                        stream,
                        decoder.fatal,
                        &budget,
                    )
                }
            })?,
            None => decode_utf8(&pending, stream, decoder.fatal, &budget),
        };
        let (mut units, carried) = match decoded {
            Ok(decoded) => decoded,
            Err(DecodeError::Limit(error)) => return Err(error),
            Err(DecodeError::Invalid) => {
                *state = StreamState::default();
                return Err(super::type_error(format!(
                    "{METHOD}: the encoded data was not valid for encoding utf-8"
                )));
            }
        };
        if !decoder.ignore_bom && !state.started && units.first() == Some(&0xFEFF) {
            units.remove(0);
            state.started = true;
        }
        state.started |= !units.is_empty();
        state.pending = carried;
        budget.chunk()?;
        JsString::from(&units[..])
    };
    if !stream {
        *state = StreamState::default();
    }
    Ok(string.into())
}
