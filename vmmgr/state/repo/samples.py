"""Short telemetry series: device samples (NVML) and host samples (for the forecaster)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, tuple_
from sqlmodel import Session, col, select

from vmmgr.errors import InvalidArgument
from vmmgr.state.models import DeviceSample, HostSample


def append_device_samples(session: Session, samples: Sequence[DeviceSample]) -> None:
    """Store samples; a second sample for the same (device, time) replaces the first."""
    for s in samples:
        session.merge(s)
    session.flush()


def device_samples(
    session: Session,
    device_id: str,
    *,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[DeviceSample]:
    """Oldest first; with ``limit`` the newest ``limit`` samples of the window."""
    q = select(DeviceSample).where(DeviceSample.device_id == device_id)
    if since is not None:
        q = q.where(col(DeviceSample.time) >= since)
    q = q.order_by(col(DeviceSample.time).desc())
    if limit is not None:
        q = q.limit(limit)
    return list(reversed(list(session.exec(q))))


def prune_device_samples(session: Session, keep: int, device_id: str | None = None) -> int:
    """Keep the newest ``keep`` samples per device; returns how many were deleted."""
    if keep < 0:
        raise InvalidArgument("keep", "must not be negative")
    rn = (
        func.row_number()
        .over(
            partition_by=col(DeviceSample.device_id),
            order_by=col(DeviceSample.time).desc(),
        )
        .label("rn")
    )
    ranked = select(col(DeviceSample.device_id), col(DeviceSample.time), rn)
    if device_id is not None:
        ranked = ranked.where(DeviceSample.device_id == device_id)
    sub = ranked.subquery()
    old = select(sub.c.device_id, sub.c.time).where(sub.c.rn > keep)
    stmt = delete(DeviceSample).where(
        tuple_(col(DeviceSample.device_id), col(DeviceSample.time)).in_(old)
    )
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def append_host_samples(session: Session, samples: Sequence[HostSample]) -> None:
    for s in samples:
        session.merge(s)
    session.flush()


def host_samples(
    session: Session,
    host: str,
    *,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[HostSample]:
    """Oldest first; with ``limit`` the newest ``limit`` samples of the window."""
    q = select(HostSample).where(HostSample.host == host)
    if since is not None:
        q = q.where(col(HostSample.time) >= since)
    q = q.order_by(col(HostSample.time).desc())
    if limit is not None:
        q = q.limit(limit)
    return list(reversed(list(session.exec(q))))


def prune_host_samples(session: Session, keep: int, host: str | None = None) -> int:
    """Keep the newest ``keep`` samples per host; returns how many were deleted."""
    if keep < 0:
        raise InvalidArgument("keep", "must not be negative")
    rn = (
        func.row_number()
        .over(partition_by=col(HostSample.host), order_by=col(HostSample.time).desc())
        .label("rn")
    )
    ranked = select(col(HostSample.host), col(HostSample.time), rn)
    if host is not None:
        ranked = ranked.where(HostSample.host == host)
    sub = ranked.subquery()
    old = select(sub.c.host, sub.c.time).where(sub.c.rn > keep)
    stmt = delete(HostSample).where(tuple_(col(HostSample.host), col(HostSample.time)).in_(old))
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
