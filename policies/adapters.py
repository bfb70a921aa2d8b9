"""Plug the scheduler (vmmgr.scheduler) into the planners' seams.

``scheduler_fits`` turns the scheduler's filter chain into the ``fits`` callable the balance and
power planners take; ``scheduler_place_batch`` is the batch placement the recovery planner takes.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.fits import FitsFn
from policies.recover import PlaceBatch
from vmmgr.scheduler.config import BatchOrder
from vmmgr.scheduler.scheduler import Scheduler
from vmmgr.snapshot import ClusterSnapshot, PlacementRequest, VMSnap


def migration_request(vm: VMSnap, host: str) -> PlacementRequest:
    """The placement question a live migration of ``vm`` to ``host`` asks."""
    return PlacementRequest(
        vm_id=vm.id,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        disk_gib=vm.disk_gib,
        vgpu_type=vm.vgpu_type,
        mig_profile=vm.mig_profile,
        groups=vm.groups,
        host=host,
        exclude_hosts=frozenset({vm.host}) if vm.host else frozenset(),
    )


def scheduler_fits(scheduler: Scheduler) -> FitsFn:
    def fits(snapshot: ClusterSnapshot, vm: VMSnap, host: str) -> bool:
        return scheduler.place(snapshot, migration_request(vm, host)).host == host

    return fits


def scheduler_place_batch(scheduler: Scheduler) -> PlaceBatch:
    def place(snapshot: ClusterSnapshot, requests: Sequence[PlacementRequest]) -> list[str | None]:
        return [p.host for p in scheduler.place_batch(snapshot, requests, order=BatchOrder.GIVEN)]

    return place
