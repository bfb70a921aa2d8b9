"""Store rows and service results -> protos. One function per message, nothing clever."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from vmmgr.ports import DomainInfo
from vmmgr.requests import CloudInitRequest, DiskRequest, FpgaRequest, NicRequest, VmCreate
from vmmgr.scheduler.results import Placement
from vmmgr.services.events import EventRecord
from vmmgr.snapshot import GpuRequest
from vmmgr.state.models import VM, Host, Image, ImageReplica, Operation
from vmmgr.v1 import event_pb2, host_pb2, image_pb2, operation_pb2, vm_pb2

_OP_STATES = {
    "pending": operation_pb2.OPERATION_STATE_PENDING,
    "running": operation_pb2.OPERATION_STATE_RUNNING,
    "succeeded": operation_pb2.OPERATION_STATE_SUCCEEDED,
    "failed": operation_pb2.OPERATION_STATE_FAILED,
    "cancelled": operation_pb2.OPERATION_STATE_CANCELLED,
}
OP_STATE_NAMES = {v: k for k, v in _OP_STATES.items()}

_HOST_STATES = {
    "up": host_pb2.HOST_STATE_UP,
    "down": host_pb2.HOST_STATE_DOWN,
    "maintenance": host_pb2.HOST_STATE_MAINTENANCE,
}
HOST_STATE_NAMES = {v: k for k, v in _HOST_STATES.items()}

_SEVERITIES = {
    "info": event_pb2.SEVERITY_INFO,
    "warning": event_pb2.SEVERITY_WARNING,
    "error": event_pb2.SEVERITY_ERROR,
}


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    t = Timestamp()
    t.FromDatetime(value)
    return t


def operation(op: Operation) -> operation_pb2.Operation:
    msg = operation_pb2.Operation(
        id=op.id,
        kind=op.kind,
        target=op.target,
        state=_OP_STATES.get(op.state, operation_pb2.OPERATION_STATE_UNSPECIFIED),
        progress=op.progress,
        message=op.message,
        result=op.result,
        cancel_requested=op.cancel_requested,
        request_id=op.request_id,
        create_time=ts(op.created_at),
        update_time=ts(op.updated_at),
        end_time=ts(op.finished_at),
    )
    if op.error_code:
        msg.error.CopyFrom(
            operation_pb2.OperationError(
                code=op.error_code, message=op.error_message, field=op.error_field
            )
        )
    return msg


def host(
    h: Host, *, vm_count: int = 0, used_vcpus: int = 0, used_memory_mib: int = 0
) -> host_pb2.Host:
    return host_pb2.Host(
        name=h.name,
        uri=h.uri,
        state=_HOST_STATES.get(h.state, host_pb2.HOST_STATE_UNSPECIFIED),
        hostname=h.hostname,
        host_uuid=h.host_uuid,
        arch=h.arch,
        cpus=h.cpus,
        memory_mib=h.memory_mib,
        numa_cells=[
            host_pb2.NumaCell(id=c["id"], cpus=c["cpus"], memory_mib=c["memory_mib"])
            for c in h.numa_cells
        ],
        hypervisor=h.hypervisor,
        hypervisor_version=h.hypervisor_version,
        libvirt_version=h.libvirt_version,
        tags=h.tags,
        pool=h.pool,
        agent_address=h.agent_address,
        vm_count=vm_count,
        used_vcpus=used_vcpus,
        used_memory_mib=used_memory_mib,
        last_seen=ts(h.last_seen),
        error=h.error,
        domain_types=h.domain_types,
    )


def foreign_domain(d: DomainInfo) -> host_pb2.ForeignDomain:
    return host_pb2.ForeignDomain(uuid=d.uuid, name=d.name, state=d.state.value)


def event(e: EventRecord) -> event_pb2.Event:
    return event_pb2.Event(
        seq=e.seq,
        time=ts(e.time),
        kind=e.kind,
        resource=e.resource,
        severity=_SEVERITIES.get(e.severity, event_pb2.SEVERITY_UNSPECIFIED),
        message=e.message,
        attributes=e.attributes,
    )


# ---------------------------------------------------------------- VMs

_VM_STATES = {
    name.removeprefix("VM_STATE_").lower(): value for name, value in vm_pb2.VMState.items() if value
}
VM_STATE_NAMES = {v: k for k, v in _VM_STATES.items()}
_POWER = {
    "running": vm_pb2.POWER_STATE_RUNNING,
    "stopped": vm_pb2.POWER_STATE_STOPPED,
    "paused": vm_pb2.POWER_STATE_PAUSED,
}


def vm_create_from_proto(spec: vm_pb2.VMSpec) -> VmCreate:
    ci = None
    if spec.HasField("cloud_init"):
        c = spec.cloud_init
        ci = CloudInitRequest(
            user_data=c.user_data,
            network_config=c.network_config,
            ssh_authorized_keys=tuple(c.ssh_authorized_keys),
            hostname=c.hostname,
        )
    return VmCreate(
        name=spec.name,
        vcpus=spec.vcpus,
        memory_mib=spec.memory_mib,
        description=spec.description,
        disks=tuple(
            DiskRequest(image=d.image, size_gib=d.size_gib, bus=d.bus or "virtio")
            for d in spec.disks
        ),
        nics=tuple(NicRequest(network=n.network, mac=n.mac) for n in spec.networks),
        cloud_init=ci,
        gpus=tuple(GpuRequest(model=g.model, count=g.count or 1) for g in spec.gpus),
        vgpu_type=spec.vgpu_type,
        mig_profile=spec.mig_profile,
        fpgas=tuple(
            FpgaRequest(model=f.model, count=f.count or 1, profile=f.profile, allow_vf=f.allow_vf)
            for f in spec.fpgas
        ),
        groups=tuple(spec.groups),
        labels=dict(spec.labels),
        ha=spec.ha,
        ha_priority=spec.ha_priority,
        host=spec.host,
        required_host_tags=tuple(spec.required_host_tags),
        start=spec.start if spec.HasField("start") else True,
        project=spec.project or "default",
        domain_type=spec.domain_type,
        watchdog=spec.watchdog,
    )


def vm_spec(req: VmCreate) -> vm_pb2.VMSpec:
    spec = vm_pb2.VMSpec(
        name=req.name,
        description=req.description,
        vcpus=req.vcpus,
        memory_mib=req.memory_mib,
        disks=[vm_pb2.DiskSpec(image=d.image, size_gib=d.size_gib, bus=d.bus) for d in req.disks],
        networks=[vm_pb2.NetworkSpec(network=n.network, mac=n.mac) for n in req.nics],
        gpus=[vm_pb2.GpuRequest(model=g.model, count=g.count) for g in req.gpus],
        vgpu_type=req.vgpu_type,
        mig_profile=req.mig_profile,
        fpgas=[
            vm_pb2.FpgaRequest(model=f.model, count=f.count, profile=f.profile, allow_vf=f.allow_vf)
            for f in req.fpgas
        ],
        groups=req.groups,
        labels=req.labels,
        ha=req.ha,
        ha_priority=req.ha_priority,
        host=req.host,
        required_host_tags=req.required_host_tags,
        start=req.start,
        project=req.project,
        domain_type=req.domain_type,
        watchdog=req.watchdog,
    )
    if req.cloud_init is not None:
        # user-data may hold secrets: report only that it is set
        spec.cloud_init.CopyFrom(
            vm_pb2.CloudInit(
                hostname=req.cloud_init.hostname,
                ssh_authorized_keys=req.cloud_init.ssh_authorized_keys,
                user_data="(set)" if req.cloud_init.user_data else "",
            )
        )
    return spec


def vm(
    row: VM, *, volumes: list[str] | None = None, devices: list[vm_pb2.AttachedDevice] | None = None
) -> vm_pb2.VM:
    return vm_pb2.VM(
        id=row.id,
        spec=vm_spec(VmCreate.from_json(row.spec)),
        host=row.host or "",
        state=_VM_STATES.get(row.state, vm_pb2.VM_STATE_UNSPECIFIED),
        state_reason=row.state_reason,
        desired_power=_POWER.get(row.desired_power, vm_pb2.POWER_STATE_UNSPECIFIED),
        owner=row.owner,
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
        volumes=volumes or [],
        devices=devices or [],
    )


def explanation(p: Placement) -> vm_pb2.ExplainPlacementResponse:
    return vm_pb2.ExplainPlacementResponse(
        ranking=[
            vm_pb2.HostRanking(
                host=r.host,
                score=r.score,
                weighers=[vm_pb2.WeigherScore(weigher=w, score=s) for w, s in r.weights],
                devices=[d.device_id for d in r.devices],
            )
            for r in p.ranked
        ],
        rejections=[
            vm_pb2.FilterRejection(
                filter=f.name, hosts_rejected=f.rejected, samples=f.sample_lines()
            )
            for f in p.explanation.filters
            if f.rejected
        ],
        hosts_considered=p.explanation.hosts_total,
        chosen_host=p.host or "",
    )


def image(row: Image, replicas: list[ImageReplica]) -> image_pb2.Image:
    return image_pb2.Image(
        name=row.name,
        format=row.format,
        size_bytes=row.size_bytes,
        virtual_size_bytes=row.virtual_size_bytes,
        sha256=row.sha256,
        source=row.source,
        replicas=[image_pb2.ImageReplica(host=r.host, pool=r.pool, path=r.path) for r in replicas],
        create_time=ts(row.created_at),
    )
