#!/usr/bin/env bash
# Start (idempotently) a throwaway PostgreSQL cluster for the tests and print its SQLAlchemy URL
# on stdout (the only thing printed there):
#
#   export VMMGR_TEST_PG_URL="$(scripts/pg-test-up.sh)"
#   -> postgresql+psycopg://postgres@127.0.0.1:55432/vmmgr_test
#
# Cluster: initdb (trust auth, fsync off: test data only) in $VMMGR_PG_DIR (default
# /tmp/vmmgr-pg-test), owned by the `postgres` user when run as root, listening on
# 127.0.0.1:$VMMGR_PG_PORT (default 55432) and a unix socket in the same directory.
# scripts/pg-test-down.sh stops it (--purge also deletes it).
set -euo pipefail

DIR="${VMMGR_PG_DIR:-/tmp/vmmgr-pg-test}"
PORT="${VMMGR_PG_PORT:-55432}"
DB="${VMMGR_PG_DB:-vmmgr_test}"
DATA="$DIR/data"
log() { printf '[pg-test-up] %s\n' "$*" >&2; }

PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
[ -x "$PGBIN/initdb" ] || { log "PostgreSQL server binaries not found (apt install postgresql)"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
  PGUSER_OS=postgres
  id postgres >/dev/null 2>&1 || { log "no postgres system user (apt install postgresql)"; exit 1; }
  as_pg() { runuser -u postgres -- "$@"; }
else
  PGUSER_OS="$(id -un)"
  as_pg() { "$@"; }
fi

mkdir -p "$DIR"
chown "$PGUSER_OS" "$DIR"
chmod 0755 "$DIR"

if [ ! -s "$DATA/PG_VERSION" ]; then
  log "initdb $DATA ($("$PGBIN/postgres" --version))"
  rm -rf "$DATA"
  as_pg "$PGBIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
    >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
  cat >>"$DATA/postgresql.conf" <<CONF
# vmmgr test cluster (scripts/pg-test-up.sh): throwaway data, speed over durability
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
fi

if as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "already running on 127.0.0.1:$PORT"
elif "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  log "another PostgreSQL already answers on 127.0.0.1:$PORT; using it"
else
  log "starting on 127.0.0.1:$PORT"
  as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start >/dev/null \
    || { tail -n 30 "$DIR/server.log" >&2; exit 1; }
fi

psql_() { as_pg "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
if [ "$(psql_ -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  log "creating database $DB"
  psql_ -c "CREATE DATABASE \"$DB\""
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"
