#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: formatting, lints, then every test.
# Later features that need services (PostgreSQL) install and start them here.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot full run gains nothing from incremental caches, which would roughly double `target/`.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Unit and integration tests (benches run with `cargo bench`; the crates have no doc tests).
cargo test --workspace --locked --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the whole run.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
