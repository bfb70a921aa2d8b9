"""Typed libvirt domain XML: golden files, parse/build round trips, spec validation, CPU choice.

Regenerate the golden files after an intended change with
    VMMGR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_domain_xml.py
and review the diff.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from drivers.hypervisor.libvirt.xml import (
    CpuMode,
    Domain,
    Guest,
    HostCapabilities,
    Memory,
    NumaCell,
    Vcpu,
    choose_cpu,
    cpuset_string,
    domain_from_spec,
    domain_xml_from_spec,
    parse_domain,
    vmmgr_metadata,
)
from drivers.hypervisor.libvirt.xml.base import from_string, to_string
from vmmgr.errors import FailedPrecondition, InvalidArgument
from vmmgr.ports import (
    DirectBootSpec,
    DiskSpec,
    DomainSpec,
    MdevHostdevSpec,
    NicSpec,
    PciHostdevSpec,
)

GOLDEN = Path(__file__).parent / "golden"
VM_ID = "3f2b6c1e-8a4d-4e57-9b1a-2c6d8e0f1a23"
MDEV_UUID = "c2177883-f1bb-47f0-914d-32a22e3a8804"
GIB_KIB = 1024 * 1024

#: a two-cell x86_64 host without vmx/svm (like this machine), offering qemu and kvm
HOST = HostCapabilities(
    arch="x86_64",
    uuid="30843852-67f8-4eeb-acea-528c348b085e",
    cpu_features=frozenset({"vme", "sse4.2", "avx2"}),
    cells=(
        NumaCell(id=0, memory_kib=4 * GIB_KIB, cpu_ids=(0, 1, 2, 3)),
        NumaCell(id=1, memory_kib=4 * GIB_KIB, cpu_ids=(4, 5, 6, 7)),
    ),
    guests=(Guest(os_type="hvm", arch="x86_64", domain_types=("qemu", "kvm")),),
)
HOST_VMX = replace(HOST, cpu_features=frozenset({"vmx", "vme"}))

MINIMAL = DomainSpec(
    vm_id=VM_ID,
    name="minimal",
    vcpus=1,
    memory_mib=64,
    serial_console=False,
    heartbeat_channel=False,
)
FULL = DomainSpec(
    vm_id=VM_ID,
    name="web-1",
    vcpus=2,
    memory_mib=256,
    owner="alice",
    description="front end",
    domain_type="qemu",
    disks=(
        DiskSpec(path="/var/lib/vmmgr/pool/web-1.qcow2", target="vda"),
        DiskSpec(
            path="/var/lib/vmmgr/pool/web-1-seed.iso",
            target="sda",
            bus="sata",
            device="cdrom",
            format="raw",
        ),
    ),
    nics=(NicSpec(network="default", mac="52:54:00:AB:CD:EF"), NicSpec(network="")),
    watchdog="reset",
    labels={"team": "web", "tier": "front"},
)
PCI = replace(
    MINIMAL,
    name="gpu-pci",
    pci_hostdevs=(PciHostdevSpec("0000:3b:00.0"), PciHostdevSpec("0000:af:1f.7", managed=False)),
)
MDEV = replace(MINIMAL, name="gpu-mdev", mdev_hostdevs=(MdevHostdevSpec(MDEV_UUID),))
NUMA = replace(MINIMAL, name="numa-1", vcpus=4, numa_node=1)
DIRECT_BOOT = replace(
    MINIMAL,
    name="direct",
    domain_type="qemu",
    direct_boot=DirectBootSpec(
        kernel="/var/lib/vmmgr/tiny-vmlinuz",
        initrd="/var/lib/vmmgr/tiny-initrd.img",
        cmdline="console=ttyS0 quiet",
    ),
    serial_console=True,
    heartbeat_channel=True,
)

CASES: dict[str, tuple[DomainSpec, HostCapabilities]] = {
    "minimal": (MINIMAL, HOST),
    "full": (FULL, HOST),
    "pci_hostdev": (PCI, HOST),
    "mdev_hostdev": (MDEV, HOST),
    "numa": (NUMA, HOST),
    "direct_boot": (DIRECT_BOOT, HOST),
    "kvm_passthrough": (replace(MINIMAL, name="passthrough"), HOST_VMX),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_builder_output_matches_golden_file(case: str) -> None:
    spec, host = CASES[case]
    xml = domain_xml_from_spec(spec, host)
    path = GOLDEN / f"{case}.xml"
    if os.environ.get("VMMGR_UPDATE_GOLDEN"):
        path.write_text(xml)
    assert xml == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_file_round_trips_through_parse_and_build(case: str) -> None:
    text = (GOLDEN / f"{case}.xml").read_text()
    domain = parse_domain(text)
    assert to_string(domain.build()) == text
    assert parse_domain(to_string(domain.build())) == domain


def test_full_golden_has_every_device() -> None:
    d = parse_domain((GOLDEN / "full.xml").read_text())
    assert [x.device for x in d.devices.disks] == ["disk", "cdrom"]
    assert d.devices.disks[1].readonly and d.devices.disks[1].target_bus == "sata"
    assert d.devices.disks[0].driver_type == "qcow2"
    assert [(i.type, i.source_network) for i in d.devices.interfaces] == [
        ("network", "default"),
        ("user", None),
    ]
    assert d.devices.interfaces[0].mac == "52:54:00:ab:cd:ef"
    assert len(d.devices.serials) == 1 and len(d.devices.consoles) == 1
    assert [c.target_name for c in d.devices.channels] == ["org.vmmgr.heartbeat.0"]
    assert d.devices.watchdog is not None and d.devices.watchdog.action == "reset"
    assert d.devices.memballoon is not None
    assert d.cpu is None  # TCG: hypervisor default CPU
    assert d.vmmgr is not None and d.vmmgr.labels == (("team", "web"), ("tier", "front"))


def test_hostdev_goldens_carry_addresses() -> None:
    pci = parse_domain((GOLDEN / "pci_hostdev.xml").read_text()).devices.hostdevs
    assert [h.address for h in pci] == ["0000:3b:00.0", "0000:af:1f.7"]  # type: ignore[union-attr]
    assert [h.managed for h in pci] == [True, False]  # type: ignore[union-attr]
    mdev = parse_domain((GOLDEN / "mdev_hostdev.xml").read_text()).devices.hostdevs
    assert mdev[0].uuid == MDEV_UUID  # type: ignore[union-attr]


def test_numa_placement_pins_vcpus_and_memory_to_the_cell() -> None:
    d = domain_from_spec(NUMA, HOST)
    assert d.vcpu.cpuset == "4-7"
    assert d.numatune is not None and (d.numatune.nodeset, d.numatune.mode) == ("1", "strict")
    assert domain_from_spec(MINIMAL, HOST).numatune is None


def test_unknown_numa_cell_is_rejected_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as e:
        domain_from_spec(replace(MINIMAL, numa_node=7), HOST)
    assert e.value.field == "numa_node"


def test_numa_cell_without_cpus_is_a_host_problem() -> None:
    host = replace(HOST, cells=(NumaCell(id=0, memory_kib=GIB_KIB, cpu_ids=()),))
    with pytest.raises(FailedPrecondition):
        domain_from_spec(replace(MINIMAL, numa_node=0), host)


def test_direct_boot_has_kernel_and_no_boot_device() -> None:
    d = domain_from_spec(DIRECT_BOOT, HOST)
    assert d.os.kernel == "/var/lib/vmmgr/tiny-vmlinuz"
    assert d.os.cmdline == "console=ttyS0 quiet"
    assert d.os.boot_devs == ()
    assert domain_from_spec(MINIMAL, HOST).os.boot_devs == ("hd",)


def test_metadata_identifies_vmmgr_domains() -> None:
    xml = domain_xml_from_spec(FULL, HOST)
    assert vmmgr_metadata(xml) == (VM_ID, "alice")


def test_domain_without_metadata_is_foreign() -> None:
    foreign = Domain(type="kvm", name="x", uuid=VM_ID, memory=Memory(65536), vcpu=Vcpu(1))
    assert vmmgr_metadata(to_string(foreign.build())) is None


def test_metadata_copied_onto_another_uuid_is_foreign() -> None:
    xml = domain_xml_from_spec(MINIMAL, HOST).replace(
        f"<uuid>{VM_ID}</uuid>", "<uuid>00000000-0000-4000-8000-000000000001</uuid>"
    )
    assert vmmgr_metadata(xml) is None


def test_parse_reads_libvirt_formatted_output() -> None:
    """libvirt's own XMLDesc: single quotes, other units, extra elements, addresses."""
    xml = f"""<domain type='kvm' id='3'>
  <name>web</name>
  <uuid>{VM_ID}</uuid>
  <metadata>
    <other:thing xmlns:other="https://example.com/x"><other:id>no</other:id></other:thing>
    <vmmgr:instance xmlns:vmmgr="https://vmmgr.dev/xmlns/domain/1">
      <vmmgr:id>{VM_ID}</vmmgr:id>
      <vmmgr:owner>bob</vmmgr:owner>
      <vmmgr:labels/>
    </vmmgr:instance>
  </metadata>
  <memory unit='GiB'>1</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource><partition>/machine</partition></resource>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='allow'>qemu64</model><feature policy='disable' name='svm'/>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/p/web.qcow2' index='1'/>
      <backingStore type='file' index='2'><format type='qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </disk>
    <controller type='usb' index='0'/>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>
  </devices>
</domain>"""
    d = parse_domain(xml)
    assert (d.memory.kib, d.current_memory.kib if d.current_memory else 0) == (GIB_KIB, 512 * 1024)
    assert d.os.type.machine == "pc-i440fx-7.2"
    assert d.cpu is not None and d.cpu.check == "partial"
    assert d.cpu.model is not None and d.cpu.model.name == "qemu64"
    assert d.devices.disks[0].source_file == "/p/web.qcow2"
    assert len(d.devices.hostdevs) == 1  # the usb hostdev is not modelled
    assert vmmgr_metadata(xml) == (VM_ID, "bob")


def test_unknown_memory_unit_is_an_error() -> None:
    xml = "<domain type='kvm'><name>x</name><memory unit='parsec'>1</memory></domain>"
    with pytest.raises(ValueError):
        parse_domain(xml)


def test_parser_does_not_resolve_entities() -> None:
    xml = (
        '<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        f"<domain type='kvm'><name>&e;</name><uuid>{VM_ID}</uuid></domain>"
    )
    assert "root" not in parse_domain(xml).name


@pytest.mark.parametrize(
    ("host", "mode", "domain_type", "expected"),
    [
        (HOST, CpuMode.AUTO, "kvm", "custom"),
        (HOST_VMX, CpuMode.AUTO, "kvm", "host-passthrough"),
        (HOST, CpuMode.HOST_PASSTHROUGH, "kvm", "host-passthrough"),
        (HOST, CpuMode.HOST_MODEL, "kvm", "host-model"),
        (HOST_VMX, CpuMode.COMPAT, "kvm", "custom"),
        (HOST_VMX, CpuMode.AUTO, "qemu", None),
        (HOST, CpuMode.AUTO, "test", None),
    ],
)
def test_cpu_mode_choice(
    host: HostCapabilities, mode: CpuMode, domain_type: str, expected: str | None
) -> None:
    cpu = choose_cpu(domain_type, host, mode)
    assert (cpu.mode if cpu else None) == expected


def test_compat_cpu_is_the_form_this_machine_needs() -> None:
    cpu = choose_cpu("kvm", HOST, CpuMode.AUTO)
    assert cpu is not None
    assert to_string(cpu.build()) == (
        '<cpu mode="custom" match="exact">\n'
        '  <model fallback="allow">qemu64</model>\n'
        '  <feature policy="disable" name="svm"/>\n'
        "</cpu>\n"
    )


@pytest.mark.parametrize(
    ("ids", "expected"),
    [((0, 1, 2, 3), "0-3"), ((0, 2, 3, 4, 8), "0,2-4,8"), ((5,), "5"), ((3, 1, 2, 1), "1-3")],
)
def test_cpuset_string(ids: tuple[int, ...], expected: str) -> None:
    assert cpuset_string(ids) == expected


def test_kvm_on_a_host_without_kvm_is_refused() -> None:
    host = replace(HOST, guests=(Guest("hvm", "x86_64", ("qemu",)),))
    with pytest.raises(FailedPrecondition):
        domain_from_spec(MINIMAL, host)
    assert domain_from_spec(replace(MINIMAL, domain_type="qemu"), host).type == "qemu"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vm_id": "not-a-uuid"}, "vm_id"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 0}, "memory_mib"),
        ({"domain_type": "xen"}, "domain_type"),
        ({"watchdog": "explode"}, "watchdog"),
        ({"labels": {"": "x"}}, "labels"),
        ({"disks": (DiskSpec("/a", "vda"), DiskSpec("/b", "vda"))}, "disks"),
        ({"disks": (DiskSpec("rel/a.qcow2", "vda"),)}, "disks[0].path"),
        ({"disks": (DiskSpec("/a", "xvda"),)}, "disks[0].target"),
        ({"disks": (DiskSpec("/a", "vda", bus="usb"),)}, "disks[0].bus"),
        ({"disks": (DiskSpec("/a", "vda", device="floppy"),)}, "disks[0].device"),
        ({"disks": (DiskSpec("/a", "vda", format="vmdk"),)}, "disks[0].format"),
        ({"disks": (DiskSpec("/a", "vda", device="cdrom"),)}, "disks[0].bus"),
        ({"nics": (NicSpec("default", mac="52:54:00:zz:00:01"),)}, "nics[0].mac"),
        ({"pci_hostdevs": (PciHostdevSpec("3b:00.0"),)}, "pci_hostdevs[0].address"),
        ({"mdev_hostdevs": (MdevHostdevSpec("nope"),)}, "mdev_hostdevs[0].uuid"),
        ({"direct_boot": DirectBootSpec(kernel="vmlinuz")}, "direct_boot.kernel"),
        ({"direct_boot": DirectBootSpec(kernel="/k", initrd="i")}, "direct_boot.initrd"),
        ({"description": "nul\x00byte"}, "description"),
        ({"name": "bell\x07"}, "name"),
        ({"owner": "esc\x1b"}, "owner"),
        ({"labels": {"k": "v\x00"}}, "labels['k']"),
    ],
)
def test_bad_spec_raises_invalid_argument_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    spec = replace(MINIMAL, **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as e:
        domain_xml_from_spec(spec, HOST)
    assert e.value.field == field


def test_vm_id_is_normalized_to_libvirt_uuid_form() -> None:
    d = domain_from_spec(replace(MINIMAL, vm_id=VM_ID.upper()), HOST)
    assert d.uuid == VM_ID and d.vmmgr is not None and d.vmmgr.id == VM_ID


def test_from_string_accepts_xml_declaration() -> None:
    el = from_string("<?xml version='1.0' encoding='UTF-8'?>\n<domain type='kvm'/>")
    assert el.tag == "domain"
