#!/usr/bin/env bash
# Prove the tiny guest boots from its disk (SeaBIOS -> SYSLINUX -> kernel + initramfs, no direct
# kernel boot) and heartbeats on the serial console and on virtio-serial
# org.vmmgr.heartbeat.0, with the instance-id from an attached NoCloud seed (cidata ISO).
#
#   images/smoke-test.sh [--libvirt] [--kvm] [--acpi] [--vfat-seed] [--timeout S] [--beats N] [IMAGE]
#
# default     qemu-system-x86_64 -accel tcg -m 128 -nographic, disk as virtio, seed as IDE cdrom
# --libvirt   the same through libvirtd (qemu:///system): a transient domain of type 'qemu'
#             (TCG) with a qcow2 overlay over IMAGE, serial to a file, a unix channel
# --kvm       with --libvirt: type 'kvm' with the qemu64/-svm CPU that this machine needs
#             (lab notes: a Linux kernel printed nothing under kvm here, so expect a failure)
# --acpi      seed with "vmmgr-acpi: poweroff", then press the ACPI power button and expect
#             the guest to power off within 20 s
# --vfat-seed the seed as a FAT disk labelled CIDATA on virtio instead of an ISO on IDE
# Exit 0 when N (default 3) heartbeats carrying the instance-id arrived on both paths.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=qemu; VIRT=qemu; TIMEOUT=60; BEATS=3; IMAGE=""; ACPI=""; SEEDFMT=iso
while [ $# -gt 0 ]; do
  case "$1" in
    --libvirt) MODE=libvirt ;;
    --kvm) VIRT=kvm ;;
    --acpi) ACPI=1 ;;
    --vfat-seed) SEEDFMT=vfat ;;
    --timeout) TIMEOUT="$2"; shift ;;
    --beats) BEATS="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) IMAGE="$1" ;;
  esac
  shift
done
IMAGE="$(realpath "${IMAGE:-${VMMGR_TINY_IMAGE:-$HERE/build/tiny.qcow2}}")"
[ -f "$IMAGE" ] || { echo "no image $IMAGE (run images/build-tiny.sh)" >&2; exit 1; }

TMP="$(mktemp -d /tmp/vmmgr-smoke.XXXXXX)"
chmod 755 "$TMP"   # qemu under libvirt runs as libvirt-qemu
ID="smoke-$$-$RANDOM"
NAME="vmmgr-smoke-$$"
QPID=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null; wait "$QPID" 2>/dev/null; fi
  if [ -n "${RPID:-}" ]; then kill "$RPID" 2>/dev/null; fi
  if [ "$MODE" = libvirt ]; then virsh -q -c qemu:///system destroy "$NAME" >/dev/null 2>&1; fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
seed_args=()
[ -n "$ACPI" ] && seed_args+=(--acpi-poweroff)
[ "$SEEDFMT" = vfat ] && seed_args+=(--vfat)
"$HERE/make-seed.sh" "${seed_args[@]}" "$ID" "smokehost" "$TMP/seed.iso"
SERIAL="$TMP/serial.log"; VIRTIO="$TMP/virtio.log"; SOCK="$TMP/hb.sock"; MON="$TMP/mon.sock"
if [ "$SEEDFMT" = vfat ]; then
  qemu_seed="file=$TMP/seed.iso,if=virtio,format=raw,readonly=on"
  xml_seed="<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$TMP/seed.iso'/><target dev='vdb' bus='virtio'/><readonly/></disk>"
else
  qemu_seed="file=$TMP/seed.iso,media=cdrom,if=ide,readonly=on"
  xml_seed="<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$TMP/seed.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>"
fi
: >"$SERIAL"; : >"$VIRTIO"

T0=$(date +%s.%N)
if [ "$MODE" = qemu ]; then
  qemu-system-x86_64 -accel tcg -m 128 -nographic -no-reboot \
    -drive "file=$IMAGE,if=virtio,format=qcow2,snapshot=on" \
    -drive "$qemu_seed" -monitor "unix:$MON,server=on,wait=off" \
    -device virtio-serial-pci \
    -chardev "socket,id=hb,path=$SOCK,server=on,wait=off" \
    -device virtserialport,chardev=hb,name=org.vmmgr.heartbeat.0 \
    </dev/null >"$SERIAL" 2>&1 &
  QPID=$!
else
  fmt="$(qemu-img info --output=json "$IMAGE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')"
  qemu-img create -q -f qcow2 -F "$fmt" -b "$IMAGE" "$TMP/disk.qcow2"
  chmod 644 "$IMAGE" "$TMP/seed.iso"
  cpu=""
  if [ "$VIRT" = kvm ]; then
    cpu="<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model><feature policy='disable' name='svm'/></cpu>"
  fi
  cat >"$TMP/domain.xml" <<XML
<domain type='$VIRT'>
  <name>$NAME</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  $cpu
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$TMP/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    $xml_seed
    <serial type='file'><source path='$SERIAL'/><target port='0'/></serial>
    <channel type='unix'>
      <source mode='bind' path='$SOCK'/>
      <target type='virtio' name='org.vmmgr.heartbeat.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh -q -c qemu:///system create "$TMP/domain.xml" >/dev/null
fi

# Read the virtio-serial channel (host side of org.vmmgr.heartbeat.0) into $VIRTIO.
python3 - "$SOCK" "$VIRTIO" "$TIMEOUT" <<'PY' &
import socket, sys, time, os
path, out, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.time() + timeout
while time.time() < end:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(1)
s.settimeout(1)
with open(out, "ab", buffering=0) as f:
    while time.time() < end:
        try:
            d = s.recv(4096)
        except socket.timeout:
            continue
        if not d:
            break
        f.write(d)
PY
RPID=$!

beats() { grep -a -c "vmmgr-heartbeat $ID " "$1" 2>/dev/null || true; }
first=""
ok=""
while :; do
  now=$(date +%s.%N)
  if [ -z "$first" ] && [ "$(beats "$SERIAL")" -ge 1 ]; then
    first=$(python3 -c "print(f'{$now - $T0:.1f}')")
  fi
  if [ "$(beats "$SERIAL")" -ge "$BEATS" ] && [ "$(beats "$VIRTIO")" -ge "$BEATS" ]; then ok=1; break; fi
  if python3 -c "import sys; sys.exit(0 if $now - $T0 > $TIMEOUT else 1)"; then break; fi
  if [ -n "$QPID" ] && ! kill -0 "$QPID" 2>/dev/null; then break; fi
  sleep 0.5
done

echo "--- serial console ($MODE/$VIRT) ---"
tr -d '\r' <"$SERIAL" | sed 's/\x1b[^a-zA-Z]*[a-zA-Z]//g; s/\x1bc//g' | grep -a -E 'vmmgr-|Kernel panic|error' | head -n 12
echo "--- virtio-serial org.vmmgr.heartbeat.0 ---"
head -n "$BEATS" "$VIRTIO"
if [ -n "$ok" ] && [ -n "$ACPI" ]; then
  echo "--- ACPI power button ---"
  if [ "$MODE" = qemu ]; then
    python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"system_powerdown\n"); time.sleep(0.5)' "$MON"
  else
    virsh -q -c qemu:///system shutdown "$NAME" >/dev/null
  fi
  t1=$(date +%s.%N); off=""
  for _ in $(seq 1 80); do
    if [ "$MODE" = qemu ]; then kill -0 "$QPID" 2>/dev/null || off=1
    else virsh -q -c qemu:///system domstate "$NAME" >/dev/null 2>&1 || off=1; fi
    [ -n "$off" ] && break
    sleep 0.25
  done
  grep -a 'power button' "$SERIAL" | tr -d '\r' || true
  if [ -n "$off" ]; then
    QPID=""
    echo "powered off $(python3 -c "import time; print(f'{time.time() - $t1:.1f}')")s after the power button"
  else
    ok=""; echo "guest did not power off within 20 s" >&2
  fi
fi
if [ -n "$ok" ]; then
  echo "PASS: $MODE/$VIRT: first heartbeat after ${first}s (from start), $BEATS beats on serial and virtio-serial with instance-id $ID"
  exit 0
fi
echo "FAIL: $MODE/$VIRT: serial beats $(beats "$SERIAL"), virtio beats $(beats "$VIRTIO") within ${TIMEOUT}s" >&2
tail -c 2000 "$SERIAL" >&2 || true
exit 1
