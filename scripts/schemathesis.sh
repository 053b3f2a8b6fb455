#!/usr/bin/env bash
# Schemathesis against a live `mechanics serve`: every check, a fixed seed, at least 50 examples
# per operation, and the stateful phase (links between operations). Any failure fails this
# script (and so scripts/test.sh). Schemathesis is installed with pip into a venv under
# target/, pinned, so a run needs PyPI once and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="4.32.5"
venv="target/schemathesis-venv"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked -p mechanics
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A throwaway admin key: random, never printed.
key="st-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s' "$key" >"$work/key"
target/debug/mechanics serve --addr 127.0.0.1:0 --db "$work/m.db" --api-key-file "$work/key" \
    --local-nodes 1 >"$work/out" 2>"$work/err" &
server_pid=$!
addr=""
for _ in $(seq 1 300); do
    addr=$(sed -n 's/^READY //p' "$work/out" | head -n1)
    [ -n "$addr" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/err" >&2
        echo "mechanics serve did not start" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "mechanics serve did not print READY" >&2
    exit 1
fi

"$venv/bin/st" run "http://$addr/api/v1/openapi.json" \
    --checks all \
    --seed 17 \
    --max-examples 50 \
    --phases examples,coverage,fuzzing,stateful \
    --header "Authorization: Bearer $key" \
    --report junit --report-dir target/schemathesis-report \
    "$@"
