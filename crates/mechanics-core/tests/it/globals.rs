//! The web-standard globals of a job, against what browsers and Node give: a table of cases per
//! global family, then the event loop (timers, microtasks), the limits that hold around them,
//! the globals jobs do not have, and the TypeScript declarations of them all.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::{MechanicsPool, MechanicsPoolConfig};
use serde_json::{Value, json};

use crate::{run_js, run_js_err};

/// Evaluates each expression of `table` in one job (awaiting it) and compares its JSON value,
/// or `{"threw": error name}` when it throws or rejects, with the expected one.
fn check(table: &[(&str, Value)]) {
    let cases: Vec<String> = table
        .iter()
        .map(|(expression, _)| format!("async () => ({expression})"))
        .collect();
    let source = format!(
        r#"const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
const bytes = (s) => new TextEncoder().encode(s);
const cases = [
{}
];
export default async function main() {{
  const out = [];
  for (const c of cases) {{
    try {{
      const value = await c();
      out.push({{ value: value === undefined ? "<undefined>" : value }});
    }} catch (e) {{
      out.push({{ threw: e && e.name }});
    }}
  }}
  return out;
}}"#,
        cases.join(",\n")
    );
    let results = run_js(&source, Value::Null).unwrap_or_else(|err| panic!("{err}\n{source}"));
    let results = results.as_array().expect("an array of results");
    assert_eq!(results.len(), table.len());
    for ((expression, expected), result) in table.iter().zip(results) {
        let actual = match result.get("value") {
            Some(value) => value.clone(),
            None => json!({ "threw": result["threw"] }),
        };
        assert_eq!(&actual, expected, "{expression}");
    }
}

fn threw(name: &str) -> Value {
    json!({ "threw": name })
}

#[test]
fn url_behaves_as_in_browsers() {
    check(&[
        (
            r#"new URL("../a?b=1#c", "https://x.org/p/q").href"#,
            json!("https://x.org/a?b=1#c"),
        ),
        (
            r#"new URL("https://user:pa ss@EXAMPLE.com:443/a/./b/../c?x=1 2#f g").href"#,
            json!("https://user:pa%20ss@example.com/a/c?x=1%202#f%20g"),
        ),
        (
            r#"(() => { const u = new URL("http://example.com:8080/path?q=1#h"); return [u.protocol, u.host, u.hostname, u.port, u.pathname, u.search, u.hash, u.origin]; })()"#,
            json!([
                "http:",
                "example.com:8080",
                "example.com",
                "8080",
                "/path",
                "?q=1",
                "#h",
                "http://example.com:8080"
            ]),
        ),
        (
            r#"new URL("https://münchen.de/").hostname"#,
            json!("xn--mnchen-3ya.de"),
        ),
        (r#"new URL("not a url")"#, threw("TypeError")),
        (r#"new URL("/a", "not a base")"#, threw("TypeError")),
        (r#"URL("https://x.org")"#, threw("TypeError")),
        (
            r#"[URL.canParse("/a", "https://x.org"), URL.canParse("/a"), URL.parse("nope"), URL.parse("b", "https://x.org/a/").href]"#,
            json!([true, false, null, "https://x.org/a/b"]),
        ),
        (
            r#"(() => { const u = new URL("https://x.org/p"); u.pathname = "a b"; u.hash = "h"; u.port = "8443"; u.protocol = "http"; return u.href; })()"#,
            json!("http://x.org:8443/a%20b#h"),
        ),
        (
            r#"(() => { const u = new URL("https://x.org/"); u.port = "nope"; u.host = ""; return u.href; })()"#,
            json!("https://x.org/"),
        ),
        (
            r#"(() => { const u = new URL("https://x.org/"); u.href = "::"; })()"#,
            threw("TypeError"),
        ),
        (
            r#"JSON.stringify({ u: new URL("https://x.org") })"#,
            json!(r#"{"u":"https://x.org/"}"#),
        ),
        (
            r#"String(new URL("HTTPS://X.ORG/%7e"))"#,
            json!("https://x.org/%7e"),
        ),
        (
            r#"Object.prototype.toString.call(new URL("https://x.org"))"#,
            json!("[object URL]"),
        ),
        // searchParams is linked to its URL both ways.
        (
            r#"(() => { const u = new URL("https://x.org/?a=1&b=2"); u.searchParams.append("c", "3 4"); u.searchParams.delete("a"); return u.href; })()"#,
            json!("https://x.org/?b=2&c=3+4"),
        ),
        (
            r#"(() => { const u = new URL("https://x.org/?a=1"); const p = u.searchParams; u.search = "?z=9"; return [p.get("z"), p.get("a"), u.searchParams === p]; })()"#,
            json!(["9", null, true]),
        ),
        (
            r#"(() => { const u = new URL("https://x.org/?a=1#f"); u.searchParams.delete("a"); return u.href; })()"#,
            json!("https://x.org/#f"),
        ),
    ]);
}

#[test]
fn url_search_params_behave_as_in_browsers() {
    check(&[
        (
            r#"new URLSearchParams("?a=1&b=2&a=3").getAll("a")"#,
            json!(["1", "3"]),
        ),
        (
            r#"new URLSearchParams("q=a+b%20c&e=%zz&x=b=c").toString()"#,
            json!("q=a+b+c&e=%25zz&x=b%3Dc"),
        ),
        (
            r#"[new URLSearchParams("q=a+b%20c").get("q"), new URLSearchParams("a=1").get("missing")]"#,
            json!(["a b c", null]),
        ),
        (
            r#"new URLSearchParams({ q: "a b", x: "1+1", e: "é&=/" }).toString()"#,
            json!("q=a+b&x=1%2B1&e=%C3%A9%26%3D%2F"),
        ),
        (
            r#"(() => { const p = new URLSearchParams([["b", "2"], ["a", "1"], ["b", "1"], ["é", "x"], ["A", "y"]]); p.sort(); return p.toString(); })()"#,
            json!("A=y&a=1&b=2&b=1&%C3%A9=x"),
        ),
        (
            r#"(() => { const p = new URLSearchParams("a=1&b=2&a=3"); p.set("a", "x"); p.append("c", ""); return [p.toString(), p.has("b"), p.has("b", "3"), p.size]; })()"#,
            json!(["a=x&b=2&c=", true, false, 3]),
        ),
        (
            r#"(() => { const p = new URLSearchParams("a=1&a=2&b=1"); p.delete("a", "1"); return p.toString(); })()"#,
            json!("a=2&b=1"),
        ),
        (
            r#"[...new URLSearchParams("a=1&b=2")]"#,
            json!([["a", "1"], ["b", "2"]]),
        ),
        (
            r#"[[...new URLSearchParams("a=1&b=2").keys()], [...new URLSearchParams("a=1&b=2").values()]]"#,
            json!([["a", "b"], ["1", "2"]]),
        ),
        (
            r#"(() => { const out = []; new URLSearchParams("x=1&y=2").forEach((v, k) => out.push(k + v)); return out; })()"#,
            json!(["x1", "y2"]),
        ),
        (
            r#"new URLSearchParams(new URLSearchParams("a=1&b=2")).toString()"#,
            json!("a=1&b=2"),
        ),
        (
            r#"new URLSearchParams(new Map([["k", "v"]])).toString()"#,
            json!("k=v"),
        ),
        (r#"new URLSearchParams([["a"]])"#, threw("TypeError")),
        (r#"new URLSearchParams("=x&y=").toString()"#, json!("=x&y=")),
        (r#"new URLSearchParams(null).toString()"#, json!("null=")),
        (
            r#"Object.prototype.toString.call(new URLSearchParams())"#,
            json!("[object URLSearchParams]"),
        ),
    ]);
}

#[test]
fn text_encoder_and_decoder_behave_as_in_browsers() {
    check(&[
        (
            r#"Array.from(new TextEncoder().encode("é€😀"))"#,
            json!([195, 169, 226, 130, 172, 240, 159, 152, 128]),
        ),
        (
            r#"[new TextEncoder().encode().length, new TextEncoder().encoding]"#,
            json!([0, "utf-8"]),
        ),
        (
            r#"Array.from(new TextEncoder().encode("a\ud800b"))"#,
            json!([97, 239, 191, 189, 98]),
        ),
        (
            r#"(() => { const a = new Uint8Array(5); const r = new TextEncoder().encodeInto("aé€", a); return [r.read, r.written, Array.from(a)]; })()"#,
            json!([2, 3, [97, 195, 169, 0, 0]]),
        ),
        (
            r#"(() => { const a = new Uint8Array(4); const r = new TextEncoder().encodeInto("😀x", a); return [r.read, r.written]; })()"#,
            json!([2, 4]),
        ),
        (
            r#"new TextEncoder().encodeInto("a", new Uint16Array(2))"#,
            threw("TypeError"),
        ),
        (
            r#"new TextDecoder().decode(new Uint8Array([0xE2, 0x82, 0xAC]))"#,
            json!("€"),
        ),
        (
            r#"new TextDecoder().decode(new Uint8Array([0x61, 0xFF, 0x62, 0xE2, 0x82]))"#,
            json!("a\u{FFFD}b\u{FFFD}"),
        ),
        // One U+FFFD per maximal invalid subpart, as the Encoding standard says.
        (
            r#"[new TextDecoder().decode(new Uint8Array([0xF0, 0x80, 0x80])), new TextDecoder().decode(new Uint8Array([0xE2, 0x82, 0x41]))]"#,
            json!(["\u{FFFD}\u{FFFD}\u{FFFD}", "\u{FFFD}A"]),
        ),
        (
            r#"new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array([0x61, 0xFF]))"#,
            threw("TypeError"),
        ),
        (
            r#"new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array([0xE2, 0x82]))"#,
            threw("TypeError"),
        ),
        (
            r#"[new TextDecoder().decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0x61])), new TextDecoder("utf-8", { ignoreBOM: true }).decode(new Uint8Array([0xEF, 0xBB, 0xBF, 0x61]))]"#,
            json!(["a", "\u{FEFF}a"]),
        ),
        (
            r#"(() => { const d = new TextDecoder(); return d.decode(new Uint8Array([0xE2, 0x82]), { stream: true }) + "|" + d.decode(new Uint8Array([0xAC])); })()"#,
            json!("|€"),
        ),
        (
            r#"(() => { const d = new TextDecoder(); return [d.decode(new Uint8Array([0xEF, 0xBB]), { stream: true }), d.decode(new Uint8Array([0xBF, 0x62]))]; })()"#,
            json!(["", "b"]),
        ),
        (
            r#"[new TextDecoder().decode(bytes("héllo").buffer), new TextDecoder().decode(new DataView(bytes("xyz").buffer, 1)), new TextDecoder().decode()]"#,
            json!(["héllo", "yz", ""]),
        ),
        (
            r#"(() => { const d = new TextDecoder(" UTF8 ", { fatal: true }); return [d.encoding, d.fatal, d.ignoreBOM]; })()"#,
            json!(["utf-8", true, false]),
        ),
        (r#"new TextDecoder("latin1")"#, threw("RangeError")),
        (r#"new TextDecoder().decode("text")"#, threw("TypeError")),
    ]);
}

#[test]
fn atob_and_btoa_behave_as_in_browsers() {
    check(&[
        (
            r#"[btoa("hello"), btoa("\xff\x00"), btoa(""), btoa(12)]"#,
            json!(["aGVsbG8=", "/wA=", "", "MTI="]),
        ),
        (r#"btoa("€")"#, threw("InvalidCharacterError")),
        (
            r#"[atob("aGVsbG8="), atob(" aGVs\nbG8 "), atob("aGVsbG8"), atob("YR"), atob(""), atob("/wA=")]"#,
            json!(["hello", "hello", "hello", "a", "", "\u{FF}\u{0}"]),
        ),
        (r#"atob("a")"#, threw("InvalidCharacterError")),
        (r#"atob("aGVsbG8==")"#, threw("InvalidCharacterError")),
        (r#"atob("ab=c")"#, threw("InvalidCharacterError")),
        (r#"atob("é")"#, threw("InvalidCharacterError")),
        (
            r#"(() => { try { atob("*"); } catch (e) { return [e.name, e.code, e instanceof DOMException, e instanceof Error, typeof e.message]; } })()"#,
            json!(["InvalidCharacterError", 5, true, true, "string"]),
        ),
        (
            r#"(() => { const e = new DOMException("m", "NotFoundError"); return [e.name, e.message, e.code, e instanceof Error, Object.prototype.toString.call(e)]; })()"#,
            json!(["NotFoundError", "m", 8, true, "[object DOMException]"]),
        ),
    ]);
}

#[test]
fn structured_clone_copies_plain_data_as_in_browsers() {
    check(&[
        (
            r#"(() => { const a = { x: 1 }; a.self = a; const c = structuredClone(a); return [c !== a, c.self === c, c.x]; })()"#,
            json!([true, true, 1]),
        ),
        (
            r#"(() => { const m = new Map([[1, { a: 1 }], ["k", [1, 2]]]); const c = structuredClone(m); return [c instanceof Map, c !== m, c.get(1).a, c.get("k"), c.get(1) !== m.get(1)]; })()"#,
            json!([true, true, 1, [1, 2], true]),
        ),
        (
            r#"(() => { const m = new Map([[1, 1], [2, 2], [3, 3]]); m.delete(2); const s = new Set(["a", "b"]); s.delete("a"); return [[...structuredClone(m).keys()], [...structuredClone(s)]]; })()"#,
            json!([[1, 3], ["b"]]),
        ),
        (
            r#"(() => { const shared = { n: 1 }; const c = structuredClone({ a: shared, b: shared, s: new Set([shared]) }); return [c.a === c.b, [...c.s][0] === c.a]; })()"#,
            json!([true, true]),
        ),
        (
            r#"[structuredClone(new Date(0)).toISOString(), String(structuredClone(/a+b/gi))]"#,
            json!(["1970-01-01T00:00:00.000Z", "/a+b/gi"]),
        ),
        (
            r#"(() => { const b = new ArrayBuffer(8); const x = new Uint8Array(b, 2, 4); x[0] = 7; const y = new Uint16Array(b); const [cx, cy] = structuredClone([x, y]); return [cx.byteOffset, cx.length, cx[0], cx.buffer === cy.buffer, cx.buffer !== b, cy.length]; })()"#,
            json!([2, 4, 7, true, true, 4]),
        ),
        (
            r#"(() => { const v = new DataView(new ArrayBuffer(4), 1, 2); const c = structuredClone(v); return [c instanceof DataView, c.byteOffset, c.byteLength]; })()"#,
            json!([true, 1, 2]),
        ),
        (
            r#"(() => { const c = structuredClone([1, , 3]); return [c.length, 1 in c]; })()"#,
            json!([3, false]),
        ),
        (
            r#"(() => { const e = structuredClone(new RangeError("bad")); return [e instanceof RangeError, e.message]; })()"#,
            json!([true, "bad"]),
        ),
        (
            r#"[typeof structuredClone(1n), structuredClone("s"), structuredClone(null), typeof structuredClone(new Number(3)), structuredClone(new String("w")).valueOf()]"#,
            json!(["bigint", "s", null, "object", "w"]),
        ),
        (
            r#"(() => { class A { constructor() { this.x = 1; } get y() { return 2; } } const c = structuredClone(new A()); return [Object.getPrototypeOf(c) === Object.prototype, c.x, c.y]; })()"#,
            json!([true, 1, null]),
        ),
        (
            r#"(() => { const o = { a: 1 }; Object.defineProperty(o, "hidden", { value: 2 }); o[Symbol("s")] = 3; return Object.getOwnPropertyNames(structuredClone(o)); })()"#,
            json!(["a"]),
        ),
        (r#"structuredClone({ f() {} })"#, threw("DataCloneError")),
        (r#"structuredClone(Symbol("s"))"#, threw("DataCloneError")),
        (
            r#"structuredClone(Promise.resolve())"#,
            threw("DataCloneError"),
        ),
        (
            r#"structuredClone(new Proxy({}, {}))"#,
            threw("DataCloneError"),
        ),
        (
            r#"structuredClone(new ArrayBuffer(1), { transfer: [new ArrayBuffer(1)] })"#,
            threw("DataCloneError"),
        ),
        (
            r#"(() => { try { structuredClone(() => 1); } catch (e) { return [e.code, e instanceof DOMException]; } })()"#,
            json!([25, true]),
        ),
        (r#"structuredClone()"#, threw("TypeError")),
    ]);
}

#[test]
fn crypto_behaves_as_in_browsers() {
    check(&[
        (
            r#"/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID())"#,
            json!(true),
        ),
        (
            r#"crypto.randomUUID() !== crypto.randomUUID()"#,
            json!(true),
        ),
        (
            r#"(() => { const a = new Uint32Array(16); return [crypto.getRandomValues(a) === a, a.some((x) => x !== 0)]; })()"#,
            json!([true, true]),
        ),
        (
            r#"crypto.getRandomValues(new Uint8Array(65536)).length"#,
            json!(65536),
        ),
        (
            r#"crypto.getRandomValues(new Uint8Array(65537))"#,
            threw("QuotaExceededError"),
        ),
        (
            r#"crypto.getRandomValues(new Float64Array(2))"#,
            threw("TypeMismatchError"),
        ),
        (
            r#"crypto.getRandomValues(new ArrayBuffer(2))"#,
            threw("TypeError"),
        ),
        (
            r#"crypto.subtle.digest("SHA-256", bytes("abc")).then(hex)"#,
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ),
        (
            r#"crypto.subtle.digest({ name: "sha-1" }, bytes("abc").buffer).then(hex)"#,
            json!("a9993e364706816aba3e25717850c26c9cd0d89d"),
        ),
        (
            r#"crypto.subtle.digest("SHA-384", bytes("abc")).then(hex)"#,
            json!(
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
            ),
        ),
        (
            r#"crypto.subtle.digest("SHA-512", bytes("abc")).then(hex)"#,
            json!(
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
            ),
        ),
        (
            r#"crypto.subtle.digest("SHA-256", new Uint8Array()).then((b) => b instanceof ArrayBuffer)"#,
            json!(true),
        ),
        (
            r#"crypto.subtle.digest("MD5", bytes("abc"))"#,
            threw("NotSupportedError"),
        ),
        (
            r#"(() => { const p = crypto.subtle.digest("SHA-256", "not bytes"); return p instanceof Promise ? p : "threw synchronously"; })()"#,
            threw("TypeError"),
        ),
        // RFC 4231, test cases 1 and 2.
        (
            r#"crypto.subtle.importKey("raw", new Uint8Array(20).fill(0x0b), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]).then((k) => crypto.subtle.sign("HMAC", k, bytes("Hi There"))).then(hex)"#,
            json!("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        ),
        (
            r#"crypto.subtle.importKey("raw", bytes("Jefe"), { name: "HMAC", hash: { name: "SHA-512" } }, false, ["sign"]).then((k) => crypto.subtle.sign({ name: "HMAC" }, k, bytes("what do ya want for nothing?"))).then(hex)"#,
            json!(
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
            ),
        ),
        (
            r#"(async () => { const k = await crypto.subtle.importKey("raw", bytes("Jefe"), { name: "HMAC", hash: "SHA-256" }, true, ["sign", "verify"]); const sig = await crypto.subtle.sign("HMAC", k, bytes("msg")); const bad = new Uint8Array(sig).slice(); bad[0] ^= 1; return [await crypto.subtle.verify("HMAC", k, sig, bytes("msg")), await crypto.subtle.verify("HMAC", k, bad, bytes("msg")), await crypto.subtle.verify("HMAC", k, sig, bytes("other")), k.type, k.extractable, k.algorithm, k.usages, Object.prototype.toString.call(k)]; })()"#,
            json!([
                true,
                false,
                false,
                "secret",
                true,
                { "name": "HMAC", "hash": { "name": "SHA-256" }, "length": 32 },
                ["sign", "verify"],
                "[object CryptoKey]"
            ]),
        ),
        (
            r#"crypto.subtle.importKey("raw", bytes("k"), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]).then((k) => crypto.subtle.sign("HMAC", k, bytes("x")))"#,
            threw("InvalidAccessError"),
        ),
        (
            r#"crypto.subtle.importKey("raw", bytes("k"), { name: "HMAC", hash: "SHA-256" }, false, ["encrypt"])"#,
            threw("SyntaxError"),
        ),
        (
            r#"crypto.subtle.importKey("jwk", {}, { name: "HMAC", hash: "SHA-256" }, false, ["sign"])"#,
            threw("NotSupportedError"),
        ),
        (
            r#"crypto.subtle.importKey("raw", bytes("k"), { name: "AES-GCM" }, false, ["encrypt"])"#,
            threw("NotSupportedError"),
        ),
    ]);
}

#[test]
fn globals_can_be_read_assigned_and_deleted_as_in_browsers() {
    check(&[
        (
            r#"[typeof TextEncoder, typeof TextDecoder, typeof URL, typeof URLSearchParams, typeof atob, typeof btoa, typeof structuredClone, typeof queueMicrotask, typeof setTimeout, typeof clearTimeout, typeof setInterval, typeof clearInterval, typeof crypto, typeof DOMException]"#,
            json!([
                "function", "function", "function", "function", "function", "function", "function",
                "function", "function", "function", "function", "function", "object", "function"
            ]),
        ),
        (
            r#"[globalThis.atob === atob, atob === atob, atob.name, atob.length, Object.keys(globalThis).includes("atob"), Object.keys(globalThis).includes("URL")]"#,
            json!([true, true, "atob", 1, true, false]),
        ),
        (
            r#"(() => { globalThis.setTimeout = 5; return [setTimeout, typeof clearTimeout]; })()"#,
            json!([5, "function"]),
        ),
        (
            r#"(() => { delete globalThis.URLSearchParams; return [typeof URLSearchParams, new URL("https://x.org/?a=1").searchParams.get("a")]; })()"#,
            json!(["undefined", "1"]),
        ),
    ]);
}

#[test]
fn absent_globals_are_undefined_and_their_use_names_the_way_out() {
    check(&[
        (
            r#"[typeof fetch, typeof require, typeof process, typeof XMLHttpRequest, typeof WebSocket, typeof Buffer]"#,
            json!([
                "undefined",
                "undefined",
                "undefined",
                "undefined",
                "undefined",
                "undefined"
            ]),
        ),
        // A single agent has no use for it, and its waiters would outlive the job.
        (
            r#"[typeof Atomics.wait, typeof Atomics.waitAsync]"#,
            json!(["function", "undefined"]),
        ),
    ]);
    let (kind, message) = run_js_err(r#"export default () => fetch("https://example.com")"#);
    assert_eq!(kind, "execution");
    assert!(
        message.contains("ReferenceError: fetch is not defined")
            && message.contains("call a configured endpoint with mechanics:endpoint"),
        "{message}"
    );
    let (_, message) = run_js_err("export default () => require('fs')");
    assert!(
        message.contains("require is not defined (jobs are ES modules"),
        "{message}"
    );
    let (_, message) = run_js_err("export default () => process.env.HOME");
    assert!(
        message.contains("process is not defined (jobs have no process"),
        "{message}"
    );
    // A DOMException is described under its own name.
    let (_, message) = run_js_err("export default () => atob('*')");
    assert!(
        message.starts_with("InvalidCharacterError: atob:"),
        "{message}"
    );
}

#[test]
fn timers_and_microtasks_run_in_browser_order() {
    let result = run_js(
        r#"export default () => new Promise((resolve) => {
  const log = [];
  setTimeout(() => log.push("t20"), 20);
  setTimeout(() => {
    log.push("t10");
    Promise.resolve().then(() => log.push("p-in-t10"));
    queueMicrotask(() => log.push("m-in-t10"));
  }, 10);
  setTimeout(() => log.push("t0"), 0);
  setTimeout(() => log.push("t0-second"));
  queueMicrotask(() => log.push("m1"));
  Promise.resolve().then(() => log.push("p1"));
  queueMicrotask(() => log.push("m2"));
  log.push("sync");
  setTimeout(() => resolve(log), 40);
})"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(
        result,
        json!([
            "sync",
            "m1",
            "p1",
            "m2",
            "t0",
            "t0-second",
            "t10",
            "p-in-t10",
            "m-in-t10",
            "t20"
        ])
    );
}

#[test]
fn timers_pass_arguments_can_be_cleared_and_intervals_repeat() {
    check(&[
        (
            r#"new Promise((r) => setTimeout((a, b) => r([a, b]), 1, "x", 2))"#,
            json!(["x", 2]),
        ),
        (
            r#"new Promise((r) => { const log = []; const id = setTimeout(() => log.push("no"), 5); clearTimeout(id); clearTimeout(undefined); clearTimeout("junk"); setTimeout(() => r(log), 20); })"#,
            json!([]),
        ),
        (
            r#"new Promise((r) => { let n = 0; const id = setInterval(() => { n++; if (n === 3) { clearInterval(id); setTimeout(() => r(n), 30); } }, 2); })"#,
            json!(3),
        ),
        (
            r#"(() => { const a = setTimeout(() => {}, 1), b = setInterval(() => {}, 1); clearTimeout(a); clearInterval(b); return [typeof a, Number.isInteger(a) && a > 0, b > a]; })()"#,
            json!(["number", true, true]),
        ),
        (
            r#"new Promise((r) => setTimeout(function () { r(this === globalThis); }, 0))"#,
            json!(true),
        ),
        (r#"setTimeout("1 + 1", 0)"#, threw("TypeError")),
        (r#"queueMicrotask(42)"#, threw("TypeError")),
    ]);
    let awaited_at_top_level = run_js(
        "await new Promise((r) => setTimeout(r, 5)); export default () => 'ok'",
        Value::Null,
    )
    .unwrap();
    assert_eq!(awaited_at_top_level, json!("ok"));
}

#[test]
fn a_timer_pending_when_the_job_settles_is_cancelled() {
    let started = Instant::now();
    let result = run_js(
        r#"export default () => {
  setTimeout(() => { throw new Error("fired after the job ended"); }, 10);
  setTimeout(() => {}, 600000);
  setInterval(() => { throw new Error("interval fired"); }, 1);
  return "done";
}"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(result, json!("done"));
    let result = run_js(
        r#"export default () => new Promise((resolve) => {
  setTimeout(() => resolve("first"), 5);
  setTimeout(() => { throw new Error("fired after the job ended"); }, 60);
})"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(result, json!("first"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // While the job runs, an exception in a callback fails it, as an uncaught one would.
    let (kind, message) = run_js_err(
        r#"export default () => new Promise((r) => { setTimeout(() => { throw new Error("boom"); }, 1); setTimeout(r, 50); })"#,
    );
    assert_eq!(kind, "execution");
    assert!(message.contains("Error: boom"), "{message}");
}

/// A pool whose jobs may run `time_ms` with 64 MiB.
fn limited_pool(time_ms: u64) -> MechanicsPool {
    let limits = MechanicsExecutionLimits::default()
        .with_max_execution_time(Duration::from_millis(time_ms))
        .unwrap()
        .with_max_loop_iterations(1_000_000_000_000)
        .unwrap()
        .with_max_memory_mb(64)
        .unwrap();
    MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_execution_limits(limits),
    )
    .unwrap()
}

/// Runs each `(name, source, expected error)` on `pool` and checks that it fails with that
/// error within its time limit plus 500 ms, and that the pool keeps serving with no thread lost.
fn fail_within_limits(pool: &MechanicsPool, time_ms: u64, cases: &[(&str, &str, &str)]) {
    for (name, source, expected) in cases {
        let started = Instant::now();
        let job = MechanicsJob::new(*source, Value::Null, MechanicsConfig::default()).unwrap();
        let err = pool.run(job).result.expect_err(name);
        let elapsed = started.elapsed();
        assert!(
            err.to_string().contains(expected),
            "{name}: expected {expected:?} in {err}"
        );
        assert!(
            elapsed < Duration::from_millis(time_ms + 500),
            "{name}: took {elapsed:?}"
        );
        let next = MechanicsJob::new(
            "export default () => 1",
            Value::Null,
            MechanicsConfig::default(),
        )
        .unwrap();
        assert_eq!(pool.run(next).result.unwrap(), json!(1), "after {name}");
        // Stopped by the engine's checks, not by parking the thread on the hard memory limit.
        assert_eq!(
            pool.stats().abandoned_workers,
            0,
            "{name}: a worker was abandoned"
        );
    }
}

#[test]
fn timers_cannot_extend_a_job_past_its_time_limit() {
    fail_within_limits(
        &limited_pool(200),
        200,
        &[
            (
                "a 10-minute timeout",
                "export default () => new Promise((r) => setTimeout(r, 600000))",
                "time limit of 200 ms",
            ),
            (
                "a setTimeout chain",
                "export default () => new Promise(() => { const f = () => setTimeout(f, 0); f(); })",
                "time limit of 200 ms",
            ),
            (
                "an endless setInterval",
                "export default () => new Promise(() => setInterval(() => {}, 0))",
                "time limit of 200 ms",
            ),
            (
                "queueMicrotask recursion",
                "export default () => new Promise(() => { const f = () => queueMicrotask(f); f(); })",
                "time limit of 200 ms",
            ),
            (
                "SHA-512 of a big buffer, again and again",
                "export default async () => { const b = new Uint8Array(8 * 1024 * 1024); while (true) await crypto.subtle.digest('SHA-512', b); }",
                "time limit of 200 ms",
            ),
        ],
    );
}

#[test]
fn native_globals_cannot_pass_the_memory_limit() {
    // A generous time limit: these must stop at the memory limit, however slow the machine.
    fail_within_limits(
        &limited_pool(10_000),
        10_000,
        &[
            (
                "a huge TextDecoder output",
                "export default () => { const piece = new TextEncoder().encode('\\u00e9'.repeat(2 ** 22)); const big = new Uint8Array(6 * piece.length); for (let i = 0; i < 6; i++) big.set(piece, i * piece.length); return new TextDecoder().decode(big).length; }",
                "memory limit",
            ),
            (
                "a huge TextEncoder output",
                "export default () => { let s = '\\u20ac'.repeat(2 ** 22); s = s + s + s + s; return new TextEncoder().encode(s).length; }",
                "memory limit",
            ),
            (
                "structuredClone of a growing graph",
                "export default () => { const a = []; for (let i = 0; i < 50000; i++) a.push({ i }); const copies = []; while (true) copies.push(structuredClone(a)); }",
                "memory limit",
            ),
            (
                "a huge URLSearchParams",
                "export default () => new URLSearchParams('a=1&'.repeat(2 ** 22)).size",
                "limit",
            ),
        ],
    );
}

/// Every global the engine defines is declared in `ts-types/mechanics-globals.d.ts`, and the
/// absent ones are not.
#[test]
fn the_globals_declarations_match_the_engine() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ts-types/mechanics-globals.d.ts"
    );
    let text = std::fs::read_to_string(path).expect("ts-types/mechanics-globals.d.ts");
    let declared: BTreeSet<String> =
        regex::Regex::new(r"(?m)^declare (?:var|function|class) ([A-Za-z_$][\w$]*)")
            .unwrap()
            .captures_iter(&text)
            .map(|c| c[1].to_owned())
            .collect();
    let names: Vec<&str> = declared.iter().map(String::as_str).collect();
    let source = format!(
        "export default () => {}.map((n) => [n, typeof globalThis[n]])",
        serde_json::to_string(&names).unwrap()
    );
    let types = run_js(&source, Value::Null).unwrap();
    for pair in types.as_array().unwrap() {
        assert_ne!(
            pair[1], "undefined",
            "{} is declared but not defined",
            pair[0]
        );
    }
    let expected: BTreeSet<String> = [
        "TextEncoder",
        "TextDecoder",
        "URL",
        "URLSearchParams",
        "atob",
        "btoa",
        "structuredClone",
        "queueMicrotask",
        "setTimeout",
        "clearTimeout",
        "setInterval",
        "clearInterval",
        "crypto",
        "DOMException",
        "console",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(declared, expected);
    for absent in ["fetch", "require", "process", "Buffer", "XMLHttpRequest"] {
        assert!(
            !text.contains(&format!("declare function {absent}"))
                && !text.contains(&format!("declare var {absent}")),
            "{absent} must not be declared"
        );
    }
}
