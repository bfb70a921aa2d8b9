"""How many migrations may run at once: per host outgoing/incoming and per cluster.

``admit`` is the pure rule over the set of running migrations; ``MigrationLimiter`` is the small
thread-safe holder the service uses around each migration (block until admitted or refuse).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vmmgr.errors import InvalidArgument, ResourceExhausted


@dataclass(frozen=True, slots=True)
class MigrationLimits:
    """0 means unlimited."""

    per_host_outgoing: int = 2
    per_host_incoming: int = 2
    per_cluster: int = 8

    def __post_init__(self) -> None:
        for name in ("per_host_outgoing", "per_host_incoming", "per_cluster"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"migration_limits.{name}", "must be >= 0")


@dataclass(frozen=True, slots=True)
class MigrationSlot:
    vm_id: str
    source: str
    dest: str


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    reason: str = ""


def admit(
    running: Collection[MigrationSlot], candidate: MigrationSlot, limits: MigrationLimits
) -> Admission:
    """May ``candidate`` start while ``running`` are in flight?"""
    if candidate.source == candidate.dest:
        return Admission(False, f"source and destination are both {candidate.source}")
    if any(m.vm_id == candidate.vm_id for m in running):
        return Admission(False, f"VM {candidate.vm_id} is already migrating")
    if limits.per_cluster and len(running) >= limits.per_cluster:
        return Admission(False, f"cluster limit of {limits.per_cluster} migrations reached")
    out = sum(1 for m in running if m.source == candidate.source)
    if limits.per_host_outgoing and out >= limits.per_host_outgoing:
        return Admission(
            False,
            f"host {candidate.source} already sends {out} migration(s) "
            f"(limit {limits.per_host_outgoing})",
        )
    inc = sum(1 for m in running if m.dest == candidate.dest)
    if limits.per_host_incoming and inc >= limits.per_host_incoming:
        return Admission(
            False,
            f"host {candidate.dest} already receives {inc} migration(s) "
            f"(limit {limits.per_host_incoming})",
        )
    return Admission(True)


class MigrationLimiter:
    """Thread-safe admission control around running migrations."""

    def __init__(self, limits: MigrationLimits) -> None:
        self.limits = limits
        self._running: list[MigrationSlot] = []
        self._cond = threading.Condition()

    def running(self) -> tuple[MigrationSlot, ...]:
        with self._cond:
            return tuple(self._running)

    def try_acquire(self, slot: MigrationSlot) -> Admission:
        with self._cond:
            verdict = admit(self._running, slot, self.limits)
            if verdict.admitted:
                self._running.append(slot)
            return verdict

    def acquire(self, slot: MigrationSlot, timeout_s: float = 0.0) -> None:
        """Wait up to ``timeout_s`` for admission; raise ResourceExhausted with the reason.

        A VM already migrating is refused at once (waiting would not help the caller).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                verdict = admit(self._running, slot, self.limits)
                if verdict.admitted:
                    self._running.append(slot)
                    return
                left = deadline - time.monotonic()
                permanent = slot.source == slot.dest or any(
                    m.vm_id == slot.vm_id for m in self._running
                )
                if left <= 0 or permanent:
                    raise ResourceExhausted(
                        f"migration of {slot.vm_id} not admitted: {verdict.reason}",
                        details={"source": slot.source, "dest": slot.dest},
                    )
                self._cond.wait(left)

    def release(self, slot: MigrationSlot) -> None:
        with self._cond:
            if slot in self._running:
                self._running.remove(slot)
                self._cond.notify_all()

    @contextmanager
    def slot(self, slot: MigrationSlot, timeout_s: float = 0.0) -> Iterator[MigrationSlot]:
        """``with limiter.slot(MigrationSlot(vm, a, b), timeout_s=30): migrate(...)``"""
        self.acquire(slot, timeout_s)
        try:
            yield slot
        finally:
            self.release(slot)
