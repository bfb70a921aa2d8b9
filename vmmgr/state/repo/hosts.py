"""Hosts: registration, facts from libvirt, reachability."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from vmmgr.errors import AlreadyExists, FailedPrecondition
from vmmgr.ports import HostInfo
from vmmgr.state.models import (
    VM,
    Device,
    DeviceClaim,
    Host,
    HostStatus,
    ImageReplica,
    Volume,
)
from vmmgr.state.repo._common import apply_changes, check_choice, get_or_404, insert
from vmmgr.state.types import utcnow

_UPDATABLE = frozenset(Host.model_fields) - {"name", "created_at", "updated_at"}


def add_host(session: Session, host: Host) -> Host:
    check_choice("state", host.state, HostStatus)
    return insert(
        session, host, duplicate=lambda: AlreadyExists(f"host {host.name!r} exists", field="name")
    )


def get_host(session: Session, name: str) -> Host:
    return get_or_404(session, Host, name, "host")


def list_hosts(
    session: Session,
    *,
    state: str | None = None,
    pool: str | None = None,
    tag: str | None = None,
) -> list[Host]:
    q = select(Host).order_by(Host.name)
    if state is not None:
        q = q.where(Host.state == state)
    if pool is not None:
        q = q.where(Host.pool == pool)
    hosts = list(session.exec(q))
    if tag is not None:  # tags are a short JSON list; filtering here is portable and cheap
        hosts = [h for h in hosts if tag in h.tags]
    return hosts


def update_host(session: Session, name: str, changes: Mapping[str, Any]) -> Host:
    host = get_host(session, name)
    if "state" in changes:
        check_choice("state", changes["state"], HostStatus)
    apply_changes(host, changes, _UPDATABLE)
    host.updated_at = utcnow()
    session.flush()
    return host


def record_host_facts(
    session: Session, name: str, info: HostInfo, *, now: datetime | None = None
) -> Host:
    """A successful connection: store what libvirt reported and mark the host reachable."""
    host = get_host(session, name)
    now = now or utcnow()
    host.hostname = info.hostname
    host.host_uuid = info.host_uuid
    host.arch = info.arch
    host.cpus = info.cpus
    host.memory_mib = info.memory_mib
    host.numa_cells = [
        {"id": c.id, "cpus": c.cpus, "memory_mib": c.memory_mib} for c in info.numa_cells
    ]
    host.hypervisor = info.hypervisor
    host.hypervisor_version = info.hypervisor_version
    host.libvirt_version = info.libvirt_version
    host.domain_types = list(info.domain_types)
    host.state = (HostStatus.MAINTENANCE if host.maintenance else HostStatus.UP).value
    host.last_seen = now
    host.error = ""
    host.updated_at = now
    session.flush()
    return host


def mark_host_down(session: Session, name: str, error: str, *, now: datetime | None = None) -> Host:
    host = get_host(session, name)
    host.state = HostStatus.DOWN.value
    host.error = error
    host.updated_at = now or utcnow()
    session.flush()
    return host


def delete_host(session: Session, name: str) -> None:
    """Forget a host and its device inventory; refused while anything still lives on it."""
    get_host(session, name)
    vms = session.exec(select(func.count()).select_from(VM).where(VM.host == name)).one()
    volumes = session.exec(
        select(func.count()).select_from(Volume).where(Volume.host == name)
    ).one()
    claims = session.exec(
        select(func.count())
        .select_from(DeviceClaim)
        .join(Device, col(Device.id) == col(DeviceClaim.device_id))
        .where(Device.host == name)
    ).one()
    if vms or volumes or claims:
        raise FailedPrecondition(
            f"host {name!r} still has {vms} VMs, {volumes} volumes, {claims} device claims",
            field="name",
        )
    session.execute(delete(ImageReplica).where(col(ImageReplica.host) == name))
    session.execute(delete(Device).where(col(Device.host) == name))
    session.execute(delete(Host).where(col(Host.name) == name))
    session.expire_all()
