"""Inventory from nodedev XML (+ sysfs extras, + NVML facts) and its DeviceSnap view."""

from __future__ import annotations

from dataclasses import replace

from tests.fixtures.gpu_host import HOST, device_xmls, gpu_host_inventory
from vmmgr.devices.inventory import inventory_from_xml
from vmmgr.devices.model import GpuFacts, MigFacts, MigInstanceFacts, MigProfileFacts, SysfsPciFacts
from vmmgr.devices.snapshot import inventory_to_snapshot
from vmmgr.snapshot import DeviceHealth, DeviceKind


def test_inventory_of_the_gpu_host() -> None:
    inv = gpu_host_inventory()
    kinds = {d.address: (d.kind, d.model) for d in inv.devices}
    assert kinds["0000:3b:00.0"] == (DeviceKind.GPU, "H100-80GB")
    assert kinds["0000:5e:00.0"] == (DeviceKind.GPU, "A100")
    assert kinds["0000:af:00.0"] == (DeviceKind.FPGA, "ALVEO-U250")
    assert kinds["0000:18:00.1"][0] is DeviceKind.OTHER
    assert kinds["0000:19:00.0"][0] is DeviceKind.OTHER
    l4 = inv.device("0000:86:00.0")
    assert l4 is not None and l4.iommu_group_members == ("0000:86:00.0", "0000:87:00.0")
    vf = inv.device("b1:00.2")
    assert vf is not None and vf.is_vf and vf.pf == "0000:b1:00.0"
    pf = inv.device("0000:b1:00.0")
    assert pf is not None and pf.vfs == ("0000:b1:00.1", "0000:b1:00.2") and pf.max_vfs == 2
    assert [(m.uuid, m.parent, m.type_id) for m in inv.mdevs] == [
        ("4b20d080-1b54-4048-85b3-a6a62d165c01", "0000:5e:00.0", "nvidia-700")
    ]
    assert inv.device("0000:3b:00.0").driver == "nvidia"  # type: ignore[union-attr]


def test_sysfs_fills_only_what_libvirt_lacks() -> None:
    # libvirt without driver, NUMA and IOMMU data (the test driver drops <driver>).
    xml = """<device><name>pci_0000_3b_00_0</name><capability type='pci'>
      <class>0x030200</class><domain>0</domain><bus>59</bus><slot>0</slot><function>0</function>
      <product id='0x2330'/><vendor id='0x10de'/>
      <capability type='mdev_types'><type id='nvidia-800'><name>GRID H100-4C</name>
        <deviceAPI>vfio-pci</deviceAPI><availableInstances>20</availableInstances></type></capability>
      </capability></device>"""
    extra = SysfsPciFacts(
        address="0000:3b:00.0",
        driver="nvidia",
        numa_node=1,
        iommu_group=30,
        iommu_group_members=("0000:3b:00.0", "0000:3b:00.1"),
        mdev_max_instances=(("nvidia-800", 20),),
    )
    inv = inventory_from_xml("h", [xml], sysfs={"0000:3b:00.0": extra})
    d = inv.devices[0]
    assert (d.driver, d.numa_node, d.iommu_group) == ("nvidia", 1, 30)
    assert d.iommu_group_members == ("0000:3b:00.0", "0000:3b:00.1")
    assert d.mdev_types[0].max_instances == 20
    assert d.model == "H100-80GB"
    # libvirt's own values win over sysfs.
    inv2 = gpu_host_inventory(
        sysfs={"0000:3b:00.0": replace(extra, numa_node=1, driver="vfio-pci")}
    )
    d2 = inv2.device("0000:3b:00.0")
    assert d2 is not None and (d2.numa_node, d2.driver) == (0, "nvidia")


def test_unknown_capabilities_are_skipped() -> None:
    inv = inventory_from_xml(
        "h",
        [
            "<device><name>net_eth0</name><capability type='net'>"
            "<interface>eth0</interface></capability></device>"
        ],
    )
    assert inv.devices == () and inv.mdevs == ()


def test_snapshot_view() -> None:
    inv = gpu_host_inventory()
    snaps = {d.address: d for d in inventory_to_snapshot(inv)}
    # accelerators plus the audio companion sharing the A6000's group; never the NIC.
    assert "0000:18:00.1" in snaps and "0000:19:00.0" not in snaps
    assert snaps["0000:18:00.1"].kind is DeviceKind.OTHER
    a100 = snaps["0000:5e:00.0"]
    assert a100.id == f"{HOST}/0000:5e:00.0"
    assert a100.active_mdev_type == "nvidia-700"
    t700 = next(t for t in a100.mdev_types if t.name == "nvidia-700")
    assert (t700.display_name, t700.available, t700.max_instances) == ("GRID A100D-4C", 19, 20)
    vf = snaps["0000:b1:00.1"]
    assert vf.is_vf and vf.pf == f"{HOST}/0000:b1:00.0"
    assert snaps["0000:af:00.0"].driver == "xclmgmt"
    every = inventory_to_snapshot(inv, include_other=True)
    assert "0000:19:00.0" in {d.address for d in every}


def test_snapshot_carries_health_claims_and_mig() -> None:
    mig = MigFacts(
        enabled=True,
        pending=True,
        profiles=(
            MigProfileFacts(0, 19, "1g.10gb", 1, 9984, 7),
            MigProfileFacts(4, 0, "7g.80gb", 7, 81152, 1),
        ),
        instances=(
            MigInstanceFacts(1, 19, "1g.10gb", 0, 1),
            MigInstanceFacts(2, 19, "1g.10gb", 1, 1),
        ),
    )
    facts = GpuFacts(index=0, address="0000:3b:00.0", utilization_gpu_pct=40, mig=mig)
    inv = gpu_host_inventory(gpus=[facts])
    did = f"{HOST}/0000:3b:00.0"
    snaps = {
        d.id: d
        for d in inventory_to_snapshot(
            inv,
            health={did: DeviceHealth.TAINTED},
            claimed_by={f"{HOST}/0000:af:00.0": "vm-1"},
            mig_claimed={did: ["1g.10gb"]},
        )
    }
    h100 = snaps[did]
    assert h100.health is DeviceHealth.TAINTED
    assert h100.utilization == 0.4
    assert h100.mig is not None and h100.mig.enabled and h100.mig.total_slices == 7
    assert h100.mig.instances == ("1g.10gb", "1g.10gb") and h100.mig.claimed == ("1g.10gb",)
    assert h100.mig.used_slices == 2
    assert snaps[f"{HOST}/0000:af:00.0"].claimed_by == "vm-1"
    assert snaps[f"{HOST}/0000:5e:00.0"].mig is None


def test_inventory_from_xml_is_what_the_core_can_do_without_an_agent() -> None:
    inv = inventory_from_xml("h", device_xmls())
    assert inv.gpus == () and len(inv.accelerators) == 10
