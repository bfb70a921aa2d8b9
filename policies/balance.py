"""Load balancer: a greedy, steepest-descent planner of live migrations (pure).

Objective = ``policies.score`` spread + the moves' costs. Each step evaluates, with numpy, every
eligible VM on the ``sources`` most pressured hosts (pressure = the score's gradient) against
every host, and takes the best net gain that passes the filters; when the most pressured hosts
offer nothing it widens the search to every host before giving up, so it stops only at a local
optimum for single moves (like Ganeti's hbal) or at a limit. A VM moves at most once per run.

Triggering has hysteresis: rounds with score >= ``start_threshold`` are counted in the state the
caller passes back each run; after ``hold_rounds`` of them the planner balances down to
``stop_threshold`` and keeps going on later runs until it gets there (or gets stuck).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.fits import FitsFn
from policies.model import ClusterModel, HostAcc, Limits
from policies.plan import Move, Plan, disjoint_stages
from policies.score import Weights, move_cost, score_matrix, utilisation_matrix
from vmmgr.snapshot import ClusterSnapshot, DeviceSnap, VMSnap

_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class BalanceConfig:
    weights: Weights = Weights()
    limits: Limits = Limits()
    start_threshold: float = 0.05
    stop_threshold: float = 0.02
    hold_rounds: int = 2
    min_gain: float = 0.01  # net gain of one move x number of up hosts (size-independent)
    max_moves: int = 20
    cooldown_s: float = 3600.0  # a VM moved less than this ago stays put
    sources: int = 8  # most pressured hosts searched first each step
    fits_tries: int = 16  # best candidates offered to a custom ``fits`` per step


@dataclass(frozen=True, slots=True)
class BalanceState:
    """Carried from one run to the next by the caller (the runtime keeps it in memory)."""

    rounds_over: int = 0
    active: bool = False
    last_moved: tuple[tuple[str, float], ...] = ()  # (vm id, unix time of its last move)


@dataclass(frozen=True, slots=True)
class BalancePlan:
    moves: tuple[Move, ...]
    stages: tuple[tuple[Move, ...], ...]
    score_before: float
    score_after: float
    state: BalanceState
    reason: str
    costs: float = 0.0

    @property
    def objective(self) -> float:
        return self.score_after + self.costs

    def to_plan(self, policy: str = "balance") -> Plan:
        return Plan(policy, tuple(tuple(s) for s in self.stages), self.reason)


@dataclass(slots=True)
class _Saved:
    used_vcpus: int
    used_memory_mib: int
    cpu_load: float | None
    devices: tuple[DeviceSnap, ...]
    vms: list[str]
    run_vcpus: int
    shared_vms: int


def _save(h: HostAcc) -> _Saved:
    return _Saved(
        h.used_vcpus,
        h.used_memory_mib,
        h.cpu_load,
        h.devices,
        list(h.vms),
        h.run_vcpus,
        h.shared_vms,
    )


def _restore(h: HostAcc, s: _Saved) -> None:
    h.used_vcpus, h.used_memory_mib, h.cpu_load = s.used_vcpus, s.used_memory_mib, s.cpu_load
    h.devices, h.vms, h.run_vcpus, h.shared_vms = s.devices, s.vms, s.run_vcpus, s.shared_vms


class _Search:
    """The working state of one planning run."""

    def __init__(self, model: ClusterModel, cfg: BalanceConfig, eligible: list[VMSnap]) -> None:
        self.model, self.cfg = model, cfg
        self.w = cfg.weights.vector()
        self.u, self.active = utilisation_matrix(model)
        hosts = model.hosts
        self.cpus = np.array([max(h.snap.cpus, 0) for h in hosts], dtype=np.float64)
        self.mem = np.array([max(h.snap.memory_mib, 0) for h in hosts], dtype=np.float64)
        self.cpu_cap = self.cpus * cfg.limits.cpu_ratio
        self.mem_cap = self.mem * cfg.limits.memory_ratio
        self.used_vcpus = np.array([h.used_vcpus for h in hosts], dtype=np.float64)
        self.used_mem = np.array([h.used_memory_mib for h in hosts], dtype=np.float64)
        pools: dict[str, int] = {}
        self.pool = np.array([pools.setdefault(h.snap.pool, len(pools)) for h in hosts])
        self.usable = self.active & (self.cpus > 0) & (self.mem > 0)
        self.n_up = int(self.active.sum())
        self.by_host: dict[int, list[str]] = {}
        for vm in eligible:
            assert vm.host is not None
            self.by_host.setdefault(model.index[vm.host], []).append(vm.id)
        self.cost: dict[str, float] = {vm.id: move_cost(model, vm, cfg.weights) for vm in eligible}
        self.score = score_matrix(self.u, self.active, cfg.weights)
        self.snap_cache: ClusterSnapshot | None = None  # model as a snapshot, for custom fits
        self.remove_again = True

    # -- statistics -------------------------------------------------------------------------
    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        sets = self.active[None, :] & ~np.isnan(self.u)
        uz = np.where(sets, self.u, 0.0)
        n = sets.sum(axis=1).astype(np.float64)
        s1 = uz.sum(axis=1)
        s2 = (uz * uz).sum(axis=1)
        safe = np.maximum(n, 1.0)
        var = np.maximum(s2 / safe - (s1 / safe) ** 2, 0.0)
        sigma = np.where(n >= 2, np.sqrt(var), 0.0)
        return sets, n, s1, s2, sigma

    def pressure(self) -> np.ndarray:
        sets, n, s1, _, sigma = self._stats()
        mu = s1 / np.maximum(n, 1.0)
        z = np.where(
            sets & (sigma[:, None] > 0),
            (self.u - mu[:, None]) / np.where(sigma > 0, sigma, 1.0)[:, None],
            0.0,
        )
        return (self.w[:, None] * z).sum(axis=0)

    # -- candidate evaluation ---------------------------------------------------------------
    def evaluate(self, vm_ids: Sequence[str]) -> np.ndarray:
        """Net gain (score drop minus move cost) of each VM x each host; -inf = infeasible."""
        m = self.model
        vms = [m.vms[v] for v in vm_ids]
        c = len(vms)
        src = np.array([m.index[v.host] for v in vms if v.host is not None])
        vcpus = np.array([v.vcpus for v in vms], dtype=np.float64)
        mem = np.array([v.memory_mib for v in vms], dtype=np.float64)
        feas = (
            self.usable[None, :]
            & (self.used_vcpus[None, :] + vcpus[:, None] <= self.cpu_cap[None, :])
            & (self.used_mem[None, :] + mem[:, None] <= self.mem_cap[None, :])
        )
        feas[np.arange(c), src] = False
        if self.cfg.limits.same_pool:
            feas &= self.pool[None, :] == self.pool[src][:, None]
        sets, n, s1, s2, sigma = self._stats()
        delta = np.zeros((c, len(m.hosts)), dtype=np.float64)
        # CPU and memory in closed form for every (VM, host) pair.
        if m.cpu_telemetry:
            demand = np.array([m.cpu_demand(v) for v in vms], dtype=np.float64)
            load_s = self.u[0, src]
            a_cpu = load_s - np.maximum(0.0, load_s - demand / self.cpus[src])
            b_cpu = demand[:, None] / np.where(self.cpus > 0, self.cpus, 1.0)[None, :]
        else:
            a_cpu = vcpus / self.cpus[src]
            b_cpu = vcpus[:, None] / np.where(self.cpus > 0, self.cpus, 1.0)[None, :]
        a_mem = mem / self.mem[src]
        b_mem = mem[:, None] / np.where(self.mem > 0, self.mem, 1.0)[None, :]
        for k, (a, b) in enumerate(((a_cpu, b_cpu), (a_mem, b_mem))):
            if self.w[k] == 0.0 or n[k] < 2:
                continue
            ins = sets[k, src].astype(np.float64)
            ind = sets[k].astype(np.float64)[None, :]
            us = np.where(sets[k, src], self.u[k, src], 0.0)
            ud = np.where(sets[k], self.u[k], 0.0)[None, :]
            t1 = s1[k] - (a * ins)[:, None] + b * ind
            t2 = (
                s2[k] - ((us * us - (us - a) ** 2) * ins)[:, None] + ((ud + b) ** 2 - ud * ud) * ind
            )
            var = np.maximum(t2 / n[k] - (t1 / n[k]) ** 2, 0.0)
            delta += self.w[k] * (np.sqrt(var) - sigma[k])
        # Anti-affinity and vGPU/MIG VMs host by host (few of them).
        for r, v in enumerate(vms):
            for members in m.anti.get(v.id, ()):
                for other in members:
                    ov = m.vms.get(other)
                    if other != v.id and ov is not None and ov.host in m.index:
                        feas[r, m.index[ov.host]] = False
            if v.vgpu_type or v.mig_profile:
                for d in np.flatnonzero(feas[r]):
                    if not m.capacity_ok(v, int(d)):
                        feas[r, d] = False
                        continue
                    delta[r, d] = self._try(v, int(d)) - self.score
        cost = np.array([self.cost[v] for v in vm_ids], dtype=np.float64)
        gain = -delta - cost[:, None]
        return np.where(feas, gain, -np.inf)

    def _try(self, vm: VMSnap, d: int) -> float:
        """Score after moving ``vm`` to host ``d``, computed exactly; the model is left as is."""
        m = self.model
        s = m.index[vm.host] if vm.host is not None else None
        saved = [(i, _save(m.hosts[i])) for i in {d, s} if i is not None]
        m.move(vm.id, m.hosts[d].name)
        u = self.u.copy()
        for i, _ in saved:
            self._fill(u, i)
        score = score_matrix(u, self.active, self.cfg.weights)
        for i, st in saved:
            _restore(m.hosts[i], st)
        m.vms[vm.id] = vm
        return score

    def _fill(self, u: np.ndarray, i: int) -> None:
        cpu, mem, gpu, slots = self.model.utilisation(i)
        u[0, i], u[1, i] = cpu, mem
        u[2, i] = np.nan if gpu is None else gpu
        u[3, i] = np.nan if slots is None else slots

    def commit(self, vm: VMSnap, d: int) -> None:
        m = self.model
        assert vm.host is not None
        s = m.index[vm.host]
        m.move(vm.id, m.hosts[d].name)
        for i in (s, d):
            self._fill(self.u, i)
            self.used_vcpus[i] = m.hosts[i].used_vcpus
            self.used_mem[i] = m.hosts[i].used_memory_mib
        if vm.id in self.by_host.get(s, ()):
            self.by_host[s].remove(vm.id)
            if self.remove_again:
                self.by_host.setdefault(d, []).append(vm.id)
        self.snap_cache = None
        self.score = score_matrix(self.u, self.active, self.cfg.weights)


def _eligible(
    model: ClusterModel, now: float, cooldown: dict[str, float], cfg: BalanceConfig
) -> list[VMSnap]:
    out = []
    for vm in model.vms.values():
        if not vm.running or not vm.migratable or vm.devices or vm.host not in model.index:
            continue
        if not model.hosts[model.index[vm.host]].up:
            continue
        t = cooldown.get(vm.id)
        if t is not None and now - t < cfg.cooldown_s:
            continue
        if any(len(members) > 1 for members in model.affinity.get(vm.id, ())):
            continue  # hard affinity: the group moves together or not at all
        out.append(vm)
    return out


def plan_balance(
    snapshot: ClusterSnapshot,
    state: BalanceState | None = None,
    *,
    now: float,
    config: BalanceConfig | None = None,
    fits: FitsFn | None = None,
) -> BalancePlan:
    """Plan live migrations that lower the cluster score; pure (``now`` only ages cooldowns)."""
    cfg = config or BalanceConfig()
    st = state or BalanceState()
    cooldown = {vm: t for vm, t in st.last_moved if now - t < cfg.cooldown_s}
    model = ClusterModel(snapshot, cfg.limits)
    eligible = _eligible(model, now, cooldown, cfg)
    search = _Search(model, cfg, eligible)
    before = search.score
    over = before >= cfg.start_threshold
    rounds = st.rounds_over + 1 if over else 0
    kept = tuple(sorted(cooldown.items()))

    def done(reason: str, moves: list[Move], active: bool) -> BalancePlan:
        last = dict(kept)
        last.update({mv.vm_id: now for mv in moves})
        new_state = BalanceState(rounds, active, tuple(sorted(last.items())))
        return BalancePlan(
            tuple(moves),
            disjoint_stages(moves),
            before,
            search.score,
            new_state,
            reason,
            math.fsum(mv.cost for mv in moves),
        )

    if not (st.active or rounds >= cfg.hold_rounds):
        why = (
            "below start threshold" if not over else f"holding: round {rounds} of {cfg.hold_rounds}"
        )
        return done(f"score {before:.4f} {why}", [], False)
    if before <= cfg.stop_threshold:
        return done(f"score {before:.4f} at or below stop threshold", [], False)
    moves = _greedy(search, cfg, fits)
    finished = search.score <= cfg.stop_threshold
    if finished:
        reason = f"balanced: {before:.4f} -> {search.score:.4f}"
    elif len(moves) >= cfg.max_moves:
        reason = f"max moves reached: {before:.4f} -> {search.score:.4f}"
    else:
        reason = f"no move gains enough: {before:.4f} -> {search.score:.4f}"
    return done(reason, moves, active=not finished and len(moves) >= cfg.max_moves)


def _greedy(search: _Search, cfg: BalanceConfig, fits: FitsFn | None) -> list[Move]:
    model = search.model
    moves: list[Move] = []
    if search.n_up < 2:
        return moves
    banned: set[tuple[str, int]] = set()
    k = max(1, cfg.sources)
    while len(moves) < cfg.max_moves and search.score > cfg.stop_threshold:
        hosts_with = [h for h, v in search.by_host.items() if v]
        if not hosts_with:
            break
        pressure = search.pressure()
        order = sorted(hosts_with, key=lambda h: -pressure[h])
        candidates = [v for h in order[:k] for v in search.by_host[h]]
        picked = _pick(search, candidates, cfg, fits, banned)
        if picked is None:
            if k >= len(order):
                break
            k = k * 4
            continue
        vm, d, gain = picked
        src = vm.host
        assert src is not None
        search.commit(vm, d)
        moves.append(Move(vm.id, src, model.hosts[d].name, True, gain, search.cost[vm.id]))
        banned.clear()
        k = max(1, cfg.sources)
    return moves


def _polish(search: _Search, moves: list[Move], cfg: BalanceConfig) -> list[Move]:
    """Re-target moved VMs (or send them home) while that lowers the score: costs no moves."""
    model = search.model
    origin = {m.vm_id: m.src for m in moves}
    order = [m.vm_id for m in moves]
    for _ in range(3):
        changed = False
        for vm_id in order:
            gain = search.evaluate([vm_id])[0]
            home = model.index[origin[vm_id]]
            cost = search.cost[vm_id]
            gain = gain + cost  # the VM moves anyway: only its score change counts...
            if np.isfinite(gain[home]):
                gain[home] += cost  # ...unless it goes home and the move disappears
            d = int(np.argmax(gain))
            if not np.isfinite(gain[d]) or gain[d] <= 1e-12:
                continue
            vm = model.vms[vm_id]
            if not model.fits(vm, model.hosts[d].name):
                continue
            search.commit(vm, d)
            changed = True
        if not changed:
            break
    final = []
    for vm_id in order:
        dst = model.vms[vm_id].host
        if dst is not None and dst != origin[vm_id]:
            final.append(Move(vm_id, origin[vm_id], dst, True, 0.0, search.cost[vm_id]))
    return final


def _pick(
    search: _Search,
    candidates: list[str],
    cfg: BalanceConfig,
    fits: FitsFn | None,
    banned: set[tuple[str, int]],
) -> tuple[VMSnap, int, float] | None:
    model = search.model
    threshold = cfg.min_gain / max(search.n_up, 1)
    best: list[tuple[float, str, int]] = []
    chunk = 256
    for start in range(0, len(candidates), chunk):
        ids = candidates[start : start + chunk]
        gain = search.evaluate(ids)
        flat = gain.ravel()
        take = min(cfg.fits_tries, flat.size)
        idx = np.argpartition(-flat, take - 1)[:take] if take < flat.size else np.arange(flat.size)
        for j in idx:
            g = float(flat[j])
            if g >= threshold:
                r, d = divmod(int(j), gain.shape[1])
                best.append((g, ids[r], d))
    best.sort(key=lambda t: -t[0])
    for _g, vm_id, d in best[: cfg.fits_tries]:
        if (vm_id, d) in banned:
            continue
        vm = model.vms[vm_id]
        if not model.fits(vm, model.hosts[d].name):
            banned.add((vm_id, d))
            continue
        exact = search.score - search._try(vm, d) - search.cost[vm_id]
        if exact < threshold - _EPS:
            banned.add((vm_id, d))
            continue
        if fits is not None:
            if search.snap_cache is None:
                search.snap_cache = model.to_snapshot()
            if not fits(search.snap_cache, vm, model.hosts[d].name):
                banned.add((vm_id, d))
                continue
        return vm, d, exact
    return None
