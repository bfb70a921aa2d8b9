"""``<devices>`` and the device elements vmmgr defines.

Unmodelled devices in libvirt's output (controllers, inputs, addresses...) are skipped when
parsing: ``parse`` reads what vmmgr needs, ``build`` writes what vmmgr defines, and libvirt fills
in the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.hypervisor.libvirt.xml.base import (
    Buildable,
    Element,
    attr,
    child,
    expect_tag,
    int_attr,
    make,
    on_off,
    sub,
    yes_no,
)

_PCI_ADDR = re.compile(
    r"^(?P<domain>[0-9a-fA-F]{4}):(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})"
    r"\.(?P<function>[0-7])$"
)


@dataclass(frozen=True, slots=True)
class Disk:
    """``<disk type='file' device='disk|cdrom'>`` with driver, file source, target, readonly."""

    TAG: ClassVar[str] = "disk"

    source_file: str
    target_dev: str
    target_bus: str = "virtio"
    device: str = "disk"
    type: str = "file"
    driver_name: str | None = "qemu"
    driver_type: str | None = "qcow2"
    readonly: bool = False

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        driver = child(el, "driver")
        target = child(el, "target")
        return cls(
            source_file=attr(child(el, "source"), "file") or "",
            target_dev=attr(target, "dev") or "",
            target_bus=attr(target, "bus") or "",
            device=el.get("device", "disk"),
            type=el.get("type", "file"),
            driver_name=attr(driver, "name"),
            driver_type=attr(driver, "type"),
            readonly=el.find("readonly") is not None,
        )

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type, device=self.device)
        if self.driver_name is not None or self.driver_type is not None:
            sub(el, "driver", name=self.driver_name, type_=self.driver_type)
        sub(el, "source", file=self.source_file)
        sub(el, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            sub(el, "readonly")
        return el


@dataclass(frozen=True, slots=True)
class Interface:
    """``<interface type='network'>`` (source network) or ``<interface type='user'>``."""

    TAG: ClassVar[str] = "interface"

    type: str = "network"  # network | user
    source_network: str | None = None
    mac: str | None = None
    model: str | None = "virtio"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(
            type=el.get("type", "network"),
            source_network=attr(child(el, "source"), "network"),
            mac=attr(child(el, "mac"), "address"),
            model=attr(child(el, "model"), "type"),
        )

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type)
        if self.mac is not None:
            sub(el, "mac", address=self.mac)
        if self.source_network is not None:
            sub(el, "source", network=self.source_network)
        if self.model is not None:
            sub(el, "model", type_=self.model)
        return el


@dataclass(frozen=True, slots=True)
class Serial:
    """``<serial type='pty'><target port='0'/></serial>``."""

    TAG: ClassVar[str] = "serial"

    type: str = "pty"
    target_port: int = 0

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(type=el.get("type", "pty"), target_port=int_attr(child(el, "target"), "port"))

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type)
        sub(el, "target", port=str(self.target_port))
        return el


@dataclass(frozen=True, slots=True)
class Console:
    """``<console type='pty'><target type='serial' port='0'/></console>``."""

    TAG: ClassVar[str] = "console"

    type: str = "pty"
    target_type: str = "serial"
    target_port: int = 0

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        target = child(el, "target")
        return cls(
            type=el.get("type", "pty"),
            target_type=attr(target, "type") or "serial",
            target_port=int_attr(target, "port"),
        )

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type)
        sub(el, "target", type_=self.target_type, port=str(self.target_port))
        return el


@dataclass(frozen=True, slots=True)
class Channel:
    """``<channel type='unix'><source mode='bind'/><target type='virtio' name=.../></channel>``.

    Without a source path libvirt picks one under its own state directory.
    """

    TAG: ClassVar[str] = "channel"

    target_name: str
    type: str = "unix"
    source_mode: str | None = "bind"
    source_path: str | None = None
    target_type: str = "virtio"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        source = child(el, "source")
        target = child(el, "target")
        return cls(
            target_name=attr(target, "name") or "",
            type=el.get("type", "unix"),
            source_mode=attr(source, "mode"),
            source_path=attr(source, "path"),
            target_type=attr(target, "type") or "virtio",
        )

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type)
        if self.source_mode is not None or self.source_path is not None:
            sub(el, "source", mode=self.source_mode, path=self.source_path)
        sub(el, "target", type_=self.target_type, name=self.target_name)
        return el


@dataclass(frozen=True, slots=True)
class HostdevPci:
    """``<hostdev mode='subsystem' type='pci' managed='yes'>`` with a PCI source address."""

    TAG: ClassVar[str] = "hostdev"
    TYPE: ClassVar[str] = "pci"

    domain: int
    bus: int
    slot: int
    function: int
    managed: bool = True

    @classmethod
    def from_address(cls, address: str, *, managed: bool = True) -> Self:
        """From "0000:3b:00.0"; ValueError if malformed."""
        m = _PCI_ADDR.match(address)
        if m is None:
            raise ValueError(f"not a PCI address (DDDD:BB:SS.F): {address!r}")
        return cls(
            domain=int(m["domain"], 16),
            bus=int(m["bus"], 16),
            slot=int(m["slot"], 16),
            function=int(m["function"]),
            managed=managed,
        )

    @property
    def address(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        addr = el.find("source/address")
        return cls(
            domain=int_attr(addr, "domain"),
            bus=int_attr(addr, "bus"),
            slot=int_attr(addr, "slot"),
            function=int_attr(addr, "function"),
            managed=el.get("managed", "no") == "yes",
        )

    def build(self) -> Element:
        el = make(self.TAG, mode="subsystem", type_=self.TYPE, managed=yes_no(self.managed))
        source = sub(el, "source")
        sub(
            source,
            "address",
            domain=f"0x{self.domain:04x}",
            bus=f"0x{self.bus:02x}",
            slot=f"0x{self.slot:02x}",
            function=f"0x{self.function:x}",
        )
        return el


@dataclass(frozen=True, slots=True)
class HostdevMdev:
    """``<hostdev mode='subsystem' type='mdev' model='vfio-pci' display='off'>`` (a vGPU)."""

    TAG: ClassVar[str] = "hostdev"
    TYPE: ClassVar[str] = "mdev"

    uuid: str
    model: str = "vfio-pci"
    display: bool = False

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(
            uuid=attr(el.find("source/address"), "uuid") or "",
            model=el.get("model", "vfio-pci"),
            display=el.get("display", "off") == "on",
        )

    def build(self) -> Element:
        el = make(
            self.TAG,
            mode="subsystem",
            type_=self.TYPE,
            model=self.model,
            display=on_off(self.display),
        )
        source = sub(el, "source")
        sub(source, "address", uuid=self.uuid)
        return el


Hostdev = HostdevPci | HostdevMdev


@dataclass(frozen=True, slots=True)
class Watchdog:
    """``<watchdog model='i6300esb' action='reset'/>``."""

    TAG: ClassVar[str] = "watchdog"

    action: str = "reset"
    model: str = "i6300esb"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(action=el.get("action", "reset"), model=el.get("model", "i6300esb"))

    def build(self) -> Element:
        return make(self.TAG, model=self.model, action=self.action)


@dataclass(frozen=True, slots=True)
class MemBalloon:
    """``<memballoon model='virtio'/>``."""

    TAG: ClassVar[str] = "memballoon"

    model: str = "virtio"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(model=el.get("model", "virtio"))

    def build(self) -> Element:
        return make(self.TAG, model=self.model)


@dataclass(frozen=True, slots=True)
class Devices:
    """``<devices>`` in libvirt's own order: disks, interfaces, serials, consoles, channels,
    hostdevs, watchdog, memballoon."""

    TAG: ClassVar[str] = "devices"

    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    serials: tuple[Serial, ...] = ()
    consoles: tuple[Console, ...] = ()
    channels: tuple[Channel, ...] = ()
    hostdevs: tuple[Hostdev, ...] = ()
    watchdog: Watchdog | None = None
    memballoon: MemBalloon | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        hostdevs: list[Hostdev] = []
        for h in el.findall("hostdev"):
            if h.get("type") == HostdevPci.TYPE:
                hostdevs.append(HostdevPci.parse(h))
            elif h.get("type") == HostdevMdev.TYPE:
                hostdevs.append(HostdevMdev.parse(h))
        watchdog = el.find(Watchdog.TAG)
        balloon = el.find(MemBalloon.TAG)
        return cls(
            disks=tuple(Disk.parse(d) for d in el.findall(Disk.TAG)),
            interfaces=tuple(Interface.parse(i) for i in el.findall(Interface.TAG)),
            serials=tuple(Serial.parse(s) for s in el.findall(Serial.TAG)),
            consoles=tuple(Console.parse(c) for c in el.findall(Console.TAG)),
            channels=tuple(Channel.parse(c) for c in el.findall(Channel.TAG)),
            hostdevs=tuple(hostdevs),
            watchdog=Watchdog.parse(watchdog) if watchdog is not None else None,
            memballoon=MemBalloon.parse(balloon) if balloon is not None else None,
        )

    def build(self) -> Element:
        el = make(self.TAG)
        groups: tuple[tuple[Buildable, ...], ...] = (
            self.disks,
            self.interfaces,
            self.serials,
            self.consoles,
            self.channels,
            self.hostdevs,
        )
        for group in groups:
            for device in group:
                el.append(device.build())
        if self.watchdog is not None:
            el.append(self.watchdog.build())
        if self.memballoon is not None:
            el.append(self.memballoon.build())
        return el
