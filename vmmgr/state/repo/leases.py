"""Named time-limited leases in the database (leader election fallback, fencing bookkeeping).

On Postgres vmmgr prefers an advisory lock for leadership; a lease row works on both backends
and also records *who* held what until when.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from vmmgr.errors import InvalidArgument
from vmmgr.state.models import Lease
from vmmgr.state.types import utcnow


def acquire_lease(
    session: Session, name: str, holder: str, ttl_s: float, *, now: datetime | None = None
) -> bool:
    """Take or renew the lease; True if ``holder`` holds it until now + ttl_s.

    Succeeds when the lease is free, expired, or already held by ``holder``; one atomic
    UPDATE (or INSERT for a new name) so two contenders cannot both win.
    """
    if ttl_s <= 0:
        raise InvalidArgument("ttl_s", "must be positive")
    if not holder:
        raise InvalidArgument("holder", "must not be empty")
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_s)
    stmt = (
        update(Lease)
        .where(
            col(Lease.name) == name,
            or_(col(Lease.holder) == holder, col(Lease.expires_at) <= now),
        )
        .values(holder=holder, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount == 1:  # type: ignore[attr-defined]
        _refresh(session, name)
        return True
    if session.get(Lease, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=expires))
            session.flush()
    except IntegrityError:
        return False  # another contender inserted it first
    return True


def _refresh(session: Session, name: str) -> None:
    session.get(Lease, name, populate_existing=True)


def release_lease(session: Session, name: str, holder: str) -> bool:
    """Give the lease up; True if ``holder`` held it."""
    stmt = delete(Lease).where(col(Lease.name) == name, col(Lease.holder) == holder)
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def get_lease(session: Session, name: str) -> Lease | None:
    return session.get(Lease, name)
