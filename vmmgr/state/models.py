"""The tables of the vmmgr store (SQLModel, one class per table).

Conventions:
- user-visible ids are UUID strings (``new_id()``); user-chosen names are primary keys where
  they are unique cluster-wide (hosts, images, groups, policies, projects, leases);
- every timestamp is an aware UTC datetime (``UTCDateTime``), on SQLite and Postgres alike;
- small maps/lists live in JSON columns. JSON values are replaced, never mutated in place
  (SQLAlchemy does not see in-place mutation): assign a new dict/list.
- State-like columns are plain strings; the allowed values are the StrEnums below and the repo
  validates them (no CHECK constraints: they are invisible to Alembic's autogenerate).

The schema changes only through Alembic migrations (vmmgr/state/migrations); a test checks that
the migrated schema equals this metadata on SQLite and Postgres.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from vmmgr.state.types import UTCDateTime, utcnow

# Named constraints: SQLite batch migrations can only drop/alter constraints that have names.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = SQLModel.metadata

# 64-bit sequence numbers on Postgres; on SQLite an INTEGER PRIMARY KEY (the rowid) is 64-bit
# already, and only the exact type INTEGER gets rowid/AUTOINCREMENT behaviour.
SeqInt = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    return str(uuid.uuid4())


class HostStatus(StrEnum):
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"


class PowerState(StrEnum):
    """What the user wants a VM to be (desired state)."""

    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"


class VMState(StrEnum):
    """What vmmgr last observed (or is doing) for a VM."""

    PENDING = "pending"
    CREATING = "creating"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting_down"
    CRASHED = "crashed"
    MIGRATING = "migrating"
    DELETING = "deleting"
    ERROR = "error"
    UNKNOWN = "unknown"


class VolumeKind(StrEnum):
    OVERLAY = "overlay"
    SEED = "seed"


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED)


class ClaimKind(StrEnum):
    PCI = "pci"  # the whole device (vfio passthrough); exclusive
    MDEV = "mdev"  # one vGPU instance on a parent device
    MIG = "mig"  # one MIG GPU instance


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class GroupPolicy(StrEnum):
    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti-affinity"


# --------------------------------------------------------------------------------------------
# hosts and VMs
# --------------------------------------------------------------------------------------------


class Host(SQLModel, table=True):
    __tablename__ = "host"

    name: str = Field(primary_key=True)
    uri: str
    state: str = Field(default=HostStatus.DOWN.value, index=True)  # observed: HostStatus
    maintenance: bool = False  # desired: drain and keep new VMs away
    hostname: str = ""
    host_uuid: str = ""
    arch: str = ""
    cpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0  # capacity of the VM storage pool (0 = unknown / not limited)
    numa_cells: list[dict[str, int]] = Field(default_factory=list, sa_type=JSON)
    hypervisor: str = ""
    hypervisor_version: str = ""
    libvirt_version: str = ""
    domain_types: list[str] = Field(default_factory=list, sa_type=JSON)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    pool: str = Field(default="default", index=True)
    agent_address: str = ""
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    error: str = ""  # last connection error


class VM(SQLModel, table=True):
    __tablename__ = "vm"
    __table_args__ = (
        UniqueConstraint("project", "name"),
        Index("ix_vm_name_id", "name", "id"),  # keyset pagination order
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    project: str = "default"
    owner: str = ""
    description: str = ""
    host: str | None = Field(default=None, foreign_key="host.name", index=True)
    vcpus: int
    memory_mib: int
    disk_gib: int = 0
    image: str = ""
    # the full create request: networks, cloud-init, accelerators, groups, labels ...
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    desired_power: str = PowerState.RUNNING.value
    state: str = Field(default=VMState.PENDING.value, index=True)
    state_reason: str = ""
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    ha: bool = False
    ha_priority: int = 0
    domain_uuid: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    generation: int = 1  # bumped by every update; optimistic concurrency


class HostUsage(SQLModel, table=True):
    """What the VMs placed on a host hold, summed: every VM whose ``host`` is set, whatever
    its state (the snapshot's accounting rule). Kept by database triggers on ``vm`` (migration
    0002), so any writer keeps it right and every create reads one row per host instead of
    summing every VM. vmmgr never writes it."""

    __tablename__ = "host_usage"

    host: str = Field(foreign_key="host.name", primary_key=True, ondelete="CASCADE")
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0


class VMLabel(SQLModel, table=True):
    """Index of ``VM.labels`` (kept in sync by the repo) so label filters use an index."""

    __tablename__ = "vm_label"
    __table_args__ = (Index("ix_vm_label_key_value", "key", "value"),)

    vm_id: str = Field(foreign_key="vm.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(primary_key=True)
    value: str


class Volume(SQLModel, table=True):
    """A volume vmmgr created for a VM on a host: what delete and undo must remove."""

    __tablename__ = "volume"

    id: str = Field(default_factory=new_id, primary_key=True)
    vm_id: str = Field(foreign_key="vm.id", index=True)
    host: str = Field(index=True)
    pool: str
    name: str
    path: str
    kind: str = VolumeKind.OVERLAY.value
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


class Image(SQLModel, table=True):
    __tablename__ = "image"

    name: str = Field(primary_key=True)
    format: str = "qcow2"
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    virtual_size_bytes: int = Field(default=0, sa_type=BigInteger)
    sha256: str = ""
    source: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ImageReplica(SQLModel, table=True):
    """An image imported into one host's storage pool."""

    __tablename__ = "image_replica"

    image: str = Field(foreign_key="image.name", primary_key=True)
    host: str = Field(foreign_key="host.name", primary_key=True)
    pool: str = Field(primary_key=True)
    path: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --------------------------------------------------------------------------------------------
# operations, events
# --------------------------------------------------------------------------------------------


class Operation(SQLModel, table=True):
    __tablename__ = "operation"

    id: str = Field(default_factory=new_id, primary_key=True)
    kind: str  # "vm.create", "vm.delete", "vm.migrate", "host.evacuate", ...
    target: str = Field(index=True)
    state: str = Field(default=OperationState.PENDING.value, index=True)
    progress: float = 0.0  # 0..100
    message: str = ""
    error_code: str = ""
    error_message: str = ""
    error_field: str = ""
    result: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    cancel_requested: bool = False
    request_id: str = Field(default="", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Event(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = {"sqlite_autoincrement": True}  # never reuse a seq after pruning

    seq: int | None = Field(default=None, primary_key=True, sa_type=SeqInt)
    time: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    kind: str = Field(index=True)
    resource: str = Field(default="", index=True)
    severity: str = "info"  # info | warning | error
    message: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


class Device(SQLModel, table=True):
    """One PCI accelerator (or other passthrough candidate) on a host; id = "host/address"."""

    __tablename__ = "device"

    id: str = Field(primary_key=True)
    host: str = Field(foreign_key="host.name", index=True)
    address: str  # "0000:3b:00.0"
    kind: str = Field(default="other", index=True)  # vmmgr.snapshot.DeviceKind
    vendor_id: int = 0
    product_id: int = 0
    vendor_name: str = ""
    product_name: str = ""
    model: str = ""  # normalised, e.g. "H100-80GB"
    class_code: int = 0
    driver: str = ""
    numa_node: int | None = None
    iommu_group: int | None = None
    iommu_group_members: list[str] = Field(default_factory=list, sa_type=JSON)
    # {"is_pf": bool, "totalvfs": int, "pf": "0000:..." | None, "vfs": [addresses]}
    sriov: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # [{"name", "display_name", "available", "max_instances"}]
    mdev_types: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    health: str = "unknown"  # vmmgr.snapshot.DeviceHealth
    health_reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    nvml: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # null value = unknown
    # {"enabled", "total_slices", "profiles": [{name, slices, memory_mib, max_instances}],
    #  "instances": [profile names]}
    mig: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    present: bool = True  # False once a scan no longer finds it (kept for claims/history)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DeviceClaim(SQLModel, table=True):
    """A VM's hold on a device. Whole-device claims are exclusive, enforced by the database:
    ``exclusive_device_id`` is set (= device_id) only for kind "pci" and is UNIQUE (NULLs never
    collide on SQLite or Postgres)."""

    __tablename__ = "device_claim"

    id: str = Field(default_factory=new_id, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    vm_id: str = Field(foreign_key="vm.id", index=True)
    kind: str = ClaimKind.PCI.value
    exclusive_device_id: str | None = Field(default=None, unique=True)
    mdev_type: str = ""
    mdev_uuid: str = ""
    mig_profile: str = ""
    original_driver: str = ""  # host driver to rebind on undo/release
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DeviceSample(SQLModel, table=True):
    """Short telemetry series per device (pruned to the last N samples)."""

    __tablename__ = "device_sample"

    device_id: str = Field(foreign_key="device.id", primary_key=True, ondelete="CASCADE")
    time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    gpu_util: float | None = None  # percent
    mem_util: float | None = None  # percent
    memory_used_mib: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class HostSample(SQLModel, table=True):
    __tablename__ = "host_sample"

    host: str = Field(foreign_key="host.name", primary_key=True, ondelete="CASCADE")
    time: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    cpu_util: float | None = None  # 0..1
    memory_used_mib: float | None = None


# --------------------------------------------------------------------------------------------
# groups, policies, scale groups
# --------------------------------------------------------------------------------------------


class PlacementGroup(SQLModel, table=True):
    __tablename__ = "placement_group"

    name: str = Field(primary_key=True)
    policy: str = GroupPolicy.ANTI_AFFINITY.value
    hard: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class VMGroupMember(SQLModel, table=True):
    __tablename__ = "vm_group_member"

    vm_id: str = Field(foreign_key="vm.id", primary_key=True, ondelete="CASCADE")
    group_name: str = Field(foreign_key="placement_group.name", primary_key=True, index=True)


class PolicyConfig(SQLModel, table=True):
    __tablename__ = "policy_config"

    name: str = Field(primary_key=True)
    enabled: bool = False
    interval_s: float = 60.0
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    last_run: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_result: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class ScaleGroup(SQLModel, table=True):
    __tablename__ = "scale_group"

    name: str = Field(primary_key=True)
    template: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # a VM create spec
    min_size: int = 0
    max_size: int = 1
    desired: int = 0
    metric: str = "cpu_util"
    target: float = 0.7
    cooldown_s: float = 300.0
    last_scale_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --------------------------------------------------------------------------------------------
# tenancy, auth, audit, leases
# --------------------------------------------------------------------------------------------


class Project(SQLModel, table=True):
    __tablename__ = "project"

    name: str = Field(primary_key=True)
    quotas: dict[str, int] = Field(default_factory=dict, sa_type=JSON)  # e.g. {"vcpus": 64}
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Token(SQLModel, table=True):
    __tablename__ = "token"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    project: str = Field(default="default", index=True)
    role: str = Role.VIEWER.value
    hash: str = Field(unique=True)  # sha256 hex of the secret; the secret is never stored
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked: bool = False


class AuditRecord(SQLModel, table=True):
    """Append-only: the repo offers no update or delete."""

    __tablename__ = "audit_record"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: int | None = Field(default=None, primary_key=True, sa_type=SeqInt)
    time: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    principal: str = Field(index=True)
    project: str = Field(default="", index=True)
    method: str
    target: str = ""
    result_code: str = "OK"
    message: str = ""


class Lease(SQLModel, table=True):
    """A named, time-limited lease (leader-election fallback, HA fencing bookkeeping)."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime = Field(sa_type=UTCDateTime)
