"""MIG GPU-instance profiles as schedulable resources, and a geometry planner (pure).

Model (A100 / H100 / H200): 7 compute slices and 8 memory slices. A profile takes ``compute``
slices and a contiguous run of ``memory_slots`` memory slices starting at one of a few allowed
offsets, at most ``max_instances`` times. Allowed offsets follow NVIDIA's placement table:

    memory slots 8 (7g)           start 0
    memory slots 4, compute 4     start 0
    memory slots 4, compute 3     starts 0, 4
    memory slots 2, compute 2     starts 0, 2, 4
    memory slots 2, compute 1     starts 0, 2, 4, 6          (1g.20gb)
    memory slots 1, compute 1     starts 0..6                (1g.10gb, 1g.10gb+me)

Simplifications (said plainly): offsets come from that table by shape, not from
nvmlDeviceGetGpuInstancePossiblePlacements; memory slots are derived from a profile's memory
relative to the largest profile; compute instances are not modelled (each GPU instance gets one
full compute instance); media-engine sharing beyond ``max_instances`` is not modelled.

The planner packs pending demands GPU by GPU (GPUs already carrying instances first), choosing on
each GPU, among all valid geometries that keep its fixed instances, the one that serves the most
compute slices of pending demand, then strands the fewest slices, then changes the fewest
instances. On a single GPU this is exact (every geometry is enumerated); across GPUs it is a
first-fit-decreasing style greedy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from vmmgr.devices.model import MigPlacement
from vmmgr.errors import FailedPrecondition, InvalidArgument
from vmmgr.snapshot import DeviceSnap, MigProfileSnap

MEMORY_SLOTS = 8
COMPUTE_SLICES = 7


@dataclass(frozen=True, slots=True)
class MigProfileSpec:
    name: str
    compute: int
    memory_slots: int
    memory_mib: int
    max_instances: int
    starts: tuple[int, ...]


def _starts(compute: int, memory_slots: int) -> tuple[int, ...]:
    if memory_slots >= MEMORY_SLOTS:
        return (0,)
    if memory_slots == 4:
        return (0,) if compute >= 4 else (0, 4)
    if memory_slots == 2:
        return (0, 2, 4) if compute >= 2 else (0, 2, 4, 6)
    if memory_slots == 1:
        return tuple(range(MEMORY_SLOTS - 1))
    return tuple(
        s for s in range(0, MEMORY_SLOTS, memory_slots) if s + memory_slots <= MEMORY_SLOTS
    )


def profile_specs(profiles: Sequence[MigProfileSnap]) -> tuple[MigProfileSpec, ...]:
    """Placement specs for a GPU's profiles (memory slots relative to the largest profile)."""
    if not profiles:
        return ()
    top = max(p.memory_mib for p in profiles) or 1
    specs = []
    for p in profiles:
        slots = max(1, min(MEMORY_SLOTS, round(p.memory_mib * MEMORY_SLOTS / top)))
        specs.append(
            MigProfileSpec(
                p.name, p.slices, slots, p.memory_mib, p.max_instances, _starts(p.slices, slots)
            )
        )
    return tuple(sorted(specs, key=lambda s: (-s.compute, -s.memory_slots, s.name)))


@dataclass(frozen=True, slots=True, order=True)
class PlacedInstance:
    start: int
    profile: str
    claimed_by: str | None = None  # a VM holds it: never destroyed by a plan


Geometry = tuple[tuple[str, int], ...]  # sorted (profile, start) pairs


def validate_geometry(
    specs: Sequence[MigProfileSpec],
    geometry: Sequence[tuple[str, int]],
    *,
    compute: int = COMPUTE_SLICES,
) -> None:
    """Raise InvalidArgument if the geometry cannot exist on the GPU."""
    by_name = {s.name: s for s in specs}
    used = [False] * MEMORY_SLOTS
    total = 0
    counts: Counter[str] = Counter()
    for name, start in geometry:
        spec = by_name.get(name)
        if spec is None:
            raise InvalidArgument("profiles", f"unknown MIG profile {name!r}")
        if start not in spec.starts:
            raise InvalidArgument("profiles", f"{name} cannot start at memory slice {start}")
        for i in range(start, start + spec.memory_slots):
            if used[i]:
                raise InvalidArgument("profiles", f"{name}@{start} overlaps another instance")
            used[i] = True
        total += spec.compute
        counts[name] += 1
        if counts[name] > spec.max_instances:
            raise InvalidArgument("profiles", f"more than {spec.max_instances} x {name}")
    if total > compute:
        raise InvalidArgument("profiles", f"geometry needs {total} compute slices of {compute}")


@lru_cache(maxsize=256)
def _geometries(
    specs: tuple[MigProfileSpec, ...], fixed: Geometry, compute: int
) -> tuple[Geometry, ...]:
    """Every valid geometry that contains ``fixed`` (which must itself be valid)."""
    by_name = {s.name: s for s in specs}
    occupied = [False] * MEMORY_SLOTS
    used = 0
    counts: Counter[str] = Counter()
    for name, start in fixed:
        spec = by_name[name]
        for i in range(start, start + spec.memory_slots):
            occupied[i] = True
        used += spec.compute
        counts[name] += 1
    out: list[Geometry] = []
    chosen: list[tuple[str, int]] = []

    def walk(pos: int, used: int) -> None:
        while pos < MEMORY_SLOTS and occupied[pos]:
            pos += 1
        if pos >= MEMORY_SLOTS:
            out.append(tuple(sorted((*fixed, *chosen))))
            return
        walk(pos + 1, used)  # leave this memory slice free
        for spec in specs:
            end = pos + spec.memory_slots
            if (
                pos not in spec.starts
                or end > MEMORY_SLOTS
                or used + spec.compute > compute
                or counts[spec.name] >= spec.max_instances
                or any(occupied[pos:end])
            ):
                continue
            for i in range(pos, end):
                occupied[i] = True
            counts[spec.name] += 1
            chosen.append((spec.name, pos))
            walk(end, used + spec.compute)
            chosen.pop()
            counts[spec.name] -= 1
            for i in range(pos, end):
                occupied[i] = False

    walk(0, used)
    return tuple(out)


def all_geometries(
    specs: Sequence[MigProfileSpec],
    fixed: Sequence[tuple[str, int]] = (),
    *,
    compute: int = COMPUTE_SLICES,
) -> tuple[Geometry, ...]:
    validate_geometry(specs, fixed, compute=compute)
    return _geometries(tuple(specs), tuple(sorted(fixed)), compute)


def _mask_and_counts(
    specs: tuple[MigProfileSpec, ...], geometry: Geometry
) -> tuple[int, int, tuple[int, ...]]:
    by_name = {s.name: s for s in specs}
    mask = 0
    used = 0
    counts = [0] * len(specs)
    index = {s.name: i for i, s in enumerate(specs)}
    for name, start in geometry:
        spec = by_name[name]
        for i in range(start, start + spec.memory_slots):
            mask |= 1 << i
        used += spec.compute
        counts[index[name]] += 1
    return mask, used, tuple(counts)


@lru_cache(maxsize=65536)
def _max_extra(
    specs: tuple[MigProfileSpec, ...], mask: int, left: int, counts: tuple[int, ...]
) -> int:
    """Most compute slices still placeable into the free memory slices."""
    pos = 0
    while pos < MEMORY_SLOTS and mask >> pos & 1:
        pos += 1
    if pos >= MEMORY_SLOTS or left <= 0:
        return 0
    best = _max_extra(specs, mask | 1 << pos, left, counts)  # leave ``pos`` free
    for i, spec in enumerate(specs):
        end = pos + spec.memory_slots
        span = ((1 << spec.memory_slots) - 1) << pos
        if (
            pos in spec.starts
            and end <= MEMORY_SLOTS
            and spec.compute <= left
            and counts[i] < spec.max_instances
            and not mask & span
        ):
            bumped = counts[:i] + (counts[i] + 1,) + counts[i + 1 :]
            best = max(
                best, spec.compute + _max_extra(specs, mask | span, left - spec.compute, bumped)
            )
    return best


def stranded_slices(
    specs: Sequence[MigProfileSpec],
    geometry: Sequence[tuple[str, int]],
    *,
    compute: int = COMPUTE_SLICES,
) -> int:
    """Free compute slices that no profile can use any more, given the placements made."""
    t = tuple(specs)
    mask, used, counts = _mask_and_counts(t, tuple(geometry))
    free = compute - used
    return free - _max_extra(t, mask, free, counts)


# ---------------------------------------------------------------- demands and the planner


@dataclass(frozen=True, slots=True)
class MigDemand:
    """A pending request for one GPU instance: a profile name, or minimum sizes to choose by."""

    id: str
    profile: str | None = None
    min_memory_mib: int = 0
    min_slices: int = 0


@dataclass(frozen=True, slots=True)
class MigGpu:
    device_id: str
    profiles: tuple[MigProfileSpec, ...]
    instances: tuple[PlacedInstance, ...] = ()
    compute: int = COMPUTE_SLICES
    enabled: bool = True
    idle: bool = True  # unclaimed instances may be destroyed (no processes on the GPU)


@dataclass(frozen=True, slots=True)
class Assignment:
    demand_id: str
    device_id: str
    profile: str
    start: int
    existing: bool  # served by an instance that already exists


@dataclass(frozen=True, slots=True)
class GpuPlan:
    device_id: str
    geometry: tuple[MigPlacement, ...]
    changed: bool
    stranded_slices: int
    destroy: tuple[MigPlacement, ...] = ()
    create: tuple[MigPlacement, ...] = ()


@dataclass(frozen=True, slots=True)
class Unplaced:
    demand_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MigPlan:
    gpus: tuple[GpuPlan, ...]
    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...] = ()
    stranded_slices: int = field(default=0)


def resolve_profile(demand: MigDemand, specs: Sequence[MigProfileSpec]) -> str | None:
    """The profile a demand needs: its named one, else the smallest one big enough."""
    if demand.profile is not None:
        want = demand.profile.lower()
        return next((s.name for s in specs if s.name.lower() == want), None)
    fitting = [
        s for s in specs if s.compute >= demand.min_slices and s.memory_mib >= demand.min_memory_mib
    ]
    if not fitting:
        return None
    best = min(fitting, key=lambda s: (s.compute, s.memory_mib, "+" in s.name, s.name))
    return best.name


def mig_gpu_from_snap(device: DeviceSnap, *, idle: bool = True) -> MigGpu | None:
    """A planner view of a DeviceSnap. The snapshot has no placement offsets, so existing
    instances are laid out canonically (largest first, lowest free offset)."""
    mig = device.mig
    if mig is None:
        return None
    specs = profile_specs(mig.profiles)
    by_name = {s.name: s for s in specs}
    claims = Counter(mig.claimed)
    occupied = [False] * MEMORY_SLOTS
    placed: list[PlacedInstance] = []
    for name in sorted(
        mig.instances, key=lambda n: -(by_name[n].memory_slots if n in by_name else 0)
    ):
        spec = by_name.get(name)
        if spec is None:
            continue
        for s in spec.starts:
            if s + spec.memory_slots <= MEMORY_SLOTS and not any(
                occupied[s : s + spec.memory_slots]
            ):
                for i in range(s, s + spec.memory_slots):
                    occupied[i] = True
                holder = None
                if claims[name] > 0:
                    claims[name] -= 1
                    holder = "claimed"
                placed.append(PlacedInstance(s, name, holder))
                break
    return MigGpu(device.id, specs, tuple(sorted(placed)), mig.total_slices, mig.enabled, idle)


@dataclass(frozen=True, slots=True)
class _Row:
    geometry: Geometry
    placements: frozenset[tuple[str, int]]
    counts: tuple[int, ...]  # instances per spec index
    stranded: int


def _row(specs: tuple[MigProfileSpec, ...], geometry: Geometry, compute: int) -> _Row:
    index = {s.name: i for i, s in enumerate(specs)}
    counts = [0] * len(specs)
    for name, _ in geometry:
        counts[index[name]] += 1
    strand = stranded_slices(specs, geometry, compute=compute) if geometry else 0
    return _Row(geometry, frozenset(geometry), tuple(counts), strand)


@lru_cache(maxsize=256)
def _table(specs: tuple[MigProfileSpec, ...], keep: Geometry, compute: int) -> tuple[_Row, ...]:
    return tuple(_row(specs, g, compute) for g in _geometries(specs, keep, compute))


def _score(
    specs: tuple[MigProfileSpec, ...],
    index: dict[str, int],
    row: _Row,
    claimed: tuple[int, ...],
    existing: frozenset[tuple[str, int]],
    want: tuple[int, ...],
) -> tuple[int, int, int, int] | None:
    """(served compute, served count, -stranded, -changes); None if the geometry would
    create instances no demand asked for."""
    kept = row.placements & existing
    reused = [0] * len(specs)
    for name, _ in kept:
        reused[index[name]] += 1
    served_compute = served_count = 0
    for i, spec in enumerate(specs):
        free = row.counts[i] - claimed[i]
        served = min(free, want[i])
        if row.counts[i] - reused[i] > served:
            return None
        served_compute += served * spec.compute
        served_count += served
    changes = len(existing) + len(row.placements) - 2 * len(kept)
    return (served_compute, served_count, -row.stranded, -changes)


def _used_compute(gpu: MigGpu) -> int:
    by_name = {s.name: s.compute for s in gpu.profiles}
    return sum(by_name.get(i.profile, 0) for i in gpu.instances)


def _plan_one(
    gpu: MigGpu, pending: list[MigDemand]
) -> tuple[GpuPlan, list[Assignment], list[MigDemand]]:
    specs = gpu.profiles
    resolved = {d.id: resolve_profile(d, specs) for d in pending}
    wanted = Counter(p for p in resolved.values() if p is not None)
    existing = Counter((i.profile, i.start) for i in gpu.instances)
    claimed: Geometry = tuple(
        sorted((i.profile, i.start) for i in gpu.instances if i.claimed_by is not None)
    )
    # What must survive: held instances, or everything on a GPU that is not idle.
    keep = claimed if gpu.idle else tuple(sorted(existing.elements()))
    want = tuple(wanted[s.name] for s in specs)
    held = Counter(n for n, _ in claimed)
    held_counts = tuple(held[s.name] for s in specs)
    have = frozenset(existing)
    best_geo: Geometry = tuple(sorted(existing.elements()))
    index = {s.name: i for i, s in enumerate(specs)}
    best = _score(specs, index, _row(specs, best_geo, gpu.compute), held_counts, have, want)
    if wanted:
        for row in _table(specs, keep, gpu.compute):
            score = _score(specs, index, row, held_counts, have, want)
            if score is not None and (best is None or score > best):
                best, best_geo = score, row.geometry
    # Hand out the unclaimed instances: existing ones first, then the ones to create.
    avail = sorted(
        (Counter(best_geo) - Counter(claimed)).elements(),
        key=lambda ps: (ps not in existing, ps[1]),
    )
    assignments: list[Assignment] = []
    still: list[MigDemand] = []
    for d in pending:
        prof = resolved[d.id]
        slot = next((ps for ps in avail if ps[0] == prof), None)
        if prof is None or slot is None:
            still.append(d)
            continue
        avail.remove(slot)
        assignments.append(Assignment(d.id, gpu.device_id, prof, slot[1], slot in existing))
    target = Counter(best_geo)
    destroy = tuple(MigPlacement(n, s) for n, s in sorted((existing - target).elements()))
    create = tuple(MigPlacement(n, s) for n, s in sorted((target - existing).elements()))
    plan = GpuPlan(
        gpu.device_id,
        tuple(MigPlacement(n, s) for n, s in best_geo),
        bool(destroy or create),
        stranded_slices(specs, best_geo, compute=gpu.compute) if best_geo else 0,
        destroy,
        create,
    )
    return plan, assignments, still


def plan_geometry(gpus: Sequence[MigGpu], demands: Sequence[MigDemand]) -> MigPlan:
    """Choose GPU-instance geometries serving as many pending demands as possible.

    Instances that VMs hold (``claimed_by``) never move; on a GPU that is not idle no instance
    is destroyed. Demands no GPU can serve come back in ``unplaced`` with the reason.
    """
    usable = [g for g in gpus if g.enabled and g.profiles]
    unplaced: list[Unplaced] = []
    pending: list[MigDemand] = []
    for d in demands:
        if any(resolve_profile(d, g.profiles) for g in usable):
            pending.append(d)
        else:
            what = d.profile or f">= {d.min_slices} slices and >= {d.min_memory_mib} MiB"
            unplaced.append(Unplaced(d.id, f"no MIG-enabled GPU offers a profile for {what}"))
    # Consolidate: GPUs already carrying instances first, fullest first.
    order = sorted(usable, key=lambda g: (_used_compute(g) == 0, -_used_compute(g), g.device_id))
    plans: list[GpuPlan] = []
    assignments: list[Assignment] = []
    for gpu in order:
        plan, got, pending = _plan_one(gpu, pending)
        plans.append(plan)
        assignments.extend(got)
    unplaced.extend(Unplaced(d.id, "no room on any MIG-enabled GPU") for d in pending)
    return MigPlan(
        gpus=tuple(plans),
        assignments=tuple(assignments),
        unplaced=tuple(unplaced),
        stranded_slices=sum(p.stranded_slices for p in plans),
    )


def ensure_mig_reconfigurable(device: DeviceSnap, destroy: Sequence[MigPlacement] = ()) -> None:
    """Core-side guard before asking the agent to change a GPU's geometry.

    Refuses (FailedPrecondition) when the GPU is passed through whole, hosts vGPUs, is not in
    MIG mode, or when instances would be destroyed while VMs hold instances of that profile.
    """
    if device.mig is None or not device.mig.enabled:
        raise FailedPrecondition(f"{device.id}: MIG mode is not enabled")
    if device.claimed_by:
        raise FailedPrecondition(f"{device.id}: held whole by VM {device.claimed_by}")
    if device.mdev_claims:
        raise FailedPrecondition(f"{device.id}: {device.mdev_claims} vGPU instance(s) in use")
    if destroy and device.mig.claimed:
        doomed = Counter(p.profile for p in destroy)
        held = Counter(device.mig.claimed)
        free = Counter(device.mig.instances) - held
        if doomed - free:
            raise FailedPrecondition(
                f"{device.id}: geometry change would destroy claimed MIG instance(s) "
                f"{', '.join(sorted((doomed - free).elements()))}"
            )
