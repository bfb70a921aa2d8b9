"""Boot and platform elements: ``<os>``, ``<features>``, ``<clock>``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.hypervisor.libvirt.xml.base import Element, child_text, expect_tag, make, sub


@dataclass(frozen=True, slots=True)
class OsType:
    """``<type arch='x86_64' machine='pc'>hvm</type>``."""

    TAG: ClassVar[str] = "type"

    value: str = "hvm"
    arch: str | None = None
    machine: str | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(value=el.text or "hvm", arch=el.get("arch"), machine=el.get("machine"))

    def build(self) -> Element:
        return make(self.TAG, self.value, arch=self.arch, machine=self.machine)


@dataclass(frozen=True, slots=True)
class Os:
    """``<os>``: guest type, BIOS boot order, or direct kernel boot (kernel/initrd/cmdline).

    The single-text children (``<boot dev=>``, ``<kernel>``, ``<initrd>``, ``<cmdline>``) are
    fields here, as in virt-manager's DomainOs.
    """

    TAG: ClassVar[str] = "os"

    type: OsType = OsType()
    boot_devs: tuple[str, ...] = ()
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        type_el = el.find(OsType.TAG)
        return cls(
            type=OsType.parse(type_el) if type_el is not None else OsType(),
            boot_devs=tuple(b.get("dev", "") for b in el.findall("boot")),
            kernel=child_text(el, "kernel"),
            initrd=child_text(el, "initrd"),
            cmdline=child_text(el, "cmdline"),
        )

    def build(self) -> Element:
        el = make(self.TAG)
        el.append(self.type.build())
        if self.kernel is not None:
            sub(el, "kernel", self.kernel)
        if self.initrd is not None:
            sub(el, "initrd", self.initrd)
        if self.cmdline is not None:
            sub(el, "cmdline", self.cmdline)
        for dev in self.boot_devs:
            sub(el, "boot", dev=dev)
        return el


@dataclass(frozen=True, slots=True)
class Features:
    """``<features><acpi/><apic/></features>``; other features are not modelled."""

    TAG: ClassVar[str] = "features"

    acpi: bool = True
    apic: bool = True

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(acpi=el.find("acpi") is not None, apic=el.find("apic") is not None)

    def build(self) -> Element:
        el = make(self.TAG)
        if self.acpi:
            sub(el, "acpi")
        if self.apic:
            sub(el, "apic")
        return el


@dataclass(frozen=True, slots=True)
class Clock:
    """``<clock offset='utc'/>``."""

    TAG: ClassVar[str] = "clock"

    offset: str = "utc"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(offset=el.get("offset", "utc"))

    def build(self) -> Element:
        return make(self.TAG, offset=self.offset)
