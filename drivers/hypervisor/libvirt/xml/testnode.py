"""The libvirt test driver's node XML (``test:///PATH.xml``): a whole fake host in one file.

    <node>
      <cpu><mhz/><model/><active/><nodes/><sockets/><cores/><threads/></cpu>
      <memory>KiB</memory>
      <pool type='dir'>...</pool>          (inline pools; volumes are in-memory only)
      <device>...</device>                 (nodedev XML: PCI GPUs, mdev types...)
      <domain type='test'>...</domain>     (pre-existing, e.g. foreign, domains)
    </node>

libvirt's test driver reports no NUMA cells for a custom node file; LibvirtConnection derives
``nodes`` equal cells from the CPU topology (see capabilities.cells_from_node_info).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from lxml import etree

from drivers.hypervisor.libvirt.xml.base import (
    Element,
    child,
    child_text,
    expect_tag,
    from_string,
    make,
    sub,
    to_string,
)
from drivers.hypervisor.libvirt.xml.domain import Domain
from drivers.hypervisor.libvirt.xml.storage import StoragePool


@dataclass(frozen=True, slots=True)
class TestDriverCpu:
    """``<cpu>`` of a test node: topology and model; host CPUs = nodes*sockets*cores*threads."""

    __test__: ClassVar[bool] = False
    TAG: ClassVar[str] = "cpu"

    nodes: int = 2
    sockets: int = 1
    cores: int = 4
    threads: int = 1
    mhz: int = 2000
    model: str = "x86_64"

    @property
    def cpus(self) -> int:
        return self.nodes * self.sockets * self.cores * self.threads

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)

        def num(tag: str, default: int) -> int:
            text = child_text(el, tag)
            return int(text) if text else default

        return cls(
            nodes=num("nodes", 1),
            sockets=num("sockets", 1),
            cores=num("cores", 1),
            threads=num("threads", 1),
            mhz=num("mhz", 2000),
            model=child_text(el, "model") or "x86_64",
        )

    def build(self) -> Element:
        el = make(self.TAG)
        sub(el, "mhz", str(self.mhz))
        sub(el, "model", self.model)
        sub(el, "active", str(self.cpus))
        sub(el, "nodes", str(self.nodes))
        sub(el, "sockets", str(self.sockets))
        sub(el, "cores", str(self.cores))
        sub(el, "threads", str(self.threads))
        return el


@dataclass(frozen=True, slots=True)
class TestDriverNode:
    """``<node>``: the root of a test-driver host file. ``devices`` are nodedev elements kept
    as parsed lxml trees (the device layer owns their schema)."""

    __test__: ClassVar[bool] = False
    TAG: ClassVar[str] = "node"

    cpu: TestDriverCpu = TestDriverCpu()
    memory_kib: int = 8 * 1024 * 1024
    pools: tuple[StoragePool, ...] = ()
    domains: tuple[Domain, ...] = ()
    devices: tuple[Element, ...] = ()

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        cpu = child(el, TestDriverCpu.TAG)
        mem = child_text(el, "memory")
        return cls(
            cpu=TestDriverCpu.parse(cpu) if cpu is not None else TestDriverCpu(),
            memory_kib=int(mem) if mem else 8 * 1024 * 1024,
            pools=tuple(StoragePool.parse(p) for p in el.findall(StoragePool.TAG)),
            domains=tuple(Domain.parse(d) for d in el.findall(Domain.TAG)),
            devices=tuple(el.findall("device")),
        )

    @classmethod
    def with_device_xml(cls, node: TestDriverNode, *device_xml: str) -> TestDriverNode:
        """``node`` plus nodedev elements given as XML documents (parsed, never spliced)."""
        extra = tuple(from_string(x) for x in device_xml)
        for dev in extra:
            expect_tag(dev, "device")
        return cls(
            cpu=node.cpu,
            memory_kib=node.memory_kib,
            pools=node.pools,
            domains=node.domains,
            devices=node.devices + extra,
        )

    def build(self) -> Element:
        el = make(self.TAG)
        el.append(self.cpu.build())
        sub(el, "memory", str(self.memory_kib))
        for pool in self.pools:
            el.append(pool.build())
        for domain in self.domains:
            el.append(domain.build())
        for dev in self.devices:
            el.append(_copy(dev))
        return el

    def write(self, path: str) -> str:
        """Write the node file; returns ``path`` (feed it to ``test_uri``)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_string(self.build()))
        return path


def _copy(el: Element) -> Element:
    return from_string(etree.tostring(el, encoding="unicode"))
