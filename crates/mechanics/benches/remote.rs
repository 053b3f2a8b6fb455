//! `cargo bench -p mechanics --bench remote`: what a remote executor node over TLS costs per job,
//! against a local node, measured in the same run.
//!
//! A trivial job (`export default (x) => x + 1`) through `Fleet::run` on:
//! - `local node`: a fleet of 1 node × 1 worker, a child process reached over plain HTTP on
//!   127.0.0.1 (what `mechanics serve` does with its local nodes);
//! - `remote node (TLS)`: a fleet with no local node and one remote node, `mechanics node serve
//!   --workers 1 --tls-cert --tls-key` on 127.0.0.1, reached over HTTPS with a CA made for the
//!   run (what a pure coordinator does).
//!
//! Sequential calls give p50/p99 and jobs/s; 2 concurrent callers give the throughput with the
//! node's queue never empty. The table ends with the ratios and what TLS adds at p50 against the
//! goal of 0.3 ms. `MECHANICS_BENCH_SCALE` scales the call counts. Nothing here asserts; that jobs
//! reuse their connections is tested in `tests/it/remote_nodes.rs`.

// A custom bench harness reports by printing; the workspace denies these lints for library code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/fleet_load.rs"]
mod fleet_load;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mechanics_node::{Fleet, FleetConfig, RemoteNodeConfig, RemoteState, ShutdownHandle};
use mechanics_test_support::tls::TestPki;

use fleet_load::{fleet_concurrent, fleet_sequential, ms, print_rows};

const CONCURRENCY: usize = 2;
const TOKEN: &str = "bench-token";

/// `mechanics node serve` over TLS on 127.0.0.1 with one engine worker; its address once it
/// printed `READY`. Killed when the returned child is dropped by the caller.
fn tls_node(pki: &TestPki) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mechanics"))
        .args(["node", "serve", "--addr", "127.0.0.1:0", "--workers", "1"])
        .arg("--tls-cert")
        .arg(&pki.cert_file)
        .arg("--tls-key")
        .arg(&pki.key_file)
        .env("MECHANICS_NODE_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.strip_prefix("READY ").unwrap().trim().to_owned();
    (child, addr)
}

fn main() {
    let count = mechanics_test_support::bench_count(4_000, 40);
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), &["127.0.0.1"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (local_seq, local_par) = runtime.block_on(async {
        let mut config = FleetConfig::new(env!("CARGO_BIN_EXE_mechanics"));
        config.nodes = 1;
        config.workers_per_node = 1;
        let fleet = Fleet::start(config, ShutdownHandle::new()).await.unwrap();
        let seq = fleet_sequential(&fleet, count).await;
        let par = fleet_concurrent(&fleet, count, CONCURRENCY).await;
        fleet.shutdown().await;
        (seq, par)
    });

    let (mut node, addr) = tls_node(&pki);
    let (remote_seq, remote_par) = runtime.block_on(async {
        let mut config = FleetConfig::new(env!("CARGO_BIN_EXE_mechanics"));
        config.nodes = 0;
        let fleet = Fleet::start(config, ShutdownHandle::new()).await.unwrap();
        let mut remote = RemoteNodeConfig::new("bench-tls", format!("https://{addr}"), TOKEN);
        remote.ca_file = Some(pki.ca_file.clone());
        fleet.set_remote_nodes(vec![remote]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.remote_nodes()[0].state != RemoteState::Healthy {
            assert!(Instant::now() < deadline, "{:?}", fleet.remote_nodes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seq = fleet_sequential(&fleet, count).await;
        let par = fleet_concurrent(&fleet, count, CONCURRENCY).await;
        fleet.shutdown().await;
        (seq, par)
    });
    let _ = node.kill();
    let _ = node.wait();

    print_rows(
        count,
        CONCURRENCY,
        [
            ("local node (HTTP)", &local_seq, local_par),
            ("remote node (TLS)", &remote_seq, remote_par),
        ],
    );
    println!(
        "remote / local: p50 x{:.2}, p99 x{:.2}, jobs/s seq x{:.2}, jobs/s parallel x{:.2}",
        ms(remote_seq.p50) / ms(local_seq.p50),
        ms(remote_seq.p99) / ms(local_seq.p99),
        remote_seq.per_sec / local_seq.per_sec,
        remote_par / local_par
    );
    let added = ms(remote_seq.p50) - ms(local_seq.p50);
    println!(
        "TLS to a remote node adds {added:.3} ms at p50, {:.3} ms at p99 (goal: at most 0.300 ms at p50): {}",
        ms(remote_seq.p99) - ms(local_seq.p99),
        if added <= 0.3 { "met" } else { "missed" }
    );
}
