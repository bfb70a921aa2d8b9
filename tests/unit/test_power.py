"""Power consolidation: which hosts empty, where their VMs go, and the N+1 guard."""

from __future__ import annotations

from dataclasses import replace

from test_policy_support import cluster, vm

from policies.fits import apply_moves, check_moves
from policies.model import ClusterModel
from policies.plan import Move, PowerOff
from policies.power import PowerConfig, absorbs_largest, plan_power
from vmmgr.snapshot import ClusterSnapshot, VMSnap

HOSTS = [("a", 32, 65536), ("b", 32, 65536), ("c", 32, 65536), ("d", 32, 65536)]


def fleet() -> ClusterSnapshot:
    vms = [
        vm("a1", "a", 4, 16384),
        vm("b1", "b", 4, 16384),
        vm("c1", "c", 4, 16384),
        vm("d1", "d", 2, 4096),
        vm("d2", "d", 2, 2048, running=False),
    ]
    return cluster(HOSTS, vms)


def test_least_used_host_is_emptied_and_named_for_power_off() -> None:
    snap = fleet()
    plan = plan_power(snap)
    assert plan.power_off == ("d",)
    assert {m.vm_id for m in plan.moves} == {"d1", "d2"}
    assert next(m for m in plan.moves if m.vm_id == "d2").live is False  # stopped: re-homed
    after = apply_moves(snap, plan.moves)
    assert next(h for h in after.hosts if h.name == "d").vms == ()
    assert check_moves(snap, plan.moves) == []
    assert plan.recommend_only
    p = plan.to_plan()
    assert p.recommend_only and p.stages[-1] == (PowerOff("d"),)


def test_best_fit_packs_onto_the_fullest_host_that_fits() -> None:
    vms = [vm("a1", "a", 4, 40000), vm("b1", "b", 4, 20000), vm("d1", "d", 2, 4096)]
    snap = cluster([HOSTS[0], HOSTS[1], HOSTS[3]], vms)
    plan = plan_power(snap, PowerConfig(max_hosts_off=1))
    assert plan.moves == (Move("d1", "d", "a", True),) and plan.power_off == ("d",)


def test_n_plus_one_headroom_blocks_consolidation() -> None:
    vms = [vm("a1", "a", 8, 50000), vm("b1", "b", 8, 50000), vm("c1", "c", 2, 8192)]
    snap = cluster(HOSTS[:3], vms)
    # emptying c would leave a and b, neither able to absorb the other's 50 GB
    plan = plan_power(snap, PowerConfig(max_host_util=1.0, candidate_max_util=0.5))
    assert plan.power_off == () and plan.moves == ()
    assert "N+1" in plan.reason


def test_absorbs_largest_simulates_the_restart() -> None:
    snap = cluster(HOSTS[:2], [vm("x", "a", 2, 50000), vm("y", "b", 2, 20000)])
    m = ClusterModel(snap)
    assert not absorbs_largest(m, {0, 1})  # a's 50000 on b (20000 used of 65536): no
    m2 = ClusterModel(cluster(HOSTS[:2], [vm("x", "a", 2, 30000), vm("y", "b", 2, 20000)]))
    assert absorbs_largest(m2, {0, 1})
    assert not absorbs_largest(m2, {0})


def test_hosts_with_immovable_vms_are_not_candidates() -> None:
    vms = [
        vm("a1", "a", 4, 30000),
        vm("b1", "b", 4, 30000),
        vm("gpu", "d", 2, 2048, devices=("d/01",), migratable=False),
        vm("pin", "c", 2, 2048, migratable=False),
    ]
    plan = plan_power(cluster(HOSTS, vms))
    assert plan.power_off == ()


def test_min_hosts_on_and_max_hosts_off() -> None:
    snap = cluster(HOSTS, [vm("a1", "a", 2, 2048)])
    plan = plan_power(snap, PowerConfig(min_hosts_on=2, max_hosts_off=5))
    assert len(plan.power_off) == 2  # 4 hosts, keep 2 on
    assert "a" not in plan.power_off or any(m.vm_id == "a1" for m in plan.moves)
    one = plan_power(snap, PowerConfig(min_hosts_on=1, max_hosts_off=1))
    assert len(one.power_off) == 1


def test_receiving_hosts_stay_under_the_ceiling() -> None:
    vms = [vm(f"{h}{i}", h, 2, 10000) for h in "abc" for i in range(3)]
    vms.append(vm("d1", "d", 2, 8000))
    snap = cluster(HOSTS, vms)
    # d1 would push any host to (30000 + 8000) / 65536 = 0.58
    assert plan_power(snap, PowerConfig(max_host_util=0.55)).power_off == ()
    assert plan_power(snap, PowerConfig(max_host_util=0.6)).power_off == ("d",)


def test_custom_fits_can_veto_destinations() -> None:
    def fits(s: ClusterSnapshot, v: VMSnap, host: str) -> bool:
        return host == "b"

    plan = plan_power(fleet(), fits=fits)
    assert plan.power_off == ("d",) and {m.dst for m in plan.moves} == {"b"}
    none = plan_power(fleet(), fits=lambda s, v, h: False)
    assert none.power_off == () and "no room" in none.reason


def test_execute_mode_is_a_config_choice() -> None:
    plan = plan_power(fleet(), replace(PowerConfig(), recommend_only=False))
    assert not plan.to_plan().recommend_only and plan.power_off
