"""Property tests: whatever the cluster and the batch, placement keeps its promises.

Invariants are re-derived here from the snapshot and the returned placements, independently of
the scheduler's own bookkeeping.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmmgr.scheduler import BUILTIN_FILTERS, FilterContext, HostView, Placement, Scheduler
from vmmgr.scheduler.config import SchedulerConfig
from vmmgr.scheduler.synthetic import H100_MIG_PROFILES, L40S_TYPES
from vmmgr.scheduler.working import WorkingState
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceHealth,
    DeviceKind,
    DeviceSnap,
    GpuRequest,
    GroupSnap,
    HostSnap,
    HostState,
    MdevTypeSnap,
    MigSnap,
    NumaCell,
    PlacementRequest,
    VMSnap,
)

PROFILE = {p.name: p for p in H100_MIG_PROFILES}
TYPE_MAX = {t: m for t, _, m in L40S_TYPES}
MODELS = ("H100-80GB", "A100")


@st.composite
def devices(draw: st.DrawFn, host: str) -> tuple[DeviceSnap, ...]:
    out = []
    for n in range(draw(st.sampled_from([0, 1, 2, 3, 4, 4]))):
        addr = f"0000:{n + 16:02x}:00.0"
        kind = draw(st.sampled_from(["whole", "whole", "whole", "mig", "vgpu", "fpga"]))
        health = draw(st.sampled_from([DeviceHealth.HEALTHY] * 4 + [DeviceHealth.TAINTED,
                                                                    DeviceHealth.UNKNOWN]))
        base = {
            "id": f"{host}/{addr}",
            "host": host,
            "address": addr,
            "kind": DeviceKind.FPGA if kind == "fpga" else DeviceKind.GPU,
            "vendor_id": 0x10DE,
            "product_id": 0x2330,
            "model": "ALVEO" if kind == "fpga" else draw(st.sampled_from(MODELS + MODELS[:1])),
            "numa_node": draw(st.sampled_from([None, 0, 1])),
            "iommu_group": draw(st.integers(0, 3)),
            "health": health,
            "is_vf": draw(st.sampled_from([False, False, True])) if kind == "fpga" else False,
        }
        if kind in ("whole", "fpga"):
            base["claimed_by"] = draw(st.sampled_from([None, None, "old"]))
        elif kind == "mig":
            insts: list[str] = []
            for _ in range(draw(st.sampled_from([0, 0, 1, 2, 4]))):
                p = draw(st.sampled_from(H100_MIG_PROFILES))
                used = sum(PROFILE[i].slices for i in insts)
                if used + p.slices <= 7 and insts.count(p.name) < p.max_instances:
                    insts.append(p.name)
            base["mig"] = MigSnap(True, 7, H100_MIG_PROFILES, tuple(insts))
        else:
            active = draw(st.sampled_from([None, None, None, *TYPE_MAX]))
            claims = 0 if active is None else draw(st.integers(0, TYPE_MAX[active]))
            types = []
            for t, disp, m in L40S_TYPES:
                if active is None:
                    avail = m if claims == 0 else 0
                else:
                    avail = m - claims if t == active else 0
                types.append(MdevTypeSnap(t, disp, avail, m))
            base["mdev_types"] = tuple(types)
            base["active_mdev_type"] = active if claims else draw(st.sampled_from([None, active]))
            base["mdev_claims"] = claims
        pfs = [d.id for d in out if d.kind == base["kind"] and not d.is_vf]
        if base["is_vf"] and pfs:
            base["pf"] = draw(st.sampled_from([None, *pfs]))
        out.append(DeviceSnap(**base))  # type: ignore[arg-type]
    return tuple(out)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[ClusterSnapshot, list[PlacementRequest]]:
    hosts = []
    vms = []
    for i in range(draw(st.integers(1, 6))):
        name = f"h{i}"
        cpus = draw(st.integers(1, 16))
        mem = draw(st.integers(1, 16)) * 1024
        ncells = draw(st.integers(0, 2))
        cells = tuple(
            NumaCell(c, max(1, cpus // max(1, ncells)), mem // max(1, ncells),
                     used_cpus=draw(st.integers(0, 8)), used_memory_mib=draw(st.integers(0, 2048)))
            for c in range(ncells)
        )
        disk = draw(st.sampled_from([0, 100]))
        hosts.append(
            HostSnap(
                name=name,
                state=draw(st.sampled_from([HostState.UP] * 8 + [HostState.DOWN,
                                                                 HostState.MAINTENANCE])),
                cpus=cpus,
                memory_mib=mem,
                disk_gib=disk,
                used_vcpus=draw(st.integers(0, cpus * 5)) if draw(st.booleans()) else 0,
                used_memory_mib=draw(st.integers(0, mem)) // draw(st.sampled_from([1, 4])),
                used_disk_gib=draw(st.integers(0, disk)),
                numa_cells=cells,
                tags=frozenset(draw(st.sets(st.sampled_from(["ssd", "10g"])))),
                pool=draw(st.sampled_from(["default", "batch"])),
                devices=draw(devices(name)),
                cpu_load=draw(st.one_of(st.none(), st.floats(0, 1))),
            )
        )
        for k in range(draw(st.integers(0, 2))):
            vms.append(VMSnap(f"old-{i}-{k}", f"old-{i}-{k}", name, 1, 256))
    n_req = draw(st.integers(1, 10))
    new_ids = [f"new{j}" for j in range(n_req)]
    everyone = [v.id for v in vms] + new_ids
    groups = tuple(
        GroupSnap(
            f"g{k}",
            draw(st.sampled_from(["affinity", "anti-affinity"])),
            hard=draw(st.booleans()),
            members=frozenset(draw(st.sets(st.sampled_from(everyone)))) if everyone else
            frozenset(),
        )
        for k in range(draw(st.integers(0, 2)))
    )
    reqs = []
    for vm in new_ids:
        need = draw(st.sampled_from(["none", "gpu", "gpu", "mig", "vgpu", "fpga"]))
        kw: dict[str, object] = {}
        if need == "gpu":
            count = draw(st.sampled_from([1, 1, 2, 3]))
            kw["gpus"] = (GpuRequest(draw(st.sampled_from(MODELS)), count),)
        elif need == "mig":
            kw["mig_profile"] = draw(st.sampled_from(["1g.10gb", "2g.20gb", *PROFILE]))
        elif need == "vgpu":
            kw["vgpu_type"] = draw(st.sampled_from(["nvidia-1155", "NVIDIA L40S-8Q", *TYPE_MAX]))
        elif need == "fpga":
            kw["fpga_model"] = "ALVEO"
            kw["fpga_count"] = draw(st.sampled_from([0, 1, 1, 2]))
            kw["fpga_allow_vf"] = draw(st.booleans())
        mine = [g.name for g in groups if vm in g.members]
        reqs.append(
            PlacementRequest(
                vm,
                draw(st.integers(1, 6)),
                draw(st.integers(1, 6)) * 512,
                disk_gib=draw(st.sampled_from([0, 0, 10, 60])),
                groups=tuple(mine),
                required_tags=frozenset(draw(st.sampled_from([(), (), (), ("ssd",)]))),
                numa_strict=draw(st.sampled_from([False, False, False, True])),
                host=draw(st.sampled_from([None] * 9 + ["h0"])),
                **kw,  # type: ignore[arg-type]
            )
        )
    return ClusterSnapshot(tuple(hosts), tuple(vms), groups), reqs


CONFIGS = st.sampled_from(
    [
        SchedulerConfig(),
        SchedulerConfig(cpu_ratio=1.0, memory_ratio=1.5, default_strategy="pack"),  # type: ignore[arg-type]
        SchedulerConfig(cpu_ratio=2.5, reserved_host_cpus=1, reserved_host_memory_mib=512,
                        allow_unknown_device_health=False),
    ]
)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_batch(snap: ClusterSnapshot, reqs: list[PlacementRequest],
                 cfg: SchedulerConfig, ps: list[Placement]) -> None:
    hosts = {h.name: h for h in snap.hosts}
    by_vm = {r.vm_id: r for r in reqs}
    assert [p.vm_id for p in ps] == [r.vm_id for r in reqs]

    # explanation counts add up to the host count, always
    for p in ps:
        exp = p.explanation
        assert exp.hosts_total == len(snap.hosts)
        assert sum(exp.rejections().values()) + exp.hosts_passed == exp.hosts_total
        if not p.ok:
            assert exp.hosts_passed == 0 and p.devices == ()

    placed = [p for p in ps if p.ok]
    add_cpu: Counter[str] = Counter()
    add_mem: Counter[str] = Counter()
    add_disk: Counter[str] = Counter()
    for p in placed:
        assert p.host is not None
        h = hosts[p.host]
        r = by_vm[p.vm_id]
        # never on a down or maintenance host, never off the pinned host
        assert h.state == HostState.UP
        assert r.host is None or r.host == p.host
        assert r.required_tags <= h.tags
        add_cpu[p.host] += r.vcpus
        add_mem[p.host] += r.memory_mib
        add_disk[p.host] += r.disk_gib

    # never beyond the overcommit ratios
    for name in add_cpu:
        h = hosts[name]
        assert h.used_vcpus + add_cpu[name] <= max(0, h.cpus - cfg.reserved_host_cpus) * \
            cfg.cpu_ratio + 1e-9
        assert h.used_memory_mib + add_mem[name] <= max(
            0, h.memory_mib - cfg.reserved_host_memory_mib) * cfg.memory_ratio + 1e-9
        if h.disk_gib:
            assert h.used_disk_gib + add_disk[name] <= h.disk_gib

    # anti-affinity always held (hard groups); affinity joins members on up hosts
    old_host = {v.id: v.host for v in snap.vms}
    new_host = {p.vm_id: p.host for p in placed}
    for g in snap.groups:
        if not g.hard:
            continue
        for vm, where in new_host.items():
            if g.name not in by_vm[vm].groups:
                continue
            others = [m for m in g.members | {v for v in new_host if g.name in by_vm[v].groups}
                      if m != vm]
            hosts_of_others = {new_host.get(m) or old_host.get(m) for m in others} - {None}
            if g.policy == "anti-affinity":
                assert where not in hosts_of_others, (g, vm, where)

    # a device is never claimed twice; shared devices stay within their limits
    devs = {d.id: d for h in snap.hosts for d in h.devices}
    whole_owner: dict[str, str] = {}
    vgpu: dict[str, list[str]] = defaultdict(list)
    mig: dict[str, list[str]] = defaultdict(list)
    for p in placed:
        r = by_vm[p.vm_id]
        kinds = Counter(d.kind for d in p.devices)
        assert kinds["gpu"] == sum(g.count for g in r.gpus)
        assert kinds["vgpu"] == (1 if r.vgpu_type else 0)
        assert kinds["mig"] == (1 if r.mig_profile else 0)
        assert kinds["fpga"] == (max(1, r.fpga_count) if r.fpga_model else 0)
        if r.numa_strict and p.devices and hosts[p.host].numa_cells:
            assert len({d.numa_node for d in p.devices}) == 1
            assert p.devices[0].numa_node is not None
        for c in p.devices:
            d = devs[c.device_id]
            assert d.host == p.host
            assert d.health != DeviceHealth.TAINTED
            if c.kind in ("gpu", "fpga"):
                assert d.claimed_by is None and d.mdev_claims == 0
                assert not (d.mig and d.mig.instances)
                assert c.device_id not in whole_owner
                whole_owner[c.device_id] = p.vm_id
                if c.kind == "gpu":
                    assert not d.is_vf
            elif c.kind == "vgpu":
                assert c.profile is not None
                vgpu[c.device_id].append(c.profile)
            else:
                assert c.profile is not None
                mig[c.device_id].append(c.profile)
    vfs_of = defaultdict(list)
    for d in devs.values():
        if d.pf is not None and d.pf in devs:
            vfs_of[d.pf].append(d.id)
    for dev_id, owner in whole_owner.items():
        d = devs[dev_id]
        assert dev_id not in vgpu and dev_id not in mig
        assert not vfs_of[dev_id], "a PF with VFs went whole"
        if d.pf is not None and d.pf in devs:
            pf = devs[d.pf]
            assert pf.claimed_by is None and d.pf not in whole_owner
        if d.iommu_group is None:
            continue
        for mate in hosts[d.host].devices:
            if mate.id == dev_id or mate.iommu_group != d.iommu_group:
                continue
            assert mate.claimed_by is None and mate.mdev_claims == 0
            assert not (mate.mig and mate.mig.instances)
            assert whole_owner.get(mate.id, owner) == owner
            assert mate.id not in vgpu and mate.id not in mig
    for dev_id, types in vgpu.items():
        d = devs[dev_id]
        assert d.claimed_by is None
        assert len(set(types)) == 1
        t = types[0]
        if d.active_mdev_type is not None:
            assert t == d.active_mdev_type
        else:
            assert d.mdev_claims == 0
        avail = next(m.available for m in d.mdev_types if m.name == t)
        assert len(types) <= avail
    for dev_id, profiles in mig.items():
        d = devs[dev_id]
        assert d.mig is not None and d.mig.enabled and d.claimed_by is None
        allp = list(d.mig.instances) + profiles
        assert sum(PROFILE[x].slices for x in allp) <= d.mig.total_slices
        for name, n in Counter(allp).items():
            assert n <= PROFILE[name].max_instances


@SETTINGS
@given(clusters(), CONFIGS)
def test_batch_placement_keeps_every_invariant(
    case: tuple[ClusterSnapshot, list[PlacementRequest]], cfg: SchedulerConfig
) -> None:
    snap, reqs = case
    ps = Scheduler(cfg).place_batch(snap, reqs)
    _check_batch(snap, reqs, cfg, ps)


@SETTINGS
@given(clusters(), CONFIGS)
def test_single_placements_keep_every_invariant(
    case: tuple[ClusterSnapshot, list[PlacementRequest]], cfg: SchedulerConfig
) -> None:
    snap, reqs = case
    sched = Scheduler(cfg)
    for r in reqs:
        p = sched.place(snap, r, explain=True)
        _check_batch(snap, [r], cfg, [p])
        for ranked in p.ranked:  # every ranked host's device pick is valid on its own too
            alt = Placement(p.vm_id, ranked.host, ranked.devices, (), p.explanation)
            _check_batch(snap, [r], cfg, [alt])


@SETTINGS
@given(clusters(), CONFIGS, st.integers(0, 5))
def test_vector_filters_agree_with_per_host_filters(
    case: tuple[ClusterSnapshot, list[PlacementRequest]], cfg: SchedulerConfig, warm: int
) -> None:
    """The arrays the scheduler filters with say exactly what the per-host rules say, also
    after some batch claims have changed the working state."""
    snap, reqs = case
    sched = Scheduler(cfg)
    ix = sched.index(snap)
    state = WorkingState(ix)
    for r in reqs[:warm]:  # claim a few first, through the batch machinery
        d = ix.demand(r)
        placement, pick = sched._decide(state, d, False, 1)
        if pick is not None:
            state.claim(pick[0], d, pick[1], pick[2])
    for r in reqs:
        ctx = FilterContext(state, ix.demand(r))
        for cls in BUILTIN_FILTERS.values():
            f = cls()
            if not f.applies(r, ctx):
                continue
            vec = f.mask(ix.all_idx, r, ctx).tolist()
            one = [f.passes(HostView(i, ix.hosts[i]), r, ctx) is None for i in range(ix.n)]
            assert vec == one, (f.name, r)
            for i, ok in enumerate(one):
                if not ok:
                    assert f.passes(HostView(i, ix.hosts[i]), r, ctx)  # a non-empty reason


def test_property_helpers_catch_a_double_claim() -> None:
    """The invariant checker itself fails on a placement that claims a device twice."""
    from vmmgr.scheduler.synthetic import gpu, host

    snap = ClusterSnapshot((host("a", devices=[gpu("a", 0)]),))
    reqs = [PlacementRequest("x", 1, 512, gpus=(GpuRequest("H100-80GB"),)),
            PlacementRequest("y", 1, 512, gpus=(GpuRequest("H100-80GB"),))]
    ok = Scheduler().place_batch(snap, reqs)
    _check_batch(snap, reqs, SchedulerConfig(), ok)
    forged = [ok[0], Placement("y", "a", ok[0].devices, (), ok[0].explanation)]
    try:
        _check_batch(snap, reqs, SchedulerConfig(), forged)
    except AssertionError:
        return
    raise AssertionError("double claim went unnoticed")


def test_numpy_is_not_leaking_into_results() -> None:
    from vmmgr.scheduler.synthetic import cluster, requests

    p = Scheduler().place(cluster(20, seed=1), requests(1, seed=1)[0], explain=True)
    assert all(type(r.score) is float for r in p.ranked)
    assert all(type(v) is float for r in p.ranked for _, v in r.weights)
    assert all(type(f.rejected) is int for f in p.explanation.filters)
    assert not isinstance(p.explanation.hosts_passed, np.integer)


def _perturb(snap: ClusterSnapshot, seed: int) -> ClusterSnapshot:
    """Taint, claim and group some devices of a synthetic cluster; take some hosts down."""
    import dataclasses
    import random

    rnd = random.Random(seed)
    hosts = []
    for h in snap.hosts:
        devs = []
        for d in h.devices:
            r = rnd.random()
            if r < 0.05:
                d = dataclasses.replace(d, health=DeviceHealth.TAINTED)
            elif r < 0.10 and d.mig is None and not d.mdev_types:
                d = dataclasses.replace(d, claimed_by="old")
            elif r < 0.15:
                d = dataclasses.replace(d, iommu_group=0)  # share a group with other devices
            elif r < 0.25 and d.mig is not None:
                d = dataclasses.replace(d, mig=dataclasses.replace(d.mig, instances=("3g.40gb",)))
            devs.append(d)
        state = HostState.DOWN if rnd.random() < 0.05 else h.state
        hosts.append(dataclasses.replace(h, devices=tuple(devs), state=state))
    return dataclasses.replace(snap, hosts=tuple(hosts))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 40), st.integers(0, 10**6), CONFIGS)
def test_synthetic_batches_keep_every_invariant(
    n_hosts: int, seed: int, cfg: SchedulerConfig
) -> None:
    """Realistic device-heavy clusters and mixed streams (many device placements per run)."""
    from vmmgr.scheduler.synthetic import ClusterMix, cluster, requests

    mix = ClusterMix(whole_gpu=0.3, mig=0.25, vgpu=0.25, fpga=0.1, fill=0.2)
    snap = _perturb(cluster(n_hosts, seed=seed, mix=mix), seed)
    reqs = requests(n_hosts * 6, seed=seed + 1)
    ps = Scheduler(cfg).place_batch(snap, reqs)
    _check_batch(snap, reqs, cfg, ps)
