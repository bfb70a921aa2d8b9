"""vmmgr.devices.model dataclasses <-> HostAgentService protos, both ways.

The agent servicer (vmmgr/api/agent.py) converts to protos, the remote agent
(drivers/devices/agent_remote.py) converts back; a round trip gives an equal dataclass. ``None``
("unknown", e.g. NVML answered Not Supported) is an unset optional field, never a zero; a
``None`` tuple (vGPU types unknown) is an unset message, an empty tuple a set empty list.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmmgr.devices.health import gpu_problems
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
from vmmgr.v1 import agent_pb2, device_pb2

KINDS: dict[DeviceKind, device_pb2.DeviceKind.ValueType] = {
    DeviceKind.GPU: device_pb2.DEVICE_KIND_GPU,
    DeviceKind.FPGA: device_pb2.DEVICE_KIND_FPGA,
    DeviceKind.OTHER: device_pb2.DEVICE_KIND_OTHER,
}
_KIND_OF = {v: k for k, v in KINDS.items()}


# ----------------------------------------------------------------------------- MIG


def mig_state(f: MigFacts) -> agent_pb2.AgentMigState:
    return agent_pb2.AgentMigState(
        enabled=f.enabled,
        pending=f.pending,
        profiles=[
            agent_pb2.AgentMigProfile(
                index=p.index,
                id=p.id,
                name=p.name,
                slices=p.slices,
                memory_mib=p.memory_mib,
                max_instances=p.max_instances,
            )
            for p in f.profiles
        ],
        instances=[
            agent_pb2.AgentMigInstance(
                gpu_instance_id=i.gpu_instance_id,
                profile_id=i.profile_id,
                profile=i.profile,
                start=i.start,
                size=i.size,
            )
            for i in f.instances
        ],
    )


def mig_facts(m: agent_pb2.AgentMigState) -> MigFacts:
    return MigFacts(
        enabled=m.enabled if m.HasField("enabled") else None,
        pending=m.pending if m.HasField("pending") else None,
        profiles=tuple(
            MigProfileFacts(p.index, p.id, p.name, p.slices, p.memory_mib, p.max_instances)
            for p in m.profiles
        ),
        instances=tuple(
            MigInstanceFacts(i.gpu_instance_id, i.profile_id, i.profile, i.start, i.size)
            for i in m.instances
        ),
    )


def mig_info(f: MigFacts) -> device_pb2.MigInfo:
    """The DeviceService-style summary of MIG facts (lossy: see mig_state for the exact form)."""
    return device_pb2.MigInfo(
        enabled=bool(f.enabled),
        total_slices=max((p.slices for p in f.profiles), default=0),
        profiles=[
            device_pb2.MigProfile(
                name=p.name, slices=p.slices, memory_mib=p.memory_mib, max_instances=p.max_instances
            )
            for p in f.profiles
        ],
        instances=[i.profile for i in f.instances],
    )


def placement(p: MigPlacement) -> agent_pb2.AgentMigPlacement:
    return agent_pb2.AgentMigPlacement(profile=p.profile, start=p.start)


def geometry_from_request(req: agent_pb2.ConfigureMigRequest) -> list[MigPlacement]:
    """``placements`` or plain ``profiles`` (NVML places those), never both."""
    if req.profiles and req.placements:
        raise InvalidArgument("placements", "give either profiles or placements, not both")
    if req.placements:
        out = []
        for n, p in enumerate(req.placements):
            if not p.profile:
                raise InvalidArgument(f"placements[{n}].profile", "is required")
            out.append(MigPlacement(p.profile, p.start if p.HasField("start") else None))
        return out
    for n, name in enumerate(req.profiles):
        if not name:
            raise InvalidArgument(f"profiles[{n}]", "must not be empty")
    return [MigPlacement(name) for name in req.profiles]


# ----------------------------------------------------------------------------- GPU facts


def _vgpu_types(types: tuple[VgpuTypeFacts, ...] | None) -> agent_pb2.AgentVgpuTypeList | None:
    if types is None:
        return None
    return agent_pb2.AgentVgpuTypeList(
        types=[
            agent_pb2.AgentVgpuType(type_id=t.type_id, name=t.name, max_instances=t.max_instances)
            for t in types
        ]
    )


def _vgpu_types_from(
    present: bool, types: agent_pb2.AgentVgpuTypeList
) -> tuple[VgpuTypeFacts, ...] | None:
    if not present:
        return None
    return tuple(
        VgpuTypeFacts(t.type_id, t.name, t.max_instances if t.HasField("max_instances") else None)
        for t in types.types
    )


def _scaled(value: int | None, scale: float) -> float | None:
    return None if value is None else value * scale


def telemetry(f: GpuFacts, driver_version: str | None = None) -> device_pb2.GpuTelemetry:
    """The DeviceService-style summary of one GPU's facts; unknown values stay unset."""
    rows = f.remapped_rows
    return device_pb2.GpuTelemetry(
        uuid=f.uuid or "",
        name=f.name or "",
        memory_total_mib=f.memory_total_mib,
        memory_used_mib=f.memory_used_mib,
        gpu_utilization=f.utilization_gpu_pct,
        memory_utilization=f.utilization_memory_pct,
        temperature_c=f.temperature_c,
        power_w=_scaled(f.power_mw, 1e-3),
        power_limit_w=_scaled(f.power_limit_mw, 1e-3),
        ecc_enabled=f.ecc_enabled,
        ecc_uncorrected=f.ecc_uncorrected_volatile,
        remapped_rows_pending=None if rows is None else int(rows.pending),
        remapped_rows_failed=None if rows is None else int(rows.failed),
        virtualization_mode=f.virtualization_mode or "",
        driver_version=driver_version or "",
        vgpu_supported_types=[t.name for t in f.vgpu_supported or ()],
        vgpu_creatable_types=[t.name for t in f.vgpu_creatable or ()],
    )


def gpu_facts_pb(f: GpuFacts, driver_version: str | None = None) -> agent_pb2.GpuFacts:
    rows = f.remapped_rows
    return agent_pb2.GpuFacts(
        address=f.address,
        telemetry=telemetry(f, driver_version),
        mig=mig_info(f.mig) if f.mig is not None else None,
        problems=list(gpu_problems(f)),
        index=f.index,
        uuid=f.uuid,
        name=f.name,
        lost=f.lost,
        pci_device_id=f.pci_device_id,
        memory_total_mib=f.memory_total_mib,
        memory_used_mib=f.memory_used_mib,
        utilization_gpu_pct=f.utilization_gpu_pct,
        utilization_memory_pct=f.utilization_memory_pct,
        temperature_c=f.temperature_c,
        power_mw=f.power_mw,
        power_limit_mw=f.power_limit_mw,
        ecc_enabled=f.ecc_enabled,
        ecc_pending=f.ecc_pending,
        ecc_uncorrected_volatile=f.ecc_uncorrected_volatile,
        retired_pages_pending=f.retired_pages_pending,
        remapped_rows=None
        if rows is None
        else agent_pb2.AgentRemappedRows(
            correctable=rows.correctable,
            uncorrectable=rows.uncorrectable,
            pending=rows.pending,
            failed=rows.failed,
        ),
        virtualization_mode=f.virtualization_mode,
        host_vgpu_mode=f.host_vgpu_mode,
        vgpu_supported=_vgpu_types(f.vgpu_supported),
        vgpu_creatable=_vgpu_types(f.vgpu_creatable),
        numa_node=f.numa_node,
        persistence_mode=f.persistence_mode,
        compute_processes=f.compute_processes,
        mig_state=mig_state(f.mig) if f.mig is not None else None,
        errors=list(f.errors),
    )


def gpu_facts(m: agent_pb2.GpuFacts) -> GpuFacts:
    r = m.remapped_rows
    return GpuFacts(
        index=m.index,
        address=m.address,
        uuid=m.uuid if m.HasField("uuid") else None,
        name=m.name if m.HasField("name") else None,
        lost=m.lost,
        pci_device_id=m.pci_device_id if m.HasField("pci_device_id") else None,
        memory_total_mib=m.memory_total_mib if m.HasField("memory_total_mib") else None,
        memory_used_mib=m.memory_used_mib if m.HasField("memory_used_mib") else None,
        utilization_gpu_pct=m.utilization_gpu_pct if m.HasField("utilization_gpu_pct") else None,
        utilization_memory_pct=(
            m.utilization_memory_pct if m.HasField("utilization_memory_pct") else None
        ),
        temperature_c=m.temperature_c if m.HasField("temperature_c") else None,
        power_mw=m.power_mw if m.HasField("power_mw") else None,
        power_limit_mw=m.power_limit_mw if m.HasField("power_limit_mw") else None,
        ecc_enabled=m.ecc_enabled if m.HasField("ecc_enabled") else None,
        ecc_pending=m.ecc_pending if m.HasField("ecc_pending") else None,
        ecc_uncorrected_volatile=(
            m.ecc_uncorrected_volatile if m.HasField("ecc_uncorrected_volatile") else None
        ),
        retired_pages_pending=(
            m.retired_pages_pending if m.HasField("retired_pages_pending") else None
        ),
        remapped_rows=(
            RemappedRows(r.correctable, r.uncorrectable, r.pending, r.failed)
            if m.HasField("remapped_rows")
            else None
        ),
        virtualization_mode=m.virtualization_mode if m.HasField("virtualization_mode") else None,
        host_vgpu_mode=m.host_vgpu_mode if m.HasField("host_vgpu_mode") else None,
        vgpu_supported=_vgpu_types_from(m.HasField("vgpu_supported"), m.vgpu_supported),
        vgpu_creatable=_vgpu_types_from(m.HasField("vgpu_creatable"), m.vgpu_creatable),
        numa_node=m.numa_node if m.HasField("numa_node") else None,
        persistence_mode=m.persistence_mode if m.HasField("persistence_mode") else None,
        compute_processes=m.compute_processes if m.HasField("compute_processes") else None,
        mig=mig_facts(m.mig_state) if m.HasField("mig_state") else None,
        errors=tuple(m.errors),
    )


# ----------------------------------------------------------------------------- inventory


def mdev_type_pb(t: MdevType) -> agent_pb2.AgentMdevType:
    return agent_pb2.AgentMdevType(
        id=t.id,
        name=t.name,
        device_api=t.device_api,
        available_instances=t.available_instances,
        max_instances=t.max_instances,
    )


def mdev_type(m: agent_pb2.AgentMdevType) -> MdevType:
    return MdevType(
        m.id,
        m.name,
        m.device_api,
        m.available_instances,
        m.max_instances if m.HasField("max_instances") else None,
    )


def mdev_instance_pb(i: MdevInstance) -> agent_pb2.AgentMdevInstance:
    return agent_pb2.AgentMdevInstance(
        uuid=i.uuid, type_id=i.type_id, parent=i.parent, iommu_group=i.iommu_group
    )


def mdev_instance(m: agent_pb2.AgentMdevInstance) -> MdevInstance:
    return MdevInstance(
        m.uuid, m.type_id, m.parent, m.iommu_group if m.HasField("iommu_group") else None
    )


def pci_device_pb(d: PciDevice) -> agent_pb2.AgentPciDevice:
    return agent_pb2.AgentPciDevice(
        address=d.address,
        vendor_id=d.vendor_id,
        product_id=d.product_id,
        pci_class=d.pci_class,
        kind=KINDS[d.kind],
        model=d.model,
        vendor_name=d.vendor_name,
        product_name=d.product_name,
        nodedev_name=d.nodedev_name,
        driver=d.driver,
        numa_node=d.numa_node,
        iommu_group=d.iommu_group,
        iommu_group_members=list(d.iommu_group_members),
        is_vf=d.is_vf,
        pf=d.pf,
        vfs=list(d.vfs),
        max_vfs=d.max_vfs,
        mdev_types=[mdev_type_pb(t) for t in d.mdev_types],
    )


def pci_device(m: agent_pb2.AgentPciDevice) -> PciDevice:
    return PciDevice(
        address=m.address,
        vendor_id=m.vendor_id,
        product_id=m.product_id,
        pci_class=m.pci_class,
        kind=_KIND_OF.get(m.kind, DeviceKind.OTHER),
        model=m.model,
        vendor_name=m.vendor_name,
        product_name=m.product_name,
        nodedev_name=m.nodedev_name,
        driver=m.driver if m.HasField("driver") else None,
        numa_node=m.numa_node if m.HasField("numa_node") else None,
        iommu_group=m.iommu_group if m.HasField("iommu_group") else None,
        iommu_group_members=tuple(m.iommu_group_members),
        is_vf=m.is_vf,
        pf=m.pf if m.HasField("pf") else None,
        vfs=tuple(m.vfs),
        max_vfs=m.max_vfs if m.HasField("max_vfs") else None,
        mdev_types=tuple(mdev_type(t) for t in m.mdev_types),
    )


def inventory_pb(inv: HostInventory) -> agent_pb2.GetInventoryResponse:
    return agent_pb2.GetInventoryResponse(
        host=inv.host,
        devices=[pci_device_pb(d) for d in inv.devices],
        mdevs=[mdev_instance_pb(i) for i in inv.mdevs],
        gpus=[gpu_facts_pb(g, inv.nvml_driver_version) for g in inv.gpus],
        nvml_driver_version=inv.nvml_driver_version,
    )


def inventory(m: agent_pb2.GetInventoryResponse) -> HostInventory:
    return HostInventory(
        host=m.host,
        devices=tuple(pci_device(d) for d in m.devices),
        mdevs=tuple(mdev_instance(i) for i in m.mdevs),
        gpus=tuple(gpu_facts(g) for g in m.gpus),
        nvml_driver_version=(m.nvml_driver_version if m.HasField("nvml_driver_version") else None),
    )


# ----------------------------------------------------------------------------- mdev, FPGA


def mdev_record_pb(r: MdevRecord) -> agent_pb2.AgentMdevRecord:
    return agent_pb2.AgentMdevRecord(
        uuid=r.uuid,
        parent=r.parent,
        type_id=r.type_id,
        via=r.via,
        parent_driver=r.parent_driver,
        persistent=r.persistent,
    )


def mdev_record(m: agent_pb2.AgentMdevRecord) -> MdevRecord:
    return MdevRecord(
        uuid=m.uuid,
        parent=m.parent,
        type_id=m.type_id,
        via=m.via,
        parent_driver=m.parent_driver if m.HasField("parent_driver") else None,
        persistent=m.persistent,
    )


def fpga_result_pb(r: FpgaProgramResult) -> agent_pb2.ProgramFpgaResponse:
    return agent_pb2.ProgramFpgaResponse(
        bitstream_sha256=r.bitstream_sha256,
        device=r.device,
        profile=r.profile,
        argv=list(r.argv),
        output=r.output,
    )


def fpga_result(m: agent_pb2.ProgramFpgaResponse) -> FpgaProgramResult:
    return FpgaProgramResult(
        device=m.device,
        profile=m.profile,
        bitstream_sha256=m.bitstream_sha256,
        argv=tuple(m.argv),
        output=m.output,
    )


def gpu_facts_list(gpus: Sequence[agent_pb2.GpuFacts]) -> list[GpuFacts]:
    return [gpu_facts(g) for g in gpus]
