//! `mechanics:endpoint` against real HTTP servers on 127.0.0.1: request building (URL slots,
//! queries, headers, bodies), response shaping, limits, timeouts, retries, redirects, and the
//! guarantees that credentials stay out of the job's reach and that a job reaches no other URL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use mechanics_core::endpoint::http_client::{
    EndpointHttpClient, EndpointHttpFuture, EndpointHttpRequest, EndpointHttpResponse,
};
use mechanics_core::endpoint::{
    EndpointBodyType, EndpointRetryPolicy, HttpEndpoint, HttpMethod, QuerySpec, SlottedQueryMode,
    UrlParamSpec,
};
use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::{MechanicsError, MechanicsPool, MechanicsPoolConfig};
use serde_json::{Value, json};

use crate::fake_server::{FakeServer, response, serve_router};
use crate::shared_pool;

/// A config with the single endpoint `api` built from `endpoint` (JSON).
fn config(endpoint: Value) -> MechanicsConfig {
    serde_json::from_value(json!({ "endpoints": { "api": endpoint } })).expect("valid config")
}

fn run(config: MechanicsConfig, source: &str, arg: Value) -> Result<Value, MechanicsError> {
    shared_pool()
        .run(MechanicsJob::new(source, arg, config)?)
        .result
}

/// Calls `api` with `options` (a JS expression) and returns the result object.
fn call(config: MechanicsConfig, options: &str) -> Result<Value, MechanicsError> {
    let source = format!(
        r#"import endpoint from "mechanics:endpoint";
        export default async function main(arg) {{ return await endpoint("api", {options}); }}"#
    );
    run(config, &source, Value::Null)
}

/// Calls `api` and returns the error message the job saw, or panics when the call succeeded.
fn call_err(config: MechanicsConfig, options: &str) -> String {
    let source = format!(
        r#"import endpoint from "mechanics:endpoint";
        export default async function main() {{
            try {{ await endpoint("api", {options}); }}
            catch (e) {{ return {{ caught: String(e), isError: e instanceof Error }}; }}
            return "no error";
        }}"#
    );
    let value = run(config, &source, Value::Null).expect("the job itself succeeds");
    assert_eq!(value["isError"], true, "{value}");
    value["caught"]
        .as_str()
        .expect("an error message")
        .to_owned()
}

#[test]
fn a_post_sends_the_configured_request_and_returns_body_headers_status_ok() {
    let server = FakeServer::start(|req, _| {
        response(
            201,
            &[
                ("content-type", "application/json"),
                ("x-trace-id", "t-1"),
                ("x-hidden", "h"),
            ],
            format!(r#"{{"echo":{}}}"#, String::from_utf8_lossy(&req.body)),
        )
    });
    let config = config(json!({
        "method": "post",
        "url_template": server.url("/users/{user_id}/messages"),
        "url_param_specs": { "user_id": {} },
        "query_specs": [{ "type": "const", "key": "v", "value": "1" }],
        "headers": { "x-api-key": "k-123" },
        "exposed_response_headers": ["X-Trace-Id"],
    }));
    let result = call(
        config,
        r#"{ urlParams: { user_id: "u-1" }, body: { hello: "world" } }"#,
    )
    .unwrap();
    assert_eq!(
        result,
        json!({
            "body": { "echo": { "hello": "world" } },
            "headers": { "x-trace-id": "t-1" },
            "status": 201,
            "ok": true,
        })
    );
    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/users/u-1/messages");
    assert_eq!(request.query.as_deref(), Some("v=1"));
    assert_eq!(request.header("x-api-key").as_deref(), Some("k-123"));
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        request
            .header("user-agent")
            .unwrap()
            .starts_with("mechanics/")
    );
    assert_eq!(request.body, br#"{"hello":"world"}"#);
}

#[test]
fn url_slot_values_are_one_encoded_path_segment_and_cannot_leave_it() {
    let server = FakeServer::json(200, "{}");
    let endpoint = json!({
        "method": "get",
        "url_template": server.url("/users/{id}/profile"),
        "url_param_specs": { "id": {} },
    });
    let expected = [
        ("../admin", "/users/..%2Fadmin/profile"),
        ("a/b?x=1#f", "/users/a%2Fb%3Fx%3D1%23f/profile"),
        ("%2e%2e", "/users/%252e%252e/profile"),
        ("@127.0.0.1:1", "/users/%40127.0.0.1%3A1/profile"),
        ("ü space", "/users/%C3%BC%20space/profile"),
    ];
    for (value, _) in expected {
        call(
            config(endpoint.clone()),
            &format!("{{ urlParams: {{ id: {value:?} }} }}"),
        )
        .unwrap();
    }
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    let want: Vec<&str> = expected.iter().map(|(_, path)| *path).collect();
    assert_eq!(paths, want);
    for value in ["..", "."] {
        let message = call_err(
            config(endpoint.clone()),
            &format!("{{ urlParams: {{ id: {value:?} }} }}"),
        );
        assert!(message.contains("path segment"), "{message}");
    }
    assert_eq!(
        server.requests().len(),
        expected.len(),
        "refused calls send nothing"
    );
}

#[test]
fn url_params_take_defaults_and_respect_byte_bounds() {
    let server = FakeServer::json(200, "{}");
    let endpoint = json!({
        "method": "get",
        "url_template": server.url("/{a}/{b}/{c}"),
        "url_param_specs": {
            "a": { "default": "latest" },
            "b": {},
            "c": { "min_bytes": 2, "max_bytes": 4 },
        },
    });
    call(config(endpoint.clone()), r#"{ urlParams: { c: "éé" } }"#).unwrap();
    call(
        config(endpoint.clone()),
        r#"{ urlParams: { a: "", b: "x", c: "abc" } }"#,
    )
    .unwrap();
    call(
        config(endpoint.clone()),
        r#"{ urlParams: { a: "v2", c: "abcd" } }"#,
    )
    .unwrap();
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/latest//%C3%A9%C3%A9", "/latest/x/abc", "/v2//abcd"]
    );

    for (options, needle) in [
        (
            r#"{ urlParams: { c: "a" } }"#,
            "shorter than `min_bytes` (2)",
        ),
        (
            r#"{ urlParams: { c: "ééé" } }"#,
            "6 bytes, longer than `max_bytes` (4)",
        ),
        (r#"{}"#, "`urlParams.c`"),
        (
            r#"{ urlParams: { c: "ab", d: "x" } }"#,
            "`urlParams.d` is not a slot",
        ),
        (
            r#"{ urlParams: { c: 12 } }"#,
            "`urlParams.c` must be a string, got number",
        ),
        (r#"{ urlParams: ["ab"] }"#, "must be an object, got array"),
    ] {
        let message = call_err(config(endpoint.clone()), options);
        assert!(message.contains(needle), "{options}: {message}");
        assert!(message.contains("endpoint `api`"), "{message}");
    }
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn query_specs_follow_the_four_modes_and_default_precedence() {
    let server = FakeServer::json(200, "{}");
    let spec = |mode: &str, default: Option<&str>| {
        let mut spec = json!({ "type": "slotted", "key": "q", "slot": "s", "mode": mode });
        if let Some(default) = default {
            spec["default"] = json!(default);
        }
        json!({
            "method": "get",
            "url_template": server.url("/"),
            "query_specs": [{ "type": "const", "key": "v", "value": "1 2" }, spec],
        })
    };
    /// Mode, default, `queries`, and the query string sent or a fragment of the error.
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Result<&'a str, &'a str>);
    let cases: &[Case] = &[
        ("required", None, r#"{ s: "x&y" }"#, Ok("v=1+2&q=x%26y")),
        (
            "required",
            None,
            "{}",
            Err("`queries.s` is required and must not be empty"),
        ),
        ("required", None, r#"{ s: "" }"#, Err("must not be empty")),
        ("required", Some("d"), "{}", Ok("v=1+2&q=d")),
        ("required", Some(""), "{}", Err("must not be empty")),
        ("required_allow_empty", None, r#"{ s: "" }"#, Ok("v=1+2&q=")),
        (
            "required_allow_empty",
            None,
            "{}",
            Err("`queries.s` is required"),
        ),
        ("required_allow_empty", Some(""), "{}", Ok("v=1+2&q=")),
        ("optional", None, "{}", Ok("v=1+2")),
        ("optional", None, r#"{ s: "" }"#, Ok("v=1+2")),
        ("optional", Some(""), "{}", Ok("v=1+2")),
        ("optional", Some("d"), "{}", Ok("v=1+2&q=d")),
        ("optional", Some("d"), r#"{ s: "x" }"#, Ok("v=1+2&q=x")),
        ("optional_allow_empty", None, "{}", Ok("v=1+2")),
        ("optional_allow_empty", None, r#"{ s: "" }"#, Ok("v=1+2&q=")),
        ("optional_allow_empty", Some(""), "{}", Ok("v=1+2&q=")),
    ];
    for (mode, default, queries, expected) in cases {
        let before = server.requests().len();
        let options = format!("{{ queries: {queries} }}");
        match expected {
            Ok(query) => {
                call(config(spec(mode, *default)), &options).unwrap();
                let request = server.requests().pop().unwrap();
                assert_eq!(
                    request.query.as_deref(),
                    Some(*query),
                    "{mode} {default:?} {queries}"
                );
            }
            Err(needle) => {
                let message = call_err(config(spec(mode, *default)), &options);
                assert!(
                    message.contains(needle),
                    "{mode} {default:?} {queries}: {message}"
                );
                assert_eq!(server.requests().len(), before);
            }
        }
    }
    let message = call_err(
        config(spec("optional", None)),
        r#"{ queries: { other: "x" } }"#,
    );
    assert!(
        message.contains("`queries.other` is not a query slot of this endpoint (slots: s)"),
        "{message}"
    );
}

#[test]
fn query_slot_byte_bounds_apply_to_emitted_values() {
    let server = FakeServer::json(200, "{}");
    let endpoint = json!({
        "method": "get",
        "url_template": server.url("/"),
        "query_specs": [{ "type": "slotted", "key": "page", "slot": "page", "mode": "optional",
                          "min_bytes": 1, "max_bytes": 2 }],
    });
    call(config(endpoint.clone()), r#"{ queries: { page: "12" } }"#).unwrap();
    call(config(endpoint.clone()), "{}").unwrap();
    let message = call_err(config(endpoint), r#"{ queries: { page: "123" } }"#);
    assert!(message.contains("longer than `max_bytes` (2)"), "{message}");
    let queries: Vec<Option<String>> = server.requests().into_iter().map(|r| r.query).collect();
    assert_eq!(queries, [Some("page=12".to_owned()), None]);
}

#[test]
fn headers_layer_defaults_then_config_then_allowlisted_job_overrides() {
    let server = FakeServer::json(200, "{}");
    let endpoint = json!({
        "method": "post",
        "url_template": server.url("/"),
        "headers": { "User-Agent": "configured-agent", "X-Tenant": "t1", "Content-Type": "application/vnd.x+json" },
        "overridable_request_headers": ["x-tenant", "X-Request-Id"],
    });
    call(
        config(endpoint.clone()),
        r#"{ headers: { "X-TENANT": "t2", "x-request-id": "r-1" }, body: 1 }"#,
    )
    .unwrap();
    let request = server.only_request();
    assert_eq!(
        request.header("user-agent").as_deref(),
        Some("configured-agent")
    );
    assert_eq!(request.header("x-tenant").as_deref(), Some("t2"));
    assert_eq!(request.header("x-request-id").as_deref(), Some("r-1"));
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/vnd.x+json")
    );
    assert_eq!(request.headers.get_all("x-tenant").iter().count(), 1);

    for (options, needle) in [
        (
            r#"{ headers: { "user-agent": "evil" } }"#,
            "`headers.user-agent` may not be set by the job",
        ),
        (
            r#"{ headers: { "x-api-key": "k" } }"#,
            "overridable headers: x-request-id, x-tenant",
        ),
        (
            r#"{ headers: { "x-tenant": "a", "X-Tenant": "b" } }"#,
            "twice",
        ),
        (
            r#"{ headers: { "x-tenant": "a\nb" } }"#,
            "not a valid header value",
        ),
        (r#"{ headers: { "x-tenant": 1 } }"#, "must be a string"),
    ] {
        let message = call_err(config(endpoint.clone()), options);
        assert!(message.contains(needle), "{options}: {message}");
    }
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn request_bodies_in_each_type_and_the_omission_rules() {
    let server = FakeServer::json(200, "{}");
    let endpoint = |method: &str, body_type: Option<&str>| {
        let mut e = json!({ "method": method, "url_template": server.url("/") });
        if let Some(t) = body_type {
            e["request_body_type"] = json!(t);
        }
        config(e)
    };
    let sent = |expected_body: &[u8], expected_type: Option<&str>| {
        let request = server.requests().pop().unwrap();
        assert_eq!(request.body, expected_body);
        assert_eq!(request.header("content-type").as_deref(), expected_type);
    };
    call(endpoint("post", None), "{ body: null }").unwrap();
    sent(b"null", Some("application/json"));
    call(
        endpoint("put", Some("json")),
        "{ body: [1, 'a', { b: undefined }] }",
    )
    .unwrap();
    sent(br#"[1,"a",{}]"#, Some("application/json"));
    call(endpoint("post", None), "{}").unwrap();
    sent(b"", None);
    call(endpoint("patch", None), "{ body: undefined }").unwrap();
    sent(b"", None);
    call(endpoint("post", Some("utf8")), "{ body: 'héllo' }").unwrap();
    sent("héllo".as_bytes(), Some("text/plain; charset=utf-8"));
    for bytes in [
        "new Uint8Array([0, 255, 7])",
        "new Uint8Array([9, 0, 255, 7]).subarray(1)",
        "new Uint8Array([0, 255, 7]).buffer",
        "new DataView(new Uint8Array([1, 0, 255, 7, 1]).buffer, 1, 3)",
    ] {
        call(
            endpoint("post", Some("bytes")),
            &format!("{{ body: {bytes} }}"),
        )
        .unwrap();
        sent(&[0, 255, 7], Some("application/octet-stream"));
    }
    let before = server.requests().len();
    for (method, body_type, body, needle) in [
        ("get", None, "null", "GET requests carry no body"),
        ("delete", None, "{}", "DELETE requests carry no body"),
        ("head", None, "''", "HEAD requests carry no body"),
        ("options", None, "1", "OPTIONS requests carry no body"),
        (
            "post",
            Some("utf8"),
            "1",
            "`body` must be a string for a utf8 endpoint, got number",
        ),
        ("post", Some("utf8"), "null", "got null"),
        (
            "post",
            Some("bytes"),
            "'text'",
            "expected a TypedArray, ArrayBuffer or DataView",
        ),
        (
            "post",
            Some("bytes"),
            "new Uint8Array(new SharedArrayBuffer(4))",
            "SharedArrayBuffer",
        ),
        ("post", Some("json"), "10n", "not JSON"),
        (
            "post",
            Some("json"),
            "(() => { const a = {}; a.a = a; return a; })()",
            "not JSON",
        ),
        ("post", Some("json"), "() => 1", "not JSON"),
    ] {
        let message = call_err(endpoint(method, body_type), &format!("{{ body: {body} }}"));
        assert!(
            message.contains(needle),
            "{method} {body_type:?} {body}: {message}"
        );
    }
    assert_eq!(server.requests().len(), before);
}

#[test]
fn response_bodies_in_each_type_and_empty_as_null() {
    let server = FakeServer::start(|req, _| match req.path.as_str() {
        "/json" => response(200, &[], r#"{"a":[1,2]}"#),
        "/text" => response(200, &[], "héllo"),
        "/bytes" => response(200, &[], vec![0u8, 255, 7]),
        "/bad-json" => response(200, &[], "{nope"),
        "/bad-utf8" => response(200, &[], vec![0xffu8, 0xfe]),
        _ => response(204, &[], ""),
    });
    let endpoint = |path: &str, body_type: &str| {
        config(json!({
            "method": "get",
            "url_template": server.url(path),
            "response_body_type": body_type,
        }))
    };
    let body = |path: &str, body_type: &str| {
        call(endpoint(path, body_type), "{}").unwrap()["body"].clone()
    };
    assert_eq!(body("/json", "json"), json!({ "a": [1, 2] }));
    assert_eq!(body("/text", "utf8"), json!("héllo"));
    assert_eq!(body("/json", "utf8"), json!(r#"{"a":[1,2]}"#));
    for body_type in ["json", "utf8", "bytes"] {
        assert_eq!(body("/empty", body_type), Value::Null, "{body_type}");
    }
    let source = r#"import endpoint from "mechanics:endpoint";
        export default async function main() {
            const r = await endpoint("api");
            return [r.body instanceof Uint8Array, Array.from(r.body)];
        }"#;
    assert_eq!(
        run(endpoint("/bytes", "bytes"), source, Value::Null).unwrap(),
        json!([true, [0, 255, 7]])
    );
    let message = call_err(endpoint("/bad-json", "json"), "{}");
    assert!(
        message.contains("the response body is not valid JSON"),
        "{message}"
    );
    let message = call_err(endpoint("/bad-utf8", "utf8"), "{}");
    assert!(message.contains("not valid UTF-8"), "{message}");
}

#[test]
fn a_head_request_has_a_null_body() {
    let server = FakeServer::start(|_, _| response(200, &[("content-length", "5")], ""));
    let result = call(
        config(json!({ "method": "HEAD", "url_template": server.url("/") })),
        "{}",
    )
    .unwrap();
    assert_eq!(result["body"], Value::Null);
    assert_eq!(server.only_request().method, "HEAD");
}

#[test]
fn exposed_headers_are_lowercase_joined_and_lossy() {
    let server = FakeServer::start(|_, _| {
        let mut r = response(
            200,
            &[("x-multi", "a"), ("x-multi", "b"), ("Set-Cookie", "s=1")],
            "",
        );
        r.headers_mut().insert(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        r
    });
    let result = call(
        config(json!({
            "method": "get",
            "url_template": server.url("/"),
            "exposed_response_headers": ["X-Multi", "x-bytes", "x-absent"],
        })),
        "{}",
    )
    .unwrap();
    assert_eq!(
        result["headers"],
        json!({ "x-multi": "a, b", "x-bytes": "caf\u{fffd}" })
    );
}

#[test]
fn non_2xx_fails_unless_allowed() {
    let server = FakeServer::json(404, r#"{"error":"missing"}"#);
    let endpoint = json!({ "method": "get", "url_template": server.url("/") });
    let message = call_err(config(endpoint.clone()), "{}");
    assert!(
        message.contains("the server answered 404 Not Found"),
        "{message}"
    );
    let mut allowed = endpoint;
    allowed["allow_non_2xx_status"] = json!(true);
    let result = call(config(allowed), "{}").unwrap();
    assert_eq!(result["status"], 404);
    assert_eq!(result["ok"], false);
    assert_eq!(result["body"], json!({ "error": "missing" }));
}

/// A response that streams 64 KiB chunks until the client goes away; `sent` counts the chunks.
fn endless_stream(sent: Arc<AtomicUsize>) -> Body {
    let chunk = bytes_chunk();
    Body::from_stream(futures_lite::stream::repeat_with(move || {
        sent.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    }))
}

fn bytes_chunk() -> axum::body::Bytes {
    axum::body::Bytes::from(vec![b'x'; 64 * 1024])
}

#[test]
fn an_endless_response_is_cut_off_at_the_size_limit() {
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let addr = serve_router(Router::new().route(
        "/",
        get(move || {
            let counter = counter.clone();
            async move { endless_stream(counter) }
        }),
    ));
    let started = Instant::now();
    let message = call_err(
        config(json!({
            "method": "get",
            "url_template": format!("http://{addr}/"),
            "response_body_type": "bytes",
            "response_max_bytes": 1_000_000,
        })),
        "{}",
    );
    assert!(
        message.contains("larger than the limit of 1000000 bytes"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off promptly"
    );
    // The reader stopped right after the limit; the server may have buffered a little more.
    std::thread::sleep(Duration::from_millis(200));
    let chunks = sent.load(Ordering::SeqCst);
    assert!(
        chunks < 200,
        "the server streamed {chunks} chunks of 64 KiB"
    );
}

#[test]
fn a_declared_length_over_the_limit_fails_before_reading_and_the_pool_default_applies() {
    let server = FakeServer::start(|_, _| response(200, &[], vec![b'a'; 2048]));
    let pool = MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_default_http_response_max_bytes(1024),
    )
    .unwrap();
    let job = |max: Option<usize>| {
        let mut endpoint = json!({ "method": "get", "url_template": server.url("/"), "response_body_type": "utf8" });
        if let Some(max) = max {
            endpoint["response_max_bytes"] = json!(max);
        }
        MechanicsJob::new(
            r#"import endpoint from "mechanics:endpoint";
               export default async () => (await endpoint("api")).body.length;"#,
            Value::Null,
            config(endpoint),
        )
        .unwrap()
    };
    let err = pool.run(job(None)).result.unwrap_err();
    assert!(err.to_string().contains("limit of 1024 bytes"), "{err}");
    assert_eq!(pool.run(job(Some(2048))).result.unwrap(), json!(2048));
    let err = pool.run(job(Some(2047))).result.unwrap_err();
    assert!(err.to_string().contains("limit of 2047 bytes"), "{err}");
}

fn slow_server(delay: Duration) -> String {
    let addr = serve_router(Router::new().route(
        "/",
        get(move || async move {
            tokio::time::sleep(delay).await;
            "{}"
        }),
    ));
    format!("http://{addr}/")
}

#[test]
fn a_slow_server_times_out_by_the_endpoint_timeout_then_the_pool_default() {
    let url = slow_server(Duration::from_secs(30));
    let message = call_err(
        config(json!({ "method": "get", "url_template": url, "timeout_ms": 150 })),
        "{}",
    );
    assert!(message.contains("timed out after 150 ms"), "{message}");

    let pool = MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_default_http_timeout(Duration::from_millis(120)),
    )
    .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
           export default async () => await endpoint("api");"#,
        Value::Null,
        config(json!({ "method": "get", "url_template": url })),
    )
    .unwrap();
    let err = pool.run(job).result.unwrap_err();
    assert!(err.to_string().contains("timed out after 120 ms"), "{err}");
}

#[test]
fn a_call_never_outlasts_the_job_time_limit() {
    let url = slow_server(Duration::from_secs(30));
    let limits = MechanicsExecutionLimits::default()
        .with_max_execution_time(Duration::from_millis(300))
        .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
           export default async () => await endpoint("api");"#,
        Value::Null,
        config(json!({ "method": "get", "url_template": url })),
    )
    .unwrap()
    .with_limits(limits);
    let started = Instant::now();
    let err = shared_pool().run(job).result.unwrap_err();
    assert_eq!(err.kind().as_str(), "limit_exceeded", "{err}");
    assert!(
        err.to_string().contains("execution time limit of 300 ms"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn retry_policy(extra: Value) -> Value {
    let mut policy = json!({
        "max_attempts": 3, "base_backoff_ms": 1, "max_backoff_ms": 5, "max_retry_delay_ms": 2000,
        "rate_limit_backoff_ms": 1,
    });
    for (k, v) in extra.as_object().unwrap() {
        policy[k] = v.clone();
    }
    policy
}

#[test]
fn retryable_statuses_are_retried_up_to_max_attempts() {
    let server = FakeServer::start(|_, index| {
        if index < 2 {
            response(503, &[], "")
        } else {
            response(200, &[], r#"{"try":3}"#)
        }
    });
    let endpoint = json!({ "method": "get", "url_template": server.url("/"), "retry_policy": retry_policy(json!({})) });
    assert_eq!(
        call(config(endpoint), "{}").unwrap()["body"],
        json!({ "try": 3 })
    );
    assert_eq!(server.requests().len(), 3);

    let failing = FakeServer::json(502, "{}");
    let endpoint = json!({ "method": "get", "url_template": failing.url("/"), "retry_policy": retry_policy(json!({})) });
    let message = call_err(config(endpoint), "{}");
    assert!(message.contains("502"), "{message}");
    assert_eq!(failing.requests().len(), 3);

    let not_listed = FakeServer::json(404, "{}");
    let endpoint = json!({ "method": "get", "url_template": not_listed.url("/"), "retry_policy": retry_policy(json!({})) });
    call_err(config(endpoint), "{}");
    assert_eq!(
        not_listed.requests().len(),
        1,
        "404 is not in retry_on_status"
    );
}

#[test]
fn retry_after_on_429_is_honoured_and_capped() {
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log = arrivals.clone();
    let server = FakeServer::start(move |_, index| {
        log.lock().unwrap().push(Instant::now());
        if index == 0 {
            response(429, &[("retry-after", "1")], "")
        } else {
            response(200, &[], "{}")
        }
    });
    let endpoint = json!({ "method": "get", "url_template": server.url("/"), "retry_policy": retry_policy(json!({})) });
    call(config(endpoint), "{}").unwrap();
    let times = arrivals.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?} for Retry-After: 1"
    );

    // A Retry-After far beyond max_retry_delay_ms is capped by it.
    let capped = FakeServer::start(|_, index| {
        if index == 0 {
            response(429, &[("retry-after", "3600")], "")
        } else {
            response(200, &[], "{}")
        }
    });
    let endpoint = json!({
        "method": "get", "url_template": capped.url("/"),
        "retry_policy": retry_policy(json!({ "max_retry_delay_ms": 50 })),
    });
    let started = Instant::now();
    call(config(endpoint), "{}").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the wait was capped"
    );
    assert_eq!(capped.requests().len(), 2);
}

#[test]
fn timeouts_and_connection_failures_are_retried_when_the_policy_says_so() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let addr = serve_router(Router::new().route(
        "/",
        get(move || {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                "{}"
            }
        }),
    ));
    let endpoint = |retry_on_timeout: bool| {
        json!({
            "method": "get", "url_template": format!("http://{addr}/"), "timeout_ms": 200,
            "retry_policy": retry_policy(json!({ "retry_on_timeout": retry_on_timeout })),
        })
    };
    call(config(endpoint(true)), "{}").unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    calls.store(0, Ordering::SeqCst);
    let message = call_err(config(endpoint(false)), "{}");
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Nothing listens on a port just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = |retry_on_io_errors: bool| {
        json!({
            "method": "get", "url_template": format!("http://{closed}/"),
            "retry_policy": retry_policy(json!({ "retry_on_io_errors": retry_on_io_errors })),
        })
    };
    let message = call_err(config(endpoint(true)), "{}");
    assert!(
        message.contains("connection failed") && message.contains("after 3 attempts"),
        "{message}"
    );
    let message = call_err(config(endpoint(false)), "{}");
    assert!(
        message.contains("connection failed") && !message.contains("attempts"),
        "{message}"
    );
}

#[test]
fn redirects_are_not_followed_unless_enabled_and_credentials_stay_on_their_origin() {
    let elsewhere = FakeServer::json(200, r#"{"at":"elsewhere"}"#);
    let target = elsewhere.url("/landing");
    let origin = FakeServer::start(move |req, _| match req.path.as_str() {
        "/same" => response(302, &[("location", "/final")], ""),
        "/final" => response(200, &[], r#"{"at":"final"}"#),
        "/see-other" => response(303, &[("location", "/final")], ""),
        _ => response(307, &[("location", target.as_str())], ""),
    });
    let endpoint = |path: &str, method: &str, follow: bool| {
        config(json!({
            "method": method, "url_template": origin.url(path), "follow_redirects": follow,
            "headers": { "authorization": "Bearer secret-token", "x-api-key": "secret-key" },
            "allow_non_2xx_status": true,
        }))
    };
    let result = call(endpoint("/same", "get", false), "{}").unwrap();
    assert_eq!(result["status"], 302, "not followed by default");
    assert_eq!(origin.requests().len(), 1);

    let result = call(endpoint("/same", "get", true), "{}").unwrap();
    assert_eq!(result["body"], json!({ "at": "final" }));
    let last = origin.requests().pop().unwrap();
    assert_eq!(last.path, "/final");
    assert_eq!(
        last.header("x-api-key").as_deref(),
        Some("secret-key"),
        "same origin keeps them"
    );

    let result = call(endpoint("/see-other", "post", true), "{ body: { a: 1 } }").unwrap();
    assert_eq!(result["body"], json!({ "at": "final" }));
    let last = origin.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.body.len()),
        ("GET", 0),
        "303 continues with a GET"
    );

    let result = call(endpoint("/cross", "put", true), "{ body: { a: 1 } }").unwrap();
    assert_eq!(result["body"], json!({ "at": "elsewhere" }));
    let request = elsewhere.only_request();
    assert_eq!(request.method, "PUT", "307 keeps the method");
    assert_eq!(request.body, br#"{"a":1}"#);
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("x-api-key"), None);
    assert!(request.header("user-agent").is_some());
}

#[test]
fn configured_secrets_never_reach_javascript_or_error_messages() {
    let secrets = ["hdr-secret-1f3a", "query-secret-9b2c"];
    let failing = FakeServer::json(500, r#"{"oops":true}"#);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let slow = slow_server(Duration::from_secs(30));
    for url in [failing.url("/"), format!("http://{closed}/"), slow] {
        let endpoint = config(json!({
            "method": "get", "url_template": url, "timeout_ms": 200,
            "headers": { "x-api-key": secrets[0] },
            "query_specs": [{ "type": "const", "key": "key", "value": secrets[1] }],
        }));
        // The job looks everywhere it can: the error, its properties, the module's exports.
        let seen = run(
            endpoint.clone(),
            r#"import endpoint from "mechanics:endpoint";
            export default async function main() {
                let text = "";
                try { await endpoint("api", {}); } catch (e) {
                    text += String(e) + JSON.stringify(e) + (e.stack || "");
                    for (const k of Object.getOwnPropertyNames(e)) text += k + String(e[k]);
                }
                text += JSON.stringify(globalThis) + String(endpoint) + Object.keys(endpoint);
                return text;
            }"#,
            Value::Null,
        )
        .unwrap();
        let seen = seen.as_str().unwrap();
        assert!(seen.contains("endpoint `api`"), "{seen}");
        for secret in secrets {
            assert!(!seen.contains(secret), "{secret} leaked: {seen}");
        }
        for secret in secrets {
            assert!(
                !format!("{endpoint:?}").contains(secret),
                "Debug redacts {secret}"
            );
        }
    }
    assert_eq!(
        failing.only_request().header("x-api-key").as_deref(),
        Some(secrets[0])
    );
}

#[test]
fn a_job_reaches_no_url_but_its_configured_endpoints() {
    let canary = FakeServer::json(200, "{}");
    let allowed = FakeServer::json(200, "{}");
    let canary_host = canary.addr.to_string();
    let endpoint = config(json!({
        "method": "get", "url_template": allowed.url("/a/{p}"),
        "url_param_specs": { "p": {} },
        "query_specs": [{ "type": "slotted", "key": "q", "slot": "q", "mode": "optional" }],
    }));
    let source = format!(
        r#"import endpoint from "mechanics:endpoint";
        export default async function main() {{
            const out = [];
            out.push(typeof fetch, typeof XMLHttpRequest, typeof WebSocket, typeof require);
            const hostile = ["//{canary_host}/", "@{canary_host}", "http://{canary_host}/",
                             "..%2f..%2f{canary_host}", "\\\\{canary_host}"];
            for (const p of hostile) {{
                try {{ await endpoint("api", {{ urlParams: {{ p }}, queries: {{ q: p }} }}); out.push("sent"); }}
                catch (e) {{ out.push("refused"); }}
            }}
            for (const name of ["http://{canary_host}/", "{canary_host}", "../api"]) {{
                try {{ await endpoint(name); out.push("sent"); }} catch (e) {{ out.push(String(e).slice(0, 40)); }}
            }}
            return out;
        }}"#
    );
    let out = run(endpoint, &source, Value::Null).unwrap();
    assert_eq!(
        out.as_array().unwrap()[..4],
        [
            json!("undefined"),
            json!("undefined"),
            json!("undefined"),
            json!("undefined")
        ]
    );
    assert_eq!(canary.requests().len(), 0, "{out}");
    assert_eq!(allowed.requests().len(), 5, "{out}");
    for request in allowed.requests() {
        assert!(
            request.path.starts_with("/a/") && !request.path[3..].contains('/'),
            "{request:?}"
        );
    }
    for import in ["http://127.0.0.1/x.js", "node:http", "./x.js"] {
        let err = run(
            MechanicsConfig::default(),
            &format!("import x from {import:?}; export default () => 1;"),
            Value::Null,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("can import only the built-in modules"),
            "{err}"
        );
    }
}

#[test]
fn unknown_endpoints_and_options_are_refused_with_the_configured_names() {
    let server = FakeServer::json(200, "{}");
    let config = MechanicsConfig::new([
        (
            "b".to_owned(),
            HttpEndpoint::new(HttpMethod::Get, server.url("/"), Default::default()),
        ),
        (
            "a".to_owned(),
            HttpEndpoint::new(HttpMethod::Get, server.url("/"), Default::default()),
        ),
    ])
    .unwrap();
    let run_call = |expr: &str| {
        let source = format!(
            r#"import endpoint from "mechanics:endpoint";
            export default () => {expr}.then(() => "ok", e => String(e));"#
        );
        run(config.clone(), &source, Value::Null).unwrap()
    };
    assert_eq!(run_call(r#"endpoint("a")"#), json!("ok"));
    assert_eq!(
        run_call(r#"endpoint("c")"#),
        json!(r#"TypeError: endpoint: no endpoint named "c" (configured endpoints: a, b)"#)
    );
    assert_eq!(
        run_call("endpoint(1)"),
        json!("TypeError: endpoint: the endpoint name must be a string, got number")
    );
    assert_eq!(
        run_call(r#"endpoint("a", { query: {} })"#),
        json!(
            "TypeError: endpoint `a`: unknown option `query` (options are urlParams, queries, headers and body)"
        )
    );
    assert_eq!(
        run_call(r#"endpoint("a", "x")"#),
        json!("TypeError: endpoint `a`: `options` must be an object, got string")
    );
    let empty = run(
        MechanicsConfig::default(),
        r#"import { endpoint } from "mechanics:endpoint";
           export default () => endpoint("a").then(() => "ok", e => String(e));"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(
        empty,
        json!(r#"TypeError: endpoint: no endpoint named "a" (the job's config has no endpoints)"#)
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn concurrent_calls_of_one_job_overlap() {
    // Each request waits (up to 5 s) until all three have arrived: calls made one after the
    // other would never get there, and each would answer how many it saw.
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = arrived.clone();
    let addr = serve_router(Router::new().route(
        "/",
        get(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while count.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                count.load(Ordering::SeqCst).to_string()
            }
        }),
    ));
    let result = run(
        config(json!({ "method": "get", "url_template": format!("http://{addr}/") })),
        r#"import endpoint from "mechanics:endpoint";
        export default async () => {
            const all = await Promise.all([endpoint("api"), endpoint("api"), endpoint("api")]);
            return all.map(r => r.body);
        }"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(
        result,
        json!([3, 3, 3]),
        "all three were in flight together"
    );
}

#[test]
fn a_job_may_not_have_more_than_64_calls_in_flight() {
    let url = slow_server(Duration::from_millis(200));
    // Small responses, so that the memory budget of calls in flight is not what stops them.
    let result = run(
        config(json!({ "method": "get", "url_template": url, "response_max_bytes": 1024 })),
        r#"import endpoint from "mechanics:endpoint";
        export default async () => {
            const calls = [];
            for (let i = 0; i < 65; i++) calls.push(endpoint("api").then(() => "ok", e => String(e)));
            const results = await Promise.all(calls);
            return [results.filter(r => r === "ok").length, results[64]];
        }"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(result[0], 64);
    assert!(
        result[1]
            .as_str()
            .unwrap()
            .contains("64 calls are already in flight"),
        "{result}"
    );
}

#[test]
fn top_level_await_on_an_endpoint_works() {
    let server = FakeServer::json(200, r#"{"v":7}"#);
    let result = run(
        config(json!({ "method": "get", "url_template": server.url("/") })),
        r#"import endpoint from "mechanics:endpoint";
        const boot = await endpoint("api");
        export default () => boot.body.v * 6;"#,
        Value::Null,
    )
    .unwrap();
    assert_eq!(result, json!(42));
}

/// A transport that answers from memory, to show the pool uses the one it is given.
#[derive(Debug, Default)]
struct CannedTransport {
    seen: Mutex<Vec<String>>,
}

impl EndpointHttpClient for CannedTransport {
    fn execute(&self, request: EndpointHttpRequest) -> EndpointHttpFuture<'_> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("{} {}", request.method, request.url));
        Box::pin(async move {
            Ok(EndpointHttpResponse {
                status: 200,
                headers: Default::default(),
                body: br#"{"canned":true}"#.to_vec(),
            })
        })
    }
}

#[test]
fn the_pool_sends_through_the_transport_it_was_given() {
    let transport = Arc::new(CannedTransport::default());
    let pool = MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_endpoint_http_client(transport.clone()),
    )
    .unwrap();
    let config = MechanicsConfig::default()
        .with_endpoint(
            "api",
            HttpEndpoint::new(
                HttpMethod::Delete,
                "https://example.invalid/items/{id}",
                Default::default(),
            )
            .with_url_param_spec("id", UrlParamSpec::default())
            .with_query_spec(QuerySpec::slotted(
                "force",
                "force",
                SlottedQueryMode::Optional,
            )),
        )
        .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
           export default async () => (await endpoint("api", { urlParams: { id: "7" }, queries: { force: "1" } })).body;"#,
        Value::Null,
        config,
    )
    .unwrap();
    assert_eq!(pool.run(job).result.unwrap(), json!({ "canned": true }));
    assert_eq!(
        *transport.seen.lock().unwrap(),
        ["DELETE https://example.invalid/items/7?force=1"]
    );
}

#[test]
fn invalid_configurations_fail_fast_naming_the_endpoint_and_field() {
    let base = json!({ "method": "get", "url_template": "http://127.0.0.1:1/x/{id}", "url_param_specs": { "id": {} } });
    let with = |key: &str, value: Value| {
        let mut e = base.clone();
        e[key] = value;
        json!({ "endpoints": { "primary": e } })
    };
    let cases = [
        (
            with("url_template", json!("http://127.0.0.1:1/x/{id}?a=1")),
            "must not contain a query",
        ),
        (
            with("url_template", json!("http://127.0.0.1:1/{id}/{id}")),
            "twice",
        ),
        (
            with("url_template", json!("http://{id}/x")),
            "not in the path",
        ),
        (with("url_param_specs", json!({})), "no entry for it"),
        (
            with("url_param_specs", json!({ "id": {}, "extra": {} })),
            "`url_param_specs` has `extra`",
        ),
        (
            with(
                "url_param_specs",
                json!({ "id": { "min_bytes": 3, "max_bytes": 2 } }),
            ),
            "`min_bytes` (3) must not be larger",
        ),
        (
            with(
                "url_param_specs",
                json!({ "id": { "default": "toolong", "max_bytes": 2 } }),
            ),
            "the default is 7 bytes",
        ),
        (
            with("url_param_specs", json!({ "id": { "nope": 1 } })),
            "unknown field `nope`",
        ),
        (
            with(
                "query_specs",
                json!([{ "type": "slotted", "key": "k", "slot": "bad-name" }]),
            ),
            "`query_specs[0]`: slot name `bad-name`",
        ),
        (
            with(
                "query_specs",
                json!([{ "type": "slotted", "key": "k", "slot": "s", "mode": "optional_allow_empty", "min_bytes": 1 }]),
            ),
            "allows an empty value",
        ),
        (
            with(
                "query_specs",
                json!([{ "type": "const", "key": "", "value": "v" }]),
            ),
            "`key` must not be empty",
        ),
        (
            with("query_specs", json!([{ "type": "other", "key": "k" }])),
            "unknown variant `other`",
        ),
        (
            with(
                "query_specs",
                json!([{ "type": "slotted", "key": "k", "slot": "s", "mode": "sometimes" }]),
            ),
            "unknown query mode `sometimes`",
        ),
        (
            with("headers", json!({ "X-Key": "a", "x-key": "b" })),
            "names the header `x-key` twice",
        ),
        (
            with("headers", json!({ "bad header": "a" })),
            "not a valid header name",
        ),
        (
            with("headers", json!({ "x-key": "line\nbreak" })),
            "the value of `x-key` is not a valid header value",
        ),
        (
            with("overridable_request_headers", json!(["a", "A"])),
            "`overridable_request_headers` names the header `a` twice",
        ),
        (
            with("exposed_response_headers", json!(["ok", "no pe"])),
            "`exposed_response_headers` holds `no pe`",
        ),
        (
            with("request_body_type", json!("json")),
            "GET requests carry no body",
        ),
        (
            with("response_body_type", json!("xml")),
            "unknown body type `xml`",
        ),
        (
            with("response_max_bytes", json!(0)),
            "`response_max_bytes` must be at least 1",
        ),
        (
            with("timeout_ms", json!(0)),
            "`timeout_ms` must be at least 1",
        ),
        (
            with("retry_policy", json!({ "max_attempts": 0 })),
            "`retry_policy.max_attempts` must be between 1 and 20",
        ),
        (
            with("retry_policy", json!({ "max_retry_delay_ms": 0 })),
            "`retry_policy.max_retry_delay_ms` must be at least 1",
        ),
        (
            with("retry_policy", json!({ "retry_on_status": [200, 99] })),
            "holds 99",
        ),
        (
            with(
                "retry_policy",
                json!({ "base_backoff_ms": 10, "max_backoff_ms": 1 }),
            ),
            "must not be larger than `max_backoff_ms`",
        ),
        (
            with("retry_policy", json!({ "tries": 2 })),
            "unknown field `tries`",
        ),
        (
            with("method", json!("TRACE")),
            "unknown HTTP method `TRACE`",
        ),
        (with("timeout", json!(5)), "unknown field `timeout`"),
        (
            json!({ "endpoints": { "primary": { "url_template": "http://h/" } } }),
            "missing field `method`",
        ),
        (json!({ "endpoint": {} }), "unknown field `endpoint`"),
        (
            json!({ "endpoints": { "": base.clone() } }),
            "must be non-empty",
        ),
    ];
    for (doc, needle) in cases {
        let err = serde_json::from_value::<MechanicsConfig>(doc.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{doc}: {err}");
        if doc["endpoints"].get("primary").is_some() {
            assert!(err.contains("endpoint `primary`"), "{doc}: {err}");
        }
        // Inside a job, the same config fails the same way.
        let job = json!({ "module_source": "export default () => 1", "config": doc });
        let err = serde_json::from_value::<MechanicsJob>(job)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn rust_builders_validate_like_serde_and_compose() {
    let ok = HttpEndpoint::new(
        HttpMethod::Post,
        "https://api.example.com/v1/{id}",
        Default::default(),
    )
    .with_url_param_spec(
        "id",
        UrlParamSpec {
            default: Some("me".into()),
            min_bytes: Some(1),
            max_bytes: Some(8),
        },
    )
    .with_request_body_type(EndpointBodyType::Utf8)
    .with_response_body_type(EndpointBodyType::Bytes)
    .with_timeout_ms(1_000)
    .with_retry_policy(EndpointRetryPolicy {
        max_attempts: 2,
        ..Default::default()
    });
    let bad = HttpEndpoint::new(
        HttpMethod::Get,
        "https://api.example.com/{id}",
        Default::default(),
    );
    let err = MechanicsConfig::new([("x".to_owned(), bad.clone())]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config: endpoint `x`: `url_template` uses `{id}` but `url_param_specs` has no entry for it"
    );
    let config = MechanicsConfig::new([("a".to_owned(), ok.clone())]).unwrap();
    let err = config
        .clone()
        .with_endpoint("b", ok.clone().with_timeout_ms(0))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("endpoint `b`: `timeout_ms` must be at least 1"),
        "{err}"
    );
    let err = config
        .clone()
        .with_endpoint_overrides([("c".to_owned(), ok.clone()), ("d".to_owned(), bad)])
        .unwrap_err();
    assert!(err.to_string().contains("endpoint `d`"), "{err}");
    let composed = config
        .clone()
        .with_endpoint_overrides([
            ("c".to_owned(), ok.clone()),
            ("a".to_owned(), ok.clone().with_timeout_ms(5)),
        ])
        .unwrap();
    assert_eq!(composed.endpoint_names().collect::<Vec<_>>(), ["a", "c"]);
    let composed = composed.without_endpoint("a").without_endpoint("missing");
    assert_eq!(composed.endpoint_names().collect::<Vec<_>>(), ["c"]);

    // The serialized form reads back to the same value, and the JSON path accepts it.
    let text = serde_json::to_value(&config).unwrap();
    let back: MechanicsConfig = serde_json::from_value(text.clone()).unwrap();
    assert_eq!(back, config);
    assert_eq!(text["endpoints"]["a"]["method"], "post");
    assert_eq!(text["endpoints"]["a"]["request_body_type"], "utf8");
}

#[test]
fn response_bodies_count_against_the_job_memory_limit() {
    let server = FakeServer::start(|_, _| response(200, &[], vec![b'a'; 1024 * 1024]));
    let limits = MechanicsExecutionLimits::default()
        .with_max_memory_mb(48)
        .unwrap()
        .with_max_execution_time(Duration::from_secs(60))
        .unwrap();
    // 300 responses of 1 MiB were read on the transport thread and freed on the worker: they must
    // not leave the job 300 MiB of credit for what it allocates next.
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
        export default async () => {
            for (let i = 0; i < 300; i++) await endpoint("api");
            const keep = [];
            for (let i = 0; i < 128; i++) keep.push(new Uint8Array(1024 * 1024));
            return keep.length;
        }"#,
        Value::Null,
        config(json!({ "method": "get", "url_template": server.url("/"), "response_body_type": "utf8" })),
    )
    .unwrap()
    .with_limits(limits);
    let err = shared_pool().run(job).result.unwrap_err();
    assert!(
        err.to_string().contains("memory limit of 48 MiB exceeded"),
        "{err}"
    );
}

#[test]
fn request_bodies_handed_to_the_transport_are_not_charged_twice() {
    let server = FakeServer::json(200, "{}");
    let limits = MechanicsExecutionLimits::default()
        .with_max_memory_mb(64)
        .unwrap()
        .with_max_execution_time(Duration::from_secs(60))
        .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
        export default async () => {
            const quarter = "x".repeat(512 * 1024);
            const body = quarter + quarter + quarter + quarter;
            for (let i = 0; i < 60; i++) await endpoint("api", { body });
            return "sent";
        }"#,
        Value::Null,
        config(json!({ "method": "post", "url_template": server.url("/"), "request_body_type": "utf8" })),
    )
    .unwrap()
    .with_limits(limits);
    assert_eq!(shared_pool().run(job).result.unwrap(), json!("sent"));
    assert_eq!(server.requests().len(), 60);
}

#[test]
fn calls_in_flight_may_not_buffer_more_than_the_job_memory_limit() {
    let url = slow_server(Duration::from_millis(300));
    let limits = MechanicsExecutionLimits::default()
        .with_max_memory_mb(16)
        .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
        export default async () => {
            const calls = [0, 1, 2].map(() => endpoint("api").then(() => "ok", e => String(e)));
            return await Promise.all(calls);
        }"#,
        Value::Null,
        config(
            json!({ "method": "get", "url_template": url, "response_max_bytes": 8 * 1024 * 1024 }),
        ),
    )
    .unwrap()
    .with_limits(limits);
    let result = shared_pool().run(job).result.unwrap();
    assert_eq!(result[0], "ok");
    assert_eq!(result[1], "ok");
    assert!(
        result[2].as_str().unwrap().contains("memory limit"),
        "{result}"
    );
}

#[test]
fn a_bytes_body_over_the_result_limit_is_refused() {
    let server = FakeServer::json(200, "{}");
    let limits = MechanicsExecutionLimits::default()
        .with_max_result_bytes(16)
        .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
        export default () => endpoint("api", { body: new Uint8Array(100) })
            .then(() => "sent", e => String(e).includes("larger than the limit of 16 bytes"));"#,
        Value::Null,
        config(json!({ "method": "post", "url_template": server.url("/"), "request_body_type": "bytes" })),
    )
    .unwrap()
    .with_limits(limits);
    assert_eq!(shared_pool().run(job).result.unwrap(), json!(true));
    assert!(server.requests().is_empty());
}

#[test]
fn transport_headers_cannot_be_configured_or_overridden() {
    for (field, value) in [
        ("headers", json!({ "Host": "internal.example" })),
        ("headers", json!({ "content-length": "2" })),
        ("overridable_request_headers", json!(["host"])),
        ("overridable_request_headers", json!(["Transfer-Encoding"])),
        ("overridable_request_headers", json!(["connection"])),
    ] {
        let doc = json!({ "endpoints": { "api": {
            "method": "post", "url_template": "http://127.0.0.1:1/", field: value,
        } } });
        let err = serde_json::from_value::<MechanicsConfig>(doc)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("which the HTTP transport sets itself"),
            "{field}: {err}"
        );
    }
}

#[test]
fn lone_surrogates_in_slot_values_are_refused() {
    let server = FakeServer::json(200, "{}");
    let message = call_err(
        config(
            json!({ "method": "get", "url_template": server.url("/{id}"), "url_param_specs": { "id": {} } }),
        ),
        r#"{ urlParams: { id: "\uD800" } }"#,
    );
    assert!(message.contains("lone surrogate"), "{message}");
    assert!(server.requests().is_empty());
}

/// A transport that panics, as a buggy custom transport might.
#[derive(Debug)]
struct PanickingTransport;

impl EndpointHttpClient for PanickingTransport {
    fn execute(&self, _request: EndpointHttpRequest) -> EndpointHttpFuture<'_> {
        Box::pin(async { panic!("transport bug") })
    }
}

#[test]
fn a_panicking_transport_fails_the_call_at_once() {
    let pool = MechanicsPool::new(
        MechanicsPoolConfig::default()
            .with_worker_count(1)
            .with_endpoint_http_client(Arc::new(PanickingTransport)),
    )
    .unwrap();
    let job = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
           export default () => endpoint("api").then(() => "ok", e => String(e));"#,
        Value::Null,
        config(json!({ "method": "get", "url_template": "http://127.0.0.1:1/" })),
    )
    .unwrap();
    let result = pool.run(job).result.unwrap();
    assert_eq!(
        result,
        json!("Error: endpoint `api`: the HTTP transport panicked")
    );
}
