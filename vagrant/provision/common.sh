#!/usr/bin/env bash
# Every lab machine: vmmgr's dependencies (libvirt, qemu, python venv, ...) from the synced
# repository at /vmmgr, with the same script CI uses.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd /vmmgr
VMMGR_NO_VAGRANT=1 scripts/install-deps.sh
ln -sf /vmmgr/.venv/bin/vmmgr /usr/local/bin/vmmgr
ln -sf /vmmgr/.venv/bin/vmmgrd /usr/local/bin/vmmgrd
