"""Property tests of the balance planner over random clusters (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_support import cluster, vgpu_device, vm

from policies.balance import BalanceConfig, plan_balance
from policies.devices import take_vgpu
from policies.fits import apply_moves, check_moves
from policies.model import Limits
from policies.score import Weights, cluster_score
from vmmgr.snapshot import ClusterSnapshot, GroupSnap, HostSnap, HostState

STATES = (HostState.UP, HostState.UP, HostState.UP, HostState.MAINTENANCE, HostState.DOWN)


@st.composite
def clusters(draw: st.DrawFn) -> ClusterSnapshot:
    n_hosts = draw(st.integers(2, 7))
    hosts = []
    for i in range(n_hosts):
        name = f"h{i}"
        devices = (
            (vgpu_device(name, "0000:01:00.0", max_inst=draw(st.integers(1, 4))),)
            if draw(st.booleans())
            else ()
        )
        hosts.append(
            HostSnap(
                name,
                draw(st.sampled_from(STATES)),
                draw(st.sampled_from((4, 8, 16))),
                draw(st.sampled_from((8192, 16384, 32768))),
                pool=draw(st.sampled_from(("default", "default", "other"))),
                cpu_load=None,
                devices=devices,
            )
        )
    vms = []
    for j in range(draw(st.integers(0, 24))):
        vms.append(
            vm(
                f"v{j}",
                f"h{draw(st.integers(0, n_hosts - 1))}",
                draw(st.sampled_from((1, 2, 4))),
                draw(st.sampled_from((512, 1024, 2048, 4096))),
                running=draw(st.booleans()) or draw(st.booleans()),
                migratable=draw(st.integers(0, 5)) > 0,
                vgpu_type="nvidia-1" if draw(st.integers(0, 6)) == 0 else None,
            )
        )
    groups = []
    ids = [v.id for v in vms]
    for g in range(draw(st.integers(0, 3))):
        if len(ids) >= 2:
            members = draw(st.sets(st.sampled_from(ids), min_size=2, max_size=min(4, len(ids))))
            policy = draw(st.sampled_from(("anti-affinity", "anti-affinity", "affinity")))
            groups.append(GroupSnap(f"g{g}", policy, draw(st.booleans()), frozenset(members)))
    snap = cluster(hosts, vms, groups)
    # claim the vGPUs of the VMs already placed, so the devices tell the truth
    fixed = []
    for h in snap.hosts:
        devs = h.devices
        for v in snap.vms:
            if v.host == h.name and v.vgpu_type and v.running:
                got = take_vgpu(devs, v.vgpu_type)
                devs = got[0] if got is not None else devs
        fixed.append(replace(h, devices=devs))
    return ClusterSnapshot(tuple(fixed), snap.vms, snap.groups)


CONFIGS = st.builds(
    BalanceConfig,
    weights=st.sampled_from((Weights(), Weights(move=0.0), Weights(cpu=0.0, slots=2.0))),
    limits=st.sampled_from((Limits(), Limits(cpu_ratio=1.0), Limits(same_pool=False))),
    start_threshold=st.just(0.0),
    stop_threshold=st.just(0.0),
    hold_rounds=st.just(1),
    min_gain=st.sampled_from((0.0, 0.01, 0.05)),
    max_moves=st.integers(1, 30),
    lookahead=st.sampled_from((1, 4)),
    rollout=st.sampled_from((1, 3)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=clusters(), cfg=CONFIGS)
def test_plan_never_worsens_the_score_nor_breaks_a_filter(
    snap: ClusterSnapshot, cfg: BalanceConfig
) -> None:
    plan = plan_balance(snap, now=0.0, config=cfg)
    before = cluster_score(snap, cfg.weights, cfg.limits)
    assert plan.score_before == pytest.approx(before, abs=1e-12)
    assert plan.score_after <= plan.score_before + 1e-12
    assert len(plan.moves) <= cfg.max_moves
    # every move passes the built-in filters at its turn: capacity, host up, pool,
    # hard (anti-)affinity, vGPU slots, no passthrough, really on its stated source
    assert check_moves(snap, plan.moves, cfg.limits) == []
    # ONE scorer: the planner's final score is the score of the replayed snapshot
    after = apply_moves(snap, plan.moves, cfg.limits)
    assert cluster_score(after, cfg.weights, cfg.limits) == pytest.approx(
        plan.score_after, abs=1e-9
    )
    # and every prefix of the plan is no worse than the start (each move gains)
    assert all(m.gain > 0 for m in plan.moves)
    by_id = {v.id: v for v in snap.vms}
    for m in plan.moves:
        v = by_id[m.vm_id]
        assert v.running and v.migratable and not v.devices
    assert len({m.vm_id for m in plan.moves}) == len(plan.moves)
    states = {h.name: h.state for h in snap.hosts}
    assert all(states[m.dst] == HostState.UP for m in plan.moves)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=clusters())
def test_hard_anti_affinity_violations_are_never_created(snap: ClusterSnapshot) -> None:
    cfg = BalanceConfig(start_threshold=0.0, stop_threshold=0.0, hold_rounds=1, min_gain=0.0)
    plan = plan_balance(snap, now=0.0, config=cfg)
    after = apply_moves(snap, plan.moves)
    where_before = {v.id: v.host for v in snap.vms}
    where_after = {v.id: v.host for v in after.vms}
    for g in snap.groups:
        if not g.hard or g.policy != "anti-affinity":
            continue
        for host in {where_after[m] for m in g.members}:
            n_after = sum(1 for m in g.members if where_after[m] == host)
            n_before = sum(1 for m in g.members if where_before[m] == host)
            assert n_after <= max(1, n_before)


@settings(max_examples=40, deadline=None)
@given(snap=clusters())
def test_planning_is_deterministic(snap: ClusterSnapshot) -> None:
    cfg = BalanceConfig(start_threshold=0.0, stop_threshold=0.0, hold_rounds=1)
    assert plan_balance(snap, now=0.0, config=cfg) == plan_balance(snap, now=0.0, config=cfg)
