#!/usr/bin/env bash
# with-postgres.sh CMD [ARGS...]: runs CMD with a PostgreSQL server for it, e.g.
#
#     scripts/with-postgres.sh cargo bench -p mechanics --bench serve
#
# Unless MECHANICS_TEST_POSTGRES_URL is already set (then CMD runs against that server), starts a
# throwaway cluster as scripts/test.sh does (scripts/postgres.sh: initdb in a temporary directory,
# a free port on 127.0.0.1, trust authentication), exports MECHANICS_TEST_POSTGRES_URL,
# MECHANICS_TEST_PG_CTL and MECHANICS_TEST_PG_DATA, runs CMD in the current directory, stops and
# removes the cluster, and exits with CMD's status. What this script prints goes to stderr.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 CMD [ARGS...]: runs CMD with a throwaway PostgreSQL server" >&2
    exit 2
fi
if [ -n "${MECHANICS_TEST_POSTGRES_URL:-}" ]; then
    exec "$@"
fi

# start_postgres, stop_postgres.
# shellcheck source=scripts/postgres.sh
source "$(dirname "${BASH_SOURCE[0]}")/postgres.sh"
trap stop_postgres EXIT
# So that Ctrl-C or a kill still stops the cluster.
trap 'exit 130' INT
trap 'exit 143' TERM

start_postgres >&2
status=0
"$@" || status=$?
exit "$status"
