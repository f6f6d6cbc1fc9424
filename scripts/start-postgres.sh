#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the tests (the PostgreSQL store's contract tests and
# the two-replica tests) and print the libpq string naming it, for VISA_TEST_POSTGRES.
# Idempotent: a server this script started earlier is reused. PGDIR and PGPORT override where
# and on which port (default /var/tmp/visa-proxy-pg, 55432). Uses the machine's PostgreSQL
# (initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin; Debian's `postgresql` package).
set -euo pipefail

PGDIR="${PGDIR:-/var/tmp/visa-proxy-pg}"
PGPORT="${PGPORT:-55432}"

bin=""
for d in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")" /usr/lib/postgresql/*/bin; do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then bin="$d"; break; fi
done
if [ -z "$bin" ]; then
    echo "installing PostgreSQL (Debian's postgresql package)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi

# PostgreSQL refuses to run as root: run it as the `postgres` user when we are root.
as_pg=()
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    as_pg=(runuser -u postgres --)
fi

mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
    "${as_pg[@]}" "$bin/initdb" -D "$PGDIR/data" -U postgres -A trust --no-sync >/dev/null
fi
if ! "${as_pg[@]}" "$bin/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
    "${as_pg[@]}" "$bin/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 30 \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
        start >/dev/null
fi
echo "host=127.0.0.1 port=$PGPORT user=postgres"
