#!/usr/bin/env bash
# Start vmmgrd in the background (idempotent) for `make run`:
#   .venv/bin/vmmgrd --listen 127.0.0.1:50051 --state-dir /var/lib/vmmgr \
#       --register-host local=qemu:///system --import-image tiny=<repo>/images/build/tiny.qcow2
# under scripts/subreaper.py, log /var/log/vmmgr/vmmgrd.log, pid file /run/vmmgr/vmmgrd.pid,
# then waits until `vmmgr --endpoint ... host list` answers and prints the host list.
# Environment: RUN_LISTEN, RUN_STATE_DIR, RUN_LOG_DIR, RUN_PIDFILE, RUN_WAIT (s).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LISTEN="${RUN_LISTEN:-127.0.0.1:50051}"
STATE="${RUN_STATE_DIR:-/var/lib/vmmgr}"
LOGDIR="${RUN_LOG_DIR:-/var/log/vmmgr}"
PIDFILE="${RUN_PIDFILE:-/run/vmmgr/vmmgrd.pid}"
WAIT="${RUN_WAIT:-60}"
IMAGE="$ROOT/images/build/tiny.qcow2"
log() { printf '[vmmgrd-up] %s\n' "$*" >&2; }

alive() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
cli() { timeout 20 "$ROOT/.venv/bin/vmmgr" --endpoint "$LISTEN" "$@"; }

if alive; then
  log "vmmgrd already running (pid $(cat "$PIDFILE")) on $LISTEN; log $LOGDIR/vmmgrd.log"
  cli host list
  exit 0
fi
[ -x "$ROOT/.venv/bin/vmmgrd" ] || { log "no .venv/bin/vmmgrd (run make deps)"; exit 1; }
[ -f "$IMAGE" ] || { log "no $IMAGE (run make image)"; exit 1; }
mkdir -p "$STATE" "$LOGDIR" "$(dirname "$PIDFILE")"
log "starting vmmgrd on $LISTEN (state $STATE, log $LOGDIR/vmmgrd.log)"
python3 "$ROOT/scripts/subreaper.py" --daemon --pidfile "$PIDFILE" --log "$LOGDIR/vmmgrd.log" -- \
  "$ROOT/.venv/bin/vmmgrd" --listen "$LISTEN" --state-dir "$STATE" \
  --register-host local=qemu:///system --import-image "tiny=$IMAGE"
for _ in $(seq 1 20); do [ -s "$PIDFILE" ] && break; sleep 0.1; done

deadline=$(( $(date +%s) + WAIT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if ! alive; then
    log "vmmgrd exited during start-up; last log lines:"
    tail -n 40 "$LOGDIR/vmmgrd.log" >&2 || true
    exit 1
  fi
  if out="$(cli host list 2>&1)"; then
    log "vmmgrd is up (pid $(cat "$PIDFILE"))"
    printf '%s\n' "$out"
    exit 0
  fi
  sleep 0.5
done
log "vmmgrd did not answer on $LISTEN within ${WAIT}s; last log lines:"
tail -n 40 "$LOGDIR/vmmgrd.log" >&2 || true
exit 1
