#!/usr/bin/env bash
# The API against its own OpenAPI document, from outside: the document is validated against the
# OpenAPI 3.1 meta-schema (openapi-spec-validator), the README's API examples against the document
# (scripts/readme-api-examples.py), then Schemathesis runs every check, in every
# phase (examples, coverage, fuzzing, stateful), with a fixed seed and at least 50 examples per
# operation, against a live `mechanics serve` holding an admin key. Any failure fails this script.
#
# Run by scripts/test.sh after the Rust tests (it needs target/debug/mechanics); alone:
#
#     cargo build -p mechanics && scripts/api-fuzz.sh
#
# The Python tools live in a virtual environment under target/ (pinned versions, installed once).
# The server and the fuzzer run in a network namespace of their own with only a loopback
# interface (`unshare --net`, which needs root, as CI has): a fuzzed worker or source may name any
# URL, and nothing it names can be reached.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/api-fuzz-venv
requirements="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "schemathesis==4.32.5"; then
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
fi

"$venv/bin/openapi-spec-validator" docs/openapi.json
"$venv/bin/python" scripts/readme-api-examples.py README.md docs/openapi.json

if [ "$(id -u)" != 0 ]; then
    echo "api-fuzz: needs root for a network namespace of its own (unshare --net); run as root, as CI does" >&2
    exit 1
fi

binary=target/debug/mechanics
if [ ! -x "$binary" ]; then
    echo "api-fuzz: $binary is missing: run cargo build -p mechanics first" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export API_FUZZ_WORK="$work" API_FUZZ_BINARY="$binary" API_FUZZ_VENV="$venv"
# Everything below runs inside the namespace: bring loopback up, start the server, wait for it,
# fuzz, stop it. One worker thread: with two, Hypothesis in both threads may parse source with
# `ast.parse` at once, which CPython 3.11 can fail with "SystemError: AST constructor recursion
# depth mismatch" (its AST recursion counter is shared), a crash of the tool, not a finding.
unshare --net bash -euo pipefail -c '
    ip link set lo up
    key=api-fuzz-admin-key
    addr=127.0.0.1:21299
    HOME="$API_FUZZ_WORK" "$API_FUZZ_BINARY" serve --addr "$addr" --api-key "$key" \
        --db "$API_FUZZ_WORK/mechanics.db" --local-nodes 1 >"$API_FUZZ_WORK/server.log" 2>&1 &
    server=$!
    trap "kill $server 2>/dev/null || true; wait $server 2>/dev/null || true" EXIT
    for _ in $(seq 1 100); do
        if "$API_FUZZ_VENV/bin/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1])" \
            "http://$addr/healthz" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    status=0
    "$API_FUZZ_VENV/bin/schemathesis" --config-file scripts/api-fuzz.toml \
        run "http://$addr/api/v1/openapi.json" \
        --url "http://$addr" \
        --header "Authorization: Bearer $key" \
        --checks all \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples 50 \
        --seed 20261204 \
        --workers 1 \
        --generation-database none \
        --no-color \
        --report junit --report-dir "$API_FUZZ_WORK/report" || status=$?
    if [ "$status" != 0 ]; then
        echo "api-fuzz: Schemathesis found failures (exit $status); the server log ends:" >&2
        tail -n 40 "$API_FUZZ_WORK/server.log" >&2
    fi
    exit "$status"
'
