"""The lab's tiny test guest: direct kernel boot of a busybox initramfs that prints heartbeats.

The guest (images/build/tiny-vmlinuz + tiny-initrd.img, optional tiny.qcow2 disk) writes
``vmmgr-heartbeat <id> <counter>`` every second to ttyS0 and to the virtio-serial port
``org.vmmgr.heartbeat.0`` (images/tiny/init). Domain type 'qemu' (TCG): a Linux guest boots
here only under TCG.

The XML comes from the libvirt driver's typed element classes (drivers.hypervisor.libvirt.xml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from drivers.hypervisor.libvirt.xml.devices import (
    Channel,
    Console,
    Devices,
    Disk,
    MemBalloon,
    Serial,
)
from drivers.hypervisor.libvirt.xml.domain import Domain
from drivers.hypervisor.libvirt.xml.guest_os import Features, Os, OsType
from drivers.hypervisor.libvirt.xml.resources import Memory, Vcpu
from vmmgr.errors import FailedPrecondition

HEARTBEAT_CHANNEL = "org.vmmgr.heartbeat.0"


@dataclass(frozen=True, slots=True)
class TinyImage:
    kernel: str
    initrd: str
    disk: str  # qcow2 base image (may be used as a backing file or copied)

    @classmethod
    def from_env(cls, default: str = "images/build/tiny.qcow2") -> TinyImage:
        """Locate the image via $VMMGR_TINY_IMAGE (kernel/initrd sit beside it)."""
        disk = os.path.abspath(os.environ.get("VMMGR_TINY_IMAGE", default))
        d = os.path.dirname(disk)
        img = cls(os.path.join(d, "tiny-vmlinuz"), os.path.join(d, "tiny-initrd.img"), disk)
        missing = [p for p in (img.kernel, img.initrd, img.disk) if not os.path.exists(p)]
        if missing:
            raise FailedPrecondition(f"tiny guest image missing: {', '.join(missing)}")
        return img


@dataclass(frozen=True, slots=True)
class TinyGuest:
    name: str
    uuid: str
    kernel: str
    initrd: str
    disk: str = ""  # qcow2 path (as seen by the host running it); "" = diskless
    memory_mib: int = 128
    vcpus: int = 1
    acpi_poweroff: bool = False  # the image ignores the power button unless told otherwise
    cdrom: str = ""  # a local ISO (makes the guest not live-migratable in vmmgr's matrix)


def cmdline(g: TinyGuest) -> str:
    """Kernel command line: serial console, heartbeat id = the guest's name."""
    args = ["console=ttyS0", "quiet", "panic=-1", f"vmmgr.id={g.name}"]
    if g.acpi_poweroff:
        args.append("vmmgr.acpi=poweroff")
    return " ".join(args)


def domain(g: TinyGuest) -> Domain:
    """The guest as a typed ``Domain`` (TCG, direct kernel boot, serial + heartbeat channel)."""
    disks: list[Disk] = []
    if g.disk:
        disks.append(Disk(source_file=g.disk, target_dev="vda", target_bus="virtio"))
    if g.cdrom:
        disks.append(
            Disk(
                source_file=g.cdrom,
                target_dev="sda",
                target_bus="sata",
                device="cdrom",
                driver_type="raw",
                readonly=True,
            )
        )
    return Domain(
        type="qemu",
        name=g.name,
        uuid=g.uuid,
        memory=Memory(kib=g.memory_mib * 1024),
        vcpu=Vcpu(count=g.vcpus),
        os=Os(
            type=OsType(value="hvm", arch="x86_64"),
            kernel=g.kernel,
            initrd=g.initrd,
            cmdline=cmdline(g),
        ),
        features=Features(acpi=True, apic=True),  # ACPI: the power button reaches the guest
        on_crash="destroy",
        devices=Devices(
            disks=tuple(disks),
            serials=(Serial(),),
            consoles=(Console(),),
            channels=(Channel(target_name=HEARTBEAT_CHANNEL),),
            memballoon=MemBalloon(model="none"),
        ),
    )


def domain_xml(g: TinyGuest) -> str:
    return domain(g).to_xml()
