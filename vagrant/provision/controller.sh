#!/usr/bin/env bash
# The controller: vmmgrd (systemd unit) with the KVM hosts registered over qemu+ssh://.
set -euo pipefail
: "${LAB_HOSTS:?}"   # "kvm1=10.77.0.11 kvm2=10.77.0.12 ..."
install -d -m 700 /root/.ssh
install -m 600 /tmp/lab_ed25519 /root/.ssh/id_ed25519
install -m 644 /tmp/lab_ed25519.pub /root/.ssh/id_ed25519.pub
ips=""
for h in $LAB_HOSTS; do ips="$ips ${h#*=}"; done
cat >/root/.ssh/config <<CONF
Host$ips
  User root
  IdentityFile /root/.ssh/id_ed25519
  StrictHostKeyChecking accept-new
  ServerAliveInterval 5
CONF

cd /vmmgr
images/build-tiny.sh

args=(--listen 0.0.0.0:50051 --state-dir /var/lib/vmmgr --import-image "tiny=/vmmgr/images/build/tiny.qcow2")
for h in $LAB_HOSTS; do
  name="${h%%=*}"; ip="${h#*=}"
  ssh -o BatchMode=yes "root@$ip" true   # learn the host key now, fail early if unreachable
  args+=(--register-host "$name=qemu+ssh://root@$ip/system")
done

cat >/etc/systemd/system/vmmgrd.service <<UNIT
[Unit]
Description=vmmgr daemon
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/vmmgr/.venv/bin/vmmgrd ${args[*]}
Restart=on-failure
StateDirectory=vmmgr
LogsDirectory=vmmgr

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable vmmgrd.service
systemctl restart vmmgrd.service
for _ in $(seq 1 60); do
  if vmmgr --endpoint 127.0.0.1:50051 host list; then exit 0; fi
  sleep 2
done
journalctl -u vmmgrd --no-pager -n 50
exit 1
