"""DeviceService servicer."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.errors import InvalidArgument
from vmmgr.services.devices import DeviceService
from vmmgr.state.models import Device, DeviceSample
from vmmgr.v1 import device_pb2, device_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext

_KINDS = {
    "gpu": device_pb2.DEVICE_KIND_GPU,
    "fpga": device_pb2.DEVICE_KIND_FPGA,
    "other": device_pb2.DEVICE_KIND_OTHER,
}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}
_HEALTH = {
    "healthy": device_pb2.DEVICE_HEALTH_HEALTHY,
    "tainted": device_pb2.DEVICE_HEALTH_TAINTED,
    "unknown": device_pb2.DEVICE_HEALTH_UNKNOWN,
}


def _opt(value: Any, scale: float = 1.0) -> Any:
    return None if value is None else value * scale


def telemetry(nvml: dict[str, Any]) -> device_pb2.GpuTelemetry:
    """NVML facts as stored; a None (NVML said Not Supported) stays an unset field."""
    rows = nvml.get("remapped_rows") or {}
    t = device_pb2.GpuTelemetry(
        uuid=nvml.get("uuid") or "",
        name=nvml.get("name") or "",
        virtualization_mode=nvml.get("virtualization_mode") or "",
        vgpu_supported_types=[v["name"] for v in nvml.get("vgpu_supported") or []],
        vgpu_creatable_types=[v["name"] for v in nvml.get("vgpu_creatable") or []],
    )
    optional = {
        "memory_total_mib": nvml.get("memory_total_mib"),
        "memory_used_mib": nvml.get("memory_used_mib"),
        "gpu_utilization": nvml.get("utilization_gpu_pct"),
        "memory_utilization": nvml.get("utilization_memory_pct"),
        "temperature_c": nvml.get("temperature_c"),
        "power_w": _opt(nvml.get("power_mw"), 1e-3),
        "power_limit_w": _opt(nvml.get("power_limit_mw"), 1e-3),
        "ecc_enabled": nvml.get("ecc_enabled"),
        "ecc_uncorrected": nvml.get("ecc_uncorrected_volatile"),
        "remapped_rows_pending": None if not rows else int(bool(rows.get("pending"))),
        "remapped_rows_failed": None if not rows else int(bool(rows.get("failed"))),
    }
    for name, value in optional.items():
        if value is not None:
            setattr(t, name, value)
    return t


def device(d: Device, *, vgpu_instances: int = 0, claimed_by: str = "") -> device_pb2.Device:
    sriov = d.sriov or {}
    msg = device_pb2.Device(
        id=d.id,
        host=d.host,
        address=d.address,
        kind=_KINDS.get(d.kind, device_pb2.DEVICE_KIND_UNSPECIFIED),
        vendor_id=f"{d.vendor_id:04x}",
        product_id=f"{d.product_id:04x}",
        vendor_name=d.vendor_name,
        product_name=d.product_name,
        model=d.model,
        class_code=f"{d.class_code:06x}",
        driver=d.driver,
        iommu_group_members=d.iommu_group_members,
        sriov=device_pb2.SriovInfo(
            is_physical_function=bool(sriov.get("is_pf")),
            is_virtual_function=bool(sriov.get("pf")),
            total_vfs=int(sriov.get("totalvfs") or 0),
            physical_function=sriov.get("pf") or "",
            virtual_functions=sriov.get("vfs") or [],
        ),
        mdev_types=[
            device_pb2.MdevType(
                name=t["name"],
                display_name=t.get("display_name", ""),
                available_instances=int(t.get("available", 0)),
                max_instances=int(t.get("max_instances", 0)),
                device_api=t.get("device_api", ""),
            )
            for t in d.mdev_types
        ],
        health=_HEALTH.get(d.health, device_pb2.DEVICE_HEALTH_UNSPECIFIED),
        health_reasons=d.health_reasons,
        claimed_by=claimed_by,
        vgpu_instances=vgpu_instances,
        telemetry=telemetry(d.nvml or {}),
        update_time=convert.ts(d.updated_at),
    )
    if d.numa_node is not None:
        msg.numa_node = d.numa_node
    if d.iommu_group is not None:
        msg.iommu_group = d.iommu_group
    if d.mig:
        msg.mig.CopyFrom(
            device_pb2.MigInfo(
                enabled=bool(d.mig.get("enabled")),
                total_slices=int(d.mig.get("total_slices", 0)),
                profiles=[
                    device_pb2.MigProfile(
                        name=p["name"],
                        slices=p["slices"],
                        memory_mib=p["memory_mib"],
                        max_instances=p["max_instances"],
                    )
                    for p in d.mig.get("profiles", [])
                ],
                instances=d.mig.get("instances", []),
            )
        )
    return msg


def sample(s: DeviceSample) -> device_pb2.TelemetrySample:
    msg = device_pb2.TelemetrySample(time=convert.ts(s.time))
    for name, value in (
        ("gpu_utilization", s.gpu_util),
        ("memory_utilization", s.mem_util),
        ("memory_used_mib", s.memory_used_mib),
        ("temperature_c", s.temperature_c),
        ("power_w", s.power_w),
    ):
        if value is not None:
            setattr(msg, name, int(value) if name == "memory_used_mib" else value)
    return msg


@servicer
class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    def __init__(self, devices: DeviceService) -> None:
        self.devices = devices

    def _many(self, rows: list[Device]) -> list[device_pb2.Device]:
        owners = self.devices.claims_by_device()
        return [device(d, claimed_by=owners.get(d.id, "")) for d in rows]

    def ListDevices(
        self, request: device_pb2.ListDevicesRequest, context: Ctx
    ) -> device_pb2.ListDevicesResponse:
        kind = _KIND_NAMES.get(request.kind, "")
        if request.kind and not kind:
            raise InvalidArgument("kind", f"unknown kind {request.kind}")
        return device_pb2.ListDevicesResponse(
            devices=self._many(self.devices.list_devices(request.host, kind))
        )

    def GetDevice(
        self, request: device_pb2.GetDeviceRequest, context: Ctx
    ) -> device_pb2.GetDeviceResponse:
        return device_pb2.GetDeviceResponse(device=self._many([self.devices.get(request.id)])[0])

    def GetDeviceTelemetry(
        self, request: device_pb2.GetDeviceTelemetryRequest, context: Ctx
    ) -> device_pb2.GetDeviceTelemetryResponse:
        return device_pb2.GetDeviceTelemetryResponse(
            samples=[sample(s) for s in self.devices.samples(request.id, request.limit)]
        )

    def SetDeviceHealth(
        self, request: device_pb2.SetDeviceHealthRequest, context: Ctx
    ) -> device_pb2.SetDeviceHealthResponse:
        if request.health not in (
            device_pb2.DEVICE_HEALTH_HEALTHY,
            device_pb2.DEVICE_HEALTH_TAINTED,
        ):
            raise InvalidArgument("health", "must be HEALTHY or TAINTED")
        d = self.devices.set_health(
            request.id, request.health == device_pb2.DEVICE_HEALTH_HEALTHY, request.reason
        )
        return device_pb2.SetDeviceHealthResponse(device=self._many([d])[0])

    def RescanDevices(
        self, request: device_pb2.RescanDevicesRequest, context: Ctx
    ) -> device_pb2.RescanDevicesResponse:
        if not request.host:
            raise InvalidArgument("host", "is required")
        return device_pb2.RescanDevicesResponse(
            devices=self._many(self.devices.rescan(request.host))
        )

    def PlanMigGeometry(
        self, request: device_pb2.PlanMigGeometryRequest, context: Ctx
    ) -> device_pb2.PlanMigGeometryResponse:
        if not request.host:
            raise InvalidArgument("host", "is required")
        plan = self.devices.plan_mig(request.host, list(request.requests))
        return device_pb2.PlanMigGeometryResponse(
            geometries=[
                device_pb2.MigGeometry(
                    device_id=g.device_id,
                    profiles=[p.profile for p in g.geometry],
                    stranded_slices=g.stranded_slices,
                )
                for g in plan.gpus
            ],
            unplaced=[
                f"{request.requests[int(u.demand_id[3:])]}: {u.reason}" for u in plan.unplaced
            ],
        )

    def ApplyMigGeometry(
        self, request: device_pb2.ApplyMigGeometryRequest, context: Ctx
    ) -> device_pb2.ApplyMigGeometryResponse:
        op = self.devices.apply_mig(request.device_id, list(request.profiles))
        return device_pb2.ApplyMigGeometryResponse(operation=convert.operation(op))
