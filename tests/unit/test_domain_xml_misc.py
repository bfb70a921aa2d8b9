"""Typed XML besides the domain: storage pools/volumes, capabilities, the test-driver node file."""

from __future__ import annotations

import pytest

from drivers.hypervisor.libvirt.xml import (
    BackingStore,
    HostCapabilities,
    NumaCell,
    StoragePool,
    StorageVolume,
    cells_from_node_info,
)
from drivers.hypervisor.libvirt.xml.base import from_string, to_string
from drivers.hypervisor.libvirt.xml.resources import Memory
from drivers.hypervisor.libvirt.xml.testnode import TestDriverCpu, TestDriverNode

#: trimmed from this machine's `virsh capabilities` (one cell, no vmx/svm)
REAL_CAPS = """<capabilities>
  <host>
    <uuid>30843852-67f8-4eeb-acea-528c348b085e</uuid>
    <cpu>
      <arch>x86_64</arch>
      <model>kvm64</model>
      <vendor>AMD</vendor>
      <feature name='vme'/>
      <feature name='avx2'/>
      <feature name='hypervisor'/>
    </cpu>
    <topology>
      <cells num='1'>
        <cell id='0'>
          <memory unit='KiB'>5204172</memory>
          <cpus num='2'>
            <cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0'/>
            <cpu id='1' socket_id='0' die_id='0' core_id='1' siblings='1'/>
          </cpus>
        </cell>
      </cells>
    </topology>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <domain type='qemu'/>
      <domain type='kvm'/>
    </arch>
  </guest>
</capabilities>"""

#: libvirt's test driver (test:///default) capabilities, trimmed
TEST_CAPS = """<capabilities>
  <host>
    <cpu><arch>i686</arch><features><pae/><nonpae/></features></cpu>
    <topology><cells num='0'></cells></topology>
  </host>
  <guest><os_type>hvm</os_type><arch name='i686'><domain type='test'/></arch></guest>
  <guest><os_type>xen</os_type><arch name='i686'><domain type='test'/></arch></guest>
</capabilities>"""


def test_real_capabilities() -> None:
    caps = HostCapabilities.from_xml(REAL_CAPS)
    assert caps.arch == "x86_64"
    assert caps.uuid == "30843852-67f8-4eeb-acea-528c348b085e"
    assert caps.domain_types == ("kvm", "qemu")
    assert not caps.has_hw_virt
    assert caps.cells == (NumaCell(id=0, memory_kib=5204172, cpu_ids=(0, 1)),)
    assert caps.cell(0) is not None and caps.cell(1) is None


def test_hw_virt_detected_from_vmx_or_svm() -> None:
    caps = HostCapabilities.from_xml(REAL_CAPS.replace("'hypervisor'", "'svm'"))
    assert caps.has_hw_virt


def test_test_driver_capabilities() -> None:
    caps = HostCapabilities.from_xml(TEST_CAPS)
    assert caps.arch == "i686" and caps.uuid is None
    assert caps.cpu_features == frozenset({"pae", "nonpae"})
    assert caps.domain_types == ("test",)
    assert caps.cells == ()


@pytest.mark.parametrize(
    ("nodes", "cpus", "mem", "expected"),
    [
        (2, 8, 8192, [(0, (0, 1, 2, 3), 4096), (1, (4, 5, 6, 7), 4096)]),
        (1, 2, 1000, [(0, (0, 1), 1000)]),
        (0, 4, 400, [(0, (0, 1, 2, 3), 400)]),
        (3, 6, 300, [(0, (0, 1), 100), (1, (2, 3), 100), (2, (4, 5), 100)]),
    ],
)
def test_cells_from_node_info(
    nodes: int, cpus: int, mem: int, expected: list[tuple[int, tuple[int, ...], int]]
) -> None:
    cells = cells_from_node_info(nodes, cpus, mem)
    assert [(c.id, c.cpu_ids, c.memory_kib) for c in cells] == expected


@pytest.mark.parametrize(
    ("unit", "value", "kib"),
    [
        (None, "2048", 2048),
        ("KiB", "2048", 2048),
        ("MiB", "2", 2048),
        ("G", "1", 1048576),
        ("bytes", "1048576", 1024),
        ("KB", "1024", 1000),
    ],
)
def test_memory_units(unit: str | None, value: str, kib: int) -> None:
    el = from_string(f"<memory{'' if unit is None else f' unit={unit!r}'}>{value}</memory>")
    assert Memory.parse(el).kib == kib


def test_volume_build_and_parse() -> None:
    vol = StorageVolume(
        name="vm.qcow2",
        capacity_bytes=1 << 30,
        format="qcow2",
        backing_store=BackingStore(path="/pool/base.qcow2", format="qcow2"),
    )
    assert StorageVolume.parse_xml(to_string(vol.build())) == vol
    assert to_string(vol.build()) == (
        "<volume>\n"
        "  <name>vm.qcow2</name>\n"
        '  <capacity unit="bytes">1073741824</capacity>\n'
        "  <target>\n"
        '    <format type="qcow2"/>\n'
        "  </target>\n"
        "  <backingStore>\n"
        "    <path>/pool/base.qcow2</path>\n"
        '    <format type="qcow2"/>\n'
        "  </backingStore>\n"
        "</volume>\n"
    )


def test_volume_parses_libvirt_output() -> None:
    xml = """<volume type='file'>
  <name>img</name>
  <key>/tmp/upx/pool/img</key>
  <capacity unit='bytes'>67108864</capacity>
  <allocation unit='bytes'>200704</allocation>
  <physical unit='bytes'>196616</physical>
  <target>
    <path>/tmp/upx/pool/img</path>
    <format type='qcow2'/>
    <permissions><mode>0600</mode></permissions>
  </target>
  <backingStore/>
</volume>"""
    vol = StorageVolume.parse_xml(xml)
    assert (vol.name, vol.path, vol.format) == ("img", "/tmp/upx/pool/img", "qcow2")
    assert (vol.capacity_bytes, vol.allocation_bytes) == (67108864, 200704)
    assert vol.backing_store is None  # an empty <backingStore/> means none


def test_pool_build_and_parse() -> None:
    pool = StoragePool(name="vmmgr", target_path="/var/lib/vmmgr/images")
    assert StoragePool.parse_xml(to_string(pool.build())) == pool
    assert "<path>/var/lib/vmmgr/images</path>" in to_string(pool.build())


def test_test_driver_node_round_trips_and_keeps_devices() -> None:
    dev = "<device><name>pci_0000_3b_00_0</name><capability type='pci'/></device>"
    node = TestDriverNode.with_device_xml(
        TestDriverNode(
            cpu=TestDriverCpu(nodes=2, cores=4),
            pools=(StoragePool("vmmgr", "/p"),),
        ),
        dev,
    )
    parsed = TestDriverNode.parse(node.build())
    assert parsed.cpu == node.cpu and parsed.cpu.cpus == 8
    assert parsed.pools == node.pools
    assert [d.findtext("name") for d in parsed.devices] == ["pci_0000_3b_00_0"]
    assert to_string(parsed.build()) == to_string(node.build())


def test_test_driver_node_refuses_non_device_xml() -> None:
    with pytest.raises(ValueError):
        TestDriverNode.with_device_xml(TestDriverNode(), "<domain/>")
