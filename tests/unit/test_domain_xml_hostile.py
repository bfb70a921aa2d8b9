"""Hostile user strings never change the structure of the domain XML vmmgr builds.

Values go in as element text or attribute values through lxml, so markup in them is escaped:
the element tree (every tag, in order) is the same as for benign values, and parsing gives
back exactly the strings that went in.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from lxml import etree

from drivers.hypervisor.libvirt.xml import domain_xml_from_spec, parse_domain, vmmgr_metadata
from tests.unit.test_domain_xml import FULL, HOST
from vmmgr.errors import InvalidArgument

HOSTILE = [
    'quote"double',
    "quote'single",
    "less<than",
    "amp&ersand",
    "&amp; already escaped",
    "&#x41; char ref",
    "cdata end ]]> here",
    "<![CDATA[cdata]]>",
    "multi\nline\r\nvalue",
    "\ttab",
    "  leading and trailing  ",
    "<!-- comment -->",
    "<?pi target?>",
    "<name>inner</name>",
    "x</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><name>y",
    "</description><devices><hostdev mode='subsystem' type='pci'/></devices><description>",
    "</vmmgr:owner></vmmgr:instance><vmmgr:instance><vmmgr:id>0",
    "unicode ünïcødé ☃ 𝄞",
]


def _tags(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [str(el.tag) for el in root.iter()]


BASELINE_TAGS = _tags(domain_xml_from_spec(FULL, HOST))


def _no_slash(value: str) -> str:
    """Domain names cannot contain '/' (libvirt refuses them; so does the builder)."""
    return value.replace("/", "|")


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_keep_the_element_tree_and_round_trip(value: str) -> None:
    spec = replace(
        FULL,
        name=_no_slash(value),
        description=value,
        owner=value,
        labels={"team": value, value: "v"},
    )
    xml = domain_xml_from_spec(spec, HOST)
    assert _tags(xml) == BASELINE_TAGS
    d = parse_domain(xml)
    assert d.name == _no_slash(value)
    assert d.description == value  # lxml writes CR as &#13;, so even CRLF survives
    assert d.vmmgr is not None
    assert d.vmmgr.owner == value
    assert dict(d.vmmgr.labels)["team"] == value
    assert len(d.devices.disks) == len(FULL.disks)
    assert d.devices.hostdevs == ()
    assert vmmgr_metadata(xml) == (FULL.vm_id, value)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_label_keys_stay_attribute_values(value: str) -> None:
    xml = domain_xml_from_spec(replace(FULL, labels={value: "v"}), HOST)
    d = parse_domain(xml)
    assert d.vmmgr is not None and d.vmmgr.labels == ((value, "v"),)


def test_names_with_a_slash_are_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        domain_xml_from_spec(replace(FULL, name="x</name><devices>"), HOST)
    assert e.value.field == "name"


def test_hostile_paths_stay_attribute_values() -> None:
    disk = replace(FULL.disks[0], path="/p/a'b\"c<d>&e ]]>.qcow2")
    xml = domain_xml_from_spec(replace(FULL, disks=(disk, *FULL.disks[1:])), HOST)
    assert _tags(xml) == BASELINE_TAGS
    assert parse_domain(xml).devices.disks[0].source_file == disk.path
