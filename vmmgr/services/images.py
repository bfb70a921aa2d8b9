"""Images: a file on the daemon's machine, imported into each host's image pool on demand."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import defaultdict

from sqlmodel import Session, select

from vmmgr.config import Config
from vmmgr.errors import FailedPrecondition, InvalidArgument, NotFound
from vmmgr.ports import HostConnection, ImageFiles, VolumeInfo
from vmmgr.requests import check_name, check_text
from vmmgr.services.connections import ConnectionManager
from vmmgr.services.events import EventBus
from vmmgr.services.operations import OperationContext, Operations
from vmmgr.state import Store, repo
from vmmgr.state.models import VM, Image, ImageReplica, Operation
from vmmgr.state.repo import images as image_repo
from vmmgr.undo import UndoStack

log = logging.getLogger(__name__)


class ImageService:
    def __init__(
        self,
        store: Store,
        conns: ConnectionManager,
        ops: Operations,
        events: EventBus,
        files: ImageFiles,
        config: Config,
    ) -> None:
        self.store = store
        self.conns = conns
        self.ops = ops
        self.events = events
        self.files = files
        self.config = config
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        # (image, host, pool) -> the replica volume this daemon found or recorded. Images do not
        # change, so later creates only ask the host whether the volume is still there.
        self._known: dict[tuple[str, str, str], VolumeInfo] = {}

    def get(self, name: str, *, field: str = "name") -> Image:
        with self.store.read_session() as s:
            return self.lookup(s, name, field=field)

    @staticmethod
    def lookup(session: Session, name: str, *, field: str = "name") -> Image:
        """The image ``name`` read in the caller's transaction; NotFound naming ``field``."""
        check_name(field, name)
        image = repo.read_row(session, Image, name)
        if image is None:
            raise NotFound(f"image {name!r} not found (vmmgr image list)", field=field)
        return image

    def list_images(self) -> list[Image]:
        with self.store.read_session() as s:
            return image_repo.list_images(s)

    def replicas(self, name: str) -> list[ImageReplica]:
        with self.store.read_session() as s:
            return image_repo.list_replicas(s, image=name)

    def import_image(self, name: str, source_path: str, sha256: str = "") -> Operation:
        check_name("name", name)
        check_text("source_path", source_path, 4096)
        if not os.path.isabs(source_path):
            raise InvalidArgument("source_path", "must be an absolute path on the daemon's machine")
        if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            raise InvalidArgument("sha256", "must be 64 lower-case hex digits")
        fmt = self.files.probe(source_path)
        with self.store.session() as s:
            image_repo.add_image(s, Image(name=name, format=fmt, source=source_path))
        return self.ops.submit(
            "image.import", name, lambda ctx: self._import(ctx, name, source_path, sha256)
        )

    def _import(self, ctx: OperationContext, name: str, path: str, sha256: str) -> dict[str, str]:
        with UndoStack(f"import image {name}") as undo:
            undo.push(lambda: self._drop(name), f"forget image {name}")
            ctx.progress(5, "hashing")
            facts = self.files.inspect(path)
            if sha256 and facts.sha256 != sha256:
                raise FailedPrecondition(
                    f"sha256 mismatch: file has {facts.sha256}, expected {sha256}", field="sha256"
                )
            with self.store.session() as s:
                image = image_repo.get_image(s, name)
                image.format, image.size_bytes = facts.format, facts.size_bytes
                image.virtual_size_bytes, image.sha256 = facts.virtual_size_bytes, facts.sha256
            hosts = self.conns.names()
            for n, host in enumerate(hosts):
                ctx.check_cancelled()
                ctx.progress(20 + 75 * n / max(len(hosts), 1), f"copying to {host}")
                try:
                    self.ensure_on_host(name, host, self.conns.get(host))
                except Exception as exc:  # an unreachable host gets the image on first use
                    log.warning("image %s not copied to %s now: %s", name, host, exc)
        self.events.publish("image.imported", name, f"image {name} imported", sha256=facts.sha256)
        return {"image": name, "sha256": facts.sha256}

    def ensure_on_host(self, name: str, host: str, conn: HostConnection) -> VolumeInfo:
        """The image's volume in the host's image pool, importing it first if needed."""
        with self._locks_guard:
            lock = self._locks[(name, host)]
        with lock:
            pool = self.config.image_pool
            known = self._known.get((name, host, pool))
            if known is not None and conn.has_volume(pool, known.name):
                return known
            with self.store.read_session() as s:
                image = self.lookup(s, name)
                replica = image_repo.find_replica(s, name, host, pool)
            volume_name = f"{name}.{image.format}"
            if replica is not None:
                vol = conn.get_volume(pool, volume_name)
                if vol is not None:
                    self._known[(name, host, pool)] = vol
                    return vol
                with self.store.session() as s:  # deleted behind our back: import again
                    image_repo.delete_replica(s, name, host, pool)
            conn.ensure_pool(pool, self.config.image_pool_path)
            vol = conn.get_volume(pool, volume_name)
            if vol is not None and vol.capacity_bytes < image.virtual_size_bytes:
                raise FailedPrecondition(
                    f"host {host} already has a volume {pool}/{volume_name} that is not image "
                    f"{name} (smaller than its virtual size); remove it first"
                )
            created = vol is None  # a pool on storage shared with another host may hold it
            if vol is None:
                vol = conn.import_volume(pool, volume_name, image.source)
            try:
                with self.store.session() as s:
                    image_repo.add_replica(
                        s, ImageReplica(image=name, host=host, pool=pool, path=vol.path)
                    )
            except Exception:
                if created:
                    conn.delete_volume(pool, volume_name)
                raise
            self._known[(name, host, pool)] = vol
            return vol

    def delete(self, name: str) -> None:
        image = self.get(name)
        with self.store.read_session() as s:
            users = s.exec(select(VM.name).where(VM.image == name).limit(5)).all()
        if users:
            raise FailedPrecondition(
                f"image {name} is used by VMs: {', '.join(users)}", field="name"
            )
        for replica in self.replicas(name):
            with contextlib.suppress(NotFound):
                self.conns.get(replica.host).delete_volume(replica.pool, f"{name}.{image.format}")
        self._drop(name)
        self.events.publish("image.deleted", name, f"image {name} deleted")

    def _drop(self, name: str) -> None:
        with self._locks_guard:
            self._known = {k: v for k, v in self._known.items() if k[0] != name}
        with self.store.session() as s:
            for replica in image_repo.list_replicas(s, image=name):
                image_repo.delete_replica(s, name, replica.host, replica.pool)
            if s.get(Image, name) is not None:
                image_repo.delete_image(s, name)
