"""Balance planner: behaviour of each rule, on small hand-built snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_policy_support import cluster, vgpu_device, vm

from policies.balance import BalanceConfig, BalanceState, plan_balance
from policies.fits import apply_moves, check_moves, default_fits
from policies.model import Limits
from policies.plan import Move
from policies.score import Weights, cluster_score
from vmmgr.snapshot import ClusterSnapshot, GroupSnap, HostSnap, HostState

GO = BalanceConfig(start_threshold=0.0, stop_threshold=0.0, hold_rounds=1, max_moves=100)


def piled(n_hosts: int = 3, n_vms: int = 6) -> ClusterSnapshot:
    """Every VM on the first host."""
    hosts = [(f"h{i}", 16, 32768) for i in range(n_hosts)]
    return cluster(hosts, [vm(f"v{i}", "h0", 2, 4096) for i in range(n_vms)])


def test_piled_cluster_is_spread_and_the_plan_replays_to_its_score() -> None:
    snap = piled()
    plan = plan_balance(snap, now=0.0, config=GO)
    assert plan.moves
    assert plan.score_after < plan.score_before
    after = apply_moves(snap, plan.moves)
    assert cluster_score(after) == pytest.approx(plan.score_after, abs=1e-12)
    assert check_moves(snap, plan.moves) == []
    counts = sorted(len(h.vms) for h in after.hosts)
    assert counts == [2, 2, 2]


def test_each_move_lowers_the_score_and_stages_touch_disjoint_hosts() -> None:
    hosts = [(f"h{i}", 16, 32768) for i in range(4)]
    snap = cluster(hosts, [vm(f"v{i}", f"h{i % 2}", 2, 4096) for i in range(12)])
    plan = plan_balance(snap, now=0.0, config=GO)
    assert all(m.gain > 0 for m in plan.moves)
    for stage in plan.stages:
        hosts = [h for m in stage for h in (m.src, m.dst)]
        assert len(hosts) == len(set(hosts))
    flat = [m for stage in plan.stages for m in stage]
    assert sorted(flat, key=lambda m: m.vm_id) == sorted(plan.moves, key=lambda m: m.vm_id)
    assert len(plan.stages) < len(plan.moves)  # some moves really run side by side


def test_even_cluster_gets_no_moves() -> None:
    snap = cluster([("a", 8, 8192), ("b", 8, 8192)], [vm("x", "a"), vm("y", "b")])
    plan = plan_balance(snap, now=0.0, config=GO)
    assert plan.moves == () and plan.score_before == 0.0


def test_hysteresis_holds_for_k_rounds_then_acts() -> None:
    snap = piled()
    cfg = replace(GO, start_threshold=0.1, hold_rounds=2)
    first = plan_balance(snap, now=0.0, config=cfg)
    assert first.moves == () and first.state.rounds_over == 1
    assert "holding" in first.reason
    second = plan_balance(snap, first.state, now=60.0, config=cfg)
    assert second.moves and second.state.rounds_over == 2


def test_hysteresis_counter_resets_when_score_drops_below_start() -> None:
    even = cluster([("a", 8, 8192), ("b", 8, 8192)], [vm("x", "a"), vm("y", "b")])
    cfg = replace(GO, start_threshold=0.1, hold_rounds=2)
    st = plan_balance(even, BalanceState(rounds_over=1), now=0.0, config=cfg).state
    assert st.rounds_over == 0


def test_active_run_continues_below_start_until_stop_threshold() -> None:
    snap = piled(3, 12)
    cfg = replace(GO, start_threshold=0.5, stop_threshold=0.0, hold_rounds=1, max_moves=1)
    first = plan_balance(snap, now=0.0, config=cfg)
    assert len(first.moves) == 1 and first.state.active
    moved = apply_moves(snap, first.moves)
    # far below this start threshold, yet the hysteresis band keeps the balancer going
    second = plan_balance(moved, first.state, now=10.0, config=replace(cfg, start_threshold=9.0))
    assert second.score_before < 9.0
    assert len(second.moves) == 1
    fresh = plan_balance(moved, BalanceState(), now=10.0, config=replace(cfg, start_threshold=9.0))
    assert fresh.moves == ()


def test_max_moves_caps_the_plan_and_keeps_it_active() -> None:
    plan = plan_balance(piled(3, 12), now=0.0, config=replace(GO, max_moves=2))
    assert len(plan.moves) == 2
    assert plan.state.active
    assert "max moves" in plan.reason


def test_cooldown_keeps_recently_moved_vms_put() -> None:
    snap = piled(2, 2)
    recent = BalanceState(last_moved=(("v0", 100.0), ("v1", 100.0)))
    cfg = replace(GO, cooldown_s=600.0)
    held = plan_balance(snap, recent, now=200.0, config=cfg)
    assert held.moves == ()
    assert dict(held.state.last_moved) == {"v0": 100.0, "v1": 100.0}
    later = plan_balance(snap, recent, now=800.0, config=cfg)
    assert len(later.moves) == 1
    assert dict(later.state.last_moved) == {later.moves[0].vm_id: 800.0}


def test_non_migratable_and_passthrough_vms_stay() -> None:
    vms = [vm("pinned", "a", 4, 8192, migratable=False), vm("gpu", "a", 4, 8192, devices=("a/d",))]
    snap = cluster([("a", 8, 16384), ("b", 8, 16384)], vms)
    plan = plan_balance(snap, now=0.0, config=GO)
    assert plan.moves == ()


def test_down_and_maintenance_hosts_receive_nothing() -> None:
    hosts = [
        HostSnap("a", HostState.UP, 16, 32768),
        HostSnap("m", HostState.MAINTENANCE, 16, 32768),
        HostSnap("d", HostState.DOWN, 16, 32768),
        HostSnap("b", HostState.UP, 16, 32768),
    ]
    snap = cluster(hosts, [vm(f"v{i}", "a") for i in range(4)])
    plan = plan_balance(snap, now=0.0, config=GO)
    assert {m.dst for m in plan.moves} == {"b"}


def test_hard_anti_affinity_members_never_share_a_host() -> None:
    vms = [vm("w1", "a", 4, 8192), vm("w2", "a", 4, 8192), vm("x", "b", 1, 1024)]
    group = GroupSnap("web", "anti-affinity", True, frozenset({"w1", "w2"}))
    # w1/w2 already share host a (legacy); balancing may split them, never join them elsewhere.
    snap = cluster([("a", 8, 16384), ("b", 8, 16384), ("c", 8, 16384)], vms, [group])
    plan = plan_balance(snap, now=0.0, config=GO)
    after = apply_moves(snap, plan.moves)
    hosts = {v.id: v.host for v in after.vms}
    assert hosts["w1"] != hosts["w2"]
    assert check_moves(snap, plan.moves) == []


def test_anti_affinity_blocks_the_only_better_host() -> None:
    vms = [vm("w1", "a", 4, 8192), vm("w2", "b", 1, 1024), vm("f", "a", 4, 8192)]
    group = GroupSnap("web", "anti-affinity", True, frozenset({"w1", "w2"}))
    snap = cluster([("a", 8, 16384), ("b", 8, 16384)], vms, [group])
    plan = plan_balance(snap, now=0.0, config=GO)
    assert [m.vm_id for m in plan.moves] == ["f"]


def test_hard_affinity_members_are_not_moved() -> None:
    vms = [vm("p", "a", 4, 8192), vm("q", "a", 4, 8192)]
    group = GroupSnap("pair", "affinity", True, frozenset({"p", "q"}))
    snap = cluster([("a", 8, 16384), ("b", 8, 16384)], vms, [group])
    assert plan_balance(snap, now=0.0, config=GO).moves == ()


def test_moves_stay_inside_the_pool() -> None:
    hosts = [
        HostSnap("a", HostState.UP, 16, 32768, pool="gold"),
        HostSnap("b", HostState.UP, 16, 32768, pool="silver"),
        HostSnap("c", HostState.UP, 16, 32768, pool="gold"),
    ]
    snap = cluster(hosts, [vm(f"v{i}", "a") for i in range(4)])
    plan = plan_balance(snap, now=0.0, config=GO)
    assert plan.moves and {m.dst for m in plan.moves} == {"c"}


def test_capacity_limits_the_destination() -> None:
    snap = cluster(
        [("a", 4, 8192), ("b", 4, 5000)], [vm("big", "a", 2, 6000), vm("s", "a", 2, 1000)]
    )
    plan = plan_balance(snap, now=0.0, config=GO)
    assert [m.vm_id for m in plan.moves] == ["s"]


def test_custom_fits_is_consulted_with_the_snapshot_after_earlier_moves() -> None:
    snap = piled(3, 6)
    seen: list[tuple[int, str, str]] = []

    def fits(s: ClusterSnapshot, v: object, host: str) -> bool:
        moved_away = sum(1 for x in s.vms if x.host != "h0")
        seen.append((moved_away, getattr(v, "id", ""), host))
        return host != "h2"

    plan = plan_balance(snap, now=0.0, config=GO, fits=fits)
    assert plan.moves and {m.dst for m in plan.moves} == {"h1"}
    # step k asked fits with the k earlier moves applied (later steps, later snapshots)
    counts = [s[0] for s in seen]
    assert counts == sorted(counts)
    assert set(range(len(plan.moves))) <= set(counts) <= set(range(len(plan.moves) + 1))


def test_default_fits_is_a_snapshot_function() -> None:
    snap = cluster([("a", 2, 4096), ("b", 2, 4096)], [vm("x", "a", 2, 2048), vm("y", "b", 2, 2048)])
    x = snap.vms[0]
    assert not default_fits(snap, x, "b", Limits(cpu_ratio=1.0))  # vCPUs full
    assert default_fits(snap, x, "b", Limits(cpu_ratio=2.0))
    assert not default_fits(snap, x, "a")  # already there
    assert not default_fits(snap, x, "nowhere")


def test_telemetry_cpu_moves_the_busy_vm_off_the_hot_host() -> None:
    hosts = [
        HostSnap("hot", HostState.UP, 8, 65536, cpu_load=0.9),
        HostSnap("cold", HostState.UP, 8, 65536, cpu_load=0.1),
    ]
    vms = [
        vm("busy", "hot", 4, 4096, cpu_load=1.0),
        vm("idle", "hot", 4, 4096, cpu_load=0.05),
        vm("c", "cold", 4, 4096, cpu_load=0.2),
    ]
    snap = cluster(hosts, vms)
    w = Weights(cpu=1.0, memory=0.0)
    plan = plan_balance(snap, now=0.0, config=replace(GO, weights=w))
    assert [m.vm_id for m in plan.moves][0] == "busy"  # the biggest step first
    after = apply_moves(snap, plan.moves[:1])
    loads = {h.name: h.cpu_load for h in after.hosts}
    assert loads["hot"] == pytest.approx(0.4) and loads["cold"] == pytest.approx(0.6)
    after = apply_moves(snap, plan.moves)
    assert cluster_score(after, w) == pytest.approx(plan.score_after, abs=1e-12)


def test_vgpu_vm_moves_only_where_a_slot_of_its_type_is_free() -> None:
    hosts = [
        HostSnap(
            "a", HostState.UP, 32, 65536, devices=(vgpu_device("a", "0000:01:00.0", claims=2),)
        ),
        HostSnap(
            "b", HostState.UP, 32, 65536, devices=(vgpu_device("b", "0000:01:00.0", "other"),)
        ),
        HostSnap("c", HostState.UP, 32, 65536, devices=(vgpu_device("c", "0000:01:00.0"),)),
    ]
    vms = [
        vm("g1", "a", 2, 4096, vgpu_type="nvidia-1"),
        vm("g2", "a", 2, 4096, vgpu_type="nvidia-1"),
    ]
    snap = cluster(hosts, vms)
    plan = plan_balance(
        snap, now=0.0, config=replace(GO, weights=Weights(cpu=0, memory=0, slots=1))
    )
    assert [(m.vm_id, m.dst) for m in plan.moves] in ([("g1", "c")], [("g2", "c")])
    after = apply_moves(snap, plan.moves)
    dev_a, dev_c = after.hosts[0].devices[0], after.hosts[2].devices[0]
    assert (dev_a.mdev_claims, dev_a.mdev_types[0].available) == (1, 3)
    assert (dev_c.mdev_claims, dev_c.active_mdev_type) == (1, "nvidia-1")
    assert check_moves(snap, plan.moves) == []


def test_replayed_move_from_a_wrong_source_is_reported() -> None:
    snap = piled(2, 2)
    problems = check_moves(snap, [Move("v0", "h1", "h0")])
    assert any("plan says h1" in p for p in problems) and any("does not fit" in p for p in problems)


def test_a_single_up_host_gets_no_plan() -> None:
    hosts = [HostSnap("a", HostState.UP, 8, 8192), HostSnap("b", HostState.DOWN, 8, 8192)]
    plan = plan_balance(cluster(hosts, [vm("x", "a"), vm("y", "a")]), now=0.0, config=GO)
    assert plan.moves == () and plan.score_before == 0.0


def test_gpu_load_share_travels_with_a_vgpu_vm() -> None:
    dev_a = vgpu_device("a", "01", claims=2, util=0.8)
    hosts = [
        HostSnap("a", HostState.UP, 32, 65536, devices=(dev_a,)),
        HostSnap("b", HostState.UP, 32, 65536, devices=(vgpu_device("b", "01", util=0.0),)),
    ]
    vms = [
        vm("g1", "a", 2, 4096, vgpu_type="nvidia-1"),
        vm("g2", "a", 2, 4096, vgpu_type="nvidia-1"),
    ]
    snap = cluster(hosts, vms)
    w = Weights(cpu=0.0, memory=0.0, gpu=1.0, slots=0.0)
    plan = plan_balance(snap, now=0.0, config=replace(GO, weights=w))
    assert len(plan.moves) == 1
    after = apply_moves(snap, plan.moves)
    utils = [h.devices[0].utilization for h in after.hosts]
    assert utils == [pytest.approx(0.4), pytest.approx(0.4)]  # half of a's GPU load moved
    assert plan.score_after == pytest.approx(0.0, abs=1e-12)
