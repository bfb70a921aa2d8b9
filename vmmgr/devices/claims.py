"""Choose the devices a VM gets on an already chosen host (pure, over a HostSnap).

Rules:
- a whole device, a vGPU instance or a MIG instance belongs to at most one VM;
- passthrough hands over the whole IOMMU group: companions that are not accelerators (a GPU's
  audio function) go along; a group holding another accelerator the request did not ask for is
  not split (FailedPrecondition naming the devices); with ``whole_group=False`` any companion
  refuses the device;
- a physical function and its virtual functions are never held by different VMs at once;
- vGPU instances count against the mdev type's available instances, one type per GPU;
- MIG instances reuse free existing instances, else new ones where slices and placement allow
  (existing instances are never moved here: reconfiguring is the geometry planner's job);
- TAINTED devices are never chosen.
Errors: unknown model -> InvalidArgument; type/profile the host does not offer, a claimed
device, a shared group -> FailedPrecondition; a count the host cannot meet -> ResourceExhausted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vmmgr.devices.catalog import ModelQuery, known_models, parse_model
from vmmgr.devices.mig import MigDemand, mig_gpu_from_snap, plan_geometry
from vmmgr.devices.model import normalise_address
from vmmgr.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from vmmgr.snapshot import (
    DeviceHealth,
    DeviceKind,
    DeviceSnap,
    GpuRequest,
    HostSnap,
    MdevTypeSnap,
    PlacementRequest,
)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    gpus: tuple[GpuRequest, ...] = ()
    fpga_model: str | None = None
    fpga_count: int = 1
    fpga_allow_vf: bool = False
    vgpu_type: str | None = None
    vgpu_count: int = 1
    mig_profile: str | None = None
    mig_count: int = 1
    addresses: tuple[str, ...] = ()  # explicit whole devices ("0000:3b:00.0")
    numa_node: int | None = None  # required NUMA cell for every device
    numa_strict: bool = False  # all devices on one NUMA cell (any, when numa_node is None)

    @classmethod
    def from_placement(cls, req: PlacementRequest) -> DeviceRequest:
        return cls(
            gpus=req.gpus,
            fpga_model=req.fpga_model,
            fpga_count=req.fpga_count or (1 if req.fpga_model else 0),
            fpga_allow_vf=req.fpga_allow_vf,
            vgpu_type=req.vgpu_type,
            mig_profile=req.mig_profile,
            numa_strict=req.numa_strict,
        )


@dataclass(frozen=True, slots=True)
class PassthroughClaim:
    device_id: str
    address: str
    model: str
    kind: DeviceKind
    companions: tuple[str, ...] = ()  # device ids of IOMMU-group mates handed over too
    original_driver: str | None = None


@dataclass(frozen=True, slots=True)
class VgpuClaim:
    parent_id: str
    parent_address: str
    mdev_type: str


@dataclass(frozen=True, slots=True)
class MigClaim:
    device_id: str
    address: str
    profile: str
    start: int
    create: bool  # a new GPU instance must be created (else a free existing one is used)


@dataclass(frozen=True, slots=True)
class ClaimSet:
    vm_id: str
    host: str
    passthrough: tuple[PassthroughClaim, ...] = ()
    vgpus: tuple[VgpuClaim, ...] = ()
    migs: tuple[MigClaim, ...] = ()

    @property
    def whole_device_ids(self) -> tuple[str, ...]:
        """Every device held whole: requested ones and their IOMMU companions."""
        out: list[str] = []
        for c in self.passthrough:
            out.append(c.device_id)
            out.extend(c.companions)
        return tuple(out)

    @property
    def empty(self) -> bool:
        return not (self.passthrough or self.vgpus or self.migs)


# ------------------------------------------------------------------------------ helpers


class _Host:
    """Index over one host's devices plus what this request has taken so far."""

    def __init__(self, host: HostSnap) -> None:
        self.host = host
        self.by_id = {d.id: d for d in host.devices}
        self.by_address = {d.address: d for d in host.devices}
        self.groups: dict[int, list[DeviceSnap]] = {}
        for d in host.devices:
            if d.iommu_group is not None:
                self.groups.setdefault(d.iommu_group, []).append(d)
        self.taken: set[str] = set()
        self.vgpu_taken: Counter[str] = Counter()
        self.mig_taken: set[str] = set()  # GPUs carrying a MIG claim of this request

    def group_of(self, d: DeviceSnap) -> list[DeviceSnap]:
        if d.iommu_group is None:
            return [d]
        return sorted(self.groups[d.iommu_group], key=lambda x: x.address)

    def vfs_of(self, d: DeviceSnap) -> list[DeviceSnap]:
        return [x for x in self.host.devices if x.pf == d.id]

    def busy_reason(self, d: DeviceSnap) -> str | None:
        """Why ``d`` cannot be handed over whole right now (None: it can)."""
        if d.claimed_by is not None:
            return f"{d.address} is held by VM {d.claimed_by}"
        if d.id in self.taken:
            return f"{d.address} is already taken by this request"
        if d.mdev_claims or self.vgpu_taken[d.id]:
            return f"{d.address} hosts vGPU instances in use"
        if d.active_mdev_type is not None:
            return f"{d.address} hosts mediated devices of type {d.active_mdev_type}"
        if d.mig is not None and (d.mig.claimed or d.id in self.mig_taken):
            return f"{d.address} hosts MIG instances in use"
        if d.health is DeviceHealth.TAINTED:
            return f"{d.address} is tainted"
        if d.pf is not None:
            pf = self.by_id.get(d.pf)
            if pf is not None and (pf.claimed_by is not None or pf.id in self.taken):
                return f"{d.address} is a VF of {pf.address}, which is held whole"
        for vf in self.vfs_of(d):
            if vf.claimed_by is not None or vf.id in self.taken:
                return f"{d.address} has virtual function {vf.address} in use"
        return None


def _numa_ok(d: DeviceSnap, node: int | None) -> bool:
    return node is None or d.numa_node == node


def _order(d: DeviceSnap) -> tuple[int, float, str]:
    healthy_first = 0 if d.health is DeviceHealth.HEALTHY else 1
    return (healthy_first, d.utilization or 0.0, d.address)


@dataclass(frozen=True, slots=True)
class _Group:
    matching: tuple[DeviceSnap, ...]
    companions: tuple[DeviceSnap, ...]


def _candidate_groups(
    h: _Host,
    query: ModelQuery,
    kind: DeviceKind,
    allow_vf: bool,
    whole_group: bool,
    numa: int | None,
    why_not: list[str],
) -> list[_Group]:
    seen: set[int | str] = set()
    out: list[_Group] = []
    for d in sorted(h.host.devices, key=_order):
        if d.kind is not kind or not query.matches(d.model, d.vendor_id, d.product_id):
            continue
        if d.is_vf and not allow_vf:
            continue
        key: int | str = d.iommu_group if d.iommu_group is not None else d.id
        if key in seen:
            continue
        seen.add(key)
        group = h.group_of(d)
        matching = [
            x
            for x in group
            if x.kind is kind
            and query.matches(x.model, x.vendor_id, x.product_id)
            and (allow_vf or not x.is_vf)
        ]
        others = [x for x in group if x not in matching]
        reasons = [r for r in (h.busy_reason(x) for x in group) if r]
        if reasons:
            why_not.extend(reasons)
            continue
        if not all(_numa_ok(x, numa) for x in matching):
            continue
        if others and not whole_group:
            names = ", ".join(x.address for x in others)
            why_not.append(f"{d.address} shares IOMMU group {d.iommu_group} with {names}")
            continue
        foreign = [x for x in others if x.kind is not DeviceKind.OTHER]
        if foreign:
            names = ", ".join(f"{x.address} ({x.model})" for x in foreign)
            why_not.append(f"{d.address} shares IOMMU group {d.iommu_group} with {names}")
            continue
        out.append(_Group(tuple(matching), tuple(others)))
    return out


def _exact(groups: Sequence[_Group], count: int) -> list[_Group] | None:
    """The first combination (in preference order) giving exactly ``count`` devices."""
    chosen: list[_Group] = []

    def walk(i: int, left: int) -> bool:
        if left == 0:
            return True
        for j in range(i, len(groups)):
            n = len(groups[j].matching)
            if n <= left:
                chosen.append(groups[j])
                if walk(j + 1, left - n):
                    return True
                chosen.pop()
        return False

    return chosen if walk(0, count) else None


def _numa_choices(h: _Host, req: DeviceRequest) -> list[int | None]:
    if req.numa_node is not None:
        return [req.numa_node]
    if not req.numa_strict:
        return [None]
    nodes = sorted({d.numa_node for d in h.host.devices if d.numa_node is not None})
    return list(nodes) or [None]


def _take_whole(
    h: _Host,
    query: ModelQuery,
    kind: DeviceKind,
    count: int,
    *,
    field: str,
    allow_vf: bool,
    whole_group: bool,
    numa: int | None,
) -> list[PassthroughClaim]:
    present = [
        d
        for d in h.host.devices
        if d.kind is kind and query.matches(d.model, d.vendor_id, d.product_id)
    ]
    if not present and not query.in_catalog:
        names = known_models(d.model for d in h.host.devices if d.kind is kind)
        raise InvalidArgument(field, f"unknown model {query.text!r}; known: {', '.join(names)}")
    why_not: list[str] = []
    groups = _candidate_groups(h, query, kind, allow_vf, whole_group, numa, why_not)
    chosen = _exact(groups, count)
    if chosen is None:
        free = sum(len(g.matching) for g in groups)
        where = f" on NUMA node {numa}" if numa is not None else ""
        detail = f" ({'; '.join(dict.fromkeys(why_not))})" if why_not else ""
        if free >= count:
            raise FailedPrecondition(
                f"{query.text}: {free} free{where} on host {h.host.name}, but IOMMU groups "
                f"cannot be split to give exactly {count}{detail}",
                field=field,
            )
        if count == 1 and why_not and len(present) == 1:
            raise FailedPrecondition(why_not[0], field=field)
        raise ResourceExhausted(
            f"{query.text}: requested {count}, host {h.host.name} has {free} free{where} "
            f"of {len(present)}{detail}",
            field=field,
        )
    claims: list[PassthroughClaim] = []
    for g in chosen:
        companions = tuple(x.id for x in g.companions)
        for i, d in enumerate(g.matching):
            claims.append(
                PassthroughClaim(
                    d.id, d.address, d.model, d.kind, companions if i == 0 else (), d.driver
                )
            )
            h.taken.add(d.id)
        h.taken.update(companions)
    return claims


def _take_address(h: _Host, address: str, whole_group: bool, wanted: set[str]) -> PassthroughClaim:
    addr = normalise_address(address, field="addresses")
    d = h.by_address.get(addr)
    if d is None:
        raise InvalidArgument("addresses", f"no device {addr} on host {h.host.name}")
    group = h.group_of(d)
    for x in group:
        if x.address in wanted and x.id in h.taken:
            continue  # an earlier address of this same request took its own group
        reason = h.busy_reason(x)
        if reason:
            if x is not d:
                reason = f"{d.address} shares IOMMU group {d.iommu_group} with: {reason}"
            raise FailedPrecondition(reason, field="addresses")
    others = [x for x in group if x is not d]
    if others and not whole_group:
        names = ", ".join(x.address for x in others)
        raise FailedPrecondition(
            f"{d.address} shares IOMMU group {d.iommu_group} with {names}", field="addresses"
        )
    foreign = [x for x in others if x.kind is not DeviceKind.OTHER and x.address not in wanted]
    if foreign:
        names = ", ".join(f"{x.address} ({x.model})" for x in foreign)
        raise FailedPrecondition(
            f"{d.address} shares IOMMU group {d.iommu_group} with {names}; "
            "request them together or not at all",
            field="addresses",
        )
    companions = tuple(x.id for x in others if x.address not in wanted)
    h.taken.add(d.id)
    h.taken.update(companions)
    return PassthroughClaim(d.id, d.address, d.model, d.kind, companions, d.driver)


def _type_matches(t: MdevTypeSnap, want: str) -> bool:
    w = want.lower()
    return t.name.lower() == w or t.display_name.lower() == w


def _take_vgpus(h: _Host, want: str, count: int, numa: int | None) -> list[VgpuClaim]:
    offering = [d for d in h.host.devices if any(_type_matches(t, want) for t in d.mdev_types)]
    if not offering:
        raise FailedPrecondition(
            f"vGPU type {want!r} is not offered by any GPU on host {h.host.name}",
            field="vgpu_type",
        )
    options: list[tuple[DeviceSnap, MdevTypeSnap, int]] = []
    for d in offering:
        t = next(t for t in d.mdev_types if _type_matches(t, want))
        if (
            d.health is DeviceHealth.TAINTED
            or d.claimed_by is not None
            or d.id in h.taken
            or d.active_mdev_type not in (None, t.name)
            or (d.mig is not None and d.mig.claimed)
            or not _numa_ok(d, numa)
        ):
            continue
        free = t.available - h.vgpu_taken[d.id]
        if free > 0:
            options.append((d, t, free))
    # Pack onto GPUs already running this type, then the ones with most room.
    options.sort(key=lambda o: (o[0].active_mdev_type is None, -o[2], o[0].address))
    claims: list[VgpuClaim] = []
    for d, t, free in options:
        n = min(free, count - len(claims))
        claims.extend(VgpuClaim(d.id, d.address, t.name) for _ in range(n))
        h.vgpu_taken[d.id] += n
        if len(claims) == count:
            return claims
    raise ResourceExhausted(
        f"vGPU {want}: requested {count}, host {h.host.name} can give {len(claims)}",
        field="vgpu_type",
    )


def _take_migs(h: _Host, profile: str, count: int, numa: int | None, vm: str) -> list[MigClaim]:
    want = profile.lower()
    offering = [
        d
        for d in h.host.devices
        if d.mig is not None and any(p.name.lower() == want for p in d.mig.profiles)
    ]
    if not offering:
        raise FailedPrecondition(
            f"MIG profile {profile!r} is not offered by any GPU on host {h.host.name}",
            field="mig_profile",
        )
    enabled = [d for d in offering if d.mig is not None and d.mig.enabled]
    if not enabled:
        raise FailedPrecondition(
            f"MIG mode is off on every GPU of host {h.host.name} offering {profile}",
            field="mig_profile",
        )
    claims: list[MigClaim] = []
    for d in sorted(enabled, key=_order):
        if (
            d.health is DeviceHealth.TAINTED
            or d.claimed_by is not None
            or d.id in h.taken
            or d.mdev_claims
            or not _numa_ok(d, numa)
        ):
            continue
        gpu = mig_gpu_from_snap(d, idle=False)  # never destroy: only reuse free or add
        if gpu is None:
            continue
        n = count - len(claims)
        plan = plan_geometry([gpu], [MigDemand(f"{vm}-{i}", profile) for i in range(n)])
        for a in plan.assignments:
            claims.append(MigClaim(d.id, d.address, a.profile, a.start, not a.existing))
        if plan.assignments:
            h.mig_taken.add(d.id)
        if len(claims) == count:
            return claims
    raise ResourceExhausted(
        f"MIG {profile}: requested {count}, host {h.host.name} can give {len(claims)}",
        field="mig_profile",
    )


# ------------------------------------------------------------------------------ public


def choose_devices(
    host: HostSnap, request: DeviceRequest, *, vm_id: str, whole_group: bool = True
) -> ClaimSet:
    """Pick devices on ``host`` for one VM, or raise naming what is missing or in the way."""
    for i, g in enumerate(request.gpus):
        if g.count < 1:
            raise InvalidArgument(f"gpus[{i}].count", "must be at least 1")
    if request.fpga_model and request.fpga_count < 1:
        raise InvalidArgument("fpga_count", "must be at least 1")
    if request.vgpu_type and request.vgpu_count < 1:
        raise InvalidArgument("vgpu_count", "must be at least 1")
    if request.mig_profile and request.mig_count < 1:
        raise InvalidArgument("mig_count", "must be at least 1")
    choices = _numa_choices(_Host(host), request)
    errors: list[tuple[int | None, ResourceExhausted | FailedPrecondition]] = []
    for numa in choices:
        try:
            return _choose(host, request, vm_id, whole_group, numa)
        except (ResourceExhausted, FailedPrecondition) as exc:
            errors.append((numa, exc))
    if len(errors) == 1:
        raise errors[0][1]
    detail = "; ".join(f"node {n}: {e}" for n, e in errors)
    raise ResourceExhausted(
        f"no single NUMA node of host {host.name} holds all requested devices ({detail})",
        field=errors[0][1].field,
    )


def _choose(
    host: HostSnap, req: DeviceRequest, vm_id: str, whole_group: bool, numa: int | None
) -> ClaimSet:
    h = _Host(host)
    passthrough: list[PassthroughClaim] = []
    wanted = {normalise_address(a, field="addresses") for a in req.addresses}
    for a in req.addresses:
        claim = _take_address(h, a, whole_group, wanted)
        if not _numa_ok(h.by_id[claim.device_id], numa):
            raise FailedPrecondition(
                f"{claim.address} is not on NUMA node {numa}", field="addresses"
            )
        passthrough.append(claim)
    for i, g in enumerate(req.gpus):
        q = parse_model(g.model, field=f"gpus[{i}].model")
        passthrough += _take_whole(
            h,
            q,
            DeviceKind.GPU,
            g.count,
            field=f"gpus[{i}].model",
            allow_vf=False,
            whole_group=whole_group,
            numa=numa,
        )
    if req.fpga_model:
        q = parse_model(req.fpga_model, field="fpga_model")
        passthrough += _take_whole(
            h,
            q,
            DeviceKind.FPGA,
            req.fpga_count,
            field="fpga_model",
            allow_vf=req.fpga_allow_vf,
            whole_group=whole_group,
            numa=numa,
        )
    vgpus = _take_vgpus(h, req.vgpu_type, req.vgpu_count, numa) if req.vgpu_type else []
    migs = _take_migs(h, req.mig_profile, req.mig_count, numa, vm_id) if req.mig_profile else []
    return ClaimSet(vm_id, host.name, tuple(passthrough), tuple(vgpus), tuple(migs))


def apply_claims(host: HostSnap, claims: ClaimSet) -> HostSnap:
    """The host as it is once ``claims`` are held (for chaining decisions and for tests)."""
    whole = set(claims.whole_device_ids)
    vgpu = Counter(c.parent_id for c in claims.vgpus)
    vgpu_type = {c.parent_id: c.mdev_type for c in claims.vgpus}
    migs: dict[str, list[MigClaim]] = {}
    for m in claims.migs:
        migs.setdefault(m.device_id, []).append(m)
    devices: list[DeviceSnap] = []
    for d in host.devices:
        if d.id in whole:
            d = replace(d, claimed_by=claims.vm_id)
        if vgpu[d.id]:
            t = vgpu_type[d.id]
            d = replace(
                d,
                mdev_claims=d.mdev_claims + vgpu[d.id],
                active_mdev_type=t,
                mdev_types=tuple(
                    replace(x, available=x.available - vgpu[d.id]) if x.name == t else x
                    for x in d.mdev_types
                ),
            )
        if d.id in migs and d.mig is not None:
            made = tuple(m.profile for m in migs[d.id] if m.create)
            held = tuple(m.profile for m in migs[d.id])
            d = replace(
                d,
                mig=replace(d.mig, instances=d.mig.instances + made, claimed=d.mig.claimed + held),
            )
        devices.append(d)
    return replace(host, devices=tuple(devices))


def release_claims(host: HostSnap, claims: ClaimSet) -> HostSnap:
    """Inverse of ``apply_claims`` (MIG instances stay; they become free)."""
    whole = set(claims.whole_device_ids)
    vgpu = Counter(c.parent_id for c in claims.vgpus)
    mig_held: dict[str, Counter[str]] = {}
    for m in claims.migs:
        mig_held.setdefault(m.device_id, Counter())[m.profile] += 1
    devices: list[DeviceSnap] = []
    for d in host.devices:
        if d.id in whole and d.claimed_by == claims.vm_id:
            d = replace(d, claimed_by=None)
        if vgpu[d.id]:
            left = max(0, d.mdev_claims - vgpu[d.id])
            d = replace(
                d,
                mdev_claims=left,
                active_mdev_type=d.active_mdev_type if left else None,
                mdev_types=tuple(
                    replace(x, available=min(x.max_instances, x.available + vgpu[d.id]))
                    if x.name == d.active_mdev_type
                    else x
                    for x in d.mdev_types
                ),
            )
        if d.id in mig_held and d.mig is not None:
            left_claims = Counter(d.mig.claimed) - mig_held[d.id]
            d = replace(d, mig=replace(d.mig, claimed=tuple(sorted(left_claims.elements()))))
        devices.append(d)
    return replace(host, devices=tuple(devices))
