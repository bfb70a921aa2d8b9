"""Device accounting on one host: what is free for passthrough, vGPU and MIG, and what to pick.

Rules (the same ones the filters count with, so a host that passes always yields devices):

* A device is placeable when its health is not TAINTED (and not UNKNOWN when the config says so).
* Whole passthrough (GPU, FPGA) takes a device that nobody uses (no whole claim, no vGPU, no MIG
  instance) and whose IOMMU group has no other device in use: VFIO hands out whole groups. An
  SR-IOV PF whose VFs exist (``DeviceSnap.pf``) is never passed through whole (that would tear
  its VFs down), and a PF in use blocks its VFs. VFs are never whole GPUs; they stand in for
  FPGAs only when the request allows.
* vGPU: a GPU whose IOMMU group has no whole-claimed device; with ``active_mdev_type`` set it only
  takes that type; with no type and no claims it takes any offered type with ``available > 0``.
  SR-IOV vGPU parents (VFs of one PF) are one physical GPU: a type active on a sibling VF wins.
  Models listed in ``SchedulerConfig.mixed_vgpu_models`` mix types on one GPU; there each claim
  also lowers the other types' availability by its framebuffer share (1 / max_instances).
* MIG: a GPU with MIG enabled, no whole claim and no vGPU, with free compute slices >= the
  profile's slices and fewer than ``max_instances`` instances of that profile.

"Largest placeable unit" of a host (the fragmentation measure): the number of completely free
GPUs plus the largest share of one partly used GPU that the biggest still-fitting MIG profile or
vGPU type represents. Placing a vGPU or MIG instance costs the host the drop of that measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmmgr.snapshot import DeviceHealth, DeviceKind, DeviceSnap, MigProfileSnap

from .results import DeviceClaim

GPU = "gpu"
FPGA = "fpga"
FPGA_VF = "fpga_vf"  # FPGA keys that also count SR-IOV virtual functions
VGPU = "vgpu"
MIG = "mig"
WHOLE_CATEGORIES = (GPU, FPGA, FPGA_VF)


def key(category: str, name: str) -> str:
    return f"{category}:{name}"


def model_key_name(model: str) -> str:
    return model.casefold()


def pci_ids(dev: DeviceSnap) -> str:
    return f"{dev.vendor_id:04x}:{dev.product_id:04x}"


def static_keys(dev: DeviceSnap) -> list[str]:
    """Every capacity key this device can ever contribute to (its aliases are resolved apart)."""
    keys: list[str] = []
    model = model_key_name(dev.model)
    if dev.kind == DeviceKind.GPU:
        if not dev.is_vf:
            keys.append(key(GPU, model))
        keys.extend(key(VGPU, t.name) for t in dev.mdev_types)
        if dev.mig is not None and dev.mig.enabled:
            keys.extend(key(MIG, p.name) for p in dev.mig.profiles)
    elif dev.kind == DeviceKind.FPGA:
        if not dev.is_vf:
            keys.append(key(FPGA, model))
        keys.append(key(FPGA_VF, model))
    return keys


@dataclass(slots=True)
class DeviceState:
    """Mutable working copy of one device (batch claims change it; the snapshot never does)."""

    snap: DeviceSnap
    col: int  # NUMA column on its host
    placeable: bool  # health allows placement
    mixed: bool  # this model mixes vGPU types on one GPU
    claimed_by: str | None
    mdev_claims: int
    active_type: str | None
    available: dict[str, int]
    mig_instances: list[str]
    type_max: dict[str, int] = field(default_factory=dict)
    mig_slices: dict[str, int] = field(default_factory=dict)  # profile -> slices (static)
    mig_used: int = 0  # compute slices taken by mig_instances

    @classmethod
    def from_snap(
        cls, dev: DeviceSnap, col: int, *, allow_unknown: bool, mixed_models: frozenset[str]
    ) -> DeviceState:
        placeable = dev.health == DeviceHealth.HEALTHY or (
            allow_unknown and dev.health == DeviceHealth.UNKNOWN
        )
        slices = {p.name: p.slices for p in dev.mig.profiles} if dev.mig is not None else {}
        instances = list(dev.mig.instances) if dev.mig is not None else []
        return cls(
            snap=dev,
            col=col,
            placeable=placeable,
            mixed=dev.model.casefold() in mixed_models,
            claimed_by=dev.claimed_by,
            mdev_claims=dev.mdev_claims,
            active_type=dev.active_mdev_type,
            available={t.name: t.available for t in dev.mdev_types},
            mig_instances=instances,
            type_max={t.name: max(1, t.max_instances) for t in dev.mdev_types},
            mig_slices=slices,
            mig_used=sum(slices.get(n, 0) for n in instances),
        )

    def copy(self) -> DeviceState:
        return DeviceState(
            snap=self.snap,
            col=self.col,
            placeable=self.placeable,
            mixed=self.mixed,
            claimed_by=self.claimed_by,
            mdev_claims=self.mdev_claims,
            active_type=self.active_type,
            available=dict(self.available),
            mig_instances=list(self.mig_instances),
            type_max=self.type_max,
            mig_slices=self.mig_slices,
            mig_used=self.mig_used,
        )

    @property
    def busy(self) -> bool:
        return self.claimed_by is not None or self.mdev_claims > 0 or bool(self.mig_instances)

    # -- per-use capacity of this device alone (group rules are applied by HostDevices) --

    def vgpu_units(self, type_name: str) -> int:
        if not self.placeable or self.snap.kind != DeviceKind.GPU or self.claimed_by is not None:
            return 0
        if self.mig_instances or type_name not in self.available:
            return 0
        if not self.mixed:
            if self.active_type is not None and self.active_type != type_name:
                return 0
            if self.active_type is None and self.mdev_claims > 0:
                return 0  # claims of an unknown type: take nothing rather than guess
        return max(0, self.available[type_name])

    def mig_profile(self, name: str) -> MigProfileSnap | None:
        mig = self.snap.mig
        if mig is None:
            return None
        for p in mig.profiles:
            if p.name == name:
                return p
        return None

    def mig_fits(self, profile: MigProfileSnap, extra: MigProfileSnap | None = None) -> bool:
        """Whether one more ``profile`` instance fits (after also placing ``extra``)."""
        mig = self.snap.mig
        if mig is None or not mig.enabled or not self.placeable:
            return False
        if self.claimed_by is not None or self.mdev_claims > 0:
            return False
        used = self.mig_used + (extra.slices if extra is not None else 0)
        if mig.total_slices - used < profile.slices:
            return False
        count = self.mig_instances.count(profile.name)
        if extra is not None and extra.name == profile.name:
            count += 1
        return count < profile.max_instances

    def add_mig(self, profile: MigProfileSnap) -> None:
        self.mig_instances.append(profile.name)
        self.mig_used += profile.slices

    def mig_share(self, extra: MigProfileSnap | None = None) -> float:
        """Largest MIG profile share still fitting (after placing ``extra``)."""
        mig = self.snap.mig
        if mig is None:
            return 0.0
        total = max(1, mig.total_slices)
        return max((p.slices / total for p in mig.profiles if self.mig_fits(p, extra)), default=0.0)

    def partial_share(self) -> float:
        """Largest share of this (busy) GPU still placeable: biggest fitting MIG profile or vGPU."""
        if self.mig_instances:
            return self.mig_share()
        if self.mdev_claims > 0:
            return max(
                (1.0 / self.type_max[t] for t in self.available if self.vgpu_units(t) > 0),
                default=0.0,
            )
        return 0.0

    # -- claims --

    def claim_vgpu(self, type_name: str) -> None:
        self.mdev_claims += 1
        share = 1.0 / self.type_max[type_name]
        if self.mixed:
            for other in self.available:
                if other != type_name:
                    cut = self.available[other] - share * self.type_max[other]
                    self.available[other] = max(0, min(self.available[other], int(cut + 1e-9)))
        else:
            self.active_type = type_name
        self.available[type_name] = max(0, self.available[type_name] - 1)


@dataclass(frozen=True, slots=True)
class _Contrib:
    """What one device offers right now (cached until it or an IOMMU mate is claimed)."""

    share: float  # 1.0 = completely free GPU, else the largest share still placeable
    units: tuple[tuple[str, int], ...]  # (capacity key, units)
    # (key, share of this GPU after one more instance, tie-break, exact type/profile name)
    shared: tuple[tuple[str, float, int, str], ...]


class HostDevices:
    """The devices of one host, with IOMMU-group bookkeeping; copied before a batch mutates it."""

    __slots__ = ("devices", "mates", "siblings", "has_vfs", "_contrib")

    def __init__(self, devices: list[DeviceState]) -> None:
        self.devices = devices
        groups: dict[int, list[int]] = {}
        by_id = {d.snap.id: i for i, d in enumerate(devices)}
        vfs: dict[int, list[int]] = {}
        for i, d in enumerate(devices):
            if d.snap.iommu_group is not None:
                groups.setdefault(d.snap.iommu_group, []).append(i)
            if d.snap.pf is not None and d.snap.pf in by_id:
                vfs.setdefault(by_id[d.snap.pf], []).append(i)
        # mates: devices whose use blocks this one's passthrough and vice versa: the same IOMMU
        # group (VFIO hands out whole groups), and an SR-IOV PF with its own VFs
        mates: list[tuple[int, ...]] = []
        # siblings: VFs of one PF (and the PF) share one vGPU type: one physical GPU
        siblings: list[tuple[int, ...]] = []
        for i, d in enumerate(devices):
            m = set(groups.get(d.snap.iommu_group, ())) if d.snap.iommu_group is not None else set()
            m.update(vfs.get(i, ()))
            pf = by_id.get(d.snap.pf) if d.snap.pf is not None else None
            sib: set[int] = set(vfs.get(i, ()))
            if pf is not None:
                m.add(pf)
                sib.add(pf)
                sib.update(vfs.get(pf, ()))
            m.discard(i)
            sib.discard(i)
            mates.append(tuple(sorted(m)))
            siblings.append(tuple(sorted(sib)))
        self.mates = mates
        self.siblings = siblings
        self.has_vfs = [i in vfs for i in range(len(devices))]
        self._contrib: list[_Contrib | None] = [None] * len(devices)

    def copy(self) -> HostDevices:
        clone = HostDevices.__new__(HostDevices)
        clone.devices = [d.copy() for d in self.devices]
        clone.mates = self.mates
        clone.siblings = self.siblings
        clone.has_vfs = self.has_vfs
        clone._contrib = list(self._contrib)
        return clone

    def whole_free(self, i: int, *, allow_vf: bool = False) -> bool:
        d = self.devices[i]
        if not d.placeable or d.busy or (d.snap.is_vf and not allow_vf) or self.has_vfs[i]:
            return False
        return not any(self.devices[j].busy for j in self.mates[i])

    def mate_whole_claimed(self, i: int) -> bool:
        return any(self.devices[j].claimed_by is not None for j in self.mates[i])

    def vgpu_units(self, i: int, type_name: str) -> int:
        if self.mate_whole_claimed(i):
            return 0
        d = self.devices[i]
        if not d.mixed:
            for j in self.siblings[i]:
                other = self.devices[j]
                if other.mdev_claims > 0 and other.active_type not in (None, type_name):
                    return 0
        return d.vgpu_units(type_name)

    def mig_fits(self, i: int, profile: MigProfileSnap) -> bool:
        return not self.mate_whole_claimed(i) and self.devices[i].mig_fits(profile)

    def share(self, i: int) -> float:
        """1.0 for a completely free GPU, else the largest share still placeable on it."""
        d = self.devices[i]
        if d.snap.kind != DeviceKind.GPU or not d.placeable or d.claimed_by is not None:
            return 0.0
        if self.mate_whole_claimed(i):
            return 0.0
        return 1.0 if not d.busy else d.partial_share()

    def largest_unit(self) -> float:
        return _Units([self.contrib(i).share for i in range(len(self.devices))]).before

    def vgpu_after_share(self, i: int, type_name: str) -> float:
        d = self.devices[i]
        if not d.mixed:
            return 1.0 / d.type_max[type_name] if d.available[type_name] > 1 else 0.0
        trial = d.copy()
        trial.claim_vgpu(type_name)
        return trial.partial_share()

    def contrib(self, i: int) -> _Contrib:
        c = self._contrib[i]
        if c is None:
            c = self._contrib[i] = self._compute(i)
        return c

    def _compute(self, i: int) -> _Contrib:
        d = self.devices[i]
        snap = d.snap
        model = model_key_name(snap.model)
        units: list[tuple[str, int]] = []
        shared: list[tuple[str, float, int, str]] = []
        if snap.kind == DeviceKind.GPU:
            if not snap.is_vf and self.whole_free(i):
                units.append((key(GPU, model), 1))
            for t in d.available:
                n = self.vgpu_units(i, t)
                if n > 0:
                    units.append((key(VGPU, t), n))
                    shared.append((key(VGPU, t), self.vgpu_after_share(i, t), n, t))
            mig = snap.mig
            if mig is not None and mig.enabled and not self.mate_whole_claimed(i):
                free_slices = mig.total_slices - d.mig_used
                for p in mig.profiles:
                    if d.mig_fits(p):
                        units.append((key(MIG, p.name), 1))
                        shared.append((key(MIG, p.name), d.mig_share(p), free_slices, p.name))
        elif snap.kind == DeviceKind.FPGA:
            if not snap.is_vf and self.whole_free(i):
                units.append((key(FPGA, model), 1))
            if self.whole_free(i, allow_vf=True):
                units.append((key(FPGA_VF, model), 1))
        return _Contrib(self.share(i), tuple(units), tuple(shared))

    def _invalidate(self, i: int) -> None:
        self._contrib[i] = None
        for j in self.mates[i]:
            self._contrib[j] = None
        for j in self.siblings[i]:
            self._contrib[j] = None

    def accel_free(self) -> int:
        """Completely free accelerators (GPU/FPGA): what non-accelerator VMs should not block."""
        accel = (DeviceKind.GPU, DeviceKind.FPGA)
        return sum(
            1
            for i, d in enumerate(self.devices)
            if d.snap.kind in accel and self.whole_free(i, allow_vf=True)
        )

    def rows(self, ncols: int) -> tuple[dict[str, list[int]], dict[str, float]]:
        """Capacity per key per NUMA column, and for vGPU/MIG keys the least fragmentation loss."""
        caps: dict[str, list[int]] = {}
        loss: dict[str, float] = {}
        contribs = [self.contrib(i) for i in range(len(self.devices))]
        units = _Units([c.share for c in contribs])
        for i, c in enumerate(contribs):
            col = self.devices[i].col
            for k, n in c.units:
                row = caps.get(k)
                if row is None:
                    row = caps[k] = [0] * ncols
                row[col] += n
            for k, after, _, _ in c.shared:
                lo = units.loss(i, after)
                prev = loss.get(k)
                if prev is None or lo < prev:
                    loss[k] = lo
        return caps, loss

    # -- choosing devices on the chosen host --

    def matching(self, i: int, keys: frozenset[str], category: str) -> bool:
        snap = self.devices[i].snap
        own = key(category, model_key_name(snap.model))
        if category == GPU:
            return snap.kind == DeviceKind.GPU and own in keys
        if category in (FPGA, FPGA_VF):
            return snap.kind == DeviceKind.FPGA and own in keys
        return False

    def choose_whole(
        self,
        keys: frozenset[str],
        category: str,
        count: int,
        cols: list[int] | None,
        preferred_cols: list[int],
        taken: set[int],
    ) -> list[int] | None:
        """``count`` free devices; all in one of ``cols`` when given (NUMA-strict), else as few
        NUMA cells as possible, a cell where the VM also fits first, the tightest cell first."""
        allow_vf = category == FPGA_VF
        free = [
            i
            for i in range(len(self.devices))
            if i not in taken
            and self.matching(i, keys, category)
            and self.whole_free(i, allow_vf=allow_vf)
        ]
        by_col: dict[int, list[int]] = {}
        for i in free:
            by_col.setdefault(self.devices[i].col, []).append(i)
        if cols is not None:
            fitting = [c for c in cols if len(by_col.get(c, ())) >= count]
            if not fitting:
                return None
            col = min(fitting, key=lambda c: (len(by_col[c]), c))
            return by_col[col][:count]
        if len(free) < count:
            return None
        single = [c for c, devs in by_col.items() if len(devs) >= count]
        if single:
            pref = set(preferred_cols)
            col = min(single, key=lambda c: (c not in pref, len(by_col[c]), c))
            return by_col[col][:count]
        chosen: list[int] = []
        for c in sorted(by_col, key=lambda c: (-len(by_col[c]), c)):
            chosen.extend(by_col[c][: count - len(chosen)])
            if len(chosen) == count:
                break
        return chosen

    def choose_shared(
        self, keys: frozenset[str], cols: list[int] | None, taken: set[int]
    ) -> tuple[int, str] | None:
        """The GPU (and exact type/profile name) for one vGPU or MIG instance: least loss of the
        host's largest placeable unit, then the fullest GPU, then PCI order."""
        contribs = [self.contrib(i) for i in range(len(self.devices))]
        units = _Units([c.share for c in contribs])
        best: tuple[float, int, int] | None = None
        best_pick: tuple[int, str] | None = None
        for i, c in enumerate(contribs):
            if i in taken or (cols is not None and self.devices[i].col not in cols):
                continue
            for k, after, tie, name in c.shared:
                if k in keys:
                    rank = (units.loss(i, after), tie, i)
                    if best is None or rank < best:
                        best, best_pick = rank, (i, name)
        return best_pick

    def claim(self, picks: list[tuple[int, str, str | None]], vm_id: str) -> list[DeviceClaim]:
        """Apply picks (device index, category, type/profile) and describe them."""
        claims: list[DeviceClaim] = []
        for i, category, profile in picks:
            d = self.devices[i]
            if category in WHOLE_CATEGORIES:
                d.claimed_by = vm_id
                kind = GPU if category == GPU else FPGA
            elif category == VGPU:
                assert profile is not None
                d.claim_vgpu(profile)
                kind = VGPU
            else:
                assert profile is not None
                mp = d.mig_profile(profile)
                assert mp is not None
                d.add_mig(mp)
                kind = MIG
            self._invalidate(i)
            claims.append(
                DeviceClaim(
                    device_id=d.snap.id,
                    kind=kind,
                    model=d.snap.model,
                    profile=profile,
                    numa_node=d.snap.numa_node,
                )
            )
        return claims


class _Units:
    """The host's largest placeable unit, and what it drops to when one GPU's share changes."""

    __slots__ = ("shares", "fresh", "top", "second", "before")

    def __init__(self, shares: list[float]) -> None:
        self.shares = shares
        self.fresh = sum(1 for s in shares if s >= 1.0)
        top = second = 0.0
        for s in shares:
            if s < 1.0:
                if s > top:
                    top, second = s, top
                elif s > second:
                    second = s
        self.top = top
        self.second = second
        self.before = self.fresh + top

    def loss(self, i: int, after_share: float) -> float:
        own = self.shares[i]
        fresh = self.fresh - (1 if own >= 1.0 else 0)
        others = self.second if own < 1.0 and own == self.top else self.top
        return self.before - (fresh + max(others, after_share))
