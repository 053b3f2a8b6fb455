#!/usr/bin/env bash
# Runs the main job with a worked example: `mechanics serve` on its embedded SQLite default
# (~/.mechanics/mechanics.db, http://127.0.0.1:21212), then registers the example worker of
# examples/hello-worker, runs one task through it and prints the completed task, and keeps serving
# until Ctrl+C. Extra arguments go to `mechanics serve` (see `mechanics serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/mechanics

"$bin" serve "$@" &
server=$!
stop() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
    fi
    wait "$server" 2>/dev/null || true
}
trap stop EXIT
trap 'stop; exit 130' INT TERM

# `worker list` exits 3 while no server answers.
for _ in $(seq 1 300); do
    if "$bin" worker list >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "mechanics serve did not start (see its error above)" >&2
        exit 1
    fi
    sleep 0.1
done

"$bin" worker add -f examples/hello-worker/worker.yml
"$bin" task submit hello --payload '{"name":"Ada"}' --wait
echo
echo "mechanics serve is running at http://127.0.0.1:21212 — try: $bin task list   (Ctrl+C stops it)"
wait "$server"
