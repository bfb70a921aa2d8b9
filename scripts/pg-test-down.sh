#!/usr/bin/env bash
# Stop the test PostgreSQL cluster of scripts/pg-test-up.sh; --purge also deletes its directory.
set -euo pipefail
DIR="${VMMGR_PG_DIR:-/tmp/vmmgr-pg-test}"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ -s "$DIR/data/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  echo "[pg-test-down] stopped" >&2
else
  echo "[pg-test-down] not running" >&2
fi
if [ "${1:-}" = --purge ]; then rm -rf "$DIR"; echo "[pg-test-down] removed $DIR" >&2; fi
