"""Lab tier: two libvirt hosts in network namespaces on this machine, real qemu (TCG) guests.

Skipped when not root, without ``ip netns``, or without the tiny image
($VMMGR_TINY_IMAGE or images/build/tiny.qcow2) -- unless $CI is set, then those fail.
The lab uses its own prefix/subnet/base dir so a developer's ``vmmgr-lab up`` is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libvirt
import pytest

from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.storage import BackingStore, StorageVolume
from drivers.lab import Lab
from drivers.lab.guest import TinyGuest, TinyImage, domain_xml
from drivers.lab.heartbeat import HeartbeatReader
from drivers.lab.netns import netns_supported
from vmmgr.errors import FailedPrecondition

LAB_BASE = "/tmp/vmmgr-lab-tests"
LAB_SUBNET = "10.213.7.0/24"
LAB_PREFIX = "vmlabt"
BASE_VOLUME = "tiny-base.qcow2"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"lab tier cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _quiet_libvirt() -> None:
    """libvirt prints every error to stderr by default; the tests assert on exceptions."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture(scope="session")
def tiny_image() -> TinyImage:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        return TinyImage.from_env(os.path.join(root, "images", "build", "tiny.qcow2"))
    except FailedPrecondition as e:
        _unavailable(f"{e} (run images/build-tiny.sh)")
        raise


@pytest.fixture(scope="session")
def lab(tiny_image: TinyImage) -> Iterator[Lab]:
    reason = netns_supported()
    if reason:
        _unavailable(f"network namespaces unavailable: {reason}")
    # a second test session on this machine waits for the first one's lab to go down
    the_lab = Lab(
        2, base_dir=LAB_BASE, subnet=LAB_SUBNET, prefix=LAB_PREFIX, lock_timeout_s=900
    ).up()
    # the guests' backing image lives in the shared pool: a volume every host can look up
    shutil.copyfile(tiny_image.disk, os.path.join(the_lab.shared_dir, BASE_VOLUME))
    try:
        yield the_lab
    finally:
        the_lab.down()


class Conns:
    """One libvirt connection per lab host, reopened when a host was killed/restarted."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._conns: dict[int, libvirt.virConnect] = {}

    def __getitem__(self, i: int) -> libvirt.virConnect:
        c = self._conns.get(i)
        if c is not None:
            try:
                if c.isAlive():
                    c.getLibVersion()
                    return c
            except libvirt.libvirtError:
                pass
        c = libvirt.open(self.lab.hosts[i].uri)
        self._conns[i] = c
        return c

    def names(self, i: int) -> set[str]:
        return {d.name() for d in self[i].listAllDomains(0)}

    def close(self) -> None:
        for c in self._conns.values():
            with contextlib.suppress(libvirt.libvirtError):
                c.close()


@pytest.fixture(scope="session")
def conns(lab: Lab) -> Iterator[Conns]:
    c = Conns(lab)
    yield c
    c.close()


def _virtual_size(path: str) -> int:
    out = subprocess.run(
        ["qemu-img", "info", "--force-share", "--output=json", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(out)["virtual-size"])


@dataclass
class Guest:
    name: str
    uuid: str
    host: int  # where it was started
    pool: str  # "shared" or "local"

    def dom(self, conns: Conns, host: int) -> libvirt.virDomain:
        return conns[host].lookupByUUIDString(self.uuid)

    def where(self, conns: Conns) -> int:
        """Index of the lab host where the guest runs now."""
        for i in range(len(conns.lab.hosts)):
            if self.running_on(conns, i):
                return i
        raise AssertionError(f"guest {self.name} runs nowhere")

    def running_on(self, conns: Conns, host: int) -> bool:
        try:
            return bool(self.dom(conns, host).state()[0] == libvirt.VIR_DOMAIN_RUNNING)
        except libvirt.libvirtError:
            return False

    def heartbeat(self, conns: Conns, host: int) -> HeartbeatReader:
        return HeartbeatReader(self.dom(conns, host)).start()


class GuestMaker:
    """Creates running tiny guests (qcow2 overlay over the tiny image) and removes them all."""

    def __init__(self, lab: Lab, conns: Conns, image: TinyImage) -> None:
        self.lab, self.conns, self.image = lab, conns, image
        self.size = _virtual_size(image.disk)
        self.base = os.path.join(lab.shared_dir, BASE_VOLUME)
        self.made: list[Guest] = []

    def __call__(
        self,
        host: int = 0,
        pool: str = "shared",
        memory_mib: int = 128,
        acpi_poweroff: bool = False,
    ) -> Guest:
        name = f"t-{uuid.uuid4().hex[:8]}"
        g = Guest(name=name, uuid=str(uuid.uuid4()), host=host, pool=pool)
        self.made.append(g)
        vol = StorageVolume(
            name=f"{name}.qcow2",
            capacity_bytes=self.size,
            format="qcow2",
            backing_store=BackingStore(path=self.base, format="qcow2"),
        )
        conn = self.conns[host]
        v = conn.storagePoolLookupByName(pool).createXML(to_string(vol.build()), 0)
        spec = TinyGuest(
            name=name,
            uuid=g.uuid,
            kernel=self.image.kernel,
            initrd=self.image.initrd,
            disk=v.path(),
            memory_mib=memory_mib,
            acpi_poweroff=acpi_poweroff,
        )
        conn.defineXML(domain_xml(spec)).create()
        return g

    def cleanup(self) -> None:
        for g in self.made:
            for i in range(len(self.lab.hosts)):
                if not self.lab.host_running(i):
                    continue
                conn = self.conns[i]
                with contextlib.suppress(libvirt.libvirtError):
                    dom = conn.lookupByUUIDString(g.uuid)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    dom.undefine()
                with contextlib.suppress(libvirt.libvirtError):
                    p = conn.storagePoolLookupByName(g.pool)
                    p.refresh(0)
                    p.storageVolLookupByName(f"{g.name}.qcow2").delete(0)
        self.made.clear()


@pytest.fixture
def guests(lab: Lab, conns: Conns, tiny_image: TinyImage) -> Iterator[GuestMaker]:
    """``guests(host=0, pool="shared", memory_mib=128, acpi_poweroff=False) -> Guest``:
    a running tiny guest; removed at teardown."""
    maker = GuestMaker(lab, conns, tiny_image)
    yield maker
    maker.cleanup()


@pytest.fixture(scope="module")
def module_guests(lab: Lab, conns: Conns, tiny_image: TinyImage) -> Iterator[GuestMaker]:
    """Like ``guests`` but kept for the whole module: booting a TCG guest costs seconds."""
    maker = GuestMaker(lab, conns, tiny_image)
    yield maker
    maker.cleanup()


@pytest.fixture
def revive(lab: Lab) -> Iterator[Callable[[int], None]]:
    """``revive(i)`` marks host i for a restart at teardown (after kill_host in a test)."""
    killed: list[int] = []
    yield killed.append
    for i in killed:
        if not lab.host_running(i):
            lab.start_host(i)
