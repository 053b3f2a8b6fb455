//! `crypto`: `randomUUID()`, `getRandomValues(typedArray)` and the part of `crypto.subtle` that
//! signing calls to third-party APIs needs: `digest` (SHA-1/256/384/512) and HMAC keys
//! (`importKey("raw", ...)`, `sign`, `verify`), over the RustCrypto `sha1`, `sha2` and `hmac`
//! crates and the operating system's random source.
//!
//! As in browsers, `crypto.subtle` methods return promises and report every error, bad
//! arguments included, as a rejection (a `DOMException` where the standard names one); only a
//! limit of the job stops it outright. Key material stays in Rust: a `CryptoKey` shows its
//! algorithm and usages, never its bytes.

use boa_engine::builtins::typed_array::TypedArrayKind;
use boa_engine::object::ObjectInitializer;
use boa_engine::object::builtins::{AlignedVec, JsArray, JsArrayBuffer, JsPromise, JsTypedArray};
use boa_engine::property::Attribute;
use boa_engine::{
    Context, Finalize, JsData, JsObject, JsResult, JsString, JsSymbol, JsValue, NativeFunction,
    Trace, js_string,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Digest;

use super::{Budget, Bytes, CHUNK_BYTES};

/// The most bytes one `getRandomValues` call may fill, as the Web Crypto standard says.
const MAX_RANDOM_BYTES: usize = 65_536;

/// The value of the `crypto` global.
pub(super) fn object(context: &mut Context) -> JsResult<JsValue> {
    let subtle = ObjectInitializer::new(context)
        .function(NativeFunction::from_fn_ptr(digest), js_string!("digest"), 2)
        .function(
            NativeFunction::from_fn_ptr(import_key),
            js_string!("importKey"),
            5,
        )
        .function(NativeFunction::from_fn_ptr(sign), js_string!("sign"), 3)
        .function(NativeFunction::from_fn_ptr(verify), js_string!("verify"), 4)
        .property(
            JsSymbol::to_string_tag(),
            js_string!("SubtleCrypto"),
            Attribute::CONFIGURABLE,
        )
        .build();
    let crypto = ObjectInitializer::new(context)
        .function(
            NativeFunction::from_fn_ptr(random_uuid),
            js_string!("randomUUID"),
            0,
        )
        .function(
            NativeFunction::from_fn_ptr(get_random_values),
            js_string!("getRandomValues"),
            1,
        )
        .property(
            js_string!("subtle"),
            subtle,
            Attribute::ENUMERABLE | Attribute::CONFIGURABLE,
        )
        .property(
            JsSymbol::to_string_tag(),
            js_string!("Crypto"),
            Attribute::CONFIGURABLE,
        )
        .build();
    Ok(crypto.into())
}

/// `crypto.randomUUID()`: a random (version 4) UUID, lowercase with hyphens.
fn random_uuid(_: &JsValue, _: &[JsValue], _: &mut Context) -> JsResult<JsValue> {
    Ok(JsString::from(uuid::Uuid::new_v4().hyphenated().to_string()).into())
}

/// `crypto.getRandomValues(typedArray)`: fills an integer typed array of at most 65,536 bytes
/// with cryptographically secure random bytes and returns it.
fn get_random_values(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "crypto.getRandomValues";
    let value = args.first().cloned().unwrap_or_default();
    let Some(array) = value
        .as_object()
        .and_then(|object| JsTypedArray::from_object(object).ok())
    else {
        return Err(super::type_error(format!(
            "{FUNCTION}: the argument must be an integer TypedArray"
        )));
    };
    let integer = matches!(
        array.kind(),
        Some(
            TypedArrayKind::Int8
                | TypedArrayKind::Uint8
                | TypedArrayKind::Uint8Clamped
                | TypedArrayKind::Int16
                | TypedArrayKind::Uint16
                | TypedArrayKind::Int32
                | TypedArrayKind::Uint32
                | TypedArrayKind::BigInt64
                | TypedArrayKind::BigUint64
        )
    );
    if !integer {
        return Err(super::dom_exception(
            "TypeMismatchError",
            format!("{FUNCTION}: the array must hold integers, not floating-point numbers"),
            context,
        ));
    }
    let bytes = Bytes::of(&value, FUNCTION, context)?;
    if bytes.len() > MAX_RANDOM_BYTES {
        return Err(super::dom_exception(
            "QuotaExceededError",
            format!(
                "{FUNCTION}: the array is {} bytes long, more than the {MAX_RANDOM_BYTES} bytes \
                 of entropy one call may ask for",
                bytes.len()
            ),
            context,
        ));
    }
    bytes.with_mut(getrandom::fill)?.map_err(|err| {
        boa_engine::JsNativeError::error().with_message(format!(
            "{FUNCTION}: the operating system's random source failed: {err}"
        ))
    })?;
    Ok(value)
}

/// The hash functions of `digest` and HMAC keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    const ALL: [(Self, &'static str); 4] = [
        (Self::Sha1, "SHA-1"),
        (Self::Sha256, "SHA-256"),
        (Self::Sha384, "SHA-384"),
        (Self::Sha512, "SHA-512"),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(hash, _)| *hash == self)
            .map_or("", |(_, name)| name)
    }

    /// The hash an algorithm identifier (`"SHA-256"` or `{ name: "SHA-256" }`) names.
    fn of(algorithm: &JsValue, what: &str, context: &mut Context) -> JsResult<Self> {
        let name = algorithm_name(algorithm, what, context)?;
        Self::ALL
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(&name))
            .map(|(hash, _)| *hash)
            .ok_or_else(|| {
                super::dom_exception(
                    "NotSupportedError",
                    format!(
                        "{what}: the algorithm {name:?} is not supported (SHA-1, SHA-256, \
                         SHA-384 and SHA-512 are)"
                    ),
                    context,
                )
            })
    }

    fn digest(self, data: &Bytes, budget: &Budget) -> JsResult<Vec<u8>> {
        match self {
            Self::Sha1 => digest_with::<sha1::Sha1>(data, budget),
            Self::Sha256 => digest_with::<sha2::Sha256>(data, budget),
            Self::Sha384 => digest_with::<sha2::Sha384>(data, budget),
            Self::Sha512 => digest_with::<sha2::Sha512>(data, budget),
        }
    }

    fn hmac(
        self,
        key: &[u8],
        data: &Bytes,
        check: MacCheck<'_>,
        budget: &Budget,
    ) -> JsResult<MacOutcome> {
        match self {
            Self::Sha1 => hmac_with::<Hmac<sha1::Sha1>>(key, data, check, budget),
            Self::Sha256 => hmac_with::<Hmac<sha2::Sha256>>(key, data, check, budget),
            Self::Sha384 => hmac_with::<Hmac<sha2::Sha384>>(key, data, check, budget),
            Self::Sha512 => hmac_with::<Hmac<sha2::Sha512>>(key, data, check, budget),
        }
    }
}

/// Feeds `data` to `update` a chunk at a time, checking the job's limits in between.
fn feed(data: &Bytes, budget: &Budget, mut update: impl FnMut(&[u8])) -> JsResult<()> {
    data.with(|bytes| {
        for chunk in bytes.chunks(16 * CHUNK_BYTES) {
            update(chunk);
            budget.chunk()?;
        }
        Ok(())
    })?
}

fn digest_with<D: Digest>(data: &Bytes, budget: &Budget) -> JsResult<Vec<u8>> {
    let mut hasher = D::new();
    feed(data, budget, |chunk| hasher.update(chunk))?;
    Ok(hasher.finalize().to_vec())
}

/// What an HMAC computation is for.
enum MacCheck<'a> {
    Sign,
    Verify(&'a [u8]),
}

enum MacOutcome {
    Signature(Vec<u8>),
    Verified(bool),
}

fn hmac_with<M: Mac + KeyInit>(
    key: &[u8],
    data: &Bytes,
    check: MacCheck<'_>,
    budget: &Budget,
) -> JsResult<MacOutcome> {
    let mut mac = <M as KeyInit>::new_from_slice(key)
        .map_err(|_| super::type_error("HMAC: the key length is invalid"))?;
    feed(data, budget, |chunk| mac.update(chunk))?;
    Ok(match check {
        MacCheck::Sign => MacOutcome::Signature(mac.finalize().into_bytes().to_vec()),
        // Constant time, so a caller cannot learn a signature byte by byte.
        MacCheck::Verify(signature) => MacOutcome::Verified(mac.verify_slice(signature).is_ok()),
    })
}

/// The `name` of an algorithm identifier: a string, or an object with a `name`.
fn algorithm_name(algorithm: &JsValue, what: &str, context: &mut Context) -> JsResult<String> {
    let name = match algorithm.as_object() {
        Some(object) => object.get(js_string!("name"), context)?,
        None => algorithm.clone(),
    };
    if name.is_undefined() {
        return Err(super::type_error(format!(
            "{what}: the algorithm has no name"
        )));
    }
    Ok(name.to_string(context)?.to_std_string_lossy())
}

/// A promise settled with `result`: web crypto reports errors as rejections. A limit of the job
/// is not for JavaScript to catch, so it stops the job instead.
fn settle(result: JsResult<JsValue>, context: &mut Context) -> JsResult<JsValue> {
    let promise = match result {
        Ok(value) => JsPromise::resolve(value, context)?,
        Err(error) if error.as_engine().is_none() => JsPromise::reject(error, context)?,
        Err(error) => return Err(error),
    };
    Ok(promise.into())
}

/// A new `ArrayBuffer` holding `bytes`.
fn array_buffer(bytes: &[u8], context: &mut Context) -> JsResult<JsValue> {
    Ok(JsArrayBuffer::from_byte_block(AlignedVec::from_slice(0, bytes), context)?.into())
}

/// `crypto.subtle.digest(algorithm, data)`: a promise of the hash as an `ArrayBuffer`.
fn digest(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "crypto.subtle.digest";
    let result = (|| {
        let hash = Hash::of(
            &args.first().cloned().unwrap_or_default(),
            FUNCTION,
            context,
        )?;
        let data = Bytes::of(&args.get(1).cloned().unwrap_or_default(), FUNCTION, context)?;
        let hashed = hash.digest(&data, &Budget::of(context)?)?;
        array_buffer(&hashed, context)
    })();
    settle(result, context)
}

/// The key of an HMAC `CryptoKey`, kept from JavaScript.
#[derive(Debug)]
struct HmacKey {
    hash: Hash,
    secret: Vec<u8>,
    sign: bool,
    verify: bool,
}

/// The native data of a `CryptoKey` object.
#[derive(Debug, Trace, Finalize, JsData)]
struct CryptoKey {
    // No JavaScript values inside: bytes and flags.
    #[unsafe_ignore_trace]
    key: HmacKey,
}

/// `crypto.subtle.importKey("raw", keyData, { name: "HMAC", hash, length? }, extractable,
/// keyUsages)`: a promise of a `CryptoKey` for `sign` and/or `verify`.
fn import_key(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let result = import_hmac_key(args, context);
    settle(result, context)
}

fn import_hmac_key(args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "crypto.subtle.importKey";
    let arg = |index: usize| args.get(index).cloned().unwrap_or_default();
    let format = arg(0).to_string(context)?.to_std_string_lossy();
    if format != "raw" {
        return Err(super::dom_exception(
            "NotSupportedError",
            format!("{FUNCTION}: the key format {format:?} is not supported (\"raw\" is)"),
            context,
        ));
    }
    let secret = Bytes::of(&arg(1), FUNCTION, context)?.with(<[u8]>::to_vec)?;
    let algorithm = arg(2);
    let name = algorithm_name(&algorithm, FUNCTION, context)?;
    if !name.eq_ignore_ascii_case("HMAC") {
        return Err(super::dom_exception(
            "NotSupportedError",
            format!("{FUNCTION}: the algorithm {name:?} is not supported (HMAC is)"),
            context,
        ));
    }
    let Some(algorithm) = algorithm.as_object() else {
        return Err(super::type_error(format!(
            "{FUNCTION}: HMAC needs an algorithm object with a hash: {{ name: \"HMAC\", hash: \
             \"SHA-256\" }}"
        )));
    };
    let hash = algorithm.get(js_string!("hash"), context)?;
    if hash.is_undefined() {
        return Err(super::type_error(format!(
            "{FUNCTION}: the HMAC algorithm has no hash"
        )));
    }
    let hash = Hash::of(&hash, FUNCTION, context)?;
    if secret.is_empty() {
        return Err(super::dom_exception(
            "DataError",
            format!("{FUNCTION}: the key is empty"),
            context,
        ));
    }
    let bits = secret.len() * 8;
    let length = algorithm.get(js_string!("length"), context)?;
    if !length.is_undefined() {
        let length = length.to_length(context)?;
        if length == 0 || length > bits as u64 || length <= bits.saturating_sub(8) as u64 {
            return Err(super::dom_exception(
                "DataError",
                format!("{FUNCTION}: the length {length} does not match the key's {bits} bits"),
                context,
            ));
        }
    }
    let extractable = arg(3).to_boolean();
    let usages = arg(4);
    let Some(usages) = usages.as_object() else {
        return Err(super::type_error(format!(
            "{FUNCTION}: the key usages must be an array"
        )));
    };
    let mut names = Vec::new();
    super::for_each_of(&usages, &Budget::of(context)?, context, |usage, context| {
        names.push(usage.to_string(context)?.to_std_string_lossy());
        Ok(())
    })?;
    if let Some(bad) = names.iter().find(|u| *u != "sign" && *u != "verify") {
        return Err(super::dom_exception(
            "SyntaxError",
            format!("{FUNCTION}: an HMAC key cannot be used to {bad:?} (only sign and verify)"),
            context,
        ));
    }
    if names.is_empty() {
        return Err(super::dom_exception(
            "SyntaxError",
            format!("{FUNCTION}: the key usages cannot be empty"),
            context,
        ));
    }
    let key = HmacKey {
        hash,
        secret,
        sign: names.iter().any(|u| u == "sign"),
        verify: names.iter().any(|u| u == "verify"),
    };
    crypto_key(key, extractable, context)
}

/// A `CryptoKey` object for `key`: its type, algorithm and usages are visible, its bytes not.
fn crypto_key(key: HmacKey, extractable: bool, context: &mut Context) -> JsResult<JsValue> {
    let hash = ObjectInitializer::new(context)
        .property(
            js_string!("name"),
            JsString::from(key.hash.name()),
            Attribute::all(),
        )
        .build();
    let bits = key.secret.len() * 8;
    let algorithm = ObjectInitializer::new(context)
        .property(js_string!("name"), js_string!("HMAC"), Attribute::all())
        .property(js_string!("hash"), hash, Attribute::all())
        .property(js_string!("length"), bits, Attribute::all())
        .build();
    let mut usages = Vec::new();
    if key.sign {
        usages.push(js_string!("sign").into());
    }
    if key.verify {
        usages.push(js_string!("verify").into());
    }
    let usages = JsArray::from_iter(usages, context);
    let read_only = Attribute::ENUMERABLE | Attribute::CONFIGURABLE;
    let object = ObjectInitializer::with_native_data(CryptoKey { key }, context)
        .property(js_string!("type"), js_string!("secret"), read_only)
        .property(js_string!("extractable"), extractable, read_only)
        .property(js_string!("algorithm"), algorithm, read_only)
        .property(js_string!("usages"), usages, read_only)
        .property(
            JsSymbol::to_string_tag(),
            js_string!("CryptoKey"),
            Attribute::CONFIGURABLE,
        )
        .build();
    Ok(object.into())
}

/// The HMAC key of a `sign`/`verify` call, checked against the algorithm and the usage.
fn hmac_key<'a>(
    algorithm: &JsValue,
    key: &'a JsObject,
    usage: &str,
    what: &str,
    context: &mut Context,
) -> JsResult<boa_engine::object::Ref<'a, CryptoKey>> {
    let name = algorithm_name(algorithm, what, context)?;
    if !name.eq_ignore_ascii_case("HMAC") {
        return Err(super::dom_exception(
            "NotSupportedError",
            format!("{what}: the algorithm {name:?} is not supported (HMAC is)"),
            context,
        ));
    }
    let Some(data) = key.downcast_ref::<CryptoKey>() else {
        return Err(super::type_error(format!(
            "{what}: the key is not a CryptoKey from crypto.subtle.importKey"
        )));
    };
    let allowed = if usage == "sign" {
        data.key.sign
    } else {
        data.key.verify
    };
    if !allowed {
        drop(data);
        return Err(super::dom_exception(
            "InvalidAccessError",
            format!("{what}: the key's usages do not include {usage:?}"),
            context,
        ));
    }
    Ok(data)
}

/// The key object argument at `index`.
fn key_arg(args: &[JsValue], index: usize, what: &str) -> JsResult<JsObject> {
    args.get(index)
        .and_then(JsValue::as_object)
        .ok_or_else(|| super::type_error(format!("{what}: the key is not a CryptoKey")))
}

/// `crypto.subtle.sign("HMAC", key, data)`: a promise of the signature as an `ArrayBuffer`.
fn sign(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "crypto.subtle.sign";
    let result = (|| {
        let key = key_arg(args, 1, FUNCTION)?;
        let data = Bytes::of(&args.get(2).cloned().unwrap_or_default(), FUNCTION, context)?;
        let budget = Budget::of(context)?;
        let outcome = {
            let algorithm = args.first().cloned().unwrap_or_default();
            let key = hmac_key(&algorithm, &key, "sign", FUNCTION, context)?;
            key.key
                .hash
                .hmac(&key.key.secret, &data, MacCheck::Sign, &budget)?
        };
        match outcome {
            MacOutcome::Signature(signature) => array_buffer(&signature, context),
            MacOutcome::Verified(_) => Err(super::type_error("HMAC: no signature was made")),
        }
    })();
    settle(result, context)
}

/// `crypto.subtle.verify("HMAC", key, signature, data)`: a promise of whether `signature` is
/// the HMAC of `data` (compared in constant time).
fn verify(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const FUNCTION: &str = "crypto.subtle.verify";
    let result = (|| {
        let key = key_arg(args, 1, FUNCTION)?;
        let signature = Bytes::of(&args.get(2).cloned().unwrap_or_default(), FUNCTION, context)?
            .with(<[u8]>::to_vec)?;
        let data = Bytes::of(&args.get(3).cloned().unwrap_or_default(), FUNCTION, context)?;
        let budget = Budget::of(context)?;
        let algorithm = args.first().cloned().unwrap_or_default();
        let key = hmac_key(&algorithm, &key, "verify", FUNCTION, context)?;
        let outcome = key.key.hash.hmac(
            &key.key.secret,
            &data,
            MacCheck::Verify(&signature),
            &budget,
        )?;
        Ok(JsValue::from(matches!(outcome, MacOutcome::Verified(true))))
    })();
    settle(result, context)
}
