"""Which mediated devices to (re)create: pure reconciliation of declared vs present mdevs.

Transient mdevs (sysfs ``create``) vanish on a host reboot; the store declares the ones VMs
need. After a reboot (or any scan) ``reconcile_mdevs`` says what to recreate, which present
mdevs nobody declared (reported, never removed automatically: they may be someone else's), and
which uuids exist with a different type or parent than declared (needs an operator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vmmgr.devices.model import MdevInstance


@dataclass(frozen=True, slots=True)
class DeclaredMdev:
    uuid: str
    parent: str  # PCI address
    type_id: str
    vm_id: str | None = None
    persistent: bool = True  # recreate after a reboot


@dataclass(frozen=True, slots=True)
class MdevMismatch:
    declared: DeclaredMdev
    present: MdevInstance


@dataclass(frozen=True, slots=True)
class MdevReconcile:
    recreate: tuple[DeclaredMdev, ...] = ()
    orphans: tuple[MdevInstance, ...] = ()
    mismatched: tuple[MdevMismatch, ...] = ()
    ok: tuple[str, ...] = ()  # uuids present as declared


def reconcile_mdevs(
    declared: Iterable[DeclaredMdev], present: Iterable[MdevInstance]
) -> MdevReconcile:
    have = {m.uuid.lower(): m for m in present}
    recreate: list[DeclaredMdev] = []
    mismatched: list[MdevMismatch] = []
    ok: list[str] = []
    seen: set[str] = set()
    for d in declared:
        key = d.uuid.lower()
        seen.add(key)
        m = have.get(key)
        if m is None:
            if d.persistent:
                recreate.append(d)
        elif m.type_id != d.type_id or m.parent != d.parent:
            mismatched.append(MdevMismatch(d, m))
        else:
            ok.append(key)
    orphans = tuple(m for k, m in sorted(have.items()) if k not in seen)
    return MdevReconcile(tuple(recreate), orphans, tuple(mismatched), tuple(ok))
