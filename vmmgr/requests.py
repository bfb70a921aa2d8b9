"""Validated, proto-independent requests that services accept.

The api layer builds these from protos (vmmgr/api/convert.py) and validation lives in
``validate_*`` functions here, so every entry point (gRPC, scaling groups, recovery) checks the
same rules and names the same fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import GpuRequest

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NET_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9_.:+ -]{1,64}$")

MAX_VCPUS = 512
MAX_MEMORY_MIB = 16 * 1024 * 1024
MAX_DISK_GIB = 64 * 1024
MAX_TEXT = 4096
MAX_USER_DATA = 64 * 1024
BUSES = ("virtio", "sata", "scsi")
DOMAIN_TYPES = ("", "kvm", "qemu")
WATCHDOG_ACTIONS = ("", "reset", "poweroff", "shutdown", "pause", "none")


@dataclass(frozen=True, slots=True)
class DiskRequest:
    image: str
    size_gib: int = 0
    bus: str = "virtio"


@dataclass(frozen=True, slots=True)
class NicRequest:
    network: str = ""
    mac: str = ""


@dataclass(frozen=True, slots=True)
class CloudInitRequest:
    user_data: str = ""
    network_config: str = ""
    ssh_authorized_keys: tuple[str, ...] = ()
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class FpgaRequest:
    model: str
    count: int = 1
    profile: str = ""
    allow_vf: bool = False


@dataclass(frozen=True, slots=True)
class VmCreate:
    name: str
    vcpus: int
    memory_mib: int
    description: str = ""
    disks: tuple[DiskRequest, ...] = ()
    nics: tuple[NicRequest, ...] = ()
    cloud_init: CloudInitRequest | None = None
    gpus: tuple[GpuRequest, ...] = ()
    vgpu_type: str = ""
    mig_profile: str = ""
    fpgas: tuple[FpgaRequest, ...] = ()
    groups: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    ha: bool = False
    ha_priority: int = 0
    host: str = ""
    required_host_tags: tuple[str, ...] = ()
    start: bool = True
    project: str = "default"
    domain_type: str = ""
    watchdog: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain dicts and lists (``dataclasses.asdict`` deep-copies every leaf, at several
        times the cost; every create stores this)."""
        return cast(dict[str, Any], _plain(self))

    @staticmethod
    def from_json(data: dict[str, Any]) -> VmCreate:
        d = dict(data)
        d["disks"] = tuple(DiskRequest(**x) for x in d.get("disks", ()))
        d["nics"] = tuple(NicRequest(**x) for x in d.get("nics", ()))
        ci = d.get("cloud_init")
        if ci:
            ci = dict(ci)
            ci["ssh_authorized_keys"] = tuple(ci.get("ssh_authorized_keys", ()))
        d["cloud_init"] = CloudInitRequest(**ci) if ci else None
        d["gpus"] = tuple(GpuRequest(**x) for x in d.get("gpus", ()))
        d["fpgas"] = tuple(FpgaRequest(**x) for x in d.get("fpgas", ()))
        for key in ("groups", "required_host_tags"):
            d[key] = tuple(d.get(key, ()))
        return VmCreate(**d)


def check_name(field_name: str, value: str, *, regex: re.Pattern[str] = NAME_RE) -> None:
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not regex.match(value):
        raise InvalidArgument(
            field_name,
            f"{value[:80]!r} is not a valid name (lower-case letters, digits and '-', "
            "1-63 characters, starting and ending with a letter or digit)",
        )


def check_text(field_name: str, value: str, limit: int = MAX_TEXT) -> None:
    if len(value) > limit:
        raise InvalidArgument(field_name, f"is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidArgument(field_name, "must not contain NUL characters")


def check_range(field_name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise InvalidArgument(field_name, f"must be between {lo} and {hi}, got {value}")


def validate_vm_create(req: VmCreate, prefix: str = "spec") -> None:
    """Check every field of a create request; raise InvalidArgument naming the first bad one."""
    check_name(f"{prefix}.name", req.name)
    check_text(f"{prefix}.description", req.description)
    check_range(f"{prefix}.vcpus", req.vcpus, 1, MAX_VCPUS)
    check_range(f"{prefix}.memory_mib", req.memory_mib, 16, MAX_MEMORY_MIB)
    if not req.disks:
        raise InvalidArgument(f"{prefix}.disks", "at least one disk (an image) is required")
    if len(req.disks) > 16:
        raise InvalidArgument(f"{prefix}.disks", "at most 16 disks")
    for i, disk in enumerate(req.disks):
        check_name(f"{prefix}.disks[{i}].image", disk.image)
        check_range(f"{prefix}.disks[{i}].size_gib", disk.size_gib, 0, MAX_DISK_GIB)
        if disk.bus not in BUSES:
            raise InvalidArgument(f"{prefix}.disks[{i}].bus", f"must be one of {', '.join(BUSES)}")
    if len(req.nics) > 8:
        raise InvalidArgument(f"{prefix}.networks", "at most 8 networks")
    for i, nic in enumerate(req.nics):
        if nic.network and not NET_RE.match(nic.network):
            raise InvalidArgument(f"{prefix}.networks[{i}].network", "is not a valid network name")
        if nic.mac and not MAC_RE.match(nic.mac):
            raise InvalidArgument(
                f"{prefix}.networks[{i}].mac", "must look like 52:54:00:12:34:56 (lower case)"
            )
    if req.cloud_init is not None:
        ci = req.cloud_init
        check_text(f"{prefix}.cloud_init.user_data", ci.user_data, MAX_USER_DATA)
        check_text(f"{prefix}.cloud_init.network_config", ci.network_config, MAX_USER_DATA)
        for i, key in enumerate(ci.ssh_authorized_keys):
            check_text(f"{prefix}.cloud_init.ssh_authorized_keys[{i}]", key)
            if "\n" in key:
                raise InvalidArgument(
                    f"{prefix}.cloud_init.ssh_authorized_keys[{i}]", "must be a single line"
                )
        if ci.user_data and ci.ssh_authorized_keys:
            raise InvalidArgument(
                f"{prefix}.cloud_init.ssh_authorized_keys",
                "put keys inside user_data when you supply your own user_data",
            )
        if ci.hostname:
            check_name(f"{prefix}.cloud_init.hostname", ci.hostname)
    for i, gpu in enumerate(req.gpus):
        if not MODEL_RE.match(gpu.model):
            raise InvalidArgument(f"{prefix}.gpus[{i}].model", "is not a valid model name")
        check_range(f"{prefix}.gpus[{i}].count", gpu.count, 1, 16)
    if req.vgpu_type and not MODEL_RE.match(req.vgpu_type):
        raise InvalidArgument(f"{prefix}.vgpu_type", "is not a valid vGPU type")
    if req.mig_profile and not MODEL_RE.match(req.mig_profile):
        raise InvalidArgument(f"{prefix}.mig_profile", "is not a valid MIG profile")
    if sum(bool(x) for x in (req.gpus, req.vgpu_type, req.mig_profile)) > 1:
        raise InvalidArgument(
            f"{prefix}.gpus", "choose one of whole GPUs, a vGPU type or a MIG profile"
        )
    for i, fpga in enumerate(req.fpgas):
        if not MODEL_RE.match(fpga.model):
            raise InvalidArgument(f"{prefix}.fpgas[{i}].model", "is not a valid model name")
        check_range(f"{prefix}.fpgas[{i}].count", fpga.count, 1, 16)
        if fpga.profile:
            check_name(f"{prefix}.fpgas[{i}].profile", fpga.profile)
    for i, group in enumerate(req.groups):
        check_name(f"{prefix}.groups[{i}]", group)
    if len(req.labels) > 64:
        raise InvalidArgument(f"{prefix}.labels", "at most 64 labels")
    for key, value in req.labels.items():
        if not LABEL_KEY_RE.match(key):
            raise InvalidArgument(f"{prefix}.labels", f"invalid label key {key[:80]!r}")
        check_text(f"{prefix}.labels[{key}]", value, 256)
    if req.host:
        check_name(f"{prefix}.host", req.host, regex=HOST_NAME_RE)
    for i, tag in enumerate(req.required_host_tags):
        if not LABEL_KEY_RE.match(tag):
            raise InvalidArgument(f"{prefix}.required_host_tags[{i}]", "is not a valid tag")
    check_name(f"{prefix}.project", req.project)
    if req.domain_type not in DOMAIN_TYPES:
        raise InvalidArgument(f"{prefix}.domain_type", "must be 'kvm', 'qemu' or empty")
    if req.watchdog not in WATCHDOG_ACTIONS:
        raise InvalidArgument(
            f"{prefix}.watchdog",
            f"must be one of {', '.join(a or repr('') for a in WATCHDOG_ACTIONS)}",
        )
    check_range(f"{prefix}.ha_priority", req.ha_priority, -1000, 1000)


def _plain(value: Any) -> Any:
    """A request dataclass as JSON-ready values: dataclasses to dicts, tuples to lists."""
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return {name: _plain(getattr(value, name)) for name in fields}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
