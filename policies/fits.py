"""Placement checks planners use for moves, and replaying moves onto a snapshot.

``FitsFn`` is the swappable seam: the scheduler's filter chain can be passed to any planner as
``fits(snapshot_after_moves, vm, host_name) -> bool``. Planners always apply the built-in rules
(``default_fits``: host up, same pool, vCPU/memory capacity, vGPU/MIG slots, hard
(anti-)affinity, no whole passthrough devices) and ask ``fits`` in addition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from policies.model import ClusterModel, Limits
from policies.plan import Move
from vmmgr.snapshot import ClusterSnapshot, VMSnap

FitsFn = Callable[[ClusterSnapshot, VMSnap, str], bool]


def default_fits(
    snapshot: ClusterSnapshot, vm: VMSnap, host: str, limits: Limits | None = None
) -> bool:
    model = ClusterModel(snapshot, limits)
    current = model.vms.get(vm.id, vm)
    return model.fits(current, host)


def make_default_fits(limits: Limits) -> FitsFn:
    def fits(snapshot: ClusterSnapshot, vm: VMSnap, host: str) -> bool:
        return default_fits(snapshot, vm, host, limits)

    return fits


def apply_moves(
    snapshot: ClusterSnapshot, moves: Iterable[Move], limits: Limits | None = None
) -> ClusterSnapshot:
    """The snapshot after ``moves`` (in order), simulated exactly as the planners simulate it."""
    model = ClusterModel(snapshot, limits)
    for m in moves:
        model.move(m.vm_id, m.dst)
    return model.to_snapshot()


def check_moves(
    snapshot: ClusterSnapshot, moves: Iterable[Move], limits: Limits | None = None
) -> list[str]:
    """Replay ``moves`` one by one against ``default_fits``; return what each broken one broke."""
    model = ClusterModel(snapshot, limits)
    problems: list[str] = []
    for m in moves:
        vm = model.vms.get(m.vm_id)
        if vm is None:
            problems.append(f"{m.vm_id}: unknown VM")
            continue
        if vm.host != m.src:
            problems.append(f"{m.vm_id}: on {vm.host}, plan says {m.src}")
        if not model.fits(vm, m.dst):
            problems.append(f"{m.vm_id}: does not fit {m.dst}")
        model.move(m.vm_id, m.dst)
    return problems
