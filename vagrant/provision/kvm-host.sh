#!/usr/bin/env bash
# A KVM host: libvirtd migrating over the private network, reachable by the controller's key.
set -euo pipefail
: "${LAB_IP:?}"
install -d -m 700 /root/.ssh
touch /root/.ssh/authorized_keys
grep -qxF "$(cat /tmp/lab_ed25519.pub)" /root/.ssh/authorized_keys \
  || cat /tmp/lab_ed25519.pub >>/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys

# Migrations must use the private network address, not the hostname (see lab notes).
conf=/etc/libvirt/qemu.conf
sed -i '/^# vmmgr-lab begin/,/^# vmmgr-lab end/d' "$conf"
cat >>"$conf" <<CONF
# vmmgr-lab begin
migration_host = "$LAB_IP"
migration_address = "$LAB_IP"
# vmmgr-lab end
CONF
if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  echo "WARNING: no vmx/svm in this VM: nested virtualization is off; guests need TCG"
fi
modprobe kvm_intel 2>/dev/null || modprobe kvm_amd 2>/dev/null || true
systemctl enable --now virtlogd.socket virtlockd.socket libvirtd.service
systemctl restart libvirtd.service
virsh -c qemu:///system version
