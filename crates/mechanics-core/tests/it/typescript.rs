//! TypeScript modules: transpiled by `mechanics_core::typescript`, run as JavaScript, with
//! positions in errors and console output mapped back to the TypeScript lines.

use mechanics_core::job::{MechanicsConfig, MechanicsJob};
use mechanics_core::typescript::{self, Transpiled};
use mechanics_core::{ConsoleLevel, JobOutput, MechanicsError};
use serde_json::{Value, json};

use crate::shared_pool;

fn transpiled(source: &str) -> Transpiled {
    typescript::transpile(source, "worker.ts")
        .unwrap_or_else(|err| panic!("the module should transpile: {err}"))
}

/// Transpiles `source` as `worker.ts` and runs it with `arg`, with its source map.
fn run_ts(source: &str, arg: Value) -> JobOutput {
    let out = transpiled(source);
    let job = MechanicsJob::new(out.javascript, arg, MechanicsConfig::default())
        .expect("a valid job")
        .with_source_map(out.source_map);
    shared_pool().run(job)
}

/// The 1-based line of `source` that holds `needle`.
fn line_of(source: &str, needle: &str) -> usize {
    source
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in {source}"))
        + 1
}

const TYPED: &str = r#"import hex from "mechanics:hex";
import type { Item as Imported } from "./nowhere";

interface Item<T> {
  id: number;
  value?: T;
  nested?: { label?: string };
}

type Pair<A, B> = [A, B];

enum Color { Red, Green = "green", Blue = 4 }
const enum Size { Small = 1, Large = 10 }

class Counter<T extends number> {
  private count = 0;
  constructor(private readonly start: T, public step: number = 1) {}
  next(): number {
    this.count += 1;
    return this.start + this.count * this.step;
  }
}

function first<T>(items: ReadonlyArray<Item<T>>): T | undefined {
  return items[0]?.value;
}

namespace Labels {
  export const prefix = "item-";
}

export default function main(arg: { items: Item<string>[] }): Record<string, unknown> {
  const counter = new Counter(10 as const, 5);
  counter.next();
  const unused: Imported | undefined = undefined;
  const value = first(arg.items) as string;
  const pair: Pair<string, number> = [value!, Size.Large];
  return {
    value,
    label: arg.items[1]?.nested?.label ?? "none",
    missing: arg.items[5]?.nested?.label,
    colors: [Color.Red, Color.Green, Color[4], Color.Blue],
    pair,
    next: counter.next(),
    step: counter.step,
    hidden: (counter as unknown as { start: number }).start,
    tag: Labels.prefix + hex.encode(new Uint8Array([arg.items.length])),
    unused: unused ?? null,
  };
}
"#;

#[test]
fn a_module_with_interfaces_generics_enums_casts_and_parameter_properties_runs() {
    let arg =
        json!({ "items": [{ "id": 1, "value": "a" }, { "id": 2, "nested": { "label": "b" } }] });
    let out = run_ts(TYPED, arg).result.expect("the module runs");
    assert_eq!(
        out,
        json!({
            "value": "a",
            "label": "b",
            "colors": [0, "green", "Blue", 4],
            "pair": ["a", 10],
            "next": 20,
            "step": 5,
            "hidden": 10,
            "tag": "item-02",
            "unused": null,
        })
    );
    // No type survives into the JavaScript, and the output is module code as written.
    let js = transpiled(TYPED).javascript;
    for typed in [
        "interface",
        ": number",
        "<T>",
        " as ",
        "private",
        "type Pair",
        "./nowhere",
    ] {
        assert!(!js.contains(typed), "{typed:?} in {js}");
    }
    assert!(js.contains("?.") && js.contains("??"), "{js}");
    assert!(js.contains("export default function main"), "{js}");
}

#[test]
fn decorators_are_refused_with_a_clear_message() {
    for (source, line, column) in [
        (
            "function sealed(c: unknown) {}\n@sealed\nclass A {}\nexport default () => 1\n",
            2,
            1,
        ),
        (
            "class A {\n  @log method() {}\n}\nexport default () => 1\n",
            2,
            3,
        ),
    ] {
        let err = typescript::transpile(source, "summarize.ts").unwrap_err();
        assert_eq!((err.line(), err.column()), (line, column), "{source}");
        assert_eq!(
            err.to_string(),
            format!(
                "summarize.ts:{line}:{column}: decorators are not supported in Mechanics workers; \
                 call the decorating function yourself instead"
            )
        );
    }
}

#[test]
fn a_syntax_error_is_reported_with_file_line_and_column() {
    let err = typescript::transpile(
        "export default function main() {\n  const a = 1;\n  let b: = 2;\n}\n",
        "summarize.ts",
    )
    .unwrap_err();
    assert_eq!(err.file(), "summarize.ts");
    assert_eq!((err.line(), err.column()), (3, 10));
    assert!(err.to_string().starts_with("summarize.ts:3:10: "), "{err}");
    // Errors found after parsing have positions too, and so do CommonJS forms a job cannot run.
    for (source, expected) in [
        (
            "let a = 1;\nlet a = 2;\n",
            "w.ts:1:5: Identifier `a` has already been declared",
        ),
        (
            "export = 3;\n",
            "w.ts:1:1: Export assignment cannot be used",
        ),
        (
            "import fs = require('fs');\nexport default () => fs;\n",
            "w.ts:1:1: Import assignment",
        ),
    ] {
        let err = typescript::transpile(source, "w.ts").unwrap_err();
        assert!(err.to_string().starts_with(expected), "{source}: {err}");
    }
    // A type error is not a syntax error: nothing is type-checked.
    assert!(
        typescript::transpile(
            "const n: number = 'text';\nexport default () => n;\n",
            "w.ts"
        )
        .is_ok()
    );
}

#[test]
fn a_module_nested_too_deeply_is_refused_and_the_process_lives_on() {
    // Far past what the transpiler's stack holds: without the guard, the process would abort.
    let depth = 1_000_000;
    let source = format!(
        "export default () => {}1{};\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let err = typescript::transpile(&source, "deep.ts").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("deep.ts:1:1: the module nests too deeply to be transpiled"),
        "{err}"
    );
    // Deep, but not absurdly: transpiled.
    let source = format!(
        "export default () => {}1{};\n",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(typescript::transpile(&source, "deep.ts").is_ok());
}

/// An error thrown on line 12 of the TypeScript, where the JavaScript has it on another line.
const THROWS: &str = r#"interface Input {
  name: string;
  count: number;
}

type Checked = Input & { ok: true };

export default function main(arg: Input): string {
  const checked: Checked | undefined =
    arg.count > 0 ? { ...arg, ok: true } : undefined;
  if (!checked) {
    throw new RangeError(`count must be positive, got ${arg.count}`);
  }
  return checked.name;
}
"#;

/// The message of the execution error `output` ended with.
fn execution_error(output: JobOutput) -> String {
    match output.result {
        Err(MechanicsError::Execution(message)) => message,
        other => panic!("expected an execution error, got {other:?}"),
    }
}

#[test]
fn an_error_thrown_in_typescript_code_reports_the_typescript_line() {
    let js = transpiled(THROWS).javascript;
    let js_line = line_of(&js, "throw new RangeError");
    assert_eq!(line_of(THROWS, "throw new RangeError"), 12);
    assert_ne!(
        js_line, 12,
        "the test needs the JavaScript on another line:\n{js}"
    );

    let message = execution_error(run_ts(THROWS, json!({ "name": "x", "count": 0 })));
    assert_eq!(
        message,
        "RangeError: count must be positive, got 0 (worker.ts:12:11)"
    );

    // A TypeError raised by the engine in a loop condition, after the tick the instrumentation
    // inserts there: the column is the TypeScript's too, inside the failing expression (shifted
    // by the inserted text, it would land past it).
    let source = "export default function main(arg: { list?: number[] }): number {\n  let total = 0;\n  for (let i: number = 0; i < (arg.list as number[]).length; i++) { total += i; }\n  return total;\n}\n";
    let message = execution_error(run_ts(source, json!({})));
    let line = source.lines().nth(2).unwrap();
    let expression = line.find("(arg.list").unwrap() + 1..=line.find("; i++").unwrap();
    let column: usize = message
        .strip_prefix("TypeError: ")
        .and_then(|rest| rest.split("(worker.ts:3:").nth(1))
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|column| column.parse().ok())
        .unwrap_or_else(|| panic!("a TypeError at worker.ts:3: {message}"));
    assert!(
        expression.contains(&column),
        "{message}: not in {expression:?}"
    );
}

#[test]
fn a_console_error_stack_points_at_the_typescript_line() {
    let source = r#"interface Report {
  errors: number;
}

function fail(report: Report): Error {
  return new Error(`${report.errors} errors`);
}

export default function main(): number {
  const report: Report = { errors: 3 };
  console.error(fail(report));
  return report.errors;
}
"#;
    let out = run_ts(source, Value::Null);
    assert_eq!(out.result, Ok(json!(3)));
    let error = &out.console[0];
    assert_eq!(error.level, ConsoleLevel::Error);
    assert!(
        error.message.starts_with("Error: 3 errors\n"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("at fail (worker.ts:6:"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("at main (worker.ts:11:"),
        "{}",
        error.message
    );
}

#[test]
fn a_job_without_a_source_map_keeps_the_engines_positions() {
    let job = MechanicsJob::new(
        "export default () => {\n  throw new Error('x');\n}\n",
        Value::Null,
        MechanicsConfig::default(),
    )
    .unwrap();
    let out = shared_pool().run(job);
    let Err(err) = out.result else {
        panic!("expected an error")
    };
    assert!(!err.to_string().contains("worker.ts"), "{err}");
}
