"""Images and their replicas (an image imported into one host's storage pool)."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from vmmgr.errors import AlreadyExists, FailedPrecondition, NotFound
from vmmgr.state.models import VM, Host, Image, ImageReplica
from vmmgr.state.repo._common import get_or_404, insert


def add_image(session: Session, image: Image) -> Image:
    return insert(
        session,
        image,
        duplicate=lambda: AlreadyExists(f"image {image.name!r} exists", field="name"),
    )


def get_image(session: Session, name: str) -> Image:
    return get_or_404(session, Image, name, "image")


def list_images(session: Session) -> list[Image]:
    return list(session.exec(select(Image).order_by(col(Image.name))))


def delete_image(session: Session, name: str) -> Image:
    """Refused while a VM was created from it or a replica still exists on some host (the
    replica's volume must be removed from that host first)."""
    image = get_image(session, name)
    users = session.exec(select(func.count()).select_from(VM).where(VM.image == name)).one()
    if users:
        raise FailedPrecondition(f"image {name!r} is used by {users} VMs", field="name")
    replicas = session.exec(
        select(func.count()).select_from(ImageReplica).where(ImageReplica.image == name)
    ).one()
    if replicas:
        raise FailedPrecondition(f"image {name!r} still has {replicas} replicas", field="name")
    session.delete(image)
    session.flush()
    return image


def add_replica(session: Session, replica: ImageReplica) -> ImageReplica:
    if session.get(Image, replica.image) is None:
        raise NotFound(f"image {replica.image!r} not found", field="image")
    if session.get(Host, replica.host) is None:
        raise NotFound(f"host {replica.host!r} not found", field="host")
    return insert(
        session,
        replica,
        duplicate=lambda: AlreadyExists(
            f"image {replica.image!r} already has a replica on {replica.host}/{replica.pool}",
            field="host",
        ),
    )


def find_replica(session: Session, image: str, host: str, pool: str) -> ImageReplica | None:
    return session.get(ImageReplica, (image, host, pool))


def list_replicas(
    session: Session, *, image: str | None = None, host: str | None = None
) -> list[ImageReplica]:
    q = select(ImageReplica).order_by(
        col(ImageReplica.image), col(ImageReplica.host), col(ImageReplica.pool)
    )
    if image is not None:
        q = q.where(ImageReplica.image == image)
    if host is not None:
        q = q.where(ImageReplica.host == host)
    return list(session.exec(q))


def delete_replica(session: Session, image: str, host: str, pool: str) -> ImageReplica:
    replica = find_replica(session, image, host, pool)
    if replica is None:
        raise NotFound(f"no replica of image {image!r} on {host}/{pool}")
    session.delete(replica)
    session.flush()
    return replica
