"""A small undo stack for multi-step host changes that must succeed fully or not at all.

    with UndoStack("create vm-1") as undo:
        rec = mdevs.create(parent, "nvidia-700")
        undo.push(lambda: mdevs.remove(rec.uuid), f"remove mdev {rec.uuid}")
        conn.define(spec)
        undo.push(lambda: conn.undefine(spec.vm_id), "undefine domain")
        conn.start(spec.vm_id)

On any exception (BaseException included: a cancelled operation must undo too) the undos run in
reverse order; an undo that fails is logged and recorded, the remaining undos still run, and the
original exception is re-raised. A normal exit keeps everything (it commits implicitly);
``commit()`` inside the block makes the steps so far permanent even if a later step fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UndoFailure:
    description: str
    error: BaseException


class UndoStack:
    def __init__(self, name: str = "", *, logger: logging.Logger | None = None) -> None:
        self.name = name
        self._log = logger or log
        self._steps: list[tuple[Callable[[], object], str]] = []
        self.failures: list[UndoFailure] = []  # undos that raised during the last rollback
        self.rolled_back = False

    def push(self, undo: Callable[[], object], description: str) -> None:
        """Register how to undo the step that just succeeded."""
        self._steps.append((undo, description))

    def commit(self) -> None:
        """Keep every step done so far: forget their undos."""
        self._steps.clear()

    @property
    def pending(self) -> tuple[str, ...]:
        """Descriptions of the undos that a rollback would run, most recent first."""
        return tuple(d for _, d in reversed(self._steps))

    def rollback(self) -> list[UndoFailure]:
        """Run the undos newest first; never raises. Returns the undos that failed."""
        failures: list[UndoFailure] = []
        while self._steps:
            undo, description = self._steps.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing the rest, report at the end
                self._log.error("undo %r of %s failed: %s", description, self.name or "?", exc)
                failures.append(UndoFailure(description, exc))
            else:
                self._log.info("undid %s (%s)", description, self.name or "?")
        self.failures = failures
        self.rolled_back = True
        return failures

    def __enter__(self) -> UndoStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.commit()
            return
        failures = self.rollback()
        if failures:
            exc.add_note(
                "undo failures: " + "; ".join(f"{f.description}: {f.error}" for f in failures)
            )
        # returning None re-raises the original error
