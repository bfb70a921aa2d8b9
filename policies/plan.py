"""What planners hand to the one shared executor: actions grouped into stages.

Stages run one after the other; the actions inside one stage touch disjoint hosts and may run in
parallel. The executor (the lead's, over Operations) is the only thing that acts on a Plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vmmgr.snapshot import PlacementRequest


@dataclass(frozen=True, slots=True)
class Move:
    """Live-migrate (or, for a stopped VM, re-home) ``vm_id`` from ``src`` to ``dst``."""

    vm_id: str
    src: str
    dst: str
    live: bool = True
    gain: float = 0.0  # score drop this move bought (planner bookkeeping)
    cost: float = 0.0  # its move cost in score units


@dataclass(frozen=True, slots=True)
class StartVM:
    """(Re)start ``vm_id`` on ``host`` (HA restart after fencing, crash restart)."""

    vm_id: str
    host: str


@dataclass(frozen=True, slots=True)
class CreateVM:
    request: PlacementRequest
    group: str = ""  # scaling group it belongs to


@dataclass(frozen=True, slots=True)
class RemoveVM:
    vm_id: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class PowerOff:
    host: str


@dataclass(frozen=True, slots=True)
class Fence:
    host: str


Action = Move | StartVM | CreateVM | RemoveVM | PowerOff | Fence


@dataclass(frozen=True, slots=True)
class Plan:
    policy: str
    stages: tuple[tuple[Action, ...], ...] = ()
    reason: str = ""  # why this plan (or why it is empty)
    recommend_only: bool = False  # executor must only report it

    @property
    def empty(self) -> bool:
        return not any(self.stages)

    def actions(self) -> list[Action]:
        return [a for stage in self.stages for a in stage]


def _hosts(a: Action) -> tuple[str, ...]:
    if isinstance(a, Move):
        return (a.src, a.dst)
    if isinstance(a, StartVM):
        return (a.host,)
    if isinstance(a, PowerOff | Fence):
        return (a.host,)
    return ()


A = TypeVar("A", Move, StartVM, CreateVM, RemoveVM, PowerOff, Fence, Action)


def disjoint_stages(actions: Sequence[A]) -> tuple[tuple[A, ...], ...]:
    """Split an ordered action list into stages whose actions touch disjoint hosts.

    An action goes one stage after the last stage holding an earlier action on any of its hosts,
    so per host the original order is kept (a move into a host that an earlier move freed still
    runs after it) while unrelated actions run side by side. Actions that name no host keep
    their own order in a trailing stage each.
    """
    last: dict[str, int] = {}
    stages: list[list[A]] = []
    floating: list[A] = []
    for a in actions:
        hosts = _hosts(a)
        if not hosts:
            floating.append(a)
            continue
        k = max((last[h] + 1 for h in hosts if h in last), default=0)
        while len(stages) <= k:
            stages.append([])
        stages[k].append(a)
        for h in hosts:
            last[h] = k
    out = [tuple(s) for s in stages]
    out.extend((a,) for a in floating)
    return tuple(out)


def stages_of(actions: Iterable[Action]) -> tuple[tuple[Action, ...], ...]:
    return disjoint_stages(list(actions))
