"""Elastic scaling groups (pure): forecast load -> desired size -> VMs to create or remove.

A group's members are the VMs whose ``groups`` name it. Its load is the sum over members of the
target metric (e.g. CPU utilisation 0..1 per member), and the caller passes a forecast of that
total for the next few intervals (``policies.forecast``). The group is sized so that the forecast
peak spread over the members sits at ``target`` per member:

    desired = ceil(peak / target), clamped to [min_size, max_size]

Scale-in is deliberately slower than scale-out: it sizes for ``target * (1 - in_margin)`` (so a
load hovering at a boundary does not flap) and has its own, longer cooldown. min/max violations
are corrected whatever the cooldowns say.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from policies.plan import CreateVM, Plan, RemoveVM
from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import ClusterSnapshot, PlacementRequest, VMSnap

_NS = uuid.UUID("5d7b0f0e-6a55-4c1e-9a57-0c2f4e1f7a11")  # vmmgr scaling-group id namespace


class RemovalOrder(StrEnum):
    NEWEST = "newest"
    LEAST_LOADED = "least-loaded"


@dataclass(frozen=True, slots=True)
class ScalingGroup:
    name: str
    min_size: int
    max_size: int
    target: float  # per-member value of the metric to aim for (e.g. 0.6 CPU)
    template: PlacementRequest  # shape of new members; its vm_id is replaced
    metric: str = "cpu"
    scale_out_cooldown_s: float = 300.0
    scale_in_cooldown_s: float = 900.0
    in_margin: float = 0.15
    max_step: int = 0  # most members added or removed at once; 0 = no limit
    removal: RemovalOrder = RemovalOrder.NEWEST

    def validate(self) -> None:
        if self.min_size < 0:
            raise InvalidArgument("min_size", "must not be negative")
        if self.max_size < self.min_size:
            raise InvalidArgument("max_size", "must be at least min_size")
        if not self.target > 0:
            raise InvalidArgument("target", "must be positive")
        if not 0 <= self.in_margin < 1:
            raise InvalidArgument("in_margin", "must be in [0, 1)")
        if self.max_step < 0:
            raise InvalidArgument("max_step", "must not be negative")


@dataclass(frozen=True, slots=True)
class ScaleState:
    last_out: float = -math.inf
    last_in: float = -math.inf
    seq: int = 0  # members created so far (names new VM ids deterministically)


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    group: str
    current: int
    desired: int
    create: tuple[PlacementRequest, ...]
    remove: tuple[str, ...]
    state: ScaleState
    reason: str

    def to_plan(self, policy: str = "scale") -> Plan:
        stage = tuple(CreateVM(r, self.group) for r in self.create) + tuple(
            RemoveVM(v, self.group) for v in self.remove
        )
        return Plan(policy, (stage,) if stage else (), self.reason)


def members(snapshot: ClusterSnapshot, group: str) -> list[VMSnap]:
    return [vm for vm in snapshot.vms if group in vm.groups]


def group_load(snapshot: ClusterSnapshot, group: str) -> float:
    """Current total CPU load of a group's running members (unknown load counts as 0)."""
    return sum(vm.cpu_load or 0.0 for vm in members(snapshot, group) if vm.running)


def new_vm_id(group: str, seq: int) -> str:
    return str(uuid.uuid5(_NS, f"{group}:{seq}"))


def _removal_order(vms: Sequence[VMSnap], order: RemovalOrder) -> list[VMSnap]:
    """Stopped members first, then newest (or least loaded, newest first among equals)."""
    if order == RemovalOrder.LEAST_LOADED:
        return sorted(vms, key=lambda v: (v.running, v.cpu_load or 0.0, -v.created_at, v.id))
    return sorted(vms, key=lambda v: (v.running, -v.created_at, v.id))


def plan_scale(
    snapshot: ClusterSnapshot,
    group: ScalingGroup,
    forecast: Sequence[float],
    state: ScaleState | None = None,
    *,
    now: float,
) -> ScaleDecision:
    """Decide a group's size from the forecast total load (``forecast`` may be empty: then only
    the min/max bounds are enforced)."""
    group.validate()
    st = state or ScaleState()
    current_members = members(snapshot, group.name)
    current = len(current_members)
    bounded = min(max(current, group.min_size), group.max_size)
    desired, why = bounded, "within bounds"
    if forecast and bounded == current:
        peak = max(max(forecast), 0.0)
        out_size = min(max(math.ceil(peak / group.target - 1e-9), group.min_size), group.max_size)
        in_target = group.target * (1.0 - group.in_margin)
        in_size = min(max(math.ceil(peak / in_target - 1e-9), group.min_size), group.max_size)
        if out_size > current:
            if now - st.last_out >= group.scale_out_cooldown_s:
                desired, why = out_size, f"forecast peak {peak:.2f} needs {out_size}"
            else:
                why = "scale-out cooldown"
        elif in_size < current:
            if now - max(st.last_in, st.last_out) >= group.scale_in_cooldown_s:
                desired, why = in_size, f"forecast peak {peak:.2f} needs only {in_size}"
            else:
                why = "scale-in cooldown"
        else:
            why = f"forecast peak {peak:.2f} fits {current}"
    elif bounded != current:
        why = f"size {current} outside [{group.min_size}, {group.max_size}]"
    if group.max_step and abs(desired - current) > group.max_step:
        desired = current + group.max_step * (1 if desired > current else -1)
    create: list[PlacementRequest] = []
    remove: list[str] = []
    seq = st.seq
    new_state = st
    if desired > current:
        for _ in range(desired - current):
            groups = tuple(dict.fromkeys((*group.template.groups, group.name)))
            create.append(replace(group.template, vm_id=new_vm_id(group.name, seq), groups=groups))
            seq += 1
        new_state = replace(st, last_out=now, seq=seq)
    elif desired < current:
        victims = _removal_order(current_members, group.removal)[: current - desired]
        remove = [v.id for v in victims]
        new_state = replace(st, last_in=now)
    return ScaleDecision(
        group.name,
        current,
        desired,
        tuple(create),
        tuple(remove),
        new_state,
        f"{group.name}: {current} -> {desired} ({why})",
    )
