//! `cargo bench -p mechanics --bench fleet`: what running a job on an executor node costs, against
//! the in-process pool, measured in the same run.
//!
//! A trivial job (`export default (x) => x + 1`) through:
//! - `in-process pool`: `MechanicsPool::run` with 2 workers, called from a plain thread (the
//!   engine alone; what `mechanics run` does);
//! - `fleet (HTTP)`: `Fleet::run` on a fleet of 2 nodes × 1 worker, each a child process of the
//!   `mechanics` binary reached over HTTP on 127.0.0.1 (what the coordinator does).
//!
//! Sequential calls give p50/p99 and jobs/s; 4 concurrent callers give the throughput with both
//! engines busy. The table ends with the ratios and the fleet's added p50 against the goal of
//! 0.3 ms. `MECHANICS_BENCH_SCALE` scales the call counts. Nothing here asserts.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/fleet_load.rs"]
mod fleet_load;

use std::sync::Arc;
use std::time::Instant;

use mechanics_core::job::{MechanicsConfig, MechanicsJob};
use mechanics_core::{MechanicsPool, MechanicsPoolConfig};
use mechanics_node::{Fleet, FleetConfig, ShutdownHandle};
use serde_json::json;

use fleet_load::{SOURCE, Stats, fleet_concurrent, fleet_sequential, ms, print_rows, summarize};

#[global_allocator]
static A: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;

const CONCURRENCY: usize = 4;

fn pool_sequential(pool: &MechanicsPool, count: usize) -> Stats {
    let job = || MechanicsJob::new(SOURCE, json!(1), MechanicsConfig::default()).unwrap();
    for _ in 0..count / 10 {
        pool.run(job()).result.unwrap();
    }
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        pool.run(job()).result.unwrap();
        samples.push(t.elapsed());
    }
    summarize(samples, started.elapsed())
}

fn pool_concurrent(pool: &Arc<MechanicsPool>, count: usize) -> f64 {
    let started = Instant::now();
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..count / CONCURRENCY {
                    let job = MechanicsJob::new(SOURCE, json!(1), MechanicsConfig::default());
                    pool.run(job.unwrap()).result.unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    (count / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let count = mechanics_test_support::bench_count(4_000, 40);

    let pool =
        Arc::new(MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(2)).unwrap());
    let pool_seq = pool_sequential(&pool, count);
    let pool_par = pool_concurrent(&pool, count);
    drop(pool);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (fleet_seq, fleet_par) = runtime.block_on(async {
        let mut config = FleetConfig::new(env!("CARGO_BIN_EXE_mechanics"));
        config.nodes = 2;
        config.workers_per_node = 1;
        let fleet = Fleet::start(config, ShutdownHandle::new()).await.unwrap();
        let seq = fleet_sequential(&fleet, count).await;
        let par = fleet_concurrent(&fleet, count, CONCURRENCY).await;
        fleet.shutdown().await;
        (seq, par)
    });

    print_rows(
        count,
        CONCURRENCY,
        [
            ("in-process pool", &pool_seq, pool_par),
            ("fleet (HTTP)", &fleet_seq, fleet_par),
        ],
    );
    let added = ms(fleet_seq.p50) - ms(pool_seq.p50);
    println!(
        "fleet / pool: p50 x{:.2}, p99 x{:.2}, jobs/s seq x{:.2}, jobs/s parallel x{:.2}",
        ms(fleet_seq.p50) / ms(pool_seq.p50),
        ms(fleet_seq.p99) / ms(pool_seq.p99),
        fleet_seq.per_sec / pool_seq.per_sec,
        fleet_par / pool_par
    );
    println!(
        "fleet adds {added:.3} ms at p50 (goal: at most 0.300 ms): {}",
        if added <= 0.3 { "met" } else { "missed" }
    );
}
