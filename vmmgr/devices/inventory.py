"""Build a host's device inventory from libvirt node devices, sysfs extras and NVML facts.

Pure: the drivers (or the core, from ``HostConnection.list_node_device_xml``) fetch the raw
data; this module merges it. libvirt wins where both have a field; sysfs only fills gaps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from vmmgr.devices.catalog import classify, model_name
from vmmgr.devices.model import (
    GpuFacts,
    HostInventory,
    MdevInstance,
    MdevType,
    PciAddress,
    PciDevice,
    SysfsPciFacts,
)
from vmmgr.devices.nodedev_xml import NodeDevice

_MDEV_NAME = re.compile(r"^mdev_([0-9a-fA-F_]{36})(?:_.*)?$")


def pci_device(node: NodeDevice, sysfs: SysfsPciFacts | None = None) -> PciDevice | None:
    """One PCI function from its nodedev; None for non-PCI devices."""
    cap = node.pci
    if cap is None:
        return None
    address = str(cap.address)
    pci_class = cap.class_code or 0
    group = cap.iommu_group
    members = tuple(str(a) for a in group.members) if group else ()
    if sysfs is not None and not members:
        members = sysfs.iommu_group_members
    iommu = group.number if group else (sysfs.iommu_group if sysfs else None)
    if iommu is not None and address not in members:
        members = tuple(sorted((*members, address)))
    max_by_type = dict(sysfs.mdev_max_instances) if sysfs else {}
    pf = str(cap.phys_function) if cap.phys_function else (sysfs.physfn if sysfs else None)
    vfs = tuple(str(v) for v in cap.virt_functions) or (sysfs.virtfns if sysfs else ())
    max_vfs = cap.virt_functions_max
    if max_vfs is None and sysfs is not None:
        max_vfs = sysfs.sriov_totalvfs
    return PciDevice(
        address=address,
        vendor_id=cap.vendor_id,
        product_id=cap.product_id,
        pci_class=pci_class,
        kind=classify(cap.vendor_id, cap.product_id, pci_class),
        model=model_name(cap.vendor_id, cap.product_id, cap.product_name),
        vendor_name=cap.vendor_name,
        product_name=cap.product_name,
        nodedev_name=node.name or "",
        driver=node.driver or (sysfs.driver if sysfs else None),
        numa_node=cap.numa_node
        if cap.numa_node is not None
        else (sysfs.numa_node if sysfs else None),
        iommu_group=iommu,
        iommu_group_members=members,
        is_vf=pf is not None,
        pf=pf,
        vfs=vfs,
        max_vfs=max_vfs,
        mdev_types=tuple(
            MdevType(t.id, t.name, t.device_api, t.available_instances, max_by_type.get(t.id))
            for t in cap.mdev_types
        ),
    )


def mdev_instance(node: NodeDevice) -> MdevInstance | None:
    cap = node.mdev
    if cap is None:
        return None
    uuid = cap.uuid
    if uuid is None and node.name:
        m = _MDEV_NAME.match(node.name)
        uuid = m[1].replace("_", "-") if m else None
    if uuid is None or node.parent is None:
        return None
    return MdevInstance(
        uuid=uuid.lower(),
        type_id=cap.type_id,
        parent=str(PciAddress.parse(node.parent, field="parent")),
        iommu_group=cap.iommu_group,
    )


def build_inventory(
    host: str,
    nodes: Iterable[NodeDevice],
    *,
    sysfs: Mapping[str, SysfsPciFacts] | None = None,
    sysfs_mdevs: Sequence[MdevInstance] = (),
    gpus: Sequence[GpuFacts] = (),
    nvml_driver_version: str | None = None,
) -> HostInventory:
    extras = sysfs or {}
    devices: list[PciDevice] = []
    mdevs: dict[str, MdevInstance] = {}
    for node in nodes:
        pci = node.pci
        if pci is not None:
            dev = pci_device(node, extras.get(str(pci.address)))
            if dev is not None:
                devices.append(dev)
            continue
        inst = mdev_instance(node)
        if inst is not None:
            mdevs[inst.uuid] = inst
    for inst in sysfs_mdevs:
        mdevs.setdefault(inst.uuid, inst)
    devices.sort(key=lambda d: PciAddress.parse(d.address))
    return HostInventory(
        host=host,
        devices=tuple(devices),
        mdevs=tuple(sorted(mdevs.values(), key=lambda m: (m.parent, m.uuid))),
        gpus=tuple(gpus),
        nvml_driver_version=nvml_driver_version,
    )


def inventory_from_xml(
    host: str,
    xmls: Iterable[str],
    *,
    sysfs: Mapping[str, SysfsPciFacts] | None = None,
    gpus: Sequence[GpuFacts] = (),
) -> HostInventory:
    """From raw nodedev XML (``HostConnection.list_node_device_xml``): libvirt data alone."""
    return build_inventory(host, (NodeDevice.from_xml(x) for x in xmls), sysfs=sysfs, gpus=gpus)
