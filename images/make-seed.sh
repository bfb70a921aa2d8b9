#!/usr/bin/env bash
# Make a cloud-init NoCloud seed that the tiny guest (and real cloud images) read.
#   images/make-seed.sh [--vfat] [--acpi-poweroff] INSTANCE_ID [LOCAL_HOSTNAME] OUT
# Default: ISO9660 with volume label "cidata" (attach as a cdrom); --vfat: a FAT image labelled
# CIDATA (attach as a disk). Files: meta-data (instance-id, local-hostname), empty user-data.
# --acpi-poweroff adds "vmmgr-acpi: poweroff": the tiny guest then powers off on the ACPI
# power button (virsh shutdown) instead of ignoring it.
set -euo pipefail
fmt=iso; acpi=""
while [ $# -gt 0 ]; do
  case "$1" in
    --vfat) fmt=vfat ;;
    --acpi-poweroff) acpi=poweroff ;;
    *) break ;;
  esac
  shift
done
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 [--vfat] [--acpi-poweroff] INSTANCE_ID [LOCAL_HOSTNAME] OUT" >&2; exit 2
fi
iid="$1"; host="$iid"; out="${*: -1}"
[ $# -eq 3 ] && host="$2"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
printf 'instance-id: %s\nlocal-hostname: %s\n' "$iid" "$host" >"$tmp/meta-data"
[ -n "$acpi" ] && printf 'vmmgr-acpi: %s\n' "$acpi" >>"$tmp/meta-data"
printf '#cloud-config\n{}\n' >"$tmp/user-data"
rm -f "$out"
if [ "$fmt" = iso ]; then
  genisoimage -quiet -o "$out" -V cidata -J -r "$tmp/meta-data" "$tmp/user-data"
else
  export MTOOLS_SKIP_CHECK=1
  mkfs.vfat -C -n CIDATA "$out" 1024 >/dev/null
  mcopy -i "$out" "$tmp/meta-data" "$tmp/user-data" ::
fi
