"""A multi-host libvirt lab on one machine: one network namespace + libvirtd per host.

Layout (``base_dir``, default /tmp/vmmgr-lab)::

    lab.json                 what is up (read by ``vmmgr-lab status/down`` from another process)
    shared/images/           the "shared" storage pool (same path on every host)
    shared/lockspace/        virtlockd's file_lockspace_dir (shared, so leases are cluster-wide)
    h<i>/etc|run|lib|log|cache   bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
                             /var/log/libvirt, /var/cache/libvirt inside host i's namespaces
    h<i>/boot.json, h<i>/daemons.log   pids and output of the host's daemons

Host i has address .(11+i) on the lab's /24; a bridge ``<prefix>-br`` in the root namespace
holds .1 so that clients in the root namespace reach ``qemu+tcp://ADDR/system``. Each host's
"local" pool is /var/lib/libvirt/images *inside its namespace* (a per-host directory at the
same path everywhere, which is what non-shared-disk migration needs).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from types import TracebackType

import libvirt

from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.storage import StoragePool
from drivers.lab import config, netns
from vmmgr.errors import DriverError, FailedPrecondition, InvalidArgument

DEFAULT_BASE_DIR = "/tmp/vmmgr-lab"
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_PREFIX = "vmlab"
LIBVIRTD_PORT = 16509
SHARED_POOL = "shared"
LOCAL_POOL = "local"
LOCAL_POOL_DIR = "/var/lib/libvirt/images"  # inside each host's mount namespace

# per-host subdirectory -> the system path it is bind-mounted over inside the namespace
BIND_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
_HOSTBOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostboot.py")


@dataclass(frozen=True, slots=True)
class LabHost:
    index: int
    name: str  # "lab0"
    netns: str
    address: str
    host_uuid: str
    root: str  # per-host directory in the root namespace

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    @property
    def unix_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root}/run/libvirt-sock"

    @property
    def migration_uri(self) -> str:
        """Where qemu on this host listens for incoming migration streams."""
        return f"tcp://{self.address}"

    def path_in_host(self, path: str) -> str:
        """Map a path as seen inside the host's namespace to the root namespace."""
        for sub, system in BIND_DIRS.items():
            if path == system or path.startswith(system + "/"):
                return os.path.join(self.root, sub) + path[len(system) :]
        return path


class Lab:
    """``with Lab(2) as lab: lab.hosts[0].uri`` -- or ``up()``/``down()`` explicitly."""

    def __init__(
        self,
        n: int = 2,
        base_dir: str = DEFAULT_BASE_DIR,
        subnet: str = DEFAULT_SUBNET,
        prefix: str = DEFAULT_PREFIX,
        *,
        boot_timeout_s: float = 30.0,
        lock_timeout_s: float = 0.0,
    ) -> None:
        """``lock_timeout_s``: how long ``up()`` waits while another process owns a lab of the
        same prefix (two test sessions at once would otherwise tear down each other's hosts)."""
        if not 1 <= n <= 50:
            raise InvalidArgument("n", "a lab has 1..50 hosts")
        net = ipaddress.ip_network(subnet)
        if net.version != 4 or net.prefixlen != 24 or not net.is_private:
            raise InvalidArgument("subnet", f"need a private IPv4 /24, got {subnet}")
        if not prefix.isalnum() or len(prefix) > 8:
            raise InvalidArgument("prefix", "1..8 alphanumeric characters (interface names)")
        self.n = n
        self.base_dir = os.path.abspath(base_dir)
        self.subnet = net
        self.prefix = prefix
        self.boot_timeout_s = boot_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self._lock_fd: int | None = None
        self.gateway = str(net.network_address + 1)
        self.bridge = f"{prefix}-br"
        self.shared_dir = os.path.join(self.base_dir, "shared", "images")
        self.lockspace_dir = os.path.join(self.base_dir, "shared", "lockspace")
        self.hosts = [self._host(i) for i in range(n)]

    def _host(self, i: int) -> LabHost:
        return LabHost(
            index=i,
            name=f"lab{i}",
            netns=f"{self.prefix}-h{i}",
            address=str(self.subnet.network_address + 11 + i),
            host_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmmgr-lab/{self.base_dir}/{i}")),
            root=os.path.join(self.base_dir, f"h{i}"),
        )

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Lab:
        """Create the network and start every host; on failure everything is torn down."""
        reason = netns.netns_supported()
        if reason:
            raise FailedPrecondition(f"lab needs network namespaces: {reason}")
        self._lock()
        try:
            cleanup(self.prefix, self.base_dir)  # leftovers of a crashed earlier run
            prefix24 = str(self.subnet.network_address).rsplit(".", 1)[0] + "."
            clash = netns.routes_overlapping(prefix24)
            if clash:
                raise FailedPrecondition(f"subnet {self.subnet} already routed here: {clash}")
        except BaseException:
            self._unlock()
            raise
        try:
            os.makedirs(self.shared_dir, exist_ok=True)
            os.makedirs(self.lockspace_dir, exist_ok=True)
            netns.ip("link", "add", self.bridge, "type", "bridge")
            netns.ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            netns.ip("link", "set", self.bridge, "up")
            for h in self.hosts:
                self._create_netns(h)
                # new hosts: no domains left defined by an earlier lab (a revived host in a
                # running lab keeps them, like a rebooted machine)
                shutil.rmtree(os.path.join(h.root, "etc", "qemu"), ignore_errors=True)
            self._write_state()
            for h in self.hosts:
                self.start_host(h.index)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill every process of the lab, delete its namespaces and links."""
        try:
            cleanup(self.prefix, self.base_dir)
        finally:
            self._unlock()

    def _lock(self) -> None:
        """Own the prefix for as long as this object's lab is up (flock; freed on exit)."""
        if self._lock_fd is not None:
            return
        fd = os.open(f"/run/vmmgr-lab.{self.prefix}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise FailedPrecondition(
                        f"lab prefix {self.prefix!r} is in use by another process ({owner})"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _create_netns(self, h: LabHost) -> None:
        outer, inner = f"{self.prefix}-v{h.index}", f"{self.prefix}-p{h.index}"
        netns.ip("netns", "add", h.netns)
        netns.ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        netns.ip("link", "set", outer, "master", self.bridge)
        netns.ip("link", "set", outer, "up")
        netns.ip("link", "set", inner, "netns", h.netns)
        netns.ip("-n", h.netns, "link", "set", inner, "name", "eth0")
        netns.ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        netns.ip("-n", h.netns, "link", "set", "eth0", "up")
        netns.ip("-n", h.netns, "link", "set", "lo", "up")

    def _prepare_dirs(self, h: LabHost) -> None:
        for sub in BIND_DIRS:
            os.makedirs(os.path.join(h.root, sub), exist_ok=True)
        etc = os.path.join(h.root, "etc")
        for d in ("qemu", "qemu/networks/autostart", "storage", "storage/autostart"):
            os.makedirs(os.path.join(etc, d), exist_ok=True)
        os.makedirs(os.path.join(h.root, "lib", "images"), exist_ok=True)
        cfg = config.HostConfig(
            index=h.index,
            address=h.address,
            host_uuid=h.host_uuid,
            lockspace_dir=self.lockspace_dir,
        )
        for name, text in config.render_all(cfg).items():
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
        # a stale pid/socket from a killed run would make the daemons refuse to start
        run = os.path.join(h.root, "run")
        shutil.rmtree(run, ignore_errors=True)
        os.makedirs(run)

    def start_host(self, i: int) -> None:
        """(Re)start host i's daemons (after kill_host as well) and wait until libvirtd answers."""
        h = self.hosts[i]
        if netns.netns_pids(h.netns):
            raise FailedPrecondition(f"host {h.name} is running; kill_host({i}) first")
        self._prepare_dirs(h)
        binds = [f"--bind={os.path.join(h.root, sub)}:{path}" for sub, path in BIND_DIRS.items()]
        cmd = ["ip", "netns", "exec", h.netns, sys.executable, _HOSTBOOT, *binds]
        cmd += [f"--state={h.root}/boot.json", f"--log={h.root}/daemons.log"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise DriverError(f"lab host {h.name} did not boot: {proc.stderr.strip()}")
        self._wait_listening(h)
        self._ensure_pools(h)

    def _wait_listening(self, h: LabHost) -> None:
        deadline = time.monotonic() + self.boot_timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((h.address, LIBVIRTD_PORT), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        log = os.path.join(h.root, "daemons.log")
        tail = ""
        if os.path.exists(log):
            with open(log) as f:
                tail = f.read()[-2000:]
        raise DriverError(f"libvirtd of {h.name} not listening on {h.uri}: {tail}")

    def _ensure_pools(self, h: LabHost) -> None:
        conn = libvirt.open(h.uri)
        try:
            pools = {p.name(): p for p in conn.listAllStoragePools(0)}
            for name, path in ((SHARED_POOL, self.shared_dir), (LOCAL_POOL, LOCAL_POOL_DIR)):
                pool = pools.get(name)
                if pool is None:
                    xml = to_string(StoragePool(name=name, target_path=path).build())
                    pool = conn.storagePoolDefineXML(xml, 0)
                    pool.setAutostart(1)
                if not pool.isActive():
                    pool.create(0)
        finally:
            conn.close()

    def kill_host(self, i: int) -> None:
        """SIGKILL everything host i runs (libvirtd, its qemus, virtlogd, virtlockd): a crash."""
        netns.kill_netns(self.hosts[i].netns)

    def host_running(self, i: int) -> bool:
        return bool(netns.netns_pids(self.hosts[i].netns))

    # ---------------------------------------------------------------- state

    def _write_state(self) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        state = {
            "n": self.n,
            "subnet": str(self.subnet),
            "prefix": self.prefix,
            "hosts": [asdict(h) for h in self.hosts],
        }
        with open(os.path.join(self.base_dir, "lab.json"), "w") as f:
            json.dump(state, f, indent=2)

    @classmethod
    def load(cls, base_dir: str = DEFAULT_BASE_DIR) -> Lab:
        """The lab described by base_dir/lab.json (written by up())."""
        path = os.path.join(os.path.abspath(base_dir), "lab.json")
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError as e:
            raise FailedPrecondition(f"no lab at {base_dir} (missing {path})") from e
        return cls(state["n"], base_dir, state["subnet"], state["prefix"])

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "name": h.name,
                "uri": h.uri,
                "unix_uri": h.unix_uri,
                "address": h.address,
                "netns": h.netns,
                "running": self.host_running(h.index),
            }
            for h in self.hosts
        ]


def cleanup(prefix: str = DEFAULT_PREFIX, base_dir: str | None = DEFAULT_BASE_DIR) -> list[str]:
    """Remove every namespace and link named ``<prefix>-*`` and the lab's mounts; idempotent.

    Returns what was removed. Works without lab.json, for leftovers of a crashed run.
    """
    removed: list[str] = []
    for ns in netns.list_netns(prefix + "-"):
        netns.kill_netns(ns)
        netns.ip("netns", "del", ns, check=False)
        removed.append(f"netns {ns}")
    for link in netns.list_links(prefix + "-"):
        netns.ip("link", "del", link, check=False)
        removed.append(f"link {link}")
    if base_dir:
        removed += _unmount_under(os.path.abspath(base_dir))
        state = os.path.join(base_dir, "lab.json")
        if os.path.exists(state):
            os.unlink(state)
    return removed


def _unmount_under(base: str) -> list[str]:
    """Mounts made by the lab live in private namespaces; this catches any that leaked."""
    out: list[str] = []
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for mp in reversed(points):
        if mp == base or mp.startswith(base + "/"):
            subprocess.run(["umount", "-l", mp], capture_output=True)
            out.append(f"mount {mp}")
    return out
