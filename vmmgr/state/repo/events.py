"""The event log: append, read since a sequence number, prune to a cap."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from vmmgr.errors import InvalidArgument
from vmmgr.state.models import Event
from vmmgr.state.repo._common import check_choice, insert_rows
from vmmgr.state.rows import build
from vmmgr.state.types import utcnow

MAX_EVENT_PAGE = 10_000
SEVERITIES = ("info", "warning", "error")


def append_event(
    session: Session,
    kind: str,
    resource: str = "",
    message: str = "",
    *,
    severity: str = "info",
    attributes: Mapping[str, Any] | None = None,
    time: datetime | None = None,
) -> Event:
    check_choice("severity", severity, SEVERITIES)
    ev = build(
        Event,
        {
            "kind": kind,
            "resource": resource,
            "message": message,
            "severity": severity,
            "attributes": dict(attributes or {}),
            "time": time or utcnow(),
        },
    )
    (ev.seq,) = insert_rows(session, Event, [ev])
    return ev


def list_events(
    session: Session,
    *,
    since_seq: int = 0,
    limit: int = 1000,
    kind: str | None = None,
    resource: str | None = None,
) -> list[Event]:
    """Events with ``seq > since_seq``, oldest first, at most ``limit`` (capped)."""
    if limit <= 0:
        raise InvalidArgument("limit", "must be positive")
    q = select(Event).where(col(Event.seq) > since_seq)
    if kind is not None:
        q = q.where(Event.kind == kind)
    if resource is not None:
        q = q.where(Event.resource == resource)
    q = q.order_by(col(Event.seq)).limit(min(limit, MAX_EVENT_PAGE))
    return list(session.exec(q))


def last_event_seq(session: Session) -> int:
    seq = session.exec(select(func.max(col(Event.seq)))).one()
    return int(seq or 0)


def prune_events(session: Session, keep: int) -> int:
    """Keep the newest ``keep`` events; returns how many were deleted. Sequence numbers are
    never reused (AUTOINCREMENT / a sequence), so readers resuming from a seq miss nothing new."""
    if keep < 0:
        raise InvalidArgument("keep", "must not be negative")
    if keep == 0:
        stmt = delete(Event)
    else:
        cutoff = session.exec(
            select(col(Event.seq)).order_by(col(Event.seq).desc()).offset(keep - 1).limit(1)
        ).first()
        if cutoff is None:
            return 0
        stmt = delete(Event).where(col(Event.seq) < cutoff)
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
