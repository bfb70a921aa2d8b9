"""Read-only view of ``virConnectGetCapabilities`` output: host CPU, NUMA cells, guests.

Only parsed (vmmgr never writes capabilities XML), so these classes have ``parse`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.hypervisor.libvirt.xml.base import (
    Element,
    child,
    child_text,
    expect_tag,
    from_string,
    to_bytes,
)


@dataclass(frozen=True, slots=True)
class NumaCell:
    """``<cell id=>`` of ``<topology><cells>``: its memory and host CPU ids."""

    TAG: ClassVar[str] = "cell"

    id: int
    memory_kib: int
    cpu_ids: tuple[int, ...]

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        mem = child(el, "memory")
        return cls(
            id=int(el.get("id", "0")),
            memory_kib=to_bytes(mem.text or "0", mem.get("unit"), "KiB") // 1024
            if mem is not None
            else 0,
            cpu_ids=tuple(int(c.get("id", "0")) for c in el.findall("cpus/cpu")),
        )


@dataclass(frozen=True, slots=True)
class Guest:
    """``<guest>``: an OS type + arch and the domain types (kvm, qemu, test) offered for it."""

    TAG: ClassVar[str] = "guest"

    os_type: str
    arch: str
    domain_types: tuple[str, ...]

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        arch = child(el, "arch")
        return cls(
            os_type=child_text(el, "os_type") or "",
            arch=arch.get("name", "") if arch is not None else "",
            domain_types=tuple(d.get("type", "") for d in el.findall("arch/domain")),
        )


@dataclass(frozen=True, slots=True)
class HostCapabilities:
    """``<capabilities>``: the parts vmmgr decides with."""

    TAG: ClassVar[str] = "capabilities"

    arch: str
    uuid: str | None = None
    cpu_features: frozenset[str] = frozenset()
    cells: tuple[NumaCell, ...] = ()
    guests: tuple[Guest, ...] = ()

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(
            arch=el.findtext("host/cpu/arch") or "",
            uuid=el.findtext("host/uuid"),
            cpu_features=frozenset(
                f.get("name") or f.tag for f in _host_features(el) if isinstance(f.tag, str)
            ),
            cells=tuple(NumaCell.parse(c) for c in el.findall("host/topology/cells/cell")),
            guests=tuple(Guest.parse(g) for g in el.findall(Guest.TAG)),
        )

    @classmethod
    def from_xml(cls, xml: str) -> Self:
        return cls.parse(from_string(xml))

    @property
    def domain_types(self) -> tuple[str, ...]:
        """Domain types offered for hvm guests, sorted and unique (e.g. ("kvm", "qemu"))."""
        types = {t for g in self.guests if g.os_type == "hvm" for t in g.domain_types}
        return tuple(sorted(types))

    @property
    def has_hw_virt(self) -> bool:
        """Whether the host CPU shows vmx/svm (a nested-virt-capable CPU model works)."""
        return bool({"vmx", "svm"} & self.cpu_features)

    def cell(self, cell_id: int) -> NumaCell | None:
        return next((c for c in self.cells if c.id == cell_id), None)

    def with_cells(self, cells: tuple[NumaCell, ...]) -> HostCapabilities:
        return HostCapabilities(
            arch=self.arch,
            uuid=self.uuid,
            cpu_features=self.cpu_features,
            cells=cells,
            guests=self.guests,
        )


def _host_features(el: Element) -> list[Element]:
    """Host CPU features: ``<feature name=>`` on real hosts, ``<features><pae/>`` elsewhere."""
    cpu = el.find("host/cpu")
    if cpu is None:
        return []
    found = list(cpu.findall("feature"))
    feats = cpu.find("features")
    if feats is not None:
        found.extend(feats)
    return found


def cells_from_node_info(nodes: int, cpus: int, memory_kib: int) -> tuple[NumaCell, ...]:
    """NUMA cells when capabilities list none (libvirt's test driver on a custom node file).

    CPUs are split into contiguous equal ranges and memory evenly, the layout libvirt's
    default test node uses; a host without NUMA information is one cell with everything.
    """
    nodes = max(nodes, 1)
    per_cpu, per_mem = max(cpus // nodes, 1), memory_kib // nodes
    return tuple(
        NumaCell(
            id=i,
            memory_kib=per_mem,
            cpu_ids=tuple(range(i * per_cpu, min((i + 1) * per_cpu, max(cpus, 1)))),
        )
        for i in range(nodes)
    )
