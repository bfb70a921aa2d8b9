"""Recovery decisions: failure detection, fence-storm guard, HA restart plans, crash restarts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from test_policy_support import cluster, vm

from policies.plan import Fence, StartVM
from policies.recover import (
    CrashPolicy,
    DetectorConfig,
    FenceGuardConfig,
    Health,
    HostObservation,
    default_place_batch,
    detect,
    detect_all,
    guard_fences,
    on_crash,
    plan_restarts,
    restart_request,
    without_hosts,
)
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    DeviceSnap,
    GpuRequest,
    GroupSnap,
    HostSnap,
    HostState,
    PlacementRequest,
)

CFG = DetectorConfig(heartbeat_timeout_s=10.0, grace_s=30.0)


def obs(alive: bool, beat: float | None, host: str = "h") -> HostObservation:
    return HostObservation(host, alive, beat)


# -- detection ----------------------------------------------------------------------------------
def test_both_channels_up_is_healthy() -> None:
    h = detect(None, obs(True, 95.0), 100.0, CFG)
    assert h.state == Health.HEALTHY and h.since == 100.0


@pytest.mark.parametrize(
    ("alive", "beat", "why"),
    [
        (False, 99.0, "libvirt connection down"),
        (True, 50.0, "agent heartbeat stale"),
        (True, None, "agent heartbeat stale"),
    ],
)
def test_one_channel_down_is_only_suspect_however_long(
    alive: bool, beat: float | None, why: str
) -> None:
    h = detect(None, obs(alive, beat), 100.0, CFG)
    assert h.state == Health.SUSPECT and h.reason == why
    later = detect(h, obs(alive, beat if beat is None else beat + 900.0), 1000.0, CFG)
    assert later.state == Health.SUSPECT and later.since == 100.0


def test_both_down_fails_only_after_the_grace_period() -> None:
    t0 = detect(None, obs(False, 50.0), 100.0, CFG)
    assert t0.state == Health.SUSPECT and t0.both_down_since == 100.0
    t1 = detect(t0, obs(False, 50.0), 129.0, CFG)
    assert t1.state == Health.SUSPECT
    t2 = detect(t1, obs(False, 50.0), 130.0, CFG)
    assert t2.state == Health.FAILED and t2.since == 130.0 and t2.both_down_since == 100.0


def test_a_channel_flapping_back_restarts_the_grace_period() -> None:
    t0 = detect(None, obs(False, 50.0), 100.0, CFG)
    t1 = detect(t0, obs(True, 50.0), 120.0, CFG)  # libvirt back, heartbeat still stale
    assert t1.both_down_since is None
    t2 = detect(t1, obs(False, 50.0), 140.0, CFG)
    t3 = detect(t2, obs(False, 50.0), 160.0, CFG)
    assert t3.state == Health.SUSPECT  # only 20 s of both-down since 140


def test_failed_is_sticky_until_both_channels_return() -> None:
    f = detect(detect(None, obs(False, None), 0.0, CFG), obs(False, None), 31.0, CFG)
    assert f.state == Health.FAILED
    half = detect(f, obs(True, None), 40.0, CFG)
    assert half.state == Health.FAILED
    back = detect(half, obs(True, 45.0), 50.0, CFG)
    assert back.state == Health.HEALTHY and back.since == 50.0


def test_detect_all_keys_by_host() -> None:
    out = detect_all({}, [obs(True, 1.0, "a"), obs(False, None, "b")], 2.0, CFG)
    assert {k: v.state for k, v in out.items()} == {"a": Health.HEALTHY, "b": Health.SUSPECT}


# -- fence-storm guard --------------------------------------------------------------------------
def test_guard_fences_at_most_the_share_per_window() -> None:
    cfg = FenceGuardConfig(max_share=0.34, window_s=600.0)
    d = guard_fences(["a", "b", "c", "d"], [], total_hosts=9, now=1000.0, cfg=cfg)
    assert d.fence == ("a", "b", "c") and d.held == ("d",)
    assert d.history == (("a", 1000.0), ("b", 1000.0), ("c", 1000.0))


def test_guard_counts_earlier_fences_inside_the_window_only() -> None:
    cfg = FenceGuardConfig(max_share=0.25, window_s=600.0)
    hist = [("x", 500.0), ("y", 100.0)]  # y is outside the window at t=1000
    d = guard_fences(["a", "b"], hist, total_hosts=8, now=1000.0, cfg=cfg)
    assert d.fence == ("a",) and d.held == ("b",)
    assert d.history == (("x", 500.0), ("a", 1000.0))


def test_guard_never_fences_a_host_twice_in_a_window_and_small_clusters_get_zero() -> None:
    d = guard_fences(["a"], [("a", 990.0)], total_hosts=10, now=1000.0)
    assert d.fence == () and d.held == ()
    tiny = guard_fences(["a"], [], total_hosts=2, now=0.0, cfg=FenceGuardConfig(max_share=0.34))
    assert tiny.fence == () and tiny.held == ("a",)


# -- restart plans ------------------------------------------------------------------------------
def gpu(host: str, addr: str, model: str = "H100", claimed: str | None = None) -> DeviceSnap:
    return DeviceSnap(
        f"{host}/{addr}", host, addr, DeviceKind.GPU, 0x10DE, 0x2330, model, claimed_by=claimed
    )


def ha_cluster() -> ClusterSnapshot:
    vms = [
        vm("low", "dead", 2, 4096, ha=True, priority=1),
        vm("high", "dead", 2, 4096, ha=True, priority=9),
        vm("plain", "dead", 2, 4096),
        vm("other", "b", 2, 4096, ha=True),
    ]
    return cluster([("dead", 16, 32768), ("a", 8, 16384), ("b", 8, 16384)], vms)


def test_ha_vms_restart_by_priority_and_non_ha_stay_down() -> None:
    plan = plan_restarts(ha_cluster(), ["dead"], fence=["dead"])
    assert [s.vm_id for s in plan.starts] == ["high", "low"]
    assert all(s.host in {"a", "b"} for s in plan.starts)
    assert plan.left_down == ("plain",)
    p = plan.to_plan()
    assert p.stages[0] == (Fence("dead"),)
    assert p.stages[1] == plan.starts


def test_place_batch_gets_priority_order_and_a_view_without_the_failed_host() -> None:
    calls: list[tuple[ClusterSnapshot, list[PlacementRequest]]] = []

    def place(snap: ClusterSnapshot, reqs: Sequence[PlacementRequest]) -> list[str | None]:
        calls.append((snap, list(reqs)))
        return ["a", None]

    plan = plan_restarts(ha_cluster(), ["dead"], place)
    ((snap, reqs),) = calls
    assert [r.vm_id for r in reqs] == ["high", "low"]
    assert all(r.exclude_hosts == frozenset({"dead"}) for r in reqs)
    dead = next(h for h in snap.hosts if h.name == "dead")
    assert dead.state == HostState.DOWN and dead.vms == ()
    assert next(v for v in snap.vms if v.id == "high").host is None
    assert plan.starts == (StartVM("high", "a"),) and plan.unplaced == ("low",)
    assert "1 found no host" in plan.reason


def test_place_batch_answer_of_the_wrong_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="answered 0 hosts for 2"):
        plan_restarts(ha_cluster(), ["dead"], lambda s, r: [])


def test_default_placer_respects_capacity_and_anti_affinity() -> None:
    vms = [
        vm("w1", "dead", 4, 8192, ha=True, priority=5),
        vm("w2", "a", 2, 2048, ha=True),
        vm("big", "dead", 8, 31000, ha=True),
    ]
    groups = [GroupSnap("web", "anti-affinity", True, frozenset({"w1", "w2"}))]
    snap = cluster([("dead", 16, 65536), ("a", 8, 32768), ("b", 8, 16384)], vms, groups)
    plan = plan_restarts(snap, ["dead"])
    assert plan.starts == (StartVM("w1", "b"),)  # a holds w2; big fits nowhere
    assert plan.unplaced == ("big",)


def test_passthrough_vm_needs_a_free_device_of_its_model() -> None:
    hosts = [
        HostSnap("dead", HostState.UP, 16, 65536, devices=(gpu("dead", "01", claimed="g"),)),
        HostSnap("a", HostState.UP, 16, 65536, devices=(gpu("a", "01", claimed="x"),)),
        HostSnap("b", HostState.UP, 16, 65536, devices=(gpu("b", "01", model="A100"),)),
        HostSnap("c", HostState.UP, 16, 65536, devices=(gpu("c", "01"),)),
    ]
    vms = [vm("g", "dead", 4, 8192, ha=True, devices=("dead/01",), migratable=False)]
    snap = cluster(hosts, vms)
    req = restart_request(snap, vms[0], {"dead"})
    assert req.gpus == (GpuRequest("H100", 1),) and req.needs_accelerator
    plan = plan_restarts(snap, ["dead"])
    assert plan.starts == (StartVM("g", "c"),)


def test_default_placer_claims_devices_across_the_batch() -> None:
    hosts = [
        HostSnap("dead", HostState.UP, 16, 65536),
        HostSnap("c", HostState.UP, 16, 65536, devices=(gpu("c", "01"),)),
    ]
    vms = [
        vm("g1", "dead", 2, 4096, ha=True, devices=("dead/x",)),
        vm("g2", "dead", 2, 4096, ha=True, devices=("dead/y",)),
    ]
    snap = cluster(hosts, vms)
    reqs = [
        PlacementRequest(
            "g1", 2, 4096, gpus=(GpuRequest("H100"),), exclude_hosts=frozenset({"dead"})
        ),
        PlacementRequest(
            "g2", 2, 4096, gpus=(GpuRequest("H100"),), exclude_hosts=frozenset({"dead"})
        ),
    ]
    assert default_place_batch()(without_hosts(snap, ["dead"]), reqs) == ["c", None]


# -- crash restarts -----------------------------------------------------------------------------
def test_crash_restarts_back_off_exponentially_then_give_up() -> None:
    p = CrashPolicy(max_restarts=3, window_s=600.0, backoff_base_s=5.0, backoff_max_s=15.0)
    d1 = on_crash([], 100.0, p)
    assert (d1.restart, d1.delay_s, d1.history) == (True, 5.0, (100.0,))
    d2 = on_crash(d1.history, 110.0, p)
    assert (d2.restart, d2.delay_s) == (True, 10.0)
    d3 = on_crash(d2.history, 130.0, p)
    assert (d3.restart, d3.delay_s) == (True, 15.0)  # capped
    d4 = on_crash(d3.history, 140.0, p)
    assert not d4.restart and "crash loop" in d4.reason


def test_old_crashes_age_out_of_the_window() -> None:
    p = CrashPolicy(max_restarts=2, window_s=100.0)
    d = on_crash([0.0, 10.0], 500.0, p)
    assert d.restart and d.history == (500.0,) and d.delay_s == p.backoff_base_s
