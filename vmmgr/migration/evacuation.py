"""Plan the evacuation of a host entering maintenance (pure).

Every VM on the host gets one step: ``live`` / ``cold`` to a target, ``stop``, or ``blocked``.
The whole plan is computed against capacity before anything moves: each placement is made on
a snapshot that already holds the VMs placed before it (cpu, memory, disk, whole devices, vGPU
instances), so the plan never promises the same free room twice. Placement itself is a callback
(``place_fn(snapshot, request) -> host name | None``), normally ``Scheduler(config).place``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from vmmgr.errors import NotFound
from vmmgr.migration.matrix import Migratability
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceHealth,
    DeviceKind,
    DeviceSnap,
    GpuRequest,
    HostSnap,
    HostState,
    MdevTypeSnap,
    PlacementRequest,
    VMSnap,
)

EvacuationAction = Literal["live", "cold", "stop", "blocked"]
PlaceFn = Callable[[ClusterSnapshot, PlacementRequest], str | None]


class MatrixLike(Protocol):
    def get(self, vm_id: str, dest: str | None = None) -> Migratability: ...


@dataclass(frozen=True, slots=True)
class EvacuationStep:
    vm_id: str
    vm_name: str
    action: EvacuationAction
    target_host: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    host: str
    steps: tuple[EvacuationStep, ...]

    @property
    def feasible(self) -> bool:
        """True when no step is blocked: the host can enter maintenance with this plan."""
        return all(s.action != "blocked" for s in self.steps)

    def by_action(self, action: EvacuationAction) -> tuple[EvacuationStep, ...]:
        return tuple(s for s in self.steps if s.action == action)


def placement_request(vm: VMSnap, source: HostSnap) -> PlacementRequest:
    """What ``vm`` needs from a new host (its whole devices looked up on ``source``)."""
    held = [d for d in source.devices if d.id in vm.devices]
    gpus = Counter(d.model for d in held if d.kind == DeviceKind.GPU)
    fpgas = Counter(d.model for d in held if d.kind == DeviceKind.FPGA)
    fpga_model, fpga_count = fpgas.most_common(1)[0] if fpgas else (None, 0)
    return PlacementRequest(
        vm_id=vm.id,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        disk_gib=vm.disk_gib,
        gpus=tuple(GpuRequest(model, n) for model, n in sorted(gpus.items())),
        vgpu_type=vm.vgpu_type,
        mig_profile=vm.mig_profile,
        fpga_model=fpga_model,
        fpga_count=fpga_count,
        groups=vm.groups,
        exclude_hosts=frozenset({source.name}),
    )


def _claim_devices(target: HostSnap, vm: VMSnap, source: HostSnap) -> tuple[DeviceSnap, ...]:
    """Mark on ``target`` the whole devices and vGPU instance ``vm`` will take there."""
    devices = list(target.devices)
    for held in (d for d in source.devices if d.id in vm.devices):
        for i, d in enumerate(devices):
            if (
                d.claimed_by is None
                and d.mdev_claims == 0
                and d.kind == held.kind
                and d.model == held.model
                and d.health == DeviceHealth.HEALTHY
            ):
                devices[i] = replace(d, claimed_by=vm.id)
                break
    if vm.vgpu_type:
        for i, d in enumerate(devices):
            types = {t.name: t for t in d.mdev_types}
            t = types.get(vm.vgpu_type)
            usable = d.active_mdev_type in (None, vm.vgpu_type) and d.claimed_by is None
            if t is not None and t.available > 0 and usable:
                new_types = tuple(
                    MdevTypeSnap(x.name, x.display_name, x.available - 1, x.max_instances)
                    if x.name == t.name
                    else x
                    for x in d.mdev_types
                )
                devices[i] = replace(
                    d,
                    active_mdev_type=vm.vgpu_type,
                    mdev_claims=d.mdev_claims + 1,
                    mdev_types=new_types,
                )
                break
    return tuple(devices)


def _with_vm_on(
    snap: ClusterSnapshot, vm: VMSnap, source: HostSnap, target: str
) -> ClusterSnapshot:
    hosts = []
    for h in snap.hosts:
        if h.name == target:
            h = replace(
                h,
                used_vcpus=h.used_vcpus + vm.vcpus,
                used_memory_mib=h.used_memory_mib + vm.memory_mib,
                used_disk_gib=h.used_disk_gib + vm.disk_gib,
                vms=(*h.vms, vm.id),
                devices=_claim_devices(h, vm, source),
            )
        hosts.append(h)
    vms = tuple(replace(v, host=target) if v.id == vm.id else v for v in snap.vms)
    return replace(snap, hosts=tuple(hosts), vms=vms)


def plan_evacuation(
    snapshot: ClusterSnapshot,
    host: str,
    matrix: MatrixLike,
    place_fn: PlaceFn,
    *,
    stop_blocked: bool = False,
) -> Plan:
    """One step per VM on ``host``; ``stop_blocked`` stops VMs that cannot move at all.

    Order: running VMs first, then by priority, then the largest first (they are the hardest
    to fit). A VM that is not running and finds no target stays, stopped ("stop").
    """
    source = next((h for h in snapshot.hosts if h.name == host), None)
    if source is None:
        raise NotFound(f"host {host} not in snapshot", field="host")
    work = replace(
        snapshot,
        hosts=tuple(
            replace(h, state=HostState.MAINTENANCE) if h.name == host else h for h in snapshot.hosts
        ),
    )
    vms = sorted(
        (v for v in snapshot.vms if v.host == host),
        key=lambda v: (not v.running, -v.priority, -v.memory_mib, -v.vcpus, v.id),
    )
    steps: list[EvacuationStep] = []

    def cannot_move(vm: VMSnap, reason: str) -> EvacuationStep:
        if not vm.running:
            return EvacuationStep(vm.id, vm.name, "stop", "", f"stays stopped: {reason}")
        if stop_blocked:
            return EvacuationStep(vm.id, vm.name, "stop", "", f"will be stopped: {reason}")
        return EvacuationStep(vm.id, vm.name, "blocked", "", reason)

    for vm in vms:
        verdict = matrix.get(vm.id)
        if verdict.mode == "blocked":
            steps.append(cannot_move(vm, verdict.reason))
            continue
        target = place_fn(work, placement_request(vm, source))
        if target is None or target == host:
            steps.append(cannot_move(vm, "no host fits"))
            continue
        verdict = matrix.get(vm.id, target)
        if verdict.mode == "blocked":
            steps.append(cannot_move(vm, verdict.reason))
            continue
        action: EvacuationAction = "live" if verdict.mode == "live" else "cold"
        steps.append(EvacuationStep(vm.id, vm.name, action, target, verdict.reason))
        work = _with_vm_on(work, vm, source, target)
    return Plan(host=host, steps=tuple(steps))
