"""Long-running work as persisted Operations: an id at once, progress, cancel, wait, watch.

Progress of a running operation is kept in memory (served to Get/Wait/Watch from there) and
written to the store when the operation ends: a create would otherwise spend most of its time
in progress transactions. A restart treats an unfinished operation the same whether its row
says pending or running.

A job is a function ``fn(ctx) -> dict[str, str]`` run on a worker pool. It reports progress with
``ctx.progress(pct, message)`` and calls ``ctx.check_cancelled()`` between steps; raising any
VmmgrError fails the operation with that error's code and field. On daemon start the owner
services clean up what unfinished operations left behind, then fail them (``interrupted`` and
``fail_interrupted``).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlmodel import Session

from vmmgr.errors import Cancelled, InvalidArgument, VmmgrError
from vmmgr.services.events import EventBus
from vmmgr.state import Store, repo
from vmmgr.state.models import Operation, OperationState

log = logging.getLogger(__name__)

_DONE_KEPT = 1024
Job = Callable[["OperationContext"], dict[str, str] | None]


@dataclass
class OperationContext:
    id: str
    _ops: Operations
    _succeeded: Operation | None = None
    _after: list[Callable[[], object]] = field(default_factory=list)

    def after(self, tidy: Callable[[], object]) -> None:
        """Run ``tidy`` once the operation's end is announced: clean-up nobody waits for
        (scratch files) stays off the time a waiter sees. Errors are logged, not raised."""
        self._after.append(tidy)

    def release(self, tidy: Callable[[], object]) -> None:
        """Run ``tidy`` now on another worker while the job goes on: for clean-up the job no
        longer needs, done while its next step waits on libvirt. Errors are logged."""
        try:
            self._ops._pool.submit(self._ops._tidy, self.id, tidy)
        except RuntimeError:  # the daemon is shutting down: no new work for the pool
            self._ops._tidy(self.id, tidy)

    def progress(self, percent: float, message: str) -> None:
        self._ops._progress(self.id, max(0.0, min(100.0, percent)), message)

    @property
    def cancel_requested(self) -> bool:
        return self._ops._cancel_flag(self.id)

    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise Cancelled("cancelled by request")

    def succeed_in(self, session: Session, result: dict[str, str]) -> None:
        """Record success in the job's own last transaction, so the change and the operation
        saying it happened commit together. The job returns once that transaction commits."""
        self._succeeded = repo.finish_operation(
            session,
            self.id,
            OperationState.SUCCEEDED.value,
            message="done",
            result={k: str(v) for k, v in result.items()},
        )


class Operations:
    def __init__(self, store: Store, events: EventBus, workers: int = 4) -> None:
        self.store = store
        self.events = events
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="op")
        self._cond = threading.Condition()
        self._cancel: set[str] = set()
        self._live: dict[str, tuple[str, float, str]] = {}  # id -> (state, progress, message)
        self._starting: set[str] = set()  # submitted, not yet picked up by a worker
        self._targets: dict[str, str] = {}  # unfinished op id -> its target
        # Finished operations never change again: recent ones are answered from memory.
        self._done: OrderedDict[str, Operation] = OrderedDict()
        self._ended: OrderedDict[str, float] = OrderedDict()  # target -> when its op ended

    def submit(
        self, kind: str, target: str, job: Job, *, request_id: str = "", message: str = "queued"
    ) -> Operation:
        with self.store.session() as s:
            op = self.record(s, kind, target, request_id=request_id, message=message)
        return self.start(op, job)

    @staticmethod
    def record(
        session: Session, kind: str, target: str, *, request_id: str = "", message: str = "queued"
    ) -> Operation:
        """Add the operation row inside the caller's transaction; ``start`` it after commit."""
        return repo.create_operation(session, kind, target, request_id=request_id, message=message)

    def start(self, op: Operation, job: Job) -> Operation:
        with self._cond:
            self._starting.add(op.id)
            self._targets[op.id] = op.target
        # the caller's context (its request id, for logs) goes with the work
        self._pool.submit(contextvars.copy_context().run, self._run, op.id, op.kind, op.target, job)
        return op

    def _run(self, op_id: str, kind: str, target: str, job: Job) -> None:
        ctx = OperationContext(op_id, self)
        self._set_live(op_id, OperationState.RUNNING.value, 0.0, "started")
        try:  # a job always runs, so it can undo what its caller set up; it checks cancel
            result = job(ctx) or {}
        except Cancelled as exc:
            self._finish(op_id, OperationState.CANCELLED, error=exc)
        except VmmgrError as exc:
            log.warning("operation %s (%s %s) failed: %s", op_id, kind, target, exc)
            self._finish(op_id, OperationState.FAILED, error=exc)
        except Exception as exc:  # noqa: BLE001 - an operation must always end
            log.exception("operation %s (%s %s) crashed", op_id, kind, target)
            self._finish(
                op_id,
                OperationState.FAILED,
                error=VmmgrError(f"internal error: {type(exc).__name__}: {exc}"),
            )
        else:
            if ctx._succeeded is not None:
                self._forget_live(ctx._succeeded)
            else:
                self._finish(op_id, OperationState.SUCCEEDED, result=result)
        finally:
            for tidy in ctx._after:
                self._tidy(op_id, tidy)

    @staticmethod
    def _tidy(op_id: str, tidy: Callable[[], object]) -> None:
        try:
            tidy()
        except Exception:  # noqa: BLE001 - the outcome is recorded; only log
            log.exception("operation %s: clean-up failed", op_id)

    def _finish(
        self,
        op_id: str,
        state: OperationState,
        *,
        error: VmmgrError | None = None,
        result: dict[str, str] | None = None,
    ) -> None:
        with self.store.session() as s:
            op = repo.finish_operation(
                s,
                op_id,
                state.value,
                error=error,
                message=error.message if error else "done",
                result={k: str(v) for k, v in (result or {}).items()},
            )
        self._forget_live(op)
        if state is not OperationState.SUCCEEDED:  # success is told by the job's own event
            self.events.publish(
                f"operation.{state.value}",
                op_id,
                f"{op.kind} {op.target}: {op.message}",
                severity="warning",
                op_kind=op.kind,
                target=op.target,
            )

    def _forget_live(self, op: Operation) -> None:
        with self._cond:
            self._cancel.discard(op.id)
            self._starting.discard(op.id)
            self._targets.pop(op.id, None)
            self._live.pop(op.id, None)
            self._done[op.id] = op
            if len(self._done) > _DONE_KEPT:
                self._done.popitem(last=False)
            self._ended[op.target] = time.monotonic()
            self._ended.move_to_end(op.target)
            if len(self._ended) > _DONE_KEPT:
                self._ended.popitem(last=False)
            self._cond.notify_all()

    def busy(self, target: str, since: float | None = None) -> bool:
        """Whether this daemon runs an unfinished operation on ``target``, or (``since``, a
        time.monotonic() value) ran one that ended after that moment."""
        with self._cond:
            if target in self._targets.values():
                return True
            ended = self._ended.get(target)
            return since is not None and ended is not None and since <= ended

    def _progress(self, op_id: str, percent: float, message: str) -> None:
        self._set_live(op_id, OperationState.RUNNING.value, percent, message)

    def _set_live(self, op_id: str, state: str, percent: float, message: str) -> None:
        with self._cond:
            self._starting.discard(op_id)
            self._live[op_id] = (state, percent, message)
            self._cond.notify_all()

    def _overlay(self, op: Operation) -> Operation:
        """Show live progress on a detached row (never on one a session could flush)."""
        with self._cond:
            live = self._live.get(op.id)
        if live is not None and not OperationState(op.state).finished:
            op.state, op.progress, op.message = live
        return op

    def _cancel_flag(self, op_id: str) -> bool:
        with self._cond:
            return op_id in self._cancel

    # ------------------------------------------------------------------ queries

    def find_by_request_id(self, request_id: str) -> Operation | None:
        with self.store.read_session() as s:
            return repo.find_operation_by_request_id(s, request_id)

    def get(self, op_id: str) -> Operation:
        if not op_id:
            raise InvalidArgument("id", "is required")
        with self._cond:
            done = self._done.get(op_id)
        if done is not None:
            return done
        with self.store.read_session() as s:
            op = repo.get_operation(s, op_id)
        return self._overlay(op)  # detached now: the overlay is never written back

    def list_ops(
        self, *, state: str = "", target: str = "", kind: str = "", limit: int = 100
    ) -> list[Operation]:
        with self.store.read_session() as s:
            ops = repo.list_operations(
                s, state=state or None, target=target or None, kind=kind or None, limit=limit
            )
        return [self._overlay(op) for op in ops]

    def cancel(self, op_id: str) -> Operation:
        self.get(op_id)
        with self.store.session() as s:
            op = repo.request_cancel(s, op_id)
        with self._cond:
            self._cancel.add(op_id)
            self._cond.notify_all()
        return op

    def wait(self, op_id: str, timeout_s: float) -> tuple[Operation, bool]:
        """Block until the operation ends or the timeout passes. While this daemon runs the
        operation, its progress lives in memory: the store is read only when it changes hands
        (or every half second for an operation this daemon does not run)."""
        end = time.monotonic() + timeout_s
        while True:
            with self._cond:
                while (op_id in self._live or op_id in self._starting) and (
                    left := end - time.monotonic()
                ) > 0:
                    self._cond.wait(timeout=min(left, 1.0))
                mine = op_id in self._live or op_id in self._starting
            op = self.get(op_id)
            if OperationState(op.state).finished:
                return op, True
            if time.monotonic() >= end:
                return op, False
            if not mine:  # not run by this daemon (or not started yet): poll the store
                with self._cond:
                    self._cond.wait(timeout=max(0.0, min(end - time.monotonic(), 0.5)))

    def watch(self, op_id: str, alive: Callable[[], bool]) -> Iterator[Operation]:
        """Yield the operation whenever it changes, ending when it finishes."""
        last: tuple[object, ...] = ()
        while alive():
            op = self.get(op_id)
            key = (op.state, op.progress, op.message, op.cancel_requested)
            if key != last:
                last = key
                yield op
            if OperationState(op.state).finished:
                return
            with self._cond:
                self._cond.wait(timeout=0.5)

    # ------------------------------------------------------------------ lifecycle

    def interrupted(self) -> list[Operation]:
        """Operations a previous daemon left unfinished (call before accepting new work)."""
        with self.store.read_session() as s:
            return [
                op
                for st in (OperationState.PENDING, OperationState.RUNNING)
                for op in repo.list_operations(s, state=st.value, limit=100_000)
            ]

    def fail_interrupted(self, op_id: str, message: str) -> None:
        self._finish(op_id, OperationState.FAILED, error=VmmgrError(message))

    def shutdown(self) -> None:
        with self._cond:
            self._cancel.update(op.id for op in self.interrupted())
        self._pool.shutdown(wait=True, cancel_futures=False)
