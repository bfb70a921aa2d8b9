"""Power consolidation (pure): empty lightly used hosts onto the others and name them for
power-off, but only while the cluster keeps N+1 headroom.

A host qualifies when it is up, under ``candidate_max_util`` (memory and vCPU reservation), and
holds nothing that cannot move (whole passthrough devices, non-migratable running VMs). Its VMs
go, biggest first, to the fullest host that still fits (best fit packs tightly) without pushing
that host over ``max_host_util``. The emptying is kept only if afterwards the hosts left on can
still absorb the biggest remaining host's VMs (simulated restart placement), and at least
``min_hosts_on`` hosts stay on. Recommend-only by default: the plan says what it would do and
the executor only reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from policies.fits import FitsFn
from policies.model import ClusterModel, Limits
from policies.plan import Action, Move, Plan, PowerOff, disjoint_stages
from policies.score import Weights, model_score
from vmmgr.snapshot import ClusterSnapshot, VMSnap


@dataclass(frozen=True, slots=True)
class PowerConfig:
    limits: Limits = Limits()
    weights: Weights = Weights()
    recommend_only: bool = True
    min_hosts_on: int = 2
    max_hosts_off: int = 1  # per run
    candidate_max_util: float = 0.3
    max_host_util: float = 0.85  # memory and vCPU reservation ceiling for receiving hosts


@dataclass(frozen=True, slots=True)
class PowerPlan:
    moves: tuple[Move, ...]
    power_off: tuple[str, ...]
    recommend_only: bool
    score_before: float
    score_after: float
    reason: str

    def to_plan(self, policy: str = "power") -> Plan:
        actions: list[Action] = list(self.moves)
        stages = disjoint_stages(actions)
        if self.power_off:
            stages = (*stages, tuple(PowerOff(h) for h in self.power_off))
        return Plan(policy, stages, self.reason, self.recommend_only)


def _util(model: ClusterModel, i: int) -> float:
    h = model.hosts[i]
    cpu = h.used_vcpus / (h.snap.cpus * model.limits.cpu_ratio) if h.snap.cpus else 1.0
    mem = (
        h.used_memory_mib / (h.snap.memory_mib * model.limits.memory_ratio)
        if h.snap.memory_mib
        else 1.0
    )
    return max(cpu, mem)


def _stuck(model: ClusterModel, i: int) -> bool:
    """Something on host ``i`` cannot leave it by migration."""
    for vm_id in model.hosts[i].vms:
        vm = model.vms[vm_id]
        if vm.devices or (vm.running and not vm.migratable):
            return True
    return False


def _place(
    model: ClusterModel, vm: VMSnap, allowed: set[int], ceiling: float, fits: FitsFn | None
) -> int | None:
    """Best fit: the fullest allowed host that takes ``vm`` and stays under ``ceiling``."""
    best, best_util = None, -1.0
    snap: ClusterSnapshot | None = None
    for i in sorted(allowed):
        name = model.hosts[i].name
        if not model.fits(vm, name):
            continue
        h = model.hosts[i]
        extra_c = vm.vcpus if vm.running else 0
        extra_m = vm.memory_mib if vm.running else 0
        cpu = (h.used_vcpus + extra_c) / (h.snap.cpus * model.limits.cpu_ratio)
        mem = (h.used_memory_mib + extra_m) / (h.snap.memory_mib * model.limits.memory_ratio)
        after = max(cpu, mem)
        if after > ceiling or after <= best_util:
            continue
        if fits is not None:
            if snap is None:
                snap = model.to_snapshot()
            if not fits(snap, vm, name):
                continue
        best, best_util = i, after
    return best


def absorbs_largest(model: ClusterModel, on: set[int]) -> bool:
    """N+1: can the hosts in ``on`` restart every VM of the most loaded one of them?"""
    if len(on) < 2:
        return False
    worst = max(on, key=lambda i: (model.hosts[i].used_memory_mib, model.hosts[i].used_vcpus))
    trial = ClusterModel(model.to_snapshot(), model.limits)
    others = on - {worst}
    vms = sorted((trial.vms[v] for v in trial.hosts[worst].vms), key=lambda v: -v.memory_mib)
    for vm in vms:
        if not vm.running:
            continue
        # A restart after a failure, not a migration: passthrough/non-migratable VMs count too,
        # but need a free device of their own, which this capacity check does not model.
        free = [i for i in others if trial.fits(_as_restartable(vm), trial.hosts[i].name)]
        if not free:
            return False
        dst = max(
            free, key=lambda i: trial.hosts[i].snap.memory_mib - trial.hosts[i].used_memory_mib
        )
        trial.move(vm.id, trial.hosts[dst].name)
    return True


def _as_restartable(vm: VMSnap) -> VMSnap:
    return replace(vm, devices=(), migratable=True) if vm.devices or not vm.migratable else vm


def plan_power(
    snapshot: ClusterSnapshot, config: PowerConfig | None = None, *, fits: FitsFn | None = None
) -> PowerPlan:
    cfg = config or PowerConfig()
    model = ClusterModel(snapshot, cfg.limits)
    before = model_score(model, cfg.weights)
    on = {i for i, h in enumerate(model.hosts) if h.up}
    candidates = sorted(
        (i for i in on if _util(model, i) <= cfg.candidate_max_util and not _stuck(model, i)),
        key=lambda i: (
            model.hosts[i].used_memory_mib,
            len(model.hosts[i].vms),
            model.hosts[i].name,
        ),
    )
    moves: list[Move] = []
    off: list[str] = []
    notes: list[str] = []
    for c in candidates:
        if len(off) >= cfg.max_hosts_off or len(on) - 1 < cfg.min_hosts_on:
            break
        mark = model.to_snapshot()
        targets = on - {c}
        trial: list[Move] = []
        ok = True
        for vm_id in sorted(model.hosts[c].vms, key=lambda v: -model.vms[v].memory_mib):
            vm = model.vms[vm_id]
            d = _place(model, vm, targets, cfg.max_host_util, fits)
            if d is None:
                ok = False
                notes.append(f"{model.hosts[c].name}: no room for {vm_id}")
                break
            trial.append(Move(vm_id, model.hosts[c].name, model.hosts[d].name, vm.running))
            model.move(vm_id, model.hosts[d].name)
        if ok and not absorbs_largest(model, targets):
            ok = False
            notes.append(f"{model.hosts[c].name}: would break N+1 headroom")
        if not ok:
            model = ClusterModel(mark, cfg.limits)
            continue
        moves += trial
        off.append(model.hosts[c].name)
        on = targets
    after = model_score(model, cfg.weights)
    if off:
        reason = f"power off {', '.join(off)} after {len(moves)} moves"
    else:
        reason = "no host can be emptied" + (f" ({'; '.join(notes[:3])})" if notes else "")
    return PowerPlan(tuple(moves), tuple(off), cfg.recommend_only, before, after, reason)
