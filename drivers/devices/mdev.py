"""Mediated devices (vGPU) lifecycle: create/remove through sysfs or libvirt, one interface.

- ``SysfsMdevBackend``: ``echo UUID > /sys/class/mdev_bus/<parent>/mdev_supported_types/<type>/
  create`` and ``echo 1 > /sys/bus/mdev/devices/<uuid>/remove``; transient (gone on reboot).
- ``LibvirtMdevBackend``: ``virNodeDeviceDefineXML`` + ``virNodeDeviceCreate`` (libvirt >= 7.3
  on a real host; the test driver refuses it), persistent across reboots.
``MdevManager.create`` records what undo needs and pushes the removal onto an UndoStack so
"create mdev -> define domain -> start" undoes as a whole.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from drivers.devices.sysfs import Sysfs, write_sysfs_attr
from vmmgr.devices.inventory import mdev_instance
from vmmgr.devices.mdev import MdevReconcile
from vmmgr.devices.model import MdevInstance, MdevRecord, PciAddress, normalise_address
from vmmgr.devices.nodedev_xml import NodeDevice, mdev_define_xml
from vmmgr.devices.ports import MdevBackend
from vmmgr.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from vmmgr.undo import UndoStack

log = logging.getLogger(__name__)


def _check_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError as exc:
        raise InvalidArgument("uuid", f"not a UUID: {value!r}") from exc


class SysfsMdevBackend:
    name = "sysfs"

    def __init__(
        self, root: str | Path = "/", *, write: Callable[[Path, str], None] = write_sysfs_attr
    ) -> None:
        self.sysfs = Sysfs(root)
        self._write = write  # tests pass a writer that also emulates the kernel

    def create(self, parent: str, type_id: str, uuid: str) -> None:
        tdir = self.sysfs.mdev_type_dir(parent, type_id)
        if not tdir.parent.is_dir():
            raise FailedPrecondition(f"{parent} is not an mdev parent (no mdev_supported_types)")
        if not tdir.is_dir():
            raise FailedPrecondition(f"{parent} offers no mdev type {type_id!r}", field="vgpu_type")
        if self.sysfs.mdev_dir(uuid).exists():
            raise AlreadyExists(f"mdev {uuid} already exists")
        try:
            available = int((tdir / "available_instances").read_text().strip())
        except (OSError, ValueError) as exc:
            raise DriverError(f"cannot read available_instances of {type_id}: {exc}") from exc
        if available <= 0:
            raise ResourceExhausted(f"{parent}: no {type_id} instances left", field="vgpu_type")
        try:
            self._write(tdir / "create", uuid)
        except OSError as exc:
            raise DriverError(
                f"creating mdev {uuid} ({type_id} on {parent}) failed: {exc}"
            ) from exc
        if not self.sysfs.mdev_dir(uuid).exists():
            raise DriverError(f"mdev {uuid} did not appear after create")

    def remove(self, uuid: str) -> None:
        d = self.sysfs.mdev_dir(uuid)
        if not d.exists():
            raise NotFound(f"mdev {uuid} does not exist")
        try:
            self._write(d / "remove", "1")
        except OSError as exc:
            raise DriverError(f"removing mdev {uuid} failed: {exc}") from exc
        if d.exists():
            raise DriverError(f"mdev {uuid} still present after remove (in use?)")

    def list(self) -> list[MdevInstance]:
        return self.sysfs.mdevs()


class LibvirtMdevBackend:
    """Persistent mdevs through libvirt node devices (libvirt >= 7.3, real hosts)."""

    name = "libvirt"

    def __init__(self, conn: Any | None = None, *, uri: str = "") -> None:
        self._conn = conn
        self._uri = uri

    @property
    def conn(self) -> Any:
        """Opened on first use, so a daemon starts while libvirtd is still down."""
        if self._conn is None:
            try:
                self._conn = libvirt.open(self._uri)
            except libvirt.libvirtError as exc:
                raise DriverError(f"connecting to {self._uri} for mdevs failed: {exc}") from exc
        return self._conn

    def _find(self, uuid: str) -> Any | None:
        try:
            devices = self.conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV)
        except libvirt.libvirtError as exc:
            raise DriverError(f"listing mdev node devices failed: {exc}") from exc
        for dev in devices:
            inst = mdev_instance(NodeDevice.from_xml(dev.XMLDesc(0)))
            if inst is not None and inst.uuid == uuid.lower():
                return dev
        return None

    def create(self, parent: str, type_id: str, uuid: str) -> None:
        parent_name = PciAddress.parse(parent, field="parent").nodedev_name
        xml = mdev_define_xml(parent_name, type_id, uuid)
        try:
            dev = self.conn.nodeDeviceDefineXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise DriverError(f"defining mdev {uuid} on {parent} failed: {exc}") from exc
        try:
            dev.create(0)
        except libvirt.libvirtError as exc:
            try:
                dev.undefine(0)
            except libvirt.libvirtError as undo_exc:
                log.error("undefining mdev %s after a failed start failed: %s", uuid, undo_exc)
            raise DriverError(f"starting mdev {uuid} on {parent} failed: {exc}") from exc

    def remove(self, uuid: str) -> None:
        dev = self._find(uuid)
        if dev is None:
            raise NotFound(f"mdev {uuid} is not known to libvirt")
        try:
            if dev.isActive():
                dev.destroy()
            if dev.isPersistent():
                dev.undefine(0)
        except libvirt.libvirtError as exc:
            raise DriverError(f"removing mdev {uuid} failed: {exc}") from exc

    def list(self) -> list[MdevInstance]:
        try:
            devices = self.conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV)
        except libvirt.libvirtError as exc:
            raise DriverError(f"listing mdev node devices failed: {exc}") from exc
        out = []
        for dev in devices:
            inst = mdev_instance(NodeDevice.from_xml(dev.XMLDesc(0)))
            if inst is not None:
                out.append(inst)
        return out


class MdevManager:
    def __init__(self, backend: MdevBackend) -> None:
        self.backend = backend

    def create(
        self,
        parent: str,
        type_id: str,
        uuid: str | None = None,
        *,
        undo: UndoStack | None = None,
        parent_driver: str | None = None,
    ) -> MdevRecord:
        """Create one mdev; with ``undo``, its removal is pushed for a later rollback."""
        the_uuid = _check_uuid(uuid) if uuid else str(uuidlib.uuid4())
        parent_addr = normalise_address(parent, field="parent")
        self.backend.create(parent_addr, type_id, the_uuid)
        record = MdevRecord(
            uuid=the_uuid,
            parent=parent_addr,
            type_id=type_id,
            via=self.backend.name,
            parent_driver=parent_driver,
            persistent=self.backend.name == "libvirt",
        )
        if undo is not None:
            undo.push(lambda: self.backend.remove(the_uuid), f"remove mdev {the_uuid}")
        log.info("created mdev %s (%s on %s) via %s", the_uuid, type_id, parent_addr, record.via)
        return record

    def remove(self, uuid: str) -> None:
        self.backend.remove(_check_uuid(uuid))

    def recreate(self, plan: MdevReconcile) -> tuple[list[MdevRecord], list[tuple[str, str]]]:
        """Recreate the declared mdevs a reboot lost; returns (created, [(uuid, error)])."""
        made: list[MdevRecord] = []
        failed: list[tuple[str, str]] = []
        for d in plan.recreate:
            try:
                made.append(self.create(d.parent, d.type_id, d.uuid))
            except (DriverError, FailedPrecondition, ResourceExhausted, AlreadyExists) as exc:
                failed.append((d.uuid, str(exc)))
        return made, failed
