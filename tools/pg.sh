#!/usr/bin/env bash
# Start (or stop) a throwaway PostgreSQL server for the tests, from Debian's
# packages. Prints the URL to export as FLEET_TEST_PG_URL.
#   tools/pg.sh start   # installs postgresql with apt if missing, starts it
#   tools/pg.sh stop
set -euo pipefail
PGPORT=${FLEET_PG_PORT:-55432}
PGDATA=${FLEET_PG_DATA:-/tmp/edge-fleet-pg}
URL="postgresql://fleet@127.0.0.1:${PGPORT}/fleet_test"

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
start)
  if [ -z "$(bindir)" ]; then
    echo "installing PostgreSQL from Debian's packages..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
  BIN=$(bindir)
  if as_pg "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    echo "$URL"; exit 0
  fi
  rm -rf "$PGDATA"; mkdir -p "$PGDATA"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA"
  as_pg "$BIN/initdb" -D "$PGDATA" -U postgres -A trust --no-sync >/dev/null
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
    -o "-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  as_pg "$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE ROLE fleet LOGIN SUPERUSER" >/dev/null
  as_pg "$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE fleet_test OWNER fleet" >/dev/null
  echo "$URL"
  ;;
stop)
  BIN=$(bindir)
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
  ;;
*)
  echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
