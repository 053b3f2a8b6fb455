//! Measuring a trivial job through `Fleet::run`, shared by the `fleet` and `remote` benches:
//! sequential calls for latency, concurrent callers for throughput.

use std::time::{Duration, Instant};

use mechanics_node::Fleet;
use mechanics_proto::node::JobRequest;
use serde_json::json;

/// The job every row runs.
pub(crate) const SOURCE: &str = "export default (x) => x + 1";

/// Latency percentiles and throughput of sequential calls.
pub(crate) struct Stats {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) per_sec: f64,
}

/// The percentiles of `samples`, and how many per second ran in `total`.
pub(crate) fn summarize(mut samples: Vec<Duration>, total: Duration) -> Stats {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        per_sec: samples.len() as f64 / total.as_secs_f64(),
    }
}

/// `count` calls one after another (after a tenth as many to warm up).
pub(crate) async fn fleet_sequential(fleet: &Fleet, count: usize) -> Stats {
    let request = JobRequest::new("bench", SOURCE, json!(1));
    for _ in 0..count / 10 {
        fleet.run(&request).await.unwrap();
    }
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        fleet.run(&request).await.unwrap();
        samples.push(t.elapsed());
    }
    summarize(samples, started.elapsed())
}

/// Jobs per second with `callers` calling at once, `count` calls in all.
pub(crate) async fn fleet_concurrent(fleet: &Fleet, count: usize, callers: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                let request = JobRequest::new("bench", SOURCE, json!(1));
                for _ in 0..count / callers {
                    fleet.run(&request).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (count / callers * callers) as f64 / started.elapsed().as_secs_f64()
}

/// `d` in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints the table both benches share: one row per engine with p50, p99, sequential and
/// parallel jobs/s, after a line naming the call count and the callers.
pub(crate) fn print_rows(count: usize, callers: usize, rows: [(&str, &Stats, f64); 2]) {
    println!("trivial job, {count} calls each ({callers} concurrent callers for the last column)");
    println!(
        "{:<18} {:>10} {:>10} {:>12} {:>16}",
        "", "p50 ms", "p99 ms", "jobs/s seq", "jobs/s parallel"
    );
    for (name, seq, par) in rows {
        println!(
            "{name:<18} {:>10.3} {:>10.3} {:>12.0} {:>16.0}",
            ms(seq.p50),
            ms(seq.p99),
            seq.per_sec,
            par
        );
    }
}
