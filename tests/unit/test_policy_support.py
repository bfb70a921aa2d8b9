"""Snapshot builders shared by the policy tests (and tests that the builders are consistent)."""

from __future__ import annotations

from collections.abc import Sequence

from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    DeviceSnap,
    GroupSnap,
    HostSnap,
    HostState,
    MdevTypeSnap,
    VMSnap,
)


def vm(
    vm_id: str,
    host: str | None,
    vcpus: int = 2,
    mem: int = 4096,
    **kw: object,
) -> VMSnap:
    return VMSnap(id=vm_id, name=vm_id, host=host, vcpus=vcpus, memory_mib=mem, **kw)  # type: ignore[arg-type]


def cluster(
    hosts: Sequence[tuple[str, int, int]] | Sequence[HostSnap],
    vms: Sequence[VMSnap] = (),
    groups: Sequence[GroupSnap] = (),
) -> ClusterSnapshot:
    """Hosts as (name, cpus, memory_mib) or HostSnap; used_* and vms filled from ``vms``."""
    snaps = [
        h if isinstance(h, HostSnap) else HostSnap(h[0], HostState.UP, h[1], h[2]) for h in hosts
    ]
    out = []
    for h in snaps:
        mine = [v for v in vms if v.host == h.name]
        run = [v for v in mine if v.running]
        out.append(
            HostSnap(
                name=h.name,
                state=h.state,
                cpus=h.cpus,
                memory_mib=h.memory_mib,
                used_vcpus=sum(v.vcpus for v in run),
                used_memory_mib=sum(v.memory_mib for v in run),
                pool=h.pool,
                devices=h.devices,
                cpu_load=h.cpu_load,
                tags=h.tags,
                vms=tuple(v.id for v in mine),
            )
        )
    return ClusterSnapshot(tuple(out), tuple(vms), tuple(groups))


def vgpu_device(
    host: str,
    addr: str,
    type_name: str = "nvidia-1",
    max_inst: int = 4,
    claims: int = 0,
    util: float | None = None,
) -> DeviceSnap:
    return DeviceSnap(
        id=f"{host}/{addr}",
        host=host,
        address=addr,
        kind=DeviceKind.GPU,
        vendor_id=0x10DE,
        product_id=0x20B0,
        model="A100",
        mdev_types=(MdevTypeSnap(type_name, "GRID A100-10C", max_inst - claims, max_inst),),
        active_mdev_type=type_name if claims else None,
        mdev_claims=claims,
        utilization=util,
    )


def test_cluster_builder_accounts_running_vms_only() -> None:
    s = cluster([("a", 8, 8192)], [vm("x", "a", 2, 1024), vm("y", "a", 4, 2048, running=False)])
    (h,) = s.hosts
    assert (h.used_vcpus, h.used_memory_mib, h.vms) == (2, 1024, ("x", "y"))
