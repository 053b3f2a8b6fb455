#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: formatting, lints, then every test, with a
# throwaway PostgreSQL cluster for the tests that need one, then the API fuzzer
# (scripts/api-fuzz.sh: Schemathesis, installed with pip into a virtual environment under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot full run gains nothing from incremental caches, which would roughly double `target/`.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log=""
# start_postgres, stop_postgres (scripts/postgres.sh: the throwaway cluster).
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
cleanup() {
    stop_postgres
    if [ -n "$log" ]; then rm -f "$log"; fi
}
trap cleanup EXIT
# So that Ctrl-C or a kill still runs the cleanup (and stops the cluster).
trap 'exit 130' INT
trap 'exit 143' TERM

# What the tests need from Debian, installed when missing (one apt-get for all): Podman for the
# container workers' tests, which also run on Docker, the machine's engine (the tests point Podman
# at runc: crun refuses a hybrid cgroup layout); Chromium and its WebDriver for the dashboard's
# browser tests (crates/mechanics/tests/it/ui_browser.rs).
packages=()
command -v podman >/dev/null || packages+=(podman runc)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    packages+=(chromium chromium-driver)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing Debian's ${packages[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
start_postgres
log=$(mktemp)
# Unit and integration tests (benches run with `cargo bench`; the crates have no doc tests).
cargo test --workspace --locked --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the Rust tests.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
# The API from outside: its document, the README's examples, and Schemathesis on a live server.
# It runs target/debug/mechanics, which the integration tests above built (a separate
# `cargo build` would resolve features differently and compile much of the tree again).
./scripts/api-fuzz.sh
