#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: formatting, lints, then every test.
# Later features that need services (PostgreSQL) install and start them here.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
