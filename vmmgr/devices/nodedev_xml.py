"""Typed element classes for libvirt node-device XML (formatnode.html): parse and build.

Only what the device layer reads or writes: <device> with <name>/<path>/<parent>/<driver>,
the 'pci' capability (ids, class, IOMMU group, NUMA node, SR-IOV functions, mdev_types) and the
'mdev' capability (type, uuid, IOMMU group, attrs) that ``virNodeDeviceDefineXML`` takes.
Other capabilities (system, net, scsi...) are skipped when parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from vmmgr.devices.model import PciAddress
from vmmgr.errors import InvalidArgument

Element = etree._Element


def _text(el: Element, path: str) -> str | None:
    child = el.find(path)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _int(text: str | None, *, base: int = 0) -> int | None:
    if text is None or text == "":
        return None
    return int(text, base)


def _sub(parent: Element, tag: str, text: str | None = None, **attrs: str) -> Element:
    el = etree.SubElement(parent, tag, {k: v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _parse(xml: str | bytes) -> Element:
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        return etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidArgument("xml", f"not valid node device XML: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AddressElement:
    """<address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/>"""

    address: PciAddress

    @classmethod
    def from_element(cls, el: Element) -> AddressElement:
        return cls(
            PciAddress(
                int(el.get("domain", "0"), 0),
                int(el.get("bus", "0"), 0),
                int(el.get("slot", "0"), 0),
                int(el.get("function", "0"), 0),
            )
        )

    def to_element(self, parent: Element) -> Element:
        a = self.address
        return _sub(
            parent,
            "address",
            domain=f"0x{a.domain:04x}",
            bus=f"0x{a.bus:02x}",
            slot=f"0x{a.slot:02x}",
            function=f"0x{a.function:x}",
        )


@dataclass(frozen=True, slots=True)
class IommuGroupElement:
    number: int
    members: tuple[PciAddress, ...] = ()

    @classmethod
    def from_element(cls, el: Element) -> IommuGroupElement:
        members = tuple(AddressElement.from_element(a).address for a in el.findall("address"))
        return cls(int(el.get("number", "0"), 0), members)

    def to_element(self, parent: Element) -> Element:
        el = _sub(parent, "iommuGroup", number=str(self.number))
        for m in self.members:
            AddressElement(m).to_element(el)
        return el


@dataclass(frozen=True, slots=True)
class MdevTypeElement:
    """<type id='nvidia-700'><name/><deviceAPI/><availableInstances/></type>"""

    id: str
    name: str = ""
    device_api: str = "vfio-pci"
    available_instances: int = 0

    @classmethod
    def from_element(cls, el: Element) -> MdevTypeElement:
        return cls(
            id=el.get("id", ""),
            name=_text(el, "name") or "",
            device_api=_text(el, "deviceAPI") or "",
            available_instances=_int(_text(el, "availableInstances")) or 0,
        )

    def to_element(self, parent: Element) -> Element:
        el = _sub(parent, "type", id=self.id)
        if self.name:
            _sub(el, "name", self.name)
        _sub(el, "deviceAPI", self.device_api)
        _sub(el, "availableInstances", str(self.available_instances))
        return el


@dataclass(frozen=True, slots=True)
class PciCapability:
    address: PciAddress
    class_code: int | None = None
    vendor_id: int = 0
    vendor_name: str = ""
    product_id: int = 0
    product_name: str = ""
    iommu_group: IommuGroupElement | None = None
    numa_node: int | None = None
    phys_function: PciAddress | None = None
    virt_functions: tuple[PciAddress, ...] = ()
    virt_functions_max: int | None = None
    mdev_types: tuple[MdevTypeElement, ...] = ()

    @classmethod
    def from_element(cls, el: Element) -> PciCapability:
        address = PciAddress(
            _int(_text(el, "domain")) or 0,
            _int(_text(el, "bus")) or 0,
            _int(_text(el, "slot")) or 0,
            _int(_text(el, "function")) or 0,
        )
        product = el.find("product")
        vendor = el.find("vendor")
        group = el.find("iommuGroup")
        numa = el.find("numa")
        pf: PciAddress | None = None
        vfs: tuple[PciAddress, ...] = ()
        vf_max: int | None = None
        types: tuple[MdevTypeElement, ...] = ()
        for cap in el.findall("capability"):
            kind = cap.get("type")
            if kind == "phys_function":
                a = cap.find("address")
                pf = AddressElement.from_element(a).address if a is not None else None
            elif kind == "virt_functions":
                vfs = tuple(AddressElement.from_element(a).address for a in cap.findall("address"))
                vf_max = _int(cap.get("maxCount"))
            elif kind == "mdev_types":
                types = tuple(MdevTypeElement.from_element(t) for t in cap.findall("type"))
        return cls(
            address=address,
            class_code=_int(_text(el, "class"), base=16),
            vendor_id=_int(vendor.get("id") if vendor is not None else None, base=16) or 0,
            vendor_name=(vendor.text or "").strip() if vendor is not None else "",
            product_id=_int(product.get("id") if product is not None else None, base=16) or 0,
            product_name=(product.text or "").strip() if product is not None else "",
            iommu_group=IommuGroupElement.from_element(group) if group is not None else None,
            numa_node=_int(numa.get("node")) if numa is not None else None,
            phys_function=pf,
            virt_functions=vfs,
            virt_functions_max=vf_max,
            mdev_types=types,
        )

    def to_element(self, parent: Element) -> Element:
        el = _sub(parent, "capability", type="pci")
        if self.class_code is not None:
            _sub(el, "class", f"0x{self.class_code:06x}")
        a = self.address
        _sub(el, "domain", str(a.domain))
        _sub(el, "bus", str(a.bus))
        _sub(el, "slot", str(a.slot))
        _sub(el, "function", str(a.function))
        _sub(el, "product", self.product_name, id=f"0x{self.product_id:04x}")
        _sub(el, "vendor", self.vendor_name, id=f"0x{self.vendor_id:04x}")
        if self.phys_function is not None:
            cap = _sub(el, "capability", type="phys_function")
            AddressElement(self.phys_function).to_element(cap)
        if self.virt_functions or self.virt_functions_max is not None:
            attrs = (
                {}
                if self.virt_functions_max is None
                else {"maxCount": str(self.virt_functions_max)}
            )
            cap = _sub(el, "capability", type="virt_functions", **attrs)
            for vf in self.virt_functions:
                AddressElement(vf).to_element(cap)
        if self.mdev_types:
            cap = _sub(el, "capability", type="mdev_types")
            for t in self.mdev_types:
                t.to_element(cap)
        if self.iommu_group is not None:
            self.iommu_group.to_element(el)
        if self.numa_node is not None:
            _sub(el, "numa", node=str(self.numa_node))
        return el


@dataclass(frozen=True, slots=True)
class MdevCapability:
    type_id: str
    uuid: str | None = None
    iommu_group: int | None = None
    attrs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_element(cls, el: Element) -> MdevCapability:
        t = el.find("type")
        group = el.find("iommuGroup")
        return cls(
            type_id=t.get("id", "") if t is not None else "",
            uuid=_text(el, "uuid"),
            iommu_group=_int(group.get("number")) if group is not None else None,
            attrs=tuple((a.get("name", ""), a.get("value", "")) for a in el.findall("attr")),
        )

    def to_element(self, parent: Element) -> Element:
        el = _sub(parent, "capability", type="mdev")
        _sub(el, "type", id=self.type_id)
        if self.uuid:
            _sub(el, "uuid", self.uuid)
        if self.iommu_group is not None:
            _sub(el, "iommuGroup", number=str(self.iommu_group))
        for name, value in self.attrs:
            _sub(el, "attr", name=name, value=value)
        return el


Capability = PciCapability | MdevCapability


@dataclass(frozen=True, slots=True)
class NodeDevice:
    """<device>: one libvirt node device."""

    name: str | None = None
    parent: str | None = None
    path: str | None = None
    driver: str | None = None
    capabilities: tuple[Capability, ...] = field(default_factory=tuple)

    @property
    def pci(self) -> PciCapability | None:
        return next((c for c in self.capabilities if isinstance(c, PciCapability)), None)

    @property
    def mdev(self) -> MdevCapability | None:
        return next((c for c in self.capabilities if isinstance(c, MdevCapability)), None)

    @classmethod
    def from_xml(cls, xml: str | bytes) -> NodeDevice:
        root = _parse(xml)
        if root.tag != "device":
            raise InvalidArgument("xml", f"expected <device>, got <{root.tag}>")
        return cls.from_element(root)

    @classmethod
    def from_element(cls, el: Element) -> NodeDevice:
        caps: list[Capability] = []
        for cap in el.findall("capability"):
            kind = cap.get("type")
            if kind == "pci":
                caps.append(PciCapability.from_element(cap))
            elif kind == "mdev":
                caps.append(MdevCapability.from_element(cap))
        return cls(
            name=_text(el, "name"),
            parent=_text(el, "parent"),
            path=_text(el, "path"),
            driver=_text(el, "driver/name"),
            capabilities=tuple(caps),
        )

    def to_element(self) -> Element:
        root = etree.Element("device")
        if self.name:
            _sub(root, "name", self.name)
        if self.path:
            _sub(root, "path", self.path)
        if self.parent:
            _sub(root, "parent", self.parent)
        if self.driver:
            drv = _sub(root, "driver")
            _sub(drv, "name", self.driver)
        for cap in self.capabilities:
            cap.to_element(root)
        return root

    def to_xml(self) -> str:
        return etree.tostring(self.to_element(), pretty_print=True, encoding="unicode")


def mdev_define_xml(parent_nodedev: str, type_id: str, uuid: str) -> str:
    """The XML ``virNodeDeviceDefineXML`` takes to define a persistent mdev."""
    return NodeDevice(parent=parent_nodedev, capabilities=(MdevCapability(type_id, uuid),)).to_xml()
