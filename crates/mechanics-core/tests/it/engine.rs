//! The JavaScript contract: default export, promises, isolation, imports, results.

use serde_json::{Value, json};

use crate::{run_js, run_js_err};

#[test]
fn default_export_gets_the_argument_and_returns_json() {
    let out = run_js(
        "export default function main(arg) { return { ok: true, got: arg, n: arg.items.length } }",
        json!({ "items": [1, 2, 3], "name": "é😀" }),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({ "ok": true, "got": { "items": [1, 2, 3], "name": "é😀" }, "n": 3 })
    );
}

#[test]
fn async_default_export_and_top_level_await_are_awaited() {
    let source = "const base = await Promise.resolve(40);
        export default async function main(x) { await null; return base + x }";
    assert_eq!(run_js(source, json!(2)).unwrap(), json!(42));
}

#[test]
fn a_thrown_error_or_rejection_fails_the_job_with_its_message() {
    let (kind, message) = run_js_err("export default () => { throw new TypeError('bad input') }");
    assert_eq!(kind, "execution");
    assert!(
        message.contains("TypeError") && message.contains("bad input"),
        "{message}"
    );
    let (kind, message) =
        run_js_err("export default async function () { throw new Error('later') }");
    assert_eq!(kind, "execution");
    assert!(message.contains("later"), "{message}");
    let (_, message) = run_js_err("export default () => { throw { code: 7 } }");
    assert!(message.contains("Uncaught"), "{message}");
}

#[test]
fn pending_promises_after_the_queue_drains_fail_the_job() {
    let (kind, message) = run_js_err("export default () => new Promise(() => {})");
    assert_eq!(kind, "execution");
    assert!(message.contains("still pending"), "{message}");
    let (_, message) = run_js_err("await new Promise(() => {}); export default () => 1");
    assert!(
        message.contains("module evaluation is still pending"),
        "{message}"
    );
}

#[test]
fn unhandled_rejections_are_fatal_but_handled_ones_are_not() {
    let (kind, message) =
        run_js_err("export default () => { Promise.reject(new Error('lost')); return 1 }");
    assert_eq!(kind, "execution");
    assert!(message.contains("unhandled promise rejection") && message.contains("lost"));
    let out = run_js(
        "export default () => { const p = Promise.reject(1); p.catch(() => {}); return 2 }",
        Value::Null,
    );
    assert_eq!(out.unwrap(), json!(2));
}

#[test]
fn a_missing_or_non_callable_default_export_is_a_clear_error() {
    let (_, message) = run_js_err("export default 42");
    assert!(
        message.contains("default export is not a function"),
        "{message}"
    );
    let (kind, _) = run_js_err("export const main = () => 1");
    assert_eq!(kind, "execution");
}

#[test]
fn nothing_a_job_does_to_globals_reaches_the_next_job() {
    let poison = "export default () => {
        globalThis.leaked = 1; Array.prototype.evil = () => 'evil';
        Object.prototype.polluted = true; Math.random = () => 4;
        return 'done' }";
    let check = "export default () => [typeof globalThis.leaked, typeof [].evil,
        ({}).polluted === undefined, Math.random() !== 4]";
    for _ in 0..4 {
        assert_eq!(run_js(poison, Value::Null).unwrap(), json!("done"));
        assert_eq!(
            run_js(check, Value::Null).unwrap(),
            json!(["undefined", "undefined", true, true])
        );
    }
}

#[test]
fn results_follow_json_stringify_rules() {
    let out = run_js(
        "export default () => ({ u: undefined, f() {}, n: NaN, i: -Infinity, d: new Date(0),
            arr: [undefined, () => 1, 1.5], big: 2 ** 53, t: { toJSON(k) { return 'key:' + k } } })",
        Value::Null,
    )
    .unwrap();
    assert_eq!(
        out,
        json!({ "n": null, "i": null, "d": "1970-01-01T00:00:00.000Z",
                "arr": [null, null, 1.5], "big": 9007199254740992.0_f64, "t": "key:t" })
    );
    assert_eq!(
        run_js("export default () => undefined", Value::Null).unwrap(),
        Value::Null
    );
}

#[test]
fn results_that_are_not_json_fail_clearly() {
    let (kind, message) = run_js_err("export default () => 10n");
    assert_eq!(kind, "execution");
    assert!(message.contains("BigInt"), "{message}");
    let (_, message) = run_js_err("export default () => { const a = {}; a.self = a; return a }");
    assert!(message.contains("circular"), "{message}");
}

#[test]
fn only_mechanics_modules_can_be_imported() {
    for specifier in [
        "./other.js",
        "/etc/passwd",
        "../../secret.js",
        "https://example.com/x.js",
        "node:fs",
        "fs",
        "mechanics:nope",
    ] {
        let source = format!("import x from {specifier:?}; export default () => x");
        let (kind, message) = run_js_err(&source);
        assert_eq!(kind, "execution", "{specifier}");
        assert!(
            message.contains("cannot import") && message.contains("mechanics:base64"),
            "{specifier}: {message}"
        );
    }
}

/// Every import form reaches the same module: named, default, namespace (static, with a
/// default beside it) and dynamic, which behave as module namespaces do in browsers and Node.
#[test]
fn every_import_form_reaches_the_mechanics_modules() {
    let result = run_js(
        r#"
        import * as b64 from "mechanics:base64";
        import hexDefault, * as hex from "mechanics:hex";
        import { encode } from "mechanics:base64";
        import b64Default from "mechanics:base64";
        export default async function () {
            const dynamic = await import("mechanics:" + "hex");
            const bytes = new Uint8Array([104, 105]);
            let assigned;
            try { b64.encode = null; assigned = "no error"; } catch (e) { assigned = e.name; }
            return {
                keys: Object.keys(b64),
                tag: Object.prototype.toString.call(b64),
                proto: Object.getPrototypeOf(b64),
                frozen: Object.isFrozen(hex),
                namespace: b64.encode(bytes),
                named: encode === b64.encode,
                default_object: b64Default.encode === b64.encode,
                default_beside_namespace: hexDefault === hex.default,
                dynamic_is_the_static_namespace: dynamic === hex,
                dynamic_call: dynamic.encode(bytes),
                assigned,
            };
        }
        "#,
        json!(null),
    )
    .unwrap();
    assert_eq!(
        result,
        json!({
            "keys": ["decode", "default", "encode"],
            "tag": "[object Module]",
            "proto": null,
            "frozen": true,
            "namespace": "aGk=",
            "named": true,
            "default_object": true,
            "default_beside_namespace": true,
            "dynamic_is_the_static_namespace": true,
            "dynamic_call": "6869",
            "assigned": "TypeError",
        })
    );
}

#[test]
fn a_dynamic_import_of_anything_else_rejects_and_can_be_caught() {
    let result = run_js(
        r#"export default async function () {
            const caught = [];
            for (const specifier of ["fs", "node:fs", "https://example.com/x.js", "./job.js"]) {
                try { await import(specifier); caught.push("imported"); }
                catch (e) { caught.push(e instanceof TypeError && e.message.includes("built-in modules")); }
            }
            return caught;
        }"#,
        json!(null),
    )
    .unwrap();
    assert_eq!(result, json!([true, true, true, true]));
    let (_, message) = run_js_err("export default () => import('fs')");
    assert!(message.contains("cannot import \"fs\""), "{message}");
    let (_, message) = run_js_err("import * as fs from 'fs'; export default () => 1");
    assert!(message.contains("cannot import \"fs\""), "{message}");
}

#[test]
fn eval_and_function_constructor_are_disabled() {
    for body in [
        "eval('1 + 1')",
        "new Function('return 1')()",
        "(0, eval)('2')",
    ] {
        let source = format!("export default () => {body}");
        let (kind, message) = run_js_err(&source);
        assert_eq!(kind, "execution");
        assert!(message.contains("EvalError"), "{body}: {message}");
    }
}

#[test]
fn syntax_errors_are_reported_with_a_position() {
    let (kind, message) = run_js_err("export default () => {");
    assert_eq!(kind, "execution");
    assert!(message.contains("SyntaxError"), "{message}");
}

#[test]
fn instrumentation_keeps_the_meaning_of_tricky_code() {
    let source = r#"
        const d = [10, 20, 30];
        const pick = (k) => d[k];
        const chain = x => y => x * y;
        let label = 0;
        outer: for (let i = 0; i < 3; i++) { for (let j = 0; ; j++) { if (j > 1) continue outer; label += j } }
        let w = 0; do { w++ } while (w < 5 && /a/.test("abc"));
        let fo = 0; for (const v of [1, 2, 3]) { if (v === 2) continue; fo += v } for (const k in { a: 1, b: 2 }) fo += k.length;
        for (const [x, y] of [[1, 2]]) fo += x * y;
        let bare = 0; for (;;) { if (++bare >= 4) break } for (let k = 0 ; ; ) { if (k++ > 2) { bare += k; break } }
        const cls = new (class { #p = 3; static s = (() => 4)(); get p() { return this.#p } })();
        function* gen() { let i = 0; while (i < 3) yield i++ }
        export default async function main() {
            const s = "while (true) {}"; const t = `x ${ [1,2].map((v, i) => v + d[i]).join() } y`;
            return [pick(1), chain(6)(7), label, w, cls.p, [...gen()], s, t, (() => ({ a: 1 }))(), bare, fo];
        }"#;
    assert_eq!(
        run_js(source, Value::Null).unwrap(),
        json!([20, 42, 3, 5, 3, [0, 1, 2], "while (true) {}", "x 11,22 y", { "a": 1 }, 8, 8])
    );
}

#[test]
fn async_arrow_default_exports_work_despite_boa() {
    assert_eq!(
        run_js("export default async (x) => (await x) * 2", json!(21)).unwrap(),
        json!(42)
    );
    assert_eq!(
        run_js("export default async x => ({ x })", json!(1)).unwrap(),
        json!({ "x": 1 })
    );
}

#[test]
fn symbol_registry_is_per_job() {
    let source = "export default (k) => {
        const seen = Symbol.keyFor(Symbol.for('shared')) === 'shared' && Symbol.for('a') === Symbol.for('a');
        const fresh = globalThis.__leak === undefined; globalThis.__leak = Symbol.for(k);
        return [seen, fresh, Symbol.keyFor(Symbol('x')) === undefined, Symbol.for(k).description] }";
    for k in ["one", "two"] {
        assert_eq!(
            run_js(source, json!(k)).unwrap(),
            json!([true, true, true, k])
        );
    }
    let (_, message) = run_js_err("export default () => Symbol.keyFor('nope')");
    assert!(message.contains("TypeError"), "{message}");
}
