"""Device claims: which VM holds which device (whole, one vGPU, one MIG instance).

A batch of claims for one VM is all-or-nothing (one SAVEPOINT). Whole-device exclusivity is
enforced by the database (``DeviceClaim.exclusive_device_id`` is UNIQUE), so two daemons or
threads racing for one GPU cannot both win even if both passed the checks below; the checks
exist for the rules a unique index cannot express (no vGPU next to a whole claim, one vGPU type
per GPU, MIG slice capacity) and for clear messages. On Postgres the device row is locked
(SELECT ... FOR UPDATE) so those rules are race-free too; on SQLite write sessions hold the
database write lock from BEGIN IMMEDIATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from vmmgr.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from vmmgr.state.models import VM, ClaimKind, Device, DeviceClaim
from vmmgr.state.repo._common import check_choice, get_or_404, violation_kind


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    device_id: str
    kind: str = ClaimKind.PCI.value
    mdev_type: str = ""
    mdev_uuid: str = ""
    mig_profile: str = ""
    original_driver: str = ""


def _held_by(claims: Sequence[DeviceClaim]) -> str:
    return ", ".join(sorted({c.vm_id for c in claims}))


def _check(dev: Device, req: ClaimRequest, existing: Sequence[DeviceClaim]) -> None:
    whole = [c for c in existing if c.kind == ClaimKind.PCI]
    if whole:
        raise FailedPrecondition(
            f"device {dev.id} is already claimed whole by vm {_held_by(whole)}",
            field="device_id",
        )
    if req.kind == ClaimKind.PCI:
        if existing:
            raise FailedPrecondition(
                f"device {dev.id} has {len(existing)} vGPU/MIG claims (vm {_held_by(existing)})",
                field="device_id",
            )
        return
    if req.kind == ClaimKind.MDEV:
        _check_mdev(dev, req, existing)
    else:
        _check_mig(dev, req, existing)


def _check_mdev(dev: Device, req: ClaimRequest, existing: Sequence[DeviceClaim]) -> None:
    if not req.mdev_type:
        raise InvalidArgument("mdev_type", "an mdev claim needs its mdev type")
    if any(c.kind == ClaimKind.MIG for c in existing):
        raise FailedPrecondition(f"device {dev.id} is partitioned by MIG", field="device_id")
    other_types = {c.mdev_type for c in existing if c.mdev_type != req.mdev_type}
    if other_types:
        raise FailedPrecondition(
            f"device {dev.id} runs vGPU type {sorted(other_types)[0]}; cannot add {req.mdev_type}",
            field="device_id",
        )
    offered = {t.get("name"): t for t in dev.mdev_types}
    if req.mdev_type not in offered:
        raise FailedPrecondition(
            f"device {dev.id} does not offer vGPU type {req.mdev_type}", field="mdev_type"
        )
    limit = int(offered[req.mdev_type].get("max_instances") or 0)
    if limit and len(existing) >= limit:
        raise ResourceExhausted(
            f"device {dev.id} has all {limit} {req.mdev_type} instances claimed",
            field="device_id",
        )


def _check_mig(dev: Device, req: ClaimRequest, existing: Sequence[DeviceClaim]) -> None:
    if not req.mig_profile:
        raise InvalidArgument("mig_profile", "a MIG claim needs its profile")
    if any(c.kind == ClaimKind.MDEV for c in existing):
        raise FailedPrecondition(f"device {dev.id} runs vGPUs", field="device_id")
    mig = dev.mig or {}
    if not mig.get("enabled"):
        raise FailedPrecondition(f"device {dev.id} is not in MIG mode", field="device_id")
    slices = {p["name"]: int(p.get("slices", 0)) for p in mig.get("profiles", [])}
    if req.mig_profile not in slices:
        raise FailedPrecondition(
            f"device {dev.id} has no MIG profile {req.mig_profile}", field="mig_profile"
        )
    used = sum(slices.get(c.mig_profile, 0) for c in existing)
    total = int(mig.get("total_slices", 0))
    if used + slices[req.mig_profile] > total:
        raise ResourceExhausted(
            f"device {dev.id} has {total - used} of {total} MIG slices free; "
            f"{req.mig_profile} needs {slices[req.mig_profile]}",
            field="device_id",
        )


def claim_devices(
    session: Session, vm_id: str, requests: Sequence[ClaimRequest]
) -> list[DeviceClaim]:
    """Claim every requested device for ``vm_id`` or none of them."""
    if session.get(VM, vm_id) is None:
        raise NotFound(f"vm {vm_id!r} not found", field="vm_id")
    for req in requests:
        check_choice("kind", req.kind, ClaimKind)
    made: list[DeviceClaim] = []
    current: str = ""
    try:
        with session.begin_nested():
            for req in requests:
                current = req.device_id
                dev = session.get(Device, req.device_id, with_for_update=True)
                if dev is None:
                    raise NotFound(f"device {req.device_id!r} not found", field="device_id")
                if not dev.present:
                    raise FailedPrecondition(
                        f"device {dev.id} is no longer present on its host", field="device_id"
                    )
                existing = list(
                    session.exec(select(DeviceClaim).where(DeviceClaim.device_id == dev.id))
                )
                _check(dev, req, existing)
                claim = DeviceClaim(
                    device_id=dev.id,
                    vm_id=vm_id,
                    kind=req.kind,
                    exclusive_device_id=dev.id if req.kind == ClaimKind.PCI else None,
                    mdev_type=req.mdev_type,
                    mdev_uuid=req.mdev_uuid,
                    mig_profile=req.mig_profile,
                    original_driver=req.original_driver,
                )
                session.add(claim)
                session.flush()
                made.append(claim)
    except IntegrityError as e:
        if violation_kind(e) == "unique":
            raise FailedPrecondition(
                f"device {current} is already claimed whole by another VM", field="device_id"
            ) from e
        raise
    return made


def claim_device(session: Session, vm_id: str, request: ClaimRequest) -> DeviceClaim:
    return claim_devices(session, vm_id, [request])[0]


def get_claim(session: Session, claim_id: str) -> DeviceClaim:
    return get_or_404(session, DeviceClaim, claim_id, "device claim")


def list_claims(
    session: Session,
    *,
    vm_id: str | None = None,
    device_id: str | None = None,
    host: str | None = None,
) -> list[DeviceClaim]:
    q = select(DeviceClaim).order_by(col(DeviceClaim.created_at), col(DeviceClaim.id))
    if vm_id is not None:
        q = q.where(DeviceClaim.vm_id == vm_id)
    if device_id is not None:
        q = q.where(DeviceClaim.device_id == device_id)
    if host is not None:
        q = q.join(Device, col(Device.id) == col(DeviceClaim.device_id)).where(Device.host == host)
    return list(session.exec(q))


def update_claim(
    session: Session,
    claim_id: str,
    *,
    mdev_uuid: str | None = None,
    original_driver: str | None = None,
) -> DeviceClaim:
    """Record what undo needs once the host step happened (created mdev, unbound driver)."""
    claim = get_claim(session, claim_id)
    if mdev_uuid is not None:
        claim.mdev_uuid = mdev_uuid
    if original_driver is not None:
        claim.original_driver = original_driver
    session.flush()
    return claim


def release_claim(session: Session, claim_id: str) -> DeviceClaim:
    claim = get_claim(session, claim_id)
    session.delete(claim)
    session.flush()
    return claim


def release_claims(session: Session, vm_id: str) -> list[DeviceClaim]:
    """Drop every claim of a VM; returns them (with original_driver / mdev_uuid for undo)."""
    claims = list_claims(session, vm_id=vm_id)
    session.execute(delete(DeviceClaim).where(col(DeviceClaim.vm_id) == vm_id))
    for c in claims:
        session.expunge(c)
    return claims
