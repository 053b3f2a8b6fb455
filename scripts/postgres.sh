# A throwaway PostgreSQL cluster for the tests and benches that need one. Sourced, not run:
# scripts/test.sh and scripts/with-postgres.sh use it as
#
#     source scripts/postgres.sh
#     trap stop_postgres EXIT
#     start_postgres
#
# `start_postgres` finds initdb (installing Debian's `postgresql` package when it is missing),
# creates a cluster in a temporary directory (as the `postgres` OS user when we are root: initdb
# and the server refuse to run as root), starts it on a free port on 127.0.0.1 with trust
# authentication and no durability, and exports MECHANICS_TEST_POSTGRES_URL,
# MECHANICS_TEST_PG_CTL and MECHANICS_TEST_PG_DATA. `stop_postgres` stops it and removes its
# directory; it does nothing when no cluster was started, and may be called twice.

pg_dir=""
pg_ctl=""
pg_bin=""

# Runs a PostgreSQL program as the `postgres` OS user when we are root (initdb and the server
# refuse to run as root), from `/` so an unreadable working directory does not matter.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Stops the cluster `start_postgres` started (immediately: it is a throwaway) and removes it.
stop_postgres() {
    if [ -n "$pg_dir" ]; then
        if [ -n "$pg_ctl" ] && [ -f "$pg_dir/postmaster.pid" ]; then
            as_pg "$pg_ctl" -D "$pg_dir" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$pg_dir"
        pg_dir=""
    fi
}

# The directory holding initdb, pg_ctl and postgres: from PATH, else the newest Debian install.
find_pg_bin() {
    local initdb
    if initdb=$(command -v initdb); then
        dirname "$(readlink -f "$initdb")"
        return
    fi
    # shellcheck disable=SC2012
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r dir; do
        if [ -x "$dir/initdb" ]; then echo "$dir"; fi
    done | tail -n 1
}

# Starts a throwaway cluster (trust auth, no durability) on a free port on 127.0.0.1 and exports
# MECHANICS_TEST_POSTGRES_URL, MECHANICS_TEST_PG_CTL and MECHANICS_TEST_PG_DATA for the tests.
start_postgres() {
    pg_bin=$(find_pg_bin)
    if [ -z "$pg_bin" ]; then
        echo "initdb not found: installing PostgreSQL (Debian's postgresql package)"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
        pg_bin=$(find_pg_bin)
        if [ -z "$pg_bin" ]; then
            echo "initdb still not found after installing postgresql" >&2
            return 1
        fi
    fi
    pg_ctl="$pg_bin/pg_ctl"
    pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/mechanics-pg.XXXXXX")
    if [ "$(id -u)" = 0 ]; then chown postgres: "$pg_dir"; fi
    if ! as_pg "$pg_bin/initdb" -D "$pg_dir" --auth=trust -U postgres --encoding=UTF8 --no-sync \
        >"$pg_dir.initdb.log" 2>&1; then
        cat "$pg_dir.initdb.log" >&2
        rm -f "$pg_dir.initdb.log"
        echo "initdb failed" >&2
        return 1
    fi
    rm -f "$pg_dir.initdb.log"
    local port started=""
    for port in $(seq 54329 54428); do
        # Something already answers on this port: not ours to take.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
        if as_pg "$pg_ctl" -D "$pg_dir" -l "$pg_dir/log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$pg_dir -c max_connections=300 -c fsync=off -c synchronous_commit=on -c full_page_writes=off" \
            start >/dev/null; then
            started=$port
            break
        fi
        # Lost a race for the port: try the next one; any other failure is fatal.
        if ! grep -q "could not bind\|could not create any TCP/IP sockets" "$pg_dir/log" 2>/dev/null; then
            break
        fi
        : >"$pg_dir/log"
    done
    if [ -z "$started" ]; then
        echo "PostgreSQL did not start; its log ($pg_dir/log):" >&2
        cat "$pg_dir/log" >&2 || true
        return 1
    fi
    export MECHANICS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$started/postgres"
    export MECHANICS_TEST_PG_CTL="$pg_ctl"
    export MECHANICS_TEST_PG_DATA="$pg_dir"
    echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') for the tests at $MECHANICS_TEST_POSTGRES_URL (data $pg_dir)"
}
