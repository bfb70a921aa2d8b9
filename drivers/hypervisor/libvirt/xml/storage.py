"""Storage XML: ``<pool type='dir'>`` and ``<volume>`` (with ``<backingStore>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.hypervisor.libvirt.xml.base import (
    Element,
    attr,
    child,
    child_text,
    expect_tag,
    from_string,
    make,
    sub,
    to_bytes,
)


@dataclass(frozen=True, slots=True)
class StoragePool:
    """``<pool type='dir'><name/><target><path/></target></pool>``."""

    TAG: ClassVar[str] = "pool"

    name: str
    target_path: str
    type: str = "dir"
    uuid: str | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        target = child(el, "target")
        return cls(
            name=child_text(el, "name") or "",
            target_path=(child_text(target, "path") or "") if target is not None else "",
            type=el.get("type", "dir"),
            uuid=child_text(el, "uuid"),
        )

    @classmethod
    def parse_xml(cls, xml: str) -> Self:
        return cls.parse(from_string(xml))

    def build(self) -> Element:
        el = make(self.TAG, type_=self.type)
        sub(el, "name", self.name)
        if self.uuid is not None:
            sub(el, "uuid", self.uuid)
        target = sub(el, "target")
        sub(target, "path", self.target_path)
        return el


@dataclass(frozen=True, slots=True)
class BackingStore:
    """``<backingStore><path/><format type=/></backingStore>`` of a volume."""

    TAG: ClassVar[str] = "backingStore"

    path: str
    format: str = "qcow2"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(
            path=child_text(el, "path") or "",
            format=attr(child(el, "format"), "type") or "raw",
        )

    def build(self) -> Element:
        el = make(self.TAG)
        sub(el, "path", self.path)
        sub(el, "format", type_=self.format)
        return el


@dataclass(frozen=True, slots=True)
class StorageVolume:
    """``<volume>``: sizes in bytes; ``path`` is filled in by libvirt (ignored when building)."""

    TAG: ClassVar[str] = "volume"

    name: str
    capacity_bytes: int
    format: str = "qcow2"
    allocation_bytes: int | None = None
    path: str | None = None
    backing_store: BackingStore | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        cap = child(el, "capacity")
        alloc = child(el, "allocation")
        target = child(el, "target")
        backing = child(el, "backingStore")
        return cls(
            name=child_text(el, "name") or "",
            capacity_bytes=to_bytes(cap.text or "0", cap.get("unit"), "bytes")
            if cap is not None
            else 0,
            allocation_bytes=to_bytes(alloc.text or "0", alloc.get("unit"), "bytes")
            if alloc is not None
            else None,
            format=attr(child(target, "format"), "type") or "raw" if target is not None else "raw",
            path=child_text(target, "path") if target is not None else None,
            backing_store=BackingStore.parse(backing)
            if backing is not None and backing.find("path") is not None
            else None,
        )

    @classmethod
    def parse_xml(cls, xml: str) -> Self:
        return cls.parse(from_string(xml))

    def build(self) -> Element:
        el = make(self.TAG)
        sub(el, "name", self.name)
        sub(el, "capacity", str(self.capacity_bytes), unit="bytes")
        if self.allocation_bytes is not None:
            sub(el, "allocation", str(self.allocation_bytes), unit="bytes")
        target = sub(el, "target")
        sub(target, "format", type_=self.format)
        if self.backing_store is not None:
            el.append(self.backing_store.build())
        return el
