#!/usr/bin/env bash
# Build the tiny vmmgr guest from Debian packages, offline once the .debs are cached.
#
#   images/build/tiny-vmlinuz     the Debian cloud kernel (linux-image-*-cloud-amd64)
#   images/build/tiny-initrd.img  xz initramfs: busybox-static + virtio/cdrom modules + tiny/init
#   images/build/tiny.raw         FAT "superfloppy" with SYSLINUX: boots under SeaBIOS, no
#                                 direct kernel boot needed
#   images/build/tiny.qcow2       the same disk as qcow2 (what tests and `make run` import)
#
# Cached: skipped when the artifacts exist and the recipe (this script, images/tiny/*) and the
# cached .debs (images/build/debs/) are unchanged. FORCE=1 rebuilds. KERNEL_PKG=linux-image-...
# picks another kernel package (default: what linux-image-cloud-amd64 depends on).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${TINY_BUILD_DIR:-$HERE/build}"
DEBS="$OUT/debs"
STAMP="$OUT/.tiny.stamp"
log() { printf '[build-tiny] %s\n' "$*" >&2; }

mkdir -p "$DEBS"
exec 9>"$OUT/.lock"   # one build at a time per output directory
flock 9
export MTOOLS_SKIP_CHECK=1 LC_ALL=C

for tool in dpkg-deb depmod modprobe cpio xz mkfs.vfat mcopy syslinux qemu-img; do
  command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done

# ---- the .debs (downloaded once) --------------------------------------------------------------
apt_download() {  # apt_download PKG...: into $DEBS; refresh the lists once if that fails
  (cd "$DEBS" && apt-get -q -o APT::Sandbox::User=root download "$@") && return 0
  log "apt-get download failed; running apt-get update and retrying"
  apt-get -q update >/dev/null
  (cd "$DEBS" && apt-get -q -o APT::Sandbox::User=root download "$@")
}
kernel_deb() { ls "$DEBS"/linux-image-*.deb 2>/dev/null | grep -v -- '-dbg_' | sort -V | tail -n1; }
busybox_deb() { ls "$DEBS"/busybox-static_*.deb 2>/dev/null | sort -V | tail -n1; }

if [ -n "${KERNEL_PKG:-}" ] && ! ls "$DEBS/${KERNEL_PKG}"_*.deb >/dev/null 2>&1; then
  rm -f "$DEBS"/linux-image-*.deb
fi
if [ -z "$(kernel_deb)" ]; then
  pkg="${KERNEL_PKG:-}"
  if [ -z "$pkg" ]; then
    pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
           | awk '/Depends: linux-image-/ {print $2; exit}')"
    if [ -z "$pkg" ]; then
      apt-get -q update >/dev/null
      pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
    fi
  fi
  [ -n "$pkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
  log "downloading $pkg"
  apt_download "$pkg"
fi
if [ -z "$(busybox_deb)" ]; then
  log "downloading busybox-static"
  apt_download busybox-static
fi
KDEB="$(kernel_deb)"; BDEB="$(busybox_deb)"

# ---- cache check -------------------------------------------------------------------------------
want="$( { sha256sum "$HERE/build-tiny.sh" "$HERE"/tiny/*; basename "$KDEB"; basename "$BDEB"; } \
         | sha256sum | cut -d' ' -f1)"
if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && [ -s "$OUT/tiny-vmlinuz" ] && [ -s "$OUT/tiny-initrd.img" ] && [ -s "$OUT/tiny.qcow2" ]; then
  log "up to date: $OUT/tiny.qcow2"
  exit 0
fi

T0=$(date +%s)
WORK="$(mktemp -d "$OUT/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "kernel: $(basename "$KDEB"); busybox: $(basename "$BDEB")"
dpkg-deb -x "$KDEB" "$WORK/k"
dpkg-deb -x "$BDEB" "$WORK/b"
KVER="$(basename "$(ls -d "$WORK"/k/lib/modules/*/ | head -n1)")"
[ -n "$KVER" ] && [ -f "$WORK/k/boot/vmlinuz-$KVER" ] || { log "no kernel in $KDEB"; exit 1; }
MODROOT="$WORK/k"
# Newer Debian kernels ship compressed modules; busybox insmod wants plain .ko.
find "$MODROOT/lib/modules/$KVER" -name '*.ko.xz' -exec xz -d {} +
find "$MODROOT/lib/modules/$KVER" -name '*.ko.zst' -exec zstd -q -d --rm {} +
find "$MODROOT/lib/modules/$KVER" -name '*.ko.gz' -exec gzip -d {} +
depmod -b "$MODROOT" "$KVER"

# ---- initramfs ---------------------------------------------------------------------------------
R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt,root,lib/modules}
install -m 0755 "$WORK/b/bin/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
install -m 0755 "$HERE/tiny/init" "$R/init"
if [ "$(id -u)" -eq 0 ]; then
  mknod -m 600 "$R/dev/console" c 5 1
  mknod -m 666 "$R/dev/null" c 1 3
fi
echo tiny >"$R/etc/hostname"

: >"$R/etc/modules.order"
grep -v '^[[:space:]]*\(#\|$\)' "$HERE/tiny/modules.list" | while read -r mod; do
  if ! deps="$(modprobe -d "$MODROOT" -S "$KVER" --show-depends "$mod" 2>/dev/null)"; then
    log "warning: kernel $KVER has no module $mod; skipped"
    continue
  fi
  printf '%s\n' "$deps" | awk '$1 == "insmod" {print $2}' | while read -r ko; do
    name="$(basename "$ko" .ko)"
    grep -qx "$name" "$R/etc/modules.order" && continue
    cp "$ko" "$R/lib/modules/$name.ko"
    echo "$name" >>"$R/etc/modules.order"
  done
done
log "modules: $(tr '\n' ' ' <"$R/etc/modules.order")"

(cd "$R" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible) \
  | xz --check=crc32 --lzma2=preset=9e,dict=1MiB >"$WORK/initrd.img"
cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# ---- bootable disk: FAT superfloppy + SYSLINUX -------------------------------------------------
kb() { echo $(( ($(stat -c %s "$1") + 1023) / 1024 )); }
size_kb=$(( $(kb "$WORK/vmlinuz") + $(kb "$WORK/initrd.img") + 2048 ))
size_kb=$(( (size_kb + 1023) / 1024 * 1024 ))
mkfs.vfat -C -n TINYBOOT -i 7e57b007 "$WORK/tiny.raw" "$size_kb" >/dev/null
mcopy -i "$WORK/tiny.raw" "$WORK/vmlinuz" ::vmlinuz
mcopy -i "$WORK/tiny.raw" "$WORK/initrd.img" ::initrd.img
mcopy -i "$WORK/tiny.raw" "$HERE/tiny/syslinux.cfg" ::syslinux.cfg
syslinux --install "$WORK/tiny.raw"
qemu-img convert -f raw -O qcow2 "$WORK/tiny.raw" "$WORK/tiny.qcow2"

mv -f "$WORK/vmlinuz" "$OUT/tiny-vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/tiny-initrd.img"
mv -f "$WORK/tiny.raw" "$OUT/tiny.raw"
mv -f "$WORK/tiny.qcow2" "$OUT/tiny.qcow2"
echo "$KVER" >"$OUT/tiny.kernel-version"
echo "$want" >"$STAMP"
log "built in $(( $(date +%s) - T0 ))s: kernel $KVER," \
    "initrd $(kb "$OUT/tiny-initrd.img") KiB, disk $OUT/tiny.qcow2 (${size_kb} KiB FAT)"
