"""Frozen snapshots of the cluster: the only input of every decision (placement, policies).

Snapshots are plain immutable data built by services from the store; the scheduler and the
policy planners are pure functions over them. Field names are the contract between services,
the scheduler, and policies: extend with defaulted fields, never rename.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class HostState(StrEnum):
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"


class DeviceKind(StrEnum):
    GPU = "gpu"
    FPGA = "fpga"
    OTHER = "other"


class DeviceHealth(StrEnum):
    HEALTHY = "healthy"
    TAINTED = "tainted"  # ECC / row remap / fell off the bus: never placed on
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class NumaCell:
    id: int
    cpus: int
    memory_mib: int
    used_cpus: int = 0  # vCPUs pinned to this cell (NUMA-strict VMs); floating vCPUs are not here
    used_memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class MdevTypeSnap:
    """A mediated-device (vGPU) type offered by one parent device."""

    name: str  # e.g. "nvidia-471" (libvirt/sysfs type id)
    display_name: str  # e.g. "GRID A100-4C"
    available: int  # instances still creatable
    max_instances: int


@dataclass(frozen=True, slots=True)
class MigProfileSnap:
    """A MIG GPU-instance profile of a GPU (from nvmlDeviceGetGpuInstanceProfileInfo)."""

    name: str  # "1g.10gb"
    slices: int  # compute slices it takes out of ``MigSnap.total_slices``
    memory_mib: int
    max_instances: int


@dataclass(frozen=True, slots=True)
class MigSnap:
    enabled: bool
    total_slices: int  # 7 on A100/H100
    profiles: tuple[MigProfileSnap, ...] = ()
    instances: tuple[str, ...] = ()  # profile names of existing GPU instances
    claimed: tuple[str, ...] = ()  # profile names of the instances VMs hold (sub-multiset)

    @property
    def used_slices(self) -> int:
        by_name = {p.name: p.slices for p in self.profiles}
        return sum(by_name.get(n, 0) for n in self.instances)


@dataclass(frozen=True, slots=True)
class DeviceSnap:
    id: str  # stable: "<host>/<pci address>"
    host: str
    address: str  # "0000:3b:00.0"
    kind: DeviceKind
    vendor_id: int
    product_id: int
    model: str  # normalised name users ask for, e.g. "H100-80GB", "A100", "ALVEO-U250"
    numa_node: int | None = None
    iommu_group: int | None = None
    health: DeviceHealth = DeviceHealth.HEALTHY
    claimed_by: str | None = None  # vm id holding the whole device
    mdev_types: tuple[MdevTypeSnap, ...] = ()
    active_mdev_type: str | None = None  # vGPUs of one type per physical GPU
    mdev_claims: int = 0  # vGPU instances claimed on this parent
    mig: MigSnap | None = None
    is_vf: bool = False  # SR-IOV virtual function
    utilization: float | None = None  # 0..1 from telemetry, None = unknown
    pf: str | None = None  # device id of the SR-IOV physical function when is_vf
    driver: str | None = None  # host driver bound now (restored after passthrough)


@dataclass(frozen=True, slots=True)
class HostSnap:
    name: str
    state: HostState
    cpus: int
    memory_mib: int
    disk_gib: int = 0
    used_vcpus: int = 0
    used_memory_mib: int = 0
    used_disk_gib: int = 0
    numa_cells: tuple[NumaCell, ...] = ()
    tags: frozenset[str] = frozenset()
    pool: str = "default"
    devices: tuple[DeviceSnap, ...] = ()
    cpu_load: float | None = None  # 0..1 from telemetry
    vms: tuple[str, ...] = ()  # ids of VMs placed here


@dataclass(frozen=True, slots=True)
class VMSnap:
    id: str
    name: str
    host: str | None
    vcpus: int
    memory_mib: int
    disk_gib: int = 0
    running: bool = True
    groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # ids of whole devices it holds
    vgpu_type: str | None = None
    mig_profile: str | None = None
    ha: bool = False
    priority: int = 0
    migratable: bool = True  # live-migratable (no whole PCI passthrough etc.)
    cpu_load: float | None = None  # 0..1 of its own vCPUs, from telemetry; None = unknown
    created_at: float = 0.0  # unix seconds; scale-in removes the newest first


@dataclass(frozen=True, slots=True)
class GroupSnap:
    """Affinity / anti-affinity group; ``hard`` groups filter, soft ones only weigh."""

    name: str
    policy: str  # "affinity" | "anti-affinity"
    hard: bool = True
    members: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class GpuRequest:
    model: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    vm_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int = 0
    gpus: tuple[GpuRequest, ...] = ()
    vgpu_type: str | None = None
    mig_profile: str | None = None
    fpga_model: str | None = None
    fpga_count: int = 0
    groups: tuple[str, ...] = ()
    required_tags: frozenset[str] = frozenset()
    host: str | None = None  # pin to this host
    exclude_hosts: frozenset[str] = frozenset()  # e.g. the migration source
    needs_accelerator: bool = field(init=False, default=False)
    numa_strict: bool = False  # vCPUs, memory and devices must fit in one NUMA cell
    fpga_allow_vf: bool = False  # an SR-IOV virtual function may stand in for a whole FPGA

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "needs_accelerator",
            bool(self.gpus or self.vgpu_type or self.mig_profile or self.fpga_model),
        )


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    hosts: tuple[HostSnap, ...]
    vms: tuple[VMSnap, ...] = ()
    groups: tuple[GroupSnap, ...] = ()
