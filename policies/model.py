"""A mutable working copy of a ClusterSnapshot that planners move VMs around in.

Every planner (balance, power, recover) and ``policies.fits.apply_moves`` move VMs through
``ClusterModel.move``, and the one scorer (``policies.score``) reads ``ClusterModel.utilisation``,
so a plan's simulated result is exactly the snapshot replayed from it.

What a move changes on the two hosts:
- vCPU/memory reservations of running VMs (stopped VMs are re-homed without changing them);
- telemetry CPU load: the VM's demand (its own ``cpu_load`` or, unknown, its vCPU share of the
  host's load) leaves the source and lands on the destination;
- vGPU/MIG slots and the GPU utilisation share of such VMs (``policies.devices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from policies.devices import (
    accel_use,
    release_mig,
    release_vgpu,
    shared_gpu_load,
    shift_utilization,
    take_mig,
    take_vgpu,
)
from vmmgr.snapshot import ClusterSnapshot, DeviceSnap, HostSnap, HostState, VMSnap

METRICS: tuple[str, ...] = ("cpu", "memory", "gpu", "slots")


@dataclass(frozen=True, slots=True)
class Limits:
    """Built-in capacity rules every planner applies (the scheduler's filters may add more)."""

    cpu_ratio: float = 4.0  # vCPU overcommit
    memory_ratio: float = 1.0
    same_pool: bool = True  # moves stay inside the VM's current host pool


@dataclass(slots=True)
class HostAcc:
    snap: HostSnap
    used_vcpus: int
    used_memory_mib: int
    cpu_load: float | None
    devices: tuple[DeviceSnap, ...]
    vms: list[str] = field(default_factory=list)
    run_vcpus: int = 0  # vCPUs of running VMs here (for load attribution)
    shared_vms: int = 0  # running vGPU/MIG VMs here

    @property
    def name(self) -> str:
        return self.snap.name

    @property
    def up(self) -> bool:
        return self.snap.state == HostState.UP


def _shared(vm: VMSnap) -> bool:
    return bool(vm.vgpu_type or vm.mig_profile)


class ClusterModel:
    def __init__(self, snapshot: ClusterSnapshot, limits: Limits | None = None) -> None:
        self.snapshot = snapshot
        self.limits = limits or Limits()
        self.hosts: list[HostAcc] = [
            HostAcc(h, h.used_vcpus, h.used_memory_mib, h.cpu_load, h.devices)
            for h in snapshot.hosts
        ]
        self.index: dict[str, int] = {h.snap.name: i for i, h in enumerate(self.hosts)}
        self.vms: dict[str, VMSnap] = {}
        for vm in snapshot.vms:
            self.vms[vm.id] = vm
            i = self.index.get(vm.host) if vm.host is not None else None
            if i is None:
                continue
            acc = self.hosts[i]
            acc.vms.append(vm.id)
            if vm.running:
                acc.run_vcpus += vm.vcpus
                acc.shared_vms += 1 if _shared(vm) else 0
        self.anti: dict[str, list[frozenset[str]]] = {}
        self.affinity: dict[str, list[frozenset[str]]] = {}
        for g in snapshot.groups:
            if not g.hard:
                continue
            target = self.anti if g.policy == "anti-affinity" else self.affinity
            for m in g.members:
                target.setdefault(m, []).append(g.members)
        up = [h for h in self.hosts if h.up]
        # CPU is scored on telemetry only when every up host reports it; otherwise on vCPU ratio.
        self.cpu_telemetry = bool(up) and all(h.cpu_load is not None for h in up)

    # -- reading ----------------------------------------------------------------------------
    def host_of(self, vm_id: str) -> str | None:
        return self.vms[vm_id].host

    def utilisation(self, i: int) -> tuple[float, float, float | None, float | None]:
        """(cpu, memory, gpu, slots) utilisation of host ``i``; None = metric absent there."""
        h = self.hosts[i]
        cpus, mem = h.snap.cpus, h.snap.memory_mib
        if self.cpu_telemetry:
            cpu = h.cpu_load if h.cpu_load is not None else 0.0
        else:
            cpu = h.used_vcpus / cpus if cpus > 0 else 0.0
        memory = h.used_memory_mib / mem if mem > 0 else 0.0
        acc = accel_use(h.devices)
        slots = acc.slot_used / acc.slot_cap if acc.slot_cap > 0 else None
        return cpu, memory, acc.gpu_util, slots

    def cpu_demand(self, vm: VMSnap) -> float:
        """Estimated CPU demand of a VM in host-CPU units (telemetry, else its vCPUs)."""
        if vm.cpu_load is not None:
            return vm.cpu_load * vm.vcpus
        i = self.index.get(vm.host) if vm.host is not None else None
        if i is not None:
            h = self.hosts[i]
            if h.cpu_load is not None and h.run_vcpus > 0:
                return h.cpu_load * h.snap.cpus * vm.vcpus / h.run_vcpus
        return float(vm.vcpus)

    def busy(self, vm: VMSnap) -> float:
        """0..1 estimate of how busy a VM is (drives its dirty-page-rate estimate)."""
        if vm.vcpus <= 0:
            return 0.0
        return min(1.0, max(0.0, self.cpu_demand(vm) / vm.vcpus))

    def gpu_share(self, vm: VMSnap) -> float:
        if not vm.running or not _shared(vm) or vm.host is None or vm.host not in self.index:
            return 0.0
        h = self.hosts[self.index[vm.host]]
        return shared_gpu_load(h.devices) / h.shared_vms if h.shared_vms else 0.0

    # -- filters ----------------------------------------------------------------------------
    def blocked(self, vm: VMSnap, dst: str) -> bool:
        """Hard (anti-)affinity: another member of an anti-affinity group already on ``dst``, or
        a hard affinity group whose placed members live elsewhere."""
        for members in self.anti.get(vm.id, ()):
            for m in members:
                if m != vm.id and m in self.vms and self.vms[m].host == dst:
                    return True
        for members in self.affinity.get(vm.id, ()):
            for m in members:
                if m != vm.id and m in self.vms:
                    host = self.vms[m].host
                    if host is not None and host != dst:
                        return True
        return False

    def capacity_ok(self, vm: VMSnap, dst: int) -> bool:
        """State, pool, CPU/memory and accelerator-slot capacity of host ``dst`` for ``vm``."""
        h = self.hosts[dst]
        lim = self.limits
        if not h.up or vm.devices or vm.host == h.name:
            return False
        src = self.index.get(vm.host) if vm.host is not None else None
        if lim.same_pool and src is not None and self.hosts[src].snap.pool != h.snap.pool:
            return False
        if h.used_vcpus + vm.vcpus > h.snap.cpus * lim.cpu_ratio:
            return False
        if h.used_memory_mib + vm.memory_mib > h.snap.memory_mib * lim.memory_ratio:
            return False
        if vm.vgpu_type and take_vgpu(h.devices, vm.vgpu_type) is None:
            return False
        return not (vm.mig_profile and take_mig(h.devices, vm.mig_profile) is None)

    def fits(self, vm: VMSnap, dst: str) -> bool:
        i = self.index.get(dst)
        return i is not None and self.capacity_ok(vm, i) and not self.blocked(vm, dst)

    # -- changing ---------------------------------------------------------------------------
    def move(self, vm_id: str, dst: str) -> None:
        """Re-home one VM (no checks: callers ask ``fits`` first)."""
        vm = self.vms[vm_id]
        d = self.hosts[self.index[dst]]
        demand = self.cpu_demand(vm)
        share = self.gpu_share(vm)
        if vm.host is not None and vm.host in self.index:
            s = self.hosts[self.index[vm.host]]
            s.vms.remove(vm_id)
            if vm.running:
                s.used_vcpus -= vm.vcpus
                s.used_memory_mib -= vm.memory_mib
                s.run_vcpus -= vm.vcpus
                if s.cpu_load is not None and s.snap.cpus > 0:
                    s.cpu_load = max(0.0, s.cpu_load - demand / s.snap.cpus)
                if _shared(vm):
                    s.shared_vms -= 1
            s.devices = self._release(s.devices, vm, share)
        d.vms.append(vm_id)
        if vm.running:
            d.used_vcpus += vm.vcpus
            d.used_memory_mib += vm.memory_mib
            d.run_vcpus += vm.vcpus
            if d.cpu_load is not None and d.snap.cpus > 0:
                d.cpu_load = d.cpu_load + demand / d.snap.cpus
            if _shared(vm):
                d.shared_vms += 1
        d.devices = self._take(d.devices, vm, share)
        self.vms[vm_id] = replace(vm, host=dst)

    @staticmethod
    def _release(devs: tuple[DeviceSnap, ...], vm: VMSnap, share: float) -> tuple[DeviceSnap, ...]:
        i: int | None = None
        if vm.vgpu_type:
            devs, i = release_vgpu(devs, vm.vgpu_type)
        elif vm.mig_profile:
            devs, i = release_mig(devs, vm.mig_profile)
        return shift_utilization(devs, i, -share)

    @staticmethod
    def _take(devs: tuple[DeviceSnap, ...], vm: VMSnap, share: float) -> tuple[DeviceSnap, ...]:
        got: tuple[tuple[DeviceSnap, ...], int] | None = None
        if vm.vgpu_type:
            got = take_vgpu(devs, vm.vgpu_type)
        elif vm.mig_profile:
            got = take_mig(devs, vm.mig_profile)
        if got is None:
            return devs
        return shift_utilization(got[0], got[1], share)

    def to_snapshot(self) -> ClusterSnapshot:
        hosts = tuple(
            replace(
                h.snap,
                used_vcpus=h.used_vcpus,
                used_memory_mib=h.used_memory_mib,
                cpu_load=h.cpu_load,
                devices=h.devices,
                vms=tuple(h.vms),
            )
            for h in self.hosts
        )
        vms = tuple(self.vms[v.id] for v in self.snapshot.vms)
        return ClusterSnapshot(hosts=hosts, vms=vms, groups=self.snapshot.groups)
