#!/usr/bin/env bash
# Start the system libvirt stack (virtlogd, virtlockd, libvirtd) without systemd, each under
# scripts/subreaper.py so that qemu processes are reaped at once. Idempotent: daemons already
# running (by their own pid files in /run) are left alone. Waits until
# `virsh -c qemu:///system version` answers.
#
# Also ensures the default storage directory (+ a `default` dir pool) exists and tries to start
# libvirt's `default` network; vmmgr does not rely on that network, so failing to start it is
# only a note.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || PY=/usr/bin/python3
REAPER="$ROOT/scripts/subreaper.py"
LOGDIR=/var/log/libvirt
URI=qemu:///system

log() { printf '[libvirtd-up] %s\n' "$*" >&2; }

running() {  # running NAME: the daemon's own pid file names a live process of that name
  local pf="/run/$1.pid" pid
  [ -r "$pf" ] || return 1
  pid="$(cat "$pf" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

start() {  # start NAME [ARGS]: run NAME in the foreground under a detached subreaper
  local name="$1"; shift
  if running "$name"; then
    log "$name already running (pid $(cat "/run/$name.pid"))"
    return 0
  fi
  command -v "$name" >/dev/null || { log "$name not installed (run scripts/install-deps.sh)"; return 1; }
  log "starting $name"
  # 9>&-: the daemon must not inherit (and hold for ever) the start-up lock
  "$PY" "$REAPER" --daemon --log "$LOGDIR/$name.out" -- "$name" "$@" 9>&-
  local i
  for i in $(seq 1 100); do running "$name" && return 0; sleep 0.1; done
  log "$name did not come up; see $LOGDIR/$name.out"
  tail -n 20 "$LOGDIR/$name.out" >&2 || true
  return 1
}

answers() { timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; }

exec 9>/run/vmmgr-libvirtd-up.lock   # one start-up at a time
flock 9
mkdir -p "$LOGDIR" /run/libvirt /var/lib/libvirt/images /var/lib/libvirt/qemu /var/cache/libvirt
# Without udev nobody applies the kvm group rule; qemu runs as libvirt-qemu (group kvm).
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != kvm:660 ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm && log "fixed /dev/kvm permissions (kvm:0660)"
fi

start virtlogd
start virtlockd
if running libvirtd && answers; then
  log "libvirtd already running and answering"
else
  start libvirtd
  ok=
  for _ in $(seq 1 300); do
    if answers; then ok=1; break; fi
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    log "libvirtd does not answer on $URI; see $LOGDIR/libvirtd.out"
    tail -n 20 "$LOGDIR/libvirtd.out" >&2 || true
    exit 1
  fi
fi

# Default storage pool over /var/lib/libvirt/images (harmless if it exists already).
vsh() { virsh -q -c "$URI" "$@" 2>/dev/null; }
if ! vsh pool-info default >/dev/null; then
  { vsh pool-define-as default dir --target /var/lib/libvirt/images >/dev/null \
      && vsh pool-autostart default >/dev/null; } || log "note: could not define pool 'default'"
fi
case "$(vsh pool-info default || true)" in
  *State:*running*) ;;
  *) vsh pool-start default >/dev/null || log "note: could not start pool 'default'" ;;
esac
# libvirt's NAT network `default`: nice to have, not required by vmmgr.
net="$(vsh net-info default || true)"
if [ -n "$net" ] && ! [[ "$net" =~ Active:[[:space:]]*yes ]]; then
  vsh net-start default >/dev/null || log "note: network 'default' did not start (not needed)"
fi
log "ready: $(virsh -c "$URI" version 2>/dev/null | awk '/Running hypervisor/ {print $3, $4}') via $URI"
