"""Build the frozen ClusterSnapshot that every decision reads, straight from the store.

Resource accounting (what a host's ``used_*`` sums, kept in ``host_usage`` by triggers):
**every VM whose ``host`` is set holds its vcpus/memory/disk on that host, whatever its
state** -- stopped, paused, crashed, migrating, deleting and error included. A stopped VM
keeps its reservation so that starting it on its host always fits (the same choice as Nova); a
deleting or failed VM still has a domain/volumes on the host until undo finishes, and services
clear ``VM.host`` once everything is released. Counting conservatively can only make placement
refuse, never overcommit.

``VMSnap.running`` is the observed state: running, paused, migrating or shutting_down (a QEMU
process exists). Devices: only ``present`` devices appear; ``claimed_by`` is the VM holding the
whole device; a VM holding any device claim is not live-migratable.

Speed: one prepared query per table (no ORM objects, no JSON spec decoding for VMs), so a
snapshot of 10,000 VMs costs a few table scans.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import and_, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceHealth,
    DeviceKind,
    DeviceSnap,
    GroupSnap,
    HostSnap,
    HostState,
    MdevTypeSnap,
    MigProfileSnap,
    MigSnap,
    NumaCell,
    VMSnap,
)
from vmmgr.state.models import (
    VM,
    ClaimKind,
    Device,
    DeviceClaim,
    DeviceSample,
    Host,
    HostSample,
    HostUsage,
    PlacementGroup,
    VMGroupMember,
    VMState,
)
from vmmgr.state.prepared import Prepared

RUNNING_STATES = frozenset(
    {VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING, VMState.SHUTTING_DOWN}
)


def _latest(table: Any, key: Any, value: Any) -> Any:
    """(key, value) of each key's newest sample."""
    newest = select(key.label("k"), func.max(table.time).label("t")).group_by(key).subquery()
    return select(key, value).join(newest, and_(key == newest.c.k, table.time == newest.c.t))


# Built and compiled once: building and compiling cost several times running them here.
_DEVICE_UTIL = Prepared(
    _latest(DeviceSample, col(DeviceSample.device_id), col(DeviceSample.gpu_util))
)
_HOST_LOAD = Prepared(_latest(HostSample, col(HostSample.host), col(HostSample.cpu_util)))
_CLAIMS = Prepared(
    sa_select(
        col(DeviceClaim.vm_id),
        col(DeviceClaim.device_id),
        col(DeviceClaim.kind),
        col(DeviceClaim.mdev_type),
        col(DeviceClaim.mig_profile),
    )
)
_MEMBERS = Prepared(
    sa_select(col(VMGroupMember.vm_id), col(VMGroupMember.group_name)).order_by(
        col(VMGroupMember.group_name)
    )
)
_GROUPS = Prepared(
    sa_select(
        col(PlacementGroup.name), col(PlacementGroup.policy), col(PlacementGroup.hard)
    ).order_by(col(PlacementGroup.name))
)
_VM_COLUMNS = (
    col(VM.id),
    col(VM.name),
    col(VM.host),
    col(VM.vcpus),
    col(VM.memory_mib),
    col(VM.disk_gib),
    col(VM.state),
    col(VM.ha),
    col(VM.ha_priority),
)
_VMS = Prepared(sa_select(*_VM_COLUMNS).order_by(col(VM.id)))
_MEMBER_VMS = Prepared(
    sa_select(*_VM_COLUMNS)
    .where(col(VM.id).in_(sa_select(col(VMGroupMember.vm_id))))
    .order_by(col(VM.id))
)
_DEVICE_T = Device.__table__  # type: ignore[attr-defined]
_DEVICES = Prepared(
    sa_select(_DEVICE_T).where(_DEVICE_T.c.present.is_(True)).order_by(_DEVICE_T.c.id)
)
_HOST_T = Host.__table__  # type: ignore[attr-defined]
_USAGE_T = HostUsage.__table__  # type: ignore[attr-defined]
# each host with what its VMs hold (kept by triggers; no usage row: no VM placed there yet)
_HOSTS = Prepared(
    sa_select(
        _HOST_T,
        func.coalesce(_USAGE_T.c.vcpus, 0).label("used_vcpus"),
        func.coalesce(_USAGE_T.c.memory_mib, 0).label("used_memory_mib"),
        func.coalesce(_USAGE_T.c.disk_gib, 0).label("used_disk_gib"),
    )
    .select_from(_HOST_T.outerjoin(_USAGE_T, _USAGE_T.c.host == _HOST_T.c.name))
    .order_by(_HOST_T.c.name)
)


def _mig_snap(mig: dict[str, Any], claimed_profiles: list[str]) -> MigSnap | None:
    if not mig:
        return None
    profiles = tuple(
        MigProfileSnap(
            name=str(p["name"]),
            slices=int(p.get("slices", 0)),
            memory_mib=int(p.get("memory_mib", 0)),
            max_instances=int(p.get("max_instances", 0)),
        )
        for p in mig.get("profiles", [])
    )
    # Instances NVML reports and instances vmmgr claimed overlap (a claimed instance, once
    # created, is reported too): per profile take the larger count, which covers foreign
    # instances and claimed-but-not-yet-created ones without double counting.
    reported = Counter(str(n) for n in mig.get("instances", []))
    claimed = Counter(claimed_profiles)
    merged = reported | claimed
    instances = tuple(sorted(merged.elements()))
    return MigSnap(
        enabled=bool(mig.get("enabled", False)),
        total_slices=int(mig.get("total_slices", 0)),
        profiles=profiles,
        instances=instances,
    )


def build_snapshot(
    session: Session, *, placement_only: bool = False, groups: bool = True
) -> ClusterSnapshot:
    """The cluster as the store holds it now.

    ``placement_only``: what placing new VMs needs and nothing more, so its cost does not grow
    with the number of VMs: ``vms`` holds only VMs in placement groups (for affinity) and
    ``HostSnap.vms`` is empty. With ``groups=False`` as well (placing a VM that is in no
    group, which no group rule can concern) it has no groups and no VMs at all: three queries
    fewer. Per-host usage always comes from ``host_usage`` (kept by triggers on ``vm``), never
    from summing VM rows.
    """
    with_groups = groups or not placement_only
    device_rows = _DEVICES.rows(session, {})
    # Without VMs in the snapshot, claims and device load only describe devices: none, none.
    device_facts = with_groups or bool(device_rows)
    # ---- claims, indexed both ways
    whole_by_device: dict[str, str] = {}
    mdev_by_device: dict[str, list[str]] = defaultdict(list)
    mig_by_device: dict[str, list[str]] = defaultdict(list)
    claims_by_vm: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
    for vm_id, dev_id, kind, mdev_type, mig_profile in (
        _CLAIMS.rows(session, {}) if device_facts else ()
    ):
        claims_by_vm[vm_id].append((dev_id, kind, mdev_type, mig_profile))
        if kind == ClaimKind.PCI:
            whole_by_device[dev_id] = vm_id
        elif kind == ClaimKind.MDEV:
            mdev_by_device[dev_id].append(mdev_type)
        elif kind == ClaimKind.MIG:
            mig_by_device[dev_id].append(mig_profile)

    # ---- groups
    members: dict[str, set[str]] = defaultdict(set)
    groups_by_vm: dict[str, list[str]] = defaultdict(list)
    for vm_id, group in _MEMBERS.rows(session, {}) if with_groups else ():
        members[group].add(vm_id)
        groups_by_vm[vm_id].append(group)
    group_snaps = tuple(
        GroupSnap(name=name, policy=policy, hard=hard, members=frozenset(members.get(name, ())))
        for name, policy, hard in (_GROUPS.rows(session, {}) if with_groups else ())
    )

    # ---- VMs (per-host usage comes with the hosts, from host_usage)
    vms_by_host: dict[str, list[str]] = defaultdict(list)
    vm_snaps: list[VMSnap] = []
    vm_rows = (_MEMBER_VMS if placement_only else _VMS).rows(session, {}) if with_groups else []
    for vm_id, name, host, vcpus, memory_mib, disk_gib, state, ha, priority in vm_rows:
        if host is not None and not placement_only:
            vms_by_host[host].append(vm_id)
        claims = claims_by_vm.get(vm_id, ())
        vm_snaps.append(
            VMSnap(
                id=vm_id,
                name=name,
                host=host,
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                running=state in RUNNING_STATES,
                groups=tuple(groups_by_vm.get(vm_id, ())),
                devices=tuple(sorted(d for d, k, _, _ in claims if k == ClaimKind.PCI)),
                vgpu_type=next((t for _, k, t, _ in claims if k == ClaimKind.MDEV), None),
                mig_profile=next((p for _, k, _, p in claims if k == ClaimKind.MIG), None),
                ha=ha,
                priority=priority,
                migratable=not claims,
            )
        )

    # ---- devices
    util = {
        d: u / 100.0
        for d, u in (_DEVICE_UTIL.rows(session, {}) if device_facts else ())
        if u is not None
    }
    devices_by_host: dict[str, list[DeviceSnap]] = defaultdict(list)
    for dev in device_rows:
        mdev_claims = mdev_by_device.get(dev.id, [])
        devices_by_host[dev.host].append(
            DeviceSnap(
                id=dev.id,
                host=dev.host,
                address=dev.address,
                kind=DeviceKind(dev.kind),
                vendor_id=dev.vendor_id,
                product_id=dev.product_id,
                model=dev.model,
                numa_node=dev.numa_node,
                iommu_group=dev.iommu_group,
                health=DeviceHealth(dev.health),
                claimed_by=whole_by_device.get(dev.id),
                mdev_types=tuple(
                    MdevTypeSnap(
                        name=str(t.get("name", "")),
                        display_name=str(t.get("display_name", "")),
                        available=int(t.get("available", 0)),
                        max_instances=int(t.get("max_instances", 0)),
                    )
                    for t in dev.mdev_types
                ),
                active_mdev_type=mdev_claims[0] if mdev_claims else None,
                mdev_claims=len(mdev_claims),
                mig=_mig_snap(dev.mig, mig_by_device.get(dev.id, [])),
                is_vf=bool((dev.sriov or {}).get("pf")),
                utilization=util.get(dev.id),
            )
        )

    # ---- hosts
    load = {h: u for h, u in _HOST_LOAD.rows(session, {}) if u is not None}
    hosts = []
    for h in _HOSTS.rows(session, {}):
        hosts.append(
            HostSnap(
                name=h.name,
                state=HostState(h.state),
                cpus=h.cpus,
                memory_mib=h.memory_mib,
                disk_gib=h.disk_gib,
                used_vcpus=h.used_vcpus,
                used_memory_mib=h.used_memory_mib,
                used_disk_gib=h.used_disk_gib,
                numa_cells=tuple(
                    NumaCell(id=int(c["id"]), cpus=int(c["cpus"]), memory_mib=int(c["memory_mib"]))
                    for c in h.numa_cells
                ),
                tags=frozenset(h.tags),
                pool=h.pool,
                devices=tuple(devices_by_host.get(h.name, ())),
                cpu_load=load.get(h.name),
                vms=tuple(vms_by_host.get(h.name, ())),
            )
        )
    return ClusterSnapshot(hosts=tuple(hosts), vms=tuple(vm_snaps), groups=group_snaps)
