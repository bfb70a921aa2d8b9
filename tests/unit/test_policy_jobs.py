"""The built-in policies as runtime jobs, and the scheduler plugged into the planners' seams."""

from __future__ import annotations

from collections.abc import Sequence

from test_policy_support import cluster, vm

from policies.adapters import migration_request, scheduler_fits, scheduler_place_batch
from policies.balance import BalanceConfig, plan_balance
from policies.fits import apply_moves
from policies.jobs import BalancePolicy, PowerPolicy, RecoverPolicy, RecoverState, ScalePolicy
from policies.plan import CreateVM, Fence, StartVM
from policies.recover import DetectorConfig, FenceGuardConfig, HostObservation, plan_restarts
from policies.scale import ScalingGroup
from vmmgr.scheduler.scheduler import Scheduler
from vmmgr.snapshot import ClusterSnapshot, PlacementRequest

GO = BalanceConfig(start_threshold=0.0, stop_threshold=0.0, hold_rounds=1)


def piled() -> ClusterSnapshot:
    hosts = [("a", 16, 32768), ("b", 16, 32768), ("c", 16, 32768)]
    return cluster(hosts, [vm(f"v{i}", "a", 2, 4096) for i in range(6)])


def test_balance_policy_carries_its_state() -> None:
    pol = BalancePolicy(GO)
    out, st = pol.propose(piled(), pol.initial_state(), 100.0)
    assert not out.plan.empty and out.score_after is not None and out.score_before is not None
    assert out.score_after < out.score_before
    assert {vm_id for vm_id, _ in st.last_moved} == {a.vm_id for a in out.plan.actions()}  # type: ignore[union-attr]


def test_power_policy_is_recommend_only_by_default() -> None:
    snap = cluster([("a", 16, 65536), ("b", 16, 65536), ("c", 16, 65536)], [vm("x", "c", 1, 1024)])
    out, _ = PowerPolicy().propose(snap, None, 0.0)
    assert out.plan.recommend_only and not out.plan.empty


def test_scale_policy_forecasts_each_group_from_its_history() -> None:
    template = PlacementRequest(vm_id="", vcpus=1, memory_mib=1024)
    groups = [
        ScalingGroup("up", 1, 10, 0.5, template),
        ScalingGroup("flat", 1, 10, 0.5, template),
    ]
    snap = cluster(
        [("h", 64, 262144)], [vm("u0", "h", groups=("up",)), vm("f0", "h", groups=("flat",))]
    )
    hist = {"up": [1.0, 1.5, 2.0, 2.5, 3.0], "flat": []}
    asked: list[str] = []

    def history(name: str) -> Sequence[float]:
        asked.append(name)
        return hist[name]

    pol = ScalePolicy(groups, history, horizon=2, season_length=288)
    out, st = pol.propose(snap, pol.initial_state(), 0.0)
    assert asked == ["up", "flat"]
    creates = [a for a in out.plan.actions() if isinstance(a, CreateVM)]
    assert creates and all(a.group == "up" for a in creates)  # rising load: ~3.5+ -> 7+ members
    assert len(creates) >= 6
    assert st["up"].seq == len(creates) and st["flat"].seq == 0


def test_recover_policy_detects_fences_restarts_once_and_resets_on_recovery() -> None:
    vms = [vm("ha1", "x", 2, 2048, ha=True, priority=2), vm("ha2", "x", 2, 2048, ha=True)]
    snap = cluster([("x", 8, 16384), ("a", 8, 16384), ("b", 8, 16384)], vms)
    seen: dict[str, HostObservation] = {h: HostObservation(h, True, 0.0) for h in ("x", "a", "b")}
    pol = RecoverPolicy(
        lambda: list(seen.values()),
        detector=DetectorConfig(heartbeat_timeout_s=10.0, grace_s=20.0),
        guard=FenceGuardConfig(max_share=0.34),
    )
    st: RecoverState = pol.initial_state()
    out, st = pol.propose(snap, st, 5.0)
    assert out.plan.empty and out.plan.reason == "no failed host"
    seen["x"] = HostObservation("x", False, 5.0)
    out, st = pol.propose(snap, st, 16.0)  # both down since 16 (beat stale after 15)
    assert out.plan.empty
    out, st = pol.propose(snap, st, 40.0)
    assert out.plan.stages[0] == (Fence("x"),)
    assert [a.vm_id for a in out.plan.stages[1] if isinstance(a, StartVM)] == ["ha1", "ha2"]
    out, st = pol.propose(snap, st, 60.0)  # still failed, already handled: nothing again
    assert out.plan.empty and "x" in st.handled
    seen["x"] = HostObservation("x", True, 59.0)
    out, st = pol.propose(snap, st, 61.0)
    assert "x" not in st.handled


def test_recover_policy_reports_hosts_held_by_the_storm_guard() -> None:
    snap = cluster([(f"h{i}", 8, 16384) for i in range(4)], [vm("v", "h0", ha=True)])
    down = lambda: [HostObservation(f"h{i}", i >= 2, None if i < 2 else 0.0) for i in range(4)]  # noqa: E731
    pol = RecoverPolicy(down, detector=DetectorConfig(grace_s=0.0), guard=FenceGuardConfig(0.25))
    out, st = pol.propose(snap, pol.initial_state(), 1.0)
    assert out.plan.stages[0] == (Fence("h0"),)
    assert "held by fence-storm guard: h1" in out.plan.reason
    assert st.fences == (("h0", 1.0),)


def test_scheduler_filters_plug_into_the_balancer() -> None:
    sched = Scheduler()
    snap = piled()
    fits = scheduler_fits(sched)
    plan = plan_balance(snap, now=0.0, config=GO, fits=fits)
    assert plan.moves
    # replaying: each move is one the scheduler accepts at its turn
    done: list = []
    for m in plan.moves:
        before = apply_moves(snap, done)
        vm_now = next(v for v in before.vms if v.id == m.vm_id)
        assert sched.place(before, migration_request(vm_now, m.dst)).host == m.dst
        done.append(m)


def test_scheduler_refusal_stops_the_balancer() -> None:
    snap = piled()
    assert plan_balance(snap, now=0.0, config=GO, fits=lambda s, v, h: False).moves == ()


def test_scheduler_batch_placement_restarts_ha_vms() -> None:
    vms = [vm("ha1", "x", 2, 2048, ha=True, priority=2), vm("ha2", "x", 2, 2048, ha=True)]
    snap = cluster([("x", 8, 16384), ("a", 8, 16384)], vms)
    plan = plan_restarts(snap, ["x"], scheduler_place_batch(Scheduler()), fence=["x"])
    assert [(s.vm_id, s.host) for s in plan.starts] == [("ha1", "a"), ("ha2", "a")]
