//! The canonical JSON shapes of the job types — `json-schema/*.schema.json` and
//! `ts-types/mechanics-json-shapes.d.ts` — and the `ts-types/*.d.ts` declarations of the synthetic
//! modules, checked against the Rust types and the running engine:
//!
//! - the schemas accept and reject what they should;
//! - for every document of a table, the schema's verdict is serde's verdict (the parity guard);
//! - the schemas, the TypeScript interfaces and the serialized Rust types list the same fields,
//!   with the same defaults (the drift guard);
//! - every synthetic module the engine offers is declared, with the exports it really has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jsonschema::{Draft, Registry, Validator};
use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use regex::Regex;
use serde_json::{Map, Number, Value, json};

/// Synthetic modules that exist (they are in `SPECIFIERS`) but have no declaration yet, because
/// their runtime API is not written yet. Remove an entry when its `.d.ts` is added.
const NOT_YET_DECLARED: &[&str] = &["mechanics:endpoint"];

// ---------------------------------------------------------------------------------------------
// Files and validators
// ---------------------------------------------------------------------------------------------

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = crate_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The three shapes that have a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Job,
    Limits,
    Config,
}

use Shape::{Config, Job, Limits};

impl Shape {
    const ALL: [Shape; 3] = [Job, Limits, Config];

    fn index(self) -> usize {
        match self {
            Job => 0,
            Limits => 1,
            Config => 2,
        }
    }

    fn file(self) -> &'static str {
        match self {
            Job => "mechanics-job.schema.json",
            Limits => "mechanics-execution-limits.schema.json",
            Config => "mechanics-config.schema.json",
        }
    }

    /// The Rust type's name, which is also the schema's `title` and the TypeScript interface.
    fn type_name(self) -> &'static str {
        match self {
            Job => "MechanicsJob",
            Limits => "MechanicsExecutionLimits",
            Config => "MechanicsConfig",
        }
    }

    fn schema(self) -> &'static Value {
        static SCHEMAS: OnceLock<Vec<Value>> = OnceLock::new();
        let schemas = SCHEMAS.get_or_init(|| {
            Shape::ALL
                .iter()
                .map(|shape| {
                    let text = read(&format!("json-schema/{}", shape.file()));
                    serde_json::from_str(&text)
                        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", shape.file()))
                })
                .collect()
        });
        &schemas[self.index()]
    }

    fn id(self) -> &'static str {
        self.schema()["$id"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no string `$id`", self.file()))
    }

    /// A validator that resolves `$ref`s to the sibling schemas from memory (no file or network
    /// access), by their `$id`s.
    fn validator(self) -> &'static Validator {
        static REGISTRY: OnceLock<Registry<'static>> = OnceLock::new();
        static VALIDATORS: OnceLock<Vec<Validator>> = OnceLock::new();
        let validators = VALIDATORS.get_or_init(|| {
            let registry = REGISTRY.get_or_init(|| {
                Registry::new()
                    .extend(Shape::ALL.iter().map(|shape| (shape.id(), shape.schema())))
                    .and_then(|builder| builder.prepare())
                    .expect("the schemas form a registry")
            });
            Shape::ALL
                .iter()
                .map(|shape| {
                    jsonschema::options()
                        .with_draft(Draft::Draft202012)
                        .with_registry(registry)
                        .build(shape.schema())
                        .unwrap_or_else(|err| panic!("{} does not compile: {err}", shape.file()))
                })
                .collect()
        });
        &validators[self.index()]
    }

    fn schema_accepts(self, doc: &Value) -> bool {
        self.validator().is_valid(doc)
    }

    /// Deserializes `doc` as the Rust type and serializes it back.
    fn rust_round_trip(self, doc: &Value) -> Result<Value, String> {
        fn via<T: serde::de::DeserializeOwned + serde::Serialize>(
            doc: &Value,
        ) -> Result<Value, String> {
            let value: T = serde_json::from_value(doc.clone()).map_err(|err| err.to_string())?;
            Ok(serde_json::to_value(value).expect("a deserialized value serializes"))
        }
        match self {
            Job => via::<MechanicsJob>(doc),
            Limits => via::<MechanicsExecutionLimits>(doc),
            Config => via::<MechanicsConfig>(doc),
        }
    }

    fn properties(self) -> &'static Map<String, Value> {
        self.schema()["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{} has no `properties` object", self.file()))
    }

    fn property_names(self) -> BTreeSet<String> {
        self.properties().keys().cloned().collect()
    }

    fn required(self) -> BTreeSet<String> {
        match self.schema().get("required") {
            None => BTreeSet::new(),
            Some(required) => required
                .as_array()
                .unwrap_or_else(|| panic!("{}: `required` is not an array", self.file()))
                .iter()
                .map(|name| {
                    name.as_str()
                        .expect("required names are strings")
                        .to_owned()
                })
                .collect(),
        }
    }
}

/// One document and the verdict both the schema and serde must give it.
struct Case {
    shape: Shape,
    doc: Value,
    valid: bool,
}

fn ok(shape: Shape, doc: Value) -> Case {
    Case {
        shape,
        doc,
        valid: true,
    }
}

fn bad(shape: Shape, doc: Value) -> Case {
    Case {
        shape,
        doc,
        valid: false,
    }
}

/// A job of `source` with the other fields given by `rest`.
fn job_with(rest: Value) -> Value {
    let mut doc = json!({ "module_source": "export default () => 1;" });
    let fields = rest.as_object().expect("`rest` is an object");
    for (key, value) in fields {
        doc[key] = value.clone();
    }
    doc
}

/// Asserts that the schema gives every case its expected verdict, reporting every miss at once.
fn assert_schema_verdicts(cases: &[Case]) {
    let misses: Vec<String> = cases
        .iter()
        .filter(|case| case.shape.schema_accepts(&case.doc) != case.valid)
        .map(|case| {
            let errors: Vec<String> = case
                .shape
                .validator()
                .iter_errors(&case.doc)
                .map(|err| format!("{} at {}", err, err.instance_path()))
                .collect();
            format!(
                "{} schema {} {} (expected {}){}",
                case.shape.type_name(),
                if case.valid { "rejects" } else { "accepts" },
                case.doc,
                if case.valid { "valid" } else { "invalid" },
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", errors.join("; "))
                }
            )
        })
        .collect();
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// The examples of spec/mechanics-core.txt, in the JSON form of the job types.
fn spec_examples() -> Vec<Case> {
    // "JavaScript contract".
    let contract = "export default function main(arg) {\nreturn { ok: true, got: arg };\n}\n";
    // "Usage example (Rust)", with an empty config: the endpoint feature, which adds
    // `endpoints` to the config, is not there yet.
    let usage = "\nimport endpoint from \"mechanics:endpoint\";\nexport default async function main(arg) {\nconst res = await endpoint(\"primary\", { body: arg });\nreturn res.body;\n}\n";
    vec![
        ok(Job, json!({ "module_source": contract })),
        ok(
            Job,
            json!({ "module_source": contract, "arg": { "hello": "world" } }),
        ),
        ok(
            Job,
            json!({ "module_source": usage, "arg": { "hello": "world" }, "config": {} }),
        ),
        // "Runtime limits": the defaults, as JSON (`max_execution_time = 10s` is in ms).
        ok(
            Limits,
            json!({
                "max_execution_time_ms": 10_000,
                "max_loop_iterations": 1_000_000,
                "max_recursion_depth": 512,
                "max_stack_size": 10 * 1024,
            }),
        ),
        ok(Config, json!({})),
    ]
}

/// The `examples` each schema carries.
fn schema_examples() -> Vec<Case> {
    Shape::ALL
        .iter()
        .flat_map(|&shape| {
            shape.schema()["examples"]
                .as_array()
                .unwrap_or_else(|| panic!("{} has no `examples`", shape.file()))
                .iter()
                .map(move |doc| ok(shape, doc.clone()))
        })
        .collect()
}

fn valid_documents() -> Vec<Case> {
    let all_limits = json!({
        "max_execution_time_ms": 1,
        "max_loop_iterations": 1,
        "max_recursion_depth": 1,
        "max_stack_size": 1,
        "max_memory_mb": 1,
        "max_module_source_bytes": 1,
        "max_result_bytes": 1,
    });
    vec![
        ok(Job, json!({ "module_source": "x" })),
        ok(Job, json!({ "module_source": "  x  " })),
        // U+FEFF is not whitespace for Rust (nor for Unicode), although ECMA-262's `\s` says so.
        ok(Job, json!({ "module_source": "\u{feff}" })),
        ok(Job, json!({ "module_source": "\u{180e}" })),
        ok(Job, job_with(json!({ "arg": null }))),
        ok(Job, job_with(json!({ "arg": 0 }))),
        ok(Job, job_with(json!({ "arg": -1.5 }))),
        ok(Job, job_with(json!({ "arg": "text" }))),
        ok(Job, job_with(json!({ "arg": true }))),
        ok(
            Job,
            job_with(json!({ "arg": [1, "two", null, { "three": [] }] })),
        ),
        ok(
            Job,
            job_with(json!({ "arg": { "module_source": 1, "unknown": { "deep": true } } })),
        ),
        ok(Job, job_with(json!({ "config": {} }))),
        ok(Job, job_with(json!({ "limits": null }))),
        ok(Job, job_with(json!({ "limits": {} }))),
        ok(Job, job_with(json!({ "limits": all_limits.clone() }))),
        ok(
            Job,
            job_with(json!({
                "arg": { "n": 1 },
                "config": {},
                "limits": { "max_execution_time_ms": 250, "max_memory_mb": 16 },
            })),
        ),
        ok(Limits, json!({})),
        ok(Limits, all_limits),
        ok(Limits, json!({ "max_execution_time_ms": 86_400_000 })),
        ok(Limits, json!({ "max_loop_iterations": u64::MAX })),
        ok(Limits, json!({ "max_recursion_depth": 10_000 })),
        ok(Limits, json!({ "max_stack_size": 10 * 1024 * 1024 })),
        ok(Limits, json!({ "max_memory_mb": 65_536 })),
        ok(
            Limits,
            json!({ "max_module_source_bytes": 64 * 1024 * 1024 }),
        ),
        ok(Limits, json!({ "max_result_bytes": 1024 * 1024 * 1024 })),
        ok(Config, json!({})),
    ]
}

fn unknown_fields() -> Vec<Case> {
    vec![
        bad(Job, job_with(json!({ "unknown": 1 }))),
        bad(Job, job_with(json!({ "Module_Source": "x" }))),
        bad(Job, job_with(json!({ "moduleSource": "x" }))),
        bad(Job, job_with(json!({ "endpoints": {} }))),
        bad(Job, job_with(json!({ "limits": { "unknown": 1 } }))),
        bad(
            Job,
            job_with(json!({ "limits": { "max_execution_time_ms": 5, "max_execution_time": 5 } })),
        ),
        bad(
            Job,
            job_with(json!({ "limits": { "max_memory_bytes": 1024 } })),
        ),
        bad(Job, job_with(json!({ "config": { "unknown": 1 } }))),
        bad(Job, job_with(json!({ "config": { "endpoints": {} } }))),
        bad(Limits, json!({ "unknown": 1 })),
        bad(Limits, json!({ "max_execution_time": 10 })),
        bad(Limits, json!({ "max_memory_bytes": 1024 })),
        bad(Limits, json!({ "MAX_LOOP_ITERATIONS": 10 })),
        bad(Config, json!({ "unknown": 1 })),
        bad(Config, json!({ "endpoints": {} })),
    ]
}

fn blank_module_sources() -> Vec<Case> {
    // Every character Rust's `str::trim` removes (Unicode White_Space).
    let white_space = "\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}\u{2001}\u{2002}\u{2003}\
                       \u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200a}\u{2028}\u{2029}\
                       \u{202f}\u{205f}\u{3000}";
    let mut cases: Vec<Case> = ["", " ", "\n\t\r\n", white_space]
        .iter()
        .map(|source| bad(Job, json!({ "module_source": source })))
        .collect();
    cases.extend(
        white_space
            .chars()
            .map(|c| bad(Job, json!({ "module_source": c.to_string() }))),
    );
    cases.push(bad(Job, json!({})));
    cases.push(bad(Job, json!({ "arg": 1 })));
    cases
}

/// For every limit: zero, a negative value, and one past its maximum.
fn out_of_range_limits() -> Vec<Case> {
    Limits
        .properties()
        .iter()
        .flat_map(|(name, property)| {
            let max = property["maximum"]
                .as_u64()
                .unwrap_or_else(|| panic!("limit `{name}` has no integer `maximum`"));
            let above = u128::from(max) + 1;
            let above = match u64::try_from(above) {
                Ok(above) => json!(above),
                // Past `u64::MAX` a JSON number can only be a float: 2^64 exactly.
                Err(_) => Value::Number(Number::from_f64(above as f64).expect("finite")),
            };
            [json!(0), json!(-1), json!(i64::MIN), above]
                .into_iter()
                .flat_map(move |value| {
                    let limits = json!({ name.as_str(): value });
                    [
                        bad(Limits, limits.clone()),
                        bad(Job, job_with(json!({ "limits": limits }))),
                    ]
                })
        })
        .collect()
}

fn wrong_types() -> Vec<Case> {
    let mut cases = vec![
        bad(Job, json!(null)),
        bad(Job, json!(["export default () => 1;"])),
        bad(Job, job_with(json!({ "limits": [] }))),
        bad(Job, job_with(json!({ "config": [] }))),
        bad(Limits, json!([])),
        bad(Limits, json!([5000])),
        bad(Config, json!([])),
        bad(Job, json!("export default () => 1;")),
        bad(Job, json!(1)),
        bad(Job, json!({ "module_source": null })),
        bad(Job, json!({ "module_source": 1 })),
        bad(Job, json!({ "module_source": ["x"] })),
        bad(Job, json!({ "module_source": { "text": "x" } })),
        bad(Job, job_with(json!({ "config": null }))),
        bad(Job, job_with(json!({ "config": "x" }))),
        bad(Job, job_with(json!({ "config": 1 }))),
        bad(Job, job_with(json!({ "config": true }))),
        bad(Job, job_with(json!({ "limits": "x" }))),
        bad(Job, job_with(json!({ "limits": 1000 }))),
        bad(Job, job_with(json!({ "limits": false }))),
        bad(
            Job,
            job_with(json!({ "limits": { "max_execution_time_ms": "1000" } })),
        ),
        bad(Limits, json!(null)),
        bad(Limits, json!("x")),
        bad(Limits, json!(7)),
        bad(Config, json!(null)),
        bad(Config, json!("x")),
        bad(Config, json!(true)),
    ];
    for name in Limits.property_names() {
        for value in [
            json!(null),
            json!("10"),
            json!(true),
            json!([1]),
            json!({ "ms": 1 }),
            json!(1.5),
            json!(-0.5),
        ] {
            cases.push(bad(Limits, json!({ name.as_str(): value })));
        }
    }
    cases
}

/// Every limit at its lower and upper bound, as the schema states them.
fn limit_bounds() -> Vec<Case> {
    Limits
        .properties()
        .iter()
        .flat_map(|(name, property)| {
            let bound = |key: &str| {
                property[key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("limit `{name}` has no integer `{key}`"))
            };
            [bound("minimum"), bound("maximum")]
                .into_iter()
                .map(move |value| ok(Limits, json!({ name.as_str(): value })))
        })
        .collect()
}

fn all_cases() -> Vec<Case> {
    [
        spec_examples(),
        schema_examples(),
        valid_documents(),
        unknown_fields(),
        blank_module_sources(),
        out_of_range_limits(),
        wrong_types(),
        limit_bounds(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ---------------------------------------------------------------------------------------------
// The schemas themselves
// ---------------------------------------------------------------------------------------------

/// Calls `visit` on `schema` and on every subschema in it.
fn walk<'a>(schema: &'a Value, path: &str, visit: &mut impl FnMut(&str, &'a Value)) {
    visit(path, schema);
    let Some(object) = schema.as_object() else {
        return;
    };
    for (key, value) in object {
        match (key.as_str(), value) {
            ("properties" | "$defs" | "patternProperties", Value::Object(map)) => {
                for (name, sub) in map {
                    walk(sub, &format!("{path}/{key}/{name}"), visit);
                }
            }
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(list)) => {
                for (i, sub) in list.iter().enumerate() {
                    walk(sub, &format!("{path}/{key}/{i}"), visit);
                }
            }
            ("items" | "additionalProperties" | "not" | "if" | "then" | "else", sub) => {
                walk(sub, &format!("{path}/{key}"), visit);
            }
            _ => {}
        }
    }
}

#[test]
fn schemas_are_well_formed_draft_2020_12_documents() {
    for shape in Shape::ALL {
        let schema = shape.schema();
        let file = shape.file();
        if let Err(err) = jsonschema::meta::validate(schema) {
            panic!("{file} is not a valid JSON Schema: {err}");
        }
        assert_eq!(
            schema["$schema"],
            json!("https://json-schema.org/draft/2020-12/schema"),
            "{file}: `$schema`"
        );
        assert!(
            shape.id().ends_with(&format!("/{file}")),
            "{file}: `$id` {} does not name the file, so relative `$ref`s to siblings would not resolve",
            shape.id()
        );
        assert_eq!(schema["title"], json!(shape.type_name()), "{file}: `title`");
        assert_eq!(schema["type"], json!("object"), "{file}: `type`");

        // Every object schema closes its properties, as `deny_unknown_fields` does.
        let mut open = Vec::new();
        walk(schema, "#", &mut |path, sub| {
            if sub.get("type") == Some(&json!("object"))
                && sub.get("additionalProperties") != Some(&json!(false))
            {
                open.push(path.to_owned());
            }
        });
        assert!(
            open.is_empty(),
            "{file}: object schemas without `additionalProperties: false`: {open:?}"
        );

        // Every `$ref` names a sibling file by its `$id`.
        let mut refs = Vec::new();
        walk(schema, "#", &mut |path, sub| {
            if let Some(reference) = sub.get("$ref") {
                refs.push((path.to_owned(), reference.clone()));
            }
        });
        let base = shape.id().trim_end_matches(file);
        for (path, reference) in refs {
            let reference = reference.as_str().expect("`$ref` is a string");
            let target = format!("{base}{reference}");
            assert!(
                Shape::ALL.iter().any(|s| s.id() == target),
                "{file}: `$ref` {reference} at {path} is not a sibling schema"
            );
        }
    }

    // The job refers to both other schemas.
    let job = Job.schema().to_string();
    for shape in [Limits, Config] {
        assert!(
            job.contains(&format!("\"$ref\":\"{}\"", shape.file())),
            "the job schema does not `$ref` {}",
            shape.file()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the schemas accept and reject
// ---------------------------------------------------------------------------------------------

#[test]
fn schemas_accept_the_spec_examples_and_their_own_examples() {
    assert_schema_verdicts(&spec_examples());
    assert_schema_verdicts(&schema_examples());
}

/// The job schema's examples are jobs that run.
#[test]
fn job_schema_examples_run() {
    for example in Job.schema()["examples"].as_array().expect("examples") {
        let job: MechanicsJob = serde_json::from_value(example.clone())
            .unwrap_or_else(|err| panic!("example {example} does not deserialize: {err}"));
        if let Err(err) = super::shared_pool().run(job) {
            panic!("example {example} fails: {err}");
        }
    }
}

#[test]
fn schemas_accept_valid_documents() {
    assert_schema_verdicts(&valid_documents());
    assert_schema_verdicts(&limit_bounds());
}

#[test]
fn schemas_reject_unknown_fields_at_every_level() {
    assert_schema_verdicts(&unknown_fields());
}

#[test]
fn schemas_reject_a_missing_empty_or_blank_module_source() {
    assert_schema_verdicts(&blank_module_sources());
}

#[test]
fn schemas_reject_zero_negative_and_out_of_range_limits() {
    assert_schema_verdicts(&out_of_range_limits());
}

#[test]
fn schemas_reject_wrong_types() {
    assert_schema_verdicts(&wrong_types());
}

// ---------------------------------------------------------------------------------------------
// Parity with serde
// ---------------------------------------------------------------------------------------------

#[test]
fn schema_verdict_equals_serde_verdict() {
    let mut mismatches = Vec::new();
    for case in all_cases() {
        let schema = case.shape.schema_accepts(&case.doc);
        let rust = case.shape.rust_round_trip(&case.doc);
        if schema != rust.is_ok() {
            mismatches.push(format!(
                "{} {}: schema {}, serde {}",
                case.shape.type_name(),
                case.doc,
                if schema { "accepts" } else { "rejects" },
                match &rust {
                    Ok(_) => "accepts".to_owned(),
                    Err(err) => format!("rejects ({err})"),
                }
            ));
        }
        // What Rust writes back, the schema accepts.
        if let Ok(serialized) = rust {
            assert!(
                case.shape.schema_accepts(&serialized),
                "{} schema rejects what serde serialized from {}: {serialized}",
                case.shape.type_name(),
                case.doc
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "the schemas and serde disagree on:\n{}",
        mismatches.join("\n")
    );
}

/// Where the schemas cannot follow serde, and serde's behaviour is not the documented shape.
///
/// - JSON Schema's data model has no integer-valued floats: `1.0` is the integer `1`, while serde
///   rejects a float for a `u64` field. Writers must emit plain integers.
///
/// If serde's side of an entry changes, the entry moves to the parity table.
#[test]
fn known_divergences_from_serde_are_the_documented_ones() {
    let divergences = [
        (Limits, json!({ "max_recursion_depth": 512.0 }), true, false),
        (Limits, json!({ "max_execution_time_ms": 1e3 }), true, false),
        (
            Job,
            job_with(json!({ "limits": { "max_stack_size": 1.0 } })),
            true,
            false,
        ),
    ];
    for (shape, doc, schema_verdict, rust_verdict) in divergences {
        assert_eq!(
            shape.schema_accepts(&doc),
            schema_verdict,
            "{} schema verdict on {doc}",
            shape.type_name()
        );
        assert_eq!(
            shape.rust_round_trip(&doc).is_ok(),
            rust_verdict,
            "serde's verdict on {} {doc} changed: move it to the parity table",
            shape.type_name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Drift between the schemas, the Rust types and the TypeScript interfaces
// ---------------------------------------------------------------------------------------------

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect()
}

/// A job with every optional field set, serialized.
fn full_job() -> Value {
    let job = MechanicsJob::new(
        "export default () => 1;",
        json!({ "a": 1 }),
        MechanicsConfig::default(),
    )
    .expect("a valid job")
    .with_limits(MechanicsExecutionLimits::default());
    serde_json::to_value(job).expect("a job serializes")
}

#[test]
fn schema_properties_are_the_serialized_fields_of_the_rust_types() {
    let job = full_job();
    assert_eq!(Job.property_names(), keys(&job), "MechanicsJob fields");
    assert_eq!(
        Limits.property_names(),
        keys(&serde_json::to_value(MechanicsExecutionLimits::default()).expect("serializes")),
        "MechanicsExecutionLimits fields"
    );
    assert_eq!(
        Config.property_names(),
        keys(&serde_json::to_value(MechanicsConfig::default()).expect("serializes")),
        "MechanicsConfig fields"
    );
    // The nested values too.
    assert_eq!(Limits.property_names(), keys(&job["limits"]));
    assert_eq!(Config.property_names(), keys(&job["config"]));

    // What is required: a job without its `module_source` is refused, and nothing else is needed.
    assert_eq!(Job.required(), BTreeSet::from(["module_source".to_owned()]));
    assert!(Limits.required().is_empty());
    assert!(Config.required().is_empty());
}

#[test]
fn schema_defaults_are_the_rust_defaults() {
    let defaults = serde_json::to_value(MechanicsExecutionLimits::default()).expect("serializes");
    let schema_defaults: Map<String, Value> = Limits
        .properties()
        .iter()
        .map(|(name, property)| {
            let default = property
                .get("default")
                .unwrap_or_else(|| panic!("limit `{name}` has no `default`"));
            (name.clone(), default.clone())
        })
        .collect();
    assert_eq!(Value::Object(schema_defaults), defaults);
    // An empty limits object is the defaults.
    assert_eq!(Limits.rust_round_trip(&json!({})), Ok(defaults));

    // The job's defaults: what a job with only a source has.
    let minimal = Job
        .rust_round_trip(&json!({ "module_source": "x" }))
        .expect("a minimal job");
    let job_properties = Job.properties();
    for name in ["arg", "config"] {
        assert_eq!(
            job_properties[name].get("default"),
            Some(&minimal[name]),
            "default of job `{name}`"
        );
    }
    assert!(
        minimal.get("limits").is_none(),
        "a job has no limits of its own by default"
    );
    assert!(job_properties["limits"].get("default").is_none());
}

/// The interfaces of a `.d.ts` file: name to members, each with whether it is optional. Index
/// signatures are skipped. Reads only flat interfaces, as `mechanics-json-shapes.d.ts` has.
fn ts_interfaces(source: &str) -> BTreeMap<String, BTreeMap<String, bool>> {
    let comments = Regex::new(r"(?s)/\*.*?\*/|//[^\n]*").expect("regex");
    let interface = Regex::new(r"interface\s+([A-Za-z_$][\w$]*)\s*\{([^{}]*)\}").expect("regex");
    let member = Regex::new(r"^\s*([A-Za-z_$][\w$]*)\s*(\?)?\s*:").expect("regex");
    let source = comments.replace_all(source, "");
    interface
        .captures_iter(&source)
        .map(|captures| {
            let members = captures[2]
                .split([';', '\n'])
                .filter_map(|line| member.captures(line))
                .map(|m| (m[1].to_owned(), m.get(2).is_some()))
                .collect();
            (captures[1].to_owned(), members)
        })
        .collect()
}

#[test]
fn ts_interfaces_list_the_schema_properties() {
    let interfaces = ts_interfaces(&read("ts-types/mechanics-json-shapes.d.ts"));
    let names: BTreeSet<&str> = interfaces.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = Shape::ALL.iter().map(|s| s.type_name()).collect();
    assert_eq!(names, expected, "interfaces of mechanics-json-shapes.d.ts");
    for shape in Shape::ALL {
        let members = &interfaces[shape.type_name()];
        let member_names: BTreeSet<String> = members.keys().cloned().collect();
        assert_eq!(
            member_names,
            shape.property_names(),
            "members of interface {}",
            shape.type_name()
        );
        let optional: BTreeSet<String> = members
            .iter()
            .filter(|(_, optional)| **optional)
            .map(|(name, _)| name.clone())
            .collect();
        let not_required: BTreeSet<String> = shape
            .property_names()
            .difference(&shape.required())
            .cloned()
            .collect();
        assert_eq!(
            optional,
            not_required,
            "optional (`?`) members of interface {}",
            shape.type_name()
        );
    }
}

#[test]
fn ts_reader_reads_members_and_optionality() {
    let interfaces = ts_interfaces(
        "/** doc { with braces } */\nexport interface A {\n  /** x: y */\n  a: string;\n  b?: number | null;\n  [k: string]: never;\n}\ninterface B { c?: unknown; d: B }\n",
    );
    let a: Vec<(&str, bool)> = interfaces["A"]
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(a, [("a", false), ("b", true)]);
    let b: Vec<(&str, bool)> = interfaces["B"]
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(b, [("c", true), ("d", false)]);
}

// ---------------------------------------------------------------------------------------------
// Declarations of the synthetic modules
// ---------------------------------------------------------------------------------------------

/// The specifiers the engine offers, read from `SPECIFIERS` in `src/modules/mod.rs`.
fn engine_specifiers() -> BTreeSet<String> {
    let source = read("src/modules/mod.rs");
    let list = Regex::new(r"(?s)const\s+SPECIFIERS\s*:\s*&\[&str\]\s*=\s*&\[(.*?)\]\s*;")
        .expect("regex")
        .captures(&source)
        .expect("src/modules/mod.rs defines `SPECIFIERS`")[1]
        .to_owned();
    let specifiers: BTreeSet<String> = Regex::new(r#""([^"]+)""#)
        .expect("regex")
        .captures_iter(&list)
        .map(|c| c[1].to_owned())
        .collect();
    assert!(!specifiers.is_empty(), "`SPECIFIERS` is empty");
    specifiers
}

/// What one `.d.ts` file declares for one module.
#[derive(Debug)]
struct ModuleDeclaration {
    file: PathBuf,
    /// `export function` / `export const` names (type exports are not runtime exports).
    named: BTreeSet<String>,
    /// `export default NAME;`.
    default: String,
    /// The keys of `const NAME: { ... }` declarations, by name.
    objects: BTreeMap<String, BTreeSet<String>>,
}

/// Every `declare module "..."` of every `ts-types/*.d.ts`, by specifier.
fn module_declarations() -> BTreeMap<String, ModuleDeclaration> {
    let declare = Regex::new(r#"declare\s+module\s+"([^"]+)"\s*\{"#).expect("regex");
    let comments = Regex::new(r"(?s)/\*.*?\*/|//[^\n]*").expect("regex");
    let named = Regex::new(r"export\s+(?:declare\s+)?(?:function|const)\s+([A-Za-z_$][\w$]*)")
        .expect("regex");
    let default = Regex::new(r"export\s+default\s+([A-Za-z_$][\w$]*)\s*;").expect("regex");
    let object = Regex::new(r"const\s+([A-Za-z_$][\w$]*)\s*:\s*\{([^{}]*)\}").expect("regex");
    let key = Regex::new(r"([A-Za-z_$][\w$]*)\s*\??\s*:").expect("regex");

    let mut declarations = BTreeMap::new();
    let dir = crate_dir().join("ts-types");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".d.ts"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let text = comments.replace_all(&text, "");
        let starts: Vec<(usize, String)> = declare
            .captures_iter(&text)
            .map(|c| (c.get(0).expect("match").end(), c[1].to_owned()))
            .collect();
        for (i, (start, specifier)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(text.len(), |(next, _)| *next);
            let body = &text[*start..end];
            let declaration = ModuleDeclaration {
                file: file.clone(),
                named: named.captures_iter(body).map(|c| c[1].to_owned()).collect(),
                default: default.captures(body).unwrap_or_else(|| {
                    panic!(
                        "{}: {specifier} has no `export default NAME;`",
                        file.display()
                    )
                })[1]
                    .to_owned(),
                objects: object
                    .captures_iter(body)
                    .map(|c| {
                        let keys = key.captures_iter(&c[2]).map(|k| k[1].to_owned()).collect();
                        (c[1].to_owned(), keys)
                    })
                    .collect(),
            };
            if let Some(previous) = declarations.insert(specifier.clone(), declaration) {
                panic!(
                    "{specifier} is declared twice: in {} and {}",
                    previous.file.display(),
                    file.display()
                );
            }
        }
    }
    declarations
}

#[test]
fn every_synthetic_module_has_a_declaration() {
    let declarations = module_declarations();
    let declared: BTreeSet<String> = declarations.keys().cloned().collect();
    let offered = engine_specifiers();
    for specifier in NOT_YET_DECLARED {
        assert!(
            offered.contains(*specifier),
            "{specifier} is no longer in SPECIFIERS: drop it from NOT_YET_DECLARED"
        );
    }
    let expected: BTreeSet<String> = offered
        .iter()
        .filter(|s| !NOT_YET_DECLARED.contains(&s.as_str()))
        .cloned()
        .collect();
    assert_eq!(
        declared, expected,
        "`declare module` names in ts-types/*.d.ts vs SPECIFIERS (less NOT_YET_DECLARED)"
    );
    // One module per file, named after it: `mechanics:base64` in `mechanics-base64.d.ts`.
    for (specifier, declaration) in &declarations {
        let file = declaration
            .file
            .file_name()
            .expect("a file name")
            .to_string_lossy();
        assert_eq!(
            file,
            format!("{}.d.ts", specifier.replace(':', "-")),
            "the file declaring {specifier}"
        );
    }
}

/// The functions a synthetic module exports by name, read from its `exports()` in
/// `src/modules/<name>.rs` (the `("name", length, NativeFunction…)` entries of `Exports`).
fn engine_named_exports(specifier: &str) -> BTreeSet<String> {
    let stem = specifier.trim_start_matches("mechanics:").replace('-', "_");
    let source = read(&format!("src/modules/{stem}.rs"));
    let names: BTreeSet<String> =
        Regex::new(r#"\(\s*"([A-Za-z_$][\w$]*)"\s*,\s*\d+\s*,\s*NativeFunction"#)
            .expect("regex")
            .captures_iter(&source)
            .map(|c| c[1].to_owned())
            .collect();
    assert!(
        !names.is_empty(),
        "found no `(\"name\", length, NativeFunction…)` export in src/modules/{stem}.rs"
    );
    names
}

/// The declared exports of each module are the ones the engine defines, and a job that imports
/// them gets what the declaration says: functions by name, and a default export that is either
/// one of them or an object holding them all. (Namespace imports are refused by the engine, so
/// the job imports each declared name.)
#[test]
fn module_declarations_match_the_engine_exports() {
    for (specifier, declaration) in module_declarations() {
        assert_eq!(
            declaration.named,
            engine_named_exports(&specifier),
            "named exports of {specifier}: declared vs defined"
        );
        let imports: Vec<String> = declaration
            .named
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name} as named{i}"))
            .collect();
        let table: Vec<String> = declaration
            .named
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name:?}: named{i}"))
            .collect();
        let source = format!(
            r#"import defaultExport, {{ {imports} }} from "{specifier}";
const named = {{ {table} }};
export default function main() {{
  const d = defaultExport;
  const isObject = d !== null && typeof d === "object";
  const namedKeys = Object.keys(named);
  let namedFunctions = true;
  let defaultIsNamed = false;
  for (const k of namedKeys) {{
    namedFunctions = namedFunctions && typeof named[k] === "function" && named[k].name === k;
    defaultIsNamed = defaultIsNamed || named[k] === d;
  }}
  let defaultValuesAreNamed = null;
  if (isObject) {{
    defaultValuesAreNamed = true;
    for (const k of Object.keys(d)) {{
      defaultValuesAreNamed = defaultValuesAreNamed && named[k] === d[k];
    }}
  }}
  return {{
    namedFunctions,
    defaultType: typeof d,
    defaultName: typeof d === "function" ? d.name : null,
    defaultIsNamed,
    defaultKeys: isObject ? Object.keys(d).sort() : null,
    defaultValuesAreNamed,
  }};
}}
"#,
            imports = imports.join(", "),
            table = table.join(", "),
        );
        let actual = super::run_js(&source, Value::Null)
            .unwrap_or_else(|err| panic!("importing {specifier}: {err}\n{source}"));
        assert_eq!(
            actual["namedFunctions"], true,
            "{specifier}: every named export is a function of that name: {actual}"
        );

        if declaration.named.contains(&declaration.default) {
            // `export default fillRandom;`: the default export is that function.
            assert_eq!(actual["defaultType"], "function", "{specifier}: {actual}");
            assert_eq!(actual["defaultIsNamed"], true, "{specifier}: {actual}");
            assert_eq!(
                actual["defaultName"],
                json!(declaration.default),
                "{specifier}"
            );
        } else {
            // `const x: { encode: ...; decode: ... }; export default x;`: an object of the
            // named exports.
            let keys = declaration
                .objects
                .get(&declaration.default)
                .unwrap_or_else(|| {
                    panic!(
                        "{specifier}: the default export `{}` is neither a named function nor a \
                         `const` with an object type",
                        declaration.default
                    )
                });
            assert_eq!(actual["defaultType"], "object", "{specifier}: {actual}");
            let actual_keys: BTreeSet<String> =
                serde_json::from_value(actual["defaultKeys"].clone()).expect("a list of keys");
            assert_eq!(
                &actual_keys, keys,
                "keys of the default export of {specifier}"
            );
            assert_eq!(
                actual["defaultValuesAreNamed"], true,
                "{specifier}: {actual}"
            );
        }
    }
}
