"""Typed interfaces the core needs from drivers/ (side effects live behind these).

vmmgr never imports drivers/ except in vmmgr/daemon.py, which wires implementations in. Tests
may pass the real libvirt driver (test:///FILE or qemu:///system) or small fakes only where the
thing cannot exist here (sysfs mdev, NVML).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class DomainState(StrEnum):
    """Observed libvirt domain state, flattened."""

    RUNNING = "running"
    STOPPED = "stopped"  # shut off / defined but not running
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting_down"
    CRASHED = "crashed"
    SUSPENDED_TO_DISK = "pmsuspended"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DiskSpec:
    path: str  # absolute path of the volume (qcow2 overlay) or the seed ISO
    target: str  # "vda", "sda"
    bus: str = "virtio"  # virtio | sata | scsi | ide
    device: str = "disk"  # disk | cdrom
    format: str = "qcow2"  # qcow2 | raw
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class NicSpec:
    network: str  # libvirt network name; "" = user-mode networking (no host network needed)
    mac: str = ""
    model: str = "virtio"


@dataclass(frozen=True, slots=True)
class PciHostdevSpec:
    address: str  # "0000:3b:00.0"
    managed: bool = True


@dataclass(frozen=True, slots=True)
class MdevHostdevSpec:
    uuid: str
    model: str = "vfio-pci"
    display: bool = False


@dataclass(frozen=True, slots=True)
class DirectBootSpec:
    kernel: str
    initrd: str = ""
    cmdline: str = ""


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """Everything needed to define one vmmgr domain. The driver turns it into typed XML."""

    vm_id: str  # also used as the libvirt domain UUID
    name: str
    vcpus: int
    memory_mib: int
    owner: str = ""
    description: str = ""
    domain_type: str = "kvm"  # kvm | qemu (TCG)
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    pci_hostdevs: tuple[PciHostdevSpec, ...] = ()
    mdev_hostdevs: tuple[MdevHostdevSpec, ...] = ()
    numa_node: int | None = None  # pin vCPUs + memory to this host NUMA cell
    direct_boot: DirectBootSpec | None = None
    serial_console: bool = True
    heartbeat_channel: bool = True  # virtio-serial port org.vmmgr.heartbeat.0
    watchdog: str = ""  # "" | "reset" | "poweroff" ... (i6300esb)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DomainInfo:
    uuid: str
    name: str
    state: DomainState
    vm_id: str | None  # from vmmgr metadata; None = foreign domain, never touched
    owner: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    persistent: bool = True


@dataclass(frozen=True, slots=True)
class HostNumaCell:
    id: int
    cpus: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class HostInfo:
    hostname: str
    host_uuid: str
    arch: str
    cpus: int
    memory_mib: int
    numa_cells: tuple[HostNumaCell, ...]
    hypervisor: str  # "QEMU", "Test"
    hypervisor_version: str
    libvirt_version: str
    domain_types: tuple[str, ...] = ()  # e.g. ("qemu", "kvm")


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    pool: str
    name: str
    path: str
    format: str
    capacity_bytes: int
    allocation_bytes: int


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A libvirt lifecycle event, flattened; ``state`` is the new observed state."""

    host: str
    uuid: str
    name: str
    vm_id: str | None
    state: DomainState
    reason: str  # e.g. "started", "stopped", "crashed", "undefined", "shutdown"
    detail: str = ""  # libvirt's event detail, e.g. "booted", "destroyed", "migrated", "failed"
    # time.monotonic() when libvirt delivered it: an event can reach the services after the
    # operation that caused it has finished, and must not undo what that operation recorded
    observed: float = field(default_factory=time.monotonic)


class HostConnection(Protocol):
    """One live connection to one host's hypervisor (a libvirt URI)."""

    uri: str

    def alive(self) -> bool: ...
    def close(self) -> None: ...
    def host_info(self) -> HostInfo: ...

    # domains
    def list_domains(self) -> list[DomainInfo]: ...
    def get_domain(self, vm_id: str) -> DomainInfo | None: ...
    def define(self, spec: DomainSpec, *, new: bool = False) -> DomainInfo:
        """Define (or redefine) the domain; ``new``: its uuid was just made for it, so no
        domain can hold it yet (and none is looked for)."""
        ...

    def undefine(self, vm_id: str) -> None: ...
    def start(self, vm_id: str) -> None: ...
    def shutdown(self, vm_id: str, timeout_s: float) -> bool:
        """Ask the guest to power off; wait up to timeout_s; True if it stopped in time."""
        ...

    def destroy(self, vm_id: str) -> None: ...
    def reboot(self, vm_id: str) -> None: ...
    def suspend(self, vm_id: str) -> None: ...
    def resume(self, vm_id: str) -> None: ...
    def domain_xml(self, vm_id: str) -> str: ...

    # storage
    def ensure_pool(self, name: str, path: str) -> None: ...
    def import_volume(self, pool: str, name: str, source_path: str) -> VolumeInfo:
        """Copy a local image file into the pool (upload stream; works on remote hosts)."""
        ...

    def create_raw_volume(self, pool: str, name: str, capacity_bytes: int) -> VolumeInfo:
        """An empty raw volume, made before its content exists (see ``write_volume``)."""
        ...

    def write_volume(self, pool: str, name: str, source_path: str) -> None:
        """Copy a local file into the start of an existing volume at least its size."""
        ...

    def get_volume(self, pool: str, name: str) -> VolumeInfo | None: ...
    def has_volume(self, pool: str, name: str) -> bool:
        """Whether ``pool`` holds volume ``name``: a look-up, nothing read or refreshed."""
        ...

    def create_overlay(
        self, pool: str, name: str, backing: VolumeInfo, capacity_bytes: int
    ) -> VolumeInfo: ...
    def delete_volume(self, pool: str, name: str) -> None: ...
    def list_volumes(self, pool: str) -> list[VolumeInfo]: ...

    # node devices (raw libvirt nodedev XML; parsed by the device layer)
    def list_node_device_xml(self) -> list[str]: ...

    # events
    def on_domain_event(self, callback: Callable[[DomainEvent], None]) -> None:
        """``callback(event)`` for each lifecycle change libvirt reports, except the ones this
        connection's own define/undefine/start/suspend/resume caused: their callers record
        those outcomes themselves. A destroy's are reported: a hypervisor may tell of the kill
        in more than one event, and the last one settles the state."""
        ...

    def on_close(self, callback: Callable[[str], None]) -> None: ...
    def on_node_device_event(self, callback: Callable[[str], None]) -> None: ...


class PendingFile(Protocol):
    """A file being built on the daemon's machine."""

    max_bytes: int  # its size will not exceed this: a volume for it can be made meanwhile

    def wait(self) -> str:
        """Its path once built; DriverError if building failed."""
        ...

    def discard(self) -> None:
        """Stop building it and remove it (safe to call more than once, from any thread)."""
        ...


class Hypervisor(Protocol):
    """Opens connections; implemented by drivers.hypervisor.libvirt."""

    def connect(self, uri: str, *, host_name: str) -> HostConnection: ...

    def build_seed(self, meta_data: str, user_data: str, network_config: str) -> PendingFile:
        """Start building a cloud-init NoCloud ISO (volume label ``cidata``); a host gets it
        through ``create_raw_volume`` and ``write_volume``."""
        ...


@dataclass(frozen=True, slots=True)
class ImageFacts:
    format: str  # "qcow2" | "raw"
    size_bytes: int
    virtual_size_bytes: int
    sha256: str


class ImageFiles(Protocol):
    """Reads image files on the daemon's machine (implemented in drivers/)."""

    def probe(self, path: str) -> str:
        """Cheap check before accepting an import: the format ("qcow2"/"raw"); raises
        InvalidArgument(field="source_path") when the file is missing or unreadable."""
        ...

    def inspect(self, path: str) -> ImageFacts:
        """Full facts, including the sha256 (reads the whole file)."""
        ...


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """How to live-migrate (0 = libvirt's default for the numbers)."""

    max_downtime_ms: int = 0
    bandwidth_mib_s: int = 0
    auto_converge: bool = False
    allow_postcopy: bool = False  # refused by the driver for VMs with VFIO devices
    copy_storage: bool = False  # copy non-shared disks (the target needs a covering pool)
    unsafe: bool = False  # shared disk directory on a local filesystem (the lab)
    schedule: tuple[object, ...] = ()  # vmmgr.migration.Step values; () = the default schedule


class Migrator(Protocol):
    """Moves a domain between two hosts (drivers.hypervisor.libvirt.migrator)."""

    def live(
        self,
        source: HostConnection,
        vm_id: str,
        target_uri: str,
        options: LiveOptions,
        *,
        on_progress: Callable[[Any], None],
        cancelled: Callable[[], bool],
    ) -> Any:
        """Block until done; return a vmmgr.migration.MigrationResult. On any failure the VM
        keeps running on the source (the driver rolls back) and a VmmgrError is raised."""
        ...

    def cold(
        self,
        source: HostConnection,
        vm_id: str,
        target: HostConnection,
        *,
        pool: str,
        shutdown_timeout_s: float,
        on_progress: Callable[[Any], None],
        cancelled: Callable[[], bool],
    ) -> Any: ...
