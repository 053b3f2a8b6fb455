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
use mechanics_core::endpoint::{
    EndpointBodyType, EndpointRetryPolicy, HttpEndpoint, HttpMethod, QuerySpec, SlottedQueryMode,
    UrlParamSpec,
};
use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::typescript::SourceMap;
use regex::Regex;
use serde_json::{Map, Number, Value, json};

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

/// The shapes that have a schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Job,
    Limits,
    Config,
    Endpoint,
}

use Shape::{Config, Endpoint, Job, Limits};

impl Shape {
    const ALL: [Shape; 4] = [Job, Limits, Config, Endpoint];

    fn index(self) -> usize {
        match self {
            Job => 0,
            Limits => 1,
            Config => 2,
            Endpoint => 3,
        }
    }

    fn file(self) -> &'static str {
        match self {
            Job => "mechanics-job.schema.json",
            Limits => "mechanics-execution-limits.schema.json",
            Config => "mechanics-config.schema.json",
            Endpoint => "mechanics-http-endpoint.schema.json",
        }
    }

    /// The Rust type's name, which is also the schema's `title` and the TypeScript interface.
    fn type_name(self) -> &'static str {
        match self {
            Job => "MechanicsJob",
            Limits => "MechanicsExecutionLimits",
            Config => "MechanicsConfig",
            Endpoint => "HttpEndpoint",
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
        match self {
            Job => via::<MechanicsJob>(doc),
            Limits => via::<MechanicsExecutionLimits>(doc),
            Config => via::<MechanicsConfig>(doc),
            Endpoint => via::<HttpEndpoint>(doc),
        }
    }

    fn properties(self) -> &'static Map<String, Value> {
        properties(self.schema(), self.file())
    }

    fn property_names(self) -> BTreeSet<String> {
        self.properties().keys().cloned().collect()
    }
}

/// Deserializes `doc` as `T` and serializes it back.
fn via<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<Value, String> {
    let value: T = serde_json::from_value(doc.clone()).map_err(|err| err.to_string())?;
    Ok(serde_json::to_value(value).expect("a deserialized value serializes"))
}

/// The `properties` of an object schema (`what` names it in the panic).
fn properties<'a>(schema: &'a Value, what: &str) -> &'a Map<String, Value> {
    schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{what} has no `properties` object"))
}

/// The `required` names of an object schema (`what` names it in the panic).
fn required(schema: &Value, what: &str) -> BTreeSet<String> {
    match schema.get("required") {
        None => BTreeSet::new(),
        Some(required) => required
            .as_array()
            .unwrap_or_else(|| panic!("{what}: `required` is not an array"))
            .iter()
            .map(|name| {
                name.as_str()
                    .expect("required names are strings")
                    .to_owned()
            })
            .collect(),
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

/// `base` with the fields of `rest` set (added or replaced).
fn merged(mut base: Value, rest: Value) -> Value {
    let fields = rest.as_object().expect("`rest` is an object");
    for (key, value) in fields {
        base[key] = value.clone();
    }
    base
}

/// A job with the fields given by `rest` besides its source.
fn job_with(rest: Value) -> Value {
    merged(json!({ "module_source": "export default () => 1;" }), rest)
}

/// A minimal endpoint (a `post` to a URL without placeholders) with the fields given by `rest`.
fn endpoint_with(rest: Value) -> Value {
    merged(
        json!({ "method": "post", "url_template": "https://api.example.com/items" }),
        rest,
    )
}

/// An endpoint whose URL has the one placeholder `{id}`, with `spec` as its rules.
fn endpoint_with_url_param(spec: Value) -> Value {
    endpoint_with(json!({
        "url_template": "https://api.example.com/items/{id}",
        "url_param_specs": { "id": spec },
    }))
}

/// An endpoint with the one query parameter `spec`.
fn endpoint_with_query(spec: Value) -> Value {
    endpoint_with(json!({ "query_specs": [spec] }))
}

/// An endpoint with `policy` as its retry policy.
fn endpoint_with_retry(policy: Value) -> Value {
    endpoint_with(json!({ "retry_policy": policy }))
}

/// A config holding `endpoint` under the name `primary`.
fn config_of(endpoint: Value) -> Value {
    json!({ "endpoints": { "primary": endpoint } })
}

/// Each endpoint both on its own and inside a config, so that every endpoint verdict is also
/// checked through the config schema's `$ref` and the config's deserialization (which names the
/// endpoint in its errors).
fn endpoint_cases(valid: bool, endpoints: Vec<Value>) -> Vec<Case> {
    endpoints
        .into_iter()
        .flat_map(|endpoint| {
            let config = config_of(endpoint.clone());
            [
                Case {
                    shape: Endpoint,
                    doc: endpoint,
                    valid,
                },
                Case {
                    shape: Config,
                    doc: config,
                    valid,
                },
            ]
        })
        .collect()
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
    // "Usage example (Rust)": its config holds `HttpEndpoint::new(HttpMethod::Post,
    // "https://httpbin.org/post", HashMap::new())` as `primary`.
    let usage = "\nimport endpoint from \"mechanics:endpoint\";\nexport default async function main(arg) {\nconst res = await endpoint(\"primary\", { body: arg });\nreturn res.body;\n}\n";
    let usage_config =
        config_of(json!({ "method": "post", "url_template": "https://httpbin.org/post" }));
    // "Minimal endpoint config example (JSON)", verbatim.
    let primary = json!({
        "method": "post",
        "url_template": "https://api.example.com/users/{user_id}/messages/{message_id}",
        "url_param_specs": {
            "user_id": { "min_bytes": 1, "max_bytes": 64 },
            "message_id": { "default": "latest", "min_bytes": 1, "max_bytes": 64 }
        },
        "query_specs": [
            { "type": "const", "key": "v", "value": "1" },
            {
                "type": "slotted",
                "key": "page",
                "slot": "page",
                "mode": "optional",
                "min_bytes": 1,
                "max_bytes": 8
            },
            {
                "type": "slotted",
                "key": "filter",
                "slot": "filter",
                "mode": "required_allow_empty",
                "default": "all"
            }
        ],
        "headers": { "x-api-key": "redacted" },
        "request_body_type": "json",
        "response_body_type": "json",
        "response_max_bytes": 1_048_576,
        "retry_policy": {
            "max_attempts": 3,
            "base_backoff_ms": 100,
            "max_backoff_ms": 1000,
            "max_retry_delay_ms": 5000,
            "rate_limit_backoff_ms": 750,
            "retry_on_io_errors": true,
            "retry_on_timeout": true,
            "respect_retry_after": true,
            "retry_on_status": [429, 500, 502, 503, 504]
        },
        "overridable_request_headers": ["x-request-id"],
        "exposed_response_headers": ["content-type", "x-trace-id"],
        "timeout_ms": 5000,
        "allow_non_2xx_status": false
    });
    vec![
        ok(Job, json!({ "module_source": contract })),
        ok(
            Job,
            json!({ "module_source": contract, "arg": { "hello": "world" } }),
        ),
        ok(
            Job,
            json!({ "module_source": usage, "arg": { "hello": "world" }, "config": usage_config }),
        ),
        ok(Config, usage_config),
        ok(Endpoint, primary.clone()),
        ok(Config, config_of(primary.clone())),
        ok(Job, job_with(json!({ "config": config_of(primary) }))),
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
        ok(Job, job_with(json!({ "source_map": null }))),
        ok(
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "" } })),
        ),
        ok(
            Job,
            job_with(json!({ "source_map": {
                "source": "src/caf\u{e9} worker.mts",
                "mappings": "AAAA,SAAS;;AAET,+BAAgC;AAC9B",
            } })),
        ),
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
        ok(Config, json!({ "endpoints": {} })),
        ok(Job, job_with(json!({ "config": { "endpoints": {} } }))),
        ok(
            Job,
            job_with(json!({ "config": config_of(endpoint_with(json!({}))) })),
        ),
        // Endpoint names: anything non-empty without a control character.
        ok(
            Config,
            json!({ "endpoints": {
                "a": endpoint_with(json!({})),
                "with space": endpoint_with(json!({ "method": "get" })),
                "\u{fc}n\u{ef}c\u{f6}d\u{e9}/with:punctuation": endpoint_with(json!({})),
                // U+200B is a format character (Cf), not a control character (Cc).
                "\u{200b}": endpoint_with(json!({})),
            } }),
        ),
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
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "", "version": 3 } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "sources": ["w.ts"], "mappings": "" } })),
        ),
        bad(
            Job,
            job_with(json!({ "config": config_of(endpoint_with(json!({ "unknown": 1 }))) })),
        ),
        bad(Limits, json!({ "unknown": 1 })),
        bad(Limits, json!({ "max_execution_time": 10 })),
        bad(Limits, json!({ "max_memory_bytes": 1024 })),
        bad(Limits, json!({ "MAX_LOOP_ITERATIONS": 10 })),
        bad(Config, json!({ "unknown": 1 })),
        bad(Config, json!({ "endpoints": {}, "unknown": 1 })),
        bad(Config, json!({ "Endpoints": {} })),
    ]
    .into_iter()
    .chain(endpoint_cases(
        false,
        vec![
            endpoint_with(json!({ "unknown": 1 })),
            endpoint_with(json!({ "urlTemplate": "https://api.example.com/items" })),
            endpoint_with(json!({ "Method": "post" })),
            endpoint_with(json!({ "retry": { "max_attempts": 2 } })),
            endpoint_with_url_param(json!({ "unknown": 1 })),
            endpoint_with_url_param(json!({ "Default": "x" })),
            endpoint_with_url_param(json!({ "minBytes": 1 })),
            endpoint_with_query(json!({ "type": "const", "key": "v", "value": "1", "unknown": 1 })),
            // A field of the other variant is unknown too.
            endpoint_with_query(json!({ "type": "const", "key": "v", "value": "1", "slot": "v" })),
            endpoint_with_query(
                json!({ "type": "slotted", "key": "p", "slot": "p", "unknown": 1 }),
            ),
            endpoint_with_query(
                json!({ "type": "slotted", "key": "p", "slot": "p", "value": "1" }),
            ),
            endpoint_with_retry(json!({ "unknown": 1 })),
            endpoint_with_retry(json!({ "maxAttempts": 2 })),
            endpoint_with_retry(json!({ "max_attempts": 2, "retry_on_status_codes": [500] })),
        ],
    ))
    .collect()
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
        bad(Job, job_with(json!({ "source_map": "w.ts" }))),
        bad(Job, job_with(json!({ "source_map": [] }))),
        bad(Job, job_with(json!({ "source_map": {} }))),
        bad(Job, job_with(json!({ "source_map": { "source": "w.ts" } }))),
        bad(Job, job_with(json!({ "source_map": { "mappings": "" } }))),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": 1, "mappings": "" } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": null } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": ["AAAA"] } })),
        ),
        // Values of the right type that are not valid.
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "", "mappings": "" } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "a\nb.ts", "mappings": "" } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "w\u{85}.ts", "mappings": "" } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "AAAA!" } })),
        ),
        bad(
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "AA AA" } })),
        ),
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

/// Endpoints that use every field, every enum value and every bound at its edge.
fn valid_endpoints() -> Vec<Case> {
    let mut endpoints = vec![
        endpoint_with(json!({})),
        // The `null`s that Rust reads as "not set".
        endpoint_with(json!({
            "request_body_type": null,
            "response_body_type": null,
            "response_max_bytes": null,
            "retry_policy": null,
            "timeout_ms": null,
        })),
        endpoint_with(json!({ "response_max_bytes": 1, "timeout_ms": 1 })),
        endpoint_with(json!({ "response_max_bytes": u64::MAX, "timeout_ms": u64::MAX })),
        endpoint_with(json!({ "allow_non_2xx_status": true, "follow_redirects": true })),
        endpoint_with(json!({ "allow_non_2xx_status": false, "follow_redirects": false })),
        endpoint_with(json!({ "url_template": "http://127.0.0.1:8080" })),
        endpoint_with(json!({ "url_template": "https://user:secret@api.example.com:8443/a/b/" })),
        // Placeholders in several segments, and inside one.
        endpoint_with(json!({
            "url_template": "https://api.example.com/v{version}/users/{user_id}.json",
            "url_param_specs": { "version": { "default": "1" }, "user_id": {} },
        })),
        endpoint_with_url_param(json!({})),
        endpoint_with_url_param(json!({ "default": null, "min_bytes": null, "max_bytes": null })),
        endpoint_with_url_param(json!({ "default": "x", "min_bytes": 0, "max_bytes": 1 })),
        endpoint_with_url_param(json!({ "default": "", "min_bytes": 0, "max_bytes": 0 })),
        endpoint_with_url_param(json!({ "min_bytes": 3, "max_bytes": 3 })),
        endpoint_with_url_param(json!({ "max_bytes": u64::MAX })),
        endpoint_with(json!({ "query_specs": [] })),
        endpoint_with_query(json!({ "type": "const", "key": "v", "value": "1" })),
        endpoint_with_query(json!({ "type": "const", "key": "v", "value": "" })),
        endpoint_with_query(json!({ "type": "slotted", "key": "page", "slot": "page" })),
        endpoint_with_query(json!({
            "type": "slotted",
            "key": "page[size]",
            "slot": "Page_Size_2",
            "mode": "required",
            "default": "10",
            "min_bytes": 1,
            "max_bytes": 3,
        })),
        endpoint_with_query(json!({
            "type": "slotted",
            "key": "p",
            "slot": "p",
            "default": null,
            "min_bytes": null,
            "max_bytes": null,
        })),
        // An empty default counts as no default where empty values are not emitted, so it need
        // not meet `min_bytes`.
        endpoint_with_query(json!({
            "type": "slotted",
            "key": "p",
            "slot": "p",
            "mode": "optional",
            "default": "",
            "min_bytes": 1,
        })),
        // The `*_allow_empty` modes take `min_bytes` 0 (or none), and an empty default.
        endpoint_with_query(json!({
            "type": "slotted",
            "key": "p",
            "slot": "p",
            "mode": "optional_allow_empty",
            "default": "",
            "min_bytes": 0,
            "max_bytes": 0,
        })),
        endpoint_with_query(json!({
            "type": "slotted",
            "key": "p",
            "slot": "p",
            "mode": "required_allow_empty",
            "min_bytes": null,
        })),
        // Query keys may repeat.
        endpoint_with(json!({ "query_specs": [
            { "type": "const", "key": "tag", "value": "a" },
            { "type": "const", "key": "tag", "value": "b" },
            { "type": "slotted", "key": "tag", "slot": "tag", "mode": "optional" },
        ] })),
        endpoint_with(json!({ "headers": {} })),
        endpoint_with(json!({ "headers": {
            "X-Api-Key": "k",
            "accept": "application/json",
            "x-empty": "",
            "x-tab": "a\tb",
            "x-latin": "caf\u{e9}",
            "!#$%&'*+-.^_`|~09AZaz": "token characters",
        } })),
        endpoint_with(json!({
            "overridable_request_headers": ["x-request-id", "Accept"],
            "exposed_response_headers": ["content-type", "X-Trace-Id"],
        })),
        endpoint_with(json!({ "overridable_request_headers": [], "exposed_response_headers": [] })),
        endpoint_with_retry(json!({})),
        endpoint_with_retry(json!({ "max_attempts": 1 })),
        endpoint_with_retry(json!({ "max_attempts": 20 })),
        endpoint_with_retry(json!({ "max_retry_delay_ms": 1 })),
        endpoint_with_retry(json!({ "max_retry_delay_ms": u64::MAX })),
        endpoint_with_retry(json!({
            "base_backoff_ms": 0,
            "max_backoff_ms": 0,
            "rate_limit_backoff_ms": 0,
        })),
        endpoint_with_retry(json!({ "base_backoff_ms": 5000, "max_backoff_ms": 5000 })),
        endpoint_with_retry(json!({ "retry_on_status": [] })),
        endpoint_with_retry(json!({ "retry_on_status": [100, 599, 599] })),
        endpoint_with_retry(json!({
            "max_attempts": 5,
            "base_backoff_ms": 1,
            "max_backoff_ms": u64::MAX,
            "max_retry_delay_ms": 10,
            "rate_limit_backoff_ms": u64::MAX,
            "retry_on_io_errors": false,
            "retry_on_timeout": false,
            "respect_retry_after": false,
            "retry_on_status": [408],
        })),
    ];
    for method in [
        "get", "post", "put", "patch", "delete", "head", "options", "GET", "POST", "Put", "pAtCh",
        "DeLeTe", "HEAD", "Options",
    ] {
        endpoints.push(endpoint_with(json!({ "method": method })));
    }
    for body_type in ["json", "utf8", "bytes"] {
        endpoints.push(endpoint_with(json!({ "response_body_type": body_type })));
        endpoints.push(endpoint_with(
            json!({ "method": "get", "response_body_type": body_type }),
        ));
        for method in ["post", "PUT", "patch"] {
            endpoints.push(endpoint_with(
                json!({ "method": method, "request_body_type": body_type }),
            ));
        }
    }
    for method in ["get", "delete", "head", "options", "GET"] {
        endpoints.push(endpoint_with(
            json!({ "method": method, "request_body_type": null }),
        ));
    }
    for mode in [
        "required",
        "required_allow_empty",
        "optional",
        "optional_allow_empty",
    ] {
        endpoints.push(endpoint_with_query(
            json!({ "type": "slotted", "key": "k", "slot": "s", "mode": mode }),
        ));
        endpoints.push(endpoint_with_query(json!({
            "type": "slotted",
            "key": "k",
            "slot": "s",
            "mode": mode,
            "default": "d",
            "max_bytes": 1,
        })));
    }
    endpoint_cases(true, endpoints)
}

/// Endpoints with a value of the wrong JSON type in each field, and endpoints missing a required
/// field.
fn endpoint_wrong_types() -> Vec<Case> {
    let mut cases = vec![
        bad(Endpoint, json!(null)),
        bad(Endpoint, json!([])),
        bad(Endpoint, json!("https://api.example.com/items")),
        bad(Endpoint, json!(["post", "https://api.example.com/items"])),
        bad(Config, json!({ "endpoints": null })),
        bad(Config, json!({ "endpoints": [] })),
        bad(Config, json!({ "endpoints": [endpoint_with(json!({}))] })),
        bad(Config, json!({ "endpoints": "primary" })),
        bad(Config, json!({ "endpoints": { "primary": null } })),
        bad(
            Config,
            json!({ "endpoints": { "primary": "https://api.example.com" } }),
        ),
        bad(Config, json!({ "endpoints": { "primary": [] } })),
    ];
    let mut endpoints = vec![
        json!({ "method": "post" }),
        json!({ "url_template": "https://api.example.com/items" }),
        json!({}),
        endpoint_with_query(json!({ "key": "v", "value": "1" })),
        endpoint_with_query(json!({ "type": "const", "value": "1" })),
        endpoint_with_query(json!({ "type": "const", "key": "v" })),
        endpoint_with_query(json!({ "type": "slotted", "slot": "p" })),
        endpoint_with_query(json!({ "type": "slotted", "key": "p" })),
        endpoint_with_query(json!({ "type": null, "key": "v", "value": "1" })),
        endpoint_with_query(json!(null)),
        endpoint_with_query(json!("v=1")),
        endpoint_with_query(json!({ "type": "const", "key": 1, "value": "1" })),
        endpoint_with_query(json!({ "type": "const", "key": "v", "value": 1 })),
        endpoint_with_query(json!({ "type": "const", "key": "v", "value": null })),
        endpoint_with_query(json!({ "type": "slotted", "key": "p", "slot": null })),
        endpoint_with_query(json!({ "type": "slotted", "key": "p", "slot": "p", "mode": null })),
        endpoint_with_query(json!({ "type": "slotted", "key": "p", "slot": "p", "default": 1 })),
        endpoint_with_query(
            json!({ "type": "slotted", "key": "p", "slot": "p", "max_bytes": "8" }),
        ),
        endpoint_with_url_param(json!(null)),
        endpoint_with_url_param(json!("default")),
        endpoint_with_url_param(json!({ "default": 1 })),
        endpoint_with_url_param(json!({ "min_bytes": "1" })),
        endpoint_with_url_param(json!({ "max_bytes": true })),
        endpoint_with_url_param(json!({ "max_bytes": 1.5 })),
    ];
    // Every field of an endpoint, with values of types it does not take. `null` is a wrong type
    // only where Rust has no "not set".
    let wrong: [(&str, Vec<Value>); 14] = [
        (
            "method",
            vec![
                json!(null),
                json!(1),
                json!(["post"]),
                json!({ "post": true }),
            ],
        ),
        (
            "url_template",
            vec![json!(null), json!(1), json!(["https://api.example.com"])],
        ),
        (
            "url_param_specs",
            vec![json!(null), json!([]), json!("id"), json!(1)],
        ),
        (
            "query_specs",
            vec![json!(null), json!({}), json!("v=1"), json!(1)],
        ),
        (
            "headers",
            vec![
                json!(null),
                json!([]),
                json!([["x-a", "1"]]),
                json!("x-a: 1"),
                json!({ "x-a": 1 }),
                json!({ "x-a": null }),
                json!({ "x-a": ["1", "2"] }),
            ],
        ),
        (
            "request_body_type",
            vec![json!(1), json!(true), json!(["json"])],
        ),
        (
            "response_body_type",
            vec![json!(1), json!(false), json!({ "json": true })],
        ),
        (
            "response_max_bytes",
            vec![json!("1024"), json!(true), json!(1.5), json!([1])],
        ),
        ("retry_policy", vec![json!("3"), json!(3), json!(true)]),
        (
            "overridable_request_headers",
            vec![
                json!(null),
                json!("x-a"),
                json!([1]),
                json!([null]),
                json!({ "x-a": true }),
            ],
        ),
        (
            "exposed_response_headers",
            vec![json!(null), json!("x-a"), json!([["x-a"]])],
        ),
        (
            "timeout_ms",
            vec![json!("5000"), json!(true), json!(0.5), json!({ "ms": 1 })],
        ),
        (
            "allow_non_2xx_status",
            vec![json!(null), json!("false"), json!(0)],
        ),
        (
            "follow_redirects",
            vec![json!(null), json!("true"), json!(1)],
        ),
    ];
    for (field, values) in wrong {
        for value in values {
            endpoints.push(endpoint_with(json!({ field: value })));
        }
    }
    // Every field of a retry policy: none of them takes `null`.
    let retry_wrong: [(&str, Vec<Value>); 9] = [
        ("max_attempts", vec![json!(null), json!("2"), json!(1.5)]),
        (
            "base_backoff_ms",
            vec![json!(null), json!("100"), json!(true)],
        ),
        ("max_backoff_ms", vec![json!(null), json!([1000])]),
        (
            "max_retry_delay_ms",
            vec![json!(null), json!("5000"), json!(0.5)],
        ),
        ("rate_limit_backoff_ms", vec![json!(null), json!(false)]),
        (
            "retry_on_io_errors",
            vec![json!(null), json!("yes"), json!(1)],
        ),
        ("retry_on_timeout", vec![json!(null), json!(0)]),
        ("respect_retry_after", vec![json!(null), json!("true")]),
        (
            "retry_on_status",
            vec![
                json!(null),
                json!(429),
                json!("429"),
                json!(["429"]),
                json!([null]),
                json!([429.5]),
            ],
        ),
    ];
    for (field, values) in retry_wrong {
        for value in values {
            endpoints.push(endpoint_with_retry(json!({ field: value })));
        }
    }
    cases.extend(endpoint_cases(false, endpoints));
    cases
}

/// Numbers out of their range: zero where at least 1 is required, negative values, and values
/// past the Rust type's maximum.
fn endpoint_out_of_range() -> Vec<Case> {
    let two_to_64 = Value::Number(Number::from_f64(18_446_744_073_709_551_616.0).expect("finite"));
    let mut endpoints = Vec::new();
    for field in ["timeout_ms", "response_max_bytes"] {
        for value in [json!(0), json!(-1), json!(i64::MIN), two_to_64.clone()] {
            endpoints.push(endpoint_with(json!({ field: value })));
        }
    }
    for value in [
        json!(0),
        json!(21),
        json!(-1),
        json!(u64::from(u32::MAX) + 1),
    ] {
        endpoints.push(endpoint_with_retry(json!({ "max_attempts": value })));
    }
    for value in [json!(0), json!(-1), two_to_64.clone()] {
        endpoints.push(endpoint_with_retry(json!({ "max_retry_delay_ms": value })));
    }
    for field in ["base_backoff_ms", "max_backoff_ms", "rate_limit_backoff_ms"] {
        for value in [json!(-1), two_to_64.clone()] {
            endpoints.push(endpoint_with_retry(json!({ field: value })));
        }
    }
    for status in [
        json!(0),
        json!(99),
        json!(600),
        json!(999),
        json!(65_536),
        json!(-429),
    ] {
        endpoints.push(endpoint_with_retry(
            json!({ "retry_on_status": [429, status] }),
        ));
    }
    for field in ["min_bytes", "max_bytes"] {
        for value in [json!(-1), two_to_64.clone()] {
            endpoints.push(endpoint_with_url_param(json!({ field: value })));
            endpoints.push(endpoint_with_query(json!({
                "type": "slotted",
                "key": "p",
                "slot": "p",
                "mode": "optional",
                field: value,
            })));
        }
    }
    endpoint_cases(false, endpoints)
}

/// Values of the right type that are not valid: enum values that do not exist, and the rules
/// JSON Schema can state (names, header syntax, body type versus method, empty values versus
/// `min_bytes`).
fn endpoint_invalid_values() -> Vec<Case> {
    let mut endpoints = Vec::new();
    for method in [
        "TRACE", "trace", "CONNECT", "", "get ", " post", "gett", "g\u{e9}t", "GET\n",
    ] {
        endpoints.push(endpoint_with(json!({ "method": method })));
    }
    for body_type in ["xml", "JSON", "Utf8", "text", "binary", ""] {
        endpoints.push(endpoint_with(json!({ "request_body_type": body_type })));
        endpoints.push(endpoint_with(json!({ "response_body_type": body_type })));
    }
    for mode in [
        "sometimes",
        "Required",
        "required-allow-empty",
        "optionalAllowEmpty",
        "",
    ] {
        endpoints.push(endpoint_with_query(
            json!({ "type": "slotted", "key": "p", "slot": "p", "mode": mode }),
        ));
    }
    for query_type in ["other", "Const", "SLOTTED", ""] {
        endpoints.push(endpoint_with_query(
            json!({ "type": query_type, "key": "v", "value": "1" }),
        ));
    }
    // Only `post`, `put` and `patch` take a body type.
    for method in ["get", "delete", "head", "options", "Get", "HEAD"] {
        for body_type in ["json", "utf8", "bytes"] {
            endpoints.push(endpoint_with(
                json!({ "method": method, "request_body_type": body_type }),
            ));
        }
    }
    // Modes that emit empty values contradict a positive `min_bytes`.
    for mode in ["required_allow_empty", "optional_allow_empty"] {
        endpoints.push(endpoint_with_query(
            json!({ "type": "slotted", "key": "p", "slot": "p", "mode": mode, "min_bytes": 1 }),
        ));
    }
    for slot in ["", "a-b", "page size", "caf\u{e9}", "{p}"] {
        endpoints.push(endpoint_with_query(
            json!({ "type": "slotted", "key": "p", "slot": slot }),
        ));
    }
    endpoints.push(endpoint_with_query(
        json!({ "type": "const", "key": "", "value": "1" }),
    ));
    endpoints.push(endpoint_with_query(
        json!({ "type": "slotted", "key": "", "slot": "p" }),
    ));
    // A spec named like no valid placeholder.
    endpoints.push(endpoint_with(json!({
        "url_template": "https://api.example.com/items/{id}",
        "url_param_specs": { "id": {}, "user-id": {} },
    })));
    for template in [
        "https://api.example.com/items?page=1",
        "https://api.example.com/items?",
        "https://api.example.com/items#top",
    ] {
        endpoints.push(endpoint_with(json!({ "url_template": template })));
    }
    for name in [
        "",
        "bad name",
        "x:y",
        "caf\u{e9}",
        "x-a\n",
        "(comment)",
        "a\"b",
    ] {
        endpoints.push(endpoint_with(json!({ "headers": { name: "v" } })));
        endpoints.push(endpoint_with(
            json!({ "overridable_request_headers": [name] }),
        ));
        endpoints.push(endpoint_with(json!({ "exposed_response_headers": [name] })));
    }
    for value in ["a\nb", "a\rb", "\u{0}", "a\u{7f}", "\u{1b}[0m"] {
        endpoints.push(endpoint_with(json!({ "headers": { "x-a": value } })));
    }
    endpoints.push(endpoint_with(
        json!({ "overridable_request_headers": ["x-a", "x-a"] }),
    ));
    endpoints.push(endpoint_with(
        json!({ "exposed_response_headers": ["x-a", "x-b", "x-a"] }),
    ));
    let mut cases = endpoint_cases(false, endpoints);
    // Endpoint names: empty, or with a control character (C0, DEL or C1).
    for name in [
        "",
        "a\u{7}b",
        "line\nbreak",
        "\t",
        "del\u{7f}",
        "\u{85}",
        "c1\u{9f}",
    ] {
        cases.push(bad(
            Config,
            json!({ "endpoints": { name: endpoint_with(json!({})) } }),
        ));
    }
    cases
}

/// Shapes serde's derive would read but the documented JSON does not have: structs written as
/// arrays of their fields, unit variants written as single-key objects. Both sides refuse them.
fn endpoint_other_shapes() -> Vec<Case> {
    endpoint_cases(
        false,
        vec![
            endpoint_with_url_param(json!([])),
            endpoint_with_url_param(json!(["x", 0, 5])),
            endpoint_with_retry(json!([])),
            endpoint_with_retry(json!([3, 100])),
            endpoint_with_query(json!(["const", "v", "1"])),
            endpoint_with_query(json!(["slotted", "p", "p", "optional"])),
            endpoint_with(json!({ "request_body_type": { "json": null } })),
            endpoint_with(json!({ "response_body_type": { "bytes": null } })),
            endpoint_with_query(
                json!({ "type": "slotted", "key": "p", "slot": "p", "mode": { "optional": null } }),
            ),
        ],
    )
}

fn all_cases() -> Vec<Case> {
    [
        spec_examples(),
        schema_examples(),
        valid_documents(),
        valid_endpoints(),
        unknown_fields(),
        blank_module_sources(),
        out_of_range_limits(),
        endpoint_out_of_range(),
        wrong_types(),
        endpoint_wrong_types(),
        endpoint_invalid_values(),
        endpoint_other_shapes(),
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
            (
                "items" | "additionalProperties" | "propertyNames" | "not" | "if" | "then" | "else",
                sub,
            ) => {
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

        // Every object schema closes its properties, as `deny_unknown_fields` does: a struct
        // with `additionalProperties: false`, or a map (no `properties`) whose values all have a
        // schema.
        let mut open = Vec::new();
        walk(schema, "#", &mut |path, sub| {
            if sub.get("type") == Some(&json!("object")) {
                let closed = match sub.get("additionalProperties") {
                    Some(Value::Bool(false)) => true,
                    Some(Value::Object(_)) => sub.get("properties").is_none(),
                    _ => false,
                };
                if !closed {
                    open.push(path.to_owned());
                }
            }
        });
        assert!(
            open.is_empty(),
            "{file}: object schemas neither closed by `additionalProperties: false` nor maps: \
             {open:?}"
        );

        // Every `$ref` names a sibling file by its `$id`, or a `#/...` location of this file.
        let mut refs = Vec::new();
        walk(schema, "#", &mut |path, sub| {
            if let Some(reference) = sub.get("$ref") {
                refs.push((path.to_owned(), reference.clone()));
            }
        });
        let base = shape.id().trim_end_matches(file);
        for (path, reference) in refs {
            let reference = reference.as_str().expect("`$ref` is a string");
            if let Some(pointer) = reference.strip_prefix('#') {
                assert!(
                    schema.pointer(pointer).is_some(),
                    "{file}: `$ref` {reference} at {path} points at nothing"
                );
            } else {
                let target = format!("{base}{reference}");
                assert!(
                    Shape::ALL.iter().any(|s| s.id() == target),
                    "{file}: `$ref` {reference} at {path} is not a sibling schema"
                );
            }
        }
    }

    // The job refers to the limits and the config; the config to the endpoint.
    for (from, to) in [(Job, Limits), (Job, Config), (Config, Endpoint)] {
        assert!(
            from.schema()
                .to_string()
                .contains(&format!("\"$ref\":\"{}\"", to.file())),
            "the {} schema does not `$ref` {}",
            from.type_name(),
            to.file()
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
        if let Err(err) = super::shared_pool().run(job).result {
            panic!("example {example} fails: {err}");
        }
    }
}

#[test]
fn schemas_accept_valid_documents() {
    assert_schema_verdicts(&valid_documents());
    assert_schema_verdicts(&limit_bounds());
    assert_schema_verdicts(&valid_endpoints());
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
fn schemas_reject_out_of_range_endpoint_numbers() {
    assert_schema_verdicts(&endpoint_out_of_range());
}

#[test]
fn schemas_reject_wrong_types() {
    assert_schema_verdicts(&wrong_types());
    assert_schema_verdicts(&endpoint_wrong_types());
}

#[test]
fn schemas_reject_invalid_endpoint_values() {
    assert_schema_verdicts(&endpoint_invalid_values());
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

/// Where the schemas cannot follow serde: documents the schemas accept and serde rejects.
///
/// - JSON Schema's data model has no integer-valued floats: `1.0` is the integer `1`, while serde
///   rejects a float for an integer field. Writers must emit plain integers.
/// - `url_template` must parse as an absolute `http`/`https` URL with a host, whose placeholders
///   are balanced, validly named, unique and in the path: URL grammar, which a pattern would only
///   approximate. The schema rejects just `?` and `#`.
/// - `url_param_specs` must name exactly the placeholders of `url_template`: a check across two
///   fields.
/// - `min_bytes <= max_bytes`, a `default` within those bounds, and `base_backoff_ms <=
///   max_backoff_ms` (an omitted one counting at its default): comparisons between values.
/// - Header names must be unique ignoring case, in `headers` and in both header lists; the schema
///   rejects only exact duplicates in the lists.
/// - A source map's `mappings` must decode as Base64 VLQ with source index 0 and no name indices;
///   the schema checks only the alphabet.
///
/// If serde's side of an entry changes, the entry moves to the parity table.
#[test]
fn known_divergences_from_serde_are_the_documented_ones() {
    let divergences = [
        // Integer-valued floats.
        (Limits, json!({ "max_recursion_depth": 512.0 }), true, false),
        (Limits, json!({ "max_execution_time_ms": 1e3 }), true, false),
        (
            Job,
            job_with(json!({ "limits": { "max_stack_size": 1.0 } })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "timeout_ms": 1000.0 })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "response_max_bytes": 1e6 })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_retry(json!({ "max_attempts": 2.0 })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_retry(json!({ "retry_on_status": [503.0] })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_url_param(json!({ "min_bytes": 1.0 })),
            true,
            false,
        ),
        (
            Config,
            config_of(endpoint_with_query(
                json!({ "type": "slotted", "key": "p", "slot": "p", "max_bytes": 8.0 }),
            )),
            true,
            false,
        ),
        // URL templates that are not absolute http(s) URLs with placeholders in the path.
        (
            Endpoint,
            endpoint_with(json!({ "url_template": "not a url" })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "url_template": "/items" })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "url_template": "ftp://example.com/items" })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "url_template": "https://example.com/{}" })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "url_template": "https://example.com/{user-id}" })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({
                "url_template": "https://example.com/items/{id",
                "url_param_specs": { "id": {} },
            })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({
                "url_template": "https://example.com/{id}/{id}",
                "url_param_specs": { "id": {} },
            })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({
                "url_template": "https://{tenant}.example.com/items",
                "url_param_specs": { "tenant": {} },
            })),
            true,
            false,
        ),
        // Placeholders and specs that do not match.
        (
            Endpoint,
            endpoint_with(json!({ "url_template": "https://example.com/items/{id}" })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(json!({ "url_param_specs": { "id": {} } })),
            true,
            false,
        ),
        // Bounds against each other and against defaults.
        (
            Endpoint,
            endpoint_with_url_param(json!({ "min_bytes": 5, "max_bytes": 1 })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_url_param(json!({ "default": "latest", "max_bytes": 2 })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_url_param(json!({ "default": "", "min_bytes": 1 })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_query(json!({
                "type": "slotted",
                "key": "p",
                "slot": "p",
                "min_bytes": 3,
                "max_bytes": 2,
            })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_query(json!({
                "type": "slotted",
                "key": "p",
                "slot": "p",
                "default": "abc",
                "max_bytes": 2,
            })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with_retry(json!({ "base_backoff_ms": 200, "max_backoff_ms": 100 })),
            true,
            false,
        ),
        // Below the default `base_backoff_ms` of 100.
        (
            Endpoint,
            endpoint_with_retry(json!({ "max_backoff_ms": 50 })),
            true,
            false,
        ),
        // Header names that differ only in case.
        (
            Endpoint,
            endpoint_with(json!({ "headers": { "X-Api-Key": "a", "x-api-key": "b" } })),
            true,
            false,
        ),
        (
            Endpoint,
            endpoint_with(
                json!({ "overridable_request_headers": ["X-Request-Id", "x-request-id"] }),
            ),
            true,
            false,
        ),
        (
            Job,
            job_with(json!({ "config": config_of(endpoint_with(
                json!({ "exposed_response_headers": ["Content-Type", "content-type"] }),
            )) })),
            true,
            false,
        ),
        // Mappings that do not decode: a name index with no names, a second source, a value cut
        // off in its continuation.
        (
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "AAAAA" } })),
            true,
            false,
        ),
        (
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "ACAA" } })),
            true,
            false,
        ),
        (
            Job,
            job_with(json!({ "source_map": { "source": "w.ts", "mappings": "AAAg" } })),
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

/// A config whose one endpoint, `primary`, sets a value in every nested type: a URL parameter,
/// a query parameter of each kind, and a retry policy.
fn full_config() -> MechanicsConfig {
    let endpoint = HttpEndpoint::new(
        HttpMethod::Post,
        "https://api.example.com/items/{id}",
        [("x-api-key".to_owned(), "redacted".to_owned())].into(),
    )
    .with_url_param_spec("id", UrlParamSpec::default())
    .with_query_spec(QuerySpec::constant("v", "1"))
    .with_query_spec(QuerySpec::slotted(
        "page",
        "page",
        SlottedQueryMode::Optional,
    ))
    .with_request_body_type(EndpointBodyType::Json)
    .with_retry_policy(EndpointRetryPolicy::default());
    MechanicsConfig::new([("primary".to_owned(), endpoint)]).expect("a valid config")
}

/// A job with every optional field set, serialized.
fn full_job() -> Value {
    let job = MechanicsJob::new("export default () => 1;", json!({ "a": 1 }), full_config())
        .expect("a valid job")
        .with_limits(MechanicsExecutionLimits::default())
        .with_source_map(full_source_map());
    serde_json::to_value(job).expect("a job serializes")
}

/// A source map with a few mappings.
fn full_source_map() -> SourceMap {
    SourceMap::new("worker.ts", "AAAA,SAAS;AACT").expect("a valid source map")
}

fn serialized(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("serializes")
}

/// An object type of the schemas: a schema file, or a `$defs` entry with a `title`. The title is
/// also the TypeScript interface's name, and the Rust type's when it has one of its own.
struct ObjectType {
    title: &'static str,
    schema: &'static Value,
    /// The smallest valid document: its required fields only.
    minimal: Value,
    /// A Rust value of the type, serialized with every field it writes.
    serialized: Value,
    /// serde's round trip of a document of the type.
    round_trip: fn(&Value) -> Result<Value, String>,
}

/// The `$defs` entry titled `title`, in whichever schema file holds it.
fn titled_def(title: &str) -> &'static Value {
    Shape::ALL
        .iter()
        .filter_map(|shape| shape.schema().get("$defs")?.as_object())
        .flat_map(|defs| defs.values())
        .find(|def| def["title"] == title)
        .unwrap_or_else(|| panic!("no `$defs` entry is titled {title}"))
}

fn object_types() -> Vec<ObjectType> {
    let minimal_endpoint = endpoint_with(json!({}));
    vec![
        ObjectType {
            title: Job.type_name(),
            schema: Job.schema(),
            minimal: json!({ "module_source": "x" }),
            serialized: full_job(),
            round_trip: via::<MechanicsJob>,
        },
        ObjectType {
            title: Limits.type_name(),
            schema: Limits.schema(),
            minimal: json!({}),
            serialized: serialized(MechanicsExecutionLimits::default()),
            round_trip: via::<MechanicsExecutionLimits>,
        },
        ObjectType {
            title: Config.type_name(),
            schema: Config.schema(),
            minimal: json!({}),
            serialized: serialized(full_config()),
            round_trip: via::<MechanicsConfig>,
        },
        ObjectType {
            title: Endpoint.type_name(),
            schema: Endpoint.schema(),
            serialized: serialized(HttpEndpoint::new(
                HttpMethod::Post,
                "https://api.example.com/items",
                Default::default(),
            )),
            minimal: minimal_endpoint,
            round_trip: via::<HttpEndpoint>,
        },
        ObjectType {
            title: "UrlParamSpec",
            schema: titled_def("UrlParamSpec"),
            minimal: json!({}),
            serialized: serialized(UrlParamSpec::default()),
            round_trip: via::<UrlParamSpec>,
        },
        ObjectType {
            title: "ConstQuerySpec",
            schema: titled_def("ConstQuerySpec"),
            minimal: json!({ "type": "const", "key": "v", "value": "1" }),
            serialized: serialized(QuerySpec::constant("v", "1")),
            round_trip: via::<QuerySpec>,
        },
        ObjectType {
            title: "SlottedQuerySpec",
            schema: titled_def("SlottedQuerySpec"),
            minimal: json!({ "type": "slotted", "key": "page", "slot": "page" }),
            serialized: serialized(QuerySpec::slotted(
                "page",
                "page",
                SlottedQueryMode::Optional,
            )),
            round_trip: via::<QuerySpec>,
        },
        ObjectType {
            title: "SourceMap",
            schema: titled_def("SourceMap"),
            minimal: json!({ "source": "w.ts", "mappings": "" }),
            serialized: serialized(full_source_map()),
            round_trip: via::<SourceMap>,
        },
        ObjectType {
            title: "EndpointRetryPolicy",
            schema: titled_def("EndpointRetryPolicy"),
            minimal: json!({}),
            serialized: serialized(EndpointRetryPolicy::default()),
            round_trip: via::<EndpointRetryPolicy>,
        },
    ]
}

#[test]
fn schema_properties_are_the_serialized_fields_of_the_rust_types() {
    let objects = object_types();
    for object in &objects {
        assert_eq!(
            object.schema["title"], object.title,
            "title of {}",
            object.title
        );
        assert_eq!(
            properties(object.schema, object.title)
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>(),
            keys(&object.serialized),
            "{} fields",
            object.title
        );
    }

    // The nested values too: a type writes the same fields inside another type.
    let job = full_job();
    let endpoint = &job["config"]["endpoints"]["primary"];
    for (title, value) in [
        (Limits.type_name(), &job["limits"]),
        (Config.type_name(), &job["config"]),
        (Endpoint.type_name(), endpoint),
        ("UrlParamSpec", &endpoint["url_param_specs"]["id"]),
        ("ConstQuerySpec", &endpoint["query_specs"][0]),
        ("SlottedQuerySpec", &endpoint["query_specs"][1]),
        ("EndpointRetryPolicy", &endpoint["retry_policy"]),
        ("SourceMap", &job["source_map"]),
    ] {
        let object = objects
            .iter()
            .find(|object| object.title == title)
            .expect("an object type");
        assert_eq!(
            keys(&object.serialized),
            keys(value),
            "{title} fields in a job"
        );
    }

    // Every object of the `$defs` is one of the object types, so that none escapes these checks.
    let titles: BTreeSet<&str> = objects.iter().map(|object| object.title).collect();
    for shape in Shape::ALL {
        let Some(defs) = shape.schema().get("$defs") else {
            continue;
        };
        for (name, def) in defs.as_object().expect("`$defs` is an object") {
            if def.get("type") == Some(&json!("object")) {
                let title = def["title"].as_str().unwrap_or_default();
                assert!(
                    titles.contains(title),
                    "{}: `$defs/{name}` is an object without the `title` of an object type",
                    shape.file()
                );
            }
        }
    }
}

/// What is required: the minimal document of each type is accepted, and without any one of its
/// fields refused.
#[test]
fn schema_required_properties_are_the_ones_serde_requires() {
    for object in object_types() {
        let required = required(object.schema, object.title);
        assert_eq!(
            keys(&object.minimal),
            required,
            "{}: the minimal document holds the required fields",
            object.title
        );
        if let Err(err) = (object.round_trip)(&object.minimal) {
            panic!("{}: serde rejects {}: {err}", object.title, object.minimal);
        }
        for name in &required {
            let mut doc = object.minimal.clone();
            doc.as_object_mut().expect("an object").remove(name);
            assert!(
                (object.round_trip)(&doc).is_err(),
                "{}: serde accepts {doc}, without the required `{name}`",
                object.title
            );
        }
    }
}

#[test]
fn schema_defaults_are_the_rust_defaults() {
    // Every optional field's `default` is what serde makes of the minimal document; a field that
    // Rust leaves out when unset (a job's `limits`) has none.
    for object in object_types() {
        let defaults = (object.round_trip)(&object.minimal).expect("the minimal document");
        let required = required(object.schema, object.title);
        for (name, property) in properties(object.schema, object.title) {
            if !required.contains(name) {
                assert_eq!(
                    property.get("default"),
                    defaults.get(name),
                    "default of {} `{name}`",
                    object.title
                );
            }
        }
    }

    // The JSON defaults are the Rust defaults and builders.
    assert_eq!(
        Limits.rust_round_trip(&json!({})),
        Ok(serialized(MechanicsExecutionLimits::default()))
    );
    assert_eq!(
        via::<EndpointRetryPolicy>(&json!({})),
        Ok(serialized(EndpointRetryPolicy::default()))
    );
    assert_eq!(
        Endpoint.rust_round_trip(&endpoint_with(json!({}))),
        Ok(serialized(HttpEndpoint::new(
            HttpMethod::Post,
            "https://api.example.com/items",
            Default::default(),
        )))
    );
    assert_eq!(
        via::<QuerySpec>(&json!({ "type": "slotted", "key": "k", "slot": "s" })),
        Ok(serialized(QuerySpec::slotted(
            "k",
            "s",
            SlottedQueryMode::Required
        )))
    );
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
    let objects = object_types();
    let names: BTreeSet<&str> = interfaces.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = objects.iter().map(|object| object.title).collect();
    assert_eq!(names, expected, "interfaces of mechanics-json-shapes.d.ts");
    for object in &objects {
        let members = &interfaces[object.title];
        let member_names: BTreeSet<String> = members.keys().cloned().collect();
        let property_names: BTreeSet<String> = properties(object.schema, object.title)
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            member_names, property_names,
            "members of interface {}",
            object.title
        );
        let optional: BTreeSet<String> = members
            .iter()
            .filter(|(_, optional)| **optional)
            .map(|(name, _)| name.clone())
            .collect();
        let not_required: BTreeSet<String> = property_names
            .difference(&required(object.schema, object.title))
            .cloned()
            .collect();
        assert_eq!(
            optional, not_required,
            "optional (`?`) members of interface {}",
            object.title
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
    assert_eq!(
        declared,
        engine_specifiers(),
        "`declare module` names in ts-types/*.d.ts vs SPECIFIERS"
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
/// `src/modules/<name>.rs`: the `(name, length, function)` entries of the `vec!` passed to
/// `Exports`, each name a string literal or a `const NAME: &str = "…";` of the same file.
fn engine_named_exports(specifier: &str) -> BTreeSet<String> {
    let stem = specifier.trim_start_matches("mechanics:").replace('-', "_");
    let source = read(&format!("src/modules/{stem}.rs"));
    let constants: BTreeMap<String, String> =
        Regex::new(r#"const\s+([A-Z][A-Z0-9_]*)\s*:\s*&(?:'static\s+)?str\s*=\s*"([^"]*)"\s*;"#)
            .expect("regex")
            .captures_iter(&source)
            .map(|c| (c[1].to_owned(), c[2].to_owned()))
            .collect();
    let entries = Regex::new(r"(?s)Exports::(?:named|with_default)\(\s*vec!\[(.*?)\]")
        .expect("regex")
        .captures(&source)
        .unwrap_or_else(|| panic!("src/modules/{stem}.rs passes no `vec![…]` to `Exports`"))[1]
        .to_owned();
    let names: BTreeSet<String> =
        Regex::new(r#"\(\s*(?:"([A-Za-z_$][\w$]*)"|([A-Z][A-Z0-9_]*))\s*,\s*\d+\s*,"#)
            .expect("regex")
            .captures_iter(&entries)
            .map(|c| match (c.get(1), c.get(2)) {
                (Some(literal), _) => literal.as_str().to_owned(),
                (None, constant) => {
                    let constant = constant.expect("one of the two").as_str();
                    constants.get(constant).cloned().unwrap_or_else(|| {
                        panic!("src/modules/{stem}.rs: no `const {constant}: &str` for an export")
                    })
                }
            })
            .collect();
    assert!(
        !names.is_empty(),
        "found no `(name, length, function)` export in src/modules/{stem}.rs"
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
