"""Batch placement, explanations, validation, config and purity of the scheduler."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from vmmgr.errors import InvalidArgument, NoHostFits
from vmmgr.scheduler import (
    DEVICE_ASSIGNMENT,
    BatchOrder,
    Scheduler,
    SchedulerConfig,
    no_host_fits,
)
from vmmgr.scheduler.synthetic import cluster, gpu, host, requests
from vmmgr.snapshot import (
    ClusterSnapshot,
    GpuRequest,
    GroupSnap,
    HostState,
    PlacementRequest,
    VMSnap,
)


def req(vm: str = "vm1", vcpus: int = 2, mem: int = 1024, **kw: object) -> PlacementRequest:
    return PlacementRequest(vm, vcpus, mem, **kw)  # type: ignore[arg-type]


def snap(*hosts: object, **kw: object) -> ClusterSnapshot:
    return ClusterSnapshot(hosts=tuple(hosts), **kw)  # type: ignore[arg-type]


# -- batch --


def test_batch_claims_are_consistent_across_requests() -> None:
    s = snap(host("a", devices=[gpu("a", 0), gpu("a", 1)]), host("b", devices=[gpu("b", 0)]))
    rs = [req(f"v{i}", gpus=(GpuRequest("H100-80GB"),)) for i in range(4)]
    ps = Scheduler().place_batch(s, rs)
    placed = [p for p in ps if p.ok]
    assert len(placed) == 3
    ids = [d.device_id for p in placed for d in p.devices]
    assert len(ids) == len(set(ids)) == 3
    assert ps[3].host is None
    assert ps[3].explanation.rejections()["gpu"] == 2


def test_batch_respects_capacity_left_by_earlier_decisions() -> None:
    s = snap(host("a", cpus=2), host("b", cpus=2))  # 8 vCPUs each at ratio 4
    ps = Scheduler().place_batch(s, [req(f"v{i}", vcpus=4) for i in range(5)])
    hosts = [p.host for p in ps]
    assert hosts.count("a") == 2 and hosts.count("b") == 2 and hosts[4] is None


def test_batch_anti_affinity_spreads_new_members() -> None:
    g = GroupSnap("g", "anti-affinity", members=frozenset({"v0", "v1", "v2"}))
    s = snap(host("a"), host("b"), host("c"), groups=(g,))
    ps = Scheduler().place_batch(s, [req(f"v{i}", groups=("g",)) for i in range(4)])
    assert sorted(p.host for p in ps[:3] if p.host) == ["a", "b", "c"]
    assert ps[3].host is None and ps[3].explanation.rejections()["affinity"] == 3


def test_batch_vgpu_and_mig_claims_accumulate() -> None:
    s = snap(host("a", devices=[gpu("a", 0, mig=True)]))
    ps = Scheduler().place_batch(s, [req(f"v{i}", mig_profile="3g.40gb") for i in range(3)])
    assert [p.ok for p in ps] == [True, True, False]  # 2 x 3 slices of 7; max_instances 2
    s2 = snap(host("a", devices=[gpu("a", 0, model="L40S", vgpu=True)]))
    mixed = [req("x", vgpu_type="nvidia-1158"), req("y", vgpu_type="nvidia-1155"),
             req("z", vgpu_type="nvidia-1158"), req("w", vgpu_type="nvidia-1158")]
    ok = [p.ok for p in Scheduler().place_batch(s2, mixed)]
    assert ok == [True, False, True, False]  # one type per GPU, 2 x 24Q per L40S


def test_mixed_vgpu_models_share_framebuffer() -> None:
    s = snap(host("a", devices=[gpu("a", 0, model="L40S", vgpu=True)]))
    sched = Scheduler(SchedulerConfig(mixed_vgpu_models=frozenset({"l40s"})))
    rs = [req("x", vgpu_type="nvidia-1158"), req("y", vgpu_type="nvidia-1155"),
          req("z", vgpu_type="nvidia-1158")]
    # 24Q takes half the framebuffer; a 4Q (1/12) fits beside it; then 24Q no longer does
    assert [p.ok for p in sched.place_batch(s, rs)] == [True, True, False]


def test_batch_largest_first_packs_better_and_keeps_input_order() -> None:
    s = snap(host("a", cpus=2, memory_mib=8192), host("b", cpus=2, memory_mib=8192))
    rs = [req("small1", mem=2048), req("small2", mem=2048), req("big1", mem=8192),
          req("big2", mem=4096)]
    given = Scheduler().place_batch(s, rs)
    assert given[2].host is None  # the two small ones spread and block the big one
    ordered = Scheduler().place_batch(s, rs, order=BatchOrder.LARGEST_FIRST)
    assert [p.vm_id for p in ordered] == ["small1", "small2", "big1", "big2"]
    assert all(p.ok for p in ordered)


def test_batch_rejects_duplicate_vm_ids_and_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as e:
        Scheduler().place_batch(snap(host("a")), [req("x"), req("x")])
    assert e.value.field == "requests[1].vm_id"
    with pytest.raises(InvalidArgument) as e2:
        Scheduler().place_batch(snap(host("a")), [req("x"), req("y", vcpus=0)])
    assert e2.value.field == "requests[1].vcpus"


def test_batch_never_mutates_the_snapshot_or_later_decisions() -> None:
    s = cluster(40, seed=5)
    before = copy.deepcopy(s)
    sched = Scheduler()
    single_before = sched.place(s, req("probe", gpus=(GpuRequest("H100-80GB", 2),)))
    sched.place_batch(s, requests(300, seed=6))
    assert s == before
    single_after = sched.place(s, req("probe", gpus=(GpuRequest("H100-80GB", 2),)))
    assert single_after == single_before


def test_index_is_cached_per_snapshot_object() -> None:
    sched = Scheduler()
    s = snap(host("a"))
    assert sched.index(s) is sched.index(s)
    assert sched.index(snap(host("a"))) is not sched.index(s)


# -- explanations --


def test_no_host_fits_counts_add_up_and_raise_with_them() -> None:
    s = snap(
        host("down", state=HostState.DOWN),
        host("small", cpus=1),
        host("nogpu"),
        host("gpu", devices=[gpu("gpu", 0, claimed_by="x")]),
    )
    p = Scheduler().place(s, req(vcpus=8, gpus=(GpuRequest("H100-80GB"),)))
    assert not p.ok and p.devices == () and p.ranked == ()
    rej = p.explanation.rejections()
    assert rej["host_state"] == 1 and rej["vcpu"] == 1 and rej["gpu"] == 2
    assert sum(rej.values()) + p.explanation.hosts_passed == p.explanation.hosts_total == 4
    gpu_report = next(f for f in p.explanation.filters if f.name == "gpu")
    assert [h for h, _ in gpu_report.samples] == ["nogpu", "gpu"]  # samples even unasked
    with pytest.raises(NoHostFits) as e:
        p.require()
    assert e.value.rejections == {"host_state": 1, "vcpu": 1, "gpu": 2}
    assert e.value.details["rejected_by.gpu"] == "2"
    assert "0 of 4 hosts passed" in str(no_host_fits(p))
    lines = p.explanation.lines()
    assert lines[0] == "0 of 4 hosts passed all filters"
    assert "gpu: rejected 2" in lines


def test_successful_placement_has_counts_but_samples_only_when_explaining() -> None:
    s = snap(host("a", state=HostState.DOWN), host("b"))
    quiet = Scheduler().place(s, req())
    assert quiet.require() is quiet
    rep = next(f for f in quiet.explanation.filters if f.name == "host_state")
    assert rep.rejected == 1 and rep.samples == ()
    loud = Scheduler().place(s, req(), explain=True)
    rep2 = next(f for f in loud.explanation.filters if f.name == "host_state")
    assert rep2.sample_lines() == ["a: host is down"]


def test_explain_lists_devices_for_every_ranked_host() -> None:
    s = snap(*(host(f"g{i}", devices=[gpu(f"g{i}", 0)]) for i in range(3)))
    p = Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB"),)), explain=True)
    assert [len(r.devices) for r in p.ranked] == [1, 1, 1]
    assert p.ranked[1].devices[0].device_id.startswith(p.ranked[1].host + "/")
    quiet = Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB"),)))
    assert len(quiet.ranked[0].devices) == 1 and quiet.ranked[1].devices == ()


def test_conflicting_needs_fall_to_device_assignment() -> None:
    # one free GPU offers both a whole passthrough and a vGPU: counts pass, one device cannot
    s = snap(host("a", devices=[gpu("a", 0, vgpu=True)]), host("b"))
    r = req(gpus=(GpuRequest("H100-80GB"),), vgpu_type="nvidia-1155")
    p = Scheduler().place(s, r)
    assert not p.ok
    rej = p.explanation.rejections()
    assert rej[DEVICE_ASSIGNMENT] == 1 and rej["gpu"] == 1
    assert sum(rej.values()) == 2 and p.explanation.hosts_passed == 0


# -- validation and config --


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"vcpus": 0}, "vcpus"),
        ({"mem": 0}, "memory_mib"),
        ({"disk_gib": -1}, "disk_gib"),
        ({"gpus": (GpuRequest("H100-80GB", 0),)}, "gpus[0].count"),
        ({"gpus": (GpuRequest(""),)}, "gpus[0].model"),
        ({"fpga_count": 1}, "fpga_model"),
        ({"fpga_model": "X", "fpga_count": -1}, "fpga_count"),
        ({"vgpu_type": "a", "mig_profile": "b"}, "mig_profile"),
        ({"groups": ("nope",)}, "groups"),
        ({"vm": ""}, "vm_id"),
    ],
)
def test_bad_requests_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        Scheduler().place(snap(host("a")), req(**kw))
    assert e.value.field == field


def test_bad_snapshots_are_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        Scheduler().place(snap(host("a"), host("a")), req())
    assert e.value.field == "snapshot.hosts"
    g = GroupSnap("g", "together")
    with pytest.raises(InvalidArgument) as e2:
        Scheduler().place(snap(host("a"), groups=(g,)), req())
    assert e2.value.field == "snapshot.groups"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"cpu_ratio": 0}, "cpu_ratio"),
        ({"memory_ratio": float("nan")}, "memory_ratio"),
        ({"reserved_host_cpus": -1}, "reserved_host_cpus"),
        ({"ranked_limit": 0}, "ranked_limit"),
        ({"unknown_load": 2.0}, "unknown_load"),
        ({"enabled_filters": ("vcpu", "warp")}, "enabled_filters"),
        ({"weigher_multipliers": {"nope": 1.0}}, "weigher_multipliers"),
        ({"weigher_multipliers": {"load": float("inf")}}, "weigher_multipliers"),
        ({"pool_strategies": {"p": "scatter"}}, "pool_strategies"),
        ({"default_strategy": "scatter"}, "default_strategy"),
    ],
)
def test_bad_config_names_the_knob(kw: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        SchedulerConfig(**kw)
    assert e.value.field == field


def test_config_merges_multipliers_and_drops_zero_weighers() -> None:
    cfg = SchedulerConfig(weigher_multipliers={"load": 0.0, "balance": 3.0})
    assert cfg.weigher_multipliers["balance"] == 3.0
    assert cfg.weigher_multipliers["gpu_fragmentation"] == 2.0
    names = [w.name for w, _ in Scheduler(cfg).weighers]
    assert "load" not in names and "balance" in names


def test_vm_being_replaced_keeps_its_old_usage_counted() -> None:
    # recovery: the VM sits on a down host in the snapshot; its usage there never blocks others
    vms = (VMSnap("v", "v", "dead", 2, 1024),)
    s = snap(host("dead", state=HostState.DOWN, used_vcpus=2), host("b"), vms=vms)
    assert Scheduler().place(s, req("v")).host == "b"


def test_disabled_device_filter_leaves_device_choice_to_catch_it() -> None:
    # without the mig filter, hosts lacking MIG reach device choice; scores stay finite and the
    # MIG host still wins, the others are charged to device_assignment when walked
    names = tuple(n for n in SchedulerConfig().enabled_filters if n != "mig")
    s = snap(host("plain1"), host("mig", devices=[gpu("mig", 0, mig=True)]), host("plain2"))
    p = Scheduler(SchedulerConfig(enabled_filters=names)).place(
        s, req(mig_profile="1g.10gb"), explain=True
    )
    assert p.host == "mig"
    assert all(np.isfinite(r.score) for r in p.ranked)
    rej = p.explanation.rejections()
    assert "mig" not in rej
    assert sum(rej.values()) + p.explanation.hosts_passed == 3
