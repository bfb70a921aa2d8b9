"""Volumes vmmgr created on hosts for a VM (overlay disks, cloud-init seeds)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from vmmgr.errors import AlreadyExists, InvalidArgument, NotFound
from vmmgr.state.models import Volume, VolumeKind
from vmmgr.state.repo._common import check_choice, get_or_404, insert


def check_volume(volume: Volume) -> None:
    check_choice("kind", volume.kind, VolumeKind)
    if not volume.path:
        raise InvalidArgument("path", "a volume needs its path")


def add_volume(session: Session, volume: Volume) -> Volume:
    check_volume(volume)
    return insert(
        session,
        volume,
        duplicate=lambda: AlreadyExists(f"volume {volume.id!r} exists", field="id"),
        missing_reference=lambda: NotFound(f"vm {volume.vm_id!r} not found", field="vm_id"),
    )


def get_volume(session: Session, volume_id: str) -> Volume:
    return get_or_404(session, Volume, volume_id, "volume")


def list_volumes(
    session: Session, *, vm_id: str | None = None, host: str | None = None
) -> list[Volume]:
    q = select(Volume).order_by(col(Volume.created_at), col(Volume.id))
    if vm_id is not None:
        q = q.where(Volume.vm_id == vm_id)
    if host is not None:
        q = q.where(Volume.host == host)
    return list(session.exec(q))


def delete_volume(session: Session, volume_id: str) -> Volume:
    volume = get_volume(session, volume_id)
    session.delete(volume)
    session.flush()
    return volume


def set_volume_path(session: Session, vm_id: str, name: str, path: str) -> Volume:
    """Record where the host really put a volume that was recorded before it existed."""
    row = session.exec(select(Volume).where(Volume.vm_id == vm_id, Volume.name == name)).first()
    if row is None:
        raise NotFound(f"volume {name!r} of vm {vm_id!r} not found")
    row.path = path
    session.flush()
    return row


def move_volumes(session: Session, vm_id: str, host: str) -> int:
    """After a migration the VM's volumes are the target's (copied, or on shared storage)."""
    rows = list(session.exec(select(Volume).where(Volume.vm_id == vm_id)))
    for row in rows:
        row.host = host
    session.flush()
    return len(rows)
