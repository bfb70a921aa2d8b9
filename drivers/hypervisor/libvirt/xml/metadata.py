"""``<metadata>`` and the vmmgr element inside it.

    <metadata>
      <vmmgr:instance xmlns:vmmgr="https://vmmgr.dev/xmlns/domain/1">
        <vmmgr:id>VM UUID</vmmgr:id>
        <vmmgr:owner>alice</vmmgr:owner>
        <vmmgr:labels><vmmgr:label key="team">ml</vmmgr:label></vmmgr:labels>
      </vmmgr:instance>
    </metadata>

A domain carrying this element (with id == the domain uuid) belongs to vmmgr; any other
domain is foreign: reported, never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from lxml import etree

from drivers.hypervisor.libvirt.xml.base import Element, expect_tag, make

VMMGR_NS = "https://vmmgr.dev/xmlns/domain/1"
VMMGR_PREFIX = "vmmgr"


def _q(local: str) -> str:
    return f"{{{VMMGR_NS}}}{local}"


@dataclass(frozen=True, slots=True)
class VmmgrInstance:
    """``<vmmgr:instance>``: who this domain is to vmmgr."""

    TAG: ClassVar[str] = _q("instance")

    id: str
    owner: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        labels: list[tuple[str, str]] = []
        labels_el = el.find(_q("labels"))
        if labels_el is not None:
            for lab in labels_el.findall(_q("label")):
                labels.append((lab.get("key", ""), lab.text or ""))
        id_el = el.find(_q("id"))
        owner_el = el.find(_q("owner"))
        return cls(
            id=(id_el.text or "") if id_el is not None else "",
            owner=(owner_el.text or "") if owner_el is not None else "",
            labels=tuple(labels),
        )

    def build(self) -> Element:
        el = etree.Element(self.TAG, nsmap={VMMGR_PREFIX: VMMGR_NS})
        etree.SubElement(el, _q("id")).text = self.id
        etree.SubElement(el, _q("owner")).text = self.owner
        labels = etree.SubElement(el, _q("labels"))
        for key, value in self.labels:
            lab = etree.SubElement(labels, _q("label"))
            lab.set("key", key)
            lab.text = value
        return el


@dataclass(frozen=True, slots=True)
class Metadata:
    """``<metadata>``: only vmmgr's own child is modelled; other namespaces are dropped."""

    TAG: ClassVar[str] = "metadata"

    instance: VmmgrInstance | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        found = el.find(VmmgrInstance.TAG)
        return cls(instance=VmmgrInstance.parse(found) if found is not None else None)

    def build(self) -> Element:
        el = make(self.TAG)
        if self.instance is not None:
            el.append(self.instance.build())
        return el
