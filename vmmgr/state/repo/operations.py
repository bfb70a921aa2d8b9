"""Long-running operations: persisted so progress can be streamed and a restart fails them
cleanly."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, bindparam, delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from vmmgr.errors import FailedPrecondition, InvalidArgument, NotFound, VmmgrError
from vmmgr.state.models import Operation, OperationState
from vmmgr.state.prepared import Prepared
from vmmgr.state.repo._common import check_choice, get_or_404, insert_rows
from vmmgr.state.rows import build
from vmmgr.state.types import utcnow

_OP = Operation.__table__  # type: ignore[attr-defined]
_UNFINISHED = (OperationState.PENDING.value, OperationState.RUNNING.value)
RESTART_MESSAGE = "vmmgrd restarted before the operation finished"


def create_operation(
    session: Session,
    kind: str,
    target: str,
    *,
    request_id: str = "",
    message: str = "",
) -> Operation:
    if not kind:
        raise InvalidArgument("kind", "an operation needs a kind")
    op = build(
        Operation, {"kind": kind, "target": target, "request_id": request_id, "message": message}
    )
    insert_rows(session, Operation, [op])
    return op


def get_operation(session: Session, op_id: str) -> Operation:
    return get_or_404(session, Operation, op_id, "operation")


_BY_REQUEST_ID = Prepared(
    sa_select(_OP)
    .where(_OP.c.request_id == bindparam("request_id"))
    .order_by(_OP.c.created_at.desc())
    .limit(1)
)


def find_operation_by_request_id(session: Session, request_id: str) -> Operation | None:
    """The operation a retried request already started (idempotency), newest first."""
    if not request_id:
        return None
    found = _BY_REQUEST_ID.first(session, {"request_id": request_id})
    return None if found is None else build(Operation, found._asdict())


def list_operations(
    session: Session,
    *,
    state: str | None = None,
    target: str | None = None,
    kind: str | None = None,
    limit: int = 100,
) -> list[Operation]:
    """Newest first."""
    q = select(Operation)
    if state is not None:
        q = q.where(Operation.state == state)
    if target is not None:
        q = q.where(Operation.target == target)
    if kind is not None:
        q = q.where(Operation.kind == kind)
    q = q.order_by(col(Operation.created_at).desc(), col(Operation.id)).limit(limit)
    return list(session.exec(q))


def _unfinished(session: Session, op_id: str) -> Operation:
    op = get_operation(session, op_id)
    if op.state not in _UNFINISHED:
        raise FailedPrecondition(f"operation {op_id!r} already {op.state}")
    return op


def update_operation(
    session: Session,
    op_id: str,
    *,
    state: str | None = None,
    progress: float | None = None,
    message: str | None = None,
) -> Operation:
    """Progress of a pending/running operation; finishing (and its result) goes through
    ``finish_operation``."""
    op = _unfinished(session, op_id)
    if state is not None:
        check_choice("state", state, _UNFINISHED)
        op.state = state
    if progress is not None:
        if not 0.0 <= progress <= 100.0:
            raise InvalidArgument("progress", f"{progress} is outside 0..100")
        op.progress = progress
    if message is not None:
        op.message = message
    op.updated_at = utcnow()
    session.flush()
    return op


_GET = Prepared(sa_select(_OP).where(_OP.c.id == bindparam("op_id")))


def _given_or_kept(name: str, type_: Any = None) -> Any:
    """The bound value, or the column's own when the caller passes None."""
    column = _OP.c[name]
    return func.coalesce(bindparam(f"new_{name}", type_=type_ or column.type), column)


# One statement ends every operation: updated only while unfinished, so two finishers cannot
# both win, and RETURNING hands back the finished row without a second read.
_FINISH = Prepared(
    update(_OP)
    .where(_OP.c.id == bindparam("op_id"), or_(*(_OP.c.state == s for s in _UNFINISHED)))
    .values(
        state=bindparam("new_state"),
        progress=_given_or_kept("progress"),
        message=_given_or_kept("message"),
        error_code=_given_or_kept("error_code"),
        error_message=_given_or_kept("error_message"),
        error_field=_given_or_kept("error_field"),
        result=_given_or_kept("result", JSON(none_as_null=True)),
        updated_at=bindparam("now"),
        finished_at=bindparam("now"),
    )
    .returning(*_OP.c)
)


def finish_operation(
    session: Session,
    op_id: str,
    state: str,
    *,
    error: VmmgrError | None = None,
    message: str | None = None,
    result: Mapping[str, str] | None = None,
) -> Operation:
    """Move an operation to succeeded / failed / cancelled (once; finished is final).

    ``message`` and ``result`` replace the operation's own when given. Success sets progress
    to 100; an error sets the error fields. The returned row is detached."""
    check_choice(
        "state",
        state,
        (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED),
    )
    if state == OperationState.FAILED and error is None:
        raise InvalidArgument("error", "a failed operation needs its error")
    done = _FINISH.first(
        session,
        {
            "op_id": op_id,
            "new_state": state,
            "new_progress": 100.0 if state == OperationState.SUCCEEDED else None,
            "new_message": message,
            "new_error_code": error.code if error else None,
            "new_error_message": error.message if error else None,
            "new_error_field": (error.field or "") if error else None,
            "new_result": None if result is None else dict(result),
            "now": utcnow(),
        },
    )
    if done is not None:
        return build(Operation, done._asdict())
    found = _GET.first(session, {"op_id": op_id})
    if found is None:
        raise NotFound(f"operation {op_id!r} not found")
    raise FailedPrecondition(f"operation {op_id!r} already {found.state}")


def request_cancel(session: Session, op_id: str) -> Operation:
    """Flag the operation; its worker checks the flag between steps and undoes."""
    op = _unfinished(session, op_id)
    op.cancel_requested = True
    op.updated_at = utcnow()
    session.flush()
    return op


def fail_unfinished_operations(
    session: Session, *, message: str = RESTART_MESSAGE, now: datetime | None = None
) -> list[Operation]:
    """At daemon start: nothing is running any more, so every unfinished operation failed."""
    now = now or utcnow()
    ops = list(session.exec(select(Operation).where(col(Operation.state).in_(_UNFINISHED))))
    for op in ops:
        op.state = OperationState.FAILED.value
        op.error_code = "ABORTED"
        op.error_message = message
        op.error_field = ""
        op.updated_at = now
        op.finished_at = now
    session.flush()
    return ops


def prune_operations(session: Session, *, finished_before: datetime) -> int:
    """Drop finished operations older than ``finished_before``; returns how many."""
    stmt = delete(Operation).where(
        col(Operation.finished_at).is_not(None), col(Operation.finished_at) < finished_before
    )
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
