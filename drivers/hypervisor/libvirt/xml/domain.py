"""``<domain>``: the root element, plus parse helpers for libvirt's XMLDesc output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Self

from drivers.hypervisor.libvirt.xml.base import (
    Element,
    child_text,
    expect_tag,
    from_string,
    make,
    sub,
    to_string,
)
from drivers.hypervisor.libvirt.xml.devices import Devices
from drivers.hypervisor.libvirt.xml.guest_os import Clock, Features, Os
from drivers.hypervisor.libvirt.xml.metadata import Metadata, VmmgrInstance
from drivers.hypervisor.libvirt.xml.resources import Cpu, CurrentMemory, Memory, NumaTune, Vcpu


@dataclass(frozen=True, slots=True)
class Domain:
    """``<domain type=...>``. Lifecycle actions (on_poweroff...) are text children, so fields."""

    TAG: ClassVar[str] = "domain"

    type: str
    name: str
    uuid: str
    memory: Memory
    vcpu: Vcpu
    os: Os = field(default_factory=Os)
    title: str | None = None
    description: str | None = None
    metadata: Metadata | None = None
    current_memory: CurrentMemory | None = None
    numatune: NumaTune | None = None
    features: Features | None = None
    cpu: Cpu | None = None
    clock: Clock | None = None
    on_poweroff: str | None = None
    on_reboot: str | None = None
    on_crash: str | None = None
    devices: Devices = field(default_factory=Devices)

    @property
    def vmmgr(self) -> VmmgrInstance | None:
        return self.metadata.instance if self.metadata is not None else None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)

        def one(tag: str) -> Element | None:
            return el.find(tag)

        md, mem, cur, vcpu = one("metadata"), one("memory"), one("currentMemory"), one("vcpu")
        numa, os_, feats, cpu = one("numatune"), one("os"), one("features"), one("cpu")
        clock, devices = one("clock"), one("devices")
        return cls(
            type=el.get("type", ""),
            name=child_text(el, "name") or "",
            uuid=child_text(el, "uuid") or "",
            title=child_text(el, "title"),
            description=child_text(el, "description"),
            metadata=Metadata.parse(md) if md is not None else None,
            memory=Memory.parse(mem) if mem is not None else Memory(0),
            current_memory=CurrentMemory.parse(cur) if cur is not None else None,
            vcpu=Vcpu.parse(vcpu) if vcpu is not None else Vcpu(1, placement=None),
            numatune=NumaTune.parse(numa) if numa is not None else None,
            os=Os.parse(os_) if os_ is not None else Os(),
            features=Features.parse(feats) if feats is not None else None,
            cpu=Cpu.parse(cpu) if cpu is not None else None,
            clock=Clock.parse(clock) if clock is not None else None,
            on_poweroff=child_text(el, "on_poweroff"),
            on_reboot=child_text(el, "on_reboot"),
            on_crash=child_text(el, "on_crash"),
            devices=Devices.parse(devices) if devices is not None else Devices(),
        )

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type)
        sub(el, "name", self.name)
        sub(el, "uuid", self.uuid)
        if self.title is not None:
            sub(el, "title", self.title)
        if self.description is not None:
            sub(el, "description", self.description)
        if self.metadata is not None:
            el.append(self.metadata.build())
        el.append(self.memory.build())
        if self.current_memory is not None:
            el.append(self.current_memory.build())
        el.append(self.vcpu.build())
        if self.numatune is not None:
            el.append(self.numatune.build())
        el.append(self.os.build())
        if self.features is not None:
            el.append(self.features.build())
        if self.cpu is not None:
            el.append(self.cpu.build())
        if self.clock is not None:
            el.append(self.clock.build())
        for tag, value in (
            ("on_poweroff", self.on_poweroff),
            ("on_reboot", self.on_reboot),
            ("on_crash", self.on_crash),
        ):
            if value is not None:
                sub(el, tag, value)
        el.append(self.devices.build())
        return el

    def to_xml(self) -> str:
        return to_string(self.build())


def parse_domain(xml: str) -> Domain:
    """Parse domain XML (ours or libvirt's XMLDesc); unmodelled elements are skipped."""
    return Domain.parse(from_string(xml))


def vmmgr_metadata(xml: str) -> tuple[str, str] | None:
    """(vm_id, owner) from a domain's vmmgr metadata, or None for a foreign domain.

    A domain is vmmgr's only if the metadata id equals the domain uuid (vm_id IS the uuid);
    a copied XML with someone else's id stays foreign.
    """
    domain = parse_domain(xml)
    inst = domain.vmmgr
    if inst is None or inst.id.lower() != domain.uuid.lower():
        return None
    return inst.id, inst.owner
