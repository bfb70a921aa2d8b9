"""Scheduler weighers and device choice: which host and which device wins, and why."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vmmgr.scheduler import (
    FilterContext,
    HostView,
    Scheduler,
    SchedulerConfig,
    Strategy,
    normalise,
)
from vmmgr.scheduler.synthetic import L40S_TYPES, gpu, host
from vmmgr.snapshot import (
    ClusterSnapshot,
    GpuRequest,
    GroupSnap,
    MdevTypeSnap,
    PlacementRequest,
    VMSnap,
)

ONLY = {
    name: 0.0
    for name in (
        "balance",
        "accelerator_reserve",
        "gpu_fragmentation",
        "numa_alignment",
        "load",
        "soft_affinity",
    )
}


def only(name: str, **cfg: object) -> Scheduler:
    """A scheduler where a single weigher decides."""
    mult = dict(ONLY, **{name: 1.0})
    return Scheduler(SchedulerConfig(weigher_multipliers=mult, **cfg))  # type: ignore[arg-type]


def req(vm: str = "vm1", vcpus: int = 2, mem: int = 1024, **kw: object) -> PlacementRequest:
    return PlacementRequest(vm, vcpus, mem, **kw)  # type: ignore[arg-type]


def snap(*hosts: object, **kw: object) -> ClusterSnapshot:
    return ClusterSnapshot(hosts=tuple(hosts), **kw)  # type: ignore[arg-type]


def test_normalise_min_max_and_flat() -> None:
    assert normalise(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalise(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]


def test_spread_prefers_the_emptiest_and_pack_the_fullest() -> None:
    s = snap(host("busy", used_vcpus=100, used_memory_mib=200_000), host("idle"))
    assert only("balance").place(s, req()).host == "idle"
    packing = only("balance", default_strategy=Strategy.PACK)
    assert packing.place(s, req()).host == "busy"


def test_strategy_is_per_pool() -> None:
    s = snap(
        host("p-busy", used_vcpus=100, pool="batch"),
        host("p-idle", pool="batch"),
    )
    sched = only("balance", pool_strategies={"batch": Strategy.PACK})
    assert sched.place(s, req()).host == "p-busy"
    assert sched.config.strategy("batch") == Strategy.PACK
    assert sched.config.strategy("other") == Strategy.SPREAD


def test_cpu_only_vm_keeps_off_accelerator_hosts() -> None:
    s = snap(host("gpu", devices=[gpu("gpu", 0)]), host("plain", used_vcpus=200))
    assert Scheduler().place(s, req()).host == "plain"
    assert only("balance").place(s, req()).host == "gpu"  # without the reserve it would not


def test_load_prefers_the_quiet_host() -> None:
    s = snap(host("hot", cpu_load=0.9), host("cold", cpu_load=0.1), host("unknown"))
    assert only("load").place(s, req()).host == "cold"
    s2 = snap(host("hot", cpu_load=0.9), host("unknown"))
    assert only("load").place(s2, req()).host == "unknown"  # unknown counts as 0.5


def test_numa_alignment_prefers_a_host_where_one_cell_holds_the_vm() -> None:
    # "split": 16 free vCPUs per cell; "whole": 32 in one cell
    s = snap(host("split", cpus=8, cells=2), host("whole", cpus=8, cells=1))
    assert only("numa_alignment").place(s, req(vcpus=20)).host == "whole"


def test_soft_affinity_joins_members() -> None:
    vms = (VMSnap("m1", "m1", "b", 1, 512),)
    g = GroupSnap("g", "affinity", hard=False, members=frozenset({"m1"}))
    s = snap(host("a"), host("b"), vms=vms, groups=(g,))
    assert only("soft_affinity").place(s, req(groups=("g",))).host == "b"


def test_whole_gpu_best_fit_leaves_multi_gpu_hosts_whole() -> None:
    s = snap(
        host("eight", devices=[gpu("eight", n) for n in range(8)]),
        host("one", devices=[gpu("one", 0)]),
    )
    p = only("gpu_fragmentation").place(s, req(gpus=(GpuRequest("H100-80GB"),)))
    assert p.host == "one"


def test_mig_goes_to_the_partly_used_gpu() -> None:
    used = gpu("a", 1, mig=True)
    assert used.mig is not None
    used = dataclasses.replace(used, mig=dataclasses.replace(used.mig, instances=("3g.40gb",)))
    s = snap(
        host("fresh", devices=[gpu("fresh", 0, mig=True)]),
        host("a", devices=[gpu("a", 0, mig=True), used]),
    )
    p = only("gpu_fragmentation").place(s, req(mig_profile="1g.10gb"))
    assert p.host == "a"
    assert p.devices[0].device_id == "a/0000:11:00.0"  # the partly used GPU, not the free one
    assert Scheduler().place(s, req(mig_profile="1g.10gb")).host == "a"  # defaults agree


def test_vgpu_goes_to_a_gpu_already_running_that_type() -> None:
    types = tuple(MdevTypeSnap(t, d, m, m) for t, d, m in L40S_TYPES)
    running = tuple(
        dataclasses.replace(t, available=t.available - 1) if t.name == "nvidia-1156" else t
        for t in types
    )
    s = snap(
        host("fresh", devices=[gpu("fresh", 0, model="L40S", mdev_types=types)]),
        host(
            "shared",
            devices=[
                gpu("shared", 0, model="L40S", mdev_types=types),
                gpu("shared", 1, model="L40S", mdev_types=running,
                    active_mdev_type="nvidia-1156", mdev_claims=1),
            ],
        ),
    )
    p = only("gpu_fragmentation").place(s, req(vgpu_type="nvidia-1156"))
    assert p.host == "shared" and p.devices[0].device_id == "shared/0000:11:00.0"


def test_whole_gpus_prefer_one_numa_cell() -> None:
    devs = [gpu("a", 0, numa=0), gpu("a", 1, numa=1), gpu("a", 2, numa=1)]
    p = Scheduler().place(snap(host("a", devices=devs)), req(gpus=(GpuRequest("H100-80GB", 2),)))
    assert {d.numa_node for d in p.devices} == {1}


def test_scores_are_the_sum_of_the_breakdown_and_ranked_best_first() -> None:
    s = snap(*(host(f"h{i}", used_vcpus=10 * i, cpu_load=i / 10) for i in range(6)))
    p = Scheduler().place(s, req())
    assert len(p.ranked) == 6
    scores = [r.score for r in p.ranked]
    assert scores == sorted(scores, reverse=True)
    for r in p.ranked:
        assert r.score == pytest.approx(sum(v for _, v in r.weights))
    assert p.ranked[0].host == p.host == "h0"
    assert len(Scheduler(SchedulerConfig(ranked_limit=2)).place(s, req()).ranked) == 2
    assert len(Scheduler().place(s, req(), ranked=3).ranked) == 3


def test_ties_break_by_snapshot_order() -> None:
    s = snap(host("b"), host("a"), host("c"))
    assert Scheduler().place(s, req()).host == "b"


def test_custom_filter_and_weigher() -> None:
    class NoOdd:
        name = "no_odd"

        def passes(self, h: HostView, r: PlacementRequest, ctx: FilterContext) -> str | None:
            return "odd" if int(h.name[1:]) % 2 else None

    class Biggest:
        name = "biggest"
        multiplier = 1.0

        def weigh(self, h: HostView, r: PlacementRequest, ctx: FilterContext) -> float:
            return float(int(h.name[1:]))

    s = snap(*(host(f"h{i}") for i in range(5)))
    p = Scheduler(filters=[NoOdd()], weighers=[Biggest()]).place(s, req(), explain=True)
    assert p.host == "h4"
    assert p.explanation.rejections() == {"no_odd": 2}
    assert p.ranked[0].weights == (("biggest", 1.0),)


def test_weighers_scalar_and_vector_agree() -> None:
    from vmmgr.scheduler import BUILTIN_WEIGHERS
    from vmmgr.scheduler.synthetic import cluster, requests
    from vmmgr.scheduler.working import WorkingState

    snapshot = cluster(30, seed=3)
    sched = Scheduler()
    ix = sched.index(snapshot)
    state = WorkingState(ix)
    for r in requests(40, seed=4):
        ctx = FilterContext(state, ix.demand(r))
        for cls in BUILTIN_WEIGHERS.values():
            w = cls()
            many = w.weigh_many(ix.all_idx, r, ctx)
            one = [w.weigh(HostView(i, ix.hosts[i]), r, ctx) for i in range(ix.n)]
            if many is None:
                assert one == [0.0] * ix.n
            else:
                assert one == pytest.approx(many.tolist())
