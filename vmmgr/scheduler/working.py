"""Arrays and indexes built once per snapshot, and the mutable working copy a batch claims into.

``ClusterIndex`` is derived from one frozen snapshot and one config and never changes after it is
built (only lazily filled caches). ``WorkingState`` layers the claims of the current decision or
batch on top of it, copying an array or a host's device list the first time it writes to it, so
a single ``place`` copies nothing and the input snapshot is never touched.

NUMA columns: host h's cells map to columns 0..k-1 (sorted by cell id); a host without NUMA
information is one cell (column 0) whose free capacity is the host's; the last column collects
devices with an unknown NUMA node and never counts as a fit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    GroupSnap,
    HostSnap,
    HostState,
    PlacementRequest,
)

from . import devices as dv
from .config import SchedulerConfig, Strategy
from .results import DeviceClaim

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

AFFINITY = "affinity"
ANTI_AFFINITY = "anti-affinity"


@dataclass(frozen=True, slots=True)
class Need:
    """One device need of a request, resolved to capacity keys."""

    category: str  # devices.GPU | FPGA | FPGA_VF | VGPU | MIG
    label: str  # what the user asked for, for messages
    keys: frozenset[str]
    count: int


@dataclass(frozen=True, slots=True)
class Demand:
    """A request digested once: sizes, resolved device needs, groups."""

    request: PlacementRequest
    vcpus: int
    memory_mib: int
    disk_gib: int
    needs: tuple[Need, ...]
    hard_groups: tuple[GroupSnap, ...]
    soft_groups: tuple[GroupSnap, ...]
    weight: tuple[int, int, int]  # for largest-first ordering

    @property
    def accel(self) -> bool:
        return bool(self.needs)


class ClusterIndex:
    """Per-host arrays and device indexes of one snapshot under one config."""

    def __init__(self, snapshot: ClusterSnapshot, config: SchedulerConfig) -> None:
        self.snapshot = snapshot
        self.config = config
        hosts = snapshot.hosts
        self.hosts: tuple[HostSnap, ...] = hosts
        n = len(hosts)
        self.n = n
        self.names = [h.name for h in hosts]
        self.index: dict[str, int] = {}
        for i, h in enumerate(hosts):
            if h.name in self.index:
                raise InvalidArgument("snapshot.hosts", f"duplicate host name {h.name!r}")
            self.index[h.name] = i
        cfg = config
        cpus = np.array([h.cpus for h in hosts], dtype=np.float64)
        mem = np.array([h.memory_mib for h in hosts], dtype=np.float64)
        self.cap_cpu: FloatArray = np.maximum(cpus - cfg.reserved_host_cpus, 0) * cfg.cpu_ratio
        self.cap_mem: FloatArray = (
            np.maximum(mem - cfg.reserved_host_memory_mib, 0) * cfg.memory_ratio
        )
        self.cap_disk: FloatArray = (
            np.array([h.disk_gib for h in hosts], dtype=np.float64) * cfg.disk_ratio
        )
        self.disk_tracked: BoolArray = self.cap_disk > 0
        self.used_cpu: FloatArray = np.array([h.used_vcpus for h in hosts], dtype=np.float64)
        self.used_mem: FloatArray = np.array([h.used_memory_mib for h in hosts], dtype=np.float64)
        self.used_disk: FloatArray = np.array([h.used_disk_gib for h in hosts], dtype=np.float64)
        self.free_cpu: FloatArray = self.cap_cpu - self.used_cpu
        self.free_mem: FloatArray = self.cap_mem - self.used_mem
        self.free_disk: FloatArray = np.where(
            self.disk_tracked, self.cap_disk - self.used_disk, np.inf
        )
        self.inv_cap_cpu: FloatArray = 1.0 / np.maximum(self.cap_cpu, 1.0)
        self.inv_cap_mem: FloatArray = 1.0 / np.maximum(self.cap_mem, 1.0)
        self.free_share: FloatArray = (
            self.free_cpu * self.inv_cap_cpu + self.free_mem * self.inv_cap_mem
        )
        self.up: BoolArray = np.array([h.state == HostState.UP for h in hosts], dtype=np.bool_)
        self.up_idx: IntArray = np.flatnonzero(self.up).astype(np.int64)
        self.all_idx: IntArray = np.arange(n, dtype=np.int64)
        self.pool_sign: FloatArray = np.array(
            [1.0 if cfg.strategy(h.pool) == Strategy.SPREAD else -1.0 for h in hosts],
            dtype=np.float64,
        )
        signs = set(self.pool_sign.tolist())
        self.uniform_sign: float | None = signs.pop() if len(signs) == 1 else None
        self.load: FloatArray = np.array(
            [cfg.unknown_load if h.cpu_load is None else h.cpu_load for h in hosts],
            dtype=np.float64,
        )
        self._tags: dict[str, BoolArray] = {}

        # NUMA columns
        max_cells = max((len(h.numa_cells) for h in hosts), default=0)
        self.ncols = max(1, max_cells) + 1
        self.unknown_col = self.ncols - 1
        self.uma: BoolArray = np.array([not h.numa_cells for h in hosts], dtype=np.bool_)
        self.uma_idx: IntArray = np.flatnonzero(self.uma).astype(np.int64)
        self.real_cols = self.ncols - 1
        # (column, host): one contiguous row per column keeps per-column gathers cheap
        self.cell_cpu_free: FloatArray = np.full((self.ncols, n), -1.0)
        self.cell_mem_free: FloatArray = np.full((self.ncols, n), -1.0)
        self.col_cell_id: list[list[int]] = []  # per host: column -> NUMA cell id
        for i, h in enumerate(hosts):
            if not h.numa_cells:
                self.col_cell_id.append([])
                continue
            cells = sorted(h.numa_cells, key=lambda c: c.id)
            self.col_cell_id.append([c.id for c in cells])
            for col, c in enumerate(cells):
                self.cell_cpu_free[col, i] = c.cpus * cfg.cpu_ratio - c.used_cpus
                self.cell_mem_free[col, i] = c.memory_mib * cfg.memory_ratio - c.used_memory_mib
        self.cell_cpu_free[0, self.uma_idx] = self.free_cpu[self.uma_idx]
        self.cell_mem_free[0, self.uma_idx] = self.free_mem[self.uma_idx]

        # devices
        self.host_keys: dict[int, list[str]] = {}
        self.aliases: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._base_devices: dict[int, dv.HostDevices] = {}
        self.accel_free: FloatArray = np.zeros(n, dtype=np.float64)  # counts, float for weighing
        self.accel_util: FloatArray = np.zeros(n, dtype=np.float64)
        caps: dict[str, IntArray] = {}
        totals: dict[str, IntArray] = {}
        losses: dict[str, FloatArray] = {}
        for i, h in enumerate(hosts):
            if not h.devices:
                continue
            hd = self._build_devices(i, h)
            self._base_devices[i] = hd
            keys: set[str] = set()
            utils: list[float] = []
            for d in h.devices:
                keys.update(dv.static_keys(d))
                self._add_aliases(d)
                if d.kind in (DeviceKind.GPU, DeviceKind.FPGA):
                    utils.append(cfg.unknown_load if d.utilization is None else d.utilization)
            self.host_keys[i] = sorted(keys)
            self.accel_util[i] = sum(utils) / len(utils) if utils else 0.0
            self.accel_free[i] = hd.accel_free()
            rows, loss = hd.rows(self.ncols)
            for k in keys:
                if k not in caps:
                    caps[k] = np.zeros((self.ncols, n), dtype=np.int64)
                    totals[k] = np.zeros(n, dtype=np.int64)
                    losses[k] = np.full(n, np.inf)  # no capacity: no loss to speak of
            for k, row in rows.items():
                caps[k][:, i] = row
                totals[k][i] = sum(row)
            for k, lo in loss.items():
                losses[k][i] = lo
        self.caps = caps
        self.totals = totals
        self.losses = losses
        # the load weigher's raw values (higher = better), precomputed: telemetry is static here
        self.neg_load: FloatArray = -self.load
        self.neg_load_accel: FloatArray = -0.5 * (self.load + self.accel_util)

        # groups
        self.groups: dict[str, GroupSnap] = {}
        for g in snapshot.groups:
            if g.policy not in (AFFINITY, ANTI_AFFINITY):
                raise InvalidArgument(
                    "snapshot.groups",
                    f"group {g.name!r}: policy {g.policy!r} is not "
                    f"'{AFFINITY}' or '{ANTI_AFFINITY}'",
                )
            self.groups[g.name] = g
        self.vm_host: dict[str, int] = {}
        for vm in snapshot.vms:
            if vm.host is not None and vm.host in self.index:
                self.vm_host[vm.id] = self.index[vm.host]
        self._group_counts: dict[str, IntArray] = {}

    def _build_devices(self, i: int, h: HostSnap) -> dv.HostDevices:
        cfg = self.config
        col_of = {c.id: col for col, c in enumerate(sorted(h.numa_cells, key=lambda c: c.id))}
        states = []
        for d in h.devices:
            if not h.numa_cells:
                col = 0
            else:
                col = (
                    col_of.get(d.numa_node, self.unknown_col)
                    if d.numa_node is not None
                    else (self.unknown_col)
                )
            states.append(
                dv.DeviceState.from_snap(
                    d,
                    col,
                    allow_unknown=cfg.allow_unknown_device_health,
                    mixed_models=cfg.mixed_vgpu_models,
                )
            )
        return dv.HostDevices(states)

    def _add_aliases(self, d: dv.DeviceSnap) -> None:
        model = dv.model_key_name(d.model)
        ids = dv.pci_ids(d)
        if d.kind == DeviceKind.GPU:
            for alias in (model, ids):
                self.aliases[(dv.GPU, alias)].add(dv.key(dv.GPU, model))
            for t in d.mdev_types:
                for alias in (t.name.casefold(), t.display_name.casefold()):
                    self.aliases[(dv.VGPU, alias)].add(dv.key(dv.VGPU, t.name))
            if d.mig is not None:
                for p in d.mig.profiles:
                    self.aliases[(dv.MIG, p.name.casefold())].add(dv.key(dv.MIG, p.name))
        elif d.kind == DeviceKind.FPGA:
            for alias in (model, ids):
                self.aliases[(dv.FPGA, alias)].add(dv.key(dv.FPGA, model))
                self.aliases[(dv.FPGA_VF, alias)].add(dv.key(dv.FPGA_VF, model))

    def resolve(self, category: str, name: str) -> frozenset[str]:
        alias_cat = dv.FPGA if category == dv.FPGA_VF else category
        found = self.aliases.get((alias_cat, name.casefold()), set())
        if category == dv.FPGA_VF:
            return frozenset(k.replace(f"{dv.FPGA}:", f"{dv.FPGA_VF}:", 1) for k in found)
        return frozenset(found)

    def tag_mask(self, tag: str) -> BoolArray:
        arr = self._tags.get(tag)
        if arr is None:
            arr = np.array([tag in h.tags for h in self.hosts], dtype=np.bool_)
            self._tags[tag] = arr
        return arr

    def base_group_counts(self, group: str) -> IntArray:
        arr = self._group_counts.get(group)
        if arr is None:
            arr = np.zeros(self.n, dtype=np.int64)
            g = self.groups[group]
            for member in g.members:
                h = self.vm_host.get(member)
                if h is not None:
                    arr[h] += 1
            self._group_counts[group] = arr
        return arr

    def base_devices(self, i: int) -> dv.HostDevices | None:
        return self._base_devices.get(i)

    def demand(self, request: PlacementRequest, field_prefix: str = "") -> Demand:
        """Validate a request against this cluster and digest it; bad input names the field."""
        p = field_prefix
        if not request.vm_id:
            raise InvalidArgument(f"{p}vm_id", "must not be empty")
        if request.vcpus < 1:
            raise InvalidArgument(f"{p}vcpus", f"must be >= 1, got {request.vcpus}")
        if request.memory_mib < 1:
            raise InvalidArgument(f"{p}memory_mib", f"must be >= 1, got {request.memory_mib}")
        if request.disk_gib < 0:
            raise InvalidArgument(f"{p}disk_gib", f"must be >= 0, got {request.disk_gib}")
        if request.vgpu_type and request.mig_profile:
            raise InvalidArgument(
                f"{p}mig_profile", "a VM takes either a vGPU type or a MIG profile, not both"
            )
        needs: list[Need] = []
        gpu_counts: dict[str, int] = {}
        for n_, g in enumerate(request.gpus):
            if not g.model:
                raise InvalidArgument(f"{p}gpus[{n_}].model", "must not be empty")
            if g.count < 1:
                raise InvalidArgument(f"{p}gpus[{n_}].count", f"must be >= 1, got {g.count}")
            gpu_counts[g.model] = gpu_counts.get(g.model, 0) + g.count
        for model, count in gpu_counts.items():
            needs.append(Need(dv.GPU, model, self.resolve(dv.GPU, model), count))
        if request.fpga_count < 0:
            raise InvalidArgument(f"{p}fpga_count", f"must be >= 0, got {request.fpga_count}")
        if request.fpga_count > 0 and not request.fpga_model:
            raise InvalidArgument(f"{p}fpga_model", "required when fpga_count > 0")
        if request.fpga_model:
            cat = dv.FPGA_VF if request.fpga_allow_vf else dv.FPGA
            count = max(1, request.fpga_count)  # a model alone means one device
            needs.append(
                Need(cat, request.fpga_model, self.resolve(cat, request.fpga_model), count)
            )
        if request.vgpu_type:
            needs.append(
                Need(dv.VGPU, request.vgpu_type, self.resolve(dv.VGPU, request.vgpu_type), 1)
            )
        if request.mig_profile:
            needs.append(
                Need(dv.MIG, request.mig_profile, self.resolve(dv.MIG, request.mig_profile), 1)
            )
        hard: list[GroupSnap] = []
        soft: list[GroupSnap] = []
        for name in request.groups:
            group = self.groups.get(name)
            if group is None:
                raise InvalidArgument(f"{p}groups", f"unknown placement group {name!r}")
            (hard if group.hard else soft).append(group)
        n_dev = sum(n.count for n in needs)
        return Demand(
            request=request,
            vcpus=request.vcpus,
            memory_mib=request.memory_mib,
            disk_gib=request.disk_gib,
            needs=tuple(needs),
            hard_groups=tuple(hard),
            soft_groups=tuple(soft),
            weight=(n_dev, request.memory_mib, request.vcpus),
        )


class WorkingState:
    """Claims of the current decision or batch layered over a ClusterIndex (copy on write)."""

    def __init__(self, index: ClusterIndex) -> None:
        self.ix = index
        self.config = index.config
        self.n = index.n
        self.used_cpu = index.used_cpu
        self.used_mem = index.used_mem
        self.used_disk = index.used_disk
        self.free_cpu = index.free_cpu
        self.free_mem = index.free_mem
        self.free_disk = index.free_disk
        self.free_share = index.free_share
        self.cell_cpu_free = index.cell_cpu_free
        self.cell_mem_free = index.cell_mem_free
        self.accel_free = index.accel_free
        self.caps = dict(index.caps)
        self.totals = dict(index.totals)
        self.losses = dict(index.losses)
        self._group_counts: dict[str, IntArray] = {}
        self._devices: dict[int, dv.HostDevices] = {}
        self._owned: set[str] = set()
        self._owned_keys: set[str] = set()

    # -- reads --

    def group_counts(self, group: str) -> IntArray:
        arr = self._group_counts.get(group)
        return arr if arr is not None else self.ix.base_group_counts(group)

    def group_counts_excluding(self, group: str, vm_id: str) -> IntArray:
        """Member count per host, not counting the VM being placed (migration, recovery)."""
        counts = self.group_counts(group)
        own = self.ix.vm_host.get(vm_id)
        if own is not None and vm_id in self.ix.groups[group].members:
            counts = counts.copy()
            counts[own] -= 1
        return counts

    def devices(self, i: int) -> dv.HostDevices | None:
        hd = self._devices.get(i)
        return hd if hd is not None else self.ix.base_devices(i)

    def need_totals(self, need: Need) -> IntArray | None:
        """Units per host for a need (summed over its keys); None when no host has it."""
        arrs = [self.totals[k] for k in need.keys if k in self.totals]
        if not arrs:
            return None
        out = arrs[0]
        for a in arrs[1:]:
            out = out + a
        return out

    def need_cols(self, need: Need) -> IntArray | None:
        arrs = [self.caps[k] for k in need.keys if k in self.caps]
        if not arrs:
            return None
        out = arrs[0]
        for a in arrs[1:]:
            out = out + a
        return out

    def need_loss(self, need: Need) -> FloatArray | None:
        arrs = [self.losses[k] for k in need.keys if k in self.losses]
        if not arrs:
            return None
        out = arrs[0]
        for a in arrs[1:]:
            out = np.minimum(out, a)
        return out

    def cells_fit(self, cand: IntArray, demand: Demand) -> BoolArray:
        """Per candidate: some NUMA cell holds the VM's vCPUs, memory and every device need."""
        need_cols = []
        for need in demand.needs:
            cols = self.need_cols(need)
            if cols is None:
                return np.zeros(len(cand), dtype=np.bool_)
            need_cols.append((cols, need.count))
        out: BoolArray | None = None
        for c in range(self.ix.real_cols):
            ok: BoolArray = (self.cell_cpu_free[c][cand] >= demand.vcpus) & (
                self.cell_mem_free[c][cand] >= demand.memory_mib
            )
            for cols, count in need_cols:
                ok &= cols[c][cand] >= count
            out = ok if out is None else out | ok
        return out if out is not None else np.zeros(len(cand), dtype=np.bool_)

    # -- writes --

    def _own(self, name: str) -> None:
        if name not in self._owned:
            setattr(self, name, getattr(self, name).copy())
            self._owned.add(name)

    def _own_key(self, k: str) -> None:
        if k not in self._owned_keys:
            self.caps[k] = self.caps[k].copy()
            self.totals[k] = self.totals[k].copy()
            self.losses[k] = self.losses[k].copy()
            self._owned_keys.add(k)

    def _own_devices(self, i: int) -> dv.HostDevices:
        hd = self._devices.get(i)
        if hd is None:
            base = self.ix.base_devices(i)
            assert base is not None
            hd = self._devices[i] = base.copy()
        return hd

    def choose(
        self, h: int, demand: Demand, strict_cols: list[int] | None
    ) -> tuple[list[tuple[int, str, str | None]], int | None] | None:
        """Pick devices on host h (and the NUMA column for strict requests); None if impossible.

        Nothing is claimed here: the ranking shows these picks even for hosts not chosen.
        """
        if not demand.needs and not demand.request.numa_strict:
            return [], None
        if demand.request.numa_strict:
            cols = strict_cols if strict_cols is not None else self.fitting_cols(h, demand)
            for col in cols:
                picks = self._pick(h, demand, [col], [col])
                if picks is not None:
                    return picks, col
            return None
        picks = self._pick(h, demand, None, self.fitting_cols(h, demand, devices=False))
        return (picks, None) if picks is not None else None

    def fitting_cols(self, h: int, demand: Demand, *, devices: bool = True) -> list[int]:
        """NUMA columns of host h holding the VM (and its devices), tightest first."""
        cols = []
        for c in range(self.ix.real_cols):
            if self.cell_cpu_free[c, h] < demand.vcpus:
                continue
            if self.cell_mem_free[c, h] < demand.memory_mib:
                continue
            if devices:
                need_cols = [(self.need_cols(n), n.count) for n in demand.needs]
                if any(nc is None or nc[c, h] < count for nc, count in need_cols):
                    continue
            cols.append(c)
        return sorted(cols, key=lambda c: (self.cell_cpu_free[c, h], c))

    def _pick(
        self, h: int, demand: Demand, cols: list[int] | None, preferred: list[int]
    ) -> list[tuple[int, str, str | None]] | None:
        if not demand.needs:
            return []
        hd = self.devices(h)
        if hd is None:
            return None
        taken: set[int] = set()
        picks: list[tuple[int, str, str | None]] = []
        for need in demand.needs:
            if need.category in dv.WHOLE_CATEGORIES:
                chosen = hd.choose_whole(
                    need.keys, need.category, need.count, cols, preferred, taken
                )
                if chosen is None:
                    return None
                taken.update(chosen)
                picks.extend((i, need.category, None) for i in chosen)
            else:
                pick = hd.choose_shared(need.keys, cols, taken)
                if pick is None:
                    return None
                taken.add(pick[0])
                picks.append((pick[0], need.category, pick[1]))
        return picks

    def describe(self, h: int, picks: list[tuple[int, str, str | None]]) -> list[DeviceClaim]:
        hd = self.devices(h)
        if hd is None:
            return []
        return [
            DeviceClaim(
                device_id=hd.devices[i].snap.id,
                kind=dv.GPU if cat == dv.GPU else dv.FPGA if cat in (dv.FPGA, dv.FPGA_VF) else cat,
                model=hd.devices[i].snap.model,
                profile=prof,
                numa_node=hd.devices[i].snap.numa_node,
            )
            for i, cat, prof in picks
        ]

    def claim(
        self,
        h: int,
        demand: Demand,
        picks: list[tuple[int, str, str | None]],
        col: int | None,
    ) -> list[DeviceClaim]:
        """Charge the VM to host h: resources, devices, NUMA cell, group membership."""
        req = demand.request
        for name in (
            "used_cpu",
            "used_mem",
            "used_disk",
            "free_cpu",
            "free_mem",
            "free_disk",
            "free_share",
        ):
            self._own(name)
        self.used_cpu[h] += demand.vcpus
        self.used_mem[h] += demand.memory_mib
        self.used_disk[h] += demand.disk_gib
        self.free_cpu[h] -= demand.vcpus
        self.free_mem[h] -= demand.memory_mib
        self.free_disk[h] -= demand.disk_gib
        ix = self.ix
        self.free_share[h] = (
            self.free_cpu[h] * ix.inv_cap_cpu[h] + self.free_mem[h] * ix.inv_cap_mem[h]
        )
        if self.ix.uma[h] or col is not None:
            self._own("cell_cpu_free")
            self._own("cell_mem_free")
            c = 0 if self.ix.uma[h] else col
            assert c is not None
            self.cell_cpu_free[c, h] -= demand.vcpus
            self.cell_mem_free[c, h] -= demand.memory_mib
        claims: list[DeviceClaim] = []
        if picks:
            hd = self._own_devices(h)
            claims = hd.claim(picks, req.vm_id)
            self._refresh_devices(h, hd)
        for g in (*demand.hard_groups, *demand.soft_groups):
            arr = self._group_counts.get(g.name)
            if arr is None:
                arr = self._group_counts[g.name] = self.ix.base_group_counts(g.name).copy()
            arr[h] += 1
        return claims

    def _refresh_devices(self, h: int, hd: dv.HostDevices) -> None:
        rows, loss = hd.rows(self.ix.ncols)
        for k in self.ix.host_keys.get(h, ()):
            self._own_key(k)
            row = rows.get(k)
            if row is None:
                self.caps[k][:, h] = 0
                self.totals[k][h] = 0
            else:
                self.caps[k][:, h] = row
                self.totals[k][h] = sum(row)
            self.losses[k][h] = loss.get(k, np.inf)
        self._own("accel_free")
        self.accel_free[h] = hd.accel_free()


def largest_first(demands: Iterable[tuple[int, Demand]]) -> list[int]:
    """Batch order for packing: most devices, then memory, then vCPUs (stable)."""
    return [i for i, _ in sorted(demands, key=lambda p: tuple(-w for w in p[1].weight))]
