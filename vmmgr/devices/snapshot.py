"""Inventory (+ facts, health, claims from the store) -> vmmgr.snapshot.DeviceSnap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from vmmgr.devices.model import GpuFacts, HostInventory, MigFacts, PciDevice
from vmmgr.snapshot import (
    DeviceHealth,
    DeviceKind,
    DeviceSnap,
    MdevTypeSnap,
    MigProfileSnap,
    MigSnap,
)

MIG_TOTAL_SLICES = 7  # A100 / H100 / H200 compute slices


def device_id(host: str, address: str) -> str:
    return f"{host}/{address}"


def mig_snap(facts: MigFacts, claimed: Sequence[str] = ()) -> MigSnap | None:
    """None when the GPU has no MIG profiles (not MIG capable, or unknown)."""
    if not facts.profiles:
        return None
    total = max((p.slices for p in facts.profiles), default=MIG_TOTAL_SLICES)
    return MigSnap(
        enabled=bool(facts.enabled),
        total_slices=total,
        profiles=tuple(
            MigProfileSnap(p.name, p.slices, p.memory_mib, p.max_instances) for p in facts.profiles
        ),
        instances=tuple(i.profile for i in facts.instances),
        claimed=tuple(claimed),
    )


def _included(dev: PciDevice, group_has_accelerator: set[int], include_other: bool) -> bool:
    if dev.kind is not DeviceKind.OTHER:
        return True
    if dev.is_bridge:
        return False  # bridges may share a group; vfio does not need them bound
    if include_other:
        return True
    # Companions of an accelerator (e.g. a GPU's audio function) decide passthrough.
    return dev.iommu_group is not None and dev.iommu_group in group_has_accelerator


def inventory_to_snapshot(
    inventory: HostInventory,
    *,
    health: Mapping[str, DeviceHealth] | None = None,
    claimed_by: Mapping[str, str] | None = None,
    mdev_claims: Mapping[str, int] | None = None,
    mig_claimed: Mapping[str, Sequence[str]] | None = None,
    include_other: bool = False,
) -> tuple[DeviceSnap, ...]:
    """DeviceSnaps of a host's accelerators and of the devices sharing their IOMMU groups.

    Maps are keyed by device id ("<host>/<address>"): health from ``evaluate_host_health``,
    and the claims the store holds (whole-device holder, vGPU count, claimed MIG profiles).
    """
    host = inventory.host
    groups = {d.iommu_group for d in inventory.accelerators if d.iommu_group is not None}
    mdevs_by_parent: dict[str, Counter[str]] = {}
    for m in inventory.mdevs:
        mdevs_by_parent.setdefault(m.parent, Counter())[m.type_id] += 1
    out: list[DeviceSnap] = []
    for dev in inventory.devices:
        if not _included(dev, groups, include_other):
            continue
        did = device_id(host, dev.address)
        facts: GpuFacts | None = inventory.gpu_facts(dev.address)
        existing = mdevs_by_parent.get(dev.address, Counter())
        types = tuple(
            MdevTypeSnap(
                name=t.id,
                display_name=t.name,
                available=t.available_instances,
                max_instances=t.max_instances
                if t.max_instances is not None
                else t.available_instances + existing[t.id],
            )
            for t in dev.mdev_types
        )
        util = None
        if facts is not None and facts.utilization_gpu_pct is not None:
            util = facts.utilization_gpu_pct / 100.0
        out.append(
            DeviceSnap(
                id=did,
                host=host,
                address=dev.address,
                kind=dev.kind,
                vendor_id=dev.vendor_id,
                product_id=dev.product_id,
                model=dev.model,
                numa_node=dev.numa_node,
                iommu_group=dev.iommu_group,
                health=(health or {}).get(did, DeviceHealth.HEALTHY),
                claimed_by=(claimed_by or {}).get(did),
                mdev_types=types,
                active_mdev_type=existing.most_common(1)[0][0] if existing else None,
                mdev_claims=(mdev_claims or {}).get(did, 0),
                mig=mig_snap(facts.mig, (mig_claimed or {}).get(did, ()))
                if facts is not None and facts.mig is not None
                else None,
                is_vf=dev.is_vf,
                utilization=util,
                pf=device_id(host, dev.pf) if dev.pf else None,
                driver=dev.driver,
            )
        )
    return tuple(out)
