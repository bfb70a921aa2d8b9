"""Can this VM move, and how: live, cold, or not at all (pure).

Rules (the worst verdict wins; every reason that decided it is reported):

- a device tied to the host (host block device, USB/serial passthrough, an operator pin):
  blocked; nothing can take it along.
- whole PCI passthrough (GPU/FPGA via VFIO): no live migration (no device state transfer);
  cold is fine, the target re-binds a matching device.
- vGPU (mdev, MIG-backed included): live only if the operator allowed it
  (``allow_vgpu_live_migration``), both hosts' vGPU managers support migration, they are the same
  branch with the target not older than the source, and both QEMUs are new enough for VFIO
  migration; otherwise cold.
- a CD-ROM backed by a file only the source has: live refused (the target cannot open it); cold
  migration copies the volume.
- a VM that is not running moves cold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from vmmgr.errors import FailedPrecondition

Mode = Literal["live", "cold", "blocked"]
_RANK: dict[Mode, int] = {"live": 2, "cold": 1, "blocked": 0}


@dataclass(frozen=True, slots=True)
class VMMigrationProfile:
    """The facts about one VM that decide its migratability."""

    vm_id: str
    running: bool = True
    pci_hostdevs: tuple[str, ...] = ()  # whole-device passthrough, PCI addresses
    vgpu_type: str | None = None  # mdev type (e.g. "nvidia-471"), MIG-backed vGPU too
    local_cdroms: tuple[str, ...] = ()  # ISO paths present only on the source host
    host_pinned: tuple[str, ...] = ()  # e.g. "disk /dev/nvme0n1", "usb 046d:c52b", "pinned"


@dataclass(frozen=True, slots=True)
class HostMigrationInfo:
    name: str
    qemu_version: tuple[int, int, int] = (0, 0, 0)
    vgpu_driver_version: str | None = None  # NVIDIA vGPU manager, e.g. "550.54.16"
    vgpu_migration_supported: bool = False  # the vGPU manager reports migration support


@dataclass(frozen=True, slots=True)
class MigrationPolicy:
    allow_vgpu_live_migration: bool = False
    min_qemu_for_vfio_migration: tuple[int, int, int] = (8, 1, 0)


@dataclass(frozen=True, slots=True)
class Migratability:
    mode: Mode
    reason: str = ""

    def allows(self, mode: Mode) -> bool:
        """True if migrating in ``mode`` is possible (live implies cold is possible too)."""
        return mode != "blocked" and _RANK[self.mode] >= _RANK[mode]

    def require(self, mode: Mode, vm_id: str = "") -> None:
        """Raise FailedPrecondition(reason) unless ``mode`` is allowed."""
        if not self.allows(mode):
            who = f"VM {vm_id}: " if vm_id else ""
            raise FailedPrecondition(
                f"{who}{mode} migration not possible ({self.mode}): {self.reason}",
                details={"migratability": self.mode, "reason": self.reason},
            )


def _version(v: str) -> tuple[int, ...]:
    parts: list[int] = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _vgpu_live_refusal(
    vm: VMMigrationProfile,
    source: HostMigrationInfo,
    dest: HostMigrationInfo | None,
    policy: MigrationPolicy,
) -> str | None:
    """Why this vGPU VM cannot live-migrate (to ``dest``), or None if it can."""
    if not policy.allow_vgpu_live_migration:
        return f"vGPU {vm.vgpu_type}: live migration not allowed by the operator"
    hosts = [source] if dest is None else [source, dest]
    for h in hosts:
        if not h.vgpu_driver_version:
            return f"vGPU {vm.vgpu_type}: host {h.name} has no vGPU manager"
        if not h.vgpu_migration_supported:
            return (
                f"vGPU {vm.vgpu_type}: vGPU manager {h.vgpu_driver_version} on {h.name} "
                "does not support migration"
            )
        if h.qemu_version < policy.min_qemu_for_vfio_migration:
            need = ".".join(map(str, policy.min_qemu_for_vfio_migration))
            have = ".".join(map(str, h.qemu_version))
            return f"vGPU {vm.vgpu_type}: QEMU {have} on {h.name} < {need} (VFIO migration)"
    if dest is not None:
        assert source.vgpu_driver_version and dest.vgpu_driver_version
        src_v, dst_v = _version(source.vgpu_driver_version), _version(dest.vgpu_driver_version)
        if src_v[:1] != dst_v[:1]:
            return (
                f"vGPU {vm.vgpu_type}: vGPU manager branches differ "
                f"({source.vgpu_driver_version} on {source.name}, "
                f"{dest.vgpu_driver_version} on {dest.name})"
            )
        if dst_v < src_v:
            return (
                f"vGPU {vm.vgpu_type}: target {dest.name} runs an older vGPU manager "
                f"({dest.vgpu_driver_version} < {source.vgpu_driver_version})"
            )
    return None


def migratability(
    vm: VMMigrationProfile,
    source: HostMigrationInfo,
    dest: HostMigrationInfo | None = None,
    policy: MigrationPolicy | None = None,
) -> Migratability:
    """The verdict for moving ``vm`` off ``source`` (to ``dest`` if known)."""
    policy = policy or MigrationPolicy()
    findings: list[tuple[Mode, str]] = []
    if vm.host_pinned:
        findings.append(("blocked", f"tied to host {source.name}: {', '.join(vm.host_pinned)}"))
    if vm.pci_hostdevs:
        findings.append(
            ("cold", f"whole PCI passthrough ({', '.join(vm.pci_hostdevs)}) cannot live-migrate")
        )
    if vm.vgpu_type:
        why = _vgpu_live_refusal(vm, source, dest, policy)
        if why:
            findings.append(("cold", why))
    if vm.local_cdroms:
        findings.append(
            ("cold", f"local CD-ROM ({', '.join(vm.local_cdroms)}) is not on the target")
        )
    if not vm.running:
        findings.append(("cold", "not running"))
    if not findings:
        if vm.vgpu_type and dest is None:
            return Migratability("live", "vGPU: target must run a compatible vGPU manager")
        return Migratability("live", "")
    worst = min(findings, key=lambda f: _RANK[f[0]])[0]
    return Migratability(worst, "; ".join(r for m, r in findings if m == worst))


class MigratabilityMatrix:
    """Verdicts for many VMs and targets, from profiles + host facts + operator policy."""

    def __init__(
        self,
        profiles: Iterable[VMMigrationProfile],
        hosts: Iterable[HostMigrationInfo],
        vm_hosts: Mapping[str, str],
        policy: MigrationPolicy | None = None,
    ) -> None:
        """``vm_hosts`` maps vm id -> the host it is on now."""
        self.profiles = {p.vm_id: p for p in profiles}
        self.hosts = {h.name: h for h in hosts}
        self.vm_hosts = dict(vm_hosts)
        self.policy = policy or MigrationPolicy()

    def get(self, vm_id: str, dest: str | None = None) -> Migratability:
        """Verdict for ``vm_id`` (to ``dest`` if given). Unknown VMs/hosts are blocked."""
        prof = self.profiles.get(vm_id)
        src = self.hosts.get(self.vm_hosts.get(vm_id, ""))
        if prof is None or src is None:
            return Migratability("blocked", f"no migration facts for VM {vm_id}")
        dst = None
        if dest is not None:
            dst = self.hosts.get(dest)
            if dst is None:
                return Migratability("blocked", f"no migration facts for host {dest}")
        return migratability(prof, src, dst, self.policy)
