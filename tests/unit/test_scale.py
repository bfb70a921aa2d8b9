"""Scaling groups: sizing from the forecast, cooldowns, bounds, who goes first on scale-in."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_policy_support import cluster, vm

from policies.plan import CreateVM, RemoveVM
from policies.scale import (
    RemovalOrder,
    ScaleState,
    ScalingGroup,
    group_load,
    new_vm_id,
    plan_scale,
)
from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import ClusterSnapshot, PlacementRequest

TEMPLATE = PlacementRequest(vm_id="", vcpus=2, memory_mib=2048, groups=("web-tier",))
GROUP = ScalingGroup(
    "web",
    1,
    6,
    target=0.6,
    template=TEMPLATE,
    scale_out_cooldown_s=300.0,
    scale_in_cooldown_s=900.0,
    in_margin=0.2,
)


def members(n: int, loads: list[float] | None = None) -> ClusterSnapshot:
    loads = loads or [0.5] * n
    vms = [
        vm(f"w{i}", "h", groups=("web",), created_at=100.0 + i, cpu_load=loads[i]) for i in range(n)
    ]
    return cluster([("h", 64, 262144)], vms)


def test_scale_out_to_the_forecast_peak() -> None:
    d = plan_scale(members(3), GROUP, [1.5, 2.9, 2.0], now=1000.0)
    assert (d.current, d.desired) == (3, 5)  # ceil(2.9 / 0.6)
    assert [r.vm_id for r in d.create] == [new_vm_id("web", 0), new_vm_id("web", 1)]
    assert all(r.groups == ("web-tier", "web") and r.vcpus == 2 for r in d.create)
    assert d.state.seq == 2 and d.state.last_out == 1000.0
    assert d.to_plan().stages == (tuple(CreateVM(r, "web") for r in d.create),)


def test_new_ids_are_deterministic_uuids_and_never_reused() -> None:
    d1 = plan_scale(members(1), GROUP, [1.1], now=0.0)
    d2 = plan_scale(members(1), GROUP, [1.1], d1.state, now=400.0)
    ids = [r.vm_id for r in d1.create + d2.create]
    assert len(set(ids)) == len(ids) == 2
    assert ids[0] == new_vm_id("web", 0) and len(ids[0]) == 36


def test_scale_out_waits_for_its_cooldown() -> None:
    st = ScaleState(last_out=900.0)
    d = plan_scale(members(2), GROUP, [3.0], st, now=1000.0)
    assert d.desired == 2 and d.create == () and "scale-out cooldown" in d.reason
    assert d.state == st


def test_scale_in_is_conservative_and_removes_newest_first() -> None:
    # peak 1.0: out-size would be 2, but scale-in sizes for 0.6 * 0.8 = 0.48 -> 3
    d = plan_scale(members(5), GROUP, [0.8, 1.0], now=5000.0)
    assert d.desired == 3
    assert d.remove == ("w4", "w3")
    assert d.to_plan().stages == ((RemoveVM("w4", "web"), RemoveVM("w3", "web")),)
    assert d.state.last_in == 5000.0


def test_scale_in_waits_after_any_recent_scaling() -> None:
    d = plan_scale(members(5), GROUP, [0.5], ScaleState(last_out=4500.0), now=5000.0)
    assert d.remove == () and "scale-in cooldown" in d.reason


def test_least_loaded_removal_prefers_stopped_then_idle_members() -> None:
    snap = members(4, [0.9, 0.1, 0.5, 0.2])
    stopped = replace(snap.vms[0], running=False)
    snap = ClusterSnapshot(snap.hosts, (stopped, *snap.vms[1:]), snap.groups)
    g = replace(GROUP, removal=RemovalOrder.LEAST_LOADED)
    d = plan_scale(snap, g, [0.3], now=9999.0)
    assert d.desired == 1
    assert d.remove == ("w0", "w1", "w3")


def test_bounds_are_enforced_without_a_forecast_and_despite_cooldowns() -> None:
    st = ScaleState(last_out=999.0, last_in=999.0)
    low = plan_scale(members(0), replace(GROUP, min_size=2), [], st, now=1000.0)
    assert low.desired == 2 and len(low.create) == 2
    high = plan_scale(members(5), replace(GROUP, max_size=3), [9.0], st, now=1000.0)
    assert high.desired == 3 and high.remove == ("w4", "w3")


def test_max_step_limits_one_decision() -> None:
    d = plan_scale(members(1), replace(GROUP, max_step=2), [5.0], now=0.0)
    assert (d.desired, len(d.create)) == (3, 2)


def test_forecast_within_band_changes_nothing() -> None:
    d = plan_scale(members(3), GROUP, [1.5], now=99999.0)  # out 3, in ceil(1.5/0.48)=4
    assert d.desired == 3 and d.create == () and d.remove == () and d.to_plan().empty


def test_group_load_sums_running_members() -> None:
    snap = members(3, [0.5, 0.25, 0.0])
    assert group_load(snap, "web") == pytest.approx(0.75)
    assert group_load(snap, "other") == 0.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"target": 0.0}, "target"),
        ({"in_margin": 1.0}, "in_margin"),
        ({"max_step": -1}, "max_step"),
    ],
)
def test_invalid_groups_name_the_field(change: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        plan_scale(members(1), replace(GROUP, **change), [1.0], now=0.0)
    assert exc.value.field == field
