//! `cargo bench -p mechanics-core --bench endpoint`: what one `endpoint()` call from a job costs,
//! against a plain `reqwest` call to the same local server, measured in the same run.
//!
//! Three sequential measurements against one axum server on 127.0.0.1 that answers a small JSON
//! body:
//! - `reqwest`: a `GET` with a reused `reqwest::Client`, the body read and parsed as JSON;
//! - `job, no call`: a job that returns a constant (the engine's own cost per job);
//! - `job + endpoint()`: a job that awaits one `endpoint()` call to the same URL and returns its
//!   body.
//!
//! The endpoint's overhead is `job + endpoint()` minus `job, no call` minus `reqwest`; the ratio
//! `job + endpoint()` / (`reqwest` + `job, no call`) says how far the whole is from the sum of its
//! parts. `MECHANICS_BENCH_SCALE` scales the call counts. Nothing here asserts.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use mechanics_core::job::{MechanicsConfig, MechanicsJob};
use mechanics_core::{MechanicsPool, MechanicsPoolConfig};
use serde_json::{Value, json};

#[global_allocator]
static A: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

const BODY: &str = r#"{"id":42,"name":"Ada","tags":["a","b","c"]}"#;

struct Stats {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

fn measure(count: usize, mut once: impl FnMut()) -> Stats {
    for _ in 0..count / 10 {
        once();
    }
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        once();
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        per_sec: count as f64 / total.as_secs_f64(),
    }
}

fn main() {
    let count = mechanics_test_support::bench_count(2_000, 20);

    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/item", listener.local_addr().unwrap());
    server.spawn(async move {
        let router = Router::new().route("/item", get(|| async { BODY }));
        axum::serve(listener, router).await
    });

    // The baseline: reqwest on its own current-thread runtime, like a plain Rust client would.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // reqwest is built without a default TLS provider (see the workspace manifest).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let plain = measure(count, || {
        client_rt.block_on(async {
            let body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let value: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["id"], 42);
        });
    });

    let pool = MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(1)).unwrap();
    let config: MechanicsConfig = serde_json::from_value(json!({
        "endpoints": { "item": { "method": "get", "url_template": url } }
    }))
    .unwrap();
    let no_call = MechanicsJob::new(
        "export default () => ({ id: 42 });",
        Value::Null,
        config.clone(),
    )
    .unwrap();
    let engine_only = measure(count, || {
        assert_eq!(pool.run(no_call.clone()).result.unwrap()["id"], 42);
    });
    let with_call = MechanicsJob::new(
        r#"import endpoint from "mechanics:endpoint";
           export default async () => (await endpoint("item")).body;"#,
        Value::Null,
        config,
    )
    .unwrap();
    let endpoint = measure(count, || {
        assert_eq!(pool.run(with_call.clone()).result.unwrap()["id"], 42);
    });

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("endpoint benchmark, {count} sequential calls each, 1 worker");
    println!(
        "{:<20} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "calls/s"
    );
    for (name, stats) in [
        ("reqwest", &plain),
        ("job, no call", &engine_only),
        ("job + endpoint()", &endpoint),
    ] {
        println!(
            "{name:<20} {:>10.3} {:>10.3} {:>10.0}",
            ms(stats.p50),
            ms(stats.p99),
            stats.per_sec
        );
    }
    let overhead = ms(endpoint.p50) - ms(engine_only.p50) - ms(plain.p50);
    println!(
        "endpoint() overhead at p50: {overhead:.3} ms over reqwest ({:.2}x reqwest's p50); \
         job + endpoint() / (reqwest + job) at p50: {:.2}",
        (ms(endpoint.p50) - ms(engine_only.p50)) / ms(plain.p50),
        ms(endpoint.p50) / (ms(plain.p50) + ms(engine_only.p50)),
    );
}
