#!/usr/bin/env bash
# Install everything vmmgr needs to build, run and test on Debian 12 (bookworm).
#
# Idempotent and cheap when nothing changed:
#   * apt: installs only packages that are missing; `apt-get update` runs only then.
#   * .venv: created once with a python3 >= 3.11; `pip install -e '.[dev]'` re-runs only when
#     pyproject.toml (or the interpreter) changed -- stamp in .venv/.vmmgr-deps.stamp.
#
# Environment knobs:
#   VMMGR_SKIP_APT=1       do not touch apt (e.g. a developer machine that is not Debian)
#   VMMGR_NO_VAGRANT=1     do not install vagrant/vagrant-libvirt (optional packages)
#   PYTHON=/path/python3   interpreter for the venv (default: python3 on PATH, else /usr/bin/python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.vmmgr-deps.stamp"

log() { printf '[install-deps] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# apt
# ---------------------------------------------------------------------------------------------
# Installed with --no-install-recommends: recommends would pull e.g. libguestfs-tools (a full
# appliance) via vagrant-libvirt. Recommends we do want are listed explicitly.
APT_REQUIRED=(
  # toolchain for libvirt-python (built from the PyPI sdist) and the venv
  make gcc pkg-config python3 python3-dev python3-venv ca-certificates procps
  # hypervisor stack
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
  dnsmasq-base iproute2 iptables dmidecode netcat-openbsd openssh-client
  # tiny guest image recipe (images/build-tiny.sh) and cloud-init seeds
  busybox-static cpio kmod xz-utils zstd syslinux syslinux-common mtools dosfstools genisoimage
  # test database, benchmark peers, and the other seed tool vmmgrd accepts (its ISOs are tested)
  postgresql ganeti-htools xorriso
)
# Installed when the distribution has them (Debian 12 does); never fatal.
APT_OPTIONAL=(vagrant vagrant-libvirt)

is_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
has_candidate() {
  local c
  c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
  [ -n "$c" ] && [ "$c" != "(none)" ]
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}
apt_get() {
  as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a \
    apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    -o DPkg::Lock::Timeout=600 "$@"
}

install_apt() {
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    log "no dpkg/apt here; skipping system packages (install them yourself)"
    return 0
  fi
  local missing=() opt_missing=() p
  for p in "${APT_REQUIRED[@]}"; do is_installed "$p" || missing+=("$p"); done
  if [ -z "${VMMGR_NO_VAGRANT:-}" ]; then
    for p in "${APT_OPTIONAL[@]}"; do
      # Without a candidate in the current lists this is not "missing" (no update per run).
      if ! is_installed "$p" && { [ ${#missing[@]} -gt 0 ] || has_candidate "$p"; }; then
        opt_missing+=("$p")
      fi
    done
  fi
  if [ ${#missing[@]} -eq 0 ] && [ ${#opt_missing[@]} -eq 0 ]; then
    log "apt: all packages present"
    return 0
  fi
  log "apt: missing: ${missing[*]} ${opt_missing[*]}"
  apt_get update
  if [ ${#missing[@]} -gt 0 ]; then
    apt_get install --no-install-recommends "${missing[@]}"
  fi
  local opt_ok=()
  for p in "${opt_missing[@]}"; do
    if has_candidate "$p"; then opt_ok+=("$p"); else log "apt: optional $p not available; skipped"; fi
  done
  if [ ${#opt_ok[@]} -gt 0 ]; then
    apt_get install --no-install-recommends "${opt_ok[@]}" \
      || log "apt: WARNING optional packages failed to install: ${opt_ok[*]}"
  fi
}

# ---------------------------------------------------------------------------------------------
# python venv
# ---------------------------------------------------------------------------------------------
py_ok() {  # usable interpreter: >= 3.11 with venv + ensurepip (python3-venv on Debian)
  "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    >/dev/null 2>&1
}

pick_python() {
  local c
  for c in "${PYTHON:-}" "$(command -v python3 || true)" /usr/bin/python3; do
    if [ -n "$c" ] && py_ok "$c"; then echo "$c"; return 0; fi
  done
  log "no python3 >= 3.11 with the venv module found (apt install python3-venv)"
  return 1
}

install_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
      'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; then
    :
  else
    local py
    py="$(pick_python)"
    log "creating $VENV with $py ($("$py" --version 2>&1))"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
  fi
  local want have=""
  want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -c \
    'import sys; print(sys.version.split()[0])')"
  [ -f "$STAMP" ] && have="$(cat "$STAMP")"
  if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import libvirt, vmmgr' >/dev/null 2>&1; then
    log "venv: up to date ($VENV)"
    return 0
  fi
  log "venv: pip install -e '.[dev]' (libvirt-python builds against libvirt-dev)"
  export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  "$VENV/bin/python" -c 'import libvirt, vmmgr' # fail loudly here, not in the tests
  echo "$want" >"$STAMP"
  log "venv: done"
}

# One install at a time per checkout (make targets and engineers run this concurrently).
LOCK="${TMPDIR:-/tmp}/vmmgr-install-deps-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12).lock"
exec 9>"$LOCK"
if ! flock -n 9; then
  log "another install-deps is running for $ROOT; waiting for it"
  flock 9
fi
if [ -z "${VMMGR_SKIP_APT:-}" ]; then install_apt; fi
install_venv
