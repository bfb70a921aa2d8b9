"""libvirt paths the test driver cannot take (mdev define/create, devices vanishing mid-scan),
over small stand-ins shaped like libvirt-python's virConnect / virNodeDevice."""

from __future__ import annotations

import libvirt
import pytest

from drivers.devices.inventory import node_device_xml
from drivers.devices.mdev import LibvirtMdevBackend, MdevManager
from vmmgr.devices.nodedev_xml import NodeDevice
from vmmgr.errors import DriverError, NotFound

UUID = "0b5d5bd2-2a9b-4fdf-9b3c-2c0a6a1e0f00"


def lv_error(msg: str, code: int = libvirt.VIR_ERR_INTERNAL_ERROR) -> libvirt.libvirtError:
    e = libvirt.libvirtError(msg)
    e.err = (code, 0, msg, 2, "", None, None, 0, 0)
    return e


class Dev:
    def __init__(self, xml: str, *, fail_create: bool = False) -> None:
        self.xml = xml
        self.fail_create = fail_create
        self.active = False
        self.defined = True
        self.log: list[str] = []

    def name(self) -> str:
        return NodeDevice.from_xml(self.xml).name or "mdev_new"

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802 (libvirt's name)
        if not self.defined and not self.active:
            raise lv_error("gone", libvirt.VIR_ERR_NO_NODE_DEVICE)
        return self.xml

    def create(self, flags: int = 0) -> None:
        self.log.append("create")
        if self.fail_create:
            raise lv_error("vfio: mdev parent busy")
        self.active = True

    def undefine(self, flags: int = 0) -> None:
        self.log.append("undefine")
        self.defined = False

    def destroy(self) -> None:
        self.log.append("destroy")
        self.active = False

    def isActive(self) -> bool:  # noqa: N802
        return self.active

    def isPersistent(self) -> bool:  # noqa: N802
        return self.defined


class Conn:
    def __init__(self, *, fail_create: bool = False) -> None:
        self.devices: list[Dev] = []
        self.fail_create = fail_create
        self.defined_xml: list[str] = []

    def nodeDeviceDefineXML(self, xml: str, flags: int = 0) -> Dev:  # noqa: N802
        self.defined_xml.append(xml)
        cap = NodeDevice.from_xml(xml).mdev
        assert cap is not None
        full = xml.replace("<device>", f"<device><name>mdev_{cap.uuid.replace('-', '_')}</name>", 1)  # type: ignore[union-attr]
        dev = Dev(full, fail_create=self.fail_create)
        self.devices.append(dev)
        return dev

    def listAllDevices(self, flags: int = 0) -> list[Dev]:  # noqa: N802
        return list(self.devices)


def test_persistent_mdev_define_create_remove() -> None:
    conn = Conn()
    mgr = MdevManager(LibvirtMdevBackend(conn))
    rec = mgr.create("0000:5e:00.0", "nvidia-700", UUID)
    assert rec.via == "libvirt" and rec.persistent
    sent = NodeDevice.from_xml(conn.defined_xml[0])
    assert sent.parent == "pci_0000_5e_00_0" and sent.mdev is not None
    assert (sent.mdev.type_id, sent.mdev.uuid) == ("nvidia-700", UUID)
    assert conn.devices[0].log == ["create"]
    assert [m.uuid for m in LibvirtMdevBackend(conn).list()] == [UUID]
    mgr.remove(UUID)
    assert conn.devices[0].log == ["create", "destroy", "undefine"]


def test_failed_start_undefines_what_it_defined() -> None:
    conn = Conn(fail_create=True)
    with pytest.raises(DriverError, match="parent busy"):
        MdevManager(LibvirtMdevBackend(conn)).create("0000:5e:00.0", "nvidia-700", UUID)
    assert conn.devices[0].log == ["create", "undefine"]
    with pytest.raises(NotFound):
        LibvirtMdevBackend(Conn()).remove(UUID)


def test_scan_skips_devices_that_vanish_and_reports_other_errors() -> None:
    conn = Conn()
    conn.nodeDeviceDefineXML(
        "<device><parent>pci_0000_5e_00_0</parent><capability type='mdev'>"
        f"<type id='nvidia-700'/><uuid>{UUID}</uuid></capability></device>"
    )
    gone = Dev("<device><name>pci_0000_01_00_0</name></device>")
    gone.defined = False
    conn.devices.append(gone)
    assert len(node_device_xml(conn)) == 1

    class Broken(Dev):
        def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
            raise lv_error("permission denied", libvirt.VIR_ERR_ACCESS_DENIED)

    conn.devices.append(Broken("<device><name>x</name></device>"))
    with pytest.raises(DriverError, match="permission denied"):
        node_device_xml(conn)

    class NoList:
        def listAllDevices(self, flags: int = 0) -> list[Dev]:  # noqa: N802
            raise lv_error("connection closed")

    with pytest.raises(DriverError, match="connection closed"):
        node_device_xml(NoList())
    with pytest.raises(DriverError, match="connection closed"):
        LibvirtMdevBackend(NoList()).list()


def test_the_libvirt_mdev_backend_connects_on_first_use() -> None:
    """vmmgrd builds its local agent at start-up: a libvirtd that is down must not stop it."""
    backend = LibvirtMdevBackend(uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(DriverError, match="connecting to qemu"):
        backend.list()
