"""Convergence schedule for a live migration, as data plus a pure step function.

A schedule is a list of steps keyed by seconds since the migration started::

    (Step(after_s=10, max_downtime_ms=300),
     Step(after_s=20, max_downtime_ms=1000),
     Step(after_s=30, action="postcopy"))

The driver polls job stats and asks ``next_action`` what to do; the function never sleeps and
never talks to libvirt, so every escalation rule is unit-tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from vmmgr.errors import InvalidArgument
from vmmgr.migration.progress import JobSample

StepAction = Literal["", "postcopy", "abort"]
ActionKind = Literal["none", "set_downtime", "postcopy", "abort"]
_ACTIONS = ("", "postcopy", "abort")


@dataclass(frozen=True, slots=True)
class Step:
    """At ``after_s``: raise max downtime to ``max_downtime_ms``, or take ``action``.

    On a step with an action, ``max_downtime_ms`` is ignored (the action ends pre-copy).
    """

    after_s: float
    max_downtime_ms: int = 0
    action: StepAction = ""


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the driver has applied so far; returned updated inside every ``Action``."""

    next_step: int = 0  # index of the first step not yet consumed
    max_downtime_ms: int = 0  # currently applied (0 = libvirt's default)
    postcopy_allowed: bool = False
    postcopy_started: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    state: ScheduleState
    max_downtime_ms: int = 0  # for "set_downtime"
    reason: str = ""


DEFAULT_SCHEDULE: tuple[Step, ...] = (
    Step(after_s=10, max_downtime_ms=500),
    Step(after_s=20, max_downtime_ms=1000),
    Step(after_s=40, max_downtime_ms=2000),
    Step(after_s=90, action="abort"),
)


def validate_schedule(steps: Sequence[Step], field: str = "schedule") -> tuple[Step, ...]:
    """Check a user-supplied schedule; errors name ``schedule[i].<field>``."""
    prev = -1.0
    for i, s in enumerate(steps):
        if s.after_s < 0 or s.after_s != s.after_s:
            raise InvalidArgument(f"{field}[{i}].after_s", "must be >= 0")
        if s.after_s < prev:
            raise InvalidArgument(f"{field}[{i}].after_s", "steps must be in increasing order")
        if s.action not in _ACTIONS:
            raise InvalidArgument(f"{field}[{i}].action", "must be '', 'postcopy' or 'abort'")
        if s.max_downtime_ms < 0:
            raise InvalidArgument(f"{field}[{i}].max_downtime_ms", "must be >= 0")
        if not s.action and s.max_downtime_ms == 0:
            raise InvalidArgument(f"{field}[{i}]", "a step needs max_downtime_ms or an action")
        prev = s.after_s
    return tuple(steps)


def transfer_started(stats: JobSample | None) -> bool:
    """True once QEMU moves memory. Before that (libvirt still preparing the destination) a
    downtime or post-copy request would reach QEMU ahead of the job's own settings and be lost
    or refused ("Enable postcopy ... before the start of migration")."""
    return stats is not None and stats.data_total > 0


def about_to_complete(stats: JobSample | None, max_downtime_ms: int) -> bool:
    """True when the remaining data fits in the allowed downtime at the current bandwidth.

    QEMU switches over by itself then; escalating (post-copy, abort) would only hurt.
    """
    if stats is None or stats.bandwidth_bps <= 0 or stats.iteration < 1:
        return False
    downtime_s = (max_downtime_ms or 300) / 1000.0
    return stats.data_remaining <= stats.bandwidth_bps * downtime_s


def next_action(
    schedule: Sequence[Step],
    elapsed_s: float,
    stats: JobSample | None,
    current: ScheduleState,
) -> Action:
    """The single next thing to do at ``elapsed_s`` given what was applied (``current``).

    Due steps are consumed in order. Several due downtime steps collapse into one
    ``set_downtime`` (the last value); a due action step is returned on its own call, after
    any downtime change before it. Once post-copy runs nothing else applies. A "postcopy" step
    for a VM that may not post-copy (operator did not opt in, VFIO devices) becomes "abort":
    the schedule asked to force completion by then, and pre-copy alone did not converge.
    Escalations wait while ``about_to_complete`` says QEMU is about to switch over, and nothing
    is applied before ``transfer_started``.
    """
    if current.postcopy_started:
        return Action("none", current)
    i = current.next_step
    if i < len(schedule) and schedule[i].after_s <= elapsed_s and not transfer_started(stats):
        return Action("none", current, reason="transfer not started yet")
    new_downtime = current.max_downtime_ms
    while i < len(schedule) and schedule[i].after_s <= elapsed_s:
        step = schedule[i]
        if step.action:
            if new_downtime != current.max_downtime_ms:
                break  # apply the downtime first; the action comes on the next call
            if about_to_complete(stats, current.max_downtime_ms):
                return Action("none", current, reason="about to complete; escalation held")
            done = replace(current, next_step=i + 1)
            if step.action == "postcopy":
                if current.postcopy_allowed:
                    return Action(
                        "postcopy",
                        replace(done, postcopy_started=True),
                        reason=f"switch to post-copy after {step.after_s:g}s",
                    )
                return Action(
                    "abort",
                    done,
                    reason=f"not converged after {step.after_s:g}s and post-copy not allowed",
                )
            return Action("abort", done, reason=f"not converged after {step.after_s:g}s")
        new_downtime = step.max_downtime_ms
        i += 1
    if i == current.next_step:
        return Action("none", current)
    state = replace(current, next_step=i, max_downtime_ms=new_downtime)
    if new_downtime == current.max_downtime_ms:
        return Action("none", state)
    return Action(
        "set_downtime",
        state,
        max_downtime_ms=new_downtime,
        reason=f"max downtime {new_downtime} ms after {schedule[i - 1].after_s:g}s",
    )
