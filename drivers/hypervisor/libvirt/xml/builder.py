"""DomainSpec -> typed ``Domain`` -> XML. Pure: no libvirt calls, only host capabilities.

Bad specs raise InvalidArgument naming the DomainSpec field (``disks[1].target``); host
mismatches (NUMA cell missing, kvm not offered) raise FailedPrecondition.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from enum import StrEnum

from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.capabilities import HostCapabilities
from drivers.hypervisor.libvirt.xml.devices import (
    Channel,
    Console,
    Devices,
    Disk,
    Hostdev,
    HostdevMdev,
    HostdevPci,
    Interface,
    MemBalloon,
    Serial,
    Watchdog,
)
from drivers.hypervisor.libvirt.xml.domain import Domain
from drivers.hypervisor.libvirt.xml.guest_os import Clock, Features, Os, OsType
from drivers.hypervisor.libvirt.xml.metadata import Metadata, VmmgrInstance
from drivers.hypervisor.libvirt.xml.resources import (
    Cpu,
    CpuFeature,
    CpuModel,
    CurrentMemory,
    Memory,
    NumaTune,
    Vcpu,
)
from vmmgr.errors import FailedPrecondition, InvalidArgument
from vmmgr.ports import DiskSpec, DomainSpec

HEARTBEAT_CHANNEL = "org.vmmgr.heartbeat.0"
DOMAIN_TYPES = ("kvm", "qemu", "test")
DISK_BUSES = ("virtio", "sata", "scsi", "ide")
DISK_DEVICES = ("disk", "cdrom")
DISK_FORMATS = ("qcow2", "raw")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_TARGET = re.compile(r"^(vd|sd|hd)[a-z]{1,2}$")


class CpuMode(StrEnum):
    """How a kvm domain's CPU is described (a per-host driver setting).

    AUTO: host-passthrough when the host CPU shows vmx/svm, else COMPAT. COMPAT is the form
    that starts on hosts whose CPU hides vmx/svm (lab-notes: kvm_pvm hosts): custom qemu64 with
    svm disabled. TCG ('qemu') and 'test' domains get no <cpu> (the hypervisor default).
    """

    AUTO = "auto"
    HOST_PASSTHROUGH = "host-passthrough"
    HOST_MODEL = "host-model"
    COMPAT = "qemu64-compat"


def choose_cpu(domain_type: str, host: HostCapabilities, mode: CpuMode) -> Cpu | None:
    if domain_type != "kvm":
        return None
    if mode is CpuMode.AUTO:
        mode = CpuMode.HOST_PASSTHROUGH if host.has_hw_virt else CpuMode.COMPAT
    if mode is CpuMode.HOST_PASSTHROUGH:
        return Cpu(mode="host-passthrough", check="none")
    if mode is CpuMode.HOST_MODEL:
        return Cpu(mode="host-model")
    return Cpu(
        mode="custom",
        match="exact",
        model=CpuModel(name="qemu64", fallback="allow"),
        features=(CpuFeature(name="svm", policy="disable"),),
    )


def cpuset_string(cpu_ids: tuple[int, ...]) -> str:
    """(0,1,2,3,8) -> "0-3,8": libvirt's cpuset syntax."""
    ids = sorted(set(cpu_ids))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def _uuid(value: str, field: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(field, f"not a UUID: {value!r}") from None


def _disk(i: int, d: DiskSpec) -> Disk:
    f = f"disks[{i}]"
    if not d.path.startswith("/"):
        raise InvalidArgument(f"{f}.path", "must be an absolute path")
    if not _TARGET.match(d.target):
        raise InvalidArgument(f"{f}.target", f"not a disk target name: {d.target!r}")
    if d.bus not in DISK_BUSES:
        raise InvalidArgument(f"{f}.bus", f"one of {', '.join(DISK_BUSES)}")
    if d.device not in DISK_DEVICES:
        raise InvalidArgument(f"{f}.device", f"one of {', '.join(DISK_DEVICES)}")
    if d.format not in DISK_FORMATS:
        raise InvalidArgument(f"{f}.format", f"one of {', '.join(DISK_FORMATS)}")
    if d.device == "cdrom" and d.bus == "virtio":
        raise InvalidArgument(f"{f}.bus", "a cdrom cannot sit on the virtio bus (use sata)")
    return Disk(
        source_file=d.path,
        target_dev=d.target,
        target_bus=d.bus,
        device=d.device,
        driver_name="qemu",
        driver_type=d.format,
        readonly=d.readonly or d.device == "cdrom",
    )


def _validate_top(spec: DomainSpec) -> None:
    if not spec.name or not spec.name.strip():
        raise InvalidArgument("name", "must not be empty")
    if "/" in spec.name:
        raise InvalidArgument("name", "must not contain '/'")
    if spec.vcpus < 1:
        raise InvalidArgument("vcpus", "must be at least 1")
    if spec.memory_mib < 1:
        raise InvalidArgument("memory_mib", "must be at least 1")
    if spec.domain_type not in DOMAIN_TYPES:
        raise InvalidArgument("domain_type", f"one of {', '.join(DOMAIN_TYPES)}")
    if spec.watchdog and spec.watchdog not in WATCHDOG_ACTIONS:
        raise InvalidArgument("watchdog", f"one of {', '.join(WATCHDOG_ACTIONS)}")
    if any(not key for key in spec.labels):
        raise InvalidArgument("labels", "label keys must not be empty")
    targets = [d.target for d in spec.disks]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise InvalidArgument("disks", f"duplicate targets: {', '.join(dupes)}")
    if spec.direct_boot is not None:
        db = spec.direct_boot
        if not db.kernel.startswith("/"):
            raise InvalidArgument("direct_boot.kernel", "must be an absolute path")
        if db.initrd and not db.initrd.startswith("/"):
            raise InvalidArgument("direct_boot.initrd", "must be an absolute path")


def _numa(spec: DomainSpec, host: HostCapabilities) -> tuple[str | None, NumaTune | None]:
    if spec.numa_node is None:
        return None, None
    cell = host.cell(spec.numa_node)
    if cell is None:
        known = ", ".join(str(c.id) for c in host.cells) or "none"
        raise InvalidArgument("numa_node", f"host has no NUMA cell {spec.numa_node} ({known})")
    if not cell.cpu_ids:
        raise FailedPrecondition(f"NUMA cell {cell.id} has no CPUs")
    return cpuset_string(cell.cpu_ids), NumaTune(nodeset=str(cell.id), mode="strict")


def _hostdevs(spec: DomainSpec) -> tuple[Hostdev, ...]:
    out: list[Hostdev] = []
    for i, p in enumerate(spec.pci_hostdevs):
        try:
            out.append(HostdevPci.from_address(p.address, managed=p.managed))
        except ValueError as e:
            raise InvalidArgument(f"pci_hostdevs[{i}].address", str(e)) from None
    for i, m in enumerate(spec.mdev_hostdevs):
        out.append(
            HostdevMdev(
                uuid=_uuid(m.uuid, f"mdev_hostdevs[{i}].uuid"), model=m.model, display=m.display
            )
        )
    return tuple(out)


def domain_from_spec(
    spec: DomainSpec,
    host: HostCapabilities,
    *,
    cpu_mode: CpuMode = CpuMode.AUTO,
    machine: str | None = None,
) -> Domain:
    """The typed domain vmmgr defines for ``spec`` on a host with capabilities ``host``."""
    _validate_top(spec)
    vm_id = _uuid(spec.vm_id, "vm_id")
    kvm_host = "qemu" in host.domain_types  # a QEMU host lists its real offers; test does not
    if kvm_host and spec.domain_type not in host.domain_types:
        raise FailedPrecondition(
            f"host offers domain types {', '.join(host.domain_types)}, not {spec.domain_type}"
        )
    cpuset, numatune = _numa(spec, host)
    disks = tuple(_disk(i, d) for i, d in enumerate(spec.disks))
    nics: list[Interface] = []
    for i, n in enumerate(spec.nics):
        if n.mac and not _MAC.match(n.mac):
            raise InvalidArgument(f"nics[{i}].mac", f"not a MAC address: {n.mac!r}")
        nics.append(
            Interface(
                type="network" if n.network else "user",
                source_network=n.network or None,
                mac=n.mac.lower() or None,
                model=n.model or None,
            )
        )
    db = spec.direct_boot
    os_ = Os(
        type=OsType(value="hvm", arch=host.arch or None, machine=machine),
        boot_devs=() if db is not None else ("hd",),
        kernel=db.kernel if db is not None else None,
        initrd=(db.initrd or None) if db is not None else None,
        cmdline=(db.cmdline or None) if db is not None else None,
    )
    kib = spec.memory_mib * 1024
    return Domain(
        type=spec.domain_type,
        name=spec.name,
        uuid=vm_id,
        description=spec.description or None,
        metadata=Metadata(
            VmmgrInstance(id=vm_id, owner=spec.owner, labels=tuple(sorted(spec.labels.items())))
        ),
        memory=Memory(kib),
        current_memory=CurrentMemory(kib),
        vcpu=Vcpu(spec.vcpus, placement="static", cpuset=cpuset),
        numatune=numatune,
        os=os_,
        features=Features(acpi=True, apic=True),
        cpu=choose_cpu(spec.domain_type, host, cpu_mode),
        clock=Clock("utc"),
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="destroy",
        devices=Devices(
            disks=disks,
            interfaces=tuple(nics),
            serials=(Serial(),) if spec.serial_console else (),
            consoles=(Console(),) if spec.serial_console else (),
            channels=(Channel(target_name=HEARTBEAT_CHANNEL),) if spec.heartbeat_channel else (),
            hostdevs=_hostdevs(spec),
            watchdog=Watchdog(action=spec.watchdog) if spec.watchdog else None,
            memballoon=MemBalloon("virtio"),
        ),
    )


def domain_xml_from_spec(
    spec: DomainSpec,
    host: HostCapabilities,
    *,
    cpu_mode: CpuMode = CpuMode.AUTO,
    machine: str | None = None,
) -> str:
    """Domain XML for ``spec``. Text lxml cannot carry (NUL, control characters) is rejected
    with InvalidArgument naming the field."""
    domain = domain_from_spec(spec, host, cpu_mode=cpu_mode, machine=machine)
    try:
        return to_string(domain.build())
    except ValueError as e:
        raise InvalidArgument(_offending_field(spec), f"not representable in XML: {e}") from None


def _offending_field(spec: DomainSpec) -> str:
    """Which free-text field holds a character XML cannot carry."""
    candidates: list[tuple[str, str]] = [
        ("name", spec.name),
        ("description", spec.description),
        ("owner", spec.owner),
    ]
    candidates += [(f"labels[{k!r}]", k + v) for k, v in spec.labels.items()]
    candidates += [(f"disks[{i}].path", d.path) for i, d in enumerate(spec.disks)]
    candidates += [(f"nics[{i}].network", n.network) for i, n in enumerate(spec.nics)]
    if spec.direct_boot is not None:
        db = spec.direct_boot
        candidates += [
            ("direct_boot.kernel", db.kernel),
            ("direct_boot.initrd", db.initrd),
            ("direct_boot.cmdline", db.cmdline),
        ]
    for field, value in candidates:
        if not _xml_safe(value):
            return field
    return "spec"


def _xml_safe(value: str) -> bool:
    """XML 1.0 Char production (lxml's own check), minus surrogates."""
    for ch in value:
        c = ord(ch)
        if c in (0x9, 0xA, 0xD) or 0x20 <= c <= 0xD7FF or 0xE000 <= c <= 0xFFFD:
            continue
        if 0x10000 <= c <= 0x10FFFF:
            continue
        return False
    return True
