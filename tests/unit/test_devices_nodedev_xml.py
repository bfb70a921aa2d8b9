"""Typed nodedev XML elements: parse what libvirt gives, build what nodeDeviceDefineXML takes."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.fixtures.gpu_host import device_xmls
from vmmgr.devices.model import PciAddress
from vmmgr.devices.nodedev_xml import (
    MdevCapability,
    NodeDevice,
    PciCapability,
    mdev_define_xml,
)
from vmmgr.errors import InvalidArgument


def _by_name(name: str) -> NodeDevice:
    for x in device_xmls():
        d = NodeDevice.from_xml(x)
        if d.name == name:
            return d
    raise AssertionError(name)


def test_parses_pci_capability_fields() -> None:
    d = _by_name("pci_0000_5e_00_0")
    pci = d.pci
    assert pci is not None
    assert pci.address == PciAddress(0, 0x5E, 0, 0)
    assert (pci.vendor_id, pci.product_id, pci.class_code) == (0x10DE, 0x20B2, 0x030200)
    assert pci.product_name == "GA100 [A100 SXM4 80GB]"
    assert pci.iommu_group is not None and pci.iommu_group.number == 40
    assert pci.numa_node == 0
    assert [(t.id, t.name, t.available_instances) for t in pci.mdev_types] == [
        ("nvidia-700", "GRID A100D-4C", 19),
        ("nvidia-701", "GRID A100D-8C", 0),
        ("nvidia-702", "GRID A100D-20C", 0),
    ]
    assert d.driver == "nvidia"
    assert d.mdev is None


def test_parses_sriov_links() -> None:
    pf = _by_name("pci_0000_b1_00_0").pci
    vf = _by_name("pci_0000_b1_00_2").pci
    assert pf is not None and vf is not None
    assert [str(a) for a in pf.virt_functions] == ["0000:b1:00.1", "0000:b1:00.2"]
    assert pf.virt_functions_max == 2
    assert str(vf.phys_function) == "0000:b1:00.0"


def test_parses_mdev_device() -> None:
    d = _by_name("mdev_4b20d080_1b54_4048_85b3_a6a62d165c01_0000_5e_00_0")
    assert d.pci is None
    assert d.mdev == MdevCapability("nvidia-700", "4b20d080-1b54-4048-85b3-a6a62d165c01", 101)
    assert d.parent == "pci_0000_5e_00_0"


def test_every_fixture_device_round_trips() -> None:
    for x in device_xmls():
        d = NodeDevice.from_xml(x)
        assert NodeDevice.from_xml(d.to_xml()) == d


def test_mdev_define_xml_is_what_libvirt_expects() -> None:
    xml = mdev_define_xml("pci_0000_5e_00_0", "nvidia-700", "0b5d5bd2-2a9b-4fdf-9b3c-2c0a6a1e0f00")
    root = etree.fromstring(xml)
    assert root.tag == "device"
    assert root.findtext("parent") == "pci_0000_5e_00_0"
    cap = root.find("capability")
    assert cap is not None and cap.get("type") == "mdev"
    assert cap.find("type").get("id") == "nvidia-700"  # type: ignore[union-attr]
    assert cap.findtext("uuid") == "0b5d5bd2-2a9b-4fdf-9b3c-2c0a6a1e0f00"
    assert root.find("name") is None  # libvirt names it


def test_values_are_escaped_not_formatted() -> None:
    hostile = "nvidia-1'/><evil/><x y='"
    xml = mdev_define_xml("pci_0000_5e_00_0", hostile, "0b5d5bd2-2a9b-4fdf-9b3c-2c0a6a1e0f00")
    root = etree.fromstring(xml)
    assert root.find(".//evil") is None
    assert root.find("capability/type").get("id") == hostile  # type: ignore[union-attr]


def test_build_pci_capability_round_trip() -> None:
    cap = PciCapability(
        address=PciAddress(0, 3, 0, 1),
        class_code=0x120000,
        vendor_id=0x10EE,
        product_id=0x500C,
        phys_function=PciAddress(0, 3, 0, 0),
        numa_node=1,
    )
    d = NodeDevice(name="pci_0000_03_00_1", capabilities=(cap,))
    assert NodeDevice.from_xml(d.to_xml()) == d


@pytest.mark.parametrize(
    "xml",
    [
        "<device><name>x</name>",
        "<domain/>",
        '<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]><device><name>&e;</name></device>',
    ],
)
def test_bad_xml_is_invalid_argument(xml: str) -> None:
    try:
        d = NodeDevice.from_xml(xml)
    except InvalidArgument as exc:
        assert exc.field == "xml"
    else:  # an external entity must never be expanded
        assert d.name in (None, "")


def test_pci_address_forms() -> None:
    for text in ("0000:3b:00.0", "3b:00.0", "00000000:3B:00.0", "pci_0000_3b_00_0"):
        assert str(PciAddress.parse(text)) == "0000:3b:00.0"
    with pytest.raises(InvalidArgument) as err:
        PciAddress.parse("3b:00", field="addresses")
    assert err.value.field == "addresses"
