"""Reads the PCI/mdev parts of sysfs under a root (``/`` on a host, a fake tree in tests).

Only what libvirt's node-device XML may lack: bound driver, NUMA node, IOMMU group members,
SR-IOV links and totals, mdev types' ``max_instance`` (NVIDIA puts it in ``description``), and
the mediated devices that exist.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vmmgr.devices.model import MdevInstance, SysfsPciFacts, normalise_address

_MAX_INSTANCE = re.compile(r"max_instance\s*=\s*(\d+)")


def write_sysfs_attr(path: Path, value: str) -> None:
    """One write of a sysfs attribute (the kernel acts on the write itself)."""
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


class Sysfs:
    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"

    @property
    def pci_devices(self) -> Path:
        return self.sys / "bus" / "pci" / "devices"

    def pci_device_dir(self, address: str) -> Path:
        return self.pci_devices / normalise_address(address)

    def mdev_type_dir(self, parent: str, type_id: str) -> Path:
        return (
            self.sys
            / "class"
            / "mdev_bus"
            / normalise_address(parent, field="parent")
            / "mdev_supported_types"
            / type_id
        )

    def mdev_dir(self, uuid: str) -> Path:
        return self.sys / "bus" / "mdev" / "devices" / uuid.lower()

    def exists(self, address: str) -> bool:
        return self.pci_device_dir(address).exists()

    def pci_facts(self, address: str) -> SysfsPciFacts | None:
        addr = normalise_address(address)
        d = self.pci_devices / addr
        if not d.exists():
            return None
        numa = _int(_read(d / "numa_node"))
        group = _int(_link_name(d / "iommu_group"))
        members: tuple[str, ...] = ()
        if group is not None:
            gdir = self.sys / "kernel" / "iommu_groups" / str(group) / "devices"
            try:
                members = tuple(sorted(os.listdir(gdir)))
            except OSError:
                members = (addr,)
        virtfns: list[tuple[int, str]] = []
        try:
            for name in os.listdir(d):
                if name.startswith("virtfn"):
                    target = _link_name(d / name)
                    index = _int(name[len("virtfn") :])
                    if target and index is not None:
                        virtfns.append((index, target))
        except OSError:
            pass
        maxes: list[tuple[str, int]] = []
        types = d / "mdev_supported_types"
        if types.is_dir():
            for t in sorted(os.listdir(types)):
                m = _MAX_INSTANCE.search(_read(types / t / "description") or "")
                if m:
                    maxes.append((t, int(m[1])))
        return SysfsPciFacts(
            address=addr,
            driver=_link_name(d / "driver"),
            numa_node=None if numa is None or numa < 0 else numa,
            iommu_group=group,
            iommu_group_members=members,
            physfn=_link_name(d / "physfn"),
            virtfns=tuple(t for _, t in sorted(virtfns)),
            sriov_totalvfs=_int(_read(d / "sriov_totalvfs")),
            mdev_max_instances=tuple(maxes),
        )

    def all_pci_facts(self) -> dict[str, SysfsPciFacts]:
        out: dict[str, SysfsPciFacts] = {}
        try:
            names = sorted(os.listdir(self.pci_devices))
        except OSError:
            return out
        for name in names:
            facts = self.pci_facts(name)
            if facts is not None:
                out[facts.address] = facts
        return out

    def mdevs(self) -> list[MdevInstance]:
        base = self.sys / "bus" / "mdev" / "devices"
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return []
        out: list[MdevInstance] = []
        for uuid in names:
            link = base / uuid
            try:
                parent = os.path.basename(os.path.dirname(os.readlink(link)))
            except OSError:
                continue
            type_id = _link_name(link / "mdev_type")
            if type_id is None:
                continue
            out.append(
                MdevInstance(
                    uuid=uuid.lower(),
                    type_id=type_id,
                    parent=normalise_address(parent, field="parent"),
                    iommu_group=_int(_link_name(link / "iommu_group")),
                )
            )
        return out
