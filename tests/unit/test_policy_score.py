"""The one scorer, the plan stages, and the slot bookkeeping the planners share."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_policy_support import cluster, vgpu_device, vm

from policies.devices import accel_use, release_mig, take_mig
from policies.plan import CreateVM, Fence, Move, Plan, PowerOff, StartVM, disjoint_stages
from policies.score import Weights, cluster_score, score_breakdown
from vmmgr.snapshot import (
    DeviceKind,
    DeviceSnap,
    HostSnap,
    HostState,
    MigProfileSnap,
    MigSnap,
    PlacementRequest,
)


def test_score_is_weighted_std_of_cpu_and_memory_over_up_hosts() -> None:
    hosts = [
        HostSnap("a", HostState.UP, 8, 8192),
        HostSnap("b", HostState.UP, 8, 8192),
        HostSnap("m", HostState.MAINTENANCE, 8, 8192),
    ]
    snap = cluster(hosts, [vm("x", "a", 8, 4096), vm("y", "m", 8, 8192)])
    b = score_breakdown(snap, Weights(cpu=2.0, memory=1.0))
    assert b["cpu"] == pytest.approx(np.std([1.0, 0.0]))
    assert b["memory"] == pytest.approx(np.std([0.5, 0.0]))
    assert b["gpu"] == 0.0 and b["slots"] == 0.0
    assert b["total"] == pytest.approx(2 * 0.5 + 0.25)
    assert cluster_score(snap, Weights(cpu=2.0, memory=1.0)) == pytest.approx(b["total"])


def test_even_cluster_scores_zero_and_a_single_host_cannot_spread() -> None:
    even = cluster([("a", 4, 4096), ("b", 8, 8192)], [vm("x", "a", 2, 2048), vm("y", "b", 4, 4096)])
    assert cluster_score(even) == 0.0
    assert cluster_score(cluster([("a", 4, 4096)], [vm("x", "a")])) == 0.0


def test_cpu_uses_telemetry_only_when_every_up_host_reports_it() -> None:
    hosts = [
        HostSnap("a", HostState.UP, 8, 8192, cpu_load=0.8),
        HostSnap("b", HostState.UP, 8, 8192),
    ]
    snap = cluster(hosts, [vm("x", "a", 1, 1024), vm("y", "b", 1, 1024)])
    assert score_breakdown(snap)["cpu"] == 0.0  # falls back to vCPU ratio: even
    hosts[1] = HostSnap("b", HostState.UP, 8, 8192, cpu_load=0.2)
    snap = cluster(hosts, [vm("x", "a", 1, 1024), vm("y", "b", 1, 1024)])
    assert score_breakdown(snap)["cpu"] == pytest.approx(0.3)


def test_gpu_and_slot_metrics_only_count_hosts_that_have_them() -> None:
    hosts = [
        HostSnap("a", HostState.UP, 8, 8192, devices=(vgpu_device("a", "01", claims=4, util=0.9),)),
        HostSnap("b", HostState.UP, 8, 8192, devices=(vgpu_device("b", "01", claims=0, util=0.1),)),
        HostSnap("c", HostState.UP, 8, 8192),
    ]
    b = score_breakdown(cluster(hosts))
    assert b["gpu"] == pytest.approx(0.4)
    assert b["slots"] == pytest.approx(0.5)  # 4/4 vs 0/4, host c not counted


def mig_gpu() -> DeviceSnap:
    profiles = (MigProfileSnap("1g.10gb", 1, 9984, 7), MigProfileSnap("3g.40gb", 3, 40192, 2))
    return DeviceSnap(
        "h/01",
        "h",
        "01",
        DeviceKind.GPU,
        0x10DE,
        0x2330,
        "H100",
        mig=MigSnap(True, 7, profiles, ("3g.40gb", "3g.40gb")),
    )


def test_mig_slices_are_taken_and_released() -> None:
    devs = (mig_gpu(),)
    assert take_mig(devs, "3g.40gb") is None  # max 2 instances
    got = take_mig(devs, "1g.10gb")
    assert got is not None
    assert got[0][0].mig is not None and got[0][0].mig.used_slices == 7
    assert take_mig(got[0], "1g.10gb") is None  # 7 of 7 slices used
    back, i = release_mig(got[0], "1g.10gb")
    assert i == 0 and back == devs
    assert accel_use(devs).slot_used == 6 and accel_use(devs).slot_cap == 7


def test_disjoint_stages_keep_per_host_order_and_run_unrelated_work_together() -> None:
    acts = [
        Move("v1", "a", "b"),
        Move("v2", "c", "d"),
        Move("v3", "b", "e"),  # touches b: after v1
        Move("v4", "f", "g"),
        PowerOff("a"),  # after v1
        CreateVM(PlacementRequest("n", 1, 512)),
    ]
    stages = disjoint_stages(acts)
    assert stages[0] == (acts[0], acts[1], acts[3])
    assert stages[1] == (acts[2], acts[4])
    assert stages[2] == (acts[5],)
    for stage in stages:
        hosts = [h for a in stage if isinstance(a, Move) for h in (a.src, a.dst)]
        assert len(hosts) == len(set(hosts))


def test_plan_helpers() -> None:
    p = Plan("x", ((Fence("h"),), (StartVM("v", "g"),)))
    assert not p.empty and p.actions() == [Fence("h"), StartVM("v", "g")]
    assert Plan("x").empty and Plan("x", ((),)).empty
    assert math.isclose(cluster_score(cluster([])), 0.0)
