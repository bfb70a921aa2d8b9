"""HostAgentService conversions: every field survives a trip through the wire format."""

from __future__ import annotations

import pytest

from vmmgr.api import agent_convert as conv
from vmmgr.devices.model import (
    FpgaProgramResult,
    GpuFacts,
    HostInventory,
    MdevInstance,
    MdevRecord,
    MdevType,
    MigFacts,
    MigInstanceFacts,
    MigPlacement,
    MigProfileFacts,
    PciDevice,
    RemappedRows,
    VgpuTypeFacts,
)
from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import DeviceKind
from vmmgr.v1 import agent_pb2

MIG = MigFacts(
    enabled=True,
    pending=False,
    profiles=(
        MigProfileFacts(0, 19, "1g.10gb", 1, 9984, 7),
        MigProfileFacts(4, 0, "7g.80gb", 7, 81152, 1),
    ),
    instances=(MigInstanceFacts(1, 19, "1g.10gb", 3, 1),),
)

EVERYTHING = GpuFacts(
    index=2,
    address="0000:3b:00.0",
    uuid="GPU-1",
    name="NVIDIA H100 80GB HBM3",
    lost=True,
    pci_device_id=0x233010DE,
    memory_total_mib=81559,
    memory_used_mib=0,
    utilization_gpu_pct=0,
    utilization_memory_pct=5,
    temperature_c=-1,
    power_mw=123965,
    power_limit_mw=700000,
    ecc_enabled=False,
    ecc_pending=True,
    ecc_uncorrected_volatile=3,
    retired_pages_pending=False,
    remapped_rows=RemappedRows(1, 2, True, False),
    virtualization_mode="host_vgpu",
    host_vgpu_mode="sriov",
    vgpu_supported=(VgpuTypeFacts(700, "GRID A100D-4C", 20), VgpuTypeFacts(701, "X", None)),
    vgpu_creatable=(),
    numa_node=0,
    persistence_mode=False,
    compute_processes=0,
    mig=MIG,
    errors=("nvmlDeviceGetPowerUsage: Unknown Error",),
)
NOTHING = GpuFacts(index=0, address="0000:3b:00.0")


@pytest.mark.parametrize("facts", [EVERYTHING, NOTHING], ids=["everything", "nothing"])
def test_gpu_facts_round_trip(facts: GpuFacts) -> None:
    wire = agent_pb2.GpuFacts.FromString(conv.gpu_facts_pb(facts).SerializeToString())
    assert conv.gpu_facts(wire) == facts


def test_unknown_is_unset_and_zero_is_set() -> None:
    nothing = conv.gpu_facts_pb(NOTHING)
    for name in (
        "uuid",
        "temperature_c",
        "numa_node",
        "remapped_rows",
        "vgpu_supported",
        "mig_state",
    ):
        assert not nothing.HasField(name), name
    everything = conv.gpu_facts_pb(EVERYTHING)
    assert everything.HasField("memory_used_mib") and everything.memory_used_mib == 0
    assert everything.HasField("vgpu_creatable") and not everything.vgpu_creatable.types
    assert everything.telemetry.HasField("gpu_utilization")
    assert everything.telemetry.gpu_utilization == 0
    assert not nothing.telemetry.HasField("temperature_c") and not nothing.problems
    assert everything.problems  # lost GPU, ECC, pending remap


def test_mig_state_round_trip_and_summary() -> None:
    assert conv.mig_facts(conv.mig_state(MIG)) == MIG
    unknown = MigFacts(None, None)
    assert conv.mig_facts(conv.mig_state(unknown)) == unknown
    info = conv.mig_info(MIG)
    assert (info.enabled, info.total_slices, list(info.instances)) == (True, 7, ["1g.10gb"])


def test_inventory_round_trip() -> None:
    dev = PciDevice(
        address="0000:b1:00.1",
        vendor_id=0x8086,
        product_id=0x0B31,
        pci_class=0x120000,
        kind=DeviceKind.FPGA,
        model="PAC-N3000-VF",
        vendor_name="Intel",
        product_name="N3000 VF",
        nodedev_name="pci_0000_b1_00_1",
        driver="vfio-pci",
        numa_node=1,
        iommu_group=81,
        iommu_group_members=("0000:b1:00.1",),
        is_vf=True,
        pf="0000:b1:00.0",
        vfs=(),
        max_vfs=None,
        mdev_types=(MdevType("nvidia-700", "GRID", "vfio-pci", 0, None),),
    )
    bare = PciDevice("0000:00:1f.0", 0x8086, 0xA1C8, 0x060100, DeviceKind.OTHER, "")
    inv = HostInventory(
        "gpu1",
        (dev, bare),
        mdevs=(MdevInstance("4b20d080-1b54-4048-85b3-a6a62d165c01", "nvidia-700", "0000:5e:00.0"),),
        gpus=(EVERYTHING,),
        nvml_driver_version="580.159.04",
    )
    wire = agent_pb2.GetInventoryResponse.FromString(conv.inventory_pb(inv).SerializeToString())
    assert conv.inventory(wire) == inv
    assert wire.gpus[0].telemetry.driver_version == "580.159.04"


def test_records_round_trip() -> None:
    rec = MdevRecord("u", "0000:5e:00.0", "nvidia-700", "libvirt", None, True)
    assert conv.mdev_record(conv.mdev_record_pb(rec)) == rec
    res = FpgaProgramResult("0000:af:00.0", "u250", "ab" * 32, ("xbutil", "program"), "ok\n")
    assert conv.fpga_result(conv.fpga_result_pb(res)) == res


def test_geometry_from_request() -> None:
    placed = agent_pb2.ConfigureMigRequest(
        address="x",
        placements=[
            conv.placement(MigPlacement("3g.40gb", 4)),
            conv.placement(MigPlacement("1g.10gb")),
        ],
    )
    assert conv.geometry_from_request(placed) == [
        MigPlacement("3g.40gb", 4),
        MigPlacement("1g.10gb", None),
    ]
    plain = agent_pb2.ConfigureMigRequest(address="x", profiles=["7g.80gb"])
    assert conv.geometry_from_request(plain) == [MigPlacement("7g.80gb")]
    assert conv.geometry_from_request(agent_pb2.ConfigureMigRequest(address="x")) == []
    with pytest.raises(InvalidArgument) as empty:
        conv.geometry_from_request(
            agent_pb2.ConfigureMigRequest(placements=[agent_pb2.AgentMigPlacement(start=0)])
        )
    assert empty.value.field == "placements[0].profile"
    with pytest.raises(InvalidArgument) as blank:
        conv.geometry_from_request(agent_pb2.ConfigureMigRequest(profiles=["1g.10gb", ""]))
    assert blank.value.field == "profiles[1]"
