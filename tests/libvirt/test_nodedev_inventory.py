"""Device inventory from libvirt's test driver loaded with a GPU host's node XML."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from drivers.devices.inventory import node_device_xml, scan_inventory
from drivers.devices.mdev import LibvirtMdevBackend, MdevManager
from tests.fixtures.gpu_host import GPU_HOST_XML
from tests.fixtures.sysfs import EXISTING_MDEV, gpu_host_sysfs
from vmmgr.devices.model import MdevInstance
from vmmgr.devices.snapshot import inventory_to_snapshot
from vmmgr.errors import DriverError, NotFound, Unavailable
from vmmgr.scheduler import Scheduler
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    GpuRequest,
    HostSnap,
    HostState,
    PlacementRequest,
)

pytestmark = pytest.mark.libvirt

URI = "test://" + str(GPU_HOST_XML)


@pytest.fixture
def conn() -> libvirt.virConnect:
    c = libvirt.open(URI)  # a private in-memory host per open
    yield c
    c.close()


def test_scan_by_uri(tmp_path: Path) -> None:
    inv = scan_inventory(URI, host="gpu1")
    assert inv.host == "gpu1"
    models = {d.address: d.model for d in inv.accelerators}
    assert models == {
        "0000:18:00.0": "RTX-A6000",
        "0000:3b:00.0": "H100-80GB",
        "0000:5e:00.0": "A100",
        "0000:86:00.0": "L4",
        "0000:87:00.0": "L4",
        "0000:af:00.0": "ALVEO-U250",
        "0000:b1:00.0": "PAC-N3000",
        "0000:b1:00.1": "PAC-N3000-VF",
        "0000:b1:00.2": "PAC-N3000-VF",
        "0000:d8:00.0": "A100",
    }
    assert inv.mdevs == (MdevInstance(EXISTING_MDEV, "nvidia-700", "0000:5e:00.0", 101),)
    # the test driver keeps no <driver>: without sysfs the field is unknown
    assert inv.device("0000:3b:00.0").driver is None  # type: ignore[union-attr]
    assert inv.gpus == () and inv.nvml_driver_version is None


def test_sysfs_fills_what_the_test_driver_drops(conn: libvirt.virConnect, tmp_path: Path) -> None:
    fs = gpu_host_sysfs(tmp_path)
    inv = scan_inventory(conn, host="gpu1", sysfs_root=fs.root)
    a100 = inv.device("0000:5e:00.0")
    assert a100 is not None and a100.driver == "nvidia"
    assert {t.id: t.max_instances for t in a100.mdev_types} == {
        "nvidia-700": 20,
        "nvidia-701": 10,
        "nvidia-702": 4,
    }
    assert inv.device("0000:af:00.0").driver == "xclmgmt"  # type: ignore[union-attr]
    assert inv.device("0000:b1:00.0").max_vfs == 2  # type: ignore[union-attr]


def test_host_name_defaults_to_libvirts(conn: libvirt.virConnect) -> None:
    assert scan_inventory(conn).host == conn.getHostname()


def test_filters_the_test_driver_supports(conn: libvirt.virConnect) -> None:
    with_types = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV_TYPES)
    assert sorted(d.name() for d in with_types) == ["pci_0000_5e_00_0", "pci_0000_d8_00_0"]
    assert len(node_device_xml(conn)) == 13


def test_scan_through_the_hypervisor_driver_connection() -> None:
    from drivers.hypervisor.libvirt import LibvirtHypervisor

    hc = LibvirtHypervisor().connect(URI, host_name="gpu1")
    try:
        inv = scan_inventory(hc, host="gpu1")
    finally:
        hc.close()
    assert len(inv.accelerators) == 10


def test_scheduler_places_devices_of_a_scanned_host(tmp_path: Path) -> None:
    inv = scan_inventory(URI, host="gpu1", sysfs_root=gpu_host_sysfs(tmp_path).root)
    host = HostSnap("gpu1", HostState.UP, 32, 256 * 1024, devices=inventory_to_snapshot(inv))
    snap = ClusterSnapshot(hosts=(host,))
    whole = Scheduler().place(
        snap,
        PlacementRequest(vm_id="vm1", vcpus=1, memory_mib=1024, gpus=(GpuRequest("10de:2330"),)),
    )
    assert [(c.device_id, c.kind) for c in whole.devices] == [("gpu1/0000:3b:00.0", "gpu")]
    vgpu = Scheduler().place(
        snap, PlacementRequest(vm_id="vm2", vcpus=1, memory_mib=1024, vgpu_type="nvidia-700")
    )
    assert [(c.device_id, c.profile) for c in vgpu.devices] == [("gpu1/0000:5e:00.0", "nvidia-700")]
    assert {d.kind for d in host.devices} == {DeviceKind.GPU, DeviceKind.FPGA, DeviceKind.OTHER}


def test_unreachable_uri_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        scan_inventory("test://" + str(tmp_path / "missing.xml"))


def test_libvirt_mdev_backend_on_the_test_driver(conn: libvirt.virConnect) -> None:
    backend = LibvirtMdevBackend(conn)
    assert [m.uuid for m in backend.list()] == [EXISTING_MDEV]
    # The test driver cannot define mdevs (lab-notes): the failure surfaces as a DriverError.
    with pytest.raises(DriverError, match="defining mdev"):
        MdevManager(backend).create("0000:5e:00.0", "nvidia-700")
    with pytest.raises(NotFound):
        backend.remove("0b5d5bd2-2a9b-4fdf-9b3c-2c0a6a1e0f00")
