#!/usr/bin/env bash
# Stop the vmmgrd that scripts/vmmgrd-up.sh started (SIGTERM, then SIGKILL after 15 s).
set -euo pipefail
PIDFILE="${RUN_PIDFILE:-/run/vmmgr/vmmgrd.pid}"
if ! [ -s "$PIDFILE" ] || ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "[vmmgrd-down] vmmgrd not running" >&2
  rm -f "$PIDFILE"
  exit 0
fi
pid="$(cat "$PIDFILE")"
kill -TERM "$pid"
for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
  echo "[vmmgrd-down] vmmgrd (pid $pid) ignored SIGTERM; killing" >&2
  kill -KILL "$pid" 2>/dev/null || true
fi
rm -f "$PIDFILE"
echo "[vmmgrd-down] stopped vmmgrd (pid $pid)" >&2
