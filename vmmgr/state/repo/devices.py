"""Device inventory (upserted from host scans) and health/telemetry facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from vmmgr.errors import InvalidArgument, NotFound
from vmmgr.snapshot import DeviceHealth, DeviceKind
from vmmgr.state.models import Device, Host
from vmmgr.state.repo._common import check_choice, get_or_404
from vmmgr.state.types import utcnow

# Written by a scan. health/health_reasons/nvml/mig belong to the health and telemetry paths
# and survive a rescan (a scan only sets them when it first inserts a device).
INVENTORY_FIELDS = (
    "address",
    "kind",
    "vendor_id",
    "product_id",
    "vendor_name",
    "product_name",
    "model",
    "class_code",
    "driver",
    "numa_node",
    "iommu_group",
    "iommu_group_members",
    "sriov",
    "mdev_types",
)


def device_id(host: str, address: str) -> str:
    return f"{host}/{address}"


@dataclass(frozen=True, slots=True)
class DeviceSync:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # no longer found: marked present=False


def upsert_devices(
    session: Session, host: str, scanned: Sequence[Device], *, now: datetime | None = None
) -> DeviceSync:
    """Make the host's inventory match one complete scan.

    Devices not in the scan are kept with ``present=False`` (claims and history refer to them).
    """
    if session.get(Host, host) is None:
        raise NotFound(f"host {host!r} not found", field="host")
    now = now or utcnow()
    existing = {d.id: d for d in session.exec(select(Device).where(Device.host == host))}
    result = DeviceSync()
    seen: set[str] = set()
    for dev in scanned:
        if dev.host != host:
            raise InvalidArgument("host", f"device {dev.address} belongs to {dev.host!r}")
        check_choice("kind", dev.kind, DeviceKind)
        want_id = device_id(host, dev.address)
        if dev.id and dev.id != want_id:
            raise InvalidArgument("id", f"device id must be {want_id!r}, got {dev.id!r}")
        if want_id in seen:
            raise InvalidArgument("address", f"device {dev.address} listed twice")
        seen.add(want_id)
        row = existing.get(want_id)
        if row is None:
            check_choice("health", dev.health, DeviceHealth)
            new = Device.model_validate(dev.model_dump() | {"id": want_id, "updated_at": now})
            new.present = True
            session.add(new)
            result.added.append(want_id)
            continue
        for name in INVENTORY_FIELDS:
            setattr(row, name, getattr(dev, name))
        row.present = True
        row.updated_at = now
        result.updated.append(want_id)
    for dev_id, row in existing.items():
        if dev_id not in seen and row.present:
            row.present = False
            row.updated_at = now
            result.gone.append(dev_id)
    session.flush()
    return result


def get_device(session: Session, dev_id: str) -> Device:
    return get_or_404(session, Device, dev_id, "device")


def list_devices(
    session: Session,
    *,
    host: str | None = None,
    kind: str | None = None,
    present_only: bool = True,
) -> list[Device]:
    q = select(Device).order_by(col(Device.id))
    if host is not None:
        q = q.where(Device.host == host)
    if kind is not None:
        q = q.where(Device.kind == kind)
    if present_only:
        q = q.where(col(Device.present).is_(True))
    return list(session.exec(q))


def set_device_health(
    session: Session, dev_id: str, health: str, reasons: Sequence[str] = ()
) -> Device:
    check_choice("health", health, DeviceHealth)
    dev = get_device(session, dev_id)
    dev.health = health
    dev.health_reasons = list(reasons)
    dev.updated_at = utcnow()
    session.flush()
    return dev


def update_device_telemetry(
    session: Session,
    dev_id: str,
    *,
    nvml: Mapping[str, Any] | None = None,
    mig: Mapping[str, Any] | None = None,
) -> Device:
    """Replace the latest NVML facts and/or MIG layout of one device."""
    dev = get_device(session, dev_id)
    if nvml is not None:
        dev.nvml = dict(nvml)
    if mig is not None:
        dev.mig = dict(mig)
    dev.updated_at = utcnow()
    session.flush()
    return dev
