"""Plain data the device layer passes around: host inventory, NVML facts, mdev records.

All frozen dataclasses of plain values (str, int, bool, tuples, None) so they map one-to-one to
the host-agent protos and to JSON. ``None`` always means "unknown" (e.g. NVML answered
Not Supported), never "zero".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import DeviceKind

_ADDR = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)
_NODEDEV = re.compile(
    r"^pci_(?P<domain>[0-9a-fA-F]{4})_(?P<bus>[0-9a-fA-F]{2})_"
    r"(?P<slot>[0-9a-fA-F]{2})_(?P<function>[0-7])$"
)


@dataclass(frozen=True, slots=True, order=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str, *, field: str = "address") -> PciAddress:
        """Accepts "0000:3b:00.0", "3b:00.0", NVML's "00000000:3B:00.0" and "pci_0000_3b_00_0"."""
        m = _ADDR.match(text.strip()) or _NODEDEV.match(text.strip())
        if m is None:
            raise InvalidArgument(field, f"not a PCI address: {text!r}")
        return cls(
            int(m["domain"] or "0", 16), int(m["bus"], 16), int(m["slot"], 16), int(m["function"])
        )

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def nodedev_name(self) -> str:
        return f"pci_{self.domain:04x}_{self.bus:02x}_{self.slot:02x}_{self.function:x}"


def normalise_address(text: str, *, field: str = "address") -> str:
    return str(PciAddress.parse(text, field=field))


@dataclass(frozen=True, slots=True)
class MdevType:
    """One mediated-device type a parent offers (libvirt mdev_types / sysfs)."""

    id: str  # "nvidia-700"
    name: str  # "GRID A100D-4C"
    device_api: str  # "vfio-pci"
    available_instances: int
    max_instances: int | None = None  # sysfs description "max_instance=" or NVML; None = unknown


@dataclass(frozen=True, slots=True)
class MdevInstance:
    """A mediated device that exists on the host."""

    uuid: str
    type_id: str
    parent: str  # PCI address of the parent device
    iommu_group: int | None = None


@dataclass(frozen=True, slots=True)
class PciDevice:
    """One PCI function as libvirt (and sysfs, where libvirt has no field) reports it."""

    address: str  # "0000:3b:00.0"
    vendor_id: int
    product_id: int
    pci_class: int  # 0x030200
    kind: DeviceKind
    model: str  # normalised name, see vmmgr.devices.catalog
    vendor_name: str = ""
    product_name: str = ""
    nodedev_name: str = ""
    driver: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    iommu_group_members: tuple[str, ...] = ()  # addresses, this device included
    is_vf: bool = False
    pf: str | None = None  # address of the physical function when is_vf
    vfs: tuple[str, ...] = ()  # addresses of enabled virtual functions
    max_vfs: int | None = None
    mdev_types: tuple[MdevType, ...] = ()

    @property
    def vendor_product(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    @property
    def is_bridge(self) -> bool:
        return self.pci_class >> 8 == 0x0604


@dataclass(frozen=True, slots=True)
class SysfsPciFacts:
    """What sysfs says about one PCI function; fills fields libvirt leaves out."""

    address: str
    driver: str | None = None
    numa_node: int | None = None  # sysfs -1 -> None
    iommu_group: int | None = None
    iommu_group_members: tuple[str, ...] = ()
    physfn: str | None = None
    virtfns: tuple[str, ...] = ()
    sriov_totalvfs: int | None = None
    mdev_max_instances: tuple[tuple[str, int], ...] = ()  # (type id, max_instance)


@dataclass(frozen=True, slots=True)
class RemappedRows:
    correctable: int
    uncorrectable: int
    pending: bool
    failed: bool


@dataclass(frozen=True, slots=True)
class MigProfileFacts:
    """One GPU-instance profile (nvmlDeviceGetGpuInstanceProfileInfo)."""

    index: int  # NVML_GPU_INSTANCE_PROFILE_* constant
    id: int  # profile id used to create instances
    name: str  # "1g.10gb"
    slices: int  # compute slices
    memory_mib: int
    max_instances: int


@dataclass(frozen=True, slots=True)
class MigInstanceFacts:
    gpu_instance_id: int
    profile_id: int
    profile: str  # profile name
    start: int  # placement start (memory slice)
    size: int  # placement size (memory slices)


@dataclass(frozen=True, slots=True)
class MigFacts:
    enabled: bool | None  # current mode; None = unknown (MIG not supported)
    pending: bool | None
    profiles: tuple[MigProfileFacts, ...] = ()
    instances: tuple[MigInstanceFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class VgpuTypeFacts:
    type_id: int
    name: str  # "GRID A100D-4C"
    max_instances: int | None = None


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """What NVML says about one GPU. Every field but ``address``/``index`` may be unknown."""

    index: int
    address: str  # PCI address, normalised
    uuid: str | None = None
    name: str | None = None
    lost: bool = False  # NVML_ERROR_GPU_IS_LOST: fell off the bus
    pci_device_id: int | None = None  # 0x233010de
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    utilization_gpu_pct: int | None = None
    utilization_memory_pct: int | None = None
    temperature_c: int | None = None
    power_mw: int | None = None
    power_limit_mw: int | None = None
    ecc_enabled: bool | None = None
    ecc_pending: bool | None = None
    ecc_uncorrected_volatile: int | None = None
    retired_pages_pending: bool | None = None  # pre-Ampere; H100 answers Not Supported
    remapped_rows: RemappedRows | None = None
    virtualization_mode: str | None = None  # "none" | "passthrough" | "vgpu" | "host_vgpu" ...
    host_vgpu_mode: str | None = None  # "sriov" | "non_sriov"; None without a vGPU manager
    vgpu_supported: tuple[VgpuTypeFacts, ...] | None = None
    vgpu_creatable: tuple[VgpuTypeFacts, ...] | None = None
    numa_node: int | None = None
    persistence_mode: bool | None = None
    compute_processes: int | None = None
    mig: MigFacts | None = None
    errors: tuple[str, ...] = ()  # calls that failed for reasons other than Not Supported


@dataclass(frozen=True, slots=True)
class HostInventory:
    host: str
    devices: tuple[PciDevice, ...]
    mdevs: tuple[MdevInstance, ...] = ()
    gpus: tuple[GpuFacts, ...] = ()  # empty without NVML (no agent)
    nvml_driver_version: str | None = None

    def device(self, address: str) -> PciDevice | None:
        want = normalise_address(address)
        return next((d for d in self.devices if d.address == want), None)

    def gpu_facts(self, address: str) -> GpuFacts | None:
        want = normalise_address(address)
        return next((g for g in self.gpus if g.address == want), None)

    @property
    def accelerators(self) -> tuple[PciDevice, ...]:
        return tuple(d for d in self.devices if d.kind is not DeviceKind.OTHER)


@dataclass(frozen=True, slots=True)
class MdevRecord:
    """What undoing or recreating a created mdev needs."""

    uuid: str
    parent: str  # PCI address
    type_id: str
    via: str  # "sysfs" | "libvirt"
    parent_driver: str | None = None  # host driver of the parent when it was created
    persistent: bool = False  # libvirt-defined (survives reboot) vs transient


@dataclass(frozen=True, slots=True)
class HostdevRecord:
    """A whole PCI device handed to a VM, with the host driver to give it back to."""

    address: str
    original_driver: str | None


@dataclass(frozen=True, slots=True)
class MigPlacement:
    """One GPU instance of a geometry; ``start`` None lets NVML place it."""

    profile: str
    start: int | None = None


@dataclass(frozen=True, slots=True)
class FpgaProfile:
    """How to program one kind of FPGA before a VM starts.

    ``command`` is an argv template: each argument may hold {device}, {bus}, {domain}, {slot},
    {function}, {bitstream} placeholders, substituted per argument (never through a shell).
    """

    name: str
    bitstream: str  # absolute path on the host
    sha256: str
    command: tuple[str, ...]
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class FpgaProgramResult:
    device: str
    profile: str
    bitstream_sha256: str
    argv: tuple[str, ...]
    output: str = ""  # tail of stdout+stderr
