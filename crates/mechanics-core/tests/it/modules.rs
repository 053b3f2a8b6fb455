//! The utility modules `mechanics:form-urlencoded`, `mechanics:base64`, `mechanics:hex`,
//! `mechanics:base32`, `mechanics:rand` and `mechanics:uuid`, exercised by real jobs.
//!
//! Most checks run inside one job and return what they observed, so a failure shows the values.
//! Errors are caught in JavaScript where their class matters (`e.name`), and left uncaught where
//! the job's failure itself is the point.

use serde_json::{Value, json};

use crate::{run_js, run_js_err};

/// Helpers every job below may use: `u8("text")` makes a `Uint8Array` of the (Latin-1) char
/// codes, `str(bytes)` is the reverse, `arr(bytes)` a plain array for JSON, and
/// `thrown(f)` runs `f` and returns `[name, message, isError]` of what it throws (or `null`).
const PRELUDE: &str = r#"
const u8 = (s) => new Uint8Array(Array.from(s, (c) => c.charCodeAt(0)));
const str = (bytes) => String.fromCharCode(...bytes);
const arr = (bytes) => Array.from(bytes);
const thrown = (f) => {
  try { f(); } catch (e) { return [e.name, e.message, e instanceof Error]; }
  return null;
};
"#;

const IMPORTS: &str = r#"
import base64 from "mechanics:base64";
import hex from "mechanics:hex";
import base32 from "mechanics:base32";
import formUrlencoded from "mechanics:form-urlencoded";
import fillRandom from "mechanics:rand";
import uuid from "mechanics:uuid";
"#;

/// Runs a job whose default export runs `body` (with every module and the prelude in scope) and
/// returns its result, failing the test if the job fails.
fn eval(body: &str) -> Value {
    let source = format!("{IMPORTS}{PRELUDE}\nexport default (arg) => {{\n{body}\n}};\n");
    run_js(&source, Value::Null).unwrap_or_else(|err| panic!("job failed: {err}\n{source}"))
}

/// Runs `expr` in a job and returns the `[name, message]` it throws; fails if it throws nothing
/// or something that is not an `Error`.
fn throws(expr: &str) -> (String, String) {
    let result = eval(&format!("return thrown(() => {{ {expr}; }});"));
    let array = result
        .as_array()
        .unwrap_or_else(|| panic!("`{expr}` did not throw (returned {result})"));
    assert_eq!(
        array[2],
        json!(true),
        "`{expr}` threw a non-Error: {result}"
    );
    (
        array[0].as_str().unwrap_or_default().to_owned(),
        array[1].as_str().unwrap_or_default().to_owned(),
    )
}

/// Asserts that `expr` throws an error of class `name` whose message contains `needle`.
#[track_caller]
fn assert_throws(expr: &str, name: &str, needle: &str) {
    let (got_name, message) = throws(expr);
    assert_eq!(got_name, name, "`{expr}` threw {got_name}: {message}");
    assert!(
        message.contains(needle),
        "`{expr}` threw {got_name}: {message:?}, expected it to contain {needle:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Module shapes

#[test]
fn named_and_default_imports_expose_the_same_functions() {
    let source = r#"
        import b64, { encode as b64encode, decode as b64decode } from "mechanics:base64";
        import hexDefault, { encode as hexEncode, decode as hexDecode } from "mechanics:hex";
        import b32, { encode as b32encode, decode as b32decode } from "mechanics:base32";
        import form, { encode as formEncode, decode as formDecode } from "mechanics:form-urlencoded";
        import fill, { fillRandom } from "mechanics:rand";
        import makeUuid, { uuid } from "mechanics:uuid";
        export default () => ({
            shapes: [b64, hexDefault, b32, form].map((m) => Object.keys(m).sort()),
            same: [
                b64.encode === b64encode, b64.decode === b64decode,
                hexDefault.encode === hexEncode, hexDefault.decode === hexDecode,
                b32.encode === b32encode, b32.decode === b32decode,
                form.encode === formEncode, form.decode === formDecode,
                fill === fillRandom, makeUuid === uuid,
            ],
            defaultsAreFunctions: [typeof fill, typeof makeUuid],
            names: [b64encode.name, fillRandom.name, uuid.name],
            lengths: [b64encode.length, hexEncode.length, b32decode.length, formEncode.length,
                      fillRandom.length, uuid.length],
            viaDefault: b64.encode(new Uint8Array([104, 105])),
        });
    "#;
    let value = run_js(source, Value::Null).expect("job runs");
    assert_eq!(
        value,
        json!({
            "shapes": [["decode", "encode"], ["decode", "encode"], ["decode", "encode"],
                       ["decode", "encode"]],
            "same": [true, true, true, true, true, true, true, true, true, true],
            "defaultsAreFunctions": ["function", "function"],
            "names": ["encode", "fillRandom", "uuid"],
            "lengths": [2, 1, 2, 1, 1, 2],
            "viaDefault": "aGk=",
        })
    );
}

#[test]
fn named_import_only_job() {
    let value = run_js(
        "import { encode } from 'mechanics:base64'; \
         export default () => encode(new Uint8Array([104, 105]))",
        json!(null),
    )
    .expect("job runs");
    assert_eq!(value, json!("aGk="));
}

#[test]
fn unknown_export_fails_to_link() {
    let (kind, message) =
        run_js_err("import { nope } from 'mechanics:base64'; export default () => nope;");
    assert_eq!(kind, "execution");
    assert!(message.contains("nope"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// base64

#[test]
fn base64_rfc4648_vectors() {
    let value = eval(
        r#"
        const inputs = ["", "f", "fo", "foo", "foob", "fooba", "foobar"];
        return inputs.map((s) => [
            base64.encode(u8(s)),
            base64.encode(u8(s), "base64"),
            base64.encode(u8(s), "base64url"),
            str(base64.decode(base64.encode(u8(s)))),
        ]);
        "#,
    );
    assert_eq!(
        value,
        json!([
            ["", "", "", ""],
            ["Zg==", "Zg==", "Zg", "f"],
            ["Zm8=", "Zm8=", "Zm8", "fo"],
            ["Zm9v", "Zm9v", "Zm9v", "foo"],
            ["Zm9vYg==", "Zm9vYg==", "Zm9vYg", "foob"],
            ["Zm9vYmE=", "Zm9vYmE=", "Zm9vYmE", "fooba"],
            ["Zm9vYmFy", "Zm9vYmFy", "Zm9vYmFy", "foobar"],
        ])
    );
}

#[test]
fn base64_url_alphabet_and_no_padding() {
    let value = eval(
        r#"
        const b = new Uint8Array([0xfb, 0xff, 0xfe, 0xfb, 0xff]);
        return [
            base64.encode(b),
            base64.encode(b, "base64url"),
            arr(base64.decode("-__--_8", "base64url")),
            arr(base64.decode("-__--_8=", "base64url")),
            arr(base64.decode("+//++/8=")),
            arr(base64.decode("+//++/8")),
        ];
        "#,
    );
    let bytes = json!([0xfb, 0xff, 0xfe, 0xfb, 0xff]);
    assert_eq!(
        value,
        json!(["+//++/8=", "-__--_8", bytes, bytes, bytes, bytes])
    );
}

#[test]
fn base64_decode_accepts_padded_and_unpadded_for_both_variants() {
    let value = eval(
        r#"
        const out = [];
        for (const variant of ["base64", "base64url"]) {
            for (const text of ["Zg==", "Zg", "Zm8=", "Zm8", "Zm9vYmFy", ""]) {
                out.push(str(base64.decode(text, variant)));
            }
        }
        return out;
        "#,
    );
    assert_eq!(
        value,
        json!([
            "f", "f", "fo", "fo", "foobar", "", "f", "f", "fo", "fo", "foobar", ""
        ])
    );
}

#[test]
fn base64_decode_returns_a_fresh_uint8array() {
    let value = eval(
        r#"
        const a = base64.decode("AAEC");
        const b = base64.decode("AAEC");
        a[0] = 9;
        return [a instanceof Uint8Array, a.byteOffset, a.buffer.byteLength, arr(a), arr(b)];
        "#,
    );
    assert_eq!(value, json!([true, 0, 3, [9, 1, 2], [0, 1, 2]]));
}

#[test]
fn base64_round_trips_every_byte_value_and_large_input() {
    let value = eval(
        r#"
        const all = new Uint8Array(256).map((_, i) => i);
        const big = new Uint8Array(3 * 16384).map((_, i) => (i * 7) & 0xff);
        const same = (a, b) => a.length === b.length && a.every((x, i) => x === b.at(i));
        return [
            same(base64.decode(base64.encode(all)), all),
            same(base64.decode(base64.encode(all, "base64url"), "base64url"), all),
            same(base64.decode(base64.encode(big)), big),
            base64.encode(big).length,
        ];
        "#,
    );
    assert_eq!(value, json!([true, true, true, 65_536]));
}

#[test]
fn base64_decode_rejects_invalid_input() {
    for text in [
        "Zm9v!",      // not in the alphabet
        "Zg===",      // too much padding
        "Zg=",        // incomplete padding
        "Zm9vYg=",    // incomplete padding
        "Z",          // impossible length
        "=",          // padding only
        "Zm9v\n",     // whitespace is not skipped
        "Zh==",       // non-zero trailing bits
        "Zm9vYmFy ",  // trailing space
        "Zg==Zg==",   // padding in the middle
        "Zm9v\u{e9}", // non-ASCII
    ] {
        assert_throws(
            &format!("base64.decode({text:?})"),
            "SyntaxError",
            "base64.decode: invalid base64 input",
        );
    }
    // Each variant accepts only its own alphabet.
    assert_throws(
        "base64.decode('-_8')",
        "SyntaxError",
        "base64.decode: invalid base64 input",
    );
    assert_throws(
        "base64.decode('Zg=', 'base64url')",
        "SyntaxError",
        "base64.decode: invalid base64url input",
    );
    assert_throws(
        "base64.decode('+/8', 'base64url')",
        "SyntaxError",
        "base64.decode: invalid base64url input",
    );
}

#[test]
fn base64_non_ascii_input_reports_the_index() {
    assert_throws(
        "base64.decode('Zm\u{2603}v')",
        "SyntaxError",
        "non-ASCII character at index 2",
    );
}

#[test]
fn base64_unknown_variant_is_a_range_error_naming_the_accepted_values() {
    for call in [
        "base64.encode(new Uint8Array(1), 'base64URL')",
        "base64.decode('AA', 'hex')",
        "base64.encode(new Uint8Array(1), '')",
    ] {
        assert_throws(
            call,
            "RangeError",
            r#"expected one of "base64", "base64url""#,
        );
    }
    for call in [
        "base64.encode(new Uint8Array(1), 1e308)",
        "base64.encode(new Uint8Array(1), null)",
        "base64.decode('AA', {})",
        "base64.decode('AA', new String('base64'))",
    ] {
        assert_throws(call, "TypeError", "the variant must be a string");
    }
    // `undefined` means the default.
    assert_eq!(
        eval("return base64.encode(u8('f'), undefined);"),
        json!("Zg==")
    );
}

#[test]
fn base64_decode_requires_a_string() {
    for arg in [
        "",
        "42",
        "undefined",
        "null",
        "new Uint8Array(2)",
        "['Zg==']",
        "{}",
    ] {
        assert_throws(
            &format!("base64.decode({arg})"),
            "TypeError",
            "base64.decode: the encoded input must be a string",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Buffer-like inputs (shared by base64, hex, base32 and rand)

#[test]
fn every_buffer_like_input_reads_exactly_its_view() {
    let value = eval(
        r#"
        const buffer = new ArrayBuffer(8);
        new Uint8Array(buffer).set([0, 1, 2, 3, 4, 5, 6, 7]);
        const inputs = [
            buffer,
            new Uint8Array(buffer),
            new Uint8Array(buffer, 2, 3),
            new Uint8Array(buffer).subarray(5),
            new Uint8Array(buffer).subarray(3, 3),
            new DataView(buffer),
            new DataView(buffer, 1, 2),
            new DataView(buffer, 8),
            new Uint16Array(buffer, 2, 2),
            new Int32Array(buffer, 4),
            new Float64Array(buffer),
            new Uint8ClampedArray(buffer, 7),
            new BigUint64Array(buffer),
        ];
        return inputs.map((input) => hex.encode(input));
        "#,
    );
    assert_eq!(
        value,
        json!([
            "0001020304050607",
            "0001020304050607",
            "020304",
            "050607",
            "",
            "0001020304050607",
            "0102",
            "",
            "02030405",
            "04050607",
            "0001020304050607",
            "07",
            "0001020304050607",
        ])
    );
}

#[test]
fn length_tracking_views_of_resizable_buffers() {
    let value = eval(
        r#"
        const buffer = new ArrayBuffer(4, { maxByteLength: 16 });
        const tracking = new Uint8Array(buffer, 1);
        const fixed = new Uint8Array(buffer, 2, 2);
        const before = [hex.encode(tracking), hex.encode(buffer)];
        buffer.resize(6);
        const grown = [hex.encode(tracking), hex.encode(buffer), hex.encode(fixed)];
        buffer.resize(3);
        const shrunk = [
            hex.encode(tracking),
            thrown(() => hex.encode(fixed)),
            thrown(() => hex.encode(new DataView(buffer, 0, 3))),
        ];
        const view = new DataView(buffer, 1, 2);
        buffer.resize(1);
        shrunk.push(thrown(() => base64.encode(view)));
        shrunk.push(thrown(() => fillRandom(fixed)));
        return [before, grown, shrunk];
        "#,
    );
    let oob = |name: &str| {
        json!([
            "TypeError",
            format!("{name}: the view is out of the bounds of its ArrayBuffer"),
            true
        ])
    };
    assert_eq!(
        value,
        json!([
            ["000000", "00000000"],
            ["0000000000", "000000000000", "0000"],
            [
                "0000",
                oob("hex.encode"),
                null,
                oob("base64.encode"),
                oob("rand.fillRandom")
            ],
        ])
    );
}

#[test]
fn shared_array_buffers_are_rejected_everywhere() {
    let functions = [
        ("base64.encode", "base64.encode"),
        ("hex.encode", "hex.encode"),
        ("base32.encode", "base32.encode"),
        ("fillRandom", "rand.fillRandom"),
    ];
    for (call, name) in functions {
        for input in [
            "new SharedArrayBuffer(4)",
            "new Uint8Array(new SharedArrayBuffer(4))",
            "new Int16Array(new SharedArrayBuffer(4), 2)",
            "new DataView(new SharedArrayBuffer(4), 1, 2)",
        ] {
            assert_throws(
                &format!("{call}({input})"),
                "TypeError",
                &format!("{name}: SharedArrayBuffer and views of one are not supported"),
            );
        }
    }
}

#[test]
fn non_buffer_inputs_are_type_errors_naming_function_and_type() {
    let functions = [
        ("base64.encode", "base64.encode"),
        ("hex.encode", "hex.encode"),
        ("base32.encode", "base32.encode"),
        ("fillRandom", "rand.fillRandom"),
    ];
    let inputs = [
        ("'hi'", "string"),
        ("42", "number"),
        ("1e308", "number"),
        ("NaN", "number"),
        ("", "undefined"),
        ("undefined", "undefined"),
        ("null", "null"),
        ("true", "boolean"),
        ("10n", "bigint"),
        ("Symbol('x')", "symbol"),
        ("{}", "object"),
        (
            "{ buffer: new ArrayBuffer(2), byteLength: 2, byteOffset: 0 }",
            "object",
        ),
        ("Object.create(Uint8Array.prototype)", "object"),
        ("new Proxy(new Uint8Array(2), {})", "object"),
        ("[1, 2]", "array"),
        ("() => 1", "function"),
        ("Uint8Array", "function"),
    ];
    for (call, name) in functions {
        for (input, described) in inputs {
            assert_throws(
                &format!("{call}({input})"),
                "TypeError",
                &format!("{name}: expected a TypedArray, ArrayBuffer or DataView, got {described}"),
            );
        }
    }
}

#[test]
fn uncaught_module_errors_fail_the_job_with_an_execution_error() {
    let (kind, message) =
        run_js_err("import { encode } from 'mechanics:base64'; export default () => encode('hi');");
    assert_eq!(kind, "execution");
    assert!(
        message
            .contains("base64.encode: expected a TypedArray, ArrayBuffer or DataView, got string"),
        "{message}"
    );

    let (kind, message) = run_js_err(
        "import { decode } from 'mechanics:hex'; \
         export default async function () { return decode('abc'); }",
    );
    assert_eq!(kind, "execution");
    assert!(
        message.contains("hex.decode: invalid hex input"),
        "{message}"
    );

    let (kind, message) =
        run_js_err("import uuid from 'mechanics:uuid'; export default () => uuid('v1');");
    assert_eq!(kind, "execution");
    assert!(
        message.contains("uuid: unknown variant \"v1\""),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// hex

#[test]
fn hex_rfc4648_vectors_and_case() {
    let value = eval(
        r#"
        const inputs = ["", "f", "fo", "foo", "foob", "fooba", "foobar"];
        return [
            inputs.map((s) => hex.encode(u8(s))),
            hex.encode(new Uint8Array([0xab, 0xcd, 0xef, 0x00, 0x9f])),
            str(hex.decode("666F6F626172")),
            str(hex.decode("666f6f626172")),
            str(hex.decode("666F6f626172")),
            arr(hex.decode("ABCDEF009f")),
            arr(hex.decode("")),
        ];
        "#,
    );
    assert_eq!(
        value,
        json!([
            [
                "",
                "66",
                "666f",
                "666f6f",
                "666f6f62",
                "666f6f6261",
                "666f6f626172"
            ],
            "abcdef009f",
            "foobar",
            "foobar",
            "foobar",
            [0xab, 0xcd, 0xef, 0x00, 0x9f],
            [],
        ])
    );
}

#[test]
fn hex_round_trips_every_byte_value() {
    let value = eval(
        r#"
        const all = new Uint8Array(256).map((_, i) => i);
        const text = hex.encode(all);
        const back = hex.decode(text.toUpperCase());
        return [text.length, text === text.toLowerCase(), back.every((x, i) => x === i),
                back.length];
        "#,
    );
    assert_eq!(value, json!([512, true, true, 256]));
}

#[test]
fn hex_decode_rejects_odd_length_and_invalid_characters() {
    for text in [
        "abc", "0", "zz", "0g", "00 ", " 00", "0x00", "-1", "\u{e9}e",
    ] {
        assert_throws(
            &format!("hex.decode({text:?})"),
            "SyntaxError",
            "hex.decode: invalid hex input",
        );
    }
    for arg in ["", "0x1234", "null", "new Uint8Array(1)"] {
        assert_throws(
            &format!("hex.decode({arg})"),
            "TypeError",
            "hex.decode: the encoded input must be a string",
        );
    }
}

#[test]
fn hex_ignores_extra_arguments() {
    assert_eq!(
        eval("return hex.encode(new Uint8Array([1]), 'base64', {});"),
        json!("01")
    );
}

// ---------------------------------------------------------------------------------------------
// base32

#[test]
fn base32_rfc4648_vectors() {
    let value = eval(
        r#"
        const inputs = ["", "f", "fo", "foo", "foob", "fooba", "foobar"];
        return inputs.map((s) => [
            base32.encode(u8(s)),
            base32.encode(u8(s), "base32"),
            base32.encode(u8(s), "base32hex"),
        ]);
        "#,
    );
    assert_eq!(
        value,
        json!([
            ["", "", ""],
            ["MY======", "MY======", "CO======"],
            ["MZXQ====", "MZXQ====", "CPNG===="],
            ["MZXW6===", "MZXW6===", "CPNMU==="],
            ["MZXW6YQ=", "MZXW6YQ=", "CPNMUOG="],
            ["MZXW6YTB", "MZXW6YTB", "CPNMUOJ1"],
            ["MZXW6YTBOI======", "MZXW6YTBOI======", "CPNMUOJ1E8======"],
        ])
    );
}

#[test]
fn base32_decode_is_case_insensitive_and_padding_optional() {
    let value = eval(
        r#"
        const out = [];
        for (const text of ["MZXW6YTBOI======", "MZXW6YTBOI", "mzxw6ytboi======", "mzxw6ytboi",
                            "mZxW6yTbOi"]) {
            out.push(str(base32.decode(text)));
            out.push(str(base32.decode(text, "base32")));
        }
        for (const text of ["CPNMUOJ1E8======", "CPNMUOJ1E8", "cpnmuoj1e8======", "cpnmuoj1e8",
                            "CpNmUoJ1e8"]) {
            out.push(str(base32.decode(text, "base32hex")));
        }
        for (const text of ["MY======", "MY", "my", "MZXQ", "mzxw6", "MZXW6YQ", ""]) {
            out.push(str(base32.decode(text)));
        }
        return out;
        "#,
    );
    let mut expected = vec![json!("foobar"); 15];
    expected.extend(["f", "f", "f", "fo", "foo", "foob", ""].map(|s| json!(s)));
    assert_eq!(value, Value::Array(expected));
}

#[test]
fn base32_round_trips_every_byte_value() {
    let value = eval(
        r#"
        const all = new Uint8Array(256).map((_, i) => i);
        const same = (a) => a.length === 256 && a.every((x, i) => x === i);
        const std = base32.encode(all);
        const hx = base32.encode(all, "base32hex");
        return [
            same(base32.decode(std)),
            same(base32.decode(std.toLowerCase())),
            same(base32.decode(std.replace(/=+$/, ""))),
            same(base32.decode(hx, "base32hex")),
            same(base32.decode(hx.toLowerCase().replace(/=+$/, ""), "base32hex")),
            std.length % 8,
        ];
        "#,
    );
    assert_eq!(value, json!([true, true, true, true, true, 0]));
}

#[test]
fn base32_decode_rejects_invalid_input() {
    for text in [
        "MZXW6YTBOI=", // incomplete padding
        "MY=",         // incomplete padding
        "MY=======",   // too much padding
        "M",           // impossible length
        "MZX",         // impossible length
        "MY1=====",    // '1' is not in the base32 alphabet
        "MZ XW",       // whitespace
        "MZ======",    // non-zero trailing bits
        "M\u{fc}",     // non-ASCII
    ] {
        assert_throws(
            &format!("base32.decode({text:?})"),
            "SyntaxError",
            "base32.decode: invalid base32 input",
        );
    }
    // 'W' is beyond the base32hex alphabet, '1' is not in base32's.
    assert_throws(
        "base32.decode('CW', 'base32hex')",
        "SyntaxError",
        "base32.decode: invalid base32hex input",
    );
    assert_throws(
        "base32.decode('cw', 'base32hex')",
        "SyntaxError",
        "base32.decode: invalid base32hex input",
    );
}

#[test]
fn base32_variant_and_type_errors() {
    assert_throws(
        "base32.encode(new Uint8Array(1), 'base32HEX')",
        "RangeError",
        r#"base32.encode: unknown variant "base32HEX", expected one of "base32", "base32hex""#,
    );
    assert_throws(
        "base32.decode('MY', 'base64')",
        "RangeError",
        r#"expected one of "base32", "base32hex""#,
    );
    assert_throws(
        "base32.decode('MY', 32)",
        "TypeError",
        "base32.decode: the variant must be a string",
    );
    assert_throws(
        "base32.decode(['MY'])",
        "TypeError",
        "base32.decode: the encoded input must be a string, got array",
    );
}

#[test]
fn long_variant_names_are_cut_short_in_messages() {
    let (name, message) = throws("base64.encode(new Uint8Array(1), 'x'.repeat(100000))");
    assert_eq!(name, "RangeError");
    assert!(message.len() < 300, "{message}");
}

// ---------------------------------------------------------------------------------------------
// form-urlencoded

#[test]
fn form_encode_sorts_keys_lexically() {
    let value = eval(
        r#"
        return [
            formUrlencoded.encode({ b: "2", a: "1", c: "3" }),
            formUrlencoded.encode({ "10": "x", "9": "y", "a": "z", "B": "w", "": "e" }),
            formUrlencoded.encode({ b: "2", a: "1" }) === formUrlencoded.encode({ a: "1", b: "2" }),
            formUrlencoded.encode({}),
        ];
        "#,
    );
    assert_eq!(
        value,
        json!(["a=1&b=2&c=3", "=e&10=x&9=y&B=w&a=z", true, ""])
    );
}

#[test]
fn form_encode_escapes_as_application_x_www_form_urlencoded() {
    let value = eval(
        r#"
        return [
            formUrlencoded.encode({ q: "a b&c=d+e%f" }),
            formUrlencoded.encode({ "k y": "v", "&": "=" }),
            formUrlencoded.encode({ "ключ": "значение ☃", emoji: "😀" }),
            formUrlencoded.encode({ safe: "*-._~!'()" }),
            formUrlencoded.encode({ lone: "\uD800" }),
        ];
        "#,
    );
    assert_eq!(
        value,
        json!([
            "q=a+b%26c%3Dd%2Be%25f",
            "%26=%3D&k+y=v",
            "emoji=%F0%9F%98%80&%D0%BA%D0%BB%D1%8E%D1%87=%D0%B7%D0%BD%D0%B0%D1%87%D0%B5%D0%BD%D0%B8%D0%B5+%E2%98%83",
            "safe=*-._%7E%21%27%28%29",
            "lone=%EF%BF%BD",
        ])
    );
}

#[test]
fn form_encode_reads_only_own_enumerable_string_keys() {
    let value = eval(
        r#"
        const proto = { inherited: "no" };
        const record = Object.create(proto);
        record.own = "yes";
        Object.defineProperty(record, "hidden", { value: "no", enumerable: false });
        record[Symbol("s")] = "no";
        Object.defineProperty(record, "getter", { get: () => "computed", enumerable: true });
        return formUrlencoded.encode(record);
        "#,
    );
    assert_eq!(value, json!("getter=computed&own=yes"));
}

#[test]
fn form_encode_requires_string_values_and_an_object() {
    for (record, key, described) in [
        ("{ a: 1 }", "a", "number"),
        ("{ a: '1', b: undefined }", "b", "undefined"),
        ("{ a: null }", "a", "null"),
        ("{ a: ['x'] }", "a", "array"),
        ("{ a: new String('x') }", "a", "object"),
        ("{ a: 1n }", "a", "bigint"),
    ] {
        assert_throws(
            &format!("formUrlencoded.encode({record})"),
            "TypeError",
            &format!(
                "form-urlencoded.encode: the value of key \"{key}\" must be a string, got {described}"
            ),
        );
    }
    for (arg, described) in [
        ("'a=1'", "string"),
        ("", "undefined"),
        ("null", "null"),
        ("42", "number"),
    ] {
        assert_throws(
            &format!("formUrlencoded.encode({arg})"),
            "TypeError",
            &format!(
                "form-urlencoded.encode: expected an object of string values, got {described}"
            ),
        );
    }
}

#[test]
fn form_encode_propagates_errors_thrown_by_getters() {
    let value = eval(
        r#"
        const record = { get boom() { throw new RangeError("from the getter"); } };
        return thrown(() => formUrlencoded.encode(record));
        "#,
    );
    assert_eq!(value, json!(["RangeError", "from the getter", true]));
}

#[test]
fn form_decode_basics() {
    let value = eval(
        r#"
        return [
            formUrlencoded.decode("a=1&b=2"),
            formUrlencoded.decode("?a=1&b=2"),
            formUrlencoded.decode("??a=1"),
            formUrlencoded.decode(""),
            formUrlencoded.decode("?"),
            formUrlencoded.decode("a"),
            formUrlencoded.decode("a=&=b"),
            formUrlencoded.decode("&&a=1&&"),
            formUrlencoded.decode("a=1=2"),
            formUrlencoded.decode("q=a+b%20c%2B%26"),
            formUrlencoded.decode("%D0%BA%D0%BB=%E2%98%83&bad=%FF&pct=%zz"),
        ];
        "#,
    );
    assert_eq!(
        value,
        json!([
            { "a": "1", "b": "2" },
            { "a": "1", "b": "2" },
            { "?a": "1" },
            {},
            {},
            { "a": "" },
            { "a": "", "": "b" },
            { "a": "1" },
            { "a": "1=2" },
            { "q": "a b c+&" },
            { "кл": "☃", "bad": "\u{fffd}", "pct": "%zz" },
        ])
    );
}

#[test]
fn form_decode_last_duplicate_wins() {
    let value = eval(
        r#"
        const r = formUrlencoded.decode("a=1&b=x&a=2&a=3");
        return [r, Object.keys(r)];
        "#,
    );
    assert_eq!(value, json!([{ "a": "3", "b": "x" }, ["a", "b"]]));
}

#[test]
fn form_decode_makes_proto_keys_own_data_properties() {
    let value = eval(
        r#"
        const r = formUrlencoded.decode("__proto__=x&constructor=y&toString=z&hasOwnProperty=w");
        const d = Object.getOwnPropertyDescriptor(r, "__proto__");
        return [
            Object.getPrototypeOf(r) === Object.prototype,
            d.value, d.writable, d.enumerable, d.configurable,
            Object.keys(r),
            r.constructor,
            ({}).polluted === undefined,
        ];
        "#,
    );
    assert_eq!(
        value,
        json!([
            true,
            "x",
            true,
            true,
            true,
            ["__proto__", "constructor", "toString", "hasOwnProperty"],
            "y",
            true,
        ])
    );
}

#[test]
fn form_round_trip_with_unicode_and_specials() {
    let record = json!({
        "name": "Zoë Ünïcödé",
        "emoji": "👩‍💻 ☃",
        "math": "1+1=2 & 3%",
        "empty": "",
        "__proto__": "own",
        "multi\nline": "a\r\nb",
        "日本": "語",
    });
    let source = format!(
        "{IMPORTS}\nexport default (record) => {{\n\
           const text = formUrlencoded.encode(record);\n\
           return [formUrlencoded.decode(text), formUrlencoded.decode('?' + text), text];\n\
         }};"
    );
    let value = run_js(&source, record.clone()).expect("job runs");
    assert_eq!(value[0], record);
    assert_eq!(value[1], record);
    let text = value[2].as_str().expect("text");
    assert!(text.is_ascii(), "{text}");
    assert!(
        text.starts_with("__proto__=own&emoji=%F0%9F%91%A9%E2%80%8D%F0%9F%92%BB+%E2%98%83&empty=&"),
        "{text}"
    );
}

#[test]
fn form_decode_requires_a_string() {
    for (arg, described) in [("", "undefined"), ("{ a: '1' }", "object"), ("1", "number")] {
        assert_throws(
            &format!("formUrlencoded.decode({arg})"),
            "TypeError",
            &format!("form-urlencoded.decode: the input must be a string, got {described}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// rand

#[test]
fn fill_random_fills_in_place_and_returns_undefined() {
    let value = eval(
        r#"
        const a = new Uint8Array(64);
        const result = fillRandom(a);
        const b = new Uint8Array(64);
        fillRandom(b);
        return [
            result === undefined,
            a.some((x) => x !== 0),
            a.some((x, i) => x !== b.at(i)),
            new Set(a).size > 8,
        ];
        "#,
    );
    assert_eq!(value, json!([true, true, true, true]));
}

#[test]
fn fill_random_touches_only_the_viewed_range() {
    let value = eval(
        r#"
        const check = (make) => {
            const buffer = new ArrayBuffer(64);
            const [view, start, end] = make(buffer);
            fillRandom(view);
            const bytes = new Uint8Array(buffer);
            return [
                bytes.slice(0, start).every((x) => x === 0),
                bytes.slice(end).every((x) => x === 0),
                bytes.slice(start, end).some((x) => x !== 0),
            ];
        };
        return [
            check((b) => [new Uint8Array(b, 8, 16), 8, 24]),
            check((b) => [new Uint8Array(b).subarray(40, 56), 40, 56]),
            check((b) => [new DataView(b, 4, 20), 4, 24]),
            check((b) => [new Uint32Array(b, 12, 5), 12, 32]),
            check((b) => [new Float64Array(b, 16, 2), 16, 32]),
            check((b) => [b, 0, 64]),
        ];
        "#,
    );
    assert_eq!(value, json!(vec![[true, true, true]; 6]));
}

#[test]
fn fill_random_accepts_empty_views() {
    let value = eval(
        r#"
        const buffer = new ArrayBuffer(4);
        fillRandom(new Uint8Array(0));
        fillRandom(new ArrayBuffer(0));
        fillRandom(new DataView(buffer, 4));
        fillRandom(new Uint8Array(buffer, 2, 0));
        return arr(new Uint8Array(buffer));
        "#,
    );
    assert_eq!(value, json!([0, 0, 0, 0]));
}

#[test]
fn fill_random_output_differs_across_jobs() {
    let source = format!(
        "{IMPORTS}{PRELUDE}\nexport default () => {{ const a = new Uint8Array(16); \
         fillRandom(a); return hex.encode(a); }};"
    );
    let first = run_js(&source, Value::Null).expect("job runs");
    let second = run_js(&source, Value::Null).expect("job runs");
    assert_ne!(first, second);
}

// ---------------------------------------------------------------------------------------------
// uuid

/// A lowercase hyphenated UUID with version `v` and the RFC 9562 variant (`10xx`).
const fn uuid_pattern(version: char) -> &'static str {
    match version {
        '3' => "^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        '4' => "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        '5' => "^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        '6' => "^[0-9a-f]{8}-[0-9a-f]{4}-6[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        _ => "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
    }
}

#[test]
fn uuid_v4_is_the_default_and_random() {
    let value = eval(&format!(
        r#"
        const re = /{}/;
        const ids = [uuid(), uuid(undefined), uuid("v4"), uuid("v4", {{ ignored: true }})];
        for (let i = 0; i < 100; i++) ids.push(uuid());
        return [ids.every((id) => re.test(id)), new Set(ids).size];
        "#,
        uuid_pattern('4')
    ));
    assert_eq!(value, json!([true, 104]));
}

#[test]
fn uuid_name_based_known_vectors() {
    // Computed independently (Python's `uuid.uuid3`/`uuid.uuid5` with `NAMESPACE_DNS`/`_URL`).
    let value = eval(
        r#"
        const dns = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        const url = "6ba7b811-9dad-11d1-80b4-00c04fd430c8";
        return [
            uuid("v3", { namespace: dns, name: "www.example.com" }),
            uuid("v5", { namespace: dns, name: "www.example.com" }),
            uuid("v5", { namespace: dns, name: "python.org" }),
            uuid("v3", { namespace: dns, name: "python.org" }),
            uuid("v5", { namespace: url, name: "https://example.com/" }),
            uuid("v5", { namespace: dns.toUpperCase(), name: "www.example.com" }),
            uuid("v5", { namespace: "{" + dns + "}", name: "www.example.com" }),
            uuid("v5", { namespace: dns.replaceAll("-", ""), name: "www.example.com" }),
        ];
        "#,
    );
    assert_eq!(
        value,
        json!([
            "5df41881-3aed-3515-88a7-2f4a814cf09e",
            "2ed6657d-e927-568b-95e1-2665a8aea6a2",
            "886313e1-3b8a-5372-9b90-0c9aee199e5d",
            "6fa459ea-ee8a-3ca4-894e-db77e160355e",
            "dd2c1780-811a-5296-81c5-178a0ef488bc",
            "2ed6657d-e927-568b-95e1-2665a8aea6a2",
            "2ed6657d-e927-568b-95e1-2665a8aea6a2",
            "2ed6657d-e927-568b-95e1-2665a8aea6a2",
        ])
    );
}

#[test]
fn uuid_name_based_versions_and_utf8_names() {
    let value = eval(&format!(
        r#"
        const ns = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        const v3 = uuid("v3", {{ namespace: ns, name: "ünï☃" }});
        const v5 = uuid("v5", {{ namespace: ns, name: "ünï☃" }});
        return [
            /{}/.test(v3), /{}/.test(v5),
            v5 === uuid("v5", {{ namespace: ns, name: "ünï☃" }}),
            v5 !== uuid("v5", {{ namespace: ns, name: "ünï☃ " }}),
            uuid("v5", {{ namespace: ns, name: "" }}),
            v5,
        ];
        "#,
        uuid_pattern('3'),
        uuid_pattern('5')
    ));
    assert_eq!(
        value,
        json!([
            true,
            true,
            true,
            true,
            "4ebd0208-8328-5d69-8c44-ec50939c0967",
            "aa4042bb-46e8-57e4-b6fd-ddc1f9867875",
        ])
    );
}

#[test]
fn uuid_name_based_option_errors() {
    for (call, name, needle) in [
        (
            "uuid('v3')",
            "TypeError",
            r#"uuid: variant "v3" requires options { namespace, name }, got undefined"#,
        ),
        (
            "uuid('v5', null)",
            "TypeError",
            r#"uuid: variant "v5" requires options { namespace, name }, got null"#,
        ),
        ("uuid('v5', 'ns')", "TypeError", "got string"),
        (
            "uuid('v5', { name: 'x' })",
            "TypeError",
            "options.namespace to be a UUID string, got undefined",
        ),
        (
            "uuid('v3', { namespace: 42, name: 'x' })",
            "TypeError",
            "options.namespace to be a UUID string, got number",
        ),
        (
            "uuid('v5', { namespace: '6ba7b810-9dad-11d1-80b4-00c04fd430c8' })",
            "TypeError",
            "options.name to be a string, got undefined",
        ),
        (
            "uuid('v5', { namespace: '6ba7b810-9dad-11d1-80b4-00c04fd430c8', name: 7 })",
            "TypeError",
            "options.name to be a string, got number",
        ),
        (
            "uuid('v5', { namespace: 'dns', name: 'x' })",
            "SyntaxError",
            "uuid: options.namespace \"dns\" is not a UUID",
        ),
        (
            "uuid('v3', { namespace: '6ba7b810-9dad-11d1-80b4-00c04fd430cg', name: 'x' })",
            "SyntaxError",
            "is not a UUID",
        ),
    ] {
        assert_throws(call, name, needle);
    }
}

#[test]
fn uuid_v6_layout_and_timestamp() {
    let value = eval(&format!(
        r#"
        const re = /{}/;
        const ids = Array.from({{ length: 50 }}, () => uuid("v6"));
        const id = ids[0];
        const hexTime = id.slice(0, 8) + id.slice(9, 13) + id.slice(15, 18);
        // 100 ns intervals since 1582-10-15, to Unix milliseconds.
        const ms = Number(BigInt("0x" + hexTime) / 10000n - 12219292800000n);
        const node = parseInt(id.slice(24, 26), 16);
        return [
            ids.every((x) => re.test(x)),
            new Set(ids).size,
            Math.abs(ms - Date.now()) < 120000,
            (node & 1) === 1,
        ];
        "#,
        uuid_pattern('6')
    ));
    assert_eq!(value, json!([true, 50, true, true]));
}

#[test]
fn uuid_v7_layout_timestamp_and_order() {
    let value = eval(&format!(
        r#"
        const re = /{}/;
        const before = Date.now();
        const ids = Array.from({{ length: 200 }}, () => uuid("v7"));
        const after = Date.now();
        const ms = parseInt(ids[0].slice(0, 8) + ids[0].slice(9, 13), 16);
        return [
            ids.every((x) => re.test(x)),
            ids.every((x, i) => i === 0 || ids[i - 1] < x),
            ms >= before - 1000 && ms <= after + 1000,
        ];
        "#,
        uuid_pattern('7')
    ));
    assert_eq!(value, json!([true, true, true]));
}

#[test]
fn uuid_nil_and_max() {
    assert_eq!(
        eval("return [uuid('nil'), uuid('max'), uuid('nil', { namespace: 1 })];"),
        json!([
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "00000000-0000-0000-0000-000000000000",
        ])
    );
}

#[test]
fn uuid_variant_errors() {
    let accepted = r#"expected one of "v3", "v4", "v5", "v6", "v7", "nil", "max""#;
    for call in [
        "uuid('v1')",
        "uuid('V4')",
        "uuid('')",
        "uuid('v8')",
        "uuid('NIL')",
    ] {
        assert_throws(call, "RangeError", accepted);
    }
    for (call, described) in [
        ("uuid(4)", "number"),
        ("uuid(1e308)", "number"),
        ("uuid(null)", "null"),
        ("uuid({})", "object"),
        ("uuid(Symbol.iterator)", "symbol"),
    ] {
        assert_throws(
            call,
            "TypeError",
            &format!(
                "uuid: the variant must be a string (one of \"v3\", \"v4\", \"v5\", \"v6\", \"v7\", \"nil\", \"max\"), got {described}"
            ),
        );
    }
}

#[test]
fn modules_are_rebuilt_per_job() {
    // A job that vandalizes a module's default object does not affect the next job.
    let vandal = format!(
        "{IMPORTS}\nexport default () => {{ base64.encode = () => 'hacked'; \
         delete hex.decode; return base64.encode(new Uint8Array(1)); }};"
    );
    assert_eq!(
        run_js(&vandal, Value::Null).expect("job runs"),
        json!("hacked")
    );
    let next = format!(
        "{IMPORTS}\nexport default () => [base64.encode(new Uint8Array(1)), typeof hex.decode];"
    );
    for _ in 0..4 {
        assert_eq!(
            run_js(&next, Value::Null).expect("job runs"),
            json!(["AA==", "function"])
        );
    }
}
